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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servesim import kernels
from servesim.autoscale import AutoscaleController, Autoscaler
from servesim.cluster import Cluster, ClusterStats, KvPath
from servesim.devices import Device
from servesim.engine import EngineProfile, get_engine
from servesim.errors import ServesimError
from servesim.memory import MemoryLayout, memory_layout
from servesim.metrics import ItlHistogram, RunSummary, Slo
from servesim.model import ModelSpec
from servesim.parallel import Parallel
from servesim.policies import Policy, PolicyState
from servesim.predictor import Predictor
from servesim.prefix import PrefixCache
from servesim.profiled import ProfiledTiming
from servesim.records import CHUNK_ROWS, RecordSink, RequestTable
from servesim.replica import Replica, ReplicaConfig
from servesim.router import ROUTERS, Migration, Router, check_router
from servesim.synthetic import ClosedLoop
from servesim.transfer import link_for
from servesim.workload import Workload

INF = math.inf
__all__ = ["ROUTERS", "Deployment", "SimResult", "simulate"]


_PREDICTORS: dict[tuple, Predictor] = {}  # bounded, oldest evicted first


@dataclass(frozen=True)
class Deployment:
    """One model served by `replicas` identical replicas of one engine on one device type."""

    model: ModelSpec
    device: Device
    parallel: Parallel = field(default_factory=Parallel)
    engine: EngineProfile = field(default_factory=lambda: get_engine("vllm"))
    replicas: int = 1
    max_num_seqs: int | None = None  # None: the engine's default
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool | None = None
    fit: kernels.KernelFit | None = None
    policy: Policy | None = None  # scheduling policy; None is the engine's FCFS
    prefix_caching: bool | None = None  # None: the engine's default (used when prompts have ids)
    migration: Migration | None = None  # Llumnix live migration between the replicas
    autoscaler: Autoscaler | None = None  # replicas added/removed over time; `replicas` at start
    profiled: ProfiledTiming | None = None  # iteration costs measured here (a CPU engine)

    @property
    def num_devices(self) -> int:
        """Devices in the whole deployment."""
        return self.replicas * self.parallel.num_devices

    @property
    def price_per_hour(self) -> float:
        """Rental cost of every device of the deployment, USD per hour."""
        return self.num_devices * self.device.price_per_hour

    def batching(self) -> tuple[int, int, bool]:
        """(max_num_seqs, max_num_batched_tokens, chunked_prefill) after engine defaults."""
        e = self.engine
        seqs = self.max_num_seqs or e.max_num_seqs
        tokens = self.max_num_batched_tokens or e.max_num_batched_tokens
        chunked = e.chunked_prefill if self.chunked_prefill is None else self.chunked_prefill
        if seqs < 1 or tokens < 1:
            raise ServesimError("max_num_seqs and max_num_batched_tokens must be ≥ 1.")
        return seqs, tokens, chunked

    def memory(self) -> MemoryLayout:
        """Per-device memory layout (raises if the model does not fit)."""
        seqs, tokens, _ = self.batching()
        return memory_layout(
            self.model,
            self.device,
            self.parallel,
            max_batched_tokens=tokens,
            mem_util=self.engine.mem_util,
            max_num_seqs=min(seqs, 256),
        )

    def predictor(self) -> Predictor:
        """The iteration-time predictor of one replica, shared by equal deployments.

        A capacity search simulates the same replica many times; sharing the predictor keeps
        its memoised kernel times and dense-work tables across those runs.
        """
        if self.profiled is not None:
            return self.profiled.predictor(self.model, self.device, self.engine, self.fit)
        key = (self.model, repr(self.device), self.parallel, self.engine, id(self.fit))
        pred = _PREDICTORS.get(key)
        if pred is None:
            if len(_PREDICTORS) >= 64:
                _PREDICTORS.pop(next(iter(_PREDICTORS)))
            pred = Predictor(self.model, self.device, self.parallel, self.engine, self.fit)
            _PREDICTORS[key] = pred
        return pred

    def label(self) -> str:
        """Short description such as `2x h100_sxm tp4 vllm`."""
        text = f"{self.replicas}x {self.device.name} {self.parallel.label()} {self.engine.name}"
        if self.max_num_batched_tokens is not None:
            text += f" budget{self.max_num_batched_tokens}"
        if self.chunked_prefill is False:
            text += " unchunked"
        if self.policy is not None and not self.policy.is_fcfs:
            text += f" {self.policy.name}"
            if self.policy.preemption != "recompute":
                text += f"/{self.policy.preemption}"
        if self.migration is not None:
            text += " +migration"
        if self.autoscaler is not None:
            text += " autoscaled"
        return text

    def uses_prefix_cache(self) -> bool:
        """Whether prefix caching is on (the engine's default unless set)."""
        return self.engine.prefix_caching if self.prefix_caching is None else self.prefix_caching


@dataclass
class SimResult:
    """Everything a run produced: per-request records, token gaps, replica time series."""

    deployment: Any  # Deployment, DisaggDeployment or SemiPDDeployment
    records: RecordSink
    itl: ItlHistogram
    memory: MemoryLayout
    replica_stats: list[dict[str, Any]]
    series: dict[str, np.ndarray]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # mechanism figures for the summary
    # Replica-time provisioned between the first arrival and the last finish (autoscaled runs;
    # None: every replica was up the whole span).
    provisioned_replica_s: float | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """Per-request columns ordered by request id, with derived latencies (computed once;
        a run streamed to Parquet reads its file back)."""
        return self.records.columns()

    def summary(self, slo: Slo | None = None) -> dict[str, Any]:
        """Latency, throughput, SLO and resource summary of the run (one pass over the
        records, in memory or in the Parquet file, in fixed memory)."""
        rec = self.records
        window = None
        if "scale_events" in self.extra:  # autoscaled: how attainment moved with the load
            window = max(60.0, max(rec.end_s - rec.start_s, 1e-12) / 24.0)
        acc = RunSummary(slo, window)
        for chunk in rec.chunks(_SUMMARY_COLUMNS):
            acc.add(chunk)
        s = acc.result(self.itl)
        dep = self.deployment
        span = s["duration_s"]
        busy = sum(r["busy_s"] for r in self.replica_stats)
        up_s = self.provisioned_replica_s
        if up_s is None:
            up_s = span * len(self.replica_stats)
        energy = sum(r["energy_j"] for r in self.replica_stats)
        out_tokens = max(1, acc.generated)
        all_tokens = out_tokens + acc.in_tokens
        s.update(
            {
                "deployment": dep.label(),
                "devices": dep.num_devices,
                "price_per_hour": dep.price_per_hour,
                "cost_usd": dep.price_per_hour * span / 3600.0,
                "energy_j": energy,
                "joules_per_output_token": energy / out_tokens,
                "joules_per_token": energy / max(1, all_tokens),
                "output_tokens_per_joule": out_tokens / max(energy, 1e-12),
                "mean_power_w": energy / max(span, 1e-12),
                # busy share of the replica-time provisioned (not of the largest pool)
                "utilisation": busy / max(up_s, 1e-12),
                "mean_batch_size": _time_mean(self.series["t_s"], self.series["running"]),
                "mean_kv_use": _time_mean(self.series["t_s"], self.series["kv_use"]),
                "kv_tokens_per_replica": self.memory.kv_tokens,
                "memory_gb_per_device": self.memory.as_dict(),
                "iterations": sum(r["iterations"] for r in self.replica_stats),
            }
        )
        s.update(self.extra)
        if window is not None:
            s["slo_attainment_over_time"] = [
                [round(t, 1), round(a, 4), n] for t, a, n in acc.attainment_over_time()
            ]
        return s


_SUMMARY_COLUMNS = [
    "request_id",
    "arrival_s",
    "prompt_tokens",
    "finish_s",
    "generated_tokens",
    "preemptions",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "queue_s",
]


def _time_mean(t: np.ndarray, v: np.ndarray) -> float:
    if len(t) < 2:
        return float(v.mean()) if len(v) else 0.0
    dt = np.diff(t)
    total = dt.sum()
    return float((v[:-1] * dt).sum() / total) if total > 0 else float(v.mean())


@dataclass
class Requests:
    """A workload laid out for the simulator: the table of requests in flight (which admits
    the workload's requests as they arrive) and what the replicas read."""

    table: RequestTable
    closed: ClosedLoop | None
    longest: int  # prompt + output tokens of the longest request
    hashes: list[Any] | None = None  # prefix hash ids per slot (the table's list)
    block_tokens: int = 0  # tokens per hash block
    outputs: np.ndarray | None = None  # every request's output tokens, by workload index


def prepare(
    workload: Workload | None,
    closed_loop: ClosedLoop | None,
    router: str,
    records: RecordSink | None = None,
) -> Requests:
    """Check a workload (or closed loop) and lay out its request table (rows recorded to
    `records`, by default kept in memory)."""
    if (workload is None) == (closed_loop is None):
        raise ServesimError("Give either an open-loop workload or a closed loop, not both.")
    check_router(router)
    src = closed_loop if closed_loop is not None else workload
    prompts = np.asarray(src.prompt_tokens, dtype=np.int64)
    outputs = np.asarray(src.output_tokens, dtype=np.int64)
    n = len(prompts)
    if n == 0:
        raise ServesimError("The workload has no requests.")
    if prompts.min() < 1 or outputs.min() < 1:
        raise ServesimError("Every request needs at least one prompt and one output token.")
    arrivals = None
    if closed_loop is None:
        arrivals = np.asarray(workload.arrival_s, dtype=np.float64)
        if len(arrivals) != n or np.any(arrivals[1:] < arrivals[:-1]):
            raise ServesimError("Arrival times must be sorted and match the request count.")
    prio = getattr(src, "priority", None)
    hashes = getattr(src, "prefix_hashes", None)
    block_tokens = int(getattr(src, "prefix_block_tokens", 0) or 0)
    table = RequestTable(prompts, outputs, arrivals, prio, hashes, records)
    block = 1 << 20  # no temporary of the workload's size
    longest = max(
        int((prompts[i : i + block] + outputs[i : i + block]).max()) for i in range(0, n, block)
    )
    return Requests(table, closed_loop, longest, table.hashes, block_tokens, outputs)


def build_pool(
    dep: Deployment,
    req: Requests,
    itl: ItlHistogram,
    role: str = "mixed",
    count: int | None = None,
) -> tuple[list[Replica], MemoryLayout]:
    """Replicas of a deployment (pipeline-parallel ones as `pp` virtual engines sharing the
    cache), with the deployment's policy and, when prompts carry hash ids, prefix caches."""
    seqs, budget, chunked = dep.batching()
    mem = dep.memory()
    pred = dep.predictor()
    e = dep.engine
    pp = dep.parallel.pp
    if not chunked:
        budget = max(budget, req.longest)  # engines raise the budget to the model length
    blocks = mem.kv_tokens // e.block_size
    per_engine = blocks // pp * e.block_size  # whole pages only
    if req.longest > per_engine:
        raise ServesimError(
            f"A request of {req.longest} tokens does not fit the KV cache of "
            f"{per_engine} tokens per engine of {dep.label()}; use more devices per "
            "replica, fp8 KV cache, or drop requests longer than the cache."
        )
    cfg = ReplicaConfig(
        max_num_seqs=max(1, seqs // pp),
        max_num_batched_tokens=budget,
        chunked_prefill=chunked,
        mixed_batches=e.mixed_batches,
        block_size=e.block_size,
        kv_blocks=max(1, blocks // pp),
        overlap=e.overlap_scheduling and role != "prefill",
    )
    ps = None
    if dep.policy is not None and not dep.policy.is_fcfs:
        ps = PolicyState(dep.policy, req.table, pred, req.outputs)
    caching = req.hashes is not None and req.block_tokens > 0 and dep.uses_prefix_cache()
    if caching and req.block_tokens % e.block_size:
        raise ServesimError(
            f"The workload's prefix hash blocks of {req.block_tokens} tokens do not fill whole "
            f"KV pages of {e.block_size} tokens ({e.name}); give hash ids per multiple of "
            "the page size (Mooncake traces use 512) or turn prefix caching off."
        )
    n = (dep.replicas if count is None else count) * pp
    reps = [
        Replica(
            i,
            pred,
            cfg,
            req.table,
            itl,
            policy=ps,
            role=role,
            prefix=PrefixCache(req.block_tokens, e.block_size) if caching else None,
            hashes=req.hashes if caching else None,
        )
        for i in range(n)
    ]
    return reps, mem


def simulate(
    dep: Any,
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
    from servesim.disagg import DisaggDeployment, simulate_disagg
    from servesim.semipd import SemiPDDeployment, simulate_semipd

    sink = RecordSink(records_path, record_chunk_rows)
    if isinstance(dep, DisaggDeployment):
        run: Any = simulate_disagg
    elif isinstance(dep, SemiPDDeployment):
        run = simulate_semipd
    elif isinstance(dep, Deployment):
        run = _simulate_colocated
    else:
        raise ServesimError(
            f"Cannot simulate a {type(dep).__name__}; give a Deployment, DisaggDeployment or "
            "SemiPDDeployment."
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
    return KvPath.for_model(link_for(dep.migration.link, dep.device), dep.model)


def _run_single(single: Replica, table: RequestTable) -> int:
    """One replica fed by a known arrival sequence: the common case, kept tight. Returns how
    many finishes the replica reported."""
    # The engine sees a request after the serving frontend's fixed latency (HTTP, tokenising).
    lag = single.pred.engine.request_overhead_s
    advance, enqueue = single.advance, single.enqueue
    admit, report = table.admit, table.done
    finished = 0
    for lo, arrivals in table.arrival_blocks():
        for gid, a in enumerate(arrivals, lo):
            t_arr = a + lag
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


def replica_energy_j(r: Replica, end_s: float, decode_context_tokens: float) -> float:
    """Energy of one replica (or virtual engine): idle power while provisioned (its share of
    the devices) plus the dynamic power of the work its iterations did."""
    up = r.provisioned_s(end_s)
    return r.power_pred.joules(up * r.idle_share, r.total_work_s(decode_context_tokens))


def decode_context_by_replica(cols: dict[str, np.ndarray], replicas: int) -> np.ndarray:
    """Total context the decode steps of each replica attended to: a request that generated O
    tokens after a P-token prompt decodes O − 1 steps over P + 1 … P + O − 1 tokens; it is
    counted on the replica it finished on. (A run accumulates the same sums as its requests
    finish: `RequestTable.decode_context`.)"""
    p = cols["prompt_tokens"].astype(np.float64)
    o = np.maximum(cols["generated_tokens"] - 1.0, 0.0)
    where = cols["replica"]
    ok = where >= 0
    ctx = o * p + o * (o + 1.0) * 0.5
    return np.bincount(where[ok], weights=ctx[ok], minlength=replicas)


def result(
    dep: Any,
    reps: list[Replica],
    req: Requests,
    itl: ItlHistogram,
    mem: MemoryLayout,
    wall: float,
    stats: ClusterStats | None = None,
    extra: dict[str, Any] | None = None,
    finish_events: int | None = None,
) -> SimResult:
    """Check that every request finished exactly once (`ConservationError` naming the lost
    ones if not), then collect the run's replica statistics, time series and mechanism
    figures. `finish_events` counts the finishes a run without `stats` reported."""
    table = req.table
    res = SimResult(dep, table.sink, itl, mem, [], {}, wall)
    if stats is not None:
        finish_events = stats.finish_events
    table.close(finish_events)
    stats_out = res.replica_stats
    t_all: list[np.ndarray] = []
    run_all: list[np.ndarray] = []
    kv_all: list[np.ndarray] = []
    caps: list[float] = []
    end = max((r.now for r in reps), default=0.0)
    device_s = 0.0
    price_s = 0.0
    contexts = np.zeros(max(len(reps), len(table.decode_context)))
    contexts[: len(table.decode_context)] = table.decode_context
    for r in reps:
        up = r.provisioned_s(end)
        stats_out.append(
            {
                "replica": r.index,
                "role": r.role,
                "busy_s": r.busy_s,
                "iterations": r.iterations,
                "energy_j": replica_energy_j(r, end, float(contexts[r.index])),
                "provisioned_s": up,
            }
        )
        devices = r.pred.par.num_devices * r.idle_share
        device_s += up * devices
        price_s += up * devices * r.pred.device.price_per_hour
        t, running, kv = r.series_arrays()
        t_all.append(t)
        run_all.append(running)
        kv_all.append(kv)
        # KV tokens this engine's share of its replica's cache holds (pipeline stages hold a
        # slice each; semi-PD lanes share one cache, each counted for half)
        caps.append(r.cfg.kv_blocks * r.cfg.block_size * r.idle_share * r.pp)
    res.series = _merge_series(t_all, run_all, kv_all, caps, [r.provisioned for r in reps])
    if stats is not None and stats.scale_events:
        start, stop = table.sink.start_s, table.sink.end_s
        res.provisioned_replica_s = sum(
            max(0.0, min(b, stop) - max(a, start)) for r in reps for a, b in r.provisioned
        )
    info: dict[str, Any] = dict(extra or {})
    caches = [r.prefix for r in reps if r.prefix is not None]
    if caches:
        lookups = sum(c.lookup_tokens for c in caches)
        hits = sum(c.hit_tokens for c in caches)
        info["prefix_hit_rate"] = hits / lookups if lookups else 0.0
        info["prefix_evictions"] = sum(c.evictions for c in caches)
    ps = next((r.ps for r in reps if r.ps is not None), None)
    if ps is not None:
        info["swaps"] = ps.swaps
        info["swap_s"] = ps.swap_s
        info["prefill_interrupts"] = sum(r.interrupts for r in reps)
    if stats is not None:
        if stats.kv_transfers:
            info["kv_transfers"] = stats.kv_transfers
            info["kv_transfer_gb"] = stats.kv_bytes / 1e9
            info["kv_transfer_s_mean"] = stats.kv_transfer_s.mean()
            info["kv_transfer_s_p99"] = stats.kv_transfer_s.percentiles([99])[0]
        if stats.migrations:
            info["migrations"] = stats.migrations
            info["migration_gb"] = stats.migration_bytes / 1e9
            info["migration_downtime_s_mean"] = stats.migration_downtime_s.mean()
            info["migration_gap_s_mean"] = stats.migration_gap_s.mean()
        if stats.scale_events:
            info["cold_starts"] = stats.cold_starts
            info["device_hours"] = device_s / 3600.0
            info["cost_usd"] = price_s / 3600.0
            info["scale_events"] = [list(e) for e in stats.scale_events]
    res.extra = info
    return res


def _merge_series(
    t_all: list[np.ndarray],
    run_all: list[np.ndarray],
    kv_all: list[np.ndarray],
    caps: list[float],
    provisioned: list[list[list[float]]],
    points: int = 2000,
) -> dict[str, np.ndarray]:
    """Cluster-wide batch size (sum) and KV use on a common time grid: the KV tokens held over
    the KV tokens of the replicas provisioned at that time (an autoscaled pool's parked
    replicas count for nothing)."""
    t_end = max((float(t[-1]) for t in t_all if len(t)), default=0.0)
    grid = np.linspace(0.0, t_end, points) if t_end > 0 else np.zeros(1)
    running = np.zeros_like(grid)
    held = np.zeros_like(grid)
    cap = np.zeros_like(grid)
    for t, r, k, c, spans in zip(t_all, run_all, kv_all, caps, provisioned, strict=True):
        up = np.zeros(len(grid), dtype=bool)
        for a, b in spans:
            up |= (grid >= a) & (grid <= b)
        cap += c * up
        if not len(t):
            continue
        idx = np.searchsorted(t, grid, side="right") - 1
        seen = idx >= 0  # before its first scheduling decision a replica holds nothing
        idx = np.maximum(idx, 0)
        running += r[idx] * seen
        held += k[idx] * (up & seen)
    kv = np.divide(held, cap, out=np.zeros_like(grid), where=cap > 0)
    return {"t_s": grid, "running": running, "kv_use": kv}
