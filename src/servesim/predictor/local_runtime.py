"""How a model runs on a local device (llama.cpp-style): its weight recipe, CPU threads, fitted
efficiencies, and any CPU–GPU hybrid (`-ngl` layers or streamed weights, MoE experts on the CPU
with a GPU expert cache, attention on another device), plus the memory that leaves for KV.

`LocalPredictor` prices a deployment's iterations from this; `Deployment.runtime()` gives a CPU
or edge device a default one (its checkpoint's format, every core, spec-only efficiencies).
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.predictor.device_step import (
    Efficiency,
    kv_bytes,
    weight_bytes,
)
from servesim.predictor.offload import GPU_RESERVE_BYTES, MODES, gpu_memory
from servesim.spec.devices import Device
from servesim.spec.links import Link
from servesim.spec.memory import MemoryLayout
from servesim.spec.model import ModelSpec
from servesim.spec.quant import BLOCK_BYTES_PER_WEIGHT, QUANTS, Quant, get_quant

# A checkpoint's datacenter format as the local recipe that stores it the same way (GGUF F16 for
# fp16; bf16, fp8, int8 and int4 are uniform recipes in `spec.quant`).
RECIPE_OF_DTYPE = {"fp16": "f16", "bf16": "bf16", "fp8": "fp8", "int8": "int8", "int4": "int4"}
# Memory a CPU runtime keeps for itself and the OS when it is the whole machine (llama.cpp's
# compute buffers are ~0.3-0.6 GB for 7-8B models; the OS and page cache a few hundred MB more;
# estimate).
HOST_RESERVE_BYTES = 1.0e9
POLICIES = ("static", "dynamic")


def default_quant(model: ModelSpec) -> Quant:
    """The local recipe matching the checkpoint's own weight format."""
    name = RECIPE_OF_DTYPE.get(model.weight_dtype)
    if name is None:
        raise ServesimError(
            f"{model.name} stores {model.weight_dtype} weights, which local runtimes do not run; "
            f"give a recipe with --quant ({', '.join(QUANTS)})."
        )
    return get_quant(name)


@dataclass(frozen=True)
class ExpertOffload:
    """MoE experts in host memory run by the CPU, `cache_per_layer` of them cached on the GPU,
    placed statically (kTransformers) or dynamically (HybriMoE); popularity Zipf(`zipf`),
    re-ranked every `shift_every` steps (0: never)."""

    cache_per_layer: int = 0
    policy: str = "dynamic"
    zipf: float = 1.2
    shift_every: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ServesimError(
                f"Unknown expert placement {self.policy!r}; use one of: {', '.join(POLICIES)}."
            )
        if self.cache_per_layer < 0 or self.shift_every < 0 or self.zipf < 0:
            raise ServesimError(
                "The GPU expert cache, the popularity skew and the shift period must be >= 0."
            )


@dataclass(frozen=True)
class LocalRuntime:
    """A model on a local device: recipe, threads (CPU; 0 all cores), efficiencies (None: the
    spec-only defaults), and at most one hybrid mechanism for a GPU: `gpu_layers` resident
    (`offload_mode` ngl or stream) with the rest on `host`, routed `experts` on `host`, or
    attention and the KV cache on `attention_device` (Lamina)."""

    quant: Quant
    threads: int = 0
    efficiency: Efficiency | None = None
    host: Device | None = None  # the CPU of a hybrid
    host_efficiency: Efficiency | None = None
    link: Link | None = None  # between the device and `host` / `attention_device`
    gpu_layers: int | None = None  # None: every layer on the device
    offload_mode: str = "ngl"
    experts: ExpertOffload | None = None
    attention_device: Device | None = None
    attention_efficiency: Efficiency | None = None

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ServesimError(f"Threads must be >= 0 (0: every core), got {self.threads}.")
        if self.offload_mode not in MODES:
            raise ServesimError(
                f"Unknown offload mode {self.offload_mode!r}; use one of: {', '.join(MODES)}."
            )
        used = [self.gpu_layers is not None, self.experts is not None]
        used.append(self.attention_device is not None)
        if sum(used) > 1:
            raise ServesimError(
                "Layer offload, expert offload and attention offload are priced one at a time; "
                "keep one of them."
            )
        if (self.gpu_layers is not None or self.experts is not None) and (
            self.host is None or self.link is None
        ):
            raise ServesimError("Offloading to the CPU needs the host CPU device and its link.")
        if self.attention_device is not None and self.link is None:
            raise ServesimError("Attention offload needs the link to the attention device.")

    @property
    def hybrid(self) -> str:
        """Which mechanism splits the model: "", "layers", "experts" or "attention"."""
        if self.gpu_layers is not None:
            return "layers"
        if self.experts is not None:
            return "experts"
        return "attention" if self.attention_device is not None else ""

    def check(self, model: ModelSpec, device: Device) -> None:
        """Refuse a runtime the device or the model cannot take."""
        if self.hybrid and device.kind == "cpu":
            raise ServesimError(
                f"{device.name} is a CPU; offloading works from a GPU to a CPU or memory device."
            )
        if self.hybrid in ("layers", "experts") and device.unified_memory:
            raise ServesimError(
                f"{device.name} shares one memory between CPU and GPU; there is nothing to offload."
            )
        if self.host is not None and self.host.kind != "cpu":
            raise ServesimError(f"The host of an offload must be a CPU, got {self.host.name}.")
        if self.gpu_layers is not None and not 0 <= self.gpu_layers <= model.num_layers:
            raise ServesimError(
                f"GPU layers must be between 0 and the model's {model.num_layers}, "
                f"got {self.gpu_layers}."
            )
        if self.experts is not None:
            if not model.is_moe:
                raise ServesimError(f"{model.name} has no routed experts to offload.")
            if self.experts.cache_per_layer > model.num_experts:
                raise ServesimError(
                    f"The GPU expert cache holds at most the model's {model.num_experts} "
                    f"experts per layer, got {self.experts.cache_per_layer}."
                )

    def label(self) -> str:
        """Short description such as `q4_k_m t2 ngl40`."""
        text = self.quant.name + (f" t{self.threads}" if self.threads else "")
        if self.gpu_layers is not None:
            text += f" {self.offload_mode}{self.gpu_layers}"
        if self.experts is not None:
            text += f" experts-cpu cache{self.experts.cache_per_layer} {self.experts.policy}"
        if self.attention_device is not None:
            text += f" attn@{self.attention_device.name}"
        return text


def resident_weight_bytes(model: ModelSpec, rt: LocalRuntime) -> float:
    """Weight bytes held in the device's own memory under the runtime's split."""
    q = rt.quant
    if rt.gpu_layers is not None:
        # gpu_memory with no KV (context 0) less the runtime reserve is the resident weights
        return gpu_memory(model, q, rt.gpu_layers, 0, rt.offload_mode) - GPU_RESERVE_BYTES
    total = weight_bytes(model, q)
    if rt.experts is not None:
        per = model.expert_params() * BLOCK_BYTES_PER_WEIGHT[q.base]
        moe_layers = model.num_layers - model.first_dense_layers
        total -= moe_layers * (model.num_experts - rt.experts.cache_per_layer) * per
    return total


def local_memory(model: ModelSpec, device: Device, rt: LocalRuntime) -> MemoryLayout:
    """The device's memory under the runtime: resident weights, the runtime's reserve, and the
    KV cache in what is left (on the attention device under attention offload; only for the
    resident layers under `-ngl`, the host holding the rest)."""
    rt.check(model, device)
    reserve = HOST_RESERVE_BYTES if device.kind == "cpu" else GPU_RESERVE_BYTES
    weights = resident_weight_bytes(model, rt)
    per_token = kv_bytes(model, rt.quant, 1)
    kv_share = 1.0
    if rt.gpu_layers is not None and rt.offload_mode == "ngl":
        kv_share = rt.gpu_layers / model.num_layers
    free = device.mem_bytes - weights - reserve
    if free <= 0:
        raise ServesimError(
            f"{model.name} in {rt.quant.name} keeps {weights / 1e9:.1f} GB of weights on "
            f"{device.name}, which holds {device.mem_bytes / 1e9:.0f} GB with "
            f"{reserve / 1e9:.1f} GB reserved; use a smaller recipe, a larger device or (from a "
            "GPU) offload more to the CPU."
        )
    if rt.attention_device is not None:
        free = rt.attention_device.mem_bytes * 0.9  # Lamina: the KV lives on the memory device
    tokens = int(free // (per_token * kv_share)) if kv_share > 0 else 1 << 40
    if rt.gpu_layers is not None and rt.offload_mode == "ngl" and rt.host is not None:
        host_free = (
            rt.host.mem_bytes - HOST_RESERVE_BYTES - (weight_bytes(model, rt.quant) - weights)
        )
        if host_free <= 0:
            raise ServesimError(
                f"The offloaded layers of {model.name} do not fit in {rt.host.name}'s "
                f"{rt.host.mem_bytes / 1e9:.0f} GB."
            )
        if kv_share < 1.0:
            tokens = min(tokens, int(host_free // (per_token * (1.0 - kv_share))))
    return MemoryLayout(
        device_bytes=device.mem_bytes,
        usable_bytes=device.mem_bytes,
        weight_bytes=weights,
        reserve_bytes=reserve,
        kv_bytes=tokens * per_token * kv_share,
        kv_bytes_per_token=per_token * kv_share,
        kv_tokens=tokens,
        window_bytes_per_seq=0.0,
    )
