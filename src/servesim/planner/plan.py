"""The plan command's flow: enumerate, prune, evaluate (resumably), rank, size, write outputs.

`run_plan` is what `servesim plan` and `benchmarks/plan.py` call. Finished candidates stream
into a `PlanStore` under the output folder, so an interrupted plan resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from servesim.errors import ServesimError
from servesim.planner.candidates import (
    Candidate,
    PlanSpec,
    Pruned,
    SearchSpace,
    catalog_for,
    enumerate_candidates,
    model_for,
    prune,
)
from servesim.planner.ranking import add_rankings
from servesim.planner.runner import run_local, run_ray
from servesim.planner.sizing import Sizing, best_sizings, cheapest_by_engine, verified_sizings
from servesim.planner.store import PlanStore, write_rows


@dataclass
class PlanResult:
    """Every row (evaluated and pruned), the winner, sizing for the target rate, timings."""

    spec: PlanSpec
    rows: list[dict[str, Any]]
    pruned: list[Pruned]
    pruned_by_rule: dict[str, int]
    evaluated: int  # candidates simulated in this run
    reused: int  # candidates taken from the store
    wall_s: float
    fewest_devices: Sizing | None = None
    cheapest: Sizing | None = None
    # The lowest-$/h verified fleet per engine: each engine's launch script is planned for it.
    cheapest_by_engine: dict[str, Sizing] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should know (short input)
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def feasible(self) -> list[dict[str, Any]]:
        """Rows that met the SLO at some rate, best first."""
        ok = [r for r in self.rows if r.get("status") == "ok" and r.get("rank", 0) > 0]
        return sorted(ok, key=lambda r: r["rank"])

    @property
    def winner(self) -> dict[str, Any] | None:
        """The highest goodput per dollar-hour."""
        ok = self.feasible
        return ok[0] if ok else None

    def closest_miss(self) -> dict[str, Any] | None:
        """When nothing is feasible: the evaluated row that came nearest the SLO."""
        tried = [r for r in self.rows if r.get("status") == "infeasible"]
        if not tried:
            return None

        slo = self.spec.slo

        def nearness(r: dict[str, Any]) -> tuple[float, float]:
            """Its best attainment, then how far its tails were over the targets there (the
            worse of the two ratios, smaller nearer): rows that all miss at light load differ
            by how much they miss, not by their order."""
            probes = json.loads(r.get("probes") or "[]")
            if not probes:
                return 0.0, -math.inf
            best = max(probes, key=lambda p: p["attainment"])
            over = max(
                best.get("ttft_p90_s", math.nan) / slo.ttft_s,
                best.get("tpot_p90_s", math.nan) / slo.tpot_s,
            )
            return best["attainment"], -over if math.isfinite(over) else -math.inf

        return max(tried, key=nearness)


def run_plan(
    spec: PlanSpec,
    space: SearchSpace,
    out_dir: str | Path,
    workers: int | None = None,
    ray_address: str | None = None,
    quiet: bool = False,
    limit: int | None = None,
) -> PlanResult:
    """Answer a plan question, reusing any results the store already holds for it."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    model = model_for(spec.model)
    catalog = catalog_for(spec.devices_file)
    for d in space.devices:
        catalog.get(d)  # unknown devices fail here, with the list of known ones
    longest = spec.longest_tokens()  # of every request a search may draw
    model.check_context(longest, "A request (prompt and output)")  # no candidate serves it
    candidates = enumerate_candidates(space, model)
    kept, pruned = prune(candidates, model, catalog, longest)
    if limit:
        kept = kept[:limit]
    store = PlanStore(out / "store", spec.key())
    done = store.done_keys()
    todo = [c for c in kept if c.key() not in done]
    if todo:
        if ray_address:
            run_ray(spec, todo, store.add, address=ray_address, num_cpus=workers, quiet=quiet)
        else:
            run_local(spec, todo, store.add, workers=workers, quiet=quiet)
    wanted = {c.key() for c in kept}
    rows = [r for r in store.rows() if r["key"] in wanted]
    rows += [_pruned_row(p) for p in pruned]
    add_rankings(rows)
    result = PlanResult(
        spec=spec,
        rows=rows,
        pruned=pruned,
        pruned_by_rule=dict(Counter(p.rule for p in pruned)),
        evaluated=len(todo),
        reused=len(kept) - len(todo),
        wall_s=0.0,
        out_dir=out,
    )
    if spec.rate_per_s:
        found = verified_sizings(spec, rows, spec.rate_per_s)
        result.fewest_devices, result.cheapest = best_sizings(found)
        result.cheapest_by_engine = cheapest_by_engine(found)
    result.notes = short_workload_notes(spec, rows)
    result.wall_s = time.perf_counter() - t0
    path = out / "plan.parquet"
    write_rows(sorted(rows, key=_order), path)
    result.files["plan"] = path
    return result


def short_workload_notes(spec: PlanSpec, rows: list[dict[str, Any]]) -> list[str]:
    """A note when the plan's workload was too short for a steady state and was extended."""
    used = [int(r.get("probe_requests") or 0) for r in rows if r.get("probe_requests")]
    n = spec.workload.num_requests
    if not used or max(used) <= n:
        return []
    source = "trace" if spec.workload.trace else "synthetic mix"
    return [
        f"{n} requests are too few for a steady-state capacity; the searches drew up to "
        f"{max(used)} from the same {source} (pass --num-requests {max(used)} to make it explicit)"
    ]


def _order(r: dict[str, Any]) -> tuple[int, float]:
    rank = r.get("rank") or 0
    return (0 if rank else 1, rank or -float(r.get("capacity_req_per_s") or 0.0))


def _pruned_row(p: Pruned) -> dict[str, Any]:
    c: Candidate = p.candidate
    return {
        "key": c.key(),
        "label": c.label(),
        **asdict(c),
        "status": f"pruned:{p.rule}",
        "reason": p.reason,
        "devices": c.devices_per_replica,
        "price_per_hour": math.nan,
        "capacity_req_per_s": 0.0,
    }


def check_space(space: SearchSpace) -> None:
    """Refuse an empty or malformed search space with one sentence."""
    if not space.devices:
        raise ServesimError("The search space has no devices; pass --gpus h100_sxm,...")
    if not space.tp or min(space.tp) < 1:
        raise ServesimError("TP degrees must be positive integers, e.g. --tp 1,2,4,8.")
