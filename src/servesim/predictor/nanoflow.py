"""Iteration time with NanoFlow's intra-device overlap (Zhu et al., OSDI 2025, arXiv:2408.12757).

NanoFlow splits a batch into nano-batches so that compute-bound operators (large GEMMs,
prefill attention), memory-bound ones (decode attention over the KV cache, small GEMMs, norms)
and network-bound ones (tensor-parallel collectives) of different nano-batches run at once on
partitions of the GPU. An iteration then lasts about as long as its busiest resource instead of
the sum: `max(compute, memory, network)` over this predictor's own operator times, each
operator assigned to the resource its roofline says bounds it, summed over the nano-batches
(each re-reads the weights its GEMMs use). The iteration takes the faster of that and running
whole, as NanoFlow's search would pick. That is the ideal overlap, an
upper bound on the gain: NanoFlow reports reaching 59–72 % of its compute-bound optimum because
concurrent kernels interfere, which is not modelled. With little compute to hide behind (small
decode batches are memory-bound throughout) there is nothing to overlap and the time is the
sequential one; the gain appears as batches grow and GEMMs turn compute-bound. Energy and the
simulator's busy-work accounting keep the sequential figures.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.iteration import Predictor

# Nano-batch counts tried: NanoFlow's pipelines split each iteration into a few nano-batches
# (its auto-search picks the count; 2 and 4 cover the configurations its paper describes).
NANO_BATCHES = (2, 4)


class NanoFlowPredictor(Predictor):
    """A `Predictor` whose iterations overlap compute-, memory- and network-bound operators."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.par.pp > 1 or self.par.dp > 1:
            raise ServesimError(
                "NanoFlow overlap is priced on one pipeline stage and one attention-DP rank; "
                "use --pp 1 --dp 1."
            )
        self._class_tabs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _classes(self, need: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense work per token count split by bounding resource: (compute, memory, network)."""
        tabs = self._class_tabs
        if tabs is not None and len(tabs[0]) > need:
            return tabs
        size = max(1024, 1 << int(need).bit_length())
        t = np.arange(size, dtype=np.float64)
        t[0] = 1.0
        peak, bw = self._peak, self.device.mem_bw_bytes_per_s
        comp, mem, net = (np.zeros(size) for _ in range(3))
        for term in self._dense_terms(t):
            sec = np.broadcast_to(term.seconds, t.shape)
            if term.kind == "comm":
                net += sec
                continue
            bound = np.broadcast_to(term.flops, t.shape) / peak >= (
                np.broadcast_to(term.nbytes, t.shape) / bw
            )
            comp += np.where(bound, sec, 0.0)
            mem += np.where(bound, 0.0, sec)
        for tab in (comp, mem, net):
            tab[0] = 0.0
        self._class_tabs = (comp, mem, net)
        return self._class_tabs

    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of one iteration: the faster of running it whole (sequentially) and
        splitting it into 2 or 4 nano-batches whose operators overlap."""
        chunks = list(prefill)
        seq = Predictor.step_s(self, decode_seqs, decode_context, chunks)
        tokens = decode_seqs + sum(n for n, _ in chunks)
        best = seq
        for k in NANO_BATCHES:
            if tokens < k:
                break
            best = min(best, self._overlapped_s(decode_seqs, decode_context, chunks, k))
        return best

    def _overlapped_s(
        self, decode_seqs: int, decode_context: int, chunks: list[tuple[int, int]], k: int
    ) -> float:
        """k nano-batches of the iteration's tokens, their operators overlapped: each resource
        busy for the sum of its operators over the nano-batches (every nano-batch's GEMMs read
        the weights again, which is why small batches gain nothing)."""
        tokens = decode_seqs + sum(n for n, _ in chunks)
        seqs = decode_seqs + len(chunks)
        part = -(-tokens // k)
        comp, mem, net = self._classes(part)
        self.dense_s(part, max(1, -(-seqs // k)))  # the LM-head table
        t_c = k * (comp[part] + self._lm_tab[max(1, -(-seqs // k))])
        t_c += sum(self._prefill_cache(n, c) for n, c in chunks)
        t_m = k * mem[part]
        if decode_seqs:
            a, b = self._decode_cache(max(1, -(-decode_seqs // k)))
            t_m += k * a + b * decode_context
        return max(t_c, t_m, k * net[part]) + self.overhead_s(decode_seqs, len(chunks))

    def sequential_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """The same iteration without overlap (the base predictor's time)."""
        return Predictor.step_s(self, decode_seqs, decode_context, prefill)
