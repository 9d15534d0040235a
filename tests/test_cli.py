"""The command line: defaults, config files, outputs and one-sentence errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servesim.cli import main
from servesim.metrics import read_parquet


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_writes_parquet_and_summary(tmp_path: Path, capsys) -> None:
    code, out, _ = run(
        ["simulate", "--num-requests", "300", "--rate", "6", "--out", str(tmp_path)], capsys
    )
    assert code == 0
    assert "TTFT" in out and "SLO attainment" in out
    cols = read_parquet(tmp_path / "requests.parquet")
    assert len(cols["ttft_s"]) == 300
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] == 300
    assert summary["throughput_req_per_s"] == pytest.approx(6.0, rel=0.1)
    series = read_parquet(tmp_path / "timeseries.parquet")
    assert {"t_s", "running", "kv_use"} <= set(series)


def test_config_file_gives_the_same_run_as_flags(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: Qwen/Qwen3-8B\ndevice: a100_sxm\nnum-requests: 200\nrate: 3\n"
        "prompt: fixed:800\noutput: fixed:100\n"
        f"out: {tmp_path / 'a'}\n"
    )
    assert run(["simulate", "--config", str(cfg)], capsys)[0] == 0
    flags = ["simulate", "--model", "Qwen/Qwen3-8B", "--device", "a100_sxm"]
    flags += ["--num-requests", "200", "--rate", "3", "--prompt", "fixed:800"]
    flags += ["--output", "fixed:100", "--out", str(tmp_path / "b")]
    assert run(flags, capsys)[0] == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert a["ttft_s"] == b["ttft_s"] and a["tpot_s"] == b["tpot_s"]
    # A flag overrides the file.
    code, _, _ = run(["simulate", "--config", str(cfg), "--rate", "6"], capsys)
    assert code == 0
    c = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert c["throughput_req_per_s"] > 1.5 * a["throughput_req_per_s"]


def test_closed_loop_from_the_cli(tmp_path: Path, capsys) -> None:
    code, out, _ = run(
        [
            "simulate",
            "--clients",
            "4",
            "--num-requests",
            "40",
            "--prompt",
            "fixed:512",
            "--output",
            "fixed:64",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0 and "closed loop, 4 clients" in out


def test_predict_prints_a_breakdown_that_sums_to_the_total(capsys) -> None:
    code, out, _ = run(
        [
            "predict",
            "--model",
            "meta-llama/Llama-3.1-70B",
            "--tp",
            "4",
            "--decode-seqs",
            "32",
            "--context",
            "2000",
            "--prefill",
            "512:1024",
        ],
        capsys,
    )
    assert code == 0
    for op in ("qkv_proj", "attn_decode", "attn_prefill", "tp_allreduce", "mlp_up_proj"):
        assert op in out
    assert "iteration:" in out and "memory per device" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--device", "h900"], "Unknown device 'h900'"),
        (["simulate", "--model", "gpt-7"], "Unknown model 'gpt-7'"),
        (["simulate", "--rate", "-3"], "rate"),
        (["simulate", "--tp", "3"], "does not divide"),
        (["simulate", "--model", "meta-llama/Llama-3.1-70B"], "needs"),
        (["simulate", "--trace", "/nonexistent/trace.csv"], "does not exist"),
        (["predict"], "Give a batch"),
        (["simulate", "--config", "/nonexistent.yaml"], "does not exist"),
    ],
)
def test_bad_input_is_one_sentence_without_traceback(args, needle, capsys) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_config_key_is_named(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("modle: x\n")
    code, _, err = run(["simulate", "--config", str(cfg)], capsys)
    assert code == 2 and "modle" in err


def test_malformed_trace_row_names_the_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n0.5,abc,5\n")
    code, _, err = run(["simulate", "--trace", str(bad)], capsys)
    assert code == 2 and "line 3" in err


def test_devices_and_models_list(capsys) -> None:
    assert run(["devices"], capsys)[0] == 0
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "deepseek_v3" in out and "unsupported" in out


def test_overlap_scheduling_flag_delays_admission(tmp_path: Path, capsys) -> None:
    """`--overlap-scheduling` (vLLM's --async-scheduling) admits busy-time arrivals one
    iteration later: the same trace gets a higher mean TTFT, every request still served."""
    ttft = {}
    for flag in ("--overlap-scheduling", "--no-overlap-scheduling"):
        out = tmp_path / flag
        args = ["simulate", "--num-requests", "200", "--rate", "4", "--engine", "vllm", flag]
        assert run([*args, "--out", str(out)], capsys)[0] == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["finished"] == 200
        ttft[flag] = summary["ttft_s"]["mean"]
    assert ttft["--overlap-scheduling"] > ttft["--no-overlap-scheduling"], ttft
