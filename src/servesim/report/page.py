"""A plan's report: a self-contained HTML page with interactive Plotly figures, and a table.

The page needs nothing from the network (inline CSS, plotly.js inlined once, no fonts or images),
so it opens offline and can be mailed around. Every figure sits in a `<figure class="card"
data-kind=... data-points=N>` so a test or a reader can check what it holds; hovering a point
names its candidate, dragging zooms, and axes are logarithmic where the values span decades.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go
from rich import box
from rich.table import Table

from servesim.planner.capacity import share_text, target_text
from servesim.planner.ranking import pareto_front, pareto_words
from servesim.report.plots import PALETTE, axis_type, figure_div, layout, page

if TYPE_CHECKING:
    from servesim.planner.plan import PlanResult

Row = dict[str, Any]

GREY = "#b8bcc2"
FRONT = "#2563eb"
WINNER = "#ea580c"
MEMORY_SEGMENTS = (
    ("weights_gb", "weights", "#2563eb"),
    ("kv_gb", "KV cache", "#16a34a"),
    ("reserve_gb", "activations + reserve", "#f59e0b"),
)
UNUSED = "#e5e7eb"


# ---- numbers -------------------------------------------------------------------------------


def _num(row: Row | None, key: str) -> float:
    """A row's value as a float, NaN when missing or not a number."""
    v = (row or {}).get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _fin(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def fmt(v: float, unit: str = "") -> str:
    """A compact, readable number (3 significant digits, no exponent for everyday sizes)."""
    if not _fin(v):
        return "–"
    a = abs(v)
    if a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1 or a == 0:
        s = f"{v:.2f}"
    elif a >= 1e-3:
        s = f"{v:.3g}"
    else:
        s = f"{v:.2e}"
    return f"{s} {unit}".strip()


def _pct(v: float) -> str:
    return f"{v:.1%}" if _fin(v) else "–"


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _probes(row: Row) -> list[dict[str, float]]:
    """The capacity search's probes, by rate: per-request ones, or a workflow plan's (workflow
    rates and attainment, no TTFT/TPOT split)."""
    try:
        probes = json.loads(row.get("probes") or "[]") or json.loads(
            row.get("workflow_probes") or "[]"
        )
    except (TypeError, ValueError):
        return []
    return sorted(probes, key=lambda p: p["rate_per_s"])


def _quantiles(row: Row, key: str) -> list[float]:
    try:
        return [float(v) for v in json.loads(row.get(key) or "[]")]
    except (TypeError, ValueError):
        return []


# ---- figures -------------------------------------------------------------------------------

# (y column, sense, title, y label, y factor); x is always the cost of 1 req/s.
PARETO_VIEWS = (
    ("ttft_p90_s", "min", "Cost vs TTFT p90", "TTFT p90 (s)", 1.0),
    ("tpot_p90_s", "min", "Cost vs TPOT p90", "TPOT p90 (ms)", 1e3),
    ("joules_per_token", "min", "Cost vs energy", "energy (J per output token)", 1.0),
    ("goodput_per_gpu", "max", "Goodput per GPU vs cost", "goodput per GPU (req/s)", 1.0),
)
COST, COST_LABEL = "dollar_per_req_per_s", "$/h per req/s"
# A workflow plan's rows hold workflows per second and the workflows' end-to-end tail; they have
# no per-request TTFT, TPOT or energy to plot.
WORKFLOW_PARETO_VIEWS = (
    ("e2e_p90_s", "min", "Cost vs workflow E2E p90", "workflow E2E p90 (s)", 1.0),
    ("goodput_per_gpu", "max", "Goodput per GPU vs cost", "goodput per GPU (wf/s)", 1.0),
)
WORKFLOW_COST_LABEL = "$/h per wf/s"


def _short(r: Row) -> str:
    par = f"tp{r.get('tp')}" + (f"pp{r['pp']}" if int(r.get("pp") or 1) > 1 else "")
    return f"{r.get('device')} {par} {r.get('engine')} {r.get('max_num_seqs')}/" + str(
        r.get("max_num_batched_tokens")
    )


def _card(kind: str, title: str, fig: go.Figure | None, note: str = "", why: str = "") -> str:
    """A titled figure; `data-points` counts the points of its traces with meta="data" (the
    candidates', not the reference lines), 0 with the sentence `why` when there is no figure."""
    if fig is None:
        body, points, note = f'<p class="empty">{_esc(why)}</p>', 0, ""
    else:
        body = figure_div(fig, "plot-" + re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-"))
        points = sum(len(t.x) for t in fig.data if t.meta == "data")
    extra = f'<p class="note">{_esc(note)}</p>' if note else ""
    return (
        f'<figure class="card" data-kind="{_esc(kind)}" data-points="{points}">'
        f"<figcaption>{_esc(title)}</figcaption>{body}{extra}</figure>"
    )


def _line(xs: list[float], ys: list[float], name: str, color: str) -> go.Scatter:
    """A dashed reference line (SLO, target, every request good)."""
    line = {"color": color, "dash": "dash", "width": 1.5}
    return go.Scatter(x=xs, y=ys, mode="lines", name=name, line=line, hoverinfo="name")


def pareto_figure(
    rows: list[Row],
    y: str,
    y_sense: str,
    ylabel: str,
    winner: Row | None,
    y_factor: float = 1.0,
    cost_label: str = COST_LABEL,
) -> go.Figure | None:
    """Every feasible candidate at (cost, y): the 2-D front joined in blue, the dominated grey,
    the winner ringed; hovering names the deployment, its cost and goodput. None if none."""
    pts = [
        {**r, "_x": _num(r, COST), "_y": _num(r, y) * y_factor}
        for r in rows
        if r.get("status") == "ok" and _fin(_num(r, COST)) and _fin(_num(r, y))
    ]
    if not pts:
        return None
    front = pareto_front(pts, "_x", "_y", "min", y_sense)  # sorted by cost
    keys = {r["key"] for r in front}

    def trace(rs: list[Row], name: str, **kw: Any) -> go.Scatter:
        tips = [
            f"#{r.get('rank') or '–'} {_esc(r.get('label', ''))}<br>{cost_label}: "
            f"{fmt(r['_x'])}<br>{ylabel}: {fmt(r['_y'])}<br>"
            f"${fmt(_num(r, 'price_per_hour'))}/h per replica, goodput "
            f"{fmt(_num(r, 'capacity_req_per_s'))} {cost_label.split()[-1]} "
            f"({fmt(_num(r, 'goodput_per_gpu'))}/GPU)"
            for r in rs
        ]
        xy = {"x": [r["_x"] for r in rs], "y": [r["_y"] for r in rs]}
        return go.Scatter(**xy, name=name, hovertext=tips, hoverinfo="text", **kw)

    fig = go.Figure(
        [
            trace(
                [r for r in pts if r["key"] not in keys],
                "dominated",
                meta="data",
                mode="markers",
                marker={"color": GREY, "size": 7},
            ),
            trace(
                front,
                "Pareto front",
                meta="data",
                mode="lines+markers+text",
                text=[f"#{r['rank']}" if 0 < int(r.get("rank") or 0) <= 3 else "" for r in front],
                textposition="top right",
                line={"shape": "hv", "color": FRONT, "width": 1.6},
                marker={"color": FRONT, "size": 9},
            ),
        ]
    )
    won = [r for r in pts if winner is not None and r["key"] == winner.get("key")]
    if won:
        ring = {"symbol": "circle-open", "size": 18, "color": WINNER, "line": {"width": 2.5}}
        fig.add_trace(trace(won, "winner", mode="markers", marker=ring))
    fig.update_xaxes(title_text=cost_label, type=axis_type(r["_x"] for r in pts))
    fig.update_yaxes(title_text=ylabel, type=axis_type(r["_y"] for r in pts))
    return layout(fig, 380)


def latency_figure(
    rows: list[Row], key: str, slo_s: float, target: float, xlabel: str, x_factor: float = 1.0
) -> go.Figure | None:
    """Latency CDFs (the 50 stored quantiles) of the given candidates, with the SLO and target."""
    series = [(r, [v * x_factor for v in q]) for r in rows if (q := _quantiles(r, key))]
    if not series:
        return None
    fig = go.Figure()
    for i, (r, q) in enumerate(series):
        fig.add_trace(
            go.Scatter(
                x=q,
                y=[j / (len(q) - 1) for j in range(len(q))] if len(q) > 1 else [1.0],
                mode="lines",
                name=_short(r),
                meta="data",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2.2},
                hovertext=_esc(r.get("label", "")),
                hovertemplate="%{hovertext}<br>%{x:.4g}: %{y:.0%}<extra></extra>",
            )
        )
    slo = slo_s * x_factor
    allx = [v for _, q in series for v in q] + [slo]
    fig.add_trace(_line([slo, slo], [0, 1], "SLO", "#dc2626"))
    fig.add_trace(
        _line([min(allx), max(allx)], [target] * 2, f"target {target_text(target)}", "#6b7280")
    )
    fig.update_xaxes(title_text=xlabel, type=axis_type(allx))
    fig.update_yaxes(title_text="fraction of requests", range=[0, 1.02], tickformat=".0%")
    return layout(fig, 360)


def rate_figures(
    rows: list[Row], target: float, unit: str = "req/s"
) -> tuple[go.Figure, go.Figure] | None:
    """SLO attainment and goodput against offered rate, from each candidate's capacity probes
    (`unit`: req/s, or wf/s for a workflow plan's probes, which have no TTFT/TPOT split)."""
    series = [(r, p) for r in rows if (p := _probes(r))]
    if not series:
        return None
    rates = [p["rate_per_s"] for _, ps in series for p in ps]
    xtype = axis_type(rates)
    ends = [min(rates) if xtype == "log" else 0.0, max(rates)]
    att = go.Figure(_line(ends, [target] * 2, f"target {target_text(target)}", "#6b7280"))
    every = "every workflow meets its SLO" if unit == "wf/s" else "every request meets the SLO"
    good = go.Figure(_line(ends, ends, every, "#6b7280"))
    split = all("ttft_ok" in p for _, ps in series for p in ps)
    tip = f"%{{hovertext}}<br>%{{x:.3g}} {unit}: %{{y:.3g}}"
    tip += "; TTFT %{customdata[0]:.0%}, TPOT %{customdata[1]:.0%} ok" if split else ""
    tip += "<extra></extra>"
    for i, (r, ps) in enumerate(series):
        common = {
            "x": [p["rate_per_s"] for p in ps],
            "customdata": [[p.get("ttft_ok"), p.get("tpot_ok")] for p in ps],
            "mode": "lines+markers",
            "name": _short(r),
            "meta": "data",
            "hovertext": _esc(r.get("label", "")),
            "hovertemplate": tip,
            "line": {"color": PALETTE[i % len(PALETTE)], "width": 2.2},
        }
        att.add_trace(go.Scatter(y=[p["attainment"] for p in ps], **common))
        good.add_trace(go.Scatter(y=[p["rate_per_s"] * p["attainment"] for p in ps], **common))
    for fig in (att, good):
        layout(fig, 360).update_xaxes(title_text=f"offered rate ({unit}, one replica)", type=xtype)
    met = "workflows meeting their SLO" if unit == "wf/s" else "requests meeting both SLOs"
    att.update_yaxes(title_text=met, range=[0, 1.05], tickformat=".0%")
    good.update_yaxes(title_text=f"goodput ({unit} meeting SLOs)", type=xtype)
    return att, good


def memory_figure(rows: list[Row]) -> go.Figure | None:
    """Per-device memory of each candidate as stacked bars (weights, KV cache, reserve, unused);
    each bar's label carries the device size, the busy fraction and the KV cache use."""
    rows = [r for r in rows if _fin(_num(r, "device_gb"))]
    if not rows:
        return None
    names = [
        f"#{r.get('rank') or '–'} {_esc(r.get('label', ''))}<br>{fmt(_num(r, 'device_gb'))} "
        f"GB/device · busy {_pct(_num(r, 'utilisation'))} · KV used {_pct(_num(r, 'mean_kv_use'))}"
        for r in rows
    ]
    segs = [
        (n, c, [max(_num(r, k), 0.0) if _fin(_num(r, k)) else 0.0 for r in rows])
        for k, n, c in MEMORY_SEGMENTS
    ]
    free = [max(_num(r, "device_gb") - sum(s[2][i] for s in segs), 0.0) for i, r in enumerate(rows)]
    segs.append(("unused (outside the memory fraction)", UNUSED, free))
    fig = go.Figure(
        [
            go.Bar(
                x=gb,
                y=names,
                orientation="h",
                name=name,
                meta="data" if i == 0 else None,
                marker={"color": color},
                texttemplate="%{x:.3g} GB",
                textposition="inside",
                textangle=0,
                insidetextanchor="middle",
                hovertemplate=f"{name}: %{{x:.3g}} GB<extra></extra>",
            )
            for i, (name, color, gb) in enumerate(segs)
        ]
    )
    fig.update_xaxes(title_text="GB per device")
    fig.update_yaxes(autorange="reversed", automargin=True)
    layout(fig, 110 + 52 * len(rows), barmode="stack", uniformtext={"mode": "hide", "minsize": 9})
    return fig.update_layout(legend_traceorder="normal")


# ---- page sections -------------------------------------------------------------------------


def _question(result: PlanResult) -> str:
    s = result.spec
    w = s.workload
    if is_workflow_plan(result):
        return _workflow_question(result)
    if w.trace:
        work = f"trace <b>{_esc(w.trace)}</b>, {w.num_requests} requests (arrival shape rescaled)"
    else:
        work = (
            f"synthetic: prompt {_esc(w.prompt or 'fixed:1024')}, output "
            f"{_esc(w.output or 'fixed:256')}, {_esc(w.arrival)} arrivals, "
            f"{w.num_requests} requests"
        )
    rate = f"{s.rate_per_s:g} req/s" if s.rate_per_s else "not given (per-replica capacity only)"
    evaluated = [r for r in result.rows if r.get("status") in ("ok", "infeasible")]
    return (
        '<section id="question"><h2>The question</h2><dl>'
        f"<dt>Model</dt><dd>{_esc(s.model)}</dd>"
        f"<dt>Workload</dt><dd>{work}</dd>"
        f"<dt>SLO</dt><dd>TTFT ≤ {fmt(s.slo.ttft_s)} s and TPOT ≤ {fmt(s.slo.tpot_s * 1e3)} ms, "
        f"for at least {target_text(s.target)} of requests</dd>"
        f"<dt>Traffic to serve</dt><dd>{rate}</dd>"
        f"<dt>Search</dt><dd>{len(result.rows)} candidates: {len(evaluated)} simulated "
        f"({result.evaluated} now, {result.reused} from the store), {len(result.pruned)} pruned; "
        f"{fmt(result.wall_s)} s</dd></dl></section>"
    )


def _workflow_question(result: PlanResult) -> str:
    """The question of a workflow plan: its workflows and their end-to-end SLOs, not the
    per-request trace and TTFT/TPOT it does not use."""
    s = result.spec
    evaluated = [r for r in result.rows if r.get("status") in ("ok", "infeasible")]
    return (
        '<section id="question"><h2>The question</h2><dl>'
        f"<dt>Model</dt><dd>{_esc(s.model)}</dd>"
        f"<dt>Workload</dt><dd>workflows <b>{_esc(s.workflows)}</b>, calls in "
        f"{_esc(s.workflow_policy)} order</dd>"
        f"<dt>SLO</dt><dd>each workflow's end-to-end SLO, for at least {target_text(s.target)} "
        "of workflows</dd>"
        "<dt>Traffic to serve</dt><dd>not given (per-replica capacity only)</dd>"
        f"<dt>Search</dt><dd>{len(result.rows)} candidates: {len(evaluated)} simulated "
        f"({result.evaluated} now, {result.reused} from the store), {len(result.pruned)} pruned; "
        f"{fmt(result.wall_s)} s</dd></dl></section>"
    )


def closest_miss_sentence(result: PlanResult) -> str:
    """One sentence on why nothing is feasible: the closest miss and by how much."""
    miss = result.closest_miss()
    if miss is None:
        if result.pruned:
            p = result.pruned[0]
            return (
                f"No candidate could be simulated: all {len(result.pruned)} were pruned "
                f"(e.g. {p.candidate.label()}: {p.reason})."
            )
        return "No candidate was evaluated."
    best = max(_probes(miss), key=lambda p: p["attainment"], default=None)
    share = share_text(best["attainment"], result.spec.target) if best else ""
    att = f" (best attainment {share})" if best else ""
    return f"No candidate meets the SLO. Closest miss: {miss['label']}{att}: {miss['reason']}."


def _answer(result: PlanResult) -> str:
    w = result.winner
    if w is None:
        return (
            '<section id="answer" class="answer miss"><h2>No deployment meets the SLO</h2>'
            f'<p class="miss-sentence">{_esc(closest_miss_sentence(result))}</p>'
            "<p>Loosen the SLO or the target, or add larger devices, more TP, fp8 weights or "
            "an fp8 KV cache to the search.</p></section>"
        )
    facts = _workflow_facts(w) if is_workflow_plan(result) else _request_facts(w)
    return _answer_section(result, w, facts)


def _workflow_facts(w: Row) -> list[tuple[str, str]]:
    """A workflow plan's winner: workflows per second and their end-to-end tail."""
    return [
        ("capacity per replica", fmt(_num(w, "capacity_req_per_s"), "wf/s")),
        ("devices per replica", str(w.get("devices"))),
        ("price per replica", "$" + fmt(_num(w, "price_per_hour")) + "/h"),
        ("cost of 1 wf/s", "$" + fmt(_num(w, "dollar_per_req_per_s")) + "/h"),
        ("goodput per GPU", fmt(_num(w, "goodput_per_gpu"), "wf/s")),
        ("workflow E2E p90", fmt(_num(w, "e2e_p90_s"), "s")),
    ]


def _request_facts(w: Row) -> list[tuple[str, str]]:
    return [
        ("capacity per replica", fmt(_num(w, "capacity_req_per_s"), "req/s")),
        ("devices per replica", str(w.get("devices"))),
        ("price per replica", "$" + fmt(_num(w, "price_per_hour")) + "/h"),
        ("cost of 1 req/s", "$" + fmt(_num(w, "dollar_per_req_per_s")) + "/h"),
        ("goodput per GPU", fmt(_num(w, "goodput_per_gpu"), "req/s")),
        ("TTFT p90", fmt(_num(w, "ttft_p90_s"), "s")),
        ("TPOT p90", fmt(_num(w, "tpot_p90_s") * 1e3, "ms")),
        ("energy", fmt(_num(w, "joules_per_token"), "J/token")),
        ("attainment at capacity", _pct(_num(w, "attainment"))),
    ]


def _answer_section(result: PlanResult, w: Row, facts: list[tuple[str, str]]) -> str:
    cells = "".join(f"<div><span>{_esc(k)}</span><b>{_esc(v)}</b></div>" for k, v in facts)
    sizing = []
    for name, sz in (("Lowest $/h", result.cheapest), ("Fewest GPUs", result.fewest_devices)):
        if sz is None:
            continue
        check = "verified by simulation" if sz.verified else "estimated"
        sizing.append(
            f"<li><b>{name}</b> for {fmt(result.spec.rate_per_s)} req/s: {sz.replicas} × "
            f"{_esc(sz.candidate.label())} = <b>{sz.devices} GPU{'s' if sz.devices != 1 else ''}, "
            f"${fmt(sz.price_per_hour)}/h</b>"
            f" (attainment {_pct(sz.attainment)}, {check})</li>"
        )
    if result.spec.rate_per_s and not sizing:
        sizing.append("<li>No candidate could be sized for the target rate.</li>")
    size_html = f"<h3>Sizing for the target rate</h3><ul>{''.join(sizing)}</ul>" if sizing else ""
    return (
        '<section id="answer" class="answer"><h2>Winner: best goodput per dollar</h2>'
        f'<p class="winner-label">{_esc(w["label"])}</p>'
        f'<div class="facts">{cells}</div>{size_html}</section>'
    )


TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("#", "rank", lambda r: str(r.get("rank") or "–")),
    ("candidate", "label", lambda r: str(r.get("label", ""))),
    ("GPUs", "devices", lambda r: str(r.get("devices", ""))),
    ("$/h", "price_per_hour", lambda r: fmt(_num(r, "price_per_hour"))),
    ("capacity req/s", "capacity_req_per_s", lambda r: fmt(_num(r, "capacity_req_per_s"))),
    ("$/h per req/s", "dollar_per_req_per_s", lambda r: fmt(_num(r, "dollar_per_req_per_s"))),
    ("req/s per GPU", "goodput_per_gpu", lambda r: fmt(_num(r, "goodput_per_gpu"))),
    ("TTFT p90 s", "ttft_p90_s", lambda r: fmt(_num(r, "ttft_p90_s"))),
    ("TPOT p90 ms", "tpot_p90_s", lambda r: fmt(_num(r, "tpot_p90_s") * 1e3)),
    ("J/token", "joules_per_token", lambda r: fmt(_num(r, "joules_per_token"))),
    ("attain.", "attainment", lambda r: _pct(_num(r, "attainment"))),
    ("busy", "utilisation", lambda r: _pct(_num(r, "utilisation"))),
    ("Pareto", "pareto", lambda r: "★" if r.get("pareto") else ""),
)


# A workflow plan's rows: workflows per second and the workflows' end-to-end tail.
WORKFLOW_TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    *TABLE_COLUMNS[:4],
    ("capacity wf/s", "capacity_req_per_s", lambda r: fmt(_num(r, "capacity_req_per_s"))),
    ("$/h per wf/s", "dollar_per_req_per_s", lambda r: fmt(_num(r, "dollar_per_req_per_s"))),
    ("wf/s per GPU", "goodput_per_gpu", lambda r: fmt(_num(r, "goodput_per_gpu"))),
    ("E2E p90 s", "e2e_p90_s", lambda r: fmt(_num(r, "e2e_p90_s"))),
    TABLE_COLUMNS[-1],
)


MISS_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("candidate", "label", lambda r: str(r.get("label", ""))),
    ("GPUs", "devices", lambda r: str(r.get("devices", ""))),
    ("$/h", "price_per_hour", lambda r: fmt(_num(r, "price_per_hour"))),
    ("best attain.", "probes", lambda r: _pct(_best_attainment(r))),
    ("TTFT p90 s", "ttft_p90_s", lambda r: fmt(_num(r, "ttft_p90_s"))),
    ("TPOT p90 ms", "tpot_p90_s", lambda r: fmt(_num(r, "tpot_p90_s") * 1e3)),
    ("why", "reason", lambda r: str(r.get("reason", ""))),
)


def _best_attainment(r: Row) -> float:
    return max((p["attainment"] for p in _probes(r)), default=math.nan)


def _candidates_table(
    rows: list[Row], top: int, feasible: bool = True, workflows: bool = False
) -> str:
    columns = (WORKFLOW_TABLE_COLUMNS if workflows else TABLE_COLUMNS) if feasible else MISS_COLUMNS
    head = "".join(f"<th>{_esc(name)}</th>" for name, _, _ in columns)
    body = []
    for r in rows[:top]:
        cells = "".join(f"<td>{_esc(get(r))}</td>" for _, _, get in columns)
        body.append(f'<tr class="{"pareto" if r.get("pareto") else ""}">{cells}</tr>')
    more = f"<p class='note'>{len(rows) - top} more in plan.parquet.</p>" if len(rows) > top else ""
    return f'<table class="cands"><tr>{head}</tr>{"".join(body)}</table>{more}'


def _infeasible_table(rows: list[Row]) -> str:
    bad = [r for r in rows if r.get("status") == "infeasible"]
    if not bad:
        return ""
    trs = "".join(
        f"<tr><td>{_esc(r.get('label', ''))}</td><td>{_esc(r.get('reason', ''))}</td></tr>"
        for r in bad
    )
    return (
        f"<details><summary>{len(bad)} simulated candidates miss the SLO even at light load"
        f"</summary><table><tr><th>candidate</th><th>why</th></tr>{trs}</table></details>"
    )


def _pruned_table(result: PlanResult) -> str:
    if not result.pruned_by_rule:
        return "<p class='note'>No candidate was pruned.</p>"
    example: dict[str, str] = {}
    for p in result.pruned:
        example.setdefault(p.rule, f"{p.candidate.label()}: {p.reason}")
    trs = "".join(
        f"<tr><td>{_esc(rule)}</td><td>{n}</td><td>{_esc(example.get(rule, ''))}</td></tr>"
        for rule, n in sorted(result.pruned_by_rule.items(), key=lambda kv: -kv[1])
    )
    return (
        "<h3>Pruned before simulation</h3><table class='pruned'><tr><th>rule</th>"
        f"<th>candidates</th><th>example</th></tr>{trs}</table>"
    )


def _leaders(result: PlanResult, n: int) -> list[Row]:
    """The top `n` feasible rows, or the closest misses when none is feasible."""
    if result.feasible:
        return result.feasible[:n]
    tried = [r for r in result.rows if r.get("status") == "infeasible"]
    return sorted(tried, key=lambda r: -_best_attainment(r))[:n]


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  margin:0;background:#f6f7f9;color:#1f2328}
main{max-width:1240px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 2px}
h2{font-size:18px;margin:0 0 10px}
h3{font-size:15px;margin:16px 0 6px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:10px;padding:16px 20px;
  margin:16px 0}
.sub{color:#59636e;margin:0 0 8px}
dl{display:grid;grid-template-columns:150px 1fr;gap:4px 12px;margin:0}
dt{color:#59636e}
dd{margin:0}
.winner-label{font-size:17px;font-weight:600;color:#9a3412;margin:0 0 10px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}
.facts div{background:#f6f7f9;border-radius:8px;padding:8px 10px}
.facts span{display:block;color:#59636e;font-size:12px}
.facts b{font-size:16px}
.miss{border:2px solid #dc2626;background:#fef2f2}
.miss h2{color:#b91c1c}
.miss-sentence{font-size:16px;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th{background:#f6f7f9}
td:nth-child(2),th:nth-child(2){text-align:left;white-space:normal}
table.pruned td,table.pruned th,details td,details th{text-align:left;white-space:normal}
tr.pareto td:last-child{color:#2563eb;font-weight:700}
.grid2{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:16px}
figure.card{margin:0;background:#fff;border:1px solid #e3e6ea;border-radius:10px;padding:10px}
figure.card figcaption{font-weight:600;margin:2px 4px 6px}
.note{color:#59636e;font-size:12px;margin:6px 4px 0}
.empty{color:#59636e;text-align:center;padding:28px 0;margin:0}
"""


def report_html(result: PlanResult, top: int = 15) -> str:
    """The whole report as one HTML page (inline CSS, plotly.js once, nothing from the network)."""
    spec = result.spec
    winner = result.winner
    rows = result.rows
    feasible = result.feasible
    shown = feasible if feasible else _leaders(result, top)
    workflows = is_workflow_plan(result)
    views = WORKFLOW_PARETO_VIEWS if workflows else PARETO_VIEWS
    cost_label = WORKFLOW_COST_LABEL if workflows else COST_LABEL
    pareto = [
        _card(
            f"pareto:{COST}:{y}",
            title,
            fig := pareto_figure(rows, y, sense, ylabel, winner, factor, cost_label),
            f"{len(fig.data[0].x) + len(fig.data[1].x)} feasible candidates, "
            f"{len(fig.data[1].x)} on this front; #k: rank by goodput per $/h. Hover a point for "
            "its candidate; drag to zoom, double-click to reset."
            if fig
            else "",
            "no feasible candidate to plot",
        )
        for y, sense, title, ylabel, factor in views
    ]
    pair = _leaders(result, 2)
    when = (
        "At each candidate's capacity (the highest rate meeting the target)."
        if feasible
        else "At each candidate's lightest probed rate (where it came nearest the SLO)."
    )
    cdfs = [
        _card(
            f"cdf:{key}",
            name,
            latency_figure(pair, key, slo, spec.target, xlabel, factor),
            when,
            "no latency distribution recorded",
        )
        for key, name, slo, xlabel, factor in (
            ("ttft_cdf_s", "TTFT", spec.slo.ttft_s, "TTFT (s)", 1.0),
            ("tpot_cdf_s", "TPOT", spec.slo.tpot_s, "TPOT (ms)", 1e3),
        )
    ]
    latency_title = (
        "Latency distributions: the winner and the runner-up"
        if feasible
        else "Latency distributions: the closest misses"
    )
    unit = "wf/s" if workflows else "req/s"
    att, good = rate_figures(_leaders(result, 5), spec.target, unit) or (None, None)
    rates = [
        _card(
            "rate:attainment",
            f"SLO attainment vs {'workflow' if workflows else 'request'} rate",
            att,
            "Each point is one simulated probe of the capacity search.",
            "no probes",
        ),
        _card(
            "rate:goodput",
            "Goodput vs request rate",
            good,
            "Goodput = offered rate × attainment; the dashed diagonal is every "
            f"{'workflow' if workflows else 'request'} good.",
            "no probes",
        ),
    ]
    memory = _card(
        "memory",
        "Memory layout per device and utilisation",
        memory_figure(_leaders(result, 8)),
        "Predicted per-device memory of one replica at its KV cache sizing; busy = fraction of "
        "time an iteration runs, KV used = mean share of the KV cache holding context (both at "
        "capacity).",
        "no memory layout recorded",
    )
    title = f"servesim plan: {spec.model}"
    parts = [
        "<main>",
        f"<h1>{_esc(title)}</h1>",
        '<p class="sub">Which deployment meets the latency SLO at the lowest cost, predicted by '
        "simulating each candidate under the workload at increasing rates.</p>",
        _question(result),
        _answer(result),
        '<section id="candidates"><h2>Top candidates</h2>',
        '<p class="note">Ranked by goodput per $/h (one replica at its capacity); ★ = on the '
        f"Pareto front of {_esc(pareto_words(is_workflow_plan(result)))} (not all of them are "
        "columns here).</p>"
        if feasible
        else '<p class="note">Nothing is feasible; the closest misses are listed.</p>',
        _candidates_table(shown, top, bool(feasible), workflows),
        _infeasible_table(rows),
        _pruned_table(result),
        "</section>",
        '<section id="pareto"><h2>Pareto fronts</h2>',
        '<p class="note">Every feasible candidate is drawn; those on the front of the two '
        "objectives shown are blue, the dominated grey, the winner ringed in orange.</p>",
        f'<div class="grid2">{"".join(pareto)}</div></section>',
        # a workflow plan records no per-request TTFT/TPOT distributions
        ""
        if workflows
        else f'<section id="latency"><h2>{latency_title}</h2><div class="grid2">'
        f"{''.join(cdfs)}</div></section>",
        '<section id="rates"><h2>Goodput and attainment vs rate (top candidates)</h2>',
        f'<div class="grid2">{"".join(rates)}</div></section>',
        '<section id="memory"><h2>Memory layout</h2>',
        f"{memory}</section>",
        "</main>",
    ]
    return page(title, "\n".join(parts), CSS)


def write_report(result: PlanResult, path: str | Path) -> Path:
    """Write the self-contained HTML report; returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(report_html(result), encoding="utf-8")
    return p


# The terminal table keeps to the columns that decide a choice, so it reads at 80 columns: the
# deployment label wraps at spaces and the numbers never wrap (the HTML report has the rest).
TERMINAL_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("#", "rank", lambda r: str(r.get("rank") or "–")),
    ("deployment", "label", lambda r: str(r.get("label", ""))),
    ("GPUs", "devices", lambda r: str(r.get("devices", ""))),
    ("$/h", "price_per_hour", lambda r: fmt(_num(r, "price_per_hour"))),
    ("req/s", "capacity_req_per_s", lambda r: fmt(_num(r, "capacity_req_per_s"))),
    ("$/h per\nreq/s", "dollar_per_req_per_s", lambda r: fmt(_num(r, "dollar_per_req_per_s"))),
    ("TTFT\np90 s", "ttft_p90_s", lambda r: fmt(_num(r, "ttft_p90_s"))),
    ("TPOT\np90 ms", "tpot_p90_s", lambda r: fmt(_num(r, "tpot_p90_s") * 1e3)),
    ("P", "pareto", lambda r: "★" if r.get("pareto") else ""),
)


def _workflow_e2e_p90_s(r: Row) -> float:
    """A workflow plan's candidate: the 90th-percentile workflow latency at its capacity (the
    probe at that rate), NaN without one."""
    cap = _num(r, "capacity_req_per_s")
    try:
        probes = json.loads(str(r.get("workflow_probes") or "[]"))
    except ValueError:
        return math.nan
    at = [p for p in probes if math.isclose(p.get("rate_per_s", math.nan), cap, rel_tol=1e-9)]
    return float(at[0].get("e2e_p90_s", math.nan)) if at else math.nan


# A workflow plan ranks by workflows per second meeting their end-to-end SLOs: its columns say
# so, with the workflows' latency tail in place of the per-request TTFT and TPOT.
TERMINAL_WORKFLOW_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    *TERMINAL_COLUMNS[:4],
    ("wf/s", "capacity_req_per_s", lambda r: fmt(_num(r, "capacity_req_per_s"))),
    ("$/h per\nwf/s", "dollar_per_req_per_s", lambda r: fmt(_num(r, "dollar_per_req_per_s"))),
    ("E2E\np90 s", "workflow_probes", lambda r: fmt(_workflow_e2e_p90_s(r))),
    TERMINAL_COLUMNS[-1],
)
TERMINAL_MISS_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("deployment", "label", lambda r: str(r.get("label", ""))),
    ("GPUs", "devices", lambda r: str(r.get("devices", ""))),
    ("best\nattain.", "probes", lambda r: _pct(_best_attainment(r))),
    ("TTFT\np90 s", "ttft_p90_s", lambda r: fmt(_num(r, "ttft_p90_s"))),
    ("TPOT\np90 ms", "tpot_p90_s", lambda r: fmt(_num(r, "tpot_p90_s") * 1e3)),
    ("why", "reason", lambda r: str(r.get("reason", ""))),
)
_WRAPPED = ("deployment", "why")


def is_workflow_plan(result: PlanResult) -> bool:
    """Whether the plan ranks workflows (their rate and SLO) rather than requests."""
    return getattr(result.spec, "workflows", None) is not None


def terminal_table(result: PlanResult, top: int = 10) -> Table:
    """A rich Table of the top candidates (or the closest misses when nothing is feasible),
    readable at 80 columns: few columns, the label wrapped rather than cut."""
    feasible = bool(result.feasible)
    workflows = is_workflow_plan(result)
    if feasible:
        what = "workflow goodput" if workflows else "goodput"
        title = f"top deployments by {what} per $/hour (one replica; P = Pareto-optimal)"
        cols = TERMINAL_WORKFLOW_COLUMNS if workflows else TERMINAL_COLUMNS
    else:
        title = "no candidate meets the SLO: the closest misses"
        cols = TERMINAL_MISS_COLUMNS
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    rows = _leaders(result, top)
    for name, _, get in cols:
        if name in _WRAPPED:
            table.add_column(name, justify="left", overflow="fold", ratio=1, min_width=14)
        else:
            widest = max([len(get(r)) for r in rows] + [len(x) for x in name.split("\n")])
            table.add_column(name, justify="right", no_wrap=True, min_width=widest)
    for r in rows:
        table.add_row(*(get(r) for _, _, get in cols))
    notes = [f"P: on the Pareto front of {pareto_words(workflows)}"] if feasible else []
    if result.pruned_by_rule:
        notes.append(
            "pruned: "
            + ", ".join(f"{n} by {rule}" for rule, n in sorted(result.pruned_by_rule.items()))
        )
    if notes:
        table.caption = "\n".join(notes)
    return table
