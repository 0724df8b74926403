"""Fused elementwise pieces of a decode step: RMSNorm, the rotary embedding and the MLP's SiLU gate.

A CUDA-graph decode step of an 8B model replays about 1,700 kernels (bench/results/h100x2): most are elementwise ops
of a few microseconds each, the stock RMSNorm alone is seven per call and the rotary embedding ten per layer. Graphs
remove their launch cost, not their GPU time: together 3-4 ms per step against 2.5 ms of weight reads on 2 H100s.
`fuse_decode_ops(model)` runs them as torch.compile'd functions (Inductor, dynamic shapes, so one compilation serves
the prefill and every decode step), with the formulas of transformers' eager modules in the same precision. The
rotary embedding is fused in the head-parallel attention (parallel/attention.py), whose forward is ours; the stock
attention of a single-GPU model calls its module's function, which is left alone (patching it would change every
model of that family in the process).
"""

from __future__ import annotations

import types
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

_compiled: dict[str, Callable] = {}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama/Mistral/Qwen2/Qwen3 RMSNorm: normalised in float32, scaled in the input dtype."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' apply_rotary_pos_emb for q, k [B, heads, L, D] and cos, sin [B, L, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q.shape[-1] // 2

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation: silu(gate) * up."""
    return F.silu(gate) * up


def compiled(fn: Callable) -> Callable:
    """`fn` compiled once per process with dynamic shapes (every rank and model shares it)."""
    if fn.__name__ not in _compiled:
        _compiled[fn.__name__] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[fn.__name__]


def _norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return compiled(rms_norm)(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(compiled(silu_mul)(self.gate_proj(x), self.up_proj(x)))


def is_rms_norm(module: nn.Module) -> bool:
    """A stock RMSNorm of the supported families (weight * normalised x, epsilon in `variance_epsilon`)."""
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and hasattr(module, "weight")


def is_silu_mlp(module: nn.Module) -> bool:
    """A stock gated MLP with SiLU (gate_proj, up_proj, down_proj)."""
    act = getattr(getattr(module, "config", None), "hidden_act", None)
    return all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")) and act == "silu"


def fuse_decode_ops(model: nn.Module) -> int:
    """Run the model's RMSNorms, SiLU-gated MLPs and (head-parallel) rotary embeddings as fused compiled kernels
    (CUDA only: raises on a CPU model); returns how many modules now do. Idempotent."""
    if next(model.parameters()).device.type != "cuda":
        raise ValueError("fuse_decode_ops compiles Triton kernels for CUDA: move the model to a GPU first (the CPU "
                         "runs the eager modules)")
    fused = 0
    for module in model.modules():
        if is_rms_norm(module):
            module.forward = types.MethodType(_norm_forward, module)
        elif is_silu_mlp(module):
            module.forward = types.MethodType(_mlp_forward, module)
        elif hasattr(module, "fuse_rotary"):
            module.fuse_rotary()
        else:
            continue
        fused += 1
    return fused
