"""KV-cache transfers between replicas over a modelled link, with contention.

A `Link` is the path one device uses to send KV to another instance: NVLink inside a node, PCIe
through host memory, InfiniBand or RoCE RDMA between nodes, or plain Ethernet. Each instance has
one end per device (every GPU of a tensor-parallel replica sends its own shard over its own
link), so an instance's egress and ingress capacity is the link bandwidth times its devices;
one request's transfer may be capped below that, at the links of the ranks it runs between.

`Network` runs transfers with processor sharing: a transfer moves at the smallest of its cap and
its source's and its destination's capacity divided by the transfers each carries at that
moment, recomputed whenever a transfer starts or ends; the link latency is paid once per
transfer (a transfer holds its share until it has arrived). Compressed KV (CacheGen) moves fewer
bytes.

Transfers with the same source, destination, latency and cap always move at the same rate, so they
form one class served in virtual time (bytes each member has moved since the class began): a
member's bytes are out when the class's virtual time reaches its start mark plus its size, so
members leave in the order of those marks and only the class's next departure is an event.
A start or an end costs O(log n) plus the classes sharing its endpoints, not O(transfers).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
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


_KEEP_CLASSES = 64  # idle classes kept for reuse up to this many


class _Transfer:
    __slots__ = ("cls", "dst", "end_v", "finish_t", "payload", "src", "version")

    def __init__(self, cls: _Class, end_v: float, payload: Any) -> None:
        self.cls = cls
        self.src = cls.src
        self.dst = cls.dst
        self.end_v = end_v  # the class's virtual time at which its last byte is out
        self.payload = payload
        self.version = 0
        self.finish_t = -1.0  # arrival time, once its last byte is out


class _Class:
    """Transfers of one (source, destination, latency, cap): they share one rate at all times."""

    __slots__ = (
        "cap", "dst", "event", "latency", "n", "rate", "sending", "src", "t", "tail", "v",
    )  # fmt: skip

    def __init__(self, src: Any, dst: Any, latency: float, cap: float) -> None:
        self.src = src
        self.dst = dst
        self.latency = latency
        self.cap = cap  # bytes/s one member moves at most, whatever its endpoints leave it
        self.rate = 0.0  # bytes/s of each member still sending
        self.v = 0.0  # virtual time: bytes each sending member has moved since the class began
        self.t = 0.0  # when `v` was last brought up to date
        self.sending: list[tuple[float, int]] = []  # heap of (end_v, tid) of members sending
        self.tail: deque[int] = deque()  # members whose bytes are out, by arrival time
        self.event = -1  # the member whose arrival is the class's pending event
        self.n = 0  # members (sending or paying their latency)


class Network:
    """Concurrent transfers between endpoints of given capacity, sharing them fairly; a
    transfer may also have a rate cap of its own (the few NICs of the ranks it runs between,
    where an endpoint is a whole replica's)."""

    def __init__(self) -> None:
        self.capacity: dict[Any, float] = {}  # endpoint -> bytes/s
        self.count: dict[Any, int] = {}  # endpoint -> transfers it carries (until arrival)
        # endpoint -> classes with members on it (a dict as an ordered set)
        self.classes_on: dict[Any, dict[_Class, None]] = {}
        self.classes: dict[tuple[Any, Any, float, float], _Class] = {}
        self.active: dict[int, _Transfer] = {}
        self.next_id = 0
        self.bytes_moved = 0.0
        self.transfers = 0

    def endpoint(self, name: Any, capacity_bytes_per_s: float) -> None:
        """Declare an endpoint (an instance's egress or ingress) and its capacity."""
        self.capacity[name] = capacity_bytes_per_s
        self.count.setdefault(name, 0)
        self.classes_on.setdefault(name, {})

    def start(
        self,
        t: float,
        src: Any,
        dst: Any,
        nbytes: float,
        latency: float,
        payload: Any,
        cap: float = math.inf,
    ) -> list[tuple[float, int, int]]:
        """Begin a transfer at t, moving at most `cap` bytes/s; returns (arrival time, id,
        version) of every pending arrival that changed (the new transfer's, if it is its
        class's next)."""
        added = self._add(t, (src, dst, nbytes, latency, payload), cap)
        return [added] if isinstance(added, tuple) else self._rerate(t, added)

    def start_many(
        self, t: float, items: list[tuple[Any, Any, float, float, Any]], cap: float = math.inf
    ) -> list[tuple[float, int, int]]:
        """Begin several transfers at t, in order, each (src, dst, nbytes, latency, payload)
        and each moving at most `cap` bytes/s; returns the pending arrivals that changed, as
        `start` does. The links are re-rated once, after the last start, and the times are
        those of starting them one by one: a start at t moves no class's bytes, and a class's
        rate depends only on the counts of its endpoints, so each class ends with the rate and
        next arrival the last start touching it gives it. Arrivals that a later start
        supersedes are left out."""
        fast: list[tuple[float, int, int]] = []
        touched: dict[_Class, None] = {}
        for item in items:
            added = self._add(t, item, cap)
            if isinstance(added, tuple):
                fast.append(added)
            else:
                touched.update(dict.fromkeys(added))
        out = self._rerate(t, list(touched)) if touched else []
        active = self.active
        # A lone start's arrival stands unless a later start re-rated its class.
        out += [e for e in fast if active[e[1]].version == e[2]]
        return out

    def _add(
        self, t: float, item: tuple[Any, Any, float, float, Any], cap: float
    ) -> tuple[float, int, int] | list[_Class]:
        """A transfer's bookkeeping at its start (`item`: src, dst, nbytes, latency, payload):
        its arrival when it is alone on both ends (the common case), else the classes whose
        rates it changes (to re-rate)."""
        src, dst, nbytes, latency, payload = item
        key = (src, dst, latency, cap)
        cls = self.classes.get(key)
        if cls is None:
            cls = self.classes[key] = _Class(src, dst, latency, cap)
        nbytes = max(0.0, nbytes)
        count = self.count
        tid = self.next_id
        self.next_id += 1
        self.bytes_moved += nbytes
        self.transfers += 1
        if not cls.n:
            self.classes_on[src][cls] = None
            self.classes_on[dst][cls] = None
        cls.n += 1
        if not count[src] and not count[dst]:  # alone on both ends: the common case
            count[src] = count[dst] = 1
            tr = _Transfer(cls, cls.v + nbytes, payload)
            tr.version = 1
            self.active[tid] = tr
            heapq.heappush(cls.sending, (tr.end_v, tid))
            cls.t = t
            cls.event = tid
            cls.rate = rate = min(self.capacity[src], self.capacity[dst], cap)
            return (t + nbytes / rate + latency, tid, 1)
        touched = self._catch_up(t, src, dst)  # (cls is on src: it is among them)
        tr = _Transfer(cls, cls.v + nbytes, payload)
        self.active[tid] = tr
        heapq.heappush(cls.sending, (tr.end_v, tid))
        count[src] += 1
        count[dst] += 1
        return touched

    def finish(self, t: float, tid: int) -> tuple[Any, list[tuple[float, int, int]]]:
        """End a transfer (its arrival event fired); returns its payload and the new arrival
        times of the transfers that now get more bandwidth."""
        tr = self.active[tid]
        cls, src, dst, count = tr.cls, tr.src, tr.dst, self.count
        count[src] -= 1
        count[dst] -= 1
        cls.event = -1
        cls.n -= 1
        if not count[src] and not count[dst]:  # it was alone on both ends
            del self.active[tid]
            self._idle(cls)
            if cls.tail:
                cls.tail.popleft()
            else:
                heapq.heappop(cls.sending)
            cls.rate = 0.0
            return tr.payload, []
        touched = self._catch_up(t, src, dst)
        del self.active[tid]
        if cls.tail and cls.tail[0] == tid:
            cls.tail.popleft()
        else:  # its last byte left at t − latency, a rounding error short of the class's mark
            first = heapq.heappop(cls.sending)[1]
            assert first == tid, "only a class's next arrival can fire"
        if not cls.n:
            self._idle(cls)
        return tr.payload, self._rerate(t, touched)

    def _idle(self, cls: _Class) -> None:
        """A class lost its last member: off its endpoints' lists; forgotten when classes are
        many (migration deltas each bring their own latency), so memory stays bounded."""
        del self.classes_on[cls.src][cls], self.classes_on[cls.dst][cls]
        if len(self.classes) > _KEEP_CLASSES:
            del self.classes[(cls.src, cls.dst, cls.latency, cls.cap)]

    def valid(self, tid: int, version: int) -> bool:
        """Whether an arrival event is still current."""
        tr = self.active.get(tid)
        return tr is not None and tr.version == version

    def _catch_up(self, t: float, src: Any, dst: Any) -> list[_Class]:
        """Bring every class with members on these endpoints to time t at its current rate
        (members whose bytes went out meanwhile get their arrival time); returns them."""
        touched = [*self.classes_on[src]]
        touched += [c for c in self.classes_on[dst] if c.src != src]
        active = self.active
        for cls in touched:
            rate = cls.rate
            if rate > 0.0 and t > cls.t:
                v0, t0 = cls.v, cls.t
                cls.v = v = v0 + rate * (t - t0)
                sending = cls.sending
                limit = v + 1e-12 * v  # marks equal to v up to rounding are out too
                while sending and sending[0][0] <= limit:
                    end_v, tid = heapq.heappop(sending)
                    tr = active[tid]
                    tr.finish_t = t0 + max(0.0, end_v - v0) / rate + cls.latency
                    cls.tail.append(tid)
            cls.t = t  # (events come in time order)
        return touched

    def _rerate(self, t: float, touched: list[_Class]) -> list[tuple[float, int, int]]:
        """New rates for the classes whose endpoints' loads changed, and their next arrival."""
        out = []
        cap, count, active = self.capacity, self.count, self.active
        for cls in touched:
            if not cls.sending and not cls.tail:
                cls.rate = 0.0
                continue
            ns, nd = count[cls.src], count[cls.dst]
            rate = min(cap[cls.src] / ns, cap[cls.dst] / nd, cls.cap)
            same = rate == cls.rate
            cls.rate = rate
            if cls.tail:
                tid = cls.tail[0]
                if cls.event == tid:
                    continue  # its arrival time is fixed and already pending
                when = active[tid].finish_t
            else:
                end_v, tid = cls.sending[0]
                if same and cls.event == tid:
                    continue  # same rate, same next member: its pending arrival stands
                when = t + (end_v - cls.v) / rate + cls.latency
            if cls.event >= 0 and cls.event != tid:
                active[cls.event].version += 1  # its pending event is stale
            tr = active[tid]
            tr.version += 1
            cls.event = tid
            out.append((when, tid, tr.version))
        return out
