"""Profiling: timing statistics, tables calibrate reads, and the measured predictor."""

from __future__ import annotations

import time

import numpy as np
import pytest

from servesim.measure.measured_engine import measured_deployment
from servesim.predictor import calibrate
from servesim.predictor.profiled import (
    Curve,
    ForwardOverhead,
    OpTables,
    PackedAttention,
    dense_forward_s,
    fit_forward_overhead,
)
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.devices import Catalog
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.model import spec_from_config

torch = pytest.importorskip("torch")

from servesim.measure.profile import ProfileConfig, Timer, gemm_shapes, profile_model  # noqa: E402

TINY = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}


def test_timer_reports_median_and_spread_of_a_known_delay():
    cfg = ProfileConfig(warmup=1, repeats=5)
    t = Timer(cfg, "cpu")(lambda: time.sleep(0.004))
    assert 0.004 <= t.median_s < 0.008 and t.repeats == 5
    assert t.p10_s <= t.median_s <= t.p90_s


def test_gemm_shapes_are_the_models_projections():
    m = spec_from_config(TINY, "tiny")
    shapes = {name: (n, k) for name, n, k in gemm_shapes(m)}
    assert shapes["qkv_proj"] == (4 * 32 + 2 * 2 * 32, 128)
    assert shapes["mlp_up_proj"] == (512, 128) and shapes["mlp_down_proj"] == (128, 256)
    assert shapes["lm_head"] == (1000, 128)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof")
    m = spec_from_config(TINY, "tiny")
    cfg = ProfileConfig(device="cpu").quick()
    return m, profile_model(m, out, cfg, "cpu_test")


def test_profile_writes_tables_calibrate_reads(profiled):
    m, res = profiled
    tables = calibrate.load_tables(res.out_dir)
    assert set(tables) == {"gemm_perf", "context_attention_perf", "generation_attention_perf"}
    cfg = ProfileConfig().quick()
    n_shapes = len(gemm_shapes(m))
    assert len(tables["gemm_perf"]["latency"]) == n_shapes * len(cfg.token_counts)
    vidur = calibrate.load_vidur(res.out_dir / "vidur")
    samples = calibrate.all_samples(tables, vidur)
    assert {"gemm", "attention_prefill", "attention_decode", "elementwise"} <= set(samples)
    # Latencies are milliseconds in the tables and plausible for one CPU core: a GEMM of 64 rows
    # does 64x the work of one row but does not take 64x longer (fixed costs). Whether it takes
    # longer at all is not checked: this model's GEMMs are so small (a 64 x 256 x 128 GEMM is
    # 2 MFLOP, ~10 us) that fixed costs carry them, and on a shared core the 64-row timings,
    # summed over the shapes, came out below the 1-row ones (0.20 against 0.24 ms) in one run.
    g = tables["gemm_perf"]
    lat = {}
    for n, k, mm, t in zip(g["n"], g["k"], g["m"], g["latency"], strict=True):
        lat.setdefault((n, k), {})[mm] = t
    assert all(0.0005 < v[1.0] < 5.0 for v in lat.values())
    rows1, rows64 = (sum(v[m] for v in lat.values()) for m in (1.0, 64.0))
    assert rows64 / rows1 < 64.0, lat
    assert all(set(v) == set(cfg.token_counts) for v in lat.values())
    dev = Catalog([res.out_dir / "device.yaml"]).get("cpu_test")
    assert dev.kind == "cpu" and dev.num_sms == 1
    assert dev.peak_flops("bf16") == pytest.approx(res.peak_flops_per_s, rel=1e-5)
    fit = calibrate.calibrate_from_dir(res.out_dir, dev, res.out_dir / "vidur")
    assert "gemm" in fit.fitted_on


def test_curve_interpolates_in_log_log_and_extrapolates_linearly():
    c = Curve(np.array([1.0, 4.0, 16.0]), np.array([1.0, 2.0, 8.0]))
    assert c(4.0) == pytest.approx(2.0)
    assert c(2.0) == pytest.approx(np.sqrt(2.0))  # half way in log-log
    assert c(0.5) == pytest.approx(1.0)  # clamped below
    assert c(20.0) == pytest.approx(8.0 + 4 * 0.5)  # slope of the last segment: 6 / 12


def test_packed_attention_fit_recovers_its_coefficients():
    q = np.array([1, 1, 1, 2, 4, 8, 8, 16, 32], float)
    k = np.array([64, 256, 1024, 64, 512, 256, 2048, 1024, 4096], float)
    truth = PackedAttention((5e-6, 3e-7), (1e-5, 6e-8, 1.5e-8))
    t = np.array([truth(a, b) for a, b in zip(q, k, strict=True)])
    fit = PackedAttention.fit(q, k, t)
    assert fit.one == pytest.approx(truth.one, rel=1e-6)
    assert fit.many == pytest.approx(truth.many, rel=1e-6)
    assert fit(0, 100) == 0.0


def test_measured_predictor_prices_a_packed_iteration(profiled):
    m, res = profiled
    tables = OpTables(res.out_dir)
    dev = Catalog([res.out_dir / "device.yaml"]).get("cpu_test")
    eng = EngineProfile(name="t", step_overhead_s=1e-3, per_seq_overhead_s=1e-4)
    over = ForwardOverhead(2e-3, 1e-6)
    dep = measured_deployment(model=m, device=dev, engine=eng, tables=tables, forward_overhead=over)
    pred = dep.predictor()
    # Two decodes over 100 + 50 keys and a 30-token chunk over 20 cached: Q = 32, K = 200.
    got = pred.step_s(2, 150, ((30, 20),))
    kernels = dense_forward_s(tables, m, np.array([32.0]), np.array([3.0]))[0]
    attn = m.num_layers * tables.packed(32, 200)
    assert got == pytest.approx(kernels + attn + over(32) + 1e-3 + 3 * 1e-4, rel=1e-9)
    c0, c1 = pred.decode_step_coeffs(4)
    _, b, c = tables.packed.many
    assert c1 == pytest.approx(m.num_layers * (b + 4 * c))
    assert pred.step_s(4, 1000, ()) == pytest.approx(c0 + c1 * 1000, rel=1e-9)
    w = Workload(np.array([0.0, 0.01]), np.array([40, 60]), np.array([5, 5]))
    cols = simulate(dep, w).columns()
    assert (cols["finish_s"] > 0).all()


def test_forward_overhead_fit_recovers_fixed_and_per_token_parts(profiled, tmp_path):
    import shutil

    m, res = profiled
    d = tmp_path / "p"
    shutil.copytree(res.out_dir, d)
    tables = OpTables(d)
    with pytest.raises(Exception, match="forward_perf"):
        fit_forward_overhead(tables, m)  # no HF checkpoint was profiled here
    lines = ["batch_size,new_tokens,cached_tokens,latency"]
    faster = lines[:]  # the same passes timed at 80 % of their kernels (a busy machine)
    for (b, new, step), attn_s in tables.attention.items():
        cached = step + 1 if new == 1 else step
        if new > 1 and step:
            continue
        tok = np.array([float(b * new)])
        kern = dense_forward_s(tables, m, tok, tok)[0] + m.num_layers * attn_s
        lines.append(f"{b},{new},{cached},{float(kern + 3e-3 + 2e-6 * b * new) * 1e3!r}")
        faster.append(f"{b},{new},{cached},{float(kern * 0.8) * 1e3!r}")
    (d / "forward_perf.csv").write_text("\n".join(lines) + "\n")
    over, resid = fit_forward_overhead(tables, m)
    assert len(resid) == len(lines) - 1 >= 6
    assert over.fixed_s == pytest.approx(3e-3, rel=1e-4)
    assert over.per_token_s == pytest.approx(2e-6, rel=1e-3)
    # Passes timed faster than their kernels: no overhead to find, and no crash.
    (d / "forward_perf.csv").write_text("\n".join(faster) + "\n")
    over, resid = fit_forward_overhead(tables, m)
    assert (resid < 0).all()
    assert (over.fixed_s, over.per_token_s) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_batched_bench_rows_become_forward_pass_features():
    from servesim.predictor.profiled import batched_bench_features

    row = {"pl": 2, "pp": 200, "tg": 3, "t_pp": 0.1, "t_tg": 0.01}
    (prompt, t_pp), (decode, t_tg) = batched_bench_features(row, batch=256)
    # Chunks of 256 tokens: [seq 0: 200 tokens, seq 1: 56] then [seq 1: 144 after 56 cached].
    pairs = 200 * 201 / 2 + 56 * 57 / 2 + 144 * (56 + 145 / 2)
    assert prompt == pytest.approx([2, 400, 2, 0, pairs]) and t_pp == 0.1
    # Three steps of two sequences attending to 201, 202, 203 tokens each.
    assert decode == pytest.approx([3, 6, 6, 2 * (201 + 202 + 203), 0]) and t_tg == 0.01


def test_iteration_model_fit_recovers_a_known_engine():
    from servesim.predictor.profiled import (
        IterationModel,
        batched_bench_features,
        fit_iteration_model,
    )

    truth = IterationModel(1.5e-3, 2e-4, 1.8e-4, 1e-6, 7e-8)
    rows = []
    for pl in (1, 2, 4, 8):
        for pp in (16, 64, 128, 256):
            row = {"pl": pl, "pp": pp, "tg": 32}
            (fp, _), (ft, _) = batched_bench_features({**row, "t_pp": 0, "t_tg": 0}, 256)
            row["t_pp"] = float(np.dot(fp, list(vars(truth).values())))
            row["t_tg"] = float(np.dot(ft, list(vars(truth).values())))
            rows.append(row)
    fit, err = fit_iteration_model(rows, 256)
    assert np.abs(err).max() < 1e-9
    assert vars(fit) == pytest.approx(vars(truth), rel=1e-6)
    pred = measured_deployment(
        model=spec_from_config(TINY, "tiny"),
        device=Catalog().get("cpu"),
        engine=EngineProfile(name="llama.cpp", step_overhead_s=1e-3),
        iteration=truth,
    ).predictor()
    # Three decodes over 300 cached tokens and a 40-token chunk after 10 cached ones.
    want = truth(43, 4, 300, 40 * (10 + 41 / 2)) + 1e-3 + 4 * 5e-6
    assert pred.step_s(3, 300, ((40, 10),)) == pytest.approx(want, rel=1e-12)
    c0, c1 = pred.decode_step_coeffs(5)
    assert pred.step_s(5, 700, ()) == pytest.approx(c0 + 700 * c1, rel=1e-12)


def _cli(args: list[str]) -> int:
    from servesim.cli.main import main

    return main(args)


def test_measured_engine_file_drives_servesim_simulate(profiled, tmp_path, capsys):
    """A measured engine saved to disk is what `servesim simulate --measured` runs: a lone
    request's TTFT is the measured predictor's prefill iteration and its TPOT one decode step."""
    import json

    import pyarrow.parquet as pq

    from servesim.measure.measured_engine import load_measured_engine, save_measured_engine
    from servesim.predictor.profiled import IterationModel

    cfg = tmp_path / "model" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(TINY))
    m, res = profiled
    eng = EngineProfile(name="t", step_overhead_s=1e-3, per_seq_overhead_s=1e-4)
    for kind in ("tables", "iteration"):
        if kind == "tables":
            dep = measured_deployment(
                model=m,
                device=Catalog([res.out_dir / "device.yaml"]).get("cpu_test"),
                engine=eng,
                tables=OpTables(res.out_dir),
                forward_overhead=ForwardOverhead(2e-3, 1e-6),
            )
            path = save_measured_engine(dep, tmp_path / "t.json", cfg, res.out_dir / "device.yaml")
        else:
            dep = measured_deployment(
                model=m,
                device=Catalog().get("cpu"),
                engine=eng,
                iteration=IterationModel(1.5e-3, 2e-4, 1.8e-4, 1e-6, 7e-8),
            )
            path = save_measured_engine(dep, tmp_path / "i.json", cfg)
        # The file rebuilds the same engine: every iteration is priced as the original prices it.
        pred, back = dep.predictor(), load_measured_engine(path).predictor()
        shapes = [(0, 0, ((40, 0),)), (3, 500, ()), (2, 150, ((30, 20),))]
        assert [back.step_s(*x) for x in shapes] == pytest.approx([pred.step_s(*x) for x in shapes])
        out = tmp_path / f"run-{kind}"
        code = _cli(
            [
                *("simulate", "--measured", str(path), "--prompt", "fixed:40"),
                *("--output", "fixed:6", "--rate", "0.01", "--num-requests", "3"),
                *("--out", str(out)),
            ]
        )
        assert code == 0, capsys.readouterr()
        cols = pq.read_table(out / "requests.parquet").to_pydict()
        # The frontend (7 ms + 40 prompt tokens of tokenising) and the prefill iteration.
        ttft = eng.frontend_s(40) + pred.step_s(0, 0, ((40, 0),))
        assert cols["ttft_s"] == pytest.approx([ttft] * 3, rel=1e-9)
        # Five decode steps over 41 ... 45 cached tokens.
        steps = [pred.step_s(1, 40 + i, ()) for i in range(1, 6)]
        assert cols["tpot_s"] == pytest.approx([sum(steps) / 5] * 3, rel=1e-6)
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    for bad in (tmp_path / "bad.json", tmp_path / "missing.json"):
        assert _cli(["simulate", "--measured", str(bad), "--out", str(tmp_path / "x")]) != 0
        err = capsys.readouterr().err
        assert "measured" in err.lower() and "Traceback" not in err


def test_the_bandwidth_buffer_never_exceeds_what_the_machine_holds() -> None:
    """DeepSeek-V3's 671 GB of weights used to become a 672 GB allocation at the end of a
    profile; the stream buffer is the weights' size but at most 2 GB and 1/8 of memory."""
    import os

    from servesim.measure.profile import bandwidth_buffer_bytes
    from servesim.spec.model import load_model

    eighth = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 8
    huge = load_model("deepseek-ai/DeepSeek-V3").param_bytes()
    assert bandwidth_buffer_bytes(huge) == min(2e9, eighth)
    assert bandwidth_buffer_bytes(5e8) == min(5e8, eighth)
    assert bandwidth_buffer_bytes(1.0) == 8e6
