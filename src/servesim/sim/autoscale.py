"""Autoscaling over time, and a diurnal workload to exercise it.

An `Autoscaler` looks at the replica pool every `interval_s` and sets a desired replica count
from one signal, as Kubernetes' HPA and KServe/Knative do:
- `utilisation`: the KV-cache use of the pool (vLLM's `gpu_cache_usage_perc`, the signal
  LLM autoscalers such as AIBrix use: GPU busy time is near 100% at any load), against a
  target share;
- `queue`: requests in the system per replica (Knative's concurrency target);
- `forecast`: the arrival rate predicted one cold start ahead (Holt's linear trend over the
  recent rate) divided by the rate one replica sustains.
A new replica serves only after a cold start: a fixed start-up (container, engine, CUDA graphs)
plus its share of the weights at the load bandwidth. Scale-down drains a replica (no new
requests) and releases it when empty; a stabilisation window stops flapping. Cost and idle
energy count provisioned time, cold starts included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.synthetic import LengthDist, as_length
from servesim.sim.workload import Seed, Workload, _rng
from servesim.spec.memory import weight_bytes_per_device

METRICS = ("utilisation", "queue", "forecast")
INF = math.inf


@dataclass(frozen=True)
class Autoscaler:
    """A scaling policy; `target` is a busy share, requests per replica, or req/s per replica."""

    metric: str = "utilisation"
    target: float = 0.6
    min_replicas: int = 1
    max_replicas: int = 8
    interval_s: float = 30.0
    window_s: float = 60.0
    scale_down_delay_s: float = 300.0  # stabilisation: the desired count must stay low this long
    startup_s: float = 30.0  # container start, engine init, CUDA-graph capture
    load_bw_bytes_per_s: float = 2.0e9  # per device: weights from local NVMe / a model cache

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ServesimError(
                f"Autoscaling metric {self.metric!r} is unknown; use one of {', '.join(METRICS)}."
            )
        if not (1 <= self.min_replicas <= self.max_replicas):
            raise ServesimError("Autoscaler needs 1 ≤ min_replicas ≤ max_replicas.")
        if self.target <= 0 or self.interval_s <= 0 or self.window_s <= 0:
            raise ServesimError("Autoscaler target, interval_s and window_s must be positive.")
        if self.load_bw_bytes_per_s <= 0 or self.startup_s < 0:
            raise ServesimError("Autoscaler load bandwidth must be positive and start-up ≥ 0 s.")

    def cold_start_s(self, dep: Any) -> float:
        """Seconds from asking for a replica to it serving: start-up plus weight loading (every
        device loads its own shard in parallel)."""
        shard = weight_bytes_per_device(dep.model, dep.parallel)
        return self.startup_s + shard / self.load_bw_bytes_per_s


class AutoscaleController:
    """Runs an `Autoscaler` inside the cluster loop over the entry pool's replica groups."""

    def __init__(self, policy: Autoscaler, dep: Any, pp: int) -> None:
        self.p = policy
        self.cold_s = policy.cold_start_s(dep)
        self.pp = pp
        self.initial = min(policy.max_replicas, max(policy.min_replicas, dep.replicas))
        self.groups: dict[int, list[Any]] = {}
        self.state: dict[int, str] = {}  # group -> off | starting | up | draining
        self.drain_s: dict[int, float] = {}  # group -> when it started draining
        self.low_since: float | None = None
        self.arrival_s: np.ndarray | None = None
        self.arrivals: list[float] = []  # recent arrival times (rate forecast)
        self.level = 0.0
        self.trend = 0.0
        # A closed loop's send times are recorded only when the forecast needs them.
        self.wants_arrivals = policy.metric == "forecast"

    def start(self, cluster: Any, which: int) -> None:
        """Provision the initial replicas, park the rest, schedule the first tick."""
        for r in cluster.entry:
            self.groups.setdefault(r.group, []).append(r)
        initial = self.initial
        for g, members in sorted(self.groups.items()):
            up = g < initial
            self.state[g] = "up" if up else "off"
            for r in members:
                r.provisioned = [[0.0, INF]] if up else []
        self._publish(cluster)
        cluster.stats.scale_events.append((0.0, initial))
        cluster.schedule_tick(self.p.interval_s, which)

    def _publish(self, cluster: Any) -> None:
        cluster.active_entry = [
            r
            for g, members in sorted(self.groups.items())
            if self.state[g] == "up"
            for r in members
        ]

    def _count(self, *states: str) -> int:
        return sum(1 for s in self.state.values() if s in states)

    def tick(self, cluster: Any, t: float, which: int, busy: bool, kind: int = 0) -> None:
        """Measure, decide, act; then come back after `interval_s` while work remains.
        `kind` 1 is the end of a cold start: the new replica joins the router at once."""
        p = self.p
        # Replicas that finished starting serve from now on.
        for g, s in self.state.items():
            if s == "starting" and self.groups[g][0].provisioned[-1][0] + self.cold_s <= t + 1e-9:
                self.state[g] = "up"
        # Drained replicas are released once empty, with no live migration to or from them in
        # flight (one landing on a released replica would run there unpaid for). A replica
        # that emptied before it was told to drain was serving (and paid for) until then.
        moving = cluster.migrating_reps
        for g, s in self.state.items():
            members = self.groups[g]
            if s == "draining" and all(
                r.num_requests == 0 and r.next_t == INF and r.index not in moving for r in members
            ):
                self.state[g] = "off"
                for r in members:
                    r.provisioned[-1][1] = max(r.now, r.provisioned[-1][0], self.drain_s[g])
        if kind == 1:
            self._publish(cluster)
            return
        want = self._desired(cluster, t)
        up = self._count("up", "starting")
        if want > up:
            self.low_since = None
            for g in sorted(self.groups):
                if up >= want:
                    break
                if self.state[g] == "draining":  # cheaper to keep it than to start another
                    self.state[g] = "up"
                    up += 1
            for g in sorted(self.groups):
                if up >= want:
                    break
                if self.state[g] == "off":
                    self.state[g] = "starting"
                    for r in self.groups[g]:
                        r.provisioned.append([t, INF])
                        r.now = max(r.now, t + self.cold_s)
                    cluster.stats.cold_starts += 1
                    cluster.schedule_tick(t + self.cold_s, which, 1)
                    up += 1
        elif want < up:
            if self.low_since is None:
                self.low_since = t
            if t - self.low_since >= p.scale_down_delay_s:
                for g in sorted(self.groups, reverse=True):
                    if up <= want:
                        break
                    if self.state[g] == "up" and self._count("up") > 1:
                        self.state[g] = "draining"
                        self.drain_s[g] = t
                        up -= 1
                self.low_since = None
        else:
            self.low_since = None
        self._publish(cluster)
        events = cluster.stats.scale_events
        n_up = self._count("up", "starting")
        if not events or events[-1][1] != n_up:
            events.append((t, n_up))
        if busy or self._count("starting", "draining"):
            cluster.schedule_tick(t + p.interval_s, which)
        else:  # the run is over: release everything at the last replica's end
            end = max((r.now for r in cluster.entry), default=t)
            for members in self.groups.values():
                for r in members:
                    if r.provisioned and r.provisioned[-1][1] == INF:
                        r.provisioned[-1][1] = max(end, r.provisioned[-1][0])

    def _desired(self, cluster: Any, t: float) -> int:
        p = self.p
        active = [r for g, s in self.state.items() if s == "up" for r in self.groups[g]]
        groups_up = max(1, self._count("up"))
        if p.metric == "utilisation":
            used = sum(r.kv_used_estimate + r.queued_tokens / r.cfg.block_size for r in active)
            util = used / max(1, sum(r.kv_blocks for r in active))
            want = math.ceil(groups_up * util / p.target)
        elif p.metric == "queue":
            load = sum(r.num_requests for r in cluster.entry)
            want = math.ceil(load / p.target)
        else:
            want = math.ceil(self._forecast(cluster, t) / p.target)
        return min(p.max_replicas, max(p.min_replicas, want))

    def _forecast(self, cluster: Any, t: float) -> float:
        """Arrival rate one cold start ahead: Holt's linear smoothing of the windowed rate."""
        if self.arrival_s is None:  # the arrivals known at the first forecast
            known = cluster.arrival_s
            self.arrival_s = known if cluster.closed is None else np.array(known)
        arr = self.arrival_s
        lo = np.searchsorted(arr, t - self.p.window_s)
        hi = np.searchsorted(arr, t)
        rate = (hi - lo) / self.p.window_s
        alpha, beta = 0.5, 0.3
        prev = self.level
        self.level = alpha * rate + (1 - alpha) * (self.level + self.trend)
        self.trend = beta * (self.level - prev) + (1 - beta) * self.trend
        ahead = (self.cold_s + self.p.interval_s) / self.p.interval_s
        return max(0.0, self.level + ahead * self.trend)


def diurnal(
    duration_s: float,
    mean_rate_per_s: float,
    prompt: LengthDist | int | str,
    output: LengthDist | int | str,
    peak_to_trough: float = 4.0,
    peak_hour: float = 14.0,
    bursts_per_day: float = 8.0,
    burst_factor: float = 3.0,
    burst_s: float = 600.0,
    seed: Seed = 0,
    name: str = "diurnal",
) -> Workload:
    """A day-shaped open-loop workload: a cosine rate over 24 h (peak at `peak_hour`, peak to
    trough ratio given) with bursts (Poisson in time, each multiplying the rate by
    `burst_factor` for `burst_s`), scaled so the mean rate is `mean_rate_per_s`. Arrivals are a
    non-homogeneous Poisson process drawn by inverting the integrated rate."""
    if duration_s <= 0 or mean_rate_per_s <= 0 or peak_to_trough < 1 or burst_factor < 1:
        raise ServesimError(
            "diurnal() needs duration_s > 0, mean_rate_per_s > 0, peak_to_trough ≥ 1 and "
            "burst_factor ≥ 1."
        )
    gen = _rng(seed)
    step = 1.0
    t = np.arange(0.0, duration_s, step)
    a = (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    rate = 1.0 + a * np.cos(2 * np.pi * (t / 86400.0 - peak_hour / 24.0))
    n_bursts = gen.poisson(bursts_per_day * duration_s / 86400.0)
    for start in gen.uniform(0.0, duration_s, size=n_bursts):
        rate[(t >= start) & (t < start + burst_s)] *= burst_factor
    rate *= mean_rate_per_s / rate.mean()
    cum = np.concatenate(([0.0], np.cumsum(rate * step)))
    total = cum[-1]
    n = gen.poisson(total)
    if n < 1:
        raise ServesimError("diurnal() drew no requests; raise the rate or the duration.")
    u = np.sort(gen.uniform(0.0, total, size=n))
    arrivals = np.interp(u, cum, np.concatenate((t, [duration_s])))
    p, o = as_length(prompt), as_length(output)
    return Workload(arrivals, p.sample(n, gen), o.sample(n, gen), name=name)
