"""Decode attention over the paged per-head store on CPU: long segments are read in place, short pieces gathered.

The reference copies every block of every segment into one [S, longest, D] tensor, then masks (and copies V again).
Here, when segments are long, each segment's leading run of consecutive pool blocks (FairKVLayer stores a segment's
prompt as one such run) is read in place through a view, and only the blocks after it (the decoded tokens) are
gathered into a small padded batch. A few torch ops per segment cost more than copying a short segment, so when
segments are short every block is gathered, as the reference does, but with one copy of K and V and no more.
Scores, softmax and the weighted sum of V are computed in float32, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

# Reading in place pays off when the longest segment (the gather pads every segment to it) exceeds a fixed cost per
# segment plus 0.4 x the mean stored length, both in tokens: fitted on one Xeon core with SmolLM2 shapes (head_dim 64,
# 3 query heads per KV head), decoded tokens past the runs included; uniform segments cross over near 500 tokens.
VIEW_OVERHEAD_TOKENS = 300
VIEW_STORED_FRACTION = 0.4


@dataclass(frozen=True)
class _Runs:
    """Each segment's leading run of consecutive pool blocks (as K^T [D, n] and V [n, D] views of the pools, n = the
    run's capacity), and the block ids that follow each run (padded), for one content of a block table and its pools."""

    table: torch.Tensor
    pools: tuple[torch.Tensor, torch.Tensor]
    capacities: list[int]
    keys_t: list[torch.Tensor]
    values: list[torch.Tensor]
    rest_blocks: torch.Tensor


# Block table -> its runs. A table changes only when a segment takes a new block (every block_size decode steps) or
# grows (a new tensor), so the runs are found once per change instead of once per layer and step. An entry is valid
# while the table holds what it held (compared to a copy: a version counter would do, but tensors made under
# torch.inference_mode, as in generation loops, have none) and the pool objects are unchanged; it
# goes away with the table, so it keeps no pool alive after its cache is freed.
_RUNS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def reads_in_place(segments: int, max_seq_len: int, stored_tokens: int) -> bool:
    """True when reading each segment's leading run through a view beats gathering every block (see module doc)."""
    return max_seq_len > VIEW_OVERHEAD_TOKENS + VIEW_STORED_FRACTION * stored_tokens / segments


def paged_decode_cpu(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int,
) -> torch.Tensor:
    """Same contract and float32 math as paged_decode_reference; only stored slots are ever multiplied."""
    segs, groups, dim = q.shape
    block_size = k_pool.shape[1]
    lens = seq_lens.tolist()
    queries = q.float() * scale
    if not reads_in_place(segs, max_seq_len, sum(lens)):
        table = block_table[:, : -(-max_seq_len // block_size)]
        scores, values = _gather(queries, k_pool, v_pool, table, seq_lens)
        return torch.bmm(torch.softmax(scores, -1), values).to(q.dtype)
    runs = _leading_runs(k_pool, v_pool, block_table)
    leads = [min(capacity, n) for capacity, n in zip(runs.capacities, lens)]
    rests = [n - lead for n, lead in zip(lens, leads)]
    longest_rest = max(rests)
    if longest_rest:
        blocks = runs.rest_blocks[:, : -(-longest_rest // block_size)]
        rest_keys, rest_values = (pool.index_select(0, blocks.flatten()).view(segs, -1, dim).float()
                                  for pool in (k_pool, v_pool))
        rest_scores = torch.bmm(queries, rest_keys.transpose(1, 2))
    outs = []
    for s, (query, capacity, lead, rest) in enumerate(zip(queries.unbind(0), runs.capacities, leads, rests)):
        keys_t, value = runs.keys_t[s], runs.values[s]
        if lead < capacity:
            keys_t, value = keys_t[:, :lead], value[:lead]
        scores = torch.mm(query, keys_t.float())
        value = value.float()
        if rest:
            probs = torch.softmax(torch.cat([scores, rest_scores[s, :, :rest]], 1), -1)
            outs.append(torch.addmm(torch.mm(probs[:, lead:], rest_values[s, :rest]), probs[:, :lead], value))
        else:
            outs.append(torch.mm(torch.softmax(scores, -1), value))
    return torch.stack(outs).to(q.dtype)


def _leading_runs(k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor) -> _Runs:
    """The runs of `block_table` over these pools, found again only when the table or the pools changed (see _RUNS)."""
    cached = _RUNS.get(block_table)
    if cached is not None and cached.pools[0] is k_pool and cached.pools[1] is v_pool \
            and torch.equal(cached.table, block_table):
        return cached
    block_size, dim = k_pool.shape[1], k_pool.shape[2]
    table = block_table.long()
    columns = torch.arange(table.shape[1], device=table.device)
    lengths = (table == table[:, :1] + columns).cumprod(1).sum(1)
    rest = (lengths[:, None] + columns[: table.shape[1] - int(lengths.min())]).clamp_(max=table.shape[1] - 1)
    starts, capacities = (table[:, 0] * block_size).tolist(), (lengths * block_size).tolist()
    keys, values = k_pool.view(-1, dim), v_pool.view(-1, dim)
    spans = [slice(start, start + n) for start, n in zip(starts, capacities)]
    runs = _Runs(block_table.clone(), (k_pool, v_pool), capacities, [keys[span].T for span in spans],
                 [values[span] for span in spans], block_table.gather(1, rest))
    _RUNS[block_table] = runs
    return runs


def _gather(
    queries: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, blocks: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [S, G, W] and values [S, W, D] of the first `lengths` tokens held in the pool blocks `blocks` [S, B].

    W = B blocks; slots past a segment's length get score -inf and value 0, so whatever the pool holds there (it may be
    NaN) is never multiplied.
    """
    segs, width = blocks.shape
    dim = k_pool.shape[-1]
    tokens = width * k_pool.shape[1]
    ids = blocks.flatten()
    keys = k_pool.index_select(0, ids).view(segs, tokens, dim).float()
    values = v_pool.index_select(0, ids).view(segs, tokens, dim).float()
    padding = torch.arange(tokens, device=blocks.device) >= lengths[:, None]
    scores = torch.bmm(queries, keys.transpose(1, 2)).masked_fill_(padding[:, None, :], float("-inf"))
    return scores, values.masked_fill_(padding[..., None], 0.0)
