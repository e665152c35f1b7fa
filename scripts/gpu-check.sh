#!/usr/bin/env bash
# The GPU check (docs/rl.md, "A GPU check"): on a machine with CUDA, in about 10 minutes,
#   1. the tests that need CUDA (the recipe on --device cuda, its random numbers the CPU run's);
#   2. training updates per second on the GPU beside the same machine's CPU, ours beside d3rlpy's
#      (benchmarks/training_speed.py, both measured here, one after the other);
#   3. one data set through the whole recipe with the locomotion-gpu preset at a budget cut to fit
#      (the critic and behaviour steps below), with each phase's wall time and steps per second.
#
#   bash scripts/gpu-check.sh                       # DATASET, STEPS, PY may be set in the environment
#
# PY: a Python whose torch sees CUDA, with the project installed (`pip install -e '.[dev]'` in an
# environment that already has a CUDA build of torch; scripts/setup-venv.sh installs the CPU build).
# DATASET: a Minari id present under MINARI_DATASETS_PATH (default energy-guidance/hopper/medium-v0;
# building it takes ~15 min of CPU, so build it beforehand or carry ~/.minari/datasets along); when
# it is absent the embedded Pendulum set is used instead, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
DATASET=${DATASET:-energy-guidance/hopper/medium-v0}
STEPS=${STEPS:-50000}  # critic and behaviour steps; the energy network gets STEPS / 2
RUN_DIR=${RUN_DIR:-runs/gpu-check}
SECONDS=0

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu-check: $PY's torch sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__)'))." >&2
    echo "Install a CUDA build of torch in that environment, or set PY to one that has it." >&2
    exit 1
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

echo "== 1. the CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -k cuda tests/recipes/test_aepo.py
echo "(${SECONDS} s so far)"

echo "== 2. updates per second, GPU then CPU (same machine)"
"$PY" -m benchmarks.training_speed --device cuda --rounds 3 --updates 300 --arms iql d3rlpy-iql behaviour
"$PY" -m benchmarks.training_speed --device cpu --rounds 3 --updates 100 --arms iql d3rlpy-iql behaviour
echo "(${SECONDS} s so far)"

echo "== 3. the recipe on the GPU"
if ! "$PY" -c "from energy_guidance.recipes.data import check_dataset; check_dataset('$DATASET')" 2>/dev/null; then
    echo "gpu-check: $DATASET is not present here; using the embedded Pendulum set instead" \
        "(build it with: python -m energy_guidance.recipes.datasets build $DATASET)"
    DATASET=energy-guidance/pendulum/mixed-v0
fi
"$PY" -m energy_guidance.recipes.aepo --dataset "$DATASET" --preset locomotion-gpu --device cuda \
    --critic-steps "$STEPS" --behaviour-steps "$STEPS" --energy-steps $((STEPS / 2)) \
    --run-dir "$RUN_DIR" --no-progress
"$PY" - "$RUN_DIR" "$STEPS" <<'EOF'
import json
import sys

results = json.load(open(f"{sys.argv[1]}/results.json"))
steps = int(sys.argv[2])
per_phase = {"critic": steps, "behaviour": steps, "energy": steps // 2}
print(f"\n{results['dataset']} on the GPU, phase wall times:")
for phase, seconds in results["phase_seconds"].items():
    rate = f", {per_phase[phase] / seconds:,.0f} steps/s" if phase in per_phase else ""
    print(f"  {phase:>32}: {seconds:8.1f} s{rate}")
print("The CPU figures to set beside these: docs/benchmarks.md, 'Training speed' (updates/s on the")
print("2-core CPU) and the offline-RL table's wall time per phase (locomotion-cpu, 20k steps).")
for name, score in results["scores"].items():
    if "score_mean" in score:
        print(f"  {name:>32}: {score['score_mean']:.1f} ± {score['score_std']:.1f}")
EOF
echo "gpu-check: done in ${SECONDS} s"
