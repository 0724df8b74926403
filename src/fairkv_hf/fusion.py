"""A decode step in fewer, fused kernels: one GEMM for q/k/v, one for gate/up, compiled elementwise glue.

A CUDA-graph decode step of an 8B model built from the stock modules replays about 1,500 kernels: the weights take
5 ms to read, the small kernels between them another 2 ms, and each kernel costs graph-launch time and a gap.
`fuse_decode_ops(model)` restructures every decoder layer into about 16 kernels: the input RMSNorm; q, k and v from
one GEMM over their concatenated weights; the per-head norms (Qwen3), the rotary embedding and the q/k/v layout
compiled together; the cache append and the attention; o_proj; the residual add fused with the second RMSNorm; gate
and up from one GEMM; the SiLU gate; down_proj; the residual add (540 kernels per step on one H100, 1.26-1.36x the
time to read the weights and K/V once: bench/results/h100). The formulas are transformers' eager modules' in the same
precision (tests/test_fusion.py checks them). The concatenated weights are the only copies: each projection's weight
becomes a view of them, so the stock forwards still work (`unfuse_decode_ops`) and no memory is added. Compiled with
dynamic shapes, so one compilation serves the prefill and every later decode step (tests/test_fusion.py counts the
graphs); `compile=False` runs the same restructured step uncompiled.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .cache import SUPPORTED_MODEL_TYPES, _text_config

_compiled: dict[str, Callable] = {}
_FUSED = "fairkv_fused"  # attribute of a patched module: whether its pieces run compiled


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama/Mistral/Qwen2/Qwen3 RMSNorm: normalised in float32, scaled in the input dtype."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the RMSNorm after it, as the decoder layer computes them: (x + y, rms_norm(x + y))."""
    total = x + y
    return total, rms_norm(total, weight, eps)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' apply_rotary_pos_emb for q, k [B, heads, L, D] and cos, sin [B, L, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = q.shape[-1] // 2

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def qkv_rotary(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None, eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projections [B, L, heads * D] to q, k (per-head RMSNorm first where the model has one, then RoPE) and v,
    each [B, heads, L, D]: what the stock attention does between its projections and the cache."""
    batch, length, dim = q.shape[0], q.shape[1], cos.shape[-1]
    q, k, v = (t.view(batch, length, t.shape[-1] // dim, dim) for t in (q, k, v))  # a rank may hold no head
    if q_norm is not None:
        q, k = rms_norm(q, q_norm, eps), rms_norm(k, k_norm, eps)
    q, k = rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    return q, k, v.transpose(1, 2).contiguous()


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's activation: silu(gate) * up."""
    return F.silu(gate) * up


def silu_mul_halves(gate_up: torch.Tensor) -> torch.Tensor:
    """silu_mul of the two halves of one [.., 2 * intermediate] projection (gate rows first)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return silu_mul(gate, up)


def compiled(fn: Callable) -> Callable:
    """`fn` compiled once per process with dynamic shapes (every rank and model shares it)."""
    if fn.__name__ not in _compiled:
        _compiled[fn.__name__] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[fn.__name__]


def _run(module: nn.Module, fn: Callable) -> Callable:
    return compiled(fn) if module.__dict__.get(_FUSED) else fn


def concat_linears(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) holding the layers' output rows in order; each layer's weight (bias) becomes a view of
    it, so the layers keep working and nothing is stored twice. Inference only (the views do not train)."""
    biases = [layer.bias for layer in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError("concat_linears needs all or none of the layers to have a bias")
    with torch.no_grad():
        weight = torch.cat([layer.weight for layer in linears])
        bias = None if biases[0] is None else torch.cat(biases)
    start = 0
    for layer in linears:
        end = start + layer.weight.shape[0]
        layer.weight = nn.Parameter(weight[start:end], requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    return weight, bias


def qkv_states(attn: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]):
    """q, k (roped) and v [B, heads, L, D] of an attention module (stock or head-parallel): three projections and
    the stock formulas, or, once fused, one GEMM and one compiled kernel."""
    cos, sin = position_embeddings
    fused = attn.__dict__.get("fused_qkv")
    if fused is None:
        q, k, v = attn.q_proj(hidden_states), attn.k_proj(hidden_states), attn.v_proj(hidden_states)
    else:
        q, k, v = F.linear(hidden_states, *fused).split(attn.qkv_widths, dim=-1)
    norms = {}
    if getattr(attn, "q_norm", None) is not None:
        norms = {"q_norm": attn.q_norm.weight, "k_norm": attn.k_norm.weight, "eps": attn.q_norm.variance_epsilon}
    return _run(attn, qkv_rotary)(q, k, v, cos, sin, **norms)


def _attention_forward(self: nn.Module, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                       **kwargs: Any):
    """A stock attention's forward with the fused projections; caches other than FairKVCache take the stock one."""
    from .attention import fairkv_attention_forward
    from .cache import FairKVCache

    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if not isinstance(cache, FairKVCache):
        return type(self).forward(self, hidden_states, position_embeddings, attention_mask, **kwargs)
    batch, length, _ = hidden_states.shape
    q, k, v = qkv_states(self, hidden_states, position_embeddings)
    k, v = cache.update(k, v, self.layer_idx)
    out, _ = fairkv_attention_forward(self, q, k, v, attention_mask, scaling=self.scaling,
                                      use_cache=kwargs.get("use_cache"))
    return self.o_proj(out.reshape(batch, length, -1)), None


def _norm_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return _run(self, rms_norm)(hidden_states, self.weight, self.variance_epsilon)


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(_run(self, silu_mul_halves)(F.linear(x, *self.fused_gate_up)))


def _decoder_forward(self: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    h, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), **kwargs)
    norm = self.post_attention_layernorm
    hidden_states, h = _run(self, add_rms_norm)(hidden_states, h, norm.weight, norm.variance_epsilon)
    return hidden_states + self.mlp(h)


def is_rms_norm(module: nn.Module) -> bool:
    """A stock RMSNorm of the supported families (weight * normalised x, epsilon in `variance_epsilon`)."""
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") and hasattr(module, "weight")


def _plain_linears(module: nn.Module, *names: str) -> bool:
    """The named children exist and are plain nn.Linear (a quantized subclass packs its weight: not concatenable)."""
    return all(type(getattr(module, name, None)) is nn.Linear for name in names)


def is_silu_mlp(module: nn.Module) -> bool:
    """A stock gated MLP with SiLU (gate_proj, up_proj, down_proj) whose gate and up are plain Linear layers."""
    act = getattr(getattr(module, "config", None), "hidden_act", None)
    return hasattr(module, "down_proj") and _plain_linears(module, "gate_proj", "up_proj") and act == "silu"


def is_attention(module: nn.Module) -> bool:
    """A stock attention of the supported families, or the head-parallel one (plain q/k/v Linear layers, an o_proj,
    no sinks)."""
    return (_plain_linears(module, "q_proj", "k_proj", "v_proj") and hasattr(module, "o_proj")
            and hasattr(module, "layer_idx") and hasattr(module, "scaling") and not hasattr(module, "sinks"))


def is_pre_norm_layer(module: nn.Module) -> bool:
    """A decoder layer of exactly self_attn, mlp and the two RMSNorms around them (Llama / Mistral / Qwen2 / Qwen3)."""
    children = dict(module.named_children())
    return (type(module).__name__.endswith("DecoderLayer")
            and set(children) == {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
            and is_rms_norm(children["post_attention_layernorm"]) and is_rms_norm(children["input_layernorm"]))


def fuse_decode_ops(model: nn.Module, compile: bool = True) -> int:
    """Restructure the model's decoder layers into fused kernels (module docstring); returns how many modules were
    patched. `compile=True` compiles the glue with Inductor (Triton kernels on CUDA, C++ on CPU, which needs a
    compiler); False runs the same structure eagerly. Idempotent; decode with a FairKVCache (other caches take the
    stock attention)."""
    model_type = _text_config(model).model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"fuse_decode_ops restructures the decoder layers of {SUPPORTED_MODEL_TYPES}, got "
                         f"{model_type!r}: run this model's stock modules (skip fuse_decode_ops)")
    fused = 0
    for module in model.modules():
        if is_rms_norm(module):
            forward = _norm_forward
        elif is_silu_mlp(module):
            if "fused_gate_up" not in module.__dict__:
                module.fused_gate_up = concat_linears(module.gate_proj, module.up_proj)
            forward = _mlp_forward
        elif is_attention(module):
            if "fused_qkv" not in module.__dict__:
                module.qkv_widths = [module.q_proj.out_features, module.k_proj.out_features, module.v_proj.out_features]
                module.fused_qkv = concat_linears(module.q_proj, module.k_proj, module.v_proj)
            forward = None if getattr(module, "reads_fused_qkv", False) else _attention_forward
        elif is_pre_norm_layer(module):
            forward = _decoder_forward
        else:
            continue
        module.__dict__[_FUSED] = compile
        if forward is not None:
            module.forward = types.MethodType(forward, module)
        fused += 1
    return fused


def unfuse_decode_ops(model: nn.Module) -> None:
    """Back to the stock forwards (the weights stay views of the concatenated ones: same values, same memory)."""
    for module in model.modules():
        if module.__dict__.pop(_FUSED, None) is not None:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("fused_qkv", None)
            module.__dict__.pop("fused_gate_up", None)
