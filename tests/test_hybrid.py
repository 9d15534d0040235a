"""CPU–GPU hybrid execution: layer offload, streamed weights, attention offload (Lamina), the
split search, and HybriMoE's claim that dynamic, cached expert placement beats static placement
when expert popularity shifts."""

from __future__ import annotations

import pytest

from servesim.errors import ServesimError
from servesim.planner.hybrid import search_hybrid
from servesim.predictor import device_step as ds
from servesim.predictor import expert_cache as ec
from servesim.predictor.offload import attention_offload_step, gpu_memory, hybrid_step
from servesim.spec.devices import get_device
from servesim.spec.links import get_link
from servesim.spec.model import load_model
from servesim.spec.quant import get_quant


@pytest.fixture(scope="module")
def rig():
    return (
        load_model("meta-llama/Meta-Llama-3.1-70B"),
        get_quant("q4_k_m"),
        get_device("rtx_4090"),
        get_device("ryzen_9_7950x"),
        get_link("pcie4_x16"),
    )


def test_all_on_one_side_equals_that_device_alone(rig) -> None:
    m, q, gpu, cpu, link = rig
    step = ds.decode(1, 512)
    cpu_only = hybrid_step(m, q, gpu, cpu, link, step, 0)
    assert cpu_only.seconds == pytest.approx(ds.step_time(m, q, cpu, step).seconds)
    assert cpu_only.transfer_s == 0.0
    gpu_only = hybrid_step(m, q, gpu, cpu, link, step, m.num_layers)
    assert gpu_only.seconds == pytest.approx(ds.step_time(m, q, gpu, step).seconds)


def test_ngl_is_cpu_layers_then_gpu_layers_plus_two_crossings(rig) -> None:
    m, q, gpu, cpu, link = rig
    step = ds.decode(1, 512)
    h = hybrid_step(m, q, gpu, cpu, link, step, 30)
    cpu_t = ds.time_work(
        ds.layers_work(m, q, range(50), step) + ds.head_work(m, q, step), cpu, q
    ).seconds
    gpu_t = ds.time_work(ds.layers_work(m, q, range(50, 80), step), gpu, q).seconds
    xfer = 2 * link.transfer_s(m.hidden_size * ds.ACT_BYTES)
    assert h.seconds == pytest.approx(cpu_t + gpu_t + xfer)
    # more layers on the (faster) GPU: faster, and more GPU memory
    h40 = hybrid_step(m, q, gpu, cpu, link, step, 40)
    assert h40.seconds < h.seconds and h40.gpu_mem_bytes > h.gpu_mem_bytes


def test_streamed_layer_costs_max_of_copy_and_compute(rig) -> None:
    m, q, gpu, cpu, link = rig
    step = ds.decode(1, 512)
    h = hybrid_step(m, q, gpu, cpu, link, step, 0, mode="stream")
    copies = sum(link.transfer_s(ds.layer_weight_bytes(m, q, i)) for i in range(m.num_layers))
    assert h.transfer_s == pytest.approx(copies)
    # batch-1 decode: every copy outlasts its layer's compute, so the pass is the copies + head
    head = ds.time_work(ds.head_work(m, q, step), gpu, q).seconds
    assert h.seconds == pytest.approx(copies + head)


def test_search_picks_ngl_for_latency_and_streaming_for_long_prefills(rig) -> None:
    m, q, gpu, cpu, link = rig
    lat = search_hybrid(m, q, gpu, cpu, link, "latency", context=2048)
    assert lat.best.mode == "ngl"
    # the most layers that fit: one more would not
    n = lat.best.gpu_layers
    assert gpu_memory(m, q, n, 2048) <= gpu.mem_bytes < gpu_memory(m, q, n + 1, 2048)
    assert lat.best.gpu_mem_bytes == gpu_memory(m, q, n, 2048)
    tput = search_hybrid(m, q, gpu, cpu, link, "throughput", step=ds.prefill(2048))
    assert tput.best.mode == "stream"
    ngl_best = min(c.seconds for c in tput.candidates if c.mode == "ngl")
    assert tput.best.seconds < ngl_best / 3
    with pytest.raises(ServesimError, match="Unknown target"):
        search_hybrid(m, q, gpu, cpu, link, "cost")


def test_a_long_prompts_own_kv_counts_against_the_gpu() -> None:
    """A 131,072-token prefill of Llama-3.1-8B in f16 on a 24 GB RTX 4090: its KV alone is
    ~17 GB, yet the search sized the KV from the 1,024-token default context and picked all 32
    layers on the GPU at the 512-token figure. Every split it keeps now holds the prompt's KV."""
    m, q = load_model("meta-llama/Llama-3.1-8B"), get_quant("f16")
    gpu, cpu, link = get_device("rtx_4090"), get_device("ryzen_9_7950x"), get_link("pcie4_x16")
    long = search_hybrid(m, q, gpu, cpu, link, "throughput", step=ds.prefill(131_072), context=1024)
    short = search_hybrid(m, q, gpu, cpu, link, "throughput", step=ds.prefill(512), context=1024)
    for c in long.candidates:
        assert c.gpu_mem_bytes == gpu_memory(m, q, c.gpu_layers, 131_072, c.mode)
        assert c.gpu_mem_bytes <= gpu.mem_bytes
    assert max(c.gpu_layers for c in long.candidates if c.mode == "ngl") < m.num_layers
    assert short.best.gpu_layers == m.num_layers  # a short prompt fits whole
    # a decode step at a longer context than the default keeps its own too
    lat = search_hybrid(m, q, gpu, cpu, link, "latency", step=ds.decode(1, 65_536), context=1024)
    assert lat.best.gpu_mem_bytes == gpu_memory(m, q, lat.best.gpu_layers, 65_537, lat.best.mode)


def test_unified_memory_has_nothing_to_offload(rig) -> None:
    m, q, _, cpu, link = rig
    with pytest.raises(ServesimError, match="nothing to offload"):
        hybrid_step(m, q, get_device("m4_max"), cpu, link, ds.decode(), 10)


def test_lamina_overlap_and_capacity() -> None:
    m = load_model("meta-llama/Meta-Llama-3.1-8B")
    q = get_quant("f16")
    gpu, cpu, link = get_device("rtx_4090"), get_device("epyc_9654"), get_link("pcie4_x16")
    a = attention_offload_step(m, q, gpu, cpu, link, 64, 4096)
    b = attention_offload_step(m, q, gpu, cpu, link, 64, 4096, overlap=False)
    assert a.seconds == pytest.approx(max(a.dense_s, a.attention_s, a.link_s))
    assert b.seconds == pytest.approx(a.dense_s + a.attention_s + a.link_s)
    # the KV cache in host memory holds many more sequences than the GPU left after weights
    assert a.max_seqs_offloaded > 10 * a.max_seqs_gpu_only
    # energy: both devices draw at least idle power over the whole step and at most their
    # peak (it was 0 J, so a step bound by the CPU's attention reported the GPU's idle alone)
    idle = (gpu.idle_power_w + cpu.idle_power_w) * a.seconds
    peak = (gpu.max_power_w + cpu.max_power_w) * a.seconds
    assert idle < a.joules < peak
    assert a.attention_s == a.seconds  # attention-bound: the CPU streams the KV all step
    assert a.joules > idle + 0.5 * (cpu.max_power_w - cpu.idle_power_w) * a.seconds


def test_hybrimoe_dynamic_beats_static_when_popularity_shifts() -> None:
    m = load_model("Qwen/Qwen3-30B-A3B")
    q = get_quant("q4_k_m")
    costs = ec.expert_costs(
        m, q, get_device("rtx_4090"), get_device("ryzen_9_7950x"), get_link("pcie4_x16")
    )
    assert costs.gpu_s < costs.cpu_s < costs.copy_s  # a miss is cheaper on the CPU than copied
    kw = dict(num_layers=4, experts_per_token=8, cache_per_layer=32, steps=200)
    shifting = ec.Popularity(128, skew=1.2, shift_every=40)
    static = ec.simulate_placement("static", costs, shifting, **kw)
    dynamic = ec.simulate_placement("dynamic", costs, shifting, **kw)
    assert dynamic.hit_rate > static.hit_rate + 0.15
    assert dynamic.mean_step_s < 0.75 * static.mean_step_s
    # with popularity that never moves, the profiled static cache is as good as it gets
    steady = ec.Popularity(128, skew=1.2)
    s0 = ec.simulate_placement("static", costs, steady, **kw)
    d0 = ec.simulate_placement("dynamic", costs, steady, **kw)
    assert d0.mean_step_s == pytest.approx(s0.mean_step_s, rel=0.15)
    # a cache of every expert: both are the GPU alone (8 experts per layer per token)
    full = dict(kw, cache_per_layer=128)
    allgpu = ec.simulate_placement("static", costs, shifting, **full)
    assert allgpu.mean_step_s == pytest.approx(4 * (costs.gpu_launch_s + 8 * costs.gpu_s))


def test_a_larger_expert_cache_is_never_slower() -> None:
    """A layer's experts on one side run as one grouped operator (llama.cpp's `mul_mat_id`),
    so its fixed cost is paid once a layer, not once an expert: with a launch an expert, every
    expert cached (128) was slower than 16 cached with the misses on the CPU beside them."""
    m = load_model("Qwen/Qwen3-30B-A3B")
    q = get_quant("q4_k_m")
    costs = ec.expert_costs(
        m, q, get_device("rtx_4090"), get_device("ryzen_9_7950x"), get_link("pcie4_x16")
    )
    assert costs.gpu_launch_s > 2 * costs.gpu_s  # launches dominate a lone token's expert
    steady = ec.Popularity(128, skew=1.2)
    for policy in ec.POLICIES:
        times = [
            ec.simulate_placement(
                policy, costs, steady, num_layers=4, experts_per_token=8, cache_per_layer=c,
                steps=100,
            ).mean_step_s
            for c in (0, 16, 64, 128)
        ]  # fmt: skip
        assert times == sorted(times, reverse=True), (policy, times)
