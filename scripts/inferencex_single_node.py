"""Regenerate data/inferencex/single_node_configs.csv: InferenceX's colocated deployments.

InferenceX (github.com/SemiAnalysisAI/InferenceX, Apache-2.0) benchmarks each colocated
(single-node) deployment from an entry of `.github/configs/nvidia-master.yaml` (later
`configs/nvidia-master.yaml`): per model × GPU × framework × precision an `image` (the engine's
container tag) and per ISL/OSL a search space of `tp`, `ep`, `dp-attn`, `spec-decoding` and a
concurrency range (`conc-start` doubling up to `conc-end`). Its dashboard rows say the model,
GPU, engine, precision, lengths, parallelism, concurrency, the day and the image, but not
whether speculative decoding (MTP) ran: the same deployment is often benchmarked with and
without it, and its TPOT differs by up to 2×. For MTP items the draft tokens per step come from
the launch script the entry runs at that commit (`benchmarks/single_node/<prefix>_<precision>_
<gpu>[_trt]_mtp.sh`, earlier `benchmarks/..._slurm.sh`). This table lets `benchmarks/silicon.py`
tell them apart by the image and day, as `scripts/inferencex_layouts.py` does for disaggregated
rows.

    python scripts/inferencex_single_node.py INFERENCEX_GIT [--dates D ...] [--out F]

Without `--dates`, the days are those of the InferenceX rows in data/aic_e2e/*.csv (dashboard
exports and database records).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inferencex_layouts import CONFIG_PATHS, commit_at, git, measured_dates, write_merged

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
    "num_draft_tokens",
    "concurrencies",
    "source_file",
    "measured_days",
    "source_commits",
)
WHEN = ("measured_days", "source_commits")
# Where an entry's launch script has lived: benchmarks/single_node/ since early 2026, before
# that benchmarks/<name>.sh, and earlier still benchmarks/<name>_slurm.sh (or _docker.sh).
SCRIPT_PATHS = (
    "benchmarks/single_node/{}.sh",
    "benchmarks/{}.sh",
    "benchmarks/{}_slurm.sh",
    "benchmarks/{}_docker.sh",
)


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


def draft_tokens(script: str, dp_attn: bool) -> str:
    """Draft tokens per step an MTP launch script sets: TensorRT-LLM's `MTP=N`
    (`num_nextn_predict_layers`), with the value of the `if [[ "$DP_ATTENTION" == "true" ]]`
    branch under attention DP and of the other branch (or the default before it) otherwise;
    SGLang's `SPECULATIVE_NUM_STEPS=N` (`--speculative-num-steps`). '' when it sets none."""
    m = re.search(r"^SPECULATIVE_NUM_STEPS=(\d+)", script, re.M)
    if m:
        return m.group(1)
    value = {True: "", False: ""}
    branch = None  # None: top level; True/False: inside the DP_ATTENTION if/else
    for line in script.splitlines():
        text = line.strip()
        if re.match(r'if \[\[ "\$DP_ATTENTION" == "true" \]\]', text):
            branch = True
        elif branch is not None and text == "else":
            branch = False
        elif branch is not None and text == "fi":
            branch = None
        m = re.match(r"MTP=(\d+)$", text)
        if m:
            if branch is None:
                value = {True: m.group(1), False: m.group(1)}
            else:
                value[branch] = m.group(1)
    return value[dp_attn]


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
        fw = "_trt" if entry.get("framework") == "trt" else ""
        for seq in entry.get("seq-len-configs") or []:
            for item in seq.get("search-space") or []:
                spec = item.get("spec-decoding", "none") or "none"
                k = ""
                if spec == "mtp":
                    base = f"{entry.get('model-prefix')}_{entry.get('precision')}_{gpu}{fw}_mtp"
                    script = ""
                    for where in SCRIPT_PATHS:
                        script = git(inferencex, "show", f"{commit}:{where.format(base)}")
                        if script:
                            break
                    k = draft_tokens(script, bool(item.get("dp-attn", False))) if script else ""
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
                        "spec_decoding": spec,
                        "num_draft_tokens": k,
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
    days = args.dates or measured_dates(("source_file=", "db-dump/"))
    per_day = (single_node(args.inferencex, day, tuple(args.models)) for day in days)
    write_merged(per_day, FIELDS, WHEN, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
