"""Energy: per-iteration power between idle and max by utilisation, summed into every run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import Fixed, synthetic
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


def test_a_lone_request_costs_the_energy_of_its_iterations() -> None:
    """Claim: a run's energy is Σ over iterations of devices·(P_idle·t + (P_max − P_idle)·work)
    plus idle power over the gaps, where work is the iteration's FLOPs at peak plus its HBM
    bytes at full bandwidth (weighted); checked by hand for one request."""
    dep = Deployment(LLAMA8, H100)
    pred = dep.predictor()
    res = simulate(dep, Workload(np.array([0.0]), np.array([1000]), np.array([50])))
    end = float(res.columns()["finish_s"][0])
    work = pred.step_work_s(0, 0, ((1000, 0),))
    work += sum(pred.step_work_s(1, 1000 + j, ()) for j in range(1, 50))
    expected = H100.idle_power_w * end + (H100.max_power_w - H100.idle_power_w) * work
    got = res.summary()["energy_j"]
    assert got == pytest.approx(expected, rel=1e-6), (got, expected)


def test_a_run_counts_from_its_first_arrival() -> None:
    """A lone request arriving at 5 s costs what the same request arriving at 0 does: idle
    power, rent and the time means count from the first arrival, as the duration does (the
    energy once took 5 s of idle power more and its mean power, 1,186 W, exceeded the H100's
    700 W)."""
    keys = ("energy_j", "mean_power_w", "cost_usd", "mean_batch_size", "mean_kv_use")
    runs = [
        simulate(
            Deployment(LLAMA8, H100), Workload(np.array([t]), np.array([1000]), np.array([50]))
        )
        for t in (0.0, 5.0)
    ]
    at0, at5 = (r.summary() for r in runs)
    for key in keys:
        assert at5[key] == pytest.approx(at0[key], rel=1e-9), key
    assert at5["mean_power_w"] <= H100.max_power_w


def test_a_decode_steps_work_is_its_flops_at_peak_plus_half_its_bytes_at_bandwidth() -> None:
    """The `work` of the energy claim above, by hand: one Llama-3.1-8B sequence decoding at
    1,000 tokens of context on an H100 reads every bf16 weight but the input embedding table
    (one row of it) and its KV cache, and does 2 FLOPs a weight; the bytes count at
    MEM_POWER_SHARE = 0.5 (memory-bound decode draws about half the idle-to-TDP range)."""
    from servesim.predictor.iteration import MEM_POWER_SHARE

    assert MEM_POWER_SHARE == 0.5
    weights = LLAMA8.num_params() - LLAMA8.vocab_size * LLAMA8.hidden_size  # no embedding read
    nbytes = 2.0 * weights + 1000 * LLAMA8.kv_bytes_per_token()
    hand = 2.0 * weights / H100.peak_flops_per_s["bf16"] + 0.5 * nbytes / H100.mem_bw_bytes_per_s
    for latency_model in ("roofline", "auto"):  # the same work whatever prices the time
        pred = Deployment(LLAMA8, H100, latency_model=latency_model).predictor()
        assert pred.step_work_s(1, 1000, ()) == pytest.approx(hand, rel=0.01)


def test_power_rises_with_utilisation_and_prefill_draws_more_than_decode() -> None:
    """Claim (Splitwise, ISCA'24): the prompt phase runs near TDP while the memory-bound token
    phase draws markedly less; every iteration stays between idle and max power."""
    pred = Deployment(LLAMA8, H100).predictor()
    watts = {}
    for name, b in {
        "prefill 4096": BatchShape(prefill=((4096, 0),)),
        "decode 1": BatchShape(1, 1000),
        "decode 64": BatchShape(64, 64 * 1000),
        "decode 256": BatchShape(256, 256 * 2000),
    }.items():
        cost = pred.iteration(b)
        watts[name] = cost.joules / cost.seconds
    assert all(H100.idle_power_w <= w <= H100.max_power_w for w in watts.values()), watts
    assert watts["prefill 4096"] > 1.25 * watts["decode 64"], watts
    assert watts["decode 1"] < watts["decode 64"] < watts["decode 256"], watts


def test_batching_raises_tokens_per_joule_so_the_planner_can_rank_by_it() -> None:
    """Claim: idle power and weight reads are shared by the batch, so serving more concurrent
    requests on the same GPU gives more output tokens per joule (until latency limits)."""
    per_joule = {}
    for rate in (0.5, 4.0, 16.0):
        w = synthetic(300, rate, Fixed(512), Fixed(256), seed=1)
        s = simulate(Deployment(LLAMA8, H100), w).summary()
        per_joule[rate] = s["output_tokens_per_joule"]
        assert s["joules_per_output_token"] == pytest.approx(1.0 / per_joule[rate], rel=1e-9)
        assert H100.idle_power_w <= s["mean_power_w"] <= H100.max_power_w, s["mean_power_w"]
    assert per_joule[0.5] < per_joule[4.0] < per_joule[16.0], per_joule


def test_pipeline_virtual_engines_count_idle_power_once() -> None:
    """Claim: a PP=2 replica has two virtual engines but its devices idle only once."""
    w = Workload(np.array([0.0]), np.array([10]), np.array([2]))
    dep = Deployment(LLAMA8, H100, parallel=replace(Deployment(LLAMA8, H100).parallel, pp=2))
    res = simulate(dep, w)
    end = max(r["provisioned_s"] for r in res.replica_stats)
    idle = 2 * H100.idle_power_w * end  # two devices, idle for the whole run
    energy = res.summary()["energy_j"]
    assert idle < energy < idle + 2 * (H100.max_power_w - H100.idle_power_w) * end, (idle, energy)
