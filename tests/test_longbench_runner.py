"""Methods, the resumable runner on the real default model (DynamicCache path), and batching."""

from __future__ import annotations

import types

import pytest
from transformers import AutoModelForCausalLM

from fairkv_hf.eval.methods import Method, parse_method
from fairkv_hf.eval.runner import EvalTask, decoding, generate_batch, generation_config, predict, read_predictions
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


def test_official_decoding_keeps_the_models_generation_config(tiny_run_inputs, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_run_inputs[0]).eval()
    model.generation_config.update(repetition_penalty=3.0, do_sample=True, temperature=0.7, top_p=0.8, top_k=20)
    official = generation_config(model, 12, [2], 0, stop_at_newline=False, greedy=False)
    assert (official.repetition_penalty, official.do_sample, official.num_beams, official.top_p) == (3.0, False, 1, 1.0)
    assert generation_config(model, 12, [2], 0, stop_at_newline=False, greedy=True).repetition_penalty == 1.0
    assert model.generation_config.do_sample  # the model's own config is left as it was
    assert decoding(model.generation_config, greedy=False) == {"mode": "official", "repetition_penalty": 3.0}
    assert decoding(model.generation_config, greedy=True) == {"mode": "greedy", "repetition_penalty": 1.0}
    prompt = [tokenizer("Some context number 1. Question: what?").input_ids]
    penalised, _ = generate_batch(model, tokenizer, prompt, 12, parse_method("full"))
    plain, _ = generate_batch(model, tokenizer, prompt, 12, parse_method("full"), greedy=True)
    assert penalised != plain  # the random model repeats itself; the model's penalty stops that only by default


def test_a_rank_that_does_not_write_decodes_the_same_records_and_leaves_the_file_alone(tmp_path, model_and_tokenizer) -> None:
    """The other ranks of a head-parallel run (write=False) see the same records to do and write nothing."""
    model, tokenizer = model_and_tokenizer
    task = EvalTask(LONGBENCH_TASKS["multifieldqa_en"],
                    [{"_id": str(i), "context": "abc " * (20 + i), "input": "q?", "answers": ["x"], "all_classes": None,
                      "length": 5} for i in range(3)], "{context} {input}", 2)
    out = tmp_path / "m" / "multifieldqa_en.jsonl"
    silent = predict(model, tokenizer, task, Method("ada_snapkv-64", "ada_snapkv", 64), out, 200, 2, progress=False, write=False)
    assert silent.records == 3 and not out.exists()


@pytest.mark.parametrize("argv, env, message", [
    (["--plan", "standard"], {}, "launch with torchrun"),
    (["--methods", "full"], {"WORLD_SIZE": "2"}, "use fairkv-full instead of full"),
])
def test_head_parallel_runs_refuse_what_cannot_work(monkeypatch, capsys, tmp_path, argv, env, message) -> None:
    from fairkv_hf.cli.longbench import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["run", "--tasks", "niah_single_256:1", "--out-dir", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name", ["headkv-128", "duo-128"])
def test_table_methods_read_the_models_measured_table_and_generate(name, model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    method = parse_method(name, model="smollm2-135m-instruct")
    policy = method.table_policy()
    if name.startswith("duo"):
        assert (policy.sink, policy.recent) == (64, 64) and policy.retrieval.mean() == 0.5
    else:
        assert policy.tokens.shape == (30, 3) and abs(policy.tokens.mean() - 128) < 1
    prompt = tokenizer("the secret code is 4417. " * 40 + "The code is", add_special_tokens=False).input_ids
    texts, new_tokens = generate_batch(model, tokenizer, [prompt], 4, method)
    assert new_tokens >= 1 and texts[0] is not None


def test_a_table_method_without_the_models_table_says_how_to_measure_it(tmp_path) -> None:
    with pytest.raises(ValueError, match="fairkv-profile --retrieval-heads --model some-model"):
        parse_method("headkv-256", model="some-model", tables=tmp_path)
    with pytest.raises(ValueError, match="64 sink tokens"):
        parse_method("duo-48", model="smollm2-135m-instruct")
