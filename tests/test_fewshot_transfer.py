"""Few-shot adaptation of the cross-GPU transfer model (`predictor.fewshot_transfer`) and its
user path, `servesim calibrate --shots`."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.predictor import calibrate, roofline, transfer, transfer_model
from servesim.predictor import fewshot_transfer as ft
from servesim.spec.devices import get_device

H100 = get_device("h100_sxm")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shots_l40s.csv"


def _gemm_rows(m, n, k):
    m, n, k = (np.asarray(x, dtype=float) for x in np.broadcast_arrays(m, n, k))
    one = np.ones(len(m), dtype=object)
    return {"m": m, "n": n, "k": k, "dtype": one * "bf16", "weight_dtype": one * "bf16",
            "format": one * "bfloat16"}  # fmt: skip


def _gpu(bw_scale: float, name: str):
    """An H100 with `bw_scale` x its bandwidth whose GEMMs take the roofline x bw_scale^-0.5."""
    dev = dataclasses.replace(H100, name=name, mem_bw_bytes_per_s=3.35e12 * bw_scale)
    rng = np.random.default_rng(int(bw_scale * 100))
    s = _gemm_rows(2.0 ** rng.integers(0, 13, 300), 2.0 ** rng.integers(9, 14, 300), 4096.0)
    s["latency_s"] = calibrate.predict("gemm", s, dev, roofline.physical_fit()) * bw_scale**-0.5
    return dev, {"gemm": s}


@pytest.fixture(scope="module")
def fitted():
    """A small transfer model fitted on four synthetic GPUs, and those GPUs."""
    pytest.importorskip("sklearn")
    data = {f"g{x}": _gpu(x, f"g{x}") for x in (0.6, 0.8, 1.0, 1.25)}
    model = transfer.fit(data, families=("gemm",), max_iter=40)
    return model, tuple(dev for dev, _ in data.values())


def _device_rows(n: int = 200, seed: int = 5):
    rng = np.random.default_rng(seed)
    return _gemm_rows(2.0 ** rng.integers(0, 13, n), 2.0 ** rng.integers(9, 14, n), 4096.0)


def test_no_shots_return_the_prior_exactly(fitted) -> None:
    model, cands = fitted
    dev = dataclasses.replace(H100, name="odd")
    s = _device_rows()
    adapted = ft.adapt(model, {}, dev, cands)
    assert adapted.weights == {} and adapted.offset == 0.0 and adapted.shots == 0
    assert np.array_equal(adapted.predict("gemm", s, dev), transfer.predict(model, "gemm", s, dev))


def test_a_known_factor_is_recovered_by_the_shrunk_offset(fitted) -> None:
    """True times = the prior x 1.3 everywhere; with no other GPU to propose anything, the
    adaptation is the family's own offset log 1.3 x k / (k + 10) (no device offset by
    default), by hand."""
    model, _ = fitted
    dev = dataclasses.replace(H100, name="odd")
    s = _device_rows()
    s["latency_s"] = transfer.predict(model, "gemm", s, dev) * 1.3
    ratios = []
    for k in (1, 3, 10, 40, 160):
        shots = {"gemm": calibrate.subset(s, np.arange(200) < k)}
        adapted = ft.adapt(model, shots, dev, candidates=())
        assert adapted.offset == 0.0
        ratio = adapted.predict("gemm", s, dev) / transfer.predict(model, "gemm", s, dev)
        want = math.exp(math.log(1.3) * k / (k + ft.KNOBS.family_shots))
        assert ratio == pytest.approx(np.full(200, want), rel=1e-9)
        ratios.append(float(ratio[0]))
    # More shots move the prediction monotonically towards the shots, never past them.
    assert np.all(np.diff(ratios) > 0)
    assert ratios[0] > 1.0 and ratios[-1] < 1.3
    # k = 10: ln 1.3 x 10/20 = 0.13118, x1.1402, so the error on the device falls from 23.1 %
    # to 12.3 %.
    assert ratios[2] == pytest.approx(1.1401754, rel=1e-6)


def test_the_device_offset_knob_recovers_a_known_factor_with_the_family_offset(fitted) -> None:
    """With the device offset on (`Knobs.offset_shots` 20, family 5: the knobs before stop 45),
    the adaptation is o = log 1.3 x k / (k + 20) plus the family's own (log 1.3 - o) x
    k / (k + 5), by hand: k = 10 gives o = ln 1.3 / 3 and x exp(ln 1.3 x (1/3 + 2/3 x 2/3))."""
    model, _ = fitted
    dev = dataclasses.replace(H100, name="odd")
    s = _device_rows()
    s["latency_s"] = transfer.predict(model, "gemm", s, dev) * 1.3
    knobs = ft.Knobs(offset_shots=20.0, family_shots=5.0)
    shots = {"gemm": calibrate.subset(s, np.arange(200) < 10)}
    adapted = ft.adapt(model, shots, dev, candidates=(), knobs=knobs)
    assert adapted.offset == pytest.approx(math.log(1.3) / 3, rel=1e-12)
    ratio = adapted.predict("gemm", s, dev) / transfer.predict(model, "gemm", s, dev)
    want = math.exp(math.log(1.3) * (1 / 3 + 2 / 3 * 2 / 3))
    assert ratio == pytest.approx(np.full(200, want), rel=1e-9)


def test_a_device_like_a_fitted_gpu_takes_its_proposal(fitted) -> None:
    """True times = the model evaluated as if the device were g0.6 (its proposal). Here every
    proposal is a constant shift (g0.6 +0.18, g1.0 +0.02 over the transferred model), so the
    prior rates g0.6 e^-8 below g1.0 ((0.18 - 0.02) / similarity 0.02) and each shot weighs
    0.18 / scale 0.1 = 1.8 against staying: twenty shots put nearly all the weight on g0.6, and
    the prediction recovers the truth on every other row."""
    model, cands = fitted
    dev = dataclasses.replace(H100, name="odd", mem_bw_bytes_per_s=3.35e12 * 1.1)
    s = _device_rows()
    feats, t_base = transfer.design("gemm", "gemm", s, dev)
    z = model.log_correction("gemm", feats)
    props = [model.log_correction("gemm", transfer.design("gemm", "gemm", s, c)[0]) for c in cands]
    assert np.max(np.abs(props[0] - z)) > 0.1  # the twin's proposal differs from the transfer
    s["latency_s"] = t_base * np.exp(props[0])
    picks = ft.plan_shots(model, ft.without_latency({"gemm": s}), dev, 20, cands)
    shots, rest = ft.split({"gemm": s}, picks)
    adapted = ft.adapt(model, shots, dev, cands)
    w = adapted.weights["gemm"]
    assert w[0] > 0.999 and w.sum() <= 1.0
    # What is left is the weight elsewhere times how far the other proposals are from g0.6,
    # once in the mix and at most once more in the (shrunk) offset.
    spread = max(float(np.max(np.abs(p - props[0]))) for p in [z, *props])
    r = rest["gemm"]
    err = np.abs(np.log(adapted.predict("gemm", r, dev) / r["latency_s"]))
    assert np.max(err) <= 2 * (1.0 - w[0]) * spread + 1e-12
    assert np.max(err) < 1e-3


def test_plan_shots_needs_no_latency_and_visits_every_family(fitted) -> None:
    model, cands = fitted
    s = _device_rows()
    shapes = ft.without_latency({"gemm": s})
    assert "latency_s" not in shapes["gemm"]
    picks = ft.plan_shots(model, shapes, H100, 4, cands)
    assert len(picks["gemm"]) == 4 and len(set(picks["gemm"].tolist())) == 4
    assert np.array_equal(picks["gemm"], ft.plan_shots(model, shapes, H100, 4, cands)["gemm"])


def test_read_shots_reads_the_example_in_seconds() -> None:
    shots = ft.read_shots(EXAMPLE)
    assert {f: len(s["latency_s"]) for f, s in shots.items()} == {
        "gemm": 4,
        "attention_prefill": 2,
        "attention_decode": 2,
        "nccl": 2,
    }
    # First row: bf16 GEMM 1 x 4096 x 4096 in 0.050290 ms.
    assert shots["gemm"]["latency_s"][0] == pytest.approx(0.050290e-3)
    assert shots["gemm"]["m"][0] == 1 and shots["gemm"]["format"][0] == "bfloat16"
    # Decode at step 1023 attends 1,024 tokens per sequence, 64 sequences.
    assert shots["attention_decode"]["total_context"][0] == 64 * 1024
    assert shots["nccl"]["nbytes"][0] == 1048576 * 2  # half: two bytes per element


def test_calibrate_shots_end_to_end(tmp_path: Path, capsys) -> None:
    """`calibrate --shots` writes a fit that predict reads back, closer to the example's own
    measurements than the spec-sheet roofline (L40S is one of the bundled model's GPUs)."""
    out = tmp_path / "l40s.json"
    assert main(["calibrate", "--shots", str(EXAMPLE), "--device", "l40s", "--out", str(out)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "few-shot transfer (10 measurements)" in said
    # One device-wide posterior: the compute families are named together, with one share each.
    assert "gemm/attention_prefill/attention_decode" in said
    # each family's own offset is shown; no device-wide offset is applied by default
    assert "family offsets gemm x" in said and "device offset" not in said
    doc = json.loads(out.read_text())
    assert doc["adaptation"]["device"] == "l40s" and doc["adaptation"]["shots"] == 10
    fit = ft.load_fit(out)
    assert isinstance(fit.transfer, ft.Adapted)
    l40s = get_device("l40s")
    shots = ft.read_shots(EXAMPLE)
    for fam in ("gemm", "attention_prefill", "attention_decode"):
        s = shots[fam]
        adapted = np.median(calibrate.ape(calibrate.predict(fam, s, l40s, fit), s["latency_s"]))
        plain = calibrate.predict(fam, s, l40s, roofline.physical_fit())
        assert adapted < np.median(calibrate.ape(plain, s["latency_s"])), fam
    # The fit applies on the device it was made for only.
    h100 = calibrate.predict("gemm", shots["gemm"], H100, fit)
    assert np.array_equal(
        h100, calibrate.predict("gemm", shots["gemm"], H100, roofline.physical_fit())
    )
    argv = ["predict", "--model", "meta-llama/Llama-3.1-8B", "--device", "l40s"]
    argv += ["--decode-seqs", "8", "--context", "1000", "--json"]
    assert main(argv) == 0
    plain_s = json.loads(capsys.readouterr().out)["totals"]["seconds"]
    assert main([*argv, "--fit", str(out)]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["totals"]["seconds"] != plain_s
    # The calibration prices every kernel: no measured table steps in unless asked for.
    assert {op["provenance"] for op in fitted["operators"]} <= {"roofline", "engine"}


def test_a_saved_adaptation_reloads_identically(tmp_path: Path) -> None:
    model = transfer_model.bundled()
    assert model is not None
    l40s = get_device("l40s")
    adapted = ft.adapt(model, ft.read_shots(EXAMPLE), l40s)
    fit = ft.adapted_fit(adapted, roofline.physical_fit())
    fit.save(tmp_path / "f.json")
    back = ft.load_fit(tmp_path / "f.json")
    with pytest.raises(ServesimError, match="few-shot adaptation; read it with"):
        roofline.KernelFit.load(tmp_path / "f.json")  # never silently without it
    assert back.transfer.offset == adapted.offset
    assert back.transfer.family_offsets == adapted.family_offsets
    assert adapted.family_offsets  # the example's shots set some
    for fam, w in adapted.weights.items():
        assert np.array_equal(back.transfer.weights[fam], w)
    s = ft.read_shots(EXAMPLE)["gemm"]
    assert np.array_equal(
        calibrate.predict("gemm", s, l40s, fit), calibrate.predict("gemm", s, l40s, back)
    )


def _csv(tmp_path: Path, text: str) -> str:
    p = tmp_path / "shots.csv"
    p.write_text(text)
    return str(p)


HEAD = "op,gemm_dtype,m,n,k,latency_ms\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("op,m\n", "missing column 'latency_ms'"),
        (HEAD, "no measurements"),
        (HEAD + "conv,bfloat16,1,2,3,0.1\n", "line 2: op 'conv' is not one of"),
        (HEAD + "gemm,bfloat16,,2,3,0.1\n", "line 2: a gemm row needs column 'm'"),
        (HEAD + "gemm,bfloat16,1,2,3,0.1\ngemm,bfloat16,x,2,3,0.1\n", "line 3: column 'm' is 'x'"),
        (HEAD + "gemm,bfloat16,1,2,3,0\n", "line 2: latency_ms must be > 0"),
        (HEAD + "gemm,bfloat16,1,2,3,abc\n", "line 2: column 'latency_ms'"),
        (HEAD + "gemm,fp64,1,2,3,0.1\n", "1 of 1 rows name a number format"),
        ("op,batch_size,latency_ms\ncontext_attention,1,0.1\n", "needs column 'isl'"),
    ],
)
def test_a_bad_shots_file_is_one_sentence(tmp_path: Path, capsys, text: str, needle: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(ServesimError, match=None) as err:
        ft.read_shots(path)
    assert needle in str(err.value)
    argv = ["calibrate", "--shots", path, "--device", "l40s", "--out", str(tmp_path / "f.json")]
    assert main(argv) == 2
    msg = capsys.readouterr().err.strip()
    assert len(msg.splitlines()) == 1 and needle in msg and "Traceback" not in msg


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tables", "x"], "exactly one of --shots FILE"),
        (["--vidur", "x"], "--vidur adds to --tables"),
    ],
)
def test_calibrate_wants_one_source(tmp_path: Path, capsys, extra, needle) -> None:
    argv = ["calibrate", "--shots", str(EXAMPLE), "--device", "l40s"]
    argv += ["--out", str(tmp_path / "f.json"), *extra]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_shots_of_a_cpu_are_refused(tmp_path: Path, capsys) -> None:
    argv = ["calibrate", "--shots", str(EXAMPLE), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "f.json")]) == 2
    assert "prices GPUs" in capsys.readouterr().err
    assert (
        main(["calibrate", "--suggest", "3", "--device", "cpu", "--out", str(tmp_path / "s.csv")])
        == 2
    )
    assert "prices GPUs" in capsys.readouterr().err


def test_a_tampered_adaptation_is_one_sentence(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    model = transfer_model.bundled()
    adapted = ft.adapt(model, ft.read_shots(EXAMPLE), get_device("l40s"))
    ft.adapted_fit(adapted, roofline.physical_fit()).save(p)
    doc = json.loads(p.read_text())
    doc["adaptation"]["weights"]["gemm"]["no_such_gpu"] = 0.5
    p.write_text(json.dumps(doc))
    with pytest.raises(ServesimError, match="names a GPU this catalog lacks"):
        ft.load_fit(p)
    doc["adaptation"] = {"device": "l40s", "weights": {"gemm": {"l40s": -1}}}
    p.write_text(json.dumps(doc))
    with pytest.raises(ServesimError, match="malformed"):
        ft.load_fit(p)


def test_suggest_offers_shapes_of_every_family_the_device_runs(tmp_path: Path, capsys) -> None:
    """`--suggest 4` writes one GEMM, decode, prefill and all-reduce shape to measure (latency
    blank); filled in, the file is a valid `--shots` file. An A100 (no fp8) gets no fp8 shape."""
    out = tmp_path / "measure.csv"
    assert main(["calibrate", "--suggest", "4", "--device", "l4", "--out", str(out)]) == 0
    assert "4 kernels to measure on l4" in " ".join(capsys.readouterr().out.split())
    lines = out.read_text().splitlines()
    assert lines[0] == ",".join(ft.CSV_COLUMNS) and len(lines) == 5
    ops = [line.split(",")[0] for line in lines[1:]]
    assert ops == ["gemm", "generation_attention", "context_attention", "nccl"]
    with pytest.raises(ServesimError, match="latency_ms"):
        ft.read_shots(out)  # not measured yet
    with open(out, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["latency_ms"] = "0.5"  # as if measured
    with open(tmp_path / "done.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ft.CSV_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    shots = ft.read_shots(tmp_path / "done.csv")
    assert sum(len(s["latency_s"]) for s in shots.values()) == 4
    # Run again: its own file is replaced; a user's file is not.
    assert main(["calibrate", "--suggest", "2", "--device", "l4", "--out", str(out)]) == 0
    user = tmp_path / "mine.csv"
    user.write_text("my,data\n")
    assert main(["calibrate", "--suggest", "2", "--device", "l4", "--out", str(user)]) == 2
    assert user.read_text() == "my,data\n"
    rows_a100 = ft.suggest(transfer_model.bundled(), get_device("a100_sxm"), 8)
    assert {r.get("gemm_dtype", "bfloat16") for r in rows_a100} == {"bfloat16"}
    assert {r.get("kv_cache_dtype", "bfloat16") for r in rows_a100} == {"bfloat16"}


def test_all_reduce_shots_neither_set_nor_take_the_device_offset() -> None:
    """An all-reduce measures the fabric, not the chip: with compute shots 1.3x and all-reduce
    shots 2x the model, the offset is the compute shots' median shrunk by k / (k + 20), here
    10 / 30 x log 1.3 (the all-reduce shots leave it alone), and it applies to compute
    families only."""
    none = np.zeros((10, 0))
    per_fam = {
        "gemm": (np.full(10, np.log(1.3)), none),
        "allreduce": (np.full(10, np.log(2.0)), none),
    }
    knobs = ft.Knobs(offset_shots=20.0)  # on (the default leaves it off: `KNOBS`)
    assert ft.weigh(per_fam, np.ones(1))[1] == 0.0
    _, offset = ft.weigh(per_fam, np.ones(1), knobs)
    assert offset == pytest.approx(10 / 30 * np.log(1.3), rel=1e-12)
    _, alone = ft.weigh({"allreduce": per_fam["allreduce"]}, np.ones(1), knobs)
    assert alone == 0.0
    adapted = ft.Adapted(None, "odd", (), {}, offset, 20)  # type: ignore[arg-type]
    assert adapted._offset("gemm") == offset and adapted._offset("allreduce") == 0.0


def test_each_family_takes_what_its_own_shots_still_miss() -> None:
    """After the device offset (on here: compute shots only), each family with shots takes its own
    offset: the median left-over of its shots shrunk by k_f / (k_f + 5), by hand. Compute
    shots 1.3x (gemm, 4 shots) and 1.1x (prefill attention, 2 shots), all-reduce 2x (2)."""
    none = lambda n: np.zeros((n, 0))  # noqa: E731 - no candidates propose anything
    per_fam = {
        "gemm": (np.full(4, np.log(1.3)), none(4)),
        "attention_prefill": (np.full(2, np.log(1.1)), none(2)),
        "allreduce": (np.full(2, np.log(2.0)), none(2)),
    }
    knobs = ft.Knobs(offset_shots=20.0, family_shots=5.0)  # the device offset on
    weights, offset = ft.weigh(per_fam, np.ones(1), knobs)
    # the device offset: the median of six compute left-overs (log 1.3 x4, log 1.1 x2) x 6/26
    dev = 6 / 26 * np.log(1.3)
    assert offset == pytest.approx(dev, rel=1e-12)
    own = ft.family_offsets(per_fam, weights, offset, knobs)
    c = 5.0
    assert own == pytest.approx(
        {
            "gemm": 4 / (4 + c) * (np.log(1.3) - dev),
            "attention_prefill": 2 / (2 + c) * (np.log(1.1) - dev),
            "allreduce": 2 / (2 + c) * np.log(2.0),  # the fabric takes no device offset
        },
        rel=1e-12,
    )
    adapted = ft.Adapted(None, "odd", (), weights, offset, 8, own)  # type: ignore[arg-type]
    assert adapted._offset("gemm") == pytest.approx(dev + own["gemm"], rel=1e-12)
    assert adapted._offset("allreduce") == pytest.approx(own["allreduce"], rel=1e-12)
    assert adapted._offset("moe") == pytest.approx(dev, rel=1e-12)  # no shots: the device's


def test_a_fit_file_with_malformed_family_offsets_is_refused(tmp_path: Path) -> None:
    model = transfer_model.bundled()
    adapted = ft.adapt(model, ft.read_shots(EXAMPLE), get_device("l40s"))
    doc = adapted.to_dict()
    assert ft.from_dict({**doc, "family_offsets": {}}, model, "x").family_offsets == {}
    old = {k: v for k, v in doc.items() if k != "family_offsets"}  # written before them
    assert ft.from_dict(old, model, "x").family_offsets == {}
    for bad in ({"gemm": float("nan")}, {"warp": 0.1}, [0.1], {"gemm": True}):
        with pytest.raises(ServesimError, match="family offsets are malformed"):
            ft.from_dict({**doc, "family_offsets": bad}, model, "x")


def test_compute_shots_weigh_one_device_wide_posterior() -> None:
    """Which fitted GPU a device behaves like is one question for all its compute kernels: a
    GEMM shot and a decode-attention shot, each 0.2 (log) above the transferred model; GPU A
    proposes +0.2 for both, GPU B +0.2 for the GEMM only. Summed over both shots the losses of
    [stay, A, B] are [0.4, 0, 0.2], so the posterior is prior x exp(-loss / scale), the same for
    the GEMM, the attention and the MoE family, which had no shot. The all-reduce shot (the
    fabric) weighs the all-reduce proposals alone: losses [0.5, 0.5, 0]."""
    prior = np.array([0.8, 0.1, 0.1])
    per_fam = {
        "gemm": (np.array([0.2]), np.array([[0.2, 0.2]])),
        "attention_decode": (np.array([0.2]), np.array([[0.2, 0.0]])),
        "allreduce": (np.array([0.5]), np.array([[0.0, 0.5]])),
    }
    families = ("gemm", "attention_decode", "moe", "allreduce")
    weights, _ = ft.weigh(per_fam, prior, families=families)

    def by_hand(loss):
        lw = np.log(prior) - np.asarray(loss) / ft.KNOBS.scale
        w = np.exp(lw - lw.max())
        return (w / w.sum())[1:]

    for fam in ("gemm", "attention_decode", "moe"):
        assert weights[fam] == pytest.approx(by_hand([0.4, 0.0, 0.2]), rel=1e-12)
    assert weights["allreduce"] == pytest.approx(by_hand([0.5, 0.5, 0.0]), rel=1e-12)
    # A alone explains both compute shots: 0.1 / (0.8 e^-4 + 0.1 + 0.1 e^-2) = 78 %.
    assert weights["gemm"][0] == pytest.approx(0.1 / (0.8 * np.exp(-4) + 0.1 + 0.1 * np.exp(-2)))
    # Without compute shots nothing is weighed for the compute families.
    alone, _ = ft.weigh({"allreduce": per_fam["allreduce"]}, prior, families=families)
    assert set(alone) == {"allreduce"}


def test_each_all_reduce_implementation_keeps_its_own_shots() -> None:
    """A custom all-reduce shot 2.3x (log 0.84) above the transferred model moves the custom
    rows (its own offset, 1 / (1 + family_shots) of it) and leaves NCCL's rows, which weigh
    their own shot (GB300 at k = 10: NCCL's error went 4.0 -> 11.2 % while the two shared one
    offset); a fit file written before the split keeps its one all-reduce figure for both."""
    model = transfer_model.bundled()
    b200 = get_device("b200_sxm")
    tables = calibrate.all_samples(calibrate.load_package_tables("b200_sxm", "vllm", None))
    nccl = calibrate.subset(tables["nccl"], tables["nccl"]["op"] == "all_reduce")
    custom = tables["custom_allreduce"]
    shots = {}
    for src, s in (("nccl", nccl), ("custom_allreduce", custom)):
        one = calibrate.subset(s, np.arange(len(s["latency_s"])) == 0)
        scale = 1.0 if src == "nccl" else math.exp(0.84)
        one["latency_s"] = ft.Adapted(model, "b200_sxm", (), {}).predict(src, one, b200) * scale
        shots[src] = one
    adapted = ft.adapt(model, shots, b200, candidates=())
    c = ft.KNOBS.family_shots
    assert adapted.family_offsets == pytest.approx(
        {"nccl": 0.0, "custom_allreduce": 0.84 / (1.0 + c)}, abs=1e-9
    )
    assert adapted._offset("nccl") == 0.0 and ft.unit_of("nccl") == "nccl"
    assert ft.unit_of("gemm") == "gemm" and ft.is_fabric("allreduce")
    # Before the split a fit file held one "allreduce" figure; both implementations read it.
    doc = {**adapted.to_dict(), "family_offsets": {"gemm": 0.2, "allreduce": 0.1}}
    doc["weights"] = {"allreduce": {"b200_sxm": 0.3}}
    old = ft.from_dict(doc, model, "old.json")
    assert old.family_offsets == {"gemm": 0.2, "nccl": 0.1, "custom_allreduce": 0.1}
    assert set(old.weights) == {"nccl", "custom_allreduce"}
    assert old.weights["nccl"].tolist() == old.weights["custom_allreduce"].tolist() == [0.3]
