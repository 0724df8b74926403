"""Decode attention over the paged per-head store on CPU: long segments are read in place, short pieces gathered.

The reference copies every block of every segment into one [S, longest, D] tensor, then masks (and copies V again).
Here, when segments are long, each segment's leading run of consecutive pool blocks (FairKVLayer stores a segment's
prompt as one such run) is read in place through a view, and only the blocks after it (the decoded tokens) are
gathered into a small padded batch. One torch op per segment costs more than copying a short segment, so when
segments are short every block is gathered, as the reference does, but with one copy of K and V and no more.
Scores, softmax and the weighted sum of V are computed in float32, as in the reference.
"""

from __future__ import annotations

import torch

# Views pay off when the padded copy the gather makes (segments x longest) is larger than a fixed cost per segment
# plus a third of the tokens actually stored: constants fitted on one Xeon core (bench/cpu_decode.py, SmolLM2 shapes).
VIEW_OVERHEAD_TOKENS = 450
VIEW_STORED_FRACTION = 1 / 3


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
    num_blocks = -(-max_seq_len // block_size)
    table = block_table[:, :num_blocks].long()
    lens = seq_lens.long()
    queries = q.float() * scale
    if not reads_in_place(segs, max_seq_len, int(lens.sum())):
        scores, values = _gather(queries, k_pool, v_pool, table, lens)
        return torch.bmm(torch.softmax(scores, -1), values).to(q.dtype)
    runs = (table == table[:, :1] + torch.arange(num_blocks, device=q.device)).cumprod(1).sum(1)
    lead = torch.minimum(runs * block_size, lens)
    rest = lens - lead
    longest_rest = int(rest.max())
    if longest_rest:
        width = -(-longest_rest // block_size)
        columns = (runs[:, None] + torch.arange(width, device=q.device)).clamp_(max=num_blocks - 1)
        rest_scores, rest_values = _gather(queries, k_pool, v_pool, table.gather(1, columns), rest)
        rest_scores, rest_values = rest_scores.unbind(0), rest_values.unbind(0)
    keys, values = k_pool.view(-1, dim), v_pool.view(-1, dim)
    out = torch.empty(segs, groups, dim, dtype=torch.float32, device=q.device)
    outs, queries = out.unbind(0), queries.unbind(0)
    starts = (table[:, 0] * block_size).tolist()
    for s, (start, n, tail) in enumerate(zip(starts, lead.tolist(), rest.tolist())):
        scores = torch.mm(queries[s], keys[start : start + n].float().T)
        value = values[start : start + n].float()
        if tail:
            probs = torch.softmax(torch.cat([scores, rest_scores[s]], 1), -1)
            torch.addmm(torch.mm(probs[:, n:], rest_values[s]), probs[:, :n], value, out=outs[s])
        else:
            torch.mm(torch.softmax(scores, -1), value, out=outs[s])
    return out.to(q.dtype)


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
