"""Agreement of two runs over the same records (batch sizes): the report, and ``fairkv-longbench agree`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

from fairkv_hf.cli.longbench import main
from fairkv_hf.eval.agreement import compare_runs
from fairkv_hf.eval.metrics import task_score
from fairkv_hf.eval.runner import read_predictions

from .conftest import TINY_RECORDS, TINY_TASKS


def _predictions(folder: Path, preds: dict[str, str]) -> None:
    (folder / "full").mkdir(parents=True)
    rows = [{"pred": p, "answers": ["a b c"], "all_classes": None, "length": 3, "_id": i} for i, p in preds.items()]
    (folder / "full" / "samsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_counts_differing_predictions_and_scores_the_shared_records(tmp_path: Path) -> None:
    _predictions(tmp_path / "one", {"x": "a b c", "y": "a", "z": "only here"})
    _predictions(tmp_path / "two", {"y": "a b", "x": "a b c"})
    report = compare_runs(tmp_path / "one", tmp_path / "two", ("batch-1", "batch-2"))
    row = report["tasks"]["full"]["samsum"]
    assert (row["records"], row["differ"], report["records"], report["differ"]) == (2, 1, 2, 1)
    assert row["differing"] == [{"_id": "y", "batch-1": "a", "batch-2": "a b"}]
    assert row["scores"] == {"batch-1": task_score("samsum", ["a b c", "a"], [["a b c"]] * 2),
                             "batch-2": task_score("samsum", ["a b c", "a b"], [["a b c"]] * 2)}
    assert row["scores"]["batch-1"] != row["scores"]["batch-2"]


def test_agree_runs_both_batch_sizes_and_writes_the_report(tiny_run_inputs, tmp_path: Path, capsys) -> None:
    model, data = tiny_run_inputs
    argv = ["agree", "--model", str(model), "--data-dir", str(data), "--tasks", ",".join(TINY_TASKS), "--greedy",
            "--batch-sizes", "1,3", "--out-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert "| all | | 8 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "agreement.json").read_text())
    assert report["records"] == len(TINY_TASKS) * TINY_RECORDS
    for task in TINY_TASKS:
        one, three = (read_predictions(tmp_path / f"batch-{b}" / "full" / f"{task}.jsonl") for b in (1, 3))
        by_id = {r["_id"]: r["pred"] for r in three}
        assert len(one) == len(three) == TINY_RECORDS
        row = report["tasks"]["full"][task]
        assert row["differ"] == sum(r["pred"] != by_id[r["_id"]] for r in one)
        assert row["scores"]["batch-1"] == task_score(task, [r["pred"] for r in one], [r["answers"] for r in one])
    for b in (1, 3):
        results = json.loads((tmp_path / f"batch-{b}" / "results.json").read_text())
        assert results["decoding"] == {"mode": "greedy", "repetition_penalty": 1.0}
        assert {t["batch_size"] for per_task in results["timing"].values() for t in per_task.values()} == {b}
    assert (tmp_path / "agreement.md").read_text().count("\n| full |") == len(TINY_TASKS)
