"""The entry point: `prepare(model, plan)` turns a loaded model into this rank's head-parallel share.

User code is the same on every rank (launched by torchrun or accelerate launch)::

    model, tokenizer = load_model(name)                      # every rank loads the whole model (CPU is fine)
    model = fairkv_hf.parallel.prepare(model, "fairkv", profile=profile)   # or "standard", a plan file, a device map
    out = model.generate(**inputs, **cache_kwarg(FairKVCache(model, policy="ada_snapkv", budget=128)))

Every rank calls generate() with the same inputs. After each all-reduce every rank holds the same bits, so greedy
decoding agrees, and sampling agrees as long as every rank's random generator is in the same state (torch's
default at process start, or the same torch.manual_seed on every rank). Not launched (one process), `prepare`
checks the plan and leaves the model as it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..cache import ATTN_IMPLEMENTATION, SUPPORTED_MODEL_TYPES, _text_config
from ..placement.device_map import from_device_map, load_plan_file
from ..placement.plans import Plan, make_plan, standard_plan
from ..placement.profile import HeadLoadProfile
from .attention import HeadParallelAttention
from .collectives import init_distributed, init_symmetric_sums
from .layout import check_plan, rank_layout
from .sharded import RowParallelMLP, VocabParallelHead

PLAN_NAMES = ("standard", "best_effort", "fairkv")
MLP_MODES = ("split", "replicate")


def resolve_plan(
    spec: str | Path | Plan | dict[str, Any],
    config: Any,
    gpus: int,
    profile: HeadLoadProfile | None = None,
    batch: int = 32,
) -> Plan:
    """A Plan from a name ("standard", "best_effort", "fairkv"), a plan file of fairkv-plan, a head device map
    (dict or JSON file) or a Plan. "best_effort" and "fairkv" balance `profile` (a head load profile of this
    model under the policy used, from fairkv-profile); "standard" needs none."""
    if isinstance(spec, Plan):
        return spec
    uniform = profile or HeadLoadProfile.from_config(getattr(config, "name_or_path", "") or config.model_type, config, 1.0, 1.0)
    if isinstance(spec, dict):
        return from_device_map(spec, uniform, gpus, batch)
    if spec == "standard":
        return standard_plan(uniform, gpus, batch)
    if spec in ("best_effort", "fairkv"):
        if profile is None:
            raise ValueError(f"plan {spec!r} balances measured head loads: pass profile= (a HeadLoadProfile, e.g. from "
                             "fairkv-profile --policy ada_snapkv --budget B --out profile.json) or use plan='standard'")
        return make_plan(profile, gpus, batch, max_copies=0 if spec == "best_effort" else None)
    if not Path(spec).is_file():
        raise ValueError(f"plan {str(spec)!r} is neither one of {PLAN_NAMES} nor an existing plan or device-map file")
    return load_plan_file(spec, uniform, gpus, batch)


def _device(device: str | torch.device | None) -> torch.device:
    """The given device, else this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def prepare(
    model: PreTrainedModel,
    plan: str | Path | Plan | dict[str, Any] = "standard",
    *,
    profile: HeadLoadProfile | None = None,
    batch: int = 32,
    mlp: str = "split",
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """Keep this rank's share of `model` under `plan` (see `resolve_plan`) and move it to `device`.

    Every decoder layer's self_attn becomes a HeadParallelAttention over the rank's KV heads; with mlp="split" the
    MLP and lm_head are split evenly over the ranks (the same for every plan), with "replicate" every rank keeps
    them whole (small models). `batch` is the batch size the plan optimises for (named plans only); any batch runs.
    Creates the process group from the launcher's environment if none exists (NCCL on CUDA, gloo on CPU), and on
    CUDA the symmetric-memory buffer for decode-sized sums (collectives.py).
    """
    config = _text_config(model)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"head-parallel execution supports model types {SUPPORTED_MODEL_TYPES}, got "
                         f"{config.model_type!r}")
    if mlp not in MLP_MODES:
        raise ValueError(f"mlp must be one of {MLP_MODES}, got {mlp!r}")
    if getattr(model, "fairkv_layout", None) is not None:
        raise ValueError("this model is already prepared for head-parallel execution: load it again to use another plan")
    device = _device(device)
    rank, world_size = init_distributed(device.type)
    resolved = resolve_plan(plan, config, world_size, profile, batch)
    check_plan(resolved, config, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        init_symmetric_sums(device)
        layout = rank_layout(resolved, rank, world_size)
        for layer, heads in zip(model.model.layers, layout.heads):
            layer.self_attn = HeadParallelAttention(layer.self_attn, heads.ids, keeps_bias=rank == 0)
            if mlp == "split":
                layer.mlp = RowParallelMLP(layer.mlp, rank, world_size)
        if mlp == "split":
            model.lm_head = VocabParallelHead(model.lm_head, rank, world_size)
        model.fairkv_layout = layout
    model.fairkv_plan = resolved
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model.to(device)
