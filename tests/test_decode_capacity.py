"""Decode capacity reserved at prefill (max_new_tokens): the same tokens and kept lengths, no block taken while it
lasts, growth past it; the CUDA-graph wrapper keeps generate()'s view of the forward and runs CPU steps eagerly."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from fairkv_hf import FairKVCache
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.graphs import enable_cuda_graphs
from tests.conftest import left_padded, tiny_model

NEW = 12


def _generate(model, cache, lengths=(70, 41, 55)):
    ids, mask = left_padded(list(lengths))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=NEW,
                             min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("reserve", [NEW, 4, 200])
def test_reserved_capacity_changes_nothing_but_allocation(reserve: int) -> None:
    model = tiny_model("qwen2")
    plain = FairKVCache(model, policy="ada_snapkv", budget=24, window=4)
    reserved = FairKVCache(model, policy="ada_snapkv", budget=24, window=4, max_new_tokens=reserve)
    assert torch.equal(_generate(model, plain), _generate(model, reserved))
    assert torch.equal(plain.kept_lengths(), reserved.kept_lengths())
    layer = reserved.layers[0]
    assert layer.static_steps_left == max(reserve - (NEW - 1), 0)
    if reserve >= NEW:  # every block was taken at prefill: the decode steps took none
        stored = layer.stored_lens + layer.steps
        assert layer.blocks_used == int(((layer.stored_lens + reserve + 63) // 64).sum())
        assert (layer.block_table.shape[1] * 64 >= stored.max() + reserve - layer.steps)


def test_graph_wrapper_keeps_the_signature_and_runs_cpu_steps_eagerly() -> None:
    model = tiny_model("llama")
    original = inspect.signature(model.forward)
    graphed = enable_cuda_graphs(model)
    assert enable_cuda_graphs(model) is graphed
    assert inspect.signature(model.forward) == original  # generate() passes position_ids only to a forward taking them
    cache = FairKVCache(model, policy="snapkv", budget=24, window=4, max_new_tokens=NEW)
    other = tiny_model("llama")
    plain = FairKVCache(other, policy="snapkv", budget=24, window=4, max_new_tokens=NEW)
    assert torch.equal(_generate(model, cache), _generate(other, plain))
    assert graphed.captures == 0 and graphed.replays == 0


def test_bad_max_new_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        FairKVCache(tiny_model("llama"), policy="full", max_new_tokens=2.5)
