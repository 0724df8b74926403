"""Per-layer lower bounds and the exact per-layer optimum (MILP) of the placement problem in `assign`.

Closed-form bound, for a plan that uses k extra replicas (k = 0..max_copies), on the slowest GPU's time:
- mean: all the work spread evenly, ``(sum(a) + b * (H + k)) / N``;
- piece: some replica of head h carries at least ``a[h] / k_h`` plus ``b``; the k replicas given one at a time
  to the head with the largest pieces minimise the largest piece;
- count: some GPU holds at least ``ceil((H + k) / N)`` replicas, ``b`` each.
The bound is the min over k of the max of the three. With ``b = 0`` it is ``max(mean, piece)``: the KV
balance bound (reached by McNaughton's wrap-around rule when max_copies >= N - 1).

Exact optimum: a MILP (HiGHS via scipy) with x[h, g] = batch fraction, y[h, g] = replica present,
``x <= y``, ``sum_g x = 1``, ``sum y <= H + max_copies``, every GPU's time <= T, minimise T; GPU symmetry is
cut by putting a replica of the heaviest head on GPU 0. A node limit (not a time limit) keeps it
deterministic; when it stops early, HiGHS's dual bound is still a valid lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from fairkv_hf.placement.assign import Layer


def layer_lower_bound(a: np.ndarray, b: float, gpus: int, max_copies: int) -> float:
    """The closed-form lower bound above on the slowest GPU's time of one layer (without the constant)."""
    a = np.asarray(a, dtype=np.float64)
    heads = len(a)
    copies = np.ones(heads, dtype=np.int64)
    best = math.inf
    for k in range(min(max_copies, heads * (gpus - 1)) + 1):
        if k:
            share = np.where(copies < gpus, a / copies, -1.0)
            copies[int(np.argmax(share))] += 1
        mean = (a.sum() + b * (heads + k)) / gpus
        piece = float((a / copies).max()) + b
        count = b * math.ceil((heads + k) / gpus)
        best = min(best, max(mean, piece, count))
    return float(best)


@dataclass(frozen=True)
class ExactResult:
    """The MILP's best placement (None if it found none), its time, and a proven lower bound."""

    layer: Layer | None
    time: float
    lower_bound: float
    optimal: bool


def layer_optimum(a: np.ndarray, b: float, gpus: int, max_copies: int, node_limit: int = 2000) -> ExactResult:
    """Solve one layer exactly by MILP (times without the constant)."""
    a = np.asarray(a, dtype=np.float64)
    heads = len(a)
    scale = max(float(a.sum()) / gpus + b, 1e-300)
    an, bn = a / scale, b / scale
    nx = heads * gpus
    n = 2 * nx + 1

    def x(h: int, g: int) -> int:
        return h * gpus + g

    def y(h: int, g: int) -> int:
        return nx + h * gpus + g

    rows, lo, hi = [], [], []
    for h in range(heads):
        for g in range(gpus):
            r = np.zeros(n)
            r[x(h, g)], r[y(h, g)] = 1.0, -1.0
            rows.append(r), lo.append(-np.inf), hi.append(0.0)
        r = np.zeros(n)
        r[[x(h, g) for g in range(gpus)]] = 1.0
        rows.append(r), lo.append(1.0), hi.append(1.0)
    for g in range(gpus):
        r = np.zeros(n)
        for h in range(heads):
            r[x(h, g)], r[y(h, g)] = an[h], bn
        r[-1] = -1.0
        rows.append(r), lo.append(-np.inf), hi.append(0.0)
    r = np.zeros(n)
    r[nx:2 * nx] = 1.0
    rows.append(r), lo.append(-np.inf), hi.append(heads + max_copies)
    lower = np.zeros(n)
    lower[y(int(np.argmax(a)), 0)] = 1.0
    upper = np.ones(n)
    upper[-1] = np.inf
    cost = np.zeros(n)
    cost[-1] = 1.0
    integrality = np.zeros(n)
    integrality[nx:2 * nx] = 1
    res = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=integrality,
        bounds=Bounds(lower, upper),
        options={"node_limit": node_limit, "presolve": True},
    )
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(bound) * scale if bound is not None and np.isfinite(bound) else 0.0
    if res.x is None:
        return ExactResult(None, math.inf, bound, False)
    layer: Layer = []
    for h in range(heads):
        pieces = [(g, float(res.x[x(h, g)])) for g in range(gpus) if res.x[x(h, g)] > 1e-9]
        total = sum(f for _, f in pieces)
        layer.append([(g, f / total) for g, f in pieces])
    return ExactResult(layer, float(res.x[-1]) * scale, min(bound, float(res.x[-1]) * scale), res.status == 0)
