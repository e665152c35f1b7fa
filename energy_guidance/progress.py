"""Progress bars that follow the user's wishes: every bar of the library and its recipes is made here.

``progress=False`` turns a bar off. Otherwise the environment variable ``TQDM_DISABLE`` decides
(``1`` off; ``0`` on, even without a terminal), and without it a bar is shown only when its stream
(standard error) is a terminal, so logs and CI output stay free of bars.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, off when ``progress`` is False, else as the module docstring says."""
    kwargs["disable"] = True if not progress else disabled_by_environment()
    return tqdm(iterable, **kwargs)


def disabled_by_environment() -> bool | None:
    """tqdm's ``disable`` as ``TQDM_DISABLE`` asks, read now (tqdm itself reads it once, when it is
    imported, and takes ``0`` for "off"): True for 1/true/yes, False for 0/false/no/empty, else None
    (tqdm: off where the bar's stream is not a terminal)."""
    value = os.environ.get("TQDM_DISABLE")
    if value is None:
        return None
    return value.strip().lower() not in ("", "0", "false", "no", "off")
