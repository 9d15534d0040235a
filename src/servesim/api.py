"""servesim's Python API: the three questions the CLI answers, as functions.

`predict` prices one engine iteration, `simulate` serves a workload on a deployment, `plan`
searches deployments for the cheapest that meets the SLOs. Everything they take and return is a
plain dataclass from the layer that owns it (`spec`, `predictor`, `sim`, `planner`); the
`servesim` package re-exports the ones a user starts from.
"""

from __future__ import annotations

from pathlib import Path

from servesim.planner.candidates import PlanSpec, SearchSpace, WorkloadSpec
from servesim.planner.plan import PlanResult, check_space, run_plan
from servesim.predictor.iteration import BatchShape, IterationCost
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import Slo
from servesim.sim.simulate import simulate

__all__ = ["plan", "predict", "simulate"]


def predict(deployment: Deployment, batch: BatchShape, breakdown: bool = True) -> IterationCost:
    """Time and energy of one iteration of `batch` on one replica of `deployment`, with a
    per-operator breakdown in `IterationCost.ops`. A batch the engine would never run (more
    sequences or tokens than its limits, more context than its KV cache) is refused with a
    `ServesimError` naming the limit."""
    deployment.check_batch(batch)
    return deployment.predictor().iteration(batch, breakdown=breakdown)


def plan(
    model: str,
    slo: Slo | None = None,
    workload: WorkloadSpec | None = None,
    space: SearchSpace | None = None,
    *,
    target: float = 0.9,
    rate_per_s: float | None = None,
    out_dir: str | Path = "plan-out",
    workers: int | None = None,
    quiet: bool = True,
) -> PlanResult:
    """The deployments of `model` over `space` ranked by goodput per dollar under `slo` (met by
    at least `target` of requests), each candidate's capacity found by simulating `workload`
    at increasing rates; with `rate_per_s`, also the cheapest and the smallest fleet that
    serves it, verified by simulation. Results stream to `out_dir`/store, so a rerun of the
    same question resumes; `out_dir`/plan.parquet holds every row."""
    space = space or SearchSpace()
    check_space(space)
    spec = PlanSpec(
        model=model,
        workload=workload or WorkloadSpec(),
        slo=slo or Slo(),
        target=target,
        rate_per_s=rate_per_s,
    )
    return run_plan(spec, space, out_dir, workers=workers, quiet=quiet)
