"""One forward pass of a model, or of a run of its layers, on one local device (CPU, consumer
GPU, Apple/Jetson/phone SoC) as a per-layer roofline plus fixed costs per operator.

The datacenter predictor (`iteration.Predictor`) prices vLLM/SGLang kernels with fitted,
shape-dependent efficiencies. Local runtimes (llama.cpp, kTransformers, MLX) differ in what
dominates: GGUF block formats, a CPU's thread count capping its bandwidth, and a fixed cost per
graph operator (a CUDA kernel launch, a ggml thread barrier) that makes deep-narrow models
slower than wide-shallow ones at batch 1 (Nemotron-Flash, NVIDIA 2025). This module is the
one cost model the hybrid, split and choose code share; `edge_fit` adapts its efficiencies to a
device from a few measurements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from servesim.errors import ServesimError
from servesim.predictor.roofline import expected_experts_hit
from servesim.spec.devices import Device
from servesim.spec.model import ModelSpec
from servesim.spec.quant import (
    BLOCK_BYTES_PER_WEIGHT,
    KV_BYTES_PER_VALUE,
    Quant,
    compute_dtype,
    use_more_bits,
)

# Compute nodes of one Llama decoder layer in llama.cpp's graph (src/models/llama.cpp,
# `llm_build_llama`): rms_norm, mul, q/k/v mul_mat, 2 rope, 2 KV-cache copies, kq mul_mat,
# soft_max, kqv mul_mat, o mul_mat, add, rms_norm, mul, gate and up mul_mat, swiglu, down
# mul_mat, add = 20. Each pays a launch (GPU) or a barrier across threads (CPU).
OPS_PER_LAYER = 20
OPS_PER_HEAD = 4  # final norm, mul, lm_head mul_mat, get_rows of the last token
ACT_BYTES = 4.0  # llama.cpp keeps activations in fp32 between operators


@dataclass(frozen=True)
class Efficiency:
    """What share of a device's peaks a runtime reaches, and its fixed costs.

    `compute` maps a weight block format (f16, q8_0, q4_k, ...) to the share of the peak of the
    format it computes in for a many-row GEMM; "*" is the default. `gemv` the same for one
    activation row (decode of one sequence), when it differs: a CPU's quantised dot products
    unpack every weight block for every row (ggml-cpu `ggml_vec_dot_*`), so that cost is
    amortised only across rows (`share`). `memory` is the share of the streamable DRAM
    bandwidth; `op_s` the fixed seconds per graph operator; `step_s` per forward pass;
    `barrier_s` per operator and per CPU thread beyond the first (ggml-cpu ends every operator
    with `ggml_barrier`, where each thread waits for the slowest: a cost one thread never pays
    and that grows with the threads, large against a small model's short operators).
    """

    compute: dict[str, float] = field(default_factory=lambda: {"*": 0.5})
    memory: float = 0.8
    op_s: float = 1e-6
    step_s: float = 1e-4
    gemv: dict[str, float] = field(default_factory=dict)
    barrier_s: float = 0.0

    def compute_share(self, fmt: str) -> float:
        """Share of peak reached by many-row GEMMs whose weights are in block format `fmt`."""
        return self.compute.get(fmt, self.compute.get("*", 0.5))

    def share(self, fmt: str, rows: float) -> float:
        """Share of peak with `rows` activation rows: the per-row unpacking overhead of a
        one-row GEMV (1/gemv − 1/gemm per FLOP) shrinks as 1/rows."""
        gemm = self.compute_share(fmt)
        one = self.gemv.get(fmt, self.gemv.get("*"))
        if one is None or rows <= 0:
            return gemm
        return 1.0 / (1.0 / gemm + (1.0 / one - 1.0 / gemm) / rows)


def default_efficiency(device: Device) -> Efficiency:
    """Spec-only efficiencies by device kind, before any measurement.

    CPU (llama.cpp ggml-cpu): GEMMs at ~half of the vector peak (dequantisation and packing cost
    about as much as the FMAs; llamafile tinyBLAS reports 40-60 % of peak), 80 % of stream
    bandwidth in decode, ~1 µs per operator for the thread barrier (ggml_barrier spins on an
    atomic; about a cache-line round trip per thread), not split by thread count (`barrier_s`
    0: a few-shot fit learns it). GPUs: 60 % of tensor peak, 80 % of DRAM
    bandwidth (what GEMV kernels reach on GDDR6X/LPDDR5), ~4 µs per kernel launch when the
    graph is not captured (CUDA launch overhead, NVIDIA CUDA C best practices guide), 6 µs on
    Jetson and Apple (slower host cores and Metal encoding; estimate).
    """
    if device.kind == "cpu":
        return Efficiency({"*": 0.5}, memory=0.8, op_s=1e-6, step_s=1e-4)
    if device.kind == "edge":
        return Efficiency({"*": 0.5}, memory=0.8, op_s=6e-6, step_s=2e-4)
    return Efficiency({"*": 0.6}, memory=0.8, op_s=4e-6, step_s=1e-4)


@dataclass(frozen=True)
class Work:
    """Work of one forward pass over some layers: FLOPs and bytes per block format, operators."""

    flops: dict[str, float]  # per weight block format: GEMM FLOPs
    weight_bytes: float
    other_bytes: float  # KV cache and activations read or written
    attn_flops: float
    ops: int
    rows: float = 0.0  # activation rows each GEMM multiplies (0: unknown, many)

    def __add__(self, other: Work) -> Work:
        flops = dict(self.flops)
        for k, v in other.flops.items():
            flops[k] = flops.get(k, 0.0) + v
        return Work(
            flops,
            self.weight_bytes + other.weight_bytes,
            self.other_bytes + other.other_bytes,
            self.attn_flops + other.attn_flops,
            self.ops + other.ops,
            max(self.rows, other.rows),
        )


ZERO = Work({}, 0.0, 0.0, 0.0, 0)


@dataclass(frozen=True)
class Step:
    """A batch's shape: `tokens` processed in this pass by `seqs` sequences that already hold
    `context` tokens each (decode: tokens == seqs; prefill of one prompt: seqs 1, context 0)."""

    tokens: int
    seqs: int = 1
    context: int = 0

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.seqs < 1 or self.context < 0:
            raise ServesimError(
                f"A step needs tokens >= 1 and seqs >= 1 and context >= 0, got {self}."
            )


def decode(seqs: int = 1, context: int = 512) -> Step:
    """One decode step of `seqs` sequences at `context` tokens each."""
    return Step(seqs, seqs, context)


def prefill(tokens: int) -> Step:
    """The prefill of one prompt of `tokens` tokens."""
    return Step(tokens, 1, 0)


def batch_step(decode_seqs: int, decode_context: int, chunks: Iterable[tuple[int, int]]) -> Step:
    """A serving iteration (decode sequences attending to `decode_context` tokens in total,
    prefill chunks of (new, cached) tokens) as one Step: its tokens, sequences and mean context.
    Exact for decode-only steps and for one prefill chunk; a mixed batch's attention pairs are
    priced at the mean context (weights, KV bytes and the head are exact)."""
    tokens, seqs, context = decode_seqs, decode_seqs, decode_context
    for new, cached in chunks:
        tokens += new
        seqs += 1
        context += cached
    if tokens < 1:
        raise ServesimError("An iteration needs at least one token.")
    return Step(tokens, seqs, round(context / seqs))


def check_supported(model: ModelSpec) -> None:
    """Refuse the shapes this cost model does not price (it knows GQA attention with dense or
    routed-expert MLPs), rather than return a wrong number."""
    if model.is_mla or model.is_hybrid or model.num_mixer_only_layers or model.num_mlp_only_layers:
        raise ServesimError(
            f"{model.name} uses MLA or linear-attention layers, which the local-device cost model "
            "does not price yet; use a GQA model (Llama, Qwen, Mistral, Mixtral, gpt-oss)."
        )


def _is_moe_layer(model: ModelSpec, layer: int) -> bool:
    return model.is_moe and layer >= model.first_dense_layers


def _matrices(model: ModelSpec, layer: int = 0) -> dict[str, int]:
    """Parameters of each matrix of one decoder layer (llama.cpp tensor roles), routed experts
    apart."""
    h, q, kv = model.hidden_size, model.num_heads * model.head_dim, model.num_kv_heads
    kvd = kv * model.head_dim
    out = {"q": h * q, "k": h * kvd, "v": h * kvd, "o": q * h}
    if not _is_moe_layer(model, layer):
        i = model.intermediate_size
        out |= {"up": h * i, "down": i * h}
        if model.gated_mlp:
            out["gate"] = h * i
    return out


def layer_work(
    model: ModelSpec, quant: Quant, layer: int, step: Step, experts: bool = True
) -> Work:
    """FLOPs, bytes and operators of decoder layer `layer` for one step (MoE experts priced by
    the expected number of distinct experts the step's tokens hit; left out with `experts`
    False, when they run elsewhere)."""
    check_supported(model)
    flops: dict[str, float] = {}
    wbytes = 0.0
    for part, params in _matrices(model, layer).items():
        bpw = quant.layer_bytes_per_weight(part, layer, model.num_layers)
        fmt = _fmt_of(quant, part, layer, model.num_layers)
        flops[fmt] = flops.get(fmt, 0.0) + 2.0 * params * step.tokens
        wbytes += params * bpw
    if experts and _is_moe_layer(model, layer):
        k, n = model.experts_per_token, model.num_experts
        hit = expected_experts_hit(float(step.tokens), n, k)
        ep = model.expert_params()
        fmt = quant.base
        flops[fmt] = flops.get(fmt, 0.0) + 2.0 * ep * step.tokens * k
        wbytes += hit * _expert_bytes(model, quant, layer)
        if model.shared_expert_intermediate_size:
            width = model.shared_expert_intermediate_size
            flops[fmt] += 2.0 * model.mlp_params(width) * step.tokens
            wbytes += _ffn_bytes(model, quant, layer, width)
    kv_per_token = model.kv_values_per_token_per_layer * KV_BYTES_PER_VALUE
    window = model.sliding_window if is_windowed_layer(model, layer) else 0
    held = min(step.context, window) if window else step.context
    kv_read = step.seqs * held * kv_per_token
    kv_write = step.tokens * kv_per_token
    act = 6 * step.tokens * model.hidden_size * ACT_BYTES
    heads, hd = model.num_heads, model.head_dim
    per_seq = step.tokens / step.seqs
    # QK^T and PV: 4·heads·hd FLOPs per (query, key) pair; a prompt attends causally.
    pairs = step.seqs * attended_pairs(per_seq, step.context, window)
    other = kv_read + kv_write + act
    return Work(flops, wbytes, other, 4.0 * heads * hd * pairs, OPS_PER_LAYER, step.tokens)


def is_windowed_layer(model: ModelSpec, layer: int) -> bool:
    """Whether decoder layer `layer` attends within a window (sliding or chunked): the model's
    `num_sliding_layers` spread evenly over its layers. llama.cpp's iSWA cache keeps only the
    window of those layers; which ones they are does not change a step's totals."""
    n, total = model.num_sliding_layers, model.num_layers
    return bool(model.sliding_window) and (layer + 1) * n // total > layer * n // total


def attended_pairs(tokens: float, context: int, window: int = 0) -> float:
    """(query, key) pairs of one sequence's `tokens` new tokens after `context` cached ones:
    token i attends to context + i keys, at most `window` of them (0: no window)."""
    if not window:
        return tokens * context + tokens * (tokens + 1) / 2
    if context >= window:
        return tokens * window
    below = min(tokens, window - context)  # tokens that attend to fewer keys than the window
    return below * context + below * (below + 1) / 2 + (tokens - below) * window


def _fmt_of(quant: Quant, part: str, layer: int, num_layers: int) -> str:
    if quant.more_bits and part in ("v", "down") and use_more_bits(layer, num_layers):
        return quant.more_bits
    return quant.base


def head_work(model: ModelSpec, quant: Quant, step: Step) -> Work:
    """The output head on the last token of each sequence (llama.cpp computes logits only for
    the tokens it samples)."""
    params = model.vocab_size * model.hidden_size
    fmt = quant.output
    return Work(
        {fmt: 2.0 * params * step.seqs},
        params * BLOCK_BYTES_PER_WEIGHT[fmt],
        step.seqs * model.vocab_size * ACT_BYTES,
        0.0,
        OPS_PER_HEAD,
        step.seqs,
    )


def layers_work(
    model: ModelSpec, quant: Quant, layers: range, step: Step, experts: bool = True
) -> Work:
    """Work of a contiguous run of decoder layers (routed experts left out unless `experts`)."""
    total = ZERO
    for i in layers:
        total = total + layer_work(model, quant, i, step, experts)
    return total


def model_work(model: ModelSpec, quant: Quant, step: Step) -> Work:
    """Work of the whole forward pass: every layer plus the output head."""
    return layers_work(model, quant, range(model.num_layers), step) + head_work(model, quant, step)


def _ffn_bytes(model: ModelSpec, quant: Quant, layer: int, width: int, extra: int = 0) -> float:
    """Bytes of one (expert) MLP of `width` in a layer: its down projection takes the wider
    format on llama.cpp's `use_more_bits` layers like a dense one (`ffn_down_exps` and
    `ffn_down_shexp` match its `ffn_down` rule), gate and up the base one; `extra` parameters
    (biases) in the base format."""
    h = model.hidden_size
    down = h * width
    base = BLOCK_BYTES_PER_WEIGHT[quant.base]
    rest = model.mlp_params(width) - down + extra
    return rest * base + down * quant.layer_bytes_per_weight("down", layer, model.num_layers)


def layer_weight_bytes(model: ModelSpec, quant: Quant, layer: int) -> float:
    """Bytes of one decoder layer's weights (all experts of an MoE layer), norms in f32."""
    check_supported(model)
    b = sum(
        p * quant.layer_bytes_per_weight(part, layer, model.num_layers)
        for part, p in _matrices(model, layer).items()
    )
    if _is_moe_layer(model, layer):
        b += model.num_experts * _expert_bytes(model, quant, layer) + model.router_params() * 4.0
        if model.shared_expert_intermediate_size:
            b += _ffn_bytes(model, quant, layer, model.shared_expert_intermediate_size)
    return b + 2 * model.hidden_size * 4.0


def _expert_bytes(model: ModelSpec, quant: Quant, layer: int) -> float:
    """Bytes of one routed expert of a layer (`_ffn_bytes`, its biases in the base format)."""
    extra = model.expert_params() - model.mlp_params(model.moe_intermediate_size)
    return _ffn_bytes(model, quant, layer, model.moe_intermediate_size, extra)


def embedding_bytes(model: ModelSpec, quant: Quant) -> float:
    """Bytes of the token embedding table plus the output head and final norm."""
    v, h = model.vocab_size, model.hidden_size
    emb = BLOCK_BYTES_PER_WEIGHT[quant.embedding or quant.base]
    head = 0.0 if model.tie_embeddings else v * h * BLOCK_BYTES_PER_WEIGHT[quant.output]
    return v * h * emb + head + h * 4.0


def weight_bytes(model: ModelSpec, quant: Quant) -> float:
    """Bytes of the whole checkpoint in this recipe (what a GGUF file holds, headers aside)."""
    layers = sum(layer_weight_bytes(model, quant, i) for i in range(model.num_layers))
    return layers + embedding_bytes(model, quant)


def kv_bytes(model: ModelSpec, quant: Quant, tokens: int) -> float:
    """KV-cache bytes of one sequence of `tokens` cached tokens over all layers: windowed
    layers hold at most their window (llama.cpp's iSWA cache without --swa-full)."""
    per = model.kv_values_per_token_per_layer * KV_BYTES_PER_VALUE
    windowed = model.num_sliding_layers if model.sliding_window else 0
    held = min(tokens, model.sliding_window) if windowed else 0
    return per * (tokens * (model.num_attention_layers - windowed) + held * windowed)


@dataclass(frozen=True)
class Timed:
    """Seconds of some work on a device, split into its roofline parts, and joules."""

    seconds: float
    compute_s: float
    memory_s: float
    fixed_s: float
    joules: float


def time_work(
    work: Work,
    device: Device,
    quant: Quant,
    eff: Efficiency | None = None,
    threads: int = 0,
    step_overhead: bool = True,
) -> Timed:
    """Seconds of `work` on `device`: the larger of compute and memory time, plus fixed costs.

    A CPU run with `threads` cores (0: all) gets that share of the socket's peak and the
    bandwidth `threads` cores can stream. Energy: idle power plus the dynamic range scaled by
    how busy compute (full share) and memory (half share, as `iteration.MEM_POWER_SHARE`) are.
    """
    e = eff or default_efficiency(device)
    cores = device.num_sms
    share = 1.0 if device.kind != "cpu" or threads <= 0 else min(threads, cores) / cores
    compute_s = 0.0
    for fmt, f in work.flops.items():
        peak = device.peak_flops(_compute_key(fmt, device, quant)) * share
        compute_s += f / (peak * e.share(fmt, work.rows))
    attn_peak = device.peak_flops("fp32" if device.kind == "cpu" else "fp16") * share
    compute_s += work.attn_flops / (attn_peak * e.compute_share("*"))
    bw = device.stream_bw(threads if device.kind == "cpu" else 0)
    memory_s = (work.weight_bytes + work.other_bytes) / (bw * e.memory)
    per_op = e.op_s
    if device.kind == "cpu":
        used = min(threads, cores) if threads > 0 else cores
        per_op += e.barrier_s * max(used - 1, 0)
    fixed_s = work.ops * per_op + (e.step_s if step_overhead else 0.0)
    seconds = max(compute_s, memory_s) + fixed_s
    busy = 0.0 if seconds <= 0 else min(1.0, (compute_s + 0.5 * memory_s) / seconds)
    idle = device.idle_power_w * (share if device.kind == "cpu" else 1.0)
    dyn = (device.max_power_w - device.idle_power_w) * share
    return Timed(seconds, compute_s, memory_s, fixed_s, seconds * (idle + dyn * busy))


def _compute_key(fmt: str, device: Device, quant: Quant) -> str:
    return compute_dtype(replace(quant, base=fmt), device.kind)


def step_time(
    model: ModelSpec,
    quant: Quant,
    device: Device,
    step: Step,
    eff: Efficiency | None = None,
    threads: int = 0,
) -> Timed:
    """One whole forward pass of `model` on `device`."""
    return time_work(model_work(model, quant, step), device, quant, eff, threads)


def decode_tokens_per_s(
    model: ModelSpec,
    quant: Quant,
    device: Device,
    context: int = 512,
    eff: Efficiency | None = None,
    threads: int = 0,
) -> float:
    """Single-sequence decode speed (tokens/s) at `context` cached tokens."""
    return 1.0 / step_time(model, quant, device, decode(1, context), eff, threads).seconds


def prefill_tokens_per_s(
    model: ModelSpec,
    quant: Quant,
    device: Device,
    tokens: int = 512,
    eff: Efficiency | None = None,
    threads: int = 0,
) -> float:
    """Prompt-processing speed (tokens/s) of one prompt of `tokens` tokens."""
    return tokens / step_time(model, quant, device, prefill(tokens), eff, threads).seconds
