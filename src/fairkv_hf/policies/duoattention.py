"""DuoAttention-style heads: retrieval heads keep the whole prompt, streaming heads keep sink + recent tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..heads import HeadSet
from .base import Policy


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def read_gates(path: str | Path) -> np.ndarray:
    """DuoAttention's per-head gates [num_layers, num_kv_heads] from its `full_attention_heads.tsv` file."""
    try:
        return np.loadtxt(path, delimiter="\t", ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: not a tab-separated table of gate values ({err})") from None


def retrieval_heads(gates: np.ndarray, fraction: float) -> np.ndarray:
    """The top `fraction` of all heads by gate value (ranked over every layer together, ties to the earlier head)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"retrieval fraction must be in [0, 1], got {fraction}")
    order = np.argsort(-gates.ravel(), kind="stable")
    chosen = np.zeros(gates.size, dtype=bool)
    chosen[order[: int(round(fraction * gates.size))]] = True
    return chosen.reshape(gates.shape)


@dataclass
class DuoAttentionPolicy(Policy):
    """Head h of layer l is a retrieval head where `retrieval[l][h]` (keeps every prompt token) and a streaming
    head otherwise (keeps the first `sink` and the last `recent` prompt tokens). FairKVCache's budget and window
    are not used. `from_gates` reads DuoAttention's published per-head gates (shared/profiles/duoattention)."""

    name = "duoattention"
    uses_budget = False
    retrieval: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))
    sink: int = 64
    recent: int = 256

    def __post_init__(self) -> None:
        self.retrieval = np.asarray(self.retrieval, dtype=bool)
        if self.retrieval.ndim != 2 or self.retrieval.size == 0:
            raise ValueError("DuoAttentionPolicy needs retrieval: a [num_layers, num_kv_heads] boolean table, "
                             "e.g. DuoAttentionPolicy.from_gates(path_to_full_attention_heads_tsv)")
        if not _is_int(self.sink) or not _is_int(self.recent) or self.sink < 0 or self.recent < 1:
            raise ValueError(f"sink must be an integer >= 0 and recent an integer >= 1, got sink={self.sink!r}, "
                             f"recent={self.recent!r}")

    @classmethod
    def from_gates(cls, path: str | Path, fraction: float = 0.5, **options) -> DuoAttentionPolicy:
        """Retrieval heads = the top `fraction` of the gates in a DuoAttention `full_attention_heads.tsv` file."""
        return cls(retrieval=retrieval_heads(read_gates(path), fraction), **options)

    def bind(self, num_layers: int, num_kv_heads: int) -> None:
        """Refuse a head table made for another model shape."""
        if self.retrieval.shape != (num_layers, num_kv_heads):
            raise ValueError(f"retrieval table has shape {self.retrieval.shape}, but the model has {num_layers} layers "
                             f"x {num_kv_heads} KV heads: use the gates published for this model")

    def keep_mask(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        budget: int | None,
        window: int,
        layer_idx: int,
        heads: HeadSet | None = None,
    ) -> torch.Tensor:
        """Retrieval heads: every valid token; streaming heads: the first `sink` and last `recent` valid tokens (per held
        head, by global id)."""
        batch, heads_held, length, _ = keys.shape
        seen = valid.long().cumsum(-1)
        total = seen[:, -1:]
        streaming = valid & ((seen <= self.sink) | (total - seen < self.recent))
        ids = heads.ids if heads is not None else list(range(heads_held))
        retrieval = torch.as_tensor(self.retrieval[layer_idx, ids], device=keys.device)[None, :, None]
        return torch.where(retrieval, valid[:, None, :], streaming[:, None, :]).expand(batch, heads_held, length).clone()
