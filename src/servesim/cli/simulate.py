"""`servesim simulate`: serve a workload on one deployment and write its per-request records,
time series and summary.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator
from rich.table import Table

from servesim.cli import cluster_flags
from servesim.cli import settings as config
from servesim.cli.af_flags import AFSettings, add_af_args, apply_af
from servesim.cli.app_flags import AppSettings, add_app_args, run_app
from servesim.cli.cluster_flags import MechanismSettings
from servesim.cli.deployment_flags import DeploymentSettings, add_deployment_args, build_deployment
from servesim.cli.depth_flags import DepthSettings, add_depth_args, apply_depth
from servesim.cli.hybrid_flags import HybridSettings, add_hybrid_args, apply_hybrid
from servesim.cli.moe_flags import MoeSettings, add_moe_args
from servesim.cli.multimodal_flags import (
    MultimodalSettings,
    add_multimodal_args,
    apply_multimodal,
)
from servesim.cli.output import console, print_summary, print_workflows
from servesim.cli.settings import (
    Misuse,
    NonEmpty,
    NonNegFloat,
    PosFloat,
    PosInt,
    WorkloadSettings,
)
from servesim.cli.workload_flags import add_workload_args, build_workload


def _listed(v: Any) -> Any:
    """One flag value or a list of them."""
    return [v] if isinstance(v, str) else v


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
    "speculative",
)


class SimulateSettings(
    DeploymentSettings,
    WorkloadSettings,
    MechanismSettings,
    DepthSettings,
    MoeSettings,
    AppSettings,
    AFSettings,
    MultimodalSettings,
    HybridSettings,
):
    """Everything `servesim simulate` reads."""

    replicas: PosInt = 1
    # The serving loop around the engine's iterations (`predict` prices one iteration alone).
    overlap_scheduling: bool | None = None
    response_us: NonNegFloat | None = None  # None: the engine's serving loop
    stream_interval: PosInt | None = None
    postprocess_workers: PosInt | None = None
    measured: NonEmpty | None = None
    ttft_slo: PosFloat = 2.0
    tpot_slo: PosFloat = 0.1
    router: NonEmpty = "round_robin"
    out: NonEmpty = "servesim-out"
    workflows: NonEmpty | None = None
    num_workflows: PosInt = 200
    workflow_rate: PosFloat | None = None
    workflow_model: Annotated[list[str], BeforeValidator(_listed)] = Field(default_factory=list)

    @field_validator("router")
    @classmethod
    def _router(cls, v: str) -> str:
        from servesim.sim.router import ROUTERS

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
        if self.given("workflows"):
            for key in ("trace", "prompt", "output", "clients", "rate", "num_requests"):
                if self.given(key):
                    raise Misuse(
                        f"{{{key}}} does nothing with {{workflows}}: the workflows' nodes give "
                        f"the requests and {{workflow_rate}} their arrivals; drop {{{key}}}."
                    )
            if self.workflow_rate is None:
                raise Misuse("{workflows} needs {workflow_rate} (workflows per second).")
        else:
            for key in ("num_workflows", "workflow_rate", "workflow_model"):
                if self.given(key):
                    raise Misuse(f"{{{key}}} needs {{workflows}} (a workflow file or example).")
            if self.policy == "deadline":
                raise Misuse(
                    "{policy} deadline orders the calls of workflows by their deadlines; give "
                    "{workflows}, or use another policy."
                )
        if one and self.given("router"):
            raise Misuse(
                "{router} picks among replicas and does nothing with one; add {replicas} 2 or "
                "more, or drop {router}."
            )
        return self


def figure_rows(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(name, value) rows of a figures dict for a terminal table, nested dicts flattened into
    `outer · inner` names (a cache's per-category hit rates), floats to 4 significant digits."""
    rows: list[tuple[str, str]] = []
    for k, v in figures.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += figure_rows(v, f"{name} · ")
        else:
            rows.append((name, f"{v:.4g}" if isinstance(v, float) else str(v)))
    return rows


def add_simulate_parser(sub: Any) -> None:
    """Add `simulate` to servesim's subcommand parsers."""
    sim = sub.add_parser("simulate", help="simulate serving a workload on one deployment")
    add_deployment_args(sim, simulate=True)
    add_workload_args(sim.add_argument_group("workload"))
    s = sim.add_argument_group("SLO and output")
    s.add_argument("--ttft-slo", type=float, help="TTFT target, seconds")
    s.add_argument("--tpot-slo", type=float, help="TPOT target, seconds")
    s.add_argument(
        "--router",
        help="round_robin, least_loaded, least_requests, least_kv, power_of_two, "
        "prefix_affinity or session (with --replicas 2 or more; with --disagg it also picks "
        "the decode worker at hand-off, SGLang's at arrival)",
    )
    s.add_argument("--out", help="output folder for requests.parquet and summary.json")
    s.add_argument(
        "--measured",
        help="a measured-engine JSON (validation/real_engine.py writes one): model, device, "
        "engine and iteration costs from measurements; --model/--device/--engine/--tp are then "
        "taken from it",
    )
    add_depth_args(sim)
    add_moe_args(sim)
    add_af_args(sim)
    add_multimodal_args(sim)
    add_hybrid_args(sim)
    add_app_args(sim)
    wf = sim.add_argument_group("workflows (agent and pipeline applications)")
    wf.add_argument(
        "--workflows",
        help="workflow file (YAML/JSON DAGs of LLM and tool calls) or a bundled example: "
        "text2sql, function_calling; --policy deadline schedules by workflow deadline",
    )
    wf.add_argument("--num-workflows", type=int, help="workflow instances to run (default 200)")
    wf.add_argument("--workflow-rate", type=float, help="workflow arrivals per second (Poisson)")
    wf.add_argument(
        "--workflow-model",
        action="append",
        help="NAME=MODEL[:TP]: the deployment (this device and engine) serving the nodes whose "
        "`model` is NAME; repeat for each",
    )
    cluster_flags.add_args(sim)


def build_measured(s: SimulateSettings) -> Any:
    """A deployment priced from measurements (`--measured FILE`), with the batching flags the
    user gave on top of the engine profile the file holds."""
    from dataclasses import replace

    from servesim.measure.measured_engine import load_measured_engine

    dep = load_measured_engine(str(s.measured))
    over = {
        k: getattr(s, k)
        for k in ("max_num_seqs", "max_num_batched_tokens", "chunked_prefill", "replicas")
        if s.given(k)
    }
    return replace(dep, **over) if over else dep


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run one simulation and report it."""
    from servesim.sim.metrics import Slo, write_parquet, write_summary
    from servesim.sim.simulate import simulate
    from servesim.sim.synthetic import ClosedLoop
    from servesim.sim.workflows import WorkflowWorkload

    s = config.settings(SimulateSettings, args)
    out = config.check_out_dir(s.out, s.spell("out"))
    slo = Slo(s.ttft_slo, s.tpot_slo)
    dep = build_measured(s) if s.measured else apply_depth(build_deployment(s), s)
    dep = apply_hybrid(dep, s)
    dep = apply_af(cluster_flags.apply(dep, s, slo), s)
    flows = _workflow_workload(s, dep) if s.workflows else None
    if flows is not None and (s.workflow_model or any(flows.request_model)):
        named = sorted({m for m in flows.request_model if m})
        if named and not s.workflow_model:
            raise Misuse(
                f"The workflows send calls to model(s) {', '.join(named)}; give each with "
                "{workflow_model} NAME=MODEL[:TP]."
            )
        return _several_models(s, dep, flows, out)
    work = flows if flows is not None else build_workload(s)
    dep, work = apply_multimodal(dep, work, s, s.model)
    app = run_app(s, dep, work, s.router, s.seed) if flows is None else None
    if app is not None:  # a cache or adapters: their own serving path and figures
        import json

        with config.writing(out, s.spell("out")):
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(app, indent=1, default=float))
        ((name, figures),) = app.items()
        table = Table(title=f"servesim: {dep.label()} — {name.replace('_', ' ')}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for k, v in figure_rows(figures):
            table.add_row(k, v)
        console.print(table)
        console.print(f"wrote {out}/summary.json")
        return 0
    closed = work if isinstance(work, ClosedLoop | WorkflowWorkload) else None
    with config.writing(out, s.spell("out")):
        # Per-request rows stream to the Parquet file as requests finish (written in
        # request_id order): memory stays bounded on long traces.
        res = simulate(
            dep,
            None if closed else work,
            closed_loop=closed,
            router=s.router,
            records_path=out / "requests.parquet",
        )
        summary = res.summary(slo)
        if flows is not None:
            summary["workload"] = f"{flows.num_workflows} workflows, {flows.num_requests} calls"
            summary["workflows"] = flows.report(res.columns()["finish_s"])
        elif closed is not None:
            n, w = closed.num_requests, closed.warmup_requests
            shown = f"{n - w} requests after {w} warm-up" if w else f"{n} requests"
            summary["workload"] = f"closed loop, {closed.clients} clients, {shown}"
        else:
            summary["workload"] = getattr(work, "name", "")
        summary["sim_wall_s"] = res.wall_s
        if getattr(dep, "finetune", None) is not None:
            from servesim.sim.coserving import finetune_throughput

            summary["finetune"] = finetune_throughput(res)
        write_parquet(res.series, out / "timeseries.parquet")
        write_summary(summary, out / "summary.json")
    print_summary(summary)
    if flows is not None:
        print_workflows(summary["workflows"])
    if "finetune" in summary:
        ft = summary["finetune"]
        console.print(
            f"co-served fine-tuning: {ft['finetune_tok_per_s']:,.0f} training tokens/s, "
            f"{ft['share_of_alone']:.0%} of the same GPUs training alone"
        )
    console.print(f"wrote {out}/requests.parquet, timeseries.parquet and summary.json")
    return 0


def _workflow_workload(s: SimulateSettings, dep: Any) -> Any:
    """The workflow instances `--workflows` asks for; with `--policy deadline` each call gets
    its latest start, planned with this deployment's prefill and decode speeds."""
    from servesim.sim.workflows import Estimate, WorkflowWorkload, load_workflows

    specs = load_workflows(str(s.workflows))
    scheduling = "deadline" if s.policy == "deadline" else "fcfs"
    estimate = Estimate.for_deployment(dep) if scheduling == "deadline" else Estimate()
    assert s.workflow_rate is not None
    return WorkflowWorkload(specs, s.num_workflows, s.workflow_rate, s.seed, scheduling, estimate)


def _several_models(s: SimulateSettings, dep: Any, flows: Any, out: Any) -> int:
    """Workflows whose nodes name other models: each served on its own deployment (same
    device and engine), releases found by fixed point; the per-workflow figures are written."""
    import json
    from dataclasses import replace

    from servesim.sim.workflows import serve_workflows
    from servesim.spec.model import load_model
    from servesim.spec.parallel import Parallel

    deps = {"": dep}
    for item in s.workflow_model:
        name, sep, rest = item.partition("=")
        model, _, tp = rest.partition(":")
        if not sep or not name or not model or (tp and not tp.isdigit()):
            raise Misuse(f"{{workflow_model}} takes NAME=MODEL[:TP], got {item!r}")
        if name not in flows.request_model:
            named = sorted({m for m in flows.request_model if m})
            raise Misuse(
                f"{{workflow_model}} {name}=... serves no call: no LLM node of the workflows "
                f"names model {name!r} (they name: {', '.join(named) or 'none'}); fix the "
                "name or drop it."
            )
        deps[name] = replace(dep, model=load_model(model), parallel=Parallel(tp=int(tp or 1)))
    res = serve_workflows(deps, flows, router=s.router)
    report = {
        **res["report"],
        "fixed_point_rounds": res["rounds"],
        "fixed_point_shift_s": res["shift_s"],
    }
    with config.writing(out, s.spell("out")):
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps({"workflows": report}, indent=1))
    print_workflows(report)
    console.print(f"wrote {out}/summary.json ({res['rounds']} fixed-point rounds)")
    if res["shift_s"] >= 1e-3:
        console.print(
            f"note: the release times had not settled after {res['rounds']} rounds (the last "
            f"moved calls by up to {res['shift_s']:.3f} s); the figures are approximate"
        )
    return 0
