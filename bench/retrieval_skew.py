"""How concentrated per-head retrieval scores are, for measured tables and the published HeadKV ones.

For each HeadKV-format table: the share of the total mean score held by the top 10% of heads, the Gini coefficient
and the share of heads scoring above zero, over query heads and over KV heads (a KV head = the largest of its query
group, as the DuoAttention-format table has it). Prints a markdown table and writes skew.md and skew.json:

    python bench/retrieval_skew.py bench/results/profiles/headkv/*.json ../shared/profiles/headkv/*.json \
        --out bench/results/profiles
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from fairkv_hf.placement.converters import headkv_scores
from fairkv_hf.placement.head_tables import kv_head_scores
from fairkv_hf.retrieval_heads import concentration


def skew_rows(paths: list[Path]) -> list[dict]:
    """One row per table: the model, its file and the concentration of its query-head and KV-head scores."""
    rows = []
    for path in paths:
        model, shape, scores = headkv_scores(path)
        rows.append({"model": model, "file": path.name, "query_heads": concentration(scores),
                     "kv_heads": concentration(kv_head_scores(scores, shape.num_kv_heads))})
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = ["| table | query heads | top 10% share | Gini | heads > 0 | KV heads | top 10% share | Gini | heads > 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["file"]]
        for level in ("query_heads", "kv_heads"):
            c = row[level]
            cells += [f"{c['heads']}", f"{100 * c['top_share']:.1f}% ({c['top_heads']})", f"{c['gini']:.3f}",
                      f"{100 * c['nonzero_share']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", type=Path, nargs="+", help="HeadKV-format tables (<model>_retrieval*_heads.json)")
    parser.add_argument("--out", type=Path, help="folder for skew.md and skew.json")
    args = parser.parse_args()
    rows = skew_rows(args.tables)
    table = markdown(rows)
    print(table, end="")
    if args.out:
        command = "python bench/retrieval_skew.py " + shlex.join(sys.argv[1:])
        (args.out / "skew.md").write_text(f"Command: `{command}`\n\n{table}")
        (args.out / "skew.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
