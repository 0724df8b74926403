"""Shared fixtures: the embedded default model's tokenizer and model (converted once from its GGUF)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fairkv_hf.models import DEFAULT_MODEL, load_model, resolve_model_path


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def model_and_tokenizer():
    return load_model(DEFAULT_MODEL)
