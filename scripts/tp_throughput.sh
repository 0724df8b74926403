#!/usr/bin/env bash
# The headline benchmark (bench/tp_throughput.py) on the GPUs of one host: FairKV plans against standard tensor
# parallelism. Device kinds: nvidia-h100-x2 / nvidia-h200-x2 (GPUS=2), nvidia-h100-x4 / nvidia-h200-x4 (GPUS=4).
# Needs a copy of shared/profiles in .carry/profiles (cp -r ../shared/profiles .carry/). Results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
OUT=${OUT:-bench/results/tp_throughput}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run() { echo "+ $*"; "$@"; }
run torchrun --nproc-per-node "$GPUS" bench/tp_throughput.py --shape llama8b --batches 16 32 --out "$OUT"
run torchrun --nproc-per-node "$GPUS" bench/tp_throughput.py --shape llama70b --layers 16 --batches 16 32 \
    --cost "$OUT/tp_throughput_llama8b.json" --no-refit --out "$OUT"
