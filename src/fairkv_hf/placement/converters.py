"""Converters from the published head-importance data in ``shared/profiles`` to `HeadLoadProfile`.

DuoAttention (gates per KV head): the ``retrieval_fraction`` of all heads of the model with the highest
gates (ranked over every layer together, as DuoAttention's own sparsity threshold does; ties broken by
position) keep the whole context; the others keep ``sink + recent`` tokens (64 + 256), capped by the
context. The profile's ``budget`` field holds the context length.

HeadKV (scores per QUERY head, key "layer-head"): a query head's importance is the mean of its list. Our
cache stores K/V per KV head, so a KV head's importance is the SUM over the query heads of its group
(query head q belongs to KV head q // group, the Llama/Mistral ``repeat_kv`` layout), and HeadKV's budget
rule is applied to KV heads with base budget ``B`` and window 32::

    B_eff = B - window;  pool = (B_eff // beta) * L * H
    tokens[l][h] = round(score[l][h] / sum(score) * pool + B_eff - B_eff // beta) + window

Summing (not taking the max) keeps the mean kept length per KV head at B, and it equals 1/group of the
sum of the group's per-query-head HeadKV budgets up to rounding, so per-query-head storage (HeadKV's
own code) would give loads proportional to these. ``round`` is numpy's half-to-even; budgets are not
capped by a context length (none is known here).

A table's model shape comes from ``KNOWN_SHAPES`` (the published tables' models) or from the model's card
``<profiles folder>/<model>.json``, which ``fairkv-profile --retrieval-heads`` writes beside its measured tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fairkv_hf.placement.profile import HeadLoadProfile, config_shape
from fairkv_hf.policies.duoattention import read_gates, retrieval_heads

HEADKV_WINDOW = 32
DUO_SINK = 64
DUO_RECENT = 256


@dataclass(frozen=True)
class ModelShape:
    """The attention shape of a model (from its published config.json)."""

    num_layers: int
    num_query_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """The shape of a transformers config (head_dim defaults to hidden_size // query heads, as in Llama)."""
        layers, kv_heads, q_heads, head_dim = config_shape(config)
        return cls(layers, q_heads, kv_heads, head_dim, int(config.hidden_size))


KNOWN_SHAPES: dict[str, ModelShape] = {
    "Meta-Llama-3.1-8B-Instruct": ModelShape(32, 32, 8, 128, 4096),
    "Meta-Llama-3-8B-Instruct": ModelShape(32, 32, 8, 128, 4096),
    "Mistral-7B-Instruct-v0.2": ModelShape(32, 32, 8, 128, 4096),
    "Llama-2-7B-32K-Instruct": ModelShape(32, 32, 32, 128, 4096),
    "Llama-3.3-70B-Instruct": ModelShape(80, 64, 8, 128, 8192),
}


def model_name_of(path: str | Path) -> str:
    """The model name a profile table is named after (before "_retrieval" or ".full_attention_heads")."""
    name = Path(path).name
    return name.split(".full_attention_heads")[0].split("_retrieval")[0]


def shape_of(model: str, shape: ModelShape | None, root: str | Path | None = None) -> ModelShape:
    """The given shape, the known shape of ``model``, or the one its card ``<root>/<model>.json`` names (written with
    measured tables by ``fairkv-profile --retrieval-heads``, see ``head_tables``); a clear error when none exists."""
    if shape is not None:
        return shape
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    card = Path(root) / f"{model}.json" if root is not None else None
    if card is not None and card.is_file():
        return ModelShape(**json.loads(card.read_text())["shape"])
    raise ValueError(f"no known shape for model {model!r}: pass shape=ModelShape(...), or keep the table in the profiles "
                     f"folder of its {model}.json card (known: {sorted(KNOWN_SHAPES)})")


def _profiles_root(path: str | Path) -> Path:
    """The profiles folder of a table file (``<root>/headkv/...`` or ``<root>/duoattention/...``)."""
    return Path(path).resolve().parent.parent


def _profile(model: str, shape: ModelShape, budget: float, tokens: np.ndarray) -> HeadLoadProfile:
    return HeadLoadProfile(
        model=model,
        num_layers=shape.num_layers,
        num_query_heads=shape.num_query_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        hidden_size=shape.hidden_size,
        budget=float(budget),
        tokens=tokens,
    )


def from_duoattention(
    path: str | Path,
    context: int = 32768,
    retrieval_fraction: float = 0.5,
    shape: ModelShape | None = None,
) -> HeadLoadProfile:
    """Profile of DuoAttention at ``context`` tokens with the top ``retrieval_fraction`` of heads retrieving."""
    if context < 1:
        raise ValueError(f"context must be a positive number of tokens, got {context}")
    model = model_name_of(path)
    shape = shape_of(model, shape, _profiles_root(path))
    gates = read_gates(path)
    if gates.shape != (shape.num_layers, shape.num_kv_heads):
        raise ValueError(
            f"{path}: gates have shape {gates.shape}, but {model} has {shape.num_layers} layers x "
            f"{shape.num_kv_heads} KV heads"
        )
    retrieval = retrieval_heads(gates, retrieval_fraction)
    streaming = min(DUO_SINK + DUO_RECENT, context)
    tokens = np.where(retrieval, float(context), float(streaming))
    return _profile(f"{model} duoattention ctx={context} retrieval={retrieval_fraction:g}", shape, context, tokens)


def headkv_scores(path: str | Path, shape: ModelShape | None = None) -> tuple[str, ModelShape, np.ndarray]:
    """A HeadKV table's model name, shape and mean score per query head [layers, query heads]."""
    model = model_name_of(path)
    shape = shape_of(model, shape, _profiles_root(path))
    with open(path) as f:
        raw = json.loads(f.readline())
    scores = np.full((shape.num_layers, shape.num_query_heads), np.nan)
    for key, values in raw.items():
        layer, head = (int(x) for x in key.split("-"))
        if not (0 <= layer < shape.num_layers and 0 <= head < shape.num_query_heads):
            raise ValueError(f"{path}: key {key!r} is outside {model}'s {shape.num_layers} x {shape.num_query_heads} query heads")
        scores[layer, head] = float(np.mean(values))
    if np.isnan(scores).any():
        layer, head = np.argwhere(np.isnan(scores))[0]
        raise ValueError(f"{path}: no score for query head '{layer}-{head}'")
    return model, shape, scores


def from_headkv(
    path: str | Path, budget: int = 128, beta: float = 1.01, shape: ModelShape | None = None
) -> HeadLoadProfile:
    """Profile of HeadKV at base budget ``budget`` and ``beta`` (rule in the module docstring)."""
    if budget <= HEADKV_WINDOW:
        raise ValueError(f"HeadKV budget must exceed the window of {HEADKV_WINDOW} tokens, got {budget}")
    if beta < 1.0:
        raise ValueError(f"HeadKV beta must be >= 1 (B_eff // beta is the redistributed share), got {beta}")
    model, shape, scores = headkv_scores(path, shape)
    group = shape.num_query_heads // shape.num_kv_heads
    kv_scores = scores.reshape(shape.num_layers, shape.num_kv_heads, group).sum(axis=2)
    b_eff = budget - HEADKV_WINDOW
    pool = (b_eff // beta) * shape.num_layers * shape.num_kv_heads
    tokens = np.round(kv_scores / kv_scores.sum() * pool + b_eff - b_eff // beta) + HEADKV_WINDOW
    return _profile(f"{model} headkv B={budget} beta={beta:g}", shape, budget, tokens)


def shared_profiles(root: str | Path) -> list[HeadLoadProfile]:
    """Every profile the acceptance criteria name: DuoAttention at 32K with 50% retrieval heads, and HeadKV
    at base budgets 128 and 1024 with beta 1.01 and 2.0, for each file under ``root``."""
    root = Path(root)
    duo = sorted((root / "duoattention").glob("*.tsv"))
    headkv = sorted((root / "headkv").glob("*.json"))
    if not duo and not headkv:
        raise FileNotFoundError(f"no duoattention/*.tsv or headkv/*.json under {root}")
    profiles = [from_duoattention(p) for p in duo]
    profiles += [from_headkv(p, budget=b, beta=beta) for p in headkv for b in (128, 1024) for beta in (1.01, 2.0)]
    return profiles
