"""LongBench records and official configs, loaded with ``datasets`` from a local folder or the hub.

A local folder holds ``<task>.jsonl`` (and ``<task>_e.jsonl`` for LongBench-E) in the official format plus
``config/dataset2prompt.json`` and ``config/dataset2maxlen.json``. The default folder is
``../shared/data/longbench`` beside the repository, where our offline records live.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset

from fairkv_hf.eval.tasks import LONGBENCH_E_TASKS, LONGBENCH_TASKS

HUB_PATH = "THUDM/LongBench"
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "longbench"


@dataclass(frozen=True)
class TaskConfig:
    """The official prompt template and number of new tokens of one task."""

    template: str
    max_new_tokens: int


def default_data_dir() -> Path | None:
    """The local LongBench folder beside the repository, or None when it is absent."""
    return DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else None


def load_task(task: str, data_dir: Path | None = None, longbench_e: bool = False) -> Dataset:
    """Records of a task: ``<data_dir>/<task>[_e].jsonl`` when a folder is given, else the hub's test split."""
    if task not in LONGBENCH_TASKS:
        raise KeyError(f"Unknown LongBench task '{task}'; known: {', '.join(LONGBENCH_TASKS)}")
    if longbench_e and task not in LONGBENCH_E_TASKS:
        raise KeyError(f"LongBench-E has no '{task}'; it has: {', '.join(LONGBENCH_E_TASKS)}")
    name = f"{task}_e" if longbench_e else task
    if data_dir is None:
        return load_dataset(HUB_PATH, name, split="test")
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"No records for '{name}' in {data_dir}: expected {path} (choose another --data-dir or task)")
    return load_dataset("json", data_files=str(path), split="train")


def load_configs(config_dir: Path) -> dict[str, TaskConfig]:
    """The official ``dataset2prompt.json`` and ``dataset2maxlen.json`` of a LongBench checkout's config folder."""
    prompt_file, maxlen_file = Path(config_dir) / "dataset2prompt.json", Path(config_dir) / "dataset2maxlen.json"
    for f in (prompt_file, maxlen_file):
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: point --config-dir at the LongBench repository's config/ folder")
    prompts = json.loads(prompt_file.read_text(encoding="utf-8"))
    maxlens = json.loads(maxlen_file.read_text(encoding="utf-8"))
    return {task: TaskConfig(prompts[task], int(maxlens[task])) for task in prompts}
