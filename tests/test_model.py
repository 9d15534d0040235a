"""ModelSpec against published model sizes and hand-computed shapes."""

import json
from pathlib import Path

import pytest

from servesim.errors import ServesimError
from servesim.spec.model import bundled_models, load_model, spec_from_config

# (bundled name, published total params in billions, published active params in billions or None)
PUBLISHED = [
    ("meta-llama/Llama-3.1-8B", 8.03, None),
    ("meta-llama/Llama-3.1-70B", 70.6, None),
    ("meta-llama/Llama-3.1-405B", 405.9, None),
    ("Qwen/Qwen3-8B", 8.19, None),
    ("Qwen/Qwen3-32B", 32.8, None),
    ("Qwen/Qwen3-30B-A3B", 30.5, 3.3),
    ("Qwen/Qwen3-235B-A22B", 235.0, 22.0),
    ("mistralai/Mixtral-8x7B-v0.1", 46.7, 12.9),
    ("mistralai/Mixtral-8x22B-v0.1", 141.0, 39.0),
    ("deepseek-ai/DeepSeek-V3", 671.0, 37.0),  # model card: 671B + 14B MTP module, 37B active
    ("moonshotai/Kimi-K2.5", 1030.0, 32.0),  # "1T total, 32B activated" (text model)
    ("MiniMaxAI/MiniMax-M2.5", 229.0, 10.0),  # "230B total, 10B active"
    ("facebook/opt-13b", 12.85, None),  # OPT paper (Zhang et al. 2022) table 1 rounds it to 13B
]


@pytest.mark.parametrize(("name", "total_b", "active_b"), PUBLISHED)
def test_parameter_counts_match_published_sizes(name: str, total_b: float, active_b: float) -> None:
    m = load_model(name)
    assert m.num_params() / 1e9 == pytest.approx(total_b, rel=0.02)
    if active_b is not None:
        # Published "active" figures are rounded and sometimes leave out embeddings: 12 %.
        assert m.num_active_params() / 1e9 == pytest.approx(active_b, rel=0.12)


def test_gpt_oss_matches_the_model_card_breakdown() -> None:
    # gpt-oss model card: 120b has 116.83B total, 5.13B active (active counts the unembedding
    # but not the input embedding); 20b has 20.91B total, 3.61B active.
    for name, total, active in (
        ("openai/gpt-oss-120b", 116.83, 5.13),
        ("openai/gpt-oss-20b", 20.91, 3.61),
    ):
        m = load_model(name)
        assert m.num_params() / 1e9 == pytest.approx(total, rel=0.002)
        embed = m.vocab_size * m.hidden_size
        assert (m.num_active_params() - embed) / 1e9 == pytest.approx(active, rel=0.01)
        assert m.expert_dtype == "mxfp4" and m.weight_dtype == "bf16"
        assert m.sliding_window == 128 and m.num_sliding_layers == m.num_layers // 2


def test_llama_8b_by_hand() -> None:
    m = load_model("Llama-3.1-8B-Instruct")  # instruct variants share the base architecture
    h, inter, vocab, layers = 4096, 14336, 128256, 32
    attn = h * 4096 + 2 * h * 1024 + 4096 * h
    mlp = 3 * h * inter
    total = layers * (attn + mlp + 2 * h) + h + 2 * vocab * h
    assert m.num_params() == total
    assert m.param_bytes() == pytest.approx(2 * total)
    # KV: 32 layers × 2 (K,V) × 8 heads × 128 × 2 bytes = 131,072 B per token.
    assert m.kv_bytes_per_token() == 131072
    fp8 = m.with_dtypes(weight="fp8", kv="fp8")
    assert fp8.kv_bytes_per_token() == 65536
    # fp8 halves everything but the 16-bit embeddings, norms and lm_head.
    emb = 2 * vocab * h * 2.0 + (layers * 2 * h + h) * 2.0
    assert fp8.param_bytes() == pytest.approx((m.param_bytes() - emb) / 2 + emb)
    w4 = m.with_dtypes(weight="int4")
    assert w4.param_bytes() == pytest.approx((m.param_bytes() - emb) / 4 + emb)


def test_opt_13b_by_hand() -> None:
    m = load_model("facebook/opt-13b")
    h, ffn, vocab, layers = 5120, 20480, 50272, 40
    attn = 4 * h * h + 4 * h  # q, k, v, o with biases
    mlp = 2 * h * ffn + ffn + h  # ReLU MLP with biases
    norms = (2 * layers + 1) * 2 * h  # LayerNorm weight and bias
    total = layers * (attn + mlp) + norms + vocab * h + (2048 + 2) * h  # tied, learned positions
    assert m.num_params() == total
    assert not m.gated_mlp and m.num_kv_heads == 40 and m.tie_embeddings
    assert m.num_params() / 1e9 == pytest.approx(12.85, rel=0.01)
    assert m.kv_bytes_per_token() == 2 * 40 * 5120 * 2


def test_mla_kv_is_the_compressed_latent() -> None:
    m = load_model("deepseek-ai/DeepSeek-R1")
    assert m.is_mla and m.is_moe
    # (kv_lora_rank 512 + rope 64) values × 61 layers × 2 bytes
    assert m.kv_bytes_per_token() == (512 + 64) * 61 * 2
    assert m.weight_dtype == "fp8" and m.first_dense_layers == 3
    assert m.num_moe_layers == 58


def test_sliding_window_caps_kv_of_windowed_layers() -> None:
    m = load_model("openai/gpt-oss-20b")
    per_layer_token = 2 * 8 * 64 * 2
    full_layers, slide_layers = 12, 12
    assert m.kv_bytes(100) == (full_layers + slide_layers) * 100 * per_layer_token
    assert m.kv_bytes(10_000) == (full_layers * 10_000 + slide_layers * 128) * per_layer_token


def test_unknown_families_are_refused_by_name(tmp_path) -> None:
    cfg = {"model_type": "gemma3", "hidden_size": 256, "num_hidden_layers": 2}
    cfg.update(num_attention_heads=4, vocab_size=1000)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ServesimError, match=r"'gemma3'.*not supported"):
        load_model(str(tmp_path))


def test_config_path_and_bad_inputs(tmp_path) -> None:
    cfg = {
        "model_type": "llama",
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 1000,
    }
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = load_model(str(tmp_path))
    assert m.head_dim == 64 and m.num_layers == 2
    with pytest.raises(ServesimError, match="Unknown model"):
        load_model("not-a-model")
    bom = tmp_path / "bom.json"  # saved by a Windows editor: a byte-order mark first
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(cfg).encode())
    assert load_model(str(bom)).num_layers == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ServesimError, match="not valid JSON"):
        load_model(str(bad))
    del cfg["hidden_size"]
    p.write_text(json.dumps(cfg))
    with pytest.raises(ServesimError, match="lacks hidden_size"):
        load_model(str(p))
    cfg["hidden_size"] = 256
    cfg["model_type"] = "rwkv"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ServesimError, match=r"'rwkv'.*not supported"):
        load_model(str(p))


LLAMA_TINY = {
    "model_type": "llama",
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 512,
    "vocab_size": 1000,
}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"hidden_size": -4096}, "hidden_size in model config"),
        ({"num_attention_heads": 0}, "num_attention_heads in model config"),
        ({"num_hidden_layers": 0}, "num_layers is 0"),
        ({"num_attention_heads": 4.5}, "num_attention_heads in model config"),
        ({"hidden_size": "big"}, "hidden_size in model config"),
        ({"num_key_value_heads": 3}, "not a multiple of num_kv_heads"),
        ({"intermediate_size": -1}, "intermediate_size is -1"),
        ({"hidden_size": 250}, "not a multiple of num_attention_heads"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings in model config"),
        ({"model_type": "mixtral"}, "lacks num_local_experts"),
    ],
)
def test_impossible_sizes_are_refused_naming_the_key_and_file(tmp_path, change, needle) -> None:
    """A config with a negative width, no heads, heads that do not split or a missing MoE key
    is one sentence naming the key and the file, never a negative KV cache or a traceback."""
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**LLAMA_TINY, **change}))
    with pytest.raises(ServesimError, match=needle) as err:
        load_model(str(p))
    assert str(p) in str(err.value) and "\n" not in str(err.value)


def test_a_config_that_is_not_an_object_or_not_utf8_is_refused(tmp_path) -> None:
    p = tmp_path / "config.json"
    p.write_text("[1, 2]")
    with pytest.raises(ServesimError, match="must be a JSON object"):
        load_model(str(p))
    p.write_bytes(b'{"model_type": "\xff"}')
    with pytest.raises(ServesimError, match="not UTF-8"):
        load_model(str(p))


def test_a_whole_float_size_is_read_as_an_integer(tmp_path) -> None:
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**LLAMA_TINY, "hidden_size": 256.0}))
    assert load_model(str(p)).hidden_size == 256


def test_parallel_layouts_the_model_cannot_take_are_refused() -> None:
    from servesim.spec.parallel import Parallel

    m = load_model("meta-llama/Llama-3.1-8B")
    m.check_parallel(Parallel(tp=8, pp=32))
    with pytest.raises(ServesimError, match=r"PP=1000 exceeds .* 32 layers"):
        m.check_parallel(Parallel(pp=1000))
    with pytest.raises(ServesimError, match="is dense"):
        m.check_parallel(Parallel(tp=2, ep=2))
    moe = load_model("mistralai/Mixtral-8x7B-v0.1")
    moe.check_parallel(Parallel(tp=8, ep=8))
    with pytest.raises(ServesimError, match=r"does not divide .* 8 experts"):
        moe.check_parallel(Parallel(tp=4, dp=3, ep=3))


def test_tp_must_divide_heads() -> None:
    m = load_model("meta-llama/Llama-3.1-8B")
    m.check_tp(8)
    with pytest.raises(ServesimError, match="does not divide"):
        m.check_tp(3)


def test_every_bundled_config_loads_or_is_refused_by_name() -> None:
    for name in bundled_models():
        try:
            m = load_model(name)
        except ServesimError as exc:
            assert "not supported" in str(exc)
            continue
        assert m.num_params() > 1e9 and m.kv_bytes_per_token() > 0


def test_partial_expert_parallelism_splits_experts_over_groups() -> None:
    """EP groups of a stage hold n/ep experts each, split over moe_tp devices: per-device expert
    bytes are the same for every ep dividing tp (only the split changes), and ep must divide."""
    from servesim.spec.memory import weight_bytes_per_device
    from servesim.spec.parallel import Parallel

    m = load_model("Qwen/Qwen3-30B-A3B")
    full = weight_bytes_per_device(m, Parallel(tp=8))
    for ep in (2, 4, 8):
        assert Parallel(tp=8, ep=ep).moe_tp == 8 // ep
        assert weight_bytes_per_device(m, Parallel(tp=8, ep=ep)) == pytest.approx(full)
    # Attention DP: 4 ranks of tp2 keep 4 copies of attention but spread experts over all 8.
    dp = weight_bytes_per_device(m, Parallel(tp=2, dp=4, ep=8))
    assert dp > full
    with pytest.raises(ServesimError, match="must divide"):
        Parallel(tp=8, ep=3)


@pytest.mark.parametrize(
    ("name", "base", "weight"),
    [
        ("Qwen/Qwen3-32B-FP8", "Qwen/Qwen3-32B", "fp8"),
        ("nvidia/Qwen3-32B-NVFP4", "Qwen/Qwen3-32B", "fp4"),
        ("nvidia/Qwen3-30B-A3B-NVFP4", "Qwen/Qwen3-30B-A3B", "fp4"),
        ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B", None),
        ("nvidia/DeepSeek-V3-0324-NVFP4", "deepseek-ai/DeepSeek-V3", "fp4"),
        ("deepseek-ai/DeepSeek-R1-0528", "deepseek-ai/DeepSeek-R1", None),
        # aiconfigurator-core ships Kimi-K2-Instruct's own config: its FP8 block checkpoint.
        ("moonshotai/Kimi-K2-Instruct", "moonshotai/Kimi-K2.5", "fp8"),
    ],
)
def test_quantised_and_rereleased_checkpoints_resolve_to_their_architecture(
    name: str, base: str, weight: str | None
) -> None:
    """A quantised or re-released checkpoint loads as its architecture: its own config where
    servesim or aiconfigurator-core has one (Qwen3-32B-FP8's quantization_config), else the
    bundled base under the name's weight format."""
    m, b = load_model(name), load_model(base)
    assert m.num_layers == b.num_layers and m.hidden_size == b.hidden_size
    assert m.num_params() == pytest.approx(b.num_params())
    assert m.weight_dtype == (weight or b.weight_dtype)


def test_a_modelopt_checkpoint_known_by_name_caches_in_fp8() -> None:
    """NVIDIA's ModelOpt releases store an FP8 KV cache (hf_ptq.py's `--kv_cache_qformat`
    default; kv_cache_quant_algo FP8 in every NVFP4/FP8 checkpoint aiconfigurator-core ships),
    so `nvidia/Qwen3-32B-NVFP4`, resolved from the bundled Qwen3-32B by its suffix, holds half
    the KV bytes a token: 64 layers x 8 KV heads x 128 x 2 (K and V) x 1 byte = 131,072.
    Another organisation's quantised name keeps the base model's bf16 cache."""
    nv = load_model("nvidia/Qwen3-32B-NVFP4")
    assert (nv.weight_dtype, nv.kv_dtype) == ("fp4", "fp8")
    assert nv.kv_bytes_per_token() == 64 * 8 * 128 * 2 * 1
    assert load_model("nvidia/Llama-3.3-70B-Instruct-FP4").kv_dtype == "fp8"
    assert load_model("Qwen/Qwen3-32B-AWQ").kv_dtype == "bf16"
    assert load_model("Qwen/Qwen3-32B").kv_bytes_per_token() == 2 * nv.kv_bytes_per_token()


def test_a_model_only_aiconfigurator_core_ships_loads_by_name() -> None:
    """Qwen3.5-122B-A10B is not bundled; aiconfigurator-core's config (read in place) gives
    it: 48 layers, 256 experts of which 8 route, ~122 B parameters. Names neither knows are
    refused with both places named."""
    assert "Qwen/Qwen3.5-122B-A10B" not in bundled_models()
    m = load_model("Qwen/Qwen3.5-122B-A10B")
    assert (m.num_layers, m.num_experts, m.experts_per_token) == (48, 256, 8)
    assert m.num_params() == pytest.approx(122e9, rel=0.03)
    with pytest.raises(ServesimError, match="aiconfigurator-core's model configs"):
        load_model("acme/NoSuchModel-7B")


def test_a_different_family_with_a_known_suffix_is_still_refused() -> None:
    with pytest.raises(ServesimError, match="Unknown model"):
        load_model("zai-org/GLM-4.7-FP8")


# Published context lengths (model cards); the configs state them as the engines read them.
CONTEXTS = [
    ("meta-llama/Llama-3.1-8B", 131_072),  # 128K; llama3 RoPE scaling is already counted
    ("deepseek-ai/DeepSeek-V3", 163_840),  # YaRN: 4,096 original positions x factor 40
    ("openai/gpt-oss-120b", 131_072),  # YaRN: 4,096 x 32
    ("Qwen/Qwen3-32B", 40_960),  # the card: 32,768 tokens for outputs plus 8,192 for prompts
    ("Qwen/Qwen3.5-397B-A17B", 262_144),  # text_config of the multimodal wrapper
    ("nvidia/Nemotron-H-56B-Base-8K", 8_192),
    ("facebook/opt-13b", 2_048),
]


@pytest.mark.parametrize(("name", "tokens"), CONTEXTS)
def test_context_length_is_read_from_the_config(name: str, tokens: int) -> None:
    assert load_model(name).max_context_tokens == tokens


def test_context_length_follows_the_engines_rope_scaling_rule() -> None:
    """vLLM's `_get_and_verify_max_len`: the smallest length key, times a RoPE scaling factor
    unless the type already counts it; YaRN scales the original positions."""
    from servesim.spec.model import context_tokens

    assert context_tokens({"max_position_embeddings": 4096, "seq_length": 2048}) == 2048
    linear = {"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2}}
    assert context_tokens(linear) == 8192
    yarn = {
        "max_position_embeddings": 32768,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
    }
    assert context_tokens(yarn) == 131_072
    llama3 = {
        "max_position_embeddings": 131072,
        "rope_scaling": {"rope_type": "llama3", "factor": 8},
    }
    assert context_tokens(llama3) == 131_072
    assert context_tokens({"hidden_size": 8}) == 0  # not stated: nothing to check


@pytest.mark.parametrize(
    ("name", "total_b", "moe_layers", "dense_width"),
    [
        # model cards: "17B active, 109B total" (Scout, 16 experts) and "17B active, 400B
        # total" (Maverick, 128 experts); the totals include a ~1B vision encoder servesim
        # does not model.
        ("meta-llama/Llama-4-Scout-17B-16E-Instruct", 109.0, 48, 16384),
        ("meta-llama/Llama-4-Maverick-17B-128E-Instruct", 400.0, 24, 16384),
    ],
)
def test_llama_4_interleaved_experts_and_chunked_attention(
    name: str, total_b: float, moe_layers: int, dense_width: int
) -> None:
    """Llama 4: a shared expert plus one routed expert (width 8,192) in every
    interleave_moe_layer_step-th layer, a dense MLP of intermediate_size_mlp in the others;
    attention chunked at 8,192 tokens in the 36 RoPE layers, global in every 4th."""
    m = load_model(name)
    assert m.num_params() / 1e9 == pytest.approx(total_b, rel=0.02)
    assert m.num_active_params() / 1e9 == pytest.approx(17.0, rel=0.03)
    assert (m.num_moe_layers, m.num_dense_layers) == (moe_layers, 48 - moe_layers)
    assert m.intermediate_size == dense_width and m.moe_intermediate_size == 8192
    assert m.shared_expert_intermediate_size == 8192 and m.experts_per_token == 1
    assert (m.sliding_window, m.num_sliding_layers) == (8192, 36)
    # 12 global layers; the engines hold the 36 chunked layers' cache per token too
    assert m.num_full_attention_layers == 12 and m.chunked_attention
    assert m.kv_bytes_per_token() == 48 * 2 * 8 * 128 * 2
    assert m.kv_bytes_per_seq_window() == 0 and m.kv_bytes(10_000) == 10_000 * 48 * 4096
    with pytest.raises(ServesimError, match="no_rope_layers"):
        spec_from_config(m_config(name)["text_config"] | {"no_rope_layers": [1, 0]}, name="bad")


def test_a_windowed_model_that_does_not_fit_names_its_window_kv() -> None:
    """Each running sequence keeps a full window of KV in its sliding-window layers: gpt-oss-
    120b's 18 windowed layers with the window widened to 8,192 tokens hold 8,192 x 8 KV heads
    x 64 x 2 x 2 bytes x 18 = 302 MB a sequence at TP 1, 77.3 GB for 256; the refusal says
    so, as it does for SSM state."""
    from dataclasses import replace

    from servesim.spec.devices import catalog
    from servesim.spec.memory import memory_layout
    from servesim.spec.parallel import Parallel

    m = replace(load_model("openai/gpt-oss-120b"), sliding_window=8192)
    assert (m.num_sliding_layers, m.chunked_attention) == (18, False)
    assert m.kv_bytes_per_seq_window() == 18 * 8192 * 8 * 64 * 2 * 2
    h200, par = catalog().get("h200_sxm"), Parallel(tp=1)
    with pytest.raises(ServesimError, match=r"77\.3 GB of KV for the 8,192-token window of 256"):
        memory_layout(m, h200, par, max_num_seqs=256)
    assert memory_layout(m, h200, par, max_num_seqs=64).kv_tokens > 0


def test_llama_4_chunked_layers_are_held_per_token_not_reserved_up_front() -> None:
    """vLLM (hybrid manager off for chunked local attention) and SGLang (hybrid pool opt-in)
    hold Llama 4's chunked layers' cache per token like the global layers': Scout at TP 4 on
    H100 fits 256 sequences (it was refused for 77 GB of window reservations), and its pool
    costs 48 layers x 2 KV heads x 128 x 2 x 2 bytes a token a device."""
    from servesim.spec.devices import catalog
    from servesim.spec.memory import memory_layout
    from servesim.spec.parallel import Parallel

    m = load_model("meta-llama/Llama-4-Scout-17B-16E-Instruct")
    mem = memory_layout(m, catalog().get("h100_sxm"), Parallel(tp=4), max_num_seqs=256)
    assert mem.kv_bytes_per_token == 48 * 2 * 128 * 2 * 2 and mem.window_bytes_per_seq == 0
    assert mem.kv_tokens == int(mem.kv_bytes // mem.kv_bytes_per_token)


def m_config(name: str) -> dict:
    """aiconfigurator-core's bundled config of `name` (a dependency's file, read in place)."""
    import aiconfigurator_core

    folder = Path(aiconfigurator_core.__file__).parent / "model_configs"
    return json.loads((folder / f"{name.replace('/', '--')}_config.json").read_text())


def test_tp_past_the_kv_heads_replicates_the_kv_projections() -> None:
    """vLLM's and SGLang's QKVParallelLinear give each rank one whole KV head once TP exceeds
    the KV heads: Llama-3.1-8B (8 KV heads of 128) at TP 16 holds 32 layers x 2 x 128 x 4096
    bf16 K/V weights a rank, not a sixteenth of all eight heads'."""
    from servesim.spec.memory import weight_bytes_per_device
    from servesim.spec.parallel import Parallel

    m = load_model("meta-llama/Meta-Llama-3.1-8B")
    kv = 32 * 2 * 8 * 128 * 4096 * 2.0
    assert m.kv_projection_bytes() == pytest.approx(kv)
    at8 = weight_bytes_per_device(m, Parallel(tp=8))
    at16 = weight_bytes_per_device(m, Parallel(tp=16))
    # the rest halves from 8 to 16; the K/V share (one head a rank) stays kv / 8
    assert at16 == pytest.approx((at8 - kv / 8) / 2 + kv / 8)
    assert load_model("deepseek-ai/DeepSeek-R1").kv_projection_bytes() == 0.0  # MLA
