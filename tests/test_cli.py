"""The command line: defaults, config files, outputs and one-sentence errors."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.sim.metrics import read_parquet


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


def test_an_error_shows_the_user_s_text_as_typed(capsys) -> None:
    """rich turns `:100:` into an emoji by default; an error quoting what the user typed must
    quote it as typed."""
    code, _, err = run(["simulate", "--rate", "2", "--prompt", "normal:100:-5"], capsys)
    assert code == 2 and "'normal:100:-5' is not understood" in " ".join(err.split())


def test_a_json_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte-order mark; the config is read all the same."""
    from servesim.cli.settings import load_file

    cfg = tmp_path / "run.json"
    cfg.write_bytes(b"\xef\xbb\xbf" + json.dumps({"model": "Qwen/Qwen3-8B", "tp": 2}).encode())
    assert load_file(cfg) == {"model": "Qwen/Qwen3-8B", "tp": 2}


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
    """`models` tables only the configs servesim can use and lists the others apart, each
    with the reason it refuses them."""
    from servesim.spec.model import bundled_models, load_model

    code, out, _ = run(["devices"], capsys)
    # An H100 in GB and in GiB (the driver's 81,559 MiB): 85.5 and 79.6.
    assert code == 0 and "85.5" in out and "79.6" in out
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "deepseek_v3" in out
    table, _, rest = out.partition("not usable")
    refused = []
    for name in bundled_models():
        try:
            load_model(name)
        except ServesimError:
            refused.append(name)
    # Every bundled config now loads (Llama 4 was the last refused family); any that did
    # not would be listed apart with its reason.
    assert "llama4_text" in table
    for name in refused:
        assert name not in table
        line = next(x for x in rest.splitlines() if name in x)
        assert "is not supported" in line
    # --all adds aiconfigurator-core's configs, which load by name too (the narrow test
    # console folds table cells, so the table is checked by a short unique fragment)
    code, out, _ = run(["models", "--all"], capsys)
    table, _, rest = out.partition("not usable")
    assert "Qwen/Qwen3.5-122B-A10B" not in bundled_models()
    assert code == 0 and "loadable by name" in table and "122B" in table
    assert "deepseek-ai/DeepSeek-V4-Pro" in rest  # a family servesim does not model


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


def test_model_part_flags_work_where_the_part_exists(capsys) -> None:
    """The engine flags refused for a model without the part they price (test_bad_inputs)
    are taken, and change the step, on a model that has it: MXFP4 experts' activation format
    (gpt-oss), the all-to-all of routed experts (DeepSeek-R1 under attention DP)."""

    def step_s(args: list[str]) -> float:
        code, out, err = run(["predict", "--json", *args], capsys)
        assert code == 0, err
        return json.loads(out)["totals"]["seconds"]

    oss = ["--model", "openai/gpt-oss-120b", "--device", "b200_sxm", "--decode-seqs", "256"]
    oss += ["--max-num-seqs", "256", "--context", "1000", "--tp", "2", "--engine", "trtllm"]
    assert step_s([*oss, "--mxfp4-activation", "bf16"]) != step_s(
        [*oss, "--mxfp4-activation", "mxfp8"]
    )
    r1 = ["--model", "deepseek-ai/DeepSeek-R1", "--device", "b200_sxm", "--tp", "1"]
    r1 += ["--dp", "8", "--ep", "8", "--engine", "sglang", "--decode-seqs", "256"]
    r1 += ["--max-num-seqs", "256", "--context", "1000"]
    assert step_s([*r1, "--moe-a2a-backend", "none"]) != step_s(
        [*r1, "--moe-a2a-backend", "deepep"]
    )


def test_figure_rows_flatten_nested_figures() -> None:
    """A cache's figures nest per category: the terminal table gets one row per number, named
    by its path, never a printed dict."""
    from servesim.cli.simulate import figure_rows

    rows = figure_rows({"hit_rate": 0.30081, "served": {"large": 4185}, "by": {"code": {"n": 2}}})
    assert rows == [("hit_rate", "0.3008"), ("served · large", "4185"), ("by · code · n", "2")]


def _live_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` and that are not zombies (Linux /proc)."""
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                state, ppid = Path(f"/proc/{d}/stat").read_bytes().rsplit(b")", 1)[1].split()[:2]
            except (OSError, ValueError):
                continue
            if int(ppid) == pid and state != b"Z":
                kids.append(int(d))
    return kids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_plan_workers_die_with_a_killed_plan(tmp_path: Path) -> None:
    """SIGKILL a plan while its two local workers search: neither outlives it."""
    args = [sys.executable, "-m", "servesim.cli.main", "plan", "--model", "meta-llama/Llama-3.1-8B"]
    args += ["--gpus", "h100_sxm,l40s", "--tp", "1,2", "--engines", "vllm", "--pd-ratios", "none"]
    args += ["--batching", "64:2048,256:8192", "--num-requests", "300", "--workers", "2"]
    args += ["--out", str(tmp_path / "plan")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
            time.sleep(0.1)
            workers = _live_children(proc.pid)
        assert len(workers) == 2, "the plan never started its two workers"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(_running(w) for w in workers):
        time.sleep(0.05)
    survivors = [w for w in workers if _running(w)]
    for w in survivors:  # do not leave them behind if the test fails
        os.kill(w, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived the killed plan"


def test_plan_exits_1_but_writes_its_outputs_when_nothing_is_feasible(tmp_path: Path, capsys):
    """An SLO no GPU meets: status 1 (ran, no answer), one sentence on stderr, and the
    report and table still written for the user to see how close each candidate came."""
    args = ["plan", "--model", "meta-llama/Llama-3.1-8B", "--gpus", "l4", "--tp", "1"]
    args += ["--engines", "vllm", "--batching", "64:2048", "--pd-ratios", "none", "--workers", "1"]
    args += ["--num-requests", "30", "--ttft-slo", "0.001", "--tpot-slo", "0.001"]
    code, out, err = run([*args, "--out", str(tmp_path)], capsys)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "no candidate meets the SLO" in err
    assert (tmp_path / "plan.parquet").is_file() and (tmp_path / "report.html").is_file()
    assert "No candidate meets the SLO" in out


def test_every_flag_is_a_validated_setting_and_help_works(capsys) -> None:
    """Each command's flags map one to one onto its pydantic settings (so none bypasses
    validation), and `--help` of every command prints and exits 0."""
    from servesim.cli import calibrate as cli_calibrate
    from servesim.cli import main as cli
    from servesim.cli import measure as cli_measure
    from servesim.cli import plan as cli_plan
    from servesim.cli import predict as cli_predict
    from servesim.cli import simulate as cli_simulate

    models = {
        "simulate": cli_simulate.SimulateSettings,
        "predict": cli_predict.PredictSettings,
        "calibrate": cli_calibrate.CalibrateSettings,
        "plan": cli_plan.PlanSettings,
        "bench": cli_measure.BenchSettings,
        "compare": cli_measure.CompareSettings,
        "profile": cli_measure.ProfileSettings,
        "fewshot": cli_measure.FewshotSettings,
    }
    parser = cli._parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, model in models.items():
        dests = {a.dest for a in subs.choices[name]._actions if a.dest not in ("help", "config")}
        assert dests == set(model.model_fields), name
    for name in (*models, "devices", "models"):
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
    help_text = capsys.readouterr().out
    assert "utilisation:0.7 = target mean KV-cache use" in " ".join(help_text.split())


def test_file_settings_sit_between_defaults_and_flags(tmp_path: Path) -> None:
    """Defaults < file < flags, with every value validated wherever it came from."""
    from servesim.cli import settings as config
    from servesim.cli.simulate import SimulateSettings

    cfg = tmp_path / "run.yaml"
    cfg.write_text("tp: 2\nrate: 3\nchunked_prefill: false\nnum-requests: 50\n")
    parser_args = argparse.Namespace(config=str(cfg), rate=7.0, tp=None, command="simulate")
    s = config.settings(SimulateSettings, parser_args)
    assert (s.tp, s.rate, s.chunked_prefill, s.num_requests, s.pp) == (2, 7.0, False, 50, 1)
    assert s.spell("tp") == f'tp in "{cfg}"' and s.spell("rate") == "--rate"
    cfg.write_text("chunked_prefill: no\n")  # YAML 1.1 reads a bare no as false: a real boolean
    assert config.settings(SimulateSettings, parser_args).chunked_prefill is False


def test_disk_errors_while_writing_become_one_sentence(tmp_path: Path) -> None:
    from servesim.cli import settings as config

    with (
        pytest.raises(ServesimError, match=r"Cannot write the outputs of --out .*No space left"),
        config.writing(tmp_path, "--out"),
    ):
        raise OSError(28, "No space left on device", str(tmp_path / "requests.parquet"))


def test_a_sequence_longer_than_the_model_context_is_refused(tmp_path: Path, capsys) -> None:
    """Llama-3.1-8B serves 131,072 tokens a sequence: predict refuses a longer prefill or decode
    context and plan a longer request, each in one sentence naming the limit."""
    model = ["--model", "meta-llama/Llama-3.1-8B", "--device", "h200_sxm"]
    code, _, err = run(["predict", *model, "--prefill", "1000:130072"], capsys)
    assert code == 0
    code, _, err = run(["predict", *model, "--prefill", "1000:130073"], capsys)
    assert code == 2 and "131,073 tokens exceeds" in err and "131,072-token context" in err
    code, _, err = run(["predict", *model, "--decode-seqs", "2", "--context", "140000"], capsys)
    assert code == 2 and "140,000 tokens exceeds" in err
    plan = ["plan", "--model", "meta-llama/Llama-3.1-8B", "--gpus", "h100_sxm", "--rate", "1"]
    plan += ["--prompt", "fixed:131000", "--output", "fixed:100", "--out", str(tmp_path)]
    code, _, err = run(plan, capsys)
    assert code == 2 and "131,100 tokens" in err and err.count("\n") == 1


def test_the_package_runs_as_a_module() -> None:
    """`python -m servesim` is the command line too (a user's first guess), with the same
    exit codes: 0 for help, 2 for an unknown command."""
    ok = subprocess.run([sys.executable, "-m", "servesim", "--help"], capture_output=True)
    assert ok.returncode == 0 and b"simulate" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "servesim", "simulat"], capture_output=True)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr


def test_predict_refuses_the_serving_loops_settings(capsys, tmp_path) -> None:
    """`predict --response-us 5000 --stream-interval 4 --postprocess-workers 3` was accepted
    and gave the same seconds: those shape the serving loop a simulation runs, not one
    iteration. The flags are simulate's, and a config file naming them is refused too."""
    base = ["predict", "--model", "meta-llama/Llama-3.1-8B", "--device", "h100_sxm"]
    base += ["--engine", "trtllm", "--decode-seqs", "8"]
    for flag_ in (["--response-us", "5000"], ["--stream-interval", "4"]):
        assert main([*base, *flag_]) == 2
        err = capsys.readouterr().err
        assert "does not take" in err and "Traceback" not in err
    cfg = tmp_path / "p.yaml"
    cfg.write_text("model: meta-llama/Llama-3.1-8B\ndevice: h100_sxm\ndecode_seqs: 8\n")
    cfg.write_text(cfg.read_text() + "postprocess_workers: 3\n")
    assert main(["predict", "--config", str(cfg)]) == 2
    assert "Unknown setting 'postprocess_workers'" in capsys.readouterr().err


def test_the_models_table_keeps_its_border_in_80_columns() -> None:
    """At 80 columns the `models` table lost its right border: its headers' minimum widths
    summed past the terminal. Every table row now ends with its border."""
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run(
        [sys.executable, "-m", "servesim", "models"], capture_output=True, text=True, env=env
    ).stdout
    table = out.partition("not usable")[0]
    rows = [line for line in table.splitlines() if line[:1] in "┏┃┡│└"]
    assert rows and all(line.rstrip()[-1] in "┓┃┩│┘" for line in rows)
    assert max(len(line) for line in rows) <= 80
