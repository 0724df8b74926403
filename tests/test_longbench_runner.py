"""Methods, the resumable runner on the real default model (DynamicCache path), and batching."""

from __future__ import annotations

import types

import pytest

from fairkv_hf.eval.methods import Method, parse_method
from fairkv_hf.eval.runner import EvalTask, generate_batch, predict, read_predictions
from fairkv_hf.eval.tasks import LONGBENCH_TASKS

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "How many legs does a spider have?"]


def _task(name: str = "2wikimqa") -> EvalTask:
    records = [
        {"_id": f"q{i}", "input": q, "context": "", "answers": ["x"], "all_classes": None, "length": 5}
        for i, q in enumerate(QUESTIONS)
    ]
    return EvalTask(LONGBENCH_TASKS[name], records, "Answer briefly.\n{context}Question: {input}\nAnswer:", 8)


def test_parse_method() -> None:
    assert parse_method("full") == Method("full")
    assert parse_method("fairkv-full") == Method("fairkv-full", policy="full")
    assert parse_method("ada_snapkv-512") == Method("ada_snapkv-512", policy="ada_snapkv", budget=512)
    for name in ("cake", "ada_cake", "ada_pyramidkv"):
        assert parse_method(f"{name}-512") == Method(f"{name}-512", policy=name, budget=512)
    assert parse_method("snapkv-128", window=16).window == 16
    with pytest.raises(ValueError, match="exceed the observation window"):
        parse_method("snapkv-32")
    for bad in ("snapkv", "foo-128", "duoattention-128", "head_budgets-128", "full-128"):
        with pytest.raises(ValueError, match=f"Unknown method '{bad}'.*ada_cake, ada_pyramidkv, ada_snapkv, cake, pyramidkv, snapkv"):
            parse_method(bad)


def test_compressed_methods_build_a_fresh_fairkv_cache(monkeypatch) -> None:
    made = []

    class FakeCache:
        def __init__(self, model, **kwargs):
            made.append((model, kwargs))

    monkeypatch.setattr("fairkv_hf.eval.methods.FairKVCache", FakeCache)
    model = types.SimpleNamespace()
    assert isinstance(parse_method("ada_snapkv-128").make_cache(model), FakeCache)
    assert isinstance(parse_method("fairkv-full").make_cache(model), FakeCache)
    assert made == [(model, {"policy": "ada_snapkv", "window": 32, "budget": 128}), (model, {"policy": "full", "window": 32})]


@pytest.mark.slow
def test_full_method_restores_sdpa(model_and_tokenizer) -> None:
    model, _ = model_and_tokenizer
    model.set_attn_implementation("eager")
    assert parse_method("full").make_cache(model) is None
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_predict_writes_official_lines_and_resumes(tmp_path, model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    out = tmp_path / "full" / "2wikimqa.jsonl"
    stats = predict(model, tokenizer, _task(), parse_method("full"), out, max_length=1000, progress=False)
    rows = read_predictions(out)
    assert stats.records == 3 and 0 < stats.new_tokens <= 24
    assert [set(r) for r in rows] == [{"pred", "answers", "all_classes", "length", "_id"}] * 3
    assert all(r["pred"].strip() for r in rows)

    assert predict(model, tokenizer, _task(), parse_method("full"), out, max_length=1000, progress=False).records == 0
    text = out.read_text(encoding="utf-8")
    out.write_text(text[: text.rindex('"_id"')], encoding="utf-8")
    assert len(read_predictions(out)) == 2
    assert predict(model, tokenizer, _task(), parse_method("full"), out, max_length=1000, progress=False).records == 1
    assert sorted(read_predictions(out), key=lambda r: r["_id"]) == sorted(rows, key=lambda r: r["_id"])


@pytest.mark.slow
def test_batched_generation_matches_one_by_one(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(f"Question: {q}\nAnswer:").input_ids for q in QUESTIONS]
    alone = [generate_batch(model, tokenizer, [p], 8, parse_method("full"))[0][0] for p in prompts]
    together, _ = generate_batch(model, tokenizer, prompts, 8, parse_method("full"))
    assert together == alone


@pytest.mark.slow
def test_newline_stop(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompt = [tokenizer("Write the names of three fruits, one per line:\n").input_ids]
    free, _ = generate_batch(model, tokenizer, prompt, 24, parse_method("full"))
    stopped, _ = generate_batch(model, tokenizer, prompt, 24, parse_method("full"), stop_at_newline=True)
    # free: "\n```python\ndef ..." (several lines); with the stop, a newline cannot be the first token
    # (min_new_tokens=1, as pred.py's min_length) and generation ends at the next one
    assert free[0].strip("\n").count("\n") >= 2
    assert stopped[0] and not stopped[0].startswith("\n")
    assert "\n" not in stopped[0].rstrip("\n")
