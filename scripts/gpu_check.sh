#!/bin/bash
# The one-GPU comparison of issue 29 (item 5): the char transformer trained with backprop,
# DNI and cDNI on one GPU, each SG run to backprop's training wall time (the equal-wall-time
# comparison of `sgjax.apps.experiments.transformer_lm`, scale `gpu`), in one command that
# fits one 10-minute device call. Prepared and run on the CPU at the smoke scale; not yet
# run on a GPU (no device was lent to the sessions that wrote it).
#
# On the device machine (its image has jax with CUDA, flax and optax; Tiny Shakespeare must
# travel: copy it into the git-ignored folder .gpu_data and carry it):
#
#     mkdir -p .gpu_data/tinyshakespeare && cp ../shared/data/tinyshakespeare/input.txt .gpu_data/tinyshakespeare/
#     run(command="bash scripts/gpu_check.sh", carry=[".gpu_data"], timeout_s=600)
#
# Here, on the CPU, the same steps at the smoke scale (seconds):
#
#     SCALE=smoke DATA=../shared/data OUT=/tmp/gpu_check bash scripts/gpu_check.sh
#
# What comes back under $OUT (8 files, the device call's limit): env.txt (devices,
# versions), bench_step.txt/.json (the rules' step times), log.txt, and in tf/ runs.jsonl
# (each finished run, with its validation curve by step and by wall time), report.md,
# results.json and the two figures.
set -o pipefail
SCALE=${SCALE:-gpu}
DATA=${DATA:-.gpu_data}
OUT=${OUT:-/tmp/gpu_check}
BUDGET=${BUDGET:-400} # seconds for the runs; what finished by then is kept and reported
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT/tf"
if [ ! -f "$DATA/tinyshakespeare/input.txt" ]; then
  echo "gpu_check: $DATA/tinyshakespeare/input.txt not found: copy Tiny Shakespeare there" \
    "(and carry the folder), or set DATA to the directory holding tinyshakespeare/" >&2
  exit 2
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null ||
    echo "no nvidia-smi"
  $PY -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', \
jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt" || exit 1
# the six rules' training step on this device (MLP 784-256-256-256-10, batch 256; ratios
# to backprop taken side by side in one process); skipped at the smoke scale
if [ "$SCALE" != smoke ]; then
  timeout 100 $PY -m sgjax bench --only step \
    --json "$OUT/bench_step.json" 2>&1 | tee "$OUT/bench_step.txt"
fi
# backprop first (it sets each seed's wall-time budget), then DNI and cDNI
timeout "$BUDGET" $PY -m sgjax.apps.experiments.transformer_lm run --scale "$SCALE" \
  --seeds 0 --methods backprop,cdni,dni --out "$OUT/tf" --data-dir "$DATA" 2>&1 |
  tee "$OUT/log.txt"
status=$?
[ $status -eq 124 ] && echo "gpu_check: stopped at the $BUDGET s budget; finished runs kept" |
  tee -a "$OUT/log.txt"
$PY -m sgjax.apps.experiments.transformer_lm report --scale "$SCALE" --out "$OUT/tf" \
  --data-dir "$DATA" 2>&1 | tee -a "$OUT/log.txt"
ls "$OUT/tf"
exit $status
