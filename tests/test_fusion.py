"""The fused decode ops compute what transformers' eager modules compute (checked uncompiled on CPU; the compiled
kernels are exercised on GPUs by the benchmarks, which compare tokens)."""

from __future__ import annotations

import sys

import pytest
import torch

from fairkv_hf.fusion import fuse_decode_ops, is_rms_norm, is_silu_mlp, rms_norm, rotary, silu_mul
from tests.conftest import tiny_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_formulas_equal_the_stock_modules(family: str, dtype: torch.dtype) -> None:
    model = tiny_model(family).to(dtype)
    layer = model.model.layers[0]
    x = torch.randn(3, 5, model.config.hidden_size, dtype=dtype)
    norm = layer.input_layernorm
    assert torch.equal(rms_norm(x, norm.weight, norm.variance_epsilon), norm(x))
    mlp = layer.mlp
    assert torch.equal(mlp.down_proj(silu_mul(mlp.gate_proj(x), mlp.up_proj(x))), mlp(x))
    q = torch.randn(3, 4, 5, 16, dtype=dtype)
    k = torch.randn(3, 2, 5, 16, dtype=dtype)
    positions = torch.arange(5).expand(3, 5)
    cos, sin = model.model.rotary_emb(x, positions)
    stock = sys.modules[type(layer.self_attn).__module__].apply_rotary_pos_emb(q, k, cos, sin)
    for ours, theirs in zip(rotary(q, k, cos, sin), stock):
        assert torch.equal(ours, theirs)


def test_every_norm_and_mlp_is_found(family: str) -> None:
    model = tiny_model(family, layers=3)
    norms = sum(is_rms_norm(m) for m in model.modules())
    per_layer = 4 if family == "qwen3" else 2  # Qwen3 also normalises q and k per head
    assert norms == 3 * per_layer + 1
    assert sum(is_silu_mlp(m) for m in model.modules()) == 3


def test_a_cpu_model_is_refused() -> None:
    with pytest.raises(ValueError, match="move the model to a GPU"):
        fuse_decode_ops(tiny_model("llama"))
