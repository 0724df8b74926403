"""fairkv-longbench killed with SIGKILL at the moments that matter, then resumed: every record ends up in its
prediction file exactly once, results.json is whole, nothing temporary is left; and a damaged results.json is
rebuilt from the prediction files (``report``) or named in the error (``merge``).

The runs use a tiny random Llama with the embedded model's tokenizer and a small local LongBench folder (conftest's
``tiny_run_inputs``), in forked children (no new interpreter to start): a child arms one kill point, runs ``main``
and dies there.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch

from fairkv_hf.cli.longbench import main
from fairkv_hf.eval import runner
from fairkv_hf.eval.runner import read_predictions

from .conftest import TINY_RECORDS, TINY_TASKS

METHODS = ("full", "fairkv-full")  # unbudgeted: no score-vs-budget plot to draw (seconds per run)


def _run_until_killed(argv: list[str], kill: tuple[str, str, int] | None) -> None:
    """Child process: run fairkv-longbench, SIGKILLing itself at the ``kill`` = (what, when, n-th time) point.

    what: "append" (a batch of prediction lines) or the name suffix of a file replaced atomically (results.json,
    table.md, .jsonl for a repaired prediction file); when: "torn" (append only: half the bytes are written),
    "before" or "after" the write.
    """
    torch.set_num_threads(1)
    counts: dict[str, int] = {}

    def armed(what: str) -> bool:
        counts[what] = counts.get(what, 0) + 1
        return kill is not None and kill[0] == what and kill[2] == counts[what]

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_append, real_replace = runner.append_predictions, os.replace

    def append(path: Path, rows: list[dict]) -> None:
        if armed("append") and kill[1] == "torn":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text[: len(text) // 2])
            die()
        hit = kill is not None and kill[0] == "append" and kill[2] == counts["append"]
        if hit and kill[1] == "before":
            die()
        real_append(path, rows)
        if hit and kill[1] == "after":
            die()

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        what = next((s for s in ("results.json", "table.md", ".jsonl") if str(dst).endswith(s)), None)
        hit = what is not None and armed(what)
        if hit and kill[1] == "before":
            die()
        real_replace(src, dst)
        if hit and kill[1] == "after":
            die()

    runner.append_predictions = append
    os.replace = replace
    raise SystemExit(main(argv))


def _run(argv: list[str], kill: tuple[str, str, int] | None = None) -> int:
    process = multiprocessing.get_context("fork").Process(target=_run_until_killed, args=(argv, kill))
    process.start()
    process.join(120)
    return process.exitcode


KILLS = [
    ("append", "torn", 3),          # a prediction line cut in half
    (".jsonl", "before", 1),        # while the cut line is being repaired
    ("results.json", "before", 1),  # results.json written to its temporary file, not yet renamed
    ("results.json", "after", 1),   # results.json renamed, table.md not yet
    ("table.md", "before", 2),
    ("append", "after", 2),         # between two records
    ("append", "before", 3),
    ("results.json", "before", 2),
]


def test_killed_runs_resume_with_every_record_exactly_once(tiny_run_inputs, tmp_path: Path) -> None:
    model, data = tiny_run_inputs
    out = tmp_path / "run"
    argv = ["run", "--model", str(model), "--data-dir", str(data), "--tasks", ",".join(TINY_TASKS), "--methods",
            ",".join(METHODS), "--window", "4", "--max-length", "200", "--threads", "1", "--no-progress", "--out-dir", str(out)]
    for kill in KILLS:
        assert _run(argv, kill) == -signal.SIGKILL, f"the run was not killed at {kill}: that write did not happen"
        if (out / "results.json").exists():
            json.loads((out / "results.json").read_text())  # never a truncated results.json
    assert _run(argv) == 0
    expected = sorted(f"{task}-{i}" for task in TINY_TASKS for i in range(TINY_RECORDS))
    for method in METHODS:
        ids = sorted(r["_id"] for task in TINY_TASKS for r in read_predictions(out / method / f"{task}.jsonl"))
        assert ids == expected, method
    results = json.loads((out / "results.json").read_text())
    assert results["records"] == {task: TINY_RECORDS for task in TINY_TASKS}
    assert set(results["scores"]) == set(METHODS)
    assert all(t["records"] <= TINY_RECORDS for per_task in results["timing"].values() for t in per_task.values())
    assert [p.name for p in out.rglob("*") if ".tmp-" in p.name] == []  # the killed writers' temporaries are gone
    files = {p: p.read_bytes() for p in out.rglob("*.jsonl")}
    assert _run(argv) == 0  # a rerun of a finished run generates nothing
    assert {p: p.read_bytes() for p in out.rglob("*.jsonl")} == files


def _predictions(folder: Path, ids: list[str]) -> None:
    (folder / "full").mkdir(parents=True)
    rows = [{"pred": "a b", "answers": ["a b"], "all_classes": None, "length": 10, "_id": i} for i in ids]
    (folder / "full" / "samsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_rebuilds_a_damaged_results_json(tmp_path: Path, capsys) -> None:
    _predictions(tmp_path, ["a", "b"])
    damaged = '{"model": "m", "timing": {"full": {"samsum": {"rec'
    (tmp_path / "results.json").write_text(damaged)
    assert main(["report", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {tmp_path / 'results.json'} is damaged" in captured.err
    assert f"moved to {tmp_path / 'results.json.damaged'}" in captured.err
    assert "| samsum (2) | 100.00 |" in captured.out
    assert json.loads((tmp_path / "results.json").read_text())["records"] == {"samsum": 2}
    assert (tmp_path / "results.json.damaged").read_text() == damaged


def test_a_cut_last_line_without_newline_is_repaired_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "samsum.jsonl"
    row = {"pred": "x", "answers": ["x"], "all_classes": None, "length": 1, "_id": "a"}
    path.write_text(json.dumps(row))  # killed after the JSON but before its newline
    assert read_predictions(path) == [row]
    runner.append_predictions(path, [row | {"_id": "b"}])
    assert [r["_id"] for r in read_predictions(path)] == ["a", "b"]
