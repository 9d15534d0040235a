"""A vision encoder's time on a device: the ViT of `spec.vision` priced through the same
roofline GEMM, attention, element-wise and all-reduce costs the language model's iteration uses.

The encoder runs in bf16 (vLLM and SGLang keep the ViT in the checkpoint's bf16 even when the
LLM is quantised; aiconfigurator-core's `sdk/models/blocks/vit.py` prices it so too), eagerly
(no CUDA graph: vLLM's `_execute_mm_encoder` calls the vision tower outside the captured graph),
its attention bidirectional within each image (or window). Attention is priced as the causal
prefill kernel over the sequence with half of it already cached, which has the FLOPs of
bidirectional attention over the whole sequence (N·(N/2 + N/2) = N²). With tensor parallelism
the ViT shards as the language model does (vLLM's default `mm_encoder_tp_mode="weights"`): heads
and MLP columns over the ranks, two all-reduces per block. Given the measured kernels of the
GPU (`measured_kernels.MeasuredKernels`, the latency model's), the GEMMs take the bf16 GEMM
tables and the attention aiconfigurator's encoder-attention tables (its ViT FlashAttention
kernels, images × tokens per head layout); shapes they lack stay on the roofline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from servesim.predictor import roofline, twin_efficiency
from servesim.predictor.measured_kernels import MeasuredKernels
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.vision import ACT_BYTES, VisionEncoder

_BF16 = "bf16"


@dataclass
class EncoderTiming:
    """Seconds to encode one image of a size on `tp` devices of a type (memoised per size)."""

    enc: VisionEncoder
    device: Device
    tp: int = 1
    engine: EngineProfile | None = None
    fit: roofline.KernelFit | None = None
    kernels: MeasuredKernels | None = None  # the GPU's measured tables (None: the roofline)
    _memo: dict[tuple[int, int, int], float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.fit = self.fit or twin_efficiency.default_fit()

    def image_s(self, width_px: int, height_px: int, frames: int = 1) -> float:
        """Seconds for one image (or video of `frames` frames) through the encoder."""
        key = (int(width_px), int(height_px), int(frames))
        t = self._memo.get(key)
        if t is None:
            t = sum(self.breakdown(*key).values())
            self._memo[key] = t
        return t

    def breakdown(self, width_px: int, height_px: int, frames: int = 1) -> dict[str, float]:
        """Seconds per operator class of one encode: embed, linear, attention, elementwise,
        merger, allreduce, launch (host time beyond the kernels')."""
        launch = self.engine.eager_host_s_per_layer if self.engine else 0.0
        args = (self.enc, self.device, self.tp, self.fit, width_px, height_px, frames, launch)
        return dict(_breakdown(*args, kernels=self.kernels))


def _breakdown(
    enc: VisionEncoder,
    device: Device,
    tp: int,
    fit: roofline.KernelFit,
    width_px: int,
    height_px: int,
    frames: int,
    launch_s_per_layer: float,
    kernels: MeasuredKernels | None = None,
) -> tuple[tuple[str, float], ...]:
    p = enc.patches(width_px, height_px, frames)
    h, i, heads = enc.hidden_size, enc.intermediate_size, enc.num_heads
    hd = h // heads
    q_heads = max(1, heads // tp)
    k_embed = enc.in_channels * enc.temporal_patch_size * enc.patch_size**2

    def gemm(m: int, n: int, k: int) -> float:
        got = kernels.gemm(np.array([float(m)]), n, k, _BF16) if kernels else None
        if got is not None:
            return float(got[0][0])
        return roofline.gemm_s(m, n, k, _BF16, device, fit)

    def attn(count: int, length: int) -> float:
        def roof(p: np.ndarray) -> np.ndarray:
            return np.array([_bidir_s(int(c), int(n), q_heads, hd, device, fit) for c, n in p])

        got = kernels.encoder_attention(count, length, q_heads, hd, roof) if kernels else None
        return got[0] if got is not None else _bidir_s(count, length, q_heads, hd, device, fit)

    embed = gemm(p, h, k_embed)
    mlp = (
        gemm(p, 2 * i // tp, h) + gemm(p, h, i // tp)
        if enc.gated_mlp
        else gemm(p, i // tp, h) + gemm(p, h, i // tp)
    )
    linear = enc.depth * (gemm(p, 3 * h // tp, h) + gemm(p, h, h // tp) + mlp)
    seqs = enc.attention_seqs(width_px, height_px, frames)
    full = seqs["full"]
    full_s = attn(full["count"], full["len"])
    # Windowed blocks: windows of unequal size priced as equal ones with the same Σ len².
    w_len = max(1, round(seqs["window_sq"] / seqs["window_sum"]))
    w_count = max(1, round(seqs["window_sum"] / w_len))
    win_s = attn(w_count, w_len)
    attention = sum(full_s if enc._full(b) else win_s for b in range(enc.depth))
    # Per block: two norms (read+write), two residual adds (2 reads + write), the activation
    # (gated: 2 reads + write of i; plain: read + write), RoPE on q and k.
    act_io = (3 if enc.gated_mlp else 2) * i // tp
    per_block = ACT_BYTES * p * (2 * 2 * h + 2 * 3 * h + act_io + 2 * 2 * h // tp)
    elementwise = enc.depth * roofline.elementwise_s(per_block, device, fit)
    m2 = enc.spatial_merge_size**2
    t = p // m2
    merger = (1 + enc.deepstack_mergers) * (
        gemm(t, m2 * h // tp, m2 * h) + gemm(t, enc.out_hidden_size, m2 * h // tp)
    )
    allreduce = 0.0
    if tp > 1:
        ar = roofline.allreduce_s(ACT_BYTES * p * h, tp, device, fit)
        allreduce = 2 * enc.depth * ar + (1 + enc.deepstack_mergers) * roofline.allreduce_s(
            ACT_BYTES * t * enc.out_hidden_size, tp, device, fit
        )
    kernels = embed + linear + attention + elementwise + merger + allreduce
    return (
        ("embed", embed),
        ("linear", linear),
        ("attention", attention),
        ("elementwise", elementwise),
        ("merger", merger),
        ("allreduce", allreduce),
        # eager: the host issues the layers while the GPU runs them, so the encode takes
        # max(kernels, host); "launch" is the host time the kernels do not hide
        ("launch", max(0.0, enc.depth * launch_s_per_layer - kernels)),
    )


def _bidir_s(
    count: int, length: int, heads: int, head_dim: int, device: Device, fit: roofline.KernelFit
) -> float:
    """Bidirectional attention of `count` sequences of `length` tokens (see the module note)."""
    return roofline.attn_prefill_s(
        count, length, length // 2, heads, heads, head_dim, head_dim, _BF16, device, fit
    )
