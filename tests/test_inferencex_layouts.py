"""benchmarks/silicon.py completes InferenceX disaggregated rows from InferenceX's own config
(data/inferencex/disagg_layouts.csv) only where one layout matches, and the table is sound."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import silicon  # noqa: E402

from servesim.errors import ServesimError  # noqa: E402

DEV = REPO / "data" / "aic_e2e" / "silicon_sample_dev_more.csv"
SETTING_KEYS = {
    "a2a",
    "dense_tp",
    "moe_backend",
    "mem_fraction",
    "ar_fusion",
    "kv_dtype",
    "token_budget",
    "graph_max_bs",
    "recv_interval",
    "adp_balance_timeout",
    "lm_head",
    "overlap",
    "kv_tokens",
    "attention_dp",
    "stream_interval",
    "postprocess_workers",
}


def dev_row(row_id: str) -> dict[str, str]:
    with open(DEV, newline="") as f:
        return next(r for r in csv.DictReader(f) if r["id"] == row_id)


def test_refused_dev_row_gets_the_config_s_worker_counts() -> None:
    """Hand-checked: InferenceX .github/configs/nvidia-master.yaml at f316a0ef6013 (2026-03-23,
    in effect when the row was measured at 13:00Z), entry dsr1-fp4-gb200-dynamo-trt, 1k/1k,
    `conc-list: [6144, 16130]` with prefill 1 worker tp4 ep4 dp-attn, decode 2 workers tp4 ep4
    dp-attn and CONFIG_FILE recipes/trtllm/gb200-fp4/1k1k/stp/ctx1_gen2_dep4_batch768_eplb0_
    mtp0.yaml, whose NVIDIA/srt-slurm copy (535b2dc7a129) sets max_batch_size 16 (prefill)
    and 768 (decode). The table cites the first commit of the run of days the item stood
    unchanged in (4e9a376bfcb0, 2026-01-30; srt-slurm 0e421305fe4a)."""
    row = dev_row("2026_03_25_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c6144_tp4_0_ep4_0_359")
    assert silicon.specified_or_reason(row) == "disagg row without worker counts or batch sizes"
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == ""
    assert "nvidia-master.yaml@4e9a376bfcb0" in source
    assert "ctx1_gen2_dep4_batch768_eplb0_mtp0.yaml" in source
    expect = {
        "prefill_num_workers": "1",
        "prefill_batch_size": "16",
        "prefill_tp_size": "1",
        "prefill_attention_dp_size": "4",
        "prefill_moe_ep_size": "4",
        "decode_num_workers": "2",
        "decode_batch_size": "768",
        "decode_tp_size": "1",
        "decode_attention_dp_size": "4",
        "decode_moe_tp_size": "1",
        "decode_moe_ep_size": "4",
    }
    assert {k: filled[k] for k in expect} == expect
    # 6144 clients fit 2 workers × 4 ranks × 768 slots exactly, so the row is now predicted.
    assert silicon.specified_or_reason(filled) == ""
    assert row["decode_num_workers"] == ""  # the input row is not modified


def test_recipe_gone_from_srt_slurm_that_day_is_read_where_it_was_first_published() -> None:
    """Hand-checked: nvidia-master.yaml at 593fb431addc (2026-03-18, row measured 21:01Z),
    dsr1-fp8-b200-dynamo-sglang 1k/1k item `conc-list: [16, 32, 64, 128, 256]`, prefill 1 ×
    tp8 ep8, decode 3 × tp8 ep8, no dp-attn, CONFIG_FILE recipes/b200-fp8/1k1k/stp/
    low-latency-tep8-1p3d.yaml: removed from NVIDIA/srt-slurm on 2026-03-04, so read at
    5063eb43 (the merge of the sa-submission-q1-2026 branch), max-running-requests 512. The
    table cites the first commit of the item's unchanged run (04b564b3942a)."""
    row = dev_row(
        "2026_03_25_deepseek_r1_b200_sxm_sglang_fp8_disagg_1024x1024_c256_tp8_0_ep8_0_541"
    )
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == "" and "@04b564b3942a" in source and "srt-slurm 5063eb432640" in source
    got = {k: filled[k] for k in ("prefill_num_workers", "decode_num_workers", "decode_batch_size")}
    assert got == {
        "prefill_num_workers": "1",
        "decode_num_workers": "3",
        "decode_batch_size": "512",
    }
    assert (filled["decode_tp_size"], filled["decode_attention_dp_size"]) == ("8", "1")
    assert (filled["decode_moe_tp_size"], filled["decode_moe_ep_size"]) == ("1", "8")


def test_ambiguous_and_unmatched_rows_stay_refused_with_their_reason() -> None:
    """h200 SGLang 1k/1k at concurrency 1: the low-latency 1p9d recipe is listed both without
    and with MTP (same TP layout and image), so the row cannot say which ran. GB200 TRT-LLM of
    December 2025 at tp 36 and 4 clients: the export counts the whole deployment's GPUs as TP,
    and an MTP and a plain item of 36 GPUs both ran 4 clients."""
    amb = dev_row("2026_03_25_deepseek_r1_h200_sxm_sglang_fp8_disagg_1024x1024_c1_tp8_0_ep1_0_890")
    filled, source, refusal = silicon.recovered_layout(amb)
    assert (source, refusal) == ("", "2 InferenceX configs match")
    assert filled is amb
    none = dev_row("2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c4_tp36_ep1_1079")
    assert silicon.recovered_layout(none)[1:] == ("", "2 InferenceX configs match")
    other = {
        **none,
        "silicon_data_source": none["silicon_data_source"].replace("2025-12", "2024-12"),
    }
    assert silicon.recovered_layout(other)[1:] == ("", "no InferenceX config matches")


def test_clients_are_the_ones_the_srt_slurm_recipe_benchmarks() -> None:
    """Hand-checked: nvidia-master.yaml at f316a0ef6013 lists dsr1-fp8-h200-dynamo-trt 1k/1k
    items with `conc-list: [32]`, but InferenceX submits their recipe as it is (`srtctl apply
    -f $CONFIG_FILE`), and recipes/trtllm/h200/1k1k/stp/c32_ctx1_gen9_tep8_batch256_eplb0_
    mtp0.yaml (srt-slurm 535b2dc7a129) benchmarks `concurrencies: "288"` = 32 × 9 decode
    workers. The dashboard row of 288 clients is that deployment, without MTP."""
    row = dev_row(
        "2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_disagg_1024x1024_c288_tp8_0_ep8_0_353"
    )
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == "" and "c32_ctx1_gen9_tep8_batch256_eplb0_mtp0.yaml" in source
    assert (filled["decode_num_workers"], filled["decode_batch_size"]) == ("9", "256")
    assert "speculative_num_draft_tokens" not in filled
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    assert lay.recipe_concurrencies('benchmark:\n  concurrencies: "288"\n') == [288]
    assert lay.recipe_concurrencies('benchmark:\n  concurrencies: "4x8x16"\n') == [4, 8, 16]
    assert lay.recipe_concurrencies("benchmark:\n  concurrencies: [6144, '16130']\n") == [
        6144,
        16130,
    ]
    assert lay.recipe_concurrencies("benchmark:\n  type: sa-bench\n") == []


def test_the_container_image_tells_mtp_and_plain_runs_apart() -> None:
    """Hand-checked: on 2026-02-11 (nvidia-master.yaml at 84b7df6837bc) B200 fp4 SGLang ran
    the same 1p/6d layout at 64 clients as dsr1-fp4-b200-dynamo-sglang (image
    lmsysorg/sglang:v0.5.8.post1-cu130-runtime) and as its -mtp twin (v0.5.8.post1-cu130);
    the dashboard rows name the image, so each gets its own config (measured TPOT 6.3 ms for
    the MTP run, 8.8 ms for the plain one)."""
    mtp = dev_row("2026_03_25_deepseek_r1_b200_sxm_sglang_fp4_disagg_1024x1024_c64_tp4_0_ep4_0_784")
    plain = dev_row(
        "2026_03_25_deepseek_r1_b200_sxm_sglang_fp4_disagg_1024x1024_c64_tp4_0_ep4_0_799"
    )
    f_mtp, s_mtp, r_mtp = silicon.recovered_layout(mtp)
    f_plain, s_plain, r_plain = silicon.recovered_layout(plain)
    assert r_mtp == r_plain == ""
    assert "dsr1-fp4-b200-dynamo-sglang-mtp;" in s_mtp and "dsr1-fp4-b200-dynamo-sglang;" in s_plain
    assert int(f_mtp["speculative_num_draft_tokens"]) >= 1
    assert "speculative_num_draft_tokens" not in f_plain


def test_rows_that_state_their_layout_are_left_alone() -> None:
    row = {"mode": "disagg", "silicon_data_source": "db-dump/2026-04-27; config_id=434"}
    assert silicon.recovered_layout(row) == (row, "", "")


def test_layout_table_is_well_formed() -> None:
    rows = silicon.inferencex_layouts()
    assert len(rows) > 100
    for r in rows:
        for pool in ("prefill", "decode"):
            tp, ep = int(r[f"{pool}_tp"]), int(r[f"{pool}_ep"])
            assert int(r[f"{pool}_workers"]) >= 0 and tp >= 1 and ep >= 1  # 0: agg-style item
            # Usable items (batch sizes known) split experts as moe_tp = tp / ep; December
            # 2025 GB200 SGLang items carry placeholder tp 1 and no recipe, so are never used.
            if r["prefill_max_batch"] and r["decode_max_batch"]:
                assert tp % ep == 0, r["config_key"]
            assert r[f"{pool}_dp_attn"] in ("True", "False")
            assert r[f"{pool}_max_batch"] == "" or int(r[f"{pool}_max_batch"]) >= 1
        assert r["gpu"] in r["config_key"].split("-")
        assert r["precision"] in r["config_key"].split("-")
        assert all(int(c) >= 1 for c in r["concurrencies"].split())
        runs = [run.split("..") for run in r["days_in_effect"].split()]
        assert all(len(run) in (1, 2) and run == sorted(run) for run in runs)
        flat = [day for run in runs for day in run]
        assert flat == sorted(flat)
        assert len(runs) == len(r["source_commits"].split()) == len(r["recipe_commits"].split())
        assert all(len(c) == 12 for c in r["source_commits"].split())
        for pool in ("prefill", "decode"):  # recipe engine settings: known keys, numbers
            for pair in r[f"{pool}_settings"].split():
                key, _, value = pair.partition("=")
                assert key in SETTING_KEYS, (r["config_key"], pair)
                if key == "kv_dtype":
                    assert value in ("fp8", "bf16")
                elif key == "ar_fusion":
                    assert value == "flashinfer"
                elif key == "a2a":
                    assert value.replace("_", "").isalnum()
                elif key == "moe_backend":
                    assert value in ("trtllm", "cutlass", "deepgemm", "wideep", "cutedsl")
                elif key == "overlap":  # the context servers' `disable_overlap_scheduler`
                    assert value == "off" and pool == "prefill"
                elif key == "lm_head":  # TensorRT-LLM's flag, SGLang's
                    assert value == ("adp_tp" if "trt" in r["config_key"] else "attention_tp")
                else:
                    assert float(value) > 0


def test_mtp_row_gets_the_config_s_draft_length_and_is_simulated_with_it() -> None:
    """Hand-checked: nvidia-master.yaml at f316a0ef6013, dsr1-fp8-b200-dynamo-trt 8k/1k item
    for 48 clients, recipe recipes/trtllm/b200-fp8/8k1k/mtp/ctx1_gen6_tp8_batch8_eplb0_mtp3_48
    .yaml (NVIDIA/srt-slurm 535b2dc7a129): decode `speculative_config: {decoding_type: MTP,
    num_nextn_predict_layers: 3}`, 6 decode workers of max_batch_size 8."""
    row = dev_row("2026_03_25_deepseek_r1_b200_sxm_trtllm_fp8_disagg_8192x1024_c48_tp8_0_ep1_0_383")
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == "" and "mtp3_48.yaml" in source
    assert filled["speculative_num_draft_tokens"] == "3"
    assert (filled["decode_num_workers"], filled["decode_batch_size"]) == ("6", "8")
    assert silicon.specified_or_reason(filled) == ""
    dep = silicon.deployment_of(filled, silicon.Catalog())
    assert dep.decode.speculative.num_draft_tokens == 3
    assert dep.decode.speculative.method == "mtp"


def test_recipe_draft_length_from_either_engine() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    trt = "backend:\n  trtllm_config:\n    decode:\n      speculative_config:\n" + (
        "        decoding_type: MTP\n        num_nextn_predict_layers: 2\n"
    )
    sgl = "backend:\n  sglang_config:\n    decode:\n      speculative-num-steps: 3\n" + (
        "      speculative-eagle-topk: 1\n      speculative-num-draft-tokens: 4\n"
    )
    assert lay.recipe_draft_tokens(trt) == 2
    assert lay.recipe_draft_tokens(sgl) == 3  # steps, not draft tokens (steps + 1 at topk 1)
    assert lay.recipe_draft_tokens("backend:\n  sglang_config:\n    decode: {}\n") is None
    vllm = "backend:\n  vllm_config:\n    decode:\n      speculative-config: " + (
        """'{"method": "mtp", "num_speculative_tokens": 2}'\n"""
    )
    assert lay.recipe_draft_tokens(vllm) == 2
    # vLLM's max-num-seqs is per engine, one engine per data-parallel rank
    seqs = "backend:\n  vllm_config:\n    prefill:\n      data-parallel-size: 4\n" + (
        "      max-num-seqs: 1024\n    decode:\n      max-num-seqs: 256\n"
    )
    assert lay.recipe_batches(seqs) == (1024, 256)
    # SGLang's max-running-requests is per server, split over its DP-attention ranks, whichever
    # spelling of the DP size the recipe uses (b200-fp4/1k1k/stp/low-latency-dep4-1p-tep8-5d:
    # 512 on a prefill server of `data-parallel-size: 4` is 128 a rank; its decode has no DP)
    for flag in ("dp-size", "data-parallel-size"):
        sgl = "backend:\n  sglang_config:\n    prefill:\n      enable-dp-attention: true\n" + (
            f"      {flag}: 4\n      max-running-requests: 512\n"
            "    decode:\n      data-parallel-size: 1\n      max-running-requests: 512\n"
        )
        assert lay.recipe_batches(sgl) == (128, 512)
    no_adp = "backend:\n  sglang_config:\n    prefill:\n      data-parallel-size: 4\n" + (
        "      max-running-requests: 512\n"
    )
    assert lay.recipe_batches(no_adp) == (512, None)  # DP without DP attention: replicas
    table = silicon.inferencex_layouts()
    for r in table:  # no plain item names a draft length; an MTP item does unless its
        # recipe is not public (April 2026's `recipes/<gpu>-<fmt>/1k1k.yaml:zip_override_...`
        # variants, whose file srt-slurm published later), and then it is refused
        assert r["spec_decoding"] == "mtp" or r["num_draft_tokens"] == "", r["config_key"]
        if r["spec_decoding"] == "mtp" and not r["num_draft_tokens"]:
            assert set(r["recipe_commits"].split()) == {"-"}, r["config_key"]


def test_days_in_effect_are_written_as_runs_and_read_back(tmp_path: Path) -> None:
    """An item seen on 1-3 and 5 March is written once as `2026-03-01..2026-03-03 2026-03-05`
    with the commits of each run's first day, and each day finds its run."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    assert lay.every_day("2026-02-27", "2026-03-02") == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "2026-03-02",
    ]
    item = {"key": "a", "days": "", "commit": ""}
    per_day = [
        [{**item, "days": d, "commit": c}]
        for d, c in (("2026-03-01", "c1"), ("2026-03-02", "c2"), ("2026-03-03", "c2"))
    ] + [
        [{**item, "days": "2026-03-05", "commit": "c3"}],
        [{**item, "key": "b", "days": "2026-03-05", "commit": "c3"}],
    ]
    out = tmp_path / "t.csv"
    assert lay.write_merged(per_day, ("key", "days", "commit"), ("days", "commit"), str(out)) == 2
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0] == {"key": "a", "days": "2026-03-01..2026-03-03 2026-03-05", "commit": "c1 c3"}
    assert rows[1] == {"key": "b", "days": "2026-03-05", "commit": "c3"}
    runs = rows[0]["days"]
    assert [silicon.in_effect(runs, d) for d in ("2026-02-28", "2026-03-01", "2026-03-02")] == [
        None,
        0,
        0,
    ]
    assert [silicon.in_effect(runs, d) for d in ("2026-03-03", "2026-03-04", "2026-03-05")] == [
        0,
        None,
        1,
    ]


def test_model_prefixes_from_dashboard_names_and_checkpoint_paths() -> None:
    """InferenceX's prefixes (MODELS.md) for the names its dashboard and database use."""
    names = {
        "DeepSeek-R1": "dsr1",
        "deepseek-ai/DeepSeek-V3": "dsr1",
        "nvidia/DeepSeek-R1-0528-FP4-V2": "dsr1",
        "Qwen3.5-397B": "qwen3.5",
        "Qwen/Qwen3.5-397B-A17B": "qwen3.5",
        "Kimi-K2.5": "kimik2.5",
        "moonshotai/Kimi-K2.5": "kimik2.5",
        "MiniMax-M2.5": "minimaxm2.5",
        "gpt-oss-120b": "gptoss",
        "openai/gpt-oss-120b": "gptoss",
        "GLM-5": "glm5",
        "zai-org/GLM-5.1-FP8": "glm5.1",
        "Llama-3.1-70B": "",
        "Qwen/Qwen3-32B": "",
    }
    assert {n: silicon.inferencex_prefix(n) for n in names} == names


def test_every_gpu_and_model_of_the_table_is_one_a_row_can_name() -> None:
    """B300 and GB300 items (and every model of the table) are reachable from a row: the table
    is useless for a GPU or model prefix the lookup cannot name."""
    table = silicon.inferencex_layouts() + silicon.inferencex_single_node()
    assert {r["gpu"] for r in table} <= set(silicon.INFERENCEX_GPU)
    assert {"b300", "gb300"} <= {r["gpu"] for r in table}
    assert {r["model_prefix"] for r in table} <= {p for _, p in silicon.INFERENCEX_MODEL_NAMES}


def test_a_kimi_gb200_disaggregated_row_gets_its_recipe_and_simulates() -> None:
    """A dashboard row of the kind the issue quotes (Kimi-K2.5, GB200, TensorRT-LLM, 4
    clients, 1k/1k) measured on 2026-04-20: InferenceX's kimik2.5-fp4-gb200-dynamo-trt item
    (2026-04-18 on) with recipe ctx1dep4_gen4tep8_batch128 (srt-slurm) gives one prefill
    worker of 4 attention-DP ranks and four TP8 decode workers of 128 slots."""
    row = {
        "silicon_data_source": (
            "source_file=2026-04-06.csv; model=Kimi-K2.5; silicon_concurrency=4; "
            "measured=2026-04-20T12:00:00Z; wip=False; "
            "image=nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:1.1.0-dev.2"
        ),
        "backend": "trtllm",
        "model_path": "moonshotai/Kimi-K2.5",
        "system": "gb200",
        "precision": "fp4",
        "mode": "disagg",
        "isl": "1024",
        "osl": "1024",
        "gemm_quant_mode": "nvfp4",
        "moe_quant_mode": "nvfp4",
        "prefill_tp_size": "4",
        "prefill_moe_ep_size": "4",
        "decode_tp_size": "8",
        "decode_moe_ep_size": "4",
        "silicon_ttft_ms": "196",
        "silicon_tpot_ms": "10",
    }
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == "" and "ctx1dep4_gen4tep8_batch128" in source
    got = {
        k: filled[k]
        for k in (
            "prefill_num_workers",
            "prefill_attention_dp_size",
            "decode_num_workers",
            "decode_tp_size",
            "decode_batch_size",
        )
    }
    assert got == {
        "prefill_num_workers": "1",
        "prefill_attention_dp_size": "4",
        "decode_num_workers": "4",
        "decode_tp_size": "8",
        "decode_batch_size": "128",
    }
    assert silicon.specified_or_reason(filled, benchmarked_clients=True) == ""
    ttft_ms, tpot_ms = silicon.simulate_row(filled, silicon.Catalog(), 2)
    assert 0 < ttft_ms < 1000 and 0 < tpot_ms < 100


def test_a_recipe_file_of_several_variants_yields_the_one_the_config_names() -> None:
    """srt-slurm's multi-variant files (March 2026 on) as srtctl expands them: `base` merged
    with an `override_*` section (a null deletes a key) or with variant i of a
    `zip_override_*` section (lists zipped, one-element lists broadcast); InferenceX names one
    as `file.yaml:<selector>`, and the table takes the variant whose worker counts are the
    config item's. Hand-checked on srt-slurm 37f8ca23's recipes/b200-fp4/8k1k.yaml: its
    `zip_override_stp_lowlat[1]` is 1 prefill worker of DEP4 (512 requests a server, 128 a
    rank) and 5 decode workers of TP8 (512), benchmarked at 8 clients."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    text = (
        "base:\n  name: b\n  resources: {prefill_workers: 1, decode_workers: 1}\n"
        "  backend:\n    sglang_config:\n      prefill: {enable-dp-attention: true,"
        " data-parallel-size: 4, max-running-requests: 512}\n"
        "      decode: {max-running-requests: 512}\n"
        "  benchmark: {concurrencies: '4'}\n"
        "override_tp4:\n  backend:\n    sglang_config:\n"
        "      prefill: {enable-dp-attention: null, data-parallel-size: 1}\n"
        "zip_override_low:\n  name: [l0, l1, l2]\n"
        "  resources: {prefill_workers: [1, 1, 2], decode_workers: [1, 5, 5]}\n"
        "  benchmark: {concurrencies: ['64x128', '8', '4x128']}\n"
    )
    tp4 = lay.recipe_variants(text, "override_tp4")
    assert len(tp4) == 1
    assert tp4[0]["backend"]["sglang_config"]["prefill"] == {
        "data-parallel-size": 1,
        "max-running-requests": 512,
    }
    low = lay.recipe_variants(text, "zip_override_low")
    assert [v["resources"] for v in low] == [
        {"prefill_workers": 1, "decode_workers": 1},
        {"prefill_workers": 1, "decode_workers": 5},
        {"prefill_workers": 2, "decode_workers": 5},
    ]
    one = lay.recipe_for(text, "zip_override_low[1]", (1, 5))
    assert lay.recipe_concurrencies(one) == [8]
    assert lay.recipe_batches(one) == (128, 512)
    assert lay.recipe_for(text, "zip_override_low", (2, 5)) == lay.recipe_for(
        text, "zip_override_low[2]", (2, 5)
    )
    assert lay.recipe_batches(lay.recipe_for(text, "override_tp4", (1, 1))) == (512, 512)
    # a selector naming no variant, or none with the config's worker counts: no recipe
    assert lay.recipe_for(text, "zip_override_low[7]", (1, 5)) == ""
    assert lay.recipe_for(text, "zip_override_low[1]", (3, 3)) == ""
    # two variants with the config's worker counts that differ: which one ran is not known
    assert lay.recipe_for(text, "*", (1, 1)) == ""
    # a plain recipe file is itself, and names no selector
    assert lay.recipe_variants("resources: {prefill_workers: 1}\n", "") == [
        {"resources": {"prefill_workers": 1}}
    ]
    assert lay.recipe_variants("resources: {prefill_workers: 1}\n", "override_x") == []
    table = {
        (r["recipe"], r["days_in_effect"]): r
        for r in silicon.inferencex_layouts()
        if r["recipe"].startswith("recipes/b200-fp4/8k1k.yaml:")
    }
    row = next(r for (name, _), r in table.items() if name.endswith("zip_override_stp_lowlat[1]"))
    assert (row["prefill_workers"], row["decode_workers"]) == ("1", "5")
    assert (row["prefill_max_batch"], row["decode_max_batch"]) == ("128", "512")
    assert row["recipe_concurrencies"] == "8"
    assert "token_budget=32768" in row["prefill_settings"]


def test_recipe_engine_settings_in_servesim_names() -> None:
    """Each engine's recipe flags under servesim's names: SGLang's memory fraction, KV dtype,
    chunked-prefill size, graph size and receive interval; TensorRT-LLM's kv_cache_config,
    max_num_tokens, cuda_graph_config and attention-DP balancing; vLLM's engine arguments."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    sgl = (
        "backend:\n  sglang_config:\n    prefill:\n      mem-fraction-static: 0.95\n"
        "      kv-cache-dtype: fp8_e4m3\n      chunked-prefill-size: 8192\n"
        "      scheduler-recv-interval: 10\n    decode:\n      cuda-graph-max-bs: 128\n"
        "      mem-fraction-static: 0.85\n      stream-interval: 10\n"
        "      enable-flashinfer-allreduce-fusion: true\n"
    )
    assert lay.recipe_settings(sgl) == (
        "kv_dtype=fp8 mem_fraction=0.95 recv_interval=10 token_budget=8192",
        "ar_fusion=flashinfer graph_max_bs=128 mem_fraction=0.85",
    )
    trt = (
        "backend:\n  trtllm_config:\n    prefill:\n      max_num_tokens: 16384\n"
        "      cuda_graph_config: null\n      kv_cache_config:\n        dtype: fp8\n"
        "        free_gpu_memory_fraction: 0.6\n    decode:\n      max_num_tokens: 768\n"
        "      cuda_graph_config:\n        batch_sizes: [1, 2, 4, 768]\n"
        "      attention_dp_config:\n        enable_balance: true\n        timeout_iters: 60\n"
    )
    assert lay.recipe_settings(trt) == (
        "kv_dtype=fp8 mem_fraction=0.6 token_budget=16384",
        "adp_balance_timeout=60 graph_max_bs=768 token_budget=768",
    )
    # a worker's environment forcing TensorRT-LLM's all-to-all (the H100 recipes force DeepEP
    # on the decode workers only here; an unknown method is not read)
    forced = (
        "backend:\n  type: trtllm\n  decode_environment:\n"
        "    TRTLLM_FORCE_ALLTOALL_METHOD: DeepEP\n  prefill_environment:\n"
        "    TRTLLM_FORCE_ALLTOALL_METHOD: Bogus\n" + trt.removeprefix("backend:\n")
    )
    assert lay.recipe_settings(forced) == (
        "kv_dtype=fp8 mem_fraction=0.6 token_budget=16384",
        "a2a=deepep adp_balance_timeout=60 graph_max_bs=768 token_budget=768",
    )
    vllm = (
        "backend:\n  vllm_config:\n    prefill:\n      gpu-memory-utilization: 0.9\n"
        "      kv-cache-dtype: fp8\n      max-num-batched-tokens: 16384\n"
        "    decode:\n      max-cudagraph-capture-size: 512\n"
    )
    assert lay.recipe_settings(vllm) == (
        "kv_dtype=fp8 mem_fraction=0.9 token_budget=16384",
        "graph_max_bs=512",
    )
    assert lay.recipe_settings("backend: {}\n") == ("", "")
    # SGLang's all-to-all backend for expert-parallel tokens, and its older switch for DeepEP
    a2a = (
        "backend:\n  sglang_config:\n    prefill:\n      enable-deepep-moe: true\n"
        "    decode:\n      moe-a2a-backend: deepep\n      deepep-mode: low_latency\n"
    )
    assert lay.recipe_settings(a2a) == ("a2a=deepep", "a2a=deepep")
    none = "backend:\n  sglang_config:\n    decode:\n      moe-a2a-backend: none\n"
    assert lay.recipe_settings(none) == ("", "")
    vllm_a2a = "backend:\n  vllm_config:\n    decode:\n      all2all-backend: deepep_low_latency\n"
    assert lay.recipe_settings(vllm_a2a) == ("", "a2a=deepep_low_latency")
    # ... which reaches the pool's engine
    row = {"decode_settings": "a2a=deepep graph_max_bs=64"}
    assert silicon.pool_settings(row, "decode_") == {"a2a": "deepep", "graph_max_bs": 64.0}
    # TensorRT-LLM's fused-MoE backend (which kernels price the experts)
    trt = "backend:\n  trtllm_config:\n    decode:\n      moe_config:\n        backend: CUTLASS\n"
    assert lay.recipe_settings(trt) == ("", "moe_backend=cutlass")
    scripted = silicon.pool_settings({"decode_settings": "moe_backend=cutlass"}, "decode_")
    assert scripted == {"moe_backend": "cutlass"}
    engine, _ = silicon._apply_script(silicon.get_engine("trtllm"), {}, scripted, "trtllm", 1)
    assert engine.moe_backend == "cutlass"


def test_recovered_pools_run_with_their_recipe_s_engine_settings() -> None:
    """Hand-checked: the GB200 TensorRT-LLM row's recipe (ctx1_gen2_dep4_batch768_eplb0_mtp0,
    srt-slurm 0e421305fe4a) gives the context servers an fp8 KV cache, 60 % of free memory and
    max_num_tokens 16384 a rank, and the generation servers an fp8 cache, 80 %, max_num_tokens
    768 a rank and CUDA graphs up to 768 sequences a rank. The SGLang GB200 fp8 row's recipe
    (gb200-fp8/1k1k/low-latency.yaml) sets mem-fraction-static 0.95, an fp8 cache, a
    receive interval of 10 and chunked prefill of 8192 on both pools, graphs up to 128."""
    from servesim.spec.devices import Catalog

    row = dev_row("2026_03_25_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c6144_tp4_0_ep4_0_359")
    filled, _, refusal = silicon.recovered_layout(row)
    assert refusal == ""
    assert (
        filled["decode_settings"]
        == "attention_dp=4 graph_max_bs=768 kv_dtype=fp8 mem_fraction=0.8 moe_backend=cutlass "
        "postprocess_workers=4 stream_interval=100 token_budget=768"
    )
    dep = silicon.deployment_of(filled, Catalog())
    pre, dec = dep.prefill, dep.decode
    assert (pre.model.kv_dtype, dec.model.kv_dtype) == ("fp8", "fp8")
    assert (pre.engine.mem_util, dec.engine.mem_util) == (0.6, 0.8)
    assert pre.engine.mem_util_of_free  # TensorRT-LLM's fraction is of the free memory
    assert pre.max_num_batched_tokens == 16384 * 4  # per rank, 4 attention-DP ranks
    assert dec.max_num_batched_tokens == 768 * 4
    assert dec.engine.cuda_graph_max_seqs == 768
    sgl = dev_row("2026_03_25_deepseek_r1_gb200_sglang_fp8_disagg_1024x1024_c8_tp4_0_ep1_0_828")
    filled, _, refusal = silicon.recovered_layout(sgl)
    assert refusal == ""
    dep = silicon.deployment_of(filled, Catalog())
    for pool in (dep.prefill, dep.decode):
        assert pool.model.kv_dtype == "fp8"
        assert pool.engine.mem_util == 0.95
        assert pool.engine.recv_interval_steps == 10
        assert pool.engine.cuda_graph_max_seqs == 128
        assert pool.max_num_batched_tokens == 8192  # per server
    # a row without a recovered layout keeps the engine's defaults
    assert silicon.pool_settings({}, "decode_") == {}
    with pytest.raises(ServesimError, match="decode_settings holds 'token_budget=lots'"):
        silicon.pool_settings({"decode_settings": "token_budget=lots"}, "decode_")


def test_rows_stating_the_deployment_s_total_gpus_in_their_tp_columns() -> None:
    """December 2025 dashboard rows write the deployment's GPU count in both tp columns. Hand-
    checked: the GB200 TensorRT-LLM fp4 1k/1k row at 2,150 clients says tp 24 / 24; of the
    items in effect on 2025-12-05 that benchmark 2,150 clients (nvidia-master.yaml@25506e87c8e4)
    only the MTP one with 2 prefill workers x 4 GPUs and 1 decode worker x 16 GPUs has 24 GPUs.
    At 8 clients the row says 36, and both the MTP and the plain item with 1 x 4 + 4 x 8 GPUs
    run 8 clients: refused as ambiguous."""
    row = dev_row("2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c2150_tp24_ep1_1081")
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == ""
    assert source.endswith("the row's tp 24 read as the deployment's GPUs")
    expect = {
        "prefill_num_workers": "2",
        "prefill_attention_dp_size": "4",
        "decode_num_workers": "1",
        "decode_attention_dp_size": "16",
        "decode_moe_ep_size": "16",
        "speculative_num_draft_tokens": filled["speculative_num_draft_tokens"],
    }
    assert {k: filled[k] for k in expect} == expect
    assert int(filled["speculative_num_draft_tokens"]) >= 1
    ambiguous = dev_row("2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c8_tp36_ep1_1077")
    assert silicon.recovered_layout(ambiguous)[2] == "2 InferenceX configs match"


def test_early_dynamo_trt_items_pass_their_limits_as_additional_settings() -> None:
    """InferenceX's first GB200 TensorRT-LLM items have no recipe: their `additional-settings`
    are the engines' limits (Dynamo's gen_yaml.py). Hand-checked: the 2,150-client MTP item
    of nvidia-master.yaml@25506e87c8e4 sets PREFILL_MAX_NUM_TOKENS 4608, DECODE_MAX_NUM_TOKENS
    256, DECODE_MAX_BATCH_SIZE 128 and DECODE_GPU_MEM_FRACTION 0.7; its pools are 2 x DEP4
    and 1 x DEP16, and TensorRT-LLM's token budgets are per attention-DP rank. Before, the
    pools took aiconfigurator's generator rules (2,528 / 128 tokens a rank, 0.9, graphs to 512).
    """
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    from servesim.spec.devices import Catalog

    extra = {
        "PREFILL_MAX_NUM_TOKENS": "4608",
        "PREFILL_MAX_BATCH_SIZE": "4",
        "DECODE_MAX_NUM_TOKENS": "256",
        "DECODE_MAX_BATCH_SIZE": "128",
        "DECODE_GPU_MEM_FRACTION": "0.7",
        "DECODE_MTP_SIZE": "1",
    }
    assert lay.config_settings(extra) == (
        "token_budget=4608",
        "graph_max_bs=128 mem_fraction=0.7 token_budget=256",
    )
    assert lay.config_settings({"CONFIG_FILE": "recipes/x.yaml"}) == ("", "")
    # Dynamo's sweep writes an fp8 KV cache on both servers, no overlap scheduler on the
    # context servers, the generation servers' `stream_interval: 20` and DeepSeek-R1's
    # generation MoE backend (gen_yaml.py): WIDEEP under
    # attention DP over 16+ GPUs, CUTLASS over fewer, TRTLLM without it; gpt-oss's backend is
    # left to the engine.
    dsr1 = lay.sweep_settings("dsr1", 16, True)
    assert dsr1 == {
        "prefill": {"kv_dtype": "fp8", "overlap": "off"},
        "decode": {"kv_dtype": "fp8", "stream_interval": 20, "moe_backend": "wideep"},
    }
    assert lay.sweep_settings("dsr1", 4, True)["decode"]["moe_backend"] == "cutlass"
    assert lay.sweep_settings("dsr1", 8, False)["decode"]["moe_backend"] == "trtllm"
    assert lay.sweep_settings("gptoss", 8, False)["decode"] == {
        "kv_dtype": "fp8",
        "stream_interval": 20,
    }
    assert lay.config_settings(extra, dsr1) == (
        "kv_dtype=fp8 overlap=off token_budget=4608",
        "graph_max_bs=128 kv_dtype=fp8 mem_fraction=0.7 moe_backend=wideep stream_interval=20 "
        "token_budget=256",
    )
    assert lay.config_settings({}, dsr1) == ("", "")  # nothing the item gives: no sweep read
    row = dev_row("2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c2150_tp24_ep1_1081")
    filled, _, refusal = silicon.recovered_layout(row)
    assert refusal == ""
    assert filled["prefill_settings"] == "kv_dtype=fp8 overlap=off token_budget=4608"
    assert filled["decode_settings"] == (
        "graph_max_bs=128 kv_dtype=fp8 mem_fraction=0.7 moe_backend=wideep stream_interval=20 "
        "token_budget=256"
    )
    dep = silicon.deployment_of(filled, Catalog())
    pre, dec = dep.prefill, dep.decode
    assert pre.max_num_batched_tokens == 4608 * 4
    assert pre.max_num_seqs == 4 * 4
    assert dec.max_num_batched_tokens == 256 * 16
    assert dec.max_num_seqs == 128 * 16
    assert dec.engine.cuda_graph_max_seqs == 128
    assert dec.engine.mem_util == 0.7 and dec.engine.mem_util_of_free
    assert dec.engine.stream_interval == 20


def test_dynamo_sweeps_run_each_listed_concurrency_per_generation_server() -> None:
    """Dynamo's performance_sweeps (InferenceX's first GB200 TensorRT-LLM items) benchmark
    each `conc-list` value times the generation servers (scripts/bench.sh). Hand-checked:
    `dsr1-fp4-gb200-dynamo-trt` 1k/1k plain, 4 generation workers, lists 1 2 4 8 16 32 64 141,
    so it ran 4 … 564 clients, and the dev file has GB200 rows at exactly 144, 256 and 564
    clients that no list held before (they were refused as matching no config)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    assert lay.sweep_clients([1, 2, 141], 4) == [4, 8, 564]
    assert lay.sweep_clients(["8"], None) == [8]
    table = silicon.inferencex_layouts()
    tep = [
        r
        for r in table
        if r["config_key"] == "dsr1-fp4-gb200-dynamo-trt"
        and r["isl"] == "1024"
        and r["spec_decoding"] == "none"
        and r["decode_workers"] == "4"
        and not r["recipe"]  # the config's own items, before srt-slurm recipes
    ]
    assert tep and {r["recipe_concurrencies"] for r in tep} == {"4 8 16 32 64 128 256 564"}
    row = dev_row("2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c564_tp36_ep1_1088")
    filled, source, refusal = silicon.recovered_layout(row)
    assert refusal == "" and source.endswith("the row's tp 36 read as the deployment's GPUs")
    assert (filled["prefill_num_workers"], filled["decode_num_workers"]) == ("1", "4")


def test_database_rows_take_their_recipe_s_flags_and_batch_limits() -> None:
    """Hand-checked: database record cfg315 (B200 TensorRT-LLM fp4, 8k/1k, 370 clients) states
    2 context workers of 4 attention-DP ranks and 5 generation workers of TEP 8, prefill batch 1
    and decode batch 74 (= 370 / 5: clients, not a limit). Of InferenceX's items that day only the
    ctx2_gen5_tep8_batch64 recipe has that layout: its flags come along and its batch limits
    (2 a context rank, 64 a generation worker) replace the record's. A record no item matches
    (GB200 cfg229) is refused: its batch columns are placeholders, not the engines' limits.
    Colocated rows are left alone."""
    row = dev_row("dsr1_b200_trtllm_fp4_disagg_8192x1024_c370_cfg315")
    assert (row["prefill_batch_size"], row["decode_batch_size"]) == ("1", "74")
    out, note, refusal = silicon.stated_layout_settings(row)
    assert refusal == ""
    assert note.startswith("engine flags from recipes/trtllm/b200-fp4/8k1k/stp/")
    assert "ctx2_gen5_tep8_batch64_eplb0_mtp0.yaml" in note
    assert (out["prefill_batch_size"], out["decode_batch_size"]) == ("2", "64")
    assert out["decode_settings"] == (
        "attention_dp=1 graph_max_bs=64 kv_dtype=fp8 mem_fraction=0.9 moe_backend=trtllm "
        "postprocess_workers=4 stream_interval=100 token_budget=64"
    )
    assert row["decode_batch_size"] == "74"  # the input row is not modified
    # GB200 cfg229 (2025-12-19, 1 context worker of TP4, 3 generation workers of TEP8): Dynamo's
    # sweep ran each listed concurrency times the 3 generation servers, so 6 clients is the
    # MTP item's 2 and the plain item's 2 (refused: which one ran is not known), while 102
    # is the plain item's 34 alone: its limits (1 a context server, 32 a generation server).
    other = dev_row("dsr1_gb200_trtllm_fp4_disagg_8192x1024_c6_cfg229")
    assert silicon.stated_layout_settings(other) == (other, "", "2 InferenceX configs match")
    plain = dev_row("dsr1_gb200_trtllm_fp4_disagg_8192x1024_c102_cfg229")
    out, note, refusal = silicon.stated_layout_settings(plain)
    assert refusal == "" and "speculative_num_draft_tokens" not in out
    assert (out["prefill_batch_size"], out["decode_batch_size"]) == ("1", "32")
    assert out["prefill_settings"] == "kv_dtype=fp8 overlap=off token_budget=8448"  # the sweep
    agg = dev_row("dsr1_b200_trtllm_fp4_agg_1024x1024_c4_cfg91")
    assert silicon.stated_layout_settings(agg) == (agg, "", "")


def _record(
    row_id: str, source: str, system: str, precision: str, quant: str, pools: str
) -> dict[str, str]:
    """A database-style disaggregated DeepSeek-R1 TensorRT-LLM 1k/1k row in the dev file's
    columns: `pools` the 14 prefill/decode layout columns as a record states them."""
    with open(DEV, newline="") as f:
        header = next(csv.reader(f))
    text = (
        f"{row_id},{source},trtllm,,deepseek-ai/DeepSeek-R1,{system},{precision},disagg,1024,"
        f"1024,{quant},{quant},,,,,,,{pools},100,10"
    )
    return dict(zip(header, next(csv.reader([text])), strict=True))


def _b200_mtp_record() -> dict[str, str]:
    """A B200 fp4 record (config_id 999) of 1 context worker of 4 attention-DP ranks and 5
    generation workers of 8, at 875 clients on 2026-04-27: only an MTP item has that layout."""
    return _record(
        "mtp_record",
        "db-dump/2026-04-27; config_id=999; silicon_concurrency=875; "
        "measured=2026-04-27T00:00:00.000Z; workflow_run_id=1; "
        "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:0.8.1.post1",
        "b200_sxm",
        "fp4",
        "nvfp4",
        "1.0,1.0,1.0,1.0,4.0,1.0,4.0,22.0,5.0,1.0,1.0,8.0,1.0,8.0",
    )


def test_database_rows_take_mtp_and_config_batch_limits_whatever_the_recipe_flags() -> None:
    """A database record states workers, TP, EP and attention DP but neither speculative
    decoding nor the engines' batch limits. Hand-checked against the table: on 2026-04-27 the
    only B200 fp4 TensorRT-LLM 1k/1k item with 1 context worker of 4 DP ranks and 5 generation
    workers of 8 DP ranks at 875 clients is recipe ctx1_gen5_dep8_batch16_eplb0_mtp3 (MTP, 3
    draft tokens; batch 8 a context rank, 16 a generation rank). On 2026-01-30 the GB200 item
    with 1 context worker of DEP 4 and 1 generation worker of DEP 32 at 1,075 clients has no
    recipe flags in the table but its batch limits (4 / 32). Before, the first was simulated
    without MTP (TPOT 15.0 ms against its dashboard twin's 6.9) and the second kept the record's
    prefill batch of 1 (TTFT 29.7 s against 4.4 s)."""
    mtp = _b200_mtp_record()
    out, note, refusal = silicon.stated_layout_settings(mtp)
    assert refusal == "" and note.startswith("MTP with 3 draft tokens")
    assert "ctx1_gen5_dep8_batch16_eplb0_mtp3.yaml" in note
    assert out["speculative_num_draft_tokens"] == "3"
    assert (out["prefill_batch_size"], out["decode_batch_size"]) == ("8", "16")
    dep = silicon.deployment_of(out, silicon.Catalog())
    assert dep.decode.speculative is not None and dep.decode.speculative.num_draft_tokens == 3
    plain = _record(
        "plain_record",
        "db-dump/2026-04-27; config_id=999; silicon_concurrency=1075; "
        "measured=2026-01-30T00:00:00.000Z; workflow_run_id=1; "
        "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:0.5.1-rc0.pre3",
        "gb200",
        "fp4",
        "nvfp4",
        "1.0,1.0,1.0,1.0,4.0,1.0,4.0,34.0,1.0,1.0,1.0,32.0,1.0,32.0",
    )
    out, note, refusal = silicon.stated_layout_settings(plain)
    assert refusal == ""
    assert note == (
        "engine limits from dsr1-fp4-gb200-dynamo-trt@25506e87c8e4's settings; "
        "batch 4 / 32 a rank from it"
    )
    # the item's own limits (PREFILL_MAX_NUM_TOKENS 4608; DECODE_MAX_NUM_TOKENS 32,
    # DECODE_MAX_BATCH_SIZE 32, DECODE_GPU_MEM_FRACTION 0.7) and what Dynamo's sweep adds (an
    # fp8 KV cache; WIDEEP experts on the 32-GPU attention-DP generation server)
    assert out["prefill_settings"] == "kv_dtype=fp8 overlap=off token_budget=4608"
    assert out["decode_settings"] == (
        "graph_max_bs=32 kv_dtype=fp8 mem_fraction=0.7 moe_backend=wideep stream_interval=20 "
        "token_budget=32"
    )
    assert (out["prefill_batch_size"], out["decode_batch_size"]) == ("4", "32")
    assert "speculative_num_draft_tokens" not in out


def _dashboard_row(item: dict[str, str], common: dict[str, str]) -> dict[str, str]:
    """A dashboard-style disaggregated row of a table item (`inferencex_kinds.kinds`): the
    columns an export states, its pools' TP and EP but no worker counts or batches."""
    return {
        **common,
        "backend": silicon.INFERENCEX_FRAMEWORK[item["framework"]],
        "system": silicon.INFERENCEX_GPU[item["gpu"]],
        "mode": "disagg",
        "prefill_tp_size": item["prefill_tp"],
        "prefill_moe_ep_size": item["prefill_ep"],
        "decode_tp_size": item["decode_tp"],
    }


def test_every_kind_of_table_deployment_simulates_from_a_dashboard_row() -> None:
    """Rows held out from this repository name other GPUs and models of the same table: one
    dashboard-style row per model, GPU, framework, precision and MTP-or-not (at the item's
    fewest clients, where a recipe gives its batch limits) either gets its layout and recipe
    flags and simulates to finite positive times, or is refused with a reason; none crashes."""
    from inferencex_kinds import kinds

    from servesim.spec.devices import Catalog

    catalog, simulated = Catalog(), 0
    usable = [
        r for r in silicon.inferencex_layouts() if r["prefill_max_batch"] and r["decode_max_batch"]
    ]
    for item, common in kinds(tuple(usable), clients_of="recipe_concurrencies"):
        row = _dashboard_row(item, common)
        filled, source, refusal = silicon.recovered_layout(row)
        if refusal:
            assert refusal.endswith("configs match"), (row["id"], refusal)
            continue
        assert source.startswith("layout recovered")
        ttft, tpot = silicon.simulate_row(filled, catalog, 10)
        assert 0 < ttft < 1e6 and 0 < tpot < 1e4, (row["id"], ttft, tpot)
        simulated += 1
    assert simulated >= 20


def test_a_public_recipe_without_batch_limits_leaves_them_to_the_engine() -> None:
    """The GB200 and GB300 SGLang fp4 low-latency recipes (srt-slurm b2c9f1a4e56b) give their
    decode servers no `max-running-requests`, so SGLang's own limit applies; their rows were
    refused as "recipe (batch sizes) is not public". Now the pool's batch column says
    `ENGINE_BATCH` and the decode pool keeps the engine's limit (4,096 sequences, SGLang's
    default here) and the recipe's settings; a config whose recipe is not public is still
    refused."""
    from inferencex_kinds import kinds

    from servesim.spec.devices import Catalog

    table = silicon.inferencex_layouts()
    open_ended = tuple(
        r
        for r in table
        if r["recipe"]
        and set(r["recipe_commits"].split()) != {"-"}
        and not (r["prefill_max_batch"] and r["decode_max_batch"])
    )
    assert {r["config_key"] for r in open_ended} >= {
        "dsr1-fp4-gb200-dynamo-sglang",
        "dsr1-fp4-gb300-dynamo-sglang",
    }
    catalog, simulated = Catalog(), 0
    for item, common in kinds(open_ended, clients_of="recipe_concurrencies"):
        row = _dashboard_row(item, common)
        filled, source, refusal = silicon.recovered_layout(row)
        if refusal.endswith("configs match"):
            continue
        assert refusal == "" and source.startswith("layout recovered"), (row["id"], refusal)
        assert filled["decode_batch_size"] == silicon.ENGINE_BATCH
        assert silicon.specified_or_reason(filled, benchmarked_clients=True) == ""
        dep = silicon.deployment_of(filled, catalog)
        assert dep.decode.max_num_seqs is None
        assert dep.decode.batching()[0] == 4096
        ttft, tpot = silicon.simulate_row(filled, catalog, 10)
        assert 0 < ttft < 1e6 and 0 < tpot < 1e4, (row["id"], ttft, tpot)
        simulated += 1
    assert simulated >= 2
    assert silicon.batching_of("sglang", "decode", None, 1024, dp=1) == {
        "max_num_seqs": None,
        "max_num_batched_tokens": 2524,
    }
    assert silicon.batching_of("trtllm", "decode", None, 1024, dp=4) == {
        "max_num_seqs": None,
        "max_num_batched_tokens": None,
        "chunked_prefill": False,
    }


def test_sglang_moe_dense_tp_size_1_keeps_the_dense_layers_on_each_rank() -> None:
    """SGLang's dense FFN layers are tensor-parallel over the whole dp-attention group by
    default (`--moe-dense-tp-size` None); a recipe's `moe-dense-tp-size: 1` keeps them on each
    rank's own tokens. The GB200 mid-curve recipe's prefill pools (tp 8, dp 8, ep 8) set it."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    recipe = "backend:\n  sglang_config:\n    prefill:\n      moe-dense-tp-size: 1\n"
    assert lay.recipe_settings(recipe) == ("dense_tp=1", "")
    row = {"backend": "sglang", "prefill_tp_size": "1", "prefill_attention_dp_size": "8"}
    row |= {"prefill_moe_ep_size": "8", "prefill_pp_size": "1"}
    assert silicon._parallel(row, "prefill_", "prefill").dense_tp == 8
    recipe = silicon.pool_settings({"prefill_settings": "dense_tp=1"}, "prefill_")
    assert silicon._parallel(row, "prefill_", "prefill", recipe=recipe).dense_tp == 1
    row["backend"] = "trtllm"  # TensorRT-LLM keeps them on every rank anyway
    assert silicon._parallel(row, "prefill_", "prefill").dense_tp == 1


def test_a_database_config_runs_one_speculative_method() -> None:
    """InferenceX's database keys a config by hardware, framework, model, precision, speculative
    method and each pool's layout (InferenceX-app 001_initial_schema.sql, `configs_natural_key`),
    so the records of one config_id ran one method. Hand-checked: GB200 cfg229's 48- and
    102-client records match only the plain item (Dynamo's sweep: 16 and 34 clients per
    generation server), so its 3-24-client records, which the MTP and the plain item both
    explain, ran the plain item too and take its limits (1 a context server, 32 a generation
    server). Records of one config_id that settle on different methods give it none."""
    ids = [f"dsr1_gb200_trtllm_fp4_disagg_8192x1024_c{c}_cfg229" for c in (3, 6, 12, 24, 48, 102)]
    rows = [silicon.normalised_row(dev_row(i))[0] for i in ids]
    assert silicon.config_specs(rows) == {"229": "none"}
    six = rows[1]
    assert silicon.stated_layout_settings(six)[2] == "2 InferenceX configs match"
    out, note, refusal = silicon.stated_layout_settings({**six, "config_spec": "none"})
    assert refusal == "" and "speculative_num_draft_tokens" not in out
    assert note.startswith("none as config_id 229's other records")
    assert (out["prefill_batch_size"], out["decode_batch_size"]) == ("1", "32")
    mtp, _, refusal = silicon.stated_layout_settings({**six, "config_spec": "mtp"})
    assert refusal == "" and mtp["speculative_num_draft_tokens"]
    # A colocated record (B200 SGLang fp8 cfg87) follows its config's method the same way.
    agg = silicon.normalised_row(dev_row("dsr1_b200_sglang_fp8_agg_1024x1024_c64_cfg87"))[0]
    assert silicon.single_node_config(agg)[2] == "2 InferenceX configs match"
    plain, source, _ = silicon.single_node_config({**agg, "config_spec": "none"})
    assert "speculative_num_draft_tokens" not in plain
    assert source.startswith("no speculative decoding") and "config_id 87" in source
    drafted, source, _ = silicon.single_node_config({**agg, "config_spec": "mtp"})
    assert source.startswith("MTP k=2") and drafted["speculative_num_draft_tokens"] == "2"
    # Two records of one config_id that settle on different methods: the key says nothing.
    drafting = _b200_mtp_record()
    source = rows[5]["silicon_data_source"].replace("config_id=229", "config_id=999")
    assert silicon.config_specs([drafting, {**rows[5], "silicon_data_source": source}]) == {}


def test_the_recipe_s_attention_dp_is_what_ran() -> None:
    """InferenceX's config names each pool's `dp-attn`, but srt-slurm launches the recipe's
    engine config: where the recipe sets attention DP (TensorRT-LLM `enable_attention_dp`,
    SGLang `enable-dp-attention` with `dp-size`), that is the layout. The H200 TensorRT-LLM
    1k/1k recipes run their context servers with attention DP over 8 ranks where the config
    says none; the 8k/1k ones run them without where it says DP (a later config says so too)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    trt = (
        "backend:\n  trtllm_config:\n    prefill:\n      tensor_parallel_size: 8\n"
        "      enable_attention_dp: true\n    decode:\n      tensor_parallel_size: 8\n"
        "      enable_attention_dp: false\n"
    )
    assert lay.recipe_settings(trt) == ("attention_dp=8", "attention_dp=1")
    sgl = (
        "backend:\n  sglang_config:\n    prefill:\n      tp-size: 8\n      dp-size: 4\n"
        "      enable-dp-attention: true\n    decode:\n      tp-size: 8\n"
    )
    assert lay.recipe_settings(sgl) == ("attention_dp=4", "")  # unset: the config's stands
    row = {"backend": "trtllm", "prefill_tp_size": "8", "prefill_attention_dp_size": "1"}
    row |= {"prefill_moe_ep_size": "8", "prefill_moe_tp_size": "1", "prefill_pp_size": "1"}
    par = silicon._parallel(row, "prefill_", "prefill")
    assert (par.tp, par.dp, par.ep) == (8, 1, 8)
    recipe = silicon.pool_settings(
        {"prefill_settings": "attention_dp=8 token_budget=8192"}, "prefill_"
    )
    par = silicon._parallel(row, "prefill_", "prefill", recipe=recipe)
    assert (par.tp, par.dp, par.ep) == (1, 8, 8)  # the same 8 GPUs
    row |= {"prefill_tp_size": "1", "prefill_attention_dp_size": "8"}
    recipe = silicon.pool_settings({"prefill_settings": "attention_dp=1"}, "prefill_")
    par = silicon._parallel(row, "prefill_", "prefill", recipe=recipe)
    assert (par.tp, par.dp, par.ep) == (8, 1, 8)
    # The bundled table: the 1k/1k H200 items' context servers, as their recipes launch them.
    items = [
        r
        for r in silicon.inferencex_layouts()
        if r["config_key"] == "dsr1-fp8-h200-dynamo-trt" and r["isl"] == "1024" and r["recipe"]
    ]
    assert items and all("attention_dp=8" in r["prefill_settings"] for r in items)
    row = {"mode": "disagg", "backend": "trtllm", "model_path": "deepseek-ai/DeepSeek-R1"}
    row |= {"system": "h200_sxm", "isl": "1024", "osl": "1024", "precision": "fp8"}
    row |= silicon._pool_columns(row, items[0], "prefill")
    recipe = silicon.pool_settings(row, "prefill_")
    par = silicon._parallel(row, "prefill_", "prefill", recipe=recipe)
    assert (par.tp, par.dp) == (1, 8)


def test_recipes_and_scripts_set_the_serving_loop() -> None:
    """TensorRT-LLM's serving loop (`EngineProfile.response_s`) responds every
    `stream_interval` steps, shared by `num_postprocess_workers` processes: the srt-slurm
    recipes set 100 and 4 on their servers, InferenceX's single-node scripts 10 or 20, and a
    Dynamo worker builds its responses itself, so its postprocess workers do nothing."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay
    import inferencex_single_node as single

    trt = (
        "backend:\n  trtllm_config:\n    decode:\n      stream_interval: 100\n"
        "      num_postprocess_workers: 4\n"
    )
    assert lay.recipe_settings(trt) == ("", "postprocess_workers=4 stream_interval=100")
    script = "cat > config.yml << EOF\nstream_interval: 10\nEOF\ntrtllm-serve ...\n"
    assert single.launch_settings(script)["stream_interval"] == "10"
    assert single.launch_settings(script)["postprocess_workers"] == ""
    workers = script.replace("EOF\ntrt", "num_postprocess_workers: 4\nEOF\ntrt")
    assert single.launch_settings(workers)["postprocess_workers"] == "4"
    rows = silicon.inferencex_single_node()
    assert all(r["stream_interval"] in ("10", "20") for r in rows if r["framework"] == "trt")
    # InferenceX's gpt-oss TensorRT-LLM scripts alone hand the responses to 4 workers
    # (benchmarks/gptoss_fp4_b200_trt_slurm.sh and its successors); the DeepSeek ones do not.
    keys = {r["config_key"] for r in rows if r["postprocess_workers"]}
    assert keys == {"gptoss-fp4-b200-trt", "gptoss-fp4-h200-trt"}
    assert {r["postprocess_workers"] for r in rows if r["config_key"] in keys} == {"4"}
    export = {
        "id": "g", "mode": "agg", "backend": "trtllm", "model_path": "openai/gpt-oss-120b",
        "system": "b200_sxm", "precision": "fp4", "isl": "1024", "osl": "1024", "tp_size": "2",
        "silicon_ttft_ms": "100", "silicon_tpot_ms": "5",
        "silicon_data_source": "source_file=2025-11-03.csv; model=gpt-oss-120b; "
        "silicon_concurrency=4; measured=2025-11-03T12:00:00Z; wip=False; "
        "image=nvcr.io#nvidia/tensorrt-llm/release:1.2.0rc0.post1",
    }  # fmt: skip
    filled, source, refusal = silicon.layout_of(export)
    assert not refusal and "gptoss-fp4-b200-trt" in source
    engine = silicon.deployment_of(filled, silicon.Catalog()).engine
    assert (engine.stream_interval, engine.postprocess_workers) == (20, 4)
    items = [r for r in silicon.inferencex_layouts() if r["framework"] == "dynamo-trt"]
    assert any("stream_interval=100" in r["decode_settings"] for r in items)
    row = {"mode": "disagg", "backend": "trtllm", "model_path": "deepseek-ai/DeepSeek-R1"}
    row |= {"system": "h200_sxm", "isl": "1024", "osl": "1024", "precision": "fp8"}
    row |= {"silicon_data_source": "image=nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:0.8.1"}
    for pool in ("prefill", "decode"):
        row |= {f"{pool}_{k}": v for k, v in (("num_workers", "1"), ("tp_size", "8"))}
        row |= {f"{pool}_{k}": v for k, v in (("pp_size", "1"), ("attention_dp_size", "1"))}
        row |= {f"{pool}_{k}": v for k, v in (("moe_tp_size", "1"), ("moe_ep_size", "8"))}
        row[f"{pool}_batch_size"] = "8"
    row["decode_settings"] = "postprocess_workers=4 stream_interval=100"
    dep = silicon.deployment_of(row, silicon.Catalog())
    assert (dep.decode.engine.stream_interval, dep.decode.engine.postprocess_workers) == (100, 0)
