"""Ada as a wrapper: "ada_snapkv" must keep, bit for bit, what the Ada-SnapKV class before the refactor kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fairkv_hf import AdaPolicy, FairKVCache, SnapKVPolicy, get_policy
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.heads import HeadSet
from fairkv_hf.policies import Policy
from fairkv_hf.ranking import largest_remainder, rank_descending

from .conftest import left_padded, tiny_model


class LegacyAdaSnapKV(Policy):
    """AdaSnapKVPolicy (scores, template and allocation) as of commit b1d6e70, frozen here as the reference."""

    name = "legacy_ada_snapkv"

    def __init__(self, alpha: float = 0.2, gqa_reduce: str = "mean", pool_kernel: int = 7):
        self.alpha, self.gqa_reduce, self.pool_kernel = alpha, gqa_reduce, pool_kernel

    def score(self, queries, keys, valid, scaling, window):
        batch, kv_heads, length, dim = keys.shape
        group = queries.shape[1] // kv_heads
        q = queries[:, :, -window:].reshape(batch, kv_heads, group, window, dim).float()
        logits = torch.einsum("bhgwd,bhld->bhgwl", q, keys.float()) * scaling
        key_pos = torch.arange(length, device=keys.device)
        query_pos = torch.arange(length - window, length, device=keys.device)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None] & valid[:, None, :]
        logits = logits.masked_fill(~allowed[:, None, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num_(0.0).mean(dim=3)
        reduced = probs.amax(dim=2) if self.gqa_reduce == "max" else probs.mean(dim=2)
        prefix = reduced[..., : length - window]
        if self.pool_kernel > 1:
            prefix = F.max_pool1d(prefix, kernel_size=self.pool_kernel, stride=1, padding=self.pool_kernel // 2)
        return prefix

    def allocate(self, scores, base, layer_idx, heads):
        scores = heads.gather(scores)
        batch, num_heads, prefix = scores.shape
        joint = rank_descending(scores.reshape(batch, num_heads * prefix)) < num_heads * base
        counts = joint.reshape(batch, num_heads, prefix).sum(-1).double()
        counts = largest_remainder((1.0 - self.alpha) * counts + self.alpha * base, num_heads * base)
        return counts[:, heads.ids]

    def keep_mask(self, queries, keys, valid, scaling, budget, window, layer_idx, heads=None):
        batch, held, length, _ = keys.shape
        heads = heads or HeadSet.full(held)
        keep_all = valid[:, None, :].expand(batch, held, length)
        fits = valid.sum(-1) <= budget
        if bool(fits.all()):
            return keep_all.clone()
        prefix = length - window
        valid_prefix = valid[:, :prefix]
        scores = self.score(queries, keys, valid, scaling, window)
        scores = scores.masked_fill(~valid_prefix[:, None, :], float("-inf"))
        counts = self.allocate(scores, budget - window, layer_idx, heads)
        keep_prefix = rank_descending(scores) < counts[:, :, None]
        keep = torch.cat([keep_prefix & valid_prefix[:, None, :], keep_all[:, :, prefix:]], dim=-1)
        return torch.where(fits[:, None, None], keep_all, keep)


@pytest.mark.parametrize(("alpha", "gqa_reduce", "pool_kernel"), [(0.2, "mean", 7), (0.5, "max", 3), (0.0, "mean", 1)])
def test_same_keep_masks_as_before_on_tied_and_padded_inputs(alpha, gqa_reduce, pool_kernel):
    gen = torch.Generator().manual_seed(3)
    valid = torch.ones(4, 90, dtype=torch.bool)
    for row, padding in enumerate([0, 25, 60, 84]):
        valid[row, :padding] = False
    for trial in range(6):
        queries = torch.randn(4, 8, 90, 16, generator=gen)
        keys = torch.randn(4, 2, 90, 16, generator=gen)
        if trial % 2:  # coarse keys: many exactly tied scores
            keys = keys.round()
            keys[:, :, 10:40] = keys[:, :, 10:11]
        for budget in (12, 30, 64):
            want = LegacyAdaSnapKV(alpha, gqa_reduce, pool_kernel).keep_mask(queries, keys, valid, 0.25, budget, 8, 0)
            policy = get_policy("ada_snapkv", alpha=alpha, gqa_reduce=gqa_reduce, pool_kernel=pool_kernel)
            assert torch.equal(policy.keep_mask(queries, keys, valid, 0.25, budget, 8, 0), want), (trial, budget)


@pytest.mark.parametrize("model_family", ["llama", "qwen2"])
def test_same_generation_as_before(model_family):
    model = tiny_model(model_family, layers=3, seed=6)
    ids, mask = left_padded([120, 77, 30], seed=2)
    results = []
    for policy in (LegacyAdaSnapKV(), "ada_snapkv"):
        cache = FairKVCache(model, policy=policy, budget=24, window=8)
        out = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=6,
                             min_new_tokens=6, do_sample=False, pad_token_id=0)
        stored = [layer.segment(row, head)[0] for layer in cache.layers for row in range(3) for head in range(2)]
        results.append((out, cache.kept_lengths(), stored))
    (out, kept, stored), (want_out, want_kept, want_stored) = results
    assert torch.equal(out, want_out) and torch.equal(kept, want_kept)
    assert all(torch.equal(a, b) for a, b in zip(stored, want_stored))
    assert (kept.amax(-1) != kept.amin(-1)).any(), "the heads should get different budgets here"


def test_ada_wraps_any_scored_policy_and_takes_its_name():
    assert get_policy("ada_snapkv", alpha=0.3) == AdaPolicy(SnapKVPolicy(), alpha=0.3)
    assert AdaPolicy(SnapKVPolicy(gqa_reduce="max")).name == "ada_snapkv"
    with pytest.raises(TypeError, match="beta"):
        get_policy("ada_snapkv", beta=4)
