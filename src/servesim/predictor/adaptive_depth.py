"""Iteration time when requests skip layers: each layer runs only the tokens that use it.

A layer of a batch costs what the model's uniform layer costs for the tokens that run it:
its weights are read in full if even one sequence runs it (the memory-bound floor of decode),
its GEMMs scale with those tokens (the compute of prefill), and its attention reads only the
KV of those sequences. The predictor prices the expectation over which sequences run each
layer (`users_pmf`), so one lone request skipping half the layers decodes in about half the
time, 64 independent ones save almost nothing, and 64 that skip together save the skipped
share. What it does not save: the LM head, the engine's per-step overhead and (in a paged
engine, whose KV blocks span every layer of a sequence) the KV capacity of skipped layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.iteration import Predictor
from servesim.spec.adaptive_depth import LayerSkipping


def users_pmf(n: int, p: float, correlation: float) -> np.ndarray:
    """P(exactly u of `n` sequences run a layer), u = 0..n, when each skips it with probability
    p and a share `correlation` of them follow one shared decision instead of their own."""
    from scipy.stats import binom  # imported on use: scipy.stats alone takes ~0.3 s to import

    if n == 0:
        return np.ones(1)
    u = np.arange(n + 1)
    w_shared = binom.pmf(u, n, correlation)  # k sequences follow the shared decision
    pmf = np.zeros(n + 1)
    for k in np.flatnonzero(w_shared > 1e-15):
        own = binom.pmf(u[: n - k + 1], n - k, 1.0 - p)  # users among the other n − k
        pmf[: n - k + 1] += w_shared[k] * p * own  # the shared ones skip the layer
        pmf[k:] += w_shared[k] * (1.0 - p) * own  # the shared ones run it
    return pmf / pmf.sum()


class SkippingPredictor(Predictor):
    """A `Predictor` for a model whose requests skip layers (`LayerSkipping`): the same
    interface, each step priced as its expectation over the layers each sequence runs."""

    def __init__(self, *args: object, skipping: LayerSkipping, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        m = self.model
        if m.is_hybrid or m.first_dense_layers or m.num_sliding_layers:
            raise ServesimError(
                f"{m.name}: layer skipping is priced for models whose layers are all alike; "
                "this one mixes layer kinds (dense and MoE, windowed or linear attention)."
            )
        if self.par.pp > 1 or self.par.dp > 1:
            raise ServesimError(
                "layer skipping is priced on one pipeline stage and one attention-DP rank; "
                "use --pp 1 --dp 1."
            )
        self.skipping = skipping
        probs = skipping.layer_probs(m.num_layers)
        values, counts = np.unique(probs, return_counts=True)
        self._groups = [(float(p), int(c)) for p, c in zip(values, counts, strict=True)]
        self.used_share = float(1.0 - probs.mean())
        self._pmf = lru_cache(maxsize=4096)(users_pmf)

    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Expected seconds of one iteration (the simulator's hot call)."""
        chunks = list(prefill)
        s = self.skipping
        n_pre = len(chunks)
        pre_tokens = sum(n for n, _ in chunks)
        attn_pre = sum(self._prefill_cache(n, c) for n, c in chunks)
        seqs = decode_seqs + n_pre
        tokens = decode_seqs + pre_tokens
        if tokens == 0:
            return self.overhead_s(0, 0)
        self.cover(tokens, seqs)  # every count used below
        dense, lm = self._dense_tab, self._lm_tab
        layers = self.model.num_layers
        a, b = self._decode_cache(decode_seqs) if decode_seqs else (0.0, 0.0)
        both = s.phase == "both"
        t = attn_pre * (self.used_share if both else 1.0)
        t += b * decode_context * self.used_share
        for p, count in self._groups:
            pmf = self._pmf(decode_seqs, p, s.correlation)
            # Prompt tokens run the layer (decode-phase skipping) or, with `both`, the share of
            # them whose sequences run it (priced at its mean: prefill is compute-bound there,
            # linear in tokens).
            base = pre_tokens * (1.0 - p) if both else pre_tokens
            lo = round(base)  # the tabulated counts base, base + 1, ..., base + decode_seqs
            layer_dense = float(pmf @ np.asarray(dense[lo : lo + decode_seqs + 1])) / layers
            busy = 1.0 - (pmf[0] if base == 0 else 0.0)  # P(some sequence runs the layer)
            t += count * (layer_dense + busy * a / layers)
        return t + lm[seqs] + self.overhead_s(decode_seqs, n_pre)

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        c0 = self.step_s(n, 0, ())
        _, b = self._decode_cache(n)
        return c0, b * self.used_share
