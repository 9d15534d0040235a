"""Workflow capacity: the highest rate of workflows a deployment serves with their end-to-end
SLO met, and the goodput per dollar it gives.

As for requests (`planner.capacity`), only a steady window counts: workflows arriving after a
warm-up of R and before the last R of arrivals, R the 90th-percentile workflow latency at light
load (a workflow in service at full load takes at least that long), the window holding at least
`MIN_WINDOW_WORKFLOWS`. The search brackets the rate by doubling from the light-load rate and
then bisects in log-rate; probes depend on the deployment, workflows and rate, not the target,
so a looser target never gives a lower capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.simulate import simulate
from servesim.sim.workflows import Estimate, WorkflowSpec, WorkflowWorkload

MIN_WINDOW_WORKFLOWS = 200
MAX_WORKFLOWS = 4000
BISECTIONS = 7  # log-rate halvings after the bracket: about 5 % resolution


@dataclass(frozen=True)
class WorkflowProbe:
    """One simulated workflow rate: attainment in the steady window and its latency tail."""

    rate_per_s: float
    attainment: float
    e2e_p90_s: float
    workflows: int


@dataclass
class WorkflowCapacity:
    """The highest sustained workflow rate meeting `target` attainment, and every probe."""

    rate_per_s: float
    target: float
    residence_s: float
    probes: list[WorkflowProbe] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain figures for a report row."""
        return {
            "workflow_rate_per_s": self.rate_per_s,
            "target_attainment": self.target,
            "light_load_e2e_p90_s": self.residence_s,
            "probes": [p.__dict__ for p in self.probes],
        }


def _probe(
    dep: Any,
    specs: tuple[WorkflowSpec, ...],
    rate: float,
    residence_s: float,
    scheduling: str,
    estimate: Estimate,
    seed: int,
) -> WorkflowProbe:
    """Simulate enough workflows at `rate` for a steady window and measure it."""
    span = 2.0 * residence_s + max(MIN_WINDOW_WORKFLOWS / rate, 2.0 * residence_s)
    n = min(MAX_WORKFLOWS, max(MIN_WINDOW_WORKFLOWS + 20, math.ceil(rate * span)))
    wl = WorkflowWorkload(specs, n, rate, seed, scheduling, estimate)
    finish = simulate(dep, closed_loop=wl).columns()["finish_s"]
    e2e, met = wl.outcomes(finish)
    t = wl.workflow_arrival_s
    keep = (t >= t[0] + residence_s) & (t <= t[-1] - residence_s)
    if keep.sum() < MIN_WINDOW_WORKFLOWS // 2:  # capped: use all but the first and last tenth
        keep = np.zeros(n, dtype=bool)
        keep[n // 10 : n - n // 10] = True
    return WorkflowProbe(
        rate, float(met[keep].mean()), float(np.quantile(e2e[keep], 0.9)), int(keep.sum())
    )


def find_workflow_capacity(
    dep: Any,
    specs: tuple[WorkflowSpec, ...],
    target: float = 0.9,
    scheduling: str = "fcfs",
    estimate: Estimate | None = None,
    seed: int = 0,
) -> WorkflowCapacity:
    """The highest workflow rate whose steady window meets the workflows' SLOs for at least
    `target` of them (0 when even a light load misses)."""
    if not 0.0 < target <= 1.0:
        raise ServesimError(f"Target attainment must be in (0, 1], got {target}.")
    est = estimate or Estimate()
    light = WorkflowWorkload(specs, 30, 1e-3, seed, scheduling, est)
    e2e, met = light.outcomes(simulate(dep, closed_loop=light).columns()["finish_s"])
    residence = float(np.quantile(e2e, 0.9))
    cap = WorkflowCapacity(0.0, target, residence)
    cap.probes.append(WorkflowProbe(1e-3, float(met.mean()), residence, len(e2e)))
    if met.mean() < target:
        return cap
    lo, hi = 0.0, 1.0 / residence  # about one workflow in service
    while True:
        p = _probe(dep, specs, hi, residence, scheduling, est, seed)
        cap.probes.append(p)
        if p.attainment < target:
            break
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise ServesimError("Workflow capacity search did not find an overloaded rate.")
    if lo == 0.0:
        lo = hi / 64.0
        p = _probe(dep, specs, lo, residence, scheduling, est, seed)
        cap.probes.append(p)
        if p.attainment < target:
            return cap
    for _ in range(BISECTIONS):
        mid = math.sqrt(lo * hi)
        p = _probe(dep, specs, mid, residence, scheduling, est, seed)
        cap.probes.append(p)
        if p.attainment >= target:
            lo = mid
        else:
            hi = mid
    cap.rate_per_s = lo
    return cap


def workflow_goodput_per_dollar(cap: WorkflowCapacity, price_per_hour: float) -> float:
    """Workflows served within SLO per dollar at the capacity rate."""
    if price_per_hour <= 0:
        return math.inf if cap.rate_per_s > 0 else 0.0
    return cap.rate_per_s * cap.target * 3600.0 / price_per_hour
