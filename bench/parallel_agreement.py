"""Head-parallel agreement on GPUs: the tokens of N ranks against one GPU, and where they part, why.

Launch: torchrun --nproc-per-node 2 bench/parallel_agreement.py --out DIR [--smollm2-gguf FILE --prompts FILE]

For each model (the real SmolLM2-135M-Instruct from its GGUF file, bf16 and float32; a random-weight Llama-3.1-8B
shape, bf16, and at 8 layers in float32 as the control that shows bf16 divergences are numerical), rank 0 first generates on its GPU alone (the reference, logits kept), then every rank runs the same
batch head-parallel under three plans: standard (contiguous KV heads), fairkv (planned from the kept lengths the
reference just measured: the balance the planner gets on this very input) and replicated (head 0 of every layer on
every rank, batch rows split). Where a sequence's tokens differ from the reference, the first differing step is
reported with the reference's logit gap between the two tokens and the largest logit difference between the runs
at that step: a gap smaller than the run-to-run difference is a near-tie flipped by summation order (bf16 sums of
o_proj, MLP and split-K attention in another order), not a bug. Prints a table; writes JSON and markdown.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LogitsProcessorList

import fairkv_hf  # noqa: F401  (registers the "fairkv" attention)
from fairkv_hf import FairKVCache, parallel
from fairkv_hf.cli.generate import StepClock
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.graphs import enable_cuda_graphs
from fairkv_hf.placement.plans import make_plan
from fairkv_hf.placement.profile import HeadLoadProfile


def llama8b_config(layers: int) -> LlamaConfig:
    """Llama-3.1-8B's attention and MLP shape (random weights: throughput and agreement do not need real ones)."""
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def build(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer or None), identical on every rank: real weights from the GGUF, or seeded random ones."""
    torch.manual_seed(0)
    if name.startswith("smollm2"):
        path = Path(args.smollm2_gguf)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        return model.to(device).eval(), tokenizer
    layers = args.fp32_layers if dtype == torch.float32 else args.layers
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(llama8b_config(layers), dtype=dtype, attn_implementation="sdpa")
    return model.eval(), None


def inputs_for(name: str, tokenizer, args: argparse.Namespace, device: torch.device) -> dict:
    """A left-padded batch: LongBench prompts for SmolLM2, random token ids of uneven lengths for the 8B shape."""
    if tokenizer is not None:
        prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines()][: args.batch]
        tokenizer.padding_side = "left"
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        chats = [[{"role": "user", "content": p}] for p in prompts]
        return tokenizer.apply_chat_template(chats, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                             padding=True).to(device)
    gen = torch.Generator().manual_seed(1)
    lengths = [args.context - 97 * i for i in range(args.batch)]
    ids = torch.zeros(args.batch, args.context, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, -n:] = torch.randint(10, 128000, (n,), generator=gen)
        mask[row, -n:] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def generate(model, inputs: dict, args: argparse.Namespace, reserve: bool = False) -> dict:
    """Greedy generation with logits kept; prefill seconds, decode tokens/s and median ms per step (steps after the
    third, so a CUDA-graph capture is not counted). `reserve` reserves the decode capacity (graphable steps)."""
    cache = FairKVCache(model, policy=args.policy, budget=args.budget,
                        max_new_tokens=args.new_tokens if reserve else None)
    clock = StepClock(model.device)
    marks = clock.times
    start = time.perf_counter()
    out = model.generate(**inputs, **cache_kwarg(cache), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                         do_sample=False, output_logits=True, return_dict_in_generate=True,
                         logits_processor=LogitsProcessorList([clock]))
    width = inputs["input_ids"].shape[1]
    return {"tokens": out.sequences[:, width:].cpu(), "logits": torch.stack(out.logits, 1).float().cpu(),
            "kept": cache.kept_lengths(), "prefill_s": marks[0] - start,
            "ms_per_step": 1e3 * statistics.median(b - a for a, b in zip(marks[3:], marks[4:])),
            "decode_tok_s": inputs["input_ids"].shape[0] * (len(marks) - 1) / (marks[-1] - marks[0])}


def compare(ref: dict, run: dict) -> dict:
    """Sequences identical, and for the others the first differing step with the logit gaps there."""
    rows = []
    for b in range(ref["tokens"].shape[0]):
        differ = (ref["tokens"][b] != run["tokens"][b]).nonzero()
        if not len(differ):
            continue
        t = int(differ[0])
        r, p = int(ref["tokens"][b, t]), int(run["tokens"][b, t])
        lr, lp = ref["logits"][b, t], run["logits"][b, t]
        rows.append({"row": b, "step": t, "ref_gap": float(lr[r] - lr[p]), "run_gap": float(lp[p] - lp[r]),
                     "max_logit_diff": float((lr - lp).abs().max())})
    first = ref["logits"][:, 0] - run["logits"][:, 0]
    return {"identical": ref["tokens"].shape[0] - len(rows), "divergences": rows,
            "step0_max_logit_diff": float(first.abs().max()), "kept_equal": bool(torch.equal(ref["kept"], run["kept"]))}


def replicated_map(config) -> dict:
    """Head 0 of every layer on every rank (batch rows split), the other heads split contiguously."""
    world = dist.get_world_size()
    heads = config.num_key_value_heads
    owner = [min(h * world // heads, world - 1) for h in range(heads)]
    return {f"model.layers.{l}.self_attn.kv_heads.{h}": list(range(world)) if h == 0 else owner[h]
            for l in range(config.num_hidden_layers) for h in range(heads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-bf16,smollm2-fp32,llama8b-bf16,llama8b-fp32")
    parser.add_argument("--smollm2-gguf", default=".carry/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--prompts", default=".carry/prompts.jsonl")
    parser.add_argument("--policy", default="ada_snapkv")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=4096, help="prompt tokens of the random-weight model")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=32, help="depth of the random-weight model (32 = Llama-3.1-8B)")
    parser.add_argument("--graphs", action="store_true", help="also run every plan with reserved capacity, eagerly and "
                        "replayed from CUDA graphs (NCCL inside the graphs): same tokens, ms per step")
    parser.add_argument("--fp32-layers", type=int, default=8, help="its depth in float32 (the control run; memory)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    results = []
    for name in args.models.split(","):
        dtype = torch.float32 if name.endswith("fp32") else torch.bfloat16
        full, tokenizer = build(name, args, device, dtype)
        inputs = inputs_for(name, tokenizer, args, device)
        ref = generate(full, inputs, args) if rank == 0 else None
        kept = [ref["kept"] if rank == 0 else None]
        dist.broadcast_object_list(kept, src=0)
        profile = HeadLoadProfile.from_kept_lengths(name, full.config, kept, args.budget)
        plans = {"standard": "standard", "fairkv": make_plan(profile, world, args.batch),
                 "replicated": replicated_map(full.config)}
        for plan_name, plan in plans.items():
            model = parallel.prepare(copy.deepcopy(full), plan, profile=profile, batch=args.batch, device=device)
            run = generate(model, inputs, args)
            graphs = {}
            if args.graphs:
                graphed = enable_cuda_graphs(model)
                model.fairkv_graphs_off = True
                eager = generate(model, inputs, args, reserve=True)
                model.fairkv_graphs_off = False
                replayed = generate(model, inputs, args, reserve=True)
                graphs = {"graphs_tokens_equal_eager_reserved": bool(torch.equal(eager["tokens"], replayed["tokens"])),
                          "eager_reserved_ms_per_step": eager["ms_per_step"], "graphs_ms_per_step": replayed["ms_per_step"],
                          "graph_replays": graphed.replays}
            if rank == 0:
                resolved = model.fairkv_plan
                copies = sum(len(h) - 1 for layer in resolved.layers for h in layer)
                entry = {"model": name, "plan": plan_name, "copies": copies, "batch": args.batch,
                         "prompt_tokens": inputs["attention_mask"].sum(-1).tolist(), **compare(ref, run),
                         "one_gpu_decode_tok_s": ref["decode_tok_s"], "decode_tok_s": run["decode_tok_s"],
                         "one_gpu_prefill_s": ref["prefill_s"], "prefill_s": run["prefill_s"],
                         "predicted_balance": resolved.figures()["balance"], **graphs}
                results.append(entry)
            del model
        del full
    if rank == 0:
        write(results, args, world)
    dist.destroy_process_group()


def write(results: list[dict], args: argparse.Namespace, world: int) -> None:
    """JSON with the device and versions, a markdown table, and the table printed last."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    header = {"device": device, "gpus": world, "torch": torch.__version__,
              "transformers": transformers.__version__, "policy": args.policy, "budget": args.budget,
              "new_tokens": args.new_tokens,
              "command": f"torchrun --nproc-per-node {world} bench/parallel_agreement.py --out DIR"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parallel_agreement.json").write_text(json.dumps({**header, "results": results}, indent=1) + "\n")
    lines = ["| model | plan | copies | identical | first divergence (row: step, ref gap / max diff) | step-0 max logit diff | "
             "kept equal | decode tok/s 1 GPU -> N |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        div = "; ".join(f"{d['row']}: {d['step']}, {d['ref_gap']:.3f} / {d['max_logit_diff']:.3f}" for d in r["divergences"]) or "-"
        lines.append(f"| {r['model']} | {r['plan']} | {r['copies']} | {r['identical']}/{r['batch']} | {div} | "
                     f"{r['step0_max_logit_diff']:.4f} | {r['kept_equal']} | {r['one_gpu_decode_tok_s']:.1f} -> {r['decode_tok_s']:.1f} |")
    if any("graphs_ms_per_step" in r for r in results):
        lines += ["", "| model | plan | graphs tokens = eager (reserved) | ms/step eager (reserved) -> graphs |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['plan']} | {r['graphs_tokens_equal_eager_reserved']} | "
                  f"{r['eager_reserved_ms_per_step']:.2f} -> {r['graphs_ms_per_step']:.2f} |" for r in results]
    table = "\n".join(lines)
    (args.out / "parallel_agreement.md").write_text(f"{device} x {world}, {args.policy}-{args.budget}, "
                                                    f"{args.new_tokens} new tokens\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
