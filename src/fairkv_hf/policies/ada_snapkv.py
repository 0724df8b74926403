"""Ada-SnapKV: a layer's budget is shared across its KV heads by one joint top-k over all heads' scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..heads import HeadSet
from ..ranking import largest_remainder, rank_descending
from .base import ScoredPolicy
from .scores import SnapKVScoring



@dataclass
class AdaSnapKVPolicy(SnapKVScoring, ScoredPolicy):
    """Adaptive per-head budgets (Ada-KV, Feng et al. 2024) with a floor: head h keeps
    `(1 - alpha) * c_h + alpha * base` prefix tokens, rounded by largest remainder, where c_h is how many of the
    layer's top `H * base` scores (over all heads together) fall to head h. Rounding this way makes every layer and
    sequence keep exactly `H * budget` tokens (AdaKV's floor/round leaves a few slots unused)."""

    name = "ada_snapkv"
    alpha: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (the uniform floor fraction) must be a number in [0, 1], got {self.alpha!r}")

    def allocate(
        self, scores: torch.Tensor, base: int, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Joint top-k over all heads of the layer (every head's scores, through `heads.gather`), per sequence,
        then the alpha floor; the held heads' counts."""
        scores = heads.gather(scores)
        batch, num_heads, prefix = scores.shape
        joint = rank_descending(scores.reshape(batch, num_heads * prefix)) < num_heads * base
        counts = joint.reshape(batch, num_heads, prefix).sum(-1).double()
        counts = largest_remainder((1.0 - self.alpha) * counts + self.alpha * base, num_heads * base)
        return counts[:, heads.ids]
