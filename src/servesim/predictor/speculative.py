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

The first draft pass of a step runs over the positions the last verify pass kept, padded to
depth + 1 per sequence: it extends the drafter's KV over the accepted tokens and drafts the
first new one (SGLang's draft-extend, `EAGLEDraftExtendCudaGraphRunner` with
`speculative_num_steps` + 1 tokens a request, then `speculative_num_steps` − 1 decode passes;
vLLM's `EagleProposer.propose` over every scheduled token of the step; TensorRT-LLM's MTP-Eagle
first draft over the accepted tokens); its LM head reads one position per sequence. A draft
tree (`SpeculativeDecoding.tree_widths`) verifies 1 + Σ w_i tokens per sequence and its later
draft pass i runs the previous depth's w_{i−1} expanded nodes per sequence. With Mirror-SD
the drafter runs on its own devices (the head's one layer, or the draft model, tensor-parallel
over `mirror_devices` of `mirror_device`) concurrently with verify, so a decode step takes
max(draft, verify) + the exchange over the link: the draft tokens one way and, for a head that
drafts from the target's hidden states (MTP, EAGLE), those states of every verified token the
other way.
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
        self.decode_tokens = speculative.verify_tokens
        self.tokens_per_step = speculative.expected_tokens_per_step
        mirror = speculative.mirror_device
        self.draft: Predictor | None = None
        if speculative.draft_model is not None:
            # The draft model runs tensor-parallel like the target (vLLM's
            # draft_tensor_parallel_size defaults to the target's), one copy per DP rank; with
            # Mirror-SD on its own devices (no kernel fit: that is the target device's).
            self.draft = Predictor(
                speculative.draft_model,
                mirror or device,
                Parallel(tp=speculative.mirror_devices if mirror else self.par.tp),
                self.engine,
                None if mirror else self.fit,
                latency_model=latency_model,
            )
        # Where a head's draft passes run: here, or (Mirror-SD) on the draft devices, one
        # head for the whole batch, tensor-parallel over them. An MTP head the checkpoint
        # keeps in its own format (`ModelSpec.mtp_dtype`: NVIDIA's NVFP4 DeepSeek-R1 and
        # Qwen3.5 exclude `model.layers.61*` / `mtp.layers.0*` from quantisation, and the
        # engines load it so: TensorRT-LLM's `DeepseekV3DecoderLayer._get_decoder_layer_quant_
        # config` gives "the MTP layer in the nvfp4 checkpoint", unquantized, no quant_algo;
        # SGLang's `DeepseekModelNextN` drops a modelopt_fp4 quant config, its FP8 cast of the
        # MTP experts being opt-in) drafts at that format's weight reads, priced by a
        # predictor of the model in it.
        self.head_host: Predictor = self
        head_model = model.mtp_layer_model() if speculative.method == "mtp" else model
        if self.draft is None and (mirror is not None or head_model is not model):
            self.head_host = Predictor(
                head_model,
                mirror or device,
                Parallel(tp=speculative.mirror_devices) if mirror else self.par,
                self.engine,
                None if mirror else self.fit,
                None if mirror else power_device,
                latency_model=latency_model,
                expert_load=None if mirror else expert_load,
            )
        self._draft_cache: dict[tuple[int, int], tuple[float, float]] = {}
        self._proj_tab = np.zeros(0)  # a head's 2h→h input projection by row count

    # ---- one draft pass ------------------------------------------------------------------
    def draft_pass_coeffs(self, decode_seqs: int, positions: int = 1) -> tuple[float, float]:
        """(a, b): one draft pass over n sequences of `positions` tokens each (the first pass of
        a step runs the kept positions, later ones one node each) takes a + b × their total
        context."""
        key = (decode_seqs, positions)
        got = self._draft_cache.get(key)
        if got is None:
            got = self._draft_cache[key] = self._draft_pass(decode_seqs, positions)
        return got

    def _draft_pass(self, n: int, q: int = 1) -> tuple[float, float]:
        if self.draft is not None:
            d = self.draft
            # One copy per DP rank beside the target, or (Mirror-SD) one for the whole batch.
            div = 1 if self.speculative.mirror_device else self.par.dp
            rows = -(-n // div)
            a, b = d.decode_coeffs(rows, queries=q)
            return d.dense_s(rows * q, rows) + a, b / div  # logits at one position a sequence
        # One decoder layer of the target (its average layer: DeepSeek's MTP layer is an MoE
        # layer like 58 of its 61), the 2h→h input projection and the shared LM head.
        host = self.head_host
        rows = -(-n // host.par.dp)  # the busiest rank's sequences
        layers = host.layers_per_stage
        # The layers' work over every position, the LM head over one position a sequence.
        dense = host.dense_s(n * q, n)
        lm = host._lm_tab[rows]
        a, b = host.decode_coeffs(n, queries=q)
        return (dense - lm) / layers + self._proj_s(rows * q) + lm + a / layers, b / layers

    def _proj_s(self, rows: int) -> float:
        """Seconds of a head's 2h→h input projection over `rows` rows (tabulated for every row
        count up to about twice the largest asked, at once)."""
        tab = self._proj_tab
        if rows >= len(tab):
            host = self.head_host
            h = host.model.hidden_size
            rows_all = np.maximum(np.arange(2 * rows + 64, dtype=np.float64), 1.0)
            tab = self._proj_tab = host._gemm("eh_proj", rows_all, h, 2 * h, 1.0).seconds
        return float(tab[rows])

    def draft_s(self, decode_seqs: int, decode_context: int) -> float:
        """Seconds of a step's k draft passes over n sequences of total context C: pass i runs
        the nodes it expands per sequence (1 for a chain) and reads the drafter's KV of that
        context (its growth by one token a pass is negligible)."""
        if not decode_seqs:
            return 0.0
        a, b = self._draft_coeffs(decode_seqs)
        return a + b * decode_context

    def _draft_coeffs(self, n: int) -> tuple[float, float]:
        """(a, b): a step's draft passes over n sequences take a + b × their total context."""
        first, *later = self.speculative.draft_rows
        a, b = self.draft_pass_coeffs(n, first)
        fixed = a + sum(self.draft_pass_coeffs(n * r)[0] for r in later)
        return fixed, b + len(later) * self.draft_pass_coeffs(n)[1]

    def exchange_s(self, decode_seqs: int) -> float:
        """Mirror-SD: seconds of a step's exchange between target and draft devices (0 when
        the drafter runs in series): two messages over the link, draft token ids one way and,
        for an MTP or EAGLE head, the target's hidden states of every verified token the
        other. Link figures as `sim.transfer.link_for` derives them from the target device:
        NVLink at 80 %, the scale-out NIC at 90 %, PCIe via the host at 80 % (20 µs a hop)."""
        sd = self.speculative
        if sd.mirror_device is None or not decode_seqs:
            return 0.0
        dev = self.device
        bw, lat = {
            "nvlink": (0.8 * dev.link_bw_bytes_per_s, dev.link_latency_s),
            "infiniband": (0.9 * dev.net_bw_bytes_per_s, dev.net_latency_s),
            "pcie": (0.8 * dev.host_bw_bytes_per_s, 20e-6),
        }[sd.mirror_link]
        nbytes = decode_seqs * sd.verify_tokens * 4.0  # int32 token ids
        if self.draft is None:  # the head drafts from the target's last hidden states
            nbytes += decode_seqs * sd.verify_tokens * self.model.hidden_size * 2.0
        return 2.0 * lat + nbytes / bw

    # ---- the seam --------------------------------------------------------------------------
    def step_s(self, decode_seqs: int, decode_context: int, prefill) -> float:  # type: ignore[override]
        """Seconds of one iteration: the verify pass (with any prefill chunks) plus the drafts,
        or with Mirror-SD the longer of the two plus the exchange."""
        prefill = tuple(prefill)
        t = super().step_s(decode_seqs, decode_context, prefill)
        if self.speculative.mirror_device is not None:
            if not decode_seqs:
                return t
            d = self.draft_s(decode_seqs, decode_context)
            return max(t, d) + self.exchange_s(decode_seqs)
        return t + self.drafts_s(decode_seqs, decode_context, prefill)

    def drafts_s(self, decode_seqs: int, decode_context: int, prefill=()) -> float:
        """Seconds of an iteration's draft passes in series with verify: the decodes' k passes
        (`draft_s`) and, in an iteration with prefill chunks, the drafter over those chunks.

        Every engine runs the drafter over the chunks' new tokens in the iteration that
        prefills them, for its KV of those positions and the first draft at each chunk's last
        (SGLang's `EAGLEWorker.forward_draft_extend` after `forward_target_extend`;
        TensorRT-LLM's `MTPEagleWorker.forward`, whose first MTP pass takes every context token;
        vLLM's `EagleProposer.propose` over every scheduled token). TensorRT-LLM and vLLM then
        run the other k−1 passes over every sequence of the batch, the prefilled ones included;
        SGLang drafts those at the prefilled request's first decode step. Outside a CUDA graph
        each pass pays a layer's host time, max(kernels, host): a prefill iteration past the
        piecewise graphs' token limit is eager, and TensorRT-LLM keeps its MTP layers out of
        torch.compile (docs/source/features/torch_compile_and_piecewise_cuda_graph.md, "exclude
        output projection & MTP from torch.compile's scope"), so they run eager in every
        iteration with prefill tokens."""
        chunks = tuple(prefill)
        if not chunks:
            return self.draft_s(decode_seqs, decode_context) if decode_seqs else 0.0
        passes = self._pass_kernels(decode_seqs, decode_context, chunks)
        stage = sum(n for n, _ in chunks) + decode_seqs * self.decode_tokens
        tokens = -(-stage // self.par.dp)
        eager = self.engine.name == "trtllm" or tokens > self.engine.prefill_graph_max_tokens
        h = 0.0
        if eager:  # a draft model's pass issues all its layers, a head's one layer
            host = self.head_host
            h = self.draft._eager_s if self.draft else host._eager_s / host.layers_per_stage
        return sum(max(p, h) for p in passes)

    def _pass_kernels(
        self, n: int, context: int, chunks: tuple[tuple[int, int], ...]
    ) -> list[float]:
        """Kernel seconds of each draft pass of an iteration with prefill chunks (see
        `drafts_s`): the decodes' passes as `draft_s` prices them, the first one also over the
        chunks' tokens, the later ones over the prefilled sequences too where the engine runs
        them."""
        first, *later = self.speculative.draft_rows
        prefilled_too = self._later_prefill_passes() > 0
        if n:
            a, b = self.draft_pass_coeffs(n, first)
            slope = self.draft_pass_coeffs(n)[1] * context
            out = [a + b * context] + [self.draft_pass_coeffs(n * r)[0] + slope for r in later]
        else:  # only the passes that run: the first, and the later ones where they draft too
            out = [0.0] * (1 + (len(later) if prefilled_too else 0))
        out[0] += self._chunk_pass_s(chunks)
        if later and prefilled_too:
            seqs = len(chunks)
            prompt = sum(n_new + c for n_new, c in chunks)
            for i, r in enumerate(later, 1):
                a, b = self.draft_pass_coeffs(n * r + seqs)
                base = self.draft_pass_coeffs(n * r)[0] if n else 0.0
                out[i] += (a - base) + b * prompt
        return out

    def _chunk_pass_s(self, chunks: tuple[tuple[int, int], ...]) -> float:
        """Kernel seconds of the drafter's pass over prefill chunks (new tokens, cached before):
        a draft model's prefill of them, or a head's one layer over every new token (its
        attention to the chunk's prefix, the 2h→h projection) with the LM head at one position
        a chunk."""
        if self.draft is not None:  # one copy per DP rank: the busiest rank's chunks
            dp = self.par.dp
            rank = chunks[::dp] if dp > 1 else chunks
            tokens = sum(n for n, _ in rank)
            return self.draft._prefill_chunks_s(rank) + self.draft.dense_s(tokens, len(rank))
        host = self.head_host
        dp = host.par.dp
        rank = chunks[::dp] if dp > 1 else chunks  # round-robin: rank 0 holds the most
        tokens = sum(n for n, _ in chunks)
        rows = -(-tokens // dp)
        layers = host.layers_per_stage
        dense = host.dense_s(tokens, len(chunks), extend=True)  # (tabulates the LM head's rows)
        lm = host._lm_tab[-(-len(chunks) // dp)]
        attn = host._prefill_chunks_s(rank) / layers
        return (dense - lm) / layers + attn + self._proj_s(rows) + lm

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        c0 = self.step_s(n, 0, ())  # verify and drafts at zero context
        _, b = self._decode_cache(n)
        db = self._draft_coeffs(n)[1]
        if self.speculative.mirror_device is not None:
            # max(a_v + b_v·C, a_d + b_d·C) ≤ max(a) + max(b)·C: exact when one side leads at
            # every context (verify does, unless the draft devices are much slower).
            return c0, max(b * self.par.pp, db)
        return c0, b * self.par.pp + db

    def step_work_s(self, decode_seqs: int, decode_context: int, prefill) -> float:  # type: ignore[override]
        """Busy work of the verify pass plus the draft passes (their dense work and LM head)."""
        prefill = tuple(prefill)
        work = super().step_work_s(decode_seqs, decode_context, prefill)
        if decode_seqs:
            host = self.head_host
            for i, r in enumerate(self.speculative.draft_rows):
                rows = -(-decode_seqs * r // host.par.dp)
                if self.draft is not None:
                    work += self.draft.step_work_s(rows, 0, ())
                    continue
                if rows >= len(host._dyn_dense_tab):
                    host._grow_tables(rows)
                # the first pass takes logits at one position a sequence, later ones every node
                logits = -(-decode_seqs // host.par.dp) if i == 0 else rows
                work += host._dyn_dense_tab[rows] / host.layers_per_stage + host._dyn_lm_tab[logits]
        chunks = prefill
        if chunks and self.speculative.mirror_device is None:  # the drafter over the prompts
            later = self._later_prefill_passes()
            seqs = len(chunks)
            if self.draft is not None:
                rank = -(-seqs // self.par.dp)
                work += self.draft.step_work_s(0, 0, chunks[:: self.par.dp])
                return work + later * self.draft.step_work_s(rank, 0, ())
            tokens = sum(n for n, _ in chunks)
            work += self._head_work_many(np.array([tokens]), np.array([seqs]))
            work += later * self._head_work_many(np.array([seqs]), np.array([seqs]))
        return work

    def _later_prefill_passes(self) -> int:
        """Draft passes after the first that also run over the sequences an iteration
        prefills: TensorRT-LLM and vLLM draft for every sequence of the batch (`drafts_s`)."""
        if self.engine.name in ("trtllm", "vllm"):
            return len(self.speculative.draft_rows) - 1
        return 0

    def _head_work_many(self, tokens: np.ndarray, seqs: np.ndarray) -> float:
        """Busy work of one head pass per iteration over `tokens` tokens with the LM head at
        `seqs` rows (per iteration; stage totals spread over the DP ranks): one layer's share of
        the dense work and the whole LM head."""
        host = self.head_host
        t, r = np.asarray(tokens, dtype=np.int64), np.asarray(seqs, dtype=np.int64)
        if not len(t):
            return 0.0
        total = Predictor.dense_work_many(host, t, r)  # every layer's dense work, the LM head
        lm = np.asarray(host._dyn_lm_tab)[-(-r // host.par.dp)]
        lm_sum = float(np.where(t > 0, lm, 0.0).sum())
        return (total - lm_sum) / host.layers_per_stage + lm_sum

    def dense_work_many(self, tokens: np.ndarray, seqs: np.ndarray) -> float:
        """Busy work of many iterations with prefill tokens (the simulator's logged shapes):
        the target's, plus the drafter's passes in them (`drafts_s`): the first over every
        token, and the later ones over every sequence where the engine drafts the prefilled
        ones too (TensorRT-LLM, vLLM). Mirror-SD's drafter runs on devices of its own."""
        work = super().dense_work_many(tokens, seqs)
        t = np.asarray(tokens, dtype=np.int64)
        if self.speculative.mirror_device is not None or not len(t):
            return work
        r = np.asarray(seqs, dtype=np.int64)
        later = self._later_prefill_passes()
        if self.draft is not None:  # one copy per DP rank: each rank's share
            d, dp = self.draft, self.par.dp
            tr, rr = -(-t // dp), -(-r // dp)
            return work + d.dense_work_many(tr, rr) + later * d.dense_work_many(rr, rr)
        return work + self._head_work_many(t, r) + later * self._head_work_many(r, r)

    def ops(self, batch: BatchShape) -> list[OpCost]:
        """The verify pass's operators (named `verify:…`) and the k draft passes as one row
        (`draft:<method>`, with the worst provenance of the kernels it is built from)."""
        verify = super().ops(batch)
        out = [replace(op, name=f"verify:{op.name}") for op in verify]
        mirror = self.speculative.mirror_device is not None
        if batch.decode_seqs or (batch.prefill and not mirror):
            if mirror:
                sec = self.draft_s(batch.decode_seqs, batch.decode_context)
            else:
                sec = self.drafts_s(batch.decode_seqs, batch.decode_context, batch.prefill)
            parts = self.draft.ops(BatchShape(batch.decode_seqs, 0)) if self.draft else verify
            codes = [PROVENANCE.index(op.provenance) for op in parts if op.provenance in PROVENANCE]
            prov = PROVENANCE[max(codes)] if codes else "roofline"
            k = self.speculative.num_draft_tokens
            out.append(OpCost(f"draft:{self.speculative.method}", "draft", k, sec, 0.0, 0.0, prov))
        return out

    def breakdown_s(self, batch: BatchShape) -> tuple[float, float]:
        """(draft seconds, verify seconds) of one iteration (with Mirror-SD they overlap)."""
        n, c = batch.decode_seqs, batch.decode_context
        if self.speculative.mirror_device is not None:
            return self.draft_s(n, c), Predictor.step_s(self, n, c, batch.prefill)
        return self.drafts_s(n, c, batch.prefill), Predictor.step_s(self, n, c, batch.prefill)
