"""A finished run: `result` checks that every request finished exactly once, then collects the
replicas' statistics, time series and energy into a `SimResult`, whose `summary` is what the
CLI prints and the planner ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.predictor import twin_efficiency
from servesim.sim.cluster import ClusterStats
from servesim.sim.metrics import ItlHistogram, RunSummary, Slo
from servesim.sim.pool import Requests
from servesim.sim.records import RecordSink
from servesim.sim.replica import Replica
from servesim.spec.memory import MemoryLayout


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
    # Requests 0..warmup_requests-1 were a closed loop's warm-up: kept in the records, left out
    # of the summary's latencies and throughput (as the benchmark clients report them).
    warmup_requests: int = 0
    # Time means over the run (first arrival to end) integrated from every sample, not read
    # off the series' grid (None: the grid's, as for a run built without `result`).
    time_means: dict[str, float] | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """Per-request columns ordered by request id, with derived latencies (computed once;
        a run streamed to Parquet reads its file back)."""
        return self.records.columns()

    def _run_mean(self, series_key: str, key: str) -> float:
        """A time mean of the run: integrated from every sample where `result` could
        (`time_means`), else read off the series' grid."""
        if self.time_means is not None:
            return self.time_means[key]
        return _time_mean(self.series["t_s"], self.series[series_key])

    def summary(self, slo: Slo | None = None) -> dict[str, Any]:
        """Latency, throughput, SLO and resource summary of the run (one pass over the
        records, in memory or in the Parquet file, in fixed memory)."""
        rec = self.records
        window = None
        if "scale_events" in self.extra:  # autoscaled: how attainment moved with the load
            window = max(60.0, max(rec.end_s - rec.start_s, 1e-12) / 24.0)
        acc = RunSummary(slo, window)
        w = self.warmup_requests
        gen_all = in_all = 0
        for chunk in rec.chunks(_SUMMARY_COLUMNS):
            if w:
                gen_all += int(chunk["generated_tokens"].sum())
                in_all += int(chunk["prompt_tokens"][chunk["finish_s"] >= 0].sum())
                keep = chunk["request_id"] >= w
                if not keep.all():
                    chunk = {k: v[keep] for k, v in chunk.items()}
            acc.add(chunk)
        # With a warm-up phase the gaps count from the measured phase on, as every other
        # latency does (the warm-up ends, at its barrier, before a measured request is sent).
        s = acc.result(self.itl.since_mark() if w else self.itl)
        dep = self.deployment
        span = s["duration_s"]
        out_tokens = max(1, acc.generated)
        all_tokens = out_tokens + acc.in_tokens
        if w:  # latencies are the measured requests'; energy, cost and use the whole run's
            span = max(rec.end_s - rec.start_s, 1e-12)
            out_tokens, all_tokens = max(1, gen_all), max(1, gen_all) + in_all
        busy = sum(r["busy_s"] for r in self.replica_stats)
        up_s = self.provisioned_replica_s
        if up_s is None:
            up_s = span * len(self.replica_stats)
        energy = sum(r["energy_j"] for r in self.replica_stats)
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
                "mean_batch_size": self._run_mean("running", "mean_batch_size"),
                "mean_kv_use": self._run_mean("kv_use", "mean_kv_use"),
                "kv_tokens_per_replica": self.memory.kv_tokens,
                "memory_gb_per_device": self.memory.as_dict(),
                "iterations": sum(r["iterations"] for r in self.replica_stats),
            }
        )
        if w:  # its records' first ids: a comparison of the per-request file leaves them out
            s["warmup_requests"] = w
        s.update(latency_provenance(dep))
        s.update(engine_loop(dep))
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


def latency_provenance(dep: Any) -> dict[str, Any]:
    """The latency model and the operator shapes its predictors priced, by provenance
    (measured, interpolated, extrapolated, roofline; see `Predictor.provenance_counts`), summed
    over the deployment's pools, and the twin GPUs whose measured efficiencies priced a GPU
    without tables. Empty for deployments whose predictors are built elsewhere."""
    pools = [getattr(dep, n, None) for n in ("prefill", "decode")] if hasattr(dep, "decode") else []
    pools = [p for p in pools if p is not None] or [dep]
    counts: dict[str, int] = {}
    models: list[str] = []
    twins: dict[str, float] = {}
    for pool in pools:
        if getattr(pool, "profiled", None) is not None or not hasattr(pool, "latency_model"):
            continue
        pred = pool.predictor()
        if not hasattr(pred, "provenance_counts"):
            continue
        models.append(getattr(pred, "latency_model", pool.latency_model))
        for k, v in pred.provenance_counts().items():
            counts[k] = counts.get(k, 0) + v
        fit, device = getattr(pred, "fit", None), getattr(pred, "device", None)
        if fit is not None and device is not None:
            twins.update(twin_efficiency.priced_by(fit, device))
    if not models:
        return {}
    out: dict[str, Any] = {"latency_model": models[0], "latency_provenance": counts}
    if twins:  # a GPU without tables priced from its twins' (`twin_efficiency`)
        out["twin_gpus"] = twins
    return out


def engine_loop(dep: Any) -> dict[str, Any]:
    """How the engine that decodes runs its loop, after its own rules: whether it schedules the
    next iteration while one runs (`Deployment.overlaps`) and its cap on running sequences
    (`Deployment.batching`). Empty for deployments without them."""
    pool = getattr(dep, "decode", dep)
    if not (hasattr(pool, "overlaps") and hasattr(pool, "batching")):
        return {}
    return {"overlap_scheduling": pool.overlaps(), "max_num_seqs": pool.batching()[0]}


def _integral(t: np.ndarray, v: np.ndarray, end: float, linear: bool) -> float:
    """∫ v dt from a replica's first sample to `end`: v holds each sample until the next
    (`linear` False) or runs linearly between them (KV tokens; two samples at one time are a
    step), and holds the last one to `end`. Before its first sample a replica holds nothing."""
    if not len(t):
        return 0.0
    dt = np.diff(t)
    inner = (0.5 * (v[:-1] + v[1:]) if linear else v[:-1]) * dt
    return float(inner.sum() + v[-1] * max(0.0, end - t[-1]))


def _time_mean(t: np.ndarray, v: np.ndarray) -> float:
    if len(t) < 2:
        return float(v.mean()) if len(v) else 0.0
    dt = np.diff(t)
    total = dt.sum()
    return float((v[:-1] * dt).sum() / total) if total > 0 else float(v.mean())


def replica_energy_j(
    r: Replica, end_s: float, decode_context_tokens: float, start_s: float = 0.0
) -> float:
    """Energy of one replica (or virtual engine): idle power while provisioned from `start_s`
    (its share of the devices) plus the dynamic power of the work its iterations did."""
    up = r.provisioned_s(end_s, start_s)
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
    if req.closed is not None:
        res.warmup_requests = req.closed.warmup_requests
    if stats is not None:
        finish_events = stats.finish_events
    table.close(finish_events)
    stats_out = res.replica_stats
    samples: list[ReplicaSamples] = []
    end = max((r.now for r in reps), default=0.0)
    # The run's window: from its first arrival (idle power, rent and time means count from
    # there, as its duration does) to its end.
    start = min(table.sink.start_s, end)
    device_s = 0.0
    price_s = 0.0
    contexts = np.zeros(max(len(reps), len(table.decode_context)))
    contexts[: len(table.decode_context)] = table.decode_context
    for r in reps:
        up = r.provisioned_s(end, start)
        stats_out.append(
            {
                "replica": r.index,
                "role": r.role,
                "busy_s": r.busy_s,
                "iterations": r.iterations,
                "energy_j": replica_energy_j(r, end, float(contexts[r.index]), start),
                "provisioned_s": up,
            }
        )
        # An AF-disaggregated replica (predictor.af_disagg) also rents its expert pool.
        n_dev = getattr(r.pred, "num_gpus", r.pred.par.num_devices)
        per_hour = getattr(r.pred, "price_per_hour", n_dev * r.pred.device.price_per_hour)
        device_s += up * n_dev * r.idle_share
        price_s += up * per_hour * r.idle_share
        # KV tokens this engine's share of its replica's cache holds (pipeline stages hold a
        # slice each; semi-PD lanes share one cache, each counted for half)
        cap = r.cfg.kv_blocks * r.cfg.block_size * r.idle_share * r.pp
        samples.append(ReplicaSamples.of(*r.series_arrays(), cap, r.provisioned))
    res.series = _merge_series(samples, start=start)
    res.time_means = _exact_means(samples, start, end)
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


@dataclass(frozen=True)
class ReplicaSamples:
    """One replica's time series samples in time order (sequences running, KV tokens held),
    the KV tokens its cache holds and the spans it was provisioned."""

    t: np.ndarray
    running: np.ndarray
    kv: np.ndarray
    cap: float
    spans: list[list[float]]

    @classmethod
    def of(
        cls, t: np.ndarray, running: np.ndarray, kv: np.ndarray, cap: float, spans: list
    ) -> ReplicaSamples:
        """The samples put in time order (a semi-PD lane can log a hand-over at its time
        ahead of a controller tick it sees later)."""
        if np.any(t[1:] < t[:-1]):
            order = np.argsort(t, kind="stable")
            t, running, kv = t[order], running[order], kv[order]
        return cls(t, running, kv, cap, spans)


def _exact_means(
    samples: list[ReplicaSamples], start: float, end: float
) -> dict[str, float] | None:
    """Mean sequences running and mean KV use over [start, end] from every sample (a short
    burst between two points of the series' grid counts as much as it lasted); None when
    replicas came and went (autoscaling: the KV use is over the replicas up at each time,
    which the grid's series keeps; replicas never up count for nothing)."""
    span = end - start
    if span <= 0:
        return None
    cap = 0.0
    for rs in samples:
        if not rs.spans:
            continue  # a parked replica, never up: no cache to count
        if len(rs.spans) != 1 or rs.spans[0][0] > start or rs.spans[0][1] < end:
            return None
        cap += rs.cap
    run_s = sum(_integral(rs.t, rs.running, end, linear=False) for rs in samples)
    kv_s = sum(_integral(rs.t, rs.kv, end, linear=True) for rs in samples)
    return {"mean_batch_size": run_s / span, "mean_kv_use": kv_s / span / cap if cap else 0.0}


def _merge_series(
    samples: list[ReplicaSamples], points: int = 2000, start: float = 0.0
) -> dict[str, np.ndarray]:
    """Cluster-wide batch size (sum) and KV use on a common time grid: the KV tokens held over
    the KV tokens of the replicas provisioned at that time (an autoscaled pool's parked
    replicas count for nothing). Sequences running hold their value until the next sample;
    KV tokens run linearly between samples, as a decode stretch grows them."""
    t_end = max((float(rs.t[-1]) for rs in samples if len(rs.t)), default=0.0)
    t0 = min(start, t_end)
    grid = np.linspace(t0, t_end, points) if t_end > t0 else np.full(1, t_end)
    running = np.zeros_like(grid)
    held = np.zeros_like(grid)
    cap = np.zeros_like(grid)
    for rs in samples:
        t, r, k = rs.t, rs.running, rs.kv
        up = np.zeros(len(grid), dtype=bool)
        for a, b in rs.spans:
            up |= (grid >= a) & (grid <= b)
        cap += rs.cap * up
        if not len(t):
            continue
        idx = np.searchsorted(t, grid, side="right") - 1
        seen = idx >= 0  # before its first scheduling decision a replica holds nothing
        idx = np.maximum(idx, 0)
        running += r[idx] * seen
        # KV grows through a decode stretch (one sample at its start, one at its end before
        # releases): linear between samples, a step where two share a time.
        held += np.interp(grid, t, k) * (up & seen)
    kv = np.divide(held, cap, out=np.zeros_like(grid), where=cap > 0)
    return {"t_s": grid, "running": running, "kv_use": kv}
