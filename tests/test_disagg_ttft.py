"""What a client sees as TTFT in disaggregated serving, per engine: the frontend, the prefill,
the router's hand-off to the decode worker, the KV transfer, the decode worker's admission at
its scheduler pass and (vLLM) the decode iteration that samples the first token."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from properties_lib import with_kv_tokens

from servesim.predictor.iteration import BatchShape
from servesim.sim import cluster as cluster_module
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.simulate import simulate
from servesim.sim.transfer import Network, link_for
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
P, OUT = 4000, 11
LINK = link_for("infiniband", H100)


def disagg(engine: str) -> tuple[DisaggDeployment, object]:
    # (the engines' own timing: TensorRT-LLM's serving loop, `response_s`, is timed apart)
    pool = Deployment(LLAMA8, H100, engine=get_engine(engine).with_overrides(response_s=0.0))
    return DisaggDeployment(pool, pool, "infiniband"), pool.predictor()


def lone(engine: str) -> tuple[dict, object, float, float]:
    dep, pred = disagg(engine)
    res = simulate(dep, Workload(np.array([0.0]), np.array([P]), np.array([OUT])))
    prefill = pred.iteration(BatchShape(prefill=((P, 0),))).seconds
    transfer = LINK.seconds(LLAMA8.kv_bytes(P))
    return res.columns(), pred, prefill, transfer


def step(pred: object, ctx: int) -> float:
    return pred.iteration(BatchShape(1, ctx)).seconds


def test_vllm_lone_client_waits_for_the_decode_iteration_that_samples_its_token() -> None:
    """Claim (vLLM, NixlConnector behind its proxy): TTFT = frontend (7 ms + 2.5 µs × 4000) +
    prefill + the proxy's hop to the decode server, which tokenises the prompt again (7 ms +
    10 ms) + KV transfer + the decode iteration that recomputes the last prompt token (it
    attends to all 4000) and samples the first token. The decode pool then makes the other 10
    tokens; TPOT is their steps' mean."""
    cols, pred, prefill, transfer = lone("vllm")
    front = 7e-3 + P * 2.5e-6  # 17 ms
    handoff = 7e-3 + P * 2.5e-6  # 17 ms
    first = step(pred, P)
    ttft = front + prefill + handoff + transfer + first
    assert cols["ttft_s"][0] == pytest.approx(ttft, rel=1e-9)
    rest = [step(pred, P + j) for j in range(1, OUT)]
    assert cols["tpot_s"][0] == pytest.approx(sum(rest) / (OUT - 1), rel=1e-9)
    assert cols["e2e_s"][0] == pytest.approx(ttft + sum(rest), rel=1e-9)
    assert cols["generated_tokens"][0] == OUT and cols["replica"][0] == 1


def test_trtllm_lone_client_gets_the_context_token_when_the_generation_server_admits_it() -> None:
    """Claim (TRT-LLM, context-first): TTFT = frontend (17 ms) + prefill + the disaggregated
    server's generation request (7 ms; it carries token ids, no tokenising) + KV transfer; the
    idle generation executor admits the request at once and returns the context server's token
    before its forward. Decoding the other 10 tokens follows."""
    cols, pred, prefill, transfer = lone("trtllm")
    ttft = (7e-3 + P * 2.5e-6) + prefill + 7e-3 + transfer
    assert cols["ttft_s"][0] == pytest.approx(ttft, rel=1e-9)
    rest = [step(pred, P + j) for j in range(1, OUT)]
    assert cols["e2e_s"][0] == pytest.approx(ttft + sum(rest), rel=1e-9)


def test_sglang_lone_client_pays_no_router_hop() -> None:
    """Claim (SGLang PD): the router sent the request to both servers at once, the decode
    pre-allocated during the prefill, so TTFT = frontend + prefill + KV push, and the idle
    decode streams the prefill's token at its next (immediate) pass: its overlapped loop
    processes the prebuilt batch right after launching the first step, with nothing in flight
    before it; the idle prefill server posts the KV at once (no next batch to launch first)."""
    cols, _, prefill, transfer = lone("sglang")
    ttft = (7e-3 + P * 2.5e-6) + prefill + transfer
    assert cols["ttft_s"][0] == pytest.approx(ttft, rel=1e-9)


@pytest.mark.parametrize("engine", ["sglang", "trtllm", "vllm"])
def test_a_busy_decode_worker_admits_at_its_next_step_boundary(engine: str) -> None:
    """Claim: when the decode worker is busy decoding request A, request B's KV is requested
    (TRT-LLM, vLLM: at the worker's first step boundary after the router's hop) and its first
    token comes at the first step boundary after the KV arrived (vLLM, and SGLang's overlapped
    loop: at the end of the step that follows). The boundaries are A's decode steps, summed
    here by hand."""
    dep, pred = disagg(engine)
    e = dep.decode.engine
    t_b = 0.5  # A is decoding alone by then
    w = Workload(np.array([0.0, t_b]), np.array([P, P]), np.array([400, OUT]))
    cols = simulate(dep, w).columns()
    prefill = pred.iteration(BatchShape(prefill=((P, 0),))).seconds
    transfer = LINK.seconds(LLAMA8.kv_bytes(P))
    front = e.frontend_s(P)
    # A: prefill, hand-off, transfer, then decode alone from t_a (steps attend to P + j).
    t_a = front + prefill + e.handoff_s(P) + transfer
    # vLLM recomputes the last prompt token in A's first step: it attends to P, not P + 1.
    ctx0 = P if e.disagg_first_token == "decode_step" else P + 1
    bounds = t_a + np.cumsum([step(pred, ctx0 + j) for j in range(400)])

    def next_boundary(t: float) -> float:
        return float(bounds[np.searchsorted(bounds, t)])

    start = t_b + front
    if e.disagg_prefill_waits_for_decode:  # SGLang: the busy decode reads B in at its next pass
        start = next_boundary(start)
    ready = start + prefill + e.handoff_s(P)
    if e.disagg_pull_at_pass:
        ready = next_boundary(ready)
    arrive = ready + transfer
    first = next_boundary(arrive)
    if e.disagg_first_token in ("decode_step", "prebuilt"):
        # The step after admission runs A and B together: B recomputes its last prompt token
        # (vLLM); SGLang's overlapped loop streams B's token once the step in flight is done
        # (its prebuilt batch's result is processed after the next launch), B decoding from it.
        ctx = (ctx0 + 1 + int(np.searchsorted(bounds, arrive))) + P  # both sequences' context
        first += pred.iteration(BatchShape(2, ctx)).seconds
    assert first > arrive + 1e-6  # a real wait: B's KV lands mid-step
    assert cols["ttft_s"][1] == pytest.approx(first - t_b, rel=1e-9)
    assert (cols["generated_tokens"] == cols["output_tokens"]).all()
    assert (cols["first_token_s"] >= cols["arrival_s"]).all()
    assert (cols["first_token_s"] <= cols["finish_s"]).all()


def test_the_kv_bytes_move_after_the_hand_off(monkeypatch) -> None:
    """Claim: the hand-off (the router's hop, vLLM's second tokenising of the prompt, the
    decode worker's next pass) comes before the KV moves, so a transfer takes link bandwidth
    only from then on. Recorded at the network: A's bytes (vLLM, one client) start at frontend
    + prefill + hand-off (7 ms + 2.5 µs × 4,000) with the link's own latency; a second request
    B, whose long prompt is tokenised again for 22 ms, starts its bytes after its own
    hand-off, not at its prefill's end."""
    starts: list[tuple[float, float, float]] = []

    class Recording(Network):
        def start(self, t, src, dst, nbytes, latency, payload, cap=math.inf):  # type: ignore[override]
            starts.append((t, nbytes, latency))
            return super().start(t, src, dst, nbytes, latency, payload, cap)

        def start_many(self, t, items, cap=math.inf):  # type: ignore[override]
            starts.extend((t, nbytes, latency) for _, _, nbytes, latency, _ in items)
            return super().start_many(t, items, cap)

    monkeypatch.setattr(cluster_module, "Network", Recording)
    dep, pred = disagg("vllm")
    e = dep.decode.engine
    simulate(dep, Workload(np.array([0.0]), np.array([P]), np.array([OUT])))
    prefill = pred.iteration(BatchShape(prefill=((P, 0),))).seconds
    ((t, nbytes, latency),) = starts
    assert t == pytest.approx(e.frontend_s(P) + prefill + (7e-3 + P * 2.5e-6), rel=1e-12)
    assert nbytes == LLAMA8.kv_bytes(P) and latency == LINK.latency_s
    # Two requests sent together, B (6,000 tokens) first: B's prefill runs alone (A reaches
    # the engine behind B's tokenising and waits), then A's (500 tokens). B's bytes start
    # after B's prefill and its 22 ms hand-off, A's after both prefills and its 8.25 ms one,
    # each with the link's latency only (before, B's bytes moved during its hand-off).
    starts.clear()
    w = Workload(np.array([0.0, 0.0]), np.array([6000, 500]), np.array([OUT, OUT]))
    simulate(dep, w)
    one = {n: pred.iteration(BatchShape(prefill=((n, 0),))).seconds for n in (6000, 500)}
    t_b = e.frontend_s(6000) + one[6000] + (7e-3 + 6000 * 2.5e-6)
    t_a = e.frontend_s(6000) + one[6000] + one[500] + (7e-3 + 500 * 2.5e-6)
    assert [(t0, b) for t0, b, _ in starts] == [
        (pytest.approx(t_a, rel=1e-12), LLAMA8.kv_bytes(500)),
        (pytest.approx(t_b, rel=1e-12), LLAMA8.kv_bytes(6000)),
    ]
    assert all(lat == LINK.latency_s for _, _, lat in starts)


def test_the_ideal_path_is_still_available() -> None:
    """Claim: an engine set to stream the prefill's token with no frontend and no hand-off
    gives the old accounting: TTFT is the prefill alone, the transfer is in TPOT."""
    ideal = get_engine("sglang").with_overrides(
        request_overhead_s=0.0, tokenize_s_per_token=0.0, disagg_first_token="prefill"
    )
    pool = Deployment(LLAMA8, H100, engine=ideal)
    res = simulate(
        DisaggDeployment(pool, pool, "infiniband"),
        Workload(np.array([0.0]), np.array([P]), np.array([OUT])),
    )
    prefill = pool.predictor().iteration(BatchShape(prefill=((P, 0),))).seconds
    assert res.columns()["ttft_s"][0] == pytest.approx(prefill, rel=1e-9)


def test_a_full_decode_worker_holds_the_next_request_until_a_slot_frees() -> None:
    """Claim (TRT-LLM: the executor fetches requests only while active < max_batch_size; SGLang
    and vLLM likewise cap running requests): with one decode slot, B's prefill is done long
    before A's 200 tokens are, but B's KV is pulled only when A has finished, so B's first
    token comes at A's end + the transfer (its hand-off is long over, the worker is idle and
    admits it on arrival). By hand: A's first token at t_a = frontend + prefill + hand-off +
    transfer; its 199 decode steps (attending to P + j) end at a_done."""
    trt = get_engine("trtllm").with_overrides(response_s=0.0)  # the engine's own timing
    pool = Deployment(LLAMA8, H100, engine=trt, max_num_seqs=1)
    pred = pool.predictor()
    e = pool.engine
    out_a = 200
    w = Workload(np.array([0.0, 0.0]), np.array([P, P]), np.array([out_a, OUT]))
    cols = simulate(DisaggDeployment(pool, pool, "infiniband"), w).columns()
    one = pred.iteration(BatchShape(prefill=((P, 0),))).seconds
    transfer = LINK.seconds(LLAMA8.kv_bytes(P))
    t_a = e.frontend_s(P) + one + e.handoff_s(P) + transfer
    a_done = t_a + sum(step(pred, P + j) for j in range(1, out_a))
    assert e.frontend_s(P) + 2 * one < a_done  # B's prefill is not what holds it
    assert cols["first_token_s"][0] == pytest.approx(t_a, rel=1e-9)
    assert cols["finish_s"][0] == pytest.approx(a_done, rel=1e-9)
    assert cols["first_token_s"][1] == pytest.approx(a_done + transfer, rel=1e-9)
    # With two slots, B is not held: its first token comes while A is still decoding.
    roomy = replace(pool, max_num_seqs=2)
    cols = simulate(DisaggDeployment(roomy, roomy, "infiniband"), w).columns()
    assert cols["first_token_s"][1] < a_done


def test_sglang_prefill_waits_for_the_decode_to_read_the_request_in() -> None:
    """Claim (SGLang PD bootstrap): the prefill worker starts B only once the decode worker has
    read B in and sent back the blocks it pre-allocated; a decode worker busy with A under
    `--scheduler-recv-interval 10` reads new requests on every tenth pass only. So B's prefill
    starts on one of A's step boundaries, the first at or after B reached the servers whose
    pass reads, and those reading boundaries are 10 steps apart: B's start indices agree
    modulo 10 whatever B's arrival, and each is within 10 steps of the first boundary after
    it. With interval 1 B starts at the first boundary (the test above)."""
    engine = get_engine("sglang").with_overrides(recv_interval_steps=10)
    pool = Deployment(LLAMA8, H100, engine=engine)
    dep, pred = DisaggDeployment(pool, pool, "infiniband"), pool.predictor()
    front = engine.frontend_s(P)
    prefill = pred.iteration(BatchShape(prefill=((P, 0),))).seconds
    t_a = front + prefill + LINK.seconds(LLAMA8.kv_bytes(P))
    bounds = t_a + np.cumsum([step(pred, P + 1 + j) for j in range(400)])
    first_step = bounds[1] - bounds[0]
    starts, firsts = [], []
    for x in range(12):
        t_b = 0.5 + 0.37 * x * first_step
        w = Workload(np.array([0.0, t_b]), np.array([P, P]), np.array([400, OUT]))
        cols = simulate(dep, w).columns()
        start = float(cols["scheduled_s"][1])
        j = int(np.argmin(np.abs(bounds - start)))
        assert start == pytest.approx(bounds[j], abs=1e-9)  # on one of A's boundaries
        j0 = int(np.searchsorted(bounds, t_b + front))  # the first boundary after B came
        assert 0 <= j - j0 < 10
        starts.append(j)
        firsts.append(j0)
    assert len({j % 10 for j in starts}) == 1  # the decode reads every tenth pass
    assert any(j > j0 for j, j0 in zip(starts, firsts, strict=True))  # B waited past one


def test_sglang_sends_the_kv_to_the_decode_worker_paired_at_arrival() -> None:
    """Claim (SGLang PD): the router sends a request to a prefill and a decode worker together,
    and the bootstrap room ties the prefill's KV to that decode worker, in arrival order.
    TensorRT-LLM's disaggregated server (and Dynamo's frontend) picks the decode worker once
    the prefill is done, in turn (`RoundRobinRouter`, its default; Dynamo's `--router-mode`
    round-robin): a long prompt on one prefill worker and a short one on the other finish in
    the other order, so the two engines pair them with the two decode workers the other way
    round."""
    w = Workload(np.array([0.0, 0.001]), np.array([8000, 100]), np.array([5, 5]))

    def decode_workers(engine: str) -> list[int]:
        pool = Deployment(LLAMA8, H100, engine=get_engine(engine))
        two = replace(pool, replicas=2)
        cols = simulate(DisaggDeployment(two, two, "infiniband"), w).columns()
        return [int(x) for x in cols["replica"]]

    sg, trt = decode_workers("sglang"), decode_workers("trtllm")
    assert sg[0] != sg[1] and trt[0] != trt[1]
    assert sg[0] == trt[1]  # SGLang: the first arrival's turn; TensorRT-LLM: the first hand-off


def test_round_robin_hand_off_queues_at_a_full_decode_worker() -> None:
    """The router takes decode workers in turn, whatever they hold: with two workers of one
    request each (`max_num_seqs` 1), a long reply on the first, and two more requests, the
    third goes to the busy first worker and waits there for a seat, though the second worker
    is idle by then; a least-loaded router sends it to the idle one."""
    w = Workload(np.array([0.0, 0.01, 2.0]), np.full(3, 1000), np.array([2000, 5, 5]))

    def run(router: str) -> tuple[list[int], float]:
        pool = Deployment(LLAMA8, H100, engine=get_engine("trtllm"), max_num_seqs=1)
        dep = DisaggDeployment(pool, replace(pool, replicas=2), "infiniband")
        cols = simulate(dep, w, router=router).columns()
        return [int(x) for x in cols["replica"]], float(cols["ttft_s"][2])

    (rr, wait), (ll, quick) = run("round_robin"), run("least_loaded")
    assert rr[0] == rr[2] != rr[1] and ll[0] != ll[2]
    assert wait > 10 * quick  # it waited for the 2,000-token reply to end


def test_a_lone_sglang_pd_request_agrees_with_a_published_measurement() -> None:
    """Outside check (ai-dynamo/dynamo issue #4425, 2025-11-18): DeepSeek-V3 on one prefill and
    one decode server of 8 H200s each, SGLang with NIXL, TP 8, 1,000-token prompts and 200
    output tokens: "1 concurrent request: ~100ms" TTFT. The pools sit on two nodes, so the KV
    crosses InfiniBand. servesim gives 90.9 ms; the check allows the report's rounding and the
    unknown rest of its launch (±25 %)."""
    model = load_model("deepseek-ai/DeepSeek-V3")
    pool = Deployment(
        model, get_device("h200_sxm"), engine=get_engine("sglang"), parallel=Parallel(tp=8)
    )
    dep = DisaggDeployment(pool, pool)
    assert dep.link_kind() == "infiniband"
    n = 6
    w = Workload(np.arange(n) * 5.0, np.full(n, 1000), np.full(n, 200))
    ttft = simulate(dep, w).columns()["ttft_s"][1:]
    assert float(np.mean(ttft)) == pytest.approx(0.100, rel=0.25)


def test_an_sglang_decode_worker_keeps_a_decode_reserve_for_every_request() -> None:
    """Claim (SGLang `DecodePreallocQueue._allocatable_tokens`): a handed-over request's KV is
    pre-allocated only if its prompt fits what is free after 512 tokens are kept for the
    decoding of every request the worker holds, has in transfer, and this one. With a decode
    cache of 9,000 tokens, A (4,001 tokens with its first) runs; B would fit beside it
    (4,999 free) but not with the reserve (4,001 + 2 × 512 = 5,025), so B's KV is pulled only
    when A finishes. With 9,300 tokens (5,299 − A's ≤ 200 new tokens ≥ 5,025 free) it is not
    held."""
    assert get_engine("sglang").disagg_decode_reserve_tokens == 512
    out_a = 200
    w = Workload(np.array([0.0, 0.0]), np.array([P, P]), np.array([out_a, OUT]))
    prefill = Deployment(LLAMA8, H100, engine=get_engine("sglang"))

    def run(kv_tokens: int) -> dict:
        decode = with_kv_tokens(prefill, kv_tokens)
        assert decode.memory().kv_tokens == kv_tokens
        return simulate(DisaggDeployment(prefill, decode, "infiniband"), w).columns()

    held = run(9000)
    assert held["first_token_s"][1] > held["finish_s"][0]
    roomy = run(9300)
    assert roomy["first_token_s"][1] < roomy["finish_s"][0]


def test_an_sglang_decode_worker_retracts_to_host_memory_instead_of_recomputing(
    monkeypatch,
) -> None:
    """Claim (SGLang decode mode: `release_req` offloads a retracted request's KV to the host,
    `resume_retracted_reqs` loads it back before new pre-allocations): a decode worker whose
    requests outgrow its cache parks one and reloads it, never prefilling it again. Two
    1,000 + 2,500-token requests on a 6,000-token decode cache both get in (1,001 + 2 × 512
    fits beside the first) and outgrow it (2 × 3,500). With the engine's retraction turned off
    the worker recomputes the parked request (a prefill on the decode worker), as vLLM does."""
    from servesim.sim.replica import Replica

    held_prompts: list[str] = []
    real = Replica._schedule

    def watch(self: Replica) -> None:
        if self.role == "decode" and self.waiting:
            held_prompts.append("recompute")
        real(self)

    monkeypatch.setattr(Replica, "_schedule", watch)
    w = Workload(np.array([0.0, 0.0]), np.array([1000, 1000]), np.array([2500, 2500]))
    prefill = Deployment(LLAMA8, H100, engine=get_engine("sglang"))
    decode = with_kv_tokens(prefill, 6000)
    cols = simulate(DisaggDeployment(prefill, decode, "infiniband"), w).columns()
    assert cols["preemptions"].sum() >= 1 and (cols["generated_tokens"] == 2500).all()
    assert held_prompts == []
    recompute = replace(
        decode, engine=decode.engine.with_overrides(disagg_decode_retracts_to_host=False)
    )
    cols = simulate(DisaggDeployment(prefill, recompute, "infiniband"), w).columns()
    assert cols["preemptions"].sum() >= 1 and (cols["generated_tokens"] == 2500).all()
    assert held_prompts
