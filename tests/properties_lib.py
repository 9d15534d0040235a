"""Random simulations and the properties every one of them must keep, shared by the hypothesis
tests (tests/test_properties.py) and the long fuzz run (scripts/fuzz.py).

A case is a plain dict (`draw_case`), so a failure prints as something one can paste back into
`run_case`. It is drawn through a `Picker`: hypothesis's `draw` in the tests (so failures
shrink), a seeded `random.Random` in the fuzz script (so it runs long, counts failures and goes
on). `run_case` builds the deployment and workload, simulates under a wall-clock guard and
checks: every request finished exactly once, all its output tokens generated, its first token
at or after its arrival and at or before its end (TTFT ≤ E2E), closed loops never have more
requests in flight than clients, no replica busy longer than it was provisioned, every number
of the summary finite (utilisation and KV use at most 1), and (when the case asks) a second run
gives identical columns. The first run moves finished requests out of the table after every
couple of finishes, so their slots are reused as often as they can be; the repeated run keeps
them until the end, so the comparison also shows that reuse changes nothing.
`ServesimError` (a deployment that does not fit, a
TP that does not divide the heads) is an expected outcome, counted by kind, never a failure.
"""

from __future__ import annotations

import math
import random
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim import deployment, records
from servesim.sim.autoscale import Autoscaler
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.metrics import Slo
from servesim.sim.policies import ClassSlo, LengthEstimator, Policy
from servesim.sim.router import ROUTERS, Migration
from servesim.sim.semipd import SemiPDController, SemiPDDeployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Empirical
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

MODELS = (
    "meta-llama/Llama-3.1-8B",
    "Qwen/Qwen3-8B",
    "openai/gpt-oss-20b",  # sliding-window layers, MoE
    "Qwen/Qwen3-30B-A3B",  # MoE
    "facebook/opt-13b",
    "nvidia/Nemotron-H-56B-Base-8K",  # Mamba2 hybrid: recurrent state per sequence
)
DEVICES = ("h100_sxm", "a100_sxm", "l40s")
ENGINES = ("vllm", "sglang", "trtllm")


class Hang(Exception):
    """A simulation ran past its wall-clock limit."""


class PropertyFailure(AssertionError):
    """A simulation broke one of the properties."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` in the main thread if the body runs longer than `seconds` (wall clock)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- drawing cases ---------------------------------------------------------------------------


class Picker:
    """Random choices from a seeded `random.Random` (the fuzz script)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return self.rng.randint(lo, hi)

    def float(self, lo: float, hi: float) -> float:
        """A float in [lo, hi]."""
        return self.rng.uniform(lo, hi)

    def pick(self, options: Sequence[Any]) -> Any:
        """One of the options."""
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        """True with probability p."""
        return self.rng.random() < p


class HypothesisPicker(Picker):
    """The same choices drawn through hypothesis (so failing cases shrink)."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self.draw = draw
        self.st = st

    def int(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def float(self, lo: float, hi: float) -> float:
        return self.draw(self.st.floats(lo, hi, allow_nan=False, allow_infinity=False))

    def pick(self, options: Sequence[Any]) -> Any:
        return self.draw(self.st.sampled_from(list(options)))

    def chance(self, p: float) -> bool:
        # Booleans shrink to False: the simpler case.
        return self.draw(self.st.integers(0, 999)) < int(p * 1000)


def _lengths(p: Picker, n: int, small_budget: bool) -> tuple[list[int], list[int]]:
    """Prompt and output lengths: tiny, small or larger (kept short under tiny budgets)."""
    scale = p.pick(("tiny", "small", "larger"))
    top_p, top_o = {"tiny": (8, 8), "small": (300, 64), "larger": (3000, 400)}[scale]
    if small_budget:
        top_p = min(top_p, 300)
    if p.chance(0.3):  # every request the same
        prompt, output = p.int(1, top_p), p.int(1, top_o)
        return [prompt] * n, [output] * n
    return [p.int(1, top_p) for _ in range(n)], [p.int(1, top_o) for _ in range(n)]


def _workload(p: Picker, case: dict[str, Any]) -> None:
    small_budget = (case["max_num_batched_tokens"] or 10**9) <= 64
    n = p.int(1, 30)
    case["prompts"], case["outputs"] = _lengths(p, n, small_budget)
    case["priorities"] = [p.int(0, 2) for _ in range(n)] if p.chance(0.5) else None
    if p.chance(0.3):
        case["closed"] = {
            "clients": p.int(1, 6),
            "think_s": p.pick((0.0, 0.0, 0.01, 0.5)),
            "jitter_s": p.pick((0.0, 0.0, 0.05)),
            "seed": p.int(0, 3),
            # Benchmark-client protocols (sim.clients): ramp, request-rate pacing, warm-up phase.
            "ramp_s": p.pick((0.0, 0.0, 0.2)),
            "rate": p.pick((math.inf, math.inf, 50.0)),
            "warmup": p.int(0, n - 1) if p.chance(0.3) else 0,
        }
        case["arrivals"] = None
    else:
        case["closed"] = None
        shape = p.pick(("burst", "poisson", "mixed"))
        if shape == "burst":
            t = [0.0] * n
        else:
            rate = p.pick((1.0, 10.0, 100.0, 1000.0))
            rng = np.random.default_rng(p.int(0, 1000))
            t = np.cumsum(rng.exponential(1.0 / rate, n)).tolist()
            if shape == "mixed":  # a burst at 0, then a trickle
                k = p.int(0, n)
                t = [0.0] * k + t[k:]
            t = sorted(t)
        case["arrivals"] = t
    if p.chance(0.35):
        block = p.pick((16, 32, 64, 512))
        roots = p.int(1, 3)
        hashes = []
        for i in range(n):
            blocks = -(-case["prompts"][i] // block)
            root = p.int(0, roots - 1)
            shared = p.int(0, blocks)
            hashes.append(
                [1000 * root + j for j in range(shared)]
                + [10**6 + 1000 * i + j for j in range(blocks - shared)]
            )
        case["prefix"] = {"block_tokens": block, "hashes": hashes}
    else:
        case["prefix"] = None


def _policy(p: Picker) -> dict[str, Any] | None:
    name = p.pick(("fcfs", "fcfs", "priority", "slack", "laps"))
    preemption = p.pick(("recompute", "recompute", "swap"))
    if name == "fcfs" and preemption == "recompute":
        return None
    out: dict[str, Any] = {"name": name, "preemption": preemption}
    out["swap_group_blocks"] = p.pick((1, 1, 8, 64))
    out["prefill_preemption"] = name != "fcfs" and p.chance(0.3)
    if name == "slack" or p.chance(0.2):
        out["class_slos"] = [
            (
                p.pick((0.01, 0.05, 0.5, 2.0)),
                p.pick((0.005, 0.01, 0.05, 0.1)),
                p.pick((None, None, 0.1, 5.0, 30.0)),
            )
            for _ in range(p.int(1, 3))
        ]
    if name == "laps":
        out["laps_threshold_tokens"] = p.pick((1, 16, 128, 1024))
    est = p.pick(("oracle", "oracle", "trace", "noisy"))
    out["estimator"] = (est, p.pick((0.0, 0.5, 1.5)), p.pick((0.1, 0.5, 0.9)), p.chance(0.7))
    out["preempt_margin_s"] = p.pick((0.0, 0.25, 5.0))
    return out


def _pool(p: Picker, pp_ok: bool = True) -> dict[str, Any]:
    seqs = p.pick((None, "tiny", "some"))
    budget = p.pick((None, "tiny", "some"))
    return {
        "tp": p.pick((1, 1, 2, 4)),
        "pp": p.pick((1, 1, 2, 3)) if pp_ok else 1,
        "dp": p.pick((1, 1, 1, 2, 4)),  # attention data-parallel ranks of a replica
        "engine": p.pick(ENGINES),
        "overlap": p.pick((None, None, True, False)),
        "replicas": p.int(1, 3),
        "max_num_seqs": None if seqs is None else p.int(1, 4) if seqs == "tiny" else p.int(5, 64),
        "max_num_batched_tokens": (
            None if budget is None else p.int(1, 64) if budget == "tiny" else p.int(65, 4096)
        ),
        "chunked_prefill": p.pick((None, True, False)),
        # KV cache as a multiple of the longest request (tight caches force preemptions)
        "kv_factor": p.pick((None, None, 1.0, 1.3, 2.0, 5.0, 30.0)),
        "prefix_caching": p.pick((None, True, False)),
    }


def draw_case(p: Picker) -> dict[str, Any]:
    """One random simulation as a plain dict (see `run_case`)."""
    kind = p.pick(("colocated", "colocated", "colocated", "disagg", "semipd"))
    case: dict[str, Any] = {"kind": kind, "model": p.pick(MODELS), "device": p.pick(DEVICES)}
    case.update(_pool(p, pp_ok=kind != "semipd"))
    case["policy"] = _policy(p)
    case["router"] = p.pick(ROUTERS)
    case["migration"] = None
    case["autoscaler"] = None
    case["decode"] = None
    case["semipd"] = None
    if kind == "colocated":
        if p.chance(0.35):
            case["migration"] = {
                "interval_s": p.pick((0.001, 0.01, 0.1, 0.25)),
                "low_steps": p.pick((0.0, 48.0, 1000.0)),
                "high_steps": p.pick((48.0, 1000.0, 10**6)),
                "max_inflight": p.pick((None, 1, 2)),
                "link": p.pick(("scale_up", "pcie", "ethernet")),
                "pick": p.pick(("shortest", "longest", "last")),
            }
            if case["migration"]["low_steps"] > case["migration"]["high_steps"]:
                case["migration"]["low_steps"] = case["migration"]["high_steps"]
        if p.chance(0.35):
            lo = p.int(1, 2)
            case["autoscaler"] = {
                "metric": p.pick(("utilisation", "queue", "forecast")),
                "target": p.pick((0.05, 0.5, 1.0, 4.0)),
                "min_replicas": lo,
                "max_replicas": lo + p.int(0, 3),
                "interval_s": p.pick((0.01, 0.1, 1.0, 30.0)),
                "window_s": p.pick((0.1, 1.0, 60.0)),
                "scale_down_delay_s": p.pick((0.0, 0.05, 300.0)),
                "startup_s": p.pick((0.0, 0.05, 2.0)),
            }
    elif kind == "disagg":
        case["decode"] = _pool(p)
        case["link"] = p.pick(("nvlink", "pcie", "infiniband", "ethernet"))
        case["kv_compression"] = p.pick((1.0, 1.0, 4.0))
    else:
        case["semipd"] = {
            "share": p.pick((0.05, 0.3, 0.5, 0.8, 0.95)),
            "controller": p.chance(0.5),
            "interval_s": p.pick((0.005, 0.05, 0.5)),
            "window_s": p.pick((0.01, 0.1, 1.0)),
            "ttft_s": p.pick((0.001, 0.05, 1.0)),
            "tpot_s": p.pick((0.001, 0.02, 0.1)),
        }
    _workload(p, case)
    case["repeat"] = p.chance(0.15)  # run twice: the columns must be identical
    return case


# ---- building and running ----------------------------------------------------------------------


def case_of(**fields: Any) -> dict[str, Any]:
    """A case with plain defaults (one Llama-3.1-8B vLLM replica on an H100, FCFS, round robin,
    three 100-token prompts with 10-token outputs at t=0) and the given fields changed: the
    regression tests write their scenarios this way."""
    case: dict[str, Any] = {
        "kind": "colocated",
        "model": "meta-llama/Llama-3.1-8B",
        "device": "h100_sxm",
        "tp": 1,
        "pp": 1,
        "dp": 1,
        "engine": "vllm",
        "overlap": None,
        "replicas": 1,
        "max_num_seqs": None,
        "max_num_batched_tokens": None,
        "chunked_prefill": None,
        "kv_factor": None,
        "kv_tokens": None,  # an exact KV cache size in tokens (instead of kv_factor)
        "prefix_caching": None,
        "policy": None,
        "router": "round_robin",
        "migration": None,
        "autoscaler": None,
        "decode": None,
        "link": "nvlink",
        "kv_compression": 1.0,
        "semipd": None,
        "prompts": [100, 100, 100],
        "outputs": [10, 10, 10],
        "priorities": None,
        "closed": None,
        "arrivals": None,
        "prefix": None,
        "repeat": False,
    }
    unknown = set(fields) - set(case)
    if unknown:
        raise KeyError(f"unknown case fields {sorted(unknown)}")
    case.update(fields)
    if case["arrivals"] is None and case["closed"] is None:
        case["arrivals"] = [0.0] * len(case["prompts"])
    return case


def with_kv_tokens(dep: Deployment, tokens: int) -> Deployment:
    """The deployment with its memory share cut so the replica's KV cache holds `tokens` tokens
    (pages are then whole pages of those); unchanged if the device cannot offer that much.
    The share is set as a fraction of the whole device, whatever the engine's convention."""
    engine = dep.engine.with_overrides(mem_util_of_free=False)
    full = replace(dep, engine=engine.with_overrides(mem_util=1.0)).memory()
    per_token = full.kv_bytes / max(1, full.kv_tokens)
    util = (full.usable_bytes - full.kv_bytes + (tokens + 0.5) * per_token) / full.device_bytes
    return replace(dep, engine=engine.with_overrides(mem_util=util)) if util < 1.0 else dep


def _deployment(case: dict[str, Any], pool: dict[str, Any], longest: int) -> Deployment:
    model = load_model(case["model"])
    device = get_device(case["device"])
    engine = get_engine(pool["engine"])
    if pool["overlap"] is not None:
        engine = engine.with_overrides(overlap_scheduling=pool["overlap"])
    dep = Deployment(
        model,
        device,
        parallel=Parallel(tp=pool["tp"], pp=pool["pp"], dp=pool.get("dp", 1)),
        engine=engine,
        replicas=pool["replicas"],
        max_num_seqs=pool["max_num_seqs"],
        max_num_batched_tokens=pool["max_num_batched_tokens"],
        chunked_prefill=pool["chunked_prefill"],
        prefix_caching=pool["prefix_caching"],
    )
    model.check_tp(pool["tp"])
    if pool.get("kv_tokens") is not None:
        dep = with_kv_tokens(dep, pool["kv_tokens"])
    elif pool["kv_factor"] is not None:  # a tight cache: kv_factor × the longest request
        bs, pp, dp = engine.block_size, pool["pp"], pool.get("dp", 1)
        pages = math.ceil(pool["kv_factor"] * longest / bs) + 1  # per stage's and DP rank's engine
        dep = with_kv_tokens(dep, pages * bs * pp * dp)
    return dep


def build(case: dict[str, Any]) -> tuple[Any, Workload | None, ClosedLoop | None]:
    """The deployment and the workload (or closed loop) a case describes."""
    prompts, outputs = case["prompts"], case["outputs"]
    longest = max(a + b for a, b in zip(prompts, outputs, strict=True))
    dep = _deployment(case, case, longest)
    pol = case["policy"]
    if pol is not None:
        src, err, q, refine = pol.get("estimator", ("oracle", 0.5, 0.5, True))
        policy = Policy(
            name=pol["name"],
            preemption=pol.get("preemption", "recompute"),
            swap_group_blocks=pol.get("swap_group_blocks", 1),
            prefill_preemption=pol.get("prefill_preemption", False),
            class_slos=tuple(ClassSlo(*c) for c in pol.get("class_slos", ())),
            laps_threshold_tokens=pol.get("laps_threshold_tokens", 1024),
            estimator=LengthEstimator(src, err, q, refine),
            preempt_margin_s=pol.get("preempt_margin_s", 0.25),
        )
        dep = replace(dep, policy=policy)
    if case["migration"] is not None:
        dep = replace(dep, migration=Migration(**case["migration"]))
    if case["autoscaler"] is not None:
        dep = replace(dep, autoscaler=Autoscaler(**case["autoscaler"], load_bw_bytes_per_s=1e12))
    if case["kind"] == "disagg":
        dec = _deployment(case, case["decode"], longest)
        dec = replace(dec, policy=dep.policy)
        dep = DisaggDeployment(dep, dec, case["link"], case["kv_compression"])
    elif case["kind"] == "semipd":
        s = case["semipd"]
        ctl = None
        if s["controller"]:
            ctl = SemiPDController(
                Slo(s["ttft_s"], s["tpot_s"]), interval_s=s["interval_s"], window_s=s["window_s"]
            )
        dep = SemiPDDeployment(dep, s["share"], ctl)
    prio = None if case["priorities"] is None else np.asarray(case["priorities"])
    pre = case["prefix"]
    if case["closed"] is not None:
        c = case["closed"]
        closed = ClosedLoop(
            c["clients"],
            len(prompts),
            Empirical(np.asarray(prompts)),
            Empirical(np.asarray(outputs)),
            think_s=c["think_s"],
            seed=c["seed"],
            jitter_s=c["jitter_s"],
            ramp_s=c.get("ramp_s", 0.0),
            request_rate_per_s=c.get("rate", math.inf),
            warmup_requests=c.get("warmup", 0),
        )
        return dep, None, closed
    work = Workload(
        np.asarray(case["arrivals"]),
        np.asarray(prompts),
        np.asarray(outputs),
        priority=prio,
        prefix_hashes=None if pre is None else pre["hashes"],
        prefix_block_tokens=0 if pre is None else pre["block_tokens"],
    )
    return dep, work, None


def _finite(summary: dict[str, Any], path: str = "") -> list[str]:
    """Keys of the summary (nested) whose numbers are not finite."""
    bad = []
    for k, v in summary.items():
        where = f"{path}{k}"
        if isinstance(v, dict):
            bad += _finite(v, where + ".")
        elif isinstance(v, list | tuple):
            flat = np.asarray(v, dtype=object).ravel()
            if any(isinstance(x, float) and not math.isfinite(x) for x in flat):
                bad.append(where)
        elif isinstance(v, float | np.floating) and not math.isfinite(v):
            bad.append(where)
    return bad


def check_result(res: Any, work: Workload | None, closed: ClosedLoop | None) -> None:
    """Raise `PropertyFailure` unless the run kept every property (module docstring)."""
    c = res.columns()
    src = work if work is not None else closed
    n = len(src.prompt_tokens)

    def fail(what: str, mask: np.ndarray) -> None:
        ids = np.flatnonzero(mask)[:10].tolist()
        raise PropertyFailure(f"{what}: requests {ids}")

    if len(c["finish_s"]) != n:
        raise PropertyFailure(f"{len(c['finish_s'])} rows for {n} requests")
    if not np.array_equal(c["prompt_tokens"], np.asarray(src.prompt_tokens)):
        raise PropertyFailure("prompt tokens changed")
    if not np.array_equal(c["output_tokens"], np.asarray(src.output_tokens)):
        raise PropertyFailure("output tokens changed")
    arrival, first, finish = c["arrival_s"], c["first_token_s"], c["finish_s"]
    if not np.all(finish >= 0):
        fail("not finished", ~(finish >= 0))
    if not np.all(c["generated_tokens"] == c["output_tokens"]):
        fail("generated != output tokens", c["generated_tokens"] != c["output_tokens"])
    if not np.all(first >= arrival):
        fail("first token before arrival", ~(first >= arrival))
    if not np.all(c["ttft_s"] <= c["e2e_s"]):
        fail("TTFT > E2E", ~(c["ttft_s"] <= c["e2e_s"]))
    sched_ok = (c["scheduled_s"] >= arrival) & (c["scheduled_s"] <= first)
    if not np.all(sched_ok):
        fail("scheduled outside [arrival, first token]", ~sched_ok)
    if work is not None and not np.array_equal(arrival, np.asarray(work.arrival_s)):
        raise PropertyFailure("arrival times changed")
    if closed is not None:
        # Never more requests in flight than clients: sweep arrivals (+1) and finishes (−1).
        t = np.concatenate((arrival, finish))
        step = np.concatenate((np.ones(n), -np.ones(n)))
        order = np.lexsort((step, t))  # at equal times, finishes first
        if np.cumsum(step[order]).max() > closed.clients:
            raise PropertyFailure(f"more than {closed.clients} requests in flight")
    for r in res.replica_stats:
        if r["busy_s"] > r["provisioned_s"] + 1e-9:
            raise PropertyFailure(f"replica {r['replica']} busy longer than provisioned: {r}")
    reps = {r["replica"] for r in res.replica_stats}
    if not set(np.unique(c["replica"]).tolist()) <= reps:
        raise PropertyFailure("a request finished on a replica that does not exist")
    summary = res.summary()
    bad = _finite(summary)
    if bad:
        raise PropertyFailure(f"non-finite summary figures: {bad}")
    measured = n - (closed.warmup_requests if closed is not None else 0)  # warm-up left out
    if summary["finished"] != measured or summary["requests"] != measured:
        raise PropertyFailure(f"summary counts {summary['finished']} of {summary['requests']}")
    if summary["utilisation"] > 1.0 + 1e-9 or summary["mean_kv_use"] > 1.0 + 1e-9:
        raise PropertyFailure(
            f"utilisation {summary['utilisation']} or KV use {summary['mean_kv_use']} above 1"
        )


@contextmanager
def harvest_every(finishes: int) -> Iterator[None]:
    """Runs started inside move finished requests out of their table (freeing the slot for
    reuse) once `finishes` have accumulated."""
    before = records.HARVEST_EVERY
    records.HARVEST_EVERY = finishes
    try:
        yield
    finally:
        records.HARVEST_EVERY = before


def error_kind(exc: BaseException | str) -> str:
    """A short label for an expected error: the start of its message with quoted names and
    words holding digits or slashes (counts, model, device and deployment names) blurred."""
    text = re.sub(r"'[^']*'", "'…'", str(exc))
    text = re.sub(r"\S*[\d/]\S*", "N", text)
    return text[:48]


def run_case(case: dict[str, Any], limit_s: float = 10.0) -> str | None:
    """Simulate a case and check it; returns the kind of an expected validation error, None
    when the run kept every property; raises `PropertyFailure`, `Hang` or the simulator's own
    exception otherwise."""
    try:
        dep, work, closed = build(case)
    except ServesimError as exc:
        return error_kind(exc)
    router = case["router"]
    try:
        with time_limit(limit_s):
            with harvest_every(2):
                res = simulate(dep, work, closed, router)
            check_result(res, work, closed)
            if case.get("repeat"):
                with harvest_every(10**9):
                    again = simulate(dep, work, closed, router).columns()
                first = res.columns()
                for k, v in first.items():
                    if not np.array_equal(v, again[k], equal_nan=v.dtype.kind == "f"):
                        raise PropertyFailure(f"second run differs in column {k}")
    except ServesimError as exc:
        return error_kind(exc)
    except Hang:
        deployment._PREDICTORS.clear()  # a predictor may have been cut mid-update
        raise
    return None
