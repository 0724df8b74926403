"""What one rank holds under a plan: for every layer, its KV heads and the batch rows it serves for each.

The plan must be made for the model's shape and for as many GPUs as there are processes; this is checked
before any weight is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..heads import HeadSet, HeldHead
from ..placement.plans import Plan


@dataclass(frozen=True)
class RankHeadSet(HeadSet):
    """A rank's share of one layer; `gather` and `all_reduce` sum over all ranks of the default process group."""

    distributed = True

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum `tensor` in place over every rank (each rank calls this for every layer, holding heads there or not)."""
        dist.all_reduce(tensor)


@dataclass(frozen=True)
class RankLayout:
    """One rank's share of a plan: `heads[l]` is what it holds in layer l."""

    rank: int
    world_size: int
    plan: Plan
    heads: tuple[RankHeadSet, ...]

    @property
    def held(self) -> list[list[int]]:
        """Global KV head ids held per layer."""
        return [h.ids for h in self.heads]


def check_plan(plan: Plan, config, world_size: int) -> None:
    """Refuse a plan made for another model shape or another number of GPUs, saying which."""
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    q_heads = int(config.num_attention_heads)
    shape = (plan.profile.num_layers, plan.profile.num_kv_heads, plan.profile.num_query_heads)
    if shape != (layers, kv_heads, q_heads):
        raise ValueError(
            f"the plan is for a model with {shape[0]} layers, {shape[1]} KV heads and {shape[2]} query heads "
            f"({plan.profile.model!r}), but this model has {layers}, {kv_heads} and {q_heads}: make the plan from "
            "this model's profile (fairkv-profile, then fairkv-plan)")
    if plan.gpus != world_size:
        raise ValueError(f"the plan places heads on {plan.gpus} GPUs but {world_size} processes run: launch "
                         f"{plan.gpus} processes (torchrun --nproc-per-node {plan.gpus}) or make a plan for {world_size}")


def rank_layout(plan: Plan, rank: int, world_size: int) -> RankLayout:
    """The heads `rank` holds in every layer, in global head order, with the batch shares of replicated heads."""
    heads = []
    for layer in plan.layers:
        held = []
        for h, pieces in enumerate(layer):
            pieces = sorted(pieces, key=lambda p: p.gpu)
            gpus = [p.gpu for p in pieces]
            if rank in gpus:
                shares = tuple(p.batch_fraction for p in pieces) if len(pieces) > 1 else (1.0,)
                held.append(HeldHead(h, shares, gpus.index(rank)))
        heads.append(RankHeadSet(plan.profile.num_kv_heads, tuple(held)))
    return RankLayout(rank, world_size, plan, tuple(heads))
