"""Regenerate the bundled cross-GPU correction, `src/servesim/data/transfer_model.npz`.

    PYTHONPATH=src .venv/bin/python scripts/fit_transfer.py [--rows 2000] [--out PATH]

Fits `servesim.predictor.transfer` on the measured kernel tables of every GPU that
aiconfigurator-core (the pinned version) ships and servesim's catalog knows (vLLM's tables; MLA
from TRT-LLM; nccl-tests), `--rows` random rows per table (seed 0), and writes plain arrays
(no pickle). Deterministic for a given package version; needs scikit-learn. About a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from servesim.errors import script_exit  # noqa: E402
from servesim.predictor import calibrate, kernel_tables, transfer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000, help="rows per table to fit on")
    ap.add_argument("--out", default=str(REPO / "src" / "servesim" / "data" / "transfer_model.npz"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    data = calibrate.package_data(kernel_tables.gpus(), max_rows=args.rows, seed=0)
    model = transfer.fit(data)
    model.save(args.out)
    size = Path(args.out).stat().st_size
    print(
        f"wrote {args.out} ({size / 1024:.0f} KiB, {time.perf_counter() - t0:.0f} s): "
        f"{model.fitted_on}; families {', '.join(model.families)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
