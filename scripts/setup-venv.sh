#!/usr/bin/env bash
# Create .venv and install the project with all extras.
# torch is pinned to the local CPU build first: an unpinned `torch` would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
# d3rlpy (an independent IQL/CQL beside ours) without its gymnasium==1.0.0 pin: scripts/d3rlpy-requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -r scripts/d3rlpy-requirements.txt
