"""Scores of prediction folders, and the tables and plot that present them.

A run folder holds one sub-folder per method, each with ``<task>.jsonl`` prediction files; ``score_folder``
is the official ``eval.py`` over one such folder, ``markdown_table`` and ``plot_budgets`` compare methods.
"""

from __future__ import annotations

import re
from pathlib import Path

from fairkv_hf.eval.metrics import bucket_scores, leaderboard_averages, task_score
from fairkv_hf.eval.runner import read_predictions

_BUDGETED = re.compile(r"^(?P<policy>.+)-(?P<budget>\d+)$")


def score_folder(pred_dir: Path, longbench_e: bool = False) -> dict[str, float | dict[str, float | None]]:
    """``{task: score}`` for every ``<task>.jsonl`` in a folder; with ``longbench_e``, ``{task: {bucket: score}}``."""
    files = sorted(Path(pred_dir).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"No <task>.jsonl prediction files in {pred_dir}")
    scores: dict[str, float | dict[str, float | None]] = {}
    for path in files:
        rows = read_predictions(path)
        if not rows:
            continue
        preds, answers = [r["pred"] for r in rows], [r["answers"] for r in rows]
        all_classes = rows[-1].get("all_classes")
        if longbench_e:
            scores[path.stem] = bucket_scores(path.stem, preds, answers, [r["length"] for r in rows], all_classes)
        else:
            scores[path.stem] = task_score(path.stem, preds, answers, all_classes)
    return scores


def score_run(run_dir: Path) -> dict[str, dict[str, float]]:
    """``{method: {task: score}}`` for every method folder of a run folder."""
    return {d.name: score_folder(d) for d in sorted(Path(run_dir).iterdir()) if d.is_dir() and any(d.glob("*.jsonl"))}


def _method_key(method: str) -> tuple[int, str, int]:
    match = _BUDGETED.match(method)
    if match is None:
        return (0, method, 0)
    return (1, match["policy"], int(match["budget"]))


def markdown_table(scores: dict[str, dict[str, float]], counts: dict[str, int] | None = None) -> str:
    """Tasks x methods, then the LongBench category and language averages of each method."""
    methods = sorted(scores, key=_method_key)
    tasks = sorted({t for s in scores.values() for t in s})
    averages = {m: leaderboard_averages(scores[m]) for m in methods}
    avg_rows = sorted({k for a in averages.values() for k in a}, key=lambda k: (k.split("/")[0], k.endswith("/Average"), k))
    head = "| task | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for task in tasks:
        label = f"{task} ({counts[task]})" if counts and task in counts else task
        lines.append(f"| {label} | " + " | ".join(_cell(scores[m].get(task)) for m in methods) + " |")
    for row in avg_rows:
        lines.append(f"| *{row}* | " + " | ".join(_cell(averages[m].get(row)) for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot_budgets(scores: dict[str, dict[str, float]], path: Path, title: str) -> bool:
    """PNG of score vs KV budget, one panel per task plus the mean; False when no budgeted method ran."""
    budgeted = {m: _BUDGETED.match(m) for m in scores}
    budgeted = {m: x for m, x in budgeted.items() if x is not None}
    if not budgeted:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for s in scores.values() for t in s})
    panels = tasks + ["mean"]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)

    def value(method: str, panel: str) -> float | None:
        s = scores[method]
        if panel == "mean":
            return sum(s[t] for t in tasks) / len(tasks) if all(t in s for t in tasks) else None
        return s.get(panel)

    for ax, panel in zip(axes.flat, panels):
        for policy in sorted({x["policy"] for x in budgeted.values()}):
            points = sorted((int(x["budget"]), value(m, panel)) for m, x in budgeted.items() if x["policy"] == policy)
            points = [(b, v) for b, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=policy)
        for method in (m for m in scores if m not in budgeted):
            v = value(method, panel)
            if v is not None:
                ax.axhline(v, linestyle="--", color="gray" if method == "full" else None, label=method)
        ax.set_xscale("log", base=2)
        ax.set_title(panel)
        ax.set_xlabel("KV budget per head (tokens)")
        ax.set_ylabel("score")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
