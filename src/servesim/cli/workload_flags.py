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
    w.add_argument(
        "--client-protocol",
        help="closed loop as a benchmark client runs it: inferencex (single node: warm-ups "
        "repeat the first prompt), inferencex_multinode (srt-slurm's sa-bench), "
        "inferencex_2025, aiperf, vllm_bench_serve or lockstep (warm-up, length spread, "
        "requests per client)",
    )
    w.add_argument(
        "--length-range-ratio",
        type=float,
        help="closed loop: spread fixed --prompt/--output lengths as the client's "
        "--random-range-ratio does (vllm bench serve: [L(1-r), L(1+r)])",
    )
    w.add_argument("--ramp-s", type=float, help="closed loop: open client slots over this time")
    w.add_argument("--warmup-requests", type=int, help="closed loop: uncounted warm-up requests")
    w.add_argument(
        "--prompt-pool",
        type=int,
        help="closed loop: clients draw prompts from this many distinct ones (aiperf "
        "--num-dataset-entries, 100 by default there), so repeats hit the prefix cache",
    )
    w.add_argument(
        "--prompt-pool-sampling",
        help="how clients pick from --prompt-pool: shuffle (aiperf's default), random, sequential",
    )
    w.add_argument(
        "--seed",
        type=int,
        help="seed for synthetic lengths and arrivals and the semantic cache's hits (≥ 0)",
    )


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
        if s.client_protocol is not None or s.length_range_ratio is not None:
            return _client_loop(s)
        n = s.num_requests or 10 * s.clients
        prompt = wl.parse_length(s.prompt or "trace", "prompt", base)
        output = wl.parse_length(s.output or "trace", "output", base)
        return wl.ClosedLoop(
            s.clients,
            n + (s.warmup_requests or 0),
            prompt,
            output,
            s.think_s,
            s.seed,
            ramp_s=s.ramp_s,
            warmup_requests=s.warmup_requests or 0,
            dataset_entries=s.prompt_pool or 0,
            dataset_sampling=s.prompt_pool_sampling,
        )
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


def _client_loop(s: Any) -> Any:
    """A closed loop as a benchmark client runs it: nominal fixed lengths spread by the
    client's range ratio, its warm-up phase and its requests per client (or --num-requests
    measured ones)."""
    from dataclasses import replace

    from servesim.sim import synthetic as wl
    from servesim.sim.clients import LOCKSTEP, client_protocol

    proto = client_protocol(s.client_protocol) if s.client_protocol else LOCKSTEP
    nominal = []
    for key in ("prompt", "output"):
        spec = getattr(s, key)
        dist = wl.parse_length(spec, key) if spec else None
        if not isinstance(dist, wl.Fixed):
            raise ServesimError(
                f"A client protocol draws {key} lengths around a nominal length; give "
                f"--{key} N (a fixed length) with --client-protocol or --length-range-ratio."
            )
        nominal.append(dist.tokens)
    if s.warmup_requests is not None:
        if s.warmup_requests % s.clients:
            raise ServesimError(
                f"--warmup-requests {s.warmup_requests} is not a multiple of --clients "
                f"{s.clients}; client protocols size their warm-up per client."
            )
        proto = replace(proto, warmup_per_client=s.warmup_requests // s.clients)
    if s.ramp_s:
        proto = replace(proto, ramp_s=s.ramp_s)
    if s.prompt_pool:
        proto = replace(proto, dataset_entries=s.prompt_pool)
    proto = replace(proto, dataset_sampling=s.prompt_pool_sampling)
    loop = proto.closed_loop(
        s.clients,
        nominal[0],
        nominal[1],
        num_requests=s.num_requests,
        range_ratio=s.length_range_ratio,
        seed=s.seed,
    )
    return replace(loop, think_s=s.think_s) if s.think_s else loop
