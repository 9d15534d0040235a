"""The HTML report: self-contained, its plots carry every candidate, Chromium renders it."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from servesim.planner.candidates import PlanSpec, SearchSpace, WorkloadSpec
from servesim.planner.plan import PlanResult, run_plan
from servesim.planner.ranking import pareto_front
from servesim.report.page import (
    closest_miss_sentence,
    fmt,
    pareto_figure,
    report_html,
    terminal_table,
    write_report,
)
from servesim.report.plots import log_axis
from servesim.sim.metrics import Slo

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
MODEL = "meta-llama/Llama-3.1-8B"
PARETO_AXES = {
    "pareto:dollar_per_req_per_s:ttft_p90_s": "min",
    "pareto:dollar_per_req_per_s:tpot_p90_s": "min",
    "pareto:dollar_per_req_per_s:joules_per_token": "min",
    "pareto:dollar_per_req_per_s:goodput_per_gpu": "max",
}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> PlanResult:
    """8 simulated candidates (2 GPUs × TP 1/2 × 2 batchings) and 4 pruned (TP 3), sized."""
    spec = PlanSpec(MODEL, WorkloadSpec("azure_conv", 150), Slo(1.0, 0.06), 0.9, rate_per_s=10)
    space = SearchSpace(
        devices=("h100_sxm", "l40s"),
        tp=(1, 2, 3),
        engines=("vllm",),
        batching=((64, 2048), (256, 8192)),
    )
    return run_plan(spec, space, tmp_path_factory.mktemp("plan"), workers=1, quiet=True)


@pytest.fixture(scope="module")
def missed(tmp_path_factory: pytest.TempPathFactory) -> PlanResult:
    """SLOs no candidate can meet."""
    spec = PlanSpec(MODEL, WorkloadSpec("azure_conv", 100), Slo(0.05, 0.005), 0.9)
    space = SearchSpace(devices=("l40s", "l4"), tp=(1,), engines=("vllm",), batching=((256, 8192),))
    return run_plan(spec, space, tmp_path_factory.mktemp("miss"), workers=1, quiet=True)


@pytest.fixture(scope="module")
def disagg(tmp_path_factory: pytest.TempPathFactory) -> PlanResult:
    """Colocated and disaggregated (1 prefill : 2 decode) candidates of one GPU type."""
    spec = PlanSpec(MODEL, WorkloadSpec("azure_conv", 100), Slo(1.0, 0.06), 0.9)
    space = SearchSpace(
        devices=("h100_sxm",),
        tp=(1, 2),
        engines=("vllm",),
        batching=((1024, 16384),),
        pd_ratios=((1, 2),),
    )
    return run_plan(spec, space, tmp_path_factory.mktemp("disagg"), workers=1, quiet=True)


def figures_of(html: str) -> dict[str, dict[str, Any]]:
    """Every figure card: its data-points and the traces and layout its Plotly.newPlot draws."""
    found = {}
    dec = json.JSONDecoder()
    for m in re.finditer(r'<figure class="card" data-kind="([^"]+)" data-points="(\d+)">', html):
        end = html.index("</figure>", m.end())
        fig: dict[str, Any] = {"points": int(m.group(2)), "data": [], "layout": {}}
        call = html.find("Plotly.newPlot(", m.end(), end)
        if call >= 0:
            i = html.index(",", call) + 1  # after the div id
            i += len(html[i:]) - len(html[i:].lstrip())
            fig["data"], j = dec.raw_decode(html, i)
            j = html.index(",", j) + 1
            j += len(html[j:]) - len(html[j:].lstrip())
            fig["layout"], _ = dec.raw_decode(html, j)
        found[m.group(1)] = fig
    return found


def trace(fig: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in fig["data"] if t["name"] == name)


def data_traces(fig: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in fig["data"] if t.get("meta") == "data"]


def test_report_is_self_contained_offline_and_inlines_plotly_once(
    plan: PlanResult, tmp_path: Path
) -> None:
    text = write_report(plan, tmp_path / "r.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count(get_plotlyjs()) == 1, "plotly.js inlined exactly once"
    figures = figures_of(text)
    assert text.count("Plotly.newPlot(") == len(figures) == 9
    rest = text.replace(get_plotlyjs(), "")  # the library mentions map-tile servers it never calls
    assert not re.search(r"https?:|//[a-z]", rest, re.I), "no network references"
    for banned in ("<link", "<img", "<iframe", "@import", "url(", "src=", "href="):
        assert banned not in rest.lower(), banned
    # no figure offers Plotly's "Share chart" button, which uploads the data to Plotly Cloud
    assert rest.count('"modeBarButtonsToRemove": ["sendChartToCloud"]') == len(figures)


def test_the_same_plan_writes_a_byte_identical_report(plan: PlanResult, tmp_path: Path) -> None:
    a = write_report(plan, tmp_path / "a.html").read_bytes()
    b = write_report(plan, tmp_path / "b.html").read_bytes()
    assert a == b


def test_axes_go_log_only_when_values_span_more_than_a_decade() -> None:
    assert log_axis([1.0, 10.5]) and log_axis([0.02, 0.5, 3.0])
    assert not log_axis([1.0, 10.0]) and not log_axis([0.0, 100.0]) and not log_axis([])
    assert not log_axis([-1.0, 50.0]) and log_axis([1.0, math.nan, 20.0])


def _dominates(a: tuple[float, float], b: tuple[float, float], sense: str) -> bool:
    """a is no worse than b in cost (min) and in y (min or max), and better in one."""
    ya, yb = (a[1], b[1]) if sense == "min" else (-a[1], -b[1])
    return a[0] <= b[0] and ya <= yb and (a[0] < b[0] or ya < yb)


def check_pareto(fig: dict[str, Any], rows: list[dict[str, Any]], y: str, sense: str) -> None:
    """Every feasible row is one point; the front's points are exactly the non-dominated ones."""
    dominated, front = trace(fig, "dominated"), trace(fig, "Pareto front")
    pts = list(zip(dominated["x"] + front["x"], dominated["y"] + front["y"], strict=True))
    assert fig["points"] == len(pts) == len(rows)
    f = list(zip(front["x"], front["y"], strict=True))
    assert all(not any(_dominates(q, p, sense) for q in pts) for p in f)
    d = zip(dominated["x"], dominated["y"], strict=True)
    assert all(any(_dominates(q, p, sense) for q in f) for p in d)
    assert front["x"] == sorted(front["x"])  # the front's step line runs left to right
    xs = [x for x, _ in pts]
    assert fig["layout"]["xaxis"]["type"] == ("log" if max(xs) / min(xs) > 10 else "linear")


def test_pareto_plots_draw_every_feasible_candidate_and_the_front_is_non_dominated(
    plan: PlanResult,
) -> None:
    figs = figures_of(report_html(plan))
    assert len(plan.feasible) == 8
    for kind, sense in PARETO_AXES.items():
        y = kind.split(":")[2]
        fig = figs[kind]
        check_pareto(fig, plan.feasible, y, sense)
        front = pareto_front(plan.rows, "dollar_per_req_per_s", y, "min", sense)
        assert len(trace(fig, "Pareto front")["x"]) == len(front) >= 1
        ring = trace(fig, "winner")
        assert ring["x"] == [plan.winner["dollar_per_req_per_s"]]  # type: ignore[index]
        w = plan.winner
        assert w is not None and w["label"] in ring["hovertext"][0]
        assert f"${fmt(w['price_per_hour'])}/h per replica" in ring["hovertext"][0]
        assert f"goodput {fmt(w['capacity_req_per_s'])} req/s" in ring["hovertext"][0]
    assert sum(len(trace(figs[k], "dominated")["x"]) for k in PARETO_AXES) > 0


def test_a_pareto_front_over_thousands_of_candidates(tmp_path: Path) -> None:
    """3,000 candidates spanning decades: all drawn, log axes, the front non-dominated."""
    rng = np.random.default_rng(7)
    cost = 10 ** rng.uniform(0, 3, 3000)
    ttft = 10 ** rng.uniform(-2, 1, 3000)
    rows = [
        {"key": str(i), "label": f"cand {i}", "status": "ok", "rank": i + 1,
         "dollar_per_req_per_s": float(c), "ttft_p90_s": float(t), "price_per_hour": 1.0,
         "capacity_req_per_s": 1.0, "goodput_per_gpu": 1.0}
        for i, (c, t) in enumerate(zip(cost, ttft, strict=True))
    ]  # fmt: skip
    rows.append({**rows[0], "key": "x", "status": "infeasible"})  # not drawn
    fig = pareto_figure(rows, "ttft_p90_s", "min", "TTFT p90 (s)", None)
    assert fig is not None
    as_dict = {"points": sum(len(t.x) for t in fig.data), "layout": fig.to_plotly_json()["layout"]}
    as_dict["data"] = [{"name": t.name, "x": list(t.x), "y": list(t.y)} for t in fig.data]
    check_pareto(as_dict, rows[:-1], "ttft_p90_s", "min")
    assert as_dict["layout"]["yaxis"]["type"] == "log"


def test_cdf_rate_and_memory_plots_have_their_data(plan: PlanResult) -> None:
    figs = figures_of(report_html(plan))
    slo = {"cdf:ttft_cdf_s": plan.spec.slo.ttft_s, "cdf:tpot_cdf_s": plan.spec.slo.tpot_s * 1e3}
    for kind, slo_x in slo.items():
        lines = data_traces(figs[kind])
        assert len(lines) == 2 and figs[kind]["points"] == 100  # winner, runner-up; 50 quantiles
        assert all(t["y"][0] == 0 and t["y"][-1] == 1 and t["x"] == sorted(t["x"]) for t in lines)
        assert trace(figs[kind], "SLO")["x"] == [slo_x, slo_x]
    top = plan.feasible[:5]
    probes = [json.loads(r["probes"]) for r in top]
    for kind in ("rate:attainment", "rate:goodput"):
        lines = data_traces(figs[kind])
        assert figs[kind]["points"] == sum(map(len, probes))
        assert [len(t["x"]) for t in lines] == [len(p) for p in probes]
    good = data_traces(figs["rate:goodput"])[0]["y"]
    assert good == [p["rate_per_s"] * p["attainment"] for p in probes[0]]
    mem = figs["memory"]
    rows = plan.feasible[:8]
    assert mem["points"] == len(rows) and mem["layout"]["barmode"] == "stack"
    bars = {t["name"]: t["x"] for t in mem["data"]}
    assert bars["weights"] == [r["weights_gb"] for r in rows]
    total = [sum(v) for v in zip(*bars.values(), strict=True)]
    assert total == pytest.approx([r["device_gb"] for r in rows])  # the bar fills the device


def test_terminal_table_lists_the_top_candidates(plan: PlanResult) -> None:
    table = terminal_table(plan, top=3)
    assert table.row_count == 3
    labels = list(table.columns[1].cells)
    assert labels == [r["label"] for r in plan.feasible[:3]]
    assert "tp_splits_heads" in str(table.caption)
    # The mark says what the front is over: some of its objectives are not columns.
    assert "P: on the Pareto front of $/h per req/s, TTFT p90, TPOT p90, goodput per GPU" in str(
        table.caption
    )


@pytest.mark.parametrize("width", [80, 120])
def test_the_terminal_table_reads_whole_at_80_and_120_columns(
    plan: PlanResult, disagg: PlanResult, missed: PlanResult, width: int
) -> None:
    """Nothing is cut: no ellipsis, no line wider than the terminal, every word of every label
    (disaggregated ones too) and every number shown whole."""
    from rich.console import Console

    from servesim.report.page import _leaders

    assert any(r["mode"] == "disaggregated" for r in disagg.feasible)
    for result in (plan, disagg, missed):
        console = Console(width=width, file=io.StringIO(), record=True)
        table = terminal_table(result, top=10)
        console.print(table)
        text = console.export_text()
        assert "…" not in text
        assert max(len(line) for line in text.splitlines()) <= width
        words = set(text.split())
        for r in _leaders(result, 10):
            assert set(str(r["label"]).split()) <= words, r["label"]
        for col in table.columns[2:]:
            for cell in col.cells:
                assert set(str(cell).split()) <= words, (col.header, cell)


def test_an_infeasible_plan_leads_with_the_closest_miss(missed: PlanResult) -> None:
    assert missed.winner is None
    text = report_html(missed)
    sentence = closest_miss_sentence(missed)
    assert sentence.startswith("No candidate meets the SLO. Closest miss: ")
    assert missed.closest_miss()["label"] in sentence  # type: ignore[index]
    assert "TTFT p90" in sentence and "90% must meet both" in sentence
    assert 'class="answer miss"' in text and sentence.replace("'", "&#x27;") in text
    figs = figures_of(text)
    assert all(figs[k]["points"] == 0 and not figs[k]["data"] for k in PARETO_AXES)
    assert "no feasible candidate to plot" in text
    assert len(data_traces(figs["cdf:ttft_cdf_s"])) == 2  # the closest misses' latencies show
    table = terminal_table(missed)
    assert "closest misses" in str(table.title) and table.row_count == 2


# Put into a copy of the report: ERRORS first in <head> records every script error; PROBE after
# the page loads reads what Plotly drew into each figure's SVG (points, bars, axis types, size)
# and which resources the page fetched, and writes it into the DOM that --dump-dom prints.
ERRORS_JS = """<script>window.__errors = [];
addEventListener('error', e => window.__errors.push(String(e.message)));</script>"""
PROBE_JS = """<script>addEventListener('load', () => {
  const out = [...document.querySelectorAll('figure.card')].map(fig => {
    const gd = fig.querySelector('.plotly-graph-div');
    const box = (gd || fig).getBoundingClientRect();
    const n = s => gd ? gd.querySelectorAll(s).length : 0;
    return {kind: fig.dataset.kind, points: +fig.dataset.points, svg: n('svg.main-svg'),
      markers: n('.scatterlayer .point'), bars: n('.barlayer .point'),
      lines: n('.scatterlayer .js-line'),
      axes: gd ? [gd._fullLayout.xaxis.type, gd._fullLayout.yaxis.type] : [],
      width: box.width, height: box.height};
  });
  const b = document.body;
  b.setAttribute('data-layout', JSON.stringify(out));
  b.setAttribute('data-errors', JSON.stringify(window.__errors));
  b.setAttribute('data-fetched',
    JSON.stringify(performance.getEntriesByType('resource').map(e => e.name)));
  b.setAttribute('data-height', document.documentElement.scrollHeight);
});</script>"""


def dom_attr(dom: str, name: str) -> Any:
    found = re.search(rf'<body[^>]* {name}="([^"]*)"', dom)
    assert found, f"the probe did not run ({name})"
    return json.loads(found.group(1).replace("&quot;", '"'))


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium is not installed (apt-get install -y chromium)",
)
def test_report_renders_in_headless_chromium(plan: PlanResult, tmp_path: Path) -> None:
    """Plotly draws every figure (SVG with one marker per candidate, bars per segment), no script
    fails, nothing is fetched (offline), and a full-page screenshot is kept for people."""
    report = write_report(plan, tmp_path / "plan_report.html")
    probe = tmp_path / "probe.html"
    text = report.read_text().replace("<head>", "<head>" + ERRORS_JS, 1)
    probe.write_text(text.replace("</body>", PROBE_JS + "</body>"))
    offline = "--host-resolver-rules=MAP * ~NOTFOUND"
    wide = "--window-size=1400,1000"  # as wide as the screenshot, so the height measured fits it
    dom = chromium("--dump-dom", wide, offline, probe.as_uri(), profile=tmp_path / "pr").stdout
    assert dom_attr(dom, "data-errors") == []
    assert dom_attr(dom, "data-fetched") == []
    layout = dom_attr(dom, "data-layout")
    by_kind = {p["kind"]: p for p in layout}
    assert set(by_kind) >= {*PARETO_AXES, "cdf:ttft_cdf_s", "rate:goodput", "memory"}
    for p in layout:
        assert p["svg"] >= 1 and p["width"] > 300 and p["height"] > 150, p
        assert p["points"] > 0 and p["markers"] + p["bars"] + p["lines"] > 0, p
    for kind in PARETO_AXES:  # every feasible candidate and the winner's ring
        assert by_kind[kind]["markers"] == len(plan.feasible) + 1, by_kind[kind]
    figs = figures_of(report.read_text())
    for kind, fig in figs.items():  # the axis types chosen (log past a decade) are the ones drawn
        for i, ax in enumerate(("xaxis", "yaxis")):
            if "type" in fig["layout"].get(ax, {}):
                assert by_kind[kind]["axes"][i] == fig["layout"][ax]["type"], (kind, ax)
    for kind in ("rate:attainment", "rate:goodput"):
        assert by_kind[kind]["markers"] == by_kind[kind]["points"]  # one per probe
    assert by_kind["cdf:ttft_cdf_s"]["lines"] == 4  # two candidates, the SLO and the target
    assert by_kind["memory"]["bars"] == 4 * by_kind["memory"]["points"]
    # A screenshot of the whole page (as tall as Chromium laid it out), kept for people to see.
    height = dom_attr(dom, "data-height")
    assert height > 2000
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "plan_report.png"
    shot.unlink(missing_ok=True)
    size = f"--window-size=1400,{height}"
    chromium(f"--screenshot={shot}", size, offline, report.as_uri(), profile=tmp_path / "p2")
    assert png_size(shot) == (1400, height)
    assert shot.stat().st_size > 100_000  # a blank page compresses to a few kB
    shutil.copy(report, ARTIFACTS / "plan_report.html")


def test_a_share_just_below_the_target_never_prints_as_the_target() -> None:
    """0.899 of a 0.9 target reads 89.9 %, not the 90 % it rounds to; a share at or above the
    target, or well below it, keeps whole percent; a target of 99.5 % prints as such."""
    from servesim.planner.capacity import Probe, explain_miss, share_text
    from servesim.sim.metrics import Slo

    assert share_text(0.899, 0.9) == "89.9%"
    assert share_text(0.8996, 0.9) == "89.96%"
    assert share_text(0.91, 0.9) == "91%"
    assert share_text(0.5, 0.9) == "50%"
    probe = Probe(0.00876, 0.899, 0.95, 0.95, 0.1, 0.01, 0.00876)
    sentence = explain_miss(probe, Slo(ttft_s=2.0, tpot_s=0.05), 0.9)
    assert "only 89.9% meet both targets; 90% must meet both" in sentence
    tight = explain_miss(probe, Slo(ttft_s=2.0, tpot_s=0.05), 0.995)
    assert "TTFT p90" in tight and "(95% of requests meet it)" in tight
    assert tight.endswith("; 99.5% must meet both")


def test_a_workflow_plans_report_speaks_of_workflows_not_requests(tmp_path: Path) -> None:
    """A workflow plan's capacity is workflows per second under their end-to-end SLOs, but the
    HTML report called it req/s, stated the unused trace and TTFT/TPOT SLO as the question,
    drew no Pareto front but goodput ("no feasible candidate") and no probes, while the terminal
    table already said wf/s. It now says wf/s and E2E throughout and draws the workflow probes."""
    spec = PlanSpec(MODEL, target=0.9, workflows="text2sql")
    space = SearchSpace(
        devices=("h100_sxm",), tp=(1,), engines=("vllm",), batching=((64, 2048), (256, 8192))
    )
    result = run_plan(spec, space, tmp_path, workers=1, quiet=True)
    assert result.winner is not None
    html = report_html(result)
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert "req/s" not in text and "TTFT" not in text and "azure_conv" not in text
    assert "capacity wf/s" in text and "E2E p90 s" in text and "text2sql" in text
    figs = figures_of(html)
    e2e = figs["pareto:dollar_per_req_per_s:e2e_p90_s"]
    assert e2e["points"] == 2 and e2e["layout"]["xaxis"]["title"]["text"] == "$/h per wf/s"
    assert figs["pareto:dollar_per_req_per_s:goodput_per_gpu"]["points"] == 2
    rate = figs["rate:attainment"]
    assert rate["points"] > 0 and "wf/s" in rate["layout"]["xaxis"]["title"]["text"]
