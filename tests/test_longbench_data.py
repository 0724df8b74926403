"""Local LongBench records and configs through ``datasets``, the task table, and the official prompting."""

from __future__ import annotations

import pytest

from fairkv_hf.eval.data import DEFAULT_DATA_DIR, default_data_dir, load_configs, load_task
from fairkv_hf.eval.prompting import build_prompt_ids, truncate_middle
from fairkv_hf.eval.tasks import LONGBENCH_E_TASKS, LONGBENCH_TASKS, task_info


@pytest.fixture(scope="module")
def data_dir():
    assert default_data_dir() is not None, f"the shared LongBench records are expected at {DEFAULT_DATA_DIR}"
    return default_data_dir()


def test_task_table_has_all_21_tasks_with_official_categories() -> None:
    assert len(LONGBENCH_TASKS) == 21
    assert sum(t.language == "zh" for t in LONGBENCH_TASKS.values()) == 5
    assert {t.name for t in LONGBENCH_TASKS.values() if not t.chat} == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    assert {t.name for t in LONGBENCH_TASKS.values() if t.first_line_only} == {"trec", "triviaqa", "samsum", "lsht"}
    assert task_info("passage_retrieval_zh").metric == "retrieval_zh"
    assert set(LONGBENCH_E_TASKS) <= set(LONGBENCH_TASKS)


def test_local_records_load_with_datasets(data_dir) -> None:
    records = load_task("multifieldqa_en", data_dir)
    assert len(records) == 10
    assert {"_id", "input", "context", "answers", "all_classes", "length", "language"} <= set(records.column_names)
    assert len(load_task("multi_news", data_dir)) == 200


def test_missing_records_and_unknown_tasks_are_explained(data_dir) -> None:
    with pytest.raises(FileNotFoundError, match="qasper"):
        load_task("qasper", data_dir)
    with pytest.raises(KeyError, match="LongBench-E has no"):
        load_task("multifieldqa_zh", data_dir, longbench_e=True)
    with pytest.raises(KeyError, match="Unknown LongBench task"):
        load_task("nope", data_dir)


def test_official_configs_cover_every_task(data_dir) -> None:
    configs = load_configs(data_dir / "config")
    assert set(configs) == set(LONGBENCH_TASKS)
    assert configs["multi_news"].max_new_tokens == 512
    assert configs["samsum"].max_new_tokens == 128


def test_middle_truncation_keeps_both_ends(tokenizer) -> None:
    prompt = "BEGIN " + " ".join(f"w{i}" for i in range(3000)) + " END"
    kept = truncate_middle(prompt, tokenizer, 200)
    assert kept.startswith("BEGIN w0 w1") and kept.endswith("w2999 END")
    assert "w1500" not in kept
    assert abs(len(tokenizer(kept).input_ids) - 200) <= 2
    assert truncate_middle("short prompt", tokenizer, 200) == "short prompt"


def test_chat_template_except_few_shot_and_code(data_dir, tokenizer) -> None:
    configs = load_configs(data_dir / "config")
    record = load_task("samsum", data_dir)[0]
    qa = build_prompt_ids(configs["multifieldqa_en"].template, record, tokenizer, 7500, chat=True)
    raw = build_prompt_ids(configs["samsum"].template, record, tokenizer, 7500, chat=LONGBENCH_TASKS["samsum"].chat)
    assert tokenizer.decode(qa).startswith("<|im_start|>system")
    assert tokenizer.decode(qa).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(raw).startswith("Summarize the dialogue")
    assert len(build_prompt_ids(configs["samsum"].template, record, tokenizer, 300, chat=False)) <= 302


def test_without_a_folder_records_come_from_the_hub(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr("fairkv_hf.eval.data.load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or "records")
    assert load_task("qasper", None) == "records"
    assert load_task("qasper", None, longbench_e=True) == "records"
    assert calls == [(("THUDM/LongBench", "qasper"), {"split": "test"}), (("THUDM/LongBench", "qasper_e"), {"split": "test"})]
