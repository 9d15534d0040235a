"""Prefill/decode disaggregation (DistServe, Splitwise): two pools joined by a KV transfer.

Prefill replicas run prompts only; when a prompt's first token is out, the request's KV cache
waits in prefill memory until a decode replica (the least loaded) has room, then moves over the
link — contended when several transfers share an instance's links — and the request joins that
replica's decode batch at its next step (decode admission waits for the transfer). Each pool has
its own device, count, parallelism and batching. TTFT ends with the first token on the prefill
side; the transfer shows up in the time per output token.

`capacity` finds the highest request rate at which both the TTFT and the TPOT targets are each
met by a share of requests (DistServe's criterion), by bisection over the workload's scaled
arrivals; `best_placement` searches prefill/decode parallelism and counts on a node.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from servesim.capacity import find_capacity
from servesim.cluster import Cluster, KvPath
from servesim.errors import ServesimError
from servesim.metrics import ItlHistogram, Slo
from servesim.parallel import Parallel
from servesim.records import RecordSink
from servesim.router import Router
from servesim.simulator import Deployment, SimResult, build_pool, prepare, result
from servesim.transfer import Link, link_for
from servesim.workload import ClosedLoop, Workload


@dataclass(frozen=True)
class DisaggDeployment:
    """A prefill pool and a decode pool of one model, and how KV moves between them."""

    prefill: Deployment
    decode: Deployment
    link: str | Link = "nvlink"  # nvlink, pcie, infiniband, roce, ethernet or a Link
    kv_compression: float = 1.0  # CacheGen-style ratio; 1 sends the KV cache as it is

    def __post_init__(self) -> None:
        if self.prefill.model.kv_bytes_per_token() != self.decode.model.kv_bytes_per_token():
            raise ServesimError(
                "Prefill and decode pools must serve the same model with the same KV format; "
                "give both Deployments the same ModelSpec."
            )
        if not (self.kv_compression >= 1.0 and math.isfinite(self.kv_compression)):
            raise ServesimError(
                f"kv_compression {self.kv_compression!r} must be ≥ 1 (1 = uncompressed)."
            )
        for d in (self.prefill, self.decode):
            if d.autoscaler is not None or d.migration is not None:
                raise ServesimError(
                    "Autoscaling and migration are modelled for colocated pools only; remove "
                    "them from the prefill and decode Deployments."
                )

    @property
    def model(self) -> Any:
        """The model both pools serve."""
        return self.prefill.model

    @property
    def num_devices(self) -> int:
        """Devices of both pools."""
        return self.prefill.num_devices + self.decode.num_devices

    @property
    def price_per_hour(self) -> float:
        """Rental cost of both pools, USD per hour."""
        return self.prefill.price_per_hour + self.decode.price_per_hour

    def kv_link(self) -> Link:
        """The link KV travels over (the slower end's when the pools' devices differ)."""
        a = link_for(self.link, self.prefill.device)
        b = link_for(self.link, self.decode.device)
        return a if a.bw_bytes_per_s <= b.bw_bytes_per_s else b

    def memory(self) -> Any:
        """The decode pool's per-device memory layout (where KV capacity limits the batch)."""
        return self.decode.memory()

    def label(self) -> str:
        """Short description such as `P 1x a100_sxm tp2 | D 1x a100_sxm tp1 over nvlink`."""
        link = self.link.name if isinstance(self.link, Link) else str(self.link)
        text = f"P {self.prefill.label()} | D {self.decode.label()} over {link}"
        if self.kv_compression != 1.0:
            text += f" kv/{self.kv_compression:g}"
        return text


def simulate_disagg(
    dep: DisaggDeployment,
    workload: Workload | None = None,
    closed_loop: ClosedLoop | None = None,
    router: str = "round_robin",
    records: RecordSink | None = None,
) -> SimResult:
    """Serve a workload on a disaggregated deployment (`simulate` calls this)."""
    req = prepare(workload, closed_loop, router, records)
    itl = ItlHistogram()
    pre, _ = build_pool(dep.prefill, req, itl, role="prefill")
    dec, mem = build_pool(dep.decode, replace(req, hashes=None), itl, role="decode")
    path = KvPath.for_model(dep.kv_link(), dep.model, dep.kv_compression)
    t0 = time.perf_counter()
    cluster = Cluster(
        req.table,
        pre,
        Router(router, req.hashes),
        closed=closed_loop,
        decode=dec,
        kv_path=path,
    )
    cluster.run()
    wall = time.perf_counter() - t0
    return result(dep, pre + dec, req, itl, mem, wall, cluster.stats)


# ---- capacity and placement search ---------------------------------------------------------


@dataclass(frozen=True)
class CapacityResult:
    """The highest rate meeting both targets, and what each probe saw."""

    rate_per_s: float
    per_gpu_rate_per_s: float
    probes: tuple[tuple[float, float, float], ...]  # (rate, TTFT attainment, TPOT attainment)


def attainments(res: SimResult, slo: Slo) -> tuple[float, float]:
    """Shares of requests meeting the TTFT and the TPOT target, each on its own."""
    cols = res.columns()
    n = len(cols["ttft_s"])
    return (
        float((cols["ttft_s"] <= slo.ttft_s).sum() / n),
        float((cols["tpot_s"] <= slo.tpot_s).sum() / n),
    )


def capacity(
    dep: Any,
    base: Workload,
    slo: Slo,
    target: float = 0.9,
    rel_tol: float = 0.02,
    router: str = "least_loaded",
) -> CapacityResult:
    """Highest request rate at which at least `target` of requests meet the TTFT target and at
    least `target` meet the TPOT target (DistServe's attainment criterion): the general
    capacity search (`capacity.find_capacity`) with criterion "each", reported per device."""
    cap = find_capacity(dep, base, slo, target, rel_tol, criterion="each", router=router)
    rate = cap.rate_per_s
    probes = tuple((p.rate_per_s, p.ttft_ok, p.tpot_ok) for p in cap.probes)
    return CapacityResult(rate, rate / dep.num_devices, probes)


@dataclass(frozen=True)
class Placement:
    """One candidate of a placement search and its capacity."""

    deployment: Any
    per_gpu_rate_per_s: float
    rate_per_s: float

    def label(self) -> str:
        """The deployment's label."""
        return self.deployment.label()


def disagg_candidates(
    base: Deployment,
    gpus: int,
    tps: tuple[int, ...] = (1, 2, 4, 8),
    pps: tuple[int, ...] = (1,),
    counts: bool = False,
    link: str | Link = "nvlink",
    kv_compression: float = 1.0,
    prefill: dict[str, Any] | None = None,
    decode: dict[str, Any] | None = None,
) -> list[DisaggDeployment]:
    """Disaggregated layouts of `base`'s model and device on `gpus` devices: every prefill and
    decode (TP, PP) that fits the memory, one instance each (DistServe's segment) or, with
    `counts`, every prefill:decode instance ratio that fits. `prefill`/`decode` override
    Deployment fields per pool (e.g. chunked_prefill)."""
    out = []
    shapes = [(tp, pp) for tp in tps for pp in pps if tp * pp <= gpus]
    for (tp_p, pp_p), (tp_d, pp_d) in itertools.product(shapes, shapes):
        g_p, g_d = tp_p * pp_p, tp_d * pp_d
        ratios = [(1, 1)]
        if counts:
            ratios = [
                (n_p, n_d)
                for n_p in range(1, gpus // g_p + 1)
                for n_d in range(1, gpus // g_d + 1)
                if n_p * g_p + n_d * g_d <= gpus
            ]
        for n_p, n_d in ratios:
            if n_p * g_p + n_d * g_d > gpus:
                continue
            try:
                p = replace(
                    base, parallel=Parallel(tp=tp_p, pp=pp_p), replicas=n_p, **(prefill or {})
                )
                d = replace(
                    base, parallel=Parallel(tp=tp_d, pp=pp_d), replicas=n_d, **(decode or {})
                )
                p.model.check_tp(tp_p)
                p.model.check_tp(tp_d)
                p.memory()
                d.memory()
            except ServesimError:
                continue
            out.append(DisaggDeployment(p, d, link, kv_compression))
    return out


def colocated_candidates(
    base: Deployment, gpus: int, tps: tuple[int, ...] = (1, 2, 4, 8), **fields: Any
) -> list[Deployment]:
    """Colocated layouts: one TP degree, as many replicas as fit on `gpus` devices."""
    out = []
    for tp in tps:
        if tp > gpus:
            continue
        try:
            d = replace(base, parallel=Parallel(tp=tp), replicas=gpus // tp, **fields)
            d.model.check_tp(tp)
            d.memory()
        except ServesimError:
            continue
        out.append(d)
    return out


def best_placement(
    candidates: list[Any],
    base: Workload,
    slo: Slo,
    target: float = 0.9,
    rel_tol: float = 0.02,
) -> list[Placement]:
    """Capacity of every candidate, best per-GPU goodput first (DistServe's search ranks by
    the highest rate per GPU at which both attainment targets hold)."""
    found = []
    for dep in candidates:
        cap = capacity(dep, base, slo, target, rel_tol)
        found.append(Placement(dep, cap.per_gpu_rate_per_s, cap.rate_per_s))
    found.sort(key=lambda p: (-p.per_gpu_rate_per_s, p.deployment.num_devices, p.label()))
    return found


def sharegpt_distserve(n: int = 300, rate_per_s: float = 1.0, seed: int = 0) -> Workload:
    """ShareGPT as DistServe prepared it for OPT (multi-turn history as the prompt, prompt +
    output < 2048 tokens), fitted with lognormals to the 300-request sample DistServe publishes
    with its simulator (simdistserve/benchmarks/alignment/data-ground-truth/opt-13b-sharegpt/
    distserve-300-3.exp; 197 rows read): prompt median 768, p90 1532 (mean 801); output median
    45, p90 449 (mean 145). Pairs whose total reaches 2048 are redrawn, as DistServe drops them.
    Poisson arrivals at `rate_per_s`."""
    from servesim.workload import LogNormal, poisson_arrivals

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
