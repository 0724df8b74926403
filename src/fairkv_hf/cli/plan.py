"""fairkv-plan: make a FairKV head placement plan from a load profile, or run the placement simulation."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from fairkv_hf.placement.converters import from_duoattention, from_headkv
from fairkv_hf.placement.plans import GIB, OBJECTIVES, make_plan
from fairkv_hf.placement.profile import HeadLoadProfile
from fairkv_hf.placement.simulate import robustness_ratios, simulate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairkv-plan", description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", help="HeadLoadProfile JSON")
    src.add_argument("--duoattention", help="DuoAttention gates TSV (shared/profiles/duoattention/...)")
    src.add_argument("--headkv", help="HeadKV scores JSON (shared/profiles/headkv/...)")
    p.add_argument("--context", type=int, default=32768, help="DuoAttention: tokens a retrieval head keeps")
    p.add_argument("--retrieval-fraction", type=float, default=0.5, help="DuoAttention: share of retrieval heads")
    p.add_argument("--budget", type=int, default=128, help="HeadKV: base budget per head")
    p.add_argument("--beta", type=float, default=1.01, help="HeadKV: beta of the budget rule")
    p.add_argument("--gpus", required=True, help="GPU count (a comma list with --simulate)")
    p.add_argument("--max-copies", type=int, default=None, help="extra replicas per layer (default GPUs - 1)")
    p.add_argument("--mem-gib", type=float, default=None, help="per-GPU cap on attention weights + KV at --batch")
    p.add_argument("--batch", type=int, default=32, help="batch size the plan is optimised for")
    p.add_argument("--objective", choices=OBJECTIVES, default="time", help="predicted step time, or KV balance only")
    p.add_argument("--out", help="plan JSON to write (or the output folder with --simulate)")
    p.add_argument("--robustness", help="per-input kept lengths (fairkv-profile --samples): compare the offline plan "
                                        "with per-input optimal plans instead of writing a plan")
    p.add_argument("--simulate", action="store_true", help="compare plans on every profile under --profiles-dir")
    p.add_argument("--profiles-dir", default="../shared/profiles", help="shared profiles folder for --simulate")
    return p


def _profile(args: argparse.Namespace) -> HeadLoadProfile:
    if args.profile:
        return HeadLoadProfile.load(args.profile)
    if args.duoattention:
        return from_duoattention(args.duoattention, args.context, args.retrieval_fraction)
    if args.headkv:
        return from_headkv(args.headkv, args.budget, args.beta)
    raise ValueError("give one of --profile, --duoattention or --headkv (or --simulate)")


def _robustness_report(profile: HeadLoadProfile, samples_path: str, gpus: int) -> str:
    """Offline plan vs per-input optimal plans on measured per-input budgets (KV balance objective)."""
    samples = json.loads(Path(samples_path).read_text())
    inputs = [HeadLoadProfile(**{**profile.__dict__, "tokens": np.asarray(s, dtype=float)}) for s in samples]
    for i, q in enumerate(inputs):
        if q.tokens.shape != profile.tokens.shape:
            raise ValueError(f"sample {i} has shape {q.tokens.shape}, the profile {profile.tokens.shape}: use samples "
                             "written by fairkv-profile for the same model")
    ratios, tp = robustness_ratios(profile, inputs, gpus)
    return (f"{len(inputs)} inputs, {gpus} GPUs: offline FairKV plan / per-input optimum = mean {np.mean(ratios):.3f}, "
            f"worst {max(ratios):.3f}; standard TP / per-input optimum = mean {np.mean(tp):.3f}, worst {max(tp):.3f}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fairkv-plan``; errors in the input are reported in one line."""
    args = _parser().parse_args(argv)
    try:
        gpus = [int(x) for x in args.gpus.split(",")]
        if args.simulate:
            command = "fairkv-plan " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
            print(simulate(args.profiles_dir, gpus, args.batch, args.out or "bench/results/placement", command))
            return 0
        if len(gpus) != 1:
            raise ValueError(f"--gpus takes one count without --simulate, got {args.gpus}")
        if args.robustness:
            print(_robustness_report(_profile(args), args.robustness, gpus[0]))
            return 0
        if not args.out:
            raise ValueError("--out plan.json is required")
        plan = make_plan(_profile(args), gpus[0], args.batch, args.max_copies, args.mem_gib, objective=args.objective)
        f = plan.save(args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"fairkv-plan: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{plan.profile.model} on {plan.gpus} GPUs ({plan.objective} objective, batch {plan.batch}): balance {f['balance']:.3f} "
        f"(standard TP {f['standard_tp_balance']:.3f}, best effort {f['best_effort_balance']:.3f}, bound {f['lower_bound']:.3f}); "
        f"predicted step {f['predicted_step_s'] * 1e3:.3f} ms vs TP {f['standard_tp_step_s'] * 1e3:.3f} ms; "
        f"replica weights {f['replica_weight_bytes'] / GIB:.3f} GiB -> {Path(args.out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
