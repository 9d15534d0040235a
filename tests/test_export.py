"""Exports: engine flags per candidate field, fp8, unchunked prefill, the Deployment YAML."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from servesim.errors import ServesimError
from servesim.planner.candidates import Candidate, PlanSpec, WorkloadSpec
from servesim.planner.plan import PlanResult
from servesim.planner.sizing import Sizing
from servesim.report.export import (
    k8s_manifest,
    launch_notes,
    sglang_command,
    trtllm_command,
    trtllm_options,
    vllm_command,
    write_exports,
)
from servesim.sim.metrics import Slo

LLAMA = "meta-llama/Llama-3.1-8B"  # a bf16 checkpoint
DEEPSEEK = "deepseek-ai/DeepSeek-V3"  # an fp8 checkpoint

# Flags as the engines define them: vLLM's EngineArgs CLI (vllm/engine/arg_utils.py, booleans as
# --x/--no-x) plus `vllm serve`'s --host/--port; SGLang's ServerArgs (sglang/srt/server_args.py).
VLLM_FLAGS = {
    "--tensor-parallel-size",
    "--pipeline-parallel-size",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--enable-chunked-prefill",
    "--no-enable-chunked-prefill",
    "--gpu-memory-utilization",
    "--max-model-len",
    "--quantization",
    "--kv-cache-dtype",
    "--speculative-config",
    "--host",
    "--port",
}
SGLANG_FLAGS = {
    "--model-path",
    "--tp-size",
    "--pp-size",
    "--max-running-requests",
    "--chunked-prefill-size",
    "--max-prefill-tokens",
    "--mem-fraction-static",
    "--context-length",
    "--quantization",
    "--kv-cache-dtype",
    "--speculative-algorithm",
    "--speculative-num-steps",
    "--speculative-eagle-topk",
    "--speculative-num-draft-tokens",
    "--speculative-draft-model-path",
    "--host",
    "--port",
}


def row(**kw: Any) -> dict[str, Any]:
    c = Candidate(**{"device": "h100_sxm", "tp": 2, **kw})
    return {"key": c.key(), "label": c.label(), **asdict(c), "kv_tokens": 500_000}


def flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


def flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def test_vllm_flags_follow_each_field() -> None:
    r = row(tp=4, pp=2, max_num_seqs=128, max_num_batched_tokens=4096)
    argv = shlex.split(vllm_command(r, LLAMA))
    assert argv[:3] == ["vllm", "serve", LLAMA]
    assert flag(argv, "--tensor-parallel-size") == "4"
    assert flag(argv, "--pipeline-parallel-size") == "2"
    assert flag(argv, "--max-num-seqs") == "128"
    assert flag(argv, "--max-num-batched-tokens") == "4096"
    assert flag(argv, "--gpu-memory-utilization") == "0.9"  # vLLM profile's memory fraction
    assert "--enable-chunked-prefill" in argv and "--no-enable-chunked-prefill" not in argv
    assert "--quantization" not in argv and "--kv-cache-dtype" not in argv
    assert "--max-model-len" not in argv  # only when asked (or needed, see unchunked)
    assert flags(argv) <= VLLM_FLAGS


def test_sglang_flags_follow_each_field() -> None:
    r = row(tp=8, engine="sglang", max_num_seqs=64, max_num_batched_tokens=2048)
    argv = shlex.split(sglang_command(r, LLAMA, max_model_len=9216))
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    assert flag(argv, "--model-path") == LLAMA
    assert flag(argv, "--tp-size") == "8"
    assert flag(argv, "--pp-size") == "1"
    assert flag(argv, "--max-running-requests") == "64"
    assert flag(argv, "--chunked-prefill-size") == "2048"
    assert flag(argv, "--max-prefill-tokens") == "2048"
    # SGLang's own rule on an H100 (81,559 MiB) at TP 8, written out as simulated: a reserve of
    # 512 + 1.5 × 8,192 + 2 × 512 + 8/8 × 1,024 = 14,848 MiB, (81,559 − 14,848) / 81,559 = 0.818
    assert flag(argv, "--mem-fraction-static") == "0.818"
    assert flag(argv, "--context-length") == "9216"
    assert flags(argv) <= SGLANG_FLAGS


# trtllm-serve's options (tensorrt_llm/commands/serve.py): the rest lives in the LlmArgs YAML.
TRTLLM_FLAGS = {
    "--backend",
    "--tp_size",
    "--pp_size",
    "--max_batch_size",
    "--max_num_tokens",
    "--max_seq_len",
    "--extra_llm_api_options",
    "--host",
    "--port",
}


def test_trtllm_flags_and_options_follow_each_field() -> None:
    """trtllm-serve on the PyTorch backend with the candidate's parallelism and batching; the KV
    cache's share of free memory (TensorRT-LLM's own meaning, 0.9), its dtype and chunked
    prefill go in the LlmArgs YAML, with the KV transceiver for a disaggregated pool."""
    r = row(tp=4, pp=2, engine="trtllm", max_num_seqs=128, max_num_batched_tokens=4096)
    argv = shlex.split(trtllm_command(r, LLAMA, max_model_len=9216))
    assert argv[:2] == ["trtllm-serve", LLAMA]
    assert flag(argv, "--backend") == "pytorch"
    assert (flag(argv, "--tp_size"), flag(argv, "--pp_size")) == ("4", "2")
    assert flag(argv, "--max_batch_size") == "128" and flag(argv, "--max_num_tokens") == "4096"
    assert flag(argv, "--max_seq_len") == "9216"
    assert flags(argv) <= TRTLLM_FLAGS
    opts = trtllm_options({**r, "kv_dtype": "fp8"})
    assert opts == {
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9, "dtype": "fp8"},
        "enable_chunked_prefill": True,
        # every decode batch graphed, as simulated (the default graphs 1-32, 64, 128 only)
        "cuda_graph_config": {"enable_padding": True, "max_batch_size": 128},
    }
    many = trtllm_options({**r, "max_num_seqs": 2048})["cuda_graph_config"]
    assert many["max_batch_size"] == 512  # the profile's largest graphed decode batch
    assert trtllm_options(r, "decode")["cache_transceiver_config"] == {"backend": "DEFAULT"}
    # unchunked: the budget holds the longest prompt
    argv = shlex.split(trtllm_command({**r, "chunked_prefill": False}, LLAMA, max_model_len=9216))
    assert flag(argv, "--max_num_tokens") == "9216"
    # fp8 weights from a bf16 checkpoint: TensorRT-LLM does not quantise online, so a note
    note = launch_notes({**r, "weight_dtype": "fp8"}, LLAMA)
    assert len(note) == 1 and "ModelOpt" in note[0]
    assert launch_notes({**r, "engine": "vllm", "weight_dtype": "fp8"}, LLAMA) == []


def test_trtllm_deployment_writes_its_options_then_serves() -> None:
    r = row(tp=4, engine="trtllm", kv_dtype="fp8")
    doc, c = container(k8s_manifest(r, LLAMA, 2, "trtllm", 9216))
    assert c["image"].startswith("nvcr.io/nvidia/tensorrt-llm/release")
    assert c["command"] == ["/bin/sh", "-c"] and c["ports"][0]["containerPort"] == 8000
    script = c["args"][0]
    head, run = script.split("\nexec ", 1)
    opts = yaml.safe_load(head.split("<<'YAML'\n", 1)[1].rsplit("YAML", 1)[0])
    assert opts["kv_cache_config"]["dtype"] == "fp8"
    argv = shlex.split(run)
    assert argv[0] == "trtllm-serve" and flag(argv, "--tp_size") == "4"
    subprocess.run(["sh", "-n", "-c", script], check=True)  # valid shell
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4 and doc["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("model", "weights", "kv", "quantize"),
    [
        (LLAMA, "bf16", "fp8", False),
        (LLAMA, "fp8", "bf16", True),  # bf16 checkpoint: quantised online
        (LLAMA, "fp8", "fp8", True),
        (DEEPSEEK, "fp8", "bf16", False),  # already an fp8 checkpoint: no flag
    ],
)
def test_fp8_weights_and_kv_cache(model: str, weights: str, kv: str, quantize: bool) -> None:
    r = row(weight_dtype=weights, kv_dtype=kv, tp=8)
    v = shlex.split(vllm_command(r, model))
    s = shlex.split(sglang_command(r, model))
    if quantize:
        assert flag(v, "--quantization") == "fp8" and flag(s, "--quantization") == "fp8"
    else:
        assert "--quantization" not in v and "--quantization" not in s
    if kv == "fp8":
        assert flag(v, "--kv-cache-dtype") == "fp8"
        assert flag(s, "--kv-cache-dtype") == "fp8_e4m3"
    else:
        assert "--kv-cache-dtype" not in v and "--kv-cache-dtype" not in s
    assert launch_notes(r, model) == []


def test_a_format_no_engine_can_convert_to_is_a_note_not_a_flag() -> None:
    r = row(weight_dtype="int4")
    argv = shlex.split(vllm_command(r, LLAMA))
    assert "--quantization" not in argv
    (note,) = launch_notes(r, LLAMA)
    assert "int4 checkpoint" in note and "bf16" in note


def test_unchunked_prefill_fits_the_longest_prompt_in_one_step() -> None:
    r = row(chunked_prefill=False, max_num_batched_tokens=8192)
    v = shlex.split(vllm_command(r, LLAMA))
    assert "--no-enable-chunked-prefill" in v and "--enable-chunked-prefill" not in v
    # vLLM refuses an unchunked budget below the model length: the two are tied.
    assert flag(v, "--max-num-batched-tokens") == flag(v, "--max-model-len") == "8192"
    v = shlex.split(vllm_command(r, LLAMA, max_model_len=12288))
    assert flag(v, "--max-num-batched-tokens") == flag(v, "--max-model-len") == "12288"
    s = shlex.split(sglang_command(r, LLAMA))
    assert flag(s, "--chunked-prefill-size") == "-1"
    assert flag(s, "--max-prefill-tokens") == "8192"


def container(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == "apps/v1" and doc["kind"] == "Deployment"
    pod = doc["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return doc, c


def test_vllm_deployment_parses_with_gpus_replicas_probe_and_shm() -> None:
    r = row(tp=4, pp=2)
    doc, c = container(k8s_manifest(r, LLAMA, replicas=3))
    assert doc["spec"]["replicas"] == 3
    assert doc["spec"]["selector"]["matchLabels"].items() <= (
        doc["spec"]["template"]["metadata"]["labels"].items()
    )
    assert c["image"].startswith("vllm/vllm-openai")
    assert c["command"] + c["args"] == shlex.split(vllm_command(r, LLAMA))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8  # tp × pp per replica
    pod = doc["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    probe = c["readinessProbe"]["httpGet"]
    assert probe == {"path": "/health", "port": 8000}
    assert c["ports"][0]["containerPort"] == 8000
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_sglang_deployment_on_another_gpu() -> None:
    r = row(device="a100_sxm", tp=2, engine="sglang")
    doc, c = container(k8s_manifest(r, LLAMA, replicas=1, engine="sglang", max_model_len=4096))
    assert c["image"].startswith("lmsysorg/sglang")
    assert c["command"] == ["python3", "-m", "sglang.launch_server"]
    assert flag(c["args"], "--tp-size") == "2" and flag(c["args"], "--port") == "30000"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": 30000}
    pod = doc["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 2}


def test_manifests_for_amd_and_refusals() -> None:
    _, c = container(k8s_manifest(row(device="mi300x", tp=8), LLAMA, replicas=2))
    assert c["resources"]["limits"] == {"amd.com/gpu": 8}
    assert c["image"].startswith("rocm/vllm")
    with pytest.raises(ServesimError, match="image"):
        k8s_manifest(row(device="mi300x", tp=8), LLAMA, replicas=2, engine="sglang")
    with pytest.raises(ServesimError, match="GPU"):
        k8s_manifest(row(device="cpu", tp=1), LLAMA, replicas=1)


def script_argv(path: Path) -> list[str]:
    return shlex.split(path.read_text().split("\nexec ", 1)[1].replace("\\\n", " "))


def test_write_exports_uses_the_sized_deployment(tmp_path: Path) -> None:
    spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9, rate_per_s=12.0)
    best = row(device="l40s", tp=1, max_num_seqs=256)
    sized = row(device="h100_sxm", tp=2, max_num_seqs=64, max_num_batched_tokens=2048)
    rows = [
        {**best, "status": "ok", "rank": 1, "capacity_req_per_s": 5.0},
        {**sized, "status": "ok", "rank": 2, "capacity_req_per_s": 13.0},
    ]
    cand = Candidate("h100_sxm", 2, max_num_seqs=64, max_num_batched_tokens=2048)
    sizing = Sizing(
        cand, replicas=2, devices=4, price_per_hour=30.08, attainment=0.95, verified=True
    )
    result = PlanResult(
        spec=spec,
        rows=rows,
        pruned=[],
        pruned_by_rule={},
        evaluated=0,
        reused=2,
        wall_s=0.0,
        cheapest=sizing,
    )
    files = write_exports(result, tmp_path)
    assert set(files) == {"launch_vllm", "launch_sglang", "launch_trtllm", "k8s"}
    for script in (files["launch_vllm"], files["launch_sglang"], files["launch_trtllm"]):
        assert script.stat().st_mode & 0o111
        subprocess.run(["bash", "-n", str(script)], check=True)  # valid shell
    argv = script_argv(files["launch_sglang"])
    assert flag(argv, "--tp-size") == "2" and flag(argv, "--max-running-requests") == "64"
    # no SGLang candidate was planned: its script runs the pick and says what it was planned for
    assert "no sglang candidate met the SLO" in files["launch_sglang"].read_text()
    assert "planned with the vllm scheduler" in files["launch_sglang"].read_text()
    argv = script_argv(files["launch_vllm"])
    assert flag(argv, "--tensor-parallel-size") == "2" and flag(argv, "--max-num-seqs") == "64"
    # the bundled trace's longest request, rounded up to 1024 tokens
    assert int(flag(argv, "--max-model-len")) % 1024 == 0
    doc, c = container(files["k8s"].read_text())
    assert doc["spec"]["replicas"] == 2
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    # no sizing: the winner, one replica
    result.cheapest = None
    doc, c = container(write_exports(result, tmp_path / "w")["k8s"].read_text())
    assert doc["spec"]["replicas"] == 1 and flag(c["args"], "--max-num-seqs") == "256"


def test_each_launch_script_carries_the_settings_planned_for_its_engine(tmp_path: Path) -> None:
    """Sizing picks an SGLang fleet while vLLM's best candidate is another configuration: the
    vLLM script must run vLLM's own plan, not the SGLang one, and each says what it was
    planned for; the manifest runs the overall pick."""
    spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9, rate_per_s=30.0)
    vllm_row = row(tp=1, max_num_seqs=256, max_num_batched_tokens=8192)
    vllm_worse = row(device="a100_sxm", tp=2, max_num_seqs=64, max_num_batched_tokens=2048)
    sglang_row = row(tp=2, engine="sglang", max_num_seqs=1024, max_num_batched_tokens=16384)
    rows = [
        {**vllm_row, "status": "ok", "rank": 1, "capacity_req_per_s": 19.0},
        {**sglang_row, "status": "ok", "rank": 2, "capacity_req_per_s": 31.0},
        {**vllm_worse, "status": "ok", "rank": 3, "capacity_req_per_s": 9.0},
    ]

    def sized(r: dict[str, Any], replicas: int, price: float) -> Sizing:
        c = Candidate(**{k: r[k] for k in Candidate.__dataclass_fields__})
        return Sizing(c, replicas, replicas * c.tp, price, 0.93, True)

    by_engine = {"sglang": sized(sglang_row, 1, 15.04), "vllm": sized(vllm_row, 2, 15.04)}
    result = PlanResult(
        spec=spec,
        rows=rows,
        pruned=[],
        pruned_by_rule={},
        evaluated=0,
        reused=3,
        wall_s=0.0,
        cheapest=by_engine["sglang"],
        fewest_devices=by_engine["sglang"],
        cheapest_by_engine=by_engine,
    )
    files = write_exports(result, tmp_path)
    vllm_text = files["launch_vllm"].read_text()
    argv = script_argv(files["launch_vllm"])
    assert flag(argv, "--tensor-parallel-size") == "1"
    assert (
        flag(argv, "--max-num-seqs") == "256" and flag(argv, "--max-num-batched-tokens") == "8192"
    )
    assert "planned for vllm: the lowest-$/h vllm deployment verified at 30 req/s" in vllm_text
    assert "run 2 replica(s)" in vllm_text and "sglang scheduler" not in vllm_text
    assert (
        "the overall pick is h100_sxm tp2 sglang" in vllm_text and "launch_sglang.sh" in vllm_text
    )
    sglang_text = files["launch_sglang"].read_text()
    argv = script_argv(files["launch_sglang"])
    assert flag(argv, "--tp-size") == "2" and flag(argv, "--max-running-requests") == "1024"
    assert "planned for sglang: the lowest-$/h sglang deployment" in sglang_text
    assert "run 1 replica(s)" in sglang_text and "overall pick" not in sglang_text
    doc, c = container(files["k8s"].read_text())
    assert doc["spec"]["replicas"] == 1
    assert c["image"].startswith("lmsysorg/sglang") and flag(c["args"], "--tp-size") == "2"
    # Without a rate to size for, each engine's best-ranked candidate, one replica.
    result.spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9)
    result.cheapest = result.fewest_devices = None
    result.cheapest_by_engine = {}
    files = write_exports(result, tmp_path / "unsized")
    assert flag(script_argv(files["launch_vllm"]), "--max-num-seqs") == "256"
    assert flag(script_argv(files["launch_sglang"]), "--max-running-requests") == "1024"
    assert "best sglang candidate by goodput per $/h" in files["launch_sglang"].read_text()


def replace_spec(spec: PlanSpec, **kw: Any) -> PlanSpec:
    return replace(spec, **kw)


def _spec_result(spec: PlanSpec, r: dict[str, Any]) -> PlanResult:
    rows = [{**r, "status": "ok", "rank": 1, "capacity_req_per_s": 19.0}]
    return PlanResult(
        spec=spec, rows=rows, pruned=[], pruned_by_rule={}, evaluated=1, reused=0, wall_s=0.0
    )


def _trtllm_yaml(script: Path) -> dict[str, Any]:
    text = script.read_text()
    return yaml.safe_load(text.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0])


def test_a_speculative_candidate_launches_its_speculation(tmp_path: Path) -> None:
    """The fleet is sized on a candidate drafting 3 tokens a step; its launches ran the plain
    engine (12.9 against 19.4 req/s in the audit's case). Each engine now gets its own words
    for the plan's method, draft depth and tree width, and the draft model the plan named."""
    draft = "yuhuili/EAGLE-LLaMA3.1-Instruct-8B"
    slo = Slo(2.0, 0.1)
    spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), slo, 0.9)
    spec = replace_spec(spec, speculative="eagle", draft_model=draft)
    files = write_exports(_spec_result(spec, row(tp=1, num_draft_tokens=3)), tmp_path / "e")
    v = script_argv(files["launch_vllm"])
    assert flags(v) <= VLLM_FLAGS
    cfg = json.loads(flag(v, "--speculative-config"))
    assert cfg == {"method": "eagle", "num_speculative_tokens": 3, "model": draft}
    sg = script_argv(files["launch_sglang"])
    assert flags(sg) <= SGLANG_FLAGS
    assert flag(sg, "--speculative-algorithm") == "EAGLE"
    assert (
        flag(sg, "--speculative-num-steps") == "3" and flag(sg, "--speculative-eagle-topk") == "1"
    )
    assert flag(sg, "--speculative-num-draft-tokens") == "4"  # the chain's 3 drafts and the root
    assert flag(sg, "--speculative-draft-model-path") == draft
    trt = _trtllm_yaml(files["launch_trtllm"])["speculative_config"]
    assert trt == {"decoding_type": "Eagle", "max_draft_len": 3, "speculative_model_dir": draft}
    _, c = container(files["k8s"].read_text())
    assert json.loads(flag(c["args"], "--speculative-config"))["num_speculative_tokens"] == 3

    # A checkpoint's own MTP layers, drafted as a tree 2 wide: no draft model to name; SGLang
    # verifies every node, the engines that run chains say so.
    mtp = replace_spec(
        PlanSpec(DEEPSEEK, WorkloadSpec("azure_conv", 100), slo, 0.9), speculative="mtp"
    )
    r = row(tp=8, device="h200_sxm", num_draft_tokens=3, spec_tree_width=2)
    files = write_exports(_spec_result(mtp, r), tmp_path / "m")
    v = script_argv(files["launch_vllm"])
    assert json.loads(flag(v, "--speculative-config")) == {
        "method": "mtp",
        "num_speculative_tokens": 3,
    }
    assert "a tree 2 wide; vllm is launched with a chain of 3" in files["launch_vllm"].read_text()
    sg = script_argv(files["launch_sglang"])
    assert flag(sg, "--speculative-algorithm") == "NEXTN"
    assert flag(sg, "--speculative-eagle-topk") == "2"
    assert flag(sg, "--speculative-num-draft-tokens") == "7"
    assert "--speculative-draft-model-path" not in sg
    assert "chain" not in files["launch_sglang"].read_text()
    trt = _trtllm_yaml(files["launch_trtllm"])["speculative_config"]
    assert trt == {"decoding_type": "MTP", "num_nextn_predict_layers": 3}

    # A plan that searched speculation but picked no draft tokens launches the plain engine.
    files = write_exports(_spec_result(mtp, row(tp=8, device="h200_sxm")), tmp_path / "p")
    assert not any("speculative" in a for a in script_argv(files["launch_vllm"]))
    assert "speculative_config" not in _trtllm_yaml(files["launch_trtllm"])


def test_vllm_before_0_11_names_mtp_by_the_model_family() -> None:
    """vLLM unified its MTP drafters as "mtp" in 0.11.0 (PR #25232); a plan pinned to an older
    release launched with a method that release does not know ("deepseek_mtp" there)."""
    from servesim.report.export import speculative_args

    r = {**row(tp=8, num_draft_tokens=1), "speculative": "mtp"}

    def method(release: str | None, model_type: str = "deepseek_v3") -> str:
        argv = speculative_args("vllm", {**r, "engine_version": release}, model_type)
        return json.loads(argv[1])["method"]

    assert method("0.10.1") == "deepseek_mtp" and method("0.10.1", "qwen3_next") == "qwen3_next_mtp"
    assert method("0.11.0") == method("0.12.0") == method(None) == "mtp"
    assert method("0.10.1", "llama") == "mtp"  # a family servesim has no older name for


def test_a_draft_the_plan_did_not_name_is_a_placeholder_with_a_note() -> None:
    from servesim.report.export import DRAFT_PLACEHOLDER, speculative_args, speculative_notes

    r = {**row(tp=1, num_draft_tokens=2), "speculative": "draft", "draft_model": None}
    assert json.loads(speculative_args("vllm", r)[1])["model"] == DRAFT_PLACEHOLDER
    assert speculative_args("sglang", r)[1] == "STANDALONE"
    (note,) = speculative_notes("vllm", r)
    assert DRAFT_PLACEHOLDER in note and "--draft-model" in note
    mirrored = {**r, "draft_model": "Qwen/Qwen3-8B", "mirror_device": "l40s"}
    assert any("separate l40s devices" in n for n in speculative_notes("sglang", mirrored))


def test_a_stated_release_picks_the_manifests_image(tmp_path: Path) -> None:
    """`--engine-version vllm=0.12.0` priced the plan at that release, but the manifest ran
    `vllm/vllm-openai:latest`: it now runs the release's own image, and the launch script says
    which release it was priced at."""
    from servesim.report.export import release_image

    spec = replace_spec(
        PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9),
        engine_versions=(("vllm", "0.12.0"),),
    )
    files = write_exports(_spec_result(spec, row(tp=1)), tmp_path)
    _, c = container(files["k8s"].read_text())
    assert c["image"] == "vllm/vllm-openai:v0.12.0"
    assert "priced at vllm 0.12.0" in files["launch_vllm"].read_text()
    assert "priced at" not in files["launch_sglang"].read_text()  # it runs vLLM's settings
    assert release_image("sglang", "nvidia", "0.5.9") == "lmsysorg/sglang:v0.5.9"
    trt = release_image("trtllm", "nvidia", "1.2.0rc6")
    assert trt == "nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc6"
    assert release_image("vllm", "amd", "0.12.0") == "rocm/vllm:latest"
    assert release_image("vllm", "nvidia", None) == "vllm/vllm-openai:latest"


def test_the_pools_of_a_disaggregated_unit_can_share_a_node(tmp_path: Path) -> None:
    """A prefill:decode unit is planned inside one node, but both pools' scripts served on the
    same port, started on the same GPUs and (TensorRT-LLM) wrote the same options file. The
    decode pool now serves one port up, each script lists the GPUs of its replicas, and each
    TensorRT-LLM pool writes its own options."""
    from servesim.report.export import pool_gpus

    r = row(mode="disaggregated", tp=1, prefill_tp=2, prefill_replicas=1)
    r = {**r, "decode_tp": 1, "decode_replicas": 2}
    assert pool_gpus(r, "trtllm") == {
        "prefill": "CUDA_VISIBLE_DEVICES=0,1 ... --port 8000",
        "decode": "CUDA_VISIBLE_DEVICES=2 ... --port 8001; CUDA_VISIBLE_DEVICES=3 ... --port 8003",
    }
    spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9)
    files = write_exports(_spec_result(spec, r), tmp_path)
    for engine, base in (("vllm", 8000), ("sglang", 30000), ("trtllm", 8000)):
        pre, dec = files[f"launch_{engine}_prefill"], files[f"launch_{engine}_decode"]
        assert flag(script_argv(pre), "--port") == str(base)
        assert flag(script_argv(dec), "--port") == str(base + 1)
        assert f"CUDA_VISIBLE_DEVICES=3{' VLLM_NIXL_SIDE_CHANNEL_PORT=5603' * (engine == 'vllm')}" \
            f" ... --port {base + 3}" in dec.read_text()  # fmt: skip
    pre, dec = files["launch_trtllm_prefill"].read_text(), files["launch_trtllm_decode"].read_text()
    assert "servesim_llm_api_options_prefill.yml" in pre and "_decode.yml" in dec
    assert "cache_transceiver_config" in _trtllm_yaml(files["launch_trtllm_decode"])
    docs = [d for d in yaml.safe_load_all(files["k8s"].read_text()) if d]
    ports = [
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] for d in docs
    ]
    assert ports == [8000, 8001]


def test_the_replicas_of_a_pool_on_one_node_take_their_own_ports() -> None:
    """Every replica of a pool was told to serve on the pool's one port, and vLLM's NIXL side
    channels (5600 plus each TP rank) and SGLang's prefill bootstrap servers (8998) all took
    the engine's default: two replicas on one node could not both start. Each replica now
    takes its own serving port (prefill base + 2i, decode base + 2i + 1), a side channel
    above its first GPU, and a bootstrap port of its own."""
    from servesim.report.export import pool_gpus

    r = row(mode="disaggregated", tp=2, prefill_tp=2, prefill_replicas=2)
    r = {**r, "decode_tp": 2, "decode_replicas": 2}
    vllm = pool_gpus(r, "vllm")
    assert vllm["prefill"] == (
        "CUDA_VISIBLE_DEVICES=0,1 VLLM_NIXL_SIDE_CHANNEL_PORT=5600 ... --port 8000; "
        "CUDA_VISIBLE_DEVICES=2,3 VLLM_NIXL_SIDE_CHANNEL_PORT=5602 ... --port 8002"
    )
    assert vllm["decode"] == (
        "CUDA_VISIBLE_DEVICES=4,5 VLLM_NIXL_SIDE_CHANNEL_PORT=5604 ... --port 8001; "
        "CUDA_VISIBLE_DEVICES=6,7 VLLM_NIXL_SIDE_CHANNEL_PORT=5606 ... --port 8003"
    )
    sglang = pool_gpus(r, "sglang")
    assert sglang["prefill"] == (
        "CUDA_VISIBLE_DEVICES=0,1 ... --port 30000 --disaggregation-bootstrap-port 8998; "
        "CUDA_VISIBLE_DEVICES=2,3 ... --port 30002 --disaggregation-bootstrap-port 8999"
    )
    assert "bootstrap" not in sglang["decode"]
    for pools in (vllm, sglang):
        found = [int(p) for p in re.findall(r"(?:--port |PORT=|bootstrap-port )(\d+)", str(pools))]
        assert len(found) == len(set(found)) >= 4, found


def test_a_workflow_plans_launch_states_its_capacity_in_workflows(tmp_path: Path) -> None:
    """A workflow plan's capacity is workflows per second (its rows say `capacity_unit`), but
    the launch scripts' header called 5.35 workflows/s "5.35 req/s per replica"."""
    spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9)
    spec = replace_spec(spec, workflows="text2sql")
    result = _spec_result(spec, {**row(tp=1), "capacity_unit": "workflows/s"})
    files = write_exports(result, tmp_path)
    for name in ("launch_vllm", "launch_sglang", "launch_trtllm"):
        text = files[name].read_text()
        assert "capacity 19.00 workflows/s per replica" in text and "req/s" not in text


def test_the_online_quantisation_note_follows_the_engine_launched(tmp_path: Path) -> None:
    """When no candidate of an engine met the SLO, its script runs the pick's settings; the
    fp8 note followed the pick's engine, not the script's: with a TensorRT-LLM pick the vLLM
    and SGLang scripts said to load a ModelOpt checkpoint beside their own --quantization fp8,
    and with a vLLM pick the TensorRT-LLM script loaded the 16-bit checkpoint unwarned."""
    spec = PlanSpec(LLAMA, WorkloadSpec("azure_conv", 100), Slo(2.0, 0.1), 0.9)
    for pick in ("trtllm", "vllm"):
        r = row(tp=1, engine=pick, weight_dtype="fp8")
        files = write_exports(_spec_result(spec, r), tmp_path / pick)
        for engine in ("vllm", "sglang"):
            text = files[f"launch_{engine}"].read_text()
            assert "does not quantise online" not in text and "--quantization fp8" in text
        assert "does not quantise online" in files["launch_trtllm"].read_text()
    assert launch_notes(row(tp=1, engine="vllm", weight_dtype="fp8"), LLAMA, "trtllm")
