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

import json
import math
from dataclasses import dataclass
from pathlib import Path

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
NFIXED = 4  # memory share, op_s, step_s, barrier_s lead the parameter vector
BARRIER_PRIOR_S = 1e-6
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
    """Parameters (log memory share, log op_s, log step_s, log barrier_s, then per recipe log
    GEMM share and log GEMV share) as an Efficiency."""
    mem, op_s, step_s, bar = (math.exp(v) for v in x[:NFIXED])
    compute: dict[str, float] = {}
    gemv: dict[str, float] = {}
    n = len(recipes)
    for i, r in enumerate(recipes):
        for f in fmts[r]:
            compute[f] = math.exp(x[NFIXED + i])
            gemv[f] = math.exp(x[NFIXED + n + i])
    return Efficiency(compute, memory=mem, op_s=op_s, step_s=step_s, gemv=gemv, barrier_s=bar)


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
    # The barrier's prior: a cache-line round trip per extra thread and operator (~1 µs, what
    # the spec-only op_s stands for), where the spec-only default leaves it inside op_s.
    bar0 = math.log(p0.barrier_s if p0.barrier_s > 0 else BARRIER_PRIOR_S)
    x0 = np.array(
        [math.log(p0.memory), math.log(p0.op_s), math.log(p0.step_s), bar0, *gemm0, *gemv0]
    )
    meas = np.log([s.tokens_per_s for s in shots])

    def residuals(x: np.ndarray) -> np.ndarray:
        eff = _unpack(x, recipes, fmts)
        pred = np.log([s.predicted_tokens_per_s(device, eff) for s in shots])
        return np.concatenate([pred - meas, (x - x0) / PRIOR_LOG_SD * 0.1])

    lo = np.full_like(x0, -np.inf)
    hi = np.full_like(x0, np.inf)
    hi[0] = 0.0  # memory share <= 1
    hi[NFIXED:] = 0.0  # compute shares (GEMM and GEMV) <= 1
    lo[0], lo[NFIXED:] = math.log(0.02), math.log(0.005)
    lo[1], hi[1] = math.log(1e-8), math.log(1e-3)
    lo[2], hi[2] = math.log(1e-7), math.log(1e-1)
    lo[3], hi[3] = math.log(1e-9), math.log(1e-4)  # barrier: ns (idle spin) to 100 µs
    # The roofline's max() leaves flat directions (a compute share does not matter while memory
    # binds), so one start can stall; start from the prior and from lower compute and memory
    # shares, and keep the best.
    n = len(recipes)
    best = None
    for gemv_scale in (1.0, 0.3, 0.1):
        for mem_scale in (1.0, 0.5):
            start = x0.copy()
            start[NFIXED + n :] += math.log(gemv_scale)
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


# ---- measurements in, fit file out (`servesim fewshot --shots`, `validation/edge.py`) -------
# One row per measurement. `phase` decode: `tokens` sequences decoding one token each (default
# 1) at `context` tokens each; prefill: one prompt of `tokens` tokens after `context` cached
# ones. The speed as `tokens_per_s` or as the forward pass's `seconds`. `model`: a bundled name
# or a config.json path (relative to the CSV's folder); `threads` 0 or blank: every core.
SHOT_CSV_COLUMNS = ("model", "quant", "threads", "phase", "tokens", "context", "tokens_per_s")
OPTIONAL_COLUMNS = ("threads", "tokens", "context", "tokens_per_s", "seconds")
FIT_KIND = "servesim local-device efficiency fit"


def _model(name: str, folder: Path) -> ModelSpec:
    from servesim.spec.model import load_model

    local = folder / name
    return load_model(str(local) if name.endswith(".json") and local.is_file() else name)


def _whole(cell: str, col: str, where: str, default: int, least: int) -> int:
    if not cell:
        return default
    try:
        v = float(cell)
    except ValueError:
        raise ServesimError(f"{where}: {col} must be a whole number, got {cell!r}.") from None
    if v != int(v) or v < least:
        raise ServesimError(f"{where}: {col} must be a whole number >= {least}, got {cell!r}.")
    return int(v)


def read_shots(path: str | Path) -> list[Shot]:
    """Measured tokens/s of a local device from a CSV (`SHOT_CSV_COLUMNS`; see above), at most
    `MAX_SHOTS` rows; a bad file raises one sentence naming the line and column."""
    from servesim.predictor.calibrate import TEXT, read_csv
    from servesim.spec.quant import get_quant

    p = Path(path)
    if not p.is_file():
        raise ServesimError(f"Measurements file {str(p)!r} does not exist; check the path.")
    table = read_csv(
        p,
        {"model": TEXT, "quant": TEXT, "phase": TEXT},
        {c: (TEXT, "") for c in OPTIONAL_COLUMNS},
    )
    n = len(table["model"])
    if not n:
        raise ServesimError(f"{p} has a header but no measurements; add one row per measurement.")
    if n > MAX_SHOTS:
        raise ServesimError(
            f"{p} has {n} measurements; few-shot fitting takes at most {MAX_SHOTS}."
        )
    shots: list[Shot] = []
    for i in range(n):
        where = f"{p} line {i + 2}"

        def cell(col: str, i: int = i) -> str:
            return str(table[col][i]).strip()

        phase = cell("phase").lower()
        if phase not in ("decode", "prefill"):
            raise ServesimError(f"{where}: phase must be decode or prefill, got {cell('phase')!r}.")
        try:
            model = _model(cell("model"), p.parent)
            quant = get_quant(cell("quant"))
        except ServesimError as exc:
            raise ServesimError(f"{where}: {exc}") from None
        threads = _whole(cell("threads"), "threads", where, 0, 0)
        context = _whole(cell("context"), "context", where, 0, 0)
        if phase == "decode":
            seqs = _whole(cell("tokens"), "tokens", where, 1, 1)
            step = Step(seqs, seqs, context)
        else:
            if not cell("tokens"):
                raise ServesimError(f"{where}: a prefill row needs its prompt length in tokens.")
            step = Step(_whole(cell("tokens"), "tokens", where, 1, 1), 1, context)
        speed, secs = cell("tokens_per_s"), cell("seconds")
        if bool(speed) == bool(secs):
            raise ServesimError(f"{where}: give exactly one of tokens_per_s and seconds.")
        try:
            value = float(speed or secs)
        except ValueError:
            raise ServesimError(f"{where}: {speed or secs!r} is not a number.") from None
        if not (value > 0 and math.isfinite(value)):
            raise ServesimError(f"{where}: the measured speed must be a number > 0.")
        tps = value if speed else step.tokens / value
        shots.append(Shot(model, quant, step, threads, tps))
    return shots


@dataclass(frozen=True)
class EdgeFit:
    """A device's fitted efficiencies, the measurements behind them and how well they fit."""

    device: str
    efficiency: Efficiency
    shots: int
    fit_ape: tuple[float, ...]  # each measurement's error under the fit

    def as_dict(self) -> dict:
        """Plain fields for JSON (the fit file's body)."""
        e = self.efficiency
        return {
            "kind": FIT_KIND,
            "device": self.device,
            "shots": self.shots,
            "fit_ape": list(self.fit_ape),
            "efficiency": {
                "compute": e.compute,
                "gemv": e.gemv,
                "memory": e.memory,
                "op_s": e.op_s,
                "step_s": e.step_s,
                "barrier_s": e.barrier_s,
            },
        }

    def save(self, path: str | Path) -> None:
        """Write the fit as JSON."""
        Path(path).write_text(json.dumps(self.as_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> EdgeFit:
        """Read a fit `servesim fewshot --shots` wrote."""
        doc = _read_json(Path(path))
        if doc is None or doc.get("kind") != FIT_KIND:
            raise ServesimError(
                f"{str(path)!r} is not a local-device fit; write one with servesim fewshot --shots."
            )
        try:
            e = doc["efficiency"]
            eff = Efficiency(
                {str(k): float(v) for k, v in e["compute"].items()},
                memory=float(e["memory"]),
                op_s=float(e["op_s"]),
                step_s=float(e["step_s"]),
                gemv={str(k): float(v) for k, v in e["gemv"].items()},
                barrier_s=float(e.get("barrier_s", 0.0)),
            )
            return cls(
                str(doc["device"]), eff, int(doc["shots"]), tuple(map(float, doc["fit_ape"]))
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ServesimError(
                f"Local-device fit {str(path)!r} is damaged; write it again with servesim fewshot."
            ) from None


def _read_json(p: Path) -> dict | None:
    try:
        if not p.is_file() or p.stat().st_size > 1 << 20:
            return None
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_edge_fit(path: str | Path) -> bool:
    """Whether `path` holds a local-device fit (rather than a kernel fit)."""
    doc = _read_json(Path(path))
    return doc is not None and doc.get("kind") == FIT_KIND


def fit_shots(device: Device, shots: list[Shot]) -> EdgeFit:
    """Fit `device` on `shots` and record each measurement's error under the fit."""
    eff = fit_efficiency(device, shots)
    errs = tuple(ape(s.predicted_tokens_per_s(device, eff), s.tokens_per_s) for s in shots)
    return EdgeFit(device.name, eff, len(shots), errs)


def fit_csv(device: Device, path: str | Path) -> EdgeFit:
    """`servesim fewshot --shots`: fit `device` on the measurements in a CSV."""
    return fit_shots(device, read_shots(path))


def write_shots_csv(rows: list[dict], path: str | Path) -> None:
    """Write measurements (dicts keyed by `SHOT_CSV_COLUMNS`) as a CSV `read_shots` reads."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(SHOT_CSV_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in SHOT_CSV_COLUMNS})
