"""Write held-out-like silicon rows: InferenceX dashboard exports of every bundled config.

The end-to-end rows that judge servesim name GPUs, models and deployments the dev files do not
(B300, GB300; Kimi-K2.5, MiniMax-M2.5, gpt-oss-120b, GLM-5, Qwen3.5 on more GPUs). Their
measured figures are held out, but what such a row says is known: InferenceX's dashboard
export of one of its configs (`data/inferencex/single_node_configs.csv`,
`data/inferencex/disagg_layouts.csv`) on a day it was in effect. This script writes one row in
that format per config item, per run of days it was in effect (its first day) and per chosen
client count (the smallest, middle and largest of its list: an srt-slurm recipe's own, where
it has one), with placeholder measured figures (100 ms TTFT, 10 ms TPOT). Run through
`benchmarks/silicon.py`, the rows check what does not need the measurement: every row is
predicted or refused with a reason, never an internal error, and every prediction is a finite
positive number.

    python scripts/heldout_like_rows.py OUT.csv [--concurrency min|mid|max|all ...]
        [--models kimik2.5,gptoss] [--gpus gb300,b300] [--mode agg|disagg]
        [--max-concurrency N] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import silicon  # noqa: E402

from servesim.errors import ServesimError, at_least, script_exit  # noqa: E402

# InferenceX model prefix -> (dashboard model name, checkpoint path)
MODELS = {
    "dsr1": ("DeepSeek-R1", "deepseek-ai/DeepSeek-R1"),
    "gptoss": ("gpt-oss-120b", "openai/gpt-oss-120b"),
    "minimaxm2.5": ("MiniMax-M2.5", "MiniMaxAI/MiniMax-M2.5"),
    "kimik2.5": ("Kimi-K2.5", "moonshotai/Kimi-K2.5"),
    "glm5": ("GLM-5", "zai-org/GLM-5"),
    "glm5.1": ("GLM-5.1", "zai-org/GLM-5.1"),
    "qwen3.5": ("Qwen3.5-397B-A17B", "Qwen/Qwen3.5-397B-A17B"),
}
# aiconfigurator's quantisation columns for an InferenceX precision
QUANT = {"fp4": "nvfp4", "fp8": "fp8", "bf16": "bfloat16", "int4": "int4"}
PICKS = ("min", "mid", "max", "all")


def header() -> list[str]:
    """The silicon CSV's columns, as the bundled H100 file spells them."""
    with open(silicon.DEFAULT_CSV, newline="") as f:
        return next(csv.reader(f))


def chosen(concurrencies: str, picks: tuple[str, ...]) -> list[int]:
    """The client counts of an item's list to write a row for."""
    values = sorted({int(c) for c in concurrencies.split()})
    if not values:
        return []
    if "all" in picks:
        return values
    at = {"min": values[0], "mid": values[len(values) // 2], "max": values[-1]}
    return sorted({at[p] for p in picks})


def _row(columns: list[str], item: dict[str, str], day: str, conc: int, mode: str) -> dict:
    """A dashboard export's row of an item measured on `day` with `conc` clients."""
    dash, path = MODELS[item["model_prefix"]]
    frameworks = silicon.INFERENCEX_FRAMEWORK | silicon.INFERENCEX_SINGLE_FRAMEWORK
    row = dict.fromkeys(columns, "")
    quant = QUANT.get(item["precision"], "")
    row.update(
        id=f"{item['config_key']}_{mode}_{day}_{item['isl']}x{item['osl']}_c{conc}",
        silicon_data_source=(
            f"source_file={day}.csv; model={dash}; silicon_concurrency={conc}; "
            f"measured={day}T12:00:00Z; wip=False; image={item['image']}"
        ),
        backend=frameworks[item["framework"]],
        backend_version=item["image"].rsplit(":", 1)[-1].lstrip("v"),
        model_path=path,
        system=silicon.INFERENCEX_GPU[item["gpu"]],
        precision=item["precision"],
        mode=mode,
        isl=item["isl"],
        osl=item["osl"],
        gemm_quant_mode=quant,
        moe_quant_mode=quant,
        silicon_ttft_ms="100",
        silicon_tpot_ms="10",
    )
    return row


def colocated(columns: list[str], item: dict[str, str], day: str, conc: int) -> dict:
    """A colocated item's row: its GPUs as attention DP ranks when it runs DP attention."""
    row = _row(columns, item, day, conc, "agg")
    tp, ep, dp = int(item["tp"]), int(item["ep"]), item["dp_attn"] == "True"
    row.update(
        batch_size=str(conc),
        tp_size=str(1 if dp else tp),
        pp_size="1",
        attention_dp_size=str(tp if dp else 1),
        moe_tp_size=str(max(1, tp // ep)),
        moe_ep_size=str(ep),
    )
    return row


def disaggregated(columns: list[str], item: dict[str, str], day: str, conc: int) -> dict:
    """A disaggregated item's row: each pool's TP and EP, no worker counts or batch sizes
    (the dashboard gives none)."""
    row = _row(columns, item, day, conc, "disagg")
    for pool in ("prefill", "decode"):
        tp, ep = int(item[f"{pool}_tp"]), int(item[f"{pool}_ep"])
        row.update(
            {
                f"{pool}_tp_size": str(tp),
                f"{pool}_pp_size": "1",
                f"{pool}_attention_dp_size": "1",
                f"{pool}_moe_tp_size": str(max(1, tp // ep)),
                f"{pool}_moe_ep_size": str(ep),
            }
        )
    return row


def rows_of(
    picks: tuple[str, ...] = ("min", "mid", "max"),
    models: set[str] | None = None,
    gpus: set[str] | None = None,
    mode: str = "",
    max_concurrency: int = 0,
) -> list[dict]:
    """Every bundled InferenceX item's held-out-like rows (first day of each run in effect),
    at most `max_concurrency` clients each when given."""
    columns = header()
    out: list[dict] = []
    tables = (
        ("agg", silicon.inferencex_single_node(), colocated),
        ("disagg", silicon.inferencex_layouts(), disaggregated),
    )
    for kind, table, make in tables:
        if mode and mode != kind:
            continue
        for item in table:
            if item["model_prefix"] not in MODELS or item["gpu"] not in silicon.INFERENCEX_GPU:
                continue
            if (models and item["model_prefix"] not in models) or (
                gpus and item["gpu"] not in gpus
            ):
                continue
            for run in item["days_in_effect"].split():
                day = run.split("..")[0]
                # A disaggregated item with an srt-slurm recipe runs the recipe's clients
                # (InferenceX submits the recipe as it is; the config's list is nominal there),
                # and its dashboard row states those.
                clients = item.get("recipe_concurrencies") or item["concurrencies"]
                for conc in chosen(clients, picks):
                    if not max_concurrency or conc <= max_concurrency:
                        out.append(make(columns, item, day, conc))
    seen: dict[str, int] = {}
    for row in out:  # ids unique: one item can appear on several days with one list
        n = seen[row["id"]] = seen.get(row["id"], 0) + 1
        if n > 1:
            row["id"] += f"_{n}"
    return out


def _names(text: str, known: set[str], flag: str) -> set[str] | None:
    """A comma-separated filter; None when empty; an unknown name is a ServesimError."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    unknown = names - known
    if unknown:
        raise ServesimError(
            f"{flag} names {', '.join(sorted(unknown))}, which the InferenceX tables do not; "
            f"use some of {', '.join(sorted(known))}."
        )
    return names or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", help="CSV to write")
    ap.add_argument(
        "--concurrency",
        nargs="+",
        choices=PICKS,
        default=["min", "mid", "max"],
        help="which client counts of each item's list",
    )
    ap.add_argument("--models", default="", help="InferenceX model prefixes, comma-separated")
    ap.add_argument("--gpus", default="", help="InferenceX GPU names, comma-separated")
    ap.add_argument("--mode", choices=("agg", "disagg"), default="", help="one kind only")
    ap.add_argument("--max-concurrency", type=int, default=0, help="only rows of at most N clients")
    ap.add_argument("--limit", type=int, default=0, help="every k-th row, to keep N at most")
    args = ap.parse_args(argv)
    models = _names(args.models, set(MODELS), "--models")
    gpus = _names(args.gpus, set(silicon.INFERENCEX_GPU), "--gpus")
    if args.max_concurrency:
        at_least(args.max_concurrency, "--max-concurrency")
    rows = rows_of(tuple(args.concurrency), models, gpus, args.mode, args.max_concurrency)
    if args.limit:
        at_least(args.limit, "--limit")
        step = -(-len(rows) // args.limit)
        rows = rows[::step]
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header())
        w.writeheader()
        w.writerows(rows)
    print(
        f"wrote {len(rows)} rows ({sum(r['mode'] == 'agg' for r in rows)} colocated) to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
