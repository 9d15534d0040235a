"""Simulator behaviour: hand-checkable timings, conservation, determinism, load response."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from properties_lib import time_limit, with_kv_tokens

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import ConservationError, Slo, check_conservation
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed, synthetic
from servesim.sim.traces import bundled_trace
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


def dep(**kw: object) -> Deployment:
    return Deployment(model=LLAMA8, device=H100, **kw)  # type: ignore[arg-type]


def one_request(prompt: int, output: int) -> Workload:
    return Workload(np.array([0.0]), np.array([prompt]), np.array([output]))


def test_lone_request_ttft_is_its_prefill_and_tpot_its_decode_steps() -> None:
    d = dep()
    pred = d.predictor()
    res = simulate(d, one_request(1000, 50))
    cols = res.columns()
    prefill = pred.iteration(BatchShape(prefill=((1000, 0),))).seconds
    # The serving frontend (HTTP, tokenising 1000 prompt tokens, the first token's way back).
    front = d.engine.request_overhead_s + 1000 * d.engine.tokenize_s_per_token
    assert cols["ttft_s"][0] == pytest.approx(front + prefill, rel=1e-9)
    # Decode step j attends to 1000 + j tokens (the prompt plus generated ones).
    steps = [pred.iteration(BatchShape(1, 1000 + j)).seconds for j in range(1, 50)]
    assert cols["tpot_s"][0] == pytest.approx(sum(steps) / 49, rel=1e-9)
    assert cols["e2e_s"][0] == pytest.approx(front + prefill + sum(steps), rel=1e-9)
    summary = res.summary()
    # Inter-token latencies are the decode steps (a histogram: within its 0.1 % buckets).
    assert summary["itl_s"]["mean"] == pytest.approx(sum(steps) / 49, rel=5e-3)
    assert summary["itl_s"]["p50"] == pytest.approx(float(np.median(steps)), rel=5e-3)
    # Time means over the run (arrival to finish): one sequence runs from its prefill to its
    # end, and the engine is busy for as long, from the frontend's hand-over (a 2,000-point
    # time grid: within 1e-3).
    duration = front + prefill + sum(steps)
    assert summary["mean_batch_size"] == pytest.approx((prefill + sum(steps)) / duration, abs=1e-3)
    assert summary["utilisation"] == pytest.approx((prefill + sum(steps)) / duration, rel=1e-6)


def test_kv_use_grows_through_a_decode_stretch() -> None:
    """A lone request decodes its 4,000 tokens as one stretch of steps: the KV time series
    grows from its 1,000 prompt tokens to 5,000 through it (it held the start value until this
    was found), so the mean KV use is the mean of the two over the decode's share of the run,
    the prefill ramping its prompt in."""
    d = dep()
    res = simulate(d, one_request(1000, 4000))
    s, cols = res.summary(), res.columns()
    first, end = float(cols["first_token_s"][0]), float(cols["finish_s"][0])
    prefill = d.predictor().iteration(BatchShape(prefill=((1000, 0),))).seconds
    held = (1000 + 5000) / 2 * (end - first) + 1000 / 2 * prefill  # token-seconds
    hand = held / s["duration_s"] / s["kv_tokens_per_replica"]
    assert s["mean_kv_use"] == pytest.approx(hand, rel=5e-3)
    assert res.series["kv_use"].max() == pytest.approx(5000 / s["kv_tokens_per_replica"], rel=1e-3)


def test_time_means_count_short_bursts_between_grid_points() -> None:
    """Three lone requests at 0, 1 and 10,000 s, each alone from its scheduling to its end (its
    prefill and 49 decode steps): the mean batch size is those three spans over the run, though
    the one at 1 s falls between two points of the series' 2,000-point grid (it once read 0)."""
    d = dep()
    res = simulate(d, Workload(np.array([0.0, 1.0, 1e4]), np.full(3, 1000), np.full(3, 50)))
    cols, s = res.columns(), res.summary()
    running = float((cols["finish_s"] - cols["scheduled_s"]).sum())
    assert s["mean_batch_size"] == pytest.approx(running / s["duration_s"], rel=1e-6)


def test_a_preempted_request_leaves_the_series_when_it_is_preempted() -> None:
    """Two 1,000/400 requests in a 2,400-token cache: B is preempted at 1.512 s and recomputed
    once A finishes at 2.951 s. The series used to keep both running (and their KV) until A's
    end, as the pass logged its sample before preempting. An audit's hand timeline, with each
    prefill counted since the iterations that admit prompts sample them (stop 66): A from its
    scheduling to its end, B from its scheduling to 1.512 s and from A's end to its own, over
    the run (1.337 sequences; before, decode spans only: 1.320); their KV 0.667 of the cache."""
    lean = get_engine("vllm").with_overrides(
        request_overhead_s=0.0, tokenize_s_per_token=0.0, overlap_scheduling=False
    )
    d = with_kv_tokens(dep(engine=lean), 2400)
    res = simulate(d, Workload(np.array([0.0, 0.001]), np.full(2, 1000), np.full(2, 400)))
    assert res.columns()["preemptions"].tolist() == [0, 1]
    s = res.summary()
    c = res.columns()
    a_end = c["finish_s"][0]
    by_hand = a_end - c["scheduled_s"][0] + 1.512 - c["scheduled_s"][1] + c["finish_s"][1] - a_end
    assert s["mean_batch_size"] == pytest.approx(by_hand / s["duration_s"], rel=2e-3)
    assert s["mean_batch_size"] == pytest.approx(1.337, rel=2e-3)
    assert s["mean_kv_use"] == pytest.approx(0.667, rel=2e-3)
    # Every gap between consecutive tokens counts, B's stall across its recompute too (it was
    # left out: 797 gaps): 399 + 399, their mean the requests' decode spans over them.
    cols = res.columns()
    assert sum(res.itl.counts) == 798
    spans = float((cols["finish_s"] - cols["first_token_s"]).sum())
    assert s["itl_s"]["mean"] == pytest.approx(spans / 798, rel=2e-3)


def test_a_one_token_request_has_no_tpot_to_average_or_miss() -> None:
    """A request of one output token has no inter-token time: its TPOT is nan, left out of the
    TPOT figures (it once counted as 0 and halved the mean) and never an SLO miss."""
    d = dep()
    res = simulate(d, Workload(np.array([0.0, 50.0]), np.full(2, 1000), np.array([1, 50])))
    cols, s = res.columns(), res.summary(Slo(ttft_s=1.0, tpot_s=0.05))
    assert np.isnan(cols["tpot_s"][0]) and cols["tpot_s"][1] > 0
    assert s["tpot_s"]["mean"] == pytest.approx(float(cols["tpot_s"][1]), rel=1e-12)
    assert s["slo_attainment"] == 1.0


def test_merged_series_orders_each_replicas_samples_in_time() -> None:
    """A semi-PD lane can log a hand-over's time ahead of a controller tick it sees later; the
    merged series reads the samples in time order (on a grid of 0, 1, 2, 3 s: running holds
    its last sample, KV runs linearly between samples)."""
    from servesim.sim.result import ReplicaSamples, _merge_series

    t = np.array([0.0, 2.0, 1.0, 3.0])
    run, kv = np.array([1.0, 3.0, 2.0, 0.0]), np.array([10.0, 30.0, 20.0, 0.0])
    got = _merge_series([ReplicaSamples.of(t, run, kv, 100.0, [[0.0, 3.0]])], points=4)
    assert got["running"].tolist() == [1.0, 2.0, 3.0, 0.0]
    assert np.allclose(got["kv_use"], [0.1, 0.2, 0.3, 0.0])


def test_tensorrt_llm_prefills_a_long_prompt_whole_by_default() -> None:
    """TensorRT-LLM's `enable_chunked_prefill` defaults to False (LlmArgs): a 12,000-token
    prompt runs as one 12,000-token context iteration beyond its 8,192-token max_num_tokens;
    with --chunked-prefill it takes two iterations, 8,192 then 3,808 over the first 8,192."""
    trt = get_engine("trtllm").with_overrides(response_s=0.0)  # the engine's own timing
    whole = dep(engine=trt)
    pred = whole.predictor()
    assert whole.batching()[1:] == (8192, False)
    ttft = simulate(whole, one_request(12_000, 2)).columns()["ttft_s"][0]
    once = pred.iteration(BatchShape(prefill=((12_000, 0),))).seconds
    assert ttft == pytest.approx(trt.frontend_s(12_000) + once, rel=1e-9)
    chunked = dep(engine=trt, chunked_prefill=True)
    two = sum(
        pred.iteration(BatchShape(prefill=((n, c),))).seconds for n, c in ((8192, 0), (3808, 8192))
    )
    got = simulate(chunked, one_request(12_000, 2)).columns()["ttft_s"][0]
    assert got == pytest.approx(trt.frontend_s(12_000) + two, rel=1e-9)


def test_long_prompt_is_chunked_into_budget_sized_iterations() -> None:
    d = dep(max_num_batched_tokens=512)
    pred = d.predictor()
    res = simulate(d, one_request(1300, 2))
    expected = d.engine.frontend_s(1300) + sum(
        pred.iteration(BatchShape(prefill=((n, c),))).seconds
        for n, c in ((512, 0), (512, 512), (276, 1024))
    )
    assert res.columns()["ttft_s"][0] == pytest.approx(expected, rel=1e-9)


def test_overlap_scheduling_admits_an_arrival_one_iteration_later() -> None:
    """With overlap scheduling (TRT-LLM, SGLang) iteration n+1 is planned while n runs, so a
    prompt that arrives during A's prefill misses the next iteration (A's first decode) and
    starts in the one after; an idle engine still starts it at once. (The engine loop alone:
    no frontend, so the arrivals reach the engine as sent.)"""
    core = get_engine("vllm").with_overrides(
        request_overhead_s=0.0, tokenize_s_per_token=0.0, overlap_scheduling=False
    )  # vLLM before 0.14, synchronous
    overlap = core.with_overrides(overlap_scheduling=True)
    w = Workload(np.array([0.0, 0.001]), np.array([2000, 100]), np.array([40, 5]))
    plain = simulate(dep(engine=core), w).columns()
    lagged = simulate(dep(engine=overlap), w).columns()
    pred = dep().predictor()
    a_prefill = pred.iteration(BatchShape(prefill=((2000, 0),))).seconds
    assert plain["ttft_s"][0] == lagged["ttft_s"][0] == pytest.approx(a_prefill, rel=1e-9)
    # Plain: B's prefill shares A's first decode step. Overlap: one decode-only step first.
    mixed = pred.iteration(BatchShape(1, 2001, prefill=((100, 0),))).seconds
    assert plain["first_token_s"][1] == pytest.approx(a_prefill + mixed, rel=1e-6)
    decode = pred.iteration(BatchShape(1, 2001)).seconds
    mixed2 = pred.iteration(BatchShape(1, 2002, prefill=((100, 0),))).seconds
    assert lagged["first_token_s"][1] == pytest.approx(a_prefill + decode + mixed2, rel=1e-6)
    lone = simulate(dep(engine=overlap), one_request(1000, 5)).columns()
    assert lone["ttft_s"][0] == pytest.approx(
        simulate(dep(engine=core), one_request(1000, 5)).columns()["ttft_s"][0]
    )


def trace_sample(n: int = 600, rate: float = 8.0) -> Workload:
    return bundled_trace("azure_conv").head(n).scaled_to_rate(rate)


def test_every_request_finishes_once_and_tokens_are_conserved() -> None:
    w = trace_sample()
    res = simulate(dep(replicas=2), w, router="least_loaded")
    cols = res.columns()
    assert (cols["finish_s"] > 0).all()
    assert (cols["generated_tokens"] == w.output_tokens).all()
    assert cols["generated_tokens"].sum() == w.output_tokens.sum()
    assert (cols["first_token_s"] >= cols["arrival_s"]).all()
    assert (cols["finish_s"] >= cols["first_token_s"]).all()
    assert set(np.unique(cols["replica"])) == {0, 1}


def test_preemption_under_a_tiny_cache_still_conserves_tokens() -> None:
    # A 70B model at TP8 on A10G-sized memory is impossible, so shrink the cache instead:
    # Llama-8B on an L4 (24 GB) leaves ~3 GB for KV, ~25k tokens; long requests overflow it.
    d = Deployment(model=LLAMA8, device=get_device("l4"), max_num_seqs=64)
    w = synthetic(120, 50.0, Fixed(3000), Fixed(600), seed=1)
    res = simulate(d, w)
    cols = res.columns()
    assert cols["preemptions"].sum() > 0
    assert (cols["generated_tokens"] == 600).all()
    assert (cols["finish_s"] > 0).all()


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    def run(seed: int) -> np.ndarray:
        w = synthetic(300, 6.0, "uniform:100:3000", "uniform:10:400", seed=seed)
        return simulate(dep(), w).columns()["finish_s"]

    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_latency_grows_with_load() -> None:
    base = bundled_trace("azure_conv").head(800)
    p50 = []
    for rate in (2.0, 8.0, 16.0, 24.0):
        s = simulate(dep(), base.scaled_to_rate(rate)).summary()
        p50.append((s["ttft_s"]["p90"], s["tpot_s"]["p50"]))
    ttft, tpot = zip(*p50, strict=True)
    assert all(a < b for a, b in pairwise(ttft)), ttft
    assert all(a < b for a, b in pairwise(tpot)), tpot


def test_chunked_prefill_lowers_tail_inter_token_latency_under_mixed_load() -> None:
    # Long prompts arriving among many decoding requests stall decodes for a whole prefill
    # when prefills are not chunked (Sarathi-Serve's motivation).
    w = synthetic(400, 6.0, "uniform:3000:8000", "uniform:100:300", seed=2)
    on = simulate(dep(chunked_prefill=True, max_num_batched_tokens=1024), w).summary()
    off = simulate(dep(chunked_prefill=False), w).summary()
    assert on["itl_s"]["p99"] < 0.6 * off["itl_s"]["p99"], (on["itl_s"], off["itl_s"])


def test_sglang_style_prefill_pauses_decodes() -> None:
    # Without mixed batches a decoding request waits out every prefill batch: its TPOT grows.
    w = synthetic(200, 8.0, Fixed(2000), Fixed(200), seed=5)
    mixed = simulate(dep(engine=get_engine("vllm")), w).summary()
    split = simulate(dep(engine=get_engine("sglang")), w).summary()
    assert split["tpot_s"]["mean"] > mixed["tpot_s"]["mean"]


def test_closed_loop_keeps_the_client_count_in_flight() -> None:
    loop = ClosedLoop(8, 80, Fixed(500), Fixed(50))
    res = simulate(dep(), closed_loop=loop)
    cols = res.columns()
    assert (cols["finish_s"] > 0).all()
    # The first wave starts together; every later request is sent when one ends.
    assert (cols["arrival_s"][:8] == 0).all()
    finish_sorted = np.sort(cols["finish_s"])[:72]
    assert np.allclose(np.sort(cols["arrival_s"][8:]), finish_sorted)
    assert res.summary()["mean_batch_size"] <= 8.0 + 1e-9


def test_pipeline_parallel_runs_pp_microbatches() -> None:
    w = synthetic(400, 12.0, Fixed(1000), Fixed(200), seed=0)
    s1 = simulate(dep(parallel=Parallel(tp=2)), w).summary()
    s2 = simulate(dep(parallel=Parallel(tp=1, pp=2)), w).summary()
    assert s2["finished"] == s1["finished"] == 400
    # Same two GPUs: PP pays a latency price per token compared with TP.
    assert s2["tpot_s"]["mean"] > s1["tpot_s"]["mean"]


def test_model_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ServesimError, match=r"needs .* GB per device"):
        Deployment(model=load_model("meta-llama/Llama-3.1-70B"), device=H100).memory()
    w = synthetic(10, 1.0, Fixed(100), Fixed(10))
    with pytest.raises(ServesimError, match=r"needs .* GB per device"):
        simulate(Deployment(model=load_model("meta-llama/Llama-3.1-70B"), device=H100), w)


def test_request_longer_than_the_cache_is_refused() -> None:
    # 100k tokens are within Llama-3.1-8B's 131,072-token context but not one L4's KV cache.
    d = Deployment(model=LLAMA8, device=get_device("l4"))
    with pytest.raises(ServesimError, match="does not fit the KV cache"):
        simulate(d, one_request(100_000, 10))


def test_request_longer_than_the_model_context_is_refused() -> None:
    """Engines reject a request whose prompt and output exceed the model's context (HTTP 400),
    so the run refuses it, naming both lengths, on a device whose cache would hold it."""
    d = Deployment(model=LLAMA8, device=get_device("h200_sxm"))
    assert LLAMA8.max_context_tokens == 131_072
    simulate(d, one_request(131_000, 72))  # 131,072 tokens: at the limit, served
    with pytest.raises(ServesimError, match=r"131,073 tokens .* 131,072-token context"):
        simulate(d, one_request(131_000, 73))


def test_bad_inputs_get_one_clear_sentence() -> None:
    with pytest.raises(ServesimError, match="does not divide"):
        simulate(dep(parallel=Parallel(tp=3)), one_request(10, 10))
    with pytest.raises(ServesimError, match="Unknown router"):
        simulate(dep(), one_request(10, 10), router="random")
    with pytest.raises(ServesimError, match="either"):
        simulate(dep())


# ---- every finite run is checked: nothing lost, nothing invented ------------------------------


def test_a_lost_request_fails_loudly_naming_it(monkeypatch) -> None:
    """Claim (issue 9): a run that loses a request raises an internal error naming it instead of
    returning a partial result; here request 1 is dropped on arrival (a simulated bug)."""
    from servesim.sim.replica import Replica

    real = Replica.enqueue

    def drop_one(self, rid, t):
        return [] if rid == 1 else real(self, rid, t)

    monkeypatch.setattr(Replica, "enqueue", drop_one)
    w = Workload(np.zeros(3), np.full(3, 100), np.full(3, 10))
    for deployment in (dep(), dep(replicas=2)):  # the single-replica loop and the cluster loop
        with pytest.raises(ConservationError, match=r"1 did not finish \(request ids 1\)"):
            simulate(deployment, w)


def test_the_conservation_check_names_each_kind_of_inconsistency() -> None:
    """Claim: unfinished requests, wrong token counts, a first token before the arrival or
    after the end, and a finish counted twice each get named (numpy over the columns)."""
    cols = {
        "arrival_s": np.array([0.0, 0.0, 1.0, 0.0, 0.0]),
        "first_token_s": np.array([0.1, 0.1, 0.5, 0.9, 0.1]),
        "finish_s": np.array([0.2, 0.2, 2.0, 0.5, -1.0]),
        "generated_tokens": np.array([3, 2, 3, 3, 0]),
        "output_tokens": np.array([3, 3, 3, 3, 3]),
    }
    with pytest.raises(ConservationError) as err:
        check_conservation(cols, finish_events=5)
    text = str(err.value)
    for part in (
        "1 did not finish (request ids 4)",
        "1 generated a wrong number of tokens (request ids 1)",
        "1 got a first token before arriving (request ids 2)",
        "1 got a first token after finishing (request ids 3)",
    ):
        assert part in text, (part, text)
    assert "finish events" not in text  # five reported for five requests: that part is fine
    ok = {**cols, "finish_s": np.array([0.2, 0.2, 2.0, 1.0, 0.3])}
    ok["first_token_s"] = np.array([0.1, 0.1, 1.5, 0.9, 0.1])
    ok["generated_tokens"] = np.full(5, 3)
    check_conservation(ok, finish_events=5)
    with pytest.raises(ConservationError, match="6 finish events for 5 requests"):
        check_conservation(ok, finish_events=6)


def test_the_cache_check_counts_whole_pages() -> None:
    """Regression (found by scripts/fuzz.py): a request was let in when its tokens fitted the
    cache's token count but not its whole pages (a cache of 2,680 tokens is 83 pages of 32, or
    2,656 tokens), and the run then died with a RuntimeError; it is now refused up front."""
    d = with_kv_tokens(dep(engine=get_engine("trtllm").with_overrides(response_s=0.0)), 2680)
    assert d.memory().kv_tokens == 2680
    with time_limit(10), pytest.raises(ServesimError, match="fit the KV cache of 2656 tokens"):
        simulate(d, one_request(2600, 70))  # (before: preempted itself for ever, or raised)
    assert simulate(d, one_request(2600, 56)).summary()["finished"] == 1


def _most_in_service(cols: dict[str, np.ndarray]) -> int:
    """Most requests between their first scheduling and their finish at any instant (a finish
    at t frees its slot before a start at t)."""
    events = sorted(
        [(t, 0, -1) for t in cols["finish_s"]] + [(t, 1, 1) for t in cols["scheduled_s"]]
    )
    now = most = 0
    for _, _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_no_engine_runs_more_sequences_than_max_num_seqs(engine: str) -> None:
    """Regression: without mixed batches (SGLang) prefill admission counted only the prompts in
    flight, not the decoding requests, so a burst ran far above `max_num_seqs`."""
    w = Workload(np.zeros(40), np.full(40, 300), np.full(40, 60))
    # (the engine's own finishes: TensorRT-LLM's serving loop would pass tokens on later)
    eng = get_engine(engine).with_overrides(response_s=0.0)
    res = simulate(dep(engine=eng, max_num_seqs=4), w)
    cols = res.columns()
    assert cols["preemptions"].sum() == 0  # so each request is in service once
    assert _most_in_service(cols) == 4


def test_tensorrt_llm_admits_only_what_can_run_to_completion() -> None:
    """TensorRT-LLM's default capacity policy (GUARANTEED_NO_EVICT) admits a request only when
    the blocks of its whole length fit beside every admitted request's final blocks: a cache of
    4,096 tokens holds four 256 + 768-token requests to completion (32 pages of 32 each), so
    ten sent at once run four at a time, none preempted, and the fifth starts when the first
    finishes. vLLM admits on the prompt's blocks (sixteen prompts fit) and preempts."""
    w = Workload(np.zeros(10), np.full(10, 256), np.full(10, 768))
    trt = with_kv_tokens(dep(engine=get_engine("trtllm").with_overrides(response_s=0.0)), 4096)
    assert trt.memory().kv_tokens == 4096
    cols = simulate(trt, w).columns()
    assert cols["preemptions"].sum() == 0
    assert _most_in_service(cols) == 4
    starts = np.sort(cols["scheduled_s"])
    assert starts[3] < cols["finish_s"].min() <= starts[4]
    assert (cols["generated_tokens"] == 768).all()
    vllm = simulate(with_kv_tokens(dep(), 4096), w).columns()
    assert _most_in_service(vllm) > 4 and vllm["preemptions"].sum() > 0


def test_a_scheduling_policy_keeps_the_engines_admission_checks() -> None:
    """A policy orders the queue; it does not lift the engine's own admission: TensorRT-LLM
    under `--policy priority` still admits only what runs to completion and never evicts (the
    case above: four of ten 256 + 768-token requests in a 4,096-token cache, none preempted,
    though priority would preempt on vLLM), where vLLM under the same policy admits on prompts
    and preempts. After the first request (alone when it arrives) the better-priority ones are
    admitted first."""
    from servesim.sim.policies import Policy

    prio = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    w = Workload(np.zeros(10), np.full(10, 256), np.full(10, 768), priority=prio)
    eng = get_engine("trtllm").with_overrides(response_s=0.0)  # the engine's own timing
    trt = with_kv_tokens(dep(engine=eng, policy=Policy("priority")), 4096)
    cols = simulate(trt, w).columns()
    assert cols["preemptions"].sum() == 0
    assert _most_in_service(cols) == 4
    assert (cols["generated_tokens"] == 768).all()
    urgent = cols["priority"] == 0
    assert cols["scheduled_s"][urgent].max() <= cols["scheduled_s"][1:5].min()
    assert cols["scheduled_s"][0] < cols["scheduled_s"][urgent].min()
    vllm = with_kv_tokens(dep(policy=Policy("priority")), 4096)
    vcols = simulate(vllm, w).columns()
    assert _most_in_service(vcols) > 4 and vcols["preemptions"].sum() > 0


def test_sglang_admits_a_prompt_only_with_room_left_for_decoding() -> None:
    """SGLang's PrefillAdder admits a waiting request only if its prompt and its max new
    tokens (clipped at 4,096) fit what is free after 0.7 (falling to 0.098 over 600 decode
    steps) × each running request's remaining max new tokens. Four 1,000 + 3,000-token
    requests on a cache of 8,000 tokens: the first goes alone (4,001 tokens spent in the
    pass), so the second (4,000 ≥ 8,000 − 4,001) waits for the next pass, after the first's
    prefill: 6,999 free − 0.7 × 2,999 ≈ 4,900 > 4,000, and the third waits again. vLLM admits
    every prompt that reaches it (the first goes alone, ahead of the others' frontend)."""
    assert get_engine("sglang").new_token_ratio == pytest.approx((0.7, 0.098, 600, 4096))
    w = Workload(np.zeros(4), np.full(4, 1000), np.full(4, 3000))
    sglang = with_kv_tokens(dep(engine=get_engine("sglang")), 8000)
    assert sglang.memory().kv_tokens == 8000
    cols = simulate(sglang, w).columns()
    starts = np.sort(cols["scheduled_s"])
    assert starts[0] < starts[1] < cols["first_token_s"].max()  # (after the frontend)
    assert starts[2] > starts[1]  # 4,900 − 4,001 leaves too little for the third
    assert (cols["generated_tokens"] == 3000).all()
    vllm = np.sort(simulate(with_kv_tokens(dep(), 8000), w).columns()["scheduled_s"])
    assert vllm[1] == vllm[3]


@pytest.mark.parametrize(
    ("prompt", "output", "rate", "chunked"),
    [(500, 1, 10.0, True), (8000, 2, 8.0, False), (2000, 64, 4.0, True)],
)
def test_the_mean_batch_counts_every_request_from_its_scheduling_to_its_end(
    prompt: int, output: int, rate: float, chunked: bool
) -> None:
    """Mean sequences running is the time mean of the requests between being scheduled and
    finishing: a prompt counts during its prefill iteration too. The series sampled before
    an iteration admitted its prompts, so one-token outputs showed a mean batch of 0."""
    dep = Deployment(model=LLAMA8, device=H100, chunked_prefill=chunked)
    wl = synthetic(100, rate, Fixed(prompt), Fixed(output), seed=3)
    res = simulate(dep, wl)
    c = res.columns()
    s = res.summary()
    span = c["finish_s"].max() - c["arrival_s"].min()
    by_hand = float((c["finish_s"] - c["scheduled_s"]).sum()) / span
    assert s["mean_batch_size"] == pytest.approx(by_hand, rel=1e-6)
