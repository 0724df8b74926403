"""The simulation report: standard TP vs best effort vs FairKV on every shared profile and every profile measured with
fairkv-profile (CAKE, Ada-CAKE, Ada-SnapKV on SmolLM2 in bench/results/placement), as markdown + PNG.

Balance columns use the KV-balance objective (what the balance figure measures); the speedup, memory and
optimality columns use the time objective of the cost model at the given batch. 16-64 GPUs stand for
multi-node TP (standard TP then replicates KV heads as vLLM does, see `plans`); the cost model has no
inter-node term. Robustness uses synthetic per-input budgets (log-normal noise around the profile) until
FairKVCache statistics exist: it reports how far the offline plan is from the per-input optimum.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fairkv_hf.placement.converters import KNOWN_SHAPES, shared_profiles
from fairkv_hf.placement.cost import CostModel
from fairkv_hf.placement.plans import GIB, ROUNDING_BATCHES, make_plan, standard_tp_loads
from fairkv_hf.placement.profile import HeadLoadProfile

NOISE_SIGMA = 0.3
NOISE_SAMPLES = 8


def synthetic_profile(name: str = "Llama-3.3-70B-Instruct", seed: int = 0) -> HeadLoadProfile:
    """A profile of a known model shape with log-normal kept lengths around 1024 (for planning-time checks)."""
    shape = KNOWN_SHAPES[name]
    rng = np.random.default_rng(seed)
    tokens = np.round(1024 * rng.lognormal(0.0, 0.8, (shape.num_layers, shape.num_kv_heads)))
    return HeadLoadProfile(name + " synthetic", shape.num_layers, shape.num_query_heads, shape.num_kv_heads,
                           shape.head_dim, shape.hidden_size, 1024.0, tokens)


def _noisy(profile: HeadLoadProfile, rng: np.random.Generator) -> HeadLoadProfile:
    tokens = profile.tokens * rng.lognormal(0.0, NOISE_SIGMA, profile.tokens.shape)
    return HeadLoadProfile(**{**profile.__dict__, "tokens": tokens})


def measured_profiles(folder: str | Path) -> list[HeadLoadProfile]:
    """Every profile fairkv-profile wrote under `folder` (``*_profile.json``), named after its file, which says the
    policy and budget (e.g. ``smollm2_cake256_profile.json``)."""
    paths = sorted(Path(folder).glob("*_profile.json"))
    return [replace(profile, model=f"{profile.model} measured: {path.name}")
            for path, profile in zip(paths, map(HeadLoadProfile.load, paths))]


def simulate(profiles_dir: str | Path, gpu_counts: list[int], batch: int, out_dir: str | Path, command: str,
             measured_dir: str | Path | None = None) -> str:
    """Run every comparison on the shared profiles and those measured under `measured_dir`, write ``placement.md``
    and ``placement.png`` under ``out_dir``; return the markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cost = CostModel()
    profiles = shared_profiles(profiles_dir) + (measured_profiles(measured_dir) if measured_dir is not None else [])
    md = [
        "# FairKV placement simulation",
        "",
        f"Command: `{command}`",
        "",
        f"Cost model (H200 bf16 defaults, see `fairkv_hf.placement.cost`): {cost.to_dict()}. Batch {batch} for the "
        "time-objective columns. Balance = sum over layers of the slowest GPU's KV tokens / sum of the even share "
        "(1.00 = perfect). Bound = per-layer max(mean, largest head piece with the allowed copies). Max copies = N - 1 "
        "extra replicas per layer. With more GPUs than KV heads, standard TP splits a head's query heads over its "
        "replicas (smaller q/o slices each), which FairKV replicas (whole q/k/v/o slices, a share of the batch) cannot "
        "express: where kept lengths are short (HeadKV at 128) that makes the time-objective speedup fall below 1.",
        "",
        "| profile | GPUs | standard TP | best effort | FairKV | bound | FairKV (time obj.) balance | replica weights GiB | predicted step speedup vs TP |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    curves = {}
    for p in profiles:
        rows = []
        for n in gpu_counts:
            fair = make_plan(p, n, batch, objective="balance")
            f = fair.figures()
            timed = make_plan(p, n, batch, objective="time")
            t = timed.figures()
            rows.append((n, f["standard_tp_balance"], f["best_effort_balance"], f["balance"], f["lower_bound"]))
            md.append(
                f"| {p.model} | {n} | {f['standard_tp_balance']:.3f} | {f['best_effort_balance']:.3f} | {f['balance']:.3f} | "
                f"{f['lower_bound']:.3f} | {t['balance']:.3f} | {t['replica_weight_bytes'] / GIB:.3f} | "
                f"{t['standard_tp_step_s'] / t['predicted_step_s']:.3f} |"
            )
        curves[p.model] = np.array(rows)
    md += _optimality(profiles, cost) + _rounding(profiles) + _robustness(profiles) + _planning_time()
    _plot(curves, out_dir / "placement.png")
    text = "\n".join(md) + "\n"
    (out_dir / "placement.md").write_text(text)
    return text


def _optimality(profiles: list[HeadLoadProfile], cost: CostModel) -> list[str]:
    """Predicted step time of the time-objective plan over the sum of proven per-layer optima."""
    lines = ["", "## Predicted step time vs the exact per-layer optimum (time objective)", "",
             "Ratio = plan's predicted step (recomputed from its placements) / sum over layers of the proven optimum "
             "(exact DP of `fairkv_hf.placement.exact`, constant included).", "",
             "| profile | GPUs | batch 8 | batch 32 | batch 128 |", "|---|---|---|---|---|"]
    worst = 0.0
    for p in profiles:
        for n in (2, 4, 8):
            ratios = []
            for b in (8, 32, 128):
                plan = make_plan(p, n, b, objective="time")
                ratios.append(plan.loads().step_time(p, cost, b) / plan.step_lower_bound_s)
            worst = max(worst, *ratios)
            lines.append(f"| {p.model} | {n} | " + " | ".join(f"{r:.5f}" for r in ratios) + " |")
    return lines + ["", f"Worst ratio: {worst:.6f} (acceptance: <= 1.01)."]


def _rounding(profiles: list[HeadLoadProfile]) -> list[str]:
    """Balance of the KV-balance FairKV plan once its fractions become whole rows."""
    lines = ["", "## Balance after rounding fractions to whole batch rows (largest remainder)", "",
             "| profile | GPUs | fractions | " + " | ".join(f"batch {b}" for b in ROUNDING_BATCHES) + " |",
             "|---|---|---|" + "---|" * len(ROUNDING_BATCHES)]
    for p in profiles:
        for n in (2, 4, 8):
            plan = make_plan(p, n, objective="balance")
            cells = " | ".join(f"{plan.rounded_loads(b).balance(p):.3f}" for b in ROUNDING_BATCHES)
            lines.append(f"| {p.model} | {n} | {plan.loads().balance(p):.3f} | {cells} |")
    return lines


def _robustness(profiles: list[HeadLoadProfile]) -> list[str]:
    """Offline plan on noisy per-input budgets vs the plan made for those budgets (KV balance, 8 GPUs)."""
    lines = ["", f"## Robustness: offline plan on per-input budgets (synthetic: tokens x lognormal(0, {NOISE_SIGMA}), "
             f"{NOISE_SAMPLES} inputs, seed 0, 8 GPUs)", "",
             "Ratio = offline plan's sum of per-layer max KV / per-input optimal plan's (mean and worst over inputs).", "",
             "| profile | standard TP | offline FairKV (mean) | offline FairKV (worst) |", "|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for p in profiles:
        ratios, tp = robustness_ratios(p, [_noisy(p, rng) for _ in range(NOISE_SAMPLES)], 8)
        lines.append(f"| {p.model} | {np.mean(tp):.3f} | {np.mean(ratios):.3f} | {max(ratios):.3f} |")
    return lines


def robustness_ratios(profile: HeadLoadProfile, inputs: list[HeadLoadProfile], gpus: int) -> tuple[list[float], list[float]]:
    """Per input: the sum of per-layer max KV of the plan made offline from `profile`, and of standard TP, each over
    that of the plan made for the input's own budgets (1.0 = as good as knowing the input in advance)."""
    offline = make_plan(profile, gpus, objective="balance")
    ratios, tp = [], []
    for q in inputs:
        best = make_plan(q, gpus, objective="balance").loads().kv_tokens.max(axis=1).sum()
        ratios.append(float(offline.loads(q).kv_tokens.max(axis=1).sum() / best))
        tp.append(float(standard_tp_loads(q, gpus).kv_tokens.max(axis=1).sum() / best))
    return ratios, tp


def _planning_time() -> list[str]:
    """Wall time of one time-objective plan for 80 layers x 8 KV heads x 8 GPUs."""
    profile = synthetic_profile()
    start = time.perf_counter()
    make_plan(profile, 8, 32)
    seconds = time.perf_counter() - start
    return ["", "## Planning time", "",
            f"{profile.model} (80 layers x 8 KV heads), 8 GPUs, batch 32, time objective: {seconds:.2f} s on this "
            "machine (acceptance: < 10 s on 2 CPU cores)."]


def _plot(curves: dict[str, np.ndarray], path: Path) -> None:
    """One panel per profile: balance against GPU count for the four columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, data) in zip(axes.ravel(), curves.items()):
        for i, label in enumerate(("standard TP", "best effort", "FairKV", "bound"), start=1):
            ax.plot(data[:, 0], data[:, i], marker="o", label=label, linestyle="--" if label == "bound" else "-")
        ax.set_xscale("log", base=2)
        ax.set_title(name, fontsize=7)
        ax.set_xlabel("GPUs", fontsize=7)
        ax.set_ylabel("balance", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)
