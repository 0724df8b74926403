"""CAKE and Ada over CAKE / PyramidKV: what each head keeps must be what a plain loop reference of the paper's rules
keeps; the cascade must bound the K/V stored during prefill; the budget covering the prompt must change nothing."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import DynamicCache

from fairkv_hf import AdaPolicy, CakePolicy, FairKVCache, HeadBudgetPolicy, PyramidKVPolicy, get_policy
from fairkv_hf.compat import cache_kwarg
from fairkv_hf.policies.cake import cake_budgets

from .conftest import left_padded, tiny_model
from .test_cache_compression import _capture_prompt_states, _naive_scores, _top

WINDOW = 8
BUDGET = 20
LAYERS = 4
GAMMA = 200.0
TAU1, TAU2 = 1.6, 0.4
ALPHA = 0.2
NEW = 4
LENGTHS = [70, 52, 15]  # the last prompt fits the budget (kept whole)
PYRAMID_PREFIX = [21, 15, 9, 3]  # beta 4, P = 12: first 2P - P/4 = 21, last P/4 = 3, step 6 (sum 4 x 12)


def _naive_probs(query, key, row, valid, scaling):
    """Attention [H_q, window, L] of the window's queries over the keys, one softmax per (query head, query)."""
    heads, length = query.shape[1], key.shape[2]
    group = heads // key.shape[1]
    probs = torch.zeros(heads, WINDOW, length)
    for g in range(heads):
        for w, i in enumerate(range(length - WINDOW, length)):
            seen = [j for j in range(i + 1) if valid[j]]
            logits = key[row, g // group, seen].float() @ query[row, g, i].float() * scaling
            probs[g, w, seen] = torch.softmax(logits, dim=0)
    return probs


def _naive_preference(probs, prefix):
    """CAKE's preference: entropy^(1/tau1) x (summed variance over the window's queries)^(1/tau2), prefix tokens."""
    entropy, variance = 0.0, 0.0
    for g in range(probs.shape[0]):
        for j in range(prefix):
            column = [float(probs[g, w, j]) for w in range(WINDOW)]
            mean = sum(column) / WINDOW
            variance += sum((p - mean) ** 2 for p in column) / (WINDOW - 1)
            entropy -= sum(p * math.log(p + 1e-10) for p in column)
    return entropy ** (1 / TAU1) * variance ** (1 / TAU2)


def _naive_indicator(probs, heads, prefix):
    """Per KV head: mean + gamma x variance over the window's queries, averaged over 5 tokens (zeros beyond the
    edges count), then over the head's query group."""
    group = probs.shape[0] // heads
    raw = probs.mean(dim=1) + GAMMA * probs.var(dim=1)
    pooled = [[sum(float(raw[g, t]) for t in range(j - 2, j + 3) if 0 <= t < prefix) / 5 for j in range(prefix)]
              for g in range(probs.shape[0])]
    return [[sum(pooled[g][j] for g in range(h * group, (h + 1) * group)) / group for j in range(prefix)]
            for h in range(heads)]


def _naive_budgets(preferences, total, cap):
    """CAKE's adjustment: truncated proportional shares; the excess over the cap, then the truncation loss, spread
    evenly over the layers below the cap, one more each to the lowest layers, again while any exceeds the cap."""
    layers = len(preferences)
    budgets = [math.floor(p / sum(preferences) * total) for p in preferences]

    def spread(budgets, amount):
        while amount > 0:
            below = [l for l in range(layers) if budgets[l] < cap]
            if not below:
                break
            each, extra = divmod(amount, len(below))
            for rank, l in enumerate(below):
                budgets[l] += each + (1 if rank < extra else 0)
            amount = sum(max(b - cap, 0) for b in budgets)
            budgets = [min(b, cap) for b in budgets]
        return budgets

    excess = sum(max(b - cap, 0) for b in budgets)
    budgets = spread([min(b, cap) for b in budgets], excess)
    return spread(budgets, total - sum(budgets))


def _naive_ada_counts(scores, base):
    """Ada-KV with the alpha floor: joint top H x base over every head's scores, largest remainder rounding; the
    counts and each head's part of the joint top-k."""
    heads = len(scores)
    joint = _top([(s, h * 10_000 + j, h) for h in range(heads) for (s, j) in scores[h]], heads * base)
    chosen = [sum(1 for t in joint if t[2] == h) for h in range(heads)]
    shares = [(1 - ALPHA) * c + ALPHA * base for c in chosen]
    floors = [math.floor(s + 1e-9) for s in shares]
    bonus = {h for (_, h, _) in _top([(s - f, h, h) for h, (s, f) in enumerate(zip(shares, floors))],
                                     heads * base - sum(floors))}
    return [f + (h in bonus) for h, f in enumerate(floors)], chosen


def _expected(policy, states, mask, scaling):
    """Kept prompt positions [layer][row][head] under `policy` ("cake", "ada_cake" or "ada_pyramidkv"), whether a
    recomputed layer budget ever grew (then the smaller earlier one holds), and whether a re-allocation's joint top-k
    ever took more of a head's tokens than the head stored (the scores it needs are remembered beyond its K/V)."""
    rows, layers = mask.shape[0], len(states)
    heads, length = states[0][1].shape[1], states[0][1].shape[2]
    prefix = length - WINDOW
    kept = [[None] * rows for _ in range(layers)]
    grew = beyond = False
    for row in range(rows):
        valid = mask[row].bool()
        window = [p for p in range(prefix, length) if valid[p]]
        cap = sum(1 for p in range(prefix) if valid[p])
        scores, bases, preferences = [], [], []
        for l, (query, key, _) in enumerate(states):
            if policy == "ada_pyramidkv":
                scores.append([[(float(s), j) for j, s in enumerate(_naive_scores(query, key, row, h, valid, scaling))
                                if valid[j]] for h in range(heads)])
                bases.append([PYRAMID_PREFIX[l]])
                continue
            probs = _naive_probs(query, key, row, valid, scaling)
            indicator = _naive_indicator(probs, heads, prefix)
            scores.append([[(indicator[h][j], j) for j in range(prefix) if valid[j]] for h in range(heads)])
            preferences.append(_naive_preference(probs, prefix))
            step = _naive_budgets(preferences, layers * (BUDGET - WINDOW), cap)
            for j in range(l):
                grew |= step[j] > bases[j][-1]
                bases[j].append(min(bases[j][-1], step[j]))
            bases.append([step[l]])
        for l in range(layers):
            limit = WINDOW + PYRAMID_PREFIX[l] if policy == "ada_pyramidkv" else BUDGET
            if int(valid.sum()) <= limit:
                kept[l][row] = [[p for p in range(length) if valid[p]] for _ in range(heads)]
                continue
            counts = [bases[l][-1]] * heads
            if policy != "cake":
                counts = _naive_ada_counts(scores[l], bases[l][0])[0]
                for base in bases[l][1:]:
                    now, chosen = _naive_ada_counts(scores[l], base)
                    beyond |= any(c > k for c, k in zip(chosen, counts))
                    counts = [min(c, k) for c, k in zip(now, counts)]
            kept[l][row] = [sorted(j for (_, j, _) in _top([(s, j, j) for s, j in scores[l][h]], counts[h])) + window
                            for h in range(heads)]
    return kept, grew, beyond


def _policy(name):
    if name == "cake":
        return CakePolicy(tau1=TAU1, tau2=TAU2, gamma=GAMMA)
    if name == "ada_cake":
        return AdaPolicy(CakePolicy(tau1=TAU1, tau2=TAU2, gamma=GAMMA), alpha=ALPHA)
    return AdaPolicy(PyramidKVPolicy(beta=4), alpha=ALPHA)


@pytest.mark.parametrize("name", ["cake", "ada_cake", "ada_pyramidkv"])
@pytest.mark.parametrize("model_family", ["llama", "qwen2"])
def test_kept_tokens_match_naive_reference(name, model_family):
    model = tiny_model(model_family, layers=LAYERS, seed=4)
    with torch.no_grad():  # sharper attention in layer 1 (its preference differs) and of KV head 0 (Ada favours it)
        model.model.layers[1].self_attn.q_proj.weight *= 2.5
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight[: layer.self_attn.head_dim] *= 2.0
    ids, mask = left_padded(LENGTHS, seed=11)
    captured = _capture_prompt_states(model, ids, mask)
    states = [captured[l] for l in range(LAYERS)]
    cache = FairKVCache(model, policy=_policy(name), budget=BUDGET, window=WINDOW)
    model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), max_new_tokens=NEW, min_new_tokens=NEW,
                   do_sample=False, pad_token_id=0)
    expected, grew, beyond = _expected(name, states, mask, model.model.layers[0].self_attn.scaling)
    assert name == "ada_pyramidkv" or grew, "the prompt should make a recomputed budget grow (and the old one hold)"
    assert name != "ada_cake" or beyond, "a re-allocation should need scores beyond the stored tokens"
    kept = cache.kept_lengths() - (NEW - 1)
    for l, layer in enumerate(cache.layers):
        key = states[l][1]
        for row in range(len(LENGTHS)):
            for head, positions in enumerate(expected[l][row]):
                assert kept[l, row, head] == len(positions), (l, row, head)
                stored, _ = layer.segment(row, head)
                torch.testing.assert_close(stored[: len(positions)], key[row, head, positions], atol=1e-5, rtol=0)
    per_layer = kept[:, :2].sum(-1)
    assert (per_layer.sum(0) <= LAYERS * BUDGET * 2).all(), "the layers share num_layers x budget per head"
    if name == "ada_pyramidkv":
        assert per_layer[:, 0].tolist() == [2 * (WINDOW + p) for p in PYRAMID_PREFIX]
    else:
        assert len(set(per_layer[:, 0].tolist())) > 1, "CAKE's layer budgets should differ on this prompt"
    if name != "cake":
        assert (kept[:, 0, 0] != kept[:, 0, 1]).any(), "Ada should give the heads of a layer different budgets"


def test_cascade_bounds_the_stored_tokens_during_prefill():
    model = tiny_model("llama", layers=6, seed=2)
    ids, mask = left_padded([300, 240], seed=5)
    budget, window = 40, 8
    cache = FairKVCache(model, policy="ada_cake", budget=budget, window=window)
    stored_after = []
    for decoder_layer in model.model.layers:
        decoder_layer.register_forward_hook(lambda *_: stored_after.append(
            (sum(int(l.stored_lens.sum()) for l in cache.layers if l.seq_lens is not None),
             sum(l.nbytes() for l in cache.layers))))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_kwarg(cache))
    segments = 2 * 2
    total = len(model.model.layers) * budget * segments
    prompt_layer = int(mask.sum()) * 2
    token_bytes = 2 * 16 * 4
    for tokens, nbytes in stored_after:
        assert tokens <= total
        assert nbytes <= (total + prompt_layer) * token_bytes + len(cache.layers) * segments * 64 * token_bytes
    first = segments * (len(cache.layers) * (budget - window) + window)
    assert stored_after[0][0] == first, "the first layer alone takes the whole total (its prompt is longer)"
    assert stored_after[-1][0] == int(cache.kept_lengths().sum())


def test_cake_budgets_by_hand():
    caps = torch.tensor([100, 30])
    preferences = torch.tensor([[1.0, 2.0, 7.0], [1.0, 2.0, 7.0]], dtype=torch.float64)
    # shares of 100: 10, 20, 70; row 2 caps 70 at 30 and spreads 40 over the two others (20 each): 30, 40 -> 30, 30
    # and the 10 left over have nowhere to go (every layer is at its cap: the whole prompt is kept)
    assert cake_budgets(preferences, 100, caps).tolist() == [[10, 20, 70], [30, 30, 30]]
    # shares of 10 of 1:1:1 truncate to 3 each; the token lost goes to the lowest layer
    assert cake_budgets(torch.ones(1, 3, dtype=torch.float64), 10, torch.tensor([9])).tolist() == [[4, 3, 3]]
    # no preference at all: equal shares
    assert cake_budgets(torch.zeros(1, 2, dtype=torch.float64), 6, torch.tensor([9])).tolist() == [[3, 3]]


@pytest.mark.parametrize("name", ["cake", "ada_cake", "ada_pyramidkv"])
@pytest.mark.parametrize("model_family", ["mistral", "qwen2"])
def test_budget_covering_the_prompt_matches_dynamic_cache(name, model_family):
    model = tiny_model(model_family)
    ids, mask = left_padded([45, 30, 17])
    options = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True,
                   return_dict_in_generate=True)
    ref = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(DynamicCache()), **options)
    cache = FairKVCache(model, policy=name, budget=1000, window=8)  # PyramidKV's last layer keeps 1/20 of the mean
    out = model.generate(input_ids=ids, attention_mask=mask, **cache_kwarg(cache), **options)
    model.set_attn_implementation("sdpa")
    assert torch.equal(out.sequences, ref.sequences)
    for got, want in zip(out.logits, ref.logits):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("options", "message"), [
    (dict(tau1=0), "tau1"), (dict(tau2=-1.0), "tau2"), (dict(tau1=True), "tau1"),
    (dict(gamma=-2.0), "gamma"), (dict(gamma=float("nan")), "gamma"), (dict(pool_kernel=4), "pool_kernel"),
])
def test_cake_rejects_bad_parameters(options, message):
    with pytest.raises(ValueError, match=message):
        get_policy("cake", **options)
    with pytest.raises(ValueError, match=message):
        get_policy("ada_cake", **options)


def test_bad_windows_compositions_and_release_names_are_refused():
    model = tiny_model("llama")
    ids, mask = left_padded([30])
    cache = FairKVCache(model, policy="cake", budget=10, window=1)
    with pytest.raises(ValueError, match="window=1: pass window >= 2"):
        model(input_ids=ids, attention_mask=mask, **cache_kwarg(cache))
    with pytest.raises(ValueError, match="alpha"):
        get_policy("ada_pyramidkv", alpha=-0.1)
    with pytest.raises(ValueError, match="inner policy must score tokens and share a budget"):
        AdaPolicy(HeadBudgetPolicy(tokens=[[8, 8]]))
    with pytest.raises(ValueError, match="needs the number of layers"):
        CakePolicy().prefix_budgets(*[torch.zeros(1, 1, 12, 4)] * 2, torch.ones(1, 12, dtype=torch.bool), 1.0, 10, 4, 0,
                                    None)
    with pytest.raises(ValueError, match="tunes tau1/tau2 for .* not \\('smollm2', 256\\)"):
        CakePolicy.from_release("smollm2", 256)
    assert CakePolicy.from_release("qwen2.5-7b-instruct", 1024, gamma=100.0) == CakePolicy(tau1=1.5, tau2=0.6, gamma=100.0)


def test_docstrings_name_the_papers_and_every_parameter_with_its_default():
    assert "Qin et al., ICLR 2025" in CakePolicy.__doc__
    for field in dataclasses.fields(CakePolicy):
        assert f"{field.name} = {field.default}" in " ".join(CakePolicy.__doc__.split()), field.name
    assert "Feng et al. 2024" in AdaPolicy.__doc__ and "alpha=0.2" in AdaPolicy.__doc__


def test_registered_names_are_compositions():
    assert get_policy("ada_cake", alpha=0.3, gamma=10.0) == AdaPolicy(CakePolicy(gamma=10.0), alpha=0.3)
    assert get_policy("ada_pyramidkv", beta=4) == AdaPolicy(PyramidKVPolicy(beta=4))
    assert get_policy("ada_pyramidkv").name == "ada_pyramidkv"
