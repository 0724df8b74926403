"""Generate predictions for one task and one method, resumably, in the official ``pred.py`` file format.

Each finished batch of records is appended at once to ``<task>.jsonl`` as ``{"pred", "answers", "all_classes",
"length", "_id"}`` lines; a rerun skips the ids already there. A process killed while appending leaves at worst a
cut last line, which the next reader drops (rewriting the file atomically), so every record ends up there once.

Decoding is greedy search on the model's own generation config by default, as the official ``pred.py`` calls
``generate`` (so a repetition penalty the model ships, e.g. Qwen2.5's 1.05-1.1, applies); ``greedy=True`` sets the
repetition penalty to 1 (a hub model and its GGUF conversion, which ships none, then decode alike).
samsum also stops at a newline, after at least one new token, as ``pred.py`` does. Batches are left-padded and
grouped by prompt length to waste little padding.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from fairkv_hf.compat import cache_kwarg
from fairkv_hf.eval.methods import Method
from fairkv_hf.eval.prompting import build_prompt_ids
from fairkv_hf.eval.tasks import TaskInfo
from fairkv_hf.files import atomic_write, remove_stale_temps

NEWLINE_STOP_TASKS = frozenset({"samsum"})
# transformers' neutral values of settings only sampling reads: greedy search ignores them, and transformers warns
# about any other value when sampling is off (None would be refilled from the model's config)
SAMPLING_NEUTRAL = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0}


@dataclass(frozen=True)
class EvalTask:
    """A task ready to run: its records (official fields plus ``_id``), template and generation length."""

    info: TaskInfo
    records: Sequence[Mapping[str, object]]
    template: str
    max_new_tokens: int


@dataclass
class RunStats:
    """What one ``predict`` call generated, for the results file."""

    records: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def _lines(rows: Iterable[Mapping[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_predictions(path: Path) -> list[dict]:
    """The complete lines of a prediction file.

    A line cut short by a killed run is dropped, and the file is then rewritten atomically with the complete
    lines only (also when its last line lacks the newline), so that the next append starts on a line of its own.
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    rows, dropped = [], False
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            dropped = True
    if dropped or (text and not text.endswith("\n")):
        remove_stale_temps(path)
        atomic_write(path, _lines(rows))
    return rows


def append_predictions(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Append rows to a prediction file as JSON lines, in one write that is flushed before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(_lines(rows))


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, stop_at_newline: bool) -> list[int]:
    """The model's end-of-sequence ids, and the newline token's with ``stop_at_newline``."""
    eos = model.generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos if eos is not None else tokenizer.eos_token_id]
    if stop_at_newline:
        ids.append(tokenizer.encode("\n", add_special_tokens=False)[-1])
    return ids


def decoding(model_config: GenerationConfig, greedy: bool) -> dict[str, object]:
    """What a run's results.json records about decoding with the model's generation config: the mode and the
    repetition penalty it applies."""
    penalty = 1.0 if greedy else model_config.repetition_penalty
    return {"mode": "greedy" if greedy else "official", "repetition_penalty": float(penalty or 1.0)}


def generation_config(
    model: PreTrainedModel, max_new_tokens: int, eos: list[int], pad: int, stop_at_newline: bool, greedy: bool
) -> GenerationConfig:
    """Greedy search on a copy of the model's generation config, as pred.py calls ``generate`` (a repetition penalty
    the model ships applies); ``greedy`` also sets the repetition penalty to 1 (transformers fills every setting
    left unset from the model's config, so a fresh config would not drop it)."""
    config = copy.deepcopy(model.generation_config)
    config.update(
        max_new_tokens=max_new_tokens,
        min_new_tokens=1 if stop_at_newline else 0,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos,
        pad_token_id=pad,
        **SAMPLING_NEUTRAL,
    )
    if greedy:
        config.repetition_penalty = 1.0
    return config


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    method: Method,
    stop_at_newline: bool = False,
    greedy: bool = False,
) -> tuple[list[str], int]:
    """Greedy continuations of left-padded prompts, and the number of new tokens generated."""
    eos = stop_token_ids(model, tokenizer, stop_at_newline)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    config = generation_config(model, max_new_tokens, eos, pad, stop_at_newline, greedy)
    cache = method.make_cache(model)
    extra = {} if cache is None else cache_kwarg(cache)
    out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config, **extra)[:, width:]
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in out]
    return texts, sum(_generated_length(row.tolist(), eos) for row in out)


def _generated_length(row: list[int], eos: list[int]) -> int:
    """Tokens generated up to and including the first stop token (the rest is padding)."""
    return next((i + 1 for i, t in enumerate(row) if t in eos), len(row))


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: EvalTask,
    method: Method,
    out_file: Path,
    max_length: int,
    batch_size: int = 1,
    progress: bool = True,
    greedy: bool = False,
    write: bool = True,
) -> RunStats:
    """Append predictions for the task's records not yet in ``out_file``; return what this call did. With
    ``write=False`` nothing is written (the other ranks of a head-parallel run decode alongside the first)."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    done = {row["_id"] for row in read_predictions(out_file)}
    todo = [r for r in task.records if r["_id"] not in done]
    stats = RunStats()
    if not todo:
        return stats
    prompts = [build_prompt_ids(task.template, r, tokenizer, max_length, task.info.chat) for r in todo]
    order = sorted(range(len(todo)), key=lambda i: -len(prompts[i]))
    stop = task.info.name in NEWLINE_STOP_TASKS
    bar = tqdm(total=len(todo), desc=f"{method.name} {task.info.name}", disable=not progress, unit="rec")
    start = time.perf_counter()
    for k in range(0, len(order), batch_size):
        batch = order[k : k + batch_size]
        texts, new_tokens = generate_batch(model, tokenizer, [prompts[i] for i in batch], task.max_new_tokens, method, stop, greedy)
        fields = ("answers", "all_classes", "length", "_id")
        if write:
            append_predictions(out_file, [{"pred": text} | {f: todo[i][f] for f in fields} for i, text in zip(batch, texts)])
        stats.records += len(batch)
        stats.prompt_tokens += sum(len(prompts[i]) for i in batch)
        stats.new_tokens += new_tokens
        bar.update(len(batch))
    stats.seconds = time.perf_counter() - start
    bar.close()
    return stats
