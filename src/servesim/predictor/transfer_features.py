"""Device-normalised features of kernel shapes, for the cross-GPU residual model.

Each row of a kernel table (or one operator call) becomes a vector that describes the shape in
units of the device running it: its ideal compute and memory times at the device's peak rate and
HBM bandwidth, their ratio (arithmetic intensity over the device's ridge point), how many waves
of thread blocks it makes on the device's SMs and how full the last one is, its bytes against
the L2 size, the number format's kernel class (fp8 per-tensor, fp8 block-scaled, nvfp4, ...),
the GPU count and link class for collectives, plus the device's spec-sheet numbers (per-SM
tensor rate, SMs, HBM bandwidth, L2, link bandwidth). No device is named: an unmeasured GPU gets
the same features from its catalog entry.
"""

from __future__ import annotations

import math

import numpy as np

from servesim.predictor.kernel_classes import gemm_dtypes, nvlink_class
from servesim.spec.devices import Device
from servesim.spec.dtypes import nbytes

Samples = dict[str, np.ndarray]

# Kernel classes of a number format (the table's spelling or servesim's): per-tensor fp8 and
# block-scaled fp8 run different kernels (CUTLASS scaled-mm vs DeepGEMM/Triton block GEMM).
# Each class is its own 0/1 column (bf16/fp16, the reference, is none of them): an ordinal code
# let trees lump neighbouring classes, so a GPU's nvfp4 rows landed in a leaf learnt from other
# GPUs' slow fp8-block rows (x10 on the RTX PRO 6000).
FORMAT_CLASS: dict[str, str] = {
    "fp8": "fp8",
    "fp8_block": "fp8_block",
    "nvfp4": "fp4",
    "fp4": "fp4",
    "int8": "int8",
    "int8_wo": "int_wo",
    "int4_wo": "int_wo",
    "w4a16": "int_wo",
    "int4": "int_wo",
    "w4a16_mxfp4": "mxfp4",
    "mxfp4": "mxfp4",
    "w4a8_mxfp4_mxfp8": "mxfp4",
}
CLASSES = tuple(sorted(set(FORMAT_CLASS.values())))
US = 1e6
TILE = 128.0  # a representative thread-block tile edge for wave counts


def device_vector(device: Device, dtype: str = "bf16") -> dict[str, float]:
    """Spec-sheet features of `device` (logs of SI numbers) for compute dtype `dtype`."""
    sms = max(float(device.num_sms), 1.0)
    peak = device.peak_flops(dtype)
    bw = max(device.mem_bw_bytes_per_s, 1.0)
    return {
        "dev_log_flops_per_sm": math.log10(peak / sms),
        "dev_log_sms": math.log10(sms),
        "dev_log_bw": math.log10(bw),
        "dev_log_ridge": math.log10(peak / bw),
        "dev_log_l2": math.log10(max(device.l2_bytes, 1.0)),
        "dev_log_bw_per_sm": math.log10(bw / sms),
    }


def link_vector(device: Device) -> dict[str, float]:
    """Scale-up link features: bandwidth, latency and whether it is a switched fabric."""
    return {
        "dev_log_link_bw": math.log10(max(device.link_bw_bytes_per_s, 1.0)),
        "dev_log_link_lat": math.log10(max(device.link_latency_s, 1e-9)),
        "dev_fabric": 1.0 if nvlink_class(device) else 0.0,
    }


def _ideal(flops: np.ndarray, nbytes_: np.ndarray, peak: float, bw: float) -> dict:
    """Ideal compute and memory times (log10 µs) and the intensity over the ridge point."""
    tc = np.maximum(flops / peak, 1e-12) * US
    tm = np.maximum(nbytes_ / bw, 1e-12) * US
    return {
        "log_t_comp_us": np.log10(tc),
        "log_t_mem_us": np.log10(tm),
        "log_t_ideal_us": np.log10(np.maximum(tc, tm)),
        "log_intensity_over_ridge": np.log10(tc / tm),
    }


def _waves(units: np.ndarray, sms: float) -> dict:
    """Waves of `units` blocks over the SMs (log) and the fill of the last wave (0..1]."""
    w = np.maximum(units, 1.0) / sms
    frac = w - np.floor(w)
    frac = np.where(frac < 1e-9, 1.0, frac)
    return {"log_waves": np.log10(w), "last_wave_fill": np.where(w < 1.0, w, frac)}


def _l2(nbytes_: np.ndarray, device: Device) -> dict:
    return {"log_bytes_over_l2": np.log10(np.maximum(nbytes_, 1.0) / max(device.l2_bytes, 1.0))}


def format_classes(col: np.ndarray) -> dict[str, np.ndarray]:
    """One 0/1 column per number-format kernel class (`fmt_<class>`) for a column of formats."""
    cls = np.array([FORMAT_CLASS.get(str(x), "") for x in col], dtype=object)
    return {f"fmt_{c}": (cls == c).astype(float) for c in CLASSES}


def _dtype_pairs(s: Samples) -> list[tuple[str, str]]:
    pairs = zip(s["dtype"], s["weight_dtype"], strict=True)
    return sorted({(str(a), str(b)) for a, b in pairs})


def _broadcast(n: int, d: dict[str, float]) -> dict:
    return {k: np.full(n, v) for k, v in d.items()}


def gemm(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """GEMM rows: m, n, k, format; peak at the compute dtype the device really runs."""
    m, n, k = s["m"], s["n"], s["k"]
    rows = len(m)
    peak = np.empty(rows)
    native = np.empty(rows)
    wbytes = np.empty(rows)
    abytes = np.empty(rows)
    dev_rows: dict[str, np.ndarray] = {}
    for dt, wdt in _dtype_pairs(s):
        mk = (s["dtype"] == dt) & (s["weight_dtype"] == wdt)
        cdt, w = gemm_dtypes(dt, wdt, device)
        peak[mk] = device.peak_flops(cdt)
        native[mk] = 1.0 if cdt == dt else 0.0
        wbytes[mk] = nbytes(w)
        abytes[mk] = nbytes(cdt)
        for key, v in device_vector(device, cdt).items():
            dev_rows.setdefault(key, np.empty(rows))[mk] = v
    flops = 2.0 * m * n * k
    moved = n * k * wbytes + m * k * abytes + m * n * 2.0
    sms = float(device.num_sms)
    out = {
        "log_m": np.log10(m),
        "log_n": np.log10(n),
        "log_k": np.log10(k),
        **format_classes(s["format"] if "format" in s else s["dtype"]),
        "native_rate": native,
        **_ideal(flops, moved, peak, device.mem_bw_bytes_per_s),
        **_waves(np.ceil(m / TILE) * np.ceil(n / TILE), sms),
        **_l2(moved, device),
        **dev_rows,
    }
    return out


def _attn_common(device: Device, rows: int) -> dict:
    return _broadcast(rows, device_vector(device, "bf16"))


def attention_prefill(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """Prefill attention rows: batch, new and cached tokens, heads, head dim, KV format."""
    b, q, c = s["batch"], s["new_tokens"], s["cached_tokens"]
    hq, hkv, d = s["q_heads"], np.maximum(s["kv_heads"], 1.0), s["head_dim"]
    win = s.get("window", np.zeros(len(b)))
    kvb = np.array([nbytes(x) for x in s["kv_dtype"]])
    ctx = np.where(win > 0, np.minimum(c + q, win), c + q)
    pairs = q * np.minimum(c, np.where(win > 0, win, c)) + q * (np.minimum(q, ctx) + 1) / 2.0
    flops = 4.0 * b * hq * d * pairs
    moved = b * q * (2 * hq + 2 * hkv) * d * 2.0 + b * c * 2 * hkv * d * kvb
    group = hq / hkv
    units = b * hkv * np.ceil(q * group / TILE)
    return {
        "log_batch": np.log10(b),
        "log_new": np.log10(q),
        "log_cached": np.log10(c + 1.0),
        "log_q_heads": np.log10(hq),
        "log_group": np.log10(group),
        "head_dim": d,
        "kv_fp8": (kvb < 2).astype(float),
        "windowed": (win > 0).astype(float),
        **_ideal(flops, moved, device.peak_flops("bf16"), device.mem_bw_bytes_per_s),
        **_waves(units, float(device.num_sms)),
        **_l2(moved, device),
        **_attn_common(device, len(b)),
    }


def attention_decode(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """Decode attention rows: batch, attended context per sequence, heads, KV format."""
    b, tot = s["batch"], s["total_context"]
    hq, hkv, d = s["q_heads"], np.maximum(s["kv_heads"], 1.0), s["head_dim"]
    kvb = np.array([nbytes(x) for x in s["kv_dtype"]])
    flops = 4.0 * hq * d * tot
    moved = tot * 2 * hkv * d * kvb + b * 2 * hq * d * 2.0
    return {
        "log_batch": np.log10(b),
        "log_ctx": np.log10(tot / b),
        "log_q_heads": np.log10(hq),
        "log_group": np.log10(hq / hkv),
        "head_dim": d,
        "kv_fp8": (kvb < 2).astype(float),
        **_ideal(flops, moved, device.peak_flops("bf16"), device.mem_bw_bytes_per_s),
        **_waves(b * hkv, float(device.num_sms)),
        **_l2(moved, device),
        **_attn_common(device, len(b)),
    }


def mla_prefill(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """MLA context rows (DeepSeek layout: qk 192, v 128 per head)."""
    b, q, c, hq = s["batch"], s["new_tokens"], s["cached_tokens"], s["q_heads"]
    kvb = np.array([nbytes(x) for x in s["kv_dtype"]])
    pairs = q * c + q * (q + 1) / 2.0
    flops = 2.0 * b * hq * (192.0 + 128.0) * pairs
    moved = b * (q + c) * hq * (192.0 + 128.0) * 2.0 + b * q * hq * 320.0 * 2.0
    units = b * hq * np.ceil(q / TILE)
    return {
        "log_batch": np.log10(b),
        "log_new": np.log10(q),
        "log_cached": np.log10(c + 1.0),
        "log_q_heads": np.log10(hq),
        "kv_fp8": (kvb < 2).astype(float),
        **_ideal(flops, moved, device.peak_flops("bf16"), device.mem_bw_bytes_per_s),
        **_waves(units, float(device.num_sms)),
        **_l2(moved, device),
        **_attn_common(device, len(b)),
    }


def mla_decode(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """MLA generation rows (absorbed: one 576-wide latent KV head shared by all query heads)."""
    b, tot, hq = s["batch"], s["total_context"], s["q_heads"]
    kvb = np.array([nbytes(x) for x in s["kv_dtype"]])
    flops = 2.0 * np.maximum(hq, 64.0) * (576.0 + 512.0) * tot
    moved = tot * 576.0 * kvb
    return {
        "log_batch": np.log10(b),
        "log_ctx": np.log10(tot / b),
        "log_q_heads": np.log10(hq),
        "kv_fp8": (kvb < 2).astype(float),
        **_ideal(flops, moved, device.peak_flops("bf16"), device.mem_bw_bytes_per_s),
        **_waves(b * np.ceil(hq / 64.0), float(device.num_sms)),
        **_l2(moved, device),
        **_attn_common(device, len(b)),
    }


def moe(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """Fused-MoE rows: tokens, hidden, inter, top-k, experts, TP/EP, expert format."""
    t, h, i = s["tokens"], s["hidden"], s["inter"]
    k, e, tp, ep = s["top_k"], s["num_experts"], s["tp"], s["ep"]
    rows = len(t)
    local = np.maximum(e / ep, 1.0)
    il = np.maximum(i / tp, 1.0)
    hit = local * (1.0 - (1.0 - np.minimum(k / e, 1.0)) ** t)
    routed = t * k / ep
    peak = np.empty(rows)
    wbytes = np.empty(rows)
    dev_rows: dict[str, np.ndarray] = {}
    for dt, wdt in _dtype_pairs(s):
        mk = (s["dtype"] == dt) & (s["weight_dtype"] == wdt)
        cdt, w = gemm_dtypes(dt, wdt, device)
        peak[mk] = device.peak_flops(cdt)
        wbytes[mk] = nbytes(w)
        for key, v in device_vector(device, cdt).items():
            dev_rows.setdefault(key, np.empty(rows))[mk] = v
    flops = 2.0 * routed * 3.0 * h * il
    moved = hit * 3.0 * h * il * wbytes + 4.0 * routed * h * 2.0
    rows_per_expert = routed / np.maximum(hit, 1e-9)
    units = hit * np.ceil(rows_per_expert / TILE) * np.ceil(2 * il / TILE)
    return {
        "log_tokens": np.log10(t),
        "log_hidden": np.log10(h),
        "log_inter_local": np.log10(il),
        "log_local_experts": np.log10(local),
        "top_k": k,
        "log_rows_per_expert": np.log10(np.maximum(rows_per_expert, 1e-3)),
        **format_classes(s["format"] if "format" in s else s["weight_dtype"]),
        **_ideal(flops, moved, peak, device.mem_bw_bytes_per_s),
        **_waves(units, float(device.num_sms)),
        **_l2(moved, device),
        **dev_rows,
    }


def allreduce(s: Samples, device: Device) -> dict[str, np.ndarray]:
    """All-reduce rows: bytes, GPU count, implementation (NCCL / custom), CUDA graph or eager."""
    nb, n = s["nbytes"], s["num_devices"]
    rows = len(nb)
    link = device.link_bw_bytes_per_s
    t_bw = np.maximum(nb * 2.0 * (n - 1.0) / n / link, 1e-12) * US
    t_lat = 2.0 * (n - 1.0) * device.link_latency_s * US
    custom = np.array([str(x) == "custom" for x in s["impl"]], dtype=float)
    return {
        "log_bytes": np.log10(np.maximum(nb, 1.0)),
        "num_gpus": n,
        "custom": custom,
        "cuda_graph": np.asarray(s["cuda_graph"], dtype=float),
        "log_t_ideal_us": np.log10(t_bw + t_lat),
        "log_t_bw_us": np.log10(t_bw),
        "log_bytes_over_l2": np.log10(np.maximum(nb, 1.0) / max(device.l2_bytes, 1.0)),
        **_broadcast(rows, link_vector(device)),
        "dev_log_bw": np.full(rows, math.log10(device.mem_bw_bytes_per_s)),
        "dev_log_sms": np.full(rows, math.log10(max(device.num_sms, 1))),
    }


BUILDERS = {
    "gemm": gemm,
    "attention_prefill": attention_prefill,
    "attention_decode": attention_decode,
    "mla_prefill": mla_prefill,
    "mla_decode": mla_decode,
    "moe": moe,
    "allreduce": allreduce,
}
