"""`servesim fewshot --shots CSV`: fit a local device (CPU, consumer or edge GPU) from at most
10 measured tokens/s, and write the fit `--fit` then uses on `predict` and `simulate`.

The CSV has one row per measurement: model, quant, threads, phase (decode or prefill), tokens,
context and tokens_per_s or seconds (`predictor.edge_fit.read_shots`; `examples/edge_shots.csv`).
`validation/edge.py` writes its few-shot measurements in this format and fits them through the
same `edge_fit.fit_csv`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from servesim.cli import settings as config
from servesim.cli.output import console
from servesim.errors import ServesimError


def is_edge_fit_file(path: Path) -> bool:
    """Whether `path` holds a fit servesim wrote (local-device or kernel: it may be replaced)."""
    from servesim.cli.calibrate import is_fit_file
    from servesim.predictor.edge_fit import is_edge_fit

    return is_edge_fit(path) or is_fit_file(path)


def run_edge_fewshot(s: Any, device: Any) -> int:
    """Fit `device` on the CSV in `s.shots`, write `s.out`, print the fit (or its JSON)."""
    from servesim.predictor.edge_fit import fit_csv

    out = config.check_out_file(s.out, s.spell("out"), ours=is_edge_fit_file)
    try:
        fit = fit_csv(device, s.shots)
    except UnicodeDecodeError:
        raise ServesimError(
            f"{s.spell('shots')} {s.shots!r} is not UTF-8 text; save the CSV as UTF-8."
        ) from None
    with config.writing(out, s.spell("out")):
        config.replace_atomically(out, fit.save)
    doc = {**fit.as_dict(), "out": str(out)}
    if s.json_output:
        print(json.dumps(doc))
        return 0
    e = fit.efficiency
    shares = ", ".join(f"{k} {v:.2f}" for k, v in sorted(e.compute.items()))
    gemv = ", ".join(f"{k} {v:.2f}" for k, v in sorted(e.gemv.items()))
    console.print(
        f"wrote {out}: {device.name} fitted on {fit.shots} measurements (median error "
        f"{_median(fit.fit_ape):.1%}); memory share {e.memory:.2f}, {e.op_s * 1e6:.2f} µs per "
        f"operator (+{e.barrier_s * 1e6:.2f} µs per extra thread), {e.step_s * 1e3:.3f} ms per "
        f"pass; GEMM shares {shares}; one-row shares "
        f"{gemv}. Use it with: servesim predict --device {device.name} --fit {out} ..."
    )
    return 0


def _median(xs: tuple[float, ...]) -> float:
    import statistics

    return statistics.median(xs) if xs else 0.0
