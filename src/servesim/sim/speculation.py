"""Speculative decoding in the replica: each verify step of a sequence emits 1 + accepted tokens.

When a sequence joins the decode group its remaining output is laid out as verify steps drawn
from the acceptance chain (position i is accepted with probability a_i only if every earlier
one was) with the replica's seeded generator, the last step cut to the output length. The
group's step counter G then counts verify steps: a sequence finishes at its join step plus its
drawn step count, so its finish time, and the tokens it holds when it leaves (finished,
preempted or moved), are exact. The group's sums (cached tokens, KV blocks) are rebuilt from
every sequence's drawn tokens at each step boundary, in bulk with numpy; inside a stretch of
decode steps the attended context and the cache grow by the expected tokens per step
(`Replica.spec_tau`). The KV check before a step reserves k+1 slots per sequence: the verify
pass writes the KV of its k draft tokens, and the rejected ones are freed when the step commits.

The per-request offsets in `Replica.off` keep their join values (one token per step), which is
what scheduling policies and the migration planner read; every sum and every departure uses the
drawn tokens.
"""

from __future__ import annotations

import math

import numpy as np


def step_probabilities(acceptance: np.ndarray) -> np.ndarray:
    """P(a verify step emits 1, 2, …, k+1 tokens): the chain accepts exactly j−1 drafts."""
    run = np.concatenate(([1.0], np.cumprod(acceptance)))  # P(first j drafts accepted)
    stop = np.append(1.0 - np.asarray(acceptance, dtype=np.float64), 1.0)
    return run * stop


def draw_step_tokens(
    rng: np.random.Generator, cdf: np.ndarray, remaining: int, tau: float = 1.0
) -> np.ndarray:
    """Cumulative tokens emitted after 0, 1, …, S verify steps (ending at `remaining`); `cdf`
    is the cumulative of `step_probabilities` but its last entry, `tau` the mean tokens per
    step (sizes the first block of draws; more follow if it falls short)."""
    rows = min(remaining, int(remaining / tau * 1.1) + 16)  # every step emits ≥ 1 token
    total = 0
    parts = [np.zeros(1, dtype=np.int64)]
    while total < remaining:
        emitted = 1 + np.searchsorted(cdf, rng.random(rows), side="right")
        cum = total + np.cumsum(emitted)
        parts.append(cum)
        total = int(cum[-1])
        rows = remaining
    cum = np.concatenate(parts)
    steps = int(np.searchsorted(cum, remaining))  # first step count reaching the output
    cum = cum[: steps + 1]
    cum[steps] = remaining  # the last step is truncated to the output length
    return cum


class SpecState:
    """The drawn steps of a replica's running sequences, by request slot: join offset, join
    step and where each one's cumulative tokens sit in one flat buffer."""

    __slots__ = ("buf", "cdf", "end", "g0", "last", "off0", "rng", "start", "tau")

    def __init__(self, acceptance: tuple[float, ...], seed: int, index: int) -> None:
        p = step_probabilities(np.asarray(acceptance, dtype=np.float64))
        self.cdf = np.cumsum(p)[:-1]  # searchsorted of a uniform gives accepted drafts
        self.tau = float(np.dot(np.arange(1, len(p) + 1), p))
        self.rng = np.random.default_rng((seed, index))
        self.off0 = np.zeros(64, dtype=np.int64)
        self.g0 = np.zeros(64, dtype=np.int64)
        self.start = np.zeros(64, dtype=np.int64)
        self.last = np.zeros(64, dtype=np.int64)
        self.buf = np.zeros(1 << 16, dtype=np.int64)
        self.end = 0

    def join(self, rid: int, off: int, g: int, remaining: int, live: dict[int, int]) -> int:
        """Draw a joining sequence's steps; returns their count. `live` holds the running
        sequences (their segments survive when the buffer is compacted)."""
        cum = draw_step_tokens(self.rng, self.cdf, remaining, self.tau)
        if rid >= len(self.off0):
            size = max(2 * len(self.off0), rid + 1)
            for name in ("off0", "g0", "start", "last"):
                arr = getattr(self, name)
                grown = np.zeros(size, dtype=np.int64)
                grown[: len(arr)] = arr
                setattr(self, name, grown)
        if self.end + len(cum) > len(self.buf):
            self._compact(live, len(cum))
        self.buf[self.end : self.end + len(cum)] = cum
        self.off0[rid], self.g0[rid] = off, g
        self.start[rid], self.last[rid] = self.end, len(cum) - 1
        self.end += len(cum)
        return len(cum) - 1

    def _compact(self, live: dict[int, int], extra: int) -> None:
        """Keep only the running sequences' segments (and room for `extra` more)."""
        rids = [r for r in live]
        need = sum(int(self.last[r]) + 1 for r in rids) + extra
        buf = np.zeros(max(len(self.buf), 2 * need), dtype=np.int64)
        end = 0
        for r in rids:
            s, n = int(self.start[r]), int(self.last[r]) + 1
            buf[end : end + n] = self.buf[s : s + n]
            self.start[r] = end
            end += n
        self.buf, self.end = buf, end

    def offsets(self, rids: np.ndarray, g: int) -> np.ndarray:
        """Current offsets (cached tokens − g) of running sequences at step g."""
        g0 = self.g0[rids]
        steps = np.minimum(g - g0, self.last[rids])
        return self.off0[rids] + g0 + self.buf[self.start[rids] + steps] - g

    def offset(self, rid: int, g: int) -> int:
        """Current offset of one running sequence at step g."""
        g0 = int(self.g0[rid])
        steps = min(g - g0, int(self.last[rid]))
        return int(self.off0[rid]) + g0 + int(self.buf[self.start[rid] + steps]) - g


class SpeculativeSteps:
    """The speculative part of `Replica`: drawing a joining sequence's steps and rebuilding the
    group's sums from the tokens its steps emitted."""

    __slots__ = ()

    def _spec_join(self, rid: int, off: int, remaining: int) -> int:
        """Lay out the verify steps of a sequence joining with `remaining` tokens to emit and
        offset `off`; returns its step count."""
        return self.spec_state.join(rid, off, self.G, remaining, self.off)

    def _spec_leave_offset(self, rid: int) -> int:
        """The offset a leaving sequence holds now (what the group's sums count for it)."""
        return self.spec_state.offset(rid, self.G)

    def _spec_advance(self) -> None:
        """Rebuild the group's cached-token sum and block counts at the new step from every
        running sequence's drawn tokens (one numpy pass per commit)."""
        offs = self.off
        if not offs:
            return
        rids = np.fromiter(offs, dtype=np.int64, count=len(offs))
        new = self.spec_state.offsets(rids, self.G)
        self.off_sum = int(new.sum())
        self.blocks.reset(new)

    def _spec_fit(self, steps: int) -> int:
        """Steps (≤ `steps`) of the decode group that fit the cache, after preempting until
        one verify step (k+1 KV slots per sequence) fits; 0 when nobody is left. Past the first
        step the group is taken to grow by the expected tokens per step: a sequence that drew
        more is caught at the next boundary, where this check runs again."""
        s = self.step_slots
        blocks = self.blocks
        cap = self.kv_blocks - self.fixed_blocks
        while self.off and blocks.blocks_at(self.G + s) > cap:
            self._preempt_one()
            cap = self.kv_blocks - self.fixed_blocks
        if not self.off:
            return 0
        g, tau = self.G, self.spec_tau

        def fits(n: int) -> bool:
            return blocks.blocks_at(g + math.ceil(tau * (n - 1)) + s) <= cap

        if fits(steps):
            return steps
        lo, hi = 1, steps  # fits(lo), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo
