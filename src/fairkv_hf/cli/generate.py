"""fairkv-generate: answer a prompt with a compressed per-head cache and report what the cache holds."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fairkv_hf import FairKVCache, load_model
from fairkv_hf.models import DEFAULT_MODEL
from fairkv_hf.policies import POLICIES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias, local folder or hub name")
    parser.add_argument("--policy", default="ada_snapkv", choices=sorted(n for n, cls in POLICIES.items() if cls.uses_budget or n == "full"))
    parser.add_argument("--budget", type=int, default=128, help="prompt tokens kept per KV head (window included)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--prompt", help="the user message")
    parser.add_argument("--prompt-file", type=Path, help="read the user message from a file")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if (args.prompt is None) == (args.prompt_file is None):
        raise SystemExit("give exactly one of --prompt or --prompt-file")
    text = args.prompt if args.prompt is not None else args.prompt_file.read_text()
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(args.device)
    cache = FairKVCache(model, policy=args.policy, budget=args.budget, window=args.window)
    start = time.perf_counter()
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=args.max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    prompt_len = inputs["input_ids"].shape[1]
    print(tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True).strip())
    kept = cache.kept_lengths().float()
    config = model.config
    dense = 2 * config.num_hidden_layers * config.num_key_value_heads * out.shape[1] * config.head_dim
    dense *= model.dtype.itemsize
    print(
        f"\n[{args.policy} budget {args.budget}] prompt {prompt_len} tokens, {out.shape[1] - prompt_len} generated in "
        f"{seconds:.1f}s; kept per head: mean {kept.mean():.0f}, min {kept.min():.0f}, max {kept.max():.0f}; "
        f"K/V storage {cache.nbytes() / 2**20:.2f} MiB vs {dense / 2**20:.2f} MiB dense"
    )


if __name__ == "__main__":
    main()
