"""Held-out-like rows (scripts/heldout_like_rows.py): InferenceX dashboard rows of the bundled
configs' GPUs and models that the dev files lack, run through benchmarks/silicon.py, each
predicted with finite positive figures or refused with a reason, never an internal error."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

import heldout_like_rows  # noqa: E402
import silicon  # noqa: E402

from servesim.errors import ServesimError  # noqa: E402


def _kind(row: dict) -> tuple[str, ...]:
    return (row["model_path"], row["system"], row["backend"], row["precision"], row["mode"])


def test_one_row_of_every_kind_is_predicted_or_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first row (fewest clients, at most 16) of each kind the dev files do not hold (the
    B300 and GB300; Kimi-K2.5, MiniMax-M2.5, gpt-oss-120b, GLM-5), through the benchmark's
    whole path: the run ends with JSON, no row hits a bug, every prediction is a finite
    positive number, and most kinds are predicted (the rest: several configs match, or none
    does). (`test_every_kind_of_*_simulates_from_a_dashboard_row` guard each kind's layout.)"""
    rows = heldout_like_rows.rows_of(("min",), max_concurrency=16)
    held_out_models = ("moonshotai/", "MiniMaxAI/", "openai/", "zai-org/")
    first: dict[tuple[str, ...], dict] = {}
    for row in rows:
        if row["system"] in ("b300_sxm", "gb300") or row["model_path"].startswith(held_out_models):
            first.setdefault(_kind(row), row)
    sample = list(first.values())
    kinds = {(r["model_path"], r["system"]) for r in sample}
    # the held-out GPUs and models are among them
    assert {"b300_sxm", "gb300"} <= {s for _, s in kinds}
    assert {"moonshotai/Kimi-K2.5", "MiniMaxAI/MiniMax-M2.5", "openai/gpt-oss-120b"} <= {
        m for m, _ in kinds
    }
    path, out = tmp_path / "rows.csv", tmp_path / "out.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=heldout_like_rows.header())
        w.writeheader()
        w.writerows(sample)
    assert silicon.main([str(path), "--rows-out", str(out)]) == 0
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    assert captured.err == ""
    with open(out, newline="") as f:
        results = list(csv.DictReader(f))
    assert len(results) == len(sample)
    assert not [r["id"] for r in results if r["status"].startswith(silicon.INTERNAL_ERROR)]
    ok = [r for r in results if r["status"] == "ok"]
    for r in ok:
        for what in ("predicted_ttft_ms", "predicted_tpot_ms"):
            value = float(r[what])
            assert math.isfinite(value) and value > 0, (r["id"], what, value)
    assert last["rows"] == len(ok) and len(ok) >= 0.6 * len(sample)


def test_the_chosen_client_counts_and_filters() -> None:
    assert heldout_like_rows.chosen("4 8 16 32 64", ("min",)) == [4]
    assert heldout_like_rows.chosen("64 4 16 8 32", ("min", "mid", "max")) == [4, 16, 64]
    assert heldout_like_rows.chosen("8 4", ("all",)) == [4, 8]
    rows = heldout_like_rows.rows_of(("max",), models={"kimik2.5"}, gpus={"gb200"})
    assert rows and {(r["model_path"], r["system"]) for r in rows} == {
        ("moonshotai/Kimi-K2.5", "gb200")
    }
    assert len({r["id"] for r in rows}) == len(rows)
    with pytest.raises(ServesimError, match="--gpus names mi999"):
        heldout_like_rows._names("b200,mi999", set(silicon.INFERENCEX_GPU), "--gpus")


def test_a_recipe_item_s_rows_state_the_clients_its_recipe_runs() -> None:
    """A disaggregated item with an srt-slurm recipe runs the recipe's clients (InferenceX
    submits the recipe as it is: H200 TensorRT-LLM DeepSeek-R1 at 1k/1k from 2026-01-29 lists
    4 clients for a recipe of 11 decode workers that runs 44), so its dashboard row says 44 and
    the matcher finds the item; at the nominal 4 no item runs the row's clients."""
    rows = [
        r
        for r in heldout_like_rows.rows_of(("min",), models={"dsr1"}, gpus={"h200"}, mode="disagg")
        if r["id"].startswith("dsr1-fp8-h200-dynamo-trt_disagg_2026-01-29_1024x1024")
    ]
    assert 44 in {silicon.stated_concurrency(r) for r in rows}
    assert 4 not in {silicon.stated_concurrency(r) for r in rows}
    for r in rows:
        _, source, refusal = silicon.recovered_layout(silicon.normalised_row(r)[0])
        assert refusal != "no InferenceX config matches" and (source or refusal)
    first = next(r for r in rows if silicon.stated_concurrency(r) == 44)
    nominal = {
        **first,
        "silicon_data_source": first["silicon_data_source"].replace(
            "silicon_concurrency=44", "silicon_concurrency=4"
        ),
    }
    refusal = silicon.recovered_layout(silicon.normalised_row(nominal)[0])[2]
    assert refusal == "no InferenceX config matches"
