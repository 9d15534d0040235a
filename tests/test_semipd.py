"""Intra-GPU prefill/decode partition (semi-PD, Nexus): concurrent lanes on one GPU."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from properties_lib import build, case_of, check_result, run_case, with_kv_tokens

from servesim.errors import ServesimError
from servesim.planner import placement
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.sim.cluster import Cluster
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import ItlHistogram, Slo
from servesim.sim.pool import build_pool, prepare
from servesim.sim.router import Router
from servesim.sim.semipd import INTERFERENCE, SemiPDController, SemiPDDeployment, lane_device
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import LogNormal, synthetic
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.model import load_model

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
        _GOODPUT[key] = placement.capacity(dep, workload(), SLO, 0.9, 0.03).per_gpu_rate_per_s
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


# ---- regressions: lanes sharing a tight cache (issue 9, lost requests) ------------------------


def _lanes(**fields) -> dict:
    """A semi-PD case (tests/properties_lib.py) with a fixed split unless one is given."""
    fields.setdefault("semipd", {"share": 0.5, "controller": False})
    for k, v in (("interval_s", 0.5), ("window_s", 1.0), ("ttft_s", 1.0), ("tpot_s", 0.1)):
        fields["semipd"].setdefault(k, v)
    return case_of(kind="semipd", **fields)


REGRESSIONS = {
    # A lane waiting for room was woken only if it had queued prompts, not a started one: a
    # prompt whose next chunk did not fit while the decode lane held the blocks never resumed.
    "a started prompt waits for the other lane": _lanes(
        model="facebook/opt-13b",
        engine="sglang",
        max_num_seqs=32,
        max_num_batched_tokens=17,
        kv_factor=2.0,
        semipd={"share": 0.3, "controller": False},
        prompts=[62, 175, 64, 90, 9, 196],
        outputs=[156, 397, 134, 170, 364, 315],
    ),
    # Making room preempted every decode of the decode lane inside `_start_mixed`; the
    # scheduler then started a decode stretch with none left (IndexError).
    "making room empties the decode lane": _lanes(
        device="l40s",
        replicas=3,
        chunked_prefill=True,
        kv_factor=1.0,
        router="session",
        semipd={"share": 0.5, "controller": True, "ttft_s": 0.001, "tpot_s": 0.1},
        prompts=[1330, 2153, 2197],
        outputs=[338, 262, 363],
        priorities=[1, 1, 0],
    ),
    # Each lane held part of a prompt (the decode lane recomputes the prompts it preempted) and
    # neither could take its next chunk: the decode lane's now gives way.
    "both lanes hold half a prompt": _lanes(
        model="openai/gpt-oss-20b",
        device="a100_sxm",
        engine="trtllm",
        replicas=2,
        max_num_seqs=27,
        max_num_batched_tokens=270,
        chunked_prefill=True,
        kv_factor=1.0,
        policy={"name": "laps", "laps_threshold_tokens": 1},
        router="least_kv",
        semipd={"share": 0.95, "controller": False},
        prompts=[704] * 5,
        outputs=[392] * 5,
        priorities=[2, 1, 1, 1, 1],
    ),
    # Under slack, a waiting prompt sorted before started ones it could not start beside.
    "a slack queue on a cache for one prompt": _lanes(
        model="Qwen/Qwen3-30B-A3B",
        device="a100_sxm",
        tp=4,
        engine="sglang",
        replicas=2,
        max_num_seqs=28,
        max_num_batched_tokens=61,
        chunked_prefill=True,
        kv_factor=1.0,
        policy={
            "name": "slack",
            "class_slos": [(2.0, 0.05, None), (0.05, 0.005, 30.0)],
            "estimator": ("trace", 0.5, 0.5, False),
        },
        semipd={"share": 0.5, "controller": True, "window_s": 0.1, "tpot_s": 0.02},
        prompts=[258] * 3,
        outputs=[8] * 3,
        priorities=[2, 0, 0],
    ),
    # On a cache of one page the decode lane swapped its request out and, with the room it
    # asked for (a page per running sequence besides the request's own), never took it back.
    "a cache of one page swaps a request out and back": _lanes(
        device="a100_sxm",
        engine="trtllm",
        kv_tokens=32,
        policy={"name": "priority", "preemption": "swap"},
        prompts=[4] * 6,
        outputs=[8] * 6,
        priorities=[0, 1, 2, 0, 1, 2],
    ),
    # A finished prompt's blocks pass to the decode lane in place; releasing them first let the
    # idle prefill lane admit its next prompt on its old allowance, which still counted those
    # blocks as free, so the two lanes held more than the cache (time-mean KV use 1.01; fuzz
    # seed 5, example 144). run_case checks KV use ≤ 1.
    "a hand-over does not free the blocks it passes on": _lanes(
        model="Qwen/Qwen3-8B",
        device="a100_sxm",
        tp=2,
        max_num_seqs=64,
        max_num_batched_tokens=538,
        chunked_prefill=True,
        kv_factor=2.0,
        semipd={"share": 0.95, "controller": False},
        prompts=[199] * 25,
        outputs=[42] * 25,
    ),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_lanes_on_a_tight_shared_cache_serve_every_request(name: str) -> None:
    """Regression (found by scripts/fuzz.py; each lost requests or raised before): two lanes
    sharing a cache that holds one or two requests serve every request, each once with all its
    tokens (run_case checks), within the wall-clock guard."""
    assert run_case(REGRESSIONS[name], limit_s=10.0) is None


def test_two_lanes_woken_together_never_hold_more_than_their_cache() -> None:
    """Regression: when both lanes of a replica waited for room and were woken in one pass,
    the second was given the room the first had just taken (its share was computed before),
    so together they could hold more than the cache. Each lane's share is now recomputed after
    the other starts. Here each lane has a 600-token prompt queued on a 1,000-token cache."""
    req = prepare(Workload(np.zeros(2), np.full(2, 600), np.full(2, 10)), None, "round_robin")
    base = with_kv_tokens(Deployment(LLAMA8, H100), 1000)
    itl = ItlHistogram()
    (p,), _ = build_pool(base, req, itl, role="prefill")
    (d,), _ = build_pool(base, req, itl, role="decode")
    for lane, gid in ((p, 0), (d, 1)):  # queued while idle (the decode lane recomputes prompts)
        lane.waiting.append(req.table.admit(gid, 0.0))
        lane.queued_tokens += 600
    Cluster(req.table, [p], Router("round_robin"), decode=[d], pairs=[(p, d)])
    assert p.next_t < np.inf  # the prefill lane started its prompt
    assert p.fixed_blocks + d.fixed_blocks <= p.cfg.kv_blocks, (p.fixed_blocks, d.fixed_blocks)


def test_a_lane_giving_way_lets_go_of_its_reservation_to_completion() -> None:
    """Regression (found by scripts/fuzz.py, seed 5151, example 298: "request 22 needs more KV
    blocks than the replica has"): TensorRT-LLM reserves a request's final blocks when it admits
    it. A semi-PD lane that gave a half-done prefill back to the queue, so that its partner
    could have the shared cache, kept that reservation; the lane, empty, then refused every
    request as larger than its cache. Tight cache (the longest request plus one page), 13-token
    chunks, 24 requests at once: every one is now served."""
    semipd = {"share": 0.95, "controller": False}
    semipd.update(interval_s=0.05, window_s=0.1, ttft_s=0.05, tpot_s=0.1)
    prompts = [101, 118, 278, 281, 74, 244, 272, 74, 148, 53, 130, 226]
    prompts += [89, 274, 186, 252, 65, 1, 160, 79, 155, 198, 175, 146]
    outputs = [8, 5, 51, 23, 25, 32, 60, 51, 27, 59, 26, 44]
    outputs += [43, 53, 51, 39, 32, 8, 42, 7, 13, 54, 58, 25]
    case = case_of(
        kind="semipd",
        model="Qwen/Qwen3-8B",
        device="a100_sxm",
        tp=2,
        engine="trtllm",
        overlap=False,
        max_num_batched_tokens=13,
        chunked_prefill=True,
        kv_factor=1.0,
        prefix_caching=False,
        router="power_of_two",
        semipd=semipd,
        prompts=prompts,
        outputs=outputs,
        arrivals=[0.0] * 24,
    )
    assert run_case(case, limit_s=20.0) is None


def _shared_prefix_case(kv_tokens: int) -> dict:
    """Eight 1,088-token prompts that share a 1,024-token prefix (16 hash blocks of 64), 32
    output tokens each: the first alone at t = 0, the other seven at 0.5 s, when its prefix is
    cached. SGLang semi-PD (prefix caching on by default), an even split."""
    n = 8
    semipd = {"share": 0.5, "controller": False, "interval_s": 0.5, "window_s": 1.0}
    semipd.update(ttft_s=0.05, tpot_s=0.1)
    return case_of(
        kind="semipd",
        model="Qwen/Qwen3-8B",
        engine="sglang",
        kv_tokens=kv_tokens,
        prefix={"block_tokens": 64, "hashes": [[*range(16), 1000 + i] for i in range(n)]},
        prompts=[1088] * n,
        outputs=[32] * n,
        arrivals=[0.0] + [0.5] * (n - 1),
        semipd=semipd,
    )


def test_a_handed_over_prompt_reads_its_shared_prefix_where_the_prefill_lane_keeps_it() -> None:
    """Regression (scripts/fuzz.py, seed 22, examples 1759 and 5599: mean KV use 1.55): the
    decode lane counted every handed-over prompt whole, so prompts sharing a prefix held it
    once per request. The shared blocks now stay pinned in the prefill lane's cache, counted
    once, until the request leaves the decode lane. The eight requests need 1,024 + 8 × (64 +
    32) = 1,792 tokens: a 2,600-token cache holds them all without a preemption (counted whole,
    8 × 1,120 = 8,960 tokens, five were preempted). A 1,500-token cache cannot hold them, and
    its preemptions hand the prefix back: KV use stays at most 1 throughout."""
    dep, work, closed = build(_shared_prefix_case(2600))
    res = simulate(dep, work, closed, "round_robin")
    check_result(res, work, closed)
    summary = res.summary()
    assert summary["prefix_hit_rate"] == pytest.approx(7 * 1024 / (8 * 1088))
    assert summary["preemptions"] == 0
    assert res.columns()["preemptions"].sum() == 0
    dep, work, closed = build(_shared_prefix_case(1500))
    res = simulate(dep, work, closed, "round_robin")
    check_result(res, work, closed)  # finishes every request, KV use ≤ 1
    assert res.summary()["preemptions"] > 0


def test_the_controller_reads_the_same_live_rows_as_a_mid_run_observer(monkeypatch) -> None:
    """`RequestTable.live_timing` (the four columns the controller polls at every tick) holds
    exactly the arrival, first-token and finish times and generated tokens that
    `live_columns` gives for the requests in flight; ticks within half a window of a change
    skip the poll, and the controller still decides as it did when every tick polled (one
    move, 0.3 → 0.4 of the SMs: the run before the skip, e84f188^, gives the same)."""
    from servesim.sim import semipd

    seen: list[int] = []
    real = semipd._PartitionController.attainment

    def checked(self, cluster, t, since):  # type: ignore[no-untyped-def]
        live = cluster.table.live_columns()
        keys = ("arrival_s", "first_token_s", "finish_s", "generated_tokens")
        want = np.stack([live[k].astype(np.float64) for k in keys])
        np.testing.assert_array_equal(cluster.table.live_timing(), want)
        seen.append(want.shape[1])
        return real(self, cluster, t, since)

    monkeypatch.setattr(semipd._PartitionController, "attainment", checked)
    dep = SemiPDDeployment(Deployment(LLAMA8, H100), 0.3, SemiPDController(SLO))
    res = simulate(dep, workload())
    assert seen and max(seen) > 0  # it polled, and saw requests in flight
    assert res.extra["prefill_share_changes"] == 1
    assert res.extra["prefill_share_final"] == pytest.approx(0.4)
