"""Mélange mix: the published example, brute-force optimality, edge cases, simulator-fed plan."""

from __future__ import annotations

import itertools
import math
from importlib import resources

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.planner.candidates import PlanSpec, WorkloadSpec
from servesim.planner.melange import (
    MixSolution,
    best_single_type,
    bucket_base,
    bucket_workload,
    mix_candidates,
    plan_mix,
    solve_mix,
    split_by_type,
)
from servesim.sim.metrics import Slo
from servesim.sim.workload import Workload

# melange/config/example.json of github.com/tyler-griggs/melange-release (slice_factor 1).
EXAMPLE_SHARES = np.array([[0.2, 0.1], [0.5, 0.2]])
EXAMPLE_RATE = 30.0
EXAMPLE_CAPS = {
    "A10G": np.array([[2.0, 1.0], [5.0, 2.0]]),
    "A100-80GB": np.array([[20.0, 20.0], [40.0, 20.0]]),
}
EXAMPLE_PRICES = {"A10G": 1.01, "A100-80GB": 3.67}


def check_feasible(
    sol: MixSolution, rates: np.ndarray, caps: dict[str, np.ndarray], prices: dict[str, float]
) -> None:
    """Every slice of every bucket with demand assigned once; each type's load within its count."""
    sf = sol.slice_factor
    wanted = {(i, j, k) for i, j in np.ndindex(rates.shape) if rates[i, j] > 0 for k in range(sf)}
    got = [(i, j, k) for i, j, k, _ in sol.assignment]
    assert sorted(got) == sorted(wanted)
    load = dict.fromkeys(caps, 0.0)
    for i, j, _, t in sol.assignment:
        assert caps[t][i, j] > 0
        load[t] += rates[i, j] / sf / caps[t][i, j]
    for t in caps:
        assert load[t] == pytest.approx(sol.loads[t], abs=1e-9)
        assert load[t] <= sol.counts[t] + 1e-6
    assert sol.cost_per_hour == pytest.approx(sum(sol.counts[t] * prices[t] for t in caps))


def brute_force(
    rates: np.ndarray, caps: dict[str, np.ndarray], prices: dict[str, float], sf: int
) -> float:
    """The optimum by trying every assignment of slices to types."""
    slices = [(i, j) for i, j in np.ndindex(rates.shape) if rates[i, j] > 0 for _ in range(sf)]
    types = list(caps)
    best = math.inf
    for pick in itertools.product(types, repeat=len(slices)):
        if any(caps[t][i, j] <= 0 for (i, j), t in zip(slices, pick, strict=True)):
            continue
        load = dict.fromkeys(types, 0.0)
        for (i, j), t in zip(slices, pick, strict=True):
            load[t] += rates[i, j] / sf / caps[t][i, j]
        best = min(best, sum(math.ceil(load[t] - 1e-6) * prices[t] for t in types))
    return best


def random_instance(
    seed: int, n_types: int = 3
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.0, 12.0, size=(2, 2))
    caps = {f"g{g}": rng.uniform(0.5, 25.0, size=(2, 2)) for g in range(n_types)}
    prices = {f"g{g}": float(rng.uniform(0.5, 8.0)) for g in range(n_types)}
    return rates, caps, prices


# ---- the published example ------------------------------------------------------------------


def test_published_example_optimum_is_3_a10g_plus_1_a100_at_6_70() -> None:
    rates = EXAMPLE_SHARES * EXAMPLE_RATE
    sol = solve_mix(rates, EXAMPLE_CAPS, EXAMPLE_PRICES, slice_factor=1)
    assert sol.counts == {"A10G": 3, "A100-80GB": 1}
    assert sol.cost_per_hour == pytest.approx(6.70, abs=1e-9)
    check_feasible(sol, rates, EXAMPLE_CAPS, EXAMPLE_PRICES)
    # Each bucket is exactly 3 A10Gs of load, so the A10Gs take one whole bucket.
    assert sum(t == "A10G" for *_, t in sol.assignment) == 1
    assert sol.loads["A10G"] == pytest.approx(3.0)
    assert brute_force(rates, EXAMPLE_CAPS, EXAMPLE_PRICES, 1) == pytest.approx(6.70)
    # One type alone: 2 A100s ($7.34) or 12 A10Gs ($12.12).
    single = best_single_type(rates, EXAMPLE_CAPS, EXAMPLE_PRICES)
    assert single is not None
    assert single.counts == {"A10G": 0, "A100-80GB": 2}
    assert single.cost_per_hour == pytest.approx(7.34)


def test_finer_slices_never_cost_more_and_match_brute_force() -> None:
    rates = EXAMPLE_SHARES * EXAMPLE_RATE
    sol2 = solve_mix(rates, EXAMPLE_CAPS, EXAMPLE_PRICES, slice_factor=2)
    sol4 = solve_mix(rates, EXAMPLE_CAPS, EXAMPLE_PRICES, slice_factor=4)
    check_feasible(sol4, rates, EXAMPLE_CAPS, EXAMPLE_PRICES)
    assert sol4.cost_per_hour <= sol2.cost_per_hour <= 6.70 + 1e-9
    assert sol2.cost_per_hour == pytest.approx(brute_force(rates, EXAMPLE_CAPS, EXAMPLE_PRICES, 2))
    # Two A10G slices (0.75 + 0.75 load) leave the A100 at 0.956: 2 A10G + 1 A100.
    assert sol4.counts == {"A10G": 2, "A100-80GB": 1}
    assert sol4.cost_per_hour == pytest.approx(5.69)


# ---- optimality and properties on random instances -------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_ilp_matches_brute_force_and_beats_every_single_type(seed: int) -> None:
    rates, caps, prices = random_instance(seed)
    sf = 1 + seed % 2
    sol = solve_mix(rates, caps, prices, slice_factor=sf)
    check_feasible(sol, rates, caps, prices)
    assert sol.cost_per_hour == pytest.approx(brute_force(rates, caps, prices, sf), abs=1e-9)
    single = best_single_type(rates, caps, prices)
    assert single is not None
    check_feasible(single, rates, caps, prices)
    assert sol.cost_per_hour <= single.cost_per_hour + 1e-9
    for t in caps:  # each type alone, by the formula
        alone = math.ceil(sum(rates[i, j] / caps[t][i, j] for i, j in np.ndindex(2, 2)) - 1e-6)
        assert single.cost_per_hour <= alone * prices[t] + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_cost_is_monotone_in_rate(seed: int) -> None:
    rates, caps, prices = random_instance(100 + seed)
    costs = [solve_mix(rates * f, caps, prices).cost_per_hour for f in np.linspace(0.1, 3.0, 15)]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(costs))
    # Raising one bucket's rate alone never lowers the cost either.
    more = rates.copy()
    more[1, 0] *= 1.7
    assert (
        solve_mix(more, caps, prices).cost_per_hour >= solve_mix(rates, caps, prices).cost_per_hour
    )


def test_a_single_type_needs_ceil_of_its_total_load() -> None:
    rates = np.array([[3.0, 1.2], [0.7, 2.5]])
    caps = {"only": np.array([[2.0, 1.5], [4.0, 0.9]])}
    load = 3.0 / 2.0 + 1.2 / 1.5 + 0.7 / 4.0 + 2.5 / 0.9  # 5.253
    for sf in (1, 3):
        sol = solve_mix(rates, caps, {"only": 2.5}, slice_factor=sf)
        assert sol.counts == {"only": math.ceil(load)} == {"only": 6}
        assert sol.cost_per_hour == pytest.approx(15.0)
        assert sol.loads["only"] == pytest.approx(load)
    exact = solve_mix(np.array([[4.0]]), {"only": np.array([[2.0]])}, {"only": 1.0})
    assert exact.counts == {"only": 2}  # a load of exactly 2 units needs 2, not 3


def test_bucket_no_type_can_serve_is_named() -> None:
    rates = np.array([[1.0, 2.0], [3.0, 0.5]])
    caps = {
        "small": np.array([[5.0, 5.0], [0.0, 5.0]]),
        "big": np.array([[9.0, 9.0], [0.0, 9.0]]),
    }
    with pytest.raises(ServesimError, match=r"Bucket \(row 1, col 0\) has 3 req/s"):
        solve_mix(rates, caps, {"small": 1.0, "big": 3.0})
    # Without demand in that bucket it does not matter; a type may also skip single buckets.
    rates[1, 0] = 0.0
    caps["big"][0, 0] = 0.0
    sol = solve_mix(rates, caps, {"small": 1.0, "big": 3.0})
    assert all((i, j) != (1, 0) for i, j, _, _ in sol.assignment)
    assert all(t == "small" for i, j, _, t in sol.assignment if (i, j) == (0, 0))


def test_empty_demand_and_infinite_capacity() -> None:
    caps = {"a": np.array([[1.0, np.inf]])}
    zero = solve_mix(np.zeros((1, 2)), caps, {"a": 1.0})
    assert zero.cost_per_hour == 0.0 and zero.counts == {"a": 0} and zero.assignment == []
    only_inf = solve_mix(np.array([[0.0, 5.0]]), caps, {"a": 1.0})
    assert only_inf.counts == {"a": 0}  # inf capacity: no load


@pytest.mark.parametrize(
    ("rates", "caps", "prices", "sf", "match"),
    [
        ([[1.0, -1.0]], {"a": [[1.0, 1.0]]}, {"a": 1.0}, 1, "non-negative requests"),
        ([[1.0, 1.0]], {"a": [[1.0]]}, {"a": 1.0}, 1, "one capacity per bucket"),
        ([[1.0, 1.0]], {"a": [[1.0, 1.0]]}, {}, 1, "no price"),
        ([[1.0, 1.0]], {"a": [[1.0, 1.0]]}, {"a": -2.0}, 1, "non-negative \\$/hour"),
        ([[1.0, 1.0]], {"a": [[1.0, np.nan]]}, {"a": 1.0}, 1, "non-negative req/s"),
        ([[1.0, 1.0]], {"a": [[1.0, 1.0]]}, {"a": 1.0}, 0, "slice_factor"),
        ([1.0, 1.0], {"a": [1.0, 1.0]}, {"a": 1.0}, 1, "2-D grid"),
        ([[1.0]], {}, {}, 1, "at least one GPU type"),
    ],
)
def test_bad_input_is_refused(rates: object, caps: dict, prices: dict, sf: int, match: str) -> None:
    with pytest.raises(ServesimError, match=match):
        solve_mix(rates, {k: np.asarray(v) for k, v in caps.items()}, prices, slice_factor=sf)


# ---- buckets ----------------------------------------------------------------------------------


def tiny() -> Workload:
    return Workload(
        arrival_s=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        prompt_tokens=[100, 2000, 300, 1500, 50, 1499],
        output_tokens=[10, 10, 500, 300, 249, 250],
        name="tiny",
    )


def test_bucket_workload_shares_and_requests() -> None:
    shares, buckets = bucket_workload(tiny(), [0, 1500, np.inf], [0, 250, np.inf])
    # (100,10) (50,249) -> [0][0]; (300,500) (1499,250) -> [0][1]; (2000,10) -> [1][0];
    # (1500,300) -> [1][1]: edges are lower-inclusive.
    np.testing.assert_allclose(shares, np.array([[2, 2], [1, 1]]) / 6)
    assert buckets[0][0].prompt_tokens.tolist() == [100, 50]
    assert buckets[0][1].arrival_s.tolist() == [2.0, 5.0]
    assert buckets[1][1].output_tokens.tolist() == [300]
    with pytest.raises(ServesimError, match="outside the edges"):
        bucket_workload(tiny(), [0, 1500], [0, 250, np.inf])
    for bad in ([0, 1500, 1000], [0, np.inf, np.inf], [0], [-1, np.inf]):
        with pytest.raises(ServesimError, match="increasing"):
            bucket_workload(tiny(), bad, [0, np.inf])


def test_bucket_base_keeps_the_traces_arrivals_and_the_buckets_lengths() -> None:
    w = tiny()
    _, buckets = bucket_workload(w, [0, 1500, np.inf], [0, 250, np.inf])
    base = bucket_base(w, buckets[0][1], 10)
    assert len(base) == 10
    np.testing.assert_allclose(base.arrival_s, w.tiled(10).arrival_s)
    assert base.prompt_tokens.tolist() == [300, 1499] * 5


def test_split_by_type_deals_a_buckets_requests_to_its_slices() -> None:
    sol = MixSolution(
        cost_per_hour=0.0,
        counts={"x": 1, "y": 1},
        assignment=[
            (0, 0, 0, "x"),
            (0, 0, 1, "y"),
            (0, 1, 0, "y"),
            (0, 1, 1, "y"),
            (1, 0, 0, "x"),
            (1, 0, 1, "x"),
            (1, 1, 0, "x"),
            (1, 1, 1, "y"),
        ],
        loads={"x": 0.0, "y": 0.0},
        slice_factor=2,
    )
    parts = split_by_type(tiny(), sol, [0, 1500, np.inf], [0, 250, np.inf])
    # bucket [0][0] = requests 0, 4 -> x, y; [0][1] = 2, 5 -> y; [1][0] = 1 -> x; [1][1] = 3 -> x.
    assert parts["x"].tolist() == [0, 1, 3]
    assert parts["y"].tolist() == [2, 4, 5]


def test_mix_candidates_keep_configs_whose_weights_fit() -> None:
    spec = PlanSpec(model="meta-llama/Llama-3.1-70B")
    cands = mix_candidates(spec, ["a10g", "a100"], tp=(1, 2, 4, 8))
    # 141 GB of bf16 weights plus activations: A10G (24 GB) needs TP8, TP1 fits nowhere; an
    # A100 80GB reports 81,920 MiB (85.9 GB), so TP2 leaves 77.3 GB usable (vLLM's 0.9) against
    # 70.6 GB of weights and ~3 GB of activations: it fits, with a small KV cache.
    assert set(cands) == {"a10g_tp8", "a100_sxm_tp2", "a100_sxm_tp4", "a100_sxm_tp8"}
    assert cands["a10g_tp8"].devices_per_replica == 8
    with pytest.raises(ServesimError, match="fits none"):
        mix_candidates(spec, ["a10g"], tp=(1,))
    for bad in (None, 0.0, math.inf):
        with pytest.raises(ServesimError, match="positive rate"):
            plan_mix(spec, ["a10g"], bad, [0, math.inf], [0, math.inf])  # type: ignore[arg-type]


# ---- the same formulation fed by servesim's capacities ---------------------------------------

FED_RATE = 10.0
PROMPT_EDGES = [0, 1500, np.inf]
OUTPUT_EDGES = [0, 250, np.inf]


@pytest.fixture(scope="module")
def fed_plan():  # type: ignore[no-untyped-def]
    # Pinned to the H100-fitted roofline alone (no cross-GPU correction for the table-less A10G
    # and L4): this tests the Mélange formulation on a fixed price/performance landscape; with
    # the correction both run a little slower and two A100s are the cheapest fleet at 10 req/s.
    spec = PlanSpec(
        model="meta-llama/Llama-3.1-8B",
        workload=WorkloadSpec("azure_conv", 1500),
        slo=Slo(ttft_s=2.0, tpot_s=0.1),
        target=0.9,
        rel_tol=0.05,
        fit_file=str(resources.files("servesim").joinpath("data/kernel_fit.json")),
    )
    return plan_mix(
        spec,
        ["a10g", "l4", "a100_sxm"],
        FED_RATE,
        PROMPT_EDGES,
        OUTPUT_EDGES,
        slice_factor=4,
        num_requests=600,
    )


def test_simulated_capacities_are_physically_ordered(fed_plan) -> None:  # type: ignore[no-untyped-def]
    caps = fed_plan.capacities
    assert fed_plan.shares.sum() == pytest.approx(1.0)
    for t, c in caps.items():
        finite = c[np.isfinite(c)]
        assert np.all(finite > 0), t  # an 8B model serves every bucket on these devices
        # Short prompts and short outputs are the cheapest bucket to serve on every device.
        assert c[0, 0] == finite.max()
        assert c[0, 0] > c[0, 1] and c[0, 0] > c[1, 0]
    # A100 (80 GB, 2 TB/s) serves more of every bucket per replica than A10G or L4 (24 GB).
    mask = np.isfinite(caps["a100_sxm"])
    assert np.all(caps["a100_sxm"][mask] > 3 * caps["a10g"][mask])
    assert np.all(caps["a100_sxm"][mask] > 3 * caps["l4"][mask])


def test_simulator_fed_mix_is_feasible_and_cheaper_than_one_type(fed_plan) -> None:  # type: ignore[no-untyped-def]
    p = fed_plan
    sol = p.solution
    rates = p.shares * p.rate_per_s
    check_feasible(sol, rates, p.capacities, p.prices)
    single = p.single_type
    assert single is not None
    base_type, base_cost = p.baseline_cost
    print(
        f"\nmix at {p.rate_per_s:g} req/s: {p.devices} ${sol.cost_per_hour:.2f}/h, "
        f"attainment { ({t: round(a, 3) for t, a in p.attainment.items()}) }; one type under the "
        f"same capacities { ({t: n for t, n in single.counts.items() if n}) } "
        f"${single.cost_per_hour:.2f}/h; smallest simulated one-type fleets {p.baseline} "
        f"(best {base_type} ${base_cost:.2f}/h)"
    )
    # Feasible: every type's share of the traffic, simulated on its replicas, meets the SLO.
    assert p.verified, p.attainment
    assert set(p.attainment) == {t for t, n in sol.counts.items() if n}
    # Never worse than one type under the same capacities, and here cheaper than the smallest
    # one-type fleet that simulation shows serving the whole workload.
    assert sol.cost_per_hour <= single.cost_per_hour + 1e-9
    assert sol.cost_per_hour < base_cost
    assert len(p.devices) >= 2


def test_a_mix_plan_measures_buckets_on_the_requests_asked_for(monkeypatch) -> None:
    """`plan --mix --num-requests N` measured each bucket's capacity on a fixed 600-request
    base whatever N said; the requests asked for now reach the capacity runs (the mix's own
    default stays when none are asked for)."""
    import servesim.planner.melange as melange
    from servesim.cli.main import main

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def fake(*args: object, **kwargs: object) -> None:
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(melange, "plan_mix", fake)
    base = ["plan", "--model", "meta-llama/Llama-3.1-8B", "--gpus", "l4,a100_sxm", "--mix"]
    base += ["--rate", "5"]
    for extra in (["--num-requests", "900"], []):
        with pytest.raises(Stop):
            main([*base, *extra])
    assert seen[0].get("num_requests") == 900
    assert "num_requests" not in seen[1]
