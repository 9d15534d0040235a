"""A checkpoint's MTP layers take memory only when MTP drafting loads them: without it vLLM,
SGLang and TensorRT-LLM skip the layers past `num_hidden_layers` when they load the weights."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.memory import weight_bytes_per_device
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding

R1 = load_model("deepseek-ai/DeepSeek-R1")  # fp8 checkpoint with one MTP layer


def test_mtp_weights_count_only_when_drafting() -> None:
    """DeepSeek-R1 on 8 B200s: the MTP layer adds an eighth of its bytes a GPU with MTP on and
    nothing without; the model itself still reports it. Its size by hand: the model card's 14 B
    of MTP-module weights less the embedding and head it shares with the model (2 × 129,280 ×
    7,168 = 1.85 B) is ~12.1 B parameters, stored mostly in fp8 (one byte each)."""
    assert R1.num_mtp_layers == 1
    shared = 2 * 129_280 * 7_168
    assert (R1.mtp_params() + shared) / 1e9 == pytest.approx(14.0, rel=0.05)
    assert R1.mtp_params() <= R1.mtp_bytes() <= 1.2 * R1.mtp_params()
    par = Parallel(tp=8)
    dep = Deployment(
        model=R1, device=get_device("b200_sxm"), parallel=par, engine=get_engine("sglang")
    )
    plain = dep.memory()
    drafting = replace(dep, speculative=SpeculativeDecoding("mtp", 3)).memory()
    assert drafting.weight_bytes - plain.weight_bytes == pytest.approx(R1.mtp_bytes() / 8)
    assert plain.weight_bytes == pytest.approx(weight_bytes_per_device(R1.loaded(False), par))
    assert drafting.weight_bytes == pytest.approx(weight_bytes_per_device(R1, par))
    assert plain.kv_tokens > drafting.kv_tokens
    assert R1.loaded(True) is R1
    assert R1.loaded(False).num_mtp_layers == 0


def test_a_layout_that_fits_only_without_the_mtp_layer() -> None:
    """DeepSeek-R1 fp8 on 4 GB200s near SGLang's --mem-fraction-static 0.86 (InferenceX ran it
    without MTP): 0.87 × 189,471 MiB = 172.85 GB holds the weights and the fixed reserve with a
    KV cache left over that is smaller than the MTP layer's quarter, so with MTP on it does not
    fit. (At 0.86 itself the estimate now leaves no KV at all, short by 0.04 GB, since MLA's
    down-projections count whole on every TP rank, as the engines hold them: the reserve is
    that much too cautious for the run InferenceX made.)"""
    eng = get_engine("sglang").with_overrides(mem_util=0.87, mem_fraction_rule="")
    dep = Deployment(model=R1, device=get_device("gb200"), parallel=Parallel(tp=4), engine=eng)
    mem = dep.memory()
    assert mem.usable_bytes == pytest.approx(0.87 * 189_471 * 2**20)
    assert 0 < mem.kv_bytes < R1.mtp_bytes() / 4
    with pytest.raises(ServesimError, match=r"needs [0-9.]+ GB per device for weights"):
        replace(dep, speculative=SpeculativeDecoding("mtp", 3)).memory()


def test_pipeline_stages_each_hold_a_whole_embedding_table() -> None:
    """The first stage holds the input embedding and the last the output head, each whole (split
    by TP, not by PP); the layers split over the stages. Dividing both tables by PP put
    Llama-3.1-8B at 4.02 GB a device on 4 stages where the busiest holds 4.54."""
    m = load_model("meta-llama/Llama-3.1-8B")
    table = 128_256 * 4096 * 2.0  # vocab x hidden in bf16
    one = weight_bytes_per_device(m, Parallel())
    assert weight_bytes_per_device(m, Parallel(pp=4)) == pytest.approx(
        (one - 2 * table) / 4 + table
    )
    assert weight_bytes_per_device(m, Parallel(pp=4)) / 1e9 == pytest.approx(4.54, abs=0.01)
    assert weight_bytes_per_device(m, Parallel(pp=2)) == pytest.approx(one / 2)  # one table each
    assert weight_bytes_per_device(m, Parallel(tp=2, pp=4)) == pytest.approx(
        ((one - 2 * table) / 4 + table) / 2
    )
