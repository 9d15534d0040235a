"""benchmarks/silicon.py tells which of two InferenceX configs a row measured by the day's
changelog sweeps (data/inferencex/changelog_sweeps.csv): InferenceX benchmarks, on a push that
adds perf-changelog.yaml entries, only the configs those entries name."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import silicon  # noqa: E402

DEV = REPO / "data" / "aic_e2e" / "silicon_sample_dev_more.csv"
# An H200 TensorRT-LLM DeepSeek-R1 run at 4 clients, measured 2026-01-14T22:26:21Z: both the
# plain `dsr1-fp8-h200-trt` and the `dsr1-fp8-h200-trt-mtp` config list 4 clients that day.
H200_TRT = "2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_agg_1024x1024_c4_tp8_0_ep8_0_1252"
# A B200 SGLang disaggregated run, measured 2026-02-13T19:05:38Z (plain and -mtp layouts).
B200_SGLANG = "2026_03_25_deepseek_r1_b200_sxm_sglang_fp8_disagg_8192x1024_c4_tp8_0_ep8_0_694"


def dev_row(row_id: str) -> dict[str, str]:
    with open(DEV, newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["id"] == row_id)
    return silicon.normalised_row(row)[0]


@pytest.fixture
def no_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the sweeps were read: no day has any."""
    monkeypatch.setattr(silicon, "inferencex_sweeps", lambda *a, **k: {})


def test_the_table_holds_the_pushes_that_ran_benchmarks() -> None:
    """Hand-checked against InferenceX's history: the push of 2026-01-14 22:26:18 UTC
    (bf3456727ff5, PR #392) added one entry naming the three TensorRT-LLM MTP configs, and the
    push of 2026-02-13 19:05:35 UTC (ee032b37f060, PR #697) one naming B200 SGLang's MTP
    disaggregated config. The pushes that rewrote the file (deleting lines, which
    process_changelog.py refuses: 2025-12-17 abdb40a28246, 2026-02-19 7da2926f80d2) swept
    nothing. Every row is a day of the changelog-driven era, a 12-digit commit and a key."""
    with open(silicon.INFERENCEX_SWEEPS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(
        "2025-12-15" <= r["day"] <= "2026-04-27"
        and re.fullmatch(r"[0-9a-f]{12}", r["commit"])
        and r["config_keys"].split()
        for r in rows
    )
    by_commit = {r["commit"]: r for r in rows}
    assert by_commit["bf3456727ff5"]["day"] == "2026-01-14"
    assert by_commit["bf3456727ff5"]["config_keys"].split() == [
        "dsr1-fp4-b200-trt-mtp",
        "dsr1-fp8-b200-trt-mtp",
        "dsr1-fp8-h200-trt-mtp",
    ]
    assert by_commit["ee032b37f060"]["config_keys"] == "dsr1-fp8-b200-dynamo-sglang-mtp"
    assert "abdb40a28246" not in by_commit and "7da2926f80d2" not in by_commit


def test_a_key_pattern_matches_whole_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`*` stands for anything and the whole name must match (process_changelog.py's
    `get_config_keys_from_master`): `*gb200-dynamo-sglang` names the plain config, not its
    `-mtp` twin. Items of configs not swept that day go; if none or all were swept, the items
    stay as they were and no note is added."""
    table = tmp_path / "sweeps.csv"
    table.write_text("day,commit,config_keys\n2026-01-02,0123456789ab,*gb200-dynamo-sglang x\n")
    read = silicon.inferencex_sweeps.__wrapped__
    monkeypatch.setattr(silicon, "inferencex_sweeps", lambda: read(table))
    day = "2026-01-02"
    plain, mtp = "dsr1-fp4-gb200-dynamo-sglang", "dsr1-fp4-gb200-dynamo-sglang-mtp"
    assert silicon.swept([plain, mtp], day, str) == (
        [plain],
        "; swept on 2026-01-02 by InferenceX's perf-changelog",
    )
    assert silicon.swept([mtp, "dsr1-fp8-b300-dynamo-trt"], day, str) == (
        [mtp, "dsr1-fp8-b300-dynamo-trt"],
        "",
    )
    assert silicon.swept([plain, "x"], day, str) == ([plain, "x"], "")  # both swept
    assert silicon.swept([plain, mtp], "2026-01-01", str) == ([plain, mtp], "")  # no sweeps
    assert silicon.swept([plain, mtp], "", str) == ([plain, mtp], "")  # no day
    assert silicon.swept([plain], day, str) == ([plain], "")  # nothing to choose


@pytest.mark.usefixtures("no_sweeps")
def test_without_the_sweeps_the_twins_leave_the_rows_ambiguous() -> None:
    assert silicon.single_node_config(dev_row(H200_TRT))[2] == "2 InferenceX configs match"
    assert silicon.layout_of(dev_row(B200_SGLANG))[2] == "2 InferenceX configs match"


def test_the_day_s_sweep_says_the_mtp_config_ran() -> None:
    """2026-01-14's only NVIDIA sweep named the `-mtp` TensorRT-LLM configs, so the H200 row
    ran `dsr1-fp8-h200-trt-mtp` (its launch script drafts 3 tokens at 4 clients); 2026-02-13's
    named B200 SGLang's `-mtp` disaggregated config, so the B200 row drafts with its recipe."""
    out, source, refusal = silicon.single_node_config(dev_row(H200_TRT))
    assert refusal == ""
    assert source.startswith("MTP k=3: dsr1-fp8-h200-trt-mtp in ")
    assert source.endswith("; swept on 2026-01-14 by InferenceX's perf-changelog")
    assert out["speculative_num_draft_tokens"] == "3"
    out, source, refusal = silicon.layout_of(dev_row(B200_SGLANG))
    assert refusal == ""
    assert "dsr1-fp8-b200-dynamo-sglang-mtp" in source and "swept on 2026-02-13" in source
    assert out["speculative_num_draft_tokens"]


def _layout_with(
    monkeypatch: pytest.MonkeyPatch,
    row: dict[str, str],
    layouts: tuple[dict[str, str], ...],
    single: tuple[dict[str, str], ...],
) -> tuple[dict[str, str], str, str]:
    """`layout_of` with these InferenceX tables in place of the bundled ones."""
    with monkeypatch.context() as m:
        m.setattr(silicon, "inferencex_layouts", lambda *a, **k: layouts)
        m.setattr(silicon, "inferencex_single_node", lambda *a, **k: single)
        return silicon.layout_of(row)


def test_rows_one_config_explains_were_swept_that_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule checked on the measured data: every dev row measured in the changelog era
    whose config is settled without the sweeps keeps the same config when each table is cut
    to the configs swept on its measured day, so no sweep-less run hides among them."""
    with open(DEV, newline="") as f:
        rows = [silicon.normalised_row(r)[0] for r in csv.DictReader(f)]
    layouts, single = silicon.inferencex_layouts(), silicon.inferencex_single_node()
    sweeps = silicon.inferencex_sweeps()
    checked = 0
    for row in rows:
        day = silicon.source_fields(row)["measured"][:10]
        if day < "2025-12-16":
            continue
        settled, source, refusal = silicon.layout_of(row)
        if refusal or not source or "swept on" in source:
            continue
        ran = sweeps.get(day, ())
        cut = [
            tuple(i for i in table if any(p.fullmatch(i["config_key"]) for p in ran))
            for table in (layouts, single)
        ]
        again, _, refusal_again = _layout_with(monkeypatch, row, *cut)
        assert refusal_again == "", (row["id"], day, source)
        assert again.get("speculative_num_draft_tokens") == settled.get(
            "speculative_num_draft_tokens"
        ), row["id"]
        checked += 1
    assert checked > 500
