"""What the fault-injection tests share: the recipe's phases, their files, and how a run is
checked against the uninterrupted one (tests/recipes/fixtures.py's finished tiny run)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import energy_guidance.recipes.aepo as aepo
from tests.recipes.conftest import PHASES, assert_same_weights, final_weights  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
# the step each phase is interrupted at (the tiny preset: 200, 200 and 50 steps, checkpoints every 100)
STOP_AT = {"critic": 130, "behaviour": 130, "energy": 30}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what must survive a failure."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_evaluation(monkeypatch) -> None:
    """Evaluation returns a constant at once: the fault tests check the training phases' files."""
    monkeypatch.setattr(aepo, "evaluate", lambda policy, make_env, episodes, *a, **k: np.zeros(episodes))


def start_cli(module: str, *args: str) -> subprocess.Popen:
    """``python -m <module> args`` in a subprocess, its output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, process: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {limit} s"
        time.sleep(0.005)
