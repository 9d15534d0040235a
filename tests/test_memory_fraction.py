"""The engine's memory fraction: of the whole device (vLLM gpu_memory_utilization, SGLang
mem_fraction_static) or of the memory left free after loading (TRT-LLM's
KvCacheConfig.free_gpu_memory_fraction)."""

from __future__ import annotations

import pytest

from servesim.errors import ServesimError
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.memory import activation_reserve_bytes, memory_layout, weight_bytes_per_device
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel


def test_trtllm_gives_the_kv_cache_a_fraction_of_the_free_memory() -> None:
    model, dev, par = (
        load_model("meta-llama/Llama-3.1-8B-Instruct"),
        get_device("h100_sxm"),
        Parallel(),
    )
    w = weight_bytes_per_device(model, par)
    r = activation_reserve_bytes(model, par, 8192)
    free = memory_layout(model, dev, par, 8192, mem_util=0.9, mem_util_of_free=True)
    total = memory_layout(model, dev, par, 8192, mem_util=0.9)
    # Hand: 0.9 × (80 GB − weights − reserve) against 0.9 × 80 GB − weights − reserve.
    assert free.kv_bytes == pytest.approx(0.9 * (dev.mem_bytes - w - r), rel=1e-12)
    assert total.kv_bytes == pytest.approx(0.9 * dev.mem_bytes - w - r, rel=1e-12)
    assert free.kv_bytes - total.kv_bytes == pytest.approx(0.1 * (w + r), rel=1e-9)
    assert get_engine("trtllm").mem_util_of_free and not get_engine("vllm").mem_util_of_free


def test_a_model_that_fills_the_device_still_fits_under_trtllm_but_not_under_vllm() -> None:
    """DeepSeek-R1 in fp8 on 4 × B200 (measured by InferenceX with TRT-LLM): ~168 GB of weights
    per 180 GB GPU leave no room at 90 % of the whole device, some at 90 % of what is free."""
    model = load_model("deepseek-ai/DeepSeek-R1").with_dtypes(weight="fp8", expert="fp8")
    dev, par = get_device("b200_sxm"), Parallel(tp=4, ep=4)
    mem = memory_layout(model, dev, par, 8192, mem_util=0.9, mem_util_of_free=True)
    assert 0 < mem.kv_bytes < 0.1 * dev.mem_bytes
    with pytest.raises(ServesimError, match="utilisation"):
        memory_layout(model, dev, par, 8192, mem_util=0.9)
