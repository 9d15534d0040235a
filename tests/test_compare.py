"""Comparing two runs: relative errors against hand-computed values, tables and the CDF plot."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from servesim.cli import measure as cli_measure
from servesim.errors import ServesimError
from servesim.measure import compare
from servesim.report.plots import cdf_figure, cdf_html, ecdf
from servesim.sim.metrics import add_derived, write_parquet, write_summary


def _cols(ttft: list[float], tpot: float, out: int = 11) -> dict[str, np.ndarray]:
    n = len(ttft)
    arrival = np.arange(n, dtype=float)
    first = arrival + np.array(ttft)
    finish = first + tpot * (out - 1)
    cols = {
        "request_id": np.arange(n),
        "arrival_s": arrival,
        "prompt_tokens": np.full(n, 100),
        "output_tokens": np.full(n, out),
        "scheduled_s": np.full(n, -1.0),
        "first_token_s": first,
        "finish_s": finish,
        "generated_tokens": np.full(n, out),
        "preemptions": np.zeros(n, dtype=np.int64),
        "replica": np.zeros(n, dtype=np.int64),
        "priority": np.zeros(n, dtype=np.int64),
    }
    return add_derived(cols)


def test_relative_errors_are_b_against_a(tmp_path):
    a = compare.Run("a", _cols([0.1, 0.2, 0.3, 0.4, 0.5], 0.02), {})
    b = compare.Run("b", _cols([0.2, 0.4, 0.6, 0.8, 1.0], 0.01), {})
    rows = {r["key"]: r for r in compare.compare(a, b)}
    assert rows["ttft_s.p50"]["a"] == pytest.approx(0.3)
    assert rows["ttft_s.p50"]["rel_err"] == pytest.approx(1.0)  # doubled
    assert rows["ttft_s.mean"]["rel_err"] == pytest.approx(1.0)
    assert rows["tpot_s.p90"]["rel_err"] == pytest.approx(-0.5)  # halved
    # E2E = TTFT + 10 TPOT: request 3 of A takes 0.3 + 0.2 s, of B 0.6 + 0.1 s.
    assert rows["e2e_s.p50"]["a"] == pytest.approx(0.5)
    assert rows["e2e_s.p50"]["rel_err"] == pytest.approx(0.7 / 0.5 - 1)
    assert rows["requests"]["rel_err"] == 0.0
    # No token times and no saved summary: ITL is unknown, not zero.
    assert math.isnan(rows["itl_s.p50"]["a"])
    assert compare.rel_err(0.0, 1.0) != compare.rel_err(0.0, 1.0)  # nan for a zero reference
    path = compare.write_table(list(rows.values()), tmp_path / "c.csv", "a", "b")
    lines = path.read_text().splitlines()
    assert lines[0] == "metric,a,b,rel_err" and "TTFT p50,0.3,0.6,1" in lines


def test_itl_from_token_times_or_saved_summary(tmp_path):
    cols = _cols([0.1, 0.1], 0.02, out=3)
    times = np.empty(2, dtype=object)
    times[0], times[1] = [1.0, 1.01, 1.04], [2.0, 2.02, 2.03]
    cols["token_times_s"] = times
    write_parquet(cols, tmp_path / "m" / "requests.parquet")
    run = compare.load_run(tmp_path / "m")
    assert sorted(np.round(run.itl_gaps_s(), 6)) == [0.01, 0.01, 0.02, 0.03]
    assert run.summary(compare.Slo())["itl_s"]["p50"] == pytest.approx(0.015)
    sim = _cols([0.1], 0.02)
    write_parquet(sim, tmp_path / "s" / "requests.parquet")
    write_summary(
        {"itl_s": {"mean": 0.02, "p50": 0.019, "p90": 0.03, "p99": 0.04}},
        tmp_path / "s" / "summary.json",
    )
    assert compare.load_run(tmp_path / "s").summary(compare.Slo())["itl_s"]["p50"] == 0.019


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ServesimError, match="does not exist"):
        compare.load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServesimError, match=r"no requests\.parquet"):
        compare.load_run(tmp_path / "empty")
    write_parquet({"x": np.arange(3)}, tmp_path / "other.parquet")
    with pytest.raises(ServesimError, match="lacks column"):
        compare.load_run(tmp_path / "other.parquet")


def test_the_cdf_page_draws_one_step_line_per_run_and_panel(tmp_path):
    a = compare.Run("measured", _cols([0.1, 0.2, 0.3], 0.02), {})
    b = compare.Run("simulated", _cols([0.1, 0.25, 0.3], 0.03), {})
    panels = compare.cdf_panels(a, b)
    assert [p[0] for p in panels] == ["TTFT", "TPOT", "E2E"]
    fig = cdf_figure(panels, "t")
    assert [t.name for t in fig.data] == ["measured", "simulated"] * 3
    assert [t.showlegend for t in fig.data] == [True, True, False, False, False, False]
    ttft = fig.data[1]  # simulated TTFTs 0.1, 0.25, 0.3 s: steps of a third, in ms
    assert list(ttft.x) == pytest.approx([100, 250, 300]) and ttft.line.shape == "hv"
    assert list(ttft.y) == pytest.approx([1 / 3, 2 / 3, 1])
    assert fig.layout.xaxis.type == "linear"  # 100–300 ms spans less than a decade
    text = cdf_html(panels, tmp_path / "cdf.html", "t").read_text()
    assert text.count(get_plotlyjs()) == 1 and text.count("Plotly.newPlot(") == 1


def test_a_long_cdf_is_thinned_and_drawn_on_a_log_axis():
    v, p = ecdf(np.geomspace(1e-3, 10.0, 100_000))
    assert 900 < len(v) <= 1000 and v[0] == 1e-3 and v[-1] == 10.0 and p[-1] == 1.0
    assert np.all(np.diff(v) > 0) and np.all(np.diff(p) > 0)
    fig = cdf_figure([("TTFT", {"run": np.geomspace(1e-3, 10.0, 100_000)})])
    assert fig.layout.xaxis.type == "log" and len(fig.data[0].x) == len(v)


def test_cli_compare_writes_table_and_plot(tmp_path):
    write_parquet(_cols([0.1, 0.2], 0.02), tmp_path / "x" / "requests.parquet")
    write_parquet(_cols([0.1, 0.3], 0.02), tmp_path / "y" / "requests.parquet")
    parser = argparse.ArgumentParser()
    cli_measure.add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "cmp"
    x, y = str(tmp_path / "x"), str(tmp_path / "y")
    args = parser.parse_args(["compare", x, y, "--out", str(out)])
    assert cli_measure.COMMANDS["compare"](args) == 0
    assert (out / "comparison.csv").is_file() and (out / "cdf.html").is_file()


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from servesim.cli.main import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_are_named_by_their_folder_and_the_title_says_each_label_once(tmp_path, capsys):
    """`compare measured/requests.parquet sim/requests.parquet` is "measured (A) vs sim (B)";
    two runs of one name become "x (A) vs x (B)", never "x (A) (A)"."""
    for name, ttft in (("measured", [0.1, 0.2]), ("sim", [0.1, 0.3])):
        write_parquet(_cols(ttft, 0.02), tmp_path / name / "requests.parquet")
        write_parquet(_cols(ttft, 0.02), tmp_path / "other" / name / "requests.parquet")
    a, b = tmp_path / "measured" / "requests.parquet", tmp_path / "sim" / "requests.parquet"
    code, out, _ = _cli(["compare", str(a), str(b), "--out", str(tmp_path / "c1")], capsys)
    assert code == 0 and "measured (A) vs sim (B)" in out
    same = [str(tmp_path / "sim"), str(tmp_path / "other" / "sim")]
    code, out, _ = _cli(["compare", *same, "--out", str(tmp_path / "c2")], capsys)
    assert code == 0 and "sim (A) vs sim (B)" in out and "(A) (A)" not in out
    header = (tmp_path / "c2" / "comparison.csv").read_text().splitlines()[0]
    assert "sim (A)" in header and "sim (B)" in header
    # Labels are the user's text, printed as written (brackets are not terminal markup).
    labels = ["--labels", "[red]x", "[/b]"]
    code, out, _ = _cli(["compare", str(a), str(b), *labels, "--out", str(tmp_path / "c3")], capsys)
    assert code == 0 and "[red]x (A) vs [/b] (B)" in out


def test_a_simulated_warm_up_is_left_out_of_the_comparison_as_of_the_summary(tmp_path):
    """`simulate` leaves a closed loop's warm-up requests out of every latency; `compare` read
    the same requests.parquet whole and counted them. The summary now names how many there
    were and the comparison drops them."""
    cols = _cols([5.0, 5.0, 0.1, 0.2, 0.3], 0.02)  # two slow warm-up requests first
    write_parquet(cols, tmp_path / "requests.parquet")
    write_summary({"warmup_requests": 2}, tmp_path / "summary.json")
    run = compare.load_run(tmp_path)
    s = run.summary(compare.Slo(1.0, 0.05))
    assert s["requests"] == 3 and s["ttft_s"]["p50"] == pytest.approx(0.2)
    assert s["ttft_s"]["mean"] == pytest.approx(0.2)


def test_a_file_without_what_the_summary_reads_is_refused_in_a_sentence(tmp_path):
    """A Parquet file with only the six timing columns gave a KeyError traceback from the
    summary; every column it reads is checked first."""
    cols = _cols([0.1, 0.2], 0.02)
    keep = ("arrival_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s")
    write_parquet({k: cols[k] for k in keep}, tmp_path / "thin.parquet")
    with pytest.raises(ServesimError, match="lacks column 'prompt_tokens'"):
        compare.load_run(tmp_path / "thin.parquet")


def test_requests_never_sent_are_not_part_of_the_run():
    """A benchmark stopped by its deadline leaves unsent requests at arrival -1: they made
    the run start at -1 s (duration 2.80 s against 1.80) and counted as misses."""
    from servesim.sim.metrics import Slo, summarize

    cols = _cols([0.1, 0.2, 0.3], 0.02)
    sent = summarize(cols, Slo(1.0, 0.05))
    unsent = {k: np.concatenate([v, v[:2]]) for k, v in cols.items()}
    unsent["arrival_s"][3:] = -1.0
    for k in ("first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s"):
        unsent[k][3:] = -1.0 if k.endswith("token_s") or k == "finish_s" else np.nan
    s = summarize(unsent, Slo(1.0, 0.05))
    assert s["requests"] == 3 and s["duration_s"] == pytest.approx(sent["duration_s"])
    assert s["throughput_req_per_s"] == pytest.approx(sent["throughput_req_per_s"])
    assert s["slo_attainment"] == pytest.approx(sent["slo_attainment"])


def test_a_label_with_a_comma_keeps_the_table_four_columns_wide(tmp_path):
    import csv

    a = compare.Run("a", _cols([0.1, 0.2, 0.3], 0.02), {})
    b = compare.Run("b", _cols([0.2, 0.4, 0.6], 0.01), {})
    rows = compare.compare(a, b)
    path = compare.write_table(rows, tmp_path / "c.csv", "vllm, tp 2", 'h100 "sxm"')
    table = list(csv.reader(path.open()))
    assert table[0] == ["metric", "vllm, tp 2", 'h100 "sxm"', "rel_err"]
    assert {len(r) for r in table} == {4}
