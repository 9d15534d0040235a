"""Few-shot adaptation of `device_step`'s efficiencies to one local device from a handful of
measured tokens/s (llama-bench prefill and decode rows).

The spec sheet gives peaks; what a runtime reaches depends on its kernels. With ≤ 10
measurements this fits, in log space and shrunk towards the spec-only defaults (a Gaussian prior
of width `PRIOR_LOG_SD` per parameter, so a parameter no measurement informs stays put): the
share of stream bandwidth decode reaches, the fixed seconds per operator and per pass, and per
weight recipe a compute share for many-row GEMMs (prefill) and one for a single row (decode): the
kernels differ (F16 widened to fp32, Q8_0 and Q4_K int8 dot products with different unpacking
costs), and a one-row GEMV pays the unpacking once per weight per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from servesim.errors import ServesimError
from servesim.predictor.device_step import (
    Efficiency,
    Step,
    default_efficiency,
    step_time,
)
from servesim.spec.devices import Device
from servesim.spec.model import ModelSpec
from servesim.spec.quant import BLOCK_BYTES_PER_WEIGHT, Quant, use_more_bits

MAX_SHOTS = 10
PRIOR_LOG_SD = 1.0  # one e-fold of prior width: the defaults are right within ~3x


@dataclass(frozen=True)
class Shot:
    """One measurement: a model in a recipe, a step shape, threads, and measured tokens/s."""

    model: ModelSpec
    quant: Quant
    step: Step
    threads: int
    tokens_per_s: float

    def predicted_tokens_per_s(self, device: Device, eff: Efficiency | None = None) -> float:
        """What `device_step` predicts for this measurement with `eff`."""
        return (
            self.step.tokens
            / step_time(self.model, self.quant, device, self.step, eff, self.threads).seconds
        )


def _formats(q: Quant, model: ModelSpec) -> set[str]:
    out = {q.base, q.output}
    if q.more_bits and any(use_more_bits(i, model.num_layers) for i in range(model.num_layers)):
        out.add(q.more_bits)
    return {f for f in out if f in BLOCK_BYTES_PER_WEIGHT}


def _unpack(x: np.ndarray, recipes: list[str], fmts: dict[str, set[str]]) -> Efficiency:
    """Parameters (log memory share, log op_s, log step_s, then per recipe log GEMM share and
    log GEMV share) as an Efficiency."""
    mem, op_s, step_s = math.exp(x[0]), math.exp(x[1]), math.exp(x[2])
    compute: dict[str, float] = {}
    gemv: dict[str, float] = {}
    n = len(recipes)
    for i, r in enumerate(recipes):
        for f in fmts[r]:
            compute[f] = math.exp(x[3 + i])
            gemv[f] = math.exp(x[3 + n + i])
    return Efficiency(compute, memory=mem, op_s=op_s, step_s=step_s, gemv=gemv)


def fit_efficiency(
    device: Device, shots: list[Shot], prior: Efficiency | None = None
) -> Efficiency:
    """Efficiencies of `device` that best explain `shots` (≤ `MAX_SHOTS`), in log space with a
    prior at the spec-only defaults; compute shares capped at 1 and memory at 1."""
    if not shots:
        raise ServesimError("Few-shot fitting needs at least one measurement.")
    if len(shots) > MAX_SHOTS:
        raise ServesimError(
            f"Few-shot fitting takes at most {MAX_SHOTS} measurements, got {len(shots)}."
        )
    if any(not s.tokens_per_s > 0 for s in shots):
        raise ServesimError("Every measured tokens/s must be greater than 0.")
    p0 = prior or default_efficiency(device)
    recipes = sorted({s.quant.name for s in shots})
    fmts: dict[str, set[str]] = {}
    for s in shots:
        fmts.setdefault(s.quant.name, set()).update(_formats(s.quant, s.model))
    gemm0 = [math.log(p0.compute_share(sorted(fmts[r])[0])) for r in recipes]
    gemv0 = [math.log(p0.share(sorted(fmts[r])[0], 1)) for r in recipes]
    x0 = np.array([math.log(p0.memory), math.log(p0.op_s), math.log(p0.step_s), *gemm0, *gemv0])
    meas = np.log([s.tokens_per_s for s in shots])

    def residuals(x: np.ndarray) -> np.ndarray:
        eff = _unpack(x, recipes, fmts)
        pred = np.log([s.predicted_tokens_per_s(device, eff) for s in shots])
        return np.concatenate([pred - meas, (x - x0) / PRIOR_LOG_SD * 0.1])

    lo = np.full_like(x0, -np.inf)
    hi = np.full_like(x0, np.inf)
    hi[0] = 0.0  # memory share <= 1
    hi[3:] = 0.0  # compute shares (GEMM and GEMV) <= 1
    lo[0], lo[3:] = math.log(0.02), math.log(0.005)
    lo[1], hi[1] = math.log(1e-8), math.log(1e-3)
    lo[2], hi[2] = math.log(1e-7), math.log(1e-1)
    # The roofline's max() leaves flat directions (a compute share does not matter while memory
    # binds), so one start can stall; start from the prior and from lower compute and memory
    # shares, and keep the best.
    n = len(recipes)
    best = None
    for gemv_scale in (1.0, 0.3, 0.1):
        for mem_scale in (1.0, 0.5):
            start = x0.copy()
            start[3 + n :] += math.log(gemv_scale)
            start[0] += math.log(mem_scale)
            start = np.clip(start, lo + 1e-9, hi - 1e-9)
            res = least_squares(residuals, start, bounds=(lo, hi), method="trf")
            if best is None or res.cost < best.cost:
                best = res
    assert best is not None
    return _unpack(best.x, recipes, fmts)


def ape(predicted: float, measured: float) -> float:
    """Absolute percentage error of a prediction against a measurement."""
    return abs(predicted - measured) / measured
