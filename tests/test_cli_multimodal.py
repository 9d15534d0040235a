"""`simulate`, `plan` and `predict` with images: in the engine, on an encode pool, the split
search, the encoder's time per image, and one-sentence misuse errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servesim.cli.main import main
from servesim.predictor import measured_kernels, twin_efficiency
from servesim.predictor.encoder import EncoderTiming
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.vision import load_vision

VL = ["--model", "Qwen/Qwen3-VL-8B-Instruct", "--device", "h100_sxm"]
LOAD = ["--prompt", "100", "--output", "20", "--rate", "2", "--num-requests", "40"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_in_engine_and_on_an_encode_pool(tmp_path: Path, capsys) -> None:
    img = ["--images-per-request", "2", "--image-size", "896x896"]
    code, _, _ = run(["simulate", *VL, *LOAD, *img, "--out", str(tmp_path / "a")], capsys)
    assert code == 0
    colocated = json.loads((tmp_path / "a" / "summary.json").read_text())
    code, _, _ = run(
        ["simulate", *VL, *LOAD, *img, "--encode-workers", "2", "--out", str(tmp_path / "b")],
        capsys,
    )
    assert code == 0
    epd = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert epd["encode_workers"] == 2 and epd["images"] == 80 and epd["devices"] == 3
    assert epd["deployment"].startswith("E 2x h100_sxm")
    assert colocated["devices"] == 1 and "encode_workers" not in colocated
    # TTFT counts from arrival: the encode stage (and its hop to the prefill pool) is in it.
    assert epd["ttft_s"]["p50"] > epd["encode_s_p50"] > 0


def test_predict_shows_the_encoder_time_per_image(capsys) -> None:
    code, out, _ = run(["predict", *VL, "--decode-seqs", "8", "--image-size", "1024x1024"], capsys)
    assert code == 0
    # priced from the H100's measured kernels, as the iteration is (the default latency model)
    h100, vllm = get_device("h100_sxm"), get_engine("vllm")
    fit = twin_efficiency.default_fit()
    kernels = measured_kernels.backend("auto", h100, "vllm", vllm.version or None, fit)
    vision = load_vision("Qwen/Qwen3-VL-8B-Instruct")
    t = EncoderTiming(vision, h100, 1, vllm, fit, kernels)
    assert f"{t.image_s(1024, 1024) * 1e3:.3f} ms per 1024x1024 image" in " ".join(out.split())


def test_plan_ranks_encode_splits(tmp_path: Path, capsys) -> None:
    code, out, _ = run(
        [
            "plan",
            "--model",
            "Qwen/Qwen3-VL-8B-Instruct",
            "--gpus",
            "h100_sxm",
            *LOAD,
            "--images-per-request",
            "4",
            "--epd-gpus",
            "3",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0
    assert "e+pd" in out and "colocated" in out and "epd" in out


def test_plan_encode_splits_run_the_plans_replica_layout(tmp_path: Path, capsys) -> None:
    """`plan --epd-gpus` splits the GPUs among replicas of the plan's layout: at --tp 2 two GPUs
    hold one replica and nothing else (no encode GPU leaves a replica's worth), and the engine
    and latency model given price it. They were ignored: TP 1, vLLM, the default model."""
    base = ["plan", "--model", "Qwen/Qwen3-VL-8B-Instruct", "--gpus", "h100_sxm", *LOAD]
    base += ["--images-per-request", "1", "--epd-gpus", "2", "--out", str(tmp_path)]
    rows = {}
    for extra in ([], ["--tp", "2"], ["--engines", "sglang", "--latency-model", "roofline"]):
        code, out, _ = run([*base, *extra], capsys)
        assert code == 0
        rows[" ".join(extra)] = [ln for ln in out.splitlines() if ln.startswith("│")]
    assert len(rows[""]) == 3  # colocated (2 replicas), pd 1:1, e+pd 1 + 1
    assert [r.split("│")[1:5] for r in rows["--tp 2"]] == [
        [" colocated ", " 0      ", " 1       ", " 0      "]
    ]
    assert rows["--engines sglang --latency-model roofline"] != rows[""]
    code, _, err = run([*base, "--tp", "1,2"], capsys)
    assert code == 2 and "give one --tp" in err
    code, _, err = run([*base, "--kv-dtypes", "fp8"], capsys)
    assert code == 2 and "--kv-dtypes does nothing with --epd-gpus" in " ".join(err.split())


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--image-size", "800x600"], "add --images-per-request"),
        (["--images-per-request", "1", "--image-size", "big"], "WIDTHxHEIGHT"),
    ],
)
def test_misuse_is_one_sentence(args: list[str], said: str, tmp_path: Path, capsys) -> None:
    code, _, err = run(["simulate", *VL, *LOAD, *args, "--out", str(tmp_path)], capsys)
    assert code == 2 and said in " ".join(err.split()) and "Traceback" not in err


@pytest.mark.parametrize("flag", [["--encode-link", "pcie5"], ["--image-size", "800x600"]])
def test_plan_refuses_image_flags_without_images(flag: list[str], tmp_path: Path, capsys) -> None:
    """`plan --encode-link 2` (no images) ran the whole default search with the flag ignored,
    minutes of work for a setting that did nothing; it is refused as `simulate` refuses it."""
    argv = ["plan", "--model", "meta-llama/Llama-3.1-8B", *LOAD, *flag, "--out", str(tmp_path)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "add --images-per-request" in " ".join(err.split())


def test_text_only_model_refuses_images(tmp_path: Path, capsys) -> None:
    code, _, err = run(
        [
            "simulate",
            "--model",
            "Qwen/Qwen3-8B",
            *LOAD,
            "--images-per-request",
            "1",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2 and "no vision_config" in err
