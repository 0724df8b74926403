"""Weight slicing: the rows and columns of a rank's share, copied into new (smaller) Linear layers.

Attention: the q rows of the query heads of each held KV head's group (query head q serves KV head
q // group, transformers' `repeat_kv` layout), the k and v rows of the held KV heads (biases alike), and the
o_proj columns of those query heads. Replicas of a head hold the same slices. MLP and lm_head: contiguous
splits over all ranks, the same for every plan.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear layer that owns copies of `weight` [out, in] and `bias` (so the full tensors can be freed)."""
    layer = nn.Linear(1, 1, bias=bias is not None, device="meta")  # a placeholder shape: no init of real weights
    layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return layer


def head_rows(heads: list[int], width: int, device: torch.device) -> torch.Tensor:
    """Row indices of `heads` in a projection whose heads are `width` rows each, in the given head order."""
    ids = torch.tensor(heads, dtype=torch.long, device=device)
    return (ids[:, None] * width + torch.arange(width, device=device)).flatten()


def slice_rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    """The output rows `rows` of `layer` (weight and bias)."""
    bias = layer.bias.index_select(0, rows) if layer.bias is not None else None
    return new_linear(layer.weight.index_select(0, rows), bias)


def slice_columns(layer: nn.Linear, columns: torch.Tensor, keep_bias: bool) -> nn.Linear:
    """The input columns `columns` of `layer`; its bias only where `keep_bias` (one rank adds it to the sum)."""
    return new_linear(layer.weight.index_select(1, columns), layer.bias if keep_bias else None)


def split_range(size: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's contiguous part of `size` items (numpy.array_split: the first ranks take one more)."""
    return torch.from_numpy(np.array_split(np.arange(size), world_size)[rank].astype(np.int64))
