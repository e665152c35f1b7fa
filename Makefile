# Two entry points (see README.md): `make demo` runs the main job, `make test` the linters (ruff
# check and format, mypy on energy_guidance/, recipes/ and adapters/) and then the test suite; CI
# runs `make test`, so a lint or type error fails it.
# Both create .venv on first use; torch==2.13.0 (the local CPU build) is installed first when absent.
PY := .venv/bin/python

.PHONY: demo test lint
demo: .venv/.installed
	$(PY) -m energy_guidance.recipes.aepo

test: lint
	$(PY) -m pytest

lint: .venv/.installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && $(PY) -m mypy

.venv/.installed: pyproject.toml scripts/setup-venv.sh scripts/d3rlpy-requirements.txt
	bash scripts/setup-venv.sh
	touch $@
