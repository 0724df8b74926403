"""Split an evaluation run across processes or machines, and merge the shard folders back into one run.

``--shard K/N`` gives a run every N-th record of each task starting at K, written to its own folder; ``merge``
appends each shard's predictions that the run folder lacks (by ``_id``) and carries over the shard's timing,
so the merged folder scores and tabulates as if one process had made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from fairkv_hf.eval.report import DamagedResultsError, command_entries, read_results
from fairkv_hf.eval.runner import append_predictions, read_predictions

T = TypeVar("T")
SAME_RUN_KEYS = ("model", "max_length", "dtype", "longbench_e", "decoding")
# what a results.json written before the decoding mode was recorded used: greedy search, no repetition penalty
LEGACY_DECODING = {"mode": "greedy", "repetition_penalty": 1.0}


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


def same_run_values(results: dict) -> dict:
    """The ``SAME_RUN_KEYS`` a results.json states; a header from before ``decoding`` was recorded decoded greedily."""
    values = {key: results[key] for key in SAME_RUN_KEYS if key in results}
    if "model" in results:
        values.setdefault("decoding", LEGACY_DECODING)
    return values


def check_same_run(headers: Sequence[tuple[object, dict]], advice: str) -> None:
    """ValueError (ending in ``advice``) unless the (where, results) headers agree on every same-run key both state."""
    seen: dict[str, tuple[object, object]] = {}
    for where, results in headers:
        for key, value in same_run_values(results).items():
            first, first_where = seen.setdefault(key, (value, where))
            if value != first:
                raise ValueError(f"{where} has {key}={value!r} but {first_where} has {first!r}: {advice}")


def check_shards(run_dir: Path, shard_dirs: Sequence[Path]) -> None:
    """ValueError unless every shard's results.json is readable and describes the same run as the others and
    as ``run_dir``'s (same ``SAME_RUN_KEYS`` where both have them): merging checks all shards before writing."""
    headers = []
    for folder in [Path(run_dir), *map(Path, shard_dirs)]:
        try:
            headers.append((folder, read_results(folder)))
        except DamagedResultsError as err:
            raise ValueError(f"{err}: rebuild it with 'fairkv-longbench report {folder}' first") from err
    check_same_run(headers, "merge shards of one run only")


def merge_shard(run_dir: Path, shard_dir: Path) -> dict:
    """Append the shard's predictions that ``run_dir`` lacks; return the shard's results metadata for them.

    The returned dict is the shard's ``results.json`` header (with the list of its commands) plus the timing of
    each (method, task) whose predictions were all new, ready for ``write_report``; merging a shard twice adds nothing the second time.
    """
    check_shards(run_dir, [shard_dir])
    shard = read_results(shard_dir)
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
            append_predictions(target, new)
            entry = shard.get("timing", {}).get(method_dir.name, {}).get(path.stem)
            if entry is not None and len(new) == len(rows) == entry["records"]:
                timing.setdefault(method_dir.name, {})[path.stem] = entry
    commands = command_entries(shard)
    meta = {k: v for k, v in shard.items() if k not in ("timing", "scores", "records", "bucket_scores")}
    return meta | {"commands": commands, "timing": timing}
