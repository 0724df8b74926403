#!/usr/bin/env bash
# LongBench on one GPU for the policies of round two (pyramidkv, cake, ada_cake, HeadKV and DuoAttention tables measured
# with fairkv-profile --retrieval-heads) at budgets 128 / 512 / 2048, Qwen2.5-Coder-0.5B at 31.5K, batches of 32 in
# bf16 as the committed table. Device kind: nvidia-h100-x1 or nvidia-h200. Results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-multifieldqa_zh}
DATA=${DATA:-../shared/data/longbench}
OUT=${OUT:-eval/outputs/gpu-policies}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
methods=""
for budget in 128 512 2048; do
  for policy in pyramidkv cake ada_cake headkv duo; do methods="$methods${methods:+,}$policy-$budget"; done
done
echo "+ fairkv-longbench run ... --methods $methods"
python -m fairkv_hf.cli.longbench run --model qwen2.5-coder-0.5b-instruct --tasks "$TASKS" --max-length 31500 --device cuda \
    --dtype bfloat16 --batch-size 32 --data-dir "$DATA" --no-progress --methods "$methods" --out-dir "$OUT"
