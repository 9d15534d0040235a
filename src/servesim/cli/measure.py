"""Command line for measuring reality: `servesim bench | compare | profile | fewshot`.

`add_parsers(subparsers)` adds the four subcommands to `servesim`'s parser and `COMMANDS` maps
their names to the functions that run them (each takes the parsed arguments and returns an exit
status; bad input raises ServesimError, which `servesim.cli.main.main` prints as one sentence).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator
from rich.console import Console
from rich.table import Table
from rich.text import Text

from servesim.cli import settings as config
from servesim.cli.settings import (
    Misuse,
    NonEmpty,
    NonNegInt,
    PosFloat,
    PosInt,
    Settings,
    WorkloadSettings,
    add_switch,
)
from servesim.errors import ServesimError

# No markup: paths, labels and names come from the user and may hold [brackets].
console = Console(markup=False, emoji=False)


class BenchSettings(WorkloadSettings):
    """Everything `servesim bench` reads."""

    url: NonEmpty = "http://127.0.0.1:8000"
    model: NonEmpty | None = None
    engine: NonEmpty = "vllm"
    chat: bool = False
    api_key: NonEmpty | None = None
    words: NonEmpty | None = None
    tokenizer: NonEmpty | None = None
    token_ids: Annotated[int, Field(ge=10)] | None = None
    prompt_offset: NonNegInt | None = None
    timeout: PosFloat = 120.0
    deadline: PosFloat = 3600.0
    max_concurrency: PosInt = 256
    ttft_slo: PosFloat = 2.0
    tpot_slo: PosFloat = 0.1
    out: NonEmpty = "servesim-bench"
    progress: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc}), got {v!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {v!r}")
        return v

    @model_validator(mode="after")
    def _bench_modes(self) -> BenchSettings:
        if not self.model:
            raise Misuse("Give {model}, the model name the server serves.")
        if sum(self.given(k) for k in ("words", "tokenizer", "token_ids")) != 1:
            raise Misuse(
                "Give exactly one of {words} FILE, {tokenizer} PATH or {token_ids} VOCAB_SIZE "
                "so prompts have exact token counts."
            )
        if self.chat and self.given("token_ids"):
            raise Misuse(
                "{token_ids} sends token ids, which chat messages cannot carry; use {words} or "
                "{tokenizer} with {chat}."
            )
        return self


class CompareSettings(Settings):
    """Everything `servesim compare` reads."""

    POSITIONAL: ClassVar[dict[str, str]] = {"a": "Run A", "b": "Run B"}
    a: NonEmpty
    b: NonEmpty
    labels: Annotated[list[NonEmpty], Field(min_length=2, max_length=2)] | None = None
    ttft_slo: PosFloat = 2.0
    tpot_slo: PosFloat = 0.1
    out: NonEmpty = "servesim-compare"


class ProfileSettings(Settings):
    """Everything `servesim profile` reads."""

    model: NonEmpty
    hf_model: NonEmpty | None = None
    out: NonEmpty
    device_name: NonEmpty = "local"
    device: NonEmpty = "auto"
    threads: PosInt = 1
    repeats: PosInt = 10
    warmup: NonNegInt = 3
    quick: bool = False


class FewshotSettings(Settings):
    """Everything `servesim fewshot` reads."""

    tables: NonEmpty | None = None
    shots: NonEmpty | None = None  # local-device tokens/s CSV (`cli.edge_fewshot`)
    device: NonEmpty
    devices: NonEmpty | None = None
    k: NonNegInt = 10
    seed: NonNegInt = 0
    out: NonEmpty
    json_output: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> FewshotSettings:
        if self.given("tables") == self.given("shots"):
            raise Misuse(
                "Give exactly one of {tables} DIR (kernel tables, k drawn at random) or {shots} "
                "CSV (at most 10 measured tokens/s of a local device)."
            )
        if self.given("shots") and (self.given("k") or self.given("seed")):
            raise Misuse("{k} and {seed} draw from {tables}; with {shots} every row is used.")
        return self


def add_parsers(sub: Any) -> None:
    """Add `bench`, `compare`, `profile` and `fewshot` to servesim's subcommand parsers."""
    from servesim.cli.workload_flags import add_workload_args

    b = sub.add_parser("bench", help="load-test an OpenAI-compatible server with a workload")
    b.add_argument("--config", help="YAML/JSON file with any of these settings")
    s = b.add_argument_group("server")
    s.add_argument("--url", help="server base URL (default http://127.0.0.1:8000)")
    s.add_argument("--model", help="model name the server expects in requests")
    s.add_argument("--engine", help="vllm, sglang, llama.cpp, hf or openai (output forcing)")
    s.add_argument("--chat", action="store_true", default=None, help="use /v1/chat/completions")
    s.add_argument("--api-key", help="bearer token")
    p = b.add_argument_group("prompts (exact token counts)")
    p.add_argument("--words", help="word list file: one word that is one token per line")
    p.add_argument("--tokenizer", help="Hugging Face tokenizer.json (or its folder)")
    p.add_argument("--token-ids", type=int, help="send random token ids from a vocab this size")
    p.add_argument(
        "--prompt-offset",
        type=int,
        help="tokens the server adds to each prompt (default: measured with a probe)",
    )
    add_workload_args(b.add_argument_group("workload (as for simulate)"))
    r = b.add_argument_group("run")
    r.add_argument("--timeout", type=float, help="seconds per request (default 120)")
    r.add_argument("--deadline", type=float, help="seconds for the whole run (default 3600)")
    r.add_argument("--max-concurrency", type=int, help="requests in flight at most (256)")
    r.add_argument("--ttft-slo", type=float, help="TTFT target, seconds")
    r.add_argument("--tpot-slo", type=float, help="TPOT target, seconds")
    r.add_argument("--out", help="output folder (requests.parquet, summary.json)")
    add_switch(r, "--progress", "progress bar")

    c = sub.add_parser("compare", help="two runs side by side with relative errors and CDFs")
    c.add_argument("a", nargs="?", help="run A (reference): a simulate/bench output or parquet")
    c.add_argument("b", nargs="?", help="run B")
    c.add_argument("--config", help="YAML/JSON file with any of these settings")
    c.add_argument("--labels", nargs=2, metavar=("A", "B"), help="names of the two runs")
    c.add_argument("--ttft-slo", type=float, help="TTFT target, seconds (default 2)")
    c.add_argument("--tpot-slo", type=float, help="TPOT target, seconds (default 0.1)")
    c.add_argument("--out", help="folder for table and plot (default servesim-compare)")

    pr = sub.add_parser("profile", help="time a model's operators here and write CSV tables")
    pr.add_argument("--config", help="YAML/JSON file with any of these settings")
    pr.add_argument("--model", help="bundled model name or a config.json path (required)")
    pr.add_argument("--hf-model", help="HF checkpoint folder to time full forward passes")
    pr.add_argument("--out", help="folder for the tables (required)")
    pr.add_argument("--device-name", help="name of the device entry written (default local)")
    pr.add_argument("--device", help="auto, cpu or cuda (default auto)")
    pr.add_argument("--threads", type=int, help="compute threads (default 1)")
    pr.add_argument("--repeats", type=int, help="timed runs per shape (default 10)")
    pr.add_argument("--warmup", type=int, help="untimed runs per shape (default 3)")
    pr.add_argument("--quick", action="store_true", default=None, help="a small grid (smoke test)")

    f = sub.add_parser("fewshot", help="fit an unseen device from a few measurements")
    f.add_argument("--config", help="YAML/JSON file with any of these settings")
    f.add_argument("--tables", help="folder of aiconfigurator-format CSVs (GPU kernels)")
    f.add_argument(
        "--shots",
        help="CSV of <= 10 measured tokens/s of a local device (model, quant, threads, phase, "
        "tokens, context, tokens_per_s or seconds; see examples/edge_shots.csv)",
    )
    f.add_argument("--device", help="the device they were measured on (required)")
    f.add_argument("--devices", help="extra device catalog YAML")
    f.add_argument("--k", type=int, help="measurements to use, drawn at random (default 10)")
    f.add_argument("--seed", type=int, help="which measurements (default 0)")
    f.add_argument("--out", help="fit JSON to write (required; use it with --fit)")
    f.add_argument(
        "--json",
        dest="json_output",
        action="store_true",
        default=None,
        help="print the fit as JSON",
    )


# ---- bench ----------------------------------------------------------------------------------
def _prompts(s: BenchSettings) -> Any:
    from servesim.measure import bench

    if s.words is not None:
        return bench.WordPrompts.from_file(s.words)
    if s.tokenizer is not None:
        return bench.TokenizerPrompts(s.tokenizer)
    assert s.token_ids is not None  # BenchSettings wants exactly one of the three
    return bench.TokenIdPrompts(s.token_ids)


def cmd_bench(args: argparse.Namespace) -> int:
    """Replay a workload against a server and write the per-request table and summary; exit 1
    (outputs still written) when no request succeeded."""
    from servesim.cli.output import print_summary
    from servesim.cli.workload_flags import build_workload
    from servesim.measure import bench
    from servesim.sim.metrics import Slo, write_parquet, write_summary

    s = config.settings(BenchSettings, args)
    out = config.check_out_dir(s.out, s.spell("out"))
    target = bench.Target(s.url, str(s.model), s.engine, s.chat, s.api_key)
    prompts = _prompts(s)
    work = build_workload(s)
    if s.prompt_offset is not None:
        prompts.offset = s.prompt_offset
    else:
        prompts.offset = bench.probe_prompt_offset(target, prompts, s.timeout)
        console.print(f"the server adds {prompts.offset} token(s) to each prompt")
    slo = Slo(s.ttft_slo, s.tpot_slo)
    res = bench.run(
        target,
        work,
        prompts,
        timeout_s=s.timeout,
        deadline_s=s.deadline,
        max_concurrency=s.max_concurrency,
        seed=s.seed,
        progress=s.progress,
    )
    summary = res.summary(slo)
    with config.writing(out, s.spell("out")):
        write_parquet(res.columns(), out / "requests.parquet")
        write_summary(summary, out / "summary.json")
    print_summary(summary, simulated=False)
    counts = ", ".join(f"{k} {v}" for k, v in summary["statuses"].items() if v)
    console.print(
        f"statuses: {counts}; prompt length mismatches {summary['prompt_length_mismatches']}"
    )
    console.print(f"wrote {out}/requests.parquet and summary.json")
    if summary["requests"] and not summary["finished"]:
        first = next((r.error for r in res.records if r.error), "")
        why = f" (first error: {' '.join(str(first).split())[:160]})" if first else ""
        Console(stderr=True, emoji=False).print(
            f"every one of the {summary['requests']} requests failed ({counts}){why}; check "
            f"that the server at {s.url} is up and serves {s.model!r} (exit status 1).",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return 1
    return 0


# ---- compare ----------------------------------------------------------------------------------
def _fmt(v: Any, unit: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if unit == "s":
        return f"{float(v) * 1e3:,.2f} ms"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{float(v):,.4g}"


def cmd_compare(args: argparse.Namespace) -> int:
    """Print two runs side by side and write comparison.csv and cdf.html (interactive CDFs)."""
    from servesim.measure import compare
    from servesim.report.plots import cdf_html
    from servesim.sim.metrics import Slo

    s = config.settings(CompareSettings, args)
    out = config.check_out_dir(s.out, s.spell("out"))
    la, lb = s.labels or (None, None)
    a = compare.load_run(s.a, la)
    b = compare.load_run(s.b, lb)
    if a.label == b.label:
        a.label, b.label = f"{a.label} (A)", f"{b.label} (B)"
        title = f"{a.label} vs {b.label}"
    else:
        title = f"{a.label} (A) vs {b.label} (B)"
    rows = compare.compare(a, b, Slo(s.ttft_slo, s.tpot_slo))
    table = Table(title=Text(title))
    for col in ("metric", "A", "B", "B vs A"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows:
        e = r["rel_err"]
        table.add_row(
            r["metric"],
            _fmt(r["a"], r["unit"]),
            _fmt(r["b"], r["unit"]),
            "-" if e != e else f"{e:+.1%}",
        )
    console.print(table)
    with config.writing(out, s.spell("out")):
        csv_path = compare.write_table(rows, out / "comparison.csv", a.label, b.label)
        page = cdf_html(compare.cdf_panels(a, b), out / "cdf.html", f"{a.label} vs {b.label}")
    console.print(f"wrote {csv_path} and {page}")
    return 0


# ---- profile ----------------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> int:
    """Time the model's operators and write calibration tables and a device entry."""
    from servesim.measure.profile import ProfileConfig, profile_model
    from servesim.spec.model import load_model

    s = config.settings(ProfileSettings, args)
    out = config.check_out_dir(s.out, s.spell("out"))
    if s.hf_model is not None and not (Path(s.hf_model) / "config.json").is_file():
        raise ServesimError(
            f"{s.spell('hf_model')} {s.hf_model!r} is not a folder with a Hugging Face "
            "checkpoint (config.json and weights); give the checkpoint's folder."
        )
    if s.device != "auto" and s.device != "cpu" and not s.device.startswith("cuda"):
        raise ServesimError(f"{s.spell('device')} {s.device!r} is unknown; use auto, cpu or cuda.")
    model = load_model(s.model)
    cfg = ProfileConfig(warmup=s.warmup, repeats=s.repeats, threads=s.threads, device=s.device)
    if s.quick:
        cfg = cfg.quick()
    with config.writing(out, s.spell("out")):
        res = profile_model(
            model, out, cfg, s.device_name, s.hf_model, log=lambda m: console.print(m)
        )
    console.print(
        f"best GEMM {res.peak_flops_per_s / 1e9:,.0f} GFLOP/s, stream "
        f"{res.mem_bw_bytes_per_s / 1e9:,.1f} GB/s; {res.wall_s:.0f} s"
    )
    for f in res.files:
        console.print(f"wrote {f}")
    console.print(
        f"calibrate with: servesim calibrate --tables {out} --vidur {out}/vidur "
        f"--device {s.device_name} --devices {out}/device.yaml --out fit.json"
    )
    return 0


# ---- fewshot ----------------------------------------------------------------------------------
def cmd_fewshot(args: argparse.Namespace) -> int:
    """Fit a device's effective efficiencies from k random measurements and save the fit."""
    from servesim.cli.calibrate import is_fit_file, save_fit
    from servesim.predictor import fewshot
    from servesim.spec.devices import catalog

    s = config.settings(FewshotSettings, args)
    device = catalog(s.devices).get(s.device)
    if s.shots is not None:
        from servesim.cli.edge_fewshot import run_edge_fewshot

        return run_edge_fewshot(s, device)
    out = config.check_out_file(s.out, s.spell("out"), ours=is_fit_file)
    assert s.tables is not None
    with config.utf8_tables(s.spell("tables"), s.tables):
        pool = fewshot.measurements(s.tables)
    shots = fewshot.sample(pool, s.k, s.seed)
    fit = fewshot.fit_device(shots, device)
    save_fit(fit, out, s.spell("out"))
    console.print(f"wrote {out} ({fit.fitted_on})")
    return 0


COMMANDS = {
    "bench": cmd_bench,
    "compare": cmd_compare,
    "profile": cmd_profile,
    "fewshot": cmd_fewshot,
}
