"""Evaluation methods: a name and the KV cache a generation starts with.

``full`` is the reference: transformers' ``DynamicCache`` with sdpa attention. ``fairkv-full`` and
``<policy>-<budget>`` (``snapkv-128``, ``ada_snapkv-512``: any FairKVCache policy that runs on a budget alone)
start each generation with a fresh ``FairKVCache``. Names are checked when parsed, so a command line with a bad
method fails before any method runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from fairkv_hf.cache import FairKVCache
from fairkv_hf.policies import POLICIES

_COMPRESSED = re.compile(r"^(?P<policy>[a-z_]+)-(?P<budget>\d+)$")


@dataclass(frozen=True)
class Method:
    """A named way to hold the KV cache during generation; ``policy`` None means DynamicCache."""

    name: str
    policy: str | None = None
    budget: int | None = None
    window: int = 32

    def make_cache(self, model: PreTrainedModel) -> Cache | None:
        """A fresh cache for one ``generate`` call, or None to let transformers use a DynamicCache."""
        if self.policy is None:
            model.set_attn_implementation("sdpa")
            return None
        kwargs = {} if self.budget is None else {"budget": self.budget}
        return FairKVCache(model, policy=self.policy, window=self.window, **kwargs)


def budget_policies() -> list[str]:
    """Names of the FairKVCache policies that a method name can select: those that need nothing but a budget."""
    return sorted(name for name, cls in POLICIES.items() if cls.uses_budget)


def parse_method(name: str, window: int = 32) -> Method:
    """``full`` | ``fairkv-full`` | ``<policy>-<budget>`` -> Method; ValueError saying what to write instead."""
    if name == "full":
        return Method(name)
    if name == "fairkv-full":
        return Method(name, policy="full", window=window)
    match = _COMPRESSED.match(name)
    policies = budget_policies()
    if match is None or match["policy"] not in policies:
        raise ValueError(f"Unknown method '{name}': use full, fairkv-full or <policy>-<budget> with a policy among "
                         f"{', '.join(policies)} (e.g. snapkv-128, ada_snapkv-512)")
    budget = int(match["budget"])
    if budget <= window:
        raise ValueError(f"Method '{name}': the budget must exceed the observation window ({window} tokens)")
    return Method(name, policy=match["policy"], budget=budget, window=window)
