"""A kernel-time model that transfers across GPUs: the roofline times a learned shape correction.

Base: the physical roofline (`roofline`, with the bundled H100 fit), which already prices each
kernel from the device's own SMs, peak rate per dtype and bandwidths. On top of it, per operator
family, log(measured / roofline) is predicted as a ridge-shrunk linear trend in the spec-sheet
features (the smooth device scaling) plus a gradient-boosted tree ensemble on
device-normalised shape features (`transfer_features`: intensity over the ridge point, waves
over the SMs and the last wave's fill, bytes over L2, number-format kernel class, GPU count and
link class) and spec-sheet features. It is fitted on aiconfigurator-core's measured tables of
several GPUs (`fit`), each GPU weighing the same, and applied to any device of the catalog:
a GPU nobody measured gets the correction its spec sheet implies. `benchmarks/kernels.py
--leave-one-gpu-out` fits it on all GPUs but one and predicts the one left out.

Fitting needs scikit-learn; the fitted model (`transfer_model.TransferModel`) predicts with
numpy only, and the bundled one (`data/transfer_model.npz`, written by `scripts/fit_transfer.py`)
is read without pickle.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import calibrate, twin_efficiency
from servesim.predictor.roofline import KernelFit, physical_fit
from servesim.predictor.transfer_model import (
    FamilyModel,
    TransferModel,
    corrects_family,
    features,
)
from servesim.predictor.trees import from_sklearn
from servesim.spec.devices import Device

Samples = dict[str, np.ndarray]
GpuData = dict[str, tuple[Device, dict[str, Samples]]]

# Model family -> the sample families (`calibrate.all_samples`) whose rows it is fitted on.
SOURCES: dict[str, tuple[str, ...]] = {
    "gemm": ("gemm",),
    "attention_prefill": ("attention_prefill",),
    "attention_decode": ("attention_decode",),
    "mla_prefill": ("mla_prefill",),
    "mla_decode": ("mla_decode",),
    "moe": ("moe",),
    "allreduce": ("nccl", "custom_allreduce"),
}
FAMILY_OF = {src: fam for fam, srcs in SOURCES.items() for src in srcs}
# Boosting settings: shallow trees, strong leaves, so a split needs several GPUs' rows to agree.
MAX_ITER = 150
MAX_LEAF_NODES = 15
MIN_SAMPLES_LEAF = 40
LEARNING_RATE = 0.1
L2_REGULARIZATION = 1.0
# Ridge penalty of the linear device term, per GPU's worth of weight, on device features scaled
# to unit spread across the fitted GPUs: with ~9 GPUs it keeps the term to the trend they share.
LINEAR_RIDGE = 20.0


def rows_of(source: str, s: Samples) -> Samples:
    """The rows of a sample family the transfer model covers (all-reduce only for nccl)."""
    if source == "nccl":
        return calibrate.subset(s, s["op"] == "all_reduce")
    return s


def design(
    family: str, source: str, s: Samples, device: Device, base: KernelFit | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(features by name, roofline seconds) of sample rows `s` of `source` on `device`."""
    t_base = np.maximum(calibrate.predict(source, s, device, base or physical_fit()), 1e-9)
    return features(family, s, device, t_base), t_base


def predict(model: TransferModel, source: str, s: Samples, device: Device) -> np.ndarray:
    """Seconds for sample rows `s` of sample family `source` on `device`: the bundled
    roofline times the model's correction."""
    fam = FAMILY_OF[source]
    feats, t_base = design(fam, source, s, device)
    if not corrects_family(fam, device):  # as the product prices it (roofline.collective_np)
        return t_base
    return t_base * np.exp(twin_efficiency.log_correction(model, fam, s, device, feats))


def _family_arrays(
    data: GpuData, family: str, base: KernelFit
) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """Per GPU: (features, log residual of the measurement over the roofline) of `family`."""
    out = {}
    for gpu, (dev, samples) in data.items():
        parts = []
        for src in SOURCES[family]:
            s = samples.get(src)
            if not s:
                continue
            s = rows_of(src, s)
            if not len(s["latency_s"]):
                continue
            feats, t_base = design(family, src, s, dev, base)
            parts.append((feats, np.log(s["latency_s"] / t_base)))
        if parts:
            names = sorted(parts[0][0])
            feats = {n: np.concatenate([p[0][n] for p in parts]) for n in names}
            out[gpu] = (feats, np.concatenate([p[1] for p in parts]))
    return out


def fit_family(
    per_gpu: dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
    seed: int = 0,
    max_iter: int = MAX_ITER,
) -> FamilyModel:
    """Boosted trees on log(measured / roofline), every GPU weighing the same."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:  # pragma: no cover - a dependency
        raise ServesimError(
            "Fitting the transfer model needs scikit-learn; install servesim's dependencies."
        ) from None
    names = tuple(sorted(next(iter(per_gpu.values()))[0]))
    x = np.vstack([np.column_stack([f[n] for n in names]) for f, _ in per_gpu.values()])
    y = np.concatenate([r for _, r in per_gpu.values()])
    w = np.concatenate([np.full(len(r), 1.0 / len(r)) for _, r in per_gpu.values()])
    model = HistGradientBoostingRegressor(
        loss="absolute_error",
        max_iter=max_iter,
        learning_rate=LEARNING_RATE,
        max_leaf_nodes=MAX_LEAF_NODES,
        min_samples_leaf=MIN_SAMPLES_LEAF,
        l2_regularization=L2_REGULARIZATION,
        early_stopping=False,
        random_state=seed,
    )
    lin = _device_trend(x, y, w, names)
    model.fit(x, y - x @ lin[:-1] - lin[-1], sample_weight=w * len(y) / len(per_gpu))
    # The correction's range: the typical GPU's 1st to 99th percentile (one GPU's outliers do
    # not widen it for all), stretched to reach every GPU's median.
    qs = np.array([np.percentile(r, [1.0, 50.0, 99.0]) for _, r in per_gpu.values()])
    lo, hi = np.median(qs[:, 0]), np.median(qs[:, 2])
    bounds = np.array([min(lo, qs[:, 1].min()), max(hi, qs[:, 1].max())])
    return FamilyModel(names, from_sklearn(model), lin, bounds)


def _device_trend(x: np.ndarray, y: np.ndarray, w: np.ndarray, names: tuple[str, ...]) -> Any:
    """Weighted ridge of the log residual on the device features (coefficients in the raw
    features' units, intercept last); LINEAR_RIDGE None fits none."""
    out = np.zeros(len(names) + 1)
    cols = [i for i, n in enumerate(names) if n.startswith("dev_")]
    if LINEAR_RIDGE is None or not cols:
        out[-1] = float(np.average(y, weights=w))
        return out
    d = x[:, cols]
    mu = np.average(d, axis=0, weights=w)
    sd = np.sqrt(np.average((d - mu) ** 2, axis=0, weights=w))
    keep = sd > 1e-9
    z = (d[:, keep] - mu[keep]) / sd[keep]
    ym = float(np.average(y, weights=w))
    lhs = (z * w[:, None]).T @ z + LINEAR_RIDGE * np.eye(z.shape[1])
    beta = np.linalg.solve(lhs, (z * w[:, None]).T @ (y - ym))
    coef = np.zeros(len(cols))
    coef[keep] = beta / sd[keep]
    out[cols] = coef
    out[-1] = ym - float(mu @ coef)
    return out


def fit(
    data: GpuData,
    base: KernelFit | None = None,
    families: tuple[str, ...] | None = None,
    seed: int = 0,
    max_iter: int = MAX_ITER,
) -> TransferModel:
    """The transfer model fitted on every GPU of `data` (their sampled table rows)."""
    base = base or physical_fit()
    out = {}
    for fam in families or tuple(SOURCES):
        per_gpu = _family_arrays(data, fam, base)
        if per_gpu:
            out[fam] = fit_family(per_gpu, seed, max_iter)
    if not out:
        raise ServesimError("No measured rows to fit the transfer model on.")
    return TransferModel(out, f"fitted on {', '.join(sorted(data))}")


def leave_one_gpu_out(data: GpuData, gpu: str, **kw: Any) -> TransferModel:
    """The transfer model fitted on every GPU of `data` except `gpu`."""
    if gpu not in data:
        raise ServesimError(f"GPU {gpu!r} has no tables here; pick one of {', '.join(data)}.")
    return fit({g: d for g, d in data.items() if g != gpu}, **kw)


def log_ratio_spread(values: np.ndarray) -> float:
    """Robust sd of log ratios (1.4826 x median absolute deviation)."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return math.nan
    return float(1.4826 * np.median(np.abs(v - np.median(v))))
