"""A GPU without tables takes the measured efficiencies of the measured GPUs that share its
compute (`predictor/twin_efficiency.py`): affinities, nearest-shape look-ups and the blend by
hand, and the product's GEMM on an H800 priced from the H100's and H200's tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.predictor import roofline, transfer_model
from servesim.predictor import twin_efficiency as te
from servesim.predictor.iteration import Predictor
from servesim.spec.devices import get_device
from servesim.spec.model import load_model


def test_devices_sharing_their_compute_are_twins_and_memory_bandwidth_does_not_matter():
    h100, h200, h800 = (get_device(n) for n in ("h100_sxm", "h200_sxm", "h800_sxm"))
    # H200 is an H100 with faster, larger HBM; the roofline carries the bandwidth.
    assert te.affinity(h100, h200) == pytest.approx(1.0)
    # B200 against GB200: 2.25 against 2.5 PFLOP/s bf16 (and fp8 likewise) on 148 SMs each.
    d = math.log10(2.5 / 2.25)
    want = math.exp(-(2 * d * d) / (2 * te.DEVICE_SCALE**2))
    assert te.affinity(get_device("b200_sxm"), get_device("gb200")) == pytest.approx(want)
    assert te.affinity(h100, get_device("b200_sxm")) < te.MIN_AFFINITY
    assert te.affinity(h100, get_device("mi300x")) == 0.0  # another vendor's kernels
    gpus = transfer_model.bundled().gpus
    assert dict(te.twins(h800, gpus)) == pytest.approx({"h100_sxm": 1.0, "h200_sxm": 1.0})
    assert te.twins(get_device("mi300x"), gpus) == []
    assert "h100_sxm" not in dict(te.twins(h100, gpus))  # never its own twin


def _table() -> te.Efficiencies:
    s = {
        "m": np.array([1.0, 15.0, 1.0]),
        "n": np.array([7.0, 7.0, 7.0]),
        "dtype": np.array(["bfloat16", "bfloat16", "fp8"], dtype=object),
        "latency_s": np.ones(3),
        "group": np.array(["a", "a", "a"], dtype=object),
    }
    return te.Efficiencies(s, np.array([0.1, 0.2, 0.3]))


def test_a_lookup_takes_the_nearest_measured_shape_of_the_same_dtype():
    table = _table()
    q = {
        "m": np.array([1.0, 15.0, 3.0, 1.0, 1.0]),
        "n": np.array([7.0, 7.0, 7.0, 7.0, 7.0]),
        "dtype": np.array(["bf16", "bf16", "bf16", "fp8", "fp4"], dtype=object),
    }
    eff, aff = table.lookup(q, 5)
    assert eff[:4].tolist() == [0.1, 0.2, 0.1, 0.3]  # "bf16" is "bfloat16"
    assert math.isnan(eff[4]) and aff[4] == 0.0  # no fp4 row was measured
    # m = 3 lies log1p-distance ln(4) - ln(2) from m = 1 and ln(16) - ln(4) from m = 15.
    d = math.log(4.0) - math.log(2.0)
    assert aff[:4] == pytest.approx([1.0, 1.0, math.exp(-d * d / (2 * te.SHAPE_SCALE**2)), 1.0])


def test_the_blend_weighs_each_twin_by_device_and_shape_affinity(monkeypatch):
    table = _table()
    monkeypatch.setattr(te, "measured", lambda gpu, source: table)
    monkeypatch.setattr(te, "twins", lambda device, gpus, fabric: [("g1", 0.5), ("g2", 1.0)])
    q = {"m": np.array([1.0, 3.0]), "n": np.array([7.0, 7.0]), "dtype": np.array(["bf16"] * 2)}
    z = np.array([0.4, -0.2])
    got = te.blend(("g1", "g2"), "gemm", q, get_device("h800_sxm"), z)
    d = math.log(4.0) - math.log(2.0)
    s = math.exp(-d * d / (2 * te.SHAPE_SCALE**2))
    want0 = (te.PRIOR * 0.4 + 1.5 * 0.1) / (te.PRIOR + 1.5)
    want1 = (te.PRIOR * -0.2 + 1.5 * s * 0.1) / (te.PRIOR + 1.5 * s)
    assert got == pytest.approx([want0, want1])
    # A family no twin prices (an all-to-all, say) is left as it was.
    assert te.blend(("g1",), "alltoall", q, get_device("h800_sxm"), z).tolist() == z.tolist()


def test_an_all_reduce_twin_shares_the_fabric_too():
    gpus = transfer_model.bundled().gpus
    b300, gb300 = get_device("b300_sxm"), get_device("gb300")
    # B300 and B200: one 8-GPU NVLink 5 server each; GB300 joins 72 GPUs on the same links.
    assert dict(te.twins(b300, gpus, fabric=True)) == pytest.approx(
        {"b200_sxm": te.affinity(b300, get_device("b200_sxm"))}
    )
    assert "b300_sxm" not in dict(te.twins(gb300, gpus, fabric=True))
    # An H800 computes like an H100 but its NVLink runs at 200 GB/s, not 450.
    h800 = get_device("h800_sxm")
    assert "h100_sxm" in dict(te.twins(h800, gpus))
    assert te.twins(h800, gpus, fabric=True) == []
    d = math.log10(450 / 200)
    want = math.exp(-d * d / (2 * te.DEVICE_SCALE**2))
    assert te.fabric_affinity(h800, get_device("h100_sxm")) == pytest.approx(want)


def test_an_h800_gemm_is_priced_from_its_twins_measured_efficiency():
    h800 = get_device("h800_sxm")
    # The predictor prices with the twinned fit unless given another.
    fit = Predictor(load_model("meta-llama/Llama-3.1-8B-Instruct"), h800).fit
    assert isinstance(fit.transfer, te.Twinned)
    phys = roofline.physical_fit()
    m = np.array([1.0, 16.0, 256.0, 4096.0])
    got = roofline.gemm_np(m, 4096, 4096, "bf16", h800, fit)
    roof = roofline.gemm_np(m, 4096, 4096, "bf16", h800, phys)
    # The same shapes' efficiency (log measured over roofline) on the H100 and the H200.
    rows = {
        "m": m,
        "n": np.full(4, 4096.0),
        "k": np.full(4, 4096.0),
        "dtype": np.array(["bf16"] * 4, dtype=object),
        "format": np.array(["bf16"] * 4, dtype=object),
        "weight_dtype": np.array(["bf16"] * 4, dtype=object),
    }
    effs = [te.measured(g, "gemm").lookup(rows, 4) for g in ("h100_sxm", "h200_sxm")]
    assert all((aff == 1.0).all() for _, aff in effs)  # measured at exactly these shapes
    feats = transfer_model.features("gemm", rows, h800, roof)
    z = transfer_model.bundled().log_correction("gemm", feats)
    # Each twin's efficiency carried to the H800: its excess over its roofline stays.
    own = roofline.gemm_np(m, 4096, 4096, "bf16", h800, phys)
    carried = [
        te.carried(
            e,
            roofline.gemm_np(m, 4096, 4096, "bf16", get_device(g), phys) / own,
            te.affinity(h800, get_device(g)),
        )
        for (e, _), g in zip(effs, ("h100_sxm", "h200_sxm"), strict=True)
    ]
    want = roof * np.exp((te.PRIOR * z + carried[0] + carried[1]) / (te.PRIOR + 2.0))
    assert got == pytest.approx(want, rel=1e-9)
    # ... which is the twins' measured time moved by the H800's roofline, within their spread.
    assert np.all(np.abs(np.log(got / roof) - (carried[0] + carried[1]) / 2) < 0.05)


def test_an_h800_expert_layer_is_priced_from_its_twins_measured_layers():
    from servesim.predictor import measured_kernels as mk
    from servesim.predictor.iteration import MOE_DISTRIBUTION
    from servesim.spec.parallel import Parallel

    model = load_model("deepseek-ai/DeepSeek-V3")
    h800 = get_device("h800_sxm")
    pred = Predictor(model, h800, Parallel(tp=8))
    assert [g.device.name for g, _ in pred._moe_twins] == ["h100_sxm", "h200_sxm"]
    tokens = np.array([64.0, 4096.0])
    layout = (7168, 2048, 8, 256, pred.par.moe_tp, pred.par.ep)
    terms = pred._expert_terms(tokens / pred.par.ep, 1.0)
    scale, prov = pred._measured_scale(tokens, terms)
    assert (prov == mk.ROOFLINE).all()
    rows = np.column_stack([tokens, *(np.full(2, float(x)) for x in layout)])
    phys = roofline.physical_fit()
    own = mk.moe_roofline_np(rows, True, "fp8", h800, phys)
    effs = []
    for g in ("h100_sxm", "h200_sxm"):
        kern = mk.MeasuredKernels(get_device(g), "vllm", None, pred.fit)
        sec, _ = kern.moe(tokens, layout, "fp8", True, MOE_DISTRIBUTION, True)
        theirs = mk.moe_roofline_np(rows, True, "fp8", get_device(g), phys)
        effs.append(
            te.carried(np.log(sec / theirs), theirs / own, te.affinity(h800, get_device(g)))
        )
    want = own * np.exp((effs[0] + effs[1]) / (te.PRIOR + 2.0))
    got = scale * sum(t.seconds for t in terms)
    assert got == pytest.approx(want, rel=1e-9)
    # An H800 computes and streams HBM like an H100: its layer is the H100's measured one
    # within the two twins' spread.
    h100 = mk.MeasuredKernels(get_device("h100_sxm"), "vllm", None, pred.fit)
    measured_h100, _ = h100.moe(tokens, layout, "fp8", True, MOE_DISTRIBUTION, True)
    assert np.all(np.abs(np.log(got / measured_h100)) < np.abs(effs[1] - effs[0]) + 0.1)


def test_predict_names_the_twins_that_price_a_gpu_without_tables(capsys):
    import json

    from servesim.cli.main import main

    base = ["predict", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--decode-seqs", "8"]
    assert main([*base, "--device", "h800_sxm"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "h800_sxm has no measured tables" in out and "h100_sxm (affinity 1.00)" in out
    assert main([*base, "--device", "h800_sxm", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["twin_gpus"] == {"h100_sxm": 1.0, "h200_sxm": 1.0}
    assert main([*base, "--device", "h100_sxm", "--json"]) == 0  # measured itself: no twins
    assert json.loads(capsys.readouterr().out)["twin_gpus"] == {}
    assert main([*base, "--device", "mi300x", "--json"]) == 0  # no GPU shares its compute
    assert json.loads(capsys.readouterr().out)["twin_gpus"] == {}


def test_a_twin_whose_tables_cannot_be_read_adds_nothing(monkeypatch):
    from servesim.errors import ServesimError
    from servesim.predictor import calibrate

    def broken(*args, **kwargs):
        raise ServesimError("a table is malformed")

    te._tables.cache_clear()
    te.measured.cache_clear()
    monkeypatch.setattr(calibrate, "load_package_tables", broken)
    try:
        z = np.array([0.3])
        rows = {"m": np.array([16.0]), "n": np.array([4096.0]), "k": np.array([4096.0])}
        got = te.blend(("h100_sxm",), "gemm", rows, get_device("h800_sxm"), z)
        assert got.tolist() == z.tolist()
    finally:
        te._tables.cache_clear()
        te.measured.cache_clear()


def test_the_run_summary_names_the_twins_of_a_gpu_without_tables():
    from servesim.sim.deployment import Deployment
    from servesim.sim.result import latency_provenance

    model = load_model("meta-llama/Llama-3.1-8B-Instruct")
    h800 = latency_provenance(Deployment(model, get_device("h800_sxm")))
    assert h800["twin_gpus"] == {"h100_sxm": 1.0, "h200_sxm": 1.0}
    assert "twin_gpus" not in latency_provenance(Deployment(model, get_device("h100_sxm")))
    assert "twin_gpus" not in latency_provenance(Deployment(model, get_device("l4")))


def test_a_twins_excess_over_its_roofline_carries_whole():
    """A twin at 3x its roofline on a device whose roofline is 0.7x the twin's: the roofline's
    third scales (0.7), the excess (2 roofline units) stays: 0.7 + 2 = 2.7 of the twin's
    roofline, 2.7 / 0.7 of the device's. A twin faster than its roofline scales whole."""
    got = te.carried(np.array([math.log(3.0), math.log(0.8), 0.0]), 1.0 / 0.7)
    assert got == pytest.approx([math.log(2.7 / 0.7), math.log(0.8), 0.0])
    # Equal rooflines (B200 and GB200 at the same clocks): the efficiency carries as it is.
    assert te.carried(np.array([1.3, -0.2]), 1.0) == pytest.approx([1.3, -0.2])
    # A weak twin (affinity 0.25, L40S for an RTX PRO 6000) carries a quarter of the excess.
    part = te.carried(np.array([math.log(3.0)]), 1.0 / 0.7, 0.25)
    assert part == pytest.approx([0.25 * math.log(2.7 / 0.7) + 0.75 * math.log(3.0)])


def test_h200_expert_layers_keep_the_h100s_excess():
    """vLLM's per-tensor fp8 expert layers run at 3-4x their roofline on Hopper; the H200's take
    about the H100's time (its faster HBM does not help them), which the carried excess gives
    and a scaled efficiency misses by ~25 %."""
    from servesim.predictor import calibrate

    h100, h200 = get_device("h100_sxm"), get_device("h200_sxm")
    a, b = te._tables("h200_sxm")["moe"], te._tables("h100_sxm")["moe"]
    cols = [c for c in a if c not in ("latency_s", "group") and c in b]
    key = {tuple(str(b[c][i]) for c in cols): i for i in range(len(b["latency_s"]))}
    pairs = [
        (i, key[k])
        for i in range(len(a["latency_s"]))
        if a["format"][i] == "fp8" and (k := tuple(str(a[c][i]) for c in cols)) in key
    ]
    ia, ib = (np.array(x) for x in zip(*pairs, strict=True))
    phys = roofline.physical_fit()
    ra = calibrate.predict("moe", a, h200, phys)[ia]
    rb = calibrate.predict("moe", b, h100, phys)[ib]
    ma, mb = np.asarray(a["latency_s"])[ia], np.asarray(b["latency_s"])[ib]
    eff = np.log(mb / rb)
    far = eff > math.log(3.0)
    assert far.sum() > 100
    scaled = np.median(np.abs(ra * np.exp(eff) / ma - 1)[far])
    kept = np.median(np.abs(ra * np.exp(te.carried(eff, rb / ra)) / ma - 1)[far])
    assert scaled > 0.15 and kept < 0.08
