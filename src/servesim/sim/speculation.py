"""Speculative decoding in the replica: each verify step of a sequence emits 1 + accepted tokens.

Step lengths are drawn from the acceptance chain (position i is accepted with probability a_i
only if every earlier one was) as one seeded stream per replica, drawn ahead in numpy blocks.
When a sequence joins the decode group it takes the next stretch of the stream that covers its
remaining output, the last step cut to the output length. The group's step counter G then
counts verify steps: a sequence finishes at its join step plus its step count, so its finish
time, and the tokens it holds when it leaves (finished, preempted or moved), are exact.

Keeping the group's sums exact costs O(steps), not O(sequences): `extra[g]` holds how many
tokens beyond one the running sequences' steps number g emit (added at join, the unused part
taken back at an early leave), so committing steps adds a slice sum to the cached-token sum;
the KV block counts (`SpecBlocks`) are rebuilt from the draws only when an exact count is
asked for, and upper bounds are tried first. Inside a stretch of decode steps the attended
context and the cache grow by the expected tokens per step (`Replica.spec_tau`). The KV check
before a step reserves k+1 slots per sequence: the verify pass writes the KV of its k draft
tokens, and the rejected ones are freed when the step commits.

The per-request offsets in `Replica.off` keep their join values (one token per step), which is
what scheduling policies and the migration planner read; every sum and every departure uses the
drawn tokens.
"""

from __future__ import annotations

import math

import numpy as np

from servesim.sim.kvcache import DecodeBlocks


def step_probabilities(acceptance: np.ndarray) -> np.ndarray:
    """P(a verify step emits 1, 2, …, k+1 tokens): the chain accepts exactly j−1 drafts."""
    run = np.concatenate(([1.0], np.cumprod(acceptance)))  # P(first j drafts accepted)
    stop = np.append(1.0 - np.asarray(acceptance, dtype=np.float64), 1.0)
    return run * stop


class SpecBlocks(DecodeBlocks):
    """`DecodeBlocks` of a speculating group: sequences advance by their own drawn tokens, so
    the residue counts go stale at every step; they are rebuilt from the draws (one numpy
    pass) only when a block count is asked for, which the upper bounds tried first make rare."""

    __slots__ = ("live", "stale", "state")

    def __init__(self, block_size: int, state: SpecState, live: dict[int, int]) -> None:
        super().__init__(block_size)
        self.state, self.live, self.stale = state, live, False

    def add(self, off: int) -> None:
        """Add a joining sequence (nothing to do while stale: the rebuild counts it)."""
        if not self.stale:
            super().add(off)

    def remove(self, off: int) -> None:
        """Remove a leaving sequence (nothing to do while stale)."""
        if not self.stale:
            super().remove(off)

    def _fresh(self) -> None:
        if self.stale:
            live = self.live
            rids = np.fromiter(live, dtype=np.int64, count=len(live))
            self.reset(self.state.offsets(rids))
            self.stale = False

    def blocks_at(self, g: int) -> int:
        """Exact Σ ceil((off_i + g) / bs) over the sequences' drawn offsets."""
        self._fresh()
        return super().blocks_at(g)

    def steps_that_fit(self, g: int, free_blocks: int, limit: int) -> int:
        """As `DecodeBlocks.steps_that_fit`, on the drawn offsets."""
        self._fresh()
        return super().steps_that_fit(g, free_blocks, limit)


class SpecState:
    """The drawn verify steps of a replica's running sequences.

    Step lengths come from one seeded stream per replica, drawn ahead in numpy blocks; a
    joining sequence takes the next stretch of the stream that covers its remaining tokens
    (its last step cut to them), so joining costs one binary search. `extra[g − base]` holds
    Σ (tokens − 1) that the running sequences' steps number g emit, added when a sequence joins
    and its unused part taken back when it leaves early, so committing steps moves the group's
    offset sum in O(steps), not O(sequences)."""

    __slots__ = (
        "cdf", "cum", "cum_base", "cum_len", "ext", "extra", "extra_base", "g", "g0", "off0",
        "ones", "pos", "rem", "rng", "start", "steps", "tau", "u",
    )  # fmt: skip

    BLOCK = 1 << 16  # step lengths drawn at a time

    def __init__(self, acceptance: tuple[float, ...], seed: int, index: int) -> None:
        p = step_probabilities(np.asarray(acceptance, dtype=np.float64))
        self.cdf = np.cumsum(p)[:-1]  # searchsorted of a uniform gives accepted drafts
        self.tau = float(np.dot(np.arange(1, len(p) + 1), p))
        self.rng = np.random.default_rng((seed, index))
        # The stream: cum[i − cum_base] = tokens of stream steps before position i.
        self.cum = np.zeros(1, dtype=np.int64)
        self.cum_base = 0
        self.cum_len = 1  # entries of `cum` in use
        self.ext = np.zeros(1, dtype=np.int8)  # drafts accepted at each stream step
        self.u = np.empty(self.BLOCK, dtype=np.float32)  # uniforms, redrawn in place
        self.ones = np.arange(1, self.BLOCK + 1, dtype=np.int64)
        self.pos = 0  # next unused stream position
        self.extra = np.zeros(1 << 12, dtype=np.int64)
        self.extra_base = 1  # global step of extra[0]
        self.g = 0  # the step the offset sum was last moved to
        # Per request slot: join offset, join step, stream start, step count, tokens to emit.
        self.off0 = np.zeros(64, dtype=np.int64)
        self.g0 = np.zeros(64, dtype=np.int64)
        self.start = np.zeros(64, dtype=np.int64)
        self.steps = np.zeros(64, dtype=np.int64)
        self.rem = np.zeros(64, dtype=np.int64)

    def _draw(self, live: dict[int, int], tokens: int) -> None:
        """Extend the stream until `tokens` tokens follow `pos`, dropping the part before every
        running sequence's start. Draws are written in place, a block at a time (fresh memory
        costs more than the draws), at least as many as are kept, so the move is amortised."""
        base, n = self.cum_base, self.cum_len
        lo = self.pos
        if live:
            rids = np.fromiter(live, dtype=np.int64, count=len(live))
            lo = min(lo, int(self.start[rids].min()))
        keep = n - (lo - base)
        total = int(self.cum[n - 1])
        have = total - int(self.cum[self.pos - base])
        rows = max(self.BLOCK, keep, int((tokens - have) / self.tau * 1.1) + 16)
        self._room(lo - base, keep, keep + rows)
        self.cum_base, n = lo, keep
        u, block, ones = self.u, self.BLOCK, self.ones
        while have < tokens or rows > 0:
            if n + block > len(self.cum):  # rare: the estimate fell short
                self._room(0, n, n + block)
            view, extra = self.cum[n : n + block], self.ext[n : n + block]
            self.rng.random(dtype=np.float32, out=u)
            # Accepted drafts = how many entries of the chain's cumulative step distribution
            # the uniform reaches (searchsorted, unrolled over the k entries).
            extra.fill(0)
            for c in self.cdf:
                extra += u >= c
            np.cumsum(extra, dtype=np.int64, out=view)
            view += ones
            view += total
            n += block
            rows -= block
            new_total = int(view[-1])
            have += new_total - total
            total = new_total
        self.cum_len = n

    def _room(self, lo: int, keep: int, size: int) -> None:
        """Move the stream's entries lo … lo+keep−1 to the front, with room for `size`."""
        if size > len(self.cum):
            cum = np.empty(2 * size, dtype=np.int64)
            ext = np.empty(2 * size, dtype=np.int8)
            cum[:keep], ext[:keep] = self.cum[lo : lo + keep], self.ext[lo : lo + keep]
            self.cum, self.ext = cum, ext
        elif lo:  # numpy copes with the overlap
            self.cum[:keep] = self.cum[lo : lo + keep]
            self.ext[:keep] = self.ext[lo : lo + keep]

    def join(self, rid: int, off: int, g: int, remaining: int, live: dict[int, int]) -> int:
        """Lay out a joining sequence's steps from the stream; returns their count. `live`
        holds the running sequences (their stretches of the stream are kept)."""
        if remaining <= 0:
            remaining = 0
        if rid >= len(self.off0):
            size = max(2 * len(self.off0), rid + 1)
            for name in ("off0", "g0", "start", "steps", "rem"):
                arr = getattr(self, name)
                grown = np.zeros(size, dtype=np.int64)
                grown[: len(arr)] = arr
                setattr(self, name, grown)
        self.start[rid], self.steps[rid], self.rem[rid] = self.pos, 0, remaining
        self.off0[rid], self.g0[rid] = off, g
        if not remaining:
            return 0
        i = self.pos - self.cum_base
        if int(self.cum[self.cum_len - 1]) - int(self.cum[i]) < remaining:
            self._draw(live, remaining)
            i = self.pos - self.cum_base
        cum = self.cum
        first = int(cum[i])
        # Every step emits at least one token: the count is within the next `remaining`.
        end = min(i + remaining + 1, self.cum_len)
        steps = int(np.searchsorted(cum[i:end], first + remaining))  # first count reaching it
        # Σ (tokens − 1) of its steps g+1 … g+steps; the last one cut to `remaining`.
        ex = self._extra_slice(g + 1, g + steps + 1)
        ex += self.ext[i + 1 : i + steps + 1]
        ex[-1] -= int(cum[i + steps]) - first - remaining
        self.steps[rid] = steps
        self.pos += steps
        return steps

    def _extra_slice(self, lo: int, hi: int) -> np.ndarray:
        """The view of `extra` for global steps lo … hi−1 (lo > the last advanced step),
        shifting out steps already summed and growing as needed."""
        ext, base = self.extra, self.extra_base
        if hi - base > len(ext):
            keep = ext[self.g + 1 - base :]
            size = max(2 * len(keep), hi - self.g - 1, 1 << 12)
            ext = np.zeros(size, dtype=np.int64)
            ext[: len(keep)] = keep
            self.extra, self.extra_base = ext, base = ext, self.g + 1
        return ext[lo - base : hi - base]

    def leave(self, rid: int, g: int) -> int:
        """A sequence leaves at step g: take back the steps it will not run; returns the
        offset it holds now."""
        g0, steps = int(self.g0[rid]), int(self.steps[rid])
        if g < g0 + steps:
            i = int(self.start[rid]) - self.cum_base
            first = int(self.cum[i])
            j = g - g0
            ex = self._extra_slice(g + 1, g0 + steps + 1)
            ex -= self.ext[i + j + 1 : i + steps + 1]
            ex[-1] += int(self.cum[i + steps]) - first - int(self.rem[rid])
        return self.offset(rid, g)

    def advance(self, g: int) -> int:
        """Move to step g; returns how much the group's offset sum grows."""
        base = self.extra_base
        delta = int(self.extra[self.g + 1 - base : g + 1 - base].sum()) if g > self.g else 0
        self.g = g
        return delta

    def offsets(self, rids: np.ndarray) -> np.ndarray:
        """Current offsets (cached tokens − g) of running sequences at the advanced step."""
        g = self.g
        g0 = self.g0[rids]
        i = self.start[rids] - self.cum_base
        j = np.minimum(g - g0, self.steps[rids])
        made = np.minimum(self.cum[i + j] - self.cum[i], self.rem[rids])
        return self.off0[rids] + g0 + made - g

    def offset(self, rid: int, g: int) -> int:
        """Current offset of one running sequence at step g."""
        g0 = int(self.g0[rid])
        j = min(g - g0, int(self.steps[rid]))
        i = int(self.start[rid]) - self.cum_base
        made = min(int(self.cum[i + j]) - int(self.cum[i]), int(self.rem[rid]))
        return int(self.off0[rid]) + g0 + made - g


class SpeculativeSteps:
    """The speculative part of `Replica`: laying out a joining sequence's steps and moving the
    group's sums by the tokens its steps emitted."""

    __slots__ = ()

    def _spec_join(self, rid: int, off: int, remaining: int) -> int:
        """Lay out the verify steps of a sequence joining with `remaining` tokens to emit and
        offset `off`; returns its step count."""
        return self.spec_state.join(rid, off, self.G, remaining, self.off)

    def _spec_leave_offset(self, rid: int) -> int:
        """The offset a leaving sequence holds now (what the group's sums count for it)."""
        return self.spec_state.leave(rid, self.G)

    def _spec_advance(self) -> None:
        """Move the group's cached-token sum to the new step by what its steps emitted; the
        block counts are rebuilt from the draws when next asked for."""
        delta = self.spec_state.advance(self.G)
        if self.off:
            self.off_sum += delta
            self.blocks.stale = True

    def _spec_fit(self, steps: int) -> int:
        """Steps (≤ `steps`) of the decode group that fit the cache, after preempting until
        one verify step (k+1 KV slots per sequence) fits; 0 when nobody is left. Past the first
        step the group is taken to grow by the expected tokens per step: a sequence that drew
        more is caught at the next boundary, where this check runs again."""
        s = self.step_slots
        blocks = self.blocks
        cap = self.kv_blocks - self.fixed_blocks
        g, tau = self.G, self.spec_tau
        n, bs = len(self.off), self.cfg.block_size
        # Σ ceil(x/bs) ≤ (Σx + n(bs−1))/bs: when even that bound fits, skip the exact count.
        if (self.off_sum + n * (g + math.ceil(tau * (steps - 1)) + s + bs - 1)) // bs <= cap:
            return steps
        while self.off and blocks.blocks_at(g + s) > cap:
            self._preempt_one()
            cap = self.kv_blocks - self.fixed_blocks
        if not self.off:
            return 0

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
