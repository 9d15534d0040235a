"""Iteration-time predictor: seconds and joules of one engine iteration of one replica.

The roofline per operator lives in `roofline`; this module lists the operators one iteration runs
(from the model's shapes, the batch and the parallel layout), prices each, and adds the engine's
fixed costs. The simulator calls it through a few memoised pieces (dense work by token count,
decode attention as an affine function of total context, prefill attention per chunk) so that
millions of iterations cost microseconds each; `iteration()` sums the same pieces.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from typing import Any

import numpy as np

from servesim.predictor import (
    expert_spread,
    linear_scan,
    measured_kernels,
    roofline,
    sampler,
    twin_efficiency,
)
from servesim.predictor.kernel_classes import nvlink_class
from servesim.predictor.measured_kernels import EXTRAPOLATED, PROVENANCE, ROOFLINE
from servesim.spec.devices import Device
from servesim.spec.dtypes import compute_dtype, gemm_compute_dtype, nbytes
from servesim.spec.engine_profile import (
    EngineProfile,
    fused_allreduce_max_tokens,
    fuses_allreduce_norm,
)
from servesim.spec.expert_load import ExpertLoad
from servesim.spec.memory import sglang_server_defaults
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel

ACT_BYTES = 2.0  # activations travel in bf16
# Dynamic power of a kernel that streams HBM at full bandwidth, as a share of the dynamic power of
# tensor cores at peak. HBM3 moves ~3 TB/s at a few pJ/bit (~100-150 W) while the SMs that issue
# the loads stay active, so memory-bound decode draws roughly half of the idle-to-TDP range on
# H100/A100 (Splitwise, ISCA'24, fig. 9; Samsi et al., HPEC'23: A100 decode at 250-300 W of 400 W).
MEM_POWER_SHARE = 0.5
# What prices kernels when nobody says: "auto", the measured tables where the GPU and engine
# have them and the shape is covered, the roofline (anchored to the nearest measured point)
# elsewhere; a GPU nobody measured gets the roofline alone. Measured kernels are the ground
# truth the roofline approximates; "roofline" is the choice for figures that must not move
# with the tables (both simulate at the same speed, benchmarks/speed.py).
DEFAULT_LATENCY_MODEL = "auto"
# TensorRT-LLM fused-MoE backends whose attention-DP expert layers always all-gather their
# tokens and reduce-scatter the outputs, never all-to-all: DeepGEMM's (`DeepGemmFusedMoE.
# forward_chunk`: `use_allgather = self.use_dp and self.parallel_size > 1`, finalize with
# `enable_alltoall` False) and CuTe DSL's (aiconfigurator's `_select_alltoall_kernel`, which
# mirrors the engine's per-backend `select_alltoall_method_type`: NotEnabled for both).
TRTLLM_GATHER_BACKENDS = frozenset({"deepgemm", "cutedsl", "cute_dsl"})
# The model types SGLang serves with DeepseekV2MoE (models/deepseek_v2.py and its subclasses):
# the MoE layer whose shared experts it can run on a second CUDA stream.
SGLANG_DEEPSEEK_MOE = frozenset({"deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2"})


# How tokens spread over the experts when the measured MoE tables price them. A trained router
# does not split tokens evenly; aiconfigurator-core's tables measure balanced routing and
# power laws of exponent 1.01 and 1.2 (collector: expert loads drawn from a power law), and its
# estimator prices DeepSeek-style MoE with the 1.01 power law (aiconfigurator
# sdk/config.py `workload_distribution = "power_law"`, sdk/models/deepseek.py
# `_power_law_alpha = 1.01`) for the same benchmark flow whose end-to-end rows we check.
MOE_DISTRIBUTION = "power_law_1.01"

MEASURED_CODE = 0
# Sizes an octave at which a multi-node collective is priced (then interpolated in log bytes).
MULTI_NODE_STEPS = 8
# Token counts up to this are tabulated whole (every count up to a power of two); a step with
# more (a prefill batch of many long prompts) is priced from blocks of FAR_BLOCK counts around
# it, so one 131,072-token batch does not tabulate 262,144 counts of every operator.
FAR_TOKENS = 1 << 15
FAR_BLOCK = 1 << 12
# Context per sequence (tokens) of the two decode-attention measurements a line goes through.
DECODE_CTX_REF = (128.0, 4096.0)


@lru_cache(maxsize=4096)
def busiest_share(k: int, bins: int) -> int:
    """Median of the largest count when k items go to `bins` uniformly random bins: the
    smallest m with P(every bin holds ≤ m) ≥ 1/2 (exact, by conditioning bin by bin)."""
    if k <= 0:
        return 0

    @cache
    def fits(b: int, r: int, m: int) -> float:  # P(r items in b bins all ≤ m)
        if r == 0:
            return 1.0
        if b == 1:
            return 1.0 if r <= m else 0.0
        p = 1.0 / b
        return sum(
            math.comb(r, j) * p**j * (1.0 - p) ** (r - j) * fits(b - 1, r - j, m)
            for j in range(min(m, r) + 1)
        )

    m = -(-k // bins)
    while fits(bins, k, m) < 0.5:
        m += 1
    return m


def _prov_name(prov: np.ndarray | int, i: int) -> str:
    """Provenance name of element i of a term's codes (one code may stand for all)."""
    a = np.asarray(prov)
    return PROVENANCE[int(a if a.ndim == 0 else a[i])]


def _provenance_counts(terms: list[_Term], shape: tuple[int, ...], skip: int = 0) -> dict[int, int]:
    """Tabulated operator shapes per provenance code: every token count of every term, less
    the first `skip` counts (the zero-token entry of the whole tables)."""
    counts: dict[int, int] = {}
    for term in terms:
        codes = np.broadcast_to(np.asarray(term.prov), shape)[skip:]
        for code, n in zip(*np.unique(codes, return_counts=True), strict=True):
            counts[int(code)] = counts.get(int(code), 0) + int(n)
    return counts


def _far_block(cache: dict[int, Any], tokens: int, tabulate: Callable[[np.ndarray], Any]) -> Any:
    """The block of `FAR_BLOCK` token counts holding `tokens`, tabulated by `tabulate` the
    first time it is asked for and kept in `cache` (block index -> what `tabulate` returned)."""
    block = tokens // FAR_BLOCK
    found = cache.get(block)
    if found is None:
        t = np.arange(block * FAR_BLOCK, (block + 1) * FAR_BLOCK, dtype=np.float64)
        found = cache[block] = tabulate(t)
    return found


@dataclass(frozen=True)
class BatchShape:
    """What one iteration runs: decodes (one token each) and prefill chunks.

    `decode_context` is the total number of tokens the decode sequences attend to (cached
    context plus the new token, summed over sequences). Each prefill entry is
    `(new_tokens, cached_tokens)` for one sequence.
    """

    decode_seqs: int = 0
    decode_context: int = 0
    prefill: tuple[tuple[int, int], ...] = ()

    @property
    def num_tokens(self) -> int:
        """Tokens the forward pass processes."""
        return self.decode_seqs + sum(n for n, _ in self.prefill)

    @property
    def num_seqs(self) -> int:
        """Sequences in the batch."""
        return self.decode_seqs + len(self.prefill)


@dataclass(frozen=True)
class OpCost:
    """One operator's share of an iteration: calls per iteration and seconds in total, and
    where the seconds came from (measured, interpolated, extrapolated, roofline)."""

    name: str
    kind: str
    calls: int
    seconds: float
    flops: float
    nbytes: float
    provenance: str = "roofline"


@dataclass(frozen=True)
class _Term:
    """One operator's time (and work) for an array of token counts."""

    name: str
    kind: str
    calls: float
    seconds: np.ndarray
    flops: np.ndarray
    nbytes: np.ndarray
    prov: np.ndarray | int = ROOFLINE  # provenance code per token count (or one for all)


@dataclass(frozen=True)
class IterationCost:
    """Time and energy of one iteration on the whole replica."""

    seconds: float
    joules: float
    ops: tuple[OpCost, ...] = field(default=(), compare=False)


def _no_tokens_free(
    sent: np.ndarray, priced: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """A measured exchange's (seconds, provenance) with nothing charged where no token is
    sent (the tables start at one token a rank)."""
    if priced is None:
        return None
    sec, prov = priced
    return np.where(sent > 0, sec, 0.0), prov


def _python_float(fn: Callable[..., float]) -> Callable[..., float]:
    """`fn` with its result as a Python float."""
    return lambda *args: float(fn(*args))


def _python_floats(fn: Callable[..., tuple[float, ...]]) -> Callable[..., tuple[float, ...]]:
    """`fn` with each element of its tuple result as a Python float."""
    return lambda *args: tuple(float(x) for x in fn(*args))


class Predictor:
    """Prices iterations of one replica: a model on `parallel.num_devices` devices of one type."""

    def __init__(
        self,
        model: ModelSpec,
        device: Device,
        parallel: Parallel | None = None,
        engine: EngineProfile | None = None,
        fit: roofline.KernelFit | None = None,
        power_device: Device | None = None,
        latency_model: str = DEFAULT_LATENCY_MODEL,
        expert_load: ExpertLoad | None = None,
    ) -> None:
        self.model = model
        self.device = device
        # The physical device whose peak rates and power price energy: itself, unless this
        # predictor times a slice of it (semi-PD lanes run on a share of the SMs).
        self.power_device = power_device or device
        self.par = parallel or Parallel()
        engine = engine or EngineProfile()
        if engine.cuda_graph_rule == "sglang":  # the server's default graph size here
            graph_bs = sglang_server_defaults(device, self.par, engine.version)[1]
            engine = engine.with_overrides(cuda_graph_max_seqs=graph_bs)
        self.engine = engine.on_host(device.host_time_factor)
        self.fit = fit or twin_efficiency.default_fit()
        model.check_tp(self.par.tp)
        self._ar_fuses_norm = fuses_allreduce_norm(
            engine,
            model.model_type,
            model.hidden_size,
            self.par.tp,
            self.par.dp,
            nvlink=nvlink_class(device) and self.par.tp <= device.max_devices_per_node,
        )
        # Routed tokens on the busiest EP rank over the mean (1: balanced); with a stated expert
        # popularity and placement the expert layers run at the busiest rank's load.
        self.expert_load = expert_load
        self._imbalance = 1.0
        if expert_load is not None and model.num_experts:
            self._imbalance = expert_load.busiest_share(model.num_experts, self.par.ep) * (
                self.par.ep
            )
        self.latency_model = latency_model
        # Query tokens each decode sequence runs per step: 1, or k+1 when a speculative step
        # verifies k draft tokens (`predictor.speculative`): its GEMMs and LM head see them all.
        self.decode_tokens = 1
        # Measured kernel tables of this GPU and engine (None: the roofline prices everything).
        self.kernels = measured_kernels.backend(
            latency_model,
            device,
            self.engine.name,
            self.engine.version or None,
            self.fit,
            self.engine.moe_backend,
            self.engine.mxfp4_activation,
        )
        # SGLang with DeepEP (`--moe-a2a-backend deepep`) runs the experts as DeepEP's grouped
        # GEMMs on the tokens dispatched to each rank: normal mode for batches with prefill,
        # low-latency mode for decode-only ones (`--deepep-mode auto`, the default), each
        # measured in its own tables. The tables below are the decode phase's; steps with
        # prefill are priced by a twin whose tables are the prefill phase's (`_prefill_twin`).
        self._wide_ep = (
            self.engine.name == "sglang"
            and self.engine.moe_a2a.lower().startswith("deepep")
            and self.par.ep > 1
            and bool(model.num_experts)
        )
        self._table_phase = "generation" if self._wide_ep else ""
        # A GPU without tables prices its expert layers from its twins' measured ones
        # (`twin_efficiency`; the cross-GPU correction corrects no grouped GEMM).
        self._moe_twins: list[tuple[measured_kernels.MeasuredKernels, float]] = []
        if self.kernels is None and model.num_experts:
            self._moe_twins = twin_efficiency.moe_twins(self.fit, device, self.engine)
        self._context_twin: Predictor | None = None
        # SGLang runs a DeepSeek MoE layer's shared experts beside its routed ones in
        # graph-replayed steps (`_sglang_dual_stream`); other steps take a twin without that.
        self._shared_overlap = self._sglang_dual_stream()
        self._serial: Predictor | None = None
        # SGLang's attention DP gathers an extend (prefill) batch's tokens by all-reducing a
        # zero-filled buffer of them all and all-reduces the MLP's output, where a decode
        # batch all-gathers and reduce-scatters (layers/dp_attention.py `DpPaddingMode`:
        # SUM_LEN whenever the batch extends, MAX_LEN for balanced decodes; communicator.py
        # `_scatter_hidden_states` reduce-scatters only under MAX_LEN). The expert layers of a
        # prefill iteration here are priced that way (`_group_terms(..., sum_len=True)`).
        self._sum_len_gather = self.engine.name == "sglang" and self.par.dp > 1
        # The prefill chunks of one rank's iteration run as one batched (varlen) attention call
        # a layer in every engine (vLLM's FlashAttention/FlashInfer, SGLang's ragged prefill,
        # TensorRT-LLM's context FMHA over all context requests), which fills the SMs that one
        # short prompt leaves idle. Hybrids (linear mixers) and DSA keep per-chunk prices.
        self._batched_prefill = not model.num_linear_layers and not model.is_sparse
        self._gain_memo: dict[tuple[int, int], float] = {}
        self._dense_prov: dict[int, int] = {}  # provenance code -> shapes in the whole tables
        self._attn_prov: dict[tuple, int] = {}  # attention (or GDN) shape -> provenance code
        self._eager_s = self._eager_host_s()
        self._piecewise_s = self.engine.piecewise_host_s_per_layer * self.layers_per_stage
        self._hosted = bool(self._eager_s or self._piecewise_s)  # any host time to price
        self._dense_tab: list[float] = []
        self._far: dict[int, tuple[list[float], list[float]]] = {}  # block -> (s, work)
        self._far_prov: dict[int, int] = {}  # provenance counts of the far blocks
        # expert-layer seconds by stage tokens, and by far block, for decode-style (False) and
        # SGLang extend (True) gathers
        self._group_tab: dict[bool, list[float]] = {False: [], True: []}
        self._far_group: dict[bool, dict[int, list[float]]] = {False: {}, True: {}}
        self._mn_curves: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._lm_tab: list[float] = []
        self._dyn_dense_tab: list[float] = []
        self._dyn_lm_tab: list[float] = []
        self._peak = self.power_device.peak_flops(
            gemm_compute_dtype(model.weight_dtype, self.power_device.peak_flops_per_s)
        )
        self._attn_peak = self.power_device.peak_flops(compute_dtype(model.kv_dtype))
        # The simulator's hot calls, memoised as Python floats: a numpy scalar from a table
        # lookup would make every step's arithmetic downstream numpy arithmetic (~5x slower).
        self._prefill_cache = lru_cache(maxsize=262144)(_python_float(self._prefill_attn_s))
        self._decode_cache = lru_cache(maxsize=65536)(_python_floats(self._decode_coeffs))
        self._step_cache = lru_cache(maxsize=65536)(_python_floats(self._decode_step_coeffs))
        self._step_costs_cache = lru_cache(maxsize=65536)(_python_floats(self._decode_step_costs))
        self._w_ctx: float | None = None

    # ---- shapes ---------------------------------------------------------------------------
    @property
    def layers_per_stage(self) -> int:
        """Layers on the busiest pipeline stage."""
        return math.ceil(self.model.num_layers / self.par.pp)

    @property
    def token_count_compile_s(self) -> float:
        """Host seconds a prefill forward pays the first time its server sees its token count:
        the engine's (`EngineProfile.token_count_compile`) for a model whose linear-attention
        mixers (Gated DeltaNet, KDA) normalise q and k with the kernel specialised on it; 0
        otherwise (softmax attention and Mamba2 never call it)."""
        m = self.model
        if not m.num_linear_layers or m.linear_kind not in ("gdn", "kda"):
            return 0.0
        return self.engine.token_count_compile()

    def _eager_host_s(self) -> float:
        """Host seconds to issue the busiest stage's layers without a CUDA graph: MoE layers
        at the engine's MoE figure, the others at its per-layer one, and each linear-attention
        mixer its extra."""
        e = self.engine
        moe = self._stage_fraction(self.model.num_moe_layers) if self.model.is_moe else 0.0
        per_moe = e.eager_host_s_per_layer
        if e.eager_host_s_per_moe_layer is not None:
            per_moe = e.eager_host_s_per_moe_layer
        linear = self._stage_fraction(self.model.num_linear_layers)
        return (
            e.eager_host_s_per_layer * (self.layers_per_stage - moe)
            + per_moe * moe
            + e.eager_host_s_per_linear_mixer * linear
        )

    def _stage_fraction(self, count: int) -> float:
        """Share of `count` layers that the busiest stage holds (all of them when pp = 1)."""
        return count * self.layers_per_stage / self.model.num_layers

    # ---- operator list --------------------------------------------------------------------
    def ops(self, batch: BatchShape) -> list[OpCost]:
        """Every operator of one iteration with its time, for the per-operator breakdown (under
        attention DP, the busiest rank's: its own work, and the expert layers all share)."""
        out: list[OpCost] = []
        chunks, rank_tokens, rank_seqs = self._busiest_rank(batch.decode_seqs, batch.prefill)
        if batch.num_tokens:
            t = np.array([max(1, rank_tokens)], dtype=np.float64)
            stage_tokens = batch.num_tokens + batch.decode_seqs * (self.decode_tokens - 1)
            group = self._prefill_twin() if self._wide_ep and batch.prefill else self
            sum_len = bool(batch.prefill) and self._sum_len_gather
            stage = np.array([float(stage_tokens)])
            terms = self._rank_terms(t) + group._group_terms(stage, sum_len)
            if self._graphed(batch.decode_seqs, tuple(batch.prefill)):
                terms = self._overlapped(terms)
            for term in terms:
                if not term.calls:
                    continue  # done inside another operator here (a fused all-reduce)
                out.append(
                    OpCost(
                        term.name,
                        term.kind,
                        round(term.calls),
                        float(term.seconds[0]),
                        float(term.flops[0]),
                        float(term.nbytes[0]),
                        _prov_name(term.prov, 0),
                    )
                )
            out.append(self._lm_head_op(rank_seqs))
            if self.engine.sampler_sorts_vocab:
                sort = float(self._sampler_sort_s(np.array([float(max(1, rank_seqs))]))[0])
                out.append(OpCost("topk_topp_sort", "sampler", 1, sort, 0.0, 0.0, "engine"))
        rank_batch = replace(batch, prefill=tuple(batch.prefill[i] for i in chunks))
        out += self._attention_ops(rank_batch)
        n_pre = len(chunks)
        dec_rank = -(-batch.decode_seqs // self.par.dp)
        # the host time the kernels do not hide (the iteration takes the max)
        unhidden = self.host_s(rank_tokens, n_pre, dec_rank) - sum(op.seconds for op in out)
        if unhidden > 0:
            out.append(OpCost("eager_launch", "overhead", 1, unhidden, 0.0, 0.0, "engine"))
        t_over = self._rank_overhead_s(dec_rank, n_pre)
        out.append(OpCost("framework", "overhead", 1, t_over, 0.0, 0.0, "engine"))
        pp = self.par.pp
        if pp == 1:
            return out
        # Every stage runs its share in turn: the breakdown is per iteration, all stages.
        out = [replace(op, seconds=op.seconds * pp) for op in out]
        sent = batch.num_tokens + batch.decode_seqs * (self.decode_tokens - 1)
        out.append(OpCost("pp_send", "comm", pp - 1, self.pp_send_s(sent), 0.0, 0.0))
        return out

    def _gemm(
        self,
        name: str,
        m: np.ndarray,
        n: int,
        k: int,
        calls: float,
        expert: bool = False,
        dtype: str | None = None,
    ) -> _Term:
        wdt = dtype or (self.model.expert_dtype if expert else self.model.weight_dtype)
        block = self.model.fp8_block and wdt == "fp8"
        priced = None
        if self.kernels is not None:
            priced = self.kernels.gemm(m, n, k, wdt, block, self.model.fp8_static_act)
        if priced is None:
            cdt = gemm_compute_dtype(wdt, self.device.peak_flops_per_s)
            t = roofline.gemm_np(m, n, k, cdt, self.device, self.fit, weight_dtype=wdt, block=block)
            prov: np.ndarray | int = ROOFLINE
        else:
            t, prov = priced
        flops = 2.0 * m * n * k
        nb = n * k * nbytes(wdt) + (m * k + m * n) * ACT_BYTES
        return _Term(name, "gemm", calls, t * calls, flops * calls, nb * calls, prov)

    def _elementwise(self, name: str, op: str, nbytes_moved: np.ndarray, calls: float) -> _Term:
        t = roofline.elementwise_np(nbytes_moved, self.device, self.fit, op)
        zero = np.zeros_like(nbytes_moved)
        return _Term(name, "elementwise", calls, t * calls, zero, nbytes_moved * calls)

    def _dense_terms(self, t: np.ndarray) -> list[_Term]:
        """Non-attention work per stage for each token count in `t` with every attention-DP
        rank holding `t` tokens: the rank's own work plus the shared expert layers over the
        dp·t tokens of the stage."""
        return self._rank_terms(t) + self._group_terms(t * self.par.dp)

    def _group_terms(self, tokens: np.ndarray, sum_len: bool = False) -> list[_Term]:
        """Work of the layers every device of a stage runs together over the stage's `tokens`
        (all attention-DP ranks' tokens, each counted once): routed experts and their
        collectives, and the dense FFN/shared experts when they span the DP ranks."""
        m, p = self.model, self.par
        terms: list[_Term] = []
        moe_layers = self._stage_fraction(m.num_moe_layers)
        if moe_layers:
            terms += self._moe_terms(tokens, moe_layers)
        if p.dense_tp > p.tp:
            terms += self._ffn_terms(tokens, p.dense_tp, shared=False)
        if p.shared_tp > p.tp:
            terms += self._ffn_terms(tokens, p.shared_tp, dense=False)
        group = p.tp * p.dp
        gathered = moe_layers if moe_layers and not self._uses_alltoall() else 0.0
        spans_dp = p.dp > 1 and (p.dense_tp > p.tp or gathered)
        if spans_dp:
            # The tokens of every rank meet over the tp×dp devices and leave again: TRT-LLM's
            # attention-DP MoE all-gathers the hidden states and reduce-scatters the output
            # (tensorrt_llm/_torch/modules/fused_moe: allgather + reducescatter with
            # all_rank_num_tokens); SGLang dp-attention gathers (layers/dp_attention.py
            # dp_gather) and all-reduces over the group before dp_scatter. Priced as one
            # all-gather and one reduce-scatter of the stage's hidden states per such layer.
            # TensorRT-LLM quantises an expert layer's input before it gathers it
            # (`run_post_quant_allgather = self.use_dp and self.parallel_size > 1` in its
            # CUTLASS, TRTLLM-gen and CuTe DSL MoE modules; the TRTLLM backend since PR #6794,
            # 2025-09): the gather moves the expert GEMMs' input format with the routing, the
            # reduce-scatter the bf16 output.
            dense = self._stage_fraction(m.num_dense_layers) if p.dense_tp > p.tp else 0.0
            hb = tokens * m.hidden_size * ACT_BYTES
            scatter = self._collective("reduce_scatter", hb, group)
            if sum_len:  # SGLang extend batch: two all-reduces of every rank's tokens
                full = 2.0 * self._collective("all_reduce", hb, group)
            else:
                full = self._collective("all_gather", hb, group) + scatter
            moe = full
            if gathered and self.engine.name == "trtllm":
                qb = tokens * self._moe_input_bytes_per_token()
                moe = self._collective("all_gather", qb, group) + scatter
            sec = gathered * moe + dense * full
            zero = np.zeros_like(tokens)
            terms.append(_Term("dp_gather_scatter", "comm", 2 * (gathered + dense), sec, zero, hb))
        return terms

    def _moe_input_bytes_per_token(self) -> float:
        """Bytes of one token's expert-layer input as TensorRT-LLM gathers it, with its routing
        (top-k int32 expert ids and fp32 weights): NVFP4's e2m1 values and an fp8 scale per
        16, per-tensor fp8, MXFP4 experts' MXFP8 activations (a scale per 32) where the engine
        runs them; bf16 for block-scaled fp8 (the CUTLASS and DeepGEMM backends quantise it
        after the gather) and the weight-only formats."""
        m = self.model
        fmt = m.expert_dtype
        if fmt == "fp4":
            per = 0.5 + 1.0 / 16
        elif fmt == "fp8" and not m.fp8_block:
            per = 1.0
        elif fmt == "mxfp4" and self._mxfp4_act() == "mxfp8":
            per = 1.0 + 1.0 / 32
        else:
            per = ACT_BYTES
        return m.hidden_size * per + m.experts_per_token * 8.0

    def _mxfp4_act(self) -> str:
        """The activation format this engine runs MXFP4 experts on here."""
        e = self.engine
        return measured_kernels.mxfp4_activation(e.name, self.device.name, e.mxfp4_activation)

    def _uses_alltoall(self) -> bool:
        """Whether the expert layers move tokens by all-to-all (dispatch and combine) rather
        than gathering every rank's tokens or, without attention DP, finding them already on
        every device of the TP group (the partial outputs then meet in its all-reduce).

        vLLM: only across DP ranks (`FusedMoEParallelConfig.use_all2all_kernels` is
        `dp_size > 1 and use_ep`) and only with an all-to-all kernel (`--all2all-backend`,
        `EngineProfile.moe_a2a`: deepep_*, pplx, flashinfer_*); its default
        (`allgather_reducescatter`, vllm/config/parallel.py) and `naive` (broadcasts) gather
        every rank's tokens instead. TRT-LLM: only under attention DP with moe_ep_size > top-k
        and a group inside one NVLink domain, else all-gather and reduce-scatter
        (`select_alltoall_method_type`, tensorrt_llm/_torch/modules/fused_moe/): its
        all-to-all is MNNVL's (NVLink-mapped workspaces) or DeepEP's, which the engine takes
        by itself only under TRTLLM_CAN_USE_DEEP_EP=1 (no InferenceX recipe sets it), so an
        EP group spanning nodes joined by InfiniBand gathers, unless the launch forces a
        method (`_trtllm_deepep`: the H100 DEP16 recipes force DeepEP). SGLang: only with an
        all-to-all backend (`--moe-a2a-backend deepep` and the like, `EngineProfile.moe_a2a`;
        its default "none" gathers under attention DP and otherwise finds the tokens on every
        device); DeepEP first scatters the tokens over the attention-TP ranks, so each device
        sends its 1/(tp·dp) share even at dp 1. TensorRT-LLM's DeepGEMM and CuTe DSL
        fused-MoE backends always gather (`TRTLLM_GATHER_BACKENDS`).
        """
        p = self.par
        if p.ep == 1:
            return False
        a2a = self.engine.moe_a2a.lower()
        if self.engine.name == "sglang":
            return a2a != "none"
        if p.dp == 1:
            return False
        if self.engine.name == "trtllm":
            if self._trtllm_deepep():
                return True
            if self.engine.moe_backend.lower() in TRTLLM_GATHER_BACKENDS:
                return False
            in_domain = p.tp * p.dp <= self.device.max_devices_per_node
            return p.ep > self.model.experts_per_token and in_domain
        return a2a not in ("none", "allgather_reducescatter", "naive")

    def _sglang_dual_stream(self) -> bool:
        """Whether SGLang overlaps each DeepSeek MoE layer's shared experts with its router and
        routed experts when it replays a CUDA graph. SGLang 0.5.9 `DeepseekV2MoE.forward`
        takes `forward_normal_dual_stream` (shared experts on the current stream, router,
        top-k and routed experts on `alt_stream`, joined before the all-reduce) without an
        all-to-all backend, with the shared experts not fused into the routed kernel, in
        graph capture mode; `alt_stream` exists on every CUDA device. Fusion
        (`determine_num_fused_shared_experts`) needs DeepSeek-V3's 256 routed experts and one
        shared one with EP 1, and server_args turns it off under the FlashInfer TRT-LLM MoE
        runner, which SGLang picks itself for DeepSeek-V3 in FP8 or FP4 on SM 10.x. Priced
        for one attention-DP rank (the tables' dp = 1 path)."""
        m, p, e = self.model, self.par, self.engine
        if e.name != "sglang" or m.model_type not in SGLANG_DEEPSEEK_MOE:
            return False
        if not m.num_experts or not m.shared_expert_intermediate_size:
            return False
        if self._wide_ep or e.moe_a2a.lower() != "none" or p.dp > 1 or p.pp > 1:
            return False
        if e.cuda_graph_max_seqs <= 0:
            return False
        runner = e.moe_backend.lower()
        sm100 = self.device.name.split("@")[0] in measured_kernels.SM100_GPUS
        trtllm_runner = runner == "flashinfer_trtllm" or (
            runner == "auto" and sm100 and m.expert_dtype in ("fp8", "fp4")
        )
        one_shared = m.shared_expert_intermediate_size == m.moe_intermediate_size
        fused = (
            m.model_type == "deepseek_v3"
            and m.num_experts == 256
            and one_shared
            and p.ep == 1
            and not trtllm_runner
        )
        return not fused

    def _overlapped(self, terms: list[_Term]) -> list[_Term]:
        """`terms` with the shared experts' time hidden under the router and routed experts
        as far as those last (`_sglang_dual_stream`): a layer takes max(shared, routed)."""
        if not self._shared_overlap:
            return terms
        shared = [i for i, x in enumerate(terms) if x.name.startswith("shared_")]
        routed = [
            x for x in terms if x.name in ("router", "moe_up_proj", "moe_down_proj", "moe_act")
        ]
        if not shared or not routed:
            return terms
        s = sum(terms[i].seconds for i in shared)
        r = sum(x.seconds for x in routed)
        keep = np.where(s > 0, (s - np.minimum(s, r)) / np.where(s > 0, s, 1.0), 1.0)
        out = list(terms)
        for i in shared:
            out[i] = replace(out[i], seconds=out[i].seconds * keep)
        return out

    def _serial_twin(self) -> Predictor:
        """This predictor without the dual-stream overlap, for steps SGLang runs eagerly (with
        prefill, or more sequences than its CUDA graphs hold): a shallow copy with its own
        operator tables."""
        if self._serial is None:
            self._serial = self._twin(_shared_overlap=False)
        return self._serial

    def _graphed(self, decode_seqs: int, prefill: tuple) -> bool:
        """Whether SGLang replays a CUDA graph for this step: decode only, within its graphs."""
        return not prefill and decode_seqs <= self.engine.cuda_graph_max_seqs

    def _trtllm_deepep(self) -> bool:
        """Whether TensorRT-LLM's expert layers run DeepEP because the launch forces it
        (`TRTLLM_FORCE_ALLTOALL_METHOD=DeepEP` or `DeepEPLowLatency`, `EngineProfile.moe_a2a`
        deepep or deepep_low_latency): its fused-MoE modules' `select_alltoall_method_type`
        returns a forced method before any other rule, whatever the EP group's fabric."""
        p = self.par
        forced = self.engine.name == "trtllm" and self.engine.moe_a2a.lower().startswith("deepep")
        return forced and p.dp > 1 and p.ep > 1

    def _collective(self, op: str, nbytes_moved: np.ndarray, n: int) -> np.ndarray:
        """Seconds of an NCCL collective of `nbytes_moved` (nccl-tests size) over n devices,
        hierarchical past one node (interpolated there on a fixed log grid of sizes,
        `_multi_node_curve`: the multi-node model is scalar)."""
        nb = np.asarray(nbytes_moved, dtype=np.float64)
        if n <= 1:
            return np.zeros_like(nb)
        if n <= self.device.max_devices_per_node:
            return np.asarray(roofline.collective_np(op, nb, n, self.device, self.fit))
        log_grid, vals = self._multi_node_curve(op, n)
        return np.interp(np.log(np.maximum(nb, 1.0)), log_grid, vals)

    def _multi_node_curve(self, op: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(log bytes, seconds) of a multi-node collective at MULTI_NODE_STEPS sizes an octave
        from 1 B to 1 TiB: the same grid whatever sizes are asked, so a size's price does not
        depend on the others priced with it."""
        key = (op, n)
        curve = self._mn_curves.get(key)
        if curve is None:
            sizes = np.exp2(np.arange(40 * MULTI_NODE_STEPS + 1) / MULTI_NODE_STEPS)
            vals = [roofline._collective_s(op, float(x), n, self.device, self.fit) for x in sizes]
            curve = self._mn_curves[key] = (np.log(sizes), np.asarray(vals))
        return curve

    def _ffn_terms(
        self, t: np.ndarray, dense_tp: int, dense: bool = True, shared: bool = True
    ) -> list[_Term]:
        """Dense FFN layers and/or shared experts for `t` tokens split over `dense_tp`
        devices."""
        m, h = self.model, self.model.hidden_size
        terms: list[_Term] = []
        dense_layers = self._stage_fraction(m.num_dense_layers) if dense else 0.0
        if dense_layers:
            i_tp = m.intermediate_size // dense_tp
            up = (2 if m.gated_mlp else 1) * i_tp
            terms.append(self._gemm("mlp_up_proj", t, up, h, dense_layers))
            act_bytes = 3 * t * i_tp * ACT_BYTES
            terms.append(self._elementwise("mlp_act", "act", act_bytes, dense_layers))
            terms.append(self._gemm("mlp_down_proj", t, h, i_tp, dense_layers))
        moe_layers = self._stage_fraction(m.num_moe_layers) if shared else 0.0
        if moe_layers and m.shared_expert_intermediate_size:
            s = m.shared_expert_intermediate_size // dense_tp
            terms.append(self._gemm("shared_up_proj", t, 2 * s, h, moe_layers))
            act_bytes = 3 * t * s * ACT_BYTES  # SiLU(gate)·up
            terms.append(self._elementwise("shared_act", "act", act_bytes, moe_layers))
            terms.append(self._gemm("shared_down_proj", t, h, s, moe_layers))
            if m.shared_expert_gate:  # sigmoid(x·w)·shared output: a GEMV and a scale
                # (unquantised like the router: vLLM builds it without a quant_config)
                terms.append(self._gemm("shared_gate_proj", t, 1, h, moe_layers, dtype="bf16"))
                gate_bytes = 2 * t * h * ACT_BYTES
                terms.append(self._elementwise("shared_gate_mul", "act", gate_bytes, moe_layers))
        return terms

    def _rank_terms(self, t: np.ndarray) -> list[_Term]:
        """Work each attention-DP rank runs on its own `t` tokens: projections, norms and
        residuals, the TP all-reduce, the router, and the dense FFN layers when they are
        replicated on each rank. Vectorised so the simulator tabulates every count once."""
        m, p = self.model, self.par
        tp, h = p.tp, m.hidden_size
        # Sublayers (token mixers plus MLPs): two per layer, one per Nemotron-H block.
        sub = self._stage_fraction(m.num_attention_layers + m.num_linear_layers + m.num_mlp_layers)
        layers = self._stage_fraction(m.num_attention_layers)
        adt = m.attn_weight_dtype
        hb = t * h * ACT_BYTES
        # Each sublayer's RMSNorm and residual add, except where the engine does them inside
        # the TP all-reduce that ends the sublayer (`fuses_allreduce_norm`: its own all-reduce
        # kernel, for messages within its workspace; the first layer's input norm, one call a
        # forward, is then left out too). Larger messages go to NCCL and the two run after it.
        terms = [
            self._elementwise("norms", "norm", 2 * hb, sub),
            self._elementwise("residual_add", "add", 3 * hb, sub),
        ]
        if self._ar_fuses_norm:
            unfused = t > fused_allreduce_max_tokens(self.engine, h, tp)
            terms = [
                replace(
                    x,
                    calls=sub if unfused.any() else 0.0,
                    seconds=x.seconds * unfused,
                    nbytes=x.nbytes * unfused,
                )
                for x in terms
            ]
        if m.is_mla and layers:
            nq = m.num_heads // tp
            kv_a = m.kv_lora_rank + m.qk_rope_head_dim
            if m.q_lora_rank:
                # One GEMM makes both latents in every engine (vLLM fused_qkv_a_proj, SGLang
                # fused_qkv_a_proj_with_mqa, TensorRT-LLM kv_a_proj_with_mqa), then each
                # latent has its RMSNorm (q_a_layernorm, kv_a_layernorm).
                a = m.q_lora_rank + kv_a
                terms.append(self._gemm("qkv_a_proj", t, a, h, layers, dtype=adt))
                terms.append(
                    self._gemm("q_b_proj", t, nq * m.qk_head_dim, m.q_lora_rank, layers, dtype=adt)
                )
                norm_bytes = t * (m.q_lora_rank + m.kv_lora_rank) * ACT_BYTES  # both, read+write
                terms.append(self._elementwise("latent_norms", "norm", norm_bytes, 2 * layers))
            else:
                terms.append(self._gemm("q_proj", t, nq * m.qk_head_dim, h, layers, dtype=adt))
                terms.append(self._gemm("kv_a_proj", t, kv_a, h, layers, dtype=adt))
                norm_bytes = 2 * t * m.kv_lora_rank * ACT_BYTES
                terms.append(self._elementwise("latent_norms", "norm", norm_bytes, layers))
            # Absorbed up-projections (the decode form), priced for every token.
            terms.append(
                self._gemm(
                    "k_up_proj", t, nq * m.kv_lora_rank, m.qk_nope_head_dim, layers, dtype=adt
                )
            )
            terms.append(
                self._gemm("v_up_proj", t, nq * m.v_head_dim, m.kv_lora_rank, layers, dtype=adt)
            )
            odt = m.attn_out_weight_dtype
            terms.append(self._gemm("o_proj", t, h, nq * m.v_head_dim, layers, dtype=odt))
            if m.is_sparse:
                terms += self._indexer_proj_terms(t, layers)
        elif layers:
            q_out = m.num_heads * m.head_dim // tp
            kv_out = max(1, m.num_kv_heads // tp) * m.head_dim
            gate = q_out if m.attn_output_gate else 0
            terms.append(self._gemm("qkv_proj", t, q_out + gate + 2 * kv_out, h, layers, dtype=adt))
            rope_bytes = 2 * t * (q_out + kv_out) * ACT_BYTES
            terms.append(self._elementwise("rope", "rope", rope_bytes, layers))
            if m.attn_output_gate:  # attention output × sigmoid(gate) before o_proj
                gate_bytes = 3 * t * q_out * ACT_BYTES
                terms.append(self._elementwise("attn_gate", "act", gate_bytes, layers))
            terms.append(self._gemm("o_proj", t, h, q_out, layers, dtype=m.attn_out_weight_dtype))
        if m.num_linear_layers:
            terms += self._linear_proj_terms(t, self._stage_fraction(m.num_linear_layers))
        if p.dense_tp == tp or p.shared_tp == tp:
            terms += self._ffn_terms(t, tp, dense=p.dense_tp == tp, shared=p.shared_tp == tp)
        moe_layers = self._stage_fraction(m.num_moe_layers)
        if moe_layers:
            # The router stays unquantised in every engine whatever the checkpoint: vLLM's
            # GateLinear/ReplicatedLinear without a quant_config, SGLang's MoEGate and
            # TensorRT-LLM's DeepseekV3Gate bf16 weights (dsv3_router_gemm), and quantisers
            # leave `mlp.gate` out; an fp8/fp4 GEMM table would price it as a quantised GEMM.
            terms.append(self._gemm("router", t, m.num_experts, h, moe_layers, dtype="bf16"))
        if tp > 1:
            impl = self.engine.allreduce_impl
            priced = self.kernels.allreduce(hb, tp, impl) if self.kernels is not None else None
            if priced is None:
                ar, prov = roofline.allreduce_np(hb, tp, self.device, self.fit, impl=impl), ROOFLINE
            else:
                ar, prov = priced
            zero = np.zeros_like(t)
            terms.append(_Term("tp_allreduce", "comm", sub, sub * ar, zero, hb, prov))
        return terms

    # ---- hybrid and sparse-attention layers: operator listing ---------------------------
    def _linear_proj_terms(self, t: np.ndarray, layers: float) -> list[_Term]:
        """Projections, short convolution and gated norm of the linear-attention/SSM layers
        (their recurrence is priced per sequence with the attention: `_mixer_*_parts`)."""
        m, tp, h = self.model, self.par.tp, self.model.hidden_size
        adt = m.attn_weight_dtype
        nk = max(1, m.linear_num_k_heads // tp)
        nv = m.linear_num_v_heads // tp
        dk, dv = m.linear_k_head_dim, m.linear_v_head_dim
        terms: list[_Term] = []
        if m.linear_kind == "gdn":  # q, k, v and output gate z; beta and decay per v head
            # are a GEMM of their own in every engine (in_proj_qkvz and in_proj_ba: vLLM,
            # SGLang and TensorRT-LLM's Qwen3-Next/Qwen3.5 layers)
            in_n = 2 * nk * dk + 2 * nv * dv
            terms.append(self._gemm("linear_ba_proj", t, 2 * nv, h, layers, dtype=adt))
        elif m.linear_kind == "kda":  # q, k, v and beta; decay and output gate are low rank
            in_n = 3 * nv * dv + nv
            terms.append(self._gemm("linear_gate_a_proj", t, 2 * dk, h, layers, dtype=adt))
            terms.append(self._gemm("linear_gate_b_proj", t, 2 * nv * dv, dk, layers, dtype=adt))
        else:  # mamba2: z, x, B, C and dt
            in_n = 2 * nv * dv + 2 * nk * dk + nv
        terms.append(self._gemm("linear_in_proj", t, in_n, h, layers, dtype=adt))
        conv_dim = 2 * nk * dk + nv * dv
        conv_bytes = 2 * t * conv_dim * ACT_BYTES
        terms.append(self._elementwise("linear_conv", "act", conv_bytes, layers))
        terms.append(self._elementwise("linear_norm", "norm", 3 * t * nv * dv * ACT_BYTES, layers))
        terms.append(self._gemm("linear_out_proj", t, h, nv * dv, layers, dtype=adt))
        return terms

    def _indexer_proj_terms(self, t: np.ndarray, layers: float) -> list[_Term]:
        """The DSA indexer's projections (replicated on every TP rank, as engines run them)."""
        m, h = self.model, self.model.hidden_size
        adt = m.attn_weight_dtype
        q_in = m.q_lora_rank or h
        nd = m.index_n_heads * m.index_head_dim
        return [
            self._gemm("indexer_q_proj", t, nd, q_in, layers, dtype=adt),
            self._gemm("indexer_k_proj", t, m.index_head_dim, h, layers, dtype=adt),
            self._gemm("indexer_weights_proj", t, m.index_n_heads, h, layers, dtype=adt),
        ]

    def _stream_s(self, flops: float, nbytes_moved: float, dtype: str) -> float:
        """A memory-streaming kernel: its bytes at the elementwise bandwidth or its FLOPs at the
        peak rate of `dtype`, whichever takes longer."""
        t_mem = float(roofline.elementwise_np(nbytes_moved, self.device, self.fit))
        return max(t_mem, flops / self.device.peak_flops(dtype))

    def _index_dtype(self) -> str:
        """The indexer's logits run in FP8 where the device has FP8 tensor cores."""
        return "fp8" if "fp8" in self.device.peak_flops_per_s else "bf16"

    def _linear_state_bytes(self) -> tuple[float, int, int]:
        """(state bytes per sequence per linear layer on one device, v heads and conv channels
        per device)."""
        m = self.model
        shards = min(self.par.tp, m.linear_num_v_heads)
        ssm, conv = m.state_values_per_layer()
        state = (ssm * nbytes(m.state_dtype) + conv * 2.0) / shards
        return state, m.linear_num_v_heads // shards, m.linear_conv_dim // shards

    def _mixer_decode_parts(
        self, seqs_rank: int, queries: int = 1, verify: bool = False
    ) -> list[tuple[str, str, float, float, int]]:
        """(name, kind, a, b, provenance) of the per-sequence work outside softmax attention in
        a decode step of `queries` tokens per sequence, seconds = a + b × total context: the
        linear layers' state update (each sequence reads its state once and writes it after
        every token: a verify pass keeps the state at each draft position to roll back to,
        SGLang's `intermediate_ssm_state_cache`, vLLM's per-token state slots; Gated
        DeltaNet's from the measured tables where they hold the head layout, one token
        anchoring the rest) and the DSA indexer (every query's logits against every cached
        key, the keys read once). `verify`: a speculative verify pass, after which the engine
        may copy each sequence's accepted state into place (`EngineProfile.
        spec_state_copy_passes`)."""
        m, dev = self.model, self.device
        parts: list[tuple[str, str, float, float, int]] = []
        if m.num_linear_layers:
            state, nv, conv = self._linear_state_bytes()
            ssm_per_dev = nv * m.linear_k_head_dim * m.linear_v_head_dim
            io = (conv + nv * m.linear_v_head_dim) * ACT_BYTES

            def scan(seqs: float, q: int = 1) -> float:
                # decay, rank-1 update and read-out: ~3 multiply-adds per state value, in fp32
                moved = seqs * ((1 + q) * state + q * io)
                return self._stream_s(6.0 * ssm_per_dev * seqs * q, moved, "fp32")

            t, prov = self._measured_gdn(seqs_rank, 1, True, lambda p: scan(p[0]))
            if t is None:
                t = scan(seqs_rank)
            if queries > 1:  # the one-token kernel, scaled as the roofline scales it
                t *= scan(seqs_rank, queries) / scan(seqs_rank)
                prov = max(prov, EXTRAPOLATED)
            parts.append(
                (
                    "linear_scan_decode",
                    "linear_attention",
                    self._stage_fraction(m.num_linear_layers) * t,
                    0.0,
                    prov,
                )
            )
            passes = self.engine.spec_state_copy_passes() if verify and queries > 1 else 0
            if passes:  # every linear layer's accepted state at once, `passes` times over
                moved = passes * seqs_rank * state * self._stage_fraction(m.num_linear_layers)
                parts.append(
                    ("linear_state_accept", "state_copy", self._stream_s(0.0, moved, "fp32"), 0.0,
                     ROOFLINE)
                )  # fmt: skip
        if m.is_sparse:
            hd = m.index_n_heads * m.index_head_dim
            keys = m.index_bytes_per_token_per_layer()
            per_tok = keys + 8.0 * queries  # the key, each query's fp32 logit out and in
            idt = self._index_dtype()

            def at(ctx: float) -> float:
                nb = queries * seqs_rank * hd * ACT_BYTES + ctx * per_tok
                return max(
                    float(roofline.elementwise_np(nb, dev, self.fit)),
                    2.0 * hd * ctx * queries / dev.peak_flops(idt),
                )

            ref = 1024.0 * seqs_rank
            layers = self._stage_fraction(m.num_full_attention_layers)
            a = layers * at(0.0)
            b = layers * (at(ref) - at(0.0)) / ref / self.par.dp
            parts.append(("indexer_decode", "indexer", a, b, ROOFLINE))
        return parts

    def _measured_gdn(
        self, batch: int, tokens: int, decode: bool, roof: Callable[[np.ndarray], float]
    ) -> tuple[float | None, int]:
        """(seconds, provenance) of one Gated DeltaNet layer's recurrence from the measured
        tables, or (None, ROOFLINE) where they do not hold this model's head layout per device.
        `roof([batch, tokens])` is the roofline of the same kernel, anchoring points outside
        the grid."""
        m = self.model
        if self.kernels is None or m.linear_kind != "gdn":
            return None, ROOFLINE
        heads = (
            max(1, m.linear_num_k_heads // self.par.tp),
            m.linear_num_v_heads // self.par.tp,
            m.linear_k_head_dim,
            m.linear_v_head_dim,
        )

        def roof_np(p: np.ndarray) -> np.ndarray:
            return np.array([roof(row) for row in p], dtype=np.float64)

        priced = self.kernels.gdn(batch, tokens, heads, decode, roof_np)
        if priced is None:
            return None, ROOFLINE
        self._attn_prov[("gdn", decode, batch, tokens)] = priced[1]
        return priced

    def _mixer_prefill_parts(
        self, new_tokens: int, cached_tokens: int
    ) -> list[tuple[str, str, float, int]]:
        """(name, kind, seconds, provenance) of one sequence's prefill chunk outside softmax
        attention: the chunked scan of the linear layers (Gated DeltaNet's from the measured
        tables where they hold the head layout, else by `linear_scan`, chunk by chunk; Mamba2's
        and KDA's chunk-local matmuls plus a state pass per chunk, priced as a GEMM of the same
        FLOPs, and the state read and written once) and the DSA indexer (logits of every new
        token against every cached key, then a top-k pass)."""
        m, dev, fit = self.model, self.device, self.fit
        parts: list[tuple[str, str, float, int]] = []
        if new_tokens <= 0:
            return parts
        if m.num_linear_layers:
            state, nv, _ = self._linear_state_bytes()
            c, dk, dv = m.linear_chunk, m.linear_k_head_dim, m.linear_v_head_dim
            if m.linear_kind == "mamba2":  # SSD: C·Bᵀ, its product with x; state in and out
                per_tok_head = 2.0 * (c * (dk + dv) + 2 * dk * dv)
            else:  # delta rule: QKᵀ, KKᵀ, A·V, T·V in the chunk; Q·S, W·S, Kᵀ·U across chunks
                per_tok_head = 2.0 * (c * (2 * dk + 2 * dv) + 3 * dk * dv)
            k_eq = math.ceil(per_tok_head / (2.0 * dv))

            def scan(tokens: float) -> float:
                if m.linear_kind == "gdn":  # latency-bound chunk by chunk (`linear_scan`)
                    return linear_scan.gdn_prefill_s(tokens, nv, dk, dv, c, dev)
                t = roofline.gemm_s(max(1, round(tokens)), nv * dv, k_eq, "bf16", dev, fit)
                return t + roofline.elementwise_s(2 * state, dev, fit)

            t, prov = self._measured_gdn(1, new_tokens, False, lambda p: scan(p[1]))
            if t is None:
                t = scan(new_tokens)
            parts.append(
                (
                    "linear_scan_prefill",
                    "linear_attention",
                    self._stage_fraction(m.num_linear_layers) * t,
                    prov,
                )
            )
        if m.is_sparse:
            idt = self._index_dtype()
            ctx = cached_tokens + (new_tokens + 1) / 2.0  # keys each new token sees, on average
            hd = m.index_n_heads * m.index_head_dim
            t = roofline.gemm_s(new_tokens, math.ceil(ctx), hd, idt, dev, fit, weight_dtype=idt)
            t += roofline.elementwise_s(4.0 * new_tokens * ctx, dev, fit)  # top-k over logits
            parts.append(
                (
                    "indexer_prefill",
                    "indexer",
                    self._stage_fraction(m.num_full_attention_layers) * t,
                    ROOFLINE,
                )
            )
        return parts

    def _moe_terms(self, tokens: np.ndarray, layers: float) -> list[_Term]:
        """Routed experts over the stage's `tokens` (each counted once): each of the ep groups
        holds n/ep experts, each split over the group's moe_tp devices."""
        m, p = self.model, self.par
        h, k_top = m.hidden_size, m.experts_per_token
        terms: list[_Term] = []
        zero = np.zeros_like(tokens)
        routed = tokens / p.ep
        if self.expert_load is not None:  # the busiest EP rank's routed tokens (whole ones)
            routed = np.ceil(routed * self._imbalance - 1e-9)
        if self._uses_alltoall():
            # Each device dispatches its 1/(tp·dp) share of the stage's tokens and combines
            # their outputs (bf16). TensorRT-LLM dispatches them in the expert GEMMs' input
            # format with their routing (`post_quant_comm = run_post_quant_allgather or
            # self.enable_alltoall`: the same quantisation as its all-gather).
            copies = tokens / (p.tp * p.dp) * k_top * self._imbalance
            a2a_bytes = copies * h * ACT_BYTES
            deepep = self._wide_ep or self._trtllm_deepep()
            measured = self._deepep_s(copies / k_top) if deepep else None
            if measured is not None:
                sec, prov = measured
                terms.append(
                    _Term("ep_alltoall", "comm", 2 * layers, layers * sec, zero, a2a_bytes, prov)
                )
            elif (nvlink := self._trtllm_nvlink_a2a(copies / k_top)) is not None:
                sec, prov = nvlink
                terms.append(
                    _Term("ep_alltoall", "comm", 2 * layers, layers * sec, zero, a2a_bytes, prov)
                )
            else:
                a2a = self._collective("alltoall", a2a_bytes, p.ep)
                sent = a2a
                if self.engine.name == "trtllm":
                    sent = self._collective(
                        "alltoall", copies * self._moe_input_bytes_per_token(), p.ep
                    )
                terms.append(
                    _Term("ep_alltoall", "comm", 2 * layers, layers * (sent + a2a), zero, a2a_bytes)
                )
        expert_terms = self._expert_terms(routed, layers)
        # The measured layer over the roofline's, both at the tables' routing; a stated
        # popularity keeps the roofline's extra load of its busiest rank on top of that ratio.
        # (The tables' own "balanced" rows are no base: in the block-scaled fp8 tables they run
        # slower than the power-law ones, H200 DeepSeek-V3 EP 8 at 6,000 tokens 4.5 against
        # 2.6 ms, so they do not measure the same kernel path.)
        base = (
            expert_terms if self.expert_load is None else self._expert_terms(tokens / p.ep, layers)
        )
        priced = self._measured_scale(tokens, base)
        if priced is None:
            return terms + expert_terms
        scale, prov = priced
        return terms + [replace(t, seconds=t.seconds * scale, prov=prov) for t in expert_terms]

    def _trtllm_nvlink_a2a(self, sent: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(seconds, provenance) of TensorRT-LLM's NVLink all-to-all of one expert layer when
        each device sends `sent` tokens (an array), from the measured table (GB200, TensorRT-LLM
        1.2.0rc6): WideEP runs the two-sided kernel, the other backends the one-sided one
        (`select_alltoall_method_type`, which aiconfigurator's `_select_alltoall_kernel`
        mirrors), its dispatch in the expert GEMMs' input format. None where no table holds
        the layout and format, or on the roofline latency model."""
        if self.kernels is None or self.engine.name != "trtllm":
            return None
        m, p = self.model, self.par
        h, k_top = m.hidden_size, m.experts_per_token
        wide = self.engine.moe_backend.lower() == "wideep"
        kernel = "NVLinkTwoSided" if wide else "NVLinkOneSided"
        per_token = self._moe_input_bytes_per_token()
        fmt = (per_token - k_top * 8.0) / h  # bytes a hidden value, without the routing
        dtype = "nvfp4" if fmt < 1.0 else "fp8" if fmt < ACT_BYTES else "bfloat16"

        sent = np.asarray(sent, dtype=np.float64)
        layout = (h, m.num_experts, k_top)
        roof = self._a2a_roof(per_token)
        return _no_tokens_free(
            sent, self.kernels.trtllm_alltoall(kernel, dtype, sent, p.ep, layout, roof)
        )

    def _a2a_roof(self, dispatch_bytes: float) -> Callable[[np.ndarray], np.ndarray]:
        """The roofline all-to-all of one expert layer at points (EP ranks, tokens a rank):
        a dispatch of `dispatch_bytes` a routed copy and a bf16 combine. It carries the
        measured exchange tables beyond their grids (`anchored`)."""
        h, k_top = self.model.hidden_size, self.model.experts_per_token

        def roof(pts: np.ndarray) -> np.ndarray:
            out = np.empty(len(pts))
            for r in np.unique(pts[:, 0]):
                sel = pts[:, 0] == r
                copies = pts[sel, 1] * k_top
                out[sel] = self._collective("alltoall", copies * dispatch_bytes, round(r))
                out[sel] += self._collective("alltoall", copies * h * ACT_BYTES, round(r))
            return out

        return roof

    def _deepep_s(self, sent: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(seconds, provenance) of one DeepEP dispatch plus combine when each device sends
        `sent` tokens (an array), from the measured DeepEP tables: SGLang's normal mode in a
        step with prefill and low latency in a decode-only one (`_table_phase`), TensorRT-LLM's
        forced mode in both; None without a table of this expert layout, or with the
        roofline's all-to-all (`latency_model`)."""
        if self.kernels is None:
            return None
        m, p = self.model, self.par
        h, k_top = m.hidden_size, m.experts_per_token
        if self.engine.name == "trtllm":  # the mode the launch forced, in every phase
            mode = "low_latency" if "low" in self.engine.moe_a2a.lower() else "normal"
        else:  # SGLang's `--deepep-mode auto`: normal with prefill, low latency to decode
            mode = "normal" if self._table_phase == "context" else "low_latency"
        sent = np.asarray(sent, dtype=np.float64)
        roof = self._a2a_roof(h * ACT_BYTES)  # DeepEP moves bf16 both ways here
        return _no_tokens_free(
            sent, self.kernels.deepep(mode, sent, p.ep, (h, m.num_experts, k_top), roof)
        )

    def _expert_terms(self, routed: np.ndarray, layers: float) -> list[_Term]:
        """The roofline's expert GEMMs and activation when each EP rank routes `routed` tokens:
        the distinct experts they hit (uniform routing) and rows per expert."""
        m, p = self.model, self.par
        h, k_top = m.hidden_size, m.experts_per_token
        experts = max(1, m.num_experts // p.ep)
        width = m.moe_intermediate_size // p.moe_tp
        frac = min(1.0, k_top / experts)
        hit = np.maximum(experts * (1.0 - (1.0 - frac) ** routed), 1e-9)
        # Each of a token's k choices lands on this rank with probability 1/EP however few
        # experts the rank holds: T·k/EP rows over the experts hit.
        rows = routed * k_top / hit
        up = (2 if m.gated_mlp else 1) * width
        cdt = gemm_compute_dtype(m.expert_dtype, self.device.peak_flops_per_s)
        wdt = m.expert_dtype
        expert_terms = []
        for name, n, k in (("moe_up_proj", up, h), ("moe_down_proj", h, width)):
            sec = roofline.gemm_np(rows, n, k, cdt, self.device, self.fit, wdt, groups=hit)
            flops = 2.0 * routed * k_top * n * k
            nb = hit * n * k * nbytes(wdt)
            expert_terms.append(
                _Term(name, "moe_gemm", layers, sec * layers, flops * layers, nb * layers)
            )
        act_bytes = 3 * routed * k_top * width * ACT_BYTES
        expert_terms.append(self._elementwise("moe_act", "act", act_bytes, layers))
        return expert_terms

    def _measured_scale(
        self, tokens: np.ndarray, expert_terms: list[_Term]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(measured fused MoE layer time over the roofline's expert terms, provenance) per
        token count, tokens routed as `MOE_DISTRIBUTION`; None without a table for the layer.
        Up, down and activation share the measured time as the roofline shares it."""
        m, p = self.model, self.par
        layout = (
            m.hidden_size,
            m.moe_intermediate_size,
            m.experts_per_token,
            m.num_experts,
            p.moe_tp,
            p.ep,
        )
        block = m.fp8_block and m.expert_dtype == "fp8"
        if self.kernels is None:
            return self._twin_scale(tokens, layout, block, expert_terms)
        priced = self.kernels.moe(
            tokens, layout, m.expert_dtype, m.gated_mlp, MOE_DISTRIBUTION, block, self._table_phase
        )
        if priced is None:
            return None
        sec, prov = priced
        few = self._few_token_layers(np.asarray(tokens, dtype=float), layout, block)
        if few is not None:
            mask, even_sec, even_prov = few
            sec, prov = np.where(mask, even_sec, sec), np.where(mask, even_prov, prov)
        roof = sum(term.seconds for term in expert_terms)
        return sec * expert_terms[0].calls / roof, prov

    def _twin_scale(
        self,
        tokens: np.ndarray,
        layout: tuple[int, int, int, int, int, int],
        block: bool,
        expert_terms: list[_Term],
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(this GPU's expert layer over the roofline's expert terms, provenance) per token
        count from its twins' measured layers: each twin's measured time over its own roofline
        (`moe_roofline_np`), carried to this GPU (`twin_efficiency.carried`: the excess over the
        roofline stays) and pooled as `twin_efficiency` pools efficiencies (the learnt
        correction takes no grouped GEMM: 0), times this GPU's roofline; None without twins."""
        m = self.model
        tok = np.asarray(tokens, dtype=float)
        rows = np.column_stack([tok, *(np.full(len(tok), float(x)) for x in layout)])
        phys = roofline.physical_fit()
        own = measured_kernels.moe_roofline_np(rows, m.gated_mlp, m.expert_dtype, self.device, phys)
        parts = []
        for kernels, a in self._moe_twins:
            priced = kernels.moe(
                tok, layout, m.expert_dtype, m.gated_mlp, MOE_DISTRIBUTION, block, self._table_phase
            )
            if priced is None:
                continue
            roof = measured_kernels.moe_roofline_np(
                rows, m.gated_mlp, m.expert_dtype, kernels.device, phys
            )
            eff = twin_efficiency.carried(np.log(priced[0] / roof), roof / own, a)
            parts.append((eff, np.full(len(tok), a)))
        if not parts:
            return None
        eff = twin_efficiency.pooled(np.zeros(len(tok)), parts)
        roof = sum(term.seconds for term in expert_terms)
        return own * np.exp(eff) * expert_terms[0].calls / roof, np.full(len(tok), ROOFLINE)

    def _few_token_layers(
        self, tokens: np.ndarray, layout: tuple[int, ...], block: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(mask, seconds, provenance) for expert layers run on few tokens under expert
        parallelism (tokens × top-k ≤ experts): weight-bound, they wait for the rank running the
        most distinct experts (`expert_spread`), priced as the balanced rows at the token count
        that puts that many experts on every rank; None where no token count is that few."""
        m, p = self.model, self.par
        if p.ep <= 1 or not m.num_experts or self.kernels is None:
            return None
        mask = (tokens >= 1) & (tokens * m.experts_per_token <= m.num_experts)
        if not mask.any():
            return None
        busiest = [
            expert_spread.busiest_rank_experts(
                m.num_experts,
                m.experts_per_token,
                m.expert_groups,
                m.expert_groups_per_token,
                p.ep,
                round(float(t)),
            )
            for t in tokens[mask]
        ]
        eff = np.asarray(busiest) * p.ep / m.experts_per_token
        even = self.kernels.moe(
            eff, layout, m.expert_dtype, m.gated_mlp, "balanced", block, self._table_phase
        )
        if even is None:
            return None
        sec, prov = np.zeros(len(tokens)), np.zeros(len(tokens), dtype=even[1].dtype)
        sec[mask], prov[mask] = even
        return mask, sec, prov

    def _sampler_sort_s(self, rows: np.ndarray) -> np.ndarray:
        """Seconds per pipeline stage of the sampler's sort-based top-k/top-p filter over each
        count of a rank's sampled rows (`EngineProfile.sampler_sorts_vocab`; zeros otherwise).
        Every TP rank filters the whole vocabulary, so TP does not divide it; the last stage
        alone samples, so an iteration through the pp stages holds it once."""
        if not self.engine.sampler_sorts_vocab:
            return np.zeros(len(rows))
        return sampler.sort_filter_s(rows, self.model.vocab_size, self.device) / self.par.pp

    def _lm_head_op(self, rank_seqs: int) -> OpCost:
        """The LM head runs on the last token of every sequence of a rank that samples (its
        gathers, under a vocabulary split across attention-DP ranks, included)."""
        terms = self._lm_head_terms(np.array([float(max(1, rank_seqs))]))
        return OpCost(
            "lm_head",
            "gemm",
            1,
            float(sum(x.seconds[0] for x in terms)),
            float(sum(x.flops[0] for x in terms)),
            float(sum(x.nbytes[0] for x in terms)),
            _prov_name(terms[0].prov, 0),
        )

    def _lm_split(self) -> str:
        """How the output head splits its vocabulary here (`EngineProfile.lm_head_split` with
        the engine's default resolved): over the TP group without attention DP."""
        if self.par.dp <= 1:
            return "attention_tp"
        if self.engine.lm_head_split:
            return self.engine.lm_head_split
        return "world" if self.engine.name == "sglang" else "attention_tp"

    def _lm_head_terms(self, t: np.ndarray) -> list[_Term]:
        """The output head over `t` rows on every rank (each attention-DP rank at t rows), in
        the checkpoint's head format, split as the engine splits it (`EngineProfile.
        lm_head_split`): its GEMM and, across DP ranks, the gather of the rows into the split
        and of the logits back out of it (bf16, NCCL all-gathers)."""
        m, p = self.model, self.par
        v, h, fmt = m.vocab_size, m.hidden_size, m.lm_head_dtype
        split = self._lm_split()
        if split == "attention_tp":
            return [self._gemm("lm_head", t, v // p.tp, h, 1.0, dtype=fmt)]
        if split == "world":  # every DP rank's rows meet over the whole TP group
            sizes = np.full(t.shape, float(p.dp))
        else:  # "adp_tp": 256 // rows rounded up to a power of two, at most a node
            raw = np.maximum(256 // np.maximum(t, 1.0), 1.0)
            sizes = np.minimum(np.exp2(np.ceil(np.log2(raw))), min(self.device.host_gpus, p.dp))
        seconds, flops, nbytes_moved = np.zeros_like(t), np.zeros_like(t), np.zeros_like(t)
        prov: np.ndarray = np.full(t.shape, ROOFLINE)
        comm = np.zeros_like(t)
        for size in np.unique(sizes):
            at = sizes == size
            k = int(size)
            rows = t * k
            g = self._gemm("lm_head", rows, v // (p.tp * k), h, 1.0, dtype=fmt)
            seconds = np.where(at, g.seconds, seconds)
            flops = np.where(at, g.flops, flops)
            nbytes_moved = np.where(at, g.nbytes, nbytes_moved)
            prov = np.where(at, np.broadcast_to(np.asarray(g.prov), t.shape), prov)
            if k * p.tp > 1:
                n = k * p.tp
                gather = self._collective("all_gather", rows * h * ACT_BYTES, n)
                gather = gather + self._collective("all_gather", rows * v * ACT_BYTES, n)
                comm = np.where(at, gather, comm)
        zero = np.zeros_like(t)
        return [
            _Term("lm_head", "gemm", 1.0, seconds, flops, nbytes_moved, prov),
            _Term("lm_head_gather", "comm", 1.0, comm, zero, zero),
        ]

    def _attn_heads(self) -> tuple[int, int, int, int, bool]:
        """(q heads, kv heads, qk dim, v dim, latent) per device for the attention kernels."""
        m, tp = self.model, self.par.tp
        if m.is_mla:
            return m.num_heads // tp, 1, m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank, True
        return m.num_heads // tp, max(1, m.num_kv_heads // tp), m.head_dim, m.head_dim, False

    def _attention_ops(self, batch: BatchShape) -> list[OpCost]:
        ops: list[OpCost] = []
        layers = self._stage_fraction(self.model.num_attention_layers)
        calls = round(layers)
        if batch.decode_seqs:
            a, b = self.decode_coeffs(batch.decode_seqs)
            t = a + b * batch.decode_context
            prov = PROVENANCE[self._attn_prov.get((batch.decode_seqs,), ROOFLINE)]
            seqs_rank = math.ceil(batch.decode_seqs / self.par.dp)
            extra = [
                OpCost(
                    name,
                    kind,
                    self._part_calls(kind),
                    pa + pb * batch.decode_context,
                    0.0,
                    0.0,
                    PROVENANCE[code],
                )
                for name, kind, pa, pb, code in self._mixer_decode_parts(
                    seqs_rank, self.decode_tokens, verify=True
                )
            ]
            t -= sum(op.seconds for op in extra)
            ops.append(OpCost("attn_decode", "attention", calls, t, 0.0, 0.0, prov))
            ops += extra
        gain = self._chunks_gain(batch.prefill)
        for new, cached in batch.prefill:
            t = self.prefill_attn_s(new, cached) * gain
            prov = PROVENANCE[self._attn_prov.get((new, cached), ROOFLINE)]
            extra = [
                OpCost(name, kind, self._part_calls(kind), sec, 0.0, 0.0, PROVENANCE[code])
                for name, kind, sec, code in self._mixer_prefill_parts(new, cached)
            ]
            t -= sum(op.seconds for op in extra)
            ops.append(OpCost("attn_prefill", "attention", calls, t, 0.0, 0.0, prov))
            ops += extra
        return ops

    def _part_calls(self, kind: str) -> int:
        """Kernel calls per iteration of a per-sequence part: one per linear or DSA layer."""
        m = self.model
        if kind == "state_copy":  # its kernels cover every layer at once
            return self.engine.spec_state_copy_passes()
        count = m.num_linear_layers if kind == "linear_attention" else m.num_full_attention_layers
        return round(self._stage_fraction(count))

    # ---- memoised pieces the simulator uses ----------------------------------------------
    def dense_s(self, tokens: int, seqs: int, extend: bool = False) -> float:
        """Seconds of all non-attention work for `tokens` tokens from `seqs` sequences spread
        evenly over the attention-DP ranks (`extend`: of an iteration with prefill tokens)."""
        dp = self.par.dp
        rank = self._rank_dense_s(-(-tokens // dp), -(-seqs // dp))
        sum_len = extend and self._sum_len_gather
        return rank + (self._group_s(tokens, sum_len) if dp > 1 and tokens else 0.0)

    def _grow_tables(self, need: int) -> None:
        """Tabulate dense and LM-head time (and busy work) for every count up to a power of two
        ≥ need."""
        size = max(1024, 1 << int(need).bit_length())
        t = np.arange(size, dtype=np.float64)
        t[0] = 1.0
        dense, dyn, terms = self._dense_arrays(t)
        dense[0] = 0.0
        lm_terms = self._lm_head_terms(t)
        sort = self._sampler_sort_s(t)
        lm = sum(x.seconds for x in lm_terms) + sort
        lm[0] = 0.0
        dyn[0] = 0.0
        head_work = sum(self._work_s(x) for x in lm_terms)
        dyn_lm = head_work + MEM_POWER_SHARE * sort  # a sort streams HBM
        dyn_lm[0] = 0.0
        self._dense_prov = _provenance_counts([*terms, lm_terms[0]], t.shape, skip=1)
        self._dense_tab = dense.tolist()
        self._lm_tab = lm.tolist()
        self._dyn_dense_tab = dyn.tolist()
        self._dyn_lm_tab = dyn_lm.tolist()

    def _dense_arrays(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[_Term]]:
        """(seconds, busy work, terms) of a rank's non-attention work at each token count in
        `t`. Time: a rank's own work (plus the expert layers when one rank is the whole
        stage); busy work: the expert layers' share of each device with every rank at t."""
        rank_terms = self._rank_terms(t)
        terms = rank_terms + self._group_terms(t * self.par.dp)
        timed = self._overlapped(terms) if self.par.dp == 1 else rank_terms
        dense = sum(term.seconds for term in timed)
        dyn = sum(self._work_s(term) for term in terms)
        return dense, dyn, terms

    def _far_dense(self, tokens: int) -> tuple[float, float]:
        """(seconds, busy work) of a rank's non-attention work at a token count beyond the
        whole tables (`FAR_TOKENS`), from the block of `FAR_BLOCK` counts that holds it: the
        same per-count figures the whole tables would hold, priced only around the counts
        used."""

        def tabulate(t: np.ndarray) -> tuple[list[float], list[float]]:
            dense, dyn, terms = self._dense_arrays(t)
            for code, n in _provenance_counts(terms, t.shape).items():
                self._far_prov[code] = self._far_prov.get(code, 0) + n
            return dense.tolist(), dyn.tolist()

        seconds, work = _far_block(self._far, tokens, tabulate)
        i = tokens % FAR_BLOCK
        return seconds[i], work[i]

    def cover(self, tokens: int, seqs: int) -> None:
        """Grow the whole tables to hold `tokens` tokens and `seqs` LM-head rows, for the
        variants that index them directly (beyond `FAR_TOKENS`, `dense_s` does not grow them)."""
        if tokens >= len(self._dense_tab) or seqs >= len(self._lm_tab):
            self._grow_tables(max(tokens, seqs))

    def _lm_rows(self, seqs: int) -> None:
        """Grow the whole tables to hold `seqs` LM-head rows."""
        if seqs >= len(self._lm_tab):
            self._grow_tables(seqs)

    def _work_s(self, term: _Term) -> np.ndarray:
        """Seconds of full dynamic power one operator is worth: its FLOPs at peak plus its bytes
        at full bandwidth weighted by MEM_POWER_SHARE, never more than the operator's time."""
        bw = self.power_device.mem_bw_bytes_per_s
        work = term.flops / self._peak + MEM_POWER_SHARE * term.nbytes / bw
        if term.kind == "comm":  # links, not HBM or SMs, carry a collective
            work = np.zeros_like(term.seconds)
        return np.minimum(work, term.seconds)

    def prefill_attn_s(self, new_tokens: int, cached_tokens: int) -> float:
        """Seconds of one sequence's prefill-chunk attention over all layers of a stage."""
        return self._prefill_cache(new_tokens, cached_tokens)

    def _prefill_chunks_s(self, chunks: Sequence[tuple[int, int]]) -> float:
        """Seconds of the attention of one rank's prefill chunks in one iteration (0 for none):
        each chunk's own price, times the batching gain of that many prompts in one call."""
        pre = self._prefill_cache
        if len(chunks) == 1:
            return pre(*chunks[0])
        return sum(pre(n, c) for n, c in chunks) * self._chunks_gain(chunks)

    def _chunks_gain(self, chunks: Sequence[tuple[int, int]]) -> float:
        """The batching gain (`_prefill_gain`) of one rank's prefill chunks; 1 for one chunk
        or a model priced chunk by chunk."""
        if not self._batched_prefill or len(chunks) < 2:
            return 1.0
        pairs = sum(n * (c + (n + 1) * 0.5) for n, c in chunks)
        return self._prefill_gain(len(chunks), pairs / len(chunks))

    def _prefill_gain(self, chunks: int, mean_pairs: float) -> float:
        """Per-prompt attention seconds of `chunks` prompts in one call over one prompt's
        alone, for prompts of the causal length (whole tokens) with the chunks' mean (query,
        key) pairs; memoised."""
        length = max(1, round((math.sqrt(1.0 + 8.0 * mean_pairs) - 1.0) * 0.5))
        key = (chunks, length)
        gain = self._gain_memo.get(key)
        if gain is None:
            gain = self._gain_memo[key] = self._batch_gain_at(chunks, float(length))
        return gain

    def _batch_gain_at(self, batch: int, length: float) -> float:
        """The batching gain of `batch` prompts of `length` tokens: the measured prefill table's
        (`measured_kernels.batch_gains`) where one holds this layout, else the roofline's."""
        m, k = self.model, self.kernels
        qh, kvh, qk, v, _ = self._attn_heads()
        if k is not None:
            if m.is_mla:
                heads = m.num_heads // self.par.tp
                gain = k.mla_prefill_batch_gain(batch, length, heads, self._mla_dims(), m.kv_dtype)
            elif qk == v:
                gain = k.prefill_batch_gain(batch, length, qh, kvh, qk, m.kv_dtype, 0)
            else:
                gain = None
            if gain is not None:
                return float(gain)
        if m.is_mla:  # un-absorbed prefill heads, as `_prefill_attn_s` prices them
            qh = kvh = m.num_heads // self.par.tp
            qk, v = m.qk_head_dim, m.v_head_dim
        n = max(1, round(length))
        dev, fit, kv = self.device, self.fit, m.kv_dtype
        one = roofline.attn_prefill_s(1, n, 0, qh, kvh, qk, v, kv, dev, fit)
        many = roofline.attn_prefill_s(batch, n, 0, qh, kvh, qk, v, kv, dev, fit)
        return min(1.0, many / (batch * one)) if one > 0 else 1.0

    def _prefill_attn_s(self, new_tokens: int, cached_tokens: int) -> float:
        m = self.model
        qh, kvh, qk, v, _ = self._attn_heads()
        if m.is_mla:  # prefill runs MLA un-absorbed: per-head K of nope+rope, V of v_head_dim
            qh, kvh, qk, v = (
                m.num_heads // self.par.tp,
                m.num_heads // self.par.tp,
                m.qk_head_dim,
                m.v_head_dim,
            )
        full = self._stage_fraction(m.num_full_attention_layers)
        slide = self._stage_fraction(m.num_sliding_layers)
        # Linear-attention mixers (hybrids) run beside whichever attention prices the rest.
        mixers = sum(p[2] for p in self._mixer_prefill_parts(new_tokens, cached_tokens))
        if m.is_sparse:  # DSA: latent MQA over the top-k keys each query picks, like a window
            self._attn_prov[(new_tokens, cached_tokens)] = ROOFLINE
            qh, kvh, qk, v, _ = self._attn_heads()
            top = m.index_topk
            t = full * roofline.attn_prefill_s(
                1,
                new_tokens,
                min(cached_tokens, top),
                qh,
                kvh,
                qk,
                v,
                m.kv_dtype,
                self.device,
                self.fit,
                window=top,
            )
        else:
            priced = self._measured_mla_prefill(new_tokens, cached_tokens)
            if priced is not None:
                return full * priced + mixers
            if self.kernels is not None and qk == v:
                return self._measured_prefill_s(new_tokens, cached_tokens, full, slide) + mixers
            self._attn_prov[(new_tokens, cached_tokens)] = ROOFLINE
            t = full * roofline.attn_prefill_s(
                1, new_tokens, cached_tokens, qh, kvh, qk, v, m.kv_dtype, self.device, self.fit
            )
        if slide:
            t += slide * roofline.attn_prefill_s(
                1,
                new_tokens,
                min(cached_tokens, m.sliding_window),
                qh,
                kvh,
                qk,
                v,
                m.kv_dtype,
                self.device,
                self.fit,
                window=m.sliding_window,
            )
        return t + mixers

    def _mla_dims(self) -> tuple[int, int, int, int]:
        m = self.model
        return (m.kv_lora_rank, m.qk_rope_head_dim, m.qk_nope_head_dim, m.v_head_dim)

    def _measured_mla_prefill(self, new: int, cached: int) -> float | None:
        """One layer's MLA prefill-chunk attention from the MLA tables (None: the roofline)."""
        m = self.model
        if self.kernels is None or not m.is_mla or m.num_sliding_layers:
            return None
        heads = m.num_heads // self.par.tp
        priced = self.kernels.mla_prefill(new, cached, heads, self._mla_dims(), m.kv_dtype)
        if priced is None:
            return None
        self._attn_prov[(new, cached)] = priced[1]
        return priced[0]

    def _measured_prefill_s(self, new: int, cached: int, full: float, slide: float) -> float:
        """Prefill-chunk attention from the measured tables (the roofline where none fit)."""
        m, k = self.model, self.kernels
        assert k is not None
        qh, kvh, qk, _, _ = self._attn_heads()
        parts = [(full, cached, 0)] if full else []
        if slide:
            w = m.sliding_window
            parts.append((slide, min(cached, w), w))
        t, worst = 0.0, MEASURED_CODE
        for layers, ctx, window in parts:
            priced = k.prefill(new, ctx, qh, kvh, qk, m.kv_dtype, window)
            if priced is None:
                s = roofline.attn_prefill_s(
                    1, new, ctx, qh, kvh, qk, qk, m.kv_dtype, self.device, self.fit, window=window
                )
                priced = (s, ROOFLINE)
            t += layers * priced[0]
            worst = max(worst, priced[1])
        self._attn_prov[(new, cached)] = worst
        return t

    def decode_coeffs(self, decode_seqs: int, queries: int | None = None) -> tuple[float, float]:
        """(a, b) with decode attention seconds = a + b × total attended context, all layers.

        `queries`: query tokens per sequence (default `decode_tokens`: 1, or k+1 in a
        speculative verify pass; a draft head's pass asks for 1)."""
        if queries is None:  # one cache key for the default, whoever asks
            return self._decode_cache(decode_seqs)
        return self._decode_cache(decode_seqs, queries)

    def _decode_coeffs(self, seqs: int, queries: int | None = None) -> tuple[float, float]:
        m = self.model
        qh, kvh, qk, v, latent = self._attn_heads()
        # A verify pass's k+1 queries per sequence attend the same cached keys: the kernels
        # pack them beside the query heads (FlashMLA's s_q x h_q rows, FlashInfer's and
        # TRT-LLM's multi-token generation), so the work grows k+1-fold and the KV read does
        # not. The measured tables hold one query per sequence: anchored on them, such a pass
        # takes the roofline's ratio of q query rows to one ("extrapolated").
        q = self.decode_tokens if queries is None else queries
        verify = queries is None  # the verify pass; a draft pass names its queries
        seqs_rank = math.ceil(seqs / self.par.dp)
        if self.kernels is not None and not m.is_sparse:
            measured = self._measured_decode_coeffs(seqs, seqs_rank)
            if measured is not None:
                a, b = measured
                if q > 1:
                    one, many = (
                        roofline.decode_coeffs_np(
                            seqs_rank, h, kvh, qk, v, m.kv_dtype, self.device, self.fit, latent
                        )
                        for h in (qh, qh * q)
                    )
                    a *= float(many[0]) / float(one[0])
                    b *= float(many[1]) / float(one[1])
                    self._attn_prov[(seqs,)] = max(self._attn_prov[(seqs,)], EXTRAPOLATED)
                for _, _, pa, pb, _ in self._mixer_decode_parts(seqs_rank, q, verify):
                    a, b = a + pa, b + pb
                return a, b
        self._attn_prov[(seqs,)] = ROOFLINE
        qh *= q

        def at(ctx: int) -> float:
            return roofline.attn_decode_s(
                seqs_rank, ctx, qh, kvh, qk, v, m.kv_dtype, self.device, self.fit, latent=latent
            )

        ref = 1024 * seqs_rank
        t0, t1 = at(0), at(ref)
        full = self._stage_fraction(m.num_full_attention_layers)
        a = full * t0
        b = full * (t1 - t0) / ref / self.par.dp  # context is spread over the DP ranks
        if m.is_sparse:  # DSA: each sequence's sparse MLA reads its top-k picks (a fixed count)
            a, b = full * at(seqs_rank * m.index_topk), 0.0
        slide = self._stage_fraction(m.num_sliding_layers)
        if slide:  # windowed layers attend to at most the window: constant in context
            a += slide * at(seqs_rank * m.sliding_window)
        for _, _, pa, pb, _ in self._mixer_decode_parts(seqs_rank, q, verify):
            a, b = a + pa, b + pb
        return a, b

    def _measured_decode_coeffs(self, seqs: int, seqs_rank: int) -> tuple[float, float] | None:
        """Decode attention as a + b × context from the measured tables: the line through
        DECODE_CTX_REF tokens per sequence (decode time is affine in context)."""
        m, k = self.model, self.kernels
        assert k is not None
        qh, kvh, qk, _, latent = self._attn_heads()
        lo, hi = DECODE_CTX_REF
        if latent:  # absorbed MLA: the MLA tables, which have no windowed layers
            if m.num_sliding_layers:
                return None
            ref = np.array([lo, hi])
            priced = k.mla_decode(seqs_rank, ref, qh, self._mla_dims(), m.kv_dtype)
        else:
            priced = k.decode(seqs_rank, np.array([lo, hi]), qh, kvh, qk, m.kv_dtype)
        if priced is None:
            return None
        (t_lo, t_hi), codes = priced
        b_rank = max(0.0, (t_hi - t_lo) / (seqs_rank * (hi - lo)))
        a_rank = max(0.0, t_lo - b_rank * seqs_rank * lo)
        full = self._stage_fraction(m.num_full_attention_layers)
        a, b = full * a_rank, full * b_rank / self.par.dp
        worst = int(codes.max())
        slide = self._stage_fraction(m.num_sliding_layers)
        if slide:  # windowed layers attend to at most the window: constant in context
            w = k.decode(seqs_rank, np.array([float(m.sliding_window)]), qh, kvh, qk, m.kv_dtype)
            if w is None:
                return None
            a += slide * float(w[0][0])
            worst = max(worst, int(w[1][0]))
        self._attn_prov[(seqs,)] = worst
        return a, b

    def provenance_counts(self) -> dict[str, int]:
        """Operator shapes this predictor priced, by provenance: each dense operator once per
        tabulated token count, attention once per distinct decode batch and prefill chunk."""
        counts = dict.fromkeys(PROVENANCE, 0)
        for tables in (self._dense_prov, self._far_prov):  # whole tables, far blocks
            for code, n in tables.items():
                counts[PROVENANCE[code]] += n
        for code in self._attn_prov.values():
            counts[PROVENANCE[code]] += 1
        return counts

    def overhead_s(self, decode_seqs: int, prefill_seqs: int) -> float:
        """Engine time outside the kernels: scheduling, sampling. Each attention-DP
        rank runs its own scheduler in parallel (SGLang launches one scheduler process per DP
        rank, managers/data_parallel_controller.py; TRT-LLM one executor per rank), so a step
        costs one rank's overhead for the busiest rank's share of the sequences."""
        dp = self.par.dp
        return self._rank_overhead_s(-(-decode_seqs // dp), -(-prefill_seqs // dp))

    def _rank_overhead_s(self, decode_seqs: int, prefill_seqs: int) -> float:
        """One scheduler's overhead for a step of its own decode and prefill sequences."""
        e = self.engine
        t = e.step_overhead_s + e.per_seq_overhead_s * (decode_seqs + prefill_seqs)
        if prefill_seqs:
            t += e.prefill_overhead_s
        return t

    def host_s(self, tokens: int, prefill_seqs: int, decode_seqs: int) -> float:
        """Host seconds to issue one stage's kernels of a rank's iteration (`tokens` tokens,
        `prefill_seqs` prefill chunks, `decode_seqs` decodes): eager unless captured. An
        iteration with prefill tokens replays piecewise graphs up to the engine's
        `prefill_graph_max_tokens` (and still launches attention eagerly: the piecewise host
        time), a decode-only one a full graph (no host time) up to `cuda_graph_max_seqs`.
        The iteration then takes max(kernels, host): the CPU runs ahead of the GPU."""
        e = self.engine
        if prefill_seqs:
            return self._eager_s if tokens > e.prefill_graph_max_tokens else self._piecewise_s
        return self._eager_s if decode_seqs > e.cuda_graph_max_seqs else 0.0

    def pp_send_s(self, tokens: int) -> float:
        """Seconds of the activation hand-offs between pipeline stages for `tokens` tokens."""
        if self.par.pp == 1:
            return 0.0
        hb = math.ceil(tokens / self.par.dp) * self.model.hidden_size * ACT_BYTES
        return (self.par.pp - 1) * roofline.p2p_s(hb, self.device, self.fit)

    # ---- the seam ------------------------------------------------------------------------
    def _busiest_rank(
        self, decode_seqs: int, prefill: Iterable[tuple[int, int]]
    ) -> tuple[list[int], int, int]:
        """(indices of its prefill chunks, tokens, sequences) of the attention-DP rank whose
        step takes longest.

        Both engines spread requests over the ranks so that their counts stay even: SGLang
        dispatches round-robin (managers/data_parallel_controller.py, `round_robin_scheduler`,
        the default `load_balance_method`), TRT-LLM gives each new request to the rank with
        the fewest active tokens below ceil(active/dp) requests
        (_torch/pyexecutor/executor_request_queue.py, `_balance_requests_across_ranks`). So
        consecutive admissions land on different ranks: chunk i of a step runs on rank
        i mod dp, and every rank decodes ceil(decode_seqs/dp) sequences (the busiest share).
        Under `random` dispatch the k chunks of a step land on uniformly random ranks and the
        busiest rank holds the median of the largest of dp multinomial counts
        (`busiest_share`): the first that many chunks, but never more tokens than one rank
        prefills in a step. SGLang splits the token budget over the ranks under attention DP
        (server_args.py: `chunked_prefill_size // dp_size`) and each rank's scheduler takes
        from its own queue, so a rank sent more keeps the rest for its next step while the
        other ranks work on theirs.
        """
        chunks = list(prefill)
        dp = self.par.dp
        q = self.decode_tokens  # LM-head rows and tokens of a decode sequence
        if dp == 1:
            tokens = decode_seqs * q + sum(n for n, _ in chunks)
            return list(range(len(chunks))), tokens, decode_seqs * q + len(chunks)
        dec = -(-decode_seqs // dp)
        dq = dec * q
        if self.par.dp_dispatch == "random" and len(chunks) > 1:
            share = busiest_share(len(chunks), dp)
            room = self.engine.max_num_batched_tokens // dp
            tok = chunks[0][0]
            take = 1
            while take < share and tok + chunks[take][0] <= room:
                tok += chunks[take][0]
                take += 1
            if take > -(-len(chunks) // dp):
                return list(range(take)), dq + tok, dq + take
        ranks = min(dp, len(chunks))
        best: tuple[float, list[int], int, int] = (-1.0, [], dq, dq)
        if len(chunks) < dp:
            t0 = self._rank_dense_s(dq, dq) if dec else 0.0
            if self._hosted:
                t0 = max(t0, self.host_s(dq, 0, dec))
            best = (t0 + self._rank_overhead_s(dec, 0), [], dq, dq)
        for r in range(ranks):
            idx = list(range(r, len(chunks), dp))
            tok = dq + sum(chunks[i][0] for i in idx)
            cost = self._prefill_chunks_s([chunks[i] for i in idx])
            cost += self._rank_dense_s(tok, dq + len(idx))
            if self._hosted:
                cost = max(cost, self.host_s(tok, len(idx), dec))
            cost += self._rank_overhead_s(dec, len(idx))
            if cost > best[0]:
                best = (cost, idx, tok, dq + len(idx))
        return best[1], best[2], best[3]

    def _rank_dense_s(self, tokens: int, seqs: int) -> float:
        """One rank's own non-attention work (and LM head) for its tokens and sequences."""
        if tokens >= len(self._dense_tab) or seqs >= len(self._lm_tab):
            if tokens >= FAR_TOKENS and tokens >= len(self._dense_tab):
                self._lm_rows(seqs)
                return self._far_dense(tokens)[0] + self._lm_tab[seqs]
            self.cover(tokens, seqs)
        return self._dense_tab[tokens] + self._lm_tab[seqs] if tokens else 0.0

    def _group_s(self, tokens: int, sum_len: bool = False) -> float:
        """The shared expert layers' seconds for the stage's tokens (attention DP only),
        gathered as SGLang gathers an extend batch when `sum_len` (`_group_terms`)."""
        tab = self._group_tab[sum_len]
        if tokens >= len(tab):
            if tokens >= FAR_TOKENS:
                block = _far_block(
                    self._far_group[sum_len], tokens, lambda t: self._group_seconds(t, sum_len)
                )
                return block[tokens % FAR_BLOCK]
            size = max(1024, 1 << int(tokens).bit_length())
            t = np.arange(size, dtype=np.float64)
            t[0] = 1.0
            tab = self._group_seconds(t, sum_len)
            tab[0] = 0.0
            self._group_tab[sum_len] = tab
        return tab[tokens]

    def _group_seconds(self, t: np.ndarray, sum_len: bool = False) -> list[float]:
        """The shared expert layers' seconds at each stage token count in `t`."""
        terms = self._group_terms(t, sum_len)
        return sum((term.seconds for term in terms), np.zeros(len(t))).tolist()

    def _step_dp_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """One stage's step under attention DP: the busiest rank's attention, own dense work
        and scheduler, plus the expert layers over every rank's tokens."""
        chunks = list(prefill)
        idx, rank_tokens, rank_seqs = self._busiest_rank(decode_seqs, chunks)
        stage = self._prefill_chunks_s([chunks[i] for i in idx])
        if decode_seqs:
            a, b = self._decode_cache(decode_seqs)
            stage += a + b * decode_context
        stage += self._rank_dense_s(rank_tokens, rank_seqs)
        tokens = decode_seqs * self.decode_tokens + sum(n for n, _ in chunks)
        stage += self._group_s(tokens, bool(chunks) and self._sum_len_gather)
        dec_rank = -(-decode_seqs // self.par.dp)
        if self._hosted:
            stage = max(stage, self.host_s(rank_tokens, len(idx), dec_rank))
        stage += self._rank_overhead_s(dec_rank, len(idx))
        if self.par.pp == 1:
            return stage
        return stage * self.par.pp + self.pp_send_s(tokens)

    def _prefill_twin(self) -> Predictor:
        """This predictor with the expert tables of DeepEP's prefill phase (wide EP only): a
        shallow copy sharing the attention memos, its own operator tables."""
        if self._context_twin is None:
            self._context_twin = self._twin(_table_phase="context")
        return self._context_twin

    def _twin(self, **changed: Any) -> Predictor:
        """A shallow copy of this predictor with `changed` attributes and its own (empty)
        operator tables, sharing the attention memos: a variant of the same deployment whose
        non-attention terms differ (`_prefill_twin`, `_serial_twin`)."""
        twin = copy.copy(self)
        for name, value in changed.items():
            setattr(twin, name, value)
        twin._dense_tab, twin._lm_tab = [], []
        twin._group_tab = {False: [], True: []}
        twin._dyn_dense_tab, twin._dyn_lm_tab = [], []
        twin._far, twin._far_prov = {}, {}
        twin._far_group = {False: {}, True: {}}
        twin._dense_prov = {}
        return twin

    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of one iteration through every pipeline stage (the simulator's hot call)."""
        if self._table_phase == "generation":
            prefill = tuple(prefill)
            if prefill:  # a prefill batch: DeepEP's normal mode (the base step, not a variant's)
                return Predictor.step_s(self._prefill_twin(), decode_seqs, decode_context, prefill)
        if self._shared_overlap:
            prefill = tuple(prefill)
            if not self._graphed(decode_seqs, prefill):  # eager: no dual-stream overlap
                return Predictor.step_s(self._serial_twin(), decode_seqs, decode_context, prefill)
        if self.par.dp > 1:
            return self._step_dp_s(decode_seqs, decode_context, prefill)
        tokens = rows = decode_seqs * self.decode_tokens  # rows: of the LM head
        chunks = prefill if isinstance(prefill, tuple | list) else tuple(prefill)
        n_pre = len(chunks)
        stage = self._prefill_chunks_s(chunks)
        for new, _ in chunks:
            tokens += new
        if decode_seqs:
            a, b = self._decode_cache(decode_seqs)
            stage += a + b * decode_context
        seqs = rows + n_pre
        dense, lm = self._dense_tab, self._lm_tab
        if tokens < len(dense) and seqs < len(lm):
            stage += dense[tokens] + lm[seqs]
        else:
            stage += self.dense_s(tokens, seqs)
        if self._hosted:
            stage = max(stage, self.host_s(tokens, n_pre, decode_seqs))
        stage += self.overhead_s(decode_seqs, n_pre)
        if self.par.pp == 1:
            return stage
        return stage * self.par.pp + self.pp_send_s(tokens)

    def decode_step_coeffs(self, decode_seqs: int) -> tuple[float, float]:
        """(c0, c1): a decode-only iteration of n sequences takes c0 + c1 × total context."""
        return self._step_cache(decode_seqs)

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        c0 = self.step_s(n, 0, ())
        _, b = self._decode_cache(n)
        return c0, b * self.par.pp

    def decode_step_costs(self, decode_seqs: int) -> tuple[float, float, float, float]:
        """(c0, c1, w0, w1): a decode-only iteration of n sequences over total context C takes
        c0 + c1·C seconds and is worth w0 + w1·C seconds of full dynamic power per device."""
        return self._step_costs_cache(decode_seqs)

    def _decode_step_costs(self, n: int) -> tuple[float, float, float, float]:
        c0, c1 = self._step_cache(n)
        return c0, c1, self.step_work_s(n, 0, ()), self._decode_work_per_token()

    # ---- energy ----------------------------------------------------------------------------
    def _decode_work_per_token(self) -> float:
        """Busy work per attended context token of a decode step: its KV read from HBM."""
        m, p = self.model, self.par
        kv_values = m.kv_values_per_token_per_layer * nbytes(m.kv_dtype)
        shards = 1 if m.is_mla else min(p.tp, m.num_kv_heads)
        layers = self._stage_fraction(m.num_full_attention_layers)
        per_device = layers * kv_values / shards / p.dp
        return MEM_POWER_SHARE * per_device / self.power_device.mem_bw_bytes_per_s

    @property
    def attn_pair_work_s(self) -> float:
        """Busy work of prefill attention per (query, key) pair under the causal mask: QKᵀ and PV
        FLOPs at peak. A chunk of n new tokens over c cached ones has n·(c + (n+1)/2) pairs, so a
        whole prompt of P tokens computed from S cached ones has (P(P+1) − S(S+1))/2, whatever the
        chunking: the simulator adds it once per finished prefill."""
        m = self.model
        qh = m.num_heads // self.par.tp
        dims = m.qk_head_dim + m.attn_v_head_dim
        layers = self._stage_fraction(m.num_full_attention_layers)
        return 2.0 * qh * dims * layers / self._attn_peak

    def _prefill_attn_work_s(self, new_tokens: int, cached_tokens: int) -> float:
        """Busy work of one prefill chunk's attention."""
        pairs = new_tokens * (cached_tokens + (new_tokens + 1) * 0.5)
        return self.attn_pair_work_s * pairs

    def dense_work_many(self, tokens: np.ndarray, seqs: np.ndarray) -> float:
        """Total busy work of everything but attention over many iterations (token and
        sequence counts per iteration)."""
        if not len(tokens):
            return 0.0
        t = -(-np.asarray(tokens, dtype=np.int64) // self.par.dp)
        r = -(-np.asarray(seqs, dtype=np.int64) // self.par.dp)
        far = (t >= FAR_TOKENS) & (t >= len(self._dyn_dense_tab))
        near = t[~far]
        need = int(max(near.max(initial=0), r.max()))
        if need >= len(self._dyn_dense_tab) or need >= len(self._dyn_lm_tab):
            self._grow_tables(need)
        dense = np.asarray(self._dyn_dense_tab)
        lm = np.asarray(self._dyn_lm_tab)
        work = float(dense[near].sum() + np.where(t > 0, lm[r], 0.0).sum())
        return work + sum(self._far_dense(int(n))[1] for n in t[far])

    @property
    def decode_work_per_token_s(self) -> float:
        """Busy work per attended context token of a decode step (its KV read)."""
        w = self._w_ctx
        if w is None:
            w = self._w_ctx = self._decode_work_per_token()
        return w

    def step_work_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of full dynamic power one iteration is worth on each device of a stage: FLOPs
        at peak plus HBM bytes at full bandwidth (weighted), the engine's CPU overhead worth none.

        Energy of an iteration is then devices × (P_idle·t + (P_max − P_idle)·work): power runs
        from idle to max with the utilisation of the compute units and of HBM.
        """
        tokens = rows = decode_seqs * self.decode_tokens
        work = 0.0
        n_pre = 0
        for new, cached in prefill:
            tokens += new
            n_pre += 1
            work += self._prefill_attn_work_s(new, cached)
        if decode_seqs:
            work += self._decode_work_per_token() * decode_context
        seqs = rows + n_pre
        rank_tokens = -(-tokens // self.par.dp)
        rows = -(-seqs // self.par.dp)
        if tokens and rank_tokens >= FAR_TOKENS and rank_tokens >= len(self._dyn_dense_tab):
            self._lm_rows(rows)
            return work + (self._far_dense(rank_tokens)[1] + self._dyn_lm_tab[rows])
        if rank_tokens >= len(self._dyn_dense_tab) or rows >= len(self._dyn_lm_tab):
            self._grow_tables(max(rank_tokens, rows))
        if tokens:
            work += self._dyn_dense_tab[rank_tokens] + self._dyn_lm_tab[rows]
        return work

    def iteration(self, batch: BatchShape, breakdown: bool = False) -> IterationCost:
        """Seconds and joules of one iteration (through every pipeline stage)."""
        seconds = self.step_s(batch.decode_seqs, batch.decode_context, batch.prefill)
        work = self.step_work_s(batch.decode_seqs, batch.decode_context, batch.prefill)
        ops = tuple(self.ops(batch)) if breakdown else ()
        return IterationCost(seconds, self.joules(seconds, work), ops)

    def joules(self, seconds: float, work_s: float) -> float:
        """Energy of the replica's devices over `seconds` during which each device of each stage
        did `work_s` seconds of full-dynamic-power work (the sum of `step_work_s`).

        Power runs from idle to max with utilisation: P = P_idle + (P_max − P_idle)·u per device,
        and u·t summed over an iteration is its work, so the sum over iterations is exact.
        """
        dev = self.power_device
        dynamic = (dev.max_power_w - dev.idle_power_w) * max(0.0, work_s)
        return self.par.num_devices * (dev.idle_power_w * seconds + dynamic)
