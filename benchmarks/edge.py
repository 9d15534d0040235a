"""llama.cpp on this CPU against servesim's `this_cpu` prediction, per (model size, quantisation).

    nice .venv/bin/python benchmarks/edge.py                   # the full run (~15 min idle)
    .venv/bin/python benchmarks/edge.py --quick                # tiny model, F16, 1 thread
    .venv/bin/python benchmarks/edge.py --from runs/edge.json  # re-predict a saved run

Runs `validation/edge.py` (build llama.cpp, random-weight Llama checkpoints to GGUF F16, Q8_0,
Q4_K_M, llama-bench prefill and decode with 1 and 2 threads), predicts each from the spec sheet
and after a few-shot fit on ≤ 10 of the measurements (written as a `servesim fewshot --shots` CSV
and fitted by the command's own `edge_fit.fit_csv`), and prints one line per (size, quant,
threads); `--out FILE` keeps the run for `--from`. The last line is one JSON object: per
(size, quant, threads) measured and predicted decode and prefill tokens/s and their errors,
`decode_median_ape`, `prefill_median_ape` (after few-shot, all rows), the held-out medians and
the spec-only medians.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "validation"))
sys.path.insert(0, str(HERE.parent / "src"))

import edge  # noqa: E402

from servesim.errors import script_exit  # noqa: E402


def compact(doc: dict) -> dict:
    """The fields the issue asks for, errors as fractions."""
    rows = [
        {
            "size": r["size"],
            "quant": r["quant"],
            "threads": r["threads"],
            "measured_decode_tps": round(r["measured_decode"], 2),
            "predicted_decode_tps": round(r["fewshot_decode"], 2),
            "spec_decode_tps": round(r["spec_decode"], 2),
            "decode_ape": round(r["decode_ape"], 4),
            "measured_prefill_tps": round(r["measured_prefill"], 2),
            "predicted_prefill_tps": round(r["fewshot_prefill"], 2),
            "spec_prefill_tps": round(r["spec_prefill"], 2),
            "prefill_ape": round(r["prefill_ape"], 4),
            "in_fewshot": r["in_fewshot"],
        }
        for r in doc["rows"]
    ]
    keys = (
        "decode_median_ape",
        "prefill_median_ape",
        "decode_median_ape_held_out",
        "prefill_median_ape_held_out",
        "spec_decode_median_ape",
        "spec_prefill_median_ape",
    )
    medians = {k: None if doc[k] is None else round(doc[k], 4) for k in keys}
    return {"device": doc["device"], "rows": rows, **medians}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--from" in argv:
        i = argv.index("--from")
        doc = edge.refit(json.loads(Path(argv[i + 1]).read_text()))
    else:
        args = edge.parse(argv)
        doc = edge.run(args)
        if args.out:  # the measurements, for `--from` later
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(doc, indent=1))
    for r in doc["rows"]:
        print(
            f"{r['size']:>6} {r['quant']:>6} t={r['threads']}: decode {r['measured_decode']:8.1f} "
            f"tok/s (spec {r['spec_decode']:8.1f}, few-shot {r['fewshot_decode']:8.1f}), "
            f"prefill {r['measured_prefill']:8.1f} (spec {r['spec_prefill']:8.1f}, few-shot "
            f"{r['fewshot_prefill']:8.1f}) {r['in_fewshot']}"
        )
    print(json.dumps(compact(doc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
