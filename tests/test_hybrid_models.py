"""Hybrid (linear + full attention), DeepSeek Sparse Attention, quantised checkpoints and MTP
layers: parameter counts against published sizes, state and KV bytes and operator work by hand."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape, Predictor
from servesim.spec.devices import catalog
from servesim.spec.dtypes import gemm_compute_dtype
from servesim.spec.engine_profile import get_engine
from servesim.spec.memory import memory_layout, weight_bytes_per_device
from servesim.spec.model import load_model, spec_from_config
from servesim.spec.parallel import Parallel

# (bundled name, published total and active parameters in billions; model cards)
PUBLISHED = [
    ("Qwen/Qwen3.5-397B-A17B", 397.0, 17.0),  # "397B total, 17B activated"
    ("zai-org/GLM-5", 744.0, 40.0),  # "744B parameters (40B active)"
    ("deepseek-ai/DeepSeek-V3.2", 671.0, 37.0),  # V3's architecture plus the indexer
    ("nvidia/DeepSeek-R1-NVFP4", 671.0, 37.0),
    ("nvidia/Nemotron-H-56B-Base-8K", 56.0, None),  # Nemotron-H paper: 56B
    # model card: 31.6B total, 3.6B active per token with the embeddings
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 31.6, 3.6),
]

# Published hyper-parameters of models whose configs are not bundled (model cards, Apache-2.0 /
# MIT): Qwen3-Next-80B-A3B ("80B total, 3B activated") and Kimi-Linear-48B-A3B ("48B, 3B").
QWEN3_NEXT = {
    "model_type": "qwen3_next",
    "hidden_size": 2048,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "intermediate_size": 5120,
    "vocab_size": 151936,
    "num_experts": 512,
    "num_experts_per_tok": 10,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "full_attention_interval": 4,
}
KIMI_LINEAR = {
    "model_type": "kimi_linear",
    "hidden_size": 2304,
    "num_hidden_layers": 27,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 9216,
    "vocab_size": 163840,
    "num_experts": 256,
    "num_experts_per_token": 8,
    "num_shared_experts": 1,
    "moe_intermediate_size": 1024,
    "first_k_dense_replace": 1,
    "q_lora_rank": None,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "linear_attn_config": {
        "full_attn_layers": [4, 8, 12, 16, 20, 24, 27],
        "kda_layers": [i for i in range(1, 28) if i not in (4, 8, 12, 16, 20, 24, 27)],
        "head_dim": 128,
        "num_heads": 32,
        "short_conv_kernel_size": 4,
    },
}


@pytest.mark.parametrize(("name", "total_b", "active_b"), PUBLISHED)
def test_parameter_counts_match_published_sizes(name: str, total_b: float, active_b: float) -> None:
    m = load_model(name)
    assert m.num_params() / 1e9 == pytest.approx(total_b, rel=0.02)
    if active_b is not None:
        assert m.num_active_params() / 1e9 == pytest.approx(active_b, rel=0.12)


@pytest.mark.parametrize(
    ("cfg", "total_b", "active_b"), [(QWEN3_NEXT, 80.0, 3.0), (KIMI_LINEAR, 48.0, 3.0)]
)
def test_unbundled_hybrids_from_published_hyperparameters(cfg, total_b, active_b) -> None:
    m = spec_from_config(cfg, name=cfg["model_type"])
    assert m.is_hybrid
    assert m.num_params() / 1e9 == pytest.approx(total_b, rel=0.03)
    # "3B activated" is rounded down (Qwen3-Next reports 3.9B with embeddings): 35 %
    assert m.num_active_params() / 1e9 == pytest.approx(active_b, rel=0.35)


def test_qwen35_state_and_kv_by_hand() -> None:
    m = load_model("Qwen/Qwen3.5-397B-A17B")
    assert (m.num_linear_layers, m.num_full_attention_layers) == (45, 15)
    # Gated DeltaNet state: 64 v heads × 128 × 128 in fp32 (mamba_ssm_dtype), plus the conv's
    # 3 past inputs of q, k (16 heads × 128 each) and v (64 × 128) in bf16, per linear layer.
    ssm = 64 * 128 * 128 * 4
    conv = 3 * (2 * 16 * 128 + 64 * 128) * 2
    assert m.state_bytes_per_seq() == 45 * (ssm + conv) == 192_061_440
    # KV only in the 15 full-attention layers: 2 (K, V) × 2 KV heads × 256 × 2 bytes.
    assert m.kv_bytes_per_token() == 15 * 2 * 2 * 256 * 2 == 30_720
    assert m.num_mtp_layers == 1 and m.attn_output_gate


def test_nemotron_h_blocks_state_and_kv_by_hand() -> None:
    m = load_model("nvidia/Nemotron-H-56B-Base-8K")
    assert (m.num_linear_layers, m.num_attention_layers, m.num_mlp_layers) == (54, 10, 54)
    # Mamba2: 256 heads × 64 head dim × 256 state (bf16); conv over x (256×64) plus B and C
    # (8 groups × 256) with 3 past inputs.
    per_layer = 256 * 64 * 256 * 2 + 3 * (256 * 64 + 2 * 8 * 256) * 2
    assert m.state_bytes_per_seq() == 54 * per_layer == 459_620_352
    assert m.kv_bytes_per_token() == 10 * 2 * 8 * 128 * 2


def test_nemotron_3_nano_moe_blocks_state_and_kv_by_hand() -> None:
    """Nemotron 3 Nano's pattern adds E (routed-expert MLP) blocks to Nemotron-H's M, * and
    -: 23 Mamba2, 6 attention and 23 MoE blocks; 128 experts, 6 a token, one shared expert of
    3,712; squared-ReLU experts (up and down only); its config keeps the SSM state in float32."""
    m = load_model("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    assert (m.num_linear_layers, m.num_attention_layers, m.num_moe_layers) == (23, 6, 23)
    assert (m.num_dense_layers, m.num_experts, m.experts_per_token) == (0, 128, 6)
    assert m.shared_expert_intermediate_size == 3712 and not m.gated_mlp
    assert m.expert_params() == 2 * 2688 * 1856
    # Mamba2: 64 heads x 64 head dim x 128 state in fp32; conv over x (64x64) and B, C
    # (8 groups x 128) with 3 past inputs in bf16.
    assert m.state_dtype == "fp32"
    assert m.state_bytes_per_seq() == 23 * (64 * 64 * 128 * 4 + 3 * (64 * 64 + 2 * 8 * 128) * 2)
    assert m.kv_bytes_per_token() == 6 * 2 * 2 * 128 * 2


def test_nemotron_blocks_listed_by_name_and_latent_moe_refused() -> None:
    """Newer Nemotron configs list `layers_block_type` names instead of the letter pattern;
    LatentMoE (Nemotron 3 Super/Ultra: experts in a `moe_latent_size` space) is refused."""
    import aiconfigurator_core

    nano = load_model("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    folder = Path(aiconfigurator_core.__file__).parent / "model_configs"
    cfg = json.loads(
        (folder / "nvidia--NVIDIA-Nemotron-3-Nano-30B-A3B-BF16_config.json").read_text()
    )
    letters = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
    named = {**cfg, "layers_block_type": [letters[x] for x in cfg["hybrid_override_pattern"]]}
    del named["hybrid_override_pattern"]
    m = spec_from_config(named, name="nemotron-3-nano-named")
    assert m.num_params() == nano.num_params() and m.num_moe_layers == 23
    # ... and may give the depth only as that list's length (Nemotron 3.5, Nemotron 3 Ultra)
    depthless = spec_from_config({**named, "num_hidden_layers": None}, name="depthless")
    assert depthless.num_layers == 52 and depthless.num_params() == nano.num_params()
    with pytest.raises(ServesimError, match="latent space"):
        spec_from_config({**cfg, "moe_latent_size": 1024}, name="latent")
    with pytest.raises(ServesimError, match="E \\(MoE\\) for each"):
        spec_from_config({**cfg, "hybrid_override_pattern": "X" * 52}, name="bad")


def test_dsa_kv_adds_the_indexer_keys() -> None:
    m = load_model("deepseek-ai/DeepSeek-V3.2")
    assert m.is_sparse and m.index_topk == 2048 and m.kv_dtype == "bf16"
    # latent 512 + rope 64 in bf16, plus 128 fp8 indexer key values and one fp32 scale
    assert m.kv_bytes_per_token() == 61 * ((512 + 64) * 2 + 128 + 4)
    # An fp8 cache takes the sparse MLA kernels' layout (FlashMLA, vLLM `fp8_ds_mla`, SGLang's
    # NSA pool): 512 fp8 latent values, 4 fp32 scales, 64 rope values in bf16 = 656 bytes.
    nv = load_model("nvidia/DeepSeek-V3.2-NVFP4")
    assert nv.kv_dtype == "fp8"
    assert nv.kv_bytes_per_token() == 61 * ((512 + 4 * 4 + 64 * 2) + 128 + 4)


def test_hybrid_memory_reserves_state_per_sequence() -> None:
    m = load_model("Qwen/Qwen3.5-397B-A17B")
    b200 = catalog().get("b200_sxm")
    par = Parallel(tp=8)
    a = memory_layout(m, b200, par, max_num_seqs=64)
    b = memory_layout(m, b200, par, max_num_seqs=256)
    state = m.state_bytes_per_seq() / 8  # heads split over 8 ranks
    assert a.state_bytes_per_seq == pytest.approx(state)
    assert a.kv_bytes - b.kv_bytes == pytest.approx(192 * state)
    # KV per token per device: 2 KV heads over TP 8 keep 2 shards
    assert a.kv_bytes_per_token == 30_720 / 2
    assert a.kv_tokens == int(a.kv_bytes // a.kv_bytes_per_token)


def test_speculative_decoding_keeps_state_copies_per_sequence() -> None:
    """A hybrid model that decodes speculatively keeps extra recurrent states per running
    sequence so the verify pass can restart from any accepted position: SGLang one per verified
    token (4 for MTP with 3 drafts: `speculative_num_draft_tokens`), vLLM one per draft token;
    the KV cache gets what is left. Qwen3.5 (fp8 weights) on 4 B200s at 64 sequences, by hand."""
    from servesim.sim.deployment import Deployment
    from servesim.spec.memory import speculative_state_copies
    from servesim.spec.speculative import SpeculativeDecoding

    sglang, vllm, trtllm = (get_engine(n) for n in ("sglang", "vllm", "trtllm"))
    assert speculative_state_copies(sglang, 3, 4) == 5
    assert speculative_state_copies(vllm, 3, 4) == 4
    assert speculative_state_copies(trtllm, 3, 4) == 1  # no source for TensorRT-LLM's
    assert speculative_state_copies(sglang, 0, 1) == 1  # no speculation
    m = load_model("Qwen/Qwen3.5-397B-A17B").with_dtypes(weight="fp8")
    b200 = catalog().get("b200_sxm")
    par = Parallel(tp=4)
    one = memory_layout(m, b200, par, max_num_seqs=64)
    five = memory_layout(m, b200, par, max_num_seqs=64, state_copies=5)
    state = m.state_bytes_per_seq() / 4
    assert one.kv_bytes - five.kv_bytes == pytest.approx(64 * 4 * state)
    assert five.state_bytes_per_seq == pytest.approx(5 * state)
    # With the checkpoint's fp32 state, 256 sequences no longer fit at InferenceX's memory
    # fraction (0.8), and the refusal says why.
    with pytest.raises(ServesimError, match=r"256 sequences \(5 copies each for speculative"):
        memory_layout(m, b200, par, max_num_seqs=256, mem_util=0.8, state_copies=5)
    memory_layout(m, b200, par, max_num_seqs=256, mem_util=0.8)  # one copy fits
    # A deployment lays its memory out with its engine's copies.
    spec = SpeculativeDecoding("mtp", 3)
    dep = Deployment(m, b200, par, sglang, max_num_seqs=64, speculative=spec)
    plain = replace(dep, speculative=None)
    a, b = plain.memory(), dep.memory()
    # less KV: SGLang's smaller memory fraction under speculation, the MTP layer's weights and
    # the four extra states of each of the 64 sequences
    drop = (a.usable_bytes - b.usable_bytes) + (b.weight_bytes - a.weight_bytes)
    assert a.kv_bytes - b.kv_bytes == pytest.approx(drop + 64 * 4 * state, rel=1e-9)


def test_checkpoint_formats_nvfp4_with_mtp() -> None:
    m = load_model("nvidia/DeepSeek-R1-NVFP4")
    assert (m.weight_dtype, m.expert_dtype, m.attn_weight_dtype) == ("fp4", "fp4", "bf16")
    # its unquantised modules list q_a, q_b, kv_a and kv_b of every layer, not o_proj
    assert m.attn_out_weight_dtype == "fp4"
    assert m.kv_dtype == "fp8" and m.mtp_dtype == "bf16" and m.num_mtp_layers == 1
    c = m.param_counts()
    o_proj = 61 * 128 * 128 * 7168  # layers x heads x v_head_dim x hidden
    fp4 = 0.5 + 1 / 16  # NVFP4: 4-bit values and one FP8 scale per 16 (4.5 bits a weight)
    expected = (
        c["routed_experts"] * fp4
        + (c["attention"] - o_proj) * 2.0
        + o_proj * fp4
        + (c["dense_mlp"] + c["shared_experts"]) * fp4
        + (c["router"] + c["norms"] + c["embedding"]) * 2.0
        + m.mtp_params() * 2.0
    )
    assert m.param_bytes() == pytest.approx(expected)
    assert m.param_bytes() / 1e9 == pytest.approx(409.6, abs=0.1)  # 368.0 without the scales
    # DeepSeek-V3 model card: 14B of MTP module weights (its own embedding and head included)
    assert (m.mtp_params() + m.embedding_params()) / 1e9 == pytest.approx(14.0, rel=0.05)
    # the MTP layer is held in memory: per device, its bytes over TP 8
    no_mtp = m.__class__(**{**m.__dict__, "num_mtp_layers": 0})
    par = Parallel(tp=8)
    diff = weight_bytes_per_device(m, par) - weight_bytes_per_device(no_mtp, par)
    assert diff == pytest.approx(m.mtp_bytes() / 8)
    # MLA's down-projections stay whole on every TP rank (vLLM and SGLang `ReplicatedLinear`,
    # TensorRT-LLM's `fused_a`): 61 x (7168 x 1536 + 1536 + 7168 x 576 + 512) bf16 values
    whole = 61 * (7168 * 1536 + 1536 + 7168 * (512 + 64) + 512) * 2.0
    assert m.replicated_attention_bytes() == pytest.approx(whole)
    one = weight_bytes_per_device(m, Parallel(tp=1))
    assert weight_bytes_per_device(m, par) == pytest.approx((one - whole) / 8 + whole)


def _write(tmp_path, cfg, quant=None):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if quant is not None:
        (tmp_path / "hf_quant_config.json").write_text(json.dumps(quant))
    return load_model(str(tmp_path))


SMALL = {
    "model_type": "qwen3",
    "hidden_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "intermediate_size": 2048,
    "vocab_size": 1000,
}


def test_quantisation_configs(tmp_path) -> None:
    nvfp4 = {"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}}
    m = _write(tmp_path, SMALL, nvfp4)
    assert (m.weight_dtype, m.kv_dtype) == ("fp4", "fp8")
    (tmp_path / "hf_quant_config.json").unlink()
    for q, want in (
        ({"quant_method": "awq", "bits": 4}, "int4"),
        ({"quant_method": "gptq", "bits": 4}, "int4"),
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8"),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"g": {"weights": {"num_bits": 4, "type": "float"}}},
                "kv_cache_scheme": {"num_bits": 8, "type": "float"},
            },
            "fp4",
        ),
    ):
        m = _write(tmp_path, {**SMALL, "quantization_config": q})
        assert m.weight_dtype == want, q
    with pytest.raises(ServesimError, match="bitsandbytes"):
        _write(tmp_path, {**SMALL, "quantization_config": {"quant_method": "bitsandbytes"}})


def test_group_scales_of_integer_checkpoints_are_held_in_memory(tmp_path) -> None:
    """An int4 weight of a group-quantised checkpoint carries a 16-bit scale per group (and a
    4-bit zero point per group where asymmetric): Kimi-K2.5's routed experts, int4 in groups
    of 32, take 0.5 + 2/32 bytes each; the rest of the model stays bf16."""
    kimi = load_model("moonshotai/Kimi-K2.5")
    assert (kimi.expert_dtype, kimi.weight_dtype) == ("int4", "bf16")
    assert kimi.int_scale_bytes_per_weight == pytest.approx(2 / 32)
    plain = kimi.__class__(**{**kimi.__dict__, "int_scale_bytes_per_weight": 0.0})
    experts = kimi.param_counts()["routed_experts"]  # 60 MoE layers x 384 x 3 x 7168 x 2048
    assert experts == 60 * 384 * 3 * 7168 * 2048
    assert kimi.param_bytes() - plain.param_bytes() == pytest.approx(experts * 2 / 32)
    # the published checkpoint is about 595 GB (MoonViT's 0.4 B vision weights aside)
    assert kimi.param_bytes() / 1e9 == pytest.approx(594.2, abs=0.1)  # 530.8 without scales
    ct = "compressed-tensors"
    sym = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}
    asym = {**sym, "symmetric": False}
    for q, want in (
        ({"quant_method": ct, "config_groups": {"g": {"weights": sym}}}, 2 / 128),
        ({"quant_method": ct, "config_groups": {"g": {"weights": asym}}}, 2.5 / 128),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, 2.5 / 128),
        ({"quant_method": "gptq", "bits": 4, "group_size": 64, "sym": True}, 2 / 64),
        ({"quant_method": "gptq", "bits": 4, "group_size": -1}, 0.0),  # per channel
        ({"quant_method": "awq", "bits": 4}, 0.0),  # groups not stated
    ):
        m = _write(tmp_path, {**SMALL, "quantization_config": q})
        assert m.int_scale_bytes_per_weight == pytest.approx(want), q
        body = m.param_counts()
        int4 = body["attention"] + body["dense_mlp"]
        assert m.param_bytes() == pytest.approx(
            int4 * (0.5 + want) + (body["norms"] + body["embedding"]) * 2.0
        ), q
    awq = {"quantization": {"quant_algo": "W4A16_AWQ", "group_size": 128}}
    assert _write(tmp_path, SMALL, awq).int_scale_bytes_per_weight == pytest.approx(2 / 128)
    (tmp_path / "hf_quant_config.json").unlink()
    bad = {"quant_method": "gptq", "bits": 4, "group_size": 0.5}
    with pytest.raises(ServesimError, match="group_size"):
        _write(tmp_path, {**SMALL, "quantization_config": bad})


def test_block_scaled_fp8_is_told_from_per_tensor(tmp_path) -> None:
    """DeepSeek-style `weight_block_size` and llm-compressor's block strategy mark fp8 weights
    scaled per block (their own kernels); a plain fp8 config is per-tensor."""
    block = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]}
    channel = {"num_bits": 8, "type": "float", "strategy": "channel"}
    ct = "compressed-tensors"
    for q, want in (
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, True),
        ({"quant_method": "fp8", "activation_scheme": "static"}, False),
        ({"quant_method": ct, "config_groups": {"g": {"weights": block}}}, True),
        ({"quant_method": ct, "config_groups": {"g": {"weights": channel}}}, False),
    ):
        m = _write(tmp_path, {**SMALL, "quantization_config": q})
        assert (m.weight_dtype, m.fp8_block) == ("fp8", want), q
    assert load_model("deepseek-ai/DeepSeek-R1").fp8_block
    assert not load_model("Qwen3-8B").with_dtypes(weight="fp8").fp8_block


def test_static_fp8_activation_scales_are_read_from_the_checkpoint(tmp_path) -> None:
    """A calibrated input scale (ModelOpt FP8, `activation_scheme: static`, llm-compressor
    with `dynamic: false`) marks static fp8 activations; a dynamic scheme, DeepSeek's config,
    an fp8 flag on a bf16 checkpoint and NVFP4 do not."""
    w8 = {"num_bits": 8, "type": "float", "strategy": "tensor"}
    ct = "compressed-tensors"

    def groups(dynamic: bool) -> dict:
        acts = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": dynamic}
        return {"g": {"weights": w8, "input_activations": acts}}

    for q, want in (
        ({"quant_method": "fp8", "activation_scheme": "static"}, True),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, False),
        ({"quant_method": ct, "config_groups": groups(False)}, True),
        ({"quant_method": ct, "config_groups": groups(True)}, False),
    ):
        m = _write(tmp_path, {**SMALL, "quantization_config": q})
        assert (m.weight_dtype, m.fp8_static_act) == ("fp8", want), q
    modelopt = {"quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}}
    assert _write(tmp_path, SMALL, modelopt).fp8_static_act
    assert not load_model("deepseek-ai/DeepSeek-R1").fp8_static_act
    assert not load_model("Qwen3-8B").with_dtypes(weight="fp8").fp8_static_act
    assert not load_model("nvidia/DeepSeek-R1-NVFP4").fp8_static_act


def test_fp8_and_fp4_refused_on_ampere() -> None:
    a100 = catalog().get("a100_sxm")
    with pytest.raises(ServesimError, match="no FP8 tensor cores"):
        memory_layout(load_model("deepseek-ai/DeepSeek-R1"), a100, Parallel(tp=8))
    with pytest.raises(ServesimError, match="fp4"):
        memory_layout(load_model("Qwen3-8B").with_dtypes(weight="fp4"), a100, Parallel())
    memory_layout(load_model("Qwen3-8B").with_dtypes(weight="int4"), a100, Parallel())


def test_fp4_gemms_run_at_the_fp4_rate_where_the_device_has_one() -> None:
    cat = catalog()
    b200, h100 = cat.get("b200_sxm"), cat.get("h100_sxm")
    assert gemm_compute_dtype("fp4", b200.peak_flops_per_s) == "fp4"
    assert gemm_compute_dtype("fp4", h100.peak_flops_per_s) == "bf16"
    m = load_model("Qwen3-8B")
    fp4 = Predictor(m.with_dtypes(weight="fp4"), b200)
    bf16 = Predictor(m, b200)
    big = BatchShape(prefill=((8192, 0),))
    t4 = {o.name: o.seconds for o in fp4.ops(big)}["mlp_up_proj"]
    t16 = {o.name: o.seconds for o in bf16.ops(big)}["mlp_up_proj"]
    # compute-bound: the FP4 rate is 4× bf16 on B200; allow for fixed and quantisation costs
    assert t4 < 0.5 * t16


def _ops(pred: Predictor, batch: BatchShape) -> dict[str, object]:
    return {o.name: o for o in pred.ops(batch)}


def test_hybrid_operators_by_hand() -> None:
    m = load_model("Qwen/Qwen3.5-397B-A17B")
    b200 = catalog().get("b200_sxm")
    pred = Predictor(m, b200, Parallel(tp=8))
    ops = _ops(pred, BatchShape(decode_seqs=64, decode_context=64 * 4000))
    # in_proj_qkvz per device: q, k (2 heads × 128 each), v and z (8 heads × 128 each); b and
    # a (8 each) are a GEMM of their own (in_proj_ba)
    in_n = 2 * 2 * 128 + 2 * 8 * 128
    assert ops["linear_in_proj"].flops == pytest.approx(2 * 64 * in_n * 4096 * 45)
    assert ops["linear_ba_proj"].flops == pytest.approx(2 * 64 * (2 * 8) * 4096 * 45)
    assert ops["linear_out_proj"].flops == pytest.approx(2 * 64 * 4096 * 8 * 128 * 45)
    assert ops["qkv_proj"].calls == 15 and ops["linear_scan_decode"].calls == 45
    # decode: each sequence reads and writes its state once per linear layer, whatever its
    # context: at least those bytes at the HBM peak, at most a few times that
    state_dev = m.state_bytes_per_seq() / 45 / 8
    floor = 64 * 45 * 2 * state_dev / b200.mem_bw_bytes_per_s
    scan = ops["linear_scan_decode"].seconds
    assert floor < scan < 3 * floor
    longer = _ops(pred, BatchShape(decode_seqs=64, decode_context=64 * 40000))
    assert longer["linear_scan_decode"].seconds == pytest.approx(scan)
    # prefill: the chunked scan's FLOPs (chunk 64) priced no faster than the bf16 peak
    pre = _ops(pred, BatchShape(prefill=((8192, 0),)))["linear_scan_prefill"].seconds
    flops = 8192 * 8 * 2 * (64 * (2 * 128 + 2 * 128) + 3 * 128 * 128) * 45
    assert pre > flops / b200.peak_flops("bf16")
    # the iteration is the sum of its operators
    batch = BatchShape(decode_seqs=8, decode_context=8 * 3000, prefill=((512, 100),))
    total = sum(o.seconds for o in pred.ops(batch))
    assert total == pytest.approx(pred.iteration(batch).seconds)


def test_gated_attention_and_gated_shared_expert_have_their_kernels() -> None:
    """Qwen3.5 scales each attention output by sigmoid(gate) (15 layers) and each shared
    expert's output by sigmoid(x·w) (a hidden → 1 GEMV and a scale, 60 MoE layers); every
    shared expert has its SiLU(gate)·up between its two GEMMs. DeepSeek-V3 has the activation
    but no gate; Llama has neither. Bytes by hand at 64 tokens, TP 8, bf16 activations."""
    t, h = 64, 4096
    m = load_model("Qwen/Qwen3.5-397B-A17B")
    ops = _ops(Predictor(m, catalog().get("b200_sxm"), Parallel(tp=8)), BatchShape(decode_seqs=t))
    q_out = 32 * 256 // 8  # heads × head_dim per device
    assert ops["attn_gate"].calls == 15 and ops["attn_gate"].nbytes == 15 * 3 * t * q_out * 2
    assert ops["shared_gate_proj"].calls == 60
    assert ops["shared_gate_proj"].flops == pytest.approx(60 * 2 * t * h)
    assert ops["shared_gate_mul"].nbytes == 60 * 2 * t * h * 2
    s = 1024 // 8  # shared expert intermediate per device
    assert ops["shared_act"].calls == 60 and ops["shared_act"].nbytes == 60 * 3 * t * s * 2
    ds = _ops(
        Predictor(load_model("deepseek-ai/DeepSeek-V3"), catalog().get("b200_sxm"), Parallel(tp=8)),
        BatchShape(decode_seqs=t),
    )
    assert ds["shared_act"].calls == 58 and "shared_gate_proj" not in ds and "attn_gate" not in ds
    llama = _ops(
        Predictor(load_model("meta-llama/Llama-3.1-8B"), catalog().get("h100_sxm"), Parallel()),
        BatchShape(decode_seqs=t),
    )
    assert not {"shared_act", "shared_gate_proj", "attn_gate"} & set(llama)


def test_mla_makes_both_latents_in_one_gemm_and_normalises_each() -> None:
    """vLLM (fused_qkv_a_proj), SGLang (fused_qkv_a_proj_with_mqa) and TensorRT-LLM
    (kv_a_proj_with_mqa) compute DeepSeek's query and KV latents in one GEMM of
    1536 + 512 + 64 = 2112 outputs, then RMS-normalise the 1536 and 512 latents. By hand at
    64 tokens: 61 layers, 2·64·2112·7168 FLOPs each; the two norms read and write their latent
    in bf16. A model without a query latent (DeepSeek-V2-Lite style) keeps q_proj apart and
    normalises the KV latent alone."""
    t = 64
    m = load_model("deepseek-ai/DeepSeek-V3")
    ops = _ops(Predictor(m, catalog().get("h200_sxm"), Parallel(tp=8)), BatchShape(decode_seqs=t))
    assert "q_a_proj" not in ops and "kv_a_proj" not in ops
    assert ops["qkv_a_proj"].calls == 61
    assert ops["qkv_a_proj"].flops == pytest.approx(61 * 2 * t * 2112 * 7168)
    assert ops["latent_norms"].calls == 2 * 61
    assert ops["latent_norms"].nbytes == pytest.approx(2 * 61 * t * (1536 + 512) * 2)
    no_q_latent = replace(m, q_lora_rank=0)
    lite = _ops(
        Predictor(no_q_latent, catalog().get("h200_sxm"), Parallel(tp=8)),
        BatchShape(decode_seqs=t),
    )
    assert "q_proj" in lite and "qkv_a_proj" not in lite
    assert lite["kv_a_proj"].flops == pytest.approx(61 * 2 * t * 576 * 7168)
    assert lite["latent_norms"].calls == 61
    assert lite["latent_norms"].nbytes == pytest.approx(61 * 2 * t * 512 * 2)


def test_dsa_attention_grows_with_min_of_context_and_topk() -> None:
    m = load_model("deepseek-ai/DeepSeek-V3.2")
    b200 = catalog().get("b200_sxm")
    pred = Predictor(m, b200, Parallel(tp=8))

    def prefill(cached: int) -> dict[str, object]:
        return _ops(pred, BatchShape(prefill=((256, cached),)))

    short, at_k, long = prefill(500), prefill(4000), prefill(40000)
    assert short["attn_prefill"].seconds < at_k["attn_prefill"].seconds
    assert at_k["attn_prefill"].seconds == pytest.approx(long["attn_prefill"].seconds)
    # the indexer scans every cached key: 64 heads × 128 dims of FP8 logits per (query, key)
    # pair, no faster than the FP8 peak, and ~10× the keys take several times as long
    flops = 2 * 64 * 128 * 256 * (40000 + 257 / 2) * 61
    assert long["indexer_prefill"].seconds > flops / b200.peak_flops("fp8")
    assert long["indexer_prefill"].seconds > 3 * at_k["indexer_prefill"].seconds
    d1 = _ops(pred, BatchShape(decode_seqs=32, decode_context=32 * 4000))
    d2 = _ops(pred, BatchShape(decode_seqs=32, decode_context=32 * 40000))
    assert d1["attn_decode"].seconds == pytest.approx(d2["attn_decode"].seconds)
    # indexer decode slope: at least its key bytes (128 + 4 + 8 logit bytes) per token and
    # layer at the HBM peak
    grow = d2["indexer_decode"].seconds - d1["indexer_decode"].seconds
    assert grow > 61 * 140 * 32 * 36000 / b200.mem_bw_bytes_per_s
    assert math.isfinite(grow)


def test_predict_prices_a_deployment_that_does_not_fit_and_says_so(capsys) -> None:
    """GLM-5 in bf16 (1.5 TB of weights) cannot fit 8 B200s; `predict` still prices the
    iteration (its time does not depend on fitting) and says plainly that it does not fit."""
    import json

    from servesim.cli.main import main

    args = ["predict", "--model", "zai-org/GLM-5", "--device", "b200_sxm", "--tp", "8"]
    args += ["--decode-seqs", "64", "--context", "4000"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["memory"]["fits"] is False and "GB per device" in doc["memory"]["reason"]
    assert doc["totals"]["seconds"] > 0 and doc["operators"]
    assert main(args) == 0
    assert "does not fit:" in capsys.readouterr().out
    # Fitting (fp8 weights: 744 GB over 8 GPUs) reports its layout.
    assert main([*args, "--weight-dtype", "fp8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory"]["fits"] is True


def test_an_output_projection_the_checkpoint_quantises_keeps_its_format(tmp_path) -> None:
    """Listing some attention projections among the unquantised modules leaves o_proj in the
    checkpoint's format unless a pattern names it or the whole attention block."""
    for excluded, want in (
        (["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"], "fp4"),
        (["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.o_proj"], "bf16"),
        (["model.layers.0.self_attn"], "bf16"),
        (["model.layers.0.self_attn*"], "bf16"),
        (["*self_attn.*"], "bf16"),
    ):
        q = {"quantization": {"quant_algo": "NVFP4", "exclude_modules": excluded}}
        m = _write(tmp_path, SMALL, q)
        assert (m.attn_weight_dtype, m.attn_out_weight_dtype) == ("bf16", want), excluded
        # the o_proj weights (4 layers x 8 heads x 128 x 1024) count in their own format
        c, o_proj = m.param_counts(), 4 * 8 * 128 * 1024
        fp4 = 0.5 + 1 / 16  # NVFP4 values and their FP8 scales
        attn = (c["attention"] - o_proj) * 2.0 + o_proj * (fp4 if want == "fp4" else 2.0)
        rest = m.param_bytes() - attn
        assert rest == pytest.approx(
            (c["dense_mlp"] + c["shared_experts"]) * fp4
            + (c["router"] + c["norms"]) * 2.0
            + c["embedding"] * 2.0
        )
    # The bundled NVIDIA checkpoints: DeepSeek-R1's o_proj is NVFP4, GLM-5 lists it unquantised.
    assert load_model("nvidia/GLM-5-NVFP4").attn_out_weight_dtype == "bf16"
    # ... and the predictor runs DeepSeek-R1's o_proj as an fp4 GEMM on B200
    m = load_model("nvidia/DeepSeek-R1-NVFP4")
    pred = Predictor(m, catalog().get("b200_sxm"), Parallel(tp=8), get_engine("trtllm"))
    ops = {o.name: o for o in pred.ops(BatchShape(decode_seqs=4, decode_context=1000))}
    bf16 = Predictor(
        replace(m, attention_out_dtype=""),
        catalog().get("b200_sxm"),
        Parallel(tp=8),
        get_engine("trtllm"),
    ).ops(BatchShape(decode_seqs=4, decode_context=1000))
    o_bf16 = next(o for o in bf16 if o.name == "o_proj")
    assert ops["o_proj"].nbytes < 0.3 * o_bf16.nbytes  # 4-bit weights, not 16-bit
    assert ops["o_proj"].seconds < o_bf16.seconds
