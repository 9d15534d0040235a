"""The attention/expert split of an AF-disaggregated MoE deployment (MegaScale-Infer, Janus).

For a steady decode load (a batch of sequences at a mean context) the search tries attention
pools of tp × dp GPUs, expert pools of E GPUs (E divides the expert count, the experts must fit)
and m ping-pong micro-batches, keeps the layouts whose KV cache holds the batch and whose
iteration meets the TPOT target, and ranks them by decode tokens per second per dollar-hour
(per GPU on one GPU type). The colocated layouts of the same GPUs (attention TP or DP, experts EP
over all of them) are priced the same way, so the answer says whether disaggregation pays off.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.predictor.af_disagg import AFDisagg, AFDisaggPredictor, af_memory_layout
from servesim.predictor.iteration import Predictor
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.links import Link
from servesim.spec.memory import memory_layout
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel


@dataclass(frozen=True)
class SplitResult:
    """One priced layout: AF (expert_gpus > 0) or colocated (expert_gpus 0)."""

    label: str
    attention_gpus: int  # colocated: all GPUs
    expert_gpus: int
    microbatches: int
    tp: int
    batch: int
    iteration_s: float
    tokens_per_s: float
    price_per_hour: float
    bottleneck: str

    @property
    def gpus(self) -> int:
        """GPUs of the layout."""
        return self.attention_gpus + self.expert_gpus

    @property
    def tokens_per_s_per_gpu(self) -> float:
        """Decode tokens per second per GPU."""
        return self.tokens_per_s / self.gpus

    @property
    def tokens_per_dollar_hour(self) -> float:
        """Decode tokens per second per USD-per-hour of rent."""
        return self.tokens_per_s / self.price_per_hour


def _divisors(n: int, cap: int) -> list[int]:
    return [d for d in range(1, min(n, cap) + 1) if n % d == 0]


def af_splits(
    model: ModelSpec,
    device: Device,
    engine: EngineProfile,
    batch: int,
    context: int,
    max_gpus: int,
    tps: tuple[int, ...] = (1,),
    microbatches: tuple[int, ...] = (1, 2, 3, 4),
    expert_device: Device | None = None,
    link: Link | None = None,
    tpot_slo_s: float | None = None,
) -> list[SplitResult]:
    """Every AF layout of at most `max_gpus` GPUs that holds `batch` sequences of `context`
    tokens and meets the TPOT target, best tokens per dollar-hour first."""
    if not model.num_experts:
        raise ServesimError(f"AF disaggregation needs an MoE model; {model.name} has no experts.")
    out: list[SplitResult] = []
    for tp in tps:
        if model.num_heads % tp:
            continue
        for attn in range(tp, max_gpus, tp):
            par = Parallel(tp=tp, dp=attn // tp)
            for e in _divisors(model.num_experts, max_gpus - attn):
                for m in microbatches:
                    af = AFDisagg(e, m, expert_device, link)
                    try:
                        mem = af_memory_layout(
                            model, device, par, af, 8192, engine.mem_util, min(batch, 256)
                        )
                    except ServesimError:
                        continue
                    if mem.kv_tokens < batch * context:
                        continue
                    pred = AFDisaggPredictor(model, device, af, par, engine)
                    b = pred.breakdown(batch, batch * context)
                    if tpot_slo_s is not None and b.seconds > tpot_slo_s:
                        continue
                    out.append(
                        SplitResult(
                            af.label(attn),
                            attn,
                            e,
                            b.microbatches,
                            tp,
                            batch,
                            b.seconds,
                            batch / b.seconds,
                            pred.price_per_hour,
                            b.bottleneck,
                        )
                    )
    out.sort(key=lambda r: -r.tokens_per_dollar_hour)
    return out


def colocated(
    model: ModelSpec,
    device: Device,
    engine: EngineProfile,
    batch: int,
    context: int,
    max_gpus: int,
    tps: tuple[int, ...] = (1, 8),
    tpot_slo_s: float | None = None,
) -> list[SplitResult]:
    """The colocated layouts of up to `max_gpus` GPUs (attention tp × dp, experts EP over all
    of them where the expert count allows, else over the TP group), best first."""
    out: list[SplitResult] = []
    for tp in tps:
        if model.num_heads % tp:
            continue
        for dp in range(1, max_gpus // tp + 1):
            n = tp * dp
            ep = n if model.num_experts % n == 0 else 1
            par = Parallel(tp=tp, dp=dp, ep=ep)
            try:
                mem = memory_layout(model, device, par, 8192, engine.mem_util, min(batch, 256))
            except ServesimError:
                continue
            if mem.kv_tokens < batch * context:
                continue
            t = Predictor(model, device, par, engine).step_s(batch, batch * context, ())
            if tpot_slo_s is not None and t > tpot_slo_s:
                continue
            out.append(
                SplitResult(
                    par.label(), n, 0, 1, tp, batch, t, batch / t, n * device.price_per_hour, ""
                )
            )
    out.sort(key=lambda r: -r.tokens_per_dollar_hour)
    return out
