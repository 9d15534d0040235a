"""The engine's memory fraction: of the whole device (vLLM gpu_memory_utilization, SGLang
mem_fraction_static) or of the memory left free after loading (TRT-LLM's
KvCacheConfig.free_gpu_memory_fraction)."""

from __future__ import annotations

import pytest

from servesim.errors import ServesimError
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.memory import (
    FIXED_RESERVE_BYTES,
    activation_reserve_bytes,
    engine_memory,
    memory_layout,
    sglang_mem_fraction,
    weight_bytes_per_device,
)
from servesim.spec.model import load_model, spec_from_config
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
    # Hand: 0.9 × (device − weights − reserve) against 0.9 × device − weights − reserve.
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


def test_sglang_sets_its_fraction_by_its_own_rule() -> None:
    """SGLang's default --mem-fraction-static (server_args.py, v0.5), by hand in MiB: an H100
    (81,559 MiB) at TP 1 reserves 512 + 1.5 × 8,192 + 2 × 256 + 1/8 × 1,024 = 13,440 MiB, so
    (81,559 − 13,440) / 81,559 = 0.835; a B200 (183,359 MiB) at TP 8 reserves 512 + 1.5 × 16,384
    + 2 × 512 + 1,024 = 27,136 MiB, 0.852; an MTP/EAGLE head adds 2 GiB, a draft model 6; an
    L4 (23,034 MiB) at TP 1 reserves 512 + 3,072 + 48 + 128 = 3,760 MiB (no 10 GiB floor below
    60 GiB), 0.837."""
    h100, b200, l4 = get_device("h100_sxm"), get_device("b200_sxm"), get_device("l4")
    assert sglang_mem_fraction(h100, Parallel()) == 0.835
    assert sglang_mem_fraction(b200, Parallel(tp=8)) == 0.852
    assert sglang_mem_fraction(h100, Parallel(), speculative="mtp") == round(
        (81559 - 13440 - 2048) / 81559, 3
    )
    assert sglang_mem_fraction(h100, Parallel(), speculative="draft") == round(
        (81559 - 13440 - 6144) / 81559, 3
    )
    assert sglang_mem_fraction(l4, Parallel()) == round((23034 - 3760) / 23034, 3) == 0.837
    # A small chunk still reserves the 10 GiB floor on a large device.
    assert sglang_mem_fraction(h100, Parallel(), chunked_prefill_tokens=2048) == round(
        (81559 - 10240) / 81559, 3
    )


def test_sglang_fraction_covers_weights_and_kv_only() -> None:
    """Under SGLang's rule the fraction already leaves the activations out: the KV cache is
    fraction × device − weights − the fixed 2 GB, with no activation reserve taken again."""
    model, dev, par = load_model("Qwen/Qwen3-32B"), get_device("h100_sxm"), Parallel()
    sglang = get_engine("sglang")
    args = engine_memory(sglang, dev, par)
    assert args == {"mem_util": 0.835, "mem_util_of_free": False, "reserve_in_fraction": True}
    mem = memory_layout(model, dev, par, 8192, **args)
    w = weight_bytes_per_device(model, par)
    assert mem.kv_bytes == pytest.approx(0.835 * dev.mem_bytes - w - FIXED_RESERVE_BYTES)
    # An explicit fraction (a launch's --mem-fraction-static) turns the rule off, not the meaning.
    fixed = engine_memory(sglang.with_overrides(mem_util=0.8), dev, par)
    assert fixed == {"mem_util": 0.8, "mem_util_of_free": False, "reserve_in_fraction": True}
    # Under attention DP the profile's fraction stands (the rule's padding outgrows the device).
    assert engine_memory(sglang, dev, Parallel(dp=8, ep=8))["mem_util"] == sglang.mem_util
    # vLLM keeps its fraction of everything it allocates.
    assert engine_memory(get_engine("vllm"), dev, par)["reserve_in_fraction"] is False


def test_sglang_kv_tokens_match_a_logged_server() -> None:
    """SGLang's own log for Qwen3-235B-A22B-FP8 on 4 × H100 at --mem-fraction-static 0.93:
    "KV Cache is allocated. #tokens: 367404" (vllm-project/vllm#21348). The driver's 81,559 MiB
    and a fraction of weights and KV only give that within 5 % (an 80·10⁹-byte device with the
    activation reserve taken again gave 28 % fewer)."""
    model = load_model("Qwen/Qwen3-235B-A22B-FP8")
    dev, par = get_device("h100_sxm"), Parallel(tp=4)
    assert model.weight_dtype == "fp8"
    sglang = get_engine("sglang").with_overrides(mem_util=0.93)
    mem = memory_layout(model, dev, par, 8192, **engine_memory(sglang, dev, par))
    assert mem.kv_tokens == pytest.approx(367_404, rel=0.05)


def test_sglang_captures_decode_graphs_up_to_its_default_size() -> None:
    """SGLang's default --cuda-graph-max-bs (server_args.py, v0.5) by memory tier and size:
    256 below TP 4 and 512 from it on an H100 (< 160 GiB), 512 on a B200, 160 on an L40S at
    TP 4 (< 60 GiB); an explicit size stays. A 300-sequence decode replays a graph at TP 4 and
    runs eager (host-bound) at TP 2."""
    from servesim.predictor.iteration import Predictor

    m, sglang = load_model("meta-llama/Llama-3.1-70B"), get_engine("sglang")
    h100 = get_device("h100_sxm")
    sizes = {
        (name, tp): Predictor(m, get_device(name), Parallel(tp=tp), sglang).engine
        for name, tp in (("h100_sxm", 2), ("h100_sxm", 4), ("b200_sxm", 1), ("l40s", 4))
    }
    assert {k: e.cuda_graph_max_seqs for k, e in sizes.items()} == {
        ("h100_sxm", 2): 256,
        ("h100_sxm", 4): 512,
        ("b200_sxm", 1): 512,
        ("l40s", 4): 160,
    }
    fixed = Predictor(m, h100, Parallel(tp=4), sglang.with_overrides(cuda_graph_max_seqs=128))
    assert fixed.engine.cuda_graph_max_seqs == 128
    tp4, tp2 = (
        Predictor(m, h100, Parallel(tp=4), sglang),
        Predictor(m, h100, Parallel(tp=2), sglang),
    )
    assert tp4.host_s(300, 0, 300) == 0.0 and tp2.host_s(300, 0, 300) > 0.0
    # The memory rule reserves an explicit size's slots, 2 MiB each: at TP 4 on an H100,
    # 512 + 1.5 × 8,192 + 2 × 128 + 4/8 × 1,024 = 13,568 MiB, (81,559 − 13,568) / 81,559 = 0.834,
    # against 14,336 MiB and 0.824 with the default 512 slots.
    explicit = engine_memory(sglang.with_overrides(cuda_graph_max_seqs=128), h100, Parallel(tp=4))
    assert explicit["mem_util"] == 0.834
    assert engine_memory(sglang, h100, Parallel(tp=4))["mem_util"] == 0.824


def test_vllm_kv_tokens_match_a_logged_server() -> None:
    """vLLM's own error for DeepSeek-R1-Distill-Qwen-14B on 2 × RTX 4090 (24,564 MiB each) at
    --gpu-memory-utilization 0.98: "the maximum number of tokens that can be stored in KV cache
    (81536)" (vllm-project/vllm#13061; V0, whose chunked-prefill budget was 2,048 tokens). The
    driver's total gives that within 3 % (24·10⁹ bytes gave 63,776, −22 %)."""
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
        "torch_dtype": "bfloat16",
    }
    model = spec_from_config(cfg, "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B")
    dev = get_device("rtx_4090")
    assert dev.mem_bytes == 24564 * 2**20
    mem = memory_layout(model, dev, Parallel(tp=2), 2048, mem_util=0.98)
    assert mem.kv_tokens == pytest.approx(81_536, rel=0.03)


def test_sglang_chunks_prefill_by_its_default_size_for_the_device() -> None:
    """SGLang's default --chunked-prefill-size (server_args.py, v0.5) by memory tier: 8,192 on
    an H100 or H200 (< 160 GiB), 16,384 on a B200 (179 GiB), 4,096 on an L40S (< 60 GiB). A
    deployment's or the engine's explicit budget replaces the rule; vLLM keeps its 8,192."""
    from servesim.sim.deployment import Deployment

    m = load_model("Qwen/Qwen3-32B")
    sglang = get_engine("sglang")

    def budget(device: str, engine=sglang, **kw) -> int:
        dep = Deployment(m, get_device(device), Parallel(tp=2), engine, **kw)
        return dep.batching()[1]

    assert {d: budget(d) for d in ("h100_sxm", "h200_sxm", "b200_sxm", "l40s")} == {
        "h100_sxm": 8192,
        "h200_sxm": 8192,
        "b200_sxm": 16384,
        "l40s": 4096,
    }
    assert budget("b200_sxm", max_num_batched_tokens=4096) == 4096
    assert budget("b200_sxm", sglang.with_overrides(max_num_batched_tokens=2048)) == 2048
    assert budget("b200_sxm", get_engine("vllm")) == 8192


def test_vllm_takes_its_batch_defaults_for_the_gpu() -> None:
    """vLLM's OpenAI-server defaults (arg_utils.py `get_batch_defaults`): 8,192 tokens and 1,024
    sequences on a GPU of 70 GiB or more, except an A100; 2,048 and 256 on an A100, an L40S or
    an L4. Explicit limits, on the deployment or as engine flags, stand."""
    from servesim.sim.deployment import Deployment

    m = load_model("meta-llama/Llama-3.1-8B")
    vllm = get_engine("vllm")

    def limits(device: str, engine=vllm, **kw) -> tuple[int, int]:
        return Deployment(m, get_device(device), Parallel(), engine, **kw).batching()[:2]

    assert {d: limits(d) for d in ("h100_sxm", "b200_sxm", "a100_sxm", "l40s", "l4")} == {
        "h100_sxm": (1024, 8192),
        "b200_sxm": (1024, 8192),
        "a100_sxm": (256, 2048),
        "l40s": (256, 2048),
        "l4": (256, 2048),
    }
    assert limits("a100_sxm", max_num_seqs=64, max_num_batched_tokens=4096) == (64, 4096)
    flags = vllm.with_overrides(max_num_seqs=512, max_num_batched_tokens=16384)
    assert limits("l4", flags) == (512, 16384)
    assert limits("l4", vllm.with_overrides(max_num_seqs=512)) == (512, 2048)


def test_sglang_before_0_5_3_reserves_by_the_older_rule() -> None:
    """SGLang before 0.5.3 (server_args.py `__post_init__`, model_executor/cuda_graph_runner.py,
    read in 0.4.9.post6 ... 0.5.2) reserved a fixed amount by memory tier, not by chunk and
    graphs: on an H100 (81,559 MiB, below 90 GiB) (9.5 + TP·PP/2) GiB, so at TP 2 10,752 MiB and
    (81,559 − 10,752) / 81,559 = 0.868 (0.5.3's rule: 13,568 MiB, 0.834); on a B200 32 GiB,
    (183,359 − 32,768) / 183,359 = 0.821; an MTP head 2 GiB more. Its graphs went up to 160
    sequences (256 above 90 GiB, 512 above 160,000 MiB) and its chunk was 8,192 below 160 GiB,
    an L40S's too (0.5.3: 4,096 and 32 graph slots there)."""
    from servesim.predictor.iteration import Predictor
    from servesim.sim.deployment import Deployment

    h100, b200 = get_device("h100_sxm"), get_device("b200_sxm")
    old = get_engine("sglang").with_overrides(version="0.5.1.post1")
    new = get_engine("sglang").with_overrides(version="0.5.3")
    assert engine_memory(old, h100, Parallel(tp=2))["mem_util"] == 0.868
    assert engine_memory(new, h100, Parallel(tp=2))["mem_util"] == 0.834
    assert engine_memory(old, b200, Parallel(tp=8))["mem_util"] == 0.821
    assert sglang_mem_fraction(h100, Parallel(tp=2), "mtp", version="0.5.2") == round(
        (81559 - 12800) / 81559, 3
    )
    m = load_model("meta-llama/Llama-3.1-70B")
    graphs = {
        (name, tp): Predictor(m, get_device(name), Parallel(tp=tp), old).engine.cuda_graph_max_seqs
        for name, tp in (("h100_sxm", 4), ("h200_sxm", 1), ("b200_sxm", 1), ("l40s", 2))
    }
    assert graphs == {("h100_sxm", 4): 160, ("h200_sxm", 1): 256, ("b200_sxm", 1): 512,
                      ("l40s", 2): 160}  # fmt: skip
    q = load_model("Qwen/Qwen3-32B")
    assert Deployment(q, get_device("l40s"), Parallel(tp=2), old).batching()[1] == 8192
    assert Deployment(q, get_device("l40s"), Parallel(tp=2), new).batching()[1] == 4096
