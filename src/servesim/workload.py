"""Workloads: request arrival times and token lengths as plain arrays, plus synthetic generators.

A `Workload` is what the simulator replays in open loop: sorted arrival times in seconds and
per-request prompt/output token counts. Generators are deterministic under a seed so that two
runs of a plan see the same traffic. `ClosedLoop` describes fixed-concurrency benchmarks instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np

from servesim.errors import ServesimError

Seed = int | np.random.Generator

# Standard normal quantile at 0.9: ln(p90 / p50) / Z90 is the log-space sigma of a lognormal.
Z90 = 1.2815515655446004


def _rng(seed: Seed) -> np.random.Generator:
    """A Generator from a seed (deterministic) or the Generator itself (shared stream)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ServesimError(f"Seed {seed!r} is not an integer; pass e.g. seed=0.")
    return np.random.default_rng(int(seed))


@dataclass(eq=False)
class Workload:
    """Requests to replay: arrival times (s, sorted) and prompt/output token counts (>= 1)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = ""
    priority: np.ndarray | None = None  # int64, lower = more urgent
    prefix_hashes: list[list[int]] | None = None  # per-request prefix block hash ids (Mooncake)
    prefix_block_tokens: int = 0  # tokens per hash block (512 for Mooncake)

    def __post_init__(self) -> None:
        self.arrival_s = np.asarray(self.arrival_s, dtype=np.float64).reshape(-1)
        self.prompt_tokens = np.asarray(self.prompt_tokens, dtype=np.int64).reshape(-1)
        self.output_tokens = np.asarray(self.output_tokens, dtype=np.int64).reshape(-1)
        n = len(self.arrival_s)
        what = f"Workload {self.name!r}" if self.name else "The workload"
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ServesimError(
                f"{what} has {n} arrivals but {len(self.prompt_tokens)} prompt and "
                f"{len(self.output_tokens)} output lengths; give one of each per request."
            )
        if n and not np.all(np.isfinite(self.arrival_s)):
            raise ServesimError(f"{what} has a non-finite arrival time; use finite seconds.")
        if n > 1 and np.any(np.diff(self.arrival_s) < 0):
            raise ServesimError(f"{what} has arrival times out of order; sort them ascending.")
        for label, arr in (("prompt", self.prompt_tokens), ("output", self.output_tokens)):
            if n and arr.min() < 1:
                i = int(np.argmin(arr))
                raise ServesimError(
                    f"{what}: request {i} has {arr[i]} {label} tokens; every request needs >= 1."
                )
        if self.priority is not None:
            self.priority = np.asarray(self.priority, dtype=np.int64).reshape(-1)
            if len(self.priority) != n:
                raise ServesimError(
                    f"{what} has {len(self.priority)} priorities for {n} requests; give one each."
                )
        if self.prefix_hashes is not None:
            if len(self.prefix_hashes) != n:
                raise ServesimError(
                    f"{what} has {len(self.prefix_hashes)} prefix hash lists for {n} requests; "
                    "give one list per request."
                )
            if self.prefix_block_tokens < 1:
                raise ServesimError(
                    f"{what} has prefix hashes but prefix_block_tokens={self.prefix_block_tokens}; "
                    "set the tokens per hash block (512 for Mooncake)."
                )

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        if len(self) < 2:
            return 0.0
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def mean_rate_per_s(self) -> float:
        """Mean arrival rate, 1 / mean inter-arrival gap; 0 for < 2 requests, inf for a burst."""
        if len(self) < 2:
            return 0.0
        d = self.duration_s
        return (len(self) - 1) / d if d > 0 else math.inf

    def _take(self, idx: np.ndarray | slice, arrival_s: np.ndarray | None = None) -> Workload:
        """A new Workload with the requests at `idx` (arrivals optionally replaced)."""
        hashes = None
        if self.prefix_hashes is not None:
            hashes = (
                self.prefix_hashes[idx]
                if isinstance(idx, slice)
                else [self.prefix_hashes[i] for i in idx]
            )
        return Workload(
            arrival_s=np.array(self.arrival_s[idx] if arrival_s is None else arrival_s),
            prompt_tokens=np.array(self.prompt_tokens[idx]),
            output_tokens=np.array(self.output_tokens[idx]),
            name=self.name,
            priority=None if self.priority is None else np.array(self.priority[idx]),
            prefix_hashes=hashes,
            prefix_block_tokens=self.prefix_block_tokens,
        )

    def head(self, n: int) -> Workload:
        """The first n requests (all of them if there are fewer)."""
        _check_count(n, "n")
        return self._take(slice(0, int(n)))

    def window(self, start_s: float, end_s: float) -> Workload:
        """Requests arriving in [start_s, end_s), with arrival times shifted so start_s is 0."""
        if not end_s > start_s:
            raise ServesimError(f"Window [{start_s}, {end_s}) is empty; make end_s > start_s.")
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s], side="left")
        return self._take(slice(lo, hi), self.arrival_s[lo:hi] - start_s)

    def scaled_to_rate(self, rate_per_s: float) -> Workload:
        """The same requests with time stretched so the mean rate is rate_per_s (CV unchanged)."""
        _check_rate(rate_per_s)
        current = self.mean_rate_per_s
        if len(self) < 2:
            return self._take(slice(None))
        if not math.isfinite(current):
            raise ServesimError(
                "Cannot rescale a workload whose requests all arrive at the same instant; "
                "use a synthetic arrival process instead."
            )
        t0 = self.arrival_s[0]
        arrivals = t0 + (self.arrival_s - t0) * (current / rate_per_s)
        return self._take(slice(None), arrivals)

    def tiled(self, num_requests: int) -> Workload:
        """Repeat the workload back to back until num_requests (each copy one mean gap later).

        Prefix hash ids are renumbered per copy so that copies do not share cached prefixes.
        """
        _check_count(num_requests, "num_requests")
        n = len(self)
        if num_requests <= n:
            return self.head(num_requests)
        if n < 2:
            raise ServesimError(
                "Cannot tile a workload of fewer than 2 requests (no gap to repeat); "
                "use a synthetic workload instead."
            )
        copies = -(-num_requests // n)
        gap = self.duration_s / (n - 1)
        period = self.duration_s + gap
        offsets = np.repeat(np.arange(copies, dtype=np.float64) * period, n)
        idx = np.tile(np.arange(n), copies)[:num_requests]
        arrivals = (np.tile(self.arrival_s, copies) + offsets)[:num_requests]
        out = self._take(idx, arrivals)
        if self.prefix_hashes is not None:
            stride = 1 + max((max(h) for h in self.prefix_hashes if h), default=0)
            out.prefix_hashes = [
                [x + (k // n) * stride for x in self.prefix_hashes[k % n]]
                for k in range(num_requests)
            ]
        return out

    def summary(self) -> dict[str, float | int | str]:
        """Headline statistics: count, duration, rate, inter-arrival CV, length percentiles."""
        out: dict[str, float | int | str] = {
            "name": self.name,
            "count": len(self),
            "duration_s": self.duration_s,
            "mean_rate_per_s": self.mean_rate_per_s,
            "interarrival_cv": interarrival_cv(self.arrival_s),
        }
        for label, arr in (("prompt", self.prompt_tokens), ("output", self.output_tokens)):
            if len(arr) == 0:
                continue
            p50, p90, p99 = np.percentile(arr, [50, 90, 99])
            out[f"{label}_tokens_mean"] = float(arr.mean())
            out[f"{label}_tokens_p50"] = float(p50)
            out[f"{label}_tokens_p90"] = float(p90)
            out[f"{label}_tokens_p99"] = float(p99)
            out[f"{label}_tokens_max"] = int(arr.max())
        return out


def interarrival_cv(arrival_s: np.ndarray) -> float:
    """Coefficient of variation (population std / mean) of the gaps between arrivals."""
    gaps = np.diff(np.asarray(arrival_s, dtype=np.float64))
    if len(gaps) == 0 or gaps.mean() <= 0:
        return 0.0
    return float(gaps.std() / gaps.mean())


def _check_count(n: int, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ServesimError(f"{what} is {n!r}; it must be a whole number >= 1.")


def _check_rate(rate_per_s: float) -> None:
    if not isinstance(rate_per_s, int | float | np.number) or not (
        math.isfinite(rate_per_s) and rate_per_s > 0
    ):
        raise ServesimError(
            f"Request rate {rate_per_s!r} is not a positive number; use e.g. 2.5 (requests/s)."
        )


# ---------------------------------------------------------------------------------------------
# Arrival processes


def poisson_arrivals(n: int, rate_per_s: float, rng: Seed = 0) -> np.ndarray:
    """n arrival times (s) of a Poisson process at rate_per_s, the first at 0."""
    return gamma_arrivals(n, rate_per_s, 1.0, rng)


def gamma_arrivals(n: int, rate_per_s: float, cv: float, rng: Seed = 0) -> np.ndarray:
    """n arrival times (s) with gamma gaps of mean 1/rate_per_s and coefficient of variation cv.

    cv = 1 is Poisson, cv > 1 is burstier, cv < 1 more regular. The first arrival is at 0.
    """
    _check_count(n, "Number of requests")
    _check_rate(rate_per_s)
    if not isinstance(cv, int | float | np.number) or not (math.isfinite(cv) and cv > 0):
        raise ServesimError(f"Arrival cv {cv!r} must be a positive number; use 1.0 for Poisson.")
    gen = _rng(rng)
    shape = 1.0 / (cv * cv)
    gaps = gen.gamma(shape, 1.0 / (rate_per_s * shape), size=n - 1)
    return np.concatenate(([0.0], np.cumsum(gaps)))


# ---------------------------------------------------------------------------------------------
# Length distributions: each has sample(n, rng) -> int64 array of token counts >= 1


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
            from servesim import trace as trace_mod  # local import: trace.py imports this module

            source = trace_mod.bundled_or_file(rest)
        elif trace is not None:
            source = trace
        else:
            raise ServesimError(
                "Length spec 'trace' needs a trace; pass one or write trace:azure_conv."
            )
        return Empirical(source.prompt_tokens if which == "prompt" else source.output_tokens)
    raise ServesimError(f"Length spec {spec!r} is not understood; {_SPEC_HELP}.")


# ---------------------------------------------------------------------------------------------
# Workload builders


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


@dataclass(frozen=True)
class ClosedLoop:
    """A fixed-concurrency benchmark: `clients` users, each sending its next request think_s
    after its previous one finishes, until num_requests have been sent. All clients start at 0.
    The simulator drives the timing; this holds the spec and the pre-drawn lengths.
    """

    clients: int
    num_requests: int
    prompt: LengthDist
    output: LengthDist
    think_s: float = 0.0
    seed: int = 0
    jitter_s: float = 0.0  # extra client/network delay per request, uniform in [0, jitter_s)

    def __post_init__(self) -> None:
        _check_count(self.clients, "Number of clients")
        if not (math.isfinite(self.jitter_s) and self.jitter_s >= 0):
            raise ServesimError(f"Jitter {self.jitter_s!r} must be a number of seconds >= 0.")
        _check_count(self.num_requests, "Number of requests")
        if not (math.isfinite(self.think_s) and self.think_s >= 0):
            raise ServesimError(f"Think time {self.think_s!r} must be a number of seconds >= 0.")
        object.__setattr__(self, "prompt", as_length(self.prompt))
        object.__setattr__(self, "output", as_length(self.output))

    @cached_property
    def _lengths(self) -> tuple[np.ndarray, np.ndarray]:
        gen = _rng(self.seed)
        p = self.prompt.sample(self.num_requests, gen)
        return p, self.output.sample(self.num_requests, gen)

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

    def request(self, i: int) -> tuple[int, int]:
        """(prompt_tokens, output_tokens) of the i-th request issued (0-based)."""
        if not 0 <= i < self.num_requests:
            raise ServesimError(
                f"Request index {i} is outside 0..{self.num_requests - 1} of this closed loop."
            )
        return int(self._lengths[0][i]), int(self._lengths[1][i])
