"""Semantic and in-context caching: hits leave the large model, every request pays the
lookup; IC-Cache's small-model hits cut the fleet's cost at high hit rates, a cache with a low
hit rate and a slow lookup does not pay (category-aware semantic caching's break-even)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.planner.cache_fleet import fleet_cost
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import Slo
from servesim.sim.policies import Policy
from servesim.sim.semantic_cache import CacheCategory, SemanticCache, serve_with_cache
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import LogNormal, synthetic
from servesim.spec.devices import Catalog
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

H100 = Catalog().get("h100_sxm")
LARGE = Deployment(
    model=load_model("meta-llama/Llama-3.1-70B"), device=H100, parallel=Parallel(tp=4)
)
SMALL = Deployment(model=load_model("meta-llama/Llama-3.1-8B"), device=H100)


def traffic(n: int, rate: float):
    return synthetic(n, rate, LogNormal(600, 1500), LogNormal(200, 500), seed=3)


def test_hits_leave_the_large_model_and_every_request_pays_the_lookup() -> None:
    w = traffic(600, 6.0)
    base = simulate(LARGE, w).columns()
    order = np.argsort(base["request_id"])
    c = SemanticCache({"code": CacheCategory(0.4, 0.6), "chat": CacheCategory(0.6, 0.1)}, 0.02)
    _, hit = c.draw(len(w))
    r = serve_with_cache(w, LARGE, c)
    assert r["served"] == {"large": int((~hit).sum()), "small": 0, "cache": int(hit.sum())}
    assert r["large_load_req_per_s"] == pytest.approx(r["offered_req_per_s"] * (~hit).mean())
    assert (r["ttft_s"][hit] == 0.02).all()  # a cached answer: the lookup is all
    assert r["by_category"]["code"]["hit_rate"] > 0.5 > 0.2 > r["by_category"]["chat"]["hit_rate"]
    # Misses wait less than without the cache (less load), plus the lookup.
    assert np.median(r["ttft_s"][~hit]) < np.median(base["ttft_s"][order][~hit]) + 0.02
    # No hits at all: the same service, 20 ms later.
    none = serve_with_cache(w, LARGE, SemanticCache({"all": CacheCategory(1.0, 0.0)}, 0.02))
    assert none["ttft_s"] == pytest.approx(base["ttft_s"][order] + 0.02)


def test_misses_keep_their_prefix_hashes_and_priorities() -> None:
    """Claim: a miss reaches the large model as the request it was: a shared system prompt
    (prefix hash ids) is still cached and a priority still orders it. With no hits and no
    lookup, serving through the cache is serving without it."""
    w = synthetic(200, 4.0, 1024, 64, seed=1)
    w.prefix_hashes = [[7, 8, 100 + i] for i in range(len(w))]  # two shared 512-token blocks
    w.prefix_block_tokens = 512
    w.priority = np.arange(len(w)) % 2
    dep = replace(SMALL, policy=Policy(name="priority"))
    base = simulate(dep, w).columns()
    assert base["cached_tokens"].sum() > 0
    none = serve_with_cache(w, dep, SemanticCache({"all": CacheCategory(1.0, 0.0)}, 0.0))
    assert none["ttft_s"] == pytest.approx(base["ttft_s"][np.argsort(base["request_id"])])


def test_misses_are_routed_over_the_replicas_by_the_router_asked_for() -> None:
    """Claim: the router picks the replica of every miss, as without the cache: with no hits
    and no lookup, two replicas behind least_loaded serve the misses exactly as
    least_loaded serves the workload (and not as the default round robin does)."""
    dep = replace(SMALL, replicas=2)
    w = synthetic(300, 20.0, LogNormal(600, 3000), LogNormal(100, 800), seed=3)
    none = SemanticCache({"all": CacheCategory(1.0, 0.0)}, 0.0)
    out = serve_with_cache(w, dep, none, router="least_loaded")
    by_router = {}
    for router in ("least_loaded", "round_robin"):
        cols = simulate(dep, w, router=router).columns()
        by_router[router] = cols["e2e_s"][np.argsort(cols["request_id"])]
    assert not np.allclose(by_router["least_loaded"], by_router["round_robin"])
    assert out["e2e_s"] == pytest.approx(by_router["least_loaded"])


def test_ic_cache_cuts_fleet_cost_at_high_hit_rates_and_not_at_low_ones() -> None:
    """IC-Cache (arXiv:2501.12689) finds > 70 % of requests have similar earlier ones and reports
    1.4-5.9x throughput: here Llama-3.1-70B on 4 H100s with Llama-3.1-8B answering hits with
    1,500 tokens of examples, 40 req/s under TTFT 1 s / TPOT 100 ms. At a 70 % hit rate and a
    2 ms lookup (the category-aware paper's in-memory search) the fleet costs well under half;
    at 5 % with a 30 ms remote lookup it costs no less than without the cache."""
    w = traffic(1000, 40.0)
    slo = Slo(1.0, 0.1)
    high = SemanticCache({"all": CacheCategory(1.0, 0.7)}, 0.002, "small_model", 1500)
    low = SemanticCache({"all": CacheCategory(1.0, 0.05)}, 0.03, "small_model", 1500)
    a, b = fleet_cost(w, LARGE, high, slo, SMALL), fleet_cost(w, LARGE, low, slo, SMALL)
    gain = 1.0 / a["cost_ratio"]
    assert 1.4 <= gain <= 5.9, a
    assert a["cost_ratio"] < 0.5, a  # "well under half" (0.44 here)
    assert a["large_with_cache"]["replicas"] < a["without_cache"]["replicas"], a
    assert b["cost_ratio"] >= 1.0, b


def test_a_fleet_of_multi_replica_deployments_covers_the_rate() -> None:
    """A 2-replica deployment of Llama-3.1-8B on one H100 each sustains about 51 req/s, so
    40 req/s take one copy of it: 2 replicas at 2 × $7.52/h, the same fleet as counting one
    replica's 26 req/s. It was priced as one replica ($7.52/h for 40 req/s)."""
    w = traffic(1000, 40.0)
    cache = SemanticCache({"all": CacheCategory(1.0, 0.3)}, 0.002)
    one = fleet_cost(w, SMALL, cache, Slo(1.0, 0.1))["without_cache"]
    two = fleet_cost(w, replace(SMALL, replicas=2), cache, Slo(1.0, 0.1))["without_cache"]
    assert one["replicas"] == two["replicas"] == 2
    assert two["usd_per_hour"] == pytest.approx(2 * 7.52) == one["usd_per_hour"]
    assert two["replicas"] * two["capacity_req_per_s"] / 2 >= 40.0


def test_bad_caches_are_refused() -> None:
    with pytest.raises(ServesimError):
        CacheCategory(1.0, 1.5)
    with pytest.raises(ServesimError):
        SemanticCache({}, 0.01)
    with pytest.raises(ServesimError):
        SemanticCache({"a": CacheCategory(1, 0.5)}, 0.01, on_hit="guess")
    with pytest.raises(ServesimError, match="small model"):
        serve_with_cache(
            traffic(50, 1.0), LARGE, SemanticCache({"a": CacheCategory(1, 0.5)}, 0.0, "small_model")
        )


def test_cli_simulate_through_a_category_aware_cache(tmp_path) -> None:
    import json

    from servesim.cli.main import main

    out = tmp_path / "c"
    args = ["simulate", "--prompt", "lognormal:600:1500", "--output", "lognormal:200:500"]
    args += ["--rate", "6", "--num-requests", "200", "--out", str(out)]
    assert main([*args, "--cache-categories", "code:0.4:0.6,chat:0.6:0.1"]) == 0
    fig = json.loads((out / "summary.json").read_text())["semantic_cache"]
    assert fig["served"]["cache"] + fig["served"]["large"] == 200
    assert fig["by_category"]["code"]["hit_rate"] > fig["by_category"]["chat"]["hit_rate"]
    assert main([*args, "--cache-on-hit", "small_model", "--cache-hit-rate", "0.5"]) == 2
    assert main([*args, "--cache-lookup-ms", "3"]) == 2


def test_the_runs_seed_draws_the_caches_hits(tmp_path) -> None:
    """`--seed` varied the lengths and arrivals but not which requests the cache answered: its
    draw kept seed 0. The same seed repeats the hits; another draws others."""
    import json

    from servesim.cli.main import main

    base = ["simulate", "--prompt", "fixed:256", "--output", "fixed:32", "--rate", "5"]
    base += ["--num-requests", "200", "--cache-hit-rate", "0.5"]

    def hits(seed: int, name: str) -> dict:
        out = tmp_path / name
        assert main([*base, "--seed", str(seed), "--out", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())["semantic_cache"]["served"]

    assert hits(7, "a") == hits(7, "b")
    assert hits(7, "a") != hits(0, "c")
