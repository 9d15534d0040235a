"""What the commands print: a run's summary as a table (simulated-only figures left out for a
real server's run), on a console without markup (paths and labels come from the user).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

# No markup: paths, labels and names come from the user and may hold [brackets].
console = Console(markup=False, emoji=False)


def _fmt_ms(x: float) -> str:
    return f"{x * 1e3:,.1f}" if x == x else "-"


SIMULATED_ONLY = ("queue_s", "mean_batch_size", "mean_kv_use", "preemptions", "devices")


def print_workflows(report: dict[str, Any]) -> None:
    """A table of per-workflow end-to-end latency and SLO attainment."""
    t = Table(title=f"workflows: {report['workflows']:,} instances, {report['llm_calls']:,} calls")
    for col in ("workflow", "instances", "E2E p50 (s)", "E2E p90 (s)", "SLO (s)", "within SLO"):
        t.add_column(col, justify="left" if col == "workflow" else "right")
    for name, r in report["by_workflow"].items():
        t.add_row(
            name,
            f"{r['workflows']:,}",
            f"{r['e2e_p50_s']:.2f}",
            f"{r['e2e_p90_s']:.2f}",
            f"{r['slo_s']:g}",
            f"{r['slo_attainment']:.1%}",
        )
    console.print(t)


def print_summary(summary: dict[str, Any], simulated: bool = True) -> None:
    """A rich table of a run's summary; a measured run (`simulated=False`) omits the rows
    only a simulation knows (batch size, KV use, preemptions, devices, energy)."""
    head = Table(
        title=Text(f"servesim: {summary.get('deployment', '')} — {summary.get('workload', '')}")
    )
    head.add_column("metric")
    for col in ("mean", "p50", "p90", "p99"):
        head.add_column(f"{col} (ms)", justify="right")
    for key, label in (
        ("ttft_s", "TTFT"),
        ("tpot_s", "TPOT"),
        ("itl_s", "inter-token"),
        ("e2e_s", "E2E"),
        ("queue_s", "queueing"),
    ):
        st = summary.get(key)
        if st and (simulated or key not in SIMULATED_ONLY):
            head.add_row(label, *(_fmt_ms(st[c]) for c in ("mean", "p50", "p90", "p99")))
    console.print(head)
    slo = summary["slo"]
    facts = Table(show_header=False)
    facts.add_column("what")
    facts.add_column("value", justify="right")
    rows = [
        ("requests finished", f"{summary['finished']:,} / {summary['requests']:,}"),
        ("duration", f"{summary['duration_s']:,.1f} s"),
        ("throughput", f"{summary['throughput_req_per_s']:.2f} req/s"),
        ("output tokens/s", f"{summary['throughput_output_tok_per_s']:,.0f}"),
        (
            f"SLO attainment (TTFT ≤ {slo['ttft_s']:g} s, TPOT ≤ {slo['tpot_s'] * 1e3:g} ms)",
            f"{summary['slo_attainment']:.1%}",
        ),
        ("goodput", f"{summary['goodput_req_per_s']:.2f} req/s"),
    ]
    if simulated:
        rows += [
            ("mean batch size", f"{summary.get('mean_batch_size', 0):.1f}"),
            ("mean KV-cache use", f"{summary.get('mean_kv_use', 0):.1%}"),
            ("preemptions", f"{summary['preemptions']:,}"),
            (
                "devices / $ per hour",
                f"{summary.get('devices', 0)} / ${summary.get('price_per_hour', 0):.2f}",
            ),
            ("energy per output token", f"{summary.get('joules_per_output_token', 0):.2f} J"),
        ]
    if simulated and "overlap_scheduling" in summary:
        loop = "overlapped" if summary["overlap_scheduling"] else "synchronous"
        rows.append(("engine loop", f"{loop}, ≤ {summary['max_num_seqs']:,} sequences"))
    if simulated and summary.get("latency_provenance"):
        rows.append(
            (
                f"kernel times ({summary.get('latency_model', '')} model)",
                provenance_text(summary["latency_provenance"])
                + (
                    "; roofline from the measured efficiencies of "
                    + ", ".join(summary["twin_gpus"])
                    if summary.get("twin_gpus")
                    else ""
                ),
            )
        )
    if "sim_wall_s" in summary:
        rows.append(("simulation wall time", f"{summary['sim_wall_s']:.2f} s"))
    for a, b in rows:
        facts.add_row(a, b)
    console.print(facts)


def provenance_text(counts: dict[str, int]) -> str:
    """Shares of priced operator shapes by where their time came from, e.g. "62% interpolated,
    38% roofline" (measured, interpolated, extrapolated from a measured point, roofline)."""
    total = sum(counts.values())
    if not total:
        return "-"
    return ", ".join(f"{n / total:.0%} {k}" for k, n in counts.items() if n)
