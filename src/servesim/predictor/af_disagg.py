"""Attention–FFN (AF) disaggregation: attention and MoE expert layers on separate GPU pools.

MegaScale-Infer (Zhu et al., ByteDance, arXiv:2504.02263, 2025) and Janus (attention and experts
disaggregated for scalable MoE inference, 2025) put every layer's attention (with the KV cache)
on an attention pool and the routed experts on an expert pool, sized independently and possibly
on different GPU types. Each MoE layer sends the attention output of every token to its top-k
experts (dispatch, M2N) and the expert outputs back (combine, N2M). A batch is cut into m
micro-batches that ping-pong between the pools so that both work at once (MegaScale-Infer §4,
"ping-pong pipeline parallelism").

Per MoE layer and micro-batch: attention T_a (the attention pool's busiest DP rank), experts T_e
(the expert pool's busiest rank, EP degree = expert pool size), and one transfer each way T_c
(per-GPU bytes over the link between the pools; dispatch and combine use opposite directions of
full-duplex NICs, so each direction is its own resource). Derivation of the iteration time: a
micro-batch cannot start layer l+1 before its layer-l combine returns, so one layer's round trip
is R = T_a + T_e + 2·T_c; each pool (and each link direction) serves the m micro-batches of a
layer one after another, so with T_f = max(T_a, T_e, T_c) a layer repeats every
P = max(m·T_f, R). The last micro-batch starts its last layer at (L−1)·P + (m−1)·T_f and takes R
more, so

    iteration = (L−1)·P + (m−1)·T_f + R.

When m·T_f ≥ R (MegaScale-Infer's condition m·T_f ≥ 2·(T_f + T_c) with T_a ≈ T_e) this is
(T_a + T_e + 2·T_c) + T_f·(m·L − 1), the paper's iteration latency; with m = 1 it is
L·(T_a + T_e + 2·T_c), both stages in series. Balanced stages and m = 2 thus take about the max
of the two stages per micro-batch rather than their sum.

What each pool runs: the attention pool everything but the routed experts (attention, its
projections and TP all-reduce, router, norms, shared experts and dense FFN layers, LM head) with
the existing `Predictor`'s operators, spread evenly over the L MoE layers; the expert pool the
routed experts with the existing MoE pricing (and `ExpertLoad`'s busiest rank). The engine's
per-step CPU overhead is paid once per iteration. Left out: per-micro-batch kernel-launch
overheads beyond what the roofline prices, and prefill-only AF (prefill batches are priced the
same way, as MegaScale-Infer targets decode).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.iteration import (
    ACT_BYTES,
    DECODE_CTX_REF,
    MEM_POWER_SHARE,
    BatchShape,
    OpCost,
    Predictor,
)
from servesim.spec.devices import Device
from servesim.spec.links import Link
from servesim.spec.memory import (
    MemoryLayout,
    activation_reserve_bytes,
    memory_layout,
)
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel


@dataclass(frozen=True)
class AFDisagg:
    """An AF-disaggregated replica: `expert_gpus` GPUs (of `expert_device`, None: the
    deployment's device) hold the routed experts, one EP rank each; the deployment's own layout
    (tp × dp GPUs) runs attention; `microbatches` ping-pong between them over `link` (None: each
    GPU's scale-out NIC, the slower side's)."""

    expert_gpus: int
    microbatches: int = 2
    expert_device: Device | None = None
    link: Link | None = None

    def __post_init__(self) -> None:
        if self.expert_gpus < 1 or self.microbatches < 1:
            raise ServesimError("AF disaggregation needs ≥ 1 expert GPU and ≥ 1 micro-batch.")

    def label(self, attention_gpus: int) -> str:
        """Short tag such as `af8+16m2`."""
        dev = f"@{self.expert_device.name}" if self.expert_device is not None else ""
        return f"af{attention_gpus}+{self.expert_gpus}{dev}m{self.microbatches}"


@dataclass(frozen=True)
class AFBreakdown:
    """One AF iteration: per-layer, per-micro-batch stage times and how they pipeline."""

    microbatches: int
    layers: int  # MoE layers the micro-batches ping-pong through
    microbatch_tokens: int  # tokens of the largest micro-batch
    attention_s: float  # T_a
    expert_s: float  # T_e
    transfer_s: float  # T_c, each direction (dispatch = combine)
    transfer_bytes: float  # one direction, whole micro-batch, one layer
    period_s: float  # P = max(m·T_f, T_a + T_e + 2·T_c)
    overhead_s: float  # the engine's per-step CPU overhead, once
    seconds: float  # the whole iteration

    @property
    def bottleneck(self) -> str:
        """Which resource sets the pace: attention, experts, link or latency (the round trip)."""
        stages = {"attention": self.attention_s, "experts": self.expert_s, "link": self.transfer_s}
        name = max(stages, key=lambda k: stages[k])
        if self.microbatches * stages[name] < self.round_trip_s:
            return "latency"
        return name

    @property
    def round_trip_s(self) -> float:
        """One micro-batch through one layer: T_a + T_e + 2·T_c."""
        return self.attention_s + self.expert_s + 2.0 * self.transfer_s

    @property
    def sequential_s(self) -> float:
        """The same stage times with no overlap: L·m·(T_a + T_e + 2·T_c) plus the overhead."""
        return self.layers * self.microbatches * self.round_trip_s + self.overhead_s


def pipeline_s(layers: int, m: int, t_a: float, t_e: float, t_c: float) -> tuple[float, float]:
    """(iteration seconds, period) of m micro-batches ping-ponging through `layers` layers (the
    derivation is in the module docstring)."""
    t_f = max(t_a, t_e, t_c)
    trip = t_a + t_e + 2.0 * t_c
    period = max(m * t_f, trip)
    return (layers - 1) * period + (m - 1) * t_f + trip, period


def transfer_bytes(tokens: int, model: ModelSpec) -> float:
    """Bytes one direction carries for `tokens` tokens in one MoE layer: each token's hidden
    state to each of its top-k experts (dispatch), and each expert's output back (combine)."""
    return float(tokens) * model.experts_per_token * model.hidden_size * ACT_BYTES


class AFDisaggPredictor(Predictor):
    """A `Predictor` whose replica runs attention on its own layout and the routed experts on a
    separate expert pool, micro-batches ping-ponging between them (module docstring)."""

    def __init__(
        self,
        model: ModelSpec,
        device: Device,
        af: AFDisagg,
        parallel: Parallel | None = None,
        *args: object,
        **kwargs: object,
    ) -> None:
        par = parallel or Parallel()
        if not model.num_experts or not model.num_moe_layers:
            raise ServesimError(
                f"AF disaggregation moves the routed experts to their own GPUs; {model.name} "
                "has none."
            )
        if par.pp > 1 or par.ep > 1:
            raise ServesimError(
                "Under AF disaggregation the attention pool runs tp × dp GPUs with no pipeline "
                "or expert parallelism (the experts are on the expert pool); use --pp 1 --ep 1."
            )
        e = af.expert_gpus
        if e > model.num_experts or model.num_experts % e:
            raise ServesimError(
                f"{model.num_experts} experts do not split evenly over {e} expert GPUs; choose a "
                "divisor of the expert count."
            )
        super().__init__(model, device, par, *args, **kwargs)  # type: ignore[arg-type]
        self.af = af
        self.expert_device = af.expert_device or device
        # The expert pool: one EP rank per GPU (MegaScale-Infer places experts over the expert
        # nodes with EP across them), priced by the same MoE operators and expert load.
        self.experts = Predictor(
            model,
            self.expert_device,
            Parallel(tp=1, dp=e, ep=e),
            self.engine,
            self.fit,
            latency_model=self.latency_model,
            expert_load=self.expert_load,
        )
        self._expert_tab = np.zeros(0)
        self._af_cache: dict[tuple, AFBreakdown] = {}

    # ---- what the attention pool runs: everything but the routed experts ----------------
    def _moe_terms(self, tokens: np.ndarray, layers: float) -> list:
        """No routed experts here: they run on the expert pool."""
        return []

    def _uses_alltoall(self) -> bool:
        """Tokens leave each attention rank directly for the expert pool (M2N): no gather of
        every DP rank's tokens for the expert layers."""
        return True

    # ---- pools, link -------------------------------------------------------------------
    @property
    def attention_gpus(self) -> int:
        """GPUs of the attention pool (tp × dp)."""
        return self.par.tp * self.par.dp

    @property
    def num_gpus(self) -> int:
        """GPUs of the whole replica: attention pool plus expert pool."""
        return self.attention_gpus + self.af.expert_gpus

    @property
    def price_per_hour(self) -> float:
        """Rental cost of one replica, both pools, USD per hour."""
        return (
            self.attention_gpus * self.device.price_per_hour
            + self.af.expert_gpus * self.expert_device.price_per_hour
        )

    def link(self) -> Link:
        """The link each GPU reaches the other pool by: the stated one, else the slower of the
        two devices' scale-out NICs (MegaScale-Infer runs M2N over RDMA between nodes)."""
        if self.af.link is not None:
            return self.af.link
        a, b = self.device, self.expert_device
        bw = min(a.net_bw_bytes_per_s, b.net_bw_bytes_per_s)
        lat = max(a.net_latency_s, b.net_latency_s)
        return Link("nic", "ethernet", bw, lat)

    def transfer_s(self, tokens: int) -> float:
        """T_c: seconds of one direction of one layer's exchange for `tokens` tokens. Every
        attention GPU sends its 1/(tp·dp) share (TP ranks split their group's tokens, as DeepEP
        dispatch does) and every expert GPU receives its share (the busiest rank's under a
        stated expert load); the slower side sets the time."""
        if tokens <= 0:
            return 0.0
        link = self.link()
        total = transfer_bytes(tokens, self.model)
        e = self.af.expert_gpus
        share = self.experts._imbalance / e  # busiest expert rank's share of the routed copies
        per_gpu = max(total / self.attention_gpus, total * share)
        return link.latency_s + per_gpu / link.bw_bytes_per_s

    def expert_s(self, tokens: int) -> float:
        """Seconds the expert pool's busiest rank spends on `tokens` tokens' routed experts,
        all MoE layers (its EP all-to-all left out: the M2N transfer replaces it)."""
        if tokens <= 0:
            return 0.0
        if tokens >= len(self._expert_tab):
            size = max(1024, 1 << int(tokens).bit_length())
            t = np.arange(size, dtype=np.float64)
            t[0] = 1.0
            terms = self.experts._moe_terms(t, float(self.model.num_moe_layers))
            tab = sum((x.seconds for x in terms if x.kind != "comm"), np.zeros(size))
            tab[0] = 0.0
            self._expert_tab = np.asarray(tab)
        return float(self._expert_tab[tokens])

    # ---- the iteration -----------------------------------------------------------------
    def breakdown(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]] = ()
    ) -> AFBreakdown:
        """Stage times and the pipelined iteration for one batch. Decodes are cut as evenly as
        whole sequences allow, prefill chunks dealt round-robin. Unequal micro-batches pipeline
        with each resource busy for the sum of its micro-batches' times per layer (equal ones
        give the formula of the module docstring exactly)."""
        chunks = tuple(prefill)
        key = (decode_seqs, decode_context, chunks)
        hit = self._af_cache.get(key)
        if hit is not None:
            return hit
        m = max(1, min(self.af.microbatches, decode_seqs + len(chunks)))
        layers = self.model.num_moe_layers
        q, r = divmod(decode_seqs, m)
        stages = []
        for j in range(m):
            dec = q + (j < r)
            ctx = round(decode_context * dec / decode_seqs) if decode_seqs else 0
            stages.append(self._stage(dec, ctx, chunks[j::m], layers))
        s_a, s_e, s_c = (sum(st[i] for st in stages) for i in range(3))
        trips = [st[0] + st[1] + 2.0 * st[2] for st in stages]
        busiest = max(s_a, s_e, s_c)
        period = max(busiest, max(trips))
        body = (layers - 1) * period + busiest * (m - 1) / m + sum(trips) / m
        over = self.overhead_s(decode_seqs, len(chunks))
        tokens = max(st[3] for st in stages)
        out = AFBreakdown(
            m,
            layers,
            tokens,
            s_a / m,
            s_e / m,
            s_c / m,
            transfer_bytes(tokens, self.model),
            period,
            over,
            body + over,
        )
        if len(self._af_cache) > 65536:
            self._af_cache.clear()
        self._af_cache[key] = out
        return out

    @lru_cache(maxsize=65536)  # noqa: B019 - one predictor per deployment, kept for its life
    def _stage(
        self, dec: int, ctx: int, chunks: tuple[tuple[int, int], ...], layers: int
    ) -> tuple[float, float, float, int]:
        """(T_a, T_e, T_c, tokens) of one micro-batch in one MoE layer."""
        tokens = dec * self.decode_tokens + sum(n for n, _ in chunks)
        if not tokens:
            return 0.0, 0.0, 0.0, 0
        attn = Predictor.step_s(self, dec, ctx, chunks) - self.overhead_s(dec, len(chunks))
        return (
            attn / layers,
            self.expert_s(tokens) / layers,
            self.transfer_s(tokens),
            tokens,
        )

    def ops(self, batch: BatchShape) -> list[OpCost]:
        """Every operator's work in one iteration, by pool: the attention pool's operators (the
        whole batch, as the base predictor lists them), the expert pool's busiest rank over each
        micro-batch, and the dispatch and combine transfers. Their seconds are work, not the
        critical path: the pools overlap (`breakdown` gives the pipelined time)."""
        out = super().ops(batch)
        b = self.breakdown(batch.decode_seqs, batch.decode_context, batch.prefill)
        m, layers = b.microbatches, b.layers
        tokens = np.array([float(max(1, b.microbatch_tokens))])
        for term in self.experts._moe_terms(tokens, float(layers)):
            if term.kind == "comm":
                continue
            out.append(
                OpCost(
                    f"expert_pool:{term.name}",
                    term.kind,
                    round(term.calls) * m,
                    float(term.seconds[0]) * m,
                    float(term.flops[0]) * m,
                    float(term.nbytes[0]) * m,
                )
            )
        for name in ("af_dispatch", "af_combine"):
            out.append(
                OpCost(
                    name,
                    "comm",
                    layers * m,
                    b.transfer_s * layers * m,
                    0.0,
                    b.transfer_bytes * layers * m,
                    "link",
                )
            )
        return out

    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of one AF iteration (the simulator's hot call)."""
        chunks = tuple(prefill)
        if not decode_seqs and not chunks:
            return self.overhead_s(0, 0)
        return self.breakdown(decode_seqs, decode_context, chunks).seconds

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        """(c0, c1) of a decode-only step as c0 + c1 × total context: the secant through
        DECODE_CTX_REF tokens per sequence (the pipelined time is a max of affine pieces, so
        it is convex in context; the secant is exact while one resource stays the bottleneck)."""
        lo, hi = DECODE_CTX_REF
        t_lo = self.step_s(n, round(n * lo), ())
        t_hi = self.step_s(n, round(n * hi), ())
        c1 = max(0.0, (t_hi - t_lo) / (n * (hi - lo)))
        return max(0.0, t_lo - c1 * n * lo), c1

    def joules(self, seconds: float, work_s: float) -> float:
        """Both pools: the attention pool as the base predictor prices it, the expert pool at
        idle plus MEM_POWER_SHARE of its dynamic range while it runs (decode expert GEMMs at
        these batch sizes stream their weights: memory-bound)."""
        dev = self.expert_device
        dyn = (dev.max_power_w - dev.idle_power_w) * MEM_POWER_SHARE
        experts = self.af.expert_gpus * (dev.idle_power_w + dyn) * seconds
        return super().joules(seconds, work_s) + experts


def af_memory_layout(
    model: ModelSpec,
    device: Device,
    par: Parallel,
    af: AFDisagg,
    max_batched_tokens: int,
    mem_util: float,
    max_num_seqs: int = 256,
    mem_util_of_free: bool = False,
    reserve_in_fraction: bool = False,
    state_copies: int = 1,
) -> MemoryLayout:
    """The attention pool's memory (its KV cache is the replica's), after checking that the
    routed experts fit the expert pool. The attention GPUs hold no routed experts."""
    edev = af.expert_device or device
    expert_bytes = model.expert_bytes() / af.expert_gpus
    e_par = Parallel(tp=1, dp=af.expert_gpus, ep=af.expert_gpus)
    e_need = expert_bytes + activation_reserve_bytes(model, e_par, max_batched_tokens)
    if e_need > edev.mem_bytes * mem_util:
        raise ServesimError(
            f"The routed experts of {model.name} need {e_need / 1e9:.1f} GB per GPU on "
            f"{af.expert_gpus} expert GPUs but {edev.name} offers "
            f"{edev.mem_bytes * mem_util / 1e9:.1f} GB; add expert GPUs or quantise the experts."
        )
    # memory_layout counts the routed experts spread over the tp × dp GPUs; the attention
    # pool holds none, so lay it out on a device larger by that share and take it back out.
    x = model.expert_bytes() / par.num_devices
    grown = device.mem_bytes + (x if mem_util_of_free else x / mem_util)
    layout = memory_layout(
        model,
        replace(device, mem_bytes=grown),
        par,
        max_batched_tokens=max_batched_tokens,
        mem_util=mem_util,
        max_num_seqs=max_num_seqs,
        mem_util_of_free=mem_util_of_free,
        reserve_in_fraction=reserve_in_fraction,
        state_copies=state_copies,
    )
    return replace(
        layout,
        device_bytes=device.mem_bytes,
        usable_bytes=layout.usable_bytes - x,
        weight_bytes=layout.weight_bytes - x,
    )
