"""Sharded runs: disjoint record splits, and a merge that rebuilds one run folder without double counting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairkv_hf.cli.longbench import main
from fairkv_hf.eval.runner import read_predictions
from fairkv_hf.eval.shards import merge_shard, parse_shard, shard_records


def _shard(folder: Path, ids: list[str], seconds: float, model: str = "m", header: dict | None = None) -> None:
    (folder / "snapkv-128").mkdir(parents=True)
    rows = [{"pred": "a b", "answers": ["a b"], "all_classes": None, "length": 10, "_id": i} for i in ids]
    (folder / "snapkv-128" / "samsum.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = {"snapkv-128": {"samsum": {"records": len(ids), "prompt_tokens": 10 * len(ids), "new_tokens": 2 * len(ids),
                                        "seconds": seconds, "device": "cpu (x, 1 threads)"}}}
    (folder / "results.json").write_text(json.dumps({"model": model, "max_length": 100, "timing": timing} | (header or {})))


def test_parse_and_split() -> None:
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="K/N"):
            parse_shard(bad)
    records = list(range(10))
    parts = [shard_records(records, (k, 3)) for k in range(3)]
    assert parts[0] == [0, 3, 6, 9] and sorted(r for part in parts for r in part) == records


def test_merge_appends_new_rows_and_their_timing_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _shard(tmp_path / "s0", ["a", "c"], 4.0)
    _shard(tmp_path / "s1", ["b"], 3.0)
    run.mkdir()
    meta = merge_shard(run, tmp_path / "s0")
    assert meta["model"] == "m" and meta["timing"]["snapkv-128"]["samsum"]["seconds"] == 4.0
    meta = merge_shard(run, tmp_path / "s1")
    assert [r["_id"] for r in read_predictions(run / "snapkv-128" / "samsum.jsonl")] == ["a", "c", "b"]
    assert merge_shard(run, tmp_path / "s1")["timing"] == {}
    assert len(read_predictions(run / "snapkv-128" / "samsum.jsonl")) == 3


def test_merge_refuses_another_runs_shard(tmp_path: Path) -> None:
    _shard(tmp_path / "s0", ["a"], 1.0, model="m")
    _shard(tmp_path / "run", ["b"], 1.0, model="other")
    with pytest.raises(ValueError, match="model='m'.*merge shards of one run only"):
        merge_shard(tmp_path / "run", tmp_path / "s0")
    # a header without a decoding mode predates it: greedy, which a run on the model's own config is not
    _shard(tmp_path / "s1", ["c"], 1.0, model="m", header={"decoding": {"mode": "official", "repetition_penalty": 1.1}})
    with pytest.raises(ValueError, match="decoding=.*'official'.*'greedy'.*merge shards of one run only"):
        merge_shard(tmp_path / "s0", tmp_path / "s1")


def test_cli_merge_sums_timing_and_rescores(tmp_path: Path, capsys) -> None:
    first = {"command": "fairkv-longbench run --shard 0/2", "device": "cpu (x, 1 threads)", "versions": {"torch": "2.13"}}
    second = {"command": "fairkv-longbench run --shard 1/2", "device": "H200", "versions": {"torch": "2.11"}}
    _shard(tmp_path / "s0", ["a", "c"], 4.0, header=first)  # a header from before the command list: top-level keys
    _shard(tmp_path / "s1", ["b"], 3.0, header={"commands": [second]})
    main(["merge", str(tmp_path / "run"), str(tmp_path / "s0"), str(tmp_path / "s1")])
    assert "| samsum (3) | 100.00 |" in capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["commands"] == [first, second] and "command" not in results  # every shard's command, not the last
    assert results["timing"]["snapkv-128"]["samsum"]["records"] == 3
    assert results["timing"]["snapkv-128"]["samsum"]["seconds"] == 7.0
    assert "device H200; cpu (x, 1 threads)" in (tmp_path / "run" / "table.md").read_text()


@pytest.mark.slow
def test_sharded_run_merges_to_the_unsharded_predictions(tmp_path: Path, capsys) -> None:
    base = ["run", "--tasks", "multifieldqa_en:3", "--methods", "snapkv-64", "--max-length", "400", "--no-progress"]
    main(base + ["--out-dir", str(tmp_path / "whole")])
    for k in range(2):
        main(base + ["--out-dir", str(tmp_path / f"s{k}"), "--shard", f"{k}/2"])
    assert len(read_predictions(tmp_path / "s0" / "snapkv-64" / "multifieldqa_en.jsonl")) == 2
    main(["merge", str(tmp_path / "merged"), str(tmp_path / "s0"), str(tmp_path / "s1")])
    whole = {r["_id"]: r for r in read_predictions(tmp_path / "whole" / "snapkv-64" / "multifieldqa_en.jsonl")}
    merged = {r["_id"]: r for r in read_predictions(tmp_path / "merged" / "snapkv-64" / "multifieldqa_en.jsonl")}
    assert merged == whole
    results = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert results["timing"]["snapkv-64"]["multifieldqa_en"]["records"] == 3
