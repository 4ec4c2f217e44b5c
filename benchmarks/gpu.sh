#!/usr/bin/env bash
# The speed benchmark on one GPU (bf16 autocast, tiny and t5-small, 512 tokens), in under
# 5 minutes. Needs only torch (CUDA) and transformers installed; the package is not installed,
# it is read from src/. No internet needed: the toy dataset is generated.
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # OUT_DIR, else $OUT, else benchmarks/results/speed-gpu
#
# Writes OUT_DIR/results.json and results.md (ours against the plain reference, same inputs,
# same run), OUT_DIR/blocks/ (the same with tree-block attention on, which is off on a GPU by
# default: is it faster there too?) and OUT_DIR/attention.json (eager / SDPA / flex_attention
# step times; flex is tried in its own process and recorded as an error where it does not run).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/results/speed-gpu}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
timeout 170 python3 benchmarks/speed.py --device cuda --sizes tiny,t5-small --length 512 \
    --out "$out" 2>&1 | tee "$out/speed.log"
status=${PIPESTATUS[0]}
mkdir -p "$out/blocks"
timeout 100 python3 benchmarks/speed.py --device cuda --sizes tiny,t5-small --length 512 \
    --tree-blocks on --out "$out/blocks" 2>&1 | tee "$out/blocks/speed.log" || true
timeout 80 python3 benchmarks/speed.py --device cuda --sizes tiny,t5-small --length 512 \
    --attention-only --samples 32 --users 4 --out "$out" 2>&1 | tee "$out/attention.log" || true
exit "$status"
