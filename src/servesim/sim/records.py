"""What a simulation records, in memory bounded by the requests in flight.

`RequestTable` holds one row per request in flight, in plain lists that the replicas, policies
and routers index by a slot id (the hot path reads and writes them directly). A driver admits
each request of the workload into a free slot when it arrives (`admit`) and reports every
finish (`done`); finished rows are harvested in batches into a `RecordSink` and their slots
reused. The sink puts the rows back in request-id order and keeps them in fixed-size numpy
chunks, or writes each chunk as a Parquet row group and drops it. At the same moments the
replicas fold their time series into a `SeriesRecorder` and price their logged iteration
shapes, so nothing grows with the trace.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from servesim.sim.metrics import Conservation, add_derived


class ReplicaBuffers(Protocol):
    """What a harvest needs of a replica (`replica.Replica`): its preemption order, and its
    time series and logged shapes to fold into bounded buffers."""

    join_order: list[int]

    def compact(self, series_cap: int, shape_cap: int) -> None:
        """Fold the replica's series and shapes into at most the given entries."""


# Per-request columns as a run records them (their order is the Parquet file's).
COLUMNS: dict[str, Any] = {
    "request_id": np.int64,
    "arrival_s": np.float64,
    "prompt_tokens": np.int64,
    "output_tokens": np.int64,
    "scheduled_s": np.float64,
    "first_token_s": np.float64,
    "finish_s": np.float64,
    "generated_tokens": np.int64,
    "preemptions": np.int64,
    "replica": np.int64,
    "priority": np.int64,
    "cached_tokens": np.int64,
    "migrations": np.int64,
}
# Columns the run writes: (column, table list, dtype, value in a free slot), in `COLUMNS`
# order around `priority` (the hot path's names for the lists).
_WRITTEN = (
    ("scheduled_s", "scheduled_s", np.float64, -1.0),
    ("first_token_s", "first_token_s", np.float64, -1.0),
    ("finish_s", "finish_s", np.float64, -1.0),
    ("generated_tokens", "generated", np.int64, 0),
    ("preemptions", "preemptions", np.int64, 0),
    ("replica", "replica", np.int64, -1),
    ("cached_tokens", "cached_tokens", np.int64, 0),
    ("migrations", "migrations", np.int64, 0),
)
CHUNK_ROWS = 1 << 16  # rows per sink chunk (Parquet row group)
REORDER_ROWS = 1 << 18  # finished rows a sink holds back to write them in request-id order
HARVEST_EVERY = 4096  # finished requests collected before their rows move to the sink
SERIES_POINTS = 1 << 20  # time-series samples kept exactly, shared by the replicas
SHAPE_ENTRIES = 1 << 21  # logged iteration shapes held before they are priced, shared
_BLOCK = 1 << 16  # workload entries converted to Python values at a time


class RecordSink:
    """Finished requests' rows in request-id order, in chunks of `chunk_rows`: kept in memory,
    or, with `path`, written as Parquet row groups (with the derived latency columns and
    `request_id`) to a temporary file renamed to `path` by `close`, so an existing file is
    replaced only by a complete one.

    Rows arrive as requests finish; a row waits in a reorder buffer until every request with
    a smaller id has arrived. If more than `reorder_rows` rows wait (one request stayed in
    flight while that many later ones finished), the waiting rows are written in id order
    anyway and a straggler is written when it comes: the file is then in id order only
    piecewise (sort by `request_id` to be sure)."""

    def __init__(
        self,
        path: str | Path | None = None,
        chunk_rows: int = CHUNK_ROWS,
        reorder_rows: int = REORDER_ROWS,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.path = Path(path) if path is not None else None
        self.chunk_rows = chunk_rows
        self.reorder_rows = reorder_rows
        self.rows = 0
        self.row_groups = 0
        self.start_s = math.inf  # first arrival
        self.end_s = -math.inf  # last finish
        self.next_id = 0  # every row with a smaller request id has been passed on
        self.in_order = True  # False once the reorder buffer overflowed
        self._wait: list[dict[str, np.ndarray]] = []  # rows waiting for smaller ids
        self._wait_rows = 0
        self._buf: list[dict[str, np.ndarray]] = []
        self._buf_rows = 0
        self._chunks: list[dict[str, np.ndarray]] = []
        self._writer: Any = None
        self._tmp: Path | None = None
        self._columns: dict[str, np.ndarray] | None = None
        self.closed = False

    def append(self, cols: dict[str, np.ndarray]) -> None:
        """Add rows (the `COLUMNS`, as numpy arrays of equal length, in any order)."""
        m = len(cols["request_id"])
        if not m:
            return
        self.rows += m
        self.start_s = min(self.start_s, float(cols["arrival_s"].min()))
        self.end_s = max(self.end_s, float(cols["finish_s"].max()))
        self._wait.append(cols)
        self._wait_rows += m
        self._release(flush=False)

    def _release(self, flush: bool) -> None:
        """Pass on the waiting rows whose smaller ids have all come (all of them, sorted,
        when flushing or when too many wait)."""
        if not self._wait_rows:
            return
        wait = self._wait
        whole = wait[0]
        if len(wait) > 1:
            whole = {k: np.concatenate([w[k] for w in wait]) for k in whole}
        ids = whole["request_id"]
        order = np.argsort(ids, kind="stable")
        s = ids[order]
        total = len(s)
        if flush or total > self.reorder_rows:
            k = total
            if not flush:
                self.in_order = False
        else:
            late = int(np.searchsorted(s, self.next_id))  # below next_id: after an overflow
            run = s[late:] - self.next_id - np.arange(total - late)
            gaps = np.flatnonzero(run)
            k = late + (int(gaps[0]) if len(gaps) else total - late)
        if k:
            self.next_id = max(self.next_id, int(s[k - 1]) + 1)
            take = order[:k] if k < total or not np.array_equal(order, np.arange(total)) else None
            out = whole if take is None else {c: v[take] for c, v in whole.items()}
            self._buf.append(out)
            self._buf_rows += k
            while self._buf_rows >= self.chunk_rows:
                self._cut(self.chunk_rows)
        if k < total:
            rest = order[k:]
            self._wait = [{c: v[rest] for c, v in whole.items()}]
        else:
            self._wait = []
        self._wait_rows = total - k

    def _cut(self, rows: int) -> None:
        buf = self._buf
        whole = buf[0]
        if len(buf) > 1:
            whole = {k: np.concatenate([b[k] for b in buf]) for k in whole}
        total = len(whole["request_id"])
        chunk = {k: v[:rows] for k, v in whole.items()}
        rest = {k: v[rows:] for k, v in whole.items()}
        self._buf = [rest] if total > rows else []
        self._buf_rows = total - rows
        self._emit(chunk)

    def _emit(self, chunk: dict[str, np.ndarray]) -> None:
        self.row_groups += 1
        if self.path is None:
            self._chunks.append({k: np.ascontiguousarray(v) for k, v in chunk.items()})
            return
        table = self._open(chunk)
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))

    def _open(self, chunk: dict[str, np.ndarray]) -> Any:
        """The chunk as an Arrow table (with derived columns); opens the file at the first."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(add_derived(dict(chunk)))
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            self._writer = pq.ParquetWriter(str(self._tmp), table.schema)
        return table

    def close(self) -> None:
        """Write what is buffered; a file sink renames its file to `path`."""
        if self.closed:
            return
        self._release(flush=True)
        if self._buf_rows:
            self._cut(self._buf_rows)
        if self.path is not None:
            if self._writer is None:  # no rows at all: still a file with the columns
                self._open({k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()})
            self._writer.close()
            self._writer = None
            os.replace(self._tmp, self.path)
            self._tmp = None
        self.closed = True

    def abort(self) -> None:
        """Drop a file sink's partial file (the run failed); `path` is left as it was."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tmp = None

    def recorded_ids(self) -> np.ndarray:
        """The request ids of every row so far (for a failed run's diagnosis)."""
        parts = [c["request_id"] for c in (*self._chunks, *self._buf, *self._wait)]
        if self._writer is not None:
            import pyarrow.parquet as pq

            self._writer.close()
            self._writer = None
            parts.append(pq.read_table(str(self._tmp), columns=["request_id"])["request_id"])
        elif self.path is not None and self.closed:
            import pyarrow.parquet as pq

            parts.append(pq.read_table(str(self.path), columns=["request_id"])["request_id"])
        return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts] or [np.zeros(0)])

    def chunks(self, columns: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The rows chunk by chunk in recorded order, with the derived latency columns (from
        memory, or read back from the Parquet file one row group at a time)."""
        self.close()
        if self.path is None:
            for c in self._chunks:
                yield add_derived(dict(c))
            return
        import pyarrow.parquet as pq

        f = pq.ParquetFile(str(self.path))
        for i in range(f.num_row_groups):
            t = f.read_row_group(i, columns=columns)
            yield {name: t.column(name).to_numpy() for name in t.column_names}

    def columns(self) -> dict[str, np.ndarray]:
        """Every row as columns ordered by request id, with derived latencies (a file sink
        reads its whole file back)."""
        if self._columns is None:
            self.close()
            parts = self._chunks if self.path is None else list(self.chunks(list(COLUMNS)))
            if not parts:
                parts = [{k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()}]
            ids = np.concatenate([p["request_id"] for p in parts])
            order = np.argsort(ids, kind="stable")
            cols = {
                k: np.concatenate([p[k] for p in parts]).astype(t)[order]
                for k, t in COLUMNS.items()
            }
            self._columns = add_derived(cols)
        return self._columns


class SeriesRecorder:
    """One replica's (time, sequences running, KV tokens held) samples, exact up to `cap` of
    them; beyond that every other sample is dropped each time the buffer fills (the
    resolution halves), the last one always kept."""

    __slots__ = ("buf", "cap", "last", "n", "seen", "stride")

    def __init__(self, cap: int) -> None:
        self.cap = max(2, cap)
        self.buf = np.empty((self.cap, 3), dtype=np.float64)
        self.n = 0
        self.seen = 0  # samples offered so far
        self.stride = 1  # a sample is kept when its index + 1 is a multiple of this
        self.last: np.ndarray | None = None

    def add(self, flat: list[float]) -> None:
        """Take samples given flat as t, running, kv, t, running, kv, ..."""
        a = np.fromiter(flat, np.float64, len(flat)).reshape(-1, 3)
        m = len(a)
        if not m:
            return
        self.last = a[-1].copy()
        g = np.arange(self.seen + 1, self.seen + m + 1)
        self.seen += m
        while True:
            sel = a if self.stride == 1 else a[g % self.stride == 0]
            if self.n + len(sel) <= self.cap:
                break
            k = self.n // 2
            self.buf[:k] = self.buf[1 : self.n : 2]
            self.n = k
            self.stride *= 2
        self.buf[self.n : self.n + len(sel)] = sel
        self.n += len(sel)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t_s, running, kv_tokens) of the kept samples, time-ordered."""
        out = self.buf[: self.n]
        if self.last is not None and self.seen % self.stride:
            out = np.vstack((out, self.last))
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy()


class RequestTable:
    """Rows of the requests in flight, indexed by slot; admits a workload's requests into free
    slots and moves finished ones to a `RecordSink`.

    The lists are the columns the replicas use. Static fields (arrival, lengths, priority,
    prefix hashes, `request_id`: the request's index in the workload) are filled on
    admission; the others start at -1 or 0 and are written as the request is served. A slot is
    reused only after its row has been harvested, and never while the cluster still refers to
    the request (slots in `hold`: a live migration in flight).
    """

    __slots__ = (
        "_arrivals",
        "_ba",
        "_bl",
        "_bn",
        "_bo",
        "_bp",
        "_bprio",
        "_hash_src",
        "_outputs",
        "_prio",
        "_prompts",
        "arrival_s",
        "cached_tokens",
        "check",
        "decode_context",
        "every",
        "finish_s",
        "finished",
        "first_token_s",
        "free",
        "generated",
        "hashes",
        "hold",
        "listeners",
        "migrations",
        "n",
        "output_tokens",
        "preemptions",
        "priority",
        "prompt_tokens",
        "replica",
        "reps",
        "request_id",
        "scheduled_s",
        "sink",
    )

    def __init__(
        self,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        arrival_s: np.ndarray | None = None,
        priority: np.ndarray | None = None,
        hashes: list[list[int]] | None = None,
        sink: RecordSink | None = None,
    ) -> None:
        self.n = len(prompt_tokens)
        self._prompts = np.asarray(prompt_tokens, dtype=np.int64)
        self._outputs = np.asarray(output_tokens, dtype=np.int64)
        self._arrivals = None if arrival_s is None else np.asarray(arrival_s, dtype=np.float64)
        self._prio = None if priority is None else np.asarray(priority, dtype=np.int64)
        self._hash_src = hashes
        self._bl = self._bn = 0  # workload block converted to lists: [_bl, _bl + _bn)
        self._ba: list[float] = []
        self._bp: list[int] = []
        self._bo: list[int] = []
        self._bprio: list[int] | None = None
        self.arrival_s: list[float] = []
        self.prompt_tokens: list[int] = []
        self.output_tokens: list[int] = []
        self.first_token_s: list[float] = []
        self.scheduled_s: list[float] = []  # first time any of it was scheduled
        self.finish_s: list[float] = []
        self.generated: list[int] = []
        self.preemptions: list[int] = []
        self.replica: list[int] = []
        self.priority: list[int] = []
        self.cached_tokens: list[int] = []  # prompt tokens found in the prefix cache
        self.migrations: list[int] = []
        self.request_id: list[int] = []  # -1: a free slot
        self.hashes: list[Any] | None = [] if hashes is not None else None
        self.free: list[int] = []
        self.finished: list[int] = []  # slots finished, not yet harvested
        self.every = HARVEST_EVERY
        self.hold: set[int] | None = None
        self.listeners: list[Any] = []  # called with each harvested chunk of rows
        self.reps: list[ReplicaBuffers] = []  # every replica of the run (they register themselves)
        self.sink = sink if sink is not None else RecordSink()
        self.check = Conservation()
        self.decode_context = np.zeros(0)  # per replica index, see `decode_context_by_replica`

    def __len__(self) -> int:
        """Slots (requests in flight, finished ones not yet harvested, free slots)."""
        return len(self.request_id)

    # ---- admission ------------------------------------------------------------------------
    def _load(self, gid: int) -> int:
        """Convert the workload block around request `gid` to Python values."""
        lo = gid if gid >= self._bl else max(0, gid - _BLOCK // 2)
        hi = min(self.n, lo + _BLOCK)
        self._bl, self._bn = lo, hi - lo
        self._bp = self._prompts[lo:hi].tolist()
        self._bo = self._outputs[lo:hi].tolist()
        self._ba = self._arrivals[lo:hi].tolist() if self._arrivals is not None else []
        self._bprio = self._prio[lo:hi].tolist() if self._prio is not None else None
        return gid - lo

    def arrival_blocks(self) -> Iterator[tuple[int, list[float]]]:
        """An open-loop workload's arrival times block by block: (first request, times)."""
        for lo in range(0, self.n, _BLOCK):
            yield lo, self._arrivals[lo : lo + _BLOCK].tolist()

    def arrival_of(self, gid: int) -> float:
        """Arrival time of request `gid` of an open-loop workload."""
        j = gid - self._bl
        if j < 0 or j >= self._bn:
            j = self._load(gid)
        return self._ba[j]

    def prompt_of(self, gid: int) -> int:
        """Prompt tokens of request `gid` of the workload (before it is admitted)."""
        j = gid - self._bl
        if 0 <= j < self._bn:
            return self._bp[j]
        return int(self._prompts[gid])  # leave the converted block where admission needs it

    def _grow(self) -> int:
        """A new slot (no free one): every list one longer."""
        self.arrival_s.append(-1.0)
        self.prompt_tokens.append(0)
        self.output_tokens.append(0)
        self.first_token_s.append(-1.0)
        self.scheduled_s.append(-1.0)
        self.finish_s.append(-1.0)
        self.generated.append(0)
        self.preemptions.append(0)
        self.replica.append(-1)
        self.priority.append(0)
        self.cached_tokens.append(0)
        self.migrations.append(0)
        self.request_id.append(-1)
        if self.hashes is not None:
            self.hashes.append(None)
        return len(self.request_id) - 1

    def admit(self, gid: int, arrival: float) -> int:
        """Give request `gid` of the workload, arriving at `arrival`, a slot; returns it."""
        j = gid - self._bl
        if j < 0 or j >= self._bn:
            j = self._load(gid)
        free = self.free
        s = free.pop() if free else self._grow()
        self.arrival_s[s] = arrival
        self.prompt_tokens[s] = self._bp[j]
        self.output_tokens[s] = self._bo[j]
        self.request_id[s] = gid
        if self._bprio is not None:
            self.priority[s] = self._bprio[j]
        if self.hashes is not None:
            self.hashes[s] = self._hash_src[gid]
        return s

    # ---- finishing ------------------------------------------------------------------------
    def done(self, slots: list[int]) -> None:
        """Requests reported finished (every `done` list a replica returns comes here, after
        the driver has read what it needs of their rows)."""
        f = self.finished
        f += slots
        if len(f) >= self.every:
            self.harvest()

    def live_timing(self) -> np.ndarray:
        """Arrival, first-token and finish times and generated tokens of the requests in
        flight (and finished but not yet harvested), as the rows of one float array: the
        part of `live_columns` that SLO controllers poll, without the other columns."""
        m = len(self.request_id)
        ids = np.fromiter(self.request_id, np.int64, m)
        idx = np.flatnonzero(ids >= 0)
        out = np.empty((4, len(idx)))
        if self._arrivals is not None:
            out[0] = self._arrivals[ids[idx]]
        else:
            out[0] = np.fromiter(self.arrival_s, np.float64, m)[idx]
        out[1] = np.fromiter(self.first_token_s, np.float64, m)[idx]
        out[2] = np.fromiter(self.finish_s, np.float64, m)[idx]
        out[3] = np.fromiter(self.generated, np.int64, m)[idx]
        return out

    def _rows(self, idx: np.ndarray, free: bool = False) -> dict[str, np.ndarray]:
        """The rows of slots `idx` as columns (what the run wrote from the lists, what the
        workload gave from its arrays by request id); with `free`, the slots are reset to a
        free slot's values. Whole lists go through numpy at once: cheaper than per slot."""
        m_all = len(self.request_id)

        def take(values: list[Any], dtype: Any, reset: Any) -> np.ndarray:
            a = np.fromiter(values, dtype, m_all)
            out = a[idx]
            if free and reset is not None:
                a[idx] = reset
                values[:] = a.tolist()
            return out

        ids = take(self.request_id, np.int64, -1)
        if self._arrivals is not None:
            arrival = self._arrivals[ids]
        else:
            arrival = take(self.arrival_s, np.float64, None)
        cols = {"request_id": ids, "arrival_s": arrival}
        cols["prompt_tokens"] = self._prompts[ids]
        cols["output_tokens"] = self._outputs[ids]
        for name, field, dtype, reset in _WRITTEN[:6]:
            cols[name] = take(getattr(self, field), dtype, reset)
        prio = self._prio
        cols["priority"] = prio[ids] if prio is not None else np.zeros(len(ids), np.int64)
        for name, field, dtype, reset in _WRITTEN[6:]:
            cols[name] = take(getattr(self, field), dtype, reset)
        return cols

    def harvest(self, final: bool = False) -> None:
        """Move the finished requests' rows to the sink and free their slots (all of them
        when `final`; else not those in `hold`); replicas compact their logs."""
        slots = self.finished
        hold = self.hold
        keep: list[int] = []
        if hold and not final:
            keep = [s for s in slots if s in hold]
            if keep:
                slots = [s for s in slots if s not in hold]
        self.finished = keep
        freed = set(slots)
        if len(freed) != len(slots):  # a finish reported twice (the check counts it)
            slots = list(dict.fromkeys(slots))
        if slots:
            idx = np.array(slots, dtype=np.int64)
            live = np.fromiter(self.request_id, np.int64, len(self.request_id))[idx] >= 0
            if not live.all():  # a finish reported for a free slot: nothing to record
                idx = idx[live]
                slots = idx.tolist()
                freed = set(slots)
        if slots:
            self._record(self._rows(idx, free=True))
            self.free += slots
            # A replica's preemption order still lists requests that finished there; a
            # reused slot must not inherit those places.
            for r in self.reps:
                order = r.join_order
                if order:
                    r.join_order = [x for x in order if x not in freed]
        # Each harvest reads whole lists: harvesting at least half as many rows as the table
        # holds keeps that linear in the requests.
        self.every = max(HARVEST_EVERY, len(self.request_id) // 2)
        n = len(self.reps)
        series_cap = max(1 << 14, SERIES_POINTS // max(1, n))
        shape_cap = max(1 << 14, SHAPE_ENTRIES // max(1, n))
        for r in self.reps:
            r.compact(series_cap, shape_cap)

    def _record(self, cols: dict[str, np.ndarray]) -> None:
        self.check.add(cols)
        # Decode context per replica (whole numbers in float64: exact in any order).
        p = cols["prompt_tokens"].astype(np.float64)
        o = np.maximum(cols["generated_tokens"] - 1.0, 0.0)
        where = cols["replica"]
        ok = where >= 0
        ctx = np.bincount(where[ok], weights=(o * p + o * (o + 1.0) * 0.5)[ok])
        if len(ctx) > len(self.decode_context):
            grown = np.zeros(len(ctx))
            grown[: len(self.decode_context)] = self.decode_context
            self.decode_context = grown
        self.decode_context[: len(ctx)] += ctx
        for listener in self.listeners:
            listener(cols)
        self.sink.append(cols)

    def close(self, finish_events: int | None = None) -> None:
        """End of the run: harvest everything, then raise `ConservationError` naming the
        requests unless every request finished exactly once with all its tokens (a file sink
        then drops its partial file); else close the sink."""
        self.harvest(final=True)
        live = [s for s, g in enumerate(self.request_id) if g >= 0]
        check = self.check
        if live:  # requests still in flight: they did not finish
            check.add(self._rows(np.array(live, dtype=np.int64)))
        try:
            if check.rows < self.n:
                seen = np.zeros(self.n, dtype=bool)
                ids = np.concatenate(
                    (self.sink.recorded_ids(), np.array([self.request_id[s] for s in live]))
                ).astype(np.int64)
                seen[ids[(ids >= 0) & (ids < self.n)]] = True
                check.missing(np.flatnonzero(~seen))
            check.check(self.n, finish_events)
        except BaseException:
            self.sink.abort()
            raise
        self.sink.close()

    def live_columns(self) -> dict[str, np.ndarray]:
        """The rows of the requests in flight (and finished but not yet harvested), as
        columns: what a mid-run observer sees."""
        live = [s for s, g in enumerate(self.request_id) if g >= 0]
        if not live:
            return {k: np.zeros(0, dtype=t) for k, t in COLUMNS.items()}
        return self._rows(np.array(live, dtype=np.int64))
