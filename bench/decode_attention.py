"""Decode attention bandwidth over the paged per-head store, against the device's measured copy bandwidth.

For each shape (segments = batch x kv_heads, kept-length distribution, mean kept length) every backend is
first checked against the pure-torch reference (fresh random bf16 inputs, NaN-poisoned outputs), then timed
with the L2 flushed and input sets rotated. Bandwidth = bytes the backend must read (kept K+V for the
paged backends, the padded cache for dense SDPA) / median time. Prints a table; writes JSON + markdown.

GPU:   python bench/decode_attention.py                (about 2-3 minutes on one H100/H200)
CPU:   python bench/decode_attention.py --smoke        (tiny shapes in Triton's interpreter, float16)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

SMOKE = "--smoke" in sys.argv[1:] and not torch.cuda.is_available()
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from fairkv_hf.kernels import paged_decode_reference, paged_decode_varlen, varlen_available  # noqa: E402

BLOCK = 64
GROUPS = 4  # Llama-3-8B: 32 query heads over 8 KV heads
KV_HEADS = 8
ROTATE_BYTES = 256 << 20  # input sets rotated until they span this much, well past any L2
MAX_POOL_BYTES = 40 << 30
MAX_DENSE_BYTES = 16 << 30
REFERENCE_MAX_TOKENS = 256 * 2048  # the torch gather reference is timed only up to this many kept tokens
CHECK_SEGMENTS = 64  # correctness is checked on this many segments (the longest and shortest included)
DUO_SHORT = 320


@dataclass
class Row:
    segments: int
    dist: str
    mean_target: int
    mean_len: float
    max_len: int
    backend: str
    time_us: float | None
    bytes_read: int
    tb_per_s: float | None
    pct_copy: float | None
    rel_err: float | None
    note: str
    graph_us: float | None = None
    graph_pct_copy: float | None = None


def kept_lengths(segments: int, mean: int, dist: str, gen: torch.Generator) -> torch.Tensor:
    """Per-segment kept lengths with the given mean: uniform, Ada-SnapKV-like (lognormal, sigma 1, capped at
    8x the mean) or DuoAttention-like (half the segments 320 tokens, or mean/2 if smaller, half the rest)."""
    if dist == "uniform":
        return torch.full((segments,), mean, dtype=torch.int32)
    if dist == "ada":
        draw = torch.empty(segments).log_normal_(0.0, 1.0, generator=gen)
        return (draw / draw.mean() * mean).round().clamp(1, 8 * mean).to(torch.int32)
    short = min(DUO_SHORT, mean // 2)
    lens = torch.full((segments,), 2 * mean - short, dtype=torch.int32)
    lens[torch.randperm(segments, generator=gen)[: segments // 2]] = short
    return lens


@dataclass
class Inputs:
    q: torch.Tensor
    k_pool: torch.Tensor
    v_pool: torch.Tensor
    table: torch.Tensor
    lens: torch.Tensor
    max_len: int


def make_inputs(lens: torch.Tensor, dim: int, dtype: torch.dtype, device: torch.device) -> Inputs:
    """Fresh random q and pool; each segment's blocks are scattered over the pool, unused table entries 0."""
    blocks = (lens.long() + BLOCK - 1) // BLOCK
    num_blocks = int(blocks.sum())
    width = int(blocks.max())
    ids = torch.randperm(num_blocks, device=device).to(torch.int32)
    starts = (blocks.cumsum(0) - blocks).to(device)
    cols = torch.arange(width, device=device)
    used = cols[None, :] < blocks.to(device)[:, None]
    table = torch.where(used, ids[(starts[:, None] + cols[None, :]).clamp(max=num_blocks - 1)], 0).to(torch.int32)
    return Inputs(
        q=torch.randn(len(lens), GROUPS, dim, device=device, dtype=dtype),
        k_pool=torch.randn(num_blocks, BLOCK, dim, device=device, dtype=dtype),
        v_pool=torch.randn(num_blocks, BLOCK, dim, device=device, dtype=dtype),
        table=table,
        lens=lens.to(device),
        max_len=int(lens.max()),
    )


def dense_cache(x: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The same tokens as a padded [B, H, Lmax, D] cache (+ key mask when lengths differ), for SDPA."""
    segs, dim = x.q.shape[0], x.q.shape[-1]
    padded = x.table.shape[1] * BLOCK
    shape = (segs // KV_HEADS, KV_HEADS, padded, dim)
    keys = x.k_pool[x.table.long()].reshape(shape)
    values = x.v_pool[x.table.long()].reshape(shape)
    if bool((x.lens == padded).all()):
        return keys, values, None
    mask = torch.arange(padded, device=x.q.device)[None, :] < x.lens[:, None]
    return keys, values, mask.reshape(shape[0], KV_HEADS, 1, padded)


def sdpa_dense(x: Inputs, dense: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], scale: float) -> torch.Tensor:
    """Dense SDPA with a GQA group's query heads as the query rows of its KV head."""
    keys, values, mask = dense
    q = x.q.reshape(keys.shape[0], KV_HEADS, GROUPS, -1)
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(x.q.shape)


def bench_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds per call, L2 flushed between calls on CUDA (triton.testing.do_bench)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def graph_ms(fn: Callable[[int], object], sets: int, replays: int = 20) -> float:
    """Milliseconds per call from CUDA-graph replays of one call on each input set: the kernels' own time,
    without Python and launch overhead (the graph holds `sets` calls over distinct memory, so L2 does not serve)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(sets):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(sets):
            fn(i)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / (replays * sets))
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read + written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def checked_error(out: torch.Tensor, ref: torch.Tensor, rows: torch.Tensor) -> float:
    """Relative error on the checked segments; NaN (so never below tolerance) if any output row was left unwritten."""
    if bool(out.isnan().any()):
        return float("nan")
    return rel_err(out[rows.to(out.device)], ref)


def check_rows(lens: torch.Tensor) -> torch.Tensor:
    """Segments to check against the reference: the longest, the shortest, and a random sample."""
    order = torch.argsort(lens)
    picks = torch.cat([order[:2], order[-2:], torch.randperm(len(lens))[: CHECK_SEGMENTS - 4]])
    return picks.unique()


def paged_backends(device: torch.device, num_splits: int | None) -> dict[str, Callable[..., torch.Tensor]]:
    """The paged backends that can run here, each taking (inputs, scale, out-or-None)."""
    from fairkv_hf.kernels.triton_decode import paged_decode_triton

    def triton_fn(x: Inputs, scale: float, out: torch.Tensor | None) -> torch.Tensor:
        return paged_decode_triton(x.q, x.k_pool, x.v_pool, x.table, x.lens, scale, x.max_len,
                                   num_splits=num_splits, out=out)

    def varlen_fn(x: Inputs, scale: float, out: torch.Tensor | None) -> torch.Tensor:
        return paged_decode_varlen(x.q, x.k_pool, x.v_pool, x.table, x.lens, scale, x.max_len)

    def reference_fn(x: Inputs, scale: float, out: torch.Tensor | None) -> torch.Tensor:
        return paged_decode_reference(x.q, x.k_pool, x.v_pool, x.table, x.lens, scale, x.max_len)

    backends = {"triton": triton_fn}
    if device.type == "cuda" and varlen_available():
        backends["varlen"] = varlen_fn
    backends["reference"] = reference_fn
    return backends


def subset(x: Inputs, rows: torch.Tensor) -> Inputs:
    rows = rows.to(x.q.device)
    lens = x.lens[rows]
    return Inputs(x.q[rows], x.k_pool, x.v_pool, x.table[rows], lens, int(lens.max()))


def run_shape(segs: int, dist: str, mean: int, args: argparse.Namespace, device: torch.device,
              dtype: torch.dtype, copy_bw: float) -> list[Row]:
    """Check then time every backend on one shape."""
    gen = torch.Generator().manual_seed(segs * 7919 + mean)
    lens = kept_lengths(segs, mean, dist, gen)
    dim = args.head_dim
    token_bytes = 2 * dim * dtype.itemsize
    paged_bytes = int(((lens.long() + BLOCK - 1) // BLOCK).sum()) * BLOCK * token_bytes
    kept_bytes = int(lens.long().sum()) * token_bytes
    dense_bytes = segs * int(-(-int(lens.max()) // BLOCK) * BLOCK) * token_bytes
    base = dict(segments=segs, dist=dist, mean_target=mean, mean_len=float(lens.float().mean()),
                max_len=int(lens.max()))
    if paged_bytes > MAX_POOL_BYTES:
        return [Row(**base, backend="all", time_us=None, bytes_read=kept_bytes, tb_per_s=None, pct_copy=None,
                    rel_err=None, note=f"skipped: pool {paged_bytes / 2**30:.1f} GiB > 40 GiB")]
    sets = [make_inputs(lens, dim, dtype, device) for _ in range(max(1, min(4, -(-ROTATE_BYTES // paged_bytes))))]
    scale = dim**-0.5
    rows = check_rows(lens)
    sub = subset(sets[0], rows)  # the reference runs on these segments only: it gathers a padded copy
    ref = paged_decode_reference(sub.q, sub.k_pool, sub.v_pool, sub.table, sub.lens, scale, sub.max_len)
    results = []
    for name, fn in paged_backends(device, args.num_splits).items():
        if name == "reference" and int(lens.long().sum()) > REFERENCE_MAX_TOKENS:
            continue
        note = ""
        if name == "triton":
            from fairkv_hf.kernels.triton_decode import choose_num_splits

            note = f"splits={args.num_splits or choose_num_splits(segs, int(lens.max()), BLOCK, device)}"
        out = torch.full_like(sets[0].q, float("nan"))
        if name != "triton":
            out = None  # frees the NaN block, which the backend's own output allocation then reuses (CUDA)
        try:
            err = None if name == "reference" else checked_error(fn(sets[0], scale, out), ref, rows)
        except RuntimeError as exc:
            results.append(Row(**base, backend=name, time_us=None, bytes_read=kept_bytes, tb_per_s=None,
                               pct_copy=None, rel_err=None, note=f"failed: {str(exc).splitlines()[0][:120]}"))
            continue
        if err is not None and not err < 1e-2:
            results.append(Row(**base, backend=name, time_us=None, bytes_read=kept_bytes, tb_per_s=None,
                               pct_copy=None, rel_err=err, note="WRONG: relative error >= 1e-2, not timed"))
            continue
        turn = iter(range(10**9))
        ms = bench_ms(lambda: fn(sets[next(turn) % len(sets)], scale, None), device)
        bw = kept_bytes / (ms * 1e-3)
        graph = None
        if name == "triton" and device.type == "cuda":
            graph = graph_ms(lambda i: fn(sets[i], scale, None), len(sets))
        results.append(Row(**base, backend=name, time_us=ms * 1e3, bytes_read=kept_bytes, tb_per_s=bw / 1e12,
                           pct_copy=100 * bw / copy_bw, rel_err=err, note=note,
                           graph_us=graph * 1e3 if graph else None,
                           graph_pct_copy=100 * kept_bytes / (graph * 1e-3) / copy_bw if graph else None))
    results.append(time_dense(sets[0], base, dense_bytes, ref, rows, scale, copy_bw, device))
    return results


def time_dense(x: Inputs, base: dict, dense_bytes: int, ref: torch.Tensor, rows: torch.Tensor, scale: float,
               copy_bw: float, device: torch.device) -> Row:
    """Dense SDPA over the padded cache (masked where lengths differ): the full-cache / masking baseline."""
    if dense_bytes > MAX_DENSE_BYTES:
        return Row(**base, backend="sdpa_dense", time_us=None, bytes_read=dense_bytes, tb_per_s=None,
                   pct_copy=None, rel_err=None, note=f"skipped: padded cache {dense_bytes / 2**30:.1f} GiB")
    dense = dense_cache(x)
    torch.full_like(x.q, float("nan"))  # freed at once; SDPA's output allocation reuses the NaN block (CUDA)
    err = checked_error(sdpa_dense(x, dense, scale), ref, rows)
    ms = bench_ms(lambda: sdpa_dense(x, dense, scale), device)
    bw = dense_bytes / (ms * 1e-3)
    note = "masked" if dense[2] is not None else ""
    return Row(**base, backend="sdpa_dense", time_us=ms * 1e3, bytes_read=dense_bytes, tb_per_s=bw / 1e12,
               pct_copy=100 * bw / copy_bw, rel_err=err, note=note)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0], "torch": torch.__version__,
                                    "cuda": torch.version.cuda}
    for name in ("triton", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(meta: dict, rows: list[Row]) -> str:
    head = ("| segments | dist | mean | max | backend | time us | TB/s | % copy | graph us | graph % copy | rel err | note |\n"
            "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n")
    body = "".join(
        f"| {r.segments} | {r.dist} | {r.mean_len:.0f} | {r.max_len} | {r.backend} | {fmt(r.time_us, '.1f')} | "
        f"{fmt(r.tb_per_s, '.2f')} | {fmt(r.pct_copy, '.0f')} | {fmt(r.graph_us, '.1f')} | "
        f"{fmt(r.graph_pct_copy, '.0f')} | {fmt(r.rel_err, '.1e')} | {r.note} |\n"
        for r in rows)
    return (f"# Decode attention bandwidth\n\nDevice: {meta['device']}; copy bandwidth "
            f"{meta['copy_tb_per_s']:.2f} TB/s (read + write); versions: {meta['versions']}\n\n"
            f"Command: `{meta['command']}`\n\n"
            "time = median per call with the L2 flushed (do_bench): what an eager decode step sees, Python and "
            "launch overhead included; graph = the same call replayed from a CUDA graph over rotated input sets: "
            "the kernels' own time. % copy = bytes read / time against the copy bandwidth.\n\n"
            f"{head}{body}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU through Triton's interpreter")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--num-splits", type=int, default=None, help="force the Triton kernel's KV splits")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        parser.error("no CUDA device: run with --smoke (tiny shapes in Triton's interpreter)")
    # Triton's interpreter multiplies bf16 tl.dot operands as raw integers, so the CPU smoke run uses float16.
    dtype = torch.float16 if SMOKE else torch.bfloat16
    segments, means = ((16,), (200, 400)) if args.smoke else ((64, 256, 1024), (512, 2048, 8192))
    copy_bw = copy_bandwidth(device, (64 << 20) if args.smoke else (2 << 30))
    rows: list[Row] = []
    for segs in segments:
        for mean in means:
            for dist in ("uniform", "ada", "duo"):
                rows.extend(run_shape(segs, dist, mean, args, device, dtype, copy_bw))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)",
        "copy_tb_per_s": copy_bw / 1e12,
        "versions": versions(),
        "command": " ".join(["python", *sys.argv]),
        "dtype": str(dtype).removeprefix("torch."),
        "shape": {"head_dim": args.head_dim, "q_per_kv": GROUPS, "kv_heads": KV_HEADS, "block": BLOCK},
        "bandwidth": "bytes the backend must read (kept K+V; padded K+V for sdpa_dense) / median time",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "decode_attention_smoke" if args.smoke else "decode_attention"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    table = markdown(meta, rows)
    (args.out / f"{stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
