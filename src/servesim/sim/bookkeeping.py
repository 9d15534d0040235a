"""Request bookkeeping of a replica: a sequence joining and leaving the running batch (its step
offsets, context sums and KV blocks), collecting the requests that finished, and folding the
replica's time series and logged iteration shapes into bounded buffers.
"""

from __future__ import annotations

import heapq

import numpy as np

from servesim.sim.records import SeriesRecorder


class RequestBookkeeping:
    """How `Replica` tracks its running sequences."""

    __slots__ = ()

    # ---- decode group bookkeeping --------------------------------------------------------
    def _join(self, rid: int, cached: int, t_token: float, shared: int = 0) -> None:
        """Move a request whose prefill finished into the decode group."""
        tab = self.table
        off = cached - shared - self.G
        self.off[rid] = off
        self.off_sum += off
        self.full_sum += tab.prompt_tokens[rid] + tab.output_tokens[rid]
        self.blocks.add(off)
        if shared:
            self.shared[rid] = shared
            self.shared_sum += shared
        self.join_seq = seq = self.join_seq + 1
        self.joined[rid] = seq
        steps = tab.output_tokens[rid] - tab.generated[rid]
        if self.spec_state is not None:  # speculative: drawn verify steps, not one per token
            steps = self._spec_join(rid, off, steps)
        heapq.heappush(self.finish_heap, (self.G + steps, seq, rid))
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
        self._end_hold(rid)
        self.full_sum -= self.table.prompt_tokens[rid] + self.table.output_tokens[rid]
        if self.spec_state is not None:  # what the group's sums hold for it: its drawn tokens
            off = self._spec_leave_offset(rid)
        self.off_sum -= off
        self.blocks.remove(off)
        if self.shared:
            s = self.shared.pop(rid, 0)
            self.shared_sum -= s
            if s and self.pin_owner is not None:  # its prefix pins end with its stay here
                self.pin_owner.partner_left(rid, self.now)
            return off + self.G + s
        return off + self.G

    def _drop(self, rid: int) -> int:
        """Remove a decoding request that moves away; returns its cached tokens."""
        cached = self._leave(rid)
        if self.pins:
            self._unpin(rid)
        tab = self.table
        tab.generated[rid] = cached - tab.prompt_tokens[rid] + 1  # the group tracks it by G
        self.outstanding_tokens -= self._load_of(rid)
        return cached

    def _record_finish(self, rid: int, seen_s: float) -> None:
        """The client sees a request's last token at `seen_s`, but never before its first: an
        overlap loop processes iterations' results in order, so a first token it held back past
        the next launch (`_defer_first_tokens`) holds back the tokens after it too (on this
        replica, or on the lane or replica the request moved to)."""
        tab = self.table
        t_first = tab.first_token_s[rid]
        tab.finish_s[rid] = seen_s if seen_s >= t_first else t_first

    def _pop_finished(self, seen_s: float, done: list[int]) -> None:
        """Take the requests whose last token the group just made out of the decode group;
        the client sees that token at `seen_s` (the iteration's end, or later when the serving
        loop delivers it, `_deliver`), as `_record_finish` records it."""
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
            self._record_finish(rid, seen_s)
            if self.attached_load:
                self.outstanding_tokens -= self._load_of(rid)
            else:
                self.outstanding_tokens -= tab.prompt_tokens[rid] + out
            done.append(rid)

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
