"""Fit `KernelFit` parameters to measured kernel tables for one device.

Inputs are CSV files with aiconfigurator's column names (`gemm_perf.csv`,
`context_attention_perf.csv`, `generation_attention_perf.csv`, `nccl_perf.csv`,
`custom_allreduce_perf.csv`; any subset) and optionally a Vidur profiling folder
(`compute/**/mlp.csv`, `network/**/all_reduce.csv`). Each operator family is fitted by least
squares on log-latency (robust soft-L1 loss) with the device's spec numbers held fixed, so the
fitted efficiencies transfer to devices nobody measured. Families without data keep the default
fit's parameters.

Regenerate the bundled fit (deterministic; tests compare against it):

    .venv/bin/python -m servesim.predictor.calibrate data/aic/h100_sxm --vidur data/vidur \
        --device h100_sxm --out src/servesim/data/kernel_fit.json
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from servesim import tables
from servesim.errors import ServesimError
from servesim.predictor import roofline
from servesim.predictor.roofline import KernelFit
from servesim.spec.devices import Device, get_device

Table = dict[str, np.ndarray]  # column name -> values (float64 for numbers, object for text)
Samples = dict[str, np.ndarray]  # shape arguments, "latency_s", "group" (leave-one-out key)

NUM, TEXT = "num", "text"
SCHEMAS: dict[str, dict[str, str]] = {
    "gemm_perf": {"gemm_dtype": TEXT, "m": NUM, "n": NUM, "k": NUM, "latency": NUM},
    "context_attention_perf": {
        "batch_size": NUM,
        "isl": NUM,
        "num_heads": NUM,
        "num_key_value_heads": NUM,
        "head_dim": NUM,
        "kv_cache_dtype": TEXT,
        "latency": NUM,
    },
    "generation_attention_perf": {
        "batch_size": NUM,
        "num_heads": NUM,
        "num_key_value_heads": NUM,
        "head_dim": NUM,
        "kv_cache_dtype": TEXT,
        "step": NUM,
        "latency": NUM,
    },
    "nccl_perf": {"op_name": TEXT, "num_gpus": NUM, "message_size": NUM, "latency": NUM},
    "custom_allreduce_perf": {"num_gpus": NUM, "message_size": NUM, "latency": NUM},
    "context_mla_perf": {
        "batch_size": NUM,
        "isl": NUM,
        "num_heads": NUM,
        "kv_cache_dtype": TEXT,
        "step": NUM,
        "latency": NUM,
    },
    "generation_mla_perf": {
        "batch_size": NUM,
        "num_heads": NUM,
        "kv_cache_dtype": TEXT,
        "step": NUM,
        "latency": NUM,
    },
    "moe_perf": {
        "moe_dtype": TEXT,
        "num_tokens": NUM,
        "hidden_size": NUM,
        "inter_size": NUM,
        "topk": NUM,
        "num_experts": NUM,
        "moe_tp_size": NUM,
        "moe_ep_size": NUM,
        "distribution": TEXT,
        "latency": NUM,
    },
}
# Where aiconfigurator-core keeps each table: (operator family folder, engines to try in order).
# nccl-tests tables sit under comm/nccl (TRT-LLM's own folder on some GPUs).
PACKAGE_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemm_perf": ("gemm", ()),
    "context_attention_perf": ("attention", ()),
    "generation_attention_perf": ("attention", ()),
    "context_mla_perf": ("mla", ("trtllm", "sglang")),
    "generation_mla_perf": ("mla", ("trtllm", "sglang")),
    "moe_perf": ("moe", ()),
    "nccl_perf": ("comm", ("nccl", "trtllm")),
    "custom_allreduce_perf": ("comm", ()),
}
# Optional columns and the value a missing one takes.
OPTIONAL: dict[str, dict[str, tuple[str, Any]]] = {
    "context_attention_perf": {"step": (NUM, 0.0), "window_size": (NUM, 0.0)},
    "generation_attention_perf": {"window_size": (NUM, 0.0)},
    "nccl_perf": {"nccl_dtype": (TEXT, "half")},
    "custom_allreduce_perf": {
        "backend": (TEXT, ""),
        "kernel_source": (TEXT, ""),
        "allreduce_dtype": (TEXT, "bfloat16"),
    },
}
VIDUR_MLP = {
    "n_head": NUM,
    "n_kv_head": NUM,
    "n_embd": NUM,
    "n_expanded_embd": NUM,
    "use_gated_mlp": TEXT,
    "num_tokens": NUM,
    "num_tensor_parallel_workers": NUM,
}
VIDUR_OPS = (
    "emb",
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
VIDUR_AR = {
    "time_stats.all_reduce.median": NUM,
    "num_workers": NUM,
    "size": NUM,
    "devices_per_node": NUM,
}
MS = 1e-3  # the tables store milliseconds

# aiconfigurator dtype spellings -> (compute dtype, weight dtype); others are skipped.
GEMM_DTYPES: dict[str, tuple[str, str]] = {
    "bfloat16": ("bf16", "bf16"),
    "float16": ("fp16", "fp16"),
    "fp16": ("fp16", "fp16"),
    "bf16": ("bf16", "bf16"),
    "fp8": ("fp8", "fp8"),
    "fp8_block": ("fp8", "fp8"),
    "int8": ("int8", "int8"),
    "int8_wo": ("bf16", "int8"),
    "int4_wo": ("bf16", "int4"),
    "w4a16": ("bf16", "int4"),
    "nvfp4": ("fp4", "fp4"),
}
KV_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8"}
MOE_DTYPES: dict[str, tuple[str, str]] = {
    **GEMM_DTYPES,
    "w4a16_mxfp4": ("bf16", "mxfp4"),
    "int4_wo": ("bf16", "int4"),
}
MLA_QK_DIM, MLA_V_DIM = 192.0, 128.0  # DeepSeek MLA prefill: 128 nope + 64 rope; V 128
MLA_LATENT_DIM, MLA_LATENT_V = 576.0, 512.0  # absorbed decode: kv_lora_rank 512 + rope 64


# ---- reading ------------------------------------------------------------------------------------
def _shown(cell: str) -> str:
    """A cell as an error shows it, cut short so a huge cell cannot flood the message."""
    text = repr(cell)
    return text if len(text) <= 40 else text[:36] + "...'"


def read_csv(
    path: str | Path, columns: dict[str, str], optional: dict[str, tuple[str, Any]] | None = None
) -> Table:
    """Read the named columns of a CSV; errors name the file, the line and the column.

    The shared block reader (servesim.tables) gives one sentence for a file that is not UTF-8,
    a cell of megabytes or a line that never ends; these tables have thousands of rows, so
    each is checked row by row."""
    p = Path(path)
    optional = optional or {}
    src = tables.Source(p, str(p), "table")
    try:
        head = tables.read_head(src)
        if head is None:
            raise ServesimError(f"{p} line 1: the file is empty; expected a header row.")
        header = [h.strip() for h in tables.split_row(head.text, head.line)]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ServesimError(
                f"{p} line {head.line}: missing column {missing[0]!r}; add it to the header "
                f"(needed: {', '.join(columns)})."
            )
        wanted = {**columns, **{c: kind for c, (kind, _) in optional.items() if c in header}}
        index = {c: header.index(c) for c in wanted}
        values: dict[str, list[Any]] = {c: [] for c in wanted}
        for block in tables.blocks(src, head.end, head.line + 1, quoted=True):
            for line, row in tables.csv_rows(block):
                for col, kind in wanted.items():
                    i = index[col]
                    cell = row[i].strip() if i < len(row) else ""
                    if kind == NUM:
                        try:
                            val = float(cell)
                        except ValueError:
                            val = math.nan
                        if not math.isfinite(val):
                            raise ServesimError(
                                f"{p} line {line}: column {col!r} is {_shown(cell)}, not a "
                                "finite number; fix or remove that row."
                            )
                        values[col].append(val)
                    else:
                        values[col].append(cell)
    except tables.LineError as exc:
        problem = f"{p} line {exc.line}: {exc.problem}"
        raise ServesimError(f"{problem}; fix or remove that row.") from None
    table: Table = {}
    n_rows = len(next(iter(values.values()))) if values else 0
    for col, kind in wanted.items():
        table[col] = np.asarray(values[col], dtype=float if kind == NUM else object)
    for col, (kind, default) in optional.items():
        if col not in table:
            table[col] = np.full(n_rows, default, dtype=float if kind == NUM else object)
    return table


def load_tables(tables_dir: str | Path) -> dict[str, Table]:
    """Every aiconfigurator-style table found in `tables_dir`, keyed by file stem."""
    d = Path(tables_dir)
    if not d.is_dir():
        raise ServesimError(f"Tables folder {str(d)!r} does not exist; check the path.")
    out = {}
    for stem, cols in SCHEMAS.items():
        f = d / f"{stem}.csv"
        if f.is_file():
            out[stem] = read_csv(f, cols, OPTIONAL.get(stem))
    return out


def load_package_tables(
    gpu: str, engine: str = "vllm", max_rows: int | None = None, seed: int = 0
) -> dict[str, Table]:
    """aiconfigurator-core's measured tables of one GPU, keyed like `load_tables`.

    Each table comes from `engine` where measured (the newest version), else from the family's
    fallback engines (MLA kernels are measured for TRT-LLM and SGLang, nccl-tests under nccl).
    `max_rows` keeps that many rows drawn at random (seeded) from a larger table."""
    from servesim.predictor import kernel_tables

    out: dict[str, Table] = {}
    for stem, (family, fallback) in PACKAGE_TABLES.items():
        if stem == "gemm_perf":
            gemm = _package_gemm_table(gpu, engine, max_rows, seed)
            if gemm is not None:
                out[stem] = gemm
            continue
        engines = (engine, *[e for e in fallback if e != engine])
        found = None
        for eng in engines:
            found = kernel_tables.find(gpu, family, stem, eng)
            if found is not None:
                break
        if found is None:
            continue
        out[stem] = _parquet_table(found[0], SCHEMAS[stem], OPTIONAL.get(stem, {}), max_rows, seed)
    return out


def _package_gemm_table(gpu: str, engine: str, max_rows: int | None, seed: int) -> Table | None:
    """The engine's GEMM table on `gpu`, each dtype's rows from the table that prices it as
    the engine serves it (`kernel_tables.gemm_table`: vLLM's eager fp8_block rows are
    replaced by another engine's graphed ones), sub-sampled like `_parquet_table`."""
    from servesim.predictor import kernel_tables

    own = kernel_tables.find(gpu, "gemm", "gemm_perf", engine)
    if own is None:
        return None
    engines = kernel_tables.engine_order(engine)
    read: dict[Path, Table] = {}  # each source table read once
    parts = []
    for dtype in sorted(kernel_tables.gemm_dtypes_of(own[0])):
        path = kernel_tables.gemm_table(gpu, dtype, engines)
        if path is None:
            continue
        if path not in read:
            read[path] = _parquet_table(path, SCHEMAS["gemm_perf"], {}, None, seed)
        t = read[path]
        keep = t["gemm_dtype"] == dtype
        parts.append({c: v[keep] for c, v in t.items()})
    if not parts:
        return None
    table = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    n = len(table["m"])
    if max_rows is not None and n > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
        table = {c: v[keep] for c, v in table.items()}
    return table


def _parquet_table(
    path: Path,
    columns: dict[str, str],
    optional: dict[str, tuple[str, Any]],
    max_rows: int | None,
    seed: int,
) -> Table:
    """The named columns of a Parquet table (optional ones defaulted), sub-sampled if asked."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(str(path)).names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ServesimError(f"{path}: missing column {missing[0]!r}; the table is not usable.")
    present = tuple(c for c in (*columns, *optional) if c in names)
    from servesim.predictor import kernel_tables

    raw = kernel_tables.read(path, present)
    n = len(raw[present[0]])
    keep = np.arange(n)
    if max_rows is not None and n > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    table: Table = {}
    for col in present:
        kind = columns.get(col) or optional[col][0]
        v = raw[col][keep]
        table[col] = v.astype(float) if kind == NUM else np.asarray([str(x) for x in v], object)
    for col, (kind, default) in optional.items():
        if col not in table:
            table[col] = np.full(len(keep), default, dtype=float if kind == NUM else object)
    return table


def load_vidur(vidur_dir: str | Path) -> dict[str, list[Table]]:
    """Vidur `compute/**/mlp.csv` and `network/**/all_reduce.csv` tables under `vidur_dir`."""
    d = Path(vidur_dir)
    if not d.is_dir():
        raise ServesimError(f"Vidur folder {str(d)!r} does not exist; check the path.")
    mlp_cols = {**VIDUR_MLP, **{f"time_stats.{op}.median": NUM for op in VIDUR_OPS}}
    return {
        "mlp": [read_csv(f, mlp_cols) for f in sorted(d.glob("compute/**/mlp.csv"))],
        "all_reduce": [
            read_csv(f, VIDUR_AR, {"collective": (TEXT, "all_reduce")})
            for f in sorted(d.glob("network/**/all_reduce.csv"))
        ],
    }


# ---- samples: table rows as model arguments ------------------------------------------------
def _cat(parts: list[Samples]) -> Samples:
    parts = [p for p in parts if len(p["latency_s"])]
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def gemm_samples(table: Table) -> Samples:
    """GEMM rows with a known dtype; group = (n, k) for leave-one-group-out."""
    known = np.array([str(d) in GEMM_DTYPES for d in table["gemm_dtype"]], dtype=bool)
    dts = [GEMM_DTYPES[str(d)] for d in table["gemm_dtype"][known]]
    n, k = table["n"][known], table["k"][known]
    cdt = np.array([c for c, _ in dts], dtype=object)
    return {
        "dtype": cdt,
        "weight_dtype": np.array([w for _, w in dts], dtype=object),
        "format": np.array([str(d) for d in table["gemm_dtype"][known]], dtype=object),
        "m": table["m"][known],
        "n": n,
        "k": k,
        "latency_s": table["latency"][known] * MS,
        "group": np.array(
            [f"n={a:.0f} k={b:.0f}" for a, b in zip(n, k, strict=True)], dtype=object
        ),
    }


def _vidur_shapes(t: Table) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(m, n, k) of Vidur's four projections per row, with weights sharded by its TP degree."""
    tp = t["num_tensor_parallel_workers"]
    h, inter = t["n_embd"], t["n_expanded_embd"]
    hd = h / t["n_head"]
    gated = np.array([str(g).strip().lower() in ("true", "1") for g in t["use_gated_mlp"]])
    m = t["num_tokens"]
    qkv = (t["n_head"] + 2 * t["n_kv_head"]) * hd / tp
    return {
        "attn_pre_proj": (m, qkv, h),
        "attn_post_proj": (m, h, t["n_head"] * hd / tp),
        "mlp_up_proj": (m, np.where(gated, 2, 1) * inter / tp, h),
        "mlp_down_proj": (m, h, inter / tp),
    }


def vidur_gemm_samples(t: Table) -> Samples:
    """Vidur's fp16 projection GEMMs; group = (projection, TP degree)."""
    parts = []
    for op, (m, n, k) in _vidur_shapes(t).items():
        lat = t[f"time_stats.{op}.median"] * MS
        ok = lat > 0
        cnt = int(ok.sum())
        tp = t["num_tensor_parallel_workers"][ok]
        parts.append(
            {
                "dtype": np.full(cnt, "fp16", dtype=object),
                "weight_dtype": np.full(cnt, "fp16", dtype=object),
                "format": np.full(cnt, "float16", dtype=object),
                "m": m[ok],
                "n": n[ok],
                "k": k[ok],
                "latency_s": lat[ok],
                "group": np.array([f"vidur {op} tp={x:.0f}" for x in tp], dtype=object),
            }
        )
    return _cat(parts)


def vidur_elementwise_samples(t: Table) -> Samples:
    """Vidur's memory-bound ops with the bytes each moves; group = (op, TP degree)."""
    tp = t["num_tensor_parallel_workers"]
    h, inter, tok = t["n_embd"], t["n_expanded_embd"], t["num_tokens"]
    hd = h / t["n_head"]
    act = roofline.ACT_BYTES
    moved = {
        "emb": ("emb", 2 * tok * h * act),  # vocab-parallel: every rank writes all rows
        "input_layernorm": ("norm", 2 * tok * h * act),
        "post_attention_layernorm": ("norm", 2 * tok * h * act),
        "attn_rope": ("rope", 2 * tok * (t["n_head"] + t["n_kv_head"]) * hd * act / tp),
        "mlp_act": ("act", 3 * tok * inter * act / tp),
        "add": ("add", 3 * tok * h * act),
    }
    parts = []
    for col, (op, nb) in moved.items():
        lat = t[f"time_stats.{col}.median"] * MS
        ok = lat > 0
        cnt = int(ok.sum())
        parts.append(
            {
                "op": np.full(cnt, op, dtype=object),
                "nbytes": nb[ok],
                "latency_s": lat[ok],
                "group": np.array([f"{col} tp={x:.0f}" for x in tp[ok]], dtype=object),
            }
        )
    return _cat(parts)


def _heads_group(hq: np.ndarray, hkv: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.array(
        [f"heads {a:.0f}/{b:.0f} d={c:.0f}" for a, b, c in zip(hq, hkv, d, strict=True)],
        dtype=object,
    )


def prefill_samples(table: Table) -> Samples:
    """Context-attention rows; group = head configuration."""
    known = np.array([str(d) in KV_DTYPES for d in table["kv_cache_dtype"]], dtype=bool)
    t = {c: v[known] for c, v in table.items()}
    return {
        "batch": t["batch_size"],
        "new_tokens": t["isl"],
        "cached_tokens": t["step"],
        "q_heads": t["num_heads"],
        "kv_heads": t["num_key_value_heads"],
        "head_dim": t["head_dim"],
        "kv_dtype": np.array([KV_DTYPES[str(d)] for d in t["kv_cache_dtype"]], dtype=object),
        "window": t["window_size"],
        "latency_s": t["latency"] * MS,
        "group": _heads_group(t["num_heads"], t["num_key_value_heads"], t["head_dim"]),
    }


def decode_samples(table: Table) -> Samples:
    """Generation-attention rows: each sequence attends step+1 tokens; group = heads."""
    known = np.array([str(d) in KV_DTYPES for d in table["kv_cache_dtype"]], dtype=bool)
    t = {c: v[known] for c, v in table.items()}
    ctx = t["step"] + 1.0
    ctx = np.where(t["window_size"] > 0, np.minimum(ctx, t["window_size"]), ctx)
    return {
        "batch": t["batch_size"],
        "total_context": t["batch_size"] * ctx,
        "q_heads": t["num_heads"],
        "kv_heads": t["num_key_value_heads"],
        "head_dim": t["head_dim"],
        "kv_dtype": np.array([KV_DTYPES[str(d)] for d in t["kv_cache_dtype"]], dtype=object),
        "latency_s": t["latency"] * MS,
        "group": _heads_group(t["num_heads"], t["num_key_value_heads"], t["head_dim"]),
    }


def mla_prefill_samples(table: Table) -> Samples:
    """MLA context rows (heads per GPU, MHA over the decompressed K/V); group = heads."""
    known = np.array([str(d) in KV_DTYPES for d in table["kv_cache_dtype"]], dtype=bool)
    t = {c: v[known] for c, v in table.items()}
    h = t["num_heads"]
    return {
        "batch": t["batch_size"],
        "new_tokens": t["isl"],
        "cached_tokens": t["step"],
        "q_heads": h,
        "kv_dtype": np.array([KV_DTYPES[str(d)] for d in t["kv_cache_dtype"]], dtype=object),
        "latency_s": t["latency"] * MS,
        "group": np.array([f"mla heads {x:.0f}" for x in h], dtype=object),
    }


def mla_decode_samples(table: Table) -> Samples:
    """MLA generation rows (absorbed, latent cache): each sequence attends step+1 tokens."""
    known = np.array([str(d) in KV_DTYPES for d in table["kv_cache_dtype"]], dtype=bool)
    t = {c: v[known] for c, v in table.items()}
    h = t["num_heads"]
    return {
        "batch": t["batch_size"],
        "total_context": t["batch_size"] * (t["step"] + 1.0),
        "q_heads": h,
        "kv_dtype": np.array([KV_DTYPES[str(d)] for d in t["kv_cache_dtype"]], dtype=object),
        "latency_s": t["latency"] * MS,
        "group": np.array([f"mla heads {x:.0f}" for x in h], dtype=object),
    }


def moe_samples(table: Table) -> Samples:
    """Fused-MoE rows with balanced routing and a known dtype; group = (hidden, inter, experts).

    Power-law routing rows are left out: the uniform-routing model does not price imbalance."""
    keep = np.array(
        [
            str(d) in MOE_DTYPES and str(r) == "balanced"
            for d, r in zip(table["moe_dtype"], table["distribution"], strict=True)
        ],
        dtype=bool,
    )
    t = {c: v[keep] for c, v in table.items()}
    dts = [MOE_DTYPES[str(d)] for d in t["moe_dtype"]]
    return {
        "dtype": np.array([c for c, _ in dts], dtype=object),
        "weight_dtype": np.array([w for _, w in dts], dtype=object),
        "format": np.array([str(d) for d in t["moe_dtype"]], dtype=object),
        "tokens": t["num_tokens"],
        "hidden": t["hidden_size"],
        "inter": t["inter_size"],
        "top_k": t["topk"],
        "num_experts": t["num_experts"],
        "tp": t["moe_tp_size"],
        "ep": t["moe_ep_size"],
        "latency_s": t["latency"] * MS,
        "group": np.array(
            [
                f"moe h={a:.0f} i={b:.0f} e={c:.0f}"
                for a, b, c in zip(t["hidden_size"], t["inter_size"], t["num_experts"], strict=True)
            ],
            dtype=object,
        ),
    }


def _elem_bytes(dtype_col: np.ndarray, default: float = 2.0) -> np.ndarray:
    size = {"half": 2.0, "float16": 2.0, "bfloat16": 2.0, "float": 4.0, "float32": 4.0}
    size |= {"fp8": 1.0, "int8": 1.0}
    return np.array([size.get(str(d).strip().lower(), default) for d in dtype_col])


def nccl_samples(table: Table) -> Samples:
    """nccl-tests rows (message_size is an element count); group = GPU count."""
    op = np.array([str(o) for o in table["op_name"]], dtype=object)
    keep = np.isin(op, roofline.COLLECTIVES)
    n = table["num_gpus"][keep]
    return {
        "op": op[keep],
        "impl": np.full(int(keep.sum()), "nccl", dtype=object),
        "cuda_graph": np.ones(int(keep.sum()), dtype=bool),
        "nbytes": table["message_size"][keep] * _elem_bytes(table["nccl_dtype"][keep]),
        "num_devices": n,
        "latency_s": table["latency"][keep] * MS,
        "group": np.array([f"{x:.0f}gpu" for x in n], dtype=object),
    }


def custom_ar_samples(table: Table) -> Samples:
    """vLLM custom all-reduce rows (element counts), graph or eager; group = GPU count."""
    tag = [
        f"{b} {s}".lower() for b, s in zip(table["backend"], table["kernel_source"], strict=True)
    ]
    graph = np.array(["eager" not in t for t in tag], dtype=bool)
    n = table["num_gpus"]
    return {
        "op": np.full(len(n), "all_reduce", dtype=object),
        "impl": np.full(len(n), "custom", dtype=object),
        "cuda_graph": graph,
        "nbytes": table["message_size"] * _elem_bytes(table["allreduce_dtype"]),
        "num_devices": n,
        "latency_s": table["latency"] * MS,
        "group": np.array([f"{x:.0f}gpu" for x in n], dtype=object),
    }


def vidur_allreduce_samples(t: Table) -> Samples:
    """Vidur single-node NCCL all-reduce (eager, kernel time only; size in bytes)."""
    keep = (t["devices_per_node"] == t["num_workers"]) & (t["time_stats.all_reduce.median"] > 0)
    keep &= np.array([str(c) == "all_reduce" for c in t["collective"]], dtype=bool)
    n = t["num_workers"][keep]
    cnt = int(keep.sum())
    return {
        "op": np.full(cnt, "all_reduce", dtype=object),
        "impl": np.full(cnt, "nccl", dtype=object),
        "cuda_graph": np.zeros(cnt, dtype=bool),
        "nbytes": t["size"][keep],
        "num_devices": n,
        "latency_s": t["time_stats.all_reduce.median"][keep] * MS,
        "group": np.array([f"{x:.0f}gpu" for x in n], dtype=object),
    }


def all_samples(
    tables: dict[str, Table], vidur: dict[str, list[Table]] | None = None
) -> dict[str, Samples]:
    """Every family's samples from aiconfigurator tables and (optionally) Vidur tables."""
    vidur = vidur or {"mlp": [], "all_reduce": []}
    out: dict[str, Samples] = {}
    if "gemm_perf" in tables:
        out["gemm"] = gemm_samples(tables["gemm_perf"])
    vg = _cat([vidur_gemm_samples(t) for t in vidur["mlp"]])
    if vg:
        out["gemm_vidur"] = vg
    if "context_attention_perf" in tables:
        out["attention_prefill"] = prefill_samples(tables["context_attention_perf"])
    if "generation_attention_perf" in tables:
        out["attention_decode"] = decode_samples(tables["generation_attention_perf"])
    if "nccl_perf" in tables:
        out["nccl"] = nccl_samples(tables["nccl_perf"])
    if "custom_allreduce_perf" in tables:
        out["custom_allreduce"] = custom_ar_samples(tables["custom_allreduce_perf"])
    if "context_mla_perf" in tables:
        out["mla_prefill"] = mla_prefill_samples(tables["context_mla_perf"])
    if "generation_mla_perf" in tables:
        out["mla_decode"] = mla_decode_samples(tables["generation_mla_perf"])
    if "moe_perf" in tables:
        out["moe"] = moe_samples(tables["moe_perf"])
    va = _cat([vidur_allreduce_samples(t) for t in vidur["all_reduce"]])
    if va:
        out["allreduce_vidur"] = va
    ve = _cat([vidur_elementwise_samples(t) for t in vidur["mlp"]])
    if ve:
        out["elementwise"] = ve
    return {k: v for k, v in out.items() if v and len(v["latency_s"])}


# ---- prediction of samples ----------------------------------------------------------------------
def _by_key(keys: list[np.ndarray], fn: Callable[[np.ndarray, tuple], np.ndarray]) -> np.ndarray:
    """Apply `fn(mask, key)` to each distinct combination of the text columns `keys`."""
    n = len(keys[0])
    out = np.empty(n)
    combos = sorted({tuple(str(k[i]) for k in keys) for i in range(n)})
    for combo in combos:
        mask = np.ones(n, dtype=bool)
        for col, val in zip(keys, combo, strict=True):
            mask &= np.array([str(x) == val for x in col], dtype=bool)
        out[mask] = fn(mask, combo)
    return out


def predict_gemm(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for GEMM samples."""
    return _by_key(
        [s["dtype"], s["weight_dtype"]],
        lambda mk, c: roofline.gemm_np(s["m"][mk], s["n"][mk], s["k"][mk], c[0], device, fit, c[1]),
    )


def predict_prefill(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for context-attention samples."""
    return _by_key(
        [s["kv_dtype"]],
        lambda mk, c: roofline.attn_prefill_np(
            s["batch"][mk],
            s["new_tokens"][mk],
            s["cached_tokens"][mk],
            s["q_heads"][mk],
            s["kv_heads"][mk],
            s["head_dim"][mk],
            s["head_dim"][mk],
            c[0],
            device,
            fit,
            s["window"][mk],
        ),
    )


def predict_decode(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for generation-attention samples."""

    def one(mk: np.ndarray, c: tuple) -> np.ndarray:
        a, b = roofline.decode_coeffs_np(
            s["batch"][mk],
            s["q_heads"][mk],
            s["kv_heads"][mk],
            s["head_dim"][mk],
            s["head_dim"][mk],
            c[0],
            device,
            fit,
        )
        return a + b * s["total_context"][mk]

    return _by_key([s["kv_dtype"]], one)


def predict_mla_prefill(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for MLA context samples."""
    return _by_key(
        [s["kv_dtype"]],
        lambda mk, c: roofline.attn_prefill_np(
            s["batch"][mk],
            s["new_tokens"][mk],
            s["cached_tokens"][mk],
            s["q_heads"][mk],
            s["q_heads"][mk],
            MLA_QK_DIM,
            MLA_V_DIM,
            c[0],
            device,
            fit,
            0.0,
            family="mla_prefill",
        ),
    )


def predict_mla_decode(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for MLA generation samples (absorbed, latent KV cache)."""

    def one(mk: np.ndarray, c: tuple) -> np.ndarray:
        a, b = roofline.decode_coeffs_np(
            s["batch"][mk],
            s["q_heads"][mk],
            1.0,
            MLA_LATENT_DIM,
            MLA_LATENT_V,
            c[0],
            device,
            fit,
            latent=True,
        )
        return a + b * s["total_context"][mk]

    return _by_key([s["kv_dtype"]], one)


def predict_moe(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for fused-MoE samples."""
    return _by_key(
        [s["dtype"], s["weight_dtype"]],
        lambda mk, c: roofline.moe_np(
            s["tokens"][mk],
            s["hidden"][mk],
            s["inter"][mk],
            s["top_k"][mk],
            s["num_experts"][mk],
            c[0],
            device,
            fit,
            c[1],
            s["tp"][mk],
            s["ep"][mk],
        ),
    )


def predict_collective(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for collective samples (single node)."""
    graph = np.array(["graph" if g else "eager" for g in s["cuda_graph"]], dtype=object)
    return _by_key(
        [s["op"], s["impl"], graph],
        lambda mk, c: roofline.collective_np(
            c[0], s["nbytes"][mk], s["num_devices"][mk], device, fit, c[1], c[2] == "graph"
        ),
    )


def predict_elementwise(s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for elementwise samples."""
    return _by_key(
        [s["op"]], lambda mk, c: roofline.elementwise_np(s["nbytes"][mk], device, fit, c[0])
    )


PREDICTORS: dict[str, Callable[[Samples, Device, KernelFit], np.ndarray]] = {
    "gemm": predict_gemm,
    "gemm_vidur": predict_gemm,
    "attention_prefill": predict_prefill,
    "attention_decode": predict_decode,
    "nccl": predict_collective,
    "custom_allreduce": predict_collective,
    "allreduce_vidur": predict_collective,
    "elementwise": predict_elementwise,
    "mla_prefill": predict_mla_prefill,
    "mla_decode": predict_mla_decode,
    "moe": predict_moe,
}


def predict(family: str, s: Samples, device: Device, fit: KernelFit) -> np.ndarray:
    """Predicted seconds for the samples of a family named as in `all_samples`."""
    return PREDICTORS[family](s, device, fit)


def subset(s: Samples, mask: np.ndarray) -> Samples:
    """The rows of `s` selected by a boolean mask."""
    return {k: v[mask] for k, v in s.items()}


def ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    """Absolute percentage errors."""
    return np.abs(pred / meas - 1.0) * 100.0


# ---- priors and fitting --------------------------------------------------------------------
# Starting values, and the values of parameters no data here constrains:
# - tile shapes: cuBLAS bf16 behaves like 64-row tiles with split-K; vLLM's CUTLASS fp8 kernels
#   use 64x64 tiles up to 64 rows, then 128-row tiles on 2x1 clusters (256-row granularity);
#   FlashAttention-3 uses 128x128 tiles for head dim 128.
# - softmax_dim_equiv: flash attention's softmax work as extra head-dim (the FA3 paper's hdim 64
#   runs ~25% below hdim 128, hdim 256 ~15% above).
# - decode compute_eff / mma_m_min: dense MMA efficiency of attention (FlashMLA reports ~660 of
#   989 TFLOP/s) and wgmma's minimum of 64 rows; only MLA-like decode is compute-bound enough.
# - vLLM's custom all-reduce size limit (8 MiB) and one-shot limits (512 KiB up to 4 GPUs, 256 KiB
#   up to 8).
# - network: inter-node bandwidth efficiency and base latency (no multi-node data here).
_NCCL = {
    "base_s": 5e-6,
    "step_latency_ratio": 0.4,
    "eager_floor_s": 35e-6,
    "eager_extra_s": 1e-6,
    "eager_p": 4.0,
    "bw_eff": 0.7,
    "bw_eff_log2n": 0.2,
    "half_bytes": 4e6,
    "bw_exp": 1.0,
}
PRIORS: dict[str, dict[str, float]] = {
    "gemm": {
        "floor_s": 3.5e-6,
        "mem_eff": 0.9,
        "compute_eff": 0.8,
        "tile_m": 64.0,
        "tile_m_min": 64.0,
        "tile_n": 128.0,
        "tile_n_small": 128.0,
        "cluster_m": 1.0,
        "k_overhead": 256.0,
        "wave_quant": 0.3,
        "smooth_p": 4.0,
        "max_split_k": 16.0,
        "sm_bw_ratio": 3.0,
        "k_latency_s": 0.2e-9,
        "ragged_m_eff": 1.0,
    },
    "gemm_8bit": {
        "floor_s": 3.5e-6,
        "mem_eff": 0.8,
        "compute_eff": 0.7,
        "tile_m": 256.0,
        "tile_m_min": 64.0,
        "tile_n": 128.0,
        "tile_n_small": 64.0,
        "cluster_m": 2.0,
        "k_overhead": 256.0,
        "wave_quant": 0.9,
        "smooth_p": 4.0,
        "quant_floor_s": 2e-6,
        "quant_bytes_per_elem": 5.0,
        "max_split_k": 1.0,
        "sm_bw_ratio": 3.0,
        "k_latency_s": 0.2e-9,
        "ragged_m_eff": 0.8,
        "quant_row_sm_s": 0.5e-6,
    },
    "attention_prefill": {
        "floor_s": 11e-6,
        "tile_q": 128.0,
        "tile_kv": 128.0,
        "cta_overhead_tiles": 3.0,
        "balance_p": 4.0,
        "softmax_dim_equiv": 64.0,
        "compute_eff": 0.7,
        "mem_eff": 0.8,
        "smooth_p": 4.0,
        "fp8_time_scale": 1.05,
        "fp8_cta_overhead_tiles": 1.0,
        "fp8_floor_s": 1.5e-6,
        "token_sm_s": 0.5e-6,
        "fp8_token_sm_s": 0.5e-6,
    },
    "attention_decode": {
        "floor_s": 11.5e-6,
        "fp8_floor_s": 2e-6,
        "cta_s": 3.5e-6,
        "floor_p": 4.0,
        "mem_eff": 0.93,
        "mem_eff_fp8": 0.9,
        "seqs_half": 1.0,
        "overlap_units_per_sm": 20.0,
        "overlap_exp": 1.0,
        "mma_m_min": 64.0,
        "compute_eff": 0.6,
        "compute_eff_fp8": 0.6,
        "smooth_p": 4.0,
    },
    "elementwise": {
        "floor_s": 1.5e-6,
        "mem_eff_generic": 0.6,
        "mem_eff_norm": 0.5,
        "mem_eff_act": 0.6,
        "mem_eff_rope": 0.5,
        "mem_eff_add": 0.8,
        "mem_eff_emb": 0.5,
        "mem_eff_quant": 0.6,
        "l2_gain": 0.5,
        "l2_fraction": 0.5,
        "l2_exp": 2.0,
    },
    "nccl_all_reduce": dict(_NCCL),
    "nccl_all_gather": dict(_NCCL),
    "nccl_reduce_scatter": dict(_NCCL),
    "nccl_alltoall": dict(_NCCL),
    "custom_all_reduce": {
        **_NCCL,
        "eager_floor_s": 20e-6,
        "max_bytes": 8.0 * 2**20,
        "one_shot_max_bytes_4": 512.0 * 1024,
        "one_shot_max_bytes_8": 256.0 * 1024,
    },
    "network": {"base_s": 10e-6, "bw_eff": 0.85},
    "moe": {"floor_s": 10e-6, "gemm_eff": 1.0, "mem_eff": 0.5},
}
PRIORS["mla_prefill"] = dict(PRIORS["attention_prefill"])
PRIORS["mla_decode"] = dict(PRIORS["attention_decode"])

# Free parameters per family: name -> (lower, upper). Positive ranges are fitted in log space.
FREE: dict[str, dict[str, tuple[float, float]]] = {
    "gemm": {
        "floor_s": (0.5e-6, 20e-6),
        "mem_eff": (0.3, 1.0),
        "compute_eff": (0.3, 1.0),
        "k_overhead": (1.0, 8192.0),
        "wave_quant": (0.0, 1.0),
        "smooth_p": (1.0, 12.0),
        "max_split_k": (1.0, 64.0),
        "sm_bw_ratio": (0.5, 20.0),
        "k_latency_s": (1e-12, 5e-9),
        "ragged_m_eff": (0.3, 1.0),
    },
    "gemm_8bit": {
        "floor_s": (0.5e-6, 20e-6),
        "mem_eff": (0.3, 1.0),
        "compute_eff": (0.2, 1.0),
        "k_overhead": (1.0, 8192.0),
        "wave_quant": (0.0, 1.0),
        "smooth_p": (1.0, 12.0),
        "quant_floor_s": (0.1e-6, 20e-6),
        "quant_bytes_per_elem": (1.0, 20.0),
        "sm_bw_ratio": (0.5, 20.0),
        "k_latency_s": (1e-12, 5e-9),
        "ragged_m_eff": (0.3, 1.0),
        "quant_row_sm_s": (1e-9, 1e-4),
    },
    "attention_prefill": {
        "floor_s": (1e-6, 50e-6),
        "cta_overhead_tiles": (0.05, 20.0),
        "balance_p": (1.0, 12.0),
        "compute_eff": (0.2, 1.2),
        "mem_eff": (0.1, 1.0),
        "smooth_p": (1.0, 12.0),
        "fp8_time_scale": (0.3, 2.0),
        "fp8_cta_overhead_tiles": (0.0, 20.0),
        "fp8_floor_s": (0.0, 20e-6),
        "token_sm_s": (1e-9, 1e-4),
        "fp8_token_sm_s": (0.0, 1e-4),
    },
    "attention_decode": {
        "floor_s": (1e-6, 50e-6),
        "fp8_floor_s": (0.0, 20e-6),
        "cta_s": (0.05e-6, 50e-6),
        "floor_p": (1.0, 12.0),
        "mem_eff": (0.3, 1.0),
        "mem_eff_fp8": (0.3, 1.0),
        "seqs_half": (0.01, 100.0),
        "overlap_units_per_sm": (0.5, 1e4),
        "overlap_exp": (0.2, 4.0),
        "smooth_p": (1.0, 12.0),
    },
    "elementwise": {
        "floor_s": (0.1e-6, 20e-6),
        "mem_eff_norm": (0.05, 1.0),
        "mem_eff_act": (0.05, 1.0),
        "mem_eff_rope": (0.05, 1.0),
        "mem_eff_add": (0.05, 1.0),
        "mem_eff_emb": (0.05, 1.0),
        "l2_gain": (0.0, 5.0),
        "l2_fraction": (0.05, 4.0),
        "l2_exp": (0.5, 8.0),
    },
    "nccl": {
        "base_s": (0.1e-6, 100e-6),
        "step_latency_ratio": (0.0, 10.0),
        "bw_eff": (0.05, 2.0),
        "bw_eff_log2n": (-0.9, 3.0),
        "half_bytes": (1e3, 1e9),
        "bw_exp": (0.2, 3.0),
    },
}
FREE["mla_prefill"] = dict(FREE["attention_prefill"])
FREE["mla_decode"] = dict(FREE["attention_decode"])
FREE["moe"] = {"floor_s": (0.5e-6, 200e-6), "gemm_eff": (0.1, 2.0), "mem_eff": (0.02, 1.0)}
EAGER_FREE = {
    "eager_floor_s": (0.1e-6, 200e-6),
    "eager_extra_s": (0.0, 100e-6),
    "eager_p": (1.0, 12.0),
}
FREE["custom_all_reduce"] = {**FREE["nccl"], **EAGER_FREE}
VIDUR_GEMM_WEIGHT = 0.2
VIDUR_GEMM_MAX_M = 64
VIDUR_AR_WEIGHT = 1.0  # Vidur's all-reduce rows together weigh this many nccl-tests tables
LOSS_SCALE = 0.05  # soft-L1 knee on log-latency: rows more than ~5% off count linearly


def _log_residual(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(pred, 1e-12)) - np.log(meas)


def fit_params(
    base: dict[str, float],
    free: dict[str, tuple[float, float]],
    residual: Callable[[dict[str, float]], np.ndarray],
    max_nfev: int = 400,
) -> dict[str, float]:
    """Least-squares fit of the `free` parameters of `base` (log space for positive ranges)."""
    names = list(free)
    logs = [free[n][0] > 0 for n in names]
    lo = np.array(
        [math.log(free[n][0]) if lg else free[n][0] for n, lg in zip(names, logs, strict=True)]
    )
    hi = np.array(
        [math.log(free[n][1]) if lg else free[n][1] for n, lg in zip(names, logs, strict=True)]
    )
    x0 = []
    for n, lg, a, b in zip(names, logs, lo, hi, strict=True):
        v = math.log(base[n]) if lg else base[n]
        x0.append(min(max(v, a + 1e-6 * (b - a)), b - 1e-6 * (b - a)))

    def unpack(x: np.ndarray) -> dict[str, float]:
        out = dict(base)
        for n, lg, v in zip(names, logs, x, strict=True):
            out[n] = float(math.exp(v) if lg else v)
        return out

    from scipy.optimize import least_squares  # on use: scipy.optimize takes ~0.3 s

    res = least_squares(
        lambda x: residual(unpack(x)),
        np.array(x0),
        bounds=(lo, hi),
        loss="soft_l1",
        f_scale=LOSS_SCALE,
        max_nfev=max_nfev,
        x_scale=1.0,
        ftol=1e-10,
        xtol=1e-10,
        gtol=1e-10,
    )
    return unpack(res.x)


def _with(fit: KernelFit, family: str, params: dict[str, float]) -> KernelFit:
    new = copy.deepcopy(fit.params)
    new[family] = params
    return KernelFit(params=new, fitted_on=fit.fitted_on)


def _gemm_fit_samples(samples: dict[str, Samples], eight_bit: bool) -> tuple[Samples, np.ndarray]:
    parts, weights = [], []
    for name, w in (("gemm", 1.0), ("gemm_vidur", VIDUR_GEMM_WEIGHT)):
        s = samples.get(name)
        if not s:
            continue
        low = np.isin(s["dtype"], roofline.LOW_PRECISION_COMPUTE)
        s = subset(s, low if eight_bit else ~low)
        if name == "gemm_vidur":
            # Another stack (sarathi-serve, 2024 cuBLAS): its mid-size kernels run 10-40% slower
            # than vLLM 0.24's, so only its weight-streaming rows (few tokens) inform the fit.
            s = subset(s, s["m"] <= VIDUR_GEMM_MAX_M)
        parts.append(s)
        weights.append(np.full(len(s["latency_s"]), w))
    s = _cat(parts)
    return s, (np.concatenate(weights) if s else np.zeros(0))


def _fit_one(
    family: str,
    s: Samples,
    device: Device,
    fit: KernelFit,
    predictor: Callable[[Samples, Device, KernelFit], np.ndarray],
    free: dict[str, tuple[float, float]],
    weights: np.ndarray | None = None,
    base: dict[str, float] | None = None,
) -> KernelFit:
    """`fit` with `family` refitted on samples `s` (free parameters only)."""
    meas = s["latency_s"]
    sw = np.ones(len(meas)) if weights is None else np.sqrt(weights)

    def residual(params: dict[str, float]) -> np.ndarray:
        return sw * _log_residual(predictor(s, device, _with(fit, family, params)), meas)

    start = base if base is not None else PRIORS[family]
    return _with(fit, family, fit_params(start, free, residual))


def fit_families(
    samples: dict[str, Samples], device: Device, start: KernelFit
) -> tuple[KernelFit, list[str]]:
    """Fit every parameter family the samples inform, starting from `start`.

    Returns the fit and the families fitted. Families are fitted one after another on their own
    rows, so a folder holding a subset of the tables refits exactly that subset.
    """
    fit = start
    done: list[str] = []
    for eight_bit, fam in ((False, "gemm"), (True, "gemm_8bit")):
        s, w = _gemm_fit_samples(samples, eight_bit)
        if s and np.any(w > 0):
            fit = _fit_one(fam, s, device, fit, predict_gemm, FREE[fam], weights=w)
            done.append(fam)
    for fam, pred in (
        ("attention_prefill", predict_prefill),
        ("attention_decode", predict_decode),
        ("mla_prefill", predict_mla_prefill),
        ("mla_decode", predict_mla_decode),
        ("moe", predict_moe),
    ):
        if samples.get(fam):
            fit = _fit_one(fam, samples[fam], device, fit, pred, FREE[fam])
            done.append(fam)
    s = samples.get("nccl")
    vidur = samples.get("allreduce_vidur")
    for op in roofline.COLLECTIVES:
        fam = f"nccl_{op}"
        sub = subset(s, s["op"] == op) if s else {}
        if op == "all_reduce" and vidur:
            # Vidur's eager all-reduce (graphs off, kernel time incl. waiting for peers) adds
            # dense sizes from 2 KB to 64 MB; its many rows together weigh about one table.
            parts = [p for p in (sub, vidur) if p and len(p["latency_s"])]
            w = [np.full(len(p["latency_s"]), 1.0) for p in parts]
            if len(parts) == 2:
                w[1] *= VIDUR_AR_WEIGHT * len(sub["latency_s"]) / len(vidur["latency_s"])
            free = {**FREE["nccl"], **EAGER_FREE} if sub else EAGER_FREE
            fit = _fit_one(
                fam, _cat(parts), device, fit, predict_collective, free, np.concatenate(w)
            )
            done.append(fam)
        elif sub and len(sub["latency_s"]):
            fit = _fit_one(fam, sub, device, fit, predict_collective, FREE["nccl"])
            done.append(fam)
    if samples.get("custom_allreduce"):
        fam = "custom_all_reduce"
        fit = _fit_one(fam, samples["custom_allreduce"], device, fit, predict_collective, FREE[fam])
        done.append(fam)
    if samples.get("elementwise"):
        fam = "elementwise"
        fit = _fit_one(fam, samples[fam], device, fit, predict_elementwise, FREE[fam])
        params = dict(fit.params[fam])
        # A caller that does not name the op gets the geometric mean of a layer's four ops;
        # quantisation (one read, one narrower write) is priced like the activation.
        mix = [params[f"mem_eff_{op}"] for op in ("norm", "act", "rope", "add")]
        params["mem_eff_generic"] = float(np.exp(np.mean(np.log(mix))))
        params["mem_eff_quant"] = params["mem_eff_act"]
        fit = _with(fit, fam, params)
        done.append(fam)
    return fit, done


# Sample families refitted together when one group is held out; the first present names the
# groups (holding out "8gpu" removes 8-GPU rows from every collective source at once).
LOGO_LINKS: tuple[tuple[str, ...], ...] = (
    ("gemm", "gemm_vidur"),
    ("attention_prefill",),
    ("attention_decode",),
    ("nccl", "custom_allreduce", "allreduce_vidur"),
    ("elementwise",),
)


def leave_one_group_out(
    samples: dict[str, Samples], device: Device, start: KernelFit | None = None
) -> dict[str, np.ndarray]:
    """Predictions for every row from a fit that never saw that row's group.

    Groups: each (n, k) of the GEMM table, each head configuration of the attention tables, each
    GPU count of the collectives (all sources at once), each (op, TP) of Vidur's elementwise ops.
    Rows of linked families with no held-out counterpart (Vidur GEMMs) get NaN.
    """
    start = start or _priors()
    out = {name: np.full(len(s["latency_s"]), np.nan) for name, s in samples.items()}
    for links in LOGO_LINKS:
        present = [f for f in links if f in samples]
        if not present:
            continue
        for g in sorted(set(samples[present[0]]["group"])):
            kept = {f: subset(samples[f], samples[f]["group"] != g) for f in present}
            kept = {f: v for f, v in kept.items() if len(v["latency_s"])}
            fit, _ = fit_families(kept, device, start)
            for f in present:
                mask = samples[f]["group"] == g
                if mask.any():
                    out[f][mask] = predict(f, subset(samples[f], mask), device, fit)
    return out


def _priors() -> KernelFit:
    return KernelFit(params=copy.deepcopy(PRIORS), fitted_on="priors")


def _bundled_or_none() -> KernelFit | None:
    try:
        return roofline.default_fit()
    except (OSError, ServesimError, ValueError):
        return None


def calibrate_from_dir(
    tables_dir: str | Path, device: Device | str, vidur_dir: str | Path | None = None
) -> KernelFit:
    """Fit kernel parameters for `device` on the tables in `tables_dir` (and a Vidur folder).

    Families the tables do not cover keep the bundled fit's parameters.
    """
    dev = get_device(device) if isinstance(device, str) else device
    tables = load_tables(tables_dir)
    vidur = load_vidur(vidur_dir) if vidur_dir is not None else None
    samples = all_samples(tables, vidur)
    if not samples:
        raise ServesimError(
            f"No measurement tables found in {str(tables_dir)!r}; expected files such as "
            "gemm_perf.csv or nccl_perf.csv."
        )
    fit, done = fit_families(samples, dev, _priors())
    params = copy.deepcopy(fit.params)
    fitted = {d.split(" ")[0] for d in done}
    bundled = _bundled_or_none()
    if bundled is not None:
        for fam in params:
            if fam not in fitted and fam in bundled.params:
                params[fam] = dict(bundled.params[fam])
    sources = [Path(tables_dir).as_posix()] + ([Path(vidur_dir).as_posix()] if vidur_dir else [])
    note = f"{dev.name}: {' + '.join(sources)}; fitted {', '.join(sorted(fitted))}"
    return KernelFit(params=params, fitted_on=note)


# ---- joint fit across GPUs: efficiencies as functions of the spec sheet ------------------------
# Features each efficiency factor may depend on (log ratios to the H100 reference, see
# roofline.device_features); a ridge prior of sd COEF_SD keeps coefficients small, so a feature
# earns weight only where several GPUs agree on it.
TRANSFER_FEATURES: dict[str, tuple[str, ...]] = {
    "compute": ("flops_per_sm", "sms"),
    "memory": ("mem_bw", "balance", "l2"),
    "latency": ("flops_per_sm", "sms"),
}
COLLECTIVE_FEATURES: dict[str, tuple[str, ...]] = {"memory": ("link_bw",), "latency": ("link_bw",)}
COEF_SD = 0.5
FACTOR_SD_FLOOR = 0.05  # the few-shot prior never claims to know a device better than 5 %
TRANSFER_MAX_NFEV = 200
# Parameter family <- (sample family, row filter); fitted in this order (MoE prices with GEMM).
TRANSFER_FAMILIES: tuple[tuple[str, str, Callable[[Samples], np.ndarray] | None], ...] = (
    ("gemm", "gemm", lambda s: ~np.isin(s["dtype"], roofline.LOW_PRECISION_COMPUTE)),
    ("gemm_8bit", "gemm", lambda s: np.isin(s["dtype"], roofline.LOW_PRECISION_COMPUTE)),
    ("attention_prefill", "attention_prefill", None),
    ("attention_decode", "attention_decode", None),
    ("mla_prefill", "mla_prefill", None),
    ("mla_decode", "mla_decode", None),
    ("moe", "moe", None),
    ("nccl_all_reduce", "nccl", lambda s: s["op"] == "all_reduce"),
    ("custom_all_reduce", "custom_allreduce", None),
)

GpuData = dict[str, tuple[Device, dict[str, Samples]]]  # gpu name -> (device, samples)


def _coef_names(family: str) -> list[tuple[str, str]]:
    feats = COLLECTIVE_FEATURES if family.startswith(("nccl", "custom")) else TRANSFER_FEATURES
    groups = roofline.SCALED.get(family, {})
    return [(fac, f) for fac, names in groups.items() if names for f in feats.get(fac, ())]


def _model(coefs: list[tuple[str, str]], x: np.ndarray) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (fac, f), v in zip(coefs, x, strict=True):
        out.setdefault(fac, {})[f] = float(v)
    return out


def _family_rows(data: GpuData, sample_family: str, keep: Callable | None) -> list:
    rows = []
    for dev, samples in data.values():
        s = samples.get(sample_family)
        if not s:
            continue
        if keep is not None:
            s = subset(s, keep(s))
        if len(s["latency_s"]):
            rows.append((dev, s))
    return rows


def fit_transfer(
    data: GpuData,
    start: KernelFit | None = None,
    max_nfev: int = TRANSFER_MAX_NFEV,
    families: tuple[str, ...] | None = None,
) -> KernelFit:
    """One fit for every GPU of `data`: shape parameters shared, and each family's compute,
    memory and latency efficiencies log-linear in the device's spec-sheet features.

    Each GPU weighs the same whatever its row count. Afterwards each GPU's residual log-scale
    per factor (what the features miss) is fitted alone; their spread across GPUs is stored as
    `factor_sd`, the prior width few-shot calibration starts from."""
    fit = start or _priors()
    model: dict[str, dict[str, dict[str, float]]] = {}
    sd: dict[str, dict[str, float]] = {}
    fitted: list[str] = []
    for fam, source, keep in TRANSFER_FAMILIES:
        if families is not None and fam not in families:
            continue
        rows = _family_rows(data, source, keep)
        if not rows:
            continue
        fit = _transfer_family(fit, fam, rows, max_nfev)
        model[fam] = fit.device_model[fam]
        sd[fam] = _factor_spread(fit, fam, rows)
        fitted.append(fam)
    gpus = ", ".join(sorted(data))
    return KernelFit(
        params=fit.params,
        fitted_on=f"joint fit on {gpus}; families {', '.join(fitted)}",
        device_model={f: m for f, m in model.items() if m},
        factor_sd=sd,
    )


def leave_one_gpu_out_fit(
    data: GpuData, gpu: str, max_nfev: int = TRANSFER_MAX_NFEV, **kw: Any
) -> KernelFit:
    """The cross-GPU fit on every GPU of `data` except `gpu` (whose rows it never sees)."""
    if gpu not in data:
        raise ServesimError(f"GPU {gpu!r} has no tables here; pick one of {', '.join(data)}.")
    return fit_transfer({g: d for g, d in data.items() if g != gpu}, None, max_nfev, **kw)


def _transfer_family(fit: KernelFit, fam: str, rows: list, max_nfev: int) -> KernelFit:
    """`fit` with family `fam`'s free parameters and feature coefficients fitted on `rows`."""
    coefs = _coef_names(fam)
    free = FREE.get(fam, FREE["nccl"] if fam.startswith("nccl") else {})
    names = list(free)
    source = source_of(fam)
    total = sum(len(s["latency_s"]) for _, s in rows)
    weights = [math.sqrt(total / len(rows) / len(s["latency_s"])) for _, s in rows]
    ridge = math.sqrt(total / len(rows)) / COEF_SD

    def split(x: np.ndarray) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        params = dict(fit.params[fam]) | {n: float(v) for n, v in zip(names, x, strict=False)}
        return params, _model(coefs, x[len(names) :])

    def residual(x: np.ndarray) -> np.ndarray:
        trial = _with_model(fit, fam, *split(x))
        parts = [
            w * _log_residual(predict(source, s, dev, trial), s["latency_s"])
            for (dev, s), w in zip(rows, weights, strict=True)
        ]
        return np.concatenate([*parts, ridge * x[len(names) :]])

    x = _fit_vector(fit.params[fam], free, len(coefs), residual, max_nfev)
    return _with_model(fit, fam, *split(x))


def source_of(family: str) -> str:
    """The sample family whose rows fit a parameter family."""
    return next(src for fam, src, _ in TRANSFER_FAMILIES if fam == family)


def _with_model(
    fit: KernelFit, family: str, params: dict[str, float], model: dict[str, dict[str, float]]
) -> KernelFit:
    new = dict(fit.params)
    new[family] = {k: float(v) for k, v in params.items()}
    dm = dict(fit.device_model)
    dm[family] = model
    return KernelFit(params=new, fitted_on=fit.fitted_on, device_model=dm, factor_sd=fit.factor_sd)


def _fit_vector(
    base: dict[str, float],
    free: dict[str, tuple[float, float]],
    n_coefs: int,
    residual: Callable[[np.ndarray], np.ndarray],
    max_nfev: int,
) -> np.ndarray:
    """Least squares over free parameters (log space for positive ranges) plus coefficients."""
    names = list(free)
    logs = [free[n][0] > 0 for n in names]
    lo = [math.log(free[n][0]) if lg else free[n][0] for n, lg in zip(names, logs, strict=True)]
    hi = [math.log(free[n][1]) if lg else free[n][1] for n, lg in zip(names, logs, strict=True)]
    x0 = []
    for n, lg, a, b in zip(names, logs, lo, hi, strict=True):
        v = math.log(base[n]) if lg else base[n]
        x0.append(min(max(v, a + 1e-6 * (b - a)), b - 1e-6 * (b - a)))

    def unpack(x: np.ndarray) -> np.ndarray:
        out = np.array(x, dtype=float)
        for i, lg in enumerate(logs):
            if lg:
                out[i] = math.exp(x[i])
        return out

    from scipy.optimize import least_squares  # on use: scipy.optimize takes ~0.3 s

    res = least_squares(
        lambda x: residual(unpack(x)),
        np.array(x0 + [0.0] * n_coefs),
        bounds=(np.array(lo + [-3.0] * n_coefs), np.array(hi + [3.0] * n_coefs)),
        loss="soft_l1",
        f_scale=LOSS_SCALE,
        max_nfev=max_nfev,
        x_scale=1.0,
    )
    return unpack(res.x)


def device_offsets(
    fit: KernelFit, family: str, device: Device, s: Samples, sd: dict[str, float] | None = None
) -> dict[str, float]:
    """MAP log-scale per factor of one device's efficiencies on top of `fit` (Gaussian prior of
    sd `sd` per factor, or nearly flat), from its rows `s` of `family`'s source."""
    factors = [f for f, names in roofline.SCALED.get(family, {}).items() if names]
    if not factors:
        return {}
    sig = np.array([(sd or {}).get(f, 1.0) for f in factors])
    meas = s["latency_s"]
    noise = 0.1

    def resid(z: np.ndarray) -> np.ndarray:
        model = {f: dict(m) for f, m in fit.device_model.get(family, {}).items()}
        for fac, v in zip(factors, z, strict=True):
            model.setdefault(fac, {})
            model[fac]["const"] = model[fac].get("const", 0.0) + float(v)
        trial = _with_model(fit, family, fit.params[family], model)
        r = _log_residual(predict(source_of(family), s, device, trial), meas) / noise
        return np.concatenate([r, z / sig])

    from scipy.optimize import least_squares  # on use: scipy.optimize takes ~0.3 s

    res = least_squares(resid, np.zeros(len(factors)), loss="soft_l1", f_scale=1.0)
    return dict(zip(factors, (float(v) for v in res.x), strict=True))


def _factor_spread(fit: KernelFit, family: str, rows: list) -> dict[str, float]:
    """Spread across GPUs of each factor's per-GPU residual log-scale (RMS, floored)."""
    offs = [device_offsets(fit, family, dev, s) for dev, s in rows]
    if not offs or not offs[0]:
        return {}
    return {
        f: max(FACTOR_SD_FLOOR, float(np.sqrt(np.mean([o[f] ** 2 for o in offs])))) for f in offs[0]
    }


def package_data(
    gpus: list[str], engine: str = "vllm", max_rows: int | None = 400, seed: int = 0
) -> GpuData:
    """Samples of each GPU's installed tables (at most `max_rows` rows per table), with its
    catalog device; GPUs missing from the catalog are skipped."""
    out: GpuData = {}
    for g in gpus:
        try:
            dev = get_device(g)
        except ServesimError:
            continue
        samples = all_samples(load_package_tables(g, engine, max_rows, seed))
        if samples:
            out[g] = (dev, samples)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m servesim.predictor.calibrate TABLES [--vidur DIR] --device NAME --out FILE`."""
    ap = argparse.ArgumentParser(
        prog="servesim.predictor.calibrate", description=__doc__.splitlines()[0]
    )
    ap.add_argument("tables")
    ap.add_argument("--vidur", default=None)
    ap.add_argument("--device", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    fit = calibrate_from_dir(args.tables, args.device, args.vidur)
    fit.save(args.out)
    print(f"wrote {args.out}: {fit.fitted_on}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
