"""`servesim predict`: one iteration's time with a per-operator breakdown and the memory layout,
for a batch that must fit the batching limits and the KV cache.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator
from rich.table import Table

from servesim.cli import settings as config
from servesim.cli.af_flags import AFSettings, add_af_args, apply_af, breakdown_dict, print_breakdown
from servesim.cli.deployment_flags import (
    DeploymentSettings,
    add_deployment_args,
    build_deployment,
    listed_chunks,
    parse_chunk,
)
from servesim.cli.depth_flags import DepthSettings, add_depth_args, apply_depth
from servesim.cli.hybrid_flags import HybridSettings, add_hybrid_args, apply_hybrid
from servesim.cli.moe_flags import MoeSettings, add_moe_args, apply_moe
from servesim.cli.multimodal_flags import ImageSizeSettings, add_multimodal_args, encoder_line
from servesim.cli.output import console
from servesim.cli.settings import (
    Misuse,
    NonNegInt,
    PosInt,
)
from servesim.errors import ServesimError
from servesim.predictor import twin_efficiency


class PredictSettings(
    DeploymentSettings, DepthSettings, MoeSettings, AFSettings, ImageSizeSettings, HybridSettings
):
    """Everything `servesim predict` reads: a deployment and one batch."""

    decode_seqs: NonNegInt = 0
    json_output: bool = False
    context: PosInt = 1024
    prefill: Annotated[list[str], BeforeValidator(listed_chunks)] = Field(default_factory=list)

    @field_validator("prefill")
    @classmethod
    def _chunks(cls, v: list[str]) -> list[str]:
        for c in v:
            parse_chunk(c)
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


def add_predict_parser(sub: Any) -> None:
    """Add `predict` to servesim's subcommand parsers."""
    pred = sub.add_parser("predict", help="time one batch, with a per-operator breakdown")
    add_deployment_args(pred, simulate=False)
    b = pred.add_argument_group("batch (must fit the batching limits and the KV cache)")
    b.add_argument("--decode-seqs", type=int, help="sequences decoding one token each")
    b.add_argument("--context", type=int, help="mean tokens each decode sequence attends to")
    b.add_argument(
        "--prefill",
        action="append",
        help="a prefill chunk NEW[:CACHED] tokens (repeat for several sequences)",
    )
    add_depth_args(pred)
    add_moe_args(pred)
    add_af_args(pred)
    add_multimodal_args(pred, "predict")
    add_hybrid_args(pred)
    pred.add_argument(
        "--json",
        dest="json_output",
        action="store_true",
        default=None,
        help="print the breakdown as one JSON object (operators, totals, memory)",
    )


def cmd_predict(args: argparse.Namespace) -> int:
    """Price one batch and print its per-operator breakdown."""
    from servesim.predictor.iteration import BatchShape

    s = config.settings(PredictSettings, args)
    dep = apply_hybrid(apply_af(apply_moe(apply_depth(build_deployment(s), s), s), s), s)
    chunks = tuple(parse_chunk(c) for c in s.prefill)
    batch = BatchShape(s.decode_seqs, s.decode_seqs * s.context, chunks)
    dep.check_batch(batch, s.spell, require_fit=False)
    # An iteration's time is defined whether or not the deployment fits its devices: price it
    # and say plainly that it does not fit (simulate and plan refuse such a deployment).
    try:
        mem, misfit = dep.memory(), ""
    except ServesimError as exc:
        mem, misfit = None, str(exc)
    pred = dep.predictor()
    cost = pred.iteration(batch, breakdown=True)
    skipping = _skipping(pred, batch, cost)
    if skipping:  # the table is the full-depth iteration its operators add up to
        cost = replace(cost, seconds=skipping["full_depth_seconds"])
    overlap = None
    if hasattr(pred, "sequential_s"):  # NanoFlow: the table is the sequential iteration
        seq = pred.sequential_s(batch.decode_seqs, batch.decode_context, batch.prefill)
        overlap = {"seconds": cost.seconds, "sequential_seconds": seq}
        cost = replace(cost, seconds=seq)
    if s.json_output:
        out = _as_json(dep, batch, cost, mem, misfit)
        out["twin_gpus"] = dict(_twins(pred))
        if skipping:
            out["layer_skipping"] = skipping
        if overlap:
            out["nanoflow"] = overlap
        if dep.af is not None:
            out["af_disagg"] = breakdown_dict(
                pred, pred.breakdown(batch.decode_seqs, batch.decode_context, batch.prefill)
            )
        print(json.dumps(out))  # one line, never wrapped
        return 0
    table = Table(title=f"{dep.model.name} on {dep.label()}: one iteration")
    # Names and numbers in full; on a terminal too narrow for every column the operator kind
    # (in --json) is left out rather than squeezed to nothing.
    show_kind = console.width >= 100
    cols = [("operator", "left"), ("kind", "left")] if show_kind else [("operator", "left")]
    cols += [
        ("calls", "right"),
        ("time (ms)", "right"),
        ("share", "right"),
        ("TFLOP", "right"),
        ("GB moved", "right"),
        ("provenance", "left"),
    ]
    for col, just in cols:
        table.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    for op in sorted(cost.ops, key=lambda o: -o.seconds):
        table.add_row(
            op.name,
            *([op.kind] if show_kind else []),
            str(op.calls),
            f"{op.seconds * 1e3:.3f}",
            f"{op.seconds / cost.seconds:.1%}",
            f"{op.flops / 1e12:.3f}" if op.flops else "",
            f"{op.nbytes / 1e9:.3f}" if op.nbytes else "",
            op.provenance,
        )
    console.print(table)
    console.print(
        f"iteration: {cost.seconds * 1e3:.3f} ms, {cost.joules:.1f} J; tokens {batch.num_tokens}, "
        f"sequences {batch.num_seqs}; latency model {pred.latency_model}, kernel time "
        + ", ".join(f"{k} {v:.0%}" for k, v in _time_by_provenance(cost).items() if v)
    )
    twins = _twins(pred)
    if twins:
        console.print(
            f"{pred.device.name} has no measured tables: its roofline takes the measured "
            "efficiencies of GPUs with its compute, "
            + ", ".join(f"{g} (affinity {a:.2f})" for g, a in twins)
        )
    if skipping:
        console.print(
            f"with layer skipping (each layer skipped with p={skipping['skip_prob']:g}, "
            f"correlation {skipping['correlation']:g}, {skipping['phase']}): expected "
            f"{skipping['seconds'] * 1e3:.3f} ms against {cost.seconds * 1e3:.3f} ms without "
            f"({skipping['saving']:.1%} saved); the table above is the full-depth iteration"
        )
    if overlap:
        console.print(
            f"with NanoFlow overlap: {overlap['seconds'] * 1e3:.3f} ms against "
            f"{overlap['sequential_seconds'] * 1e3:.3f} ms sequential (the table above)"
        )
    print_breakdown(pred, batch)  # AF disaggregation's stages (nothing otherwise)
    spec = _speculative(dep, pred, batch, cost)
    if spec:
        console.print(
            f"speculative {spec['label']}: draft {spec['draft_s'] * 1e3:.3f} ms "
            f"{'∥' if spec['mirror'] else '+'} verify {spec['verify_s'] * 1e3:.3f} ms "
            f"({spec['verify_tokens']} tokens per decode sequence); "
            f"{spec['tokens_per_step']:.3f} tokens per step expected (acceptance "
            f"{','.join(f'{a:g}' for a in spec['acceptance'])}), "
            f"{spec['seconds_per_token'] * 1e3:.3f} ms per output token"
        )
    vision = _vision_line(dep, s, getattr(pred, "kernels", None))
    if vision:
        console.print(vision)
    if mem is None:
        console.print(f"does not fit: {misfit}")
        return 0
    m = mem.as_dict()
    rt = dep.runtime()
    kv_elsewhere = rt.attention_device if rt is not None else None
    if kv_elsewhere is not None:  # attention offload: the KV cache lives on the other device
        console.print(
            f"memory: weights {m['weights_gb']:.1f} GB and reserve {m['reserve_gb']:.1f} GB of "
            f"{dep.device.name}'s {m['device_gb']:.0f} GB; KV {m['kv_gb']:.1f} GB "
            f"({mem.kv_tokens:,} tokens) on {kv_elsewhere.name}"
        )
        return 0
    console.print(
        f"memory per device: weights {m['weights_gb']:.1f} GB, reserve {m['reserve_gb']:.1f} GB, "
        f"KV {m['kv_gb']:.1f} GB ({mem.kv_tokens:,} tokens per replica) of {m['device_gb']:.0f} GB "
        f"({m['usable_gb'] / m['device_gb']:.3g} of it the engine's)"
    )
    return 0


def _vision_line(dep: Any, s: PredictSettings, kernels: Any = None) -> str:
    """The vision encoder's time per image for a vision-language model (or when an image size
    is asked for, which a text-only model refuses), priced by the predictor's measured kernels
    where it has them."""
    from servesim.errors import ServesimError

    try:
        return encoder_line(s.model, dep.device, dep.parallel.tp, dep.engine, s, kernels)
    except ServesimError:
        if s.given("image_size") or s.given("video_frames"):
            raise
        return ""


def _skipping(pred: Any, batch: Any, cost: Any) -> dict[str, Any] | None:
    """The expected iteration time with the deployment's layer skipping (`cost.seconds`, priced
    by the skipping predictor) against the full-depth one, or None without skipping."""
    from servesim.predictor.iteration import Predictor

    skip = getattr(pred, "skipping", None)
    if skip is None:
        return None
    seconds = cost.seconds
    full_s = Predictor.step_s(pred, batch.decode_seqs, batch.decode_context, batch.prefill)
    return {
        "skip_prob": skip.skip_prob,
        "correlation": skip.correlation,
        "phase": skip.phase,
        "used_layer_share": pred.used_share,
        "seconds": seconds,
        "full_depth_seconds": full_s,
        "saving": 1.0 - seconds / full_s,
    }


def _speculative(dep: Any, pred: Any, batch: Any, cost: Any) -> dict[str, Any]:
    """The draft/verify split of a speculative step ({} without speculation)."""
    sd = dep.speculative
    if sd is None:
        return {}
    draft, verify = pred.breakdown_s(batch)
    tau = sd.expected_tokens_per_step
    return {
        "method": sd.method,
        "num_draft_tokens": sd.num_draft_tokens,
        "acceptance": list(sd.acceptance),
        "label": sd.label(),
        "tree_widths": list(sd.tree_widths),
        "verify_tokens": sd.verify_tokens,
        "mirror": sd.mirror_device is not None,  # draft ∥ verify on its own devices
        "draft_s": draft,
        "verify_s": verify,
        "tokens_per_step": tau,
        "seconds_per_token": cost.seconds / tau if batch.decode_seqs else None,
    }


def _twins(pred: Any) -> list[tuple[str, float]]:
    """(GPU, affinity) whose measured kernels price this GPU without tables (`twin_efficiency`);
    none for a predictor without one fit and device (a split or wrapped deployment)."""
    fit, device = getattr(pred, "fit", None), getattr(pred, "device", None)
    if fit is None or device is None:
        return []
    return twin_efficiency.priced_by(fit, device)


def _time_by_provenance(cost: Any) -> dict[str, float]:
    """Share of the iteration's kernel time by provenance (engine overhead left out)."""
    shares: dict[str, float] = {}
    kernels = sum(op.seconds for op in cost.ops if op.provenance != "engine") or 1.0
    for op in cost.ops:
        if op.provenance != "engine":
            shares[op.provenance] = shares.get(op.provenance, 0.0) + op.seconds / kernels
    return shares


def _as_json(dep: Any, batch: Any, cost: Any, mem: Any, misfit: str = "") -> dict[str, Any]:
    """The breakdown as one JSON-ready object: operators, totals and memory (`fits` false and
    the reason when the deployment does not fit its devices)."""
    ops = sorted(cost.ops, key=lambda o: -o.seconds)
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.provenance] = counts.get(op.provenance, 0) + 1
    return {
        "model": dep.model.name,
        "deployment": dep.label(),
        "latency_model": dep.latency_model,
        "operators": [
            {
                "name": op.name,
                "kind": op.kind,
                "calls": op.calls,
                "seconds": op.seconds,
                "flops": op.flops,
                "bytes": op.nbytes,
                "provenance": op.provenance,
            }
            for op in ops
        ],
        "totals": {
            "seconds": cost.seconds,
            "joules": cost.joules,
            "tokens": batch.num_tokens,
            "sequences": batch.num_seqs,
            "flops": sum(op.flops for op in ops),
            "bytes": sum(op.nbytes for op in ops),
            "provenance": counts,
            "kernel_time_share": _time_by_provenance(cost),
        },
        "memory": (
            {"fits": True, **mem.as_dict(), "kv_tokens": mem.kv_tokens}
            if mem is not None
            else {"fits": False, "reason": misfit}
        ),
        **(
            {"speculative": spec}
            if (spec := _speculative(dep, dep.predictor(), batch, cost))
            else {}
        ),
    }
