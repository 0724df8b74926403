"""Bad inputs to every command line (except fairkv-generate): one line on stderr that names the problem, exit
status 2, no traceback, nothing written, and no model loaded (each case fails in well under a second)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fairkv_hf.cli import longbench, plan, profile

from .conftest import SHARED

DUO = str(SHARED / "profiles" / "duoattention" / "Mistral-7B-Instruct-v0.2.full_attention_heads.tsv")
PREDICTION = {"pred": "a", "answers": ["a"], "all_classes": None, "length": 10, "_id": "r0"}


def _inputs(root: Path) -> None:
    """The files the bad command lines point at, all under ``root``."""
    (root / "empty").mkdir()
    (root / "a_file").write_text("x")
    (root / "bad.json").write_text("{not json")
    (root / "object.json").write_text("{}")
    (root / "empty.jsonl").write_text("")
    (root / "bad.jsonl").write_text("{not json\n")
    (root / "preds").mkdir()
    (root / "preds" / "samsum.jsonl").write_text(json.dumps(PREDICTION) + "\n")
    (root / "oddly_named").mkdir()
    (root / "oddly_named" / "my_task.jsonl").write_text(json.dumps(PREDICTION) + "\n")
    for shard, model in (("shard_m", "m"), ("shard_other", "other"), ("shard_damaged", "m")):
        (root / shard / "full").mkdir(parents=True)
        (root / shard / "full" / "samsum.jsonl").write_text(json.dumps(PREDICTION) + "\n")
        (root / shard / "results.json").write_text(json.dumps({"model": model, "max_length": 100}))
    (root / "shard_damaged" / "results.json").write_text('{"model": "m", "max_le')


RUN = ["run", "--no-progress", "--out-dir", "{tmp}/out"]
LONGBENCH_CASES = [
    (RUN + ["--methods", "full,foo-128"], "--methods: Unknown method 'foo-128': use full, fairkv-full, headkv-<budget>, duo-<budget> or <policy>-<budget>"),
    (RUN + ["--methods", "duoattention-128"], "Unknown method 'duoattention-128'"),
    (RUN + ["--methods", ""], "--methods '' selects no method"),
    (RUN + ["--methods", "full,full"], "names a method twice"),
    (RUN + ["--methods", "snapkv-16"], "the budget must exceed the observation window (32 tokens)"),
    (RUN + ["--tasks", "samsum:0"], "--tasks: 'samsum:0' asks for '0' records: write samsum:N with N >= 1"),
    (RUN + ["--tasks", "samsum:many"], "'samsum:many' asks for 'many' records"),
    (RUN + ["--tasks", ""], "--tasks '' selects no task"),
    (RUN + ["--tasks", " , "], "selects no task"),
    (RUN + ["--tasks", "qasperr"], "--tasks: Unknown task 'qasperr'"),
    (RUN + ["--tasks", "samsum,samsum:2"], "--tasks names 'samsum' twice"),
    (RUN + ["--tasks", "niah_single_0"], "'niah_single_0' asks for prompts of 0 tokens"),
    (RUN + ["--tasks", "niah_single_8192", "--max-length", "4000"], "raise --max-length to at least 8192"),
    (RUN + ["--max-length", "0"], "argument --max-length: must be a positive integer, got '0'"),
    (RUN + ["--max-length", "-3"], "argument --max-length: must be a positive integer, got '-3'"),
    (RUN + ["--batch-size", "0"], "argument --batch-size: must be a positive integer, got '0'"),
    (RUN + ["--threads", "0"], "argument --threads: must be a positive integer"),
    (RUN + ["--window", "0"], "argument --window: must be a positive integer"),
    (RUN + ["--data-dir", "{tmp}/missing"], "--data-dir {tmp}/missing is not a folder"),
    (RUN + ["--data-dir", "{tmp}/empty"], "{tmp}/empty holds no <task>.jsonl LongBench records"),
    (RUN + ["--data-dir", "{tmp}/empty", "--hub"], "argument --hub: not allowed with argument --data-dir"),
    (RUN + ["--tasks", "qasper"], "has no qasper.jsonl: choose another task or --data-dir"),
    (RUN + ["--tasks", "multifieldqa_zh", "--e"], "--e: LongBench-E has no 'multifieldqa_zh'"),
    (RUN + ["--tasks", "samsum", "--config-dir", "{tmp}/empty"], "{tmp}/empty/dataset2prompt.json is missing"),
    (RUN + ["--tasks", "samsum", "--hub"], "--hub needs --config-dir"),
    (RUN + ["--hub"], "--hub needs --config-dir"),
    (RUN + ["--tasks", "samsum:1", "--model", "./no-such-model"], "--model: Model path './no-such-model' does not exist"),
    (RUN + ["--tasks", "samsum:1", "--model", "{tmp}/missing/model"], "Model path '{tmp}/missing/model' does not exist"),
    (RUN + ["--device", "gpu"], "argument --device: 'gpu' is not a torch device: use cpu, cuda or cuda:N"),
    (RUN + ["--device", "cuda:99"], "argument --device: 'cuda:99'"),
    (RUN + ["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (RUN + ["--shard", "2/2"], "argument --shard: --shard takes K/N with 0 <= K < N"),
    (["run", "--tasks", "samsum:1", "--out-dir", "{tmp}/a_file"], "--out-dir {tmp}/a_file is a file: give a folder"),
    (["score", "{tmp}/missing"], "{tmp}/missing is not a folder"),
    (["score", "{tmp}/empty"], "{tmp}/empty holds no <task>.jsonl prediction files"),
    (["score", "{tmp}/oddly_named"], "{tmp}/oddly_named/my_task.jsonl is not named after a task (Unknown task 'my_task'"),
    (["score", "{tmp}/preds", "--out", "{tmp}/missing/result.json"], "--out {tmp}/missing/result.json: the folder {tmp}/missing does not exist"),
    (["report", "{tmp}/missing"], "{tmp}/missing is not a folder: give a run folder written by fairkv-longbench run"),
    (["report", "{tmp}/empty"], "{tmp}/empty holds no <method>/<task>.jsonl predictions"),
    (["report", "{tmp}/oddly_named/.."], "my_task.jsonl is not named after a task"),
    (["merge", "{tmp}/run", "{tmp}/missing"], "{tmp}/missing is not a folder"),
    (["merge", "{tmp}/run", "{tmp}/shard_m", "{tmp}/shard_other"], "{tmp}/shard_other has model='other' but {tmp}/shard_m has 'm': merge shards of one run only"),
    (["merge", "{tmp}/run", "{tmp}/shard_m", "{tmp}/shard_damaged"], "{tmp}/shard_damaged/results.json is damaged (Unterminated string"),
    (["merge", "{tmp}/run"], "the following arguments are required: shard_dirs"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
]

PROFILE = ["--budget", "64", "--data", str(SHARED / "data" / "longbench" / "samsum.jsonl"), "--out", "{tmp}/profile.json"]
PROFILE_CASES = [
    (PROFILE + ["--policy", "duoattention"], "--policy duoattention takes its per-head token counts from a published table, "
     "not from --budget: make the profile from that table with fairkv-plan --duoattention GATES.tsv"),
    (PROFILE + ["--policy", "head_budgets"], "--policy head_budgets takes its per-head token counts from a published table"),
    (PROFILE + ["--policy", "nope"], "argument --policy: invalid choice: 'nope'"),
    (PROFILE + ["--budget", "0"], "argument --budget: must be a positive integer, got '0'"),
    (PROFILE + ["--window", "128"], "--window 128 exceeds --budget 64: the window is part of the budget"),
    (PROFILE + ["--records", "0"], "argument --records: must be a positive integer"),
    (PROFILE + ["--max-length", "0"], "argument --max-length: must be a positive integer"),
    (PROFILE + ["--device", "gpu"], "argument --device: 'gpu' is not a torch device"),
    (PROFILE + ["--data", "{tmp}/missing.jsonl"], "--data {tmp}/missing.jsonl does not exist"),
    (PROFILE + ["--data", "{tmp}/empty.jsonl"], "--data: {tmp}/empty.jsonl holds no records"),
    (PROFILE + ["--data", "{tmp}/bad.jsonl"], "--data: {tmp}/bad.jsonl line 1 is not JSON"),
    (PROFILE + ["--data", "{tmp}/empty"], "--data: {tmp}/empty holds no .txt files"),
    (PROFILE + ["--out", "{tmp}/missing/profile.json"], "--out {tmp}/missing/profile.json: the folder {tmp}/missing does not exist"),
    (PROFILE + ["--samples", "{tmp}/missing/s.json"], "--samples {tmp}/missing/s.json: the folder {tmp}/missing does not exist"),
    (PROFILE + ["--model", "./no-such-model"], "--model: Model path './no-such-model' does not exist"),
    (["--data", "{tmp}/bad.jsonl", "--out", "{tmp}/p.json"], "--budget is required to profile --policy ada_snapkv (or measure --retrieval-heads)"),
    (["--budget", "64", "--out", "{tmp}/p.json"], "--data is required to profile --policy ada_snapkv"),
    (["--retrieval-heads", "--budget", "64", "--out", "{tmp}/tables"], "--budget has no use with --retrieval-heads"),
    (["--retrieval-heads", "--out", "{tmp}/missing/tables"], "--out {tmp}/missing/tables: the folder {tmp}/missing does not exist"),
    (["--retrieval-heads", "--out", "{tmp}/bad.jsonl"], "--out {tmp}/bad.jsonl is a file: with --retrieval-heads give the profiles folder"),
    (["--retrieval-heads", "--out", "{tmp}/tables", "--name", "x_retrieval"], "--name 'x_retrieval': give a model name without"),
    (["--retrieval-heads", "--out", "{tmp}/tables", "--lengths", "1024,0"], "argument --lengths: must be a positive integer, got '0'"),
    (["--retrieval-heads", "--out", "{tmp}/tables", "--model", "./no-such-model"], "--model: Model path './no-such-model' does not exist"),
]

PLAN = ["--duoattention", DUO, "--out", "{tmp}/plan.json"]
PLAN_CASES = [
    (PLAN + ["--gpus", "a"], "argument --gpus: must be a positive integer, got 'a'"),
    (PLAN + ["--gpus", "0"], "argument --gpus: must be a positive integer, got '0'"),
    (PLAN + ["--gpus", "2,4"], "--gpus takes one count without --simulate, got 2,4"),
    (PLAN + ["--gpus", "2", "--batch", "0"], "argument --batch: must be a positive integer"),
    (PLAN + ["--gpus", "2", "--max-copies", "-1"], "max_copies must be >= 0"),
    (PLAN + ["--gpus", "2", "--mem-gib", "0"], "--mem-gib must be positive"),
    (PLAN + ["--gpus", "2", "--retrieval-fraction", "2"], "retrieval fraction must be in [0, 1], got 2.0"),
    (PLAN + ["--gpus", "2", "--context", "0"], "context must be a positive number of tokens, got 0"),
    (["--profile", "{tmp}/missing.json", "--gpus", "2", "--out", "{tmp}/plan.json"], "--profile {tmp}/missing.json does not exist"),
    (["--profile", "{tmp}/bad.json", "--gpus", "2", "--out", "{tmp}/plan.json"], "--profile {tmp}/bad.json is not a profile JSON (JSONDecodeError"),
    (["--profile", "{tmp}/object.json", "--gpus", "2", "--out", "{tmp}/plan.json"], "--profile {tmp}/object.json is not a profile JSON"),
    (["--gpus", "2", "--out", "{tmp}/plan.json"], "give one of --profile, --duoattention or --headkv (or --simulate)"),
    (["--duoattention", DUO, "--gpus", "2"], "--out plan.json is required"),
    (["--duoattention", DUO, "--gpus", "2", "--out", "{tmp}/missing/plan.json"], "--out {tmp}/missing/plan.json: the folder {tmp}/missing does not exist"),
    (["--duoattention", DUO, "--gpus", "2", "--robustness", "{tmp}/missing.json"], "--robustness {tmp}/missing.json does not exist"),
    (["--duoattention", DUO, "--gpus", "2", "--robustness", "{tmp}/bad.json"], "--robustness {tmp}/bad.json is not JSON"),
    (["--simulate", "--gpus", "2", "--profiles-dir", "{tmp}/missing", "--out", "{tmp}/sim"], "--profiles-dir {tmp}/missing is not a folder"),
    (["--simulate", "--gpus", "2", "--profiles-dir", "{tmp}", "--measured", "{tmp}/missing", "--out", "{tmp}/sim"],
     "--measured {tmp}/missing is not a folder"),
]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _check_refused(main: Callable[[list[str]], int], argv: list[str], expected: str, tmp_path: Path, monkeypatch,
                   capsys) -> None:
    monkeypatch.chdir(tmp_path)  # defaults such as eval/outputs/... would land here
    _inputs(tmp_path)
    before = _snapshot(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        status = main(args)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected.replace("{tmp}", str(tmp_path)) in err
    assert out == ""
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


@pytest.mark.parametrize("argv, expected", LONGBENCH_CASES, ids=[" ".join(a[:1] + a[4:]) or "-" for a, _ in LONGBENCH_CASES])
def test_longbench_refuses(argv: list[str], expected: str, tmp_path: Path, monkeypatch, capsys) -> None:
    _check_refused(longbench.main, argv, expected, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("argv, expected", PROFILE_CASES, ids=[" ".join(a[6:]) for a, _ in PROFILE_CASES])
def test_profile_refuses(argv: list[str], expected: str, tmp_path: Path, monkeypatch, capsys) -> None:
    _check_refused(profile.main, argv, expected, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("argv, expected", PLAN_CASES, ids=[" ".join(a) for a, _ in PLAN_CASES])
def test_plan_refuses(argv: list[str], expected: str, tmp_path: Path, monkeypatch, capsys) -> None:
    _check_refused(plan.main, argv, expected, tmp_path, monkeypatch, capsys)
