"""Per-request costs outside the GPU: the serving frontend (HTTP, tokenising, the first token's
way back) that every request pays once, on top of its queueing and prefill."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import EngineProfile, get_engine
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_a_lone_request_pays_the_frontend_then_its_prefill(engine: str) -> None:
    """Claim: a lone request's TTFT is 7 ms of frontend + 2.5 µs per prompt token of
    tokenising + its prefill; its decode steps are untouched (TPOT is the steps' mean).
    TensorRT-LLM's serving loop also handles each response (`response_s`): the idle loop
    passes the first and the last token on that much later."""
    d = Deployment(LLAMA8, H100, engine=get_engine(engine))
    pred = d.predictor()
    res = simulate(d, Workload(np.array([0.0]), np.array([2000]), np.array([5])))
    cols = res.columns()
    front = 7.0e-3 + 2000 * 2.5e-6  # = 12 ms, by hand from the engine's constants
    assert d.engine.frontend_s(2000) == pytest.approx(0.012, rel=1e-12)
    prefill = pred.iteration(BatchShape(prefill=((2000, 0),))).seconds
    loop = d.engine.response_cost_s()
    assert loop == (pytest.approx(69.1e-6, rel=1e-3) if engine == "trtllm" else 0.0)
    assert cols["ttft_s"][0] == pytest.approx(front + prefill + loop, rel=1e-9)
    steps = [pred.iteration(BatchShape(1, 2000 + j)).seconds for j in range(1, 5)]
    assert cols["tpot_s"][0] == pytest.approx(sum(steps) / 4, rel=1e-9)
    assert cols["e2e_s"][0] == pytest.approx(front + prefill + sum(steps) + loop, rel=1e-9)
    assert cols["generated_tokens"][0] == 5


def test_the_frontend_keeps_arrival_order() -> None:
    """Claim: a long prompt's tokenising holds back a short one that arrives just after it (the
    frontend passes requests on in order): the second one reaches the engine no earlier than
    the first, and both pay their own tokenising."""
    e = get_engine("vllm")
    d = Deployment(LLAMA8, H100, engine=e)
    w = Workload(np.array([0.0, 0.001]), np.array([8000, 100]), np.array([2, 2]))
    cols = simulate(d, w).columns()
    seen_first = e.frontend_s(8000)  # 27 ms
    seen_second = max(seen_first, 0.001 + e.frontend_s(100))  # held back: 27 ms, not 8.25 ms
    assert seen_second == pytest.approx(seen_first)
    # The engine starts the first prompt when it sees it; the second waits for that iteration.
    assert cols["scheduled_s"][0] == pytest.approx(seen_first, rel=1e-12)
    assert cols["scheduled_s"][1] >= seen_second


def test_a_closed_loop_client_pays_the_frontend_on_every_request() -> None:
    """Claim: one closed-loop client sends its next request when the last one ends, and each
    request pays the frontend again: request 2 arrives at request 1's finish and its TTFT is
    the same frontend + prefill as request 1's."""
    e = get_engine("sglang")
    d = Deployment(LLAMA8, H100, engine=e)
    pred = d.predictor()
    loop = ClosedLoop(1, 3, Fixed(1000), Fixed(3))
    cols = simulate(d, closed_loop=loop).columns()
    prefill = pred.iteration(BatchShape(prefill=((1000, 0),))).seconds
    ttft = e.frontend_s(1000) + prefill
    assert np.allclose(cols["ttft_s"], ttft, rtol=1e-9)
    assert np.allclose(cols["arrival_s"][1:], cols["finish_s"][:-1], rtol=0, atol=1e-12)


def test_turning_the_frontend_off_gives_the_engine_alone() -> None:
    """Claim: with no frontend cost TTFT is the prefill alone, plus (TensorRT-LLM's overlap
    loop returns the first token after launching the next iteration) what the next launch
    adds past the prefill's end: its decode step's scheduling, as the prefill is host-bound."""
    e = get_engine("trtllm").with_overrides(
        request_overhead_s=0.0, tokenize_s_per_token=0.0, response_s=0.0
    )
    d = Deployment(LLAMA8, H100, engine=e)
    cols = simulate(d, Workload(np.array([0.0]), np.array([512]), np.array([2]))).columns()
    pred = d.predictor()
    prefill = pred.iteration(BatchShape(prefill=((512, 0),))).seconds
    launch = pred.host_s(512, 1, 0) + pred.overhead_s(0, 1)
    assert prefill == pytest.approx(launch, rel=1e-12)  # host-bound
    assert cols["ttft_s"][0] == pytest.approx(prefill + pred.overhead_s(1, 0), rel=1e-9)


def test_bad_overheads_are_refused_in_one_sentence() -> None:
    with pytest.raises(ServesimError, match="request_overhead_s must be ≥ 0"):
        EngineProfile(request_overhead_s=-1e-3)
    with pytest.raises(ServesimError, match="tokenize_s_per_token"):
        get_engine("vllm").with_overrides(tokenize_s_per_token=float("nan"))
    with pytest.raises(ServesimError, match="disagg_first_token 'client'"):
        get_engine("vllm").with_overrides(disagg_first_token="client")
