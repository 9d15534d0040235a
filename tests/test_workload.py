"""Workloads and synthetic generators: hand-computed values, statistical properties, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.synthetic import (
    ClosedLoop,
    Empirical,
    Fixed,
    LogNormal,
    Uniform,
    parse_length,
    synthetic,
)
from servesim.sim.workload import Workload, gamma_arrivals, interarrival_cv, poisson_arrivals


def small() -> Workload:
    return Workload(
        arrival_s=[0.0, 1.0, 3.0],
        prompt_tokens=[10, 20, 30],
        output_tokens=[1, 2, 3],
        name="small",
        priority=[2, 0, 1],
        prefix_hashes=[[0, 1], [0, 2], [3]],
        prefix_block_tokens=16,
    )


# ---- the Workload type ----------------------------------------------------------------------


def test_types_and_basic_statistics() -> None:
    w = small()
    assert w.arrival_s.dtype == np.float64 and w.prompt_tokens.dtype == np.int64
    assert w.priority is not None and w.priority.dtype == np.int64
    assert len(w) == 3
    assert w.duration_s == 3.0
    assert w.mean_rate_per_s == pytest.approx(2 / 3)  # two gaps in three seconds


def test_summary_hand_computed() -> None:
    s = small().summary()
    gaps = np.array([1.0, 2.0])
    assert s["count"] == 3
    assert s["duration_s"] == 3.0
    assert s["interarrival_cv"] == pytest.approx(gaps.std() / gaps.mean())  # 0.5 / 1.5
    assert s["interarrival_cv"] == pytest.approx(1 / 3)
    assert s["prompt_tokens_mean"] == 20.0
    assert s["prompt_tokens_p50"] == 20.0
    assert s["prompt_tokens_p90"] == pytest.approx(28.0)  # linear interpolation 20 + 0.8 * 10
    assert s["prompt_tokens_max"] == 30
    assert s["output_tokens_p99"] == pytest.approx(2.98)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"arrival_s": [0, 2, 1]}, "out of order"),
        ({"prompt_tokens": [1, 0, 5]}, "request 1 has 0 prompt tokens"),
        ({"output_tokens": [1, 2]}, "3 arrivals but 3 prompt and 2 output"),
        ({"arrival_s": [0, 1, math.nan]}, "non-finite"),
        ({"priority": [1]}, "1 priorities for 3 requests"),
        ({"prefix_hashes": [[1]], "prefix_block_tokens": 16}, "1 prefix hash lists"),
        ({"prefix_hashes": [[1], [2], [3]]}, "prefix_block_tokens=0"),
    ],
)
def test_workload_validation(kwargs: dict, pattern: str) -> None:
    base = {"arrival_s": [0, 1, 2], "prompt_tokens": [1, 2, 3], "output_tokens": [1, 2, 3]}
    with pytest.raises(ServesimError, match=pattern) as info:
        Workload(**{**base, **kwargs})
    assert "\n" not in str(info.value)


def test_head_and_window() -> None:
    w = small()
    h = w.head(2)
    assert list(h.prompt_tokens) == [10, 20] and h.prefix_hashes == [[0, 1], [0, 2]]
    assert len(w.head(100)) == 3
    win = w.window(0.5, 3.0)  # [0.5, 3.0): only the request at t=1
    assert list(win.arrival_s) == [0.5] and list(win.output_tokens) == [2]
    assert list(win.priority) == [0]
    with pytest.raises(ServesimError, match="empty"):
        w.window(2.0, 1.0)


def test_head_returns_a_copy() -> None:
    w = small()
    h = w.head(2)
    h.prompt_tokens[0] = 999
    assert w.prompt_tokens[0] == 10


def test_scaled_to_rate_exact_rate_order_and_cv() -> None:
    w = synthetic(2000, 3.0, 100, 10, arrival="gamma", cv=2.0, seed=1)
    s = w.scaled_to_rate(12.5)
    assert s.mean_rate_per_s == pytest.approx(12.5, rel=1e-12)
    assert interarrival_cv(s.arrival_s) == pytest.approx(interarrival_cv(w.arrival_s), rel=1e-9)
    assert np.all(np.diff(s.arrival_s) >= 0)
    assert np.array_equal(np.argsort(s.arrival_s, kind="stable"), np.arange(len(w)))
    assert np.array_equal(s.prompt_tokens, w.prompt_tokens)
    assert s.arrival_s[0] == w.arrival_s[0]
    # hand-computed: gaps 1 and 2 at rate 2/3 -> rate 2 compresses time by 3
    assert list(small().scaled_to_rate(2.0).arrival_s) == pytest.approx([0.0, 1 / 3, 1.0])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_scaled_to_rate_rejects_bad_rates(bad: float) -> None:
    with pytest.raises(ServesimError, match="not a positive number"):
        small().scaled_to_rate(bad)


def test_scaled_to_rate_rejects_a_pure_burst() -> None:
    burst = Workload(np.zeros(4), np.ones(4), np.ones(4))
    with pytest.raises(ServesimError, match="same instant"):
        burst.scaled_to_rate(1.0)


def test_tiled_hand_computed() -> None:
    t = small().tiled(7)
    # span 3 s + one mean gap 1.5 s = period 4.5 s
    assert list(t.arrival_s) == pytest.approx([0, 1, 3, 4.5, 5.5, 7.5, 9.0])
    assert list(t.prompt_tokens) == [10, 20, 30, 10, 20, 30, 10]
    assert list(t.priority) == [2, 0, 1, 2, 0, 1, 2]
    # prefix ids renumbered per copy: copies do not share cached prefixes with each other
    assert t.prefix_hashes == [[0, 1], [0, 2], [3], [4, 5], [4, 6], [7], [8, 9]]
    assert t.mean_rate_per_s == pytest.approx(small().mean_rate_per_s)


def test_tiled_length_and_monotone() -> None:
    w = synthetic(37, 5.0, 64, 8, seed=3)
    t = w.tiled(1000)
    assert len(t) == 1000
    assert np.all(np.diff(t.arrival_s) > 0)
    assert len(w.tiled(10)) == 10
    with pytest.raises(ServesimError, match="fewer than 2"):
        w.head(1).tiled(5)
    with pytest.raises(ServesimError, match="num_requests is 0"):
        w.tiled(0)


# ---- arrival processes ----------------------------------------------------------------------


def test_poisson_rate_and_cv() -> None:
    a = poisson_arrivals(50_000, 8.0, rng=0)
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    rate = (len(a) - 1) / a[-1]
    assert rate == pytest.approx(8.0, rel=0.02)
    assert interarrival_cv(a) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_cv_matches_request(cv: float) -> None:
    a = gamma_arrivals(200_000, 3.0, cv, rng=11)
    assert (len(a) - 1) / a[-1] == pytest.approx(3.0, rel=0.03)
    assert interarrival_cv(a) == pytest.approx(cv, rel=0.06)


def test_generators_are_deterministic_and_seed_sensitive() -> None:
    assert np.array_equal(gamma_arrivals(100, 2.0, 2.0, 5), gamma_arrivals(100, 2.0, 2.0, 5))
    assert not np.array_equal(gamma_arrivals(100, 2.0, 2.0, 5), gamma_arrivals(100, 2.0, 2.0, 6))
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    assert np.array_equal(poisson_arrivals(50, 1.0, g1), poisson_arrivals(50, 1.0, g2))


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: poisson_arrivals(10, 0.0), "Request rate 0.0"),
        (lambda: poisson_arrivals(10, -2.0), "Request rate -2.0"),
        (lambda: poisson_arrivals(0, 1.0), "Number of requests is 0"),
        (lambda: gamma_arrivals(10, 1.0, 0.0), "cv 0.0"),
        (lambda: gamma_arrivals(10, 1.0, -1.0), "cv -1.0"),
        (lambda: poisson_arrivals(10, 1.0, rng="x"), "Seed 'x'"),
    ],
)
def test_arrival_validation(call, pattern: str) -> None:
    with pytest.raises(ServesimError, match=pattern) as info:
        call()
    assert "\n" not in str(info.value)


# ---- length distributions -------------------------------------------------------------------


def test_fixed_and_uniform() -> None:
    assert list(Fixed(7).sample(3)) == [7, 7, 7]
    u = Uniform(5, 8).sample(10_000, 0)
    assert u.dtype == np.int64 and u.min() == 5 and u.max() == 8
    assert set(np.unique(u)) == {5, 6, 7, 8}
    assert u.mean() == pytest.approx(6.5, abs=0.05)
    with pytest.raises(ServesimError, match="lo=9 > hi=3"):
        Uniform(9, 3)
    with pytest.raises(ServesimError, match="Fixed length is 0"):
        Fixed(0)


def test_lognormal_quantiles_and_clipping() -> None:
    d = LogNormal(1042, 2375)
    assert d.sigma == pytest.approx(math.log(2375 / 1042) / 1.2815515655446004)
    x = d.sample(200_000, 0)
    assert x.dtype == np.int64 and x.min() >= 1
    assert np.median(x) == pytest.approx(1042, rel=0.02)
    assert np.percentile(x, 90) == pytest.approx(2375, rel=0.02)
    c = LogNormal(1042, 2375, min_tokens=500, max_tokens=3000).sample(50_000, 1)
    assert c.min() == 500 and c.max() == 3000
    assert np.percentile(c, 90) == pytest.approx(2375, rel=0.03)  # inside the bounds: unchanged
    with pytest.raises(ServesimError, match="p90 100"):
        LogNormal(200, 100)


def test_empirical_resamples_observed_values() -> None:
    d = Empirical(np.array([3, 5, 5, 9]))
    x = d.sample(20_000, 2)
    assert set(np.unique(x)) == {3, 5, 9}
    assert (x == 5).mean() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(ServesimError, match="at least one value"):
        Empirical(np.array([], dtype=int))
    with pytest.raises(ServesimError, match=">= 1"):
        Empirical(np.array([0, 3]))


def test_parse_length_specs() -> None:
    assert parse_length("1024") == Fixed(1024)
    assert parse_length("fixed:64") == Fixed(64)
    assert parse_length("uniform:100:2000") == Uniform(100, 2000)
    assert parse_length("lognormal:1042:2375") == LogNormal(1042, 2375)
    assert parse_length("LogNormal:1042:2375:8192") == LogNormal(1042, 2375, max_tokens=8192)
    w = small()
    emp = parse_length("trace", which="output", trace=w)
    assert isinstance(emp, Empirical) and list(emp.values) == [1, 2, 3]


def test_parse_length_bundled_trace() -> None:
    emp = parse_length("trace:azure_conv", which="prompt")
    assert isinstance(emp, Empirical) and len(emp.values) == 5985
    assert emp.values.mean() == pytest.approx(1150.0, abs=0.5)


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("gauss:5", "not understood"),
        ("uniform:10", "not understood"),
        ("fixed:abc", "non-numeric"),
        ("uniform:50:10", "lo=50 > hi=10"),
        ("trace", "needs a trace"),
        ("trace:nope_trace_name.csv", "does not exist"),
    ],
)
def test_parse_length_errors(spec: str, pattern: str) -> None:
    with pytest.raises(ServesimError, match=pattern) as info:
        parse_length(spec)
    assert "\n" not in str(info.value)


# ---- synthetic workloads and closed loops ----------------------------------------------------


def test_synthetic_shape_and_determinism() -> None:
    w = synthetic(500, 4.0, Uniform(10, 20), "lognormal:100:300", seed=7)
    assert len(w) == 500 and w.arrival_s[0] == 0.0
    assert w.prompt_tokens.min() >= 10 and w.prompt_tokens.max() <= 20
    assert w.name == "synthetic-poisson-4rps"
    again = synthetic(500, 4.0, Uniform(10, 20), "lognormal:100:300", seed=7)
    other = synthetic(500, 4.0, Uniform(10, 20), "lognormal:100:300", seed=8)
    for a, b in ((w, again),):
        assert np.array_equal(a.arrival_s, b.arrival_s)
        assert np.array_equal(a.prompt_tokens, b.prompt_tokens)
        assert np.array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(w.arrival_s, other.arrival_s)
    assert not np.array_equal(w.output_tokens, other.output_tokens)


def test_synthetic_gamma_burstiness() -> None:
    w = synthetic(100_000, 10.0, 128, 128, arrival="gamma", cv=3.0, seed=0)
    assert w.summary()["interarrival_cv"] == pytest.approx(3.0, rel=0.08)
    assert w.mean_rate_per_s == pytest.approx(10.0, rel=0.05)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"rate_per_s": 0}, "Request rate 0"),
        ({"rate_per_s": -1.0}, "Request rate -1.0"),
        ({"num_requests": 0}, "Number of requests is 0"),
        ({"arrival": "gamma", "cv": 0.0}, "cv 0.0"),
        ({"arrival": "poisson", "cv": 2.0}, "arrival='gamma'"),
        ({"arrival": "weibull"}, "unknown"),
        ({"prompt": "uniform:9:3"}, "lo=9 > hi=3"),
    ],
)
def test_synthetic_validation(kwargs: dict, pattern: str) -> None:
    args = {"num_requests": 10, "rate_per_s": 1.0, "prompt": 10, "output": 10, **kwargs}
    with pytest.raises(ServesimError, match=pattern) as info:
        synthetic(**args)
    assert "\n" not in str(info.value)


def test_closed_loop_lengths_are_deterministic() -> None:
    c = ClosedLoop(clients=8, num_requests=100, prompt=Uniform(10, 1000), output=Fixed(50))
    same = ClosedLoop(clients=8, num_requests=100, prompt=Uniform(10, 1000), output=Fixed(50))
    other = ClosedLoop(8, 100, Uniform(10, 1000), Fixed(50), seed=1)
    assert [c.request(i) for i in range(100)] == [same.request(i) for i in range(100)]
    assert not np.array_equal(c.prompt_tokens, other.prompt_tokens)
    assert c.request(3) == (int(c.prompt_tokens[3]), 50)
    assert len(c.prompt_tokens) == 100 and np.all(c.output_tokens == 50)
    assert ClosedLoop(2, 5, "fixed:7", 3).request(4) == (7, 3)  # specs and ints accepted


@pytest.mark.parametrize(
    "args, pattern",
    [
        ((0, 10), "Number of clients is 0"),
        ((4, 0), "Number of requests is 0"),
        ((4, 10, -1.0), "Think time -1.0"),
    ],
)
def test_closed_loop_validation(args: tuple, pattern: str) -> None:
    clients, n, *think = args
    with pytest.raises(ServesimError, match=pattern):
        ClosedLoop(clients, n, Fixed(10), Fixed(10), *think)


def test_closed_loop_index_out_of_range() -> None:
    with pytest.raises(ServesimError, match=r"outside 0\.\.4"):
        ClosedLoop(2, 5, Fixed(1), Fixed(1)).request(5)


def test_a_lognormal_capped_below_its_median_is_refused() -> None:
    """`lognormal:100:200:50` made every length 50 without a word: a cap below the median
    turns most draws into the cap. It is refused; a cap between median and p90 clips the tail."""
    with pytest.raises(ServesimError, match="below the median 100"):
        parse_length("lognormal:100:200:50")
    x = parse_length("lognormal:100:200:150").sample(2000, 0)
    assert x.max() == 150 and np.median(x) == pytest.approx(100, rel=0.1)
