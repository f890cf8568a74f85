#!/usr/bin/env bash
# One GPU check (issue 14), for a machine with jax[cuda], flax, optax and orbax installed and no
# network.  From the repository root:
#     bash experiments/gpu_check.sh DATA_DIR [OUT_DIR]
# DATA_DIR holds mnist/ (IDX files, e.g. a copy of ../shared/data).  Runs, within about 8
# minutes on one H100: the scale bench (with N = M = 4096), the layer bench, and the
# LeNet-300-100 parallel prune on 55,000 MNIST training images; results and figures (named
# after jax.devices()[0].device_kind) go to OUT_DIR (default experiments/results/gpu).
set -euo pipefail
DATA=${1:?usage: gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-experiments/results/gpu}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
export NETTRIM_DATA=$DATA
mkdir -p "$OUT"
PY=${PYTHON:-python}
$PY -c "import jax; d = jax.devices()[0]; print('device:', d.platform, d.device_kind, len(jax.devices()))" | tee "$OUT/device.txt"
# Each stage has its own time limit so one slow stage cannot eat the others' budget.
timeout 230 $PY experiments/bench_scale.py --big --out "$OUT" --timeout 120 || echo "bench_scale: exit $?"
timeout 110 $PY experiments/bench_layer.py --data "$DATA" --skip-clarabel-full --clarabel-timeout 30 \
    --published-limit 30 --out "$OUT/bench_layer.md" || echo "bench_layer: exit $?"
timeout 110 $PY experiments/gpu_prune.py --data "$DATA" --out "$OUT" || echo "gpu_prune: exit $?"
ls -l "$OUT"
