"""Triton split-K (flash-decoding) decode attention over the paged per-head store.

Stage 1: one program per (segment, split) reads its split's blocks through the block table once for all G
query heads of the segment's GQA group (G padded to a tl.dot tile), with an online softmax in float32, and
writes a partial output and its log-sum-exp. Stage 2 merges the splits. With one split, stage 1 writes
the output directly.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
_PROGRAMS_PER_SM = 8
_MIN_BLOCKS_PER_SPLIT = 2
_MAX_BLOCKS_PER_SPLIT = 16
_MAX_SPLITS = 64
_INTERPRETER_SM_COUNT = 8


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, lens_ptr, out_ptr, part_ptr, lse_ptr,
    stride_qs, stride_qg,
    stride_kb, stride_kt,
    stride_vb, stride_vt,
    stride_ts,
    stride_os, stride_og,
    stride_ps, stride_pj, stride_pg,
    stride_ls, stride_lj,
    qk_scale, blocks_per_split,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
    DIRECT: tl.constexpr, IEEE: tl.constexpr,
):
    seg = tl.program_id(0)
    split = tl.program_id(1)
    seq_len = tl.load(lens_ptr + seg)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(seq_len, BLOCK_N))

    rows = tl.arange(0, G_PAD)
    cols = tl.arange(0, D)
    toks = tl.arange(0, BLOCK_N)
    row_ok = rows < G
    q = tl.load(q_ptr + seg * stride_qs + rows[:, None] * stride_qg + cols[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    for blk in range(first, last):
        block_id = tl.load(table_ptr + seg * stride_ts + blk).to(tl.int64)
        stored = (blk * BLOCK_N + toks) < seq_len  # slots past the length hold garbage (maybe NaN): never read
        k = tl.load(k_ptr + block_id * stride_kb + toks[:, None] * stride_kt + cols[None, :],
                    mask=stored[:, None], other=0.0)
        v = tl.load(v_ptr + block_id * stride_vb + toks[:, None] * stride_vt + cols[None, :],
                    mask=stored[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale
        s = tl.where(stored[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    l_i = tl.where(l_i > 0, l_i, 1.0)  # splits without work store nothing; keep their math finite
    out = acc / l_i[:, None]
    store_ok = rows < tl.where(first < last, G, 0)
    if DIRECT:
        tl.store(out_ptr + seg * stride_os + rows[:, None] * stride_og + cols[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=store_ok[:, None])
    else:
        tl.store(part_ptr + seg * stride_ps + split * stride_pj + rows[:, None] * stride_pg + cols[None, :],
                 out, mask=store_ok[:, None])
        tl.store(lse_ptr + seg * stride_ls + split * stride_lj + rows, m_i + tl.math.log2(l_i),
                 mask=store_ok)


@triton.jit
def _combine_kernel(
    part_ptr, lse_ptr, lens_ptr, out_ptr,
    stride_ps, stride_pj, stride_pg,
    stride_ls, stride_lj,
    stride_os, stride_og,
    split_tokens,
    D: tl.constexpr, SPLIT_PAD: tl.constexpr,
):
    seg = tl.program_id(0)
    row = tl.program_id(1)
    cols = tl.arange(0, D)
    splits = tl.arange(0, SPLIT_PAD)
    used = splits < tl.cdiv(tl.load(lens_ptr + seg), split_tokens)
    lse = tl.load(lse_ptr + seg * stride_ls + splits * stride_lj + row, mask=used, other=float("-inf"))
    weights = tl.math.exp2(lse - tl.max(lse, axis=0))
    part = tl.load(part_ptr + seg * stride_ps + splits[:, None] * stride_pj + row * stride_pg + cols[None, :],
                   mask=used[:, None], other=0.0)
    out = tl.sum(weights[:, None] * part, axis=0) / tl.sum(weights, axis=0)
    tl.store(out_ptr + seg * stride_os + row * stride_og + cols, out.to(out_ptr.dtype.element_ty))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_splits(num_segments: int, max_seq_len: int, block_size: int, device: torch.device) -> int:
    """KV splits per segment: enough to fill the GPU (_PROGRAMS_PER_SM programs per SM, >= 2 blocks each) and
    enough that no program reads more than _MAX_BLOCKS_PER_SPLIT blocks, capped at _MAX_SPLITS.

    Sized from max_seq_len (known on the host): on skewed lengths a long segment is spread over many programs
    instead of one long tail, and the splits past a short segment's length exit at once.
    """
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else _INTERPRETER_SM_COUNT
    max_blocks = -(-max_seq_len // block_size)
    fill = min(-(-_PROGRAMS_PER_SM * sms // num_segments), max_blocks // _MIN_BLOCKS_PER_SPLIT)
    bounded = -(-max_blocks // _MAX_BLOCKS_PER_SPLIT)
    return max(1, min(max(fill, bounded), _MAX_SPLITS))


def _check_inputs(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
                  seq_lens: torch.Tensor, max_seq_len: int) -> None:
    """Raise an error naming what to fix when the inputs break the store contract or cannot run here."""
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton decode kernel needs CUDA tensors; on CPU use the reference backend "
                           "(or set TRITON_INTERPRET=1 before importing triton to run it slowly in the interpreter)")
    segs, _, dim = q.shape
    block_size = k_pool.shape[1]
    if dim < 16 or dim & (dim - 1):
        raise ValueError(f"head_dim must be a power of two >= 16 for the Triton decode kernel, got {dim}; "
                         "use FAIRKV_DECODE_BACKEND=reference for other head sizes")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"the pool's block size must be a power of two >= 16, got {block_size}")
    if k_pool.shape != v_pool.shape or k_pool.shape[2] != dim:
        raise ValueError(f"k_pool {tuple(k_pool.shape)} and v_pool {tuple(v_pool.shape)} must both be "
                         f"[num_blocks, block_size, {dim}]")
    if q.stride(-1) != 1 or k_pool.stride(-1) != 1 or v_pool.stride(-1) != 1:
        raise ValueError("q, k_pool and v_pool must be contiguous in the last (head_dim) dimension")
    if block_table.dtype not in (torch.int32, torch.int64) or seq_lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"block_table and seq_lens must be integer tensors, got {block_table.dtype} "
                         f"and {seq_lens.dtype}")
    if block_table.shape[0] != segs or seq_lens.shape != (segs,):
        raise ValueError(f"block_table {tuple(block_table.shape)} and seq_lens {tuple(seq_lens.shape)} must "
                         f"have one row per segment ({segs})")
    if block_table.shape[1] * block_size < max_seq_len:
        raise ValueError(f"block_table has {block_table.shape[1]} blocks per segment, too few for "
                         f"max_seq_len={max_seq_len} at block size {block_size}")


def paged_decode_triton(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
    *,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Same contract as paged_decode_reference, computed by the split-K Triton kernel (no host sync).

    num_splits overrides the shape-based choice (tests use it to cover both the direct and merged paths);
    out, if given, is a preallocated [S, G, D] tensor of q's dtype that receives the result; num_warps and
    num_stages tune the split kernel (bench/decode_sweep.py measures them).
    """
    _check_inputs(q, k_pool, v_pool, block_table, seq_lens, max_seq_len)
    segs, groups, dim = q.shape
    block_size = k_pool.shape[1]
    if num_splits is None:
        num_splits = choose_num_splits(segs, max_seq_len, block_size, q.device)
    max_blocks = -(-max_seq_len // block_size)
    if not 1 <= num_splits <= _MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {_MAX_SPLITS}], got {num_splits}")
    blocks_per_split = -(-max_blocks // num_splits)
    num_splits = -(-max_blocks // blocks_per_split)

    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {tuple(q.shape)} {q.dtype} tensor contiguous in its last dimension, "
                         f"got {tuple(out.shape)} {out.dtype}")
    direct = num_splits == 1
    part_shape = (segs, num_splits, groups, dim) if not direct else (1, 1, 1, dim)
    partial = torch.empty(part_shape, dtype=torch.float32, device=q.device)
    lse = torch.empty(part_shape[:3], dtype=torch.float32, device=q.device)
    g_pad = max(16, triton.next_power_of_2(groups))
    _split_kernel[(segs, num_splits)](
        q, k_pool, v_pool, block_table, seq_lens, out, partial, lse,
        q.stride(0), q.stride(1),
        k_pool.stride(0), k_pool.stride(1),
        v_pool.stride(0), v_pool.stride(1),
        block_table.stride(0),
        out.stride(0), out.stride(1),
        partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1),
        scale * _LOG2E, blocks_per_split,
        G=groups, G_PAD=g_pad, D=dim, BLOCK_N=block_size,
        DIRECT=direct, IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not direct:
        _combine_kernel[(segs, groups)](
            partial, lse, seq_lens, out,
            partial.stride(0), partial.stride(1), partial.stride(2),
            lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            blocks_per_split * block_size,
            D=dim, SPLIT_PAD=triton.next_power_of_2(num_splits),
            num_warps=4,
        )
    return out
