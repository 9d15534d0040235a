"""Semantic and in-context caching in front of a deployment.

A semantic cache embeds each request and looks for an earlier one close enough to reuse. Its
hit rate differs by kind of request (category-aware semantic caching, arXiv:2510.26835: code
and factual questions repeat far more than open-ended chat, so each category gets its own
threshold and hit rate). A hit is served in one of two ways:

- `answer`: the cached response is returned (the lookup is all the latency there is);
- `small_model`: IC-Cache (arXiv:2501.12689) sends the request to a smaller model with the
  retrieved examples in its prompt, which answers at the stated quality for far less compute.

Misses go to the large model. Every request pays the lookup (embedding plus vector search)
before it is served. `serve_with_cache` draws each request's category and hit from the stated
rates (seeded), serves the misses and the small-model hits on their deployments, and reports
latency and the load each model carried; `planner.cache_fleet.fleet_cost` sizes the fleets
each model needs at the offered rate (replicas from each deployment's capacity under the SLO,
the lookup taken out of the TTFT target) and prices them, with and without the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload

HIT_MODES = ("answer", "small_model")


@dataclass(frozen=True)
class CacheCategory:
    """One kind of request: its share of the traffic and the cache's hit rate for it."""

    share: float
    hit_rate: float

    def __post_init__(self) -> None:
        if not self.share > 0 or not 0.0 <= self.hit_rate <= 1.0:
            raise ServesimError(
                "A cache category needs share > 0 and a hit rate between 0 and 1, got "
                f"share={self.share}, hit_rate={self.hit_rate}."
            )


@dataclass(frozen=True)
class SemanticCache:
    """The cache: categories, lookup time, what a hit does, and (for `small_model`) how many
    tokens the retrieved examples add to the small model's prompt and its answer quality."""

    categories: dict[str, CacheCategory]
    lookup_s: float = 0.01
    on_hit: str = "answer"
    example_tokens: int = 0
    small_model_quality: float = 1.0  # relative answer quality of a small-model hit, as stated
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.categories:
            raise ServesimError("A semantic cache needs at least one request category.")
        if self.on_hit not in HIT_MODES:
            raise ServesimError(
                f"Cache hit mode {self.on_hit!r} is unknown; use one of {', '.join(HIT_MODES)}."
            )
        if not (self.lookup_s >= 0 and math.isfinite(self.lookup_s)) or self.example_tokens < 0:
            raise ServesimError("Cache lookup seconds and example tokens must be ≥ 0.")

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(category index, hit) of n requests, from the shares and hit rates."""
        rng = np.random.default_rng(self.seed)
        cats = list(self.categories.values())
        share = np.array([c.share for c in cats])
        which = rng.choice(len(cats), size=n, p=share / share.sum())
        rates = np.array([c.hit_rate for c in cats])
        return which, rng.random(n) < rates[which]


def subset(w: Workload, idx: np.ndarray, delay_s: float, extra_prompt: int = 0) -> Workload:
    """Requests `idx` of `w`, arriving `delay_s` later (after the lookup), their prompts
    `extra_prompt` tokens longer (retrieved examples). Priorities, images and prefix hash ids
    go with them, so the deployment schedules and caches them as it would without the cache;
    the hash ids only while the prompts are unchanged (examples ahead of a prompt move its
    blocks)."""
    out = w._take(idx, w.arrival_s[idx] + delay_s)
    if extra_prompt:
        out.prompt_tokens = out.prompt_tokens + extra_prompt
        out.prefix_hashes, out.prefix_block_tokens = None, 0
    return out


def serve_with_cache(
    workload: Workload,
    large: Any,
    cache: SemanticCache,
    small: Any = None,
    router: str = "round_robin",
) -> dict[str, Any]:
    """Serve `workload` through the cache: misses on `large`, hits answered from the cache or,
    with `on_hit="small_model"`, on `small`; `router` spreads each deployment's requests over
    its replicas. Returns per-request latencies (request order) and the load and cost
    figures."""
    n = len(workload)
    which, hit = cache.draw(n)
    if cache.on_hit == "small_model" and small is None and hit.any():
        raise ServesimError("A small-model cache needs the small model's deployment.")
    ttft = np.full(n, cache.lookup_s)
    e2e = np.full(n, cache.lookup_s)
    out: dict[str, Any] = {"requests": n, "hit_rate": float(hit.mean())}
    served = {"large": int((~hit).sum()), "small": 0, "cache": 0}
    for name, idx, dep, extra in (
        ("large", np.flatnonzero(~hit), large, 0),
        ("small", np.flatnonzero(hit), small, cache.example_tokens),
    ):
        if name == "small" and cache.on_hit == "answer":
            served["cache"] = len(idx)
            continue
        if not len(idx):
            continue
        served[name] = len(idx)
        res = simulate(dep, subset(workload, idx, cache.lookup_s, extra), router=router)
        cols = res.columns()
        order = np.argsort(cols["request_id"])
        ttft[idx] = cache.lookup_s + cols["ttft_s"][order]
        e2e[idx] = cols["finish_s"][order] - workload.arrival_s[idx]
    span = max(float(workload.arrival_s[-1] - workload.arrival_s[0]), 1e-9)
    cats = list(cache.categories)
    out.update(
        served=served,
        large_load_req_per_s=served["large"] / span,
        offered_req_per_s=n / span,
        ttft_p50_s=float(np.median(ttft)),
        ttft_p90_s=float(np.quantile(ttft, 0.9)),
        e2e_p90_s=float(np.quantile(e2e, 0.9)),
        quality=float(1.0 - hit.mean() * (1.0 - cache.small_model_quality))
        if cache.on_hit == "small_model"
        else 1.0,
        by_category={
            cats[i]: {
                "requests": int((which == i).sum()),
                "hit_rate": float(hit[which == i].mean()) if (which == i).any() else 0.0,
            }
            for i in range(len(cats))
        },
    )
    out["ttft_s"], out["e2e_s"] = ttft, e2e
    return out
