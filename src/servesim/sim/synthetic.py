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
