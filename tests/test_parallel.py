"""Head-parallel execution on CPU (gloo, spawned processes, float32): the same tokens as one process.

Every family x policy x plan x batch size runs on 2 and on 3 processes against the single-process result: greedy
tokens identical on every rank and equal to one process's, gathered kept lengths equal. Plans: the standard
split, heads moved to other ranks (a rank holding no head of a layer included), and heads replicated on 2-3 ranks
with equal and unequal batch shares (batch 1 leaves replicas with no rows).
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

from tests.conftest import tiny_model
from tests.parallel_worker import generate, run_rank

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
POLICIES = ["full", "snapkv", "ada_snapkv", "pyramidkv", "head_budgets"]
LENGTHS = {1: [19], 2: [23, 14], 5: [21, 9, 17, 25, 12]}


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


def _spawn(world_size: int, cases: list[dict], out_dir, timeout_s: float = 600) -> None:
    """Run the cases on `world_size` spawned gloo ranks; fail (not hang) if they do not finish in time."""
    context = mp.start_processes(run_rank, args=(world_size, _free_port(), cases, str(out_dir)), nprocs=world_size,
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
        for family, policy, plan, batch in itertools.product(FAMILIES, POLICIES, PLANS[world_size], LENGTHS)
    ]
    torch.set_num_threads(1)
    _spawn(world_size, cases, tmp_path)
    for case in cases:
        expected = _reference(case)
        for rank in range(world_size):
            got = json.loads((tmp_path / f"{case['name']}.{rank}.json").read_text())
            assert got["tokens"] == expected["tokens"], f"{case['name']} rank {rank}"
            assert got["kept"] == expected["kept"], f"{case['name']} rank {rank}"
