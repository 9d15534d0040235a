"""TensorRT-LLM's serving process handles every streamed response on one loop (detokenising,
the OpenAI chunk), so a client sees a token once that loop has handled it: when the engine
emits responses faster than the loop handles them they queue (first in, first out), and first
tokens and finishes reach the client late (`EngineProfile.response_s`)."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.decode_stretch import DecodeStretch
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed, range_ratio_length
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import TRTLLM_RESPONSE_S, get_engine
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


def test_the_engines_settings() -> None:
    # NVIDIA's capture on a Grace host, 112.64 µs mean a response, on x86 (1.63x faster).
    trt = get_engine("trtllm")
    assert trt.response_s == TRTLLM_RESPONSE_S == pytest.approx(69.10e-6, rel=1e-4)
    assert (trt.stream_interval, trt.postprocess_workers) == (1, 0)
    assert trt.response_cost_s() == trt.response_s
    assert trt.with_overrides(postprocess_workers=4).response_cost_s() == trt.response_s / 4
    assert get_engine("vllm").response_s == get_engine("sglang").response_s == 0.0
    assert trt.on_host(1.63).response_s == pytest.approx(112.64e-6, rel=1e-12)
    for bad in ({"stream_interval": 0}, {"postprocess_workers": -1}, {"response_s": -1.0}):
        with pytest.raises(ServesimError, match="must be"):
            trt.with_overrides(**bad)


class _Loop(DecodeStretch):
    __slots__ = ("fe_cost", "fe_t", "fe_w")

    def __init__(self, cost: float) -> None:
        self.fe_cost, self.fe_t, self.fe_w = cost, 0.0, 0.0


@pytest.mark.parametrize(
    ("w0", "t0", "step0", "slope", "k", "n"),
    [
        (0.0, 1.0, 0.010, 0.0, 40, 8),  # the loop keeps up: a step's work each time
        (0.0, 1.0, 0.004, 1e-5, 50, 100),  # it falls behind and the queue grows
        (0.5, 1.0, 0.020, 2e-4, 30, 64),  # a backlog drains, then stays at a step's work
        (0.05, 1.0, 0.005, 1e-4, 200, 60),  # the queue grows, then the steps outlast it
    ],
)
def test_a_stretch_delivers_as_its_steps_one_by_one(w0, t0, step0, slope, k, n) -> None:
    """The closed form of a decode stretch (`_deliver_steps`) equals k single steps through
    the queue (`_deliver`): W_j = max(0, W_{j-1} - gap) + n x cost after each step."""
    cost = 69e-6
    seg = (t0, k, step0, slope, 0.0)
    one, many = _Loop(cost), _Loop(cost)
    for loop in (one, many):
        loop.fe_w, loop.fe_t = w0, 0.9
    seen = many._deliver_steps(seg, k, n)
    for j in range(1, k + 1):
        last = one._deliver(DecodeStretch._step_end_s(seg, j), n * cost)
    assert seen == pytest.approx(last, rel=1e-12)
    assert (many.fe_w, many.fe_t) == pytest.approx((one.fe_w, one.fe_t), rel=1e-12)


def test_a_lone_request_waits_for_its_own_responses_only() -> None:
    """One request: the idle loop hands its first token on one response later than the
    engine made it and its last token likewise (TTFT and E2E + 69 µs, TPOT unchanged)."""
    w = Workload(np.array([0.0]), np.array([1000]), np.array([20]))
    plain = get_engine("trtllm").with_overrides(response_s=0.0)
    a = simulate(Deployment(LLAMA8, H100, engine=plain), w).columns()
    b = simulate(Deployment(LLAMA8, H100, engine=get_engine("trtllm")), w).columns()
    assert b["ttft_s"][0] - a["ttft_s"][0] == pytest.approx(TRTLLM_RESPONSE_S, rel=1e-6)
    assert b["e2e_s"][0] - a["e2e_s"][0] == pytest.approx(TRTLLM_RESPONSE_S, rel=1e-6)
    assert b["tpot_s"][0] == pytest.approx(a["tpot_s"][0], rel=1e-9)


def test_a_loop_slower_than_the_engine_caps_what_clients_see() -> None:
    """64 clients of a fast engine with a 1 ms response: the loop handles at most 1,000
    responses a second, one per token here, so the clients see at most 1,000 tokens a second
    however fast the engine decodes; with the clients out of step (output lengths 48-64, a
    ramp) a new request's first token waits behind the queued responses of the others (a
    queue that holds its length passes a request's later tokens on at the engine's pace, and
    the engine, holding fewer requests, steps faster: TPOT need not rise); `stream_interval` 8
    (a response every 8 steps) lifts the cap."""
    loop = ClosedLoop(64, 640, Fixed(256), range_ratio_length(56, 1 / 7), ramp_s=1.0)
    slow = get_engine("trtllm").with_overrides(response_s=1e-3)
    fast = get_engine("trtllm").with_overrides(response_s=0.0)
    runs = {"slow": slow, "fast": fast, "si8": slow.with_overrides(stream_interval=8)}
    out = {}
    for name, e in runs.items():
        cols = simulate(Deployment(LLAMA8, H100, engine=e), closed_loop=loop).columns()
        done = cols["finish_s"] >= 0
        span = cols["finish_s"][done].max() - cols["arrival_s"][done].min()
        out[name] = (
            float(np.mean(cols["tpot_s"][done])),
            float(np.mean(cols["ttft_s"][done])),
            cols["generated_tokens"][done].sum() / span,
        )
    assert out["fast"][0] < 0.02  # the engine alone decodes 64 sequences in well under 64 ms
    assert out["slow"][2] <= 1000 * 1.01  # tokens a second the clients see
    assert out["slow"][1] > 3 * out["fast"][1]  # first tokens wait behind the queue
    assert out["si8"][2] > 3 * out["slow"][2]


def test_the_cli_sets_the_loop(capsys, tmp_path, cli_mean_ttft_s) -> None:
    """`--response-us 0` turns the loop off: a lone request's TTFT drops by the 69 µs of its
    first token's response; a stream interval below 1 is one sentence and exit 2."""
    from servesim.cli.main import main

    args = "simulate --model meta-llama/Llama-3.1-8B --device h100_sxm --engine trtllm"
    args += " --num-requests 1 --rate 1 --prompt fixed:1000 --output fixed:4"
    paid, free = cli_mean_ttft_s(args), cli_mean_ttft_s(args + " --response-us 0")
    assert paid - free == pytest.approx(TRTLLM_RESPONSE_S, rel=1e-6)
    assert main(f"{args} --out {tmp_path / 'x'} --stream-interval 0".split()) == 2
    err = capsys.readouterr().err
    assert "--stream-interval must be ≥ 1" in err and "Traceback" not in err
