"""Sweep the Triton decode kernel's launch parameters on the shapes where it is furthest from the copy bandwidth.

Kernel time from CUDA-graph replays over rotated input sets (see decode_attention.py). Prints a table, writes JSON.
  python bench/decode_sweep.py --out bench/results/h200
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from decode_attention import ROTATE_BYTES, checked_error, check_rows, copy_bandwidth, graph_ms, kept_lengths, make_inputs, subset  # noqa: E402

from fairkv_hf.kernels import paged_decode_reference  # noqa: E402
from fairkv_hf.kernels.triton_decode import choose_num_splits, paged_decode_triton  # noqa: E402

SHAPES = [(256, "uniform", 512), (256, "ada", 512), (1024, "ada", 512), (256, "ada", 2048), (1024, "uniform", 2048)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    device = torch.device("cuda")
    copy_bw = copy_bandwidth(device, 2 << 30)
    rows = []
    for segs, dist, mean in SHAPES:
        lens = kept_lengths(segs, mean, dist, torch.Generator().manual_seed(segs * 7919 + mean))
        kept_bytes = int(lens.long().sum()) * 2 * 128 * 2
        sets = [make_inputs(lens, 128, torch.bfloat16, device) for _ in range(max(1, min(4, -(-ROTATE_BYTES // kept_bytes))))]
        check = check_rows(lens)
        sub = subset(sets[0], check)
        ref = paged_decode_reference(sub.q, sub.k_pool, sub.v_pool, sub.table, sub.lens, 128**-0.5, sub.max_len)
        auto = choose_num_splits(segs, int(lens.max()), 64, device)
        for splits, warps, stages in itertools.product(sorted({1, 2, 4, 8, 16, auto}), (2, 4, 8), (1, 2, 3)):
            def call(i, splits=splits, warps=warps, stages=stages):
                x = sets[i]
                return paged_decode_triton(x.q, x.k_pool, x.v_pool, x.table, x.lens, 128**-0.5, x.max_len,
                                           num_splits=splits, num_warps=warps, num_stages=stages)
            err = checked_error(call(0), ref, check)
            ms = graph_ms(call, len(sets))
            rows.append(dict(segments=segs, dist=dist, mean=mean, splits=splits, auto=splits == auto, warps=warps,
                             stages=stages, graph_us=ms * 1e3, pct_copy=100 * kept_bytes / (ms * 1e-3) / copy_bw,
                             rel_err=err))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(), copy_tb_per_s=copy_bw / 1e12, torch=torch.__version__,
                command="python " + " ".join(sys.argv))
    (args.out / "decode_sweep.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print("| segments | dist | mean | best (splits, warps, stages) | best % copy | default % copy |")
    print("|---|---|---|---|---|---|")
    for segs, dist, mean in SHAPES:
        mine = [r for r in rows if (r["segments"], r["dist"], r["mean"]) == (segs, dist, mean)]
        best = max(mine, key=lambda r: r["pct_copy"])
        default = next(r for r in mine if r["auto"] and r["warps"] == 4 and r["stages"] == 2)
        print(f"| {segs} | {dist} | {mean} | ({best['splits']}, {best['warps']}, {best['stages']}) | "
              f"{best['pct_copy']:.0f} | {default['pct_copy']:.0f} |")


if __name__ == "__main__":
    main()
