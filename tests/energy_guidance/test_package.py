"""The package's face: a small public API, and no RL, plotting or scikit-learn import."""

import subprocess
import sys

import energy_guidance


def test_importing_the_library_pulls_in_no_rl_plotting_or_sklearn():
    code = (
        "import sys, energy_guidance, energy_guidance.testing, energy_guidance.baselines;"
        "print(','.join(m for m in ('gymnasium', 'minari', 'sklearn', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_public_api_is_small_and_importable():
    assert 12 <= len(energy_guidance.__all__) <= 21
    for name in energy_guidance.__all__:
        assert getattr(energy_guidance, name) is not None
