"""Simulator speed: 100,000 requests of the bundled Azure trace on Llama-3.1-8B / one H100.

    .venv/bin/python benchmarks/speed.py [--requests N] [--rate R]

Runs the vLLM-like policy with chunked prefill on and then off, in one process on one core
(best of `--repeat` runs: wall time on a shared machine is noisy), and prints simulated
requests per wall second (simulation loop only, and end to end including
building the deployment and the summary), the peak resident memory and each run's summary.
The last line is one JSON object; its headline figures are the slower of the two runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from servesim.errors import script_exit
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.traces import bundled_trace
from servesim.spec.devices import get_device
from servesim.spec.model import load_model


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=None, help="scale arrivals (default: trace's)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (noisy machines)")
    args = ap.parse_args(argv)
    trace = bundled_trace("azure_conv").tiled(args.requests)
    if args.rate:
        trace = trace.scaled_to_rate(args.rate)
    model = load_model("meta-llama/Llama-3.1-8B")
    device = get_device("h100_sxm")
    results = {}
    for chunked in (True, False):
        best = None
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            dep = Deployment(model=model, device=device, chunked_prefill=chunked)
            res = simulate(dep, trace)
            summary = res.summary()
            elapsed = time.perf_counter() - t0
            if best is None or elapsed < best[0]:
                best = (elapsed, res, summary)
        total, res, summary = best
        label = "chunked" if chunked else "unchunked"
        results[label] = {
            "loop_requests_per_s": args.requests / res.wall_s,
            "end_to_end_requests_per_s": args.requests / total,
        }
        print(
            f"{label:10s}: {args.requests:,} requests, loop {res.wall_s:.2f} s "
            f"({args.requests / res.wall_s:,.0f} req/s), end to end {total:.2f} s "
            f"({args.requests / total:,.0f} req/s), iterations {summary['iterations']:,}"
        )
        print(
            f"            TTFT p50/p99 {summary['ttft_s']['p50'] * 1e3:.1f}/"
            f"{summary['ttft_s']['p99'] * 1e3:.1f} ms, TPOT p50/p99 "
            f"{summary['tpot_s']['p50'] * 1e3:.2f}/{summary['tpot_s']['p99'] * 1e3:.2f} ms, "
            f"ITL p99 {summary['itl_s']['p99'] * 1e3:.1f} ms, throughput "
            f"{summary['throughput_req_per_s']:.2f} req/s, mean batch "
            f"{summary['mean_batch_size']:.1f}, preemptions {summary['preemptions']}"
        )
    rss = peak_rss_mb()
    print(f"peak RSS {rss:.0f} MB")
    slowest = min(r["end_to_end_requests_per_s"] for r in results.values())
    print(
        json.dumps(
            {
                "requests": args.requests,
                "sim_requests_per_s": round(slowest),
                "peak_rss_mb": round(rss, 1),
                "runs": {k: {m: round(v) for m, v in r.items()} for k, r in results.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
