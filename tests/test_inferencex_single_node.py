"""benchmarks/silicon.py tells InferenceX's colocated runs with speculative decoding (MTP) from
those without, by the config, image and day that measured them, and repairs the exports that
report tp × ep GPUs as TP."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

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
        "days_in_effect": "2026-02-03 2026-02-05",
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


def test_without_an_image_both_kinds_match_and_the_row_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a day without changelog sweeps (the real 2026-02-05 swept the `-mtp` config alone,
    # which settles it: tests/test_inferencex_sweeps.py).
    monkeypatch.setattr(silicon, "inferencex_sweeps", lambda *a, **k: {})
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
        if r["config_key"].startswith("dsr1-fp8-b200-trt")
        and silicon.in_effect(r["days_in_effect"], "2026-02-05") is not None
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
    sgl_flag = "python3 -m sglang.launch_server \\\n--speculative-num-steps 3 \\\n"
    assert draft_tokens(sgl_flag + "--speculative-num-draft-tokens 4 \\\n", False) == "3"
    vllm = """--speculative-config '{"method": "mtp", "num_speculative_tokens": 2}'\n"""
    assert draft_tokens(vllm, False) == "2"
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


def test_launch_settings_read_only_what_a_script_fixes() -> None:
    """Shapes of InferenceX's benchmarks/single_node scripts: a vLLM config file and flags
    (gptoss_fp4_b200.sh, minimaxm2.5_fp8_b200.sh), TensorRT-LLM's extra-options YAML
    (gptoss_fp4_b200_trt.sh), and SGLang values set per TP branch (dsr1_fp8_b200.sh), which
    become one expression choosing by TP rather than the first branch's."""
    sys.path.insert(0, str(REPO / "scripts"))
    from inferencex_single_node import launch_settings

    vllm = (
        "cat > config.yaml << EOF\nkv-cache-dtype: fp8\nmax-num-batched-tokens: 8192\nEOF\n"
        "vllm serve $MODEL --gpu-memory-utilization 0.9 --max-num-seqs $CONC \\\n"
        '--max-cudagraph-capture-size 2048 --max-num-batched-tokens "$((ISL * 2 ))"\n'
    )
    got = launch_settings(vllm)
    assert (got["kv_cache_dtype"], got["mem_fraction"], got["max_seqs"]) == ("fp8", "0.9", "CONC")
    assert got["mxfp4_activation"] == ""  # vLLM's default: bf16 activations
    # gptoss_fp4_b200.sh asks vLLM for the MXFP8 kernel, gptoss_fp4_h200.sh for Marlin
    mxfp8 = launch_settings("export VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1\n" + vllm)
    assert mxfp8["mxfp4_activation"] == "mxfp8"
    marlin = launch_settings("export VLLM_MXFP4_USE_MARLIN=1\n" + vllm)
    assert marlin["mxfp4_activation"] == "bf16"
    # ... on Marlin's kernels, where Hopper otherwise runs OpenAI's Triton ones
    assert (marlin["moe_backend"], got["moe_backend"]) == ("marlin", "")
    assert launch_settings("vllm serve --mxfp4-backend marlin")["moe_backend"] == "marlin"
    assert launch_settings("export VLLM_MXFP4_BACKEND=marlin\n")["moe_backend"] == "marlin"
    assert launch_settings("export VLLM_MXFP4_USE_MARLIN=0\n" + vllm)["moe_backend"] == ""
    assert launch_settings("vllm serve --mxfp4-backend trtllm-mxfp8")["mxfp4_activation"] == "mxfp8"
    assert launch_settings("vllm serve --mxfp4-backend trtllm")["mxfp4_activation"] == "bf16"
    # kimik2.5_int4_b200.sh from 2026-03-25: FlashInfer's TRT-LLM MxInt4 MoE, not Marlin
    int4 = launch_settings("export VLLM_USE_FLASHINFER_MOE_INT4=1\n" + vllm)
    assert (int4["moe_backend"], got["moe_backend"]) == ("flashinfer_trtllm", "")
    # minimaxm2.5_fp8_b200.sh until 2026-04-02 turned FlashInfer's and DeepGEMM's fp8 MoE
    # off (Triton), minimaxm2.5_fp8_h200.sh from 2026-05-26 names Triton; one switch alone
    # leaves the oracle another choice
    off = "export VLLM_USE_FLASHINFER_MOE_FP8=0\nexport VLLM_MOE_USE_DEEP_GEMM=0\n"
    assert launch_settings(off + vllm)["moe_backend"] == "triton"
    assert launch_settings("vllm serve $MODEL --moe-backend triton")["moe_backend"] == "triton"
    no_fi = "export VLLM_USE_FLASHINFER_MOE_FP8=0\n"
    assert launch_settings(no_fi + vllm)["moe_backend"] == ""
    # vLLM's all-reduce + RMSNorm fusion pass (gptoss_fp4_b200.sh, kimik2.5_int4_b200.sh)
    # and its input limits; SGLang's flag as before
    gptoss = (
        'export VLLM_FLASHINFER_ALLREDUCE_FUSION_THRESHOLDS_MB=\'{"2":32,"4":32,"8":8}\'\n'
        "cat > config.yaml << EOF\ncompilation-config: "
        '\'{"pass_config":{"fuse_allreduce_rms":true,"eliminate_noops":true}}\'\nEOF\n'
    )
    fused = launch_settings(gptoss + vllm)
    assert (fused["ar_fusion"], fused["ar_fusion_mib"]) == ("vllm", "2:32 4:32 8:8")
    kimi = "vllm serve $MODEL --compilation_config.pass_config.fuse_allreduce_rms true \\\n"
    assert launch_settings(kimi)["ar_fusion"] == "vllm"
    off = launch_settings("vllm serve -cc.pass_config.fuse_allreduce_rms=false")
    assert (off["ar_fusion"], got["ar_fusion"], got["ar_fusion_mib"]) == ("none", "", "")
    assert got["token_budget"] == ""  # 8192 in the file and ISL*2 on the command line
    assert got["graph_max_bs"] == "2048"
    trt = (
        "cat > $F << EOF\ncuda_graph_config:\n    enable_padding: true\n    max_batch_size: $CONC\n"
        "kv_cache_config:\n    dtype: fp8\n    free_gpu_memory_fraction: 0.85\nEOF\n"
        "MAX_NUM_TOKENS=20000\n"
        'if [ "${EVAL_ONLY}" = "true" ]; then\n    MAX_NUM_TOKENS="$EVAL_MAX_MODEL_LEN"\nfi\n'
        "trtllm-serve $MODEL --max_batch_size 512 --max_num_tokens=$MAX_NUM_TOKENS\n"
    )
    got = launch_settings(trt)
    assert got == {
        "kv_cache_dtype": "fp8",
        "mem_fraction": "0.85",
        "token_budget": "20000",
        "max_seqs": "512",
        "graph_max_bs": "CONC",
        "recv_interval": "",
        "prefill_graphs": "",
        "stream_interval": "",  # TensorRT-LLM's default, 1
        "postprocess_workers": "",  # TensorRT-LLM's default, 0: the loop formats them itself
        "ssm_dtype": "",
        "ar_fusion": "",
        "ar_fusion_mib": "",
        "mxfp4_activation": "",  # TensorRT-LLM's own choice on the GPU
        "moe_backend": "",
        "prefix_cache": "",
    }
    sglang = (
        "if [[ $TP -eq 8 ]]; then\n  MEM_FRAC_STATIC=0.82\nelse\n  MEM_FRAC_STATIC=0.95\nfi\n"
        "python3 -m sglang.launch_server --mem-fraction-static $MEM_FRAC_STATIC "
        "--kv-cache-dtype fp8_e4m3 --scheduler-recv-interval 10 # --chunked-prefill-size 4\n"
        "--mamba-ssm-dtype bfloat16 \\\n"
        "--enable-flashinfer-allreduce-fusion --disable-radix-cache\n"
        "# --enable-flashinfer-allreduce-fusion-in-a-comment is not read\n"
    )
    got = launch_settings(sglang)
    assert (got["kv_cache_dtype"], got["recv_interval"]) == ("fp8", "10")
    assert got["ar_fusion"] == "flashinfer"
    assert (
        launch_settings(sglang.replace("--enable-flashinfer-allreduce-fusion ", ""))["ar_fusion"]
        == ""
    )
    names = {"ISL": 1024, "OSL": 1024, "CONC": 4, "EP_SIZE": 1}
    assert silicon._runner_value(got["mem_fraction"], {**names, "TP": 8}) == 0.82
    assert silicon._runner_value(got["mem_fraction"], {**names, "TP": 4}) == 0.95
    assert got["ssm_dtype"] == "bfloat16"  # Qwen3.5's SGLang launches since 2026-02-28
    # Prefix caching: what keeps SGLang's overlap schedule for a hybrid model
    assert got["prefix_cache"] == "off"
    assert launch_settings(sglang.replace(" --disable-radix-cache", ""))["prefix_cache"] == ""
    assert launch_settings("vllm serve $M --no-enable-prefix-caching")["prefix_cache"] == "off"
    assert launch_settings("vllm serve $M --enable-prefix-caching")["prefix_cache"] == "on"
    assert (
        launch_settings(trt.replace("    dtype: fp8\n", "    enable_block_reuse: false\n"))[
            "prefix_cache"
        ]
        == "off"
    )


def test_settings_a_script_sets_per_branch_follow_the_runners_values() -> None:
    """InferenceX's SGLang B200/B300 launches set `--scheduler-recv-interval` to 30 from 16
    clients and 10 below (benchmarks/single_node/qwen3.5_fp8_b200.sh), and
    dsr1_fp8_b200.sh nests that rule in its TP 8 branch while TP 4 takes 10 and other TPs
    exit: each is one expression in the runner's variables, none where no branch sets it, and
    a setting under a test of anything else (an eval-only branch, a file) stays unknown."""
    sys.path.insert(0, str(REPO / "scripts"))
    from inferencex_single_node import branched_values, launch_settings

    qwen = (
        "if [[ $CONC -ge 16 ]]; then\n  SCHEDULER_RECV_INTERVAL=30\nelse\n"
        "  SCHEDULER_RECV_INTERVAL=10\nfi\n"
        "python3 -m sglang.launch_server --scheduler-recv-interval $SCHEDULER_RECV_INTERVAL\n"
    )
    expr = launch_settings(qwen)["recv_interval"]
    names = {"ISL": 1024, "OSL": 1024, "TP": 8, "EP_SIZE": 1}
    assert [silicon._runner_value(expr, {**names, "CONC": c}) for c in (4, 15, 16, 64)] == [
        10,
        10,
        30,
        30,
    ]
    dsr1 = (
        "if [[ $TP -eq 8 ]]; then\n  if [[ $CONC -ge 16 ]]; then\n    R=30\n  else\n    R=10\n"
        "  fi\n  M=0.82\nelif [[ $TP -eq 4 ]]; then\n  M=0.95\n  R=10\nelse\n  exit 1\nfi\n"
        'if [ "$EVAL_ONLY" = "true" ]; then\n  X=1\nfi\nX=2\n'
        "if [[ -f $CONFIG ]]; then\n  Y=3\nfi\n"
    )
    got = branched_values(dsr1)
    assert "Y" not in got and got["X"] == "2"  # a later top-level assignment wins
    value = {
        (tp, c): silicon._runner_value(got["R"], {**names, "TP": tp, "CONC": c})
        for tp in (8, 4, 2)
        for c in (8, 32)
    }
    assert value == {
        (8, 8): 10,
        (8, 32): 30,
        (4, 8): 10,
        (4, 32): 10,
        (2, 8): None,
        (2, 32): None,
    }
    assert silicon._runner_value(got["M"], {**names, "TP": 4, "CONC": 8}) == 0.95
    # dsr1_fp8_b200_trt.sh (2026-01-29 on) tests ISL and OSL as text inside one `[[ ]]`:
    # KV_CACHE_FREE_MEM_FRACTION 0.8, 0.7 at 1k/8k from 256 clients, 0.75 at 8k/1k on TP 4
    trt = "\n".join(
        [
            "KV_CACHE_FREE_MEM_FRACTION=0.8",
            'if [[ "$ISL" == "1024" && "$OSL" == "1024" ]]; then',
            "    if [[ $CONC -ge 64 ]]; then",
            '        PIECEWISE_CUDA_GRAPHS="true"',
            "    fi",
            'elif [[ "$ISL" == "1024" && "$OSL" == "8192" ]]; then',
            "    if [[ $CONC -ge 256 ]]; then",
            "        KV_CACHE_FREE_MEM_FRACTION=0.7",
            "    fi",
            'elif [[ "$ISL" == "8192" && "$OSL" == "1024" ]]; then',
            '    if [[ "$TP" == "4" ]]; then',
            "        KV_CACHE_FREE_MEM_FRACTION=0.75",
            "    fi",
            "fi",
            "cat > $F << EOF",
            "kv_cache_config:",
            "    free_gpu_memory_fraction: $KV_CACHE_FREE_MEM_FRACTION",
            "EOF",
        ]
    )
    frac = launch_settings(trt)["mem_fraction"]
    cases = {(1024, 1024, 8, 256): 0.8, (1024, 8192, 8, 256): 0.7, (1024, 8192, 8, 128): 0.8}
    cases |= {(8192, 1024, 4, 64): 0.75, (8192, 1024, 8, 64): 0.8}
    for (isl, osl, tp, conc), want in cases.items():
        at = {"ISL": isl, "OSL": osl, "TP": tp, "CONC": conc, "EP_SIZE": 1}
        assert silicon._runner_value(frac, at) == want, (isl, osl, tp, conc)
    # dsr1_fp8_b200_trt_mtp.sh: 0.7 under attention DP (the item's dp-attn, which the runner
    # exports as DP_ATTENTION), else 0.8; unknown without the item
    mtp = "\n".join(
        [
            "KV_CACHE_FREE_MEM_FRACTION=0.8",
            'if [[ "$DP_ATTENTION" == "true" ]]; then',
            "    KV_CACHE_FREE_MEM_FRACTION=0.7",
            "fi",
            "cat > $F << EOF",
            "kv_cache_config:",
            "    free_gpu_memory_fraction: $KV_CACHE_FREE_MEM_FRACTION",
            "EOF",
        ]
    )
    at = {"ISL": 1024, "OSL": 1024, "TP": 8, "CONC": 64, "EP_SIZE": 8}
    for dp, want in ((True, 0.7), (False, 0.8)):
        assert silicon._runner_value(launch_settings(mtp, dp)["mem_fraction"], at) == want
    assert launch_settings(mtp)["mem_fraction"] == ""


def test_a_scripted_row_runs_with_its_scripts_settings() -> None:
    """A MiniMax-M2.5 fp8 row on 2 × B200 (vLLM) measured in April 2026, while
    minimaxm2.5_fp8_b200.sh (nvidia-master.yaml at bddbf4031771) passed
    `--max-num-batched-tokens $((ISL * 2))`, `--gpu-memory-utilization 0.90`, `--kv-cache-dtype
    fp8` and `--max-cudagraph-capture-size 2048`: simulated with 2,048 tokens a step at ISL
    1,024, 0.9 of the device and an fp8 cache. The March version of the script (0.95, no KV
    flag, no batch limits) gives a March row 0.95, the checkpoint's cache and vLLM's own batch
    defaults."""
    conc = 16
    row = {
        "silicon_data_source": (
            f"source_file=2026-04-06.csv; model=MiniMax-M2.5; silicon_concurrency={conc}; "
            "measured=2026-04-10T12:00:00Z; wip=False; image=vllm/vllm-openai:v0.19.0-cu130"
        ),
        "mode": "agg",
        "system": "b200_sxm",
        "backend": "vllm",
        "model_path": "MiniMaxAI/MiniMax-M2.5",
        "precision": "fp8",
        "gemm_quant_mode": "fp8_block",
        "moe_quant_mode": "fp8_block",
        "isl": "1024",
        "osl": "1024",
        "batch_size": str(conc),
        "tp_size": "2",
        "attention_dp_size": "1",
        "moe_ep_size": "1",
        "moe_tp_size": "2",
    }
    filled, source, refusal = silicon.single_node_config(row)
    assert refusal == "" and source.startswith("no speculative decoding: minimaxm2.5-fp8-b200-vllm")
    assert silicon.script_launch(filled) == {
        "kv_cache_dtype": "fp8",
        "mem_fraction": 0.9,
        "token_budget": 2048.0,
        "graph_max_bs": 2048.0,
        "prefix_cache": "off",  # --no-enable-prefix-caching
    }
    dep = silicon.deployment_of(filled, silicon.Catalog())
    assert dep.max_num_batched_tokens == 2048 and not dep.uses_prefix_cache()
    assert dep.engine.mem_util == 0.9 and dep.engine.cuda_graph_max_seqs == 2048
    assert dep.model.kv_dtype == "fp8"
    march = {
        **row,
        "silicon_data_source": row["silicon_data_source"]
        .replace("2026-04-10", "2026-03-20")
        .replace("v0.19.0", "v0.17.0"),
    }
    filled = silicon.single_node_config(march)[0]
    assert silicon.script_launch(filled) == {
        "kv_cache_dtype": "auto",
        "mem_fraction": 0.95,
        "moe_backend": "triton",  # VLLM_USE_FLASHINFER_MOE_FP8=0, VLLM_MOE_USE_DEEP_GEMM=0
    }
    march_dep = silicon.deployment_of(filled, silicon.Catalog())
    assert march_dep.model.kv_dtype == "bf16"
    # The March script sets no budget or sequence cap: vLLM's own defaults for an OpenAI server
    # on a GPU of 70 GiB or more (8,192 tokens, 1,024 sequences: arg_utils.py
    # get_batch_defaults), not aiconfigurator's generator rule (512 + ISL + 1,500 = 3,036).
    assert (march_dep.max_num_seqs, march_dep.max_num_batched_tokens) == (None, None)
    assert march_dep.batching()[:2] == (1024, 8192)
    assert (march_dep.engine.moe_backend, dep.engine.moe_backend) == ("triton", "auto")
    # vLLM fuses its all-reduces with the norms by default on B200 from 0.17 (the script sets
    # nothing), not on Hopper, not before 0.17
    assert (march_dep.engine.allreduce_norm_fusion, dep.engine.allreduce_norm_fusion) == (
        "vllm",
        "vllm",
    )
    # Both releases schedule asynchronously by default (from 0.14.0; not under pipeline
    # parallelism), which the simulator's overlap scheduling models
    assert dep.engine.overlap_scheduling and march_dep.engine.overlap_scheduling
    assert silicon.vllm_async_by_default({"backend_version": "0.14.0"}, pp=1)
    assert not silicon.vllm_async_by_default({"backend_version": "0.13.0"}, pp=1)
    assert not silicon.vllm_async_by_default({"backend_version": "0.19.0"}, pp=2)
    assert not silicon.vllm_async_by_default({"backend_version": ""}, pp=1)
    assert silicon.vllm_fuses_by_default({"system": "b200_sxm", "backend_version": "0.17.0"})
    assert not silicon.vllm_fuses_by_default({"system": "b200_sxm", "backend_version": "0.16.0"})
    assert not silicon.vllm_fuses_by_default({"system": "h200_sxm", "backend_version": "0.19.0"})
    b300 = {"system": "b300_sxm", "silicon_data_source": "x; image=vllm/vllm-openai:v0.18.0-cu130"}
    assert not silicon.vllm_fuses_by_default(b300)
    assert silicon.vllm_fuses_by_default({**b300, "silicon_data_source": "image=v:v0.19.0"})
    # A database record names its image bare, last, and may leave backend_version empty: the
    # same run as a dashboard export's must read the same release
    record = "db-dump/2026-04-27; config_id=9; workflow_run_id=1; vllm/vllm-openai:v0.19.0-cu130"
    assert silicon.vllm_release({"silicon_data_source": record, "backend_version": ""}) == (0, 19)
    assert silicon.vllm_fuses_by_default({**b300, "silicon_data_source": record})
    nightly = record.replace("v0.19.0-cu130", "nightly")
    assert silicon.vllm_release({"silicon_data_source": nightly}) == ()


def test_runner_values_evaluate_only_arithmetic_in_the_runners_variables() -> None:
    names = {"ISL": 1024, "OSL": 8192, "CONC": 64, "TP": 8, "EP_SIZE": 8}
    assert silicon._runner_value("ISL*2", names) == 2048
    assert silicon._runner_value("(ISL+OSL+256)", names) == 9472
    assert silicon._runner_value("CONC", names) == 64
    assert silicon._runner_value("0.85", names) == 0.85
    assert silicon._runner_value("", names) is None
    assert silicon._runner_value("MAX_MODEL_LEN", names) is None
    assert silicon._runner_value("__import__('os')", names) is None


def test_rows_from_before_the_config_table_keep_their_layout_once_no_script_drafted() -> None:
    """InferenceX had no master config before 2025-11-03 and no launch script drafting after
    2025-09-07 (294fe5f27 removed dsr1's MTP): a gpt-oss row from October passes with its own
    layout, an August one (MTP still possible) is refused."""
    row = {
        "silicon_data_source": (
            "source_file=2026-04-06.csv; model=gpt-oss-120b; silicon_concurrency=16; "
            "measured=2025-10-15T00:00:00.000Z; wip=False"
        ),
        "mode": "agg",
        "system": "h200_sxm",
        "backend": "vllm",
        "model_path": "openai/gpt-oss-120b",
        "precision": "fp4",
        "isl": "1024",
        "osl": "1024",
        "batch_size": "16",
        "tp_size": "2",
    }
    assert silicon.single_node_config(row, TABLE) == (
        row,
        "before InferenceX's search space: the row's layout, no drafting",
        "",
    )
    august = {**row, "silicon_data_source": row["silicon_data_source"].replace("10-15", "08-20")}
    assert silicon.single_node_config(august, TABLE)[2] == "no InferenceX config matches"


def test_a_gap_analysis_row_takes_its_dashboard_twins_day() -> None:
    """The dev file's Qwen3.5 H200 TP8 EP8 gap-analysis row at 4 clients repeats a dashboard
    run of 2026-03-04 (same TTFT and TPOT to 0.01 ms): with that day only the plain config was
    in effect (the MTP twin config starts on 2026-04-06), so it is not ambiguous."""
    with open(REPO / "data" / "aic_e2e" / "silicon_sample_dev_more.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    gap_id = "qwen3_5_397b_gap_analysis_" * 2 + "h200_sxm_sglang_fp8_agg_1024x1024_c4_tp8_ep8_62"
    dated = {r["id"]: r for r in silicon.date_twins(rows)}
    row = dated[gap_id]
    assert (row["twin_measured"], row["twin_image"]) == (
        "2026-03-04",
        "lmsysorg/sglang:v0.5.9-cu129-amd64",
    )
    _, source, refusal = silicon.single_node_config(row)
    assert refusal == "" and source.startswith("no speculative decoding: qwen3.5-fp8-h200-sglang")
    undated = next(r for r in rows if r["id"] == gap_id)
    assert silicon.single_node_config(undated)[2] == "2 InferenceX configs match"
    # a twin whose measurements differ by more than 0.01 ms is not one
    off = [
        r
        if r["id"] == gap_id
        else {**r, "silicon_ttft_ms": str(float(r["silicon_ttft_ms"]) + 0.02)}
        for r in rows
    ]
    assert "twin_measured" not in {r["id"]: r for r in silicon.date_twins(off)}[gap_id]


def test_the_bundled_table_carries_the_launch_columns() -> None:
    assert set(silicon.LAUNCH_FIELDS) <= set(silicon.inferencex_single_node()[0])


def test_every_kind_of_colocated_config_simulates_from_a_dashboard_row() -> None:
    """One dashboard-style row per model, GPU, framework, precision and MTP-or-not of the
    colocated table (at the config's fewest clients and its own layout) is matched and
    simulated to finite positive times, or refused as ambiguous; none crashes (a guard for the
    held-out rows' GPUs and models)."""
    from inferencex_kinds import kinds

    from servesim.spec.devices import Catalog

    catalog, simulated = Catalog(), 0
    for item, common in kinds(silicon.inferencex_single_node()):
        tp, dp_attn = int(item["tp"]), item["dp_attn"] == "True"
        row = {
            **common,
            "backend": silicon.INFERENCEX_SINGLE_FRAMEWORK[item["framework"]],
            "system": silicon.INFERENCEX_GPU[item["gpu"]],
            "mode": "agg",
            "tp_size": "1" if dp_attn else str(tp),
            "attention_dp_size": str(tp) if dp_attn else "1",
            "moe_ep_size": item["ep"] or "1",
        }
        filled, _, refusal = silicon.single_node_config(row)
        if refusal:
            assert refusal.endswith("configs match"), (row["id"], refusal)
            continue
        assert silicon.specified_or_reason(filled) == "", row["id"]
        ttft, tpot = silicon.simulate_row(filled, catalog, 10)
        assert 0 < ttft < 1e6 and 0 < tpot < 1e4, (row["id"], ttft, tpot)
        simulated += 1
    assert simulated >= 25


def test_a_script_passing_the_flashinfer_fusion_flag_runs_with_it() -> None:
    """The dev file's Qwen3.5 FP8 B200 row at 16 clients (config 618) ran
    qwen3.5_fp8_b200.sh, which passes `--enable-flashinfer-allreduce-fusion`: its deployment's
    engine fuses the TP all-reduces with the norms that follow (up to 2,048 tokens); SGLang
    without the flag does not."""
    with open(REPO / "data" / "aic_e2e" / "silicon_sample_dev_more.csv", newline="") as f:
        rows = {r["id"]: r for r in silicon.date_twins(list(csv.DictReader(f)))}
    filled, source, refusal = silicon.single_node_config(
        rows["qwen3_5_b200_sglang_fp8_agg_1024x1024_c16_cfg618"]
    )
    assert refusal == "" and "qwen3.5-fp8-b200-sglang " in source
    assert silicon.script_launch(filled)["ar_fusion"] == "flashinfer"
    dep = silicon.deployment_of(filled, silicon.Catalog())
    assert dep.engine.allreduce_norm_fusion == "flashinfer"
    plain = silicon.deployment_of({**filled, "launch_ar_fusion": ""}, silicon.Catalog())
    assert plain.engine.allreduce_norm_fusion == "none"


def test_a_hand_read_tensorrt_llm_launch_takes_its_scripts_settings_too() -> None:
    """The dev file's DeepSeek-R1 FP8 B200 TensorRT-LLM row at 256 clients, 8k/1k, TP 8
    (dsr1_fp8_b200_trt.sh, which tests ISL and OSL as text): the script's KV fraction (0.8 at
    8k/1k on TP 8; 0.75 on TP 4) and CUDA-graph size (CONC) apply beside the hand-read launch's
    token budget (max(8192, CONC + ISL + 64 rounded up to 64) = 8,512)."""
    rid = "2026_03_25_deepseek_r1_b200_sxm_trtllm_fp8_agg_8192x1024_c256_tp8_0_ep1_0_1196"
    with open(REPO / "data" / "aic_e2e" / "silicon_sample_dev_more.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["id"] == rid)
    filled, source, refusal = silicon.single_node_config(silicon.normalised_row(row)[0])
    assert refusal == "" and "dsr1-fp8-b200-trt" in source
    assert silicon.script_launch(filled)["mem_fraction"] == 0.8
    dep = silicon.deployment_of(filled, silicon.Catalog())
    assert (dep.engine.mem_util, dep.engine.cuda_graph_max_seqs) == (0.8, 256)
    assert dep.max_num_batched_tokens == 8512
    tp4 = silicon._runner_value(
        filled["launch_mem_fraction"], {"ISL": 8192, "OSL": 1024, "TP": 4, "CONC": 64, "EP_SIZE": 1}
    )
    assert tp4 == 0.75


# benchmarks/single_node/dsr1_fp8_b200_trt_mtp.sh as InferenceX ran it from 2026-02-23 (the
# lines that set the engine's limits and its piecewise CUDA graphs), in the runner's variables.
TRT_MTP_SCRIPT = """
MAX_BATCH_SIZE=$CONC
PIECEWISE_CUDA_GRAPHS="true"
MTP=3
if [[ "$DP_ATTENTION" == "true" ]]; then
    PIECEWISE_CUDA_GRAPHS="false"
    MAX_BATCH_SIZE=$(( CONC < 8 ? CONC : CONC / 8 ))
    MTP=1
fi
if [[ "$ISL" == "1024" && "$OSL" == "1024" ]]; then
    if [[ $CONC -le 4 ]]; then
        PIECEWISE_CUDA_GRAPHS="false"
    fi
fi
MAX_NUM_TOKENS=$(( ((MTP+1)*MAX_BATCH_SIZE+ISL+64+63)/64*64 ))
if [[ "$PIECEWISE_CUDA_GRAPHS" == "true" ]]; then
    cat << EOF >> $EXTRA_CONFIG_FILE
torch_compile_config:
    enable_piecewise_cuda_graph: true
EOF
fi
trtllm-serve $MODEL --max_batch_size=$MAX_BATCH_SIZE --max_num_tokens=$MAX_NUM_TOKENS
"""


def test_launch_settings_read_bash_arithmetic_and_the_piecewise_graph_switch() -> None:
    """The MTP launch sizes max_num_tokens to one prompt beside a full batch of verify tokens:
    `$(( ))` with bare names, integer division and a `? :` choice read as the runner's
    expression; the piecewise-graph switch per branch."""
    from inferencex_single_node import launch_settings

    names = {"ISL": 1024, "OSL": 1024, "CONC": 128, "TP": 8, "EP_SIZE": 1}
    plain = launch_settings(TRT_MTP_SCRIPT, dp_attn=False)
    # (3 + 1) x 128 + 1024 + 64 = 1,600, rounded up to 64 by bash's integer division
    assert silicon._runner_value(plain["token_budget"], names) == 1600
    assert silicon._runner_value(plain["max_seqs"], names) == 128
    assert silicon._runner_value(plain["prefill_graphs"], names) == 1
    assert silicon._runner_value(plain["prefill_graphs"], {**names, "CONC": 4}) == 0
    dp = launch_settings(TRT_MTP_SCRIPT, dp_attn=True)
    # attention DP: MTP 1 and a batch of 128 / 8 = 16 a rank: 2 x 16 + 1,088 -> 1,152
    assert silicon._runner_value(dp["max_seqs"], names) == 16
    assert silicon._runner_value(dp["max_seqs"], {**names, "CONC": 4}) == 4
    assert silicon._runner_value(dp["token_budget"], names) == 1152
    assert silicon._runner_value(dp["prefill_graphs"], names) == 0
    # A top-level reassignment reads the value it replaces (the plain script's 8192 floor)
    floor = (
        "N=$(( ($CONC+$ISL+64+63)/64*64 ))\nN=$(( N > 8192 ? N : 8192 ))\n"
        "trtllm-serve --max_num_tokens=$N\n"
    )
    budget = launch_settings(floor)["token_budget"]
    assert silicon._runner_value(budget, names) == 8192
    assert silicon._runner_value(budget, {**names, "ISL": 8192}) == 8384  # 128 + 8,192 + 64


def test_the_tensorrt_llm_moe_backend_a_script_chooses_per_branch() -> None:
    """`moe_config: backend: $MOE_BACKEND`: DEEPGEMM under attention DP and TRTLLM without in
    the fp8 MTP script; a choice that depends on the clients stays unknown."""
    from inferencex_single_node import launch_settings

    script = (
        'MOE_BACKEND="TRTLLM"\nif [[ "$DP_ATTENTION" == "true" ]]; then\n'
        '    MOE_BACKEND="DEEPGEMM"\nfi\n'
        "cat > $F << EOF\nmoe_config:\n    backend: $MOE_BACKEND\nEOF\n"
    )
    assert launch_settings(script, dp_attn=True)["moe_backend"] == "deepgemm"
    assert launch_settings(script, dp_attn=False)["moe_backend"] == "trtllm"
    by_clients = script.replace('"$DP_ATTENTION" == "true"', "$CONC -ge 256")
    assert launch_settings(by_clients, dp_attn=False)["moe_backend"] == ""
    literal = "cat > $F << EOF\nmoe_config:\n    backend: CUTLASS\nEOF\n"
    assert launch_settings(literal)["moe_backend"] == "cutlass"


def test_the_table_reads_each_days_launch_script_not_the_configs(tmp_path: Path) -> None:
    """A launch script edited under an unchanged config runs from its edit on: InferenceX's
    qwen3.5_bf16_b200.sh gained its recipe flags (--scheduler-recv-interval, ...) on 2026-02-20,
    four days after the config's last change; the table read the config's script until then."""
    import subprocess

    sys.path.insert(0, str(REPO / "scripts"))
    from inferencex_single_node import single_node

    repo = tmp_path / "ix"
    script = repo / "benchmarks" / "single_node" / "qwen3.5_bf16_b200.sh"
    script.parent.mkdir(parents=True)
    config = repo / ".github" / "configs" / "nvidia-master.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "qwen3.5-bf16-b200-sglang:\n  image: img\n  model-prefix: qwen3.5\n  precision: bf16\n"
        "  framework: sglang\n  multinode: false\n  seq-len-configs:\n  - isl: 1024\n"
        "    osl: 1024\n    search-space:\n    - { tp: 8, ep: 1, conc-start: 4, conc-end: 64 }\n"
    )
    launch = "python3 -m sglang.launch_server --model-path=$MODEL --tensor-parallel-size=$TP"

    def commit(day: str) -> None:
        env = {"GIT_AUTHOR_DATE": f"{day}T06:00:00Z", "GIT_COMMITTER_DATE": f"{day}T06:00:00Z"}
        for args in (
            ["add", "-A"],
            ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", day],
        ):
            subprocess.run(
                ["git", *args], cwd=repo, check=True, env={**env, "PATH": "/usr/bin:/bin"}
            )

    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    script.write_text(f"{launch} --mem-fraction-static 0.8 > log &\n")
    commit("2026-02-16")
    script.write_text(f"{launch} --mem-fraction-static 0.82 --scheduler-recv-interval 30 > log &\n")
    commit("2026-02-20")
    gitdir = str(repo / ".git")
    (before,) = single_node(gitdir, "2026-02-18", ("qwen3.5",))
    (after,) = single_node(gitdir, "2026-02-20", ("qwen3.5",))
    assert (before["mem_fraction"], before["recv_interval"]) == ("0.8", "")
    assert (after["mem_fraction"], after["recv_interval"]) == ("0.82", "30")
    # The config is the same commit; the script's own commit says which version ran.
    assert before["source_commits"] == after["source_commits"] == before["script_commits"]
    assert after["script_commits"] != before["script_commits"]


def test_a_clamp_on_a_scripts_own_variable_keeps_the_setting_known() -> None:
    """dsr1_fp8_h200_trt_mtp.sh (from 2026-02-19) sets MAX_BATCH_SIZE=$((CONC/TP)) under
    attention DP and raises it to 1 when that is below 1: a test on the script's own variable,
    read as its expression, not as an unknown."""
    sys.path.insert(0, str(REPO / "scripts"))
    from inferencex_single_node import launch_settings

    script = (
        'if [[ "$DP_ATTENTION" == "true" ]]; then\n'
        "    MAX_BATCH_SIZE=$((CONC/TP))\n"
        "    if [[ $MAX_BATCH_SIZE -lt 1 ]]; then\n"
        "        MAX_BATCH_SIZE=1\n"
        "    fi\n"
        "else\n"
        "    MAX_BATCH_SIZE=$CONC\n"
        "fi\n"
        "trtllm-serve $MODEL --max_batch_size=$MAX_BATCH_SIZE --tp_size=$TP\n"
    )
    runner = {"ISL": 1024, "OSL": 1024, "EP_SIZE": 8, "TP": 8}
    dp = launch_settings(script, dp_attn=True)["max_seqs"]
    assert [silicon._runner_value(dp, {**runner, "CONC": c}) for c in (4, 8, 64)] == [1, 1, 8]
    plain = launch_settings(script, dp_attn=False)["max_seqs"]
    assert silicon._runner_value(plain, {**runner, "CONC": 4}) == 4


def test_a_gptoss_hopper_vllm_row_runs_its_experts_on_marlin() -> None:
    """gptoss_fp4_h100.sh exports VLLM_MXFP4_USE_MARLIN=1 from 2026-01-02 on: a dashboard row
    of 2026-02-25 (vLLM 0.15.1, TP 8) prices its MXFP4 experts from Marlin rows, a row of
    2025-12-05 (no switch) from vLLM's own choice, OpenAI's Triton kernels."""
    conc = 16

    def row(day: str, image: str) -> dict[str, str]:
        return {
            "silicon_data_source": (
                f"source_file={day}.csv; model=gpt-oss-120b; silicon_concurrency={conc}; "
                f"measured={day}T12:00:00Z; wip=False; image=vllm/vllm-openai:{image}"
            ),
            "mode": "agg",
            "system": "h100_sxm",
            "backend": "vllm",
            "model_path": "openai/gpt-oss-120b",
            "precision": "fp4",
            "isl": "1024",
            "osl": "1024",
            "batch_size": str(conc),
            "tp_size": "8",
            "attention_dp_size": "1",
            "moe_ep_size": "1",
        }

    filled, source, refusal = silicon.single_node_config(row("2026-02-25", "v0.15.1"))
    assert refusal == "" and "gptoss-fp4-h100-vllm" in source
    assert silicon.script_launch(filled)["moe_backend"] == "marlin"
    dep = silicon.deployment_of(filled, silicon.Catalog())
    assert dep.engine.moe_backend == "marlin"
    before, _, refusal = silicon.single_node_config(row("2025-12-05", "v0.11.2"))
    assert refusal == "" and "moe_backend" not in silicon.script_launch(before)
    assert silicon.deployment_of(before, silicon.Catalog()).engine.moe_backend == "auto"
