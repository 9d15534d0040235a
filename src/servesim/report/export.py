"""Launch a plan's winner for real: vLLM, SGLang and TensorRT-LLM commands and a Kubernetes
Deployment.

Each function takes a result row (or anything with the Candidate fields) and the model name the
engine should load. Flags are the engines' own: vLLM's `vllm serve` engine arguments, SGLang's
`sglang.launch_server` server arguments and TensorRT-LLM's `trtllm-serve` options with an
`--extra_llm_api_options` YAML (LlmArgs: KV-cache dtype and memory fraction, chunked prefill,
the disaggregated KV transceiver). vLLM and SGLang quantise fp8 weights online from a 16-bit
checkpoint; any other change of weight format (and any at all for TensorRT-LLM, which loads
ModelOpt-quantised checkpoints) needs a checkpoint already in that format, which `launch_notes`
says. A candidate planned with speculative decoding launches it too (`speculative_args`): vLLM's
`--speculative-config`, SGLang's `--speculative-*` arguments, TensorRT-LLM's
`speculative_config`; what a flag cannot say (a draft tree where the engine runs chains, a draft
model the plan did not name) `speculative_notes` says.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from servesim.errors import ServesimError
from servesim.spec.devices import Device, catalog
from servesim.spec.dtypes import canonical
from servesim.spec.engine_profile import get_engine
from servesim.spec.memory import engine_memory
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.release import version_key

if TYPE_CHECKING:
    from servesim.planner.plan import PlanResult

VLLM_PORT = 8000
SGLANG_PORT = 30000
TRTLLM_PORT = 8000
TRTLLM_OPTIONS = "/tmp/servesim_llm_api_options.yml"  # where the launch writes the YAML


NIXL_SIDE_CHANNEL_PORT = 5600  # vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT default (+ each TP rank)
SGLANG_BOOTSTRAP_PORT = 8998  # SGLang's --disaggregation-bootstrap-port default (prefill)


def port_of(engine: str, phase: str | None = None, replica: int = 0) -> int:
    """The port a launch serves on: the engine's default, one above it for a disaggregated
    decode pool, and two more for each further replica of a pool, so the replicas of the two
    pools of one node do not collide (prefill base + 2i, decode base + 2i + 1)."""
    base = {"sglang": SGLANG_PORT, "trtllm": TRTLLM_PORT}.get(engine, VLLM_PORT)
    return base + (1 if phase == "decode" else 0) + 2 * replica


def trtllm_options_path(phase: str | None = None) -> str:
    """Where a TensorRT-LLM launch writes its options YAML (one file per pool of a node)."""
    return TRTLLM_OPTIONS.replace(".yml", f"_{phase}.yml") if phase else TRTLLM_OPTIONS


# (engine, GPU vendor) -> container image; the image's own entrypoint is replaced by `command`.
IMAGES: dict[tuple[str, str], str] = {
    ("vllm", "nvidia"): "vllm/vllm-openai:latest",
    ("sglang", "nvidia"): "lmsysorg/sglang:latest",
    ("vllm", "amd"): "rocm/vllm:latest",
    ("trtllm", "nvidia"): "nvcr.io/nvidia/tensorrt-llm/release:latest",
}
GPU_RESOURCE = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}
# The tag of an engine's own release image on NVIDIA GPUs (`--engine-version` pins a release);
# ROCm builds are tagged by ROCm and engine releases together, so they keep the default.
RELEASE_IMAGES: dict[str, str] = {
    "vllm": "vllm/vllm-openai:v{release}",
    "sglang": "lmsysorg/sglang:v{release}",
    "trtllm": "nvcr.io/nvidia/tensorrt-llm/release:{release}",
}


def release_image(engine: str, vendor: str, release: str | None) -> str | None:
    """The container image of `engine` at `release` (its default image without one)."""
    if release and vendor == "nvidia" and engine in RELEASE_IMAGES:
        return RELEASE_IMAGES[engine].format(release=release.removeprefix("v"))
    return IMAGES.get((engine, vendor))


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated mappings out in full (no `&id001` anchors) so the manifest reads plainly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def model_source(model_name: str) -> str:
    """What the engine loads: a Hugging Face id as given, or the folder of a local config.json."""
    p = Path(model_name)
    return str(p.parent) if p.suffix == ".json" else model_name


def _checkpoint_dtype(model_name: str) -> str:
    try:
        return load_model(model_name).weight_dtype
    except ServesimError:
        return "bf16"  # an unknown model: assume a 16-bit checkpoint


def _online_quantization(row: dict[str, Any], model_name: str) -> bool:
    """True when the weights run in fp8 from a 16-bit checkpoint (both engines quantise it)."""
    want = canonical(row.get("weight_dtype") or "bf16")
    return want == "fp8" and _checkpoint_dtype(model_name) in ("bf16", "fp16")


def launch_notes(row: dict[str, Any], model_name: str, engine: str | None = None) -> list[str]:
    """Caveats a launch command cannot express: a weight format the checkpoint does not have.
    `engine` is the engine launched (default: the row's), which may run settings planned with
    another engine's scheduler; whether it quantises online is its own."""
    engine = engine or str(row.get("engine") or "vllm")
    want = canonical(row.get("weight_dtype") or "bf16")
    have = _checkpoint_dtype(model_name)
    if want == have or {want, have} <= {"bf16", "fp16"}:
        return []
    if _online_quantization(row, model_name):
        if engine != "trtllm":
            return []
        return [
            f"weights in {want}: TensorRT-LLM does not quantise online; load an {want} "
            f"checkpoint of {model_name} (NVIDIA ModelOpt makes one from the 16-bit weights)"
        ]
    return [
        f"weights in {want}: load a {want} checkpoint of the model (the {model_name} "
        f"checkpoint is {have}); the engines read its format from its config"
    ]


def _mem_fraction(row: dict[str, Any]) -> float:
    """The memory fraction the simulation used (`engine_memory`: SGLang's rule gives one per
    device and layout), written out so the launch holds what was simulated."""
    engine = get_engine(str(row.get("engine") or "vllm"))
    if not engine.mem_fraction_rule:
        return engine.mem_util
    try:
        device = catalog().get(str(row.get("device") or ""))
    except ServesimError:  # a device from a user file: SGLang computes its own at launch
        return engine.mem_util
    par = Parallel(tp=int(row["tp"]), pp=int(row.get("pp") or 1))
    return engine_memory(engine, device, par)["mem_util"]


# The plan's speculative method (`PlanSpec.speculative`) in each engine's words: vLLM's
# `speculative_config.method`, SGLang's `--speculative-algorithm` (NEXTN is its name for a
# checkpoint's own MTP layers) and TensorRT-LLM's `speculative_config.decoding_type`.
VLLM_SPEC_METHODS = {"mtp": "mtp", "eagle": "eagle", "draft": "draft_model"}
# vLLM before 0.11.0 named MTP drafting per model family (PR #25232 unified them as "mtp")
VLLM_UNIFIED_MTP = (0, 11, 0)
VLLM_FAMILY_MTP = {
    "deepseek_v3": "deepseek_mtp",
    "deepseek_v32": "deepseek_mtp",
    "kimi_k2": "deepseek_mtp",
    "qwen3_next": "qwen3_next_mtp",
    "glm4_moe": "glm4_moe_mtp",
    "mimo": "mimo_mtp",
}
SGLANG_SPEC_ALGORITHMS = {"mtp": "NEXTN", "eagle": "EAGLE", "draft": "STANDALONE"}
TRTLLM_DECODING_TYPES = {"mtp": "MTP", "eagle": "Eagle", "draft": "DraftTarget"}
DRAFT_PLACEHOLDER = "<draft-model>"  # what a launch names when the plan gave no draft model


def _model_type(model_name: str) -> str:
    """config.json's model_type of the model launched ("" when it does not load)."""
    try:
        return load_model(model_name).model_type
    except ServesimError:
        return ""


def _speculation(row: dict[str, Any]) -> tuple[str, int, int] | None:
    """(method, draft tokens a step, tree width) of a row planned with speculative decoding."""
    k = int(row.get("num_draft_tokens") or 0)
    if k <= 0:
        return None
    width = max(1, int(row.get("spec_tree_width") or 1))
    return str(row.get("speculative") or "mtp"), k, width


def _draft_source(row: dict[str, Any]) -> str:
    draft = row.get("draft_model")
    return model_source(str(draft)) if draft else DRAFT_PLACEHOLDER


def _vllm_method(method: str, row: dict[str, Any], model_type: str) -> str:
    """vLLM's `method` for a drafter: a release before 0.11.0 (the row's `engine_version`)
    names MTP by the model family, when servesim knows the family's name."""
    release = str(row.get("engine_version") or "")
    if method == "mtp" and release and (0,) < version_key(release) < VLLM_UNIFIED_MTP:
        return VLLM_FAMILY_MTP.get(model_type, "mtp")
    return VLLM_SPEC_METHODS[method]


def speculative_args(engine: str, row: dict[str, Any], model_type: str = "") -> list[str]:
    """The command-line arguments that run the row's speculative decoding (vLLM, SGLang; none
    for TensorRT-LLM, whose settings go in its options YAML: `trtllm_options`); `model_type`
    (config.json's) names vLLM's MTP method in releases before 0.11.0."""
    spec = _speculation(row)
    if spec is None or engine == "trtllm":
        return []
    method, k, width = spec
    if engine == "vllm":
        name = _vllm_method(method, row, model_type)
        cfg: dict[str, Any] = {"method": name, "num_speculative_tokens": k}
        if method != "mtp":
            cfg["model"] = _draft_source(row)
        return ["--speculative-config", json.dumps(cfg, separators=(",", ":"))]
    argv = [
        "--speculative-algorithm",
        SGLANG_SPEC_ALGORITHMS[method],
        "--speculative-num-steps",
        str(k),
        "--speculative-eagle-topk",
        str(width),
        "--speculative-num-draft-tokens",
        str(1 + k * width),  # every node of the tree is verified
    ]
    if method != "mtp":
        argv += ["--speculative-draft-model-path", _draft_source(row)]
    return argv


def speculative_notes(engine: str, row: dict[str, Any]) -> list[str]:
    """What the speculative launch cannot say with its flags."""
    spec = _speculation(row)
    if spec is None:
        return []
    method, k, width = spec
    notes = []
    if method != "mtp" and not row.get("draft_model"):
        notes.append(
            f"speculative {method}: replace {DRAFT_PLACEHOLDER} with the draft model to run "
            "(the plan was given none; its --draft-model writes it here)"
        )
    if row.get("mirror_device"):
        notes.append(
            f"the plan drafts on separate {row['mirror_device']} devices (Mirror-SD); {engine} "
            "runs the draft on the target's own GPUs, so the verify steps take longer than planned"
        )
    if width > 1 and engine != "sglang":
        notes.append(
            f"the plan drafts a tree {width} wide; {engine} is launched with a chain of {k} "
            "draft tokens, which accepts fewer tokens a step than planned"
        )
    return notes


# Disaggregated serving: vLLM's NIXL KV connector (a proxy routes prefill then decode) and
# SGLang's --disaggregation-mode with its transfer backend.
VLLM_KV_TRANSFER = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'


def phases(row: dict[str, Any]) -> list[tuple[str | None, dict[str, Any], int]]:
    """(phase, row for that pool, replicas per unit): one entry, or prefill and decode pools."""
    if row.get("mode") != "disaggregated":
        return [(None, row, 1)]
    return [
        ("prefill", {**row, "tp": row["prefill_tp"], "pp": 1}, int(row["prefill_replicas"])),
        ("decode", {**row, "tp": row["decode_tp"], "pp": 1}, int(row["decode_replicas"])),
    ]


def _vllm_argv(
    row: dict[str, Any], model_name: str, max_model_len: int | None, phase: str | None = None
) -> list[str]:
    tokens = int(row["max_num_batched_tokens"])
    chunked = bool(row["chunked_prefill"])
    if not chunked and max_model_len is None:
        max_model_len = tokens  # unchunked prefill needs the whole prompt in one step's budget
    argv = [
        "vllm",
        "serve",
        model_source(model_name),
        "--tensor-parallel-size",
        str(int(row["tp"])),
        "--pipeline-parallel-size",
        str(int(row.get("pp") or 1)),
        "--max-num-seqs",
        str(int(row["max_num_seqs"])),
        "--max-num-batched-tokens",
        str(tokens if chunked else max(tokens, int(max_model_len or 0))),
        "--enable-chunked-prefill" if chunked else "--no-enable-chunked-prefill",
        "--gpu-memory-utilization",
        f"{_mem_fraction(row):g}",
    ]
    if max_model_len:
        argv += ["--max-model-len", str(int(max_model_len))]
    if _online_quantization(row, model_name):
        argv += ["--quantization", "fp8"]
    if canonical(row.get("kv_dtype") or "bf16") == "fp8":
        argv += ["--kv-cache-dtype", "fp8"]
    if phase:
        argv += ["--kv-transfer-config", VLLM_KV_TRANSFER]
    argv += speculative_args("vllm", row, _model_type(model_name))
    return [*argv, "--host", "0.0.0.0", "--port", str(port_of("vllm", phase))]


def _sglang_argv(
    row: dict[str, Any], model_name: str, max_model_len: int | None, phase: str | None = None
) -> list[str]:
    tokens = int(row["max_num_batched_tokens"])
    argv = [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        model_source(model_name),
        "--tp-size",
        str(int(row["tp"])),
        "--pp-size",
        str(int(row.get("pp") or 1)),
        "--max-running-requests",
        str(int(row["max_num_seqs"])),
        "--chunked-prefill-size",
        str(tokens) if row["chunked_prefill"] else "-1",
        "--max-prefill-tokens",
        str(tokens),
        "--mem-fraction-static",
        f"{_mem_fraction(row):g}",
    ]
    if max_model_len:
        argv += ["--context-length", str(int(max_model_len))]
    if _online_quantization(row, model_name):
        argv += ["--quantization", "fp8"]
    if canonical(row.get("kv_dtype") or "bf16") == "fp8":
        argv += ["--kv-cache-dtype", "fp8_e4m3"]
    if phase:
        argv += ["--disaggregation-mode", phase, "--disaggregation-transfer-backend", "nixl"]
    argv += speculative_args("sglang", row)
    return [*argv, "--host", "0.0.0.0", "--port", str(port_of("sglang", phase))]


def trtllm_options(row: dict[str, Any], phase: str | None = None) -> dict[str, Any]:
    """The `--extra_llm_api_options` YAML (TensorRT-LLM LlmArgs): the KV cache's share of the
    memory left after the weights and its dtype, chunked prefill, speculative decoding, and for
    a disaggregated pool the KV-cache transceiver."""
    # TensorRT-LLM's fraction is of the memory left after weights and activations (its profile's
    # meaning), whatever scheduler the row was planned with
    kv: dict[str, Any] = {"free_gpu_memory_fraction": get_engine("trtllm").mem_util}
    if canonical(row.get("kv_dtype") or "bf16") == "fp8":
        kv["dtype"] = "fp8"
    doc: dict[str, Any] = {
        "kv_cache_config": kv,
        "enable_chunked_prefill": bool(row["chunked_prefill"]),
        # Decode batches graph-captured as simulated (every size up to the profile's
        # `cuda_graph_max_seqs`): TensorRT-LLM's default captures 1-32, 64 and 128 only, with
        # no padding (llm_args.py `CudaGraphConfig`), so other batches would run eager.
        "cuda_graph_config": {
            "enable_padding": True,
            "max_batch_size": min(
                get_engine("trtllm").cuda_graph_max_seqs, int(row["max_num_seqs"])
            ),
        },
    }
    if phase:
        doc["cache_transceiver_config"] = {"backend": "DEFAULT"}
    spec = _speculation(row)
    if spec is not None:
        method, k, _ = spec
        sc: dict[str, Any] = {"decoding_type": TRTLLM_DECODING_TYPES[method]}
        if method == "mtp":
            sc["num_nextn_predict_layers"] = k
        else:
            sc["max_draft_len"] = k
            sc["speculative_model_dir"] = _draft_source(row)
        doc["speculative_config"] = sc
    return doc


def _trtllm_argv(
    row: dict[str, Any], model_name: str, max_model_len: int | None, phase: str | None = None
) -> list[str]:
    """A disaggregated pool differs in its options YAML (`trtllm_options`) and its port."""
    tokens = int(row["max_num_batched_tokens"])
    if not row["chunked_prefill"] and max_model_len:
        tokens = max(tokens, int(max_model_len))  # a whole prompt in one step's budget
    argv = [
        "trtllm-serve",
        model_source(model_name),
        "--backend",
        "pytorch",
        "--tp_size",
        str(int(row["tp"])),
        "--pp_size",
        str(int(row.get("pp") or 1)),
        "--max_batch_size",
        str(int(row["max_num_seqs"])),
        "--max_num_tokens",
        str(tokens),
    ]
    if max_model_len:
        argv += ["--max_seq_len", str(int(max_model_len))]
    argv += ["--extra_llm_api_options", trtllm_options_path(phase)]
    return [*argv, "--host", "0.0.0.0", "--port", str(port_of("trtllm", phase))]


def trtllm_command(row: dict[str, Any], model_name: str, max_model_len: int | None = None) -> str:
    """`trtllm-serve` with the candidate's settings (its options YAML: `trtllm_options`)."""
    return shlex.join(_trtllm_argv(row, model_name, max_model_len))


def vllm_command(row: dict[str, Any], model_name: str, max_model_len: int | None = None) -> str:
    """`vllm serve` with the candidate's parallelism, batching, formats and memory fraction."""
    return shlex.join(_vllm_argv(row, model_name, max_model_len))


def sglang_command(row: dict[str, Any], model_name: str, max_model_len: int | None = None) -> str:
    """`python3 -m sglang.launch_server` with the candidate's settings."""
    return shlex.join(_sglang_argv(row, model_name, max_model_len))


def _argv(
    engine: str,
    row: dict[str, Any],
    model_name: str,
    max_len: int | None,
    phase: str | None = None,
) -> list[str]:
    if engine == "vllm":
        return _vllm_argv(row, model_name, max_len, phase)
    if engine == "sglang":
        return _sglang_argv(row, model_name, max_len, phase)
    if engine == "trtllm":
        return _trtllm_argv(row, model_name, max_len, phase)
    raise ServesimError(f"No launch command for engine {engine!r}; use vllm, sglang or trtllm.")


def _prelude(engine: str, row: dict[str, Any], phase: str | None) -> str:
    """Shell lines a launch needs before its command: TensorRT-LLM's options YAML."""
    if engine != "trtllm":
        return ""
    body = yaml.dump(trtllm_options(row, phase), Dumper=_PlainDumper, sort_keys=False)
    return f"cat > {trtllm_options_path(phase)} <<'YAML'\n{body}YAML\n"


def gpu_product_label(device: Device) -> str:
    """NVIDIA GPU feature discovery's `nvidia.com/gpu.product` value (nvidia-smi name, dashed)."""
    names = [a for a in device.aliases if a.startswith(("NVIDIA ", "Tesla "))]
    return names[0].replace(" ", "-") if names else device.name


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:52].strip("-") or "model"


def k8s_manifest(
    row: dict[str, Any],
    model_name: str,
    replicas: int,
    engine: str = "vllm",
    max_model_len: int | None = None,
    devices_file: str | None = None,
    image: str | None = None,
    phase: str | None = None,
) -> str:
    """A Deployment of `replicas` pods, each one replica of the candidate on its own GPUs
    (for a disaggregated candidate, of its `phase` pool: prefill or decode)."""
    engine = get_engine(engine).name
    device = catalog(devices_file).get(str(row["device"]))
    if device.kind != "gpu" or device.vendor not in GPU_RESOURCE:
        raise ServesimError(
            f"No Kubernetes manifest for {device.name} ({device.vendor} {device.kind}); "
            "servesim writes them for NVIDIA and AMD GPUs."
        )
    image = image or release_image(engine, device.vendor, row.get("engine_version"))
    if image is None:
        raise ServesimError(
            f"No default {engine} image for {device.vendor} GPUs; pass image= a build for them."
        )
    argv = _argv(engine, row, model_name, max_model_len, phase)
    split = 3 if engine == "sglang" else 2
    port = port_of(engine, phase)
    command, args = argv[:split], argv[split:]
    if engine == "trtllm":  # the options YAML is written first, in the container's shell
        command = ["/bin/sh", "-c"]
        args = [_prelude(engine, row, phase) + "exec " + shlex.join(argv)]
    gpus = int(row["tp"]) * int(row.get("pp") or 1)
    name = _slug(f"{Path(model_source(model_name)).name}-{engine}" + (f"-{phase}" if phase else ""))
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "servesim"}
    if device.vendor == "nvidia":
        node_selector = {"nvidia.com/gpu.product": gpu_product_label(device)}
    else:
        node_selector = {"servesim/accelerator": device.name}  # label your nodes with it
    probe = {"httpGet": {"path": "/health", "port": port}}
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"servesim/candidate": str(row.get("label") or "")},
        },
        "spec": {
            "replicas": int(replicas),
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": node_selector,
                    "containers": [
                        {
                            "name": engine,
                            "image": image,
                            "command": command,
                            "args": args,
                            "ports": [{"name": "http", "containerPort": port}],
                            "env": [
                                {
                                    "name": "HF_TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {
                                            "name": "hf-token",
                                            "key": "token",
                                            "optional": True,
                                        }
                                    },
                                }
                            ],
                            "resources": {
                                "limits": {GPU_RESOURCE[device.vendor]: gpus},
                                "requests": {GPU_RESOURCE[device.vendor]: gpus},
                            },
                            "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 180},
                            "readinessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
                            "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 5},
                            "volumeMounts": [
                                {"name": "shm", "mountPath": "/dev/shm"},
                                {"name": "hf-cache", "mountPath": "/root/.cache/huggingface"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
                        {"name": "hf-cache", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    header = [
        f"# servesim: {row.get('label', '')}",
        f"# {replicas} replica(s) x {gpus} {device.name} GPU(s) = {replicas * gpus} GPUs",
    ]
    if gpus > device.max_devices_per_node:
        header.append(
            f"# note: {gpus} GPUs per replica exceed a {device.name} node "
            f"({device.max_devices_per_node}); run it multi-node (e.g. LeaderWorkerSet)"
        )
    notes = [*launch_notes(row, model_name, engine), *speculative_notes(engine, row)]
    header += [f"# note: {n}" for n in notes]
    body = yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False, width=100)
    return "\n".join(header) + "\n" + body


def _script(argv: list[str], comments: list[str], prelude: str = "") -> str:
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", *[f"# {c}" for c in comments]]
    parts: list[str] = []
    for a in argv:
        if a.startswith("--") or not parts:
            parts.append(shlex.quote(a))
        else:
            parts[-1] += " " + shlex.quote(a)
    head = "\n".join(lines) + "\n" + prelude
    return head + "exec " + " \\\n    ".join(parts) + "\n"


def _row_for(result: PlanResult) -> tuple[dict[str, Any] | None, int]:
    """The deployment to export: the cheapest verified sizing when there is one, else the winner."""
    sizing = result.cheapest or result.fewest_devices
    if sizing is not None:
        row = _row_of(result, sizing.candidate.key())
        if row is not None:
            return row, sizing.replicas
    return result.winner, 1


def _row_of(result: PlanResult, key: str) -> dict[str, Any] | None:
    return next((r for r in result.rows if r.get("key") == key), None)


LAUNCH_ENGINES = ("vllm", "sglang", "trtllm")


def launch_plan(result: PlanResult, engine: str) -> tuple[dict[str, Any] | None, int, str]:
    """(row, replicas, what it was planned as) for `engine`'s launch script.

    Each engine runs settings planned with its own scheduler: its lowest-$/h verified fleet at
    the plan's rate, else its best-ranked feasible candidate. None when no candidate of that
    engine met the SLO.
    """
    rate = result.spec.rate_per_s
    sizing = result.cheapest_by_engine.get(engine)
    if sizing is None:  # a result without per-engine sizings: the overall ones, if they fit
        sizing = next(
            (
                s
                for s in (result.cheapest, result.fewest_devices)
                if s is not None and s.candidate.engine == engine
            ),
            None,
        )
    if sizing is not None:
        row = _row_of(result, sizing.candidate.key())
        if row is not None:
            return (
                row,
                sizing.replicas,
                f"the lowest-$/h {engine} deployment verified at {rate:g} req/s "
                f"({sizing.attainment:.1%} steady-state SLO attainment)",
            )
    ranked = [r for r in result.feasible if r.get("engine") == engine]
    if not ranked:
        return None, 0, ""
    row = ranked[0]
    if rate:
        n = max(1, math.ceil(rate / row["capacity_req_per_s"]))
        return row, n, f"the best {engine} candidate; {n} replica(s) by capacity, not verified"
    return row, 1, f"the best {engine} candidate by goodput per $/h"


def max_model_len_for(result: PlanResult, row: dict[str, Any]) -> int:
    """The planned workload's longest request rounded up to 1024, within the replica's KV cache."""
    longest = result.spec.longest_tokens()
    cap = int(row.get("kv_tokens") or 0) // int(row.get("pp") or 1)
    want = int(math.ceil(longest / 1024) * 1024)
    return min(want, cap) if cap >= longest else want


def write_exports(result: PlanResult, out_dir: str | Path) -> dict[str, Path]:
    """Write launch_vllm.sh, launch_sglang.sh, launch_trtllm.sh and k8s_deployment.yaml for the
    plan's pick.

    Each launch script carries the settings planned for its own engine (`launch_plan`); the
    Kubernetes manifest runs the overall pick (cheapest verified fleet, else the winner). When
    no candidate of an engine met the SLO, its script runs the pick's settings and says so.
    """
    pick, pick_replicas = _row_for(result)
    if pick is None:
        return {}
    pick = _with_speculation(result, pick)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = result.spec.model
    files: dict[str, Path] = {}
    for engine in LAUNCH_ENGINES:
        row, replicas, why = launch_plan(result, engine)
        if row is not None:
            row = _with_speculation(result, row)
        if row is None:
            row, replicas = pick, pick_replicas
            why = (
                f"no {engine} candidate met the SLO: these are the settings planned with the "
                f"{pick.get('engine')} scheduler ({pick.get('label', '')})"
            )
        comments = _comments(result, row, replicas, engine, why)
        if row.get("key") != pick.get("key"):
            scripts = [
                f"launch_{pick.get('engine')}{f'_{phase}' if phase else ''}.sh, "
                for phase, _, _ in phases(pick)
                if pick.get("engine") in LAUNCH_ENGINES
            ]
            comments.append(
                f"the overall pick is {pick.get('label', '')} ({pick_replicas} replica(s)); "
                f"see {''.join(scripts)}k8s_deployment.yaml"
            )
        max_len = max_model_len_for(result, row)
        placement = pool_gpus(row, engine)
        for phase, pool_row, n in phases(row):
            suffix = f"_{phase}" if phase else ""
            path = out / f"launch_{engine}{suffix}.sh"
            extra = [f"{phase} pool: {n * replicas} replica(s) of this command"] if phase else []
            if phase:
                extra.append(
                    "on one node with the other pool, start each replica with its own GPUs "
                    f"and ports (the command below has the first's port): {placement[phase]}"
                )
            argv = _argv(engine, pool_row, model, max_len, phase)
            path.write_text(_script(argv, comments + extra, _prelude(engine, pool_row, phase)))
            path.chmod(0o755)
            files[f"launch_{engine}{suffix}"] = path
    engine = str(pick.get("engine")) if pick.get("engine") in LAUNCH_ENGINES else "vllm"
    max_len = max_model_len_for(result, pick)
    try:
        text = "---\n".join(
            k8s_manifest(
                pool_row,
                model,
                pick_replicas * n,
                engine,
                max_len,
                devices_file=result.spec.devices_file,
                phase=phase,
            )
            for phase, pool_row, n in phases(pick)
        )
    except ServesimError:
        return files  # no manifest for this device kind; the launch scripts still apply
    path = out / "k8s_deployment.yaml"
    path.write_text(text)
    files["k8s"] = path
    return files


def pool_gpus(row: dict[str, Any], engine: str = "vllm") -> dict[str, str]:
    """Per pool of a disaggregated unit, what each replica sets when the unit shares one node:
    its GPUs (`CUDA_VISIBLE_DEVICES`: the prefill replicas first, then the decode ones), its
    serving port (`port_of`) and the engine's KV-transfer port, so no two instances start on
    the same devices or listen on the same port: vLLM's NIXL side channel (each TP rank
    listens at the base plus its rank, so a replica's base is the default plus its first GPU)
    and SGLang's prefill bootstrap server. TensorRT-LLM's transceiver picks its own ports."""
    out: dict[str, str] = {}
    first = 0
    for phase, pool_row, n in phases(row):
        if phase is None:
            continue
        tp = int(pool_row["tp"])
        sets = []
        for i in range(n):
            ids = ",".join(str(g) for g in range(first, first + tp))
            env = f"CUDA_VISIBLE_DEVICES={ids}"
            flags = f"--port {port_of(engine, phase, i)}"
            if engine == "vllm":
                env += f" VLLM_NIXL_SIDE_CHANNEL_PORT={NIXL_SIDE_CHANNEL_PORT + first}"
            elif engine == "sglang" and phase == "prefill":
                flags += f" --disaggregation-bootstrap-port {SGLANG_BOOTSTRAP_PORT + i}"
            sets.append(f"{env} ... {flags}")
            first += tp
        out[phase] = "; ".join(sets)
    return out


def _with_speculation(result: PlanResult, row: dict[str, Any]) -> dict[str, Any]:
    """The row with the plan's speculative method and draft model and its engine's stated
    release, which its launch needs and the row (one candidate's answer) does not carry."""
    spec = result.spec
    return {
        **row,
        "speculative": spec.speculative,
        "draft_model": spec.draft_model,
        "mirror_device": spec.mirror_device,
        "engine_version": dict(spec.engine_versions).get(str(row.get("engine"))),
    }


def _comments(
    result: PlanResult, row: dict[str, Any], replicas: int, engine: str, why: str
) -> list[str]:
    """The header of one launch script: what it runs and what it was planned for."""
    model = result.spec.model
    cap = row.get("capacity_req_per_s") or 0.0
    unit = row.get("capacity_unit") or "req/s"  # a workflow plan's capacity is workflows/s
    out = [
        f"servesim plan for {model}: {row.get('label', '')}",
        f"planned for {engine}: {why}",
        f"capacity {cap:.2f} {unit} per replica; run {replicas} replica(s) behind a load balancer",
        f"--max-model-len/--context-length {max_model_len_for(result, row)}: the planned "
        "workload's longest request",
        *[f"note: {n}" for n in launch_notes(row, model, engine)],
        *[f"note: {n}" for n in speculative_notes(engine, row)],
    ]
    release = row.get("engine_version") if row.get("engine") == engine else None
    if release:
        out.append(f"priced at {engine} {release} (--engine-version): run it with that release")
    if len(phases(row)) > 1:
        out.append(
            "disaggregated: start the prefill and decode pools below and route each request to "
            "a prefill server, then a decode server (vLLM's disaggregated-serving proxy, "
            "SGLang's mini load balancer with --prefill/--decode, or `trtllm-serve "
            "disaggregated -c` with the context and generation servers' URLs)"
        )
    return out
