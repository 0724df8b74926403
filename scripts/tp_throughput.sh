#!/usr/bin/env bash
# The headline benchmark (bench/tp_throughput.py) on the GPUs of one host: FairKV plans against standard tensor
# parallelism. Device kinds: nvidia-h100-x2 / nvidia-h200-x2 (2 GPUs), nvidia-h100-x4 / nvidia-h200-x4 (4 GPUs).
# Needs a copy of shared/profiles in .carry/profiles (cp -r ../shared/profiles .carry/). Results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-bench/results/tp_throughput}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run() { echo "+ $*"; "$@"; }
# Llama-3.1-8B shape at 32K: DuoAttention and HeadKV tables, batches 16 and 32; fits the cost model, re-plans
run torchrun --nproc-per-node "$GPUS" bench/tp_throughput.py --shape llama8b --batches 16 32 --out "$OUT"
# DuoAttention at 64K, batch 16 (the K/V of 32K x 32), planned with the coefficients fitted above
run torchrun --nproc-per-node "$GPUS" bench/tp_throughput.py --shape llama8b --context 65536 --batches 16 --tables duo \
    --cost "$OUT/tp_throughput_llama8b.json" --no-refit --out "$OUT/ctx64k"
# Llama-3.3-70B shape at 16 of its 80 layers (memory of one 80 GB GPU for the unsliced random model), same fit
run torchrun --nproc-per-node "$GPUS" bench/tp_throughput.py --shape llama70b --layers 16 --batches 16 32 \
    --cost "$OUT/tp_throughput_llama8b.json" --no-refit --out "$OUT"
