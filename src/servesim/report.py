"""A plan's report: a self-contained HTML page with inline SVG plots, and a terminal table.

The page needs nothing from the network (inline CSS, SVG drawn here, no scripts or fonts), so it
opens offline and can be mailed around. Every plot is an `<svg class="plot" data-kind=...
data-points=N>` whose data are `circle.pt`, `path.series` or `rect.bar` elements, so a test or a
reader can check that it shows data. Hovering a point shows its candidate.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from servesim.ranking import pareto_front

if TYPE_CHECKING:
    from servesim.plan import PlanResult

Row = dict[str, Any]

W, H = 560, 330  # one plot's size in CSS pixels
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 46
PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2")
GREY = "#b8bcc2"
FRONT = "#2563eb"
WINNER = "#ea580c"
MEMORY_SEGMENTS = (
    ("weights_gb", "weights", "#2563eb"),
    ("kv_gb", "KV cache", "#16a34a"),
    ("reserve_gb", "activations + reserve", "#f59e0b"),
)


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
    try:
        probes = json.loads(row.get("probes") or "[]")
    except (TypeError, ValueError):
        return []
    return sorted(probes, key=lambda p: p["rate_per_s"])


def _quantiles(row: Row, key: str) -> list[float]:
    try:
        return [float(v) for v in json.loads(row.get(key) or "[]")]
    except (TypeError, ValueError):
        return []


# ---- scales and the plot frame -------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps data values in [lo, hi] (linear or log10) onto pixels a→b."""

    lo: float
    hi: float
    log: bool
    a: float
    b: float

    def __call__(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            t = math.log10(v / self.lo) / math.log10(self.hi / self.lo)
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        return self.a + t * (self.b - self.a)

    def ticks(self) -> list[float]:
        """Round tick values inside the range."""
        if self.log:
            k0, k1 = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            for mults in ((1,), (1, 3), (1, 2, 5)):
                t = [m * 10.0**k for k in range(k0, k1 + 1) for m in mults]
                t = [v for v in t if self.lo <= v <= self.hi]
                if len(t) >= 3:
                    return t
            return t
        step = _nice((self.hi - self.lo) / 5)
        first = math.ceil(self.lo / step - 1e-9) * step
        n = int((self.hi - first) / step + 1e-9) + 1
        return [round(first + i * step, 12) for i in range(max(0, n))]


def _nice(x: float) -> float:
    if x <= 0 or not _fin(x):
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if x <= m * e:
            return m * e
    return 10 * e


def scale(
    values: Sequence[float],
    a: float,
    b: float,
    log: bool | None = None,
    zero: bool = False,
    bounds: tuple[float, float] | None = None,
) -> Scale:
    """A scale covering the finite values (log when they span more than ~30× and are positive)."""
    vals = [v for v in values if _fin(v)]
    if bounds is not None:
        return Scale(bounds[0], bounds[1], False, a, b)
    if not vals:
        return Scale(0.0, 1.0, False, a, b)
    lo, hi = min(vals), max(vals)
    if log is None:
        log = lo > 0 and hi / lo > 30
    if log and lo > 0:
        return Scale(lo / 1.25, hi * 1.25, True, a, b)
    if zero:
        lo = min(lo, 0.0)
    span = hi - lo
    pad = 0.07 * span if span > 0 else (abs(hi) * 0.1 or 1.0)
    lo = lo if zero and lo == 0 else lo - pad
    if not zero and min(vals) >= 0:
        lo = max(lo, 0.0)
    return Scale(lo, hi + pad, False, a, b)


def _xy_scales(
    xs: Sequence[float], ys: Sequence[float], width: int = W, **ykw: Any
) -> tuple[Scale, Scale]:
    return scale(xs, PAD_L, width - PAD_R), scale(ys, H - PAD_B, PAD_T, **ykw)


def _frame(
    kind: str,
    xs: Scale,
    ys: Scale,
    xlabel: str,
    ylabel: str,
    body: list[str],
    points: int,
    legend: Sequence[tuple[str, str, str]] = (),
    width: int = W,
    tick: Callable[[float], str] | None = None,
    ytick: Callable[[float], str] | None = None,
) -> str:
    """An SVG plot: grid, tick labels, axis labels, the data `body` and a legend."""
    x0, x1, y0, y1 = PAD_L, width - PAD_R, PAD_T, H - PAD_B
    tick, ytick = tick or _tick, ytick or _tick
    out = [
        f'<svg class="plot" data-kind="{kind}" data-points="{points}" viewBox="0 0 {width} {H}" '
        f'width="{width}" height="{H}" role="img">'
    ]
    for t in xs.ticks():
        x = xs(t)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{y1 + 16}" text-anchor="middle">')
        out.append(f"{_esc(tick(t))}</text>")
    for t in ys.ticks():
        y = ys(t)
        out.append(f'<line class="grid" x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">')
        out.append(f"{_esc(ytick(t))}</text>")
    out.append(f'<rect class="axes" x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}"/>')
    xl = xlabel + (" (log scale)" if xs.log else "")
    yl = ylabel + (" (log)" if ys.log else "")
    out.append(f'<text class="label" x="{(x0 + x1) / 2}" y="{H - 8}" text-anchor="middle">')
    out.append(f"{_esc(xl)}</text>")
    cy = (y0 + y1) / 2
    out.append(
        f'<text class="label" x="14" y="{cy}" text-anchor="middle" '
        f'transform="rotate(-90 14 {cy})">{_esc(yl)}</text>'
    )
    out.extend(body)
    out.append("</svg>")
    return "".join(out) + _legend(legend)


def _legend(items: Sequence[tuple[str, str, str]]) -> str:
    """An HTML legend under a plot: (name, colour, 'line' | 'dot' | 'ring')."""
    spans = "".join(
        f'<span><i class="{shape}" style="--c:{color}"></i>{_esc(name)}</span>'
        for name, color, shape in items
    )
    return f'<div class="legend">{spans}</div>' if items else ""


def _tick(v: float) -> str:
    return f"{v:.4g}"


def _card(title: str, svg: str, note: str = "") -> str:
    extra = f'<p class="note">{note}</p>' if note else ""
    return f'<figure class="card"><figcaption>{_esc(title)}</figcaption>{svg}{extra}</figure>'


def _empty(kind: str, title: str, why: str) -> str:
    svg = (
        f'<svg class="plot empty" data-kind="{kind}" data-points="0" viewBox="0 0 {W} 80" '
        f'width="{W}" height="80">'
        f'<text class="label" x="{W / 2}" y="44" text-anchor="middle">{_esc(why)}</text></svg>'
    )
    return _card(title, svg)


# ---- plots ---------------------------------------------------------------------------------


def _ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.get("status") == "ok"]


def pareto_plot(
    rows: list[Row],
    x: str,
    y: str,
    y_sense: str,
    title: str,
    xlabel: str,
    ylabel: str,
    winner: Row | None = None,
    y_factor: float = 1.0,
) -> str:
    """All feasible candidates in (x, y); the 2-D front highlighted, dominated ones grey."""
    kind = f"pareto:{x}:{y}"
    pts = [r for r in _ok(rows) if _fin(_num(r, x)) and _fin(_num(r, y))]
    if not pts:
        return _empty(kind, title, "no feasible candidate to plot")
    clean = [{**r, x: _num(r, x), y: _num(r, y)} for r in pts]
    front = pareto_front(clean, x, y, "min", y_sense)
    keys = {r["key"] for r in front}
    xs, ys = _xy_scales([r[x] for r in clean], [r[y] * y_factor for r in clean])
    body: list[str] = []
    if front:
        p = [(xs(r[x]), ys(r[y] * y_factor)) for r in front]
        d = f"M{p[0][0]:.1f},{p[0][1]:.1f}" + "".join(f" H{a:.1f} V{b:.1f}" for a, b in p[1:])
        body.append(f'<path class="series front-line" d="{d}" stroke="{FRONT}"/>')
    order = sorted(clean, key=lambda r: (r["key"] in keys, int(r.get("rank") or 0)))
    placed: list[tuple[float, float]] = []
    for r in order:
        on = r["key"] in keys
        cx, cy = xs(r[x]), ys(r[y] * y_factor)
        tip = f"#{r.get('rank', '')} {r.get('label', '')}\n{xlabel}: {fmt(r[x])}\n"
        tip += f"{ylabel}: {fmt(r[y] * y_factor)}"
        cls, color, rad = ("pt front", FRONT, 5.5) if on else ("pt dominated", GREY, 4.5)
        body.append(
            f'<circle class="{cls}" cx="{cx:.1f}" cy="{cy:.1f}" r="{rad}" fill="{color}">'
            f"<title>{_esc(tip)}</title></circle>"
        )
        near = any(abs(cx - a) < 22 and abs(cy - b) < 12 for a, b in placed)
        if on and 0 < int(r.get("rank") or 0) <= 3 and not near:
            placed.append((cx, cy))
            body.append(
                f'<text class="pt-label" x="{cx + 8:.1f}" y="{cy - 7:.1f}">#{r["rank"]}</text>'
            )
    if winner is not None and winner.get("key") in {r["key"] for r in clean}:
        w = next(r for r in clean if r["key"] == winner["key"])
        body.append(
            f'<circle class="winner-ring" cx="{xs(w[x]):.1f}" cy="{ys(w[y] * y_factor):.1f}" '
            f'r="9" stroke="{WINNER}"/>'
        )
    legend = [
        ("Pareto front", FRONT, "dot"),
        ("dominated", GREY, "dot"),
        ("winner", WINNER, "ring"),
    ]
    svg = _frame(kind, xs, ys, xlabel, ylabel, body, len(clean), legend)
    note = (
        f"{len(clean)} feasible candidates, {len(front)} on this front; "
        "#k: rank by goodput per $/h. Hover a point for its candidate."
    )
    return _card(title, svg, note)


def cdf_plot(
    rows: list[Row],
    key: str,
    slo_s: float,
    target: float,
    title: str,
    xlabel: str,
    x_factor: float = 1.0,
    note: str = "At each candidate's capacity (the highest rate meeting the target).",
) -> str:
    """Latency CDFs (50 quantiles each) of the given candidates, with the SLO and the target."""
    kind = f"cdf:{key}"
    series = [(r, [v * x_factor for v in q]) for r in rows if (q := _quantiles(r, key))]
    slo_s *= x_factor
    if not series:
        return _empty(kind, title, "no latency distribution recorded")
    allv = [v for _, q in series for v in q if v > 0] + [slo_s]
    xs, ys = _xy_scales(allv, [0.0, 1.0], bounds=(0.0, 1.0))
    body = []
    n = 0
    legend = []
    for i, (r, q) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        probs = [j / (len(q) - 1) for j in range(len(q))] if len(q) > 1 else [1.0]
        pts = [(xs(max(v, xs.lo)), ys(p)) for v, p in zip(q, probs, strict=True)]
        d = "M" + " L".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        name = str(r.get("label", ""))
        body.append(
            f'<path class="series" data-n="{len(q)}" d="{d}" stroke="{color}">'
            f"<title>{_esc(name)}</title></path>"
        )
        n += len(q)
        legend.append((_short(r), color, "line"))
    sx = xs(slo_s)
    body.append(f'<line class="slo" x1="{sx:.1f}" y1="{PAD_T}" x2="{sx:.1f}" y2="{H - PAD_B}"/>')
    body.append(f'<text class="slo-label" x="{sx + 4:.1f}" y="{H - PAD_B - 6}">SLO</text>')
    ty = ys(target)
    body.append(f'<line class="target" x1="{PAD_L}" y1="{ty:.1f}" x2="{W - PAD_R}" y2="{ty:.1f}"/>')
    body.append(
        f'<text class="slo-label" x="{PAD_L + 4}" y="{ty - 4:.1f}">target {target:.0%}</text>'
    )
    svg = _frame(kind, xs, ys, xlabel, "fraction of requests", body, n, legend, ytick=_pct0)
    return _card(title, svg, note)


def _pct0(v: float) -> str:
    return f"{v:.0%}"


def _short(r: Row) -> str:
    par = f"tp{r.get('tp')}" + (f"pp{r['pp']}" if int(r.get("pp") or 1) > 1 else "")
    return f"{r.get('device')} {par} {r.get('engine')} {r.get('max_num_seqs')}/" + str(
        r.get("max_num_batched_tokens")
    )


def rate_plots(rows: list[Row], target: float) -> list[str]:
    """SLO attainment and goodput against offered rate, from each candidate's capacity probes."""
    series = [(r, p) for r in rows if (p := _probes(r))]
    title_a = "SLO attainment vs request rate"
    title_g = "Goodput vs request rate"
    if not series:
        return [
            _empty("rate:attainment", title_a, "no probes"),
            _empty("rate:goodput", title_g, ""),
        ]
    rates = [p["rate_per_s"] for _, ps in series for p in ps]
    good = [p["rate_per_s"] * p["attainment"] for _, ps in series for p in ps]
    out = []
    for kind, title, ylabel, yfun, ys_vals in (
        ("rate:attainment", title_a, "requests meeting both SLOs", _att, [0.0, 1.0]),
        ("rate:goodput", title_g, "goodput (req/s meeting SLOs)", _good, good),
    ):
        xs = scale(rates, PAD_L, W - PAD_R, log=False, zero=True)
        if kind == "rate:attainment":
            ys = scale(ys_vals, H - PAD_B, PAD_T, bounds=(0.0, 1.05))
        else:
            ys = scale(ys_vals, H - PAD_B, PAD_T, log=False, zero=True)
        body: list[str] = []
        legend = []
        n = 0
        if kind == "rate:attainment":
            ty = ys(target)
            body.append(
                f'<line class="target" x1="{PAD_L}" y1="{ty:.1f}" x2="{W - PAD_R}" y2="{ty:.1f}"/>'
            )
            body.append(
                f'<text class="slo-label" x="{W - PAD_R - 4}" y="{ty + 14:.1f}" '
                f'text-anchor="end">target {target:.0%}</text>'
            )
        else:
            a, b = max(xs.lo, ys.lo), min(xs.hi, ys.hi)
            if b > a:
                body.append(
                    f'<line class="target" x1="{xs(a):.1f}" y1="{ys(a):.1f}" x2="{xs(b):.1f}" '
                    f'y2="{ys(b):.1f}"><title>every request meets the SLO</title></line>'
                )
        for i, (r, ps) in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            pts = [(xs(p["rate_per_s"]), ys(yfun(p))) for p in ps]
            d = "M" + " L".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            body.append(f'<path class="series" data-n="{len(ps)}" d="{d}" stroke="{color}"/>')
            for p, (cx, cy) in zip(ps, pts, strict=True):
                tip = (
                    f"{r.get('label', '')}\n{fmt(p['rate_per_s'])} req/s: "
                    f"{p['attainment']:.1%} meet both (TTFT {p['ttft_ok']:.0%}, "
                    f"TPOT {p['tpot_ok']:.0%})"
                )
                body.append(
                    f'<circle class="pt" cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{color}">'
                    f"<title>{_esc(tip)}</title></circle>"
                )
            n += len(ps)
            legend.append((_short(r), color, "line"))
        svg = _frame(
            kind,
            xs,
            ys,
            "offered rate (req/s, one replica)",
            ylabel,
            body,
            n,
            legend,
            ytick=_pct0 if kind == "rate:attainment" else _tick,
        )
        note = (
            "Each point is one simulated probe of the capacity search."
            if kind == "rate:attainment"
            else "Goodput = offered rate × attainment; the dashed diagonal is every request good."
        )
        out.append(_card(title, svg, note))
    return out


def _att(p: dict[str, float]) -> float:
    return p["attainment"]


def _good(p: dict[str, float]) -> float:
    return p["rate_per_s"] * p["attainment"]


def memory_plot(rows: list[Row], width: int = 2 * W + 24) -> str:
    """Per-device memory of each candidate: weights, KV cache, reserve and what is left."""
    kind = "memory"
    rows = [r for r in rows if _fin(_num(r, "device_gb"))]
    if not rows:
        return _empty(kind, "Memory layout per device", "no memory layout recorded")
    lane = 46
    height = PAD_T + lane * len(rows) + 4
    x0, x1 = 24, width - 330
    top = max(_num(r, "device_gb") for r in rows)
    sx = Scale(0.0, top, False, x0, x1)
    out = [
        f'<svg class="plot" data-kind="{kind}" data-points="{len(rows)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img">'
    ]
    for i, r in enumerate(rows):
        y = PAD_T + i * lane
        out.append(
            f'<text class="bar-label" x="{x0}" y="{y + 11}">#{r.get("rank") or "–"} '
            f"{_esc(r.get('label', ''))}</text>"
        )
        at = 0.0
        for key, name, color in MEMORY_SEGMENTS:
            v = _num(r, key)
            if not _fin(v) or v <= 0:
                continue
            xa, xb = sx(at), sx(at + v)
            out.append(
                f'<rect class="bar seg-{key[:-3]}" x="{xa:.1f}" y="{y + 16}" '
                f'width="{max(xb - xa, 0.5):.1f}" height="20" fill="{color}">'
                f"<title>{_esc(name)}: {fmt(v)} GB</title></rect>"
            )
            if xb - xa > 44:
                out.append(
                    f'<text class="bar-value" x="{(xa + xb) / 2:.1f}" y="{y + 30}" '
                    f'text-anchor="middle">{fmt(v)} GB</text>'
                )
            at += v
        dev = _num(r, "device_gb")
        if dev > at:
            out.append(
                f'<rect class="bar seg-free" x="{sx(at):.1f}" y="{y + 16}" '
                f'width="{sx(dev) - sx(at):.1f}" height="20" fill="#e5e7eb">'
                f"<title>outside the engine's memory fraction: {fmt(dev - at)} GB</title></rect>"
            )
        out.append(
            f'<rect class="bar-outline" x="{x0}" y="{y + 16}" width="{sx(dev) - x0:.1f}" '
            'height="20"/>'
        )
        stats = (
            f"{fmt(dev)} GB/device · busy {_pct(_num(r, 'utilisation'))} · "
            f"KV used {_pct(_num(r, 'mean_kv_use'))}"
        )
        out.append(f'<text class="bar-stats" x="{x1 + 10}" y="{y + 31}">{_esc(stats)}</text>')
    out.append("</svg>")
    unused = ("", "unused (outside the memory fraction)", "#e5e7eb")
    out.append(_legend([(name, color, "box") for _, name, color in (*MEMORY_SEGMENTS, unused)]))
    note = (
        "Predicted per-device memory of one replica at its KV cache sizing; busy = fraction of "
        "time an iteration runs, KV used = mean share of the KV cache holding context (both at "
        "capacity)."
    )
    return _card("Memory layout per device and utilisation", "".join(out), note)


# ---- page sections -------------------------------------------------------------------------


def _question(result: PlanResult) -> str:
    s = result.spec
    w = s.workload
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
        f"for at least {s.target:.0%} of requests</dd>"
        f"<dt>Traffic to serve</dt><dd>{rate}</dd>"
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
    att = f" (best attainment {best['attainment']:.0%})" if best else ""
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
    facts = [
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


def _candidates_table(rows: list[Row], top: int, feasible: bool = True) -> str:
    columns = TABLE_COLUMNS if feasible else MISS_COLUMNS
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
figure svg{max-width:100%;height:auto;display:block}
.note{color:#59636e;font-size:12px;margin:6px 4px 0}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px;margin:4px 6px 0}
.legend i{display:inline-block;margin-right:6px;vertical-align:middle;width:10px;height:10px}
.legend i.dot{border-radius:50%;background:var(--c)}
.legend i.ring{border-radius:50%;border:2.5px solid var(--c);width:7px;height:7px}
.legend i.line{width:18px;height:3px;background:var(--c)}
.legend i.box{width:12px;height:12px;background:var(--c)}
svg .grid{stroke:#eceef1;stroke-width:1}
svg .axes{fill:none;stroke:#9aa1a9}
svg .tick{font-size:11px;fill:#59636e}
svg .label{font-size:12px;fill:#1f2328}
svg .pt-label{font-size:11px;fill:#1e40af;font-weight:600}
svg .series{fill:none;stroke-width:2.2}
svg .front-line{stroke-width:1.6;opacity:.7}
svg .pt{stroke:#fff;stroke-width:1}
svg .winner-ring{fill:none;stroke-width:2.5}
svg .slo{stroke:#dc2626;stroke-width:1.5;stroke-dasharray:5 4}
svg .target{stroke:#6b7280;stroke-width:1.2;stroke-dasharray:3 3}
svg .slo-label{font-size:11px;fill:#b91c1c}
svg .bar-label{font-size:12px;fill:#1f2328}
svg .bar-value{font-size:11px;fill:#fff;font-weight:600}
svg .bar-stats{font-size:12px;fill:#374151}
svg .bar-outline{fill:none;stroke:#9aa1a9}
"""


def report_html(result: PlanResult, top: int = 15) -> str:
    """The whole report as one HTML string (inline CSS and SVG, no scripts, no network)."""
    spec = result.spec
    winner = result.winner
    rows = result.rows
    feasible = result.feasible
    shown = feasible if feasible else _leaders(result, top)
    pareto = [
        pareto_plot(
            rows,
            "dollar_per_req_per_s",
            "ttft_p90_s",
            "min",
            "Cost vs TTFT p90",
            "$/h per req/s",
            "TTFT p90 (s)",
            winner,
        ),
        pareto_plot(
            rows,
            "dollar_per_req_per_s",
            "tpot_p90_s",
            "min",
            "Cost vs TPOT p90",
            "$/h per req/s",
            "TPOT p90 (ms)",
            winner,
            y_factor=1e3,
        ),
        pareto_plot(
            rows,
            "dollar_per_req_per_s",
            "joules_per_token",
            "min",
            "Cost vs energy",
            "$/h per req/s",
            "energy (J per output token)",
            winner,
        ),
        pareto_plot(
            rows,
            "dollar_per_req_per_s",
            "goodput_per_gpu",
            "max",
            "Goodput per GPU vs cost",
            "$/h per req/s",
            "goodput per GPU (req/s)",
            winner,
        ),
    ]
    pair = _leaders(result, 2)
    when = (
        "At each candidate's capacity (the highest rate meeting the target)."
        if feasible
        else "At each candidate's lightest probed rate (where it came nearest the SLO)."
    )
    cdfs = [
        cdf_plot(pair, "ttft_cdf_s", spec.slo.ttft_s, spec.target, "TTFT", "TTFT (s)", note=when),
        cdf_plot(
            pair,
            "tpot_cdf_s",
            spec.slo.tpot_s,
            spec.target,
            "TPOT",
            "TPOT (ms)",
            x_factor=1e3,
            note=when,
        ),
    ]
    latency_title = (
        "Latency distributions: the winner and the runner-up"
        if feasible
        else "Latency distributions: the closest misses"
    )
    leaders = _leaders(result, 5)
    title = f"servesim plan: {spec.model}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        '<p class="sub">Which deployment meets the latency SLO at the lowest cost, predicted by '
        "simulating each candidate under the workload at increasing rates.</p>",
        _question(result),
        _answer(result),
        '<section id="candidates"><h2>Top candidates</h2>',
        '<p class="note">Ranked by goodput per $/h (one replica at its capacity); ★ = on the '
        "Pareto front of cost, TTFT, TPOT, goodput per GPU and energy.</p>"
        if feasible
        else '<p class="note">Nothing is feasible; the closest misses are listed.</p>',
        _candidates_table(shown, top, bool(feasible)),
        _infeasible_table(rows),
        _pruned_table(result),
        "</section>",
        '<section id="pareto"><h2>Pareto fronts</h2>',
        '<p class="note">Every feasible candidate is drawn; those on the front of the two '
        "objectives shown are blue, the dominated grey.</p>",
        f'<div class="grid2">{"".join(pareto)}</div></section>',
        f'<section id="latency"><h2>{latency_title}</h2>',
        f'<div class="grid2">{"".join(cdfs)}</div></section>',
        '<section id="rates"><h2>Goodput and attainment vs rate (top candidates)</h2>',
        f'<div class="grid2">{"".join(rate_plots(leaders, spec.target))}</div></section>',
        '<section id="memory"><h2>Memory layout</h2>',
        memory_plot(_leaders(result, 8)),
        "</section>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


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
TERMINAL_MISS_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("deployment", "label", lambda r: str(r.get("label", ""))),
    ("GPUs", "devices", lambda r: str(r.get("devices", ""))),
    ("best\nattain.", "probes", lambda r: _pct(_best_attainment(r))),
    ("TTFT\np90 s", "ttft_p90_s", lambda r: fmt(_num(r, "ttft_p90_s"))),
    ("TPOT\np90 ms", "tpot_p90_s", lambda r: fmt(_num(r, "tpot_p90_s") * 1e3)),
    ("why", "reason", lambda r: str(r.get("reason", ""))),
)
_WRAPPED = ("deployment", "why")


def terminal_table(result: PlanResult, top: int = 10) -> Table:
    """A rich Table of the top candidates (or the closest misses when nothing is feasible),
    readable at 80 columns: few columns, the label wrapped rather than cut."""
    feasible = bool(result.feasible)
    if feasible:
        title = "top deployments by goodput per $/hour (one replica; P = Pareto-optimal)"
        cols = TERMINAL_COLUMNS
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
    if result.pruned_by_rule:
        table.caption = "pruned: " + ", ".join(
            f"{n} by {rule}" for rule, n in sorted(result.pruned_by_rule.items())
        )
    return table
