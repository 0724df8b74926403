"""The policy contract: score prompt tokens per KV head, allocate per-head budgets, keep each head's best tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from ..heads import HeadSet
from ..ranking import rank_descending


class Policy(ABC):
    """Decides which prompt tokens each KV head keeps after prefill."""

    name: ClassVar[str]
    uses_budget: ClassVar[bool] = True

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Called by FairKVCache with the model's shape; policies with per-layer or per-head tables check it here."""

    @abstractmethod
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
        """Boolean [B, H_kv, L]: which prompt tokens each held KV head keeps (valid = [B, L] non-padding mask).

        `heads` says which of the layer's KV heads `keys` holds (global ids; all of them when None): tables are
        indexed by global head id, and budgets that couple the heads of a layer go through `heads.gather`.
        """


class ScoredPolicy(Policy):
    """A policy that scores prefix tokens per KV head and gives each head a number of them to keep.

    The last `window` prompt tokens are always kept and never scored; padding is never kept; a sequence whose
    prompt fits in the budget keeps everything. Each head keeps its own best-scored tokens.
    """

    @abstractmethod
    def score(
        self, queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scaling: float, window: int
    ) -> torch.Tensor:
        """Importance [B, H_kv, L - window] of prefix tokens from queries [B, H_q, L, D] and keys [B, H_kv, L, D]."""

    @abstractmethod
    def allocate(
        self, scores: torch.Tensor, base: int, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Prefix tokens kept per held head, LongTensor [B, H_held], for sequences whose prefix exceeds `base`."""

    def layer_budget(self, budget: int, window: int, layer_idx: int) -> int:
        """Tokens per head of this layer (window included) that a prompt must exceed to be compressed at all."""
        return budget

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
        """Window + each head's top `allocate()` prefix tokens; everything valid where the prompt fits the budget."""
        batch, held, length, _ = keys.shape
        heads = heads or HeadSet.full(held)
        keep_all = valid[:, None, :].expand(batch, held, length)
        budget = self.layer_budget(budget, window, layer_idx)
        if budget < window:
            raise ValueError(f"{self.name}: layer {layer_idx} keeps {budget} tokens per head, fewer than the window "
                             f"of {window}: lower the window or raise the budget")
        fits = valid.sum(-1) <= budget
        if bool(fits.all()):
            return keep_all.clone()
        prefix = length - window
        valid_prefix = valid[:, :prefix]
        scores = self.score(queries, keys, valid, scaling, window)
        scores = scores.masked_fill(~valid_prefix[:, None, :], float("-inf"))
        counts = self.allocate(scores, budget - window, layer_idx, heads)
        keep_prefix = rank_descending(scores) < counts[:, :, None]
        keep = torch.cat([keep_prefix & valid_prefix[:, None, :], keep_all[:, :, prefix:]], dim=-1)
        return torch.where(fits[:, None, None], keep_all, keep)
