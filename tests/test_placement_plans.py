"""Plans: exactness of the per-layer search, validity, every reported figure recomputed, rounding, errors."""

import json

import numpy as np
import pytest

from fairkv_hf.placement import CostModel, HeadLoadProfile, Plan, batch_rows, from_duoattention, from_headkv, make_plan
from fairkv_hf.placement.assign import layer_time
from fairkv_hf.placement.bounds import layer_lower_bound, layer_optimum
from fairkv_hf.placement.exact import layer_exact
from fairkv_hf.placement.simulate import synthetic_profile

from .conftest import SHARED as _SHARED

SHARED = _SHARED / "profiles"
HEADKV = SHARED / "headkv" / "Mistral-7B-Instruct-v0.2_retrieval_heads.json"
DUO = SHARED / "duoattention" / "Meta-Llama-3.1-8B-Instruct.full_attention_heads.tsv"


def _toy(layers=3, heads=4, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.round(rng.lognormal(5, 1, (layers, heads)))
    return HeadLoadProfile("toy", layers, 2 * heads, heads, 128, 1024, 128.0, tokens)


@pytest.mark.parametrize("seed", range(6))
def test_exact_dp_matches_an_independent_milp(seed):
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0, 1, 5)
    b = float(rng.uniform(0, 0.5))
    gpus, copies = 3, int(rng.integers(0, 3))
    layer, t = layer_exact(a, b, gpus, copies)
    milp = layer_optimum(a, b, gpus, copies, node_limit=100000)
    assert milp.optimal
    assert t == pytest.approx(milp.time, rel=1e-6)
    assert layer_time(a, b, gpus, layer) == pytest.approx(t, rel=1e-6)
    assert sum(len(p) - 1 for p in layer) <= copies
    assert layer_lower_bound(a, b, gpus, copies) <= t * (1 + 1e-9)


def _recompute(plan: Plan, data: dict) -> None:
    """Check every figure of a plan file by recomputing it with plain loops from placements and profile."""
    p, cost, n, batch = plan.profile, plan.cost, plan.gpus, plan.batch
    head_bytes = (2 * p.group_size + 2) * p.head_dim * p.hidden_size * cost.dtype_bytes
    kv = np.zeros((p.num_layers, n))
    heads_on = np.zeros((p.num_layers, n))
    for l, layer in enumerate(data["layers"]):
        for entry in layer:
            for pl in entry["placements"]:
                kv[l, pl["gpu"]] += p.tokens[l, entry["kv_head"]] * pl["batch_fraction"]
                heads_on[l, pl["gpu"]] += 1
    mean = p.tokens.sum(axis=1) / n
    assert data["balance"] == pytest.approx(kv.max(1).sum() / mean.sum(), rel=1e-12)
    tp = np.array([[p.tokens[l, part].sum() for part in np.array_split(np.arange(p.num_kv_heads), n)] for l in range(p.num_layers)])
    assert data["standard_tp_balance"] == pytest.approx(tp.max(1).sum() / mean.sum(), rel=1e-12)
    bound = [max(mean[l], layer_lower_bound(p.tokens[l], 0.0, n, plan.max_copies)) for l in range(p.num_layers)]
    assert data["lower_bound"] == pytest.approx(sum(bound) / mean.sum(), rel=1e-12)
    assert data["replica_weight_bytes"] == (heads_on.sum() - p.num_layers * p.num_kv_heads) * head_bytes
    per_token = batch * 2 * p.head_dim * cost.dtype_bytes
    times = kv * per_token / cost.kv_bandwidth + heads_on * head_bytes / cost.weight_bandwidth + cost.constant_s
    assert data["predicted_step_s"] == pytest.approx(times.max(1).sum(), rel=1e-12)
    memory = (kv * per_token + heads_on * head_bytes).sum(axis=0)
    assert data["max_gpu_memory_bytes"] == pytest.approx(memory.max(), rel=1e-12)
    for b, value in data["rounded_balance"].items():
        rounded = np.zeros((p.num_layers, n))
        for l, layer in enumerate(data["layers"]):
            for entry in layer:
                rows = batch_rows([pl["batch_fraction"] for pl in entry["placements"]], int(b))
                for pl, r in zip(entry["placements"], rows):
                    rounded[l, pl["gpu"]] += p.tokens[l, entry["kv_head"]] * r / int(b)
        assert value == pytest.approx(rounded.max(1).sum() / mean.sum(), rel=1e-12)
    best_effort = make_plan(p, n, batch, 0, None, cost, plan.objective)
    assert all(len(h) == 1 for l in best_effort.layers for h in l)
    assert data["best_effort_balance"] == best_effort.loads().balance(p)
    if plan.objective != "time":
        return
    per_layer_opt = sum(layer_exact(alpha_t, beta, n, plan.max_copies)[1] for alpha_t, beta in
                        ((cost.coefficients(p, batch)[0] * t, cost.coefficients(p, batch)[1]) for t in p.tokens))
    assert data["step_lower_bound_s"] == pytest.approx(per_layer_opt + cost.constant_s * p.num_layers, rel=1e-9)


@pytest.mark.parametrize("gpus, objective", [(2, "time"), (3, "time"), (4, "balance")])
def test_plan_file_figures_recompute(tmp_path, gpus, objective):
    plan = make_plan(_toy(), gpus, batch=16, objective=objective)
    data = plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["balance"] == data["balance"]
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.layers == plan.layers
    _recompute(loaded, data)


def test_real_profile_plan_recomputes_and_is_near_optimal(tmp_path):
    plan = make_plan(from_duoattention(DUO), 8, batch=32)
    data = plan.save(tmp_path / "plan.json")
    _recompute(Plan.load(tmp_path / "plan.json"), data)
    assert data["predicted_step_s"] <= 1.01 * data["step_lower_bound_s"]
    assert data["predicted_step_s"] < data["standard_tp_step_s"]


@pytest.mark.parametrize("gpus", [2, 4, 8])
def test_balance_objective_meets_acceptance_on_real_profiles(gpus):
    for profile in (from_headkv(HEADKV, 1024, 1.01), from_duoattention(DUO)):
        plan = make_plan(profile, gpus, objective="balance")
        assert plan.figures()["balance"] <= 1.02
        assert all(sum(len(h) - 1 for h in layer) <= gpus - 1 for layer in plan.layers)


def test_max_copies_and_memory_cap_are_held():
    profile = from_headkv(HEADKV, 1024, 1.01)
    free = make_plan(profile, 4, batch=32, max_copies=1)
    assert all(sum(len(h) - 1 for h in layer) <= 1 for layer in free.layers)
    memory = free.loads().memory_bytes(profile, free.cost, 32)
    tp_memory = make_plan(profile, 4, batch=32, max_copies=0).loads().memory_bytes(profile, free.cost, 32)
    cap = (memory.max() + tp_memory.max()) / 2 / 1024**3
    capped = make_plan(profile, 4, batch=32, max_copies=1, mem_gib=cap)
    assert capped.loads().memory_bytes(profile, capped.cost, 32).max() <= cap * 1024**3


def test_rounding_is_largest_remainder():
    assert batch_rows([0.5, 0.25, 0.25], 8) == [4, 2, 2]
    assert batch_rows([0.3, 0.3, 0.4], 8) == [3, 2, 3]  # floors 2, 2, 3; remainders tie at 0.4: the earlier wins
    assert batch_rows([0.3, 0.3, 0.4], 1) == [0, 0, 1]
    assert sum(batch_rows([1 / 3] * 3, 32)) == 32


def test_standard_tp_replicates_heads_beyond_kv_head_count():
    profile = _toy(layers=1, heads=2)
    plan = make_plan(profile, 4, objective="balance")
    figures = plan.figures()
    t = profile.tokens[0]
    assert figures["standard_tp_balance"] == pytest.approx(t.max() / (t.sum() / 4))
    assert figures["balance"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus": 0}, "positive integer"),
        ({"gpus": 2, "max_copies": -1}, "max_copies"),
        ({"gpus": 2, "objective": "speed"}, "objective"),
        ({"gpus": 2, "mem_gib": 1e-6}, "no plan fits"),
        ({"gpus": 2, "batch": 0}, "batch"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_plan(_toy(), **kwargs)


def test_plan_file_with_bad_placements_is_refused(tmp_path):
    data = make_plan(_toy(), 2, objective="balance").to_dict()
    data["layers"][0][0]["placements"] = [{"gpu": 5, "batch_fraction": 1.0}]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="GPU ids"):
        Plan.load(tmp_path / "bad.json")
    data["layers"][0][0]["placements"] = [{"gpu": 0, "batch_fraction": 0.7}]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sum to 1"):
        Plan.load(tmp_path / "bad.json")


def test_deterministic():
    profile = from_headkv(HEADKV, 128, 2.0)
    assert make_plan(profile, 4).layers == make_plan(profile, 4).layers


def test_80_layers_8_heads_8_gpus_plan_is_within_1_percent_of_its_bound():
    """Planning time is measured in bench/results/placement (fairkv-plan --simulate), not asserted here."""
    plan = make_plan(synthetic_profile(), 8, batch=32)
    assert plan.loads().step_time(plan.profile, CostModel(), 32) <= 1.01 * plan.step_lower_bound_s


def test_heuristic_fallback_on_a_layer_too_large_for_the_dp():
    from fairkv_hf.placement.exact import MAX_STATES, state_count
    from fairkv_hf.placement.search import solve_layer

    a = np.random.default_rng(1).lognormal(0, 1, 14)
    assert state_count(a) > MAX_STATES
    for b, copies in ((0.0, 3), (0.3, 3), (0.3, 0)):
        layer, bound, _ = solve_layer(a, b, 4, copies)
        assert len(layer) == 14 and all(layer)
        assert all(abs(sum(x for _, x in p) - 1) < 1e-9 and len({g for g, _ in p}) == len(p) for p in layer)
        assert sum(len(p) - 1 for p in layer) <= copies
        assert bound <= layer_time(a, b, 4, layer) <= 1.05 * bound


def test_a_copy_is_kept_only_where_it_saves_more_than_its_fixed_cost():
    """One heavy head among light ones on 2 GPUs: copying it saves half its load. Per layer, a fixed cost per row
    slice smaller than that saving keeps the copy, a larger one drops it (and the model counts it in the time)."""
    tokens = np.array([[8000.0, 100, 100, 100], [400.0, 300, 300, 300]])
    profile = HeadLoadProfile("toy", 2, 4, 4, 128, 1024, 1000.0, tokens)
    base = CostModel(kv_bandwidth=3e12, weight_bandwidth=3e12, constant_s=0.0)
    copies = lambda plan: [sum(len(h) - 1 for h in layer) for layer in plan.layers]  # noqa: E731
    assert copies(make_plan(profile, 2, 16, cost=base)) == [1, 0]
    cheap = CostModel(**{**base.to_dict(), "copy_s": 1e-6})
    dear = CostModel(**{**base.to_dict(), "copy_s": 1e-3})
    assert copies(make_plan(profile, 2, 16, cost=cheap)) == [1, 0]
    kept = make_plan(profile, 2, 16, cost=dear)
    assert copies(kept) == [0, 0]
    with_copy = make_plan(profile, 2, 16, cost=cheap)
    assert with_copy.loads().layer_times(profile, dear, 16)[0].max() > kept.loads().layer_times(profile, dear, 16)[0].max()


def test_the_fitted_gpu_kinds_plan_and_unknown_ones_are_refused():
    h100 = CostModel.for_gpu("H100")
    assert h100.copy_s > 0 and h100.kv_bandwidth < CostModel().kv_bandwidth
    make_plan(from_duoattention(DUO), 2, 16, cost=h100).validate()
    with pytest.raises(ValueError, match="no fitted cost model for GPU 'b200'"):
        CostModel.for_gpu("b200")
