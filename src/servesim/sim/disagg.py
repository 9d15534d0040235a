"""Prefill/decode disaggregation (DistServe, Splitwise): two pools joined by a KV transfer.

Prefill replicas run prompts only; when a prompt's first token is out, the request's KV cache
waits in prefill memory until a decode replica (the least loaded; under SGLang the one its
router paired with the prefill at arrival) has room, then moves over the
link — contended when several transfers share an instance's links — and the request joins that
replica's decode batch at its next step (decode admission waits for the transfer). Each pool has
its own device, count, parallelism and batching.

What the client sees as its first token follows the decode pool's engine (`EngineProfile`,
`disagg_*` fields): the router's hand-off from the prefill's end to the decode worker (vLLM's
proxy and TRT-LLM's disaggregated server send the decode request after the prefill's response;
SGLang's router sent it to both at the start), the decode worker's next scheduler pass before it
pulls the KV (TRT-LLM, vLLM), the transfer, then the first token at the decode worker's pass that
admits the request (SGLang, TRT-LLM stream the prefill's token then) or at the end of the decode
iteration that recomputes the last prompt token and samples it (vLLM). With
`disagg_first_token="prefill"` TTFT ends on the prefill side and the transfer shows in TPOT.

The placement search over prefill/decode layouts lives with the planner (`placement`); the
workload DistServe evaluates on is `synthetic.sharegpt_distserve`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.cluster import Cluster, KvPath
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import ItlHistogram
from servesim.sim.pool import build_pool, prepare
from servesim.sim.records import RecordSink
from servesim.sim.result import SimResult, result
from servesim.sim.router import Router
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.transfer import Link, link_for
from servesim.sim.workload import Workload


@dataclass(frozen=True)
class DisaggDeployment:
    """A prefill pool and a decode pool of one model, and how KV moves between them."""

    prefill: Deployment
    decode: Deployment
    # auto, scale_up (nvlink), pcie, infiniband, roce, ethernet or a Link; auto: the scale-up
    # fabric when both pools fit in one of its domains, the scale-out network otherwise
    link: str | Link = "auto"
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

    def link_kind(self) -> str | Link:
        """The link as given, with `auto` resolved: KV stays on the scale-up fabric (NVLink,
        an NVL72 rack's NVLink switches) when both pools are the same device type and fit in
        one of its domains (`max_devices_per_node`), and crosses the scale-out network
        (InfiniBand) otherwise: two 8-GPU pools of an HGX H200 are two nodes, while a GB200
        NVL72 rack moves KV between its trays over NVLink (NIXL and Mooncake use MNNVL)."""
        if not (isinstance(self.link, str) and self.link.strip().lower() == "auto"):
            return self.link
        p, d = self.prefill.device, self.decode.device
        one_domain = p.name == d.name and self.num_devices <= max(1, p.max_devices_per_node)
        return "scale_up" if one_domain else "infiniband"

    def kv_link(self) -> Link:
        """The link KV travels over (the slower end's when the pools' devices differ)."""
        kind = self.link_kind()
        a = link_for(kind, self.prefill.device)
        b = link_for(kind, self.decode.device)
        return a if a.bw_bytes_per_s <= b.bw_bytes_per_s else b

    def memory(self) -> Any:
        """The decode pool's per-device memory layout (where KV capacity limits the batch)."""
        return self.decode.memory()

    def label(self) -> str:
        """Short description such as `P 1x a100_sxm tp2 | D 1x a100_sxm tp1 over nvlink`."""
        kind = self.link_kind()
        link = kind.name if isinstance(kind, Link) else str(kind)
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
    ready_s: np.ndarray | None = None,
) -> SimResult:
    """Serve a workload on a disaggregated deployment (`simulate` calls this); `ready_s`, by
    workload index, holds requests back until then (an encode pool ahead, `sim.encode`)."""
    req = prepare(workload, closed_loop, router, records)
    itl = ItlHistogram()
    pre, _ = build_pool(dep.prefill, req, itl, role="prefill")
    dec, mem = build_pool(dep.decode, replace(req, hashes=None), itl, role="decode")
    path = KvPath.for_model(
        dep.kv_link(), dep.model, dep.kv_compression, dep.decode.parallel, dep.prefill.parallel
    )
    t0 = time.perf_counter()
    cluster = Cluster(
        req.table,
        pre,
        Router(router, req.hashes),
        closed=closed_loop,
        decode=dec,
        kv_path=path,
        ready_s=ready_s,
    )
    cluster.run()
    wall = time.perf_counter() - t0
    return result(dep, pre + dec, req, itl, mem, wall, cluster.stats)
