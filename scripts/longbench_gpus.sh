#!/usr/bin/env bash
# LongBench on GPUs: the head-parallel run (fairkv-longbench under torchrun with a plan) against the same records on
# one GPU, in float32 (exactness) and bfloat16 (the dtype of the committed tables); and the batch-size agreement of
# the committed GPU table (batch 32 vs the official one record at a time). Device kind: nvidia-h100-x2 or
# nvidia-h200-x2. Results (run folders, agreement reports) go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${GPUS:-2}
MODEL=${MODEL:-qwen2.5-coder-0.5b-instruct}
TASKS=${TASKS:-multifieldqa_zh:64}
METHOD=${METHOD:-ada_snapkv-512}
PLAN=${PLAN:-standard}
DATA=${DATA:-../shared/data/longbench}
OUT=${OUT:-eval/outputs/gpus}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run() { echo "+ $*"; "$@"; }
common=(--model "$MODEL" --tasks "$TASKS" --max-length 31500 --device cuda --batch-size 8 --data-dir "$DATA" --no-progress)
lb=(python -m fairkv_hf.cli.longbench)
# one GPU, float32 first: it also converts the packaged model once
run env CUDA_VISIBLE_DEVICES=0 "${lb[@]}" run "${common[@]}" --methods "$METHOD" --dtype float32 --out-dir "$OUT/one-gpu-float32"
# batch 32 vs 1 on the second GPU while the first runs bfloat16 on one GPU
run env CUDA_VISIBLE_DEVICES=1 "${lb[@]}" agree "${common[@]}" --methods full,"$METHOD" --dtype bfloat16 --batch-sizes 32,1 \
    --out-dir "$OUT/batch-agreement" &
agree=$!
run env CUDA_VISIBLE_DEVICES=0 "${lb[@]}" run "${common[@]}" --methods "$METHOD" --dtype bfloat16 --out-dir "$OUT/one-gpu-bfloat16"
wait "$agree"
for dtype in float32 bfloat16; do
  run torchrun --nproc-per-node "$GPUS" -m fairkv_hf.cli.longbench run "${common[@]}" --methods "$METHOD" --dtype "$dtype" \
      --plan "$PLAN" --out-dir "$OUT/$GPUS-gpus-$dtype"
  mkdir -p "$OUT/compare-$dtype"
  run "${lb[@]}" compare "$OUT/one-gpu-$dtype" "$OUT/$GPUS-gpus-$dtype" --out "$OUT/compare-$dtype"
done
