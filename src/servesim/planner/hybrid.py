"""Where to split a model between CPU and GPU: every resident-layer count and offload mode that
fits the GPU's memory, priced by `predictor.offload`, the best for a latency or throughput target.

The latency target prices one decode step of one sequence (time per output token); the
throughput target prices a step of the given shape (a long prefill or a large decode batch) in
tokens per second. Decode at batch 1 reads every weight once per token, so the CPU computing its
own layers from DRAM beats copying them over PCIe; a long prefill reuses each copied layer for
hundreds of tokens, so streaming wins. The search finds which regime a deployment is in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from servesim.errors import ServesimError
from servesim.predictor.device_step import Efficiency, Step, decode
from servesim.predictor.offload import MODES, HybridTime, gpu_memory, hybrid_step
from servesim.spec.devices import Device
from servesim.spec.links import Link
from servesim.spec.model import ModelSpec
from servesim.spec.quant import Quant

TARGETS = ("latency", "throughput")


@dataclass(frozen=True)
class HybridChoice:
    """The best split for a target and every split that fit."""

    target: str
    best: HybridTime
    tokens_per_s: float
    candidates: tuple[HybridTime, ...]

    def as_dict(self) -> dict:
        """Plain fields for JSON."""
        return {
            "target": self.target,
            "best": asdict(self.best),
            "tokens_per_s": self.tokens_per_s,
            "candidates": [asdict(c) for c in self.candidates],
        }


def search_hybrid(
    model: ModelSpec,
    quant: Quant,
    gpu: Device,
    cpu: Device,
    link: Link,
    target: str = "latency",
    step: Step | None = None,
    context: int = 2048,
    threads: int = 0,
    gpu_eff: Efficiency | None = None,
    cpu_eff: Efficiency | None = None,
) -> HybridChoice:
    """Search gpu_layers 0..L and both modes; the fastest step (latency) or the most tokens per
    second (throughput) among splits whose GPU memory (weights, KV per sequence for the longer
    of `context` and what the step itself reaches, buffers, reserve) fits: a 131k-token prompt
    holds its own KV however short `context` is."""
    if target not in TARGETS:
        raise ServesimError(f"Unknown target {target!r}; use one of: {', '.join(TARGETS)}.")
    st = step or (decode(1, context) if target == "latency" else Step(512, 1, 0))
    # The default steps are sized by `context` itself; a given step holds what it reaches.
    kv_context = context if step is None else max(context, st.context + st.tokens // st.seqs)
    fits: list[HybridTime] = []
    for mode in MODES:
        for n in range(model.num_layers + 1):
            if gpu_memory(model, quant, n, kv_context * st.seqs, mode) > gpu.mem_bytes:
                continue
            fits.append(
                hybrid_step(
                    model,
                    quant,
                    gpu,
                    cpu,
                    link,
                    st,
                    n,
                    mode,
                    threads,
                    gpu_eff,
                    cpu_eff,
                    kv_context,
                )
            )
    if not fits:
        raise ServesimError(
            f"Not even the offload buffers of {model.name} fit in {gpu.name}'s "
            f"{gpu.mem_bytes / 1e9:.0f} GB; use a smaller context or a larger GPU."
        )
    best = min(fits, key=lambda h: h.seconds)
    return HybridChoice(target, best, st.tokens / best.seconds, tuple(fits))
