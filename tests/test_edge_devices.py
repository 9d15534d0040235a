"""Issue 13 devices, links, GGUF recipes and the local-device cost model, against spec sheets,
published file sizes and hand computation."""

from __future__ import annotations

import pytest

from servesim.errors import ServesimError
from servesim.predictor import device_step as ds
from servesim.spec.devices import Catalog, get_device
from servesim.spec.links import get_link, links
from servesim.spec.model import ModelSpec
from servesim.spec.quant import get_quant, use_more_bits


def test_new_devices_carry_their_spec_sheet_numbers() -> None:
    cat = Catalog()
    assert cat.get("rtx_4090").mem_bw_bytes_per_s == pytest.approx(1008e9)
    assert cat.get("rtx_4090").peak_flops("bf16") == pytest.approx(165.2e12)
    assert cat.get("rtx_5090").mem_bytes == 32607 * 2**20  # nvidia-smi: 32,607 MiB
    assert cat.get("m4_max").unified_memory and cat.get("m4_max").mem_bw_bytes_per_s == 546e9
    assert cat.get("orin_nano").mem_bw_bytes_per_s == pytest.approx(102e9)
    assert cat.get("phone").kind == "edge" and cat.get("phone").mem_channels == 4
    # Sapphire Rapids AMX: 56 cores x 1,024 bf16 FLOP/cycle x 2.0 GHz
    assert cat.get("cpu").peak_flops("bf16") == pytest.approx(56 * 1024 * 2.0e9, rel=0.01)
    # this machine: 2 Zen 4 cores x 32 fp32 FLOP/cycle x 2.6 GHz; AVX512_BF16 doubles it
    here = cat.get("this_cpu")
    assert here.peak_flops("fp32") == pytest.approx(2 * 32 * 2.6e9, rel=0.01)
    assert here.peak_flops("bf16") == pytest.approx(2 * here.peak_flops("fp32"), rel=0.01)
    # AVX2-only desktop has no bf16: it falls back to fp32
    i9 = cat.get("core_i9_14900k")
    assert i9.peak_flops("bf16") == i9.peak_flops("fp32")


def test_stream_bandwidth_is_capped_by_cores() -> None:
    here = get_device("this_cpu")
    assert here.stream_bw(1) == pytest.approx(30e9)
    assert here.stream_bw(2) == pytest.approx(60e9)
    assert here.stream_bw(0) == pytest.approx(60e9)  # all 2 cores, not the 460 GB/s socket
    genoa = get_device("epyc_9654")
    assert genoa.stream_bw(0) == pytest.approx(460.8e9)  # 96 cores saturate the channels


def test_links_table() -> None:
    t = links()
    assert t["pcie4_x16"].bw_bytes_per_s == pytest.approx(2 * t["pcie3_x16"].bw_bytes_per_s)
    assert t["pcie5_x16"].bw_bytes_per_s == pytest.approx(2 * t["pcie4_x16"].bw_bytes_per_s)
    assert t["wifi6"].latency_s > 10 * t["10gbe"].latency_s
    assert get_link("10GbE").transfer_s(1.25e9) == pytest.approx(1.0 + 30e-6)
    with pytest.raises(ServesimError, match="Unknown link"):
        get_link("carrier_pigeon")


def test_user_link_file(tmp_path) -> None:
    f = tmp_path / "l.yaml"
    f.write_text("links:\n  mylink: {kind: ethernet, bw_gb_s: 2, latency_us: 5}\n")
    assert get_link("mylink", f).bw_bytes_per_s == 2e9
    f.write_text("links:\n  bad: {kind: ethernet, bw_gb_s: -1, latency_us: 5}\n")
    with pytest.raises(ServesimError, match="bw_gb_s must be > 0"):
        get_link("bad", f)


def test_q4_k_m_uses_more_bits_on_llama_cpp_layers() -> None:
    # 32 layers: first 4, last 4, and layers 6, 9, ..., 27 (8 of them)
    more = [i for i in range(32) if use_more_bits(i, 32)]
    assert len(more) == 16 and more[:5] == [0, 1, 2, 3, 6] and more[-4:] == [28, 29, 30, 31]


@pytest.mark.parametrize(
    "quant, published_gb",
    # GGUF file sizes of Meta-Llama-3.1-8B-Instruct on Hugging Face (bartowski's conversions):
    # F16 16.07 GB, Q8_0 8.54 GB, Q4_K_M 4.92 GB
    [("f16", 16.07), ("q8_0", 8.54), ("q4_k_m", 4.92)],
)
def test_recipe_bytes_match_published_gguf_sizes(llama8, quant, published_gb) -> None:
    got = ds.weight_bytes(llama8, get_quant(quant)) / 1e9
    assert got == pytest.approx(published_gb, rel=0.01)


def test_moe_q4_k_m_widens_the_experts_down_projections_as_llama_cpp_does() -> None:
    """llama.cpp's Q4_K_M rule for `ffn_down` also matches `ffn_down_exps`: the experts' down
    projections are Q6_K on the `use_more_bits` layers. Pricing them in Q4_K made Qwen3-30B-A3B
    17.31 GB against the published 18.6 GB GGUF (unsloth's Qwen3-30B-A3B-Q4_K_M: 18.6 GB)."""
    from servesim.spec.model import load_model

    m = load_model("Qwen/Qwen3-30B-A3B")
    got = ds.weight_bytes(m, get_quant("q4_k_m")) / 1e9
    assert got == pytest.approx(18.6, rel=0.01)
    # by hand: a widened layer (0) differs from a plain one (4 of 48) by its 128 experts' down
    # projections (2048 x 768 each) and its attention's v (2048 x 4 heads x 128), Q6_K not Q4_K
    q4, q6 = ds.BLOCK_BYTES_PER_WEIGHT["q4_k"], ds.BLOCK_BYTES_PER_WEIGHT["q6_k"]
    assert use_more_bits(0, 48) and not use_more_bits(7, 48)
    down = 128 * m.hidden_size * m.moe_intermediate_size
    v = m.hidden_size * m.num_kv_heads * m.head_dim
    q = get_quant("q4_k_m")
    gained = ds.layer_weight_bytes(m, q, 0) - ds.layer_weight_bytes(m, q, 7)
    assert gained == pytest.approx((down + v) * (q6 - q4))


def test_decode_step_by_hand() -> None:
    m = ModelSpec("t", "llama", 2, 256, 4, 4, 64, 512, 1000)
    q = get_quant("f16")
    dev = get_device("rtx_4090")
    eff = ds.Efficiency({"*": 0.5}, memory=0.5, op_s=1e-5, step_s=1e-4)
    t = ds.step_time(m, q, dev, ds.decode(1, 0), eff)
    matrices = 4 * 256 * 256 + 3 * 256 * 512
    weights = 2 * matrices * 2.0 + 1000 * 256 * 2.0  # two layers plus the head, f16
    kv_write = 2 * (2 * 4 * 64 * 2.0)
    acts = 2 * 6 * 256 * 4.0 + 1000 * 4.0
    memory_s = (weights + kv_write + acts) / (1008e9 * 0.5)
    fixed = (2 * ds.OPS_PER_LAYER + ds.OPS_PER_HEAD) * 1e-5 + 1e-4
    assert t.memory_s == pytest.approx(memory_s)
    assert t.seconds == pytest.approx(max(t.compute_s, memory_s) + fixed)
    assert t.compute_s < t.memory_s  # batch-1 decode is memory-bound


def test_threads_scale_a_cpu(llama8) -> None:
    q = get_quant("q4_k_m")
    here = get_device("this_cpu")
    one = ds.step_time(llama8, q, here, ds.decode(1, 128), threads=1)
    two = ds.step_time(llama8, q, here, ds.decode(1, 128), threads=2)
    assert one.memory_s == pytest.approx(2 * two.memory_s)
    pre1 = ds.step_time(llama8, q, here, ds.prefill(256), threads=1)
    pre2 = ds.step_time(llama8, q, here, ds.prefill(256), threads=2)
    assert pre1.compute_s == pytest.approx(2 * pre2.compute_s)


def test_quantisation_speeds_memory_bound_decode(llama8) -> None:
    dev = get_device("rtx_4090")
    tps = {q: ds.decode_tokens_per_s(llama8, get_quant(q), dev) for q in ("f16", "q8_0", "q4_k_m")}
    assert tps["f16"] < tps["q8_0"] < tps["q4_k_m"]
    with pytest.raises(ServesimError, match="Unknown quantisation"):
        get_quant("q3_k_xl")


def test_windowed_layers_hold_and_read_only_their_window() -> None:
    """llama.cpp's iSWA cache keeps a window of KV in gpt-oss-20b's 12 sliding layers (128
    tokens) and every token in its 12 global ones: 8 KV heads x 64 x 2 (K, V) x 2 bytes a
    token-layer. A decode step at 4,096 tokens reads the window in a windowed layer."""
    from servesim.spec.model import load_model

    m = load_model("openai/gpt-oss-20b")
    assert (m.num_layers, m.num_sliding_layers, m.sliding_window) == (24, 12, 128)
    per = 8 * 64 * 2 * 2
    q = get_quant("q8_0")
    assert ds.kv_bytes(m, q, 4096) == per * (12 * 4096 + 12 * 128)
    assert ds.kv_bytes(m, q, 100) == per * 24 * 100  # inside the window every layer holds all
    windowed = [i for i in range(24) if ds.is_windowed_layer(m, i)]
    assert len(windowed) == 12
    step = ds.decode(4, 4096)
    w, g = windowed[0], next(i for i in range(24) if i not in windowed)
    act = 6 * 4 * m.hidden_size * ds.ACT_BYTES
    assert ds.layer_work(m, q, w, step).other_bytes == pytest.approx(4 * 128 * per + 4 * per + act)
    assert ds.layer_work(m, q, g, step).other_bytes == pytest.approx(4 * 4096 * per + 4 * per + act)
    heads_flops = 4.0 * m.num_heads * m.head_dim
    assert ds.layer_work(m, q, w, step).attn_flops == pytest.approx(heads_flops * 4 * 128)
    # a 1,000-token prompt: token i attends to min(i, 128) keys in a windowed layer
    pairs = 128 * 129 / 2 + (1000 - 128) * 128
    assert ds.attended_pairs(1000, 0, 128) == pairs
    assert ds.attended_pairs(1000, 0) == 1000 * 1001 / 2
    assert ds.attended_pairs(10, 120, 128) == 8 * 120 + 8 * 9 / 2 + 2 * 128
