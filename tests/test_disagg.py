"""Prefill/decode disaggregation (DistServe, Splitwise) and the DistServe placement reproduction."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from properties_lib import case_of, run_case

from servesim.errors import ServesimError
from servesim.planner import placement
from servesim.predictor.iteration import BatchShape
from servesim.sim import disagg as D
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import Slo
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import LogNormal, sharegpt_distserve, synthetic
from servesim.sim.transfer import Link, Network, link_for
from servesim.sim.workload import Workload
from servesim.spec.devices import Device, get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
# DistServe's path, an ideal frontend: no request overhead, the prefill pool streams the
# first token, the decode takes the KV without a hand-off.
DISTSERVE_PATH = dict(
    request_overhead_s=0.0,
    tokenize_s_per_token=0.0,
    disagg_first_token="prefill",
    disagg_handoff_s=0.0,
    disagg_handoff_tokenizes=False,
    disagg_pull_at_pass=False,
)
IDEAL = get_engine("vllm").with_overrides(**DISTSERVE_PATH)


# ---- the mechanism ---------------------------------------------------------------------------


def test_a_lone_request_pays_prefill_then_transfer_then_decode() -> None:
    """Claim: with an ideal frontend that streams the prefill's token (no request overhead, the
    first token from the prefill pool), TTFT is the prefill on the prefill replica; the KV cache
    then crosses the link (bytes / bandwidth + latency) before the decode replica's first step,
    so the transfer shows in the time per output token, not in TTFT. (What each engine's real
    path adds is in test_disagg_ttft.py.)"""
    pool = Deployment(LLAMA8, H100, engine=IDEAL)
    dep = D.DisaggDeployment(pool, pool, "infiniband")
    res = simulate(dep, Workload(np.array([0.0]), np.array([4000]), np.array([11])))
    cols, s = res.columns(), res.summary()
    pred = Deployment(LLAMA8, H100).predictor()
    prefill = pred.iteration(BatchShape(prefill=((4000, 0),))).seconds
    link = link_for("infiniband", H100)
    transfer = link.seconds(LLAMA8.kv_bytes(4000))
    steps = sum(pred.iteration(BatchShape(1, 4000 + j)).seconds for j in range(1, 11))
    assert cols["ttft_s"][0] == pytest.approx(prefill, rel=1e-9)
    assert s["kv_transfer_s_mean"] == pytest.approx(transfer, rel=1e-6)
    assert cols["e2e_s"][0] == pytest.approx(prefill + transfer + steps, rel=1e-9)
    assert cols["replica"][0] == 1  # finished on the decode replica
    assert s["kv_transfer_gb"] == pytest.approx(LLAMA8.kv_bytes(4000) / 1e9)


def test_each_decode_rank_receives_its_own_copy_of_what_it_holds() -> None:
    """Claim: the bytes a request's transfer moves are what the decode ranks it lands on hold,
    summed. DeepSeek-R1's MLA latent cache is whole on every attention-TP rank: into TP 8,
    8 copies of 61 × 576 fp8 bytes a token; with attention DP (one rank a request) one copy.
    Llama-3.1-8B's 8 KV heads split over TP 8 (one copy in all) and two ranks share each
    head at TP 16 (two copies). Qwen3.5-397B's recurrent state moves too, once (its 64 v heads
    split over TP 4): per sequence 45 Gated DeltaNet layers × (64 × 128 × 128 fp32 + 3 conv
    rows of 12,288 bf16), beside 15 full-attention layers × 2 × 2 heads × 256 bf16 a token,
    of which TP 4 holds two copies (2 KV heads)."""
    link = link_for("infiniband", H100)
    r1 = load_model("deepseek-ai/DeepSeek-R1").with_dtypes(kv="fp8")
    per_token = 61 * (512 + 64) * 1
    assert r1.kv_bytes_per_token() == per_token
    tep8 = D.KvPath.for_model(link, r1, par=Parallel(tp=8, ep=8))
    dep8 = D.KvPath.for_model(link, r1, par=Parallel(tp=1, dp=8, ep=8))
    assert tep8.kv_bytes(1000) == pytest.approx(8 * 1000 * per_token)
    assert dep8.kv_bytes(1000) == pytest.approx(1000 * per_token)
    assert D.KvPath.for_model(link, r1).kv_bytes(1000) == pytest.approx(1000 * per_token)
    gqa = 32 * 2 * 8 * 128 * 2
    assert LLAMA8.kv_bytes_per_token() == gqa
    assert D.KvPath.for_model(link, LLAMA8, par=Parallel(tp=8)).kv_bytes(10) == 10 * gqa
    assert D.KvPath.for_model(link, LLAMA8, par=Parallel(tp=16)).kv_bytes(10) == 20 * gqa
    q35 = load_model("Qwen/Qwen3.5-397B-A17B")
    state = 45 * (64 * 128 * 128 * 4 + 3 * 12288 * 2)
    assert q35.state_bytes_per_seq() == state
    path = D.KvPath.for_model(link, q35, par=Parallel(tp=4, ep=4))
    kv = 15 * 2 * 2 * 256 * 2  # the 2 KV heads, each whole on two of the 4 ranks
    assert path.kv_bytes(100) == pytest.approx(2 * 100 * kv)
    assert path.state_bytes == pytest.approx(state)
    assert path.wire_bytes(100) == pytest.approx(2 * 100 * kv + state)
    assert path.wire_bytes(0) == pytest.approx(state)  # a migration's delta resends the state
    # CacheGen's compression is of the KV cache; the state goes as it is.
    squeezed = D.KvPath.for_model(link, q35, 4.0, par=Parallel(tp=4, ep=4))
    assert squeezed.wire_bytes(100) == pytest.approx(2 * 100 * kv / 4 + state)


@pytest.mark.parametrize(
    ("prefill", "decode", "copies", "links"),
    [
        (Parallel(tp=8, ep=8), Parallel(tp=8, ep=8), 8, 8),  # rank to rank, 8 at once
        (Parallel(tp=1, dp=8, ep=8), Parallel(tp=8, ep=8), 8, 1),  # one prefill rank sends all
        (Parallel(tp=8, ep=8), Parallel(tp=1, dp=8, ep=8), 1, 1),  # one decode rank receives
        (Parallel(tp=4, dp=2, ep=8), Parallel(tp=8, ep=8), 8, 4),  # 4 senders, 2 copies each
    ],
)
def test_a_lone_mla_transfer_moves_its_copies_over_the_ranks_links(
    prefill: Parallel, decode: Parallel, copies: int, links: int
) -> None:
    """Claim: a lone DeepSeek-R1 8k prompt's transfer carries one latent cache per decode TP
    rank, over as many InfiniBand NICs at once as the fewer of its sending and receiving ranks
    have (a replica's other DP ranks' NICs do not carry it), and the run's transfer volume
    counts every copy."""
    r1 = load_model("deepseek-ai/DeepSeek-R1").with_dtypes(kv="fp8")
    h200 = get_device("h200_sxm")
    pre = Deployment(r1, h200, parallel=prefill, engine=IDEAL)
    dep = D.DisaggDeployment(pre, replace(pre, parallel=decode), "infiniband")
    res = simulate(dep, Workload(np.array([0.0]), np.array([8000]), np.array([4])))
    s = res.summary()
    cache = 8000 * 61 * 576
    link = link_for("infiniband", h200)
    assert s["kv_transfer_gb"] == pytest.approx(copies * cache / 1e9)
    assert s["kv_transfer_s_mean"] == pytest.approx(link.seconds(copies * cache, links), rel=1e-6)


def _pools(device: str, prefill_tp: int, decode_tp: int, decode_device: str = "") -> tuple:
    model = load_model("deepseek-ai/DeepSeek-R1")
    pre = Deployment(model, get_device(device), parallel=Parallel(tp=prefill_tp))
    dec = replace(pre, parallel=Parallel(tp=decode_tp))
    if decode_device:
        dec = replace(dec, device=get_device(decode_device))
    return pre, dec


@pytest.mark.parametrize(
    ("device", "prefill_tp", "decode_tp", "decode_device", "kind"),
    [
        ("h200_sxm", 4, 4, "", "scale_up"),  # 8 GPUs: one HGX node
        ("h200_sxm", 8, 8, "", "infiniband"),  # 16 GPUs: two nodes
        ("gb200", 4, 32, "", "scale_up"),  # 36 GPUs of one NVL72 rack
        ("gb200", 32, 64, "", "infiniband"),  # 96 GPUs: more than a rack
        ("h200_sxm", 2, 2, "h100_sxm", "infiniband"),  # different machines
    ],
)
def test_the_default_kv_link_follows_the_scale_up_domain(
    device: str, prefill_tp: int, decode_tp: int, decode_device: str, kind: str
) -> None:
    """Claim: without a stated link, KV moves over the scale-up fabric when both pools are one
    device type within one domain (8 GPUs of an HGX node, 72 of a GB200 NVL72 rack) and over
    InfiniBand otherwise; the label and the transfer's bandwidth say which."""
    pre, dec = _pools(device, prefill_tp, decode_tp, decode_device)
    dep = D.DisaggDeployment(pre, dec)
    assert dep.link_kind() == kind
    assert dep.label().endswith(f"over {kind}")
    slow = min((pre.device, dec.device), key=lambda d: link_for(kind, d).bw_bytes_per_s)
    assert dep.kv_link() == link_for(kind, slow)
    assert D.DisaggDeployment(pre, dec, "roce").link_kind() == "roce"  # a stated link stands


def test_transfers_sharing_a_link_split_its_bandwidth() -> None:
    """Claim: two transfers on one endpoint each get half its bandwidth (processor sharing);
    when one ends, the other speeds up."""
    net = Network()
    for ep in ("a", "b", "c"):
        net.endpoint(ep, 10.0)  # bytes/s
    ((t1, id1, _),) = net.start(0.0, "a", "b", 100.0, 0.0, "x")
    assert t1 == pytest.approx(10.0)
    changed = {tid: t for t, tid, _ in net.start(0.0, "a", "c", 50.0, 0.0, "y")}
    assert changed[id1] == pytest.approx(20.0) and changed[id1 + 1] == pytest.approx(10.0)
    _, after = net.finish(10.0, id1 + 1)
    assert after[0][0] == pytest.approx(15.0)  # 50 bytes left at the full 10 B/s


def test_compression_and_bad_inputs() -> None:
    """Claim: compressed KV (CacheGen) moves proportionally fewer bytes; mismatched pools and
    impossible ratios are refused in one sentence."""
    w = synthetic(50, 5.0, 2000, 20, seed=0)
    base = Deployment(LLAMA8, H100)
    plain = simulate(D.DisaggDeployment(base, base, "ethernet"), w).summary()
    packed = simulate(D.DisaggDeployment(base, base, "ethernet", kv_compression=4.0), w).summary()
    assert packed["kv_transfer_gb"] == pytest.approx(plain["kv_transfer_gb"] / 4.0)
    assert packed["kv_transfer_s_mean"] < 0.5 * plain["kv_transfer_s_mean"]
    with pytest.raises(ServesimError, match="same model"):
        D.DisaggDeployment(base, replace(base, model=load_model("Qwen/Qwen3-8B")))
    with pytest.raises(ServesimError, match="kv_compression"):
        D.DisaggDeployment(base, base, kv_compression=0.5)
    with pytest.raises(ServesimError, match="Link kind"):
        link_for("carrier-pigeon", H100)
    assert Link("x", 1e9, 1e-6).seconds(1e9, 2) == pytest.approx(0.5 + 1e-6)


# ---- the claim: per-GPU goodput at tight vs loose SLOs ----------------------------------------


def prompt_heavy() -> Workload:
    """Prompts of median 3,000 tokens (p90 6,000), outputs of median 150 (p90 400)."""
    return synthetic(
        800,
        1.0,
        LogNormal(3000, 6000, max_tokens=12000),
        LogNormal(150, 400, max_tokens=1000),
        seed=3,
    )


@cache
def best_per_gpu(kind: str, ttft: float, tpot: float, link: str = "nvlink") -> placement.Placement:
    base = Deployment(LLAMA8, H100, latency_model="roofline")
    if kind == "colocated":
        cands = [
            d
            for budget in (512, 2048, 8192)
            for d in placement.colocated_candidates(
                base, 4, tps=(1, 2, 4), max_num_batched_tokens=budget
            )
        ]
    else:
        cands = placement.disagg_candidates(base, 4, tps=(1, 2), counts=True, link=link)
    return placement.best_placement(cands, prompt_heavy(), Slo(ttft, tpot), 0.9, 0.03)[0]


def test_disaggregation_wins_at_tight_slos_and_not_at_loose_ones() -> None:
    """Claim (DistServe §6.2, Splitwise): on a prompt-heavy workload with tight TTFT and TPOT
    targets, separate prefill and decode pools serve more goodput per GPU than the best
    colocated setup (TP 1/2/4, chunked prefill budgets 512/2048/8192 tokens), because prefill
    chunks no longer stretch decode steps; with loose targets colocation's pooled resources
    win. Both searched on 4 H100s, 90% attainment of each target."""
    tight = (0.5, 0.012)
    loose = (4.0, 0.1)
    d_t, c_t = best_per_gpu("disagg", *tight), best_per_gpu("colocated", *tight)
    d_l, c_l = best_per_gpu("disagg", *loose), best_per_gpu("colocated", *loose)
    seen = {
        "tight": (d_t.label(), d_t.per_gpu_rate_per_s, c_t.label(), c_t.per_gpu_rate_per_s),
        "loose": (d_l.label(), d_l.per_gpu_rate_per_s, c_l.label(), c_l.per_gpu_rate_per_s),
    }
    assert d_t.per_gpu_rate_per_s > 1.15 * c_t.per_gpu_rate_per_s, seen
    assert d_l.per_gpu_rate_per_s < c_l.per_gpu_rate_per_s, seen


def test_a_slow_link_erodes_the_gain_and_compression_wins_some_back() -> None:
    """Claim (DistServe §4.3, Splitwise, CacheGen): KV transfer over 100 GbE instead of
    NVLink visibly lowers disaggregation's goodput at tight TPOT — every request's first
    decode step waits for its cache — and compressing the KV recovers part of it."""
    tight = Slo(0.5, 0.012)
    best = best_per_gpu("disagg", 0.5, 0.012)
    dep = best.deployment
    w = prompt_heavy()
    eth = placement.capacity(replace(dep, link="ethernet"), w, tight, 0.9, 0.03)
    eth4 = placement.capacity(
        replace(dep, link="ethernet", kv_compression=4.0), w, tight, 0.9, 0.03
    )
    seen = (best.per_gpu_rate_per_s, eth.per_gpu_rate_per_s, eth4.per_gpu_rate_per_s)
    assert eth.per_gpu_rate_per_s < 0.85 * best.per_gpu_rate_per_s, seen
    assert eth4.per_gpu_rate_per_s > eth.per_gpu_rate_per_s, seen


# ---- DistServe's published point --------------------------------------------------------------

DISTSERVE_PER_GPU = 1.56  # simdistserve README: OPT-13B, 4×A100-80GB, TTFT 200 ms / TPOT 100 ms
# Lone-request TTFTs (prompt tokens, ms) and the TPOT of DistServe's own run of this placement
# (prefill TP2, decode TP1) at 3 req/s, published with its simulator:
# simdistserve/benchmarks/alignment/data-ground-truth/opt-13b-sharegpt/distserve-c21d11-300-3.exp
MEASURED_TTFT_MS = {
    21: 20.4, 56: 21.8, 67: 27.6, 345: 45.8, 907: 81.2, 1010: 87.0, 1316: 144.2,
    1420: 131.6, 1455: 125.7, 1478: 128.1, 1589: 133.5, 1699: 168.5, 2003: 161.1,
}  # fmt: skip
MEASURED_TPOT_MS = 26.0  # typical TPOT of that run (batches of ~8 at 3 req/s)


def distserve_search(device: Device, engine_name: str = "vllm", **engine: float) -> list:
    """DistServe's search: one prefill and one decode instance per node segment, every TP and
    PP that fits 4 GPUs, capacity at 90% attainment of TTFT 200 ms and of TPOT 100 ms, on 300
    ShareGPT-like requests with Poisson arrivals; prefills are not chunked (DistServe)."""
    # DistServe's engine streams the first token from the prefill instance and its simulator
    # has no frontend: TTFT ends with the prefill (the fitted engine adds a frontend latency).
    eng = get_engine("vllm").with_overrides(name=engine_name, **{**DISTSERVE_PATH, **engine})
    base = Deployment(load_model("facebook/opt-13b"), device, engine=eng, latency_model="roofline")
    cands = placement.disagg_candidates(
        base, 4, tps=(1, 2, 4), pps=(1, 2), prefill=dict(chunked_prefill=False)
    )
    w = sharegpt_distserve(300, 1.0, seed=0)
    return placement.best_placement(cands, w, Slo(0.2, 0.1), 0.9, 0.01)


def scaled(device: Device, f: float) -> Device:
    return replace(
        device,
        name=f"{device.name}x{f:g}",
        peak_flops_per_s={k: v * f for k, v in device.peak_flops_per_s.items()},
        mem_bw_bytes_per_s=device.mem_bw_bytes_per_s * f,
    )


def fit_distserve_engine(a100: Device) -> tuple[float, float, float, float]:
    """Fit servesim's A100 to DistServe's measured engine: a speed factor f on its compute and
    bandwidth, a per-iteration overhead and a frontend latency, by least squares on the log of
    the published lone-request TTFTs and the TPOT. Returns (f, step_s, request_s, rms_log)."""
    opt = load_model("facebook/opt-13b")
    p2 = Deployment(opt, a100, parallel=Parallel(tp=2), latency_model="roofline").predictor()
    p1 = Deployment(opt, a100, latency_model="roofline").predictor()
    n = np.array(list(MEASURED_TTFT_MS))
    ttft = np.array(list(MEASURED_TTFT_MS.values())) / 1e3
    tpot = MEASURED_TPOT_MS / 1e3
    # Kernel time (everything but the engine's fixed cost) at the catalog's speed.
    k_pre = np.array([p2.step_s(0, 0, ((int(x), 0),)) - p2.overhead_s(0, 1) for x in n])
    k_dec = p1.step_s(8, 8 * 800, ()) - p1.overhead_s(8, 0)
    o_pre, o_dec = p2.overhead_s(0, 1), p1.overhead_s(8, 0)
    best = None
    for f in np.arange(0.5, 1.0001, 0.01):
        step = max(0.0, tpot - k_dec / f - o_dec)
        req = max(0.0, float(np.mean(ttft - k_pre / f - o_pre - step)))
        pred_ttft = req + step + o_pre + k_pre / f
        pred_tpot = step + o_dec + k_dec / f
        err = np.concatenate((np.log(pred_ttft / ttft), [np.log(pred_tpot / tpot)]))
        rms = float(np.sqrt(np.mean(err**2)))
        if best is None or rms < best[3]:
            best = (float(f), step, req, rms)
    return best


def test_distserve_placement_reproduction() -> None:
    """Claim (DistServe simulator README): for OPT-13B on one node of 4×A100-80GB, TTFT 200 ms
    and TPOT 100 ms each met by 90% of 300 ShareGPT requests, the best placement is prefill
    TP2 + decode TP1 at 1.56 req/s per GPU. servesim's search picks the same family. Its
    per-GPU goodput lands higher because its A100 engine (vLLM-like kernels) is faster than
    DistServe's 2023 engine that the README's simulator profiles; fitted to that engine's
    published per-request latencies (not to goodput), the same search lands within ±30%."""
    a100 = get_device("a100_sxm")
    raw = distserve_search(a100)
    f, step, req, rms = fit_distserve_engine(a100)
    fitted = distserve_search(
        scaled(a100, f), "distserve", step_overhead_s=step, request_overhead_s=req
    )
    seen = {
        "servesim": [(p.label(), round(p.per_gpu_rate_per_s, 3)) for p in raw[:3]],
        "fitted engine": (round(f, 2), round(step * 1e3, 1), round(req * 1e3, 1), round(rms, 3)),
        "servesim, fitted": [(p.label(), round(p.per_gpu_rate_per_s, 3)) for p in fitted[:3]],
    }
    for found in (raw, fitted):
        # The search resolves rates to 1 %: any placement that close to the best is a tie.
        ties = [x for x in found if x.per_gpu_rate_per_s >= 0.99 * found[0].per_gpu_rate_per_s]
        shapes = {(x.deployment.prefill.parallel, x.deployment.decode.parallel): x for x in ties}
        assert (Parallel(tp=2), Parallel(tp=1)) in shapes, seen
        best = shapes[(Parallel(tp=2), Parallel(tp=1))].deployment
        assert best.prefill.replicas == best.decode.replicas == 1, seen
    assert fitted[0].deployment.prefill.parallel == Parallel(tp=2), seen
    assert rms < 0.2, seen  # the fit describes the measured engine within ~20%
    ratio = fitted[0].per_gpu_rate_per_s / DISTSERVE_PER_GPU
    assert 0.7 <= ratio <= 1.3, (ratio, seen)
    assert raw[0].per_gpu_rate_per_s > fitted[0].per_gpu_rate_per_s, seen
    assert math.isfinite(raw[0].rate_per_s)


def test_a_prompt_waiting_for_blocks_held_for_transfers_resumes_when_they_leave() -> None:
    """Regression (found by scripts/fuzz.py; a request was lost): a prefill replica keeps a
    finished prompt's KV until the decode side pulls it; a prompt it had started and could not
    continue for want of those blocks was woken when they left only if it had not started yet.
    Three tight prefill replicas feeding two one-sequence decode replicas over Ethernet now
    serve every request."""
    decode = {
        **{"tp": 2, "pp": 1, "engine": "sglang", "overlap": True, "replicas": 2},
        **{"max_num_seqs": 1, "max_num_batched_tokens": None, "chunked_prefill": None},
        **{"kv_factor": 1.3, "prefix_caching": True},
    }
    case = case_of(
        kind="disagg",
        replicas=3,
        max_num_batched_tokens=2663,
        kv_factor=1.3,
        decode=decode,
        link="ethernet",
        prompts=[635, 987, 135, 1254, 2149, 1206, 2661],
        outputs=[214, 311, 18, 128, 389, 313, 149],
    )
    assert run_case(case, limit_s=10.0) is None


def test_arrivals_within_one_decode_step_join_at_the_same_pass() -> None:
    """Claim: the scheduler pass at a step boundary sees every request that arrived during the
    step, so two requests arriving within one decode step start in the same iteration and get
    their first token together (here colocated: their prompts share the iteration at the
    boundary; a decode replica admits KV hand-overs through the same cut). Before, only the
    first arrival cut the decode stretch at the boundary; the second one waited a step more."""
    ideal = get_engine("vllm").with_overrides(
        request_overhead_s=0.0, tokenize_s_per_token=0.0, overlap_scheduling=False
    )  # the synchronous pass (vLLM before 0.14); with overlap both join one step later
    dep = Deployment(LLAMA8, H100, engine=ideal)
    step = dep.predictor().iteration(BatchShape(1, 1100)).seconds
    t1 = 1.0 + 0.1 * step
    arrivals = np.array([0.0, t1, t1 + 0.5 * step])
    res = simulate(dep, Workload(arrivals, np.array([100, 200, 200]), np.array([2000, 5, 5])))
    cols = res.columns()
    first = cols["arrival_s"] + cols["ttft_s"]
    assert first[1] == pytest.approx(first[2], abs=1e-12)
    assert cols["ttft_s"][1] < 3 * step  # the boundary, then one iteration with both prompts


def test_sglang_bootstraps_due_together_go_in_arrival_order_whatever_their_slots() -> None:
    """Regression (found by scripts/fuzz.py: a repeated run differed): an SGLang decode worker
    reads requests in (the bootstrap) at its next receive; the prefill side then sees them in
    the order they arrived. Those due at one time were ordered by their table slot, and a slot
    is reused once finished rows are harvested, so how often rows were harvested changed which
    prefill ran first. Here 13 requests finish before 12 more arrive, with rows harvested
    every 2 finishes in the first run and never in the repeat: both runs now agree."""
    decode = {
        **{"tp": 1, "pp": 2, "engine": "sglang", "overlap": None, "replicas": 1},
        **{"max_num_seqs": 45, "max_num_batched_tokens": 16, "chunked_prefill": True},
        **{"kv_factor": 5.0, "prefix_caching": False},
    }
    late = [0.011666, 0.013330, 0.014223, 0.014331, 0.014427, 0.014434]
    late += [0.015450, 0.016378, 0.016824, 0.017811, 0.018642, 0.018759]
    case = case_of(
        kind="disagg",
        model="openai/gpt-oss-20b",
        tp=2,
        pp=2,
        replicas=2,
        max_num_seqs=2,
        max_num_batched_tokens=570,
        chunked_prefill=False,
        router="least_requests",
        decode=decode,
        link="pcie",
        prompts=[6, 5, 8, 5, 8, 2, 1, 6, 5, 3, 3, 4, 6, 5, 6, 5, 6, 4, 7, 4, 7, 2, 4, 7, 3],
        outputs=[5, 3, 1, 6, 2, 3, 6, 6, 3, 1, 8, 5, 3, 5, 8, 7, 7, 6, 1, 8, 4, 3, 4, 2, 6],
        arrivals=[0.0] * 13 + late,
        repeat=True,
    )
    assert run_case(case, limit_s=10.0) is None
