"""Plans: which GPU holds which (layer, KV head) replica and which share of the batch it serves.

Three plans are compared:
- standard TP: KV heads split contiguously, ``H/N`` per GPU (``numpy.array_split`` when N does not divide H).
  With N > H we do what vLLM does: each KV head is replicated on N/H contiguous GPUs (``array_split`` of
  the GPUs when H does not divide N), each replica serving a share of the head's query heads for the WHOLE
  batch, so every replica reads the head's full KV and holds k, v plus its share of the q and o slices.
- best effort: whole KV heads moved to any GPU, no copies.
- FairKV: best effort plus Fair-Copying: a head may have replicas on several GPUs, each serving a fraction
  of the batch (all query heads of its group) and holding the head's full q/k/v/o slices; at most
  ``max_copies`` extra replicas per layer (default N - 1; a head on k GPUs counts k - 1).

Objectives: ``"time"`` minimises the predicted decode step of the cost model at ``batch`` (weight reads of
replicas included); ``"balance"`` minimises KV reads only. Each layer is solved exactly by `exact` when small
enough (always for 8 KV heads), by heuristics otherwise. A memory cap (attention weight slices + KV at
``batch``) is met by relabelling each layer's GPUs, heaviest bins onto the GPUs holding least so far, and
else by allowing fewer copies.

Whole rows: a head's fractions become rows by largest remainder (floor of fraction x batch, then the rows
left over go to the largest remainders, ties to the lower GPU id); replicas then take contiguous rows in
GPU order. A replica left with no rows is skipped by the executor and costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fairkv_hf.files import atomic_write
from fairkv_hf.placement.assign import layer_time
from fairkv_hf.placement.bounds import layer_lower_bound
from fairkv_hf.placement.cost import CostModel, GpuLoads
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.placement.search import solve_layer
from fairkv_hf.ranking import batch_rows

OBJECTIVES = ("time", "balance")
ROUNDING_BATCHES = (8, 32, 128)
GIB = 1024**3


@dataclass(frozen=True)
class Placement:
    """One replica of a KV head: the GPU holding it and the share of the batch rows it serves."""

    gpu: int
    batch_fraction: float


@dataclass
class Plan:
    """A head device map for every layer and KV head, with the settings it was made under."""

    profile: HeadLoadProfile
    gpus: int
    batch: int
    objective: str
    max_copies: int
    layers: list[list[list[Placement]]]
    cost: CostModel = field(default_factory=CostModel)
    step_lower_bound_s: float = 0.0
    kind: str = "fairkv"

    def row_ranges(self, batch: int) -> list[list[list[tuple[int, int, int]]]]:
        """Per layer and KV head, its replicas as (gpu, start, end): contiguous batch rows in GPU order, rounded by
        largest remainder; a replica may get no rows (start == end) when a head has more replicas than rows."""
        if batch < 1:
            raise ValueError(f"batch must be a positive number of rows, got {batch}")
        out = []
        for layer in self.layers:
            heads = []
            for pieces in layer:
                pieces = sorted(pieces, key=lambda p: p.gpu)
                rows = batch_rows([p.batch_fraction for p in pieces], batch)
                starts = np.cumsum([0, *rows])
                heads.append([(p.gpu, int(starts[i]), int(starts[i + 1])) for i, p in enumerate(pieces)])
            out.append(heads)
        return out

    def loads(self, profile: HeadLoadProfile | None = None) -> GpuLoads:
        """KV tokens and weight bytes each GPU reads per layer under this plan, with the plan's profile or
        another one of the same shape (e.g. one input's actual budgets)."""
        layers = [[[(p.gpu, p.batch_fraction) for p in h] for h in l] for l in self.layers]
        return _loads(profile or self.profile, self.gpus, self.cost, layers)

    def rounded_loads(self, batch: int) -> GpuLoads:
        """The loads once fractions become whole rows of a batch of ``batch`` (rule in the module docstring)."""
        layers = [[[(p.gpu, r / batch) for p, r in zip(h, batch_rows([p.batch_fraction for p in h], batch)) if r] for h in l] for l in self.layers]
        return _loads(self.profile, self.gpus, self.cost, layers)

    def replica_weight_bytes(self) -> float:
        """Weight bytes held beyond one copy of every head, summed over GPUs and layers."""
        extra = sum(len(h) - 1 for l in self.layers for h in l)
        return extra * self.cost.head_weight_bytes(self.profile)

    def validate(self, mem_gib: float | None = None) -> None:
        """Raise ValueError if a head's fractions do not sum to 1, a GPU id is out of range or repeated, the
        shape does not match the profile, or a GPU holds more than ``mem_gib``."""
        if len(self.layers) != self.profile.num_layers:
            raise ValueError(f"plan has {len(self.layers)} layers, its profile {self.profile.num_layers}")
        for l, layer in enumerate(self.layers):
            if len(layer) != self.profile.num_kv_heads:
                raise ValueError(f"plan layer {l} has {len(layer)} KV heads, its profile {self.profile.num_kv_heads}")
            for h, pieces in enumerate(layer):
                gpus = [p.gpu for p in pieces]
                if not pieces or any(not 0 <= g < self.gpus for g in gpus) or len(set(gpus)) != len(gpus):
                    raise ValueError(f"layer {l} head {h}: GPU ids {gpus} must be distinct and in [0, {self.gpus})")
                fractions = [p.batch_fraction for p in pieces]
                if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
                    raise ValueError(f"layer {l} head {h}: batch fractions {fractions} must be positive and sum to 1")
        if mem_gib is not None:
            memory = self.loads().memory_bytes(self.profile, self.cost, self.batch)
            if memory.max() > mem_gib * GIB * (1 + 1e-9):
                raise ValueError(f"GPU {int(memory.argmax())} holds {memory.max() / GIB:.3f} GiB, over the cap of {mem_gib} GiB")

    def figures(self) -> dict[str, Any]:
        """Every figure the plan file reports, computed from the placements and the profile."""
        loads = self.loads()
        tp = standard_tp_loads(self.profile, self.gpus)
        best_effort = make_plan(self.profile, self.gpus, self.batch, 0, None, self.cost, self.objective)
        means = self.profile.tokens.sum(axis=1) / self.gpus
        bounds = [layer_lower_bound(t, 0.0, self.gpus, self.max_copies) for t in self.profile.tokens]
        return {
            "balance": loads.balance(self.profile),
            "lower_bound": float(sum(bounds) / means.sum()),
            "standard_tp_balance": tp.balance(self.profile),
            "best_effort_balance": best_effort.loads().balance(self.profile),
            "replica_weight_bytes": self.replica_weight_bytes(),
            "predicted_step_s": loads.step_time(self.profile, self.cost, self.batch),
            "step_lower_bound_s": self.step_lower_bound_s,
            "standard_tp_step_s": tp.step_time(self.profile, self.cost, self.batch),
            "best_effort_step_s": best_effort.loads().step_time(self.profile, self.cost, self.batch),
            "max_gpu_memory_bytes": float(loads.memory_bytes(self.profile, self.cost, self.batch).max()),
            "rounded_balance": {str(b): self.rounded_loads(b).balance(self.profile) for b in ROUNDING_BATCHES},
        }

    def to_dict(self) -> dict[str, Any]:
        """The plan file: the figures, the settings, the profile and the placements."""
        return {
            "kind": self.kind,
            "gpus": self.gpus,
            **self.figures(),
            "batch": self.batch,
            "objective": self.objective,
            "max_copies": self.max_copies,
            "cost_model": self.cost.to_dict(),
            "profile": self.profile.to_dict(),
            "layers": [
                [{"kv_head": h, "placements": [{"gpu": p.gpu, "batch_fraction": p.batch_fraction} for p in pieces]} for h, pieces in enumerate(layer)]
                for layer in self.layers
            ],
        }

    def save(self, path: str | Path) -> dict[str, Any]:
        """Write the plan file as JSON; returns what was written."""
        data = self.to_dict()
        atomic_write(Path(path), json.dumps(data, indent=1) + "\n")
        return data

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read and validate a plan file written by `save`; errors name the file and the place that is wrong."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"plan file {path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        try:
            return cls.from_dict(data)
        except KeyError as err:
            raise ValueError(f"plan file {path} lacks the key {err}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"plan file {path}: {err}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """A plan from the object `to_dict` writes (validated)."""
        layers = []
        for l, layer in enumerate(data["layers"]):
            heads = sorted(layer, key=lambda e: e["kv_head"])
            if [e["kv_head"] for e in heads] != list(range(len(heads))):
                raise ValueError(f"layer {l}: kv_head ids must be 0..{len(heads) - 1} once each")
            layers.append([[Placement(int(p["gpu"]), float(p["batch_fraction"])) for p in e["placements"]] for e in heads])
        plan = cls(
            profile=HeadLoadProfile.from_dict(data["profile"]),
            gpus=int(data["gpus"]),
            batch=int(data["batch"]),
            objective=data["objective"],
            max_copies=int(data["max_copies"]),
            layers=layers,
            cost=CostModel(**data["cost_model"]),
            step_lower_bound_s=float(data["step_lower_bound_s"]),
            kind=str(data.get("kind", "fairkv")),
        )
        plan.validate()
        return plan


def _loads(profile: HeadLoadProfile, gpus: int, cost: CostModel, layers: list) -> GpuLoads:
    """GpuLoads of per-layer, per-head lists of (gpu, fraction) replicas."""
    kv = np.zeros((profile.num_layers, gpus))
    weights = np.zeros((profile.num_layers, gpus))
    slices = np.zeros((profile.num_layers, gpus))
    head_bytes = cost.head_weight_bytes(profile)
    for l, layer in enumerate(layers):
        for h, pieces in enumerate(layer):
            for g, x in pieces:
                kv[l, g] += profile.tokens[l, h] * x
                weights[l, g] += head_bytes
                slices[l, g] = max(slices[l, g], float(x < 1))
    return GpuLoads(kv, weights, slices)


def standard_tp_loads(profile: HeadLoadProfile, gpus: int, cost: CostModel | None = None) -> GpuLoads:
    """Loads of standard tensor parallelism (placement rule in the module docstring)."""
    cost = cost or CostModel()
    heads, group = profile.num_kv_heads, profile.group_size
    kv = np.zeros((profile.num_layers, gpus))
    weights = np.zeros((profile.num_layers, gpus))
    kv_weight = 2 * profile.head_dim * profile.hidden_size * cost.dtype_bytes
    if gpus <= heads:
        for g, part in enumerate(np.array_split(np.arange(heads), gpus)):
            kv[:, g] = profile.tokens[:, part].sum(axis=1)
            weights[:, g] = len(part) * cost.head_weight_bytes(profile)
    else:
        for h, part in enumerate(np.array_split(np.arange(gpus), heads)):
            kv[:, part] = profile.tokens[:, [h]]
            weights[:, part] = kv_weight + 2 * group / len(part) * profile.head_dim * profile.hidden_size * cost.dtype_bytes
    return GpuLoads(kv, weights)


def standard_plan(profile: HeadLoadProfile, gpus: int, batch: int = 32, cost: CostModel | None = None) -> Plan:
    """Standard tensor parallelism as a Plan: KV heads split contiguously (``numpy.array_split``). With more GPUs
    than KV heads each head is copied on a contiguous group of GPUs, each copy serving an equal share of the batch
    rows (vLLM instead splits the head's query heads over its GPUs, each reading the head's whole KV: see
    `standard_tp_loads`; the executor runs batch shares)."""
    cost = cost or CostModel()
    if not isinstance(gpus, (int, np.integer)) or gpus < 1:
        raise ValueError(f"the number of GPUs must be a positive integer, got {gpus!r}")
    heads = profile.num_kv_heads
    if gpus <= heads:
        owner = {int(h): g for g, part in enumerate(np.array_split(np.arange(heads), gpus)) for h in part}
        layer = [[Placement(owner[h], 1.0)] for h in range(heads)]
    else:
        layer = [[Placement(int(g), 1.0 / len(part)) for g in part] for part in np.array_split(np.arange(gpus), heads)]
    alpha, beta = cost.coefficients(profile, batch)
    bound = sum(layer_lower_bound(alpha * t, beta, gpus, gpus - 1) for t in profile.tokens)
    plan = Plan(profile, gpus, batch, "time", gpus - 1, [[list(h) for h in layer] for _ in range(profile.num_layers)],
                cost, bound + cost.constant_s * profile.num_layers, kind="standard")
    plan.validate()
    return plan


def _solve_all(profile: HeadLoadProfile, gpus: int, batch: int, copies: int, cost: CostModel, objective: str):
    """Per-layer placements and the sum of their proven time bounds (in the objective's units, without the fixed
    cost of row slices: still a bound). With a fixed cost per row slice (cost.copy_s), a layer keeps its copies
    only when they beat its best placement without copies once that cost is counted."""
    alpha, beta = cost.coefficients(profile, batch) if objective == "time" else (1.0, 0.0)
    placements, bound = [], 0.0
    for t in profile.tokens:
        best, layer_bound, _ = solve_layer(alpha * t, beta, gpus, copies)
        if copies and objective == "time" and cost.copy_s > 0 and any(len(p) > 1 for p in best):
            whole = solve_layer(alpha * t, beta, gpus, 0)[0]
            if layer_time(alpha * t, beta, gpus, whole) <= layer_time(alpha * t, beta, gpus, best, cost.copy_s):
                best = whole
        placements.append(best)
        bound += layer_bound
    return placements, bound



def _relabel(profile: HeadLoadProfile, gpus: int, batch: int, cost: CostModel, layers: list) -> list:
    """Permute each layer's GPUs so the bins holding most memory go to the GPUs holding least so far."""
    held = np.zeros(gpus)
    out = []
    for l, layer in enumerate(layers):
        mem = _loads(profile, gpus, cost, [[] for _ in range(l)] + [layer]).memory_bytes(profile, cost, batch)
        order_bins = sorted(range(gpus), key=lambda g: (-mem[g], g))
        order_gpus = sorted(range(gpus), key=lambda g: (held[g], g))
        label = {b: g for b, g in zip(order_bins, order_gpus)}
        held[order_gpus] += mem[order_bins]
        out.append([sorted((label[g], x) for g, x in pieces) for pieces in layer])
    return out


def make_plan(
    profile: HeadLoadProfile,
    gpus: int,
    batch: int = 32,
    max_copies: int | None = None,
    mem_gib: float | None = None,
    cost: CostModel | None = None,
    objective: str = "time",
) -> Plan:
    """The FairKV plan (``max_copies=0`` gives best effort); deterministic. See the module docstring."""
    cost = cost or CostModel()
    if not isinstance(gpus, (int, np.integer)) or gpus < 1:
        raise ValueError(f"the number of GPUs must be a positive integer, got {gpus!r}")
    if batch < 1:
        raise ValueError(f"batch must be a positive number of sequences, got {batch}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    copies = gpus - 1 if max_copies is None else max_copies
    if copies < 0:
        raise ValueError(f"max_copies must be >= 0 (extra replicas per layer), got {copies}")
    if mem_gib is not None and mem_gib <= 0:
        raise ValueError(f"--mem-gib must be positive, got {mem_gib}")
    for k in range(copies, -1, -1) if mem_gib is not None else [copies]:
        solved, bound = _solve_all(profile, gpus, batch, k, cost, objective)
        layers = _relabel(profile, gpus, batch, cost, solved)
        memory = _loads(profile, gpus, cost, layers).memory_bytes(profile, cost, batch)
        if mem_gib is None or memory.max() <= mem_gib * GIB:
            break
    else:
        even = _loads(profile, gpus, cost, layers).memory_bytes(profile, cost, batch).sum() / gpus
        raise ValueError(
            f"no plan fits --mem-gib {mem_gib}: even without copies a GPU needs {memory.max() / GIB:.3f} GiB for attention "
            f"weights and KV at batch {batch} (an even split would be {even / GIB:.3f} GiB); raise the cap, lower the "
            f"batch or use more GPUs"
        )
    step_bound = bound + cost.constant_s * profile.num_layers if objective == "time" else 0.0
    kind = "best_effort" if k == 0 else "fairkv"
    plan = Plan(profile, gpus, batch, objective, k, [[[Placement(g, x) for g, x in p] for p in l] for l in layers], cost,
                step_bound, kind)
    plan.validate(mem_gib)
    return plan
