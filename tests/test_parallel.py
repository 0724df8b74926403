"""Head-parallel execution on CPU (gloo, spawned processes, float32): the same tokens as one process.

Every family x policy x plan x batch size runs on 2 and on 3 processes against the single-process result: greedy
tokens identical on every rank and equal to one process's, gathered kept lengths equal (CAKE, whose cascade re-trims
earlier layers from budgets gathered over all heads, on one family each, plain and under Ada). Plans: the standard
split, heads moved to other ranks (a rank holding no head of a layer included), and heads replicated on 2-3 ranks
with equal and unequal batch shares (batch 1 leaves replicas with no rows); the fused decode step too.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import SHARED, tiny_model
from tests.parallel_worker import generate, run_rank, run_smollm2_rank, smollm2_generate

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
POLICIES = ["full", "snapkv", "ada_snapkv", "pyramidkv", "head_budgets"]
CASCADING = [("llama", "cake"), ("qwen3", "ada_cake")]
LENGTHS = {1: [19], 2: [23, 14], 5: [21, 9, 17, 25, 12]}
SHARED_LONGBENCH = SHARED / "data" / "longbench"


def _map(layer0: list, layer1: list) -> dict:
    """A head device map of the tiny models (2 layers x 2 KV heads)."""
    return {f"model.layers.{l}.self_attn.kv_heads.{h}": where
            for l, layer in enumerate([layer0, layer1]) for h, where in enumerate(layer)}


PLANS = {
    2: {"standard": "standard",
        "reassigned": _map([1, 0], [1, 1]),
        "replicated": _map([[0, 1], 1], [0, {"0": 0.75, "1": 0.25}])},
    3: {"standard": "standard",
        "reassigned": _map([2, 0], [1, 2]),
        "replicated": _map([[0, 1, 2], 1], [{"2": 0.6, "0": 0.4}, [1, 2]])},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world_size: int, cases, out_dir, timeout_s: float = 600, target=run_rank) -> None:
    """Run the cases on `world_size` spawned gloo ranks; fail (not hang) if they do not finish in time."""
    context = mp.start_processes(target, args=(world_size, _free_port(), cases, str(out_dir)), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                pytest.fail(f"{world_size} ranks did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _reference(case: dict) -> dict:
    torch.manual_seed(0)
    model = tiny_model(case["family"], layers=2, seed=case.get("model_seed", 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return generate(model, case, seed=case.get("seed", 0))


@pytest.mark.parametrize("world_size", [2, 3])
def test_tokens_and_kept_lengths_match_one_process(world_size: int, tmp_path) -> None:
    cases = [
        {"name": f"{family}-{policy}-{plan}-b{batch}", "family": family, "policy": policy, "plan": PLANS[world_size][plan],
         "lengths": LENGTHS[batch]}
        for (family, policy), plan, batch in itertools.product(
            [*itertools.product(FAMILIES, POLICIES), *CASCADING], PLANS[world_size], LENGTHS)
    ]
    cases += [  # MLP and lm_head kept whole on every rank; seeded sampling (every rank must draw the same tokens)
        {"name": f"{family}-replicate-mlp", "family": family, "policy": "ada_snapkv", "plan": PLANS[world_size]["replicated"],
         "lengths": LENGTHS[5], "mlp": "replicate"} for family in FAMILIES
    ] + [  # the fused decode step (fusion.py, uncompiled): one q/k/v GEMM per rank's heads, fused layer glue
        {"name": f"{family}-fused", "family": family, "policy": "ada_snapkv", "plan": PLANS[world_size]["replicated"],
         "lengths": LENGTHS[5], "fuse": True} for family in FAMILIES
    ] + [
        {"name": f"{family}-sample-{seed}", "family": family, "policy": "ada_snapkv", "plan": PLANS[world_size]["replicated"],
         "lengths": LENGTHS[5], "sample": True, "seed": seed} for family in FAMILIES for seed in (0, 1)
    ]
    torch.set_num_threads(1)
    _spawn(world_size, cases, tmp_path)
    for case in cases:
        got = [json.loads((tmp_path / f"{case['name']}.{rank}.json").read_text()) for rank in range(world_size)]
        assert all(g == got[0] for g in got), f"{case['name']}: the ranks disagree"
        assert got[0]["fused_attentions"] == (2 if case.get("fuse") else 0), case["name"]
        if case.get("sample"):
            continue
        expected = _reference(case)
        assert got[0]["tokens"] == expected["tokens"], case["name"]
        assert got[0]["kept"] == expected["kept"], case["name"]


@pytest.mark.slow
def test_smollm2_on_three_processes_with_a_longbench_prompt(tmp_path) -> None:
    """The real SmolLM2 (9 query / 3 KV heads, 30 layers) on 3 ranks: the standard split (one KV head each) and a
    FairKV plan with copies, on two 2K-token LongBench prompts with Ada-SnapKV at budget 128."""
    import numpy as np

    from fairkv_hf import load_model
    from fairkv_hf.placement import HeadLoadProfile, make_plan

    if not SHARED_LONGBENCH.is_dir():
        pytest.fail(f"the LongBench records in {SHARED_LONGBENCH} are part of the test setup")
    model, tokenizer = load_model("smollm2-135m-instruct")  # converts the packaged model once, before the ranks start
    skew = np.tile([[400.0, 100.0, 60.0]], (model.config.num_hidden_layers, 1))
    plan = make_plan(HeadLoadProfile.from_config("smollm2", model.config, skew, 128), 3, batch=2, objective="balance")
    assert sum(len(h) - 1 for layer in plan.layers for h in layer) > 0, "the FairKV plan should copy heavy heads"
    plan_file = tmp_path / "plan.json"
    plan.save(plan_file)
    plans = {"standard": "standard", "fairkv": str(plan_file)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expected = smollm2_generate(model, tokenizer, "one process")
    assert min(expected["prompt_tokens"]) > 1500
    _spawn(3, plans, tmp_path, timeout_s=900, target=run_smollm2_rank)
    for name in plans:
        for rank in range(3):
            got = json.loads((tmp_path / f"smollm2-{name}.{rank}.json").read_text())
            assert got["tokens"] == expected["tokens"], f"{name} rank {rank}"
            assert got["kept"] == expected["kept"], f"{name} rank {rank}"
