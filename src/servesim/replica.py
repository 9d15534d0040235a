"""One engine replica: continuous batching over a paged KV cache, with event skipping.

The replica runs two kinds of work. An iteration that carries prefill tokens is priced and
advanced on its own (`_start_mixed`). When only decodes run, nothing changes until a request
finishes, a new one arrives, or the cache fills, so the replica prices that whole stretch of
steps in closed form (`_start_decode`): decode step time is affine in the total context, which
grows by the batch size each step, so k steps take k·t₀ + c₁·B·k(k−1)/2. An arrival cuts the
stretch at the first step boundary after it. Running sequences are stored as offsets from the
replica's step counter so no per-token or per-step Python loop runs.

Scheduling follows vLLM's V1 scheduler by default: decodes first, then partial prefills, then
waiting requests in FCFS order under the token budget and `max_num_seqs`; blocks are allocated
as chunks are scheduled; when a decode step cannot get a block, the most recently admitted
request is preempted and recomputed later. With `mixed_batches=False` (SGLang) an iteration runs
either prefills or decodes, prefills first. Other orders (priority, slack, length-aware queues,
swap to host, preemptible prefill) come from a `PolicyState` and take a separate, slower path
(`_schedule_policy`) so the default one stays tight.

Roles: a `mixed` replica serves requests end to end; a `prefill` replica hands a request off
after its first token and keeps its KV cache until `release` (the cluster moves it over a link);
a `decode` replica takes requests whose KV arrives by `attach`. Energy is accumulated as busy
work (`Predictor.step_work_s`) per iteration and in closed form per decode stretch.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from servesim.kvcache import DecodeBlocks
from servesim.metrics import ItlHistogram
from servesim.policies import KeyedQueue, PolicyState
from servesim.predictor import Predictor
from servesim.prefix import PrefixCache
from servesim.records import RequestTable, SeriesRecorder

INF = math.inf
ROLES = ("mixed", "prefill", "decode")


def _chunk_fit(entry: list[int], budget: int, free: int, bs: int) -> tuple[int, int]:
    """(tokens, new blocks) of a partial prefill's next chunk: at most `budget` tokens, cut to
    what `free` blocks hold. `entry` is [rid, done, target, held blocks, shared tokens]."""
    _, done, target, held, shared = entry
    n = min(target - done, budget)
    extra = -(-(done + n - shared) // bs) - held
    if extra > free:
        n = min(n, (held + free) * bs + shared - done)
        extra = -(-(done + n - shared) // bs) - held if n > 0 else 0
    return n, extra


@dataclass(frozen=True)
class ReplicaConfig:
    """Batching limits and cache size of one replica (or one pipeline virtual engine)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    mixed_batches: bool = True
    block_size: int = 16
    kv_blocks: int = 10_000
    overlap: bool = False  # the next iteration is scheduled while this one runs


class Replica:
    """Continuous-batching engine state and its event-skipping step loop."""

    # Slots keep attribute access on the hot path fast (a plain instance dict with this many
    # keys loses CPython's specialised loads).
    __slots__ = (
        "G",
        "_mixed",
        "_seg",
        "_step_costs",
        "attached_load",
        "attn_pairs",
        "blocks",
        "busy_s",
        "cfg",
        "finish_heap",
        "fixed_blocks",
        "fresh",
        "fresh_n",
        "group",
        "handoff",
        "hands_off",
        "hashes",
        "held",
        "idle_share",
        "incoming",
        "index",
        "interrupts",
        "iter_start",
        "iterations",
        "itl",
        "join_order",
        "join_seq",
        "joined",
        "kv_blocks",
        "lagged",
        "last_decode_end",
        "leaving",
        "left",
        "mixed_shapes",
        "next_t",
        "now",
        "off",
        "off_sum",
        "outstanding_tokens",
        "pins",
        "power_pred",
        "pp",
        "pred",
        "prefilling",
        "prefix",
        "provisioned",
        "ps",
        "queued_tokens",
        "role",
        "samples",
        "series",
        "shape_chunks",
        "shape_count",
        "shape_work_s",
        "shared",
        "shared_sum",
        "stall_s",
        "suspended",
        "suspended_rids",
        "swapped",
        "table",
        "waiting",
        "work_s",
    )

    def __init__(
        self,
        index: int,
        predictor: Predictor,
        cfg: ReplicaConfig,
        table: RequestTable,
        itl: ItlHistogram,
        policy: PolicyState | None = None,
        role: str = "mixed",
        prefix: PrefixCache | None = None,
        hashes: list[list[int]] | None = None,
    ) -> None:
        self.index = index
        self.pred = predictor
        self.cfg = cfg
        self.table = table
        self.itl = itl
        self.pp = predictor.par.pp
        self._step_costs = predictor.decode_step_costs
        self.role = role
        self.hands_off = role == "prefill"
        self.ps = policy
        self.waiting: Any = deque() if policy is None else KeyedQueue(policy.key)
        self.kv_blocks = cfg.kv_blocks  # may shrink when a partner shares the cache (semi-PD)
        # Partial prefills: [rid, done_tokens, target_tokens, private_blocks, shared_tokens]
        self.prefilling: list[list[int]] = []
        # Blocks outside the decode group's private ones: prefill chunks, pinned prefix blocks,
        # KV held for a transfer, blocks reserved for an incoming request.
        self.fixed_blocks = 0
        # Lock-step decode group, stored as offsets from the step counter G.
        self.G = 0
        self.off: dict[int, int] = {}  # rid -> private cached tokens minus G
        self.finish_heap: list[tuple[int, int, int]] = []  # (finish G, join order, rid)
        # rid -> join order of its current finish_heap entry: entries of earlier stays (a
        # request preempted, swapped or migrated and back) are stale and skipped.
        self.joined: dict[int, int] = {}
        self.join_order: list[int] = []  # rids in admission order (for preemption)
        self.join_seq = 0
        self.off_sum = 0
        self.shared: dict[int, int] = {}  # rid -> prefix tokens it reads from pinned blocks
        self.shared_sum = 0
        self.blocks = DecodeBlocks(cfg.block_size)
        # (first-token time, count) of requests that joined since the last decode step
        self.fresh: list[tuple[float, int]] = []
        self.fresh_n = 0
        self.last_decode_end = 0.0
        # Prefix caching
        self.prefix = prefix
        self.hashes = hashes
        self.pins: dict[int, int] = {}  # rid -> leading hash blocks it pins
        # Disaggregation and migration
        self.handoff: list[int] = []  # prefill role: rids whose first token is out
        self.held: dict[int, int] = {}  # rid -> private blocks kept for the KV transfer
        # (rid, cached tokens, last token time, reserved blocks, keeps its arrival-order place)
        self.incoming: deque[tuple[int, int, float, int, bool]] = deque()
        self.attached_load: dict[int, int] = {}  # rid -> tokens it added to the router signal
        # Live migration: requests to stop at the end of the iteration in flight (in the order
        # asked: a set would order them by slot, which slot reuse shuffles), and those
        # stopped there as (rid, cached tokens or -1 if it finished first, boundary time).
        self.leaving: dict[int, None] = {}
        self.left: list[tuple[int, int, float]] = []
        # Policy path state
        self.swapped: dict[int, tuple[int, float]] = {}  # rid -> (cached tokens, last token t)
        self.suspended: list[tuple[float, list, Any]] = []  # FlowPrefill stack
        self.suspended_rids: set[int] = set()
        self.stall_s = 0.0  # PCIe time the next iteration waits for (swaps)
        # Work in flight
        self.now = 0.0
        self.next_t = INF
        self._mixed: tuple | None = None
        self._seg: tuple | None = None
        # Overlap scheduling: arrivals not yet seen by a scheduling pass, as (arrival, rid); a
        # pass runs when an iteration starts, for the one after it.
        self.lagged: deque[tuple[float, int]] = deque()
        self.iter_start = 0.0  # start of the iteration that ended last
        # Observables
        self.busy_s = 0.0
        self.work_s = 0.0  # busy work (full-dynamic-power seconds per device), for energy
        self.attn_pairs = 0.0  # prefill attention (query, key) pairs computed
        self.mixed_shapes: list[int] = []  # tokens << 20 | sequences, per prefill iteration
        self.iterations = 0
        self.interrupts = 0
        self.provisioned: list[list[float]] = [[0.0, INF]]  # [from, to] intervals (autoscaling)
        self.group = index  # the physical replica (pipeline virtual engines share one)
        self.idle_share = 1.0 / self.pp  # share of the devices' idle power this engine carries
        self.power_pred = predictor  # prices energy (semi-PD lanes use the whole GPU's)
        # Flat (time, sequences running, KV tokens held) triples, one per scheduling decision,
        # moved to `series` (bounded) whenever the table harvests (`compact`)
        self.samples: list[float] = []
        self.series: SeriesRecorder | None = None
        # `mixed_shapes` moved out as arrays, and priced in bulk once they are many
        self.shape_chunks: list[np.ndarray] = []
        self.shape_count = 0
        self.shape_work_s = 0.0
        self.outstanding_tokens = 0  # prompt + output tokens not yet served (router signal)
        # Tokens the queued requests must prefill to run again (router and migration signal): a
        # prompt, or for a request preempted by recompute its prompt and the tokens it had made.
        self.queued_tokens = 0
        table.reps.append(self)

    # ---- public face for the cluster driver --------------------------------------------
    def total_work_s(self, decode_context_tokens: float) -> float:
        """Busy work of everything this replica ran (full-dynamic-power seconds per device),
        given the context its decode steps attended to in total (reading the KV cache is
        linear in it, so the sum over requests of their per-step contexts, taken from the
        request table at the end, prices every decode step at once)."""
        pred = self.power_pred
        parts = [*self.shape_chunks, np.asarray(self.mixed_shapes, dtype=np.int64)]
        shapes = np.concatenate(parts)
        dense = self.shape_work_s + pred.dense_work_many(shapes >> 20, shapes & 0xFFFFF)
        work = self.work_s + dense
        work += pred.decode_work_per_token_s * decode_context_tokens
        return work + pred.attn_pair_work_s * self.attn_pairs

    def compact(self, series_cap: int, shape_cap: int) -> None:
        """Move the samples and iteration shapes logged since the last call out of the hot
        path's lists: samples into the bounded `series` (exact up to `series_cap`), shapes
        into arrays, priced in bulk once more than `shape_cap` are held."""
        if self.samples:
            if self.series is None:
                self.series = SeriesRecorder(series_cap)
            self.series.add(self.samples)
            self.samples.clear()
        ms = self.mixed_shapes
        if ms:
            self.shape_chunks.append(np.fromiter(ms, np.int64, len(ms)))
            self.shape_count += len(ms)
            ms.clear()
            if self.shape_count > shape_cap:
                shapes = np.concatenate(self.shape_chunks)
                pred = self.power_pred
                self.shape_work_s += pred.dense_work_many(shapes >> 20, shapes & 0xFFFFF)
                self.shape_chunks = []
                self.shape_count = 0

    def series_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t_s, running, kv_tokens) samples of the whole run (call after the last compact)."""
        if self.series is None:
            flat = np.array(self.samples, dtype=np.float64).reshape(-1, 3)
            return flat[:, 0].copy(), flat[:, 1].copy(), flat[:, 2].copy()
        return self.series.arrays()

    def provisioned_s(self, end_s: float) -> float:
        """Seconds this replica was provisioned (powered and paid for) up to `end_s`."""
        return sum(max(0.0, min(b, end_s) - a) for a, b in self.provisioned)

    @property
    def num_requests(self) -> int:
        """Requests queued or in service."""
        return (
            len(self.waiting)
            + len(self.lagged)
            + len(self.prefilling)
            + len(self.off)
            + len(self.incoming)
        )

    @property
    def mid_iteration(self) -> bool:
        """True while an iteration with prefill tokens is in flight (it cannot be cut)."""
        return self._mixed is not None

    @property
    def kv_used_blocks(self) -> int:
        """KV pages in use now (decode group, prefill chunks, pinned and held blocks)."""
        return self.blocks.blocks_at(self.G) + self.fixed_blocks

    @property
    def kv_used_estimate(self) -> float:
        """KV pages in use now, in O(1): each sequence's last page counted half full (routers
        and controllers poll this; the exact count is `kv_used_blocks`)."""
        n = len(self.off)
        bs = self.cfg.block_size
        return (self.off_sum + n * self.G) / bs + 0.5 * n + self.fixed_blocks

    def enqueue(self, rid: int, t: float) -> list[int]:
        """Accept a request at time t; returns requests that finished while catching up."""
        tab = self.table
        self.outstanding_tokens += tab.prompt_tokens[rid] + tab.output_tokens[rid]
        self.queued_tokens += tab.prompt_tokens[rid]
        tab.replica[rid] = self.index
        if self.next_t == INF:  # idle: start now
            self.waiting.append(rid)
            self.now = max(self.now, t)
            self._schedule()
            return []
        if self.cfg.overlap:
            # The pass that planned the next iteration ran when this one started: the request
            # waits for the pass after it, at the next boundary.
            self.lagged.append((t, rid))
            if self._seg is not None and len(self.off) + len(self.prefilling) < (
                self.cfg.max_num_seqs
            ):
                return self._cut(t, extra=1)
            return []
        self.waiting.append(rid)
        if self._seg is not None:
            if len(self.off) + len(self.prefilling) < self.cfg.max_num_seqs:
                return self._cut(t)
            if self.ps is not None and self.ps.preempts:
                return self._cut(t)  # it may preempt someone at the next step
            return []
        if self._mixed is not None and self.ps is not None and self.ps.policy.prefill_preemption:
            self._maybe_interrupt(rid, t)
        return []

    def attach(
        self,
        rid: int,
        t: float,
        cached: int,
        t_token: float,
        reserved: int = 0,
        counted: bool = False,
        in_order: bool = False,
    ) -> list[int]:
        """Take over a running request whose KV cache (`cached` tokens) has arrived at time t;
        `reserved` blocks were set aside for it by `reserve`; `counted` when its load was
        already added to the router signal; `in_order` when it takes its place among the running
        requests by arrival time (a migrated request: the order that picks preemption victims)
        rather than joining last. Returns finished rids."""
        tab = self.table
        self.incoming.append((rid, cached, t_token, reserved, in_order))
        if not counted:
            load = tab.output_tokens[rid] - tab.generated[rid]
            self.attached_load[rid] = load
            self.outstanding_tokens += load
        tab.replica[rid] = self.index
        if self.next_t == INF:
            self.now = max(self.now, t)
            self._schedule()
            return []
        if self._seg is not None:
            return self._cut(t)
        return []

    def free_blocks(self) -> int:
        """Blocks that can be promised now without disturbing the work in flight."""
        free = self.kv_blocks - self.fixed_blocks
        if self.off:
            seg = self._seg
            free -= self.blocks.blocks_at(self.G + (seg[1] if seg is not None else 1))
        return free

    def has_room(self, blocks: int) -> bool:
        """Whether `free_blocks() >= blocks`, with a cheap upper bound tried first."""
        free = self.kv_blocks - self.fixed_blocks - blocks
        n = len(self.off)
        if not n:
            return free >= 0
        seg = self._seg
        g = self.G + (seg[1] if seg is not None else 1)
        bs = self.cfg.block_size
        if (self.off_sum + n * (g + bs - 1)) // bs <= free:  # Σ ceil(x/bs) ≤ (Σx + n(bs−1))/bs
            return True
        return self.blocks.blocks_at(g) <= free

    def reserve(self, blocks: int) -> None:
        """Set blocks aside for a request that will arrive by `attach`."""
        self.fixed_blocks += blocks

    def unreserve(self, blocks: int) -> None:
        """Give back blocks set aside with `reserve`."""
        self.fixed_blocks -= blocks

    def release(self, rid: int, t: float) -> None:
        """Prefill role: the request's KV has left; free its blocks (and pins) at time t."""
        self.fixed_blocks -= self.held.pop(rid)
        if self.pins:
            self._unpin(rid)
        tab = self.table
        self.outstanding_tokens -= tab.prompt_tokens[rid] + tab.output_tokens[rid]
        if self.next_t == INF and (self.waiting or self.prefilling):
            self.now = max(self.now, t)  # freed blocks may let a prompt (or its next chunk) in
            self._schedule()
        else:  # the time series sees the blocks go now (a partner may take them at once)
            n_run = len(self.off)
            self.samples.extend(
                (
                    max(self.now, t),
                    n_run + len(self.prefilling),
                    self.off_sum + n_run * self.G + self.fixed_blocks * self.cfg.block_size,
                )
            )

    def kick(self, t: float) -> None:
        """Reconsider the queue at time t if idle (blocks may have been freed elsewhere)."""
        if self.next_t == INF:
            self.now = max(self.now, t)
            self._schedule()

    def give_way(self) -> bool:
        """Idle and holding partial prefills that cannot go on: send the most recently admitted
        one (not an interrupted one) back to the queue, to be recomputed, so that a partner
        lane sharing the cache gets its blocks. False if there is none to preempt."""
        pre = self.prefilling
        if self.next_t != INF:
            return False
        for i in range(len(pre) - 1, -1, -1):
            rid, _, _, blocks, _ = pre[i]
            if rid in self.suspended_rids:
                continue
            del pre[i]
            self.fixed_blocks -= blocks
            if self.pins:
                self._unpin(rid)
            self.table.preemptions[rid] += 1
            self.waiting.appendleft(rid)
            self.queued_tokens += self._recompute_tokens(rid)
            return True
        return False

    def detach(self, rid: int, t: float) -> tuple[list[int], int, float]:
        """Stop a decoding request at the first step boundary at or after t and remove it
        (live migration); returns (finished rids, its cached tokens, boundary time). The
        tokens are -1 if it is no longer decoding here, and -2 if an iteration with prefill
        tokens is in flight: it then leaves when that iteration ends, listed in `left`."""
        if rid not in self.off:
            return [], -1, self.now
        if self._mixed is not None:
            self.leaving[rid] = None
            return [], -2, self.now
        done = self._stop_at(t)
        cached = self._drop(rid) if rid in self.off else -1
        boundary = self.now
        self._schedule()
        return done, cached, boundary

    def _drop(self, rid: int) -> int:
        """Remove a decoding request that moves away; returns its cached tokens."""
        cached = self._leave(rid)
        if self.pins:
            self._unpin(rid)
        tab = self.table
        tab.generated[rid] = cached - tab.prompt_tokens[rid] + 1  # the group tracks it by G
        self.outstanding_tokens -= self._load_of(rid)
        return cached

    def set_predictor(self, pred: Predictor, t: float) -> list[int]:
        """Price work from time t with another predictor (a semi-PD lane got a new share): a
        decode stretch in flight stops at its next step boundary; an iteration with prefill
        tokens finishes at the old speed. Returns finished rids."""
        self._step_costs = pred.decode_step_costs
        if self._seg is None:
            self.pred = pred
            return []
        done = self._stop_at(t)
        self.pred = pred
        self._schedule()
        return done

    def advance(self) -> list[int]:
        """Finish the work in flight at `next_t` and start the next; returns finished rids."""
        done: list[int] = []
        if self._mixed is not None:
            self._commit_mixed(done)
        else:
            seg = self._seg
            if seg is not None:
                self._seg = None
                self._commit_decode(seg, seg[1], self.next_t, done)
        if self.leaving:
            for rid in self.leaving:
                self.left.append((rid, self._drop(rid) if rid in self.off else -1, self.now))
            self.leaving.clear()
        self._schedule()
        return done

    # ---- decode group bookkeeping --------------------------------------------------------
    def _join(self, rid: int, cached: int, t_token: float, shared: int = 0) -> None:
        """Move a request whose prefill finished into the decode group."""
        tab = self.table
        off = cached - shared - self.G
        self.off[rid] = off
        self.off_sum += off
        self.blocks.add(off)
        if shared:
            self.shared[rid] = shared
            self.shared_sum += shared
        self.join_seq = seq = self.join_seq + 1
        self.joined[rid] = seq
        heapq.heappush(
            self.finish_heap, (self.G + tab.output_tokens[rid] - tab.generated[rid], seq, rid)
        )
        self.join_order.append(rid)
        if self.fresh and self.fresh[-1][0] == t_token:
            self.fresh[-1] = (t_token, self.fresh[-1][1] + 1)
        else:
            self.fresh.append((t_token, 1))
        self.fresh_n += 1

    def _leave(self, rid: int) -> int:
        """Remove a request from the decode group; returns its cached tokens."""
        off = self.off.pop(rid)
        del self.joined[rid]
        self.off_sum -= off
        self.blocks.remove(off)
        if self.shared:
            s = self.shared.pop(rid, 0)
            self.shared_sum -= s
            return off + self.G + s
        return off + self.G

    def _decode_gaps(self, end: float) -> None:
        """Record the first decode gap of every running request after a pause or a join."""
        n = len(self.off)
        itl = self.itl
        if not self.fresh_n:
            itl.add(end - self.last_decode_end, n)
            return
        old = n - self.fresh_n
        if old > 0:
            itl.add(end - self.last_decode_end, old)
        for t_tok, count in self.fresh:
            itl.add(end - t_tok, count)
        self.fresh.clear()
        self.fresh_n = 0

    def _pop_finished(self, end: float, done: list[int]) -> None:
        heap, tab, joined = self.finish_heap, self.table, self.joined
        g = self.G
        while heap and heap[0][0] <= g:
            _, seq, rid = heapq.heappop(heap)
            if joined.get(rid) != seq:
                continue  # of a stay that ended in a preemption or migration: stale
            # The tokens the group's steps made (the conservation check compares them with
            # the request's output length: a finish out of step shows there).
            tab.generated[rid] = self._leave(rid) - tab.prompt_tokens[rid] + 1
            if self.pins:
                self._unpin(rid)
            out = tab.output_tokens[rid]
            tab.finish_s[rid] = end
            if self.attached_load:
                self.outstanding_tokens -= self._load_of(rid)
            else:
                self.outstanding_tokens -= tab.prompt_tokens[rid] + out
            done.append(rid)

    def _load_of(self, rid: int) -> int:
        """The tokens a request that leaves or finishes here added to `outstanding_tokens`:
        what was left of it when it was attached, else its prompt and output."""
        if self.attached_load and rid in self.attached_load:
            return self.attached_load.pop(rid)
        return int(self.table.prompt_tokens[rid] + self.table.output_tokens[rid])

    def head_tokens(self) -> int:
        """Tokens the head-of-line queued request needs (call only with a queue)."""
        return self._recompute_tokens(self.waiting[0])

    def _recompute_tokens(self, rid: int) -> int:
        """Tokens a queued request prefills when admitted: its prompt, plus the tokens it had
        generated before a preemption (vLLM recomputes them all, the last one included, and
        samples the next: the cache then holds prompt + generated − 1 tokens, as when it
        decodes)."""
        return self.table.prompt_tokens[rid] + self.table.generated[rid]

    def _preempt_one(self) -> bool:
        """Preempt a running request (vLLM: the most recently admitted; else the policy's
        least urgent) to free blocks."""
        if self.ps is not None:
            return self._preempt_victim(None) is not None
        order, off, tab = self.join_order, self.off, self.table
        while order:
            rid = order.pop()
            if rid in off:
                cached = self._leave(rid)
                if self.pins:
                    self._unpin(rid)
                tab.generated[rid] = cached - tab.prompt_tokens[rid] + 1
                tab.preemptions[rid] += 1
                self.waiting.appendleft(rid)
                self.queued_tokens += cached + 1  # `_recompute_tokens`: prompt + generated
                return True
        if self.prefilling:
            rid, _, _, blocks, _ = self.prefilling.pop()
            self.fixed_blocks -= blocks
            if self.pins:
                self._unpin(rid)
            tab.preemptions[rid] += 1
            self.waiting.appendleft(rid)
            self.queued_tokens += self._recompute_tokens(rid)
            return True
        return False

    # ---- prefix cache --------------------------------------------------------------------
    def _prefix_lookup(self, rid: int, target: int, free: int) -> tuple[int, int]:
        """Leading cached hash blocks usable by a prompt of `target` tokens, after evicting
        what no longer fits in `free` blocks; returns (blocks matched, pages to pin)."""
        pc = self.prefix
        pc.evict_to(max(0, free))
        return pc.lookup(self.hashes[rid], (target - 1) // pc.block_tokens)  # compute ≥ 1 token

    def _pin(self, rid: int, k: int, target: int) -> None:
        pc = self.prefix
        self.fixed_blocks += pc.acquire(self.hashes[rid][:k])
        self.pins[rid] = k
        tab = self.table
        if tab.scheduled_s[rid] < 0:  # count each prompt once, at its first admission
            pc.lookup_tokens += tab.prompt_tokens[rid]
            pc.hit_tokens += k * pc.block_tokens
            tab.cached_tokens[rid] = k * pc.block_tokens

    def _unpin(self, rid: int) -> None:
        k = self.pins.pop(rid, 0)
        if k:
            self.fixed_blocks -= self.prefix.release(self.hashes[rid][:k])

    def _prefix_insert(self, rid: int, shared: int, target: int) -> int:
        """Cache the full prompt blocks a finished prefill computed; returns the prefix tokens
        it now reads from pinned blocks (its private blocks shrink by as much)."""
        pc = self.prefix
        k = self.pins.get(rid, 0)
        full = min(len(self.hashes[rid]), self.table.prompt_tokens[rid] // pc.block_tokens)
        if full <= k:
            return shared
        added = pc.insert(self.hashes[rid][k:full])
        if not added:
            return shared
        self.pins[rid] = k + added
        self.fixed_blocks += added * pc.entry_blocks
        return (k + added) * pc.block_tokens

    # ---- scheduling ----------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start the next iteration or decode stretch at `self.now`, or go idle."""
        cfg = self.cfg
        if self.lagged:
            self._release_lagged()
        if self.incoming:
            self._admit_incoming()
        n_run = len(self.off)
        n_pre = len(self.prefilling)
        self.samples.extend(
            (
                self.now,
                n_run + n_pre,
                self.off_sum + n_run * self.G + self.fixed_blocks * cfg.block_size,
            )
        )
        if self.ps is not None:
            self._schedule_policy(n_run, n_pre)
            return
        if (n_pre or (self.waiting and n_run + n_pre < cfg.max_num_seqs)) and self._start_mixed():
            return
        if self.off:  # (`_start_mixed` may have preempted every decode to make room)
            self._start_decode()
            return
        if self.waiting and not self.prefilling:
            self._cannot_fit()
        self.next_t = INF

    def _release_lagged(self) -> None:
        """Overlap scheduling: arrivals that came before the iteration just ended started are
        seen by this pass; with nothing running, the engine's loop sees every arrival."""
        lagged, waiting = self.lagged, self.waiting
        if not (self.off or self.prefilling or waiting or self.incoming):
            while lagged:
                waiting.append(lagged.popleft()[1])
            return
        start = self.iter_start
        while lagged and lagged[0][0] <= start:
            waiting.append(lagged.popleft()[1])

    def _cannot_fit(self) -> None:
        if self.fixed_blocks or self.incoming or self.held or self.kv_blocks < self.cfg.kv_blocks:
            return  # blocks held for transfers, reservations or a partner lane come back
        rid = self.waiting[0]
        raise RuntimeError(
            f"request {rid} needs more KV blocks than the replica has "
            f"({self.kv_blocks}); the workload exceeds the cache"
        )

    def _admit_incoming(self) -> None:
        """Join requests whose KV arrived (disaggregation, migration) at this step boundary."""
        while self.incoming:
            rid, cached, t_tok, reserved, in_order = self.incoming.popleft()
            self.fixed_blocks -= reserved
            self._join(rid, cached, t_tok)
            if in_order:
                self._place_by_arrival(rid)

    def _place_by_arrival(self, rid: int) -> None:
        """Move a request that just joined (last in `join_order`) behind the last running
        request that arrived before it, so it is preempted in its arrival order."""
        order, off = self.join_order, self.off
        arrival = self.table.arrival_s
        t = arrival[rid]
        i = len(order) - 1
        while i > 0 and (order[i - 1] not in off or arrival[order[i - 1]] > t):
            i -= 1
        if i < len(order) - 1:
            order.pop()
            order.insert(i, rid)

    def _reserve_decode_blocks(self, slack: int) -> int:
        """Preempt until the decode group's next step fits; returns blocks it will hold.

        When an upper bound on the group's blocks leaves `slack` blocks free, the bound is
        returned without the exact count: no admission decision can depend on the difference.
        """
        cap = self.kv_blocks
        n, bs = len(self.off), self.cfg.block_size
        upper = (self.off_sum + n * (self.G + bs)) // bs
        if upper + self.fixed_blocks + slack <= cap:
            return upper
        while self.off:
            need = self.blocks.blocks_at(self.G + 1)
            if need + self.fixed_blocks <= cap:
                return need
            self._preempt_one()
        return 0

    def _start_mixed(self) -> bool:
        """Form an iteration with prefill tokens (and decodes when mixing); False if none fit."""
        cfg = self.cfg
        bs = cfg.block_size
        off = self.off
        prefilling = self.prefilling
        budget = cfg.max_num_batched_tokens
        if cfg.mixed_batches:
            n_dec = len(off)
            if n_dec:
                slack = budget // bs + len(prefilling) + 2
                free = self.kv_blocks - self._reserve_decode_blocks(slack) - self.fixed_blocks
                n_dec = len(off)  # reserving may have preempted some
            else:
                free = self.kv_blocks - self.fixed_blocks
            budget -= n_dec
        else:
            n_dec = 0
            held = self.blocks.blocks_at(self.G + 1) if off else 0
            free = self.kv_blocks - held - self.fixed_blocks
        chunks: list[tuple[list[int], int]] = []  # (prefilling entry, new tokens)
        shapes: list[tuple[int, int]] = []
        new_blocks = 0
        for entry in prefilling:
            if budget <= 0:
                break
            done, held = entry[1], entry[3]
            n, extra = _chunk_fit(entry, budget, free, bs)
            if n <= 0:
                continue
            free -= extra
            budget -= n
            entry[3] = held + extra
            new_blocks += extra
            chunks.append((entry, n))
            shapes.append((n, done))
        waiting = self.waiting
        if waiting and self.prefix is not None:
            budget, new_blocks = self._admit_with_prefix(budget, free, new_blocks, chunks, shapes)
        elif waiting:
            tab = self.table
            seqs = len(off) + len(prefilling)  # decoding requests hold slots in every engine
            while waiting and budget > 0 and seqs < cfg.max_num_seqs:
                rid = waiting[0]
                target = tab.prompt_tokens[rid] + tab.generated[rid]
                if target > budget and not cfg.chunked_prefill:
                    break
                n = target if target < budget else budget
                need = -(-n // bs)
                if need > free:
                    break
                waiting.popleft()
                self.queued_tokens -= target
                if tab.scheduled_s[rid] < 0:
                    tab.scheduled_s[rid] = self.now
                free -= need
                budget -= n
                new_blocks += need
                entry = [rid, 0, target, need, 0]
                chunks.append((entry, n))
                prefilling.append(entry)
                shapes.append((n, 0))
                seqs += 1
        if not chunks:
            return False
        self.fixed_blocks += new_blocks
        context = (self.off_sum + n_dec * (self.G + 1) + self.shared_sum) if n_dec else 0
        dt = self.pred.step_s(n_dec, context, shapes)
        # Busy work of the iteration, priced in bulk at the end (`total_work_s`).
        self.mixed_shapes.append(
            (cfg.max_num_batched_tokens - budget) << 20 | (n_dec + len(chunks))
        )
        if self.stall_s:
            dt += self.stall_s
            self.stall_s = 0.0
        self._mixed = (self.now, dt, n_dec, chunks)
        self.next_t = self.now + dt
        return True

    def _admit_with_prefix(
        self,
        budget: int,
        free: int,
        new_blocks: int,
        chunks: list[tuple[list[int], int]],
        shapes: list[tuple[int, int]],
    ) -> tuple[int, int]:
        """`_start_mixed`'s FCFS admission when a prefix cache serves leading prompt blocks:
        a prompt's cached blocks are pinned and only the rest is computed, attending to them.
        Returns the token budget and the new blocks left after admitting."""
        cfg, tab, prefix, waiting = self.cfg, self.table, self.prefix, self.waiting
        bs = cfg.block_size
        seqs = len(self.off) + len(self.prefilling)
        while waiting and budget > 0 and seqs < cfg.max_num_seqs:
            rid = waiting[0]
            target = tab.prompt_tokens[rid] + tab.generated[rid]
            k, pin = self._prefix_lookup(rid, target, free)
            shared = k * prefix.block_tokens
            todo = target - shared
            if todo > budget and not cfg.chunked_prefill:
                break
            n = todo if todo < budget else budget
            need = -(-n // bs)
            if need + pin > free:
                break
            waiting.popleft()
            self._pin(rid, k, target)
            free -= pin + need
            self.queued_tokens -= target
            if tab.scheduled_s[rid] < 0:
                tab.scheduled_s[rid] = self.now
            budget -= n
            new_blocks += need
            entry = [rid, shared, target, need, shared]
            chunks.append((entry, n))
            self.prefilling.append(entry)
            shapes.append((n, shared))
            seqs += 1
        return budget, new_blocks

    def _commit_mixed(self, done: list[int]) -> None:
        t0, dt, n_dec, chunks = self._mixed
        self._mixed = None
        end = t0 + dt
        if self.lagged:
            self.iter_start = t0
        self.now = end
        self.busy_s += dt
        self.iterations += 1
        tab = self.table
        if n_dec:
            self._decode_gaps(end)
            self.G += 1
            self.last_decode_end = end
            self._pop_finished(end, done)
        finished = False
        for entry, n in chunks:
            entry[1] += n
            if entry[1] >= entry[2]:
                finished = True
        if not finished:
            return
        still: list[list[int]] = []
        for entry in self.prefilling:
            if entry[1] < entry[2]:
                still.append(entry)
                continue
            rid, _, target, held, shared = entry
            self.attn_pairs += 0.5 * (target * (target + 1.0) - shared * (shared + 1.0))
            if self.prefix is not None:
                shared = self._prefix_insert(rid, shared, target)
                private = -(-(target - shared) // self.cfg.block_size)
                self.fixed_blocks += private - held  # computed prompt blocks are now shared
                held = private
            if tab.first_token_s[rid] < 0:
                tab.first_token_s[rid] = end
            tab.generated[rid] += 1
            if tab.generated[rid] >= tab.output_tokens[rid]:
                self.fixed_blocks -= held
                if self.pins:
                    self._unpin(rid)
                tab.finish_s[rid] = end
                self.outstanding_tokens -= self._load_of(rid)
                done.append(rid)
            elif self.hands_off:
                self.held[rid] = held
                self.handoff.append(rid)
            else:
                self.fixed_blocks -= held
                self._join(rid, target, end, shared)
        self.prefilling = still

    def _start_decode(self) -> None:
        """Start a stretch of decode-only steps up to the next finish or cache limit."""
        heap, off, joined = self.finish_heap, self.off, self.joined
        while joined.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # stale entries of preempted or migrated requests
        g = self.G
        k = heap[0][0] - g
        n = len(off)
        cap = self.kv_blocks - self.fixed_blocks
        bs = self.cfg.block_size
        # Σ ceil(x/bs) ≤ (Σx + n(bs−1))/bs: when even that bound fits, skip the exact count.
        if (self.off_sum + n * (g + k + bs - 1)) // bs > cap:
            while self.off and self.blocks.blocks_at(g + 1) > cap:
                self._preempt_one()
                cap = self.kv_blocks - self.fixed_blocks
            n = len(off)
            if not n:
                self._schedule()
                return
            while joined.get(heap[0][2]) != heap[0][1]:
                heapq.heappop(heap)
            k = self.blocks.steps_that_fit(g, cap, heap[0][0] - g)
        if self.lagged:
            k = 1  # the next pass admits what arrived during this step's predecessor
        c0, c1, w0, _ = self._step_costs(n)
        # Step j (0-based) attends to off_sum + n(g + 1 + j) tokens: it lasts step0 + j·slope.
        step0 = c0 + c1 * (self.off_sum + n * (g + 1) + self.shared_sum)
        slope = c1 * n
        t0 = self.now
        if self.stall_s:
            t0 += self.stall_s
            self.busy_s += self.stall_s
            self.stall_s = 0.0
        self._seg = (t0, k, step0, slope, w0)
        self.next_t = t0 + k * step0 + slope * k * (k - 1) * 0.5

    def _boundary(self, seg: tuple, t: float) -> int:
        """Smallest step count j ≥ 1 of a stretch whose end is at or after t (at most k)."""
        t0, k, step0, slope = seg[0], seg[1], seg[2], seg[3]
        dt = t - t0
        # Smallest j ≥ 1 with T(j) = j·step0 + slope·j(j−1)/2 ≥ dt.
        if slope > 0:
            b = step0 - 0.5 * slope
            j = math.ceil((-b + math.sqrt(b * b + 2.0 * slope * max(dt, 0.0))) / slope)
        else:
            j = math.ceil(dt / step0) if step0 > 0 else 1
        j = max(1, min(k, j))
        while j > 1 and (j - 1) * step0 + slope * (j - 1) * (j - 2) * 0.5 >= dt:
            j -= 1
        while j < k and j * step0 + slope * j * (j - 1) * 0.5 < dt:
            j += 1
        return j

    def _cut(self, t: float, extra: int = 0) -> list[int]:
        """Stop the decode stretch at the first step boundary at or after t (`extra` steps
        later)."""
        seg = self._seg
        t0, k, step0, slope = seg[0], seg[1], seg[2], seg[3]
        j = self._boundary(seg, t) + extra
        if j >= k:
            return []  # the stretch ends at or before the next boundary anyway
        self._seg = None
        done: list[int] = []
        self._commit_decode(seg, j, t0 + j * step0 + slope * j * (j - 1) * 0.5, done)
        self._schedule()
        return done

    def _stop_at(self, t: float) -> list[int]:
        """Commit the decode stretch up to the first boundary at or after t and leave nothing
        in flight (the caller changes the group, then calls `_schedule`)."""
        done: list[int] = []
        seg = self._seg
        if seg is None:
            self.now = max(self.now, t)
            self.next_t = INF
            return done
        self._seg = None
        j = self._boundary(seg, t)
        t0, step0, slope = seg[0], seg[2], seg[3]
        self._commit_decode(seg, j, t0 + j * step0 + slope * j * (j - 1) * 0.5, done)
        self.next_t = INF
        return done

    def _commit_decode(self, seg: tuple, k: int, end: float, done: list[int]) -> None:
        """Account for the first k decode steps of a stretch, ending at `end`."""
        t0, _, step0, slope, w0 = seg
        n = len(self.off)
        itl = self.itl
        if self.lagged:  # only the overlap pass reads it
            self.iter_start = t0 + (k - 1) * step0 + slope * (k - 1) * (k - 2) * 0.5
        if self.fresh_n:
            self._decode_gaps(t0 + step0)
        else:
            itl.add(t0 + step0 - self.last_decode_end, n)
        if k > 1:
            itl.add_ramp(step0 + slope, step0 + slope * (k - 1), k - 1, n)
        self.busy_s += end - t0
        self.work_s += k * w0  # dense work; the KV reads are priced from the table at the end
        self.iterations += k
        self.G = g = self.G + k
        self.now = end
        self.last_decode_end = end
        heap = self.finish_heap
        if heap and heap[0][0] <= g:
            self._pop_finished(end, done)

    # ---- the policy path ----------------------------------------------------------------
    def _schedule_policy(self, n_run: int, n_pre: int) -> None:
        """`_schedule` under a non-default policy: resume, swap in, then as the default."""
        if self.suspended and self._resume_suspended():
            return
        if self.swapped and self.waiting:
            self._swap_in()
            n_run = len(self.off)
        runnable = n_pre - len(self.suspended_rids)
        if (runnable or (self.waiting and n_run + n_pre < self.cfg.max_num_seqs)) and (
            self._start_mixed_policy()
        ):
            return
        if self.off:
            self._start_decode()
            return
        if self.suspended:
            self._resume_suspended(force=True)
            return
        if self.waiting and not self.prefilling and not self.swapped:
            self._cannot_fit()
        self.next_t = INF

    def _sync_generated(self) -> None:
        """Write the decode group's progress (kept implicitly by the step counter) into the
        table, so policy keys see how many tokens each running request has produced."""
        tab, g = self.table, self.G
        shared = self.shared
        prompts, gen = tab.prompt_tokens, tab.generated
        for rid, off in self.off.items():
            gen[rid] = off + g + (shared.get(rid, 0) if shared else 0) - prompts[rid] + 1

    def _victim(self, exclude: set[int]) -> tuple[Any, int, list[int] | None] | None:
        """The running request that gives way first: (key, rid, prefilling entry or None)."""
        self._sync_generated()
        key = self.ps.run_key
        best = None
        for rid in self.off:
            k = key(rid)
            if best is None or k > best[0]:
                best = (k, rid, None)
        for entry in self.prefilling:
            rid = entry[0]
            if rid in exclude or rid in self.suspended_rids:
                continue
            k = key(rid)
            if best is None or k > best[0]:
                best = (k, rid, entry)
        return best

    def _preempt_victim(self, than: Any, exclude: set[int] | None = None) -> int | None:
        """Preempt the least urgent running request (only if less urgent than `than`, when
        given); recompute or swap per the policy. Returns its rid, or None."""
        ps = self.ps
        found = self._victim(exclude or set())
        if found is None:
            return None
        key, rid, entry = found
        if than is not None and not ps.outranks(than, key, rid, self.now):
            return None
        tab = self.table
        tab.preemptions[rid] += 1
        if entry is not None:
            self.prefilling.remove(entry)
            self.fixed_blocks -= entry[3]
            if self.pins:
                self._unpin(rid)
        else:
            last_token = self.last_decode_end
            cached = self._leave(rid)
            if self.pins:
                self._unpin(rid)
            tab.generated[rid] = cached - tab.prompt_tokens[rid] + 1
            if ps.policy.preemption == "swap":
                blocks = -(-cached // self.cfg.block_size)
                cost = ps.swap_seconds(blocks, self.cfg.block_size)
                self.stall_s += cost
                ps.swaps += 1
                ps.swap_s += cost
                self.swapped[rid] = (cached, last_token)
        self.waiting.appendleft(rid)
        self.queued_tokens += self._recompute_tokens(rid)
        return rid

    def _swap_in(self) -> None:
        """Bring swapped requests at the head of the queue back while their blocks fit."""
        waiting, bs = self.waiting, self.cfg.block_size
        while waiting and waiting[0] in self.swapped:
            rid = waiting[0]
            cached, t_last = self.swapped[rid]
            need = -(-cached // bs)
            # Room for the group's next step and a block of headroom per sequence; with
            # nothing decoding, room for its own next token is enough (else a tight cache
            # would keep it out for ever).
            held = self.blocks.blocks_at(self.G + 1) if self.off else 0
            if need + held + self.fixed_blocks + len(self.off) + 1 > self.kv_blocks and (
                self.off or -(-(cached + 1) // bs) + self.fixed_blocks > self.kv_blocks
            ):
                return
            if len(self.off) + len(self.prefilling) >= self.cfg.max_num_seqs:
                return
            waiting.popleft()
            self.queued_tokens -= self._recompute_tokens(rid)
            del self.swapped[rid]
            cost = self.ps.swap_seconds(need, bs)
            self.stall_s += cost
            self.ps.swap_s += cost
            self._join(rid, cached, t_last)

    def _start_mixed_policy(self) -> bool:
        """`_start_mixed` with the policy's order, class batching and preemption."""
        cfg, ps = self.cfg, self.ps
        bs = cfg.block_size
        off = self.off
        budget = cfg.max_num_batched_tokens
        classes = ps.policy.name == "laps" or ps.policy.prefill_preemption
        batch_class = ps.batch_class
        preempts = ps.preempts
        if cfg.mixed_batches and off:
            self._reserve_decode_blocks(budget // bs + len(self.prefilling) + 2)
        new_blocks = 0
        chosen: set[int] = set()

        def free_now() -> int:
            held = self.blocks.blocks_at(self.G + 1) if off else 0
            return self.kv_blocks - held - self.fixed_blocks - new_blocks

        def n_dec_now() -> int:
            return len(off) if cfg.mixed_batches else 0

        run_key = ps.run_key
        pre = sorted(
            (
                (run_key(e[0]), i, e)
                for i, e in enumerate(self.prefilling)
                if e[0] not in self.suspended_rids
            ),
        )
        pi = 0
        klass = None
        chunks: list[tuple[list[int], int]] = []
        shapes: list[tuple[int, int]] = []
        waiting, tab, prefix = self.waiting, self.table, self.prefix
        # Once the head of the queue cannot start, the partial prefills still take their
        # turn (else a head waiting for a free sequence slot would stall the very prefills
        # that would free one).
        blocked = False
        while True:
            left = budget - n_dec_now() - sum(n for _, n in chunks)
            if left <= 0:
                break
            if pi < len(pre) and (blocked or not waiting or pre[pi][0] <= waiting.head_key()):
                _, _, entry = pre[pi]
                pi += 1
                if entry[0] in chosen or entry not in self.prefilling:
                    continue
                if classes and klass is not None and batch_class(entry[0]) != klass:
                    continue
                done, held = entry[1], entry[3]
                n, extra = _chunk_fit(entry, left, free_now(), bs)
                if n <= 0:
                    continue
                entry[3] = held + extra
                new_blocks += extra
                chosen.add(entry[0])
                chunks.append((entry, n))
                shapes.append((n, done))
                klass = batch_class(entry[0]) if classes else klass
                continue
            if blocked or not waiting:
                break
            rid = waiting[0]
            if rid in self.swapped:  # waits for its blocks in `_swap_in`
                blocked = True
                continue
            if classes and klass is not None and batch_class(rid) != klass:
                blocked = True
                continue
            if len(off) + len(self.prefilling) >= cfg.max_num_seqs:
                if not (preempts and self._preempt_victim(waiting.head_key(), chosen) is not None):
                    blocked = True
                continue
            target = tab.prompt_tokens[rid] + tab.generated[rid]
            free = free_now()
            shared = k = pin = 0
            if prefix is not None:
                k, pin = self._prefix_lookup(rid, target, free)
                shared = k * prefix.block_tokens
            todo = target - shared
            if todo > left and not cfg.chunked_prefill:
                blocked = True
                continue
            n = min(todo, left)
            need = -(-n // bs)
            # A new prompt starts only if its whole prefill fits beside what the partial
            # prefills hold and still need: this order, unlike FCFS's, lets a newcomer pass the
            # prompts already started, and an urgent newcomer taking every chunk's budget and an
            # older prompt holding the blocks it needs would wait for each other for ever.
            for e in self.prefilling:
                free -= max(0, -(-(e[2] - e[4]) // bs) - e[3])
            if -(-todo // bs) + pin > free:
                if not (preempts and self._preempt_victim(waiting.head_key(), chosen) is not None):
                    blocked = True
                continue
            waiting.popleft()
            if prefix is not None:
                self._pin(rid, k, target)
            self.queued_tokens -= target
            if tab.scheduled_s[rid] < 0:
                tab.scheduled_s[rid] = self.now
            new_blocks += need
            entry = [rid, shared, target, need, shared]
            self.prefilling.append(entry)
            chosen.add(rid)
            chunks.append((entry, n))
            shapes.append((n, shared))
            klass = batch_class(rid) if classes else klass
        if not chunks:
            return False
        self.fixed_blocks += new_blocks
        n_dec = n_dec_now()
        context = (self.off_sum + n_dec * (self.G + 1) + self.shared_sum) if n_dec else 0
        dt = self.pred.step_s(n_dec, context, shapes) + self.stall_s
        self.stall_s = 0.0
        tokens = n_dec + sum(n for _, n in chunks)
        self.mixed_shapes.append(tokens << 20 | (n_dec + len(chunks)))
        self._mixed = (self.now, dt, n_dec, chunks)
        self.next_t = self.now + dt
        return True

    def _maybe_interrupt(self, rid: int, t: float) -> None:
        """FlowPrefill: a more urgent arrival stops a prefill-only iteration at the next
        operator boundary; the stopped batch keeps its progress and resumes later."""
        t0, dt, n_dec, chunks = self._mixed
        if n_dec or t >= t0 + dt:
            return
        ps = self.ps
        running = min(ps.run_key(entry[0]) for entry, _ in chunks)
        if not ps.key(rid) < running:
            return
        ops = self.pred.layers_per_stage * self.pp * ps.policy.operators_per_layer
        g = dt / ops
        t_b = t0 + math.ceil(max(0.0, t - t0) / g) * g
        if t_b >= t0 + dt - 1e-12:
            return
        self.busy_s += t_b - t0
        self.suspended.append((t0 + dt - t_b, chunks, running))
        for entry, _ in chunks:
            self.suspended_rids.add(entry[0])
        self.interrupts += 1
        self._mixed = None
        self.now = t_b
        self.next_t = INF
        self._schedule()

    def _resume_suspended(self, force: bool = False) -> bool:
        """Resume the most recently interrupted prefill batch unless something more urgent
        waits."""
        remaining, chunks, key = self.suspended[-1]
        if not force and self.waiting and self.waiting.head_key() < key:
            return False
        self.suspended.pop()
        for entry, _ in chunks:
            self.suspended_rids.discard(entry[0])
        self._mixed = (self.now, remaining, 0, chunks)
        self.next_t = self.now + remaining
        return True
