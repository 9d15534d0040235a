"""Measured-kernel backend: operator times read from aiconfigurator-core's kernel tables.

For one GPU and serving engine (tables found by `kernel_tables`, the engine's version or the
nearest one) this prices GEMMs per dtype, prefill and decode attention (MLA's too), MoE expert
layers, TP all-reduces and Gated DeltaNet's recurrence (chunked prefill, recurrent decode). Each
table is a grid over its measured axes (GEMM m×n×k, attention batch×length per head layout,
all-reduce message size per GPU count); a shape inside the grid is interpolated multilinearly in
log latency over log size (exact on measured points, monotone between neighbours). Outside the
grid the roofline is anchored to the nearest measured point: measured(anchor) ×
roofline(shape) / roofline(anchor), continuous at the grid's edge, never a flat extrapolation.
Every time comes with a provenance code (`PROVENANCE`); what has no table returns None and the
caller prices it with the roofline.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import kernel_tables, roofline
from servesim.spec.devices import Device
from servesim.spec.dtypes import canonical, compute_dtype, gemm_compute_dtype, kernel_format
from servesim.spec.engine_profile import MXFP4_ACTIVATIONS

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

MEASURED, INTERPOLATED, EXTRAPOLATED, ROOFLINE = 0, 1, 2, 3
PROVENANCE = ("measured", "interpolated", "extrapolated", "roofline")
LATENCY_MODELS = ("auto", "measured", "roofline")
MS = 1e-3  # the tables store milliseconds
_EPS = 1e-9

# servesim weight dtype -> the table's gemm_dtype (W8A8 per-tensor fp8, NVFP4 W4A4, ...).
GEMM_DTYPES = {
    "bf16": "bfloat16",
    "fp16": "bfloat16",
    "fp8": "fp8",
    "fp8_block": "fp8_block",
    "fp4": "nvfp4",
    "int4": "int4_wo",
    "int8": "int8_wo",
}
KV_DTYPES = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8"}
# servesim expert dtype -> the MoE table's moe_dtype, in order of preference: an fp8 checkpoint
# is per-tensor or block-scaled (DeepSeek's), the same 8-bit GEMMs with other scales, so either
# table serves and the one that measured the layout wins.
MOE_DTYPES = {
    "bf16": ("bfloat16",),
    "fp16": ("bfloat16",),
    "fp8": ("fp8", "fp8_block"),
    "fp8_block": ("fp8_block", "fp8"),
    "fp4": ("nvfp4",),
    "int4": ("int4_wo",),
}
# MXFP4 experts (gpt-oss) run on bf16 activations (W4A16) or on activations quantised to MXFP8
# (W4A8), measured as different kernels about 3-4x apart on Blackwell: the table dtype of each
# (`MeasuredKernels._moe_table_dtypes` orders them by the launch's format).
MXFP4_TABLES = {"bf16": "w4a16_mxfp4", "mxfp8": "w4a8_mxfp4_mxfp8"}
# GPUs of the measured set by tensor-core generation: SM 10.x (B200, B300, GB200, GB300) and
# SM 12.0 (RTX PRO 6000 Blackwell); the others are Ampere, Ada, Hopper or not NVIDIA's.
SM100_GPUS = frozenset({"b200_sxm", "b300_sxm", "gb200", "gb300"})
# The first vLLM release whose fp8 MoE oracle tries FlashInfer's kernels first (`_moe_kernel_
# family`), and the table kernel names of each kernel family a launch can ask for: the direct
# `fused_experts` collections (`vllm_fused_moe`) timed Triton's kernels.
VLLM_FP8_MOE_ORACLE = (0, 16, 0, 0)
MOE_KERNEL_FAMILIES = {"triton": ("triton", "vllm_fused_moe"), "marlin": ("marlin",)}
SM120_GPUS = frozenset({"rtx_pro_6000_server"})
ACT_BYTES = 2.0  # activations travel in bf16
# The MLA tables measure DeepSeek-V3's latent layout: (kv_lora_rank, qk_rope_head_dim,
# qk_nope_head_dim, v_head_dim); another layout is left to the roofline.
MLA_DIMS = (512, 64, 128, 128)
# Prefill chunk lengths and decode batch sizes priced together from the attention tables (one
# vectorised lookup per block of this many, `MeasuredKernels._in_blocks`).
SHAPE_BLOCK = 256
# Phases of SGLang's DeepEP expert tables: prefill batches run DeepEP's normal mode, decode
# batches its low-latency mode (`--deepep-mode auto`, the default).
WIDE_EP_PHASES = ("context", "generation")

# DeepEP's dispatch and combine, measured by aiconfigurator's SGLang WideEP collectors
# (collector/wideep/sglang/collect_deepep_normal.py and collect_deepep_ll.py, DeepEP's own
# test_intranode / test_low_latency runs): `num_token` is what each rank dispatches, `node_num`
# counts full nodes of this many ranks ("4 on GB200, 8 on B200/H200"; 8 elsewhere).
DEEPEP_NODE_RANKS = {"gb200": 4, "gb300": 4}
# The SMs DeepEP's normal mode runs on when the launch gives no `--deepep-config`:
# `deep_ep.Buffer.num_sms`, 20, which SGLang's DeepEPConfig takes (token_dispatcher/deepep.py).
DEEPEP_NORMAL_SMS = 20
# The two modes of SGLang's `--deepep-mode auto`: normal for batches with prefill, low latency
# for decode-only ones; the table of each.
DEEPEP_TABLES = {"normal": "wideep_deepep_normal_perf", "low_latency": "wideep_deepep_ll_perf"}

# TensorRT-LLM's NVLink all-to-all kernels (MNNVL) and the phases each runs per expert layer,
# as aiconfigurator measured them (`comm/trtllm/<v>/trtllm_alltoall_perf`, TensorRT-LLM
# 1.2.0rc6 on GB200): the two-sided one (WideEP) exchanges routing metadata first.
TRTLLM_A2A_PHASES = {
    "NVLinkOneSided": ("alltoall_dispatch", "alltoall_combine"),
    "NVLinkTwoSided": ("alltoall_prepare", "alltoall_dispatch", "alltoall_combine"),
}

Coded = tuple[np.ndarray, np.ndarray]  # (seconds, provenance codes), one per shape


@dataclass(frozen=True)
class Grid:
    """Log latencies on the product of measured axes (NaN where a cell was not measured)."""

    axes: tuple[np.ndarray, ...]  # log of the sorted measured values, one array per axis
    values: np.ndarray  # log seconds, shape = lengths of the axes

    def lookup(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log seconds, provenance code, anchor) for points `x` (N × axes, linear units).

        Multilinear in log space between the bracketing grid points; a point outside the grid
        is clamped onto it (code EXTRAPOLATED, the anchor is the clamped point) and a point on
        grid points of every axis is MEASURED. Missing cells drop out of the weights; NaN when
        every bracketing cell is missing.
        """
        lx = np.log(np.maximum(x, _EPS))
        n = len(lx)
        clamped = np.zeros(n, dtype=bool)
        exact = np.ones(n, dtype=bool)
        lo: list[np.ndarray] = []
        ws: list[np.ndarray] = []
        for d, ax in enumerate(self.axes):
            v = np.clip(lx[:, d], ax[0], ax[-1])
            clamped |= np.abs(v - lx[:, d]) > 1e-9
            if len(ax) == 1:
                i = np.zeros(n, dtype=np.int64)
                w = np.zeros(n)
            else:
                i = np.clip(np.searchsorted(ax, v, side="right") - 1, 0, len(ax) - 2)
                w = (v - ax[i]) / (ax[i + 1] - ax[i])
                w = np.where(w < 1e-9, 0.0, np.where(w > 1 - 1e-9, 1.0, w))
            exact &= (w == 0.0) | (w == 1.0)
            lo.append(i)
            ws.append(w)
            lx[:, d] = v
        acc = np.zeros(n)
        wsum = np.zeros(n)
        for corner in itertools.product((0, 1), repeat=len(self.axes)):
            wt = np.ones(n)
            idx = []
            for d, c in enumerate(corner):
                wt = wt * (ws[d] if c else 1.0 - ws[d])
                idx.append(np.minimum(lo[d] + c, len(self.axes[d]) - 1))
            val = self.values[tuple(idx)]
            ok = (wt > 0) & ~np.isnan(val)
            acc += np.where(ok, wt * np.where(ok, val, 0.0), 0.0)
            wsum += np.where(ok, wt, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            logt = np.where(wsum > 0, acc / np.where(wsum > 0, wsum, 1.0), np.nan)
        code = np.where(clamped, EXTRAPOLATED, np.where(exact, MEASURED, INTERPOLATED))
        code = code.astype(np.int8)
        holes = np.isnan(logt)
        if holes.any() and len(self._measured_cells[1]):
            # Not measured around the point (a batch too large for memory at that length):
            # anchor on the nearest measured cell in log space.
            cells, vals = self._measured_cells
            _, j = self._tree.query(lx[holes])
            lx[holes] = cells[j]
            logt[holes] = vals[j]
            code[holes] = EXTRAPOLATED
        return logt, code, np.exp(lx)

    @functools.cached_property
    def _measured_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Log coordinates and log seconds of every measured cell."""
        where = np.nonzero(~np.isnan(self.values))
        cells = np.stack([ax[i] for ax, i in zip(self.axes, where, strict=True)], axis=1)
        return cells, self.values[where]

    @functools.cached_property
    def _tree(self) -> cKDTree:
        from scipy.spatial import cKDTree  # imported on use: ~0.2 s, not every run needs it

        return cKDTree(self._measured_cells[0])


def batch_gains(grid: Grid, batch: int, lengths: np.ndarray) -> np.ndarray:
    """Per-prompt seconds of `batch` prompts of each length in `lengths` run in one kernel
    call, over one prompt's alone, from a (batch, prompt length) grid: interpolated in log
    batch between the measured batches whose cells at that length are measured or
    interpolated, the largest such batch's gain beyond it; at most 1 (a batch never costs more
    a prompt than one prompt). Lengths outside the grid take its nearest edge's gains."""
    ax_b, ax_l = grid.axes
    lengths = np.asarray(lengths, dtype=np.float64)
    out = np.ones(len(lengths))
    sizes = np.exp(ax_b)
    if batch <= 1 or sizes[0] > 1.0 + 1e-9:
        return out
    ls = np.exp(np.clip(np.log(np.maximum(lengths, 1.0)), ax_l[0], ax_l[-1]))
    pts = np.stack([np.repeat(sizes, len(ls)), np.tile(ls, len(sizes))], axis=1)
    logt, code, _ = grid.lookup(pts)
    logt = logt.reshape(len(sizes), len(ls))
    ok = ((code != EXTRAPOLATED) & ~np.isnan(logt.ravel())).reshape(len(sizes), len(ls))
    lb = math.log(batch)
    for j in range(len(ls)):
        keep = ok[:, j]
        if keep[0]:
            log_gain = logt[keep, j] - ax_b[keep] - logt[0, j]
            out[j] = min(1.0, math.exp(float(np.interp(lb, ax_b[keep], log_gain))))
    return out


def build_grid(coords: list[np.ndarray], latency_ms: np.ndarray) -> Grid:
    """A grid from scattered rows on a product of axes; repeated cells keep the fastest kernel
    (tables list several kernels for one shape, the engine picks the fastest)."""
    axes = [np.unique(np.asarray(c, dtype=np.float64)) for c in coords]
    idx = tuple(
        np.searchsorted(a, np.asarray(c, dtype=np.float64))
        for a, c in zip(axes, coords, strict=True)
    )
    vals = np.full([len(a) for a in axes], np.inf)
    np.minimum.at(vals, idx, np.asarray(latency_ms, dtype=np.float64) * MS)
    vals[~np.isfinite(vals) | (vals <= 0)] = np.nan
    return Grid(tuple(np.log(a) for a in axes), np.log(vals))


def anchored(grid: Grid, x: np.ndarray, roof: Callable[[np.ndarray], np.ndarray]) -> Coded:
    """Seconds and provenance for points `x` on `grid`: interpolated inside, the roofline
    anchored at the clamped point outside, the plain roofline where no cell was measured."""
    cols = tuple(range(x.shape[1]))
    return _anchored_cols(grid, x, x, roof, cols)


# ---- reading the tables -----------------------------------------------------------------------
# vLLM's CUTLASS fp8 GEMM (`CutlassFP8ScaledMMLinearKernel`) on SM 10.x runs one kernel
# configuration per bucket of rows (`cutlass_gemm_sm100_fp8_dispatch` in csrc/quantization/
# cutlass_w8a8/c3x/scaled_mm_sm100_fp8_dispatch.cuh): m in [1, 16] (`sm100_fp8_config_M16_
# swap_ab`: the rows fit one 32-wide tile), (16, 64) (`sm100_fp8_config_M64_swap_ab`; m = 64
# takes it from k = 4,096 and an unswapped one below, so m = 64 is a bucket of its own here),
# (64, 256] (M256) and above (the default). Within a bucket the same kernel on fewer rows does
# no more work, so a cell slower than a larger m of its bucket is a timing artefact of the
# table (its B200/B300/GB200/GB300 tables time m = 1 at 2-4x m = 2 on most shapes and scatter
# 2-3x spikes elsewhere): such a cell takes the fastest time of the larger rows of its bucket.
VLLM_SM100_FP8_KERNEL = "CutlassFP8ScaledMMLinearKernel"
VLLM_SM100_FP8_M_BUCKETS = (16.0, 63.0, 64.0, 256.0)


@functools.lru_cache(maxsize=256)
def _gemm_grid(path: Path, gemm_dtype: str) -> Grid | None:
    cols = kernel_tables.read(path, ("gemm_dtype", "m", "n", "k", "latency"))
    keep = cols["gemm_dtype"] == gemm_dtype
    if not keep.any():
        return None
    grid = build_grid([cols[c][keep] for c in ("m", "n", "k")], cols["latency"][keep])
    if _one_config_per_bucket(path, gemm_dtype):
        grid = bucket_floor(grid, VLLM_SM100_FP8_M_BUCKETS)
    return grid


def _table_origin(path: Path) -> tuple[str, str, str]:
    """(GPU, engine, version) of a table, from its path: <gpu>/<family>/<engine>/<version>/
    <table>, as aiconfigurator-core lays its data out."""
    return path.parents[3].name, path.parent.parent.name, path.parent.name


def _one_config_per_bucket(path: Path, gemm_dtype: str) -> bool:
    """Whether a GEMM table is vLLM's CUTLASS fp8 kernel on an SM 10.x GPU."""
    if gemm_dtype != "fp8" or len(path.parents) < 4 or _table_origin(path)[0] not in SM100_GPUS:
        return False
    try:
        sources = kernel_tables.read(path, ("gemm_dtype", "kernel_source"))
    except ServesimError:  # a table without kernel names
        return False
    names = set(sources["kernel_source"][sources["gemm_dtype"] == gemm_dtype].tolist())
    return names == {VLLM_SM100_FP8_KERNEL}


def bucket_floor(grid: Grid, bounds: tuple[float, ...]) -> Grid:
    """`grid` (axes m, ...) with each cell no slower than the larger measured m of its bucket of
    rows (buckets end at `bounds`, inclusive): the fastest time from it to the bucket's end."""
    m = np.exp(grid.axes[0])
    bucket = np.searchsorted(np.asarray(bounds), m - 1e-9)
    vals = grid.values.copy()
    for b in np.unique(bucket):
        rows = np.nonzero(bucket == b)[0]
        # running minimum from the bucket's largest m down, NaN (unmeasured) cells skipped
        vals[rows[::-1]] = np.fmin.accumulate(vals[rows[::-1]], axis=0)
    vals[np.isnan(grid.values)] = np.nan  # an unmeasured cell stays unmeasured
    return Grid(grid.axes, vals)


@functools.lru_cache(maxsize=64)
def _scale_grid(path: Path) -> Grid | None:
    """The per-tensor fp8 scale computation (an amax pass over the activations) by (m, k)."""
    cols = kernel_tables.read(path, ("quant_dtype", "m", "k", "latency"))
    keep = cols["quant_dtype"] == "fp8"
    if not keep.any():
        return None
    return build_grid([cols["m"][keep], cols["k"][keep]], cols["latency"][keep])


_ATTN_COLS = (
    "batch_size",
    "isl",
    "num_heads",
    "num_key_value_heads",
    "head_dim",
    "kv_cache_dtype",
    "step",
    "window_size",
    "latency",
)


@functools.lru_cache(maxsize=64)
def _attn_layouts(path: Path, kv: str, window: int) -> np.ndarray:
    """Distinct (q heads, kv heads, head dim) measured for a kv dtype and window."""
    c = kernel_tables.read(path, _ATTN_COLS)
    keep = (c["kv_cache_dtype"] == kv) & (c["window_size"] == window)
    heads = np.stack([c["num_heads"], c["num_key_value_heads"], c["head_dim"]], axis=1)[keep]
    return np.unique(heads.astype(np.float64), axis=0)


@functools.lru_cache(maxsize=256)
def _attn_grid(path: Path, layout: tuple[float, float, float], kv: str, window: int, decode: bool):
    c = kernel_tables.read(path, _ATTN_COLS)
    keep = (c["kv_cache_dtype"] == kv) & (c["window_size"] == window)
    keep &= (c["num_heads"] == layout[0]) & (c["num_key_value_heads"] == layout[1])
    keep &= c["head_dim"] == layout[2]
    if decode:  # each sequence attends step + 1 tokens
        length = c["step"][keep] + 1.0
    else:
        keep &= c["step"] == 0
        length = c["isl"][keep]
    return build_grid([c["batch_size"][keep], length], c["latency"][keep])


@functools.lru_cache(maxsize=64)
def _comm_grid(path: Path, num_gpus: int, custom: bool) -> Grid | None:
    dtype_col = "allreduce_dtype" if custom else "nccl_dtype"
    cols = ("num_gpus", "message_size", "latency", "kernel_source", dtype_col)
    c = kernel_tables.read(path, cols + (() if custom else ("op_name",)))
    keep = c["num_gpus"] == num_gpus
    if custom:  # CUDA-graph replays (decode and captured prefill), not eager launches
        keep &= np.array(["eager" not in str(s).lower() for s in c["kernel_source"]], dtype=bool)
    else:
        keep &= c["op_name"] == "all_reduce"
    keep &= np.isin(c[dtype_col], ("half", "bfloat16", "float16"))
    if not keep.any():
        return None
    return build_grid([c["message_size"][keep] * 2.0], c["latency"][keep])


@functools.lru_cache(maxsize=64)
def _deepep_grid(
    path: Path, mode: str, hidden: int, experts: int, topk: int, node_ranks: int
) -> Grid | None:
    """(EP ranks, tokens a rank) grid of one dispatch plus one combine of DeepEP in `mode` for
    one expert layout, from a `DEEPEP_TABLES` table; None where it lacks the layout. Normal
    mode at `DEEPEP_NORMAL_SMS`, its notify phases included (they run before each transfer)."""
    shape = ("node_num", "num_token", "hidden_size", "num_topk", "num_experts")
    if mode == "normal":
        parts = (
            "dispatch_transmit_us",
            "dispatch_notify_us",
            "combine_transmit_us",
            "combine_notify_us",
        )
        c = kernel_tables.read(path, (*shape, "dispatch_sms", *parts))
        keep = c["dispatch_sms"] == DEEPEP_NORMAL_SMS
    else:
        parts = ("dispatch_avg_t_us", "combine_avg_t_us")
        c = kernel_tables.read(path, (*shape, *parts))
        keep = np.ones(len(c["num_token"]), dtype=bool)
    keep &= (c["hidden_size"] == hidden) & (c["num_topk"] == topk) & (c["num_experts"] == experts)
    if not keep.any():
        return None
    us = sum(np.asarray(c[k], dtype=np.float64) for k in parts)[keep]
    ranks = np.asarray(c["node_num"], dtype=np.float64)[keep] * node_ranks
    return build_grid([ranks, c["num_token"][keep]], us / 1e3)


@functools.lru_cache(maxsize=64)
def _encoder_attn_grid(path: Path, heads: int, head_dim: int) -> Grid | None:
    """(images, tokens an image) grid of a vision encoder's bidirectional attention in bf16 for
    a head layout per device (aiconfigurator's encoder_attention tables: `batch_size`
    sequences of `isl` tokens); None where it was not measured."""
    cols = ("batch_size", "isl", "num_heads", "head_dim", "attn_dtype", "latency")
    c = kernel_tables.read(path, cols)
    keep = (c["num_heads"] == heads) & (c["head_dim"] == head_dim)
    keep &= np.isin(c["attn_dtype"], ("bfloat16", "bf16"))
    if not keep.any():
        return None
    return build_grid([c["batch_size"][keep], c["isl"][keep]], c["latency"][keep])


@functools.lru_cache(maxsize=64)
def _trtllm_a2a_grids(
    path: Path, kernel: str, dtype: str, layout: tuple[int, int, int]
) -> tuple[Grid, ...] | None:
    """(EP ranks, tokens a rank) grids of each phase (`TRTLLM_A2A_PHASES`) of one TensorRT-LLM
    NVLink all-to-all kernel for an expert layout (hidden, experts, top-k) whose dispatch
    moves `dtype` (nvfp4, fp8 or bfloat16); None unless every phase was measured."""
    cols = (
        "kernel_source",
        "op_name",
        "moe_dtype",
        "num_tokens",
        "hidden_size",
        "topk",
        "num_experts",
        "moe_ep_size",
        "latency",
    )
    c = kernel_tables.read(path, cols)
    hidden, experts, topk = layout
    base = (c["kernel_source"] == kernel) & (c["moe_dtype"] == dtype)
    base &= (c["hidden_size"] == hidden) & (c["num_experts"] == experts) & (c["topk"] == topk)
    grids = []
    for phase in TRTLLM_A2A_PHASES[kernel]:
        keep = base & (c["op_name"] == phase)
        if not keep.any():
            return None
        grids.append(
            build_grid([c["moe_ep_size"][keep], c["num_tokens"][keep]], c["latency"][keep])
        )
    return tuple(grids)


_MOE_COLS = (
    "kernel_source",
    "moe_dtype",
    "num_tokens",
    "hidden_size",
    "inter_size",
    "topk",
    "num_experts",
    "moe_tp_size",
    "moe_ep_size",
    "distribution",
    "latency",
)
_MOE_LAYOUT = _MOE_COLS[3:9]  # hidden, inter, top-k, experts, moe TP, EP


@functools.lru_cache(maxsize=64)
def _moe_sources(path: Path, moe_dtype: str) -> frozenset[str]:
    """The kernels (`kernel_source`) a MoE table measured for one dtype."""
    c = kernel_tables.read(path, _MOE_COLS)
    return frozenset(str(s) for s in c["kernel_source"][c["moe_dtype"] == moe_dtype])


def _family_kernels(path: Path, moe_dtype: str, family: str) -> frozenset[str]:
    """The kernels of one family (`MOE_KERNEL_FAMILIES`; else its name) a MoE table measured
    for one dtype."""
    names = MOE_KERNEL_FAMILIES.get(family, (family,))
    return frozenset(k for k in _moe_sources(path, moe_dtype) if any(n in k for n in names))


@functools.lru_cache(maxsize=64)
def _moe_layouts(
    path: Path,
    moe_dtype: str,
    distribution: str = "balanced",
    kernels: frozenset[str] | None = None,
) -> np.ndarray:
    """Distinct (hidden, inter, top-k, experts, moe TP, EP) measured with this routing
    distribution (`balanced`, `power_law_1.01`, `power_law_1.2`), by `kernels` (the
    `kernel_source` values; None: any)."""
    c = kernel_tables.read(path, _MOE_COLS)
    keep = (c["moe_dtype"] == moe_dtype) & (c["distribution"] == distribution)
    if kernels is not None:
        keep &= np.isin(c["kernel_source"], list(kernels))
    rows = np.stack([c[k] for k in _MOE_LAYOUT], axis=1)[keep]
    return np.unique(rows.astype(np.float64), axis=0)


@functools.lru_cache(maxsize=256)
def _moe_grid(
    path: Path,
    moe_dtype: str,
    layout: tuple[float, ...],
    distribution: str = "balanced",
    kernels: frozenset[str] | None = None,
) -> Grid:
    """Expert-layer seconds over the token count for one layout and routing distribution (the
    fastest of `kernels`, or of every kernel measured, where several were)."""
    c = kernel_tables.read(path, _MOE_COLS)
    keep = (c["moe_dtype"] == moe_dtype) & (c["distribution"] == distribution)
    if kernels is not None:
        keep &= np.isin(c["kernel_source"], list(kernels))
    for name, v in zip(_MOE_LAYOUT, layout, strict=True):
        keep &= c[name] == v
    return build_grid([c["num_tokens"][keep]], c["latency"][keep])


_MLA_COLS = ("kv_cache_dtype", "num_heads", "batch_size", "isl", "step", "latency")


@functools.lru_cache(maxsize=64)
def _mla_heads(path: Path, kv: str) -> np.ndarray:
    """Query heads per GPU measured for a kv dtype."""
    c = kernel_tables.read(path, _MLA_COLS)
    return np.unique(c["num_heads"][c["kv_cache_dtype"] == kv].astype(np.float64))


@functools.lru_cache(maxsize=64)
def _mla_grid(path: Path, heads: float, kv: str, decode: bool) -> Grid:
    """MLA attention seconds over (batch, tokens attended or prompt length) for one head count."""
    c = kernel_tables.read(path, _MLA_COLS)
    keep = (c["kv_cache_dtype"] == kv) & (c["num_heads"] == heads)
    length = c["step"][keep] + 1.0 if decode else c["isl"][keep]
    return build_grid([c["batch_size"][keep], length], c["latency"][keep])


# Gated DeltaNet kernels as SGLang, vLLM and TensorRT-LLM run them (fla's chunked prefill and
# the fused recurrent decode step), measured per head layout on one device.
GDN_KERNELS = {
    False: ("context", "chunk_gated_delta_rule"),
    True: ("generation", "fused_recurrent_gated_delta_rule_packed_decode"),
}


@functools.lru_cache(maxsize=64)
def _gdn_grid(path: Path, decode: bool, layout: tuple[float, float, float, float]) -> Grid | None:
    """Latency over batch × sequence length of one GDN layer's recurrence kernel for a head
    layout (k heads, v heads, k dim, v dim per device), or None when it was not measured."""
    cols = kernel_tables.read(
        path,
        (
            "kernel_source",
            "phase",
            "batch_size",
            "seq_len",
            "num_k_heads",
            "num_v_heads",
            "head_k_dim",
            "head_v_dim",
            "latency",
        ),
    )
    phase, source = GDN_KERNELS[decode]
    keep = (cols["phase"] == phase) & (cols["kernel_source"] == source)
    for name, v in zip(
        ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim"), layout, strict=True
    ):
        keep &= np.asarray(cols[name], dtype=np.float64) == v
    if not keep.any():
        return None
    return build_grid([cols["batch_size"][keep], cols["seq_len"][keep]], cols["latency"][keep])


def moe_roofline_np(
    p: np.ndarray, gated: bool, weight_dtype: str, device: Device, fit: roofline.KernelFit
) -> np.ndarray:
    """Roofline seconds of one expert layer (up and down GEMMs over the experts hit, the
    activation) for rows p = (tokens, hidden, inter, top-k, experts, moe TP, EP): the tokens
    of the EP group, each EP rank holding experts/EP experts split over moe TP devices."""
    tokens, h, inter, k_top, n_exp, tp, ep = (p[:, i] for i in range(7))
    routed = tokens / ep
    experts = np.maximum(1.0, np.floor(n_exp / ep))
    width = np.floor(inter / tp)
    frac = np.minimum(1.0, k_top / experts)
    hit = np.maximum(experts * (1.0 - (1.0 - frac) ** routed), 1e-9)
    rows = routed * k_top / hit  # T·k/EP rows a rank, however few experts it holds
    up = (2.0 if gated else 1.0) * width
    cdt = gemm_compute_dtype(weight_dtype, device.peak_flops_per_s)
    sec = roofline.gemm_np(rows, up, h, cdt, device, fit, weight_dtype, groups=hit)
    sec = sec + roofline.gemm_np(rows, h, width, cdt, device, fit, weight_dtype, groups=hit)
    act = roofline.elementwise_np(3.0 * routed * k_top * width * ACT_BYTES, device, fit, "act")
    return np.asarray(sec + act, dtype=np.float64)


def _path(found: tuple[Path, str] | None) -> Path | None:
    return None if found is None else found[0]


# Expert-layer collections whose routed (power-law) rows were generated before aiconfigurator
# refined its power-law routing (ai-dynamo/aiconfigurator PR #876, 2026-04-19: the selections a
# rounded power law leaves over go round-robin over the EP ranks instead of onto the
# least-loaded experts wherever they sit). TensorRT-LLM 1.3.0rc10's MoE data of these GPUs
# came in with PR #738 (2026-04-18) from pipelines of 2026-04-09..15 and was not collected
# again; at one token its power-law row is 2.6x its balanced one on H200, where 1.3.0rc20's
# (collected after the refinement) is 1.0x. Their balanced rows are unaffected.
PRE_REFINED_ROUTING = frozenset(
    (gpu, "trtllm", "1.3.0rc10")
    for gpu in ("b200_sxm", "b300_sxm", "gb200", "gb300", "h100_sxm", "h200_sxm")
)
EVEN_ROUTINGS = ("balanced", "uniform")
# vLLM's 0.19 and 0.22 expert-layer collections are bridging ones that aiconfigurator-core
# flags for retirement (its 0.24.0 `collection_meta.yaml`: "the 0.19/0.22 bridging moe dirs
# were flagged for retirement"). They time 1.5-2.6x slower than 0.24 at the same layouts and
# kernel families on H200 (DeepSeek's fp8 experts on Triton, Kimi's int4 on Marlin), where
# vllm-project/vllm #32832 profiles DeepSeek-V3.1's two Triton MoE kernels at 109 µs a layer
# (16 sequences, TP 8) against 0.24's 142 and 0.19's 219. So a bridging table gives way to a
# later vLLM one that measured the same kernel family (`BRIDGING_KERNEL_FAMILIES`: the family
# of each kernel they name), and prices only layouts no later one measured.
BRIDGING_MOE = frozenset({("vllm", "0.19.0"), ("vllm", "0.22.0")})
BRIDGING_KERNEL_FAMILIES = {
    "vllm_fused_moe": "triton",
    "vllm_marlin_int4_moe": "marlin",
    "vllm_flashinfer_trtllm_moe_fp4": "flashinfer_trtllm",
}


@functools.lru_cache(maxsize=64)
def _bridging_order(
    paths: tuple[Path, ...], table_dtype: str
) -> tuple[list[Path], dict[Path, frozenset[str]]]:
    """`paths` with each bridging vLLM table (`BRIDGING_MOE`) moved after the later vLLM ones
    when those measured every kernel family it holds for this dtype, and the kernels of those
    later tables that then price (its families' only). Read-only: the result is cached."""
    later = [p for p in paths if _table_origin(p)[1] == "vllm"]
    later = [p for p in later if _table_origin(p)[1:] not in BRIDGING_MOE]
    moved: list[Path] = []
    keep: dict[Path, frozenset[str]] = {}
    for path in paths:
        if _table_origin(path)[1:] not in BRIDGING_MOE:
            continue
        kernels = _moe_sources(path, table_dtype)
        families = {BRIDGING_KERNEL_FAMILIES.get(k) for k in kernels}
        if not kernels or None in families:
            continue  # a kernel of no known family: the table keeps its place
        same = {p: {f: _family_kernels(p, table_dtype, f) for f in families} for p in later}
        if not all(any(same[p][f] for p in later) for f in families):
            continue  # no later table measured its kernels: it keeps its place
        moved.append(path)
        for p, by_family in same.items():
            keep[p] = keep.get(p, frozenset()).union(*by_family.values())
    return [p for p in paths if p not in moved] + moved, keep


def _pre_refined(path: Path) -> bool:
    """Whether a MoE table's routed rows predate the routing refinement (`PRE_REFINED_ROUTING`):
    its path ends in <gpu>/moe/<engine>/<version>/<table>."""
    return _table_origin(path) in PRE_REFINED_ROUTING


def has_tables(gpu: str) -> bool:
    """Whether aiconfigurator-core measured GEMMs on this GPU (for any engine)."""
    try:
        known = kernel_tables.gpus()
    except ServesimError:
        return False
    return gpu in known and any(
        kernel_tables.versions(gpu, "gemm", e) for e in kernel_tables.ENGINES
    )


class MeasuredKernels:
    """Operator times of one GPU and engine from the measured tables (None where none exist).

    The engine's own tables are used first, then another engine's on the same GPU (a cuBLAS
    GEMM or an NCCL all-reduce is the same kernel whichever engine calls it).
    """

    def __init__(
        self,
        device: Device,
        engine: str,
        version: str | None,
        fit: roofline.KernelFit,
        moe_backend: str = "auto",
        mxfp4_activation: str = "auto",
    ) -> None:
        self.device = device
        self.gpu = device.name
        self.version = version
        self.fit = fit
        # TensorRT-LLM's fused-MoE backend (`moe_config.backend`, `--moe-backend`): which of
        # its measured kernels price the experts (`_moe_kernels`).
        self.moe_backend = moe_backend.lower()
        # TensorRT-LLM's WIDEEP backend runs its own expert kernels on the tokens its
        # all-to-all dispatched, measured apart (`wideep_moe_perf`, `_trtllm_wide_ep_paths`).
        self.trtllm_wide_ep = engine == "trtllm" and self.moe_backend == "wideep"
        # The activation format of MXFP4 expert GEMMs (`EngineProfile.mxfp4_activation`).
        self.mxfp4_activation = mxfp4_activation
        self._layout_memo: dict[tuple, tuple | None] = {}
        self._blocks: dict[tuple, Sequence[Any]] = {}  # `_in_blocks`
        self._anchor_memo: dict[tuple, float] = {}  # the roofline at an MLA prefill anchor
        self.engines = kernel_tables.engine_order(engine)
        self.engine = engine

    def _find(self, family: str, table: str) -> Path | None:
        for engine in self.engines:
            found = _path(kernel_tables.find(self.gpu, family, table, engine, self.version))
            if found is not None:
                return found
        return None

    @functools.cached_property
    def _moe_tables(self) -> tuple[list[Path], list[Path]]:
        """(this engine's collections of expert-layer tables, every engine's after it), the
        nearest version first: the collections measured different model layouts
        (TensorRT-LLM 1.3.0rc23's H200 tables hold four, none DeepSeek's, which rc20
        measured)."""
        paths: list[Path] = []
        own = 0
        for engine in self.engines:  # one engine's kernels, as `_find` picks them
            found = kernel_tables.find_all(self.gpu, "moe", "moe_perf", engine, self.version)
            paths += [path for path, _ in found]
            own = own or len(paths)
        return paths[:own], paths

    def _moe_paths(self, table_dtype: str) -> tuple[list[Path], dict[Path, frozenset[str]]]:
        """The expert-layer tables that price this table dtype: the engine's own, or, for a
        launch whose kernel family (`_moe_kernel_family`) other engines measured too, every
        engine's after its own; with the bridging vLLM tables after the later ones that stand
        in for them, and the kernels those are then held to (`_bridging_order`)."""
        own, every = self._moe_tables
        paths = every if self._moe_kernel_family(table_dtype) else own
        return _bridging_order(tuple(paths), table_dtype)

    def _moe_kernel_family(self, table_dtype: str) -> str:
        """The kernel family a vLLM launch runs its fused MoE of this table dtype with,
        whichever engine's tables measured it ('' for every kernel of the engine's tables):
        - `VLLM_USE_FLASHINFER_MOE_INT4=1` (`moe_backend` flashinfer_trtllm) runs FlashInfer's
          TRT-LLM MxInt4 MoE on SM 10.x (`is_flashinfer_mxint4_moe_available`), which vLLM's
          tables do not hold and SGLang's (`sglang_flashinfer_trtllm_moe`, int4) do;
        - block-scaled fp8 experts on SM 10.x run FlashInfer's TRT-LLM kernels from vLLM
          0.16 on: the MoE oracle tries FLASHINFER_TRTLLM first (vllm-project/vllm PR #32414,
          `oracle/fp8.py` `_get_priority_backends`; PR #34260 keeps FlashInfer ahead of DeepGEMM
          on Blackwell), where aiconfigurator's vLLM 0.19/0.22 tables timed `fused_experts`'
          Triton kernels directly (`vllm_fused_moe`) and its 0.24 tables the oracle's choice;
        - a launch that turns FlashInfer's and DeepGEMM's fp8 MoE off
          (`VLLM_USE_FLASHINFER_MOE_FP8=0` with `VLLM_MOE_USE_DEEP_GEMM=0`, or `--moe-backend
          triton`: `moe_backend` triton) runs Triton's;
        - `VLLM_MXFP4_USE_MARLIN=1` (`moe_backend` marlin) runs MXFP4 experts on Marlin
          (`get_mxfp4_backend`; Hopper's default is OpenAI's Triton kernels), priced from the
          Marlin rows of any layout, anchored, rather than another kernel's rows."""
        if self.engine != "vllm":
            return ""
        sm100 = self.gpu in SM100_GPUS
        if self.moe_backend == "triton":
            return "triton"
        if self.moe_backend == "marlin" and table_dtype in MXFP4_TABLES.values():
            return "marlin"  # (no MXFP8 rows of another kernel stand in for Marlin's)
        if self.moe_backend == "flashinfer_trtllm" and sm100:
            return "flashinfer_trtllm"
        if self.moe_backend == "auto" and sm100 and table_dtype == "fp8_block":
            newest = self.version is None
            if newest or kernel_tables.version_key(self.version) >= VLLM_FP8_MOE_ORACLE:
                return "flashinfer_trtllm"
        return ""

    @functools.cached_property
    def _wide_ep_paths(self) -> dict[str, list[Path]]:
        """SGLang's DeepEP expert-layer tables per phase, nearest version first: the grouped
        GEMMs that run on the tokens DeepEP dispatched to a rank (aiconfigurator's
        collector/wideep/sglang/collect_deepep_moe.py: `run_moe_core` on DeepEP normal-mode
        dispatch outputs for `context`, low-latency masked layouts for `generation`). No other
        engine measured them."""
        if self.engine != "sglang":
            return {}
        return {
            phase: [
                path
                for path, _ in kernel_tables.find_all(
                    self.gpu, "moe", f"wideep_{phase}_moe_perf", "sglang", self.version
                )
            ]
            for phase in WIDE_EP_PHASES
        }

    @functools.cached_property
    def _trtllm_wide_ep_paths(self) -> list[Path]:
        """TensorRT-LLM's WideEP expert-layer tables, nearest version first: its CUTLASS
        kernels on the tokens dispatched to a rank (aiconfigurator's
        collector/wideep/trtllm/collect_moe_compute.py: `num_tokens` are the EP group's, each
        DP rank holding num_tokens / EP; `_eplb` distributions with redundant slots apart)."""
        found = kernel_tables.find_all(self.gpu, "moe", "wideep_moe_perf", "trtllm", self.version)
        return [path for path, _ in found]

    @functools.cached_property
    def _paths(self) -> dict[str, Path | None]:
        return {
            "prefill": self._find("attention", "context_attention_perf"),
            "decode": self._find("attention", "generation_attention_perf"),
            "custom_ar": self._find("comm", "custom_allreduce_perf"),
            # an Intel GPU's collectives are oneCCL's, measured in the same columns
            "nccl": _path(kernel_tables.find(self.gpu, "comm", "nccl_perf", "nccl"))
            or _path(kernel_tables.find(self.gpu, "comm", "oneccl_perf", "oneccl")),
            "mla_prefill": self._find("mla", "context_mla_perf"),
            "mla_decode": self._find("mla", "generation_mla_perf"),
            "gdn": self._find("linear_attention", "gdn_perf"),
            "scale": self._find("quantize", "computescale_perf"),
            "encoder_attention": self._find("encoder_attention", "encoder_attention_perf"),
        }

    # ---- GEMM -----------------------------------------------------------------------------
    def gemm(
        self,
        m: np.ndarray,
        n: int,
        k: int,
        weight_dtype: str,
        block: bool = False,
        static_scale: bool = False,
    ) -> Coded | None:
        """Seconds of y[m,n] = x[m,k] @ W[n,k]^T per row count in `m`, in the table of the
        weight dtype (fp8 per-tensor W8A8, nvfp4 W4A4, ...; `block`: fp8 weights scaled per
        block, a kernel of its own); None without such a table.

        The per-tensor fp8 tables were collected without an input scale, so they hold the
        dynamic scale computation too (aiconfigurator's collector/trtllm/collect_gemm.py says
        so); with `static_scale` (a checkpoint's calibrated scale) that pass is taken off, as
        aiconfigurator does for its fp8_static mode: the engine's `computescale` table at
        (m, k), never below the GEMM's speed of light."""
        table_dtype = GEMM_DTYPES.get(kernel_format(weight_dtype, block))
        if table_dtype is None:
            return None
        # the engine's own table, or another engine's on the same GPU where the own one lacks
        # the dtype or did not time it as the engine serves it (several, their lower envelope,
        # where the engine autotunes the op): `kernel_tables.gemm_tables`
        paths = kernel_tables.gemm_tables(self.gpu, table_dtype, self.engines, self.version)
        found = (_gemm_grid(p, table_dtype) for p in paths)
        grids = [g for g in found if g is not None]
        if not grids:
            return None
        wdt = canonical(weight_dtype)
        cdt = (
            "fp4" if wdt == "fp4" and "fp4" in self.device.peak_flops_per_s else compute_dtype(wdt)
        )

        def roof(x: np.ndarray) -> np.ndarray:
            return np.asarray(
                roofline.gemm_np(x[:, 0], x[:, 1], x[:, 2], cdt, self.device, self.fit, wdt),
                dtype=np.float64,
            )

        m = np.asarray(m, dtype=np.float64)
        x = np.stack([m, np.full_like(m, n), np.full_like(m, k)], axis=1)
        t, code = anchored(grids[0], x, roof)
        for grid in grids[1:]:  # an autotuned op: the fastest kernel measured
            t2, code2 = anchored(grid, x, roof)
            faster = t2 < t
            t, code = np.where(faster, t2, t), np.where(faster, code2, code)
        scale_path = self._paths["scale"]
        if static_scale and table_dtype == "fp8" and scale_path is not None:
            scale = _scale_grid(scale_path)
            if scale is not None:
                logs, _, _ = scale.lookup(x[:, [0, 2]])
                cut = np.nan_to_num(np.exp(logs))
                dev = self.device
                sol = np.maximum(  # speed of light: peak fp8 FLOPs or weights and activations
                    2.0 * m * n * k / dev.peak_flops_per_s[cdt],
                    (n * k + ACT_BYTES * (m * k + m * n)) / dev.mem_bw_bytes_per_s,
                )
                t = np.maximum(t - cut, sol)
        return t, code

    # ---- attention ------------------------------------------------------------------------
    def _layout(
        self, path: Path, qh: int, kvh: int, dim: int, kv: str, window: int
    ) -> tuple[tuple[float, float, float], int] | None:
        """The measured (heads, kv heads, head dim) and window nearest the query in log space
        (the exact one when measured), memoised."""
        key = (path, qh, kvh, dim, kv, window)
        if key not in self._layout_memo:
            self._layout_memo[key] = None
            for w in dict.fromkeys((window, 0)):
                layouts = _attn_layouts(path, kv, w)
                if len(layouts):
                    q = np.log([qh, kvh, dim])
                    best = layouts[np.argmin(np.abs(np.log(layouts) - q).sum(axis=1))]
                    self._layout_memo[key] = (float(best[0]), float(best[1]), float(best[2])), w
                    break
        return self._layout_memo[key]

    def prefill(
        self,
        new_tokens: int,
        cached_tokens: int,
        qh: int,
        kvh: int,
        dim: int,
        kv_dtype: str,
        window: int = 0,
    ) -> tuple[float, int] | None:
        """Seconds of one sequence's prefill-chunk attention (one layer). The tables measure
        prompts without cached context: a chunk over cached tokens is anchored at the same chunk
        without them."""
        base = self._prefill_base(new_tokens, qh, kvh, dim, kv_dtype, window)
        if base is None:
            return None
        t, code, anchor_s, exact = base
        if exact and cached_tokens == 0:
            return t, code
        query_s = roofline.attn_prefill_s(
            1, new_tokens, cached_tokens, qh, kvh, dim, dim, kv_dtype, self.device, self.fit,
            window=window,
        )  # fmt: skip
        if code == ROOFLINE:
            return query_s, ROOFLINE
        return t * query_s / anchor_s, EXTRAPOLATED

    def prefill_batch_gain(
        self, batch: int, length: float, qh: int, kvh: int, dim: int, kv_dtype: str, window: int
    ) -> float | None:
        """`batch_gains` of the prefill-attention table this layout takes (the nearest measured
        head layout); None without one."""
        path = self._paths["prefill"]
        kv = KV_DTYPES.get(canonical(kv_dtype))
        if path is None or kv is None:
            return None
        found = self._layout(path, qh, kvh, dim, kv, window)
        if found is None:
            return None
        layout, w = found
        grid = _attn_grid(path, layout, kv, w, False)
        key = ("prefill_gain", path, layout, w, kv, batch)
        return float(
            self._in_blocks(key, max(1, round(length)), lambda ls: batch_gains(grid, batch, ls))
        )

    def mla_prefill_batch_gain(
        self, batch: int, length: float, heads: int, dims: tuple[int, int, int, int], kv_dtype: str
    ) -> float | None:
        """`batch_gains` of the MLA prefill table this layout takes; None without one."""
        found = self._mla("mla_prefill", heads, dims, kv_dtype)
        if found is None:
            return None
        path, h_tab, kv = found
        grid = _mla_grid(path, h_tab, kv, False)
        key = ("mla_prefill_gain", path, h_tab, kv, batch)
        return float(
            self._in_blocks(key, max(1, round(length)), lambda ls: batch_gains(grid, batch, ls))
        )

    def _prefill_base(
        self, new_tokens: int, qh: int, kvh: int, dim: int, kv_dtype: str, window: int
    ) -> tuple[float, int, float, bool] | None:
        """(measured seconds at the anchor, its code, the roofline at the anchor, whether the
        anchor is the query itself) for a chunk without cached context, memoised by the block
        of chunk lengths: the simulator asks for every (new, cached) pair, and the table part
        depends on new only."""
        path = self._paths["prefill"]
        kv = KV_DTYPES.get(canonical(kv_dtype))
        if path is None or kv is None or new_tokens <= 0:
            return None
        found = self._layout(path, qh, kvh, dim, kv, window)
        if found is None:
            return None
        layout, w = found
        a_heads = tuple(int(v) for v in layout)
        same_layout = a_heads == (qh, kvh, dim) and w == window

        def compute(news: np.ndarray) -> list[tuple[float, int, float, bool]]:
            grid = _attn_grid(path, layout, kv, w, False)
            logt, codes, anchor = grid.lookup(np.stack([np.ones_like(news), news], axis=1))
            anchor_s = roofline.attn_prefill_np(
                1.0, np.round(anchor[:, 1]), 0.0, *a_heads, a_heads[2], kv_dtype, self.device,
                self.fit, window=w,
            )  # fmt: skip
            out = []
            for lt, c, a_s in zip(logt, codes, anchor_s, strict=True):
                if np.isnan(lt):
                    out.append((math.nan, ROOFLINE, float(a_s), False))
                else:
                    exact = int(c) != EXTRAPOLATED and same_layout
                    out.append((float(np.exp(lt)), int(c), float(a_s), exact))
            return out

        key = ("prefill", path, layout, w, kv_dtype, same_layout)
        return self._in_blocks(key, new_tokens, compute)

    def _in_blocks(self, key: tuple, n: int, compute: Callable[[np.ndarray], Sequence[Any]]) -> Any:
        """Entry n of `compute(values)`, evaluated once for the block of SHAPE_BLOCK whole
        numbers around n (n ≥ 1) and memoised under `key`: one vectorised table lookup for the
        chunk lengths or batch sizes near n instead of one per shape the simulator meets."""
        first = (n - 1) // SHAPE_BLOCK * SHAPE_BLOCK + 1
        block = self._blocks.get((key, first))
        if block is None:
            values = np.arange(first, first + SHAPE_BLOCK, dtype=np.float64)
            block = self._blocks[(key, first)] = compute(values)
        return block[n - first]

    def decode(
        self, batch: int, ctx_per_seq: np.ndarray, qh: int, kvh: int, dim: int, kv_dtype: str
    ) -> Coded | None:
        """Seconds of one decode-attention call (one layer) of `batch` sequences each attending
        `ctx_per_seq` tokens (an array)."""
        path = self._paths["decode"]
        kv = KV_DTYPES.get(canonical(kv_dtype))
        if path is None or kv is None:
            return None
        found = self._layout(path, qh, kvh, dim, kv, 0)
        if found is None:
            return None
        layout, _ = found
        grid = _attn_grid(path, layout, kv, 0, True)

        def roof(p: np.ndarray) -> np.ndarray:
            a, b = roofline.decode_coeffs_np(
                p[:, 0], p[:, 2], p[:, 3], p[:, 4], p[:, 4], kv_dtype, self.device, self.fit
            )
            return np.asarray(a + b * p[:, 0] * p[:, 1], dtype=np.float64)

        def price(batches: np.ndarray, ctx: np.ndarray) -> Coded:
            ones = np.ones_like(ctx)
            x = np.stack([batches, ctx, *(v * ones for v in layout)], axis=1)
            shift = np.stack([batches, ctx, qh * ones, kvh * ones, dim * ones], axis=1)
            return _anchored_cols(grid, x, shift, roof, (0, 1))

        key = ("decode", path, layout, qh, kvh, dim, kv_dtype)
        return self._by_batch(key, batch, ctx_per_seq, price)

    def _by_batch(
        self,
        key: tuple,
        batch: int,
        ctx_per_seq: np.ndarray,
        price: Callable[[np.ndarray, np.ndarray], Coded],
    ) -> Coded:
        """`price(batches, contexts)` of one decode batch size at a few context lengths,
        priced for the block of batch sizes around it at once (`_in_blocks`). Long context
        arrays (a per-sequence breakdown) are priced directly."""
        ctx = np.asarray(ctx_per_seq, dtype=np.float64)
        if len(ctx) > 4 or batch < 1 or batch != int(batch):
            return price(np.full(len(ctx), float(batch)), ctx)

        def compute(batches: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
            t, code = price(np.repeat(batches, len(ctx)), np.tile(ctx, len(batches)))
            shape = (len(batches), len(ctx))
            return list(zip(t.reshape(shape), code.reshape(shape), strict=True))

        t, code = self._in_blocks((key, tuple(ctx.tolist())), int(batch), compute)
        return t.copy(), code.copy()

    # ---- MoE experts ----------------------------------------------------------------------
    def moe(
        self,
        tokens: np.ndarray,
        layout: tuple[int, int, int, int, int, int],
        expert_dtype: str,
        gated: bool = True,
        distribution: str = "balanced",
        block: bool = False,
        wide_ep_phase: str = "",
    ) -> Coded | None:
        """Seconds of one expert layer (routed experts' GEMMs and activation) per token count
        in `tokens` (the tokens of the EP group, each counted once), for layout = (hidden,
        inter, top-k, experts, moe TP, EP) with the tokens routed as `distribution` (balanced
        where that distribution was not measured); the nearest measured layout in log space,
        the roofline carrying the difference, when this one was not measured. Block-scaled
        fp8 experts (`block`) take the block-scaled table, per-tensor fp8's only without one.
        `wide_ep_phase` (`context` or `generation`): the layer runs on DeepEP-dispatched tokens,
        priced from SGLang's DeepEP tables of that phase, or from the fused-MoE tables where
        those hold no table of this dtype; a TensorRT-LLM WIDEEP launch (`trtllm_wide_ep`)
        likewise takes its WideEP tables where they hold the dtype."""
        wide: list[Path] = []
        if wide_ep_phase:
            wide = self._wide_ep_paths.get(wide_ep_phase, [])
        elif self.trtllm_wide_ep:
            wide = self._trtllm_wide_ep_paths
        if wide:
            priced = self._moe_from(wide, tokens, layout, expert_dtype, gated, distribution, block)
            if priced is not None:
                return priced
        return self._moe_from(None, tokens, layout, expert_dtype, gated, distribution, block)

    def _moe_table_dtypes(self, expert_dtype: str, block: bool) -> tuple[str, ...]:
        """The MoE tables' dtypes that price experts of this format, preferred first: MXFP4
        experts take the kernel of the activation format this launch runs
        (`mxfp4_activation`), at the nearest layout measured in that format, and the other
        format only where that one was not measured at all."""
        fmt = kernel_format(expert_dtype, block)
        if fmt != "mxfp4":
            return MOE_DTYPES.get(fmt, ())
        first = MXFP4_TABLES[mxfp4_activation(self.engine, self.gpu, self.mxfp4_activation)]
        return (first, *(t for t in MXFP4_TABLES.values() if t != first))

    def _moe_kernels(self, path: Path, moe_dtype: str) -> frozenset[str] | None:
        """The kernels (`kernel_source`) of a MoE table that this launch runs for a dtype; None:
        every one (the fastest of a shape prices it). TensorRT-LLM runs DeepGEMM's block-scaled
        fp8 grouped GEMMs only when the launch asks for them (`moe_config.backend: DEEPGEMM`):
        aiconfigurator measured its block-scaled fp8 MoE on Blackwell with DeepGEMM
        (collector/trtllm/collect_moe.py: "SM100/103: DeepGEMM"), while the engine's own choice
        there is TRTLLM-gen ("serving AUTO resolves fp8_block to TRTLLM only when is_sm_100f").
        Every other TensorRT-LLM backend keeps the fastest of the rest: TRTLLM-gen was measured
        only in its opt-in min-latency mode, and CUTLASS's NVFP4 rows price B200 decode pools
        20-25 % above their measured TPOT (NOTES.md, stop 35). A vLLM launch naming a kernel
        family (`_moe_kernel_family`) runs only kernels of that family."""
        family = self._moe_kernel_family(moe_dtype)
        if family:
            return _family_kernels(path, moe_dtype, family)
        if self.engine != "trtllm":
            return None
        sources = _moe_sources(path, moe_dtype)
        if self.moe_backend == "deepgemm":
            return sources & {"deepgemm"}
        return sources - {"deepgemm"}

    def _moe_from(
        self,
        paths: list[Path] | None,
        tokens: np.ndarray,
        layout: tuple[int, int, int, int, int, int],
        expert_dtype: str,
        gated: bool,
        distribution: str,
        block: bool,
    ) -> Coded | None:
        """`moe` from one family of tables (`paths`, nearest version first; None: the
        fused-MoE tables, `_moe_paths`); None where they hold no layout of this dtype and
        routing. A routed (power-law) distribution is read from collections generated after
        aiconfigurator refined its power-law routing first (`PRE_REFINED_ROUTING`), from
        those before it only where no other holds the layout."""
        path: Path | None = None
        # Block-scaled fp8 and MXFP4 experts keep the first dtype found: the others are other
        # kernels (per-tensor scales; the other activation format), not other layouts.
        strict = block or kernel_format(expert_dtype) == "mxfp4"
        for refined in (True, False) if distribution not in EVEN_ROUTINGS else (False,):
            best_d, best, found, dist_used = math.inf, np.zeros(0), "", "balanced"
            path_kernels: frozenset[str] | None = None
            for table_dtype in self._moe_table_dtypes(expert_dtype, block):
                if strict and found:
                    break
                # (held: a later vLLM table in a bridging one's place prices its kernels only)
                order, held = (paths, {}) if paths is not None else self._moe_paths(table_dtype)
                for where in order:
                    if refined and _pre_refined(where):
                        continue
                    kernels = self._moe_kernels(where, table_dtype)  # (nearest version first)
                    if where in held:
                        kernels = held[where] if kernels is None else kernels & held[where]
                    if kernels is not None and not kernels:
                        continue  # none of this launch's kernels was measured here
                    # (the DeepEP tables call an even spread `uniform`)
                    for routing in dict.fromkeys((distribution, *EVEN_ROUTINGS)):
                        layouts = _moe_layouts(where, table_dtype, routing, kernels)
                        if len(layouts):
                            break
                    if not len(layouts):
                        continue
                    dist = np.abs(np.log(layouts) - np.log(layout)).sum(axis=1)
                    if dist.min() < best_d - 1e-12:
                        best_d, best = float(dist.min()), layouts[np.argmin(dist)]
                        found, path, dist_used, path_kernels = table_dtype, where, routing, kernels
            if path is not None:
                break
        if path is None:
            return None
        grid = _moe_grid(path, found, tuple(float(v) for v in best), dist_used, path_kernels)
        tk = np.asarray(tokens, dtype=np.float64)
        ones = np.ones_like(tk)
        x = np.stack([tk, *(v * ones for v in best)], axis=1)
        shift = np.stack([tk, *(float(v) * ones for v in layout)], axis=1)
        wdt = canonical(expert_dtype)

        def roof(p: np.ndarray) -> np.ndarray:
            return moe_roofline_np(p, gated, wdt, self.device, self.fit)

        return _anchored_cols(grid, x, shift, roof, (0,))

    # ---- Gated DeltaNet recurrence ------------------------------------------------------
    def gdn(
        self,
        batch: int,
        seq_len: int,
        heads: tuple[int, int, int, int],
        decode: bool,
        roof: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[float, int] | None:
        """(seconds, provenance) of one Gated DeltaNet layer's recurrence on one device: a
        decode step of `batch` sequences (seq_len 1), or one sequence's prefill chunk of
        `seq_len` tokens; heads = (k heads, v heads, k dim, v dim) per device, which must have
        been measured (None otherwise: the caller's roofline). `roof(p)` prices points
        p = [[batch, seq_len], ...] for anchoring outside the grid."""
        path = self._paths["gdn"]
        if path is None:
            return None
        grid = _gdn_grid(path, decode, tuple(float(h) for h in heads))
        if grid is None:
            return None
        x = np.array([[float(batch), float(seq_len)]])
        t, code = anchored(grid, x, roof)
        return float(t[0]), int(code[0])

    # ---- MLA attention --------------------------------------------------------------------
    def _mla(
        self, which: str, heads: int, dims: tuple[int, int, int, int], kv_dtype: str
    ) -> tuple[Path, float, str] | None:
        """(table, nearest measured head count, kv dtype) for MLA of this layout, or None;
        memoised (the simulator asks once per decode batch and prefill chunk)."""
        key = ("mla", which, heads, tuple(dims), kv_dtype)
        if key not in self._layout_memo:
            self._layout_memo[key] = None
            path = self._paths[which]
            kv = KV_DTYPES.get(canonical(kv_dtype))
            if path is not None and kv is not None and tuple(dims) == MLA_DIMS:
                measured = _mla_heads(path, kv)
                if len(measured):
                    near = measured[np.argmin(np.abs(np.log(measured) - math.log(heads)))]
                    self._layout_memo[key] = path, float(near), kv
        return self._layout_memo[key]  # type: ignore[return-value]

    def mla_decode(
        self,
        batch: int,
        ctx_per_seq: np.ndarray,
        heads: int,
        dims: tuple[int, int, int, int],
        kv_dtype: str,
    ) -> Coded | None:
        """Seconds of one absorbed-MLA decode call (one layer) of `batch` sequences each
        attending `ctx_per_seq` tokens, `heads` query heads per GPU sharing one latent head;
        dims = (kv_lora_rank, rope, nope, v head dims), None unless the tables' own."""
        found = self._mla("mla_decode", heads, dims, kv_dtype)
        if found is None:
            return None
        path, h_tab, kv = found
        grid = _mla_grid(path, h_tab, kv, True)
        qk, v = dims[0] + dims[1], dims[0]

        def roof(p: np.ndarray) -> np.ndarray:
            a, b = roofline.decode_coeffs_np(
                p[:, 0], p[:, 2], 1.0, qk, v, kv_dtype, self.device, self.fit, latent=True
            )
            return np.asarray(a + b * p[:, 0] * p[:, 1], dtype=np.float64)

        def price(batches: np.ndarray, ctx: np.ndarray) -> Coded:
            ones = np.ones_like(ctx)
            x = np.stack([batches, ctx, h_tab * ones], axis=1)
            shift = np.stack([batches, ctx, heads * ones], axis=1)
            return _anchored_cols(grid, x, shift, roof, (0, 1))

        return self._by_batch(
            ("mla_decode", path, h_tab, kv, heads, kv_dtype), batch, ctx_per_seq, price
        )

    def mla_prefill(
        self,
        new_tokens: int,
        cached_tokens: int,
        heads: int,
        dims: tuple[int, int, int, int],
        kv_dtype: str,
    ) -> tuple[float, int] | None:
        """Seconds of one sequence's MLA prefill-chunk attention (one layer, un-absorbed:
        per-head K of nope+rope, V of v dims); the tables measure prompts without cached
        context, a chunk over cached tokens is anchored at the same chunk without them."""
        found = self._mla("mla_prefill", heads, dims, kv_dtype)
        if found is None or new_tokens <= 0:
            return None
        path, h_tab, kv = found
        t, code, a_new = self._mla_prefill_base(path, h_tab, kv, new_tokens)
        qk, v = dims[2] + dims[1], dims[3]

        def roof(new: int, cached: int, h: int) -> float:
            return roofline.attn_prefill_s(
                1, new, cached, h, h, qk, v, kv_dtype, self.device, self.fit
            )

        if math.isnan(t):
            return roof(new_tokens, max(0, cached_tokens), heads), ROOFLINE
        if code != EXTRAPOLATED and cached_tokens <= 0 and heads == h_tab:
            return t, code
        query = roof(new_tokens, max(0, cached_tokens), heads)
        key = (a_new, round(h_tab), qk, v, kv_dtype)
        anchor = self._anchor_memo.get(key)
        if anchor is None:  # one per chunk length, however many cached lengths follow it
            anchor = self._anchor_memo[key] = roof(a_new, 0, round(h_tab))
        return t * (query / anchor), EXTRAPOLATED

    def _mla_prefill_base(
        self, path: Path, h_tab: float, kv: str, new_tokens: int
    ) -> tuple[float, int, int]:
        """(measured seconds, code, anchored prompt length) of an MLA prefill of `new_tokens`
        without cached context on the table's head count, memoised by the block of prompt
        lengths (`_in_blocks`): a trace asks for thousands of distinct (chunk, cached) pairs,
        and the table part depends on the chunk only."""

        def compute(news: np.ndarray) -> list[tuple[float, int, int]]:
            grid = _mla_grid(path, h_tab, kv, False)
            logt, codes, anchor = grid.lookup(np.stack([np.ones_like(news), news], axis=1))
            return [
                (float(np.exp(lt)), int(c), round(float(a)))
                for lt, c, a in zip(logt, codes, anchor[:, 1], strict=True)
            ]

        return self._in_blocks(("mla_prefill", path, h_tab, kv), new_tokens, compute)

    # ---- all-reduce -----------------------------------------------------------------------
    def allreduce(self, nbytes: np.ndarray, num_devices: int, impl: str) -> Coded | None:
        """Seconds of TP all-reduces of `nbytes` on `num_devices` GPUs of one node: the engine's
        custom all-reduce where the roofline's rule picks it, NCCL otherwise."""
        nb = np.asarray(nbytes, dtype=np.float64)
        if num_devices > self.device.max_devices_per_node:
            return None
        custom_path, nccl_path = self._paths["custom_ar"], self._paths["nccl"]
        nccl = _comm_grid(nccl_path, num_devices, False) if nccl_path else None
        custom = _comm_grid(custom_path, num_devices, True) if custom_path else None
        use_custom = np.zeros(len(nb), dtype=bool)
        if impl != "nccl" and roofline.nvlink_class(self.device) and num_devices % 2 == 0:
            limit = self.fit.params["custom_all_reduce"]["max_bytes"]
            use_custom = np.full(len(nb), True) if impl == "custom" else nb <= limit
        # Sizes whose implementation has no table at this GPU count (GB300's NCCL table has 2
        # and 4 GPUs only) take that implementation's roofline; None when no size has a table.
        plan = ((custom, use_custom, "custom"), (nccl, ~use_custom, "nccl"))
        if not any(g is not None and m.any() for g, m, _ in plan):
            return None
        out_t = np.zeros(len(nb))
        out_c = np.full(len(nb), ROOFLINE, dtype=np.int8)
        for grid, mask, name in plan:
            if not mask.any():
                continue

            def roof(p: np.ndarray, name: str = name) -> np.ndarray:
                return np.asarray(
                    roofline.collective_np(
                        "all_reduce", p[:, 0], num_devices, self.device, self.fit, name
                    ),
                    dtype=np.float64,
                )

            if grid is None:
                out_t[mask] = roof(nb[mask][:, None])
            else:
                out_t[mask], out_c[mask] = anchored(grid, nb[mask][:, None], roof)
        return out_t, out_c

    def encoder_attention(
        self,
        images: int,
        tokens: int,
        heads: int,
        head_dim: int,
        roof: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[float, int] | None:
        """(seconds, provenance) of a vision encoder's bidirectional attention over `images`
        sequences of `tokens` tokens each with `heads` heads of `head_dim` per device, from the
        engine's measured encoder-attention table (another engine's on the same GPU where it
        has none); None where no table holds the head layout. `roof(points)` (rows of images,
        tokens) anchors what lies outside the measured grid."""
        path = self._paths["encoder_attention"]
        grid = _encoder_attn_grid(path, heads, head_dim) if path else None
        if grid is None:
            return None
        t, code = anchored(grid, np.array([[float(images), float(tokens)]]), roof)
        return float(t[0]), int(code[0])

    def trtllm_alltoall(
        self,
        kernel: str,
        dtype: str,
        tokens: np.ndarray,
        ranks: int,
        layout: tuple[int, int, int],
        roof: Callable[[np.ndarray], np.ndarray],
    ) -> Coded | None:
        """Seconds of one expert layer's TensorRT-LLM NVLink all-to-all (every phase of
        `kernel`, `TRTLLM_A2A_PHASES`) when each of `ranks` EP ranks sends `tokens` tokens (an
        array) whose dispatch moves `dtype`, from the measured table of the nearest release
        that holds it; `roof(points)` (rows of ranks, tokens) anchors what lies outside the
        measured grid. None without such a table."""
        found = kernel_tables.find_all(
            self.gpu, "comm", "trtllm_alltoall_perf", "trtllm", self.version
        )
        grids = next(
            (g for p, _ in found if (g := _trtllm_a2a_grids(p, kernel, dtype, layout))), None
        )
        if grids is None:
            return None
        x = _rank_points(tokens, ranks)
        total = np.zeros(len(x))
        code = np.full(len(x), MEASURED, dtype=np.int8)
        for grid in grids:
            sec, c = anchored(grid, x, roof)
            total += sec
            code = np.maximum(code, c)
        return total, code

    def deepep(
        self,
        mode: str,
        tokens: np.ndarray,
        ranks: int,
        layout: tuple[int, int, int],
        roof: Callable[[np.ndarray], np.ndarray],
    ) -> Coded | None:
        """Seconds of one DeepEP dispatch plus combine per layer when each of `ranks` EP ranks
        sends `tokens` tokens (an array) of an expert `layout` (hidden, experts, top-k), in
        `mode` ("normal" or "low_latency"), from SGLang's measured DeepEP tables: the nearest
        version holding the layout, one that measured this many ranks first; `roof(points)`
        (rows of ranks, tokens) anchors what lies outside the measured grid. None without a
        table of the layout (DeepEP is the same library whichever engine calls it)."""
        hidden, experts, topk = layout
        node = DEEPEP_NODE_RANKS.get(self.gpu, 8)
        version = self.version if self.engine == "sglang" else None
        found = kernel_tables.find_all(self.gpu, "comm", DEEPEP_TABLES[mode], "sglang", version)
        grids = [g for p, _ in found if (g := _deepep_grid(p, mode, hidden, experts, topk, node))]
        if not grids:
            return None
        lr = math.log(ranks)
        covers = [g for g in grids if g.axes[0][0] - 1e-9 <= lr <= g.axes[0][-1] + 1e-9]
        grid = (covers or grids)[0]
        return anchored(grid, _rank_points(tokens, ranks), roof)


def _rank_points(tokens: np.ndarray, ranks: int) -> np.ndarray:
    """Points (EP ranks, tokens a rank) of an exchange table's grid, at least one token each."""
    t = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    return np.column_stack([np.full(len(t), float(ranks)), t])


def _anchored_cols(
    grid: Grid,
    x: np.ndarray,
    shift: np.ndarray,
    roof: Callable[[np.ndarray], np.ndarray],
    grid_cols: tuple[int, ...],
) -> Coded:
    """`anchored` for points whose first columns index the grid and whose other columns (head
    layout, cached context, window) select the table: the roofline prices the full query
    `shift` against the anchor (the clamped grid point with the table's own columns)."""
    logt, code, anchor_g = grid.lookup(x[:, list(grid_cols)])
    t = np.exp(logt)
    anchor = x.copy()
    anchor[:, list(grid_cols)] = anchor_g
    off = (code == EXTRAPOLATED) | np.any(
        np.abs(shift - x) > 1e-9 * np.maximum(1.0, np.abs(x)), axis=1
    )
    off &= ~np.isnan(t)
    if off.any():
        t[off] *= roof(shift[off]) / roof(anchor[off])
        code[off] = EXTRAPOLATED
    bad = np.isnan(t)
    if bad.any():
        t[bad] = roof(shift[bad])
        code[bad] = ROOFLINE
    return t, code


def backend(
    latency_model: str,
    device: Device,
    engine: str,
    version: str | None,
    fit: roofline.KernelFit,
    moe_backend: str = "auto",
    mxfp4_activation: str = "auto",
) -> MeasuredKernels | None:
    """The measured backend a predictor uses under `latency_model`: None for "roofline" and for
    "auto" on a GPU without tables; "measured" refuses such a GPU. `moe_backend` is the
    engine's fused-MoE implementation (`EngineProfile.moe_backend`), `mxfp4_activation` the
    format its MXFP4 experts quantise activations to (`EngineProfile.mxfp4_activation`)."""
    if latency_model not in LATENCY_MODELS:
        raise ServesimError(
            f"Unknown latency model {latency_model!r}; use auto, measured or roofline."
        )
    if latency_model == "roofline":
        return None
    if not has_tables(device.name):
        if latency_model == "measured":
            raise ServesimError(
                f"No measured kernel tables for {device.name!r} (aiconfigurator-core measured "
                f"{', '.join(g for g in kernel_tables.gpus() if has_tables(g))}); use "
                "--latency-model auto or "
                "roofline."
            )
        return None
    return MeasuredKernels(device, engine, version, fit, moe_backend, mxfp4_activation)


def mxfp4_activation(engine: str, gpu: str, setting: str = "auto") -> str:
    """The activation format ("mxfp8" or "bf16") MXFP4 expert GEMMs run on: `setting` when the
    launch names one, else the engine's own choice on this GPU.

    - TensorRT-LLM: W4A8_MXFP4_MXFP8 from SM 10.0 up, W4A16_MXFP4 below
      (`ModelConfig.get_mxfp4_quant_algo`: `get_sm_version() >= 100`);
    - SGLang: gpt-oss on SM 10.x runs the `flashinfer_mxfp4` MoE runner, whose default
      precision quantises activations to MXFP8 (`--flashinfer-mxfp4-moe-precision default`;
      `bf16` keeps them); Hopper runs Triton kernels on bf16;
    - vLLM: bf16 unless the launch asks for MXFP8 (`get_mxfp4_backend`: SM100_FI_MXFP4_BF16 by
      default, `VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1` for the MXFP8 kernel)."""
    if setting not in MXFP4_ACTIVATIONS:
        raise ServesimError(
            f"Unknown MXFP4 activation format {setting!r}; use {', '.join(MXFP4_ACTIVATIONS)}."
        )
    if setting != "auto":
        return setting
    if engine == "trtllm" and gpu in SM100_GPUS | SM120_GPUS:
        return "mxfp8"
    if engine == "sglang" and gpu in SM100_GPUS:
        return "mxfp8"
    return "bf16"
