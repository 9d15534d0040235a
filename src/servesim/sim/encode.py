"""Encode–prefill–decode (EPD) disaggregation: a pool of encode workers runs the vision encoder
ahead of the language model's prefill and decode pools (Singh et al., "Efficiently Serving
Large Multimodal Models Using EPD Disaggregation", 2024; vLLM's `disagg_encoder` proxy).

A request with images goes to the encode pool first. Each image is one job: with
`split_images` (EPD's intra-request parallelism) a request's images go each to the worker that
is free soonest, else all to one worker one after another; a worker encodes its images in order
(the ViT over thousands of patches is compute-bound, so batching images changes their sum
little). An encoded image's embeddings (tokens × out_hidden_size × 2 bytes) leave over the
worker's link to the prefill pool, one transfer at a time per worker. The request is ready for
the language model when its last image's embeddings arrived plus the proxy's hop to the prefill
server (`EngineProfile.handoff_s`, the hop the prefill→decode hand-off also pays); a text-only
request is ready at once. The language-model side — prefill and decode pools joined by a KV
transfer (`disagg`), or colocated replicas — then serves the request with its image tokens in
the prompt but no encoder work, its TTFT counted from the request's arrival.

Because the encode pool does not depend on what happens downstream, it is computed first over
the known arrivals (open loop only); the downstream cluster takes each request no earlier than
that ready time, in arrival order (the frontend's order, as for every request).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor import measured_kernels, roofline, twin_efficiency
from servesim.predictor.encoder import EncoderTiming
from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL
from servesim.sim.cluster import Cluster
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment, simulate_disagg
from servesim.sim.metrics import ItlHistogram, Quantiles
from servesim.sim.pool import build_pool, prepare
from servesim.sim.records import RecordSink
from servesim.sim.result import SimResult, result
from servesim.sim.router import Router
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.transfer import Link, link_for
from servesim.sim.workload import Workload
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile, get_engine
from servesim.spec.vision import VisionEncoder


@dataclass(frozen=True)
class EncodePool:
    """Workers that only run the vision encoder (EPD's E stage), `tp` devices each."""

    vision: VisionEncoder
    device: Device
    workers: int = 1
    tp: int = 1
    engine: EngineProfile = field(default_factory=lambda: get_engine("vllm"))
    fit: roofline.KernelFit | None = None
    # auto: the GPU's measured GEMM and encoder-attention tables where it has them
    latency_model: str = DEFAULT_LATENCY_MODEL

    def __post_init__(self) -> None:
        for key in ("workers", "tp"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ServesimError(f"Encode pool {key} is {v!r}; it must be a whole number ≥ 1.")
        if self.vision.weight_bytes() > self.device.mem_bytes * self.tp:
            raise ServesimError(
                f"The vision encoder's {self.vision.weight_bytes() / 1e9:.1f} GB of weights do not "
                f"fit {self.tp} {self.device.name}; use more devices per encode worker."
            )

    @property
    def num_devices(self) -> int:
        """Devices of the pool."""
        return self.workers * self.tp

    @property
    def price_per_hour(self) -> float:
        """Rental cost of the pool, USD per hour."""
        return self.num_devices * self.device.price_per_hour

    def timing(self) -> EncoderTiming:
        """Seconds per image on one worker."""
        fit = self.fit or twin_efficiency.default_fit()
        e = self.engine
        kernels = measured_kernels.backend(
            self.latency_model, self.device, e.name, e.version or None, fit
        )
        return EncoderTiming(self.vision, self.device, self.tp, e, fit, kernels)

    def label(self) -> str:
        """Short description such as `4x h100_sxm tp1`."""
        return f"{self.workers}x {self.device.name} tp{self.tp}"


@dataclass(frozen=True)
class EpdDeployment:
    """An encode pool in front of the language model's serving (P and D pools, or colocated
    replicas), joined by the embedding transfer over `link`."""

    encode: EncodePool
    serve: Deployment | DisaggDeployment
    link: str | Link = "nvlink"
    split_images: bool = True  # EPD's intra-request parallelism over the encode workers

    def __post_init__(self) -> None:
        if not isinstance(self.serve, Deployment | DisaggDeployment):
            raise ServesimError(
                "EPD serves the language model on a Deployment or a DisaggDeployment; got a "
                f"{type(self.serve).__name__}."
            )
        if self.model.hidden_size != self.encode.vision.out_hidden_size:
            raise ServesimError(
                f"The vision encoder hands over {self.encode.vision.out_hidden_size}-wide "
                f"embeddings but {self.model.name} has hidden size {self.model.hidden_size}; "
                "give the encoder of the same model."
            )

    @property
    def model(self) -> Any:
        """The language model served."""
        return self.serve.model

    @property
    def num_devices(self) -> int:
        """Devices of all pools."""
        return self.encode.num_devices + self.serve.num_devices

    @property
    def price_per_hour(self) -> float:
        """Rental cost of all pools, USD per hour."""
        return self.encode.price_per_hour + self.serve.price_per_hour

    def memory(self) -> Any:
        """The language model side's per-device memory layout."""
        return self.serve.memory()

    def embed_link(self) -> Link:
        """The link embeddings travel over (the slower end's)."""
        a = link_for(self.link, self.encode.device)
        b = link_for(self.link, _entry(self.serve).device)
        return a if a.bw_bytes_per_s <= b.bw_bytes_per_s else b

    def label(self) -> str:
        """Short description such as `E 2x h100_sxm tp1 | P ... | D ...`."""
        serve = self.serve.label()
        if isinstance(self.serve, Deployment):
            serve = f"PD {serve}"
        return f"E {self.encode.label()} | {serve}"


def _entry(serve: Deployment | DisaggDeployment) -> Deployment:
    return serve.prefill if isinstance(serve, DisaggDeployment) else serve


@dataclass
class EncodeStage:
    """What the encode pool did: when each request is ready for the language model."""

    ready_s: np.ndarray  # by workload index (arrival for text-only requests)
    images: int
    encode_s: Quantiles  # per request with images: arrival to embeddings at the prefill pool
    busy_s: np.ndarray  # per worker
    embed_bytes: float


def encode_stage(dep: EpdDeployment, workload: Workload) -> EncodeStage:
    """Run the encode pool over a workload's arrivals (see the module note)."""
    n = len(workload)
    images = workload.images
    pool = dep.encode
    e = _entry(dep.serve).predictor().engine  # the profile as it runs on the device's host
    ready = np.asarray(workload.arrival_s, dtype=np.float64).copy()
    stats = Quantiles()
    busy = np.zeros(pool.workers)
    if images is None or not images.count.any():
        return EncodeStage(ready, 0, stats, busy, 0.0)
    enc = pool.vision
    per_image_s = images.per_image(enc, pool.timing().image_s)
    per_image_b = images.per_image(enc, enc.embedding_bytes)
    link = dep.embed_link()
    bw = link.bw_bytes_per_s * pool.tp
    free = [(0.0, w) for w in range(pool.workers)]  # (free at, worker)
    link_free = np.zeros(pool.workers)
    total_b = 0.0
    count = images.count
    prompts = workload.prompt_tokens
    for i in range(n):
        c = int(count[i])
        if not c:
            continue
        a = ready[i] + e.frontend_s(int(prompts[i]))
        t_img, b_img = float(per_image_s[i]), float(per_image_b[i])
        last = a
        t_free, w = heapq.heappop(free)  # the worker free soonest
        for k in range(c):
            if k and dep.split_images:  # the next image to the next worker free soonest
                heapq.heappush(free, (t_free, w))
                t_free, w = heapq.heappop(free)
            t_free = max(a, t_free) + t_img
            busy[w] += t_img
            # Its embeddings leave when encoded, after the worker's previous sends.
            link_free[w] = max(t_free, link_free[w]) + b_img / bw
            last = max(last, link_free[w] + link.latency_s)
        heapq.heappush(free, (t_free, w))
        total_b += c * b_img
        done = last + e.handoff_s(int(prompts[i]))
        stats.append(done - ready[i])
        ready[i] = done
    return EncodeStage(ready, int(count.sum()), stats, busy, total_b)


def simulate_epd(
    dep: EpdDeployment,
    workload: Workload | None = None,
    closed_loop: ClosedLoop | None = None,
    router: str = "round_robin",
    records: RecordSink | None = None,
) -> SimResult:
    """Serve a workload with images on an EPD deployment (`simulate` calls this)."""
    if closed_loop is not None or workload is None:
        raise ServesimError(
            "EPD runs are simulated for open-loop workloads (arrival times known in advance); "
            "give a workload instead of a closed loop."
        )
    stage = encode_stage(dep, workload)
    text = replace(workload, images=None)  # image tokens stay in the prompt, encoded already
    serve = dep.serve
    if isinstance(serve, DisaggDeployment):
        res = simulate_disagg(serve, text, router=router, records=records, ready_s=stage.ready_s)
    else:
        if serve.autoscaler is not None or serve.migration is not None:
            raise ServesimError(
                "Autoscaling and migration are not modelled behind an encode pool; remove them "
                "from the Deployment."
            )
        req = prepare(text, None, router, records)
        itl = ItlHistogram()
        reps, mem = build_pool(serve, req, itl)
        cluster = Cluster(req.table, reps, Router(router, req.hashes), ready_s=stage.ready_s)
        cluster.run()
        res = result(serve, reps, req, itl, mem, 0.0, cluster.stats)
    res.deployment = dep
    span = max(res.records.end_s - res.records.start_s, 1e-12)
    # Each encode worker as a row of the run's replicas: its busy time and energy (idle power
    # over the run, full dynamic power while encoding), so the summary's energy, cost per
    # token and utilisation count the encode pool.
    dev, tp = dep.encode.device, dep.encode.tp
    for w, busy in enumerate(stage.busy_s):
        joules = tp * (dev.idle_power_w * span + (dev.max_power_w - dev.idle_power_w) * busy)
        res.replica_stats.append(
            {
                "replica": -1 - w,
                "role": "encode",
                "busy_s": float(busy),
                "iterations": 0,
                "energy_j": joules,
                "provisioned_s": span,
            }
        )
    res.extra.update(
        {
            "encode_workers": dep.encode.workers,
            "images": stage.images,
            "encode_s_p50": stage.encode_s.percentiles([50])[0] if stage.images else 0.0,
            "encode_s_p99": stage.encode_s.percentiles([99])[0] if stage.images else 0.0,
            "encode_utilisation": float(stage.busy_s.sum() / (span * dep.encode.workers)),
            "embedding_bytes": stage.embed_bytes,
        }
    )
    return res
