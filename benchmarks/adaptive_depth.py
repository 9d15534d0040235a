"""When does per-request layer skipping pay off? Llama-3.1-8B decode steps, skipping half of
the layers (FiRST-style, decided per request), on one H100 and on a Jetson AGX Orin.

    .venv/bin/python benchmarks/adaptive_depth.py [--skip-prob 0.5] [--context 1024]

For each batch size it prints the step time without skipping, the expected saving when the
requests skip independently and when they all skip the same layers, and the first batch at
which independent skipping saves less than `--threshold` (10 %) of the step. The last line is
one JSON object with those figures per device.
"""

from __future__ import annotations

import argparse
import json

from servesim.errors import script_exit
from servesim.predictor.adaptive_depth import SkippingPredictor
from servesim.predictor.iteration import Predictor
from servesim.spec.adaptive_depth import LayerSkipping
from servesim.spec.devices import Catalog
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    ap.add_argument("--devices", default="h100_sxm,jetson_orin")
    ap.add_argument("--skip-prob", type=float, default=0.5)
    ap.add_argument("--context", type=int, default=1024, help="tokens each sequence attends to")
    ap.add_argument("--threshold", type=float, default=0.10)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    engine = get_engine("vllm")
    out: dict[str, dict[str, object]] = {}
    for name in args.devices.split(","):
        device = Catalog().get(name)
        base = Predictor(model, device, engine=engine)
        indep = SkippingPredictor(
            model, device, engine=engine, skipping=LayerSkipping(args.skip_prob)
        )
        shared = SkippingPredictor(
            model, device, engine=engine, skipping=LayerSkipping(args.skip_prob, correlation=1.0)
        )
        rows = []
        for n in BATCHES:
            ctx = n * args.context
            full = base.step_s(n, ctx, ())
            rows.append(
                (n, full, 1 - indep.step_s(n, ctx, ()) / full, 1 - shared.step_s(n, ctx, ()) / full)
            )
        stop = next((n for n, _, s, _ in rows if s < args.threshold), None)
        print(f"{name}: {args.model}, skip {args.skip_prob:.0%} of layers, {args.context} ctx")
        print("  batch  step ms  saved (independent)  saved (all alike)")
        for n, full, si, ss in rows:
            print(f"  {n:5d} {full * 1e3:8.2f} {si:20.1%} {ss:18.1%}")
        print(f"  independent skipping saves < {args.threshold:.0%} from batch {stop}")
        out[name] = {
            "batch": [r[0] for r in rows],
            "step_ms": [round(r[1] * 1e3, 3) for r in rows],
            "saving_independent": [round(r[2], 4) for r in rows],
            "saving_correlated": [round(r[3], 4) for r in rows],
            "stops_paying_off_batch": stop,
        }
    print(json.dumps({"skip_prob": args.skip_prob, "context": args.context, "devices": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
