"""Small budgets: what is kept must be exactly what a naive, loop-based reference of each policy keeps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from fairkv_hf import FairKVCache
from fairkv_hf.compat import cache_kwarg

from .conftest import left_padded, tiny_model

WINDOW = 8
BUDGET = 20
ALPHA = 0.2
NEW_TOKENS = 12


def _capture_prompt_states(model, ids, mask):
    """Post-RoPE queries and keys of every layer for the prompt, from a plain sdpa forward."""
    captured = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured[module.layer_idx] = (query.detach().clone(), key.detach().clone(), value.detach().clone())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("capture", capture)
    AttentionMaskInterface.register("capture", sdpa_mask)
    model.set_attn_implementation("capture")
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwarg(DynamicCache()))
    model.set_attn_implementation("sdpa")
    return captured


def _naive_scores(query, key, row, head, valid, scaling):
    """SnapKV scores of one (row, KV head), with explicit loops over the group's query heads and window queries."""
    length = key.shape[2]
    group = query.shape[1] // key.shape[1]
    total = torch.zeros(length)
    for g in range(head * group, (head + 1) * group):
        for i in range(length - WINDOW, length):
            logits = torch.full((length,), float("-inf"))
            for j in range(i + 1):
                if valid[j]:
                    logits[j] = (query[row, g, i].float() @ key[row, head, j].float()) * scaling
            total += torch.softmax(logits, dim=0)
    mean = total / (WINDOW * group)
    prefix = mean[: length - WINDOW]
    pooled = torch.stack([prefix[max(0, j - 3) : j + 4].max() for j in range(len(prefix))])
    return pooled


def _top(scores_with_index, count):
    """The `count` best (score, tie-break key, payload) entries: highest score first, then lowest key."""
    return sorted(scores_with_index, key=lambda t: (-t[0], t[1]))[:count]


def _naive_keep(policy, query, key, valid_row, row, scaling):
    """Kept prompt positions per KV head for one sequence, following design.md section 4."""
    heads, length = key.shape[1], key.shape[2]
    prefix = length - WINDOW
    base = BUDGET - WINDOW
    window_positions = [p for p in range(prefix, length) if valid_row[p]]
    if int(valid_row.sum()) <= BUDGET:
        return [[p for p in range(length) if valid_row[p]] for _ in range(heads)]
    scores = [_naive_scores(query, key, row, h, valid_row, scaling) for h in range(heads)]
    candidates = [[(float(scores[h][j]), j, j) for j in range(prefix) if valid_row[j]] for h in range(heads)]
    if policy == "snapkv":
        counts = [base] * heads
    else:
        joint = _top([(s, h * prefix + j, h) for h in range(heads) for (s, j, _) in candidates[h]], heads * base)
        chosen = [sum(1 for t in joint if t[2] == h) for h in range(heads)]
        shares = [(1 - ALPHA) * c + ALPHA * base for c in chosen]
        floors = [int(s // 1) for s in shares]
        missing = heads * base - sum(floors)
        bonus = {h for (_, h, _) in _top([(s - f, h, h) for h, (s, f) in enumerate(zip(shares, floors))], missing)}
        counts = [f + (1 if h in bonus else 0) for h, f in enumerate(floors)]
    return [sorted(j for (_, _, j) in _top(candidates[h], counts[h])) + window_positions for h in range(heads)]


@pytest.mark.parametrize("policy", ["snapkv", "ada_snapkv"])
@pytest.mark.parametrize("model_family", ["llama", "qwen3"])
def test_kept_tokens_match_naive_reference(policy, model_family):
    model = tiny_model(model_family)
    ids, mask = left_padded([60, 44, 15], seed=7)
    states = _capture_prompt_states(model, ids, mask)
    cache = FairKVCache(model, policy=policy, budget=BUDGET, window=WINDOW, alpha=ALPHA) if policy == "ada_snapkv" else (
        FairKVCache(model, policy=policy, budget=BUDGET, window=WINDOW)
    )
    model.generate(
        input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
    )
    appended = NEW_TOKENS - 1
    kept = cache.kept_lengths()
    scaling = model.model.layers[0].self_attn.scaling
    for layer_idx, layer in enumerate(cache.layers):
        query, key, _ = states[layer_idx]
        for row in range(ids.shape[0]):
            valid_row = mask[row].bool()
            expected = _naive_keep(policy, query, key, valid_row, row, scaling)
            for head, positions in enumerate(expected):
                assert kept[layer_idx, row, head] == len(positions) + appended
                stored_keys, _ = layer.segment(row, head)
                torch.testing.assert_close(stored_keys[: len(positions)], key[row, head, positions], atol=1e-5, rtol=0)
        compressed_rows = kept[layer_idx, :2] - appended
        assert torch.equal(compressed_rows.sum(-1), torch.full((2,), BUDGET * key.shape[1]))
        assert torch.equal(kept[layer_idx, 2], torch.full((2,), 15 + appended))


def test_ada_snapkv_budgets_differ_across_heads():
    model = tiny_model("llama", layers=4, seed=5)
    ids, mask = left_padded([200, 150], seed=3)
    cache = FairKVCache(model, policy="ada_snapkv", budget=48, window=8)
    model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=4, min_new_tokens=4,
                   do_sample=False, pad_token_id=0)
    kept = cache.kept_lengths() - 3
    assert torch.equal(kept.sum(-1), torch.full((4, 2), 48 * 2))
    assert (kept.amax(-1) != kept.amin(-1)).any(), "Ada-SnapKV should give heads of a layer different budgets"


def test_nbytes_follow_kept_tokens():
    model = tiny_model("mistral", layers=3)
    ids, mask = left_padded([300, 260, 90], seed=4)
    cache = FairKVCache(model, policy="ada_snapkv", budget=100, window=16)
    model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=80, min_new_tokens=80,
                   do_sample=False, pad_token_id=0)
    kept = cache.kept_lengths()
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    token_bytes = 2 * head_dim * 4
    segments = kept.numel()
    assert cache.nbytes() >= int(kept.sum()) * token_bytes
    assert cache.nbytes() <= 1.1 * int(kept.sum()) * token_bytes + segments * 64 * token_bytes
    dense = DynamicCache()
    model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(dense), max_new_tokens=80, min_new_tokens=80,
                   do_sample=False, pad_token_id=0)
    dense_bytes = sum(layer.keys.numel() * 4 * 2 for layer in dense.layers)
    assert cache.nbytes() < 0.75 * dense_bytes


def test_padded_batch_equals_each_sequence_alone():
    model = tiny_model("qwen2", layers=3, seed=2)
    lengths = [90, 64, 41]
    ids, mask = left_padded(lengths, seed=9)
    budget = 32
    batch = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, min_new_tokens=16, do_sample=False,
                           pad_token_id=0, **cache_kwarg(FairKVCache(model, policy="ada_snapkv", budget=budget, window=8)))
    for row, n in enumerate(lengths):
        alone_ids = ids[row : row + 1, ids.shape[1] - n :]
        alone = model.generate(input_ids=alone_ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0,
                               attention_mask=torch.ones_like(alone_ids),
                               **cache_kwarg(FairKVCache(model, policy="ada_snapkv", budget=budget, window=8)))
        assert torch.equal(batch[row, ids.shape[1] :], alone[0, n:])


def test_scores_pool_over_prefix_only():
    from fairkv_hf.policies.scores import window_attention_scores

    queries = torch.randn(1, 2, 20, 8)
    keys = torch.randn(1, 1, 20, 8)
    scores = window_attention_scores(queries, keys, torch.ones(1, 20, dtype=torch.bool), 8**-0.5, 4, pool_kernel=1)
    assert scores.shape == (1, 1, 16)
    probs = torch.softmax(F.pad(queries[0, :, -4:] @ keys[0, 0].T * 8**-0.5, (0, 0)).masked_fill(
        torch.arange(20)[None, :] > torch.arange(16, 20)[:, None], float("-inf")), -1)
    torch.testing.assert_close(scores[0, 0], probs.mean(1).mean(0)[:16])


def test_head_budgets_keep_each_heads_top_tokens():
    from fairkv_hf import HeadBudgetPolicy

    table = [[12, 30], [20, 16]]
    model = tiny_model("llama")
    ids, mask = left_padded([60, 44, 15], seed=7)
    states = _capture_prompt_states(model, ids, mask)
    cache = FairKVCache(model, policy=HeadBudgetPolicy(tokens=table), window=WINDOW)
    model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=NEW_TOKENS,
                   min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    scaling = model.model.layers[0].self_attn.scaling
    for layer_idx, layer in enumerate(cache.layers):
        query, key, _ = states[layer_idx]
        prefix = key.shape[2] - WINDOW
        for row in range(ids.shape[0]):
            valid_row = mask[row].bool()
            window_positions = [p for p in range(prefix, key.shape[2]) if valid_row[p]]
            for head in range(key.shape[1]):
                scores = _naive_scores(query, key, row, head, valid_row, scaling)
                candidates = [(float(scores[j]), j, j) for j in range(prefix) if valid_row[j]]
                count = table[layer_idx][head] - WINDOW
                positions = sorted(j for (_, _, j) in _top(candidates, count)) + window_positions
                stored_keys, _ = layer.segment(row, head)
                assert len(stored_keys) == len(positions) + NEW_TOKENS - 1
                torch.testing.assert_close(stored_keys[: len(positions)], key[row, head, positions], atol=1e-5, rtol=0)
