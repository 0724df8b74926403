"""Head load profiles: expected kept tokens per (layer, KV head) plus the model shape the planner needs.

A profile is what the placement planner balances. It is stored as one JSON object::

    {"model": str, "num_layers": L, "num_query_heads": Hq, "num_kv_heads": H, "head_dim": d,
     "hidden_size": h, "budget": B, "tokens": [[float] * H] * L}

``tokens[l][h]`` is the expected number of tokens KV head ``h`` of layer ``l`` keeps per sequence. The
cache stores K/V per KV head (query heads of a GQA group share it), so this is the unit of KV reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fairkv_hf.files import atomic_write


@dataclass(frozen=True)
class HeadLoadProfile:
    """Expected kept tokens per (layer, KV head) of one model under one compression policy and budget."""

    model: str
    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    budget: float
    tokens: np.ndarray

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=np.float64)
        object.__setattr__(self, "tokens", tokens)
        for name in ("num_layers", "num_query_heads", "num_kv_heads", "head_dim", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"profile {self.model!r}: {name} must be a positive integer, got {value!r}")
        if self.num_query_heads % self.num_kv_heads:
            raise ValueError(
                f"profile {self.model!r}: num_query_heads {self.num_query_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}; every KV head must serve the same number of query heads"
            )
        if tokens.shape != (self.num_layers, self.num_kv_heads):
            raise ValueError(
                f"profile {self.model!r}: tokens has shape {tokens.shape}, but the model shape says "
                f"[num_layers, num_kv_heads] = [{self.num_layers}, {self.num_kv_heads}]"
            )
        if not np.all(np.isfinite(tokens)):
            raise ValueError(f"profile {self.model!r}: tokens contains NaN or infinite values")
        if np.any(tokens < 0):
            l, h = np.argwhere(tokens < 0)[0]
            raise ValueError(f"profile {self.model!r}: tokens[{l}][{h}] = {tokens[l, h]} is negative")
        if np.any(tokens.sum(axis=1) <= 0):
            l = int(np.flatnonzero(tokens.sum(axis=1) <= 0)[0])
            raise ValueError(f"profile {self.model!r}: layer {l} keeps no tokens at all; nothing to place")

    @property
    def group_size(self) -> int:
        """Query heads served by each KV head (1 for multi-head attention)."""
        return self.num_query_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, Any]:
        """The JSON object described in the module docstring."""
        return {
            "model": self.model,
            "num_layers": int(self.num_layers),
            "num_query_heads": int(self.num_query_heads),
            "num_kv_heads": int(self.num_kv_heads),
            "head_dim": int(self.head_dim),
            "hidden_size": int(self.hidden_size),
            "budget": float(self.budget),
            "tokens": self.tokens.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadLoadProfile:
        """Build a profile from its JSON object; missing keys are reported by name."""
        keys = ("model", "num_layers", "num_query_heads", "num_kv_heads", "head_dim", "hidden_size", "budget", "tokens")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"profile JSON lacks the key(s) {missing}; a profile needs all of {list(keys)}")
        return cls(**{k: data[k] for k in keys})

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON."""
        atomic_write(Path(path), json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> HeadLoadProfile:
        """Read a profile written by `save` (or by hand, in the same format)."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_kept_lengths(
        cls, model_name: str, config: Any, kept: Sequence[torch.Tensor], budget: float
    ) -> HeadLoadProfile:
        """Average kept tokens per (layer, KV head) over calibration batches.

        ``kept`` holds one ``FairKVCache.kept_lengths()`` per calibration batch, each a LongTensor
        ``[num_layers, batch, num_kv_heads]``; every sequence counts once. ``config`` is the model's
        transformers config (num_hidden_layers, num_attention_heads, num_key_value_heads, hidden_size and
        head_dim, which defaults to hidden_size // num_attention_heads as in Llama).
        """
        shape = config_shape(config)[:2]
        if not kept:
            raise ValueError("from_kept_lengths needs at least one kept_lengths() tensor; got none")
        for i, k in enumerate(kept):
            if k.dim() != 3 or (k.shape[0], k.shape[2]) != shape:
                raise ValueError(
                    f"kept[{i}] has shape {tuple(k.shape)}; expected [num_layers, batch, num_kv_heads] with "
                    f"num_layers={shape[0]} and num_kv_heads={shape[1]} from the config of {model_name!r}"
                )
        total = sum(k.to(torch.float64).sum(dim=1) for k in kept)
        rows = sum(k.shape[1] for k in kept)
        if rows == 0:
            raise ValueError("from_kept_lengths got only empty batches (batch size 0)")
        return cls.from_config(model_name, config, (total / rows).numpy(), budget)

    @classmethod
    def from_config(cls, model_name: str, config: Any, tokens: np.ndarray | float, budget: float) -> HeadLoadProfile:
        """A profile of a transformers config's shape with the given tokens per (layer, KV head), or the same number
        for every head (a uniform load, e.g. for the standard-TP plan of a model nobody profiled)."""
        layers, kv_heads, q_heads, head_dim = config_shape(config)
        return cls(model=model_name, num_layers=layers, num_query_heads=q_heads, num_kv_heads=kv_heads,
                   head_dim=head_dim, hidden_size=int(config.hidden_size), budget=float(budget),
                   tokens=np.broadcast_to(np.asarray(tokens, dtype=np.float64), (layers, kv_heads)).copy())


def config_shape(config: Any) -> tuple[int, int, int, int]:
    """(layers, KV heads, query heads, head_dim) of a transformers config (head_dim defaults as in Llama)."""
    num_q = int(config.num_attention_heads)
    num_kv = int(getattr(config, "num_key_value_heads", None) or num_q)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_q
    return int(config.num_hidden_layers), num_kv, num_q, int(head_dim)

