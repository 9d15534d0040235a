"""The cross-GPU kernel model: spec-sheet feature efficiencies, the joint fit, leave-one-GPU-out
and few-shot adaptation on aiconfigurator-core's installed tables (tiny subsets, fast)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor import calibrate, fewshot, roofline
from servesim.predictor.roofline import KernelFit, default_fit
from servesim.spec.devices import get_device

H100 = get_device("h100_sxm")
L40S = get_device("l40s")
FAMS = ("attention_decode",)


def _with_model(model: dict) -> KernelFit:
    base = default_fit()
    return KernelFit(params=base.params, fitted_on="test", device_model=model)


def test_features_are_zero_on_the_reference_device():
    assert all(v == 0.0 for v in roofline.device_features(H100).values())
    f = roofline.device_features(L40S)
    # L40S: 362 TFLOP/s over 142 SMs, 864 GB/s, 96 MB L2, 32 GB/s PCIe (the catalog's numbers).
    assert f["flops_per_sm"] == pytest.approx(math.log((362e12 / 142) / (989.4e12 / 132)))
    assert f["mem_bw"] == pytest.approx(math.log(864 / 3350))
    assert f["l2"] == pytest.approx(math.log(96 / 50))
    assert f["link_bw"] == pytest.approx(math.log(32 / 450))


def test_a_device_model_scales_efficiencies_and_latencies_by_hand():
    # compute factor: const ln 2 + 1.0 x mem_bw feature; latency factor: const ln 2.
    model = {
        "gemm": {
            "compute": {"const": math.log(2.0), "mem_bw": 1.0},
            "latency": {"const": math.log(2.0)},
        }
    }
    fit = _with_model(model)
    base = default_fit().params["gemm"]
    on_h100 = fit.family("gemm", H100)
    assert on_h100["compute_eff"] == pytest.approx(2.0 * base["compute_eff"])
    assert on_h100["floor_s"] == pytest.approx(base["floor_s"] / 2.0)
    assert on_h100["mem_eff"] == base["mem_eff"]  # memory factor absent: unchanged
    on_l40s = fit.family("gemm", L40S)
    assert on_l40s["compute_eff"] == pytest.approx(2.0 * 864 / 3350 * base["compute_eff"])


def test_zero_coefficients_price_exactly_like_no_model():
    zero = {
        fam: {fac: {f: 0.0 for f in roofline.FEATURES} for fac in roofline.FACTORS}
        for fam in ("gemm", "attention_prefill", "attention_decode")
    }
    fit, plain = _with_model(zero), default_fit()
    for dev in (H100, L40S):
        assert roofline.gemm_s(4096, 4096, 4096, "bf16", dev, fit) == roofline.gemm_s(
            4096, 4096, 4096, "bf16", dev, plain
        )
        assert roofline.attn_decode_s(8, 8000, 32, 8, 128, 128, "bf16", dev, fit) == (
            roofline.attn_decode_s(8, 8000, 32, 8, 128, 128, "bf16", dev, plain)
        )


def test_fit_with_device_model_round_trips_and_rejects_unknown_features(tmp_path):
    fit = _with_model({"gemm": {"memory": {"const": 0.1, "l2": -0.2}}})
    path = tmp_path / "fit.json"
    fit.save(path)
    back = KernelFit.load(path)
    assert back.device_model == fit.device_model
    assert back.family("gemm", L40S) == fit.family("gemm", L40S)
    doc = {"params": default_fit().params, "device_model": {"gemm": {"memory": {"clock": 1.0}}}}
    with pytest.raises(ServesimError, match="clock"):
        KernelFit.from_dict(doc)


def test_old_fit_files_without_mla_and_moe_families_still_load():
    params = {f: v for f, v in default_fit().params.items() if f not in ("mla_decode", "moe")}
    fit = KernelFit.from_dict({"params": params})
    assert fit.params["mla_decode"] == params["attention_decode"]
    # An MLA decode priced with the copied GQA parameters is what the older fit priced.
    assert roofline.attn_decode_s(4, 4000, 16, 1, 576, 512, "bf16", H100, fit, latent=True) > 0


def test_package_tables_hold_the_csv_rows():
    """The Parquet reader gives the same rows as the CSV folder cut from the same table."""
    csv = calibrate.load_tables("data/aic/h100_sxm")["gemm_perf"]
    pq = calibrate.load_package_tables("h100_sxm", "vllm")["gemm_perf"]
    key = {
        (d, m, n, k): lat
        for d, m, n, k, lat in zip(
            pq["gemm_dtype"], pq["m"], pq["n"], pq["k"], pq["latency"], strict=True
        )
    }
    rows = list(zip(csv["gemm_dtype"], csv["m"], csv["n"], csv["k"], csv["latency"], strict=True))
    found = [key.get((d, m, n, k)) for d, m, n, k, _ in rows[:200]]
    assert all(f is not None for f in found)
    assert [f for f in found] == pytest.approx([r[4] for r in rows[:200]])


@cache
def _tiny() -> calibrate.GpuData:
    return calibrate.package_data(["h100_sxm", "b200_sxm", "a100_sxm", "l40s"], max_rows=60)


def test_leave_one_gpu_out_never_sees_the_left_out_gpu():
    data = dict(_tiny())
    fit = calibrate.leave_one_gpu_out_fit(data, "l40s", max_nfev=10, families=FAMS)
    dev, s = data["l40s"]
    corrupted = dict(s)
    corrupted["attention_decode"] = dict(s["attention_decode"])
    corrupted["attention_decode"]["latency_s"] = s["attention_decode"]["latency_s"] * 10.0
    data["l40s"] = (dev, corrupted)
    again = calibrate.leave_one_gpu_out_fit(data, "l40s", max_nfev=10, families=FAMS)
    assert again.params == fit.params and again.device_model == fit.device_model
    assert "l40s" not in fit.fitted_on
    # Corrupting a GPU it does fit on changes the fit.
    h_dev, h = data["h100_sxm"]
    bad = dict(h)
    bad["attention_decode"] = dict(h["attention_decode"])
    bad["attention_decode"]["latency_s"] = h["attention_decode"]["latency_s"] * 10.0
    data["h100_sxm"] = (h_dev, bad)
    moved = calibrate.leave_one_gpu_out_fit(data, "l40s", max_nfev=10, families=FAMS)
    assert moved.params["attention_decode"] != fit.params["attention_decode"]
    with pytest.raises(ServesimError, match="no tables"):
        calibrate.leave_one_gpu_out_fit(data, "t4")


def test_few_shot_moves_predictions_toward_the_left_out_gpu():
    data = _tiny()
    prior = calibrate.leave_one_gpu_out_fit(data, "l40s", max_nfev=15, families=FAMS)
    assert prior.factor_sd["attention_decode"]  # a prior width learned from the spread
    dev, s = data["l40s"]
    pool = fewshot.Shots({"attention_decode": s["attention_decode"]})
    shots, others = fewshot.draw(pool, 10, seed=3)
    adapted = fewshot.adapt(shots, dev, prior)
    assert fewshot.adapt(fewshot.Shots({}), dev, prior).device_model == prior.device_model

    def log_err(fit: KernelFit, sh: fewshot.Shots) -> np.ndarray:
        p = fewshot.predict(sh, dev, fit)["attention_decode"]
        return np.abs(np.log(p / sh.samples["attention_decode"]["latency_s"]))

    assert np.mean(log_err(adapted, shots)) < np.mean(log_err(prior, shots))
    assert np.median(log_err(adapted, others)) < np.median(log_err(prior, others))
