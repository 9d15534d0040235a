"""Speculative decoding: the acceptance chain, the draft + verify price, the simulated steps
(seeded draws, truncation, token conservation under preemption) and the refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.planner.candidates import Candidate, PlanSpec, deployment_for, speculative_for
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.predictor.speculative import SpeculativePredictor
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.simulate import simulate
from servesim.sim.speculation import SpecState, StepDraw, step_probabilities
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding

LLAMA8 = "meta-llama/Llama-3.1-8B"


# ---- the acceptance chain ----------------------------------------------------------------------
def test_expected_tokens_per_step_hand_computed() -> None:
    # 1 + a1 + a1·a2 + a1·a2·a3
    sd = SpeculativeDecoding("eagle", 3, (0.8, 0.5, 0.25))
    assert sd.expected_tokens_per_step == pytest.approx(1 + 0.8 + 0.4 + 0.1)
    # One rate for every position: 1 + 0.6 + 0.36
    assert SpeculativeDecoding("eagle", 2, (0.6,)).expected_tokens_per_step == pytest.approx(1.96)
    # The sourced MTP default: 0.85 (DeepSeek-V3 report), 0.63 after.
    mtp = SpeculativeDecoding("mtp", 3)
    assert mtp.acceptance == (0.85, 0.63, 0.63)
    assert mtp.expected_tokens_per_step == pytest.approx(1 + 0.85 + 0.85 * 0.63 + 0.85 * 0.63**2)


def test_step_distribution_hand_computed() -> None:
    acc = np.array([0.8, 0.5, 0.25])
    p = step_probabilities(acc)
    assert p == pytest.approx([0.2, 0.4, 0.3, 0.1])  # hand: 1−a1, a1(1−a2), a1a2(1−a3), a1a2a3


def test_step_counts_exact_for_short_outputs() -> None:
    """Three tokens with steps of 1…4 tokens at P = 0.2, 0.4, 0.3, 0.1: one step if the first
    emits ≥ 3 (0.4); two if it emits 2 (0.4) or 1 then ≥ 2 (0.2·0.8); three if 1, 1 (0.04)."""
    draw = StepDraw(step_probabilities(np.array([0.8, 0.5, 0.25])), np.random.default_rng(7))
    counts = np.bincount([draw.steps(3) for _ in range(100_000)], minlength=4)[1:] / 100_000
    assert counts == pytest.approx([0.4, 0.56, 0.04], abs=0.005)
    assert draw.steps(0) == 0 and draw.steps(1) == 1


@pytest.mark.parametrize("remaining", [40, 1000, 8192])
def test_step_counts_match_step_by_step_draws(remaining: int) -> None:
    """The multinomial head plus single steps gives the step count that drawing every step
    does (mean and spread over 4,000 sequences), and the mean accepted length of the chain:
    about remaining / τ steps."""
    p = step_probabilities(np.array([0.85, 0.63, 0.63]))
    draw = StepDraw(p, np.random.default_rng(1))
    fast = np.array([draw.steps(remaining) for _ in range(4000)])
    rng = np.random.default_rng(2)
    tokens = 1 + np.searchsorted(np.cumsum(p)[:-1], rng.random((4000, remaining)), side="right")
    slow = (np.cumsum(tokens, axis=1) < remaining).sum(axis=1) + 1
    se = slow.std() / np.sqrt(4000)
    assert abs(fast.mean() - slow.mean()) < 5 * se
    assert fast.std() == pytest.approx(slow.std(), rel=0.08)
    tau = SpeculativeDecoding("mtp", 3).expected_tokens_per_step
    assert fast.mean() == pytest.approx(remaining / tau, rel=0.02, abs=1.0)


def test_group_sums_follow_the_paths() -> None:
    """Joins, leaves and steps in any order: the affine offset sum stays within one token per
    sequence of the exact sum of the paths' offsets (each path rounds down), a path ends with
    exactly its tokens, and one that leaves early has made between none and all of them."""
    state = SpecState((0.8, 0.6), seed=3, index=0)
    rng = np.random.default_rng(4)
    live: dict[int, tuple[int, int, int, int]] = {}  # rid -> (offset, join step, tokens, steps)
    rid = 0
    for g in range(400):
        if rng.random() < 0.3 or not live:
            off, rem = int(rng.integers(0, 500)), int(rng.integers(0, 300))
            live[rid] = (off, g, rem, state.join(rid, off, g, rem))
            rid += 1
        if rng.random() < 0.1:
            r = int(rng.choice(list(live)))
            off, g0, rem, _ = live.pop(r)
            assert 0 <= state.leave(r, g) + g - (off + g0) <= rem
        nxt = g + 1
        for r in [r for r, v in live.items() if nxt >= v[1] + v[3]]:
            off, g0, rem, _ = live.pop(r)
            assert state.leave(r, nxt) + nxt == off + g0 + rem
        exact = int(state.offsets(nxt).sum())
        assert 0 <= state.offset_sum(nxt) - exact <= len(live) + 1
        assert state.n == len(live)


# ---- the price of a step ------------------------------------------------------------------------
def test_verify_is_a_decode_step_of_k_plus_1_tokens_per_sequence(llama8, h100) -> None:
    k, n, ctx = 3, 16, 16 * 2000
    sd = SpeculativeDecoding("eagle", k)
    base = Predictor(llama8, h100, latency_model="roofline")  # hand-assembled from its terms
    spec = SpeculativePredictor(llama8, h100, sd, latency_model="roofline")
    # Hand-assembled: GEMMs and LM head over n(k+1) tokens, attention reading the context once
    # (Llama's 4 query heads per KV head x 4 positions fit the MMA's minimum rows, so the
    # k+1 queries cost no more than one), the scheduler's overhead for n sequences.
    a, b = base.decode_coeffs(n)
    rows = n * (k + 1)
    verify = base.dense_s(rows, rows) + a + b * ctx + base.overhead_s(n, 0)
    draft = spec.draft_s(n, ctx)
    assert spec.step_s(n, ctx, ()) - draft == pytest.approx(verify, rel=1e-12)
    # One EAGLE pass: the average target layer, the 2h→h projection, the LM head and one
    # layer's attention. The first pass runs the k+1 verified positions of every sequence
    # (SGLang's draft-extend, vLLM's first proposer pass) with logits at one of them; the
    # k−1 others one position each.
    layers = llama8.num_layers
    h = llama8.hidden_size

    def one_pass(q: int) -> float:
        proj = base._gemm("eh_proj", np.array([float(n * q)]), h, 2 * h, 1.0).seconds[0]
        lm_s = base._lm_tab[n]
        aq, bq = base.decode_coeffs(n, queries=q)
        layer = (base.dense_s(n * q, n) - lm_s + aq + bq * ctx) / layers
        return layer + proj + lm_s

    assert draft == pytest.approx(one_pass(k + 1) + (k - 1) * one_pass(1), rel=1e-12)
    assert one_pass(k + 1) > one_pass(1)
    # The breakdown splits the same time into draft and verify.
    d, v = spec.breakdown_s(BatchShape(n, ctx))
    assert (d, v) == pytest.approx((draft, verify), rel=1e-12)
    ops = spec.ops(BatchShape(n, ctx))
    assert sum(op.seconds for op in ops) == pytest.approx(draft + verify, rel=1e-9)
    assert any(op.name == "draft:eagle" for op in ops)


def test_a_prefill_iteration_runs_the_drafter_over_its_prompt_tokens(llama8, h100) -> None:
    """The iteration that prefills a prompt also runs the drafter over its tokens: one head
    layer over the 1,000 new tokens (its share of the dense work, the 2h→h projection, its
    attention to the chunk) with the LM head at the chunk's last position. SGLang stops there
    (`forward_draft_extend`); TensorRT-LLM's MTP-Eagle worker runs the other k−1 passes over
    every sequence, the prefilled one included. Outside a graph each pass takes at least a
    layer's host time (an eager prefill; TensorRT-LLM's MTP layers always, kept out of
    torch.compile)."""
    k, tokens, h = 3, 1000, llama8.hidden_size
    chunk = ((tokens, 0),)
    base = Predictor(llama8, h100, engine=get_engine("sglang"), latency_model="roofline")
    layers = base.layers_per_stage
    dense = base.dense_s(tokens, 1)
    lm = base._lm_tab[1]
    proj = base._gemm("eh_proj", np.array([float(tokens)]), h, 2 * h, 1.0).seconds[0]
    attn = base._prefill_chunks_s(chunk) / layers
    first = (dense - lm) / layers + attn + proj + lm
    host = base._eager_s / layers  # SGLang prefills eager (no piecewise graphs by default)
    assert host > 0 and first > 0
    for engine, later in (("sglang", 0), ("trtllm", k - 1)):
        e = get_engine(engine)
        plain = Predictor(llama8, h100, engine=e, latency_model="roofline")
        sd = SpeculativeDecoding("eagle", k)
        spec = SpeculativePredictor(llama8, h100, sd, engine=e, latency_model="roofline")
        eager = plain._eager_s / layers
        one = spec.draft_pass_coeffs(1)
        want = max(first, eager) + later * max(one[0] + one[1] * tokens, eager)
        got = spec.step_s(0, 0, chunk) - plain.step_s(0, 0, chunk)
        assert got == pytest.approx(want, rel=1e-9), engine
        assert spec.breakdown_s(BatchShape(prefill=chunk))[0] == pytest.approx(want, rel=1e-9)
    # A draft model prefills the prompt itself: its attention and dense work over the tokens,
    # logits at the last, at least its whole forward's eager host time (SGLang: one pass).
    big, e = load_model("meta-llama/Llama-3.1-70B"), get_engine("sglang")
    sd = SpeculativeDecoding("draft", k, (0.6,), draft_model=llama8)
    spec = SpeculativePredictor(big, h100, sd, Parallel(tp=4), engine=e, latency_model="roofline")
    d = spec.draft
    want = max(d._prefill_chunks_s(chunk) + d.dense_s(tokens, 1), d._eager_s)
    assert d._eager_s > 0
    assert spec.drafts_s(0, 0, chunk) == pytest.approx(want, rel=1e-12)
    # A decode-only step is unchanged: the decodes' k passes, no prefill term.
    spec = SpeculativePredictor(llama8, h100, SpeculativeDecoding("eagle", k))
    assert spec.step_s(8, 8000, ()) == pytest.approx(
        Predictor.step_s(spec, 8, 8000, ()) + spec.draft_s(8, 8000), rel=1e-12
    )


def test_a_prefill_iterations_busy_work_counts_the_drafter(llama8, h100) -> None:
    """The simulator prices the busy work of its iterations with prefill tokens in bulk
    (`dense_work_many` over their token and sequence counts): the drafter's passes count there
    as in `step_work_s`: one head layer's share of the dense work over every token with the LM
    head at every sequence, and for TensorRT-LLM k−1 more over the sequences."""
    k, tokens, seqs = 3, 3000, 4
    t, r = np.array([tokens]), np.array([seqs])

    for engine, later in (("sglang", 0), ("trtllm", k - 1)):
        spec = SpeculativePredictor(
            llama8, h100, SpeculativeDecoding("eagle", k), engine=get_engine(engine)
        )

        def head(n: int, rows: int, spec: SpeculativePredictor = spec) -> float:
            total = Predictor.dense_work_many(spec, np.array([n]), np.array([rows]))
            lm = spec._dyn_lm_tab[rows]
            return (total - lm) / spec.layers_per_stage + lm

        base = Predictor.dense_work_many(spec, t, r)
        want = base + head(tokens, seqs) + later * head(seqs, seqs)
        assert spec.dense_work_many(t, r) == pytest.approx(want, rel=1e-12), engine
        assert head(tokens, seqs) > 0
        # a prefill-only iteration's own work adds the same drafter work
        chunks = ((750, 0),) * seqs
        extra = spec.step_work_s(0, 0, chunks) - Predictor.step_work_s(spec, 0, 0, chunks)
        assert extra == pytest.approx(head(tokens, seqs) + later * head(seqs, seqs), rel=1e-12)


def test_verify_attention_does_k_plus_1_queries_of_work() -> None:
    """The verify pass's k+1 queries per sequence attend the same cached keys, packed beside
    the query heads as the kernels do (the roofline's decode for heads x (k+1) query rows on
    all 61 layers); a draft pass keeps one query. DeepSeek's absorbed MLA tiles query rows by
    64: at TP8 its 16 heads a GPU are padded to 64 rows, so MTP-3's 4 x 16 rows come free; with
    attention DP (DEP8) each GPU has all 128 heads and 4 x 128 rows are 4x the MMA work of a
    pass that is compute-bound already (1,088 MACs per fp8 latent byte)."""
    from servesim.predictor import roofline

    ds, b200 = load_model("deepseek-ai/DeepSeek-V3"), get_device("b200_sxm")
    dims = (1, ds.kv_lora_rank + ds.qk_rope_head_dim, ds.kv_lora_rank, ds.kv_dtype, b200)
    n = 64
    slope = {}
    for par, heads, per_rank in ((Parallel(tp=8), 16, 64), (Parallel(dp=8, ep=8), 128, 8)):
        spec = SpeculativePredictor(ds, b200, SpeculativeDecoding("mtp", 3), par)
        for queries, rows in ((None, 4 * heads), (1, heads)):
            a, b = roofline.decode_coeffs_np(per_rank, rows, *dims, spec.fit, latent=True)
            want = (61 * a, 61 * b / par.dp)  # the context spreads over the DP ranks
            got = spec.decode_coeffs(n) if queries is None else spec.decode_coeffs(n, queries)
            assert got == pytest.approx(want, rel=1e-9)
        slope[par.dp] = spec.decode_coeffs(n)[1] / spec.decode_coeffs(n, 1)[1]
    assert slope[1] == pytest.approx(1.0, rel=1e-9)
    assert slope[8] > 3.0, slope


def test_measured_verify_attention_is_anchored_on_the_one_query_table() -> None:
    """With measured kernels the tables hold one query a sequence: the verify pass takes the
    measured line times the roofline's ratio of 4 x 128 query rows to 128 (DEP8), and says
    "extrapolated"; the draft pass's one query is the table's own line."""
    from servesim.predictor import roofline

    ds, b200 = load_model("deepseek-ai/DeepSeek-V3"), get_device("b200_sxm")
    par = Parallel(dp=8, ep=8)
    spec = SpeculativePredictor(
        ds, b200, SpeculativeDecoding("mtp", 3), par, engine=get_engine("trtllm"),
        latency_model="auto",
    )  # fmt: skip
    n = 64
    a1, b1 = spec.decode_coeffs(n, 1)
    assert spec.provenance_counts()["measured"] + spec.provenance_counts()["interpolated"] > 0
    dims = (1, ds.kv_lora_rank + ds.qk_rope_head_dim, ds.kv_lora_rank, ds.kv_dtype, b200)
    one = roofline.decode_coeffs_np(8, 128, *dims, spec.fit, latent=True)
    many = roofline.decode_coeffs_np(8, 512, *dims, spec.fit, latent=True)
    spec._decode_cache.cache_clear()
    a, b = spec.decode_coeffs(n)
    assert (a, b) == pytest.approx((a1 * many[0] / one[0], b1 * many[1] / one[1]), rel=1e-9)
    assert b > 2.0 * b1
    assert spec.provenance_counts()["extrapolated"] >= 1


def test_an_unquantised_mtp_layer_drafts_at_its_own_weight_reads() -> None:
    """NVIDIA's NVFP4 DeepSeek-R1 keeps its MTP layer in bf16 (`model.layers.61*` excluded from
    quantisation; TensorRT-LLM loads it unquantized), so a draft pass reads bf16 weights: it
    costs what the same model stored in bf16 drafts, not what an NVFP4 MTP layer would, while
    the verify pass keeps the NVFP4 checkpoint's price. At 16 decodes on 4 B200s the draft
    passes are weight reads of the routed experts, 4x the bytes of NVFP4's."""
    nv = load_model("nvidia/DeepSeek-R1-NVFP4")
    assert nv.mtp_dtype == "bf16" and nv.expert_dtype == "fp4"
    flat = nv.mtp_layer_model()
    assert (flat.weight_dtype, flat.expert_dtype, flat.mtp_dtype) == ("bf16", "bf16", "")
    assert load_model("deepseek-ai/DeepSeek-R1").mtp_layer_model() == load_model(
        "deepseek-ai/DeepSeek-R1"
    )  # an FP8 checkpoint quantises its MTP layer with the rest
    b200, par, sd = get_device("b200_sxm"), Parallel(tp=4), SpeculativeDecoding("mtp", 3)
    n, ctx = 16, 16 * 1500

    def spec(model):
        return SpeculativePredictor(model, b200, sd, par, engine=get_engine("trtllm"))

    kept = spec(nv)
    bf16 = spec(nv.with_dtypes(weight="bf16"))  # every layer in bf16, the MTP layer too
    fp4_mtp = spec(replace(nv, mtp_dtype=""))  # a checkpoint quantising its MTP layer
    assert fp4_mtp.model.mtp_dtype == "" and fp4_mtp.head_host is fp4_mtp
    assert kept.draft_s(n, ctx) == pytest.approx(bf16.draft_s(n, ctx), rel=1e-12)
    assert kept.draft_s(n, ctx) > 2.0 * fp4_mtp.draft_s(n, ctx)
    verify = Predictor.step_s(kept, n, ctx, ())
    assert verify == pytest.approx(Predictor.step_s(fp4_mtp, n, ctx, ()), rel=1e-12)
    assert verify < Predictor.step_s(bf16, n, ctx, ())


def test_a_hybrid_verify_writes_the_state_after_every_draft_token() -> None:
    """Gated DeltaNet in a verify pass: each sequence reads its state once and writes it after
    each of its k+1 tokens (the engines keep every position's state to roll back to), and the
    k+1 tokens' inputs and outputs stream through. Qwen3.5 at TP8, MTP-3, 32 sequences: by hand
    32 x (5 states + 4 x io) bytes on each of the 45 linear layers, against 32 x (2 + 1 x io)
    for a plain decode; the draft pass keeps the one-token price."""
    qwen, b200 = load_model("Qwen/Qwen3.5-397B-A17B"), get_device("b200_sxm")
    spec = SpeculativePredictor(qwen, b200, SpeculativeDecoding("mtp", 3), Parallel(tp=8))
    state, nv, conv = spec._linear_state_bytes()
    io = (conv + nv * qwen.linear_v_head_dim) * 2.0
    ssm = nv * qwen.linear_k_head_dim * qwen.linear_v_head_dim
    n, layers = 32, qwen.num_linear_layers
    assert layers == 45
    for q, states in ((4, 5), (1, 2)):
        (name, _, a, b, _), *_ = spec._mixer_decode_parts(n, q)
        want = spec._stream_s(6.0 * ssm * n * q, n * (states * state + q * io), "fp32")
        assert name == "linear_scan_decode" and b == 0.0
        assert a == pytest.approx(layers * want, rel=1e-12)
    verify = spec._mixer_decode_parts(n, 4)[0][2]
    plain = spec._mixer_decode_parts(n, 1)[0][2]
    assert verify > 2.0 * plain  # the state writes dominate: 5 state moves against 2


def test_verify_is_nearly_free_at_batch_1_and_not_at_batch_512(llama8, h100) -> None:
    """k+1 tokens read the weights once: at batch 1 the verify pass costs about a decode step;
    at batch 512 the GEMMs see 2048 tokens and are compute-bound."""
    sd = SpeculativeDecoding("eagle", 3)
    base = Predictor(llama8, h100)
    spec = SpeculativePredictor(llama8, h100, sd)
    ratio = {}
    for n in (1, 512):
        ctx = n * 1024
        ratio[n] = (spec.step_s(n, ctx, ()) - spec.draft_s(n, ctx)) / base.step_s(n, ctx, ())
    assert ratio[1] < 1.1, ratio
    assert ratio[512] > 1.5, ratio  # the attention, read once, keeps it below 4
    dense = {n: base.dense_s(4 * n, 4 * n) / base.dense_s(n, n) for n in (1, 512)}
    assert dense[1] < 1.1 and dense[512] > 3.0, dense


def _tpot(dep: Deployment, clients: int, output: int = 256) -> float:
    loop = ClosedLoop(clients, 2 * clients, Fixed(512), Fixed(output))
    return simulate(dep, closed_loop=loop).summary()["tpot_s"]["p50"]


def test_speedup_large_at_batch_1_and_shrinking_with_batch(llama8, h100) -> None:
    """The speculative-decoding papers' claim (EAGLE §5, Leviathan et al.): speculation pays
    when decode is memory-bound and loses its edge as the batch makes it compute-bound."""
    sd = SpeculativeDecoding("eagle", 3)
    plain = Deployment(llama8, h100, max_num_seqs=512)
    spec = Deployment(llama8, h100, max_num_seqs=512, speculative=sd)
    speedup = {b: _tpot(plain, b) / _tpot(spec, b) for b in (1, 16, 256)}
    figures = {b: round(x, 3) for b, x in speedup.items()}
    assert speedup[1] > 2.0, figures  # close to 2.95 tokens per step, less the drafts
    assert speedup[1] > speedup[16] > speedup[256], figures
    assert speedup[256] < 0.75 * speedup[1], figures


# ---- the simulator ------------------------------------------------------------------------------
def _run(dep: Deployment, n: int = 60, output: int = 200, seed_rate: float = 8.0):
    rng = np.random.default_rng(3)
    arrivals = np.cumsum(rng.exponential(1.0 / seed_rate, n))
    prompts = rng.integers(100, 1500, n)
    outputs = rng.integers(1, output, n)
    return simulate(dep, Workload(arrivals, prompts, outputs)), outputs


def test_deterministic_under_a_seed_and_seed_matters(llama8, h100) -> None:
    def finish(seed: int) -> np.ndarray:
        sd = SpeculativeDecoding("eagle", 2, (0.7,), seed=seed)
        res, _ = _run(Deployment(llama8, h100, speculative=sd))
        return res.columns()["finish_s"]

    a, b, c = finish(0), finish(0), finish(1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tokens_conserved_and_truncated(llama8, h100) -> None:
    sd = SpeculativeDecoding("eagle", 4, (0.9,))
    res, outputs = _run(Deployment(llama8, h100, speculative=sd), output=12)
    cols = res.columns()
    assert np.array_equal(np.sort(cols["generated_tokens"]), np.sort(outputs))
    # Fewer steps than tokens: the mean TPOT is below the plain run's.
    plain, _ = _run(Deployment(llama8, h100), output=12)
    assert res.summary()["iterations"] < plain.summary()["iterations"]


def test_conservation_under_preemption(llama8) -> None:
    """A cache too small for the batch: speculative steps reserve k+1 slots per sequence,
    sequences are preempted and recomputed, and every request still gets exactly its tokens."""
    l4 = get_device("l4")
    sd = SpeculativeDecoding("eagle", 3)
    dep = Deployment(llama8, l4, max_num_seqs=256, speculative=sd)
    loop = ClosedLoop(200, 400, Fixed(2000), Fixed(600))
    res = simulate(dep, closed_loop=loop)  # raises ConservationError on a lost token
    s = res.summary()
    assert s["preemptions"] > 0
    assert s["finished"] == 400
    assert int(res.columns()["generated_tokens"].sum()) == 400 * 600


def test_disaggregated_decode_pool_speculates(llama8, h100) -> None:
    sd = SpeculativeDecoding("eagle", 3)
    pool = Deployment(llama8, h100, speculative=sd)
    res, outputs = _run(DisaggDeployment(pool, pool))
    assert int(res.columns()["generated_tokens"].sum()) == int(outputs.sum())
    plain, _ = _run(DisaggDeployment(Deployment(llama8, h100), Deployment(llama8, h100)))
    assert res.summary()["tpot_s"]["p50"] < plain.summary()["tpot_s"]["p50"]


# ---- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"method": "medusa", "num_draft_tokens": 2}, "Unknown speculative method"),
        ({"method": "eagle", "num_draft_tokens": 0}, "at least one draft token"),
        ({"method": "eagle", "num_draft_tokens": 2, "acceptance": (1.5,)}, "in [0, 1]"),
        ({"method": "eagle", "num_draft_tokens": 2, "acceptance": (0.5, 0.4, 0.3)}, "3 rates"),
        ({"method": "draft", "num_draft_tokens": 2, "acceptance": (0.5,)}, "needs a draft model"),
        ({"method": "draft", "num_draft_tokens": 2}, "no default acceptance"),
    ],
)
def test_bad_speculation_refused_in_one_sentence(kwargs: dict, words: str) -> None:
    with pytest.raises(ServesimError) as err:
        SpeculativeDecoding(**kwargs)
    msg = str(err.value)
    assert words in msg and msg.replace("e.g. ", "").count(". ") == 0 and msg.endswith(".")


def test_mtp_refused_without_mtp_layers_and_draft_vocab_checked(llama8, h100) -> None:
    with pytest.raises(ServesimError, match="no multi-token-prediction layers"):
        Deployment(llama8, h100, speculative=SpeculativeDecoding("mtp", 1))
    qwen = load_model("Qwen/Qwen3-8B")
    sd = SpeculativeDecoding("draft", 2, (0.6,), draft_model=qwen)
    with pytest.raises(ServesimError, match="must share the target's tokenizer"):
        Deployment(load_model("meta-llama/Llama-3.1-70B"), h100, speculative=sd)
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    assert r1.num_mtp_layers == 1
    Deployment(
        r1, get_device("b200_sxm"), Parallel(tp=8), speculative=SpeculativeDecoding("mtp", 3)
    )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--speculative", "mtp", "--num-draft-tokens", "2"], "no multi-token-prediction layers"),
        (["--num-draft-tokens", "2"], "does nothing without --speculative"),
        (["--speculative", "eagle"], "needs --num-draft-tokens"),
        (["--speculative", "eagle", "--num-draft-tokens", "2", "--acceptance", "x"], "numbers"),
    ],
)
def test_cli_refusals(argv: list[str], words: str, capsys) -> None:
    code = main(["predict", "--model", LLAMA8, "--decode-seqs", "4", *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_predict_cli_shows_draft_and_verify(capsys) -> None:
    code = main(
        [
            "predict",
            "--model",
            LLAMA8,
            "--decode-seqs",
            "8",
            "--speculative",
            "eagle",
            "--num-draft-tokens",
            "3",
            "--json",
        ]
    )
    import json

    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    spec = doc["speculative"]
    assert spec["tokens_per_step"] == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    assert spec["draft_s"] + spec["verify_s"] == pytest.approx(doc["totals"]["seconds"])
    names = {op["name"] for op in doc["operators"]}
    assert "draft:eagle" in names and "verify:lm_head" in names


# ---- the planner --------------------------------------------------------------------------------
def test_plan_candidates_keep_their_keys_when_speculation_is_off() -> None:
    import hashlib
    import json
    from dataclasses import asdict

    def stored(c: Candidate, *dropped: str) -> str:  # a key as stores before these fields
        doc = asdict(c)
        for name in dropped:
            del doc[name]
        return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    c = Candidate("h100_sxm", 1)
    old = stored(c, "num_draft_tokens", "spec_tree_width")
    assert c.key() == old
    on = Candidate("h100_sxm", 1, num_draft_tokens=2)
    assert on.key() != old and "draft=2" in on.label()
    assert on.key() == stored(on, "spec_tree_width")  # chains keep their keys too
    tree = Candidate("h100_sxm", 1, num_draft_tokens=2, spec_tree_width=4)
    assert tree.key() != on.key() and "draft=2x4" in tree.label()
    spec = PlanSpec(LLAMA8, speculative="eagle", acceptance=(0.9, 0.8, 0.7))
    assert speculative_for(spec, 2).acceptance == (0.9, 0.8)
    assert deployment_for(spec, on).speculative.num_draft_tokens == 2
    assert deployment_for(spec, c).speculative is None


def test_semipd_refuses_speculation_rather_than_dropping_it(llama8, h100) -> None:
    from servesim.sim.semipd import SemiPDDeployment

    dep = Deployment(llama8, h100, speculative=SpeculativeDecoding("eagle", 2))
    with pytest.raises(ServesimError, match="without speculative decoding"):
        SemiPDDeployment(dep, 0.5)
