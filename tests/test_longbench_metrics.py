"""Hand-checked values of every LongBench metric, including the official quirks we must reproduce."""

from __future__ import annotations

import pytest

from fairkv_hf.eval import metrics as m
from fairkv_hf.eval.longbench_metric import LongBenchMetric, load_longbench_metric


def test_qa_f1_normalises_and_counts_shared_tokens() -> None:
    # "cat sat on mat" vs "cat on mat": 3 shared, P = 3/4, R = 1 -> F1 = 6/7
    assert m.qa_f1("The cat sat on the mat.", "a cat on mat") == pytest.approx(6 / 7)
    assert m.qa_f1("Paris", "London") == 0.0
    assert m.qa_f1("", "London") == 0.0


def test_qa_f1_zh_drops_punctuation_but_keeps_the_opening_book_title_mark() -> None:
    # jieba: 《 / 红楼梦 / 》; the official set strips 》 but not 《 -> ["《", "红楼梦"] vs ["红楼梦"]: F1 = 2/3
    assert m.qa_f1_zh("《红楼梦》", "红楼梦") == pytest.approx(2 / 3)
    # "。" is a token of its own, normalised to "" and dropped
    assert m.qa_f1_zh("厦门大学。", "厦门大学") == 1.0
    assert m.qa_f1_zh("北京", "上海") == 0.0


def test_rouge_l_uses_the_rouge_package_and_scores_failures_as_zero() -> None:
    # rouge's summary-level ROUGE-L counts distinct words: LCS 3, P = 3/3, R = 3/5 (the, cat, sat, on, mat) -> F = 0.75
    assert m.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(0.75, abs=1e-6)
    assert m.rouge_l("", "the cat sat") == 0.0
    # Chinese: jieba words 我/爱/北京/天安门 vs 我/爱/北京: P = 3/4, R = 1 -> F = 6/7
    assert m.rouge_l_zh("我爱北京天安门", "我爱北京") == pytest.approx(6 / 7, abs=1e-6)


def test_classification_reproduces_the_skip_after_removal() -> None:
    classes = ["New", "York", "New York City", "Boston"]
    # found = [New, York, New York City]; "New" is removed, so "York" is skipped and survives -> 1/2
    assert m.classification("New York City", "New York City", all_classes=classes) == 0.5
    # the only found name is a proper substring of the gold class: removed, gold not found -> 0
    assert m.classification("York City", "New York City", all_classes=["York", "New York City"]) == 0.0
    assert m.classification("Boston or New York City", "New York City", all_classes=["Boston", "New York City"]) == 0.5
    assert m.classification("Boston", "New York City", all_classes=classes) == 0.0


def test_retrieval_and_count_are_the_share_of_right_numbers() -> None:
    assert m.retrieval_zh("段落27，也可能是段落3", "段落27") == 0.5
    assert m.retrieval("Paragraph 5, not Paragraph 15", "Paragraph 5") == 0.5
    assert m.retrieval("I do not know", "Paragraph 5") == 0.0
    assert m.count("There are 12 unique paragraphs, not 13 or 14", 12) == pytest.approx(1 / 3)


def test_code_sim_uses_fuzzywuzzys_integer_ratio_on_the_first_plain_line() -> None:
    # ratio("abc", "abcd") = 2*3/7 = 85.71 -> fuzzywuzzy rounds to 86 (rapidfuzz would give 0.857...)
    assert m.code_sim("abc", "abcd") == 0.86
    # lines with ``` or # are skipped: "x = foo(1)" vs "x = foo(2)" -> 2*9/20 = 90
    assert m.code_sim("\n```python\n# call it\nx = foo(1)\n", "x = foo(2)") == 0.9
    assert m.code_sim("// only comments", "x = 1") == 0.0


def test_task_score_takes_the_best_answer_and_the_first_line_of_few_shot_tasks() -> None:
    # best over answers: 1 + 0 + 0 -> 33.33
    assert m.task_score("2wikimqa", ["Paris", "Rome", "x"], [["London", "Paris"], ["Oslo"], ["y"]]) == 33.33
    # trec scores only "Location" (leading newlines stripped), not the "Human" on the next line
    classes = ["Location", "Human"]
    assert m.task_score("trec", ["\n\nLocation\nHuman"], [["Location"]], classes) == 100.0
    # multifieldqa_en is not few-shot: the whole prediction counts (P = 1/2 -> F1 = 2/3)
    assert m.task_score("multifieldqa_en", ["Paris\nLondon"], [["Paris"]]) == 66.67


def test_length_buckets_and_leaderboard_averages() -> None:
    scores = m.bucket_scores("2wikimqa", ["x", "y", "y"], [["x"], ["x"], ["y"]], [3999, 4000, 8000])
    assert scores == {"0-4k": 100.0, "4-8k": 0.0, "8k+": 100.0}
    assert m.bucket_scores("2wikimqa", ["x"], [["x"]], [10])["8k+"] is None
    averages = m.leaderboard_averages({"multifieldqa_en": 10.0, "qasper": 20.0, "lcc": 40.0, "multifieldqa_zh": 7.0, "niah_single_4096": 99.0})
    assert averages["en/Single-Document QA"] == 15.0
    assert averages["en/Code"] == 40.0
    assert averages["en/Average"] == 27.5
    assert averages["zh/Code"] == 40.0
    assert averages["zh/Average"] == 23.5  # Code Completion counts in both languages
    assert not any("niah" in k for k in averages)


def test_evaluate_module_matches_task_score() -> None:
    preds, refs = ["the cat sat", ""], [["the cat sat on the mat"], ["anything"]]
    expected = m.task_score("multi_news", preds, refs)
    assert expected == 37.5
    assert load_longbench_metric("multi_news").compute(predictions=preds, references=refs) == {"score": expected}
    trec = LongBenchMetric(config_name="trec")
    assert trec.compute(predictions=["Location"], references=[["Location"]], all_classes=["Location", "Human"]) == {"score": 100.0}


def test_unknown_task_is_refused() -> None:
    with pytest.raises(KeyError, match="Unknown task"):
        m.task_score("not_a_task", ["a"], [["a"]])


# The official LongBench v1 leaderboard (THUDM/LongBench README, LongBench/README.md at commit c5ea10bc,
# "Evaluation Result on Each Dataset" and "Leaderboard"): per-task scores of each model in LEADERBOARD_TASKS
# order, then the published English and Chinese averages.
LEADERBOARD_TASKS = (
    "narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa", "musique", "dureader",
    "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa", "samsum", "lsht", "passage_count",
    "passage_retrieval_en", "passage_retrieval_zh", "lcc", "repobench-p",
)
LEADERBOARD = {
    "GPT-3.5-Turbo-16k": ("23.6 43.3 52.3 61.2 51.6 37.7 26.9 28.7 29.5 23.4 26.7 16.0 68.0 91.4 41.7 29.2 4.5 71.0 77.5 54.7 53.6", 44.0, 44.5),
    "Llama2-7B-chat-4k": ("18.7 19.2 36.8 11.9 25.4 32.8 9.4 5.2 27.3 20.8 25.8 0.2 61.5 77.8 40.7 19.8 2.1 9.8 0.5 52.4 43.8", 31.0, 14.3),
    "LongChat-v1.5-7B-32k": ("16.9 27.7 41.4 29.1 31.5 20.6 9.7 19.5 30.8 22.7 26.4 9.9 63.5 82.3 34.2 23.2 1.0 30.5 7.6 53.0 55.3", 34.3, 23.9),
    "InternLM-7B-8k": ("12.1 16.7 23.4 33.6 28.7 22.8 9.0 11.1 9.7 15.9 22.8 12.4 52.0 77.8 21.2 15.2 3.0 6.0 0.9 44.1 28.8", 24.2, 18.3),
    "ChatGLM3-6B-32k": ("26.0 43.3 51.7 62.3 54.4 44.9 40.4 44.78 36.8 23.9 27.9 17.8 79.0 87.1 38.2 42.0 2.0 99.0 94.0 57.66 54.76", 48.5, 52.8),
}


@pytest.mark.parametrize("model", LEADERBOARD)
def test_leaderboard_averages_reproduce_the_published_ones(model: str) -> None:
    scores, english, chinese = LEADERBOARD[model]
    averages = m.leaderboard_averages(dict(zip(LEADERBOARD_TASKS, map(float, scores.split()), strict=True)))
    # the published per-task scores are rounded to 0.1, the averages computed before rounding: 0.05 apart at most
    assert averages["en/Average"] == pytest.approx(english, abs=0.051)
    assert averages["zh/Average"] == pytest.approx(chinese, abs=0.051)
