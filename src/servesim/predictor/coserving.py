"""Iteration time when a fine-tuning job rides along (FlexLLM co-serving): the inference batch
plus the job's training tokens, each costing `train_factor` forward passes.

The training tokens join the iteration's dense work (GEMMs on inference plus training tokens
together: a decode iteration that was reading weights anyway absorbs them cheaply) and add
their own causal attention over their sequence, all scaled by the training factor.
"""

from __future__ import annotations

from collections.abc import Iterable

from servesim.predictor.iteration import Predictor
from servesim.spec.finetune import FineTuneJob


class CoServingPredictor(Predictor):
    """A `Predictor` whose every iteration with inference work also trains `job.tokens_per_iter`
    tokens; `finetune_step_s` prices an iteration of training alone (idle time)."""

    def __init__(self, *args: object, job: FineTuneJob, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.job = job

    def _train_s(self, tokens: int, k: int) -> float:
        """Extra seconds of k training tokens beside `tokens` inference tokens. The dense and
        attention tables are one pipeline stage's; the training tokens, like the iteration
        (`Predictor.step_s`: a stage's time × pp), pass through every stage."""
        if k <= 0:
            return 0.0
        self.cover(tokens + k, 1)
        dense = self._dense_tab
        extra = dense[tokens + k] - dense[tokens]
        seq = self.job.seq_len
        full, rest = divmod(k, seq)
        attn = full * self._prefill_cache(seq, 0) + (self._prefill_cache(rest, 0) if rest else 0.0)
        return self.job.train_factor * (extra + attn) * self.par.pp

    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of one co-serving iteration."""
        chunks = list(prefill)
        base = super().step_s(decode_seqs, decode_context, chunks)
        tokens = decode_seqs + sum(n for n, _ in chunks)
        if tokens == 0:
            return base
        return base + self._train_s(tokens, self.job.tokens_per_iter)

    def finetune_step_s(self) -> float:
        """Seconds of an iteration that only trains (`idle_tokens_per_iter` tokens)."""
        k = self.job.idle_tokens_per_iter
        if k <= 0:
            return 0.0
        return self._train_s(0, k) + self.overhead_s(0, 1)
