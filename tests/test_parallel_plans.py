"""Plans as the executor reads them: row ranges, rank layouts, head device maps, and the errors for bad plans."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairkv_hf import FairKVCache
from fairkv_hf.heads import HeldHead
from fairkv_hf.parallel import check_plan, prepare, rank_layout, resolve_plan
from fairkv_hf.parallel.attention import HeadParallelAttention
from fairkv_hf.parallel.collectives import init_distributed
from fairkv_hf.placement import HeadLoadProfile, make_plan
from fairkv_hf.placement.device_map import from_device_map, load_plan_file, to_device_map
from fairkv_hf.placement.plans import standard_plan
from tests.conftest import tiny_config, tiny_model


def _profile(layers: int = 4, heads: int = 8, seed: int = 0) -> HeadLoadProfile:
    tokens = np.random.default_rng(seed).lognormal(5, 1, (layers, heads))
    return HeadLoadProfile("skewed", layers, 4 * heads, heads, 128, 4096, 128, tokens)


def _plans() -> list:
    profile = _profile()
    return [standard_plan(profile, g) for g in (1, 2, 3, 8, 11)] + [
        make_plan(profile, g, batch=8, objective="balance") for g in (2, 3, 4)]


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 13])
def test_row_ranges_split_each_head_into_contiguous_rows_in_gpu_order(batch: int) -> None:
    for plan in _plans():
        for layer in plan.row_ranges(batch):
            for replicas in layer:
                assert [g for g, _, _ in replicas] == sorted(g for g, _, _ in replicas)
                assert replicas[0][1] == 0 and replicas[-1][2] == batch
                assert all(a[2] == b[1] for a, b in zip(replicas, replicas[1:]))
                assert all(end >= start for _, start, end in replicas)


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_every_row_of_every_head_is_served_by_exactly_one_rank(batch: int) -> None:
    for plan in _plans():
        layouts = [rank_layout(plan, rank, plan.gpus) for rank in range(plan.gpus)]
        for l, layer in enumerate(plan.row_ranges(batch)):
            served = torch.zeros(batch, plan.profile.num_kv_heads, dtype=torch.long)
            for layout in layouts:
                heads = layout.heads[l]
                served[:, heads.ids] += heads.served(batch).long()
                for j, head in enumerate(heads.held):
                    start, end = next((s, e) for g, s, e in layer[head.head] if g == layout.rank)
                    assert head.rows(batch) == (start, end)
            assert torch.equal(served, torch.ones_like(served)), (plan.kind, plan.gpus, l)


def test_more_replicas_than_rows_leaves_the_last_replicas_without_rows() -> None:
    shares = (1 / 3, 1 / 3, 1 / 3)
    assert [HeldHead(0, shares, r).rows(1) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]
    assert [HeldHead(0, shares, r).rows(2) for r in range(3)] == [(0, 1), (1, 2), (2, 2)]


def test_device_maps_round_trip() -> None:
    for plan in _plans():
        back = from_device_map(json.loads(json.dumps(to_device_map(plan))), plan.profile, plan.gpus)
        for ours, theirs in zip(plan.layers, back.layers):
            for a, b in zip(ours, theirs):
                assert sorted(p.gpu for p in a) == sorted(p.gpu for p in b)
                assert sorted((p.gpu, p.batch_fraction) for p in a) == sorted((p.gpu, p.batch_fraction) for p in b)


def test_device_map_forms() -> None:
    profile = _profile(layers=1, heads=3)
    plan = from_device_map({"model.layers.0.self_attn.kv_heads.0": 1, "model.layers.0.self_attn.kv_heads.1": [0, 1],
                            "model.layers.0.self_attn.kv_heads.2": {"1": 0.75, "0": 0.25}}, profile)
    assert plan.gpus == 2 and plan.kind == "device_map"
    assert plan.row_ranges(4)[0] == [[(1, 0, 4)], [(0, 0, 2), (1, 2, 4)], [(0, 0, 1), (1, 1, 4)]]
    assert to_device_map(plan)["model.layers.0.self_attn.kv_heads.2"] == {"1": 0.75, "0": 0.25}


@pytest.mark.parametrize(("device_map", "message"), [
    ({"model.layers.0.self_attn.kv_heads.0": 0}, "lacks 1 KV head"),
    ({"model.layers.0.attn.kv_heads.0": 0, "model.layers.0.self_attn.kv_heads.1": 0}, "is not of the form"),
    ({"model.layers.0.self_attn.kv_heads.0": 0, "model.layers.0.self_attn.kv_heads.2": 0}, "outside the model"),
    ({"model.layers.0.self_attn.kv_heads.0": "gpu0", "model.layers.0.self_attn.kv_heads.1": 0}, "expected a GPU id"),
    ({"model.layers.0.self_attn.kv_heads.0": [], "model.layers.0.self_attn.kv_heads.1": 0}, "expected a GPU id"),
    ({"model.layers.0.self_attn.kv_heads.0": True, "model.layers.0.self_attn.kv_heads.1": 0}, "expected a GPU id"),
    ({"model.layers.0.self_attn.kv_heads.0": [0, 0], "model.layers.0.self_attn.kv_heads.1": 0}, "must be distinct"),
    ({"model.layers.0.self_attn.kv_heads.0": {"0": 0.5, "1": 0.2}, "model.layers.0.self_attn.kv_heads.1": 0}, "sum to 1"),
])
def test_bad_device_maps_are_refused_with_the_place(device_map: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_device_map(device_map, _profile(layers=1, heads=2))


def test_bad_plan_files_say_where(tmp_path) -> None:
    profile = _profile(layers=1, heads=2)
    broken = tmp_path / "broken.json"
    broken.write_text('{"model.layers.0.self_attn.kv_heads.0": 0,\n "oops"}')
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON at line 2, column"):
        load_plan_file(broken, profile)
    plan = standard_plan(profile, 2).to_dict()
    del plan["cost_model"]
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="incomplete.json lacks the key 'cost_model'"):
        load_plan_file(incomplete, profile)
    with pytest.raises(ValueError, match="neither one of"):
        resolve_plan(str(tmp_path / "missing.json"), tiny_config("llama"), 2)
    with pytest.raises(ValueError, match="pass profile="):
        resolve_plan("fairkv", tiny_config("llama"), 2)


def test_plans_for_another_shape_or_world_size_are_refused() -> None:
    config = tiny_config("llama")  # 2 layers, 4 query heads over 2 KV heads
    with pytest.raises(ValueError, match="2 layers, 8 KV heads and 32 query heads"):
        check_plan(standard_plan(_profile(layers=2, heads=8), 2), config, 2)
    plan = resolve_plan("standard", config, 3)
    with pytest.raises(ValueError, match="places heads on 3 GPUs but 2 processes run"):
        check_plan(plan, config, 2)
    with pytest.raises(ValueError, match="places heads on 3 GPUs but 1 processes run"):
        prepare(tiny_model("llama"), plan)


def test_unsupported_model_types_are_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="supports model types"):
        prepare(model, "standard")


def test_cuda_needs_nccl(monkeypatch) -> None:
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(RuntimeError, match="NCCL backend"):
        init_distributed("cuda")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    with pytest.raises(RuntimeError, match="CUDA tensors need"):
        init_distributed("cuda")


def test_head_parallel_attention_runs_only_with_a_fairkv_cache() -> None:
    model = tiny_model("qwen2")
    attn = HeadParallelAttention(model.model.layers[0].self_attn, [1], keeps_bias=True)
    assert attn.q_proj.weight.shape == (2 * 16, 64) and attn.q_proj.bias.shape == (32,)
    assert attn.k_proj.weight.shape == (16, 64) and attn.o_proj.weight.shape == (64, 32)
    assert torch.equal(attn.k_proj.weight, model.model.layers[0].self_attn.k_proj.weight[16:])
    with pytest.raises(ValueError, match="runs with a FairKVCache only"):
        attn(torch.zeros(1, 3, 64), position_embeddings=None, attention_mask=None)
    FairKVCache(model, policy="full")  # a plain cache object is fine to build on an unprepared model
