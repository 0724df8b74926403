"""Shared fixtures: tiny random models of the four supported families (float32, CPU) and the embedded default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: kernels run in its interpreter

import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    Qwen2Config,
    PreTrainedTokenizerBase,
    Qwen3Config,
)

import fairkv_hf  # noqa: F401  (registers the "fairkv" attention)
from fairkv_hf.models import DEFAULT_MODEL, load_model, resolve_model_path

VOCAB = 256
SHARED = Path(__file__).resolve().parents[2] / "shared"  # the shared/ folder beside the checkout
TINY_TASKS = ("samsum", "2wikimqa")  # the LongBench tasks of tiny_run_inputs' data folder
TINY_RECORDS = 4  # records per task there


def tiny_config(family: str, layers: int = 2):
    """A small config of `family` with GQA (4 query heads over 2 KV heads, head_dim 16)."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=0,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "qwen3":
        return Qwen3Config(**common, head_dim=16)
    raise ValueError(family)


def tiny_model(family: str, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers), attn_implementation="sdpa")
    return model.eval()


def left_padded(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, left-padded to the longest (pad id 0)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(1, VOCAB, (n,), generator=gen)
        mask[row, width - n :] = 1
    return ids, mask


@pytest.fixture(params=["llama", "mistral", "qwen2", "qwen3"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """The embedded default model's tokenizer."""
    return AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def model_and_tokenizer():
    """The embedded default model (SmolLM2-135M-Instruct, float32) and its tokenizer, loaded once."""
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_run_inputs(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """A tiny random Llama folder (the embedded model's tokenizer) and a LongBench folder of TINY_RECORDS short records
    for each of TINY_TASKS (3 new tokens): fairkv-longbench runs on them in seconds."""
    root = tmp_path_factory.mktemp("tiny_run_inputs")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = root / "data"
    (data / "config").mkdir(parents=True)
    (data / "config" / "dataset2prompt.json").write_text(json.dumps({t: "{context}\nQuestion: {input}\nAnswer:" for t in TINY_TASKS}))
    (data / "config" / "dataset2maxlen.json").write_text(json.dumps({t: 3 for t in TINY_TASKS}))
    for task in TINY_TASKS:
        rows = [{"_id": f"{task}-{i}", "input": f"question {i}?", "context": f"Some context number {i}. " * (i + 1),
                 "answers": [f"answer {i}"], "all_classes": None, "length": 5 * (i + 1)} for i in range(TINY_RECORDS)]
        (data / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "model", data
