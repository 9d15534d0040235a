"""Iteration time with LoRA adapters batched together (Punica's SGMV, S-LoRA): beside the base
model, each iteration reads the A and B matrices of every distinct adapter its sequences use
and multiplies each token by its own adapter, whichever of the two takes longer."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from servesim.predictor.iteration import Predictor
from servesim.spec.lora import LoraAdapters


class LoraPredictor(Predictor):
    """A `Predictor` whose iterations add the adapters' own work: the expected distinct
    adapters of the batch read from memory, or every token's adapter FLOPs."""

    def __init__(self, *args: object, adapters: LoraAdapters, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.adapters = adapters
        per_device = adapters.bytes_per_adapter(self.model) / self.par.tp
        self._read_s = per_device / self.device.mem_bw_bytes_per_s  # one adapter's weights
        # 2 FLOPs per adapter weight per token; bf16 weights are 2 bytes: FLOPs = bytes.
        self._flop_s = per_device / self._peak
        self._distinct = lru_cache(maxsize=4096)(adapters.expected_distinct)

    def lora_s(self, seqs: int, tokens: int) -> float:
        """Seconds the adapters add to an iteration of `seqs` sequences and `tokens` tokens."""
        if not seqs:
            return 0.0
        return max(self._distinct(seqs) * self._read_s, tokens * self._flop_s)

    def step_s(
        self, decode_seqs: int, decode_context: int, prefill: Iterable[tuple[int, int]]
    ) -> float:
        """Seconds of one iteration with its adapters."""
        chunks = list(prefill)
        base = super().step_s(decode_seqs, decode_context, chunks)
        tokens = decode_seqs + sum(n for n, _ in chunks)
        return base + self.lora_s(decode_seqs + len(chunks), tokens)
