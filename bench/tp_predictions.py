"""Predicted FairKV speedups over standard TP on 2, 4 and 8 GPUs, from the cost model fitted on 2 x H100.

python bench/tp_predictions.py --measured bench/results/h100x2/tp_throughput_llama8b.json \
    bench/results/h100x2/tp_throughput_llama70b.json --out bench/results/predictions

For each shape (full depth), table and batch: the planner's standard / best-effort / FairKV plans under
`CostModel.for_gpu("h100")`, their attention time A (sum over layers of the slowest GPU), and the whole-step speedup
(R + A_standard) / (R + A_plan). R, the step outside the attention blocks, is extrapolated from the 2-GPU measurement
of the same shape: R(2) = measured wall - measured attention critical path on standard TP (median over the tables
and batches), scaled to the full depth by layer count; of it, the MLP and lm_head weights shrink as 1/GPUs at the
fitted weight bandwidth, the rest (small kernels, all-reduces) stays per layer. An extrapolation, not a measurement:
the 4- and 8-GPU runs replace it when such machines are lent (bench/tp_throughput.py runs unchanged there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tp_throughput import SHAPES, table_profile  # noqa: E402

from fairkv_hf.files import atomic_write  # noqa: E402
from fairkv_hf.placement.cost import CostModel  # noqa: E402
from fairkv_hf.placement.plans import make_plan, standard_plan  # noqa: E402


def rest_weight_bytes(shape: str, layers: int) -> float:
    """bf16 bytes of the MLP and lm_head weights (split evenly over the GPUs by every plan)."""
    s = SHAPES[shape]
    return 2 * (layers * 3 * s["hidden"] * s["intermediate"] + s["vocab"] * s["hidden"])


def measured_rest_s(path: Path) -> tuple[float, int]:
    """(median of wall - attention critical path over the standard-TP rows, layers) of a tp_throughput JSON."""
    data = json.loads(path.read_text())
    rest = [r["wall_ms"] - r["attention_critical_ms"] for r in data["rows"] if r.get("setup") == "standard" and "wall_ms" in r]
    return statistics.median(rest) / 1e3, data["layers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", type=Path, nargs="+", required=True, help="tp_throughput_<shape>.json of 2 GPUs")
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--headkv-budget", type=int, default=2048)
    parser.add_argument("--profiles", type=Path, default=Path("../shared/profiles"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cost = CostModel.for_gpu("h100")
    rows = []
    for path in args.measured:
        shape = json.loads(path.read_text())["shape"]
        rest_2, measured_layers = measured_rest_s(path)
        layers = SHAPES[shape]["layers"]
        weights_2 = rest_weight_bytes(shape, measured_layers) / 2 / cost.weight_bandwidth
        fixed_per_layer = (rest_2 - weights_2) / measured_layers
        for table in ("duo", "headkv"):
            profile = table_profile(table, shape, layers, args.context, args.headkv_budget, args.profiles)
            for gpus in args.gpus:
                rest = fixed_per_layer * layers + rest_weight_bytes(shape, layers) / gpus / cost.weight_bandwidth
                for batch in args.batches:
                    plans = {"standard": standard_plan(profile, gpus, batch, cost),
                             "best_effort": make_plan(profile, gpus, batch, 0, cost=cost),
                             "fairkv": make_plan(profile, gpus, batch, cost=cost)}
                    attention = {k: float(p.loads().layer_times(profile, cost, batch).max(axis=1).sum()) for k, p in plans.items()}
                    row = {"shape": shape, "layers": layers, "table": table, "context": args.context, "gpus": gpus,
                           "batch": batch, "rest_ms": 1e3 * rest,
                           "standard_tp_balance": plans["standard"].loads().balance(profile),
                           "fairkv_copies": sum(len(h) - 1 for layer in plans["fairkv"].layers for h in layer),
                           **{f"{k}_step_ms": 1e3 * (rest + a) for k, a in attention.items()},
                           "best_effort_speedup": (rest + attention["standard"]) / (rest + attention["best_effort"]),
                           "fairkv_speedup": (rest + attention["standard"]) / (rest + attention["fairkv"]),
                           "fairkv_attention_speedup": attention["standard"] / attention["fairkv"]}
                    rows.append(row)
                    print(f"{shape} {table} {gpus} GPUs b{batch}: FairKV {row['fairkv_speedup']:.3f}x "
                          f"(attention {row['fairkv_attention_speedup']:.3f}x), best effort {row['best_effort_speedup']:.3f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"cost_model": cost.to_dict(), "measured": [str(p) for p in args.measured],
            "command": "python bench/tp_predictions.py --measured " + " ".join(str(p) for p in args.measured)}
    atomic_write(args.out / "tp_predictions.json", json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = ["| shape | table | GPUs | batch | standard TP balance | FairKV copies | ms/step standard -> FairKV | "
             "predicted FairKV / TP (attention only) | best effort / TP |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['table']} | {r['gpus']} | {r['batch']} | {r['standard_tp_balance']:.2f} | "
              f"{r['fairkv_copies']} | {r['standard_step_ms']:.2f} -> {r['fairkv_step_ms']:.2f} | {r['fairkv_speedup']:.3f} "
              f"({r['fairkv_attention_speedup']:.3f}) | {r['best_effort_speedup']:.3f} |" for r in rows]
    atomic_write(args.out / "tp_predictions.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
