"""The busiest expert-parallel rank at a few tokens: exact cases and DeepSeek's routing."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.predictor.expert_spread import busiest_rank_experts
from servesim.predictor.iteration import BatchShape, Predictor
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


def test_deepseek_routing_piles_a_lone_token_on_few_ranks() -> None:
    # 8 experts from 4 of 8 groups, one group a rank under EP 8: at least 2 on the busiest rank
    # (8 over 4 ranks), about 3 on average; more tokens spread wider than an even split from
    # about 20 tokens on (T tokens put T distinct experts a rank when spread evenly).
    one = busiest_rank_experts(256, 8, 8, 4, 8, 1)
    assert 2.0 <= one <= 4.0 and one == pytest.approx(3.0, abs=0.15)
    counts = [busiest_rank_experts(256, 8, 8, 4, 8, t) for t in (1, 2, 4, 8, 16, 32)]
    assert counts == sorted(counts)  # monotone in tokens
    assert counts[3] > 8 and counts[5] < 32
    assert busiest_rank_experts(256, 8, 8, 4, 8, 4) == busiest_rank_experts(256, 8, 8, 4, 8, 4)


def test_the_config_s_group_limits_are_read() -> None:
    m = load_model("deepseek-ai/DeepSeek-R1")
    assert (m.expert_groups, m.expert_groups_per_token) == (8, 4)
    assert (
        load_model("moonshotai/Kimi-K2.5").expert_groups,
        load_model("Qwen/Qwen3-32B").expert_groups,
    ) == (1, 1)


def test_a_lone_token_s_expert_layer_waits_for_the_busiest_rank() -> None:
    # DeepSeek-R1 on 8 x H200, TensorRT-LLM TEP8, one sequence: the expert layer costs the
    # balanced rows at the token count that puts ~3 experts on every rank, not a lone token's.
    model, dev = load_model("deepseek-ai/DeepSeek-R1"), get_device("h200_sxm")
    pred = Predictor(model, dev, Parallel(tp=8, ep=8), get_engine("trtllm"))
    ops = {o.name: o.seconds for o in pred.ops(BatchShape(decode_seqs=1, decode_context=1500))}
    moe = ops["moe_up_proj"] + ops["moe_down_proj"] + ops["moe_act"]
    layout = (7168, 2048, 8, 256, 1, 8)
    tokens = np.array([1.0, busiest_rank_experts(256, 8, 8, 4, 8, 1)])
    even = pred.kernels.moe(tokens, layout, "fp8", True, "balanced", block=True)[0]
    assert moe / 58 == pytest.approx(even[1], rel=1e-6)
    assert moe / 58 > 1.3 * even[0]
