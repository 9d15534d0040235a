"""Migration over a router, per seed: p99 TTFT, preemptions and migrations with and without it.

The traces are `tests/test_router.py`'s bursty ones (by default 2,000 requests, gamma arrivals
of CV 2, prompts median 1,000 tokens, heavy-tailed outputs) on L40S replicas of Llama-3.1-8B
(4 by default).

    python scripts/migration_study.py --rate 4.5 --seeds 10 --router least_kv
    python scripts/migration_study.py --replicas 16 --rate 17 --requests 8000
"""

from __future__ import annotations

import argparse

from servesim.errors import script_exit
from servesim.sim.deployment import Deployment
from servesim.sim.router import Migration
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import LogNormal, synthetic
from servesim.spec.devices import get_device
from servesim.spec.model import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--cv", type=float, default=2.0, help="inter-arrival CV (gamma)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 1..N")
    ap.add_argument("--router", default="least_kv")
    ap.add_argument("--device", default="l40s")
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    model, device = load_model("meta-llama/Llama-3.1-8B"), get_device(args.device)
    better = fewer = 0
    for seed in range(1, args.seeds + 1):
        w = synthetic(
            args.requests,
            args.rate,
            LogNormal(1000, 4000, max_tokens=16000),
            LogNormal(400, 2500, max_tokens=8000),
            arrival="gamma",
            cv=args.cv,
            seed=seed,
        )
        rows = []
        for mig in (None, Migration()):
            res = simulate(
                Deployment(model, device, replicas=args.replicas, migration=mig),
                w,
                router=args.router,
            )
            s = res.summary()
            pre = int(res.columns()["preemptions"].sum())
            rows.append((s["ttft_s"]["p99"], pre, s.get("migrations", 0)))
        (p0, n0, _), (p1, n1, m) = rows
        better += p1 < p0
        fewer += n1 < n0
        print(
            f"seed {seed}: p99 TTFT {p0:.2f} -> {p1:.2f} s ({p1 / p0 - 1:+.0%}), "
            f"preemptions {n0} -> {n1}, migrations {m}"
        )
    print(f"p99 lower in {better}/{args.seeds} seeds, preemptions fewer in {fewer}/{args.seeds}")


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
