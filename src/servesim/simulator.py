"""Request-level serving simulation: a deployment of identical replicas under a workload.

The driver is a small discrete-event loop over two kinds of events: request arrivals (from an
open-loop trace, or from closed-loop clients that send again when their last request ends) and
replica events (the end of an iteration or of a stretch of decode steps). Replicas advance
lazily; an arrival routed to a replica cuts its current decode stretch. Everything is
deterministic: there is no randomness inside the loop, only in the workload it is given.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim import kernels
from servesim.devices import Device
from servesim.engine import EngineProfile, get_engine
from servesim.errors import ServesimError
from servesim.memory import MemoryLayout, memory_layout
from servesim.metrics import ItlHistogram, RequestTable, Slo, summarize
from servesim.model import ModelSpec
from servesim.parallel import Parallel
from servesim.predictor import Predictor
from servesim.replica import Replica, ReplicaConfig
from servesim.workload import ClosedLoop, Workload

INF = math.inf
ROUTERS = ("round_robin", "least_loaded", "least_requests")


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
        return f"{self.replicas}x {self.device.name} {self.parallel.label()} {self.engine.name}"


@dataclass
class SimResult:
    """Everything a run produced: per-request table, token gaps, replica time series."""

    deployment: Deployment
    table: RequestTable
    itl: ItlHistogram
    memory: MemoryLayout
    replica_stats: list[dict[str, Any]]
    series: dict[str, np.ndarray]
    wall_s: float = 0.0
    _columns: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def columns(self) -> dict[str, np.ndarray]:
        """Per-request columns with derived latencies (computed once)."""
        if self._columns is None:
            self._columns = self.table.to_arrays()
        return self._columns

    def summary(self, slo: Slo | None = None) -> dict[str, Any]:
        """Latency, throughput, SLO and resource summary of the run."""
        cols = self.columns()
        s = summarize(cols, slo, self.itl)
        dep = self.deployment
        span = s["duration_s"]
        busy = sum(r["busy_s"] for r in self.replica_stats)
        energy = sum(r["energy_j"] for r in self.replica_stats)
        out_tokens = max(1, int(cols["generated_tokens"].sum()))
        s.update(
            {
                "deployment": dep.label(),
                "devices": dep.num_devices,
                "price_per_hour": dep.price_per_hour,
                "cost_usd": dep.price_per_hour * span / 3600.0,
                "energy_j": energy,
                "joules_per_output_token": energy / out_tokens,
                "utilisation": busy / max(span * len(self.replica_stats), 1e-12),
                "mean_batch_size": _time_mean(self.series["t_s"], self.series["running"]),
                "mean_kv_use": _time_mean(self.series["t_s"], self.series["kv_use"]),
                "kv_tokens_per_replica": self.memory.kv_tokens,
                "memory_gb_per_device": self.memory.as_dict(),
                "iterations": sum(r["iterations"] for r in self.replica_stats),
            }
        )
        return s


def _time_mean(t: np.ndarray, v: np.ndarray) -> float:
    if len(t) < 2:
        return float(v.mean()) if len(v) else 0.0
    dt = np.diff(t)
    total = dt.sum()
    return float((v[:-1] * dt).sum() / total) if total > 0 else float(v.mean())


def _build_replicas(
    dep: Deployment, table: RequestTable, itl: ItlHistogram, max_tokens_needed: int
) -> tuple[list[Replica], MemoryLayout]:
    """Replicas (pipeline-parallel ones as `pp` virtual engines sharing the cache)."""
    seqs, budget, chunked = dep.batching()
    mem = dep.memory()
    pred = dep.predictor()
    e = dep.engine
    pp = dep.parallel.pp
    if not chunked:
        budget = max(budget, max_tokens_needed)  # engines raise the budget to the model length
    blocks = mem.kv_tokens // e.block_size
    if max_tokens_needed > mem.kv_tokens // pp:
        raise ServesimError(
            f"A request of {max_tokens_needed} tokens does not fit the KV cache of "
            f"{mem.kv_tokens // pp} tokens per engine of {dep.label()}; use more devices per "
            "replica, fp8 KV cache, or drop requests longer than the cache."
        )
    cfg = ReplicaConfig(
        max_num_seqs=max(1, seqs // pp),
        max_num_batched_tokens=budget,
        chunked_prefill=chunked,
        mixed_batches=e.mixed_batches,
        block_size=e.block_size,
        kv_blocks=max(1, blocks // pp),
    )
    reps = [Replica(i, pred, cfg, table, itl) for i in range(dep.replicas * pp)]
    return reps, mem


def simulate(
    dep: Deployment,
    workload: Workload | None = None,
    closed_loop: ClosedLoop | None = None,
    router: str = "round_robin",
) -> SimResult:
    """Serve an open-loop workload or a closed loop of clients on a deployment."""
    import time

    if (workload is None) == (closed_loop is None):
        raise ServesimError("Give either an open-loop workload or a closed loop, not both.")
    if router not in ROUTERS:
        raise ServesimError(f"Unknown router {router!r}; use one of: {', '.join(ROUTERS)}.")
    src = closed_loop if closed_loop is not None else workload
    prompts = np.asarray(src.prompt_tokens, dtype=np.int64)
    outputs = np.asarray(src.output_tokens, dtype=np.int64)
    n = len(prompts)
    if n == 0:
        raise ServesimError("The workload has no requests.")
    if prompts.min() < 1 or outputs.min() < 1:
        raise ServesimError("Every request needs at least one prompt and one output token.")
    if closed_loop is None:
        arrivals = np.asarray(workload.arrival_s, dtype=np.float64)
        if len(arrivals) != n or np.any(np.diff(arrivals) < 0):
            raise ServesimError("Arrival times must be sorted and match the request count.")
        arrival_list = arrivals.tolist()
    else:
        arrival_list = [-1.0] * n
    table = RequestTable(arrival_list, prompts.tolist(), outputs.tolist())
    prio = getattr(src, "priority", None)
    if prio is not None:
        table.priority = np.asarray(prio, dtype=np.int64).tolist()
    itl = ItlHistogram()
    longest = int((prompts + outputs).max())
    reps, mem = _build_replicas(dep, table, itl, longest)
    t_wall = time.perf_counter()
    _run(reps, table, closed_loop, router)
    wall = time.perf_counter() - t_wall
    return _result(dep, reps, table, itl, mem, wall)


def _run(reps: list[Replica], table: RequestTable, closed: ClosedLoop | None, router: str) -> None:
    """The event loop: arrivals and replica events in time order."""
    n = len(table)
    arrivals = table.arrival_s
    # The engine sees a request after the serving frontend's fixed latency (HTTP, tokenising).
    lag = reps[0].pred.engine.request_overhead_s
    rr = 0
    pending: list[tuple[float, int]] = []  # closed-loop arrivals (time, rid)
    next_rid = 0
    if closed is not None:
        delays = closed.delays_s.tolist()
        for rid in range(min(closed.clients, n)):
            heapq.heappush(pending, (delays[rid] - closed.think_s, rid))
        next_rid = min(closed.clients, n)

    def route(rid: int) -> Replica:
        nonlocal rr
        if len(reps) == 1:
            return reps[0]
        if router == "round_robin":
            r = reps[rr % len(reps)]
            rr += 1
            return r
        if router == "least_requests":
            return min(reps, key=lambda x: (x.num_requests, x.index))
        return min(reps, key=lambda x: (x.outstanding_tokens, x.index))

    single = reps[0] if len(reps) == 1 else None
    if single is not None and closed is None:
        # The common case, kept tight: one replica fed by a known arrival sequence.
        advance, enqueue = single.advance, single.enqueue
        for rid in range(n):
            t_arr = arrivals[rid] + lag
            while single.next_t < t_arr:
                advance()
            enqueue(rid, t_arr)
        while single.next_t < INF:
            advance()
        return
    i = 0
    heap: list[tuple[float, int]] = []  # (next_t, replica index), lazily invalidated
    while True:
        if closed is None:
            t_arr = arrivals[i] + lag if i < n else INF
        else:
            t_arr = pending[0][0] + lag if pending else INF
        if single is not None:
            t_rep, rep = single.next_t, single
        else:
            while heap and heap[0][0] != reps[heap[0][1]].next_t:
                heapq.heappop(heap)
            if heap:
                t_rep, idx = heap[0]
                rep = reps[idx]
            else:
                t_rep, rep = INF, None
        if t_arr == INF and t_rep == INF:
            break
        if t_arr <= t_rep:
            if closed is None:
                rid = i
                i += 1
            else:
                sent, rid = heapq.heappop(pending)
                arrivals[rid] = sent
            target = route(rid)
            done = target.enqueue(rid, t_arr)
            if single is None:
                heapq.heappush(heap, (target.next_t, target.index))
        else:
            done = rep.advance()
            if single is None:
                heapq.heappush(heap, (rep.next_t, rep.index))
        if closed is not None and done:
            for rid in done:
                if next_rid < n:
                    heapq.heappush(pending, (table.finish_s[rid] + delays[next_rid], next_rid))
                    next_rid += 1


def _result(
    dep: Deployment,
    reps: list[Replica],
    table: RequestTable,
    itl: ItlHistogram,
    mem: MemoryLayout,
    wall: float,
) -> SimResult:
    pred = reps[0].pred
    cap_tokens = reps[0].cfg.kv_blocks * reps[0].cfg.block_size
    stats = []
    t_all: list[np.ndarray] = []
    run_all: list[np.ndarray] = []
    kv_all: list[np.ndarray] = []
    end = max((r.now for r in reps), default=0.0)
    for r in reps:
        span = max(end, 1e-12)
        stats.append(
            {
                "replica": r.index,
                "busy_s": r.busy_s,
                "iterations": r.iterations,
                "energy_j": pred.joules(span, r.busy_s) / dep.parallel.pp,
            }
        )
        samples = np.array(r.samples, dtype=np.float64).reshape(-1, 3)
        t_all.append(samples[:, 0])
        run_all.append(samples[:, 1])
        kv_all.append(samples[:, 2] / cap_tokens)
    series = _merge_series(t_all, run_all, kv_all)
    return SimResult(dep, table, itl, mem, stats, series, wall)


def _merge_series(
    t_all: list[np.ndarray], run_all: list[np.ndarray], kv_all: list[np.ndarray], points: int = 2000
) -> dict[str, np.ndarray]:
    """Cluster-wide batch size (sum) and KV use (mean) on a common time grid."""
    t_end = max((float(t[-1]) for t in t_all if len(t)), default=0.0)
    grid = np.linspace(0.0, t_end, points) if t_end > 0 else np.zeros(1)
    running = np.zeros_like(grid)
    kv = np.zeros_like(grid)
    for t, r, k in zip(t_all, run_all, kv_all, strict=True):
        if not len(t):
            continue
        idx = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
        running += r[idx]
        kv += k[idx]
    return {"t_s": grid, "running": running, "kv_use": kv / max(1, len(t_all))}
