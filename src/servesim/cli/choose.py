"""`servesim choose`: rank candidate models × quantisations on one or more devices by predicted
latency, throughput and energy under budgets; with a quality CSV, accuracy per joule and the
quality vs latency Pareto front."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from servesim.cli.output import console
from servesim.errors import ServesimError

DEFAULT_MODELS = "meta-llama/Meta-Llama-3.1-8B,Qwen/Qwen3-8B,Qwen/Qwen3-32B"


def add_choose_parser(sub: Any) -> None:
    """Add `choose` to servesim's subcommand parsers."""
    p = sub.add_parser(
        "choose",
        help="rank models x quantisations on devices under latency/memory/energy budgets",
        description="Price every model x quantisation x device (TTFT of one prompt, time per "
        "output token and tokens/s at a batch, energy per token, memory), keep those meeting "
        "the budgets and rank them. With --quality (CSV `model,score`), add quality per joule "
        "and the quality vs latency Pareto front.",
    )
    p.add_argument("--on", required=True, help="devices, comma-separated (e.g. rtx_4090,this_cpu)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="bundled names or config paths")
    p.add_argument("--quants", default="f16,q8_0,q4_k_m", help="weight recipes, comma-separated")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (TTFT)")
    p.add_argument("--output", type=int, default=128, help="output tokens")
    p.add_argument("--batch", type=int, default=1, help="sequences decoding together")
    p.add_argument("--ttft-ms", type=float, help="budget: time to first token")
    p.add_argument("--tpot-ms", type=float, help="budget: time per output token")
    p.add_argument("--min-tokens-per-s", type=float, help="budget: decode tokens/s at --batch")
    p.add_argument("--max-mem-gb", type=float, help="budget: weights plus KV")
    p.add_argument("--max-j-per-token", type=float, help="budget: energy per output token")
    p.add_argument("--quality", help="CSV of model,score (e.g. published accuracies)")
    p.add_argument(
        "--rank-by",
        default="tpot",
        choices=("tpot", "ttft", "throughput", "energy", "quality_per_joule", "quality"),
    )
    p.add_argument("--top", type=int, default=20, help="rows to print")
    p.add_argument("--devices", help="extra device catalog YAML")
    p.add_argument("--json", dest="json_output", action="store_true", help="print one JSON object")


def _positive(name: str, v: float | None) -> None:
    if v is not None and not v > 0:
        raise ServesimError(f"{name} must be greater than 0, got {v:g}.")


def cmd_choose(args: argparse.Namespace) -> int:
    """Price, filter and rank the candidates."""
    from servesim.planner.choose import Budgets, choose, quality_latency_front, read_quality
    from servesim.spec.devices import catalog
    from servesim.spec.model import load_model
    from servesim.spec.quant import get_quant

    for name in ("prompt", "output", "batch", "top"):
        _positive(f"--{name}", getattr(args, name))
    for name in ("ttft_ms", "tpot_ms", "min_tokens_per_s", "max_mem_gb", "max_j_per_token"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    cat = catalog(args.devices)
    devices = [cat.get(n.strip()) for n in args.on.split(",") if n.strip()]
    models = [load_model(m.strip()) for m in args.models.split(",") if m.strip()]
    quants = [get_quant(q.strip()) for q in args.quants.split(",") if q.strip()]
    if not devices or not models or not quants:
        raise ServesimError("Give at least one device (--on), model (--models) and quant.")
    budgets = Budgets(
        ttft_s=args.ttft_ms / 1e3 if args.ttft_ms else None,
        tpot_s=args.tpot_ms / 1e3 if args.tpot_ms else None,
        min_tokens_per_s=args.min_tokens_per_s,
        mem_bytes=args.max_mem_gb * 1e9 if args.max_mem_gb else None,
        j_per_token=args.max_j_per_token,
    )
    quality = read_quality(args.quality) if args.quality else None
    ranked = choose(
        models,
        quants,
        devices,
        budgets,
        quality,
        args.rank_by,
        args.prompt,
        args.output,
        args.batch,
    )
    front = quality_latency_front(ranked) if quality else []
    meeting = [c for c in ranked if c.meets_budgets]
    if args.json_output:
        print(
            json.dumps(
                {
                    "rank_by": args.rank_by,
                    "candidates": [c.__dict__ for c in ranked],
                    "meeting_budgets": len(meeting),
                    "quality_latency_front": [c.__dict__ for c in front],
                }
            )
        )
        return 0 if meeting else 1
    t = Table(title=f"servesim choose: ranked by {args.rank_by}")
    cols = ["model", "quant", "device", "GB", "TTFT ms", "TPOT ms", "tok/s", "J/tok"]
    if quality:
        cols += ["score", "score/J"]
    cols.append("budgets")
    for c in cols:
        t.add_column(c, justify="left" if c in ("model", "quant", "device", "budgets") else "right")
    for c in ranked[: args.top]:
        row = [
            c.model,
            c.quant,
            c.device,
            f"{c.mem_gb:.1f}",
            f"{c.ttft_s * 1e3:,.0f}",
            f"{c.tpot_s * 1e3:,.1f}",
            f"{c.tokens_per_s:,.1f}",
            f"{c.j_per_token:.3f}",
        ]
        if quality:
            row += [
                "-" if c.quality is None else f"{c.quality:g}",
                "-" if c.quality_per_joule is None else f"{c.quality_per_joule:,.1f}",
            ]
        row.append("ok" if c.meets_budgets else c.why_not)
        t.add_row(*row)
    console.print(t)
    if front:
        console.print(
            "quality vs latency front: "
            + ", ".join(f"{c.model} {c.quant} on {c.device}" for c in front)
        )
    console.print(f"{len(meeting)} of {len(ranked)} candidates meet the budgets.")
    return 0 if meeting else 1
