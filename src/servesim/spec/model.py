"""Model architecture from a Hugging Face `config.json`: sizes, parameter bytes, KV bytes per token.

`ModelSpec` is the one description of a model that the memory model and the predictor read.
Families servesim knows: dense GQA (Llama, Mistral, Qwen2/Qwen3), OPT (dense MHA with biases, a ReLU
MLP and learned positions), MoE (Mixtral, Qwen3-MoE, gpt-oss, MiniMax-M2) and MLA + MoE
(DeepSeek-V3/R1, Kimi-K2). Any other `model_type` is refused
by name rather than guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from servesim.errors import ServesimError
from servesim.spec.dtypes import canonical, nbytes

DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "opt")
MOE_TYPES = ("mixtral", "qwen3_moe", "qwen2_moe", "gpt_oss", "minimax_m2")
MLA_TYPES = ("deepseek_v3", "kimi_k2")
KNOWN_TYPES = DENSE_TYPES + MOE_TYPES + MLA_TYPES


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer's shape, in the terms the predictor needs.

    Attention is GQA unless `kv_lora_rank` > 0 (DeepSeek MLA). Layers `[0, first_dense_layers)`
    use a dense MLP of `intermediate_size`; the rest are MoE when `num_experts` > 0.
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
    # MLA (DeepSeek-V3 style)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window attention: the window and how many layers use it
    sliding_window: int = 0
    num_sliding_layers: int = 0
    # Storage formats (weights of attention/dense/shared parts, routed experts, KV cache)
    weight_dtype: str = "bf16"
    expert_dtype: str = "bf16"
    kv_dtype: str = "bf16"

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
        ):
            _positive(getattr(self, key), key, where, zero_ok=True)
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

    # ---- derived shape facts -------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """True when some layers route tokens to experts."""
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        """True for DeepSeek multi-head latent attention (a compressed, head-shared KV cache)."""
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        """Layers with a routed-expert MLP."""
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        """Layers with a plain (dense) MLP."""
        return self.num_layers - self.num_moe_layers

    @property
    def num_full_attention_layers(self) -> int:
        """Layers whose attention sees the whole context."""
        return self.num_layers - self.num_sliding_layers

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
            o = self.num_heads * self.v_head_dim * h
            return q + kv_a + kv_b + o
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        params = h * (q_out + 2 * kv_out) + q_out * h
        if self.attention_bias:
            params += q_out + 2 * kv_out + h
        if self.qk_norm:
            params += 2 * self.head_dim
        if self.model_type == "gpt_oss":
            params += self.num_heads  # attention sinks
        return params

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

    def router_params(self) -> int:
        """Parameters of one MoE router (plus its bias where the family has one)."""
        bias = self.num_experts if self.model_type in ("gpt_oss",) else 0
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
        """Parameter counts by part: attention, dense_mlp, shared_experts, routed_experts, ..."""
        h = self.hidden_size
        norms = (self.num_layers * 2 * h + h) * (2 if self.norm_bias else 1)
        return {
            "attention": self.num_layers * self.attention_params(),
            "dense_mlp": self.num_dense_layers * self.mlp_params(self.intermediate_size),
            "shared_experts": self.num_moe_layers
            * self.mlp_params(self.shared_expert_intermediate_size),
            "routed_experts": self.num_moe_layers * self.num_experts * self.expert_params(),
            "router": self.num_moe_layers * self.router_params(),
            "norms": norms,
            "embedding": self.embedding_params(),
        }

    def num_params(self) -> int:
        """Total parameters."""
        return sum(self.param_counts().values())

    def num_active_params(self) -> int:
        """Parameters touched by one token (routed experts counted top-k of n)."""
        c = self.param_counts()
        routed = self.num_moe_layers * self.experts_per_token * self.expert_params()
        return sum(c.values()) - c["routed_experts"] + routed

    def param_bytes(self) -> float:
        """Weight bytes: experts in `expert_dtype`, embeddings in 16 bits, rest `weight_dtype`."""
        c = self.param_counts()
        w = nbytes(self.weight_dtype)
        emb_b = max(w, 2.0)  # embeddings and lm_head stay in 16 bits
        return (
            c["routed_experts"] * nbytes(self.expert_dtype)
            + (c["attention"] + c["dense_mlp"] + c["shared_experts"]) * w
            + (c["router"] + c["norms"]) * 2.0
            + c["embedding"] * emb_b
        )

    # ---- KV cache ------------------------------------------------------------------------
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes one token adds across the full-attention layers (whole model, no TP)."""
        return (
            self.num_full_attention_layers
            * self.kv_values_per_token_per_layer
            * nbytes(self.kv_dtype)
        )

    def kv_bytes_per_seq_window(self) -> float:
        """KV bytes a sequence holds in its sliding-window layers once past the window."""
        return (
            self.num_sliding_layers
            * self.sliding_window
            * self.kv_values_per_token_per_layer
            * nbytes(self.kv_dtype)
        )

    def kv_bytes(self, context_tokens: int) -> float:
        """KV bytes of one sequence of `context_tokens`; windowed layers hold at most the window."""
        full = context_tokens * self.kv_bytes_per_token()
        if not self.num_sliding_layers:
            return full
        per_token = self.kv_values_per_token_per_layer * nbytes(self.kv_dtype)
        return full + self.num_sliding_layers * min(context_tokens, self.sliding_window) * per_token

    def with_dtypes(
        self, weight: str | None = None, kv: str | None = None, expert: str | None = None
    ) -> ModelSpec:
        """A copy stored in other formats; `weight` alone sets experts too."""
        w = canonical(weight) if weight else self.weight_dtype
        e = canonical(expert) if expert else (w if weight else self.expert_dtype)
        k = canonical(kv) if kv else self.kv_dtype
        if k not in ("bf16", "fp16", "fp8"):
            raise ServesimError(f"KV-cache dtype {kv!r} is not supported; use bf16, fp16 or fp8.")
        return replace(self, weight_dtype=w, expert_dtype=e, kv_dtype=k)

    def check_tp(self, tp: int) -> None:
        """Refuse a tensor-parallel degree that does not split the heads evenly."""
        if tp < 1:
            raise ServesimError(f"Tensor parallelism must be ≥ 1, got {tp}.")
        if self.num_heads % tp:
            raise ServesimError(
                f"TP={tp} does not divide {self.name}'s {self.num_heads} attention heads; "
                f"use a TP that divides {self.num_heads}."
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


def _quant_dtypes(cfg: dict[str, Any], model_type: str) -> tuple[str, str]:
    """Weight and expert dtypes implied by a config's `quantization_config`."""
    q = cfg.get("quantization_config") or {}
    method = str(q.get("quant_method", "")).lower()
    if method == "fp8":
        return "fp8", "fp8"
    if method == "mxfp4":
        return "bf16", "mxfp4"  # gpt-oss: experts in MXFP4, attention and router in bf16
    if method == "compressed-tensors":
        groups = (q.get("config_groups") or {}).values()
        bits = {int((g.get("weights") or {}).get("num_bits") or 16) for g in groups}
        ignore = " ".join(q.get("ignore", []))
        if 4 in bits:
            dense = "bf16" if "self_attn" in ignore else "int4"
            return dense, "int4"
        if 8 in bits:
            return "fp8", "fp8"
    return "bf16", "bf16"


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


def spec_from_config(
    cfg: dict[str, Any], name: str = "model", origin: str | None = None
) -> ModelSpec:
    """Build a ModelSpec from a parsed Hugging Face config dict; unknown families are refused,
    and so is any size that is missing, not a whole number, or impossible (0 heads, ...)."""
    origin = origin or f"the config of {name}"
    if not isinstance(cfg, dict):
        raise ServesimError(
            f"{origin} must be a JSON object of config keys, not a {type(cfg).__name__}."
        )
    c = _Config(cfg, origin)
    model_type = str(cfg.get("model_type", ""))
    if model_type in ("kimi_k25",) and isinstance(cfg.get("text_config"), dict):
        inner = dict(cfg["text_config"])
        inner.setdefault("quantization_config", cfg.get("quantization_config"))
        return spec_from_config(inner, name, origin)
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
    weight_dtype, expert_dtype = _quant_dtypes(cfg, model_type)
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
        weight_dtype=weight_dtype,
        expert_dtype=expert_dtype,
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
    elif model_type == "minimax_m2":
        base.update(
            num_experts=c.int("num_local_experts"),
            experts_per_token=c.int("num_experts_per_tok"),
            moe_intermediate_size=c.int("intermediate_size"),
            shared_expert_intermediate_size=c.int("shared_intermediate_size", 0),
        )
    elif model_type in MLA_TYPES:
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


@cache
def _bundled_index() -> dict[str, str]:
    """Bundled config file names keyed by lower-case HF id, short name and aliases."""
    index: dict[str, str] = {}
    folder = resources.files("servesim").joinpath("data/model_configs")
    for entry in folder.iterdir():
        fname = entry.name
        if not fname.endswith("_config.json"):
            continue
        hf_id = fname[: -len("_config.json")].replace("--", "/")
        short = hf_id.split("/", 1)[1]
        for key in {hf_id, short, short.replace("Meta-Llama-", "Llama-")}:
            index[key.lower()] = fname
            if short.startswith("Meta-Llama-"):
                index[(hf_id.split("/")[0] + "/" + short.replace("Meta-", "")).lower()] = fname
    return index


def bundled_models() -> list[str]:
    """Hugging Face ids of the bundled configs."""
    idx = _bundled_index()
    return sorted({v[: -len("_config.json")].replace("--", "/") for v in idx.values()})


def load_model(name_or_path: str) -> ModelSpec:
    """A ModelSpec from a config.json path, a folder holding one, or a bundled model name.

    Instruct variants resolve to their base architecture (`Llama-3.1-8B-Instruct` → Llama-3.1-8B).
    """
    p = Path(name_or_path)
    if p.is_dir():
        p = p / "config.json"
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise ServesimError(f"Model config {str(p)!r} does not exist; check the path.")
        try:
            cfg = json.loads(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise ServesimError(
                f"Model config {str(p)!r} is not UTF-8 text; save it as UTF-8 JSON."
            ) from None
        except json.JSONDecodeError as exc:
            raise ServesimError(
                f"Model config {str(p)!r} is not valid JSON ({exc}); fix the syntax."
            ) from None
        except OSError as exc:
            raise ServesimError(f"Cannot read model config {str(p)!r} ({exc.strerror}).") from None
        name = p.parent.name if p.name == "config.json" else p.stem
        return spec_from_config(cfg, name=name, origin=f"model config {str(p)!r}")
    key, weight = _resolve_bundled(name_or_path)
    fname = _bundled_index()[key]
    text = resources.files("servesim").joinpath("data/model_configs", fname).read_text()
    hf_id = fname[: -len("_config.json")].replace("--", "/")
    spec = spec_from_config(json.loads(text), name=hf_id)
    return spec.with_dtypes(weight=weight) if weight else spec


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
            f"Unknown model {name!r}; give a config.json path or one of: "
            f"{', '.join(bundled_models())}."
        )
    return key, weight
