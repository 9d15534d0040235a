"""What a semantic or in-context cache saves in fleet cost: the replicas each model needs at
the offered rate, from capacity searches, with and without the cache (`sim.semantic_cache`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.planner.capacity import find_capacity
from servesim.sim.metrics import Slo
from servesim.sim.semantic_cache import SemanticCache, subset
from servesim.sim.workload import Workload


def fleet_cost(
    workload: Workload,
    large: Any,
    cache: SemanticCache,
    slo: Any,
    small: Any = None,
    target: float = 0.9,
) -> dict[str, Any]:
    """Dollars per 1,000 requests at the workload's rate for the fleets it needs, without the
    cache (all on `large`) and with it (misses on `large`, small-model hits on `small`).

    Each fleet is ceil(its share of the rate / the deployment's capacity) copies of the
    deployment given (its replicas each, priced as a whole: a deployment of two replicas
    serves twice the rate at twice the price), the capacity found by `find_capacity` on the
    requests that fleet serves (small-model prompts with the retrieved examples), its TTFT
    target less the lookup.
    """
    n = len(workload)
    rate = n / max(float(workload.arrival_s[-1] - workload.arrival_s[0]), 1e-9)
    _, hit = cache.draw(n)
    cached_slo = Slo(max(1e-3, slo.ttft_s - cache.lookup_s), slo.tpot_s)

    def fleet(dep: Any, idx: np.ndarray, share: float, s: Any, extra: int = 0) -> dict:
        if share <= 0 or not len(idx):
            return {"replicas": 0, "capacity_req_per_s": 0.0, "usd_per_hour": 0.0}
        cap = find_capacity(dep, subset(workload, idx, 0.0, extra), s, target)
        if not cap.feasible:
            raise ServesimError(
                f"{dep.label()} cannot meet the SLO even at light load ({cap.miss}); "
                "loosen the SLO or give a faster deployment."
            )
        copies = math.ceil(share * rate / cap.rate_per_s)
        return {
            "replicas": copies * dep.replicas,
            "capacity_req_per_s": cap.rate_per_s,
            "usd_per_hour": copies * dep.price_per_hour,
        }

    every = np.arange(n)
    without = fleet(large, every, 1.0, slo)
    misses = fleet(large, np.flatnonzero(~hit), float((~hit).mean()), cached_slo)
    with_small = {"replicas": 0, "capacity_req_per_s": 0.0, "usd_per_hour": 0.0}
    if cache.on_hit == "small_model" and hit.any():
        if small is None:
            raise ServesimError("A small-model cache needs the small model's deployment.")
        with_small = fleet(
            small, np.flatnonzero(hit), float(hit.mean()), cached_slo, cache.example_tokens
        )
    per_1k = 1000.0 / (rate * 3600.0)
    cost_without = without["usd_per_hour"] * per_1k
    cost_with = (misses["usd_per_hour"] + with_small["usd_per_hour"]) * per_1k
    return {
        "rate_req_per_s": rate,
        "hit_rate": float(hit.mean()),
        "without_cache": {**without, "usd_per_1k": cost_without},
        "large_with_cache": misses,
        "small_with_cache": with_small,
        "usd_per_1k_with_cache": cost_with,
        "cost_ratio": cost_with / cost_without if cost_without else math.nan,
    }
