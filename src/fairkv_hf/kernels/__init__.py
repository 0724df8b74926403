"""Decode attention over the paged per-head KV store, with the backend chosen per device.

CPU: the torch kernel of cpu.py (segments read in place). CUDA: the Triton split-K kernel when triton imports, else
torch's varlen_attn when it reads paged pools, else the reference. FAIRKV_DECODE_BACKEND=reference|cpu|triton|varlen
(or the `backend` argument) forces one, so benchmarks can compare them; the pure-torch reference is the test oracle.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from fairkv_hf.kernels.cpu import paged_decode_cpu
from fairkv_hf.kernels.reference import paged_decode_reference
from fairkv_hf.kernels.varlen import paged_decode_varlen, varlen_available

BACKENDS = ("reference", "cpu", "triton", "varlen")
ENV_VAR = "FAIRKV_DECODE_BACKEND"

__all__ = ["BACKENDS", "choose_backend", "decode_attention", "paged_decode_cpu", "paged_decode_reference",
           "paged_decode_varlen", "varlen_available"]


def choose_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend that decode_attention uses on `device`: the argument, else $FAIRKV_DECODE_BACKEND, else auto."""
    backend = backend or os.environ.get(ENV_VAR) or None
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown decode backend {backend!r} (from the argument or ${ENV_VAR}); "
                             f"choose one of {', '.join(BACKENDS)}")
        return backend
    if device.type != "cuda":
        return "cpu"
    return _cuda_default()


@functools.lru_cache(maxsize=None)
def _cuda_default() -> str:
    """Triton when importable, else torch varlen when it reads paged pools, else the reference (looked up once)."""
    if importlib.util.find_spec("triton") is not None:
        return "triton"
    return "varlen" if varlen_available() else "reference"


def decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
    backend: str | None = None,
) -> torch.Tensor:
    """Decode attention of q [S, G, D] over each segment's stored tokens (contract of paged_decode_reference)."""
    chosen = choose_backend(q.device, backend)
    if chosen == "triton":
        from fairkv_hf.kernels.triton_decode import paged_decode_triton

        return paged_decode_triton(q, k_pool, v_pool, block_table, seq_lens, scale, max_seq_len)
    if chosen == "varlen":
        return paged_decode_varlen(q, k_pool, v_pool, block_table, seq_lens, scale, max_seq_len)
    if chosen == "cpu":
        return paged_decode_cpu(q, k_pool, v_pool, block_table, seq_lens, scale, max_seq_len)
    return paged_decode_reference(q, k_pool, v_pool, block_table, seq_lens, scale, max_seq_len)
