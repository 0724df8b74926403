"""The cache keyword of the installed transformers: the cache really reaches the model, and the newest
transformers gives no FutureWarning for it."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

from fairkv_hf import FairKVCache
from fairkv_hf.compat import cache_keyword, cache_kwarg

from .conftest import left_padded, tiny_model


def test_keyword_is_the_one_the_models_take() -> None:
    assert cache_keyword() in inspect.signature(LlamaForCausalLM.forward).parameters


@pytest.mark.parametrize("make_cache", [lambda model: DynamicCache(),
                                        lambda model: FairKVCache(model, policy="snapkv", budget=16, window=4)],
                         ids=["dynamic", "fairkv"])
def test_generate_and_forward_use_the_cache_without_warnings(make_cache) -> None:
    model = tiny_model("llama")
    ids, mask = left_padded([40, 30])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        cache = make_cache(model)
        out = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=3, min_new_tokens=3,
                             do_sample=False, pad_token_id=0)
        assert cache.get_seq_length() == out.shape[1] - 1  # the last token is never fed back
        step = model(input_ids=out[:, -1:], attention_mask=torch.ones_like(out), **cache_kwarg(cache))
    assert step.logits.shape[:2] == (2, 1)
    assert cache.get_seq_length() == out.shape[1]
