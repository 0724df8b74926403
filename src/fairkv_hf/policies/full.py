"""Keep every prompt token: the uncompressed reference inside FairKVCache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..heads import HeadSet
from .base import Policy


@dataclass
class FullPolicy(Policy):
    """No eviction; the budget is ignored."""

    name = "full"
    uses_budget = False

    def keep_mask(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        budget: int,
        window: int,
        layer_idx: int,
        heads: HeadSet | None = None,
    ) -> torch.Tensor:
        """Every non-padding token, for every head."""
        return valid[:, None, :].expand(keys.shape[0], keys.shape[1], keys.shape[2]).clone()
