"""How unevenly tokens pick experts, and how experts are placed on the expert-parallel ranks.

Routed experts are not equally popular: some are picked far more often, and which ones differs
by layer (MoETuner, arXiv:2502.06643, and DeepSeek-V3's expert-parallel load balancer, EPLB,
github.com/deepseek-ai/EPLB, both start from measured per-expert counts). An MoE layer ends
when its busiest rank does, so a layer costs what the rank with the largest share of the
routed tokens costs. `ExpertLoad` states the popularity (a Zipf law over a per-layer random
order of the experts, or per-layer counts from a routing trace) and the placement:

- `contiguous`: expert i on rank i // (experts / ep), the engines' default layout;
- `balanced`: experts packed onto ranks by load, heaviest first, each rank holding the same
  number (MoETuner's placement balances token load this way, without replicas);
- `eplb`: EPLB's two steps: `redundant_experts` extra slots go one at a time to the expert
  with the highest load per copy, then the copies (each carrying an equal part of its expert's
  load) are packed onto ranks heaviest first, the same number of slots per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from servesim.errors import ServesimError

PLACEMENTS = ("contiguous", "balanced", "eplb")


@dataclass(frozen=True)
class ExpertLoad:
    """Expert popularity and placement (see the module docstring)."""

    zipf: float = 0.0
    placement: str = "contiguous"
    redundant_experts: int = 0
    layers: int = 16  # layers drawn for the Zipf orders (the mean over them is used)
    seed: int = 0
    counts: tuple[tuple[float, ...], ...] = field(default=(), compare=True)  # per layer

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ServesimError(
                f"Expert placement {self.placement!r} is unknown; use one of "
                f"{', '.join(PLACEMENTS)}."
            )
        if not self.zipf >= 0 or self.redundant_experts < 0 or self.layers < 1:
            raise ServesimError(
                "Expert popularity needs zipf ≥ 0, redundant_experts ≥ 0 and layers ≥ 1."
            )
        if self.redundant_experts and self.placement != "eplb":
            raise ServesimError("Redundant experts are EPLB's; use placement 'eplb'.")
        if any(min(c, default=0) < 0 for c in self.counts):
            raise ServesimError("Expert routing counts must be ≥ 0.")

    def popularity(self, num_experts: int) -> np.ndarray:
        """(layers × experts) share of the routed tokens each expert gets."""
        if self.counts:
            c = np.array(self.counts, dtype=np.float64)
            if c.shape[1] != num_experts:
                raise ServesimError(
                    f"Routing counts give {c.shape[1]} experts per layer; the model has "
                    f"{num_experts}."
                )
            return c / np.maximum(c.sum(axis=1, keepdims=True), 1e-300)
        rng = np.random.default_rng(self.seed)
        law = 1.0 / np.arange(1, num_experts + 1) ** self.zipf
        law /= law.sum()
        return np.array([law[rng.permutation(num_experts)] for _ in range(self.layers)])

    def busiest_share(self, num_experts: int, ep: int) -> float:
        """Mean over layers of the largest share of routed tokens one EP rank serves
        (1 / ep when perfectly balanced)."""
        if ep <= 1:
            return 1.0
        if num_experts % ep:
            raise ServesimError(
                f"{num_experts} experts do not split evenly over ep={ep} ranks; choose an ep "
                "that divides the expert count."
            )
        if self.redundant_experts % ep:
            raise ServesimError(
                f"redundant_experts {self.redundant_experts} must be a multiple of ep={ep} (the "
                "same number of expert slots on every rank)."
            )
        return float(np.mean([self._layer_max(p, ep) for p in self.popularity(num_experts)]))

    def _layer_max(self, pop: np.ndarray, ep: int) -> float:
        n = len(pop)
        if self.placement == "contiguous":
            return float(pop.reshape(ep, n // ep).sum(axis=1).max())
        copies = np.ones(n, dtype=np.int64)
        for _ in range(self.redundant_experts):
            copies[np.argmax(pop / copies)] += 1
        items = np.repeat(pop / copies, copies)  # each copy carries an equal part
        return _pack_max(items, ep)


def _pack_max(items: np.ndarray, bins: int) -> float:
    """Largest bin load when `items` go heaviest first to the least loaded bin that still has
    a free slot, every bin taking len(items) / bins of them (EPLB's balanced packing)."""
    per_bin = len(items) // bins
    load = np.zeros(bins)
    slots = np.zeros(bins, dtype=np.int64)
    for w in np.sort(items)[::-1]:
        open_bins = np.flatnonzero(slots < per_bin)
        b = open_bins[np.argmin(load[open_bins])]
        load[b] += w
        slots[b] += 1
    return float(load.max())
