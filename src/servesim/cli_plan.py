"""`servesim plan`: the best deployments for a model, a workload and SLOs, across GPU types."""

from __future__ import annotations

import argparse
from itertools import pairwise
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from servesim import config
from servesim.errors import ServesimError
from servesim.metrics import Slo
from servesim.planner import PlanSpec, SearchSpace, WorkloadSpec

console = Console()

PLAN_DEFAULTS: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-70B",
    "trace": "azure_conv",
    "num_requests": 1000,
    "prompt": None,
    "output": None,
    "arrival": "poisson",
    "cv": 1.0,
    "seed": 0,
    "rate": 10.0,
    "ttft_slo": 2.0,
    "tpot_slo": 0.1,
    "target": 0.9,
    "gpus": "h100_sxm,a100_sxm,l40s,l4",
    "devices": None,
    "tp": "1,2,4,8",
    "pp": "1",
    "engines": "vllm,sglang",
    "batching": "64:2048,256:8192,1024:16384",
    "weight_dtypes": None,
    "kv_dtypes": "bf16",
    "pd_ratios": "1:1,1:2",
    "fit": None,
    "workers": None,
    "ray": None,
    "out": "plan-out",
    "top": 10,
    "mix": False,
    "prompt_edges": "0,1500,inf",
    "output_edges": "0,250,inf",
    "slice_factor": 4,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `plan` on the main parser's subcommands."""
    p = sub.add_parser("plan", help="search deployments for the best goodput per dollar")
    p.add_argument("--config", help="YAML/JSON file with any of these settings")
    p.add_argument("--model", help="bundled model name/HF id or a config.json path")
    w = p.add_argument_group("workload and SLO")
    w.add_argument("--trace", help="bundled trace name or file (its arrival shape is scaled)")
    w.add_argument("--num-requests", type=int, help="requests per capacity probe")
    w.add_argument("--prompt", help="synthetic prompt lengths instead of a trace")
    w.add_argument("--output", help="synthetic output lengths instead of a trace")
    w.add_argument("--arrival", help="synthetic arrivals: poisson or gamma")
    w.add_argument("--cv", type=float, help="gamma arrivals' coefficient of variation")
    w.add_argument("--seed", type=int)
    w.add_argument("--rate", type=float, help="traffic to size the deployment for, req/s")
    w.add_argument("--ttft-slo", type=float, help="TTFT target, seconds")
    w.add_argument("--tpot-slo", type=float, help="TPOT target, seconds")
    w.add_argument("--target", type=float, help="fraction of requests that must meet both")
    s = p.add_argument_group("search space")
    s.add_argument("--gpus", help="comma-separated device names to consider")
    s.add_argument("--devices", help="extra device catalog YAML")
    s.add_argument("--tp", help="comma-separated TP degrees")
    s.add_argument("--pp", help="comma-separated PP degrees")
    s.add_argument("--engines", help="comma-separated engine profiles/policies")
    s.add_argument("--batching", help="comma-separated MAX_SEQS:TOKEN_BUDGET pairs")
    s.add_argument("--weight-dtypes", help="comma-separated weight formats (default: model's)")
    s.add_argument("--kv-dtypes", help="comma-separated KV-cache formats")
    s.add_argument(
        "--pd-ratios",
        help="disaggregated prefill:decode replica ratios to try, e.g. 1:1,1:2 ('none' to skip)",
    )
    s.add_argument("--fit", help="kernel fit JSON from `servesim calibrate`")
    m = p.add_argument_group("heterogeneous mix (Mélange)")
    m.add_argument(
        "--mix", action="store_true", default=None, help="cheapest mix of the --gpus for --rate"
    )
    m.add_argument("--prompt-edges", help="prompt-token bucket edges, e.g. 0,1500,inf")
    m.add_argument("--output-edges", help="output-token bucket edges, e.g. 0,250,inf")
    m.add_argument("--slice-factor", type=int, help="slices per bucket (Mélange suggests 4)")
    r = p.add_argument_group("execution and output")
    r.add_argument("--workers", type=int, help="local worker processes (default: cores)")
    r.add_argument("--ray", help="run on Ray: an address, or 'local' to start one")
    r.add_argument("--out", help="output folder (results resume from its store)")
    r.add_argument("--top", type=int, help="candidates shown in the table")


def _ints(text: Any, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ServesimError(f"--{what} takes comma-separated integers, got {text!r}.") from None
    if not vals or min(vals) < 1:
        raise ServesimError(f"--{what} needs positive integers, got {text!r}.")
    return vals


def _names(text: Any) -> tuple[str, ...]:
    return tuple(x.strip() for x in str(text).split(",") if x.strip())


def _int_pairs(text: Any, flag: str, form: str) -> tuple[tuple[int, int], ...]:
    """Comma-separated A:B pairs of positive integers (`form` names them for the error)."""
    out = []
    for part in _names(text):
        try:
            a, b = (int(x) for x in part.split(":"))
        except ValueError:
            raise ServesimError(f"--{flag} takes {form}, got {part!r}.") from None
        if a < 1 or b < 1:
            raise ServesimError(f"--{flag} values must be positive, got {part!r}.")
        out.append((a, b))
    return tuple(out)


def _ratios(text: Any) -> tuple[tuple[int, int], ...]:
    if text is None or str(text).strip().lower() in ("", "none", "off"):
        return ()
    return _int_pairs(text, "pd-ratios", "PREFILL:DECODE replica counts like 1:2")


def _batching(text: Any) -> tuple[tuple[int, int], ...]:
    return _int_pairs(text, "batching", "MAX_SEQS:TOKEN_BUDGET pairs like 256:8192")


def build(s: dict[str, Any]) -> tuple[PlanSpec, SearchSpace]:
    """The plan question and search space from merged settings."""

    synthetic = s.get("prompt") is not None or s.get("output") is not None
    work = WorkloadSpec(
        trace=None if synthetic else str(s["trace"]),
        num_requests=int(s["num_requests"]),
        prompt=s.get("prompt"),
        output=s.get("output"),
        arrival=str(s["arrival"]),
        cv=float(s["cv"]),
        seed=int(s["seed"]),
    )
    if work.num_requests < 10:
        raise ServesimError("--num-requests must be at least 10 for a capacity search.")
    target = float(s["target"])
    if not 0 < target <= 1:
        raise ServesimError(f"--target must be a fraction in (0, 1], got {target}.")
    rate = s.get("rate")
    if rate is not None and float(rate) <= 0:
        raise ServesimError(f"--rate must be a positive request rate, got {rate}.")
    spec = PlanSpec(
        model=str(s["model"]),
        workload=work,
        slo=Slo(float(s["ttft_slo"]), float(s["tpot_slo"])),
        target=target,
        rate_per_s=float(rate) if rate is not None else None,
        devices_file=s.get("devices"),
        fit_file=s.get("fit"),
    )
    space = SearchSpace(
        devices=_names(s["gpus"]),
        tp=_ints(s["tp"], "tp"),
        pp=_ints(s["pp"], "pp"),
        engines=_names(s["engines"]),
        batching=_batching(s["batching"]),
        weight_dtypes=_names(s["weight_dtypes"]) if s.get("weight_dtypes") else (),
        kv_dtypes=_names(s["kv_dtypes"]),
        pd_ratios=_ratios(s.get("pd_ratios")),
    )
    return spec, space


def cmd_plan(args: argparse.Namespace) -> int:
    """Run a plan and report it."""
    from servesim.engine import get_engine
    from servesim.export import write_exports
    from servesim.model import load_model
    from servesim.plan import check_space, run_plan
    from servesim.report import write_report

    file_settings = config.load_file(args.config) if args.config else {}
    s = config.merge(vars(args), file_settings, PLAN_DEFAULTS, args.config or "flags")
    spec, space = build(s)
    check_space(space)
    load_model(spec.model)  # an unknown model fails before any work
    for e in space.engines:
        get_engine(e)
    if s.get("mix"):
        return _mix(spec, space, s)
    workers = int(s["workers"]) if s.get("workers") else None
    result = run_plan(spec, space, Path(str(s["out"])), workers=workers, ray_address=s.get("ray"))
    result.files["report"] = write_report(result, result.out_dir / "report.html")
    result.files.update(write_exports(result, result.out_dir))
    print_plan(result, int(s["top"]))
    return 0


def _edges(text: Any, what: str) -> list[float]:
    try:
        edges = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ServesimError(f"--{what} takes comma-separated token counts, got {text!r}.") from None
    if len(edges) < 2 or any(b <= a for a, b in pairwise(edges)):
        raise ServesimError(f"--{what} needs at least two increasing edges, got {text!r}.")
    return edges


def _mix(spec: PlanSpec, space: SearchSpace, s: dict[str, Any]) -> int:
    """The cheapest mix of GPU types for the target rate, checked by simulation."""
    from servesim.melange import plan_mix

    if not spec.rate_per_s:
        raise ServesimError("--mix needs --rate, the request rate to serve.")
    prompt_edges = _edges(s["prompt_edges"], "prompt-edges")
    output_edges = _edges(s["output_edges"], "output-edges")
    mp = plan_mix(
        spec,
        list(space.devices),
        spec.rate_per_s,
        prompt_edges,
        output_edges,
        tp=space.tp,
        slice_factor=int(s["slice_factor"]),
    )
    table = Table(title=f"cheapest mix for {spec.rate_per_s:g} req/s of {spec.model}")
    for col in ("type", "replicas", "devices", "$/h", "simulated attainment"):
        table.add_column(col)
    for t, n in mp.solution.counts.items():
        if n:
            table.add_row(
                t,
                str(n),
                str(mp.devices[t]),
                f"{n * mp.prices[t]:.2f}",
                f"{mp.attainment.get(t, float('nan')):.1%}",
            )
    console.print(table)
    console.print(
        f"mix: ${mp.solution.cost_per_hour:.2f}/h, verified by simulation: "
        f"{'yes' if mp.verified else 'no'}"
    )
    if mp.single_type is not None:
        console.print(
            f"best one-type fleet by the same capacities: ${mp.single_type.cost_per_hour:.2f}/h"
        )
    base = mp.baseline_cost
    if base is not None:
        console.print(f"smallest one-type fleet passing simulation: {base[0]} at ${base[1]:.2f}/h")
        if base[1] < mp.solution.cost_per_hour:
            console.print(
                "[yellow]the one-type fleet is cheaper here: bucket loads do not simply add up "
                "(each bucket must meet the target alone in the mix model)[/yellow]"
            )
    return 0


def print_plan(result: Any, top: int = 10) -> None:
    """Terminal summary: pruning, the top candidates, the winner and the sizing."""
    from servesim.report import terminal_table

    spec = result.spec
    pruned = ", ".join(f"{n} by {rule}" for rule, n in sorted(result.pruned_by_rule.items()))
    console.print(
        f"[bold]{spec.model}[/bold]: TTFT ≤ {spec.slo.ttft_s:g} s and TPOT ≤ "
        f"{spec.slo.tpot_s * 1e3:g} ms for {spec.target:.0%} of requests; "
        f"{result.evaluated} candidates simulated, {result.reused} reused from the store, "
        f"{len(result.pruned)} pruned ({pruned or 'none'}) in {result.wall_s:.1f} s"
    )
    console.print(terminal_table(result, top))
    if result.winner is None:
        miss = result.closest_miss()
        if miss is not None:
            console.print(
                f"[red]No candidate meets the SLO.[/red] Closest: {miss['label']}: "
                f"{miss['reason']}."
            )
        else:
            console.print("[red]No candidate could even be simulated:[/red] every one was pruned.")
            for p in result.pruned[:5]:
                console.print(f"  {p.candidate.label()}: {p.reason}")
        return
    w = result.winner
    console.print(
        f"winner: {w['label']}: {w['capacity_req_per_s']:.2f} req/s per replica "
        f"({w['devices']} devices, ${w['price_per_hour']:.2f}/h)"
    )
    for name, sz in (("fewest GPUs", result.fewest_devices), ("lowest $/h", result.cheapest)):
        if sz is not None:
            console.print(
                f"{name} for {spec.rate_per_s:g} req/s: {sz.replicas} × {sz.candidate.label()} = "
                f"{sz.devices} devices, ${sz.price_per_hour:.2f}/h (simulated attainment "
                f"{sz.attainment:.1%})"
            )
    for name, path in result.files.items():
        console.print(f"wrote {name}: {path}")
