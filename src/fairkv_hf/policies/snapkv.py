"""SnapKV: every KV head keeps its `budget - window` best-scored prefix tokens plus the window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..heads import HeadSet
from .base import ScoredPolicy
from .scores import SnapKVScoring


@dataclass
class SnapKVPolicy(SnapKVScoring, ScoredPolicy):
    """Uniform per-head budget (SnapKV, Li et al. 2024)."""

    name = "snapkv"

    def allocate(
        self, scores: torch.Tensor, base: int, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Every head keeps `base` prefix tokens."""
        return torch.full(scores.shape[:2], base, dtype=torch.long, device=scores.device)
