"""The LongBench metrics as a local ``evaluate`` module: works offline, unlike the hub's metrics.

Load it with ``evaluate.load(path_of_this_file, "<task>")`` or ``load_longbench_metric("<task>")``; the config
name is the task, whose official metric and first-line rule apply. ``compute`` returns the task score.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import evaluate

from fairkv_hf.eval.metrics import task_score
from fairkv_hf.eval.tasks import task_info

_DESCRIPTION = "LongBench v1 task score: 100 x mean over examples of the best metric value over the gold answers."
_INPUTS = """
predictions: list of generated strings.
references: list of lists of gold answers (a record's "answers").
all_classes: the task's class names (trec, lsht), else None.
Returns {"score": float}, rounded to 2 decimals.
"""


class LongBenchMetric(evaluate.Metric):
    """One LongBench task's official metric; the config name selects the task."""

    def _info(self) -> evaluate.MetricInfo:
        task_info(self.config_name)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Bai et al., LongBench: A Bilingual, Multitask Benchmark for Long Context Understanding, ACL 2024",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions: list[str], references: list[list[str]], all_classes: list[str] | None = None) -> dict:
        return {"score": task_score(self.config_name, predictions, references, all_classes)}


def load_longbench_metric(task: str) -> evaluate.EvaluationModule:
    """The task's metric through ``evaluate.load`` of this local file (no network)."""
    return evaluate.load(str(Path(__file__)), task)
