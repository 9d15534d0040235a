"""Few-shot calibration to an unseen device: median error after k = 0, 3, 5, 10 measurements.

    .venv/bin/python benchmarks/fewshot.py                 # the shared H100 tables
    .venv/bin/python benchmarks/fewshot.py --tables DIR --device NAME [--devices YAML]

For each device's tables, the "devices already fitted" are a full calibration on half of the
shape groups (GEMM (n, k); attention heads and KV dtype) and the "unseen device" is the other
half: k random measurements of it fit its efficiency factors (`servesim.predictor.fewshot`),
and the error is the median absolute percentage error on all its other measurements, over
`--repeats` draws.
With `--tables` and `--cross`, the prior is the bundled H100 fit instead and the whole folder is
the unseen device (a real transfer, e.g. a CPU profiled with `servesim profile`). The last line
printed is one JSON object: {"k": [...], "median_ape": [...]} (percent, all devices pooled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from servesim.predictor import fewshot  # noqa: E402
from servesim.predictor.roofline import default_fit  # noqa: E402
from servesim.spec.devices import Catalog  # noqa: E402

KS = (0, 3, 5, 10)


def evaluate(pool, device, prior, repeats: int, seed: int) -> dict[int, list[float]]:
    """Median APE on the unpicked measurements after fitting k picked ones, per repeat."""
    out: dict[int, list[float]] = {k: [] for k in KS}
    for k in KS:
        for r in range(repeats if k else 1):
            shots, others = fewshot.draw(pool, k, seed + 1000 * r + k)
            fit = fewshot.fit_device(shots, device, prior)
            out[k].append(fewshot.median_ape(others, device, fit))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", action="append", help="folder of tables (repeatable)")
    ap.add_argument("--device", action="append", help="device of each --tables folder")
    ap.add_argument("--devices", help="extra device catalog YAML")
    ap.add_argument("--cross", action="store_true", help="prior = bundled fit, whole folder unseen")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    catalog = Catalog([args.devices] if args.devices else None)
    if args.tables:
        runs = list(zip(args.tables, args.device or [], strict=True))
    else:
        runs = [(str(d), d.name) for d in sorted((REPO / "data" / "aic").iterdir()) if d.is_dir()]
    pooled: dict[int, list[float]] = {k: [] for k in KS}
    t0 = time.perf_counter()
    for tables, name in runs:
        device = catalog.get(name)
        pool = fewshot.measurements(tables)
        if args.cross:
            prior, unseen, how = default_fit(), pool, "prior: bundled fit"
        else:
            known, unseen = fewshot.split_groups(pool, args.seed)
            prior = fewshot.fit_prior(known, device)
            how = f"prior: {len(known)} measurements of the other shape groups"
        res = evaluate(unseen, device, prior, args.repeats, args.seed)
        print(f"{name}: {len(unseen)} measurements of the unseen shapes; {how}")
        for k in KS:
            vals = np.array(res[k])
            pooled[k] += res[k]
            print(
                f"  k={k:2d}: median APE {np.median(vals):6.1f}%  "
                f"(draws: {len(vals)}, p10 {np.percentile(vals, 10):.1f}%, "
                f"p90 {np.percentile(vals, 90):.1f}%)"
            )
    print(f"({time.perf_counter() - t0:.0f} s)")
    medians = [round(float(np.median(pooled[k])), 2) for k in KS]
    print(json.dumps({"k": list(KS), "median_ape": medians}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
