"""Measured per-head scores written as the published tables, so everything that reads those reads them unchanged.

A profiles folder (the layout of ``shared/profiles``) gets, for model ``M``:

- ``headkv/M_retrieval_heads.json``: HeadKV's format: one JSON object on the first line, keys ``"layer-head"`` over
  QUERY heads, values the per-prompt scores. ``converters.from_headkv`` (HeadBudgetPolicy, ``fairkv-plan --headkv``)
  reduces a KV head's group by summing the query heads' mean scores.
- ``duoattention/M.full_attention_heads.tsv``: DuoAttention's format: one row per layer, one tab-separated value per
  KV head. A KV head's value is the LARGEST mean score among its query heads: they share its K/V, so it must keep
  the whole context as soon as one of them retrieves. ``DuoAttentionPolicy.from_gates`` and
  ``converters.from_duoattention`` take the top fraction of these as retrieval heads.
- ``M.json``: the model's attention shape (which ``converters.shape_of`` reads for a model it does not know) and how
  the tables were measured.

``fairkv-plan --simulate --profiles-dir FOLDER`` plans from every table in the folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fairkv_hf.files import atomic_write
from fairkv_hf.placement.converters import ModelShape


def headkv_path(root: str | Path, model: str) -> Path:
    """Where a profiles folder keeps the model's HeadKV-format table."""
    return Path(root) / "headkv" / f"{model}_retrieval_heads.json"


def duoattention_path(root: str | Path, model: str) -> Path:
    """Where a profiles folder keeps the model's DuoAttention-format table."""
    return Path(root) / "duoattention" / f"{model}.full_attention_heads.tsv"


def kv_head_scores(query_scores: np.ndarray, num_kv_heads: int) -> np.ndarray:
    """[layers, query heads] -> [layers, KV heads]: the largest score of each KV head's query group (query head q
    belongs to KV head q // group, the ``repeat_kv`` layout)."""
    layers, query_heads = query_scores.shape
    if query_heads % num_kv_heads:
        raise ValueError(f"{query_heads} query heads do not split into {num_kv_heads} equal KV-head groups")
    return query_scores.reshape(layers, num_kv_heads, query_heads // num_kv_heads).max(axis=2)


def write_tables(root: str | Path, model: str, shape: ModelShape, scores: np.ndarray, card: dict) -> list[Path]:
    """Write the model's tables from per-prompt query-head scores [prompts, layers, query heads], and its card
    (``card`` plus the shape); return the paths written."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[1:] != (shape.num_layers, shape.num_query_heads) or scores.shape[0] == 0:
        raise ValueError(f"scores must be [prompts >= 1, {shape.num_layers}, {shape.num_query_heads}], got {scores.shape}")
    if "_retrieval" in model or ".full_attention_heads" in model:
        raise ValueError(f"model name {model!r} holds a file-name marker of the published tables: choose another name")
    root = Path(root)
    headkv, duo, card_path = headkv_path(root, model), duoattention_path(root, model), root / f"{model}.json"
    for folder in (headkv.parent, duo.parent):
        folder.mkdir(parents=True, exist_ok=True)
    table = {f"{layer}-{head}": [round(float(s), 6) for s in scores[:, layer, head]]
             for layer in range(shape.num_layers) for head in range(shape.num_query_heads)}
    atomic_write(headkv, json.dumps(table) + "\n")
    gates = kv_head_scores(scores.mean(axis=0), shape.num_kv_heads)
    atomic_write(duo, "".join("\t".join(f"{g:.6f}" for g in row) + "\n" for row in gates))
    atomic_write(card_path, json.dumps(card | {"model": model, "shape": asdict(shape)}, indent=2) + "\n")
    return [headkv, duo, card_path]
