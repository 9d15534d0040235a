"""Models whose depth adapts: per-request layer skipping (FiRST) and sub-models (AmoebaLLM).

FiRST (Jain et al., Findings of EMNLP 2025, arXiv:2410.12513) puts a router before each layer
that decides, from the prompt during prefill, which layers a request skips; the decision holds
for the whole decode, which keeps the KV cache consistent: the prompt passes through every
layer (all its KV exists) and generated tokens leave no KV in the layers they skip. Whether a
batch saves time then depends on how the skips of its sequences overlap, which `LayerSkipping`
states as a skip probability per layer and a correlation between requests. AmoebaLLM (Fu et
al., NeurIPS 2024, arXiv:2411.10606) derives sub-models of any depth and width from one model;
`submodel` builds such a spec so every other part of servesim prices it as a model of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from servesim.errors import ServesimError
from servesim.spec.model import ModelSpec

SKIP_PHASES = ("decode", "both")


@dataclass(frozen=True)
class LayerSkipping:
    """Which layers each request skips.

    Every layer but the first `protected_first` and last `protected_last` is skipped by a
    request with probability `skip_prob`. `correlation` ρ is the share of requests that follow
    one shared pattern (drawn once per layer): ρ = 0 makes every request's skips independent,
    ρ = 1 makes all requests skip the same layers. `phase` says when skipping applies:
    `decode` (FiRST: routers read the prompt in prefill, which runs every layer) or `both`
    (prompt tokens skip the request's layers too, as per-token routers and sub-model
    routing do).
    """

    skip_prob: float
    correlation: float = 0.0
    protected_first: int = 0
    protected_last: int = 0
    phase: str = "decode"

    def __post_init__(self) -> None:
        if not 0.0 <= self.skip_prob < 1.0:
            raise ServesimError(
                f"skip probability must be in [0, 1), got {self.skip_prob}; a request that "
                "skipped every layer would never run the model."
            )
        if not 0.0 <= self.correlation <= 1.0:
            raise ServesimError(
                f"skip correlation must be between 0 (independent) and 1 (every request skips "
                f"the same layers), got {self.correlation}."
            )
        for name in ("protected_first", "protected_last"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ServesimError(f"{name} must be a whole number of layers ≥ 0, got {value!r}.")
        if self.phase not in SKIP_PHASES:
            raise ServesimError(
                f"skip phase must be one of {', '.join(SKIP_PHASES)}, got {self.phase!r}."
            )

    def layer_probs(self, num_layers: int) -> np.ndarray:
        """Skip probability of each of `num_layers` layers (0 on the protected ones)."""
        if self.protected_first + self.protected_last >= num_layers:
            raise ServesimError(
                f"protecting {self.protected_first} first and {self.protected_last} last layers "
                f"leaves none of the model's {num_layers} layers to skip; protect fewer."
            )
        p = np.full(num_layers, self.skip_prob)
        p[: self.protected_first] = 0.0
        p[num_layers - self.protected_last :] = 0.0
        return p

    def used_share(self, num_layers: int) -> float:
        """Expected share of the layers one request runs."""
        return float(1.0 - self.layer_probs(num_layers).mean())

    def masks(self, num_requests: int, num_layers: int, seed: int = 0) -> np.ndarray:
        """Boolean (requests × layers) array, True where a request runs a layer: each request
        follows the shared pattern with probability ρ, else draws its own."""
        rng = np.random.default_rng(seed)
        p = self.layer_probs(num_layers)
        shared = rng.random(num_layers) >= p
        own = rng.random((num_requests, num_layers)) >= p
        follows = rng.random(num_requests) < self.correlation
        return np.where(follows[:, None], shared[None, :], own)


def submodel(model: ModelSpec, depth: int | None = None, width: float = 1.0) -> ModelSpec:
    """An AmoebaLLM-style sub-model: `depth` of the model's layers and `width` of each layer's
    MLP and attention heads (query and KV heads scaled together, head size and hidden size
    kept, as AmoebaLLM shrinks layers, heads and MLP channels but not the embedding).

    Only dense models with one kind of layer are derived: removing layers from a hybrid or MoE
    stack would need the layer pattern the sub-model keeps, which configs do not give.
    """
    if model.is_moe or model.is_hybrid or model.is_mla or model.num_sliding_layers:
        raise ServesimError(
            f"{model.name}: sub-models are derived from dense models with uniform layers; "
            "give a dense config (MoE, MLA, sliding-window and hybrid stacks are not supported)."
        )
    depth = model.num_layers if depth is None else depth
    if not isinstance(depth, int) or not 1 <= depth <= model.num_layers:
        raise ServesimError(
            f"sub-model depth must be a whole number of layers between 1 and "
            f"{model.num_layers}, got {depth!r}."
        )
    if not 0.0 < width <= 1.0:
        raise ServesimError(f"sub-model width must be in (0, 1], got {width}.")
    group = model.num_heads // model.num_kv_heads
    kv_heads = max(1, round(model.num_kv_heads * width))
    inter = max(1, round(model.intermediate_size * width))
    name = f"{model.name}@depth{depth}-width{width:g}"
    return replace(
        model,
        name=name,
        num_layers=depth,
        num_kv_heads=kv_heads,
        num_heads=kv_heads * group,
        intermediate_size=inter,
    )
