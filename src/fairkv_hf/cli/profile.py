"""fairkv-profile: measure a head load profile (mean kept tokens per layer and KV head) with FairKVCache.

Each calibration prompt is prefilled alone through a FairKVCache with the chosen policy and budget; the
kept lengths are averaged into a HeadLoadProfile (the input of fairkv-plan). Calibration data: a jsonl file
(LongBench records: `context` + `input`, or any records with a `text` field) or a folder of .txt files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fairkv_hf import FairKVCache, load_model
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.models import DEFAULT_MODEL
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.policies import POLICIES


def read_prompts(path: Path, limit: int) -> list[str]:
    """Up to `limit` calibration texts from a jsonl file or a folder of .txt files."""
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"{path} holds no .txt files; give a jsonl file or a folder of .txt files")
        return [f.read_text() for f in files[:limit]]
    texts = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "text" in record:
                texts.append(record["text"])
            elif "context" in record:
                texts.append(f"{record['context']}\n\n{record.get('input', '')}")
            else:
                raise ValueError(f"{path}: records need a 'text' field or LongBench's 'context' (+ 'input')")
            if len(texts) == limit:
                break
    return texts


@torch.no_grad()
def measure(model, tokenizer, prompts: list[str], policy: str, budget: int, window: int, max_length: int) -> list[torch.Tensor]:
    """kept_lengths() [layers, 1, kv_heads] after prefilling each prompt (its last `max_length` tokens)."""
    kept = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt").input_ids[:, -max_length:].to(model.device)
        cache = FairKVCache(model, policy=policy, budget=budget, window=window)
        model(input_ids=ids, **cache_kwarg(cache), logits_to_keep=1)
        kept.append(cache.kept_lengths())
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fairkv-profile", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--policy", default="ada_snapkv", choices=sorted(POLICIES))
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--data", type=Path, required=True, help="jsonl file or folder of .txt files")
    parser.add_argument("--records", type=int, default=16, help="calibration prompts to use")
    parser.add_argument("--max-length", type=int, default=4096, help="prompt tokens kept (the last ones)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    parser.add_argument("--samples", type=Path, help="also write every prompt's kept lengths [layers][kv_heads] as JSON")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    prompts = read_prompts(args.data, args.records)
    kept = measure(model, tokenizer, prompts, args.policy, args.budget, args.window, args.max_length)
    profile = HeadLoadProfile.from_kept_lengths(args.model, model.config, kept, args.budget)
    profile.save(args.out)
    if args.samples:
        args.samples.write_text(json.dumps([k[:, 0].tolist() for k in kept]))
    per_head = torch.stack([k[:, 0].float() for k in kept]).mean(0)
    print(f"{len(prompts)} prompts; kept tokens per KV head: mean {per_head.mean():.1f}, min {per_head.min():.1f}, "
          f"max {per_head.max():.1f}; profile written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
