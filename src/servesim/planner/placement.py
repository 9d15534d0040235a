"""Where to place prefill and decode (DistServe's placement search) and its capacity criterion.

`capacity` finds the highest request rate at which both the TTFT and the TPOT targets are each
met by a share of requests (DistServe's criterion), by the planner's capacity search over the
workload's scaled arrivals; `disagg_candidates` and `colocated_candidates` list the layouts of a
model on a node; `best_placement` ranks them by goodput per device.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

from servesim.errors import ServesimError
from servesim.planner.capacity import find_capacity
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.metrics import Slo, meets_tpot
from servesim.sim.result import SimResult
from servesim.sim.transfer import Link
from servesim.sim.workload import Workload
from servesim.spec.parallel import Parallel


@dataclass(frozen=True)
class CapacityResult:
    """The highest rate meeting both targets, and what each probe saw."""

    rate_per_s: float
    per_gpu_rate_per_s: float
    probes: tuple[tuple[float, float, float], ...]  # (rate, TTFT attainment, TPOT attainment)


def attainments(res: SimResult, slo: Slo) -> tuple[float, float]:
    """Shares of requests meeting the TTFT and the TPOT target, each on its own."""
    cols = res.columns()
    n = len(cols["ttft_s"])
    done = cols["finish_s"] >= 0
    return (
        float((cols["ttft_s"] <= slo.ttft_s).sum() / n),
        float(meets_tpot(cols["tpot_s"], done, slo.tpot_s).sum() / n),
    )


def capacity(
    dep: Any,
    base: Workload,
    slo: Slo,
    target: float = 0.9,
    rel_tol: float = 0.02,
    router: str = "least_loaded",
) -> CapacityResult:
    """Highest request rate at which at least `target` of requests meet the TTFT target and at
    least `target` meet the TPOT target (DistServe's attainment criterion): the general
    capacity search (`capacity.find_capacity`) with criterion "each", reported per device."""
    cap = find_capacity(dep, base, slo, target, rel_tol, criterion="each", router=router)
    rate = cap.rate_per_s
    probes = tuple((p.rate_per_s, p.ttft_ok, p.tpot_ok) for p in cap.probes)
    return CapacityResult(rate, rate / dep.num_devices, probes)


@dataclass(frozen=True)
class Placement:
    """One candidate of a placement search and its capacity."""

    deployment: Any
    per_gpu_rate_per_s: float
    rate_per_s: float

    def label(self) -> str:
        """The deployment's label."""
        return self.deployment.label()


def disagg_candidates(
    base: Deployment,
    gpus: int,
    tps: tuple[int, ...] = (1, 2, 4, 8),
    pps: tuple[int, ...] = (1,),
    counts: bool = False,
    link: str | Link = "nvlink",
    kv_compression: float = 1.0,
    prefill: dict[str, Any] | None = None,
    decode: dict[str, Any] | None = None,
) -> list[DisaggDeployment]:
    """Disaggregated layouts of `base`'s model and device on `gpus` devices: every prefill and
    decode (TP, PP) that fits the memory, one instance each (DistServe's segment) or, with
    `counts`, every prefill:decode instance ratio that fits. `prefill`/`decode` override
    Deployment fields per pool (e.g. chunked_prefill)."""
    out = []
    shapes = [(tp, pp) for tp in tps for pp in pps if tp * pp <= gpus]
    for (tp_p, pp_p), (tp_d, pp_d) in itertools.product(shapes, shapes):
        g_p, g_d = tp_p * pp_p, tp_d * pp_d
        ratios = [(1, 1)]
        if counts:
            ratios = [
                (n_p, n_d)
                for n_p in range(1, gpus // g_p + 1)
                for n_d in range(1, gpus // g_d + 1)
                if n_p * g_p + n_d * g_d <= gpus
            ]
        for n_p, n_d in ratios:
            if n_p * g_p + n_d * g_d > gpus:
                continue
            try:
                p = replace(
                    base, parallel=Parallel(tp=tp_p, pp=pp_p), replicas=n_p, **(prefill or {})
                )
                d = replace(
                    base, parallel=Parallel(tp=tp_d, pp=pp_d), replicas=n_d, **(decode or {})
                )
                p.model.check_tp(tp_p)
                p.model.check_tp(tp_d)
                p.memory()
                d.memory()
            except ServesimError:
                continue
            out.append(DisaggDeployment(p, d, link, kv_compression))
    return out


def colocated_candidates(
    base: Deployment, gpus: int, tps: tuple[int, ...] = (1, 2, 4, 8), **fields: Any
) -> list[Deployment]:
    """Colocated layouts: one TP degree, as many replicas as fit on `gpus` devices."""
    out = []
    for tp in tps:
        if tp > gpus:
            continue
        try:
            d = replace(base, parallel=Parallel(tp=tp), replicas=gpus // tp, **fields)
            d.model.check_tp(tp)
            d.memory()
        except ServesimError:
            continue
        out.append(d)
    return out


def best_placement(
    candidates: list[Any],
    base: Workload,
    slo: Slo,
    target: float = 0.9,
    rel_tol: float = 0.02,
) -> list[Placement]:
    """Capacity of every candidate, best per-GPU goodput first (DistServe's search ranks by
    the highest rate per GPU at which both attainment targets hold)."""
    found = []
    for dep in candidates:
        cap = capacity(dep, base, slo, target, rel_tol)
        found.append(Placement(dep, cap.per_gpu_rate_per_s, cap.rate_per_s))
    found.sort(key=lambda p: (-p.per_gpu_rate_per_s, p.deployment.num_devices, p.label()))
    return found
