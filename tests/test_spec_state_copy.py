"""After a speculative verify pass of a Gated DeltaNet model, SGLang copies each sequence's
accepted recurrent state out of the verify's per-position cache into the state pool
(`update_mamba_state_after_mtp_verify`): with eager advanced indexing before 0.5.10 (gather
into a temporary, then scatter: the state streamed four times), with one fused Triton kernel
from 0.5.10 (twice). vLLM starts the next step from the accepted slot and copies nothing."""

from __future__ import annotations

import pytest

from servesim.predictor import roofline
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.predictor.speculative import SpeculativePredictor
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding

QWEN35 = load_model("Qwen/Qwen3.5-397B-A17B").with_dtypes(weight="fp8", kv="fp8")
B200 = get_device("b200_sxm")
MTP3 = SpeculativeDecoding("mtp", 3)
TP4 = Parallel(tp=4)


def _predictor(engine: str, version: str, spec: bool = True) -> Predictor:
    eng = get_engine(engine).with_overrides(version=version, max_num_seqs=4096)
    if not spec:
        return Predictor(QWEN35, B200, TP4, eng, latency_model="roofline")
    return SpeculativePredictor(QWEN35, B200, MTP3, TP4, eng, latency_model="roofline")


def test_the_passes_follow_the_engine_release() -> None:
    sgl = get_engine("sglang")
    for version, passes in (("0.5.8.post1", 4), ("0.5.9", 4), ("0.5.10", 2), ("0.5.23", 2)):
        assert sgl.with_overrides(version=version).spec_state_copy_passes() == passes
    assert sgl.with_overrides(version="").spec_state_copy_passes() == 2  # newest
    assert get_engine("vllm").with_overrides(version="0.12.0").spec_state_copy_passes() == 0
    assert get_engine("trtllm").spec_state_copy_passes() == 0


def test_the_copy_streams_every_linear_layers_accepted_state() -> None:
    # Qwen3.5-397B-A17B on 4 GPUs: 45 Gated DeltaNet layers, 64 v heads of 128 x 128 fp32
    # values (16 a GPU) and a 3-tap conv window over 2·16·128 + 64·128 = 12,288 channels
    # (3,072 a GPU, bf16).
    assert QWEN35.num_linear_layers == 45
    per_layer = 16 * 128 * 128 * 4 + 3 * 3072 * 2  # 1,066,944 bytes a sequence a GPU
    seqs = 64
    p = _predictor("sglang", "0.5.9")
    ops = {op.name: op for op in p.ops(BatchShape(seqs, seqs * 1500))}
    copy = ops["verify:linear_state_accept"]
    moved = 4 * seqs * 45 * per_layer  # read, write, read, write
    assert copy.seconds == pytest.approx(float(roofline.elementwise_np(moved, B200, p.fit)))
    assert copy.calls == 4 and copy.provenance == "roofline"
    fused = _predictor("sglang", "0.5.10")
    two = {op.name: op for op in fused.ops(BatchShape(seqs, seqs * 1500))}
    half = float(roofline.elementwise_np(moved / 2, B200, p.fit))
    assert two["verify:linear_state_accept"].seconds == pytest.approx(half)


def test_the_copy_is_in_the_step_time_and_only_after_verify() -> None:
    seqs, ctx = 64, 64 * 1500
    eager, fused = _predictor("sglang", "0.5.9"), _predictor("sglang", "0.5.10")
    one = float(roofline.elementwise_np(2 * seqs * 45 * 1_066_944, B200, eager.fit))
    two = float(roofline.elementwise_np(4 * seqs * 45 * 1_066_944, B200, eager.fit))
    assert eager.step_s(seqs, ctx, ()) - fused.step_s(seqs, ctx, ()) == pytest.approx(
        two - one, rel=1e-3
    )
    # A draft pass names its queries: no copy in it; vLLM's verify copies nothing.
    assert eager.draft_pass_coeffs(seqs) == fused.draft_pass_coeffs(seqs)
    vllm = _predictor("vllm", "0.12.0")
    assert not [op for op in vllm.ops(BatchShape(seqs, ctx)) if "state_accept" in op.name]
    # Without speculative decoding there is nothing to accept.
    plain = _predictor("sglang", "0.5.9", spec=False)
    assert not [op for op in plain.ops(BatchShape(seqs, ctx)) if "state_accept" in op.name]
    # It grows with the batch: each sequence's state is copied.
    assert eager.step_s(2 * seqs, 2 * ctx, ()) - fused.step_s(2 * seqs, 2 * ctx, ()) > two - one
