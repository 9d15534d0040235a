"""`servesim plan`: the best deployments for a model, a workload and SLOs, across GPU types."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator
from rich.console import Console
from rich.table import Table
from rich.text import Text

from servesim.cli import settings as config
from servesim.cli.af_flags import AFPlanSettings, add_af_plan_args, run_af_plan
from servesim.cli.deployment_flags import (
    Acceptance,
    MirrorLink,
    SpecMethod,
    add_latency_model_arg,
    add_tree_and_mirror_args,
)
from servesim.cli.multimodal_flags import EpdPlanSettings, add_multimodal_args, run_epd_plan
from servesim.cli.output import provenance_text
from servesim.cli.settings import (
    Edges,
    Fraction,
    LatencyModel,
    LengthSpec,
    Misuse,
    Names,
    NonEmpty,
    NonNegInt,
    PosFloat,
    PosInt,
    PosInts,
)
from servesim.errors import ServesimError
from servesim.planner.candidates import PlanSpec, SearchSpace, WorkloadSpec
from servesim.sim.metrics import Slo
from servesim.spec.engine_profile import get_engine

# No markup: paths, labels and names come from the user and may hold [brackets].
console = Console(markup=False, emoji=False)


def _pairs(v: Any) -> Any:
    """`64:2048,256:8192`, or a list of "A:B" strings or [A, B] pairs → a tuple of int pairs
    (a ValueError says the form)."""
    if isinstance(v, str):
        if v.strip().lower() in ("", "none", "off"):
            return ()
        v = [x for x in v.split(",") if x.strip()]
    if not isinstance(v, list | tuple):
        return v
    out = []
    for part in v:
        items = part.split(":") if isinstance(part, str) else part
        try:
            a, b = (int(x) for x in items)
        except (TypeError, ValueError):
            raise ValueError(f"takes A:B pairs of whole numbers like 1:2, got {part!r}") from None
        if a < 1 or b < 1:
            raise ValueError(f"takes pairs of positive whole numbers, got {part!r}")
        out.append((a, b))
    return tuple(out)


def _edges(v: Any) -> Any:
    """`0,1500,inf` or a list of numbers → a tuple of increasing bucket edges."""
    items = [x for x in v.split(",") if x.strip()] if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        return v
    try:
        edges = tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise ValueError(f"takes comma-separated token counts like 0,1500,inf, got {v!r}") from None
    if len(edges) < 2 or any(e != e for e in edges) or any(b <= a for a, b in pairwise(edges)):
        raise ValueError(f"needs at least two increasing edges like 0,1500,inf, got {v!r}")
    return edges


Pairs = Annotated[tuple[tuple[int, int], ...], BeforeValidator(_pairs)]
BucketEdges = Annotated[Edges, BeforeValidator(_edges)]
SEARCH_ONLY = (
    "pp",
    "engines",
    "batching",
    "weight_dtypes",
    "kv_dtypes",
    "pd_ratios",
    "fit",
    "workers",
    "ray",
    "out",
    "top",
)


class PlanSettings(AFPlanSettings, EpdPlanSettings):
    """Everything `servesim plan` reads."""

    model: NonEmpty = "meta-llama/Llama-3.1-70B"
    trace: NonEmpty = "azure_conv"
    num_requests: Annotated[int, Field(ge=10)] = 1000
    prompt: LengthSpec | None = None
    output: LengthSpec | None = None
    arrival: Literal["poisson", "gamma"] = "poisson"
    cv: PosFloat = 1.0
    seed: NonNegInt = 0
    rate: PosFloat | None = 10.0
    ttft_slo: PosFloat = 2.0
    tpot_slo: PosFloat = 0.1
    target: Fraction = 0.9
    gpus: Names = ("h100_sxm", "a100_sxm", "l40s", "l4")
    devices: NonEmpty | None = None
    tp: PosInts = (1, 2, 4, 8)
    pp: PosInts = (1,)
    engines: Names = ("vllm", "sglang")
    engine_version: Names = ()  # ENGINE=RELEASE pairs, or one RELEASE with one engine
    sampling: Literal["greedy", "filtered"] = "greedy"
    batching: Pairs = ((64, 2048), (256, 8192), (1024, 16384))
    weight_dtypes: Names = ()
    kv_dtypes: Names = ("bf16",)
    pd_ratios: Pairs = ((1, 1), (1, 2))
    fit: NonEmpty | None = None
    latency_model: LatencyModel | None = None  # None: the predictor's default
    workers: PosInt | None = None
    ray: NonEmpty | None = None
    out: NonEmpty = "plan-out"
    top: PosInt = 10
    mix: bool = False
    prompt_edges: BucketEdges = (0.0, 1500.0, float("inf"))
    output_edges: BucketEdges = (0.0, 250.0, float("inf"))
    slice_factor: PosInt = 4
    speculative: SpecMethod | None = None
    speculative_k: Annotated[tuple[NonNegInt, ...], BeforeValidator(config._int_list)] = (0,)
    acceptance: Acceptance = ()
    draft_model: NonEmpty | None = None
    spec_tree_width: Annotated[tuple[PosInt, ...], BeforeValidator(config._int_list)] = (1,)
    mirror_draft_device: NonEmpty | None = None
    mirror_draft_devices: PosInt = 1
    mirror_link: MirrorLink = "nvlink"
    workflows: NonEmpty | None = None
    workflow_policy: Literal["fcfs", "deadline"] = "deadline"
    skip_prob: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    skip_correlation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @field_validator("gpus", "engines", "kv_dtypes", "tp", "pp", "batching")
    @classmethod
    def _not_empty(cls, v: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
        if not v:
            example = {
                "gpus": "h100_sxm,l40s",
                "engines": "vllm,sglang",
                "kv_dtypes": "bf16,fp8",
                "tp": "1,2,4,8",
                "pp": "1",
                "batching": "256:8192",
            }[str(info.field_name)]
            raise ValueError(f"needs at least one value, e.g. {example}")
        return v

    @model_validator(mode="after")
    def _plan_modes(self) -> PlanSettings:
        config.check_workload_mode(self, closed_loops=False)
        for key in ("prompt_edges", "output_edges", "slice_factor"):
            if self.given(key) and not self.mix:
                raise Misuse(
                    f"{{{key}}} shapes the Mélange mix and does nothing without {{mix}}; add "
                    f"{{mix}} or drop {{{key}}}."
                )
        if self.mix:
            for key in SEARCH_ONLY:
                if self.given(key):
                    raise Misuse(
                        f"{{{key}}} does nothing with {{mix}}, which sizes a mix of the {{gpus}} "
                        f"at {{tp}} for {{rate}}; drop {{{key}}} or {{mix}}."
                    )
            if self.rate is None:
                raise Misuse("{mix} needs {rate}, the request rate to serve.")
        if self.speculative is None:
            for key in ("acceptance", "draft_model", "spec_tree_width", "mirror_draft_device"):
                if self.given(key) and getattr(self, key):
                    raise Misuse(
                        f"{{{key}}} shapes speculative decoding and does nothing without "
                        f"{{speculative}}; add {{speculative}} mtp|eagle|draft or drop {{{key}}}."
                    )
            if any(self.speculative_k):
                raise Misuse(
                    "{speculative_k} above 0 needs {speculative} mtp|eagle|draft, the drafter."
                )
        elif not any(self.speculative_k):
            raise Misuse(
                "{speculative} needs {speculative_k}, the draft tokens per step to try, e.g. "
                "0,1,2,3 (0 is speculation off)."
            )
        if self.mix and self.speculative is not None:
            raise Misuse("{speculative} is not searched by {mix}; drop one.")
        if self.workflows is not None:
            for key in ("trace", "prompt", "output", "rate", "mix"):
                if self.given(key) and getattr(self, key):
                    raise Misuse(
                        f"{{{key}}} does nothing with {{workflows}}, whose nodes give the "
                        f"requests; drop {{{key}}}."
                    )
        elif self.given("workflow_policy"):
            raise Misuse("{workflow_policy} orders workflow calls; add {workflows}.")
        if self.skip_prob is None and self.given("skip_correlation"):
            raise Misuse("{skip_correlation} shapes layer skipping; add {skip_prob}.")
        if self.skip_prob is not None and self.speculative is not None:
            raise Misuse("{skip_prob} and {speculative} are not modelled together; drop one.")
        if self.given("workers") and self.ray and self.ray != "local":
            raise Misuse(
                "{workers} sets the CPUs of a local Ray and does nothing with a Ray cluster at "
                "{ray}; drop {workers}."
            )
        return self


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `plan` on the main parser's subcommands."""
    p = sub.add_parser("plan", help="search deployments for the best goodput per dollar")
    p.add_argument("--config", help="YAML/JSON file with any of these settings")
    p.add_argument("--model", help="bundled model name/HF id or a config.json path")
    w = p.add_argument_group("workload and SLO")
    w.add_argument("--trace", help="bundled trace name or file (its arrival shape is scaled)")
    w.add_argument(
        "--num-requests",
        type=int,
        help="requests per capacity probe (≥ 10; more are drawn when a steady state needs them)",
    )
    w.add_argument("--prompt", help="synthetic prompt lengths instead of a trace")
    w.add_argument("--output", help="synthetic output lengths instead of a trace")
    w.add_argument("--arrival", help="synthetic arrivals: poisson or gamma")
    w.add_argument("--cv", type=float, help="gamma arrivals' coefficient of variation")
    w.add_argument("--seed", type=int, help="seed for synthetic lengths and arrivals (≥ 0)")
    w.add_argument("--rate", type=float, help="traffic to size the deployment for, req/s")
    w.add_argument("--ttft-slo", type=float, help="TTFT target, seconds")
    w.add_argument("--tpot-slo", type=float, help="TPOT target, seconds")
    w.add_argument("--target", type=float, help="fraction of requests that must meet both")
    s = p.add_argument_group("search space")
    s.add_argument("--gpus", help="comma-separated device names to consider")
    s.add_argument("--devices", help="extra device catalog YAML")
    s.add_argument("--tp", help="comma-separated TP degrees")
    s.add_argument("--pp", help="comma-separated PP degrees (at most the model's layers)")
    s.add_argument("--engines", help="comma-separated engine profiles/policies")
    s.add_argument(
        "--engine-version",
        metavar="ENGINE=RELEASE,...",
        help="the release each engine serves (e.g. vllm=0.12.0,sglang=0.5.9; a bare release "
        "with one engine): kernel tables of its collection (default: the newest)",
    )
    s.add_argument(
        "--sampling",
        choices=("greedy", "filtered"),
        help="how requests sample: greedy (the default) or filtered with top-k/top-p, which "
        "vLLM 0.11.1-0.15 does by sorting the vocabulary every step",
    )
    s.add_argument("--batching", help="comma-separated MAX_SEQS:TOKEN_BUDGET pairs")
    s.add_argument("--weight-dtypes", help="comma-separated weight formats (default: model's)")
    s.add_argument("--kv-dtypes", help="comma-separated KV-cache formats")
    s.add_argument(
        "--pd-ratios",
        help="disaggregated prefill:decode replica ratios to try, e.g. 1:1,1:2 ('none' to skip)",
    )
    s.add_argument("--fit", help="kernel fit JSON from `servesim calibrate`")
    add_latency_model_arg(s)
    sp = p.add_argument_group("speculative decoding (searched)")
    sp.add_argument("--speculative", help="drafter: mtp, eagle or draft")
    sp.add_argument(
        "--speculative-k", help="comma-separated draft tokens per step to try, 0 = off (0,1,2,3)"
    )
    sp.add_argument(
        "--acceptance",
        help="conditional acceptance per draft position, one rate or a chain as long as the "
        "largest k (default: the method's sourced rates)",
    )
    sp.add_argument("--draft-model", help="draft model HF id or config.json (--speculative draft)")
    add_tree_and_mirror_args(sp)  # in a plan, --spec-tree-width lists the widths to try
    a = p.add_argument_group("applications and adaptive depth")
    a.add_argument(
        "--workflows",
        help="rank by workflow goodput: a workflow file or bundled example (text2sql, "
        "function_calling); capacity is the workflow rate meeting their end-to-end SLOs",
    )
    a.add_argument("--workflow-policy", help="deadline (default) or fcfs order of workflow calls")
    a.add_argument("--skip-prob", type=float, help="per-request layer skipping (FiRST) to price")
    a.add_argument("--skip-correlation", type=float, help="share of requests skipping alike")
    m = p.add_argument_group("heterogeneous mix (Mélange)")
    m.add_argument(
        "--mix", action="store_true", default=None, help="cheapest mix of the --gpus for --rate"
    )
    m.add_argument("--prompt-edges", help="prompt-token bucket edges, e.g. 0,1500,inf (--mix)")
    m.add_argument("--output-edges", help="output-token bucket edges, e.g. 0,250,inf (--mix)")
    m.add_argument("--slice-factor", type=int, help="slices per bucket (--mix; Mélange: 4)")
    r = p.add_argument_group("execution and output")
    r.add_argument("--workers", type=int, help="local worker processes (default: cores)")
    r.add_argument(
        "--ray", help="run on Ray: a cluster address (host:port), or 'local' to start one"
    )
    r.add_argument("--out", help="output folder (results resume from its store)")
    r.add_argument("--top", type=int, help="candidates shown in the table")
    add_af_plan_args(p)
    add_multimodal_args(p, "plan")


def build(s: PlanSettings) -> tuple[PlanSpec, SearchSpace]:
    """The plan question and search space from validated settings."""
    synthetic = s.prompt is not None or s.output is not None
    work = WorkloadSpec(
        trace=None if synthetic else s.trace,
        num_requests=s.num_requests,
        prompt=s.prompt,
        output=s.output,
        arrival=s.arrival,
        cv=s.cv,
        seed=s.seed,
    )
    spec = PlanSpec(
        model=s.model,
        workload=work,
        slo=Slo(s.ttft_slo, s.tpot_slo),
        target=s.target,
        rate_per_s=None if s.workflows else s.rate,  # fleets are sized in requests only
        devices_file=s.devices,
        fit_file=s.fit,
        speculative=s.speculative,
        acceptance=tuple(s.acceptance),
        draft_model=s.draft_model,
        mirror_device=s.mirror_draft_device,
        mirror_devices=s.mirror_draft_devices,
        mirror_link=s.mirror_link,
        workflows=s.workflows,
        workflow_policy=s.workflow_policy,
        skip_prob=s.skip_prob,
        skip_correlation=s.skip_correlation,
        engine_versions=engine_versions(s),
        sampling=s.sampling,
        **({"latency_model": s.latency_model} if s.latency_model else {}),
    )
    space = SearchSpace(
        devices=s.gpus,
        tp=s.tp,
        pp=s.pp,
        engines=tuple(dict.fromkeys(map(engine_name, s.engines))),
        batching=s.batching,
        weight_dtypes=s.weight_dtypes,
        kv_dtypes=s.kv_dtypes,
        pd_ratios=s.pd_ratios,
        speculative_k=tuple(dict.fromkeys(s.speculative_k)),
        speculative_tree_width=tuple(dict.fromkeys(s.spec_tree_width)),
    )
    return spec, space


def engine_name(name: str) -> str:
    """An engine as the plan's exports and store name it (`SGLang`, `TensorRT-LLM` and the like
    read as `sglang`, `trtllm`); an unknown name stays as given for the check that names it."""
    try:
        return get_engine(name).name
    except ServesimError:
        return name.strip()


def engine_versions(s: PlanSettings) -> tuple[tuple[str, str], ...]:
    """(engine, release) pairs from `--engine-version`: ENGINE=RELEASE items, or one bare
    RELEASE when the plan searches one engine."""
    engines = tuple(dict.fromkeys(map(engine_name, s.engines)))
    out: dict[str, str] = {}
    for item in s.engine_version:
        name, sep, release = item.partition("=")
        if not sep:
            if len(engines) != 1:
                raise Misuse(
                    f"{{engine_version}} {item!r} names no engine and the plan searches "
                    f"{len(engines)}; write it as ENGINE=RELEASE, e.g. "
                    f"{engines[0]}={item}."
                )
            name, release = engines[0], item
        name, release = engine_name(name), release.strip()
        if name not in engines:
            raise Misuse(
                f"{{engine_version}} names {name!r}, which {{engines}} does not search "
                f"({', '.join(engines)}); add it or drop its release."
            )
        out[name] = release
    return tuple(out.items())


def check_inputs(s: PlanSettings, spec: PlanSpec, space: SearchSpace) -> None:
    """Everything a plan needs, checked before any search: the model, devices, engines,
    formats, the kernel fit, the workload and the output folder."""
    from servesim.planner.candidates import fit_for, speculative_for
    from servesim.spec.devices import catalog
    from servesim.spec.dtypes import KV_DTYPES, canonical
    from servesim.spec.model import load_model

    model = load_model(spec.model)
    if spec.workflows is not None:
        from servesim.sim.workflows import load_workflows

        named = sorted(
            {n.model for w in load_workflows(spec.workflows) for n in w.nodes if n.model}
        )
        if named:
            raise Misuse(
                f"plan sizes one deployment for the workflows, whose calls also go to "
                f"{', '.join(named)}; plan each model's share separately or drop their `model`."
            )
    cat = catalog(spec.devices_file)
    for d in space.devices:
        cat.get(d)
    for e in space.engines:
        spec.engine(e)  # the profile exists, and a stated release reads as one
    for w in space.weight_dtypes:
        canonical(w)
    for kv in space.kv_dtypes:
        if canonical(kv) not in KV_DTYPES:
            raise ServesimError(
                f"{s.spell('kv_dtypes')} has {kv!r}; KV caches are {', '.join(KV_DTYPES)}."
            )
    too_deep = [pp for pp in space.pp if pp > model.num_layers]
    if too_deep:
        raise ServesimError(
            f"{s.spell('pp')} {too_deep[0]} exceeds {model.name}'s {model.num_layers} layers; "
            f"use pipeline degrees of at most {model.num_layers}."
        )
    if spec.fit_file:
        fit_for(spec.fit_file)
    for k, w in space.speculation_axes():  # the drafter fits the model at every k searched
        sd = speculative_for(spec, k, w)
        if sd is not None:
            sd.check_target(model)
    if spec.workload.trace is None:
        from servesim.sim.synthetic import parse_length

        parse_length(spec.workload.prompt or "fixed:1024", "prompt")
        parse_length(spec.workload.output or "fixed:256", "output")
    spec.workload.build()
    if not s.mix:
        config.check_out_dir(s.out, s.spell("out"))
    if s.ray and s.ray != "local":
        from servesim.planner.runner import check_ray_address

        check_ray_address(s.ray)


def cmd_plan(args: argparse.Namespace) -> int:
    """Run a plan and report it; exit 1 (outputs still written) when nothing meets the SLO."""
    from servesim.planner.plan import run_plan
    from servesim.report.export import write_exports
    from servesim.report.page import write_report

    s = config.settings(PlanSettings, args)
    spec, space = build(s)
    if s.af_disagg:  # the attention/expert split of one replica, priced per decode iteration
        return run_af_plan(s, s.top, spec.engine(space.engines[0]), spec.latency_model)
    check_inputs(s, spec, space)
    if s.epd_gpus is not None or s.images_per_request:
        return run_epd_plan(s, spec, space)
    for key in ("image_size", "video_frames", "encode_link", "split_images"):
        if s.given(key):  # the image flags price an encode-split search and nothing else
            raise Misuse(f"{{{key}}} describes images; add {{images_per_request}}.")
    if s.mix:
        return _mix(spec, space, s)
    out = Path(s.out)
    with config.writing(out, s.spell("out")):
        result = run_plan(spec, space, out, workers=s.workers, ray_address=s.ray)
        result.files["report"] = write_report(result, result.out_dir / "report.html")
        result.files.update(write_exports(result, result.out_dir))
    print_plan(result, s.top)
    if result.winner is None:
        why = (
            "no candidate meets the SLO"
            if result.closest_miss() is not None
            else "every candidate was pruned before simulation"
        )
        Console(stderr=True, emoji=False).print(
            f"{why} (exit status 1); the report and plan.parquet say how close each came.",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    return 0


def _mix(spec: PlanSpec, space: SearchSpace, s: PlanSettings) -> int:
    """The cheapest mix of GPU types for the target rate, checked by simulation."""
    from servesim.planner.melange import plan_mix

    assert spec.rate_per_s is not None  # PlanSettings refuses --mix without --rate
    mp = plan_mix(
        spec,
        list(space.devices),
        spec.rate_per_s,
        list(s.prompt_edges),
        list(s.output_edges),
        tp=space.tp,
        slice_factor=s.slice_factor,
        # the buckets' capacity runs: the requests asked for, else the mix's own default
        **({"num_requests": spec.workload.num_requests} if s.given("num_requests") else {}),
    )
    table = Table(title=Text(f"cheapest mix for {spec.rate_per_s:g} req/s of {spec.model}"))
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
                "the one-type fleet is cheaper here: bucket loads do not simply add up "
                "(each bucket must meet the target alone in the mix model)",
                style="yellow",
            )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def print_plan(result: Any, top: int = 10) -> None:
    """Terminal summary: pruning, the top candidates, the winner and the sizing."""
    from servesim.planner.capacity import target_text
    from servesim.report.page import is_workflow_plan, terminal_table

    spec = result.spec
    pruned = ", ".join(f"{n} by {rule}" for rule, n in sorted(result.pruned_by_rule.items()))
    goal = (
        f"each workflow's end-to-end SLO ({spec.workflows}) for {target_text(spec.target)} of "
        "workflows"
        if is_workflow_plan(result)
        else f"TTFT ≤ {spec.slo.ttft_s:g} s and TPOT ≤ {spec.slo.tpot_s * 1e3:g} ms for "
        f"{target_text(spec.target)} of requests"
    )
    console.print(
        Text.assemble(
            (spec.model, "bold"),
            f": {goal}; {result.evaluated} candidates simulated, "
            f"{result.reused} reused from the store, {len(result.pruned)} pruned "
            f"({pruned or 'none'}) in {result.wall_s:.1f} s",
        )
    )
    for note in getattr(result, "notes", []):
        console.print(Text.assemble(("note: ", "yellow"), note))
    console.print(terminal_table(result, top))
    if result.winner is None:
        miss = result.closest_miss()
        if miss is not None:
            console.print(
                Text.assemble(
                    ("No candidate meets the SLO.", "red"),
                    f" Closest: {miss['label']}: {miss['reason']}.",
                )
            )
        else:
            console.print(
                Text.assemble(
                    ("No candidate could even be simulated:", "red"), " every one was pruned."
                )
            )
            for p in result.pruned[:5]:
                console.print(f"  {p.candidate.label()}: {p.reason}")
        return
    w = result.winner
    console.print(
        f"winner: {w['label']}: {w['capacity_req_per_s']:.2f} "
        f"{w.get('capacity_unit') or 'req/s'} per replica "
        f"({_count(w['devices'], 'device')}, ${w['price_per_hour']:.2f}/h)"
    )
    counts: Counter[str] = Counter()
    for r in result.rows:
        counts.update(json.loads(r.get("latency_provenance") or "{}"))
    if counts:
        console.print(
            f"kernel times ({spec.latency_model} model, over every evaluated candidate): "
            + provenance_text(dict(counts))
        )
    for name, sz in (("fewest GPUs", result.fewest_devices), ("lowest $/h", result.cheapest)):
        if sz is not None:
            console.print(
                f"{name} for {spec.rate_per_s:g} req/s: {sz.replicas} × {sz.candidate.label()} = "
                f"{_count(sz.devices, 'device')}, ${sz.price_per_hour:.2f}/h (simulated attainment "
                f"{sz.attainment:.1%})"
            )
    for name, path in result.files.items():
        console.print(f"wrote {name}: {path}")
