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
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fairkv_hf import FairKVCache, load_model
from fairkv_hf.cli.common import ArgumentParser, UsageError, device_arg, positive_int, run_command
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.eval.methods import budget_policies
from fairkv_hf.files import atomic_write
from fairkv_hf.models import DEFAULT_MODEL
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.policies import POLICIES


def read_prompts(path: Path, limit: int) -> list[str]:
    """Up to `limit` calibration texts from a jsonl file or a folder of .txt files.

    ValueError (naming the file, and the line for jsonl) when the data holds no usable text.
    """
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"{path} holds no .txt files; give a jsonl file or a folder of .txt files")
        return [f.read_text() for f in files[:limit]]
    texts = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not JSON ({err}): give one JSON record per line") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number}: records must be JSON objects with a 'text' or 'context' field")
            if "text" in record:
                texts.append(record["text"])
            elif "context" in record:
                texts.append(f"{record['context']}\n\n{record.get('input', '')}")
            else:
                raise ValueError(f"{path}: records need a 'text' field or LongBench's 'context' (+ 'input')")
            if len(texts) == limit:
                break
    if not texts:
        raise ValueError(f"{path} holds no records: give a jsonl file with one JSON record per line")
    return texts


@torch.no_grad()
def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], policy: str, budget: int,
            window: int, max_length: int) -> list[torch.Tensor]:
    """kept_lengths() [layers, 1, kv_heads] after prefilling each prompt (its last `max_length` tokens)."""
    kept = []
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt").input_ids[:, -max_length:].to(model.device)
        cache = FairKVCache(model, policy=policy, budget=budget, window=window)
        model(input_ids=ids, **cache_kwarg(cache), logits_to_keep=1)
        kept.append(cache.kept_lengths())
    return kept


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fairkv-profile", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--policy", default="ada_snapkv", choices=sorted(POLICIES),
                        help="a policy that runs on --budget (head_budgets and duoattention come from published tables: "
                             "use fairkv-plan --headkv / --duoattention on those tables instead)")
    parser.add_argument("--budget", type=positive_int, required=True)
    parser.add_argument("--window", type=positive_int, default=32)
    parser.add_argument("--data", type=Path, required=True, help="jsonl file or folder of .txt files")
    parser.add_argument("--records", type=positive_int, default=16, help="calibration prompts to use")
    parser.add_argument("--max-length", type=positive_int, default=4096, help="prompt tokens kept (the last ones)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, required=True, help="profile JSON to write")
    parser.add_argument("--samples", type=Path, help="also write every prompt's kept lengths [layers][kv_heads] as JSON")
    return parser


def _check(args: argparse.Namespace) -> list[str]:
    """Everything but the model: the policy, budget, output folders and the calibration prompts, which it returns."""
    if not POLICIES[args.policy].uses_budget and args.policy != "full":
        raise UsageError(f"--policy {args.policy} takes its per-head token counts from a published table, not from --budget: "
                         "make the profile from that table with fairkv-plan --duoattention GATES.tsv or --headkv "
                         f"SCORES.json, or profile one of {', '.join(budget_policies())}")
    if POLICIES[args.policy].uses_budget and args.window > args.budget:
        raise UsageError(f"--window {args.window} exceeds --budget {args.budget}: the window is part of the budget")
    for option, path in (("--out", args.out), ("--samples", args.samples)):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{option} {path}: the folder {path.parent} does not exist")
    if not args.data.exists():
        raise UsageError(f"--data {args.data} does not exist: give a jsonl file or a folder of .txt files")
    try:
        return read_prompts(args.data, args.records)
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"--data: {err}") from err


def _profile(args: argparse.Namespace) -> None:
    prompts = _check(args)
    try:
        model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    except FileNotFoundError as err:
        raise UsageError(f"--model: {err}") from err
    kept = measure(model, tokenizer, prompts, args.policy, args.budget, args.window, args.max_length)
    profile = HeadLoadProfile.from_kept_lengths(args.model, model.config, kept, args.budget)
    profile.save(args.out)
    if args.samples:
        atomic_write(args.samples, json.dumps([k[:, 0].tolist() for k in kept]))
    per_head = torch.stack([k[:, 0].float() for k in kept]).mean(0)
    print(f"{len(prompts)} prompts; kept tokens per KV head: mean {per_head.mean():.1f}, min {per_head.min():.1f}, "
          f"max {per_head.max():.1f}; profile written to {args.out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fairkv-profile``: 0 on success, 2 (one line on stderr) for a mistake in the input."""
    args = _parser().parse_args(argv)
    return run_command("fairkv-profile", lambda: _profile(args))


if __name__ == "__main__":
    raise SystemExit(main())
