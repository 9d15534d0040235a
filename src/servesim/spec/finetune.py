"""A fine-tuning job sharing a deployment's GPUs with inference (FlexLLM co-serving).

FlexLLM (Oliaro et al., NSDI 2026, arXiv:2402.18789) fuses parameter-efficient fine-tuning
(PEFT: LoRA-style adapters on a frozen base model) into the inference engine's iterations at the
token level: each iteration carries some training tokens beside the inference batch, as many
as the latency targets allow. A memory-bound decode iteration reads every weight anyway, so
training tokens ride along almost for free until the iteration turns compute-bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError

# Compute of one training token relative to its forward pass. Full fine-tuning is 3× (the
# forward pass plus a backward pass of twice its FLOPs: activation and weight gradients, the
# 6N-per-token rule of Kaplan et al. 2020 against 2N for inference). PEFT freezes the base
# weights, so their weight-gradient GEMMs are pruned (FlexLLM's graph pruning) and only the
# activation gradients remain: 2×. The adapters' own FLOPs are negligible at low rank.
PEFT_TRAIN_FACTOR = 2.0
FULL_TRAIN_FACTOR = 3.0


@dataclass(frozen=True)
class FineTuneJob:
    """Training tokens added to each iteration that has inference work (`tokens_per_iter`),
    and to idle time at `idle_tokens_per_iter` per iteration, in sequences of `seq_len`."""

    tokens_per_iter: int
    seq_len: int = 1024
    train_factor: float = PEFT_TRAIN_FACTOR
    idle_tokens_per_iter: int = 8192

    def __post_init__(self) -> None:
        for name in ("tokens_per_iter", "seq_len", "idle_tokens_per_iter"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ServesimError(
                    f"fine-tuning {name} must be a whole number ≥ 0, got {value!r}."
                )
        if self.seq_len < 1:
            raise ServesimError("fine-tuning seq_len must be at least 1 token.")
        if not 1.0 <= self.train_factor <= 4.0:
            raise ServesimError(
                f"train_factor {self.train_factor} is not a training cost: use 2 for PEFT "
                "(frozen base weights) or 3 for full fine-tuning."
            )
