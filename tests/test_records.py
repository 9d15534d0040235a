"""Bounded recording: request rows stream to Parquet as requests finish, slots are reused, the
summary and the time series stay in fixed memory, and none of it changes a result."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

import servesim.sim.records as records
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import QUANTILE_REL_ERROR, ConservationError, ItlHistogram, Quantiles
from servesim.sim.pool import build_pool, prepare
from servesim.sim.records import SeriesRecorder
from servesim.sim.router import Migration
from servesim.sim.simulate import _run_single, simulate
from servesim.sim.traces import bundled_trace
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


def _same_summary(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    assert a.keys() == b.keys()
    assert a == b


@pytest.mark.parametrize(
    "dep",
    [
        Deployment(LLAMA8, H100),
        Deployment(LLAMA8, get_device("l40s"), replicas=3, migration=Migration()),
    ],
    ids=["one replica", "three with migration"],
)
def test_streamed_records_equal_the_in_memory_columns(tmp_path, monkeypatch, dep) -> None:
    """Claim: with a small chunk (and slots harvested often, so they are reused), the Parquet
    file holds several row groups whose rows are in request_id order and are the in-memory
    columns bit for bit, and the summary read back from the file is the in-memory one."""
    monkeypatch.setattr(records, "HARVEST_EVERY", 5)
    w = bundled_trace("azure_conv").head(400).scaled_to_rate(12.0)
    path = tmp_path / "requests.parquet"
    streamed = simulate(dep, w, router="least_loaded", records_path=path, record_chunk_rows=37)
    kept = simulate(dep, w, router="least_loaded")
    f = pq.ParquetFile(path)
    assert f.num_row_groups == math.ceil(400 / 37) and f.metadata.num_rows == 400
    table = pq.read_table(path)
    rows = {k: table[k].to_numpy() for k in table.column_names}
    assert np.array_equal(rows["request_id"], np.arange(400))
    cols = kept.columns()
    assert list(rows) == list(cols)
    for k, v in cols.items():
        got = rows[k]
        assert got.dtype == v.dtype and np.array_equal(got, v, equal_nan=True), k
    _same_summary(streamed.summary(), kept.summary())
    # The streamed result still answers the in-memory API (by reading its file back).
    assert all(np.array_equal(streamed.columns()[k], v, equal_nan=True) for k, v in cols.items())


def test_harvesting_never_changes_a_result(monkeypatch) -> None:
    """Claim: whether finished rows leave the table after every finish or at the end, every
    column and summary figure is the same (a reused slot inherits nothing)."""
    w = bundled_trace("azure_conv").head(300).scaled_to_rate(8.0)
    dep = Deployment(LLAMA8, get_device("l40s"), replicas=2, migration=Migration())
    monkeypatch.setattr(records, "HARVEST_EVERY", 10**9)
    late = simulate(dep, w, router="least_kv")
    monkeypatch.setattr(records, "HARVEST_EVERY", 1)
    early = simulate(dep, w, router="least_kv")
    for k, v in late.columns().items():
        assert np.array_equal(v, early.columns()[k], equal_nan=True), k
    _same_summary(late.summary(), early.summary())


def test_the_table_holds_only_requests_in_flight(monkeypatch) -> None:
    """Claim: a long trace at a load one replica sustains needs as many table rows as requests
    in flight plus one harvest batch, not one per request."""
    monkeypatch.setattr(records, "HARVEST_EVERY", 64)
    w = bundled_trace("azure_conv").tiled(5000).scaled_to_rate(5.0)
    req = prepare(w, None, "round_robin")
    (rep,), _ = build_pool(Deployment(LLAMA8, H100), req, ItlHistogram())
    assert _run_single(rep, req.table) == 5000
    req.table.close(5000)
    assert len(req.table) < 400, len(req.table)
    assert req.table.sink.rows == 5000
    assert len(rep.join_order) < 400  # finished requests leave the preemption order too


def test_a_failed_run_leaves_an_existing_file_alone(tmp_path, monkeypatch) -> None:
    """Claim: when a streamed run fails (here a request is lost: a simulated bug), the file
    that was at the path is untouched and no partial file remains."""
    from servesim.sim.replica import Replica

    real = Replica.enqueue

    def drop_request_2(self: Replica, rid: int, t: float) -> list[int]:
        return [] if self.table.request_id[rid] == 2 else real(self, rid, t)

    monkeypatch.setattr(Replica, "enqueue", drop_request_2)
    path = tmp_path / "requests.parquet"
    path.write_text("a user's file")
    w = Workload(np.zeros(4), np.full(4, 100), np.full(4, 10))
    with pytest.raises(ConservationError, match=r"1 did not finish \(request ids 2\)"):
        simulate(Deployment(LLAMA8, H100), w, records_path=path, record_chunk_rows=1)
    assert path.read_text() == "a user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["requests.parquet"]


def test_binned_quantiles_stay_within_the_stated_error() -> None:
    """Claim: beyond the exact buffer, percentiles come from 0.1 % log bins within 0.05 % of
    numpy's (interpolated the same way), the mean stays exact to rounding, and below it they
    are numpy's exactly, in request-id order whatever order the values came in."""
    rng = np.random.default_rng(3)
    x = rng.lognormal(np.log(0.05), 1.2, 400_000)  # more than the 2^18 kept exactly
    x[::97] = 0.0
    q = Quantiles()
    for part in np.array_split(x, 17):
        q.add(part)
    assert q.counts is not None  # binned
    want = np.percentile(x, [0, 1, 50, 90, 99, 99.9, 100])
    got = q.percentiles([0, 1, 50, 90, 99, 99.9, 100])
    for w_, g in zip(want, got, strict=True):
        assert abs(g - w_) <= QUANTILE_REL_ERROR * w_ + 1e-12, (w_, g)
    assert q.mean() == pytest.approx(x.mean(), rel=1e-12)
    y = x[:100_000]
    exact = Quantiles()
    ids = rng.permutation(len(y))
    for part in np.array_split(ids, 7):  # shuffled, with ids: summarised in id order
        exact.add(y[part], part)
    assert exact.stats() == {
        "mean": float(y.mean()),
        **dict(zip(("p50", "p90", "p99"), np.percentile(y, [50, 90, 99]).tolist(), strict=True)),
    }
    assert math.isnan(Quantiles().mean()) and math.isnan(Quantiles().percentiles([50])[0])


def test_a_full_series_halves_its_resolution_and_keeps_the_last_sample() -> None:
    """Claim: up to its capacity the series holds every sample; beyond, it keeps every 2^k-th
    one (time-ordered, each an actual sample) within the capacity, and always the last."""
    exact = SeriesRecorder(cap=100)
    flat = [v for i in range(60) for v in (float(i), i % 7, 10.0 * i)]
    exact.add(flat[:90])
    exact.add(flat[90:])
    t, run, kv = exact.arrays()
    assert np.array_equal(t, np.arange(60.0)) and np.array_equal(kv, 10.0 * np.arange(60))
    small = SeriesRecorder(cap=16)
    flat = [v for i in range(1000) for v in (float(i), i % 7, 10.0 * i)]
    for i in range(0, len(flat), 33):
        small.add(flat[i : i + 33])
    t, run, kv = small.arrays()
    assert len(t) <= 17 and t[-1] == 999.0 and np.all(np.diff(t) > 0)
    assert np.array_equal(run, t % 7) and np.array_equal(kv, 10.0 * t)
    steps = np.diff(t[:-1])
    assert np.all(steps == steps[0]) and steps[0] == 64  # 1000 samples in 16: every 64th


def test_the_sink_writes_rows_in_request_id_order_within_its_reorder_buffer(tmp_path) -> None:
    """Claim: rows appended out of order come out in request-id order while the reorder
    buffer holds the stragglers' successors; past it they are written anyway (the sink says
    so) and nothing is lost or duplicated."""

    def rows(ids: list[int]) -> dict[str, np.ndarray]:
        i = np.array(ids, dtype=np.int64)
        cols = {k: np.zeros(len(i), dtype=t) for k, t in records.COLUMNS.items()}
        cols["request_id"] = i
        cols["arrival_s"] = i * 1.0
        cols["finish_s"] = i * 1.0 + 5.0
        return cols

    path = tmp_path / "r.parquet"
    sink = records.RecordSink(path, chunk_rows=3, reorder_rows=4)
    sink.append(rows([1, 2]))  # 0 still in flight: both wait
    assert sink._wait_rows == 2 and sink.next_id == 0
    sink.append(rows([0, 4]))  # 0, 1, 2 go; 4 waits for 3
    assert sink.next_id == 3 and sink._wait_rows == 1
    sink.append(rows([3, 5]))
    assert sink.next_id == 6 and sink.in_order
    sink.append(rows([7, 8, 9, 10, 11]))  # 6 missing and 5 rows wait: more than 4
    assert not sink.in_order and sink._wait_rows == 0
    sink.append(rows([6]))  # the straggler, written when it comes
    sink.close()
    got = pq.read_table(path)["request_id"].to_pylist()
    assert got == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 6]
    assert pq.ParquetFile(path).num_row_groups == 4
    assert np.array_equal(sink.columns()["request_id"], np.arange(12))
