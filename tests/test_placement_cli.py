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

