"""Memory on a long trace: `servesim simulate` of a synthetic N-request CSV trace, in a subprocess.

    .venv/bin/python benchmarks/memory.py [--requests N] [--rate R] [--keep DIR]

Writes a generic trace (arrival_s, prompt_tokens, output_tokens) to a temporary folder: Poisson
arrivals at `--rate` (25 req/s, about what one H100 sustains for Llama-3.1-8B at these lengths),
prompts lognormal around 700 tokens (16-8,000), outputs lognormal around 180 (8-2,000). Then runs
`python -m servesim.cli.main simulate --trace FILE --out DIR` (Llama-3.1-8B on one H100, the
defaults) and prints its peak resident memory (getrusage of the child), the wall time of the
whole command and the simulated requests per second of its loop (from summary.json). The last
line is one JSON object. Goal: 10,000,000 requests in under 1 GB (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_trace(path: Path, n: int, rate: float, seed: int = 0, block: int = 1_000_000) -> None:
    """A generic CSV trace of `n` requests, written block by block (bounded memory)."""
    gen = np.random.default_rng(seed)
    t0 = 0.0
    with path.open("w") as f:
        f.write("arrival_s,prompt_tokens,output_tokens\n")
        for lo in range(0, n, block):
            m = min(block, n - lo)
            arrival = t0 + np.cumsum(gen.exponential(1.0 / rate, m))
            t0 = float(arrival[-1])
            prompt = np.clip(np.round(gen.lognormal(np.log(700), 0.5, m)), 16, 8000)
            output = np.clip(np.round(gen.lognormal(np.log(180), 0.4, m)), 8, 2000)
            rows = np.column_stack((arrival, prompt, output))
            np.savetxt(f, rows, fmt=("%.6f", "%d", "%d"), delimiter=",")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--rate", type=float, default=25.0, help="arrivals per second")
    ap.add_argument("--keep", default=None, help="write trace and outputs here (kept)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="servesim-memory-") as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        trace, out = where / "trace.csv", where / "out"
        t0 = time.perf_counter()
        write_trace(trace, args.requests, args.rate)
        print(f"trace: {args.requests:,} requests in {time.perf_counter() - t0:.1f} s ({trace})")
        cmd = [sys.executable, "-m", "servesim.cli.main", "simulate", "--trace", str(trace)]
        cmd += ["--out", str(out)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return done.returncode
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        summary = json.loads((out / "summary.json").read_text())
        sim_s = summary["sim_wall_s"]
        print(
            f"simulate: {summary['finished']:,} requests finished, peak RSS {rss_mb:,.0f} MB, "
            f"wall {wall:.1f} s (simulation loop {sim_s:.1f} s, "
            f"{args.requests / sim_s:,.0f} req/s); p99 TTFT {summary['ttft_s']['p99'] * 1e3:.1f}"
            f" ms, mean batch {summary['mean_batch_size']:.1f}"
        )
    print(
        json.dumps(
            {
                "requests": args.requests,
                "peak_rss_mb": round(rss_mb, 1),
                "wall_s": round(wall, 1),
                "sim_requests_per_s": round(args.requests / sim_s),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
