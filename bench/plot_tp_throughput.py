"""Plot the headline: decode tokens/s of each setup from committed tp_throughput JSON files.

python bench/plot_tp_throughput.py bench/results/h100x2/tp_throughput_llama8b.json [...] --out bench/results/h100x2/tp_throughput.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SETUPS = ["standard", "best_effort", "fairkv", "uniform"]
FULL_DEPTH = {"llama8b": 32, "llama70b": 80}
LABELS = {"standard": "standard TP", "best_effort": "best effort", "fairkv": "FairKV", "uniform": "balanced ideal"}


def groups(files: list[Path]) -> list[tuple[str, dict[str, float]]]:
    """(label, tokens/s per setup) per table, batch and file, first measurement of each setup (not re-planned)."""
    out = []
    for path in files:
        data = json.loads(path.read_text())
        full = FULL_DEPTH.get(data["shape"])
        shape = data["shape"] if data["layers"] == full else f"{data['shape']} {data['layers']}L"
        by_group: dict[str, dict[str, float]] = {}
        for row in data["rows"]:
            if "tokens_per_s" in row and not row["replanned"] and row["setup"] in SETUPS:
                label = f"{shape}\n{row['context'] // 1024}K {row['table']} b{row['batch']}"
                by_group.setdefault(label, {})[row["setup"]] = row["tokens_per_s"]
        out.extend(by_group.items())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    data = groups(args.files)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(data)), 4.5))
    width = 0.2
    for k, setup in enumerate(SETUPS):
        xs = [i + (k - 1.5) * width for i in range(len(data))]
        ys = [g.get(setup, 0) / g["standard"] for _, g in data]
        ax.bar(xs, ys, width, label=LABELS[setup])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(data)), [label for label, _ in data], fontsize=8)
    ax.set_ylabel("decode tokens/s / standard TP")
    ax.set_ylim(0.9, max(max(g.values()) / g["standard"] for _, g in data) + 0.05)
    device = json.loads(args.files[0].read_text())
    ax.set_title(f"FairKV vs standard tensor parallelism, {device['gpus']} x {device['device']}, bf16, CUDA graphs")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
