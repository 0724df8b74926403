"""Pure-torch decode attention over the paged per-head store: the CPU path and the reference for fast kernels."""

from __future__ import annotations

import torch


def paged_decode_reference(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    """Attention of each segment's query rows over that segment's stored tokens.

    q: [S, G, D] (the G query heads of a KV head's group, one segment = one (batch row, KV head));
    k_pool, v_pool: [num_blocks, block_size, D]; block_table: int [S, max_blocks] (block ids of each segment,
    in order); seq_lens: int [S] (tokens stored per segment, >= 1); max_seq_len >= seq_lens.max().
    Unused slots may hold anything (they are masked, never multiplied). Returns [S, G, D] in q's dtype.
    """
    block_size = k_pool.shape[1]
    num_blocks = -(-max_seq_len // block_size)
    blocks = block_table[:, :num_blocks].long()
    segs = q.shape[0]
    keys = k_pool[blocks].reshape(segs, num_blocks * block_size, -1)
    values = v_pool[blocks].reshape(segs, num_blocks * block_size, -1)
    scores = torch.einsum("sgd,sld->sgl", q.float(), keys.float()) * scale
    positions = torch.arange(num_blocks * block_size, device=q.device)
    unused = positions[None, :] >= seq_lens[:, None].to(q.device)
    scores.masked_fill_(unused[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    values = values.float().masked_fill(unused[..., None], 0.0)
    return torch.einsum("sgl,sld->sgd", probs, values).to(q.dtype)
