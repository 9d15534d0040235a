"""The attention/expert split of an AF-disaggregated MoE deployment (MegaScale-Infer, Janus).

For a steady decode load at a mean context the search tries attention pools of tp × dp GPUs,
expert pools of E GPUs (E divides the expert count and the experts fit) and m ping-pong
micro-batches. Each layout runs either a given batch (kept when its KV cache holds it and the
iteration meets the TPOT target) or, with no batch given, the largest batch that its KV cache
holds and that meets the TPOT target (its decode capacity, the figure MegaScale-Infer compares:
throughput per GPU under a latency target). Layouts are ranked by decode tokens per second per
dollar-hour (per GPU on one GPU type). The colocated layouts of the same GPUs are priced the same
way, so the answer says whether disaggregation pays off against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from servesim.errors import ServesimError
from servesim.predictor.af_disagg import AFDisagg, AFDisaggPredictor, af_memory_layout
from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL, Predictor
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.links import Link
from servesim.spec.memory import engine_memory, memory_layout
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel

# The activation reserve is sized for this many batched tokens (SGLang's decode default chunk).
RESERVE_TOKENS = 8192


@dataclass(frozen=True)
class SplitResult:
    """One priced layout: AF (expert_gpus > 0) or colocated (expert_gpus 0)."""

    label: str
    attention_gpus: int  # colocated: all GPUs
    expert_gpus: int
    microbatches: int
    tp: int
    ep: int  # colocated: EP degree; AF: the expert pool's size
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


def _decode_batch(
    pred: Any, kv_tokens: int, context: int, batch: int | None, slo: float
) -> tuple[int, float]:
    """(batch, iteration seconds) a layout runs at `context` tokens per sequence: the given
    batch, or the largest one its KV cache holds whose decode step (`pred.step_s`) meets `slo`
    (bisection; the step grows with the batch). (0, 0) when none fits."""

    def step_s(b: int) -> float:
        return pred.step_s(b, b * context, ())

    cap = kv_tokens // context
    if batch is not None:
        if batch > cap:
            return 0, 0.0
        t = step_s(batch)
        return (batch, t) if t <= slo else (0, 0.0)
    if cap < 1 or step_s(1) > slo:
        return 0, 0.0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if step_s(mid) <= slo:
            lo = mid
        else:
            hi = mid - 1
    return lo, step_s(lo)


def af_splits(
    model: ModelSpec,
    device: Device,
    engine: EngineProfile,
    context: int,
    max_gpus: int,
    batch: int | None = None,
    tpot_slo_s: float = math.inf,
    tps: tuple[int, ...] = (1,),
    microbatches: tuple[int, ...] = (1, 2, 3, 4),
    expert_device: Device | None = None,
    link: Link | None = None,
    latency_model: str = DEFAULT_LATENCY_MODEL,
) -> list[SplitResult]:
    """Every AF layout of at most `max_gpus` GPUs that runs `batch` sequences of `context`
    tokens (None: its capacity) within the TPOT target, best tokens per dollar-hour first;
    kernels priced by `latency_model` (as `Predictor`'s)."""
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
                    seqs = min(batch or 256, 256)
                    try:
                        mem = af_memory_layout(
                            model,
                            device,
                            par,
                            af,
                            RESERVE_TOKENS,
                            max_num_seqs=seqs,
                            **engine_memory(engine, device, par),
                        )
                    except ServesimError:
                        continue
                    pred = AFDisaggPredictor(
                        model, device, af, par, engine, latency_model=latency_model
                    )
                    n, t = _decode_batch(pred, mem.kv_tokens, context, batch, tpot_slo_s)
                    if not n:
                        continue
                    out.append(
                        SplitResult(
                            af.label(attn),
                            attn,
                            e,
                            min(m, n),
                            tp,
                            e,
                            n,
                            t,
                            n / t,
                            pred.price_per_hour,
                            pred.breakdown(n, n * context).bottleneck,
                        )
                    )
    out.sort(key=lambda r: -r.tokens_per_dollar_hour)
    return out


def colocated(
    model: ModelSpec,
    device: Device,
    engine: EngineProfile,
    context: int,
    max_gpus: int,
    batch: int | None = None,
    tpot_slo_s: float = math.inf,
    tps: tuple[int, ...] = (1, 8),
    latency_model: str = DEFAULT_LATENCY_MODEL,
) -> list[SplitResult]:
    """The colocated layouts of up to `max_gpus` GPUs, best first: attention tp × dp, the
    experts over all of them either as wide EP (one EP rank per GPU, SGLang's DeepEP layout,
    where the experts divide evenly) or as EP over as many ranks as divide both the GPUs and
    the experts with TP inside each (TRT-LLM's moe_tp × moe_ep)."""
    out: list[SplitResult] = []
    for tp in tps:
        if model.num_heads % tp:
            continue
        for dp in range(1, max_gpus // tp + 1):
            n = tp * dp
            eps = {math.gcd(n, model.num_experts)}
            if model.num_experts % n == 0:
                eps.add(n)
            for ep in sorted(eps):
                par = Parallel(tp=tp, dp=dp, ep=ep)
                seqs = min(batch or 256, 256)
                try:
                    mem = memory_layout(
                        model,
                        device,
                        par,
                        RESERVE_TOKENS,
                        max_num_seqs=seqs,
                        **engine_memory(engine, device, par),
                    )
                except ServesimError:
                    continue
                pred = Predictor(model, device, par, engine, latency_model=latency_model)
                b, t = _decode_batch(pred, mem.kv_tokens, context, batch, tpot_slo_s)
                if not b:
                    continue
                out.append(
                    SplitResult(
                        par.label(), n, 0, 1, tp, ep, b, t, b / t, n * device.price_per_hour, ""
                    )
                )
    out.sort(key=lambda r: -r.tokens_per_dollar_hour)
    return out
