"""Batch formation under a scheduling policy (priority, slack, length-aware queues, swap to host,
preemptible prefill): a separate, slower path than the default scheduler's, so the default
stays tight. The order comes from a `policies.PolicyState`.
"""

from __future__ import annotations

import math
from typing import Any

from servesim.sim.batching import _chunk_fit

INF = math.inf


class PolicyBatchFormation:
    """The policy scheduler's part of `Replica` (used only when a policy is set)."""

    __slots__ = ()

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
            self._end_hold(rid)
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
            else:  # recomputed: the token its recompute samples comes after `last_token`
                self.recompute_from[rid] = last_token
        self.waiting.appendleft(rid)
        self.queued_tokens += self._recompute_tokens(rid)
        self._sample_kv(self.now, len(self.off))  # the series sees it go now
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
            if not self.fits_to_completion(rid):  # (engines that reserve to completion)
                return
            self.hold_to_completion(rid)
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
        # An engine that reserves to completion never evicts (TensorRT-LLM's
        # GUARANTEED_NO_EVICT), whatever the order: the policy only orders its queue.
        preempts = ps.preempts and not cfg.reserve_to_completion
        if cfg.mixed_batches and off:
            self._reserve_decode_blocks(budget // bs + len(self.prefilling) + 2)
        new_blocks = 0
        chosen: set[int] = set()

        def free_now() -> int:
            held = self.blocks.blocks_at(self.G + 1) if off else 0
            return self.kv_blocks - held - self.fixed_blocks - new_blocks

        def n_dec_now() -> int:
            return len(off) if cfg.mixed_batches else 0

        # The engine's own admission checks hold under any order (`_engine_admits`):
        # TensorRT-LLM's reservation to completion, SGLang's room for decoding, whose tokens
        # are counted from the pass's start (what this pass admitted stays spent).
        def fresh_room(spent: int) -> list[int]:
            if not cfg.new_token_ratio:
                return []
            r = self._decode_room((free_now() + new_blocks) * bs)
            r[2] = spent
            return r

        room = fresh_room(0)
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
                if preempts and self._preempt_victim(waiting.head_key(), chosen) is not None:
                    pi = 0  # the room made may let a partial prefill passed over go on
                else:
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
            if -(-todo // bs) + pin > free or not self._engine_admits(rid, todo, room):
                if preempts and self._preempt_victim(waiting.head_key(), chosen) is not None:
                    pi = 0  # the room made may let a partial prefill passed over go on
                    room = fresh_room(room[2] if room else 0)
                else:
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
        if self.compiled is not None:
            self.host_extra_s = self._compile_s(self._forward_tokens(n_dec, chunks))
            dt += self.host_extra_s
        if self.encoder is not None:
            enc_s = self.encoder.chunks_s(chunks)
            dt += enc_s
            self.work_s += enc_s  # the compute-bound ViT at full dynamic power
        self.stall_s = 0.0
        tokens = n_dec + sum(n for _, n in chunks)
        self.mixed_shapes.append(tokens << 20 | (n_dec + len(chunks)))
        # The prompts this iteration admitted run in it: the series point at its start (taken
        # before they were admitted) is followed by one that counts them and their blocks.
        self._sample_kv(self.now, len(self.off))
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
