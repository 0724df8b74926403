"""Append one decoded token per segment to the paged store: the write that every decode step makes.

A segment whose length is a multiple of the block size has a full last block (or none) and takes a fresh block:
the k-th such segment in segment order gets block ``blocks_used + k``. The caller reserves those blocks and the
block-table column first. The torch version is a dozen small launches; on CUDA one Triton program per segment
finds its slot, updates the block table, copies its key and value and (when no segment takes a new block) advances
its length, so the step costs one launch, two when blocks are taken.
"""

from __future__ import annotations

import torch


def append_reference(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    blocks_used: int,
    new_blocks: int,
) -> None:
    """Write keys/values [S, D] at each segment's current length and update the block table (torch ops)."""
    block_size, dim = k_pool.shape[1], k_pool.shape[2]
    pos = seq_lens.long()
    column = (pos // block_size)[:, None]
    slot = block_table.gather(1, column).squeeze(1)
    if new_blocks:
        starts = pos % block_size == 0
        slot = torch.where(starts, blocks_used + torch.cumsum(starts, 0, dtype=torch.int32) - 1, slot)
        block_table.scatter_(1, column, slot[:, None])
    dest = slot.long() * block_size + pos % block_size
    k_pool.view(-1, dim).index_copy_(0, dest, keys)
    v_pool.view(-1, dim).index_copy_(0, dest, values)


def append_tokens(
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    blocks_used: int,
    new_blocks: int,
    backend: str,
) -> None:
    """Append keys/values [S, D] (one token per segment) and advance ``seq_lens``; ``backend`` "triton" or torch."""
    if backend == "triton":
        from fairkv_hf.kernels.triton_append import append_triton

        if append_triton(k_pool, v_pool, block_table, seq_lens, keys, values, blocks_used, new_blocks):
            return
    else:
        append_reference(k_pool, v_pool, block_table, seq_lens, keys, values, blocks_used, new_blocks)
    seq_lens += 1
