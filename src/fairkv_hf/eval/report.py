"""Scores of prediction folders, and the results file, tables and plot that present them.

A run folder holds one sub-folder per method, each with ``<task>.jsonl`` prediction files; ``score_folder``
is the official ``eval.py`` over one such folder, ``markdown_table`` and ``plot_budgets`` compare methods, and
``write_report`` rewrites a run folder's ``results.json``, ``table.md`` and plot from its predictions. These
files are replaced atomically: a killed process leaves the previous version, never a truncated one.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from fairkv_hf.eval.metrics import bucket_scores, leaderboard_averages, task_score
from fairkv_hf.eval.runner import read_predictions
from fairkv_hf.files import atomic_output, atomic_write, locked, remove_stale_temps

RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
PLOT_FILE = "score_vs_budget.png"
TIMING_SUMS = ("records", "prompt_tokens", "new_tokens", "seconds")
COMMAND_KEYS = ("command", "device", "versions")


class DamagedResultsError(ValueError):
    """A results.json that is not a JSON object (e.g. cut short by an old, non-atomic writer or by hand)."""

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


def read_results(folder: Path) -> dict:
    """The ``results.json`` of a run or shard folder ({} when there is none); DamagedResultsError names a bad one."""
    path = Path(folder) / RESULTS_FILE
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedResultsError(f"{path} is damaged ({err})") from err
    if not isinstance(results, dict):
        raise DamagedResultsError(f"{path} is damaged (a JSON {type(results).__name__}, not an object)")
    return results


def _recover_results(run_dir: Path) -> dict:
    """The run's results, or {} after moving a damaged file aside to ``results.json.damaged`` (with a warning)."""
    try:
        return read_results(run_dir)
    except DamagedResultsError as err:
        aside = Path(run_dir) / f"{RESULTS_FILE}.damaged"
        (Path(run_dir) / RESULTS_FILE).replace(aside)
        print(f"warning: {err}; moved to {aside} and rebuilt from the prediction files (the timing it held is lost)",
              file=sys.stderr)
        return {}


def _merge_timing(timing: dict, new_timing: dict) -> dict:
    """Add the ``{method: {task: entry}}`` timing of newly made predictions to the run's timing (sums per task)."""
    for method, per_task in new_timing.items():
        for task, new in per_task.items():
            old = timing.setdefault(method, {}).get(task)
            if old is not None:
                new = new | {k: old[k] + new[k] for k in TIMING_SUMS}
            timing[method][task] = new
    return timing


def command_entries(results: dict) -> list[dict]:
    """Every command that wrote into a run folder, as ``{"command", "device", "versions"}``, in the order they came.

    A header from before the list was kept names only its last writer at the top level; that entry, then the
    commands of its timing entries, are carried over into the list (and the top-level keys dropped).
    """
    if "commands" in results:
        entries = list(results["commands"])
    else:
        entries = []
        timing = [t for per_task in results.get("timing", {}).values() for t in per_task.values()]
        for source in [results, *timing]:
            entry = {k: source[k] for k in COMMAND_KEYS if k in source}
            if "command" in entry and entry not in entries:
                entries.append(entry)
    for key in COMMAND_KEYS:
        results.pop(key, None)
    return entries


def write_report(run_dir: Path, meta: dict | None = None) -> str:
    """Score every method folder of a run, merge ``meta`` into results.json, write table.md and the plot.

    ``meta`` holds the run's description (model, max_length, dtype, decoding, ...), under ``"commands"`` the
    commands that made it (each with its device and versions, appended to the run's list: a merged run lists
    every shard's) and, under ``"timing"``, the timing of predictions made since the last call, added to the
    run's totals. ``fairkv-longbench run`` calls this
    after every task, so an interrupted run still leaves consistent results files. The files are replaced
    atomically under a lock on results.json; a damaged results.json is moved aside and rebuilt (its run
    description comes back with the next ``meta``; its timing is lost). Returns the markdown table.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir / RESULTS_FILE):
        for name in (RESULTS_FILE, TABLE_FILE, PLOT_FILE):
            remove_stale_temps(run_dir / name)
        results = _recover_results(run_dir)
        commands = command_entries(results)
        if meta:
            timing = _merge_timing(results.get("timing", {}), meta.get("timing", {}))
            commands += [c for c in meta.get("commands", []) if c not in commands]
            results.update({k: v for k, v in meta.items() if k not in ("timing", "commands")}, timing=timing)
        results["commands"] = commands
        scores = score_run(run_dir)
        counts: dict[str, int] = {}
        for method_dir in (run_dir / m for m in scores):
            for f in method_dir.glob("*.jsonl"):
                counts[f.stem] = max(counts.get(f.stem, 0), len(read_predictions(f)))
        results["scores"] = scores
        results["records"] = counts
        if results.get("longbench_e"):
            results["bucket_scores"] = {m: score_folder(run_dir / m, longbench_e=True) for m in scores}
        atomic_write(run_dir / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        timing = results.get("timing", {})
        devices = sorted({t["device"] for per_task in timing.values() for t in per_task.values() if "device" in t}
                         | {c["device"] for c in commands if "device" in c})
        header = f"Model {results.get('model', '?')}, max_length {results.get('max_length', '?')}, device {'; '.join(devices) or '?'}"
        decoding = results.get("decoding")
        if decoding:
            header += f", decoding {decoding['mode']} (repetition penalty {decoding['repetition_penalty']:g})"
        header += "\n\n"
        table = markdown_table(scores, counts)
        atomic_write(run_dir / TABLE_FILE, header + "Scores (LongBench metrics, 0-100; records per task in parentheses)\n\n" + table)
        plot_budgets(scores, run_dir / PLOT_FILE, f"{results.get('model', '')} max_length {results.get('max_length', '')}")
    return table


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
    with atomic_output(path) as temp:
        fig.savefig(temp, dpi=110, format="png")
    plt.close(fig)
    return True
