"""With nothing evicted, FairKVCache + "fairkv" attention must reproduce DynamicCache + sdpa."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from fairkv_hf import FairKVCache
from fairkv_hf.compat import cache_kwarg

from .conftest import left_padded, tiny_model

NEW_TOKENS = 32


def _generate(model, ids, mask, cache, **kwargs):
    options = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    options.update(kwargs)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        **cache_kwarg(cache),
        output_logits=True,
        return_dict_in_generate=True,
        **options,
    )
    model.set_attn_implementation("sdpa")
    return out


@pytest.mark.parametrize("lengths", [[45], [45, 30, 17]], ids=["batch1", "batch3-padded"])
@pytest.mark.parametrize("policy", ["full", "snapkv", "ada_snapkv"])
def test_matches_dynamic_cache(family, lengths, policy):
    model = tiny_model(family)
    ids, mask = left_padded(lengths)
    ref = _generate(model, ids, mask, DynamicCache())
    budget = None if policy == "full" else max(lengths)
    cache = FairKVCache(model, policy=policy, budget=budget, window=8)
    out = _generate(model, ids, mask, cache)
    assert torch.equal(out.sequences, ref.sequences)
    for got, want in zip(out.logits, ref.logits):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    kept = cache.kept_lengths()
    assert kept.shape == (2, len(lengths), 2)
    expected = torch.tensor(lengths) + NEW_TOKENS - 1
    assert torch.equal(kept, expected[None, :, None].expand_as(kept))
    assert cache.get_seq_length() == max(lengths) + NEW_TOKENS - 1


def test_sampling_matches_dynamic_cache():
    model = tiny_model("llama")
    ids, mask = left_padded([40, 25])
    torch.manual_seed(3)
    ref = _generate(model, ids, mask, DynamicCache(), do_sample=True, top_k=0, temperature=1.0)
    torch.manual_seed(3)
    out = _generate(model, ids, mask, FairKVCache(model, policy="snapkv", budget=64, window=8), do_sample=True, top_k=0)
    assert torch.equal(out.sequences, ref.sequences)


def test_plain_forward_without_cache_is_dense_attention():
    model = tiny_model("qwen2")
    ids, mask = left_padded([30, 21])
    want = model(input_ids=ids, attention_mask=mask).logits
    FairKVCache(model, policy="full")
    got = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    valid = mask.bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=0)
