"""The cross-GPU transfer model: features, tree export, leave-one-GPU-out, bundle (its few-shot
adaptation: test_fewshot_transfer.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from servesim.predictor import (
    calibrate,
    roofline,
    transfer,
    transfer_features,
    transfer_model,
)
from servesim.predictor.trees import from_sklearn
from servesim.spec.devices import get_device

H100 = get_device("h100_sxm")


def _gemm_rows(m, n, k, fmt="bfloat16", dtype="bf16", wdt="bf16"):
    m, n, k = (np.asarray(x, dtype=float) for x in np.broadcast_arrays(m, n, k))
    one = np.ones(len(m), dtype=object)
    return {"m": m, "n": n, "k": k, "dtype": one * dtype, "weight_dtype": one * wdt,
            "format": one * fmt}  # fmt: skip


def test_gemm_features_by_hand():
    f = transfer_features.gemm(_gemm_rows([256.0, 1200.0], 4096.0, 4096.0), H100)
    # 2 m n k FLOPs at 989.4 TFLOP/s; weights + input + output bf16 bytes at 3.35 TB/s.
    t_comp = 2 * 256 * 4096 * 4096 / 989.4e12 * 1e6
    t_mem = (4096 * 4096 * 2 + 256 * 4096 * 2 + 256 * 4096 * 2) / 3.35e12 * 1e6
    assert f["log_t_comp_us"][0] == pytest.approx(math.log10(t_comp))
    assert f["log_t_mem_us"][0] == pytest.approx(math.log10(t_mem))
    assert f["log_intensity_over_ridge"][0] == pytest.approx(math.log10(t_comp / t_mem))
    # 128x128 tiles: 2 x 32 = 64 tiles on 132 SMs (less than a wave: fill 64/132); 1200 rows:
    # 10 x 32 = 320 tiles = 2.42 waves, the last one 0.42 full.
    assert f["log_waves"][0] == pytest.approx(math.log10(64 / 132))
    assert f["last_wave_fill"][0] == pytest.approx(64 / 132)
    assert f["last_wave_fill"][1] == pytest.approx(320 / 132 - 2)
    assert f["log_bytes_over_l2"][0] == pytest.approx(math.log10(t_mem * 3.35e12 / 1e6 / 50e6))
    assert f["dev_log_ridge"][0] == pytest.approx(math.log10(989.4e12 / 3.35e12))
    # fp8 per-tensor and block-scaled are different kernel classes; both run at the fp8 rate.
    g = transfer_features.gemm(
        _gemm_rows([64.0, 64.0], 4096.0, 4096.0, np.array(["fp8", "fp8_block"]), "fp8", "fp8"),
        H100,
    )
    assert (g["fmt_fp8"][0], g["fmt_fp8_block"][0]) == (1.0, 0.0)
    assert (g["fmt_fp8"][1], g["fmt_fp8_block"][1]) == (0.0, 1.0)
    assert g["dev_log_flops_per_sm"][0] == pytest.approx(math.log10(1978.9e12 / 132))


def test_trees_match_sklearn():
    sk = pytest.importorskip("sklearn.ensemble")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * (x[:, 2] > 0)
    m = sk.HistGradientBoostingRegressor(max_iter=30, max_leaf_nodes=7).fit(x, y)
    xt = rng.normal(size=(50, 3))
    assert np.allclose(from_sklearn(m).predict(xt), m.predict(xt))


def _synthetic(bw_scale: float, name: str):
    """A GPU like H100 but with `bw_scale` x its bandwidth whose GEMMs run at the physical
    roofline times (bw_scale)^-0.5 (a known, smooth device scaling)."""
    dev = dataclasses.replace(H100, name=name, mem_bw_bytes_per_s=3.35e12 * bw_scale)
    rng = np.random.default_rng(int(bw_scale * 100))
    s = _gemm_rows(2.0 ** rng.integers(0, 13, 300), 2.0 ** rng.integers(9, 14, 300), 4096.0)
    s["latency_s"] = calibrate.predict("gemm", s, dev, roofline.physical_fit()) * bw_scale**-0.5
    return dev, {"gemm": s}


def test_leave_one_gpu_out_recovers_device_scaling():
    pytest.importorskip("sklearn")
    scales = (0.5, 0.6, 0.7, 0.8, 1.25, 1.5, 1.75, 2.0)
    data = {f"g{x}": _synthetic(x, f"g{x}") for x in scales}
    for left_out, x in (("g1.25", 1.25), ("g0.8", 0.8)):
        model = transfer.leave_one_gpu_out(data, left_out, families=("gemm",), max_iter=60)
        dev, s = data[left_out]
        g = s["gemm"]
        err = calibrate.ape(transfer.predict(model, "gemm", g, dev), g["latency_s"])
        base = calibrate.ape(calibrate.predict("gemm", g, dev, roofline.physical_fit()),
                             g["latency_s"])  # fmt: skip
        # The roofline alone misses by the device's scaling, |x^0.5 - 1| (11.8 % at 1.25x,
        # 10.6 % at 0.8x); the model, never shown this GPU, recovers most of it from the
        # others (the ridge-shrunk device trend: LINEAR_RIDGE keeps it cautious with 4 GPUs).
        assert np.median(base) == pytest.approx(100 * abs(x**0.5 - 1), rel=1e-6)
        assert np.median(err) < 0.55 * np.median(base)


def test_bundled_model_reproduces_h100_gemm_rows():
    """The bundled model loads and reproduces H100's GEMM table (H100 is one of the GPUs it was
    fitted on, so this is an in-sample check of the artifact; held-out error per GPU is
    benchmarks/kernels.py --leave-one-gpu-out)."""
    model = transfer_model.bundled()
    assert model is not None
    # Rows drawn with another seed than the fit's (seed 0, 2,000 rows per table): mostly
    # other rows of the same table.
    tables = calibrate.load_package_tables("h100_sxm", max_rows=300, seed=7)
    s = calibrate.all_samples({"gemm_perf": tables["gemm_perf"]})["gemm"]
    err = calibrate.ape(transfer.predict(model, "gemm", s, H100), s["latency_s"])
    assert np.median(err) < 6.0
    assert np.percentile(err, 90) < 30.0


def test_roofline_applies_correction_only_without_tables():
    fit, phys = roofline.default_fit(), roofline.physical_fit()
    assert fit.transfer is not None
    l4 = get_device("l4")
    assert transfer_model.applies_to(l4) and not transfer_model.applies_to(H100)
    assert roofline.gemm_s(64, 4096, 4096, "bf16", H100, fit) == roofline.gemm_s(
        64, 4096, 4096, "bf16", H100, phys
    )
    base = roofline.gemm_s(64, 4096, 4096, "bf16", l4, phys)
    factor = fit.transfer.correction("gemm", _gemm_rows([64.0], 4096.0, 4096.0), l4, [base])[0]
    assert factor != 1.0
    assert roofline.gemm_s(64, 4096, 4096, "bf16", l4, fit) == pytest.approx(base * factor)
    # Decode stays affine in the context, through the corrected times at the reference contexts.
    a, b = roofline.decode_coeffs_np(8, 32, 8, 128, 128, "bf16", l4, fit)
    for c in roofline.DECODE_REFERENCE_CONTEXTS:
        rows = {
            "batch": np.array([8.0]),
            "q_heads": np.array([32.0]),
            "kv_heads": np.array([8.0]),
            "head_dim": np.array([128.0]),
            "total_context": np.array([8.0 * c]),
            "kv_dtype": np.array(["bf16"], dtype=object),
        }
        t0 = calibrate.predict("attention_decode", rows, l4, phys)
        want = t0[0] * fit.transfer.correction("attention_decode", rows, l4, t0)[0]
        assert a + b * 8 * c == pytest.approx(want, rel=1e-9)


def test_all_reduce_off_nvlink_is_the_roofline_in_the_product_and_the_benchmark_alike():
    """Over PCIe (L4: no NVLink) all-reduce keeps the roofline, both where the simulator
    prices it and where the leave-one-GPU-out benchmark scores the transfer model; on an
    NVLink GPU without tables (H800) the correction applies in both."""
    fit, phys = roofline.default_fit(), roofline.physical_fit()
    l4, h800 = get_device("l4"), get_device("h800")
    assert not transfer_model.corrects_family("allreduce", l4)
    assert transfer_model.corrects_family("allreduce", h800)
    assert transfer_model.corrects_family("gemm", l4)
    rows = {
        "op": np.array(["all_reduce"], dtype=object),
        "impl": np.array(["nccl"], dtype=object),
        "cuda_graph": np.array([True]),
        "nbytes": np.array([4.0e6]),
        "num_devices": np.array([4.0]),
        "latency_s": np.array([1e-4]),
    }
    for dev, corrected in ((l4, False), (h800, True)):
        ours = roofline.allreduce_s(4.0e6, 4, dev, fit, "nccl")
        plain = roofline.allreduce_s(4.0e6, 4, dev, phys, "nccl")
        scored = transfer.predict(fit.transfer, "nccl", rows, dev)[0]
        assert (ours != pytest.approx(plain, rel=1e-6)) == corrected
        assert scored == pytest.approx(ours, rel=1e-6)
