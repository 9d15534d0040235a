"""Regenerate data/inferencex/single_node_configs.csv: InferenceX's colocated deployments.

InferenceX (github.com/SemiAnalysisAI/InferenceX, Apache-2.0) benchmarks each colocated
(single-node) deployment from an entry of `.github/configs/nvidia-master.yaml` (later
`configs/nvidia-master.yaml`): per model × GPU × framework × precision an `image` (the engine's
container tag) and per ISL/OSL a search space of `tp`, `ep`, `dp-attn`, `spec-decoding` and a
concurrency range (`conc-start` doubling up to `conc-end`). Its dashboard rows say the model,
GPU, engine, precision, lengths, parallelism, concurrency, the day and the image, but not
whether speculative decoding (MTP) ran: the same deployment is often benchmarked with and
without it, and its TPOT differs by up to 2×. This table lets `benchmarks/silicon.py` tell them
apart by the image and day, the way `scripts/inferencex_layouts.py` does for disaggregated rows.

    python scripts/inferencex_single_node.py INFERENCEX_GIT [--dates D ...] [--out F]

Without `--dates`, the days are those of the InferenceX rows in data/aic_e2e/*.csv (dashboard
exports and database records).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inferencex_layouts import CONFIG_PATHS, commit_at, git

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "inferencex" / "single_node_configs.csv"
FIELDS = (
    "config_key",
    "model_prefix",
    "gpu",
    "framework",
    "precision",
    "image",
    "isl",
    "osl",
    "tp",
    "ep",
    "dp_attn",
    "spec_decoding",
    "concurrencies",
    "source_file",
    "measured_days",
    "source_commits",
)
WHEN = ("measured_days", "source_commits")


def concurrencies(item: dict[str, object]) -> list[int]:
    """The concurrencies a search-space item benchmarks: `conc-list`, or `conc-start`
    doubling up to `conc-end` (InferenceX's matrix generator)."""
    if item.get("conc-list"):
        return [int(c) for c in item["conc-list"]]  # type: ignore[union-attr]
    start, end = int(item.get("conc-start") or 0), int(item.get("conc-end") or 0)
    out, c = [], start
    while 0 < c <= end:
        out.append(c)
        c *= 2
    return out


def measured_dates() -> list[str]:
    """Days the InferenceX rows of data/aic_e2e/*.csv were measured (dashboard exports and
    database records)."""
    days: set[str] = set()
    for path in sorted((ROOT / "data" / "aic_e2e").glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                src = row.get("silicon_data_source", "")
                m = re.search(r"measured=(\d{4}-\d\d-\d\d)", src)
                if m and src.startswith(("source_file=", "db-dump/")):
                    days.add(m.group(1))
    return sorted(days)


def single_node(inferencex: str, day: str, models: tuple[str, ...]) -> list[dict[str, object]]:
    """The colocated search-space items of the NVIDIA master config in effect on `day`."""
    for path in CONFIG_PATHS:
        commit, _ = commit_at(inferencex, day, path)
        if commit:
            break
    else:
        return []
    text = git(inferencex, "show", f"{commit}:{path}")
    rows: list[dict[str, object]] = []
    for key, entry in (yaml.safe_load(text) or {}).items():
        if not isinstance(entry, dict) or entry.get("disagg") or entry.get("multinode"):
            continue
        if entry.get("model-prefix") not in models:
            continue
        gpu = key.split("-")[2] if key.count("-") >= 3 else ""
        for seq in entry.get("seq-len-configs") or []:
            for item in seq.get("search-space") or []:
                rows.append(
                    {
                        "config_key": key,
                        "model_prefix": entry.get("model-prefix", ""),
                        "gpu": gpu,
                        "framework": entry.get("framework", ""),
                        "precision": entry.get("precision", ""),
                        "image": entry.get("image", ""),
                        "isl": seq.get("isl", ""),
                        "osl": seq.get("osl", ""),
                        "tp": item.get("tp", ""),
                        "ep": item.get("ep", 1),
                        "dp_attn": bool(item.get("dp-attn", False)),
                        "spec_decoding": item.get("spec-decoding", "none") or "none",
                        "concurrencies": " ".join(str(c) for c in concurrencies(item)),
                        "source_file": path,
                        "measured_days": day,
                        "source_commits": commit[:12],
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("inferencex", help="git dir of SemiAnalysisAI/InferenceX")
    ap.add_argument("--dates", nargs="*", help="measured days (YYYY-MM-DD)")
    ap.add_argument("--models", nargs="*", default=["dsr1", "qwen3.5"], help="model-prefixes")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    merged: dict[tuple[object, ...], dict[str, object]] = {}
    for day in args.dates or measured_dates():
        for row in single_node(args.inferencex, day, tuple(args.models)):
            key = tuple(row[f] for f in FIELDS if f not in WHEN)
            if key in merged:
                for f in WHEN:
                    merged[key][f] = f"{merged[key][f]} {row[f]}"
            else:
                merged[key] = row
    rows = list(merged.values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(FIELDS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
