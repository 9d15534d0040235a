"""KV transfers in virtual time per (source, destination, latency, cap) class are the same
processor sharing as pricing every transfer at every change: checked against a plain
per-transfer reference, on random start sequences and on a whole disaggregated cluster run."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from servesim.sim import cluster as cluster_module
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed, Uniform, synthetic
from servesim.sim.transfer import Network
from servesim.spec.devices import get_device
from servesim.spec.model import load_model


class ReferenceNetwork:
    """Processor sharing priced the plain way: every transfer on a changed endpoint gets a new
    rate and a new finish event (O(transfers) per start or end)."""

    def __init__(self) -> None:
        self.capacity: dict = {}
        self.on: dict = {}
        self.active: dict = {}
        self.next_id = 0

    def endpoint(self, name, capacity_bytes_per_s: float) -> None:
        self.capacity[name] = capacity_bytes_per_s
        self.on.setdefault(name, set())

    def start(self, t, src, dst, nbytes, latency, payload, cap=math.inf):
        tid = self.next_id
        self.next_id += 1
        # [src, dst, remaining, latency, payload, rate, last_t, version, bytes out, cap]
        self.active[tid] = [src, dst, max(0.0, nbytes), latency, payload, 0.0, t, 0, False, cap]
        self.on[src].add(tid)
        self.on[dst].add(tid)
        return self._rerate(t, self.on[src] | self.on[dst])

    def start_many(self, t, items, cap=math.inf):
        out = []
        for src, dst, nbytes, latency, payload in items:
            out += self.start(t, src, dst, nbytes, latency, payload, cap)
        return out

    def finish(self, t, tid):
        tr = self.active.pop(tid)
        self.on[tr[0]].discard(tid)
        self.on[tr[1]].discard(tid)
        return tr[4], self._rerate(t, self.on[tr[0]] | self.on[tr[1]])

    def valid(self, tid, version) -> bool:
        tr = self.active.get(tid)
        return tr is not None and tr[7] == version

    def _rerate(self, t, ids):
        out = []
        for tid in sorted(ids):
            tr = self.active[tid]
            if tr[8]:
                continue  # only its latency is left
            if tr[5] > 0:
                moved = tr[5] * (t - tr[6])
                if moved >= tr[2] * (1 - 1e-12):
                    tr[8] = True
                    continue
                tr[2] -= moved
            tr[6] = t
            src, dst = tr[0], tr[1]
            tr[5] = min(
                self.capacity[src] / len(self.on[src]),
                self.capacity[dst] / len(self.on[dst]),
                tr[9],
            )
            tr[7] += 1
            out.append((t + tr[2] / tr[5] + tr[3], tid, tr[7]))
        return out


def _run(
    net, starts: list[tuple[float, str, str, float, float]], together: bool = False, cap=math.inf
) -> dict[int, float]:
    """Drive a network with transfers started at given times, each moving at most `cap`
    bytes/s; returns each one's arrival. With `together`, the starts due at one time go in one
    `start_many` call (as the cluster starts a prefill batch's hand-offs)."""
    for ep in ("p0", "p1", "p2"):
        net.endpoint(ep, 10.0)
    for ep in ("d0", "d1"):
        net.endpoint(ep, 25.0)
    heap: list[tuple[float, int, int, int]] = []  # (time, kind 0 = start 1 = arrival, id, ver)
    for i, s in enumerate(starts):
        heapq.heappush(heap, (s[0], 0, i, 0))
    arrived: dict[int, float] = {}
    while heap:
        t, kind, a, ver = heapq.heappop(heap)
        if kind == 0:
            due = [a]
            while together and heap and heap[0][:2] == (t, 0):
                due.append(heapq.heappop(heap)[2])
            items = [(*starts[i][1:], i) for i in due]
            events = net.start_many(t, items, cap) if together else net.start(t, *items[0], cap)
        elif net.valid(a, ver):
            payload, events = net.finish(t, a)
            arrived[payload] = t
        else:
            continue
        for t2, tid, v in events:
            heapq.heappush(heap, (t2, 1, tid, v))
    assert not net.active
    return arrived


@pytest.mark.parametrize("seed", range(6))
def test_classes_give_every_transfer_the_reference_arrival(seed: int) -> None:
    """Random starts on three sources and two destinations, sizes 0–100 bytes, two latencies
    (so classes split by latency too): every arrival within 1e-9 s of the reference's."""
    rng = np.random.default_rng(seed)
    t = 0.0
    starts = []
    for _ in range(300):
        t += float(rng.exponential(0.5)) * (rng.random() < 0.7)  # bursts of equal start times
        starts.append(
            (
                t,
                f"p{rng.integers(3)}",
                f"d{rng.integers(2)}",
                float(rng.choice([0.0, rng.uniform(1, 100), 50.0])),
                float(rng.choice([0.0, 0.3])),
            )
        )
    fast, ref = _run(Network(), starts), _run(ReferenceNetwork(), starts)
    assert sorted(fast) == list(range(len(starts)))
    for i in range(len(starts)):
        assert fast[i] == pytest.approx(ref[i], abs=1e-9), i
        # Never faster than alone on the slower end, never before it started.
        alone = starts[i][0] + starts[i][3] / 10.0 + starts[i][4]
        assert fast[i] >= alone - 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_starting_together_gives_the_arrivals_of_starting_one_by_one(seed: int) -> None:
    """Bursts of transfers due at one time started by one `start_many` call (one re-rating)
    arrive exactly when starting them one by one makes them arrive, to the last bit, and
    hand the loop fewer events."""
    rng = np.random.default_rng(100 + seed)
    t = 0.0
    starts = []
    for _ in range(300):
        t += float(rng.exponential(0.5)) * (rng.random() < 0.3)  # bursts of ~3 at one time
        starts.append(
            (
                t,
                f"p{rng.integers(3)}",
                f"d{rng.integers(2)}",
                float(rng.choice([0.0, rng.uniform(1, 100), 50.0])),
                float(rng.choice([0.0, 0.3])),
            )
        )
    handed = {False: 0, True: 0}

    def counting(together: bool) -> Network:
        net = Network()
        real_start, real_many = net.start, net.start_many

        def start(*a):
            out = real_start(*a)
            handed[together] += len(out)
            return out

        def start_many(*a):
            out = real_many(*a)
            handed[together] += len(out)
            return out

        net.start, net.start_many = start, start_many  # type: ignore[method-assign]
        return net

    one_by_one = _run(counting(False), starts)
    together = _run(counting(True), starts, together=True)
    assert together == one_by_one
    assert handed[True] < handed[False]


def test_every_transfer_with_its_own_latency_matches_too() -> None:
    """Live-migration deltas each carry their own latency, so each is a class of its own (more
    classes than are kept idle): arrivals still match the reference."""
    rng = np.random.default_rng(11)
    times = np.cumsum(rng.exponential(0.3, 400))
    starts = [
        (float(t), f"p{rng.integers(3)}", f"d{rng.integers(2)}", float(rng.uniform(1, 60)), lat)
        for t, lat in zip(times, rng.uniform(0.0, 1.0, 400), strict=True)
    ]
    net = Network()
    fast, ref = _run(net, starts), _run(ReferenceNetwork(), starts)
    assert len(net.classes) <= 65 and not any(net.classes_on.values())
    for i in range(len(starts)):
        assert fast[i] == pytest.approx(ref[i], abs=1e-9), i


def test_shared_link_halves_then_speeds_up_by_hand() -> None:
    """Two 100-byte transfers from p0 (10 B/s) to d0 start together: each moves at 5 B/s and
    both arrive at 20 s; a third of 50 bytes at t = 10 s leaves the first two 50 bytes each,
    so all three share 10/3 B/s: they arrive at 10 + 50/(10/3) = 25 s."""
    both = _run(Network(), [(0.0, "p0", "d0", 100.0, 0.0), (0.0, "p0", "d0", 100.0, 0.0)])
    assert both == {0: pytest.approx(20.0), 1: pytest.approx(20.0)}
    three = _run(
        Network(),
        [(0.0, "p0", "d0", 100.0, 0.0), (0.0, "p0", "d0", 100.0, 0.0), (10.0, "p0", "d1", 50.0, 0)],
    )
    assert three == {0: pytest.approx(25.0), 1: pytest.approx(25.0), 2: pytest.approx(25.0)}


@pytest.mark.parametrize("cap", [3.0, 6.0])
def test_a_rate_cap_per_transfer_matches_the_reference(cap: float) -> None:
    """Transfers that may move at most `cap` bytes/s each (the links of the ranks they run
    between) on the random starts of the first test, one by one and together: the same
    arrivals as the reference, and never sooner than their bytes at the cap."""
    rng = np.random.default_rng(7)
    t = 0.0
    starts = []
    for _ in range(200):
        t += float(rng.exponential(0.5)) * (rng.random() < 0.5)
        size = float(rng.choice([0.0, rng.uniform(1, 100)]))
        starts.append((t, f"p{rng.integers(3)}", f"d{rng.integers(2)}", size, 0.3))
    ref = _run(ReferenceNetwork(), starts, cap=cap)
    for together in (False, True):
        fast = _run(Network(), starts, together=together, cap=cap)
        for i, s in enumerate(starts):
            assert fast[i] == pytest.approx(ref[i], abs=1e-9), i
            assert fast[i] >= s[0] + s[3] / cap + s[4] - 1e-9


def test_a_capped_transfer_by_hand() -> None:
    """A lone 100-byte transfer from p0 (10 B/s) to d0 (25 B/s) capped at 4 B/s takes 25 s;
    two together take 25 s too (p0's half, 5 B/s, is above the cap); three share p0 at
    10/3 B/s each, below the cap: 30 s."""
    one = _run(Network(), [(0.0, "p0", "d0", 100.0, 0.0)], cap=4.0)
    assert one == {0: pytest.approx(25.0)}
    two = _run(Network(), [(0.0, "p0", "d0", 100.0, 0.0)] * 2, cap=4.0)
    assert two == {0: pytest.approx(25.0), 1: pytest.approx(25.0)}
    three = _run(Network(), [(0.0, "p0", f"d{i % 2}", 100.0, 0.0) for i in range(3)], cap=4.0)
    assert three == {i: pytest.approx(30.0) for i in range(3)}


LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


LOADS = {
    "open": {"workload": synthetic(300, 12.0, "uniform:200:4000", "uniform:20:300", seed=3)},
    "closed": {"closed_loop": ClosedLoop(24, 240, Uniform(2000, 4000), Uniform(40, 80))},
}


@pytest.mark.parametrize("load", list(LOADS))
def test_a_contended_disaggregated_run_matches_the_reference_network(monkeypatch, load) -> None:
    """Three prefill and two decode replicas over Ethernet (KV transfers overlap and contend):
    every request's TTFT and TPOT equal the reference network's within 1e-9 s, and every
    request finishes exactly once with all its tokens. (Lengths vary: with equal requests,
    transfers that tie up to rounding may land in another order, which swaps which of two
    identical requests gets which figures.)"""
    dep = DisaggDeployment(
        Deployment(LLAMA8, H100, replicas=3), Deployment(LLAMA8, H100, replicas=2), "ethernet"
    )
    kw = LOADS[load]
    fast = simulate(dep, **kw)
    monkeypatch.setattr(cluster_module, "Network", ReferenceNetwork)
    ref = simulate(dep, **kw)
    a, b = fast.columns(), ref.columns()
    n = len(a["ttft_s"])
    assert fast.summary()["kv_transfer_s_mean"] > 0.05  # transfers take long enough to overlap
    for col in ("ttft_s", "tpot_s", "finish_s"):
        assert np.allclose(a[col], b[col], rtol=0, atol=1e-9), col
    assert (a["finish_s"] > 0).all() and np.isfinite(a["e2e_s"]).all()
    assert (a["generated_tokens"] == a["output_tokens"]).all()
    assert math.isclose(fast.summary()["requests"], n)


def test_equal_requests_get_the_reference_figures_up_to_their_order(monkeypatch) -> None:
    """With identical requests in a closed loop, ties broken by rounding may reorder them; the
    sorted per-request TTFT, TPOT and finish times still match the reference within 1e-9 s."""
    dep = DisaggDeployment(
        Deployment(LLAMA8, H100, replicas=3), Deployment(LLAMA8, H100, replicas=2), "ethernet"
    )
    loop = ClosedLoop(24, 240, Fixed(3000), Fixed(60))
    a = simulate(dep, closed_loop=loop).columns()
    monkeypatch.setattr(cluster_module, "Network", ReferenceNetwork)
    b = simulate(dep, closed_loop=loop).columns()
    for col in ("ttft_s", "tpot_s", "finish_s"):
        assert np.allclose(np.sort(a[col]), np.sort(b[col]), rtol=0, atol=1e-9), col


def test_events_per_transfer_stay_constant_under_contention() -> None:
    """2,000 transfers started together on one link: each start or arrival re-prices only its
    class's next arrival, so the events handed to the loop grow linearly (pricing every
    transfer at every change would hand out about n²/2 = 2,000,000)."""
    n = 2000
    starts = [(0.0, "p0", "d0", 10.0 + (i % 7), 0.001) for i in range(n)]
    net = Network()
    handed = 0
    real_start, real_finish = net.start, net.finish

    def start(*a):
        nonlocal handed
        out = real_start(*a)
        handed += len(out)
        return out

    def finish(*a):
        nonlocal handed
        payload, out = real_finish(*a)
        handed += len(out)
        return payload, out

    net.start, net.finish = start, finish  # type: ignore[method-assign]
    arrived = _run(net, starts)
    assert len(arrived) == n and handed <= 3 * n
    # All share 10 B/s: the last of 2,000 × 13 bytes on average is out at Σ bytes / 10 B/s.
    total = sum(s[3] for s in starts)
    assert max(arrived.values()) == pytest.approx(total / 10.0 + 0.001)
