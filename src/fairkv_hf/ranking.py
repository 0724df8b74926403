"""Deterministic ranking and largest-remainder rounding, shared by the policies (per-head budgets) and the
placement plans (batch rows per replica), so both break ties the same way: towards the lower index."""

from __future__ import annotations

import torch

_FLOOR_TOLERANCE = 1e-9


def rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last axis, 0 = highest score; ties go to the lower index (deterministic)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    return ranks


def largest_remainder(shares: torch.Tensor, total: int) -> torch.Tensor:
    """Round non-negative real shares (each row along the last axis summing to `total`) to integers with the same
    sums: floors first (a share within 1e-9 below an integer counts as that integer), then one more to the largest
    remainders, ties to the lower index."""
    floors = torch.floor(shares + _FLOOR_TOLERANCE)
    missing = total - floors.sum(-1, keepdim=True)
    bonus = rank_descending(shares - floors) < missing
    return (floors + bonus).long()


def batch_rows(fractions: list[float] | tuple[float, ...], batch: int) -> list[int]:
    """Whole batch rows per replica from its batch fractions (largest remainder); they sum to ``batch``."""
    shares = torch.tensor([f * batch for f in fractions], dtype=torch.float64)
    return largest_remainder(shares, batch).tolist()
