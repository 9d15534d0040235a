"""How one replica spreads a model over devices: tensor, pipeline, expert, attention-DP."""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError


@dataclass(frozen=True)
class Parallel:
    """Parallel layout of one replica.

    `tp` splits every layer's matrices and heads; `pp` splits the layers into stages; `dp` runs
    that many attention data-parallel ranks (each with its own batch share and KV cache) that
    meet in the MoE layers; `ep` spreads routed experts over that many groups of the stage's
    tp × dp devices, each expert split over the `moe_tp` devices of its group (1 = experts are
    split by TP instead). Devices per replica = tp × pp × dp.
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp: int = 1

    def __post_init__(self) -> None:
        for field_name in ("tp", "pp", "ep", "dp"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ServesimError(
                    f"Parallel degree {field_name} must be an integer ≥ 1, got {value!r}."
                )
        if self.ep > 1 and (self.tp * self.dp) % self.ep:
            raise ServesimError(
                f"Expert parallelism ep={self.ep} must divide tp×dp={self.tp * self.dp} (the "
                "devices of one pipeline stage share the experts); pick a divisor or 1."
            )

    @property
    def moe_tp(self) -> int:
        """Devices each routed expert is split over: tp×dp/ep with EP, else the TP degree."""
        return self.tp * self.dp // self.ep if self.ep > 1 else self.tp

    @property
    def num_devices(self) -> int:
        """Devices one replica occupies."""
        return self.tp * self.pp * self.dp

    def label(self) -> str:
        """Short tag such as `tp4` or `tp2pp2ep4dp2`."""
        parts = [f"tp{self.tp}"]
        if self.pp > 1:
            parts.append(f"pp{self.pp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        if self.dp > 1:
            parts.append(f"dp{self.dp}")
        return "".join(parts)
