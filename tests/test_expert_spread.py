"""The busiest expert-parallel rank at a few tokens: exact cases and DeepSeek's routing."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from servesim.predictor.expert_spread import busiest_rank_curve, busiest_rank_experts
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.predictor.kernel_tables import data_root
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel


def test_exact_cases() -> None:
    # Every expert chosen: each of 2 ranks runs its 4.
    assert busiest_rank_experts(8, 8, 1, 1, 2, 1) == 4.0
    # One group a rank and a token confined to one group: all 8 experts on one rank.
    assert busiest_rank_experts(64, 8, 8, 1, 8, 1) == 8.0
    # One rank holds everything a token picks.
    assert busiest_rank_experts(256, 8, 8, 4, 1, 3) == 24.0


def test_the_estimate_agrees_with_a_hand_computed_mean() -> None:
    # 2 of 4 experts, 2 per rank on 2 ranks: both on one rank with probability 2/6, so the busiest
    # rank runs 2 with probability 1/3 and 1 otherwise, a mean of 4/3. 400 draws: standard
    # error 0.024.
    assert busiest_rank_experts(4, 2, 1, 1, 2, 1) == pytest.approx(4 / 3, abs=0.08)


def test_deepseek_routing_piles_a_lone_token_on_few_ranks() -> None:
    # 8 experts from at most 4 of 8 groups, one group a rank under EP 8: at least 2 land on the
    # busiest rank in every draw (8 over at most 4 ranks), against 1 when spread evenly.
    one = busiest_rank_experts(256, 8, 8, 4, 8, 1)
    assert 2.0 <= one < 8.0
    # Without the group limit the same token spreads wider: a lower mean.
    assert busiest_rank_experts(256, 8, 1, 1, 8, 1) < one
    counts = [busiest_rank_experts(256, 8, 8, 4, 8, t) for t in (1, 2, 4, 8, 16, 32)]
    assert counts == sorted(counts)  # monotone in tokens
    assert counts[5] < 32  # 32 tokens: fewer than an even spread's 32 a rank


def test_the_estimate_is_reproducible() -> None:
    once = busiest_rank_curve.__wrapped__(256, 8, 8, 4, 8, 32)  # bypass the cache
    assert once == busiest_rank_curve.__wrapped__(256, 8, 8, 4, 8, 32)


def test_every_token_count_is_a_prefix_of_one_draw() -> None:
    # Every few-token count reads the one curve drawn for experts // top-k = 32 tokens (the
    # first t tokens of the same seeded draws), so an estimate does not depend on which counts
    # were asked for before, and it never falls as tokens are added.
    long = busiest_rank_curve.__wrapped__(256, 8, 8, 4, 8, 32)
    assert list(long) == sorted(long)
    assert [busiest_rank_experts(256, 8, 8, 4, 8, t) for t in (1, 5, 32)] == [
        long[0],
        long[4],
        long[31],
    ]


def test_the_config_s_group_limits_are_read() -> None:
    m = load_model("deepseek-ai/DeepSeek-R1")
    assert (m.expert_groups, m.expert_groups_per_token) == (8, 4)
    assert (
        load_model("moonshotai/Kimi-K2.5").expert_groups,
        load_model("Qwen/Qwen3-32B").expert_groups,
    ) == (1, 1)


def _balanced_s(tokens: int) -> float:
    """One H200 TensorRT-LLM 1.3.0rc20 expert layer of DeepSeek-R1 under TEP8, read directly."""
    path = data_root() / "h200_sxm" / "moe" / "trtllm" / "1.3.0rc20" / "moe_perf.parquet"
    t = pq.read_table(str(path)).to_pandas()
    hit = t[
        (t.moe_dtype == "fp8_block") & (t.hidden_size == 7168) & (t.inter_size == 2048)
        & (t.topk == 8) & (t.num_experts == 256) & (t.moe_tp_size == 1)
        & (t.moe_ep_size == 8) & (t.distribution == "balanced") & (t.num_tokens == tokens)
    ]  # fmt: skip
    return float(hit.latency.iloc[0]) * 1e-3


def test_a_lone_token_s_expert_layer_waits_for_the_busiest_rank() -> None:
    # DeepSeek-R1 on 8 x H200, TensorRT-LLM TEP8, one sequence: the expert layer costs the
    # balanced rows at the ~3 tokens that put as many experts on every rank as the busiest rank
    # runs, between the measured 2- and 4-token rows, not the 1-token row.
    model, dev = load_model("deepseek-ai/DeepSeek-R1"), get_device("h200_sxm")
    pred = Predictor(model, dev, Parallel(tp=8, ep=8), get_engine("trtllm"))
    ops = {o.name: o.seconds for o in pred.ops(BatchShape(decode_seqs=1, decode_context=1500))}
    layer = (ops["moe_up_proj"] + ops["moe_down_proj"] + ops["moe_act"]) / 58
    assert _balanced_s(2) < layer < _balanced_s(4)
    assert layer > 1.3 * _balanced_s(1)
