"""Mélange mix: the published example, then a rate scan fed by servesim's own capacities.

    .venv/bin/python benchmarks/melange.py [--model M] [--devices a10g,l4,a100_sxm]
        [--rates 4,6,8,10,12,15,16,17,20] [--slice-factor 4] [--requests 1500]

First solves melange/config/example.json of github.com/tyler-griggs/melange-release (expected
$6.70/h: 3 A10G + 1 A100-80GB). Then measures per-bucket replica capacities once (Azure conv
trace, prompt edges 0/1500/inf, output edges 0/250/inf, TTFT 2 s / TPOT 0.1 s at 90%) and, per
rate, prints the mix, the one-type fleet under the same capacities, the smallest one-type fleet
that a simulation of the whole workload shows meeting the SLO, and the mix's simulated
attainment per type. The last line is one JSON object with every row.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from servesim.errors import script_exit
from servesim.planner.candidates import PlanSpec, WorkloadSpec, catalog_for
from servesim.planner.melange import (
    best_single_type,
    bucket_workload,
    capacities_from_simulator,
    mix_candidates,
    smallest_fleet,
    solve_mix,
    verify_mix,
)
from servesim.sim.metrics import Slo

PROMPT_EDGES = [0, 1500, np.inf]
OUTPUT_EDGES = [0, 250, np.inf]


def example() -> None:
    """The published example of the Mélange repository."""
    rates = np.array([[0.2, 0.1], [0.5, 0.2]]) * 30.0
    caps = {
        "A10G": np.array([[2.0, 1.0], [5.0, 2.0]]),
        "A100-80GB": np.array([[20.0, 20.0], [40.0, 20.0]]),
    }
    prices = {"A10G": 1.01, "A100-80GB": 3.67}
    for sf in (1, 4):
        sol = solve_mix(rates, caps, prices, sf)
        print(f"example slice_factor={sf}: ${sol.cost_per_hour:.2f}/h {sol.counts}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    ap.add_argument("--devices", default="a10g,l4,a100_sxm")
    ap.add_argument("--rates", default="4,6,8,10,12,15,16,17,20")
    ap.add_argument("--slice-factor", type=int, default=4)
    ap.add_argument("--requests", type=int, default=1500)
    args = ap.parse_args(argv)
    example()
    spec = PlanSpec(
        model=args.model,
        workload=WorkloadSpec("azure_conv", args.requests),
        slo=Slo(2.0, 0.1),
        rel_tol=0.05,
    )
    work = spec.workload.build()
    shares, _ = bucket_workload(work, PROMPT_EDGES, OUTPUT_EDGES)
    cands = mix_candidates(spec, args.devices.split(","))
    cat = catalog_for(None)
    prices = {t: c.devices_per_replica * cat.get(c.device).price_per_hour for t, c in cands.items()}
    t0 = time.perf_counter()
    caps = capacities_from_simulator(spec, cands, work, PROMPT_EDGES, OUTPUT_EDGES)
    print(f"bucket shares {np.round(shares, 3).tolist()} ({time.perf_counter() - t0:.1f} s)")
    for t, c in caps.items():
        print(f"  {t:10s} ${prices[t]:.2f}/h  req/s per replica {np.round(c, 2).tolist()}")
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        rates = shares * rate
        mix = solve_mix(rates, caps, prices, args.slice_factor)
        one = best_single_type(rates, caps, prices)
        att = verify_mix(spec, cands, mix, work, rate, PROMPT_EDGES, OUTPUT_EDGES)
        fleets = {t: smallest_fleet(spec, c, work, rate) for t, c in cands.items()}
        sim_best = min((n * prices[t], t, n) for t, n in fleets.items() if n)
        row = {
            "rate": rate,
            "mix": {t: n for t, n in mix.counts.items() if n},
            "mix_cost": round(mix.cost_per_hour, 2),
            "mix_attainment": {t: round(a, 3) for t, a in att.items()},
            "one_type": {t: n for t, n in one.counts.items() if n} if one else None,
            "one_type_cost": round(one.cost_per_hour, 2) if one else None,
            "simulated_one_type": {sim_best[1]: sim_best[2]},
            "simulated_one_type_cost": round(sim_best[0], 2),
        }
        rows.append(row)
        print(
            f"{rate:5.1f} req/s  mix ${row['mix_cost']:6.2f} {row['mix']} "
            f"att {row['mix_attainment']}"
            f" | one type ${row['one_type_cost']:6.2f} {row['one_type']}"
            f" | simulated one type ${row['simulated_one_type_cost']:6.2f} "
            f"{row['simulated_one_type']}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
