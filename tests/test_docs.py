"""Every Python block of README.md and docs/*.md runs on its own, as written, in a fresh namespace."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(page, i, block, id=f"{page.name}-{i}")
    for page in PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]


def test_the_docs_keep_their_examples():
    pages = [param.values[0].name for param in BLOCKS]
    assert {"README.md", "usage.md", "toys.md"} <= set(pages)
    assert pages.count("usage.md") >= 5


@pytest.mark.parametrize(("page", "index", "block"), BLOCKS)
def test_snippet_runs_on_its_own(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"doc_{page.stem}_{index}"}
    exec(compile(block.replace("/tmp/", f"{tmp_path}/"), f"{page.name} block {index}", "exec"), namespace)


def test_the_usage_example_moves_mass_toward_the_target(tmp_path, monkeypatch):
    """The first usage block's guided sampler moves mass to the preferred (right-hand) mode."""
    monkeypatch.chdir(tmp_path)
    block = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "usage.md").read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, "usage.md block 0", "exec"), namespace)
    right = (namespace["guided"][:, 0] > 0).float().mean().item()
    assert right > (namespace["plain"][:, 0] > 0).float().mean().item()
