"""`servesim calibrate`: a kernel fit for one device, written as JSON for `--fit`.

Two ways: `--shots FILE`, a handful of the user's own kernel measurements (one CSV, see
`predictor.fewshot_transfer.SHOT_COLUMNS` and `examples/shots_l40s.csv`), adapts the bundled
cross-GPU transfer model to the device (few-shot, the default for a GPU without tables;
`--suggest K` writes that CSV with K shapes worth measuring, latency blank); or `--tables DIR`,
full aiconfigurator-format tables, refits the roofline's efficiencies.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pydantic import model_validator

from servesim.cli import settings as config
from servesim.cli.output import console
from servesim.cli.settings import (
    Misuse,
    NonEmpty,
    PosInt,
    Settings,
)
from servesim.errors import ServesimError
from servesim.spec.devices import catalog


class CalibrateSettings(Settings):
    """Everything `servesim calibrate` reads."""

    shots: NonEmpty | None = None
    suggest: PosInt | None = None
    tables: NonEmpty | None = None
    vidur: NonEmpty | None = None
    device: NonEmpty
    devices: NonEmpty | None = None
    out: NonEmpty

    @model_validator(mode="after")
    def _one_source(self) -> CalibrateSettings:
        if sum(self.given(k) for k in ("shots", "suggest", "tables")) != 1:
            raise Misuse(
                "Give exactly one of {shots} FILE (a few kernel measurements: few-shot), "
                "{suggest} K (which K kernels to measure, written to {out}) or {tables} DIR "
                "(full measurement tables)."
            )
        if self.given("vidur") and not self.given("tables"):
            raise Misuse("{vidur} adds to {tables}; give {tables} DIR with it.")
        return self


def add_calibrate_parser(sub: Any) -> None:
    """Add `calibrate` to servesim's subcommand parsers."""
    cal = sub.add_parser(
        "calibrate", help="a kernel fit for one device from a few measurements or full tables"
    )
    cal.add_argument("--config", help="YAML/JSON file with any of these settings")
    cal.add_argument(
        "--shots",
        help="CSV of a few kernel measurements of the device (few-shot): columns op, "
        "latency_ms and the op's shape, see examples/shots_l40s.csv",
    )
    cal.add_argument(
        "--suggest",
        type=int,
        help="write to --out a --shots CSV of K kernel shapes worth measuring on --device "
        "(latency_ms blank)",
    )
    cal.add_argument("--tables", help="folder of aiconfigurator-format CSVs (full fit)")
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
    return (
        isinstance(doc, dict)
        and {"fitted_on", "params"} <= set(doc)
        and set(doc) <= {"fitted_on", "params", "device_model", "factor_sd", "adaptation"}
    )


def save_fit(fit: Any, out: Path, name: str) -> None:
    """Write a fit atomically (a failed write leaves any earlier fit whole)."""
    with config.writing(out, name):
        config.replace_atomically(out, fit.save)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit a device's kernel times (few-shot from `--shots`, or fully from `--tables`)."""
    from servesim.predictor.calibrate import calibrate_from_dir

    s = config.settings(CalibrateSettings, args)
    if s.suggest is not None:
        return _suggest(s)
    out = config.check_out_file(s.out, s.spell("out"), ours=is_fit_file)
    device = catalog(s.devices).get(s.device)
    if s.shots is not None:
        return _few_shot(s, device, out)
    assert s.tables is not None  # CalibrateSettings wants exactly one of the two
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


def is_suggestion(path: Path) -> bool:
    """Whether `path` is a shapes CSV `--suggest` wrote (so it may be replaced)."""
    from servesim.predictor.fewshot_transfer import CSV_COLUMNS, SUGGESTED

    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.readline().strip()
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return head == ",".join(CSV_COLUMNS) and (not first or SUGGESTED in first)


def _suggest(s: CalibrateSettings) -> int:
    """Write the kernel shapes worth measuring on the device, as a `--shots` CSV to fill in."""
    from servesim.predictor import fewshot_transfer as ft

    out = config.check_out_file(s.out, s.spell("out"), ours=is_suggestion)
    device = _gpu(s, catalog(s.devices).get(s.device), "suggest")
    assert s.suggest is not None
    rows = ft.suggest(_bundled(), device, s.suggest)
    with config.writing(out, s.spell("out")):
        config.replace_atomically(out, lambda p: ft.write_csv(rows, p))
    console.print(
        f"wrote {out}: {len(rows)} kernels to measure on {device.name}; fill latency_ms "
        f"(milliseconds), then run calibrate {s.spell('shots')} {out}"
    )
    return 0


def _gpu(s: CalibrateSettings, device: Any, key: str) -> Any:
    """The device, if it is a GPU (the transfer model prices GPUs only)."""
    if device.kind != "gpu":
        raise ServesimError(
            f"{s.spell(key)} works with the cross-GPU kernel model, which prices GPUs; "
            f"{device.name!r} is a {device.kind}: use {s.spell('tables')} with its tables."
        )
    return device


def _bundled() -> Any:
    from servesim.predictor import transfer_model

    model = transfer_model.bundled()
    if model is None:
        raise ServesimError(
            "The bundled transfer model (data/transfer_model.npz) is not installed; "
            "reinstall servesim."
        )
    return model


def _few_shot(s: CalibrateSettings, device: Any, out: Path) -> int:
    """Adapt the bundled transfer model to `device` with the measurements in `--shots`."""
    from servesim.predictor import fewshot_transfer as ft
    from servesim.predictor.roofline import physical_fit

    device = _gpu(s, device, "shots")
    model = _bundled()
    assert s.shots is not None
    try:
        shots = ft.read_shots(s.shots)
    except UnicodeDecodeError:
        raise ServesimError(
            f"{s.spell('shots')} {s.shots!r} is not UTF-8 text; save the CSV as UTF-8."
        ) from None
    # The candidates' plausibility over a broad set of shapes, not only the user's few.
    adapted = ft.adapt(model, shots, device, shapes=ft.pool_shapes(device))
    fit = ft.adapted_fit(adapted, physical_fit())
    save_fit(fit, out, s.spell("out"))
    # Families that share one set of weights (every compute family does) are named together.
    groups: dict[tuple[float, ...], list[str]] = {}
    for fam, w in adapted.weights.items():
        groups.setdefault(tuple(round(float(x), 6) for x in w), []).append(fam)
    moved = "; ".join(
        f"{'/'.join(fams)}: {100 * (1 - sum(w)):.0f}% transferred model"
        + "".join(
            f", {100 * x:.0f}% {c.name}"
            for c, x in zip(adapted.candidates, w, strict=True)
            if x >= 0.05
        )
        for w, fams in groups.items()
    )
    own = ", ".join(f"{f} x{math.exp(x):.3f}" for f, x in adapted.family_offsets.items())
    # The device-wide offset is off by default (`fewshot_transfer.Knobs.offset_shots`).
    device = f"; device offset x{math.exp(adapted.offset):.3f}" if adapted.offset else ""
    console.print(
        f"wrote {out} ({fit.fitted_on}{device}"
        + (f"; family offsets {own}" if own else "")
        + (f"; {moved}" if moved else "")
        + ")"
    )
    return 0
