"""fairkv-profile: a real model's measured head loads become a valid HeadLoadProfile for fairkv-plan."""

from __future__ import annotations

import json

import pytest

from fairkv_hf.cli.plan import main as plan_main
from fairkv_hf.cli.profile import main, read_prompts
from fairkv_hf.placement.profile import HeadLoadProfile

from .conftest import SHARED


def test_read_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    assert read_prompts(tmp_path, 5) == ["alpha"]
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"context": "C", "input": "Q"}) + "\n" + json.dumps({"text": "T"}) + "\n")
    assert read_prompts(records, 5) == ["C\n\nQ", "T"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="'text' field"):
        read_prompts(tmp_path / "bad.jsonl", 5)


@pytest.mark.slow
def test_profile_of_smollm2_feeds_the_planner(tmp_path):
    out, samples = tmp_path / "profile.json", tmp_path / "samples.json"
    data = SHARED / "data" / "longbench" / "multifieldqa_en.jsonl"
    assert main(["--data", str(data), "--records", "2", "--max-length", "600", "--budget", "64",
                 "--out", str(out), "--samples", str(samples)]) == 0
    profile = HeadLoadProfile.load(out)
    assert (profile.num_layers, profile.num_kv_heads) == (30, 3)
    per_prompt = json.loads(samples.read_text())
    assert len(per_prompt) == 2
    for kept in per_prompt:
        assert all(sum(layer) == 64 * 3 for layer in kept)
    assert profile.tokens.sum(axis=1).tolist() == pytest.approx([64 * 3] * 30)
    assert plan_main(["--profile", str(out), "--gpus", "2", "--batch", "8", "--out", str(tmp_path / "plan.json")]) == 0


def test_robustness_on_measured_samples(tmp_path, capsys):
    profile = HeadLoadProfile("toy", 2, 4, 2, 16, 64, 10.0, [[12.0, 8.0], [5.0, 15.0]])
    profile.save(tmp_path / "p.json")
    samples = [[[14, 6], [5, 15]], [[10, 10], [6, 14]]]
    (tmp_path / "s.json").write_text(json.dumps(samples))
    assert plan_main(["--profile", str(tmp_path / "p.json"), "--gpus", "2", "--robustness", str(tmp_path / "s.json")]) == 0
    line = capsys.readouterr().out
    assert "2 inputs, 2 GPUs" in line and "offline FairKV plan / per-input optimum = mean" in line
    (tmp_path / "bad.json").write_text(json.dumps([[[1, 2, 3]]]))
    assert plan_main(["--profile", str(tmp_path / "p.json"), "--gpus", "2", "--robustness", str(tmp_path / "bad.json")]) != 0
