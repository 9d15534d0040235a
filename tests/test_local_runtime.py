"""Local devices in `predict` and `simulate`: CPUs and edge devices priced by the local cost model
(the one `validation/edge.py` checks), `servesim fewshot --shots` writing a fit `--fit` uses, and
the CPU–GPU hybrids (layer offload, experts on the CPU, attention offload) from the flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from servesim.cli.main import main
from servesim.planner.hybrid import search_hybrid
from servesim.predictor import device_step as ds
from servesim.predictor.edge_fit import (
    MAX_SHOTS,
    EdgeFit,
    Shot,
    ape,
    fit_csv,
    read_shots,
    write_shots_csv,
)
from servesim.predictor.expert_cache import Popularity, expert_costs, simulate_placement
from servesim.predictor.local_predictor import PLACEMENT_LAYERS, PLACEMENT_STEPS
from servesim.predictor.offload import attention_offload_step, hybrid_step
from servesim.sim.deployment import Deployment
from servesim.spec.devices import get_device
from servesim.spec.links import get_link
from servesim.spec.model import load_model
from servesim.spec.quant import get_quant

REPO = Path(__file__).resolve().parents[1]
LLAMA8B = "meta-llama/Meta-Llama-3.1-8B"


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _config(tmp_path: Path, hidden: int, layers: int, name: str) -> Path:
    """A small Llama config.json (what validation/edge.py benchmarks)."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": hidden * 3,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": max(1, hidden // 256),
        "head_dim": 64,
        "num_hidden_layers": layers,
        "vocab_size": 4096,
        "max_position_embeddings": 4096,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


# ---- CPU devices run the local cost model -----------------------------------------------------
def test_simulate_on_a_cpu_prices_steps_with_the_edge_predictor() -> None:
    """The iteration `predict` and `simulate` use on this CPU is `device_step`'s forward pass,
    the prediction `benchmarks/edge.py` checks against llama.cpp."""
    model = load_model(LLAMA8B)
    cpu = get_device("this_cpu")
    dep = Deployment(model=model, device=cpu)
    pred = dep.predictor()
    bf16 = get_quant("bf16")  # the checkpoint's own format
    for ctx in (32, 512, 4096):
        want = ds.step_time(model, bf16, cpu, ds.decode(1, ctx)).seconds
        assert pred.step_s(1, ctx, ()) == pytest.approx(want, rel=1e-12)
    want = ds.step_time(model, bf16, cpu, ds.prefill(256)).seconds
    assert pred.step_s(0, 0, [(256, 0)]) == pytest.approx(want, rel=1e-12)
    # a decode-only run of steps is priced from (c0, c1): exact at no context
    c0, c1 = pred.decode_step_coeffs(4)
    assert c0 == pytest.approx(pred.step_s(4, 0, ()), rel=1e-12)
    assert c1 > 0


def test_cli_predict_on_a_cpu_equals_the_edge_forward_pass(capsys) -> None:
    argv = ["predict", "--model", LLAMA8B, "--device", "this_cpu", "--quant", "q4_k_m"]
    argv += ["--threads", "1", "--decode-seqs", "1", "--context", "512", "--json"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    doc = json.loads(out)
    m, cpu = load_model(LLAMA8B), get_device("this_cpu")
    want = ds.step_time(m, get_quant("q4_k_m"), cpu, ds.decode(1, 512), threads=1).seconds
    assert doc["totals"]["seconds"] == pytest.approx(want, rel=1e-12)
    assert doc["memory"]["weights_gb"] == pytest.approx(
        ds.weight_bytes(m, get_quant("q4_k_m")) / 1e9
    )


def test_cli_simulate_on_a_cpu_decodes_at_the_predicted_pace(tmp_path: Path, capsys) -> None:
    """One request at a time: TPOT is the decode step at the mean context of the output."""
    argv = ["simulate", "--model", LLAMA8B, "--device", "this_cpu", "--quant", "q4_k_m"]
    argv += ["--num-requests", "3", "--clients", "1", "--prompt", "fixed:64"]
    argv += ["--output", "fixed:33", "--out", str(tmp_path)]
    code, _, _ = run(argv, capsys)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["latency_model"] == "local"
    m, cpu, q = load_model(LLAMA8B), get_device("this_cpu"), get_quant("q4_k_m")
    # decode steps see 65..96 tokens of context; the step is affine in context here
    step = ds.step_time(m, q, cpu, ds.decode(1, 80)).seconds
    assert summary["tpot_s"]["mean"] == pytest.approx(step, rel=0.02)


# ---- few-shot: CSV in, fit file out, used by --fit --------------------------------------------
def _known_shots(tmp_path: Path) -> tuple[list[dict], ds.Efficiency]:
    """Measurements generated from a known efficiency: 8 rows over two sizes and two recipes."""
    eff = ds.Efficiency(
        {"f16": 0.3, "q8_0": 0.2, "q4_k": 0.15, "q6_k": 0.15},
        memory=0.45,
        op_s=3e-6,
        step_s=4e-4,
        gemv={"f16": 0.25, "q8_0": 0.1, "q4_k": 0.05, "q6_k": 0.05},
    )
    cpu = get_device("this_cpu")
    rows = []
    for cfg in (_config(tmp_path, 512, 8, "small.json"), _config(tmp_path, 1024, 16, "mid.json")):
        m = load_model(str(cfg))
        for q in ("f16", "q4_k_m"):
            for phase, step in (("decode", ds.decode(1, 32)), ("prefill", ds.prefill(256))):
                tps = Shot(m, get_quant(q), step, 1, 1.0).predicted_tokens_per_s(cpu, eff)
                rows.append(
                    {
                        "model": cfg.name,  # relative to the CSV's folder
                        "quant": q,
                        "threads": 1,
                        "phase": phase,
                        "tokens": 1 if phase == "decode" else 256,
                        "context": 32 if phase == "decode" else 0,
                        "tokens_per_s": tps,
                    }
                )
    return rows, eff


def test_fewshot_shots_fits_and_predict_uses_the_fit(tmp_path: Path, capsys) -> None:
    rows, eff = _known_shots(tmp_path)
    csv = tmp_path / "shots.csv"
    write_shots_csv(rows, csv)
    fit_file = tmp_path / "fit.json"
    argv = ["fewshot", "--shots", str(csv), "--device", "this_cpu", "--out", str(fit_file)]
    code, out, _ = run([*argv, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["shots"] == 8 and max(doc["fit_ape"]) < 0.1  # from the model, prior-shrunk
    fit = EdgeFit.load(fit_file)
    assert fit == fit_csv(get_device("this_cpu"), csv)  # the one code path
    # a held-out shape (Q4_K_M decode at 4k context, 2 threads) lands near the truth
    cpu = get_device("this_cpu")
    m = load_model(str(tmp_path / "mid.json"))
    truth = ds.step_time(m, get_quant("q4_k_m"), cpu, ds.decode(1, 4096), eff, 2).seconds
    got = ds.step_time(m, get_quant("q4_k_m"), cpu, ds.decode(1, 4096), fit.efficiency, 2)
    assert ape(got.seconds, truth) < 0.1
    # predict --fit uses it: the iteration is the fitted forward pass
    argv = ["predict", "--model", str(tmp_path / "mid.json"), "--device", "this_cpu"]
    argv += ["--quant", "q4_k_m", "--threads", "2", "--fit", str(fit_file)]
    code, out, _ = run([*argv, "--decode-seqs", "1", "--context", "4096", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["totals"]["seconds"] == pytest.approx(got.seconds, rel=1e-12)
    # and it differs from the spec-only prediction (the fit moved it)
    spec_only = ds.step_time(m, get_quant("q4_k_m"), cpu, ds.decode(1, 4096), None, 2).seconds
    assert ape(spec_only, got.seconds) > 0.2


def test_fewshot_seconds_column_is_tokens_over_seconds(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 512, 8, "small.json")
    csv = tmp_path / "s.csv"
    csv.write_text(
        "model,quant,threads,phase,tokens,context,seconds\n"
        f"{cfg.name},f16,1,prefill,128,0,0.5\n"
        f"{cfg.name},f16,1,decode,4,100,0.02\n"
    )
    shots = read_shots(csv)
    assert [s.tokens_per_s for s in shots] == [256.0, 200.0]
    assert shots[1].step == ds.Step(4, 4, 100)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("model,quant,phase\n", "no measurements"),
        ("model,quant,tokens_per_s\nx,f16,1\n", "missing column 'phase'"),
        (f"model,quant,phase,tokens_per_s\n{LLAMA8B},f16,train,5\n", "phase must be decode"),
        (f"model,quant,phase,tokens_per_s\n{LLAMA8B},q3_xs,decode,5\n", "Unknown quantisation"),
        (f"model,quant,phase,tokens_per_s\n{LLAMA8B},f16,decode,-5\n", "must be a number > 0"),
        (f"model,quant,phase,tokens_per_s\n{LLAMA8B},f16,decode,\n", "exactly one of"),
        (f"model,quant,phase,tokens_per_s\n{LLAMA8B},f16,prefill,5\n", "prompt length"),
        (f"model,quant,phase,threads,tokens_per_s\n{LLAMA8B},f16,decode,1.5,5\n", "threads"),
        (
            "model,quant,phase,tokens_per_s\n" + f"{LLAMA8B},f16,decode,5\n" * (MAX_SHOTS + 1),
            "at most 10",
        ),
    ],
)
def test_fewshot_bad_csv_is_one_sentence(tmp_path: Path, capsys, body: str, message: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(body)
    argv = ["fewshot", "--shots", str(csv), "--device", "this_cpu", "--out", str(tmp_path / "f")]
    code, _out, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "f").exists()


def test_fewshot_needs_one_source(tmp_path: Path, capsys) -> None:
    code, _, err = run(["fewshot", "--device", "this_cpu", "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "exactly one of --tables" in err
    csv = tmp_path / "s.csv"
    csv.write_text("model,quant,phase,tokens_per_s\n")
    argv = ["fewshot", "--shots", str(csv), "--k", "3", "--device", "this_cpu", "--out", "f"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "--k and --seed draw from --tables" in err


def test_a_fit_for_another_device_is_refused(tmp_path: Path, capsys) -> None:
    rows, _ = _known_shots(tmp_path)
    write_shots_csv(rows, tmp_path / "s.csv")
    fit_file = tmp_path / "fit.json"
    fit_csv(get_device("this_cpu"), tmp_path / "s.csv").save(fit_file)
    argv = ["predict", "--model", LLAMA8B, "--device", "epyc_9654", "--fit", str(fit_file)]
    code, _, err = run([*argv, "--decode-seqs", "1"], capsys)
    assert code == 2 and "was fitted on this_cpu" in err


def test_a_local_fit_is_not_a_kernel_fit(tmp_path: Path, capsys) -> None:
    rows, _ = _known_shots(tmp_path)
    write_shots_csv(rows, tmp_path / "s.csv")
    fit_file = tmp_path / "fit.json"
    fit_csv(get_device("this_cpu"), tmp_path / "s.csv").save(fit_file)
    argv = ["plan", "--model", LLAMA8B, "--fit", str(fit_file), "--out", str(tmp_path / "p")]
    code, _, err = run(argv, capsys)
    assert code == 2 and "is a local-device fit" in err


def test_validation_edge_fits_through_the_fewshot_csv(tmp_path: Path) -> None:
    """validation/edge.py writes its few-shot rows as a `fewshot --shots` CSV and fits that."""
    sys.path.insert(0, str(REPO / "validation"))
    import edge

    paths, specs, rows = {}, {}, []
    for size, (h, n) in {"small": (512, 8), "medium": (1024, 16)}.items():
        paths[size] = str(_config(tmp_path, h, n, f"{size}.json"))
        specs[size] = load_model(paths[size])
        for q in ("f16", "q4_k_m"):
            for t in (1, 2):
                rows.append(edge.Row(size, q, t, 1, 100.0 / n / t**0.5, 900.0 / n, 0.0))
    csv = tmp_path / "shots.csv"
    eff = edge.predict(rows, specs, get_device("this_cpu"), 256, paths, csv)
    assert len(read_shots(csv)) <= MAX_SHOTS
    fit = fit_csv(get_device("this_cpu"), csv)
    assert eff["memory"] == fit.efficiency.memory and eff["compute"] == fit.efficiency.compute


# ---- CPU–GPU hybrids from the flags ------------------------------------------------------------
def _predict_json(capsys, *extra: str, model: str = "meta-llama/Meta-Llama-3.1-70B") -> dict:
    argv = ["predict", "--model", model, "--device", "rtx_4090", "--quant", "q4_k_m", *extra]
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_gpu_layers_prices_llama_cpp_ngl(capsys) -> None:
    doc = _predict_json(
        capsys,
        "--gpu-layers",
        "44",
        "--host-cpu",
        "ryzen_9_7950x",
        "--decode-seqs",
        "1",
        "--context",
        "1024",
    )
    m = load_model("meta-llama/Meta-Llama-3.1-70B")
    h = hybrid_step(
        m,
        get_quant("q4_k_m"),
        get_device("rtx_4090"),
        get_device("ryzen_9_7950x"),
        get_link("pcie4_x16"),
        ds.Step(1, 1, 1024),
        44,
    )
    assert doc["totals"]["seconds"] == pytest.approx(h.seconds, rel=1e-12)
    # the breakdown names where the time goes: the CPU's layers, the GPU's, the link (not the
    # CPU's layers as "memory-bound forward pass" and the GPU's as "fixed costs")
    ops = {op["name"]: op["seconds"] for op in doc["operators"]}
    assert ops["CPU layers"] == pytest.approx(h.cpu_s, rel=1e-12)
    assert ops["GPU layers"] == pytest.approx(h.gpu_s, rel=1e-12)
    assert ops["activation transfers"] == pytest.approx(h.transfer_s, rel=1e-12)


@pytest.mark.parametrize("target", ["latency", "throughput"])
def test_gpu_layers_auto_is_the_planner_split(capsys, target: str) -> None:
    m = load_model("meta-llama/Meta-Llama-3.1-70B")
    gpu, cpu, link = get_device("rtx_4090"), get_device("ryzen_9_7950x"), get_link("pcie4_x16")
    best = search_hybrid(m, get_quant("q4_k_m"), gpu, cpu, link, target).best
    batch = (
        ["--decode-seqs", "1", "--context", "2048"] if target == "latency" else ["--prefill", "512"]
    )
    doc = _predict_json(
        capsys,
        "--gpu-layers",
        "auto",
        "--offload-target",
        target,
        "--host-cpu",
        "ryzen_9_7950x",
        *batch,
    )
    assert f"{best.mode}{best.gpu_layers}" in doc["deployment"]
    assert doc["totals"]["seconds"] == pytest.approx(best.seconds, rel=1e-9)


def test_expert_offload_energy_covers_the_expert_time(capsys) -> None:
    """The experts' part of a step (most of it: a 2000-token prefill through experts on the
    CPU) draws power too: at least both devices' idle power over the whole step, and the
    host CPU's idle power beside the GPU's own part."""
    common = ["--offload-experts-to-cpu", "--host-cpu", "ryzen_9_7950x", "--prefill", "2000"]
    doc = _predict_json(capsys, *common, model="Qwen/Qwen3-30B-A3B")
    gpu, cpu = get_device("rtx_4090"), get_device("ryzen_9_7950x")
    seconds, joules = doc["totals"]["seconds"], doc["totals"]["joules"]
    assert joules >= seconds * (gpu.idle_power_w + cpu.idle_power_w)
    assert joules <= seconds * (gpu.max_power_w + cpu.max_power_w)


def test_expert_offload_dynamic_beats_static_when_popularity_shifts(capsys) -> None:
    """HybriMoE's claim through the CLI: with popularity re-ranked every 20 steps, the dynamic
    cache's step is faster than kTransformers' static one; the expert part is the placement
    simulation's mean step."""
    common = ["--offload-experts-to-cpu", "--host-cpu", "ryzen_9_7950x", "--gpu-expert-cache"]
    common += ["32", "--expert-shift-every", "20", "--decode-seqs", "1", "--context", "1024"]
    model = "Qwen/Qwen3-30B-A3B"
    dyn = _predict_json(capsys, *common, model=model)["totals"]["seconds"]
    static = _predict_json(capsys, *common, "--expert-cache-policy", "static", model=model)
    assert dyn < 0.9 * static["totals"]["seconds"]
    m = load_model(model)
    q, gpu, cpu = get_quant("q4_k_m"), get_device("rtx_4090"), get_device("ryzen_9_7950x")
    costs = expert_costs(m, q, gpu, cpu, get_link("pcie4_x16"))
    res = simulate_placement(
        "dynamic",
        costs,
        Popularity(m.num_experts, 1.2, 20),
        PLACEMENT_LAYERS,
        m.experts_per_token,
        32,
        steps=PLACEMENT_STEPS,
        batch=1,
    )
    rest = ds.layers_work(m, q, range(m.num_layers), ds.Step(1, 1, 1024), experts=False)
    rest = rest + ds.head_work(m, q, ds.Step(1, 1, 1024))
    moe_layers = m.num_layers - m.first_dense_layers
    want = ds.time_work(rest, gpu, q).seconds + res.mean_step_s * moe_layers / PLACEMENT_LAYERS
    assert dyn == pytest.approx(want, rel=1e-12)


def test_attention_offload_is_lamina_step(capsys) -> None:
    doc = _predict_json(
        capsys,
        "--offload-attention-to",
        "xeon_8480",
        "--decode-seqs",
        "64",
        "--context",
        "4096",
        model=LLAMA8B,
    )
    a = attention_offload_step(
        load_model(LLAMA8B),
        get_quant("q4_k_m"),
        get_device("rtx_4090"),
        get_device("xeon_8480"),
        get_link("pcie4_x16"),
        64,
        4096,
    )
    assert doc["totals"]["seconds"] == pytest.approx(a.seconds, rel=1e-12)
    # the text report puts the KV cache on the attention device, not in the GPU's 26 GB
    argv = ["predict", "--model", LLAMA8B, "--device", "rtx_4090", "--quant", "q4_k_m"]
    code, out, _ = run([*argv, "--offload-attention-to", "xeon_8480", "--decode-seqs", "8"], capsys)
    text = " ".join(out.split())
    on = f"on {get_device('xeon_8480').name}"
    assert code == 0 and text.endswith(on) and "of 26 GB" not in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-expert-cache", "8"], "add --offload-experts-to-cpu"),
        (["--gpu-layers", "10"], "needs --host-cpu"),
        (["--offload-mode", "stream"], "add --gpu-layers"),
        (["--gpu-layers", "ten", "--host-cpu", "ryzen_9_7950x"], "whole number of layers"),
        (["--gpu-layers", "999", "--host-cpu", "ryzen_9_7950x"], "between 0 and"),
        (["--host-cpu", "ryzen_9_7950x"], "belongs to an offload"),
        (["--threads", "2"], "the device is a GPU"),
        (
            ["--gpu-layers", "4", "--host-cpu", "ryzen_9_7950x", "--offload-attention-to", "x"],
            "one of --gpu-layers",
        ),
        (["--offload-experts-to-cpu", "--host-cpu", "ryzen_9_7950x"], "no routed experts"),
    ],
)
def test_hybrid_flag_misuse_is_one_sentence(capsys, argv: list[str], message: str) -> None:
    base = ["predict", "--model", LLAMA8B, "--device", "rtx_4090", "--decode-seqs", "1"]
    code, _, err = run([*base, *argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_offloading_from_a_cpu_is_refused(capsys) -> None:
    argv = ["predict", "--model", LLAMA8B, "--device", "this_cpu", "--gpu-layers", "4"]
    code, _, err = run([*argv, "--host-cpu", "ryzen_9_7950x", "--decode-seqs", "1"], capsys)
    assert code == 2 and "is a CPU" in err


def test_the_example_shots_fit_this_cpu() -> None:
    """examples/edge_shots.csv (llama-bench on this CPU, the small random Llama at 1 thread)."""
    shots = read_shots(REPO / "examples" / "edge_shots.csv")
    assert len(shots) == 6 and {s.quant.name for s in shots} == {"f16", "q8_0", "q4_k_m"}
    fit = fit_csv(get_device("this_cpu"), REPO / "examples" / "edge_shots.csv")
    assert max(fit.fit_ape) < 0.15


def test_weights_beyond_the_device_are_refused(capsys) -> None:
    """Llama-3.1-70B in bf16 is 141 GB: it does not fit this CPU's 24 GB, nor a 24 GB GPU with
    only attention offloaded (Lamina moves the KV, not the weights). `predict` prices the step
    and says it does not fit; `simulate` refuses to run it."""
    base = ["--model", "meta-llama/Meta-Llama-3.1-70B"]
    code, out, _ = run(["predict", *base, "--decode-seqs", "1", "--device", "this_cpu"], capsys)
    out = " ".join(out.split())  # the terminal wraps lines
    assert code == 0 and "does not fit:" in out and "141.1 GB of weights on this_cpu" in out
    sim = ["simulate", *base, "--clients", "1", "--prompt", "16", "--output", "4"]
    code, _, err = run([*sim, "--device", "this_cpu"], capsys)
    assert code == 2 and "keeps 141.1 GB of weights on this_cpu" in err
    gpu = ["--device", "rtx_4090", "--quant", "q4_k_m", "--offload-attention-to", "cpu"]
    code, _, err = run([*sim, *gpu], capsys)
    assert code == 2 and "keeps 42.5 GB of weights on rtx_4090" in err


def test_local_flags_with_a_measured_engine_are_refused(tmp_path: Path, capsys) -> None:
    """A measured CPU engine prices its own iterations: local-runtime flags would do nothing."""
    from servesim.measure.measured_engine import measured_deployment, save_measured_engine
    from servesim.predictor.profiled import IterationModel
    from servesim.spec.engine_profile import get_engine

    cfg = _config(tmp_path, 512, 8, "small.json")
    it = IterationModel(1e-3, 1e-4, 1e-5, 1e-8, 1e-9)
    dep = measured_deployment(
        load_model(str(cfg)), get_device("this_cpu"), get_engine("vllm"), iteration=it
    )
    engine = save_measured_engine(dep, tmp_path / "engine.json", cfg)
    argv = ["simulate", "--measured", str(engine), "--num-requests", "2", "--clients", "1"]
    argv += ["--prompt", "fixed:16", "--output", "fixed:4", "--out", str(tmp_path / "o")]
    code, _, err = run([*argv, "--quant", "q4_k_m"], capsys)
    assert code == 2 and "--quant shapes a local runtime" in err
    code, _, err = run(argv, capsys)  # without them it runs on its measured costs
    assert code == 0, err
