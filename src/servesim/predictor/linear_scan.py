"""Chunked Gated DeltaNet prefill: a latency model that transfers across GPUs.

flash-linear-attention's chunked delta-rule prefill (what SGLang, vLLM and TensorRT-LLM run for
Qwen3.5 and Qwen3-Next) splits a sequence into chunks of `chunk` tokens. The chunk-local matmuls
run in parallel, but the pass that carries the recurrent state from one chunk to the next is
sequential along the sequence and parallel only over the device's few heads. The kernels are
therefore latency-bound, not FLOP-bound. On aiconfigurator-core's measured tables they take
8-35x the time of a GEMM with the same FLOPs, and that factor grows with length.

The model is one fixed cost (the pipeline's kernel launches) plus, per chunk, a step latency
and the state traffic at the device's memory bandwidth:

    t = t0 + ceil(tokens / chunk) x (tau + gamma x v_heads x (4 dk dv + 4 chunk (dk + dv)) / bw)

Here 4 dk dv is one fp32 state per v head and chunk, and 4 chunk (dk + dv) that chunk's bf16
keys and values, read and rewritten. The three constants are fitted in log space by
`scripts/fit_gdn_scan.py` on every GPU's tables, taking the fastest engine per shape. Fitted with
one GPU left out each time, the median error on that GPU is:
- 14-20 % on B200, B300, GB200, GB300, H100 and H200;
- 44-48 % on L40S and RTX PRO 6000.
The GEMM-equivalent roofline it replaces is off by 88 % in the median (it is 8x too fast).
"""

from __future__ import annotations

import numpy as np

from servesim.spec.devices import Device

# (t0 seconds, tau seconds per chunk, gamma): scripts/fit_gdn_scan.py on aiconfigurator-core
# 0.12.0's linear_attention/*/gdn_perf tables (chunk_gated_delta_rule, one sequence per call).
GDN_SCAN = (27.4e-6, 2.11e-6, 1.56)


Num = np.ndarray | float  # one value or one per row


def state_bytes_per_chunk(v_heads: Num, dk: Num, dv: Num, chunk: int) -> Num:
    """Bytes one chunk step moves per device: each v head's fp32 state and the chunk's bf16
    keys and values, read and written."""
    return v_heads * (4.0 * dk * dv + 4.0 * chunk * (dk + dv))


def gdn_prefill_np(
    tokens: Num,
    v_heads: Num,
    dk: Num,
    dv: Num,
    chunk: int,
    bw_bytes_per_s: Num,
    consts: tuple[float, float, float] = GDN_SCAN,
) -> np.ndarray:
    """Seconds of one Gated DeltaNet layer's chunked prefill per row: `tokens` tokens of one
    sequence on a device with `v_heads` value heads and memory bandwidth `bw_bytes_per_s`."""
    t0, tau, gamma = consts
    steps = np.ceil(np.maximum(tokens, 1.0) / chunk)
    moved = state_bytes_per_chunk(v_heads, dk, dv, chunk)
    return np.asarray(t0 + steps * (tau + gamma * moved / bw_bytes_per_s), dtype=np.float64)


def gdn_prefill_s(
    tokens: float,
    v_heads: int,
    dk: int,
    dv: int,
    chunk: int,
    device: Device,
    consts: tuple[float, float, float] = GDN_SCAN,
) -> float:
    """Seconds of one Gated DeltaNet layer's chunked prefill of `tokens` tokens of one sequence
    on one device holding `v_heads` value heads."""
    bw = device.mem_bw_bytes_per_s
    return float(gdn_prefill_np(tokens, v_heads, dk, dv, chunk, bw, consts))


def fit(
    tokens: np.ndarray,
    v_heads: np.ndarray,
    dk: np.ndarray,
    dv: np.ndarray,
    bw_bytes_per_s: np.ndarray,
    latency_s: np.ndarray,
    chunk: int = 64,
) -> tuple[float, float, float]:
    """(t0, tau, gamma) minimising the squared log error over measured rows (one sequence per
    call)."""
    from scipy.optimize import least_squares

    def residual(p: np.ndarray) -> np.ndarray:
        t0, tau, gamma = (float(v) for v in np.exp(p))
        model = gdn_prefill_np(tokens, v_heads, dk, dv, chunk, bw_bytes_per_s, (t0, tau, gamma))
        return np.log(model) - np.log(latency_s)

    p = least_squares(residual, np.log([1e-5, 2e-6, 1.0])).x
    t0, tau, gamma = (float(v) for v in np.exp(p))
    return t0, tau, gamma
