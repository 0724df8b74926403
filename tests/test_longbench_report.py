"""Scoring prediction folders (official pred.py format), tables, the budget plot and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairkv_hf.cli.longbench import main
from fairkv_hf.eval.report import markdown_table, plot_budgets, score_folder, score_run


def _write(folder: Path, task: str, rows: list[tuple[str, list[str], int]], all_classes=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{task}.jsonl", "w", encoding="utf-8") as f:
        for i, (pred, answers, length) in enumerate(rows):
            f.write(json.dumps({"pred": pred, "answers": answers, "all_classes": all_classes, "length": length, "_id": str(i)}, ensure_ascii=False) + "\n")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    _write(tmp_path / "full", "passage_retrieval_zh", [("段落3", ["段落3"], 5000), ("段落1和段落2", ["段落2"], 9000)])
    _write(tmp_path / "full", "trec", [("Human\nLocation", ["Human"], 3000)], all_classes=["Human", "Location"])
    for budget, pred in ((128, "段落1"), (512, "段落3")):
        _write(tmp_path / f"snapkv-{budget}", "passage_retrieval_zh", [(pred, ["段落3"], 5000), ("段落2", ["段落2"], 9000)])
    return tmp_path


def test_score_folder_and_buckets(run_dir: Path) -> None:
    assert score_folder(run_dir / "full") == {"passage_retrieval_zh": 75.0, "trec": 100.0}
    buckets = score_folder(run_dir / "full", longbench_e=True)
    assert buckets["passage_retrieval_zh"] == {"0-4k": None, "4-8k": 100.0, "8k+": 50.0}
    with pytest.raises(FileNotFoundError, match="No <task>.jsonl"):
        score_folder(run_dir / "missing")


def test_table_and_plot(run_dir: Path) -> None:
    scores = score_run(run_dir)
    assert scores["snapkv-128"] == {"passage_retrieval_zh": 50.0}
    table = markdown_table(scores, {"passage_retrieval_zh": 2, "trec": 1})
    assert table.splitlines()[0] == "| task | full | snapkv-128 | snapkv-512 |"
    assert "| passage_retrieval_zh (2) | 75.00 | 50.00 | 100.00 |" in table
    assert "| trec (1) | 100.00 | - | - |" in table
    assert "| *zh/Synthetic* | 75.00 | 50.00 | 100.00 |" in table
    png = run_dir / "plot.png"
    assert plot_budgets(scores, png, "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not plot_budgets({"full": scores["full"]}, run_dir / "none.png", "test")


def test_cli_score_and_report(run_dir: Path, capsys) -> None:
    main(["score", str(run_dir / "full")])
    assert json.loads(capsys.readouterr().out) == {"passage_retrieval_zh": 75.0, "trec": 100.0}
    assert json.loads((run_dir / "full" / "result.json").read_text()) == {"passage_retrieval_zh": 75.0, "trec": 100.0}
    main(["report", str(run_dir)])
    assert "| passage_retrieval_zh (2) | 75.00 | 50.00 | 100.00 |" in capsys.readouterr().out
    assert json.loads((run_dir / "results.json").read_text())["scores"]["snapkv-512"] == {"passage_retrieval_zh": 100.0}
    assert (run_dir / "score_vs_budget.png").exists()


@pytest.mark.slow
def test_cli_run_is_resumable(tmp_path: Path, capsys) -> None:
    args = ["run", "--tasks", "multifieldqa_en:1,niah_single_512:1", "--max-length", "700", "--out-dir", str(tmp_path), "--no-progress"]
    main(args)
    out = capsys.readouterr().out
    assert out.startswith("| task | full |") and "| multifieldqa_en (1) |" in out and "| niah_single_512 (1) |" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["max_length"] == 700 and results["model"] == "smollm2-135m-instruct"
    assert results["decoding"] == {"mode": "official", "repetition_penalty": 1.0}  # SmolLM2 ships no penalty
    [command] = results["commands"]
    assert command["command"] == "fairkv-longbench " + " ".join(args) and command["device"].startswith("cpu")
    assert set(command["versions"]) == {"torch", "transformers", "python"}
    assert results["timing"]["full"]["multifieldqa_en"]["records"] == 1
    first = (tmp_path / "full" / "multifieldqa_en.jsonl").read_text()
    main(args)
    assert (tmp_path / "full" / "multifieldqa_en.jsonl").read_text() == first
    assert main(args + ["--greedy"]) == 2  # the folder was decoded with the model's own config
    assert "this command has decoding={'mode': 'greedy'" in capsys.readouterr().err

