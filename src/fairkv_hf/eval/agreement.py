"""Agreement of two run folders over the same records: how many predictions differ, which, and each side's score.

Made for checking that batched decoding (left-padded batches) gives what the official one-record-at-a-time
``pred.py`` gives: ``fairkv-longbench agree`` runs the same records at two batch sizes and calls ``compare_runs``;
``fairkv-longbench compare`` does it for any two existing run folders. Records are matched by ``_id``; each side's
score is the task score over the records both sides have, so the two scores are comparable.
"""

from __future__ import annotations

from pathlib import Path

from fairkv_hf.eval.metrics import task_score
from fairkv_hf.eval.runner import read_predictions


def _rows(folder: Path) -> dict[str, dict[str, dict]]:
    """``{method: {task: {_id: row}}}`` of a run folder's prediction files."""
    return {
        method.name: {path.stem: {row["_id"]: row for row in read_predictions(path)} for path in sorted(method.glob("*.jsonl"))}
        for method in sorted(Path(folder).iterdir())
        if method.is_dir()
    }


def compare_runs(first: Path, second: Path, labels: tuple[str, str]) -> dict:
    """The agreement report of two run folders: per method and task present in both, the shared records, the ids
    whose predictions differ (with both predictions) and each side's score over the shared records; totals."""
    a, b = _rows(first), _rows(second)
    report: dict = {"runs": {labels[0]: str(first), labels[1]: str(second)}, "tasks": {}}
    total, differ = 0, 0
    for method in sorted(set(a) & set(b)):
        for task in sorted(set(a[method]) & set(b[method])):
            ids = [i for i in a[method][task] if i in b[method][task]]
            if not ids:
                continue
            pairs = [(a[method][task][i], b[method][task][i]) for i in ids]
            different = [{"_id": i, labels[0]: x["pred"], labels[1]: y["pred"]} for i, (x, y) in zip(ids, pairs) if x["pred"] != y["pred"]]
            answers, classes = [x["answers"] for x, _ in pairs], pairs[-1][0].get("all_classes")
            scores = {label: task_score(task, [p[side]["pred"] for p in pairs], answers, classes) for side, label in enumerate(labels)}
            report["tasks"].setdefault(method, {})[task] = {"records": len(ids), "differ": len(different), "scores": scores,
                                                            "differing": different}
            total, differ = total + len(ids), differ + len(different)
    report["records"], report["differ"] = total, differ
    return report


def agreement_table(report: dict) -> str:
    """Markdown: one row per (method, task) with the shared records, how many predictions differ and both scores."""
    labels = list(report["runs"])
    lines = [f"| method | task | records | predictions that differ | score {labels[0]} | score {labels[1]} |",
             "|---|---|---|---|---|---|"]
    for method, tasks in report["tasks"].items():
        for task, row in tasks.items():
            lines.append(f"| {method} | {task} | {row['records']} | {row['differ']} | "
                         f"{row['scores'][labels[0]]:.2f} | {row['scores'][labels[1]]:.2f} |")
    lines.append(f"| all | | {report['records']} | {report['differ']} | | |")
    return "\n".join(lines) + "\n"
