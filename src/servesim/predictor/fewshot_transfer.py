"""Few-shot adaptation of the cross-GPU transfer model to one device from k measurements.

HELP's idea (Lee et al., NeurIPS 2021) on `transfer`'s model: what transfers is the shape
dependence learnt on the fitted GPUs, and the device embedding is *which of them the new device
behaves like*. Each fitted GPU j proposes its own correction for every shape (the model
evaluated with GPU j's spec sheet); before any measurement the transferred model keeps weight
`Knobs.stay` and the proposals share the rest, each by how close it already is to the
transferred one over the shapes at hand (a GPU whose proposal differs wildly from the spec
sheet's is an unlikely twin). The shots then weigh the proposals by a Laplace likelihood of
scale `Knobs.scale` (log units): the compute families' shots together, one posterior that every
compute family takes, shots or not (as HELP's embedding is one per device: ten shots spread over
seven families are ten pieces of evidence about one question, not one or two about each of
seven), and the all-reduce shots their own family's alone. What the weighted proposals still
miss on each family's shots, their median, becomes that family's own log offset, shrunk by
k_f / (k_f + `Knobs.family_shots`) (`family_offsets`): where twin GPUs price the device
(`twin_efficiency`) the rest is mostly a per-family twin-to-device difference, and where none
does the families miss in different directions (A100 from the other nine: GEMM +15 %, MLA
decode +104 %, MLA prefill +0.6 % median). A device-wide offset, the compute shots' median
left-over shrunk by k / (k + `Knobs.offset_shots`) for the compute families only (an
all-reduce measures the fabric the GPUs sit on, not the chip: `FABRIC`), is there as a knob
but off by default: one family's shots moved the others the wrong way (A100, H100). k = 0
returns the transferred model exactly.

Where to measure matters as much as how many: `plan_shots` picks, family by family, shapes on
which the plausible proposals disagree with the transferred model (the `Knobs.quantile`-th most
disagreeing, so one odd shape is not the whole evidence), chosen from shapes alone, before any
latency is seen.

The constants were chosen by leave-one-GPU-out meta-validation on the ten aiconfigurator GPUs
(NOTES, issue 11). The goal is an adaptation that helps on every GPU, so the grid point is the
one whose worst GPU at k = 10 gains most (on cached leave-one-out residuals; for eight of the
ten GPUs the same point on the other nine): the transferred model keeps 0.98, the shots at the
0.75 quantile of disagreement, family offsets shrunk by k_f / (k_f + 10), no device offset.
Scored by the mean change instead, a device offset and family offsets at 5 shots gain more on
average (−6.0 % against −4.6 % of the k = 0 error over k = 3, 5, 10) but make A100 and H100
worse at k = 10. Before
the twins, per-family offsets, thresholded offsets and local kernel-smoothed corrections made
most GPUs worse at k = 3..10 (the error left after the learnt trend was shape-specific).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import calibrate, transfer, twin_efficiency
from servesim.predictor.calibrate import Samples
from servesim.predictor.transfer_model import GRID, TransferModel, corrects_family
from servesim.spec.devices import Device, get_device


@dataclass(frozen=True)
class Knobs:
    """The adaptation's few constants (chosen by leave-one-GPU-out meta-validation, NOTES)."""

    stay: float = 0.98  # prior weight of the transferred model itself
    scale: float = 0.1  # Laplace scale of a shot's log error about the right proposal
    similarity: float = 0.02  # a proposal's prior falls by e per this much median |log diff|
    offset_shots: float = math.inf  # the device offset: shots' median left-over x k/(k + this)
    quantile: float = 0.75  # `plan_shots` measures the shape at this quantile of disagreement
    family_shots: float = 10.0  # a family's own offset: its left-over median x k_f/(k_f + this)


KNOBS = Knobs()
# Families in the order `plan_shots` visits them (the ones every dense model runs first).
ORDER = (
    "gemm",
    "attention_decode",
    "attention_prefill",
    "mla_decode",
    "mla_prefill",
    "moe",
    "allreduce",
)
MIN_WEIGHT = 1e-4  # proposals below this weight are not evaluated
# Families whose times are the interconnect's (NVLink, PCIe, NCCL's algorithms), not the chip's:
# kept out of the device-wide offset.
FABRIC = frozenset({"allreduce"})
# ... and within them the implementations (NCCL's algorithms, an engine's custom all-reduce),
# each of which weighs its own proposals and takes its own offset: a custom all-reduce's shot
# says little about NCCL's (on GB300 one custom shot 2.3x above its prediction moved NCCL's
# rows from 4.0 to 11.2 % error while the two shared one unit).
FABRIC_UNITS = frozenset(src for src, fam in transfer.FAMILY_OF.items() if fam in FABRIC)


def unit_of(source: str) -> str:
    """The unit the adaptation weighs and offsets sample family `source` in: its model
    family, or for an all-reduce its implementation (`FABRIC_UNITS`)."""
    fam = transfer.FAMILY_OF[source]
    return source if fam in FABRIC else fam


def is_fabric(unit: str) -> bool:
    """Whether an adaptation unit (a family or an all-reduce implementation) is the fabric's:
    kept out of the device-wide offset and of the compute families' shared posterior."""
    return unit in FABRIC or unit in FABRIC_UNITS


def candidates_of(model: TransferModel) -> tuple[Device, ...]:
    """The catalog devices of the GPUs `model` was fitted on (the proposals' spec sheets)."""
    out = []
    for name in model.gpus:
        try:
            out.append(get_device(name))
        except ServesimError:
            continue
    return tuple(out)


def covered(shots: dict[str, Samples]) -> dict[str, Samples]:
    """The rows of each sample family the transfer model covers."""
    out = {}
    for src, s in shots.items():
        if src not in transfer.FAMILY_OF or not s:
            continue
        s = transfer.rows_of(src, s)
        if len(next(iter(s.values()))):
            out[src] = s
    return out


def log_corrections(
    model: TransferModel, source: str, s: Samples, device: Device, cands: tuple[Device, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(the model's log correction per row, each candidate's proposal minus it per row). The
    model's is the one it prices with: pulled towards the device's twins' measured efficiencies
    where it has twins (`twin_efficiency`)."""
    fam = transfer.FAMILY_OF[source]
    feats, _ = transfer.design(fam, source, s, device)
    z = twin_efficiency.log_correction(model, fam, s, device, feats)
    cols = []
    for dev in cands:
        try:
            f, _ = transfer.design(fam, source, s, dev)
            cols.append(model.log_correction(fam, f) - z)
        except ServesimError:  # a format the candidate cannot run: no opinion
            cols.append(np.zeros(len(z)))
    return z, np.column_stack(cols) if cols else np.zeros((len(z), 0))


def residuals(
    model: TransferModel, rows: dict[str, Samples], device: Device, cands: tuple[Device, ...]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per sample family of measured `rows`: (log(measured / the model's prediction), each
    candidate's proposal minus the model's, per row)."""
    out = {}
    for src, s in covered(rows).items():
        z, d = log_corrections(model, src, s, device, cands)
        _, t_base = transfer.design(transfer.FAMILY_OF[src], src, s, device)
        out[src] = (np.log(np.maximum(s["latency_s"], 1e-15) / t_base) - z, d)
    return out


def prior_weights(diffs: list[np.ndarray], knobs: Knobs = KNOBS) -> np.ndarray:
    """[transferred model, then each candidate] before any measurement, from the candidates'
    median |log difference| to the transferred model over the shapes at hand."""
    n = diffs[0].shape[1] if diffs else 0
    if not n:
        return np.ones(1)
    d = np.vstack(diffs)
    far = np.median(np.abs(d), axis=0)
    p = np.exp(-(far - far.min()) / knobs.similarity)
    return np.concatenate([[knobs.stay], (1.0 - knobs.stay) * p / p.sum()])


def weigh(
    per_fam: dict[str, tuple[np.ndarray, np.ndarray]],
    prior: np.ndarray,
    knobs: Knobs = KNOBS,
    families: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], float]:
    """(candidate weights per family, device log offset of the compute families) from the
    shots' log residuals over the transferred model and the candidates' differences to it, per
    family. The compute families' shots weigh the proposals together: which fitted GPU the
    device behaves like is one question (HELP's device embedding is one per device), so every
    compute family takes that one posterior, and so do the compute families of `families`
    that have no shot. All-reduce shots (`FABRIC`) weigh the all-reduce proposals alone."""

    def posterior(loss: np.ndarray) -> np.ndarray:
        lw = np.log(prior) - loss / knobs.scale
        w = np.exp(lw - lw.max())
        return (w / w.sum())[1:]

    def loss(r: np.ndarray, d: np.ndarray) -> np.ndarray:
        return np.abs(r[:, None] - np.column_stack([np.zeros(len(r)), d])).sum(axis=0)

    weights: dict[str, np.ndarray] = {}
    compute = [fam for fam in per_fam if not is_fabric(fam)]
    if compute:
        shared = posterior(sum(loss(*per_fam[fam]) for fam in compute))
        for fam in dict.fromkeys([*compute, *families]):
            if not is_fabric(fam):
                weights[fam] = shared
    for fam in per_fam:
        if is_fabric(fam):
            weights[fam] = posterior(loss(*per_fam[fam]))
    left = [r - d @ weights[fam] for fam, (r, d) in per_fam.items() if not is_fabric(fam)]
    if not left:
        return weights, 0.0
    rest = np.concatenate(left)
    k = len(rest)
    return weights, k / (k + knobs.offset_shots) * float(np.median(rest))


def family_offsets(
    per_fam: dict[str, tuple[np.ndarray, np.ndarray]],
    weights: dict[str, np.ndarray],
    offset: float,
    knobs: Knobs = KNOBS,
) -> dict[str, float]:
    """Per family with shots, the log offset its own shots still ask for once the weighted
    proposals and the device offset are applied: their median left-over, shrunk by
    k_f / (k_f + `Knobs.family_shots`). Where twin GPUs price the device (`twin_efficiency`)
    what is left is mostly each family's twin-to-device difference (at the same shapes B300's
    prefill-attention efficiency differs from B200's by 9.6 % median, their decode attention
    by 2.4 %), which one device-wide offset cannot follow."""
    out = {}
    for fam, (r, d) in per_fam.items():
        w = weights.get(fam)
        moved = d @ w if w is not None and len(w) else 0.0
        left = r - moved - (0.0 if is_fabric(fam) else offset)
        k = len(left)
        if k:
            out[fam] = k / (k + knobs.family_shots) * float(np.median(left))
    return out


def pick(scores: dict[str, np.ndarray], k: int, knobs: Knobs = KNOBS) -> dict[str, np.ndarray]:
    """k row indices spread over the families of `scores` (in the given order, round robin):
    in each, the row at `knobs.quantile` of the disagreement score, then the ones below."""
    srcs = list(scores)
    ranked = {s: np.argsort(scores[s], kind="stable") for s in srcs}
    start = {s: int(knobs.quantile * (len(scores[s]) - 1)) for s in srcs}
    picks: dict[str, list[int]] = {s: [] for s in srcs}
    total = sum(len(v) for v in scores.values())
    for i in range(min(max(k, 0), total)):
        for j in range(len(srcs)):
            s = srcs[(i + j) % len(srcs)]
            if len(picks[s]) < len(scores[s]):
                break
        at = (start[s] - len(picks[s])) % len(scores[s])
        picks[s].append(int(ranked[s][at]))
    return {s: np.asarray(v, dtype=int) for s, v in picks.items()}


@dataclass(frozen=True)
class Adapted:
    """The transfer model adapted to one device: per family, weights of the fitted GPUs'
    proposals (the transferred model keeps the rest)."""

    model: TransferModel
    device_name: str
    candidates: tuple[Device, ...]
    weights: dict[str, np.ndarray]  # unit (`unit_of`) -> one weight per candidate
    offset: float = 0.0  # device-wide log offset on top of the compute families (not FABRIC)
    shots: int = 0
    # each family's own log offset on top (`family_offsets`), for the families with shots
    family_offsets: dict[str, float] = field(default_factory=dict)

    def _offset(self, unit: str) -> float:
        """The log offset of `unit` (a family or an all-reduce implementation): the device-wide
        one (compute families only) plus the unit's own."""
        device = 0.0 if is_fabric(unit) else self.offset
        return device + self.family_offsets.get(unit, 0.0)

    def log_correction(self, source: str, s: Samples, device: Device) -> np.ndarray:
        """log(predicted / roofline) per row of sample family `source` on `device`."""
        fam, unit = transfer.FAMILY_OF[source], unit_of(source)
        if not corrects_family(fam, device):  # as roofline.collective_np prices it
            return np.zeros(max(len(np.atleast_1d(v)) for v in s.values()))
        w = self.weights.get(unit)
        keep = [] if w is None else [i for i, x in enumerate(w) if x > MIN_WEIGHT]
        # One pass prices the twinned base and the kept proposals' differences to it.
        cands = tuple(self.candidates[i] for i in keep)
        z, d = log_corrections(self.model, source, s, device, cands)
        z = z + self._offset(unit)
        return z + d @ w[keep] if keep else z

    def predict(self, source: str, s: Samples, device: Device) -> np.ndarray:
        """Seconds for rows `s` of sample family `source` on `device`."""
        fam = transfer.FAMILY_OF[source]
        _, t_base = transfer.design(fam, source, s, device)
        return t_base * np.exp(self.log_correction(source, s, device))

    # ---- the interface `roofline` prices with (as `TransferModel.correction`) ----------------
    def applies(self, device: Device) -> bool:
        """Whether the adaptation prices `device`: the device it was adapted to."""
        return device.name.split("@")[0] == self.device_name

    def correction(
        self,
        family: str,
        s: Samples,
        device: Device,
        t_base: np.ndarray,
        along: np.ndarray | None = None,
    ) -> np.ndarray:
        """Factor per row (see `TransferModel.correction`): the model's, times the adapted
        proposals' on the adapted device."""
        base = twin_efficiency.Twinned(self.model).correction(family, s, device, t_base, along)
        if not self.applies(device):
            return base
        source = transfer.SOURCES[family][0]
        unit = unit_of(source)
        if family in FABRIC:  # the rows' implementation (`roofline.collective_np` prices one)
            impl = np.atleast_1d(s.get("impl", "nccl"))
            unit = "custom_allreduce" if len(impl) and str(impl[0]) == "custom" else "nccl"
        base = base * math.exp(self._offset(unit))
        w = self.weights.get(unit)
        if w is None or not (w > MIN_WEIGHT).any():
            return base
        n = len(np.atleast_1d(t_base))
        if along is None or n <= GRID:
            return base * np.exp(self._extra(unit, source, s, device))
        x = np.log(np.maximum(np.asarray(along, dtype=float), 1e-9))
        order = np.argsort(x)
        at = np.searchsorted(x[order], np.linspace(x[order[0]], x[order[-1]], GRID))
        pick = order[np.unique(np.clip(at, 0, n - 1))]
        sub = {k: np.asarray(v)[pick] for k, v in s.items()}
        extra = self._extra(unit, source, sub, device)
        return base * np.exp(np.interp(x, x[pick], extra))

    def _extra(self, unit: str, source: str, s: Samples, device: Device) -> np.ndarray:
        """The weighted proposals' log difference to the model, per row."""
        w = self.weights[unit]
        keep = [i for i, x in enumerate(w) if x > MIN_WEIGHT]
        _, d = log_corrections(
            self.model, source, s, device, tuple(self.candidates[i] for i in keep)
        )
        return d @ w[keep]

    def to_dict(self) -> dict[str, Any]:
        """The adaptation as JSON-ready numbers (the model itself is the bundled one)."""
        return {
            "device": self.device_name,
            "shots": self.shots,
            "offset": self.offset,
            "family_offsets": dict(self.family_offsets),
            "weights": {
                fam: {c.name: float(x) for c, x in zip(self.candidates, w, strict=True)}
                for fam, w in self.weights.items()
            },
        }


def adapt(
    model: TransferModel,
    shots: dict[str, Samples],
    device: Device,
    candidates: tuple[Device, ...] | None = None,
    shapes: dict[str, Samples] | None = None,
    knobs: Knobs = KNOBS,
) -> Adapted:
    """Adapt `model` to `device` with the measured rows `shots` (sample families as in
    `calibrate.all_samples`); k = 0 returns the transferred model unchanged. `shapes`: the
    shapes (latencies not needed) over which the proposals' plausibility is judged; the
    shots' own by default."""
    cands = candidates_of(model) if candidates is None else tuple(candidates)
    rows = covered(shots)
    k = sum(len(s["latency_s"]) for s in rows.values())
    if not k:
        return Adapted(model, device.name, cands, {}, 0.0, 0)
    per_fam: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for src, (r, d) in residuals(model, rows, device, cands).items():
        per_fam.setdefault(unit_of(src), []).append((r, d))
    if shapes is None:
        prior = prior_weights([d for parts in per_fam.values() for _, d in parts], knobs)
    else:
        sh = covered(shapes)
        diffs = [log_corrections(model, x, sh[x], device, cands)[1] for x in sh]
        prior = prior_weights(diffs, knobs)
    joined = {
        fam: (np.concatenate([p[0] for p in parts]), np.vstack([p[1] for p in parts]))
        for fam, parts in per_fam.items()
    }
    weights, offset = weigh(joined, prior, knobs, tuple(model.families))
    own = family_offsets(joined, weights, offset, knobs)
    return Adapted(model, device.name, cands, weights, offset, k, own)


def plan_shots(
    model: TransferModel,
    shapes: dict[str, Samples],
    device: Device,
    k: int,
    candidates: tuple[Device, ...] | None = None,
    knobs: Knobs = KNOBS,
) -> dict[str, np.ndarray]:
    """Which k rows of `shapes` to measure (indices per sample family): family by family in
    ORDER, shapes on which the plausible proposals disagree with the transferred model (`pick`).
    Uses shapes only: `shapes` may (and in the benchmark does) carry no latencies."""
    cands = candidates_of(model) if candidates is None else tuple(candidates)
    srcs = [s for s in shapes if s in transfer.FAMILY_OF and shapes[s]]
    srcs.sort(key=lambda s: (ORDER.index(transfer.FAMILY_OF[s]), s))
    if not srcs or k <= 0:
        return {s: np.zeros(0, dtype=int) for s in srcs}
    diffs = {s: log_corrections(model, s, shapes[s], device, cands)[1] for s in srcs}
    return pick(disagreement(diffs, knobs), k, knobs)


def disagreement(diffs: dict[str, np.ndarray], knobs: Knobs = KNOBS) -> dict[str, np.ndarray]:
    """Per family and row: the candidates' |log difference| to the transferred model,
    weighted by their prior plausibility."""
    prior = prior_weights(list(diffs.values()), knobs)[1:]
    return {s: np.abs(d) @ prior if d.shape[1] else np.zeros(len(d)) for s, d in diffs.items()}


def without_latency(samples: dict[str, Samples]) -> dict[str, Samples]:
    """The same rows with their measured latencies removed (shapes only)."""
    return {src: {c: v for c, v in s.items() if c != "latency_s"} for src, s in samples.items()}


def split(samples: dict[str, Samples], picks: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(the picked rows, the others) per sample family."""
    chosen, rest = {}, {}
    for src, s in samples.items():
        n = len(s["latency_s"])
        mask = np.zeros(n, dtype=bool)
        mask[picks.get(src, np.zeros(0, dtype=int))] = True
        if mask.any():
            chosen[src] = calibrate.subset(s, mask)
        if (~mask).any():
            rest[src] = calibrate.subset(s, ~mask)
    return chosen, rest


# ---- a user's measurements: one small CSV -------------------------------------------------------
# Columns per `op` (aiconfigurator's table columns, so a row of its tables pastes in; latency in
# milliseconds). Optional columns take the value shown.
SHOT_COLUMNS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "gemm": ("gemm_perf", ("gemm_dtype", "m", "n", "k"), {}),
    "context_attention": (
        "context_attention_perf",
        ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype"),
        {"step": 0.0, "window_size": 0.0},
    ),
    "generation_attention": (
        "generation_attention_perf",
        (
            "batch_size",
            "num_heads",
            "num_key_value_heads",
            "head_dim",
            "kv_cache_dtype",
            "step",
        ),
        {"window_size": 0.0},
    ),
    "nccl": (
        "nccl_perf",
        ("num_gpus", "message_size"),
        {"op_name": "all_reduce", "nccl_dtype": "half"},
    ),
    "custom_allreduce": (
        "custom_allreduce_perf",
        ("num_gpus", "message_size"),
        {"backend": "", "kernel_source": "", "allreduce_dtype": "bfloat16"},
    ),
}
TEXT_COLUMNS = {
    "gemm_dtype",
    "kv_cache_dtype",
    "op_name",
    "nccl_dtype",
    "backend",
    "kernel_source",
    "allreduce_dtype",
}


def read_shots(path: str | Path) -> dict[str, Samples]:
    """A user's kernel measurements (one CSV; `op`, `latency_ms` and the op's columns, see
    SHOT_COLUMNS) as sample families; a bad file raises one sentence naming the line."""
    p = Path(path)
    if not p.is_file():
        raise ServesimError(f"Measurements file {str(p)!r} does not exist; check the path.")
    every = {c for _, cols, opt in SHOT_COLUMNS.values() for c in (*cols, *opt)}
    table = calibrate.read_csv(
        p,
        {"op": calibrate.TEXT, "latency_ms": calibrate.NUM},
        {c: (calibrate.TEXT, "") for c in sorted(every)},
    )
    n = len(table["op"])
    if not n:
        raise ServesimError(f"{p} has a header but no measurements; add one row per kernel.")
    tables: dict[str, dict[str, list]] = {}
    for i in range(n):
        line = i + 2
        op = str(table["op"][i]).strip()
        spec = SHOT_COLUMNS.get(op)
        if spec is None:
            raise ServesimError(
                f"{p} line {line}: op {op!r} is not one of {', '.join(SHOT_COLUMNS)}."
            )
        stem, needed, optional = spec
        row: dict[str, Any] = {"latency": float(table["latency_ms"][i])}
        if row["latency"] <= 0:
            raise ServesimError(f"{p} line {line}: latency_ms must be > 0.")
        for col in (*needed, *optional):
            cell = str(table[col][i]).strip()
            if not cell:
                if col in optional:
                    row[col] = optional[col]
                    continue
                raise ServesimError(f"{p} line {line}: a {op} row needs column {col!r}.")
            if col in TEXT_COLUMNS:
                row[col] = cell
                continue
            try:
                val = float(cell)
            except ValueError:
                val = math.nan
            if not math.isfinite(val) or val < 0:
                raise ServesimError(
                    f"{p} line {line}: column {col!r} is {cell!r}, not a number ≥ 0."
                )
            row[col] = val
        t = tables.setdefault(stem, {})
        for c, v in row.items():
            t.setdefault(c, []).append(v)
    arrays = {
        stem: {c: np.asarray(v, dtype=object if c in TEXT_COLUMNS else float) for c, v in t.items()}
        for stem, t in tables.items()
    }
    samples = calibrate.all_samples(arrays)
    kept = sum(len(s["latency_s"]) for s in covered(samples).values())
    if kept < n:
        raise ServesimError(
            f"{p}: {n - kept} of {n} rows name a number format servesim does not price "
            f"(gemm_dtype one of {', '.join(calibrate.GEMM_DTYPES)}; kv_cache_dtype one of "
            f"{', '.join(calibrate.KV_DTYPES)}); fix or remove them."
        )
    return samples


def adapted_fit(adapted: Adapted, base: Any) -> Any:
    """`base` (a KernelFit) carrying the adaptation as its cross-GPU correction."""
    note = f"{adapted.device_name}: few-shot transfer ({adapted.shots} measurements)"
    return replace(base, fitted_on=note, transfer=adapted, adaptation=adapted.to_dict())


def from_dict(doc: dict[str, Any], model: TransferModel, origin: str) -> Adapted:
    """An adaptation read back from a fit file (`Adapted.to_dict`) onto `model`."""
    fix = "regenerate it with `servesim calibrate --shots`"
    try:
        name = str(doc["device"])
        weights = doc["weights"]
        names = sorted({g for w in weights.values() for g in w})
        cands = tuple(get_device(g) for g in names)
        arr = {
            str(fam): np.array([float(w.get(g, 0.0)) for g in names]) for fam, w in weights.items()
        }
    except ServesimError as exc:
        raise ServesimError(
            f"Kernel fit {origin}: its few-shot adaptation names a GPU this catalog lacks "
            f"({str(exc).rstrip('.')}); {fix}."
        ) from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ServesimError(
            f"Kernel fit {origin}: its few-shot adaptation is malformed ({exc}); {fix}."
        ) from None
    units = {*transfer.SOURCES, *FABRIC_UNITS}
    bad = [f for f in arr if f not in units]
    if bad or any(not np.isfinite(w).all() or (w < 0).any() for w in arr.values()):
        raise ServesimError(f"Kernel fit {origin}: its few-shot adaptation is malformed; {fix}.")
    offset = doc.get("offset", 0.0)
    if not _finite_number(offset):
        raise ServesimError(f"Kernel fit {origin}: its few-shot offset is {offset!r}; {fix}.")
    own = doc.get("family_offsets", {})  # fit files written before family offsets have none
    if not isinstance(own, dict) or not all(
        f in units and _finite_number(x) for f, x in own.items()
    ):
        raise ServesimError(
            f"Kernel fit {origin}: its few-shot family offsets are malformed ({own!r}); {fix}."
        )
    shots = int(doc.get("shots", 0))
    fam_off = {str(f): float(x) for f, x in own.items()}
    return Adapted(model, name, cands, _apart(arr), float(offset), shots, _apart(fam_off))


def _apart(per_unit: dict[str, Any]) -> dict[str, Any]:
    """A fit file's figures per unit, with a file written before the all-reduce
    implementations were apart (one `allreduce` figure) giving that figure to each."""
    out = {u: v for u, v in per_unit.items() if u not in FABRIC}
    for fam in FABRIC & set(per_unit):
        for unit in FABRIC_UNITS:
            if transfer.FAMILY_OF[unit] == fam:
                out.setdefault(unit, per_unit[fam])
    return out


def _finite_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)


def load_fit(path: str | Path) -> Any:
    """A kernel fit file (`KernelFit.load`); one written by `servesim calibrate --shots` comes
    back with its adaptation on top of the bundled transfer model."""
    from servesim.predictor.edge_fit import is_edge_fit
    from servesim.predictor.roofline import KernelFit
    from servesim.predictor.transfer_model import bundled

    if is_edge_fit(path):
        raise ServesimError(
            f"{str(path)!r} is a local-device fit (servesim fewshot --shots), not a kernel fit; "
            "give it to servesim predict or simulate --fit for that device."
        )
    fit = KernelFit.load(path, adapted=True)
    if not fit.adaptation:
        return fit
    model = bundled()
    if model is None:
        raise ServesimError(
            f"Kernel fit {str(path)!r} adapts the bundled transfer model, which is not "
            "installed; reinstall servesim."
        )
    return replace(fit, transfer=from_dict(fit.adaptation, model, repr(str(path))))


# ---- which kernels a user should measure -------------------------------------------------------
# The shapes offered: aiconfigurator-core's measured shapes of one GPU (read in place, shapes
# only), the formats every recent GPU runs; `plan_shots` picks among them for the user's device.
POOL_GPU = "h100_sxm"
POOL_ROWS = 600  # rows per table, drawn at random (seeded)
SUGGESTED = "suggested by servesim calibrate --suggest: measure it, fill latency_ms"
CSV_COLUMNS = (
    "op",
    "gemm_dtype",
    "m",
    "n",
    "k",
    "batch_size",
    "isl",
    "num_heads",
    "num_key_value_heads",
    "head_dim",
    "kv_cache_dtype",
    "step",
    "num_gpus",
    "message_size",
    "nccl_dtype",
    "latency_ms",
    "source",
)
_POOL_OPS = {
    "gemm_perf": ("gemm", "gemm"),
    "context_attention_perf": ("context_attention", "attention_prefill"),
    "generation_attention_perf": ("generation_attention", "attention_decode"),
    "nccl_perf": ("nccl", "nccl"),
}


def _pool(device: Device) -> dict[str, dict[str, np.ndarray]]:
    """Raw table rows (columns as in the tables) the device can run, per pool table."""
    fp8 = "fp8" in device.peak_flops_per_s
    formats = {"bfloat16", "fp8"} if fp8 else {"bfloat16"}
    tables = calibrate.load_package_tables(POOL_GPU, max_rows=POOL_ROWS, seed=0)
    out = {}
    for stem in _POOL_OPS:
        t = tables.get(stem)
        if t is None:
            continue
        if stem == "gemm_perf":
            keep = np.isin(t["gemm_dtype"].astype(str), list(formats))
        elif stem == "nccl_perf":
            keep = t["op_name"].astype(str) == "all_reduce"
        else:
            keep = np.isin(t["kv_cache_dtype"].astype(str), list(formats))
            keep &= t["window_size"] == 0
        out[stem] = {c: v[keep] for c, v in t.items()}
    return out


def _pool_shapes(pool: dict[str, dict[str, np.ndarray]]) -> dict[str, Samples]:
    sources = {src for _, src in _POOL_OPS.values()}
    samples = calibrate.all_samples(pool)
    return without_latency({src: s for src, s in samples.items() if src in sources})


def pool_shapes(device: Device) -> dict[str, Samples]:
    """The pool's shapes the device runs (no latencies): what a user's shots are judged
    against when the candidates' plausibility is weighed (`adapt(shapes=...)`)."""
    return _pool_shapes(_pool(device))


def suggest(
    model: TransferModel, device: Device, k: int, candidates: tuple[Device, ...] | None = None
) -> list[dict[str, Any]]:
    """k kernel shapes worth measuring on `device` (rows of the `--shots` CSV, latency blank):
    `plan_shots` over the pool's GEMM, attention and all-reduce shapes."""
    pool = _pool(device)
    source_of = {src: stem for stem, (_, src) in _POOL_OPS.items()}
    shapes = _pool_shapes(pool)
    picks = plan_shots(model, shapes, device, k, candidates)
    rows = []
    for src in sorted(picks, key=lambda x: (ORDER.index(transfer.FAMILY_OF[x]), x)):
        stem = source_of[src]
        op = _POOL_OPS[stem][0]
        for i in picks[src]:
            row: dict[str, Any] = {"op": op, "latency_ms": "", "source": SUGGESTED}
            for col in (*SHOT_COLUMNS[op][1], *SHOT_COLUMNS[op][2]):
                if col in CSV_COLUMNS and col in pool[stem]:
                    v = pool[stem][col][i]
                    x = float(v) if col not in TEXT_COLUMNS else 0.0
                    row[col] = str(v) if col in TEXT_COLUMNS else (
                        str(int(x)) if x.is_integer() else repr(x)
                    )  # fmt: skip
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Rows of the `--shots` format as a CSV (blank where a column does not apply)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
