"""The fairkv-plan command line."""

import json

from fairkv_hf.cli.plan import main

from .conftest import SHARED

DUO = str(SHARED / "profiles" / "duoattention" / "Mistral-7B-Instruct-v0.2.full_attention_heads.tsv")


def test_cli_writes_a_valid_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--duoattention", DUO, "--gpus", "4", "--batch", "8", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["gpus"] == 4 and data["batch"] == 8 and len(data["layers"]) == 32
    assert "balance" in capsys.readouterr().out



def test_cli_writes_the_plan_as_a_head_device_map_too(tmp_path):
    from fairkv_hf.cli.plan import main
    from fairkv_hf.placement import Plan
    from fairkv_hf.placement.device_map import load_plan_file

    out, device_map = tmp_path / "plan.json", tmp_path / "map.json"
    assert main(["--duoattention", DUO, "--gpus", "4", "--batch", "8", "--out", str(out), "--device-map", str(device_map)]) == 0
    plan = Plan.load(out)
    back = load_plan_file(device_map, plan.profile, plan.gpus)
    assert [[sorted((p.gpu, p.batch_fraction) for p in h) for h in l] for l in back.layers] == \
        [[sorted((p.gpu, p.batch_fraction) for p in h) for h in l] for l in plan.layers]


def test_simulation_takes_the_measured_profiles_named_by_file(tmp_path):
    from fairkv_hf.placement.profile import HeadLoadProfile
    from fairkv_hf.placement.simulate import measured_profiles

    HeadLoadProfile("smollm2", 2, 4, 2, 16, 64, 10.0, [[12.0, 8.0], [5.0, 15.0]]).save(tmp_path / "smollm2_cake10_profile.json")
    (tmp_path / "smollm2_cake10_samples.json").write_text("[]")
    [profile] = measured_profiles(tmp_path)
    assert profile.model == "smollm2 measured: smollm2_cake10_profile.json"
    assert profile.tokens.tolist() == [[12.0, 8.0], [5.0, 15.0]]
