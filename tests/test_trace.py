"""Trace readers: the bundled traces' known statistics, exact timestamps, format detection, and
one-sentence errors that name the file and line."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servesim import tables
from servesim.errors import ServesimError
from servesim.sim.traces import (
    BUNDLED_TRACES,
    GENERIC_TIME_COLUMNS,
    bundled_trace,
    read_azure_csv,
    read_generic,
    read_mooncake_jsonl,
    read_trace,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("servesim").joinpath("data/traces", BUNDLED_TRACES[name])))


@pytest.fixture(scope="module")
def azure():
    return bundled_trace("azure_conv")


@pytest.fixture(scope="module")
def mooncake():
    return bundled_trace("mooncake_conv")


# ---- bundled traces: the statistics published in data/SOURCES.md ------------------------------


def test_azure_known_statistics(azure) -> None:
    s = azure.summary()
    assert s["count"] == 5985
    # last - first TIMESTAMP: 18:35:46.4293810 - 18:15:46.6805900, exact to the 100 ns digit
    assert s["duration_s"] == pytest.approx(1199.748791, abs=1e-9)
    assert round(s["mean_rate_per_s"], 2) == 4.99
    assert round(s["interarrival_cv"], 2) == 1.06
    assert round(s["prompt_tokens_mean"]) == 1150
    assert s["prompt_tokens_p50"] == 1042
    assert round(s["prompt_tokens_p90"]) == 2375
    assert s["prompt_tokens_p99"] == 4107 and s["prompt_tokens_max"] == 14050
    assert round(s["output_tokens_mean"]) == 253
    assert s["output_tokens_p50"] == 202 and s["output_tokens_p90"] == 429
    assert s["output_tokens_max"] == 1000
    assert azure.name == "azure_conv"


def test_azure_first_arrivals_exact(azure) -> None:
    assert azure.arrival_s[0] == 0.0
    # 18:15:50.9951690 - 18:15:46.6805900
    assert azure.arrival_s[1] == pytest.approx(4.314579, abs=1e-12)
    assert list(azure.prompt_tokens[:2]) == [374, 396]
    assert list(azure.output_tokens[:2]) == [44, 109]
    assert np.all(np.diff(azure.arrival_s) > 0)  # the source has no equal timestamps


def test_azure_reads_fast() -> None:
    path = bundled_path("azure_conv")
    best = min(_timed(read_azure_csv, path) for _ in range(3))
    assert best < 0.2


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def test_mooncake_known_statistics(mooncake) -> None:
    assert len(mooncake) == 1750
    assert mooncake.prompt_tokens.mean() == pytest.approx(13992.29, abs=0.01)
    assert mooncake.output_tokens.mean() == pytest.approx(354.07, abs=0.01)
    assert mooncake.arrival_s[0] == 0.0 and mooncake.arrival_s[-1] < 600.0
    assert mooncake.prefix_block_tokens == 512
    assert mooncake.prefix_hashes is not None and len(mooncake.prefix_hashes) == 1750
    assert mooncake.prefix_hashes[0] == list(range(14))  # first line of the file
    blocks = np.array([len(h) for h in mooncake.prefix_hashes])
    assert np.array_equal(blocks, -(-mooncake.prompt_tokens // 512))  # one id per 512 tokens


def test_unknown_bundled_trace() -> None:
    with pytest.raises(ServesimError, match="azure_conv, mooncake_conv"):
        bundled_trace("sharegpt")


# ---- Azure format ---------------------------------------------------------------------------


def test_azure_timestamp_parsed_exactly(tmp_path: Path) -> None:
    text = AZURE_HEADER + (
        "2023-11-16 23:59:59.9999999,5,6\n"
        "2023-11-17 00:00:00.0000000,7,8\n"  # across midnight: 100 ns later
        "2023-11-17 00:00:01.0000001,9,10\n"
    )
    w = read_azure_csv(write(tmp_path, "t.csv", text))
    assert w.arrival_s[1] == pytest.approx(1e-7, abs=1e-15)
    assert w.arrival_s[2] == pytest.approx(1.0000002, abs=1e-15)
    assert w.name == "t"


def test_azure_crlf_equals_lf(tmp_path: Path) -> None:
    rows = ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,109"]
    lf = read_azure_csv(write(tmp_path, "lf.csv", AZURE_HEADER + "\n".join(rows) + "\n"))
    crlf_text = (AZURE_HEADER.strip() + "\r\n" + "\r\n".join(rows) + "\r\n").encode()
    (tmp_path / "crlf.csv").write_bytes(crlf_text)
    crlf = read_azure_csv(tmp_path / "crlf.csv")
    assert np.array_equal(lf.arrival_s, crlf.arrival_s)
    assert np.array_equal(lf.output_tokens, crlf.output_tokens)


def test_azure_unsorted_rows_are_sorted(tmp_path: Path) -> None:
    text = AZURE_HEADER + "2023-11-16 18:00:02.0,1,1\n2023-11-16 18:00:00.5,2,2\n"
    w = read_azure_csv(write(tmp_path, "u.csv", text))
    assert list(w.arrival_s) == [0.0, 1.5] and list(w.prompt_tokens) == [2, 1]


@pytest.mark.parametrize(
    "row, problem",
    [
        ("2023-11-16 18:00:01.0,12,abc", "GeneratedTokens 'abc' is not an integer"),
        ("2023-11-16 18:00:01.0,0,5", "ContextTokens is 0 but must be at least 1"),
        ("2023-11-16 18:00:01.0,5,-3", "GeneratedTokens is -3 but must be at least 1"),
        ("2023-11-16 18:00:01.0,5.5,3", "ContextTokens '5.5' is not an integer"),
        ("16/11/2023 18:00,5,3", "TIMESTAMP '16/11/2023 18:00' is not a time"),
        ("2023-02-30 18:00:01.0,5,3", "not a valid calendar date"),
        ("2023-11-16 18:00:01.0,5", "expected 3 comma-separated columns, found 2"),
    ],
)
def test_azure_bad_row_names_file_and_line(tmp_path: Path, row: str, problem: str) -> None:
    text = AZURE_HEADER + "2023-11-16 18:00:00.0,1,1\n" + row + "\n"
    path = write(tmp_path, "x.csv", text)
    with pytest.raises(ServesimError) as info:
        read_azure_csv(path)
    msg = str(info.value)
    assert msg.startswith(f"line 3 of {path}: ")
    assert problem in msg
    assert msg.endswith("; fix or remove the row.") and "\n" not in msg


def test_blank_lines_do_not_shift_line_numbers(tmp_path: Path) -> None:
    text = AZURE_HEADER + "2023-11-16 18:00:00.0,1,1\n\n\n2023-11-16 18:00:01.0,1,xyz\n"
    with pytest.raises(ServesimError, match=r"^line 5 of .*GeneratedTokens 'xyz'"):
        read_azure_csv(write(tmp_path, "x.csv", text))


def test_azure_missing_columns_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", "TIMESTAMP,Tokens\n2023-11-16 18:00:00.0,1\n")
    with pytest.raises(ServesimError) as info:
        read_azure_csv(path)
    msg = str(info.value)
    assert "lacks column(s) ContextTokens, GeneratedTokens" in msg
    assert "TIMESTAMP, ContextTokens, GeneratedTokens" in msg and str(path) in msg


@pytest.mark.parametrize("text, pattern", [("", "is empty"), ("\n \n", "is empty")])
def test_empty_file(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, "e.csv", text)
    for reader in (read_azure_csv, read_generic, read_trace, read_mooncake_jsonl):
        with pytest.raises(ServesimError, match=pattern):
            reader(path)


def test_header_only(tmp_path: Path) -> None:
    with pytest.raises(ServesimError, match="has no requests"):
        read_azure_csv(write(tmp_path, "h.csv", AZURE_HEADER))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ServesimError, match="does not exist; check the path"):
        read_trace(tmp_path / "nope.csv")


# ---- generic CSV / JSONL --------------------------------------------------------------------


def test_generic_csv_sorted_stably_with_priority(tmp_path: Path) -> None:
    text = (
        "arrival_s,prompt_tokens,output_tokens,priority\n"
        "2.0,30,3,1\n"
        "0.5,10,1,0\n"
        "2.0,31,4,2\n"  # same time as the first row: keeps file order
        "1.0,20,2,\n"  # blank priority = 0
    )
    w = read_generic(write(tmp_path, "g.csv", text))
    assert list(w.arrival_s) == [0.5, 1.0, 2.0, 2.0]  # arrival_s is kept as given
    assert list(w.prompt_tokens) == [10, 20, 30, 31]
    assert list(w.priority) == [0, 0, 1, 2]


def test_generic_timestamp_units(tmp_path: Path) -> None:
    ms = read_generic(
        write(
            tmp_path,
            "a.csv",
            "timestamp_ms,prompt_tokens,output_tokens\n1500,1,1\n1000,2,2\n4000,3,3\n",
        )
    )
    assert list(ms.arrival_s) == pytest.approx([0.0, 0.5, 3.0])
    secs = read_generic(
        write(
            tmp_path,
            "b.csv",
            "timestamp,prompt_tokens,output_tokens\n1700000000.25,1,1\n1700000001.0,2,2\n",
        )
    )
    assert list(secs.arrival_s) == pytest.approx([0.0, 0.75])
    dates = read_generic(
        write(
            tmp_path,
            "c.csv",
            "timestamp,prompt_tokens,output_tokens\n"
            "2024-01-01 00:00:00.5,1,1\n2024-01-01 00:01:00,2,2\n",
        )
    )
    assert list(dates.arrival_s) == pytest.approx([0.0, 59.5])


def test_generic_jsonl(tmp_path: Path) -> None:
    rows = [
        {"arrival_s": 1.0, "prompt_tokens": 100, "output_tokens": 10},
        {"arrival_s": 0.0, "prompt_tokens": 50, "output_tokens": 5},
    ]
    path = write(tmp_path, "g.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    for w in (read_generic(path), read_trace(path)):
        assert list(w.arrival_s) == [0.0, 1.0] and list(w.prompt_tokens) == [50, 100]
        assert w.priority is None and w.prefix_hashes is None


def test_a_negative_arrival_time_is_refused_with_its_line(tmp_path: Path) -> None:
    """The run starts at 0, so a request at -1 s would wait unseen and report a TTFT it never
    had (1.008 s for a 100-token prompt on an H100, before); an absolute timestamp column is
    measured from its earliest row instead and may hold any values."""
    path = write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens\n0,100,10\n-1,100,10\n")
    with pytest.raises(ServesimError, match=r"^line 3 of .*g\.csv: arrival_s -1\.0 is negative"):
        read_trace(path)
    stamps = write(tmp_path, "t.csv", "timestamp,prompt_tokens,output_tokens\n-3,10,1\n-1,10,1\n")
    assert list(read_trace(stamps).arrival_s) == [0.0, 2.0]


def test_generic_missing_columns_listed(tmp_path: Path) -> None:
    path = write(tmp_path, "g.csv", "time,prompt_tokens\n1,2\n")
    with pytest.raises(ServesimError) as info:
        read_generic(path)
    msg = str(info.value)
    assert "lacks column(s) arrival_s, output_tokens" in msg
    assert "timestamp_ms" in msg and "priority" in msg


def test_generic_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    good = json.dumps({"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1})
    bad_json = write(tmp_path, "a.jsonl", good + "\n{not json\n")
    with pytest.raises(ServesimError, match=r"^line 2 of .*a\.jsonl: not valid JSON"):
        read_generic(bad_json)
    missing = write(tmp_path, "b.jsonl", good + "\n\n" + json.dumps({"arrival_s": 1}) + "\n")
    with pytest.raises(
        ServesimError, match=r"^line 3 of .*b\.jsonl: the row lacks 'prompt_tokens'"
    ):
        read_generic(missing)
    zero = write(
        tmp_path, "c.jsonl", good + "\n" + good.replace('"output_tokens": 1', '"output_tokens": 0')
    )
    with pytest.raises(ServesimError, match=r"^line 2 of .*output_tokens is 0"):
        read_generic(zero)


# ---- Mooncake format and auto-detection -----------------------------------------------------


def test_mooncake_small_file(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 2500, "input_length": 600, "output_length": 7, "hash_ids": [0, 1]},
        {"timestamp": 1000, "input_length": 100, "output_length": 3, "hash_ids": [0]},
    ]
    path = write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows))
    w = read_mooncake_jsonl(path)
    assert list(w.arrival_s) == [0.0, 1.5]
    assert w.prefix_hashes == [[0], [0, 1]] and w.prefix_block_tokens == 512
    bad = write(tmp_path, "bad.jsonl", json.dumps({**rows[0], "hash_ids": "0,1"}))
    with pytest.raises(ServesimError, match=r"line 1 of .*hash_ids '0,1' is not a list"):
        read_mooncake_jsonl(bad)
    missing = write(tmp_path, "miss.jsonl", json.dumps({"timestamp": 1, "input_length": 5}))
    with pytest.raises(ServesimError, match=r"line 1 of .*lacks 'output_length'"):
        read_mooncake_jsonl(missing)


def test_read_trace_detects_formats(tmp_path: Path, azure, mooncake) -> None:
    a = read_trace(bundled_path("azure_conv"))
    assert np.array_equal(a.arrival_s, azure.arrival_s)
    m = read_trace(bundled_path("mooncake_conv"))
    assert m.prefix_hashes == mooncake.prefix_hashes
    # content sniffing when the extension says nothing
    p = write(tmp_path, "trace.txt", AZURE_HEADER + "2023-11-16 18:00:00.0,4,5\n")
    assert list(read_trace(p).prompt_tokens) == [4]
    g = write(tmp_path, "trace.log", '{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 4}\n')
    assert list(read_trace(g).output_tokens) == [4]


def test_read_trace_explicit_format(tmp_path: Path) -> None:
    path = write(tmp_path, "x.csv", AZURE_HEADER + "2023-11-16 18:00:00.0,4,5\n")
    with pytest.raises(ServesimError, match="lacks column"):
        read_trace(path, fmt="generic")
    with pytest.raises(ServesimError, match="format 'parquet' is unknown"):
        read_trace(path, fmt="parquet")


# ---- the columnar reader gives the row reader's numbers ----------------------------------------
# Blocks are parsed by pyarrow; a block it refuses is re-read row by row (the reference rules).
# Forcing every block through the row reader must change nothing, and both must give the bytes
# the bundled traces gave before pyarrow read them.

# sha256 (first 16 hex digits) of each array as the row-by-row reader of commit 3fa10ad gave it.
BUNDLED_DIGESTS = {
    "azure_conv": {
        "arrival_s": "7e98606f8f1c915f",
        "prompt_tokens": "cc8d6207c13c05be",
        "output_tokens": "80111300d953422a",
    },
    "mooncake_conv": {
        "arrival_s": "9c05dffc1a7e2574",
        "prompt_tokens": "99d994e268580419",
        "output_tokens": "0c5575d0c3a3df68",
        "prefix_hashes": "fea57ecb527d16ef",
    },
}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _digests(w) -> dict[str, str]:
    out = {
        k: _digest(getattr(w, k).tobytes()) for k in ("arrival_s", "prompt_tokens", "output_tokens")
    }
    if w.prefix_hashes is not None:
        out["prefix_hashes"] = _digest(json.dumps(w.prefix_hashes).encode())
    return out


def rows_only(fn, *args):
    """fn(*args) with pyarrow refusing every block, so the row reader reads the whole file."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tables, "csv_columns", lambda *a: None)
        mp.setattr(tables, "json_columns", lambda *a: None)
        return fn(*args)


def outcome(fn, *args):
    """A Workload's arrays, or the error message: what two readers must agree on."""
    try:
        w = fn(*args)
    except ServesimError as exc:
        return str(exc)
    prio = None if w.priority is None else w.priority.tobytes()
    arrays = (w.arrival_s, w.prompt_tokens, w.output_tokens)
    return [(a.dtype.str, a.tobytes()) for a in arrays], prio, w.prefix_hashes, w.name


@pytest.mark.parametrize("name", list(BUNDLED_TRACES))
def test_bundled_traces_are_byte_identical_to_the_row_reader(name: str) -> None:
    w = bundled_trace(name)
    assert _digests(w) == BUNDLED_DIGESTS[name]
    assert w.priority is None and w.prefix_block_tokens == (512 if "mooncake" in name else 0)
    assert _digests(rows_only(bundled_trace, name)) == BUNDLED_DIGESTS[name]
    assert _digests(read_trace(bundled_path(name))) == BUNDLED_DIGESTS[name]


def _note_trace(n: int) -> tuple[str, list[float], list[int], list[int]]:
    """A generic CSV whose notes hold commas, quotes and line ends, with blank lines, a BOM and
    CRLF ends: everything that can move a block boundary or a line number."""
    header = "arrival_s,prompt_tokens,output_tokens,priority,note"
    notes = ['"a,b"', '"two\r\nlines"', '"say ""hi"""', "plain", "", '"x\ny\nz"']
    lines, arrival, prompt, prio = [header], [], [], []
    for i in range(n):
        arrival.append(i * 0.25)
        prompt.append(i + 1)
        prio.append(0 if i % 3 == 0 else i)
        lines.append(f"{i * 0.25},{i + 1},{2 * i + 1},{'' if i % 3 == 0 else i},{notes[i % 6]}")
        if i % 7 == 0:
            lines.append("")
    return "\ufeff" + "\r\n".join(lines) + "\r\n\r\n", arrival, prompt, prio


@pytest.mark.parametrize("block_bytes", [1, 50, 333, 4 << 20])
def test_blocks_of_any_size_read_the_same_numbers(
    tmp_path: Path, monkeypatch, block_bytes: int
) -> None:
    text, arrival, prompt, prio = _note_trace(300)
    path = write(tmp_path, "notes.csv", text)
    monkeypatch.setattr(tables, "BLOCK_BYTES", block_bytes)
    w = read_generic(path)
    assert list(w.arrival_s) == arrival and list(w.prompt_tokens) == prompt
    assert list(w.output_tokens) == [2 * p - 1 for p in prompt] and list(w.priority) == prio
    assert outcome(rows_only, read_generic, path) == outcome(read_generic, path)


def test_bad_row_in_a_late_block_is_named_by_its_line(tmp_path: Path, monkeypatch) -> None:
    text, *_ = _note_trace(300)
    lines = text.split("\r\n")
    bad = next(i for i, s in enumerate(lines) if s.startswith("50.0,"))  # request 200
    lines[bad] = lines[bad].replace("50.0,201,", "50.0,2x1,")
    # the notes before it span 2 or 3 lines each: count what a text editor counts
    line = "\r\n".join(lines[: bad + 1]).count("\n") + 1
    path = write(tmp_path, "late.csv", "\r\n".join(lines))
    monkeypatch.setattr(tables, "BLOCK_BYTES", 256)
    with pytest.raises(ServesimError, match=rf"^line {line} of .*prompt_tokens '2x1' is not an"):
        read_generic(path)


# ---- token counts, times and priorities out of range ------------------------------------------

GENERIC_HEADER = "arrival_s,prompt_tokens,output_tokens\n"


@pytest.mark.parametrize(
    "cell, problem",
    [
        ("1e23", "prompt_tokens '1e23' is not an integer"),
        ("1.5", "prompt_tokens '1.5' is not an integer"),
        ("-3", "prompt_tokens is -3 but must be at least 1 token"),
        ("99999999999999999999999", "prompt_tokens is 99999999999999999999999 but must be at most"),
        ("1000000001", "prompt_tokens is 1000000001 but must be at most 1,000,000,000 tokens"),
        ("nan", "prompt_tokens 'nan' is not an integer"),
        ("inf", "prompt_tokens 'inf' is not an integer"),
        ("0x10", "prompt_tokens '0x10' is not an integer"),  # pyarrow alone would read 16
        ("", "prompt_tokens '' is not an integer"),
    ],
)
def test_generic_csv_token_counts(tmp_path: Path, cell: str, problem: str) -> None:
    path = write(tmp_path, "t.csv", GENERIC_HEADER + "0,5,5\n\n1," + cell + ",5\n")
    with pytest.raises(ServesimError) as info:
        read_generic(path)
    msg = str(info.value)
    assert msg.startswith(f"line 4 of {path}: ") and problem in msg
    assert msg.endswith("; fix or remove the row.") and "\n" not in msg


@pytest.mark.parametrize(
    "value, problem",
    [
        ("1e23", "input_length is 1e+23 but must be at most 1,000,000,000 tokens"),
        ("1.5", "input_length 1.5 is not an integer"),
        ("-3", "input_length is -3 but must be at least 1 token"),
        ("99999999999999999999999", "input_length is 99999999999999999999999 but must be at"),
        ("NaN", "input_length nan is not an integer"),
        ("Infinity", "input_length inf is not an integer"),
        ("true", "input_length True is not an integer"),
        ("9" * 5000, "not valid JSON (a number has too many digits)"),
    ],
)
def test_mooncake_token_counts(tmp_path: Path, value: str, problem: str) -> None:
    good = '{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": [0]}'
    bad = good.replace('"input_length": 5', f'"input_length": {value}')
    path = write(tmp_path, "m.jsonl", good + "\n" + bad + "\n")
    with pytest.raises(ServesimError) as info:
        read_mooncake_jsonl(path)
    msg = str(info.value)
    assert msg.startswith(f"line 2 of {path}: ") and problem in msg and len(msg) < 200


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("output_tokens", "1e23", "output_tokens is 1e+23 but must be at most"),
        ("output_tokens", "5.0", None),  # a whole float is a whole number, as before
        ("priority", "1e30", "priority 1e+30 does not fit in a 64-bit integer"),
        ("priority", "null", None),  # blank priority = 0
        ("arrival_s", '"soon"', "arrival_s 'soon' is not a number"),
    ],
)
def test_generic_jsonl_values(tmp_path: Path, field: str, value: str, problem: str | None) -> None:
    row = {"arrival_s": 1, "prompt_tokens": 2, "output_tokens": 3, "priority": 4}
    bad = json.dumps(row).replace(f'"{field}": {row[field]}', f'"{field}": {value}')
    path = write(tmp_path, "g.jsonl", json.dumps(row) + "\n" + bad + "\n")
    if problem is None:
        w = read_generic(path)
        assert list(w.output_tokens) == [3, 5 if field == "output_tokens" else 3]
        assert list(w.priority) == [4, 0 if field == "priority" else 4]
        return
    with pytest.raises(ServesimError, match=rf"^line 2 of .*: {re.escape(problem)}"):
        read_generic(path)


def test_priority_and_hash_ids_must_fit_64_bits(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.csv",
        "arrival_s,prompt_tokens,output_tokens,priority\n0,1,1,\n1,1,1,99999999999999999999\n",
    )
    with pytest.raises(ServesimError, match=r"^line 3 of .*priority '99999999999999999999' does"):
        read_generic(path)
    row = '{"timestamp": 0, "input_length": 5, "output_length": 5, "hash_ids": [1, 1e30]}'
    with pytest.raises(ServesimError, match=r"^line 1 of .*hash_ids entry 1e\+30 does not fit"):
        read_mooncake_jsonl(write(tmp_path, "m.jsonl", row))


@pytest.mark.parametrize(
    "ids, problem",
    [
        ("[1, null]", "hash_ids entry None is not an integer"),
        ("null", "hash_ids None is not a list of integers"),
        ('[1, "2"]', None),  # a number as text is a number, as before
    ],
)
def test_mooncake_hash_ids(tmp_path: Path, ids: str, problem: str | None) -> None:
    good = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}'
    path = write(tmp_path, "m.jsonl", good + "\n" + good.replace("[0, 1]", ids) + "\n")
    if problem is None:
        assert read_mooncake_jsonl(path).prefix_hashes == [[0, 1], [1, 2]]
        return
    with pytest.raises(ServesimError, match=rf"^line 2 of .*{re.escape(problem)}"):
        read_mooncake_jsonl(path)


def test_times_too_far_apart_name_the_line(tmp_path: Path) -> None:
    ms = write(
        tmp_path, "ms.csv", "timestamp_ms,prompt_tokens,output_tokens\n-1e308,1,1\n1e308,1,1\n"
    )
    with pytest.raises(ServesimError, match=r"^line 3 of .*timestamp_ms 1e\+308 is too far"):
        read_generic(ms)
    # nanosecond times cover 292 years from the earliest
    span = AZURE_HEADER + "1700-01-01 00:00:00,1,1\n2100-01-01 00:00:00,1,1\n"
    with pytest.raises(ServesimError, match=r"^line 3 of .*TIMESTAMP 2100-01-01T00:00:00.000"):
        read_azure_csv(write(tmp_path, "span.csv", span))
    late = AZURE_HEADER + "2300-01-01 00:00:00,1,1\n"
    with pytest.raises(ServesimError, match=r"^line 2 of .*outside 1677-09-21 to 2262-04-11"):
        read_azure_csv(write(tmp_path, "late.csv", late))


# ---- huge fields, encodings and file shapes ---------------------------------------------------


def test_huge_cell_in_an_unused_column_is_read(tmp_path: Path) -> None:
    note = "x" * 300_000  # Python's csv stops at 128 KB by default
    text = "arrival_s,prompt_tokens,output_tokens,note\n0,3,4," + note + '\n1,5,6,"' + note + '"\n'
    w = read_generic(write(tmp_path, "big.csv", text))
    assert list(w.prompt_tokens) == [3, 5] and list(w.output_tokens) == [4, 6]


def test_huge_token_cell_gets_a_short_sentence(tmp_path: Path) -> None:
    path = write(tmp_path, "big.csv", AZURE_HEADER + "2023-11-16 18:00:00.0,1," + "9" * 300_000)
    with pytest.raises(ServesimError) as info:
        read_azure_csv(path)
    msg = str(info.value)
    assert msg.startswith(f"line 2 of {path}: GeneratedTokens '9999") and len(msg) < 200


def test_line_longer_than_the_limit_gets_a_sentence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tables, "BLOCK_BYTES", 1024)
    monkeypatch.setattr(tables, "MAX_ROW_BYTES", 4096)
    rows = ["0,1,1", "1,2,2," + "x" * 20_000] + [f"{i},1,1" for i in range(2, 2000)]
    path = write(tmp_path, "long.csv", GENERIC_HEADER + "\n".join(rows) + "\n")
    with pytest.raises(ServesimError, match=r"^line 3 of .*: the row is longer than"):
        read_generic(path)
    unclosed = ["0,1,1", '1,2,"2'] + [f"{i},1,1" for i in range(2, 2000)]
    path = write(tmp_path, "quote.csv", GENERIC_HEADER + "\n".join(unclosed) + "\n")
    with pytest.raises(ServesimError, match=r"^line 3 of .*opens a quote it never closes"):
        read_generic(path)
    head = write(tmp_path, "head.csv", "arrival_s" + "," * 10_000 + "\n0,1,1\n")
    with pytest.raises(ServesimError, match=r"^line 1 of .*: the line is longer than"):
        read_generic(head)


def test_non_utf8_file_gets_one_sentence_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes((AZURE_HEADER + "2023-11-16 18:00:00.0,1,1\n").encode() + b"\xe9,1,1\n")
    msg = f"Trace file '{path}' is not UTF-8 text (line 3); save it as UTF-8."
    with pytest.raises(ServesimError, match=f"^{re.escape(msg)}$"):
        read_trace(path)
    # pyarrow does not look at fields it skips; the reader still refuses the file
    jsonl = tmp_path / "latin.jsonl"
    jsonl.write_bytes(b'{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1, "who": "\xe9"}\n')
    with pytest.raises(ServesimError, match=r"is not UTF-8 text \(line 1\)"):
        read_trace(jsonl)
    packed = tmp_path / "trace.csv.gz"
    packed.write_bytes(gzip.compress(AZURE_HEADER.encode()))
    with pytest.raises(ServesimError, match=r"is gzip-compressed; decompress it \(gunzip\) first"):
        read_trace(packed)
    header = tmp_path / "header.csv"
    header.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\xff\n")
    with pytest.raises(ServesimError, match=r"is not UTF-8 text \(line 1\)"):
        read_trace(header)


def test_shapes_read_as_plain_lf(tmp_path: Path) -> None:
    """BOM, CRLF, quoted cells, blank and whitespace-only lines, rows of empty cells, extra
    columns and a row with an extra cell read as the plain file does."""
    plain = "arrival_s,prompt_tokens,output_tokens\n0.5,3,4\n1.5,5,6\n"
    shaped = (
        "\ufeff\r\n,,\r\n"  # a blank line and a row of empty cells above the header
        "arrival_s,prompt_tokens,output_tokens,model\r\n"
        '"0.5"," 3 ",4,llama\r\n'
        "  \r\n"
        ",,,\r\n"
        "1.5,5,6,mistral,extra cell\r\n"
        "\r\n\r\n"
    )
    a = outcome(read_generic, write(tmp_path, "plain.csv", plain))
    b = outcome(read_generic, write(tmp_path, "shaped.csv", shaped))
    assert a[:3] == b[:3]
    c = write(
        tmp_path,
        "shaped.jsonl",
        '\ufeff{"arrival_s": 0.5, "prompt_tokens": 3, "output_tokens": 4}\r\n  \r\n',
    )
    assert list(read_trace(c).prompt_tokens) == [3]


def test_json_lines_that_are_not_one_object(tmp_path: Path) -> None:
    one = '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}'
    with pytest.raises(ServesimError, match=r"^line 2 of .*not valid JSON \(Extra data\)"):
        read_generic(write(tmp_path, "two.jsonl", one + "\n" + one + " " + one + "\n"))
    # pyarrow reads a field nested 100,000 deep (and skips it); Python's json cannot, so when
    # a bad row elsewhere sends the block to the row reader, that line gets a sentence
    deep = one[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert len(read_generic(write(tmp_path, "deep.jsonl", one + "\n" + deep + "\n"))) == 2
    bad = one.replace('"output_tokens": 1', '"output_tokens": 0')
    with pytest.raises(ServesimError, match=r"^line 2 of .*not valid JSON \(nested too deeply\)"):
        read_generic(write(tmp_path, "deep.jsonl", one + "\n" + deep + "\n" + bad + "\n"))
    with pytest.raises(ServesimError, match=r"^line 2 of .*is not a JSON object"):
        read_generic(write(tmp_path, "list.jsonl", one + "\n[1, 2]\n"))


def test_only_empty_cells_is_no_requests(tmp_path: Path) -> None:
    with pytest.raises(ServesimError, match="has no requests"):
        read_generic(write(tmp_path, "commas.csv", ",,\n,,\n"))


# ---- property: the columnar path never changes a number or a message --------------------------

_CELLS = st.sampled_from(
    [
        "1",
        "7",
        "42",
        " 7 ",
        '"9"',
        "0",
        "-3",
        "abc",
        "",
        "1.5",
        "1e3",
        "+5",
        "0x10",
        "007",
        "1_000",
        "99999999999999999999",
        "1000000001",
        "nan",
        "inf",
        '"a,b"',
        '"x\ny"',
    ]
)
_TIMES = st.sampled_from(
    [
        "0",
        "0.5",
        " 2.5 ",
        "1e3",
        "-1",
        "nan",
        "inf",
        "",
        "x",
        "1e308",
        "-1e308",
        "2023-11-16 18:15:46.6805900",
        "2023-02-30 00:00:00",
        "1700000000.25",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    time_col=st.sampled_from(GENERIC_TIME_COLUMNS),
    rows=st.lists(st.tuples(_TIMES, _CELLS, _CELLS, _CELLS), max_size=12),
    extra=st.sampled_from(["", "\n", "\n  \n", "\n,,,\n", "\r\n"]),
    block_bytes=st.sampled_from([7, 64, 4 << 20]),
)
def test_columnar_and_row_readers_agree(time_col, rows, extra, block_bytes) -> None:
    text = f"{time_col},prompt_tokens,output_tokens,priority\n"
    text += "\n".join(",".join(r) for r in rows) + extra
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(tables, "BLOCK_BYTES", block_bytes)
        path = write(Path(tmp), "t.csv", text)
        assert outcome(read_generic, path) == outcome(rows_only, read_generic, path)
