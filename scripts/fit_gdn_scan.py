"""Fit the chunked Gated DeltaNet prefill model (`servesim.predictor.linear_scan`) on
aiconfigurator-core's measured tables, and check that it transfers to a GPU it never saw.

    .venv/bin/python scripts/fit_gdn_scan.py

The script reads `chunk_gated_delta_rule` rows with one sequence per call and at least one chunk
of tokens. For each shape it keeps the fastest engine's time. It fits the model on every GPU, then
once per GPU with that GPU left out, and prints the median and p90 absolute percentage error on
the left-out GPU. The last line is one JSON object:
{"consts": [t0, tau, gamma], "logo": {gpu: {"median_ape": .., "p90_ape": ..}}}.
Copy the constants into `linear_scan.GDN_SCAN` when they change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from servesim.errors import ServesimError, script_exit
from servesim.predictor import kernel_tables, linear_scan
from servesim.spec.devices import get_device

COLS = ("kernel_source", "batch_size", "seq_len", "num_v_heads", "head_k_dim", "head_v_dim")


def rows() -> dict[str, np.ndarray]:
    """One row per (GPU, shape): tokens, v heads, dims, bandwidth, fastest measured seconds."""
    best: dict[tuple, float] = {}
    bw: dict[str, float] = {}
    for gpu in kernel_tables.gpus():
        try:
            bw[gpu] = get_device(gpu).mem_bw_bytes_per_s
        except ServesimError:
            continue
        for engine in kernel_tables.ENGINES:
            found = kernel_tables.find(gpu, "linear_attention", "gdn_perf", engine)
            if found is None:
                continue
            c = kernel_tables.read(found[0], (*COLS, "latency"))
            keep = (c["kernel_source"] == "chunk_gated_delta_rule") & (c["batch_size"] == 1)
            keep &= c["seq_len"] >= 64
            for n, nv, dk, dv, lat in zip(
                c["seq_len"][keep],
                c["num_v_heads"][keep],
                c["head_k_dim"][keep],
                c["head_v_dim"][keep],
                c["latency"][keep],
                strict=True,
            ):
                key = (gpu, int(n), int(nv), int(dk), int(dv))
                best[key] = min(best.get(key, np.inf), float(lat) * 1e-3)
    keys = list(best)
    return {
        "gpu": np.array([k[0] for k in keys]),
        "tokens": np.array([k[1] for k in keys], dtype=float),
        "v_heads": np.array([k[2] for k in keys], dtype=float),
        "dk": np.array([k[3] for k in keys], dtype=float),
        "dv": np.array([k[4] for k in keys], dtype=float),
        "bw": np.array([bw[k[0]] for k in keys]),
        "latency_s": np.array([best[k] for k in keys]),
    }


def _fit(r: dict[str, np.ndarray], m: np.ndarray) -> tuple[float, float, float]:
    return linear_scan.fit(
        r["tokens"][m], r["v_heads"][m], r["dk"][m], r["dv"][m], r["bw"][m], r["latency_s"][m]
    )


def _ape(r: dict[str, np.ndarray], m: np.ndarray, c: tuple[float, float, float]) -> np.ndarray:
    pred = linear_scan.gdn_prefill_np(
        r["tokens"][m], r["v_heads"][m], r["dk"][m], r["dv"][m], 64, r["bw"][m], c
    )
    return 100 * np.abs(pred / r["latency_s"][m] - 1)


def main() -> int:
    r = rows()
    everything = np.ones(len(r["gpu"]), dtype=bool)
    consts = _fit(r, everything)
    print(
        f"{len(r['gpu'])} rows; t0 {consts[0] * 1e6:.1f} µs, tau {consts[1] * 1e6:.2f} µs, "
        f"gamma {consts[2]:.2f}"
    )
    logo = {}
    for gpu in np.unique(r["gpu"]):
        held = r["gpu"] == gpu
        e = _ape(r, held, _fit(r, ~held))
        logo[str(gpu)] = {
            "median_ape": round(float(np.median(e)), 1),
            "p90_ape": round(float(np.percentile(e, 90)), 1),
        }
        print(
            f"{gpu:22s} left out: median {logo[str(gpu)]['median_ape']:5.1f} %  "
            f"p90 {logo[str(gpu)]['p90_ape']:5.1f} %"
        )
    print(
        json.dumps(
            {
                "consts": [round(consts[0], 9), round(consts[1], 9), round(consts[2], 3)],
                "logo": logo,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
