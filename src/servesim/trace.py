"""Readers that turn request traces (Azure LLM 2023, Mooncake, servesim's own CSV/JSONL) into
Workloads, plus the small traces bundled with the package.

Every malformed row is reported as one sentence with the file and line number, so a user can
fix a million-row trace without a debugger.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.workload import Workload

# Bundled trace name -> file under servesim/data/traces (see data/README.md for origin/licence).
BUNDLED_TRACES: dict[str, str] = {
    "azure_conv": "azure_llm_2023_conv_first20min.csv",
    "mooncake_conv": "mooncake_conversation_first10min.jsonl",
}
MOONCAKE_BLOCK_TOKENS = 512  # Mooncake's hash_ids each cover 512 prompt tokens
FORMATS = ("auto", "azure", "mooncake", "generic")

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_TIME_COLUMNS = ("arrival_s", "timestamp_ms", "timestamp")
GENERIC_HELP = (
    "a generic trace has columns arrival_s (or timestamp_ms / timestamp), prompt_tokens, "
    "output_tokens and optionally priority"
)
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")

# `YYYY-MM-DD HH:MM:SS[.f...]`, up to 9 fractional digits (Azure writes 7).
_DATETIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


class _RowError(Exception):
    """A problem with one cell; the caller adds the file and line number."""


def _row_error(origin: str, line: int, problem: str) -> ServesimError:
    return ServesimError(f"line {line} of {origin}: {problem}; fix or remove the row.")


_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def _datetime_ns(text: str, column: str) -> int:
    """Exact integer nanoseconds since 1970-01-01 of `YYYY-MM-DD HH:MM:SS.fffffff` (no float)."""
    m = _DATETIME.fullmatch(text.strip())
    if m is None:
        raise _RowError(f"{column} {text!r} is not a time like 2023-11-16 18:15:46.6805900")
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        days = dt.date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise _RowError(f"{column} {text!r} is not a valid calendar date") from None
    if int(h) > 23 or int(mi) > 59 or int(s) > 60:
        raise _RowError(f"{column} {text!r} is not a valid time of day")
    seconds = days * 86400 + int(h) * 3600 + int(mi) * 60 + int(s)
    return seconds * 1_000_000_000 + int((frac or "").ljust(9, "0"))


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
            pass
    raise _RowError(f"{column} {value!r} is not an integer")


def _tokens(value: Any, column: str) -> int:
    n = _as_int(value, column)
    if n < 1:
        raise _RowError(f"{column} is {n} but must be at least 1 token")
    return n


def _as_float(value: Any, column: str) -> float:
    if isinstance(value, bool):
        raise _RowError(f"{column} {value!r} is not a number")
    try:
        x = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise _RowError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise _RowError(f"{column} {value!r} is not a finite number")
    return x


def _timestamp_s(value: Any, column: str) -> float:
    """Seconds from a numeric timestamp or a `YYYY-MM-DD HH:MM:SS[.f]` string."""
    if isinstance(value, str) and _DATETIME.fullmatch(value.strip()):
        return _datetime_ns(value, column) / 1e9
    return _as_float(value, column)


# ---------------------------------------------------------------------------------------------
# File access


def _read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise ServesimError(f"Trace file {str(p)!r} does not exist; check the path.")
    if not p.is_file():
        raise ServesimError(f"Trace path {str(p)!r} is not a file; give a trace file.")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ServesimError(f"Trace file {str(p)!r} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as exc:
        raise ServesimError(f"Trace file {str(p)!r} cannot be read ({exc.strerror}).") from None


def _check_nonempty(text: str, origin: str) -> None:
    if not text.strip():
        raise ServesimError(
            f"Trace file {origin} is empty; give it a header and at least one request row."
        )


def _no_requests(origin: str) -> ServesimError:
    return ServesimError(f"Trace file {origin} has no requests; add at least one data row.")


def _csv_rows(text: str, origin: str) -> tuple[dict[str, int], Iterable[tuple[int, list[str]]]]:
    """Header index (stripped names) and (line number, cells) for each non-blank data row."""
    _check_nonempty(text, origin)
    reader = csv.reader(text.splitlines())
    header = next(r for r in reader if any(c.strip() for c in r))
    index = {name.strip(): i for i, name in enumerate(header)}

    def rows() -> Iterable[tuple[int, list[str]]]:
        for row in reader:
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise _row_error(
                    origin,
                    reader.line_num,
                    f"expected {len(header)} comma-separated columns, found {len(row)}",
                )
            yield reader.line_num, row

    return index, rows()


def _json_rows(text: str, origin: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    _check_nonempty(text, origin)
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _row_error(origin, line, f"not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise _row_error(origin, line, "is not a JSON object")
        yield line, obj


def _sorted_workload(
    times: list[Any],
    prompt: list[int],
    output: list[int],
    name: str,
    rebase: bool,
    scale: float = 1.0,
    priority: list[int] | None = None,
    hashes: list[list[int]] | None = None,
    block_tokens: int = 0,
) -> Workload:
    """Sort rows stably by time, convert to seconds (optionally relative to the earliest)."""
    if rebase:
        t0 = min(times)
        times = [x - t0 for x in times]  # exact in Python ints (nanoseconds / milliseconds)
    t = np.asarray(times)
    order = np.argsort(t, kind="stable")
    arrival = t[order].astype(np.float64) * scale
    return Workload(
        arrival_s=arrival,
        prompt_tokens=np.asarray(prompt, dtype=np.int64)[order],
        output_tokens=np.asarray(output, dtype=np.int64)[order],
        name=name,
        priority=None if priority is None else np.asarray(priority, dtype=np.int64)[order],
        prefix_hashes=None if hashes is None else [hashes[i] for i in order],
        prefix_block_tokens=block_tokens,
    )


# ---------------------------------------------------------------------------------------------
# Parsers over text (the public readers add file access)


def _parse_azure(text: str, origin: str, name: str) -> Workload:
    index, rows = _csv_rows(text, origin)
    lower = {k.lower(): v for k, v in index.items()}
    missing = [c for c in AZURE_COLUMNS if c.lower() not in lower]
    if missing:
        raise ServesimError(
            f"Trace file {origin} lacks column(s) {', '.join(missing)}; an Azure LLM trace has "
            f"columns {', '.join(AZURE_COLUMNS)}."
        )
    it, ip, io = (lower[c.lower()] for c in AZURE_COLUMNS)
    times: list[int] = []
    prompt: list[int] = []
    output: list[int] = []
    for line, row in rows:
        try:
            times.append(_datetime_ns(row[it], "TIMESTAMP"))
            prompt.append(_tokens(row[ip], "ContextTokens"))
            output.append(_tokens(row[io], "GeneratedTokens"))
        except _RowError as exc:
            raise _row_error(origin, line, str(exc)) from None
    if not times:
        raise _no_requests(origin)
    return _sorted_workload(times, prompt, output, name, rebase=True, scale=1e-9)


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


def _generic_time(value: Any, column: str) -> float:
    return _as_float(value, column) if column != "timestamp" else _timestamp_s(value, column)


def _field(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise _RowError(f"the row lacks {key!r} ({GENERIC_HELP})")
    return obj[key]


def _parse_generic(
    keys: Iterable[str], records: Iterable[tuple[int, dict[str, Any]]], origin: str, name: str
) -> Workload:
    """Generic rows (CSV cells or JSON objects as dicts) into a Workload; blank priority = 0."""
    keys = set(keys)
    time_col = _generic_columns(keys, origin)
    has_prio = "priority" in keys
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    prio: list[int] = []
    for line, obj in records:
        try:
            times.append(_generic_time(_field(obj, time_col), time_col))
            prompt.append(_tokens(_field(obj, "prompt_tokens"), "prompt_tokens"))
            output.append(_tokens(_field(obj, "output_tokens"), "output_tokens"))
            if has_prio:
                p = obj.get("priority")
                prio.append(0 if p is None or p == "" else _as_int(p, "priority"))
        except _RowError as exc:
            raise _row_error(origin, line, str(exc)) from None
    if not times:
        raise _no_requests(origin)
    scale = 1e-3 if time_col == "timestamp_ms" else 1.0
    rebase = time_col != "arrival_s"  # arrival_s is already relative; keep any offset it has
    return _sorted_workload(
        times, prompt, output, name, rebase, scale, priority=prio if has_prio else None
    )


def _parse_generic_csv(text: str, origin: str, name: str) -> Workload:
    index, rows = _csv_rows(text, origin)
    records = ((line, {k: row[i].strip() for k, i in index.items()}) for line, row in rows)
    return _parse_generic(index, records, origin, name)


def _parse_generic_jsonl(text: str, origin: str, name: str) -> Workload:
    rows = list(_json_rows(text, origin))
    if not rows:
        raise _no_requests(origin)
    return _parse_generic(rows[0][1], rows, origin, name)


def _parse_mooncake(text: str, origin: str, name: str) -> Workload:
    times: list[int | float] = []
    prompt: list[int] = []
    output: list[int] = []
    hashes: list[list[int]] = []
    for line, obj in _json_rows(text, origin):
        try:
            for key in ("timestamp", "input_length", "output_length", "hash_ids"):
                if key not in obj:
                    raise _RowError(
                        f"the object lacks {key!r} (a Mooncake trace row has timestamp, "
                        "input_length, output_length, hash_ids)"
                    )
            ts = obj["timestamp"]
            times.append(
                ts
                if isinstance(ts, int) and not isinstance(ts, bool)
                else _as_float(ts, "timestamp")
            )
            prompt.append(_tokens(obj["input_length"], "input_length"))
            output.append(_tokens(obj["output_length"], "output_length"))
            ids = obj["hash_ids"]
            if not isinstance(ids, list):
                raise _RowError(f"hash_ids {ids!r} is not a list of integers")
            hashes.append([_as_int(h, "hash_ids entry") for h in ids])
        except _RowError as exc:
            raise _row_error(origin, line, str(exc)) from None
    if not times:
        raise _no_requests(origin)
    return _sorted_workload(
        times,
        prompt,
        output,
        name,
        rebase=True,
        scale=1e-3,
        hashes=hashes,
        block_tokens=MOONCAKE_BLOCK_TOKENS,
    )


def _detect(text: str, origin: str, suffix: str) -> str:
    """Guess the format from the extension and the first non-blank line."""
    _check_nonempty(text, origin)
    first = next(line for line in text.splitlines() if line.strip()).strip()
    is_json = suffix in _JSON_SUFFIXES or (suffix != ".csv" and first.startswith("{"))
    if is_json:
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            obj = {}
        if isinstance(obj, dict) and "input_length" in obj:
            return "mooncake"
        return "generic_jsonl"
    header = {c.strip().lower() for c in next(csv.reader([first]))}
    if {c.lower() for c in AZURE_COLUMNS} <= header:
        return "azure"
    return "generic_csv"


_PARSERS: dict[str, Callable[[str, str, str], Workload]] = {
    "azure": _parse_azure,
    "mooncake": _parse_mooncake,
    "generic_csv": _parse_generic_csv,
    "generic_jsonl": _parse_generic_jsonl,
}


def _parse(text: str, origin: str, name: str, fmt: str, suffix: str) -> Workload:
    if fmt not in FORMATS:
        raise ServesimError(f"Trace format {fmt!r} is unknown; use one of: {', '.join(FORMATS)}.")
    kind = _detect(text, origin, suffix)
    if fmt == "azure":
        kind = "azure"
    elif fmt == "mooncake":
        kind = "mooncake"
    elif fmt == "generic" and kind not in ("generic_csv", "generic_jsonl"):
        kind = "generic_jsonl" if kind == "mooncake" else "generic_csv"
    return _PARSERS[kind](text, origin, name)


# ---------------------------------------------------------------------------------------------
# Public readers


def read_azure_csv(path: str | Path) -> Workload:
    """Azure LLM inference trace 2023 (TIMESTAMP, ContextTokens, GeneratedTokens) as a Workload."""
    return _parse_azure(_read_text(path), str(path), Path(path).stem)


def read_generic(path: str | Path) -> Workload:
    """servesim's own CSV or JSONL: arrival_s | timestamp_ms | timestamp, prompt_tokens,
    output_tokens, optional priority. Rows are sorted stably by time."""
    text, p = _read_text(path), Path(path)
    is_json = p.suffix.lower() in _JSON_SUFFIXES or (
        p.suffix.lower() != ".csv" and text.lstrip().startswith("{")
    )
    parse = _parse_generic_jsonl if is_json else _parse_generic_csv
    return parse(text, str(path), p.stem)


def read_mooncake_jsonl(path: str | Path) -> Workload:
    """Mooncake FAST'25 trace: timestamp (ms), input_length, output_length, hash_ids (512 tok)."""
    return _parse_mooncake(_read_text(path), str(path), Path(path).stem)


def read_trace(path: str | Path, fmt: str = "auto") -> Workload:
    """Read any supported trace; fmt is auto | azure | mooncake | generic."""
    p = Path(path)
    return _parse(_read_text(p), str(path), p.stem, fmt, p.suffix.lower())


def bundled_trace(name: str = "azure_conv") -> Workload:
    """A trace shipped with servesim: azure_conv (20 min of Azure conversation) or mooncake_conv."""
    if name not in BUNDLED_TRACES:
        raise ServesimError(
            f"Unknown bundled trace {name!r}; use one of: {', '.join(BUNDLED_TRACES)}."
        )
    fname = BUNDLED_TRACES[name]
    res = resources.files("servesim").joinpath("data/traces").joinpath(fname)
    text = res.read_text(encoding="utf-8-sig")
    return _parse(text, fname, name, "auto", Path(fname).suffix)


def bundled_or_file(name_or_path: str) -> Workload:
    """A bundled trace by name, otherwise a trace file read with format detection."""
    if name_or_path in BUNDLED_TRACES:
        return bundled_trace(name_or_path)
    return read_trace(name_or_path)
