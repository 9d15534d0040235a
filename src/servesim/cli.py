"""Command line: `servesim simulate | predict | calibrate | devices | models`.

Each command reads its settings from flags and, with `--config FILE`, from a YAML/JSON file with
the same names. Bad input ends in one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servesim import cli_measure, cli_plan, config, mechanisms
from servesim.config import add_switch
from servesim.devices import catalog
from servesim.engine import get_engine
from servesim.errors import ServesimError

console = Console()

DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B",
    "device": "h100_sxm",
    "devices": None,
    "tp": 1,
    "pp": 1,
    "ep": 1,
    "dp": 1,
    "replicas": 1,
    "engine": "vllm",
    "max_num_seqs": None,
    "max_num_batched_tokens": None,
    "chunked_prefill": None,
    "overlap_scheduling": None,
    "weight_dtype": None,
    "kv_dtype": None,
    "fit": None,
}

SIMULATE_DEFAULTS: dict[str, Any] = {
    **DEPLOYMENT_DEFAULTS,
    "trace": None,
    "rate": None,
    "num_requests": None,
    "prompt": None,
    "output": None,
    "arrival": "poisson",
    "cv": 1.0,
    "clients": None,
    "think_s": 0.0,
    "measured": None,
    "ttft_slo": 2.0,
    "tpot_slo": 0.1,
    "router": "round_robin",
    "seed": 0,
    "out": "servesim-out",
    **mechanisms.DEFAULTS,
}

PREDICT_DEFAULTS: dict[str, Any] = {
    **DEPLOYMENT_DEFAULTS,
    "decode_seqs": 0,
    "context": 1024,
    "prefill": [],
}


# ---- argument definitions ----------------------------------------------------------------


def _add_deployment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment")
    g.add_argument("--config", help="YAML/JSON file with any of these settings")
    g.add_argument("--model", help="bundled model name/HF id or a config.json path")
    g.add_argument("--device", help="device name or alias (see `servesim devices`)")
    g.add_argument("--devices", help="extra device catalog YAML")
    g.add_argument("--tp", type=int, help="tensor-parallel degree")
    g.add_argument("--pp", type=int, help="pipeline-parallel degree")
    g.add_argument("--ep", type=int, help="expert-parallel degree (1 = experts split by TP)")
    g.add_argument("--dp", type=int, help="attention data-parallel ranks per replica")
    g.add_argument("--replicas", type=int, help="identical data-parallel replicas")
    g.add_argument("--engine", help="engine profile: vllm, sglang or trtllm")
    g.add_argument("--max-num-seqs", type=int, help="max sequences per batch")
    g.add_argument("--max-num-batched-tokens", type=int, help="token budget per iteration")
    add_switch(g, "--chunked-prefill", "split long prefills across iterations")
    add_switch(
        g,
        "--overlap-scheduling",
        "plan the next iteration while one runs (default: the engine's; on for trtllm and "
        "sglang, off for vllm, whose --async-scheduling turns it on)",
    )
    g.add_argument("--weight-dtype", help="bf16, fp8, int4, ... (default: the config's)")
    g.add_argument("--kv-dtype", help="KV cache dtype: bf16 or fp8")
    g.add_argument("--fit", help="kernel fit JSON from `servesim calibrate`")


def add_workload_args(w: argparse._ArgumentGroup) -> None:
    """The workload flags `simulate` and `bench` share (read by `build_workload`)."""
    w.add_argument("--trace", help="bundled trace name (azure_conv, mooncake_conv) or a file")
    w.add_argument("--rate", type=float, help="scale arrivals to this mean rate (req/s)")
    w.add_argument("--num-requests", type=int, help="requests to run (tiles a trace)")
    w.add_argument("--prompt", help="synthetic prompt lengths: fixed:N, uniform:A:B, ...")
    w.add_argument("--output", help="synthetic output lengths: fixed:N, uniform:A:B, ...")
    w.add_argument("--arrival", help="synthetic arrivals: poisson or gamma")
    w.add_argument("--cv", type=float, help="inter-arrival coefficient of variation (gamma)")
    w.add_argument("--clients", type=int, help="closed loop with this many concurrent clients")
    w.add_argument("--think-s", type=float, help="closed-loop think time between requests")
    w.add_argument("--seed", type=int, help="seed for synthetic lengths and arrivals")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servesim",
        description="Predict, simulate and plan LLM serving against latency SLOs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate serving a workload on one deployment")
    _add_deployment_args(sim)
    add_workload_args(sim.add_argument_group("workload"))
    s = sim.add_argument_group("SLO and output")
    s.add_argument("--ttft-slo", type=float, help="TTFT target, seconds")
    s.add_argument("--tpot-slo", type=float, help="TPOT target, seconds")
    s.add_argument(
        "--router",
        help="round_robin, least_loaded, least_requests, least_kv, power_of_two, "
        "prefix_affinity or session",
    )
    s.add_argument("--out", help="output folder for requests.parquet and summary.json")
    s.add_argument(
        "--measured",
        help="a measured-engine JSON (validation/real_engine.py writes one): model, device, "
        "engine and iteration costs from measurements; --model/--device/--engine/--tp are then "
        "taken from it",
    )
    mechanisms.add_args(sim)

    pred = sub.add_parser("predict", help="time one batch, with a per-operator breakdown")
    _add_deployment_args(pred)
    b = pred.add_argument_group("batch")
    b.add_argument("--decode-seqs", type=int, help="sequences decoding one token each")
    b.add_argument("--context", type=int, help="mean tokens each decode sequence attends to")
    b.add_argument(
        "--prefill",
        action="append",
        help="a prefill chunk NEW[:CACHED] tokens (repeat for several sequences)",
    )

    cal = sub.add_parser("calibrate", help="fit kernel efficiencies to measured tables")
    cal.add_argument("--tables", required=True, help="folder of aiconfigurator-format CSVs")
    cal.add_argument("--vidur", help="folder of Vidur profiling CSVs (compute/, network/)")
    cal.add_argument("--device", required=True, help="the device the tables were measured on")
    cal.add_argument("--devices", help="extra device catalog YAML")
    cal.add_argument("--out", required=True, help="where to write the fit JSON")

    cli_plan.add_parser(sub)
    cli_measure.add_parsers(sub)

    dev = sub.add_parser("devices", help="list the device catalog")
    dev.add_argument("--devices", help="extra device catalog YAML")
    sub.add_parser("models", help="list the bundled model configs")
    return parser


# ---- shared builders ---------------------------------------------------------------------


def _settings(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    file_settings = config.load_file(args.config) if getattr(args, "config", None) else {}
    origin = args.config or "flags"
    return config.merge(vars(args), file_settings, defaults, origin)


def build_deployment(s: dict[str, Any]):
    """A Deployment from merged settings."""
    from servesim.kernels import KernelFit
    from servesim.model import load_model
    from servesim.parallel import Parallel
    from servesim.simulator import Deployment

    device = catalog(s.get("devices")).get(str(s["device"]))
    model = load_model(str(s["model"]))
    if s.get("weight_dtype") or s.get("kv_dtype"):
        model = model.with_dtypes(weight=s.get("weight_dtype"), kv=s.get("kv_dtype"))
    par = Parallel(tp=int(s["tp"]), pp=int(s["pp"]), ep=int(s["ep"]), dp=int(s["dp"]))
    model.check_tp(par.tp)
    if int(s["replicas"]) < 1:
        raise ServesimError(f"--replicas must be ≥ 1, got {s['replicas']}.")
    fit = KernelFit.load(s["fit"]) if s.get("fit") else None
    return Deployment(
        model=model,
        device=device,
        parallel=par,
        engine=get_engine(str(s["engine"])).with_overrides(
            overlap_scheduling=s.get("overlap_scheduling")
        ),
        replicas=int(s["replicas"]),
        max_num_seqs=s.get("max_num_seqs"),
        max_num_batched_tokens=s.get("max_num_batched_tokens"),
        chunked_prefill=s.get("chunked_prefill"),
        fit=fit,
    )


def build_measured(s: dict[str, Any]):
    """A deployment priced from measurements (`--measured FILE`), with the batching flags the
    user gave on top of the engine profile the file holds."""
    from dataclasses import replace

    from servesim.measured import load_measured_engine

    dep = load_measured_engine(str(s["measured"]))
    over = {
        k: s[k]
        for k in ("max_num_seqs", "max_num_batched_tokens", "chunked_prefill")
        if s.get(k) is not None
    }
    return replace(dep, **over) if over else dep


def build_workload(s: dict[str, Any]):
    """The open-loop workload or closed loop that the settings describe."""
    from servesim import trace as tracemod
    from servesim import workload as wl

    seed = int(s["seed"])
    synthetic = s.get("prompt") is not None or s.get("output") is not None
    base = None
    if s.get("trace") or not synthetic:
        name = s.get("trace") or "azure_conv"
        base = (
            tracemod.read_trace(name)
            if Path(name).exists() or "/" in name or "." in name
            else tracemod.bundled_trace(name)
        )
    if s.get("clients") is not None:
        clients = int(s["clients"])
        n = int(s.get("num_requests") or 10 * clients)
        prompt = wl.parse_length(str(s.get("prompt") or "trace"), "prompt", base)
        output = wl.parse_length(str(s.get("output") or "trace"), "output", base)
        return wl.ClosedLoop(clients, n, prompt, output, float(s["think_s"]), seed)
    if base is None or (synthetic and not s.get("trace")):
        rate = s.get("rate")
        if rate is None:
            raise ServesimError("A synthetic workload needs --rate (requests per second).")
        n = int(s.get("num_requests") or 1000)
        prompt = wl.parse_length(str(s.get("prompt") or "fixed:1024"), "prompt", base)
        output = wl.parse_length(str(s.get("output") or "fixed:256"), "output", base)
        return wl.synthetic(
            n, float(rate), prompt, output, arrival=str(s["arrival"]), cv=float(s["cv"]), seed=seed
        )
    w = base
    if s.get("num_requests"):
        n = int(s["num_requests"])
        w = w.tiled(n) if n > len(w) else w.head(n)
    if s.get("rate") is not None:
        w = w.scaled_to_rate(float(s["rate"]))
    return w


# ---- commands ----------------------------------------------------------------------------


def _fmt_ms(x: float) -> str:
    return f"{x * 1e3:,.1f}" if x == x else "-"


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run one simulation and report it."""
    from servesim.metrics import Slo, write_parquet, write_summary
    from servesim.simulator import simulate
    from servesim.workload import ClosedLoop

    s = _settings(args, SIMULATE_DEFAULTS)
    slo = Slo(float(s["ttft_slo"]), float(s["tpot_slo"]))
    dep = build_measured(s) if s.get("measured") else build_deployment(s)
    dep = mechanisms.apply(dep, s, slo)
    work = build_workload(s)
    closed = work if isinstance(work, ClosedLoop) else None
    res = simulate(dep, None if closed else work, closed_loop=closed, router=str(s["router"]))
    summary = res.summary(slo)
    summary["workload"] = (
        f"closed loop, {closed.clients} clients, {closed.num_requests} requests"
        if closed
        else getattr(work, "name", "")
    )
    summary["sim_wall_s"] = res.wall_s
    out = Path(str(s["out"]))
    write_parquet(res.columns(), out / "requests.parquet")
    write_parquet(res.series, out / "timeseries.parquet")
    write_summary(summary, out / "summary.json")
    print_summary(summary)
    console.print(f"wrote {out}/requests.parquet, timeseries.parquet and summary.json")
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """A rich table of a run's summary."""
    head = Table(title=f"servesim: {summary.get('deployment', '')} — {summary.get('workload', '')}")
    head.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        head.add_column(f"{col} (ms)", justify="right")
    for key, label in (
        ("ttft_s", "TTFT"),
        ("tpot_s", "TPOT"),
        ("itl_s", "inter-token"),
        ("e2e_s", "E2E"),
        ("queue_s", "queueing"),
    ):
        st = summary.get(key)
        if st:
            head.add_row(label, *(_fmt_ms(st[c]) for c in ("mean", "p50", "p90", "p99")))
    console.print(head)
    slo = summary["slo"]
    facts = Table(show_header=False)
    facts.add_column("what")
    facts.add_column("value", justify="right")
    rows = [
        ("requests finished", f"{summary['finished']:,} / {summary['requests']:,}"),
        ("duration", f"{summary['duration_s']:,.1f} s"),
        ("throughput", f"{summary['throughput_req_per_s']:.2f} req/s"),
        ("output tokens/s", f"{summary['throughput_output_tok_per_s']:,.0f}"),
        (
            f"SLO attainment (TTFT ≤ {slo['ttft_s']:g} s, TPOT ≤ {slo['tpot_s'] * 1e3:g} ms)",
            f"{summary['slo_attainment']:.1%}",
        ),
        ("goodput", f"{summary['goodput_req_per_s']:.2f} req/s"),
        ("mean batch size", f"{summary.get('mean_batch_size', 0):.1f}"),
        ("mean KV-cache use", f"{summary.get('mean_kv_use', 0):.1%}"),
        ("preemptions", f"{summary['preemptions']:,}"),
        (
            "devices / $ per hour",
            f"{summary.get('devices', 0)} / ${summary.get('price_per_hour', 0):.2f}",
        ),
        ("energy per output token", f"{summary.get('joules_per_output_token', 0):.2f} J"),
    ]
    if "sim_wall_s" in summary:
        rows.append(("simulation wall time", f"{summary['sim_wall_s']:.2f} s"))
    for a, b in rows:
        facts.add_row(a, b)
    console.print(facts)


def _parse_chunk(text: str) -> tuple[int, int]:
    parts = str(text).split(":")
    try:
        new = int(parts[0])
        cached = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ServesimError(f"--prefill {text!r} must be NEW or NEW:CACHED token counts.") from None
    if new < 1 or cached < 0 or len(parts) > 2:
        raise ServesimError(f"--prefill {text!r} needs NEW ≥ 1 and CACHED ≥ 0.")
    return new, cached


def cmd_predict(args: argparse.Namespace) -> int:
    """Price one batch and print its per-operator breakdown."""
    from servesim.predictor import BatchShape

    s = _settings(args, PREDICT_DEFAULTS)
    dep = build_deployment(s)
    decode = int(s["decode_seqs"])
    context = int(s["context"])
    if decode < 0 or context < 0:
        raise ServesimError("--decode-seqs and --context must be ≥ 0.")
    chunks = tuple(_parse_chunk(c) for c in (s.get("prefill") or []))
    if not decode and not chunks:
        raise ServesimError("Give a batch: --decode-seqs N and/or --prefill NEW[:CACHED].")
    batch = BatchShape(decode, decode * context, chunks)
    mem = dep.memory()
    pred = dep.predictor()
    cost = pred.iteration(batch, breakdown=True)
    table = Table(title=f"{dep.model.name} on {dep.label()}: one iteration")
    for col, just in (
        ("operator", "left"),
        ("kind", "left"),
        ("calls", "right"),
        ("time (ms)", "right"),
        ("share", "right"),
        ("TFLOP", "right"),
        ("GB moved", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for op in sorted(cost.ops, key=lambda o: -o.seconds):
        table.add_row(
            op.name,
            op.kind,
            str(op.calls),
            f"{op.seconds * 1e3:.3f}",
            f"{op.seconds / cost.seconds:.1%}",
            f"{op.flops / 1e12:.3f}" if op.flops else "",
            f"{op.nbytes / 1e9:.3f}" if op.nbytes else "",
        )
    console.print(table)
    console.print(
        f"iteration: {cost.seconds * 1e3:.3f} ms, {cost.joules:.1f} J; tokens {batch.num_tokens}, "
        f"sequences {batch.num_seqs}"
    )
    m = mem.as_dict()
    console.print(
        f"memory per device: weights {m['weights_gb']:.1f} GB, reserve {m['reserve_gb']:.1f} GB, "
        f"KV {m['kv_gb']:.1f} GB ({mem.kv_tokens:,} tokens per replica) of {m['device_gb']:.0f} GB"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit kernel efficiencies to measurement tables and save them."""
    from servesim.calibrate import calibrate_from_dir

    device = catalog(args.devices).get(args.device)
    tables = Path(args.tables)
    if not tables.is_dir():
        raise ServesimError(f"--tables {args.tables!r} is not a folder of measurement CSVs.")
    fit = calibrate_from_dir(tables, device, Path(args.vidur) if args.vidur else None)
    fit.save(args.out)
    console.print(f"wrote {args.out} ({fit.fitted_on})")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    """List the catalog."""
    cat = catalog(args.devices)
    table = Table(title="devices")
    for col in ("name", "bf16 TFLOP/s", "mem GB", "HBM GB/s", "link GB/s", "W", "$/h", "aliases"):
        table.add_column(col, overflow="fold")
    for name in cat.names():
        d = cat.devices[name]
        try:
            bf16 = f"{d.peak_flops('bf16') / 1e12:,.0f}"
        except ServesimError:
            bf16 = "-"
        table.add_row(
            name,
            bf16,
            f"{d.mem_bytes / 1e9:.0f}",
            f"{d.mem_bw_bytes_per_s / 1e9:,.0f}",
            f"{d.link_bw_bytes_per_s / 1e9:,.0f}",
            f"{d.max_power_w:.0f}",
            f"{d.price_per_hour:.2f}",
            ", ".join(d.aliases),
        )
    console.print(table)
    return 0


def cmd_models(_: argparse.Namespace) -> int:
    """List the bundled model configs and their sizes."""
    from servesim.model import bundled_models, load_model

    table = Table(title="bundled models")
    for col in ("model", "family", "params (B)", "active (B)", "weights", "KV/token (kB)"):
        table.add_column(col, overflow="fold")
    for name in bundled_models():
        try:
            m = load_model(name)
        except ServesimError as exc:
            table.add_row(name, "unsupported", "", "", "", str(exc)[:60])
            continue
        table.add_row(
            name,
            m.model_type,
            f"{m.num_params() / 1e9:.1f}",
            f"{m.num_active_params() / 1e9:.1f}",
            f"{m.weight_dtype}/{m.expert_dtype}",
            f"{m.kv_bytes_per_token() / 1e3:.1f}",
        )
    console.print(table)
    return 0


COMMANDS = {
    "simulate": cmd_simulate,
    "predict": cmd_predict,
    "calibrate": cmd_calibrate,
    "devices": cmd_devices,
    "models": cmd_models,
    "plan": cli_plan.cmd_plan,
    **cli_measure.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn ServesimError into one line and exit code 2."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ServesimError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
