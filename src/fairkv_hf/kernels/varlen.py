"""Decode over the paged per-head store through torch's flash varlen attention (CUDA only).

Each segment is one varlen sequence whose G query rows are the query heads of its GQA group, so a single
KV head serves them without enable_gqa; the pool is read in place through block_table + seqused_k.
"""

from __future__ import annotations

import inspect

import torch


def varlen_available() -> bool:
    """True when this torch's varlen_attn can read a paged pool (block_table and seqused_k arguments)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    params = inspect.signature(varlen_attn).parameters
    return "block_table" in params and "seqused_k" in params


def paged_decode_varlen(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    """Same contract as paged_decode_reference, computed by torch.nn.attention.varlen.varlen_attn."""
    if not varlen_available():
        raise RuntimeError(f"torch {torch.__version__} has no paged varlen_attn (block_table/seqused_k); "
                           "use FAIRKV_DECODE_BACKEND=triton or reference")
    if not q.is_cuda:
        raise RuntimeError("varlen_attn runs on CUDA only; use the reference backend on CPU")
    from torch.nn.attention.varlen import varlen_attn

    segs, groups, dim = q.shape
    num_blocks, block_size, _ = k_pool.shape
    cu_seq_q = torch.arange(0, segs * groups + 1, groups, dtype=torch.int32, device=q.device)
    out = varlen_attn(
        q.reshape(segs * groups, 1, dim),
        k_pool.view(num_blocks, block_size, 1, dim),
        v_pool.view(num_blocks, block_size, 1, dim),
        cu_seq_q,
        None,
        groups,
        max_seq_len,
        scale=scale,
        seqused_k=seq_lens.to(torch.int32),
        block_table=block_table.to(torch.int32),
    )
    return out.view(segs, groups, dim)
