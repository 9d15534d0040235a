"""Batch formation of the default schedulers (vLLM V1 and SGLang styles): which prefills join the
next iteration under the token budget, max_num_seqs and free KV blocks, chunking, prefix-cache
reuse, and recompute preemption when a decode step cannot get a block.
"""

from __future__ import annotations

import numpy as np

from servesim.spec.memory import kv_bytes_per_token_per_device

# `Replica.incoming` token times meaning "the client's first token is made here"
# (disaggregation), resolved at admission (`BatchFormation._admit_incoming`).
FIRST_AT_ADMISSION = -1.0  # at the scheduler pass that admits the request
FIRST_AFTER_STEP = -2.0  # at the end of the first iteration that runs it
# SGLang's overlapped decode loop streams a prebuilt request's token when it processes that
# batch's result, after launching the next step: a busy worker's step in flight ends first
# (as FIRST_AFTER_STEP), an idle one launches at once (as FIRST_AT_ADMISSION).
FIRST_PREBUILT = -3.0


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


class BatchFormation:
    """The default scheduler's part of `Replica`: forms and commits prefill-carrying iterations."""

    __slots__ = ()

    def _admit_incoming(self) -> None:
        """Join requests whose KV arrived (disaggregation, migration) at this step boundary.

        A request handed over by a prefill pool may get its client-visible first token here: at
        this pass (token time -1), at the end of the first step that runs it (-2), or as the
        one or the other as the worker is idle or decoding (-3, SGLang's prebuilt batch)."""
        after_step: list[int] = []
        first = self.table.first_token_s
        now = self.now
        busy = bool(self.off)  # decoding when the pass came (a prebuilt request waits a step)
        while self.incoming:
            rid, cached, t_tok, reserved, in_order, shared = self.incoming.popleft()
            self.fixed_blocks -= reserved
            if t_tok < 0:
                if t_tok == FIRST_PREBUILT:  # SGLang's prebuilt batch under overlap
                    if busy:  # its token follows the step in flight; its decoding starts then
                        cached -= 1
                        self.table.generated[rid] -= 1
                        t_tok = FIRST_AFTER_STEP
                    else:
                        t_tok = FIRST_AT_ADMISSION
                if t_tok == FIRST_AT_ADMISSION:
                    first[rid] = now
                else:
                    after_step.append(rid)
                t_tok = now
            self._join(rid, cached, t_tok, shared)
            if in_order:
                self._place_by_arrival(rid)
        if after_step:
            # The first decode step of the group as it now stands (as `_start_decode` prices it).
            n, g = len(self.off), self.G
            c0, c1 = self._step_costs(n)[:2]
            # Summed as `_start_decode` sums it, so a request that finishes in that step
            # (speculation can emit all its tokens at once) ends exactly then, not an ulp before.
            end = now + (c0 + c1 * (self.off_sum + n * (g + 1) + self.shared_sum))
            for rid in after_step:
                first[rid] = end

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
        s = self.step_slots  # KV slots a decode step writes per sequence (k+1 speculating)
        upper = (self.off_sum + n * (self.G + s - 1 + bs)) // bs
        if upper + self.fixed_blocks + slack <= cap:
            return upper
        while self.off:
            need = self.blocks.blocks_at(self.G + s)
            if need + self.fixed_blocks <= cap:
                return need
            self._preempt_one()
        return 0

    def _forward_tokens(self, n_dec: int, chunks: list[tuple[list[int], int]]) -> int:
        """Tokens an iteration of `n_dec` decodes (each writing its verify slots) and these
        prefill chunks runs through the model."""
        return n_dec * self.step_slots + sum(n for _, n in chunks)

    def _compile_s(self, tokens: int) -> float:
        """Host seconds a prefill forward of `tokens` tokens spends compiling a kernel
        specialised on its token count: the engine's figure the first time the count comes up
        on this server, 0 after (`Predictor.token_count_compile_s`)."""
        seen = self.compiled
        if seen is None or tokens in seen:
            return 0.0
        seen.add(tokens)
        return self.pred.token_count_compile_s

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
            budget -= n_dec * self.step_slots  # verify tokens count against the budget
        else:
            n_dec = 0
            held = self.blocks.blocks_at(self.G + self.step_slots) if off else 0
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
            room = self._decode_room(free * bs) if cfg.new_token_ratio else []
            seqs = len(off) + len(prefilling)  # decoding requests hold slots in every engine
            while waiting and budget > 0 and seqs < cfg.max_num_seqs:
                rid = waiting[0]
                target = tab.prompt_tokens[rid] + tab.generated[rid]
                if target > budget and not cfg.chunked_prefill:
                    break
                n = target if target < budget else budget
                need = -(-n // bs)
                if need > free or not self._engine_admits(rid, target, room):
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
        if self.compiled is not None:
            self.host_extra_s = self._compile_s(self._forward_tokens(n_dec, chunks))
            dt += self.host_extra_s  # compiled inline on the host, before the launch
        if self.encoder is not None:
            enc_s = self.encoder.chunks_s(chunks)
            dt += enc_s
            self.work_s += enc_s  # the compute-bound ViT at full dynamic power
        # Busy work of the iteration, priced in bulk at the end (`total_work_s`).
        self.mixed_shapes.append(
            (cfg.max_num_batched_tokens - budget) << 20 | (n_dec + len(chunks))
        )
        if self.stall_s:
            dt += self.stall_s
            self.stall_s = 0.0
        # The prompts this iteration admitted run in it: the series point at its start (taken
        # before they were admitted) is followed by one that counts them and their blocks.
        self._sample_kv(self.now, len(self.off))
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
        room = self._decode_room(free * bs) if cfg.new_token_ratio else []
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
            if need + pin > free or not self._engine_admits(rid, todo, room):
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
        # SGLang weighs a non-decode iteration 1000 steps (scheduler_recv_skipper.py): the next
        # pass reads new requests. TensorRT-LLM's attention-DP counter just counts it.
        cfg = self.cfg
        if cfg.recv_quorum:
            self.recv_steps = min(self.recv_steps + 1, cfg.recv_interval)
        else:
            self.recv_steps = cfg.recv_interval
        self.now = end
        self.busy_s += dt
        self.iterations += 1
        tab = self.table
        seen = end
        if self.fe_cost:  # the serving loop: the decodes' responses, then the first tokens
            firsts = sum(1 for entry, n in chunks if entry[1] + n >= entry[2])
            seen = self._deliver(end, n_dec * self.fe_cost + firsts * self.cfg.response_s)
        if n_dec:
            self._decode_gaps(end)
            self.G += 1
            if self.spec_state is not None:
                self._spec_advance()
            self._sample_kv(end, len(self.off))  # grown KV, before the finished free theirs
            self.last_decode_end = end
            self._pop_finished(seen, done)
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
            first = tab.first_token_s[rid] < 0
            if first:
                tab.first_token_s[rid] = seen
            elif self.recompute_from and rid in self.recompute_from:
                # The recompute samples the token after the one it had before its preemption.
                self.itl.add(end - self.recompute_from.pop(rid))
            tab.generated[rid] += 1
            if tab.generated[rid] >= tab.output_tokens[rid]:
                self.fixed_blocks -= held
                self._end_hold(rid)
                if self.pins:
                    self._unpin(rid)
                self._record_finish(rid, seen)
                self.outstanding_tokens -= self._load_of(rid)
                done.append(rid)
                continue
            if first and self.defers_results:  # it leaves after the next launch
                self.fresh_first.append(rid)
            if self.hands_off:
                self.held[rid] = held
                self.handoff.append(rid)
            else:
                self.fixed_blocks -= held
                self._join(rid, target, end, shared)
        self.prefilling = still

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

    def _engine_admits(self, rid: int, compute: int, room: list[int]) -> bool:
        """The engine's admission checks beyond the blocks of this pass's chunk, for a request
        that would prefill `compute` tokens: TensorRT-LLM's reservation to completion, SGLang's
        room for decoding (`room` as `_admits_with_decode_room` keeps it). A request that
        passes holds its final blocks."""
        if not self.fits_to_completion(rid):
            return False
        ratio = self.cfg.new_token_ratio
        if ratio:  # SGLang: what it computes and its max new tokens (clipped) within the room
            tab = self.table
            left = max(int(tab.output_tokens[rid] - tab.generated[rid]), 0)
            alone = not (self.off or self.prefilling)  # (alone, it fits: pool.py)
            if not self._admits_with_decode_room(compute + min(left, ratio[3]), room, alone):
                return False
        self.hold_to_completion(rid)
        return True

    def _token_ratio(self) -> float:
        """SGLang's new-token ratio now: from r0 at step g0 down by (initial − floor) / steps a
        decode step to the floor; an empty batch restarts it at the initial value."""
        init, floor, steps, _ = self.cfg.new_token_ratio
        if not self.off:
            self.ratio_r0, self.ratio_g0 = init, self.G
        return max(floor, self.ratio_r0 - (init - floor) / steps * (self.G - self.ratio_g0))

    def _decode_room(self, free_tokens: int) -> list[int]:
        """SGLang's `rem_total_tokens` before this pass admits anything, as [low, high, spent
        this pass, free tokens]: free tokens less the ratio times the running requests'
        remaining max new tokens, each clipped. The bounds come from the group's sums (the
        unclipped remainder and clip × requests bound the clipped one);
        `_admits_with_decode_room` counts exactly only when a decision falls between them."""
        n = len(self.off)
        if not n:
            return [free_tokens, free_tokens, 0, free_tokens]
        cached = self.off_sum + n * self.G + self.shared_sum
        left = min(self.full_sum - cached - n, self.cfg.new_token_ratio[3] * n)
        return [free_tokens - int(self._token_ratio() * max(left, 0)), free_tokens, 0, free_tokens]

    def _decode_room_exact(self, free_tokens: int) -> int:
        """SGLang's `rem_total_tokens` before this pass admits anything (`_decode_room`)."""
        clip = self.cfg.new_token_ratio[3]
        left = int(np.minimum(np.maximum(self._tokens_to_go(), 0), clip).sum())
        return free_tokens - int(self._token_ratio() * left)

    def _tokens_to_go(self) -> np.ndarray:
        """Max new tokens each running request has left: output − (cached − prompt + 1)."""
        tab, g, spec, shared = self.table, self.G, self.spec_state, self.shared
        if spec is not None:  # the sequences' paths, in their dense slots
            rids = list(spec.rid_at)
            cached = spec.offsets(g) + g
        else:
            rids = list(self.off)
            cached = np.fromiter(self.off.values(), np.int64, len(rids)) + g
        out, prompt = tab.output_tokens, tab.prompt_tokens
        full = np.fromiter((out[r] + prompt[r] for r in rids), np.int64, len(rids))
        if shared:
            cached += np.fromiter((shared.get(r, 0) for r in rids), np.int64, len(rids))
        return full - 1 - cached

    def _admits_with_decode_room(self, total: int, room: list[int], alone: bool) -> bool:
        """Whether a request needing `total` tokens (compute and max new, clipped) passes
        SGLang's check `total < rem_total_tokens` (always, `alone` in the replica); `room` as
        `_decode_room` made it, exact once counted. Spends its tokens and a page when it
        passes."""
        lo, hi, spent, free_tokens = room
        if not alone:
            if total >= hi - spent:
                return False
            if total >= lo - spent:
                room[0] = room[1] = exact = self._decode_room_exact(free_tokens)
                if total >= exact - spent:
                    return False
        room[2] = spent + total + self.cfg.block_size
        return True

    def _retract_estimate(self) -> None:
        """After a retraction SGLang re-estimates the ratio from what the running requests did
        decode: (decoded + 20 per request) / their max new tokens, at most 1
        (ScheduleBatch.retract_decode, `retract_decode_steps`)."""
        if not self.off:
            return
        out = self.table.output_tokens
        total = sum(out[r] for r in self.off)
        decoded = total - int(self._tokens_to_go().sum())
        if total:
            self.ratio_r0 = min(1.0, (decoded + 20 * len(self.off)) / total)
            self.ratio_g0 = self.G

    def _host_copy_s(self, tokens: int) -> float:
        """Seconds to move `tokens` tokens of this device's KV over its host link, one way."""
        per_token = kv_bytes_per_token_per_device(self.pred.model, self.pred.par)
        return tokens * per_token / self.pred.device.host_bw_bytes_per_s

    def _resume_retracted(self) -> None:
        """Reload retracted requests, oldest first, while each fits with the decode reserve
        kept for every request here and itself (SGLang's `resume_retracted_reqs`: prompt,
        output and reserve within the allocatable tokens); with nothing running, as soon as
        its own blocks fit (they do once transfers in flight have landed and run)."""
        bs, per = self.cfg.block_size, self.cfg.decode_reserve_tokens
        while self.retracted:
            rid = self.retracted[0]
            cached, t_last = self.swapped[rid]
            held = len(self.off) + len(self.incoming) + self.promised
            reserve = per * (held + 1) if self.off else 0
            if not self.has_room(-(-(cached + 1 + reserve) // bs)):
                return
            self.retracted.popleft()
            del self.swapped[rid]
            self.stall_s += self._host_copy_s(cached)
            self._join(rid, cached, t_last)

    def _preempt_one(self) -> bool:
        """Preempt a running request (vLLM: the most recently admitted; else the policy's
        least urgent) to free blocks; the time series sees it go at once."""
        if self.ps is not None:
            return self._preempt_victim(None) is not None  # (which logs its sample)
        if not self._evict_newest():
            return False
        self._sample_kv(self.now, len(self.off))
        return True

    def _evict_newest(self) -> bool:
        """Send the most recently admitted running request back (its KV to host memory where
        the engine retracts, else to be recomputed), or else the newest prompt in prefill;
        False if there is none."""
        order, off, tab = self.join_order, self.off, self.table
        while order:
            rid = order.pop()
            if rid in off:
                cached = self._leave(rid)
                if self.pins:
                    self._unpin(rid)
                tab.generated[rid] = cached - tab.prompt_tokens[rid] + 1
                tab.preemptions[rid] += 1
                if self.cfg.retract_to_host:  # its KV goes to host memory, to come back
                    self.swapped[rid] = (cached, self.now)
                    self.retracted.append(rid)
                    self.stall_s += self._host_copy_s(cached)
                    return True
                self.recompute_from[rid] = self.last_decode_end  # its last token's time
                self.waiting.appendleft(rid)
                self.queued_tokens += cached + 1  # `_recompute_tokens`: prompt + generated
                if self.cfg.new_token_ratio:
                    self._retract_estimate()
                return True
        if self.prefilling:
            rid, _, _, blocks, _ = self.prefilling.pop()
            self.fixed_blocks -= blocks
            self._end_hold(rid)
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
