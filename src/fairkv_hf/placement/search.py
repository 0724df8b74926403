"""One layer's placement: the exact DP when the layer is small enough, the best heuristic otherwise."""

from __future__ import annotations

import numpy as np

from fairkv_hf.placement.assign import Layer, grouped_heuristic, incremental_copies, layer_time, whole_heads
from fairkv_hf.placement.bounds import layer_lower_bound
from fairkv_hf.placement.exact import MAX_STATES, layer_exact, state_count


def solve_layer(a: np.ndarray, b: float, gpus: int, max_copies: int) -> tuple[Layer, float, bool]:
    """(placement, proven lower bound on its time, whether it is optimal) for KV costs ``a`` and replica cost ``b``.

    Times exclude the per-layer constant. Costs are rescaled to O(1) internally; ties go to fewer replicas.
    """
    a = np.asarray(a, dtype=np.float64)
    scale = max(float(a.sum()) / gpus + b, 1e-300)
    an, bn = a / scale, b / scale
    whole = whole_heads(an, bn, gpus)
    candidates = [whole]
    if state_count(an) <= MAX_STATES:
        exact, bound = layer_exact(an, bn, gpus, max_copies)
        candidates.append(exact)
    else:
        bound = layer_lower_bound(an, bn, gpus, max_copies)
        if max_copies > 0:
            candidates.append(incremental_copies(an, bn, gpus, whole, max_copies))
            grouped = grouped_heuristic(an, bn, gpus, max_copies, bound, layer_time(an, bn, gpus, whole))
            if grouped is not None:
                candidates.append(grouped)
    scored = [(round(layer_time(an, bn, gpus, c), 12), sum(len(p) for p in c), i) for i, c in enumerate(candidates)]
    best = candidates[min(scored)[2]]
    time = layer_time(an, bn, gpus, best)
    return best, bound * scale, time <= bound * (1 + 1e-9)
