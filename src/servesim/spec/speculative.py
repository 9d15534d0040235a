"""Speculative decoding: a drafter proposes k tokens per sequence, the target verifies them in one
forward pass of k+1 tokens and keeps the longest accepted prefix plus one token of its own.

`acceptance[i]` is the probability that draft position i+1 is accepted given that every earlier
one was (a chain: position i counts only if all before it were accepted), so one step emits
1 + Σ_i Π_{j≤i} a_j tokens on average (Leviathan et al., ICML'23, eq. 1, with a per-position
rate).

A draft tree (EAGLE-2, Medusa; SGLang `--speculative-eagle-topk` with `--speculative-num-steps`
depth) offers w_i candidates at depth i below the accepted node of depth i−1. Taking each
candidate as accepted independently with the chain's rate a_i, depth i is accepted with
1 − (1 − a_i)^{w_i}, so a step emits 1 + Σ_i Π_{j≤i} (1 − (1 − a_j)^{w_j}) tokens. This is
Sequoia's positional acceptance model (Chen et al., "Sequoia: Scalable, Robust, and
Hardware-aware Speculative Decoding", arXiv:2402.12374, §3.1: the k-th child of a node is
accepted with probability p_k, the expected accepted length is the sum over nodes of the
product along their paths) with p_k = (1 − a)^{k−1}·a for each candidate of the same rate; it
is optimistic for trees that keep w nodes per depth (EAGLE-2's reranked tree expands only the
likeliest ones), exact for a full w-ary tree. The verify pass runs 1 + Σ_i w_i tokens per
sequence (tree attention over every node, as SGLang's `speculative_num_draft_tokens` =
1 + steps × topk) and writes their KV; draft pass i runs the w_{i−1} expanded nodes (1 for the
first).

Mirror speculative decoding (Mirror-SD: Bhendawade et al., "Mirror Speculative Decoding:
Breaking the Serial Barrier in LLM Inference", arXiv:2510.13161) runs the drafter on its own
devices, concurrently with the target's verify pass, the two exchanging tokens over a link each
step: a step takes max(draft, verify) + the exchange instead of draft + verify.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servesim.errors import ServesimError
from servesim.spec.devices import Device
from servesim.spec.model import ModelSpec

METHODS = ("mtp", "eagle", "draft")
MIRROR_LINKS = ("nvlink", "infiniband", "pcie")  # how Mirror-SD's draft devices reach the target

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
    # Candidates per depth of a draft tree (one width for every depth, or one per depth);
    # empty: a chain (one candidate per depth).
    tree_widths: tuple[int, ...] = ()
    # Mirror-SD: the drafter runs on `mirror_devices` devices of this type beside each replica,
    # in parallel with verify, exchanging tokens over `mirror_link` (None: drafts in series).
    mirror_device: Device | None = field(default=None, hash=False)  # a Device holds dicts
    mirror_devices: int = 1
    mirror_link: str = "nvlink"

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
        widths = tuple(self.tree_widths) or (1,)
        if len(widths) == 1:
            widths = widths * k
        if len(widths) != k or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                   for w in widths):  # fmt: skip
            raise ServesimError(
                f"A draft tree needs one width or one per depth, each a whole number ≥ 1; got "
                f"{list(self.tree_widths)} for {k} draft tokens (depths)."
            )
        object.__setattr__(self, "tree_widths", widths)
        m = self.mirror_devices
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ServesimError(f"Mirror-SD needs at least one draft device, got {m!r}.")
        if self.mirror_link not in MIRROR_LINKS:
            raise ServesimError(
                f"Unknown Mirror-SD link {self.mirror_link!r}; use one of "
                f"{', '.join(MIRROR_LINKS)}."
            )
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
    def depth_acceptance(self) -> tuple[float, ...]:
        """Probability that depth i is accepted given every earlier one was: a_i for a chain,
        1 − (1 − a_i)^{w_i} with w_i independent candidates (Sequoia, arXiv:2402.12374 §3.1)."""
        return tuple(
            1.0 - (1.0 - a) ** w for a, w in zip(self.acceptance, self.tree_widths, strict=True)
        )

    @property
    def expected_tokens_per_step(self) -> float:
        """Mean tokens one verify step emits: 1 + Σ_i Π_{j≤i} (depth i accepted)."""
        total, run = 1.0, 1.0
        for a in self.depth_acceptance:
            run *= a
            total += run
        return total

    @property
    def is_tree(self) -> bool:
        """Whether some depth offers more than one candidate."""
        return max(self.tree_widths) > 1

    @property
    def verify_tokens(self) -> int:
        """Tokens the verify pass runs (and KV slots it writes) per sequence: the root and
        every draft node."""
        return 1 + sum(self.tree_widths)

    @property
    def draft_rows(self) -> tuple[int, ...]:
        """Positions each draft pass runs per sequence: first the verified positions the step
        kept, padded to depth + 1 (SGLang's draft-extend, vLLM's and TensorRT-LLM's first
        draft pass over the accepted tokens), then each depth's expanded candidates (EAGLE-2
        expands the frontier of the previous depth)."""
        return (len(self.tree_widths) + 1, *self.tree_widths[:-1])

    def label(self) -> str:
        """Short description such as `mtp3`, `eagle3w4` (a tree of width 4) or `mtp3+mirror`."""
        text = f"{self.method}{self.num_draft_tokens}"
        if self.is_tree:
            w = self.tree_widths
            text += f"w{w[0]}" if len(set(w)) == 1 else "w" + "-".join(map(str, w))
        return text + "+mirror" if self.mirror_device is not None else text
