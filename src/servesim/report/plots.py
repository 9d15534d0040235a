"""Interactive plots on Plotly: shared page pieces and the latency CDFs of `servesim compare`.

Pages stay offline: plotly.js is inlined once per page (`plotly_script`) and every figure is a
div plus the call that draws it (`figure_div`, with a stable id, so a page is byte-identical
when written twice). Axes switch to log when their values span more than a decade.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2")
# No "Share chart" button: it would upload the figure to Plotly Cloud; the page stays offline.
CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendChartToCloud"]}
MAX_CDF_POINTS = 1000  # per line: a CDF of 100k requests stays a few kB without visible change


def log_axis(values: Iterable[float]) -> bool:
    """True when the finite values are all positive and span more than one decade."""
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > 10


def axis_type(values: Iterable[float]) -> str:
    """Plotly's axis type for these values: 'log' when they span more than a decade."""
    return "log" if log_axis(values) else "linear"


def plotly_script() -> str:
    """plotly.js as one inline script tag; a page includes it once, before its figures."""
    return (
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f'<script charset="utf-8">{get_plotlyjs()}</script>'
    )


def figure_div(fig: go.Figure, div_id: str) -> str:
    """A figure as a div and its drawing script, without plotly.js (see `plotly_script`)."""
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG, validate=False
    )


def layout(fig: go.Figure, height: int, **kw: object) -> go.Figure:
    """The house style: white template, legend under the plot, tight margins."""
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 16, "t": 28, "b": 40},
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
        hoverlabel={"align": "left"},
        font={"family": 'system-ui, "DejaVu Sans", sans-serif', "size": 12},
        **kw,
    )
    return fig


def ecdf(values: np.ndarray, limit: int = MAX_CDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Sorted finite values and their cumulative fractions, thinned to about `limit` points."""
    v = np.sort(values[np.isfinite(values)])
    p = np.arange(1, len(v) + 1) / max(1, len(v))
    if len(v) > limit:
        keep = np.unique(np.linspace(0, len(v) - 1, limit).round().astype(int))
        v, p = v[keep], p[keep]
    return v, p


def cdf_figure(panels: Sequence[tuple[str, dict[str, np.ndarray]]], title: str = "") -> go.Figure:
    """One CDF panel per (title, {run label: seconds}), one step line per run, x in ms."""
    labels: list[str] = []
    for _, runs in panels:
        labels += [k for k in runs if k not in labels]
    cols = min(2, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = make_subplots(rows, cols, subplot_titles=[name for name, _ in panels] or None)
    shown: set[str] = set()
    for i, (_, runs) in enumerate(panels):
        r, c = i // cols + 1, i % cols + 1
        ms = {k: ecdf(np.asarray(v, dtype=float)) for k, v in runs.items()}
        ms = {k: (v * 1e3, p) for k, (v, p) in ms.items() if len(v)}
        for label, (x, p) in ms.items():
            j = labels.index(label)
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=p,
                    mode="lines",
                    line={"shape": "hv", "color": PALETTE[j % len(PALETTE)], "width": 1.8},
                    name=label,
                    legendgroup=label,
                    showlegend=label not in shown,
                    hovertemplate="%{fullData.name}<br>%{x:.4g} ms: %{y:.1%}<extra></extra>",
                ),
                r,
                c,
            )
            shown.add(label)
        xs = [float(x) for x, _ in ms.values() for x in (x[0], x[-1])]
        fig.update_xaxes(title_text="ms", type=axis_type(xs), row=r, col=c)
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=r, col=c)
    return layout(fig, 300 * rows + 80, title={"text": title, "x": 0.5})


def page(title: str, body: str, css: str = "") -> str:
    """A self-contained HTML page: inline CSS, plotly.js once, then the body."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title><style>{css}</style>\n{plotly_script()}\n"
        f"</head><body>\n{body}\n</body></html>\n"
    )


def cdf_html(
    panels: Sequence[tuple[str, dict[str, np.ndarray]]], path: str | Path, title: str = ""
) -> Path:
    """Write the latency CDFs as a self-contained interactive HTML page; returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = figure_div(cdf_figure(panels, title), "cdf")
    p.write_text(page(title or "latency CDFs", body), encoding="utf-8")
    return p
