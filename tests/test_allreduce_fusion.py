"""TensorRT-LLM folds the residual add and RMSNorm after each TP all-reduce into the all-reduce
kernel (its models' eager fusion), for the model families and layouts it enables it for."""

from __future__ import annotations

import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import (
    EngineProfile,
    fused_allreduce_max_tokens,
    fuses_allreduce_norm,
    get_engine,
)
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

H200 = get_device("h200_sxm")
LLAMA70 = load_model("meta-llama/Llama-3.1-70B").with_dtypes(weight="fp8", kv="fp8")
BATCH = BatchShape(32, 32 * 1500)


def _ops(pred: Predictor) -> dict[str, float]:
    return {op.name: op.seconds for op in pred.ops(BATCH)}


def test_a_fused_decode_step_drops_exactly_the_norms_and_residual_adds() -> None:
    """Claim: Llama-3.1-70B (hidden 8,192) on TensorRT-LLM at TP 8 prices no norm or residual
    pass of its own, and its iteration is the unfused one less exactly those two operators;
    every other operator, the all-reduce included, is unchanged."""
    trt = get_engine("trtllm")
    fused = Predictor(LLAMA70, H200, Parallel(tp=8), engine=trt)
    plain = Predictor(
        LLAMA70, H200, Parallel(tp=8), engine=trt.with_overrides(allreduce_norm_fusion="none")
    )
    a, b = _ops(fused), _ops(plain)
    assert "norms" not in a and "residual_add" not in a
    assert b["norms"] > 0 and b["residual_add"] > 0
    assert {k: v for k, v in b.items() if k not in ("norms", "residual_add")} == a
    saved = b["norms"] + b["residual_add"]
    assert fused.iteration(BATCH).seconds == pytest.approx(
        plain.iteration(BATCH).seconds - saved, rel=1e-12
    )


def test_messages_beyond_the_workspace_go_to_nccl_and_pay_their_norms() -> None:
    """Claim: TensorRT-LLM runs an all-reduce on its fused kernel only within its 8 MB
    workspace (TP > 2); 488 tokens of 8,192 bf16 values (7,995,392 bytes) fit, 489 tokens
    (8,011,776 bytes) go to NCCL, after which the residual add and the norm run on their own,
    as the unfused engine prices them."""
    trt = get_engine("trtllm")
    fused = Predictor(LLAMA70, H200, Parallel(tp=8), engine=trt)
    plain = Predictor(
        LLAMA70, H200, Parallel(tp=8), engine=trt.with_overrides(allreduce_norm_fusion="none")
    )
    for tokens, kept in ((488, False), (489, True), (4096, True)):
        batch = BatchShape(prefill=((tokens, 0),))
        a = {op.name: op.seconds for op in fused.ops(batch)}
        b = {op.name: op.seconds for op in plain.ops(batch)}
        assert ("norms" in a) is kept, tokens
        if kept:
            assert a["norms"] == b["norms"] and a["residual_add"] == b["residual_add"]


@pytest.mark.parametrize(
    ("engine", "model_type", "hidden", "tp", "dp", "fused"),
    [
        ("trtllm", "llama", 8192, 8, 1, True),  # Llama-3.1-70B
        ("trtllm", "llama", 4096, 8, 1, False),  # Llama-3.1-8B: "small models" keep it off
        ("trtllm", "llama", 8192, 1, 1, False),  # no all-reduce to fuse into
        ("trtllm", "deepseek_v3", 7168, 8, 1, True),
        ("trtllm", "kimi_k2", 7168, 8, 1, True),
        ("trtllm", "deepseek_v3", 7168, 1, 8, False),  # attention DP: no TP all-reduce
        ("trtllm", "qwen3", 5120, 4, 1, False),  # TRTLLM_QWEN3_EAGER_FUSION_DISABLED=1
        ("sglang", "deepseek_v3", 7168, 8, 1, False),  # opt-in there
        ("vllm", "llama", 8192, 8, 1, False),
    ],
)
def test_which_layouts_fuse(
    engine: str, model_type: str, hidden: int, tp: int, dp: int, fused: bool
) -> None:
    got = fuses_allreduce_norm(get_engine(engine), model_type, hidden, tp, dp, nvlink=True)
    assert got is fused


def test_an_engine_can_fuse_for_every_model_and_refuses_unknown_modes() -> None:
    """SGLang's `--enable-flashinfer-allreduce-fusion` fuses for any model with TP, up to
    2,048 tokens."""
    sglang = get_engine("sglang").with_overrides(allreduce_norm_fusion="flashinfer")
    assert fused_allreduce_max_tokens(sglang, 5120, 4) == 2048
    assert fuses_allreduce_norm(sglang, "qwen3", 5120, 4, 1, nvlink=True)
    assert not fuses_allreduce_norm(sglang, "qwen3", 5120, 1, 1, nvlink=True)
    with pytest.raises(ServesimError, match="allreduce_norm_fusion"):
        EngineProfile(allreduce_norm_fusion="sometimes")


def test_sglang_fuses_up_to_2048_tokens_when_launched_with_the_flag() -> None:
    """Claim: SGLang with `--enable-flashinfer-allreduce-fusion` prices no norm or residual
    kernel for iterations of up to 2,048 tokens at TP 4, and the unfused ones beyond."""
    qwen = load_model("Qwen/Qwen3-32B")
    b200 = get_device("b200_sxm")
    flag = get_engine("sglang").with_overrides(allreduce_norm_fusion="flashinfer")
    pred = Predictor(qwen, b200, Parallel(tp=4), engine=flag)
    plain = Predictor(qwen, b200, Parallel(tp=4), engine=get_engine("sglang"))
    for tokens, kept in ((2048, False), (2049, True)):
        batch = BatchShape(prefill=((tokens, 0),))
        names = {op.name for op in pred.ops(batch)}
        assert ("norms" in names) is kept and ("residual_add" in names) is kept
    assert "norms" in {op.name for op in plain.ops(BatchShape(prefill=((512, 0),)))}


def test_vllm_fuses_inputs_up_to_its_per_tp_size_limit() -> None:
    """vLLM's `enable_fi_allreduce_fusion` pass fuses an all-reduce whose input is at most the
    MiB its table gives the TP degree: `max_size // (hidden * 2)` tokens. With InferenceX's
    2025 Llama-3.1-70B B200 thresholds (32 MiB at TP 4, 8 at TP 8) that is 2,048 and 512 tokens
    of 8,192 bf16 values; vLLM's own defaults (64/32/1 MiB at 2/4/8) give 4,096, 2,048 and 64;
    TP 3, not in the table, is not fused; a bad threshold is one sentence."""
    inferencex = get_engine("vllm").with_overrides(
        allreduce_norm_fusion="vllm", allreduce_fusion_max_mib=((2, 32.0), (4, 32.0), (8, 8.0))
    )
    assert fused_allreduce_max_tokens(inferencex, 8192, 4) == 2048
    assert fused_allreduce_max_tokens(inferencex, 8192, 8) == 512
    default = get_engine("vllm").with_overrides(allreduce_norm_fusion="vllm")
    got = [fused_allreduce_max_tokens(default, 8192, tp) for tp in (2, 4, 8, 3)]
    assert got == [4096, 2048, 64, 0]
    assert fuses_allreduce_norm(default, "qwen3", 5120, 4, 1, nvlink=True)
    b200 = get_device("b200_sxm")
    pred = Predictor(LLAMA70, b200, Parallel(tp=8), engine=inferencex)
    for tokens, kept in ((512, False), (513, True)):
        names = {op.name for op in pred.ops(BatchShape(prefill=((tokens, 0),)))}
        assert ("norms" in names) is kept and ("residual_add" in names) is kept
    with pytest.raises(ServesimError, match="allreduce_fusion_max_mib"):
        EngineProfile(allreduce_fusion_max_mib=((1, 32.0),))


def test_the_predict_flag_sets_the_fusion(predict_op_names) -> None:
    """`servesim predict --engine sglang --allreduce-norm-fusion flashinfer` lists no norm or
    residual operator for a decode step at TP 8; without the flag SGLang has them."""
    base = ["--model", "meta-llama/Llama-3.1-70B", "--device", "h200_sxm", "--tp", "8"]
    base += ["--engine", "sglang", "--decode-seqs", "32"]
    plain = predict_op_names(base)
    fused = predict_op_names([*base, "--allreduce-norm-fusion", "flashinfer"])
    assert {"norms", "residual_add"} <= plain
    assert not {"norms", "residual_add"} & fused


def test_no_fusion_without_nvlink_or_across_nodes() -> None:
    """Claim: without NVLink peers (L40S, PCIe) or with a TP group spanning two 8-GPU nodes,
    TensorRT-LLM falls back to NCCL, so the norms and residual adds keep their own kernels."""
    trt = get_engine("trtllm")
    assert not fuses_allreduce_norm(trt, "llama", 8192, 4, 1, nvlink=False)
    l40s = Predictor(LLAMA70, get_device("l40s"), Parallel(tp=4), engine=trt)
    assert "norms" in {op.name for op in l40s.ops(BATCH)}
    r1 = load_model("deepseek-ai/DeepSeek-R1")
    two_nodes = Predictor(r1, get_device("h100_sxm"), Parallel(tp=16, ep=16), engine=trt)
    one_node = Predictor(r1, H200, Parallel(tp=8, ep=8), engine=trt)
    assert "norms" in {op.name for op in two_nodes.ops(BATCH)}
    assert "norms" not in {op.name for op in one_node.ops(BATCH)}
