"""The closed-form decode stretch: while only decodes run, nothing changes until a request
finishes or arrives or the cache fills, so a whole run of decode steps is priced at once
(step time is affine in the total context, which grows by the batch size each step), cut at
the first step boundary after an event, and its token gaps recorded without a per-step loop.
"""

from __future__ import annotations

import heapq
import math

INF = math.inf


class DecodeStretch:
    """The decode-only part of `Replica`: prices, cuts and commits stretches of decode steps."""

    __slots__ = ()

    def _start_decode(self, max_steps: int = 0) -> None:
        """Start a stretch of decode-only steps up to the next finish or cache limit (at most
        `max_steps` when given)."""
        heap, off, joined = self.finish_heap, self.off, self.joined
        while joined.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # stale entries of preempted or migrated requests
        g = self.G
        k = heap[0][0] - g
        n = len(off)
        cap = self.kv_blocks - self.fixed_blocks
        bs = self.cfg.block_size
        if self.spec_state is not None:  # speculative steps write k+1 KV slots per sequence
            k = self._spec_fit(k)
            n = len(off)
            if not n:
                self._schedule()
                return
        # Σ ceil(x/bs) ≤ (Σx + n(bs−1))/bs: when even that bound fits, skip the exact count.
        elif (self.off_sum + n * (g + k + bs - 1)) // bs > cap:
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
            # The next pass admits what arrived during this step's predecessor, or, with a
            # receive interval, the next pass that reads new requests does.
            k = max(1, min(k, self.cfg.recv_interval - self.recv_steps))
        if max_steps:
            k = min(k, max_steps)
        c0, c1, w0, _ = self._step_costs(n)
        # Step j (0-based) attends to off_sum + n(g + 1 + j) tokens: it lasts step0 + j·slope.
        step0 = c0 + c1 * (self.off_sum + n * (g + 1) + self.shared_sum)
        slope = c1 * n * self.spec_tau  # context grows by the tokens a step emits
        t0 = self.now
        if self.stall_s:
            t0 += self.stall_s
            self.busy_s += self.stall_s
            self.stall_s = 0.0
        self._seg = (t0, k, step0, slope, w0)
        self.next_t = self._step_end_s(self._seg, k)

    @staticmethod
    def _step_end_s(seg: tuple, j: int) -> float:
        """When step j (1-based count) of a stretch ends: T(j) = t0 + j·step0 + slope·j(j−1)/2."""
        return seg[0] + j * seg[2] + seg[3] * j * (j - 1) * 0.5

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
        """End the decode stretch at the first step boundary at or after t (`extra` steps
        later) instead of where it was planned to end. The stretch stays in flight and
        `advance` commits it there, so the scheduler pass at that boundary sees everything
        that arrived before it: several arrivals within one step join together, as they do in
        the engine, and the stretch is committed once. Returns no finished requests (none
        finish before a stretch's planned end)."""
        seg = self._seg
        j = self._boundary(seg, t) + extra
        if j >= seg[1]:
            return []  # the stretch ends at or before that boundary anyway
        self._seg = (seg[0], j, seg[2], seg[3], seg[4])
        self.next_t = self._step_end_s(seg, j)
        return []

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
        self._commit_decode(seg, j, self._step_end_s(seg, j), done)
        self.next_t = INF
        return done

    def _commit_decode(self, seg: tuple, k: int, end: float, done: list[int]) -> None:
        """Account for the first k decode steps of a stretch, ending at `end`."""
        t0, _, step0, slope, w0 = seg
        n = len(self.off)
        itl = self.itl
        if self.lagged:  # only the lagged path (overlap, receive interval) reads it
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
        if self.spec_state is not None:
            self._spec_advance()
        # The KV the stretch grew to, before its finished requests free theirs: the time
        # series joins it to the stretch's start linearly (`result._merge_series`).
        self._sample_kv(end, n)
        every = self.cfg.recv_interval
        if every > 1:  # passes inside the stretch read (nothing) and restart the count
            r = self.recv_steps + k
            self.recv_steps = r if r <= every else (r - 1) % every + 1
        self.now = end
        self.last_decode_end = end
        seen = self._deliver_steps(seg, k, n) if self.fe_cost else end
        heap = self.finish_heap
        if heap and heap[0][0] <= g:
            self._pop_finished(seen, done)

    def _deliver(self, end: float, work_s: float) -> float:
        """When the client sees the responses an iteration ending at `end` emits, which take
        the serving loop `work_s` seconds: the loop handles responses in order, so they wait
        for what it still holds (a FIFO queue of work, `fe_w` at `fe_t`)."""
        w = max(0.0, self.fe_w - (end - self.fe_t)) + work_s
        self.fe_w, self.fe_t = w, end
        return end + w

    def _deliver_steps(self, seg: tuple, k: int, n: int) -> float:
        """`_deliver` for the first k steps of a decode stretch of n requests, each step's
        responses `n · fe_cost` of work, in closed form: after step j the loop holds
        W_j = max(0, W_{j-1} - (T_j - T_{j-1})) + a, so W_k is the largest of
        W_1 + (k-1)a - (T_k - T_1) and (k-j+1)a - (T_k - T_j) over j ≥ 2, and as T_j is convex
        in j the latter peaks at j = 2 or j = k."""
        a = n * self.fe_cost
        t1 = self._step_end_s(seg, 1)
        tk = self._step_end_s(seg, k)
        w1 = max(0.0, self.fe_w - (t1 - self.fe_t)) + a
        w = max(w1 + (k - 1) * a - (tk - t1), a)
        if k >= 2:
            w = max(w, (k - 1) * a - (tk - self._step_end_s(seg, 2)))
        self.fe_w, self.fe_t = w, tk
        return tk + w

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
