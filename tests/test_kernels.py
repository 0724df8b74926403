"""Decode kernels against the pure-torch reference; the Triton kernel runs in Triton's interpreter on CPU."""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import DynamicCache  # noqa: E402

from fairkv_hf.cache import FairKVCache, FairKVLayer  # noqa: E402
from fairkv_hf.compat import cache_kwarg  # noqa: E402
from fairkv_hf.kernels import choose_backend, decode_attention, paged_decode_cpu, paged_decode_reference  # noqa: E402
from fairkv_hf.kernels import cpu as cpu_kernel  # noqa: E402
from fairkv_hf.kernels.varlen import paged_decode_varlen, varlen_available  # noqa: E402
from fairkv_hf.policies import get_policy  # noqa: E402

from .conftest import left_padded, tiny_model  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
BLOCK = 64
# Skewed: a single token, exactly one block, one past a block edge, one short of an edge, several blocks.
LENGTHS = [1, 64, 65, 127, 200]


def make_inputs(groups: int, dim: int, dtype: torch.dtype, lengths: list[int] = LENGTHS):
    """Fresh random q and pool, each segment's blocks scattered over the pool; unused table entries are 0."""
    segs = len(lengths)
    used = [-(-n // BLOCK) for n in lengths]
    num_blocks = sum(used) + 3
    order = torch.randperm(num_blocks).tolist()
    table = torch.zeros(segs, max(used) + 1, dtype=torch.int32)
    for seg, count in enumerate(used):
        table[seg, :count] = torch.tensor([order.pop() for _ in range(count)], dtype=torch.int32)
    q = torch.randn(segs, groups, dim).to(dtype)
    k_pool = torch.randn(num_blocks, BLOCK, dim).to(dtype)
    v_pool = torch.randn(num_blocks, BLOCK, dim).to(dtype)
    lens = torch.tensor(lengths, dtype=torch.int32)
    return [t.to(DEVICE) for t in (q, k_pool, v_pool, table, lens)]


def run_triton(q, k_pool, v_pool, table, lens, max_len: int, num_splits: int | None) -> torch.Tensor:
    """The Triton kernel writing into a NaN-poisoned output, so rows it fails to write show up."""
    triton_decode = pytest.importorskip("fairkv_hf.kernels.triton_decode", exc_type=ImportError)
    out = torch.full_like(q, float("nan"))
    result = triton_decode.paged_decode_triton(q, k_pool, v_pool, table, lens, q.shape[-1] ** -0.5, max_len,
                                               num_splits=num_splits, out=out)
    assert result is out
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("groups,num_splits", [(1, None), (3, 1), (4, 2), (7, 3)])
def test_triton_matches_reference_fp32(groups: int, num_splits: int | None, dim: int) -> None:
    inputs = make_inputs(groups, dim, torch.float32)
    ref = paged_decode_reference(*inputs, dim**-0.5, max(LENGTHS))
    out = run_triton(*inputs, max(LENGTHS), num_splits)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("groups,num_splits", [(4, None), (7, 1)])
def test_triton_matches_reference_half(groups: int, num_splits: int | None, dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip("Triton's interpreter multiplies bf16 tl.dot operands as raw integers; bf16 runs on GPU")
    inputs = make_inputs(groups, 128, dtype)
    ref = paged_decode_reference(*inputs, 128**-0.5, 256)
    out = run_triton(*inputs, 256, num_splits)
    assert out.dtype == dtype
    assert rel_err(out, ref) < 1e-2


def _poison_unused_slots(k_pool: torch.Tensor, v_pool: torch.Tensor, table: torch.Tensor, lens: torch.Tensor) -> None:
    """NaN in every pool slot no segment stores: what a freshly allocated (torch.empty) pool may hold."""
    used = torch.zeros(k_pool.shape[0] * BLOCK, dtype=torch.bool, device=k_pool.device)
    for seg, length in enumerate(lens.tolist()):
        for t in range(length):
            used[int(table[seg, t // BLOCK]) * BLOCK + t % BLOCK] = True
    for pool in (k_pool, v_pool):
        pool.view(-1, pool.shape[-1])[~used] = float("nan")


@pytest.mark.parametrize("num_splits", [1, 3])
def test_garbage_in_unused_slots_is_never_read(num_splits: int) -> None:
    inputs = make_inputs(7, 64, torch.float32)
    _poison_unused_slots(*inputs[1:])
    ref = paged_decode_reference(*inputs, 0.125, max(LENGTHS))
    assert torch.isfinite(ref).all()
    out = run_triton(*inputs, max(LENGTHS), num_splits)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_triton_short_segments_among_long_ones() -> None:
    """Splits past a short segment's length exit early; the merge must still use exactly the splits it has."""
    inputs = make_inputs(4, 64, torch.float32, lengths=[1, 640, 64, 129])
    ref = paged_decode_reference(*inputs, 0.125, 640)
    out = run_triton(*inputs, 640, 5)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_triton_rejects_non_power_of_two_head_dim() -> None:
    triton_decode = pytest.importorskip("fairkv_hf.kernels.triton_decode", exc_type=ImportError)
    q, k_pool, v_pool, table, lens = make_inputs(2, 64, torch.float32)
    with pytest.raises(ValueError, match="head_dim must be a power of two"):
        triton_decode.paged_decode_triton(q[..., :48], k_pool[..., :48], v_pool[..., :48], table, lens, 0.1, 200)


@pytest.mark.skipif(not ON_GPU or not varlen_available(), reason="paged varlen_attn needs CUDA and torch >= 2.12")
def test_varlen_matches_reference() -> None:
    inputs = make_inputs(4, 128, torch.bfloat16)
    ref = paged_decode_reference(*inputs, 128**-0.5, max(LENGTHS))
    assert rel_err(paged_decode_varlen(*inputs, 128**-0.5, max(LENGTHS)), ref) < 1e-2


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAIRKV_DECODE_BACKEND", raising=False)
    assert choose_backend(torch.device("cpu")) == "cpu"
    assert choose_backend(torch.device("cpu"), "varlen") == "varlen"
    assert choose_backend(torch.device("cpu"), "reference") == "reference"
    monkeypatch.setenv("FAIRKV_DECODE_BACKEND", "triton")
    assert choose_backend(torch.device("cpu")) == "triton"
    monkeypatch.setenv("FAIRKV_DECODE_BACKEND", "flash")
    with pytest.raises(ValueError, match="choose one of reference, cpu, triton, varlen"):
        choose_backend(torch.device("cpu"))


def test_decode_attention_default_on_cpu_is_cpu_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAIRKV_DECODE_BACKEND", raising=False)
    inputs = [t.cpu() for t in make_inputs(3, 64, torch.float32)]
    out = decode_attention(*inputs, 0.125, max(LENGTHS))
    assert torch.equal(out, paged_decode_cpu(*inputs, 0.125, max(LENGTHS)))


def _cache_layout(lengths: list[int], appended: int, groups: int, dim: int, dtype: torch.dtype):
    """Inputs laid out as FairKVLayer lays them out: each prompt one run of blocks, `appended` decoded tokens after."""
    layer = _filled_layer("reference", lengths, dim)
    gen = torch.Generator().manual_seed(2)
    for _ in range(appended):
        layer._append(*(torch.randn(1, len(lengths), 1, dim, generator=gen) for _ in range(2)))
    q = torch.randn(len(lengths), groups, dim, generator=gen)
    return [t.to(dtype) if t.is_floating_point() else t for t in (q, layer.k_pool, layer.v_pool)] + [
        layer.block_table, layer.seq_lens]


# Uniform, very skewed (1 token next to 1,000), block edges (63/64/65, 127/128/129); "decoded" appends 70 tokens.
CPU_LENGTHS = {"uniform": [300] * 4, "skewed": [1, 2, 1000, 63, 64, 129], "edges": LENGTHS + [63, 128, 129, 191]}


@pytest.mark.parametrize("layout", ["scattered", "prompt_only", "decoded"])
@pytest.mark.parametrize("lengths", CPU_LENGTHS.values(), ids=CPU_LENGTHS.keys())
@pytest.mark.parametrize("groups", [1, 3, 4, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "gathered"])
def test_cpu_kernel_matches_reference(monkeypatch: pytest.MonkeyPatch, in_place: bool, dtype: torch.dtype,
                                      groups: int, lengths: list[int], layout: str) -> None:
    """Both of its paths (segments read in place, everything gathered), with NaN in every slot no segment stores."""
    monkeypatch.setattr(cpu_kernel, "reads_in_place", lambda *args: in_place)
    if layout == "scattered":
        inputs = [t.cpu() for t in make_inputs(groups, 64, dtype, lengths)]
    else:
        inputs = _cache_layout(lengths, appended=70 if layout == "decoded" else 0, groups=groups, dim=64, dtype=dtype)
    _poison_unused_slots(*inputs[1:])
    max_len = int(inputs[-1].max())
    ref = paged_decode_reference(*inputs, 0.125, max_len)
    out = paged_decode_cpu(*inputs, 0.125, max_len)
    assert out.dtype == dtype and torch.isfinite(ref).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5 if dtype == torch.float32 else 1.6e-2)


def test_cpu_kernel_follows_a_layer_across_block_edges_and_pool_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its cached view of each block table is refreshed when a segment takes a block or the pool grows."""
    monkeypatch.setattr(cpu_kernel, "reads_in_place", lambda *args: True)
    layer = _filled_layer("reference", [600, 300, 900, 1], 64)
    gen = torch.Generator().manual_seed(3)
    capacities = {layer.k_pool.shape[0]}
    for _ in range(140):
        layer._append(*(torch.randn(1, 4, 1, 64, generator=gen) for _ in range(2)))
        capacities.add(layer.k_pool.shape[0])
        inputs = (torch.randn(4, 3, 64, generator=gen), layer.k_pool, layer.v_pool, layer.block_table, layer.seq_lens)
        torch.testing.assert_close(paged_decode_cpu(*inputs, 0.125, layer.max_len),
                                   paged_decode_reference(*inputs, 0.125, layer.max_len), atol=1e-5, rtol=1e-5)
    assert len(capacities) > 1


def test_cpu_kernel_under_inference_mode_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation loops run under torch.inference_mode, whose tensors have no version counter: the cached runs must
    still be found again when a segment takes a block (LongBench runs on CPU crashed here)."""
    monkeypatch.setattr(cpu_kernel, "reads_in_place", lambda *args: True)
    gen = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        layer = _filled_layer("reference", [600, 63, 130], 64)
        for _ in range(70):
            layer._append(*(torch.randn(1, 3, 1, 64, generator=gen) for _ in range(2)))
            inputs = (torch.randn(3, 3, 64, generator=gen), layer.k_pool, layer.v_pool, layer.block_table, layer.seq_lens)
            torch.testing.assert_close(paged_decode_cpu(*inputs, 0.125, layer.max_len),
                                       paged_decode_reference(*inputs, 0.125, layer.max_len), atol=1e-5, rtol=1e-5)


def test_cpu_kernel_keeps_no_pool_alive() -> None:
    layer = _filled_layer("reference", [900, 700], 64)
    paged_decode_cpu(torch.randn(2, 3, 64), layer.k_pool, layer.v_pool, layer.block_table, layer.seq_lens, 0.125,
                     layer.max_len)
    pool = weakref.ref(layer.k_pool)
    del layer
    gc.collect()
    assert pool() is None


def test_cpu_kernel_in_a_model_matches_dynamic_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with segments read in place (a 700-token batch of two, 80 new tokens across block edges)."""
    monkeypatch.delenv("FAIRKV_DECODE_BACKEND", raising=False)
    assert cpu_kernel.reads_in_place(segments=4, max_seq_len=700, stored_tokens=4 * 650)
    model = tiny_model("llama")
    ids, mask = left_padded([700, 650])
    options = dict(attention_mask=mask, max_new_tokens=80, min_new_tokens=80, do_sample=False, pad_token_id=0,
                   output_logits=True, return_dict_in_generate=True)
    want = model.generate(input_ids=ids, **cache_kwarg(DynamicCache()), **options)
    got = model.generate(input_ids=ids, **cache_kwarg(FairKVCache(model, policy="full")), **options)
    model.set_attn_implementation("sdpa")
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_cpu_kernel_reads_long_segments_in_place() -> None:
    """The cost rule: long segments are read in place, short ones (or a few long among many short) gathered."""
    assert cpu_kernel.reads_in_place(segments=3, max_seq_len=4127, stored_tokens=3 * 4127)
    assert cpu_kernel.reads_in_place(segments=3, max_seq_len=1400, stored_tokens=3000)
    assert not cpu_kernel.reads_in_place(segments=3, max_seq_len=200, stored_tokens=600)
    assert not cpu_kernel.reads_in_place(segments=12, max_seq_len=300, stored_tokens=12 * 290)


def test_varlen_refuses_cpu_tensors() -> None:
    inputs = [t.cpu() for t in make_inputs(2, 64, torch.float32)]
    with pytest.raises(RuntimeError, match="CUDA only|no paged varlen_attn"):
        paged_decode_varlen(*inputs, 0.125, max(LENGTHS))


def _filled_layer(backend: str, lengths: list[int], dim: int) -> FairKVLayer:
    """A layer holding segments of the given lengths (random keys and values), appending with `backend`."""
    gen = torch.Generator().manual_seed(0)
    width = max(lengths)
    keys = torch.randn(1, len(lengths), width, dim, generator=gen).to(DEVICE)
    values = torch.randn(1, len(lengths), width, dim, generator=gen).to(DEVICE)
    keep = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None])[None].to(DEVICE)
    layer = FairKVLayer(0, get_policy("full"), None, 8)
    layer.lazy_initialization(keys, values)
    layer.store(keys, values, keep)
    layer._append_backend = backend
    return layer


@pytest.mark.parametrize("dim", [64, 96])
def test_triton_append_matches_reference_across_block_edges(dim: int) -> None:
    pytest.importorskip("fairkv_hf.kernels.triton_append", exc_type=ImportError)
    lengths = [1, 63, 64, 128, 5, 200, 127, 64]
    layers = {b: _filled_layer(b, lengths, dim) for b in ("reference", "triton")}
    gen = torch.Generator().manual_seed(1)
    for _ in range(70):
        new_k, new_v = (torch.randn(1, len(lengths), 1, dim, generator=gen).to(DEVICE) for _ in range(2))
        for layer in layers.values():
            layer._append(new_k, new_v)
    ref, tri = layers["reference"], layers["triton"]
    assert ref.blocks_used == tri.blocks_used and torch.equal(ref.seq_lens, tri.seq_lens)
    assert torch.equal(ref.block_table, tri.block_table)
    assert tri.kept_lengths().tolist() == [[n + 70 for n in lengths]]
    for head in range(len(lengths)):
        for a, b in zip(ref.segment(0, head), tri.segment(0, head)):
            assert torch.equal(a, b)
