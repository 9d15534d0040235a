"""Readers that turn request traces (Azure LLM 2023, Mooncake, servesim's own CSV/JSONL) into
Workloads, plus the small traces bundled with the package.

Files are read in blocks by pyarrow's CSV and JSON readers (servesim.tables), so a
multi-million-row trace reads in seconds with memory bounded beyond the arrays it returns. A
block pyarrow refuses, or whose values fail a check, is re-read row by row with the reference
rules below, so every malformed row is reported as one sentence with the file and line number,
and a user can fix a million-row trace without a debugger.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import math
import re
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from servesim import tables
from servesim.errors import ServesimError
from servesim.sim.workload import Workload
from servesim.spec.vision import Images
from servesim.tables import Block, Head, Source

# Bundled trace name -> file under servesim/data/traces (see data/README.md for origin/licence).
BUNDLED_TRACES: dict[str, str] = {
    "azure_conv": "azure_llm_2023_conv_first20min.csv",
    "mooncake_conv": "mooncake_conversation_first10min.jsonl",
}
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake's hash_ids each cover 512 prompt tokens
FORMATS = ("auto", "azure", "mooncake", "generic")
# Most tokens one request may have in prompt or output: far above any model's context, far
# below where sums over millions of requests could overflow int64.
MAX_TOKENS = 1_000_000_000

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_TIME_COLUMNS = ("arrival_s", "timestamp_ms", "timestamp")
GENERIC_HELP = (
    "a generic trace has columns arrival_s (or timestamp_ms / timestamp), prompt_tokens, "
    "output_tokens and optionally priority and images (a count per request)"
)
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")

# `YYYY-MM-DD HH:MM:SS[.f...]`, up to 9 fractional digits (Azure writes 7).
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_DIGITS = re.compile(r"[+-]?\d+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

Columns = dict[str, Any]  # "time", "prompt", "output" [, "priority", "images"] arrays
#                           [, "hashes" lists]


class _RowError(Exception):
    """A problem with one cell; the caller adds the file and line number."""


def _row_error(origin: str, line: int, problem: str) -> ServesimError:
    return ServesimError(f"line {line} of {origin}: {problem}; fix or remove the row.")


def _shown(value: Any) -> str:
    """A cell as a message shows it: repr, cut short so a huge cell cannot flood the message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


# ---------------------------------------------------------------------------------------------
# Cell rules: the reference reader applies them row by row; the columnar checks further down
# accept a block only where these rules would give the same numbers.

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def _datetime_ns(text: str, column: str) -> int:
    """Exact integer nanoseconds since 1970-01-01 of `YYYY-MM-DD HH:MM:SS.fffffff` (no float)."""
    m = _DATETIME.fullmatch(text.strip())
    if m is None:
        raise _RowError(f"{column} {_shown(text)} is not a time like 2023-11-16 18:15:46.6805900")
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        days = dt.date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise _RowError(f"{column} {_shown(text)} is not a valid calendar date") from None
    if int(h) > 23 or int(mi) > 59 or int(s) > 60:
        raise _RowError(f"{column} {_shown(text)} is not a valid time of day")
    seconds = days * 86400 + int(h) * 3600 + int(mi) * 60 + int(s)
    ns = seconds * 1_000_000_000 + int((frac or "").ljust(9, "0"))
    if not _INT64_MIN <= ns <= _INT64_MAX:
        raise _RowError(
            f"{column} {_shown(text)} is outside 1677-09-21 to 2262-04-11, the times "
            "nanoseconds cover"
        )
    return ns


def _as_int(value: Any, column: str) -> int:
    if isinstance(value, bool):
        raise _RowError(f"{column} {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            if _DIGITS.fullmatch(value.strip()):  # past Python's 4300-digit limit
                raise _RowError(f"{column} {_shown(value)} has too many digits") from None
    raise _RowError(f"{column} {_shown(value)} is not an integer")


def _tokens(value: Any, column: str) -> int:
    n = _as_int(value, column)
    if n < 1:
        raise _RowError(f"{column} is {_shown(n)} but must be at least 1 token")
    if n > MAX_TOKENS:
        shown = _shown(value.strip() if isinstance(value, str) else value).strip("'")
        raise _RowError(f"{column} is {shown} but must be at most {MAX_TOKENS:,} tokens")
    return n


def _int64(value: Any, column: str) -> int:
    n = _as_int(value, column)
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise _RowError(f"{column} {_shown(value)} does not fit in a 64-bit integer")
    return n


def _as_float(value: Any, column: str) -> float:
    if isinstance(value, bool):
        raise _RowError(f"{column} {value!r} is not a number")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise _RowError(f"{column} {_shown(value)} is not a number") from None
    if not math.isfinite(x):
        raise _RowError(f"{column} {_shown(value)} is not a finite number")
    return x


def _timestamp_s(value: Any, column: str) -> float:
    """Seconds from a numeric timestamp or a `YYYY-MM-DD HH:MM:SS[.f]` string."""
    if isinstance(value, str) and _DATETIME.fullmatch(value.strip()):
        return _datetime_ns(value, column) / 1e9
    return _as_float(value, column)


def _generic_time(value: Any, column: str) -> float:
    return _as_float(value, column) if column != "timestamp" else _timestamp_s(value, column)


def _priority(value: Any) -> int:
    """A request's priority; a blank or missing one is 0."""
    return 0 if value is None or value == "" else _int64(value, "priority")


def _images(value: Any) -> int:
    """A request's image count; a blank or missing one is 0."""
    n = 0 if value is None or value == "" else _int64(value, "images")
    if n < 0:
        raise _RowError(f"images is {n}; give a count of 0 or more")
    return n


def _mooncake_time(value: Any) -> int | float:
    """Milliseconds, kept as an exact integer when the file writes one."""
    if isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return _as_float(value, "timestamp")


# ---------------------------------------------------------------------------------------------
# Columnar checks: numpy arrays when a whole pyarrow column passes, None to re-read the block
# row by row (which finds the line and words the problem).

_STR = pa.string()
_ARROW_INT = r"^-?[0-9]{1,18}$"  # stricter than int(): no spaces, no 0x (pyarrow takes 0x10)
_ARROW_DATETIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?$"


def _all_match(col: pa.ChunkedArray, pattern: str) -> bool:
    return (
        col.null_count == 0 and pc.all(pc.match_substring_regex(col, pattern)).as_py() is not False
    )


def _arrow_text_ints(col: pa.ChunkedArray) -> np.ndarray | None:
    if not _all_match(col, _ARROW_INT):
        return None
    return pc.cast(col, pa.int64()).to_numpy()


def _in_token_range(n: np.ndarray | None) -> np.ndarray | None:
    if n is None or (len(n) and (n.min() < 1 or n.max() > MAX_TOKENS)):
        return None
    return n


def _arrow_text_tokens(col: pa.ChunkedArray) -> np.ndarray | None:
    return _in_token_range(_arrow_text_ints(col))


def _arrow_tokens(col: pa.ChunkedArray) -> np.ndarray | None:
    """Tokens from an int64 column (JSON)."""
    return None if col.null_count else _in_token_range(col.to_numpy())


def _arrow_floats(col: pa.ChunkedArray) -> np.ndarray | None:
    if col.null_count:
        return None
    x = col.to_numpy()
    return x if np.all(np.isfinite(x)) else None


def _arrow_datetime_ns(col: pa.ChunkedArray) -> np.ndarray | None:
    if not _all_match(col, _ARROW_DATETIME):
        return None
    try:  # exact integer nanoseconds; pyarrow refuses invalid dates and out-of-range years
        return pc.cast(col, pa.timestamp("ns")).cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        return None


def _arrow_timestamp_s(col: pa.ChunkedArray) -> np.ndarray | None:
    """A text `timestamp` column: all date-times, or all numbers of seconds."""
    ns = _arrow_datetime_ns(col)
    if ns is not None:
        return ns / 1e9
    if col.null_count:
        return None
    try:
        x = pc.cast(col, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        return None
    return x if np.all(np.isfinite(x)) else None


def _arrow_text_priority(col: pa.ChunkedArray) -> np.ndarray | None:
    return _arrow_text_ints(pc.if_else(pc.equal(col, ""), "0", col))


def _arrow_text_images(col: pa.ChunkedArray) -> np.ndarray | None:
    n = _arrow_text_priority(col)
    return None if n is None or (len(n) and n.min() < 0) else n


def _arrow_hash_lists(col: pa.ChunkedArray) -> list[list[int]] | None:
    if col.null_count or any(chunk.flatten().null_count for chunk in col.chunks):
        return None
    return col.to_pylist()


def _complete(cols: Columns) -> Columns | None:
    return None if any(v is None for v in cols.values()) else cols


# ---------------------------------------------------------------------------------------------
# Blocks to a Workload

FastFn = Callable[[Block], Columns | None]
SlowFn = Callable[[Block], Columns]


def _put(buf: np.ndarray | None, at: int, value: np.ndarray, capacity: int) -> np.ndarray:
    """value written into buf at row `at`; buf is made (capacity rows), or remade wider (int
    milliseconds meeting fractional ones) or half again as long. Capacity never written costs
    address space, not memory."""
    end = at + len(value)
    if buf is None:
        buf = np.empty(max(capacity, end), dtype=value.dtype)
    wider = np.result_type(buf, value)
    size = len(buf) if end <= len(buf) else max(end, len(buf) * 3 // 2)
    if wider != buf.dtype or size != len(buf):
        grown = np.empty(size, dtype=wider)
        grown[:at] = buf[:at]
        buf = grown
    buf[at:end] = value
    return buf


def _read_blocks(
    src: Source, start: int, line: int, quoted: bool, fast: FastFn, slow: SlowFn
) -> tuple[Columns, Callable[[int], int]]:
    """Every block through `fast`, or `slow` where fast declines, written into whole columns;
    plus a function giving the line of a request by its index in the file.

    Columns are sized from the first block's bytes per row, so a long trace needs about its
    result in memory plus a block, not the blocks plus their concatenation."""
    arrays: dict[str, np.ndarray] = {}
    hashes: list[list[int]] | None = None
    spans: list[tuple[int, int, int, int]] = []  # (first request, byte offset, size, line)
    rows = capacity = 0
    try:
        file_bytes = src.path.stat().st_size
        for block in tables.blocks(src, start, line, quoted):
            cols = fast(block)
            if cols is None:
                cols = slow(block)
            n = len(cols["prompt"])
            if n == 0:
                continue
            if not capacity:
                capacity = int((file_bytes - block.offset) / len(block.data) * n * 1.1) + n
            spans.append((rows, block.offset, len(block.data), block.line))
            for key, value in cols.items():
                if key == "hashes":
                    hashes = [] if hashes is None else hashes
                    hashes.extend(value)
                else:
                    arrays[key] = _put(arrays.get(key), rows, value, capacity)
            rows += n
    except tables.LineError as exc:
        raise _row_error(src.origin, exc.line, exc.problem) from None
    if rows == 0:
        raise _no_requests(src.origin)
    out: Columns = {key: buf[:rows] for key, buf in arrays.items()}
    if hashes is not None:
        out["hashes"] = hashes

    def locate(index: int) -> int:
        first, offset, size, start_line = spans[bisect.bisect_right(spans, (index, 2**63)) - 1]
        block = tables.reread(src, offset, size, start_line)
        found = tables.csv_rows(block) if quoted else tables.json_rows(block)
        return next(itertools.islice(found, index - first, None))[0]

    return out, locate


def _rebase(t: np.ndarray, origin: str, time_col: str, locate: Callable[[int], int]) -> None:
    """Subtract the earliest time in place (exact for integers), or say which row is so far
    from it that the difference overflows."""
    t0 = t.min()
    if t.dtype.kind == "f":
        overflow = not math.isfinite(float(t.max()) - float(t0))
    else:
        overflow = int(t.max()) - int(t0) > _INT64_MAX
    if overflow:
        with np.errstate(over="ignore"):
            bad = np.isinf(t - t0) if t.dtype.kind == "f" else t > _INT64_MAX + int(t0)
        row = int(np.argmax(bad))

        def shown(x: np.generic) -> str:  # Azure times as dates, others as written
            return str(x.astype("datetime64[ns]")) if time_col == "TIMESTAMP" else repr(x.item())

        raise _row_error(
            origin,
            locate(row),
            f"{time_col} {shown(t[row])} is too far from the earliest time in the file "
            f"({shown(t0)}) to measure from it",
        )
    t -= t0


def _sorted_workload(
    cols: Columns,
    name: str,
    origin: str,
    time_col: str,
    locate: Callable[[int], int],
    rebase: bool,
    scale: float = 1.0,
    block_tokens: int = 0,
) -> Workload:
    """Sort rows stably by time, convert to seconds (optionally relative to the earliest).

    Works in place on the columns read, so the peak is about one column above the result."""
    t = cols.pop("time")
    if rebase:
        _rebase(t, origin, time_col, locate)
    elif len(t) and t.min() < 0:  # the run starts at 0: an earlier arrival would wait unseen
        row = int(np.argmin(t))
        raise _row_error(
            origin,
            locate(row),
            f"{time_col} {_shown(t[row].item())} is negative, but arrival times count from the "
            "start of the run at 0 (an absolute timestamp column is measured from its earliest "
            "row)",
        )
    order = np.argsort(t, kind="stable") if np.any(t[1:] < t[:-1]) else None

    def take(a: np.ndarray) -> np.ndarray:
        return a if order is None else a[order]

    arrival = take(t)
    arrival = arrival if arrival.dtype == np.float64 else arrival.astype(np.float64)
    del t
    arrival *= scale
    hashes = cols.get("hashes")
    if hashes is not None and order is not None:
        hashes = [hashes[i] for i in order]
    return Workload(
        arrival_s=arrival,
        prompt_tokens=take(cols.pop("prompt")),
        output_tokens=take(cols.pop("output")),
        name=name,
        priority=take(cols.pop("priority")) if "priority" in cols else None,
        prefix_hashes=hashes,
        prefix_block_tokens=block_tokens,
        # A trace's image counts carry no size yet (`multimodal.size_images` gives one).
        images=Images.unsized(take(cols.pop("images"))) if "images" in cols else None,
    )


def _no_requests(origin: str) -> ServesimError:
    return ServesimError(f"Trace file {origin} has no requests; add at least one data row.")


def _check_width(row: list[str], width: int, origin: str, line: int) -> None:
    if len(row) < width:
        raise _row_error(
            origin, line, f"expected {width} comma-separated columns, found {len(row)}"
        )


def _csv_header(src: Source, head: Head) -> tuple[Head, list[str]]:
    """The header row (stripped names): the first line with a non-blank cell."""
    while True:
        header = [name.strip() for name in tables.split_row(head.text, head.line)]
        if any(header):
            return head, header
        try:
            below = tables.read_head(src, head.end, head.line + 1)
        except tables.LineError as exc:
            raise _row_error(src.origin, exc.line, exc.problem) from None
        if below is None:
            raise _no_requests(src.origin)
        head = below


def _first_object(src: Source, head: Head) -> dict[str, Any]:
    """The first JSON line as an object (it decides the columns of a generic JSONL trace)."""
    block = Block(src, head.text.encode("utf-8"), head.line, head.start)
    try:
        return next(tables.json_rows(block))[1]
    except tables.LineError as exc:
        raise _row_error(src.origin, exc.line, exc.problem) from None


# ---------------------------------------------------------------------------------------------
# Formats


def _parse_azure(src: Source, head: Head, name: str) -> Workload:
    head, header = _csv_header(src, head)
    lower = {c.lower(): i for i, c in enumerate(header)}
    missing = [c for c in AZURE_COLUMNS if c.lower() not in lower]
    if missing:
        raise ServesimError(
            f"Trace file {src.origin} lacks column(s) {', '.join(missing)}; an Azure LLM trace "
            f"has columns {', '.join(AZURE_COLUMNS)}."
        )
    it, ip, io = (lower[c.lower()] for c in AZURE_COLUMNS)
    width = len(header)

    def fast(block: Block) -> Columns | None:
        cols = tables.csv_columns(block, width, {it: _STR, ip: _STR, io: _STR})
        if cols is None:
            return None
        return _complete(
            {
                "time": _arrow_datetime_ns(cols[it]),
                "prompt": _arrow_text_tokens(cols[ip]),
                "output": _arrow_text_tokens(cols[io]),
            }
        )

    def slow(block: Block) -> Columns:
        times: list[int] = []
        prompt: list[int] = []
        output: list[int] = []
        for line, row in tables.csv_rows(block):
            _check_width(row, width, src.origin, line)
            try:
                times.append(_datetime_ns(row[it], "TIMESTAMP"))
                prompt.append(_tokens(row[ip], "ContextTokens"))
                output.append(_tokens(row[io], "GeneratedTokens"))
            except _RowError as exc:
                raise _row_error(src.origin, line, str(exc)) from None
        return {
            "time": np.array(times, dtype=np.int64),
            "prompt": np.array(prompt, dtype=np.int64),
            "output": np.array(output, dtype=np.int64),
        }

    cols, locate = _read_blocks(src, head.end, head.line + 1, True, fast, slow)
    return _sorted_workload(cols, name, src.origin, "TIMESTAMP", locate, rebase=True, scale=1e-9)


def _generic_columns(keys: Iterable[str], origin: str) -> str:
    """The time column a generic trace uses, or a ServesimError listing what is expected."""
    keys = set(keys)
    time_col = next((c for c in GENERIC_TIME_COLUMNS if c in keys), None)
    missing = [c for c in ("prompt_tokens", "output_tokens") if c not in keys]
    if time_col is None:
        missing.insert(0, "arrival_s")
    if missing:
        raise ServesimError(
            f"Trace file {origin} lacks column(s) {', '.join(missing)}; {GENERIC_HELP}."
        )
    return time_col


def _field(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise _RowError(f"the row lacks {key!r} ({GENERIC_HELP})")
    return obj[key]


def _generic_workload(cols: Columns, name: str, origin: str, time_col: str, locate) -> Workload:
    scale = 1e-3 if time_col == "timestamp_ms" else 1.0
    rebase = time_col != "arrival_s"  # arrival_s is already relative; keep any offset it has
    return _sorted_workload(cols, name, origin, time_col, locate, rebase, scale)


def _parse_generic_csv(src: Source, head: Head, name: str) -> Workload:
    head, header = _csv_header(src, head)
    index = {c: i for i, c in enumerate(header)}
    time_col = _generic_columns(index, src.origin)
    width = len(header)
    it, ip, io = index[time_col], index["prompt_tokens"], index["output_tokens"]
    ir = index.get("priority")
    im = index.get("images")
    types = {it: _STR if time_col == "timestamp" else pa.float64(), ip: _STR, io: _STR}
    if ir is not None:
        types[ir] = _STR
    if im is not None:
        types[im] = _STR

    def fast(block: Block) -> Columns | None:
        cols = tables.csv_columns(block, width, types)
        if cols is None:
            return None
        t = cols[it]
        out = {
            "time": _arrow_timestamp_s(t) if time_col == "timestamp" else _arrow_floats(t),
            "prompt": _arrow_text_tokens(cols[ip]),
            "output": _arrow_text_tokens(cols[io]),
        }
        if ir is not None:
            out["priority"] = _arrow_text_priority(cols[ir])
        if im is not None:
            out["images"] = _arrow_text_images(cols[im])
        return _complete(out)

    def slow(block: Block) -> Columns:
        out: dict[str, list[Any]] = {"time": [], "prompt": [], "output": []}
        if ir is not None:
            out["priority"] = []
        if im is not None:
            out["images"] = []
        for line, row in tables.csv_rows(block):
            _check_width(row, width, src.origin, line)
            try:
                out["time"].append(_generic_time(row[it].strip(), time_col))
                out["prompt"].append(_tokens(row[ip].strip(), "prompt_tokens"))
                out["output"].append(_tokens(row[io].strip(), "output_tokens"))
                if ir is not None:
                    out["priority"].append(_priority(row[ir].strip()))
                if im is not None:
                    out["images"].append(_images(row[im].strip()))
            except _RowError as exc:
                raise _row_error(src.origin, line, str(exc)) from None
        return {
            k: np.array(v, dtype=np.float64 if k == "time" else np.int64) for k, v in out.items()
        }

    cols, locate = _read_blocks(src, head.end, head.line + 1, True, fast, slow)
    return _generic_workload(cols, name, src.origin, time_col, locate)


def _parse_generic_jsonl(src: Source, head: Head, name: str) -> Workload:
    first = _first_object(src, head)
    time_col = _generic_columns(first, src.origin)
    has_prio = "priority" in first
    has_images = "images" in first
    text_time = time_col == "timestamp" and isinstance(first[time_col], str)
    types = {
        time_col: _STR if text_time else pa.float64(),
        "prompt_tokens": pa.int64(),
        "output_tokens": pa.int64(),
    }
    if has_prio:
        types["priority"] = pa.int64()
    if has_images:
        types["images"] = pa.int64()

    def fast(block: Block) -> Columns | None:
        cols = tables.json_columns(block, types)
        if cols is None:
            return None
        t = cols[time_col]
        out = {
            "time": _arrow_timestamp_s(t) if text_time else _arrow_floats(t),
            "prompt": _arrow_tokens(cols["prompt_tokens"]),
            "output": _arrow_tokens(cols["output_tokens"]),
        }
        if has_prio:
            out["priority"] = pc.fill_null(cols["priority"], 0).to_numpy()
        if has_images:
            n = pc.fill_null(cols["images"], 0).to_numpy()
            out["images"] = None if len(n) and n.min() < 0 else n
        return _complete(out)

    def slow(block: Block) -> Columns:
        out: dict[str, list[Any]] = {"time": [], "prompt": [], "output": []}
        if has_prio:
            out["priority"] = []
        if has_images:
            out["images"] = []
        for line, obj in tables.json_rows(block):
            try:
                out["time"].append(_generic_time(_field(obj, time_col), time_col))
                out["prompt"].append(_tokens(_field(obj, "prompt_tokens"), "prompt_tokens"))
                out["output"].append(_tokens(_field(obj, "output_tokens"), "output_tokens"))
                if has_prio:
                    out["priority"].append(_priority(obj.get("priority")))
                if has_images:
                    out["images"].append(_images(obj.get("images")))
            except _RowError as exc:
                raise _row_error(src.origin, line, str(exc)) from None
        return {
            k: np.array(v, dtype=np.float64 if k == "time" else np.int64) for k, v in out.items()
        }

    cols, locate = _read_blocks(src, head.start, head.line, False, fast, slow)
    return _generic_workload(cols, name, src.origin, time_col, locate)


_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def _parse_mooncake(src: Source, head: Head, name: str) -> Workload:
    first = _first_object(src, head).get("timestamp")
    int_time = isinstance(first, int) and not isinstance(first, bool)
    types = {
        "timestamp": pa.int64() if int_time else pa.float64(),
        "input_length": pa.int64(),
        "output_length": pa.int64(),
        "hash_ids": pa.list_(pa.int64()),
    }

    def fast(block: Block) -> Columns | None:
        cols = tables.json_columns(block, types)
        if cols is None:
            return None
        t = cols["timestamp"]
        return _complete(
            {
                "time": (None if t.null_count else t.to_numpy()) if int_time else _arrow_floats(t),
                "prompt": _arrow_tokens(cols["input_length"]),
                "output": _arrow_tokens(cols["output_length"]),
                "hashes": _arrow_hash_lists(cols["hash_ids"]),
            }
        )

    def slow(block: Block) -> Columns:
        times: list[int | float] = []
        prompt: list[int] = []
        output: list[int] = []
        hashes: list[list[int]] = []
        for line, obj in tables.json_rows(block):
            try:
                for key in _MOONCAKE_KEYS:
                    if key not in obj:
                        raise _RowError(
                            f"the object lacks {key!r} (a Mooncake trace row has timestamp, "
                            "input_length, output_length, hash_ids)"
                        )
                times.append(_mooncake_time(obj["timestamp"]))
                prompt.append(_tokens(obj["input_length"], "input_length"))
                output.append(_tokens(obj["output_length"], "output_length"))
                ids = obj["hash_ids"]
                if not isinstance(ids, list):
                    raise _RowError(f"hash_ids {_shown(ids)} is not a list of integers")
                hashes.append([_int64(h, "hash_ids entry") for h in ids])
            except _RowError as exc:
                raise _row_error(src.origin, line, str(exc)) from None
        exact = all(isinstance(x, int) for x in times)
        return {
            "time": np.array(times, dtype=np.int64 if exact else np.float64),
            "prompt": np.array(prompt, dtype=np.int64),
            "output": np.array(output, dtype=np.int64),
            "hashes": hashes,
        }

    cols, locate = _read_blocks(src, head.start, head.line, False, fast, slow)
    return _sorted_workload(
        cols,
        name,
        src.origin,
        "timestamp",
        locate,
        rebase=True,
        scale=1e-3,
        block_tokens=MOONCAKE_BLOCK_TOKENS,
    )


# ---------------------------------------------------------------------------------------------
# Detection and the public readers


def _head(src: Source) -> Head:
    """The first non-blank line, or a ServesimError for a blank file."""
    try:
        head = tables.read_head(src)
    except tables.LineError as exc:
        raise _row_error(src.origin, exc.line, exc.problem) from None
    if head is None:
        raise ServesimError(
            f"Trace file {src.origin} is empty; give it a header and at least one request row."
        )
    return head


def _is_json(head: Head, suffix: str) -> bool:
    return suffix in _JSON_SUFFIXES or (suffix != ".csv" and head.text.lstrip().startswith("{"))


def _detect(src: Source, head: Head, suffix: str) -> str:
    """Guess the format from the extension and the first non-blank line."""
    if _is_json(head, suffix):
        try:
            first = _first_object(src, head)
        except ServesimError:  # the generic reader reports the line
            first = {}
        return "mooncake" if "input_length" in first else "generic_jsonl"
    header = {c.lower() for c in _csv_header(src, head)[1]}
    if {c.lower() for c in AZURE_COLUMNS} <= header:
        return "azure"
    return "generic_csv"


_PARSERS: dict[str, Callable[[Source, Head, str], Workload]] = {
    "azure": _parse_azure,
    "mooncake": _parse_mooncake,
    "generic_csv": _parse_generic_csv,
    "generic_jsonl": _parse_generic_jsonl,
}


def _source(path: str | Path) -> Source:
    return Source(Path(path), str(path), "trace")


def _parse(src: Source, name: str, fmt: str) -> Workload:
    if fmt not in FORMATS:
        raise ServesimError(f"Trace format {fmt!r} is unknown; use one of: {', '.join(FORMATS)}.")
    head = _head(src)
    kind = _detect(src, head, src.path.suffix.lower())
    if fmt == "azure":
        kind = "azure"
    elif fmt == "mooncake":
        kind = "mooncake"
    elif fmt == "generic" and kind not in ("generic_csv", "generic_jsonl"):
        kind = "generic_jsonl" if kind == "mooncake" else "generic_csv"
    return _PARSERS[kind](src, head, name)


def read_azure_csv(path: str | Path) -> Workload:
    """Azure LLM inference trace 2023 (TIMESTAMP, ContextTokens, GeneratedTokens) as a Workload."""
    src = _source(path)
    return _parse_azure(src, _head(src), Path(path).stem)


def read_generic(path: str | Path) -> Workload:
    """servesim's own CSV or JSONL: arrival_s | timestamp_ms | timestamp, prompt_tokens,
    output_tokens, optional priority. Rows are sorted stably by time."""
    src = _source(path)
    head = _head(src)
    parse = _parse_generic_jsonl if _is_json(head, src.path.suffix.lower()) else _parse_generic_csv
    return parse(src, head, src.path.stem)


def read_mooncake_jsonl(path: str | Path) -> Workload:
    """Mooncake FAST'25 trace: timestamp (ms), input_length, output_length, hash_ids (512 tok)."""
    src = _source(path)
    return _parse_mooncake(src, _head(src), Path(path).stem)


def read_trace(path: str | Path, fmt: str = "auto") -> Workload:
    """Read any supported trace; fmt is auto | azure | mooncake | generic."""
    return _parse(_source(path), Path(path).stem, fmt)


def bundled_trace(name: str = "azure_conv") -> Workload:
    """A trace shipped with servesim: azure_conv (20 min of Azure conversation) or mooncake_conv."""
    if name not in BUNDLED_TRACES:
        raise ServesimError(
            f"Unknown bundled trace {name!r}; use one of: {', '.join(BUNDLED_TRACES)}."
        )
    fname = BUNDLED_TRACES[name]
    res = resources.files("servesim").joinpath("data/traces").joinpath(fname)
    with resources.as_file(res) as path:
        return _parse(Source(path, fname, "trace"), name, "auto")


def bundled_or_file(name_or_path: str) -> Workload:
    """A bundled trace by name, otherwise a trace file read with format detection."""
    if name_or_path in BUNDLED_TRACES:
        return bundled_trace(name_or_path)
    return read_trace(name_or_path)
