"""Flags for models whose depth adapts (`predict` and `simulate`): per-request layer skipping
(FiRST) and AmoebaLLM-style sub-models of the given model."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field

from servesim.cli.settings import Misuse, NonNegInt, PosInt, Settings


class DepthSettings(Settings):
    """Layer skipping and sub-model settings (file keys as the flags, with underscores)."""

    skip_prob: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    skip_correlation: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    skip_protect_first: NonNegInt = 0
    skip_protect_last: NonNegInt = 0
    skip_phase: Literal["decode", "both"] = "decode"
    submodel_depth: PosInt | None = None
    submodel_width: Annotated[float, Field(gt=0.0, le=1.0)] | None = None

    def check_depth(self) -> None:
        """Refuse skipping settings given without a skip probability."""
        if self.skip_prob is None:
            for key in (
                "skip_correlation",
                "skip_protect_first",
                "skip_protect_last",
                "skip_phase",
            ):
                if self.given(key):
                    raise Misuse(f"{{{key}}} shapes layer skipping; add {{skip_prob}} or drop it.")


def add_depth_args(p: argparse.ArgumentParser) -> None:
    """Add the layer-skipping and sub-model flags to a command."""
    g = p.add_argument_group("adaptive depth (FiRST layer skipping, AmoebaLLM sub-models)")
    g.add_argument(
        "--skip-prob", type=float, help="each request skips each skippable layer with this chance"
    )
    g.add_argument(
        "--skip-correlation",
        type=float,
        help="share of requests following one shared skip pattern (0 independent, 1 all alike)",
    )
    g.add_argument("--skip-protect-first", type=int, help="first layers never skipped")
    g.add_argument("--skip-protect-last", type=int, help="last layers never skipped")
    g.add_argument(
        "--skip-phase",
        help="decode (FiRST: the prompt runs every layer) or both (prompt tokens skip too)",
    )
    g.add_argument("--submodel-depth", type=int, help="serve a sub-model of this many layers")
    g.add_argument(
        "--submodel-width", type=float, help="sub-model width: share of MLP and heads kept"
    )


def apply_depth(dep: Any, s: DepthSettings) -> Any:
    """The deployment with the sub-model and layer skipping the settings ask for."""
    from servesim.spec.adaptive_depth import LayerSkipping, submodel

    s.check_depth()
    if s.submodel_depth is not None or s.submodel_width is not None:
        dep = replace(dep, model=submodel(dep.model, s.submodel_depth, s.submodel_width or 1.0))
    if s.skip_prob is not None:
        skipping = LayerSkipping(
            s.skip_prob,
            s.skip_correlation,
            s.skip_protect_first,
            s.skip_protect_last,
            s.skip_phase,
        )
        skipping.layer_probs(dep.model.num_layers)  # protected layers must leave some
        dep = replace(dep, layer_skipping=skipping)
    return dep
