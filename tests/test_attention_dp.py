"""Attention data parallelism: per-rank schedulers, per-rank activations, expert layers over
every GPU of a stage, and the busiest rank under the engines' request dispatch (issue 12)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape, Predictor, busiest_share
from servesim.spec.devices import Catalog, get_device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.memory import (
    FIXED_RESERVE_BYTES,
    activation_reserve_bytes,
    dense_ffn_bytes,
    weight_bytes_per_device,
)
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

# A scheduler whose costs are round numbers: 1 ms a step, 5 µs a sequence, graphs up to 512.
ENGINE = EngineProfile(
    name="sglang", step_overhead_s=1e-3, per_seq_overhead_s=5e-6, cuda_graph_max_seqs=512
)


@pytest.fixture(scope="module")
def r1():
    return load_model("deepseek-ai/DeepSeek-R1")


@pytest.fixture(scope="module")
def gb200():
    # on an x86-speed host, so the engine's round figures are what the step pays
    # (GB200's Grace host takes 1.63x as long: tests/test_host_time.py)
    return replace(Catalog().get("gb200"), host_time_factor=1.0)


def test_overhead_is_one_ranks_not_the_sum(r1, gb200) -> None:
    """tp1 ep32 dp32 at 8,192 sequences: each of the 32 schedulers handles 256 of them in
    parallel, so the step costs 1 ms + 256 × 5 µs = 2.28 ms, not 1 ms + 8192 × 5 µs."""
    pred = Predictor(r1, gb200, Parallel(tp=1, dp=32, ep=32), ENGINE)
    assert pred.overhead_s(8192, 0) == pytest.approx(1e-3 + 256 * 5e-6)
    one = Predictor(r1, gb200, Parallel(tp=1, ep=1), ENGINE)
    assert one.overhead_s(8192, 0) == pytest.approx(1e-3 + 8192 * 5e-6)
    # The step's breakdown carries the same single overhead.
    ops = {op.name: op for op in pred.ops(BatchShape(8192, 8192 * 2048))}
    assert ops["framework"].seconds == pytest.approx(1e-3 + 256 * 5e-6)


def test_activation_reserve_is_one_ranks_per_gpu(r1) -> None:
    """DeepSeek-R1 (h 7168, FFN 18432, vocab 129280) with a 9,692-token budget per rank (SGLang
    max_prefill_tokens = ISL + 1500 at ISL 8192): 2 GB + 9692 × 2 × (4·7168 + 3·18432) B +
    4 × 1024 × 129280 B = 4.157 GB on every GPU, whether dp is 1 or 32 (the replica's budget
    is then 32 × 9692)."""
    per_rank = 9692
    hand = FIXED_RESERVE_BYTES + per_rank * 2.0 * (4 * 7168 + 3 * 18432) + 4.0 * 1024 * 129280
    assert hand == pytest.approx(4.157e9, rel=1e-3)
    dp32 = activation_reserve_bytes(r1, Parallel(tp=1, dp=32, ep=32), 32 * per_rank)
    assert dp32 == pytest.approx(hand)
    assert activation_reserve_bytes(r1, Parallel(tp=1), per_rank) == pytest.approx(hand)


def test_moe_tp_over_attention_dp_ranks_weights_by_hand(r1) -> None:
    """DeepSeek-R1 fp8 on tp1 dp8 moe_tp8 (ep 1): routed experts 3·7168·2048 parameters each,
    256 per layer on 58 MoE layers plus the MTP layer (59 × 256 × 44,040,192 B = 665.18 GB)
    split over 8 GPUs; dense FFN (3 layers × 3·7168·18432) and shared experts (58 × 3·7168·2048)
    = 3.743 GB; everything else (attention, embeddings, router, norms, MTP's rest) = 15.671 GB
    replicated on every attention-DP rank."""
    experts = 59 * 256 * 3 * 7168 * 2048 * 1.0
    dense = (3 * 3 * 7168 * 18432 + 58 * 3 * 7168 * 2048) * 1.0
    assert r1.expert_bytes() == pytest.approx(experts, rel=1e-9)
    assert sum(dense_ffn_bytes(r1)) == pytest.approx(dense, rel=1e-9)
    other = r1.param_bytes() - experts - dense
    assert other == pytest.approx(15.671e9, rel=1e-3)
    # TRT-LLM: dense FFN and shared experts replicated on each rank.
    trt = weight_bytes_per_device(r1, Parallel(tp=1, dp=8, moe_tp_size=8))
    assert trt == pytest.approx(other + dense + experts / 8)
    assert trt == pytest.approx(102.56e9, rel=1e-3)
    # SGLang: dense FFN and shared experts tensor-parallel over the 8 GPUs too.
    sgl = weight_bytes_per_device(r1, Parallel(tp=1, dp=8, moe_tp_size=8, dense_tp_size=8))
    assert sgl == pytest.approx(other + dense / 8 + experts / 8)
    assert sgl == pytest.approx(99.29e9, rel=1e-3)
    # EP 8 holds the same expert bytes per GPU as MoE TP 8; under SGLang's DeepEP the shared
    # experts (58 × 3·7168·2048 = 2.554 GB) stay on each rank, the dense layers are split.
    assert weight_bytes_per_device(r1, Parallel(tp=1, dp=8, ep=8)) == pytest.approx(trt)
    shared = 58 * 3 * 7168 * 2048 * 1.0
    sgl_ep = weight_bytes_per_device(r1, Parallel(tp=1, dp=8, ep=8, dense_tp_size=8))
    assert sgl_ep == pytest.approx(other + shared + (dense - shared) / 8 + experts / 8)


def test_sglang_gathers_an_extend_batch_by_all_reduce(r1, gb200) -> None:
    """SGLang's attention DP moves an extend (prefill) batch's tokens between the attention
    ranks and the expert layers by two all-reduces of every rank's tokens (a zero-filled
    buffer all-reduced to gather, the MLP's output all-reduced before the local copy back,
    `DpPaddingMode.SUM_LEN`); a decode batch all-gathers and reduce-scatters them. DeepSeek-R1
    at tp1 dp4 ep4: 58 expert layers at 4,000 tokens (57 MB of bf16 hidden states)."""
    from servesim.predictor import roofline

    pred = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4), ENGINE)
    tokens = 4000
    hb = np.array([tokens * r1.hidden_size * 2.0])

    def nccl(op: str) -> float:
        return float(roofline.collective_np(op, hb, 4, gb200, pred.fit)[0])

    def gather_s(sum_len: bool) -> float:
        terms = pred._group_terms(np.array([float(tokens)]), sum_len)
        (term,) = [t for t in terms if t.name.startswith("dp_")]
        return float(term.seconds[0])

    layers = r1.num_moe_layers
    assert gather_s(False) == pytest.approx(layers * (nccl("all_gather") + nccl("reduce_scatter")))
    assert gather_s(True) == pytest.approx(layers * 2 * nccl("all_reduce"))
    assert gather_s(True) > 1.5 * gather_s(False)
    # A prefill iteration pays the difference, a decode-only one does not: against the same
    # predictor told to gather every batch the decode way.
    plain = copy.copy(pred)
    plain._sum_len_gather = False
    chunks = ((1000, 0),) * 4
    extra = pred._group_s(tokens, True) - pred._group_s(tokens)
    assert extra > 0
    assert pred.step_s(0, 0, chunks) - plain.step_s(0, 0, chunks) == pytest.approx(extra)
    assert pred.step_s(64, 64 * 1000, ()) == pytest.approx(plain.step_s(64, 64 * 1000, ()))
    # The breakdown agrees with the step.
    ops = pred.ops(BatchShape(prefill=chunks))
    assert sum(op.seconds for op in ops) == pytest.approx(pred.step_s(0, 0, chunks), rel=1e-9)
    # TensorRT-LLM gathers every batch the same way.
    trt = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4), replace(ENGINE, name="trtllm"))
    assert not trt._sum_len_gather and pred._sum_len_gather


def test_parallel_expert_layout_rules() -> None:
    assert Parallel(tp=1, dp=8).moe_tp == 8  # every engine spreads experts over tp × dp
    assert Parallel(tp=2, dp=4, ep=4).moe_tp == 2
    assert Parallel(tp=8).moe_tp == 8 and Parallel(tp=8).dense_tp == 8
    with pytest.raises(ServesimError, match="moe_tp=4"):
        Parallel(tp=1, dp=8, moe_tp_size=4)
    with pytest.raises(ServesimError, match="dense_tp=2"):
        Parallel(tp=1, dp=8, dense_tp_size=2)


def test_busiest_rank_under_round_robin_dispatch(r1, gb200) -> None:
    """dp 4, 10 decodes and five prefill chunks: chunk i runs on rank i mod 4, every rank
    decodes ceil(10/4) = 3 sequences; rank 0 holds chunks 0 and 4, so the busiest rank runs
    3 + 1000 + 500 tokens of 5 sequences."""
    pred = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4), ENGINE)
    chunks = ((1000, 0), (1000, 0), (1000, 0), (1000, 0), (500, 0))
    idx, tokens, seqs = pred._busiest_rank(10, chunks)
    assert (idx, tokens, seqs) == ([0, 4], 1503, 5)
    # Four equal chunks: each rank prefills one; five: rank 0 carries 1,500 tokens.
    four = pred.step_s(10, 10 * 100, chunks[:4])
    five = pred.step_s(10, 10 * 100, chunks)
    assert five > four
    # rank 0's two prompts run as one batched attention call (`_prefill_gain`: 1,000 and 500
    # tokens have the (query, key) pairs of two 791-token prompts)
    pairs = (1000 * 1001 + 500 * 501) / 2 / 2
    gain = pred._prefill_gain(2, pairs)
    assert 0.4 < gain < 1 and pred._gain_memo == {(2, 791): gain}
    attn = sum(pred.prefill_attn_s(*chunks[i]) for i in idx) * gain
    one_rank = pred._rank_dense_s(1503, 5) + attn
    a, b = pred.decode_coeffs(10)
    hand = (
        one_rank
        + a
        + b * 1000
        # the expert layers over every rank's tokens, gathered as SGLang gathers an extend
        # batch (`test_sglang_gathers_an_extend_batch_by_all_reduce`)
        + pred._group_s(10 + 4500, sum_len=True)
        + pred._rank_overhead_s(3, 2)  # the busiest rank: 3 decodes, 2 prefills
    )
    assert five == pytest.approx(hand)
    # The breakdown sums to the same step.
    ops = pred.ops(BatchShape(10, 1000, chunks))
    assert sum(op.seconds for op in ops) == pytest.approx(five, rel=1e-9)


def test_a_lone_prefill_is_not_spread_over_the_ranks(r1, gb200) -> None:
    """One 8,192-token prompt under dp 8 runs on one rank: its projections see 8,192 tokens,
    not 1,024, so the step is slower than a dp-1 rank's 1,024-token step."""
    dp8 = Predictor(r1, gb200, Parallel(tp=1, dp=8, ep=8), ENGINE)
    t = dp8.step_s(0, 0, ((8192, 0),))
    assert t > dp8._rank_dense_s(8192, 1) + dp8.prefill_attn_s(8192, 0)
    assert t > dp8.step_s(0, 0, ((1024, 0),) * 8)


def test_moe_tp_over_dp_ranks_gathers_every_ranks_tokens(r1, gb200) -> None:
    """MoE TP across the DP ranks (ep 1) prices the experts on all ranks' tokens with an
    all-gather and a reduce-scatter of the stage's hidden states per MoE layer."""
    pred = Predictor(r1, gb200, Parallel(tp=1, dp=8, moe_tp_size=8), ENGINE)
    ops = {op.name: op for op in pred.ops(BatchShape(64, 64 * 1000))}
    assert ops["dp_gather_scatter"].calls == 2 * 58
    assert ops["moe_up_proj"].flops == pytest.approx(
        2.0 * 64 * 8 * (2 * 2048 // 8) * 7168 * 58, rel=1e-9
    )


def test_busiest_share_of_random_dispatch_by_hand() -> None:
    """4 prompts on 4 ranks at random: P(no rank gets ≥ 2) = 4!/4⁴ = 0.094, P(none gets ≥ 3) =
    1 − (4·C(4,3)·3 + 4)/256 = 204/256 = 0.797, so the median busiest rank holds 2. Two
    prompts on 8 ranks collide with probability 1/8: the busiest holds 1."""
    assert busiest_share(4, 4) == 2
    assert busiest_share(2, 8) == 1
    assert busiest_share(1, 32) == 1


def test_random_dispatch_loads_the_busiest_rank(r1, gb200) -> None:
    """SGLang PD prefill workers route by a random bootstrap room: 4 prompts on a dp-4 worker
    put 2 on one rank (the balanced dispatch puts 1 on each), so the step takes longer, when a
    rank's share of the budget (32,768 // 4 = 8,192 tokens) holds both."""
    engine = replace(ENGINE, max_num_batched_tokens=32768)
    even = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4), engine)
    rand = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4, dp_dispatch="random"), engine)
    chunks = ((4096, 0),) * 4
    assert rand._busiest_rank(0, chunks)[:2] == ([0, 1], 8192)
    assert even._busiest_rank(0, chunks)[2] == 1
    assert rand.step_s(0, 0, chunks) > even.step_s(0, 0, chunks)


def test_a_rank_prefills_at_most_its_share_of_the_budget(r1, gb200) -> None:
    """SGLang divides the prefill budget over the attention-DP ranks (16,384 // 4 = 4,096
    tokens a rank) and each rank takes from its own queue: the rank sent two 4,096-token
    prompts prefills one this step, so a full step costs what the balanced dispatch's does.
    Shorter prompts still pile up on it, up to its 4,096 tokens: 8 of 1,024 tokens put 3 on
    the median busiest rank (P(max ≤ 2) = 0.04, P(max ≤ 3) = 0.55), and 16 would put 6 there
    (P(max ≤ 5) = 0.31, P(max ≤ 6) = 0.69), of which it takes 4."""
    engine = replace(ENGINE, max_num_batched_tokens=16384)
    even = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4), engine)
    rand = Predictor(r1, gb200, Parallel(tp=1, dp=4, ep=4, dp_dispatch="random"), engine)
    chunks = ((4096, 0),) * 4
    assert rand._busiest_rank(0, chunks)[:2] == ([0], 4096)
    assert rand.step_s(0, 0, chunks) == pytest.approx(even.step_s(0, 0, chunks), rel=1e-12)
    assert busiest_share(8, 4) == 3 and busiest_share(16, 4) == 6
    assert rand._busiest_rank(0, ((1024, 0),) * 8)[:2] == ([0, 1, 2], 3072)
    idx, tokens, _ = rand._busiest_rank(0, ((1024, 0),) * 16)
    assert (len(idx), tokens) == (4, 4096)  # what the balanced dispatch gives each rank


def test_expert_collectives_follow_each_engine(r1, gb200) -> None:
    """TRT-LLM dispatches by all-to-all only under attention DP with moe_ep_size > top-k (8
    for DeepSeek) within one NVLink domain, and gathers otherwise; vLLM only across DP ranks
    (without DP the tokens are on every device of the TP group already) and with an all-to-all
    kernel (its default backend gathers); SGLang only with an all-to-all backend
    (`--moe-a2a-backend deepep`): its default gathers under attention DP and otherwise finds
    the tokens on every device."""
    trt = EngineProfile(name="trtllm")

    def names(par: Parallel, engine: EngineProfile) -> set[str]:
        return {op.name for op in Predictor(r1, gb200, par, engine).ops(BatchShape(64, 64000))}

    assert "dp_gather_scatter" in names(Parallel(tp=1, dp=8, ep=8), trt)
    assert "ep_alltoall" not in names(Parallel(tp=1, dp=8, ep=8), trt)
    assert "ep_alltoall" in names(Parallel(tp=1, dp=32, ep=32), trt)
    # ... inside one NVLink domain (its MNNVL all-to-all): 16 H100s span two 8-GPU nodes
    h100 = get_device("h100_sxm")
    over_ib = {op.name for op in Predictor(r1, h100, Parallel(tp=1, dp=16, ep=16), trt).ops(
        BatchShape(64, 64000))}  # fmt: skip
    assert "dp_gather_scatter" in over_ib and "ep_alltoall" not in over_ib
    deepep = replace(ENGINE, moe_a2a="deepep")
    assert "ep_alltoall" in names(Parallel(tp=1, dp=8, ep=8), deepep)
    sgl_dp = names(Parallel(tp=1, dp=8, ep=8), ENGINE)  # SGLang's default: dp_gather
    assert "dp_gather_scatter" in sgl_dp and "ep_alltoall" not in sgl_dp
    assert not {"ep_alltoall", "dp_gather_scatter"} & names(Parallel(tp=8, ep=8), ENGINE)
    assert not {"ep_alltoall", "dp_gather_scatter"} & names(Parallel(tp=8, ep=8), trt)
    vllm = EngineProfile(name="vllm")
    assert not {"ep_alltoall", "dp_gather_scatter"} & names(Parallel(tp=8, ep=8), vllm)
    # vLLM across DP ranks: its default all2all backend (allgather_reducescatter) gathers; an
    # all-to-all kernel (--all2all-backend deepep_low_latency) dispatches
    vllm_dp = names(Parallel(tp=1, dp=8, ep=8), vllm)
    assert "dp_gather_scatter" in vllm_dp and "ep_alltoall" not in vllm_dp
    assert "ep_alltoall" in names(
        Parallel(tp=1, dp=8, ep=8), replace(vllm, moe_a2a="deepep_low_latency")
    )
    # DeepEP scatters over TP: each of 8 devices dispatches its 64/8 tokens × top-8 × 7168
    # hidden × 2 B, and combines them back, in each of the 58 MoE layers.
    ops = {o.name: o for o in Predictor(r1, gb200, Parallel(tp=8, ep=8), deepep).ops(
        BatchShape(64, 64000))}  # fmt: skip
    a2a = ops["ep_alltoall"]
    assert a2a.calls == 2 * 58 and a2a.nbytes == pytest.approx(64 / 8 * 8 * 7168 * 2)


def test_trtllm_gathers_expert_inputs_in_their_quantised_format(gb200) -> None:
    """TensorRT-LLM quantises an expert layer's input before the attention-DP all-gather
    (`run_post_quant_allgather`): an NVFP4 token moves 7,168 x (0.5 + 1/16) bytes of values and
    scales plus 8 x (4 + 4) of routing, 4,096 bytes instead of bf16's 14,336; the
    reduce-scatter of the output stays bf16. SGLang's dp_gather moves bf16."""
    from servesim.spec.engine_profile import get_engine

    nvfp4 = load_model("nvidia/DeepSeek-R1-NVFP4")
    par = Parallel(tp=1, ep=4, dp=4)  # EP 4 <= top-k 8: gathered, not all-to-all
    trt = Predictor(nvfp4, gb200, par, get_engine("trtllm"))
    assert trt._moe_input_bytes_per_token() == 4096.0
    tokens = np.array([4 * 8192.0])
    hb = tokens * 7168 * 2
    gathered = trt._collective("all_gather", tokens * 4096.0, 4)
    scatter = trt._collective("reduce_scatter", hb, 4)
    (term,) = [x for x in trt._group_terms(tokens) if x.name == "dp_gather_scatter"]
    assert term.seconds[0] == pytest.approx(58 * (gathered + scatter)[0])  # 58 expert layers
    assert gathered[0] < 0.4 * trt._collective("all_gather", hb, 4)[0]
    sgl = Predictor(nvfp4, gb200, par, get_engine("sglang"))
    (bf16,) = [x for x in sgl._group_terms(tokens) if x.name == "dp_gather_scatter"]
    full = sgl._collective("all_gather", hb, 4) + scatter
    assert bf16.seconds[0] == pytest.approx(58 * full[0])
    # block-scaled fp8 experts are quantised after the gather (CUTLASS and DeepGEMM backends):
    # bf16 and the routing
    fp8 = Predictor(load_model("deepseek-ai/DeepSeek-R1"), gb200, par, get_engine("trtllm"))
    assert fp8._moe_input_bytes_per_token() == 7168 * 2 + 64


def test_trtllm_dispatches_quantised_tokens_and_combines_bf16(gb200) -> None:
    """Past top-k EP ranks inside one NVLink domain TensorRT-LLM moves tokens all-to-all; it
    dispatches them quantised like its all-gather (`post_quant_comm`), 4,096 bytes a copy of an
    NVFP4 DeepSeek token, and combines the bf16 outputs (14,336 bytes a copy). (The roofline's
    exchange: with GB200's tables the measured kernel prices it, test_measured_kernels.)"""
    from servesim.spec.engine_profile import get_engine

    nvfp4 = load_model("nvidia/DeepSeek-R1-NVFP4")
    par = Parallel(tp=1, ep=32, dp=32)
    trt = Predictor(nvfp4, gb200, par, get_engine("trtllm"), latency_model="roofline")
    tokens = np.array([32 * 64.0])  # 64 decode tokens a rank
    copies = tokens / 32 * 8  # each rank's tokens, once per chosen expert
    (term,) = [x for x in trt._moe_terms(tokens, 58.0) if x.name == "ep_alltoall"]
    dispatch = trt._collective("alltoall", copies * 4096.0, 32)
    combine = trt._collective("alltoall", copies * 14336.0, 32)
    assert term.seconds[0] == pytest.approx(58 * (dispatch + combine)[0])
    assert dispatch[0] < combine[0]


def test_sglang_overlaps_deepseek_shared_experts_in_graph_replayed_decode() -> None:
    """SGLang runs a DeepSeek MoE layer's shared experts on one CUDA stream beside the router
    and routed experts on another when it replays a decode graph (no all-to-all backend, shared
    experts not fused): the layer takes max(shared, routed), so a graphed decode step is the
    eager one less min(shared, routed) over the layers. Prefill steps stay serial; fusion (EP 1
    on Hopper, DeepSeek-V3's 256 experts) and DeepEP leave no second stream."""
    from servesim.spec.engine_profile import get_engine

    fp4 = load_model("nvidia/DeepSeek-R1-NVFP4")
    sgl = get_engine("sglang").with_overrides(version="0.5.9")
    pred = Predictor(fp4, get_device("b200_sxm"), Parallel(tp=4, ep=4), sgl)
    serial = pred._serial_twin()
    batch = BatchShape(4, 4 * 4000, ())
    ops = {o.name: o.seconds for o in serial.ops(batch)}
    shared = sum(v for k, v in ops.items() if k.startswith("shared_"))
    routed = sum(ops[k] for k in ("router", "moe_up_proj", "moe_down_proj", "moe_act"))
    assert 0 < shared < routed
    graphed = pred.step_s(4, 4 * 4000, ())
    assert graphed == pytest.approx(serial.step_s(4, 4 * 4000, ()) - shared, rel=1e-9)
    assert sum(o.seconds for o in pred.ops(batch)) == pytest.approx(graphed, rel=1e-9)
    chunk = ((2048, 0),)
    assert pred.step_s(0, 0, chunk) == pytest.approx(serial.step_s(0, 0, chunk), rel=1e-12)
    # fused shared experts (EP 1, Hopper's own MoE runner) and DeepEP: no second stream
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    assert not Predictor(r1, get_device("h200_sxm"), Parallel(tp=8), sgl)._shared_overlap
    assert Predictor(r1, get_device("h200_sxm"), Parallel(tp=8, ep=8), sgl)._shared_overlap
    deepep = sgl.with_overrides(moe_a2a="deepep")
    assert not Predictor(r1, get_device("b200_sxm"), Parallel(tp=8, ep=8), deepep)._shared_overlap
