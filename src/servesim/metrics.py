"""Per-request records and their summaries: TTFT, TPOT, inter-token latency, E2E, SLO attainment.

The simulator fills a `RequestTable` (plain lists, one slot per request) and an `ItlHistogram`
(token gaps on log bins of 0.5 %, so the p99 inter-token time needs no per-token storage). The
same table is what `servesim bench` writes for a real server, so every summary works on both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import ServesimError

_ITL_MIN_S = 1e-6
_ITL_RATIO = 1.005
_ITL_LOG = math.log(_ITL_RATIO)
_ITL_BINS = int(math.log(1e4 / _ITL_MIN_S) / _ITL_LOG) + 2


class ItlHistogram:
    """Inter-token gaps on geometric bins, filled in bulk for skipped decode steps."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0.0] * _ITL_BINS

    @staticmethod
    def _bin(gap_s: float) -> int:
        if gap_s <= _ITL_MIN_S:
            return 0
        return min(_ITL_BINS - 1, int(math.log(gap_s / _ITL_MIN_S) / _ITL_LOG) + 1)

    def add(
        self,
        gap_s: float,
        weight: float = 1.0,
        _log: object = math.log,
        _scale: float = 1.0 / _ITL_LOG,
        _inv_min: float = 1.0 / _ITL_MIN_S,
    ) -> None:
        """Count `weight` gaps of `gap_s` seconds (the bin computation is inlined: hot path)."""
        if gap_s <= _ITL_MIN_S:
            self.counts[0] += weight
            return
        i = int(_log(gap_s * _inv_min) * _scale) + 1  # type: ignore[operator]
        self.counts[i if i < _ITL_BINS else _ITL_BINS - 1] += weight

    def add_ramp(self, first_s: float, last_s: float, steps: int, weight: float) -> None:
        """Count `steps` gaps (each `weight` times) whose lengths run linearly first→last."""
        if steps <= 0 or weight <= 0:
            return
        if steps == 1:
            self.add(first_s, weight)
            return
        i0 = 0 if first_s <= _ITL_MIN_S else int(math.log(first_s / _ITL_MIN_S) / _ITL_LOG) + 1
        i1 = 0 if last_s <= _ITL_MIN_S else int(math.log(last_s / _ITL_MIN_S) / _ITL_LOG) + 1
        i0, i1 = min(i0, _ITL_BINS - 1), min(i1, _ITL_BINS - 1)
        if i0 == i1:
            self.counts[i0] += steps * weight
            return
        lo, hi = (first_s, last_s) if first_s < last_s else (last_s, first_s)
        span = hi - lo
        total = steps * weight
        edge_lo = lo
        for i in range(min(i0, i1), max(i0, i1) + 1):
            edge_hi = min(hi, _ITL_MIN_S * _ITL_RATIO**i)
            share = (edge_hi - edge_lo) / span if span > 0 else 1.0
            self.counts[i] += total * max(0.0, share)
            edge_lo = edge_hi

    def merge(self, other: ItlHistogram) -> None:
        """Add another histogram's counts."""
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c

    def total(self) -> float:
        """Number of gaps counted."""
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """The q-quantile gap (seconds), at the geometric centre of its bin; nan if empty."""
        counts = np.asarray(self.counts)
        total = counts.sum()
        if total <= 0:
            return float("nan")
        idx = int(np.searchsorted(np.cumsum(counts), q * total))
        idx = min(idx, len(counts) - 1)
        if idx == 0:
            return _ITL_MIN_S
        return _ITL_MIN_S * _ITL_RATIO ** (idx - 0.5)

    def mean(self) -> float:
        """Mean gap (seconds) from bin centres."""
        counts = np.asarray(self.counts)
        total = counts.sum()
        if total <= 0:
            return float("nan")
        centres = _ITL_MIN_S * _ITL_RATIO ** (np.arange(len(counts)) - 0.5)
        centres[0] = _ITL_MIN_S
        return float((counts * centres).sum() / total)


@dataclass
class RequestTable:
    """One row per request, filled as it is served. Times in seconds from the run's start."""

    arrival_s: list[float]
    prompt_tokens: list[int]
    output_tokens: list[int]
    first_token_s: list[float] = field(default_factory=list)
    scheduled_s: list[float] = field(default_factory=list)  # first time any of it was scheduled
    finish_s: list[float] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    preemptions: list[int] = field(default_factory=list)
    replica: list[int] = field(default_factory=list)
    priority: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)  # prompt tokens found in prefix cache
    migrations: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("first_token_s", "scheduled_s", "finish_s"):
            if not getattr(self, name):
                setattr(self, name, [-1.0] * n)
        for name in ("generated", "preemptions", "priority", "cached_tokens", "migrations"):
            if not getattr(self, name):
                setattr(self, name, [0] * n)
        if not self.replica:
            self.replica = [-1] * n

    def __len__(self) -> int:
        return len(self.arrival_s)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Columns as numpy arrays, with derived TTFT, TPOT, E2E and queueing delay."""
        cols: dict[str, np.ndarray] = {
            "request_id": np.arange(len(self), dtype=np.int64),
            "arrival_s": np.asarray(self.arrival_s, dtype=np.float64),
            "prompt_tokens": np.asarray(self.prompt_tokens, dtype=np.int64),
            "output_tokens": np.asarray(self.output_tokens, dtype=np.int64),
            "scheduled_s": np.asarray(self.scheduled_s, dtype=np.float64),
            "first_token_s": np.asarray(self.first_token_s, dtype=np.float64),
            "finish_s": np.asarray(self.finish_s, dtype=np.float64),
            "generated_tokens": np.asarray(self.generated, dtype=np.int64),
            "preemptions": np.asarray(self.preemptions, dtype=np.int64),
            "replica": np.asarray(self.replica, dtype=np.int64),
            "priority": np.asarray(self.priority, dtype=np.int64),
            "cached_tokens": np.asarray(self.cached_tokens, dtype=np.int64),
            "migrations": np.asarray(self.migrations, dtype=np.int64),
        }
        return add_derived(cols)


def add_derived(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ttft_s, tpot_s, e2e_s and queue_s columns (nan where a request did not finish)."""
    done = cols["finish_s"] >= 0
    nan = np.full(len(done), np.nan)
    arrival, first, finish = cols["arrival_s"], cols["first_token_s"], cols["finish_s"]
    gen = cols["generated_tokens"]
    cols["ttft_s"] = np.where(first >= 0, first - arrival, nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(gen > 1, (finish - first) / np.maximum(gen - 1, 1), 0.0)
    cols["tpot_s"] = np.where(done, tpot, nan)
    cols["e2e_s"] = np.where(done, finish - arrival, nan)
    sched = cols["scheduled_s"]
    cols["queue_s"] = np.where(sched >= 0, sched - arrival, nan)
    return cols


class ConservationError(RuntimeError):
    """A simulation lost or mangled requests: a simulator bug, never a user's mistake."""


def check_conservation(cols: dict[str, np.ndarray], finish_events: int | None = None) -> None:
    """Raise `ConservationError` naming the requests unless every request finished exactly once
    with all its output tokens, its first token at or after its arrival and at or before its
    end (`finish_events`: how many finishes the run reported, when it counted them)."""
    arrival, first, finish = cols["arrival_s"], cols["first_token_s"], cols["finish_s"]
    gen, out = cols["generated_tokens"], cols["output_tokens"]
    n = len(finish)
    with np.errstate(invalid="ignore"):
        ok = (finish >= 0) & (gen == out) & (first >= arrival) & (first <= finish)
        ok &= np.isfinite(finish) & np.isfinite(first)
    if ok.all() and (finish_events is None or finish_events == n):
        return
    problems = []
    for what, bad in (
        ("did not finish", ~(finish >= 0)),
        ("generated a wrong number of tokens", (finish >= 0) & (gen != out)),
        ("got a first token before arriving", (first >= 0) & (first < arrival)),
        ("got a first token after finishing", (finish >= 0) & (first > finish)),
        ("has a non-finite time", ~(np.isfinite(finish) & np.isfinite(first))),
    ):
        ids = np.flatnonzero(bad)
        if len(ids):
            shown = ", ".join(str(i) for i in ids[:20]) + (", ..." if len(ids) > 20 else "")
            problems.append(f"{len(ids)} {what} (request ids {shown})")
    if finish_events is not None and finish_events != n:
        problems.append(f"{finish_events} finish events for {n} requests")
    raise ConservationError(
        f"internal error: the simulation of {n} requests is inconsistent: "
        + "; ".join(problems)
        + ". This is a servesim bug; please report it with the command that ran."
    )


@dataclass(frozen=True)
class Slo:
    """Latency targets a request must meet on both counts to be 'good'."""

    ttft_s: float = 2.0
    tpot_s: float = 0.1

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0:
            raise ServesimError(
                "SLO targets must be positive seconds, e.g. --ttft-slo 2 --tpot-slo 0.1."
            )


def _stats(x: np.ndarray) -> dict[str, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def summarize(
    cols: dict[str, np.ndarray],
    slo: Slo | None = None,
    itl: ItlHistogram | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Summary of a run: latency percentiles, throughput, SLO attainment and goodput."""
    slo = slo or Slo()
    done = cols["finish_s"] >= 0
    n, n_done = len(done), int(done.sum())
    start = float(cols["arrival_s"].min()) if n else 0.0
    end = float(cols["finish_s"][done].max()) if n_done else start
    span = max(end - start, 1e-12)
    ttft, tpot = cols["ttft_s"], cols["tpot_s"]
    good = done & (ttft <= slo.ttft_s) & (tpot <= slo.tpot_s)
    out_tokens = int(cols["generated_tokens"][done].sum())
    in_tokens = int(cols["prompt_tokens"][done].sum())
    summary: dict[str, Any] = {
        "requests": n,
        "finished": n_done,
        "duration_s": span,
        "ttft_s": _stats(ttft),
        "tpot_s": _stats(tpot),
        "e2e_s": _stats(cols["e2e_s"]),
        "queue_s": _stats(cols["queue_s"]),
        "throughput_req_per_s": n_done / span,
        "throughput_output_tok_per_s": out_tokens / span,
        "throughput_total_tok_per_s": (out_tokens + in_tokens) / span,
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "slo_attainment": float(good.sum() / n) if n else math.nan,
        "goodput_req_per_s": float(good.sum()) / span,
        "preemptions": int(cols["preemptions"].sum()),
    }
    if itl is not None and itl.total() > 0:
        summary["itl_s"] = {
            "mean": itl.mean(),
            "p50": itl.quantile(0.5),
            "p90": itl.quantile(0.9),
            "p99": itl.quantile(0.99),
        }
    if extra:
        summary.update(extra)
    return summary


def attainment_over_time(
    cols: dict[str, np.ndarray], slo: Slo | None = None, window_s: float = 3600.0
) -> list[tuple[float, float, int]]:
    """SLO attainment per window of arrival time: (window start s, share meeting both targets,
    requests arriving in it), for windows with any arrival."""
    slo = slo or Slo()
    if window_s <= 0:
        raise ServesimError(f"Attainment window {window_s!r} must be positive seconds.")
    arrival = cols["arrival_s"]
    good = (cols["finish_s"] >= 0) & (cols["ttft_s"] <= slo.ttft_s) & (cols["tpot_s"] <= slo.tpot_s)
    which = np.floor(arrival / window_s).astype(np.int64)
    out = []
    for k in np.unique(which):
        sel = which == k
        out.append((float(k * window_s), float(good[sel].mean()), int(sel.sum())))
    return out


def write_parquet(cols: dict[str, np.ndarray], path: str | Path) -> None:
    """Write per-request columns to Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: np.asarray(v) for k, v in cols.items()}), str(path))


def read_parquet(path: str | Path) -> dict[str, np.ndarray]:
    """Read a per-request Parquet file written by `simulate` or `bench`."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise ServesimError(f"Run file {str(p)!r} does not exist; check the path.")
    table = pq.read_table(str(p))
    return {name: table.column(name).to_numpy() for name in table.column_names}


def write_summary(summary: dict[str, Any], path: str | Path) -> None:
    """Write a summary as indented JSON (nan becomes null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(summary), indent=2) + "\n")
