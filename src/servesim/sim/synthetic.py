"""Workloads described rather than recorded: token-length distributions (fixed, uniform, lognormal,
empirical from a trace), `synthetic` open-loop workloads and `ClosedLoop` fixed-concurrency
benchmarks. Every draw is deterministic under a seed, so two runs of a plan see the same traffic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from servesim.errors import ServesimError
from servesim.sim import traces as trace_mod
from servesim.sim.workload import (
    Seed,
    Workload,
    _check_count,
    _rng,
    gamma_arrivals,
    poisson_arrivals,
)

# Standard normal quantile at 0.9: ln(p90 / p50) / Z90 is the log-space sigma of a lognormal.
Z90 = 1.2815515655446004


class LengthDist(Protocol):
    """Anything that draws n token counts (int64, >= 1)."""

    def sample(self, n: int, rng: Seed = 0) -> np.ndarray: ...


@dataclass(frozen=True)
class Fixed:
    """Every request has exactly `tokens` tokens."""

    tokens: int

    def __post_init__(self) -> None:
        _check_count(self.tokens, "Fixed length")

    def sample(self, n: int, rng: Seed = 0) -> np.ndarray:
        """n copies of the fixed length."""
        return np.full(int(n), int(self.tokens), dtype=np.int64)


@dataclass(frozen=True)
class Uniform:
    """Token counts drawn uniformly from the integers lo..hi inclusive."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        _check_count(self.lo, "Uniform lower bound")
        _check_count(self.hi, "Uniform upper bound")
        if self.lo > self.hi:
            raise ServesimError(
                f"Uniform length has lo={self.lo} > hi={self.hi}; swap them so lo <= hi."
            )

    def sample(self, n: int, rng: Seed = 0) -> np.ndarray:
        """n integers uniform on [lo, hi]."""
        return _rng(rng).integers(self.lo, self.hi, size=int(n), endpoint=True, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal:
    """Lognormal token counts given by their median and 90th percentile, clipped to [min, max].

    Parametrised by quantiles because trace statistics are quoted that way (the Azure conv trace:
    prompt p50 1042, p90 2375): mu = ln(median), sigma = ln(p90 / median) / 1.2816.
    Clipping moves the tail mass onto the bounds, so the clipped p90 is unchanged when it lies
    inside them.
    """

    median: float
    p90: float
    min_tokens: int = 1
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median) and self.median >= 1):
            raise ServesimError(f"Lognormal median {self.median!r} must be a number >= 1 token.")
        if not (math.isfinite(self.p90) and self.p90 >= self.median):
            raise ServesimError(
                f"Lognormal p90 {self.p90!r} must be >= the median {self.median!r}; "
                "the 90th percentile cannot be below the 50th."
            )
        _check_count(self.min_tokens, "Lognormal min_tokens")
        if self.max_tokens is not None:
            _check_count(self.max_tokens, "Lognormal max_tokens")
            if self.max_tokens < self.min_tokens:
                raise ServesimError(
                    f"Lognormal max_tokens={self.max_tokens} is below min_tokens="
                    f"{self.min_tokens}; raise max_tokens."
                )
            if self.max_tokens < self.median:  # more than half the draws would be the cap
                raise ServesimError(
                    f"Lognormal max_tokens={self.max_tokens} is below the median "
                    f"{self.median:g}, so most lengths would be the cap; raise the maximum or "
                    "lower the median."
                )

    @property
    def mu(self) -> float:
        """Log-space mean (= ln median)."""
        return math.log(self.median)

    @property
    def sigma(self) -> float:
        """Log-space standard deviation."""
        return math.log(self.p90 / self.median) / Z90

    def sample(self, n: int, rng: Seed = 0) -> np.ndarray:
        """n lognormal draws rounded to whole tokens and clipped to [min_tokens, max_tokens]."""
        x = np.rint(_rng(rng).lognormal(self.mu, self.sigma, size=int(n)))
        hi = np.inf if self.max_tokens is None else self.max_tokens
        return np.clip(x, self.min_tokens, hi).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Empirical:
    """Token counts resampled (with replacement) from observed values, e.g. a trace's lengths."""

    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.values).reshape(-1)
        if len(arr) == 0:
            raise ServesimError("Empirical length distribution needs at least one value.")
        if not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.floor(arr)):
            raise ServesimError("Empirical lengths must be whole token counts.")
        if arr.min() < 1:
            raise ServesimError(
                f"Empirical lengths include {arr.min()}; every token count must be >= 1."
            )
        object.__setattr__(self, "values", arr.astype(np.int64))

    def sample(self, n: int, rng: Seed = 0) -> np.ndarray:
        """n values drawn uniformly with replacement."""
        return _rng(rng).choice(self.values, size=int(n), replace=True)


def as_length(spec: LengthDist | int | str) -> LengthDist:
    """Accept a distribution, a fixed token count, or a CLI spec string."""
    if isinstance(spec, str):
        return parse_length(spec)
    if isinstance(spec, int | np.integer) and not isinstance(spec, bool):
        return Fixed(int(spec))
    if hasattr(spec, "sample"):
        return spec
    raise ServesimError(f"Length {spec!r} is not understood; give an int, a spec string or a dist.")


_SPEC_HELP = "use fixed:N, uniform:LO:HI, lognormal:MEDIAN:P90[:MAX] or trace[:NAME_OR_PATH]"


def parse_length(spec: str, which: str = "prompt", trace: Workload | None = None) -> LengthDist:
    """Parse a CLI length spec: `1024`, `fixed:1024`, `uniform:100:2000`,
    `lognormal:MEDIAN:P90[:MAX]`, `trace` (lengths of the given `trace`) or `trace:NAME_OR_PATH`
    (a bundled trace name such as azure_conv, or a trace file). `which` picks prompt or output
    lengths for `trace` specs.
    """
    if which not in ("prompt", "output"):
        raise ServesimError(f"Length kind {which!r} is unknown; use 'prompt' or 'output'.")
    text = str(spec).strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    args = rest.split(":") if rest else []
    try:
        if kind.isdigit() and not rest:
            return Fixed(int(kind))
        if kind == "fixed" and len(args) == 1:
            return Fixed(int(args[0]))
        if kind == "uniform" and len(args) == 2:
            return Uniform(int(args[0]), int(args[1]))
        if kind == "lognormal" and len(args) in (2, 3):
            mx = int(args[2]) if len(args) == 3 else None
            return LogNormal(float(args[0]), float(args[1]), max_tokens=mx)
    except ValueError:
        raise ServesimError(
            f"Length spec {spec!r} has a non-numeric value; {_SPEC_HELP}."
        ) from None
    if kind == "trace":
        if rest:
            source = trace_mod.bundled_or_file(rest)
        elif trace is not None:
            source = trace
        else:
            raise ServesimError(
                "Length spec 'trace' needs a trace; pass one or write trace:azure_conv."
            )
        return Empirical(source.prompt_tokens if which == "prompt" else source.output_tokens)
    raise ServesimError(f"Length spec {spec!r} is not understood; {_SPEC_HELP}.")


def synthetic(
    num_requests: int,
    rate_per_s: float,
    prompt: LengthDist | int | str,
    output: LengthDist | int | str,
    arrival: str = "poisson",
    cv: float = 1.0,
    seed: Seed = 0,
    name: str = "",
) -> Workload:
    """An open-loop workload: Poisson or gamma arrivals with sampled prompt/output lengths."""
    _check_count(num_requests, "Number of requests")
    gen = _rng(seed)
    if arrival == "poisson":
        if cv != 1.0:
            raise ServesimError(
                f"Poisson arrivals have cv 1, not {cv}; use arrival='gamma' for cv {cv}."
            )
        arrivals = poisson_arrivals(num_requests, rate_per_s, gen)
    elif arrival == "gamma":
        arrivals = gamma_arrivals(num_requests, rate_per_s, cv, gen)
    else:
        raise ServesimError(f"Arrival process {arrival!r} is unknown; use 'poisson' or 'gamma'.")
    p, o = as_length(prompt), as_length(output)
    label = name or f"synthetic-{arrival}-{rate_per_s:g}rps"
    return Workload(arrivals, p.sample(num_requests, gen), o.sample(num_requests, gen), name=label)


def range_ratio_length(tokens: int, ratio: float, convention: str = "symmetric") -> LengthDist:
    """Lengths as a benchmark client's `--random-range-ratio` draws them around a nominal length,
    uniform over whole tokens:

    - `symmetric`: vLLM's `vllm bench serve` (vllm/benchmarks/datasets.py, RandomDataset):
      [int(L(1 - r)), int(L(1 + r))], mean L; r must be < 1.
    - `below`: the benchmark_serving.py fork InferenceX runs (SemiAnalysisAI/InferenceX,
      utils/bench_serving/benchmark_serving.py, sample_random_requests) and srt-slurm's sa-bench:
      [int(L r), L], mean about L(1 + r)/2; r in [0, 1], and r = 1 is the fixed length L.

    r = 0 (symmetric) or 1 (below) gives `Fixed(L)`.
    """
    _check_count(tokens, "Nominal length")
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio >= 0):
        raise ServesimError(f"Length range ratio {ratio!r} must be a number >= 0.")
    if convention == "symmetric":
        if ratio >= 1:
            raise ServesimError(
                f"Length range ratio {ratio} must be below 1 for lengths in [L(1-r), L(1+r)]."
            )
        lo, hi = int(tokens * (1 - ratio)), int(tokens * (1 + ratio))
    elif convention == "below":
        if ratio > 1:
            raise ServesimError(
                f"Length range ratio {ratio} must be at most 1 for lengths in [L*r, L]."
            )
        lo, hi = int(tokens * ratio), int(tokens)
    else:
        raise ServesimError(
            f"Length range convention {convention!r} is unknown; use 'symmetric' or 'below'."
        )
    lo = max(1, lo)
    return Fixed(int(tokens)) if lo >= hi else Uniform(lo, hi)


# How a closed loop's client picks from its prompt pool (`ClosedLoop.dataset_entries`).
DATASET_SAMPLING = ("shuffle", "random", "sequential")
# Granularity of a pooled prompt's prefix hash blocks: a whole number of every engine's KV page
# (vLLM 16 tokens, TRT-LLM 32, SGLang 1), so a repeated prompt recomputes at most 64 tokens.
DATASET_BLOCK_TOKENS = 64


@dataclass(frozen=True)
class ClosedLoop:
    """A fixed-concurrency benchmark: `clients` users, each sending its next request think_s
    after its previous one finishes, until num_requests have been sent. The simulator drives
    the timing; this holds the spec and the pre-drawn lengths.

    By default all clients send their first request at 0. The options below mirror what real
    benchmark clients do (presets in `sim.clients`):

    - `ramp_s`: the concurrency limit rises from 1 to `clients` in equal steps over ramp_s
      (aiperf `--concurrency-ramp-duration`), so client i's first request goes at
      i * ramp_s / (clients - 1).
    - `request_rate_per_s`: requests become eligible at this mean rate (gamma intervals of
      shape `burstiness`, 1 = Poisson) and go when eligible and a client is free, as vLLM's
      benchmark_serving.py `get_request` with `--max-concurrency` does (eligibility does not
      wait for a free client, so a backlog goes out as clients free up). inf: no pacing.
    - `warmup_requests`: the first requests form a warm-up phase; the measured phase starts when
      all of them have finished (benchmark_serving.py `--num-warmups` and aiperf
      `--warmup-request-count` both finish the warm-up before the profile starts). Warm-up
      requests are the first request ids and are left out of `SimResult.summary`.
    - `warmup_repeats_first`: every warm-up request sends the measured phase's first request
      (its prompt and output length) again, as benchmark_serving.py's `--num-warmups` does
      (`test_prompt = input_requests[0]`); otherwise warm-ups are drawn like the others.
    - `jitter_s`: extra per-request delay, uniform in [0, jitter_s) (no client cites one).
    - `dataset_entries`: the client draws its prompts from a pool of this many distinct ones
      (aiperf's synthetic dataset holds `--num-dataset-entries`, 100 by default, and reuses
      them until the run ends), picked by `dataset_sampling`: "shuffle" (every entry once per
      pass in a fresh random order, aiperf's default), "random" (with replacement) or
      "sequential". A repeated prompt is the same token sequence, so an engine's prefix cache
      serves it (`prefix_hashes`). 0: every request is a new prompt.
    Ramp and rate are measured from the start of each phase.
    """

    clients: int
    num_requests: int
    prompt: LengthDist
    output: LengthDist
    think_s: float = 0.0
    seed: int = 0
    jitter_s: float = 0.0  # extra client/network delay per request, uniform in [0, jitter_s)
    ramp_s: float = 0.0
    request_rate_per_s: float = math.inf
    burstiness: float = 1.0
    warmup_requests: int = 0
    dataset_entries: int = 0
    dataset_sampling: str = "shuffle"
    warmup_repeats_first: bool = False

    def __post_init__(self) -> None:
        _check_count(self.clients, "Number of clients")
        if not (math.isfinite(self.jitter_s) and self.jitter_s >= 0):
            raise ServesimError(f"Jitter {self.jitter_s!r} must be a number of seconds >= 0.")
        _check_count(self.num_requests, "Number of requests")
        if not (math.isfinite(self.think_s) and self.think_s >= 0):
            raise ServesimError(f"Think time {self.think_s!r} must be a number of seconds >= 0.")
        if not (isinstance(self.ramp_s, int | float) and math.isfinite(self.ramp_s)) or (
            self.ramp_s < 0
        ):
            raise ServesimError(f"Ramp time {self.ramp_s!r} must be a number of seconds >= 0.")
        rate = self.request_rate_per_s
        if not isinstance(rate, int | float) or math.isnan(rate) or rate <= 0:
            raise ServesimError(
                f"Request rate {rate!r} must be a number of requests per second > 0 (inf: "
                "send as soon as a client is free)."
            )
        b = self.burstiness
        if not (isinstance(b, int | float) and math.isfinite(b) and b > 0):
            raise ServesimError(f"Burstiness {b!r} must be a number > 0 (1 is Poisson).")
        w = self.warmup_requests
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 0:
            raise ServesimError(f"Warm-up requests {w!r} must be a whole number >= 0.")
        if w >= self.num_requests:
            raise ServesimError(
                f"Warm-up of {w} requests leaves none of the {self.num_requests} to measure; "
                "raise num_requests or lower warmup_requests."
            )
        e = self.dataset_entries
        if isinstance(e, bool) or not isinstance(e, int | np.integer) or e < 0:
            raise ServesimError(
                f"Dataset entries {e!r} must be a whole number >= 0 (0: every prompt new)."
            )
        if self.dataset_sampling not in DATASET_SAMPLING:
            raise ServesimError(
                f"Dataset sampling {self.dataset_sampling!r} is unknown; use one of "
                f"{', '.join(DATASET_SAMPLING)}."
            )
        object.__setattr__(self, "prompt", as_length(self.prompt))
        object.__setattr__(self, "output", as_length(self.output))

    @cached_property
    def entry_of(self) -> np.ndarray | None:
        """The dataset entry each request sends (issue order), or None without a pool."""
        e, n = int(self.dataset_entries), self.num_requests
        if not e:
            return None
        if self.dataset_sampling == "sequential":
            return self._repeat_first(np.arange(n) % e)
        gen = _rng(self.seed + 3)
        if self.dataset_sampling == "random":
            return self._repeat_first(gen.integers(0, e, size=n))
        passes = -(-n // e)
        return self._repeat_first(np.concatenate([gen.permutation(e) for _ in range(passes)])[:n])

    def _repeat_first(self, values: np.ndarray) -> np.ndarray:
        """`values` (per request) with the warm-ups' set to the measured phase's first one's
        when warm-ups repeat it (`warmup_repeats_first`)."""
        w = self.warmup_requests
        if self.warmup_repeats_first and w:
            values[:w] = values[w]
        return values

    @cached_property
    def _lengths(self) -> tuple[np.ndarray, np.ndarray]:
        gen = _rng(self.seed)
        m = int(self.dataset_entries) or self.num_requests
        p, o = self.prompt.sample(m, gen), self.output.sample(m, gen)
        idx = self.entry_of
        if idx is None:  # each request its own prompt; a pool's warm-ups repeat an entry
            return self._repeat_first(p), self._repeat_first(o)
        return p[idx], o[idx]

    @property
    def prefix_block_tokens(self) -> int:
        """Tokens per prefix hash block (`prefix_hashes`); 0 without a prompt pool."""
        return DATASET_BLOCK_TOKENS if self.dataset_entries else 0

    @cached_property
    def prefix_hashes(self) -> list[list[int]] | None:
        """Per request, the hash ids of its prompt's blocks: requests sending the same
        dataset entry share all of them, different entries none. None without a pool."""
        idx = self.entry_of
        if idx is None:
            return None
        p = self.prompt_tokens
        blocks = np.zeros(int(self.dataset_entries), dtype=np.int64)
        blocks[idx] = -(-p // DATASET_BLOCK_TOKENS)
        stride = int(blocks.max()) + 1
        lists = [list(range(k * stride, k * stride + int(b))) for k, b in enumerate(blocks)]
        return [lists[k] for k in idx]  # one shared list per entry

    @property
    def prompt_tokens(self) -> np.ndarray:
        """Prompt lengths of requests 0..num_requests-1 in issue order (deterministic)."""
        return self._lengths[0]

    @property
    def output_tokens(self) -> np.ndarray:
        """Output lengths of requests 0..num_requests-1 in issue order (deterministic)."""
        return self._lengths[1]

    @cached_property
    def delays_s(self) -> np.ndarray:
        """Per-request delay before it reaches the server: think time plus uniform jitter."""
        gen = _rng(self.seed + 1)
        return self.think_s + self.jitter_s * gen.random(self.num_requests)

    @property
    def paced(self) -> bool:
        """Whether the send times follow more than 'as soon as a client is free' (a ramp, a
        request rate or a warm-up phase)."""
        return self.ramp_s > 0 or math.isfinite(self.request_rate_per_s) or self.warmup_requests > 0

    @cached_property
    def release_s(self) -> np.ndarray | None:
        """Earliest send time of each request from the start of its phase (ramp and request
        rate), or None when neither applies."""
        if self.ramp_s <= 0 and not math.isfinite(self.request_rate_per_s):
            return None
        n, w = self.num_requests, self.warmup_requests
        gen = _rng(self.seed + 2)
        parts = [self._phase_release(m, gen) for m in ((w, n - w) if w else (n,))]
        return np.concatenate(parts)

    def _phase_release(self, m: int, gen: np.random.Generator) -> np.ndarray:
        out = np.zeros(m)
        if math.isfinite(self.request_rate_per_s):
            # benchmark_serving.py get_request: the first request at once, then gamma intervals
            # of shape b and scale 1 / (rate b) (mean 1 / rate).
            b = self.burstiness
            gaps = gen.gamma(b, 1.0 / (self.request_rate_per_s * b), size=max(0, m - 1))
            out[1:] = np.cumsum(gaps)
        if self.ramp_s > 0 and self.clients > 1:
            k = min(m, self.clients)
            steps = np.arange(k) * (self.ramp_s / (self.clients - 1))
            out[:k] = np.maximum(out[:k], steps)
        return out

    def pacer(self) -> ClientPacer:
        """A fresh per-run schedule of this loop's send times (the simulator drives it)."""
        return ClientPacer(self)

    def request(self, i: int) -> tuple[int, int]:
        """(prompt_tokens, output_tokens) of the i-th request issued (0-based)."""
        if not 0 <= i < self.num_requests:
            raise ServesimError(
                f"Request index {i} is outside 0..{self.num_requests - 1} of this closed loop."
            )
        return int(self._lengths[0][i]), int(self._lengths[1][i])


class ClientPacer:
    """One run of a closed loop: which request each client sends next and when. The driver
    calls `start` once and `finished(t)` for every request that ends at t; both return the
    (send time, request index) pairs that became due, in index order."""

    __slots__ = (
        "barrier", "clients", "delays", "done", "first", "n", "next", "phase_t", "release",
        "warm_end",
    )  # fmt: skip

    def __init__(self, loop: ClosedLoop) -> None:
        self.clients = loop.clients
        self.n = loop.num_requests
        delays = loop.delays_s
        self.delays = delays.tolist()  # plain floats: one lookup per finished request
        self.first = (delays - loop.think_s).tolist()  # a client's first request: its jitter
        rel = loop.release_s
        self.release = None if rel is None else rel.tolist()
        self.barrier = loop.warmup_requests  # index where the measured phase starts (0: none)
        self.next = 0
        self.done = 0
        self.phase_t = 0.0
        self.warm_end = 0.0  # the latest end among the warm-up requests reported so far

    def _phase(self, t0: float, end: int) -> list[tuple[float, int]]:
        self.phase_t = t0
        lo = self.next
        hi = min(end, lo + self.clients)
        self.next = hi
        rel, first = self.release, self.first
        return [(t0 + first[g] + (rel[g] if rel is not None else 0.0), g) for g in range(lo, hi)]

    def start(self) -> list[tuple[float, int]]:
        """The first request of each client (of the warm-up phase, if any)."""
        return self._phase(0.0, self.barrier or self.n)

    def finished(self, t: float, request_id: int = -1) -> list[tuple[float, int]]:
        """A request (any: clients are alike, so `request_id` does not matter) ended at t: the
        freed client's next request, or at the end of the warm-up the measured phase's first
        requests. Ends may be reported out of time order (a serving loop delivers a request's
        last token after the iteration that made it), so the measured phase starts at the
        latest warm-up end, not at the last one reported."""
        self.done += 1
        if self.done <= self.barrier:  # nothing but warm-ups runs before the barrier
            self.warm_end = max(self.warm_end, t)
        k = self.next
        if k >= self.n:
            return []
        if k == self.barrier:  # warm-up fully sent: the profile starts when it has all ended
            return self._phase(self.warm_end, self.n) if self.done == self.barrier else []
        self.next = k + 1
        sent = t + self.delays[k]
        if self.release is not None:
            sent = max(sent, self.phase_t + self.release[k])
        return [(sent, k)]


def sharegpt_distserve(n: int = 300, rate_per_s: float = 1.0, seed: int = 0) -> Workload:
    """ShareGPT as DistServe prepared it for OPT (multi-turn history as the prompt, prompt +
    output < 2048 tokens), fitted with lognormals to the 300-request sample DistServe publishes
    with its simulator (simdistserve/benchmarks/alignment/data-ground-truth/opt-13b-sharegpt/
    distserve-300-3.exp; 197 rows read): prompt median 768, p90 1532 (mean 801); output median
    45, p90 449 (mean 145). Pairs whose total reaches 2048 are redrawn, as DistServe drops them.
    Poisson arrivals at `rate_per_s`."""
    from servesim.sim.synthetic import LogNormal
    from servesim.sim.workload import poisson_arrivals

    gen = np.random.default_rng(seed)
    prompt_d = LogNormal(768, 1532, min_tokens=4, max_tokens=2040)
    output_d = LogNormal(45, 449, min_tokens=2, max_tokens=2040)
    prompts: list[int] = []
    outputs: list[int] = []
    while len(prompts) < n:
        p = prompt_d.sample(2 * n, gen)
        o = output_d.sample(2 * n, gen)
        keep = (p + o) < 2048
        prompts.extend(p[keep].tolist())
        outputs.extend(o[keep].tolist())
    arrivals = poisson_arrivals(n, rate_per_s, gen)
    return Workload(arrivals, prompts[:n], outputs[:n], name="sharegpt-distserve-fit")
