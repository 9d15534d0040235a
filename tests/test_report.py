"""The HTML report: self-contained, its plots carry every candidate, Chromium renders it."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from servesim.metrics import Slo
from servesim.plan import PlanResult, run_plan
from servesim.planner import PlanSpec, SearchSpace, WorkloadSpec
from servesim.ranking import pareto_front
from servesim.report import closest_miss_sentence, report_html, terminal_table, write_report

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


class Plots(HTMLParser):
    """Every `svg.plot`: its attributes and a count of its data elements by tag and class."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[dict[str, Any]] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg" and "plot" in a.get("class", "").split():
            self.plots.append({**a, "items": Counter()})
            self._open = True
        elif self._open and tag in ("circle", "path", "rect"):
            for cls in a.get("class", "").split():
                self.plots[-1]["items"][f"{tag}.{cls}"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._open = False


def plots_of(html: str) -> dict[str, dict[str, Any]]:
    p = Plots()
    p.feed(html)
    return {plot["data-kind"]: plot for plot in p.plots}


def data_items(plot: dict[str, Any]) -> int:
    c = plot["items"]
    return c["circle.pt"] + c["path.series"] + c["rect.bar"]


def test_report_is_self_contained(plan: PlanResult, tmp_path: Path) -> None:
    text = write_report(plan, tmp_path / "r.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?:|//[a-z]", text, re.I), "no network references"
    for banned in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src=", "href="):
        assert banned not in text.lower(), banned


def test_report_states_the_question_the_winner_and_the_sizing(plan: PlanResult) -> None:
    text = report_html(plan)
    assert MODEL in text and "azure_conv" in text and "150 requests" in text
    assert "TTFT ≤ 1.00 s and TPOT ≤ 60.0 ms" in text and "90% of requests" in text
    assert plan.winner is not None and plan.cheapest is not None
    assert f'<p class="winner-label">{plan.winner["label"]}</p>' in text
    assert f"{plan.cheapest.replicas} × {plan.cheapest.candidate.label()}" in text
    assert "verified by simulation" in text
    # the candidates table lists the feasible rows in rank order, and the pruning by rule
    ranks = re.findall(r'<tr class="(?:pareto)?"><td>(\d+)</td>', text)
    assert ranks == [str(i) for i in range(1, len(plan.feasible) + 1)]
    assert "<td>tp_splits_heads</td><td>4</td>" in text


def test_pareto_plots_draw_every_feasible_candidate_and_grey_the_dominated(
    plan: PlanResult,
) -> None:
    plots = plots_of(report_html(plan))
    n = len(plan.feasible)
    assert n == 8
    for kind, sense in PARETO_AXES.items():
        plot = plots[kind]
        _, x, y = kind.split(":")
        front = pareto_front(plan.rows, x, y, "min", sense)
        items = plot["items"]
        assert int(plot["data-points"]) == n
        assert items["circle.pt"] == n
        assert items["circle.front"] == len(front) >= 1
        assert items["circle.dominated"] == n - len(front)
        assert items["path.front-line"] == 1
    assert sum(p["items"]["circle.dominated"] for k, p in plots.items() if k in PARETO_AXES) > 0


def test_cdf_rate_and_memory_plots_have_their_data(plan: PlanResult) -> None:
    plots = plots_of(report_html(plan))
    for kind in ("cdf:ttft_cdf_s", "cdf:tpot_cdf_s"):
        assert plots[kind]["items"]["path.series"] == 2  # winner and runner-up
        assert int(plots[kind]["data-points"]) == 100  # 50 quantiles each
    top = plan.feasible[:5]
    probes = sum(len(json.loads(r["probes"])) for r in top)
    for kind in ("rate:attainment", "rate:goodput"):
        assert plots[kind]["items"]["circle.pt"] == probes
        assert plots[kind]["items"]["path.series"] == len(top)
    mem = plots["memory"]
    assert int(mem["data-points"]) == min(8, len(plan.feasible))
    for seg in ("weights", "kv", "reserve"):
        assert mem["items"][f"rect.seg-{seg}"] == int(mem["data-points"])


def test_terminal_table_lists_the_top_candidates(plan: PlanResult) -> None:
    table = terminal_table(plan, top=3)
    assert table.row_count == 3
    labels = list(table.columns[1].cells)
    assert labels == [r["label"] for r in plan.feasible[:3]]
    assert "tp_splits_heads" in str(table.caption)


@pytest.mark.parametrize("width", [80, 120])
def test_the_terminal_table_reads_whole_at_80_and_120_columns(
    plan: PlanResult, disagg: PlanResult, missed: PlanResult, width: int
) -> None:
    """Nothing is cut: no ellipsis, no line wider than the terminal, every word of every label
    (disaggregated ones too) and every number shown whole."""
    from rich.console import Console

    from servesim.report import _leaders

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
    plots = plots_of(text)
    assert all(int(plots[k]["data-points"]) == 0 for k in PARETO_AXES)
    assert data_items(plots["cdf:ttft_cdf_s"]) == 2  # the closest misses' latencies still show
    table = terminal_table(missed)
    assert "closest misses" in str(table.title) and table.row_count == 2


# Appended to a copy of the report (the report itself has no scripts): measures what Chromium laid
# out for each plot and writes it into the DOM that --dump-dom prints.
PROBE_JS = """<script>
const out = [...document.querySelectorAll('svg.plot')].map(svg => {
  const box = svg.getBoundingClientRect();
  const items = [...svg.querySelectorAll('circle.pt, path.series, rect.bar')];
  const drawn = items.filter(e => { const b = e.getBoundingClientRect();
    return (b.width > 0 || b.height > 0) && b.left >= box.left - 1 && b.right <= box.right + 1
      && b.top >= box.top - 1 && b.bottom <= box.bottom + 1; });
  return {kind: svg.dataset.kind, points: +svg.dataset.points, drawn: drawn.length,
          dots: drawn.filter(e => e.tagName === 'circle').length,
          width: box.width, height: box.height};
});
document.body.setAttribute('data-layout', JSON.stringify(out));
document.body.setAttribute('data-height', document.documentElement.scrollHeight);
</script>"""


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
    report = write_report(plan, tmp_path / "plan_report.html")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", PROBE_JS + "</body>"))
    dom = chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "profile").stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, "the layout probe did not run"
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    by_kind = {p["kind"]: p for p in layout}
    assert set(by_kind) >= {*PARETO_AXES, "cdf:ttft_cdf_s", "rate:goodput", "memory"}
    for p in layout:
        assert p["width"] > 300 and p["height"] > 150, p
        assert p["points"] > 0 and p["drawn"] > 0, p  # laid out inside the plot, not clipped
    for kind in PARETO_AXES:
        assert by_kind[kind]["dots"] == len(plan.feasible)
    # A screenshot of the whole page (as tall as Chromium laid it out), kept for people to see.
    found = re.search(r'data-height="(\d+)"', dom)
    assert found and int(found.group(1)) > 2000
    height = int(found.group(1))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "plan_report.png"
    shot.unlink(missing_ok=True)
    size = f"--window-size=1400,{height}"
    chromium(f"--screenshot={shot}", size, report.as_uri(), profile=tmp_path / "p2")
    assert png_size(shot) == (1400, height)
    assert shot.stat().st_size > 100_000  # a blank page compresses to a few kB
    shutil.copy(report, ARTIFACTS / "plan_report.html")
