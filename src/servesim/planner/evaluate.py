"""One candidate's evaluation: its capacity search flattened into one result row (latency
percentiles and CDF points of the steady window, utilisation, energy). A plain top-level
function of picklable specs, so local processes and Ray run the very same code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.planner.candidates import Candidate, PlanSpec, deployment_for
from servesim.planner.capacity import (
    Capacity,
    find_capacity,
    window_columns,
)
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.metrics import summarize


def per_dollar_hour(rate: float, price_per_hour: float) -> float:
    """Goodput per dollar-hour: a device priced at $0/h (hardware already owned) makes any
    positive goodput infinitely cheap, so it ranks first instead of as an undefined number."""
    if price_per_hour > 0:
        return rate / price_per_hour
    return math.inf if rate > 0 else 0.0


def power_kw(dep: Any) -> float:
    """Peak power of every device of a deployment, kW, each at its own device's rating: an
    AF expert pool and Mirror-SD's draft devices are counted as what they are, as
    `price_per_hour` prices them (not as more of the replica's device)."""
    if isinstance(dep, DisaggDeployment):
        return power_kw(dep.prefill) + power_kw(dep.decode)
    per = dep.parallel.num_devices * dep.device.max_power_w
    if dep.af is not None:
        per += dep.af.expert_gpus * (dep.af.expert_device or dep.device).max_power_w
    sd = dep.speculative
    if sd is not None and sd.mirror_device is not None:
        per += sd.mirror_devices * sd.mirror_device.max_power_w
    return dep.replicas * per / 1e3


def _pct(x: np.ndarray, q: float) -> float:
    x = x[np.isfinite(x)]
    return float(np.percentile(x, q)) if len(x) else math.nan


def evaluate(spec: PlanSpec, c: Candidate) -> dict[str, Any]:
    """Capacity search for one candidate, flattened into one result row.

    Latencies and attainment describe the steady window of the run at capacity (the requests
    the search counted); utilisation, batch size and energy describe the whole run.
    """
    dep = deployment_for(spec, c)
    row: dict[str, Any] = {"key": c.key(), "label": c.label(), **asdict(c)}
    row["latency_model"] = spec.latency_model
    if spec.workflows is not None:
        return _evaluate_workflows(spec, dep, row)
    base = spec.workload.build()
    try:
        cap = find_capacity(dep, base, spec.slo, spec.target, spec.rel_tol, draw=spec.workload.draw)
    except ServesimError as exc:  # one candidate's failed simulation must not end the plan
        cap = Capacity(0.0, math.nan, False, miss=f"the simulation failed: {exc}")
    n_dev = dep.num_devices
    price = dep.price_per_hour
    kw = power_kw(dep)
    row.update(
        {
            "status": "ok" if cap.feasible else "infeasible",
            "reason": cap.miss,
            "devices": n_dev,
            "price_per_hour": price,
            "power_kw": kw,
            "capacity_req_per_s": cap.rate_per_s,
            "saturation_req_per_s": cap.saturation_rate_per_s,
            "residence_s": cap.residence_s,
            "probe_requests": cap.probe_requests,
            "goodput_per_gpu": cap.rate_per_s / n_dev,
            "goodput_per_dollar_hour": per_dollar_hour(cap.rate_per_s, price),
            "goodput_per_kw": cap.rate_per_s / kw,
            "probes": json.dumps([asdict(p) for p in cap.probes]),
        }
    )
    mem = dep.memory()
    row.update(
        {
            "weights_gb": mem.weight_bytes / 1e9,
            "kv_gb": mem.kv_bytes / 1e9,
            "reserve_gb": mem.reserve_bytes / 1e9,
            "device_gb": mem.device_bytes / 1e9,
            "kv_tokens": mem.kv_tokens,
        }
    )
    res = cap.best
    if res is not None:
        whole = res.summary(spec.slo)
        cols = window_columns(res, cap.window)
        s = summarize(cols, spec.slo)
        row.update(
            {
                "attainment": s["slo_attainment"],
                "ttft_p50_s": s["ttft_s"]["p50"],
                "ttft_p90_s": s["ttft_s"]["p90"],
                "ttft_p99_s": s["ttft_s"]["p99"],
                "tpot_p50_s": s["tpot_s"]["p50"],
                "tpot_p90_s": s["tpot_s"]["p90"],
                "tpot_p99_s": s["tpot_s"]["p99"],
                "e2e_p90_s": s["e2e_s"]["p90"],
                "throughput_tok_per_s": whole["throughput_output_tok_per_s"],
                "joules_per_token": whole["joules_per_output_token"],
                "utilisation": whole["utilisation"],
                "mean_batch_size": whole["mean_batch_size"],
                "mean_kv_use": whole["mean_kv_use"],
                "ttft_cdf_s": json.dumps(_cdf_points(cols["ttft_s"])),
                "tpot_cdf_s": json.dumps(_cdf_points(cols["tpot_s"])),
                # operator shapes priced, by provenance (measured, interpolated, ...)
                "latency_provenance": json.dumps(whole.get("latency_provenance", {})),
            }
        )
    return row


def _cdf_points(x: np.ndarray, points: int = 50) -> list[float]:
    """Quantiles at evenly spaced probabilities, enough to draw a CDF."""
    x = x[np.isfinite(x)]
    if not len(x):
        return []
    return [float(v) for v in np.quantile(x, np.linspace(0, 1, points))]


def _evaluate_workflows(spec: PlanSpec, dep: Any, row: dict[str, Any]) -> dict[str, Any]:
    """A candidate under a workflow workload: its capacity is the highest workflow rate whose
    steady window meets the workflows' end-to-end SLOs for `spec.target` of them, and its
    goodput per dollar-hour is in workflows."""
    from servesim.planner.workflow_capacity import find_workflow_capacity
    from servesim.sim.workflows import Estimate, load_workflows

    specs = load_workflows(spec.workflows or "")
    scheduling = "deadline" if spec.workflow_policy == "deadline" else "fcfs"
    price, n_dev = dep.price_per_hour, dep.num_devices
    try:
        est = Estimate.for_deployment(dep)
        cap = find_workflow_capacity(dep, specs, spec.target, scheduling, est)
        rate, miss = cap.rate_per_s, "" if cap.rate_per_s > 0 else "misses at light load"
        residence = cap.residence_s
        probes = [p.__dict__ for p in cap.probes]
        at_cap = [p.e2e_p90_s for p in cap.probes if p.rate_per_s == cap.rate_per_s]
        e2e_p90 = at_cap[-1] if rate > 0 and at_cap else math.nan
    except ServesimError as exc:
        rate, miss, residence, probes = 0.0, f"the simulation failed: {exc}", math.nan, []
        e2e_p90 = math.nan
    kw = power_kw(dep)
    row.update(
        {
            "status": "ok" if rate > 0 else "infeasible",
            "reason": miss,
            "devices": n_dev,
            "price_per_hour": price,
            "power_kw": kw,
            "capacity_unit": "workflows/s",
            "capacity_req_per_s": rate,
            "saturation_req_per_s": math.nan,
            "residence_s": residence,
            "e2e_p90_s": e2e_p90,  # the workflows' end-to-end tail at capacity
            "probe_requests": 0,
            "goodput_per_gpu": rate / n_dev,
            "goodput_per_dollar_hour": per_dollar_hour(rate, price),
            "goodput_per_kw": rate / kw,
            "probes": "[]",  # request-level probes; the workflow ones follow
            "workflow_probes": json.dumps(probes),
        }
    )
    return row
