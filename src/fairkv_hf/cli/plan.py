"""fairkv-plan: make a FairKV head placement plan from a load profile, or run the placement simulation."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from fairkv_hf.cli.common import ArgumentParser, UsageError, positive_int, run_command
from fairkv_hf.placement.cost import FITTED, CostModel
from fairkv_hf.placement.converters import from_duoattention, from_headkv
from fairkv_hf.placement.device_map import save_device_map
from fairkv_hf.placement.plans import GIB, OBJECTIVES, make_plan
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.placement.simulate import robustness_ratios, simulate


def _gpu_counts(text: str) -> list[int]:
    """argparse type: a comma list of positive GPU counts."""
    return [positive_int(item) for item in text.split(",")]


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="fairkv-plan", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", help="HeadLoadProfile JSON")
    src.add_argument("--duoattention", help="DuoAttention gates TSV (shared/profiles/duoattention/...)")
    src.add_argument("--headkv", help="HeadKV scores JSON (shared/profiles/headkv/...)")
    p.add_argument("--context", type=int, default=32768, help="DuoAttention: tokens a retrieval head keeps")
    p.add_argument("--retrieval-fraction", type=float, default=0.5, help="DuoAttention: share of retrieval heads")
    p.add_argument("--budget", type=int, default=128, help="HeadKV: base budget per head")
    p.add_argument("--beta", type=float, default=1.01, help="HeadKV: beta of the budget rule")
    p.add_argument("--gpus", type=_gpu_counts, required=True, help="GPU count (a comma list with --simulate)")
    p.add_argument("--max-copies", type=int, default=None, help="extra replicas per layer (default GPUs - 1)")
    p.add_argument("--mem-gib", type=float, default=None, help="per-GPU cap on attention weights + KV at --batch")
    p.add_argument("--batch", type=positive_int, default=32, help="batch size the plan is optimised for")
    p.add_argument("--objective", choices=OBJECTIVES, default="time", help="predicted step time, or KV balance only")
    p.add_argument("--gpu-kind", choices=sorted(FITTED), help="plan with the cost model fitted on this GPU kind "
                   "(bench/tp_throughput.py); default: the H200 estimates of placement/cost.py")
    p.add_argument("--out", help="plan JSON to write (or the output folder with --simulate)")
    p.add_argument("--device-map", help="also write the plan as a head device map JSON "
                   "({\"model.layers.L.self_attn.kv_heads.H\": gpu | [gpus] | {gpu: fraction}})")
    p.add_argument("--robustness", help="per-input kept lengths (fairkv-profile --samples): compare the offline plan "
                                        "with per-input optimal plans instead of writing a plan")
    p.add_argument("--simulate", action="store_true", help="compare plans on every profile under --profiles-dir")
    p.add_argument("--profiles-dir", default="../shared/profiles", help="shared profiles folder for --simulate")
    p.add_argument("--measured", default="bench/results/placement",
                   help="--simulate also runs every profile fairkv-profile wrote in this folder (*_profile.json)")
    return p


def _profile(args: argparse.Namespace) -> HeadLoadProfile:
    if args.profile:
        try:
            return HeadLoadProfile.load(args.profile)
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--profile {args.profile} is not a profile JSON ({type(err).__name__}: {err}): "
                             "give a file written by fairkv-profile") from err
    if args.duoattention:
        return from_duoattention(args.duoattention, args.context, args.retrieval_fraction)
    if args.headkv:
        return from_headkv(args.headkv, args.budget, args.beta)
    raise UsageError("give one of --profile, --duoattention or --headkv (or --simulate)")


def _check_paths(args: argparse.Namespace) -> None:
    """Input files that must exist and output folders that must too, before any work."""
    for option in ("profile", "duoattention", "headkv", "robustness"):
        path = getattr(args, option)
        if path is not None and not Path(path).is_file():
            raise UsageError(f"--{option} {path} does not exist")
    if args.simulate and not Path(args.profiles_dir).is_dir():
        raise UsageError(f"--profiles-dir {args.profiles_dir} is not a folder: give the shared profiles folder")
    if args.simulate and not Path(args.measured).is_dir():
        raise UsageError(f"--measured {args.measured} is not a folder: give the folder of fairkv-profile outputs")
    for option in ("out", "device_map"):
        path = getattr(args, option)
        if path and not args.simulate and not Path(path).parent.is_dir():
            raise UsageError(f"--{option.replace('_', '-')} {path}: the folder {Path(path).parent} does not exist")


def _robustness_report(profile: HeadLoadProfile, samples_path: str, gpus: int) -> str:
    """Offline plan vs per-input optimal plans on measured per-input budgets (KV balance objective)."""
    try:
        samples = json.loads(Path(samples_path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--robustness {samples_path} is not JSON ({err}): give the file of fairkv-profile --samples") from err
    inputs = [HeadLoadProfile(**{**profile.__dict__, "tokens": np.asarray(s, dtype=float)}) for s in samples]
    for i, q in enumerate(inputs):
        if q.tokens.shape != profile.tokens.shape:
            raise ValueError(f"sample {i} has shape {q.tokens.shape}, the profile {profile.tokens.shape}: use samples "
                             "written by fairkv-profile for the same model")
    ratios, tp = robustness_ratios(profile, inputs, gpus)
    return (f"{len(inputs)} inputs, {gpus} GPUs: offline FairKV plan / per-input optimum = mean {np.mean(ratios):.3f}, "
            f"worst {max(ratios):.3f}; standard TP / per-input optimum = mean {np.mean(tp):.3f}, worst {max(tp):.3f}")


def _plan(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Write the plan, the robustness report or the simulation the options ask for, after checking the paths."""
    _check_paths(args)
    gpus = args.gpus
    if args.simulate:
        command = "fairkv-plan " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        print(simulate(args.profiles_dir, gpus, args.batch, args.out or "bench/results/placement", command,
                       args.measured))
        return
    if len(gpus) != 1:
        raise UsageError(f"--gpus takes one count without --simulate, got {','.join(map(str, gpus))}")
    if args.robustness:
        print(_robustness_report(_profile(args), args.robustness, gpus[0]))
        return
    if not args.out:
        raise UsageError("--out plan.json is required")
    cost = CostModel.for_gpu(args.gpu_kind) if args.gpu_kind else None
    plan = make_plan(_profile(args), gpus[0], args.batch, args.max_copies, args.mem_gib, cost, args.objective)
    f = plan.save(args.out)
    if args.device_map:
        save_device_map(plan, args.device_map)
    print(
        f"{plan.profile.model} on {plan.gpus} GPUs ({plan.objective} objective, batch {plan.batch}): balance {f['balance']:.3f} "
        f"(standard TP {f['standard_tp_balance']:.3f}, best effort {f['best_effort_balance']:.3f}, bound {f['lower_bound']:.3f}); "
        f"predicted step {f['predicted_step_s'] * 1e3:.3f} ms vs TP {f['standard_tp_step_s'] * 1e3:.3f} ms; "
        f"replica weights {f['replica_weight_bytes'] / GIB:.3f} GiB -> {Path(args.out)}"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fairkv-plan``: 0 on success, 2 (one line on stderr) for a mistake in the input.

    The placement code reports bad tables and numbers (shapes, fractions, copies, memory caps) as ValueError or
    FileNotFoundError, which are the user's to fix here: they are reported the same way.
    """
    args = _parser().parse_args(argv)

    def command() -> None:
        try:
            _plan(args, argv)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(str(err)) from err

    return run_command("fairkv-plan", command)


if __name__ == "__main__":
    sys.exit(main())
