"""Command line: `servesim simulate | predict | plan | calibrate | bench | compare | profile |
fewshot | devices | models`.

Each command reads its settings from flags and, with `--config FILE`, from a YAML/JSON file with
the same names, validated by the command's pydantic model (flags win over the file, the file over
the defaults). Exit status: 0 done; 1 the command ran but has no answer (`plan`: no candidate
meets the SLO; `bench`: every request failed), its outputs still written; 2 bad input, said in
one sentence on stderr, never a traceback, with nothing of the user's overwritten; 130
interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from servesim import cli_measure, cli_plan, config, mechanisms
from servesim.config import (
    Misuse,
    NonEmpty,
    NonNegInt,
    PosFloat,
    PosInt,
    Settings,
    WorkloadSettings,
    add_switch,
)
from servesim.devices import catalog
from servesim.engine import get_engine
from servesim.errors import ServesimError
from servesim.mechanisms import MechanismSettings
from servesim.metrics import ConservationError

# No markup: paths, labels and names come from the user and may hold [brackets].
console = Console(markup=False)


def _parse_chunk(text: str) -> tuple[int, int]:
    """(new, cached) tokens from NEW[:CACHED] (ValueError saying the form if not)."""
    parts = str(text).split(":")
    usage = f"takes NEW or NEW:CACHED token counts with NEW ≥ 1, got {text!r}"
    try:
        new = int(parts[0])
        cached = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(usage) from None
    if new < 1 or cached < 0 or len(parts) > 2:
        raise ValueError(usage)
    return new, cached


def _listed_chunks(v: Any) -> Any:
    """`prefill: 512` or `prefill: "512:1024"` in a file is one chunk."""
    if isinstance(v, int) and not isinstance(v, bool):
        return [str(v)]
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
    return v


class DeploymentSettings(Settings):
    """What one replica is: model, device, parallel layout, engine and batching limits."""

    model: NonEmpty = "meta-llama/Llama-3.1-8B"
    device: NonEmpty = "h100_sxm"
    devices: NonEmpty | None = None
    tp: PosInt = 1
    pp: PosInt = 1
    ep: PosInt = 1
    dp: PosInt = 1
    engine: NonEmpty = "vllm"
    max_num_seqs: PosInt | None = None
    max_num_batched_tokens: PosInt | None = None
    chunked_prefill: bool | None = None
    weight_dtype: NonEmpty | None = None
    kv_dtype: NonEmpty | None = None
    fit: NonEmpty | None = None


MEASURED_KEYS = (
    "model",
    "device",
    "engine",
    "tp",
    "pp",
    "ep",
    "dp",
    "weight_dtype",
    "kv_dtype",
    "fit",
    "overlap_scheduling",
)


class SimulateSettings(DeploymentSettings, WorkloadSettings, MechanismSettings):
    """Everything `servesim simulate` reads."""

    replicas: PosInt = 1
    overlap_scheduling: bool | None = None
    measured: NonEmpty | None = None
    ttft_slo: PosFloat = 2.0
    tpot_slo: PosFloat = 0.1
    router: NonEmpty = "round_robin"
    out: NonEmpty = "servesim-out"

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        from servesim.router import ROUTERS

        if v not in ROUTERS:
            raise ValueError(f"must be one of {', '.join(ROUTERS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _simulate_modes(self) -> SimulateSettings:
        if self.given("measured"):
            for key in MEASURED_KEYS:
                if self.given(key):
                    raise Misuse(
                        f"{{{key}}} is taken from the measured engine ({{measured}}); drop "
                        f"{{{key}}}."
                    )
        if self.disagg and self.given("replicas"):
            raise Misuse(
                "{replicas} does nothing with {disagg}; size the pools with "
                "{prefill_replicas} and {decode_replicas}."
            )
        one = self.replicas == 1 and not self.autoscale and not self.disagg
        if one and self.migration:
            raise Misuse(
                "{migration} moves requests between replicas; add {replicas} 2 or more (or "
                "{autoscale}), or drop {migration}."
            )
        if one and self.given("router"):
            raise Misuse(
                "{router} picks among replicas and does nothing with one; add {replicas} 2 or "
                "more, or drop {router}."
            )
        return self


class PredictSettings(DeploymentSettings):
    """Everything `servesim predict` reads: a deployment and one batch."""

    decode_seqs: NonNegInt = 0
    context: PosInt = 1024
    prefill: Annotated[list[str], BeforeValidator(_listed_chunks)] = Field(default_factory=list)

    @field_validator("prefill")
    @classmethod
    def _chunks(cls, v: list[str]) -> list[str]:
        for c in v:
            _parse_chunk(c)
        return v

    @model_validator(mode="after")
    def _batch(self) -> PredictSettings:
        if not self.decode_seqs and not self.prefill:
            raise Misuse("Give a batch: {decode_seqs} N and/or {prefill} NEW[:CACHED].")
        if self.given("context") and not self.decode_seqs:
            raise Misuse(
                "{context} is the context of decoding sequences; add {decode_seqs} N or drop it."
            )
        return self


class CalibrateSettings(Settings):
    """Everything `servesim calibrate` reads."""

    tables: NonEmpty
    vidur: NonEmpty | None = None
    device: NonEmpty
    devices: NonEmpty | None = None
    out: NonEmpty


# ---- argument definitions ----------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ServesimError sentence (exit 2), like every other
    bad input."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        m = re.match(r"argument (\S+?)(?:/\S+)?: invalid (int|float) value: (.*)", message)
        if m:
            kind = "a whole number" if m.group(2) == "int" else "a number"
            raise ServesimError(f"{m.group(1)} must be {kind}, got {m.group(3)}.")
        raise ServesimError(f"{message[:1].upper()}{message[1:]}; see `{self.prog} --help`.")


def _add_deployment_args(p: argparse.ArgumentParser, simulate: bool) -> None:
    g = p.add_argument_group("deployment")
    g.add_argument("--config", help="YAML/JSON file with any of these settings")
    g.add_argument("--model", help="bundled model name/HF id or a config.json path")
    g.add_argument("--device", help="device name or alias (see `servesim devices`)")
    g.add_argument("--devices", help="extra device catalog YAML")
    g.add_argument("--tp", type=int, help="tensor-parallel degree")
    g.add_argument("--pp", type=int, help="pipeline-parallel degree (at most the model's layers)")
    g.add_argument("--ep", type=int, help="expert-parallel degree (1 = experts split by TP)")
    g.add_argument("--dp", type=int, help="attention data-parallel ranks per replica")
    if simulate:
        g.add_argument("--replicas", type=int, help="identical data-parallel replicas")
    g.add_argument("--engine", help="engine profile: vllm, sglang or trtllm")
    g.add_argument("--max-num-seqs", type=int, help="max sequences per batch")
    g.add_argument("--max-num-batched-tokens", type=int, help="token budget per iteration")
    add_switch(g, "--chunked-prefill", "split long prefills across iterations")
    if simulate:
        add_switch(
            g,
            "--overlap-scheduling",
            "plan the next iteration while one runs (default: the engine's; on for trtllm and "
            "sglang, off for vllm, whose --async-scheduling turns it on)",
        )
    g.add_argument("--weight-dtype", help="bf16, fp8, int4, ... (default: the config's)")
    g.add_argument("--kv-dtype", help="KV cache dtype: bf16, fp16 or fp8")
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
    w.add_argument("--seed", type=int, help="seed for synthetic lengths and arrivals (≥ 0)")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="servesim",
        description="Predict, simulate and plan LLM serving against latency SLOs.",
        epilog="Exit status: 0 done; 1 ran but no answer (plan: nothing meets the SLO; bench: "
        "every request failed); 2 bad input; 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate serving a workload on one deployment")
    _add_deployment_args(sim, simulate=True)
    add_workload_args(sim.add_argument_group("workload"))
    s = sim.add_argument_group("SLO and output")
    s.add_argument("--ttft-slo", type=float, help="TTFT target, seconds")
    s.add_argument("--tpot-slo", type=float, help="TPOT target, seconds")
    s.add_argument(
        "--router",
        help="round_robin, least_loaded, least_requests, least_kv, power_of_two, "
        "prefix_affinity or session (with --replicas 2 or more)",
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
    _add_deployment_args(pred, simulate=False)
    b = pred.add_argument_group("batch (must fit the batching limits and the KV cache)")
    b.add_argument("--decode-seqs", type=int, help="sequences decoding one token each")
    b.add_argument("--context", type=int, help="mean tokens each decode sequence attends to")
    b.add_argument(
        "--prefill",
        action="append",
        help="a prefill chunk NEW[:CACHED] tokens (repeat for several sequences)",
    )

    cal = sub.add_parser("calibrate", help="fit kernel efficiencies to measured tables")
    cal.add_argument("--config", help="YAML/JSON file with any of these settings")
    cal.add_argument("--tables", help="folder of aiconfigurator-format CSVs (required)")
    cal.add_argument("--vidur", help="folder of Vidur profiling CSVs (compute/, network/)")
    cal.add_argument("--device", help="the device the tables were measured on (required)")
    cal.add_argument("--devices", help="extra device catalog YAML")
    cal.add_argument("--out", help="where to write the fit JSON (required)")

    cli_plan.add_parser(sub)
    cli_measure.add_parsers(sub)

    dev = sub.add_parser("devices", help="list the device catalog")
    dev.add_argument("--devices", help="extra device catalog YAML")
    sub.add_parser("models", help="list the bundled model configs")
    return parser


# ---- shared builders ---------------------------------------------------------------------


def build_deployment(s: DeploymentSettings) -> Any:
    """A Deployment from validated settings (the model's own limits checked here)."""
    from servesim.kernels import KernelFit
    from servesim.model import load_model
    from servesim.parallel import Parallel
    from servesim.simulator import Deployment

    device = catalog(s.devices).get(s.device)
    model = load_model(s.model)
    if s.weight_dtype or s.kv_dtype:
        model = model.with_dtypes(weight=s.weight_dtype, kv=s.kv_dtype)
    par = Parallel(tp=s.tp, pp=s.pp, ep=s.ep, dp=s.dp)
    model.check_parallel(par)
    fit = KernelFit.load(s.fit) if s.fit else None
    return Deployment(
        model=model,
        device=device,
        parallel=par,
        engine=get_engine(s.engine).with_overrides(
            overlap_scheduling=getattr(s, "overlap_scheduling", None)
        ),
        replicas=getattr(s, "replicas", 1),
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        chunked_prefill=s.chunked_prefill,
        fit=fit,
    )


def build_measured(s: SimulateSettings) -> Any:
    """A deployment priced from measurements (`--measured FILE`), with the batching flags the
    user gave on top of the engine profile the file holds."""
    from dataclasses import replace

    from servesim.measured_engine import load_measured_engine

    dep = load_measured_engine(str(s.measured))
    over = {
        k: getattr(s, k)
        for k in ("max_num_seqs", "max_num_batched_tokens", "chunked_prefill", "replicas")
        if s.given(k)
    }
    return replace(dep, **over) if over else dep


def build_workload(s: Any) -> Any:
    """The open-loop workload or closed loop that validated workload settings describe."""
    from servesim import synthetic as wl
    from servesim import trace as tracemod

    synthetic = s.prompt is not None or s.output is not None
    base = None
    if s.trace or not synthetic:
        name = s.trace or "azure_conv"
        base = (
            tracemod.read_trace(name)
            if Path(name).exists() or "/" in name or "." in name
            else tracemod.bundled_trace(name)
        )
    if s.clients is not None:
        n = s.num_requests or 10 * s.clients
        prompt = wl.parse_length(s.prompt or "trace", "prompt", base)
        output = wl.parse_length(s.output or "trace", "output", base)
        return wl.ClosedLoop(s.clients, n, prompt, output, s.think_s, s.seed)
    if base is None or (synthetic and not s.trace):
        if s.rate is None:
            raise ServesimError("A synthetic workload needs --rate (requests per second).")
        prompt = wl.parse_length(s.prompt or "fixed:1024", "prompt", base)
        output = wl.parse_length(s.output or "fixed:256", "output", base)
        return wl.synthetic(
            s.num_requests or 1000, s.rate, prompt, output, arrival=s.arrival, cv=s.cv, seed=s.seed
        )
    w = base
    if s.num_requests:
        n = s.num_requests
        w = w.tiled(n) if n > len(w) else w.head(n)
    if s.rate is not None:
        w = w.scaled_to_rate(s.rate)
    return w


# ---- commands ----------------------------------------------------------------------------


def _fmt_ms(x: float) -> str:
    return f"{x * 1e3:,.1f}" if x == x else "-"


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run one simulation and report it."""
    from servesim.metrics import Slo, write_parquet, write_summary
    from servesim.simulator import simulate
    from servesim.synthetic import ClosedLoop

    s = config.settings(SimulateSettings, args)
    out = config.check_out_dir(s.out, s.spell("out"))
    slo = Slo(s.ttft_slo, s.tpot_slo)
    dep = build_measured(s) if s.measured else build_deployment(s)
    dep = mechanisms.apply(dep, s, slo)
    work = build_workload(s)
    closed = work if isinstance(work, ClosedLoop) else None
    res = simulate(dep, None if closed else work, closed_loop=closed, router=s.router)
    summary = res.summary(slo)
    summary["workload"] = (
        f"closed loop, {closed.clients} clients, {closed.num_requests} requests"
        if closed
        else getattr(work, "name", "")
    )
    summary["sim_wall_s"] = res.wall_s
    with config.writing(out, s.spell("out")):
        write_parquet(res.columns(), out / "requests.parquet")
        write_parquet(res.series, out / "timeseries.parquet")
        write_summary(summary, out / "summary.json")
    print_summary(summary)
    console.print(f"wrote {out}/requests.parquet, timeseries.parquet and summary.json")
    return 0


SIMULATED_ONLY = ("queue_s", "mean_batch_size", "mean_kv_use", "preemptions", "devices")


def print_summary(summary: dict[str, Any], simulated: bool = True) -> None:
    """A rich table of a run's summary; a measured run (`simulated=False`) omits the rows
    only a simulation knows (batch size, KV use, preemptions, devices, energy)."""
    head = Table(
        title=Text(f"servesim: {summary.get('deployment', '')} — {summary.get('workload', '')}")
    )
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
        if st and (simulated or key not in SIMULATED_ONLY):
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
    ]
    if simulated:
        rows += [
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


def check_batch(dep: Any, batch: Any, s: PredictSettings) -> None:
    """Refuse a batch the engine would never run: more sequences or tokens than its limits, or
    more context than its KV cache holds (checked before anything is priced or allocated)."""
    seqs, budget, chunked = dep.batching()
    mem = dep.memory()
    context = batch.decode_context + sum(n + c for n, c in batch.prefill)
    if context > mem.kv_tokens:
        raise ServesimError(
            f"The batch needs {context:,} tokens of KV cache but the cache of {dep.model.name} "
            f"on {dep.label()} holds {mem.kv_tokens:,}; give fewer or shorter sequences, or "
            "more devices per replica."
        )
    if batch.num_seqs > seqs:
        raise ServesimError(
            f"The batch has {batch.num_seqs:,} sequences but the engine runs at most {seqs:,} "
            f"({s.spell('max_num_seqs')}); raise {s.spell('max_num_seqs')} or give fewer."
        )
    if chunked and batch.num_tokens > budget:
        raise ServesimError(
            f"The batch has {batch.num_tokens:,} new tokens but the engine schedules at most "
            f"{budget:,} per iteration ({s.spell('max_num_batched_tokens')}); raise it, or "
            "price a smaller chunk."
        )


def cmd_predict(args: argparse.Namespace) -> int:
    """Price one batch and print its per-operator breakdown."""
    from servesim.predictor import BatchShape

    s = config.settings(PredictSettings, args)
    dep = build_deployment(s)
    chunks = tuple(_parse_chunk(c) for c in s.prefill)
    batch = BatchShape(s.decode_seqs, s.decode_seqs * s.context, chunks)
    check_batch(dep, batch, s)
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


def is_fit_file(path: Path) -> bool:
    """Whether `path` holds a kernel fit servesim wrote (so it may be replaced)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False  # a device, a pipe or something far larger than a fit
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and set(doc) == {"fitted_on", "params"}


def save_fit(fit: Any, out: Path, name: str) -> None:
    """Write a fit atomically (a failed write leaves any earlier fit whole)."""
    with config.writing(out, name):
        config.replace_atomically(out, fit.save)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit kernel efficiencies to measurement tables and save them."""
    from servesim.calibrate import calibrate_from_dir

    s = config.settings(CalibrateSettings, args)
    out = config.check_out_file(s.out, s.spell("out"), ours=is_fit_file)
    device = catalog(s.devices).get(s.device)
    tables = Path(s.tables)
    if not tables.is_dir():
        raise ServesimError(
            f"{s.spell('tables')} {s.tables!r} is not a folder of measurement CSVs."
        )
    with config.utf8_tables(s.spell("tables"), s.tables):
        fit = calibrate_from_dir(tables, device, Path(s.vidur) if s.vidur else None)
    save_fit(fit, out, s.spell("out"))
    console.print(f"wrote {out} ({fit.fitted_on})")
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
    """List the bundled model configs servesim can use, then those it cannot and why."""
    from servesim.model import bundled_models, load_model

    table = Table(title="bundled models")
    for col in ("model", "family", "params (B)", "active (B)", "weights", "KV/token (kB)"):
        table.add_column(col, overflow="fold")
    unusable: list[tuple[str, str]] = []
    for name in bundled_models():
        try:
            m = load_model(name)
        except ServesimError as exc:
            unusable.append((name, str(exc)))
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
    if unusable:
        console.print(
            Text.assemble(
                ("not usable", "bold"), " (bundled for reference; servesim refuses them):"
            )
        )
        for name, why in unusable:
            console.print(f"  {name}: {why}", highlight=False, soft_wrap=True)
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn bad input into one line and exit code 2."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        args, extra = _parser().parse_known_args(argv)
        if extra:
            raise ServesimError(
                f"servesim {args.command} does not take {' '.join(extra)}; see `servesim "
                f"{args.command} --help`."
            )
        return COMMANDS[args.command](args)
    except ServesimError as exc:
        err.print(f"[red]error:[/red] {escape(_one_line(str(exc)))}", highlight=False)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        err.print(
            f"[red]error:[/red] {escape(_one_line(exc.strerror or str(exc)))}{escape(where)}; "
            "check the path, "
            "its permissions and the free space.",
            highlight=False,
        )
        return 2
    except MemoryError:
        err.print(
            "[red]error:[/red] this machine ran out of memory for what was asked; ask for less "
            "(fewer requests, a smaller batch or a smaller model).",
            highlight=False,
        )
        return 2
    except ConservationError as exc:
        # A simulator bug, not the user's input: say so, and name the requests (EX_SOFTWARE).
        err.print(
            f"[red]internal error:[/red] {escape(_one_line(str(exc)))}; please report it with "
            "the command that produced it.",
            highlight=False,
        )
        return 70
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
