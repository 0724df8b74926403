"""Single-GPU decode speed and memory: a random-weight Llama-3.1-8B-shaped model (bf16), full vs compressed caches.

Methods, each run side by side in one process on the same prompts (random token ids, no padding):
  dynamic            transformers DynamicCache + sdpa (the full-cache baseline)
  fairkv-full        FairKVCache, policy "full" (same store and kernels, nothing evicted)
  snapkv-B, ada-B    FairKVCache with SnapKV / Ada-SnapKV at budget B
  masked-ada-B       kvpress-style masking: a full DynamicCache whose evicted positions are masked out of sdpa
                     (the same Ada-SnapKV choice; saves no memory, reads every byte)
Per method: prefill time, decode ms/step (median over the timed steps) and tokens/s, peak memory above the
weights, and cache bytes. HF eager decoding is launch-bound, so host noise moves whole runs (seen: +20 ms/step
for some runs of any method on an H200 host): with --rounds R every method runs R times, the method order rotated
each round, and the table gives the median over rounds with the min-max range. The garbage collector is off
while decode steps are timed. A second part times `FairKVLayer._append` alone over 512 steps (amortized O(1) check).

  python bench/single_gpu.py --contexts 8192 32768 --batches 1 8 32 --out bench/results
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from fairkv_hf import FairKVCache, get_policy  # noqa: E402
from fairkv_hf.cache import FairKVLayer  # noqa: E402
from fairkv_hf.compat import cache_kwarg  # noqa: E402

LLAMA_31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rope_theta=500000.0,
)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
POLICY_NAMES = {"ada": "ada_snapkv", "snapkv": "snapkv"}


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def memory_allocated() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


def masked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Masking baseline: dense sdpa over the full cache, evicted positions masked per KV head."""
    q_len, k_len = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    if q_len > 1:
        valid = torch.ones(query.shape[0], k_len, dtype=torch.bool, device=query.device)
        module.keep = module.policy.keep_mask(query, key, valid, scaling, module.budget, module.window, module.layer_idx)
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2), None
    module.keep = F.pad(module.keep, (0, k_len - module.keep.shape[-1]), value=True)
    mask = module.keep.repeat_interleave(group, dim=1)[:, :, None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2), None


def build_model(layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(**{**LLAMA_31_8B, "num_hidden_layers": layers})
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def make_cache(model, method: str):
    """Cache object for a method name, and set the model's attention accordingly."""
    if method == "dynamic":
        model.set_attn_implementation("sdpa")
        return DynamicCache()
    if method == "fairkv-full":
        return FairKVCache(model, policy="full")
    if method.startswith("masked-"):
        policy, budget = method.removeprefix("masked-").rsplit("-", 1)
        for layer in model.model.layers:
            attn = layer.self_attn
            attn.policy, attn.budget, attn.window = get_policy(POLICY_NAMES[policy]), int(budget), 32
        model.set_attn_implementation("masked_kv")
        return DynamicCache()
    policy, budget = method.rsplit("-", 1)
    return FairKVCache(model, policy=POLICY_NAMES[policy], budget=int(budget))


def cache_bytes(cache) -> int:
    if isinstance(cache, FairKVCache):
        return cache.nbytes()
    return sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)


@torch.no_grad()
def run_method(model, method: str, ids: torch.Tensor, steps: int, warmup: int) -> dict:
    sync()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = memory_allocated()
    cache = make_cache(model, method)
    sync()
    start = time.perf_counter()
    logits = model(input_ids=ids, **cache_kwarg(cache), logits_to_keep=1).logits
    sync()
    prefill_s = time.perf_counter() - start
    token = logits[:, -1].argmax(-1, keepdim=True)
    times = []
    gc.collect()
    gc.disable()
    for step in range(warmup + steps):
        sync()
        start = time.perf_counter()
        logits = model(input_ids=token, **cache_kwarg(cache), logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    gc.enable()
    step_ms = 1000 * statistics.median(times)
    result = dict(
        method=method, prefill_s=prefill_s, decode_ms_per_step=step_ms, decode_tokens_per_s=ids.shape[0] * 1000 / step_ms,
        peak_gib_above_weights=((torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0) - base) / 2**30, cache_gib=cache_bytes(cache) / 2**30,
    )
    del cache, logits
    return result


@torch.no_grad()
def check_against_dynamic(model, length: int = 512, steps: int = 8) -> dict:
    """FairKVCache "full" vs DynamicCache on this device: greedy tokens and max |logit difference| over `steps`."""
    ids = torch.randint(0, model.config.vocab_size, (2, length), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
    runs = {}
    for method in ("dynamic", "fairkv-full"):
        cache = make_cache(model, method)
        logits = model(input_ids=ids, **cache_kwarg(cache), logits_to_keep=1).logits[:, -1]
        tokens, all_logits = [], [logits]
        for _ in range(steps):
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
            logits = model(input_ids=token, **cache_kwarg(cache), logits_to_keep=1).logits[:, -1]
            all_logits.append(logits)
        runs[method] = (torch.cat(tokens, 1), torch.stack(all_logits).float())
        model.set_attn_implementation("sdpa")
    diff = (runs["dynamic"][1] - runs["fairkv-full"][1]).abs().max().item()
    scale = runs["dynamic"][1].abs().max().item()
    return dict(same_tokens=bool(torch.equal(runs["dynamic"][0], runs["fairkv-full"][0])), max_abs_logit_diff=diff,
                max_abs_logit=scale)


def run_config(model, context: int, batch: int, methods: list[str], steps: int, warmup: int, rounds: int) -> list[dict]:
    """Every method `rounds` times (order rotated per round); one row per method with the median over rounds."""
    gen = torch.Generator(device=DEVICE).manual_seed(context + batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=DEVICE, generator=gen)
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(rounds):
        for method in methods[r % len(methods):] + methods[: r % len(methods)]:
            try:
                row = run_method(model, method, ids, steps, warmup)
            except torch.OutOfMemoryError:
                row = dict(method=method, note="out of memory")
                torch.cuda.empty_cache()
            model.set_attn_implementation("sdpa")
            runs[method].append(row)
            print(json.dumps(dict(context=context, batch=batch, round=r, **row)), flush=True)
    rows = []
    for method, results in runs.items():
        done = [x for x in results if "decode_ms_per_step" in x]
        if not done:
            rows.append(dict(context=context, batch=batch, **results[0]))
            continue
        step_ms = [x["decode_ms_per_step"] for x in done]
        rows.append(dict(
            context=context, batch=batch, **done[0] | dict(
                prefill_s=statistics.median(x["prefill_s"] for x in done), decode_ms_per_step=statistics.median(step_ms),
                decode_tokens_per_s=batch * 1000 / statistics.median(step_ms), decode_ms_rounds=step_ms,
                peak_gib_above_weights=max(x["peak_gib_above_weights"] for x in done))))
    return rows


@torch.no_grad()
def append_cost(batch: int, kv_heads: int, mean_len: int, steps: int) -> dict:
    """Time FairKVLayer._append alone per step over `steps` tokens (Ada-like skewed lengths, bf16, head_dim 128)."""
    layer = FairKVLayer(0, get_policy("full"), None, 32)
    gen = torch.Generator().manual_seed(0)
    draw = torch.empty(batch * kv_heads).log_normal_(0, 1, generator=gen)
    lengths = (draw / draw.mean() * mean_len).long().clamp(1, 8 * mean_len)
    width = int(lengths.max())
    keys = torch.randn(batch, kv_heads, width, 128, device=DEVICE, dtype=torch.bfloat16)
    keep = (torch.arange(width)[None, :] >= width - lengths[:, None]).view(batch, kv_heads, width).to(DEVICE)
    layer.lazy_initialization(keys, keys)
    layer.store(keys, keys, keep)
    new = torch.randn(batch, kv_heads, 1, 128, device=DEVICE, dtype=torch.bfloat16)
    wall, grows = [], []
    for _ in range(steps):
        capacity = layer.k_pool.shape[0]
        sync()
        start = time.perf_counter()
        layer._append(new, new)
        sync()
        wall.append(1e6 * (time.perf_counter() - start))
        grows.append(layer.k_pool.shape[0] != capacity)
    windows = [
        dict(steps=f"{w}-{w + 63}", median_us=statistics.median(wall[w : w + 64]), max_us=max(wall[w : w + 64]),
             pool_grows=sum(grows[w : w + 64]))
        for w in range(0, steps, 64)
    ]
    return dict(batch=batch, kv_heads=kv_heads, mean_len=mean_len, windows=windows)


def environment(args: argparse.Namespace) -> dict:
    return dict(
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", torch=torch.__version__, transformers=transformers.__version__,
        command="python " + " ".join(sys.argv), model_shape=dict(LLAMA_31_8B, num_hidden_layers=args.layers),
        dtype="bfloat16", decode_steps=args.steps, warmup_steps=args.warmup, rounds=args.rounds,
    )


def markdown(meta: dict, rows: list[dict], append: list[dict]) -> str:
    lines = [f"# Single-GPU decode: {meta['device']}", "", f"`{meta['command']}`", "",
             f"torch {meta['torch']}, transformers {meta['transformers']}, Llama-3.1-8B shape "
             f"({meta['model_shape']['num_hidden_layers']} layers), bf16, random weights, random prompts; decode = median "
             f"of {meta['decode_steps']} steps after {meta['warmup_steps']} warm-up steps, median (min-max) over "
             f"{meta.get('rounds', 1)} rounds.", "",
             "| context | batch | method | prefill s | decode ms/step | tokens/s | speedup vs dynamic | peak GiB above weights | cache GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {(r["context"], r["batch"]): r for r in rows if r["method"] == "dynamic" and "decode_ms_per_step" in r}
    for r in rows:
        if "decode_ms_per_step" not in r:
            lines.append(f"| {r['context']} | {r['batch']} | {r['method']} | {r.get('note', '')} | | | | | |")
            continue
        ref = base.get((r["context"], r["batch"]))
        speed = f"{ref['decode_ms_per_step'] / r['decode_ms_per_step']:.2f}x" if ref else "-"
        spread = r.get("decode_ms_rounds", [r["decode_ms_per_step"]])
        lines.append(
            f"| {r['context']} | {r['batch']} | {r['method']} | {r['prefill_s']:.2f} | {r['decode_ms_per_step']:.2f} "
            f"({min(spread):.1f}-{max(spread):.1f}) | "
            f"{r['decode_tokens_per_s']:.0f} | {speed} | {r['peak_gib_above_weights']:.2f} | {r['cache_gib']:.2f} |"
        )
    for a in append:
        lines += ["", f"## Append cost per step (FairKVLayer._append alone; batch {a['batch']} x {a['kv_heads']} KV heads, "
                  f"mean kept {a['mean_len']})", "", "| steps | median us (synchronized wall) | max us | pool grows |", "|---|---|---|---|"]
        lines += [f"| {w['steps']} | {w['median_us']:.1f} | {w['max_us']:.1f} | {w['pool_grows']} |" for w in a["windows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=[
        "dynamic", "fairkv-full", "snapkv-256", "snapkv-1024", "snapkv-2048", "ada-256", "ada-1024", "ada-2048",
        "masked-ada-1024"])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every method per shape (order rotated)")
    parser.add_argument("--skip", nargs="*", default=["32768x32"], help="CONTEXTxBATCH pairs not run (state why)")
    parser.add_argument("--append-steps", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--name", default="single_gpu")
    args = parser.parse_args()
    AttentionInterface.register("masked_kv", masked_attention)
    AttentionMaskInterface.register("masked_kv", flash_attention_mask)
    meta = environment(args)
    model = build_model(args.layers)
    warm = torch.randint(0, 1000, (2, 256), device=DEVICE)
    for method in ("dynamic", "ada-128"):
        run_method(model, method, warm, 2, 1)
    meta["check_fairkv_full_vs_dynamic"] = check_against_dynamic(model)
    print(json.dumps(meta["check_fairkv_full_vs_dynamic"]), flush=True)
    rows = []
    for context in args.contexts:
        for batch in args.batches:
            if f"{context}x{batch}" in args.skip:
                rows.append(dict(context=context, batch=batch, method="all", note="skipped (--skip)"))
                continue
            rows += run_config(model, context, batch, args.methods, args.steps, args.warmup, args.rounds)
    del model
    torch.cuda.empty_cache()
    append = [append_cost(8, 8, 1024, args.append_steps)] if args.append_steps else []
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(dict(meta=meta, rows=rows, append=append), indent=1))
    text = markdown(meta, rows, append)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
