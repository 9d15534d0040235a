"""Every command × every kind of bad input: exit status 2, one line on stderr, no traceback,
nothing written where the outputs would go and no file of the user's touched.

The table runs the commands in-process through `servesim.cli.main.main` (fast); a few cases run
through a real subprocess as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from servesim.cli.main import main

Argv = list[str]
USER_TEXT = "a user's notes: keep me\n"
LLAMA = {
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
}


class Files:
    """Bad and good inputs on disk, made once for the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user = self._write("notes.txt", USER_TEXT)
        self.list_config = self._write("list.yaml", "- tp\n- 2\n")
        self.non_utf8_config = self._write("latin1.yaml", "model: caf\xe9\n".encode("latin-1"))
        self.zero_heads = self._write("zero_heads.json", {**LLAMA, "num_attention_heads": 0})
        self.negative_hidden = self._write("neg.json", {**LLAMA, "hidden_size": -4096})
        self.list_model = self._write("list_model.json", [LLAMA])
        self.bad_tables = root / "tables"
        self.bad_tables.mkdir()
        (self.bad_tables / "gemm_perf.csv").write_bytes(
            b"framework,gemm_dtype,m,n,k,latency\nVLLM,bfloat16,\xff,1,1,1\n"
        )
        self.runs = root / "run"  # compare needs two runs; bad input must fail before reading
        self.runs.mkdir()
        self.read_only = self._read_only_dir()

    def _write(self, name: str, content: object) -> Path:
        p = self.root / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_text(content)
        else:
            p.write_text(json.dumps(content))
        return p

    def config(self, name: str, text: str) -> Path:
        return self._write(name, text)

    def _read_only_dir(self) -> Path | None:
        """A folder nothing can be written in: sysfs refuses even root; else chmod 0o555."""
        if os.geteuid() == 0:
            return Path("/sys/servesim-out") if Path("/sys/kernel").is_dir() else None
        d = self.root / "read_only"
        d.mkdir()
        d.chmod(0o555)
        return d / "out"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("bad_inputs"))


# ---- the commands, each with a valid base invocation that writes to OUT --------------------------
OUT = "{out}"
BASE: dict[str, Argv] = {
    "simulate": ["simulate", "--num-requests", "20", "--rate", "5", "--out", OUT],
    "predict": ["predict", "--decode-seqs", "8"],
    "plan": [
        *("plan", "--model", "meta-llama/Llama-3.1-8B", "--gpus", "l40s", "--tp", "1"),
        *("--engines", "vllm", "--batching", "64:2048", "--pd-ratios", "none"),
        *("--num-requests", "20", "--workers", "1", "--out", OUT),
    ],
    "bench": [
        *("bench", "--model", "m", "--token-ids", "1000", "--prompt-offset", "0"),
        *("--url", "http://127.0.0.1:9", "--prompt", "fixed:8", "--output", "fixed:4"),
        *("--rate", "5", "--num-requests", "2", "--timeout", "1", "--no-progress", "--out", OUT),
    ],
    "compare": ["compare", "{runs}", "{runs}", "--out", OUT],
    "profile": ["profile", "--model", "meta-llama/Llama-3.1-8B", "--quick", "--out", OUT],
    "calibrate": ["calibrate", "--tables", "{tables}", "--device", "h100_sxm", "--out", OUT],
    "fewshot": ["fewshot", "--tables", "{tables}", "--device", "h100_sxm", "--out", OUT],
}
WRITES_FILE = ("calibrate", "fewshot")  # --out is a fit JSON, not a folder
# A key each command's config file may hold, given a value of the wrong type.
WRONG_TYPE = {
    "simulate": "tp: 2.5\n",
    "predict": "chunked_prefill: 'no'\n",
    "plan": "top: 2.5\n",
    "bench": "max_concurrency: '8'\n",
    "compare": "ttft_slo: fast\n",
    "profile": "threads: 2.5\n",
    "calibrate": "vidur: 5\n",
    "fewshot": "k: [1, 2]\n",
}
TAKES = {
    "seed": ("simulate", "plan", "bench", "fewshot"),
    "model": ("simulate", "predict", "plan", "profile"),
    "rate": ("simulate", "plan"),
    "tables": ("calibrate", "fewshot"),
    "float": {
        "simulate": "--ttft-slo",
        "plan": "--target",
        "bench": "--timeout",
        "compare": "--tpot-slo",
    },
}


def _with(argv: Argv, *extra: str) -> Argv:
    return [*argv, *extra]


def _without(argv: Argv, flag: str) -> Argv:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def _set_out(argv: Argv, out: str) -> Argv:
    return [out if a == OUT else a for a in argv]


Kind = Callable[[str, Argv, Files], Argv | None]


def _model(path_of: Callable[[Files], Path]) -> Kind:
    def kind(cmd: str, argv: Argv, f: Files) -> Argv | None:
        if cmd not in TAKES["model"]:
            return None
        if "--model" in argv:
            i = argv.index("--model")
            return [*argv[: i + 1], str(path_of(f)), *argv[i + 2 :]]
        return _with(argv, "--model", str(path_of(f)))

    return kind


def _wrong_type(cmd: str, argv: Argv, f: Files) -> Argv:
    return _with(argv, "--config", str(f.config(f"{cmd}_wrong.yaml", WRONG_TYPE[cmd])))


def _unknown_key(cmd: str, argv: Argv, f: Files) -> Argv:
    return _with(argv, "--config", str(f.config(f"{cmd}_typo.yaml", "modle: x\n")))


def _tables(cmd: str, argv: Argv, f: Files) -> Argv | None:
    return argv if cmd in TAKES["tables"] else None


KINDS: dict[str, Kind] = {
    "--out is a user's file": lambda c, a, f: _set_out(a, str(f.user)) if OUT in a else None,
    "--out is read-only": lambda c, a, f: (
        _set_out(a, str(f.read_only)) if OUT in a and f.read_only else None
    ),
    "--out lies under a file": lambda c, a, f: _set_out(a, f"{f.user}/out") if OUT in a else None,
    "config value of the wrong type": _wrong_type,
    "config with an unknown key": _unknown_key,
    "config that is a list": lambda c, a, f: _with(a, "--config", str(f.list_config)),
    "config that is not UTF-8": lambda c, a, f: _with(a, "--config", str(f.non_utf8_config)),
    "--seed -1": lambda c, a, f: _with(a, "--seed", "-1") if c in TAKES["seed"] else None,
    "nan": lambda c, a, f: (
        _with(a, TAKES["float"][c], "nan") if c in TAKES["float"] else None  # type: ignore[index]
    ),
    "--rate inf": lambda c, a, f: _with(a, "--rate", "inf") if c in TAKES["rate"] else None,
    "model with 0 heads": _model(lambda f: f.zero_heads),
    "model with a negative hidden_size": _model(lambda f: f.negative_hidden),
    "model config that is a list": _model(lambda f: f.list_model),
    "tables that are not UTF-8": _tables,
    "a flag that is not an integer": lambda c, a, f: (
        _with(a, "--k", "2.5") if c == "fewshot" else None
    ),
}
# What the one sentence must name, so a case cannot pass by failing for another reason.
NEEDLE: dict[str, Callable[[str, Files], str]] = {
    "--out is a user's file": lambda c, f: "--out",
    "--out is read-only": lambda c, f: "cannot write",
    "--out lies under a file": lambda c, f: "lies under the file",
    "config value of the wrong type": lambda c, f: f"{c}_wrong.yaml",
    "config with an unknown key": lambda c, f: "Unknown setting 'modle'",
    "config that is a list": lambda c, f: "must hold a mapping",
    "config that is not UTF-8": lambda c, f: "not UTF-8",
    "--seed -1": lambda c, f: "--seed must be ≥ 0",
    "nan": lambda c, f: "must be a finite number, got nan",
    "--rate inf": lambda c, f: "--rate must be a finite number, got inf",
    "model with 0 heads": lambda c, f: "num_attention_heads",
    "model with a negative hidden_size": lambda c, f: "hidden_size",
    "model config that is a list": lambda c, f: "must be a JSON object",
    "tables that are not UTF-8": lambda c, f: "not UTF-8",
    "a flag that is not an integer": lambda c, f: "--k must be a whole number",
}


def _cases() -> list[tuple[str, str]]:
    """The (command, kind) pairs that apply: a kind a command cannot take is left out."""
    stub = SimpleNamespace(
        **dict.fromkeys(
            ("user", "zero_heads", "negative_hidden", "list_model", "list_config"), Path("x")
        ),
        non_utf8_config=Path("x"),
        read_only=Path("x"),
        config=lambda name, text: Path(name),
    )
    return [(c, k) for c in BASE for k, kind in KINDS.items() if kind(c, BASE[c], stub)]


# Bad inputs of one command only: silent misreads and flags that do nothing where they are.
SPECIFIC: list[tuple[Argv, str]] = [
    (_with(BASE["simulate"], "--max-num-seqs", "0"), "--max-num-seqs must be ≥ 1"),
    (_with(BASE["simulate"], "--num-requests", "0"), "--num-requests must be ≥ 1"),
    (_with(BASE["simulate"], "--pp", "1000"), "exceeds"),
    (_with(BASE["simulate"], "--autoscale", "utilisation:nan"), "KV-cache use"),
    (_with(BASE["simulate"], "--autoscale", "utilisation:1.5"), "KV-cache use"),
    (_with(BASE["simulate"], "--disagg", "--prefill-replicas", "0"), "--prefill-replicas must"),
    (_with(BASE["simulate"], "--prefill-replicas", "2"), "without --disagg"),
    (_with(BASE["simulate"], "--prefill-tp", "2"), "without --disagg"),
    (_with(BASE["simulate"], "--decode-device", "l40s"), "without --disagg"),
    (_with(BASE["simulate"], "--kv-link", "pcie"), "without --disagg"),
    (_with(BASE["simulate"], "--class-slo", "1:0.1"), "unless --policy is slack"),
    (_with(BASE["simulate"], "--length-estimate", "noisy:0.3"), "unless --policy is slack"),
    (_with(BASE["simulate"], "--laps-threshold", "500"), "unless --policy is laps"),
    (_with(BASE["simulate"], "--swap-group-blocks", "8"), "unless --preemption is swap"),
    (_with(BASE["simulate"], "--min-replicas", "2"), "without --autoscale"),
    (_with(BASE["simulate"], "--max-replicas", "2"), "without --autoscale"),
    (_with(BASE["simulate"], "--cold-start-s", "10"), "without --autoscale"),
    (_with(BASE["simulate"], "--semipd-adaptive"), "without --semipd"),
    (_with(BASE["simulate"], "--router", "least_kv"), "does nothing with one"),
    (_with(BASE["simulate"], "--migration"), "--migration moves requests between replicas"),
    (_with(BASE["simulate"], "--disagg", "--replicas", "2"), "--replicas does nothing"),
    (_with(BASE["simulate"], "--disagg", "--autoscale", "queue:4"), "colocated replicas only"),
    (_with(BASE["simulate"], "--semipd", "0.5", "--migration", "--replicas", "2"), "colocated"),
    (_with(BASE["simulate"], "--trace", "azure_conv", "--prompt", "fixed:9"), "--prompt does"),
    (_with(BASE["simulate"], "--clients", "4"), "--rate does nothing in a closed loop"),
    (_with(BASE["simulate"], "--think-s", "1"), "--think-s applies to closed loops"),
    (_with(BASE["simulate"], "--cv", "2", "--prompt", "fixed:9"), "--cv shapes gamma"),
    (_with(BASE["simulate"], "--arrival", "gamma"), "a trace keeps its own"),
    (_with(BASE["simulate"], "--measured", "x.json", "--tp", "2"), "taken from the measured"),
    (_with(BASE["simulate"], "--tp", "2.5"), "--tp must be a whole number"),
    (_with(BASE["simulate"], "--bogus-flag"), "--bogus-flag"),
    (_with(BASE["predict"], "--pp", "1000"), "exceeds"),
    (_with(BASE["predict"], "--context", "100000"), "tokens of KV cache"),
    (_with(BASE["predict"], "--prefill", "1000000"), "131,072-token context"),
    (_with(BASE["predict"], "--prefill", "100000000"), "131,072-token context"),
    (["predict", "--decode-seqs", "5000", "--context", "10"], "--max-num-seqs"),
    (["predict", "--prefill", "9000"], "--max-num-batched-tokens"),
    (["predict", "--prefill", "10", "--context", "100"], "--context is the context"),
    (["predict"], "Give a batch"),
    (_with(BASE["predict"], "--replicas", "2"), "--replicas"),
    # Engine flags that price a part this deployment lacks would change nothing (README audit).
    (_with(BASE["predict"], "--lm-head-split", "adp_tp"), "does nothing without them"),
    (_with(BASE["predict"], "--mxfp4-activation", "mxfp8"), "has no MXFP4 experts"),
    (_with(BASE["predict"], "--token-count-compile-ms", "50"), "has no Gated DeltaNet"),
    (_with(BASE["predict"], "--moe-a2a-backend", "deepep"), "has no routed experts"),
    (_with(BASE["simulate"], "--moe-backend", "triton"), "has no routed experts"),
    (_with(BASE["plan"], "--rate", "nan"), "--rate must be a finite number"),
    (_with(BASE["plan"], "--gpus", ""), "--gpus needs at least one"),
    (_with(BASE["plan"], "--pp", "1000"), "--pp 1000 exceeds"),
    (_with(BASE["plan"], "--slice-factor", "3"), "without --mix"),
    (_with(BASE["plan"], "--mix", "--rate", "5"), "does nothing with --mix"),
    (_with(_without(BASE["plan"], "--workers"), "--ray", "127.0.0.1:1"), "No Ray cluster answers"),
    (_with(BASE["plan"], "--ray", "10.0.0.1:6379"), "--workers"),
    (_with(BASE["plan"], "--num-requests", "5"), "--num-requests must be ≥ 10"),
    (_with(BASE["plan"], "--batching", "64:2048:1"), "--batching takes"),
    (_with(BASE["plan"], "--kv-dtypes", "int4"), "--kv-dtypes"),
    (_with(BASE["bench"], "--chat"), "chat messages"),
    (_with(BASE["bench"], "--url", "http://[::1"), "--url is not a valid URL"),
    (_with(BASE["bench"], "--url", "127.0.0.1:8000"), "--url must be an http://"),
    (_with(BASE["simulate"], "--trace", ""), "--trace must not be empty"),
    (_with(BASE["predict"], "--context", "0"), "--context must be ≥ 1"),
    (_with(BASE["profile"], "--hf-model", "/nonexistent"), "--hf-model '/nonexistent'"),
    (_with(BASE["bench"], "--words", "w.txt"), "exactly one of"),
    (["compare", "{runs}"], "Run B is required"),
    (_with(BASE["profile"], "--threads", "0"), "--threads must be ≥ 1"),
    (_with(BASE["fewshot"], "--k", "-1"), "--k must be ≥ 0"),
]


def _expand(argv: Argv, f: Files, out: Path) -> Argv:
    sub = {OUT: str(out), "{runs}": str(f.runs), "{tables}": str(f.bad_tables)}
    return [sub.get(a, a) for a in argv]


def _check(argv: Argv, f: Files, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (argv, code, captured.out[-500:], err)
    assert "Traceback" not in err + captured.out
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert f.user.read_text() == USER_TEXT
    assert not out.exists(), f"{argv}: wrote {out} although the input was bad"
    return err


@pytest.mark.parametrize(("cmd", "kind"), _cases())
def test_every_command_refuses_every_kind_of_bad_input(
    cmd: str, kind: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = KINDS[kind](cmd, BASE[cmd], files)
    if argv is None:
        pytest.skip("no folder here refuses writes")  # read-only: neither root nor sysfs
    out = tmp_path / ("fit.json" if cmd in WRITES_FILE else "out")
    err = _check(_expand(argv, files, out), files, out, capsys)
    assert NEEDLE[kind](cmd, files) in err, err


@pytest.mark.parametrize(("argv", "needle"), SPECIFIC, ids=[n for _, n in SPECIFIC])
def test_misreads_and_idle_flags_are_refused(
    argv: Argv, needle: str, files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    err = _check(_expand(argv, files, out), files, out, capsys)
    assert needle in err, err


def test_file_keys_are_named_as_written_and_flags_as_typed(
    files: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = files.config("named.yaml", "max_num_seqs: 0\n")
    out = tmp_path / "out"
    err = _check(["simulate", "--config", str(cfg), "--out", str(out)], files, out, capsys)
    assert f'max_num_seqs in "{cfg}"' in err
    err = _check(
        _expand(_with(BASE["simulate"], "--max-num-seqs", "0"), files, out), files, out, capsys
    )
    assert "--max-num-seqs must be ≥ 1, got 0" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", "--seed", "-1"], "--seed must be ≥ 0"),
        (["plan", "--rate", "inf", "--out", "{out}"], "--rate must be a finite number"),
        (["predict", "--prefill", "100000000"], "token context"),
    ],
)
def test_a_real_process_exits_2_with_one_line(args: Argv, needle: str, tmp_path: Path) -> None:
    import servesim

    argv = [a.replace("{out}", str(tmp_path / "out")) for a in args]
    src = str(Path(servesim.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-m", "servesim.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and needle in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        ("benchmarks/kernels.py", ["--tables", "{missing}", "--device", "h100_sxm"], "exist"),
        ("benchmarks/kernels.py", ["--leave-one-gpu-out", "--fit-rows", "0"], "--fit-rows takes"),
        ("benchmarks/fewshot.py", ["--leave-one-gpu-out", "--k", "0,x"], "--k '0,x'"),
        ("benchmarks/speculative.py", ["--batches", "0"], "--batches '0'"),
    ],
)
def test_a_script_exits_2_with_one_line(
    script: str, args: Argv, needle: str, tmp_path: Path
) -> None:
    """The benchmark and validation scripts report bad input as the CLI does
    (`servesim.errors.script_exit`): one sentence on stderr, status 2, no traceback. A missing
    folder is one under the test's own directory (a fixed `/nonexistent` can come to exist)."""
    args = [a.format(missing=tmp_path / "missing") for a in args]
    done = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_counts_reads_whole_numbers_at_least_the_minimum() -> None:
    from servesim.errors import ServesimError, counts

    assert counts("0,3,5,10", "--k") == [0, 3, 5, 10]
    for bad in ("", "1,,2", "1.5", "-1"):
        with pytest.raises(ServesimError, match="--k"):
            counts(bad, "--k")
    with pytest.raises(ServesimError, match="≥ 1"):
        counts("0", "--batches", 1)


def test_at_least_refuses_a_number_below_the_minimum() -> None:
    from servesim.errors import ServesimError, at_least

    assert at_least(1, "--fit-rows") == 1 and at_least(0, "--start", 0) == 0
    with pytest.raises(ServesimError, match=r"--fit-rows takes a whole number ≥ 1, not 0\."):
        at_least(0, "--fit-rows")


def test_script_exit_turns_a_path_error_into_one_sentence(capsys) -> None:
    from servesim.errors import ServesimError, script_exit

    def missing() -> int:
        raise FileNotFoundError(2, "No such file or directory", "/no/such/rows.csv")

    def refused() -> int:
        raise ServesimError("--k 'x' is not a list; write e.g. --k 1,2.")

    assert script_exit(missing) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: No such file or directory (/no/such/rows.csv); check the path, its permissions "
        "and the free space.\n"
    )
    assert script_exit(refused) == 2
    assert capsys.readouterr().err == "error: --k 'x' is not a list; write e.g. --k 1,2.\n"
    assert script_exit(lambda: None) == 0 and script_exit(lambda: 3) == 3
