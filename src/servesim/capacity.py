"""Capacity search: the highest request rate a deployment serves with its SLO attainment met.

The workload's own arrival pattern is scaled to each probed rate. The search first measures the
saturation rate (every request queued at once: an upper bound on what can be served), then
bisects in log-rate between a floor and that bound. Simulations are deterministic and every
probe of a search is the same for any SLO until the attainments differ, so a looser SLO can never
yield a lower capacity. Each probe is kept (rate, attainment, latency percentiles) so a report can
draw goodput against rate without simulating again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.metrics import Slo
from servesim.simulator import Deployment, SimResult, simulate
from servesim.workload import Workload


@dataclass(frozen=True)
class Probe:
    """One simulated rate: what fraction met the SLO and the tail latencies seen."""

    rate_per_s: float
    attainment: float
    ttft_ok: float  # fraction meeting the TTFT target alone
    tpot_ok: float  # fraction meeting the TPOT target alone
    ttft_p90_s: float
    tpot_p90_s: float
    throughput_req_per_s: float


@dataclass
class Capacity:
    """Result of a capacity search on one deployment."""

    rate_per_s: float  # highest probed rate meeting the target (0 if none)
    saturation_rate_per_s: float  # requests/s with every request queued at once
    feasible: bool
    probes: list[Probe] = field(default_factory=list)
    best: SimResult | None = None  # the simulation at `rate_per_s`
    miss: str = ""  # why no rate met the target, when infeasible

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for stores and reports."""
        return {
            "capacity_req_per_s": self.rate_per_s,
            "saturation_req_per_s": self.saturation_rate_per_s,
            "feasible": self.feasible,
            "miss": self.miss,
        }


def _span_s(cols: dict[str, np.ndarray]) -> float:
    """First arrival to last finish of a run."""
    return float(np.nanmax(cols["finish_s"]) - np.nanmin(cols["arrival_s"]))


def _probe(
    dep: Deployment, base: Workload, rate: float, slo: Slo, router: str
) -> tuple[Probe, SimResult]:
    res = simulate(dep, base.scaled_to_rate(rate), router=router)
    cols = res.columns()
    ttft, tpot = cols["ttft_s"], cols["tpot_s"]
    ok_t = ttft <= slo.ttft_s
    ok_p = tpot <= slo.tpot_s
    n = len(ttft)
    span = _span_s(cols)
    p = Probe(
        rate_per_s=rate,
        attainment=float((ok_t & ok_p).sum() / n),
        ttft_ok=float(ok_t.sum() / n),
        tpot_ok=float(ok_p.sum() / n),
        ttft_p90_s=float(np.nanpercentile(ttft, 90)),
        tpot_p90_s=float(np.nanpercentile(tpot, 90)),
        throughput_req_per_s=n / span if span > 0 else math.nan,
    )
    return p, res


def saturation_rate(dep: Deployment, base: Workload, router: str = "least_loaded") -> float:
    """Requests per second with the whole workload queued at time zero (offline throughput).

    Measured up to the time 90 % of the requests have finished, so the draining tail (a few
    long requests running alone) does not hide the rate a full engine sustains.
    """
    burst = Workload(
        np.zeros(len(base)), base.prompt_tokens, base.output_tokens, name=f"{base.name}-burst"
    )
    finish = np.sort(simulate(dep, burst, router=router).columns()["finish_s"])
    k = max(1, int(0.9 * len(finish)))
    t = float(finish[k - 1])
    return k / t if t > 0 else math.inf


def find_capacity(
    dep: Deployment,
    base: Workload,
    slo: Slo,
    target: float = 0.9,
    rel_tol: float = 0.03,
    floor_ratio: float = 1.0 / 64.0,
    criterion: str = "both",
    router: str = "least_loaded",
) -> Capacity:
    """Highest rate (within `rel_tol`) at which at least `target` of requests meet the SLO.

    `criterion` "both": a request counts when it meets both targets (the SLO attainment
    servesim reports); "each": DistServe's rule, each target met by `target` of requests on
    its own. `router` spreads arrivals over a deployment's replicas.

    Bisection in log-rate between `floor_ratio × saturation` and the first of saturation, 2×,
    4×, ... that misses. When even the floor misses, the result is infeasible and `miss` says
    which target failed and by how much at that lightest load.
    """
    if not 0.0 < target <= 1.0:
        raise ServesimError(f"SLO attainment target must be in (0, 1], got {target}.")
    if criterion not in ("both", "each"):
        raise ServesimError(f"Unknown attainment criterion {criterion!r}; use 'both' or 'each'.")

    def passes(p: Probe) -> bool:
        if criterion == "each":
            return min(p.ttft_ok, p.tpot_ok) >= target
        return p.attainment >= target

    if len(base) < 10:
        raise ServesimError("A capacity search needs a workload of at least 10 requests.")
    sat = saturation_rate(dep, base, router)
    probes: list[Probe] = []
    lo = sat * floor_ratio
    p_lo, res_lo = _probe(dep, base, lo, slo, router)
    probes.append(p_lo)
    if not passes(p_lo):
        return Capacity(0.0, sat, False, probes, res_lo, explain_miss(p_lo, slo, target))
    best = res_lo
    # The burst's throughput includes its draining tail, so the true limit can lie above it:
    # double until a probe misses.
    hi = sat
    for _ in range(6):
        p_hi, res_hi = _probe(dep, base, hi, slo, router)
        probes.append(p_hi)
        if not passes(p_hi):
            break
        lo, best = hi, res_hi
        hi *= 2.0
    else:
        probes.sort(key=lambda q: q.rate_per_s)
        return Capacity(lo, sat, True, probes, best)
    while hi / lo > 1.0 + rel_tol:
        mid = math.sqrt(lo * hi)
        p, res = _probe(dep, base, mid, slo, router)
        probes.append(p)
        if passes(p):
            lo, best = mid, res
        else:
            hi = mid
    probes.sort(key=lambda q: q.rate_per_s)
    return Capacity(lo, sat, True, probes, best)


def explain_miss(p: Probe, slo: Slo, target: float) -> str:
    """One sentence on the closest miss: which latency target fails, by how much, at light load."""
    parts = []
    if p.ttft_ok < target:
        parts.append(
            f"TTFT p90 is {p.ttft_p90_s * 1e3:.0f} ms against a {slo.ttft_s * 1e3:.0f} ms target "
            f"({p.ttft_ok:.0%} of requests meet it)"
        )
    if p.tpot_ok < target:
        parts.append(
            f"TPOT p90 is {p.tpot_p90_s * 1e3:.1f} ms against a {slo.tpot_s * 1e3:.1f} ms target "
            f"({p.tpot_ok:.0%} meet it)"
        )
    if not parts:
        parts.append(f"only {p.attainment:.0%} meet both targets")
    return (
        f"even at {p.rate_per_s:.3g} req/s "
        + " and ".join(parts)
        + f"; {target:.0%} must meet both"
    )
