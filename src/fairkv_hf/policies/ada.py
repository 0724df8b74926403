"""Ada-KV's adaptive allocation as a wrapper: a layer's budget is shared among its KV heads by one joint top-k over
all heads' scores, on top of any scored policy's scores and layer budgets (SnapKV, PyramidKV, CAKE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..heads import HeadSet
from ..ranking import largest_remainder, rank_descending
from .base import Policy, ScoredPolicy


@dataclass
class AdaPolicy(Policy):
    """Adaptive per-head budgets (Ada-KV, Feng et al. 2024) over `inner` (a ScoredPolicy with layer budgets, e.g.
    SnapKVPolicy(), PyramidKVPolicy(), CakePolicy()): with `base` the layer's prefix tokens per head that `inner`
    gives the sequence, head h keeps `(1 - alpha) * c_h + alpha * base` prefix tokens (`alpha=0.2`, the uniform floor
    fraction), rounded by largest remainder, where c_h is how many of the layer's top `H * base` scores (over all
    heads together, through `heads.gather`) fall to head h. Rounding this way makes every layer and sequence keep
    exactly `H * base` prefix tokens (AdaKV's floor/round leaves a few slots unused). Everything but the allocation is
    `inner`'s. Under CAKE's cascade a layer whose budget shrinks is re-allocated as Ada would allocate the new budget
    from the prompt's scores (each head's scores that a smaller joint top-k can pick are remembered:
    `scores_needed`), except that a head never regains a token it dropped. Registered as "ada_snapkv",
    "ada_pyramidkv" and "ada_cake" (options: alpha here, the rest to the inner policy)."""

    inner: ScoredPolicy
    alpha: float = 0.2

    def __post_init__(self) -> None:
        if not isinstance(self.inner, ScoredPolicy) or not self.inner.uses_budget:
            raise ValueError(f"AdaPolicy's inner policy must score tokens and share a budget among heads (e.g. "
                             f"SnapKVPolicy(), PyramidKVPolicy(), CakePolicy()), got {self.inner!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (the uniform floor fraction) must be a number in [0, 1], got {self.alpha!r}")

    @property
    def name(self) -> str:
        """"ada_" + the inner policy's name."""
        return f"ada_{self.inner.name}"

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """The inner policy learns the model's shape."""
        self.inner.bind(num_layers, num_kv_heads)

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
        """The inner policy's selection with this allocation."""
        return self.inner.keep_mask(queries, keys, valid, scaling, budget, window, layer_idx, heads, self)

    def cascade(self, layer_idx: int) -> dict[int, torch.Tensor]:
        """The inner policy's cascade (if any), re-allocating shrunk layers with this allocation."""
        return self.inner.cascade(layer_idx, self)

    def allocate(
        self, scores: torch.Tensor, base: torch.Tensor, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Joint top-k over all heads of the layer (every head's scores, through `heads.gather`), per sequence,
        then the alpha floor; the held heads' counts."""
        joint = self._joint_counts(scores, base, heads).double()
        quota = joint.shape[1] * base[:, None]
        counts = largest_remainder((1.0 - self.alpha) * joint + self.alpha * base[:, None].double(), quota)
        return counts[:, heads.ids]

    def scores_needed(
        self, scores: torch.Tensor, base: torch.Tensor, counts: torch.Tensor, layer_idx: int, heads: HeadSet
    ) -> torch.Tensor:
        """Per held head, the larger of its count and its part of the joint top-k: a smaller base's joint top-k
        picks only among these."""
        return torch.maximum(counts, self._joint_counts(scores, base, heads)[:, heads.ids])

    @staticmethod
    def _joint_counts(scores: torch.Tensor, base: torch.Tensor, heads: HeadSet) -> torch.Tensor:
        """How many of the layer's top `H * base` scores (all heads together, per sequence) fall to each head,
        LongTensor [B, H] in global head order."""
        scores = heads.gather(scores)
        batch, num_heads, prefix = scores.shape
        joint = rank_descending(scores.reshape(batch, num_heads * prefix)) < num_heads * base[:, None]
        return joint.reshape(batch, num_heads, prefix).sum(-1)


@dataclass(frozen=True)
class AdaOver:
    """A registered name for Ada over a policy class: `AdaOver(PyramidKVPolicy)(alpha=0.3, beta=10)` is
    `AdaPolicy(PyramidKVPolicy(beta=10), alpha=0.3)` (alpha goes to Ada, every other option to the inner policy)."""

    inner: type[ScoredPolicy]
    uses_budget: ClassVar[bool] = True

    def __call__(self, **options: Any) -> AdaPolicy:
        ada = {key: options.pop(key) for key in ("alpha",) if key in options}
        return AdaPolicy(self.inner(**options), **ada)
