"""Trace readers: the bundled traces' known statistics, exact timestamps, format detection, and
one-sentence errors that name the file and line."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.trace import (
    BUNDLED_TRACES,
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
