"""TensorRT-LLM batch waiting (`batch_wait_timeout_iters`, `batch_wait_max_tokens_ratio`):
while decodes run, waiting prompts are held back until an iteration would carry enough tokens
or they waited the timeout; an idle engine never waits. Figures composed from the
predictor's own iterations."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
# TensorRT-LLM's loop alone: overlap scheduling, mixed iterations, no frontend (first tokens
# out at the iteration's end: tests/test_overlap_results.py times their wait).
CORE = get_engine("trtllm").with_overrides(
    request_overhead_s=0.0,
    tokenize_s_per_token=0.0,
    response_s=0.0,
    results_after_next_launch=False,
)


def dep(iters: int, ratio: float, dp: int = 1) -> Deployment:
    eng = CORE.with_overrides(batch_wait_timeout_iters=iters, batch_wait_max_tokens_ratio=ratio)
    return Deployment(
        model=LLAMA8,
        device=H100,
        engine=eng,
        parallel=Parallel(dp=dp),
        max_num_batched_tokens=8192,
        chunked_prefill=False,
    )


def run(d: Deployment, t_b: float, prompt_b: int = 100) -> dict[str, np.ndarray]:
    """A: 2000-token prompt, 40 tokens, at 0; B: `prompt_b` tokens, 5 out, at t_b."""
    w = Workload(np.array([0.0, t_b]), np.array([2000, prompt_b]), np.array([40, 5]))
    return simulate(d, w).columns()


def test_a_prompt_waits_the_timeout_while_decodes_run() -> None:
    pred = dep(0, 0.0).predictor()
    a_prefill = pred.iteration(BatchShape(prefill=((2000, 0),))).seconds
    step = [0.0] + [pred.iteration(BatchShape(1, 2000 + j)).seconds for j in range(1, 9)]

    def mixed(j: int) -> float:  # step j with B's prompt in it
        return pred.iteration(BatchShape(1, 2000 + j, prefill=((100, 0),))).seconds

    t_b = a_prefill + 0.5 * step[1]  # during A's first decode step
    # No waiting: the pass planning step 3 sees B (overlap), so B's prompt runs in step 3.
    off = run(dep(0, 0.0), t_b)
    assert off["ttft_s"][0] == pytest.approx(a_prefill, rel=1e-9)
    assert off["first_token_s"][1] == pytest.approx(
        a_prefill + step[1] + step[2] + mixed(3), rel=1e-6
    )
    # Waiting 3 iterations (101 tokens never reach 0.9 × 8192): steps 3-5 run without it.
    wait = run(dep(3, 0.9), t_b)
    assert wait["ttft_s"][0] == pytest.approx(a_prefill, rel=1e-9)
    assert wait["first_token_s"][1] == pytest.approx(
        a_prefill + sum(step[1:6]) + mixed(6), rel=1e-6
    )
    # A prompt that fills the threshold goes at once: 7,500 + 1 ≥ 0.9 × 8192 = 7,372.8.
    big = run(dep(3, 0.9), t_b, prompt_b=7500)
    full = pred.iteration(BatchShape(1, 2003, prefill=((7500, 0),))).seconds
    assert big["first_token_s"][1] == pytest.approx(a_prefill + step[1] + step[2] + full, rel=1e-6)
    # Attention DP skips batch waiting (TRT-LLM checks `not enable_attention_dp`).
    assert run(dep(3, 0.9, dp=2), t_b)["ttft_s"][1] == pytest.approx(
        run(dep(0, 0.0, dp=2), t_b)["ttft_s"][1], rel=1e-12
    )


def test_an_idle_engine_does_not_wait() -> None:
    w = Workload(np.array([0.0]), np.array([1000]), np.array([5]))
    assert simulate(dep(40, 0.8), w).columns()["ttft_s"][0] == pytest.approx(
        simulate(dep(0, 0.0), w).columns()["ttft_s"][0], rel=1e-12
    )


def test_settings_are_checked() -> None:
    with pytest.raises(ServesimError, match="batch_wait_max_tokens_ratio"):
        CORE.with_overrides(batch_wait_max_tokens_ratio=1.5)
    with pytest.raises(ServesimError, match="batch_wait_timeout_iters"):
        CORE.with_overrides(batch_wait_timeout_iters=-1)
