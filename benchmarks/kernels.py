"""Kernel-model accuracy: predict every measured row and report errors per operator family.

    .venv/bin/python benchmarks/kernels.py            # shared H100 data, in-sample + LOGO
    .venv/bin/python benchmarks/kernels.py --no-logo  # skip the leave-one-group-out refits
    .venv/bin/python benchmarks/kernels.py --tables DIR --device NAME [--vidur DIR]
    .venv/bin/python benchmarks/kernels.py --leave-one-gpu-out [--gpus a100_sxm,l40s,...]

With no arguments it predicts `data/aic/h100_sxm` and `data/vidur` with the bundled fit and also
refits the model with each group held out (each (n, k) of the GEMM table, each head configuration
of the attention tables, each GPU count of the collectives, each (op, TP) of Vidur's elementwise
ops) to show how it generalises. With `--tables` it predicts any folder of tables with the same
columns for `--device`, using only the bundled H100 fit (no refitting). The last line printed is
one JSON object with the median and p90 absolute percentage errors of the four goal families.

With `--leave-one-gpu-out` it reads aiconfigurator-core's installed tables of every GPU that
has a catalog entry (vLLM's tables; MLA from TRT-LLM, which alone measures the MLA kernels;
nccl-tests from comm/nccl), and for each GPU fits the cross-GPU model on all the others
(`--fit-rows` random rows per table, seed 0) and predicts that GPU's tables (`--eval-rows`
random rows per table, seed 1). `--method transfer` (default) is `servesim.predictor.transfer`:
the physical roofline (bundled H100 fit, each device's own spec sheet) times a correction learnt
per family as a linear device trend plus boosted trees on device-normalised shape features,
pulled towards the measured efficiencies of the left-out GPU's twins among the others (GPUs with
its compute, and for all-reduce its fabric: `servesim.predictor.twin_efficiency`);
`--method joint` is the older log-linear device model (`calibrate.fit_transfer`). The last line
is {"gpus": {gpu: {family_median_ape, family_p90_ape}}, "worst_median_ape", "worst_p90_ape"}
with families gemm, attention_prefill, attention_decode, mla (context and generation), moe
(balanced routing) and allreduce (nccl-tests and vLLM custom).
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

from servesim.errors import at_least, script_exit  # noqa: E402
from servesim.predictor import calibrate, roofline  # noqa: E402
from servesim.predictor.roofline import default_fit  # noqa: E402
from servesim.spec.devices import get_device  # noqa: E402

GOAL = {"median": 5.0, "p90": 15.0}
GOAL_FAMILIES = ("gemm", "attention_prefill", "attention_decode", "allreduce")
LOGO_GOAL = {"median": 10.0, "p90": 25.0}
LOGO_FAMILIES = ("gemm", "attention_prefill", "attention_decode", "mla", "moe", "allreduce")


def logo_rows(samples: dict, preds: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(predicted, measured) per leave-one-GPU-out family from per-sample predictions."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(name: str, src: str, mask: np.ndarray | None = None) -> None:
        if src in samples:
            m = slice(None) if mask is None else mask
            parts.setdefault(name, []).append((preds[src][m], samples[src]["latency_s"][m]))

    for fam in ("gemm", "attention_prefill", "attention_decode", "moe"):
        add(fam, fam)
    add("mla", "mla_prefill")
    add("mla", "mla_decode")
    if "nccl" in samples:
        add("allreduce", "nccl", samples["nccl"]["op"] == "all_reduce")
    add("allreduce", "custom_allreduce")
    return {
        k: (np.concatenate([p for p, _ in v]), np.concatenate([m for _, m in v]))
        for k, v in parts.items()
        if sum(len(p) for p, _ in v)
    }


def leave_one_gpu_out(
    gpus: list[str] | None,
    fit_rows: int,
    eval_rows: int,
    max_nfev: int,
    method: str,
    only: list[str] | None = None,
) -> int:
    """Fit on all GPUs but one, predict that one; print a table and the JSON summary.

    `gpus` is the measured set (default: every GPU with tables); `only` the GPUs to leave out
    in turn (default: each of the set)."""
    from servesim.predictor import kernel_tables, transfer

    names = gpus or kernel_tables.gpus()
    train = calibrate.package_data(names, max_rows=fit_rows, seed=0)
    kernel_tables.check_leave_out(list(train), only)
    left_out = [g for g in train if not only or g in only]
    test = calibrate.package_data(left_out, max_rows=eval_rows, seed=1)
    skipped = sorted(set(names) - set(train))
    out: dict[str, dict[str, float]] = {}
    body = []
    t0 = time.perf_counter()
    for gpu, (device, samples) in test.items():
        if method == "transfer":
            model = transfer.leave_one_gpu_out(train, gpu)
            preds = {f: transfer.predict(model, f, s, device) for f, s in samples.items()}
        else:
            fit = calibrate.leave_one_gpu_out_fit(train, gpu, max_nfev)
            preds = {f: calibrate.predict(f, s, device, fit) for f, s in samples.items()}
        # The reference: the bundled H100 roofline alone on this GPU's spec sheet.
        phys = roofline.physical_fit()
        base = {f: calibrate.predict(f, s, device, phys) for f, s in samples.items()}
        base_rows = logo_rows(samples, base)
        for fam, (p, m) in logo_rows(samples, preds).items():
            n, med, p90 = stats(p, m)
            _, bmed, bp90 = stats(*base_rows[fam])
            out.setdefault(gpu, {})[f"{fam}_median_ape"] = round(med, 2)
            out[gpu][f"{fam}_p90_ape"] = round(p90, 2)
            body.append(
                [gpu, fam, str(n), f"{med:.1f}", f"{p90:.1f}", f"{bmed:.1f}", f"{bp90:.1f}"]
            )
        print(
            f"{gpu}: fitted on {len(train) - 1} other GPUs ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    print_table(
        "Leave one GPU out: fit on the others, predict this one",
        ["gpu", "family", "rows", "median APE %", "p90 APE %", "H100 fit med %", "H100 fit p90 %"],
        body,
    )
    if skipped:
        print(f"skipped (no tables or no catalog entry): {', '.join(skipped)}")
    meds = [v for d in out.values() for k, v in d.items() if k.endswith("_median_ape")]
    p90s = [v for d in out.values() for k, v in d.items() if k.endswith("_p90_ape")]
    worst_med, worst_p90 = max(meds), max(p90s)
    misses = [
        f"{g} {k[: -len('_median_ape')]}"
        for g, d in out.items()
        for k, v in d.items()
        if k.endswith("_median_ape")
        and (v > LOGO_GOAL["median"] or d[k.replace("median", "p90")] > LOGO_GOAL["p90"])
    ]
    print(
        f"goal (median <= {LOGO_GOAL['median']:.0f}%, p90 <= {LOGO_GOAL['p90']:.0f}% per GPU "
        f"and family): {'met' if not misses else f'NOT met for {len(misses)} of {len(meds)}'}"
    )
    summary = {
        "gpus": out,
        "worst_median_ape": round(worst_med, 2),
        "worst_p90_ape": round(worst_p90, 2),
    }
    print(json.dumps(summary))
    return 0


def family_rows(samples: dict, preds: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(predicted, measured) per reported family and sub-family, from per-sample predictions."""
    rows: dict[str, tuple[list, list]] = {}

    def add(name: str, mask_src: str, mask: np.ndarray | None = None) -> None:
        if mask_src not in samples:
            return
        s, p = samples[mask_src], preds[mask_src]
        m = np.ones(len(p), dtype=bool) if mask is None else mask
        if not m.any():
            return
        pr, me = rows.setdefault(name, ([], []))
        pr.append(p[m])
        me.append(s["latency_s"][m])

    if "gemm" in samples:
        g = samples["gemm"]
        add("gemm", "gemm")
        for dt in sorted(set(g["dtype"])):
            add(f"  gemm {dt}", "gemm", g["dtype"] == dt)
    add("gemm (Vidur fp16, other stack)", "gemm_vidur")
    add("attention_prefill", "attention_prefill")
    if "attention_prefill" in samples:
        a = samples["attention_prefill"]
        for dt in sorted(set(a["kv_dtype"])):
            add(f"  prefill kv {dt}", "attention_prefill", a["kv_dtype"] == dt)
    add("attention_decode", "attention_decode")
    if "attention_decode" in samples:
        a = samples["attention_decode"]
        for dt in sorted(set(a["kv_dtype"])):
            add(f"  decode kv {dt}", "attention_decode", a["kv_dtype"] == dt)
    nccl = samples.get("nccl")
    if nccl is not None:
        add("allreduce", "nccl", nccl["op"] == "all_reduce")
    add("allreduce", "custom_allreduce")
    add("allreduce", "allreduce_vidur")
    if nccl is not None:
        add("  all_reduce nccl-tests", "nccl", nccl["op"] == "all_reduce")
    if "custom_allreduce" in samples:
        c = samples["custom_allreduce"]
        add("  all_reduce vLLM custom graph", "custom_allreduce", c["cuda_graph"])
        add("  all_reduce vLLM custom eager", "custom_allreduce", ~c["cuda_graph"])
    add("  all_reduce Vidur NCCL eager", "allreduce_vidur")
    if nccl is not None:
        for op in ("all_gather", "reduce_scatter", "alltoall"):
            add(f"nccl {op}", "nccl", nccl["op"] == op)
    add("elementwise (Vidur)", "elementwise")
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in rows.items()}


def stats(pred: np.ndarray, meas: np.ndarray) -> tuple[int, float, float]:
    """(rows, median APE %, p90 APE %) over rows with a prediction."""
    e = calibrate.ape(pred, meas)
    e = e[np.isfinite(e)]
    if not len(e):
        return 0, float("nan"), float("nan")
    return len(e), float(np.median(e)), float(np.percentile(e, 90))


def print_table(title: str, cols: list[str], body: list[list[str]]) -> None:
    """A rich table when rich is available, aligned plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for i, c in enumerate(cols):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in body:
            t.add_row(*r)
        Console(width=120).print(t)
    except ImportError:  # pragma: no cover - rich is a dependency
        print(title)
        widths = [max(len(r[i]) for r in [cols, *body]) for i in range(len(cols))]
        for r in [cols, *body]:
            print(
                "  ".join(
                    x.ljust(w) if i == 0 else x.rjust(w)
                    for i, (x, w) in enumerate(zip(r, widths, strict=True))
                )
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", help="folder of aiconfigurator-style CSV tables")
    ap.add_argument("--device", help="device name from the catalog (required with --tables)")
    ap.add_argument("--vidur", help="Vidur profiling folder (default: data/vidur without --tables)")
    ap.add_argument("--no-logo", action="store_true", help="skip leave-one-group-out refits")
    ap.add_argument("--leave-one-gpu-out", action="store_true", help="cross-GPU transfer test")
    ap.add_argument("--gpus", help="comma-separated GPUs for --leave-one-gpu-out (default: all)")
    ap.add_argument(
        "--only", help="comma-separated GPUs to leave out in turn (default: each of --gpus)"
    )
    ap.add_argument(
        "--method",
        choices=("transfer", "joint"),
        default="transfer",
        help="transfer: roofline x boosted-tree correction (servesim.predictor.transfer); "
        "joint: the log-linear device model of calibrate.fit_transfer",
    )
    ap.add_argument("--fit-rows", type=int, default=2000, help="rows per table to fit on")
    ap.add_argument("--eval-rows", type=int, default=3000, help="rows per table to predict")
    ap.add_argument("--max-nfev", type=int, default=calibrate.TRANSFER_MAX_NFEV)
    args = ap.parse_args(argv)
    at_least(args.fit_rows, "--fit-rows")
    at_least(args.eval_rows, "--eval-rows")
    if args.leave_one_gpu_out:
        gpus = args.gpus.split(",") if args.gpus else None
        only = args.only.split(",") if args.only else None
        return leave_one_gpu_out(
            gpus, args.fit_rows, args.eval_rows, args.max_nfev, args.method, only
        )

    shared = args.tables is None
    tables_dir = Path(args.tables) if args.tables else REPO / "data" / "aic" / "h100_sxm"
    vidur_dir = args.vidur or (REPO / "data" / "vidur" if shared else None)
    if not shared and not args.device:
        ap.error("--device is required with --tables")
    device = get_device(args.device or "h100_sxm")
    fit = default_fit()

    tables = calibrate.load_tables(tables_dir)
    vidur = calibrate.load_vidur(vidur_dir) if vidur_dir else None
    samples = calibrate.all_samples(tables, vidur)
    preds = {f: calibrate.predict(f, s, device, fit) for f, s in samples.items()}
    fams = family_rows(samples, preds)

    logo = None
    if shared and not args.no_logo:
        t0 = time.perf_counter()
        logo_preds = calibrate.leave_one_group_out(samples, device)
        logo = family_rows(samples, logo_preds)
        logo_s = time.perf_counter() - t0

    cols = ["family", "rows", "median APE %", "p90 APE %"]
    if logo is not None:
        cols += ["LOGO median %", "LOGO p90 %"]
    body = []
    for name, (p, m) in fams.items():
        n, med, p90 = stats(p, m)
        row = [name, str(n), f"{med:.1f}", f"{p90:.1f}"]
        if logo is not None:
            if name in logo:
                _, lmed, lp90 = stats(*logo[name])
                row += [f"{lmed:.1f}", f"{lp90:.1f}"]
            else:
                row += ["", ""]
        body.append(row)
    where = f"{tables_dir}" + (f" + {vidur_dir}" if vidur_dir else "")
    print_table(f"Kernel model vs measurements: {device.name}, {where}", cols, body)
    print(f"fit: {fit.fitted_on}")
    if logo is not None:
        print(
            "LOGO: refit with each group held out (GEMM (n,k); attention head config; "
            f"collectives GPU count; elementwise (op, TP)); {logo_s:.0f} s."
        )
    summary: dict[str, float] = {}
    for fam in GOAL_FAMILIES:
        if fam in fams:
            _, med, p90 = stats(*fams[fam])
            summary[f"{fam}_median_ape"] = round(med, 2)
            summary[f"{fam}_p90_ape"] = round(p90, 2)
    missing = [f for f in GOAL_FAMILIES if f not in fams]
    met = all(
        summary[f"{f}_median_ape"] <= GOAL["median"] and summary[f"{f}_p90_ape"] <= GOAL["p90"]
        for f in GOAL_FAMILIES
        if f in fams
    )
    print(
        f"goal (median <= {GOAL['median']:.0f}%, p90 <= {GOAL['p90']:.0f}% per family): "
        f"{'met' if met else 'NOT met'}"
        + (f"; no rows for {', '.join(missing)}" if missing else "")
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
