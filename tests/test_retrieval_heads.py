"""Retrieval heads: the copy-paste rule on hand-made attention, the decode loop against a full forward, the tables'
round trip into HeadBudgetPolicy / DuoAttentionPolicy / fairkv-plan, and fairkv-profile --retrieval-heads end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fairkv_hf import DuoAttentionPolicy, FairKVCache, HeadBudgetPolicy
from fairkv_hf.cli.plan import main as plan_main
from fairkv_hf.cli.profile import main as profile_main
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.placement.converters import ModelShape, from_duoattention, from_headkv, shared_profiles
from fairkv_hf.placement.head_tables import duoattention_path, headkv_path, kv_head_scores, write_tables
from fairkv_hf.retrieval_heads import NeedlePrompt, concentration, copy_hits, needle_prompts, score_prompt, token_span

from .conftest import tiny_model


def test_copy_rule_on_hand_made_attention() -> None:
    prompt = torch.tensor([9, 7, 9, 7, 3, 7, 8, 9])  # the needle is positions 3..5: tokens 7 3 7
    token = 7  # the token being generated
    attention = torch.full((2, 3, 10), 0.01)  # 2 layers x 3 heads over 8 prompt + 2 generated positions
    tops = [[3, 1, 4], [5, 9, 6]]  # where each head looks most
    for layer, row in enumerate(tops):
        for head, position in enumerate(row):
            attention[layer, head, position] = 0.5
    hits = copy_hits(attention, token, prompt, (3, 6))
    # (0,0): needle token 7 = the token: copies. (0,1): a 7, but outside the needle. (0,2): in the needle, but a 3.
    # (1,0): the needle's other 7: copies. (1,1): a generated position. (1,2): just past the needle.
    assert hits.tolist() == [[True, False, False], [True, False, False]]


def test_decode_loop_matches_a_full_forward() -> None:
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()  # a tied random model repeats its last token and looks at earlier copies of it: heads copy
    ids = torch.randint(3, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    ids[12:16] = [ids[-1]] * 4
    prompt = NeedlePrompt("x", 40, ids, (10, 20), "")
    scores, generated = score_prompt(model, prompt, stop=[], max_new_tokens=6)
    assert model.config._attn_implementation == "sdpa"  # restored
    model.set_attn_implementation("eager")
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids + generated[:-1]]), output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    expected = torch.zeros(scores.shape, dtype=torch.long)
    for step, token in enumerate(generated):
        rows = torch.stack([layer[0, :, len(ids) - 1 + step] for layer in full])
        expected += copy_hits(rows, token, torch.tensor(ids), prompt.needle).long()
    assert expected.sum() > 0  # some head does copy, so the comparison means something
    np.testing.assert_allclose(scores, expected.numpy() / 10)


def test_needle_located_in_the_tokens(tokenizer) -> None:
    assert token_span([(0, 3), (3, 4), (4, 9), (9, 12)], 4, 10) == (2, 4)
    [prompt] = needle_prompts(tokenizer, [300], 1)
    start, end = prompt.needle
    assert len(prompt.ids) <= 300 and 0 < start < end < len(prompt.ids)
    needle = tokenizer.decode(prompt.ids[start:end]).strip()
    assert needle.startswith("The secret code for ") and needle.endswith(f" is {prompt.answer}.")


def test_concentration() -> None:
    assert concentration(np.ones(10)) == pytest.approx({"heads": 10, "top_share": 0.1, "top_heads": 1, "gini": 0.0, "nonzero_share": 1.0})
    one = concentration(np.array([0.0] * 9 + [2.0]))
    assert one["top_share"] == 1.0 and one["gini"] == pytest.approx(0.9)  # n-1/n: one head of ten holds all
    with pytest.raises(ValueError):
        concentration(np.zeros(4))


def _tables(root: Path) -> tuple[ModelShape, np.ndarray]:
    """Tables of the tiny model shape (2 layers, 4 query / 2 KV heads) from made-up per-prompt scores."""
    shape = ModelShape.from_config(tiny_model("llama").config)
    scores = np.zeros((3, 2, 4))
    scores[:, 0, 1] = [0.5, 0.3, 0.4]  # layer 0: query head 1 (KV head 0) retrieves
    scores[:, 1, 3] = [0.1, 0.0, 0.2]  # layer 1: query head 3 (KV head 1) a little
    write_tables(root, "tiny", shape, scores, {"command": "test"})
    return shape, scores


def test_tables_round_trip_into_policies_and_plans(tmp_path: Path) -> None:
    shape, scores = _tables(tmp_path)
    raw = json.loads(headkv_path(tmp_path, "tiny").read_text().splitlines()[0])
    assert raw["0-1"] == [0.5, 0.3, 0.4] and len(raw) == 8
    np.testing.assert_allclose(np.loadtxt(duoattention_path(tmp_path, "tiny"), delimiter="\t"), [[0.4, 0.0], [0.0, 0.1]])
    np.testing.assert_allclose(kv_head_scores(scores.mean(0), 2), [[0.4, 0.0], [0.0, 0.1]])

    headkv = from_headkv(headkv_path(tmp_path, "tiny"), budget=64)  # the shape comes from the card tiny.json
    assert headkv.tokens.shape == (2, 2) and headkv.tokens[0, 0] > headkv.tokens[0, 1]
    duo = DuoAttentionPolicy.from_gates(duoattention_path(tmp_path, "tiny"), fraction=0.5, sink=2, recent=4)
    assert duo.retrieval.tolist() == [[True, False], [False, True]]
    assert from_duoattention(duoattention_path(tmp_path, "tiny"), context=1000).tokens.tolist() == [[1000, 320], [320, 1000]]
    model = tiny_model("llama")
    ids = torch.randint(1, 256, (1, 80), generator=torch.Generator().manual_seed(0))
    for policy in (HeadBudgetPolicy.from_profile(headkv), duo):
        cache = FairKVCache(model, policy=policy)
        with torch.no_grad():
            model(input_ids=ids, **cache_kwarg(cache))
        kept = cache.kept_lengths()[:, 0]
        expected = headkv.tokens if policy is not duo else np.where(duo.retrieval, 80, 6)
        assert kept.tolist() == np.minimum(expected, 80).astype(int).tolist()
    model.set_attn_implementation("sdpa")

    for source in (["--headkv", str(headkv_path(tmp_path, "tiny")), "--budget", "64"],
                   ["--duoattention", str(duoattention_path(tmp_path, "tiny")), "--context", "100"]):
        assert plan_main(source + ["--gpus", "2", "--batch", "4", "--out", str(tmp_path / "plan.json")]) == 0
        assert json.loads((tmp_path / "plan.json").read_text())["gpus"] == 2
    # what fairkv-plan --simulate --profiles-dir reads: the duoattention profile and HeadKV at 128 / 1024 x beta 1.01 / 2
    simulated = shared_profiles(tmp_path)
    assert [p.model for p in simulated][:2] == ["tiny duoattention ctx=32768 retrieval=0.5", "tiny headkv B=128 beta=1.01"]
    assert len(simulated) == 5 and all(p.tokens.shape == (2, 2) for p in simulated)


@pytest.mark.slow
def test_profile_cli_measures_the_default_model(tmp_path: Path, capsys) -> None:
    argv = ["--retrieval-heads", "--lengths", "256", "--records", "2", "--threads", "1", "--device", "cpu", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        assert profile_main(argv) == 0  # one thread: several times faster on a busy 2-core machine
    finally:
        torch.set_num_threads(threads)
    assert "smollm2-135m-instruct: 2 of 2 prompts answered" in capsys.readouterr().out
    card = json.loads((tmp_path / "smollm2-135m-instruct.json").read_text())
    assert card["shape"] == {"num_layers": 30, "num_query_heads": 9, "num_kv_heads": 3, "head_dim": 64, "hidden_size": 576}
    assert card["command"] == "fairkv-profile " + " ".join(argv) and card["prompts"]["counted"] == 2
    table = json.loads(headkv_path(tmp_path, "smollm2-135m-instruct").read_text())
    assert len(table) == 30 * 9 and all(len(v) == 2 for v in table.values()) and max(map(max, table.values())) > 0
    assert HeadBudgetPolicy.from_profile(from_headkv(headkv_path(tmp_path, "smollm2-135m-instruct"))).tokens.shape == (30, 3)


def test_profile_cli_refuses_a_model_that_finds_no_needle(tiny_run_inputs, tmp_path: Path, capsys) -> None:
    argv = ["--retrieval-heads", "--model", str(tiny_run_inputs[0]), "--lengths", "200", "--records", "1",
            "--device", "cpu", "--out", str(tmp_path / "tables")]
    assert profile_main(argv) == 2  # a random model answers nothing: no table is better than a table of noise
    assert "model answered 0 of 1 prompts" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists()
