"""SnapKV: every KV head keeps its `budget - window` best-scored prefix tokens plus the window."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ScoredPolicy
from .scores import SnapKVScoring


@dataclass
class SnapKVPolicy(SnapKVScoring, ScoredPolicy):
    """Uniform per-head budget (SnapKV, Li et al. 2024): `gqa_reduce="mean"` (or "max") over a KV head's query group,
    `pool_kernel=7` (max-pooling along tokens)."""

    name = "snapkv"
