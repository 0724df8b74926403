"""fill_random: a cache filled with chosen per-head lengths decodes like a cache holding those K/V."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from fairkv_hf import FairKVCache
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.heads import HeadSet, HeldHead
from fairkv_hf.synthetic import fill_random
from tests.conftest import tiny_model


def test_lengths_are_stored_per_head_and_grow_by_one_per_step() -> None:
    model = tiny_model("llama")
    lengths = torch.tensor([[[5, 17], [9, 1]], [[30, 2], [4, 4]]])
    cache = FairKVCache(model, policy="full")
    fill_random(cache, lengths, prompt_length=40, device="cpu", dtype=torch.float32)
    assert torch.equal(cache.kept_lengths(), lengths)
    assert cache.get_seq_length() == 40
    with torch.no_grad():
        model(input_ids=torch.tensor([[3], [4]]), position_ids=torch.tensor([[40], [40]]), **cache_kwarg(cache))
    assert torch.equal(cache.kept_lengths(), lengths + 1)


def test_decoding_a_filled_cache_equals_a_dynamic_cache_holding_the_same_tokens() -> None:
    model = tiny_model("qwen2")
    layers, heads, length = 2, 2, 12
    cache = FairKVCache(model, policy="full")
    fill_random(cache, torch.full((layers, 1, heads), length), prompt_length=length, device="cpu", dtype=torch.float32)
    dynamic = DynamicCache(config=model.config)
    for l, layer in enumerate(cache.layers):
        pairs = [layer.segment(0, h) for h in range(heads)]
        dynamic.update(torch.stack([k for k, _ in pairs])[None], torch.stack([v for _, v in pairs])[None], l)
    step = dict(input_ids=torch.tensor([[7]]), position_ids=torch.tensor([[length]]))
    with torch.no_grad():
        ours = model(**step, **cache_kwarg(cache)).logits
        model.set_attn_implementation("sdpa")
        reference = model(**step, **cache_kwarg(dynamic)).logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_a_layer_holding_a_share_stores_only_its_pairs() -> None:
    model = tiny_model("llama")
    cache = FairKVCache(model, policy="full")
    shares = HeadSet(2, (HeldHead(1, (0.5, 0.5), 1),))  # head 1, second replica: rows 1..2 of a batch of 2
    for layer in cache.layers:
        layer.heads = shares
    lengths = torch.tensor([[[3, 6], [8, 2]]] * 2)
    fill_random(cache, lengths, prompt_length=8, device="cpu", dtype=torch.float32)
    assert torch.equal(cache.layers[0].kept_lengths(), torch.tensor([[0, 0], [0, 2]]))


@pytest.mark.parametrize("lengths, message", [
    (torch.ones(2, 1, 3, dtype=torch.long), "kv_heads=2"),
    (torch.ones(3, 1, 2, dtype=torch.long), "layers=2"),
    (torch.zeros(2, 1, 2, dtype=torch.long), "between 1 and prompt_length"),
    (torch.full((2, 1, 2), 9), "between 1 and prompt_length=8"),
])
def test_bad_lengths_are_refused(lengths: torch.Tensor, message: str) -> None:
    cache = FairKVCache(tiny_model("llama"), policy="full")
    with pytest.raises(ValueError, match=message):
        fill_random(cache, lengths, prompt_length=8, device="cpu", dtype=torch.float32)
