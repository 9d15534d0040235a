"""Overlap scheduling as SGLang and TensorRT-LLM run it: an iteration's results are processed
only after the next iteration has been launched, so the first tokens of the prompts it
finished (and a disaggregated prefill server's KV, which leaves with them) go out then
(`EngineProfile.results_after_next_launch`). The launches are the predictor's own host and
scheduling figures, so every expected time below is composed from them by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from properties_lib import case_of, run_case

from servesim.sim import cluster as cluster_module
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.simulate import simulate
from servesim.sim.transfer import Network
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


def engine(defers: bool, name: str = "sglang"):
    return get_engine(name).with_overrides(
        request_overhead_s=0.0, tokenize_s_per_token=0.0, results_after_next_launch=defers
    )


def ttft(defers: bool, prompts: list[int], name: str = "sglang") -> np.ndarray:
    dep = Deployment(LLAMA8, H100, engine=engine(defers, name))
    w = Workload(np.zeros(len(prompts)), np.array(prompts), np.full(len(prompts), 5))
    return simulate(dep, w).columns()["ttft_s"]


def test_the_engines_that_defer_their_results() -> None:
    assert get_engine("sglang").results_after_next_launch
    assert get_engine("trtllm").results_after_next_launch
    assert not get_engine("vllm").results_after_next_launch


def test_a_host_bound_prefill_waits_for_the_next_steps_launch() -> None:
    """A 100-token prefill is host-bound on H100 (its iteration is exactly its eager launch
    plus the scheduler's overhead), so its first token leaves after the next launch: the
    request's first decode step, graph-replayed, whose launch is the scheduler's overhead."""
    pred = Deployment(LLAMA8, H100, engine=engine(True)).predictor()
    launch = pred.host_s(100, 1, 0) + pred.overhead_s(0, 1)
    assert pred.step_s(0, 0, ((100, 0),)) == pytest.approx(launch, rel=1e-12)  # host-bound
    assert pred.host_s(1, 0, 1) == 0.0  # the decode step replays a CUDA graph
    delay = ttft(True, [100]) - ttft(False, [100])
    assert delay[0] == pytest.approx(pred.overhead_s(1, 0), rel=1e-9)
    assert (ttft(True, [100], "trtllm") > ttft(False, [100], "trtllm")).all()


def test_a_gpu_bound_prefill_hides_the_next_launch() -> None:
    """A 16,000-token prefill's kernels outlast its launch by far more than the next launch,
    so its result is ready later than that launch ends: no wait."""
    pred = Deployment(LLAMA8, H100, engine=engine(True)).predictor()
    launch = pred.host_s(16000, 1, 0) + pred.overhead_s(0, 1)
    assert pred.step_s(0, 0, ((16000, 0),)) > launch + pred.overhead_s(1, 0)
    assert ttft(True, [16000])[0] == ttft(False, [16000])[0]


def test_a_prefill_server_posts_the_kv_after_launching_the_next_prefill(monkeypatch) -> None:
    """SGLang PD: A's prefill runs alone; B, sent 1 ms later, is the prefill server's next
    batch. A's KV (and first token) goes out only after B's eager launch, which is as long as
    B's iteration (host-bound): recorded at the network, A's bytes start at two prefills'
    time, not one; B's, with no batch behind it, at the end of its own prefill."""
    starts: list[tuple[float, float]] = []

    class Recording(Network):
        def start(self, t, src, dst, nbytes, latency, payload, cap=math.inf):  # type: ignore[override]
            starts.append((t, nbytes))
            return super().start(t, src, dst, nbytes, latency, payload, cap)

        def start_many(self, t, items, cap=math.inf):  # type: ignore[override]
            starts.extend((t, nbytes) for _, _, nbytes, _, _ in items)
            return super().start_many(t, items, cap)

    monkeypatch.setattr(cluster_module, "Network", Recording)
    pred = Deployment(LLAMA8, H100, engine=engine(True)).predictor()
    one = pred.step_s(0, 0, ((100, 0),))
    w = Workload(np.array([0.0, 0.001]), np.array([100, 100]), np.array([5, 5]))
    for defers, a_start in ((False, one), (True, 2 * one)):
        starts.clear()
        pool = Deployment(LLAMA8, H100, engine=engine(defers))
        simulate(DisaggDeployment(pool, pool, "infiniband"), w)
        assert sorted(t for t, _ in starts) == [
            pytest.approx(a_start, rel=1e-9),
            pytest.approx(2 * one, rel=1e-9),
        ]


def test_a_request_never_finishes_before_its_held_back_first_token() -> None:
    """The loop processes iterations' results in order, so a request's last token leaves no
    earlier than its first one, which waited for the next launch. Two cases the simulator
    fuzzer found (`scripts/fuzz.py --seed 62`, examples 193 and 623, reduced): two-token
    requests on a host-bound TensorRT-LLM replica, whose first token, held back past the next
    iteration and its response-loop delivery, came out a rounding error after their finish; and
    a semi-PD SGLang pair whose decode lane finished a three-token request before its prefill
    lane let the first token go. Both broke the run's conservation check; every property
    holds now."""
    colocated = case_of(
        model="facebook/opt-13b", device="a100_sxm", engine="trtllm", overlap=True,
        max_num_seqs=3, max_num_batched_tokens=1106, chunked_prefill=True, kv_factor=1.0,
        prefix_caching=False, prompts=[2] * 13, outputs=[2] * 13,
    )  # fmt: skip
    semipd = case_of(
        kind="semipd", tp=4, engine="sglang", replicas=3, max_num_seqs=2,
        chunked_prefill=False, kv_factor=5.0, router="least_kv",
        semipd={"share": 0.8, "controller": False, "interval_s": 0.5, "window_s": 0.01,
                "ttft_s": 0.001, "tpot_s": 0.02},
        prompts=[2, 8, 5, 5, 2], outputs=[1, 1, 3, 4, 3],
    )  # fmt: skip
    assert run_case(colocated) is None
    assert run_case(semipd) is None
    # A semi-PD lane that recomputes a request whose first token another lane held back
    # (`scripts/fuzz.py --seed 777`, example 2675) finishes it no earlier than that token.
    recomputed = case_of(
        kind="semipd", model="Qwen/Qwen3-8B", device="a100_sxm", engine="sglang", replicas=3,
        max_num_seqs=45, kv_factor=1.0, prefix_caching=False, router="least_loaded",
        semipd={"share": 0.5, "controller": True, "interval_s": 0.005, "window_s": 0.1,
                "ttft_s": 0.05, "tpot_s": 0.1},
        prompts=[3, 2, 7, 6, 7, 1, 6, 2, 1, 6, 1, 7, 6, 5, 4, 2, 5, 4, 5, 6, 5, 5],
        outputs=[3, 3, 2, 3, 5, 7, 2, 1, 3, 4, 8, 5, 6, 4, 7, 4, 8, 8, 1, 2, 1, 5],
        arrivals=[0.0, 0.0, 0.0048, 0.0052, 0.0068, 0.0076, 0.0079, 0.0085, 0.0085, 0.0097,
                  0.0114, 0.0118, 0.0131, 0.0144, 0.0145, 0.0153, 0.0189, 0.0196, 0.0207,
                  0.0230, 0.0233, 0.0248],
    )  # fmt: skip
    assert run_case(recomputed) is None
