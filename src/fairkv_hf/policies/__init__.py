"""Budget policies: who keeps what. Accept a policy by name or as an object."""

from __future__ import annotations

from typing import Any, Callable

from .ada import AdaOver, AdaPolicy
from .base import Policy, ScoredPolicy
from .cake import CakePolicy
from .duoattention import DuoAttentionPolicy
from .full import FullPolicy
from .head_budgets import HeadBudgetPolicy
from .pyramidkv import PyramidKVPolicy
from .snapkv import SnapKVPolicy

POLICIES: dict[str, Callable[..., Policy]] = {
    **{cls.name: cls for cls in (FullPolicy, SnapKVPolicy, PyramidKVPolicy, CakePolicy, HeadBudgetPolicy,
                                 DuoAttentionPolicy)},
    **{f"ada_{cls.name}": AdaOver(cls) for cls in (SnapKVPolicy, PyramidKVPolicy, CakePolicy)},
}
"""Policy names -> constructors taking the policy's options; every entry has `uses_budget`."""


def get_policy(policy: str | Policy, **options: Any) -> Policy:
    """A policy object from its name (with constructor options) or the object itself."""
    if isinstance(policy, Policy):
        if options:
            raise ValueError(f"Policy options {sorted(options)} are only accepted with a policy name, not an object")
        return policy
    if policy not in POLICIES:
        raise ValueError(f"Unknown policy {policy!r}; choose one of {sorted(POLICIES)} or pass a Policy object")
    return POLICIES[policy](**options)


__all__ = ["POLICIES", "AdaPolicy", "CakePolicy", "DuoAttentionPolicy", "FullPolicy", "HeadBudgetPolicy", "Policy",
           "PyramidKVPolicy", "ScoredPolicy", "SnapKVPolicy", "get_policy"]
