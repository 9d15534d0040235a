"""`servesim devices` and `servesim models`: the device catalog and the bundled model configs."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table
from rich.text import Text

from servesim.cli.output import console
from servesim.errors import ServesimError
from servesim.spec.devices import catalog


def add_catalog_parsers(sub: Any) -> None:
    """Add `devices` and `models` to servesim's subcommand parsers."""
    dev = sub.add_parser("devices", help="list the device catalog")
    dev.add_argument("--devices", help="extra device catalog YAML")
    dev.add_argument(
        "--tables",
        action="store_true",
        help="also the measured kernel collections per GPU and engine (the releases "
        "--engine-version can name)",
    )
    mod = sub.add_parser("models", help="list the bundled model configs")
    mod.add_argument(
        "--all",
        action="store_true",
        help="also the model configs of the installed aiconfigurator-core (loadable by name)",
    )


def cmd_devices(args: argparse.Namespace) -> int:
    """List the catalog."""
    cat = catalog(args.devices)
    table = Table(title="devices")
    # Memory in GB (10⁹ bytes, as servesim computes) and GiB (nvidia-smi's MiB / 1,024: an H100
    # "80 GB" reports 81,559 MiB = 79.6 GiB = 85.5 GB).
    cols = ("name", "bf16 TFLOP/s", "mem GB", "mem GiB", "HBM GB/s", "link GB/s", "W", "$/h")
    for col in (*cols, "aliases"):
        table.add_column(col, overflow="fold")
    for name in cat.names():
        d = cat.devices[name]
        try:
            tf = d.peak_flops("bf16") / 1e12
            bf16 = f"{tf:,.0f}" if tf >= 10 else f"{tf:.2g}"  # CPUs and phones: 0.33, 5.6
        except ServesimError:
            bf16 = "-"
        table.add_row(
            name,
            bf16,
            f"{d.mem_bytes / 1e9:.1f}",
            f"{d.mem_bytes / 2**30:.1f}",
            f"{d.mem_bw_bytes_per_s / 1e9:,.0f}",
            f"{d.link_bw_bytes_per_s / 1e9:,.0f}",
            f"{d.max_power_w:.0f}",
            f"{d.price_per_hour:.2f}",
            ", ".join(d.aliases),
        )
    console.print(table)
    if getattr(args, "tables", False):
        console.print(collections_table(cat.names()))
    return 0


def collections_table(names: list[str]) -> Table:
    """The measured kernel collections of the catalog's GPUs: per engine, each release and the
    operator families it measured (aiconfigurator-core's installed tables)."""
    from servesim.predictor import kernel_tables

    table = Table(title="measured kernel collections (aiconfigurator-core)")
    for col in ("device", "engine", "release", "families"):
        table.add_column(col, overflow="fold")
    measured = set(kernel_tables.gpus())
    for name in names:
        if name not in measured:
            continue
        for engine, found in kernel_tables.collections(name).items():
            for release, families in found.items():
                table.add_row(name, engine, release, ", ".join(families))
    return table


def cmd_models(args: argparse.Namespace) -> int:
    """List the bundled model configs servesim can use, then those it cannot and why; with
    --all, also aiconfigurator-core's (every name `--model` accepts without a path)."""
    from servesim.spec.model import bundled_models, known_models, load_model

    everything = getattr(args, "all", False)
    names = known_models() if everything else bundled_models()
    table = Table(title="models loadable by name" if everything else "bundled models")
    unusable: list[tuple[str, str]] = []
    rows: list[tuple[str, ...]] = []
    for name in names:
        try:
            m = load_model(name)
        except ServesimError as exc:
            unusable.append((name, str(exc)))
            continue
        rows.append(
            (
                name,
                m.model_type,
                f"{m.num_params() / 1e9:.1f}",
                f"{m.num_active_params() / 1e9:.1f}",
                f"{m.weight_dtype}/{m.expert_dtype}",
                f"{m.kv_bytes_per_token() / 1e3:.1f}",
            )
        )
    # The family names are short words: keep each whole; long model names fold instead.
    family = max((len(r[1]) for r in rows), default=6)
    for col in ("model", "family", "params B", "active B", "weights", "KV kB/tok"):
        table.add_column(col, overflow="fold", min_width=family if col == "family" else None)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if unusable:
        console.print(
            Text.assemble(("not usable", "bold"), " (listed for reference; servesim refuses them):")
        )
        for name, why in unusable:
            console.print(f"  {name}: {why}", highlight=False, soft_wrap=True)
    return 0
