"""The measured-kernel backend: aiconfigurator-core's tables read in place (never copied),
interpolated in log space, the roofline anchored outside them, provenance per operator."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.predictor import kernel_tables, roofline
from servesim.predictor import measured_kernels as mk
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.sim.deployment import Deployment
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

FIT = roofline.default_fit()


def backend(gpu: str, engine: str = "vllm") -> mk.MeasuredKernels:
    b = mk.backend("measured", get_device(gpu), engine, None, FIT)
    assert b is not None
    return b


def gemm_rows(gpu: str, dtype: str, engine: str = "vllm") -> dict[str, np.ndarray]:
    found = kernel_tables.find(gpu, "gemm", "gemm_perf", engine)
    assert found is not None
    cols = kernel_tables.read(found[0], ("gemm_dtype", "m", "n", "k", "latency"))
    keep = cols["gemm_dtype"] == dtype
    return {c: v[keep] for c, v in cols.items()}


def one_gemm(b: mk.MeasuredKernels, m: float, n: int, k: int, dtype: str) -> tuple[float, int]:
    priced = b.gemm(np.array([float(m)]), n, k, dtype)
    assert priced is not None
    return float(priced[0][0]), int(priced[1][0])


def test_exact_on_measured_points() -> None:
    b = backend("h100_sxm")
    rows = gemm_rows("h100_sxm", "bfloat16")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(rows["m"]), 40, replace=False):
        m, n, k = (int(rows[c][i]) for c in "mnk")
        t, code = one_gemm(b, m, n, k, "bf16")
        # bf16 has one kernel per shape: the cell is that row, in seconds
        assert t == pytest.approx(rows["latency"][i] * 1e-3, rel=1e-9)
        assert mk.PROVENANCE[code] == "measured"


def test_vllm_sm100_fp8_cells_are_no_slower_than_a_larger_m_of_their_dispatch_bucket() -> None:
    """vLLM's CUTLASS fp8 GEMM on SM 10.x runs one kernel for m in [1, 16] (and one per larger
    bucket), so the table's slow m = 1 cells (B200: 2-4x m = 2 on most shapes) are artefacts:
    a cell prices at the fastest measured m at or above it in its bucket. Llama-3.1-70B's TP 4
    qkv (n 2,560, k 8,192) and down projections (n 8,192, k 7,168), four decodes, by hand from
    the table rows; other cells, dtypes and engines keep their measured time."""
    b = backend("b200_sxm")
    rows = gemm_rows("b200_sxm", "fp8")
    found = kernel_tables.find("b200_sxm", "gemm", "gemm_perf", "vllm")
    assert found is not None
    names = kernel_tables.read(found[0], ("gemm_dtype", "kernel_source"))
    assert set(names["kernel_source"][names["gemm_dtype"] == "fp8"]) == {mk.VLLM_SM100_FP8_KERNEL}

    def cell(m: int, n: int, k: int) -> float:
        hit = (rows["m"] == m) & (rows["n"] == n) & (rows["k"] == k)
        assert hit.sum() == 1
        return float(rows["latency"][hit][0]) * 1e-3

    for n, k in ((2560, 8192), (8192, 7168)):
        shape = (rows["n"] == n) & (rows["k"] == k)
        bucket = sorted(int(m) for m in set(rows["m"][shape].tolist()) if m <= 16)
        assert bucket == list(range(1, 17))  # every m of the bucket is measured
        for i, m in enumerate(bucket):
            want = min(cell(x, n, k) for x in bucket[i:])
            t, code = one_gemm(b, m, n, k, "fp8")
            assert t == pytest.approx(want, rel=1e-9) and mk.PROVENANCE[code] == "measured"
        assert one_gemm(b, 4, n, k, "fp8")[0] < cell(4, n, k) / 1.5  # the m = 4 spike is gone
        assert one_gemm(b, 1, n, k, "fp8")[0] < cell(1, n, k) / 1.5  # and the cold m = 1
        assert one_gemm(b, 16, n, k, "fp8")[0] == pytest.approx(cell(16, n, k), rel=1e-9)
    # the last m of a bucket keeps its own time
    assert one_gemm(b, 256, 2560, 8192, "fp8")[0] == pytest.approx(cell(256, 2560, 8192))
    # bf16 (cuBLAS picks its kernels) and TensorRT-LLM's fp8 table keep every cell as measured
    bf = gemm_rows("b200_sxm", "bfloat16")
    hit = (bf["m"] == 1) & (bf["n"] == 2560) & (bf["k"] == 8192)
    want = float(bf["latency"][hit][0]) * 1e-3
    assert one_gemm(b, 1, 2560, 8192, "bf16")[0] == pytest.approx(want, rel=1e-9)
    trt = gemm_rows("b200_sxm", "fp8", "trtllm")
    hit = (trt["m"] == 1) & (trt["n"] == 2560) & (trt["k"] == 8192)
    want = float(trt["latency"][hit][0]) * 1e-3
    assert one_gemm(backend("b200_sxm", "trtllm"), 1, 2560, 8192, "fp8")[0] == pytest.approx(want)


def test_monotone_between_neighbouring_points_along_each_axis() -> None:
    b = backend("h100_sxm")
    # m: 1024 and 1025 are both measured; 1280 next. Between 2048 and 2304 along m:
    lo, c_lo = one_gemm(b, 2048, 4096, 4096, "bf16")
    hi, c_hi = one_gemm(b, 2304, 4096, 4096, "bf16")
    assert (c_lo, c_hi) == (mk.MEASURED, mk.MEASURED)
    mids = [one_gemm(b, m, 4096, 4096, "bf16") for m in (2100, 2150, 2200, 2250, 2300)]
    ts = [lo] + [t for t, _ in mids] + [hi]
    assert all(code == mk.INTERPOLATED for _, code in mids)
    diffs = np.diff(ts)
    assert (diffs >= 0).all() or (diffs <= 0).all()
    assert min(lo, hi) <= min(ts) and max(ts) <= max(lo, hi)
    # n between 5120 and 6144 at a measured m and k
    a, _ = one_gemm(b, 512, 5120, 4096, "bf16")
    z, _ = one_gemm(b, 512, 6144, 4096, "bf16")
    mid, code = one_gemm(b, 512, 5632, 4096, "bf16")
    assert code == mk.INTERPOLATED and min(a, z) <= mid <= max(a, z)
    # log-linear: the geometric midpoint in n gives the geometric mean of the times
    g, _ = one_gemm(b, 512, round(np.sqrt(5120 * 6144)), 4096, "bf16")
    assert g == pytest.approx(np.sqrt(a * z), rel=2e-3)


def test_decode_attention_monotone_in_context_between_measured_points() -> None:
    b = backend("h100_sxm")
    ctx = np.geomspace(1024, 2048, 9)  # step 1023 and 2047 are measured: context 1024, 2048
    priced = b.decode(16, ctx, 32, 8, 128, "bf16")
    assert priced is not None
    t, codes = priced
    assert codes[0] == codes[-1] == mk.MEASURED and (codes[1:-1] == mk.INTERPOLATED).all()
    assert (np.diff(t) >= 0).all() or (np.diff(t) <= 0).all()


def test_out_of_grid_is_the_anchored_roofline_and_continuous_at_the_edge() -> None:
    b = backend("h100_sxm")
    dev = get_device("h100_sxm")
    edge, c_edge = one_gemm(b, 32768, 4096, 4096, "bf16")
    just_out, c_out = one_gemm(b, 32768 * 1.002, 4096, 4096, "bf16")
    assert c_edge == mk.MEASURED and c_out == mk.EXTRAPOLATED
    assert just_out == pytest.approx(edge, rel=0.02)
    # far out: measured at the edge times the roofline's growth, not a flat copy of the edge
    far, c_far = one_gemm(b, 131072, 4096, 4096, "bf16")
    ratio = roofline.gemm_s(131072, 4096, 4096, "bf16", dev, FIT) / roofline.gemm_s(
        32768, 4096, 4096, "bf16", dev, FIT
    )
    assert c_far == mk.EXTRAPOLATED
    assert far == pytest.approx(edge * ratio, rel=1e-9)
    assert far > 3 * edge
    # n beyond the grid (an LM head's vocabulary): anchored at n = 65536
    edge_n, _ = one_gemm(b, 64, 65536, 4096, "bf16")
    out_n, code = one_gemm(b, 64, 66000, 4096, "bf16")
    assert code == mk.EXTRAPOLATED and out_n == pytest.approx(edge_n, rel=0.03)


def test_fp4_gemm_on_b200_is_priced_at_its_measured_time_not_bf16() -> None:
    b = backend("b200_sxm")
    fp4 = gemm_rows("b200_sxm", "nvfp4")
    bf16 = gemm_rows("b200_sxm", "bfloat16")
    shape = (4096, 8192, 8192)

    def measured(rows: dict[str, np.ndarray]) -> float:
        hit = (rows["m"] == shape[0]) & (rows["n"] == shape[1]) & (rows["k"] == shape[2])
        return float(rows["latency"][hit].min()) * 1e-3

    t4, code = one_gemm(b, *shape, "fp4")
    assert code == mk.MEASURED and t4 == pytest.approx(measured(fp4), rel=1e-9)
    assert measured(bf16) > 1.5 * t4  # and the bf16 kernel is a different, slower number
    # an interpolated FP4 shape stays near its measured neighbours, far from bf16
    t4i, code = one_gemm(b, 4000, 8192, 8192, "fp4")
    assert code == mk.INTERPOLATED and t4i == pytest.approx(t4, rel=0.05)
    # through the predictor: an FP4 checkpoint's GEMMs come from the nvfp4 table
    model = load_model("meta-llama/Llama-3.1-8B").with_dtypes(weight="fp4")
    pred = Predictor(model, get_device("b200_sxm"), latency_model="auto")
    ops = {op.name: op for op in pred.ops(BatchShape(prefill=((4096, 0),)))}
    up = ops["mlp_up_proj"]
    one = float(b.gemm(np.array([4096.0]), 2 * 14336, 4096, "fp4")[0][0])  # type: ignore[index]
    assert up.seconds == pytest.approx(one * up.calls, rel=1e-9)


def test_provenance_per_case_in_the_predictor() -> None:
    model = load_model("meta-llama/Llama-3.1-8B")
    pred = Predictor(model, get_device("h100_sxm"), Parallel(tp=2), latency_model="auto")
    ops = {op.name: op for op in pred.ops(BatchShape(16, 16 * 1024, ((1024, 0), (300, 700))))}
    assert ops["qkv_proj"].provenance == "interpolated"  # m = 1340 between measured rows
    assert ops["norms"].provenance == "roofline"  # no table for elementwise kernels
    assert ops["framework"].provenance == "engine"
    assert ops["tp_allreduce"].provenance in ("measured", "interpolated")
    prefill = [op for op in pred.ops(BatchShape(prefill=((1024, 0),))) if op.kind == "attention"]
    assert prefill[0].provenance == "measured"  # 1024 tokens, 16/4 heads of 128: a grid point
    cached = [o for o in pred.ops(BatchShape(prefill=((300, 700),))) if o.kind == "attention"]
    assert cached[0].provenance == "extrapolated"  # the tables measure no cached context
    assert pred.provenance_counts()["interpolated"] == 0  # the breakdown tabulates nothing
    pred.step_s(16, 16 * 1024, ((1024, 0),))  # the simulator's path tabulates 1..1024 tokens
    counts = pred.provenance_counts()
    assert set(counts) == set(mk.PROVENANCE)
    assert counts["interpolated"] > counts["measured"] > 0


def test_auto_falls_back_to_roofline_and_measured_refuses_a_gpu_without_tables() -> None:
    model = load_model("meta-llama/Llama-3.1-8B")
    dev = get_device("mi300x")
    auto = Predictor(model, dev, latency_model="auto")
    roof = Predictor(model, dev, latency_model="roofline")
    batch = BatchShape(8, 8 * 2000, ((512, 0),))
    assert auto.kernels is None
    assert {op.provenance for op in auto.ops(batch)} <= {"roofline", "engine"}
    assert auto.iteration(batch).seconds == roof.iteration(batch).seconds
    with pytest.raises(ServesimError, match="No measured kernel tables for 'mi300x'"):
        Predictor(model, dev, latency_model="measured")
    with pytest.raises(ServesimError, match="Unknown latency model"):
        Predictor(model, dev, latency_model="tables")


def test_auto_changes_the_time_where_tables_exist_and_simulation_counts_provenance() -> None:
    model = load_model("meta-llama/Llama-3.1-8B")
    dep = Deployment(model=model, device=get_device("h100_sxm"), latency_model="auto")
    pred = dep.predictor()
    assert pred.kernels is not None
    roof = Predictor(
        model, get_device("h100_sxm"), engine=get_engine("vllm"), latency_model="roofline"
    )
    batch = BatchShape(32, 32 * 1000, ())
    a, r = pred.iteration(batch).seconds, roof.iteration(batch).seconds
    assert a != r and a == pytest.approx(r, rel=0.5)  # same ballpark, different source
    # the memoised seam agrees with the per-operator breakdown
    assert sum(op.seconds for op in pred.ops(batch)) == pytest.approx(a, rel=1e-9)
    from servesim.sim.result import latency_provenance

    prov = latency_provenance(dep)
    assert prov["latency_model"] == "auto" and sum(prov["latency_provenance"].values()) > 0


def test_cli_predict_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "predict",
            "--device",
            "b200_sxm",
            "--tp",
            "2",
            "--decode-seqs",
            "16",
            "--prefill",
            "512",
            "--latency-model",
            "auto",
            "--json",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    doc = json.loads(out)
    ops = doc["operators"]
    assert doc["latency_model"] == "auto"
    assert {"name", "kind", "calls", "seconds", "flops", "bytes", "provenance"} <= set(ops[0])
    assert sum(o["seconds"] for o in ops) == pytest.approx(doc["totals"]["seconds"], rel=1e-9)
    assert {o["provenance"] for o in ops} >= {"measured", "roofline", "engine"}
    assert sum(doc["totals"]["provenance"].values()) == len(ops)
    assert doc["memory"]["kv_tokens"] > 0
    # the table form shows the same provenance column
    assert main(["predict", "--device", "b200_sxm", "--decode-seqs", "16", "--latency-model",
                 "auto"]) == 0  # fmt: skip
    assert "provenance" in capsys.readouterr().out
    assert main(["predict", "--device", "mi300x", "--decode-seqs", "4", "--latency-model",
                 "measured"]) == 2  # fmt: skip


def moe_rows(
    gpu: str,
    dtype: str,
    engine: str = "vllm",
    distribution: str = "balanced",
    version: str | None = None,
) -> dict[str, np.ndarray]:
    found = kernel_tables.find(gpu, "moe", "moe_perf", engine, version)
    assert found is not None
    cols = kernel_tables.read(found[0], mk._MOE_COLS)
    keep = (cols["moe_dtype"] == dtype) & (cols["distribution"] == distribution)
    return {c: v[keep] for c, v in cols.items()}


def one_moe(
    b: mk.MeasuredKernels,
    tokens: float,
    layout: tuple,
    dtype: str,
    routing: str = "balanced",
    block: bool = False,
) -> tuple[float, int]:
    priced = b.moe(np.array([float(tokens)]), layout, dtype, distribution=routing, block=block)
    assert priced is not None
    return float(priced[0][0]), int(priced[1][0])


def test_moe_exact_on_measured_rows() -> None:
    b = backend("h100_sxm")
    rows = moe_rows("h100_sxm", "bfloat16")
    rng = np.random.default_rng(1)
    for i in rng.choice(len(rows["num_tokens"]), 30, replace=False):
        layout = tuple(int(rows[c][i]) for c in mk._MOE_LAYOUT)
        same = rows["num_tokens"] == rows["num_tokens"][i]
        for c, v in zip(mk._MOE_LAYOUT, layout, strict=True):
            same &= rows[c] == v
        t, code = one_moe(b, rows["num_tokens"][i], layout, "bf16")
        # several kernels may be measured for one shape: the engine runs the fastest
        assert t == pytest.approx(rows["latency"][same].min() * 1e-3, rel=1e-9)
        assert mk.PROVENANCE[code] == "measured"


QWEN3_MOE_TP2 = (2048, 768, 8, 128, 2, 1)  # Qwen3-30B-A3B's expert layer on 2 GPUs, no EP


def test_moe_monotone_between_measured_token_counts_and_anchored_outside() -> None:
    b = backend("h100_sxm")
    priced = b.moe(np.geomspace(64, 80, 7), QWEN3_MOE_TP2, "bf16")
    assert priced is not None
    t, codes = priced
    assert codes[0] == codes[-1] == mk.MEASURED and (codes[1:-1] == mk.INTERPOLATED).all()
    assert (np.diff(t) >= 0).all() or (np.diff(t) <= 0).all()
    # past the largest measured count (16384) the roofline carries the growth, never flat
    edge, c_edge = one_moe(b, 16384, QWEN3_MOE_TP2, "bf16")
    far, c_far = one_moe(b, 65536, QWEN3_MOE_TP2, "bf16")
    dev = get_device("h100_sxm")
    roof = mk.moe_roofline_np(
        np.array([[65536.0, *QWEN3_MOE_TP2], [16384.0, *QWEN3_MOE_TP2]]), True, "bf16", dev, FIT
    )
    assert (c_edge, c_far) == (mk.MEASURED, mk.EXTRAPOLATED)
    assert far == pytest.approx(edge * roof[0] / roof[1], rel=1e-9) and far > 2 * edge
    # an unmeasured layout (4 GPUs of TP are measured, 3 are not) is the nearest one shifted
    _, code = one_moe(b, 64, (2048, 768, 8, 128, 3, 1), "bf16")
    assert code == mk.EXTRAPOLATED


def moe_ops(model_name: str, gpu: str, par: Parallel, model: str, seqs: int) -> dict:
    pred = Predictor(load_model(model_name), get_device(gpu), par, latency_model=model)
    return {op.name: op for op in pred.ops(BatchShape(seqs, seqs * 4000, ()))}


def test_moe_provenance_in_the_predictor_deepseek_b200_and_qwen3_h100() -> None:
    ops = moe_ops("deepseek-ai/DeepSeek-V3", "b200_sxm", Parallel(tp=8), "auto", 64)
    experts = [ops[n] for n in ("moe_up_proj", "moe_down_proj", "moe_act")]
    assert {op.provenance for op in experts} == {"measured"}  # 64 tokens: a measured row
    # the three share the fused layer's measured time (fp8 DeepSeek: the block-scaled table,
    # tokens routed by the 1.01 power law the predictor assumes)
    b = backend("b200_sxm")
    one, _ = one_moe(b, 64, (7168, 2048, 8, 256, 8, 1), "fp8", "power_law_1.01", block=True)
    rows = moe_rows("b200_sxm", "fp8_block", distribution="power_law_1.01")
    hit = (rows["num_tokens"] == 64) & (rows["hidden_size"] == 7168)
    hit &= (rows["num_experts"] == 256) & (rows["moe_tp_size"] == 8) & (rows["moe_ep_size"] == 1)
    assert one == pytest.approx(rows["latency"][hit].min() * 1e-3, rel=1e-9)
    assert sum(op.seconds for op in experts) == pytest.approx(one * experts[0].calls, rel=1e-9)
    q = moe_ops("Qwen/Qwen3-30B-A3B", "h100_sxm", Parallel(tp=2), "auto", 70)
    assert q["moe_up_proj"].provenance == "interpolated"  # 70 tokens, between 64 and 80
    assert q["router"].provenance in ("measured", "interpolated")


def test_moe_roofline_path_unchanged_and_matches_the_backends_roofline() -> None:
    for name, gpu, par in (
        ("deepseek-ai/DeepSeek-V3", "b200_sxm", Parallel(tp=8)),
        ("Qwen/Qwen3-30B-A3B", "h100_sxm", Parallel(tp=1, dp=8, ep=8)),
    ):
        model, dev = load_model(name), get_device(gpu)
        roof = moe_ops(name, gpu, par, "roofline", 64)
        auto = moe_ops(name, gpu, par, "auto", 64)
        experts = ("moe_up_proj", "moe_down_proj", "moe_act")
        assert {roof[n].provenance for n in experts} == {"roofline"}
        assert {auto[n].provenance for n in experts} != {"roofline"}
        assert sum(auto[n].seconds for n in experts) != sum(roof[n].seconds for n in experts)
        # the roofline's expert layer, by hand (tokens of the EP group, experts hit uniformly)
        ep, tp = par.ep, par.moe_tp
        tokens = 64.0  # 64 sequences: one rank's batch without EP, the EP group's with it
        routed = tokens / ep
        experts_n = model.num_experts // ep
        width = model.moe_intermediate_size // tp
        k = model.experts_per_token
        hit = experts_n * (1 - (1 - k / experts_n) ** routed)
        cdt = "fp8" if model.expert_dtype == "fp8" else "bf16"
        h = model.hidden_size
        up = roofline.gemm_np(routed * k / hit, 2 * width, h, cdt, dev, FIT, model.expert_dtype,
                              groups=hit)  # fmt: skip
        assert roof["moe_up_proj"].seconds == pytest.approx(up * roof["moe_up_proj"].calls)
        # the backend's roofline (which shifts unmeasured layouts) is the same layer
        layout = (h, model.moe_intermediate_size, k, model.num_experts, tp, ep)
        mine = mk.moe_roofline_np(np.array([[tokens, *layout]]), True, model.expert_dtype, dev, FIT)
        total = sum(roof[n].seconds for n in experts) / roof["moe_up_proj"].calls
        assert float(mine[0]) == pytest.approx(total, rel=1e-9)


def test_mla_exact_on_measured_rows_and_in_the_predictor() -> None:
    b = backend("b200_sxm")
    path = b._paths["mla_decode"]
    assert path is not None
    c = kernel_tables.read(path, mk._MLA_COLS)
    rng = np.random.default_rng(2)
    for i in rng.choice(len(c["latency"]), 20, replace=False):
        heads, kv = int(c["num_heads"][i]), str(c["kv_cache_dtype"][i])
        kv = "bf16" if kv == "bfloat16" else kv
        priced = b.mla_decode(
            int(c["batch_size"][i]), np.array([c["step"][i] + 1.0]), heads, mk.MLA_DIMS, kv
        )
        assert priced is not None
        assert float(priced[0][0]) == pytest.approx(c["latency"][i] * 1e-3, rel=1e-9)
        assert int(priced[1][0]) == mk.MEASURED
    # between two measured context lengths: interpolated and monotone
    t, codes = b.mla_decode(64, np.geomspace(2048, 4096, 6), 16, mk.MLA_DIMS, "bf16")  # type: ignore[misc]
    assert (codes[1:-1] == mk.INTERPOLATED).all() and (np.diff(t) >= 0).all()
    # another latent layout is not what the tables measured: the roofline prices it
    assert b.mla_decode(8, np.array([1024.0]), 16, (256, 64, 128, 128), "bf16") is None
    # DeepSeek-V3 on 8 B200s: 16 heads per GPU, prompts of 2048 and context 128 / 4096 measured
    model = load_model("deepseek-ai/DeepSeek-V3")
    pred = Predictor(model, get_device("b200_sxm"), Parallel(tp=8), latency_model="auto")
    ops = {o.name: o for o in pred.ops(BatchShape(64, 64 * 4000, ((2048, 0),)))}
    assert ops["attn_decode"].provenance == "measured"
    assert ops["attn_prefill"].provenance == "measured"
    one, code = b.mla_prefill(2048, 0, 16, mk.MLA_DIMS, model.kv_dtype)  # type: ignore[misc]
    assert code == mk.MEASURED
    assert ops["attn_prefill"].seconds == pytest.approx(one * model.num_attention_layers)
    cached = b.mla_prefill(2048, 4000, 16, mk.MLA_DIMS, model.kv_dtype)
    assert cached is not None and cached[1] == mk.EXTRAPOLATED and cached[0] > one
    # the roofline model keeps its own MLA numbers
    roof = Predictor(model, get_device("b200_sxm"), Parallel(tp=8), latency_model="roofline")
    rops = {o.name: o for o in roof.ops(BatchShape(64, 64 * 4000, ((2048, 0),)))}
    by_hand = roofline.attn_decode_s(
        64, 64 * 4000, 16, 1, 576, 512, model.kv_dtype, get_device("b200_sxm"), FIT, latent=True
    )
    assert rops["attn_decode"].provenance == "roofline"
    assert rops["attn_decode"].seconds == pytest.approx(by_hand * model.num_attention_layers)
    assert rops["attn_decode"].seconds != ops["attn_decode"].seconds


def test_moe_skewed_routing_is_slower_than_balanced_on_measured_rows() -> None:
    """The power-law rows are the measured ones of that distribution, and at a few thousand
    tokens a skewed routing loads some experts more: the layer takes longer than balanced."""
    b = backend("b200_sxm")
    layout = (7168, 2048, 8, 256, 8, 1)
    for tokens in (2048, 8192):
        skew, code = one_moe(b, tokens, layout, "fp8", "power_law_1.2", block=True)
        rows = moe_rows("b200_sxm", "fp8_block", distribution="power_law_1.2")
        hit = (rows["num_tokens"] == tokens) & (rows["hidden_size"] == 7168)
        hit &= (rows["num_experts"] == 256) & (rows["moe_tp_size"] == 8)
        hit &= rows["moe_ep_size"] == 1
        assert code == mk.MEASURED
        assert skew == pytest.approx(rows["latency"][hit].min() * 1e-3, rel=1e-9)
        assert skew > one_moe(b, tokens, layout, "fp8", block=True)[0]


def gdn_rows(gpu: str, engine: str, phase: str, source: str) -> dict[str, np.ndarray]:
    found = kernel_tables.find(gpu, "linear_attention", "gdn_perf", engine)
    assert found is not None
    names = ("kernel_source", "phase", "batch_size", "seq_len", "num_k_heads", "num_v_heads")
    cols = kernel_tables.read(found[0], (*names, "latency"))
    keep = (cols["phase"] == phase) & (cols["kernel_source"] == source)
    keep &= (cols["num_k_heads"] == 2) & (cols["num_v_heads"] == 8)
    return {c: v[keep] for c, v in cols.items()}


def test_gdn_exact_on_measured_rows_and_monotone_between_them() -> None:
    """Gated DeltaNet (Qwen3.5-397B's 2 k / 8 v heads of 128 per device at TP8, B200, SGLang):
    a measured batch (decode) or length (prefill) returns its row; between two it lies between
    them."""
    b = backend("b200_sxm", "sglang")
    unused = lambda p: np.full(len(p), np.nan)  # noqa: E731 (never reached on the grid)
    heads = (2, 8, 128, 128)
    dec = gdn_rows("b200_sxm", "sglang", "generation", mk.GDN_KERNELS[True][1])
    for batch in np.unique(dec["batch_size"])[:6]:  # several models share a layout: fastest
        lat = dec["latency"][dec["batch_size"] == batch].min()
        t, code = b.gdn(int(batch), 1, heads, True, unused)
        assert (t, code) == (pytest.approx(lat * 1e-3, rel=1e-9), mk.MEASURED)
    pre = gdn_rows("b200_sxm", "sglang", "context", mk.GDN_KERNELS[False][1])
    one = pre["batch_size"] == 1
    lengths = np.unique(pre["seq_len"][one])
    lats = np.array([pre["latency"][one & (pre["seq_len"] == n)].min() for n in lengths])
    i = int(np.searchsorted(lengths, 1024))
    t, code = b.gdn(1, int(lengths[i]), heads, False, unused)
    assert (t, code) == (pytest.approx(lats[i] * 1e-3, rel=1e-9), mk.MEASURED)
    mid = int(np.sqrt(lengths[i] * lengths[i + 1]))
    t, code = b.gdn(1, mid, heads, False, unused)
    lo, hi = sorted((lats[i] * 1e-3, lats[i + 1] * 1e-3))
    assert lo <= t <= hi and code == mk.INTERPOLATED
    assert b.gdn(4, 1, (3, 8, 128, 128), True, unused) is None  # layout not measured


def test_gdn_provenance_in_the_predictor() -> None:
    """Qwen3.5-397B on 8 B200s under SGLang: `auto` prices the recurrence from the GDN tables
    (decode and prefill), the roofline does not; a layout the tables lack stays roofline."""
    model = load_model("Qwen/Qwen3.5-397B-A17B").with_dtypes(weight="fp8")
    eng = get_engine("sglang")
    auto = Predictor(model, get_device("b200_sxm"), Parallel(tp=8), eng, latency_model="auto")
    ops = {op.name: op for op in auto.ops(BatchShape(64, 64 * 1500, ((1024, 0),)))}
    assert ops["linear_scan_decode"].provenance == "measured"  # batch 64 is a grid point
    assert ops["linear_scan_prefill"].provenance == "measured"  # 1024 tokens too
    rows = gdn_rows("b200_sxm", "sglang", "generation", mk.GDN_KERNELS[True][1])
    per_layer = float(rows["latency"][rows["batch_size"] == 64].min()) * 1e-3
    assert ops["linear_scan_decode"].seconds == pytest.approx(45 * per_layer, rel=1e-9)
    roof = Predictor(model, get_device("b200_sxm"), Parallel(tp=8), eng, latency_model="roofline")
    r_ops = {op.name: op for op in roof.ops(BatchShape(64, 64 * 1500, ()))}
    assert r_ops["linear_scan_decode"].provenance == "roofline"
    odd = Predictor(model, get_device("b200_sxm"), Parallel(tp=4), eng, latency_model="auto")
    o_ops = {op.name: op for op in odd.ops(BatchShape(8, 8 * 1500, ()))}
    assert o_ops["linear_scan_decode"].provenance in ("measured", "interpolated")  # 4/16 heads


def test_trtllm_fp8_block_moe_on_blackwell_skips_the_deepgemm_table_unless_asked() -> None:
    """aiconfigurator measured TensorRT-LLM's block-scaled fp8 MoE on B200 with DeepGEMM only,
    while the engine's own choice there is its TRTLLM-gen kernels: by default that table does
    not price the expert layers; a launch that asks for DeepGEMM (`moe_backend`) gets it."""
    layout = (7168, 2048, 8, 256, 8, 1)  # DeepSeek's expert layer on 8 GPUs, no EP
    # (1.3.0rc20's collection: rc23's holds only MXFP4 experts)
    rows = moe_rows("b200_sxm", "fp8_block", engine="trtllm", version="1.3.0rc20")
    assert set(rows["kernel_source"]) == {"deepgemm"}
    hit = (rows["num_tokens"] == 64) & (rows["hidden_size"] == 7168)
    hit &= (rows["num_experts"] == 256) & (rows["moe_tp_size"] == 8) & (rows["moe_ep_size"] == 1)
    deepgemm = rows["latency"][hit].min() * 1e-3
    dev = get_device("b200_sxm")
    asked = mk.backend("measured", dev, "trtllm", None, FIT, moe_backend="DeepGEMM")
    t, code = one_moe(asked, 64, layout, "fp8", block=True)
    assert t == pytest.approx(deepgemm, rel=1e-9) and code == mk.MEASURED
    default = mk.backend("measured", dev, "trtllm", None, FIT)
    priced = default.moe(np.array([64.0]), layout, "fp8", block=True)
    assert priced is None or float(priced[0][0]) != pytest.approx(deepgemm, rel=1e-3)
    # SGLang's table on the same GPU holds its own kernels and still prices the layer
    sglang = mk.backend("measured", dev, "sglang", None, FIT)
    assert sglang.moe(np.array([64.0]), layout, "fp8") is not None


def test_predict_moe_backend_flag_picks_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`--moe-backend deepgemm` lets TensorRT-LLM's DeepGEMM table price DeepSeek's experts on
    B200; without it they are not the measured DeepGEMM rows."""
    base = ["predict", "--model", "deepseek-ai/DeepSeek-R1", "--device", "b200_sxm", "--tp",
            "8", "--engine", "trtllm", "--decode-seqs", "64", "--context", "1000",
            "--weight-dtype", "fp8", "--latency-model", "measured", "--json"]  # fmt: skip
    prov = {}
    for extra in ([], ["--moe-backend", "DEEPGEMM"]):
        assert main(base + extra) == 0
        ops = {o["name"]: o for o in json.loads(capsys.readouterr().out)["operators"]}
        prov[bool(extra)] = (ops["moe_up_proj"]["provenance"], ops["moe_up_proj"]["seconds"])
    assert prov[True][0] == "measured"
    assert prov[False][0] != "measured" and prov[False][1] < prov[True][1]


def test_block_scaled_fp8_checkpoints_take_the_block_scaled_tables() -> None:
    """DeepSeek-R1's fp8 weights are scaled per 128 × 128 block: TensorRT-LLM runs them with its
    block-scaled GEMMs, which its H200 table measures at 6.4 µs for q_b_proj at 4 rows; the
    per-tensor fp8 GEMM of the same shape is another kernel (13.4 µs there)."""
    model = load_model("deepseek-ai/DeepSeek-R1")
    assert model.fp8_block
    pred = Predictor(
        model,
        get_device("h200_sxm"),
        Parallel(tp=8, ep=8),
        get_engine("trtllm"),
        latency_model="measured",
    )
    ops = {op.name: op for op in pred.ops(BatchShape(4, 4 * 1500, ()))}
    n = model.num_heads * (model.qk_nope_head_dim + model.qk_rope_head_dim) // 8  # 3072
    rows = {d: gemm_rows("h200_sxm", d, "trtllm") for d in ("fp8_block", "fp8")}
    at = {
        d: float(r["latency"][(r["m"] == 4) & (r["n"] == n) & (r["k"] == model.q_lora_rank)][0])
        for d, r in rows.items()
    }
    assert at["fp8"] > 2 * at["fp8_block"]  # the two kernels differ
    q_b = ops["q_b_proj"]
    assert q_b.provenance == "measured"
    assert q_b.seconds == pytest.approx(q_b.calls * at["fp8_block"] * 1e-3, rel=1e-9)


def test_moe_layouts_are_found_in_every_collection_of_the_engine() -> None:
    """TensorRT-LLM 1.3.0rc23's H200 expert tables hold four layouts, none DeepSeek's, which
    1.3.0rc20 measured: asked for rc23, DeepSeek's layer is still a measured row (rc20's, the
    nearer of the collections that have it), not another model's layout shifted."""
    b = mk.backend("measured", get_device("h200_sxm"), "trtllm", "1.3.0rc23", FIT)
    layout = (7168, 2048, 8, 256, 1, 8)
    t, code = one_moe(b, 4, layout, "fp8", block=True)
    assert code == mk.MEASURED
    rows = moe_rows("h200_sxm", "fp8_block", "trtllm", version="1.3.0rc20")
    hit = (rows["num_tokens"] == 4) & (rows["hidden_size"] == 7168)
    hit &= (rows["num_experts"] == 256) & (rows["moe_tp_size"] == 1) & (rows["moe_ep_size"] == 8)
    assert t == pytest.approx(rows["latency"][hit].min() * 1e-3, rel=1e-9)
    assert kernel_tables.nearest_version(["1.3.0rc10", "1.3.0rc20"], "1.3.0rc23") == "1.3.0rc20"
    assert kernel_tables.nearest_version(["1.3.0rc10", "1.3.0rc20"], None) == "1.3.0rc20"


def test_the_router_is_priced_unquantised_whatever_the_checkpoint() -> None:
    """Engines keep the MoE router in bf16 (vLLM's GateLinear has no quant_config, SGLang's
    MoEGate and TensorRT-LLM's DeepseekV3Gate hold bf16 weights), so an NVFP4 DeepSeek-R1's
    router at 8 rows is B200's measured bf16 GEMM (about 5 µs), not its nvfp4 one (about 19 µs
    with the activation quantisation)."""
    model = load_model("nvidia/DeepSeek-R1-NVFP4")
    assert model.weight_dtype == "fp4"
    b200, trtllm = get_device("b200_sxm"), get_engine("trtllm")
    pred = Predictor(model, b200, Parallel(tp=4), trtllm, latency_model="measured")
    router = {op.name: op for op in pred.ops(BatchShape(8, 8 * 1500, ()))}["router"]
    rows = {d: gemm_rows("b200_sxm", d, "trtllm") for d in ("bfloat16", "nvfp4")}
    hit = {
        d: (r["m"] == 8) & (r["n"] == model.num_experts) & (r["k"] == model.hidden_size)
        for d, r in rows.items()
    }
    bf16_s = float(rows["bfloat16"]["latency"][hit["bfloat16"]][0]) * 1e-3
    fp4_s = float(rows["nvfp4"]["latency"][hit["nvfp4"]][0]) * 1e-3
    assert fp4_s > 3 * bf16_s
    assert router.provenance == "measured"
    assert router.seconds == pytest.approx(router.calls * bf16_s, rel=1e-9)


def test_static_fp8_scales_take_the_scale_pass_off_the_measured_gemm() -> None:
    """aiconfigurator collected the per-tensor fp8 GEMMs without an input scale, so they hold
    the dynamic scale's amax pass (its TensorRT-LLM collector says so); a checkpoint with a
    calibrated scale skips it. At a measured point (B200 TensorRT-LLM, 8 × 10240 × 8192) the
    static GEMM is the table's time less the engine's `computescale` row at (8, 8192), and it
    never goes below the GEMM's speed of light (the weights read once at peak bandwidth)."""
    b = backend("b200_sxm", "trtllm")
    m, n, k = 8, 10240, 8192
    rows = gemm_rows("b200_sxm", "fp8", "trtllm")
    hit = (rows["m"] == m) & (rows["n"] == n) & (rows["k"] == k)
    table_s = float(rows["latency"][hit].min()) * 1e-3
    path, _ = kernel_tables.find("b200_sxm", "quantize", "computescale_perf", "trtllm")
    scale = kernel_tables.read(path, ("quant_dtype", "m", "k", "latency"))
    at = (scale["quant_dtype"] == "fp8") & (scale["m"] == m) & (scale["k"] == k)
    scale_s = float(scale["latency"][at].min()) * 1e-3
    dynamic, code = b.gemm(np.array([float(m)]), n, k, "fp8")
    static, code_s = b.gemm(np.array([float(m)]), n, k, "fp8", static_scale=True)
    assert dynamic[0] == pytest.approx(table_s, rel=1e-9) and code[0] == mk.MEASURED
    assert static[0] == pytest.approx(table_s - scale_s, rel=1e-9) and code_s[0] == mk.MEASURED
    sol = n * k / get_device("b200_sxm").mem_bw_bytes_per_s
    assert static[0] > sol
    # Block-scaled and nvfp4 tables are other kernels: nothing is taken off them.
    for kb, dtype, block in ((b, "fp8", True), (backend("b200_sxm", "sglang"), "fp4", False)):
        plain, _ = kb.gemm(np.array([float(m)]), n, k, dtype, block)
        assert kb.gemm(np.array([float(m)]), n, k, dtype, block, True)[0][0] == plain[0]


def test_tensorrt_llm_nvfp4_gemms_are_not_priced_from_their_untuned_tables() -> None:
    """aiconfigurator's TensorRT-LLM GEMM collector never enters `autotune()`, so
    `trtllm::nvfp4_gemm` (which picks its tactic with `AutoTuner.choose_one`) ran its fallback
    tactic there: about 19 µs at 8 × 2048 × 7168 on B200, twice the bf16 GEMM of four times the
    bytes, while the engine tunes at warm-up, picking the fastest of its tactics. TensorRT-LLM's
    NVFP4 GEMMs are therefore priced by the faster of the other engines' measured nvfp4 kernels
    on the same GPU (still measured); its other GEMM tables stay its own."""
    trt = backend("b200_sxm", "trtllm")
    m = np.array([8.0])
    rows = {d: gemm_rows("b200_sxm", d, "trtllm") for d in ("bfloat16", "nvfp4")}
    hit = {d: (r["m"] == 8) & (r["n"] == 2048) & (r["k"] == 7168) for d, r in rows.items()}
    fp4_s, bf16_s = (float(rows[d]["latency"][hit[d]].min()) * 1e-3 for d in ("nvfp4", "bfloat16"))
    assert fp4_s > 1.8 * bf16_s  # the untuned table: slower than four times the bytes in bf16
    priced = trt.gemm(m, 2048, 7168, "fp4")
    assert priced is not None and priced[1][0] == mk.MEASURED
    assert priced[0][0] < 0.7 * fp4_s
    others = [one_gemm(backend("b200_sxm", e), 8, 2048, 7168, "fp4")[0] for e in ("vllm", "sglang")]
    assert priced[0][0] == pytest.approx(min(others)) and max(others) > min(others)
    assert one_gemm(trt, 8, 2048, 7168, "bf16")[0] == pytest.approx(bf16_s)


def test_vllm_block_fp8_gemms_are_priced_from_a_graphed_table() -> None:
    """aiconfigurator's vLLM collector times block-fp8 GEMMs eagerly, without CUDA graphs
    (collector/vllm/collect_gemm.py), so no row of vLLM's fp8_block table is under ~150 µs on
    B200 (~55 µs on H100): the host's dispatch of the op, not the kernel; SGLang's graphed
    fp8_block rows start at a few µs. A vLLM block-fp8 GEMM is priced from the other engine's
    table: at 16 × 2048 × 7168 on B200 it is SGLang's measured figure, not vLLM's floor."""
    for gpu, floor_s in (("b200_sxm", 150e-6), ("h100_sxm", 50e-6)):
        assert float(gemm_rows(gpu, "fp8_block")["latency"].min()) * 1e-3 > floor_s
        assert float(gemm_rows(gpu, "fp8_block", "sglang")["latency"].min()) * 1e-3 < 10e-6
    sg = gemm_rows("b200_sxm", "fp8_block", "sglang")
    at = (sg["m"] == 16) & (sg["n"] == 2048) & (sg["k"] == 7168)
    sglang_s = float(sg["latency"][at].min()) * 1e-3
    priced = backend("b200_sxm", "vllm").gemm(np.array([16.0]), 2048, 7168, "fp8", block=True)
    assert priced is not None
    t, code = float(priced[0][0]), int(priced[1][0])
    assert t == pytest.approx(sglang_s) and code == mk.MEASURED
    assert t < 30e-6
    # per-tensor fp8 stays vLLM's own (graphed) table
    own = gemm_rows("b200_sxm", "fp8")
    at = (own["m"] == 16) & (own["n"] == 2048) & (own["k"] == 7168)
    assert one_gemm(backend("b200_sxm", "vllm"), 16, 2048, 7168, "fp8")[0] == pytest.approx(
        float(own["latency"][at].min()) * 1e-3
    )


def test_attention_tables_without_a_window_column_are_full_attention() -> None:
    """aiconfigurator-core's A100 SGLang 0.5.10 and vLLM 0.14.0 attention tables predate the
    `window_size` column; they measure full attention, so they price it (no crash under auto)."""
    found = kernel_tables.find("a100_sxm", "attention", "context_attention_perf", "sglang")
    assert found is not None
    cols = kernel_tables.read(found[0], ("num_heads", "window_size", "latency"))
    assert len(cols["window_size"]) == len(cols["latency"]) > 0
    assert not cols["window_size"].any()
    model = load_model("meta-llama/Llama-3.1-8B")
    pred = Predictor(
        model, get_device("a100_sxm"), engine=get_engine("sglang"), latency_model="auto"
    )
    ops = [o for o in pred.ops(BatchShape(prefill=((1024, 0),))) if o.kind == "attention"]
    assert ops[0].provenance in ("measured", "interpolated") and ops[0].seconds > 0
    with pytest.raises(ServesimError, match="has no column 'nope'"):
        kernel_tables.read(found[0], ("nope",))


def test_measured_tables_are_the_default_where_they_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --latency-model, predict prices an H100's GEMMs from the tables and an MI300X's
    (no tables) from the roofline."""
    assert (
        Deployment(
            model=load_model("meta-llama/Llama-3.1-8B"), device=get_device("h100_sxm")
        ).latency_model
        == "auto"
    )
    argv = ["predict", "--model", "meta-llama/Llama-3.1-8B", "--decode-seqs", "64", "--json"]
    assert main([*argv, "--device", "h100_sxm"]) == 0
    ops = {op["name"]: op["provenance"] for op in json.loads(capsys.readouterr().out)["operators"]}
    assert ops["qkv_proj"] in ("measured", "interpolated")
    assert main([*argv, "--device", "mi300x"]) == 0
    ops = {op["name"]: op["provenance"] for op in json.loads(capsys.readouterr().out)["operators"]}
    assert ops["qkv_proj"] == "roofline"


def test_an_all_reduce_without_a_table_at_that_gpu_count_takes_the_roofline() -> None:
    """GB300's NCCL table measures 2 and 4 GPUs only: at TP 8 the messages above the custom
    all-reduce's limit go to NCCL, which the roofline prices (before: NaN, and every GB300
    TP-8 prefill over ~800 tokens never finished)."""
    b = backend("gb300")
    limit = FIT.params["custom_all_reduce"]["max_bytes"]
    priced = b.allreduce(np.array([1024.0, 4.0 * limit]), 8, "auto")
    assert priced is not None
    t, codes = priced
    assert np.isfinite(t).all() and mk.PROVENANCE[int(codes[1])] == "roofline"
    nccl = roofline.collective_np("all_reduce", np.array([4.0 * limit]), 8, b.device, FIT, "nccl")
    assert t[1] == pytest.approx(float(nccl[0]))
    model = load_model("Qwen/Qwen3-32B")
    pred = Predictor(model, get_device("gb300"), Parallel(tp=8), latency_model="auto")
    assert np.isfinite([pred.step_s(0, 0, ((n, 0),)) for n in (512, 1024, 2048, 8192)]).all()


@pytest.mark.parametrize("gpu", ["b300", "gb300"])
@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_every_request_finishes_on_the_newest_gpus_under_the_default(gpu: str, engine: str) -> None:
    """A short closed loop on each engine's B300/GB300 tables (dense TP 8, MoE TP 8 + EP 8, 8k
    prompts past every all-reduce table's range) serves every request with finite times."""
    from servesim.sim.simulate import simulate
    from servesim.sim.synthetic import ClosedLoop, Fixed

    for name, par in (
        ("Qwen/Qwen3-32B", Parallel(tp=8)),
        ("deepseek-ai/DeepSeek-R1", Parallel(tp=8, ep=8)),
    ):
        dep = Deployment(load_model(name), get_device(gpu), par, get_engine(engine))
        res = simulate(dep, closed_loop=ClosedLoop(8, 16, Fixed(8192), Fixed(16)))
        cols = res.columns()
        assert len(cols["ttft_s"]) == 16 and np.isfinite(cols["ttft_s"]).all(), (name, gpu, engine)
        assert np.isfinite(cols["tpot_s"]).all()


def test_shapes_priced_in_blocks_match_each_shape_priced_alone() -> None:
    """Decode batch sizes and MLA prefill chunks are looked up a block at a time (speed); each
    must price exactly as the point-by-point lookup does, at the block edges and beyond the
    measured grid too."""
    b = backend("b200_sxm", "sglang")
    ctx = np.array([1024.0, 4096.0])
    # A context array longer than 4 is priced directly, point by point: the reference.
    ref_ctx = np.array([1024.0, 4096.0, 1500.0, 2500.0, 3500.0])
    for batch in (1, 2, 255, 256, 257, 511, 3000, 9000):
        for price in (
            lambda c, n=batch: b.mla_decode(n, c, 16, mk.MLA_DIMS, "fp8"),
            lambda c, n=batch: b.decode(n, c, 8, 1, 128, "fp8"),
        ):
            blocked, alone = price(ctx), price(ref_ctx)
            assert blocked is not None and alone is not None
            np.testing.assert_array_equal(blocked[0], alone[0][:2])
            np.testing.assert_array_equal(blocked[1], alone[1][:2])
    # MLA prefill: a chunk over cached tokens, or with another head count, is the table's
    # chunk without them scaled by the roofline's ratio (by hand), whichever block it is in.
    dev = get_device("b200_sxm")
    for new in (1, 255, 256, 257, 3000, 40000):
        alone, code = b.mla_prefill(new, 0, 16, mk.MLA_DIMS, "fp8")  # type: ignore[misc]
        assert code in (mk.MEASURED, mk.INTERPOLATED, mk.EXTRAPOLATED)
        cached, c_code = b.mla_prefill(new, 5000, 16, mk.MLA_DIMS, "fp8")  # type: ignore[misc]
        if code != mk.EXTRAPOLATED:  # on the grid: anchored at the chunk itself
            with_cache, without = (
                roofline.attn_prefill_s(1, new, c, 16, 16, 192, 128, "fp8", dev, FIT)
                for c in (5000, 0)
            )
            assert cached == pytest.approx(alone * (with_cache / without), rel=1e-12)
        assert c_code == mk.EXTRAPOLATED and cached > alone


def wide_ep_row(gpu: str, phase: str, tokens: int, ep: int) -> float:
    """Seconds of one row of SGLang's DeepEP expert table (DeepSeek's layer, 1.01 power law)."""
    found = kernel_tables.find(gpu, "moe", f"wideep_{phase}_moe_perf", "sglang")
    assert found is not None
    c = kernel_tables.read(found[0], mk._MOE_COLS)
    hit = (c["num_tokens"] == tokens) & (c["moe_ep_size"] == ep)
    hit &= (c["distribution"] == "power_law_1.01") & (c["moe_dtype"] == "fp8_block")
    assert hit.sum() == 1
    return float(c["latency"][hit][0]) * 1e-3


def test_sglang_deepep_experts_are_priced_from_the_deepep_tables_per_phase() -> None:
    """`--moe-a2a-backend deepep` runs DeepEP's grouped GEMMs on the dispatched tokens, not
    the fused MoE kernel of the tables measured without DeepEP (GB200, DeepSeek-R1, EP 16).
    Prefill batches take the normal-mode (context) table, decode batches the low-latency
    (generation) one; experts of a dtype without a DeepEP table keep the fused tables."""
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    gb200 = get_device("gb200")
    deepep = get_engine("sglang").with_overrides(moe_a2a="deepep")
    par = Parallel(tp=1, dp=16, ep=16)
    pred = Predictor(r1, gb200, par, deepep, latency_model="auto")

    def experts(batch: BatchShape) -> float:
        ops = {o.name: o for o in pred.ops(batch)}
        return sum(ops[n].seconds for n in ("moe_up_proj", "moe_down_proj", "moe_act"))

    layers = r1.num_moe_layers
    # 16 ranks each prefilling 2,048 tokens: 32,768 tokens of the EP group, a measured row
    prefill = BatchShape(0, 0, tuple((2048, 0) for _ in range(16)))
    assert experts(prefill) == pytest.approx(
        layers * wide_ep_row("gb200", "context", 32768, 16), rel=1e-9
    )
    # 1,024 decoding sequences over the 16 ranks: the low-latency table's 1,024-token row
    assert experts(BatchShape(1024, 1024 * 2000, ())) == pytest.approx(
        layers * wide_ep_row("gb200", "generation", 1024, 16), rel=1e-9
    )
    # the simulator's step prices a prefill batch with the context table too (and the
    # kernels, not the eager host, set the pace of a prefill this long)
    fused = Predictor(r1, gb200, par, get_engine("sglang"), latency_model="auto")
    assert pred.step_s(0, 0, prefill.prefill) < fused.step_s(0, 0, prefill.prefill)
    assert pred.step_s(0, 0, prefill.prefill) == pytest.approx(
        sum(o.seconds for o in pred.ops(prefill)), rel=1e-9
    )
    # fp4 experts: no DeepEP table of that dtype, so the fused tables price them
    fp4 = load_model("nvidia/DeepSeek-R1-NVFP4")
    a = Predictor(fp4, gb200, par, deepep, latency_model="auto").ops(prefill)
    b = Predictor(fp4, gb200, par, replace(deepep, moe_a2a="none"), latency_model="auto").ops(
        prefill
    )
    up = {o.name: o.seconds for o in a}["moe_up_proj"]
    assert up == pytest.approx({o.name: o.seconds for o in b}["moe_up_proj"], rel=1e-9)


def test_a_steps_prefill_chunks_share_one_batched_attention_call() -> None:
    """The engines run one rank's prefill chunks as one varlen attention call a layer, which
    fills SMs one short prompt leaves idle: 8 prompts of 1,024 tokens (Llama-3.1-8B on 8 H200s,
    4 query heads and 1 KV head a GPU) cost what the table measures for a batch of 8, not 8
    times its batch of 1; a lone chunk keeps its own price, and the gain fades with length."""
    m = load_model("meta-llama/Llama-3.1-8B-Instruct")
    pred = Predictor(
        m, get_device("h200_sxm"), Parallel(tp=8), get_engine("vllm"), latency_model="auto"
    )
    found = kernel_tables.find("h200_sxm", "attention", "context_attention_perf", "vllm")
    assert found is not None
    c = kernel_tables.read(found[0], mk._ATTN_COLS)
    hit = (c["num_heads"] == 4) & (c["num_key_value_heads"] == 1) & (c["head_dim"] == 128)
    hit &= (c["isl"] == 1024) & (c["window_size"] == 0) & (c["kv_cache_dtype"] == "bfloat16")

    def measured(batch: int) -> float:
        return float(c["latency"][hit & (c["batch_size"] == batch)].min()) * 1e-3

    layers = m.num_layers
    assert pred._prefill_chunks_s([(1024, 0)]) == pytest.approx(layers * measured(1), rel=1e-9)
    assert pred._prefill_chunks_s([(1024, 0)] * 8) == pytest.approx(layers * measured(8), rel=1e-9)
    assert measured(8) < 0.5 * 8 * measured(1)
    short, long = pred._prefill_gain(8, 1024 * 1025 / 2), pred._prefill_gain(8, 8192 * 8193 / 2)
    assert short < long <= 1.0
    # the per-operator breakdown prices the chunks as the step does
    batch = BatchShape(0, 0, ((1024, 0),) * 8)
    attn = sum(o.seconds for o in pred.ops(batch) if o.name == "attn_prefill")
    assert attn == pytest.approx(pred._prefill_chunks_s(list(batch.prefill)), rel=1e-9)


def test_a_trtllm_launch_that_names_deepgemm_is_priced_by_the_deepgemm_rows() -> None:
    """TensorRT-LLM's `moe_config.backend: DEEPGEMM` (152 srt-slurm recipes) runs DeepGEMM's
    block-scaled fp8 grouped GEMMs, which B200's table measures alone for that dtype; the table
    of a launch naming no backend holds NVFP4 kernels too, and a TRTLLM or CUTLASS launch is
    priced by the fastest kernel of each shape, as one naming none."""
    layout = (7168, 2048, 8, 256, 1, 8)  # DeepSeek's expert layer on 8 GPUs of EP
    dev = get_device("b200_sxm")
    rows = moe_rows("b200_sxm", "fp8_block", engine="trtllm", version="1.3.0rc20")
    hit = (rows["num_tokens"] == 256) & (rows["hidden_size"] == 7168)
    hit &= (rows["num_experts"] == 256) & (rows["moe_tp_size"] == 1) & (rows["moe_ep_size"] == 8)
    deepgemm = rows["latency"][hit].min() * 1e-3
    asked = mk.backend("measured", dev, "trtllm", None, FIT, moe_backend="deepgemm")
    assert one_moe(asked, 256, layout, "fp8", block=True) == (pytest.approx(deepgemm), mk.MEASURED)
    fp4 = {}
    for name in ("auto", "TRTLLM", "CUTLASS"):
        b = mk.backend("measured", dev, "trtllm", None, FIT, moe_backend=name)
        fp4[name] = one_moe(b, 256, layout, "fp4")
    assert len(set(fp4.values())) == 1
    # the fastest of the NVFP4 kernels measured for that shape (CUTLASS and TRTLLM-gen)
    nvfp4 = moe_rows("b200_sxm", "nvfp4", engine="trtllm", version="1.3.0rc20")
    at = (nvfp4["num_tokens"] == 256) & (nvfp4["hidden_size"] == 7168)
    at &= (nvfp4["num_experts"] == 256) & (nvfp4["moe_tp_size"] == 1)
    at &= nvfp4["moe_ep_size"] == 8
    assert fp4["auto"][0] == pytest.approx(nvfp4["latency"][at].min() * 1e-3, rel=1e-9)


def test_a_trtllm_wideep_launch_is_priced_by_the_wideep_rows() -> None:
    """TensorRT-LLM's `moe_config.backend: WIDEEP` runs its own expert kernels on the tokens its
    all-to-all dispatched (aiconfigurator's `wideep_moe_perf`: CUTLASS NVFP4, the EP group's
    tokens, the 1.01 power law without EPLB), not the fused MoE of `moe_perf`; fp8 experts,
    which that table does not hold, keep the fused tables."""
    layout = (7168, 2048, 8, 256, 1, 16)  # DeepSeek's expert layer over 16 GPUs of EP
    found = kernel_tables.find("gb200", "moe", "wideep_moe_perf", "trtllm")
    assert found is not None
    c = kernel_tables.read(found[0], mk._MOE_COLS)
    hit = (c["num_tokens"] == 1024) & (c["moe_ep_size"] == 16) & (c["hidden_size"] == 7168)
    hit &= (c["num_experts"] == 256) & (c["distribution"] == "power_law_1.01")
    assert hit.sum() == 1
    dev = get_device("gb200")
    wide = mk.backend("measured", dev, "trtllm", None, FIT, moe_backend="WIDEEP")
    t, code = one_moe(wide, 1024, layout, "fp4", "power_law_1.01")
    assert (t, code) == (pytest.approx(float(c["latency"][hit][0]) * 1e-3), mk.MEASURED)
    fused = mk.backend("measured", dev, "trtllm", None, FIT)
    assert one_moe(fused, 1024, layout, "fp4", "power_law_1.01")[0] != pytest.approx(t)
    fp8 = one_moe(wide, 1024, layout, "fp8", "power_law_1.01", block=True)
    assert fp8 == one_moe(fused, 1024, layout, "fp8", "power_law_1.01", block=True)


def test_mxfp4_experts_are_priced_by_the_activation_format_the_engine_runs() -> None:
    """gpt-oss's MXFP4 experts run on MXFP8-quantised activations under TensorRT-LLM on
    Blackwell (`get_mxfp4_quant_algo`: W4A8_MXFP4_MXFP8 from SM 10.0) and on bf16 ones on
    Hopper; B200's TensorRT-LLM table measured both, 4x apart at 64 tokens, so the launch's
    format picks the row. A launch naming bf16 (`--mxfp4-activation bf16`) takes the other."""
    layout = (2880, 2880, 4, 128, 1, 1)  # gpt-oss-120b's expert layer on one GPU
    dev = get_device("b200_sxm")

    def row(dtype: str) -> float:
        rows = moe_rows("b200_sxm", dtype, engine="trtllm", version="1.3.0rc20")
        hit = (rows["num_tokens"] == 64) & (rows["hidden_size"] == 2880)
        hit &= (rows["num_experts"] == 128) & (rows["topk"] == 4) & (rows["moe_tp_size"] == 1)
        hit &= rows["moe_ep_size"] == 1
        assert hit.sum() == 1
        return float(rows["latency"][hit][0]) * 1e-3

    w4a8, w4a16 = row("w4a8_mxfp4_mxfp8"), row("w4a16_mxfp4")
    assert w4a16 > 3 * w4a8
    trt = mk.backend("measured", dev, "trtllm", "1.3.0rc20", FIT)
    assert one_moe(trt, 64, layout, "mxfp4") == (pytest.approx(w4a8), mk.MEASURED)
    bf16 = mk.backend("measured", dev, "trtllm", "1.3.0rc20", FIT, mxfp4_activation="bf16")
    assert one_moe(bf16, 64, layout, "mxfp4") == (pytest.approx(w4a16), mk.MEASURED)
    # the engines' own choices (vLLM needs VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1 for MXFP8)
    assert mk.mxfp4_activation("trtllm", "b200_sxm") == "mxfp8"
    assert mk.mxfp4_activation("trtllm", "h200_sxm") == "bf16"
    assert mk.mxfp4_activation("sglang", "gb200") == "mxfp8"
    assert mk.mxfp4_activation("vllm", "b200_sxm") == "bf16"
    assert mk.mxfp4_activation("vllm", "b200_sxm", "mxfp8") == "mxfp8"
    with pytest.raises(ServesimError, match="MXFP4 activation"):
        mk.mxfp4_activation("vllm", "b200_sxm", "fp8")


def test_vllm_block_fp8_experts_on_blackwell_run_the_kernel_its_oracle_picks() -> None:
    """From vLLM 0.16 the fp8 MoE oracle tries FlashInfer's TRT-LLM kernels first on SM 10.x
    (PR #32414, #34260). aiconfigurator's vLLM 0.19 B200 table timed `fused_experts`' Triton
    kernels directly (`vllm_fused_moe`), its 0.24 table the oracle's FlashInfer choice: a 0.19
    launch of MiniMax-M2.5's fp8 experts is priced by the FlashInfer rows (0.24's measurement),
    one that turned FlashInfer and DeepGEMM off (`moe_backend` triton) by the Triton rows, and
    a 0.15 launch (before the oracle) keeps its nearest table. Hopper keeps its nearest table."""
    layout = (3072, 1536, 8, 256, 2, 1)  # MiniMax-M2.5's expert layer at TP 2

    def row(version: str, kernel: str) -> float:
        found = kernel_tables.find("b200_sxm", "moe", "moe_perf", "vllm", version)
        assert found is not None and found[1] == version
        c = kernel_tables.read(found[0], mk._MOE_COLS)
        hit = (c["moe_dtype"] == "fp8_block") & (c["hidden_size"] == 3072)
        hit &= (c["inter_size"] == 1536) & (c["num_tokens"] == 8192) & (c["moe_tp_size"] == 2)
        hit &= (c["moe_ep_size"] == 1) & (c["distribution"] == "power_law_1.01")
        hit &= np.array([kernel in str(k) for k in c["kernel_source"]])
        assert hit.any()
        return float(c["latency"][hit].min()) * 1e-3

    flashinfer, triton = row("0.24.0", "flashinfer_trtllm"), row("0.19.0", "vllm_fused_moe")
    assert triton > 1.5 * flashinfer

    def price(version: str, backend: str = "auto", gpu: str = "b200_sxm") -> tuple[float, int]:
        b = mk.backend("measured", get_device(gpu), "vllm", version, FIT, moe_backend=backend)
        return one_moe(b, 8192, layout, "fp8", "power_law_1.01", block=True)

    assert price("0.19.0") == (pytest.approx(flashinfer), mk.MEASURED)
    assert price("0.19.0", "triton") == (pytest.approx(triton), mk.MEASURED)
    assert price("0.15.1") == price("0.19.0", "triton")  # nearest: the 0.19 Triton rows
    assert price("0.19.0", gpu="h200_sxm") == price("0.15.1", gpu="h200_sxm")


def test_a_vllm_launch_asking_for_flashinfer_int4_moe_is_priced_by_that_kernel() -> None:
    """`VLLM_USE_FLASHINFER_MOE_INT4=1` (InferenceX's Kimi-K2.5 B200 launches) runs FlashInfer's
    TRT-LLM MxInt4 MoE instead of Marlin on SM 10.x. vLLM's B200 tables measured Marlin only;
    SGLang's measured the FlashInfer kernel, 3x faster at 4,096 tokens of Kimi's layout, and
    price it. Hopper ignores the variable (Marlin stays)."""
    layout = (7168, 2048, 8, 384, 8, 1)  # Kimi-K2.5's expert layer, MoE TP 8
    found = kernel_tables.find("b200_sxm", "moe", "moe_perf", "sglang")
    assert found is not None
    c = kernel_tables.read(found[0], mk._MOE_COLS)
    hit = (c["moe_dtype"] == "int4_wo") & (c["num_experts"] == 384) & (c["num_tokens"] == 4096)
    hit &= (c["moe_tp_size"] == 8) & (c["moe_ep_size"] == 1) & (c["distribution"] == "balanced")
    assert hit.sum() == 1 and "flashinfer_trtllm" in str(c["kernel_source"][hit][0])
    flashinfer = float(c["latency"][hit][0]) * 1e-3
    dev = get_device("b200_sxm")
    asked = mk.backend("measured", dev, "vllm", None, FIT, moe_backend="flashinfer_trtllm")
    assert one_moe(asked, 4096, layout, "int4") == (pytest.approx(flashinfer), mk.MEASURED)
    marlin = one_moe(mk.backend("measured", dev, "vllm", None, FIT), 4096, layout, "int4")[0]
    assert marlin > 2 * flashinfer
    h200 = get_device("h200_sxm")
    hopper = mk.backend("measured", h200, "vllm", None, FIT, moe_backend="flashinfer_trtllm")
    default = mk.backend("measured", h200, "vllm", None, FIT)
    assert one_moe(hopper, 4096, layout, "int4") == one_moe(default, 4096, layout, "int4")


def deepep_row(gpu: str, version: str, mode: str, node_num: int, tokens: int) -> float:
    """Seconds of one dispatch plus one combine in a row of SGLang's measured DeepEP tables
    (DeepSeek's layout: hidden 7,168, 256 experts, top-8; normal mode at 20 SMs)."""
    path = kernel_tables.data_root() / gpu / "comm" / "sglang" / version
    path = path / f"{mk.DEEPEP_TABLES[mode]}.parquet"
    parts = (
        ("dispatch_avg_t_us", "combine_avg_t_us")
        if mode == "low_latency"
        else (
            "dispatch_transmit_us",
            "dispatch_notify_us",
            "combine_transmit_us",
            "combine_notify_us",
        )
    )
    extra = ("dispatch_sms",) if mode == "normal" else ()
    cols = ("node_num", "num_token", "hidden_size", "num_experts", "num_topk", *extra, *parts)
    c = kernel_tables.read(path, cols)
    hit = (c["node_num"] == node_num) & (c["num_token"] == tokens) & (c["hidden_size"] == 7168)
    hit &= (c["num_experts"] == 256) & (c["num_topk"] == 8)
    if mode == "normal":
        hit &= c["dispatch_sms"] == 20
    assert hit.sum() == 1
    return sum(float(c[p][hit][0]) for p in parts) * 1e-6


def test_sglang_deepep_dispatch_and_combine_are_priced_from_the_measured_deepep_tables() -> None:
    """SGLang's DeepEP all-to-all (`--moe-a2a-backend deepep`) takes aiconfigurator's measured
    DeepEP rows: low-latency mode for a decode step, normal mode (20 SMs, notify included) for
    a step with prefill, at each rank's own token count; a table that measured the EP group's
    rank count comes first (H200: 0.5.6.post2 ran two nodes, 0.5.12 one). Beyond the measured
    ranks the roofline carries the nearest row (GB200's tables hold one 4-GPU tray); the
    roofline latency model keeps the roofline's all-to-all."""
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    deepep = get_engine("sglang").with_overrides(moe_a2a="deepep", version="0.5.12")
    layers = r1.num_moe_layers

    def a2a(gpu: str, par: Parallel, batch: BatchShape, model: str = "auto") -> tuple:
        pred = Predictor(r1, get_device(gpu), par, deepep, latency_model=model)
        op = {o.name: o for o in pred.ops(batch)}["ep_alltoall"]
        return op.seconds, op.provenance

    # 16 H200s over two nodes, 16 decoding sequences a rank: the two-node row of 16 tokens
    sec, prov = a2a("h200_sxm", Parallel(tp=1, dp=16, ep=16), BatchShape(256, 256 * 2000, ()))
    want = layers * deepep_row("h200_sxm", "0.5.6.post2", "low_latency", 2, 16)
    assert sec == pytest.approx(want, rel=1e-9)
    assert prov == "measured"
    # 8 H200s each prefilling 4,096 tokens: the normal-mode row of the release nearest 0.5.12
    prefill = BatchShape(0, 0, tuple((4096, 0) for _ in range(8)))
    sec, prov = a2a("h200_sxm", Parallel(tp=1, dp=8, ep=8), prefill)
    assert sec == pytest.approx(layers * deepep_row("h200_sxm", "0.5.12", "normal", 1, 4096))
    assert prov == "measured"
    # 32 GB200s: past the tray the tables measured, the roofline carries its row
    _, prov = a2a("gb200", Parallel(tp=1, dp=32, ep=32), BatchShape(2048, 2048 * 2000, ()))
    assert prov == "extrapolated"
    sec, _ = a2a("gb200", Parallel(tp=1, dp=4, ep=4), BatchShape(64, 64 * 2000, ()))
    assert sec == pytest.approx(layers * deepep_row("gb200", "0.5.12", "low_latency", 1, 16))
    # the roofline latency model: no table
    _, prov = a2a("h200_sxm", Parallel(tp=1, dp=8, ep=8), prefill, "roofline")
    assert prov == "roofline"


def test_a_trtllm_launch_forcing_deepep_runs_it_across_nodes() -> None:
    """TensorRT-LLM takes a forced all-to-all (`TRTLLM_FORCE_ALLTOALL_METHOD=DeepEP`, servesim's
    moe_a2a deepep) before its own rules, so DeepSeek-R1 on 16 H100s over two nodes with
    attention DP dispatches by DeepEP's normal mode, in decode too, where it would otherwise
    all-gather and reduce-scatter (its own all-to-all needs one NVLink domain): priced from the
    two-node normal-mode row at 16 tokens a rank."""
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    h100, par = get_device("h100_sxm"), Parallel(tp=1, dp=16, ep=16)
    trt = get_engine("trtllm").with_overrides(version="1.2.0rc6.post3")
    batch = BatchShape(256, 256 * 1500, ())

    def ops(engine: object) -> dict:
        return {
            o.name: o for o in Predictor(r1, h100, par, engine, latency_model="auto").ops(batch)
        }

    plain = ops(trt)
    assert "dp_gather_scatter" in plain and "ep_alltoall" not in plain
    forced = ops(trt.with_overrides(moe_a2a="deepep"))
    assert "dp_gather_scatter" not in forced
    want = r1.num_moe_layers * deepep_row("h100_sxm", "0.5.6.post2", "normal", 2, 16)
    assert forced["ep_alltoall"].seconds == pytest.approx(want, rel=1e-9)
    assert forced["ep_alltoall"].provenance == "measured"


def trtllm_a2a_row(kernel: str, phase: str, dtype: str, ep: int, tokens: int) -> float:
    """Seconds of one row of TensorRT-LLM's measured NVLink all-to-all table on GB200
    (DeepSeek's layout: hidden 7,168, 256 experts, top-8)."""
    found = kernel_tables.find("gb200", "comm", "trtllm_alltoall_perf", "trtllm")
    assert found is not None
    cols = ("kernel_source", "op_name", "moe_dtype", "num_tokens", "moe_ep_size", "latency")
    c = kernel_tables.read(found[0], cols)
    hit = (c["kernel_source"] == kernel) & (c["op_name"] == phase) & (c["moe_dtype"] == dtype)
    hit &= (c["moe_ep_size"] == ep) & (c["num_tokens"] == tokens)
    assert hit.sum() == 1
    return float(c["latency"][hit][0]) * 1e-3


def test_trtllm_nvlink_alltoall_is_priced_from_its_measured_table() -> None:
    """TensorRT-LLM's attention-DP expert layers on a GB200 rack exchange tokens by its NVLink
    all-to-all, measured per phase with TensorRT-LLM 1.2.0rc6: the one-sided kernel (dispatch
    in NVFP4, combine) for the TRTLLM and CUTLASS backends, the two-sided one (prepare,
    dispatch, combine) for WideEP, at each rank's token count (16 ranks, 128 decodes each).
    Its DeepGEMM and CuTe DSL backends gather instead; the roofline latency model keeps the
    roofline's all-to-all."""
    fp4 = load_model("nvidia/DeepSeek-R1-NVFP4")
    gb200, par = get_device("gb200"), Parallel(tp=1, dp=16, ep=16)
    trt = get_engine("trtllm").with_overrides(version="1.2.0rc6.post3")
    batch = BatchShape(2048, 2048 * 1500, ())
    layers = fp4.num_moe_layers

    def ops(engine: object, model: str = "auto") -> dict:
        pred = Predictor(fp4, gb200, par, engine, latency_model=model)
        return {o.name: o for o in pred.ops(batch)}

    one = ops(trt)["ep_alltoall"]
    want = sum(
        trtllm_a2a_row("NVLinkOneSided", ph, "nvfp4", 16, 128)
        for ph in ("alltoall_dispatch", "alltoall_combine")
    )
    assert one.seconds == pytest.approx(layers * want, rel=1e-9)
    assert one.provenance == "measured"
    two = ops(trt.with_overrides(moe_backend="wideep"))["ep_alltoall"]
    want = sum(
        trtllm_a2a_row("NVLinkTwoSided", ph, "nvfp4", 16, 128)
        for ph in ("alltoall_prepare", "alltoall_dispatch", "alltoall_combine")
    )
    assert two.seconds == pytest.approx(layers * want, rel=1e-9)
    assert ops(trt, "roofline")["ep_alltoall"].provenance == "roofline"
    for backend in ("deepgemm", "cutedsl"):
        names = ops(trt.with_overrides(moe_backend=backend))
        assert "dp_gather_scatter" in names and "ep_alltoall" not in names


def test_an_intel_gpus_all_reduce_is_priced_from_its_oneccl_table() -> None:
    """B60's collectives run oneCCL, which aiconfigurator-core measures in the NCCL tables'
    columns (`comm/oneccl/<v>/oneccl_perf`): a 4-GPU all-reduce of 1 Mi fp16 values is that
    table's row (185 µs), where no table priced it before and the roofline (B60's 15 µs link
    latency a ring step) gave 317 µs."""
    b60 = get_device("b60")
    found = kernel_tables.find("b60", "comm", "oneccl_perf", "oneccl")
    assert found is not None
    c = kernel_tables.read(
        found[0], ("op_name", "nccl_dtype", "num_gpus", "message_size", "latency")
    )
    row = (c["op_name"] == "all_reduce") & (c["nccl_dtype"] == "half") & (c["num_gpus"] == 4)
    row &= c["message_size"] == 1048576
    assert row.sum() == 1
    sec, code = backend("b60").allreduce(np.array([2.0 * 1048576]), 4, "auto")
    assert sec[0] == pytest.approx(float(c["latency"][row][0]) * 1e-3, rel=1e-9)
    assert code[0] == mk.MEASURED
    assert roofline.allreduce_s(2.0 * 1048576, 4, b60, FIT) > 1.5 * sec[0]


def test_a_vllm_launch_running_mxfp4_experts_on_marlin_is_priced_by_marlin() -> None:
    """`VLLM_MXFP4_USE_MARLIN=1` (InferenceX's gpt-oss H100 and H200 vLLM launches) runs the
    MXFP4 experts on Marlin, where Hopper otherwise runs OpenAI's Triton kernels (vLLM
    `get_mxfp4_backend`). The H100 tables measured Marlin's MXFP4 MoE only at another layout
    (hidden 3,584, 896 experts, top-16): there it prices exactly, and gpt-oss's layout takes
    the roofline anchored to it (extrapolated), not the Triton rows measured at gpt-oss's own
    layout. Other formats and other engines keep their kernels."""
    dev = get_device("h100_sxm")
    rows = moe_rows("h100_sxm", "w4a16_mxfp4", engine="vllm", version="0.24.0")
    hit = (rows["num_tokens"] == 16) & (rows["num_experts"] == 896) & (rows["topk"] == 16)
    hit &= (rows["moe_tp_size"] == 8) & (rows["moe_ep_size"] == 1)
    hit &= rows["distribution"] == "balanced"
    assert hit.sum() == 1 and "marlin" in str(rows["kernel_source"][hit][0])
    marlin_row = float(rows["latency"][hit][0]) * 1e-3
    marlin = mk.backend("measured", dev, "vllm", "0.15.1", FIT, moe_backend="marlin")
    default = mk.backend("measured", dev, "vllm", "0.15.1", FIT)
    own = (3584, 3072, 16, 896, 8, 1)
    assert one_moe(marlin, 16, own, "mxfp4") == (pytest.approx(marlin_row), mk.MEASURED)
    gptoss = (2880, 2880, 4, 128, 8, 1)  # gpt-oss-120b's expert layer at TP 8
    triton, code = one_moe(default, 4, gptoss, "mxfp4")
    assert code == mk.MEASURED  # OpenAI's Triton kernel, measured at this layout
    t, code = one_moe(marlin, 4, gptoss, "mxfp4")
    assert code == mk.EXTRAPOLATED and t != pytest.approx(triton)
    # Marlin runs bf16 activations: no MXFP8 kernel's rows price it where Marlin has none
    assert marlin._moe_kernel_family("w4a8_mxfp4_mxfp8") == "marlin"
    # block-scaled fp8 experts and TensorRT-LLM's launches are not Marlin's to price
    fp8 = (7168, 2048, 8, 256, 8, 1)
    same = one_moe(default, 64, fp8, "fp8", block=True)
    assert one_moe(marlin, 64, fp8, "fp8", block=True) == same
    trt = mk.backend("measured", dev, "trtllm", None, FIT)
    trt_marlin = mk.backend("measured", dev, "trtllm", None, FIT, moe_backend="marlin")
    assert one_moe(trt_marlin, 4, gptoss, "mxfp4") == one_moe(trt, 4, gptoss, "mxfp4")


def test_vllm_bridging_moe_collections_give_way_to_later_ones_at_the_same_layout() -> None:
    """aiconfigurator-core flags vLLM's 0.19/0.22 expert-layer collections as bridging ones due
    for retirement; a vLLM 0.15 launch on H200 is nearer 0.19 than 0.24, yet Kimi's int4
    layout, measured by both, prices from 0.24's row (2-3x faster than 0.19's). A layout only
    the bridging collection measured still prices from it."""
    layout = (7168, 2048, 8, 384, 8, 1)  # Kimi-K2.5's expert layer, MoE TP 8
    dev = get_device("h200_sxm")

    def row(version: str, tokens: int, hidden: int = 7168, experts: int = 384) -> float:
        rows = moe_rows("h200_sxm", "int4_wo", version=version)
        hit = (rows["num_tokens"] == tokens) & (rows["num_experts"] == experts)
        hit &= (rows["hidden_size"] == hidden) & (rows["moe_tp_size"] == 8)
        hit &= rows["moe_ep_size"] == 1
        assert hit.sum() >= 1
        return float(rows["latency"][hit].min()) * 1e-3

    new, old = row("0.24.0", 64), row("0.19.0", 64)
    assert old > 2 * new
    b = mk.backend("measured", dev, "vllm", "0.15.1", FIT)
    assert one_moe(b, 64, layout, "int4") == (pytest.approx(new), mk.MEASURED)
    # DeepSeek-V3's int4 layout (256 experts) only the bridging collection measured
    ds = (7168, 2048, 8, 256, 8, 1)
    assert one_moe(b, 64, ds, "int4") == (
        pytest.approx(row("0.19.0", 64, experts=256)),
        mk.MEASURED,
    )
    # A later table stands in with its bridging one's kernel family only: DeepSeek's block fp8
    # experts at EP 2, which 0.24 timed on FlashInfer's CUTLASS kernels alone, keep 0.19's
    # Triton (`vllm_fused_moe`) row, not a kernel this release's launch does not run.
    ep2 = (7168, 2048, 8, 256, 1, 2)
    fp8 = moe_rows("h200_sxm", "fp8_block", engine="vllm", version="0.19.0")
    hit = (fp8["num_tokens"] == 64) & (fp8["num_experts"] == 256) & (fp8["moe_ep_size"] == 2)
    hit &= (fp8["hidden_size"] == 7168) & (fp8["moe_tp_size"] == 1)
    hit &= fp8["distribution"] == "balanced"
    assert hit.sum() == 1 and fp8["kernel_source"][hit][0] == "vllm_fused_moe"
    triton = float(fp8["latency"][hit][0]) * 1e-3
    assert one_moe(b, 64, ep2, "fp8", block=True) == (pytest.approx(triton), mk.MEASURED)
