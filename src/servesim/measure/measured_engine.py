"""Engines measured on this machine: fitting their per-iteration overheads on benchmark runs,
and the measured-engine file `servesim simulate --measured FILE` reads.

A measured engine is a one-replica `Deployment` whose iterations are priced by
`profiled.ProfiledTiming` (operator tables or an iteration model) and whose `EngineProfile`
overheads (scheduling, sampling, streaming, HTTP) are fitted here on benchmark runs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.profiled import ForwardOverhead, IterationModel, OpTables, ProfiledTiming
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.workload import Workload
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.model import ModelSpec


def measured_deployment(
    model: ModelSpec,
    device: Device,
    engine: EngineProfile,
    tables: OpTables | None = None,
    forward_overhead: ForwardOverhead | None = None,
    iteration: IterationModel | None = None,
) -> Deployment:
    """A one-replica deployment priced from measurements: by the iteration model when given,
    else by the operator tables and the forward pass's overhead."""
    timing = ProfiledTiming(tables, forward_overhead or ForwardOverhead(), iteration)
    return Deployment(model=model, device=device, engine=engine, profiled=timing)


# ---- engine overheads from benchmark runs ----------------------------------------------------
OVERHEADS = ("step_overhead_s", "per_seq_overhead_s", "request_overhead_s", "prefill_overhead_s")


def run_stats(cols: dict[str, np.ndarray], per_request: bool) -> np.ndarray:
    """What a calibration run is fitted on: every request's TTFT and TPOT when the run is
    deterministic (one closed-loop client), otherwise TTFT and TPOT medians and 90th
    percentiles."""
    ok = cols["finish_s"] >= 0
    ttft, tpot = cols["ttft_s"][ok], cols["tpot_s"][ok]
    if per_request:  # a one-token request has no TPOT (nan) on either side: 0 against 0
        return np.concatenate([ttft, np.nan_to_num(tpot, nan=0.0)])
    timed = tpot[np.isfinite(tpot)]
    tails = np.percentile(timed, [50, 90]) if len(timed) else np.zeros(2)
    return np.array([*np.percentile(ttft, [50, 90]), *tails])


def per_request(work: ClosedLoop | Workload) -> bool:
    """Whether a run is deterministic enough to fit request by request (one client)."""
    return isinstance(work, ClosedLoop) and work.clients == 1


def fit_engine_overheads(
    dep: Deployment, runs: list[tuple[ClosedLoop | Workload, np.ndarray]]
) -> tuple[EngineProfile, float]:
    """The engine's per-iteration, per-sequence, per-prefill and per-request costs that make the
    simulator reproduce benchmark runs (`run_stats` of each, every run weighing the same);
    returns the engine profile and the rms log error left."""
    from scipy.optimize import least_squares

    def with_x(x: np.ndarray) -> Deployment:
        vals = {k: float(math.exp(v)) for k, v in zip(OVERHEADS, x, strict=True)}
        return replace(dep, engine=dep.engine.with_overrides(**vals))

    def resid(x: np.ndarray) -> np.ndarray:
        d = with_x(x)
        out = []
        for work, meas in runs:
            if isinstance(work, ClosedLoop):
                cols = simulate(d, closed_loop=work).columns()
            else:
                cols = simulate(d, work).columns()
            sim = run_stats(cols, per_request(work))
            out.append(np.log(np.maximum(sim, 1e-9) / meas) / math.sqrt(len(meas)))
        return np.concatenate(out)

    x0 = np.log([1e-3, 1e-4, 2e-3, 1e-4])
    bounds = (np.log([1e-6] * 4), np.log([0.1] * 4))
    res = least_squares(resid, x0, bounds=bounds, diff_step=0.05, max_nfev=200)
    rms = math.sqrt(float(np.mean(res.fun**2)) * len(runs))
    return with_x(res.x).engine, rms


# ---- measured engines on disk ------------------------------------------------------------------
MEASURED_KIND = "servesim-measured-engine"


def save_measured_engine(
    dep: Deployment,
    path: str | Path,
    model_config: str | Path,
    devices_yaml: str | Path | None = None,
) -> Path:
    """Write what `servesim simulate --measured FILE` needs to rebuild `dep`: the model config,
    the device (and its catalog file), the fitted engine profile and the iteration costs (the
    operator-table folder with the forward overhead, or the iteration model). Paths are stored
    relative to the file so the folder can move."""
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: str | Path) -> str:
        return os.path.relpath(Path(p).resolve(), base)

    doc: dict[str, object] = {
        "kind": MEASURED_KIND,
        "model_config": rel(model_config),
        "device": dep.device.name,
        "devices": rel(devices_yaml) if devices_yaml else None,
        "engine_profile": asdict(dep.engine),
    }
    timing = dep.profiled
    if timing is not None and timing.iteration is not None:
        doc["iteration_model"] = asdict(timing.iteration)
    elif timing is not None and timing.tables is not None:
        doc["tables"] = rel(timing.tables.dir)
        doc["forward_overhead"] = asdict(timing.forward_overhead)
    else:
        raise ServesimError("A measured engine needs operator tables or an iteration model.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_measured_engine(path: str | Path) -> Deployment:
    """The deployment a `save_measured_engine` file describes; a file that is not one, or that
    names missing parts, is refused with the reason."""
    from servesim.spec.devices import catalog
    from servesim.spec.model import load_model

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServesimError(f"Measured engine file {path} does not exist.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ServesimError(f"Measured engine file {path} is not readable JSON ({exc}).") from None
    if not isinstance(doc, dict) or doc.get("kind") != MEASURED_KIND:
        raise ServesimError(
            f"{path} is not a measured-engine file (written by validation/real_engine.py or "
            "servesim.measure.measured_engine.save_measured_engine)."
        )
    base = path.parent
    missing = [k for k in ("model_config", "device", "engine_profile") if k not in doc]
    if missing:
        raise ServesimError(f"Measured engine file {path} lacks {', '.join(missing)}.")
    model = load_model(str(base / doc["model_config"]))
    device = catalog(base / doc["devices"] if doc.get("devices") else None).get(str(doc["device"]))
    try:
        engine = EngineProfile(**doc["engine_profile"])
        iteration = IterationModel(**doc["iteration_model"]) if "iteration_model" in doc else None
        overhead = ForwardOverhead(**doc.get("forward_overhead", {}))
    except TypeError as exc:
        raise ServesimError(f"Measured engine file {path} has an unknown field ({exc}).") from None
    tables = None
    if iteration is None:
        if "tables" not in doc:
            raise ServesimError(
                f"Measured engine file {path} has neither operator tables nor an iteration model."
            )
        tables = OpTables(base / doc["tables"])
    return measured_deployment(model, device, engine, tables, overhead, iteration)
