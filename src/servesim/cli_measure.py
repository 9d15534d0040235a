"""Command line for measuring reality: `servesim bench | compare | profile | fewshot`.

`add_parsers(subparsers)` adds the four subcommands to `servesim`'s parser and `COMMANDS` maps
their names to the functions that run them (each takes the parsed arguments and returns an exit
status; bad input raises ServesimError, which `servesim.cli.main` prints as one sentence).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servesim.config import add_switch
from servesim.errors import ServesimError

console = Console()

BENCH_DEFAULTS: dict[str, Any] = {
    "url": "http://127.0.0.1:8000",
    "model": None,
    "engine": "vllm",
    "chat": False,
    "api_key": None,
    "words": None,
    "tokenizer": None,
    "token_ids": None,
    "prompt_offset": None,
    "trace": None,
    "rate": None,
    "num_requests": None,
    "prompt": None,
    "output": None,
    "arrival": "poisson",
    "cv": 1.0,
    "clients": None,
    "think_s": 0.0,
    "seed": 0,
    "timeout": 120.0,
    "deadline": 3600.0,
    "max_concurrency": 256,
    "ttft_slo": 2.0,
    "tpot_slo": 0.1,
    "out": "servesim-bench",
    "progress": True,
}


def add_parsers(sub: Any) -> None:
    """Add `bench`, `compare`, `profile` and `fewshot` to servesim's subcommand parsers."""
    from servesim.cli import add_workload_args

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
    c.add_argument("a", help="run A (reference): a simulate/bench output folder or parquet")
    c.add_argument("b", help="run B")
    c.add_argument("--labels", nargs=2, metavar=("A", "B"), help="names of the two runs")
    c.add_argument("--ttft-slo", type=float, default=2.0, help="TTFT target, seconds")
    c.add_argument("--tpot-slo", type=float, default=0.1, help="TPOT target, seconds")
    c.add_argument("--out", default="servesim-compare", help="folder for table and plot")

    pr = sub.add_parser("profile", help="time a model's operators here and write CSV tables")
    pr.add_argument("--model", required=True, help="bundled model name or a config.json path")
    pr.add_argument("--hf-model", help="HF checkpoint folder to time full forward passes")
    pr.add_argument("--out", required=True, help="folder for the tables")
    pr.add_argument("--device-name", default="local", help="name of the device entry written")
    pr.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pr.add_argument("--threads", type=int, default=1, help="compute threads (default 1)")
    pr.add_argument("--repeats", type=int, default=10, help="timed runs per shape")
    pr.add_argument("--warmup", type=int, default=3, help="untimed runs per shape")
    pr.add_argument("--quick", action="store_true", help="a small grid (smoke test)")

    f = sub.add_parser("fewshot", help="fit an unseen device from a few measurements")
    f.add_argument("--tables", required=True, help="folder of aiconfigurator-format CSVs")
    f.add_argument("--device", required=True, help="the device they were measured on")
    f.add_argument("--devices", help="extra device catalog YAML")
    f.add_argument("--k", type=int, default=10, help="measurements to use (random)")
    f.add_argument("--seed", type=int, default=0, help="which measurements")
    f.add_argument("--out", required=True, help="fit JSON to write")


# ---- bench ----------------------------------------------------------------------------------
def _prompts(s: dict[str, Any]) -> Any:
    from servesim import bench

    given = [k for k in ("words", "tokenizer", "token_ids") if s.get(k) is not None]
    if len(given) != 1:
        raise ServesimError(
            "Give exactly one of --words FILE, --tokenizer PATH or --token-ids VOCAB_SIZE so "
            "prompts have exact token counts."
        )
    if s.get("words") is not None:
        return bench.WordPrompts.from_file(s["words"])
    if s.get("tokenizer") is not None:
        return bench.TokenizerPrompts(str(s["tokenizer"]))
    if int(s["token_ids"]) < 10:
        raise ServesimError("--token-ids needs the vocabulary size (>= 10).")
    return bench.TokenIdPrompts(int(s["token_ids"]))


def cmd_bench(args: argparse.Namespace) -> int:
    """Replay a workload against a server and write the per-request table and summary."""
    from servesim import bench, config
    from servesim.cli import build_workload, print_summary
    from servesim.metrics import Slo, write_parquet, write_summary

    file_settings = config.load_file(args.config) if args.config else {}
    s = config.merge(vars(args), file_settings, BENCH_DEFAULTS, args.config or "flags")
    if not s.get("model"):
        raise ServesimError("Give --model, the model name the server serves.")
    target = bench.Target(
        str(s["url"]), str(s["model"]), str(s["engine"]), bool(s["chat"]), s.get("api_key")
    )
    prompts = _prompts(s)
    if s.get("prompt_offset") is not None:
        prompts.offset = int(s["prompt_offset"])
    else:
        prompts.offset = bench.probe_prompt_offset(target, prompts, float(s["timeout"]))
        console.print(f"the server adds {prompts.offset} token(s) to each prompt")
    work = build_workload(s)
    slo = Slo(float(s["ttft_slo"]), float(s["tpot_slo"]))
    res = bench.run(
        target,
        work,
        prompts,
        timeout_s=float(s["timeout"]),
        deadline_s=float(s["deadline"]),
        max_concurrency=int(s["max_concurrency"]),
        seed=int(s["seed"]),
        progress=bool(s["progress"]),
    )
    summary = res.summary(slo)
    out = Path(str(s["out"]))
    write_parquet(res.columns(), out / "requests.parquet")
    write_summary(summary, out / "summary.json")
    print_summary(summary)
    counts = ", ".join(f"{k} {v}" for k, v in summary["statuses"].items() if v)
    console.print(
        f"statuses: {counts}; prompt length mismatches {summary['prompt_length_mismatches']}"
    )
    console.print(f"wrote {out}/requests.parquet and summary.json")
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
    """Print two runs side by side and write comparison.csv and cdf.svg."""
    from servesim import compare
    from servesim.metrics import Slo
    from servesim.plots import cdf_svg

    la, lb = args.labels or (None, None)
    a = compare.load_run(args.a, la)
    b = compare.load_run(args.b, lb)
    if a.label == b.label:
        a.label, b.label = f"{a.label} (A)", f"{b.label} (B)"
    rows = compare.compare(a, b, Slo(args.ttft_slo, args.tpot_slo))
    table = Table(title=f"{a.label} (A) vs {b.label} (B)")
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
    out = Path(args.out)
    csv_path = compare.write_table(rows, out / "comparison.csv", a.label, b.label)
    svg = cdf_svg(compare.cdf_panels(a, b), out / "cdf.svg", f"{a.label} vs {b.label}")
    console.print(f"wrote {csv_path} and {svg}")
    return 0


# ---- profile ----------------------------------------------------------------------------------
def cmd_profile(args: argparse.Namespace) -> int:
    """Time the model's operators and write calibration tables and a device entry."""
    from servesim.model import load_model
    from servesim.profile import ProfileConfig, profile_model

    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        raise ServesimError("--threads and --repeats must be >= 1 and --warmup >= 0.")
    model = load_model(args.model)
    cfg = ProfileConfig(
        warmup=args.warmup, repeats=args.repeats, threads=args.threads, device=args.device
    )
    if args.quick:
        cfg = cfg.quick()
    res = profile_model(
        model, args.out, cfg, args.device_name, args.hf_model, log=lambda m: console.print(m)
    )
    console.print(
        f"best GEMM {res.peak_flops_per_s / 1e9:,.0f} GFLOP/s, stream "
        f"{res.mem_bw_bytes_per_s / 1e9:,.1f} GB/s; {res.wall_s:.0f} s"
    )
    for f in res.files:
        console.print(f"wrote {f}")
    console.print(
        f"calibrate with: servesim calibrate --tables {args.out} --vidur {args.out}/vidur "
        f"--device {args.device_name} --devices {args.out}/device.yaml --out fit.json"
    )
    return 0


# ---- fewshot ----------------------------------------------------------------------------------
def cmd_fewshot(args: argparse.Namespace) -> int:
    """Fit a device's effective efficiencies from k random measurements and save the fit."""
    from servesim import fewshot
    from servesim.devices import catalog

    device = catalog(args.devices).get(args.device)
    pool = fewshot.measurements(args.tables)
    if args.k < 0:
        raise ServesimError("--k must be >= 0.")
    shots = fewshot.sample(pool, args.k, args.seed)
    fit = fewshot.fit_device(shots, device)
    fit.save(args.out)
    console.print(f"wrote {args.out} ({fit.fitted_on})")
    return 0


COMMANDS = {
    "bench": cmd_bench,
    "compare": cmd_compare,
    "profile": cmd_profile,
    "fewshot": cmd_fewshot,
}
