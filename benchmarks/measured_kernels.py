"""How well the measured-kernel backend interpolates its own tables.

    .venv/bin/python benchmarks/measured_kernels.py [--gpus h100_sxm,b200_sxm] [--engine vllm]

For each GPU and family (GEMM per dtype, prefill and decode attention per head layout, NCCL and
custom all-reduce per GPU count, MoE expert layer per dtype and layout with balanced routing, MLA
prefill and decode per head count) it leaves every other grid point out along one axis (GEMM: m;
attention and MLA: the sequence length; all-reduce: message size; MoE: token count), rebuilds the
grid from the rest and predicts the held-out points between kept neighbours (pure log-space
interpolation, no roofline). Prints median and p90 absolute percentage error per GPU and family;
the last line is one JSON object
{"gpus": {gpu: {family_median_ape, family_p90_ape, family_points}}}.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from servesim.errors import script_exit
from servesim.predictor import kernel_tables
from servesim.predictor import measured_kernels as mk


def held_out(grid: mk.Grid, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, measured) seconds at the odd grid points along `axis` from the even ones."""
    n = len(grid.axes[axis])
    if n < 3:
        return np.empty(0), np.empty(0)
    keep = np.arange(0, n, 2)
    last = keep[-1]
    out = np.arange(1, last, 2)
    sub = mk.Grid(
        tuple(a[keep] if d == axis else a for d, a in enumerate(grid.axes)),
        np.take(grid.values, keep, axis=axis),
    )
    vals = np.take(grid.values, out, axis=axis)
    where = np.nonzero(~np.isnan(vals))
    coords = []
    for d, a in enumerate(grid.axes):
        idx = out[where[d]] if d == axis else where[d]
        coords.append(np.exp(a[idx]))
    x = np.stack(coords, axis=1)
    logt, _, _ = sub.lookup(x)
    return np.exp(logt), np.exp(vals[where])


def families(gpu: str, engine: str) -> dict[str, list[tuple[mk.Grid, int]]]:
    """Grids and the axis to thin, per family."""
    out: dict[str, list[tuple[mk.Grid, int]]] = {}
    found = kernel_tables.find(gpu, "gemm", "gemm_perf", engine)
    if found:
        # each dtype from the table the backend prices it with (vLLM's eager fp8_block rows
        # give way to another engine's graphed ones: kernel_tables.UNTIMED_GEMM_DTYPES)
        engines = kernel_tables.engine_order(engine)
        for dt in sorted(kernel_tables.gemm_dtypes_of(found[0])):
            path = kernel_tables.gemm_table(gpu, dt, engines)
            g = mk._gemm_grid(path, dt) if path is not None else None
            if g is not None:
                out.setdefault("gemm", []).append((g, 0))
    for fam, table, decode in (
        ("attention_prefill", "context_attention_perf", False),
        ("attention_decode", "generation_attention_perf", True),
    ):
        found = kernel_tables.find(gpu, "attention", table, engine)
        if not found:
            continue
        for kv in ("bfloat16", "fp8"):
            for layout in mk._attn_layouts(found[0], kv, 0):
                g = mk._attn_grid(found[0], tuple(float(v) for v in layout), kv, 0, decode)
                out.setdefault(fam, []).append((g, 1))
    for fam, table, eng, custom in (
        ("allreduce_nccl", "nccl_perf", "nccl", False),
        ("allreduce_custom", "custom_allreduce_perf", engine, True),
    ):
        found = kernel_tables.find(gpu, "comm", table, eng)
        if not found:
            continue
        for n in (2, 4, 8):
            g = mk._comm_grid(found[0], n, custom)
            if g is not None:
                out.setdefault(fam, []).append((g, 0))
    found = kernel_tables.find(gpu, "moe", "moe_perf", engine)
    if found:
        cols = kernel_tables.read(found[0], ("moe_dtype",))
        for dt in sorted(set(cols["moe_dtype"])):
            for layout in mk._moe_layouts(found[0], dt):
                g = mk._moe_grid(found[0], dt, tuple(float(v) for v in layout))
                out.setdefault("moe", []).append((g, 0))
    for fam, table, decode in (
        ("mla_prefill", "context_mla_perf", False),
        ("mla_decode", "generation_mla_perf", True),
    ):
        found = next(
            (
                f
                for e in (engine, "sglang", "trtllm")
                if (f := kernel_tables.find(gpu, "mla", table, e))
            ),
            None,
        )
        if not found:
            continue
        for kv in ("bfloat16", "fp8"):
            for heads in mk._mla_heads(found[0], kv):
                out.setdefault(fam, []).append((mk._mla_grid(found[0], heads, kv, decode), 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpus", default="h100_sxm,b200_sxm", help="comma-separated GPUs")
    ap.add_argument("--engine", default="vllm", help="engine whose tables are read")
    args = ap.parse_args(argv)
    doc: dict[str, dict[str, float]] = {}
    print(f"{'gpu':<12} {'family':<18} {'points':>8} {'median APE':>11} {'p90 APE':>9}")
    for gpu in args.gpus.split(","):
        doc[gpu] = {}
        for fam, grids in families(gpu, args.engine).items():
            pred, meas = zip(*(held_out(g, a) for g, a in grids), strict=True)
            p, m = np.concatenate(pred), np.concatenate(meas)
            ok = np.isfinite(p) & (m > 0)
            ape = np.abs(p[ok] / m[ok] - 1.0) * 100.0
            if not len(ape):
                continue
            med, p90 = float(np.median(ape)), float(np.percentile(ape, 90))
            doc[gpu] |= {
                f"{fam}_median_ape": round(med, 2),
                f"{fam}_p90_ape": round(p90, 2),
                f"{fam}_points": len(ape),
            }
            print(f"{gpu:<12} {fam:<18} {len(ape):>8} {med:>10.1f}% {p90:>8.1f}%")
    print(json.dumps({"gpus": doc}))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
