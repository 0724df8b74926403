"""The policy contract: score prompt tokens per KV head, allocate per-head budgets, keep each head's best tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch

from ..heads import HeadSet
from ..ranking import rank_descending


class Allocator(Protocol):
    """Shares a layer's prefix budget among its KV heads: a ScoredPolicy itself, or AdaPolicy around one."""

    def allocate(self, scores: torch.Tensor, base: torch.Tensor, layer_idx: int, heads: HeadSet) -> torch.Tensor:
        """See `ScoredPolicy.allocate`."""

    def scores_needed(
        self, scores: torch.Tensor, base: torch.Tensor, counts: torch.Tensor, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """See `ScoredPolicy.scores_needed`."""


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

    def cascade(self, layer_idx: int) -> dict[int, torch.Tensor]:
        """Called at prefill right after `keep_mask` of layer `layer_idx`: for each earlier layer a cascading policy
        shrinks (CAKE), which of its stored tokens stay, bool [B, held heads, width] over each (row, head)'s stored
        tokens in order. Every process gets the same layers. None by default."""
        return {}


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

    def allocate(
        self, scores: torch.Tensor, base: torch.Tensor, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Prefix tokens kept per held head, LongTensor [B, H_held], for sequences whose prefix exceeds `base` (each
        sequence's prefix tokens per head, LongTensor [B]); uniform unless overridden: every head keeps `base`."""
        return base[:, None].expand(scores.shape[0], scores.shape[1])

    def scores_needed(
        self, scores: torch.Tensor, base: torch.Tensor, counts: torch.Tensor, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Per held head, how many of its best scores `allocate(scores, base)` (which gave `counts`) looked at: enough
        for a cascade to re-allocate any smaller base exactly from them. The kept counts unless overridden."""
        return counts

    def layer_budget(self, budget: int, window: int, layer_idx: int) -> int:
        """Tokens per head of this layer (window included) that a prompt must exceed to be compressed at all."""
        return budget

    def prefix_budgets(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        budget: int,
        window: int,
        layer_idx: int,
        heads: HeadSet,
    ) -> torch.Tensor:
        """Prefix tokens per head of this layer for each sequence, LongTensor [B], given the layer budget (window
        included): the budget less the window for every sequence unless a schedule looks at the prompt (CAKE)."""
        return torch.full((keys.shape[0],), budget - window, dtype=torch.long, device=keys.device)

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
        allocator: Allocator | None = None,
    ) -> torch.Tensor:
        """Window + each head's top allocated prefix tokens; everything valid where the prompt fits the budget."""
        return self.select(queries, keys, valid, scaling, budget, window, layer_idx, heads, allocator)[0]

    def cascade(self, layer_idx: int, allocator: Allocator | None = None) -> dict[int, torch.Tensor]:
        """See `Policy.cascade`; `allocator` replaces this policy's own allocation, as in `select`."""
        return {}

    def select(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        budget: int,
        window: int,
        layer_idx: int,
        heads: HeadSet | None = None,
        allocator: Allocator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The keep mask [B, H_held, L] and the prefix scores it was chosen by ([B, H_held, L - window], -inf on
        padding; None when every sequence fits). `allocator` replaces this policy's own allocation (how AdaPolicy
        wraps a policy)."""
        batch, held, length, _ = keys.shape
        heads = heads or HeadSet.full(held)
        keep_all = valid[:, None, :].expand(batch, held, length)
        budget = self.layer_budget(budget, window, layer_idx)
        if budget < window:
            raise ValueError(f"{self.name}: layer {layer_idx} keeps {budget} tokens per head, fewer than the window "
                             f"of {window}: lower the window or raise the budget")
        fits = valid.sum(-1) <= budget
        if bool(fits.all()):
            return keep_all.clone(), None
        prefix = length - window
        valid_prefix = valid[:, :prefix]
        scores = self.score(queries, keys, valid, scaling, window)
        scores = scores.masked_fill(~valid_prefix[:, None, :], float("-inf"))
        base = self.prefix_budgets(queries, keys, valid, scaling, budget, window, layer_idx, heads)
        counts = (allocator or self).allocate(scores, base, layer_idx, heads)
        keep_prefix = rank_descending(scores) < counts[:, :, None]
        keep = torch.cat([keep_prefix & valid_prefix[:, None, :], keep_all[:, :, prefix:]], dim=-1)
        return torch.where(fits[:, None, None], keep_all, keep), scores
