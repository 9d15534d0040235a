"""Speculative decoding: a drafter proposes k tokens per sequence, the target verifies them in one
forward pass of k+1 tokens and keeps the longest accepted prefix plus one token of its own.

`acceptance[i]` is the probability that draft position i+1 is accepted given that every earlier
one was (a chain: position i counts only if all before it were accepted), so one step emits
1 + Σ_i Π_{j≤i} a_j tokens on average (Leviathan et al., ICML'23, eq. 1, with a per-position
rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.spec.model import ModelSpec

METHODS = ("mtp", "eagle", "draft")

# Default per-position conditional acceptance, sourced (never fitted on end-to-end rows):
# - MTP: DeepSeek-V3 Technical Report (arXiv:2412.19437, §5.4.3): "the acceptance rate of the
#   second token prediction ranges between 85% and 90%" — the first draft position takes the
#   low end, 0.85. Later positions reuse the one MTP module autoregressively (SGLang/vLLM
#   `deepseek_mtp` with num_speculative_tokens > 1); the nebius/MTP-DeepSeek-V3-0324 model card
#   measures the original module's acceptance length at 3.20 with K = 7 drafts (temperature 0,
#   MT-bench/HumanEval/GSM8K): 1 + 0.85·Σ_{j<7} c^j = 3.20 gives c ≈ 0.63 for positions ≥ 2.
# - EAGLE: Li et al., "EAGLE: Speculative Sampling Requires Rethinking Feature Uncertainty"
#   (ICML'24, §1 and fig. 'accuracy'): the feature-level draft head reaches ~0.8 acceptance;
#   taken as 0.8 at every position of a chain draft.
# - draft (a separate small model): depends on the pair; no default, give --acceptance.
MTP_FIRST = 0.85
MTP_LATER = 0.63
EAGLE_RATE = 0.8


def default_acceptance(method: str, k: int) -> tuple[float, ...]:
    """The sourced default acceptance chain of `method` for k draft tokens."""
    if method == "mtp":
        return (MTP_FIRST,) + (MTP_LATER,) * (k - 1)
    if method == "eagle":
        return (EAGLE_RATE,) * k
    raise ServesimError(
        "Speculative decoding with a draft model has no default acceptance; give --acceptance "
        "(e.g. 0.7 or 0.8,0.7,0.6) measured for that model pair."
    )


@dataclass(frozen=True)
class SpeculativeDecoding:
    """k draft tokens per decode step from an MTP head, an EAGLE head or a draft model, and the
    per-position conditional acceptance chain; `seed` makes the simulated draws repeatable."""

    method: str
    num_draft_tokens: int
    acceptance: tuple[float, ...] = ()  # empty: the method's sourced default
    draft_model: ModelSpec | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ServesimError(
                f"Unknown speculative method {self.method!r}; use one of {', '.join(METHODS)}."
            )
        k = self.num_draft_tokens
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ServesimError(
                f"Speculative decoding needs at least one draft token per step, got {k!r}; "
                "give --num-draft-tokens 1 or more (or turn speculation off)."
            )
        acc = tuple(float(a) for a in self.acceptance) or default_acceptance(self.method, k)
        if len(acc) == 1 and k > 1:
            acc = acc * k  # one rate for every position
        if len(acc) != k:
            raise ServesimError(
                f"Give one acceptance rate or one per draft position: {len(acc)} rates for "
                f"{k} draft tokens."
            )
        bad = [a for a in acc if not 0.0 <= a <= 1.0]
        if bad:
            raise ServesimError(f"Acceptance rates are probabilities in [0, 1]; got {bad[0]:g}.")
        object.__setattr__(self, "acceptance", acc)
        if self.method == "draft" and self.draft_model is None:
            raise ServesimError(
                "Speculative decoding with method 'draft' needs a draft model; give "
                "--draft-model HF_ID_OR_PATH."
            )
        if self.method != "draft" and self.draft_model is not None:
            raise ServesimError(
                f"A draft model is used only with method 'draft', not {self.method!r}; drop "
                "--draft-model or use --speculative draft."
            )

    def check_target(self, target: ModelSpec) -> None:
        """Refuse a target this drafter cannot serve: MTP without MTP layers, a draft model with
        another vocabulary."""
        if self.method == "mtp" and target.num_mtp_layers < 1:
            raise ServesimError(
                f"{target.name} has no multi-token-prediction layers (num_nextn_predict_layers "
                "is 0), so it cannot draft with MTP; use --speculative eagle or draft."
            )
        d = self.draft_model
        if d is not None and d.vocab_size != target.vocab_size:
            raise ServesimError(
                f"The draft model {d.name} has a vocabulary of {d.vocab_size:,} tokens but the "
                f"target {target.name} has {target.vocab_size:,}; a draft model must share "
                "the target's tokenizer."
            )

    @property
    def expected_tokens_per_step(self) -> float:
        """Mean tokens one verify step emits: 1 + Σ_i Π_{j≤i} a_j."""
        total, run = 1.0, 1.0
        for a in self.acceptance:
            run *= a
            total += run
        return total

    def label(self) -> str:
        """Short description such as `mtp3`."""
        return f"{self.method}{self.num_draft_tokens}"
