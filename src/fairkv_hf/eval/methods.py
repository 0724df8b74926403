"""Evaluation methods: a name and the KV cache a generation starts with.

``full`` is the reference: transformers' ``DynamicCache`` with sdpa attention. ``fairkv-full`` and
``<policy>-<budget>`` (``snapkv-128``, ``ada_snapkv-512``: any FairKVCache policy that runs on a budget alone)
start each generation with a fresh ``FairKVCache``. ``headkv-<B>`` and ``duo-<B>`` use the model's measured head
table (``fairkv-profile --retrieval-heads``; the folder ``bench/results/profiles`` by default): HeadKV's per-head
budgets at base budget B (window included), and DuoAttention with the top half of the KV heads keeping the whole
prompt and the others sink 64 + recent B - 64 (B tokens). Names are checked when parsed, so a command line with a
bad method fails before any method runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from fairkv_hf.cache import FairKVCache
from fairkv_hf.placement.converters import from_headkv
from fairkv_hf.policies import POLICIES, DuoAttentionPolicy, HeadBudgetPolicy, Policy

HEAD_TABLES = Path(__file__).resolve().parents[3] / "bench" / "results" / "profiles"
TABLE_FILES = {"headkv": "headkv/{model}_retrieval_heads.json", "duo": "duoattention/{model}.full_attention_heads.tsv"}
DUO_SINK = 64
DUO_RETRIEVAL_FRACTION = 0.5

_COMPRESSED = re.compile(r"^(?P<policy>[a-z_]+)-(?P<budget>\d+)$")


@dataclass(frozen=True)
class Method:
    """A named way to hold the KV cache during generation; ``policy`` None means DynamicCache."""

    name: str
    policy: str | None = None
    budget: int | None = None
    window: int = 32
    table: Path | None = None

    def make_cache(self, model: PreTrainedModel) -> Cache | None:
        """A fresh cache for one ``generate`` call, or None to let transformers use a DynamicCache."""
        if self.policy is None:
            model.set_attn_implementation("sdpa")
            return None
        if self.table is not None:
            return FairKVCache(model, policy=self.table_policy(), window=self.window)
        kwargs = {} if self.budget is None else {"budget": self.budget}
        return FairKVCache(model, policy=self.policy, window=self.window, **kwargs)

    def table_policy(self) -> Policy:
        """The per-head policy of a ``headkv-<B>`` / ``duo-<B>`` method from its measured table (module docstring),
        read once per method (every cache copies its policy)."""
        return _table_policy(self.policy, self.table, self.budget)


@lru_cache(maxsize=None)
def _table_policy(kind: str, table: Path, budget: int) -> Policy:
    if kind == "headkv":
        return HeadBudgetPolicy.from_profile(from_headkv(table, budget=budget))
    return DuoAttentionPolicy.from_gates(table, DUO_RETRIEVAL_FRACTION, sink=DUO_SINK, recent=budget - DUO_SINK)


def budget_policies() -> list[str]:
    """Names of the FairKVCache policies that a method name can select: those that need nothing but a budget."""
    return sorted(name for name, cls in POLICIES.items() if cls.uses_budget)


def parse_method(name: str, window: int = 32, model: str | None = None, tables: Path = HEAD_TABLES) -> Method:
    """``full`` | ``fairkv-full`` | ``<policy>-<budget>`` | ``headkv-<B>`` | ``duo-<B>`` -> Method (the last two find
    ``model``'s table under ``tables``); ValueError saying what to write instead."""
    if name == "full":
        return Method(name)
    if name == "fairkv-full":
        return Method(name, policy="full", window=window)
    match = _COMPRESSED.match(name)
    policies = budget_policies()
    if match is None or match["policy"] not in [*policies, *TABLE_FILES]:
        raise ValueError(f"Unknown method '{name}': use full, fairkv-full, headkv-<budget>, duo-<budget> or "
                         f"<policy>-<budget> with a policy among {', '.join(policies)} (e.g. snapkv-128, ada_snapkv-512)")
    budget = int(match["budget"])
    if budget <= max(window, DUO_SINK if match["policy"] == "duo" else 0):
        raise ValueError(f"Method '{name}': the budget must exceed the observation window ({window} tokens)"
                         + (f" and the {DUO_SINK} sink tokens" if match["policy"] == "duo" else ""))
    if match["policy"] not in TABLE_FILES:
        return Method(name, policy=match["policy"], budget=budget, window=window)
    table = Path(tables) / TABLE_FILES[match["policy"]].format(model=Path(model or "").name)
    if not table.is_file():
        raise ValueError(f"Method '{name}' reads the measured head table {table}, which does not exist: run "
                         f"fairkv-profile --retrieval-heads --model {model} --out {tables}, or give --head-tables")
    return Method(name, policy=match["policy"], budget=budget, window=window, table=table)
