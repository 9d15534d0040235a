"""Vision encoders from vision_config: patches, image tokens, FLOPs checked by hand, and the
encoder's time inside a colocated engine's iteration."""

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.encoder import EncoderTiming
from servesim.sim.deployment import Deployment
from servesim.sim.multimodal import synthetic_images
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.model import load_model
from servesim.spec.vision import Images, load_vision, parse_size, vision_from_config

# Qwen/Qwen2.5-VL-7B-Instruct's vision_config (its config.json on Hugging Face).
QWEN25_VL_7B = {
    "model_type": "qwen2_5_vl",
    "vision_config": {
        "depth": 32,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu",
        "hidden_size": 1280,
        "in_channels": 3,
        "intermediate_size": 3420,
        "model_type": "qwen2_5_vl",
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
    },
}


def test_qwen25_vl_448px_image_by_hand():
    enc = vision_from_config(QWEN25_VL_7B, "qwen2.5-vl-7b")
    # 448 px = 16 × 28: no resize; 32×32 patches of 14 px, 2×2 merged into 16×16 = 256 tokens.
    assert enc.resized(448, 448) == (448, 448)
    assert enc.patches(448, 448) == 1024
    assert enc.tokens(448, 448) == 256
    # Windows of 112 px = 4×4 merged tokens = 64 patches: 16 windows.
    seqs = enc.attention_seqs(448, 448)
    assert seqs["window_sq"] == 16 * 64**2
    assert seqs["full"] == {"len": 1024, "count": 1}
    embed = 2 * 1024 * (3 * 2 * 14 * 14) * 1280
    linear = 32 * 2 * 1024 * (4 * 1280**2 + 3 * 1280 * 3420)  # qkv+proj, gated MLP
    attention = 4 * 4 * 1280 * 1024**2 + 28 * 4 * 1280 * (16 * 64**2)  # 4 full, 28 windowed
    merger = 2 * 256 * (5120 * 5120 + 5120 * 3584)
    assert enc.flops(448, 448) == pytest.approx(embed + linear + attention + merger, rel=1e-12)
    # Its published size is 0.67 B parameters (675 M in the model card's breakdown).
    assert 0.66e9 < enc.params() < 0.69e9
    # The embeddings handed to the LLM: 256 tokens × 3584 × 2 bytes.
    assert enc.embedding_bytes(448, 448) == 256 * 3584 * 2


def test_resize_rounds_to_the_merge_factor_and_clamps():
    enc = vision_from_config(QWEN25_VL_7B)
    assert enc.resized(1000, 700) == (1008, 700)  # round(1000/28)=36, 700/28=25
    assert enc.tokens(1000, 700) == (700 // 14) * (1008 // 14) // 4 == 900
    w, h = enc.resized(20000, 20000)  # above max_pixels 12,845,056: scaled down
    assert w * h <= 12845056 and w % 28 == 0
    # A video of 9 frames is 5 temporal groups of 2 (the last padded).
    assert enc.patches(448, 448, frames=9) == 5 * 1024


def test_qwen3_vl_full_attention_and_deepstack():
    enc = load_vision("Qwen/Qwen3-VL-8B-Instruct")
    assert (enc.depth, enc.hidden_size, enc.patch_size, enc.deepstack_mergers) == (27, 1152, 16, 3)
    assert not enc.gated_mlp and enc.window_size_px == 0
    # 1024 px = 32 × 32 px merged tokens: 1024 tokens, 4096 patches, all in one attention.
    assert enc.tokens(1024, 1024) == 1024
    assert enc.attention_seqs(1024, 1024)["window_sq"] == 4096**2
    # The language model is Qwen3-8B's shape.
    m = load_model("Qwen/Qwen3-VL-8B-Instruct")
    assert (m.hidden_size, m.num_layers) == (enc.out_hidden_size, 36)


def test_encoder_time_follows_its_flops():
    enc = load_vision("Qwen/Qwen3-VL-8B-Instruct")
    t = EncoderTiming(enc, get_device("h100_sxm"))
    small, large = t.image_s(448, 448), t.image_s(2048, 2048)
    flops_ratio = enc.flops(2048, 2048) / enc.flops(448, 448)
    # Compute-bound at thousands of patches: time grows with the FLOPs (within the kernels'
    # efficiency gain at larger shapes), and stays below the bf16 peak.
    assert 0.3 * flops_ratio < large / small < 1.05 * flops_ratio, (small, large, flops_ratio)
    assert enc.flops(2048, 2048) / large < get_device("h100_sxm").peak_flops("bf16")
    assert t.image_s(1024, 1024, 1) > 0 and t.breakdown(1024, 1024)["attention"] > 0
    # Two-way tensor parallelism cuts it, though not in half (all-reduces).
    t2 = EncoderTiming(enc, get_device("h100_sxm"), tp=2).image_s(2048, 2048)
    assert large / 2 < t2 < large


def test_colocated_engine_adds_the_encoder_to_the_prefill_iteration():
    name = "Qwen/Qwen3-VL-8B-Instruct"
    m, enc, dev = load_model(name), load_vision(name), get_device("h100_sxm")
    dep = Deployment(m, dev, vision=enc)
    base = Workload(np.array([0.0]), np.array([100]), np.array([10]))
    with_img = synthetic_images(base, enc, 2, 896, 896)
    assert with_img.prompt_tokens[0] == 100 + 2 * enc.tokens(896, 896)
    # The same prompt length without images: the difference is the two encodes.
    plain = Workload(np.array([0.0]), with_img.prompt_tokens, np.array([10]))
    t_img = simulate(dep, with_img).columns()["ttft_s"][0]
    t_txt = simulate(dep, plain).columns()["ttft_s"][0]
    per_image = EncoderTiming(enc, dev, 1, dep.engine).image_s(896, 896)
    assert t_img - t_txt == pytest.approx(2 * per_image, rel=1e-6)


def test_bad_input_is_one_sentence():
    with pytest.raises(ServesimError, match="no vision_config"):
        vision_from_config({"model_type": "llama"}, "llama")
    with pytest.raises(ServesimError, match="WIDTHxHEIGHT"):
        parse_size("big")
    with pytest.raises(ServesimError, match="negative"):
        Images(np.array([-1]), 10, 10)
    m = load_model("Qwen/Qwen3-VL-8B-Instruct")
    enc = load_vision("Qwen/Qwen3-VL-8B-Instruct")
    wl = synthetic_images(Workload(np.array([0.0]), np.array([10]), np.array([5])), enc, 1, 64, 64)
    with pytest.raises(ServesimError, match="no vision encoder"):
        simulate(Deployment(m, get_device("h100_sxm")), wl)


def test_a_gpu_with_tables_prices_its_vit_from_the_measured_kernels():
    """With the GPU's measured kernels (the default latency model's), the ViT's attention is
    aiconfigurator's encoder-attention row of its head layout and sequence (Qwen3-VL-8B: 16
    heads of 72, one 4,096-patch sequence for a 1024x1024 image, 27 full-attention blocks;
    H100, vLLM) and its GEMMs the measured bf16 GEMMs; without them the roofline prices both."""
    from servesim.predictor import kernel_tables, measured_kernels, twin_efficiency
    from servesim.spec.engine_profile import get_engine

    v = load_vision("Qwen/Qwen3-VL-8B-Instruct")
    h100, vllm = get_device("h100_sxm"), get_engine("vllm")
    fit = twin_efficiency.default_fit()
    kernels = measured_kernels.backend("auto", h100, "vllm", None, fit)
    measured = EncoderTiming(v, h100, 1, vllm, fit, kernels).breakdown(1024, 1024)
    roof = EncoderTiming(v, h100, 1, vllm, fit).breakdown(1024, 1024)
    found = kernel_tables.find("h100_sxm", "encoder_attention", "encoder_attention_perf", "vllm")
    assert found is not None
    c = kernel_tables.read(found[0], ("batch_size", "isl", "num_heads", "head_dim", "latency"))
    row = (c["batch_size"] == 1) & (c["isl"] == 4096) & (c["num_heads"] == 16)
    row &= c["head_dim"] == 72
    assert row.sum() == 1
    assert measured["attention"] == pytest.approx(27 * float(c["latency"][row][0]) * 1e-3)
    assert measured["attention"] != pytest.approx(roof["attention"], rel=1e-3)
    assert measured["linear"] != pytest.approx(roof["linear"], rel=1e-3)
    # a GPU without tables has no measured backend: the roofline, as before
    assert measured_kernels.backend("auto", get_device("l4"), "vllm", None, fit) is None
