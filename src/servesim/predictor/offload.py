"""CPU–GPU hybrid execution when the weights exceed the GPU's memory.

Three ways to run a model that does not fit, each priced from `device_step` with the transfer
over a `Link` and the overlap each runtime achieves:
- layer offload (llama.cpp `-ngl N`): the last N layers live on the GPU, the rest run on the CPU
  at CPU rates from host memory; one pass runs CPU layers then GPU layers (no overlap), and the
  activations cross PCIe once each way;
- streamed weights (llama.cpp's op offload for large batches, FlexGen-style): layers not resident
  on the GPU are copied over PCIe layer by layer while the GPU computes the previous one, so each
  streamed layer costs max(compute, copy);
- attention offload (Lamina, arXiv:2405.01814): weights stay on the GPU, the KV cache and the
  attention that reads it run on a memory-rich device; with two micro-batches in rotation each
  step costs the slowest of GPU work, attention and the link instead of their sum.
MoE experts on the CPU with a GPU expert cache are in `expert_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.predictor.device_step import (
    ACT_BYTES,
    ZERO,
    Efficiency,
    Step,
    Timed,
    Work,
    embedding_bytes,
    head_work,
    kv_bytes,
    layer_weight_bytes,
    layers_work,
    time_work,
)
from servesim.spec.devices import Device
from servesim.spec.links import Link
from servesim.spec.model import ModelSpec
from servesim.spec.quant import KV_BYTES_PER_VALUE, Quant

MODES = ("ngl", "stream")
# GPU memory the runtime keeps for itself: CUDA context, cuBLAS workspace and compute buffers
# (llama.cpp prints ~0.3-0.6 GB of "CUDA0 compute buffer" plus the context for 7-8B models).
GPU_RESERVE_BYTES = 0.8e9
STREAM_BUFFERS = 2  # layers held in flight while streaming (double buffering)


@dataclass(frozen=True)
class HybridTime:
    """One forward pass split between CPU and GPU: seconds by part and GPU memory needed."""

    mode: str
    gpu_layers: int
    seconds: float
    cpu_s: float
    gpu_s: float
    transfer_s: float
    gpu_mem_bytes: float
    host_mem_bytes: float
    joules: float


def _check(model: ModelSpec, gpu: Device, gpu_layers: int) -> None:
    if not 0 <= gpu_layers <= model.num_layers:
        raise ServesimError(
            f"gpu_layers must be between 0 and the model's {model.num_layers} layers, "
            f"got {gpu_layers}."
        )
    if gpu.unified_memory:
        raise ServesimError(
            f"{gpu.name} shares one memory between CPU and GPU; there is nothing to offload."
        )


def gpu_memory(
    model: ModelSpec, quant: Quant, gpu_layers: int, context: int, mode: str = "ngl"
) -> float:
    """GPU bytes for `gpu_layers` resident layers (their KV for `context` tokens), the head when
    every layer is resident, streaming buffers, and the runtime's reserve."""
    n = model.num_layers
    first = n - gpu_layers
    w = sum(layer_weight_bytes(model, quant, i) for i in range(first, n))
    kv = kv_bytes(model, quant, context) * gpu_layers / n
    if mode == "stream":
        kv = kv_bytes(model, quant, context)  # every layer runs on the GPU, so its KV is there
        if gpu_layers < n:
            w += STREAM_BUFFERS * max(layer_weight_bytes(model, quant, i) for i in range(n))
    if gpu_layers == n or mode == "stream":
        w += embedding_bytes(model, quant)
    return w + kv + GPU_RESERVE_BYTES


def hybrid_step(
    model: ModelSpec,
    quant: Quant,
    gpu: Device,
    cpu: Device,
    link: Link,
    step: Step,
    gpu_layers: int,
    mode: str = "ngl",
    threads: int = 0,
    gpu_eff: Efficiency | None = None,
    cpu_eff: Efficiency | None = None,
    kv_context: int = 0,
) -> HybridTime:
    """Price one forward pass with the last `gpu_layers` layers resident on the GPU.

    `ngl`: the other layers (and the head, unless every layer is resident) run on the CPU,
    then the GPU's; activations cross the link at the boundary and back for sampling.
    `stream`: every layer runs on the GPU; non-resident layers' weights cross the link while the
    GPU computes, so each costs max(GPU compute, copy). Memory figures hold the KV cache of
    `kv_context` tokens per sequence (0: the context this step reaches).
    """
    _check(model, gpu, gpu_layers)
    if mode not in MODES:
        raise ServesimError(f"Unknown offload mode {mode!r}; use one of: {', '.join(MODES)}.")
    n = model.num_layers
    first = n - gpu_layers
    # memory holds KV for `kv_context` tokens per sequence (default: what this step reaches)
    context = kv_context or step.context + step.tokens // step.seqs
    gpu_mem = gpu_memory(model, quant, gpu_layers, context * step.seqs, mode)
    total_w = sum(layer_weight_bytes(model, quant, i) for i in range(n)) + embedding_bytes(
        model, quant
    )
    head = head_work(model, quant, step)
    if mode == "ngl":
        cpu_work = layers_work(model, quant, range(first), step)
        gpu_work = layers_work(model, quant, range(first, n), step)
        if gpu_layers == n:
            gpu_work = gpu_work + head
        else:
            cpu_work = cpu_work + head
        cpu_t = time_work(cpu_work, cpu, quant, cpu_eff, threads) if cpu_work != ZERO else None
        gpu_t = time_work(gpu_work, gpu, quant, gpu_eff) if gpu_work != ZERO else None
        crossings = 2 if 0 < gpu_layers < n else 0
        act = step.tokens * model.hidden_size * ACT_BYTES
        xfer = crossings * link.transfer_s(act)
        cpu_s = cpu_t.seconds if cpu_t else 0.0
        gpu_s = gpu_t.seconds if gpu_t else 0.0
        # each side draws its own energy while busy and idles while the other works
        joules = (cpu_t.joules if cpu_t else 0.0) + (gpu_t.joules if gpu_t else 0.0)
        joules += gpu.idle_power_w * cpu_s + cpu.idle_power_w * gpu_s
        gpu_w = sum(layer_weight_bytes(model, quant, i) for i in range(first, n))
        if gpu_layers == n:
            gpu_w += embedding_bytes(model, quant)
        host = total_w - gpu_w + kv_bytes(model, quant, context) * step.seqs * first / n
        return HybridTime(
            mode, gpu_layers, cpu_s + gpu_s + xfer, cpu_s, gpu_s, xfer, gpu_mem, host, joules
        )
    # stream: per layer, the copy of a non-resident layer overlaps the GPU's compute
    seconds = gpu_s = xfer_s = joules = 0.0
    for i in range(n):
        t = time_work(
            layers_work(model, quant, range(i, i + 1), step), gpu, quant, gpu_eff, 0, False
        )
        gpu_s += t.seconds
        joules += t.joules
        if i < first:
            copy = link.transfer_s(layer_weight_bytes(model, quant, i))
            xfer_s += copy
            seconds += max(t.seconds, copy)
            joules += gpu.idle_power_w * max(0.0, copy - t.seconds)
        else:
            seconds += t.seconds
    th = time_work(head, gpu, quant, gpu_eff)
    seconds += th.seconds
    gpu_s += th.seconds
    joules += th.joules
    host = sum(layer_weight_bytes(model, quant, i) for i in range(first))
    return HybridTime(mode, gpu_layers, seconds, 0.0, gpu_s, xfer_s, gpu_mem, host, joules)


@dataclass(frozen=True)
class AttentionOffload:
    """One decode step with attention on another device (Lamina): its parts and the step."""

    seconds: float
    dense_s: float
    attention_s: float
    link_s: float
    max_seqs_gpu_only: int
    max_seqs_offloaded: int
    joules: float = 0.0  # both devices over the step: each its own work, idle the rest


def attention_offload_step(
    model: ModelSpec,
    quant: Quant,
    gpu: Device,
    attn_device: Device,
    link: Link,
    seqs: int,
    context: int,
    overlap: bool = True,
    gpu_eff: Efficiency | None = None,
    attn_eff: Efficiency | None = None,
) -> AttentionOffload:
    """A decode step of `seqs` sequences at `context` tokens with the KV cache and attention on
    `attn_device`. Per layer the GPU sends q, k, v of each new token and receives the attention
    output. `overlap`: Lamina's rotational pipeline of two micro-batches hides the shorter of
    the three stages, so the step costs max(dense, attention, link); otherwise their sum.
    Also reports how many sequences fit with the KV on the GPU versus on `attn_device`."""
    if seqs < 1 or context < 1:
        raise ServesimError("Attention offload needs seqs >= 1 and context >= 1.")
    step = Step(seqs, seqs, 0)  # dense work: no KV read on the GPU
    dense = layers_work(model, quant, range(model.num_layers), step) + head_work(model, quant, step)
    dense_t = time_work(dense, gpu, quant, gpu_eff)
    dense_s = dense_t.seconds
    per = model.kv_values_per_token_per_layer * KV_BYTES_PER_VALUE
    L = model.num_attention_layers
    kv_read = seqs * context * per * L
    attn_flops = 4.0 * model.num_heads * model.head_dim * seqs * context * L
    e = attn_eff
    attn_t = time_work(Work({}, 0.0, kv_read, attn_flops, 4 * L), attn_device, quant, e)
    attn_s = attn_t.seconds
    qkv = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim
    send = seqs * qkv * 2.0
    back = seqs * model.num_heads * model.head_dim * 2.0
    link_s = L * (link.transfer_s(send) + link.transfer_s(back))
    seconds = max(dense_s, attn_s, link_s) if overlap else dense_s + attn_s + link_s
    joules = dense_t.joules + gpu.idle_power_w * (seconds - dense_s)
    joules += attn_t.joules + attn_device.idle_power_w * (seconds - attn_s)
    w = sum(layer_weight_bytes(model, quant, i) for i in range(model.num_layers))
    w += embedding_bytes(model, quant)
    per_seq_kv = kv_bytes(model, quant, context)
    gpu_free = gpu.mem_bytes - GPU_RESERVE_BYTES - w
    if gpu_free < 0:
        raise ServesimError(
            f"{model.name} in {quant.name} needs {w / 1e9:.1f} GB of weights; {gpu.name} holds "
            f"{gpu.mem_bytes / 1e9:.0f} GB, so attention offload alone cannot run it."
        )
    return AttentionOffload(
        seconds,
        dense_s,
        attn_s,
        link_s,
        int(gpu_free // per_seq_kv),
        int((attn_device.mem_bytes * 0.9) // per_seq_kv),
        joules,
    )


def as_timed(h: HybridTime) -> Timed:
    """A hybrid pass as plain seconds and joules."""
    return Timed(h.seconds, h.gpu_s, h.cpu_s, h.transfer_s, h.joules)
