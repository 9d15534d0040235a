"""The engines' host work on a slower host CPU: GB200/GB300's Grace hosts (`host_time_factor`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from servesim.errors import ServesimError
from servesim.predictor import kernel_tables
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.spec.devices import Catalog, get_device
from servesim.spec.engine_profile import HOST_TIME_FIELDS, get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel


# A user's device entry: the bundled B200's fields under another name.
def _user_entry(**extra: float) -> str:
    b200 = get_device("b200_sxm")
    entry = {
        "peak_tflops": {"bf16": b200.peak_flops("bf16") / 1e12},
        "mem_gb": b200.mem_bytes / 1e9,
        "mem_bw_gb_s": b200.mem_bw_bytes_per_s / 1e9,
        "num_sms": b200.num_sms,
        "l2_mb": b200.l2_bytes / 1e6,
        "link_bw_gb_s": b200.link_bw_bytes_per_s / 1e9,
        "link_latency_us": b200.link_latency_s * 1e6,
        "max_devices_per_node": b200.max_devices_per_node,
        "net_bw_gb_s": b200.net_bw_bytes_per_s / 1e9,
        "net_latency_us": b200.net_latency_s * 1e6,
        "host_bw_gb_s": b200.host_bw_bytes_per_s / 1e9,
        "idle_power_w": b200.idle_power_w,
        "max_power_w": b200.max_power_w,
        "price_per_hour": b200.price_per_hour,
        **extra,
    }
    return yaml.safe_dump({"devices": {"my_npu": entry}})


def _host_bound_fp8_block_rows(gpu: str) -> dict[tuple[float, float, float], float]:
    """vLLM's eagerly timed block-fp8 GEMM rows of a GPU within 1.2x of the table's floor."""
    found = kernel_tables.find(gpu, "gemm", "gemm_perf", "vllm")
    assert found is not None
    c = kernel_tables.read(found[0], ("gemm_dtype", "m", "n", "k", "latency"))
    keep = c["gemm_dtype"] == "fp8_block"
    lat = c["latency"][keep]
    rows = zip(c["m"][keep], c["n"][keep], c["k"][keep], lat, strict=True)
    floor = float(lat.min())
    return {(m, n, k): float(t) for m, n, k, t in rows if t < 1.2 * floor}


@pytest.mark.parametrize(("x86", "grace"), [("b200_sxm", "gb200"), ("b300_sxm", "gb300")])
def test_the_grace_factor_is_the_measured_host_bound_ratio(x86: str, grace: str) -> None:
    """The catalog's figure is the median ratio of the same eager vLLM op's host-bound rows on
    the Grace system and on the x86 system with the same GPU (to the second decimal)."""
    a, b = _host_bound_fp8_block_rows(x86), _host_bound_fp8_block_rows(grace)
    ratios = [b[key] / a[key] for key in a.keys() & b.keys()]
    assert len(ratios) > 1000
    assert get_device(grace).host_time_factor == pytest.approx(np.median(ratios), abs=0.01)
    assert get_device(x86).host_time_factor == 1.0


def test_on_host_scales_every_host_figure_and_nothing_else() -> None:
    e = get_engine("sglang").with_overrides(eager_host_s_per_moe_layer=1e-3, version="0.5.9")
    slow = e.on_host(2.0)
    for name in HOST_TIME_FIELDS:
        # the compile per token count is the release's when unset (None): that figure scales
        base = e.token_count_compile() if name == "token_count_compile_s" else getattr(e, name)
        assert getattr(slow, name) == pytest.approx(2.0 * base)
    assert slow.eager_host_s_per_moe_layer == pytest.approx(2e-3)
    assert slow.token_count_compile() == pytest.approx(0.180)
    assert slow.cuda_graph_max_seqs == e.cuda_graph_max_seqs
    assert slow.frontend_s(1000) == pytest.approx(2.0 * e.frontend_s(1000))
    assert e.on_host(1.0) is e


def test_a_grace_hosted_gpu_pays_its_factor_on_host_time_only() -> None:
    """GB200 against the same GPU on an x86 host (factor 1): the frontend, the per-step
    scheduling and an eager prefill's launches take 1.63x as long; kernels are priced alike."""
    model = load_model("deepseek-ai/DeepSeek-R1")
    engine = get_engine("sglang")
    grace = get_device("gb200")
    devices = {"grace": grace, "x86": replace(grace, host_time_factor=1.0)}
    preds = {
        k: Predictor(model, d, Parallel(tp=8), engine, latency_model="roofline")
        for k, d in devices.items()
    }
    g, x = preds["grace"], preds["x86"]
    assert g.engine.frontend_s(1024) == pytest.approx(1.63 * x.engine.frontend_s(1024))
    assert g.overhead_s(8, 1) == pytest.approx(1.63 * x.overhead_s(8, 1))
    assert g.host_s(64, 1, 0) == pytest.approx(1.63 * x.host_s(64, 1, 0)) and x.host_s(64, 1, 0)
    decode = BatchShape(8, 8 * 1500, ())
    kernels = {
        k: [(op.name, op.seconds) for op in p.ops(decode) if op.provenance != "engine"]
        for k, p in preds.items()
    }
    assert kernels["grace"] == kernels["x86"]


def test_a_device_entry_with_a_non_positive_host_factor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_user_entry(host_time_factor=0))
    with pytest.raises(ServesimError, match=r"my_npu.*host_time_factor is 0.0; use a number > 0"):
        Catalog([path])
    path.write_text(_user_entry(host_time_factor=1.4))
    assert Catalog([path]).get("my_npu").host_time_factor == 1.4
