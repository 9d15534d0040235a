"""Scheduling policies on one replica, each against FCFS on a mix of short and long prompts in
two SLO classes: priority with preemption (recompute or swap), deadline/slack-aware with noisy
length estimates, length-aware dual queues, and preemptible prefill."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from servesim.devices import get_device
from servesim.errors import ServesimError
from servesim.model import load_model
from servesim.policies import ClassSlo, LengthEstimator, LengthModel, Policy
from servesim.simulator import Deployment, SimResult, simulate
from servesim.workload import LogNormal, Workload, gamma_arrivals

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
# Class 0 is interactive (TTFT 1 s, TPOT 50 ms); class 1 wants its whole reply within 60 s.
SLOS = (ClassSlo(1.0, 0.05), ClassSlo(10.0, 0.1, 60.0))


@cache
def mixed(rate: float, long_share: float = 0.4) -> Workload:
    """1,500 requests, gamma arrivals (CV 1.5); 40% long prompts (median 6k tokens), the rest
    short (median 300); outputs median 150 (p90 600); the SLO class (`priority`) is a coin
    flip, independent of length."""
    rng = np.random.default_rng(0)
    n = 1500
    long = rng.random(n) < long_share
    prompt = np.where(
        long,
        LogNormal(6000, 10000, max_tokens=12000).sample(n, rng),
        LogNormal(300, 800, max_tokens=2000).sample(n, rng),
    )
    out = LogNormal(150, 600, max_tokens=2000).sample(n, rng)
    cls = (rng.random(n) < 0.5).astype(np.int64)
    return Workload(gamma_arrivals(n, rate, 1.5, rng), prompt, out, priority=cls)


def attainment(res: SimResult) -> tuple[float, float, float]:
    """Share of each class (and of all requests) meeting its class's SLO."""
    c = res.columns()
    cls = c["priority"]
    ok0 = (c["ttft_s"] <= SLOS[0].ttft_s) & (c["tpot_s"] <= SLOS[0].tpot_s)
    ok1 = c["e2e_s"] <= SLOS[1].e2e_s
    ok = np.where(cls == 0, ok0, ok1)
    return float(ok[cls == 0].mean()), float(ok[cls == 1].mean()), float(ok.mean())


@cache
def run(policy: Policy | None, rate: float, seqs: int = 16, long_share: float = 0.4) -> SimResult:
    """A replica capped at `seqs` running sequences (a busy engine), under `policy`."""
    dep = Deployment(LLAMA8, H100, policy=policy, max_num_seqs=seqs)
    return simulate(dep, mixed(rate, long_share))


def test_priority_preemption_serves_the_urgent_class_at_the_others_expense() -> None:
    """Claim (vLLM priority scheduling): ordering the queue by class and preempting lower
    classes lifts the interactive class's SLO attainment over FCFS; the relaxed class pays."""
    fcfs = attainment(run(None, 4.0))
    prio = attainment(run(Policy("priority"), 4.0))
    heavy_fcfs, heavy_prio = attainment(run(None, 6.0)), attainment(run(Policy("priority"), 6.0))
    seen = {"fcfs": fcfs, "priority": prio, "fcfs 6/s": heavy_fcfs, "priority 6/s": heavy_prio}
    assert prio[0] > fcfs[0] + 0.2 and prio[0] > 0.95, seen
    assert run(Policy("priority"), 4.0).summary()["preemptions"] > 0
    assert heavy_prio[0] > heavy_fcfs[0] + 0.5 and heavy_prio[1] < heavy_fcfs[1] - 0.3, seen


def test_swap_pays_pcie_per_copy_unless_pages_are_grouped() -> None:
    """Claim (FastSwitch): preempting by swapping the KV cache to host memory avoids
    recomputation, but copying it page by page (vLLM's 16-token blocks, one copy per page per
    layer for K and V) makes the PCIe time dominate and stalls everyone; grouping pages into
    large copies cuts that time by an order of magnitude and swap then serves the urgent class
    as well as recompute does."""
    recompute = run(Policy("priority"), 4.0)
    paged = run(Policy("priority", preemption="swap"), 4.0)
    grouped = run(Policy("priority", preemption="swap", swap_group_blocks=64), 4.0)
    s_p, s_g = paged.summary(), grouped.summary()
    per_swap = (s_p["swap_s"] / s_p["swaps"], s_g["swap_s"] / s_g["swaps"])
    seen = {
        "recompute": attainment(recompute),
        "swap per page": (attainment(paged), s_p["swaps"], s_p["swap_s"]),
        "swap grouped": (attainment(grouped), s_g["swaps"], s_g["swap_s"]),
    }
    assert per_swap[0] > 10 * per_swap[1], (per_swap, seen)
    assert attainment(paged)[0] < attainment(recompute)[0] - 0.05, seen
    assert attainment(grouped)[0] >= attainment(recompute)[0] - 0.01, seen
    assert s_g["preemptions"] >= s_g["swaps"] > 0, seen


def test_slack_aware_scheduling_raises_goodput_even_with_noisy_lengths() -> None:
    """Claim (JITServe): scheduling each request just in time for its SLO from imprecise,
    progressively refined output-length estimates serves more requests within their SLOs than
    FCFS and than class priority, which ignores how much slack each request has. Noisy
    estimates (log-error σ = 1, the spread CASTILLO measures for one prompt's lengths) cost a
    little against an oracle, and refining them as tokens arrive wins some of it back."""
    rate = 6.0
    est = LengthEstimator("noisy", error=1.0, quantile=0.9)
    unrefined = LengthEstimator("noisy", error=1.0, quantile=0.9, refine=False)
    got = {
        "fcfs": attainment(run(None, rate))[2],
        "priority": attainment(run(Policy("priority"), rate))[2],
        "slack oracle": attainment(run(Policy("slack", class_slos=SLOS), rate))[2],
        "slack noisy": attainment(run(Policy("slack", class_slos=SLOS, estimator=est), rate))[2],
        "slack noisy, unrefined": attainment(
            run(Policy("slack", class_slos=SLOS, estimator=unrefined), rate)
        )[2],
        "slack trace": attainment(
            run(Policy("slack", class_slos=SLOS, estimator=LengthEstimator("trace")), rate)
        )[2],
    }
    assert got["slack noisy"] > got["priority"] + 0.05 > got["fcfs"] + 0.1, got
    assert got["slack oracle"] >= got["slack noisy"] >= got["slack noisy, unrefined"], got
    assert got["slack trace"] > got["priority"], got


def test_length_aware_queues_cut_short_prompts_ttft_and_change_nothing_without_long_ones() -> None:
    """Claim (LAPS): serving short prompts from their own queue first, never batched with long
    prefills, removes the head-of-line blocking long prompts cause, so short requests' TTFT
    falls sharply; when every prompt is short the two queues are one and nothing changes."""
    laps = Policy("laps", laps_threshold_tokens=2048)
    fcfs_res, laps_res = run(None, 4.0), run(laps, 4.0)
    short = mixed(4.0).prompt_tokens <= 2048
    ttft = {
        "fcfs": float(np.nanmean(fcfs_res.columns()["ttft_s"][short])),
        "laps": float(np.nanmean(laps_res.columns()["ttft_s"][short])),
    }
    assert ttft["laps"] < ttft["fcfs"] / 3, ttft
    assert attainment(laps_res)[2] > attainment(fcfs_res)[2], (ttft, attainment(laps_res))
    a = run(None, 4.0, long_share=0.0).columns()["finish_s"]
    b = run(laps, 4.0, long_share=0.0).columns()["finish_s"]
    assert np.allclose(a, b), "LAPS changed an all-short workload"


@cache
def prefill_only(rate: float, policy: Policy | None, **batching: object) -> tuple[float, ...]:
    """A prefill instance (one output token) fed 30% long prompts (8-16k tokens, TTFT target
    3 s) and 70% short ones (median 400, TTFT target 100 ms); returns the share of short,
    long and all requests meeting their target, and the busy seconds."""
    rng = np.random.default_rng(0)
    n = 2000
    long = rng.random(n) < 0.3
    prompt = np.where(
        long, rng.integers(8000, 16000, n), LogNormal(400, 1000, max_tokens=2000).sample(n, rng)
    )
    cls = long.astype(np.int64)
    w = Workload(gamma_arrivals(n, rate, 1.5, rng), prompt, np.ones(n, np.int64), priority=cls)
    res = simulate(Deployment(LLAMA8, H100, policy=policy, **batching), w)  # type: ignore[arg-type]
    c = res.columns()
    ok = c["ttft_s"] <= np.where(cls == 0, 0.1, 3.0)
    busy = sum(r["busy_s"] for r in res.replica_stats)
    return float(ok[cls == 0].mean()), float(ok[cls == 1].mean()), float(ok.mean()), busy


def test_preemptible_prefill_gets_responsiveness_without_small_chunks() -> None:
    """Claim (FlowPrefill): stopping a long prefill at the next operator boundary when an
    urgent prompt arrives gives short prompts their TTFT without the small chunks that chunked
    prefill needs for the same responsiveness, whose lost efficiency then costs the long
    prompts; whole-prompt batches without preemption block short prompts behind long ones."""
    prio = Policy("priority")
    flow = Policy("priority", prefill_preemption=True)
    got = {
        "fcfs whole prompts": prefill_only(8.0, None, chunked_prefill=False),
        "priority whole prompts": prefill_only(8.0, prio, chunked_prefill=False),
        "priority chunks 512": prefill_only(8.0, prio, max_num_batched_tokens=512),
        "priority chunks 2048": prefill_only(8.0, prio, max_num_batched_tokens=2048),
        "flowprefill": prefill_only(8.0, flow, chunked_prefill=False),
    }
    best_other = max(v[2] for k, v in got.items() if k != "flowprefill")
    assert got["flowprefill"][2] > best_other + 0.05, got
    assert got["flowprefill"][0] > 0.99, got
    assert got["priority chunks 512"][3] > 1.1 * got["flowprefill"][3], got  # chunking's cost
    assert got["priority whole prompts"][0] < 0.5, got  # head-of-line blocking


def test_length_estimates_oracle_trace_and_noisy_with_refinement() -> None:
    """Claim: the oracle knows the remaining length; a trace-wide estimate is the same for
    everyone and conditions on the tokens already out; a noisy per-request estimate centres on
    the truth with the stated error and never predicts fewer tokens than already produced."""
    true = [100, 200, 400, 800] * 250
    oracle = LengthModel(LengthEstimator("oracle"), true)
    assert oracle.remaining(2, 150) == 250
    trace = LengthModel(LengthEstimator("trace", quantile=0.5), true)
    assert trace.predicted(0) == trace.predicted(3) == 200  # the population median (lower)
    assert trace.remaining(0, 500) == 300  # only 800-token replies are longer than 500
    noisy = LengthModel(LengthEstimator("noisy", error=0.5, seed=1), true)
    pred = np.array([noisy.predicted(i) for i in range(len(true))])
    log_err = np.log(pred / np.array(true))
    assert abs(log_err.mean()) < 0.05 and log_err.std() == pytest.approx(0.5, rel=0.1)
    assert all(noisy.remaining(i, 900) >= 1 for i in range(20))
    refined = [noisy.remaining(i, 300) + 300 for i in range(0, 1000, 4)]  # true 100, gen 300
    assert min(refined) > 300
    with pytest.raises(ServesimError, match="class_slos"):
        Policy("slack")
    with pytest.raises(ServesimError, match="urgency order"):
        Policy("fcfs", prefill_preemption=True)
    with pytest.raises(ServesimError, match="unknown"):
        Policy("lottery")
