"""The public API as a type checker sees it from a user's code: mypy accepts the documented calls
(schedulers imported from diffusers' top level, whose names type checkers see as placeholder
classes) and still rejects what is not a scheduler."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = """
from diffusers import DDPMScheduler
from torch import Tensor

from energy_guidance import AnalyticEnergyGuidance, sample, smc_sample


def model(x_t: Tensor, t: Tensor) -> Tensor:
    return x_t


def energy(x0: Tensor) -> Tensor:
    return x0.sum(1)


scheduler = DDPMScheduler(clip_sample=False)
guidance = AnalyticEnergyGuidance(scheduler, model, energy, beta=1.0)
samples: Tensor = sample(scheduler, guidance, (4, 2))
plain, mask = sample(scheduler, model, (4, 2), return_mask=True)
guided: Tensor = guidance.sample((4, 2))
output: Tensor = guidance(samples, 10)
weighted = smc_sample(scheduler, guidance, (4, 2), num_particles=4).samples
sample(3, model, (4, 2))  # type: ignore[call-overload]
"""


def test_the_documented_calls_type_check_and_a_wrong_scheduler_does_not(tmp_path):
    pytest.importorskip("mypy")
    path = tmp_path / "user.py"
    path.write_text(USER_CODE)
    # the project's configuration (warn_unused_ignores: the last line must be an error) and,
    # from the repository root, the cache that `make lint` warmed
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), str(path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
