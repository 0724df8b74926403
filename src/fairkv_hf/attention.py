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
        out = decode_attention(q, layer.k_pool, layer.v_pool, layer.block_table, layer.seq_lens, scaling,
                               layer.decode_bound)
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


def _extend(step: FairKVStep, query: torch.Tensor, padding_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Several new queries on a filled cache: each attends to its segment's stored tokens and causally to the new
    non-padding tokens, which are then appended (uncompressed) to every segment. Pure torch: a rare, short step."""
    layer = step.layer
    batch, q_heads, new, dim = query.shape
    valid = (padding_mask[:, -new:].bool() if padding_mask is not None
             else torch.ones(batch, new, dtype=torch.bool, device=query.device))
    if q_heads == 0:
        layer.extend(step.keys, step.values, valid)
        return query.transpose(1, 2)
    heads = step.keys.shape[1]
    group = q_heads // heads
    q = layer.segments_of(query.reshape(batch * heads, group, new, dim))
    keys = layer.segments_of(step.keys.reshape(batch * heads, new, dim))
    values = layer.segments_of(step.values.reshape(batch * heads, new, dim))
    new_valid = layer.segments_of(valid[:, None, :].expand(batch, heads, new).reshape(-1, new))
    out = q.new_zeros(q.shape)
    if len(q):
        blocks = -(-layer.max_len // layer.block_size)
        table = layer.block_table[:, :blocks].long()
        old_keys = layer.k_pool[table].reshape(len(q), blocks * layer.block_size, dim)
        old_values = layer.v_pool[table].reshape(len(q), blocks * layer.block_size, dim)
        stored = torch.arange(blocks * layer.block_size, device=q.device)[None, :] < layer.seq_lens[:, None]
        causal = torch.ones(new, new, dtype=torch.bool, device=q.device).tril()
        allowed = torch.cat([stored[:, None, :].expand(-1, new, -1), causal[None] & new_valid[:, None, :]], dim=-1)
        scores = torch.einsum("sgid,sld->sgil", q.float(), torch.cat([old_keys, keys], 1).float()) * scaling
        probs = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1)
        both = torch.cat([old_values, values], 1).float().masked_fill(~allowed.any(1)[..., None], 0.0)
        out = torch.einsum("sgil,sld->sgid", probs, both).to(q.dtype)
    layer.extend(step.keys, step.values, valid)
    return layer.grid_of(out).view(batch, heads * group, new, dim).transpose(1, 2)


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
    if kwargs.get("use_cache") is False:
        raise ValueError("FairKVCache needs use_cache=True (generate(..., use_cache=False) re-sends the whole "
                         "sequence every step, which a compressed cache cannot take): drop use_cache=False")
    if key.phase == "decode":
        return _decode(key, query, scaling), None
    if key.phase == "extend":
        return _extend(key, query, attention_mask, scaling), None
    if attention_mask is not None and not _is_left_padded(attention_mask.bool()):
        raise ValueError("FairKVCache needs left padding: the prompt's last tokens (the observation window) must be "
                         "real tokens in every row. Set tokenizer.padding_side = 'left'.")
    out = _prefill(key, query, attention_mask, scaling)
    valid = attention_mask.bool() if attention_mask is not None else torch.ones(
        query.shape[0], query.shape[2], dtype=torch.bool, device=query.device
    )
    key.layer.compress(query, key.keys, key.values, valid, scaling, key.earlier)
    return out, None


def register() -> None:
    """Make attn_implementation="fairkv" valid in from_pretrained / set_attn_implementation."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, fairkv_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_attention_mask)
