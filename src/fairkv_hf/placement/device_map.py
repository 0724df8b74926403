"""Head device maps: a plan as accelerate-style names, ``{"model.layers.3.self_attn.kv_heads.5": [0, 1], ...}``.

A value is one GPU id (the head lives there), a list of GPU ids (replicas sharing the batch rows equally) or an
object ``{"0": 0.75, "1": 0.25}`` (replicas with the batch fractions given). Every (layer, KV head) of the model
must appear once. `to_device_map` writes the shortest of these forms that keeps the plan's fractions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fairkv_hf.files import atomic_write
from fairkv_hf.placement.cost import CostModel
from fairkv_hf.placement.plans import Placement, Plan
from fairkv_hf.placement.profile import HeadLoadProfile

KEY = re.compile(r"^model\.layers\.(\d+)\.self_attn\.kv_heads\.(\d+)$")
_EQUAL = 1e-12


def head_key(layer: int, head: int) -> str:
    """The device-map name of KV head `head` of layer `layer`."""
    return f"model.layers.{layer}.self_attn.kv_heads.{head}"


def to_device_map(plan: Plan) -> dict[str, Any]:
    """The plan's placements as a head device map (fractions kept exactly where they are not equal)."""
    out: dict[str, Any] = {}
    for l, layer in enumerate(plan.layers):
        for h, pieces in enumerate(layer):
            gpus = [p.gpu for p in pieces]
            if len(pieces) == 1:
                out[head_key(l, h)] = gpus[0]
            elif all(abs(p.batch_fraction - 1 / len(pieces)) <= _EQUAL for p in pieces):
                out[head_key(l, h)] = gpus
            else:
                out[head_key(l, h)] = {str(p.gpu): p.batch_fraction for p in pieces}
    return out


def _placements(key: str, value: Any) -> list[Placement]:
    """The replicas one device-map value describes (see the module docstring)."""
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a GPU id, a list of GPU ids or {{gpu: fraction}}, got {value!r}")
    if isinstance(value, int):
        return [Placement(value, 1.0)]
    if isinstance(value, list) and value and all(isinstance(g, int) and not isinstance(g, bool) for g in value):
        return [Placement(g, 1.0 / len(value)) for g in value]
    if isinstance(value, dict) and value:
        try:
            return [Placement(int(g), float(x)) for g, x in value.items()]
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{key}: expected a GPU id, a list of GPU ids or {{gpu: fraction}}, got {value!r}")


def from_device_map(
    device_map: dict[str, Any], profile: HeadLoadProfile, gpus: int | None = None, batch: int = 32,
    cost: CostModel | None = None,
) -> Plan:
    """A Plan from a head device map over `profile`'s model shape; `gpus` defaults to the largest id + 1."""
    layers: list[list[list[Placement] | None]] = [[None] * profile.num_kv_heads for _ in range(profile.num_layers)]
    for key, value in device_map.items():
        match = KEY.match(key)
        if match is None:
            raise ValueError(f"device map key {key!r} is not of the form 'model.layers.L.self_attn.kv_heads.H'")
        l, h = int(match[1]), int(match[2])
        if l >= profile.num_layers or h >= profile.num_kv_heads:
            raise ValueError(f"device map key {key!r} is outside the model: {profile.num_layers} layers x "
                             f"{profile.num_kv_heads} KV heads")
        layers[l][h] = _placements(key, value)
    missing = [head_key(l, h) for l, layer in enumerate(layers) for h, p in enumerate(layer) if p is None]
    if missing:
        raise ValueError(f"device map lacks {len(missing)} KV head(s), e.g. {missing[0]!r}: name every head of every layer")
    gpus = gpus if gpus is not None else 1 + max(p.gpu for layer in layers for pieces in layer for p in pieces)
    plan = Plan(profile, gpus, batch, "time", gpus - 1, layers, cost or CostModel(), kind="device_map")
    plan.validate()
    return plan


def load_plan_file(path: str | Path, profile: HeadLoadProfile, gpus: int | None = None, batch: int = 32) -> Plan:
    """A plan file (fairkv-plan --out) or a head device map file (placed over `profile`'s shape); errors name the
    file and the place that is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a plan (fairkv-plan --out) or a head device map object, got "
                         f"{type(data).__name__}")
    try:
        return Plan.from_dict(data) if "layers" in data else from_device_map(data, profile, gpus, batch)
    except KeyError as err:
        raise ValueError(f"plan file {path} lacks the key {err}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def save_device_map(plan: Plan, path: str | Path) -> None:
    """Write the plan's head device map as JSON."""
    atomic_write(Path(path), json.dumps(to_device_map(plan), indent=1) + "\n")
