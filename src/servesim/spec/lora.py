"""LoRA adapters served on one base model (S-LoRA, Punica): how many, their rank and
popularity, how many stay resident, their bytes and FLOPs (`sim.adapters` serves them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servesim.errors import ServesimError
from servesim.spec.model import ModelSpec


@dataclass(frozen=True)
class LoraAdapters:
    """`num_adapters` adapters of rank `rank` on the attention and MLP projections, requested
    with Zipf popularity of exponent `zipf` (0: uniform), `gpu_slots` of them resident per
    replica."""

    num_adapters: int
    gpu_slots: int
    rank: int = 16
    zipf: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_adapters", "gpu_slots", "rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ServesimError(f"LoRA {name} must be a whole number ≥ 1, got {value!r}.")
        if not self.zipf >= 0:
            raise ServesimError(f"LoRA popularity exponent must be ≥ 0, got {self.zipf}.")

    def bytes_per_adapter(self, model: ModelSpec) -> float:
        """Bytes of one adapter in bf16: A (d_in × r) and B (r × d_out) for each of q, k, v, o
        and the MLP's gate, up and down projections, in every layer."""
        h, q, kv = model.hidden_size, model.num_heads * model.head_dim, model.num_kv_heads
        kv *= model.head_dim
        inter = model.intermediate_size
        pairs = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]
        per_layer = sum(self.rank * (a + b) for a, b in pairs)
        return 2.0 * per_layer * model.num_layers

    def lora_flops_share(self, model: ModelSpec) -> float:
        """The adapters' FLOPs per token relative to the base model's (2 per weight each)."""
        return self.bytes_per_adapter(model) / 2.0 / max(1, model.num_active_params())

    def assign(self, n: int) -> np.ndarray:
        """The adapter each of n requests names (Zipf over adapter ids, seeded)."""
        rng = np.random.default_rng(self.seed)
        weights = 1.0 / np.arange(1, self.num_adapters + 1) ** self.zipf
        return rng.choice(self.num_adapters, size=n, p=weights / weights.sum())

    def expected_distinct(self, n: int) -> float:
        """Expected distinct adapters among n running sequences (Zipf draws), at most the
        resident slots: Σ_a 1 − (1 − p_a)^n."""
        weights = 1.0 / np.arange(1, self.num_adapters + 1) ** self.zipf
        p = weights / weights.sum()
        return float(min(self.gpu_slots, np.sum(1.0 - (1.0 - p) ** n)))
