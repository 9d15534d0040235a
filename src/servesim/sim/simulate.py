"""Request-level serving simulation: a deployment of identical replicas under a workload.

The driver is a small discrete-event loop over two kinds of events: request arrivals (from an
open-loop trace, or from closed-loop clients that send again when their last request ends) and
replica events (the end of an iteration or of a stretch of decode steps). Replicas advance
lazily; an arrival routed to a replica cuts its current decode stretch. One replica fed by a
trace runs a tight loop here; everything else (several replicas, migration, autoscaling,
disaggregated pools in `disagg`, intra-GPU partitions in `semipd`) runs the `cluster` loop.
Everything is deterministic: the only randomness is seeded (workloads, power-of-two routing,
noisy length estimates).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from servesim.errors import ServesimError
from servesim.sim.autoscale import AutoscaleController
from servesim.sim.cluster import Cluster, KvPath
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment, simulate_disagg
from servesim.sim.encode import EpdDeployment, simulate_epd
from servesim.sim.metrics import ItlHistogram
from servesim.sim.pool import build_pool, prepare
from servesim.sim.records import CHUNK_ROWS, RecordSink, RequestTable
from servesim.sim.replica import Replica
from servesim.sim.result import SimResult, result
from servesim.sim.router import Router
from servesim.sim.semipd import SemiPDDeployment, simulate_semipd
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.transfer import link_for
from servesim.sim.workload import Workload

INF = math.inf


def simulate(
    dep: Deployment | DisaggDeployment | SemiPDDeployment | EpdDeployment,
    workload: Workload | None = None,
    closed_loop: ClosedLoop | None = None,
    router: str = "round_robin",
    records_path: str | Path | None = None,
    record_chunk_rows: int = CHUNK_ROWS,
) -> SimResult:
    """Serve an open-loop workload or a closed loop of clients on a deployment: a `Deployment`
    (colocated replicas), a `disagg.DisaggDeployment` or a `semipd.SemiPDDeployment`.

    Per-request records stay in memory (`SimResult.columns()`), or with `records_path` stream
    to that Parquet file, one row group of `record_chunk_rows` rows at a time, so memory stays
    bounded by the requests in flight. The file's rows are in `request_id` order (the index in
    the workload; see `RecordSink` for the one exception); it replaces `records_path` only
    when the run completes."""
    sink = RecordSink(records_path, record_chunk_rows)
    if isinstance(dep, DisaggDeployment):
        run: Any = simulate_disagg
    elif isinstance(dep, SemiPDDeployment):
        run = simulate_semipd
    elif isinstance(dep, EpdDeployment):
        run = simulate_epd
    elif isinstance(dep, Deployment):
        run = _simulate_colocated
    else:
        raise ServesimError(
            f"Cannot simulate a {type(dep).__name__}; give a Deployment, DisaggDeployment, "
            "SemiPDDeployment or EpdDeployment."
        )
    try:
        return run(dep, workload, closed_loop, router, sink)
    except BaseException:
        sink.abort()
        raise


def _simulate_colocated(
    dep: Deployment,
    workload: Workload | None,
    closed_loop: ClosedLoop | None,
    router: str,
    sink: RecordSink,
) -> SimResult:
    req = prepare(workload, closed_loop, router, sink)
    itl = ItlHistogram()
    scaler = dep.autoscaler
    count = scaler.max_replicas if scaler is not None else None
    reps, mem = build_pool(dep, req, itl, count=count)
    t_wall = time.perf_counter()
    stats = None
    finish_events = None
    pp = dep.parallel.pp
    if len(reps) == 1 and closed_loop is None and dep.migration is None and scaler is None:
        finish_events = _run_single(reps[0], req.table)
    else:
        cluster = Cluster(
            req.table,
            reps,
            Router(router, req.hashes),
            closed=closed_loop,
            migration=dep.migration,
            migration_path=_migration_path(dep) if dep.migration is not None else None,
            controllers=[AutoscaleController(scaler, dep, pp)] if scaler is not None else None,
        )
        if pp > 1 or scaler is not None:
            _group_virtual_engines(cluster, pp)
        cluster.run()
        stats = cluster.stats
    wall = time.perf_counter() - t_wall
    return result(dep, reps, req, itl, mem, wall, stats, finish_events=finish_events)


def _group_virtual_engines(cluster: Cluster, pp: int) -> None:
    """Autoscaling adds and removes whole replicas: all `pp` virtual engines of one."""
    for r in cluster.reps:
        r.group = r.index // pp


def _migration_path(dep: Deployment) -> KvPath:
    link = link_for(dep.migration.link, dep.device)
    return KvPath.for_model(link, dep.model, par=dep.parallel, src_par=dep.parallel)


def _run_single(single: Replica, table: RequestTable) -> int:
    """One replica fed by a known arrival sequence: the common case, kept tight. Returns how
    many finishes the replica reported."""
    # The engine sees a request after the serving frontend (HTTP, tokenising its prompt), in
    # arrival order.
    lag = single.pred.engine.frontend_s
    prompt_of = table.prompt_of
    advance, enqueue = single.advance, single.enqueue
    admit, report = table.admit, table.done
    finished = 0
    t_arr = -INF
    for lo, arrivals in table.arrival_blocks():
        for gid, a in enumerate(arrivals, lo):
            t_arr = max(t_arr, a + lag(prompt_of(gid)))
            while single.next_t < t_arr:
                done = advance()
                if done:
                    finished += len(done)
                    report(done)
            done = enqueue(admit(gid, a), t_arr)
            if done:
                finished += len(done)
                report(done)
    while single.next_t < INF:
        done = advance()
        if done:
            finished += len(done)
            report(done)
    return finished
