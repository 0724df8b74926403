"""Caches filled with random K/V of chosen per-head lengths, as if a prefill had kept exactly those tokens.

A decode step's cost depends on how many tokens each head holds, not on their values. Throughput benchmarks and
plan checks therefore fill the cache directly with the lengths a policy gives (a DuoAttention or HeadKV table, a
measured profile) instead of running the prefill, which at 32K tokens x 32 rows takes longer than the whole
decode measurement. Decoding then runs the library's real path: append, varlen attention, CUDA graphs.
"""

from __future__ import annotations

import torch

from .cache import FairKVCache


def fill_random(cache: FairKVCache, lengths: torch.Tensor, prompt_length: int, device: torch.device | str,
                dtype: torch.dtype, seed: int = 0) -> None:
    """Store `lengths[l, b, h]` random tokens (global KV head h) in every (row, head) pair each layer serves, as a
    prefill of `prompt_length` positions that kept them would; the next token then decodes at position
    `prompt_length`. On a head-parallel model every rank calls it with the same global lengths."""
    config = cache.config
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if lengths.dim() != 3 or lengths.shape[0] != len(cache.layers) or lengths.shape[2] != heads:
        raise ValueError(f"lengths must be [layers={len(cache.layers)}, batch, kv_heads={heads}], got {tuple(lengths.shape)}")
    if int(lengths.min()) < 1 or int(lengths.max()) > prompt_length:
        raise ValueError(f"every head must keep between 1 and prompt_length={prompt_length} tokens, got "
                         f"{int(lengths.min())}..{int(lengths.max())}")
    if any(layer.is_initialized for layer in cache.layers):
        raise ValueError("the cache already holds tokens: fill a new FairKVCache")
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = lengths.shape[1]
    for layer, layer_lengths in zip(cache.layers, lengths):
        held = [h.head for h in layer.heads.held] if layer.heads is not None else list(range(heads))
        want = layer_lengths[:, held].to(device)
        width = int(want.max())
        keys = torch.randn(batch, len(held), width, head_dim, device=device, dtype=dtype, generator=generator)
        values = torch.randn(batch, len(held), width, head_dim, device=device, dtype=dtype, generator=generator)
        layer.lazy_initialization(keys, values)
        layer.store(keys, values, torch.arange(width, device=device) < want[..., None])
        layer.cumulative_length = prompt_length
        del keys, values
