"""Speculative decoding in the replica: each verify step of a sequence emits 1 + accepted tokens.

When a sequence joins the decode group its remaining output is laid out as verify steps drawn
from the acceptance chain (position i is accepted with probability a_i only if every earlier
one was) with the replica's seeded generator, the last step cut to the output length. The
group's step counter G then counts verify steps: a sequence finishes at its join step plus its
drawn step count, and at every commit its offset moves by the tokens its steps emitted beyond
one per step, so cached tokens (`off + G`), KV blocks and context stay exact at step
boundaries. Inside a stretch of decode steps the attended context grows by the expected tokens
per step (`Replica.spec_tau`), and the KV check reserves k+1 slots per sequence per step: the
verify pass writes the KV of its k draft tokens, and the rejected ones are freed when the step
commits.
"""

from __future__ import annotations

import numpy as np


def draw_step_tokens(rng: np.random.Generator, acceptance: np.ndarray, remaining: int) -> list[int]:
    """Cumulative tokens emitted after 0, 1, …, S verify steps (ending at `remaining`), each
    step emitting one token plus the accepted prefix of its drafts."""
    k = len(acceptance)
    # Every step emits at least one token: `remaining` steps always suffice, and drawing a
    # block of the expected count (plus margin) first keeps the draw small.
    tau = 1.0 + float(np.cumprod(acceptance).sum())
    rows = min(remaining, int(remaining / tau * 1.25) + 8)
    total = 0
    parts = [np.zeros(1, dtype=np.int64)]
    while total < remaining:
        u = rng.random((rows, k))
        emitted = 1 + np.cumprod(u < acceptance, axis=1).sum(axis=1)
        cum = total + np.cumsum(emitted)
        parts.append(cum)
        total = int(cum[-1])
        rows = remaining
    cum = np.concatenate(parts)
    steps = int(np.searchsorted(cum, remaining))  # first step count reaching the output
    cum = cum[: steps + 1]
    cum[steps] = remaining  # the last step is truncated to the output length
    return cum.tolist()


class SpeculativeSteps:
    """The speculative part of `Replica`: drawing a joining sequence's steps and moving the
    group's offsets by the tokens its steps emitted."""

    __slots__ = ()

    def _spec_join(self, rid: int, off: int, remaining: int) -> int:
        """Lay out the verify steps of a sequence joining with `remaining` tokens to emit and
        offset `off`; returns its step count."""
        cum = draw_step_tokens(self.spec_rng, self.spec_acc, remaining)
        self.spec_state[rid] = (self.G, off, cum)
        return len(cum) - 1

    def _spec_advance(self, g_old: int) -> None:
        """Move every running sequence's offset by the tokens its steps since `g_old` emitted
        beyond one per step (the group's counter is already at the new step)."""
        g = self.G
        state, offs, blocks = self.spec_state, self.off, self.blocks
        moved = 0
        for rid, old in offs.items():
            g0, off0, cum = state[rid]
            s = g - g0
            last = len(cum) - 1
            new = off0 + g0 + cum[s if s < last else last] - g
            if new != old:
                offs[rid] = new
                moved += new - old
                blocks.remove(old)
                blocks.add(new)
        self.off_sum += moved

    def _spec_fit(self, steps: int) -> int:
        """Steps (≤ `steps`) of the decode group that fit the cache when each writes k+1 KV
        slots per sequence, after preempting until one step fits; 0 when nobody is left."""
        s = self.step_slots
        blocks = self.blocks
        cap = self.kv_blocks - self.fixed_blocks
        while self.off and blocks.blocks_at(self.G + s) > cap:
            self._preempt_one()
            cap = self.kv_blocks - self.fixed_blocks
        if not self.off:
            return 0
        g = self.G
        if blocks.blocks_at(g + s * steps) <= cap:
            return steps
        lo, hi = 1, steps  # blocks_at(g + s·lo) fits, blocks_at(g + s·hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if blocks.blocks_at(g + s * mid) <= cap:
                lo = mid
            else:
                hi = mid
        return lo
