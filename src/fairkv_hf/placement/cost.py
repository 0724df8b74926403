"""Cost model of one decode step: per layer, each GPU reads its KV and its attention weight slices.

The time of layer ``l`` on GPU ``g`` is ``kv_bytes / kv_bandwidth + weight_bytes / weight_bandwidth +
constant``; the layer ends when its slowest GPU does (one all-reduce follows), so a step takes the sum over
layers of the max over GPUs. Only the attention block is modelled: it is what a placement changes; the MLP,
sharded evenly by tensor parallelism, adds the same time on every GPU.

Default coefficients, for an H200 in bf16 (to be fitted from GPU measurements):
- bandwidths 4.14e12 B/s: the H200 device-to-device copy bandwidth we measured (design.md section 3; the
  data sheet says 4.8 TB/s). Decode attention and GEMV kernels reach at most this.
- constant 20e-6 s per layer: an estimate, not a measurement (about five kernel launches of ~2 us for the
  attention block plus ~10 us for a small NVLink all-reduce). It is the same on every GPU, so it changes
  predicted speedups, never which plan is best.
- copy_s 0: the fixed time a GPU spends in a layer where it serves only some batch rows of a replicated head
  (selecting those rows' segments, scattering their outputs: about five small kernels). It makes a copy worth
  its while only when it saves more than that.

`FITTED` holds coefficients measured by bench/tp_throughput.py on a GPU kind (`CostModel.for_gpu`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fairkv_hf.placement.profile import HeadLoadProfile


@dataclass(frozen=True)
class CostModel:
    """Coefficients of the per-layer, per-GPU decode time (bytes per second, seconds, bytes per element)."""

    kv_bandwidth: float = 4.14e12
    weight_bandwidth: float = 4.14e12
    constant_s: float = 20e-6
    dtype_bytes: int = 2
    copy_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kv_bandwidth <= 0 or self.weight_bandwidth <= 0:
            raise ValueError(f"bandwidths must be positive bytes/s, got {self.kv_bandwidth} and {self.weight_bandwidth}")
        if self.constant_s < 0 or self.copy_s < 0 or self.dtype_bytes < 1:
            raise ValueError(f"constant_s and copy_s must be >= 0 and dtype_bytes >= 1, got {self.constant_s}, "
                             f"{self.copy_s} and {self.dtype_bytes}")

    @classmethod
    def for_gpu(cls, name: str) -> CostModel:
        """The coefficients fitted on a GPU kind (a key of FITTED, e.g. "h100")."""
        if name.lower() not in FITTED:
            raise ValueError(f"no fitted cost model for GPU {name!r}; known: {sorted(FITTED)} (or pass the coefficients)")
        return cls(**FITTED[name.lower()])

    def to_dict(self) -> dict[str, Any]:
        """The coefficients as a JSON-ready dict."""
        return asdict(self)

    def kv_bytes_per_token(self, profile: HeadLoadProfile, batch: int) -> float:
        """Bytes of K and V read for one kept token of one KV head across the whole batch."""
        return float(batch * 2 * profile.head_dim * self.dtype_bytes)

    def head_weight_bytes(self, profile: HeadLoadProfile) -> float:
        """Bytes of one KV head's weight slices in one layer: q and o for its group's query heads, plus k and v."""
        group = profile.group_size
        return float((2 * group + 2) * profile.head_dim * profile.hidden_size * self.dtype_bytes)

    def coefficients(self, profile: HeadLoadProfile, batch: int) -> tuple[float, float]:
        """(seconds per kept token of a head over the batch, seconds per head replica held) on one GPU."""
        alpha = self.kv_bytes_per_token(profile, batch) / self.kv_bandwidth
        beta = self.head_weight_bytes(profile) / self.weight_bandwidth
        return alpha, beta


@dataclass(frozen=True)
class GpuLoads:
    """What each GPU reads per layer: ``kv_tokens[l, g]`` kept tokens (per sequence, summed over its heads and
    weighted by the share of the batch it serves) and ``weight_bytes[l, g]`` of attention weight slices; and
    ``row_slices[l, g]``, 1 where it serves only some rows of a replicated head. A GPU stores exactly what it reads,
    so these also give its memory."""

    kv_tokens: np.ndarray
    weight_bytes: np.ndarray
    row_slices: np.ndarray | None = None

    def layer_times(self, profile: HeadLoadProfile, cost: CostModel, batch: int) -> np.ndarray:
        """Predicted seconds per layer and GPU, shape [num_layers, gpus]."""
        kv = self.kv_tokens * cost.kv_bytes_per_token(profile, batch) / cost.kv_bandwidth
        slices = 0.0 if self.row_slices is None else cost.copy_s * self.row_slices
        return kv + self.weight_bytes / cost.weight_bandwidth + cost.constant_s + slices

    def step_time(self, profile: HeadLoadProfile, cost: CostModel, batch: int) -> float:
        """Predicted seconds of the attention blocks of one decode step (sum over layers of the slowest GPU)."""
        return float(self.layer_times(profile, cost, batch).max(axis=1).sum())

    def balance(self, profile: HeadLoadProfile) -> float:
        """sum_l max_g kv_tokens / sum_l (all of layer l's tokens / gpus): 1.0 when KV reads are perfectly even."""
        gpus = self.kv_tokens.shape[1]
        return float(self.kv_tokens.max(axis=1).sum() / (profile.tokens.sum(axis=1) / gpus).sum())

    def memory_bytes(self, profile: HeadLoadProfile, cost: CostModel, batch: int) -> np.ndarray:
        """Bytes each GPU holds over all layers: its KV cache at ``batch`` plus its attention weight slices."""
        kv = self.kv_tokens.sum(axis=0) * cost.kv_bytes_per_token(profile, batch)
        return kv + self.weight_bytes.sum(axis=0)


FITTED: dict[str, dict[str, float]] = {
    # 2 x H100 80GB HBM3 (NVLink), bf16, Llama-3.1-8B shape at 32K, CUDA-graph decode with fused ops
    # (bench/results/h100x2/tp_throughput_llama8b.json): attention kernels at 3.00 TB/s of K/V plus 13.6 us per layer,
    # weights at the copy bandwidth measured in the same run, 9.3 us per layer that serves a row slice.
    "h100": {"kv_bandwidth": 3.00e12, "weight_bandwidth": 2.98e12, "constant_s": 13.6e-6, "copy_s": 9.3e-6},
}
