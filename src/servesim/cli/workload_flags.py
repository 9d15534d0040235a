"""The workload flags `simulate` and `bench` share, and the open-loop workload or closed loop
they build (a trace, a synthetic mix, or clients).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from servesim.errors import ServesimError


def add_workload_args(w: argparse._ArgumentGroup) -> None:
    """The workload flags `simulate` and `bench` share (read by `build_workload`)."""
    w.add_argument("--trace", help="bundled trace name (azure_conv, mooncake_conv) or a file")
    w.add_argument("--rate", type=float, help="scale arrivals to this mean rate (req/s)")
    w.add_argument("--num-requests", type=int, help="requests to run (tiles a trace)")
    w.add_argument("--prompt", help="synthetic prompt lengths: fixed:N, uniform:A:B, ...")
    w.add_argument("--output", help="synthetic output lengths: fixed:N, uniform:A:B, ...")
    w.add_argument("--arrival", help="synthetic arrivals: poisson or gamma")
    w.add_argument("--cv", type=float, help="inter-arrival coefficient of variation (gamma)")
    w.add_argument("--clients", type=int, help="closed loop with this many concurrent clients")
    w.add_argument("--think-s", type=float, help="closed-loop think time between requests")
    w.add_argument("--seed", type=int, help="seed for synthetic lengths and arrivals (≥ 0)")


def build_workload(s: Any) -> Any:
    """The open-loop workload or closed loop that validated workload settings describe."""
    from servesim.sim import synthetic as wl
    from servesim.sim import traces as tracemod

    synthetic = s.prompt is not None or s.output is not None
    base = None
    if s.trace or not synthetic:
        name = s.trace or "azure_conv"
        base = (
            tracemod.read_trace(name)
            if Path(name).exists() or "/" in name or "." in name
            else tracemod.bundled_trace(name)
        )
    if s.clients is not None:
        n = s.num_requests or 10 * s.clients
        prompt = wl.parse_length(s.prompt or "trace", "prompt", base)
        output = wl.parse_length(s.output or "trace", "output", base)
        return wl.ClosedLoop(s.clients, n, prompt, output, s.think_s, s.seed)
    if base is None or (synthetic and not s.trace):
        if s.rate is None:
            raise ServesimError("A synthetic workload needs --rate (requests per second).")
        prompt = wl.parse_length(s.prompt or "fixed:1024", "prompt", base)
        output = wl.parse_length(s.output or "fixed:256", "output", base)
        return wl.synthetic(
            s.num_requests or 1000, s.rate, prompt, output, arrival=s.arrival, cv=s.cv, seed=s.seed
        )
    w = base
    if s.num_requests:
        n = s.num_requests
        w = w.tiled(n) if n > len(w) else w.head(n)
    if s.rate is not None:
        w = w.scaled_to_rate(s.rate)
    return w
