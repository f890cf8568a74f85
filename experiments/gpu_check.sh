#!/usr/bin/env bash
# The accelerator checks, for a machine with jax[cuda] (or jax[tpu]), flax, optax and orbax
# installed and no network.  From the repository root:
#     bash experiments/gpu_check.sh DATA_DIR [OUT_DIR]
# DATA_DIR holds mnist/ and fashion-mnist/ (IDX files, e.g. a copy of ../shared/data).  Stages
# (STAGES, default all, in this order), each under its own time limit so one slow stage
# cannot eat the others' budget; results named after the device go to OUT_DIR (default
# experiments/results/gpu):
#   prune      whole prunes against Wanda / SparseGPT / ALPS (bench_prune.py --repeat)
#   prune_big  the same at accelerator sizes: LeNet-300-100 on 55k rows, a GPT-2-small-shaped
#              TinyLM (bench_prune.py --big)
#   layer      the layer-solver bench (bench_layer.py)
#   scale      the scale bench with N = M = 4096 (bench_scale.py --big)
#   lenet55k   the LeNet-300-100 parallel prune at one epsilon on 55k rows (gpu_prune.py)
#   sweep      K = 1, 4, 8, 16 sweep points batched against sequential (bench_sweep.py)
set -euo pipefail
DATA=${1:?usage: gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=${2:-experiments/results/gpu}
STAGES=${STAGES:-prune prune_big layer scale lenet55k sweep}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
export NETTRIM_DATA=$DATA PYTHONUNBUFFERED=1
mkdir -p "$OUT"
PY=${PYTHON:-python}
$PY -c "import jax; d = jax.devices()[0]; print('device:', d.platform, d.device_kind, len(jax.devices()), 'jax', jax.__version__)" | tee "$OUT/device.txt"
for stage in $STAGES; do
  echo "== $stage ($(date -u +%H:%M:%S))"
  case $stage in
    prune) timeout "${T_PRUNE:-300}" $PY experiments/bench_prune.py --repeat --out "$OUT" \
             --models lenet300 lm2 lm12 resnet lenet5 2>&1 | tee "$OUT/bench_prune.log" || echo "prune: exit $?" ;;
    prune_big) mkdir -p "$OUT/big" && timeout "${T_BIG:-240}" $PY experiments/bench_prune.py --big --repeat \
             --out "$OUT/big" --models lenet300_55k gpt2_small 2>&1 | tee "$OUT/big/bench_prune.log" || echo "prune_big: exit $?" ;;
    layer) timeout "${T_LAYER:-110}" $PY experiments/bench_layer.py --data "$DATA" --skip-clarabel-full \
             --clarabel-timeout 30 --published-limit 30 --out "$OUT/bench_layer.md" || echo "layer: exit $?" ;;
    scale) timeout "${T_SCALE:-230}" $PY experiments/bench_scale.py --big --out "$OUT" --timeout 120 || echo "scale: exit $?" ;;
    lenet55k) timeout "${T_55K:-110}" $PY experiments/gpu_prune.py --data "$DATA" --out "$OUT" || echo "lenet55k: exit $?" ;;
    sweep) timeout "${T_SWEEP:-240}" $PY experiments/bench_sweep.py --data "$DATA" --out "$OUT" \
             2>&1 | tee "$OUT/bench_sweep.log" || echo "sweep: exit $?" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
ls -lR "$OUT"
