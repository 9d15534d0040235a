"""Speculative decoding in the replica: each verify step of a sequence emits 1 + accepted tokens.

When a sequence joins the decode group with R tokens to emit, its number of verify steps S is
drawn from the acceptance chain (position i is accepted with probability a_i only if every
earlier one was) with the replica's seeded generator: S is the first step count whose tokens
reach R, the last step cut to R. The draw is exact and costs O(√R), not O(R): the first s0
steps, well short of R (six standard deviations), are one multinomial draw of how many steps
emit 1, 2, …, k+1 tokens, and only the last few are drawn one by one. The group's step counter G
counts verify steps, so a sequence finishes at its join step plus S: finish times, TPOT and the
steps it holds the cache are exact.

Between join and finish a sequence's tokens grow at its own mean rate R/S (its expected path
given its drawn step count), so the group's cached-token sum is affine in G and moves in O(1)
per step; the KV block counts (`SpecBlocks`) are rebuilt from those paths only when an exact
count is asked for, and upper bounds are tried first. A sequence that leaves early (preempted,
moved) takes the tokens its path reached, and the rest are drawn again when it rejoins. Inside a
stretch of decode steps the attended context and the cache grow by the expected tokens per step
(`Replica.spec_tau`). The KV check before a step reserves a slot per verified token (k+1 for a
chain, every node of a draft tree): the verify pass writes their KV, and the rejected ones are
freed when the step commits. A draft tree draws from its per-depth acceptance.

The per-request offsets in `Replica.off` keep their join values (one token per step), which is
what scheduling policies and the migration planner read; every sum and every departure uses the
drawn steps.
"""

from __future__ import annotations

import bisect
import math
import operator

import numpy as np

from servesim.sim.kvcache import DecodeBlocks


def step_probabilities(acceptance: np.ndarray) -> np.ndarray:
    """P(a verify step emits 1, 2, …, k+1 tokens): the chain accepts exactly j−1 drafts."""
    run = np.concatenate(([1.0], np.cumprod(acceptance)))  # P(first j drafts accepted)
    stop = np.append(1.0 - np.asarray(acceptance, dtype=np.float64), 1.0)
    return run * stop


class StepDraw:
    """Draws of verify steps until a number of tokens is emitted, steps emitting 1…k+1 tokens
    with probabilities `p` (`step_probabilities`): a multinomial draw for the steps that surely
    fall short, then single steps taken from a stream drawn ahead in blocks. Exact: the
    multinomial's tokens are below the target whenever it is used (checked; else every step is
    drawn singly)."""

    __slots__ = ("cdf", "cum", "margin", "p", "pos", "rng", "sizes", "tau")

    BLOCK = 1 << 14  # single steps drawn ahead at a time

    def __init__(self, p: np.ndarray, rng: np.random.Generator) -> None:
        self.p, self.rng = p, rng
        sizes = np.arange(1, len(p) + 1)
        self.sizes = sizes.tolist()  # tokens of a step of each kind
        self.tau = tau = float(sizes @ p)
        # Six standard deviations of the tokens per step, scaled by √tokens at each use.
        self.margin = 6.0 * math.sqrt(float((sizes - tau) ** 2 @ p) / tau)
        self.cdf = np.cumsum(p)[:-1]
        self.cum: list[int] = [0]  # tokens after each step of the stream
        self.pos = 0

    def _refill(self, need: int) -> None:
        rows = max(self.BLOCK, need + 1)
        tokens = 1 + np.searchsorted(self.cdf, self.rng.random(rows), side="right")
        # A plain list: one bisection per join costs less than a numpy slice and search.
        self.cum = np.concatenate(([0], np.cumsum(tokens))).tolist()
        self.pos = 0

    def steps(self, remaining: int) -> int:
        """Verify steps until `remaining` tokens are emitted (the last one cut to them)."""
        if remaining <= 0:
            return 0
        sizes = self.sizes
        head = int((remaining - self.margin * math.sqrt(remaining) - len(sizes)) / self.tau)
        steps = 0
        if head > 16:
            counts = self.rng.multinomial(head, self.p).tolist()
            made = sum(map(operator.mul, sizes, counts))
            if made < remaining:  # else beyond six standard deviations: every step singly
                steps, remaining = head, remaining - made
        # Each step emits at least one token: the steps left are within the next `remaining`.
        if self.pos + remaining >= len(self.cum):
            self._refill(remaining)
        pos, cum = self.pos, self.cum
        end = bisect.bisect_left(cum, cum[pos] + remaining, pos, pos + remaining + 1)
        self.pos = end
        return steps + end - pos


class SpecState:
    """The drawn steps of a replica's running sequences in dense slots (join offset, join step,
    step count, tokens to emit; a leaving sequence's slot takes the last one's), and the affine
    sums of their paths. The slots are plain lists, cheap to touch one at a time on every join
    and leave; the whole-group passes (`offsets`, `resum`) make arrays of them when asked."""

    __slots__ = ("a_sum", "draw", "g0", "off0", "rate_sum", "rem", "rid_at", "slot", "steps")

    def __init__(self, acceptance: tuple[float, ...], seed: int, index: int) -> None:
        p = step_probabilities(np.asarray(acceptance, dtype=np.float64))
        self.draw = StepDraw(p, np.random.default_rng((seed, index)))
        self.slot: dict[int, int] = {}  # rid -> slot
        self.rid_at: list[int] = []
        self.off0: list[int] = []
        self.g0: list[int] = []
        self.steps: list[int] = []
        self.rem: list[int] = []
        # Σ offsets at step G = a_sum + rate_sum·G − n·G (each path: off0 + g0 + R(G−g0)/S − G).
        self.a_sum = 0.0
        self.rate_sum = 0.0

    @property
    def n(self) -> int:
        """Slots in use (running sequences)."""
        return len(self.rid_at)

    def join(self, rid: int, off: int, g: int, remaining: int) -> int:
        """Draw a joining sequence's step count; returns it."""
        remaining = max(remaining, 0)
        steps = self.draw.steps(remaining)
        self.slot[rid] = len(self.rid_at)
        self.rid_at.append(rid)
        self.off0.append(off)
        self.g0.append(g)
        self.steps.append(steps)
        self.rem.append(remaining)
        rate = remaining / steps if steps else 0.0
        self.a_sum += off + g - rate * g
        self.rate_sum += rate
        return steps

    def leave(self, rid: int, g: int) -> int:
        """A sequence leaves at step g: drop its path from the sums; returns its offset."""
        i = self.slot.pop(rid)
        steps, rem, g0, off0 = self.steps[i], self.rem[i], self.g0[i], self.off0[i]
        off = off0 + g0 + rem * min(g - g0, steps) // max(steps, 1) - g
        rate = rem / steps if steps else 0.0
        self.a_sum -= off0 + g0 - rate * g0
        self.rate_sum -= rate
        rid_at, off0s, g0s, stepss, rems = self.rid_at, self.off0, self.g0, self.steps, self.rem
        last = rid_at.pop()
        o, g_, s_, r_ = off0s.pop(), g0s.pop(), stepss.pop(), rems.pop()
        if i < len(rid_at):  # the last slot fills the hole
            rid_at[i], off0s[i], g0s[i], stepss[i], rems[i] = last, o, g_, s_, r_
            self.slot[last] = i
        return off

    def offset_sum(self, g: int) -> int:
        """Σ offsets (cached tokens − g) of the running sequences' paths at step g."""
        return round(self.a_sum + (self.rate_sum - len(self.rid_at)) * g)

    def offsets(self, g: int) -> np.ndarray:
        """Offsets of every running sequence at step g: the tokens their paths reached."""
        g0 = np.array(self.g0, dtype=np.int64)
        steps = np.array(self.steps, dtype=np.int64)
        rem = np.array(self.rem, dtype=np.int64)
        made = rem * np.minimum(g - g0, steps) // np.maximum(steps, 1)
        return np.array(self.off0, dtype=np.int64) + g0 + made - g

    def offset(self, rid: int, g: int) -> int:
        """Offset of one running sequence at step g."""
        i = self.slot[rid]
        g0, steps = self.g0[i], self.steps[i]
        return self.off0[i] + g0 + self.rem[i] * min(g - g0, steps) // max(steps, 1) - g

    def resum(self) -> None:
        """Recompute the affine sums over the running sequences (float drift stays bounded)."""
        steps = np.array(self.steps, dtype=np.int64)
        g0 = np.array(self.g0, dtype=np.int64)
        rate = np.array(self.rem, dtype=np.int64) / np.maximum(steps, 1)  # no steps: no tokens
        self.a_sum = float((np.array(self.off0, dtype=np.int64) + g0 * (1.0 - rate)).sum())
        self.rate_sum = float(rate.sum())


class SpecBlocks(DecodeBlocks):
    """`DecodeBlocks` of a speculating group: sequences advance at their own rates, so the
    residue counts go stale at every step; they are rebuilt from the paths (one numpy pass over
    the dense slots) only when a block count is asked for; upper bounds are tried first."""

    __slots__ = ("g", "rebuilds", "stale", "state")

    RESUM_EVERY = 256  # rebuilds between recomputations of the affine sums

    def __init__(self, block_size: int, state: SpecState) -> None:
        super().__init__(block_size)
        self.state, self.stale, self.g, self.rebuilds = state, False, 0, 0

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
            self.reset(self.state.offsets(self.g))
            self.stale = False
            self.rebuilds += 1
            if self.rebuilds % self.RESUM_EVERY == 0:
                self.state.resum()

    def blocks_at(self, g: int) -> int:
        """Exact Σ ceil((off_i + g) / bs) over the sequences' paths."""
        self._fresh()
        return super().blocks_at(g)

    def steps_that_fit(self, g: int, free_blocks: int, limit: int) -> int:
        """As `DecodeBlocks.steps_that_fit`, on the sequences' paths."""
        self._fresh()
        return super().steps_that_fit(g, free_blocks, limit)


class SpeculativeSteps:
    """The speculative part of `Replica`: drawing a joining sequence's steps and moving the
    group's sums along the sequences' paths."""

    __slots__ = ()

    def _spec_join(self, rid: int, off: int, remaining: int) -> int:
        """Draw the verify steps of a sequence joining with `remaining` tokens to emit and
        offset `off`; returns their count."""
        return self.spec_state.join(rid, off, self.G, remaining)

    def _spec_leave_offset(self, rid: int) -> int:
        """The offset a leaving sequence holds now (what the group's sums count for it)."""
        return self.spec_state.leave(rid, self.G)

    def _spec_advance(self) -> None:
        """Move the group's cached-token sum to the new step along the sequences' paths; the
        block counts are rebuilt when next asked for."""
        state, blocks = self.spec_state, self.blocks
        blocks.g = self.G
        if self.off:
            self.off_sum = state.offset_sum(self.G)
            blocks.stale = True
        else:  # nobody left: the sums are exactly empty
            state.a_sum = state.rate_sum = 0.0

    def _spec_fit(self, steps: int) -> int:
        """Steps (≤ `steps`) of the decode group that fit the cache, after preempting until
        one verify step (a KV slot per verified token and sequence) fits; 0 when nobody is
        left. Past the first step the group is taken to grow by the expected tokens per step:
        a sequence that drew more is caught at the next boundary, where this check runs
        again."""
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
