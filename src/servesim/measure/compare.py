"""Two runs side by side: latency percentiles, throughput and SLO attainment with relative errors.

A run is what `servesim simulate` or `servesim bench` wrote: a folder with `requests.parquet`
(and `summary.json`), or the Parquet file itself. Both carry the same per-request columns, so
the same statistics come out of each. Inter-token latency comes from per-token arrival times
when the run has them (`bench`), otherwise from the `itl_s` of its summary (`simulate`).
Relative errors are of B against A: (B - A) / |A|.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.metrics import Slo, read_parquet, summarize

LATENCIES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E"))
STATS = ("mean", "p50", "p90", "p99")
RATES = (
    ("throughput_req_per_s", "throughput (req/s)"),
    ("throughput_output_tok_per_s", "output tokens/s"),
    ("slo_attainment", "SLO attainment"),
    ("goodput_req_per_s", "goodput (req/s)"),
)


# What a run's file must hold for `summarize` and the comparison (simulate and bench write
# them all).
RUN_COLUMNS = (
    "arrival_s",
    "first_token_s",
    "finish_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "prompt_tokens",
    "generated_tokens",
    "preemptions",
    "queue_s",
)


@dataclass
class Run:
    """One run's per-request columns and the summary it was written with (if any)."""

    label: str
    cols: dict[str, np.ndarray]
    saved_summary: dict[str, Any]

    def itl_gaps_s(self) -> np.ndarray | None:
        """Every gap between consecutive tokens of completed requests, if tokens were timed."""
        times = self.cols.get("token_times_s")
        if times is None:
            return None
        done = self.cols["finish_s"] >= 0
        gaps = [np.diff(np.asarray(t, dtype=float)) for t, d in zip(times, done, strict=True) if d]
        gaps = [g for g in gaps if len(g)]
        return np.concatenate(gaps) if gaps else np.zeros(0)

    def summary(self, slo: Slo) -> dict[str, Any]:
        """Percentiles and rates recomputed from the columns under `slo`."""
        s = summarize(self.cols, slo)
        gaps = self.itl_gaps_s()
        if gaps is not None and len(gaps):
            p50, p90, p99 = np.percentile(gaps, [50, 90, 99])
            s["itl_s"] = {
                "mean": float(gaps.mean()),
                "p50": float(p50),
                "p90": float(p90),
                "p99": float(p99),
            }
        elif isinstance(self.saved_summary.get("itl_s"), dict):
            s["itl_s"] = dict(self.saved_summary["itl_s"])
        return s


def load_run(path: str | Path, label: str | None = None) -> Run:
    """A run from a folder with requests.parquet (and summary.json) or a Parquet file."""
    p = Path(path)
    if p.is_dir():
        parquet = p / "requests.parquet"
    elif p.is_file():
        parquet = p
    else:
        raise ServesimError(f"Run {str(p)!r} does not exist; give a folder or a .parquet file.")
    if not parquet.is_file():
        raise ServesimError(f"{str(p)!r} has no requests.parquet; give a simulate or bench output.")
    try:
        cols = read_parquet(parquet)
    except ServesimError:
        raise
    except Exception as exc:
        raise ServesimError(f"Cannot read {str(parquet)!r} as Parquet ({exc}).") from None
    missing = [c for c in RUN_COLUMNS if c not in cols]
    if missing:
        raise ServesimError(
            f"{str(parquet)!r} lacks column {missing[0]!r}; is it a servesim requests.parquet?"
        )
    saved: dict[str, Any] = {}
    sj = parquet.parent / "summary.json"
    if sj.is_file():
        try:
            saved = json.loads(sj.read_text())
        except ValueError:
            saved = {}
    # A simulated closed loop's warm-up requests hold the first ids; its summary leaves them
    # out of every latency and rate, and so does the comparison.
    warm = saved.get("warmup_requests") if isinstance(saved, dict) else None
    if isinstance(warm, int) and warm > 0 and "request_id" in cols:
        keep = np.asarray(cols["request_id"]) >= warm
        cols = {k: np.asarray(v)[keep] for k, v in cols.items()}
    # A run is named by its folder (`measured/` or `measured/requests.parquet` → measured).
    folder = p if p.is_dir() else p.parent if p.name == "requests.parquet" else None
    name = label or (folder.resolve().name if folder is not None else p.stem)
    return Run(name, cols, saved)


def rel_err(a: float, b: float) -> float:
    """(b - a) / |a|; nan when either is missing or a is zero."""
    if a is None or b is None:
        return math.nan
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return math.nan
    return (b - a) / abs(a)


def compare(a: Run, b: Run, slo: Slo | None = None) -> list[dict[str, Any]]:
    """Rows of (metric, value in A, value in B, relative error of B against A)."""
    slo = slo or Slo()
    sa, sb = a.summary(slo), b.summary(slo)
    rows: list[dict[str, Any]] = []
    for key, name in LATENCIES:
        da, db = sa.get(key) or {}, sb.get(key) or {}
        for st in STATS:
            va, vb = da.get(st, math.nan), db.get(st, math.nan)
            rows.append(
                {
                    "metric": f"{name} {st}",
                    "key": f"{key}.{st}",
                    "unit": "s",
                    "a": va,
                    "b": vb,
                    "rel_err": rel_err(va, vb),
                }
            )
    for key, name in RATES:
        va, vb = sa.get(key, math.nan), sb.get(key, math.nan)
        rows.append(
            {"metric": name, "key": key, "unit": "", "a": va, "b": vb, "rel_err": rel_err(va, vb)}
        )
    for key, name in (("finished", "requests finished"), ("requests", "requests")):
        va, vb = sa.get(key), sb.get(key)
        rows.append(
            {"metric": name, "key": key, "unit": "", "a": va, "b": vb, "rel_err": rel_err(va, vb)}
        )
    return rows


def cdf_panels(a: Run, b: Run) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(title, {label: seconds}) per latency that both runs can show as a distribution."""
    panels = []
    for key, name in LATENCIES:
        if key == "itl_s":
            ga, gb = a.itl_gaps_s(), b.itl_gaps_s()
            runs = {r.label: g for r, g in ((a, ga), (b, gb)) if g is not None and len(g)}
        else:
            runs = {a.label: a.cols[key], b.label: b.cols[key]}
        if runs:
            panels.append((name, runs))
    return panels


def write_table(rows: list[dict[str, Any]], path: str | Path, a: str, b: str) -> Path:
    """Write the comparison rows as CSV (metric, A, B, relative error)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:  # csv quotes a label holding a comma or a quote
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["metric", a, b, "rel_err"])
        for r in rows:
            vals = [r["a"], r["b"], r["rel_err"]]
            w.writerow([r["metric"], *("" if v is None else f"{v:.6g}" for v in vals)])
    return p
