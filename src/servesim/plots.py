"""Self-contained SVG plots (no plotting library): empirical CDFs of latencies, side by side.

An SVG opens in any browser and diffs as text; `cdf_svg` draws one panel per metric with one
step line per run, on a shared linear axis in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
PANEL_W, PANEL_H = 360, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 52, 14, 30, 40


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 times 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks = []
    x = start
    while x <= hi + 1e-9 * step:
        ticks.append(round(x, 12))
        x += step
    return ticks


def _fmt(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e5 else f"{x:.2e}"


def _panel(title: str, runs: dict[str, np.ndarray], ox: float, oy: float) -> list[str]:
    """SVG elements of one CDF panel whose top-left corner is (ox, oy)."""
    out = [f'<g transform="translate({ox:.1f},{oy:.1f})">']
    out.append(
        f'<text x="{PANEL_W / 2:.0f}" y="18" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>'
    )
    vals = {k: np.sort(v[np.isfinite(v)]) * 1e3 for k, v in runs.items()}
    vals = {k: v for k, v in vals.items() if len(v)}
    w = PANEL_W - MARGIN_L - MARGIN_R
    h = PANEL_H - MARGIN_T - MARGIN_B
    x0, y0 = MARGIN_L, MARGIN_T
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
    if not vals:
        out.append(f'<text x="{x0 + w / 2}" y="{y0 + h / 2}" text-anchor="middle">no data</text>')
        return [*out, "</g>"]
    lo = 0.0
    hi = max(float(np.percentile(v, 99.5)) for v in vals.values()) * 1.05 or 1.0
    ticks = nice_ticks(lo, hi)
    hi = max(hi, ticks[-1])

    def sx(v: float) -> float:
        return x0 + w * (min(v, hi) - lo) / (hi - lo)

    def sy(q: float) -> float:
        return y0 + h * (1.0 - q)

    for t in ticks:
        out.append(
            f'<line x1="{sx(t):.1f}" y1="{y0 + h}" x2="{sx(t):.1f}" y2="{y0}" stroke="#eee"/>'
            f'<text x="{sx(t):.1f}" y="{y0 + h + 14}" text-anchor="middle" '
            f'font-size="10">{_fmt(t)}</text>'
        )
    for q in (0.0, 0.5, 0.9, 1.0):
        out.append(
            f'<line x1="{x0}" y1="{sy(q):.1f}" x2="{x0 + w}" y2="{sy(q):.1f}" stroke="#eee"/>'
            f'<text x="{x0 - 4}" y="{sy(q) + 3:.1f}" text-anchor="end" font-size="10">{q:g}</text>'
        )
    out.append(
        f'<text x="{x0 + w / 2}" y="{PANEL_H - 6}" text-anchor="middle" font-size="11">ms</text>'
    )
    for i, (_, v) in enumerate(vals.items()):
        n = len(v)
        pts = [f"{sx(float(v[0])):.1f},{sy(0.0):.1f}"]
        step = max(1, n // 800)  # at most ~800 steps per line keeps the file small
        for j in range(0, n, step):
            x = sx(float(v[j]))
            pts.append(f"{x:.1f},{sy(j / n):.1f}")
            pts.append(f"{x:.1f},{sy((j + 1) / n):.1f}")
        pts.append(f"{sx(float(v[-1])):.1f},{sy(1.0):.1f}")
        colour = COLOURS[i % len(COLOURS)]
        out.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
        )
    return [*out, "</g>"]


def cdf_svg(
    panels: Sequence[tuple[str, dict[str, np.ndarray]]], path: str | Path, title: str = ""
) -> Path:
    """Write one CDF panel per (title, {run label: seconds}) to an SVG file; returns the path."""
    labels: list[str] = []
    for _, runs in panels:
        labels += [k for k in runs if k not in labels]
    cols = min(2, max(1, len(panels)))
    rows = math.ceil(len(panels) / cols)
    legend_h = 24 + 16 * len(labels)
    width = cols * PANEL_W
    height = rows * PANEL_H + legend_h + (24 if title else 0)
    top = 24 if title else 0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        out.append(
            f'<text x="{width / 2}" y="17" text-anchor="middle" font-size="14">'
            f"{escape(title)}</text>"
        )
    for i, (name, runs) in enumerate(panels):
        out += _panel(name, runs, (i % cols) * PANEL_W, top + (i // cols) * PANEL_H)
    ly = top + rows * PANEL_H + 8
    for i, label in enumerate(labels):
        y = ly + 16 * i
        colour = COLOURS[i % len(COLOURS)]
        out.append(
            f'<line x1="{MARGIN_L}" y1="{y + 8}" x2="{MARGIN_L + 24}" y2="{y + 8}" '
            f'stroke="{colour}" stroke-width="2"/>'
            f'<text x="{MARGIN_L + 30}" y="{y + 12}" font-size="11">{escape(label)}</text>'
        )
    out.append("</svg>")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(out) + "\n", encoding="utf-8")
    return p
