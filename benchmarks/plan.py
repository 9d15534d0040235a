"""Planner speed: the full search for Llama-3.1-70B on the bundled trace, from scratch.

    .venv/bin/python benchmarks/plan.py [--workers N] [--num-requests N]

Five GPU types (H100, H200, A100, L40S, L4), TP 1/2/4/8, three batching settings, two
scheduling policies (vLLM-style mixed chunked prefill, SGLang-style prefill-first), bf16 and fp8
weights, and disaggregated prefill/decode pools (P:D 1:1, 1:2, 2:1 with each pool's TP from the
same list); each surviving candidate gets a full (steady-state) capacity search. Prints the
candidate counts, wall time, winner and the cheapest verified fleet (overall and per engine);
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from servesim.errors import script_exit
from servesim.planner.candidates import PlanSpec, SearchSpace, WorkloadSpec
from servesim.planner.plan import run_plan
from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL
from servesim.sim.metrics import Slo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    ap.add_argument("--num-requests", type=int, default=1000, help="requests per probe")
    ap.add_argument(
        "--latency-model",
        choices=("auto", "measured", "roofline"),
        default=DEFAULT_LATENCY_MODEL,
        help=f"what prices kernels (default: {DEFAULT_LATENCY_MODEL})",
    )
    args = ap.parse_args(argv)
    spec = PlanSpec(
        model="meta-llama/Llama-3.1-70B",
        workload=WorkloadSpec("azure_conv", args.num_requests),
        slo=Slo(ttft_s=2.0, tpot_s=0.1),
        target=0.9,
        rate_per_s=10.0,
        latency_model=args.latency_model,
    )
    space = SearchSpace(
        devices=("h100_sxm", "h200_sxm", "a100_sxm", "l40s", "l4"),
        tp=(1, 2, 4, 8),
        engines=("vllm", "sglang"),
        batching=((64, 2048), (256, 8192), (1024, 16384)),
        weight_dtypes=("bf16", "fp8"),
        pd_ratios=((1, 1), (1, 2), (2, 1)),
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = run_plan(spec, space, out, workers=args.workers, quiet=True)
        wall = time.perf_counter() - t0
    total = res.evaluated + len(res.pruned)
    print(f"candidates: {total} enumerated, {len(res.pruned)} pruned {res.pruned_by_rule}")
    print(f"simulated: {res.evaluated} capacity searches, {len(res.feasible)} feasible")
    print(f"wall time: {wall:.1f} s")
    w = res.winner
    winner = w["label"] if w else None
    if w:
        print(
            f"winner: {winner}: {w['capacity_req_per_s']:.2f} req/s per replica, "
            f"{w['goodput_per_dollar_hour']:.3f} req/s per $/h"
        )
    if res.cheapest:
        c = res.cheapest
        print(
            f"cheapest for 10 req/s: {c.replicas} x {c.candidate.label()}, "
            f"{c.devices} devices, ${c.price_per_hour:.2f}/h"
        )
    for engine, c in res.cheapest_by_engine.items():
        print(f"  cheapest {engine} fleet: {c.replicas} x {c.candidate.label()}")
    for note in res.notes:
        print(f"note: {note}")
    print(
        json.dumps(
            {
                "candidates": total,
                "simulated": res.evaluated,
                "wall_s": round(wall, 1),
                "winner": winner,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
