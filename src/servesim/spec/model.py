"""Model architecture from a Hugging Face `config.json`: sizes, parameter bytes, KV bytes per token.

`ModelSpec` is the one description of a model that the memory model and the predictor read.
Families servesim knows: dense GQA (Llama, Mistral, Qwen2/Qwen3), OPT (dense MHA with biases, a ReLU
MLP and learned positions), MoE (Mixtral, Qwen3-MoE, gpt-oss, MiniMax-M2), MLA + MoE
(DeepSeek-V3/R1, Kimi-K2), MLA + DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5) and hybrids of
full attention with linear attention or SSM layers (Qwen3-Next and Qwen3.5: Gated DeltaNet;
Kimi Linear: KDA; Nemotron-H: Mamba2). Any other `model_type` is refused by name rather than
guessed. Quantised checkpoints set the weight, expert and KV formats from `quantization_config`
or a ModelOpt `hf_quant_config.json` beside the config.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from servesim.errors import ServesimError
from servesim.spec.dtypes import canonical, nbytes, storage_nbytes

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "opt")
MOE_TYPES = ("mixtral", "qwen3_moe", "qwen2_moe", "gpt_oss", "minimax_m2", "llama4_text")
MLA_TYPES = ("deepseek_v3", "kimi_k2")
DSA_TYPES = ("deepseek_v32", "glm_moe_dsa")  # MLA + lightning indexer + top-k sparse attention
HYBRID_TYPES = ("qwen3_next", "qwen3_5_moe", "qwen3_5", "kimi_linear", "nemotron_h")
KNOWN_TYPES = DENSE_TYPES + MOE_TYPES + MLA_TYPES + DSA_TYPES + HYBRID_TYPES
LINEAR_KINDS = ("gdn", "kda", "mamba2")  # Gated DeltaNet, Kimi Delta Attention, Mamba2 (SSD)
GDN_CHUNK = 64  # chunk length of the chunked Gated DeltaNet / KDA kernels (flash-linear-attention)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, in the terms the predictor needs.

    Attention is GQA unless `kv_lora_rank` > 0 (DeepSeek MLA); `index_topk` > 0 adds DeepSeek
    Sparse Attention (an indexer over every cached token picks the top-k the MLA attends to).
    `num_linear_layers` layers replace softmax attention with a linear-attention/SSM mixer whose
    state is a constant per sequence (no KV cache). Blocks may hold only a mixer or only an MLP
    (Nemotron-H). Of the MLP layers, the first `first_dense_layers` use a dense MLP of
    `intermediate_size`; the rest are MoE when `num_experts` > 0.
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense MLP width (gated unless `gated_mlp` is False)
    vocab_size: int
    tie_embeddings: bool = False
    gated_mlp: bool = True
    attention_bias: bool = False
    qk_norm: bool = False
    mlp_bias: bool = False  # OPT: biases on both MLP matrices
    norm_bias: bool = False  # LayerNorm (weight and bias) rather than RMSNorm
    position_embeddings: int = 0  # learned absolute positions (OPT), 0 for rotary
    embed_dim: int = 0  # token-embedding width when it differs from hidden (OPT-350m), else 0
    # MoE
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0  # total width of always-on shared experts
    first_dense_layers: int = 0
    expert_bias: bool = False  # gpt-oss experts carry biases
    # Group-limited routing (DeepSeek-V3's `n_group` / `topk_group`): a token's experts come
    # from its best `expert_groups_per_token` of `expert_groups` groups; 1 / 1 is plain top-k.
    expert_groups: int = 1
    expert_groups_per_token: int = 1
    # MLA (DeepSeek-V3 style)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window attention: the window and how many layers use it
    sliding_window: int = 0
    num_sliding_layers: int = 0
    # The windowed layers attend within fixed chunks (Llama 4's `attention_chunk_size`) rather
    # than a sliding window. The engines' KV managers hold those layers' cache like full
    # attention's by default: vLLM turns its hybrid manager off for chunked local attention
    # (a latency regression; VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE opts in) and
    # SGLang's hybrid pool for Llama 4 is opt-in. The kernels still attend within the chunk.
    chunked_attention: bool = False
    attn_output_gate: bool = False  # Qwen3-Next/3.5: q_proj also emits a sigmoid output gate
    # DeepSeek Sparse Attention: lightning indexer heads and width, tokens each query attends to
    index_n_heads: int = 0
    index_head_dim: int = 0
    index_topk: int = 0
    # Linear-attention / SSM mixers (hybrids). Mamba2 maps onto the same names: k heads = groups
    # (B and C), k head dim = state size, v heads = SSM heads, v head dim = SSM head dim.
    linear_kind: str = ""
    num_linear_layers: int = 0
    linear_num_k_heads: int = 0
    linear_num_v_heads: int = 0
    linear_k_head_dim: int = 0
    linear_v_head_dim: int = 0
    linear_conv_kernel: int = 0
    linear_chunk: int = GDN_CHUNK
    state_dtype: str = "bf16"  # recurrent state (the short-convolution state stays in bf16)
    # Blocks holding only a token mixer, or only an MLP (Nemotron-H's 'M'/'*' and '-' blocks)
    num_mixer_only_layers: int = 0
    num_mlp_only_layers: int = 0
    # Multi-token-prediction (draft) layers the checkpoint carries, held in memory with the model
    num_mtp_layers: int = 0
    # Storage formats (weights of dense/shared parts, routed experts, KV cache; attention
    # projections and MTP layers when the checkpoint keeps them in another format, else "")
    weight_dtype: str = "bf16"
    expert_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    attention_dtype: str = ""
    # The attention output projection (o_proj) where the checkpoint quantises it while keeping
    # the rest of the attention unquantised (NVIDIA's DeepSeek-R1/V3.2 NVFP4 list q_a, q_b,
    # kv_a and kv_b among their unquantised modules, not o_proj); "" = as the attention.
    attention_out_dtype: str = ""
    mtp_dtype: str = ""
    # fp8 weights scaled per block (DeepSeek's `weight_block_size` [128, 128]) rather than per
    # tensor: engines run them with block-scaled GEMM and MoE kernels, measured in their own
    # tables (aiconfigurator's `fp8_block`); the bytes and FLOPs are fp8's.
    fp8_block: bool = False
    # Per-tensor fp8 activations scaled by a calibrated scale the checkpoint stores (ModelOpt
    # FP8, llm-compressor with `dynamic: false`, `activation_scheme: static`) rather than one
    # computed from each batch at run time: the engine skips the amax pass before each GEMM.
    fp8_static_act: bool = False
    # Bytes of group scales (and zero points) per integer-quantised weight: a 16-bit scale per
    # `group_size` weights (Kimi-K2.5's int4 experts, group 32: 0.0625; AWQ's group 128 with a
    # 4-bit zero point: 0.0195). 0 where the checkpoint states no groups or the format is set
    # by hand. Memory only, as NVFP4's block scales (`dtypes.STORAGE_BYTES`).
    int_scale_bytes_per_weight: float = 0.0
    # The longest sequence (prompt + output tokens) the checkpoint serves, as the engines
    # derive their default limit from config.json (`context_tokens`); 0: not stated.
    max_context_tokens: int = 0

    def __post_init__(self) -> None:
        """Refuse a shape no model has: every size positive, heads that split evenly, experts
        that exist."""
        where = f"Model {self.name!r}"
        for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim"):
            _positive(getattr(self, key), key, where)
        for key in ("intermediate_size", "vocab_size"):
            _positive(getattr(self, key), key, where)
        for key in (
            "position_embeddings",
            "embed_dim",
            "num_experts",
            "experts_per_token",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "first_dense_layers",
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "sliding_window",
            "num_sliding_layers",
            "index_n_heads",
            "index_head_dim",
            "index_topk",
            "num_linear_layers",
            "linear_num_k_heads",
            "linear_num_v_heads",
            "linear_k_head_dim",
            "linear_v_head_dim",
            "linear_conv_kernel",
            "num_mixer_only_layers",
            "num_mlp_only_layers",
            "num_mtp_layers",
            "max_context_tokens",
        ):
            _positive(getattr(self, key), key, where, zero_ok=True)
        if not 0.0 <= self.int_scale_bytes_per_weight < 1.0:
            raise ServesimError(
                f"{where}: int_scale_bytes_per_weight must be in [0, 1), not "
                f"{self.int_scale_bytes_per_weight}."
            )
        if not self.is_mla and self.num_heads % self.num_kv_heads:
            raise ServesimError(
                f"{where}: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                f"{self.num_kv_heads}; grouped-query attention needs it to be."
            )
        if self.num_experts:
            if not 1 <= self.experts_per_token <= self.num_experts:
                raise ServesimError(
                    f"{where}: experts_per_token {self.experts_per_token} must be between 1 and "
                    f"num_experts {self.num_experts}."
                )
            _positive(self.moe_intermediate_size, "moe_intermediate_size", where)
        if self.first_dense_layers > self.num_layers or self.num_sliding_layers > self.num_layers:
            raise ServesimError(
                f"{where}: first_dense_layers and num_sliding_layers must not exceed num_layers "
                f"{self.num_layers}."
            )
        if self.is_mla:
            for key in ("qk_rope_head_dim", "v_head_dim"):
                _positive(getattr(self, key), key, where)
        if self.num_attention_layers < self.num_sliding_layers or self.num_mlp_layers < 0:
            raise ServesimError(
                f"{where}: linear, MLP-only and sliding layers add up to more than its "
                f"{self.num_layers} layers."
            )
        if self.num_linear_layers:
            if self.linear_kind not in LINEAR_KINDS:
                raise ServesimError(
                    f"{where}: linear_kind {self.linear_kind!r} is not one of "
                    f"{', '.join(LINEAR_KINDS)}."
                )
            for key in (
                "linear_num_k_heads",
                "linear_num_v_heads",
                "linear_k_head_dim",
                "linear_v_head_dim",
                "linear_conv_kernel",
                "linear_chunk",
            ):
                _positive(getattr(self, key), key, where)
        if self.index_topk:
            if not self.is_mla:
                raise ServesimError(f"{where}: sparse attention (index_topk) needs MLA here.")
            for key in ("index_n_heads", "index_head_dim"):
                _positive(getattr(self, key), key, where)

    # ---- derived shape facts -------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """True when some layers route tokens to experts."""
        return self.num_experts > 0

    @property
    def lm_head_dtype(self) -> str:
        """The output head's storage format: 16 bits unless the model is wider. Quantised
        checkpoints keep it unquantised (NVIDIA's NVFP4 and FP8 checkpoints list `lm_head`
        among their excluded modules; DeepSeek's block-fp8 checkpoint stores it in bf16
        without a scale) and the engines build it so, as `param_bytes` counts it."""
        return self.weight_dtype if nbytes(self.weight_dtype) >= 2 else "bf16"

    @property
    def is_mla(self) -> bool:
        """True for DeepSeek multi-head latent attention (a compressed, head-shared KV cache)."""
        return self.kv_lora_rank > 0

    @property
    def is_sparse(self) -> bool:
        """True for DeepSeek Sparse Attention (indexer plus top-k MLA)."""
        return self.index_topk > 0

    @property
    def is_hybrid(self) -> bool:
        """True when some layers mix tokens with linear attention or an SSM (constant state)."""
        return self.num_linear_layers > 0

    @property
    def num_attention_layers(self) -> int:
        """Layers with softmax attention (full or sliding-window)."""
        return self.num_layers - self.num_linear_layers - self.num_mlp_only_layers

    @property
    def num_mlp_layers(self) -> int:
        """Layers with an MLP (dense or routed experts)."""
        return self.num_layers - self.num_mixer_only_layers

    @property
    def num_moe_layers(self) -> int:
        """Layers with a routed-expert MLP."""
        return self.num_mlp_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        """Layers with a plain (dense) MLP."""
        return self.num_mlp_layers - self.num_moe_layers

    @property
    def num_full_attention_layers(self) -> int:
        """Layers whose attention sees the whole context (the ones the KV cache holds in full)."""
        return self.num_attention_layers - self.num_sliding_layers

    @property
    def attn_weight_dtype(self) -> str:
        """Format of the attention (and linear-mixer) projections."""
        return self.attention_dtype or self.weight_dtype

    @property
    def attn_out_weight_dtype(self) -> str:
        """Format of the attention output projection (o_proj)."""
        return self.attention_out_dtype or self.attn_weight_dtype

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head (MLA: nope + rope parts)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def attn_v_head_dim(self) -> int:
        """Value/output width per head."""
        return self.v_head_dim if self.is_mla else self.head_dim

    @property
    def kv_values_per_token_per_layer(self) -> int:
        """Cached values per token per layer: 2·kv_heads·head_dim (GQA) or latent+rope (MLA)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    # ---- parameters ----------------------------------------------------------------------
    def attention_params(self) -> int:
        """Parameters of one attention block (projections, biases, per-head norms)."""
        h = self.hidden_size
        if self.is_mla:
            qk = self.qk_head_dim
            if self.q_lora_rank:
                q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * self.num_heads * qk
            else:
                q = h * self.num_heads * qk
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + self.o_proj_params() + self.indexer_params()
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        gate = q_out if self.attn_output_gate else 0
        params = h * (q_out + gate + 2 * kv_out) + self.o_proj_params()
        if self.attention_bias:
            params += q_out + 2 * kv_out + h
        if self.qk_norm:
            params += 2 * self.head_dim
        if self.model_type == "gpt_oss":
            params += self.num_heads  # attention sinks
        return params

    def o_proj_params(self) -> int:
        """Weights of one attention block's output projection (part of `attention_params`)."""
        width = self.num_heads * (self.v_head_dim if self.is_mla else self.head_dim)
        return width * self.hidden_size

    def storage_bytes(self, dtype: str) -> float:
        """Bytes a weight of format `dtype` takes in this checkpoint: the format's own
        (`dtypes.storage_nbytes`) plus the group scales of integer formats."""
        extra = self.int_scale_bytes_per_weight if canonical(dtype) in ("int4", "int8") else 0.0
        return storage_nbytes(dtype) + extra

    def _attention_bytes(self, params: int, blocks: int) -> float:
        """Bytes of `params` attention parameters over `blocks` attention blocks, their output
        projections in `attn_out_weight_dtype`, the rest in `attn_weight_dtype`."""
        out = blocks * self.o_proj_params() if self.attention_out_dtype else 0
        return (params - out) * self.storage_bytes(
            self.attn_weight_dtype
        ) + out * self.storage_bytes(self.attn_out_weight_dtype)

    def replicated_attention_params(self) -> int:
        """Parameters of one attention block that every TP rank holds whole: MLA's
        down-projections (q_a and kv_a with their norms) and a DSA indexer. vLLM and SGLang
        build them as `ReplicatedLinear` (deepseek_v2.py), TensorRT-LLM its `fused_a` without a
        TP split; the up-projections and the output projection are split."""
        if not self.is_mla:
            return 0
        h = self.hidden_size
        q_a = h * self.q_lora_rank + self.q_lora_rank if self.q_lora_rank else 0
        kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
        return q_a + kv_a + self.indexer_params()

    def kv_projection_bytes(self) -> float:
        """Bytes of the K and V projections (biases included) over the attention layers of a
        grouped-query model, 0 for MLA: what TP past the KV heads replicates rather than splits."""
        if self.is_mla:
            return 0.0
        kv_out = self.num_kv_heads * self.head_dim
        per_layer = 2 * kv_out * (self.hidden_size + (1 if self.attention_bias else 0))
        return self.num_attention_layers * per_layer * self.storage_bytes(self.attn_weight_dtype)

    def replicated_attention_bytes(self) -> float:
        """Bytes of `replicated_attention_params` over the main attention layers."""
        return (
            self.num_attention_layers
            * self.replicated_attention_params()
            * self.storage_bytes(self.attn_weight_dtype)
        )

    def indexer_params(self) -> int:
        """Parameters of one DSA lightning indexer: query up-projection from the q latent, one
        shared key projection with its LayerNorm, per-head weights."""
        if not self.is_sparse:
            return 0
        d, n = self.index_head_dim, self.index_n_heads
        q_in = self.q_lora_rank or self.hidden_size
        return q_in * n * d + self.hidden_size * d + 2 * d + self.hidden_size * n

    @property
    def linear_conv_dim(self) -> int:
        """Channels of a linear mixer's short causal convolution (q and k, or B and C, plus v/x)."""
        return (
            2 * self.linear_num_k_heads * self.linear_k_head_dim
            + self.linear_num_v_heads * self.linear_v_head_dim
        )

    def linear_params(self) -> int:
        """Parameters of one linear-attention/SSM mixer (projections, conv, gates, norm)."""
        if not self.num_linear_layers:
            return 0
        h, k = self.hidden_size, self.linear_conv_kernel
        nk, nv = self.linear_num_k_heads, self.linear_num_v_heads
        dk, dv = self.linear_k_head_dim, self.linear_v_head_dim
        conv = self.linear_conv_dim
        out = nv * dv * h
        if self.linear_kind == "gdn":
            # in_proj q, k, v, z (output gate) and b, a (beta, decay); conv; dt_bias, A_log; norm
            return h * (2 * nk * dk + 2 * nv * dv + 2 * nv) + conv * k + 2 * nv + dv + out
        if self.linear_kind == "kda":
            # q, k, v projections with convs; low-rank decay (f_a, f_b) and output gate (g_a, g_b)
            # of rank head_dim; beta; A_log, dt_bias; norm
            gates = 2 * (h * dk + dk * nv * dv)
            return 3 * h * nv * dv + conv * k + gates + h * nv + nv + nv * dk + dv + out
        # mamba2: in_proj z, x, B, C, dt; conv with bias; dt_bias, A_log, D; gated norm
        d_inner = nv * dv
        in_proj = h * (2 * d_inner + 2 * nk * dk + nv)
        return in_proj + conv * (k + 1) + 3 * nv + d_inner + out

    def mlp_params(self, width: int) -> int:
        """Parameters of one dense MLP of a given intermediate width."""
        mats = 3 if self.gated_mlp else 2
        bias = (width + self.hidden_size) if self.mlp_bias and width else 0
        return mats * self.hidden_size * width + bias

    def expert_params(self) -> int:
        """Parameters of one routed expert."""
        p = self.mlp_params(self.moe_intermediate_size)
        if self.expert_bias:
            p += 2 * self.moe_intermediate_size + self.hidden_size
        return p

    @property
    def shared_expert_gate(self) -> bool:
        """Whether a sigmoid gate (a hidden → 1 projection) scales the shared expert's output
        (Qwen2-MoE's family: Qwen3-Next, Qwen3.5)."""
        return (
            self.model_type in ("qwen3_next", "qwen3_5_moe")
            and self.shared_expert_intermediate_size > 0
        )

    def router_params(self) -> int:
        """Parameters of one MoE router (plus its bias, or the shared expert's gate, where the
        family has one)."""
        bias = self.num_experts if self.model_type in ("gpt_oss",) else 0
        if self.shared_expert_gate:
            bias = self.hidden_size  # shared_expert_gate
        return self.hidden_size * self.num_experts + bias

    def embedding_params(self) -> int:
        """Input embedding plus output head (counted once when tied), learned positions and
        the in/out projections of a narrower embedding."""
        h = self.hidden_size
        d = self.embed_dim or h
        n = self.vocab_size * d
        n = n if self.tie_embeddings else 2 * n
        n += self.position_embeddings * h
        if d != h:
            n += 2 * d * h
        return n

    def param_counts(self) -> dict[str, int]:
        """Parameter counts by part: attention, linear_attention, dense_mlp, shared_experts,
        routed_experts, router, norms, embedding (MTP layers apart: `mtp_params`)."""
        h = self.hidden_size
        blocks = self.num_mixer_only_layers or self.num_mlp_only_layers
        per_layer = 1 if blocks else 2  # a block with one sublayer has one pre-norm
        norms = (self.num_layers * per_layer * h + h) * (2 if self.norm_bias else 1)
        return {
            "attention": self.num_attention_layers * self.attention_params(),
            "linear_attention": self.num_linear_layers * self.linear_params(),
            "dense_mlp": self.num_dense_layers * self.mlp_params(self.intermediate_size),
            "shared_experts": self.num_moe_layers
            * self.mlp_params(self.shared_expert_intermediate_size),
            "routed_experts": self.num_moe_layers * self.num_experts * self.expert_params(),
            "router": self.num_moe_layers * self.router_params(),
            "norms": norms,
            "embedding": self.embedding_params(),
        }

    def num_params(self) -> int:
        """Total parameters of the model proper (MTP layers apart, as model cards count)."""
        return sum(self.param_counts().values())

    def num_active_params(self) -> int:
        """Parameters touched by one token (routed experts counted top-k of n)."""
        c = self.param_counts()
        routed = self.num_moe_layers * self.experts_per_token * self.expert_params()
        return sum(c.values()) - c["routed_experts"] + routed

    def mtp_layer_parts(self) -> dict[str, int]:
        """One multi-token-prediction layer (DeepSeek/GLM/Qwen3.5 style): a full-attention
        decoder layer with the last layers' MLP, the projection of [embedding; hidden] (2h → h)
        and its norms; it shares the embedding and LM head."""
        h = self.hidden_size
        moe = self.is_moe and self.num_moe_layers > 0
        return {
            "attention": self.attention_params() + 2 * h,
            "routed_experts": self.num_experts * self.expert_params() if moe else 0,
            "mlp": (
                self.mlp_params(self.shared_expert_intermediate_size) + self.router_params()
                if moe
                else self.mlp_params(self.intermediate_size)
            ),
            "proj": 2 * h * h + 3 * h,
        }

    def mtp_params(self) -> int:
        """Parameters of the checkpoint's MTP (draft) layers."""
        return self.num_mtp_layers * sum(self.mtp_layer_parts().values())

    def mtp_bytes(self) -> float:
        """Bytes of the MTP layers: in `mtp_dtype` when the checkpoint keeps them apart, else in
        the formats of the main layers."""
        if not self.num_mtp_layers:
            return 0.0
        p = self.mtp_layer_parts()
        if self.mtp_dtype:
            per = sum(p.values()) * self.storage_bytes(self.mtp_dtype)
        else:
            per = (
                self._attention_bytes(p["attention"], 1)
                + p["routed_experts"] * self.storage_bytes(self.expert_dtype)
                + (p["mlp"] + p["proj"]) * self.storage_bytes(self.weight_dtype)
            )
        return self.num_mtp_layers * per

    def param_bytes(self) -> float:
        """Weight bytes: experts in `expert_dtype`, attention in `attn_weight_dtype`, embeddings
        in 16 bits, the rest in `weight_dtype`; MTP layers the checkpoint carries included."""
        c = self.param_counts()
        w = self.storage_bytes(self.weight_dtype)
        emb_b = storage_nbytes(self.lm_head_dtype)  # embeddings and the head stay in 16 bits
        return (
            c["routed_experts"] * self.storage_bytes(self.expert_dtype)
            + self._attention_bytes(c["attention"], self.num_attention_layers)
            + c["linear_attention"] * self.storage_bytes(self.attn_weight_dtype)
            + (c["dense_mlp"] + c["shared_experts"]) * w
            + (c["router"] + c["norms"]) * 2.0
            + c["embedding"] * emb_b
            + self.mtp_bytes()
        )

    def expert_bytes(self) -> float:
        """Bytes of the routed experts (main layers and MTP layers), which EP spreads."""
        mtp = self.num_mtp_layers * self.mtp_layer_parts()["routed_experts"]
        mtp_b = mtp * self.storage_bytes(self.mtp_dtype or self.expert_dtype)
        return self.param_counts()["routed_experts"] * self.storage_bytes(self.expert_dtype) + mtp_b

    # ---- recurrent state (linear-attention / SSM layers) -----------------------------------
    def state_values_per_layer(self) -> tuple[int, int]:
        """(recurrent-state values, convolution-state values) one sequence holds per linear
        layer: a (k head dim × v head dim) matrix per v head, and kernel − 1 past inputs of the
        short convolution."""
        if not self.num_linear_layers:
            return 0, 0
        ssm = self.linear_num_v_heads * self.linear_k_head_dim * self.linear_v_head_dim
        return ssm, (self.linear_conv_kernel - 1) * self.linear_conv_dim

    def state_bytes_per_seq(self) -> float:
        """Recurrent-state bytes one running sequence holds, whatever its length (whole model)."""
        ssm, conv = self.state_values_per_layer()
        return self.num_linear_layers * (ssm * nbytes(self.state_dtype) + conv * 2.0)

    # ---- KV cache ------------------------------------------------------------------------
    def index_bytes_per_token_per_layer(self) -> float:
        """DSA indexer key cache per token and layer: fp8 keys plus one fp32 scale per 128."""
        if not self.is_sparse:
            return 0.0
        return self.index_head_dim + 4.0 * -(-self.index_head_dim // 128)

    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token adds across the full-attention layers (whole model, no TP);
        linear layers hold none, DSA layers add the indexer's keys."""
        per_layer = self.kv_values_per_token_per_layer * nbytes(self.kv_dtype)
        if self.is_sparse and canonical(self.kv_dtype) == "fp8":
            # The sparse MLA kernels' fp8 layout (FlashMLA's, vLLM `fp8_ds_mla`, SGLang's NSA
            # pool): the latent in fp8 with one fp32 scale per 128 values, the rope part in
            # bf16: 512 + 16 + 128 = 656 bytes for DeepSeek-V3.2, not 576.
            r = self.kv_lora_rank
            per_layer = r + 4.0 * -(-r // 128) + 2.0 * self.qk_rope_head_dim
        layers = self.num_full_attention_layers + self._chunked_layers_held_in_full()
        return layers * (per_layer + self.index_bytes_per_token_per_layer())

    def _chunked_layers_held_in_full(self) -> int:
        """Windowed layers whose cache the engines hold for every token (`chunked_attention`)."""
        return self.num_sliding_layers if self.chunked_attention else 0

    def kv_bytes_per_seq_window(self) -> float:
        """KV bytes a sequence holds in its sliding-window layers once past the window (0 for
        chunked layers, held per token: `chunked_attention`)."""
        return (
            (self.num_sliding_layers - self._chunked_layers_held_in_full())
            * self.sliding_window
            * self.kv_values_per_token_per_layer
            * nbytes(self.kv_dtype)
        )

    def kv_bytes(self, context_tokens: int) -> float:
        """KV bytes of one sequence of `context_tokens`; windowed layers hold at most the window."""
        full = context_tokens * self.kv_bytes_per_token()
        if not self.num_sliding_layers or self.chunked_attention:
            return full
        per_token = self.kv_values_per_token_per_layer * nbytes(self.kv_dtype)
        return full + self.num_sliding_layers * min(context_tokens, self.sliding_window) * per_token

    def loaded(self, mtp: bool) -> ModelSpec:
        """The model as an engine loads it: the checkpoint's MTP layers only when MTP drafting
        uses them. Without it vLLM, SGLang and TensorRT-LLM skip `model.layers.<n>` for n past
        `num_hidden_layers` when they load the weights (vLLM's `get_spec_layer_idx_from_weight_name`
        check in deepseek_v2.py, SGLang's `DeepseekV2ForCausalLM.load_weights`; the draft model
        class loads them), so those layers take no memory."""
        if mtp or not self.num_mtp_layers:
            return self
        return replace(self, num_mtp_layers=0)

    def with_dtypes(
        self, weight: str | None = None, kv: str | None = None, expert: str | None = None
    ) -> ModelSpec:
        """A copy stored in other formats; `weight` alone sets experts too."""
        w = canonical(weight) if weight else self.weight_dtype
        e = canonical(expert) if expert else (w if weight else self.expert_dtype)
        k = canonical(kv) if kv else self.kv_dtype
        if k not in ("bf16", "fp16", "fp8"):
            raise ServesimError(f"KV-cache dtype {kv!r} is not supported; use bf16, fp16 or fp8.")
        a = "" if weight else self.attention_dtype
        out = "" if weight else self.attention_out_dtype
        mtp = "" if weight else self.mtp_dtype
        return replace(
            self,
            weight_dtype=w,
            expert_dtype=e,
            kv_dtype=k,
            attention_dtype=a,
            attention_out_dtype=out,
            mtp_dtype=mtp,
        )

    def stored_as(self, release: ModelSpec) -> ModelSpec:
        """This model in the storage formats of `release`, another checkpoint of it (weights,
        experts, attention and its output projection, MTP layer, fp8 scaling); the KV cache
        stays, as the serving launch sets it."""
        return replace(
            self,
            weight_dtype=release.weight_dtype,
            expert_dtype=release.expert_dtype,
            attention_dtype=release.attention_dtype,
            attention_out_dtype=release.attention_out_dtype,
            mtp_dtype=release.mtp_dtype,
            fp8_block=release.fp8_block,
            fp8_static_act=release.fp8_static_act,
        )

    def mtp_layer_model(self) -> ModelSpec:
        """This model with every layer in the MTP layer's format, the shape a draft pass of its
        MTP head is priced in: itself unless the checkpoint keeps the MTP layers apart
        (`mtp_dtype`, e.g. NVIDIA's NVFP4 DeepSeek-R1 and Qwen3.5 leave them unquantised)."""
        if not self.num_mtp_layers or not self.mtp_dtype:
            return self
        d = self.mtp_dtype
        return replace(
            self,
            weight_dtype=d,
            expert_dtype=d,
            attention_dtype="",
            attention_out_dtype="",
            mtp_dtype="",
            fp8_block=self.fp8_block and d == "fp8",
            fp8_static_act=self.fp8_static_act and d == "fp8",
        )

    def weight_dtypes(self) -> set[str]:
        """Every format the checkpoint's GEMM weights come in."""
        out = {self.weight_dtype, self.attn_weight_dtype, self.attn_out_weight_dtype}
        if self.is_moe:
            out.add(self.expert_dtype)
        if self.num_mtp_layers and self.mtp_dtype:
            out.add(self.mtp_dtype)
        return out

    def check_device(self, device: Any) -> None:
        """Refuse formats a GPU cannot run, as the engines do: FP8 and FP4 (NVFP4) weights need
        FP8 tensor cores (Hopper, Ada, Blackwell), so an Ampere-class GPU refuses them."""
        if getattr(device, "kind", "gpu") != "gpu" or "fp8" in device.peak_flops_per_s:
            return
        bad = sorted(d for d in self.weight_dtypes() if d in ("fp8", "fp4"))
        if bad:
            raise ServesimError(
                f"{device.name} has no FP8 tensor cores, so serving engines cannot run "
                f"{self.name}'s {' and '.join(bad)} weights; use a bf16 or int4 (AWQ/GPTQ) "
                "checkpoint (--weight-dtype) or a Hopper, Ada or Blackwell GPU."
            )

    def check_context(self, tokens: int, what: str = "A sequence") -> None:
        """Refuse a sequence (prompt and output tokens) longer than the model's context: every
        engine rejects one before serving it (vLLM's OpenAI server and SGLang's tokenizer
        manager answer HTTP 400, TensorRT-LLM fails it on `max_seq_len`)."""
        limit = self.max_context_tokens
        if limit and tokens > limit:
            raise ServesimError(
                f"{what} of {tokens:,} tokens exceeds {self.name}'s {limit:,}-token context, "
                f"which engines refuse; give sequences of at most {limit:,} tokens."
            )

    def check_tp(self, tp: int) -> None:
        """Refuse a tensor-parallel degree that does not split the heads evenly."""
        if tp < 1:
            raise ServesimError(f"Tensor parallelism must be ≥ 1, got {tp}.")
        if self.num_heads % tp:
            raise ServesimError(
                f"TP={tp} does not divide {self.name}'s {self.num_heads} attention heads; "
                f"use a TP that divides {self.num_heads}."
            )
        if self.num_linear_layers and self.linear_num_v_heads % tp:
            raise ServesimError(
                f"TP={tp} does not divide {self.name}'s {self.linear_num_v_heads} linear-attention "
                f"heads; use a TP that divides {self.linear_num_v_heads}."
            )
        if not self.is_mla and self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise ServesimError(
                f"TP={tp} does not divide {self.name}'s {self.num_kv_heads} KV heads and is not a "
                "multiple of them; pick a TP that divides or is a multiple of the KV heads."
            )

    def check_parallel(self, par: Any) -> None:
        """Refuse a parallel layout the model cannot take: TP that does not split the heads,
        more pipeline stages than layers, expert parallelism without experts to spread."""
        self.check_tp(par.tp)
        if par.pp > self.num_layers:
            raise ServesimError(
                f"PP={par.pp} exceeds {self.name}'s {self.num_layers} layers; use a pipeline "
                f"degree of at most {self.num_layers}."
            )
        if par.ep > 1 and not self.is_moe:
            raise ServesimError(f"EP={par.ep} spreads experts but {self.name} is dense; use ep=1.")
        if par.ep > 1 and self.num_experts % par.ep:
            raise ServesimError(
                f"EP={par.ep} does not divide {self.name}'s {self.num_experts} experts; use an "
                f"EP that divides {self.num_experts}."
            )


def _positive(value: Any, key: str, where: str, zero_ok: bool = False) -> None:
    """Refuse a size that is not a whole number ≥ 1 (≥ 0 with `zero_ok`)."""
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ServesimError(f"{where}: {key} is {value!r}; it must be a whole number ≥ {low}.")


# ---- loading from config.json -----------------------------------------------------------


def _get(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    v = cfg.get(key, default)
    return default if v is None else v


def _require(cfg: dict[str, Any], keys: tuple[str, ...], origin: str) -> None:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise ServesimError(
            f"{origin} lacks {', '.join(missing)}; is it a model's config.json (add them)?"
        )


_ALGO_DTYPES = {
    "nvfp4": "fp4",
    "fp8": "fp8",
    "fp8_pb_wo": "fp8",
    "fp8_block_scales": "fp8",
    "w4a16_awq": "int4",
    "w4a8_awq": "int4",
    "int4_awq": "int4",
    "w4a16_gptq": "int4",
    "w8a16": "int8",
    "int8_sq": "int8",
    "w8a8_sq_per_channel": "int8",
    "mxfp4": "mxfp4",
    "w4a8_mxfp4_fp8": "mxfp4",
    "w4a16_mxfp4": "mxfp4",
}
# Module-name fragments that mark the attention (or linear-mixer) projections, the shared or
# dense MLP, and the MTP layers in a checkpoint's list of unquantised modules.
_ATTN_MARKS = (
    "self_attn",
    "q_proj",
    "q_a_proj",
    "q_b_proj",
    "kv_a_proj",
    "kv_b_proj",
    "linear_attn",
    "in_proj",
    "qkv_proj",
    "mixer",
)
_SHARED_MARKS = ("shared_expert",)
# Names of whole attention (or mixer) blocks: a pattern ending in one leaves every projection of
# the block unquantised, its output projection too.
_BLOCK_MARKS = ("self_attn", "attention", "attn", "mixer")


def _excluded(patterns: list[Any], marks: tuple[str, ...]) -> bool:
    """True when some unquantised-module pattern names one of `marks`."""
    return any(any(m in str(p) for m in marks) for p in patterns)


def _covers_o_proj(pattern: Any) -> bool:
    """True when an unquantised-module pattern takes in the attention output projection: it
    names o_proj, or a whole attention or mixer block (`...self_attn`, `...self_attn*`)."""
    s = str(pattern)
    block = s.rstrip("*.")
    return "o_proj" in s or block.endswith(_BLOCK_MARKS)


def _mtp_excluded(patterns: list[Any], num_layers: int) -> bool:
    """True when the unquantised modules include the MTP layers (`layers.<num_layers>`, `mtp`)."""
    for p in patterns:
        text = str(p)
        if "mtp" in text or f"layers.{num_layers}." in text or f"layers.{num_layers}*" in text:
            return True
        if text.startswith(f"{num_layers}*"):
            return True
    return False


def _algo_dtype(algo: Any, origin: str) -> str:
    """servesim's format for a ModelOpt quant_algo (NVFP4, FP8, W4A16_AWQ, ...)."""
    key = str(algo).strip().lower()
    if key not in _ALGO_DTYPES:
        raise ServesimError(
            f"{origin} uses quantisation {algo!r}, which servesim does not model; use a bf16, "
            "FP8, NVFP4, MXFP4 or AWQ/GPTQ int4 checkpoint or set --weight-dtype."
        )
    return _ALGO_DTYPES[key]


def _group_scale_bytes(weights: list[dict[str, Any]], origin: str) -> float:
    """Bytes of scales and zero points per integer weight of a group-quantised checkpoint: a
    16-bit scale per group and, unless symmetric, a zero point of the weights' width (packed as
    the weights are). 0 without groups (per-channel scales: a row's scale is negligible)."""
    found = 0.0
    for w in weights:
        group = w.get("group_size")
        if group in (None, -1, 0) or w.get("strategy") not in (None, "group", "tensor_group"):
            continue
        if not isinstance(group, int) or isinstance(group, bool) or group < 1:
            raise ServesimError(
                f"{origin} gives group_size {group!r}; it must be a whole number of weights "
                "(or -1 for per-channel scales)."
            )
        zero = 0.0 if w.get("symmetric", True) else int(w.get("num_bits") or 4) / 8
        found = max(found, (2.0 + zero) / group)
    return found


def _modelopt_formats(q: dict[str, Any], num_layers: int, origin: str) -> dict[str, Any]:
    """Formats from a ModelOpt description (`hf_quant_config.json`'s `quantization`, or a
    `quantization_config` with quant_method modelopt)."""
    algo = q.get("quant_algo")
    if str(algo).upper() == "MIXED_PRECISION":
        raise ServesimError(
            f"{origin} is a mixed-precision checkpoint (per-layer formats), which servesim does "
            "not model; set --weight-dtype to the format of its experts."
        )
    dtype = _algo_dtype(algo, origin) if algo else "bf16"
    excluded = list(q.get("exclude_modules") or q.get("ignore") or [])
    out: dict[str, Any] = {"weight_dtype": dtype, "expert_dtype": dtype}
    if dtype in ("int4", "int8") and q.get("group_size"):  # ModelOpt AWQ: symmetric groups
        out["int_scale_bytes_per_weight"] = _group_scale_bytes(
            [{"group_size": q.get("group_size"), "strategy": "group"}], origin
        )
    if str(algo).upper() == "FP8":  # ModelOpt calibrates a static input scale per layer
        out["fp8_static_act"] = True
    if dtype != "bf16" and _excluded(excluded, _ATTN_MARKS):
        out["attention_dtype"] = "bf16"
        if not any(_covers_o_proj(p) for p in excluded):
            out["attention_out_dtype"] = dtype
    if dtype != "bf16" and _excluded(excluded, _SHARED_MARKS):
        out["weight_dtype"] = "bf16"
    if dtype != "bf16" and _mtp_excluded(excluded, num_layers):
        out["mtp_dtype"] = "bf16"
    kv = q.get("kv_cache_quant_algo")
    scheme = q.get("kv_cache_scheme")
    if isinstance(scheme, dict) and int(scheme.get("num_bits") or 16) == 8:
        kv = "fp8"
    elif isinstance(scheme, str):
        kv = scheme
    if kv:
        if str(kv).lower() != "fp8":
            raise ServesimError(
                f"{origin} stores the KV cache as {kv!r}; servesim models bf16 or fp8 KV caches."
            )
        out["kv_dtype"] = "fp8"
    return out


def _quant_formats(
    cfg: dict[str, Any], hf_quant: dict[str, Any] | None, num_layers: int, origin: str
) -> dict[str, Any]:
    """Weight, expert, attention, MTP and KV formats a checkpoint states: its config's
    `quantization_config`, or a ModelOpt `hf_quant_config.json` beside it (which wins)."""
    if hf_quant is not None:
        q = hf_quant.get("quantization")
        if not isinstance(q, dict):
            raise ServesimError(
                f"hf_quant_config.json of {origin} lacks a `quantization` object; is it a "
                "ModelOpt quantisation config?"
            )
        return _modelopt_formats(q, num_layers, f"hf_quant_config.json of {origin}")
    q = cfg.get("quantization_config") or {}
    if not isinstance(q, dict):
        raise ServesimError(f"quantization_config in {origin} must be an object.")
    method = str(q.get("quant_method", "")).lower()
    if not q or not method:
        return {}
    if method == "fp8":
        fp8: dict[str, Any] = {"weight_dtype": "fp8", "expert_dtype": "fp8"}
        if q.get("weight_block_size"):  # e.g. [128, 128]: DeepSeek-V3, Qwen3.5-FP8, MiniMax-M2
            fp8["fp8_block"] = True
        if str(q.get("activation_scheme", "")).lower() == "static":
            fp8["fp8_static_act"] = True
        if str(q.get("moe_quant_algo", "")).upper() == "NVFP4":
            fp8["expert_dtype"] = "fp4"
        return fp8
    if method == "mxfp4":
        return {"weight_dtype": "bf16", "expert_dtype": "mxfp4"}  # gpt-oss: experts only
    if method == "modelopt":
        return _modelopt_formats(q, num_layers, origin)
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin"):
        bits = int(q.get("bits") or q.get("w_bit") or 4)
        if bits not in (4, 8):
            raise ServesimError(f"{origin}: {method} with {bits}-bit weights is not modelled.")
        dtype = "int4" if bits == 4 else "int8"
        # AutoAWQ always stores a zero point per group; GPTQ packs one unless symmetric.
        zero = method.startswith("awq") or not q.get("sym", True)
        group = q.get("group_size", q.get("q_group_size"))
        spec = {"group_size": group, "num_bits": bits, "symmetric": not zero}
        return {
            "weight_dtype": dtype,
            "expert_dtype": dtype,
            "int_scale_bytes_per_weight": _group_scale_bytes([spec], origin),
        }
    if method == "compressed-tensors":
        groups = [g for g in (q.get("config_groups") or {}).values() if isinstance(g, dict)]
        weights = [g.get("weights") or {} for g in groups]
        bits = {int(w.get("num_bits") or 16) for w in weights}
        floats = {str(w.get("type", "int")) == "float" for w in weights}
        ignore = " ".join(str(x) for x in q.get("ignore", []))
        out: dict[str, Any] = {}
        if 4 in bits:
            fmt = str(q.get("format", ""))
            dtype = "mxfp4" if "mxfp4" in fmt else ("fp4" if True in floats else "int4")
            dense = "bf16" if "self_attn" in ignore else dtype
            out = {"weight_dtype": dense, "expert_dtype": dtype}
            if dtype == "int4":
                out["int_scale_bytes_per_weight"] = _group_scale_bytes(weights, origin)
        elif 8 in bits:
            dtype = "fp8" if True in floats else "int8"
            out = {"weight_dtype": dtype, "expert_dtype": dtype}
            if dtype == "fp8" and any(w.get("strategy") == "block" for w in weights):
                out["fp8_block"] = True  # llm-compressor's FP8_BLOCK scheme
            acts = [g.get("input_activations") or {} for g in groups]
            if dtype == "fp8" and acts and all(a.get("dynamic") is False for a in acts):
                out["fp8_static_act"] = True  # llm-compressor's FP8 (static) scheme
        scheme = q.get("kv_cache_scheme")
        if isinstance(scheme, dict) and int(scheme.get("num_bits") or 16) == 8:
            out["kv_dtype"] = "fp8"
        return out
    raise ServesimError(
        f"{origin} uses quant_method {method!r}, which servesim does not model; use a bf16, FP8, "
        "NVFP4, MXFP4 or AWQ/GPTQ int4 checkpoint or set --weight-dtype."
    )


# Config keys that state a model's sequence limit, in vLLM's order (vllm/config/model.py
# `_get_and_verify_max_len`: OPT/Llama, GPT-2, MPT, ChatGLM, Command-R, others); the smallest
# present is the limit. (SGLang's `get_context_length` takes the first of five of them and
# does not scale a YaRN config that states its original positions: never a longer limit.)
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def context_tokens(cfg: dict[str, Any]) -> int:
    """The longest sequence (prompt + output tokens) a checkpoint serves by default, derived as
    vLLM derives its `max_model_len` (the most any engine allows without an override): the
    smallest of the config's length keys, times the RoPE scaling factor unless the length
    already counts it (`llama3`, `longrope`/`su`); YaRN scales
    `original_max_position_embeddings`. 0 when the config states no length (the engines then
    assume one; servesim checks none)."""
    found = [
        v
        for k in CONTEXT_KEYS
        if isinstance(v := cfg.get(k), (int, float)) and not isinstance(v, bool) and v > 0
    ]
    if not found:
        return 0
    limit = float(min(found))
    rope = cfg.get("rope_scaling")
    if isinstance(rope, dict):
        kind = str(rope.get("rope_type") or rope.get("type") or "default")
        factor = rope.get("factor")
        if kind not in ("su", "longrope", "llama3", "default") and isinstance(factor, (int, float)):
            original = rope.get("original_max_position_embeddings")
            if kind == "yarn" and isinstance(original, (int, float)) and original > 0:
                limit = float(original)
            limit *= float(factor)
    return int(limit)


class _Config:
    """A parsed config.json read strictly: sizes must be whole numbers, missing keys named."""

    def __init__(self, cfg: dict[str, Any], origin: str) -> None:
        self.cfg = cfg
        self.origin = origin

    def get(self, key: str, default: Any = None) -> Any:
        v = self.cfg.get(key, default)
        return default if v is None else v

    def int(self, key: str, default: Any = None) -> int:
        """A whole number from `key` (or `default` when absent; absent without one: refused)."""
        v = self.get(key, default)
        if v is None:
            raise ServesimError(
                f"{self.origin} lacks {key}; is it a model's config.json (add {key})?"
            )
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ServesimError(
                f"{key} in {self.origin} must be a whole number, got {v!r}; fix the config."
            )
        return v

    def flag(self, key: str, default: bool) -> bool:
        """A boolean from `key` (JSON true/false)."""
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise ServesimError(f"{key} in {self.origin} must be true or false, got {v!r}.")
        return v


# Qwen3-VL wraps a Qwen3 (dense or MoE) language model; its vision encoder is `spec.vision`.
_VL_TEXT = {"qwen3_vl": "qwen3", "qwen3_vl_moe": "qwen3_moe", "llama4": "llama4_text"}


def spec_from_config(
    cfg: dict[str, Any],
    name: str = "model",
    origin: str | None = None,
    hf_quant: dict[str, Any] | None = None,
) -> ModelSpec:
    """Build a ModelSpec from a parsed Hugging Face config dict (and the checkpoint's ModelOpt
    `hf_quant_config.json`, if any); unknown families are refused, and so is any size that is
    missing, not a whole number, or impossible (0 heads, ...)."""
    origin = origin or f"the config of {name}"
    if not isinstance(cfg, dict):
        raise ServesimError(
            f"{origin} must be a JSON object of config keys, not a {type(cfg).__name__}."
        )
    c = _Config(cfg, origin)
    model_type = str(cfg.get("model_type", ""))
    if model_type in ("kimi_k25", "qwen3_5_moe", "qwen3_5", *_VL_TEXT) and isinstance(
        cfg.get("text_config"), dict
    ):
        # Multimodal wrappers: the language model's config sits in text_config (the vision
        # encoder's few hundred million parameters are not modelled).
        inner = dict(cfg["text_config"])
        inner.setdefault("quantization_config", cfg.get("quantization_config"))
        if model_type != "kimi_k25":
            inner["model_type"] = _VL_TEXT.get(model_type, model_type)
            inner.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings"))
        return spec_from_config(inner, name, origin, hf_quant)
    blocks = cfg.get("layers_block_type")
    if (
        model_type == "nemotron_h"
        and cfg.get("num_hidden_layers") is None
        and isinstance(blocks, list)
    ):
        # Nemotron 3.5 configs may give the depth only as their list of blocks.
        return spec_from_config({**cfg, "num_hidden_layers": len(blocks)}, name, origin, hf_quant)
    if model_type not in KNOWN_TYPES:
        raise ServesimError(
            f"Model family {model_type or '(none)'!r} of {name} is not supported; servesim "
            f"knows {', '.join(KNOWN_TYPES)}."
        )
    _require(cfg, ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"), origin)
    h = c.int("hidden_size")
    heads = c.int("num_attention_heads")
    for key, value in (("hidden_size", h), ("num_attention_heads", heads)):
        if value < 1:
            raise ServesimError(f"{key} in {origin} is {value}; it must be ≥ 1.")
    if cfg.get("head_dim") is None and h % heads:
        raise ServesimError(
            f"hidden_size {h} in {origin} is not a multiple of num_attention_heads {heads}; "
            "add head_dim or fix the sizes."
        )
    formats = _quant_formats(cfg, hf_quant, c.int("num_hidden_layers"), origin)
    base: dict[str, Any] = dict(
        name=name,
        model_type=model_type,
        num_layers=c.int("num_hidden_layers"),
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=c.int("num_key_value_heads", heads),
        head_dim=c.int("head_dim", h // heads),
        intermediate_size=c.int("intermediate_size", 4 * h),
        vocab_size=c.int("vocab_size"),
        tie_embeddings=c.flag("tie_word_embeddings", False),
        max_context_tokens=context_tokens(cfg),
        **formats,
    )
    if model_type == "qwen2":
        base["attention_bias"] = True
    if model_type in ("qwen3", "qwen3_moe", "minimax_m2"):
        base["qk_norm"] = True
    if model_type in ("llama", "mistral"):
        base["attention_bias"] = c.flag("attention_bias", False)
    if model_type == "opt":
        # OPT: MHA with biases, ReLU MLP of ffn_dim with biases, LayerNorm, learned positions
        # (HF keeps 2 extra rows for its padding offset), embeddings tied unless said otherwise.
        proj = c.int("word_embed_proj_dim", h)
        base.update(
            intermediate_size=c.int("ffn_dim"),
            gated_mlp=False,
            attention_bias=c.flag("enable_bias", True),
            mlp_bias=c.flag("enable_bias", True),
            norm_bias=True,
            position_embeddings=c.int("max_position_embeddings", 2048) + 2,
            embed_dim=proj if proj != h else 0,
            tie_embeddings=c.flag("tie_word_embeddings", True),
        )

    if model_type == "mixtral":
        base.update(
            num_experts=c.int("num_local_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=base["intermediate_size"],
        )
    elif model_type in ("qwen3_moe", "qwen2_moe"):
        sparse_step = c.int("decoder_sparse_step", 1)
        if sparse_step != 1 or c.get("mlp_only_layers", []):
            raise ServesimError(
                f"{name} mixes dense and MoE layers in a pattern servesim does not model "
                "(decoder_sparse_step/mlp_only_layers); use a config with MoE in every layer."
            )
        base.update(
            num_experts=c.int("num_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=c.int("moe_intermediate_size"),
            shared_expert_intermediate_size=c.int("shared_expert_intermediate_size", 0),
        )
    elif model_type == "gpt_oss":
        layer_types = c.get("layer_types", [])
        if not isinstance(layer_types, list):
            raise ServesimError(f"layer_types in {origin} must be a list of layer kinds.")
        base.update(
            num_experts=c.int("num_local_experts"),
            experts_per_token=c.int("num_experts_per_tok", c.get("experts_per_token")),
            moe_intermediate_size=c.int("intermediate_size"),
            attention_bias=True,
            expert_bias=True,
            sliding_window=c.int("sliding_window", 0),
            num_sliding_layers=sum(t == "sliding_attention" for t in layer_types),
        )
    elif model_type == "llama4_text":
        # Llama 4: one shared expert of the experts' width plus top-k routed experts, in every
        # `interleave_moe_layer_step`-th layer (the others a dense MLP of intermediate_size_mlp);
        # attention is chunked (`attention_chunk_size`) in the layers with RoPE
        # (`no_rope_layers` 1, default every layer but each 4th) and global in the NoPE ones.
        # A chunk's tokens attend within their chunk, so a window of the chunk size bounds
        # them (exact below one chunk; at most ~2x their mean attended context beyond it).
        layers = base["num_layers"]
        step = max(1, c.int("interleave_moe_layer_step", 1))
        moe_layers = len(range(step - 1, layers, step))
        expert_i = c.int("intermediate_size")
        rope = c.get("no_rope_layers")
        if rope is None:
            rope = [int((i + 1) % 4 != 0) for i in range(layers)]
        elif not isinstance(rope, list) or len(rope) != layers:
            raise ServesimError(
                f"no_rope_layers of {name} must list 0 or 1 for each of its {layers} layers."
            )
        chunk = c.int("attention_chunk_size", 0)
        base.update(
            intermediate_size=c.int("intermediate_size_mlp", expert_i),
            num_experts=c.int("num_local_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=expert_i,
            shared_expert_intermediate_size=expert_i,
            first_dense_layers=layers - moe_layers,
            sliding_window=chunk,
            num_sliding_layers=sum(1 for r in rope if r) if chunk else 0,
            chunked_attention=bool(chunk),
        )
    elif model_type == "minimax_m2":
        base.update(
            num_experts=c.int("num_local_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=c.int("intermediate_size"),
            shared_expert_intermediate_size=c.int("shared_intermediate_size", 0),
        )
    elif model_type in HYBRID_TYPES:
        base.update(_hybrid_fields(c, model_type, base, name))
    elif model_type in MLA_TYPES + DSA_TYPES:
        n_shared = c.int("n_shared_experts", 0)
        moe_i = c.int("moe_intermediate_size")
        base.update(
            num_kv_heads=heads,
            num_experts=c.int("n_routed_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=moe_i,
            shared_expert_intermediate_size=n_shared * moe_i,
            first_dense_layers=c.int("first_k_dense_replace", 0),
            q_lora_rank=c.int("q_lora_rank", 0),
            kv_lora_rank=c.int("kv_lora_rank"),
            qk_nope_head_dim=c.int("qk_nope_head_dim"),
            qk_rope_head_dim=c.int("qk_rope_head_dim"),
            v_head_dim=c.int("v_head_dim"),
            num_mtp_layers=c.int("num_nextn_predict_layers", 0),
            expert_groups=c.int("n_group", 1) or 1,
            expert_groups_per_token=c.int("topk_group", 1) or 1,
        )
        if model_type in DSA_TYPES:
            base.update(
                index_n_heads=c.int("index_n_heads"),
                index_head_dim=c.int("index_head_dim"),
                index_topk=c.int("index_topk"),
            )
    elif model_type in ("mistral", "qwen2", "qwen3"):
        # Windowed layers only when the config turns sliding windows on for them.
        window = c.int("sliding_window", 0)
        if window and c.flag("use_sliding_window", model_type == "mistral"):
            max_window_layers = c.int("max_window_layers", base["num_layers"])
            base.update(
                sliding_window=window,
                num_sliding_layers=base["num_layers"] - min(max_window_layers, base["num_layers"]),
            )
            if model_type == "mistral":
                base["num_sliding_layers"] = base["num_layers"]
    try:
        return ModelSpec(**base)
    except ServesimError as exc:
        raise ServesimError(f"{str(exc).rstrip('.')} (read from {origin}).") from None


# Nemotron-H's block letters, and the names Nemotron 3.5 configs list instead
# (`layers_block_type`): Mamba2 mixer, attention, dense MLP, routed-expert MLP.
_NEMOTRON_BLOCKS = {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}


def _nemotron_pattern(c: _Config, layers: int, name: str) -> str:
    """A Nemotron-H config's block per layer as letters: `hybrid_override_pattern`, or the
    `layers_block_type` list newer configs give instead."""
    pattern = c.get("hybrid_override_pattern")
    if not pattern and isinstance(c.get("layers_block_type"), list):
        kinds = [str(k) for k in c.get("layers_block_type")]
        pattern = "".join(_NEMOTRON_BLOCKS.get(k, "?") for k in kinds)
    pattern = str(pattern or "")
    if len(pattern) != layers or set(pattern) - set("M*-E"):
        raise ServesimError(
            f"The block pattern of {name} (hybrid_override_pattern or layers_block_type) must "
            f"give one of M (Mamba2), * (attention), - (MLP) or E (MoE) for each of its "
            f"{layers} layers."
        )
    return pattern


def _hybrid_fields(c: _Config, model_type: str, base: dict[str, Any], name: str) -> dict[str, Any]:
    """Layer counts and mixer shapes of a linear/full-attention hybrid."""
    layers = base["num_layers"]
    if model_type == "nemotron_h":
        pattern = _nemotron_pattern(c, layers, name)
        mamba, attn = pattern.count("M"), pattern.count("*")
        dense, moe = pattern.count("-"), pattern.count("E")
        heads = c.int("num_attention_heads")
        out = dict(
            head_dim=c.int("attention_head_dim", c.get("head_dim", base["hidden_size"] // heads)),
            gated_mlp=False,  # squared-ReLU MLP (the experts' too)
            mlp_bias=c.flag("mlp_bias", False),
            attention_bias=c.flag("attention_bias", False),
            linear_kind="mamba2",
            num_linear_layers=mamba,
            linear_num_k_heads=c.int("n_groups"),
            linear_num_v_heads=c.int("mamba_num_heads"),
            linear_k_head_dim=c.int("ssm_state_size"),
            linear_v_head_dim=c.int("mamba_head_dim"),
            linear_conv_kernel=c.int("conv_kernel", 4),
            linear_chunk=c.int("chunk_size", 256),
            num_mixer_only_layers=mamba + attn,
            num_mlp_only_layers=dense + moe,
            num_mtp_layers=c.int("num_nextn_predict_layers", 0),
        )
        ssm = c.get("mamba_ssm_cache_dtype")  # Nemotron 3 keeps its SSM state in float32
        if ssm:
            out["state_dtype"] = canonical(str(ssm))
        if moe:
            # Nemotron 3: each E block is a routed-expert MLP (squared ReLU, not gated) with
            # `n_shared_experts` always-on experts of `moe_shared_expert_intermediate_size`;
            # the dense (-) blocks, if any, count as the non-MoE MLP layers.
            if c.get("moe_latent_size"):
                raise ServesimError(
                    f"{name} routes its experts in a latent space (moe_latent_size, Nemotron 3 "
                    "Super/Ultra LatentMoE), which servesim does not model; Nemotron 3 Nano's "
                    "plain experts are."
                )
            out.update(
                num_experts=c.int("n_routed_experts"),
                experts_per_token=c.int("num_experts_per_tok"),
                moe_intermediate_size=c.int("moe_intermediate_size"),
                shared_expert_intermediate_size=c.int("n_shared_experts", 0)
                * c.int("moe_shared_expert_intermediate_size", 0),
                first_dense_layers=dense,
                expert_groups=c.int("n_group", 1) or 1,
                expert_groups_per_token=c.int("topk_group", 1) or 1,
            )
        return out
    if model_type == "kimi_linear":
        la = c.get("linear_attn_config")
        if not isinstance(la, dict):
            raise ServesimError(f"{name}'s config lacks linear_attn_config (KDA layers).")
        full = la.get("full_attn_layers") or []
        kda = la.get("kda_layers") or []
        if len(full) + len(kda) != layers:
            raise ServesimError(
                f"linear_attn_config of {name} lists {len(full)} full and {len(kda)} KDA layers "
                f"but the model has {layers}; they must cover every layer once."
            )
        lc = _Config(la, f"linear_attn_config of {name}")
        d, n = lc.int("head_dim"), lc.int("num_heads")
        moe_i = c.int("moe_intermediate_size")
        return dict(
            num_kv_heads=base["num_heads"],
            num_experts=c.int("num_experts"),
            experts_per_token=c.int("num_experts_per_token", c.get("num_experts_per_tok")),
            moe_intermediate_size=moe_i,
            shared_expert_intermediate_size=c.int("num_shared_experts", 0) * moe_i,
            first_dense_layers=c.int("first_k_dense_replace", 0),
            q_lora_rank=c.int("q_lora_rank", 0),
            kv_lora_rank=c.int("kv_lora_rank"),
            qk_nope_head_dim=c.int("qk_nope_head_dim"),
            qk_rope_head_dim=c.int("qk_rope_head_dim"),
            v_head_dim=c.int("v_head_dim"),
            linear_kind="kda",
            num_linear_layers=len(kda),
            linear_num_k_heads=n,
            linear_num_v_heads=n,
            linear_k_head_dim=d,
            linear_v_head_dim=d,
            linear_conv_kernel=lc.int("short_conv_kernel_size", 4),
        )
    # Qwen3-Next, Qwen3.5 (dense and MoE): Gated DeltaNet with full attention every few layers
    layer_types = c.get("layer_types")
    if layer_types is None:
        every = c.int("full_attention_interval", 4)
        layer_types = [
            "full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)
        ]
    if not isinstance(layer_types, list) or len(layer_types) != layers:
        raise ServesimError(f"layer_types of {name} must list one kind for each of its {layers}.")
    if set(layer_types) - {"linear_attention", "full_attention"}:
        raise ServesimError(
            f"layer_types of {name} holds kinds other than linear_attention and full_attention."
        )
    ssm = c.get("mamba_ssm_dtype")
    out: dict[str, Any] = dict(
        qk_norm=True,
        attn_output_gate=c.flag("attn_output_gate", True),
        linear_kind="gdn",
        num_linear_layers=layer_types.count("linear_attention"),
        linear_num_k_heads=c.int("linear_num_key_heads"),
        linear_num_v_heads=c.int("linear_num_value_heads"),
        linear_k_head_dim=c.int("linear_key_head_dim"),
        linear_v_head_dim=c.int("linear_value_head_dim"),
        linear_conv_kernel=c.int("linear_conv_kernel_dim", 4),
        state_dtype=canonical(ssm) if ssm else "bf16",
        num_mtp_layers=c.int("mtp_num_hidden_layers", c.get("num_nextn_predict_layers", 0)),
    )
    if model_type in ("qwen3_next", "qwen3_5_moe"):
        if c.int("decoder_sparse_step", 1) != 1 or c.get("mlp_only_layers", []):
            raise ServesimError(
                f"{name} mixes dense and MoE layers in a pattern servesim does not model "
                "(decoder_sparse_step/mlp_only_layers); use a config with MoE in every layer."
            )
        out.update(
            num_experts=c.int("num_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=c.int("moe_intermediate_size"),
            shared_expert_intermediate_size=c.int("shared_expert_intermediate_size", 0),
        )
    return out


_HF_QUANT_SUFFIX = "_hf_quant_config.json"


def _read_json(p: Path, what: str) -> Any:
    """A JSON file's content; one sentence naming the file when it cannot be read."""
    try:
        return json.loads(p.read_bytes().decode("utf-8-sig"))  # a BOM from a Windows editor
    except UnicodeDecodeError:
        raise ServesimError(
            f"{what} {str(p)!r} is not UTF-8 text; save it as UTF-8 JSON."
        ) from None
    except json.JSONDecodeError as exc:
        raise ServesimError(
            f"{what} {str(p)!r} is not valid JSON ({exc}); fix the syntax."
        ) from None
    except OSError as exc:
        raise ServesimError(f"Cannot read {what.lower()} {str(p)!r} ({exc.strerror}).") from None


def _config_folders() -> list[Any]:
    """Where model configs are looked up by name, later ones winning: aiconfigurator-core's
    `model_configs` (a dependency, Apache-2.0, read in place), then servesim's own."""
    folders = []
    with contextlib.suppress(ModuleNotFoundError):  # a dependency; absent only in odd installs
        folders.append(resources.files("aiconfigurator_core").joinpath("model_configs"))
    folders.append(resources.files("servesim").joinpath("data/model_configs"))
    return folders


@cache
def _bundled_index() -> dict[str, tuple[Any, str]]:
    """(folder, config file name) keyed by lower-case HF id, short name and aliases: servesim's
    bundled configs, and for other names aiconfigurator-core's."""
    index: dict[str, tuple[Any, str]] = {}
    for folder in _config_folders():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            fname = entry.name
            if not fname.endswith("_config.json") or fname.endswith(_HF_QUANT_SUFFIX):
                continue
            hf_id = fname[: -len("_config.json")].replace("--", "/")
            short = hf_id.split("/", 1)[1]
            keys = {hf_id, short, short.replace("Meta-Llama-", "Llama-")}
            if short.startswith("Meta-Llama-"):
                keys.add(hf_id.split("/")[0] + "/" + short.replace("Meta-", ""))
            for key in keys:
                index[key.lower()] = (folder, fname)
    return index


def bundled_models() -> list[str]:
    """Hugging Face ids of the configs servesim bundles (aiconfigurator-core's further ones
    load by name too, `load_model`)."""
    own = resources.files("servesim").joinpath("data/model_configs")
    names = {f[: -len("_config.json")] for d, f in _bundled_index().values() if d == own}
    return sorted(n.replace("--", "/") for n in names)


def known_models() -> list[str]:
    """Hugging Face ids `load_model` resolves by name: the bundled configs and the installed
    aiconfigurator-core's."""
    names = {f[: -len("_config.json")] for _, f in _bundled_index().values()}
    return sorted(n.replace("--", "/") for n in names)


def load_model(name_or_path: str) -> ModelSpec:
    """A ModelSpec from a config.json path, a folder holding one, or a bundled model name.

    Instruct variants resolve to their base architecture (`Llama-3.1-8B-Instruct` → Llama-3.1-8B).
    """
    p = config_path(name_or_path)
    if p is not None:
        cfg = _read_json(p, "Model config")
        name = p.parent.name if p.name == "config.json" else p.stem
        side = p.parent / "hf_quant_config.json"
        hf_quant = _read_json(side, "Quantisation config") if side.is_file() else None
        if hf_quant is not None and not isinstance(hf_quant, dict):
            raise ServesimError(f"Quantisation config {str(side)!r} must be a JSON object.")
        return spec_from_config(
            cfg, name=name, origin=f"model config {str(p)!r}", hf_quant=hf_quant
        )
    key, weight = _resolve_bundled(name_or_path)
    folder, fname = _bundled_index()[key]
    text = folder.joinpath(fname).read_text()
    stem = fname[: -len("_config.json")]
    side = folder.joinpath(stem + _HF_QUANT_SUFFIX)
    hf_quant = json.loads(side.read_text()) if side.is_file() else None
    hf_id = stem.replace("--", "/")
    spec = spec_from_config(json.loads(text), name=hf_id, hf_quant=hf_quant)
    return (
        spec.with_dtypes(weight=weight, kv=_modelopt_kv(name_or_path, weight)) if weight else spec
    )


def _modelopt_kv(name: str, weight: str | None) -> str | None:
    """The KV-cache format of a quantised checkpoint known only by its name: NVIDIA's ModelOpt
    releases (`nvidia/<model>-NVFP4`, `-FP4`, `-FP8`) store an FP8 KV cache, because ModelOpt's
    exporter quantises it unless told not to (examples/llm_ptq/hf_ptq.py `--kv_cache_qformat`,
    default fp8) and every such checkpoint aiconfigurator-core ships says `kv_cache_quant_algo:
    FP8`; the engines then cache in FP8. None (the base model's) for any other name."""
    org = name.strip().split("/", 1)[0].lower() if "/" in name else ""
    return "fp8" if org == "nvidia" and weight in ("fp4", "fp8") else None


def config_path(name_or_path: str) -> Path | None:
    """The config.json a path names (a file, or a folder holding one), or None for a bundled
    model name; a path to a config that does not exist is refused."""
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if not (p.suffix == ".json" or p.is_file()):
        return None
    if not p.is_file():
        raise ServesimError(f"Model config {str(p)!r} does not exist; check the path.")
    return p


def bundled_config(name: str) -> tuple[dict[str, Any], str]:
    """The parsed config.json of a bundled model name, and its Hugging Face id."""
    key, _ = _resolve_bundled(name)
    folder, fname = _bundled_index()[key]
    text = folder.joinpath(fname).read_text()
    return json.loads(text), fname[: -len("_config.json")].replace("--", "/")


# Quantised checkpoints of a bundled model (`Qwen3-32B-FP8`, `nvidia/Qwen3-32B-NVFP4`) share its
# architecture; the suffix names the weight format.
_QUANT_SUFFIXES = {
    "-fp8-dynamic": "fp8",
    "-fp8": "fp8",
    "-nvfp4": "fp4",
    "-fp4": "fp4",
    "-mxfp4": "mxfp4",
    "-awq": "int4",
    "-gptq": "int4",
    "-int4": "int4",
    "-w4a16": "int4",
    "-int8": "int8",
    "-w8a8": "int8",
}
# Re-releases with the same architecture as a bundled config (their model cards say so).
_SAME_ARCHITECTURE = {
    "deepseek-v3-0324": "deepseek-ai/deepseek-v3",
    "deepseek-r1-0528": "deepseek-ai/deepseek-r1",
    "llama-3.3-70b": "meta-llama/meta-llama-3.1-70b",
    # Kimi-K2.5's language model is Kimi-K2's (61 layers, 384 experts, MLA, same sizes).
    "kimi-k2": "moonshotai/kimi-k2.5",
    "kimi-k2-thinking": "moonshotai/kimi-k2.5",
}


def _resolve_bundled(name: str) -> tuple[str, str | None]:
    """The bundled index key a model name means, and the weight format its name carries."""
    idx = _bundled_index()
    key = name.strip().lower()
    weight = None
    for suffix, dtype in _QUANT_SUFFIXES.items():
        if key.endswith(suffix) and key not in idx:
            key, weight = key[: -len(suffix)], dtype
            break
    for suffix in ("-instruct", "-chat", "-it"):
        if key.endswith(suffix) and key not in idx:
            key = key[: -len(suffix)]
    short = key.split("/", 1)[-1]
    if key not in idx and short in _SAME_ARCHITECTURE:
        key = _SAME_ARCHITECTURE[short]
    elif key not in idx and short in idx:
        key = short  # another organisation's copy (`nvidia/...`) of a bundled model
    if key not in idx:
        raise ServesimError(
            f"Unknown model {name!r}; give a config.json path, one of aiconfigurator-core's "
            f"model configs or one of: {', '.join(bundled_models())}."
        )
    return key, weight
