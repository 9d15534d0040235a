"""Intra-GPU prefill/decode partition (semi-PD, Nexus): concurrent lanes on one GPU."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from servesim import disagg as D
from servesim.devices import get_device
from servesim.errors import ServesimError
from servesim.metrics import Slo
from servesim.model import load_model
from servesim.predictor import BatchShape, Predictor
from servesim.semipd import INTERFERENCE, SemiPDController, SemiPDDeployment, lane_device
from servesim.simulator import Deployment, simulate
from servesim.workload import LogNormal, Workload, synthetic

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
SLO = Slo(1.0, 0.015)  # a tight TPOT for an 8B model on an H100


@cache
def workload() -> Workload:
    """Prompt-heavy: prompts of median 2,000 tokens (p90 5,000), outputs of median 200."""
    return synthetic(
        800,
        1.0,
        LogNormal(2000, 5000, max_tokens=10000),
        LogNormal(200, 500, max_tokens=1200),
        seed=4,
    )


_GOODPUT: dict[str, float] = {}


def goodput(dep: Deployment | SemiPDDeployment) -> float:
    """Requests per second per GPU with 90% of requests meeting each target (memoised)."""
    key = dep.label()
    if key not in _GOODPUT:
        _GOODPUT[key] = D.capacity(dep, workload(), SLO, 0.9, 0.03).per_gpu_rate_per_s
    return _GOODPUT[key]


def test_a_lane_gets_its_share_of_compute_and_most_of_the_bandwidth() -> None:
    """Claim: a lane on a share s of the SMs runs compute-bound prefill about 1/s slower, while
    memory-bound decode keeps most of its speed once s reaches about half the SMs (semi-PD and
    Nexus rest on this asymmetry)."""
    full = Deployment(LLAMA8, H100).predictor()
    half = Predictor(LLAMA8, lane_device(H100, 0.5), power_device=H100)
    prefill = BatchShape(prefill=((4096, 0),))
    decode = BatchShape(32, 32 * 2000)
    slow_prefill = half.iteration(prefill).seconds / full.iteration(prefill).seconds
    slow_decode = half.iteration(decode).seconds / full.iteration(decode).seconds
    assert 1.7 < slow_prefill < 2.1, slow_prefill
    assert slow_decode < 1.0 / (1.0 - INTERFERENCE) + 0.05, slow_decode
    lane = lane_device(H100, 0.3)
    assert lane.mem_bw_bytes_per_s == pytest.approx(H100.mem_bw_bytes_per_s * 0.6 * 0.85)


def test_partitioned_gpu_beats_chunked_prefill_at_a_tight_tpot() -> None:
    """Claim (semi-PD §7, Nexus): running prefill and decode concurrently on separate SM shares
    of one GPU, with one copy of the weights and one KV cache, serves more requests per second
    within tight TTFT/TPOT targets than the same GPU colocating them with chunked prefill,
    whatever the chunk budget, because decode steps are no longer stretched by prefill chunks
    and no KV moves."""
    coloc = {
        b: goodput(Deployment(LLAMA8, H100, max_num_batched_tokens=b))
        for b in (256, 512, 2048, 8192)
    }
    semi = goodput(SemiPDDeployment(Deployment(LLAMA8, H100), 0.5))
    assert semi > 1.1 * max(coloc.values()), (semi, coloc)
    res = simulate(SemiPDDeployment(Deployment(LLAMA8, H100), 0.5), workload())
    assert "kv_transfers" not in res.summary()  # unified storage: ownership moves, bytes do not
    assert (res.columns()["finish_s"] > 0).all()


def test_the_slo_controller_recovers_from_a_poor_split() -> None:
    """Claim (semi-PD §5, dynamic partitioning): starting from a split that starves one phase,
    moving SMs towards the phase that misses its target while the other meets its own
    recovers most of the best fixed split's goodput; the poor fixed splits get far less."""
    best = goodput(SemiPDDeployment(Deployment(LLAMA8, H100), 0.5))
    got = {}
    for start in (0.3, 0.7):
        fixed = goodput(SemiPDDeployment(Deployment(LLAMA8, H100), start))
        adaptive = goodput(SemiPDDeployment(Deployment(LLAMA8, H100), start, SemiPDController(SLO)))
        got[start] = (fixed, adaptive)
        assert fixed < 0.6 * best and adaptive > 0.9 * best, (best, got)


def test_controller_moves_the_split_and_bad_inputs_are_refused() -> None:
    """Claim: a starved prefill lane makes the controller give it SMs; shares are checked."""
    dep = SemiPDDeployment(Deployment(LLAMA8, H100), 0.3, SemiPDController(SLO))
    s = simulate(dep, workload().scaled_to_rate(5.0)).summary()
    assert s["prefill_share_final"] > 0.3 and s["prefill_share_changes"] >= 1, s
    with pytest.raises(ServesimError, match="prefill_share"):
        SemiPDDeployment(Deployment(LLAMA8, H100), 1.0)
    with pytest.raises(ServesimError, match="min_share"):
        SemiPDController(SLO, min_share=0.9, max_share=0.5)
    assert np.isfinite(s["energy_j"]) and s["devices"] == 1
