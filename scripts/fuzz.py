"""Fuzz the simulator: random deployments × mechanisms × workloads, each checked for the
properties of tests/properties_lib.py (every request finished once, tokens conserved, first
token after arrival, TTFT ≤ E2E, finite summary, determinism, no hang).

    .venv/bin/python scripts/fuzz.py --examples 100000 [--seed 0] [--start 0] [--limit-s 10]

Example i draws its case from random.Random(f"{seed}:{i}"), so `--start i --examples 1`
replays it. Failures and hangs print their case as JSON; expected validation errors
(ServesimError) are counted by kind. The last line is one JSON object:
{"examples": N, "failures": F, "hangs": H, "errors_by_kind": {...}}.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from properties_lib import Hang, Picker, draw_case, run_case


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="index of the first example")
    ap.add_argument("--limit-s", type=float, default=10.0, help="wall-clock limit per example")
    ap.add_argument("--every", type=int, default=1000, help="progress line every N examples")
    args = ap.parse_args(argv)
    failures = hangs = ok = 0
    errors: collections.Counter[str] = collections.Counter()
    failed_kinds: collections.Counter[str] = collections.Counter()
    t0 = time.perf_counter()
    for i in range(args.start, args.start + args.examples):
        case = draw_case(Picker(random.Random(f"{args.seed}:{i}")))
        try:
            kind = run_case(case, args.limit_s)
        except Hang:
            hangs += 1
            print(f"HANG example {i}: {json.dumps(case)}", flush=True)
            continue
        except Exception as exc:
            failures += 1
            label = f"{type(exc).__name__}: {str(exc)[:100]}"
            failed_kinds[label] += 1
            print(f"FAIL example {i}: {label}\n  case: {json.dumps(case)}", flush=True)
            if failed_kinds[label] <= 1:
                traceback.print_exc(limit=6, file=sys.stdout)
            continue
        if kind is None:
            ok += 1
        else:
            errors[kind] += 1
        done = i - args.start + 1
        if done % args.every == 0:
            rate = done / (time.perf_counter() - t0)
            print(
                f"{done} examples, {ok} ran, {failures} failures, {hangs} hangs, {rate:.1f}/s",
                flush=True,
            )
    out = {
        "examples": args.examples,
        "failures": failures,
        "hangs": hangs,
        "ran": ok,
        "errors_by_kind": dict(errors.most_common()),
    }
    print(json.dumps(out), flush=True)
    return 1 if failures or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
