"""Per-request records and their summaries: TTFT, TPOT, inter-token latency, E2E, SLO attainment.

The simulator records one row per request (`records.RequestTable` while it is in flight, then a
`records.RecordSink`) and an `ItlHistogram` (token gaps on log bins of 0.5 %, so the p99
inter-token time needs no per-token storage). The same columns are what `servesim bench`
writes for a real server, so every summary works on both. Summaries are streaming
accumulators (`RunSummary`, `Quantiles`) fed chunk by chunk, so a run of millions of requests
is summarised in fixed memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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

    __slots__ = ("counts", "marked")

    def __init__(self) -> None:
        self.counts = [0.0] * _ITL_BINS
        self.marked: list[float] | None = None  # the counts when `mark` was called

    def mark(self) -> None:
        """Remember the counts so far (a closed loop's warm-up ends here: `since_mark`)."""
        self.marked = list(self.counts)

    def since_mark(self) -> ItlHistogram:
        """The gaps counted after `mark` (all of them when it was never called)."""
        out = ItlHistogram()
        before = self.marked or [0.0] * _ITL_BINS
        out.counts = [max(0.0, c - b) for c, b in zip(self.counts, before, strict=True)]
        return out

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


# Log-spaced bins of 0.1 % for durations from 1 ns to 1e9 s: a value is represented by its
# bin's geometric centre, within sqrt(1.001) - 1 < 0.05 % of it (values under 1 ns by 0).
_Q_LOW_S = 1e-9
_Q_RATIO = 1.001
_Q_LOG = math.log(_Q_RATIO)
_Q_BINS = math.ceil(math.log(1e9 / _Q_LOW_S) / _Q_LOG) + 2
EXACT_VALUES = 1 << 18  # values a `Quantiles` keeps before it switches to bins
QUANTILE_REL_ERROR = math.sqrt(_Q_RATIO) - 1.0


class Quantiles:
    """Mean and percentiles of a stream of values in fixed memory.

    Up to `exact_max` values are kept as they are, so the figures are numpy's exactly (with
    request ids given, in id order, so a stream in finish order summarises as the id-ordered
    columns do). Beyond that the values go to log-spaced bins 0.1 % wide: each order statistic
    is then within `QUANTILE_REL_ERROR` (0.05 %) of the true one (or 1 ns), and so is a
    percentile interpolated between two of them as numpy does; the mean stays a plain sum.
    Non-finite values are skipped.
    """

    __slots__ = ("_ids", "_pending", "_vals", "count", "counts", "exact_max", "hi", "lo", "total")

    def __init__(self, exact_max: int = EXACT_VALUES) -> None:
        self.exact_max = exact_max
        self.count = 0
        self.total = 0.0  # sum of the values, once binned
        self.lo = math.inf
        self.hi = -math.inf
        self._vals: list[np.ndarray] = []
        self._ids: list[np.ndarray] | None = []  # None once a chunk came without ids
        self._pending: list[float] = []
        self.counts: np.ndarray | None = None  # per bin, once binned

    def append(self, x: float) -> None:
        """Add one value (buffered; cheap enough for per-event use)."""
        p = self._pending
        p.append(x)
        if len(p) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            vals = np.array(self._pending, dtype=np.float64)
            self._pending = []
            self.add(vals)

    def add(self, values: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Add a chunk of values (with their request ids, when they have any)."""
        if self._pending:
            self._flush()
        x = np.asarray(values, dtype=np.float64)
        fin = np.isfinite(x)
        if not fin.all():
            x = x[fin]
            ids = ids[fin] if ids is not None else None
        if not len(x):
            return
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.count += len(x)
        if self.counts is not None:
            self._bin(x)
            return
        self._vals.append(np.array(x))
        if self._ids is not None:
            if ids is None:
                self._ids = None
            else:
                self._ids.append(np.asarray(ids, dtype=np.int64))
        if self.count > self.exact_max:
            vals = np.concatenate(self._vals)
            self._vals, self._ids = [], None
            self.counts = np.zeros(_Q_BINS, dtype=np.int64)
            self._bin(vals)

    def _bin(self, x: np.ndarray) -> None:
        self.total += float(x.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.floor(np.log(np.maximum(x, _Q_LOW_S) / _Q_LOW_S) / _Q_LOG) + 1.0
        b = np.where(x > _Q_LOW_S, np.minimum(b, _Q_BINS - 1), 0.0).astype(np.int64)
        self.counts += np.bincount(b, minlength=_Q_BINS)

    def _exact(self) -> np.ndarray:
        vals = np.concatenate(self._vals) if self._vals else np.zeros(0)
        if self._ids:
            vals = vals[np.argsort(np.concatenate(self._ids), kind="stable")]
        return vals

    def mean(self) -> float:
        """Mean of the values (nan if none)."""
        self._flush()
        if not self.count:
            return math.nan
        if self.counts is None:
            return float(self._exact().mean())
        return self.total / self.count

    def percentiles(self, qs: list[float]) -> list[float]:
        """Percentiles (0-100) as numpy's linear method gives them (nan if no values)."""
        self._flush()
        if not self.count:
            return [math.nan] * len(qs)
        if self.counts is None:
            return [float(v) for v in np.percentile(self._exact(), qs)]
        cum = np.cumsum(self.counts)
        out = []
        for q in qs:
            h = (self.count - 1) * q / 100.0
            k = math.floor(h)
            lo = self._rep(int(np.searchsorted(cum, k, side="right")))
            hi = self._rep(int(np.searchsorted(cum, min(k + 1, self.count - 1), side="right")))
            out.append(lo + (hi - lo) * (h - k))
        return out

    def _rep(self, b: int) -> float:
        v = 0.0 if b == 0 else _Q_LOW_S * _Q_RATIO ** (b - 0.5)
        return min(max(v, self.lo), self.hi)

    def stats(self) -> dict[str, float]:
        """{"mean", "p50", "p90", "p99"} of the values (nan when there are none)."""
        p50, p90, p99 = self.percentiles([50, 90, 99])
        return {"mean": self.mean(), "p50": p50, "p90": p90, "p99": p99}


def add_derived(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ttft_s, tpot_s, e2e_s and queue_s columns (nan where a request did not finish; a
    request of one output token has no TPOT, nan, which summaries leave out as vLLM's
    benchmark_serving does and which meets any TPOT target: `meets_tpot`)."""
    done = cols["finish_s"] >= 0
    nan = np.full(len(done), np.nan)
    arrival, first, finish = cols["arrival_s"], cols["first_token_s"], cols["finish_s"]
    gen = cols["generated_tokens"]
    cols["ttft_s"] = np.where(first >= 0, first - arrival, nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(gen > 1, (finish - first) / np.maximum(gen - 1, 1), np.nan)
    cols["tpot_s"] = np.where(done, tpot, nan)
    cols["e2e_s"] = np.where(done, finish - arrival, nan)
    sched = cols["scheduled_s"]
    cols["queue_s"] = np.where(sched >= 0, sched - arrival, nan)
    return cols


def meets_tpot(tpot_s: np.ndarray, done: np.ndarray, target_s: float) -> np.ndarray:
    """Which requests meet a TPOT target: finished ones at or under it, and finished ones of
    a single output token (no TPOT to miss)."""
    with np.errstate(invalid="ignore"):
        return done & (np.isnan(tpot_s) | (tpot_s <= target_s))


class ConservationError(RuntimeError):
    """A simulation lost or mangled requests: a simulator bug, never a user's mistake."""


_KINDS = (
    "did not finish",
    "generated a wrong number of tokens",
    "got a first token before arriving",
    "got a first token after finishing",
    "has a non-finite time",
)


class Conservation:
    """The conservation check fed chunk by chunk: how many requests of each kind of
    inconsistency, and the 20 smallest ids of each, over every row added."""

    def __init__(self) -> None:
        self.rows = 0
        self.all_ok = True
        self.bad: dict[str, tuple[int, np.ndarray]] = {}

    def _note(self, kind: str, ids: np.ndarray) -> None:
        if not len(ids):
            return
        count, shown = self.bad.get(kind, (0, np.zeros(0, dtype=np.int64)))
        shown = np.sort(np.concatenate((shown, np.asarray(ids, dtype=np.int64))))[:20]
        self.bad[kind] = (count + len(ids), shown)
        self.all_ok = False

    def add(self, cols: dict[str, np.ndarray]) -> None:
        """Check a chunk of rows (`request_id` names them; else their positions do)."""
        arrival, first, finish = cols["arrival_s"], cols["first_token_s"], cols["finish_s"]
        gen, out = cols["generated_tokens"], cols["output_tokens"]
        n = len(finish)
        ids = cols.get("request_id")
        if ids is None:
            ids = np.arange(self.rows, self.rows + n)
        self.rows += n
        with np.errstate(invalid="ignore"):
            ok = (finish >= 0) & (gen == out) & (first >= arrival) & (first <= finish)
            ok &= np.isfinite(finish) & np.isfinite(first)
            if ok.all():
                return
            self.all_ok = False
            masks = (
                ~(finish >= 0),
                (finish >= 0) & (gen != out),
                (first >= 0) & (first < arrival),
                (finish >= 0) & (first > finish),
                ~(np.isfinite(finish) & np.isfinite(first)),
            )
        for kind, bad in zip(_KINDS, masks, strict=True):
            self._note(kind, ids[bad])

    def missing(self, ids: np.ndarray) -> None:
        """Requests that never got a row at all (never arrived): they did not finish."""
        self._note(_KINDS[0], ids)

    def check(self, n: int, finish_events: int | None = None) -> None:
        """Raise `ConservationError` unless every one of `n` requests finished exactly once with
        all its output tokens, its first token at or after its arrival and at or before its end
        (`finish_events`: how many finishes the run reported, when it counted them)."""
        if self.all_ok and self.rows == n and (finish_events is None or finish_events == n):
            return
        problems = []
        for kind in _KINDS:
            if kind in self.bad:
                count, ids = self.bad[kind]
                shown = ", ".join(str(i) for i in ids) + (", ..." if count > 20 else "")
                problems.append(f"{count} {kind} (request ids {shown})")
        if finish_events is not None and finish_events != n:
            problems.append(f"{finish_events} finish events for {n} requests")
        raise ConservationError(
            f"internal error: the simulation of {n} requests is inconsistent: "
            + "; ".join(problems)
            + ". This is a servesim bug; please report it with the command that ran."
        )


def check_conservation(cols: dict[str, np.ndarray], finish_events: int | None = None) -> None:
    """Raise `ConservationError` naming the requests unless every request finished exactly once
    with all its output tokens, its first token at or after its arrival and at or before its
    end (`finish_events`: how many finishes the run reported, when it counted them)."""
    check = Conservation()
    check.add({k: v for k, v in cols.items() if k != "request_id"})
    check.check(len(cols["finish_s"]), finish_events)


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


class RunSummary:
    """The summary of a run accumulated over chunks of its per-request columns (with derived
    latencies), in any order: counts and token sums exact, latency figures from `Quantiles`.
    With `window_s`, also SLO attainment per window of arrival time."""

    def __init__(self, slo: Slo | None = None, window_s: float | None = None) -> None:
        self.slo = slo or Slo()
        if window_s is not None and not window_s > 0:
            raise ServesimError(f"Attainment window {window_s!r} must be positive seconds.")
        self.window_s = window_s
        self.n = self.n_done = self.good = 0
        self.start = math.inf
        self.end = -math.inf
        self.out_tokens = self.in_tokens = self.generated = self.preemptions = 0
        self.latency = {k: Quantiles() for k in ("ttft_s", "tpot_s", "e2e_s", "queue_s")}
        self.windows: dict[int, list[int]] = {}  # window index -> [good, requests]

    def _tpot_stats(self) -> dict[str, float]:
        q = self.latency["tpot_s"]
        if self.n_done and not q.count:
            return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
        return q.stats()

    def add(self, cols: dict[str, np.ndarray]) -> RunSummary:
        """Count a chunk of rows; a row never sent (arrival -1: a benchmark stopped by its
        deadline before it) is not a request of the run and is left out."""
        slo = self.slo
        sent = cols["arrival_s"] >= 0
        if not sent.all():
            cols = {k: np.asarray(v)[sent] for k, v in cols.items()}
        finish = cols["finish_s"]
        done = finish >= 0
        n, n_done = len(finish), int(done.sum())
        if not n:
            return self
        self.n += n
        self.n_done += n_done
        self.start = min(self.start, float(cols["arrival_s"].min()))
        if n_done:
            self.end = max(self.end, float(finish[done].max()))
        good = (cols["ttft_s"] <= slo.ttft_s) & meets_tpot(cols["tpot_s"], done, slo.tpot_s)
        self.good += int(good.sum())
        gen = cols["generated_tokens"]
        self.out_tokens += int(gen[done].sum())
        self.in_tokens += int(cols["prompt_tokens"][done].sum())
        self.generated += int(gen.sum())
        self.preemptions += int(cols["preemptions"].sum())
        ids = cols.get("request_id")
        for k, q in self.latency.items():
            q.add(cols[k], ids)
        if self.window_s is not None:
            which = np.floor(cols["arrival_s"] / self.window_s).astype(np.int64)
            keys, inv = np.unique(which, return_inverse=True)
            total = np.bincount(inv, minlength=len(keys))
            ok = np.bincount(inv[good], minlength=len(keys))
            for k, g, c in zip(keys.tolist(), ok.tolist(), total.tolist(), strict=True):
                w = self.windows.setdefault(k, [0, 0])
                w[0] += g
                w[1] += c
        return self

    @property
    def span_s(self) -> float:
        """Seconds from the first arrival to the last finish (at least 1e-12)."""
        start = self.start if self.n else 0.0
        end = self.end if self.n_done else start
        return max(end - start, 1e-12)

    def attainment_over_time(self) -> list[tuple[float, float, int]]:
        """(window start s, share meeting both targets, requests) per window with arrivals."""
        w = self.window_s or 0.0
        return [(float(k * w), g / c, c) for k, (g, c) in sorted(self.windows.items())]

    def result(
        self, itl: ItlHistogram | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The summary: latency percentiles, throughput, SLO attainment and goodput."""
        slo, n, span = self.slo, self.n, self.span_s
        summary: dict[str, Any] = {
            "requests": n,
            "finished": self.n_done,
            "duration_s": span,
            "ttft_s": self.latency["ttft_s"].stats(),
            # Over the requests with a TPOT (more than one output token); a run of one-token
            # requests only has none to average and reports 0, as before TPOT left them out.
            "tpot_s": self._tpot_stats(),
            "e2e_s": self.latency["e2e_s"].stats(),
            "queue_s": self.latency["queue_s"].stats(),
            "throughput_req_per_s": self.n_done / span,
            "throughput_output_tok_per_s": self.out_tokens / span,
            "throughput_total_tok_per_s": (self.out_tokens + self.in_tokens) / span,
            "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
            "slo_attainment": self.good / n if n else math.nan,
            "goodput_req_per_s": float(self.good) / span,
            "preemptions": self.preemptions,
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


def summarize(
    cols: dict[str, np.ndarray],
    slo: Slo | None = None,
    itl: ItlHistogram | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Summary of a run: latency percentiles, throughput, SLO attainment and goodput."""
    return RunSummary(slo).add(cols).result(itl, extra)


def attainment_over_time(
    cols: dict[str, np.ndarray], slo: Slo | None = None, window_s: float = 3600.0
) -> list[tuple[float, float, int]]:
    """SLO attainment per window of arrival time: (window start s, share meeting both targets,
    requests arriving in it), for windows with any arrival."""
    if window_s <= 0:
        raise ServesimError(f"Attainment window {window_s!r} must be positive seconds.")
    return RunSummary(slo, window_s).add(cols).attainment_over_time()


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
