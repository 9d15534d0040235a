"""SGLang before 0.5.16 compiles FLA's l2norm kernel once per prefill token count (its row
count is a `tl.constexpr`), inline on the scheduler, for every Gated DeltaNet / KDA model: the
first prefill forward of a new token count pays ~90 ms (sgl-project/sglang PR #23448), later
ones of the same count nothing."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

QWEN35 = load_model("Qwen/Qwen3.5-397B-A17B").with_dtypes(weight="fp8", kv="fp8")
B200 = get_device("b200_sxm")
# SGLang's loop alone (no frontend), as InferenceX ran it for Qwen3.5.
SGL = get_engine("sglang").with_overrides(request_overhead_s=0.0, tokenize_s_per_token=0.0)


def test_the_compile_comes_with_sglang_releases_before_the_fix() -> None:
    for version, seconds in (
        ("0.5.2", 0.090), ("0.5.9", 0.090), ("0.5.15.post1", 0.090), ("0.5.16", 0.0),
        ("0.5.23", 0.0), ("", 0.0),
    ):  # fmt: skip
        assert SGL.with_overrides(version=version).token_count_compile() == seconds
    # vLLM's and TensorRT-LLM's profiles compile nothing per count; a setting wins over the rule.
    assert get_engine("vllm").with_overrides(version="0.12.0").token_count_compile() == 0.0
    assert SGL.with_overrides(version="0.5.9", token_count_compile_s=0.0).token_count_compile() == 0
    assert SGL.with_overrides(token_count_compile_s=0.05).token_count_compile() == 0.05
    with pytest.raises(ServesimError, match="token_count_compile_s must be ≥ 0 s"):
        SGL.with_overrides(token_count_compile_s=-1.0)


def test_only_gated_deltanet_and_kda_models_pay_it() -> None:
    sgl = SGL.with_overrides(version="0.5.9")
    qwen = Deployment(model=QWEN35, device=B200, parallel=Parallel(tp=8), engine=sgl)
    assert qwen.predictor().token_count_compile_s == 0.090
    llama = Deployment(model=load_model("meta-llama/Llama-3.1-8B"), device=B200, engine=sgl)
    assert llama.predictor().token_count_compile_s == 0.0
    mamba2 = load_model("nvidia/Nemotron-H-56B-Base-8K")
    assert mamba2.linear_kind == "mamba2"
    nemo = Deployment(model=mamba2, device=B200, parallel=Parallel(tp=4), engine=sgl)
    assert nemo.predictor().token_count_compile_s == 0.0


def _ttft(engine_version: str, compile_s: float | None, **settings: object) -> np.ndarray:
    """Three lone requests 20 s apart: 1,000, 1,000 and 900 prompt tokens, 4 output tokens."""
    engine = SGL.with_overrides(version=engine_version, token_count_compile_s=compile_s)
    engine = engine.with_overrides(**settings)
    dep = Deployment(model=QWEN35, device=B200, parallel=Parallel(tp=8), engine=engine)
    w = Workload(np.array([0.0, 20.0, 40.0]), np.array([1000, 1000, 900]), np.array([4, 4, 4]))
    return simulate(dep, w).columns()["ttft_s"]


def test_a_new_token_count_pays_the_compile_once_per_server() -> None:
    """Each prefill runs alone, so the compile adds exactly its 90 ms to the first 1,000-token
    prefill and to the 900-token one, and nothing to the second 1,000-token one."""
    paid = _ttft("0.5.9", None)
    free = _ttft("0.5.9", 0.0)
    assert paid - free == pytest.approx([0.090, 0.0, 0.090], abs=1e-9)
    assert np.array_equal(_ttft("0.5.16", None), free)  # the fixed release: none
    # With the radix cache off (as InferenceX launches it) SGLang keeps its overlap schedule,
    # which returns a prefill's first token after the next launch: the compile is host time of
    # the prefill's own launch, so it still adds exactly 90 ms.
    paid = _ttft("0.5.9", None, prefix_caching=False)
    free = _ttft("0.5.9", 0.0, prefix_caching=False)
    assert paid - free == pytest.approx([0.090, 0.0, 0.090], abs=1e-9)


def test_the_cli_sets_the_compile(cli_mean_ttft_s) -> None:
    """`--token-count-compile-ms 0` turns it off for SGLang 0.5.9: the lone request's TTFT
    drops by the 90 ms it paid."""
    args = "simulate --model Qwen/Qwen3.5-397B-A17B --device b200_sxm --tp 8 --engine sglang"
    args += " --engine-version 0.5.9 --weight-dtype fp8 --kv-dtype fp8 --num-requests 1 --rate 1"
    args += " --prompt fixed:1000 --output fixed:4"
    paid, free = cli_mean_ttft_s(args), cli_mean_ttft_s(args + " --token-count-compile-ms 0")
    assert paid - free == pytest.approx(0.090, abs=1e-9)
