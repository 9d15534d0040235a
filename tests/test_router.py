"""Routing across replicas and live migration between them (Llumnix and the serving routers)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.sim.result import SimResult
from servesim.sim.router import ROUTERS, Migration
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import LogNormal, synthetic
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
L40S = get_device("l40s")  # 48 GB: a KV cache of ~180k tokens, so memory shapes the load
# Routers and migration are compared on a frontend of constant latency (a constant shift of
# every arrival changes nothing): the overloaded pools' p99 TTFT is set by cluster-wide stalls
# and moves several-fold under millisecond perturbations such as per-prompt tokenising (on
# seed 2, least_kv 9.5 s -> 50 s and least_loaded 34 s -> 11 s), which is not what is tested.
# Llumnix (OSDI 2024) ran on vLLM's synchronous scheduler, as these claims do.
ENGINE = get_engine("vllm").with_overrides(tokenize_s_per_token=0.0, overlap_scheduling=False)
# The bursts below are sized on the roofline's step times (L40S has measured tables too).
ROOF = "roofline"


def bursty(seed: int, rate: float = 4.0, n: int = 2000) -> Workload:
    """`n` requests with gamma arrivals of CV 2 (bursts), prompts of median 1,000 tokens and
    heavy-tailed outputs (median 400, p90 2,500) that no router can foresee."""
    return synthetic(
        n,
        rate,
        LogNormal(1000, 4000, max_tokens=16000),
        LogNormal(400, 2500, max_tokens=8000),
        arrival="gamma",
        cv=2.0,
        seed=seed,
    )


@cache
def run(router: str, seed: int, migrate: bool = False, rate: float = 4.0) -> SimResult:
    mig = Migration() if migrate else None
    return simulate(
        Deployment(LLAMA8, L40S, latency_model=ROOF, replicas=4, migration=mig, engine=ENGINE),
        bursty(seed, rate),
        router=router,
    )


def p99_ttft(res: SimResult) -> float:
    return res.summary()["ttft_s"]["p99"]


@pytest.mark.parametrize("seed", [1, 2])
def test_least_load_routing_beats_round_robin_on_tail_ttft(seed: int) -> None:
    """Claim (serving routers, Llumnix's dispatch): under bursty arrivals a router that sends
    each request to the least loaded replica — by outstanding tokens or by KV-cache load — cuts
    the p99 TTFT that round robin suffers when long requests pile up on some replicas."""
    rr = p99_ttft(run("round_robin", seed))
    tokens = p99_ttft(run("least_loaded", seed))
    kv = p99_ttft(run("least_kv", seed))
    assert tokens < 0.8 * rr and kv < 0.5 * rr, {"rr": rr, "least_loaded": tokens, "least_kv": kv}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_migration_cuts_tail_ttft_at_the_cost_it_predicts(seed: int) -> None:
    """Claim (Llumnix): moving decoding requests off a replica about to run out of KV cache to
    one with room, by a live copy that pauses each request only for the last few tokens, lowers
    the tail TTFT and the preemptions that a dispatcher blind to load leaves behind — here round
    robin, on three bursty traces (p99 34 -> 2.1 s, 40 -> 7.4 s, 85 -> 27 s); each pause is the
    stop-and-copy time the link model predicts. (Over KV-aware dispatch the effect is not
    robust in this 4-replica setting: see NOTES.md.)"""
    base, moved = run("round_robin", seed), run("round_robin", seed, migrate=True)
    s = moved.summary()
    assert s["migrations"] > 0, s
    assert p99_ttft(moved) < 0.5 * p99_ttft(base), (seed, p99_ttft(base), p99_ttft(moved))
    pre_base = int(base.columns()["preemptions"].sum())
    pre_moved = int(moved.columns()["preemptions"].sum())
    assert pre_moved < 0.8 * pre_base, (seed, pre_base, pre_moved)
    assert s["migration_gap_s_mean"] == pytest.approx(s["migration_downtime_s_mean"], rel=0.5), s
    # The cost: gigabytes over the link, and a pause far below one decode step per migration.
    assert s["migration_gb"] > 0 and s["migration_gap_s_mean"] < 0.005, s
    assert moved.columns()["migrations"].sum() == s["migrations"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_migration_cuts_tail_ttft_over_load_aware_dispatch(seed: int) -> None:
    """Claim (Llumnix, against its load-balanced INFaaS++ baseline): on a large pool under
    bursty load beyond what dispatch alone can balance, migrating decodes off replicas that run
    short of KV cache lowers the tail TTFT further than KV-aware dispatch (`least_kv`) alone.
    Here 16 L40S replicas at 19 req/s (8,000 requests, gamma CV 2): p99 TTFT 31/52/90 s ->
    27/35/76 s on seeds 1-3 (lower on all ten seeds of `scripts/migration_study.py`). On 4
    replicas the effect is mixed (NOTES.md): the tail there is set by cluster-wide stalls."""
    work = bursty(seed, rate=19.0, n=8000)
    base = simulate(
        Deployment(LLAMA8, L40S, latency_model=ROOF, replicas=16, engine=ENGINE),
        work,
        router="least_kv",
    )
    moved = simulate(
        Deployment(
            LLAMA8, L40S, latency_model=ROOF, replicas=16, migration=Migration(), engine=ENGINE
        ),
        work,
        router="least_kv",
    )
    p0, p1 = p99_ttft(base), p99_ttft(moved)
    s = moved.summary()
    assert s["migrations"] > 100 and p1 < 0.95 * p0, (seed, p0, p1, s["migrations"])


def test_migration_moves_load_off_a_replica_running_out_of_cache() -> None:
    """Claim (Llumnix's freeness): a replica whose running requests will outgrow its cache
    becomes a migration source and sends requests to one with room, which keeps them without
    preempting; without migration it preempts and recomputes, and the last long request ends
    much later (138 s against 102 s). Two A10G replicas (~15.5k tokens of cache each), round
    robin: the even requests (3,100 tokens each at the end) all land on replica 0, the odd ones
    (150 tokens) on replica 1. The budget is pinned at 8,192 tokens (vLLM's default on a large
    GPU; on an A10G it would be 2,048), as the figures were checked."""
    n = 16
    w = Workload(np.linspace(0, 1, n), np.full(n, 100), np.where(np.arange(n) % 2 == 0, 3000, 50))
    limits = {"max_num_batched_tokens": 8192, "max_num_seqs": 1024}
    dep = Deployment(LLAMA8, get_device("a10g"), replicas=2, **limits)
    base = simulate(dep, w, router="round_robin").columns()
    moved = simulate(
        Deployment(dep.model, dep.device, replicas=2, migration=Migration(), **limits),
        w,
        router="round_robin",
    )
    c = moved.columns()
    migrated = c["migrations"] > 0
    assert migrated.any() and (c["output_tokens"][migrated] == 3000).all(), c["migrations"]
    assert (c["replica"][migrated] == 1).all()
    assert c["preemptions"][migrated].sum() == 0  # the destination keeps what it takes
    assert base["preemptions"].sum() > 0
    assert c["e2e_s"].max() < 0.8 * base["e2e_s"].max(), (base["e2e_s"], c["e2e_s"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_migration_does_not_help_when_no_replica_runs_short(seed: int) -> None:
    """Claim (the setting where it does not help): when KV-aware dispatch (Llumnix's own) keeps
    every replica's cache from running short — the same bursty traces at 3.5 requests/s, where
    no request is preempted — no replica ever becomes a migration source, nothing moves, and the
    run is unchanged."""
    base, moved = run("least_kv", seed, rate=3.5), run("least_kv", seed, migrate=True, rate=3.5)
    assert int(base.columns()["preemptions"].sum()) == 0
    assert moved.summary().get("migrations", 0) == 0, moved.summary()
    assert p99_ttft(moved) == p99_ttft(base), (seed, p99_ttft(base), p99_ttft(moved))


def shared_prefix_workload(n: int = 1500, systems: int = 128) -> Workload:
    """Requests on `systems` system prompts of 4,096 tokens (hash blocks of 512) plus 512 own
    tokens: 128 of them need 524k tokens of cache, more than one H100 replica holds (~400k)
    but a quarter of them fits easily."""
    rng = np.random.default_rng(0)
    which = rng.integers(0, systems, n)
    hashes = [[int(s) * 100 + k for k in range(8)] + [10**6 + i] for i, s in enumerate(which)]
    return Workload(
        np.sort(rng.uniform(0, n / 6.0, n)),
        np.full(n, 9 * 512),
        np.full(n, 32),
        prefix_hashes=hashes,
        prefix_block_tokens=512,
    )


def test_prefix_affinity_and_sessions_raise_the_cluster_hit_rate() -> None:
    """Claim (SGLang's cache-aware router, Mooncake's Conductor): sending a request to the
    replica that already caches its prefix raises the cluster's prefix hit rate over round
    robin, which spreads each prefix over every replica and so needs every replica to hold
    them all; sticky sessions do the same."""
    w = shared_prefix_workload()
    dep = Deployment(LLAMA8, get_device("h100_sxm"), replicas=4)
    hits = {r: simulate(dep, w, router=r).summary()["prefix_hit_rate"] for r in ROUTERS}
    assert hits["prefix_affinity"] > hits["round_robin"] + 0.05, hits
    assert hits["session"] > hits["round_robin"] + 0.05, hits


def test_power_of_two_is_deterministic_and_routers_are_checked() -> None:
    """Claim: the random choices are seeded, so a run repeats exactly; bad names are refused."""
    w = bursty(3, rate=2.0).head(300)
    dep = Deployment(LLAMA8, L40S, latency_model=ROOF, replicas=3)
    a = simulate(dep, w, router="power_of_two").columns()["replica"]
    b = simulate(dep, w, router="power_of_two").columns()["replica"]
    assert np.array_equal(a, b) and len(set(a.tolist())) == 3
    with pytest.raises(ServesimError, match="Unknown router"):
        simulate(dep, w, router="random")
    with pytest.raises(ServesimError, match="low_steps"):
        Migration(low_steps=600, high_steps=500)
    with pytest.raises(ServesimError, match="pick"):
        Migration(pick="random")


def test_router_signals_drain_to_zero_with_migration_and_preemption(monkeypatch) -> None:
    """Conservation: every token a replica counted as outstanding or queued (the routers' and
    migration's signals) is taken off again when its request finishes, moves away or is
    admitted — also for migrated requests preempted and recomputed at their destination (vLLM)."""
    import servesim.sim.simulate as sim
    from servesim.spec.engine_profile import get_engine

    seen: list[list[tuple[int, int]]] = []
    real = sim.result

    def capture(dep, reps, *args, **kwargs):
        seen.append([(r.outstanding_tokens, r.queued_tokens) for r in reps])
        return real(dep, reps, *args, **kwargs)

    monkeypatch.setattr(sim, "result", capture)
    for engine in ("vllm", "trtllm"):
        dep = Deployment(
            LLAMA8,
            L40S,
            latency_model=ROOF,
            replicas=4,
            engine=get_engine(engine),
            migration=Migration(),
        )
        res = simulate(dep, bursty(1, rate=5.0, n=3000), router="least_kv")
        cols = res.columns()
        if engine == "vllm":
            assert cols["preemptions"].sum() > 0 and res.summary()["migrations"] > 0
        else:  # admits only what runs to completion (GUARANTEED_NO_EVICT): never preempts
            assert cols["preemptions"].sum() == 0
        assert (cols["generated_tokens"] == cols["output_tokens"]).all()
        assert seen[-1] == [(0, 0)] * 4, (engine, seen[-1])
