"""Static per-head budgets (HeadKV-style): each KV head keeps its own fixed number of SnapKV-scored tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..heads import HeadSet
from .base import ScoredPolicy
from .scores import SnapKVScoring


@dataclass
class HeadBudgetPolicy(SnapKVScoring, ScoredPolicy):
    """Head h of layer l keeps `tokens[l][h]` tokens (window included): its SnapKV top prefix tokens plus the
    window. The table comes from offline head importance, e.g. `HeadBudgetPolicy.from_profile(from_headkv(...))`,
    the same profile FairKV's placement plans from. FairKVCache's `budget` is not used."""

    name = "head_budgets"
    uses_budget = False
    tokens: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        super().__post_init__()
        table = np.asarray(self.tokens, dtype=np.float64)
        if table.ndim != 2 or table.size == 0 or not np.all(np.isfinite(table)) or np.any(table < 1):
            raise ValueError("HeadBudgetPolicy needs tokens: a [num_layers, num_kv_heads] table of positive token counts, "
                             "e.g. HeadBudgetPolicy.from_profile(placement.converters.from_headkv(path, budget))")
        self.tokens = np.rint(table).astype(np.int64)

    @classmethod
    def from_profile(cls, profile, **options) -> HeadBudgetPolicy:
        """The per-head token counts of a placement HeadLoadProfile (e.g. placement.converters.from_headkv)."""
        return cls(tokens=profile.tokens, **options)

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Refuse a table made for another model shape."""
        if self.tokens.shape != (num_layers, num_kv_heads):
            raise ValueError(f"head budget table has shape {self.tokens.shape}, but the model has {num_layers} layers "
                             f"x {num_kv_heads} KV heads: build the table (profile) for this model")

    def layer_budget(self, budget: int | None, window: int, layer_idx: int) -> int:
        """The smallest head budget of the layer: a prompt within it is kept whole by every head."""
        return int(self.tokens[layer_idx].min())

    def allocate(
        self, scores: torch.Tensor, base: torch.Tensor, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Each held head's own budget minus the window (base = the layer's smallest budget minus the window)."""
        above = self.tokens[layer_idx, heads.ids] - self.tokens[layer_idx].min()
        return base[:, None] + torch.as_tensor(above, dtype=torch.long, device=scores.device)
