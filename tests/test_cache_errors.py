"""Every misuse gets a clear error instead of silently wrong attention."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from fairkv_hf import FairKVCache, SnapKVPolicy, get_policy
from fairkv_hf.compat import cache_kwarg

from .conftest import left_padded, tiny_model


@pytest.mark.parametrize("budget", [0, -5])
def test_budget_must_be_positive(budget):
    with pytest.raises(ValueError, match="budget must be a positive"):
        FairKVCache(tiny_model("llama"), policy="snapkv", budget=budget)


def test_window_larger_than_budget():
    with pytest.raises(ValueError, match="window must be in"):
        FairKVCache(tiny_model("llama"), policy="ada_snapkv", budget=16, window=32)


def test_unknown_policy():
    with pytest.raises(ValueError, match="Unknown policy 'h2o'"):
        FairKVCache(tiny_model("llama"), policy="h2o", budget=64)


def test_bad_policy_options():
    with pytest.raises(ValueError, match="alpha"):
        get_policy("ada_snapkv", alpha=1.5)
    with pytest.raises(ValueError, match="only accepted with a policy name"):
        get_policy(SnapKVPolicy(), gqa_reduce="max")


def test_unsupported_model_family():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="supports model types"):
        FairKVCache(model, policy="snapkv", budget=64)


def test_cache_refuses_other_attention():
    model = tiny_model("llama")
    cache = FairKVCache(model, policy="snapkv", budget=16, window=4)
    model.set_attn_implementation("sdpa")
    ids, mask = left_padded([20])
    with pytest.raises(ValueError, match="needs attn_implementation='fairkv'"):
        model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=2, pad_token_id=0)


def test_beam_search_refused():
    model = tiny_model("llama")
    ids, mask = left_padded([20])
    cache = FairKVCache(model, policy="snapkv", budget=16, window=4)
    with pytest.raises(ValueError, match="does not support beam search"):
        model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=4, num_beams=2,
                       pad_token_id=0)


def test_continued_forward_appends_and_reset_allows_reuse():
    model = tiny_model("qwen3")
    ids, mask = left_padded([30])
    cache = FairKVCache(model, policy="snapkv", budget=16, window=4)
    first = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=3, pad_token_id=0)
    before = cache.kept_lengths()
    with torch.no_grad():
        model(input_ids=first[:, :5], **cache_kwarg(cache))
    assert torch.equal(cache.kept_lengths(), before + 5)
    with pytest.raises(ValueError, match="holds 1 sequences but got 2"):
        model(input_ids=first[:, :5].repeat(2, 1), **cache_kwarg(cache))
    cache.reset()
    assert cache.nbytes() == 0 and cache.get_seq_length() == 0
    again = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=3, pad_token_id=0)
    assert torch.equal(again, first)


def test_sliding_window_models_refuse_long_sequences():
    model = tiny_model("mistral")
    model.config.sliding_window = 16
    ids, mask = left_padded([30])
    with pytest.raises(ValueError, match="sliding-window attention"):
        model.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, max_new_tokens=2,
                       **cache_kwarg(FairKVCache(model, policy="snapkv", budget=16, window=4)))
