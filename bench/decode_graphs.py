"""Decode at GPU speed on one GPU: FairKVCache eager vs replayed from CUDA graphs, against transformers' caches.

python bench/decode_graphs.py --contexts 8192 32768 --batches 1 8 --out DIR

Llama-3.1-8B shape with random weights, bf16, ada_snapkv-1024. Per shape and method: wall ms per decode step (the
mean interval of a clock at every new token that does not wait for the GPU, as generate() itself waits once per
step, over the steps after the capture), the bytes-read limit (weights + kept K/V read once, over
the device-to-device copy bandwidth measured in this run), and whether the greedy tokens equal eager FairKV's.
Methods: fairkv eager; fairkv reserved (max_new_tokens reserved, eager: the same kernels and grids as the graphs);
fairkv graphs (reserved + enable_cuda_graphs); DynamicCache eager (sdpa); StaticCache + transformers' automatic
compile (reduce-overhead; where the full static cache fits); fairkv graphs fused (graphs + fairkv_hf.fusion: one GEMM
for q/k/v and one for gate/up, compiled norms, rotary, SiLU gate and residual adds; it patches the model, so fused
methods run last). Token equality is checked against
fairkv reserved (bit-identical expected) and fairkv eager (its decode kernel may pick another split count: reduction
order). With --profile-steps P, each method runs once more under torch.profiler over P decode steps (from the fifth):
kernels per step, summed kernel ms per step (the GPU's busy time), of it the matmuls', and the costliest kernels.
One-time costs per method: prefill_s (to the first token: the prefill, and the fused pieces' compilation on a new
shape), warmup_s (decode steps 1-3: warm-up, graph capture or transformers' compilation) and dynamo_graphs (graphs
dynamo made during that generate(), and after decode step 3: 0, no step recompiles).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM, LlamaConfig, LogitsProcessor, LogitsProcessorList

import fairkv_hf  # noqa: F401
from fairkv_hf import FairKVCache
from fairkv_hf.cli.generate import StepClock
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.fusion import fuse_decode_ops, unfuse_decode_ops
from fairkv_hf.graphs import enable_cuda_graphs


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of 20 copies of 2 GiB."""
    src = torch.randn(2**30 // 2, dtype=torch.bfloat16, device=device).view(-1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


GEMM_NAMES = ("gemm", "gemv", "xmma", "cutlass", "nvjet", "splitk")  # cuBLAS / CUTLASS matmul kernels


class ProfileSteps(LogitsProcessor):
    """Runs torch.profiler (CUDA kernels) over `count` decode steps starting after step `first`."""

    def __init__(self, first: int, count: int, host: bool = False):
        self.first, self.count, self.calls = first, count, 0
        activities = [torch.profiler.ProfilerActivity.CUDA] + [torch.profiler.ProfilerActivity.CPU] * host
        self.prof = torch.profiler.profile(activities=activities)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.calls == self.first:
            self.prof.start()
        if self.calls == self.first + self.count:
            torch.cuda.synchronize()
            self.prof.stop()
        self.calls += 1
        return scores

    def figures(self) -> dict:
        kernels = [e for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        by_name: dict[str, list[float]] = {}
        for e in kernels:
            by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
        top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:12]
        gemm = sum(sum(t) for name, t in by_name.items() if any(g in name.lower() for g in GEMM_NAMES))
        return {"kernels_per_step": len(kernels) / self.count,
                "kernel_ms_per_step": sum(e.time_range.elapsed_us() for e in kernels) / self.count / 1e3,
                "gemm_ms_per_step": gemm / self.count / 1e3,
                "top_kernels": [{"name": name[:100], "per_step": len(t) / self.count,
                                 "ms_per_step": sum(t) / self.count / 1e3} for name, t in top]}


class CountingClock(StepClock):
    """A step clock that also records how many graphs dynamo has made at each step."""

    def __init__(self, device: torch.device, sync: bool):
        super().__init__(device, sync)
        self.graphs: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.graphs.append(counters["stats"]["unique_graphs"])
        return super().__call__(input_ids, scores)


def cache_kwargs(model, method: str, new: int, args) -> dict:
    """generate() keywords that select the method's cache (and its attention)."""
    if method.startswith("fairkv"):
        reserve = new if method.startswith(("fairkv_graphs", "fairkv_reserved")) else None
        return cache_kwarg(FairKVCache(model, policy=args.policy, budget=args.budget, max_new_tokens=reserve))
    model.set_attn_implementation("sdpa")
    return {"cache_implementation": "static"} if method == "static_compile" else {}


def profiled(model, inputs: dict, new: int, method: str, args) -> dict:
    """Kernels and summed kernel time per decode step of the method (a separate generate, profiled)."""
    hook = ProfileSteps(4, args.profile_steps, host=args.trace is not None)
    model.fairkv_graphs_off = not method.startswith("fairkv_graphs")
    model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                   logits_processor=LogitsProcessorList([hook]), **cache_kwargs(model, method, new, args))
    if args.trace is not None:
        args.trace.mkdir(parents=True, exist_ok=True)
        hook.prof.export_chrome_trace(str(args.trace / f"{method}-{inputs['input_ids'].shape[1]}x{inputs['input_ids'].shape[0]}.json"))
    return hook.figures()


def run(model, inputs: dict, new: int, method: str, args) -> dict:
    """One generate() with the method's cache; per-step wall times after the first two decode steps."""
    kwargs = cache_kwargs(model, method, new, args)
    clock = CountingClock(model.device, sync=False)
    model.fairkv_graphs_off = not method.startswith("fairkv_graphs")
    torch.cuda.synchronize()
    graphs_before = counters["stats"]["unique_graphs"]
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         logits_processor=LogitsProcessorList([clock]), **kwargs)
    steps = [b - a for a, b in zip(clock.times[3:], clock.times[4:])]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return {"ms_per_step": 1e3 * statistics.fmean(steps), "ms_median": 1e3 * statistics.median(steps),
            "ms_min": 1e3 * min(steps), "ms_max": 1e3 * max(steps),
            "prefill_s": clock.times[0] - start, "total_s": time.perf_counter() - start,
            "warmup_s": clock.times[3] - clock.times[0],  # decode steps 1-3: eager warm-up, capture or compilation
            "dynamo_graphs": clock.graphs[-1] - graphs_before,
            "dynamo_graphs_after_step_3": clock.graphs[-1] - clock.graphs[3],  # recompilation while decoding
            "tokens": out[:, inputs["input_ids"].shape[1]:].cpu(),
            "kv_bytes": cache.nbytes() if cache is not None else None,
            "kept_tokens": int(cache.kept_lengths().sum()) if cache is not None else None}


def first_difference(tokens: torch.Tensor, reference: torch.Tensor | None) -> int | str | None:
    """The first decode step where any sequence's token differs ("same" if none; None without a reference)."""
    if reference is None:
        return None
    differ = (tokens != reference).any(0).nonzero()
    return "same" if not len(differ) else int(differ[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--methods", default="fairkv_eager,fairkv_reserved,fairkv_graphs,dynamic,static_compile")
    parser.add_argument("--policy", default="ada_snapkv")
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--profile-steps", type=int, default=0, help="also profile this many decode steps per method")
    parser.add_argument("--trace", type=Path, help="with --profile-steps: also record host activity and write "
                        "chrome traces of the profiled steps here")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=False)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    graphed = enable_cuda_graphs(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - model.model.embed_tokens.weight.nbytes
    bandwidth = copy_bandwidth(device)
    rows = []
    methods = args.methods.split(",")
    fused_at = [i for i, m in enumerate(methods) if m.endswith("_fused")]
    if fused_at and fused_at[0] != len(methods) - len(fused_at):
        parser.error("fused methods patch the model's modules: list them last")
    for context in args.contexts:
        for batch in args.batches:
            gen = torch.Generator().manual_seed(context + batch)
            inputs = {"input_ids": torch.randint(10, 128000, (batch, context), generator=gen).to(device),
                      "attention_mask": torch.ones(batch, context, dtype=torch.long, device=device)}
            results = {}
            for method in methods:
                captures = graphed.captures
                if method.endswith("_fused"):
                    fuse_decode_ops(model)
                try:
                    results[method] = run(model, inputs, args.new_tokens, method, args)
                    if args.profile_steps:
                        results[method].update(profiled(model, inputs, args.new_tokens, method, args))
                except torch.OutOfMemoryError:
                    results[method] = {"error": "out of memory: the full cache does not fit"}
                torch.cuda.empty_cache()
                results[method]["captures"] = graphed.captures - captures
            unfuse_decode_ops(model)  # back to the stock modules for the next shape
            eager = results.get("fairkv_eager", {}).get("tokens")
            reserved = results.get("fairkv_reserved", {}).get("tokens")
            for method, r in results.items():
                if "tokens" not in r:
                    rows.append({"context": context, "batch": batch, "method": method, **r})
                    continue
                kv_read = r["kv_bytes"] if r["kv_bytes"] is not None else (
                    2 * config.num_hidden_layers * 8 * 128 * 2 * batch * (context + args.new_tokens))
                limit_ms = 1e3 * (weight_bytes + kv_read) / bandwidth
                rows.append({"context": context, "batch": batch, "method": method,
                             **{k: v for k, v in r.items() if k != "tokens"}, "bytes_limit_ms": limit_ms,
                             "x_limit": r["ms_per_step"] / limit_ms,
                             "first_difference_vs_eager": first_difference(r["tokens"], eager),
                             "first_difference_vs_reserved": first_difference(r["tokens"], reserved)})
                print(rows[-1], flush=True)
    header = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
              "copy_bandwidth_Bps": bandwidth, "weight_bytes_read": weight_bytes, "policy": args.policy,
              "budget": args.budget, "new_tokens": args.new_tokens, "layers": args.layers,
              "command": "python bench/decode_graphs.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if k != "out" and v is not None)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_graphs.json").write_text(json.dumps({**header, "rows": rows}, indent=1) + "\n")
    lines = ["| context | batch | method | ms/step mean (min-max) | bytes limit ms | x limit | kernels/step | kernel ms/step | "
             "of it matmul ms | first token difference vs eager / vs reserved | first token s | steps 1-3 s | "
             "dynamo graphs (after step 3) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms_per_step" not in r:
            lines.append(f"| {r['context']} | {r['batch']} | {r['method']} | {r.get('error')} | | | | | | | | | |")
            continue
        lines.append(f"| {r['context']} | {r['batch']} | {r['method']} | {r['ms_per_step']:.2f} ({r['ms_min']:.2f}-"
                     f"{r['ms_max']:.2f}) | {r['bytes_limit_ms']:.2f} | {r['x_limit']:.2f} | {r.get('kernels_per_step', '-')} | "
                     f"{r.get('kernel_ms_per_step', float('nan')):.2f} | {r.get('gemm_ms_per_step', float('nan')):.2f} | "
                     f"{r['first_difference_vs_eager']} / {r['first_difference_vs_reserved']} | {r['prefill_s']:.1f} | "
                     f"{r['warmup_s']:.1f} | {r['dynamo_graphs']} ({r['dynamo_graphs_after_step_3']}) |")
    table = "\n".join(lines)
    kernels = [f"### {r['context']} x {r['batch']}, {r['method']}\n\n| kernel | per step | ms/step |\n|---|---|---|\n"
               + "\n".join(f"| `{k['name'][:70]}` | {k['per_step']:g} | {k['ms_per_step']:.3f} |" for k in r["top_kernels"])
               for r in rows if r.get("top_kernels")]
    (args.out / "decode_graphs_kernels.md").write_text("\n\n".join(kernels) + "\n")
    (args.out / "decode_graphs.md").write_text(f"{header['device']}, bandwidth {bandwidth / 1e12:.2f} TB/s\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
