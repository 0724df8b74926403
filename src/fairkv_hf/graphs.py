"""Decode steps replayed from CUDA graphs: `generate()` with a FairKVCache at GPU speed.

Eager decoding is host-bound (about 1,500 kernel launches per step for an 8B model). Once the cache has reserved
its decode capacity at prefill (`FairKVCache(..., max_new_tokens=N)`), a decode step allocates nothing, takes no
block and launches a fixed grid, so the whole forward can be captured once and replayed. `enable_cuda_graphs(model)`
wraps the model's forward: the prefill and any step it cannot replay run eagerly; the first decode step of a cache
runs eagerly (warm-up: Triton compilation, cuBLAS workspaces, NCCL communicators), the second is captured and
replayed, later ones replay the same graph with the new token ids and positions copied into its input buffers. Past
the reserved capacity the cache grows its storage outside any graph and the steps run eagerly (never wrong, only
slower). Under head-parallel execution every rank captures the same step, so the NCCL all-reduces inside the graph
line up.

The step is captured as a few graphs run back to back (`PIECE_LAYERS` decoder layers each, the first holding only
the embedding and layer 0): launching a graph costs host time per kernel it holds (about 0.85 us on an H100 host,
0.45 ms for an 8B model's whole step, bench/results/h100), and the GPU starts only once the launch returns. A small
first piece starts the GPU early and the later launches overlap its work.

Why not transformers' own compile path (`is_compileable` + `torch.compile(mode="reduce-overhead")`): the decode
forward reads Python ints that change every step (the logical length behind `get_seq_length` / `get_mask_sizes`
and the cache's step counter), and generate's 2D attention mask grows every step; each would make dynamo guard and
recompile per step unless moved into device tensors, and our Triton kernels would need `torch.library` wrappers.
Capturing the step ourselves needs none of that and keeps the eager path the single source of truth.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from .cache import FairKVCache

_STEP_INPUTS = ("input_ids", "position_ids", "cache_position")
PIECE_LAYERS = 8


@dataclass
class _Captured:
    """One cache's captured decode step: its graphs (replayed in order), input buffers, output, and what it was
    recorded for (batch size and the storage it reads: a new prefill or a grown pool needs a new capture)."""

    key: tuple
    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    output: Any = None


class GraphedDecode:
    """A replacement for `model.forward` that replays captured decode steps (see the module docstring)."""

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.eager = model.forward
        # generate() reads the forward's signature (it passes position_ids only to a forward that takes them)
        self.__signature__ = inspect.signature(self.eager)
        self.captures = 0
        self.replays = 0

    def __call__(self, *args: Any, **kwargs: Any):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        ids = kwargs.get("input_ids")
        if (args or getattr(self.model, "fairkv_graphs_off", False) or not isinstance(cache, FairKVCache) or ids is None or ids.shape[1] != 1 or not ids.is_cuda
                or kwargs.get("inputs_embeds") is not None or cache.static_steps_left() < 1):
            return self.eager(*args, **kwargs)
        others = {k: v for k, v in kwargs.items() if k not in _STEP_INPUTS and k != "attention_mask"}
        if any(isinstance(v, torch.Tensor) for v in others.values()) or not isinstance(kwargs.get("position_ids"), torch.Tensor):
            return self.eager(*args, **kwargs)  # positions must come in as a tensor: a graph would freeze them
        key = (ids.shape[0], *(layer.k_pool.data_ptr() for layer in cache.layers))
        state: _Captured | None = getattr(cache, "_captured", None)
        if state is None or state.key != key:
            cache._captured = _Captured(key)
            return self.eager(*args, **kwargs)
        step = {k: kwargs[k] for k in _STEP_INPUTS if isinstance(kwargs.get(k), torch.Tensor)}
        if not state.graphs:
            return self._capture(cache, state, step, others)
        if step.keys() != state.inputs.keys() or any(v.shape != state.inputs[k].shape for k, v in step.items()):
            return self.eager(*args, **kwargs)
        torch._foreach_copy_([state.inputs[k] for k in step], list(step.values()))  # one launch for all inputs
        for graph in state.graphs:
            graph.replay()
        for layer in cache.layers:
            layer.advance_host_state()
        self.replays += 1
        return state.output

    def _capture(self, cache: FairKVCache, state: _Captured, step: dict, others: dict):
        """Capture one decode step in pieces (its host bookkeeping runs once, here) and replay them for this step's
        result. The pieces share one memory pool: they run in capture order, so each finds its inputs in place."""
        state.inputs = {k: v.clone() for k, v in step.items()}
        graphs = state.graphs

        def next_piece(*_) -> None:
            if graphs:
                graphs[-1].capture_end()
            graphs.append(torch.cuda.CUDAGraph())
            graphs[-1].capture_begin(pool=graphs[0].pool() if len(graphs) > 1 else None)

        layers = getattr(getattr(self.model, "model", None), "layers", [])
        hooks = [layer.register_forward_pre_hook(next_piece) for layer in list(layers)[1::PIECE_LAYERS]]
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                next_piece()
                try:
                    state.output = self.eager(**state.inputs, **others, attention_mask=None)
                finally:
                    graphs[-1].capture_end()
        except BaseException:
            graphs.clear()  # the next step captures again
            raise
        finally:
            for hook in hooks:
                hook.remove()
        torch.cuda.current_stream().wait_stream(stream)
        for graph in graphs:
            graph.replay()
        self.captures += 1
        return state.output


def enable_cuda_graphs(model: PreTrainedModel) -> GraphedDecode:
    """Make `model.generate()` replay decode steps from CUDA graphs for caches made with max_new_tokens (idempotent;
    set `model.fairkv_graphs_off = True` to run eagerly again, e.g. to compare)."""
    if isinstance(model.forward, GraphedDecode):
        return model.forward
    graphed = GraphedDecode(model)
    model.forward = graphed
    return graphed
