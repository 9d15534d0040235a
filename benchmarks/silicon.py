"""Reproduce measured end-to-end serving benchmarks (aiconfigurator's silicon samples).

Each row is a fixed-concurrency benchmark: N clients, nominal input/output lengths, one engine at a
TP degree. servesim simulates the protocol of the client that measured the row (InferenceX's
benchmark_serving.py or aiconfigurator's aiperf: warm-up, length spread, all clients sending
again as soon as their request ends) from the device specs and the fitted kernel efficiencies,
and compares its mean TTFT and TPOT with the measured ones.

    .venv/bin/python benchmarks/silicon.py [PATH.csv ...] [--rounds R] [--limit N] [--only ID]

Several files run as one set (as issue 12's goals count the two dev files together): the
figures are over all their rows, with `by_file` per file; each row is predicted as in a run
over its own file.

Colocated (`agg`) rows run one engine; disaggregated (`disagg`) rows run prefill and decode
worker pools with the KV cache moved between them. Rows it cannot predict (a model without a
bundled config, an unknown system, backend or quantisation) are counted with the reason.

A row is predicted only when it says what was deployed (`specified_or_reason`); servesim does
not guess a layout. Every row states its client count (`silicon_concurrency=N` in
`silicon_data_source`: aiconfigurator's benchmark sweeps several per deployment, so a batch size
does not say which ran). Fully specified means, per mode:
- `agg`: `batch_size` and `tp_size` are given, and the clients fit the batch slots: concurrency
  ≤ batch_size × attention_dp_size (the row has no replica count, so more clients than slots
  would mean unstated replicas or a deep queue the real run did not have);
- `disagg`: `prefill_`/`decode_` `num_workers`, `batch_size` and `tp_size` are all given, and
  concurrency ≤ decode_batch_size × decode_num_workers × decode_attention_dp_size unless the
  layout and the client count both come from InferenceX's config and srt-slurm recipe (their
  TensorRT-LLM recipes benchmark up to 1.5× the decode slots on purpose; the excess queues).
Anything else is refused with the reason and counted like the other skips. InferenceX dashboard
rows (`source_file=<date>.csv`) that lack disaggregated worker counts and batch sizes are first
completed from the deployment InferenceX's config listed for them (`recovered_layout`, table
data/inferencex/disagg_layouts.csv), only where exactly one layout matches, and run with the
flags of that layout's srt-slurm recipe; rows that state their layout (database records) take
the flags and batch limits of the one recipe with that layout, if one (`stated_layout_settings`:
a record's batch columns are a placeholder and the clients per rank). InferenceX's
colocated rows (dashboard exports, database records) are matched to the config that ran them
(`single_node_config`, table data/inferencex/single_node_configs.csv) by image, day, layout and
concurrency: runs with speculative decoding (MTP), which the rows do not flag, are simulated
with the draft length of the config's launch script, and rows no config or both kinds of config
match are refused. A database record that both kinds match takes the kind its config's other
records settle on (`config_specs`: InferenceX's database keys a config by its speculative
method, so one `config_id` ran one). Where several configs still match, those InferenceX's
changelog-driven sweep ran on the measured day are kept (`swept`, table
data/inferencex/changelog_sweeps.csv): a push adding perf-changelog entries benchmarks just the
configs they name.
A disaggregated config that drafts with DeepSeek's MTP head is simulated with its draft length
(`num_draft_tokens`) at the sourced default acceptance (servesim.spec.speculative).
InferenceX rows get their launch scripts' engine settings: the TensorRT-LLM and vLLM
launches of DeepSeek-R1 and Llama-3.1-70B whose values depend on ISL/OSL or the clients in ways
the table cannot write were read by hand (`inferencex_trtllm_launch`, `inferencex_vllm_launch`,
`inferencex_kv_dtype`); every other colocated config takes what the script in effect on its day
fixes (`script_launch`, read by scripts/inferencex_single_node.py into the config table,
including values set per branch on TP or the clients, such as SGLang's receive interval). The
tables cover every day and every model InferenceX's NVIDIA config ran from 2025-08-13 to
2026-04-27 on B200, B300, GB200, GB300, H100 and H200, not only the rows bundled here.
aiconfigurator's own rows get its generator's settings (`batching_of`,
`aiconfigurator_mixed_chunk`).

The last line is one JSON object: overall TTFT/TPOT median and p90 absolute percentage error
(APE, |predicted − measured| / measured, in %) of the predicted rows, `predicted_fraction`,
`by_group` (`"<system>/<mode>": {rows, ttft_median_ape, tpot_median_ape}`), `bias_by_engine`
(`"<backend>/<precision>": {rows, ttft_signed_median_pct, tpot_signed_median_pct}`: the signed
median error, + where servesim predicts too slow), `skipped_by_reason`
(reason → rows), the slowest row's wall time, `recovered_layouts` (rows whose layout came from
InferenceX's config), `goal_misses` (issue 12's goals the figures miss, `GOALS`; empty when
all are met) and, over several files, `by_file`. `--rows-out FILE` writes one CSV row per input
row: id, measured and predicted TTFT and TPOT (ms), status (`ok` or the reason it was refused),
`layout_source` (where a recovered layout or a stated layout's recipe flags came from, else
empty), the wall and CPU seconds it took (on a shared machine CPU time is the steadier figure)
and its file. A row whose simulation raises an unexpected exception (a servesim bug) is counted
as `internal error (<type>: <message>)` and named on stderr, and the other rows still run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import functools
import hashlib
import json
import math
import operator
import pickle
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from servesim.cli.settings import check_out_file, replace_atomically
from servesim.errors import ServesimError, script_exit
from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL
from servesim.predictor.kernel_tables import version_key
from servesim.sim.clients import (
    AIPERF,
    INFERENCEX,
    INFERENCEX_2025,
    INFERENCEX_MULTINODE,
    ClientProtocol,
    client_protocol,
)
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.spec.devices import Catalog, get_device
from servesim.spec.dtypes import canonical
from servesim.spec.engine_profile import EngineProfile, get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.sampling import filters_logits, sorts_vocab
from servesim.spec.speculative import SpeculativeDecoding

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "data" / "aic_e2e" / "silicon_sample_h100_dense_agg.csv"


def stated_concurrency(row: dict[str, str]) -> int | None:
    """Clients of the benchmark as the row states them (`silicon_concurrency=N` in its
    provenance), or None."""
    m = re.search(r"silicon_concurrency=(\d+)", row.get("silicon_data_source", ""))
    return int(m.group(1)) if m else None


def concurrency_of(row: dict[str, str]) -> int:
    """Clients of the benchmark: `silicon_concurrency=N` in the provenance, else the batch size
    (of all decode workers for disaggregated rows) for a row a caller built by hand; the
    benchmark refuses a row that states no client count (`specified_or_reason`)."""
    stated = stated_concurrency(row)
    if stated is not None:
        return stated
    if row.get("mode") == "disagg":
        return _int(row, "decode_batch_size") * _int(row, "decode_num_workers")
    return _int(row, "batch_size")


def _int(row: dict[str, str], key: str, default: int = 1) -> int:
    """A count column as an int (`default` when empty); a ServesimError when it is not one."""
    text = (row.get(key) or "").strip()
    return int(_number(key, text)) if text else default


def _number(key: str, text: str) -> float:
    """A column's text as a finite number; a ServesimError naming the column otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ServesimError(f"column {key} holds {text!r}, not a number")
    return value


# A pool whose public srt-slurm recipe sets no batch limit (the GB200/GB300 SGLang
# low-latency recipes' decode servers give no `max-running-requests`) runs with the engine's
# own: `recovered_layout` writes this in its batch column, and `deployment_of` leaves the
# limit to `EngineProfile.max_num_seqs` and its rules (SGLang: 4,096, or its speculative cap).
ENGINE_BATCH = "engine"


def batching_of(
    backend: str, role: str, bs: int | None, isl: int, budget_vllm: int | None = None, dp: int = 1
) -> dict[str, object]:
    """Batching limits the benchmarked engines ran with.

    The rows come from aiconfigurator's benchmark flow, whose config generator sets
    (src/aiconfigurator/generator/rule_plugin/benchmark/*.rule): TensorRT-LLM `max_num_tokens =
    batch + ISL + 1500` colocated, `ISL + 1500` on prefill workers and `batch` on decode workers
    (rounded up to 32-token pages), without chunked prefill; SGLang `max_prefill_tokens = ISL +
    1500`; vLLM (rule_plugin/vllm.rule) raises colocated and decode batches to 512 (or twice the
    batch from 512 on) and sets `max_num_tokens` to that batch + ISL + 1500 colocated, ISL + 1500
    on prefill workers and the batch on decode workers, passed as `--max-num-batched-tokens`
    (backend_config_mapping.yaml; in the vLLM launch templates since 2026-01-08 for the generic
    one and 2026-02-11 for 0.12.0). `budget_vllm` overrides vLLM's budget. `role` is `agg`,
    `prefill` or `decode`. `bs` and the budgets are per attention-DP rank; one servesim replica
    holds all `dp` ranks, so its limits are `dp` times theirs. `bs` None: a pool whose recipe
    leaves the batch to the engine (`ENGINE_BATCH`), which keeps its own limits.
    """
    if bs is None:  # `ENGINE_BATCH`: the engine's own limits (the token budget the recipe's)
        tokens = (isl + 1500) * dp if role == "prefill" or backend == "sglang" else None
        out: dict[str, object] = {"max_num_seqs": None, "max_num_batched_tokens": tokens}
        return {**out, "chunked_prefill": False} if backend == "trtllm" else out
    if backend == "trtllm":
        tokens = {"agg": bs + isl + 1500, "prefill": isl + 1500, "decode": bs}[role]
        tokens = -(-tokens // 32) * 32
        return {
            "max_num_seqs": bs * dp,
            "max_num_batched_tokens": tokens * dp,
            "chunked_prefill": False,
        }
    if backend == "sglang":
        return {"max_num_seqs": max(bs, 1) * dp, "max_num_batched_tokens": (isl + 1500) * dp}
    seqs = max(bs, 1) if role == "prefill" else (512 if bs < 512 else 2 * bs)
    tokens = {"agg": seqs + isl + 1500, "prefill": isl + 1500, "decode": seqs}[role]
    if budget_vllm is not None:
        tokens = budget_vllm
    return {"max_num_seqs": seqs * dp, "max_num_batched_tokens": tokens * dp}


def aiconfigurator_mixed_chunk(row: dict[str, str]) -> bool:
    """Whether aiconfigurator's own collection ran a colocated SGLang row with
    `--enable-mixed-chunk` (prefill chunks sharing iterations with the running decodes).

    Its SGLang rule sets `enable_mixed_chunk = true` for colocated workers, but until commit
    07a3779 (2026-01-19, "fix sglang enable mixed chunk") the parameter mapping spelled it
    `enable_mix_chunk`, so the generator emitted no flag. Launch templates for SGLang 0.5.6.post2
    and later were added after that fix (generator/config/backend_templates/sglang/
    cli_args.0.5.6.post2.j2 on 2026-01-23, 0.5.8 on 2026-02-11), so those runs had it; runs
    of 0.5.4 and older could predate it and are taken without (the H100 file's 0.5.1.post1 rows
    agree: TTFT 11.9 % median APE without against 76.7 % with)."""
    if row.get("backend") != "sglang" or protocol_of(row) is not AIPERF:
        return False
    return version_key(row.get("backend_version", "")) >= (0, 5, 6)


def inferencex_trtllm_launch(row: dict[str, str]) -> tuple[int, int, float, int] | None:
    """(`max_num_tokens`, `batch_wait_timeout_iters`, `batch_wait_max_tokens_ratio`,
    attention-DP balance `timeout_iters`) of InferenceX's colocated TensorRT-LLM launch for a
    row, or None when the row is not one.

    From SemiAnalysisAI/InferenceX: the Llama-3.1-70B launch (llama-config.yml) passes
    `--max_num_tokens 16384` and, at ISL 1024 / OSL 1024 below TP 8, batch waiting of 20
    iterations or 0.9 of the budget; benchmarks/single_node/dsr1_fp8_b200_trt.sh, dsr1_fp4_b200
    _trt.sh and dsr1_fp8_h200_trt.sh pass max(8192, CONC + ISL + 64 rounded up to 64) (without
    the 8192 floor before the search space, SEARCH_SPACE_DAY), only
    dsr1_fp8_b200_trt.sh at 1k/1k with 64 or more clients waits (40 iterations, 0.8), and with
    attention DP all three write `attention_dp_config: {batching_wait_iters: 0, enable_balance:
    true, timeout_iters: 60}` (batch waiting is skipped under attention DP). The token budget
    here stands only where the launch-script table has none for the row's script
    (`deployment_of`): the table reads each script's own arithmetic, the MTP scripts' budget of
    one prompt beside a full batch of verify tokens included.
    """
    if row.get("backend") != "trtllm" or row.get("mode", "agg") not in ("agg", ""):
        return None
    if protocol_of(row) is AIPERF:
        return None
    dp = _int(row, "attention_dp_size") > 1
    model = row["model_path"].lower()
    isl, osl, tp, conc = (
        _int(row, "isl"),
        _int(row, "osl"),
        _int(row, "tp_size"),
        concurrency_of(row),
    )
    chat = isl == 1024 and osl == 1024
    if "llama-3.1-70b" in model and not dp:
        return (16384, 20, 0.9, 0) if chat and tp < 8 else (16384, 0, 0.0, 0)
    if "deepseek" in model:
        tokens = -(-(conc + isl + 64) // 64) * 64
        day = _measured_day(row)
        if not day or day >= SEARCH_SPACE_DAY:
            tokens = max(8192, tokens)  # the floor the scripts added with the search space
        if dp:
            return tokens, 0, 0.0, 60
        fp8 = "fp8" in (row.get("gemm_quant_mode") or row.get("precision") or "").lower()
        if fp8 and row["system"].startswith("b200") and chat and conc >= 64:
            return tokens, 40, 0.8, 0
        return tokens, 0, 0.0, 0
    return None


# What InferenceX's 2025 Llama-3.1-70B B200 launches set for vLLM's FlashInfer all-reduce
# fusion: `VLLM_FLASHINFER_ALLREDUCE_FUSION_THRESHOLDS_MB='{"2":32,"4":32,"8":8}'`.
LLAMA70B_B200_FUSION_MIB = ((2, 32.0), (4, 32.0), (8, 8.0))


def inferencex_vllm_launch(
    row: dict[str, str],
) -> tuple[int, int, int | None, tuple[tuple[int, float], ...] | None] | None:
    """(`--max-num-seqs`, `--max-num-batched-tokens`, tokens up to which prefill iterations
    replay piecewise CUDA graphs (None: vLLM's default, min(2 × max-num-seqs, 512), the
    engine profile's `capture_size_rule`), the all-reduce fusion's largest inputs or None
    without it) of InferenceX's colocated vLLM launch for a row, or None when the row is not
    one. Every
    such launch also sets `async-scheduling: true` (the overlap scheduler here) and
    `no-enable-prefix-caching`.

    From SemiAnalysisAI/InferenceX before commit 3233df20f ("remove llama 70b", 2025-10-29):
    benchmarks/70b_fp8_b200_docker.sh and 70b_fp4_b200_docker.sh pass `--max-num-seqs 512`,
    `max-num-batched-tokens: 8192` and `cudagraph_mode: FULL_DECODE_ONLY` with no splitting ops
    (iterations that carry prefill tokens run without CUDA graphs), and `pass_config:
    {"enable_fi_allreduce_fusion": true}` with `LLAMA70B_B200_FUSION_MIB` (since 2025-09-12);
    70b_fp8_h200_slurm.sh and 70b_fp8_h100_docker.sh pass `--max-num-seqs CONC`, the same
    budget and vLLM's default compilation (piecewise graphs up to 2 × CONC tokens, no
    fusion)."""
    if row.get("backend") != "vllm" or row.get("mode", "agg") not in ("agg", ""):
        return None
    if protocol_of(row) is AIPERF or "llama-3.1-70b" not in row["model_path"].lower():
        return None
    if row["system"].startswith("b200"):
        return 512, 8192, 0, LLAMA70B_B200_FUSION_MIB
    return concurrency_of(row), 8192, None, None


# What a launch script fixes for its engine: the columns scripts/inferencex_single_node.py
# writes into the colocated config table (its module is the one definition of them).
sys.path.insert(0, str(ROOT / "scripts"))
from inferencex_single_node import LAUNCH_FIELDS, TEXT_LAUNCH_FIELDS  # noqa: E402

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}


_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.GtE: operator.ge,
    ast.Gt: operator.gt,
    ast.LtE: operator.le,
    ast.Lt: operator.lt,
}


def _runner_value(expr: str, names: dict[str, int]) -> float | None:
    """A launch value (a number, or arithmetic in the runner's ISL, OSL, CONC, TP, EP_SIZE as
    the table writes it; a value the script sets per branch is `IF(cond,then,else)` with
    comparisons joined by `&`, `|` and `NOT(...)`) for one row; None when empty, not such an
    expression, or on a branch that sets nothing (`NONE`)."""
    if not expr:
        return None
    try:
        tree = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return None

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in names:
            return float(names[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            return _ARITHMETIC[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd | ast.BitOr):
            left, right = bool(value(node.left)), bool(value(node.right))
            return float(left and right if isinstance(node.op, ast.BitAnd) else left or right)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE:
            return float(_COMPARE[type(node.ops[0])](value(node.left), value(node.comparators[0])))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            args = node.args
            if node.func.id == "IF" and len(args) == 3:
                return value(args[1]) if value(args[0]) else value(args[2])
            if node.func.id == "NOT" and len(args) == 1:
                return float(not value(args[0]))
        raise ValueError(expr)

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError):
        return None


def script_launch(row: dict[str, str]) -> dict[str, float | str]:
    """What the InferenceX launch script that measured a colocated row passes its engine, as
    `single_node_config` found it (`launch_*` columns from data/inferencex/single_node_configs
    .csv): only the settings the script fixes, evaluated for the row's ISL, OSL, clients and
    GPUs; {} for other rows. The KV dtype is 'auto' (the checkpoint's own) when the script
    leaves the engine's default; `ssm_dtype` (the recurrent state's format) and `ar_fusion`
    only when it sets them."""
    if "launch_gpus" not in row:
        return {}
    names = {
        "ISL": _int(row, "isl"),
        "OSL": _int(row, "osl"),
        "CONC": concurrency_of(row),
        "TP": _int(row, "launch_gpus"),
        "EP_SIZE": _int(row, "launch_ep"),
    }
    out: dict[str, float | str] = {"kv_cache_dtype": row.get("launch_kv_cache_dtype") or "auto"}
    for field in TEXT_LAUNCH_FIELDS:
        if row.get(f"launch_{field}"):
            out[field] = row[f"launch_{field}"]
    for field in LAUNCH_FIELDS:
        if field in ("kv_cache_dtype", *TEXT_LAUNCH_FIELDS):
            continue
        v = _runner_value(row.get(f"launch_{field}", ""), names)
        if v is not None and v > 0:
            out[field] = v
    return out


# aiconfigurator's quantisation modes (aiconfigurator_core.sdk.common GEMMQuantMode and
# MoEQuantMode) as the weight format servesim prices, by storage. 4-bit weights compute in bf16
# here, so w4afp8 and gpt-oss's w4a8 MXFP4-MXFP8 MoE run a little slow; NVFP4 dequantised to
# bf16 (nvfp4_wo, w4a16_nvfp4: W4A16 with a scale per 16 weights) is priced as MXFP4, the
# 4-bit float format servesim computes in bf16, and not at the FP4 tensor-core rate.
QUANT = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "fp8_block": "fp8",
    "fp8_ootb": "fp8",
    "fp8_static": "fp8",
    "int8_wo": "int8",
    "sq": "int8",
    "int4_wo": "int4",
    "w4afp8": "int4",
    "nvfp4_wo": "mxfp4",
    "w4a16_nvfp4": "mxfp4",
    "w4a16_mxfp4": "mxfp4",
    "w4a16_mxfp4_cutlass": "mxfp4",
    "w4a8_mxfp4_mxfp8": "mxfp4",
    "w4a8_mxfp4_mxfp8_trtllm": "mxfp4",
}
# The checkpoint an NVFP4 row of a base model ran. InferenceX's DeepSeek FP4 configs name
# nvidia/DeepSeek-R1-0528-NVFP4-v2 (or -FP4-V2; .github/configs/nvidia-master.yaml), whose rows
# give the base model's path; NVIDIA's ModelOpt NVFP4 releases of this architecture (R1, V3.1,
# V3.2: the quantisation files servesim bundles or aiconfigurator-core ships) all list the MLA
# input projections (q_a, q_b, kv_a, kv_b) and the MTP layer as unquantised and quantise the
# rest, o_proj included. servesim's nvidia/DeepSeek-R1-NVFP4 is that file on R1's config.
# InferenceX's Kimi-K2.5 FP4 configs and recipes serve nvidia/Kimi-K2.5-NVFP4 (its INT4 ones
# the base checkpoint), whose bf16 attention and FP8 KV cache a base-path row would otherwise
# lose.
NVFP4_RELEASES = {
    "deepseek-ai/DeepSeek-R1": "nvidia/DeepSeek-R1-NVFP4",
    "deepseek-ai/DeepSeek-V3": "nvidia/DeepSeek-R1-NVFP4",
    "moonshotai/Kimi-K2.5": "nvidia/Kimi-K2.5-NVFP4",
}
# The 4-bit format a row's name stands for (InferenceX's precisions `fp4` and `int4`, an
# export's `nvfp4`, a checkpoint's own MXFP4 or INT4 experts).
FORMAT_FAMILY = {"fp4": "fp4", "nvfp4": "fp4", "mxfp4": "fp4", "int4": "int4"}
# The MXFP4 MoE modes of aiconfigurator's own rows name the activation format the run quantised
# to (MXFP8 or none); the tables price the two as different kernels
# (`EngineProfile.mxfp4_activation`).
MXFP4_ACTIVATION = {
    "w4a16_mxfp4": "bf16",
    "w4a16_mxfp4_cutlass": "bf16",
    "w4a8_mxfp4_mxfp8": "mxfp8",
    "w4a8_mxfp4_mxfp8_trtllm": "mxfp8",
}


def inferencex_static_fp8(row: dict[str, str]) -> bool:
    """Whether a row ran a per-tensor FP8 checkpoint with calibrated (static) input scales:
    InferenceX's Llama-3.1-70B FP8 launches serve nvidia/Llama-3.3-70B-Instruct-FP8 (its
    configs, e.g. `.github/configs` at 3233df20f^: `model: 'nvidia/Llama-3.3-70B-Instruct-FP8'`),
    a ModelOpt FP8 checkpoint. aiconfigurator's own rows label static FP8 `fp8_static`, so
    their plain `fp8` is the dynamic kind."""
    weights = (row.get("gemm_quant_mode") or row.get("precision") or "").strip().lower()
    if weights == "fp8_static":
        return True
    return (
        protocol_of(row) is not AIPERF
        and weights == "fp8"
        and "llama-3.1-70b" in row["model_path"].lower()
    )


def inferencex_kv_dtype(row: dict[str, str]) -> str | None:
    """The KV-cache format of InferenceX's colocated launch for a row, or None when the row is
    not one (other clients, disaggregated pools, launches this does not know).

    From SemiAnalysisAI/InferenceX's launch scripts, every version from 2025-09 to 2026-03:
    - TensorRT-LLM writes `kv_cache_config: {dtype: fp8}` for every model and precision
      (benchmarks/70b_fp{4,8}_b200_trt_slurm.sh, 70b_fp8_h200_trt_slurm.sh,
      dsr1_fp{4,8}_b200_trt*.sh, dsr1_fp8_h200_trt*.sh);
    - vLLM's Llama-3.1-70B launches pass `kv-cache-dtype: fp8` (70b_fp{4,8}_b200_docker.sh,
      70b_fp8_h200_slurm.sh);
    - SGLang on B200 passes `--kv-cache-dtype fp8_e4m3` for DeepSeek-R1 at fp4 and fp8
      (dsr1_fp{4,8}_b200_docker.sh, which the `b200` runners ran, and dsr1_fp{4,8}_b200.sh) and
      for Qwen3.5 fp8 (qwen3.5_fp8_b200.sh, qwen3.5_fp8_h200.sh); its DeepSeek fp8 launch on
      H200 (dsr1_fp8_h200.sh) and Qwen3.5 bf16 (qwen3.5_bf16_b200.sh) pass none, so the cache
      keeps the model's bf16.
    Without this an fp4 row would cache in bf16, and SGLang's DeepSeek fp8 on H200 in fp8."""
    if protocol_of(row) is AIPERF or row.get("mode", "agg") not in ("agg", ""):
        return None
    backend, model, system = row.get("backend"), row["model_path"].lower(), row["system"]
    weights = (row.get("gemm_quant_mode") or row.get("precision") or "").strip().lower()
    if backend == "trtllm" and ("deepseek" in model or "llama-3.1-70b" in model):
        return "fp8"
    if backend == "vllm" and "llama-3.1-70b" in model:
        return "fp8"
    if backend == "sglang" and "deepseek" in model:
        if system.startswith("b200"):
            return "fp8"
        if system.startswith("h200"):
            return "bf16"
    if backend == "sglang" and "qwen3.5" in model:
        return "fp8" if weights.startswith("fp8") else "bf16"
    return None


def _model(row: dict[str, str]):
    model = load_model(row["model_path"])
    quant = (row.get("gemm_quant_mode") or row.get("precision") or "").strip().lower()
    moe = (row.get("moe_quant_mode") or "").strip().lower()
    # The row's fp8_block: a block-scaled fp8 checkpoint (Qwen3.5-FP8's experts, DeepSeek's
    # whole model), which the engines run with block-scaled kernels.
    block = "fp8_block" in (quant, moe)
    quant, moe = QUANT.get(quant, quant), QUANT.get(moe, moe)
    release = NVFP4_RELEASES.get(model.name)
    if release and FORMAT_FAMILY.get(quant) == "fp4" and FORMAT_FAMILY.get(moe or quant) == "fp4":
        model = model.stored_as(load_model(release))
    family = FORMAT_FAMILY.get(model.expert_dtype)
    if (
        family
        and (model.weight_dtype == "bf16" or FORMAT_FAMILY.get(model.weight_dtype) == family)
        and FORMAT_FAMILY.get(quant) == family
        and (not moe or FORMAT_FAMILY.get(moe) == family)
    ):
        # A checkpoint that ships its own 4-bit experts beside bf16 layers (gpt-oss: MXFP4
        # experts; Kimi-K2.5: INT4 experts), or that format's release quantised throughout
        # but for the modules it lists (nvidia/DeepSeek-R1-NVFP4: the MLA input projections
        # and the MTP layer in bf16), is that format's release of the model: a row that names
        # only the format ran the checkpoint as it is.
        quant = moe = ""
    kv = inferencex_kv_dtype(row)
    scripted = script_launch(row)
    if kv is None and scripted:  # the launch script's, else the checkpoint's
        kv = None if scripted["kv_cache_dtype"] == "auto" else str(scripted["kv_cache_dtype"])
    elif kv is None:
        kv = quant if quant == "fp8" else None
    if quant or moe or kv:
        model = model.with_dtypes(weight=quant or None, kv=kv, expert=moe or None)
    if block and not model.fp8_block:
        model = replace(model, fp8_block=True)
    if inferencex_static_fp8(row):
        model = replace(model, fp8_static_act=True)
    ssm = scripted.get("ssm_dtype")
    if ssm and model.num_linear_layers:  # e.g. SGLang --mamba-ssm-dtype bfloat16
        model = replace(model, state_dtype=canonical(str(ssm)))
    return model


def _parallel(
    row: dict[str, str],
    prefix: str,
    role: str = "agg",
    moe: bool = True,
    recipe: dict[str, float | str] | None = None,
) -> Parallel:
    """A pool's layout from the row's `{prefix}tp_size`, ... columns: attention TP per DP
    rank, attention-DP ranks, and the expert layers as moe_tp × ep over all tp × dp GPUs.

    Under SGLang's dp-attention the dense FFN layers and shared experts stay tensor-parallel
    over the whole group (`--moe-dense-tp-size` defaults to None, i.e. the full TP size:
    python/sglang/srt/server_args.py) unless the recipe sets `--moe-dense-tp-size 1` (each
    rank then runs them on its own tokens, `enable_moe_dense_fully_dp`); TRT-LLM replicates
    them on every attention-DP rank (`overridden_tp_size=1 if enable_attention_dp`,
    tensorrt_llm/_torch/models/).
    A dense model (`moe` false) has no expert layers: its moe_tp/ep columns say nothing.
    `recipe`: the pool's srt-slurm settings (`pool_settings`), where its flags come from,
    and its attention-DP ranks (`attention_dp`), which replace the row's split of the same GPUs.
    """
    tp, pp, dp, ep = (
        max(1, _int(row, prefix + key))
        for key in ("tp_size", "pp_size", "attention_dp_size", "moe_ep_size")
    )
    moe_tp = _int(row, prefix + "moe_tp_size", 0)
    adp = int((recipe or {}).get("attention_dp", 0))
    if adp and adp != dp:
        # The recipe launches its own attention DP over the worker's GPUs (InferenceX's config
        # names `dp-attn` beside it, and 21 of its items name the other one): theirs ran.
        if (tp * dp) % adp:
            raise ServesimError(
                f"the recipe's attention_dp={adp} does not divide the worker's tp={tp}×dp={dp} "
                "GPUs, a layout servesim does not model"
            )
        tp, dp = tp * dp // adp, adp
    if not moe:
        moe_tp, ep = 0, 1
    if moe_tp and moe_tp * ep != tp * dp:
        raise ServesimError(
            f"moe_tp={moe_tp} × ep={ep} does not cover tp={tp}×dp={dp} GPUs, a layout "
            "servesim does not model"
        )
    sglang = row.get("backend") == "sglang"
    dense_tp = tp * dp if sglang and dp > 1 else 0
    if sglang and (recipe or {}).get("dense_tp") == 1:
        dense_tp = 0  # --moe-dense-tp-size 1: the dense layers stay on each rank's tokens
    # SGLang's PD prefill workers route to DP ranks by a random bootstrap room.
    dispatch = "random" if sglang and role == "prefill" else "balanced"
    return Parallel(
        tp=tp,
        pp=pp,
        dp=dp,
        ep=ep,
        moe_tp_size=moe_tp,
        dense_tp_size=dense_tp,
        dp_dispatch=dispatch,
    )


# The TensorRT-LLM release inside each ai-dynamo `tensorrtllm-runtime` image tag (Dynamo's
# docs/reference/release-artifacts.md). 0.8.1.post2 is not listed there: it sits between
# post1 (1.2.0rc6.post2) and post3 (1.2.0rc6.post3), so 1.2.0rc6, which is what picks tables.
DYNAMO_TRTLLM = {
    "0.6.0": "1.1.0rc5", "0.6.1": "1.1.0rc5", "0.6.1.post1": "1.1.0rc5",
    "0.7.0": "1.2.0rc2", "0.7.0.post1": "1.2.0rc3", "0.7.0.post2": "1.2.0rc2",
    "0.7.1": "1.2.0rc3", "0.8.0": "1.2.0rc6.post1", "0.8.1": "1.2.0rc6.post1",
    "0.8.1.post1": "1.2.0rc6.post2", "0.8.1.post2": "1.2.0rc6", "0.8.1.post3": "1.2.0rc6.post3",
    "0.9.0": "1.3.0rc1", "0.9.1": "1.3.0rc3", "1.0.0": "1.3.0rc5.post1",
    "1.0.1": "1.3.0rc5.post1", "1.0.2": "1.3.0rc5.post1", "1.1.0": "1.3.0rc11",
    "1.1.1": "1.3.0rc11",
}  # fmt: skip


def row_image(row: dict[str, str]) -> str:
    """The container image a row ran: its own, or the one of the InferenceX config it
    matched (`matched_image`; dashboard exports of early 2026 name none)."""
    return source_fields(row)["image"] or row.get("matched_image", "")


def engine_release(row: dict[str, str]) -> str:
    """The engine release a row ran ("" when not known): a Dynamo TensorRT-LLM image's
    TensorRT-LLM (`DYNAMO_TRTLLM`; such rows give the Dynamo tag as their backend_version),
    else the row's backend_version when it is a release, else the release its image
    (`row_image`) is tagged with."""
    image = row_image(row)
    tag = image.rsplit(":", 1)[1].strip() if ":" in image else ""
    if "tensorrtllm-runtime:" in image:
        return DYNAMO_TRTLLM.get(tag, "")
    version = (row.get("backend_version") or "").strip()
    if version and version_key(version) != (0,):
        return version
    if "/ai-dynamo/" in image:  # another Dynamo image: its engine is not in its tag
        return ""
    m = re.fullmatch(r"v?(\d+\.\d+[\w.]*?)(?:-[\w.-]+)?", tag)
    return m.group(1) if m and version_key(m.group(1)) != (0,) else ""


def deployment_of(
    row: dict[str, str],
    catalog: Catalog,
    budget_vllm: int | None = None,
    latency_model: str = DEFAULT_LATENCY_MODEL,
    releases: bool = True,
) -> Deployment | DisaggDeployment:
    """The deployment a row measured, its kernels priced by `latency_model` (roofline, auto or
    measured) from the collection nearest the engine release the row ran (`engine_release`;
    `releases` False: the newest first); ServesimError says why a row cannot be predicted."""
    mode = row.get("mode", "agg") or "agg"
    if mode not in ("agg", "disagg"):
        raise ServesimError(f"mode {mode!r} is neither 'agg' nor 'disagg'")
    device = catalog.get(row["system"])
    model = _model(row)
    moe_mode = (row.get("moe_quant_mode") or "").strip().lower()
    # aiconfigurator's own rows name the MXFP4 kernel its collection configured (W4A8 or
    # W4A16); an InferenceX export's mode column labels the checkpoint, and which kernel its
    # engine ran is the launch script's choice (`script_launch`) or the engine's own rule
    # (`measured_kernels.mxfp4_activation`: TensorRT-LLM and SGLang quantise to MXFP8 on SM 10.x).
    own = protocol_of(row) is AIPERF
    release = engine_release(row)
    engine = get_engine(row["backend"]).with_overrides(
        mxfp4_activation=MXFP4_ACTIVATION.get(moe_mode) if own else None,
        version=release if releases else None,
        # aiperf sends no sampling parameters, so vLLM samples with the checkpoint's generation
        # config; InferenceX's client sends temperature 0 (greedy, no filter).
        sampler_sorts_vocab=sorts_vocab(
            row["backend"], release, own and filters_logits(row["model_path"])
        ),
    )
    isl = _int(row, "isl")

    trt = inferencex_trtllm_launch(row)
    vllm = inferencex_vllm_launch(row)
    scripted = script_launch(row)  # where no launch above knows the script's conditions
    # MTP drafting (InferenceX's config says how many tokens, `recovered_layout`), at the
    # sourced default acceptance of `spec.speculative` (never fitted on these rows).
    k = _int(row, "speculative_num_draft_tokens", 0)
    speculative = SpeculativeDecoding("mtp", k) if k else None

    def pool(prefix: str, role: str) -> Deployment:
        recipe = pool_settings(row, prefix) if role != "agg" else {}
        if "tensorrtllm-runtime" in row_image(row):
            # Dynamo's TensorRT-LLM worker builds its responses itself, so TensorRT-LLM's
            # postprocess workers do nothing there (ai-dynamo/dynamo PR #12592 drops them).
            recipe.pop("postprocess_workers", None)
        par = _parallel(row, prefix, role, moe=model.num_experts > 0, recipe=recipe)
        engine_batch = (row.get(prefix + "batch_size") or "").strip() == ENGINE_BATCH
        bs = None if engine_batch else _int(row, prefix + "batch_size")
        limits = batching_of(row["backend"], role, bs, isl, budget_vllm, par.dp)
        eng = engine
        if trt is not None:
            eng = engine.with_overrides(
                batch_wait_timeout_iters=trt[1],
                batch_wait_max_tokens_ratio=trt[2],
                adp_balance_timeout_iters=trt[3],
            )
            limits["max_num_batched_tokens"] = trt[0] * par.dp  # per rank (one executor each)
        if vllm is not None:
            eng = engine.with_overrides(  # (None keeps the engine's capture rule)
                overlap_scheduling=True, prefix_caching=False, prefill_graph_max_tokens=vllm[2]
            )
            if vllm[3] is not None:
                eng = eng.with_overrides(
                    allreduce_norm_fusion="vllm", allreduce_fusion_max_mib=vllm[3]
                )
            limits.update(max_num_seqs=vllm[0], max_num_batched_tokens=vllm[1])
        if role == "agg" and scripted and vllm is None:
            # An InferenceX launch runs what its script sets and the engine's own defaults
            # elsewhere: `batching_of`'s figures are aiconfigurator's generator rules, for its
            # own collection. (With the TensorRT-LLM launch read by hand, the script's settings
            # apply too; its batch waiting is the hand-read one, and so is its token budget
            # where the table has none for the script.)
            limits.update(max_num_seqs=None, max_num_batched_tokens=None)
            eng, limits = _apply_script(eng, limits, scripted, row["backend"], par.dp)
            if trt is not None and "token_budget" not in scripted:
                limits["max_num_batched_tokens"] = trt[0] * par.dp
            if scripted.get("prefill_graphs"):
                # TensorRT-LLM replays piecewise CUDA graphs for iterations with prefill
                # tokens, captured up to the script's max_num_tokens (per rank).
                tokens = limits.get("max_num_batched_tokens") or eng.max_num_batched_tokens * par.dp
                eng = eng.with_overrides(prefill_graph_max_tokens=int(tokens) // par.dp)
            unset = row["backend"] == "vllm" and not scripted.get("ar_fusion")
            if unset and vllm_fuses_by_default(row):  # the release's own default on this GPU
                eng = eng.with_overrides(allreduce_norm_fusion="vllm")
        if row["backend"] == "vllm" and vllm is None:  # its release's default, not today's
            eng = eng.with_overrides(overlap_scheduling=vllm_async_by_default(row, par.pp))
        pool_model = model
        if recipe:
            eng, limits = _apply_script(eng, limits, recipe, row["backend"], par.dp)
            if "kv_dtype" in recipe:
                pool_model = model.with_dtypes(kv=str(recipe["kv_dtype"]))
        if role == "agg" and aiconfigurator_mixed_chunk(row):
            eng = eng.with_overrides(mixed_batches=True)
        return Deployment(
            model=pool_model,
            device=device,
            parallel=par,
            engine=eng,
            replicas=_int(row, prefix + "num_workers") if prefix else 1,
            latency_model=latency_model,
            speculative=speculative,
            **limits,
        )

    if mode == "agg":
        return pool("", "agg")
    pre, dec = pool("prefill_", "prefill"), pool("decode_", "decode")
    # KV moves over the scale-up fabric inside one domain (an HGX node's 8 GPUs, a GB200
    # NVL72 rack's 72), over the scale-out network beyond it (`DisaggDeployment.link_kind`).
    return DisaggDeployment(prefill=pre, decode=dec, link="auto")


def pool_settings(row: dict[str, str], prefix: str) -> dict[str, float | str]:
    """The engine settings the srt-slurm recipe of a recovered disaggregated layout gives the
    pool `prefix` (`prefill_` or `decode_`), from data/inferencex/disagg_layouts.csv's
    `*_settings` column (`recovered_layout` copies it into the row): numbers as floats, the KV
    dtype as its name; {} when the row has none."""
    out: dict[str, float | str] = {}
    for pair in (row.get(prefix + "settings") or "").split():
        key, _, value = pair.partition("=")
        try:
            out[key] = value if key in _TEXT_SETTINGS else float(value)
        except ValueError:
            raise ServesimError(
                f"{prefix}settings holds {pair!r}, not key=number; regenerate the layout table "
                "with scripts/inferencex_layouts.py"
            ) from None
    return out


def _apply_script(
    engine: EngineProfile,
    limits: dict[str, int],
    scripted: dict[str, float | str],
    backend: str,
    dp: int,
) -> tuple[EngineProfile, dict[str, int]]:
    """An engine and batch limits with what a launch script fixes (`script_launch`). Each
    engine's memory fraction keeps its own meaning (EngineProfile.mem_util); TensorRT-LLM's
    `max_batch_size` and `max_num_tokens` and vLLM's `max-num-seqs` and
    `max-num-batched-tokens` are per attention-DP rank (one executor or engine each); SGLang's
    `--max-running-requests` and `--chunked-prefill-size` are per server (under DP attention
    it divides the chunk over the ranks, server_args.py)."""
    per_rank = dp if backend in ("trtllm", "vllm") else 1
    limits = dict(limits)
    for field, limit in (("token_budget", "max_num_batched_tokens"), ("max_seqs", "max_num_seqs")):
        if field in scripted:
            limits[limit] = int(scripted[field]) * per_rank
    overrides = {
        setting: kind(scripted[field])
        for field, (setting, kind) in _SCRIPT_ENGINE_SETTINGS.items()
        if field in scripted
    }
    return engine.with_overrides(**overrides), limits


def fusion_mib(text: str) -> tuple[tuple[int, float], ...]:
    """vLLM's fusion input limits as the table writes them ("2:32 4:32 8:8")."""
    pairs = (pair.split(":") for pair in text.split())
    return tuple((int(tp), float(mib)) for tp, mib in pairs)


# vLLM fuses TP all-reduces with the following RMSNorm by default (`enable_allreduce_rms_
# fusion`, at the default -O2) on SM 10.0 from 0.17 (vllm-project/vllm PR #34299, 2026-02-11,
# after 0.16's branch) and on SM 10.3 from 0.19 (PR #37755, 2026-03-21); never on Hopper.
VLLM_DEFAULT_FUSION_FROM = {
    "b200_sxm": (0, 17),
    "gb200": (0, 17),
    "b300_sxm": (0, 19),
    "gb300": (0, 19),
}


def vllm_release(row: dict[str, str]) -> tuple[int, ...]:
    """The vLLM release a row ran, as (major, minor): `engine_release` (its backend_version,
    else its image's tag: a dashboard export's `image=`, a database record's bare image, or the
    image of the InferenceX config it matched); () when none says."""
    version = engine_release(row)
    return tuple(version_key(version)[:2]) if version else ()


def vllm_fuses_by_default(row: dict[str, str]) -> bool:
    """Whether the vLLM release a row ran fuses its all-reduces with the norms by default on
    the row's GPU (`VLLM_DEFAULT_FUSION_FROM`)."""
    since = VLLM_DEFAULT_FUSION_FROM.get(row.get("system", ""))
    release = vllm_release(row)
    return since is not None and bool(release) and release >= since


# vLLM schedules asynchronously by default from 0.14.0 (vllm/config/scheduler.py
# `async_scheduling: bool = Field(default=None)`, which VllmConfig.__post_init__ turns on unless
# pipeline parallelism, a draft method other than EAGLE/MTP or an unsupporting executor rules it
# out); in 0.12 and 0.13 it is False unless `--async-scheduling` is passed.
VLLM_ASYNC_DEFAULT_FROM = (0, 14)


def vllm_async_by_default(row: dict[str, str], pp: int) -> bool:
    """Whether the vLLM release a row ran overlaps scheduling with execution by default."""
    release = vllm_release(row)
    return pp == 1 and bool(release) and release >= VLLM_ASYNC_DEFAULT_FROM


# Recipe settings whose values are names, not numbers.
_TEXT_SETTINGS = frozenset({"kv_dtype", "ar_fusion", "a2a", "moe_backend", "lm_head", "overlap"})

# Launch-script fields that set an EngineProfile field directly: (field, its type).
_SCRIPT_ENGINE_SETTINGS: dict[str, tuple[str, Callable[[str], object]]] = {
    "mem_fraction": ("mem_util", float),
    "graph_max_bs": ("cuda_graph_max_seqs", int),
    "stream_interval": ("stream_interval", int),
    "postprocess_workers": ("postprocess_workers", int),
    "recv_interval": ("recv_interval_steps", int),
    "ar_fusion": ("allreduce_norm_fusion", str),  # SGLang's flag; vLLM's fusion pass
    "ar_fusion_mib": ("allreduce_fusion_max_mib", fusion_mib),  # vLLM's fusion input limits
    "a2a": ("moe_a2a", str),  # SGLang --moe-a2a-backend, TensorRT-LLM's forced all-to-all
    # the output head's split under attention DP (SGLang --enable-dp-lm-head, TensorRT-LLM
    # enable_lm_head_tp_in_adp; recipes only)
    "lm_head": ("lm_head_split", str),
    # the overlap scheduler turned off (TensorRT-LLM disable_overlap_scheduler, SGLang
    # --disable-overlap-schedule; recipes only)
    "overlap": ("overlap_scheduling", lambda text: text != "off"),
    # the KV pool's cap per attention-DP rank (SGLang --max-total-tokens, TensorRT-LLM
    # kv_cache_config.max_tokens; recipes only)
    "kv_tokens": ("max_kv_tokens", lambda value: int(float(value))),
    "moe_backend": ("moe_backend", str),  # TRT-LLM moe_config.backend; vLLM's FlashInfer int4
    "mxfp4_activation": ("mxfp4_activation", str),  # MXFP4 experts' activations (scripts only)
    # TensorRT-LLM attention-DP balancing (recipes only; it acts under attention DP alone)
    "adp_balance_timeout": ("adp_balance_timeout_iters", int),
    # SGLang --disable-radix-cache and the like (scripts only): no hits on these random
    # prompts, but SGLang keeps a hybrid model's overlap schedule only without it
    "prefix_cache": ("prefix_caching", lambda text: text == "on"),
}


def protocol_of(row: dict[str, str]) -> ClientProtocol:
    """The benchmark client that measured a row, from its provenance.

    `db-dump/<date>` rows are InferenceX database records, and `source_file=<date>.csv;
    model=...` rows its dashboard exports (InferenceX's ISL/OSL set 1k/1k, 1k/8k, 8k/1k and
    container images): its benchmark_serving.py client, with warm-up requests from 2026-01-21
    (single-node runs repeat the first prompt; disaggregated ones run srt-slurm's sa-bench,
    whose warm-up is a run of its own).
    `qwen3.5-397b-gap-analysis.csv` rows repeat InferenceX measurements (each matches an
    InferenceX row's TTFT and TPOT to 0.01 ms), so they are InferenceX runs too. The rest
    (`.../aic-auto-gap-analysis/...`) are aiconfigurator's own collection, whose benchmark is
    aiperf. See servesim.sim.clients for the settings' sources.
    """
    src = row.get("silicon_data_source", "")
    if src.startswith("source_file=qwen3.5-397b-gap-analysis.csv"):
        return INFERENCEX
    if src.startswith("db-dump/") or re.match(r"source_file=\d{4}-\d\d-\d\d\.csv;", src):
        if _measured_day(row) < "2026-01-21":
            return INFERENCEX_2025
        return INFERENCEX_MULTINODE if row.get("mode") == "disagg" else INFERENCEX
    return AIPERF


def normalised_row(row: dict[str, str]) -> tuple[dict[str, str], tuple[float, float]]:
    """(row, (measured TTFT ms, measured TPOT ms)): a row with its numbers in one spelling,
    so that matching compares like with like, or a ServesimError naming the bad column.

    Whole numbers in the count columns lose a float spelling (`1024.0` -> `1024`); `nan`,
    `none` and `null` read as not stated (what a data frame writes for a missing value); the
    GPU is the catalog's name for it (`b200` -> `b200_sxm`); the measured TTFT and TPOT must be
    positive, or the row cannot be scored."""
    out = dict(row)
    for key, text in row.items():
        if key not in _COUNT_COLUMNS and not key.endswith(_COUNT_SUFFIXES):
            continue
        text = (text or "").strip()
        if text.lower() in ("nan", "none", "null"):
            out[key] = ""
            continue
        if not text:
            continue
        value = _number(key, text)
        if value < 0 or value != int(value):
            raise ServesimError(f"column {key} holds {text!r}, not a whole number")
        out[key] = str(int(value))
    system = (row.get("system") or "").strip()
    with contextlib.suppress(ServesimError):  # deployment_of names an unknown GPU
        out["system"] = get_device(system).name if system else system
    measured = []
    for key in ("silicon_ttft_ms", "silicon_tpot_ms"):
        try:
            value = float((row.get(key) or "").strip())
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ServesimError(f"row without a positive measured {key} to score against")
        measured.append(value)
    return out, (measured[0], measured[1])


# Columns that hold counts (tokens, GPUs, workers, sequences) in the silicon CSVs.
_COUNT_COLUMNS = frozenset({"isl", "osl"})
_COUNT_SUFFIXES = ("_size", "_num_workers")


def simulate_row(
    row: dict[str, str],
    catalog: Catalog,
    rounds: int,
    warmup_rounds: int = 2,
    jitter_s: float = 0.0,
    budget_vllm: int | None = None,
    latency_model: str = DEFAULT_LATENCY_MODEL,
    protocol: str = "auto",
    releases: bool = True,
) -> tuple[float, float]:
    """Simulated (mean TTFT ms, mean TPOT ms) of one benchmark row.

    The protocol is the row's client (`protocol_of`; or a `servesim.sim.clients` preset by
    name): `concurrency` streaming clients sending the client's measured requests after its
    warm-up phase, with its length spread. `lockstep` is the old closed loop instead: all
    clients at 0, fixed lengths, `rounds × concurrency` measured requests after `warmup_rounds
    × concurrency` uncounted ones in the same loop (`rounds` applies to it only).
    """
    dep = deployment_of(row, catalog, budget_vllm, latency_model, releases)
    clients = concurrency_of(row)
    isl, osl = _int(row, "isl"), _int(row, "osl")
    proto = protocol_of(row) if protocol == "auto" else client_protocol(protocol)
    if proto.name == "lockstep":
        total = clients * (rounds + warmup_rounds)
        loop = ClosedLoop(clients, total, Fixed(isl), Fixed(osl), jitter_s=jitter_s)
        first = clients * warmup_rounds
    else:
        loop = proto.closed_loop(clients, isl, osl, jitter_s=jitter_s)
        first = loop.warmup_requests
    key = _run_key(dep, loop, first)
    if key is not None and key in _RUNS:
        return _RUNS[key]
    res = simulate(dep, closed_loop=loop)
    cols = res.columns()
    measured = slice(first, None)
    ttft = float(np.nanmean(cols["ttft_s"][measured])) * 1e3
    out = ttft, float(np.nanmean(cols["tpot_s"][measured])) * 1e3
    if key is not None:
        _RUNS[key] = out
    return out


# Runs already simulated in this process, by what determines them. The files repeat runs (an
# InferenceX measurement exported on two days, a database record of a dashboard row); the
# simulation is deterministic, so a repeat takes the first one's figures instead of its time.
_RUNS: dict[bytes, tuple[float, float]] = {}


def _run_key(dep: Deployment | DisaggDeployment, loop: ClosedLoop, first: int) -> bytes | None:
    """A digest of everything a row's simulation reads (the deployment, its closed loop and
    where the measured requests start), or None when the deployment cannot be serialised.
    A pool whose KV cache holds every client's longest request at once never runs short of
    it, so its memory fraction is left out (`_unbound_kv`): recipes that differ only there
    (a GB300 prefill pool at 0.4 or 0.1) simulate alike."""
    if isinstance(dep, DisaggDeployment):
        key_dep: object = replace(
            dep, prefill=_unbound_kv(dep.prefill, loop), decode=_unbound_kv(dep.decode, loop)
        )
    else:
        key_dep = _unbound_kv(dep, loop)
    try:
        blob = pickle.dumps((key_dep, loop, first), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    return hashlib.sha256(blob).digest()


# Tokens a request may hold beyond its prompt and output: the last block's rounding, the draft
# slots a speculative step writes and an SGLang decode server's reservation (512), with margin;
# and the share of the cache an engine keeps free (vLLM's watermark: 1 %), with margin.
_KV_SLACK_TOKENS = 1024
_KV_SLACK_SHARE = 1.1


def _unbound_kv(pool: Deployment, loop: ClosedLoop) -> Deployment:
    """`pool` with its engine's memory fraction set to 1 when that cannot matter: a closed loop
    has at most `clients` requests in the system, so a KV cache (per attention-DP rank) that
    holds them all at their longest is never full, whatever the fraction (which sizes nothing
    else: `memory_layout`). Otherwise, or when the layout cannot be computed, `pool` itself."""
    try:
        mem = pool.memory()
    except (ServesimError, ValueError, AttributeError):
        return pool
    longest = int(loop.prompt_tokens.max()) + int(loop.output_tokens.max()) + _KV_SLACK_TOKENS
    if mem.kv_tokens / max(pool.parallel.dp, 1) < _KV_SLACK_SHARE * loop.clients * longest:
        return pool
    return replace(pool, engine=replace(pool.engine, mem_util=1.0))


def ape_stats(errors: list[float]) -> tuple[float, float]:
    """(median, p90) of absolute percentage errors."""
    if not errors:
        return float("nan"), float("nan")
    a = np.abs(np.asarray(errors))
    return float(np.median(a)), float(np.percentile(a, 90))


def _given(row: dict[str, str], key: str) -> bool:
    """Whether a column holds a positive number (empty and 0 mean "not stated")."""
    text = (row.get(key) or "").strip()
    try:
        return float(text) > 0
    except ValueError:
        return False


INFERENCEX_LAYOUTS = ROOT / "data" / "inferencex" / "disagg_layouts.csv"
# InferenceX config names (`<model-prefix>-<precision>-<gpu>-<framework>`) → the rows' names
# (the GPUs of InferenceX's NVIDIA master config as aiconfigurator names its systems).
INFERENCEX_GPU = {
    "b200": "b200_sxm",
    "b300": "b300_sxm",
    "h100": "h100_sxm",
    "h200": "h200_sxm",
    "gb200": "gb200",
    "gb300": "gb300",
}
INFERENCEX_FRAMEWORK = {"dynamo-trt": "trtllm", "dynamo-sglang": "sglang", "dynamo-vllm": "vllm"}
# InferenceX model prefixes (MODELS.md) by the start of a model's name with case and
# punctuation dropped: dashboard names (`DeepSeek-R1`, `Qwen3.5-397B`, `Kimi-K2.5`,
# `MiniMax-M2.5`, `gpt-oss-120b`, `GLM-5`; InferenceX-app's data-mappings.ts) and checkpoint
# paths (`deepseek-ai/DeepSeek-V3`, `nvidia/Kimi-K2.5-NVFP4`, `openai/gpt-oss-120b`). Its
# DeepSeek runs serve DeepSeek-R1-0528, which has DeepSeek-V3's architecture; the more
# specific names come first (GLM-5.1 before GLM-5). Llama-3.1-70B predates the master config.
INFERENCEX_MODEL_NAMES = (
    ("deepseekr1", "dsr1"),
    ("deepseekv3", "dsr1"),
    ("qwen35397b", "qwen3.5"),
    ("kimik25", "kimik2.5"),
    ("minimaxm25", "minimaxm2.5"),
    ("gptoss120b", "gptoss"),
    ("glm51", "glm5.1"),
    ("glm5", "glm5"),
)


def inferencex_prefix(name: str) -> str:
    """The InferenceX model prefix of a dashboard model name or checkpoint path, '' if none."""
    key = re.sub(r"[^a-z0-9]", "", name.rsplit("/", 1)[-1].lower())
    return next((prefix for start, prefix in INFERENCEX_MODEL_NAMES if key.startswith(start)), "")


def in_effect(days: str, day: str) -> int | None:
    """Which of an InferenceX table item's runs of days (`D` or `D1..D2`, space-separated)
    covers `day` (YYYY-MM-DD), or None."""
    for i, run in enumerate(days.split()):
        first, _, last = run.partition("..")
        if first <= day <= (last or first):
            return i
    return None


@functools.cache
def inferencex_layouts(path: Path = INFERENCEX_LAYOUTS) -> tuple[dict[str, str], ...]:
    """The bundled table of InferenceX's disaggregated deployments, made by
    scripts/inferencex_layouts.py."""
    with open(path, newline="") as f:
        return tuple(csv.DictReader(f))


INFERENCEX_SWEEPS = ROOT / "data" / "inferencex" / "changelog_sweeps.csv"
T = TypeVar("T")


@functools.cache
def inferencex_sweeps(path: Path = INFERENCEX_SWEEPS) -> dict[str, tuple[re.Pattern[str], ...]]:
    """UTC day → the config-name patterns InferenceX's changelog-driven sweeps ran that day
    (scripts/inferencex_sweeps.py; `*` matches anything, the whole name must match, as
    `get_config_keys_from_master` in InferenceX's utils/process_changelog.py reads them)."""
    days: dict[str, list[re.Pattern[str]]] = defaultdict(list)
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            for key in rec["config_keys"].split():
                days[rec["day"]].append(re.compile(re.escape(key).replace(r"\*", ".*")))
    return {day: tuple(found) for day, found in days.items()}


def swept(items: list[T], day: str, key_of: Callable[[T], str]) -> tuple[list[T], str]:
    """(items, note): of a row's candidate InferenceX items, those whose config a changelog
    sweep ran on the measured day (UTC), with a note naming the day; all of them and '' when
    that keeps all or none.

    From 2025-12-15 InferenceX benchmarks on a push that adds `perf-changelog.yaml` entries,
    and then only the configs those entries name (.github/workflows/run-sweep.yml,
    utils/process_changelog.py), so a row measured that day is one of them: a dashboard
    export's `measured` time is the push's, seconds later (2026-01-14T22:26:21Z for the push
    of 22:26:18). This settles rows that a plain config and its MTP twin (`...-mtp`) both
    explain: on 2026-01-14 only TensorRT-LLM `-mtp` configs were swept. On every day of the dev
    file's rows that a sweep covers, the config a row matches alone was among them (NOTES)."""
    if not day or len(items) < 2:
        return items, ""
    patterns = inferencex_sweeps().get(day, ())
    kept = [i for i in items if any(p.fullmatch(key_of(i)) for p in patterns)]
    if not kept or len(kept) == len(items):
        return items, ""
    return kept, f"; swept on {day} by InferenceX's perf-changelog"


def _pool_columns(row: dict[str, str], layout: dict[str, str], pool: str) -> dict[str, str]:
    """A pool's row columns in this file's convention from an InferenceX item: with
    attention DP, `tp` GPUs are `tp` DP ranks of attention TP 1; experts are split `ep` ways
    and tensor-parallel over the rest (moe_tp = tp / ep)."""
    tp, ep = int(layout[f"{pool}_tp"]), int(layout[f"{pool}_ep"])
    dp = tp if layout[f"{pool}_dp_attn"] == "True" else 1
    return {
        f"{pool}_settings": layout.get(f"{pool}_settings", ""),
        f"{pool}_num_workers": layout[f"{pool}_workers"],
        f"{pool}_batch_size": layout[f"{pool}_max_batch"] or ENGINE_BATCH,
        f"{pool}_tp_size": str(tp // dp),
        f"{pool}_pp_size": "1",
        f"{pool}_attention_dp_size": str(dp),
        f"{pool}_moe_tp_size": str(tp // ep),
        f"{pool}_moe_ep_size": str(ep),
    }


def speculation_refusal(spec: str, drafts: object) -> str:
    """Why an InferenceX config's speculative decoding cannot be simulated ('' when it can:
    none, or MTP with a known draft length)."""
    if spec not in ("none", "mtp"):
        return f"InferenceX config uses {spec} speculative decoding, not modelled"
    if spec == "mtp" and not drafts:
        return "InferenceX config's MTP draft length is not public"
    return ""


def recovered_layout(
    row: dict[str, str], table: tuple[dict[str, str], ...] | None = None
) -> tuple[dict[str, str], str, str]:
    """(row, layout_source, refusal): an InferenceX disaggregated row without worker counts
    completed from the deployment InferenceX's config listed for it, else why not.

    Only `source_file=<date>.csv` dashboard rows whose prefill/decode worker counts or batch
    sizes are empty are looked up; other rows come back unchanged with ('', ''). A table item
    matches when model, GPU, framework, precision, ISL/OSL, the measured day and (when the row
    names one) the container image agree; the row's concurrency is one its srt-slurm recipe
    benchmarks (InferenceX submits the recipe as it is, so the config's `conc-list` is nominal
    there, e.g. 4 for a recipe of 9 decode workers that runs 36 clients) or, without a recipe,
    in its conc-list; and its prefill tp/ep and decode tp equal the row's (the rows repeat the
    prefill ep in their decode ep and leave dp-attention at 1, so those two columns say
    nothing); where none does and both tp columns hold the same number, that number is read as
    the deployment's GPUs (workers × tp over both pools: December 2025 exports write it so).
    The match must be one layout (speculative decoding and its draft length are part of it)
    with the recipe's batch sizes; its layout replaces the row's pool
    columns, its recipe's engine flags come along as `prefill_settings` / `decode_settings`
    (`pool_settings`, applied by `deployment_of` like a colocated launch script's), and an
    MTP config adds `speculative_num_draft_tokens`.
    """
    src = row.get("silicon_data_source", "")
    if (row.get("mode") or "").strip() != "disagg" or not src.startswith("source_file="):
        return row, "", ""
    if all(
        _given(row, f"{pool}_{key}")
        for pool in ("prefill", "decode")
        for key in ("num_workers", "batch_size")
    ):
        return row, "", ""
    fields = source_fields(row)
    day = fields["measured"][:10]
    pools = {
        "prefill_tp": row.get("prefill_tp_size", ""),
        "prefill_ep": row.get("prefill_moe_ep_size", ""),
        "decode_tp": row.get("decode_tp_size", ""),
    }
    items = _disagg_items(row, fields, table)
    fits = [item for item in items if all(item[k] == v for k, v in pools.items())]
    total = ""
    if not fits and _float(pools["prefill_tp"]) == _float(pools["decode_tp"]) > 0:
        # Some dashboard exports (rows measured in December 2025) state the deployment's total
        # GPU count in both tp columns: prefill 1 x 4 + decode 1 x 32 GPUs reads "36" / "36".
        n = _float(pools["prefill_tp"])
        fits = [item for item in items if _item_gpus(item) == n]
        total = f"; the row's tp {n:g} read as the deployment's GPUs"
    matches = _layouts_of(fits)
    if len(matches) > 1:  # the day's changelog sweeps may say which of them ran
        fits, note = swept(fits, day, operator.itemgetter("config_key"))
        matches, total = _layouts_of(fits), total + note
    if not matches:
        return row, "", "no InferenceX config matches"
    if len(matches) > 1:
        return row, "", f"{len(matches)} InferenceX configs match"
    item = next(iter(matches.values()))
    spec = item["spec_decoding"]
    refusal = speculation_refusal(spec, item["num_draft_tokens"])
    if refusal:
        return row, "", refusal
    run = in_effect(item["days_in_effect"], day) or 0
    public = item["recipe"] and item["recipe_commits"].split()[run] != "-"
    if not (item["prefill_max_batch"] and item["decode_max_batch"]) and not public:
        return row, "", "InferenceX config's srt-slurm recipe (batch sizes) is not public"
    commit = item["source_commits"].split()[run]
    filled = {**row, **_pool_columns(row, item, "prefill"), **_pool_columns(row, item, "decode")}
    if not fields["image"]:
        filled["matched_image"] = item["image"].replace("#", "/")  # `row_image` reads it
    if spec == "mtp":  # the decode workers draft with DeepSeek's MTP head
        filled["speculative_num_draft_tokens"] = item["num_draft_tokens"]
    where = f"{item['source_file']}@{commit}"
    if item["recipe"]:
        rc = item["recipe_commits"].split()[run]
        where += f" ({item['config_key']}; recipe {item['recipe']}@srt-slurm {rc})"
    return filled, f"layout recovered from InferenceX config {where}{total}", ""


def stated_layout_settings(
    row: dict[str, str], table: tuple[dict[str, str], ...] | None = None
) -> tuple[dict[str, str], str, str]:
    """(row, note, refusal): an InferenceX disaggregated row that states its own layout
    (database records, `db-dump/...`, and exports with worker counts) completed from the
    InferenceX items in effect that day for its model, GPU, framework, precision, ISL/OSL,
    clients and image with the same workers, TP, attention DP and EP in both pools: their
    speculative decoding (an MTP config's draft length), their srt-slurm recipe's engine flags
    (`prefill_settings` / `decode_settings`) and, for a database record, the recipe's batch
    limits. Items that differ only in flags or batch limits leave the row as stated; items
    that differ in speculative decoding make the row ambiguous (refused, like a dashboard row
    two configs match). It refines a stated deployment, so for an export no match is not a
    refusal; a database record's batch columns are placeholders, so a record whose items do not
    give one set of batch limits is refused."""
    src = row.get("silicon_data_source", "")
    if (row.get("mode") or "").strip() != "disagg" or row.get("prefill_settings"):
        return row, "", ""
    if not (src.startswith("db-dump/") or src.startswith("source_file=2")):
        return row, "", ""
    fields = source_fields(row)
    day = fields["measured"][:10]
    keys = ("num_workers", "tp_size", "attention_dp_size", "moe_ep_size")
    fits = []
    for item in _disagg_items(row, fields, table):
        cols = {**_pool_columns(row, item, "prefill"), **_pool_columns(row, item, "decode")}
        if _config_allows(item, row) and all(
            _float(cols[f"{pool}_{k}"]) == _float(row.get(f"{pool}_{k}", ""))
            for pool in ("prefill", "decode")
            for k in keys
        ):
            fits.append(item)
    sweep_note = ""
    if len({tuple(item[k] for k in _STATED_KEYS) for item in fits}) > 1:
        # Items that differ: the day's changelog sweeps may say which of them ran.
        fits, sweep_note = swept(fits, day, operator.itemgetter("config_key"))
    found: dict[tuple[str, ...], dict[str, str]] = {}
    for item in fits:
        found.setdefault(tuple(item[k] for k in _STATED_KEYS), item)
    specs = {(item["spec_decoding"], item["num_draft_tokens"]) for item in found.values()}
    if len(specs) > 1:
        return row, "", f"{len(found)} InferenceX configs match"
    # A database record of a disaggregated run does not hold the engines' batch limits: its
    # prefill batch is 1 in every record (the recipes' context servers take 1-64 requests a
    # rank) and its decode batch is the clients over the decode ranks (370 clients on 5
    # workers: 74, where the recipe's generation servers take 64). Only a recipe's stand.
    record = src.startswith("db-dump/")
    limits = {(i["prefill_max_batch"], i["decode_max_batch"]) for i in found.values()}
    batches = limits.pop() if len(limits) == 1 else ("", "")
    if record and not all(batches):
        return row, "", "database record whose recipe's batch limits are not known"
    if not specs:
        return row, "", ""
    spec, drafts = specs.pop()
    refusal = speculation_refusal(spec, drafts)
    if refusal:
        return row, "", refusal
    out, notes = dict(row), []
    if spec == "mtp":  # the decode workers draft with DeepSeek's MTP head
        out["speculative_num_draft_tokens"] = drafts
        notes.append(f"MTP with {drafts} draft tokens")
    if row.get("config_spec"):
        notes.append(f"{spec} as config_id {config_id_of(row)}'s other records")
    if sweep_note:
        notes.append(sweep_note.removeprefix("; "))
    if len(found) == 1:
        item = next(iter(found.values()))
        run = in_effect(item["days_in_effect"], day) or 0
        if item["prefill_settings"] or item["decode_settings"]:
            out["prefill_settings"] = item["prefill_settings"]
            out["decode_settings"] = item["decode_settings"]
            if item["recipe"]:
                rc = item["recipe_commits"].split()[run]
                notes.append(f"engine flags from {item['recipe']}@srt-slurm {rc}")
            else:  # an early item's `additional-settings` (inferencex_layouts.CONFIG_SETTINGS)
                sc = item["source_commits"].split()[run]
                notes.append(f"engine limits from {item['config_key']}@{sc}'s settings")
    if record:  # the recipe's (or config's) batch limits replace the record's placeholders
        out["prefill_batch_size"], out["decode_batch_size"] = batches
        notes.append(f"batch {batches[0]} / {batches[1]} a rank from it")
    return out, "; ".join(notes), ""


# What `stated_layout_settings` tells apart among items of one stated layout.
_STATED_KEYS = (
    "spec_decoding",
    "num_draft_tokens",
    "prefill_settings",
    "decode_settings",
    "prefill_max_batch",
    "decode_max_batch",
)


def config_id_of(row: dict[str, str]) -> str:
    """A database record's `config_id` (InferenceX-app's `configs` row), else ""."""
    src = row.get("silicon_data_source", "")
    found = re.search(r"config_id=(\d+)", src) if src.startswith("db-dump/") else None
    return found.group(1) if found else ""


def _config_allows(item: dict[str, str], row: dict[str, str]) -> bool:
    """Whether an InferenceX item can be the record's config: its speculative method is the
    one the config's other records settled on (`config_spec`), when known."""
    spec = row.get("config_spec")
    return not spec or item["spec_decoding"] == spec


def layout_of(row: dict[str, str]) -> tuple[dict[str, str], str, str]:
    """(row, layout_source, refusal) from InferenceX's configs: a dashboard export's recovered
    disaggregated layout, a colocated row's config, or a stated layout's recipe flags."""
    row, source, refusal = recovered_layout(row)
    if not refusal and not source:
        row, source, refusal = single_node_config(row)
    if not refusal and not source:
        row, source, refusal = stated_layout_settings(row)
    return row, source, refusal


def config_specs(rows: list[dict[str, str]]) -> dict[str, str]:
    """config_id -> the speculative method its database records settle on.

    InferenceX's database keys a config by hardware, framework, model, precision, speculative
    method, disaggregation and each pool's TP, EP, attention DP and workers (InferenceX-app
    packages/db/migrations/001_initial_schema.sql, `configs_natural_key`), so every record of
    one `config_id` ran the same speculative method. Where the configs table matches some of a
    config's records to one method and none to another, that method is the config's; records
    that two methods match take it (`config_spec`). The draft length is not in the key, so it
    still comes from the matched item alone."""
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        cid = config_id_of(row)
        if not cid:
            continue
        with contextlib.suppress(ServesimError):
            out, source, refusal = layout_of(normalised_row(row)[0])
            if source and not refusal:  # matched to InferenceX items of one method
                seen[cid].add("mtp" if out.get("speculative_num_draft_tokens") else "none")
    return {cid: specs.pop() for cid, specs in seen.items() if len(specs) == 1}


def source_fields(row: dict[str, str]) -> dict[str, str]:
    """A row's provenance (`silicon_data_source`, `key=value; ...`) as a dict with at least
    `measured`, `image` (as the configs spell it, `/` not `#`) and `model`: database records
    (`db-dump/...`) end with their bare image and name the model by its checkpoint path."""
    src = row.get("silicon_data_source", "")
    parts = [p.strip() for p in src.split(";")]
    fields = dict(p.split("=", 1) for p in parts if "=" in p)
    if src.startswith("db-dump/"):
        fields.setdefault("image", parts[-1] if "=" not in parts[-1] else "")
    fields.setdefault("model", row.get("model_path", ""))
    fields.setdefault("measured", "")
    fields["image"] = fields.get("image", "").replace("#", "/")
    return fields


def _disagg_items(
    row: dict[str, str], fields: dict[str, str], table: tuple[dict[str, str], ...] | None
) -> list[dict[str, str]]:
    """The disaggregated InferenceX items a row could have measured, whatever their layout:
    same model, GPU, framework, precision and ISL/OSL, in effect on the measured day, running
    the row's clients (the recipe's, else the config's list) and, when the row names one, in
    its container image."""
    day, image, conc = fields["measured"][:10], fields["image"], str(concurrency_of(row))
    want = {
        "model_prefix": inferencex_prefix(fields["model"]),
        "precision": row.get("precision", ""),
        "isl": row.get("isl", ""),
        "osl": row.get("osl", ""),
    }
    return [
        item
        for item in (table if table is not None else inferencex_layouts())
        if INFERENCEX_GPU.get(item["gpu"]) == row.get("system")
        and INFERENCEX_FRAMEWORK.get(item["framework"]) == row.get("backend")
        and all(item[k] == v for k, v in want.items())
        and in_effect(item["days_in_effect"], day) is not None
        and conc in (item["recipe_concurrencies"] or item["concurrencies"]).split()
        and (not image or item["image"].replace("#", "/") == image)
    ]


def _float(text: str) -> float:
    """A column's number (0 when empty or not a number)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def _item_gpus(item: dict[str, str]) -> float:
    """GPUs of an InferenceX disaggregated item: workers × tp of both pools."""
    return sum(
        _float(item[f"{pool}_workers"]) * _float(item[f"{pool}_tp"])
        for pool in ("prefill", "decode")
    )


def _layouts_of(items: Iterable[dict[str, str]]) -> dict[tuple[str, ...], dict[str, str]]:
    """Distinct layouts (`_LAYOUT_KEYS`) among InferenceX items, the first item of each."""
    out: dict[tuple[str, ...], dict[str, str]] = {}
    for item in items:
        out.setdefault(tuple(item[k] for k in _LAYOUT_KEYS), item)
    return out


# What makes two InferenceX items the same deployment: speculative decoding and each pool's
# workers, TP, EP, DP-attention and batch (the table's columns, scripts/inferencex_layouts.py).
_LAYOUT_KEYS = (
    "spec_decoding",
    "num_draft_tokens",
    *(
        f"{pool}_{key}"
        for pool in ("prefill", "decode")
        for key in ("workers", "tp", "ep", "dp_attn", "max_batch", "settings")
    ),
)


INFERENCEX_SINGLE_NODE = ROOT / "data" / "inferencex" / "single_node_configs.csv"
INFERENCEX_SINGLE_FRAMEWORK = {"trt": "trtllm", "sglang": "sglang", "vllm": "vllm"}


@functools.cache
def inferencex_single_node(path: Path = INFERENCEX_SINGLE_NODE) -> tuple[dict[str, str], ...]:
    """The bundled table of InferenceX's colocated deployments, made by
    scripts/inferencex_single_node.py."""
    with open(path, newline="") as f:
        return tuple(csv.DictReader(f))


def _single_node_layout(item: dict[str, str], row: dict[str, str], conc: int) -> dict[str, str]:
    """A colocated row's parallel columns from an InferenceX item: `tp` GPUs, which under
    dp-attention are `tp` DP ranks of attention TP 1; experts split `ep` ways, TP over the
    rest; each DP rank holds its share of the clients."""
    tp, ep = int(item["tp"]), int(item["ep"])
    dp = tp if item["dp_attn"] == "True" else 1
    return {
        **row,
        "tp_size": str(tp // dp),
        "attention_dp_size": str(dp),
        "moe_ep_size": str(ep),
        "moe_tp_size": str(tp // ep),
        "batch_size": str(-(-conc // dp)),
    }


# Before InferenceX's candidate search space (commit 17d5e204f, 2025-11-03) its launch scripts
# chose expert parallelism and attention DP themselves from TP, ISL/OSL and the concurrency
# (benchmarks/dsr1_fp4_b200_trt_slurm.sh and dsr1_fp8_h200_trt_slurm.sh at e06929c70), the
# dashboard rows keep only the inputs (tp, ep 1), and no DeepSeek script drafted with MTP (it
# was removed on 2025-09-07, commit 294fe5f27, and came back on 2026-01-15).
SEARCH_SPACE_DAY = "2025-11-03"
# The first day no InferenceX launch script drafted (294fe5f27 removed the last MTP setting
# on 2025-09-07; `git grep -i "speculative|mtp|eagle" benchmarks/` finds none again until
# the search space): rows from then until the search space ran without speculative decoding.
NO_DRAFT_DAY = "2025-09-08"


def _measured_day(row: dict[str, str]) -> str:
    """The day a row was measured (YYYY-MM-DD), or empty when the source does not say."""
    m = re.search(r"measured=(\d{4}-\d\d-\d\d)", row.get("silicon_data_source", ""))
    return m.group(1) if m else ""


def inferencex_2025_trt_layout(row: dict[str, str]) -> dict[str, str] | None:
    """A colocated DeepSeek-R1 TensorRT-LLM row measured before the search space (see
    SEARCH_SPACE_DAY) with the layout its launch script chose, or None for other rows.

    dsr1_fp4_b200_trt_slurm.sh: EP = TP above 32 clients at TP 4 (above 8 at TP 8 for 1k/1k,
    16 for 1k/8k, 32 for 8k/1k), attention DP from 256 clients (above 32 at 8k/1k, with EP);
    dsr1_fp8_h200_trt_slurm.sh: EP = TP always, attention DP above 64 clients (32 at 8k/1k)."""
    day = _measured_day(row)
    if not day or day >= SEARCH_SPACE_DAY or row.get("backend") != "trtllm":
        return None
    if (row.get("mode") or "agg") != "agg" or "deepseek" not in row["model_path"].lower():
        return None
    tp = _int(row, "tp_size") * max(1, _int(row, "attention_dp_size"))
    isl, osl, conc = _int(row, "isl"), _int(row, "osl"), concurrency_of(row)
    shape = {(1024, 1024): "1k1k", (1024, 8192): "1k8k", (8192, 1024): "8k1k"}.get((isl, osl))
    system, precision = row.get("system", ""), row.get("precision", "")
    if shape is None or tp not in (4, 8):
        return None
    if system.startswith("b200") and precision == "fp4":
        ep_above = {4: {"1k1k": 32, "1k8k": 32, "8k1k": 32}, 8: {"1k1k": 8, "1k8k": 16, "8k1k": 32}}
        ep = tp if conc > ep_above[tp][shape] else 1
        dp = conc > 32 if shape == "8k1k" else conc >= 256
    elif system.startswith("h200") and precision == "fp8":
        ep = tp
        dp = conc > (32 if shape == "8k1k" else 64)
    else:
        return None
    return _single_node_layout({"tp": str(tp), "ep": str(ep), "dp_attn": str(dp)}, row, conc)


TWIN_KEYS = ("system", "backend", "precision", "isl", "osl", "tp_size")


def date_twins(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows, each Qwen3.5 gap-analysis row (an InferenceX run repeated without its day or
    image) given the day and image of its dashboard twins in the same file (`twin_measured`,
    `twin_image`): the dashboard rows of the same system, engine, precision, lengths, TP and
    clients whose measured TTFT and TPOT are the same to 0.01 ms, when they agree on one day
    and image. Measured values only identify the run here; nothing is fitted to them."""

    def key(r: dict[str, str]) -> tuple[str, ...]:
        try:
            clients = str(concurrency_of(r))
        except (ValueError, ServesimError):  # not a number: refused later with the reason
            clients = ""
        return (*(r.get(k, "") for k in TWIN_KEYS), clients)

    def measured(r: dict[str, str]) -> tuple[float, float] | None:
        try:
            return float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"])
        except (KeyError, ValueError):
            return None

    index: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if re.match(r"source_file=\d{4}-\d\d-\d\d\.csv;", r.get("silicon_data_source", "")):
            index[key(r)].append(r)
    out = []
    for r in rows:
        mine = measured(r)
        if mine and r.get("silicon_data_source", "").startswith(
            "source_file=qwen3.5-397b-gap-analysis"
        ):
            seen = set()
            for t in index[key(r)]:
                theirs = measured(t)
                if theirs and all(abs(a - b) < 0.01 for a, b in zip(theirs, mine, strict=True)):
                    image = re.search(r"image=([^;]*)", t["silicon_data_source"])
                    seen.add((_measured_day(t), image.group(1).strip() if image else ""))
            day, image = seen.pop() if len(seen) == 1 else ("", "")
            if day:
                r = {**r, "twin_measured": day, "twin_image": image}
        out.append(r)
    return out


def single_node_config(
    row: dict[str, str], table: tuple[dict[str, str], ...] | None = None
) -> tuple[dict[str, str], str, str]:
    """(row, layout_source, refusal): which InferenceX colocated config measured a dashboard
    row, so a run with speculative decoding is not predicted as one without it.

    The dashboard rows do not say whether MTP ran, and InferenceX benchmarks most DeepSeek-R1
    and Qwen3.5 deployments both ways, with container images that differ (e.g. TRT-LLM
    1.2.0rc6.post2 without MTP, post3 with it on B200 in February 2026); their TPOTs differ by
    up to 2×. An item of data/inferencex/single_node_configs.csv matches a row when model, GPU,
    framework, precision, ISL/OSL, the measured day, the image (when the row names one) and the
    concurrency agree and the GPUs do: the row's tp × attention-DP, EP and dp-attention are the
    item's, or the row reports the item's tp × ep GPUs (some exports multiply TP or DP by EP),
    in which case the item's layout replaces the row's. A row that states its TP but leaves EP
    and attention DP at 1 (early database records do, e.g. config_id 88 on 2025-11-10 while the
    launch script passed the config's `--ep-size 4`) takes the layout of the configs run at that
    TP when no config matches it exactly. All matches must agree on speculative
    decoding and draft length; MTP runs are simulated with that draft length (the launch
    script's, `scripts/inferencex_single_node.py`), rows no config or several kinds match are
    refused.
    The Qwen3.5 gap-analysis file repeats InferenceX runs without their day or image: such a
    row takes its dashboard twin's (`date_twins`), and without one any day's config may match.
    Other rows (aiconfigurator's collection, other models) come back unchanged with ('', '').
    """
    src = row.get("silicon_data_source", "")
    dump = src.startswith("db-dump/")
    gap = src.startswith("source_file=qwen3.5-397b-gap-analysis.csv")
    if (row.get("mode") or "agg").strip() != "agg" or not (
        dump or gap or re.match(r"source_file=\d{4}-", src)
    ):
        return row, "", ""
    fields = source_fields(row)
    if gap:  # the gap-analysis file names the model by its path and gives no image
        fields["model"], fields["image"] = row.get("model_path", ""), ""
        if row.get("twin_measured"):
            fields["measured"] = row["twin_measured"]
            fields["image"] = row.get("twin_image", "").replace("#", "/")
    prefix = inferencex_prefix(fields["model"])
    if not prefix:
        return row, "", ""
    day = fields["measured"][:10]
    image = fields["image"]
    conc = concurrency_of(row)
    tp, dp, ep = (max(1, _int(row, k)) for k in ("tp_size", "attention_dp_size", "moe_ep_size"))
    matches: list[tuple[dict[str, str], bool]] = []
    unstated: list[dict[str, str]] = []
    for item in table if table is not None else inferencex_single_node():
        if not (
            item["model_prefix"] == prefix
            and INFERENCEX_GPU.get(item["gpu"]) == row.get("system")
            and INFERENCEX_SINGLE_FRAMEWORK.get(item["framework"]) == row.get("backend")
            and item["precision"] == row.get("precision")
            and (item["isl"], item["osl"]) == (row.get("isl"), row.get("osl"))
            and (not day or in_effect(item["days_in_effect"], day) is not None)
            and (not image or item["image"].replace("#", "/") == image)
            and str(conc) in item["concurrencies"].split()
        ):
            continue
        i_tp, i_ep, i_dp = int(item["tp"]), int(item["ep"]), item["dp_attn"] == "True"
        if (tp * dp, ep, dp > 1) == (i_tp, i_ep, i_dp):
            matches.append((item, False))
        elif i_ep > 1 and tp * dp == i_tp * i_ep and ep == i_ep:
            matches.append((item, True))
        elif (ep, dp) == (1, 1) and tp == i_tp and (i_ep > 1 or i_dp):
            unstated.append(item)  # the row left EP and DP at their defaults
    if not matches:  # the config's own layout where the row states only its TP
        matches = [(item, True) for item in unstated]
    matches = [(item, r) for item, r in matches if _config_allows(item, row)]
    kinds = {(item["spec_decoding"], item["num_draft_tokens"]) for item, _ in matches}
    sweep_note = ""
    if len(kinds) > 1 or len({(m["tp"], m["ep"], m["dp_attn"]) for m, _ in matches}) > 1:
        # The day's changelog sweeps may say which of them ran.
        matches, sweep_note = swept(matches, day, lambda m: m[0]["config_key"])
        kinds = {(item["spec_decoding"], item["num_draft_tokens"]) for item, _ in matches}
    if not matches:
        early = inferencex_2025_trt_layout(row)
        if early is not None:
            where = "dsr1 TensorRT-LLM launch script before the search space (e06929c70)"
            return early, f"no speculative decoding, layout from the {where}", ""
        if day and NO_DRAFT_DAY <= day < SEARCH_SPACE_DAY:
            # No config table yet: the row's own layout, and no script drafted then.
            return row, "before InferenceX's search space: the row's layout, no drafting", ""
        return row, "", "no InferenceX config matches"
    if len(kinds) > 1:
        return row, "", f"{len(kinds)} InferenceX configs match"
    ((spec, k),) = kinds
    refusal = speculation_refusal(spec, k)
    if refusal:
        return row, "", refusal
    item, remapped = matches[0]
    if len({(m["tp"], m["ep"], m["dp_attn"]) for m, _ in matches}) > 1:
        return row, "", f"{len(matches)} InferenceX configs match"
    run = in_effect(item["days_in_effect"], day) if day else None
    commit = item["source_commits"].split()[-1 if run is None else run]
    where = f"{item['config_key']} in {item['source_file']}@{commit}{sweep_note}"
    out = _single_node_layout(item, row, conc) if remapped else dict(row)
    if row.get("config_spec"):
        where += f"; {spec} as config_id {config_id_of(row)}'s other records"
    if not source_fields(row)["image"] and len({m["image"] for m, _ in matches}) == 1:
        out["matched_image"] = item["image"].replace("#", "/")  # `row_image` reads it
    if item.get("script") and len({m.get("script") for m, _ in matches}) == 1:
        # What the launch script passes its engine (`script_launch`), for the GPUs it ran on.
        out.update({f"launch_{f}": item[f] for f in LAUNCH_FIELDS})
        out["launch_gpus"], out["launch_ep"] = item["tp"], item["ep"]
    if spec == "mtp":  # simulated with the launch script's draft length, sourced acceptance
        out["speculative_num_draft_tokens"] = k
        return out, f"MTP k={k}{', layout recovered' if remapped else ''}: {where}", ""
    if not remapped:
        return out, f"no speculative decoding: {where}", ""
    return out, f"layout recovered from {where}", ""


def specified_or_reason(row: dict[str, str], benchmarked_clients: bool = False) -> str:
    """Empty if the row states its whole deployment, else why it is refused (one phrase per
    kind, so refusals count by reason; the module docstring says what each mode needs).

    `benchmarked_clients`: the layout and the client count both come from the deployment's
    own benchmark config (`recovered_layout`), so clients beyond the decode slots are the
    queue that benchmark really had, not a sign of unstated workers."""
    if stated_concurrency(row) is None:
        # aiconfigurator's benchmark sweeps several client counts per deployment (bench_run.sh.j2:
        # 1, 2, 8, 16, 32, 64, 128 and its estimate ±5 %), so the batch size does not say which ran.
        return "row states no client count (silicon_concurrency)"
    mode = (row.get("mode") or "agg").strip() or "agg"
    clients = concurrency_of(row)
    if mode == "disagg":
        missing = [
            f"{pool}_{key}"
            for pool in ("prefill", "decode")
            for key in ("num_workers", "batch_size", "tp_size")
            if not _given(row, f"{pool}_{key}")
        ]
        engine = [k for k in missing if k.endswith("batch_size") and row.get(k) == ENGINE_BATCH]
        missing = [k for k in missing if k not in engine]
        if any(k.endswith(("num_workers", "batch_size")) for k in missing):
            return "disagg row without worker counts or batch sizes"
        if missing:
            return "disagg row without tensor-parallel sizes"
        if "decode_batch_size" in engine:
            return ""  # the engine's own limit, thousands of sequences: no clients to compare
        slots = (
            _int(row, "decode_batch_size")
            * _int(row, "decode_num_workers")
            * max(1, _int(row, "decode_attention_dp_size"))
        )
        if clients > slots and not benchmarked_clients:
            return "disagg row with more clients than decode batch slots"
        return ""
    if mode != "agg":
        return ""  # deployment_of names the unknown mode
    if not _given(row, "batch_size"):
        return "agg row without batch_size"
    if not _given(row, "tp_size"):
        return "agg row without tp_size"
    slots = _int(row, "batch_size") * max(1, _int(row, "attention_dp_size"))
    if clients > slots:
        return "agg row with concurrency above batch_size × attention_dp and no replica count"
    return ""


# What every row must have: its identity, deployment kind and the measured figures.
REQUIRED_COLUMNS = (
    "id",
    "silicon_data_source",
    "backend",
    "model_path",
    "system",
    "mode",
    "isl",
    "osl",
    "silicon_ttft_ms",
    "silicon_tpot_ms",
)

ROWS_OUT_FIELDS = (
    "id",
    "system",
    "mode",
    "backend",
    "model_path",
    "isl",
    "osl",
    "precision",
    "concurrency",
    "measured_ttft_ms",
    "predicted_ttft_ms",
    "measured_tpot_ms",
    "predicted_tpot_ms",
    "status",
    "layout_source",
    "wall_s",
    "cpu_s",
    "file",
)


def precision_label(row: dict[str, str]) -> str:
    """The row's weight format as it states it (`precision`, else `gemm_quant_mode`), or
    `checkpoint` where it states none (the model's own dtype runs)."""
    return (row.get("precision") or row.get("gemm_quant_mode") or "").strip() or "checkpoint"


def signed_errors(rows: list[dict[str, object]], what: str) -> list[float]:
    """Per predicted row (`ROWS_OUT_FIELDS` dicts), the % error of `what` ("ttft" or
    "tpot"): + where servesim predicts too slow."""
    return [
        100.0 * (float(r[f"predicted_{what}_ms"]) / float(r[f"measured_{what}_ms"]) - 1.0)
        for r in rows
    ]


def grouped(
    rows: list[dict[str, object]], key: Callable[[dict[str, object]], str]
) -> dict[str, list[dict[str, object]]]:
    """The rows by `key`, in key order."""
    out: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(sorted(out.items()))


# Issue 12's speed goal: every row simulated in under this many wall seconds.
ROW_GOAL_S = 2.0
# Issue 12's accuracy and coverage goals: median APE overall, and in every system/mode group
# with at least `group_rows` predicted rows, and the fraction of rows predicted.
GOALS = {
    "ttft_median_ape": 15.0,
    "tpot_median_ape": 8.0,
    "group_ttft_median_ape": 25.0,
    "group_tpot_median_ape": 12.0,
    "group_rows": 20,
    "predicted_fraction": 0.9,
}


def goal_misses(stats: dict[str, object]) -> list[str]:
    """Issue 12's goals a run's figures (`summary`) miss, one phrase each (none: all met)."""
    out = []
    if not stats["rows"]:
        return ["no row predicted"]
    for what in ("ttft", "tpot"):
        got, want = stats[f"{what}_median_ape"], GOALS[f"{what}_median_ape"]
        if got > want:
            out.append(f"{what.upper()} median APE {got} % > {want:g} %")
    groups = stats["by_group"]
    for g, fig in groups.items():  # type: ignore[union-attr]
        if fig["rows"] < GOALS["group_rows"]:
            continue
        for what in ("ttft", "tpot"):
            got, want = fig[f"{what}_median_ape"], GOALS[f"group_{what}_median_ape"]
            if got > want:
                out.append(f"{g} {what.upper()} {got} % > {want:g} %")
    if stats["predicted_fraction"] < GOALS["predicted_fraction"]:
        out.append(
            f"{100 * stats['predicted_fraction']:.2f} % of rows predicted "
            f"< {100 * GOALS['predicted_fraction']:g} %"
        )
    if stats["rows_over_goal_s"]:
        out.append(f"{stats['rows_over_goal_s']} row(s) over {ROW_GOAL_S:g} s")
    return out


def summary(results: list[dict[str, object]]) -> dict[str, object]:
    """The benchmark's figures from per-row results (`ROWS_OUT_FIELDS` dicts; predicted ones
    have status `ok`): overall and per-`system/mode` APEs, the signed median error per
    `engine/precision` (which way the prediction leans, where an APE hides it), skips by
    reason, the slowest row and how many rows took over `ROW_GOAL_S`."""
    ok = [r for r in results if r["status"] == "ok"]

    def apes(rows: list[dict[str, object]], what: str) -> list[float]:
        return [abs(e) for e in signed_errors(rows, what)]

    tm, tp9 = ape_stats(apes(ok, "ttft"))
    pm, pp9 = ape_stats(apes(ok, "tpot"))
    by_group = {
        g: {
            "rows": len(rs),
            "ttft_median_ape": round(ape_stats(apes(rs, "ttft"))[0], 2),
            "tpot_median_ape": round(ape_stats(apes(rs, "tpot"))[0], 2),
        }
        for g, rs in grouped(ok, lambda r: f"{r['system']}/{r['mode']}").items()
    }
    bias_by_engine = {
        g: {
            "rows": len(rs),
            "ttft_signed_median_pct": round(float(np.median(signed_errors(rs, "ttft"))), 2),
            "tpot_signed_median_pct": round(float(np.median(signed_errors(rs, "tpot"))), 2),
        }
        for g, rs in grouped(ok, lambda r: f"{r['backend']}/{r['precision']}").items()
    }
    skipped = Counter(str(r["status"]) for r in results if r["status"] != "ok")
    slowest = max(results, key=lambda r: float(r["wall_s"]), default=None)
    cpu = max((float(r["cpu_s"]) for r in results), default=0.0)

    def figure(x: float) -> float | None:  # no predicted row: null, so the line stays JSON
        return None if math.isnan(x) else round(x, 2)

    return {
        "rows": len(ok),
        "skipped": sum(skipped.values()),
        "predicted_fraction": round(len(ok) / len(results), 4) if results else 0.0,
        "ttft_median_ape": figure(tm),
        "ttft_p90_ape": figure(tp9),
        "tpot_median_ape": figure(pm),
        "tpot_p90_ape": figure(pp9),
        "by_group": by_group,
        "bias_by_engine": bias_by_engine,
        "skipped_by_reason": dict(skipped.most_common()),
        # at the rows-out file's precision (`wall_s`, `cpu_s`: 4 decimals), so the figures
        # agree with its rows to the last digit
        "slowest_row_s": round(float(slowest["wall_s"]), 4) if slowest else 0.0,
        "rows_over_goal_s": sum(1 for r in results if float(r["wall_s"]) > ROW_GOAL_S),
        "slowest_row_id": slowest["id"] if slowest else "",
        "slowest_row_cpu_s": round(cpu, 4),
        "recovered_layouts": sum(
            1 for r in results if str(r.get("layout_source", "")).startswith("layout recovered")
        ),
    }


# The status of a row whose simulation raised an unexpected exception: a servesim bug, counted
# among the skips with its type and message so that the run's other rows still give figures.
INTERNAL_ERROR = "internal error"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        default=[str(DEFAULT_CSV)],
        help="silicon sample CSV(s); several run as one set (figures over all, and per file)",
    )
    ap.add_argument(
        "--rounds", type=int, default=10, help="measured requests per client (lockstep only)"
    )
    ap.add_argument(
        "--warmup-rounds", type=int, default=2, help="uncounted requests per client (lockstep)"
    )
    ap.add_argument(
        "--vllm-budget",
        type=int,
        help="vLLM max_num_batched_tokens (default: aiconfigurator's rule, batch + ISL + 1500)",
    )
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="extra client send jitter")
    ap.add_argument(
        "--client-protocol",
        default="auto",
        help="benchmark client: auto (from each row's provenance) or a servesim.sim.clients "
        "preset (inferencex, inferencex_2025, aiperf, vllm_bench_serve, lockstep)",
    )
    ap.add_argument("--limit", type=int, default=0, help="only the first N rows")
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ID",
        help="only the row with this id (repeatable), predicted as in a run over its whole "
        "file (its twins and its config's other records are still read)",
    )
    ap.add_argument("--rows-out", help="write one CSV row per input row (predictions, status)")
    ap.add_argument(
        "--latency-model",
        default=DEFAULT_LATENCY_MODEL,
        choices=("auto", "roofline", "measured"),
        help="kernel times: measured tables where the GPU has them (auto), or the roofline",
    )
    ap.add_argument(
        "--newest-tables",
        action="store_true",
        help="read the newest kernel collection first, not the one nearest each row's release",
    )
    args = ap.parse_args(argv)
    if args.rows_out:  # before the run, not after it
        check_out_file(args.rows_out, "--rows-out")
    catalog = Catalog()
    rows = []
    real = [Path(p).resolve() for p in args.paths]  # `a.csv` and `./a.csv` are one file
    twice = list(
        dict.fromkeys(p for p, r in zip(args.paths, real, strict=True) if real.count(r) > 1)
    )
    if twice:  # its rows would count twice in every figure
        print(f"error: {', '.join(twice)} given more than once; pass each file once.")
        return 2
    for path in args.paths:  # every file is read and checked before any row runs
        read = read_rows(path)
        if isinstance(read, str):
            print(read)
            return 2
        rows += [{**r, FILE_KEY: path} for r in read]
    if args.limit:
        rows = rows[: args.limit]
    t0 = time.perf_counter()  # the run's wall time includes matching records to configs
    # Twins and a config's other records are looked up within each file, so a run over several
    # files predicts each row as a run over its own file would.
    files: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        files[row[FILE_KEY]].append(row)
    rows, specs = [], {}
    for path, mine in files.items():
        rows += date_twins(mine)
        specs[path] = config_specs(mine)
    if args.only:  # after the file-wide look-ups, so each row runs as in the whole file's run
        wanted = set(args.only)
        missing = sorted(wanted - {r.get("id", "") for r in rows})
        if missing:
            print(f"error: no row has id {', '.join(missing)}; check the id against the file.")
            return 2
        rows = [r for r in rows if r.get("id", "") in wanted]
    results: list[dict[str, object]] = []
    for row in rows:
        t_row, cpu_row = time.perf_counter(), time.process_time()
        out: dict[str, object] = {k: row.get(k, "") for k in ROWS_OUT_FIELDS[:7]}
        out["precision"] = precision_label(row)
        out.update(
            measured_ttft_ms=row.get("silicon_ttft_ms", ""),
            measured_tpot_ms=row.get("silicon_tpot_ms", ""),
            predicted_ttft_ms="",
            predicted_tpot_ms="",
            layout_source="",
        )
        try:
            row, _ = normalised_row(row)
            out.update({k: row.get(k, "") for k in ROWS_OUT_FIELDS[1:7]})  # in one spelling
            spec = specs[row[FILE_KEY]].get(config_id_of(row))
            if spec:
                row = {**row, "config_spec": spec}
            row, out["layout_source"], refusal = layout_of(row)
            # (single_node_config answers colocated rows only: a disaggregated row's source is
            # its recovered layout or its recipe's flags)
            recovered = row.get("mode") == "disagg" and bool(out["layout_source"])
            status = refusal or specified_or_reason(row, benchmarked_clients=recovered)
            out["concurrency"] = concurrency_of(row)
            if not status:
                ttft, tpot = simulate_row(
                    row,
                    catalog,
                    args.rounds,
                    args.warmup_rounds,
                    args.jitter_ms / 1e3,
                    args.vllm_budget,
                    args.latency_model,
                    args.client_protocol,
                    not args.newest_tables,
                )
                out.update(predicted_ttft_ms=ttft, predicted_tpot_ms=tpot)
                status = "ok"
        except ServesimError as exc:
            status = str(exc).split(";")[0].rstrip(".")  # the reason, not the advice after it
        except Exception as exc:  # a bug in one row must not lose the others
            status = f"{INTERNAL_ERROR} ({type(exc).__name__}: {exc})"
            print(f"{row.get('id', '?')}: {status}; please report it.", file=sys.stderr)
        out["status"] = status
        out["wall_s"] = round(time.perf_counter() - t_row, 4)
        out["cpu_s"] = round(time.process_time() - cpu_row, 4)
        out["file"] = row.get(FILE_KEY, "")
        results.append(out)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == "ok"]
    keys: tuple[Callable[[dict[str, object]], str], ...] = (
        lambda r: "all",
        lambda r: f"{r['system']}/{r['mode']}",
        lambda r: str(r["backend"]),
        lambda r: f"{r['backend']}/{r['precision']}",
        lambda r: str(r["model_path"]),
    )
    groups = {g: rs for key in keys for g, rs in grouped(ok, key).items()}
    # APE median and p90, and the signed median (+: predicted too slow, −: too fast)
    heads = ("TTFT med", "TTFT p90", "TTFT bias", "TPOT med", "TPOT p90", "TPOT bias")
    print(f"{'group':42s} {'rows':>5s} " + " ".join(f"{h:>9s}" for h in heads))
    for g in sorted(groups, key=lambda g: (g != "all", g)):
        cells = []
        for what in ("ttft", "tpot"):
            errors = signed_errors(groups[g], what)
            med, p90 = ape_stats(errors)
            cells += [f"{med:8.1f}%", f"{p90:8.1f}%", f"{float(np.median(errors)):+8.1f}%"]
        print(f"{g:42s} {len(groups[g]):5d} " + " ".join(cells))
    stats = summary(results)
    for reason, count in stats["skipped_by_reason"].items():
        print(f"skipped {count} row(s): {reason}")
    print(
        f"simulated {stats['rows']} rows in {wall:.1f} s "
        f"(slowest {stats['slowest_row_s']} s: {stats['slowest_row_id']}; "
        f"most CPU in one row {stats['slowest_row_cpu_s']} s; "
        f"{stats['rows_over_goal_s']} over {ROW_GOAL_S:g} s)"
    )
    if args.rows_out:
        replace_atomically(args.rows_out, lambda tmp: _write_rows(tmp, results))
    stats["goal_misses"] = goal_misses(stats)
    print(
        "goals (issue 12): "
        + ("met" if not stats["goal_misses"] else "NOT met: " + "; ".join(stats["goal_misses"]))
    )
    if len(args.paths) > 1:
        stats["by_file"] = by_file(results)
        for name, fig in stats["by_file"].items():
            print(
                f"{name}: {fig['rows']} of {fig['rows'] + fig['skipped']} rows predicted, "
                f"TTFT {fig['ttft_median_ape']} % / TPOT {fig['tpot_median_ape']} % median APE"
            )
    print(json.dumps({**stats, "wall_s": round(wall, 1)}))
    return 0


# The key under which each input row carries the CSV it came from (never a column of the files).
FILE_KEY = "\x00file"


def read_rows(path: str) -> list[dict[str, str]] | str:
    """The rows of one silicon CSV, or the one sentence that says why it cannot be read."""
    try:
        # utf-8-sig: a spreadsheet's export starts with a byte-order mark, which would
        # otherwise become part of the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"error: cannot read {path} as a CSV ({exc}); pass a silicon sample CSV."
    if missing:
        return (
            f"error: {path} lacks the column(s) {', '.join(missing)}; pass a CSV in the "
            f"format of {DEFAULT_CSV.name} (one row per measured run)."
        )
    return rows


def by_file(results: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per input file (a run over several): rows predicted and skipped, TTFT and TPOT median
    APE of its predicted rows."""
    out = {}
    for name, rs in grouped(results, lambda r: str(r["file"])).items():
        fig = summary(rs)
        out[name] = {k: fig[k] for k in ("rows", "skipped", "ttft_median_ape", "tpot_median_ape")}
    return out


def _write_rows(path: Path, results: list[dict[str, object]]) -> None:
    """The `--rows-out` CSV: one row per input row."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS_OUT_FIELDS))
        w.writeheader()
        w.writerows(results)


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
