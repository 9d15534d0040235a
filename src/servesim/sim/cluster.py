"""The cluster event loop: arrivals, replica events, KV transfers and periodic controllers.

One loop drives every multi-replica setting: a pool of colocated replicas behind a router; a
prefill pool and a decode pool joined by KV transfers over a link (disaggregation); live
migration between replicas; autoscaling. Events are kept in one heap and invalidated lazily
(a replica's entry is current while its `next_t` matches; a transfer's while its version does).
Replicas advance lazily and touch the heap only when their next event time changes.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.sim.metrics import Quantiles
from servesim.sim.records import RequestTable
from servesim.sim.replica import Replica
from servesim.sim.router import (
    MIGRATION_ORDER,
    Migration,
    Router,
    freeness_steps,
)
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.transfer import Link, Network
from servesim.spec.memory import kv_bytes_per_token_per_device, state_bytes_per_seq_per_device
from servesim.spec.parallel import Parallel

INF = math.inf
_REP, _XFER, _TICK, _BOOT, _XSTART = 0, 1, 2, 3, 4


@dataclass
class KvPath:
    """How a request's cache moves between two pools: the link, the bytes and the compression.

    `kv_bytes(n)` is the KV cache of a sequence of n cached tokens as the receiving ranks hold
    it, every rank's share counted; `state_bytes` a hybrid model's recurrent state, likewise;
    `compression` a CacheGen-style ratio for the KV cache (the state is sent as it is);
    `flow_bw_bytes_per_s` the most one request's transfer moves at once."""

    link: Link
    kv_bytes: Callable[[int], float]
    compression: float = 1.0
    state_bytes: float = 0.0
    # The links of the rank pairs one request's bytes run between: a replica's endpoints pool
    # all its devices' links, but a request lives on one of its DP ranks.
    flow_bw_bytes_per_s: float = math.inf

    def wire_bytes(self, tokens: int) -> float:
        """Bytes one sequence of `tokens` cached tokens puts on the link."""
        return self.kv_bytes(tokens) / self.compression + self.state_bytes

    def seconds(self, nbytes: float, devices: int) -> float:
        """One uncontended transfer of `nbytes` between replicas of `devices` devices."""
        bw = min(self.link.bw_bytes_per_s * max(1, devices), self.flow_bw_bytes_per_s)
        return self.link.latency_s + nbytes / bw

    @classmethod
    def for_model(
        cls,
        link: Link,
        model: Any,
        compression: float = 1.0,
        par: Parallel | None = None,
        src_par: Parallel | None = None,
    ) -> KvPath:
        """The path for a model's cache into a replica laid out as `par` (per-token bytes
        computed once). Each device a request lives on there (tp × pp of one DP rank) receives
        its own share: what it holds of the KV cache, where MLA's latent cache and KV heads
        past the TP degree are whole copies (TensorRT-LLM's `MLACacheFormatter` sends the
        cache to every generation TP rank; SGLang's and NIXL's transfers fill each rank's own
        pages), and of a hybrid model's recurrent state, which moves with the KV and is
        rewritten every step. `par` None: one copy of the cache, as a whole-model figure.
        With the sending replica's layout `src_par` too, a request's bytes move over as many
        links at once as the fewer of its sending and receiving ranks have: a prefill rank
        under attention DP sends every decode TP rank its copy through its own NIC."""
        kv_copies, state = 1.0, model.state_bytes_per_seq()
        flow = math.inf
        if par is not None:
            ranks = par.tp * par.pp
            full = model.kv_bytes_per_token()
            if full > 0:
                kv_copies = kv_bytes_per_token_per_device(model, par) * ranks / full
            state = state_bytes_per_seq_per_device(model, par) * ranks
            if src_par is not None:
                flow = link.bw_bytes_per_s * min(ranks, src_par.tp * src_par.pp)
        if model.num_sliding_layers:
            kv = model.kv_bytes
            return cls(link, lambda n: kv_copies * kv(n), compression, state, flow)
        per_token = kv_copies * model.kv_bytes_per_token()
        return cls(link, lambda n: n * per_token, compression, state, flow)


@dataclass
class ClusterStats:
    """What the cluster loop did besides serving: transfers, migrations, scaling."""

    kv_transfers: int = 0
    # bytes KV transfers put on the link: every receiving rank's copy, the state, compressed
    kv_bytes: float = 0.0
    # per transfer, from the decode's pull (its hand-off included) to the KV's arrival
    kv_transfer_s: Quantiles = field(default_factory=Quantiles)
    migrations: int = 0
    # bytes migrations put on the link: bulk copies (those a finish cut short too) and deltas
    migration_bytes: float = 0.0
    migration_downtime_s: Quantiles = field(default_factory=Quantiles)  # predicted stop-copy
    migration_gap_s: Quantiles = field(default_factory=Quantiles)  # last token at A to attach
    cold_starts: int = 0
    scale_events: list[tuple[float, int]] = field(default_factory=list)  # (time, replicas up)
    finish_events: int = 0  # requests reported finished (each must be, exactly once)


class Cluster:
    """Replica pools, a router, optional KV path, migration and controllers, run to the end."""

    def __init__(
        self,
        table: RequestTable,
        entry: list[Replica],
        router: Router,
        closed: ClosedLoop | None = None,
        decode: list[Replica] | None = None,
        kv_path: KvPath | None = None,
        migration: Migration | None = None,
        migration_path: KvPath | None = None,
        controllers: list[Any] | None = None,
        pairs: list[tuple[Replica, Replica]] | None = None,
        ready_s: np.ndarray | None = None,
    ) -> None:
        self.table = table
        # Open loop: when each request (workload index) is ready for the engine beyond its
        # arrival, e.g. once a separate encode pool has encoded its images (`sim.encode`).
        self.ready_s = ready_s
        router.ids = table.request_id
        self.entry = entry
        self.decode = decode or []
        self.reps = entry + self.decode
        for i, r in enumerate(self.reps):
            r.index = i
        self.router = router
        # The decode worker a finished prefill hands over to, picked by the same policy with its
        # own turn: Dynamo's frontend (`--router-mode`, round-robin by default: dynamo/frontend/
        # main.py), TensorRT-LLM's disaggregated server (`RoundRobinRouter` by default) and
        # vLLM's proxies route both pools so.
        self.decode_router = Router(router.name)
        self.decode_router.ids = table.request_id
        # The serving frontend's latency before an engine sees a request (HTTP, tokenising).
        self.lag = entry[0].pred.engine.frontend_s if entry else (lambda _: 0.0)
        self.closed = closed
        self.kv_path = kv_path
        self.migration = migration
        self.migration_path = migration_path
        self.controllers = controllers or []
        self.active_entry = list(entry)  # replicas the router may use (autoscaling changes it)
        self.stats = ClusterStats()
        # (time, kind, replica or transfer or controller, version or flag): ties break on the
        # integers, so the order is deterministic without a sequence number.
        self.heap: list[tuple[float, int, int, int]] = []
        self.net = Network()
        self.pending: dict[int, deque[tuple[int, Replica]]] = {r.index: deque() for r in self.reps}
        self.inflight_migrations = 0
        self.migrating: set[int] = set()
        if migration is not None:
            table.hold = self.migrating  # a migration refers to its request until it is over
        self.migrating_reps: set[int] = set()  # replicas sending or receiving a migration
        self.stopping: dict[int, tuple] = {}  # rid -> migration waiting for its iteration to end
        self.now = 0.0
        self.late: list[int] = []  # requests finished inside a controller's action
        self.arrived = 0  # open loop: requests of the workload admitted so far (for ticks)
        # Arrival (send) time of every request by workload index, or -1 before it is sent:
        # the workload's own for an open loop; for a closed loop filled as clients send, when
        # a controller asks for it (`wants_arrivals`).
        self.arrival_s: np.ndarray | None = table._arrivals
        # Semi-PD: a prefill lane and a decode lane sharing one KV cache, hand-off in place.
        self.pairs = pairs or []
        self.pair_of: dict[int, tuple[Replica, Replica]] = {}
        for p, d in self.pairs:
            self.pair_of[p.index] = (p, d)
            self.pair_of[d.index] = (p, d)
            d.pin_owner = p
            self.sync_pair(p, d)
        # SGLang's bootstrap: a request reaches the prefill worker only once a decode worker
        # (taken in turn, as the router picks the pair at arrival) has read it in, and its KV
        # goes to that worker. Not for semi-PD lanes, which hand over in place.
        self.boot = (
            bool(self.decode)
            and not self.pairs
            and self.decode[0].pred.engine.disagg_prefill_waits_for_decode
        )
        self.boot_turn = 0
        self.boot_decode: dict[int, Replica] = {}  # the decode worker paired at arrival
        # Requests waiting for their decode worker to read them: token -> (request, prefill
        # replica). Tokens count up, so reads due at one time go in arrival order (a request's
        # slot number does not: slots are reused once finished rows are harvested).
        self.booting: dict[int, tuple[int, int]] = {}
        self.next_boot = 0
        # KV transfers waiting out their hand-off before the bytes move; those whose hand-off
        # ends at one time start together: token -> their (src, dst, bytes, payload) in
        # hand-off order, and time -> its token.
        self.starting: dict[int, list[tuple]] = {}
        self.start_token: dict[float, int] = {}
        self.next_start = 0
        path = kv_path or migration_path
        if path is not None:
            for r in self.reps:
                cap = path.link.bw_bytes_per_s * r.pred.par.num_devices
                self.net.endpoint(2 * r.index, cap)  # egress
                self.net.endpoint(2 * r.index + 1, cap)  # ingress

    # ---- heap helpers ----------------------------------------------------------------------
    def _push(self, t: float, kind: int, a: int, b: int = 0) -> None:
        heapq.heappush(self.heap, (t, kind, a, b))

    def _touch(self, r: Replica) -> None:
        t = r.next_t
        if t < INF:
            heapq.heappush(self.heap, (t, _REP, r.index, 0))

    touch = _touch

    def sync_pair(self, p: Replica, d: Replica) -> None:
        """Semi-PD: each lane may use the shared cache minus what the other holds or will hold
        by the end of its work in flight; a lane waiting for room is woken when it grows."""
        total = p.cfg.kv_blocks
        d.kv_blocks = total - p.fixed_blocks
        p.kv_blocks = total - (d.kv_blocks - d.free_blocks())
        for lane in (p, d):
            if lane.next_t == INF and (lane.waiting or lane.prefilling):
                lane.kick(self.now)
                self._touch(lane)
                # What the lane just took is no longer the other's to take.
                d.kv_blocks = total - p.fixed_blocks
                p.kv_blocks = total - (d.kv_blocks - d.free_blocks())
        if p.next_t == INF and d.next_t == INF and p.prefilling and d.prefilling and d.give_way():
            # Each lane holds part of a prompt and neither can take its next chunk: the decode
            # lane's (a preempted request it recomputes) waits, the prefill lane goes on.
            self.sync_pair(p, d)

    def schedule_tick(self, t: float, which: int, kind: int = 0) -> None:
        """Ask for a controller callback at time t (controllers call this to repeat)."""
        self._push(t, _TICK, which, kind)

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Serve every request."""
        table, reps, heap = self.table, self.reps, self.heap
        n = table.n
        lag, prompt_of = self.lag, table.prompt_of
        closed = self.closed
        admit, report, arrival_of = table.admit, table.done, table.arrival_of
        # Closed loop: (when the engine sees it, request, when it was sent)
        pending: list[tuple[float, int, float]] = []
        sent_s = None
        warm_gaps = False  # whether the warm-up's inter-token gaps are still being counted
        if closed is not None:
            # The client protocol (ramp, request rate, warm-up phase) decides each send time.
            pacer = closed.pacer()
            warm_gaps = getattr(pacer, "barrier", 0) > 0  # (a workflow loop has none)
            if any(getattr(c, "wants_arrivals", False) for c in self.controllers):
                sent_s = self.arrival_s = np.full(n, -1.0)
            for sent, gid in pacer.start():
                heapq.heappush(pending, (sent + lag(prompt_of(gid)), gid, sent))
        if self.migration is not None:
            self._push(self.migration.interval_s, _TICK, -1)
        for i, c in enumerate(self.controllers):
            c.start(self, i)
        route = self.router.pick
        handoffs = bool(self.decode)
        pair_of = self.pair_of
        push, pop = heapq.heappush, heapq.heappop
        valid = self.net.valid
        i = 0
        a_next = arrival_of(0) if closed is None and n else INF
        # The frontend passes requests on in arrival order (a long prompt's tokenising holds
        # back the ones behind it), so engine-side times never go back.
        t_open = a_next + lag(prompt_of(0)) if a_next < INF else INF
        ready = self.ready_s if closed is None else None
        if ready is not None and a_next < INF:
            t_open = max(t_open, ready[0])
        tick = False
        while True:
            t_arr = t_open if closed is None else (pending[0][0] if pending else INF)
            while heap:
                t, kind, a, b = heap[0]
                if kind == _REP:
                    if reps[a].next_t == t:
                        break
                elif kind == _XFER:
                    if valid(a, b):
                        break
                else:
                    break
                pop(heap)
            if not heap:
                if t_arr == INF:
                    break
                t_ev = INF
            else:
                t_ev = heap[0][0]
            done: list[int]
            if t_arr <= t_ev:
                if closed is None:
                    rid = admit(i, a_next)
                    i += 1
                    a_next = arrival_of(i) if i < n else INF
                    t_open = max(t_arr, a_next + lag(prompt_of(i))) if a_next < INF else INF
                    if ready is not None and a_next < INF:
                        t_open = max(t_open, ready[i])
                else:
                    _, gid, sent = heapq.heappop(pending)
                    rid = admit(gid, sent)
                    if sent_s is not None:
                        sent_s[gid] = sent
                self.now = t_arr
                target = route(rid, self.active_entry)
                if self.boot:
                    pool = self.decode
                    chosen = pool[self.boot_turn % len(pool)]
                    self.boot_decode[rid] = chosen  # its KV goes there after the prefill
                    read = chosen.next_read_s(t_arr)
                    self.boot_turn += 1
                    if read > t_arr:  # the prefill sees it once the decode has read it
                        token = self.next_boot
                        self.next_boot += 1
                        self.booting[token] = (rid, target.index)
                        push(heap, (read, _BOOT, token, 0))
                        done = []
                    else:
                        done = self._enter(target, rid, t_arr)
                else:
                    done = self._enter(target, rid, t_arr)
            else:
                t, kind, a, b = pop(heap)
                self.now = t
                if kind == _BOOT:
                    rid, at = self.booting.pop(a)
                    done = self._enter(reps[at], rid, t)
                elif kind == _REP:
                    r = reps[a]
                    done = r.advance()
                    t = r.next_t
                    if t < INF:
                        push(heap, (t, _REP, a, 0))
                    if r.left:
                        self._left(r)
                    if handoffs:
                        if r.handoff:
                            done = done + self._handoffs(r)
                        if self.pending[a]:
                            self._pull(r)
                    if pair_of:
                        self.sync_pair(*pair_of[a])
                elif kind == _XFER:
                    done = self._transfer_done(t, a)
                elif kind == _XSTART:
                    # The hand-offs of one prefill batch come due together: they start as
                    # one, so the links are re-rated once.
                    del self.start_token[t]
                    self._start_transfers(self.starting.pop(a))
                    done = []
                else:
                    done = []
                    tick = True
                    self.arrived = i
                    # A tick sees whether anything but ticks can still happen; periodic
                    # sources repeat only while it can.
                    busy = self._busy(i < n if closed is None else bool(pending))
                    if a == -1:
                        self._migrate_tick(t)
                        if busy:
                            self._push(t + self.migration.interval_s, _TICK, -1)
                    else:
                        self.controllers[a].tick(self, t, a, busy, b)
            if self.late:
                done = done + self.late
                self.late = []
            if done:
                self.stats.finish_events += len(done)
                if closed is not None:
                    finish, ids = table.finish_s, table.request_id
                    for rid in done:
                        for sent, gid in pacer.finished(float(finish[rid]), ids[rid]):
                            heapq.heappush(pending, (sent + lag(prompt_of(gid)), gid, sent))
                    if warm_gaps and pacer.next > pacer.barrier:
                        # The warm-up has ended: the gaps so far were its requests'.
                        warm_gaps = False
                        for hist in {id(r.itl): r.itl for r in self.reps}.values():
                            hist.mark()
                report(done)
            if tick:
                tick = False
                if not self._busy(i < n if closed is None else bool(pending)):
                    # No arrival can come and no replica or transfer has work: the run is
                    # over (requests still held would stay so forever; the conservation check
                    # of the result names them). Ticks left in the heap cannot add work.
                    break

    def _enter(self, target: Replica, rid: int, t: float) -> list[int]:
        """A request reaches the replica the router chose; returns requests that finished."""
        before = target.next_t
        done = target.enqueue(rid, t)
        t_next = target.next_t
        if t_next != before and t_next < INF:
            heapq.heappush(self.heap, (t_next, _REP, target.index, 0))
        if self.decode and target.handoff:
            done = done + self._handoffs(target)
        if self.pair_of:
            self.sync_pair(*self.pair_of[target.index])
        return done

    def _busy(self, more_arrivals: bool) -> bool:
        """Whether an arrival can still come or a replica or a transfer has work in flight."""
        return (
            more_arrivals
            or bool(self.booting)
            or bool(self.starting)
            or any(r.next_t < INF for r in self.reps)
            or bool(self.net.active)
        )

    # ---- disaggregation: hand-off, pull, transfer ------------------------------------------
    def _handoffs(self, src: Replica) -> list[int]:
        """Requests whose prefill finished on `src` go to a decode replica's pull queue (or,
        for a semi-PD lane, straight to its partner); returns requests that finished."""
        tab = self.table
        if src.index in self.pair_of:
            _, dst = self.pair_of[src.index]
            done: list[int] = []
            for rid in src.handoff:
                held = src.held[rid]
                cached = tab.prompt_tokens[rid] + max(0, tab.generated[rid] - 1)
                # The blocks stay where they are and become the decode lane's: promise them to
                # it and take them off the prefill lane's allowance before the release lets
                # the prefill lane admit its next prompt. Prefix blocks it shares with other
                # prompts stay pinned in the prefill lane's cache, counted once, until the
                # request leaves the decode lane.
                shared = src.pins.get(rid, 0) * src.prefix.block_tokens if src.pins else 0
                dst.reserve(held)
                src.kv_blocks -= held
                src.release(rid, self.now, keep_pins=True)
                done += dst.attach(
                    rid, self.now, cached, tab.first_token_s[rid], held, shared=shared
                )
            src.handoff.clear()
            self._touch(src)
            self._touch(dst)
            return done
        pool, pending = self.decode, self.pending
        for rid in src.handoff:
            # SGLang's router paired the request with a decode worker at arrival (the bootstrap
            # room ties the two); elsewhere the router picks one at hand-off.
            dst = self.boot_decode.pop(rid, None) or self.decode_router.pick(rid, pool)
            load = tab.output_tokens[rid] - tab.generated[rid]
            dst.attached_load[rid] = load  # counted now so a burst spreads over the pool
            dst.outstanding_tokens += load
            q = pending[dst.index]
            q.append((rid, src))
            if len(q) == 1:
                self._pull(dst)
        src.handoff.clear()
        return []

    def _pull(self, dst: Replica) -> None:
        """Start the transfers `dst` has a request slot and KV room for, in order (DistServe:
        decode pulls KV; engines take a request in only under their request cap, so the rest
        wait with their KV on the prefill side and the client sees no first token yet). Each
        one's bytes move after its hand-off (`_handoff_s`), taking link bandwidth from then."""
        q = self.pending[dst.index]
        tab = self.table
        bs = dst.cfg.block_size
        path = self.kv_path
        while q:
            rid, src = q[0]
            gen = tab.generated[rid]
            cached = tab.prompt_tokens[rid] + (gen - 1 if gen > 1 else 0)
            need = -(-(cached + 1) // bs)
            if not (dst.has_seat() and dst.can_preallocate(need) and dst.fits_to_completion(rid)):
                return
            q.popleft()
            dst.hold_to_completion(rid)
            dst.reserve(need)
            dst.promised += 1
            nbytes = path.wire_bytes(cached)
            payload = ("kv", rid, src.index, dst.index, cached, need, self.now, nbytes)
            delay = self._handoff_s(rid, dst)
            if delay > 0.0:  # the hand-off comes first; the bytes move after it
                when = self.now + delay
                token = self.start_token.get(when)
                if token is None:
                    token = self.start_token[when] = self.next_start
                    self.next_start += 1
                    self.starting[token] = []
                    heapq.heappush(self.heap, (when, _XSTART, token, 0))
                self.starting[token].append((src, dst, nbytes, payload))
            else:
                self._start_transfer(path, src, dst, nbytes, payload)

    def _handoff_s(self, rid: int, dst: Replica) -> float:
        """Seconds from now until the KV of a finished prefill starts to move, beyond the link:
        the router's hop to the decode worker (counted from the prefill's end) and, when the
        decode worker pulls, the wait for its next scheduler pass (`EngineProfile`)."""
        e = dst.pred.engine
        tab = self.table
        ready = max(self.now, tab.first_token_s[rid] + e.handoff_s(tab.prompt_tokens[rid]))
        if e.disagg_pull_at_pass:
            ready = dst.next_pass_s(ready)
        return ready - self.now

    def _start_transfer(
        self,
        path: KvPath,
        src: Replica,
        dst: Replica,
        nbytes: float,
        payload: tuple,
        wait_s: float = 0.0,
    ) -> None:
        """Start one transfer over `path` now; its bytes arrive the link's latency (plus
        `wait_s`, a stopped request's wait for its step boundary) after they are out."""
        ends = (2 * src.index, 2 * dst.index + 1)
        latency = path.link.latency_s + wait_s
        cap = path.flow_bw_bytes_per_s
        for t, tid, ver in self.net.start(self.now, *ends, nbytes, latency, payload, cap):
            heapq.heappush(self.heap, (t, _XFER, tid, ver))

    def _start_transfers(self, batch: list[tuple]) -> None:
        """Start the KV transfers of `batch` ((src, dst, bytes, payload) each) now."""
        path = self.kv_path
        lat = path.link.latency_s
        items = [(2 * s.index, 2 * d.index + 1, n, lat, pl) for s, d, n, pl in batch]
        for t, tid, ver in self.net.start_many(self.now, items, path.flow_bw_bytes_per_s):
            heapq.heappush(self.heap, (t, _XFER, tid, ver))

    def _transfer_done(self, t: float, tid: int) -> list[int]:
        """A transfer arrived: hand the request over; returns requests that finished."""
        payload, changed = self.net.finish(t, tid)
        for t2, tid2, ver in changed:
            self._push(t2, _XFER, tid2, ver)
        kind = payload[0]
        reps, tab = self.reps, self.table
        if kind == "kv":
            _, rid, s, d, cached, need, t_start, nbytes = payload
            src, dst = reps[s], reps[d]
            self.stats.kv_transfers += 1
            self.stats.kv_bytes += nbytes
            self.stats.kv_transfer_s.append(t - t_start)
            before = src.next_t
            src.release(rid, t)
            if src.next_t != before:
                self._touch(src)
            before = dst.next_t
            dst.promised -= 1  # now counted among its incoming requests
            done = dst.attach(
                rid, t, cached, tab.first_token_s[rid], need, counted=True, handed_over=True
            )
            if dst.next_t != before:
                self._touch(dst)
            return done
        if kind == "mig1":
            return self._migration_stop_copy(t, payload)
        _, rid, s, d, cached, need, t_last, _ = payload
        dst = reps[d]
        self.stats.migration_gap_s.append(t - t_last)
        done = dst.attach(rid, t, cached, t_last, need, in_order=True)
        self._touch(dst)
        tab.migrations[rid] += 1
        self._migration_over(rid, s, d)
        return done

    # ---- live migration (Llumnix) -----------------------------------------------------------
    def _migrate_tick(self, t: float) -> None:
        """Pair the least free replicas with the freest ones and start one migration per pair
        (Llumnix's global scheduler; each replica takes part in one migration at a time)."""
        mig = self.migration
        pool = self.decode if self.decode else self.active_entry
        cap = mig.max_inflight if mig.max_inflight is not None else len(pool)
        if len(pool) < 2 or self.inflight_migrations >= cap:
            return
        busy = self.migrating_reps
        scored = [(freeness_steps(r), r.index, r) for r in pool if r.index not in busy]
        srcs = sorted(x for x in scored if x[0] < mig.low_steps and x[2].off)
        dsts = sorted((x for x in scored if x[0] > mig.high_steps), reverse=True)
        for (_, _, src), (_, _, dst) in zip(srcs, dsts, strict=False):
            if self.inflight_migrations >= cap:
                return
            self._start_migration(src, dst)

    def _start_migration(self, src: Replica, dst: Replica) -> None:
        """Live-copy one decoding request of `src` to `dst` if `dst` keeps enough headroom."""
        mig = self.migration
        path = self.migration_path
        bs = dst.cfg.block_size
        g = src.G
        free_dst = (dst.kv_blocks - dst.kv_used_estimate) * bs
        n_dst = len(dst.off) + len(dst.prefilling) + (1 if dst.waiting else 0)
        head_dst = dst.head_tokens() if dst.waiting else 0
        step0 = src.pred.decode_step_coeffs(max(1, len(src.off)))[0]
        order = MIGRATION_ORDER[mig.pick](src)
        for rid in order:
            if rid in self.migrating:
                continue
            cached = src.off[rid] + g + src.shared.get(rid, 0)
            # The copy runs while the request decodes: reserve room for what it adds meanwhile.
            nbytes = path.wire_bytes(cached)
            copy_s = path.seconds(nbytes, src.pred.par.num_devices)
            growth = int(copy_s / max(step0, 1e-6)) + 2
            need = -(-(cached + growth) // bs)
            if (free_dst - head_dst - need * bs) / (n_dst + 1) < mig.high_steps:
                continue  # the destination would stop being one: it too would run short
            if not dst.has_room(need):
                continue
            dst.reserve(need)
            self.inflight_migrations += 1
            self.migrating.add(rid)
            self.migrating_reps.update((src.index, dst.index))
            payload = ("mig1", rid, src.index, dst.index, cached, need)
            self.stats.migration_bytes += nbytes
            self._start_transfer(path, src, dst, nbytes, payload)
            return

    def _migration_stop_copy(self, t: float, payload: tuple) -> list[int]:
        """The bulk copy is done: stop the request at the next step, copy what it added."""
        src = self.reps[payload[2]]
        done, cached, boundary = src.detach(payload[1], t)
        if cached == -2:  # it stops when the iteration in flight ends (`_left`)
            self.stopping[payload[1]] = payload
            return done
        self._touch(src)
        self._delta_copy(t, payload, cached, boundary)
        return done

    def _left(self, src: Replica) -> None:
        """Requests stopped at the end of `src`'s iteration: copy what they added meanwhile."""
        for rid, cached, boundary in src.left:
            self._delta_copy(boundary, self.stopping.pop(rid), cached, boundary)
        src.left.clear()

    def _delta_copy(self, t: float, payload: tuple, cached: int, boundary: float) -> None:
        """Stop-and-copy: send the tokens added since the bulk copy (the request is stopped)."""
        _, rid, s, d, cached0, need = payload
        src, dst = self.reps[s], self.reps[d]
        if cached < 0:  # it finished (or was preempted) first: give the room back
            dst.unreserve(need)
            self._migration_over(rid, s, d)
            dst.kick(t)
            self._touch(dst)
            return
        path = self.migration_path
        # The tokens added since, and the recurrent state again (every step rewrites it).
        delta = path.wire_bytes(max(0, cached - cached0))
        predicted = path.seconds(delta, src.pred.par.num_devices)
        self.stats.migrations += 1
        self.stats.migration_bytes += delta
        self.stats.migration_downtime_s.append(predicted)
        extra = -(-(cached + 1) // dst.cfg.block_size) - need
        if extra > 0:
            dst.reserve(extra)
            need += extra
        # The delta leaves once the request stops at the step boundary (at or after t).
        payload2 = ("mig2", rid, s, d, cached, need, boundary, predicted)
        self._start_transfer(path, src, dst, delta, payload2, wait_s=boundary - t)

    def _migration_over(self, rid: int, s: int, d: int) -> None:
        self.inflight_migrations -= 1
        self.migrating.discard(rid)
        self.migrating_reps.discard(s)
        self.migrating_reps.discard(d)
