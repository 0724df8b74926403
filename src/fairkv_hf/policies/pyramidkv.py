"""PyramidKV: SnapKV selection with a per-layer budget that shrinks linearly from the first layer to the last."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ranking import largest_remainder
from .base import ScoredPolicy
from .scores import SnapKVScoring


@dataclass
class PyramidKVPolicy(SnapKVScoring, ScoredPolicy):
    """Pyramidal layer budgets (PyramidKV, Cai et al. 2024): with P = budget - window prefix tokens per head on
    average, the schedule falls linearly from 2P - P/beta (first layer) to P/beta (last layer) and is rounded by
    largest remainder, so the layers together keep exactly `num_layers * budget` tokens per head (PyramidKV's own
    integer step collapses to a flat schedule for small budgets); every head of a layer keeps the same number (its
    SnapKV top tokens)."""

    name = "pyramidkv"
    beta: int = 20
    num_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.beta, bool) or not isinstance(self.beta, int) or self.beta < 1:
            raise ValueError(f"beta (how much smaller the last layer's budget is) must be an integer >= 1, got {self.beta!r}")

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Learn the model's depth (the schedule needs it)."""
        self.num_layers = num_layers

    def layer_budget(self, budget: int, window: int, layer_idx: int) -> int:
        """Window plus this layer's share of prefix tokens on the pyramid."""
        if self.num_layers is None:
            raise ValueError("PyramidKVPolicy needs the number of layers: use it through FairKVCache or pass num_layers")
        if self.num_layers == 1:
            return budget
        prefix = budget - window
        low = prefix / self.beta
        step = (2 * prefix - 2 * low) / (self.num_layers - 1)
        shares = torch.tensor([2 * prefix - low - l * step for l in range(self.num_layers)], dtype=torch.float64)
        return window + int(largest_remainder(shares.clamp(min=0), self.num_layers * prefix)[layer_idx])
