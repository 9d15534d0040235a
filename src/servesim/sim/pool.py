"""A run's building blocks shared by colocated, disaggregated and semi-PD runs: `prepare` lays a
workload (or closed loop) out as the table of requests in flight, `build_pool` makes a
deployment's replicas with their policy, prefix cache and KV paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.encoder import EncoderTiming
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import ItlHistogram
from servesim.sim.multimodal import InEngineEncoder
from servesim.sim.policies import PolicyState
from servesim.sim.prefix_cache import PrefixCache
from servesim.sim.records import RecordSink, RequestTable
from servesim.sim.replica import Replica, ReplicaConfig
from servesim.sim.router import check_router
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.workload import Workload
from servesim.spec.memory import MemoryLayout
from servesim.spec.vision import Images


@dataclass
class Requests:
    """A workload laid out for the simulator: the table of requests in flight (which admits
    the workload's requests as they arrive) and what the replicas read."""

    table: RequestTable
    closed: ClosedLoop | None
    longest: int  # prompt + output tokens of the longest request
    hashes: list[Any] | None = None  # prefix hash ids per slot (the table's list)
    block_tokens: int = 0  # tokens per hash block
    outputs: np.ndarray | None = None  # every request's output tokens, by workload index
    images: Images | None = None  # images per request (`sim.multimodal`)


def prepare(
    workload: Workload | None,
    closed_loop: ClosedLoop | None,
    router: str,
    records: RecordSink | None = None,
) -> Requests:
    """Check a workload (or closed loop) and lay out its request table (rows recorded to
    `records`, by default kept in memory)."""
    if (workload is None) == (closed_loop is None):
        raise ServesimError("Give either an open-loop workload or a closed loop, not both.")
    check_router(router)
    src = closed_loop if closed_loop is not None else workload
    prompts = np.asarray(src.prompt_tokens, dtype=np.int64)
    outputs = np.asarray(src.output_tokens, dtype=np.int64)
    n = len(prompts)
    if n == 0:
        raise ServesimError("The workload has no requests.")
    if prompts.min() < 1 or outputs.min() < 1:
        raise ServesimError("Every request needs at least one prompt and one output token.")
    arrivals = None
    if closed_loop is None:
        arrivals = np.asarray(workload.arrival_s, dtype=np.float64)
        if len(arrivals) != n or np.any(arrivals[1:] < arrivals[:-1]):
            raise ServesimError("Arrival times must be sorted and match the request count.")
    prio = getattr(src, "priority", None)
    hashes = getattr(src, "prefix_hashes", None)
    block_tokens = int(getattr(src, "prefix_block_tokens", 0) or 0)
    table = RequestTable(prompts, outputs, arrivals, prio, hashes, records)
    block = 1 << 20  # no temporary of the workload's size
    longest = max(
        int((prompts[i : i + block] + outputs[i : i + block]).max()) for i in range(0, n, block)
    )
    images = getattr(src, "images", None)
    if images is not None and not images.sized:
        raise ServesimError(
            "The workload's images have counts but no size; give them one (--image-size WxH, "
            "or multimodal.size_images)."
        )
    return Requests(table, closed_loop, longest, table.hashes, block_tokens, outputs, images)


def build_pool(
    dep: Deployment,
    req: Requests,
    itl: ItlHistogram,
    role: str = "mixed",
    count: int | None = None,
    own_cache: bool = True,
) -> tuple[list[Replica], MemoryLayout]:
    """Replicas of a deployment (pipeline-parallel ones as `pp` virtual engines sharing the
    cache), with the deployment's policy and, when prompts carry hash ids, prefix caches.
    `own_cache` False: decode lanes sharing their prefill lane's cache (semi-PD), which can
    recompute a preempted request and so do not retract it to host memory."""
    seqs, budget, chunked = dep.batching()
    mem = dep.memory()
    pred = dep.predictor()
    e = dep.engine
    pp = dep.parallel.pp
    if not chunked:
        budget = max(budget, req.longest)  # engines raise the budget to the model length
    dep.model.check_context(req.longest, "A request (prompt and output)")
    blocks = mem.kv_tokens // e.block_size
    per_engine = blocks // pp * e.block_size  # whole pages only
    if req.longest > per_engine:
        fix = (
            "raise --max-kv-tokens"
            if e.max_kv_tokens
            else "use more devices per replica, fp8 KV cache"
        )
        raise ServesimError(
            f"A request of {req.longest} tokens does not fit the KV cache of "
            f"{per_engine} tokens per engine of {dep.label()}; {fix}, or drop requests "
            "longer than the cache."
        )
    cfg = ReplicaConfig(
        max_num_seqs=max(1, seqs // pp),
        max_num_batched_tokens=budget,
        chunked_prefill=chunked,
        mixed_batches=e.mixed_batches,
        block_size=e.block_size,
        kv_blocks=max(1, blocks // pp),
        overlap=dep.overlaps() and role != "prefill",
        defers_results=dep.overlaps() and e.results_after_next_launch,
        # (a context server answers the router once, not a client's stream)
        response_s=e.response_cost_s() if role != "prefill" else 0.0,
        stream_interval=e.stream_interval,
        # (a context server's requests end at their first token: nothing to reserve beyond it)
        reserve_to_completion=e.reserve_to_completion and role != "prefill",
        decode_reserve_tokens=e.disagg_decode_reserve_tokens if role == "decode" else 0,
        retract_to_host=e.disagg_decode_retracts_to_host and role == "decode" and own_cache,
        # (a context server's requests ask for one token; a decode worker pre-allocates)
        new_token_ratio=e.new_token_ratio if role == "mixed" else (),
        recv_interval=(
            e.adp_balance_timeout_iters
            if e.adp_balance_timeout_iters and dep.parallel.dp > 1
            else e.recv_interval_steps
        ),
        recv_quorum=dep.parallel.dp if e.adp_balance_timeout_iters and dep.parallel.dp > 1 else 0,
        batch_wait_iters=e.batch_wait_timeout_iters if dep.parallel.dp == 1 else 0,
        batch_wait_ratio=e.batch_wait_max_tokens_ratio if dep.parallel.dp == 1 else 0.0,
    )
    ps = None
    if dep.policy is not None and not dep.policy.is_fcfs:
        ps = PolicyState(dep.policy, req.table, pred, req.outputs)
    caching = req.hashes is not None and req.block_tokens > 0 and dep.uses_prefix_cache()
    if caching and req.block_tokens % e.block_size:
        raise ServesimError(
            f"The workload's prefix hash blocks of {req.block_tokens} tokens do not fill whole "
            f"KV pages of {e.block_size} tokens ({e.name}); give hash ids per multiple of "
            "the page size (Mooncake traces use 512) or turn prefix caching off."
        )
    encoder = None
    if req.images is not None and role != "decode" and req.images.count.any():
        if dep.vision is None:
            raise ServesimError(
                f"The workload carries images but {dep.label()} has no vision encoder; give the "
                "Deployment the model's VisionEncoder (spec.vision.load_vision) or drop the images."
            )
        kernels = getattr(pred, "kernels", None)  # the pool's measured tables, if any
        timing = EncoderTiming(dep.vision, dep.device, dep.parallel.tp, e, dep.fit, kernels)
        encoder = InEngineEncoder(timing, req.images, req.table.request_id)
    n = (dep.replicas if count is None else count) * pp
    reps = [
        Replica(
            i,
            pred,
            cfg,
            req.table,
            itl,
            policy=ps,
            role=role,
            prefix=PrefixCache(req.block_tokens, e.block_size) if caching else None,
            hashes=req.hashes if caching else None,
            encoder=encoder,
        )
        for i in range(n)
    ]
    return reps, mem
