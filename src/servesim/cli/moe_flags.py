"""Flags for expert popularity and placement (`predict` and `simulate`): skewed routing and
EPLB or balanced placement over the expert-parallel ranks."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field

from servesim.cli.settings import Misuse, NonNegInt, Settings


class MoeSettings(Settings):
    """Expert-load settings (file keys as the flags, with underscores)."""

    expert_zipf: Annotated[float, Field(ge=0.0)] | None = None
    expert_placement: Literal["contiguous", "balanced", "eplb"] = "contiguous"
    redundant_experts: NonNegInt = 0


def add_moe_args(p: argparse.ArgumentParser) -> None:
    """Add the expert-load flags to a command."""
    g = p.add_argument_group("expert load (MoE models with --ep > 1)")
    g.add_argument(
        "--expert-zipf",
        type=float,
        help="expert popularity skew: Zipf exponent over a random order per layer (0 even)",
    )
    g.add_argument(
        "--expert-placement",
        help="contiguous (default), balanced (packed by load) or eplb (with replicas)",
    )
    g.add_argument("--redundant-experts", type=int, help="EPLB's extra expert slots")


def apply_moe(dep: Any, s: MoeSettings) -> Any:
    """The deployment with the stated expert popularity and placement."""
    from servesim.spec.expert_load import ExpertLoad

    if s.expert_zipf is None:
        for key in ("expert_placement", "redundant_experts"):
            if s.given(key):
                raise Misuse(f"{{{key}}} places skewed experts; add {{expert_zipf}}.")
        return dep
    if not dep.model.num_experts:
        raise Misuse("{expert_zipf} describes expert routing; the model has no experts.")
    load = ExpertLoad(s.expert_zipf, s.expert_placement, s.redundant_experts)
    load.busiest_share(dep.model.num_experts, dep.parallel.ep)  # refuses impossible layouts
    return replace(dep, expert_load=load)
