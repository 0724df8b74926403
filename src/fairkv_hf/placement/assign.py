"""Per-layer placement search: best-effort assignment and Fair-Copying under the cost model.

One layer is an instance of: ``H`` heads with KV costs ``a[h]`` (seconds for the whole batch), ``N`` GPUs, at
most ``max_copies`` extra replicas. A replica of head h on GPU g serving a fraction x of the batch costs
``a[h] * x + b`` there (``b`` = reading the head's weight slices); minimise the slowest GPU's time.
With ``b = 0`` this is pure KV balance. This module holds the heuristics (all deterministic) used where
the exact DP of `exact` is too large, and the pieces both share:
- whole heads: longest-processing-time first, then moves and swaps off the slowest GPU;
- incremental copying: replicate a head of the slowest GPU onto the fastest while it helps;
- grouped fill: some GPUs take whole heads, the others share the rest by McNaughton's wrap-around rule
  with a per-piece cost, at the smallest target time that fits (bisection);
- an LP that re-optimises the batch fractions on a given set of replicas.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog

Layer = list[list[tuple[int, float]]]
"""Per head, its replicas as (gpu, batch_fraction)."""

_EPS = 1e-12


def layer_time(a: np.ndarray, b: float, gpus: int, layer: Layer, copy_s: float = 0.0) -> float:
    """The slowest GPU's time of ``layer`` (without the constant), with ``copy_s`` added on every GPU that serves
    only some batch rows of a head."""
    times = np.zeros(gpus)
    sliced = np.zeros(gpus)
    for h, pieces in enumerate(layer):
        for g, x in pieces:
            times[g] += a[h] * x + b
            sliced[g] = max(sliced[g], float(x < 1))
    return float((times + copy_s * sliced).max())


def refine_fractions(a: np.ndarray, b: float, gpus: int, layer: Layer) -> Layer:
    """Re-optimise the batch fractions on the given replicas by LP (replicas left with no work are dropped)."""
    if all(len(p) == 1 for p in layer):
        return [[(p[0][0], 1.0)] for p in layer]
    index = [(h, g) for h, pieces in enumerate(layer) for g, _ in pieces]
    n = len(index)
    c = np.zeros(n + 1)
    c[-1] = 1.0
    a_ub = np.zeros((gpus, n + 1))
    b_ub = np.zeros(gpus)
    a_eq = np.zeros((len(layer), n + 1))
    for i, (h, g) in enumerate(index):
        a_ub[g, i] = a[h]
        b_ub[g] -= b
        a_eq[h, i] = 1.0
    a_ub[:, -1] = -1.0
    bounds = [(0.0, 1.0)] * n + [(0.0, None)]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(len(layer)), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"fraction LP failed: {res.message}")
    out: Layer = [[] for _ in layer]
    for (h, g), x in zip(index, res.x[:-1]):
        if x > 1e-9:
            out[h].append((g, float(x)))
    return [[(g, x / sum(y for _, y in pieces)) for g, x in sorted(pieces)] for pieces in out]


def _lpt(items: list[tuple[int, float]], gpus: int) -> list[list[int]]:
    """Place items (head, cost) heaviest first on the least loaded GPU not holding that head; per GPU item ids."""
    order = sorted(range(len(items)), key=lambda i: -items[i][1])
    loads = np.zeros(gpus)
    holds: list[set[int]] = [set() for _ in range(gpus)]
    bins: list[list[int]] = [[] for _ in range(gpus)]
    for i in order:
        head, cost = items[i]
        g = min((g for g in range(gpus) if head not in holds[g]), key=lambda g: (loads[g], g))
        loads[g] += cost
        holds[g].add(head)
        bins[g].append(i)
    return bins


def _improve_once(items: list[tuple[int, float]], bins: list[list[int]], loads: list[float]) -> bool:
    """Apply the first move or swap that lowers the slowest GPU and leaves the other one below its old level."""
    top = max(range(len(bins)), key=lambda g: (loads[g], -g))
    limit = loads[top] * (1 - 1e-12) - _EPS
    for i in bins[top]:
        head, cost = items[i]
        for g in range(len(bins)):
            if g == top or any(items[j][0] == head for j in bins[g]):
                continue
            swaps = [(0.0, None)] + [(items[j][1], j) for j in bins[g]]
            for other_cost, j in swaps:
                delta = cost - other_cost
                if delta <= 0 or loads[g] + delta >= limit:
                    continue
                if j is not None and any(items[k][0] == items[j][0] for k in bins[top] if k != i):
                    continue
                bins[top].remove(i)
                bins[g].append(i)
                if j is not None:
                    bins[g].remove(j)
                    bins[top].append(j)
                loads[top] -= delta
                loads[g] += delta
                return True
    return False


def _local_search(items: list[tuple[int, float]], bins: list[list[int]]) -> list[list[int]]:
    """Moves and swaps off the slowest GPU until none helps (each one lowers the sum of squared loads)."""
    loads = [sum(items[i][1] for i in bin_) for bin_ in bins]
    while _improve_once(items, bins, loads):
        pass
    return bins


def incremental_copies(a: np.ndarray, b: float, gpus: int, layer: Layer, max_copies: int) -> Layer:
    """Replicate a head of the slowest GPU onto the fastest GPU lacking it while the layer time drops."""
    best, best_time = layer, layer_time(a, b, gpus, layer)
    used = sum(len(p) - 1 for p in layer)
    while used < max_copies:
        times = np.zeros(gpus)
        for h, pieces in enumerate(best):
            for g, x in pieces:
                times[g] += a[h] * x + b
        top = int(np.argmax(times))
        trials = []
        for h, pieces in enumerate(best):
            held = {g for g, _ in pieces}
            if top not in held or len(held) == gpus:
                continue
            target = min((g for g in range(gpus) if g not in held), key=lambda g: (times[g], g))
            trial = refine_fractions(a, b, gpus, [p + [(target, 0.0)] if i == h else p for i, p in enumerate(best)])
            trials.append((layer_time(a, b, gpus, trial), h, trial))
        if not trials:
            break
        trial_time, _, trial = min(trials, key=lambda x: (x[0], x[1]))
        if trial_time >= best_time * (1 - 1e-9):
            break
        best, best_time = trial, trial_time
        used = sum(len(p) - 1 for p in best)
    return best


def wrap_fill(a: np.ndarray, b: float, gpus: int, max_copies: int, target: float) -> Layer | None:
    """Fill GPUs in turn up to ``target``, heaviest head first, splitting the current head at a boundary when
    more than ``b`` of room is left there (at most ``max_copies`` splits); None if it does not fit."""
    layer: Layer = [[] for _ in a]
    g, room, splits = 0, target, 0
    for h in sorted(range(len(a)), key=lambda h: -a[h]):
        left = 1.0
        while left > 1e-12:
            if g >= gpus:
                return None
            need = a[h] * left + b
            if need <= room + 1e-12 * target:
                layer[h].append((g, left))
                room -= need
                left = 0.0
            elif room > b and splits < max_copies:
                part = (room - b) / a[h]
                layer[h].append((g, part))
                left -= part
                splits += 1
                g, room = g + 1, target
            else:
                g, room = g + 1, target
    return layer


def _grouped_fill(a: np.ndarray, b: float, gpus: int, max_copies: int, target: float) -> Layer | None:
    """Whole heads first-fit decreasing on ``s`` GPUs, the rest wrapped around the other GPUs, for the first
    ``s`` (from all GPUs down) that fits within ``target``; None if no ``s`` does."""
    order = sorted(range(len(a)), key=lambda h: -a[h])
    for singles in range(gpus, max(gpus - max_copies - 1, 0) - 1, -1):
        loads = np.zeros(singles)
        layer: Layer = [[] for _ in a]
        rest = []
        for h in order:
            fits = [g for g in range(singles) if loads[g] + a[h] + b <= target * (1 + 1e-12)]
            if fits:
                loads[fits[0]] += a[h] + b
                layer[h] = [(fits[0], 1.0)]
            else:
                rest.append(h)
        if not rest:
            return layer
        merged = gpus - singles
        if merged == 0:
            continue
        filled = wrap_fill(a[rest], b, merged, merged - 1, target)
        if filled is not None:
            for h, pieces in zip(rest, filled):
                layer[h] = [(singles + g, x) for g, x in pieces]
            return layer
    return None


def grouped_heuristic(a: np.ndarray, b: float, gpus: int, max_copies: int, lower: float, upper: float) -> Layer | None:
    """The tightest `_grouped_fill` by bisection on the target time in [lower, upper], fractions refined."""
    if _grouped_fill(a, b, gpus, max_copies, upper) is None:
        return None
    lo, hi = lower, upper
    for _ in range(40):
        mid = (lo + hi) / 2
        if _grouped_fill(a, b, gpus, max_copies, mid) is None:
            lo = mid
        else:
            hi = mid
    return refine_fractions(a, b, gpus, _grouped_fill(a, b, gpus, max_copies, hi))


def whole_heads(a: np.ndarray, b: float, gpus: int) -> Layer:
    """Best-effort assignment without copies: longest-processing-time first, then local search."""
    items = [(h, a[h] + b) for h in range(len(a))]
    layer: Layer = [[] for _ in a]
    for g, bin_ in enumerate(_local_search(items, _lpt(items, gpus))):
        for h in bin_:
            layer[h] = [(g, 1.0)]
    return layer
