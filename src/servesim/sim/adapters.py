"""Many LoRA adapters on one base model (S-LoRA, Punica; BlockLLM-style sharing of one base).

Each request names an adapter. A replica keeps `gpu_slots` adapters in GPU memory (vLLM's
`--max-loras`: the distinct adapters a batch may use; S-LoRA's unified paging takes them from
the same pool as the KV cache, so the slots cost KV capacity);
an adapter that is not resident is copied from host memory over the device's host link before
its request can run, evicting the least recently used adapter that no request in flight is
using. Batching requests of different adapters adds their own work to every iteration
(`predictor.lora`): the weights of each distinct adapter in the batch are read, and each token
multiplied by its adapter (about 1 % of an 8B model's FLOPs at rank 16).

`serve_with_adapters` finds the swap delays by fixed point: it simulates the replica, replays
the adapter cache over the requests in arrival order with each request holding its adapter
from arrival to its simulated finish, delays the requests whose adapter had to be loaded (the
loads queue on one host link per replica), and simulates again with those arrivals; two rounds
settle the delays to well under an iteration in the cases tested.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.lora import LoraAdapters

ROUNDS = 2


def _with_adapter_pool(dep: Any, adapters: LoraAdapters) -> Any:
    """The deployment with the adapter slots taken out of each device's memory."""
    pool = adapters.gpu_slots * adapters.bytes_per_adapter(dep.model) / dep.parallel.tp
    mem = dep.device.mem_bytes - pool
    if mem <= 0:
        raise ServesimError(
            f"{adapters.gpu_slots} adapter slots need {pool / 1e9:.1f} GB per device, more than "
            f"{dep.device.name} has; use fewer slots or a lower rank."
        )
    return replace(dep, device=replace(dep.device, mem_bytes=mem), lora=adapters)


def _replay(
    arrival: np.ndarray,
    finish: np.ndarray,
    ids: np.ndarray,
    slots: int,
    load_s: float,
) -> tuple[np.ndarray, int]:
    """Engine arrival of each request after its adapter is resident, and how many loads."""
    order = np.argsort(arrival, kind="stable")
    resident: dict[int, float] = {}  # adapter -> last use (LRU)
    busy_until: dict[int, float] = {}  # adapter -> latest finish of a request using it
    link_free = -math.inf
    ready = arrival.astype(np.float64).copy()
    loads = 0
    for i in order:
        t, a = float(arrival[i]), int(ids[i])
        if a not in resident:
            start = t
            if len(resident) >= slots:
                # Evict the least recently used adapter no request in flight holds; if all are
                # held, wait for the first to be released.
                free = [(last, b) for b, last in resident.items() if busy_until.get(b, -1) <= t]
                if free:
                    victim = min(free)[1]
                else:
                    victim = min(resident, key=lambda b: busy_until[b])
                    start = busy_until[victim]
                del resident[victim]
            start = max(start, link_free)
            link_free = start + load_s
            ready[i] = link_free
            loads += 1
        resident[a] = t
        busy_until[a] = max(busy_until.get(a, -math.inf), float(finish[i]))
    return ready, loads


def serve_with_adapters(dep: Any, workload: Workload, adapters: LoraAdapters) -> dict[str, Any]:
    """Serve `workload` on one replica of `dep` whose requests name LoRA adapters; returns the
    latencies from each request's arrival (request order), loads and delays."""
    if getattr(dep, "replicas", 1) != 1:
        raise ServesimError("Adapter swapping is modelled on one replica; use replicas=1.")
    n = len(workload)
    ids = adapters.assign(n)
    pooled = _with_adapter_pool(dep, adapters)
    load_s = (
        adapters.bytes_per_adapter(dep.model) / dep.parallel.tp / dep.device.host_bw_bytes_per_s
    )
    arrival = np.asarray(workload.arrival_s, dtype=np.float64)
    engine_arrival = arrival.copy()
    loads = 0
    ttft = finish = np.zeros(n)
    for _ in range(ROUNDS + 1):
        order = np.argsort(engine_arrival, kind="stable")
        w = Workload(
            engine_arrival[order],
            workload.prompt_tokens[order],
            workload.output_tokens[order],
            name=workload.name,
        )
        cols = simulate(pooled, w).columns()
        back = np.empty(n, dtype=np.int64)
        back[order] = np.arange(n)  # request i of the workload is request back[i] here
        by_id = np.argsort(cols["request_id"])
        first = cols["first_token_s"][by_id][back]
        finish = cols["finish_s"][by_id][back]
        ttft = first - arrival
        engine_arrival, loads = _replay(arrival, finish, ids, adapters.gpu_slots, load_s)
    delay = engine_arrival - arrival
    return {
        "requests": n,
        "adapters": adapters.num_adapters,
        "gpu_slots": adapters.gpu_slots,
        "adapter_mb": adapters.bytes_per_adapter(dep.model) / 1e6,
        "load_ms": load_s * 1e3,
        "loads": loads,
        "load_delay_mean_s": float(delay.mean()),
        "ttft_p50_s": float(np.median(ttft)),
        "ttft_p99_s": float(np.quantile(ttft, 0.99)),
        "e2e_p99_s": float(np.quantile(finish - arrival, 0.99)),
        "kv_tokens": pooled.memory().kv_tokens,
        "ttft_s": ttft,
    }
