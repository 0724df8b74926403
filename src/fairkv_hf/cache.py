"""FairKVCache: a transformers Cache that stores a different number of tokens for every KV head.

Storage, per layer: a paged pool of 64-token blocks shared by all segments, where a segment is one
(batch row, KV head). Each segment owns a list of blocks (its row of `block_table`) and a length. Evicted
tokens are never stored, so memory is really freed; appending a decode token writes one slot per segment and
takes a new block only when a segment's last block is full (the pool grows by ~1/16 when it runs out, so
appending is amortized O(1) and the whole cache is never copied per step).

Constructing a FairKVCache switches the model to the "fairkv" attention implementation (see attention.py),
which reads this store; the cache refuses to run under any other attention (it would silently be wrong).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from .heads import HeadSet
from .kernels import choose_backend
from .kernels.append import append_tokens
from .policies import Policy, get_policy

BLOCK_SIZE = 64
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ATTN_IMPLEMENTATION = "fairkv"


@dataclass
class FairKVStep:
    """What `update()` hands the attention function: the layer, this forward's new keys/values, and the phase:
    "prefill" (dense attention, then compression), "decode" (one token, already appended) or "extend" (several
    tokens on a filled cache, appended by the attention function, which knows which of them are padding). At prefill,
    `earlier` holds the cache's layers before this one, which a cascading policy (CAKE) shrinks."""

    layer: FairKVLayer
    keys: torch.Tensor
    values: torch.Tensor
    phase: str
    earlier: tuple[FairKVLayer, ...] = ()


class FairKVLayer(CacheLayerMixin):
    """One decoder layer's per-head variable-length K/V store.

    `heads` names the KV heads this layer object holds and the batch rows it serves for each (every head, every
    row by default; a multi-GPU rank holds its plan's share). Its segments are the served (batch row, held head)
    pairs in row-major order: on one process, segment `b * num_heads + j` is batch row b, head j.
    """

    is_compileable = False
    is_sliding = False

    def __init__(
        self,
        layer_idx: int,
        policy: Policy,
        budget: int | None,
        window: int,
        heads: HeadSet | None = None,
        block_size: int = BLOCK_SIZE,
        reserve: int = 0,
    ):
        super().__init__()
        self.reserve = reserve
        self.layer_idx = layer_idx
        self.policy = policy
        self.budget = budget
        self.window = window
        self.heads = heads
        self.block_size = block_size
        self.cumulative_length = 0
        self._clear()

    def _clear(self) -> None:
        self.k_pool: torch.Tensor | None = None
        self.v_pool: torch.Tensor | None = None
        self.block_table: torch.Tensor | None = None
        self.seq_lens: torch.Tensor | None = None
        self.stored_lens = torch.zeros(0, dtype=torch.long)
        self.steps = 0
        self.max_len = 0
        self.capacity_len = 0
        self._stored_total = 0
        self._residues: list[int] = []
        self._append_backend = "reference"
        self.blocks_used = 0
        self.batch_size = 0
        self.num_heads = 0
        self.served: torch.Tensor | None = None
        self.segment_index: torch.Tensor | None = None
        self.is_initialized = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Record shape, dtype, device and which (row, head) pairs are served; storage is allocated at compression."""
        self.batch_size, self.num_heads = key_states.shape[0], key_states.shape[1]
        self.dtype, self.device = key_states.dtype, key_states.device
        if self.heads is None:
            self.heads = HeadSet.full(self.num_heads)
        if len(self.heads.held) != self.num_heads:
            raise ValueError(f"layer {self.layer_idx} holds {len(self.heads.held)} KV heads but got keys for "
                             f"{self.num_heads}: the model and the cache were prepared for different plans")
        self.served = self.heads.served(self.batch_size)
        every = bool(self.served.all())
        self.segment_index = None if every else self.served.flatten().nonzero().squeeze(1).to(self.device)
        self.is_initialized = True

    @property
    def num_segments(self) -> int:
        """Served (batch row, held head) pairs."""
        return int(self.served.sum()) if self.served is not None else 0

    def segments_of(self, grid: torch.Tensor) -> torch.Tensor:
        """Rows of `grid` [B * held heads, ...] (row-major) that are this layer's segments, in segment order."""
        return grid if self.segment_index is None else grid.index_select(0, self.segment_index)

    def grid_of(self, segments: torch.Tensor) -> torch.Tensor:
        """Inverse of `segments_of`: [S, ...] -> [B * held heads, ...] with zeros where no segment is served."""
        if self.segment_index is None:
            return segments
        grid = segments.new_zeros(self.batch_size * self.num_heads, *segments.shape[1:])
        return grid.index_copy_(0, self.segment_index, segments)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Prefill: hand the dense new K/V to the attention (which compresses them); decode: append one token;
        several tokens on a filled cache (a question after a compressed context): hand them over to be appended."""
        new_tokens = key_states.shape[-2]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif key_states.shape[0] != self.batch_size:
            raise ValueError(f"FairKVCache holds {self.batch_size} sequences but got {key_states.shape[0]}: continue "
                             "with the same batch (cache.copy() per question batch) or call cache.reset()")
        self.cumulative_length += new_tokens
        if self.seq_lens is None:
            phase = "prefill"
        elif new_tokens == 1:
            phase = "decode"
            self._append(key_states, value_states)
        else:
            phase = "extend"
        step = FairKVStep(self, key_states, value_states, phase)
        return step, step

    def compress(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        scaling: float,
        earlier: Sequence[FairKVLayer] = (),
    ) -> None:
        """Let the policy choose the prompt tokens each KV head keeps, and store only those; a cascading policy
        (CAKE) first shrinks some of the layers before this one (`earlier`), so they free their blocks before these
        are taken."""
        keep = self.policy.keep_mask(queries, keys, valid, scaling, self.budget, self.window, self.layer_idx, self.heads)
        for layer_idx, stay in self.policy.cascade(self.layer_idx).items():
            earlier[layer_idx].keep_stored(stay)
        self.store(keys, values, keep)

    def keep_stored(self, stay: torch.Tensor) -> None:
        """Keep only the stored tokens where `stay` holds (bool [B, held heads, width], each (row, head)'s stored tokens
        in order), in freshly allocated blocks, the old ones freed: how a cascading policy shrinks this layer."""
        stay = self.segments_of(stay.flatten(0, 1))
        width = min(stay.shape[-1], self.max_len)
        stay = stay[:, :width] & (torch.arange(width, device=stay.device) < self.seq_lens[:, None])
        seg, pos = stay.nonzero(as_tuple=True)
        slots = self.block_table[seg, pos // self.block_size].long() * self.block_size + pos % self.block_size
        dim = self.k_pool.shape[-1]
        self._write(stay, self.k_pool.view(-1, dim)[slots], self.v_pool.view(-1, dim)[slots])

    def store(self, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor) -> None:
        """Store the kept prompt tokens (`keep`: bool [B, held heads, L]) of the dense keys/values [B, held heads, L, D]:
        what compression does with the policy's choice, also usable to fill a layer with K/V chosen elsewhere
        (see synthetic.py)."""
        keep = self.segments_of(keep.reshape(-1, keep.shape[-1]))
        seg, pos = keep.nonzero(as_tuple=True)
        grid = seg if self.segment_index is None else self.segment_index[seg]
        b, h = grid // self.num_heads, grid % self.num_heads
        self._write(keep, keys.detach()[b, h, pos], values.detach()[b, h, pos])  # the store never holds autograd history

    def _write(self, keep: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store each segment's kept tokens (`keep`: bool [segments, L]; `keys`/`values`: [kept tokens, D] in the
        row-major order of `keep`) in freshly allocated blocks; a segment's tokens stay in order."""
        lengths = keep.sum(-1)
        self.stored_lens = lengths.cpu()
        self.steps = 0
        self._stored_total = int(self.stored_lens.sum())
        self._residues = torch.bincount(self.stored_lens % self.block_size, minlength=self.block_size).tolist()
        self._append_backend = "triton" if choose_backend(self.device) == "triton" else "reference"
        blocks = (self.stored_lens + self.reserve + self.block_size - 1) // self.block_size
        first_block = torch.cumsum(blocks, 0) - blocks
        self.max_len = int(self.stored_lens.max()) if len(blocks) else 0
        self.capacity_len = self.max_len + self.reserve
        columns = torch.arange(max(int(blocks.max()) if len(blocks) else 0, 1))
        block_table = torch.where(columns < blocks[:, None], first_block[:, None] + columns, 0)
        self.blocks_used = int(blocks.sum())
        dim = keys.shape[-1]
        self.k_pool = keys.new_empty(self.blocks_used, self.block_size, dim)
        self.v_pool = values.new_empty(self.blocks_used, self.block_size, dim)
        rank = torch.cumsum(keep, -1) - 1
        dest = (first_block.to(keep.device)[:, None] * self.block_size + rank)[keep]
        self.k_pool.view(-1, dim)[dest] = keys
        self.v_pool.view(-1, dim)[dest] = values
        self.block_table = block_table.to(device=keep.device, dtype=torch.int32)
        self.seq_lens = lengths.to(torch.int32)

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write one new token per segment; segments whose last block is full take the next free block.

        Every segment grows by one token per step, so the host knows without reading the device how many segments
        start a block at this step (those whose stored length has the right residue); the device finds which.
        """
        new_blocks = 0 if self.steps < self.reserve else self._residues[-self.steps % self.block_size]
        if new_blocks:
            self._reserve(new_blocks)
        dim = key_states.shape[-1]
        keys = self.segments_of(key_states.detach().reshape(-1, dim)).contiguous()
        values = self.segments_of(value_states.detach().reshape(-1, dim)).contiguous()
        if len(keys):
            append_tokens(self.k_pool, self.v_pool, self.block_table, self.seq_lens, keys, values, self.blocks_used,
                          new_blocks, self._append_backend)
        self.blocks_used += new_blocks
        self.steps += 1
        self.max_len += 1

    def extend(self, key_states: torch.Tensor, value_states: torch.Tensor, valid: torch.Tensor) -> None:
        """Append several new tokens [B, held heads, n, D] to every segment, uncompressed, skipping the padding
        positions (`valid`: bool [B, n]); segments may grow by different amounts (host-side bookkeeping, one sync).
        The reserved decode capacity is renewed for the decoding that follows."""
        batch, heads, new, dim = key_states.shape
        valid = self.segments_of(valid[:, None, :].expand(batch, heads, new).reshape(-1, new))
        keys = self.segments_of(key_states.reshape(-1, new, dim))
        values = self.segments_of(value_states.reshape(-1, new, dim))
        old = self.seq_lens.long()
        lengths = old + valid.sum(-1)
        have = -(-(old + self.static_steps_left) // self.block_size)  # blocks held, reserved decode capacity included
        need = -(-(lengths + self.reserve) // self.block_size)
        extra = need - have
        total = int(extra.sum())
        if self.blocks_used + total > self.k_pool.shape[0]:
            self._grow_pool(self.blocks_used + total + int(lengths.sum()) // (16 * self.block_size))
        columns = max(int(need.max()) if len(need) else 0, 1)
        if columns > self.block_table.shape[1]:
            self.block_table = torch.nn.functional.pad(self.block_table, (0, columns - self.block_table.shape[1]))
        first = self.blocks_used + torch.cumsum(extra, 0) - extra
        col = torch.arange(columns, device=old.device)
        fresh = (col[None, :] >= have[:, None]) & (col[None, :] < need[:, None])
        ids = first[:, None] + col[None, :] - have[:, None]
        self.block_table = torch.where(fresh, ids.to(self.block_table.dtype), self.block_table)
        seg, j = valid.nonzero(as_tuple=True)
        pos = old[seg] + torch.cumsum(valid.long(), -1)[seg, j] - 1
        dest = self.block_table[seg, pos // self.block_size].long() * self.block_size + pos % self.block_size
        self.k_pool.view(-1, dim)[dest] = keys.detach()[seg, j]
        self.v_pool.view(-1, dim)[dest] = values.detach()[seg, j]
        self.blocks_used += total
        self.seq_lens = lengths.to(torch.int32)
        self.stored_lens = lengths.cpu()
        self.steps = 0
        self._stored_total = int(self.stored_lens.sum())
        self._residues = torch.bincount(self.stored_lens % self.block_size, minlength=self.block_size).tolist()
        self.max_len = int(self.stored_lens.max()) if len(self.stored_lens) else 0
        self.capacity_len = self.max_len + self.reserve

    @property
    def static_steps_left(self) -> int:
        """Decode steps left in the capacity reserved at prefill: while > 0 a step allocates nothing, takes no
        block and launches a fixed grid (bounded by `capacity_len`), so it can be captured in a CUDA graph."""
        return max(self.reserve - self.steps, 0) if self.seq_lens is not None else 0

    @property
    def decode_bound(self) -> int:
        """The longest a segment can be at this step: on CUDA the reserved capacity while it lasts (a fixed kernel
        grid, so steps can be captured), else the longest stored segment."""
        return self.capacity_len if self.steps <= self.reserve and self.device.type == "cuda" else self.max_len

    def advance_host_state(self) -> None:
        """The host-side bookkeeping of one decode step, for a step replayed from a CUDA graph (the device state
        advances in the graph; only these Python counters do not)."""
        self.cumulative_length += 1
        self.steps += 1
        self.max_len += 1

    def _reserve(self, new_blocks: int) -> None:
        """Make room for `new_blocks` more blocks in the pool and one more column in the block table if needed."""
        needed = self.blocks_used + new_blocks
        if needed > self.k_pool.shape[0]:
            slack = (self._stored_total + self.steps * len(self.stored_lens)) // (16 * self.block_size)
            self._grow_pool(needed + slack)
        columns = self.max_len // self.block_size + 1
        if columns > self.block_table.shape[1]:
            extra = max(columns, 2 * self.block_table.shape[1]) - self.block_table.shape[1]
            self.block_table = torch.nn.functional.pad(self.block_table, (0, extra))

    def _grow_pool(self, capacity: int) -> None:
        for name in ("k_pool", "v_pool"):
            old = getattr(self, name)
            new = old.new_empty(capacity, *old.shape[1:])
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def segment(self, batch_row: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored keys and values [length, D] of batch row `batch_row` and global KV head `head`, in prompt order then
        generated order (for inspection)."""
        if head not in self.heads.ids or not bool(self.served[batch_row, self.heads.ids.index(head)]):
            raise ValueError(f"layer {self.layer_idx} does not serve batch row {batch_row} of KV head {head} here")
        grid = batch_row * self.num_heads + self.heads.ids.index(head)
        seg = int(self.served.flatten()[:grid].sum())
        length = int(self.stored_lens[seg]) + self.steps
        blocks = self.block_table[seg, : -(-length // self.block_size)].long()
        dim = self.k_pool.shape[-1]
        return self.k_pool[blocks].reshape(-1, dim)[:length], self.v_pool[blocks].reshape(-1, dim)[:length]

    def kept_lengths(self) -> torch.Tensor:
        """Tokens stored per (batch row, KV head of the layer), LongTensor [batch, num_heads] in global head order;
        0 for the pairs this layer does not serve (another process does)."""
        if self.served is None:
            return torch.zeros(0, 0, dtype=torch.long)
        local = torch.zeros(self.batch_size * self.num_heads, dtype=torch.long)
        local[self.served.flatten()] = self.stored_lens + self.steps
        local = local.view(self.batch_size, self.num_heads)
        if self.heads.is_full:
            return local
        kept = torch.zeros(self.batch_size, self.heads.num_heads, dtype=torch.long)
        kept[:, self.heads.ids] = local
        return kept

    def nbytes(self) -> int:
        """Bytes allocated for K and V, reserved capacity included."""
        if self.k_pool is None:
            return 0
        return 2 * self.k_pool.numel() * self.k_pool.element_size()

    def get_seq_length(self) -> int:
        """Logical number of token positions processed (padding included), not the number stored."""
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Full logical length, so the 2D padding mask slice seen by the attention covers every position."""
        return self.cumulative_length + query_length, 0

    def get_max_length(self) -> int:
        """Unbounded."""
        return -1

    def get_max_cache_shape(self) -> int:
        """Deprecated alias kept by transformers 5.17."""
        return -1

    def reset(self) -> None:
        """Drop all stored tokens and free the storage."""
        self.cumulative_length = 0
        self._clear()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search would make beams share segments that then diverge: refuse."""
        raise ValueError(
            "FairKVCache does not support beam search (num_beams > 1): use greedy decoding or sampling "
            "(do_sample=True), or DynamicCache for beam search."
        )

    def crop(self, tokens_to_remove: int) -> None:
        """Evicted tokens cannot be restored, so rollbacks are refused."""
        raise ValueError(
            "FairKVCache cannot be cropped (assisted/speculative decoding, contrastive search): use plain "
            "greedy decoding or sampling."
        )

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Refused: expanding a compressed cache across returned sequences is not supported."""
        raise ValueError("FairKVCache cannot be repeated across sequences; expand the inputs before prefill instead.")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Refused: selecting batch rows of a compressed cache is not supported."""
        raise ValueError("FairKVCache cannot select batch rows (contrastive search): use greedy decoding or sampling.")


def _is_int(value: object) -> bool:
    """An integer that is not a bool (numpy integers included)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _text_config(model: PreTrainedModel):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _sliding_window(config) -> int | None:
    """The sliding window the model's attention layers use, if any (FairKV attends over full segments)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        uses = "sliding_attention" in layer_types
    else:
        uses = config.model_type == "mistral" or bool(getattr(config, "use_sliding_window", False))
    window = getattr(config, "sliding_window", None)
    return window if uses and window else None


class FairKVCache(Cache):
    """Per-head variable-length KV cache: `model.generate(**inputs, cache=FairKVCache(model, ...))`
    (`past_key_values=` before transformers 5.24; `fairkv_hf.compat.cache_kwarg` picks the keyword).

    Constructing it switches `model` to the "fairkv" attention implementation (restore another one with
    `model.set_attn_implementation("sdpa")`). `policy` is a name ("full", "snapkv", "ada_snapkv", "pyramidkv",
    "ada_pyramidkv", "cake", "ada_cake"; options by keyword, e.g. alpha=0.2) or a Policy object (e.g.
    HeadBudgetPolicy, DuoAttentionPolicy, AdaPolicy(CakePolicy(gamma=100.0))); `budget` is the number of prompt
    tokens each KV head keeps on average, observation window included (policies with their own per-head table take
    none).
    After the first forward (the compressed prompt), a forward of several tokens appends them uncompressed to every
    head (a question after a context, a next chat turn); `copy()` answers several questions from one compressed
    context. Left padding only.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        policy: str | Policy = "ada_snapkv",
        budget: int | None = None,
        window: int = 32,
        max_new_tokens: int | None = None,
        **policy_options: Any,
    ):
        config = _text_config(model)
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"FairKVCache supports model types {SUPPORTED_MODEL_TYPES}, got {config.model_type!r}: its attention "
                "must call the cache's update() right before the attention function, as Llama does."
            )
        self.policy = copy.deepcopy(get_policy(policy, **policy_options))
        self.policy.bind(config.num_hidden_layers, config.num_key_value_heads or config.num_attention_heads)
        if not _is_int(window) or window < 1:
            raise ValueError(f"window must be a positive integer number of tokens, got {window!r}")
        if self.policy.uses_budget and budget is None:
            raise ValueError(f"policy {self.policy.name!r} needs budget=, the prompt tokens each KV head keeps on average")
        if max_new_tokens is not None and (not _is_int(max_new_tokens) or max_new_tokens < 0):
            raise ValueError(f"max_new_tokens must be a non-negative integer (decode capacity reserved per head), got "
                             f"{max_new_tokens!r}")
        if budget is not None:
            if not _is_int(budget) or budget < 1:
                raise ValueError(f"budget must be a positive integer number of tokens per KV head, got {budget!r}")
            if self.policy.uses_budget and window > budget:
                raise ValueError(f"window must be in [1, budget={budget}], got {window}: the window is part of the budget")
        self.budget = budget
        self.window = window
        self.config = config
        self.sliding_window = _sliding_window(config)
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
        layout = getattr(model, "fairkv_layout", None)
        self.max_new_tokens = max_new_tokens
        layers = [FairKVLayer(i, self.policy, budget, window, layout.heads[i] if layout is not None else None,
                              reserve=max_new_tokens or 0) for i in range(config.num_hidden_layers)]
        super().__init__(layers=layers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        """Refuse to run under an attention that cannot read the per-head store, then delegate to the layer."""
        if self.config._attn_implementation != ATTN_IMPLEMENTATION:
            raise ValueError(
                f"FairKVCache needs attn_implementation='{ATTN_IMPLEMENTATION}', but the model uses "
                f"{self.config._attn_implementation!r}: call model.set_attn_implementation('{ATTN_IMPLEMENTATION}') "
                "(constructing a FairKVCache does this) and do not switch it back while the cache is in use."
            )
        layer = self.layers[layer_idx]
        if self.sliding_window is not None and layer.cumulative_length + key_states.shape[-2] > self.sliding_window:
            raise ValueError(
                f"This model uses sliding-window attention (window {self.sliding_window}) and the sequence is longer; "
                "FairKVCache attends over whole segments. Set model.config.sliding_window = None to run full "
                "attention, or keep prompts + new tokens within the window."
            )
        step, _ = layer.update(key_states, value_states, *args, **kwargs)
        if step.phase == "prefill":
            step.earlier = tuple(self.layers[:layer_idx])
        return step, step

    def static_steps_left(self) -> int:
        """Decode steps left in the capacity every layer reserved at prefill (0 without max_new_tokens)."""
        return min((layer.static_steps_left for layer in self.layers), default=0)

    def copy(self) -> FairKVCache:
        """An independent copy (K/V cloned): compress a long context once, then ask several questions, each from
        its own copy, without a second prefill."""
        clone = copy.copy(self)
        clone.layers = [copy.deepcopy(layer) for layer in self.layers]
        clone._captured = None
        return clone

    def kept_lengths(self) -> torch.Tensor:
        """Tokens stored per head, LongTensor [num_layers, batch, num_kv_heads]. On a head-parallel model
        (fairkv_hf.parallel) every process holds a share: this sums the shares, so call it on every process."""
        kept = torch.stack([layer.kept_lengths() for layer in self.layers])
        heads = self.layers[0].heads
        if heads is not None and heads.distributed:
            kept = kept.to(self.layers[0].device)
            heads.all_reduce(kept)
            kept = kept.cpu()
        return kept

    def nbytes(self) -> int:
        """Bytes allocated for K/V storage over all layers, reserved capacity included (this process's share)."""
        return sum(layer.nbytes() for layer in self.layers)
