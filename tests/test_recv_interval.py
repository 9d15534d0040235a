"""SGLang's `--scheduler-recv-interval`: a busy engine reads new requests only every N decode
steps (and right after an iteration with prefill tokens), so an arrival during a decode run
waits for the next multiple of N. Figures composed from the predictor's own iterations."""

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

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
# SGLang's loop alone: overlap scheduling, prefills in their own iterations, no frontend (and
# first tokens out at the iteration's end: tests/test_overlap_results.py times their wait).
CORE = get_engine("sglang").with_overrides(
    request_overhead_s=0.0, tokenize_s_per_token=0.0, results_after_next_launch=False
)


def dep(every: int) -> Deployment:
    return Deployment(
        model=LLAMA8, device=H100, engine=CORE.with_overrides(recv_interval_steps=every)
    )


def run(every: int, t_b: float) -> dict[str, np.ndarray]:
    """A: 2000-token prompt, 40 tokens, at 0; B: 100-token prompt, 5 tokens, at t_b."""
    w = Workload(np.array([0.0, t_b]), np.array([2000, 100]), np.array([40, 5]))
    return simulate(dep(every), w).columns()


def test_arrival_during_a_decode_run_waits_for_the_receiving_pass() -> None:
    pred = dep(1).predictor()
    a_prefill = pred.iteration(BatchShape(prefill=((2000, 0),))).seconds
    steps = [pred.iteration(BatchShape(1, 2000 + j)).seconds for j in range(1, 9)]
    b_prefill = pred.iteration(BatchShape(prefill=((100, 0),))).seconds
    t_b = a_prefill + 0.5 * steps[0]  # during A's first decode step
    # Every pass reads (interval 1): overlap only, B is planned at the end of step 2.
    one = run(1, t_b)
    assert one["ttft_s"][0] == pytest.approx(a_prefill, rel=1e-9)
    assert one["first_token_s"][1] == pytest.approx(
        a_prefill + sum(steps[:2]) + b_prefill, rel=1e-6
    )
    # Interval 4: the pass after A's prefill read the queue (empty); the next read is after
    # the 4th decode step, so B's prefill starts there.
    four = run(4, t_b)
    assert four["ttft_s"][0] == pytest.approx(a_prefill, rel=1e-9)
    assert four["first_token_s"][1] == pytest.approx(
        a_prefill + sum(steps[:4]) + b_prefill, rel=1e-6
    )
    # Arriving in step 5 (after that read): the read after step 8.
    t_late = a_prefill + sum(steps[:4]) + 0.5 * steps[4]
    late = run(4, t_late)
    assert late["first_token_s"][1] == pytest.approx(
        a_prefill + sum(steps[:8]) + b_prefill, rel=1e-6
    )


def test_an_idle_engine_reads_at_once() -> None:
    w = Workload(np.array([0.0]), np.array([1000]), np.array([5]))
    lone = simulate(dep(30), w).columns()["ttft_s"][0]
    assert lone == pytest.approx(simulate(dep(1), w).columns()["ttft_s"][0], rel=1e-12)


def test_every_request_still_finishes_with_all_its_tokens() -> None:
    rng = np.random.default_rng(3)
    n = 200
    w = Workload(
        np.sort(rng.uniform(0.0, 5.0, n)),
        rng.integers(50, 3000, n),
        rng.integers(5, 300, n),
    )
    for every in (1, 10, 30):
        cols = simulate(dep(every), w).columns()
        assert (cols["generated_tokens"] == w.output_tokens).all()
        assert (cols["first_token_s"] >= cols["arrival_s"]).all()
    slow = simulate(dep(30), w).columns()["ttft_s"].mean()
    assert slow > simulate(dep(1), w).columns()["ttft_s"].mean()


def test_the_interval_is_a_whole_number_of_steps() -> None:
    with pytest.raises(ServesimError, match="recv_interval_steps"):
        CORE.with_overrides(recv_interval_steps=0)


def test_without_overlap_the_pass_after_each_step_reads_when_the_interval_comes_round() -> None:
    """SGLang's receive skipper also gates the loop without overlap (`recv_requests` runs at
    the top of both event loops): B, arriving during A's first decode step, is read by the
    pass right after that step with interval 1 (one step sooner than with overlap), and by
    the pass after the 4th step with interval 4."""
    plain = CORE.with_overrides(overlap_scheduling=False)
    pred = Deployment(model=LLAMA8, device=H100, engine=plain).predictor()
    a_prefill = pred.iteration(BatchShape(prefill=((2000, 0),))).seconds
    steps = [pred.iteration(BatchShape(1, 2000 + j)).seconds for j in range(1, 9)]
    b_prefill = pred.iteration(BatchShape(prefill=((100, 0),))).seconds
    t_b = a_prefill + 0.5 * steps[0]

    def first_token_of_b(every: int, t: float) -> float:
        d = Deployment(
            model=LLAMA8, device=H100, engine=plain.with_overrides(recv_interval_steps=every)
        )
        w = Workload(np.array([0.0, t]), np.array([2000, 100]), np.array([40, 5]))
        return float(simulate(d, w).columns()["first_token_s"][1])

    assert first_token_of_b(1, t_b) == pytest.approx(a_prefill + steps[0] + b_prefill, rel=1e-6)
    assert first_token_of_b(4, t_b) == pytest.approx(
        a_prefill + sum(steps[:4]) + b_prefill, rel=1e-6
    )
    t_late = a_prefill + sum(steps[:4]) + 0.5 * steps[4]
    assert first_token_of_b(4, t_late) == pytest.approx(
        a_prefill + sum(steps[:8]) + b_prefill, rel=1e-6
    )
