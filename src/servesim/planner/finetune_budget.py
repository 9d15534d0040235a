"""How many fine-tuning tokens each iteration can carry while inference keeps its SLO: the
static counterpart of FlexLLM's token scheduler, which picks the training tokens of every
iteration online (its choice can only do better than the best fixed budget found here)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from servesim.errors import ServesimError
from servesim.sim.coserving import finetune_throughput
from servesim.sim.metrics import Slo
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.finetune import FineTuneJob

BUDGETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def max_finetune_budget(
    dep: Any,
    workload: Workload,
    slo: Slo,
    job: FineTuneJob,
    target: float = 0.9,
    budgets: tuple[int, ...] = BUDGETS,
) -> dict[str, Any]:
    """The largest per-iteration training budget whose run meets `target` SLO attainment,
    with every budget tried (attainment, training tokens per second); bisection over the
    sorted budgets (more training tokens never make an iteration shorter)."""
    if not 0.0 < target <= 1.0:
        raise ServesimError(f"Target attainment must be in (0, 1], got {target}.")
    options = sorted(set(budgets))
    tried: dict[int, dict[str, float]] = {}

    def run(k: int) -> bool:
        res = simulate(replace(dep, finetune=replace(job, tokens_per_iter=k)), workload)
        s = res.summary(slo)
        tried[k] = {"slo_attainment": s["slo_attainment"], **finetune_throughput(res)}
        return s["slo_attainment"] >= target

    lo, hi = -1, len(options)  # options[lo] passes (or none), options[hi] fails (or none)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(options[mid]):
            lo = mid
        else:
            hi = mid
    best = options[lo] if lo >= 0 else None
    return {
        "tokens_per_iter": best,
        "target": target,
        "tried": dict(sorted(tried.items())),
        **({"best": tried[best]} if best is not None else {}),
    }
