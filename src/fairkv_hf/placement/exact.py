"""Exact per-layer optimum of the placement problem in `assign`, by dynamic programming over head groups.

Why it is exact: in any plan, take the graph whose edges are the replicas (head - GPU). A connected part
with head set S on n GPUs has at least |S| + n - 1 replicas, so within time T it needs
``sum_S (a + b) + (n - 1) * b <= n * T``, i.e. at least ``n(S) = max(1, ceil((sum_S (a + b) - b) / (T - b)))``
GPUs, and it uses at least n - 1 extra replicas. Conversely a group S on n(S) GPUs is always realisable:
fill its GPUs in turn up to T, splitting the current head at each boundary where more than b of room is
left (each boundary costs at most b). So T is feasible iff the heads can be partitioned into groups with
``sum n(S) <= N`` and ``sum (n(S) - 1) <= max_copies``: a DP over sub-multisets of heads (heads with equal
cost are interchangeable, which keeps DuoAttention's two-valued layers small). The optimal T is one of the
values ``(sum_S (a + b) + (n - 1) * b) / n``; a binary search over them finds it.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from fairkv_hf.placement.assign import Layer, refine_fractions, wrap_fill

MAX_STATES = 4096
"""Largest number of sub-multisets the DP enumerates; beyond it the planner uses heuristics only."""


def state_count(a: np.ndarray) -> int:
    """How many sub-multisets of the heads (by equal cost) the DP would enumerate."""
    _, counts = np.unique(a, return_counts=True)
    return int(np.prod(counts + 1))


@lru_cache(maxsize=64)
def _structure(counts: tuple[int, ...]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[tuple]]:
    """All states (count vectors); per state its groups (group state ids, remaining state ids), each group
    holding one head of the state's first non-empty class; and the same pairs flattened per number of heads
    (states with equally many heads only depend on smaller ones, so one level is one vectorised step)."""
    states = np.array(list(itertools.product(*(range(c + 1) for c in counts))), dtype=np.int64).reshape(-1, len(counts))
    strides = np.array([int(np.prod([c + 1 for c in counts[i + 1:]])) for i in range(len(counts))], dtype=np.int64)
    moves = []
    for k in states:
        first = int(np.flatnonzero(k)[0]) if k.any() else -1
        subs = [y for y in itertools.product(*(range(c + 1) for c in k)) if first >= 0 and y[first] > 0]
        sub_ids = np.array([int(np.dot(y, strides)) for y in subs], dtype=np.int64)
        moves.append((sub_ids, int(np.dot(k, strides)) - sub_ids))
    sizes = states.sum(axis=1)
    levels = []
    for size in range(1, int(sizes.max()) + 1 if len(states) > 1 else 1):
        ids = np.flatnonzero(sizes == size)
        lengths = np.array([len(moves[s][0]) for s in ids])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sub = np.concatenate([moves[s][0] for s in ids])
        rest = np.concatenate([moves[s][1] for s in ids])
        levels.append((ids, starts, sub, rest))
    return states, moves, levels


def _gpus_needed(weight: np.ndarray, b: float, target: float, gpus: int) -> np.ndarray:
    """n(S) for every state's total ``weight`` (inf where more than ``gpus`` would be needed)."""
    if target <= b:
        return np.full(weight.shape, np.inf)
    n = np.maximum(1.0, np.ceil((weight - b) / (target - b) - 1e-9))
    return np.where(n <= gpus, n, np.inf)


def _group_values(n: np.ndarray, best: np.ndarray, sub: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """GPUs used, per (group, copies allowed), when ``sub`` forms one group and ``rest`` is held optimally."""
    copies = best.shape[1] - 1
    ns = n[sub]
    need = np.arange(copies + 1)[None, :] - (ns[:, None] - 1)
    ok = (need >= 0) & np.isfinite(ns)[:, None]
    picked = best[rest[:, None], np.clip(need, 0, copies).astype(np.int64)]
    return np.where(ok, ns[:, None] + picked, np.inf)


def _dp(n: np.ndarray, levels: list, states: int, copies: int) -> np.ndarray:
    """best[state, c] = fewest GPUs holding ``state`` with at most c extra replicas."""
    best = np.full((states, copies + 1), np.inf)
    best[0] = 0.0
    for ids, starts, sub, rest in levels:
        best[ids] = np.minimum.reduceat(_group_values(n, best, sub, rest), starts, axis=0)
    return best


def layer_exact(a: np.ndarray, b: float, gpus: int, max_copies: int) -> tuple[Layer, float]:
    """The optimal placement of one layer and its time (without the constant); needs state_count(a) <= MAX_STATES."""
    a = np.asarray(a, dtype=np.float64)
    if state_count(a) > MAX_STATES:
        raise ValueError(f"{state_count(a)} head groups exceed MAX_STATES={MAX_STATES}; use the heuristic")
    copies = min(max_copies, gpus - 1)
    values, inverse, counts = np.unique(-a, return_inverse=True, return_counts=True)
    states, moves, levels = _structure(tuple(int(c) for c in counts))
    weight = states @ (-values + b)
    heavy = weight[1:, None] + np.arange(gpus)[None, :] * b
    candidates = np.unique(heavy / np.arange(1, gpus + 1)[None, :])
    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _dp(_gpus_needed(weight, b, candidates[mid], gpus), levels, len(states), copies)[-1].min() <= gpus:
            hi = mid
        else:
            lo = mid + 1
    target = float(candidates[lo])
    n = _gpus_needed(weight, b, target, gpus)
    best = _dp(n, levels, len(states), copies)
    heads_of = [list(np.flatnonzero(inverse == i)) for i in range(len(counts))]
    layer: Layer = [[] for _ in a]
    state, c, first_gpu = len(moves) - 1, int(np.argmin(best[-1])), 0
    while state:
        subs, rests = moves[state]
        pick = int(np.argmin(_group_values(n, best, subs, rests)[:, c]))
        sub = int(subs[pick])
        group = [heads_of[i].pop() for i, k in enumerate(states[sub]) for _ in range(int(k))]
        size = int(n[sub])
        filled = wrap_fill(a[group], b, size, size - 1, target * (1 + 1e-9))
        if filled is None:
            raise RuntimeError("exact DP group did not fill its GPUs; this is a bug in the realisation rule")
        for h, pieces in zip(group, filled):
            layer[h] = [(first_gpu + g, x) for g, x in pieces]
        first_gpu += size
        state, c = int(rests[pick]), c - (size - 1)
    return refine_fractions(a, b, gpus, layer), target

