"""Workloads: request arrival times and token lengths as plain arrays, and arrival processes.

A `Workload` is what the simulator replays in open loop: sorted arrival times in seconds and
per-request prompt/output token counts (read from a trace by `traces`, or drawn by `synthetic`,
which also describes closed-loop benchmarks). Arrival processes are deterministic under a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from servesim.errors import ServesimError
from servesim.spec.vision import Images

Seed = int | np.random.Generator


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
    # Images per request (`sim.multimodal`); their tokens are already in prompt_tokens once
    # they have a size (a trace's counts have none until `multimodal.size_images`).
    images: Images | None = None

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

        if self.images is not None and len(self.images) != n:
            raise ServesimError(
                f"{what} has images for {len(self.images)} requests but {n} requests; give "
                "one image count per request."
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
            images=None if self.images is None else self.images.take(idx),
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
