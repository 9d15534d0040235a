"""Heterogeneous GPU mix (Mélange): the cheapest fleet of several device types for one workload.

After Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by Exploiting GPU
Heterogeneity" (arXiv:2404.14527). Requests are bucketed by prompt and output length; each
bucket's rate is cut into `slice_factor` equal slices and each slice goes wholly to one GPU type.
A slice of rate r in bucket b puts a load of r / capacity[type][b] on that type (a fraction of one
unit, so several slices share a unit), every type's integer count must cover its load, and the
total price per hour is minimised: an integer program solved by HiGHS through
`scipy.optimize.milp`. `plan_mix` feeds it per-bucket capacities measured by the simulator under
the plan's SLO, one "type" per (device, TP) configuration priced at TP × the device's price, and
checks the answer by simulating each type's share of the traffic on its replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from servesim.errors import ServesimError
from servesim.planner.candidates import (
    Candidate,
    PlanSpec,
    catalog_for,
    deployment_for,
    model_for,
    prune,
)
from servesim.planner.capacity import (
    Draw,
    find_capacity,
    measure,
    requests_for,
    service_rate,
    steady_attainment,
    steady_window,
)
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload

_TOL = 1e-6  # load above an integer count by less than this still fits (HiGHS' feasibility tol)


@dataclass(frozen=True)
class MixSolution:
    """Units of each GPU type, which type serves each slice, and each type's load in units."""

    cost_per_hour: float
    counts: dict[str, int]  # units (GPUs, or replicas of a multi-GPU config) per type
    assignment: list[tuple[int, int, int, str]]  # (bucket row, bucket col, slice, type)
    loads: dict[str, float]  # sum over a type's slices of slice rate / its capacity
    slice_factor: int = 1

    def types_of(self, row: int, col: int) -> list[str]:
        """The type serving each slice of bucket (row, col), in slice order."""
        got = sorted((k, t) for i, j, k, t in self.assignment if (i, j) == (row, col))
        return [t for _, t in got]


def _grid(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ServesimError(f"{what} must be a non-empty 2-D grid (prompt × output buckets).")
    return arr


def _check_inputs(
    rates: np.ndarray, capacities: dict[str, np.ndarray], prices: dict[str, float]
) -> dict[str, np.ndarray]:
    if not np.all(np.isfinite(rates)) or rates.min() < 0:
        raise ServesimError("Bucket rates must be finite and non-negative requests per second.")
    if not capacities:
        raise ServesimError("Give at least one GPU type's capacities to choose a mix from.")
    caps = {}
    for t, c in capacities.items():
        arr = _grid(c, f"The capacities of {t!r}")
        if arr.shape != rates.shape:
            raise ServesimError(
                f"The capacities of {t!r} have shape {arr.shape} but the buckets {rates.shape}; "
                "give one capacity per bucket."
            )
        if np.any(np.isnan(arr)) or arr.min() < 0:
            raise ServesimError(
                f"The capacities of {t!r} must be non-negative req/s (0: cannot serve, inf: free)."
            )
        if t not in prices:
            raise ServesimError(f"GPU type {t!r} has capacities but no price; add its $/hour.")
        p = prices[t]
        if isinstance(p, bool) or not (
            isinstance(p, int | float | np.number) and math.isfinite(p) and p >= 0
        ):
            raise ServesimError(f"The price of {t!r} is {p!r}; give a non-negative $/hour.")
        caps[t] = arr
    return caps


def _loads(rate: float, cap: float) -> tuple[float, bool]:
    """(units of load, allowed) for `rate` req/s on a type serving `cap` req/s per unit."""
    if cap <= 0:
        return 0.0, False
    return (0.0 if math.isinf(cap) else rate / cap), True


def solve_mix(
    bucket_rates: np.ndarray,
    capacities: dict[str, np.ndarray],
    prices: dict[str, float],
    slice_factor: int = 1,
) -> MixSolution:
    """The cheapest integer fleet serving every bucket's rate, each slice on one GPU type."""
    rates = _grid(bucket_rates, "Bucket rates")
    caps = _check_inputs(rates, capacities, prices)
    if (
        isinstance(slice_factor, bool)
        or not isinstance(slice_factor, int | np.integer)
        or slice_factor < 1
    ):
        raise ServesimError(f"slice_factor is {slice_factor!r}; use a whole number >= 1.")
    slice_factor = int(slice_factor)
    types = list(caps)
    slices = [
        (i, j, k)
        for i, j in np.ndindex(rates.shape)
        if rates[i, j] > 0
        for k in range(slice_factor)
    ]
    if not slices:
        return MixSolution(
            0.0, dict.fromkeys(types, 0), [], dict.fromkeys(types, 0.0), slice_factor
        )
    n_s, n_g = len(slices), len(types)
    load = np.zeros((n_s, n_g))
    allowed = np.zeros((n_s, n_g), dtype=bool)
    for s, (i, j, _) in enumerate(slices):
        for g, t in enumerate(types):
            load[s, g], allowed[s, g] = _loads(rates[i, j] / slice_factor, caps[t][i, j])
        if not allowed[s].any():
            raise ServesimError(
                f"Bucket (row {i}, col {j}) has {rates[i, j]:.3g} req/s but no GPU type can serve "
                "it (capacity 0 on every type); add a larger device or split the bucket."
            )
    # Variables: x[s, g] binary (slice s on type g), row-major, then y[g] integer counts.
    n_x = n_s * n_g
    cost = np.concatenate([np.zeros(n_x), [float(prices[t]) for t in types]])
    rows = np.repeat(np.arange(n_s), n_g)
    one_type = sparse.csr_array((np.ones(n_x), (rows, np.arange(n_x))), shape=(n_s, n_x + n_g))
    cover = sparse.hstack(
        [
            sparse.csr_array(
                (load.ravel(), (np.tile(np.arange(n_g), n_s), np.arange(n_x))), shape=(n_g, n_x)
            ),
            sparse.csr_array(-np.eye(n_g)),
        ]
    )
    res = milp(
        cost,
        constraints=[LinearConstraint(one_type, 1, 1), LinearConstraint(cover, -np.inf, 0)],
        integrality=np.ones(n_x + n_g),
        bounds=Bounds(
            np.zeros(n_x + n_g),
            np.concatenate([allowed.ravel().astype(float), np.full(n_g, np.inf)]),
        ),
        # Exact optimum; presolve off: the programs are small, and HiGHS 1.12 prints a stray
        # debug line to stdout when it repairs a presolved solution (ERGO-Code/HiGHS#2783).
        options={"mip_rel_gap": 0.0, "presolve": False},
    )
    if not res.success or res.x is None:
        raise ServesimError(f"The mix integer program found no solution: {res.message}.")
    pick = res.x[:n_x].reshape(n_s, n_g).argmax(axis=1)
    loads = {t: float(load[pick == g, g].sum()) for g, t in enumerate(types)}
    return _solution(types, slices, pick, loads, prices, slice_factor)


def _solution(
    types: list[str],
    slices: list[tuple[int, int, int]],
    pick: np.ndarray,
    loads: dict[str, float],
    prices: dict[str, float],
    slice_factor: int,
) -> MixSolution:
    counts = {t: max(0, math.ceil(loads[t] - _TOL)) for t in types}
    return MixSolution(
        cost_per_hour=float(sum(counts[t] * prices[t] for t in types)),
        counts=counts,
        assignment=[(i, j, k, types[g]) for (i, j, k), g in zip(slices, pick, strict=True)],
        loads=loads,
        slice_factor=slice_factor,
    )


def best_single_type(
    bucket_rates: np.ndarray, capacities: dict[str, np.ndarray], prices: dict[str, float]
) -> MixSolution | None:
    """The cheapest one-type fleet, ceil(Σ rate / capacity) units; None if no type serves all."""
    rates = _grid(bucket_rates, "Bucket rates")
    caps = _check_inputs(rates, capacities, prices)
    slices = [(i, j, 0) for i, j in np.ndindex(rates.shape) if rates[i, j] > 0]
    types = list(caps)
    best: MixSolution | None = None
    for g, t in enumerate(types):
        parts = [_loads(rates[i, j], caps[t][i, j]) for i, j, _ in slices]
        if not all(ok for _, ok in parts):
            continue
        loads = {u: 0.0 for u in types} | {t: float(sum(x for x, _ in parts))}
        sol = _solution(types, slices, np.full(len(slices), g), loads, prices, 1)
        if best is None or sol.cost_per_hour < best.cost_per_hour:
            best = sol
    return best


# ---- buckets of a workload ------------------------------------------------------------------


def _edges(edges: object, what: str) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64).reshape(-1)
    if len(e) < 2 or not np.all(np.isfinite(e[:-1])) or e[0] < 0 or np.any(np.diff(e) <= 0):
        raise ServesimError(
            f"{what} edges must be at least two increasing token counts from >= 0, e.g. 0,1500,inf."
        )
    return e


def bucket_index(
    workload: Workload, prompt_edges: object, output_edges: object
) -> tuple[np.ndarray, np.ndarray]:
    """Each request's (row, col) bucket: edges[i] <= tokens < edges[i + 1]."""
    out = []
    for what, edges, tokens in (
        ("Prompt", prompt_edges, workload.prompt_tokens),
        ("Output", output_edges, workload.output_tokens),
    ):
        e = _edges(edges, what)
        idx = np.searchsorted(e, tokens, side="right") - 1
        bad = (idx < 0) | (idx >= len(e) - 1)
        if bad.any():
            raise ServesimError(
                f"{int(bad.sum())} requests have {what.lower()} lengths outside the edges "
                f"{e.tolist()}; widen them (end with inf)."
            )
        out.append(idx)
    return out[0], out[1]


def bucket_workload(
    workload: Workload, prompt_edges: object, output_edges: object
) -> tuple[np.ndarray, list[list[Workload]]]:
    """The share of requests in each (prompt, output) bucket and each bucket's requests."""
    if len(workload) == 0:
        raise ServesimError("The workload has no requests to bucket.")
    rows, cols = bucket_index(workload, prompt_edges, output_edges)
    n_r, n_c = len(np.asarray(prompt_edges)) - 1, len(np.asarray(output_edges)) - 1
    shares = np.zeros((n_r, n_c))
    np.add.at(shares, (rows, cols), 1.0)
    buckets = [
        [workload._take(np.flatnonzero((rows == i) & (cols == j))) for j in range(n_c)]
        for i in range(n_r)
    ]
    return shares / len(workload), buckets


def bucket_base(workload: Workload, bucket: Workload, num_requests: int) -> Workload:
    """A bucket's lengths (cycled) on the whole workload's first `num_requests` arrival times."""
    if len(bucket) == 0:
        raise ServesimError("The bucket has no requests to measure a capacity on.")
    arrivals = workload.tiled(num_requests).arrival_s
    idx = np.arange(len(arrivals)) % len(bucket)
    return Workload(
        arrivals,
        bucket.prompt_tokens[idx],
        bucket.output_tokens[idx],
        name=f"{workload.name}-bucket",
    )


# ---- capacities from the simulator ----------------------------------------------------------


def type_name(c: Candidate) -> str:
    """A GPU type's name in a mix: the device, with the parallel degrees when above 1."""
    if c.tp == 1 and c.pp == 1:
        return c.device
    return f"{c.device}_tp{c.tp}" + (f"pp{c.pp}" if c.pp > 1 else "")


def mix_candidates(
    spec: PlanSpec, devices: list[str], tp: tuple[int, ...] = (1,)
) -> dict[str, Candidate]:
    """One replica config per (device, TP) whose weights fit (vLLM, 256 seqs, 8192 tokens)."""
    if not devices:
        raise ServesimError("Give at least one device for the mix, e.g. a10g,l4,a100_sxm.")
    catalog = catalog_for(spec.devices_file)
    wanted = [Candidate(catalog.get(d).name, k) for d in devices for k in tp]
    kept, _ = prune(wanted, model_for(spec.model), catalog, 1)
    if not kept:
        raise ServesimError(
            f"{spec.model} fits none of {', '.join(devices)} at TP {tp}; allow a higher TP degree."
        )
    return {type_name(c): c for c in kept}


def _replica_capacity(
    spec: PlanSpec, c: Candidate, base: Workload, longest: int, draw: Draw
) -> float:
    catalog = catalog_for(spec.devices_file)
    _, pruned = prune([c], model_for(spec.model), catalog, longest)
    if pruned:  # the bucket's longest request does not fit this configuration's KV cache
        return 0.0
    cap = find_capacity(
        deployment_for(spec, c), base, spec.slo, spec.target, spec.rel_tol, draw=draw
    )
    return cap.rate_per_s if cap.feasible else 0.0


def capacities_from_simulator(
    spec: PlanSpec,
    candidates: dict[str, Candidate],
    workload: Workload,
    prompt_edges: object,
    output_edges: object,
    num_requests: int = 600,
) -> dict[str, np.ndarray]:
    """Per type and bucket, one replica's highest rate (req/s) meeting the plan's SLO target.

    Measured by `find_capacity` on the bucket's requests replayed on the whole workload's
    arrival pattern (`num_requests` of them, more when a steady state needs more); 0 where the
    type cannot meet the SLO (or hold the requests), inf for an empty bucket (no demand).
    """
    _, buckets = bucket_workload(workload, prompt_edges, output_edges)
    shape = (len(buckets), len(buckets[0]))
    caps = {t: np.full(shape, np.inf) for t in candidates}
    for i, j in np.ndindex(shape):
        b = buckets[i][j]
        if len(b) == 0:
            continue
        base = bucket_base(workload, b, num_requests)
        longest = int((b.prompt_tokens + b.output_tokens).max())

        def draw(n: int, b: Workload = b) -> Workload:
            return bucket_base(workload, b, n)

        for t, c in candidates.items():
            caps[t][i, j] = _replica_capacity(spec, c, base, longest, draw)
    return caps


# ---- the end-to-end plan --------------------------------------------------------------------


@dataclass(frozen=True)
class MixPlan:
    """A mix chosen from simulated capacities, the one-type baseline and the simulated check."""

    solution: MixSolution
    single_type: MixSolution | None  # cheapest one-type fleet under the same capacities
    candidates: dict[str, Candidate]  # type name -> replica configuration
    capacities: dict[str, np.ndarray]  # req/s per replica, per bucket
    prices: dict[str, float]  # $/hour per replica
    shares: np.ndarray  # fraction of requests per bucket
    rate_per_s: float
    attainment: dict[str, float] = field(default_factory=dict)  # simulated, per type used
    baseline: dict[str, int | None] = field(default_factory=dict)  # smallest one-type fleets
    target: float = 0.9

    @property
    def devices(self) -> dict[str, int]:
        """Devices of each type in the chosen fleet (replicas × devices per replica)."""
        return {
            t: n * self.candidates[t].devices_per_replica
            for t, n in self.solution.counts.items()
            if n
        }

    @property
    def baseline_cost(self) -> tuple[str, float] | None:
        """The cheapest simulated one-type fleet (type, $/hour), when baselines were computed."""
        costs = [(n * self.prices[t], t) for t, n in self.baseline.items() if n]
        return (min(costs)[1], min(costs)[0]) if costs else None

    @property
    def verified(self) -> bool:
        """Whether every type's simulated share met the SLO attainment target."""
        return bool(self.attainment) and min(self.attainment.values()) >= self.target


def split_by_type(
    workload: Workload, solution: MixSolution, prompt_edges: object, output_edges: object
) -> dict[str, np.ndarray]:
    """Indices of the requests each type serves: a bucket's requests dealt to its slices in turn."""
    rows, cols = bucket_index(workload, prompt_edges, output_edges)
    owner = np.full(len(workload), "", dtype=object)
    for i, j in {(i, j) for i, j, _, _ in solution.assignment}:
        idx = np.flatnonzero((rows == i) & (cols == j))
        types = solution.types_of(i, j)
        owner[idx] = [types[p % len(types)] for p in range(len(idx))]
    if np.any(owner == ""):
        raise ServesimError("Some requests fall in buckets the mix assigns to no GPU type.")
    return {t: np.flatnonzero(owner == t) for t in solution.counts}


def verify_mix(
    spec: PlanSpec,
    candidates: dict[str, Candidate],
    solution: MixSolution,
    workload: Workload,
    rate_per_s: float,
    prompt_edges: object,
    output_edges: object,
    draw: Draw | None = None,
) -> dict[str, float]:
    """Steady-state SLO attainment of each used type's share of the traffic on its replicas.

    The whole workload (drawn longer when a steady state needs it) is split by the mix and each
    share simulated on its type's replicas (least-loaded); requests arriving in the steady
    window count, its warm-up and drain set by the slowest type's residence time. `draw(n)`
    gives n requests from the workload's source (default: tile it).
    """
    parts = split_by_type(workload, solution, prompt_edges, output_edges)
    residence, load = 0.0, 0.0
    for t, idx in parts.items():
        n = solution.counts.get(t, 0)
        if n and len(idx) >= 2:
            svc = service_rate(deployment_for(spec, candidates[t]), workload._take(idx))
            share = rate_per_s * len(idx) / len(workload)
            residence = max(residence, svc.residence_s)
            load = max(load, share / (n * svc.rate_per_s))
    work = _long_enough(workload, rate_per_s, residence, load, draw)
    scaled = work.scaled_to_rate(rate_per_s)
    window = steady_window(scaled.arrival_s, residence)
    out: dict[str, float] = {}
    for t, idx in split_by_type(scaled, solution, prompt_edges, output_edges).items():
        n = solution.counts.get(t, 0)
        if len(idx) == 0 or n == 0:
            continue
        dep = deployment_for(spec, candidates[t], replicas=n)
        share = scaled._take(idx)
        res = simulate(dep, share, router="least_loaded")
        a = share.arrival_s
        counted = window if np.any((a >= window[0]) & (a < window[1])) else (-np.inf, np.inf)
        out[t] = measure(res, spec.slo, counted, rate_per_s).attainment
    return out


def _long_enough(
    workload: Workload, rate: float, residence_s: float, load: float, draw: Draw | None
) -> Workload:
    """The workload, or more of its source when it is too short for a steady state at `rate`."""
    n = requests_for(rate, residence_s, load)
    if len(workload) >= n:
        return workload
    return (draw or workload.tiled)(n)


def plan_mix(
    spec: PlanSpec,
    devices: list[str],
    rate_per_s: float,
    prompt_edges: object,
    output_edges: object,
    tp: tuple[int, ...] = (1,),
    slice_factor: int = 1,
    num_requests: int = 600,
    verify: bool = True,
) -> MixPlan:
    """The cheapest heterogeneous fleet for the plan's workload at `rate_per_s`, end to end.

    With `verify`, each type's share is simulated on its replicas and every type's smallest
    simulated one-type fleet for the whole workload is found, to compare against.
    """
    if not (isinstance(rate_per_s, int | float) and math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ServesimError(f"A mix needs a positive rate to serve (--rate), got {rate_per_s}.")
    workload = spec.workload.build()
    shares, _ = bucket_workload(workload, prompt_edges, output_edges)
    rates = shares * rate_per_s
    candidates = mix_candidates(spec, devices, tp)
    catalog = catalog_for(spec.devices_file)
    prices = {
        t: c.devices_per_replica * catalog.get(c.device).price_per_hour
        for t, c in candidates.items()
    }
    caps = capacities_from_simulator(
        spec, candidates, workload, prompt_edges, output_edges, num_requests
    )
    sol = solve_mix(rates, caps, prices, slice_factor)
    attainment: dict[str, float] = {}
    baseline: dict[str, int | None] = {}
    if verify:
        # Longer runs tile the workload: the buckets' capacities were measured on its lengths.
        attainment = verify_mix(
            spec, candidates, sol, workload, rate_per_s, prompt_edges, output_edges
        )
        baseline = {t: smallest_fleet(spec, c, workload, rate_per_s) for t, c in candidates.items()}
    return MixPlan(
        solution=sol,
        single_type=best_single_type(rates, caps, prices),
        candidates=candidates,
        capacities=caps,
        prices=prices,
        shares=shares,
        rate_per_s=rate_per_s,
        attainment=attainment,
        baseline=baseline,
        target=spec.target,
    )


def smallest_fleet(
    spec: PlanSpec,
    c: Candidate,
    workload: Workload,
    rate_per_s: float,
    max_replicas: int = 128,
    draw: Draw | None = None,
) -> int | None:
    """Fewest replicas of one configuration whose simulation of the whole workload meets the SLO.

    Doubles, then bisects, on the replica count (least-loaded routing), each count checked in
    the steady window of a run long enough for a steady state; None beyond max_replicas.
    """
    svc = service_rate(deployment_for(spec, c), workload, draw=draw)
    residence = svc.residence_s
    work = _long_enough(workload, rate_per_s, residence, 0.0, draw)

    def ok(n: int) -> bool:
        load = rate_per_s / (n * svc.rate_per_s)
        if load >= 1.0:  # above the fleet's service rate: the queue grows without bound
            return False
        dep = deployment_for(spec, c, replicas=n)
        p, _, _ = steady_attainment(
            dep, work, rate_per_s, spec.slo, residence, "least_loaded", draw, load
        )
        return p.attainment >= spec.target

    lo, hi = 0, 1  # lo fails (or is 0), hi is the probe
    while not ok(hi):
        lo, hi = hi, hi * 2
        if lo >= max_replicas:
            return None
        hi = min(hi, max_replicas)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
