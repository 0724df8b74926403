"""Headline benchmark: decode throughput of FairKV plans against standard tensor parallelism on N GPUs.

Launch (scripts/tp_throughput.sh prints and runs it):
    torchrun --nproc-per-node N bench/tp_throughput.py --shape llama8b --out DIR

Per shape, per-head budget table and batch, one run compares four setups with the SAME total K/V:
  uniform  + standard   every head keeps the table's mean (SnapKV-like): the balanced reference
  table    + standard   the per-head budgets on contiguous KV heads: the paper's baseline
  table    + best_effort heads reassigned to balance the load (no copies)
  table    + fairkv      best effort + Fair-Copying (replicas serving batch slices)
Tables: DuoAttention-style from the real Llama-3.1-8B gates (the top half of the heads keep the whole context,
the rest sink 64 + recent 256) and HeadKV-style from the real Llama-3-8B retrieval-reasoning scores (shared/profiles,
carried in .carry/profiles). A reduced-depth shape takes the table rows of evenly spaced layers.

Weights are random (throughput does not depend on them) and the cache is filled with random K/V of the table's
per-head lengths (fairkv_hf.synthetic: a 32K x 32-row prefill would take longer than the measurement); decoding is
the library's real path: head-parallel attention, split MLP and lm_head, decode capacity reserved and every step
replayed from CUDA graphs, the decode step fused (fairkv_hf.fusion: one GEMM for each rank's q/k/v and one for
gate/up, compiled norms, rotary and residual adds; --no-fuse keeps the stock ops).
Per setup and rank: wall ms per step (median of rounds), summed kernel time, FairKV
attention kernel time per layer and the communication kernels (torch.profiler over replayed steps).

The cost model's attention term is then fitted to the measured per-(layer, rank) attention kernel times (K/V
bandwidth and a per-layer constant; weights at the copy bandwidth measured here), the tables are re-planned with
the fitted coefficients and the re-planned setups measured again. Predicted speedup of a plan over standard TP =
(R + A_standard) / (R + A_plan), with A the cost model's attention time (sum over layers of the slowest rank) and R
the measured rest of the step (wall minus measured attention critical path), which no plan changes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import transformers
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, LlamaConfig

import fairkv_hf  # noqa: F401  (registers the "fairkv" attention)
from fairkv_hf import FairKVCache, parallel
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.fusion import fuse_decode_ops
from fairkv_hf.graphs import enable_cuda_graphs
from fairkv_hf.placement.converters import ModelShape, from_duoattention, from_headkv
from fairkv_hf.placement.cost import CostModel
from fairkv_hf.placement.plans import Plan, make_plan, standard_plan
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.synthetic import fill_random

SHAPES = {  # published configs: hidden, intermediate, query heads, KV heads, head_dim, vocab, full depth
    "llama8b": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256, layers=32),
    "llama70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, head_dim=128, vocab=128256, layers=80),
    "tiny": dict(hidden=512, intermediate=1024, heads=8, kv_heads=8, head_dim=64, vocab=1024, layers=4),
}
DUO_GATES = "duoattention/Meta-Llama-3.1-8B-Instruct.full_attention_heads.tsv"
HEADKV_SCORES = "headkv/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json"
ATTENTION_KERNELS = ("_split_kernel", "_combine_kernel", "_append_kernel")
COMM_KERNELS = ("nccl", "one_shot", "all_reduce", "allreduce", "all_gather")


def model_config(shape: str, layers: int) -> LlamaConfig:
    s = SHAPES[shape]
    return LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                       num_hidden_layers=layers, num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                       head_dim=s["head_dim"], max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False)


def table_profile(kind: str, shape: str, layers: int, context: int, budget: int, root: Path) -> HeadLoadProfile:
    """Per-head kept tokens of a real published table on this shape (rows of evenly spaced layers when shallower
    or deeper than the table's 32), capped by the context."""
    s = SHAPES[shape]
    if kind == "duo":
        table = from_duoattention(root / DUO_GATES, context)
    else:
        table = from_headkv(root / HEADKV_SCORES, budget)
    rows = np.linspace(0, table.num_layers - 1, layers).round().astype(int)
    tokens = np.minimum(table.tokens[rows], context)
    shape_ = ModelShape(layers, s["heads"], s["kv_heads"], s["head_dim"], s["hidden"])
    return HeadLoadProfile(f"{shape} {table.model}", shape_.num_layers, shape_.num_query_heads, shape_.num_kv_heads,
                           shape_.head_dim, shape_.hidden_size, float(budget if kind == "headkv" else context), tokens)


def uniform_like(profile: HeadLoadProfile) -> HeadLoadProfile:
    """Every head keeps the profile's mean: the same total K/V, perfectly balanced."""
    tokens = np.full_like(profile.tokens, round(float(profile.tokens.mean())))
    return HeadLoadProfile(f"uniform {profile.tokens.mean():.0f}", profile.num_layers, profile.num_query_heads,
                           profile.num_kv_heads, profile.head_dim, profile.hidden_size, profile.budget, tokens)


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write), median of 10 copies of 1 GiB."""
    src = torch.empty(2**29, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / statistics.median(times)


def kernel_breakdown(prof, steps: int, layers: int) -> dict:
    """Per step: kernels, summed kernel ms, communication ms, and FairKV attention ms per layer (a kernel's layer is
    the number of communication kernels before it in its step, halved: attention and MLP each end in one)."""
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    is_comm = [any(c in e.name.lower() for c in COMM_KERNELS) for e in kernels]
    per_step_comm = sum(is_comm) // steps
    per_layer = np.zeros(layers)
    seen = 0
    for event, comm in zip(kernels, is_comm):
        if comm:
            seen += 1
        elif any(k in event.name for k in ATTENTION_KERNELS) and per_step_comm:
            per_layer[min((seen % per_step_comm) // 2, layers - 1)] += event.time_range.elapsed_us()
    total = sum(e.time_range.elapsed_us() for e in kernels)
    comm = sum(e.time_range.elapsed_us() for e, c in zip(kernels, is_comm) if c)
    return {"kernels_per_step": len(kernels) / steps, "kernel_ms": total / steps / 1e3, "comm_ms": comm / steps / 1e3,
            "attention_ms_per_layer": (per_layer / steps / 1e3).tolist()}


@torch.no_grad()
def measure(args, shape: str, lengths: torch.Tensor, plan: Plan, batch: int, device: torch.device) -> dict:
    """Build the model under `plan`, fill the cache, decode with graphs; this rank's figures."""
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(shape, args.layers), dtype=args.dtype)
    model = parallel.prepare(model.eval(), plan, batch=batch, device=device)
    if args.fuse and device.type == "cuda":
        fuse_decode_ops(model)
    steps = 3 + args.rounds * args.steps + args.profile_steps
    cache = FairKVCache(model, policy="full", max_new_tokens=steps)
    fill_random(cache, lengths.expand(-1, batch, -1), args.context, device, args.dtype)
    graphed = enable_cuda_graphs(model)
    ids = torch.ones(batch, 1, dtype=torch.long, device=device)
    pos = torch.full((batch, 1), args.context, dtype=torch.long, device=device)
    tokens = []

    def step():
        nonlocal ids
        out = model(input_ids=ids, position_ids=pos, use_cache=True, **cache_kwarg(cache))
        ids = out.logits[:, -1].argmax(-1, keepdim=True)
        pos.add_(1)
        tokens.append(ids)

    for _ in range(3):  # eager, capture, first replay
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    walls = []
    for _ in range(args.rounds):
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        walls.append((time.perf_counter() - start) / args.steps)
    result = {"wall_ms": 1e3 * statistics.median(walls), "wall_ms_rounds": [1e3 * w for w in walls],
              "replays": graphed.replays, "kv_bytes": cache.nbytes(),
              "tokens": torch.cat(tokens, 1)[:, :8].tolist()}
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.profile_steps):
                step()
            sync()
        result.update(kernel_breakdown(prof, args.profile_steps, args.layers))
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    cache._captured = None
    del cache, model, graphed
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return result


def rank_memory_gib(shape: str, layers: int, plan: Plan, profile: HeadLoadProfile, batch: int, gpus: int) -> float:
    """Predicted peak GiB on the fullest rank: the whole random model before slicing, or its share plus its K/V and
    one layer's fill buffers."""
    s = SHAPES[shape]
    attn = (2 * s["heads"] + 2 * s["kv_heads"]) * s["head_dim"] * s["hidden"]
    per_layer = attn + 3 * s["hidden"] * s["intermediate"]
    full = 2 * (layers * per_layer + 2 * s["vocab"] * s["hidden"])
    share = 2 * (layers * per_layer / gpus + s["vocab"] * s["hidden"] * (1 + 1 / gpus))
    kv = plan.loads(profile).kv_tokens.sum(axis=0).max() * batch * 4 * s["head_dim"]
    fill = batch * s["kv_heads"] * profile.tokens.max() * 4 * s["head_dim"]
    return max(full, share + 1.07 * kv + fill) / 2**30


def attention_model_s(plan: Plan, profile: HeadLoadProfile, cost: CostModel, batch: int) -> float:
    """The cost model's attention time of one step under `plan` (sum over layers of the slowest GPU)."""
    return plan.loads(profile).layer_times(profile, cost, batch).max(axis=1).sum()


def summarise(ranks: list[dict], setup: dict) -> dict:
    """One table row from every rank's figures."""
    row = {**setup, "wall_ms": max(r["wall_ms"] for r in ranks), "wall_ms_rounds": ranks[0]["wall_ms_rounds"],
           "tokens_per_s": setup["batch"] / max(r["wall_ms"] for r in ranks) * 1e3,
           "tokens_equal_on_ranks": all(r["tokens"] == ranks[0]["tokens"] for r in ranks),
           "tokens": ranks[0]["tokens"], "kv_gib_per_rank": [r["kv_bytes"] / 2**30 for r in ranks]}
    if "kernel_ms" in ranks[0]:
        attention = np.array([r["attention_ms_per_layer"] for r in ranks]).T  # [layers, ranks]
        row.update(kernels_per_step=[r["kernels_per_step"] for r in ranks], kernel_ms=[r["kernel_ms"] for r in ranks],
                   comm_ms=[r["comm_ms"] for r in ranks], attention_ms=attention.sum(axis=0).tolist(),
                   attention_critical_ms=float(attention.max(axis=1).sum()),
                   measured_balance=float(attention.max(axis=1).sum() / attention.mean(axis=1).sum()),
                   wall_over_kernel=[r["wall_ms"] / r["kernel_ms"] for r in ranks],
                   attention_ms_per_layer=attention.tolist(), peak_gib=[r["peak_gib"] for r in ranks])
    return row


def fit_cost(rows: list[dict], plans: dict, bandwidth: float) -> CostModel:
    """Least squares of measured attention kernel ms per (layer, rank) on the K/V bytes the plan puts there:
    t = bytes / kv_bandwidth + constant; weights read at the measured copy bandwidth; copy_s = what the step
    outside the attention kernels gains under a plan with row slices over standard TP, per layer that has them."""
    x, y = [], []
    for row in rows:
        if "attention_ms_per_layer" not in row:
            continue
        plan, profile = plans[row["key"]]
        kv = plan.loads(profile).kv_tokens * row["batch"] * 4 * profile.head_dim
        x.extend(kv.ravel())
        y.extend(np.array(row["attention_ms_per_layer"]).ravel() / 1e3)
    slope, intercept = np.polyfit(np.array(x), np.array(y), 1)
    rest = {r["key"]: r["wall_ms"] - r["attention_critical_ms"] for r in rows if "attention_critical_ms" in r}
    extra = []
    for row in rows:
        plan, _ = plans[row["key"]]
        sliced = int(plan.loads().row_slices.any(axis=1).sum())
        standard = f"{row['group']}/standard"
        if sliced and row["key"] in rest and standard in rest:
            extra.append((rest[row["key"]] - rest[standard]) / 1e3 / sliced)
    return CostModel(kv_bandwidth=float(1 / slope), weight_bandwidth=bandwidth, constant_s=float(max(intercept, 0.0)),
                     copy_s=float(max(np.median(extra), 0.0)) if extra else 0.0)


def predict(rows: list[dict], plans: dict, cost: CostModel, label: str) -> None:
    """Per row: the plan's predicted speedup over standard TP, attention only and whole step (module docstring)."""
    standard = {r["group"]: r for r in rows if r["setup"] == "standard"}
    for row in rows:
        base = standard.get(row["group"])
        if base is None or row["setup"] == "uniform":
            continue
        plan, profile = plans[row["key"]]
        std_plan, _ = plans[base["key"]]
        a_plan = attention_model_s(plan, profile, cost, row["batch"]) * 1e3
        a_std = attention_model_s(std_plan, profile, cost, row["batch"]) * 1e3
        predicted = base["wall_ms"] / (base["wall_ms"] - a_std + a_plan)
        achieved = base["wall_ms"] / row["wall_ms"]
        row[f"predicted_attention_speedup_{label}"] = a_std / a_plan
        row[f"predicted_speedup_{label}"] = predicted
        row["achieved_speedup"] = achieved
        row[f"achieved_over_predicted_{label}"] = achieved / predicted


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| shape | table | context | batch | setup | copies | tok/s | ms/step | x standard | predicted (fitted) | "
            "achieved / predicted | measured balance | attention ms per rank | wall / kernel per rank |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['table']} | {r['context']} | {r['batch']} | {r['setup']}{' (re-planned)' if r.get('replanned') else ''} | "
            f"{r['copies']} | {r['tokens_per_s']:.0f} | {r['wall_ms']:.2f} | {fmt(r.get('achieved_speedup'))} | "
            f"{fmt(r.get('predicted_speedup_fitted'))} | {fmt(r.get('achieved_over_predicted_fitted'))} | "
            f"{fmt(r.get('measured_balance'))} | {' / '.join(f'{a:.2f}' for a in r.get('attention_ms', []))} | "
            f"{' / '.join(f'{w:.2f}' for w in r.get('wall_over_kernel', []))} |")
    return "\n".join(lines)


def setups(profile: HeadLoadProfile, gpus: int, batch: int, cost: CostModel) -> list[tuple[str, HeadLoadProfile, Plan]]:
    uniform = uniform_like(profile)
    return [("uniform", uniform, standard_plan(uniform, gpus, batch, cost)),
            ("standard", profile, standard_plan(profile, gpus, batch, cost)),
            ("best_effort", profile, make_plan(profile, gpus, batch, 0, cost=cost)),
            ("fairkv", profile, make_plan(profile, gpus, batch, cost=cost))]


def run_setup(args, rows, plans, group, name, profile, plan, batch, device, world, replanned=False) -> None:
    """Measure one setup on every rank (or skip it everywhere when it cannot fit) and append its row on rank 0."""
    key = f"{group}/{name}{'/replanned' if replanned else ''}"
    plans[key] = (plan, profile)
    setup = {"key": key, "group": group, "shape": args.shape, "layers": args.layers, "table": group.split("/")[0],
             "context": args.context, "batch": batch, "setup": name, "replanned": replanned, "plan_kind": plan.kind,
             "copies": sum(len(h) - 1 for layer in plan.layers for h in layer),
             "plan_balance": plan.loads(profile).balance(profile), "mean_kept": float(profile.tokens.mean())}
    need = rank_memory_gib(args.shape, args.layers, plan, profile, batch, world)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 1e9
    if need > 0.92 * total:
        if dist.get_rank() == 0:
            rows.append({**setup, "skipped": f"needs about {need:.0f} GiB of {total:.0f}"})
        return
    lengths = torch.tensor(profile.tokens, dtype=torch.long)[:, None, :]
    result = measure(args, args.shape, lengths, plan, batch, device)
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if dist.get_rank() == 0:
        rows.append(summarise(gathered, setup))
        print(f"{key}: {rows[-1]['wall_ms']:.2f} ms/step", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)  # what is measured so far, should the run be cut short
        (args.out / f"tp_throughput_{args.shape}.partial.json").write_text(json.dumps(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama8b", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, help="depth (default: the shape's full depth)")
    parser.add_argument("--context", type=int, default=32768, help="prompt tokens the tables are taken at")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--tables", nargs="+", default=["duo", "headkv"], choices=["duo", "headkv"])
    parser.add_argument("--headkv-budget", type=int, default=2048, help="HeadKV's base budget per head")
    parser.add_argument("--steps", type=int, default=24, help="decode steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=6)
    parser.add_argument("--profiles", type=Path, default=Path(".carry/profiles"), help="a copy of shared/profiles")
    parser.add_argument("--cost", type=Path, help="plan with the fitted cost model of an earlier run's JSON")
    parser.add_argument("--no-refit", action="store_true", help="skip the fit, re-plan and re-measure pass")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false",
                        help="keep the stock RMSNorm / MLP / rotary ops (fairkv_hf.fusion fuses them by default)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results")))
    args = parser.parse_args()
    args.layers = args.layers or SHAPES[args.shape]["layers"]
    args.dtype = getattr(torch, args.dtype)
    transformers.utils.logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    bandwidth = copy_bandwidth(device) if cuda else CostModel().weight_bandwidth
    cost = CostModel(**json.loads(args.cost.read_text())["fitted_cost_model"]) if args.cost else CostModel()
    rows: list[dict] = []
    plans: dict = {}
    groups = []
    for table in args.tables:
        profile = table_profile(table, args.shape, args.layers, args.context, args.headkv_budget, args.profiles)
        for batch in args.batches:
            group = f"{table}/{batch}"
            groups.append((group, profile, batch))
            for name, prof, plan in setups(profile, world, batch, cost):
                run_setup(args, rows, plans, group, name, prof, plan, batch, device, world)
    all_reduce = None
    if cuda:
        group, profile, batch = groups[0]
        os.environ["FAIRKV_ALL_REDUCE"] = "nccl"
        nccl_rows: list[dict] = []
        run_setup(args, nccl_rows, plans, group, "standard-nccl", profile, plans[f"{group}/standard"][0], batch, device, world)
        os.environ.pop("FAIRKV_ALL_REDUCE")
        if rank == 0 and nccl_rows and "wall_ms" in nccl_rows[0]:
            symm = next(r for r in rows if r["key"] == f"{group}/standard")
            all_reduce = {"setup": f"{group}/standard", "symmetric_memory_ms": symm["wall_ms"],
                          "nccl_ms": nccl_rows[0]["wall_ms"], "tokens_equal": symm["tokens"] == nccl_rows[0]["tokens"],
                          "comm_ms_symmetric": symm.get("comm_ms"), "comm_ms_nccl": nccl_rows[0].get("comm_ms")}
    fitted = None
    if cuda and not args.no_refit:
        box = [fit_cost(rows, plans, bandwidth) if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        fitted = box[0]
        for group, profile, batch in groups:
            for name, prof, plan in setups(profile, world, batch, fitted)[2:]:
                before = plans[f"{group}/{name}"][0]
                if plan.layers != before.layers:
                    run_setup(args, rows, plans, group, name, prof, plan, batch, device, world, replanned=True)
    if rank == 0:
        predict(rows, plans, cost, "planning")
        final = fitted or (cost if args.cost else None)  # --cost plans with an earlier run's fitted model
        if final is not None:
            predict(rows, plans, final, "fitted")
        write(args, rows, world, bandwidth, cost, fitted, all_reduce, device)
    dist.barrier()
    dist.destroy_process_group()


def write(args, rows, world, bandwidth, cost, fitted, all_reduce, device) -> None:
    """JSON (every figure, device named) and markdown; the table printed last."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    meta = {"device": name, "gpus": world, "torch": torch.__version__, "transformers": transformers.__version__,
            "shape": args.shape, "layers": args.layers, "fused_ops": args.fuse, "context": args.context, "dtype": str(args.dtype),
            "copy_bandwidth_Bps": bandwidth, "planning_cost_model": cost.to_dict(),
            "fitted_cost_model": fitted.to_dict() if fitted else None, "all_reduce": all_reduce,
            "command": f"torchrun --nproc-per-node {world} bench/tp_throughput.py --shape {args.shape} --layers {args.layers} "
                       f"--context {args.context} --batches {' '.join(map(str, args.batches))} --tables {' '.join(args.tables)} "
                       f"--headkv-budget {args.headkv_budget}" + (f" --cost {args.cost}" if args.cost else "")
                       + ("" if args.fuse else " --no-fuse") + (" --no-refit" if args.no_refit else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"tp_throughput_{args.shape}"
    (args.out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    done = [r for r in rows if "wall_ms" in r]
    skipped = [f"- {r['key']}: skipped, {r['skipped']}" for r in rows if "skipped" in r]
    table = markdown(done, meta)
    text = (f"{name} x {world}, {args.shape} ({args.layers} layers), context {args.context}\n\n{table}\n"
            + ("\n" + "\n".join(skipped) + "\n" if skipped else "")
            + (f"\nall-reduce: {json.dumps(all_reduce)}\n" if all_reduce else "")
            + (f"\nfitted cost model: {json.dumps(fitted.to_dict())}\n" if fitted else ""))
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.partial.json").unlink(missing_ok=True)
    print(text)


if __name__ == "__main__":
    main()
