"""PyramidKV: SnapKV selection with a per-layer budget that shrinks linearly from the first layer to the last."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..heads import HeadSet
from .base import ScoredPolicy
from .scores import SnapKVScoring


@dataclass
class PyramidKVPolicy(SnapKVScoring, ScoredPolicy):
    """Pyramidal layer budgets (PyramidKV, Cai et al. 2024): with P = budget - window prefix tokens per head on
    average, the last layer keeps P // beta, the first 2P - P // beta, and the layers between fall by a constant
    step, so the layers together keep about `num_layers * budget` tokens per head; every head of a layer keeps
    the same number (its SnapKV top tokens)."""

    name = "pyramidkv"
    beta: int = 20
    num_layers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 1:
            raise ValueError(f"beta (how much smaller the last layer's budget is) must be >= 1, got {self.beta}")

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Learn the model's depth (the schedule needs it)."""
        self.num_layers = num_layers

    def layer_budget(self, budget: int, window: int, layer_idx: int) -> int:
        """Window plus this layer's share of prefix tokens on the pyramid."""
        if self.num_layers is None:
            raise ValueError("PyramidKVPolicy needs the number of layers: use it through FairKVCache or pass num_layers")
        prefix = budget - window
        if self.num_layers == 1:
            return budget
        low = prefix // self.beta
        high = 2 * prefix - low
        return window + high - layer_idx * ((high - low) // (self.num_layers - 1))

    def allocate(
        self, scores: torch.Tensor, base: int, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Every head of the layer keeps `base` prefix tokens (base already follows the pyramid)."""
        return torch.full(scores.shape[:2], base, dtype=torch.long, device=scores.device)
