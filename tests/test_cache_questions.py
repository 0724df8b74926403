"""The cache as users use it: compress a context once, then ask (one or several questions from copies); left
padding only; use_cache=True only; PyramidKV's exact budget; every bad number refused up front."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from transformers import DynamicCache

from fairkv_hf import FairKVCache, PyramidKVPolicy
from fairkv_hf.compat import cache_kwarg
from tests.conftest import left_padded, tiny_model

NEW = 6


def _ask(model, cache, context: tuple, question: tuple) -> list:
    """Generate after a question appended to a context that is already in `cache` (one multi-token forward)."""
    ids, mask = torch.cat([context[0], question[0]], 1), torch.cat([context[1], question[1]], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def _fill(model, cache, context: tuple):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        model(input_ids=context[0], attention_mask=context[1], **cache_kwarg(cache))
    return cache


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_questions_after_a_context_match_dynamic_cache_with_full(family: str) -> None:
    model = tiny_model(family)
    context = left_padded([40, 23, 31])
    questions = [left_padded([7, 4, 9], seed=5), left_padded([3, 8, 5], seed=6)]  # padding inside the sequence
    model.set_attn_implementation("sdpa")
    dynamic = _fill(model, DynamicCache(config=model.config), context)
    expected = [_ask(model, copy.deepcopy(dynamic), context, q) for q in questions]
    compressed = _fill(model, FairKVCache(model, policy="full"), context)
    got = [_ask(model, compressed.copy(), context, q) for q in questions]
    assert got == expected
    assert _ask(model, compressed, context, questions[0]) == expected[0]  # the original is untouched by its copies


def test_snapkv_keeps_the_question_whole() -> None:
    model = tiny_model("llama")
    context, question = left_padded([60, 45]), left_padded([9, 5], seed=3)
    cache = _fill(model, FairKVCache(model, policy="snapkv", budget=16, window=4), context)
    before = cache.kept_lengths()
    assert (before == 16).all()
    _ask(model, cache, context, question)
    grown = cache.kept_lengths() - before
    assert grown[:, 0].eq(9 + NEW - 1).all() and grown[:, 1].eq(5 + NEW - 1).all()


def test_a_copy_is_independent_storage() -> None:
    model = tiny_model("mistral")
    context = left_padded([30])
    cache = _fill(model, FairKVCache(model, policy="snapkv", budget=16, window=4), context)
    clone = cache.copy()
    assert clone.layers[0].k_pool.data_ptr() != cache.layers[0].k_pool.data_ptr()
    _ask(model, clone, context, left_padded([5], seed=2))
    assert (cache.kept_lengths() == 16).all() and (clone.kept_lengths() > 16).all()


def test_right_padding_is_refused() -> None:
    model = tiny_model("llama")
    ids, mask = left_padded([12, 8])
    ids, mask = ids.flip(1), mask.flip(1)
    with pytest.raises(ValueError, match="padding_side = 'left'"):
        model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(FairKVCache(model, policy="full")),
                       max_new_tokens=2, pad_token_id=0)


def test_use_cache_false_is_refused() -> None:
    model = tiny_model("llama")
    ids, mask = left_padded([12])
    with pytest.raises(ValueError, match="needs use_cache=True"):
        model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(FairKVCache(model, policy="full")),
                       use_cache=False, max_new_tokens=2, pad_token_id=0)


def test_pyramid_keeps_its_total_budget_with_a_real_pyramid() -> None:
    policy = PyramidKVPolicy()
    policy.bind(num_layers=30, num_kv_heads=3)
    budgets = [policy.layer_budget(40, 32, layer) for layer in range(30)]
    assert sum(budgets) == 30 * 40
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1] >= 32


def test_a_policy_object_is_bound_per_cache() -> None:
    policy = PyramidKVPolicy()
    first = FairKVCache(tiny_model("llama", layers=3), policy=policy, budget=48, window=8)
    FairKVCache(tiny_model("llama", layers=5), policy=policy, budget=48, window=8)
    assert first.policy.num_layers == 3 and policy.num_layers is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"policy": "snapkv", "budget": "128"}, "budget must be a positive integer"),
    ({"policy": "snapkv", "budget": 40.5}, "budget must be a positive integer"),
    ({"policy": "snapkv", "budget": math.nan}, "budget must be a positive integer"),
    ({"policy": "snapkv", "budget": True}, "budget must be a positive integer"),
    ({"policy": "snapkv", "budget": 0}, "budget must be a positive integer"),
    ({"policy": "snapkv"}, "needs budget="),
    ({"policy": "snapkv", "budget": 64, "window": 8.5}, "window must be a positive integer"),
    ({"policy": "snapkv", "budget": 64, "window": 0}, "window must be a positive integer"),
    ({"policy": "snapkv", "budget": 16, "window": 32}, "the window is part of the budget"),
    ({"policy": "ada_snapkv", "budget": 64, "alpha": math.nan}, "alpha"),
    ({"policy": "ada_snapkv", "budget": 64, "alpha": "0.2"}, "alpha"),
    ({"policy": "snapkv", "budget": 64, "pool_kernel": 7.0}, "pool_kernel"),
    ({"policy": "pyramidkv", "budget": 64, "beta": 2.5}, "beta"),
    ({"policy": "snapkv", "budget": 64, "gqa_reduce": "sum"}, "gqa_reduce"),
    ({"policy": "nope", "budget": 64}, "Unknown policy"),
])
def test_bad_numbers_are_refused_up_front(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FairKVCache(tiny_model("llama"), **kwargs)
