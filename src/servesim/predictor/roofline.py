"""Operator-level latency model: a roofline per kernel with fitted, shape-dependent efficiencies.

Each kernel time is `floor + smooth_max(compute time, memory time)`. Compute time counts the work
the kernel really issues (tiles padded to the tile shape, waves of thread blocks over the device's
own SM count, per-tile prologue/epilogue, the causal-mask diagonal) at the device's peak FLOP/s
times a fitted efficiency; memory time counts the bytes moved at the device's HBM bandwidth times
a fitted efficiency. Collectives pay a latency per algorithm step plus bytes at a bus bandwidth
that saturates with message size towards a fraction of the link bandwidth. The parameters (a
handful per operator family, `KernelFit.params`) are fitted by `servesim.predictor.calibrate`.
They transfer to other devices through their spec sheets twice over: the formulas use the
device's own SMs, peak rates and bandwidths, and an optional `KernelFit.device_model` scales each
family's compute, memory and fixed-latency efficiencies by a log-linear function of spec-sheet
features (`device_features`: per-SM tensor rate, SM count, HBM bandwidth, machine balance, L2,
link bandwidth), fitted jointly on several measured GPUs. No per-device constants.

SI units throughout: bytes, seconds, FLOP/s. The `*_np` variants take numpy arrays for the shape
arguments (the fitting uses them); the scalar API runs the same formulas on plain floats.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import transfer_model
from servesim.predictor.kernel_classes import LOW_PRECISION_COMPUTE, nvlink_class
from servesim.predictor.kernel_classes import gemm_dtypes as _gemm_dtypes
from servesim.spec.devices import Device
from servesim.spec.dtypes import kernel_format, nbytes

ACT_BYTES = 2.0  # activations, GEMM outputs and attention inputs are bf16/fp16
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
ELEMENTWISE_OPS = ("generic", "norm", "act", "rope", "add", "emb", "quant")
ALLREDUCE_IMPLS = ("auto", "nccl", "custom")

_COLLECTIVE = (
    "base_s",
    "step_latency_ratio",
    "bw_eff",
    "bw_eff_log2n",
    "half_bytes",
    "bw_exp",
    "eager_floor_s",
    "eager_extra_s",
    "eager_p",
)
_GEMM = (
    "floor_s",
    "k_latency_s",
    "mem_eff",
    "compute_eff",
    "tile_m",
    "tile_m_min",
    "tile_n",
    "tile_n_small",
    "cluster_m",
    "k_overhead",
    "wave_quant",
    "ragged_m_eff",
    "max_split_k",
    "sm_bw_ratio",
    "smooth_p",
)
# Parameters each family must define (a fit file is checked against this on load).
PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "gemm": _GEMM,
    "gemm_8bit": (*_GEMM, "quant_floor_s", "quant_bytes_per_elem", "quant_row_sm_s"),
    "attention_prefill": (
        "floor_s",
        "tile_q",
        "tile_kv",
        "cta_overhead_tiles",
        "balance_p",
        "softmax_dim_equiv",
        "compute_eff",
        "mem_eff",
        "smooth_p",
        "token_sm_s",
        "fp8_time_scale",
        "fp8_cta_overhead_tiles",
        "fp8_token_sm_s",
        "fp8_floor_s",
    ),
    "attention_decode": (
        "floor_s",
        "fp8_floor_s",
        "cta_s",
        "floor_p",
        "mem_eff",
        "mem_eff_fp8",
        "seqs_half",
        "overlap_units_per_sm",
        "overlap_exp",
        "mma_m_min",
        "compute_eff",
        "compute_eff_fp8",
        "smooth_p",
    ),
    "elementwise": (
        "floor_s",
        *(f"mem_eff_{op}" for op in ELEMENTWISE_OPS),
        "l2_gain",
        "l2_fraction",
        "l2_exp",
    ),
    "nccl_all_reduce": _COLLECTIVE,
    "nccl_all_gather": _COLLECTIVE,
    "nccl_reduce_scatter": _COLLECTIVE,
    "nccl_alltoall": _COLLECTIVE,
    "custom_all_reduce": (
        *_COLLECTIVE,
        "max_bytes",
        "one_shot_max_bytes_4",
        "one_shot_max_bytes_8",
    ),
    "network": ("base_s", "bw_eff"),
}
# Families a fit may lack (older fit files): each is filled on load from the family it refines
# (MLA kernels start as the GQA attention kernels) or from fixed defaults.
OPTIONAL_FAMILIES: dict[str, str | dict[str, float]] = {
    "mla_prefill": "attention_prefill",
    "mla_decode": "attention_decode",
    # Fused MoE: grouped expert GEMMs at `gemm_eff` of the dense GEMM rate, plus token
    # permutation traffic (gather in, scatter out) and a fixed routing cost.
    "moe": {"floor_s": 10e-6, "gemm_eff": 1.0, "mem_eff": 0.5},
}
PARAM_NAMES["mla_prefill"] = PARAM_NAMES["attention_prefill"]
PARAM_NAMES["mla_decode"] = PARAM_NAMES["attention_decode"]
PARAM_NAMES["moe"] = ("floor_s", "gemm_eff", "mem_eff")

# ---- device features: efficiencies as functions of the spec sheet ------------------------------
# Reference point (H100 SXM spec sheet): a device with these numbers has all features 0, so a fit
# without a device model and one whose coefficients are 0 price identically.
_REF = {
    "flops_per_sm": 989.4e12 / 132,
    "sms": 132.0,
    "mem_bw": 3.35e12,
    "balance": 989.4e12 / 3.35e12,
    "l2": 50e6,
    "link_bw": 450e9,
}
FEATURES = tuple(_REF)
FACTORS = ("compute", "memory", "latency")
# Which parameters each efficiency factor scales, per family. Efficiencies grow with the factor;
# fixed latencies shrink with it.
_DENSE = {"compute": ("compute_eff",), "memory": ("mem_eff",)}
_COLL = {"compute": (), "memory": ("bw_eff",), "latency": ("base_s",)}
SCALED: dict[str, dict[str, tuple[str, ...]]] = {
    "gemm": {**_DENSE, "latency": ("floor_s", "k_latency_s")},
    "gemm_8bit": {
        **_DENSE,
        "latency": ("floor_s", "k_latency_s", "quant_floor_s", "quant_row_sm_s"),
    },
    "attention_prefill": {
        **_DENSE,
        "latency": ("floor_s", "fp8_floor_s", "token_sm_s", "fp8_token_sm_s"),
    },
    "attention_decode": {
        "compute": ("compute_eff", "compute_eff_fp8"),
        "memory": ("mem_eff", "mem_eff_fp8"),
        "latency": ("floor_s", "fp8_floor_s", "cta_s"),
    },
    "moe": {"compute": ("gemm_eff",), "memory": ("mem_eff",), "latency": ("floor_s",)},
    "nccl_all_reduce": _COLL,
    "custom_all_reduce": _COLL,
}
SCALED["mla_prefill"] = SCALED["attention_prefill"]
SCALED["mla_decode"] = SCALED["attention_decode"]
_LATENCY_FACTOR = "latency"


def device_features(device: Device) -> dict[str, float]:
    """Spec-sheet features of a device as log ratios to the H100 SXM reference (0 there)."""
    peak = device.peak_flops("bf16")
    sms = max(float(device.num_sms), 1.0)
    bw = max(device.mem_bw_bytes_per_s, 1.0)
    raw = {
        "flops_per_sm": peak / sms,
        "sms": sms,
        "mem_bw": bw,
        "balance": peak / bw,
        "l2": max(device.l2_bytes, 1.0),
        "link_bw": max(device.link_bw_bytes_per_s, 1.0),
    }
    return {k: math.log(v / _REF[k]) for k, v in raw.items()}


def scale_family(
    family: str, params: dict[str, float], log_scale: dict[str, float]
) -> dict[str, float]:
    """`params` of `family` with each factor's efficiencies multiplied by exp(log_scale[factor])
    (fixed latencies divided by it); families without efficiency factors are returned as is."""
    groups = SCALED.get(family)
    if not groups:
        return params
    out = dict(params)
    for factor, names in groups.items():
        z = log_scale.get(factor, 0.0)
        if not z:
            continue
        mult = math.exp(-z if factor == _LATENCY_FACTOR else z)
        for name in names:
            if name in out:
                out[name] = out[name] * mult
    return out


def device_log_scales(
    model: dict[str, dict[str, float]], feats: dict[str, float]
) -> dict[str, float]:
    """Log-scale per factor: `const` plus the coefficients times the device's features."""
    return {
        factor: coefs.get("const", 0.0) + sum(c * feats[f] for f, c in coefs.items() if f in feats)
        for factor, coefs in model.items()
    }


@dataclass(frozen=True)
class KernelFit:
    """Fitted parameters per operator family, plus a note of what they were fitted on."""

    params: dict[str, dict[str, float]]
    fitted_on: str
    # family -> factor -> {"const": c, feature: coefficient}: log-scale of that factor's
    # efficiencies on a device (see `device_features`); empty means no device dependence.
    device_model: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # family -> factor -> spread (sd, log units) across the fitted GPUs of what the features do
    # not explain: the few-shot prior's width (`servesim.predictor.fewshot`).
    factor_sd: dict[str, dict[str, float]] = field(default_factory=dict)
    _resolved: dict[tuple, dict[str, float]] = field(
        default_factory=dict, compare=False, repr=False
    )
    # The cross-GPU correction (`servesim.predictor.transfer.TransferModel`) applied on GPUs
    # without measured kernel tables; the bundled fit carries the bundled one, a user's none.
    transfer: Any = field(default=None, compare=False, repr=False)
    # A few-shot adaptation of the bundled correction to one device (`fewshot_transfer`), as
    # saved: weights of the fitted GPUs' proposals per family; `fewshot_transfer.load_fit`
    # turns it back into `transfer`.
    adaptation: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def family(self, family: str, device: Device) -> dict[str, float]:
        """The parameters of `family` on `device` (the device model applied), memoised."""
        model = self.device_model.get(family)
        if not model:
            return self.params[family] if family in self.params else self._optional(family)
        key = (
            family,
            device.name,
            device.num_sms,
            device.mem_bw_bytes_per_s,
            device.peak_flops_per_s.get("bf16"),
            device.l2_bytes,
            device.link_bw_bytes_per_s,
        )
        got = self._resolved.get(key)
        if got is None:
            z = device_log_scales(model, device_features(device))
            base = self.params[family] if family in self.params else self._optional(family)
            got = scale_family(family, base, z)
            self._resolved[key] = got
        return got

    def _optional(self, family: str) -> dict[str, float]:
        """An optional family a hand-built fit lacks: its source family's or default values."""
        default = OPTIONAL_FAMILIES.get(family)
        if default is None:
            raise KeyError(family)
        return self.params[default] if isinstance(default, str) else default

    def save(self, path: str | Path) -> None:
        """Write the fit as JSON (sorted keys, full float precision, stable diffs)."""
        doc: dict[str, Any] = {"fitted_on": self.fitted_on, "params": self.params}
        if self.device_model:
            doc["device_model"] = self.device_model
        if self.factor_sd:
            doc["factor_sd"] = self.factor_sd
        if self.adaptation:
            doc["adaptation"] = self.adaptation
        Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path, adapted: bool = False) -> KernelFit:
        """Read a fit written by `save`; a missing or malformed file raises ServesimError. A
        few-shot fit (`adaptation`) needs the bundled transfer model on top: read it with
        `fewshot_transfer.load_fit` (which passes `adapted=True`), never without it."""
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except FileNotFoundError:
            raise ServesimError(
                f"Kernel fit file {str(p)!r} does not exist; check the path."
            ) from None
        except (OSError, ValueError) as exc:
            raise ServesimError(
                f"Kernel fit file {str(p)!r} is not valid JSON ({exc}); regenerate it with "
                "`servesim calibrate`."
            ) from None
        fit = cls.from_dict(doc, repr(str(p)))
        if fit.adaptation and not adapted:
            raise ServesimError(
                f"Kernel fit file {str(p)!r} is a few-shot adaptation; read it with "
                "servesim.predictor.fewshot_transfer.load_fit (the CLI's --fit does)."
            )
        return fit

    @classmethod
    def from_dict(cls, doc: Any, origin: str = "document") -> KernelFit:
        """Validate a parsed fit: every family of PARAM_NAMES with all its parameters as numbers."""
        fix = "regenerate it with `servesim calibrate`"
        if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
            raise ServesimError(f"Kernel fit {origin} lacks a `params` mapping; {fix}.")
        params: dict[str, dict[str, float]] = {}
        for fam, vals in doc["params"].items():
            if not isinstance(vals, dict):
                raise ServesimError(
                    f"Kernel fit {origin}: family {fam!r} must map parameter names to "
                    f"numbers; {fix}."
                )
            out = {}
            for k, v in vals.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ServesimError(
                        f"Kernel fit {origin}: {fam}.{k} is {v!r}, not a finite number; {fix}."
                    )
                out[str(k)] = float(v)
            params[str(fam)] = out
        for fam, default in OPTIONAL_FAMILIES.items():
            if fam not in params:
                src = params.get(default, {}) if isinstance(default, str) else default
                params[fam] = dict(src)
        for fam, names in PARAM_NAMES.items():
            missing = [n for n in names if n not in params.get(fam, {})]
            if missing:
                raise ServesimError(
                    f"Kernel fit {origin} lacks {fam}.{missing[0]}"
                    f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; {fix}."
                )
        model = _nested_numbers(doc.get("device_model", {}), 3, origin, "device_model", fix)
        for fam, factors in model.items():
            bad = [f for f in factors if f not in FACTORS] + [
                c for coefs in factors.values() for c in coefs if c not in (*FEATURES, "const")
            ]
            if fam not in PARAM_NAMES or bad:
                what = f"factor or feature {bad[0]!r}" if bad else f"family {fam!r}"
                raise ServesimError(f"Kernel fit {origin}: device_model has unknown {what}; {fix}.")
        sd = _nested_numbers(doc.get("factor_sd", {}), 2, origin, "factor_sd", fix)
        adaptation = doc.get("adaptation", {})
        if not isinstance(adaptation, dict):
            raise ServesimError(f"Kernel fit {origin}: adaptation must be a mapping; {fix}.")
        return cls(
            params=params,
            fitted_on=str(doc.get("fitted_on", "")),
            device_model=model,
            factor_sd=sd,
            adaptation=adaptation,
        )


def _nested_numbers(doc: Any, depth: int, origin: str, what: str, fix: str) -> Any:
    """A mapping nested `depth` levels deep whose leaves are finite numbers, or ServesimError."""
    if depth == 0:
        if isinstance(doc, bool) or not isinstance(doc, int | float) or not math.isfinite(doc):
            raise ServesimError(f"Kernel fit {origin}: {what} is {doc!r}, not a number; {fix}.")
        return float(doc)
    if not isinstance(doc, dict):
        raise ServesimError(f"Kernel fit {origin}: {what} must be a mapping; {fix}.")
    return {
        str(k): _nested_numbers(v, depth - 1, origin, f"{what}.{k}", fix) for k, v in doc.items()
    }


@cache
def physical_fit() -> KernelFit:
    """The bundled roofline parameters (`data/kernel_fit.json`, fitted on H100 SXM
    measurements) alone, without the cross-GPU correction; loaded once."""
    text = resources.files("servesim").joinpath("data/kernel_fit.json").read_text()
    return KernelFit.from_dict(json.loads(text), "bundled with servesim")


@cache
def default_fit() -> KernelFit:
    """The bundled fit: `physical_fit` plus the bundled cross-GPU correction
    (`data/transfer_model.npz`), which prices GPUs that have no measured kernel tables."""
    base = physical_fit()
    model = transfer_model.bundled()
    if model is None:
        return base
    return KernelFit(
        params=base.params,
        fitted_on=f"{base.fitted_on}; cross-GPU correction {model.fitted_on}",
        device_model=base.device_model,
        factor_sd=base.factor_sd,
        transfer=model,
    )


def _corrects(fit: KernelFit, device: Device) -> bool:
    """Whether `fit` carries a cross-GPU correction that applies to `device`: a GPU without
    measured kernel tables, or the device a few-shot adaptation was made for."""
    if fit.transfer is None:
        return False
    adapted = getattr(fit.transfer, "applies", None)
    return transfer_model.applies_to(device) or (adapted is not None and adapted(device))


def _transferred(
    fit: KernelFit, device: Device, family: str, make: Any, t: Any, along: Any = None
) -> Any:
    """`t` times the cross-GPU correction of `fit` for `family` on a GPU without measured
    tables (`make()` builds the rows as `servesim.predictor.calibrate` samples); else `t`.
    The correction is fitted on top of the bundled parameters, so `t` is its roofline time.
    `along`: the only size that varies between rows, if one does (see `correction`)."""
    if not _corrects(fit, device):
        return t
    ax = np.asarray(along, dtype=float) if along is not None and np.ndim(along) == 1 else None
    f = fit.transfer.correction(family, make(), device, np.atleast_1d(t), ax)
    return t * f if _arr(t) else t * float(f[0])


# ---- helpers that work on floats (fast scalar path) and numpy arrays (fitting) ------------------
_A = np.ndarray


def _arr(*xs: Any) -> bool:
    return any(isinstance(x, _A) for x in xs)


def _num(x: Any) -> Any:
    """A float, or a float array for array-likes."""
    if isinstance(x, _A | list | tuple):
        return np.asarray(x, dtype=float)
    return float(x)


def _max(a: Any, b: Any) -> Any:
    if isinstance(a, _A) or isinstance(b, _A):
        return np.maximum(a, b)
    return a if a > b else b


def _min(a: Any, b: Any) -> Any:
    if isinstance(a, _A) or isinstance(b, _A):
        return np.minimum(a, b)
    return a if a < b else b


def _where(cond: Any, a: Any, b: Any) -> Any:
    if isinstance(cond, _A) or isinstance(a, _A) or isinstance(b, _A):
        return np.where(cond, a, b)
    return a if cond else b


def _ceil(x: Any) -> Any:
    """Ceiling that forgives float noise (4096/128 is 32, not 33)."""
    return np.ceil(x - 1e-9) if isinstance(x, _A) else float(math.ceil(x - 1e-9))


def _floor(x: Any) -> Any:
    return np.floor(x + 1e-9) if isinstance(x, _A) else float(math.floor(x + 1e-9))


def _log2(x: Any) -> Any:
    return np.log2(x) if isinstance(x, _A) else math.log2(x)


def _clip(x: Any, lo: Any, hi: Any) -> Any:
    return _min(_max(x, lo), hi)


def smooth_max(a: Any, b: Any, p: float) -> Any:
    """(a^p + b^p)^(1/p) for a, b >= 0: a max that rounds the corner where two limits cross."""
    hi, lo = _max(a, b), _min(a, b)
    if isinstance(hi, _A):
        safe = np.where(hi > 0, hi, 1.0)
        return np.where(hi > 0, hi * (1.0 + (lo / safe) ** p) ** (1.0 / p), hi)
    return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p) if hi > 0 else hi


def _waves(units: Any, slots: Any, quant: float, max_split: float) -> Any:
    """Waves of `units` thread blocks over `slots`; `quant` in [0, 1] blends in the ceiling.

    Below one wave a library that splits K (up to `max_split` ways) spreads the work over idle
    SMs; one that does not still pays a whole block's time.
    """
    w = units / slots
    return _where(w < 1.0, _max(w, 1.0 / max_split), (1.0 - quant) * w + quant * _ceil(w))


# ---- GEMM ---------------------------------------------------------------------------------------
def gemm_np(
    m: Any,
    n: Any,
    k: Any,
    dtype: str,
    device: Device,
    fit: KernelFit,
    weight_dtype: str | None = None,
    groups: Any = 1.0,
    block: bool = False,
) -> Any:
    """Seconds for `groups` independent y[m,n] = x[m,k] @ W[n,k]^T (one group per expert).
    `block`: fp8 weights scaled per block, which the cross-GPU correction knows as a kernel
    class of its own (`fp8_block`); the roofline prices them as fp8."""
    cdt, wdt = _gemm_dtypes(dtype, weight_dtype, device)
    low = cdt in LOW_PRECISION_COMPUTE
    p = fit.family("gemm_8bit" if low else "gemm", device)
    m, n, k, g = _num(m), _num(n), _num(k), _num(groups)
    sms = float(device.num_sms)
    peak = device.peak_flops(cdt)
    bw = device.mem_bw_bytes_per_s
    # Tile shape: libraries pick a smaller M tile for few rows (next power of two, clamped); big
    # tiles run on clusters of `cluster_m` SMs (Hopper 2x1 clusters) that share one M tile.
    tm = _clip(2.0 ** _ceil(_log2(_max(m, 1.0))), p["tile_m_min"], p["tile_m"])
    small = m <= p["tile_m_min"]
    tn = _where(small, p["tile_n_small"], p["tile_n"])
    cm = _where(tm > p["tile_m_min"], p["cluster_m"], 1.0)
    tiles = g * _ceil(m / tm) * _ceil(n / tn)
    # A ragged last M tile (m not a multiple of the tile) costs efficiency on every tile.
    ragged = m / tm - _floor(m / tm) > 1e-9
    eff = p["compute_eff"] * _where(ragged, p["ragged_m_eff"], 1.0)
    tile_s = 2.0 * tm * tn * (k + p["k_overhead"]) / (cm * peak / sms * eff)
    t_comp = _waves(tiles, sms / cm, p["wave_quant"], p["max_split_k"]) * tile_s
    # Streaming the weights needs enough blocks: split-K multiplies the tiles (up to a limit) and
    # one SM alone sustains a fitted multiple of its even share of the HBM bandwidth.
    active = _min(tiles * cm * p["max_split_k"], sms)
    bw_eff = _min(bw * p["mem_eff"], active * (bw / sms) * p["sm_bw_ratio"])
    a_bytes, w_bytes, o_bytes = nbytes(cdt), nbytes(wdt), max(ACT_BYTES, nbytes(cdt))
    t_mem = g * (n * k * w_bytes + m * k * a_bytes + m * n * o_bytes) / bw_eff
    # Fixed cost: launch plus a pipeline latency that grows with the serial K loop.
    t = p["floor_s"] + k * p["k_latency_s"] + smooth_max(t_comp, t_mem, p["smooth_p"])
    if low:
        # Dynamic per-tensor activation quantisation: an absmax pass and a quantise pass over
        # bf16 activations, one thread block per row.
        rows = g * m
        t_q = rows * (
            k * p["quant_bytes_per_elem"] / (bw * p["mem_eff"]) + p["quant_row_sm_s"] / sms
        )
        t = t + p["quant_floor_s"] + t_q
    if not _corrects(fit, device) or np.any(np.asarray(g) != 1.0):
        return t  # grouped (MoE) GEMMs keep the dense roofline

    def rows() -> dict:
        mm, nn, kk = np.broadcast_arrays(np.atleast_1d(m), np.atleast_1d(n), np.atleast_1d(k))
        one = np.ones(len(mm), dtype=object)
        return {
            "m": mm * 1.0,
            "n": nn * 1.0,
            "k": kk * 1.0,
            "dtype": one * dtype,
            "format": one * kernel_format(wdt, block),
            "weight_dtype": one * (weight_dtype if weight_dtype is not None else dtype),
        }

    along = m if np.ndim(n) == 0 and np.ndim(k) == 0 else None
    return _transferred(fit, device, "gemm", rows, t, along)


def gemm_s(
    m: int,
    n: int,
    k: int,
    dtype: str,
    device: Device,
    fit: KernelFit,
    weight_dtype: str | None = None,
) -> float:
    """Seconds for y[m,n] = x[m,k] @ W[n,k]^T on one GPU in compute `dtype` (0 if any size is 0).

    `dtype` is the compute dtype (bf16, fp16, fp8 or int8 W8A8 including activation
    quantisation); `weight_dtype` (int4, mxfp4, ...) only changes the weight bytes read.
    """
    if m <= 0 or n <= 0 or k <= 0:
        return 0.0
    return float(gemm_np(m, n, k, dtype, device, fit, weight_dtype))


def expected_experts_hit(tokens: float, num_experts: int, top_k: int) -> float:
    """Distinct experts hit when `tokens` tokens each pick `top_k` of `num_experts` uniformly."""
    if tokens <= 0 or num_experts <= 0:
        return 0.0
    frac = min(1.0, top_k / num_experts)
    return num_experts * (1.0 - (1.0 - frac) ** tokens)


def moe_gemm_s(
    tokens: int,
    num_experts: int,
    top_k: int,
    n: int,
    k: int,
    dtype: str,
    device: Device,
    fit: KernelFit,
    weight_dtype: str | None = None,
) -> float:
    """Seconds for one grouped MoE projection over `num_experts` local experts (each W[n,k]).

    Reads only the experts the tokens hit (uniform routing), tokens*top_k rows spread evenly.
    """
    if tokens <= 0 or num_experts <= 0 or top_k <= 0 or n <= 0 or k <= 0:
        return 0.0
    hit = expected_experts_hit(tokens, num_experts, top_k)
    rows = tokens * min(top_k, num_experts) / hit
    return float(gemm_np(rows, n, k, dtype, device, fit, weight_dtype, groups=hit))


def moe_np(
    tokens: Any,
    hidden: Any,
    inter: Any,
    top_k: Any,
    num_experts: Any,
    dtype: str,
    device: Device,
    fit: KernelFit,
    weight_dtype: str | None = None,
    tp: Any = 1,
    ep: Any = 1,
) -> Any:
    """Seconds for one fused, gated MoE layer on one GPU of a TP x EP group (uniform routing).

    The GPU holds num_experts/ep experts, each sliced to inter/tp; the tokens' top_k picks that
    land here run as grouped up (2 x inter) and down GEMMs over the experts hit, at `gemm_eff`
    of the dense GEMM model, plus the permutation traffic (each routed row's hidden vector
    gathered in and scattered out) and a fixed routing cost.
    """
    p = fit.family("moe", device)
    t, h, i = _num(tokens), _num(hidden), _num(inter)
    k, e = _num(top_k), _num(num_experts)
    tp, ep = _num(tp), _num(ep)
    local = _max(e / ep, 1.0)
    inter_local = _max(i / tp, 1.0)
    frac = _min(k / e, 1.0)
    hit = local * (1.0 - (1.0 - frac) ** t)
    routed = t * k / ep
    rows = _max(routed / _max(hit, 1e-9), 1.0)
    up = gemm_np(rows, 2.0 * inter_local, h, dtype, device, fit, weight_dtype, groups=hit)
    down = gemm_np(rows, h, inter_local, dtype, device, fit, weight_dtype, groups=hit)
    perm_bytes = 4.0 * routed * h * ACT_BYTES
    t_perm = perm_bytes / (device.mem_bw_bytes_per_s * p["mem_eff"])
    return p["floor_s"] + (up + down) / p["gemm_eff"] + t_perm


# ---- attention ----------------------------------------------------------------------------------
def _ceil_sum(count: Any, r: Any) -> Any:
    """sum_{i=1..count} ceil(i / r) in closed form (r >= 1; exact for integer r)."""
    q = _floor(count / r)
    t = count - q * r
    return r * q * (q + 1.0) / 2.0 + t * (q + 1.0)


_NO_WINDOW = 1e30
# Context lengths per sequence at which the cross-GPU correction of decode attention is taken
# (a short and a long context; decode stays a line through them).
DECODE_REFERENCE_CONTEXTS = (512.0, 8192.0)


def attn_prefill_np(
    batch: Any,
    new_tokens: Any,
    cached_tokens: Any,
    q_heads: Any,
    kv_heads: Any,
    qk_head_dim: Any,
    v_head_dim: Any,
    kv_dtype: str,
    device: Device,
    fit: KernelFit,
    window: Any = 0,
    family: str = "attention_prefill",
) -> Any:
    """Seconds for prefill attention: the KV-cache write, then a flash-attention tile model.

    Query heads that share a KV head are packed into one tile's rows, so a tile holds
    tile_q / G positions. Under the causal mask query tile i reads the cached context plus the
    key tiles up to its last position (capped by a sliding window). Blocks run in waves over the
    SMs, but no faster than the longest block. `family="mla_prefill"` prices MLA's prefill
    kernels (qk_head_dim 192, v_head_dim 128) with their own fitted parameters.
    """
    p = fit.family(family, device)
    b, s, c = _num(batch), _num(new_tokens), _num(cached_tokens)
    hq, hkv = _num(q_heads), _max(_num(kv_heads), 1.0)
    dqk, dv, win = _num(qk_head_dim), _num(v_head_dim), _num(window)
    sms = float(device.num_sms)
    peak = device.peak_flops("bf16")
    bw = device.mem_bw_bytes_per_s
    kvb = nbytes(kv_dtype)
    fp8 = kvb < 2
    bm, bn = p["tile_q"], p["tile_kv"]
    group = _max(hq / hkv, 1.0)
    pos_per_tile = bm / group
    nq = _ceil(s / pos_per_tile)  # query tiles per (sequence, KV head)
    r = _max(bn / pos_per_tile, 1.0)  # query tiles per key tile along the diagonal
    cached = _where(win > 0, _min(c, win), c)
    cc = _ceil(cached / bn)
    cap = _where(win > 0, _ceil((win + pos_per_tile) / bn) + 1.0, _NO_WINDOW)
    uncapped = _clip((cap - cc) * r, 0.0, nq)  # query tiles whose key range is under the cap
    units_per_group = cc * uncapped + _ceil_sum(uncapped, r) + (nq - uncapped) * cap
    longest = _min(cc + _ceil(s / bn), cap)
    overhead = p["cta_overhead_tiles"] + (p["fp8_cta_overhead_tiles"] if fp8 else 0.0)
    total = b * hkv * (units_per_group + nq * overhead)
    units = smooth_max(total / sms, longest + overhead, p["balance_p"])
    d = (dqk + dv) / 2.0
    tile_flops = 2.0 * bm * bn * (dqk + dv) * (d + p["softmax_dim_equiv"]) / d
    t_comp = units * tile_flops / (peak / sms * p["compute_eff"])
    if fp8:
        t_comp = t_comp * p["fp8_time_scale"]
    # Attention reads Q, the new K/V and the cached K/V and writes O, overlapped with compute.
    kv_row = hkv * (dqk + dv)
    attn_bytes = b * s * (hq * dqk + kv_row + hq * dv) * ACT_BYTES + b * cached * kv_row * kvb
    t_attn = smooth_max(t_comp, attn_bytes / (bw * p["mem_eff"]), p["smooth_p"])
    # The KV-cache write is its own memory-bound kernel before attention, one block per token;
    # an fp8 cache also quantises the queries.
    token_sm_s = p["token_sm_s"] + (p["fp8_token_sm_s"] if fp8 else 0.0)
    t_cache = b * s * (kv_row * (ACT_BYTES + kvb) / (bw * p["mem_eff"]) + token_sm_s / sms)
    t = p["floor_s"] + (p["fp8_floor_s"] if fp8 else 0.0) + t_cache + t_attn
    if not _corrects(fit, device):
        return t

    def rows() -> dict:
        cols = np.broadcast_arrays(*(np.atleast_1d(x) * 1.0 for x in (b, s, c, hq, hkv, dqk, win)))
        kv = np.full(len(cols[0]), kv_dtype, dtype=object)
        names = ("batch", "new_tokens", "cached_tokens", "q_heads", "kv_heads", "head_dim")
        return {**dict(zip(names, cols[:6], strict=True)), "window": cols[6], "kv_dtype": kv}

    return _transferred(fit, device, family, rows, t)


def attn_prefill_s(
    batch: int,
    new_tokens: int,
    cached_tokens: int,
    q_heads: int,
    kv_heads: int,
    qk_head_dim: int,
    v_head_dim: int,
    kv_dtype: str,
    device: Device,
    fit: KernelFit,
    window: int = 0,
) -> float:
    """Seconds for one prefill attention layer call on one GPU (heads already divided by TP).

    `batch` sequences each add `new_tokens` (causal among themselves) on top of `cached_tokens`
    already in the KV cache; includes the KV-cache write; `window` > 0 is sliding-window attention.
    """
    if batch <= 0 or new_tokens <= 0:
        return 0.0
    return float(
        attn_prefill_np(
            batch,
            new_tokens,
            max(0, cached_tokens),
            q_heads,
            kv_heads,
            qk_head_dim,
            v_head_dim,
            kv_dtype,
            device,
            fit,
            max(0, window),
        )
    )


def decode_coeffs_np(
    batch: Any,
    q_heads: Any,
    kv_heads: Any,
    qk_head_dim: Any,
    v_head_dim: Any,
    kv_dtype: str,
    device: Device,
    fit: KernelFit,
    latent: bool = False,
) -> tuple[Any, Any]:
    """(a seconds, b seconds per token): decode attention takes a + b * total attended context.

    One thread block per (sequence, KV head) streams its KV cache (split along the context when
    there are few). The slope is the KV bytes per token at the bandwidth reached (lower for a
    batch of one or two: split-KV combine), smoothly maxed with the MMA work padded to the MMA's
    minimum rows; many blocks per SM hide part of their fixed latency behind the stream (but the
    KV never streams faster than the HBM spec). The intercept is the launch floor plus each wave
    of blocks beyond the first.
    """
    p = fit.family("mla_decode" if latent else "attention_decode", device)
    b, hq, hkv = _num(batch), _num(q_heads), _max(_num(kv_heads), 1.0)
    dqk, dv = _num(qk_head_dim), _num(v_head_dim)
    sms = float(device.num_sms)
    peak = device.peak_flops("bf16")
    bw = device.mem_bw_bytes_per_s
    kvb = nbytes(kv_dtype)
    fp8 = kvb < 2
    mma = p["mma_m_min"]
    if latent:
        # MLA, absorbed: one latent KV head shared by all query heads; K is the latent+rope
        # vector, V the first v_head_dim values of it. Blocks tile the query heads.
        units = b * _ceil(hq / mma)
        bytes_tok = dqk * kvb
        flops_tok = 2.0 * _max(hq, mma) * (dqk + dv)
    else:
        units = b * hkv
        bytes_tok = hkv * (dqk + dv) * kvb
        flops_tok = 2.0 * hkv * _max(hq / hkv, mma) * (dqk + dv)
    mem_eff = p["mem_eff_fp8" if fp8 else "mem_eff"] * b / (b + p["seqs_half"])
    ceff = p["compute_eff_fp8" if fp8 else "compute_eff"]
    slope = smooth_max(bytes_tok / (bw * mem_eff), flops_tok / (peak * ceff), p["smooth_p"])
    slope = slope / (1.0 + (units / sms / p["overlap_units_per_sm"]) ** p["overlap_exp"])
    slope = _max(slope, bytes_tok / bw)  # never faster than the HBM spec
    extra_waves = smooth_max(units / sms, 1.0, p["floor_p"]) - 1.0
    floor = p["floor_s"] + (p["fp8_floor_s"] if fp8 else 0.0) + p["cta_s"] * extra_waves
    if not _corrects(fit, device):
        return floor, slope
    # The correction depends on the context: keep decode affine in it (the simulator's fast path
    # needs that) by correcting two contexts per sequence and drawing the line through them.
    ctx = np.array(DECODE_REFERENCE_CONTEXTS)
    bb, hh, kk, dd = (np.atleast_1d(x) * 1.0 for x in np.broadcast_arrays(b, hq, hkv, dqk))
    n_rows = len(bb)
    tot = np.concatenate([bb * c for c in ctx])

    def rows() -> dict:
        two = (np.concatenate([x, x]) for x in (bb, hh, kk, dd))
        kv = np.full(2 * n_rows, kv_dtype, dtype=object)
        names = ("batch", "q_heads", "kv_heads", "head_dim")
        return {**dict(zip(names, two, strict=True)), "total_context": tot, "kv_dtype": kv}

    family = "mla_decode" if latent else "attention_decode"
    fl, sl = (np.broadcast_to(np.atleast_1d(x), (n_rows,)) for x in (floor, slope))
    t = np.concatenate([fl, fl]) + np.concatenate([sl, sl]) * tot
    t = np.asarray(_transferred(fit, device, family, rows, t))
    t1, t2 = t[:n_rows], t[n_rows:]
    slope_c = np.maximum((t2 - t1) / (tot[n_rows:] - tot[:n_rows]), 0.0)
    floor_c = np.maximum(t1 - slope_c * tot[:n_rows], 0.0)
    if _arr(floor, slope, b, hq, hkv):
        return floor_c, slope_c
    return float(floor_c[0]), float(slope_c[0])


def attn_decode_s(
    batch: int,
    total_context: int,
    q_heads: int,
    kv_heads: int,
    qk_head_dim: int,
    v_head_dim: int,
    kv_dtype: str,
    device: Device,
    fit: KernelFit,
    latent: bool = False,
) -> float:
    """Seconds for one decode attention layer call: `batch` sequences, one new token each.

    `total_context` is the number of cached tokens attended, summed over the batch (each
    sequence's new token included). Exactly affine in `total_context` (see `decode_coeffs_np`).
    `latent=True` is DeepSeek MLA with absorbed weights (qk_head_dim = kv_lora_rank + rope).
    """
    if batch <= 0:
        return 0.0
    a, b = decode_coeffs_np(
        batch, q_heads, kv_heads, qk_head_dim, v_head_dim, kv_dtype, device, fit, latent
    )
    return float(a + b * max(0.0, float(total_context)))


# ---- collectives --------------------------------------------------------------------------------
def _steps(op: str, n: Any) -> Any:
    """Latency-bound steps of the ring algorithms: all-reduce 2(n-1), the others n-1."""
    return 2.0 * (n - 1.0) if op == "all_reduce" else n - 1.0


def _bus_factor(op: str, n: Any) -> Any:
    """busBW / algBW as nccl-tests defines it: 2(n-1)/n for all-reduce, (n-1)/n otherwise."""
    return (2.0 if op == "all_reduce" else 1.0) * (n - 1.0) / n


def collective_np(
    op: str,
    nbytes_total: Any,
    num_devices: Any,
    device: Device,
    fit: KernelFit,
    impl: str = "nccl",
    cuda_graph: bool = True,
) -> Any:
    """Seconds for a single-node collective; `impl` nccl, or custom (vLLM's all-reduce).

    Latency: a base plus the device's link latency (scaled) per algorithm step. Bandwidth: the
    bus bandwidth saturates with message size towards a fraction of the link bandwidth; on a
    switched fabric that fraction grows log-linearly with the GPU count (NVLS helps 8 GPUs).
    vLLM's custom all-reduce reads every peer's buffer in one shot below a size limit
    ((n-1) x traffic) and runs reduce-scatter + all-gather above it. Without CUDA graphs a
    CPU-bound launch interval bounds the time from below.
    """
    custom = impl == "custom"
    p = fit.family("custom_all_reduce" if custom else f"nccl_{op}", device)
    s = _max(_num(nbytes_total), 1.0)
    n = _num(num_devices)
    steps = _steps(op, n)
    factor = _bus_factor(op, n)
    if custom:
        limit = _where(n <= 4, p["one_shot_max_bytes_4"], p["one_shot_max_bytes_8"])
        one_shot = (n <= 2) | (s < limit) if _arr(n, s) else (n <= 2 or s < limit)
        steps = _where(one_shot, 1.0, 2.0)
        factor = _where(one_shot, n - 1.0, factor)
    lat = p["base_s"] + p["step_latency_ratio"] * device.link_latency_s * steps
    growth = p["bw_eff_log2n"] * (_log2(n) - 1.0) if nvlink_class(device) else 0.0
    bw_max = device.link_bw_bytes_per_s * p["bw_eff"] * (1.0 + growth)
    bw = bw_max / (1.0 + (p["half_bytes"] / s) ** p["bw_exp"])
    t = lat + s * factor / bw
    if not cuda_graph:
        t = smooth_max(t + p["eager_extra_s"], p["eager_floor_s"], p["eager_p"])
    # All-reduce is corrected on switched fabrics only (`transfer_model.corrects_family`).
    if (
        op != "all_reduce"
        or not transfer_model.corrects_family("allreduce", device)
        or not _corrects(fit, device)
    ):
        return t

    def rows() -> dict:
        nb, nd = np.broadcast_arrays(np.atleast_1d(s) * 1.0, np.atleast_1d(n) * 1.0)
        return {
            "nbytes": nb,
            "num_devices": nd,
            "op": np.full(len(nb), op, dtype=object),
            "impl": np.full(len(nb), impl, dtype=object),
            "cuda_graph": np.full(len(nb), cuda_graph, dtype=bool),
        }

    return _transferred(fit, device, "allreduce", rows, t, s if np.ndim(n) == 0 else None)


def _multi_node_s(
    op: str, nbytes_total: float, num_devices: int, device: Device, fit: KernelFit
) -> float:
    """Hierarchical collective over nodes: the fitted NVLink model inside a node, then the
    scale-out network between nodes with each GPU driving its own NIC share (not fitted)."""
    p = fit.params["network"]
    per_node = max(1, device.max_devices_per_node)
    nodes = math.ceil(num_devices / per_node)
    g = min(per_node, num_devices)
    if op == "alltoall":
        intra_bytes, inter_bytes = nbytes_total / nodes, nbytes_total * (nodes - 1) / nodes
    else:
        intra_bytes, inter_bytes = nbytes_total, nbytes_total / g * _bus_factor(op, nodes)
    intra = float(collective_np(op, intra_bytes, g, device, fit)) if g > 1 else 0.0
    latency = p["base_s"] + _steps(op, nodes) * device.net_latency_s
    return intra + latency + inter_bytes / (device.net_bw_bytes_per_s * p["bw_eff"])


def allreduce_np(
    nbytes: Any,
    num_devices: int,
    device: Device,
    fit: KernelFit,
    impl: str = "auto",
    *,
    cuda_graph: bool = True,
) -> Any:
    """Seconds for all-reduces of `nbytes` (array or scalar) over `num_devices` GPUs of one node.

    impl: "nccl"; "custom" (vLLM's custom all-reduce); "auto" as vLLM does it: custom below its
    size limit on a switched NVLink-class fabric with an even GPU count, NCCL otherwise.
    """
    if impl not in ALLREDUCE_IMPLS:
        raise ServesimError(f"Unknown all-reduce impl {impl!r}; use auto, nccl or custom.")
    nb = _num(nbytes)
    if num_devices <= 1:
        return nb * 0.0
    if num_devices > device.max_devices_per_node:
        if _arr(nb):
            return np.array(
                [_multi_node_s("all_reduce", float(x), num_devices, device, fit) for x in nb]
            )
        return _multi_node_s("all_reduce", nb, num_devices, device, fit)
    nccl = collective_np("all_reduce", nb, num_devices, device, fit, "nccl", cuda_graph)
    if impl == "nccl" or not nvlink_class(device) or num_devices % 2:
        return nccl
    custom = collective_np("all_reduce", nb, num_devices, device, fit, "custom", cuda_graph)
    if impl == "custom":
        return custom
    return _where(nb <= fit.family("custom_all_reduce", device)["max_bytes"], custom, nccl)


def allreduce_s(
    nbytes: float,
    num_devices: int,
    device: Device,
    fit: KernelFit,
    impl: str = "auto",
    *,
    cuda_graph: bool = True,
) -> float:
    """Seconds for an all-reduce of `nbytes` over `num_devices` GPUs (0 for one device).

    See `allreduce_np` for `impl`; `cuda_graph=False` prices an eager launch (CPU-bound floor).
    """
    if impl not in ALLREDUCE_IMPLS:
        raise ServesimError(f"Unknown all-reduce impl {impl!r}; use auto, nccl or custom.")
    if num_devices <= 1 or nbytes <= 0:
        return 0.0
    return float(allreduce_np(nbytes, num_devices, device, fit, impl, cuda_graph=cuda_graph))


def _collective_s(
    op: str, nbytes: float, num_devices: int, device: Device, fit: KernelFit
) -> float:
    if num_devices <= 1 or nbytes <= 0:
        return 0.0
    if num_devices > device.max_devices_per_node:
        return _multi_node_s(op, nbytes, num_devices, device, fit)
    return float(collective_np(op, nbytes, num_devices, device, fit))


def allgather_s(nbytes: float, num_devices: int, device: Device, fit: KernelFit) -> float:
    """Seconds for an NCCL all-gather whose gathered output is `nbytes` (nccl-tests size)."""
    return _collective_s("all_gather", nbytes, num_devices, device, fit)


def reduce_scatter_s(nbytes: float, num_devices: int, device: Device, fit: KernelFit) -> float:
    """Seconds for an NCCL reduce-scatter of an `nbytes` input per GPU (nccl-tests size)."""
    return _collective_s("reduce_scatter", nbytes, num_devices, device, fit)


def alltoall_s(nbytes: float, num_devices: int, device: Device, fit: KernelFit) -> float:
    """Seconds for an NCCL all-to-all sending `nbytes` in total per GPU (nccl-tests size)."""
    return _collective_s("alltoall", nbytes, num_devices, device, fit)


def p2p_s(nbytes: float, device: Device, fit: KernelFit, inter_node: bool = False) -> float:
    """Seconds for one send/recv of `nbytes` (pipeline-stage activations, a KV transfer)."""
    if nbytes <= 0:
        return 0.0
    if inter_node:
        p = fit.params["network"]
        bw = device.net_bw_bytes_per_s * p["bw_eff"]
        return p["base_s"] + device.net_latency_s + nbytes / bw
    # A 2-GPU all-gather of 2*nbytes moves exactly nbytes each way between the pair.
    return float(collective_np("all_gather", 2.0 * nbytes, 2.0, device, fit))


# ---- elementwise --------------------------------------------------------------------------------
def elementwise_np(nbytes_moved: Any, device: Device, fit: KernelFit, op: str = "generic") -> Any:
    """Seconds for a memory-bound kernel: a floor plus bytes at a fitted fraction of bandwidth,
    faster while the data fits in the device's L2 (a producer's output is still there)."""
    if op not in ELEMENTWISE_OPS:
        raise ServesimError(
            f"Unknown elementwise op {op!r}; use one of {', '.join(ELEMENTWISE_OPS)}."
        )
    p = fit.family("elementwise", device)
    nb = _num(nbytes_moved)
    resident = 1.0 / (1.0 + (nb / (device.l2_bytes * p["l2_fraction"])) ** p["l2_exp"])
    bw = device.mem_bw_bytes_per_s * p[f"mem_eff_{op}"] * (1.0 + p["l2_gain"] * resident)
    return p["floor_s"] + nb / bw


def elementwise_s(
    nbytes_moved: float, device: Device, fit: KernelFit, op: str = "generic"
) -> float:
    """Seconds for a memory-bound op (RMSNorm, SiLU*mul, RoPE, residual add, quantisation).

    `op` optionally names the kind (norm, act, rope, add, emb, quant) for its own efficiency;
    "generic" uses the geometric mean of norm, act, rope and add.
    """
    if nbytes_moved <= 0:
        return 0.0
    return float(elementwise_np(nbytes_moved, device, fit, op))
