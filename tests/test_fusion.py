"""The fused decode step computes what transformers' eager modules compute: the formulas, the restructured layers
uncompiled (the same tokens and logits as the stock model, for FairKVCache and for other caches) and compiled with
dynamo (no new graph from one decode step, prompt length or batch size to the next). The Inductor kernels are
exercised on GPUs by bench/decode_graphs.py, which compares tokens."""

from __future__ import annotations

import sys

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import DynamicCache

from fairkv_hf import FairKVCache, fusion
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.fusion import (
    add_rms_norm, fuse_decode_ops, is_attention, is_pre_norm_layer, is_rms_norm, is_silu_mlp, qkv_rotary, rms_norm,
    rotary, silu_mul, unfuse_decode_ops,
)
from tests.conftest import left_padded, tiny_model


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


def test_add_norm_and_qkv_layout_equal_the_stock_steps(family: str) -> None:
    model = tiny_model(family)
    attn, norm = model.model.layers[0].self_attn, model.model.layers[0].post_attention_layernorm
    x, y = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    total, normed = add_rms_norm(x, y, norm.weight, norm.variance_epsilon)
    assert torch.equal(total, x + y) and torch.equal(normed, norm(x + y))
    q, k, v = torch.randn(2, 3, 64), torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    cos, sin = model.model.rotary_emb(x, torch.arange(3).expand(2, 3))
    norms = {}
    if family == "qwen3":
        norms = {"q_norm": attn.q_norm.weight, "k_norm": attn.k_norm.weight, "eps": attn.q_norm.variance_epsilon}
    got = qkv_rotary(q, k, v, cos, sin, **norms)
    q4, k4 = q.view(2, 3, 4, 16), k.view(2, 3, 2, 16)
    if family == "qwen3":
        q4, k4 = attn.q_norm(q4), attn.k_norm(k4)
    stock = sys.modules[type(attn).__module__].apply_rotary_pos_emb(q4.transpose(1, 2), k4.transpose(1, 2), cos, sin)
    assert torch.equal(got[0], stock[0]) and torch.equal(got[1], stock[1])
    assert torch.equal(got[2], v.view(2, 3, 2, 16).transpose(1, 2)) and got[2].is_contiguous()
    empty = qkv_rotary(q[..., :0], k[..., :0], v[..., :0], cos, sin)  # a rank that holds no head of the layer
    assert [t.shape for t in empty] == [torch.Size([2, 0, 3, 16])] * 3


def _generate(model, cache, ids, mask, new: int = 8):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         output_scores=True, return_dict_in_generate=True, **cache_kwarg(cache))
    return out.sequences[:, ids.shape[1]:], torch.stack(out.scores)


def test_the_fused_step_gives_the_stock_tokens(family: str) -> None:
    model = tiny_model(family, layers=3)
    ids, mask = left_padded([23, 14])
    stock = _generate(model, FairKVCache(model, policy="ada_snapkv", budget=10, window=4), ids, mask)
    patched = fuse_decode_ops(model, compile=False)
    assert patched == (22 if family == "qwen3" else 16)  # 7 (13) norms, 3 MLPs, 3 attentions, 3 decoder layers
    attn = model.model.layers[1].self_attn
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()
    weight = attn.fused_qkv[0].data_ptr()
    assert fuse_decode_ops(model, compile=False) == patched and attn.fused_qkv[0].data_ptr() == weight
    fused = _generate(model, FairKVCache(model, policy="ada_snapkv", budget=10, window=4), ids, mask)
    assert torch.equal(fused[0], stock[0])
    torch.testing.assert_close(fused[1], stock[1], rtol=1e-5, atol=1e-5)
    model.set_attn_implementation("sdpa")  # another cache takes the stock attention, the rest stays fused
    dynamic = _generate(model, DynamicCache(config=model.config), ids, mask)
    unfuse_decode_ops(model)
    assert not any(is_rms_norm(m) and "forward" in m.__dict__ for m in model.modules())
    dynamic_stock = _generate(model, DynamicCache(config=model.config), ids, mask)
    assert torch.equal(dynamic[0], dynamic_stock[0])
    unfused = _generate(model, FairKVCache(model, policy="ada_snapkv", budget=10, window=4), ids, mask)
    assert torch.equal(unfused[0], stock[0])


def test_other_families_are_refused() -> None:
    from transformers import AutoModelForCausalLM, GemmaConfig

    gemma = AutoModelForCausalLM.from_config(GemmaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                                         num_hidden_layers=1, num_attention_heads=4,
                                                         num_key_value_heads=2, head_dim=16))
    with pytest.raises(ValueError, match="got 'gemma': run this model's stock modules"):
        fuse_decode_ops(gemma, compile=False)


def test_every_layer_piece_is_recognised(family: str) -> None:
    model = tiny_model(family, layers=2)
    assert sum(is_attention(m) for m in model.modules()) == 2
    assert sum(is_pre_norm_layer(m) for m in model.modules()) == 2


def test_projections_that_are_not_plain_linear_layers_are_left_alone() -> None:
    """A quantized Linear subclass packs its weight, so its rows cannot be concatenated: that module keeps its
    stock forward, the rest of the layer is fused."""

    class PackedLinear(torch.nn.Linear):
        pass

    model = tiny_model("llama", layers=1)
    layer = model.model.layers[0]
    packed = PackedLinear(64, 32, bias=False)
    packed.weight = layer.self_attn.k_proj.weight
    layer.self_attn.k_proj = packed
    assert not is_attention(layer.self_attn) and is_silu_mlp(layer.mlp)
    fuse_decode_ops(model, compile=False)
    assert "fused_qkv" not in layer.self_attn.__dict__ and "forward" not in layer.self_attn.__dict__
    assert "fused_gate_up" in layer.mlp.__dict__


def test_compiled_decode_steps_add_no_graph(monkeypatch) -> None:
    """dynamo (its eager backend: the guards are the same as Inductor's) compiles each piece for the prefill and
    for decoding once; later steps, prompts and batch sizes reuse those graphs."""
    compile_ = torch.compile
    monkeypatch.setattr(fusion, "_compiled", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="eager", **kw))
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model("qwen3", layers=2)
    ids, mask = left_padded([19, 12])
    stock = _generate(model, FairKVCache(model, policy="snapkv", budget=10, window=4), ids, mask, new=3)
    fuse_decode_ops(model)
    try:
        assert torch.equal(_generate(model, FairKVCache(model, policy="snapkv", budget=10, window=4), ids, mask, new=3)[0],
                           stock[0])
        graphs = counters["stats"]["unique_graphs"]
        assert graphs > 0
        ids, mask = left_padded([31, 17, 25])
        _generate(model, FairKVCache(model, policy="snapkv", budget=10, window=4), ids, mask, new=9)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()
