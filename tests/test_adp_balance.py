"""TensorRT-LLM attention-DP balancing (`attention_dp_config.enable_balance`): a context request
waits until every DP rank has one, or the pass counter reaches `timeout_iters`, or a rank has
nothing to decode (PyExecutor._balance_adp_requests). Figures from the predictor's own steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.sim.replica import dp_rank_of
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
CORE = get_engine("trtllm").with_overrides(request_overhead_s=0.0, tokenize_s_per_token=0.0)


def dep(timeout: int, dp: int = 2) -> Deployment:
    return Deployment(
        model=LLAMA8,
        device=H100,
        engine=CORE.with_overrides(adp_balance_timeout_iters=timeout),
        parallel=Parallel(dp=dp),
        max_num_batched_tokens=8192,
        chunked_prefill=False,
        latency_model="roofline",  # the timings below are laid out on its step times
    )


def first_tokens(d: Deployment, late: list[tuple[float, int]], out: int = 40) -> np.ndarray:
    """Two 2,000-token prompts decoding `out` tokens from 0 (one per rank), then `late`
    (arrival s, prompt tokens) requests of 5 output tokens; every request's first-token time."""
    arr = np.array([0.0, 0.0] + [t for t, _ in late])
    prompts = np.array([2000, 2000] + [p for _, p in late])
    outs = np.array([out, out] + [5] * len(late))
    return simulate(d, Workload(arr, prompts, outs)).columns()["first_token_s"]


def _decode_step_s(d: Deployment) -> float:
    return d.predictor().iteration(BatchShape(2, 2010)).seconds


def test_a_lone_prompt_waits_for_the_timeout_in_whole_decode_steps() -> None:
    t_b = 0.12  # while both earlier requests decode
    off = first_tokens(dep(0), [(t_b, 100)])
    step = _decode_step_s(dep(0))
    # The pass counter runs from the start, as TensorRT-LLM's does: the two prompts' passes,
    # then the decode passes up to the one in flight when the prompt arrives (it is seen at
    # that pass's end). The prompt goes at the next multiple of the timeout.
    passes = 2 + math.ceil((t_b - off[1]) / step)
    for timeout in (6, 20):
        on = first_tokens(dep(timeout), [(t_b, 100)])
        assert np.allclose(on[:2], off[:2])  # the first two never wait (the engine was idle)
        held = (on[2] - off[2]) / step
        # Held back whole decode steps (each a little longer than the reference one as the
        # context grows): 5 at timeout 6, 13 at timeout 20 (7 passes before it).
        assert round(held) == timeout - passes % timeout, (held, passes)
        assert abs(held - round(held)) < 0.25, held


def test_prompts_on_every_rank_go_at_once() -> None:
    # Requests 2 and 3 land on different ranks of two: together they cover both.
    assert {dp_rank_of(2, 2), dp_rank_of(3, 2)} == {0, 1}
    late = [(0.12, 100), (0.12, 100)]
    on, off = first_tokens(dep(20), late), first_tokens(dep(0), late)
    step = _decode_step_s(dep(0))
    # One iteration takes both (each rank its own), a step or two after the first one goes
    # without balancing.
    assert on[2] == on[3] and on[2] - off[2] < 3 * step
    # One of them alone waits for the timeout's boundary: 13 steps more (as in the test above).
    assert round((first_tokens(dep(20), late[:1])[2] - off[2]) / step) == 13


def test_a_rank_without_decodes_releases_the_wait() -> None:
    """With an endless timeout the prompt still goes once fewer sequences decode than there
    are ranks: the two 12-token requests end, and it runs at the next pass."""
    on = first_tokens(dep(10_000), [(0.06, 100)], out=12)
    off = first_tokens(dep(0), [(0.06, 100)], out=12)
    assert on[2] > off[2] and np.isfinite(on[2])
    assert on[2] - off[2] < 12 * _decode_step_s(dep(0))


def test_balancing_needs_attention_dp_and_a_valid_timeout() -> None:
    one = [(0.12, 100)]
    assert first_tokens(dep(20, dp=1), one)[2] == pytest.approx(
        first_tokens(dep(0, dp=1), one)[2], rel=1e-12
    )
    with pytest.raises(ServesimError, match="adp_balance_timeout_iters"):
        CORE.with_overrides(adp_balance_timeout_iters=-1)
