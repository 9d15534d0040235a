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

This module is the engine loop and the replica's interface to the cluster (enqueue, attach,
release, detach, advance). The rest of the class lives beside it, one concern per file, as
mixins sharing these slots (a plain method lookup, so the hot path pays nothing for the split):
`batching` (the default scheduler: batch formation, chunking, prefix reuse, preemption),
`decode_stretch` (the closed-form decode stretch), `policy_batching` (the policy path) and
`bookkeeping` (sequences joining and leaving, finished requests, bounded series).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from servesim.predictor.iteration import Predictor
from servesim.sim.batching import (
    FIRST_AFTER_STEP,
    FIRST_AT_ADMISSION,
    FIRST_PREBUILT,
    BatchFormation,
)
from servesim.sim.bookkeeping import RequestBookkeeping
from servesim.sim.decode_stretch import DecodeStretch
from servesim.sim.kvcache import DecodeBlocks
from servesim.sim.metrics import ItlHistogram
from servesim.sim.policies import KeyedQueue, PolicyState
from servesim.sim.policy_batching import PolicyBatchFormation
from servesim.sim.prefix_cache import PrefixCache
from servesim.sim.records import RequestTable, SeriesRecorder
from servesim.sim.speculation import SpecBlocks, SpecState, SpeculativeSteps

INF = math.inf
ROLES = ("mixed", "prefill", "decode")


def dp_rank_of(rid: int, ranks: int) -> int:
    """The attention-DP rank a request lands on. TensorRT-LLM gives a new request to the rank
    with room (`_balance_requests_across_ranks`); in a full closed loop that is the rank where
    a request just ended, which is any of them: a fixed pseudo-random draw per request id."""
    x = ((rid + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF  # splitmix64's mixing
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) % ranks


def _covers_ranks(waiting: Any, seen: list[int], ranks: int) -> bool:
    """Whether the waiting and newly seen prompts put one on every attention-DP rank."""
    if len(waiting) + len(seen) < ranks:
        return False
    hit: set[int] = set()
    for queue in (seen, waiting):  # stop at the first prompt that completes the ranks
        for r in queue:
            hit.add(dp_rank_of(r, ranks))
            if len(hit) == ranks:
                return True
    return False


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
    # ... and its results are processed after the next launch (`EngineProfile.
    # results_after_next_launch`; a disaggregated prefill server too, whose arrivals `overlap`
    # leaves unlagged)
    defers_results: bool = False
    # The serving process's loop, per streamed response (`EngineProfile.response_cost_s`; 0:
    # not modelled), and the steps between a running request's responses.
    response_s: float = 0.0
    stream_interval: int = 1
    # Decode steps between the scheduler's reads of new requests (SGLang
    # `--scheduler-recv-interval`; 1 = every pass). Its receive skipper sits in the loop both
    # with and without overlap (scheduler.py `recv_requests`), so it acts on either path.
    recv_interval: int = 1
    # TensorRT-LLM attention-DP balancing (EngineProfile.adp_balance_timeout_iters): with
    # recv_interval = the timeout, prompts go early once `recv_quorum` of them wait (one per DP
    # rank) or fewer than that many sequences decode (a rank without generation requests), and
    # a prefill iteration does not reset the count as SGLang's receive skipper does. 0: off.
    recv_quorum: int = 0
    # TensorRT-LLM batch waiting: prompts wait while decodes run until an iteration would hold
    # batch_wait_ratio × max_num_batched_tokens tokens or they waited batch_wait_iters steps.
    batch_wait_iters: int = 0
    batch_wait_ratio: float = 0.0
    # TensorRT-LLM's default capacity policy (GUARANTEED_NO_EVICT): a request is admitted only
    # when the blocks of its whole length (prompt + max new tokens) fit beside those every
    # admitted request will hold at its end, so nothing is ever preempted. (The default
    # scheduler's admission and the disaggregated pull; a scheduling policy keeps its own.)
    reserve_to_completion: bool = False
    # A disaggregated decode worker's decode reserve per request it holds or takes in
    # (`EngineProfile.disagg_decode_reserve_tokens`; 0: none).
    decode_reserve_tokens: int = 0
    # SGLang's decode estimate at admission (`EngineProfile.new_token_ratio`; () for none).
    new_token_ratio: tuple[float, float, int, int] = ()
    # A decode worker parks preempted requests' KV in host memory and reloads it, instead of
    # recomputing them (`EngineProfile.disagg_decode_retracts_to_host`).
    retract_to_host: bool = False


class Replica(
    BatchFormation, DecodeStretch, PolicyBatchFormation, RequestBookkeeping, SpeculativeSteps
):
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
        "batch_waited",
        "blocks",
        "busy_s",
        "cfg",
        "compiled",
        "defers_results",
        "encoder",
        "fe_cost",
        "fe_t",
        "fe_w",
        "final_blocks",
        "final_of",
        "finish_heap",
        "fixed_blocks",
        "fresh",
        "fresh_first",
        "fresh_n",
        "full_sum",
        "group",
        "handoff",
        "hands_off",
        "hashes",
        "held",
        "host_extra_s",
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
        "pin_owner",
        "pins",
        "power_pred",
        "pp",
        "pred",
        "prefilling",
        "prefix",
        "promised",
        "provisioned",
        "ps",
        "queued_tokens",
        "ratio_g0",
        "ratio_r0",
        "recompute_from",
        "recv_steps",
        "retracted",
        "role",
        "samples",
        "series",
        "shape_chunks",
        "shape_count",
        "shape_work_s",
        "shared",
        "shared_sum",
        "spec_state",
        "spec_tau",
        "stall_s",
        "step_slots",
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
        encoder: Any = None,
    ) -> None:
        self.index = index
        # Colocated vision encoding (`sim.multimodal.InEngineEncoder`): seconds added to an
        # iteration for the images its prefill chunks reach; None for text-only serving.
        self.encoder = encoder
        self.pred = predictor
        # Token counts the server's prefill forwards have run (None: the engine compiles
        # nothing per count, `Predictor.token_count_compile_s`).
        self.compiled: set[int] | None = set() if predictor.token_count_compile_s else None
        # Overlap scheduling that processes an iteration's results after launching the next
        # (`EngineProfile.results_after_next_launch`): the prompts whose first token the last
        # iteration produced, until the next launch times it.
        self.defers_results = cfg.defers_results
        self.fresh_first: list[int] = []
        self.host_extra_s = 0.0  # host time the iteration in flight adds to its launch (compiles)
        # The serving loop's queue of responses (`ReplicaConfig.response_s`): seconds of work
        # it held at `fe_t`, and the seconds one running request's step adds.
        self.fe_cost = cfg.response_s / cfg.stream_interval
        self.fe_w = 0.0
        self.fe_t = 0.0
        self.cfg = cfg
        self.table = table
        self.itl = itl
        self.pp = predictor.par.pp
        self._step_costs = predictor.decode_step_costs
        self.role = role
        self.hands_off = role == "prefill"
        self.ps = policy
        # Speculative decoding (`sim.speculation`): KV slots a decode step writes per sequence,
        # mean tokens it emits, and the running sequences' seeded draws (None without it).
        spec = getattr(predictor, "speculative", None)
        self.step_slots = 1 if spec is None else spec.verify_tokens
        self.spec_tau = 1.0 if spec is None else spec.expected_tokens_per_step
        self.spec_state = (
            None if spec is None else SpecState(spec.depth_acceptance, spec.seed, index)
        )
        self.waiting: Any = deque() if policy is None else KeyedQueue(policy.key)
        self.kv_blocks = cfg.kv_blocks  # may shrink when a partner shares the cache (semi-PD)
        # Partial prefills: [rid, done_tokens, target_tokens, private_blocks, shared_tokens]
        self.prefilling: list[list[int]] = []
        # Blocks outside the decode group's private ones: prefill chunks, pinned prefix blocks,
        # KV held for a transfer, blocks reserved for an incoming request.
        self.fixed_blocks = 0
        # Blocks each admitted request will hold at its end, and their sum, where the engine
        # admits only what can run to completion (`ReplicaConfig.reserve_to_completion`).
        self.final_of: dict[int, int] = {}
        self.final_blocks = 0
        # SGLang's new-token ratio: r0 at decode step g0, falling from there (`_token_ratio`).
        self.ratio_r0 = cfg.new_token_ratio[0] if cfg.new_token_ratio else 0.0
        self.ratio_g0 = 0
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
        self.full_sum = 0  # Σ prompt + output tokens of the decode group's requests
        self.shared: dict[int, int] = {}  # rid -> prefix tokens it reads from pinned blocks
        self.shared_sum = 0
        self.blocks = DecodeBlocks(cfg.block_size)
        if self.spec_state is not None:  # offsets move by drawn tokens: rebuilt when asked
            self.blocks = SpecBlocks(cfg.block_size, self.spec_state)
        # (first-token time, count) of requests that joined since the last decode step
        self.fresh: list[tuple[float, int]] = []
        self.fresh_n = 0
        self.last_decode_end = 0.0
        # Prefix caching
        self.prefix = prefix
        self.hashes = hashes
        self.pins: dict[int, int] = {}  # rid -> leading hash blocks it pins
        # Semi-PD decode lane: the prefill lane whose prefix cache still pins the shared prompt
        # blocks of the requests it handed over, until they leave here (None elsewhere).
        self.pin_owner: Replica | None = None
        # Disaggregation and migration
        self.handoff: list[int] = []  # prefill role: rids whose first token is out
        self.held: dict[int, int] = {}  # rid -> private blocks kept for the KV transfer
        # (rid, cached tokens, last token time, reserved blocks, keeps its arrival-order place)
        self.incoming: deque[tuple[int, int, float, int, bool, int]] = deque()
        # Sequences whose KV is on its way here (a decode slot is taken when the pull starts).
        self.promised = 0
        self.attached_load: dict[int, int] = {}  # rid -> tokens it added to the router signal
        # Live migration: requests to stop at the end of the iteration in flight (in the order
        # asked: a set would order them by slot, which slot reuse shuffles), and those
        # stopped there as (rid, cached tokens or -1 if it finished first, boundary time).
        self.leaving: dict[int, None] = {}
        self.left: list[tuple[int, int, float]] = []
        # Policy path state
        self.swapped: dict[int, tuple[int, float]] = {}  # rid -> (cached tokens, last token t)
        # rid -> its last token's time, for a request preempted to be recomputed: the token
        # its recompute samples comes that long after it (an inter-token gap, the stall)
        self.recompute_from: dict[int, float] = {}
        # Requests whose KV a decode worker moved to host memory, in retraction order
        # (`ReplicaConfig.retract_to_host`; their cached tokens and times are in `swapped`).
        self.retracted: deque[int] = deque()
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
        # Decode steps since the scheduler last read new requests (`recv_interval`); a pass
        # reads them once this reaches the interval (a prefill-carrying iteration sets it there).
        self.recv_steps = cfg.recv_interval
        self.batch_waited = 0  # iterations the waiting prompts were held back (batch waiting)
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
        # The table sums one context per token; a speculative step reads it once per step.
        work += pred.decode_work_per_token_s * decode_context_tokens / self.spec_tau
        return work + pred.attn_pair_work_s * self.attn_pairs

    def provisioned_s(self, end_s: float, start_s: float = 0.0) -> float:
        """Seconds this replica was provisioned (powered and paid for) from `start_s` (the
        run's first arrival) up to `end_s`."""
        return sum(max(0.0, min(b, end_s) - max(a, start_s)) for a, b in self.provisioned)

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
        if self.cfg.overlap or self.cfg.recv_interval > 1:
            # Overlap: the pass that planned the next iteration ran when this one started, so
            # the request waits for the pass after it, at the next boundary. Either way, with a
            # receive interval only the passes that read new requests see it.
            self.lagged.append((t, rid))
            if self._seg is not None and len(self.off) + len(self.prefilling) < (
                self.cfg.max_num_seqs
            ):
                lag = 1 if self.cfg.overlap else 0
                if self.cfg.recv_quorum:
                    # Attention-DP balancing: the next pass decides (a later arrival may
                    # complete the ranks before the timeout), and plans to the timeout.
                    return self._cut(t, extra=lag)
                return self._cut(t, extra=lag + self._steps_to_recv(t))
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
        handed_over: bool = False,
        shared: int = 0,
    ) -> list[int]:
        """Take over a running request whose KV cache (`cached` tokens) has arrived at time t;
        `reserved` blocks were set aside for it by `reserve`; `counted` when its load was
        already added to the router signal; `in_order` when it takes its place among the running
        requests by arrival time (a migrated request: the order that picks preemption victims)
        rather than joining last; `handed_over` when it comes from a prefill pool, so that the
        client's first token comes from here as the engine's `disagg_first_token` says;
        `shared` leading tokens of them sit in prefix blocks the `pin_owner` lane holds (a
        semi-PD hand-over), counted there and not among this replica's own blocks.
        Returns finished rids."""
        tab = self.table
        if handed_over:
            source = self.pred.engine.disagg_first_token
            if source == "prebuilt" and self.cfg.overlap:
                t_token = FIRST_PREBUILT  # resolved at admission: busy or idle
            elif source in ("decode_admit", "prebuilt"):
                t_token = FIRST_AT_ADMISSION
            elif source == "decode_step":
                # The last prompt token is recomputed here and the first token sampled again.
                cached -= 1
                tab.generated[rid] -= 1
                t_token = FIRST_AFTER_STEP
        self.incoming.append((rid, cached, t_token, reserved, in_order, min(shared, cached)))
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

    def next_pass_s(self, t: float) -> float:
        """When the engine's scheduler next looks at new work arriving at time t: the first
        step boundary at or after t of the work in flight (t itself when idle, or when t is
        past the work planned so far)."""
        if self.next_t == INF or t >= self.next_t:
            return t
        seg = self._seg
        if seg is None:
            return self.next_t  # an iteration with prefill tokens is in flight
        j = self._boundary(seg, t)
        return self._step_end_s(seg, j)

    def next_read_s(self, t: float) -> float:
        """When the engine's scheduler next reads new requests sent at time t: the next pass
        (`next_pass_s`), or with a receive interval while it decodes, the first pass boundary
        at which the interval comes round (SGLang's SchedulerRecvSkipper; an iteration with
        prefill tokens counts as a whole interval). Passes past the stretch in flight are
        assumed to last as its last one."""
        every = self.cfg.recv_interval
        seg = self._seg
        if every <= 1 or seg is None or self.next_t == INF or t >= self.next_t:
            return self.next_pass_s(t)
        j = self._boundary(seg, t)
        j += -(self.recv_steps + j) % every
        return self._step_end_s(seg, j)

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

    def completion_blocks(self, rid: int) -> int:
        """Blocks request `rid` holds at its end (prompt and every output token)."""
        tab = self.table
        return -(-int(tab.prompt_tokens[rid] + tab.output_tokens[rid]) // self.cfg.block_size)

    def fits_to_completion(self, rid: int) -> bool:
        """Whether request `rid` may be admitted: always, unless the engine reserves to
        completion and the admitted requests' final blocks leave too few for its own."""
        if not self.cfg.reserve_to_completion:
            return True
        return self.final_blocks + self.completion_blocks(rid) <= self.kv_blocks

    def hold_to_completion(self, rid: int) -> None:
        """Count an admitted request's final blocks (engines that reserve to completion)."""
        if self.cfg.reserve_to_completion:
            blocks = self.completion_blocks(rid)
            self.final_of[rid] = blocks
            self.final_blocks += blocks

    def _end_hold(self, rid: int) -> None:
        """A request left (finished, preempted, moved): its final blocks are free again."""
        if self.final_of:
            self.final_blocks -= self.final_of.pop(rid, 0)

    def can_preallocate(self, blocks: int) -> bool:
        """Whether a handed-over request of `blocks` blocks can be pre-allocated: `has_room`,
        with the decode reserve kept for every request here, in transfer, and this one (on a
        worker holding nothing it is enough that the request fits: the pool checked that)."""
        if self.retracted:  # retracted requests come back first (SGLang resumes them first)
            return False
        per = self.cfg.decode_reserve_tokens
        held = self.num_requests + self.promised
        if per and held:
            blocks += -(-per * (held + 1) // self.cfg.block_size)
        return self.has_room(blocks)

    def has_seat(self) -> bool:
        """Whether one more sequence may become active here: the engine's request cap
        (`max_num_seqs`; TensorRT-LLM's `max_batch_size`, SGLang's `max-running-requests`)
        counts requests still waiting for their KV as well as running ones."""
        return self.num_requests + self.promised < self.cfg.max_num_seqs

    def reserve(self, blocks: int) -> None:
        """Set blocks aside for a request that will arrive by `attach`."""
        self.fixed_blocks += blocks

    def unreserve(self, blocks: int) -> None:
        """Give back blocks set aside with `reserve`."""
        self.fixed_blocks -= blocks

    def release(self, rid: int, t: float, keep_pins: bool = False) -> None:
        """Prefill role: the request's KV has left; free its blocks (and pins, unless
        `keep_pins`: a semi-PD partner reads them in place until the request ends) at time t."""
        self._sample_at(t)  # the KV held up to t (the series steps down at t, not before)
        self.fixed_blocks -= self.held.pop(rid)
        if self.pins and not keep_pins:
            self._unpin(rid)
        tab = self.table
        self.outstanding_tokens -= tab.prompt_tokens[rid] + tab.output_tokens[rid]
        if self.next_t == INF and (self.waiting or self.prefilling):
            self.now = max(self.now, t)  # freed blocks may let a prompt (or its next chunk) in
            self._schedule()
        else:  # the time series sees the blocks go now (a partner may take them at once)
            self._sample_at(t)

    def partner_left(self, rid: int, t: float) -> None:
        """Semi-PD prefill lane: a request it handed to its partner lane left that lane at
        time t (finished, preempted, moved): the prefix blocks it read are unpinned."""
        self._sample_at(t)  # the KV held up to t
        self._unpin(rid)
        self._sample_at(t)

    def _sample_at(self, t: float) -> None:
        """Log the time series' point for blocks that went outside a scheduling pass."""
        self._sample_kv(max(self.now, t), len(self.off))

    def _sample_kv(self, t: float, n_run: int) -> None:
        """Log a time series point at t: sequences running (`n_run` decoding and the prompts
        in prefill) and the KV tokens held (the decode group at step G, prompts' and pinned
        blocks)."""
        self.samples.extend(
            (
                t,
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
            self._end_hold(rid)  # its reservation to completion goes with it
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
        mixed, extra = self._mixed, self.host_extra_s
        self.host_extra_s = 0.0
        if mixed is not None:
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
        if self.fresh_first and mixed is not None:
            self._defer_first_tokens(mixed, extra)
        return done

    def _launch_s(self, n_dec: int, chunks: list[tuple[list[int], int]]) -> float:
        """Host seconds to schedule and launch an iteration of `n_dec` decodes and these
        prefill chunks (`Predictor.host_s`: eager, piecewise or graph-replayed)."""
        pred, tokens = self.pred, self._forward_tokens(n_dec, chunks)
        return pred.host_s(tokens, len(chunks), n_dec) + pred.overhead_s(n_dec, len(chunks))

    def _defer_first_tokens(self, mixed: tuple, extra_s: float) -> None:
        """The first tokens the iteration `mixed` just produced leave once the engine has
        launched the next iteration (`EngineProfile.results_after_next_launch`): that launch
        starts when the previous one ended, so they wait for the host's two launches (with any
        kernel compiled inline, `extra_s` for `mixed`) when those outlast the iteration; at
        once when the engine goes idle."""
        fresh, self.fresh_first = self.fresh_first, []
        if self.next_t == INF:
            return
        _, dt, n_dec, chunks = mixed
        nxt = self._mixed
        if nxt is not None and nxt[0] == self.now:
            launched = self._launch_s(nxt[2], nxt[3]) + self.host_extra_s
        else:  # a decode stretch: its first step's launch
            launched = self._launch_s(len(self.off), [])
        delay = self._launch_s(n_dec, chunks) + extra_s + launched - dt
        if delay > 0.0:
            first = self.table.first_token_s
            for rid in fresh:
                first[rid] += delay

    # ---- scheduling ----------------------------------------------------------------------
    def _schedule(self) -> None:
        """Start the next iteration or decode stretch at `self.now`, or go idle."""
        cfg = self.cfg
        if self.lagged:
            self._release_lagged()
        if self.retracted:
            self._resume_retracted()
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
        if self.waiting and n_run and not n_pre and self._holds_prompts():
            self._start_decode(max_steps=1)
            return
        if (n_pre or (self.waiting and n_run + n_pre < cfg.max_num_seqs)) and self._start_mixed():
            return
        if self.off:  # (`_start_mixed` may have preempted every decode to make room)
            self._start_decode()
            return
        if self.waiting and not self.prefilling:
            self._cannot_fit()
        self.next_t = INF

    def _holds_prompts(self) -> bool:
        """TensorRT-LLM batch waiting: whether this pass holds the waiting prompts back (and
        counts the iteration), as PyExecutor's `_waiting_requests` does."""
        cfg = self.cfg
        if not (cfg.batch_wait_iters > 0 or cfg.batch_wait_ratio > 0.0):
            return False
        budget = cfg.max_num_batched_tokens
        n_dec = len(self.off)
        prompts = self.table.prompt_tokens
        ctx = 0
        for rid in self.waiting:
            ctx += int(prompts[rid])
            if ctx >= budget - n_dec:
                break
        tokens = min(ctx, budget - n_dec) + n_dec
        if self.batch_waited >= cfg.batch_wait_iters or tokens >= cfg.batch_wait_ratio * budget:
            self.batch_waited = 0
            return False
        self.batch_waited += 1
        return True

    def _steps_to_recv(self, t: float) -> int:
        """Decode steps past the first pass that could see t (with overlap at the boundary one
        step after the one at or after t, without it at that boundary) until a pass that reads
        new requests, in the stretch in flight."""
        every = self.cfg.recv_interval
        if every <= 1:
            return 0
        j = self._boundary(self._seg, t) + (1 if self.cfg.overlap else 0)
        return -(self.recv_steps + j) % every

    def _release_lagged(self) -> None:
        """Overlap scheduling: arrivals that came before the iteration just ended started are
        seen by this pass (without overlap, every arrival until its end); with nothing
        running, the engine's loop sees every arrival. With a receive interval the busy engine
        reads them only every `recv_interval` decode steps (or right after an iteration that
        carried prefill tokens)."""
        lagged, waiting = self.lagged, self.waiting
        if not (self.off or self.prefilling or waiting or self.incoming):
            while lagged:
                waiting.append(lagged.popleft()[1])
            self.recv_steps = 0
            return
        cfg = self.cfg
        start = self.iter_start if cfg.overlap else self.now
        if cfg.recv_interval > 1 and self.recv_steps < cfg.recv_interval:
            q = cfg.recv_quorum
            if not q:
                return
            # Attention-DP balancing: go before the timeout when every rank has a prompt or
            # some rank has no sequence to decode.
            seen = [rid for a, rid in lagged if a <= start]
            if len(self.off) >= q and not _covers_ranks(waiting, seen, q):
                return
        if cfg.recv_interval > 1:
            self.recv_steps = 0
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
