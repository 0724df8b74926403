"""fairkv-generate: answer prompts with a compressed per-head cache, on one process or head-parallel on several.

One process: `fairkv-generate --prompt "..."`. Several (one per GPU, or CPU processes with gloo):
`torchrun --nproc-per-node N $(which fairkv-generate) --plan {standard|best_effort|fairkv|PLAN.json} ...`, or the
same under `accelerate launch`. Rank 0 prints the answers and writes --out. On GPUs, `--cuda-graphs` decodes at GPU
speed: the fused decode step (fairkv_hf.fusion) replayed from CUDA graphs (fairkv_hf.graphs), with --max-new-tokens
reserved at prefill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from fairkv_hf import FairKVCache, load_model
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.fusion import fuse_decode_ops
from fairkv_hf.graphs import enable_cuda_graphs
from fairkv_hf.models import DEFAULT_MODEL
from fairkv_hf.parallel import PLAN_NAMES, prepare
from fairkv_hf.parallel.collectives import launched_world_size
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.policies import POLICIES


class StepClock(LogitsProcessor):
    """Records the time each new token's logits are ready (the first right after the prefill). With sync=False it
    records when generate() asks for them, without waiting for the GPU: generate() itself waits once per step, so
    the steady-state intervals are the step period of an undisturbed generate() (the sync would add idle time)."""

    def __init__(self, device: torch.device, sync: bool = True):
        self.device = device
        self.sync = sync
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias, local folder or hub name")
    parser.add_argument("--policy", default="ada_snapkv", choices=sorted(n for n, cls in POLICIES.items() if cls.uses_budget or n == "full"))
    parser.add_argument("--budget", type=int, default=128, help="prompt tokens kept per KV head (window included)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--prompt", help="the user message")
    parser.add_argument("--prompt-file", type=Path,
                        help="a text file (one prompt) or a .jsonl file (one prompt per line: a JSON string or {\"prompt\": ...})")
    parser.add_argument("--no-chat-template", action="store_true", help="tokenize the prompts as they are")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", help="default: this rank's GPU when CUDA is available, else the CPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="GPU only: the fused decode step replayed from CUDA graphs (reserves --max-new-tokens)")
    parser.add_argument("--plan", default="standard",
                        help=f"head placement over the launched processes: one of {', '.join(PLAN_NAMES)}, a plan file "
                             "(fairkv-plan --out) or a head device map JSON; ignored on one process unless it is a file")
    parser.add_argument("--profile", type=Path, help="head load profile (fairkv-profile --out) for --plan best_effort/fairkv")
    parser.add_argument("--plan-batch", type=int, help="batch size the named plan optimises for (default: the number of prompts)")
    parser.add_argument("--mlp", default="split", choices=["split", "replicate"], help="MLP and lm_head split over the ranks or whole on each")
    parser.add_argument("--seed", type=int, default=0, help="random seed, the same on every rank")
    parser.add_argument("--out", type=Path, help="write token ids, timings and the plan's figures here as JSON (rank 0)")
    return parser


def _prompts(args: argparse.Namespace) -> list[str]:
    """The prompts of --prompt or --prompt-file; errors say which line is wrong."""
    if args.prompt is not None:
        return [args.prompt]
    text = args.prompt_file.read_text(encoding="utf-8")
    if args.prompt_file.suffix != ".jsonl":
        return [text]
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{args.prompt_file} line {number}: not JSON ({err.msg})") from None
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise ValueError(f"{args.prompt_file} line {number}: expected a JSON string or an object with a \"prompt\" string")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{args.prompt_file} holds no prompt")
    return prompts


def _check(args: argparse.Namespace) -> None:
    """Reject bad options before any model is loaded."""
    if (args.prompt is None) == (args.prompt_file is None):
        raise ValueError("give exactly one of --prompt or --prompt-file")
    if args.prompt_file is not None and not args.prompt_file.is_file():
        raise ValueError(f"--prompt-file {args.prompt_file} does not exist")
    for name in ("budget", "window", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.plan_batch is not None and args.plan_batch < 1:
        raise ValueError(f"--plan-batch must be a positive integer, got {args.plan_batch}")
    if args.plan not in PLAN_NAMES and not Path(args.plan).is_file():
        raise ValueError(f"--plan {args.plan!r} is neither one of {', '.join(PLAN_NAMES)} nor an existing file")
    if args.plan in ("best_effort", "fairkv") and args.profile is None and launched_world_size() > 1:
        raise ValueError(f"--plan {args.plan} balances measured head loads: pass --profile PROFILE.json "
                         f"(fairkv-profile --policy {args.policy} --budget {args.budget} --out PROFILE.json)")
    if args.profile is not None and not args.profile.is_file():
        raise ValueError(f"--profile {args.profile} does not exist")
    if args.cuda_graphs and (not torch.cuda.is_available() or (args.device or "cuda").split(":")[0] != "cuda"):
        raise ValueError("--cuda-graphs replays decode steps on a GPU: run on a CUDA device (drop --cuda-graphs on "
                         "the CPU)")


def run(args: argparse.Namespace) -> dict:
    """Generate for every prompt in one batch; the report rank 0 writes."""
    prompts = _prompts(args)
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    profile = HeadLoadProfile.load(args.profile) if args.profile is not None else None
    world_size = launched_world_size()
    if world_size > 1 or Path(args.plan).is_file():
        model = prepare(model, args.plan, profile=profile, batch=args.plan_batch or len(prompts), mlp=args.mlp,
                        device=args.device)
    else:
        model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.no_chat_template:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    else:
        chats = [[{"role": "user", "content": p}] for p in prompts]
        inputs = tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                               padding=True)
    inputs = inputs.to(model.device)
    if args.cuda_graphs:
        fuse_decode_ops(model)
        enable_cuda_graphs(model)
    cache = FairKVCache(model, policy=args.policy, budget=args.budget, window=args.window,
                        max_new_tokens=args.max_new_tokens if args.cuda_graphs else None)
    clock = StepClock(model.device, sync=not args.cuda_graphs)  # a per-step sync would idle the replayed steps
    start = time.perf_counter()
    out = model.generate(**inputs, **cache_kwarg(cache), max_new_tokens=args.max_new_tokens, do_sample=False,
                         logits_processor=LogitsProcessorList([clock]), pad_token_id=tokenizer.pad_token_id)
    prompt_len = inputs["input_ids"].shape[1]
    kept = cache.kept_lengths().float()
    new = out[:, prompt_len:]
    steps = len(clock.times) - 1
    plan = getattr(model, "fairkv_plan", None)
    return {
        "model": args.model, "policy": args.policy, "budget": args.budget, "window": args.window, "dtype": args.dtype,
        "world_size": world_size, "device": str(model.device), "plan": args.plan,
        "plan_kind": plan.kind if plan is not None else "single_process",
        "plan_figures": plan.figures() if plan is not None else None,
        "prompt_tokens": inputs["attention_mask"].sum(-1).tolist(),
        "generated_ids": new.tolist(),
        "texts": tokenizer.batch_decode(new, skip_special_tokens=True),
        "prefill_s": clock.times[0] - start,
        "decode_tokens_per_s": len(prompts) * steps / (clock.times[-1] - clock.times[0]) if steps > 0 else None,
        # without decode steps 1-3 (warm-up: kernel compilation, graph capture), when there are more
        "steady_tokens_per_s": len(prompts) * (steps - 3) / (clock.times[-1] - clock.times[3]) if steps > 3 else None,
        "kept_per_head": {"mean": kept.mean().item(), "min": kept.min().item(), "max": kept.max().item()},
        "kv_bytes_this_rank": cache.nbytes(),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check(args)
        report = run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fairkv-generate: {err}", file=sys.stderr)
        return 2
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        for text in report["texts"]:
            print(text.strip())
        print(f"\n[{report['policy']} budget {report['budget']}, plan {report['plan_kind']} on {report['world_size']} "
              f"process(es)] prefill {report['prefill_s']:.2f}s, decode {report['decode_tokens_per_s'] or 0:.1f} tokens/s "
              f"({report['steady_tokens_per_s'] or 0:.1f} after 3 warm-up steps); "
              f"kept per head: mean {report['kept_per_head']['mean']:.0f}, max {report['kept_per_head']['max']:.0f}")
        if args.out is not None:
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
