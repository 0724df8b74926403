"""Split an evaluation run across processes or machines, and merge the shard folders back into one run.

``--shard K/N`` gives a run every N-th record of each task starting at K, written to its own folder; ``merge``
appends each shard's predictions that the run folder lacks (by ``_id``) and carries over the shard's timing,
so the merged folder scores and tabulates as if one process had made it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from fairkv_hf.eval.runner import read_predictions

T = TypeVar("T")
SAME_RUN_KEYS = ("model", "max_length", "dtype", "longbench_e")


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise ValueError(f"--shard takes K/N with 0 <= K < N (e.g. 0/4), not '{text}'")
    return int(index), int(count)


def shard_records(records: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every N-th record starting at K: shards are disjoint, cover every record and mix short and long prompts."""
    index, count = shard
    return list(records[index::count])


def _results(folder: Path) -> dict:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def merge_shard(run_dir: Path, shard_dir: Path) -> dict:
    """Append the shard's predictions that ``run_dir`` lacks; return the shard's results metadata for them.

    The returned dict is the shard's ``results.json`` header plus the timing of each (method, task) whose
    predictions were all new, ready for ``write_report``; merging a shard twice adds nothing the second time.
    """
    shard = _results(shard_dir)
    run = _results(run_dir)
    for key in SAME_RUN_KEYS:
        if key in shard and key in run and shard[key] != run[key]:
            raise ValueError(f"{shard_dir} has {key}={shard[key]!r} but {run_dir} has {run[key]!r}: merge shards of one run only")
    timing: dict[str, dict[str, dict]] = {}
    for method_dir in sorted(d for d in Path(shard_dir).iterdir() if d.is_dir()):
        for path in sorted(method_dir.glob("*.jsonl")):
            target = Path(run_dir) / method_dir.name / path.name
            have = {row["_id"] for row in read_predictions(target)}
            rows = read_predictions(path)
            new = [row for row in rows if row["_id"] not in have]
            if not new:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in new)
            entry = shard.get("timing", {}).get(method_dir.name, {}).get(path.stem)
            if entry is not None and len(new) == len(rows) == entry["records"]:
                timing.setdefault(method_dir.name, {})[path.stem] = entry
    meta = {k: v for k, v in shard.items() if k not in ("timing", "scores", "records", "bucket_scores")}
    return meta | {"timing": timing}
