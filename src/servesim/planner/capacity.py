"""Capacity search: the highest request rate a deployment sustains with its SLO attainment met.

A capacity is a steady-state property, so neither the warm-up of an empty engine nor the drain
after the last arrival may count, and a short run must not hide a growing queue:

1. Service rate. The workload is queued at once and completions are counted only between the
   fill and the drain: after the first C finishes and before the last C, where C is the number
   of requests in service at full load. That steady part must hold at least
   max(2 C, `MIN_WINDOW_REQUESTS`) completions, else the burst is made longer. No rate at or
   above the service rate is sustainable (the queue grows without bound, or drifts like a
   random walk at exactly that rate), so the highest probe is one search step below it: an
   overloaded rate is never reported, however short the workload.
2. Probes. At each rate the workload is replayed long enough for a steady state and only
   requests arriving in the steady window count: after a warm-up of R (R the mean time a
   request spends in service at full load, the longest it can be: by then the batch has filled
   and turned over) and before the last R of arrivals (the drain, when batches thin out). The
   window spans at least 2 R and holds at least `MIN_WINDOW_REQUESTS` requests. Near the
   service rate a few per cent more work decides between a steady queue and a growing one, so
   a rate that passes must also pass a window long enough to carry the workload's average
   load (`window_requests`); most rates there already fail the short window, which is cheap.

A workload too short for either is extended: with `draw` (more requests from the same source,
e.g. more of the trace) or by tiling it, and `Capacity.probe_requests` says how many were used.
Probes depend on the deployment, workload and rate only, never on the SLO, and the search is a
deterministic bracketing (the floor, the top, halving, then bisection in log-rate), so a looser
SLO can never yield a lower capacity. Every probe is kept (rate, attainment, latency
percentiles) so a report can draw goodput against rate without simulating again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import Slo, meets_tpot
from servesim.sim.result import SimResult
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload

WARMUP_RESIDENCES = 1.0  # arrivals in the first R are warm-up (the batch fills and turns over)
DRAIN_RESIDENCES = 1.0  # arrivals in the last R run into the drain (batches thin out)
WINDOW_RESIDENCES = 2.0  # the measured window spans at least 2 R ...
# ... and holds at least this many requests (so does the burst's steady part): enough that the
# load a window carries is known to about 1/sqrt(1000) = 3 %, the search's own resolution.
MIN_WINDOW_REQUESTS = 1000
MAX_WINDOW_REQUESTS = 20000

Draw = Callable[[int], Workload]  # n requests from the workload's source, at its own rate


@dataclass(frozen=True)
class Probe:
    """One simulated rate: what fraction met the SLO in the steady window, and its tails."""

    rate_per_s: float
    attainment: float
    ttft_ok: float  # fraction meeting the TTFT target alone
    tpot_ok: float  # fraction meeting the TPOT target alone
    ttft_p90_s: float
    tpot_p90_s: float
    throughput_req_per_s: float  # completions per second of the window's requests
    requests: int = 0  # requests simulated
    window_requests: int = 0  # requests arriving in the steady window (the ones counted)


@dataclass(frozen=True)
class ServiceRate:
    """A deployment's sustained throughput on a workload, from the steady part of a burst."""

    rate_per_s: float  # completions per second between fill and drain
    residence_s: float  # mean time from admission to finish there (R)
    concurrency: float  # requests in service at full load (C)
    requests: int  # burst size used


@dataclass
class Capacity:
    """Result of a capacity search on one deployment."""

    rate_per_s: float  # highest probed rate meeting the target (0 if none)
    saturation_rate_per_s: float  # the service rate: no probe goes above it
    feasible: bool
    probes: list[Probe] = field(default_factory=list)
    best: SimResult | None = None  # the simulation at `rate_per_s`
    miss: str = ""  # why no rate met the target, when infeasible
    residence_s: float = math.nan  # R of the service-rate burst
    probe_requests: int = 0  # most requests any simulation of the search used
    given_requests: int = 0  # requests in the workload passed in
    window: tuple[float, float] = (0.0, math.inf)  # arrivals counted in `best`

    @property
    def extended(self) -> bool:
        """Whether the given workload was too short and the search drew more requests."""
        return self.probe_requests > self.given_requests

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for stores and reports."""
        return {
            "capacity_req_per_s": self.rate_per_s,
            "saturation_req_per_s": self.saturation_rate_per_s,
            "feasible": self.feasible,
            "miss": self.miss,
            "residence_s": self.residence_s,
            "probe_requests": self.probe_requests,
        }


# ---- steady-state measurement ---------------------------------------------------------------


def window_requests(load: float) -> int:
    """Requests the steady window holds at `load` (the rate over the service rate).

    A window of N requests carries its workload's average load to within about 1/sqrt(N)
    (Poisson arrivals; the mix of lengths adds to it). Near saturation that must be small
    against the headroom, so N >= (2 / (1 - load))²: one standard deviation is half the
    headroom. At least `MIN_WINDOW_REQUESTS`, at most `MAX_WINDOW_REQUESTS`.
    """
    if not load < 1.0:
        return MAX_WINDOW_REQUESTS
    return int(min(MAX_WINDOW_REQUESTS, max(MIN_WINDOW_REQUESTS, (2.0 / (1.0 - load)) ** 2)))


def requests_for(rate_per_s: float, residence_s: float, load: float = 0.0) -> int:
    """Requests whose arrivals at `rate_per_s` span warm-up, a full steady window and drain.

    `load` is the rate over the deployment's service rate (0 when unknown)."""
    r = residence_s if math.isfinite(residence_s) else 0.0
    span = (WARMUP_RESIDENCES + DRAIN_RESIDENCES) * r + max(
        WINDOW_RESIDENCES * r, window_requests(load) / rate_per_s
    )
    return math.ceil(rate_per_s * span) + 1


def steady_window(arrival_s: np.ndarray, residence_s: float) -> tuple[float, float]:
    """Arrival times [start, end) counted: after the warm-up, before the drain."""
    t0, t1 = float(arrival_s[0]), float(arrival_s[-1])
    r = residence_s if math.isfinite(residence_s) else 0.0
    lo, hi = t0 + WARMUP_RESIDENCES * r, t1 - DRAIN_RESIDENCES * r
    if hi <= lo:  # too short to have a steady part: count everything (callers size runs so
        return t0, math.inf  # this only happens for a workload shorter than asked for)
    return lo, hi


def window_columns(res: SimResult, window: tuple[float, float]) -> dict[str, np.ndarray]:
    """The per-request columns of the requests that arrived in `window`."""
    cols = res.columns()
    a = cols["arrival_s"]
    sel = (a >= window[0]) & (a < window[1])
    return {k: v[sel] for k, v in cols.items()}


def measure(res: SimResult, slo: Slo, window: tuple[float, float], rate_per_s: float) -> Probe:
    """Attainment and tails of the requests arriving in the steady window of a run."""
    cols = window_columns(res, window)
    ttft, tpot = cols["ttft_s"], cols["tpot_s"]
    n = len(ttft)
    if n == 0:
        raise ServesimError("No request arrived in the steady window; use a longer workload.")
    done = cols["finish_s"] >= 0
    ok_t = ttft <= slo.ttft_s  # unfinished requests (nan) meet nothing
    ok_p = meets_tpot(tpot, done, slo.tpot_s)
    span = float(cols["finish_s"][done].max() - cols["arrival_s"].min()) if done.any() else 0.0
    return Probe(
        rate_per_s=rate_per_s,
        attainment=float((ok_t & ok_p).sum() / n),
        ttft_ok=float(ok_t.sum() / n),
        tpot_ok=float(ok_p.sum() / n),
        ttft_p90_s=_pct(ttft, 90),
        tpot_p90_s=_pct(tpot, 90),
        throughput_req_per_s=int(done.sum()) / span if span > 0 else math.nan,
        requests=len(res.columns()["arrival_s"]),
        window_requests=n,
    )


def _pct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else math.nan


def _at_least(base: Workload, draw: Draw, n: int) -> Workload:
    """The workload itself when it has `n` requests or more, else `n` drawn from its source."""
    if len(base) >= n:
        return base
    work = draw(n)
    if len(work) < n:
        raise ServesimError(f"The workload source gave {len(work)} requests where {n} are needed.")
    return work


def steady_attainment(
    dep: Any,
    base: Workload,
    rate_per_s: float,
    slo: Slo,
    residence_s: float,
    router: str = "least_loaded",
    draw: Draw | None = None,
    load: float = 0.0,
) -> tuple[Probe, SimResult, tuple[float, float]]:
    """Simulate `dep` at `rate_per_s` long enough for a steady state and measure its window.

    `residence_s` is R of one replica at full load (`service_rate`); it sets the warm-up, drain
    and window lengths, which do not depend on the replica count (a fleet of n replicas turns
    over in the same R). `load` is the rate over the whole deployment's service rate (0 when
    unknown; near 1 the window holds more requests). Used by the capacity search and by fleet
    verification alike.
    """
    n = requests_for(rate_per_s, residence_s, load)
    work = _at_least(base, draw or base.tiled, n)
    scaled = work.scaled_to_rate(rate_per_s)
    res = simulate(dep, scaled, router=router)
    window = steady_window(scaled.arrival_s, residence_s)
    return measure(res, slo, window, rate_per_s), res, window


def service_rate(
    dep: Any, base: Workload, router: str = "least_loaded", draw: Draw | None = None
) -> ServiceRate:
    """Completions per second with the workload queued at once, fill and drain excluded.

    The burst grows (drawing more requests) until its steady part holds at least
    max(2 C, `MIN_WINDOW_REQUESTS`) completions, C the requests in service at full load.
    """
    draw = draw or base.tiled
    n = max(len(base), _burst_guess(dep))
    for _ in range(6):
        work = _at_least(base, draw, n)
        burst = work._take(slice(None), np.zeros(len(work)))
        burst.name = f"{base.name}-burst"
        res = simulate(dep, burst, router=router)
        fin = res.columns()["finish_s"]
        if np.any(fin < 0):
            raise ServesimError(
                f"{int((fin < 0).sum())} of {len(fin)} requests never finished when queued at "
                f"once on {dep.label()}; the deployment cannot serve this workload."
            )
        fin = np.sort(fin)
        k = len(fin)
        # Requests in service (running in a batch, not queued) between the first and the last
        # quarter of the finishes: inside the steady part whenever the burst is long enough.
        t, running = res.series["t_s"], res.series["running"]
        mid = (t >= fin[k // 4]) & (t <= fin[3 * k // 4])
        c = max(1, math.ceil(float(running[mid].mean()) if mid.any() else 1.0))
        need = 2 * c + max(math.ceil(WINDOW_RESIDENCES * c), MIN_WINDOW_REQUESTS)
        if k >= need:
            a, b = fin[c - 1], fin[k - c - 1]
            rate = float((k - 2 * c) / (b - a)) if b > a else math.inf
            # Little's law: C requests in service, completing at `rate`, stay C / rate each.
            return ServiceRate(rate, c / rate, float(c), k)
        n = max(need, int(n * 1.5))
    raise ServesimError(
        f"The burst on {dep.label()} never reached a steady part; the workload is too irregular "
        "to measure a service rate."
    )


def _burst_guess(dep: Any) -> int:
    """A first burst size whose steady part is long enough when a batch holds its sequence
    limit (the common case for colocated replicas; otherwise the burst grows once)."""
    c = 0
    if isinstance(dep, Deployment) and dep.autoscaler is None:
        c = dep.batching()[0] * dep.replicas
    return 2 * c + max(math.ceil(WINDOW_RESIDENCES * c), MIN_WINDOW_REQUESTS) + c // 4 + 250


# ---- the search -----------------------------------------------------------------------------


def find_capacity(
    dep: Any,
    base: Workload,
    slo: Slo,
    target: float = 0.9,
    rel_tol: float = 0.03,
    floor_ratio: float = 1.0 / 64.0,
    criterion: str = "both",
    router: str = "least_loaded",
    draw: Draw | None = None,
) -> Capacity:
    """Highest sustainable rate (within `rel_tol`) at which `target` of requests meet the SLO.

    `criterion` "both": a request counts when it meets both targets (the SLO attainment
    servesim reports); "each": DistServe's rule, each target met by `target` of requests on
    its own. `router` spreads arrivals over a deployment's replicas. `draw(n)` gives n requests
    from the workload's source when it is too short (default: tile it).

    Probes the floor (`floor_ratio` × the service rate), then the top (the service rate less
    `rel_tol`), halving until a probe passes, then bisects in log-rate. When even the floor
    misses, the result is infeasible and `miss` says which target failed and by how much at
    that lightest load.
    """
    if not 0.0 < target <= 1.0:
        raise ServesimError(f"SLO attainment target must be in (0, 1], got {target}.")
    if criterion not in ("both", "each"):
        raise ServesimError(f"Unknown attainment criterion {criterion!r}; use 'both' or 'each'.")
    if len(base) < 10:
        raise ServesimError("A capacity search needs a workload of at least 10 requests.")

    def passes(p: Probe) -> bool:
        if criterion == "each":
            return min(p.ttft_ok, p.tpot_ok) >= target
        return p.attainment >= target

    svc = service_rate(dep, base, router, draw)
    mu, r = svc.rate_per_s, svc.residence_s
    probes: list[Probe] = []
    used = [svc.requests]

    def run(rate: float) -> tuple[bool, SimResult, tuple[float, float]]:
        # A window of `MIN_WINDOW_REQUESTS` first; near the service rate, a rate that passes
        # it must pass the longer window too (most probes there fail the short one: cheap).
        p, res, window = steady_attainment(dep, base, rate, slo, r, router, draw)
        n_long = max(len(base), requests_for(rate, r, rate / mu))
        if passes(p) and n_long > max(len(base), requests_for(rate, r)):
            p, res, window = steady_attainment(dep, base, rate, slo, r, router, draw, rate / mu)
        probes.append(p)
        used.append(p.requests)
        return passes(p), res, window

    def done(rate: float, best: SimResult | None, window: tuple[float, float]) -> Capacity:
        probes.sort(key=lambda q: q.rate_per_s)
        return Capacity(rate, mu, rate > 0, probes, best, "", r, max(used), len(base), window)

    lo = mu * floor_ratio
    ok, best, best_w = run(lo)
    if not ok:
        cap = done(0.0, best, best_w)
        cap.miss = explain_miss(probes[0], slo, target)
        return cap
    # At the service rate itself the queue is critical (it drifts like a random walk): the
    # highest rate that can be sustained is one search step below it.
    top = mu / (1.0 + rel_tol)
    ok, res, window = run(top)
    if ok:
        return done(top, res, window)
    hi = top
    rate = top / 2.0
    while rate > lo * (1.0 + rel_tol):
        ok, res, window = run(rate)
        if ok:
            lo, best, best_w = rate, res, window
            break
        hi, rate = rate, rate / 2.0
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        ok, res, window = run(mid)
        if ok:
            lo, best, best_w = mid, res, window
        else:
            hi = mid
    return done(lo, best, best_w)


def target_text(target: float) -> str:
    """A share target as a percentage as given: 99.5%, not the 100% whole percent would show."""
    return f"{target * 100:.4g}%"


def share_text(x: float, target: float) -> str:
    """`x` (a fraction) as a percentage with as few decimals as tell it from `target`: a share
    just below the target (0.899 of 0.9) never prints as the target itself ("90%")."""
    for digits in range(4):
        shown = f"{x * 100:.{digits}f}"
        if x >= target or float(shown) < target * 100:
            return shown + "%"
    return f"{x * 100:.4f}%"


def explain_miss(p: Probe, slo: Slo, target: float) -> str:
    """One sentence on the closest miss: which latency target fails, by how much, at light load."""
    parts = []
    if p.ttft_ok < target:
        parts.append(
            f"TTFT p90 is {p.ttft_p90_s * 1e3:.0f} ms against a {slo.ttft_s * 1e3:.0f} ms target "
            f"({share_text(p.ttft_ok, target)} of requests meet it)"
        )
    if p.tpot_ok < target:
        parts.append(
            f"TPOT p90 is {p.tpot_p90_s * 1e3:.1f} ms against a {slo.tpot_s * 1e3:.1f} ms target "
            f"({share_text(p.tpot_ok, target)} meet it)"
        )
    if not parts:
        parts.append(f"only {share_text(p.attainment, target)} meet both targets")
    return (
        f"even at {p.rate_per_s:.3g} req/s "
        + " and ".join(parts)
        + f"; {target_text(target)} must meet both"
    )
