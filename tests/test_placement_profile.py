"""Profiles, their JSON form, validation, and the converters from the shared DuoAttention/HeadKV data."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fairkv_hf.placement import HeadLoadProfile, from_duoattention, from_headkv, standard_tp_loads
from fairkv_hf.placement.converters import ModelShape

from .conftest import SHARED as _SHARED

SHARED = _SHARED / "profiles"


def _profile(tokens, heads=2, q=4):
    tokens = np.asarray(tokens, dtype=float)
    return HeadLoadProfile("toy", tokens.shape[0], q, heads, 8, 32, 100.0, tokens)


def test_json_round_trip(tmp_path):
    p = _profile([[1.0, 2.5], [3.0, 0.0]])
    p.save(tmp_path / "p.json")
    q = HeadLoadProfile.load(tmp_path / "p.json")
    assert q.to_dict() == p.to_dict()
    assert q.group_size == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tokens": [[1.0, -2.0], [1.0, 1.0]]}, "negative"),
        ({"tokens": [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]]}, "shape"),
        ({"num_query_heads": 3}, "multiple"),
        ({"num_layers": 0}, "positive integer"),
        ({"tokens": [[0.0, 0.0], [1.0, 1.0]]}, "keeps no tokens"),
    ],
)
def test_bad_profiles_are_refused(change, message):
    data = _profile([[1.0, 2.0], [1.0, 1.0]]).to_dict() | change
    with pytest.raises(ValueError, match=message):
        HeadLoadProfile.from_dict(data)


def test_missing_key_is_named():
    data = _profile([[1.0, 2.0]]).to_dict()
    del data["head_dim"]
    with pytest.raises(ValueError, match="head_dim"):
        HeadLoadProfile.from_dict(data)


def test_from_kept_lengths_averages_every_sequence():
    config = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64)
    a = torch.tensor([[[10, 20], [30, 40]], [[1, 2], [3, 4]]])  # [layers=2, batch=2, heads=2]
    b = torch.tensor([[[50, 60]], [[5, 6]]])  # batch 1
    p = HeadLoadProfile.from_kept_lengths("m", config, [a, b], budget=64)
    np.testing.assert_allclose(p.tokens, [[30.0, 40.0], [3.0, 4.0]])
    assert (p.head_dim, p.num_kv_heads, p.budget) == (16, 2, 64.0)
    with pytest.raises(ValueError, match="num_kv_heads"):
        HeadLoadProfile.from_kept_lengths("m", config, [torch.zeros(2, 1, 3, dtype=torch.long)], budget=64)


def test_headkv_rule_on_a_tiny_file(tmp_path):
    shape = ModelShape(num_layers=1, num_query_heads=4, num_kv_heads=2, head_dim=8, hidden_size=32)
    scores = {"0-0": [1, 3], "0-1": [2, 2], "0-2": [0, 1], "0-3": [1, 0]}
    path = tmp_path / "Toy_retrieval_heads.json"
    path.write_text(json.dumps(scores))
    p = from_headkv(path, budget=132, beta=2.0, shape=shape)
    # KV scores: 2 + 2 = 4 and 0.5 + 0.5 = 1; B_eff = 100, pool = 50 * 1 * 2 = 100
    np.testing.assert_allclose(p.tokens, [[round(4 / 5 * 100 + 50) + 32, round(1 / 5 * 100 + 50) + 32]])


def test_duoattention_keeps_full_context_for_the_top_gates(tmp_path):
    path = tmp_path / "Toy.full_attention_heads.tsv"
    path.write_text("0.9\t0.1\n0.5\t0.7\n")
    p = from_duoattention(path, context=1000, retrieval_fraction=0.5, shape=ModelShape(2, 2, 2, 8, 32))
    np.testing.assert_allclose(p.tokens, [[1000, 320], [320, 1000]])


def test_real_profiles_reproduce_the_issue_imbalance():
    headkv = from_headkv(SHARED / "headkv" / "Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json", 128, 1.01)
    duo = from_duoattention(SHARED / "duoattention" / "Meta-Llama-3.1-8B-Instruct.full_attention_heads.tsv")
    assert [round(standard_tp_loads(headkv, n).balance(headkv), 2) for n in (2, 4, 8)] == [1.29, 1.66, 2.49]
    assert [round(standard_tp_loads(duo, n).balance(duo), 2) for n in (2, 4, 8)] == [1.26, 1.55, 1.98]
