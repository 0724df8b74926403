"""Decode attention over the paged per-head store, by backend."""

from __future__ import annotations

import torch

from .reference import paged_decode_reference


def decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    """[S, G, D] attention of each segment's query rows over its stored tokens (see reference.py for shapes)."""
    return paged_decode_reference(q, k_pool, v_pool, block_table, seq_lens, scale, max_seq_len)


__all__ = ["decode_attention", "paged_decode_reference"]
