# Two entry points (see README.md): `make demo` runs the main job, `make test` the linter (ruff
# check and format) and then the test suite; CI runs `make test`, so a lint error fails it.
# Both create .venv on first use; torch==2.13.0 (the local CPU build) is installed first when absent.
PY := .venv/bin/python

.PHONY: demo test lint
demo: .venv/.installed
	$(PY) -m energy_guidance.recipes.aepo

test: lint
	$(PY) -m pytest

lint: .venv/.installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

.venv/.installed: pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh
	touch $@
