"""A speculative decode step: k sequential draft passes, then one verification forward of the
target over k+1 tokens per sequence.

The verify pass is the target's decode step whose attention reads each sequence's context once
(the k+1 queries share it) but whose GEMMs, collectives and LM head process batch × (k+1)
tokens (`Predictor.decode_tokens`), so it turns compute-bound at a smaller batch than plain
decode. A draft pass of an MTP or EAGLE head is one transformer layer of the target's shape at
the decode batch (DeepSeek-V3's MTP module: one decoder layer plus a 2h→h projection, sharing
the LM head; EAGLE: one decoder layer plus an `fc` 2h→h, the LM head shared) reading its own
one layer of KV; a draft model's pass is that model's decode step. The engines run the draft
passes in the same captured CUDA graph as the step (SGLang `EAGLEDraftCudaGraphRunner`,
vLLM `EagleProposer` under cudagraph), so no scheduler overhead is added per pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from servesim.predictor import roofline
from servesim.predictor.iteration import BatchShape, OpCost, Predictor
from servesim.predictor.measured_kernels import PROVENANCE
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.expert_load import ExpertLoad
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding


class SpeculativePredictor(Predictor):
    """Prices iterations whose decodes run speculative steps (draft, then verify k+1 tokens)."""

    def __init__(
        self,
        model: ModelSpec,
        device: Device,
        speculative: SpeculativeDecoding,
        parallel: Parallel | None = None,
        engine: EngineProfile | None = None,
        fit: roofline.KernelFit | None = None,
        power_device: Device | None = None,
        latency_model: str = "roofline",
        expert_load: ExpertLoad | None = None,
    ) -> None:
        speculative.check_target(model)
        super().__init__(
            model, device, parallel, engine, fit, power_device, latency_model, expert_load
        )
        self.speculative = speculative
        self.decode_tokens = speculative.num_draft_tokens + 1
        self.tokens_per_step = speculative.expected_tokens_per_step
        self.draft: Predictor | None = None
        if speculative.draft_model is not None:
            # The draft model runs tensor-parallel like the target (vLLM's
            # draft_tensor_parallel_size defaults to the target's), one copy per DP rank.
            self.draft = Predictor(
                speculative.draft_model,
                device,
                Parallel(tp=self.par.tp),
                self.engine,
                self.fit,
                latency_model=latency_model,
            )
        self._draft_cache: dict[int, tuple[float, float]] = {}

    # ---- one draft pass ------------------------------------------------------------------
    def draft_pass_coeffs(self, decode_seqs: int) -> tuple[float, float]:
        """(a, b): one draft pass over n sequences takes a + b × their total context."""
        got = self._draft_cache.get(decode_seqs)
        if got is None:
            got = self._draft_cache[decode_seqs] = self._draft_pass(decode_seqs)
        return got

    def _draft_pass(self, n: int) -> tuple[float, float]:
        dp = self.par.dp
        rows = -(-n // dp)  # the busiest rank's sequences
        if self.draft is not None:
            d = self.draft
            a, b = d.decode_coeffs(rows)
            return d.dense_s(rows, rows) + a, b / dp
        # One decoder layer of the target (its average layer: DeepSeek's MTP layer is an MoE
        # layer like 58 of its 61), the 2h→h input projection and the shared LM head.
        layers = self.layers_per_stage
        dense = self.dense_s(n, n)
        lm = self._lm_tab[rows]
        h = self.model.hidden_size
        proj = self._gemm("eh_proj", np.array([float(rows)]), h, 2 * h, 1.0).seconds[0]
        a, b = self.decode_coeffs(n)
        return (dense - lm) / layers + float(proj) + lm + a / layers, b / layers

    def draft_s(self, decode_seqs: int, decode_context: int) -> float:
        """Seconds of a step's k draft passes over n sequences of total context C (each pass
        reads the drafter's KV of that context; its growth by one token a pass is negligible)."""
        if not decode_seqs:
            return 0.0
        a, b = self.draft_pass_coeffs(decode_seqs)
        return self.speculative.num_draft_tokens * (a + b * decode_context)

    # ---- the seam --------------------------------------------------------------------------
    def step_s(self, decode_seqs: int, decode_context: int, prefill) -> float:  # type: ignore[override]
        """Seconds of one iteration: the verify pass (with any prefill chunks) plus the drafts."""
        t = super().step_s(decode_seqs, decode_context, prefill)
        return t + self.draft_s(decode_seqs, decode_context) if decode_seqs else t

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        c0 = self.step_s(n, 0, ())  # verify and drafts at zero context
        _, b = self._decode_cache(n)
        _, db = self.draft_pass_coeffs(n)
        return c0, b * self.par.pp + self.speculative.num_draft_tokens * db

    def step_work_s(self, decode_seqs: int, decode_context: int, prefill) -> float:  # type: ignore[override]
        """Busy work of the verify pass plus the draft passes (their dense work and LM head)."""
        work = super().step_work_s(decode_seqs, decode_context, prefill)
        if decode_seqs:
            rows = -(-decode_seqs // self.par.dp)
            if rows >= len(self._dyn_dense_tab):
                self._grow_tables(rows)
            per = self._dyn_dense_tab[rows] / self.layers_per_stage + self._dyn_lm_tab[rows]
            if self.draft is not None:
                per = self.draft.step_work_s(rows, 0, ())
            work += self.speculative.num_draft_tokens * per
        return work

    def ops(self, batch: BatchShape) -> list[OpCost]:
        """The verify pass's operators (named `verify:…`) and the k draft passes as one row
        (`draft:<method>`, with the worst provenance of the kernels it is built from)."""
        verify = super().ops(batch)
        out = [replace(op, name=f"verify:{op.name}") for op in verify]
        if batch.decode_seqs:
            sec = self.draft_s(batch.decode_seqs, batch.decode_context)
            parts = self.draft.ops(BatchShape(batch.decode_seqs, 0)) if self.draft else verify
            codes = [PROVENANCE.index(op.provenance) for op in parts if op.provenance in PROVENANCE]
            prov = PROVENANCE[max(codes)] if codes else "roofline"
            k = self.speculative.num_draft_tokens
            out.append(OpCost(f"draft:{self.speculative.method}", "draft", k, sec, 0.0, 0.0, prov))
        return out

    def breakdown_s(self, batch: BatchShape) -> tuple[float, float]:
        """(draft seconds, verify seconds) of one iteration."""
        total = self.step_s(batch.decode_seqs, batch.decode_context, batch.prefill)
        draft = self.draft_s(batch.decode_seqs, batch.decode_context)
        return draft, total - draft
