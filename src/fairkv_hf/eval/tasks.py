"""The task table: every LongBench v1 task's category, language, metric and prompting mode, and the names of
the generated RULER-style tasks.

Prompt templates and generation lengths are not copied here: they are the official
``config/dataset2prompt.json`` and ``config/dataset2maxlen.json``, read from the data folder. The RULER-style
records themselves are made by ``ruler.py``; only their names live here, so every module can look a task up
without importing the generator (which imports the runner, which imports this table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    """What the harness needs to know about a task besides its records."""

    name: str
    category: str
    language: str
    metric: str
    chat: bool = True
    first_line_only: bool = False


def _task(name: str, category: str, language: str, metric: str, few_shot: bool = False) -> TaskInfo:
    # Few-shot and code tasks are prompted without the chat template; the few-shot ones are scored on
    # the prediction's first line only (the official pred.py / eval.py rules).
    no_chat = few_shot or category == "Code"
    return TaskInfo(name, category, language, metric, chat=not no_chat, first_line_only=few_shot)


LONGBENCH_TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        _task("narrativeqa", "Single-Document QA", "en", "qa_f1"),
        _task("qasper", "Single-Document QA", "en", "qa_f1"),
        _task("multifieldqa_en", "Single-Document QA", "en", "qa_f1"),
        _task("multifieldqa_zh", "Single-Document QA", "zh", "qa_f1_zh"),
        _task("hotpotqa", "Multi-Document QA", "en", "qa_f1"),
        _task("2wikimqa", "Multi-Document QA", "en", "qa_f1"),
        _task("musique", "Multi-Document QA", "en", "qa_f1"),
        _task("dureader", "Multi-Document QA", "zh", "rouge_zh"),
        _task("gov_report", "Summarization", "en", "rouge"),
        _task("qmsum", "Summarization", "en", "rouge"),
        _task("multi_news", "Summarization", "en", "rouge"),
        _task("vcsum", "Summarization", "zh", "rouge_zh"),
        _task("trec", "Few-shot Learning", "en", "classification", few_shot=True),
        _task("triviaqa", "Few-shot Learning", "en", "qa_f1", few_shot=True),
        _task("samsum", "Few-shot Learning", "en", "rouge", few_shot=True),
        _task("lsht", "Few-shot Learning", "zh", "classification", few_shot=True),
        _task("passage_count", "Synthetic", "en", "count"),
        _task("passage_retrieval_en", "Synthetic", "en", "retrieval"),
        _task("passage_retrieval_zh", "Synthetic", "zh", "retrieval_zh"),
        _task("lcc", "Code", "code", "code_sim"),
        _task("repobench-p", "Code", "code", "code_sim"),
    )
}

# The tasks that have a LongBench-E config (``<task>_e``): uniformly sampled lengths, for length buckets.
LONGBENCH_E_TASKS: tuple[str, ...] = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa",
    "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)


RULER_KINDS = ("niah_single", "niah_multikey", "qa_hotpotqa")
_RULER_NAME = re.compile(rf"^(?P<kind>{'|'.join(RULER_KINDS)})_(?P<length>\d+)$")


def parse_ruler_name(name: str) -> tuple[str, int] | None:
    """``niah_single_8192`` -> ("niah_single", 8192): a RULER-style task's kind and prompt length; None otherwise."""
    match = _RULER_NAME.match(name)
    return None if match is None else (match["kind"], int(match["length"]))


def ruler_task_info(name: str) -> TaskInfo | None:
    """TaskInfo of a RULER-style task name such as ``niah_single_8192``, or None for another name."""
    parsed = parse_ruler_name(name)
    if parsed is None:
        return None
    return TaskInfo(name, f"RULER {parsed[0]}", "en", "string_match", chat=True)


def task_info(name: str) -> TaskInfo:
    """Look up a LongBench task or a generated RULER-style task (``niah_single_4096``, ...) by name."""
    if name in LONGBENCH_TASKS:
        return LONGBENCH_TASKS[name]
    info = ruler_task_info(name)
    if info is None:
        known = ", ".join(LONGBENCH_TASKS)
        raise KeyError(f"Unknown task '{name}'. LongBench tasks: {known}; RULER-style: <niah_single|niah_multikey|qa_hotpotqa>_<length>")
    return info
