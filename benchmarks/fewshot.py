"""Few-shot calibration to an unseen device: median error after k = 0, 3, 5, 10 measurements.

    .venv/bin/python benchmarks/fewshot.py                 # the shared H100 tables
    .venv/bin/python benchmarks/fewshot.py --tables DIR --device NAME [--devices YAML]
    .venv/bin/python benchmarks/fewshot.py --leave-one-gpu-out --k 0,3,5,10 [--gpus ...]

For each device's tables, the "devices already fitted" are a full calibration on half of the
shape groups (GEMM (n, k); attention heads and KV dtype) and the "unseen device" is the other
half: k random measurements of it fit its efficiency factors (`servesim.predictor.fewshot`),
and the error is the median absolute percentage error on all its other measurements, over
`--repeats` draws.
With `--tables` and `--cross`, the prior is the bundled H100 fit instead and the whole folder is
the unseen device (a real transfer, e.g. a CPU profiled with `servesim profile`). The last line
printed is one JSON object: {"k": [...], "median_ape": [...]} (percent, all devices pooled).

With `--leave-one-gpu-out`, each GPU of aiconfigurator-core's installed tables is the unseen
device: the prior is the transfer model fitted on all the other GPUs (`transfer.fit`: roofline
times a boosted-tree shape correction, with its twins' measured efficiencies blended in:
`twin_efficiency`); k of the left-out GPU's GEMM, attention, MLA, MoE and
all-reduce rows are measured — chosen from their shapes alone, latencies removed
(`fewshot_transfer.plan_shots`, `--shots plan`, the default) or drawn at random (`--shots
random`, averaged over `--repeats` draws) — and adapt it (`fewshot_transfer.adapt`: per
family, the shots weigh each fitted GPU's proposal for this GPU's shapes against the
transferred model). The error is the median APE on the rows not measured (`--eval-rows` per
table). The last line is {"k": [...], "median_ape": [median over GPUs], "gpus_worse_than_k0":
n} (n: GPUs whose error at the largest k is not below their k = 0 error).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from servesim.errors import at_least, counts, script_exit  # noqa: E402
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


def leave_one_gpu_out(args: argparse.Namespace) -> int:
    """Few-shot adaptation of the cross-GPU transfer model to each left-out GPU.

    Per GPU the prior sees only the other GPUs' tables; `plan_shots` sees the left-out GPU's
    shapes with their latencies removed; `adapt` sees the k picked rows only; the error is
    measured on the rows not picked."""
    from servesim.predictor import calibrate, kernel_tables, transfer
    from servesim.predictor import fewshot_transfer as ft

    ks = counts(args.k, "--k")
    at_least(args.fit_rows, "--fit-rows")
    at_least(args.eval_rows, "--eval-rows")
    names = args.gpus.split(",") if args.gpus else kernel_tables.gpus()
    train = calibrate.package_data(names, max_rows=args.fit_rows, seed=0)
    only = args.only.split(",") if args.only else None
    kernel_tables.check_leave_out(list(train), only)
    left_out = [g for g in train if not only or g in only]
    test = calibrate.package_data(left_out, max_rows=args.eval_rows, seed=1)
    per_gpu: dict[str, list[float]] = {}
    families: dict[str, dict[str, list[float]]] = {}
    t0 = time.perf_counter()
    meta = Meta(args, names) if args.meta else None
    for gpu, (device, samples) in test.items():
        others = {g: d for g, d in train.items() if g != gpu}
        prior = transfer.fit(others)
        cands = tuple(dev for dev, _ in others.values())
        pool = ft.covered(samples)
        shapes = ft.without_latency(pool)
        knobs = ft.KNOBS
        if meta is not None:
            # Chosen on the other GPUs alone: `meta.knobs` never sees `gpu`'s rows.
            knobs = meta.knobs(exclude=gpu, ks=[k for k in ks if k])
            print(f"{gpu}: meta-validated {knobs}", flush=True)
        errs = []
        for k in ks:
            vals, fam_vals = [], {}
            draws = args.repeats if (k and args.shots == "random") else 1
            for r in range(draws):
                if args.shots == "random":
                    picks = _random_picks(pool, k, args.seed + 1000 * r + k)
                else:
                    picks = ft.plan_shots(prior, shapes, device, k, cands, knobs)
                shots, rest = ft.split(pool, picks)
                adapted = ft.adapt(prior, shots, device, cands, shapes, knobs)
                e = {
                    src: calibrate.ape(adapted.predict(src, s, device), s["latency_s"])
                    for src, s in rest.items()
                }
                vals.append(float(np.median(np.concatenate(list(e.values())))))
                for src, x in e.items():
                    fam_vals.setdefault(src, []).append(float(np.median(x)))
            errs.append(float(np.mean(vals)))
            for src, x in fam_vals.items():
                families.setdefault(gpu, {}).setdefault(src, []).append(float(np.mean(x)))
        per_gpu[gpu] = errs
        print(
            f"{gpu}: "
            + "  ".join(f"k={k}: {e:6.2f}%" for k, e in zip(ks, errs, strict=True))
            + f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        for src, x in families[gpu].items():
            print(f"    {src:18s} " + "  ".join(f"{v:5.1f}" for v in x), flush=True)
    medians = [round(float(np.median([v[i] for v in per_gpu.values()])), 2) for i in range(len(ks))]
    worse = sum(1 for v in per_gpu.values() if v[-1] >= v[0])
    worse_any = sum(1 for v in per_gpu.values() if any(x >= v[0] for x in v[1:]))
    print(
        "median over GPUs: " + "  ".join(f"k={k}: {m}%" for k, m in zip(ks, medians, strict=True))
    )
    print(f"GPUs not better than k=0 at some k > 0: {worse_any}")
    print(json.dumps({"k": ks, "median_ape": medians, "gpus_worse_than_k0": worse}))
    return 0


class Meta:
    """Leave-one-GPU-out meta-validation of the adaptation's knobs (`fewshot_transfer.Knobs`).

    For a left-out GPU g it uses only the other GPUs: each other GPU j in turn plays the unseen
    one, with a transfer model fitted on the GPUs other than g and j (smaller: `--meta-rows`
    rows per table, `--meta-trees` rounds) and j's rows as the pool; the knobs whose worst j
    gains most on its k = 0 error at the largest k win (`Meta.knobs`). A pair model is
    fitted once and serves both (g out, j inner) and (j out, g inner)."""

    def __init__(self, args: argparse.Namespace, names: list[str]) -> None:
        from servesim.predictor import calibrate

        self.train = calibrate.package_data(names, max_rows=args.meta_rows, seed=2)
        self.test = calibrate.package_data(list(self.train), max_rows=args.meta_eval_rows, seed=3)
        self.trees = args.meta_trees
        self.models: dict[frozenset, object] = {}
        self.cache: dict[tuple, dict] = {}

    def _arrays(self, out: str, inner: str) -> dict:
        """(residual, proposals) per family of `inner`'s rows under the model without both."""
        from servesim.predictor import fewshot_transfer as ft
        from servesim.predictor import transfer

        pair = frozenset((out, inner))
        if pair not in self.models:
            self.models[pair] = transfer.fit({g: d for g, d in self.train.items() if g not in pair})
        key = (pair, inner)
        if key not in self.cache:
            cands = tuple(dev for g, (dev, _) in self.train.items() if g not in pair)
            dev, samples = self.test[inner]
            res = ft.residuals(self.models[pair], samples, dev, cands)
            order = sorted(res, key=lambda x: (ft.ORDER.index(transfer.FAMILY_OF[x]), x))
            self.cache[key] = {x: res[x] for x in order}
        return self.cache[key]

    def knobs(self, exclude: str, ks: list[int]):
        """The grid point whose worst GPU but `exclude` gains most at the largest k (the goal is
        a gain on every GPU); ties go to the best mean over the other GPUs and every k."""
        from servesim.predictor import fewshot_transfer as ft

        # The shot plan and the two shrinkages; the proposals' knobs (stay, scale, similarity)
        # stay `KNOBS`': a wider grid overfits the pair models (NOTES, stop 45).
        grid = [
            replace(ft.KNOBS, offset_shots=off, quantile=q, family_shots=fam)
            for off in (20.0, 80.0, math.inf)
            for q in (0.9, 0.75, 0.6)
            for fam in (5.0, 10.0, 20.0)
        ]
        inner = [g for g in self.test if g != exclude]
        arrays = {j: self._arrays(exclude, j) for j in inner}
        last = ks.index(max(ks))
        changes = {kn: [_changes(arrays[j], kn, ks) for j in inner] for kn in grid}
        worst = {kn: max(c[last] for c in changes[kn]) for kn in grid}
        mean = {kn: float(np.mean(changes[kn])) for kn in grid}
        return min(grid, key=lambda kn: (round(worst[kn], 6), mean[kn]))


def _changes(arrays: dict, knobs, ks: list[int]) -> list[float]:
    """Relative change of the median APE from k = 0 at each of `ks` (planned shots)."""
    from servesim.predictor import fewshot_transfer as ft
    from servesim.predictor import transfer

    diffs = {x: d for x, (_, d) in arrays.items()}
    prior = ft.prior_weights(list(diffs.values()), knobs)
    base = _median_ape(arrays, {}, {}, 0.0)
    out = []
    for k in ks:
        picks = ft.pick(ft.disagreement(diffs, knobs), k, knobs)
        per_fam: dict = {}
        for x, ix in picks.items():
            if len(ix):
                r, d = arrays[x]
                fam = ft.unit_of(x)
                old = per_fam.get(fam)
                per_fam[fam] = (
                    (r[ix], d[ix]) if old is None else
                    (np.concatenate([old[0], r[ix]]), np.vstack([old[1], d[ix]]))
                )  # fmt: skip
        families = tuple(dict.fromkeys(transfer.FAMILY_OF[x] for x in arrays))
        weights, offset = ft.weigh(per_fam, prior, knobs, families)
        own = ft.family_offsets(per_fam, weights, offset, knobs)
        out.append(_median_ape(arrays, picks, weights, offset, own) / base - 1.0)
    return out


def _median_ape(
    arrays: dict, picks: dict, weights: dict, offset: float, family_offsets: dict | None = None
) -> float:
    """Median APE over the rows not picked, with the adaptation's log correction applied as
    `fewshot_transfer.Adapted` applies it."""
    from servesim.predictor import fewshot_transfer as ft

    errs = []
    for x, (r, d) in arrays.items():
        keep = np.ones(len(r), dtype=bool)
        keep[picks.get(x, np.zeros(0, dtype=int))] = False
        fam = ft.unit_of(x)
        w = weights.get(fam)
        # the device offset is the compute families' (`Adapted._offset`), not the fabric's
        own = (family_offsets or {}).get(fam, 0.0)
        corr = (
            (0.0 if ft.is_fabric(fam) else offset)
            + own
            + (d[keep] @ w if w is not None and len(w) else 0.0)
        )
        errs.append(100.0 * np.abs(np.exp(corr - r[keep]) - 1.0))
    return float(np.median(np.concatenate(errs)))


def _random_picks(pool: dict, k: int, seed: int) -> dict:
    """k rows drawn at random from all families together (indices per family)."""
    keys = [(src, i) for src, s in pool.items() for i in range(len(s["latency_s"]))]
    rng = np.random.default_rng(seed)
    out: dict = {src: [] for src in pool}
    for j in rng.choice(len(keys), size=k, replace=False) if k else []:
        out[keys[j][0]].append(keys[j][1])
    return {src: np.asarray(v, dtype=int) for src, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables", action="append", help="folder of tables (repeatable)")
    ap.add_argument("--device", action="append", help="device of each --tables folder")
    ap.add_argument("--devices", help="extra device catalog YAML")
    ap.add_argument("--cross", action="store_true", help="prior = bundled fit, whole folder unseen")
    ap.add_argument("--repeats", type=int, help="draws per k (default 20; 5 leaving GPUs out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--leave-one-gpu-out", action="store_true", help="unseen GPU = each GPU")
    ap.add_argument("--k", default="0,3,5,10", help="measurement counts (--leave-one-gpu-out)")
    ap.add_argument("--gpus", help="comma-separated GPUs for --leave-one-gpu-out (default: all)")
    ap.add_argument("--only", help="comma-separated GPUs to leave out (default: every GPU)")
    ap.add_argument("--fit-rows", type=int, default=2000, help="rows per table of the prior fit")
    ap.add_argument("--eval-rows", type=int, default=1000, help="rows per table of the left-out")
    ap.add_argument(
        "--shots",
        choices=("plan", "random"),
        default="plan",
        help="which rows of the left-out GPU are measured: planned from shapes (default) or random",
    )
    ap.add_argument(
        "--meta",
        action="store_true",
        help="choose the adaptation's knobs per left-out GPU by leave-one-GPU-out "
        "meta-validation on the other GPUs (default: the fixed fewshot_transfer.KNOBS)",
    )
    ap.add_argument("--meta-rows", type=int, default=300, help="rows per table, meta fits")
    ap.add_argument("--meta-trees", type=int, default=40, help="boosting rounds, meta fits")
    ap.add_argument("--meta-eval-rows", type=int, default=200, help="rows per table, meta pools")
    args = ap.parse_args(argv)
    if args.leave_one_gpu_out:
        args.repeats = args.repeats or 5
        return leave_one_gpu_out(args)
    args.repeats = args.repeats or 20
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
    raise SystemExit(script_exit(main))
