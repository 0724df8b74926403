"""CPU decode speed: DynamicCache vs FairKVCache full / snapkv / ada_snapkv on the embedded SmolLM2-135M (float32).

Every measurement runs in a fresh process (this script with --worker), on one thread, and times the process CPU time
of `--steps` greedy decode steps after `--warmup` steps (prefill excluded; the garbage collector is off while timing).
The method order is rotated every round; the table gives the median (min-max) over rounds. The prompt is the first
`--prompt-tokens` tokens of the RULER haystack essays; the budget is tokens kept per KV head (25% of the prompt).
  dynamic            DynamicCache + sdpa over the whole prompt
  dynamic-kept       DynamicCache + sdpa holding only the prompt's last `budget` tokens per head: the decode path and
                     K/V bytes that kvpress's SnapKV leaves at this budget (which tokens are kept does not change speed)
  fairkv-full        FairKVCache, nothing evicted
  snapkv, ada_snapkv FairKVCache at `budget` (SnapKV keeps it in every head, Ada-SnapKV the same total, unevenly)
A FairKV method followed by @reference (e.g. snapkv@reference) decodes with the pure-torch reference kernel instead.
"greedy tokens" is a digest of the generated ids: equal digests mean identical outputs.

  python bench/cpu_decode.py --rounds 5 --out bench/results/cpu
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["dynamic", "dynamic-kept", "fairkv-full", "snapkv", "ada_snapkv", "fairkv-full@reference", "snapkv@reference",
           "ada_snapkv@reference"]


def cache_bytes(cache) -> int:
    """Bytes of K/V a cache holds: FairKVCache.nbytes(), or the keys and values of every DynamicCache layer."""
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    return sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)


def worker(method: str, args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process: prefill, `warmup` decode steps, then `steps` timed ones."""
    import torch

    torch.set_num_threads(1)
    name, _, backend = method.partition("@")
    if backend:
        os.environ["FAIRKV_DECODE_BACKEND"] = backend
    sys.path.insert(0, str(ROOT / "src"))
    from transformers import DynamicCache

    from fairkv_hf import FairKVCache, load_model
    from fairkv_hf.eval.ruler import haystack_text

    model, tokenizer = load_model("smollm2-135m-instruct")
    ids = tokenizer(haystack_text(), return_tensors="pt").input_ids[:, : args.prompt_tokens]
    if name.startswith("dynamic"):
        cache = DynamicCache()
    else:
        budget = None if name == "fairkv-full" else args.budget
        cache = FairKVCache(model, policy=name.removeprefix("fairkv-"), budget=budget)
    keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        start = time.process_time()
        logits = model(input_ids=ids, logits_to_keep=1, **{keyword: cache}).logits
        prefill_s = time.process_time() - start
        if name == "dynamic-kept":
            for layer in cache.layers:
                layer.keys = layer.keys[:, :, -args.budget :].clone()
                layer.values = layer.values[:, :, -args.budget :].clone()
        token = logits[:, -1:].argmax(-1)
        generated = []
        gc.collect()
        gc.disable()
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                start = time.process_time()
            position = torch.tensor([[ids.shape[1] + step]])
            logits = model(input_ids=token, position_ids=position, logits_to_keep=1, **{keyword: cache}).logits
            token = logits[:, -1:].argmax(-1)
            generated.append(int(token))
        decode_s = time.process_time() - start
        gc.enable()
    kept = None
    if hasattr(cache, "kept_lengths"):
        lengths = cache.kept_lengths().float()
        kept = dict(mean=lengths.mean().item(), min=lengths.min().item(), max=lengths.max().item())
    return dict(
        method=method, ms_per_token=1000 * decode_s / args.steps, prefill_s=prefill_s, kv_bytes=cache_bytes(cache),
        kept_per_head=kept,
        prompt_tokens=ids.shape[1], tokens_digest=hashlib.sha1(json.dumps(generated).encode()).hexdigest()[:8],
        threads=torch.get_num_threads(),
    )


def run_worker(method: str, args: argparse.Namespace) -> dict:
    """Run `worker` for one method in a fresh Python process (one thread) and return its result."""
    command = [sys.executable, __file__, "--worker", method, "--prompt-tokens", str(args.prompt_tokens),
               "--budget", str(args.budget), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"worker {method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (platform.processor() is often empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    def git(*words: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True).stdout.strip()

    commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return dict(
        device=f"CPU: {cpu_name()} ({os.cpu_count()} logical cores on the machine, 1 thread used)",
        python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
        fairkv_hf_commit=commit + ("+uncommitted changes" if dirty else ""), command="python " + " ".join(sys.argv),
        model="SmolLM2-135M-Instruct (embedded), float32", prompt_tokens=args.prompt_tokens, budget=args.budget,
        decode_steps=args.steps, warmup_steps=args.warmup, rounds=args.rounds,
        load_average_at_start=os.getloadavg(),
    )


def summarise(method: str, results: list[dict]) -> dict:
    per_token = [r["ms_per_token"] for r in results]
    return dict(results[0], ms_per_token=statistics.median(per_token), ms_per_token_min=min(per_token),
                ms_per_token_rounds=per_token, prefill_s=statistics.median(r["prefill_s"] for r in results),
                tokens_digests=sorted({r["tokens_digest"] for r in results}))


# (method, baseline, target): the acceptance ratios of issue 11, and FairKV against kvpress's decode path.
CHECKS = [("ada_snapkv", "snapkv", 1.1), ("fairkv-full", "dynamic", 1.1), ("ada_snapkv", "dynamic-kept", None),
          ("snapkv", "dynamic-kept", None)]
BASELINES = ("dynamic", "dynamic-kept", "snapkv")


def checks(rows: list[dict]) -> list[dict]:
    """CPU time ratios of CHECKS for the methods that ran: of the medians and of the minima over rounds, and the median
    of the ratios within each round (the two runs of a round are close in time, so they share the machine's load)."""
    row = {r["method"]: r for r in rows}
    return [dict(method=m, baseline=b, target=t, median_ratio=row[m]["ms_per_token"] / row[b]["ms_per_token"],
                 min_ratio=row[m]["ms_per_token_min"] / row[b]["ms_per_token_min"],
                 median_round_ratio=statistics.median(
                     x / y for x, y in zip(row[m]["ms_per_token_rounds"], row[b]["ms_per_token_rounds"])))
            for m, b, t in CHECKS if m in row and b in row]


def markdown(meta: dict, rows: list[dict], ratios: list[dict]) -> str:
    by_method = {r["method"]: r for r in rows}
    lines = [f"# CPU decode: {meta['device']}", "", f"`{meta['command']}`", "",
             f"{meta['model']}; python {meta['python']}, torch {meta['torch']}, transformers {meta['transformers']}, "
             f"fairkv_hf {meta['fairkv_hf_commit']}. Prompt {meta['prompt_tokens']} tokens, budget {meta['budget']} "
             f"tokens per KV head. Process CPU time per decode token over {meta['decode_steps']} greedy steps after "
             f"{meta['warmup_steps']} warm-up steps, each measurement in a fresh process on one thread, median "
             f"(min-max) over {meta['rounds']} rounds in rotated order. Load average of the (shared) machine: "
             f"{', '.join(f'{x:.1f}' for x in meta['load_average_at_start'])} at the start, "
             f"{', '.join(f'{x:.1f}' for x in meta['load_average_at_end'])} at the end.", "",
             "| method | ms/token (CPU) | " + " | ".join(f"vs {b}" for b in BASELINES)
             + " | K/V MiB | kept tokens per head, mean (min-max) | greedy tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = r["ms_per_token_rounds"]
        versus = [f"{r['ms_per_token'] / by_method[b]['ms_per_token']:.2f}x" if b in by_method else "-"
                  for b in BASELINES]
        kept = r["kept_per_head"]
        kept_text = f"{kept['mean']:.0f} ({kept['min']:.0f}-{kept['max']:.0f})" if kept else "-"
        lines.append(f"| {r['method']} | {r['ms_per_token']:.1f} ({min(spread):.1f}-{max(spread):.1f}) | "
                     f"{' | '.join(versus)} | {r['kv_bytes'] / 2**20:.1f} | {kept_text} | "
                     f"{', '.join(r['tokens_digests'])} |")
    lines += ["", "| ratio of CPU time per token | of medians | of minima | median of per-round ratios | target |",
              "|---|---|---|---|---|"]
    lines += [f"| {c['method']} / {c['baseline']} | {c['median_ratio']:.2f} | {c['min_ratio']:.2f} | "
              f"{c['median_round_ratio']:.2f} | {'<= ' + str(c['target']) if c['target'] else '-'} |" for c in ratios]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="measurements of every method (order rotated each round)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cpu")
    parser.add_argument("--name", default="cpu_decode")
    parser.add_argument("--worker", metavar="METHOD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    meta = environment(args)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for r in range(args.rounds):
        for method in args.methods[r % len(args.methods):] + args.methods[: r % len(args.methods)]:
            results[method].append(run_worker(method, args))
            print(json.dumps(dict(round=r, **results[method][-1])), flush=True)
    meta["load_average_at_end"] = os.getloadavg()
    rows = [summarise(m, results[m]) for m in args.methods]
    ratios = checks(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(dict(meta=meta, rows=rows, checks=ratios), indent=1) + "\n")
    text = markdown(meta, rows, ratios)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
