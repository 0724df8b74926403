"""fairkv-generate on one process, under torchrun and under accelerate launch (2 CPU processes, gloo): the same
token ids, and user errors reported in one line with exit code 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import tiny_config

ARGS = ["--policy", "ada_snapkv", "--budget", "16", "--window", "4", "--max-new-tokens", "5", "--device", "cpu"]
PROMPTS = ["Summarise: the harbour of Bergen is old and busy, with boats of every size and colour coming in.",
           "Which city has the lighthouse? Lisbon, Oslo or Bergen. Think about the harbour first."]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama with the embedded model's tokenizer, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n")
    return folder


def _run(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env, timeout=300)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "PORT", "-m", "fairkv_hf.cli.generate"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "PORT",
                   "-m", "fairkv_hf.cli.generate"],
}


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_two_processes_give_the_tokens_of_one(tiny_model_dir, tmp_path, name: str) -> None:
    port = _free_port()
    launcher = [port if arg == "PORT" else arg for arg in LAUNCHERS[name]]
    common = ["--model", str(tiny_model_dir), "--prompt-file", str(tiny_model_dir / "prompts.jsonl"), *ARGS]
    one = _run(["-m", "fairkv_hf.cli.generate"], [*common, "--out", str(tmp_path / "one.json")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(launcher, [*common, "--plan", "standard", "--out", str(tmp_path / "two.json")])
    assert two.returncode == 0, two.stderr[-3000:]
    single, parallel = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert parallel["world_size"] == 2 and single["world_size"] == 1
    assert parallel["generated_ids"] == single["generated_ids"]
    assert len(parallel["generated_ids"]) == 2 and all(len(ids) == 5 for ids in parallel["generated_ids"])
    assert parallel["plan_kind"] == "standard" and parallel["plan_figures"]["balance"] >= 1.0
    assert parallel["prefill_s"] > 0 and parallel["decode_tokens_per_s"] > 0 and parallel["steady_tokens_per_s"] > 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--plan", "nowhere.json"], "--plan 'nowhere.json' is neither one of"),
    (["--budget", "0"], "--budget must be a positive integer"),
    (["--prompt-file", "missing.jsonl"], "--prompt-file missing.jsonl does not exist"),
    (["--prompt", "hi", "--prompt-file", "x"], "give exactly one of --prompt or --prompt-file"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs replays decode steps on a GPU"),
])
def test_user_errors_exit_2_in_one_line(tiny_model_dir, extra: list[str], message: str) -> None:
    args = ["--model", str(tiny_model_dir), *ARGS]
    if "--prompt" not in extra and "--prompt-file" not in extra:
        args += ["--prompt", "hello"]
    result = _run(["-m", "fairkv_hf.cli.generate"], [*args, *extra])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_plan_for_two_gpus_is_refused_on_one_process(tiny_model_dir, tmp_path) -> None:
    from fairkv_hf.parallel import resolve_plan

    plan_file = tmp_path / "plan2.json"
    resolve_plan("standard", tiny_config("llama"), 2).save(plan_file)
    result = _run(["-m", "fairkv_hf.cli.generate"], ["--model", str(tiny_model_dir), *ARGS, "--prompt", "hi",
                                                     "--plan", str(plan_file)])
    assert result.returncode == 2
    assert "places heads on 2 GPUs but 1 processes run" in result.stderr
