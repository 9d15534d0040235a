"""Ranking evaluated candidates: goodput per dollar-hour, and Pareto fronts over cost, latency,
goodput per device and energy.
"""

from __future__ import annotations

import math
from typing import Any

PARETO_OBJECTIVES: tuple[tuple[str, str], ...] = (
    ("dollar_per_req_per_s", "min"),
    ("ttft_p90_s", "min"),
    ("tpot_p90_s", "min"),
    ("e2e_p90_s", "min"),  # workflow plans: the workflows' end-to-end tail at capacity
    ("goodput_per_gpu", "max"),
    ("joules_per_token", "min"),
)


def pareto_words(workflows: bool = False) -> str:
    """What the front is over, in words (reports and tables say it beside the mark); a
    workflow plan's cost is per workflow a second and its latencies are its calls'."""
    if workflows:
        return "$/h per wf/s, the workflows' p90 end-to-end latency and goodput per GPU"
    return "$/h per req/s, TTFT p90, TPOT p90, goodput per GPU and energy per token"


def add_rankings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank feasible rows by goodput per dollar-hour and mark the Pareto-optimal ones."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("capacity_req_per_s", 0) > 0]
    for r in rows:
        cap = r.get("capacity_req_per_s") or 0.0
        r["dollar_per_req_per_s"] = r["price_per_hour"] / cap if cap > 0 else math.inf
        r["pareto"] = False
        r["rank"] = 0
    # Goodput per dollar-hour first; among equals (free devices are all infinitely cheap) the
    # higher goodput, then the candidate's label, so the order never depends on input order.
    ok.sort(
        key=lambda r: (
            -r["goodput_per_dollar_hour"],
            -r["capacity_req_per_s"],
            str(r.get("label", "")),
        )
    )
    for i, r in enumerate(ok, 1):
        r["rank"] = i
    for r in ok:
        r["pareto"] = not any(_dominates(o, r) for o in ok if o is not r)
    return rows


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether `a` is at least as good as `b` on every objective both rows measure and better
    on one. An objective a row lacks (a workflow plan has no per-token latencies, a device no
    power figure) is left out of the comparison rather than ending it: ending it marked every
    such row Pareto-optimal."""
    better = compared = False
    for key, sense in PARETO_OBJECTIVES:
        x, y = a.get(key), b.get(key)
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        compared = True
        if sense == "max":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return compared and better


def pareto_front(
    rows: list[dict[str, Any]], x: str, y: str, x_sense: str = "min", y_sense: str = "min"
) -> list[dict[str, Any]]:
    """The 2-D non-dominated subset of feasible rows, sorted by x."""
    sx = 1.0 if x_sense == "min" else -1.0
    sy = 1.0 if y_sense == "min" else -1.0
    pts = [
        r
        for r in rows
        if r.get("status") == "ok"
        and math.isfinite(r.get(x, math.nan))
        and math.isfinite(r.get(y, math.nan))
    ]
    pts.sort(key=lambda r: (sx * r[x], sy * r[y]))
    front: list[dict[str, Any]] = []
    best_y = math.inf
    for r in pts:
        if sy * r[y] < best_y:
            front.append(r)
            best_y = sy * r[y]
    return front
