"""Attention–FFN disaggregation flags: `predict` and `simulate` run an AF replica (attention and
routed experts on separate GPU pools, MegaScale-Infer), `plan --af-disagg` searches the split."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from pydantic import model_validator
from rich.table import Table

from servesim.cli.output import console
from servesim.cli.settings import Misuse, NonEmpty, PosInt, PosInts, Settings, add_switch


class AFSettings(Settings):
    """AF settings of `predict` and `simulate` (file keys as the flags, with underscores)."""

    af_attention_gpus: PosInt | None = None
    af_expert_gpus: PosInt | None = None
    af_microbatches: PosInt = 2
    af_expert_device: NonEmpty | None = None
    af_link: NonEmpty | None = None


AF_PLAN_KEYS = (
    "af_max_gpus",
    "af_batch",
    "af_context",
    "af_microbatches_search",
    "af_expert_device",
    "af_link",
)
# `plan` settings the split search does not read.
PLAN_ONLY = (
    "trace",
    "num_requests",
    "prompt",
    "output",
    "arrival",
    "cv",
    "rate",
    "ttft_slo",
    "target",
    "pp",
    "batching",
    "weight_dtypes",
    "kv_dtypes",
    "pd_ratios",
    "workers",
    "ray",
    "out",
    "mix",
    "speculative",
    "workflows",
    "skip_prob",
    "fit",  # the split search prices kernels by --latency-model, without a fit file
)


class AFPlanSettings(Settings):
    """`plan --af-disagg` settings: the split search over a steady decode load."""

    af_disagg: bool = False
    af_max_gpus: PosInt = 32
    af_batch: PosInts = ()  # empty: each layout's capacity under the TPOT target
    af_context: PosInt = 2048
    af_microbatches_search: PosInts = (1, 2, 3, 4)
    af_expert_device: NonEmpty | None = None
    af_link: NonEmpty | None = None

    @model_validator(mode="after")
    def _af_only(self) -> AFPlanSettings:
        if not self.af_disagg:
            for key in AF_PLAN_KEYS:
                if self.given(key):
                    raise Misuse(f"{{{key}}} shapes the split search; add {{af_disagg}}.")
            return self
        for key in ("gpus", "engines"):
            if self.given(key) and len(getattr(self, key)) > 1:
                raise Misuse(
                    f"{{af_disagg}} prices one attention device and engine; give one {{{key}}} "
                    "({af_expert_device} sets the experts' device)."
                )
        for key in PLAN_ONLY:
            if self.given(key):
                raise Misuse(
                    f"{{{key}}} does nothing with {{af_disagg}}, which prices steady decode "
                    f"batches ({{af_batch}} at {{af_context}}) on the first of {{gpus}} and "
                    f"{{engines}}; drop {{{key}}}."
                )
        return self


def add_af_args(p: argparse.ArgumentParser) -> None:
    """Add the AF replica flags to `predict` or `simulate`."""
    g = p.add_argument_group(
        "attention–FFN disaggregation (MoE; with --disagg, the decode pool's replicas)"
    )
    g.add_argument(
        "--af-attention-gpus",
        type=int,
        help="GPUs of the attention pool (--tp each, data-parallel over the rest)",
    )
    g.add_argument("--af-expert-gpus", type=int, help="GPUs of the expert pool (one EP rank each)")
    g.add_argument(
        "--af-microbatches", type=int, help="ping-pong micro-batches per iteration (default 2)"
    )
    g.add_argument("--af-expert-device", help="device of the expert pool (default: --device)")
    g.add_argument(
        "--af-link",
        help="link between the pools from the links table (default: the GPUs' NICs)",
    )


def add_af_plan_args(p: argparse.ArgumentParser) -> None:
    """Add the AF split search flags to `plan`."""
    g = p.add_argument_group("attention–FFN split search (--af-disagg)")
    add_switch(g, "--af-disagg", "search attention/expert pool sizes instead of simulating")
    g.add_argument("--af-max-gpus", type=int, help="GPUs per replica at most (default 32)")
    g.add_argument(
        "--af-batch",
        help="decode batch sizes to price, e.g. 16,256,1024 (default: each layout's largest "
        "batch within the KV cache and --tpot-slo)",
    )
    g.add_argument("--af-context", type=int, help="mean context per sequence (default 2048)")
    g.add_argument("--af-microbatches-search", help="micro-batch counts to try (default 1,2,3,4)")
    g.add_argument("--af-expert-device", help="device of the expert pool (default: first --gpus)")
    g.add_argument("--af-link", help="link between the pools (default: the GPUs' NICs)")


def _af(s: AFSettings, devices: Any) -> Any:
    """The AFDisagg the settings give."""
    from servesim.predictor.af_disagg import AFDisagg
    from servesim.spec.links import get_link

    edev = devices.get(s.af_expert_device) if s.af_expert_device else None
    link = get_link(s.af_link) if s.af_link else None
    assert s.af_expert_gpus is not None
    return AFDisagg(s.af_expert_gpus, s.af_microbatches, edev, link)


def apply_af(dep: Any, s: AFSettings) -> Any:
    """The deployment with an AF replica layout (a DisaggDeployment: its decode pool)."""
    from servesim.spec.devices import catalog
    from servesim.spec.parallel import Parallel

    given = [k for k in ("af_attention_gpus", "af_expert_gpus") if s.given(k)]
    if not given:
        for key in ("af_microbatches", "af_expert_device", "af_link"):
            if s.given(key):
                raise Misuse(
                    f"{{{key}}} shapes an AF replica; add {{af_attention_gpus}} N and "
                    "{af_expert_gpus} M."
                )
        return dep
    if len(given) == 1:
        raise Misuse("AF disaggregation needs both {af_attention_gpus} and {af_expert_gpus}.")
    from servesim.sim.deployment import Deployment

    af = _af(s, catalog(getattr(s, "devices", None)))
    target = getattr(dep, "decode", dep)  # a DisaggDeployment's decode pool
    if not isinstance(target, Deployment):
        raise Misuse(
            "AF disaggregation is modelled on colocated replicas and on the decode pool of "
            "{disagg}, not with semi-PD lanes; drop one."
        )
    if target.parallel.pp > 1 or target.parallel.ep > 1 or target.parallel.dp > 1:
        raise Misuse(
            "Under AF disaggregation {af_attention_gpus} sets the attention pool (with {tp}) "
            "and {af_expert_gpus} the experts; drop {pp}, {ep} and {dp}."
        )
    tp = target.parallel.tp
    n = s.af_attention_gpus
    assert n is not None
    if n % tp:
        raise Misuse(f"{{af_attention_gpus}} {n} must be a multiple of the attention TP {tp}.")
    par = Parallel(tp=tp, dp=n // tp)
    new = replace(target, parallel=par, af=af)
    new.predictor()  # refuses impossible layouts (no experts, uneven split) now
    return replace(dep, decode=new) if target is not dep else new


def print_breakdown(pred: Any, batch: Any) -> dict[str, Any] | None:
    """Print an AF iteration's per-stage breakdown (None when the predictor is not AF)."""
    if not hasattr(pred, "breakdown") or not hasattr(pred, "af"):
        return None
    b = pred.breakdown(batch.decode_seqs, batch.decode_context, batch.prefill)
    info = breakdown_dict(pred, b)
    table = Table(title="attention–FFN disaggregated iteration (per MoE layer, per micro-batch)")
    table.add_column("stage")
    table.add_column("time (µs)", justify="right")
    table.add_column("where")
    table.add_row("attention T_a", f"{b.attention_s * 1e6:.1f}", info["attention_pool"])
    table.add_row("experts T_e", f"{b.expert_s * 1e6:.1f}", info["expert_pool"])
    mb = b.transfer_bytes / 1e6
    table.add_row("dispatch T_c", f"{b.transfer_s * 1e6:.1f}", f"{mb:.2f} MB, {info['link']}")
    table.add_row("combine T_c", f"{b.transfer_s * 1e6:.1f}", f"{mb:.2f} MB back")
    table.add_row("layer period P", f"{b.period_s * 1e6:.1f}", f"bottleneck: {b.bottleneck}")
    console.print(table)
    console.print(
        f"AF iteration: {b.seconds * 1e3:.3f} ms = {b.layers} MoE layers × {b.microbatches} "
        f"micro-batches pipelined + {b.overhead_s * 1e3:.3f} ms engine overhead (no overlap: "
        f"{b.sequential_s * 1e3:.3f} ms); {info['gpus']} GPUs, "
        f"{info['tokens_per_s_per_gpu']:.1f} tokens/s per GPU"
    )
    return info


def breakdown_dict(pred: Any, b: Any) -> dict[str, Any]:
    """The breakdown as JSON-ready numbers."""
    link = pred.link()
    tokens = b.microbatch_tokens * b.microbatches
    return {
        "attention_pool": f"{pred.attention_gpus}x {pred.device.name} {pred.par.label()}",
        "expert_pool": f"{pred.af.expert_gpus}x {pred.expert_device.name} ep{pred.af.expert_gpus}",
        "link": f"{link.name} {link.bw_bytes_per_s / 1e9:.0f} GB/s",
        "gpus": pred.num_gpus,
        "microbatches": b.microbatches,
        "moe_layers": b.layers,
        "attention_s": b.attention_s,
        "expert_s": b.expert_s,
        "transfer_s": b.transfer_s,
        "transfer_bytes": b.transfer_bytes,
        "period_s": b.period_s,
        "overhead_s": b.overhead_s,
        "seconds": b.seconds,
        "sequential_seconds": b.sequential_s,
        "bottleneck": b.bottleneck,
        "tokens_per_s_per_gpu": tokens / b.seconds / pred.num_gpus if b.seconds else 0.0,
    }


def run_af_plan(s: Any, top: int = 10, engine: Any = None, latency_model: str = "") -> int:
    """`plan --af-disagg`: the best attention/expert splits per batch size against the best
    colocated layout of the same GPUs; exit 1 when no split meets the TPOT target.

    `engine` is the plan's engine profile (its stated release and sampling; default: the first
    of `s.engines` as is) and `latency_model` the plan's (default: the predictor's), so the
    split search prices kernels as the rest of the plan would."""
    from servesim.planner.af_split import af_splits, colocated
    from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL
    from servesim.spec.devices import catalog
    from servesim.spec.engine_profile import get_engine
    from servesim.spec.links import get_link
    from servesim.spec.model import load_model

    devices = catalog(s.devices)
    device = devices.get(s.gpus[0])
    edev = devices.get(s.af_expert_device) if s.af_expert_device else None
    link = get_link(s.af_link) if s.af_link else None
    model = load_model(s.model)
    engine = engine or get_engine(s.engines[0])
    latency_model = latency_model or DEFAULT_LATENCY_MODEL
    found = False
    for batch in s.af_batch or (None,):
        rows = af_splits(
            model,
            device,
            engine,
            s.af_context,
            s.af_max_gpus,
            batch,
            s.tpot_slo,
            tuple(s.tp),
            tuple(s.af_microbatches_search),
            edev,
            link,
            latency_model,
        )
        base = colocated(
            model,
            device,
            engine,
            s.af_context,
            s.af_max_gpus,
            batch,
            s.tpot_slo,
            tuple(s.tp),
            latency_model,
        )
        what = f"decode batch {batch}" if batch else "decode capacity"
        table = Table(
            title=f"{model.name} on {device.name} ({engine.name}): {what} at {s.af_context} "
            "tokens context, "
            f"TPOT ≤ {s.tpot_slo * 1e3:g} ms, ≤ {s.af_max_gpus} GPUs"
        )
        cols = (
            "layout",
            "GPUs",
            "m",
            "batch",
            "iteration ms",
            "tok/s/GPU",
            "tok/s per $/h",
            "bound",
        )
        for col in cols:
            table.add_column(col, justify="left" if col in ("layout", "bound") else "right")
        # The best colocated layout, and the best of each kind: wide EP (attention DP, one EP
        # rank per GPU) and attention in tensor parallel.
        kinds = [
            base,
            [r for r in base if r.ep == r.gpus and r.tp == 1],
            [r for r in base if r.tp > 1],
        ]
        shown = list(dict.fromkeys(k[0] for k in kinds if k))
        for r in rows[:top] + shown:
            table.add_row(
                r.label + ("" if r.expert_gpus else " (colocated)"),
                str(r.gpus),
                str(r.microbatches),
                str(r.batch),
                f"{r.iteration_s * 1e3:.2f}",
                f"{r.tokens_per_s_per_gpu:.1f}",
                f"{r.tokens_per_dollar_hour:.1f}",
                r.bottleneck,
            )
        console.print(table)
        if rows and base:
            gain = rows[0].tokens_per_dollar_hour / base[0].tokens_per_dollar_hour
            console.print(
                f"best AF split {rows[0].label}: {gain:.2f}× the tokens per dollar of the best "
                f"colocated layout {base[0].label}"
            )
        if not rows:
            console.print(
                f"no AF split of ≤ {s.af_max_gpus} GPUs holds {batch or 'a batch of'} "
                f"sequences of {s.af_context} tokens within TPOT {s.tpot_slo * 1e3:g} ms"
            )
        found = found or bool(rows)
    return 0 if found else 1
