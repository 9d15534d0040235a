"""The output head: priced in the checkpoint's 16-bit format, split as each engine splits it
under attention DP (issues 11 and 12)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

REPO = Path(__file__).resolve().parents[1]
V, H = 129_280, 7_168  # DeepSeek-R1's vocabulary and hidden size


@pytest.fixture(scope="module")
def r1_fp4():
    m = load_model("deepseek-ai/DeepSeek-R1")
    return replace(m, weight_dtype="fp4", expert_dtype="fp4")


def _head(pred: Predictor, seqs: int):
    ops = pred.ops(BatchShape(decode_seqs=seqs, decode_context=seqs * 1000, prefill=()))
    return next(op for op in ops if op.name == "lm_head")


def test_the_head_stays_in_16_bits_in_quantised_checkpoints(r1_fp4) -> None:
    """NVFP4 and FP8 checkpoints keep `lm_head` unquantised: 129,280 x 7,168 bf16 weights,
    231.7 MB a GPU at TP 8 (plus 8 rows of activations in and logits out), not fp4's 57.9 MB.
    The memory model already held it in 16 bits (`param_bytes`)."""
    assert r1_fp4.lm_head_dtype == "bf16"
    assert replace(r1_fp4, weight_dtype="fp8").lm_head_dtype == "bf16"
    assert replace(r1_fp4, weight_dtype="fp32").lm_head_dtype == "fp32"
    pred = Predictor(r1_fp4, get_device("b200_sxm"), Parallel(tp=8), get_engine("trtllm"))
    head = _head(pred, 8)
    weights = V // 8 * H * 2.0
    activations = 8 * (H + V // 8) * 2.0
    assert head.nbytes == pytest.approx(weights + activations)


@pytest.mark.parametrize("engine", ["trtllm", "vllm"])
def test_a_whole_copy_per_dp_rank_by_default_outside_sglang(r1_fp4, engine) -> None:
    """TensorRT-LLM builds an unsharded head under attention DP unless
    `enable_lm_head_tp_in_adp`; a vLLM DP rank is an engine of its own: every rank reads the
    whole 1.85 GB head for its own rows, and gathers nothing."""
    pred = Predictor(r1_fp4, get_device("gb200"), Parallel(tp=1, dp=4, ep=4), get_engine(engine))
    assert pred._lm_split() == "attention_tp"
    head = _head(pred, 64)  # 16 rows a rank
    assert head.nbytes == pytest.approx(V * H * 2.0 + 16 * (H + V) * 2.0)


def test_sglang_splits_the_head_over_every_gpu_under_dp_attention(r1_fp4) -> None:
    """SGLang without --enable-dp-lm-head gathers every DP rank's rows, multiplies them by its
    1/(tp x dp) of the vocabulary and all-gathers the logits; with it, each rank keeps a
    whole copy. Without attention DP the split is the TP group's in every engine."""
    dev = get_device("b200_sxm")
    par = Parallel(tp=1, dp=8, ep=8)
    world = Predictor(r1_fp4, dev, par, get_engine("sglang"))
    assert world._lm_split() == "world"
    t = np.array([16.0])
    gemm, gather = world._lm_head_terms(t)
    assert gemm.nbytes[0] == pytest.approx(V // 8 * H * 2.0 + 128 * (H + V // 8) * 2.0)
    # the rows in (128 x 7,168 bf16) and the logits out (128 x 129,280 bf16), over 8 GPUs
    expect = world._collective("all_gather", np.array([128 * H * 2.0]), 8)
    expect = expect + world._collective("all_gather", np.array([128 * V * 2.0]), 8)
    assert gather.seconds[0] == pytest.approx(float(expect[0]))
    own = replace(get_engine("sglang"), lm_head_split="attention_tp")
    copy = Predictor(r1_fp4, dev, par, own)
    assert copy._lm_head_terms(t)[0].nbytes[0] == pytest.approx(V * H * 2.0 + 16 * (H + V) * 2.0)
    assert Predictor(r1_fp4, dev, Parallel(tp=8), get_engine("sglang"))._lm_split() == (
        "attention_tp"
    )
    # a small batch reads an eighth of the head; a large one pays for gathering the logits
    few, many = np.array([4.0]), np.array([512.0])
    assert sum(x.seconds[0] for x in world._lm_head_terms(few)) < sum(
        x.seconds[0] for x in copy._lm_head_terms(few)
    )
    assert sum(x.seconds[0] for x in world._lm_head_terms(many)) > sum(
        x.seconds[0] for x in copy._lm_head_terms(many)
    )


def test_trtllm_lm_head_tp_in_adp_follows_its_row_heuristic(r1_fp4) -> None:
    """`create_lm_head_tp_mapping`: 256 // rows rounded up to a power of two, at most the GPUs
    of a node (4 on GB200): 16 rows a rank share the head four ways, 64 rows four ways, 128
    rows two ways, 300 rows not at all (no gather)."""
    eng = replace(get_engine("trtllm"), lm_head_split="adp_tp")
    pred = Predictor(r1_fp4, get_device("gb200"), Parallel(tp=1, dp=8, ep=8), eng)
    t = np.array([16.0, 64.0, 128.0, 300.0])
    gemm, gather = pred._lm_head_terms(t)
    share = np.array([4, 4, 2, 1])
    weights = V // share * H * 2.0
    rows = t * share
    assert gemm.nbytes == pytest.approx(weights + rows * (H + V // share) * 2.0)
    assert gather.seconds[3] == 0.0 and (gather.seconds[:3] > 0).all()


def test_an_unknown_split_is_refused() -> None:
    with pytest.raises(ServesimError, match="lm_head_split"):
        replace(get_engine("sglang"), lm_head_split="vocab")


def test_recipes_name_the_split() -> None:
    """srt-slurm recipes: TensorRT-LLM's `enable_lm_head_tp_in_adp: true` and SGLang's
    `enable-dp-lm-head: true` come through as the pools' `lm_head` setting."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    trt = (
        "backend:\n  trtllm_config:\n    prefill:\n      max_num_tokens: 8192\n"
        "    decode:\n      enable_attention_dp: true\n      enable_lm_head_tp_in_adp: true\n"
    )
    assert lay.recipe_settings(trt) == ("token_budget=8192", "lm_head=adp_tp")
    # a context server without the overlap scheduler (`disable_overlap_scheduler: true`)
    off = trt.replace(
        "max_num_tokens: 8192\n", "max_num_tokens: 8192\n      disable_overlap_scheduler: true\n"
    )
    assert lay.recipe_settings(off) == ("overlap=off token_budget=8192", "lm_head=adp_tp")
    sgl = (
        "backend:\n  sglang_config:\n    prefill:\n      chunked-prefill-size: 8192\n"
        "    decode:\n      enable-dp-attention: true\n      enable-dp-lm-head: true\n"
    )
    assert lay.recipe_settings(sgl) == ("token_budget=8192", "lm_head=attention_tp")
