"""Fleet sizing: how many replicas of a candidate serve a target rate, each choice checked by
simulating the fleet at that rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from servesim.errors import ServesimError
from servesim.planner.candidates import Candidate, PlanSpec, candidate_from_row, deployment_for
from servesim.planner.capacity import service_rate, steady_attainment


@dataclass(frozen=True)
class Sizing:
    """How many replicas of a candidate serve a target rate, checked by simulation."""

    candidate: Candidate
    replicas: int
    devices: int
    price_per_hour: float
    attainment: float  # in the steady window of the fleet's simulation at the target rate
    verified: bool
    requests: int = 0  # requests the check simulated
    simulated_replicas: int = 0  # replicas the check simulated (fewer for a large fleet)


# The largest fleet a check simulates. A larger one is checked as this many of its replicas at
# their share of the rate: under least-loaded routing more replicas at the same load per
# replica pool their queues and do no worse, so the check is conservative, and it stays a few
# seconds where 5,000 replicas would simulate millions of requests.
MAX_SIMULATED_REPLICAS = 32


def _by(objective: str) -> Any:
    def key(s: Sizing) -> tuple[float, float]:
        if objective == "devices":
            return (s.devices, s.price_per_hour)
        return (s.price_per_hour, s.devices)

    return key


def size_for_rate(
    spec: PlanSpec, rows: list[dict[str, Any]], rate_per_s: float, top: int = 5
) -> tuple[Sizing | None, Sizing | None]:
    """(fewest devices, lowest $/hour) deployments serving `rate_per_s`, each verified."""
    return best_sizings(verified_sizings(spec, rows, rate_per_s, top))


def best_sizings(sizings: list[Sizing]) -> tuple[Sizing | None, Sizing | None]:
    """(fewest devices, lowest $/hour) of verified fleets, each breaking ties by the other."""
    return (
        min(sizings, key=_by("devices"), default=None),
        min(sizings, key=_by("price"), default=None),
    )


def cheapest_by_engine(sizings: list[Sizing]) -> dict[str, Sizing]:
    """The lowest-$/hour verified fleet of each engine (a launch script per engine uses it)."""
    out: dict[str, Sizing] = {}
    for s in sorted(sizings, key=_by("price")):
        out.setdefault(s.candidate.engine, s)
    return out


def verified_sizings(
    spec: PlanSpec,
    rows: list[dict[str, Any]],
    rate_per_s: float,
    top: int = 5,
    engines: tuple[str, ...] = ("vllm", "sglang"),
) -> list[Sizing]:
    """Fleets that pass a steady-state simulation at `rate_per_s`, one per candidate checked.

    Checked: the `top` feasible candidates by devices and by $/hour, and the `top` by $/hour of
    each of `engines`, so every engine with a feasible candidate gets a verified fleet. Replicas
    start at ceil(rate / per-replica capacity), so the fleet's service rate exceeds the rate,
    and grow (up to 3 more) until a simulation of the fleet at that rate (least-loaded
    routing), long enough for a steady state, meets the attainment target in its steady window.
    """
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ServesimError(f"The rate to size for must be positive, got {rate_per_s}.")
    ok = [r for r in rows if r.get("status") == "ok" and r.get("capacity_req_per_s", 0) > 0]

    def need(r: dict[str, Any]) -> int:
        return max(1, math.ceil(rate_per_s / r["capacity_req_per_s"]))

    def devices(r: dict[str, Any]) -> tuple[float, float]:
        return (need(r) * r["devices"], need(r) * r["price_per_hour"])

    def price(r: dict[str, Any]) -> tuple[float, float]:
        return (need(r) * r["price_per_hour"], need(r) * r["devices"])

    picked = sorted(ok, key=devices)[:top] + sorted(ok, key=price)[:top]
    for e in engines:
        picked += sorted((r for r in ok if r.get("engine") == e), key=price)[:top]
    out = []
    seen: set[str] = set()
    for r in picked:
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        s = _verify(spec, r, rate_per_s)
        if s is not None:
            out.append(s)
    return out


def _verify(spec: PlanSpec, r: dict[str, Any], rate: float) -> Sizing | None:
    """The smallest fleet of `r`'s candidate (from its capacity, up to 3 more) that passes."""
    c = candidate_from_row(r)
    base = spec.workload.build()
    draw = spec.workload.draw
    residence = float(r.get("residence_s") or math.nan)
    mu = float(r.get("saturation_req_per_s") or math.nan)
    if not (math.isfinite(residence) and math.isfinite(mu)):  # a row without them: measure
        svc = service_rate(deployment_for(spec, c), base, draw=draw)
        residence, mu = svc.residence_s, svc.rate_per_s
    replicas = max(1, math.ceil(rate / r["capacity_req_per_s"]))
    for _ in range(4):
        dep = deployment_for(spec, c, replicas)
        sim_n = min(replicas, MAX_SIMULATED_REPLICAS)  # a large fleet: a part at its share
        sim_rate = rate * sim_n / replicas
        sim_dep = dep if sim_n == replicas else deployment_for(spec, c, sim_n)
        load = sim_rate / (sim_n * mu)
        p, _, _ = steady_attainment(
            sim_dep, base, sim_rate, spec.slo, residence, "least_loaded", draw, load
        )
        if p.attainment >= spec.target:
            return Sizing(
                c,
                replicas,
                dep.num_devices,
                dep.price_per_hour,
                p.attainment,
                True,
                p.requests,
                sim_n,
            )
        replicas += 1
    return None
