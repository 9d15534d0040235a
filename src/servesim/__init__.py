"""servesim: predict, simulate and plan LLM serving against latency SLOs.

The flow, one subpackage per step (a lower one never imports a higher one):
`spec` (model, devices, parallel layout, memory, engine profiles) → `predictor` (one
iteration's time and energy) → `sim` (request-level serving under a workload) → `planner`
(deployments searched and ranked) → `report` (HTML report, launch configs); `measure` checks
it all against real servers; `cli` is the command line.

The names below are the API a user starts from (loaded on first use, so `import servesim`
stays cheap):

    import servesim
    dep = servesim.Deployment(servesim.load_model("meta-llama/Llama-3.1-8B"),
                              servesim.get_device("h100_sxm"))
    servesim.predict(dep, servesim.BatchShape(decode_seqs=64, decode_context=128_000))
    res = servesim.simulate(dep, servesim.bundled_trace("azure_conv").scaled_to_rate(8))
    res.summary(servesim.Slo(ttft_s=1.0, tpot_s=0.05))

`examples/` has runnable scripts; ARCHITECTURE.md maps every module.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_API = {
    "predict": "servesim.api",
    "simulate": "servesim.api",
    "plan": "servesim.api",
    "load_model": "servesim.spec.model",
    "ModelSpec": "servesim.spec.model",
    "get_device": "servesim.spec.devices",
    "Device": "servesim.spec.devices",
    "Parallel": "servesim.spec.parallel",
    "get_engine": "servesim.spec.engine_profile",
    "EngineProfile": "servesim.spec.engine_profile",
    "SpeculativeDecoding": "servesim.spec.speculative",
    "BatchShape": "servesim.predictor.iteration",
    "IterationCost": "servesim.predictor.iteration",
    "Predictor": "servesim.predictor.iteration",
    "Deployment": "servesim.sim.deployment",
    "DisaggDeployment": "servesim.sim.disagg",
    "SemiPDDeployment": "servesim.sim.semipd",
    "SimResult": "servesim.sim.result",
    "Slo": "servesim.sim.metrics",
    "Workload": "servesim.sim.workload",
    "synthetic": "servesim.sim.synthetic",
    "ClosedLoop": "servesim.sim.synthetic",
    "client_protocol": "servesim.sim.clients",
    "read_trace": "servesim.sim.traces",
    "bundled_trace": "servesim.sim.traces",
    "PlanSpec": "servesim.planner.candidates",
    "SearchSpace": "servesim.planner.candidates",
    "WorkloadSpec": "servesim.planner.candidates",
    "PlanResult": "servesim.planner.plan",
    "write_report": "servesim.report.page",
    "ServesimError": "servesim.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """Load a public name from the module that defines it, on first use."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'servesim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
