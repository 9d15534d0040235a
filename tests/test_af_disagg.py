"""Attention–FFN disaggregation (MegaScale-Infer, arXiv:2504.02263; Janus): the pipelined
iteration, the activation transfer, and where splitting attention from the experts pays off."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from functools import cache

import pytest

from servesim.errors import ServesimError
from servesim.planner.af_split import SplitResult, af_splits, colocated
from servesim.predictor.af_disagg import (
    AFDisagg,
    AFDisaggPredictor,
    pipeline_s,
    transfer_bytes,
)
from servesim.sim.deployment import Deployment
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.links import Link
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

H100 = get_device("h100_sxm")
SGLANG = get_engine("sglang")
DSV3 = "deepseek-ai/DeepSeek-V3"


def test_transfer_bytes_and_seconds_hand_computed() -> None:
    """512 DeepSeek-V3 tokens send each hidden state (7168 bf16 values) to 8 experts: 512 × 8 ×
    7168 × 2 = 58,720,256 bytes each way per layer. Over 8 attention GPUs and 16 expert GPUs the
    attention side sends 1/8 each: 7,340,032 B over a 50 GB/s, 5 µs link = 151.8 µs."""
    m = load_model(DSV3)
    assert transfer_bytes(512, m) == 512 * 8 * 7168 * 2 == 58_720_256
    link = Link("ib", "ethernet", 50e9, 5e-6)
    pred = AFDisaggPredictor(m, H100, AFDisagg(16, 2, link=link), Parallel(dp=8), SGLANG)
    assert pred.transfer_s(512) == pytest.approx(5e-6 + 7_340_032 / 50e9, rel=1e-12)
    # More attention GPUs than expert GPUs: the expert side receives 1/16 and sets the time.
    wide = AFDisaggPredictor(m, H100, AFDisagg(16, 2, link=link), Parallel(dp=32), SGLANG)
    assert wide.transfer_s(512) == pytest.approx(5e-6 + 58_720_256 / 16 / 50e9, rel=1e-12)


def test_pipeline_matches_megascale_infer_closed_form() -> None:
    """With m·T_f ≥ T_a + T_e + 2·T_c the iteration is (T_a + T_e + 2·T_c) + T_f·(m·L − 1)
    (MegaScale-Infer §4); with m = 1 it is L·(T_a + T_e + 2·T_c), the stages in series."""
    rng = random.Random(0)
    for _ in range(200):
        t_a, t_e, t_c = rng.uniform(1, 10), rng.uniform(1, 10), rng.uniform(0, 3)
        layers, m = rng.randint(1, 80), rng.randint(1, 6)
        t, _ = pipeline_s(layers, m, t_a, t_e, t_c)
        trip = t_a + t_e + 2 * t_c
        t_f = max(t_a, t_e, t_c)
        if m * t_f >= trip:
            assert t == pytest.approx(trip + t_f * (m * layers - 1))
        assert t >= layers * m * t_f - 1e-9  # the busiest pool's work is a floor
        one, _ = pipeline_s(layers, 1, t_a, t_e, t_c)
        assert one == pytest.approx(layers * trip)


def test_two_microbatches_take_the_max_not_the_sum() -> None:
    """Balanced stages with m = 2: the iteration is about 2·L·max(T_a, T_e), not
    2·L·(T_a + T_e). DeepSeek-V3, 4 attention and 16 expert H100s joined by an NVLink-class
    scale-up link (450 GB/s, 2 µs; an NVL72 rack), where the two stages are within 25 %."""
    m = load_model(DSV3)
    link = Link("nvlink", "chip", 450e9, 2e-6)
    pred = AFDisaggPredictor(m, H100, AFDisagg(16, 2, link=link), Parallel(dp=4), SGLANG)
    b = pred.breakdown(512, 512 * 2048)
    ratio = b.attention_s / b.expert_s
    figures = (
        f"T_a {b.attention_s * 1e6:.1f} µs, T_e {b.expert_s * 1e6:.1f} µs, T_c "
        f"{b.transfer_s * 1e6:.1f} µs, L {b.layers}, iteration {b.seconds * 1e3:.2f} ms, "
        f"series {b.sequential_s * 1e3:.2f} ms"
    )
    assert 0.8 < ratio < 1.25, figures
    body = b.seconds - b.overhead_s
    closed, _ = pipeline_s(b.layers, 2, b.attention_s, b.expert_s, b.transfer_s)
    assert body == pytest.approx(closed, rel=1e-12)  # equal micro-batches: the formula itself
    assert body <= 1.1 * b.layers * 2 * max(b.attention_s, b.expert_s), figures
    assert body < 0.6 * b.layers * 2 * (b.attention_s + b.expert_s), figures


def _best(rows: list, what: str) -> SplitResult:
    assert rows, f"no {what} layout fits"
    return max(rows, key=lambda r: r.tokens_per_s_per_gpu)


@cache
def _layouts(name: str, batch: int | None) -> tuple[list, list]:
    """(AF splits, colocated layouts) of ≤ 32 H100s for decode at 2048 tokens of context and
    TPOT ≤ 100 ms: at `batch`, or each layout's capacity (None)."""
    m = load_model(name)
    af = af_splits(
        m, H100, SGLANG, 2048, 32, batch, 0.1, microbatches=(2, 3), latency_model="roofline"
    )
    return af, colocated(m, H100, SGLANG, 2048, 32, batch, 0.1, latency_model="roofline")


def _versus(name: str, batch: int | None) -> dict[str, SplitResult]:
    """The best AF split and the best colocated layouts: overall, wide EP (attention DP, one EP
    rank per GPU: SGLang's DeepEP layout) and attention TP8 (one node's tensor parallelism)."""
    af, co = _layouts(name, batch)
    return {
        "af": _best(af, "AF"),
        "best": _best(co, "colocated"),
        "wide_ep": _best([r for r in co if r.tp == 1 and r.ep == r.gpus], "wide-EP"),
        "tp8": _best([r for r in co if r.tp == 8], "TP8"),
    }


def _figures(name: str, v: dict[str, SplitResult]) -> str:
    return f"{name}: " + "; ".join(
        f"{k} {r.label} batch {r.batch} {r.iteration_s * 1e3:.1f} ms "
        f"{r.tokens_per_s_per_gpu:.0f} tok/s/GPU"
        for k, r in v.items()
    )


def test_af_pays_off_at_capacity_for_many_sparse_experts() -> None:
    """MegaScale-Infer's claim: for MoE models with many sparse experts, AF disaggregation gives
    more decode throughput per GPU under a latency target than colocated serving (its vLLM and
    TRT-LLM baselines: up to 1.9×). DeepSeek-V3 (256 experts, top-8), TPOT ≤ 100 ms, ≤ 32 H100s,
    each layout at the largest batch its KV cache holds: AF beats attention-TP8 colocation by
    ≥ 2× (the attention pool holds no experts, so it caches far more sequences; TP replicates
    MLA's latent cache) and wide EP with attention DP by ≥ 1.1× (the M2N exchange hides behind
    the ping-pong; wide EP's all-to-all crosses nodes on the critical path)."""
    v = _versus(DSV3, None)
    af = v["af"].tokens_per_s_per_gpu
    assert af >= 2.0 * v["tp8"].tokens_per_s_per_gpu, _figures(DSV3, v)
    assert af >= 1.1 * v["wide_ep"].tokens_per_s_per_gpu, _figures(DSV3, v)
    qwen = "Qwen/Qwen3-235B-A22B"
    w = _versus(qwen, None)
    assert w["af"].tokens_per_s_per_gpu >= 1.05 * w["tp8"].tokens_per_s_per_gpu, _figures(qwen, w)


@pytest.mark.parametrize("name", [DSV3, "Qwen/Qwen3-235B-A22B"])
def test_af_does_not_pay_off_at_small_batch(name: str) -> None:
    """At small batches the per-layer round trip (two network hops plus both stages) is on the
    critical path and there is too little work to overlap: at 16 sequences the best AF split
    gives less decode throughput per GPU than the best colocated layout of the same GPUs."""
    v = _versus(name, 16)
    assert v["af"].tokens_per_s_per_gpu < v["best"].tokens_per_s_per_gpu, _figures(name, v)


def test_af_does_not_pay_off_for_few_experts() -> None:
    """Mixtral-8x7B (8 experts, top-2: every expert sees a quarter of the tokens, so colocated
    expert GEMMs are already well fed) gains nothing from AF against wide EP at capacity, while
    DeepSeek-V3's gain over wide EP is at least 0.2 higher: the sparser the experts, the more
    disaggregation pays (MegaScale-Infer §2: sparsity starves colocated expert GEMMs)."""
    mix = "mistralai/Mixtral-8x7B-v0.1"
    v = _versus(mix, None)
    gain = v["af"].tokens_per_s_per_gpu / v["wide_ep"].tokens_per_s_per_gpu
    assert gain < 1.0, _figures(mix, v)
    d = _versus(DSV3, None)
    d_gain = d["af"].tokens_per_s_per_gpu / d["wide_ep"].tokens_per_s_per_gpu
    assert d_gain >= gain + 0.2, f"DeepSeek-V3 {d_gain:.2f}×, Mixtral {gain:.2f}×"
    small = _versus(mix, 16)
    assert small["af"].tokens_per_s_per_gpu < small["best"].tokens_per_s_per_gpu, _figures(
        mix, small
    )


def test_attention_pool_holds_no_experts_and_the_expert_pool_must_fit() -> None:
    """The attention GPUs' weights leave out the routed experts (DeepSeek-V3: ~19 GB of ~40 GB
    per GPU at dp 16 colocated); 4 expert GPUs cannot hold 656 GB of FP8 experts."""
    m = load_model(DSV3)
    af = Deployment(m, H100, Parallel(dp=8), SGLANG, af=AFDisagg(16))
    co = Deployment(m, H100, Parallel(dp=16, ep=16), SGLANG)
    assert af.memory().weight_bytes < 0.6 * co.memory().weight_bytes
    assert af.num_devices == 24
    assert af.price_per_hour == pytest.approx(24 * H100.price_per_hour)
    with pytest.raises(ServesimError, match="expert GPUs"):
        Deployment(m, H100, Parallel(dp=8), SGLANG, af=AFDisagg(4)).memory()


def test_af_refusals() -> None:
    """One clear sentence for impossible AF layouts and for combining it with another variant."""
    m = load_model(DSV3)
    with pytest.raises(ServesimError, match="divisor"):
        AFDisaggPredictor(m, H100, AFDisagg(12), Parallel(dp=8), SGLANG)
    with pytest.raises(ServesimError, match="has none"):
        AFDisaggPredictor(load_model("Qwen/Qwen3-8B"), H100, AFDisagg(8), Parallel(), SGLANG)
    with pytest.raises(ServesimError, match="not modelled together"):
        Deployment(m, H100, Parallel(dp=8), SGLANG, af=AFDisagg(16), nanoflow=True).predictor()


def test_decode_coefficients_follow_the_pipelined_time() -> None:
    """The simulator's affine decode step (secant over 128–4096 tokens per sequence) gives the
    AF iteration time at both ends of that range."""
    m = load_model(DSV3)
    pred = AFDisaggPredictor(m, H100, AFDisagg(16, 3), Parallel(dp=8), SGLANG)
    c0, c1 = pred.decode_step_coeffs(300)
    for per_seq in (128, 4096):
        ctx = 300 * per_seq
        assert c0 + c1 * ctx == pytest.approx(pred.step_s(300, ctx, ()), rel=1e-3)


def test_cli_predict_shows_the_af_breakdown_and_refuses_half_a_layout() -> None:
    """`predict --af-attention-gpus/--af-expert-gpus` prints the stage table; one of the two
    alone exits 2 with a sentence."""
    base = [sys.executable, "-m", "servesim.cli", "predict", "--model", DSV3]
    base += ["--device", "h100_sxm", "--engine", "sglang", "--decode-seqs", "256"]
    ok = subprocess.run(
        [*base, "--af-attention-gpus", "8", "--af-expert-gpus", "16", "--json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    import json

    af = json.loads(ok.stdout)["af_disagg"]
    assert af["gpus"] == 24 and af["microbatches"] == 2 and af["moe_layers"] == 58
    assert af["transfer_bytes"] == 128 * 8 * 7168 * 2
    bad = subprocess.run([*base, "--af-expert-gpus", "16"], capture_output=True, text=True)
    assert bad.returncode == 2 and "af-attention-gpus" in bad.stderr


def test_simulated_decode_runs_at_the_af_step_time() -> None:
    """`simulate` prices an AF replica's decode steps with the pipelined iteration: 32 requests
    arriving together (128-token prompts, 65 tokens out) on Qwen3-30B-A3B with 2 attention and 4
    expert H100s decode at the AF step time of 32 sequences (context 129–192 tokens each), within
    the secant's error over that range. The run's device count and price include the expert
    pool."""
    import numpy as np

    from servesim.sim.simulate import simulate
    from servesim.sim.workload import Workload

    m = load_model("Qwen/Qwen3-30B-A3B")
    dep = Deployment(m, H100, Parallel(dp=2), SGLANG, af=AFDisagg(4, 2))
    pred = dep.predictor()
    n, prompt, out = 32, 128, 65
    w = Workload(np.zeros(n), np.full(n, prompt), np.full(n, out))
    res = simulate(dep, w)
    tpot = float(np.mean(res.columns()["tpot_s"]))
    steps = [pred.step_s(n, n * (prompt + j), ()) for j in range(1, out)]
    expected = sum(steps) / len(steps)
    assert tpot == pytest.approx(expected, rel=0.05), (
        f"TPOT {tpot * 1e3:.3f} ms vs {expected * 1e3:.3f}"
    )
    summary = res.summary()
    assert summary["devices"] == 6, summary


def test_cli_plan_searches_the_split() -> None:
    """`plan --af-disagg` prints the AF splits beside the colocated layouts and exits 0 when one
    meets the TPOT target; a second GPU type is refused (one attention device)."""
    base = [sys.executable, "-m", "servesim.cli", "plan", "--model", "Qwen/Qwen3-30B-A3B"]
    base += ["--engines", "sglang", "--tp", "1", "--af-disagg", "--af-max-gpus", "8"]
    ok = subprocess.run(
        [*base, "--gpus", "h100_sxm", "--af-batch", "256", "--af-microbatches-search", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert ok.returncode == 0, ok.stderr
    assert "af1+" in ok.stdout and "(colocated)" in ok.stdout and "best AF split" in ok.stdout
    bad = subprocess.run([*base, "--gpus", "h100_sxm,l40s"], capture_output=True, text=True)
    assert bad.returncode == 2 and "one --gpus" in bad.stderr


def test_cli_plan_split_prices_kernels_by_the_plans_latency_model(capsys) -> None:
    """`plan --af-disagg --latency-model roofline` prices the splits on the roofline, as
    `af_splits(..., latency_model="roofline")` does; it used the default (measured kernels)
    whatever the flag said. A kernel fit file, which the split search cannot use, is refused."""
    from servesim.cli import main as cli

    m = load_model("Qwen/Qwen3-30B-A3B")
    args = ["plan", "--model", m.name, "--gpus", "h100_sxm", "--engines", "vllm", "--tp", "1"]
    args += ["--af-disagg", "--af-max-gpus", "4", "--af-batch", "64"]
    args += ["--af-microbatches-search", "2"]
    printed = {}
    for lm in ("roofline", "measured"):
        assert cli.main([*args, "--latency-model", lm]) == 0
        printed[lm] = capsys.readouterr().out
        best = af_splits(m, H100, get_engine("vllm"), 2048, 4, 64, 0.1, (1,), (2,), None, None, lm)
        assert f"{best[0].iteration_s * 1e3:.2f}" in printed[lm]
    assert printed["roofline"] != printed["measured"]
    assert cli.main([*args, "--fit", "fit.json"]) == 2
    assert "--fit does nothing with --af-disagg" in capsys.readouterr().err
