"""benchmarks/silicon.py tells InferenceX's colocated runs with speculative decoding (MTP) from
those without, by the config, image and day that measured them, and repairs the exports that
report tp × ep GPUs as TP."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import silicon  # noqa: E402

POST2 = "nvcr.io#nvidia/tensorrt-llm/release:1.2.0rc6.post2"
POST3 = "nvcr.io#nvidia/tensorrt-llm/release:1.2.0rc6.post3"


def item(key: str, image: str, spec: str, tp: int, ep: int, dp_attn: bool, conc: str) -> dict:
    return {
        "config_key": key,
        "model_prefix": "dsr1",
        "gpu": "b200",
        "framework": "trt",
        "precision": "fp8",
        "image": image,
        "isl": "1024",
        "osl": "1024",
        "tp": str(tp),
        "ep": str(ep),
        "dp_attn": str(dp_attn),
        "spec_decoding": spec,
        "num_draft_tokens": "3" if spec == "mtp" else "",
        "concurrencies": conc,
        "source_file": ".github/configs/nvidia-master.yaml",
        "measured_days": "2026-02-03 2026-02-05",
        "source_commits": "aaaaaaaaaaaa bbbbbbbbbbbb",
    }


# The B200 TRT-LLM DeepSeek-R1 fp8 pair as InferenceX listed it in February 2026.
TABLE = (
    item("dsr1-fp8-b200-trt", POST2, "none", 8, 1, False, "4 8 16 32 64"),
    item("dsr1-fp8-b200-trt", POST2, "none", 8, 8, True, "128 256"),
    item("dsr1-fp8-b200-trt-mtp", POST3, "mtp", 8, 1, False, "4 8 16 32 64"),
)


def dashboard_row(image: str, conc: int, tp: int, dp: int = 1, ep: int = 1, day: str = "05"):
    src = (
        f"source_file=2026-03-25.csv; model=DeepSeek-R1; silicon_concurrency={conc}; "
        f"measured=2026-02-{day}T19:55:05Z; wip=False; image={image}"
    )
    return {
        "mode": "agg",
        "system": "b200_sxm",
        "backend": "trtllm",
        "model_path": "deepseek-ai/DeepSeek-R1",
        "precision": "fp8",
        "isl": "1024",
        "osl": "1024",
        "batch_size": str(conc // dp),
        "tp_size": str(tp),
        "attention_dp_size": str(dp),
        "moe_ep_size": str(ep),
        "moe_tp_size": str(tp * dp // ep),
        "silicon_data_source": src,
    }


def test_the_image_tells_the_mtp_run_from_the_plain_one() -> None:
    """The MTP run is simulated with its launch script's draft length (MTP=3)."""
    plain = dashboard_row(POST2, 4, 8)
    out, source, refusal = silicon.single_node_config(plain, TABLE)
    assert (out, refusal) == (plain, "") and source.startswith("no speculative decoding: ")
    assert "dsr1-fp8-b200-trt in" in source and source.endswith("@bbbbbbbbbbbb")
    mtp, source, refusal = silicon.single_node_config(dashboard_row(POST3, 4, 8), TABLE)
    assert refusal == "" and source.startswith("MTP k=3: dsr1-fp8-b200-trt-mtp in")
    assert mtp["speculative_num_draft_tokens"] == "3"


def test_without_an_image_both_kinds_match_and_the_row_is_refused() -> None:
    _, _, refusal = silicon.single_node_config(dashboard_row("", 8, 8), TABLE)
    assert refusal == "2 InferenceX configs match"
    # A concurrency no config lists, or a day it was not in effect: nothing matches.
    assert silicon.single_node_config(dashboard_row(POST2, 12, 8), TABLE)[2] == (
        "no InferenceX config matches"
    )
    assert silicon.single_node_config(dashboard_row(POST2, 4, 8, day="10"), TABLE)[2] == (
        "no InferenceX config matches"
    )


def test_an_export_reporting_tp_times_ep_gets_the_configs_layout() -> None:
    """tp8 ep8 with dp-attention reported as 64 DP ranks (and 128 clients as 2 per rank):
    the layout becomes 8 DP ranks of attention TP 1, experts over 8 GPUs, 16 clients a rank."""
    mangled = dashboard_row(POST2, 128, 1, dp=64, ep=8)
    out, source, refusal = silicon.single_node_config(mangled, TABLE)
    assert refusal == "" and source.startswith("layout recovered from dsr1-fp8-b200-trt in")
    assert (out["tp_size"], out["attention_dp_size"], out["moe_ep_size"]) == ("1", "8", "8")
    assert (out["moe_tp_size"], out["batch_size"]) == ("1", "16")
    assert silicon.specified_or_reason(out) == ""


def test_database_records_are_read_too_and_other_rows_pass_through() -> None:
    dump = dashboard_row("", 4, 8)
    dump.update(
        model_path="deepseek-ai/DeepSeek-V3",
        silicon_data_source="db-dump/2026-04-27; config_id=473; silicon_concurrency=4; "
        f"measured=2026-02-03T00:00:00.000Z; workflow_run_id=248; {POST3}",
    )
    assert silicon.single_node_config(dump, TABLE)[0]["speculative_num_draft_tokens"] == "3"
    aiperf = {**dump, "silicon_data_source": "source_file=/x/aic-auto-gap-analysis/y.csv"}
    assert silicon.single_node_config(aiperf, TABLE) == (aiperf, "", "")
    disagg = {**dump, "mode": "disagg"}
    assert silicon.single_node_config(disagg, TABLE) == (disagg, "", "")


def test_the_bundled_table_keeps_februarys_b200_pair_apart() -> None:
    """scripts/inferencex_single_node.py read InferenceX's config as of 2026-02-05: the plain
    B200 TRT-LLM DeepSeek-R1 fp8 config ran 1.2.0rc6.post2, its MTP twin post3."""
    rows = [
        r
        for r in silicon.inferencex_single_node()
        if r["config_key"].startswith("dsr1-fp8-b200-trt") and "2026-02-05" in r["measured_days"]
    ]
    images = {(r["spec_decoding"], r["image"]) for r in rows}
    assert images == {("none", POST2), ("mtp", POST3)}
    # Its launch script: MTP=3, or 1 under attention DP (dsr1_fp8_b200_trt_mtp.sh).
    drafts = {(r["dp_attn"], r["num_draft_tokens"]) for r in rows if r["spec_decoding"] == "mtp"}
    assert drafts <= {("False", "3"), ("True", "1")} and ("False", "3") in drafts


def test_gap_analysis_rows_match_any_day_by_their_layout() -> None:
    """The Qwen3.5 gap-analysis file repeats InferenceX runs without day or image: on B200 the
    fp8 TP4 config without MTP split experts 4 ways, its MTP twin kept EP 1, so a TP4 EP1 row
    was the MTP run and a TP8 EP1 row the plain one."""
    table = tuple(r for r in silicon.inferencex_single_node() if r["model_prefix"] == "qwen3.5")
    gap = {
        "mode": "agg",
        "system": "b200_sxm",
        "backend": "sglang",
        "model_path": "Qwen/Qwen3.5-397B-A17B",
        "precision": "fp8",
        "isl": "1024",
        "osl": "1024",
        "batch_size": "4",
        "tp_size": "4",
        "attention_dp_size": "1",
        "moe_ep_size": "1",
        "silicon_data_source": "source_file=qwen3.5-397b-gap-analysis.csv; silicon_concurrency=4",
    }
    mtp = silicon.single_node_config(gap, table)
    assert mtp[2] == "" and mtp[0]["speculative_num_draft_tokens"] == "3"  # SPECULATIVE_NUM_STEPS
    _, source, refusal = silicon.single_node_config({**gap, "tp_size": "8"}, table)
    assert refusal == "" and "qwen3.5-fp8-b200-sglang in" in source


def test_draft_length_read_from_launch_scripts() -> None:
    """TensorRT-LLM scripts set MTP=N, with another N under attention DP; SGLang scripts set
    SPECULATIVE_NUM_STEPS (shapes of InferenceX's benchmarks/single_node/*_mtp.sh)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from inferencex_single_node import draft_tokens

    trt_default = 'MTP=3\nif [[ "$DP_ATTENTION" == "true" ]]; then\n    MTP=1\nfi\n'
    trt_branches = 'if [[ "$DP_ATTENTION" == "true" ]]; then\n    MTP=1\nelse\n    MTP=3\nfi\n'
    for script in (trt_default, trt_branches):
        assert (draft_tokens(script, False), draft_tokens(script, True)) == ("3", "1")
    assert draft_tokens("SPECULATIVE_NUM_STEPS=2\nSPECULATIVE_DRAFT_TOKENS=3\n", False) == "2"
    assert draft_tokens("echo nothing\n", False) == ""


def test_a_row_stating_only_its_tp_takes_the_configs_ep_and_dp() -> None:
    """Early records leave EP and attention DP at 1: tp8 with 128 clients matches no config
    exactly, so it takes the one run at TP 8 for 128 clients (EP 8 with DP attention); a TP no
    config ran at stays refused."""
    early = dashboard_row(POST2, 128, 8)
    out, source, refusal = silicon.single_node_config(early, TABLE)
    assert refusal == "" and source.startswith("layout recovered from dsr1-fp8-b200-trt in")
    assert (out["tp_size"], out["attention_dp_size"], out["moe_ep_size"]) == ("1", "8", "8")
    assert out["batch_size"] == "16"
    assert silicon.single_node_config(dashboard_row(POST2, 128, 4), TABLE)[2] == (
        "no InferenceX config matches"
    )
