"""Spawned by tests/test_parallel.py: one rank of a gloo process group running a list of generation cases.

Each case names a model family, a policy, a plan (name or head device map) and prompt lengths; the rank prepares a
fresh tiny model (same seed as the single-process reference), generates, and writes its tokens and gathered kept
lengths to `<out>/<case>.<rank>.json`.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from fairkv_hf.compat import cache_kwarg

NEW_TOKENS = 6
WINDOW = 4


def policy_of(name: str):
    """A policy by test name: the budgeted ones by name, head_budgets with a fixed [2 layers x 2 heads] table."""
    from fairkv_hf import HeadBudgetPolicy

    if name == "head_budgets":
        return HeadBudgetPolicy(tokens=[[6, 14], [11, 7]])
    return name


def generate(model, case: dict, seed: int = 0) -> dict:
    """Greedy (or seeded sampling) generation of one case with a FairKVCache; tokens and kept lengths."""
    from fairkv_hf import FairKVCache
    from tests.conftest import left_padded

    ids, mask = left_padded(case["lengths"])
    cache = FairKVCache(model, policy=policy_of(case["policy"]), budget=10, window=WINDOW)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **cache_kwarg(cache),
                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=case.get("sample", False))
    return {"tokens": out[:, ids.shape[1]:].tolist(), "kept": cache.kept_lengths().tolist()}


def _join(rank: int, world_size: int, port: int, timeout_s: int) -> None:
    """Set the launcher's environment for this rank, one thread, and join the gloo group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))


def run_rank(rank: int, world_size: int, port: int, cases: list[dict], out_dir: str) -> None:
    """Join the group, then run every case on this rank (every rank runs the same list in the same order)."""
    _join(rank, world_size, port, 120)
    from fairkv_hf import parallel
    from fairkv_hf.fusion import fuse_decode_ops
    from tests.conftest import tiny_model

    try:
        for case in cases:
            model = tiny_model(case["family"], layers=2, seed=case.get("model_seed", 0))
            model = parallel.prepare(model, case["plan"], mlp=case.get("mlp", "split"))
            if case.get("fuse"):
                fuse_decode_ops(model, compile=False)
            result = generate(model, case, seed=case.get("seed", 0))
            result["fused_attentions"] = sum("fused_qkv" in m.__dict__ for m in model.modules())
            Path(out_dir, f"{case['name']}.{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def longbench_batch(tokenizer, records: int = 2, max_length: int = 2000) -> dict:
    """The first `records` multifieldqa_en records of the shared LongBench folder as the official prompts (cut to
    `max_length` tokens, chat template), left-padded."""
    from fairkv_hf.eval.data import default_data_dir, load_configs, load_task
    from fairkv_hf.eval.prompting import build_prompt_ids

    data_dir = default_data_dir()
    template = load_configs(data_dir / "config")["multifieldqa_en"].template
    prompts = [build_prompt_ids(template, record, tokenizer, max_length, chat=True)
               for record in load_task("multifieldqa_en", data_dir).select(range(records))]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def smollm2_generate(model, tokenizer, plan_name: str) -> dict:
    """Greedy tokens and kept lengths of SmolLM2 on the LongBench batch with Ada-SnapKV at budget 128."""
    from fairkv_hf import FairKVCache

    inputs = longbench_batch(tokenizer)
    cache = FairKVCache(model, policy="ada_snapkv", budget=128)
    out = model.generate(**inputs, **cache_kwarg(cache), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    return {"tokens": out[:, inputs["input_ids"].shape[1]:].tolist(), "kept": cache.kept_lengths().tolist(),
            "prompt_tokens": inputs["attention_mask"].sum(-1).tolist(), "plan": plan_name}


def run_smollm2_rank(rank: int, world_size: int, port: int, plans: dict, out_dir: str) -> None:
    """One rank of the real-model check: every plan in turn on a freshly loaded SmolLM2."""
    _join(rank, world_size, port, 300)
    from fairkv_hf import load_model, parallel

    try:
        for name, plan in plans.items():
            model, tokenizer = load_model("smollm2-135m-instruct")
            model = parallel.prepare(model, plan)
            result = smollm2_generate(model, tokenizer, name)
            Path(out_dir, f"smollm2-{name}.{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
