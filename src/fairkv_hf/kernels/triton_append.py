"""Triton append: one program per segment writes its new key and value into the paged pools.

A program whose segment starts a new block counts the earlier segments that also start one (a scan over
``seq_lens``, which stays unchanged during the launch) to find its fresh block, and records it in the block table.
When no segment starts a block (always, once decode capacity is reserved) nothing scans ``seq_lens``, so each
program also advances its own length: append and length increment are one launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SCAN = 256


@triton.jit
def _append_kernel(
    k_ptr, v_ptr, table_ptr, lens_ptr, key_ptr, value_ptr,
    stride_kb, stride_kt, stride_vb, stride_vt, stride_ts, stride_key, stride_value,
    blocks_used,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, SCAN: tl.constexpr, HAS_NEW: tl.constexpr,
):
    seg = tl.program_id(0)
    pos = tl.load(lens_ptr + seg)
    column = pos // BLOCK_SIZE
    offset = pos % BLOCK_SIZE
    slot = tl.load(table_ptr + seg * stride_ts + column)
    if HAS_NEW:
        if offset == 0:
            earlier = 0
            for start in range(0, seg, SCAN):
                idx = start + tl.arange(0, SCAN)
                lengths = tl.load(lens_ptr + idx, mask=idx < seg, other=1)
                earlier += tl.sum((lengths % BLOCK_SIZE == 0).to(tl.int32))
            slot = blocks_used + earlier
            tl.store(table_ptr + seg * stride_ts + column, slot)
    d = tl.arange(0, BLOCK_D)
    keep = d < D
    slot = slot.to(tl.int64)
    key = tl.load(key_ptr + seg * stride_key + d, mask=keep)
    value = tl.load(value_ptr + seg * stride_value + d, mask=keep)
    tl.store(k_ptr + slot * stride_kb + offset * stride_kt + d, key, mask=keep)
    tl.store(v_ptr + slot * stride_vb + offset * stride_vt + d, value, mask=keep)
    if not HAS_NEW:
        tl.store(lens_ptr + seg, pos + 1)


def append_triton(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    blocks_used: int,
    new_blocks: int,
) -> bool:
    """Same contract as append_reference, in one launch (no host sync); also advances ``seq_lens`` when
    ``new_blocks`` is 0 (returns whether it did)."""
    segs, dim = keys.shape
    if k_pool.stride(2) != 1 or v_pool.stride(2) != 1 or keys.stride(1) != 1 or values.stride(1) != 1:
        raise ValueError("append_triton needs pools and new keys/values contiguous in the head dimension")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32 or block_table.stride(1) != 1:
        raise ValueError("append_triton needs an int32 block table (rows contiguous) and int32 seq_lens")
    _append_kernel[(segs,)](
        k_pool, v_pool, block_table, seq_lens, keys, values,
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1), block_table.stride(0),
        keys.stride(0), values.stride(0),
        blocks_used,
        D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_SIZE=k_pool.shape[1], SCAN=_SCAN, HAS_NEW=new_blocks > 0,
        num_warps=1,
    )
    return new_blocks == 0
