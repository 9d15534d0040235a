"""`servesim calibrate`: fit kernel efficiencies to measured tables and write the fit JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from servesim.cli import settings as config
from servesim.cli.output import console
from servesim.cli.settings import (
    NonEmpty,
    Settings,
)
from servesim.errors import ServesimError
from servesim.spec.devices import catalog


class CalibrateSettings(Settings):
    """Everything `servesim calibrate` reads."""

    tables: NonEmpty
    vidur: NonEmpty | None = None
    device: NonEmpty
    devices: NonEmpty | None = None
    out: NonEmpty


def add_calibrate_parser(sub: Any) -> None:
    """Add `calibrate` to servesim's subcommand parsers."""
    cal = sub.add_parser("calibrate", help="fit kernel efficiencies to measured tables")
    cal.add_argument("--config", help="YAML/JSON file with any of these settings")
    cal.add_argument("--tables", help="folder of aiconfigurator-format CSVs (required)")
    cal.add_argument("--vidur", help="folder of Vidur profiling CSVs (compute/, network/)")
    cal.add_argument("--device", help="the device the tables were measured on (required)")
    cal.add_argument("--devices", help="extra device catalog YAML")
    cal.add_argument("--out", help="where to write the fit JSON (required)")


def is_fit_file(path: Path) -> bool:
    """Whether `path` holds a kernel fit servesim wrote (so it may be replaced)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return False  # a device, a pipe or something far larger than a fit
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and set(doc) == {"fitted_on", "params"}


def save_fit(fit: Any, out: Path, name: str) -> None:
    """Write a fit atomically (a failed write leaves any earlier fit whole)."""
    with config.writing(out, name):
        config.replace_atomically(out, fit.save)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit kernel efficiencies to measurement tables and save them."""
    from servesim.predictor.calibrate import calibrate_from_dir

    s = config.settings(CalibrateSettings, args)
    out = config.check_out_file(s.out, s.spell("out"), ours=is_fit_file)
    device = catalog(s.devices).get(s.device)
    tables = Path(s.tables)
    if not tables.is_dir():
        raise ServesimError(
            f"{s.spell('tables')} {s.tables!r} is not a folder of measurement CSVs."
        )
    with config.utf8_tables(s.spell("tables"), s.tables):
        fit = calibrate_from_dir(tables, device, Path(s.vidur) if s.vidur else None)
    save_fit(fit, out, s.spell("out"))
    console.print(f"wrote {out} ({fit.fitted_on})")
    return 0
