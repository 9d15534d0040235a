"""KV-cache transfers between replicas over a modelled link, with contention.

A `Link` is the path one device uses to send KV to another instance: NVLink inside a node, PCIe
through host memory, InfiniBand or RoCE RDMA between nodes, or plain Ethernet. Each instance has
one end per device (every GPU of a tensor-parallel replica sends its own shard over its own
link), so an instance's egress and ingress capacity is the link bandwidth times its devices.

`Network` runs transfers with processor sharing: a transfer moves at the smaller of its source's
and its destination's capacity divided by the transfers each carries at that moment, recomputed
whenever a transfer starts or ends; the link latency is paid once per transfer. Compressed KV
(CacheGen) moves fewer bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from servesim.errors import ServesimError
from servesim.spec.devices import Device

LINK_KINDS = ("scale_up", "nvlink", "pcie", "infiniband", "roce", "ethernet")


@dataclass(frozen=True)
class Link:
    """One device's path to a peer instance: bandwidth (one direction) and latency."""

    name: str
    bw_bytes_per_s: float  # per device, one direction, as achieved by bulk transfers
    latency_s: float

    def __post_init__(self) -> None:
        if not (self.bw_bytes_per_s > 0 and math.isfinite(self.bw_bytes_per_s)):
            raise ServesimError(f"Link {self.name!r} needs a positive bandwidth in bytes/s.")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ServesimError(f"Link {self.name!r} needs a latency ≥ 0 s.")

    def seconds(self, nbytes: float, devices: int = 1) -> float:
        """Time of one uncontended transfer of `nbytes` spread over `devices` links."""
        return self.latency_s + nbytes / (self.bw_bytes_per_s * max(1, devices))


def link_for(kind: str | Link, device: Device) -> Link:
    """The link of a kind between devices of a type (achieved, not peak, bandwidth).

    scale_up (or nvlink): the device's GPU-to-GPU link in a node (NVLink, Infinity Fabric, or
    PCIe peer-to-peer on parts without one) at 80 % (NCCL send/recv of large messages);
    pcie: device → host → device staging over the host link at 80 %, each hop ~10 µs;
    infiniband: the device's scale-out NIC share with RDMA at 90 %;
    roce: the same NIC over RoCE v2 at 85 % with ~10 µs more latency;
    ethernet: a 100 GbE NIC per node shared by the node's devices, TCP at 70 %, ~50 µs.
    """
    if isinstance(kind, Link):
        return kind
    k = str(kind).strip().lower()
    if k in ("nvlink", "scale_up"):
        name = device.link_name or k
        return Link(name, 0.8 * device.link_bw_bytes_per_s, device.link_latency_s)
    if k == "pcie":
        return Link("pcie", 0.8 * device.host_bw_bytes_per_s, 20e-6)
    if k == "infiniband":
        return Link("infiniband", 0.9 * device.net_bw_bytes_per_s, device.net_latency_s)
    if k == "roce":
        return Link("roce", 0.85 * device.net_bw_bytes_per_s, device.net_latency_s + 10e-6)
    if k == "ethernet":
        per_device = 12.5e9 / max(1, device.max_devices_per_node)
        return Link("ethernet", 0.7 * per_device, 50e-6)
    raise ServesimError(f"Link kind {kind!r} is unknown; use one of {', '.join(LINK_KINDS)}.")


class _Transfer:
    __slots__ = (
        "done_at",
        "dst",
        "last_t",
        "latency",
        "payload",
        "rate",
        "remaining",
        "src",
        "version",
    )

    def __init__(self, src: Any, dst: Any, nbytes: float, latency: float, payload: Any) -> None:
        self.src = src
        self.dst = dst
        self.remaining = nbytes
        self.latency = latency
        self.payload = payload
        self.rate = 0.0
        self.last_t = 0.0
        self.version = 0
        self.done_at = -1.0  # when the last byte left (the latency is still to be paid)


class Network:
    """Concurrent transfers between endpoints of given capacity, sharing them fairly."""

    def __init__(self) -> None:
        self.capacity: dict[Any, float] = {}  # endpoint -> bytes/s
        self.on: dict[Any, set[int]] = {}  # endpoint -> active transfer ids
        self.active: dict[int, _Transfer] = {}
        self.next_id = 0
        self.bytes_moved = 0.0
        self.transfers = 0
        self.busy_s = 0.0

    def endpoint(self, name: Any, capacity_bytes_per_s: float) -> None:
        """Declare an endpoint (an instance's egress or ingress) and its capacity."""
        self.capacity[name] = capacity_bytes_per_s
        self.on.setdefault(name, set())

    def start(
        self, t: float, src: Any, dst: Any, nbytes: float, latency: float, payload: Any
    ) -> list[tuple[float, int, int]]:
        """Begin a transfer at t; returns (finish time, id, version) of every transfer whose
        finish time changed (the new one included)."""
        tid = self.next_id
        self.next_id += 1
        tr = _Transfer(src, dst, max(0.0, nbytes), latency, payload)
        tr.last_t = t
        self.active[tid] = tr
        on_src, on_dst = self.on[src], self.on[dst]
        self.bytes_moved += tr.remaining
        self.transfers += 1
        if not on_src and not on_dst:  # alone on both ends: the common, uncontended case
            on_src.add(tid)
            on_dst.add(tid)
            tr.rate = rate = min(self.capacity[src], self.capacity[dst])
            tr.version = 1
            return [(t + tr.remaining / rate + latency, tid, 1)]
        on_src.add(tid)
        on_dst.add(tid)
        return self._rerate(t, on_src | on_dst)

    def finish(self, t: float, tid: int) -> tuple[Any, list[tuple[float, int, int]]]:
        """End a transfer (its finish event fired); returns its payload and the new finish
        times of the transfers that now get more bandwidth."""
        tr = self.active.pop(tid)
        on_src, on_dst = self.on[tr.src], self.on[tr.dst]
        on_src.discard(tid)
        on_dst.discard(tid)
        if not on_src and not on_dst:
            return tr.payload, []
        return tr.payload, self._rerate(t, on_src | on_dst)

    def valid(self, tid: int, version: int) -> bool:
        """Whether a finish event is still current."""
        tr = self.active.get(tid)
        return tr is not None and tr.version == version

    def _rerate(self, t: float, ids: set[int]) -> list[tuple[float, int, int]]:
        out = []
        cap, on = self.capacity, self.on
        for tid in ids:
            tr = self.active[tid]
            if tr.done_at >= 0:
                continue  # only its latency is left: bandwidth changes do not matter
            if tr.rate > 0:
                moved = tr.rate * (t - tr.last_t)
                if moved >= tr.remaining:
                    tr.done_at = tr.last_t + tr.remaining / tr.rate
                    tr.remaining = 0.0
                    continue
                tr.remaining -= moved
            tr.last_t = t
            tr.rate = min(cap[tr.src] / len(on[tr.src]), cap[tr.dst] / len(on[tr.dst]))
            tr.version += 1
            out.append((t + tr.remaining / tr.rate + tr.latency, tid, tr.version))
        return out
