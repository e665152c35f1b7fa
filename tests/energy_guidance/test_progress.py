"""progress.py: bars follow progress=, TQDM_DISABLE (read at call time) and the terminal; the
library logs through the ``energy_guidance`` logger and configures no output itself."""

import subprocess
import sys

import pytest

from energy_guidance.progress import progress_bar


@pytest.mark.parametrize(
    "progress, environment, disabled",
    [
        (False, None, True),  # off when asked off, whatever the environment says
        (False, "0", True),
        (True, "1", True),
        (True, "true", True),
        (True, "0", False),  # on even without a terminal
        (True, None, True),  # tests run without a terminal: tqdm's own rule turns it off
    ],
)
def test_a_bar_follows_progress_and_tqdm_disable(monkeypatch, progress, environment, disabled):
    if environment is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", environment)
    with progress_bar(range(3), progress=progress) as bar:
        assert bar.disable is disabled


def test_the_library_configures_no_logging_output():
    code = (
        "import logging, energy_guidance, energy_guidance.training, energy_guidance.checkpoints\n"
        "root = logging.getLogger('energy_guidance')\n"
        "assert [type(h).__name__ for h in root.handlers] == ['NullHandler'], root.handlers\n"
        "assert not logging.getLogger().handlers\n"
        "for name in ('energy_guidance.training', 'energy_guidance.checkpoints'):\n"
        "    assert logging.getLogger(name).parent is root and not logging.getLogger(name).handlers\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
