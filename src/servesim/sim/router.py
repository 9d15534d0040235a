"""Routing requests across replicas, and Llumnix-style live migration between them.

Routers pick a replica when a request arrives:
- `round_robin`: in turn (vLLM production stack, Kubernetes services).
- `least_loaded`: fewest outstanding tokens (prompt + output of the requests it holds; the
  output lengths are the workload's, i.e. what a router with a perfect length predictor sees).
- `least_requests`: fewest requests queued or running (SGLang router's shortest queue).
- `least_kv`: Llumnix's dispatch: lowest KV-cache load counting queued prompts, with no
  knowledge of output lengths.
- `power_of_two`: two replicas drawn at random, the one with fewer outstanding tokens
  (Mitzenmacher's power of two choices; seeded, so runs are deterministic).
- `prefix_affinity`: the replica whose prefix cache holds the longest leading part of the prompt
  (SGLang's cache-aware router, Mooncake's Conductor), unless it is much busier than the
  least-loaded one, which then gets the request.
- `session`: sticky by the prompt's first hash block (a conversation or system prompt), so a
  session always lands on the same replica.

`Migration` moves a decoding request from the most to the least loaded replica: its KV cache is
copied while it keeps decoding, then the tokens produced meanwhile are copied during a short
stop (Llumnix's live migration), so the request pauses only for the last copy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.sim.replica import Replica

ROUTERS = (
    "round_robin",
    "least_loaded",
    "least_requests",
    "least_kv",
    "power_of_two",
    "prefix_affinity",
    "session",
)


def check_router(name: str) -> None:
    """Refuse an unknown router name with the list of known ones."""
    if name not in ROUTERS:
        raise ServesimError(f"Unknown router {name!r}; use one of: {', '.join(ROUTERS)}.")


class Router:
    """Picks a replica for each arrival under one of the policies above."""

    def __init__(
        self,
        name: str,
        hashes: list[list[int]] | None = None,
        seed: int = 0,
        imbalance: float = 0.5,
    ) -> None:
        check_router(name)
        self.name = name
        self.hashes = hashes
        self.rng = random.Random(seed)
        self.rr = 0
        self.imbalance = imbalance  # prefix_affinity: tolerated load excess over the lightest
        # slot -> the request's index in the workload (the run's table sets it; without it a
        # slot is the index)
        self.ids: list[int] | None = None

    def pick(self, rid: int, reps: list[Replica]) -> Replica:
        """The replica (of the active ones given) that gets the request in slot `rid`."""
        if len(reps) == 1:
            return reps[0]
        name = self.name
        if name == "round_robin":
            r = reps[self.rr % len(reps)]
            self.rr += 1
            return r
        if name == "least_loaded":
            return least_outstanding(reps)
        if name == "least_requests":
            return min(reps, key=lambda x: (x.num_requests, x.index))
        if name == "least_kv":
            return min(reps, key=lambda x: (kv_load(x), x.index))
        if name == "power_of_two":
            a, b = self.rng.sample(reps, 2)
            return a if (a.outstanding_tokens, a.index) <= (b.outstanding_tokens, b.index) else b
        if name == "session":
            hashes = self.hashes[rid] if self.hashes else None
            key = hashes[0] if hashes else (self.ids[rid] if self.ids is not None else rid)
            return reps[hash((key, 0x5EED)) % len(reps)]
        return self._prefix_affinity(rid, reps)

    def _prefix_affinity(self, rid: int, reps: list[Replica]) -> Replica:
        lightest = least_outstanding(reps)
        hashes = self.hashes[rid] if self.hashes else None
        if not hashes:
            return lightest
        best, best_k = lightest, 0
        n = len(hashes)
        for r in reps:
            # Cached prefixes are contiguous: without block `best_k` a replica cannot match more.
            if r.prefix is None or best_k >= n or hashes[best_k] not in r.prefix.refs:
                continue
            k = r.prefix.match(hashes, n)
            if k > best_k or (k == best_k and k and r.outstanding_tokens < best.outstanding_tokens):
                best, best_k = r, k
        limit = lightest.outstanding_tokens * (1.0 + self.imbalance) + 4096
        return best if best.outstanding_tokens <= limit else lightest


def least_outstanding(reps: list[Replica]) -> Replica:
    """The replica with the fewest outstanding tokens (the first of equals)."""
    best = reps[0]
    low = best.outstanding_tokens
    for r in reps:
        if r.outstanding_tokens < low:
            best, low = r, r.outstanding_tokens
    return best


def kv_load(r: Replica) -> float:
    """Llumnix's virtual usage: KV pages in use plus the pages queued prompts will need, as a
    share of the cache."""
    queued = r.queued_tokens / r.cfg.block_size
    return (r.kv_used_estimate + queued) / max(1, r.kv_blocks)


def freeness_steps(r: Replica) -> float:
    """Llumnix's freeness (with de-fragmentation on): how many more decode steps the replica's
    requests can take before its KV cache runs out, counting the head-of-line queued request's
    demand as virtual usage and as one more request, so a replica whose queue is blocked on
    memory has negative freeness and becomes a migration source."""
    bs = r.cfg.block_size
    running = len(r.off)
    # Tokens free: `kv_used_estimate` inlined (routers poll this often).
    free = (r.kv_blocks - r.fixed_blocks - 0.5 * running) * bs - r.off_sum - running * r.G
    n = running + len(r.prefilling)
    if r.waiting:
        free -= r.head_tokens()
        n += 1
    return free / (n or 1)


def _shortest(r: Replica) -> list[int]:
    return sorted(r.off, key=r.off.__getitem__)


def _longest(r: Replica) -> list[int]:
    return sorted(r.off, key=r.off.__getitem__, reverse=True)


def _last(r: Replica) -> list[int]:
    off = r.off
    return [rid for rid in reversed(r.join_order) if rid in off]


MIGRATION_ORDER = {"shortest": _shortest, "longest": _longest, "last": _last}


@dataclass(frozen=True)
class Migration:
    """Llumnix live migration between replicas of a pool.

    Every `interval_s` (Llumnix's global scheduler polls every 50 ms; polling is priced in
    simulation time, so the default is coarser) the replicas whose
    freeness (`freeness_steps`) is below `low_steps` — about to preempt, or with a queue blocked
    on memory — are sorted from the least free, those above `high_steps` from the most free, and
    the i-th source is paired with the i-th destination. Each pair moves one decoding request,
    the first in `pick` order (Llumnix's request policies: "shortest" running, the cheapest to
    move and its default; "longest"; "last" admitted) that the destination can hold while
    staying above `high_steps` itself. A replica takes part in one migration at a time, as in
    Llumnix, which bounds the moves in flight by half the pool; `max_inflight` caps them further
    for the whole pool if set. The moves use the deployment's inter-replica link. The
    thresholds default to Llumnix's migrate-out threshold of 3 free KV blocks (48 tokens, i.e.
    48 decode steps) per request.
    """

    interval_s: float = 0.25
    low_steps: float = 48.0
    high_steps: float = 48.0
    max_inflight: int | None = None
    link: str = "scale_up"
    pick: str = "shortest"

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or (self.max_inflight is not None and self.max_inflight < 1):
            raise ServesimError("Migration needs interval_s > 0 and max_inflight ≥ 1 (or None).")
        if not self.low_steps <= self.high_steps:
            raise ServesimError("Migration needs low_steps ≤ high_steps (decode steps).")
        if self.pick not in MIGRATION_ORDER:
            raise ServesimError(
                f"Migration pick {self.pick!r}: use one of {list(MIGRATION_ORDER)}."
            )
