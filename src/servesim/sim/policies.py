"""Scheduling policies of one replica: which waiting request runs next and which running one
gives way, plus the output-length estimates deadline-aware scheduling depends on.

- `fcfs`: vLLM's default. Arrival order; under memory pressure the newest running request is
  preempted and recomputed later.
- `priority`: vLLM's `--scheduling-policy priority`. Lower `priority` first (then arrival); a
  waiting request that does not fit preempts the lowest-priority running one, by recompute or by
  swapping its KV cache to host memory over PCIe (whose per-copy cost FastSwitch measures).
- `slack`: deadline-aware in the manner of JITServe. Each request gets the latest time it can
  start (or continue) and still meet its class's SLO, from an output-length estimate that is
  noisy at first and refined as tokens arrive; the least slack runs first, requests with the
  most slack give way, and requests that can no longer make it go last.
- `deadline`: workflow-aware urgency as HEXGEN-Text2SQL orders its queues. A request's
  `priority` is the latest time (µs) it can start and still let its workflow meet its SLO
  (`sim.workflows`); the earliest runs first, a request released already past it goes last (its
  workflow is lost; serving it first would make others late too), and nothing is preempted.
- `laps`: LAPS's dual queues. Prompts up to a threshold form the short queue, which runs first,
  and an iteration batches only one kind (temporal disaggregation of short and long prefills).

`prefill_preemption` (FlowPrefill) lets a more urgent arrival interrupt a prefill-only iteration at
the next operator boundary; the interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.iteration import Predictor
from servesim.spec.memory import kv_bytes_per_token_per_device

POLICIES = ("fcfs", "priority", "slack", "laps", "deadline")
PREEMPTION_MODES = ("recompute", "swap")
ESTIMATE_SOURCES = ("oracle", "trace", "noisy")
_NORMAL = NormalDist()
HOPELESS_S = 1e9  # added to the key of a request that can no longer meet its SLO


@dataclass(frozen=True)
class ClassSlo:
    """Latency targets of one SLO class; `e2e_s` set makes it deadline-sensitive (whole reply)."""

    ttft_s: float
    tpot_s: float
    e2e_s: float | None = None

    def __post_init__(self) -> None:
        if self.ttft_s <= 0 or self.tpot_s <= 0 or (self.e2e_s is not None and self.e2e_s <= 0):
            raise ServesimError(
                "SLO class targets must be positive seconds, e.g. ClassSlo(1, 0.1)."
            )


@dataclass(frozen=True)
class LengthEstimator:
    """Where output-length estimates come from and how good they are.

    `oracle` knows every length; `trace` knows only the workload's length distribution (the same
    estimate for every request); `noisy` is a per-request predictor whose log-error is normal with
    standard deviation `error` (CASTILLO shows the same prompt yields widely varying lengths, so
    even a good predictor has an irreducible error). The estimate is the `quantile` of the belief;
    with `refine`, the belief is conditioned on the tokens generated so far (L > generated).
    """

    source: str = "oracle"
    error: float = 0.5
    quantile: float = 0.5
    refine: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in ESTIMATE_SOURCES:
            raise ServesimError(
                f"Length estimate source {self.source!r} is unknown; use one of "
                f"{', '.join(ESTIMATE_SOURCES)}."
            )
        if not (0.0 < self.quantile < 1.0) or self.error < 0:
            raise ServesimError(
                "Length estimator needs 0 < quantile < 1 and error ≥ 0, e.g. quantile=0.5."
            )


class LengthModel:
    """Per-request output-length beliefs for one run."""

    def __init__(self, est: LengthEstimator, true_outputs: Any) -> None:
        self.est = est
        # Arrays, indexed by the request's index in the workload (not a list per request: a
        # trace may hold millions).
        self.true = np.asarray(true_outputs, dtype=np.int64)
        self.population = np.sort(self.true)
        rng = np.random.default_rng(est.seed)
        noise = rng.standard_normal(len(self.true)) * est.error
        self.mu = np.log(np.maximum(1, self.true)) + noise

    def predicted(self, rid: int) -> float:
        """The estimate of the total output length before any token is generated."""
        return self.remaining(rid, 0)

    def remaining(self, rid: int, generated: int, quantile: float | None = None) -> float:
        """Estimated output tokens still to come after `generated` (at least 1), at the
        estimator's quantile or the one given."""
        est = self.est
        if est.source == "oracle" or (est.source == "noisy" and est.error == 0):
            return max(1.0, int(self.true[rid]) - generated)
        q = est.quantile if quantile is None else quantile
        if est.source == "trace":
            pop = self.population
            lo = int(np.searchsorted(pop, generated, side="right")) if est.refine else 0
            if lo >= len(pop):
                return max(1.0, 0.25 * generated)  # longer than anything seen: a quarter more
            total = int(pop[lo + int(q * (len(pop) - 1 - lo))])
            return max(1.0, total - generated)
        mu, sigma = float(self.mu[rid]), est.error
        if not est.refine or generated <= 0:
            total = math.exp(mu + sigma * _NORMAL.inv_cdf(q))
        else:
            u = _NORMAL.cdf((math.log(generated) - mu) / sigma)
            p = min(1.0 - 1e-12, u + q * (1.0 - u))
            total = math.exp(mu + sigma * _NORMAL.inv_cdf(p))
        return max(1.0, total - generated)


@dataclass(frozen=True)
class Policy:
    """How one replica orders and preempts requests (see the module docstring)."""

    name: str = "fcfs"
    preemption: str = "recompute"
    swap_group_blocks: int = 1  # KV pages per PCIe copy: 1 as vLLM, larger as FastSwitch
    swap_copy_overhead_s: float = 10e-6  # per cudaMemcpyAsync: launch and DMA set-up
    class_slos: tuple[ClassSlo, ...] = ()  # per `priority` value (the SLO class), for `slack`
    laps_threshold_tokens: int = 1024
    estimator: LengthEstimator = field(default_factory=LengthEstimator)
    preempt_margin_s: float = 0.25  # slack: how soon "just in time" is
    prefill_preemption: bool = False  # FlowPrefill: operator-level preemption of prefills
    operators_per_layer: int = 8  # preemption points per layer (norms, QKV, attention, ...)

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ServesimError(
                f"Scheduling policy {self.name!r} is unknown; use one of {', '.join(POLICIES)}."
            )
        if self.preemption not in PREEMPTION_MODES:
            raise ServesimError(
                f"Preemption mode {self.preemption!r} is unknown; use recompute or swap."
            )
        if self.swap_group_blocks < 1 or self.swap_copy_overhead_s < 0:
            raise ServesimError("swap_group_blocks must be ≥ 1 and the copy overhead ≥ 0 s.")
        if self.name == "slack" and not self.class_slos:
            raise ServesimError(
                "The slack policy needs class_slos (one ClassSlo per priority value)."
            )
        if self.prefill_preemption and self.name == "fcfs":
            raise ServesimError(
                "Prefill preemption needs an urgency order; use policy priority, slack or laps."
            )

    @property
    def is_fcfs(self) -> bool:
        """True for the default path (arrival order, newest preempted, recompute)."""
        return self.name == "fcfs" and self.preemption == "recompute"


class KeyedQueue:
    """A waiting queue ordered by a policy key (lowest first), with the deque methods the
    replica uses (`append`, `appendleft`, `popleft`, `[0]`)."""

    __slots__ = ("_heap", "_key", "_seq")

    def __init__(self, key: Callable[[int], Any]) -> None:
        self._heap: list[tuple[Any, int, int]] = []
        self._key = key
        self._seq = 0

    def append(self, rid: int) -> None:
        """Queue a request under its current key."""
        self._seq += 1
        heapq.heappush(self._heap, (self._key(rid), self._seq, rid))

    appendleft = append  # a preempted request goes back under its key, not to the front

    def popleft(self) -> int:
        """Remove and return the most urgent request."""
        return heapq.heappop(self._heap)[2]

    def __getitem__(self, i: int) -> int:
        if i != 0 or not self._heap:
            raise IndexError("only the head of a keyed queue can be read")
        return self._heap[0][2]

    def head_key(self) -> Any:
        """Key of the most urgent request."""
        return self._heap[0][0]

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)


class PolicyState:
    """A policy bound to one run's request table and one replica's predictor. The table is
    indexed by slot; `table.request_id` gives the request's index in the workload, which
    breaks ties between equal keys and indexes `outputs` (every request's output length)."""

    def __init__(self, policy: Policy, table: Any, pred: Predictor, outputs: Any = None) -> None:
        self.policy = policy
        self.table = table
        self.pred = pred
        if outputs is None:
            outputs = table.output_tokens
        self.lengths = LengthModel(policy.estimator, outputs)
        # Service-time rates the slack policy plans with: a 1024-token prefill, a decode step of
        # a 32-sequence batch at 1024 tokens of context each.
        self.prefill_s_per_token = pred.step_s(0, 0, ((1024, 0),)) / 1024.0
        c0, c1 = pred.decode_step_coeffs(32)
        self.step_s = c0 + c1 * 32 * 1024
        model, par = pred.model, pred.par
        self.kv_page_bytes = kv_bytes_per_token_per_device(model, par)  # per token, per device
        self.layers = pred.layers_per_stage
        self.swaps = 0
        self.swap_s = 0.0
        name = policy.name
        if name == "priority":
            self.key = self._priority_key
            self.run_key = self._priority_key
        elif name == "laps":
            self.key = self._laps_key
            self.run_key = self._laps_key
        elif name == "deadline":
            self.key = self._deadline_key
            self.run_key = self._deadline_key
        elif name == "slack":
            self.key = self._slack_key
            self.run_key = self._slack_run_key
        else:
            self.key = self._fcfs_key
            self.run_key = self._fcfs_key

    # ---- keys: lower runs sooner; the running request with the highest key gives way -------
    def _fcfs_key(self, rid: int) -> tuple[float, int]:
        tab = self.table
        return (tab.arrival_s[rid], tab.request_id[rid])

    def _priority_key(self, rid: int) -> tuple[int, float, int]:
        tab = self.table
        return (tab.priority[rid], tab.arrival_s[rid], tab.request_id[rid])

    def _deadline_key(self, rid: int) -> tuple[int, int, int]:
        tab = self.table
        latest = tab.priority[rid]
        late = 1 if tab.arrival_s[rid] * 1e6 > latest else 0
        return (late, latest, tab.request_id[rid])

    def _laps_key(self, rid: int) -> tuple[int, float, int]:
        tab = self.table
        long = tab.prompt_tokens[rid] > self.policy.laps_threshold_tokens
        return (1 if long else 0, tab.arrival_s[rid], tab.request_id[rid])

    def is_long(self, rid: int) -> bool:
        """LAPS: whether a request belongs to the long-prefill queue."""
        return self.table.prompt_tokens[rid] > self.policy.laps_threshold_tokens

    def batch_class(self, rid: int) -> int | None:
        """Prefills of different classes never share an iteration: LAPS separates short and
        long prompts; with preemptible prefill (FlowPrefill) urgent work is not batched with
        work it may have to interrupt. None when anything may be batched together."""
        p = self.policy
        if p.name == "laps":
            return 1 if self.is_long(rid) else 0
        if p.prefill_preemption:
            return self.table.priority[rid] if p.name == "priority" else int(self.is_long(rid))
        return None

    def slo_of(self, rid: int) -> ClassSlo:
        """The SLO class of a request (its `priority` value, clipped to the classes given)."""
        slos = self.policy.class_slos
        return slos[min(max(self.table.priority[rid], 0), len(slos) - 1)]

    def _slack_key(self, rid: int) -> float:
        """Latest start time that still meets the request's SLO (for waiting requests)."""
        tab = self.table
        slo = self.slo_of(rid)
        gen = tab.generated[rid]
        prefill = (tab.prompt_tokens[rid] + gen) * self.prefill_s_per_token
        first = tab.first_token_s[rid]
        if gen > 0 and first >= 0:  # preempted: recompute first
            if first - tab.arrival_s[rid] > slo.ttft_s:
                return first + HOPELESS_S  # missed already: last
            if slo.e2e_s is None:  # a stream whose tokens are now late: first
                return first - prefill
            return self._slack_run_key(rid) - prefill
        if slo.e2e_s is not None:
            rem = self.lengths.remaining(tab.request_id[rid], 0)
            latest = tab.arrival_s[rid] + slo.e2e_s - prefill - rem * self.step_s
        else:
            latest = tab.arrival_s[rid] + slo.ttft_s - prefill
        return latest

    def _slack_run_key(self, rid: int) -> float:
        """Latest time a running request can keep decoding from and still meet its SLO.

        A streaming request (TPOT target) needs its tokens at a steady rate, which the running
        batch gives it: it is never the one to pause, unless it already missed its TTFT (no
        goodput left to win), when it goes last. A whole-reply deadline leaves slack that the
        policy spends just in time; its remaining length is taken on the cautious side of the
        belief (the estimator's quantile: more tokens, less slack).
        """
        tab = self.table
        slo = self.slo_of(rid)
        first = tab.first_token_s[rid]
        if first >= 0 and first - tab.arrival_s[rid] > slo.ttft_s:
            return first + HOPELESS_S
        if slo.e2e_s is None:
            return -HOPELESS_S + (first if first >= 0 else tab.arrival_s[rid])
        gen = max(1, tab.generated[rid])
        rem = self.lengths.remaining(tab.request_id[rid], gen)
        return tab.arrival_s[rid] + slo.e2e_s - rem * self.step_s

    @property
    def preempts(self) -> bool:
        """Whether a waiting request may preempt a running one to get in."""
        return self.policy.name in ("priority", "slack")

    def outranks(self, waiting_key: Any, running_key: Any, victim: int, now: float) -> bool:
        """Whether a waiting request may preempt a running one: a strictly better priority
        class (vLLM); for slack, only just in time — the waiting request must start within
        `preempt_margin_s` to meet its SLO, and the victim must still have that much slack
        after paying for its own recomputation."""
        if self.policy.name == "priority":
            return running_key[0] > waiting_key[0]
        if self.policy.name == "slack":
            margin = self.policy.preempt_margin_s
            tab = self.table
            redo = (tab.prompt_tokens[victim] + tab.generated[victim]) * self.prefill_s_per_token
            return waiting_key <= now + margin and running_key - redo >= now + margin
        return False

    # ---- swap cost --------------------------------------------------------------------------
    def swap_seconds(self, blocks: int, block_size: int) -> float:
        """PCIe time to move `blocks` KV pages one way: one copy per group of pages per layer
        for keys and values (vLLM copies page by page; FastSwitch groups them), each paying a
        fixed overhead, plus the bytes at the host link's bandwidth (every GPU of the replica
        moves its own shard over its own link)."""
        if blocks <= 0:
            return 0.0
        p = self.policy
        copies = -(-blocks // p.swap_group_blocks) * self.layers * 2
        nbytes = blocks * block_size * self.kv_page_bytes
        host_bw = self.pred.device.host_bw_bytes_per_s
        return copies * p.swap_copy_overhead_s + nbytes / host_bw
