"""`LocalPredictor`: a Predictor whose iterations are priced by the local-device cost model
(`device_step`, the one `validation/edge.py` checks against llama.cpp on this CPU), with the
CPU–GPU hybrids of `offload` and `expert_cache` when the runtime asks for one.

A llama.cpp-style runtime's fixed costs (per graph operator, per forward pass) are inside
`device_step`, so no datacenter engine overhead is added: one iteration of a local deployment
is exactly `device_step`'s forward pass of the batch. Energy of a simulated run still comes from
the base class's busy-work tables (the datacenter roofline's view of the same FLOPs and bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from servesim.predictor import device_step as ds
from servesim.predictor.expert_cache import Popularity, expert_costs, simulate_placement
from servesim.predictor.iteration import BatchShape, IterationCost, OpCost, Predictor
from servesim.predictor.local_runtime import LocalRuntime
from servesim.predictor.offload import attention_offload_step, hybrid_step
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel

SECANT_CONTEXT = 2048  # tokens per sequence over which a decode step's context slope is taken
# The expert cache is priced by simulating HybriMoE's placement: 200 decode steps (the profiling
# window of the static cache is the first 50, so most steps are after it) over 4 MoE layers,
# scaled to the model's MoE layers (each layer's popularity and cache are independent and alike),
# at batch sizes 1, 2, 4, ... 64 (interpolated between; beyond 64, linear in tokens: an upper
# bound, as every expert is then active).
PLACEMENT_STEPS = 200
PLACEMENT_LAYERS = 4
MAX_PLACEMENT_BATCH = 64


class LocalPredictor(Predictor):
    """Prices one replica of a model on one local device under a `LocalRuntime`."""

    def __init__(
        self, model: ModelSpec, device: Device, engine: EngineProfile, runtime: LocalRuntime
    ) -> None:
        super().__init__(model, device, Parallel(), engine)
        runtime.check(model, device)
        ds.check_supported(model)
        self.runtime = runtime
        self.latency_model = "local"
        self._forward = lru_cache(maxsize=65536)(self._forward_s)
        self._experts = lru_cache(maxsize=256)(self._expert_s)

    # ---- one forward pass ------------------------------------------------------------------
    def forward(self, step: ds.Step) -> ds.Timed:
        """Seconds (and parts) of one forward pass of `step` under the runtime."""
        rt, m, q = self.runtime, self.model, self.runtime.quant
        if rt.gpu_layers is not None:
            assert rt.host is not None and rt.link is not None
            h = hybrid_step(
                m,
                q,
                self.device,
                rt.host,
                rt.link,
                step,
                rt.gpu_layers,
                rt.offload_mode,
                rt.threads,
                rt.efficiency,
                rt.host_efficiency,
            )
            return ds.Timed(h.seconds, h.gpu_s, h.cpu_s, h.transfer_s, h.joules)
        if rt.experts is not None:
            work = ds.layers_work(m, q, range(m.num_layers), step, experts=False)
            t = ds.time_work(work + ds.head_work(m, q, step), self.device, q, rt.efficiency)
            extra = self.expert_s(step.tokens)
            # Energy: the GPU's own part (the host idling beside it, as `hybrid_step`), then the
            # experts, during which both devices draw idle power and the host CPU, streaming
            # expert weights from DRAM, half its dynamic range (`time_work`'s memory share).
            host = rt.host
            joules = t.joules + host.idle_power_w * t.seconds
            busy_w = self.device.idle_power_w + host.idle_power_w
            busy_w += 0.5 * (host.max_power_w - host.idle_power_w)
            joules += busy_w * extra
            return ds.Timed(t.seconds + extra, t.compute_s, t.memory_s, t.fixed_s + extra, joules)
        if rt.attention_device is not None and step.tokens == step.seqs and step.context > 0:
            assert rt.link is not None
            a = attention_offload_step(
                m,
                q,
                self.device,
                rt.attention_device,
                rt.link,
                step.seqs,
                step.context,
                gpu_eff=rt.efficiency,
                attn_eff=rt.attention_efficiency,
            )
            return ds.Timed(a.seconds, a.dense_s, a.attention_s, a.link_s, a.joules)
        return ds.step_time(m, q, self.device, step, rt.efficiency, rt.threads)

    def _forward_s(self, tokens: int, seqs: int, context: int) -> float:
        return self.forward(ds.Step(tokens, seqs, context)).seconds

    def expert_s(self, tokens: int) -> float:
        """Mean seconds per step of the routed experts on CPU + GPU cache for `tokens` tokens,
        interpolated between simulated powers of two."""
        if tokens >= MAX_PLACEMENT_BATCH:
            return self._experts(MAX_PLACEMENT_BATCH) * tokens / MAX_PLACEMENT_BATCH
        lo = 1 << (max(1, tokens).bit_length() - 1)
        if lo == tokens:
            return self._experts(lo)
        a, b = self._experts(lo), self._experts(2 * lo)
        return a + (b - a) * (tokens - lo) / lo

    def _expert_s(self, tokens: int) -> float:
        """Mean seconds per step of the routed experts on CPU + GPU cache for `tokens` tokens."""
        rt, m = self.runtime, self.model
        assert rt.experts is not None and rt.host is not None and rt.link is not None
        e = rt.experts
        costs = expert_costs(
            m,
            rt.quant,
            self.device,
            rt.host,
            rt.link,
            1,
            rt.threads,
            rt.efficiency,
            rt.host_efficiency,
        )
        pop = Popularity(m.num_experts, e.zipf, e.shift_every)
        moe_layers = m.num_layers - m.first_dense_layers
        res = simulate_placement(
            e.policy,
            costs,
            pop,
            min(PLACEMENT_LAYERS, moe_layers),
            m.experts_per_token,
            e.cache_per_layer,
            steps=PLACEMENT_STEPS,
            batch=tokens,
        )
        return res.mean_step_s * moe_layers / min(PLACEMENT_LAYERS, moe_layers)

    # ---- the Predictor interface ---------------------------------------------------------
    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of one iteration: the local forward pass of the whole batch."""
        chunks = tuple(prefill)
        if not decode_seqs and not chunks:
            return 0.0
        st = ds.batch_step(decode_seqs, decode_context, chunks)
        return self._forward(st.tokens, st.seqs, st.context)

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        """(c0, c1) of a decode-only iteration of n sequences: the step at no context and the
        secant slope to `SECANT_CONTEXT` tokens per sequence (the roofline's max() makes the
        true curve piecewise linear)."""
        if n <= 0:
            return 0.0, 0.0
        c0 = self.step_s(n, 0, ())
        far = n * SECANT_CONTEXT
        return c0, max(0.0, (self.step_s(n, far, ()) - c0) / far)

    def provenance_counts(self) -> dict[str, int]:
        """Every iteration shape priced by the local cost model (one class of provenance)."""
        return {"local": self._forward.cache_info().currsize}

    def ops(self, batch: BatchShape) -> list[OpCost]:
        """The forward pass in its roofline parts: the binding side of compute and memory, the
        other side hidden under it, and the fixed costs (operators, pass, transfers). A layer
        offload or attention offload is split by where the time goes instead (its `Timed`
        carries GPU, CPU or attention-device and link seconds, not compute and memory)."""
        st = ds.batch_step(batch.decode_seqs, batch.decode_context, batch.prefill)
        t = self.forward(st)
        work = ds.model_work(self.model, self.runtime.quant, st)
        flops = sum(work.flops.values()) + work.attn_flops
        nbytes = work.weight_bytes + work.other_bytes
        hybrid = self.runtime.hybrid
        if hybrid == "layers" and self.runtime.offload_mode == "ngl":
            # in series: CPU layers, GPU layers, activations across the link
            return [
                OpCost("GPU layers", "compute", 1, t.compute_s, 0.0, 0.0, "local"),
                OpCost("CPU layers", "compute", 1, t.memory_s, 0.0, 0.0, "local"),
                OpCost("activation transfers", "comm", 1, t.fixed_s, 0.0, 0.0, "local"),
            ]
        if hybrid == "layers":  # stream: copies overlap the GPU's compute
            rest = t.seconds - t.compute_s
            return [
                OpCost("GPU layers", "compute", 1, t.compute_s, flops, nbytes, "local"),
                OpCost("weight streaming (not hidden)", "comm", 1, rest, 0.0, 0.0, "local"),
            ]
        if hybrid == "attention" and st.tokens == st.seqs and st.context > 0:  # as `forward`
            # Lamina's rotation: max(dense, attention, link)
            parts = {"GPU dense layers": t.compute_s, "offloaded attention": t.memory_s}
            parts["attention link"] = t.fixed_s
            name = max(parts, key=lambda k: parts[k])
            return [OpCost(f"{name} (the bound; the rest overlaps)", "compute", 1, t.seconds,
                           flops, nbytes, "local")]  # fmt: skip
        bound = max(t.compute_s, t.memory_s)
        rest = t.seconds - bound
        kind = "compute" if t.compute_s >= t.memory_s else "memory"
        return [
            OpCost(f"forward pass ({kind}-bound)", kind, 1, bound, flops, nbytes, "local"),
            OpCost("fixed and transfer costs", "overhead", 1, rest, 0.0, 0.0, "local"),
        ]

    def iteration(self, batch: BatchShape, breakdown: bool = False) -> IterationCost:
        """Seconds and joules of one iteration (joules from the local cost model)."""
        st = ds.batch_step(batch.decode_seqs, batch.decode_context, batch.prefill)
        t = self.forward(st)
        seconds = self.step_s(batch.decode_seqs, batch.decode_context, batch.prefill)
        joules = t.joules if t.joules > 0 else self.joules(seconds, t.compute_s)
        return IterationCost(seconds, joules, tuple(self.ops(batch)) if breakdown else ())
