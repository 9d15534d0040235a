"""Kernel efficiencies measured on a twin GPU, carried to a GPU without measured tables.

The cross-GPU correction (`transfer`) prices a GPU from trends its spec sheet shares with the
measured ones. A GPU that shares its compute with a measured one (the same SM count, tensor-core
rate per SM and L2: B200 and GB200, H100 and H200, an H800 and the H100) runs the same kernels
the same way, so that GPU's own measured efficiency, log(measured / roofline) at the nearest
measured shape, is the better guide; each device's roofline still carries what differs (memory
bandwidth, clocks). On aiconfigurator-core's tables the same shape's efficiency on twin GPUs
agrees within 2-5 % median (B200 against GB200, H100 against H200; NOTES, issue 11), where the
learnt trend misses by 5-25 %.

An all-reduce's twin must share the fabric too (link bandwidth and latency, GPUs per fabric:
B300 and B200, not GB300).

What a twin's efficiency carries is split in two (`carried`): the part of its measured time its
roofline accounts for scales with this device's roofline, and the excess over the roofline
(launches, latency, a kernel's low occupancy: what the shared SMs and clocks set) stays as it is.
H200's per-tensor fp8 expert layers take what the H100's take at 3-4x their roofline, not 30 %
less as the H200's bandwidth would give them: over the compute tables of the three twin pairs
(H100/H200, B200/GB200, B300/GB300, each way) carrying the excess lowers the mean median error
from 3.5 to 3.2 % and the worst p90 from 31 to 19 % (H200's expert layers from the H100's);
where the twins' rooflines agree (the Blackwell pairs) the two readings give the same time.

Per row, the log correction z becomes (PRIOR * z + sum_g a_g s_g e_g) / (PRIOR + sum_g a_g s_g):
e_g is twin g's efficiency at its nearest measured shape, carried to this device;
a_g = exp(-D^2 / 2 DEVICE_SCALE^2) the device affinity (D: distance between log10 [bf16 and fp8
FLOP/s per SM, SMs, L2 bytes]); s_g = exp(-d^2 / 2 SHAPE_SCALE^2) the shape affinity (d:
distance in log sizes to that measured shape; a categorical column such as the dtype must
match). A GPU far from every measured one (MI300X, L4, B60) keeps z.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache, partial
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import (
    calibrate,
    measured_kernels,
    roofline,
    transfer_features,
    transfer_model,
)
from servesim.predictor.measured_kernels import MeasuredKernels
from servesim.predictor.transfer_model import TransferModel
from servesim.spec.devices import Device, get_device
from servesim.spec.dtypes import canonical
from servesim.spec.engine_profile import EngineProfile

Samples = dict[str, np.ndarray]
# The sample families a twin's efficiency carries to: the compute kernels, and all-reduce
# (NCCL's and the engines' own), whose twin must share the fabric too (`fabric_affinity`).
COMPUTE = ("gemm", "attention_prefill", "attention_decode", "mla_prefill", "mla_decode", "moe")
FABRIC = {
    "allreduce": ("nccl", "custom_allreduce"),  # the product's family: both tables
    "nccl": ("nccl",),
    "custom_allreduce": ("custom_allreduce",),
}
# Device affinity length in log10 units (0.1: a 31 % difference in one feature halves the
# affinity) and the learnt correction's own weight: chosen on the leave-one-GPU-out benchmark
# (`benchmarks/kernels.py`); (0.05, 0.3) and (0.2, 0.05) miss one cell more or the same.
DEVICE_SCALE = 0.1
PRIOR = 0.1
# Shape affinity length in natural-log units: a twin's efficiency is trusted about a factor
# of e around its measured shapes.
SHAPE_SCALE = 1.0
MIN_AFFINITY = 0.01  # twins below it are not read at all
IGNORED = frozenset({"latency_s", "group"})


def device_vector(device: Device) -> np.ndarray:
    """The compute features twins share: log10 of bf16 and fp8 FLOP/s per SM, SMs, L2 bytes."""
    bf16 = transfer_features.device_vector(device, "bf16")
    fp8 = transfer_features.device_vector(device, "fp8")
    return np.array(
        [
            bf16["dev_log_flops_per_sm"],
            fp8["dev_log_flops_per_sm"],
            bf16["dev_log_sms"],
            bf16["dev_log_l2"],
        ]
    )


def affinity(a: Device, b: Device) -> float:
    """How much GPU `b`'s measured efficiency speaks for GPU `a` (1 for identical compute)."""
    if a.vendor != b.vendor:
        return 0.0
    d2 = float(np.sum((device_vector(a) - device_vector(b)) ** 2))
    return math.exp(-d2 / (2.0 * DEVICE_SCALE**2))


def fabric_vector(device: Device) -> np.ndarray:
    """What an all-reduce's time follows besides the chip: log10 of the scale-up link's
    bandwidth and latency and of the GPUs one fabric joins (8 in a server, 72 in an NVL72)."""
    return np.log10(
        [device.link_bw_bytes_per_s, device.link_latency_s, float(device.max_devices_per_node)]
    )


def fabric_affinity(a: Device, b: Device) -> float:
    """`affinity`, times how alike the two GPUs' fabrics are (1 for the same fabric)."""
    d2 = float(np.sum((fabric_vector(a) - fabric_vector(b)) ** 2))
    return affinity(a, b) * math.exp(-d2 / (2.0 * DEVICE_SCALE**2))


def twins(device: Device, gpus: Iterable[str], fabric: bool = False) -> list[tuple[str, float]]:
    """(measured GPU, affinity) of `gpus` close enough to `device` to be read; `fabric`: for
    an all-reduce (`fabric_affinity`)."""
    out = []
    for g in gpus:
        if g == device.name.split("@")[0]:
            continue
        try:
            other = get_device(g)
        except ServesimError:
            continue
        a = fabric_affinity(device, other) if fabric else affinity(device, other)
        if a >= MIN_AFFINITY:
            out.append((g, a))
    return out


def _log_size(v: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(v, dtype=float), 0.0))


def _categorical(v: Any) -> bool:
    return np.asarray(v).dtype.kind in "OUSb"


def _labels(v: Any, n: int) -> np.ndarray:
    """A categorical column as strings, dtype names in one spelling ("bfloat16" and "bf16",
    "nvfp4" and "fp4" are the same kernel input)."""
    raw = np.broadcast_to(np.asarray(v), (n,)).astype(str)
    values, inverse = np.unique(raw, return_inverse=True)
    return np.array([_spelling(x) for x in values], dtype=object)[inverse]


def _spelling(name: str) -> str:
    try:
        return canonical(name)
    except ServesimError:
        return name


class Efficiencies:
    """One GPU's measured efficiencies of one sample family, for nearest-shape look-ups."""

    def __init__(self, s: Samples, eff: np.ndarray) -> None:
        n = len(eff)
        self.cat = tuple(
            sorted(c for c, v in s.items() if c not in IGNORED and np.ndim(v) and _categorical(v))
        )
        self.num = tuple(
            sorted(
                c
                for c, v in s.items()
                if c not in IGNORED and np.ndim(v) and len(v) == n and not _categorical(v)
            )
        )
        self._s = s
        self._eff = eff
        self._trees: dict[tuple[tuple[str, ...], tuple[str, ...]], dict] = {}

    def _index(self, cat: tuple[str, ...], num: tuple[str, ...]) -> dict:
        key = (cat, num)
        if key not in self._trees:
            from scipy.spatial import cKDTree

            n = len(self._eff)
            keys = list(zip(*(_labels(self._s[c], n) for c in cat), strict=True))
            coords = np.column_stack([_log_size(self._s[c]) for c in num])
            groups: dict[tuple, list[int]] = {}
            for i, k in enumerate(keys):
                groups.setdefault(k, []).append(i)
            self._trees[key] = {
                k: (cKDTree(coords[idx]), self._eff[np.asarray(idx)]) for k, idx in groups.items()
            }
        return self._trees[key]

    def lookup(self, q: Samples, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(efficiency at the nearest measured shape, shape affinity) per query row; NaN and 0
        where no measured row shares the query's categorical values."""
        eff = np.full(n, np.nan)
        aff = np.zeros(n)
        cat = tuple(c for c in self.cat if c in q)
        num = tuple(c for c in self.num if c in q)
        if not num:
            return eff, aff
        index = self._index(cat, num)

        def col(c: str) -> np.ndarray:
            return np.broadcast_to(np.asarray(q[c]), (n,))

        keys = list(zip(*(_labels(q[c], n) for c in cat), strict=True)) if cat else [()] * n
        coords = np.column_stack([_log_size(col(c)) for c in num])
        rows: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            rows.setdefault(k, []).append(i)
        for k, idx in rows.items():
            found = index.get(k)
            if found is None:
                continue
            tree, values = found
            dist, at = tree.query(coords[idx])
            eff[idx] = values[at]
            aff[idx] = np.exp(-(dist**2) / (2.0 * SHAPE_SCALE**2))
        return eff, aff


@cache
def measured(gpu: str, source: str) -> Efficiencies | None:
    """GPU `gpu`'s measured efficiencies of sample family `source` (its vLLM tables, as the
    correction was fitted on), read once."""
    parts = []
    for src in FABRIC.get(source, (source,)):
        s = _tables(gpu).get(src)
        if not s or not len(s["latency_s"]):
            continue
        if src == "nccl":  # the other collectives are not corrected
            s = calibrate.subset(s, s["op"] == "all_reduce")
        t = calibrate.predict(src, s, get_device(gpu), roofline.physical_fit())
        parts.append((s, np.log(np.asarray(s["latency_s"], dtype=float) / np.maximum(t, 1e-9))))
    if not parts:
        return None
    cols = set.intersection(*(set(s) for s, _ in parts))
    rows = {c: np.concatenate([np.asarray(s[c]) for s, _ in parts]) for c in cols}
    return Efficiencies(rows, np.concatenate([e for _, e in parts]))


@cache
def _tables(gpu: str) -> dict[str, Samples]:
    """A measured GPU's tables as samples; none when they cannot be read (a twin then adds
    nothing, and the learnt correction prices alone)."""
    try:
        return calibrate.all_samples(calibrate.load_package_tables(gpu, "vllm", None))
    except (ServesimError, OSError, ValueError):
        return {}


def carried(eff: np.ndarray, ratio: np.ndarray | float, shared: float = 1.0) -> np.ndarray:
    """A twin's log efficiency `eff` (log measured over its roofline) as this device's, where
    the twin's roofline is `ratio` times this device's for the same rows: the roofline's share
    of the twin's time scales with the roofline, the excess over it stays, so a measured time
    m over roofline r becomes r' + (m - r) on a device of roofline r'. A twin faster than its
    roofline (no excess) scales whole. `shared`: how far the excess is the twins' common one,
    their device `affinity` (1: the same SMs, clocks and L2; a weaker twin's efficiency
    carries as a ratio in the same proportion)."""
    eff = np.asarray(eff, dtype=float)
    ratio = np.broadcast_to(np.asarray(ratio, dtype=float), eff.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.log1p(np.expm1(eff) * ratio)
    return np.where(eff > 0.0, shared * excess + (1.0 - shared) * eff, eff)


def _roofline_s(source: str, s: Samples, device: Device) -> np.ndarray | None:
    """The physical roofline's seconds for rows `s` of sample family `source` on `device`
    (what the efficiencies are measured against); None where it cannot price them."""
    try:
        return np.maximum(calibrate.predict(source, s, device, roofline.physical_fit()), 1e-12)
    except (ServesimError, KeyError, ValueError):
        return None


def blend(
    gpus: Iterable[str], source: str, s: Samples, device: Device, z: np.ndarray
) -> np.ndarray:
    """The log correction `z` of rows `s` (sample family `source`) on `device`, pulled towards
    the measured efficiencies of its twins among `gpus`, each carried to `device` (`carried`;
    an all-reduce twin shares the fabric, so its efficiency carries whole). See the module's
    docstring."""
    z = np.asarray(z, dtype=float)
    if (source not in COMPUTE and source not in FABRIC) or not len(z):
        return z
    parts = []
    own: np.ndarray | None = None  # this device's roofline, priced once a twin has a table
    for g, a in twins(device, gpus, fabric=source in FABRIC):
        table = measured(g, source)
        if table is None:
            continue
        eff, aff = table.lookup(s, len(z))
        if source not in FABRIC:
            own = _roofline_s(source, s, device) if own is None else own
            theirs = None if own is None else _roofline_s(source, s, get_device(g))
            if theirs is not None:
                eff = carried(eff, theirs / own, a)
        parts.append((eff, a * aff))
    return pooled(z, parts)


def pooled(z: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(PRIOR * z + sum w * eff) / (PRIOR + sum w) per row over the twins' (efficiency,
    weight) rows; a NaN efficiency or a zero weight adds nothing."""
    num = PRIOR * np.asarray(z, dtype=float)
    den = np.full(len(num), PRIOR)
    for eff, w in parts:
        ok = np.isfinite(eff) & (w > 0.0)
        num[ok] += w[ok] * eff[ok]
        den[ok] += w[ok]
    return num / den


def log_correction(
    model: TransferModel, family: str, s: Samples, device: Device, feats: dict[str, np.ndarray]
) -> np.ndarray:
    """`model`'s log correction of rows `s` (features `feats`) on `device`, blended with the
    twins' measured efficiencies among the GPUs it was fitted on."""
    return blend(model.gpus, family, s, device, model.log_correction(family, feats))


@dataclass(frozen=True)
class Twinned:
    """A transfer model that prices a GPU without tables with its twins' efficiencies too:
    what `roofline` calls as `KernelFit.transfer` (`correction`), the model otherwise."""

    model: TransferModel

    @property
    def fitted_on(self) -> str:
        return self.model.fitted_on

    def correction(
        self,
        family: str,
        s: Samples,
        device: Device,
        t_base: np.ndarray,
        along: np.ndarray | None = None,
    ) -> np.ndarray:
        """Factor per row (`TransferModel.correction`), twins' efficiencies blended in."""
        return self.model.correction(
            family, s, device, t_base, along, partial(blend, self.model.gpus)
        )


@cache
def default_fit() -> roofline.KernelFit:
    """The bundled fit (`roofline.default_fit`) whose cross-GPU correction takes the twins'
    measured efficiencies too: what the predictor prices with unless told otherwise."""
    fit = roofline.default_fit()
    if not isinstance(fit.transfer, TransferModel):
        return fit
    return replace(fit, transfer=Twinned(fit.transfer))


def priced_by(fit: roofline.KernelFit, device: Device) -> list[tuple[str, float]]:
    """(twin GPU, affinity) whose measured kernels price `device` under `fit`'s correction:
    none unless `fit` carries the twinned correction and `device` has no tables."""
    if not isinstance(fit.transfer, Twinned) or not transfer_model.applies_to(device):
        return []
    return twins(device, fit.transfer.model.gpus)


def moe_twins(
    fit: roofline.KernelFit, device: Device, engine: EngineProfile
) -> list[tuple[MeasuredKernels, float]]:
    """(the measured backend of each twin, affinity) that prices `device`'s expert layers
    (`priced_by`)."""
    return [
        (
            MeasuredKernels(
                get_device(g),
                engine.name,
                engine.version or None,
                fit,
                engine.moe_backend,
                engine.mxfp4_activation,
            ),
            a,
        )
        for g, a in priced_by(fit, device)
        if measured_kernels.has_tables(g)
    ]
