"""CSV and JSON-lines files read in blocks of whole rows: pyarrow parses a block into typed
columns, and a block it refuses is re-read row by row with Python's csv/json, the reference
reader, so every problem is still named by its line.

A well-formed file is read at columnar speed with memory bounded by the block size beyond the
arrays a caller keeps; a malformed one costs a row-by-row read of one block, not of the file.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from servesim.errors import ServesimError

BLOCK_BYTES = 4 << 20  # rows are handed to pyarrow about this many bytes at a time
MAX_ROW_BYTES = 64 << 20  # a longer line or row gets one sentence instead of unbounded memory
_ARROW_CHUNK_BYTES = 1 << 20  # pyarrow's own (parallel) chunks within a block
_EOL = re.compile(rb"\r\n|\n|\r")


class LineError(Exception):
    """A problem with one line of a file; the caller words the sentence around file and line."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class Source:
    """A file to read and how messages name it: origin as given, kind "trace" or "table"."""

    path: Path
    origin: str
    kind: str


@dataclass(frozen=True)
class Head:
    """The first non-blank line of a file: its text, line number and byte span [start, end)."""

    text: str
    line: int
    start: int
    end: int


@dataclass(frozen=True)
class Block:
    """Whole rows of a file (valid UTF-8): bytes, line number of the first, byte offset."""

    source: Source
    data: bytes
    line: int
    offset: int


def count_lines(data: bytes) -> int:
    """Line ends in data (\\n, \\r\\n or a lone \\r, as Python's universal newlines count them)."""
    if b"\r" not in data:
        return data.count(b"\n")
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _open(src: Source) -> BinaryIO:
    kind = src.kind.capitalize()
    if not src.path.exists():
        raise ServesimError(f"{kind} file {src.origin!r} does not exist; check the path.")
    if not src.path.is_file():
        raise ServesimError(f"{kind} path {src.origin!r} is not a file; give a {src.kind} file.")
    try:
        return src.path.open("rb")
    except OSError as exc:
        raise ServesimError(
            f"{kind} file {src.origin!r} cannot be read ({exc.strerror})."
        ) from None


def _read(src: Source, fh: BinaryIO, size: int) -> bytes:
    try:
        return fh.read(size)
    except OSError as exc:
        kind = src.kind.capitalize()
        raise ServesimError(
            f"{kind} file {src.origin!r} cannot be read ({exc.strerror})."
        ) from None


def _check_utf8(src: Source, data: bytes, line: int) -> None:
    if data.isascii():
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = line + count_lines(data[: exc.start])
        raise ServesimError(
            f"{src.kind.capitalize()} file {src.origin!r} is not UTF-8 text (line {bad}); "
            "save it as UTF-8."
        ) from None


def _too_long(line: int) -> LineError:
    return LineError(line, f"the line is longer than {MAX_ROW_BYTES >> 20} MiB")


def read_head(src: Source, start: int = 0, line: int = 1) -> Head | None:
    """The first line from byte `start` (line number `line`) with more than whitespace, after
    a UTF-8 BOM at the start of the file; None if there is none."""
    with _open(src) as fh:
        fh.seek(start)
        buf = _read(src, fh, max(BLOCK_BYTES, len(codecs.BOM_UTF8)))
        if start == 0 and buf.startswith(b"\x1f\x8b"):
            raise ServesimError(
                f"{src.kind.capitalize()} file {src.origin!r} is gzip-compressed; "
                "decompress it (gunzip) first."
            )
        base = start  # file offset of buf[0]
        pos = len(codecs.BOM_UTF8) if start == 0 and buf.startswith(codecs.BOM_UTF8) else 0
        eof = False
        while True:
            m = _EOL.search(buf, pos)
            if m is None or (m.end() == len(buf) and buf.endswith(b"\r") and not eof):
                if eof:
                    end = len(buf)
                else:  # the line goes on past buf (or a \r may be half of \r\n): read more
                    if len(buf) - pos > MAX_ROW_BYTES:
                        raise _too_long(line)
                    more = _read(src, fh, BLOCK_BYTES)
                    eof = not more
                    buf, base, pos = buf[pos:] + more, base + pos, 0
                    continue
            else:
                end = m.end()
            if pos == end:
                return None
            raw = buf[pos:end]
            _check_utf8(src, raw, line)
            text = raw.decode("utf-8").rstrip("\r\n")
            if text.strip():
                return Head(text, line, base + pos, base + end)
            line, pos = line + 1, end


def _lines_end(buf: bytes) -> int:
    """Index just past the last line end in buf (0 if none); a final \r may be half of \r\n."""
    if b"\n" in buf:
        return buf.rfind(b"\n") + 1
    return buf.rfind(b"\r", 0, len(buf) - 1) + 1


def _csv_rows_end(buf: bytes, line: int) -> int:
    """Index just past the last whole CSV row in buf as Python's csv module reads it, so a cut
    never falls inside a quoted cell, whatever quotes the cells hold (0 if there is none)."""
    if b'"' not in buf:
        return _lines_end(buf)
    lines = buf.splitlines(keepends=True)  # \n, \r\n, \r: as io and csv count lines
    ends = list(itertools.accumulate(map(len, lines)))
    whole = _lines_end(buf)  # rows must end on a line end before this
    exhausted = False

    def feed() -> Iterator[str]:
        nonlocal exhausted
        for raw in lines:
            yield raw.decode("utf-8", "replace")
        exhausted = True  # csv asked for more: the row it returns may be cut short

    reader = csv.reader(feed())
    cut = 0
    while _next_row(reader, line + reader.line_num) is not None and not exhausted:
        end = ends[reader.line_num - 1]
        if end > whole:
            break
        cut = end
    return cut


def blocks(src: Source, start: int, line: int, quoted: bool) -> Iterator[Block]:
    """Blocks of whole rows from byte `start` (line number `line`) to the end of the file.

    quoted: rows are CSV, whose quoted cells may hold line ends; otherwise a row is a line."""
    with _open(src) as fh:
        fh.seek(start)
        buf = _read(src, fh, BLOCK_BYTES)
        while buf:
            ahead = _read(src, fh, BLOCK_BYTES)
            if not ahead:  # the rest of the file is one block: nothing to cut
                cut = len(buf)
            else:
                cut = _csv_rows_end(buf, line) if quoted else _lines_end(buf)
                if cut == 0 and len(buf) > MAX_ROW_BYTES:
                    raise _long_row(line)
            if cut:
                data = buf[:cut]
                _check_utf8(src, data, line)
                yield Block(src, data, line, start)
                line += count_lines(data)
                start += cut
            buf = buf[cut:] + ahead


def reread(src: Source, offset: int, size: int, line: int) -> Block:
    """A block read again from its offset and size (to locate a row found bad later)."""
    with _open(src) as fh:
        fh.seek(offset)
        return Block(src, _read(src, fh, size), line, offset)


# ---- the columnar path ---------------------------------------------------------------------


def _arrow(read: Callable[[int], pa.Table], size: int) -> pa.Table | None:
    """read(block_size), retried with one pyarrow chunk if a row straddles chunks; None if
    pyarrow refuses the data."""
    try:
        return read(_ARROW_CHUNK_BYTES)
    except pa.ArrowException:
        if size < _ARROW_CHUNK_BYTES:
            return None
    try:
        return read(size + 1)
    except pa.ArrowException:
        return None


def csv_columns(
    block: Block, n_columns: int, types: dict[int, pa.DataType]
) -> dict[int, pa.ChunkedArray] | None:
    """Columns (by position) of a CSV block of n_columns-wide rows, typed by pyarrow; None when
    pyarrow refuses the block (a row of another width, a cell of the wrong type).

    Empty cells of non-string columns are nulls; string cells are kept as written."""
    names = [f"c{i}" for i in range(n_columns)]
    convert = pa_csv.ConvertOptions(
        column_types={names[i]: t for i, t in types.items()},
        include_columns=[names[i] for i in types],
        null_values=[""],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    parse = pa_csv.ParseOptions(newlines_in_values=b'"' in block.data)

    def read(block_size: int) -> pa.Table:
        options = pa_csv.ReadOptions(column_names=names, block_size=block_size)
        return pa_csv.read_csv(
            pa.py_buffer(block.data),
            read_options=options,
            parse_options=parse,
            convert_options=convert,
        )

    table = _arrow(read, len(block.data))
    return None if table is None else {i: table.column(names[i]) for i in types}


def json_columns(block: Block, types: dict[str, pa.DataType]) -> dict[str, pa.ChunkedArray] | None:
    """Fields of a JSON-lines block typed by pyarrow (missing = null, others ignored); None when
    pyarrow refuses the block or does not find exactly one object per line."""
    parse = pa_json.ParseOptions(
        explicit_schema=pa.schema(list(types.items())), unexpected_field_behavior="ignore"
    )

    def read(block_size: int) -> pa.Table:
        options = pa_json.ReadOptions(block_size=block_size)
        return pa_json.read_json(
            pa.py_buffer(block.data), read_options=options, parse_options=parse
        )

    table = _arrow(read, len(block.data))
    lines = count_lines(block.data) + (not block.data.endswith((b"\n", b"\r")))
    if table is None or table.num_rows != lines:  # blank lines, two objects on a line
        return None
    return {name: table.column(name) for name in types}


# ---- the row-by-row reference path ---------------------------------------------------------


def _long_row(line: int) -> LineError:
    return LineError(
        line,
        f"the row is longer than {MAX_ROW_BYTES >> 20} MiB (or opens a quote it never closes)",
    )


def _next_row(reader: Any, first_line: int) -> list[str] | None:
    """The next CSV row (which starts on first_line), with cells up to MAX_ROW_BYTES; csv's
    own limit (128 KB) is global state, so it is raised only around this call."""
    limit = csv.field_size_limit(MAX_ROW_BYTES)
    try:
        return next(reader, None)
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise _long_row(first_line) from None
        raise LineError(first_line, f"not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(limit)


def split_row(text: str, line: int) -> list[str]:
    """The cells of one CSV line (a header)."""
    return _next_row(csv.reader([text]), line) or []


def csv_rows(block: Block) -> Iterator[tuple[int, list[str]]]:
    """(line, cells) of each row of a CSV block that has a non-blank cell; the line is the
    row's last (as csv's line_num counts)."""
    reader = csv.reader(io.StringIO(block.data.decode("utf-8"), newline=""))
    while (row := _next_row(reader, block.line + reader.line_num)) is not None:
        if any(cell.strip() for cell in row):
            yield block.line + reader.line_num - 1, row


def json_rows(block: Block) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each non-blank line of a JSON-lines block."""
    lines = io.StringIO(block.data.decode("utf-8"), newline="")
    for line, raw in enumerate(lines, start=block.line):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LineError(line, f"not valid JSON ({exc.msg})") from None
        except ValueError:  # an integer past Python's 4300-digit conversion limit
            raise LineError(line, "not valid JSON (a number has too many digits)") from None
        except RecursionError:
            raise LineError(line, "not valid JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise LineError(line, "is not a JSON object")
        yield line, obj
