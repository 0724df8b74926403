"""The head-parallel attention module that replaces each decoder layer's `self_attn` on every rank.

It computes q/k/v for the rank's KV heads only (all batch rows: decode reads the weights once either way),
applies RoPE, hands k/v to the rank-local FairKVCache layer, which serves only its segments (for a replicated head,
only its slice of the batch rows, with the padding mask sliced the same way), applies its o_proj columns, and one
all-reduce adds the ranks' partial outputs. Every (row, head) pair is served by exactly one rank and the others
contribute zeros for it, so the sum is the layer's output (accumulation: see collectives.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import fairkv_attention_forward
from ..cache import FairKVCache
from ..fusion import qkv_states
from .collectives import all_reduce_sum
from .slicing import head_rows, slice_columns, slice_rows


class HeadParallelAttention(nn.Module):
    """A stock Llama / Mistral / Qwen2 / Qwen3 attention restricted to `heads` (global KV head ids), same forward
    signature; the o_proj bias, if any, is added by `keeps_bias` ranks only (rank 0). fusion.fuse_decode_ops fuses its
    projections (it reads `fused_qkv` instead of patching the forward)."""

    reads_fused_qkv = True

    def __init__(self, attn: nn.Module, heads: list[int], keeps_bias: bool):
        super().__init__()
        config = attn.config
        self.layer_idx = attn.layer_idx
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.group = config.num_attention_heads // (config.num_key_value_heads or config.num_attention_heads)
        self.kv_heads = len(heads)
        self.heads = list(heads)
        device = attn.q_proj.weight.device
        q_rows = head_rows(heads, self.group * self.head_dim, device)
        kv_rows = head_rows(heads, self.head_dim, device)
        self.q_proj = slice_rows(attn.q_proj, q_rows)
        self.k_proj = slice_rows(attn.k_proj, kv_rows)
        self.v_proj = slice_rows(attn.v_proj, kv_rows)
        self.o_proj = slice_columns(attn.o_proj, q_rows, keeps_bias)
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: FairKVCache | None = None,
        cache: FairKVCache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """The layer's attention output (identical on every rank) for hidden states [B, L, hidden]."""
        cache = cache if cache is not None else past_key_values
        if not isinstance(cache, FairKVCache):
            raise ValueError("a head-parallel model (fairkv_hf.parallel.prepare) runs with a FairKVCache only: pass "
                             "FairKVCache(model, ...) as the cache (policy='full' for exact attention) and keep "
                             f"use_cache=True; got {type(cache).__name__}")
        batch, length, _ = hidden_states.shape
        q, k, v = qkv_states(self, hidden_states, position_embeddings)
        k, v = cache.update(k, v, self.layer_idx)
        out, _ = fairkv_attention_forward(self, q, k, v, attention_mask, scaling=self.scaling)
        out = self.o_proj(out.reshape(batch, length, self.kv_heads * self.group * self.head_dim))
        return all_reduce_sum(out), None
