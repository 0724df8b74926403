"""The "fairkv" attention implementation: dense causal attention at prefill (then compression), varlen at decode.

Registered with transformers' AttentionInterface on `import fairkv_hf`, together with the 2D padding-mask function
(the one flash attention uses): per-head lengths cannot be described by a dense 4D mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from .cache import ATTN_IMPLEMENTATION, FairKVStep
from .kernels import decode_attention


def dense_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Causal attention of queries [B, H_q, Lq, D] (the last Lq positions) over keys/values [B, H_kv, Lk, D].

    `padding_mask` is the 2D [B, Lk] mask (True = real token) or None. Returns [B, Lq, H_q, D]. Padded query rows
    attend to themselves only, so they stay finite; their outputs are never used.
    """
    q_len, k_len = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if padding_mask is None and q_len in (1, k_len):
        out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2)
    if padding_mask is None:
        padding_mask = torch.ones(query.shape[0], k_len, dtype=torch.bool, device=query.device)
    elif q_len == k_len and _is_left_padded(padding_mask):
        return _left_padded_attention(query, key, value, padding_mask, scaling)
    q_pos = torch.arange(k_len - q_len, k_len, device=query.device)
    k_pos = torch.arange(k_len, device=query.device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None] & padding_mask.bool()[:, None, :]
    allowed = allowed | (k_pos[None, :] == q_pos[:, None])[None]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None], scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2)


def _is_left_padded(padding_mask: torch.Tensor) -> bool:
    """True when every row's real tokens form one contiguous block at the end (generate's left padding)."""
    counts = padding_mask.sum(-1, keepdim=True)
    positions = torch.arange(padding_mask.shape[1], device=padding_mask.device)
    return bool(torch.equal(padding_mask.bool(), positions[None, :] >= padding_mask.shape[1] - counts))


def _left_padded_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, padding_mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Causal attention row by row over each row's real tokens: no [L, L] mask, so long padded prompts fit."""
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    gqa = query.shape[1] != key.shape[1]
    for row, count in enumerate(padding_mask.sum(-1).tolist()):
        if count == 0:
            continue
        rows = slice(row, row + 1)
        part = F.scaled_dot_product_attention(
            query[rows, :, -count:], key[rows, :, -count:], value[rows, :, -count:],
            is_causal=True, scale=scaling, enable_gqa=gqa,
        )
        out[row, -count:] = part[0].transpose(0, 1)
    return out


def _decode(step: FairKVStep, query: torch.Tensor, scaling: float) -> torch.Tensor:
    """One new query per sequence over every served segment; query heads of a KV head's group are its rows.
    Pairs this layer does not serve (a multi-GPU rank's unserved rows) get zeros."""
    layer = step.layer
    batch, q_heads, _, dim = query.shape
    if q_heads == 0:
        return query.transpose(1, 2)
    group = q_heads // step.keys.shape[1]
    q = layer.segments_of(query.reshape(-1, group, dim))
    if len(q):
        out = decode_attention(q, layer.k_pool, layer.v_pool, layer.block_table, layer.seq_lens, scaling, layer.max_len)
    else:
        out = q
    return layer.grid_of(out).view(batch, 1, q_heads, dim)


def _prefill(step: FairKVStep, query: torch.Tensor, padding_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Dense causal attention over the new tokens, per block of served rows and heads (one block on one process);
    pairs this layer does not serve get zeros."""
    layer = step.layer
    batch, q_heads, length, dim = query.shape
    if q_heads == 0:
        return query.transpose(1, 2)
    if layer.segment_index is None:
        return dense_attention(query, step.keys, step.values, padding_mask, scaling)
    group = q_heads // step.keys.shape[1]
    out = query.new_zeros(batch, length, q_heads, dim)
    for start, end, heads in layer.heads.row_groups(batch):
        kv = torch.tensor(heads, device=query.device)
        qh = (kv[:, None] * group + torch.arange(group, device=query.device)).flatten()
        mask = padding_mask[start:end] if padding_mask is not None else None
        out[start:end, :, qh] = dense_attention(query[start:end, qh], step.keys[start:end, kv],
                                                step.values[start:end, kv], mask, scaling)
    return out


def fairkv_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: FairKVStep | torch.Tensor,
    value: FairKVStep | torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for a FairKVCache step; plain tensors (no cache, or DynamicCache) get exact dense attention."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if not isinstance(key, FairKVStep):
        return dense_attention(query, key, value, attention_mask, scaling), None
    if not key.is_prefill:
        return _decode(key, query, scaling), None
    out = _prefill(key, query, attention_mask, scaling)
    valid = attention_mask.bool() if attention_mask is not None else torch.ones(
        query.shape[0], query.shape[2], dtype=torch.bool, device=query.device
    )
    key.layer.compress(query, key.keys, key.values, valid, scaling)
    return out, None


def register() -> None:
    """Make attn_implementation="fairkv" valid in from_pretrained / set_attn_implementation."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, fairkv_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_attention_mask)
