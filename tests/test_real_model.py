"""Integration: the embedded SmolLM2-135M-Instruct answers from a ~2k-token passage with Ada-SnapKV at budget 128."""

from __future__ import annotations

import pytest

from fairkv_hf import FairKVCache, load_model
from fairkv_hf.compat import cache_kwarg

CITIES = ["Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Dublin", "Quito", "Perth", "Hanoi", "Zurich",
          "Nairobi", "Havana", "Tunis", "Riga", "Seoul", "Dakar", "Porto", "Bergen", "Krakow", "Cusco"]
NAMES = ["Anna", "Boris", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana",
         "Kofi", "Lena", "Mato", "Nina", "Omar", "Petra", "Quinn", "Rosa", "Sven", "Tara"]
FACT = "The lighthouse keeper of Bergen is named Margarethe Olsen, and she has kept the light burning for thirty years."


def _passage(sentences: int = 90) -> str:
    text = [
        f"{NAMES[i % 20]} visited {CITIES[(i * 7) % 20]} in the spring and wrote a long letter about the markets, "
        "the weather and the old harbour."
        for i in range(sentences)
    ]
    text.insert(sentences // 2, FACT)
    return " ".join(text)


@pytest.mark.slow
def test_smollm2_answers_with_ada_snapkv_budget_128():
    try:
        model, tokenizer = load_model("smollm2-135m-instruct")
    except FileNotFoundError as err:
        pytest.fail(f"the embedded default model is part of the test setup: {err}")
    question = "What is the name of the lighthouse keeper of Bergen?"
    messages = [{"role": "user", "content": f"Read the passage and answer the question.\n\nPassage: {_passage()}\n\n"
                                            f"Question: {question}"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_len = inputs["input_ids"].shape[1]
    assert 1800 <= prompt_len <= 2600
    cache = FairKVCache(model, policy="ada_snapkv", budget=128)
    out = model.generate(**inputs, **cache_kwarg(cache), max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True)
    assert "Margaret" in answer, answer
    config = model.config
    dense_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * prompt_len * config.head_dim * 4
    assert cache.nbytes() < dense_bytes / 8
    kept = cache.kept_lengths()
    assert kept.shape == (config.num_hidden_layers, 1, config.num_key_value_heads)
    appended = out.shape[1] - prompt_len - 1
    assert (kept.sum(-1) == (128 + appended) * config.num_key_value_heads).all()
