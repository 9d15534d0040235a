"""Capacity is a steady-state property: hand-checked on a deterministic server, the same for
short and long workloads, never an overloaded rate, and fleets sized by it hold up."""

from __future__ import annotations

import itertools
import math
from functools import cache

import pytest

from servesim.planner.candidates import (
    Candidate,
    PlanSpec,
    SearchSpace,
    WorkloadSpec,
    deployment_for,
)
from servesim.planner.capacity import Capacity, find_capacity, service_rate
from servesim.planner.plan import run_plan
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import Slo
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import synthetic
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model

LLAMA8 = "meta-llama/Llama-3.1-8B"

# ---- a deterministic server: one sequence at a time, fixed lengths (M/D/1) ---------------------

PROMPT, OUTPUT = 1024, 32  # tokens of every request


def one_at_a_time() -> tuple[Deployment, float, float]:
    """(deployment, service time S, prefill step) of an H100 serving one request at a time.

    A request is one prefill step then OUTPUT - 1 decode steps at growing context, so
    S comes straight from the predictor's iteration times."""
    dep = Deployment(
        load_model(LLAMA8), get_device("h100_sxm"), max_num_seqs=1, max_num_batched_tokens=2048
    )
    pred = dep.predictor()
    prefill = pred.step_s(0, 0, ((PROMPT, 0),))
    service = prefill + sum(pred.step_s(1, PROMPT + k, ()) for k in range(1, OUTPUT))
    return dep, service, prefill


def poisson(n: int) -> Workload:
    return synthetic(n, 1.0, PROMPT, OUTPUT, seed=1)


def md1_wait_cdf_at_2s(rho: float) -> float:
    """P(wait <= 2 S) in an M/D/1 queue at load rho (Erlang's formula; the k = 2 term is 0)."""
    return (1.0 - rho) * (math.exp(2.0 * rho) - rho * math.exp(rho))


def test_a_deterministic_server_has_the_hand_computed_service_rate_and_capacity() -> None:
    dep, s, prefill = one_at_a_time()
    assert 0.2 < s < 0.3  # about 24 ms of prefill and 31 decode steps of 7 ms
    svc = service_rate(dep, poisson(300), draw=poisson)
    assert svc.rate_per_s == pytest.approx(1.0 / s, rel=1e-3)
    assert svc.residence_s == pytest.approx(s, rel=1e-3)
    assert svc.concurrency == pytest.approx(1.0, rel=1e-3)

    # A loose SLO: the capacity is the throughput bound, one search step (3 %) below it.
    loose = find_capacity(dep, poisson(300), Slo(1000 * s, 1.0), 0.9, draw=poisson)
    assert loose.rate_per_s == pytest.approx(1.0 / (1.03 * s), rel=1e-3)

    # TTFT = frontend lag + queueing wait + prefill step, so "TTFT <= lag + prefill + 2 S for
    # 90 %" is "wait <= 2 S for 90 %": solve the M/D/1 formula for the load.
    lo, hi = 0.0, 0.999
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if md1_wait_cdf_at_2s(mid) >= 0.9 else (lo, mid)
    rho = lo  # 0.587
    lag = get_engine("vllm").frontend_s(PROMPT)  # fixed part + tokenising the prompt
    slo = Slo(lag + prefill + 2 * s, 1.0)
    cap = find_capacity(dep, poisson(300), slo, 0.9, draw=poisson)
    # Bisection to 3 % reports the last passing rate, so it sits just below the theory.
    assert 0.92 * rho / s <= cap.rate_per_s <= 1.03 * rho / s, (cap.rate_per_s * s, rho)
    assert cap.extended and cap.probe_requests >= 1000 and cap.given_requests == 300


def test_the_search_is_deterministic_and_monotone_in_the_attainment_target() -> None:
    dep, s, prefill = one_at_a_time()
    slo = Slo(prefill + 3 * s, 1.0)
    caps = [find_capacity(dep, poisson(300), slo, t, draw=poisson) for t in (0.5, 0.8, 0.9, 0.99)]
    rates = [c.rate_per_s for c in caps]
    assert all(a >= b for a, b in itertools.pairwise(rates)), rates
    assert rates[0] > rates[-1]
    again = find_capacity(dep, poisson(300), slo, 0.9, draw=poisson)
    assert again.rate_per_s == caps[2].rate_per_s and again.probes == caps[2].probes


# ---- a real mix: workload length does not matter ---------------------------------------------

MIX = dict(trace=None, prompt="lognormal:1000:2400:8000", output="lognormal:200:450:1000")
SLO = Slo(2.0, 0.1)


@cache
def mix_capacity(n: int) -> Capacity:
    spec = PlanSpec(LLAMA8, WorkloadSpec(num_requests=n, **MIX), SLO)  # type: ignore[arg-type]
    dep = deployment_for(spec, Candidate("h100_sxm", 1))
    return find_capacity(dep, spec.workload.build(), SLO, 0.9, draw=spec.workload.draw)


def test_capacity_does_not_depend_on_the_workload_length() -> None:
    """1,000 / 3,000 / 6,000 requests of one distribution give one capacity (±5 %); 10 to 200
    requests are too few for a steady state, so the search draws more of the same mix."""
    long = {n: mix_capacity(n).rate_per_s for n in (1000, 3000, 6000)}
    mean = sum(long.values()) / 3
    assert all(abs(c / mean - 1) <= 0.05 for c in long.values()), long
    for n in (10, 50, 100, 200):
        cap = mix_capacity(n)
        assert cap.extended and cap.given_requests == n and cap.probe_requests >= 1000
        assert abs(cap.rate_per_s / mean - 1) <= 0.05, (n, cap.rate_per_s, long)
    assert not mix_capacity(6000).extended  # long enough as given: used whole


def test_an_overloaded_rate_is_never_reported() -> None:
    """Simulated directly with a long workload: 5 % below the reported capacity the SLO holds
    (the capacity is right to the test's tolerance) and 1.5 times it the SLO fails; every
    probe stayed below the service rate."""
    cap = mix_capacity(200)
    spec = PlanSpec(LLAMA8, WorkloadSpec(num_requests=200, **MIX), SLO)  # type: ignore[arg-type]
    dep = deployment_for(spec, Candidate("h100_sxm", 1))
    long = spec.workload.draw(40000)

    def attainment(rate: float) -> float:
        return simulate(dep, long.scaled_to_rate(rate)).summary(SLO)["slo_attainment"]

    assert attainment(cap.rate_per_s / 1.05) >= 0.9
    assert attainment(1.5 * cap.rate_per_s) < 0.5
    assert all(p.rate_per_s < cap.saturation_rate_per_s for p in cap.probes)


def test_a_short_workload_no_longer_verifies_an_undersized_fleet(tmp_path: object) -> None:
    """The issue's case: 100 requests at 100 req/s sized one H100 'verified at 95 %' where a
    direct simulation gave 6 %. Now the capacity is a steady state and the fleet check runs
    long enough to see a queue grow."""
    spec = PlanSpec(LLAMA8, WorkloadSpec("azure_conv", 100), SLO, 0.9, rate_per_s=100.0)
    space = SearchSpace(devices=("h100_sxm",), tp=(1,), engines=("vllm",), batching=((256, 8192),))
    res = run_plan(spec, space, tmp_path, workers=1, quiet=True)  # type: ignore[arg-type]
    (row,) = res.feasible
    assert 17.0 < row["capacity_req_per_s"] < 21.0  # not 518 req/s
    assert row["probe_requests"] > 1000 and "too few" in res.notes[0]
    sized = res.cheapest
    assert sized is not None and sized.replicas >= 5
    # The fleet's check spans warm-up, window and drain (4 R of arrivals; the old one was 1 s).
    assert sized.requests >= 100.0 * 4 * row["residence_s"] > 4000
    long = spec.workload.draw(20000).scaled_to_rate(100.0)

    def attainment(replicas: int) -> float:
        dep = deployment_for(spec, sized.candidate, replicas)
        return simulate(dep, long, router="least_loaded").summary(SLO)["slo_attainment"]

    assert attainment(sized.replicas) >= 0.9
    assert attainment(1) < 0.1  # what used to be "verified"
