"""SnapKV-family token scores: attention of the last `window` prompt queries, pooled per KV head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def window_probabilities(
    queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scaling: float, window: int
) -> torch.Tensor:
    """Attention [B, H_kv, group, window, L] (float32) of the last `window` queries over all keys, causal inside the
    window, padding masked (rows with no key left are zeros); a KV head's query group on its own axis."""
    batch, kv_heads, length, dim = keys.shape
    group = queries.shape[1] // kv_heads
    q = queries[:, :, -window:].reshape(batch, kv_heads, group, window, dim).float()
    logits = torch.einsum("bhgwd,bhld->bhgwl", q, keys.float()) * scaling
    key_pos = torch.arange(length, device=keys.device)
    query_pos = torch.arange(length - window, length, device=keys.device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None] & valid[:, None, :]
    logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num_(0.0)


def window_attention_scores(
    queries: torch.Tensor,
    keys: torch.Tensor,
    valid: torch.Tensor,
    scaling: float,
    window: int,
    gqa_reduce: str = "mean",
    pool_kernel: int = 7,
) -> torch.Tensor:
    """Scores [B, H_kv, L - window]: softmax of the last `window` queries over all keys (causal inside the window,
    padding masked), averaged over the window, reduced over each KV head's query group, max-pooled along tokens."""
    batch, kv_heads, length, _ = keys.shape
    if kv_heads == 0:  # a multi-GPU rank holding no head of this layer: nothing to score
        return keys.new_zeros(batch, 0, length - window, dtype=torch.float32)
    probs = window_probabilities(queries, keys, valid, scaling, window).mean(dim=3)
    reduced = probs.amax(dim=2) if gqa_reduce == "max" else probs.mean(dim=2)
    prefix = reduced[..., : length - window]
    if pool_kernel > 1:
        prefix = F.max_pool1d(prefix, kernel_size=pool_kernel, stride=1, padding=pool_kernel // 2)
    return prefix


@dataclass
class SnapKVScoring:
    """Mixin giving a policy SnapKV's scores; `gqa_reduce` is "mean" or "max" over a KV head's query group."""

    gqa_reduce: str = "mean"
    pool_kernel: int = 7

    def __post_init__(self) -> None:
        if self.gqa_reduce not in ("mean", "max"):
            raise ValueError(f"gqa_reduce must be 'mean' or 'max', got {self.gqa_reduce!r}")
        if isinstance(self.pool_kernel, bool) or not isinstance(self.pool_kernel, int) or self.pool_kernel < 1 \
                or self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be a positive odd integer, got {self.pool_kernel!r}")

    def score(
        self, queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, scaling: float, window: int
    ) -> torch.Tensor:
        """SnapKV scores of the prefix tokens (see `window_attention_scores`)."""
        return window_attention_scores(queries, keys, valid, scaling, window, self.gqa_reduce, self.pool_kernel)
