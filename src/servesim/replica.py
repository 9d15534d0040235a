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
either prefills or decodes, prefills first.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

from servesim.kvcache import DecodeBlocks
from servesim.metrics import ItlHistogram, RequestTable
from servesim.predictor import Predictor

INF = math.inf


@dataclass(frozen=True)
class ReplicaConfig:
    """Batching limits and cache size of one replica (or one pipeline virtual engine)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    mixed_batches: bool = True
    block_size: int = 16
    kv_blocks: int = 10_000


class Replica:
    """Continuous-batching engine state and its event-skipping step loop."""

    def __init__(
        self,
        index: int,
        predictor: Predictor,
        cfg: ReplicaConfig,
        table: RequestTable,
        itl: ItlHistogram,
    ) -> None:
        self.index = index
        self.pred = predictor
        self.cfg = cfg
        self.table = table
        self.itl = itl
        self.pp = predictor.par.pp
        self.waiting: deque[int] = deque()
        self.prefilling: list[list[int]] = []  # [rid, done_tokens, target_tokens, blocks]
        self.prefill_blocks = 0
        # Lock-step decode group, stored as offsets from the step counter G.
        self.G = 0
        self.off: dict[int, int] = {}  # rid -> cached tokens minus G
        self.finish_heap: list[tuple[int, int, int]] = []  # (finish G, join order, rid)
        self.join_order: list[int] = []  # rids in admission order (for preemption)
        self.join_seq = 0
        self.off_sum = 0
        self.blocks = DecodeBlocks(cfg.block_size)
        # (first-token time, count) of requests that joined since the last decode step
        self.fresh: list[tuple[float, int]] = []
        self.fresh_n = 0
        self.last_decode_end = 0.0
        # Work in flight
        self.now = 0.0
        self.next_t = INF
        self._mixed: tuple | None = None
        self._seg: tuple | None = None
        # Observables
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.iterations = 0
        # Flat (time, sequences running, KV tokens held) triples, one per scheduling decision
        self.samples: list[float] = []
        self.outstanding_tokens = 0  # prompt + output tokens not yet served (router signal)

    # ---- public face for the cluster driver --------------------------------------------
    @property
    def num_requests(self) -> int:
        """Requests queued or in service."""
        return len(self.waiting) + len(self.prefilling) + len(self.off)

    def enqueue(self, rid: int, t: float) -> list[int]:
        """Accept a request at time t; returns requests that finished while catching up."""
        tab = self.table
        self.waiting.append(rid)
        self.outstanding_tokens += tab.prompt_tokens[rid] + tab.output_tokens[rid]
        tab.replica[rid] = self.index
        if self.next_t == INF:  # idle: start now
            self.now = max(self.now, t)
            self._schedule()
            return []
        if self._seg is not None and len(self.off) + len(self.prefilling) < self.cfg.max_num_seqs:
            return self._cut(t)
        return []

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
        self._schedule()
        return done

    # ---- decode group bookkeeping --------------------------------------------------------
    def _join(self, rid: int, cached: int, t_token: float) -> None:
        """Move a request whose prefill finished into the decode group."""
        tab = self.table
        off = cached - self.G
        self.off[rid] = off
        self.off_sum += off
        self.blocks.add(off)
        self.join_seq += 1
        heapq.heappush(
            self.finish_heap,
            (self.G + tab.output_tokens[rid] - tab.generated[rid], self.join_seq, rid),
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
        self.off_sum -= off
        self.blocks.remove(off)
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
        heap, tab, off = self.finish_heap, self.table, self.off
        g = self.G
        while heap and heap[0][0] <= g:
            _, _, rid = heapq.heappop(heap)
            if rid not in off:
                continue  # preempted earlier: stale entry
            self._leave(rid)
            tab.generated[rid] = tab.output_tokens[rid]
            tab.finish_s[rid] = end
            self.outstanding_tokens -= tab.prompt_tokens[rid] + tab.output_tokens[rid]
            done.append(rid)

    def _preempt_one(self) -> bool:
        """Preempt the most recently admitted running request (recompute later)."""
        order, off, tab = self.join_order, self.off, self.table
        while order:
            rid = order.pop()
            if rid in off:
                cached = self._leave(rid)
                tab.generated[rid] = cached - tab.prompt_tokens[rid] + 1
                tab.preemptions[rid] += 1
                self.waiting.appendleft(rid)
                return True
        if self.prefilling:
            rid, _, _, blocks = self.prefilling.pop()
            self.prefill_blocks -= blocks
            tab.preemptions[rid] += 1
            self.waiting.appendleft(rid)
            return True
        return False

    # ---- scheduling ----------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start the next iteration or decode stretch at `self.now`, or go idle."""
        cfg = self.cfg
        n_run = len(self.off)
        n_pre = len(self.prefilling)
        self.samples.extend(
            (
                self.now,
                n_run + n_pre,
                self.off_sum + n_run * self.G + self.prefill_blocks * cfg.block_size,
            )
        )
        if (n_pre or (self.waiting and n_run + n_pre < cfg.max_num_seqs)) and self._start_mixed():
            return
        if n_run:
            self._start_decode()
            return
        if self.waiting and not self.prefilling:
            # Nothing runs and the head of the queue cannot be admitted: it can never fit.
            rid = self.waiting[0]
            raise RuntimeError(
                f"request {rid} needs more KV blocks than the replica has "
                f"({self.cfg.kv_blocks}); the workload exceeds the cache"
            )
        self.next_t = INF

    def _reserve_decode_blocks(self, slack: int) -> int:
        """Preempt until the decode group's next step fits; returns blocks it will hold.

        When an upper bound on the group's blocks leaves `slack` blocks free, the bound is
        returned without the exact count: no admission decision can depend on the difference.
        """
        cap = self.cfg.kv_blocks
        n, bs = len(self.off), self.cfg.block_size
        upper = (self.off_sum + n * (self.G + bs)) // bs
        if upper + self.prefill_blocks + slack <= cap:
            return upper
        while self.off:
            need = self.blocks.blocks_at(self.G + 1)
            if need + self.prefill_blocks <= cap:
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
                free = cfg.kv_blocks - self._reserve_decode_blocks(slack) - self.prefill_blocks
                n_dec = len(off)  # reserving may have preempted some
            else:
                free = cfg.kv_blocks - self.prefill_blocks
            budget -= n_dec
        else:
            n_dec = 0
            held = self.blocks.blocks_at(self.G + 1) if off else 0
            free = cfg.kv_blocks - held - self.prefill_blocks
        chunks: list[tuple[int, int, int]] = []  # (index in prefilling, new, cached)
        shapes: list[tuple[int, int]] = []
        new_blocks = 0
        for i, entry in enumerate(prefilling):
            if budget <= 0:
                break
            _, done, target, held = entry
            n = target - done
            if n > budget:
                n = budget
            extra = -(-(done + n) // bs) - held
            if extra > free:
                n = min(n, (held + free) * bs - done)
                if n <= 0:
                    continue
                extra = -(-(done + n) // bs) - held
            free -= extra
            budget -= n
            entry[3] = held + extra
            new_blocks += extra
            chunks.append((i, n, done))
            shapes.append((n, done))
        waiting = self.waiting
        if waiting:
            tab = self.table
            seqs = n_dec + len(prefilling)
            while waiting and budget > 0 and seqs < cfg.max_num_seqs:
                rid = waiting[0]
                gen = tab.generated[rid]
                target = tab.prompt_tokens[rid] + (gen - 1 if gen > 0 else 0)
                if target > budget and not cfg.chunked_prefill:
                    break
                n = target if target < budget else budget
                need = -(-n // bs)
                if need > free:
                    break
                waiting.popleft()
                if tab.scheduled_s[rid] < 0:
                    tab.scheduled_s[rid] = self.now
                free -= need
                budget -= n
                new_blocks += need
                chunks.append((len(prefilling), n, 0))
                prefilling.append([rid, 0, target, need])
                shapes.append((n, 0))
                seqs += 1
        if not chunks:
            return False
        self.prefill_blocks += new_blocks
        context = (self.off_sum + n_dec * (self.G + 1)) if n_dec else 0
        dt = self.pred.step_s(n_dec, context, shapes)
        self._mixed = (self.now, dt, n_dec, chunks)
        self.next_t = self.now + dt
        return True

    def _commit_mixed(self, done: list[int]) -> None:
        t0, dt, n_dec, chunks = self._mixed
        self._mixed = None
        end = t0 + dt
        self.now = end
        self.busy_s += dt
        self.iterations += 1
        tab = self.table
        if n_dec:
            self._decode_gaps(end)
            self.G += 1
            self.last_decode_end = end
            self._pop_finished(end, done)
        finished = {i for i, n, _ in chunks if self.prefilling[i][1] + n >= self.prefilling[i][2]}
        for i, n, _ in chunks:
            self.prefilling[i][1] += n
        if not finished:
            return
        still: list[list[int]] = []
        for i, entry in enumerate(self.prefilling):
            if i not in finished:
                still.append(entry)
                continue
            rid, _, target, held = entry
            self.prefill_blocks -= held
            if tab.first_token_s[rid] < 0:
                tab.first_token_s[rid] = end
            tab.generated[rid] += 1
            if tab.generated[rid] >= tab.output_tokens[rid]:
                tab.finish_s[rid] = end
                self.outstanding_tokens -= tab.prompt_tokens[rid] + tab.output_tokens[rid]
                done.append(rid)
            else:
                self._join(rid, target, end)
        self.prefilling = still

    def _start_decode(self) -> None:
        """Start a stretch of decode-only steps up to the next finish or cache limit."""
        heap, off = self.finish_heap, self.off
        while heap[0][2] not in off:
            heapq.heappop(heap)  # stale entries of preempted requests
        g = self.G
        k = heap[0][0] - g
        n = len(off)
        cap = self.cfg.kv_blocks - self.prefill_blocks
        bs = self.cfg.block_size
        # Σ ceil(x/bs) ≤ (Σx + n(bs−1))/bs: when even that bound fits, skip the exact count.
        if (self.off_sum + n * (g + k + bs - 1)) // bs > cap:
            while self.off and self.blocks.blocks_at(g + 1) > cap:
                self._preempt_one()
            n = len(off)
            if not n:
                self._schedule()
                return
            while heap[0][2] not in off:
                heapq.heappop(heap)
            k = self.blocks.steps_that_fit(g, cap, heap[0][0] - g)
        c0, c1 = self.pred.decode_step_coeffs(n)
        # Step j (0-based) attends to off_sum + n(g + 1 + j) tokens: it lasts step0 + j·slope.
        step0 = c0 + c1 * (self.off_sum + n * (g + 1))
        slope = c1 * n
        self._seg = (self.now, k, step0, slope)
        self.next_t = self.now + k * step0 + slope * k * (k - 1) * 0.5

    def _cut(self, t: float) -> list[int]:
        """Stop the decode stretch at the first step boundary at or after t."""
        seg = self._seg
        t0, k, step0, slope = seg
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
        if j >= k:
            return []  # the stretch ends at or before the next boundary anyway
        self._seg = None
        done: list[int] = []
        self._commit_decode(seg, j, t0 + j * step0 + slope * j * (j - 1) * 0.5, done)
        self._schedule()
        return done

    def _commit_decode(self, seg: tuple, k: int, end: float, done: list[int]) -> None:
        """Account for the first k decode steps of a stretch, ending at `end`."""
        t0, _, step0, slope = seg
        n = len(self.off)
        self._decode_gaps(t0 + step0)
        if k > 1:
            self.itl.add_ramp(step0 + slope, step0 + slope * (k - 1), k - 1, n)
        self.busy_s += end - t0
        self.iterations += k
        self.G += k
        self.now = end
        self.last_decode_end = end
        self._pop_finished(end, done)
