"""Paged KV-cache accounting for a group of sequences that all grow by one token per step.

A sequence of `c` cached tokens holds `ceil(c / block_size)` blocks. Decoding sequences advance
together, so the simulator stores each one as an offset `off = c − G` from the group's step
counter `G`. `DecodeBlocks` answers "how many blocks does the group hold at step G" exactly in
O(block_size) time whatever the group's size, which lets the simulator skip many decode steps
at once and still preempt on the exact step where the cache runs out.
"""

from __future__ import annotations

import numpy as np


class DecodeBlocks:
    """Exact block count of a lock-step decoding group, by residue classes of the offsets."""

    __slots__ = ("_a_sum", "_cnt", "bs", "n")

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.n = 0  # sequences in the group
        self._a_sum = 0  # sum of off // bs
        self._cnt = [0] * block_size  # sequences per residue off % bs

    def add(self, off: int) -> None:
        """Add a sequence whose cached tokens are `off + G`."""
        a, r = divmod(off, self.bs)
        self._a_sum += a
        self._cnt[r] += 1
        self.n += 1

    def remove(self, off: int) -> None:
        """Remove a sequence added with `off`."""
        a, r = divmod(off, self.bs)
        self._a_sum -= a
        self._cnt[r] -= 1
        self.n -= 1

    def reset(self, offs: list[int]) -> None:
        """Hold exactly the sequences of offsets `offs` (a whole group moved at once)."""
        a = np.asarray(offs, dtype=np.int64)
        self.n = len(a)
        self._a_sum = int((a // self.bs).sum())
        self._cnt = np.bincount(a % self.bs, minlength=self.bs).tolist()

    def blocks_at(self, g: int) -> int:
        """Blocks the group holds when the step counter is `g`: Σ ceil((off_i + g) / bs)."""
        if not self.n:
            return 0
        bs = self.bs
        q, s = divmod(g, bs)
        # ceil((bs·a + r + bs·q + s)/bs) = a + q + [r+s ≥ 1] + [r+s > bs]
        total = self._a_sum + self.n * q + self.n
        if s == 0:
            total -= self._cnt[0]
        else:
            total += sum(self._cnt[bs - s + 1 :])
        return total

    def steps_that_fit(self, g: int, free_blocks: int, limit: int) -> int:
        """Largest k ≤ limit such that the group fits `free_blocks` at step counter g + k.

        `free_blocks` counts blocks available to this group (capacity minus other users). Each
        period of `bs` steps adds exactly `n` blocks, so whole periods are counted in one step
        and at most `bs` single steps are checked.
        """
        if not self.n:
            return limit
        if self.blocks_at(g + 1) > free_blocks:
            return 0
        periods = (free_blocks - self.blocks_at(g + 1)) // self.n
        k = 1 + periods * self.bs
        if k >= limit:
            return limit
        while k < limit and self.blocks_at(g + k + 1) <= free_blocks:
            k += 1
        return k


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold `tokens` tokens."""
    return -(-tokens // block_size)
