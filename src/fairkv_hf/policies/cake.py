"""CAKE: layer budgets from each layer's attention preference, a cascading prefill that re-trims earlier layers as
later ones arrive, and an eviction indicator that adds the variance of a token's attention to its mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..heads import HeadSet
from ..ranking import rank_descending
from .base import Allocator, ScoredPolicy
from .scores import window_probabilities

RELEASE_TAUS: dict[tuple[str, int], tuple[float, float]] = {
    ("llama3.1-8b-128k", 1024): (1.6, 0.4), ("llama3.1-8b-128k", 128): (1.6, 0.6),
    ("llama2-7b-chat-4k", 1024): (1.9, 1.8), ("llama2-7b-chat-4k", 128): (0.9, 2.3),
    ("llama2-13b-chat-4k", 1024): (0.5, 0.4), ("llama2-13b-chat-4k", 128): (1.8, 2.0),
    ("mistral-0.3-7b-32k", 1024): (0.8, 0.5), ("mistral-0.3-7b-32k", 128): (1.0, 0.8),
    ("qwen2.5-7b-instruct", 1024): (1.5, 0.6), ("qwen2.5-7b-instruct", 128): (0.4, 0.6),
}
"""(tau1, tau2) of CAKE's release (experiments/LongBench/config/model2tau.json), by its model name and cache size."""


def cake_budgets(preferences: torch.Tensor, total: int, caps: torch.Tensor) -> torch.Tensor:
    """CAKE's layer budgets, LongTensor [B, n] (prefix tokens per head), from the preferences [B, n] of the n layers
    seen: shares of `total` proportional to preference (equal shares where all are 0), truncated to integers; what a
    layer gets above its cap (`caps` [B], the prompt's prefix length) is spread over the layers below their caps,
    evenly, the remainder one token each to the lowest layers; then the tokens lost to truncation are spread the same
    way. CAKE's release spreads each amount once and then clips, losing what a spread pushes over a cap; here the
    surplus is spread again, so no layer exceeds its cap and the layers keep `total` whenever the caps allow it."""
    sums = preferences.sum(-1, keepdim=True)
    shares = torch.where(sums > 0, preferences / sums, 1.0 / preferences.shape[-1]) * total
    budgets = shares.floor().long()
    over = (budgets - caps[:, None]).clamp(min=0)
    budgets = _spread(budgets - over, over.sum(-1), caps)
    return _spread(budgets, total - budgets.sum(-1), caps)


def _spread(budgets: torch.Tensor, amount: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """Add `amount` [B] tokens over the layers below their caps (evenly, the remainder to the lowest layers first),
    spreading again whatever lands above a cap; what no layer can take is dropped (the whole prompt is kept)."""
    while bool((amount > 0).any()):
        below = budgets < caps[:, None]
        open_layers = below.sum(-1)
        amount = torch.where(open_layers > 0, amount, 0)
        each, extra = amount // open_layers.clamp(min=1), amount % open_layers.clamp(min=1)
        rank = below.long().cumsum(-1) - 1
        budgets = budgets + below * (each[:, None] + (rank < extra[:, None]))
        over = (budgets - caps[:, None]).clamp(min=0)
        budgets, amount = budgets - over, over.sum(-1)
    return budgets


def _compact(values: torch.Tensor, mask: torch.Tensor, fill: float | bool) -> torch.Tensor:
    """Each row's entries where `mask` holds, moved to the front in order, `fill` after them, cut to the longest row."""
    counts = mask.sum(-1)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    kept = values.gather(-1, order)
    return kept.masked_fill(torch.arange(width, device=values.device) >= counts[..., None], fill)


@dataclass
class _Stored:
    """What one layer stored at prefill, as the cascade needs it. Per held (row, head): `scores`, the indicator
    scores of its best prefix tokens that a re-allocation may look at (`Allocator.scores_needed`), in prompt order,
    -inf after them; the best `prefix` of those are stored, in prompt order, followed by `window` window tokens."""

    scores: torch.Tensor
    prefix: torch.Tensor
    window: torch.Tensor
    prompt_prefix: int
    heads: HeadSet

    @classmethod
    def of(cls, scores: torch.Tensor, kept: torch.Tensor, window: torch.Tensor, needed: torch.Tensor,
           heads: HeadSet) -> _Stored:
        """The record of a layer that kept `kept` [B, H, prefix] of its prefix tokens scored `scores`."""
        listed = rank_descending(scores) < torch.maximum(needed, kept.sum(-1))[..., None]
        return cls(_compact(scores, listed, float("-inf")), kept.sum(-1), window, scores.shape[-1], heads)

    def shrink(self, base: torch.Tensor, allocator: Allocator, layer_idx: int) -> torch.Tensor:
        """Re-allocate `base` [B] prefix tokens per head among the heads from the listed scores (padded to the prompt's
        prefix length, the same width on every process), never more than a head stores; which stored tokens stay."""
        padded = F.pad(self.scores, (0, self.prompt_prefix - self.scores.shape[-1]), value=float("-inf"))
        counts = torch.minimum(allocator.allocate(padded, base, layer_idx, self.heads), self.prefix)
        needed = allocator.scores_needed(padded, base, counts, layer_idx, self.heads)
        rank = rank_descending(self.scores)
        stays = _compact(rank < counts[..., None], rank < self.prefix[..., None], False)
        lengths = self.prefix + self.window
        width = int(lengths.max()) if lengths.numel() else 0
        position = torch.arange(width, device=lengths.device)
        window = (position >= self.prefix[..., None]) & (position < lengths[..., None])
        listed = rank < torch.maximum(needed, counts)[..., None]
        self.scores, self.prefix = _compact(self.scores, listed, float("-inf")), counts
        return F.pad(stays, (0, width - stays.shape[-1])) | window


@dataclass
class CakePolicy(ScoredPolicy):
    """CAKE (Cascading and Adaptive KV cache Eviction, Qin et al., ICLR 2025), as its release computes it.

    Preference of a layer (per sequence): from the attention of the last `window` queries over the prompt (causal
    inside the window, softmax in float32), restricted to the prefix tokens (not renormalised): spatial dispersion
    H = -sum p log(p + 1e-10) over all query heads, window queries and prefix tokens; temporal shift V = the sum over
    query heads and prefix tokens of each token's variance over the window queries (unbiased); preference =
    H^(1/tau1) x V^(1/tau2). Budgets: the layers share `num_layers x (budget - window)` prefix tokens per head in
    proportion to preference, with CAKE's adjustment (see `cake_budgets`), capped at the prompt's prefix length; the
    window is kept on top. Cascade: as layer m is prefilled, the budgets of layers 0..m are recomputed from their
    preferences and every earlier layer whose budget shrank is re-trimmed (a layer never regains dropped tokens, so a
    budget only shrinks, as in the release), so the stored K/V never exceeds the total budget plus the current layer's
    prompt K/V. Indicator: mean + gamma x variance (unbiased) over the window queries of a token's attention,
    average-pooled along tokens (kernel `pool_kernel`, zero padding counted) and averaged over a KV head's query group.
    Inside a layer every head keeps the same number of tokens, its best by the indicator (AdaPolicy(CakePolicy())
    shares them adaptively instead).

    Parameters: tau1 = 1.0 and tau2 = 1.0 (the release's fallback for models and cache sizes missing from its
    model2tau.json, so what we use for SmolLM2, Qwen2.5-Coder and other unlisted models; `from_release` gives its tuned
    pairs), gamma = 200.0 (the release's default), pool_kernel = 5 (the release's average pooling), num_layers = None
    (set by FairKVCache). The window (FairKVCache's, 32 by default as in the release) must be at least 2 tokens.
    Departures from the release: it runs at batch 1 and sums the preference over the batch, here each sequence has its
    own budgets; it leaves prompts up to budget + window uncompressed, here a prompt is kept whole when it fits the
    budget (window included); its decode-time eviction (one token per layer per step) is not done: generated tokens
    are appended to every head, as for every policy here.
    """

    name = "cake"
    tau1: float = 1.0
    tau2: float = 1.0
    gamma: float = 200.0
    pool_kernel: int = 5
    num_layers: int | None = None

    def __post_init__(self) -> None:
        self._reset()
        for option in ("tau1", "tau2"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{option} (the preference exponent is 1/{option}) must be a positive number, got "
                                 f"{value!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0 <= self.gamma < float("inf"):
            raise ValueError(f"gamma (the weight of the attention variance in the indicator) must be a number >= 0, "
                             f"got {self.gamma!r}")
        if isinstance(self.pool_kernel, bool) or not isinstance(self.pool_kernel, int) or self.pool_kernel < 1 \
                or self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be a positive odd integer, got {self.pool_kernel!r}")

    @classmethod
    def from_release(cls, model: str, budget: int, **options) -> CakePolicy:
        """The (tau1, tau2) CAKE's release tuned for `model` (its names, e.g. "llama3.1-8b-128k") at cache size
        `budget` (128 or 1024)."""
        if (model, budget) not in RELEASE_TAUS:
            raise ValueError(f"CAKE's release tunes tau1/tau2 for {sorted(RELEASE_TAUS)} (model, budget) only, not "
                             f"({model!r}, {budget!r}): use CakePolicy() (its fallback, tau1 = tau2 = 1.0) or pass them")
        tau1, tau2 = RELEASE_TAUS[model, budget]
        return cls(tau1=tau1, tau2=tau2, **options)

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Learn the model's depth (the total budget is num_layers x budget)."""
        self.num_layers = num_layers

    def score(
        self, queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scaling: float, window: int
    ) -> torch.Tensor:
        """CAKE's eviction indicator of the prefix tokens, [B, H_kv, L - window]."""
        batch, kv_heads, length, _ = keys.shape
        prefix = length - window
        if kv_heads == 0:  # a multi-GPU rank holding no head of this layer
            return keys.new_zeros(batch, 0, prefix, dtype=torch.float32)
        probs = window_probabilities(queries, keys, valid, scaling, window)
        indicator = (probs.mean(dim=3) + self.gamma * probs.var(dim=3))[..., :prefix]
        pooled = F.avg_pool1d(indicator.reshape(batch, -1, prefix), self.pool_kernel, stride=1,
                              padding=self.pool_kernel // 2)
        return pooled.view(indicator.shape).mean(dim=2)

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
        """This layer's prefix tokens per head for each sequence after its cascade step, which also shrinks the
        budgets of earlier layers (trimmed by `cascade`). Preferences sum over all heads through `heads.gather`."""
        if self.num_layers is None:
            raise ValueError("CakePolicy needs the number of layers: use it through FairKVCache or pass num_layers")
        batch, kv_heads, length, _ = keys.shape
        prefix = length - window
        parts = keys.new_zeros(batch, 0, 2, dtype=torch.float32)
        if kv_heads:
            probs = window_probabilities(queries, keys, valid, scaling, window)[..., :prefix]
            entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=(2, 3, 4))
            parts = torch.stack([entropy, probs.var(dim=3).sum(dim=(2, 3))], dim=-1)
        dispersion, shift = heads.gather(parts).sum(dim=1).double().unbind(-1)
        self._preferences[layer_idx] = dispersion ** (1 / self.tau1) * shift ** (1 / self.tau2)
        seen = sorted(self._preferences)
        total = self.num_layers * (budget - window)
        budgets = cake_budgets(torch.stack([self._preferences[l] for l in seen], 1), total, valid[:, :prefix].sum(-1))
        self._shrunk = [l for l, new in zip(seen, budgets.unbind(1))
                        if l in self._budgets and bool((new < self._budgets[l]).any())]
        for l, new in zip(seen, budgets.unbind(1)):
            self._budgets[l] = torch.minimum(self._budgets[l], new) if l in self._budgets else new
        return self._budgets[layer_idx]

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
        """This layer's selection at its cascade step; what it keeps is recorded for later re-trims."""
        if window < 2:
            raise ValueError(f"cake needs a window of at least 2 tokens (the variance over the window's queries), got "
                             f"window={window}: pass window >= 2 to FairKVCache")
        if layer_idx == 0:
            self._reset()
        heads = heads or HeadSet.full(keys.shape[1])
        allocator = allocator or self
        keep, scores = self.select(queries, keys, valid, scaling, budget, window, layer_idx, heads, allocator)
        if scores is not None:
            prefix = scores.shape[-1]
            kept = keep[..., :prefix]
            needed = allocator.scores_needed(scores, self._budgets[layer_idx], kept.sum(-1), layer_idx, heads)
            self._stored[layer_idx] = _Stored.of(scores, kept, keep[..., prefix:].sum(-1), needed, heads)
        return keep

    def cascade(self, layer_idx: int, allocator: Allocator | None = None) -> dict[int, torch.Tensor]:
        """Which stored tokens of each layer whose budget shrank at this step stay: its new budget re-allocated among
        its heads (this policy's allocation, or `allocator`'s) from the scores recorded for it; windows stay."""
        stays = {l: self._stored[l].shrink(self._budgets[l], allocator or self, l) for l in self._shrunk}
        self._shrunk = []
        if layer_idx + 1 == self.num_layers:
            self._reset()
        return stays

    def _reset(self) -> None:
        """Forget the previous prefill (its preferences, budgets and stored scores)."""
        self._preferences, self._budgets, self._stored, self._shrunk = {}, {}, {}, []
