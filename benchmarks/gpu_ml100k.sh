#!/usr/bin/env bash
# KP4SR, KP4SR without the tree mask and the MPP-only (P5-style) model on ML-100k + Freebase,
# every variant x seed as its own process sharing one GPU, each stopped by a time budget.
#
#   bash benchmarks/gpu_ml100k.sh DATA_DIR OUT_DIR [MINUTES] [SEEDS] [extra ml100k.py options]
#
# DATA_DIR holds ml-100k/ and ml-100k-freebase/. Needs torch (CUDA) and transformers; kp4sr is
# taken from src/ (no install). Writes OUT_DIR/results.json in the row format of
# `kp4sr benchmark` (merge it with benchmarks/merge_results.py) and one log per run; run folders
# (weights) stay in $RUNS (default /tmp/kp4sr-gpu-runs).
set -u
DATA=${1:?DATA_DIR}
OUT=${2:?OUT_DIR}
MINUTES=${3:-5}
SEEDS=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
RUNS=${RUNS:-/tmp/kp4sr-gpu-runs}
VARIANTS=${VARIANTS:-kp4sr no-tree-mask no-knowledge}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export KP4SR_CACHE=${KP4SR_CACHE:-/tmp/kp4sr-cache} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT/logs" "$RUNS"
# load once so that the parallel runs read the cached dataset
python3 -c "
from kp4sr.recommender import KP4SR, Config
KP4SR.create(Config(dataset='ml-100k', data_dir='$DATA', min_user=0, min_item=0))
" || exit 1
pids=()
for v in $VARIANTS; do
  for ((s = 0; s < SEEDS; s++)); do
    python3 benchmarks/ml100k.py --data-dir "$DATA" --variants "$v" --seed "$s" \
      --out "$RUNS/$v-seed$s" --set device="${DEVICE:-cuda}" --set max_minutes="$MINUTES" \
      --set eval_batch_size=128 "$@" >"$OUT/logs/$v-seed$s.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
python3 benchmarks/merge_results.py --ml100k-runs "$RUNS" --out "$OUT" || status=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >"$OUT/logs/gpu.txt" 2>&1
exit $status
