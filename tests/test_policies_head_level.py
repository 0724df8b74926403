"""PyramidKV, static per-head budgets and DuoAttention heads: what each layer and head keeps, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairkv_hf import DuoAttentionPolicy, FairKVCache, HeadBudgetPolicy, PyramidKVPolicy, get_policy
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.placement.converters import from_headkv
from fairkv_hf.policies.duoattention import retrieval_heads

from .conftest import SHARED, left_padded, tiny_model

NEW = 5


def _generate(model, cache, lengths, seed=3):
    ids, mask = left_padded(lengths, seed=seed)
    model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=NEW, min_new_tokens=NEW,
                   do_sample=False, pad_token_id=0)
    return cache.kept_lengths() - (NEW - 1)


def test_pyramid_schedule_by_hand() -> None:
    policy = PyramidKVPolicy(beta=4)
    policy.bind(num_layers=3, num_kv_heads=2)
    # prefix P = 100 - 20 = 80: last layer 80 // 4 = 20, first 2 * 80 - 20 = 140, step (140 - 20) // 2 = 60
    assert [policy.layer_budget(100, 20, layer) for layer in range(3)] == [160, 100, 40]


def test_pyramidkv_keeps_its_layer_budgets() -> None:
    model = tiny_model("llama", layers=3)
    # P = 40: last layer 40 // 4 = 10, first 80 - 10 = 70, step 30; plus the window of 8
    kept = _generate(model, FairKVCache(model, policy="pyramidkv", budget=48, window=8, beta=4), [200, 150])
    assert kept[:, 0].tolist() == [[78, 78], [48, 48], [18, 18]]
    assert kept[:, 1].tolist() == [[78, 78], [48, 48], [18, 18]]


def test_pyramidkv_needs_the_depth() -> None:
    with pytest.raises(ValueError, match="needs the number of layers"):
        PyramidKVPolicy().layer_budget(64, 8, 0)


def test_head_budgets_keep_each_heads_own_count() -> None:
    model = tiny_model("qwen2", layers=2)
    table = np.array([[20, 60], [120, 12]])
    cache = FairKVCache(model, policy=HeadBudgetPolicy(tokens=table), window=8)
    kept = _generate(model, cache, [200, 90])
    assert kept[:, 0].tolist() == table.tolist()
    assert kept[:, 1].tolist() == [[20, 60], [90, 12]], "a head whose budget exceeds the prompt keeps it whole"


def test_head_budgets_refuse_another_models_table_and_a_window_above_a_budget() -> None:
    model = tiny_model("llama", layers=2)
    with pytest.raises(ValueError, match=r"shape \(3, 2\), but the model has 2 layers x 2 KV heads"):
        FairKVCache(model, policy=HeadBudgetPolicy(tokens=np.full((3, 2), 40)))
    cache = FairKVCache(model, policy=HeadBudgetPolicy(tokens=[[40, 6], [40, 40]]), window=8)
    with pytest.raises(ValueError, match="fewer than the window of 8"):
        _generate(model, cache, [100])


def test_head_budgets_from_a_headkv_profile() -> None:
    path = SHARED / "profiles" / "headkv" / "Mistral-7B-Instruct-v0.2_retrieval_heads.json"
    if not path.exists():
        pytest.skip(f"shared profiles not found at {path}")
    profile = from_headkv(path, budget=128, beta=1.01)
    policy = HeadBudgetPolicy.from_profile(profile)
    policy.bind(32, 8)
    assert policy.tokens.shape == (32, 8) and abs(policy.tokens.mean() - 128) < 1
    assert policy.tokens.max() > 3 * policy.tokens.min(), "HeadKV budgets are unequal across heads"
    with pytest.raises(ValueError, match=r"shape \(32, 8\), but the model has 2 layers x 2 KV heads"):
        FairKVCache(tiny_model("llama"), policy=policy)


def test_duoattention_retrieval_and_streaming_heads() -> None:
    model = tiny_model("mistral", layers=2)
    retrieval = np.array([[True, False], [False, False]])
    cache = FairKVCache(model, policy=DuoAttentionPolicy(retrieval=retrieval, sink=4, recent=16))
    kept = _generate(model, cache, [100, 12])
    assert kept[:, 0].tolist() == [[100, 20], [20, 20]]
    assert kept[:, 1].tolist() == [[12, 12], [12, 12]], "a prompt within sink + recent is kept whole"


def test_duoattention_streaming_head_keeps_first_and_last_tokens() -> None:
    policy = DuoAttentionPolicy(retrieval=[[False]], sink=2, recent=3)
    valid = torch.tensor([[False, False, True, True, True, True, True, True, True]])
    keys = torch.zeros(1, 1, 9, 4)
    keep = policy.keep_mask(keys, keys, valid, 1.0, None, 8, 0)
    assert keep[0, 0].tolist() == [False, False, True, True, False, False, True, True, True]


def test_retrieval_heads_rank_over_all_layers() -> None:
    gates = np.array([[0.9, 0.1], [0.5, 0.5]])
    assert retrieval_heads(gates, 0.5).tolist() == [[True, False], [True, False]]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        retrieval_heads(gates, 1.5)


def test_duoattention_from_published_gates() -> None:
    path = SHARED / "profiles" / "duoattention" / "Meta-Llama-3.1-8B-Instruct.full_attention_heads.tsv"
    if not path.exists():
        pytest.skip(f"shared profiles not found at {path}")
    policy = DuoAttentionPolicy.from_gates(path, fraction=0.5)
    assert policy.retrieval.shape == (32, 8) and policy.retrieval.sum() == 128
    assert get_policy("duoattention", retrieval=policy.retrieval).name == "duoattention"


def test_table_policies_by_name_say_what_they_need() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="HeadBudgetPolicy needs tokens"):
        FairKVCache(model, policy="head_budgets")
    with pytest.raises(ValueError, match="DuoAttentionPolicy needs retrieval"):
        FairKVCache(model, policy="duoattention")
