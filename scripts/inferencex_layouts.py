"""Regenerate data/inferencex/disagg_layouts.csv: InferenceX's disaggregated deployments.

InferenceX (github.com/SemiAnalysisAI/InferenceX, Apache-2.0) lists, in
`.github/configs/nvidia-master.yaml` (later `configs/nvidia-master.yaml`), every benchmarked
deployment: per model × GPU × framework × precision × ISL/OSL a search space whose disaggregated
items give prefill and decode `num-worker`, `tp`, `ep`, `dp-attn`, the concurrency list, the
container image and the srt-slurm recipe (`CONFIG_FILE=recipes/...`) that holds the engines'
batch limits and the client counts its benchmark really runs. This script
reads the config as it stood on each date benchmark rows were measured (the last commit touching
it up to that day) and the recipes from a github.com/NVIDIA/srt-slurm checkout at the last
commit up to the same day, and writes one CSV row per disaggregated search-space item, with
the measured days it was in effect and, for each of those days, the InferenceX and srt-slurm
commits read (`-`: no usable recipe). A recipe absent from
srt-slurm on that day is read at the commit that first added it.

    python scripts/inferencex_layouts.py INFERENCEX_GIT SRT_SLURM_GIT [--dates D ...] [--out F]

Both paths are git directories (a bare clone works): files are read with `git show`, so no
checkout is needed. Without `--dates`, every day from InferenceX's first DeepSeek run
(FIRST_DAY) to the last day of the benchmark source (LAST_DAY) is read, so a row measured on
any of them finds its config, not only rows of the days the bundled samples happen to hold;
consecutive days on which an item stood unchanged are written as one range `D1..D2`, with
the commits of its first day.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import fnmatch
import functools
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "inferencex" / "disagg_layouts.csv"
CONFIG_PATHS = (".github/configs/nvidia-master.yaml", "configs/nvidia-master.yaml")
# The span of days the benchmark source's InferenceX rows can come from: InferenceX's first
# DeepSeek-R1 run (MODELS.md) to the database dump the source was exported from
# (`db-dump/2026-04-27` in the rows' provenance).
FIRST_DAY, LAST_DAY = "2025-08-13", "2026-04-27"
# NVIDIA-config model prefixes (InferenceX MODELS.md) whose architectures servesim bundles.
MODELS = ("dsr1", "qwen3.5", "kimik2.5", "minimaxm2.5", "gptoss", "glm5")
FIELDS = (
    "config_key",
    "model_prefix",
    "gpu",
    "framework",
    "image",
    "precision",
    "isl",
    "osl",
    "spec_decoding",
    "num_draft_tokens",
    "prefill_workers",
    "prefill_tp",
    "prefill_ep",
    "prefill_dp_attn",
    "prefill_max_batch",
    "decode_workers",
    "decode_tp",
    "decode_ep",
    "decode_dp_attn",
    "decode_max_batch",
    "prefill_settings",
    "decode_settings",
    "concurrencies",
    "recipe_concurrencies",
    "recipe",
    "source_file",
    "days_in_effect",
    "source_commits",
    "recipe_commits",
)
# Fields that say when a layout was in effect: merged over days, not part of its identity.
WHEN = ("days_in_effect", "source_commits", "recipe_commits")


@functools.cache
def git(gitdir: str, *args: str) -> str:
    """stdout of a git command in `gitdir`, '' when it fails (a path absent at a commit);
    cached, as every day of a span reads mostly the same commits."""
    res = subprocess.run(["git", "--git-dir", gitdir, *args], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


@functools.cache
def tree(gitdir: str, commit: str) -> dict[str, str]:
    """Every file of a commit by path → blob hash (one `git ls-tree` per commit)."""
    out = git(gitdir, "ls-tree", "-r", commit)
    return {line.split("\t", 1)[1]: line.split()[2] for line in out.splitlines() if "\t" in line}


def file_at(gitdir: str, commit: str, path: str) -> str:
    """A file's text at a commit ('' if absent), read once per distinct content."""
    blob = tree(gitdir, commit).get(path)
    return git(gitdir, "cat-file", "blob", blob) if blob else ""


@functools.cache
def parsed(text: str) -> dict:
    """A YAML document as a dict, parsed once per distinct text (callers only read it)."""
    doc = yaml.safe_load(text) if text else None
    return doc if isinstance(doc, dict) else {}


def commit_at(gitdir: str, day: str, path: str = "") -> tuple[str, str]:
    """(hash, ISO date) of the last commit up to the end of `day` (touching `path` if given)."""
    args = ["log", "-1", f"--until={day}T23:59:59Z", "--format=%H %cI"]
    out = git(gitdir, *args, *(["--", path] if path else [])).split()
    return (out[0], out[1][:10]) if out else ("", "")


@functools.cache
def first_version(gitdir: str, path: str) -> str:
    """The commit that first added `path` on any branch ('' if never)."""
    out = git(gitdir, "log", "--all", "--diff-filter=A", "--format=%H", "--", path).split()
    return out[-1] if out else ""


# From March 2026 an srt-slurm recipe file may hold several variants: a `base` and
# `override_<name>` / `zip_override_<name>` sections that srtctl merges into it
# (src/srtctl/core/config.py, `generate_override_configs`): a dict merges key by key, a list
# or scalar replaces, a null deletes the key; a zip group's list values give its i-th variant
# their i-th element (one-element lists broadcast). InferenceX names one with
# `CONFIG_FILE=recipes/<file>.yaml:<selector>`: `override_x`, `zip_override_x[i]`, a whole
# zip group, `base` or a glob over the section names.


def _deep_merge(base: dict, override: dict) -> dict:
    """srtctl's `deep_merge`: `override` merged into a copy of `base`."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _list_lengths(d: dict) -> list[int]:
    """The length of every list-valued leaf of `d`."""
    out: list[int] = []
    for v in d.values():
        if isinstance(v, list):
            out.append(len(v))
        elif isinstance(v, dict):
            out.extend(_list_lengths(v))
    return out


def _zip_slice(d: dict, i: int) -> dict:
    """A zip section's variant `i`: each list leaf replaced by its i-th element."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, list):
            out[k] = v[0 if len(v) == 1 else i]
        elif isinstance(v, dict):
            out[k] = _zip_slice(v, i)
        else:
            out[k] = v
    return out


def _zip_variants(base: dict, section: dict) -> list[dict]:
    """Every variant of one zip section (none when its lists disagree in length)."""
    lengths = {n for n in _list_lengths(section) if n != 1}
    if len(lengths) > 1 or 0 in lengths:
        return []
    n = lengths.pop() if lengths else 1
    return [_deep_merge(base, _zip_slice(section, i)) for i in range(n)]


def recipe_variants(recipe_text: str, selector: str) -> list[dict]:
    """The recipes a file holds under `selector` ("" for all of a multi-variant file; a file
    without `base` is one recipe, named by no selector)."""
    doc = parsed(recipe_text)
    base = doc.get("base")
    if not isinstance(base, dict):
        return [] if selector else [doc]
    if selector == "base":
        return [base]
    m = re.fullmatch(r"(zip_override_[\w-]+)\[(\d+)\]", selector)
    if m:
        section = doc.get(m.group(1))
        found = _zip_variants(base, section) if isinstance(section, dict) else []
        i = int(m.group(2))
        return [found[i]] if i < len(found) else []
    out: list[dict] = []
    for key in sorted(k for k in doc if k.startswith(("override_", "zip_override_"))):
        if selector and not fnmatch.fnmatchcase(key, selector):
            continue
        section = doc[key]
        if not isinstance(section, dict):
            continue
        if key.startswith("zip_"):
            out.extend(_zip_variants(base, section))
        else:
            out.append(_deep_merge(base, section))
    return out


def recipe_for(recipe_text: str, selector: str, workers: tuple[object, object]) -> str:
    """The recipe `selector` names in a file whose (prefill, decode) worker counts are
    `workers`, as YAML text; "" when none is, or several are and differ."""
    found = [
        v
        for v in recipe_variants(recipe_text, selector)
        if (
            ((v.get("resources") or {}).get("prefill_workers")),
            ((v.get("resources") or {}).get("decode_workers")),
        )
        == workers
    ]
    unnamed = [{k: v for k, v in d.items() if k != "name"} for d in found]
    if not found or any(d != unnamed[0] for d in unnamed):
        return ""
    return yaml.safe_dump(found[0], sort_keys=False)


def recipe_batches(recipe_text: str) -> tuple[int | None, int | None]:
    """(prefill, decode) batch slots per attention-DP rank from an srt-slurm recipe.

    TensorRT-LLM's `max_batch_size` is per rank under attention DP; SGLang's
    `max-running-requests` is per server and split evenly over its `dp-size` ranks
    (scheduler: `max_running_requests // dp_size` with --enable-dp-attention); vLLM's
    `max-num-seqs` is per engine, and under `data-parallel-size` each rank runs one engine.
    """
    doc = parsed(recipe_text)
    backend = doc.get("backend") or {}
    out: list[int | None] = []
    for role in ("prefill", "decode"):
        trt = (backend.get("trtllm_config") or {}).get(role) or {}
        sgl = (backend.get("sglang_config") or {}).get(role) or {}
        vllm = (backend.get("vllm_config") or {}).get(role) or {}
        if trt.get("max_batch_size"):
            out.append(int(trt["max_batch_size"]))
        elif vllm.get("max-num-seqs"):
            out.append(int(vllm["max-num-seqs"]))
        elif sgl.get("max-running-requests"):
            # `--dp-size` is also spelt `--data-parallel-size` (server_args.py; recipes use both)
            size = sgl.get("dp-size") or sgl.get("data-parallel-size") or 1
            dp = int(size) if sgl.get("enable-dp-attention") else 1
            out.append(int(sgl["max-running-requests"]) // dp or None)  # < 1 a rank: unknown
        else:
            out.append(None)
    return out[0], out[1]


def recipe_draft_tokens(recipe_text: str) -> int | None:
    """Draft tokens per decode step of an srt-slurm recipe's decode workers (None: not said).

    TensorRT-LLM: `speculative_config` `num_nextn_predict_layers` (MTP draft length; newer
    recipes may say `max_draft_len`). SGLang: `speculative-num-steps`, the draft passes of its
    EAGLE/MTP worker; with `speculative-eagle-topk` 1 its `speculative-num-draft-tokens` is
    steps + 1, counting the verified token (sglang/srt/server_args.py). vLLM:
    `speculative-config`'s `num_speculative_tokens`.
    """
    doc = parsed(recipe_text)
    backend = doc.get("backend") or {}
    trt = ((backend.get("trtllm_config") or {}).get("decode") or {}).get("speculative_config")
    if trt:
        for key in ("num_nextn_predict_layers", "max_draft_len"):
            if trt.get(key):
                return int(trt[key])
    sgl = (backend.get("sglang_config") or {}).get("decode") or {}
    if sgl.get("speculative-num-steps"):
        return int(sgl["speculative-num-steps"])
    vllm = (backend.get("vllm_config") or {}).get("decode") or {}
    spec = vllm.get("speculative-config")
    if spec:  # vLLM: a JSON string (or mapping) with `num_speculative_tokens`
        spec = yaml.safe_load(spec) if isinstance(spec, str) else spec
        if isinstance(spec, dict) and spec.get("num_speculative_tokens"):
            return int(spec["num_speculative_tokens"])
    return None


# KV-cache formats as the engines spell them -> servesim's (absent or "auto": the checkpoint's).
KV_DTYPES = {"fp8": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "bf16": "bf16", "bfloat16": "bf16"}


# Engine flags whose values servesim reads as numbers, each in its engine's meaning: (flag,
# servesim's name). SGLang: fraction of the device, chunked-prefill size per server; vLLM:
# fraction of the device, batched tokens per engine (one per data-parallel rank).
SGLANG_FLAGS = (
    ("mem-fraction-static", "mem_fraction"),
    ("chunked-prefill-size", "token_budget"),
    ("cuda-graph-max-bs", "graph_max_bs"),
    ("scheduler-recv-interval", "recv_interval"),
    ("moe-dense-tp-size", "dense_tp"),
    ("max-total-tokens", "kv_tokens"),  # the KV pool's cap (per scheduler, i.e. per DP rank)
)
VLLM_FLAGS = (
    ("gpu-memory-utilization", "mem_fraction"),
    ("max-num-batched-tokens", "token_budget"),
    ("max-cudagraph-capture-size", "graph_max_bs"),
)


def _flag_settings(cfg: dict, flags: tuple[tuple[str, str], ...]) -> dict[str, object]:
    """A SGLang or vLLM pool's `flags` that are set to a positive number, its
    `kv-cache-dtype` (servesim's name), SGLang's `enable-flashinfer-allreduce-fusion` and the
    expert-parallel all-to-all backend (SGLang `moe-a2a-backend` or the older
    `enable-deepep-moe`, vLLM `all2all-backend`)."""
    out: dict[str, object] = {
        key: cfg[flag] for flag, key in flags if cfg.get(flag) is not None and float(cfg[flag]) > 0
    }
    dtype = KV_DTYPES.get(str(cfg.get("kv-cache-dtype", "")).lower())
    if dtype:
        out["kv_dtype"] = dtype
    if str(cfg.get("enable-flashinfer-allreduce-fusion", "")).lower() == "true":
        out["ar_fusion"] = "flashinfer"  # SGLang's all-reduce + residual + RMSNorm kernel
    # How expert-parallel tokens move: SGLang `moe-a2a-backend` (or its older
    # `enable-deepep-moe`), vLLM `all2all-backend`; absent or "none": the engine's default.
    a2a = str(cfg.get("moe-a2a-backend") or cfg.get("all2all-backend") or "").lower()
    if str(cfg.get("enable-deepep-moe", "")).lower() == "true":
        a2a = "deepep"
    if a2a and a2a != "none":
        out["a2a"] = a2a
    # SGLang's output head under attention DP: a whole copy per DP rank with
    # `enable-dp-lm-head`, else split over the whole TP group (`EngineProfile.lm_head_split`).
    if str(cfg.get("enable-dp-lm-head", "")).lower() == "true":
        out["lm_head"] = "attention_tp"
    if str(cfg.get("disable-overlap-schedule", "")).lower() == "true":
        out["overlap"] = "off"
    return out


def _sglang_settings(cfg: dict) -> dict[str, object]:
    """A SGLang pool's flags (`_flag_settings`) and, where it sets `enable-dp-attention` and its
    TP size, its attention-DP ranks: `dp-size` (or `data-parallel-size`) when true, else 1."""
    out = _flag_settings(cfg, SGLANG_FLAGS)
    if "enable-dp-attention" in cfg and (cfg.get("tp-size") or cfg.get("tensor-parallel-size")):
        on = str(cfg["enable-dp-attention"]).lower() == "true"
        out["attention_dp"] = (
            int(cfg.get("dp-size") or cfg.get("data-parallel-size") or 1) if on else 1
        )
    return out


def _trtllm_settings(cfg: dict) -> dict[str, object]:
    """TensorRT-LLM LLM-API options servesim models: `kv_cache_config` (free-memory fraction,
    dtype), `max_num_tokens` (per rank), `cuda_graph_config` (largest captured batch),
    attention-DP balancing (`attention_dp_config.enable_balance`, `timeout_iters`), the fused
    MoE's kernels (`moe_config.backend`: TRTLLM, CUTLASS, DEEPGEMM, WIDEEP, CUTEDSL) and the
    output head's split under attention DP (`enable_lm_head_tp_in_adp`)."""
    out: dict[str, object] = {}
    moe = cfg.get("moe_config") or {}
    if isinstance(moe, dict) and moe.get("backend"):
        out["moe_backend"] = str(moe["backend"]).lower()
    kv = cfg.get("kv_cache_config") or {}
    if kv.get("free_gpu_memory_fraction") is not None:
        out["mem_fraction"] = kv["free_gpu_memory_fraction"]
    if KV_DTYPES.get(str(kv.get("dtype", "")).lower()):
        out["kv_dtype"] = KV_DTYPES[str(kv["dtype"]).lower()]
    if kv.get("max_tokens"):  # the KV pool's cap, per rank
        out["kv_tokens"] = kv["max_tokens"]
    if cfg.get("max_num_tokens"):
        out["token_budget"] = cfg["max_num_tokens"]
    graphs = cfg.get("cuda_graph_config")
    if isinstance(graphs, dict):
        sizes = graphs.get("batch_sizes") or []
        top = graphs.get("max_batch_size") or (max(sizes) if sizes else None)
        if top:
            out["graph_max_bs"] = top
    # The output head split between attention-DP ranks (`EngineProfile.lm_head_split`).
    if str(cfg.get("enable_lm_head_tp_in_adp", "")).lower() == "true":
        out["lm_head"] = "adp_tp"
    # The overlap scheduler off (330 of 335 recipes' context servers: TensorRT-LLM refused
    # context-only requests with it on, `base_worker.py`, until PR #10755 in January 2026).
    if str(cfg.get("disable_overlap_scheduler", "")).lower() == "true":
        out["overlap"] = "off"
    # The serving loop's responses: every `stream_interval` steps, shared by
    # `num_postprocess_workers` processes (`EngineProfile.response_s`).
    if cfg.get("stream_interval"):
        out["stream_interval"] = int(cfg["stream_interval"])
    if cfg.get("num_postprocess_workers"):
        out["postprocess_workers"] = int(cfg["num_postprocess_workers"])
    # Where the recipe sets `enable_attention_dp` and the worker's ranks: attention DP over
    # every rank, or none.
    if "enable_attention_dp" in cfg and cfg.get("tensor_parallel_size"):
        on = str(cfg["enable_attention_dp"]).lower() == "true"
        out["attention_dp"] = int(cfg["tensor_parallel_size"]) if on else 1
    adp = cfg.get("attention_dp_config") or {}
    if adp.get("enable_balance") and adp.get("timeout_iters"):
        out["adp_balance_timeout"] = adp["timeout_iters"]
    return out


# Each engine's section of a recipe's `backend` and how its pool settings are read.
READERS = (
    ("sglang_config", _sglang_settings),
    ("trtllm_config", _trtllm_settings),
    ("vllm_config", lambda cfg: _flag_settings(cfg, VLLM_FLAGS)),
)


# InferenceX's first multi-node TensorRT-LLM items (`dsr1-fp4-gb200-dynamo-trt`,
# `gptoss-fp4-gb200-dynamo-trt`, December 2025 to January 2026) have no srt-slurm recipe: the
# engines' limits are the item's `additional-settings`, which benchmarks/*_gb200_dynamo-trt_slurm.sh
# hands to Dynamo's performance_sweeps (benchmark_disagg.slurm -> scripts/gen_yaml.py): the
# context servers' `max_num_tokens`, the generation servers' `max_num_tokens` and
# `kv_cache_config.free_gpu_memory_fraction`, and generation CUDA graphs whose `batch_sizes`
# end with the generation batch (padding on, so every batch up to it is graphed). Per pool:
# (setting, servesim's name), each in TensorRT-LLM's meaning (per rank, fraction of free memory).
CONFIG_SETTINGS = {
    "prefill": (("PREFILL_MAX_NUM_TOKENS", "token_budget"),),
    "decode": (
        ("DECODE_MAX_NUM_TOKENS", "token_budget"),
        ("DECODE_GPU_MEM_FRACTION", "mem_fraction"),
        ("DECODE_MAX_BATCH_SIZE", "graph_max_bs"),
    ),
}


def sweep_settings(prefix: str, decode_tp: object, decode_dp_attn: object) -> dict[str, dict]:
    """What Dynamo's TensorRT-LLM performance sweeps write into every item's engine configs
    beside its `additional-settings` (components/backends/trtllm/performance_sweeps/scripts/
    gen_yaml.py, in both stored versions of the release branches InferenceX's
    *_gb200_dynamo-trt_slurm.sh check out): `kv_cache_config.dtype: fp8` on the context and
    generation servers, the context servers' overlap scheduler off, the generation servers'
    `stream_interval: 20` (read in the stored version at ai-dynamo/dynamo 357f7dfc), and
    DeepSeek-R1's
    generation `moe_config.backend`: WIDEEP under
    attention DP over 16 or more GPUs, CUTLASS under it over fewer, TRTLLM without it.
    (gpt-oss's generation backend differs between the two versions, so it is left out.)"""
    out: dict[str, dict] = {
        "prefill": {"kv_dtype": "fp8", "overlap": "off"},  # `disable_overlap_scheduler: True`
        # the generation servers respond every 20 steps (`"stream_interval": 20`)
        "decode": {"kv_dtype": "fp8", "stream_interval": 20},
    }
    if prefix == "dsr1":
        dp = str(decode_dp_attn).lower() == "true"
        tp = int(decode_tp or 1)
        out["decode"]["moe_backend"] = ("wideep" if tp >= 16 else "cutlass") if dp else "trtllm"
    return out


def config_settings(extra: dict[str, str], fixed: dict[str, dict] | None = None) -> tuple[str, str]:
    """(prefill, decode) engine settings an InferenceX item's `additional-settings` fix
    (`CONFIG_SETTINGS`), with `fixed` (`sweep_settings`) beside them when they give any, written
    as `recipe_settings` writes a recipe's; ("", "") when the item gives none."""
    out = []
    given = any(key in extra for role in CONFIG_SETTINGS.values() for key, _ in role)
    for role in ("prefill", "decode"):
        found = {
            name: extra[key]
            for key, name in CONFIG_SETTINGS[role]
            if key in extra and float(extra[key]) > 0
        }
        if given and fixed:
            found.update(fixed.get(role, {}))
        out.append(" ".join(f"{k}={v}" for k, v in sorted(found.items())))
    return out[0], out[1]


def sweep_clients(conc: list[object], decode_workers: object) -> list[int]:
    """The clients Dynamo's performance_sweeps benchmark runs for an item's `conc-list`: each
    value times the generation servers (scripts/bench.sh: `concurrency=$((concurrency *
    num_gen_servers))`, in every stored version), so a 4-worker item listing 8 ran 32."""
    workers = int(decode_workers or 1)
    return [int(c) * workers for c in conc if str(c).strip().isdigit()]


def recipe_settings(recipe_text: str) -> tuple[str, str]:
    """(prefill, decode) engine settings an srt-slurm recipe gives its workers, as
    `key=value` pairs joined by spaces in servesim's names (mem_fraction, kv_dtype,
    token_budget, graph_max_bs, recv_interval, adp_balance_timeout, ar_fusion, a2a, moe_backend,
    lm_head, overlap, kv_tokens, stream_interval, postprocess_workers, attention_dp: the
    attention-DP ranks a worker runs where the
    recipe sets it, which is what ran even where InferenceX's config names another `dp-attn`);
    each engine's
    values keep their own meaning (a fraction of the device or of free memory, a budget per
    server or per rank), which `benchmarks/silicon.py` applies as it does for colocated launch
    scripts."""
    backend = parsed(recipe_text).get("backend") or {}
    out = []
    for role in ("prefill", "decode"):
        found: dict[str, object] = {}
        for section, read in READERS:
            cfg = (backend.get(section) or {}).get(role)
            if isinstance(cfg, dict):
                found = read(cfg)
                if section == "trtllm_config":
                    found.update(_trtllm_env_settings(backend.get(f"{role}_environment")))
                break
        out.append(" ".join(f"{k}={v}" for k, v in sorted(found.items())))
    return out[0], out[1]


# TensorRT-LLM's forced expert all-to-all (`TRTLLM_FORCE_ALLTOALL_METHOD`, read before any
# other rule by `select_alltoall_method_type` of its fused-MoE modules, WideEP included, in the
# 1.2 releases) in servesim's names: DeepEP's normal (high-throughput) and low-latency modes.
TRTLLM_FORCED_A2A = {"deepep": "deepep", "deepeplowlatency": "deepep_low_latency"}


def _trtllm_env_settings(env: object) -> dict[str, object]:
    """The settings a TensorRT-LLM worker's environment (`prefill_environment`,
    `decode_environment`) gives: the all-to-all it forces (`TRTLLM_FORCE_ALLTOALL_METHOD`)."""
    if not isinstance(env, dict):
        return {}
    forced = str(env.get("TRTLLM_FORCE_ALLTOALL_METHOD", "")).strip().lower()
    return {"a2a": TRTLLM_FORCED_A2A[forced]} if forced in TRTLLM_FORCED_A2A else {}


def recipe_concurrencies(recipe_text: str) -> list[int]:
    """The client counts an srt-slurm recipe's benchmark runs (`benchmark.concurrencies`:
    `"36"`, `"4x8x16"` or a list); [] when it names none.

    InferenceX's multi-node runners submit the recipe as it is (`srtctl apply -f
    $CONFIG_FILE`, runners/launch_*-slurm.sh and launch_gb200-nv.sh) and report each result
    file's concurrency, so these, not the config's `conc-list`, are the clients a row ran with
    (e.g. the H200 TensorRT-LLM `c4_ctx1_gen9` recipe benchmarks 36 = 4 × 9 decode workers).
    """
    doc = parsed(recipe_text)
    value = (doc.get("benchmark") or {}).get("concurrencies")
    if value is None:
        return []
    parts = value if isinstance(value, list) else str(value).split("x")
    return [int(p) for p in parts if str(p).strip().isdigit()]


def settings(items: list[str] | None) -> dict[str, str]:
    """`additional-settings` (`KEY=value` strings) as a dict."""
    return dict(s.split("=", 1) for s in (items or []) if "=" in s)


def layouts(
    inferencex: str, srt: str, day: str, models: tuple[str, ...]
) -> list[dict[str, object]]:
    """The disaggregated search-space items of the NVIDIA master config in effect on `day`
    (only those whose `model-prefix` is in `models`)."""
    for path in CONFIG_PATHS:
        commit, _ = commit_at(inferencex, day, path)
        if commit:
            break
    else:
        return []
    config = master_config(inferencex, commit, path)
    if not config:
        return []
    srt_commit, _ = commit_at(srt, day)
    rows: list[dict[str, object]] = []
    for key, entry in config.items():
        if not isinstance(entry, dict) or not entry.get("disagg"):
            continue
        if entry.get("model-prefix") not in models:
            continue
        gpu = key.split("-")[2] if key.count("-") >= 3 else ""
        for seq in entry.get("seq-len-configs") or []:
            for item in seq.get("search-space") or []:
                pre, dec = item.get("prefill") or {}, item.get("decode") or {}
                extra = {
                    **settings(pre.get("additional-settings")),
                    **settings(item.get("additional-settings")),
                }
                extra.update(settings(dec.get("additional-settings")))
                recipe = extra.get("CONFIG_FILE", "")
                pb = extra.get("PREFILL_MAX_BATCH_SIZE")
                db = extra.get("DECODE_MAX_BATCH_SIZE")
                spec = item.get("spec-decoding", "none") or "none"
                # Early multinode items pass the MTP draft length as DECODE_MTP_SIZE.
                mtp = extra.get("DECODE_MTP_SIZE") if spec != "none" else None
                mtp = int(mtp) if mtp is not None else None
                r_commit = ""
                unknown = pb is None or db is None or (spec != "none" and mtp is None)
                clients: list[int] = []
                pre_set = dec_set = ""
                if recipe and srt_commit:
                    r_commit = srt_commit
                    file, _, selector = recipe.partition(":")
                    body = file_at(srt, srt_commit, file)
                    if not body:
                        # Not in srt-slurm that day: its first public version, e.g. the
                        # sa-submission-q1-2026 branch InferenceX cites, merged 2026-03-03.
                        r_commit = first_version(srt, file)
                        body = file_at(srt, r_commit, file) if r_commit else ""
                    workers = (pre.get("num-worker"), dec.get("num-worker"))
                    if body and (selector or "base" in parsed(body)):
                        body = recipe_for(body, selector, workers)
                    res = parsed(body).get("resources") or {}
                    # Use a recipe only if its worker counts are the config's (same deployment).
                    same = (res.get("prefill_workers"), res.get("decode_workers")) == (
                        pre.get("num-worker"),
                        dec.get("num-worker"),
                    )
                    if body and same:
                        clients = recipe_concurrencies(body)
                        pre_set, dec_set = recipe_settings(body)
                        if unknown:
                            rp, rd = recipe_batches(body)
                            pb = pb if pb is not None else rp
                            db = db if db is not None else rd
                            if spec != "none" and mtp is None:
                                mtp = recipe_draft_tokens(body)
                    else:
                        r_commit = ""
                conc = item.get("conc-list") or []
                if not (pre_set or dec_set) and entry.get("framework") == "dynamo-trt":
                    fixed = None
                    if not recipe:  # Dynamo's performance sweeps wrote the engine configs
                        fixed = sweep_settings(
                            entry.get("model-prefix", ""), dec.get("tp"), dec.get("dp-attn")
                        )
                    pre_set, dec_set = config_settings(extra, fixed)
                    if (pre_set or dec_set) and not recipe:
                        clients = sweep_clients(conc, dec.get("num-worker"))
                rows.append(
                    {
                        "config_key": key,
                        "model_prefix": entry.get("model-prefix", ""),
                        "gpu": gpu,
                        "framework": entry.get("framework", ""),
                        "image": entry.get("image", ""),
                        "precision": entry.get("precision", ""),
                        "isl": seq.get("isl", ""),
                        "osl": seq.get("osl", ""),
                        "spec_decoding": spec,
                        "num_draft_tokens": mtp if mtp is not None else "",
                        "prefill_workers": pre.get("num-worker", ""),
                        "prefill_tp": pre.get("tp", ""),
                        "prefill_ep": pre.get("ep", ""),
                        "prefill_dp_attn": bool(pre.get("dp-attn", False)),
                        "prefill_max_batch": pb if pb is not None else "",
                        "decode_workers": dec.get("num-worker", ""),
                        "decode_tp": dec.get("tp", ""),
                        "decode_ep": dec.get("ep", ""),
                        "decode_dp_attn": bool(dec.get("dp-attn", False)),
                        "decode_max_batch": db if db is not None else "",
                        "prefill_settings": pre_set,
                        "decode_settings": dec_set,
                        "concurrencies": " ".join(str(c) for c in conc),
                        "recipe_concurrencies": " ".join(str(c) for c in clients),
                        "recipe": recipe,
                        "source_file": path,
                        "days_in_effect": day,
                        "source_commits": commit[:12],
                        "recipe_commits": r_commit[:12] or "-",
                    }
                )
    return rows


@functools.cache
def master_config(gitdir: str, commit: str, path: str) -> dict[str, object]:
    """InferenceX's master config at `commit` (parsed once per commit), {} if absent."""
    return yaml.safe_load(git(gitdir, "show", f"{commit}:{path}")) or {}


def every_day(first: str = FIRST_DAY, last: str = LAST_DAY) -> list[str]:
    """Each calendar day from `first` to `last` inclusive (YYYY-MM-DD)."""
    start, end = datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)
    return [str(start + datetime.timedelta(d)) for d in range((end - start).days + 1)]


def day_ranges(days: list[str]) -> list[tuple[int, str]]:
    """Runs of consecutive calendar days as (index of the run's first day, `D` or `D1..D2`)."""
    out: list[tuple[int, str]] = []
    start = 0
    for i in range(1, len(days) + 1):
        end = i == len(days) or (
            datetime.date.fromisoformat(days[i]) - datetime.date.fromisoformat(days[i - 1])
        ) != datetime.timedelta(1)
        if end:
            run = days[start] if i - 1 == start else f"{days[start]}..{days[i - 1]}"
            out.append((start, run))
            start = i
    return out


def write_merged(
    rows_by_day: Iterable[list[dict[str, object]]],
    fields: tuple[str, ...],
    when: tuple[str, ...],
    out: str,
) -> int:
    """Write the items of every day to `out` as CSV, an item seen on several days once: its
    first `when` field (the day) becomes space-separated runs of consecutive days (`D` or
    `D1..D2`, `day_ranges`) and the other `when` fields (commits) those of each run's first
    day; returns the rows written."""
    merged: dict[tuple[object, ...], dict[str, object]] = {}
    seen: dict[tuple[object, ...], dict[str, list[str]]] = {}
    for rows in rows_by_day:
        for row in rows:
            key = tuple(row[f] for f in fields if f not in when)
            merged.setdefault(key, row)
            per = seen.setdefault(key, {f: [] for f in when})
            for f in when:
                per[f].append(str(row[f]))
    for key, row in merged.items():
        runs = day_ranges(seen[key][when[0]])
        row[when[0]] = " ".join(run for _, run in runs)
        for f in when[1:]:
            row[f] = " ".join(seen[key][f][i] for i, _ in runs)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), lineterminator="\n")
        w.writeheader()
        w.writerows(merged.values())
    print(f"wrote {len(merged)} rows to {out}")
    return len(merged)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("inferencex", help="git dir of SemiAnalysisAI/InferenceX")
    ap.add_argument("srt_slurm", help="git dir of NVIDIA/srt-slurm")
    ap.add_argument("--dates", nargs="*", help="days (YYYY-MM-DD); default: every day")
    ap.add_argument("--models", nargs="*", default=list(MODELS), help="InferenceX model-prefixes")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    days = sorted(args.dates) if args.dates else every_day()
    models = tuple(args.models)
    per_day = (layouts(args.inferencex, args.srt_slurm, day, models) for day in days)
    write_merged(per_day, FIELDS, WHEN, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
