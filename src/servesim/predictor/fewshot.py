"""Few-shot calibration of an unseen device: a handful of measurements instead of a full profile.

(The efficiency-factor method of `servesim fewshot`; `servesim calibrate --shots` adapts the
cross-GPU transfer model instead, `fewshot_transfer`.)

HELP's idea (Lee et al., NeurIPS 2021): keep what transfers between devices and learn only a
low-dimensional device embedding from a few samples. Here what transfers is the kernel model's
shape dependence (tile shapes, waves, causal structure, smoothing: `roofline` with parameters
fitted on devices already measured), and the embedding is three log-scale factors of the
device's effective efficiencies (compute, memory bandwidth, fixed latency) shared by every
operator family, plus a smaller per-family deviation of each. A Gaussian prior keeps them at zero
(the spec sheet scaled by the known devices' efficiencies) until measurements pull them away,
so k = 0 is the spec-sheet transfer and each measurement moves only what it can inform.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import calibrate
from servesim.predictor.calibrate import Samples, subset
from servesim.predictor.roofline import KernelFit, default_fit
from servesim.spec.devices import Device

FAMILIES = ("gemm", "attention_prefill", "attention_decode")
# Which parameters each device factor scales, per family (compute, memory, fixed latency).
SCALED: dict[str, dict[str, tuple[str, ...]]] = {
    "gemm": {
        "compute": ("compute_eff",),
        "memory": ("mem_eff",),
        "latency": ("floor_s", "k_latency_s"),
    },
    "gemm_8bit": {
        "compute": ("compute_eff",),
        "memory": ("mem_eff",),
        "latency": ("floor_s", "k_latency_s", "quant_floor_s", "quant_row_sm_s"),
    },
    "attention_prefill": {
        "compute": ("compute_eff",),
        "memory": ("mem_eff",),
        "latency": ("floor_s", "fp8_floor_s", "token_sm_s", "fp8_token_sm_s"),
    },
    "attention_decode": {
        "compute": ("compute_eff", "compute_eff_fp8"),
        "memory": ("mem_eff", "mem_eff_fp8"),
        "latency": ("floor_s", "fp8_floor_s", "cta_s"),
    },
}
FACTORS = ("compute", "memory", "latency")
DEVICE_SIGMA = 0.5  # prior sd of a device factor, in log units (x1.65 either way)
FAMILY_SIGMA = 0.25  # prior sd of a family's deviation from the device factor
NOISE_SIGMA = 0.1  # sd of a measurement's log error under the model (model error + noise)


@dataclass(frozen=True)
class Shots:
    """Measurements of one device: samples per operator family (calibrate's layout)."""

    samples: dict[str, Samples]

    def __len__(self) -> int:
        return sum(len(s["latency_s"]) for s in self.samples.values())


def measurements(tables_dir: str | Path) -> Shots:
    """Every GEMM and attention measurement in a folder of aiconfigurator-format tables."""
    tables = calibrate.load_tables(tables_dir)
    samples = calibrate.all_samples(tables)
    fam = {f: s for f, s in samples.items() if f in FAMILIES}
    if not fam:
        raise ServesimError(
            f"No GEMM or attention tables in {str(tables_dir)!r}; expected gemm_perf.csv, "
            "context_attention_perf.csv or generation_attention_perf.csv."
        )
    return Shots(fam)


def draw(pool: Shots, k: int, seed: int = 0) -> tuple[Shots, Shots]:
    """k measurements drawn at random from all families together, and the rest."""
    keys = [(f, i) for f, s in pool.samples.items() for i in range(len(s["latency_s"]))]
    if not 0 <= k <= len(keys):
        raise ServesimError(f"Asked for {k} measurements but the tables hold {len(keys)}.")
    rng = np.random.default_rng(seed)
    pick = set(rng.choice(len(keys), size=k, replace=False).tolist()) if k else set()
    chosen: dict[str, Samples] = {}
    others: dict[str, Samples] = {}
    for f, s in pool.samples.items():
        mask = np.array([j in pick for j, (ff, _) in enumerate(keys) if ff == f], dtype=bool)
        if mask.any():
            chosen[f] = subset(s, mask)
        if (~mask).any():
            others[f] = subset(s, ~mask)
    return Shots(chosen), Shots(others)


def sample(pool: Shots, k: int, seed: int = 0) -> Shots:
    """k measurements drawn at random (without replacement) from all families together."""
    return draw(pool, k, seed)[0]


def apply(prior: KernelFit, z: np.ndarray, note: str = "") -> KernelFit:
    """The prior with its efficiencies scaled by the device factors `z` (see `_unpack`)."""
    params = copy.deepcopy(prior.params)
    dev, fam = _unpack(z)
    for f, groups in SCALED.items():
        dev_f = fam["gemm" if f == "gemm_8bit" else f]
        for j, factor in enumerate(FACTORS):
            scale = math.exp(dev[j] + dev_f[j])
            for name in groups[factor]:
                if name in params[f]:
                    # Efficiencies grow with the factor; fixed latencies shrink with it.
                    mult = scale if factor != "latency" else 1.0 / scale
                    params[f][name] = params[f][name] * mult
    return KernelFit(params=params, fitted_on=note or prior.fitted_on)


def _unpack(z: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    dev = z[:3]
    fam = {f: z[3 + 3 * i : 6 + 3 * i] for i, f in enumerate(FAMILIES)}
    return dev, fam


def predict(shots: Shots, device: Device, fit: KernelFit) -> dict[str, np.ndarray]:
    """Predicted seconds for every measurement, per family."""
    return {f: calibrate.predict(f, s, device, fit) for f, s in shots.samples.items()}


def fit_device(
    shots: Shots,
    device: Device,
    prior: KernelFit | None = None,
    device_sigma: float = DEVICE_SIGMA,
    family_sigma: float = FAMILY_SIGMA,
) -> KernelFit:
    """MAP fit of the device factors to a few measurements (k = 0 returns the prior)."""
    from scipy.optimize import least_squares

    prior = prior or default_fit()
    n_z = 3 + 3 * len(FAMILIES)
    note = f"{device.name}: few-shot ({len(shots)} measurements) on {prior.fitted_on or 'prior'}"
    if len(shots) == 0:
        return apply(prior, np.zeros(n_z), note)
    meas = {f: s["latency_s"] for f, s in shots.samples.items()}
    sig = np.array([device_sigma] * 3 + [family_sigma] * (n_z - 3))

    def resid(z: np.ndarray) -> np.ndarray:
        pred = predict(shots, device, apply(prior, z))
        r = [np.log(np.maximum(pred[f], 1e-15) / meas[f]) / NOISE_SIGMA for f in meas]
        return np.concatenate([*r, z / sig])  # Gaussian prior as pseudo-residuals

    # Robust (soft-L1 beyond one sd): a measurement the model cannot explain pulls linearly.
    res = least_squares(resid, np.zeros(n_z), loss="soft_l1", f_scale=1.0, x_scale=1.0)
    return apply(prior, res.x, note)


def median_ape(shots: Shots, device: Device, fit: KernelFit) -> float:
    """Median absolute percentage error of `fit` over all measurements of `shots`."""
    pred = predict(shots, device, fit)
    errs = [calibrate.ape(pred[f], s["latency_s"]) for f, s in shots.samples.items()]
    return float(np.median(np.concatenate(errs))) if errs else math.nan


def split_groups(pool: Shots, seed: int = 0) -> tuple[Shots, Shots]:
    """Two halves of the measurements by shape group (GEMM (n, k); attention heads and KV
    dtype), so neither half has seen the other's shapes."""
    a: dict[str, Samples] = {}
    b: dict[str, Samples] = {}
    rng = np.random.default_rng(seed)
    for f, s in pool.samples.items():
        key = np.array([f"{g} {d}" for g, d in zip(s["group"], _dtype(f, s), strict=True)])
        groups = sorted(set(key.tolist()))
        rng.shuffle(groups)
        first = set(groups[: max(1, len(groups) // 2)])
        mask = np.array([k in first for k in key])
        if mask.any():
            a[f] = subset(s, mask)
        if (~mask).any():
            b[f] = subset(s, ~mask)
    return Shots(a), Shots(b)


def _dtype(family: str, s: Samples) -> np.ndarray:
    return s["dtype"] if family == "gemm" else s["kv_dtype"]


def fit_prior(known: Shots, device: Device) -> KernelFit:
    """A full calibration on the known shapes (the 'devices already fitted'); families they do
    not inform keep the bundled fit."""
    fit, done = calibrate.fit_families(known.samples, device, calibrate._priors())
    params = copy.deepcopy(default_fit().params)
    for f in done:
        params[f] = dict(fit.params[f])
    return KernelFit(params=params, fitted_on=f"{device.name}, {len(known)} measurements")


# ---- transfer across GPUs: a prior learned on other GPUs, adapted by k measurements -------------
DEVICE_SD_SHARE = 0.5  # the shared device factor's prior sd, as a share of the families' median


def adapt(
    shots: Shots, device: Device, prior: KernelFit, noise_sigma: float = NOISE_SIGMA
) -> KernelFit:
    """MAP adaptation of a cross-GPU fit (`calibrate.fit_transfer`) to a device from `shots`.

    Unknowns: per efficiency factor (compute, memory, latency) one log-scale shared by every
    family, plus one per family, added to the device model's constant. Their Gaussian prior
    has the spread across the fitted GPUs of what the spec-sheet features did not explain
    (`prior.factor_sd`), so a factor that varies little between GPUs moves little, and k = 0
    returns the prior's spec-sheet transfer unchanged."""
    from scipy.optimize import least_squares

    note = f"{device.name}: adapted with {len(shots)} measurements on {prior.fitted_on}"
    fams = [
        f
        for f in prior.factor_sd
        if any(calibrate.source_of(f) == src for src in shots.samples) and prior.factor_sd[f]
    ]
    if len(shots) == 0 or not fams:
        return _retag(prior, note)
    facs = [(f, fac) for f in fams for fac in prior.factor_sd[f]]
    shared = sorted({fac for _, fac in facs})
    fam_sd = np.array([prior.factor_sd[f][fac] for f, fac in facs])
    dev_sd = np.array(
        [
            DEVICE_SD_SHARE * float(np.median([prior.factor_sd[f][x] for f, x in facs if x == fac]))
            for fac in shared
        ]
    )
    sig = np.concatenate([dev_sd, fam_sd])
    rows = [
        (f, src, s)
        for f in fams
        for src, s in shots.samples.items()
        if calibrate.source_of(f) == src
    ]
    meas = {src: s["latency_s"] for _, src, s in rows}

    def fit_of(z: np.ndarray) -> KernelFit:
        return _shift(
            prior,
            {sf: z[i] for i, sf in enumerate(shared)},
            {ff: z[len(shared) + j] for j, ff in enumerate(facs)},
        )

    def resid(z: np.ndarray) -> np.ndarray:
        trial = fit_of(z)
        r = [
            np.log(np.maximum(calibrate.predict(src, s, device, trial), 1e-15) / meas[src])
            / noise_sigma
            for src, s in {src: s for _, src, s in rows}.items()
        ]
        return np.concatenate([*r, z / sig])

    res = least_squares(resid, np.zeros(len(sig)), loss="soft_l1", f_scale=1.0, x_scale=1.0)
    return _retag(fit_of(res.x), note)


def _shift(
    prior: KernelFit, shared: dict[str, float], own: dict[tuple[str, str], float]
) -> KernelFit:
    """`prior` with each (family, factor) log-scale moved by the shared and its own offset."""
    model = {f: {fac: dict(c) for fac, c in m.items()} for f, m in prior.device_model.items()}
    for (f, fac), v in own.items():
        coefs = model.setdefault(f, {}).setdefault(fac, {})
        coefs["const"] = coefs.get("const", 0.0) + float(v) + float(shared.get(fac, 0.0))
    return KernelFit(
        params=prior.params,
        fitted_on=prior.fitted_on,
        device_model=model,
        factor_sd=prior.factor_sd,
    )


def _retag(fit: KernelFit, note: str) -> KernelFit:
    return KernelFit(
        params=fit.params, fitted_on=note, device_model=fit.device_model, factor_sd=fit.factor_sd
    )
