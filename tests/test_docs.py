"""The Python blocks of docs/usage.md run as written, in order, in one namespace."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def test_usage_snippets_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5, "docs/usage.md lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block.replace("/tmp/", f"{tmp_path}/"), str(DOC), "exec"), namespace)
    # The guided sampler moved mass to the preferred (right-hand) mode, toward the exact target.
    right = (namespace["guided"][:, 0] > 0).float().mean().item()
    assert right > (namespace["plain"][:, 0] > 0).float().mean().item()
    assert namespace["e_t"].shape == (8,)
