"""Prefix caching: prompt blocks whose KV is already resident are reused instead of recomputed.

Requests name their prompt by hash ids, one per block of `block_tokens` tokens (512 in the
Mooncake traces): two requests with the same leading ids share that prefix. A replica keeps the
KV of prefix blocks it computed, as vLLM's automatic prefix caching and SGLang's radix cache do.
A block in use by a running request is pinned; when its last user finishes it stays cached but
becomes evictable, least recently released first. Eviction happens lazily, when a lookup needs
the space accounted for, so the bookkeeping runs only at admission, finish and preemption.
"""

from __future__ import annotations

from collections import OrderedDict

from servesim.errors import ServesimError


class PrefixCache:
    """Cached prefix blocks of one replica: pinned ones and an LRU of evictable ones."""

    __slots__ = (
        "block_tokens",
        "entry_blocks",
        "evictions",
        "hit_tokens",
        "lookup_tokens",
        "lru",
        "refs",
    )

    def __init__(self, block_tokens: int, engine_block_tokens: int) -> None:
        if block_tokens < 1 or engine_block_tokens < 1:
            raise ServesimError(
                "Prefix caching needs positive block sizes; set the workload's "
                "prefix_block_tokens (512 for Mooncake traces)."
            )
        self.block_tokens = block_tokens
        self.entry_blocks = -(-block_tokens // engine_block_tokens)  # KV pages per hash block
        self.refs: dict[int, int] = {}  # hash id -> users (0 = cached, evictable)
        self.lru: OrderedDict[int, None] = OrderedDict()  # evictable ids, oldest first
        self.hit_tokens = 0
        self.lookup_tokens = 0
        self.evictions = 0

    @property
    def evictable_blocks(self) -> int:
        """KV pages held by cached blocks nobody uses (free space on demand)."""
        return len(self.lru) * self.entry_blocks

    def match(self, hashes: list[int], limit: int) -> int:
        """How many leading hash blocks of a prompt are cached, at most `limit`."""
        refs = self.refs
        k = 0
        for h in hashes:
            if k >= limit or h not in refs:
                break
            k += 1
        return k

    def lookup(self, hashes: list[int], limit: int) -> tuple[int, int]:
        """(leading cached blocks of a prompt, at most `limit`; KV pages among them that a new
        user would pin out of the evictable set), in one pass."""
        refs = self.refs
        k = unpinned = 0
        for h in hashes:
            if k >= limit:
                break
            n = refs.get(h)
            if n is None:
                break
            k += 1
            if n == 0:
                unpinned += 1
        return k, unpinned * self.entry_blocks

    def acquire(self, hashes: list[int]) -> int:
        """Pin cached blocks for a new user; returns KV pages that stopped being evictable."""
        refs, lru = self.refs, self.lru
        pinned = 0
        for h in hashes:
            n = refs[h]
            if n == 0:
                del lru[h]
                pinned += 1
            refs[h] = n + 1
        return pinned * self.entry_blocks

    def release(self, hashes: list[int]) -> int:
        """Unpin a user's blocks; returns KV pages that became evictable."""
        refs, lru = self.refs, self.lru
        freed = 0
        for h in hashes:
            n = refs[h] - 1
            refs[h] = n
            if n == 0:
                lru[h] = None
                freed += 1
        return freed * self.entry_blocks

    def insert(self, hashes: list[int]) -> int:
        """Cache a user's freshly computed blocks (pinned by it) up to the first one that is
        already cached by someone else; returns how many were inserted."""
        refs = self.refs
        k = 0
        for h in hashes:
            if h in refs:
                break
            refs[h] = 1
            k += 1
        return k

    def evict_to(self, max_evictable_blocks: int) -> None:
        """Drop least recently released blocks until the evictable ones fit the free space."""
        lru = self.lru
        excess = len(lru) - max(0, max_evictable_blocks) // self.entry_blocks
        if excess <= 0:
            return
        refs, pop = self.refs, lru.popitem
        for _ in range(excess):
            del refs[pop(last=False)[0]]
        self.evictions += excess

    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens served from the cache."""
        return self.hit_tokens / self.lookup_tokens if self.lookup_tokens else 0.0
