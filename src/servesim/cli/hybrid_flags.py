"""Flags for local runtimes and CPU–GPU hybrids (`predict` and `simulate`): the weight recipe and
CPU threads of a llama.cpp-style runtime, layers offloaded to the CPU (`-ngl`, or `auto`: the
split `planner.hybrid` finds for a latency or throughput target), MoE experts on the CPU with a
GPU expert cache (HybriMoE / kTransformers), attention on another device (Lamina), and a
local-device fit from `servesim fewshot --shots` given as `--fit`.

CPU and edge devices always run the local cost model; these flags also put a GPU on it.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from servesim.cli.settings import Misuse, NonEmpty, NonNegInt, Settings


def _layers(v: Any) -> Any:
    """`auto` or a whole number of layers."""
    if v is None or (isinstance(v, str) and v.strip().lower() == "auto"):
        return None if v is None else "auto"
    try:
        n = int(str(v).strip())
    except ValueError:
        raise ValueError("must be a whole number of layers or auto") from None
    if n < 0:
        raise ValueError("must be at least 0")
    return n


GpuLayers = Annotated[int | Literal["auto"], BeforeValidator(_layers)]
OFFLOAD_KEYS = ("gpu_layers", "offload_mode", "offload_target")
EXPERT_KEYS = ("gpu_expert_cache", "expert_cache_policy", "expert_shift_every")
ALL_KEYS = (
    "quant",
    "threads",
    *OFFLOAD_KEYS,
    "host_cpu",
    "offload_link",
    "offload_experts_to_cpu",
    *EXPERT_KEYS,
    "offload_attention_to",
)


class HybridSettings(Settings):
    """Local-runtime and hybrid settings (file keys as the flags, with underscores)."""

    quant: NonEmpty | None = None
    threads: NonNegInt | None = None
    gpu_layers: GpuLayers | None = None
    offload_mode: Literal["ngl", "stream"] | None = None
    offload_target: Literal["latency", "throughput"] | None = None
    host_cpu: NonEmpty | None = None
    offload_link: NonEmpty | None = None
    offload_experts_to_cpu: bool = False
    gpu_expert_cache: NonNegInt | None = None
    expert_cache_policy: Literal["static", "dynamic"] | None = None
    expert_shift_every: NonNegInt | None = None
    offload_attention_to: NonEmpty | None = None


def add_hybrid_args(p: argparse.ArgumentParser) -> None:
    """Add the local-runtime and hybrid flags to a command."""
    g = p.add_argument_group(
        "local runtime and CPU–GPU hybrid (CPU and edge devices always run the local model)"
    )
    g.add_argument("--quant", help="weight recipe: f16, bf16, q8_0, q4_k_m, q4_0, int4, ...")
    g.add_argument("--threads", type=int, help="CPU threads (0: every core; default 0)")
    g.add_argument(
        "--gpu-layers",
        help="layers resident on the GPU, the rest on --host-cpu (llama.cpp -ngl), or auto: "
        "the split and mode planner.hybrid finds for --offload-target",
    )
    g.add_argument("--offload-mode", help="ngl (CPU runs its layers) or stream (over the link)")
    g.add_argument("--offload-target", help="--gpu-layers auto: latency (default) or throughput")
    g.add_argument("--host-cpu", help="the CPU device of a hybrid (e.g. ryzen_9_7950x)")
    g.add_argument(
        "--offload-link", help="link to the host CPU or attention device (default pcie4_x16)"
    )
    g.add_argument(
        "--offload-experts-to-cpu",
        action="store_true",
        default=None,
        help="MoE routed experts in host memory, run by --host-cpu (kTransformers, HybriMoE)",
    )
    g.add_argument("--gpu-expert-cache", type=int, help="experts per layer cached on the GPU (0)")
    g.add_argument(
        "--expert-cache-policy",
        help="dynamic (HybriMoE: scored cache, misses to CPU or copied; default) or static "
        "(kTransformers: the profiled hot experts, misses on the CPU)",
    )
    g.add_argument(
        "--expert-shift-every",
        type=int,
        help="decode steps between re-rankings of expert popularity (0: never; skew from "
        "--expert-zipf, default 1.2)",
    )
    g.add_argument(
        "--offload-attention-to",
        help="device holding the KV cache and running attention (Lamina), e.g. xeon_8480",
    )


def _used(s: HybridSettings, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if s.given(k)), None)


def apply_hybrid(dep: Any, s: HybridSettings) -> Any:
    """The deployment with the stated local runtime, or unchanged on the datacenter path."""
    from servesim.predictor.edge_fit import EdgeFit, is_edge_fit
    from servesim.predictor.local_runtime import ExpertOffload, LocalRuntime, default_quant
    from servesim.spec.devices import catalog
    from servesim.spec.links import get_link
    from servesim.spec.quant import get_quant

    if dep.profiled is not None:  # a CPU engine measured here prices its own iterations
        if (k := _used(s, ALL_KEYS)) is not None:
            raise Misuse(f"{{{k}}} shapes a local runtime; a measured engine has its own costs.")
        return dep
    edge_fit = getattr(s, "fit", None)
    fit = EdgeFit.load(edge_fit) if edge_fit and is_edge_fit(edge_fit) else None
    if fit is not None and fit.device != dep.device.name:
        raise Misuse(
            f"{{fit}} was fitted on {fit.device}, not on {dep.device.name}; fit this device with "
            "servesim fewshot --shots, or drop {fit}."
        )
    if not s.offload_experts_to_cpu and (k := _used(s, EXPERT_KEYS)) is not None:
        raise Misuse(f"{{{k}}} shapes the GPU expert cache; add {{offload_experts_to_cpu}}.")
    if s.gpu_layers is None and (k := _used(s, OFFLOAD_KEYS)) is not None:
        raise Misuse(f"{{{k}}} shapes layer offload; add {{gpu_layers}} N or auto.")
    if s.gpu_layers != "auto" and s.given("offload_target"):
        raise Misuse("{offload_target} chooses the split of {gpu_layers} auto; drop it.")
    mechanisms = [s.gpu_layers is not None, s.offload_experts_to_cpu]
    mechanisms.append(s.offload_attention_to is not None)
    if sum(mechanisms) > 1:
        raise Misuse(
            "Give one of {gpu_layers}, {offload_experts_to_cpu} and {offload_attention_to}: "
            "they are priced one at a time."
        )
    hybrid = any(mechanisms)
    if not hybrid and (k := _used(s, ("host_cpu", "offload_link"))) is not None:
        raise Misuse(
            f"{{{k}}} belongs to an offload; add {{gpu_layers}}, "
            "{offload_experts_to_cpu} or {offload_attention_to}."
        )
    local = dep.device.kind in ("cpu", "edge") or hybrid or s.given("quant") or fit is not None
    if not local:
        if s.given("threads"):
            raise Misuse("{threads} sets CPU threads of a local runtime; the device is a GPU.")
        return dep
    if s.given("threads") and dep.device.kind != "cpu" and not hybrid:
        raise Misuse(f"{{threads}} sets CPU threads; {dep.device.name} is not a CPU.")
    quant = get_quant(s.quant) if s.quant else default_quant(dep.model)
    cat = catalog(getattr(s, "devices", None))
    host = None
    if s.gpu_layers is not None or s.offload_experts_to_cpu:
        if not s.host_cpu:
            raise Misuse("Offloading to the CPU needs {host_cpu} NAME (the CPU device).")
        host = cat.get(s.host_cpu)
    link = get_link(s.offload_link or "pcie4_x16") if hybrid else None
    rt = LocalRuntime(
        quant,
        threads=s.threads or 0,
        efficiency=fit.efficiency if fit else None,
        host=host,
        link=link,
    )
    if s.offload_experts_to_cpu:
        zipf = getattr(s, "expert_zipf", None)
        rt = replace(
            rt,
            experts=ExpertOffload(
                s.gpu_expert_cache or 0,
                s.expert_cache_policy or "dynamic",
                1.2 if zipf is None else zipf,
                s.expert_shift_every or 0,
            ),
        )
    if s.offload_attention_to is not None:
        rt = replace(rt, attention_device=cat.get(s.offload_attention_to))
    if s.gpu_layers is not None:
        rt = _layers_runtime(dep, rt, s)
    rt.check(dep.model, dep.device)
    return replace(dep, local=rt)


def _layers_runtime(dep: Any, rt: Any, s: HybridSettings) -> Any:
    """The runtime with its resident layers: as given, or the split `search_hybrid` picks."""
    if s.gpu_layers != "auto":
        return replace(rt, gpu_layers=s.gpu_layers, offload_mode=s.offload_mode or "ngl")
    from servesim.planner.hybrid import search_hybrid

    if s.given("offload_mode"):
        raise Misuse("{gpu_layers} auto chooses the mode too; drop {offload_mode}.")
    choice = search_hybrid(
        dep.model,
        rt.quant,
        dep.device,
        rt.host,
        rt.link,
        s.offload_target or "latency",
        threads=rt.threads,
        gpu_eff=rt.efficiency,
    )
    return replace(rt, gpu_layers=choice.best.gpu_layers, offload_mode=choice.best.mode)
