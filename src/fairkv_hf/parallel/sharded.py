"""MLP and lm_head split over all ranks, identically for every attention plan (so standard TP and FairKV differ only
in attention placement): gate/up rows and down columns contiguous per rank (Megatron's column / row split, one
all-reduce per MLP), lm_head rows (vocabulary) contiguous per rank, logits all-gathered."""

from __future__ import annotations

import torch
from torch import nn

from .collectives import all_gather, all_reduce_sum
from .slicing import new_linear, slice_columns, slice_rows, split_range


class RowParallelMLP(nn.Module):
    """The model's own MLP module over this rank's slice of the intermediate size; outputs summed over ranks."""

    def __init__(self, mlp: nn.Module, rank: int, world_size: int):
        super().__init__()
        rows = split_range(mlp.gate_proj.out_features, rank, world_size).to(mlp.gate_proj.weight.device)
        mlp.gate_proj = slice_rows(mlp.gate_proj, rows)
        mlp.up_proj = slice_rows(mlp.up_proj, rows)
        mlp.down_proj = slice_columns(mlp.down_proj, rows, keep_bias=rank == 0)
        self.inner = mlp

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The MLP output, the same on every rank."""
        return all_reduce_sum(self.inner(hidden_states))


class VocabParallelHead(nn.Module):
    """lm_head over this rank's contiguous slice of the vocabulary, zero-padded so all slices have one size; the
    logits are gathered from every rank (a copy, so every rank gets the same bits)."""

    def __init__(self, lm_head: nn.Linear, rank: int, world_size: int):
        super().__init__()
        self.vocab = lm_head.out_features
        width = -(-self.vocab // world_size)
        rows = split_range(self.vocab, rank, world_size).to(lm_head.weight.device)
        weight = lm_head.weight.new_zeros(width, lm_head.in_features)
        weight[: len(rows)] = lm_head.weight.index_select(0, rows)
        bias = None
        if lm_head.bias is not None:
            bias = lm_head.bias.new_zeros(width)
            bias[: len(rows)] = lm_head.bias.index_select(0, rows)
        self.shard = new_linear(weight, bias)
        self.sizes = [len(split_range(self.vocab, r, world_size)) for r in range(world_size)]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits over the whole vocabulary, [..., vocab]."""
        parts = all_gather(self.shard(hidden_states))
        return torch.cat([part[..., :size] for part, size in zip(parts, self.sizes)], dim=-1)
