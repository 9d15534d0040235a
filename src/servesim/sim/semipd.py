"""Intra-GPU prefill/decode partition (semi-PD, Nexus): two lanes on the same GPUs.

Each replica's GPUs run a prefill lane and a decode lane at the same time, each on a share of
the streaming multiprocessors (MPS / green contexts), with one copy of the weights and one KV
cache (semi-PD's unified storage): a finished prompt's KV changes owner, it does not move. A
lane on a share s of the SMs has s of the peak FLOP/s and streams HBM at min(1, s / 0.5) of its
bandwidth (about half the SMs saturate HBM on H100/A100-class parts); the two lanes running
together lose `INTERFERENCE` of it to each other's traffic. The share is fixed, or set by an
SLO-driven controller (semi-PD's dynamic partitioning): every interval it compares the TTFT and
TPOT attainment of recently finished requests and moves a step of the SMs to the phase that is
missing its target more.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.iteration import Predictor
from servesim.sim.cluster import Cluster
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import ItlHistogram, Slo
from servesim.sim.pool import build_pool, prepare
from servesim.sim.records import RecordSink
from servesim.sim.replica import Replica
from servesim.sim.result import SimResult, result
from servesim.sim.router import Router
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.workload import Workload
from servesim.spec.devices import Device

HBM_SATURATION_SHARE = 0.5  # share of SMs that saturates HBM bandwidth with streaming kernels
INTERFERENCE = 0.15  # bandwidth each lane loses to the other's concurrent traffic


def lane_device(device: Device, share: float) -> Device:
    """The device as one lane on `share` of its SMs sees it."""
    bw = device.mem_bw_bytes_per_s * min(1.0, share / HBM_SATURATION_SHARE) * (1 - INTERFERENCE)
    return replace(
        device,
        name=f"{device.name}@{share:.0%}",
        peak_flops_per_s={k: v * share for k, v in device.peak_flops_per_s.items()},
        num_sms=max(1, round(device.num_sms * share)),
        mem_bw_bytes_per_s=bw,
    )


@dataclass(frozen=True)
class SemiPDController:
    """SLO-driven partitioning (semi-PD §5): every `interval_s`, judge the last `window_s`: when
    the TTFT target is missed by more than `1 − target` of requests while TPOT is met, move
    `step` of the SMs to the prefill lane; in the opposite case to the decode lane; when both
    or neither are missed, keep the split (more SMs cannot fix an overload)."""

    slo: Slo
    target: float = 0.9
    interval_s: float = 2.0
    window_s: float = 10.0
    step: float = 0.1
    min_share: float = 0.2
    max_share: float = 0.8

    def __post_init__(self) -> None:
        if not (0 < self.min_share <= self.max_share < 1) or self.step <= 0:
            raise ServesimError("SemiPDController needs 0 < min_share ≤ max_share < 1, step > 0.")
        if not 0 < self.target <= 1:
            raise ServesimError("SemiPDController target must be a share in (0, 1].")


@dataclass(frozen=True)
class SemiPDDeployment:
    """Colocated replicas whose GPUs split into a prefill lane and a decode lane."""

    base: Deployment
    prefill_share: float = 0.5  # initial share of the SMs for the prefill lane
    controller: SemiPDController | None = None

    def __post_init__(self) -> None:
        if not 0.05 <= self.prefill_share <= 0.95:
            raise ServesimError(
                f"prefill_share {self.prefill_share!r} must be in [0.05, 0.95] of the SMs."
            )
        if self.base.parallel.pp > 1 or self.base.autoscaler or self.base.migration:
            raise ServesimError(
                "Semi-PD is modelled without pipeline parallelism, autoscaling or migration; "
                "use pp=1 and plain replicas."
            )
        if self.base.speculative is not None:
            raise ServesimError(
                "Semi-PD lanes are modelled without speculative decoding; drop the speculative "
                "settings or run colocated or disaggregated."
            )

    @property
    def num_devices(self) -> int:
        """Devices of the deployment (the lanes share them)."""
        return self.base.num_devices

    @property
    def price_per_hour(self) -> float:
        """Rental cost, USD per hour."""
        return self.base.price_per_hour

    @property
    def model(self) -> Any:
        """The model served."""
        return self.base.model

    def memory(self) -> Any:
        """Per-device memory layout (one copy of the weights, one KV cache)."""
        return self.base.memory()

    def label(self) -> str:
        """Short description such as `semi-PD 1x h100_sxm tp1 vllm P50%`."""
        mode = f"P{self.prefill_share:.0%}"
        if self.controller is not None:
            mode = f"SLO-adaptive from {mode}"
        return f"semi-PD {self.base.label()} {mode}"


class _Lanes:
    """Lane predictors per prefill share (cached), for one deployment."""

    def __init__(self, dep: SemiPDDeployment) -> None:
        self.base = dep.base
        self.cache: dict[float, tuple[Predictor, Predictor]] = {}

    def pair(self, share: float) -> tuple[Predictor, Predictor]:
        key = round(share, 3)
        if key not in self.cache:
            b = self.base
            # A lane is a share of one GPU's SMs: no table measured that, so lanes are priced
            # by the roofline whatever the deployment's latency model.
            mk = lambda s: Predictor(  # noqa: E731
                b.model, lane_device(b.device, s), b.parallel, b.engine, b.fit, b.device
            )
            self.cache[key] = (mk(key), mk(1.0 - key))
        return self.cache[key]


class _PartitionController:
    """Runs a `SemiPDController` in the cluster loop."""

    def __init__(self, ctl: SemiPDController, lanes: _Lanes, share: float) -> None:
        self.ctl = ctl
        self.lanes = lanes
        self.share = share
        self.history: list[tuple[float, float]] = [(0.0, share)]
        # Rows of finished requests the table has already recorded and may still count:
        # (arrival, first token, finish, generated) columns, those finishing before the
        # current window dropped at each tick.
        self.recent: list[np.ndarray] = []

    def start(self, cluster: Cluster, which: int) -> None:
        cluster.table.listeners.append(self._recorded)
        cluster.schedule_tick(self.ctl.interval_s, which)

    def _recorded(self, cols: dict[str, np.ndarray]) -> None:
        keys = ("arrival_s", "first_token_s", "finish_s", "generated_tokens")
        self.recent.append(np.stack([cols[k].astype(np.float64) for k in keys]))

    def tick(self, cluster: Cluster, t: float, which: int, busy: bool, kind: int = 0) -> None:
        ctl = self.ctl
        since = max(t - ctl.window_s, self.history[-1][0])  # judge only the current split
        if t - self.history[-1][0] < ctl.window_s / 2:  # too soon after a change to judge
            self._forget(t)
        else:
            self._judge(cluster, t, since)
        if busy:
            cluster.schedule_tick(t + ctl.interval_s, which)

    def _forget(self, t: float) -> None:
        """Drop the recorded rows no later window can count (finished before t − window)."""
        if self.recent:
            past = np.hstack(self.recent)
            self.recent = [past[:, past[2] >= t - self.ctl.window_s]]

    def _judge(self, cluster: Cluster, t: float, since: float) -> None:
        """Move the split if the window's attainment asks for it."""
        ctl = self.ctl
        ttft_ok, tpot_ok, n = self.attainment(cluster, t, since)
        if n >= 10:
            new = self.share
            if ttft_ok < ctl.target <= tpot_ok:
                new = min(ctl.max_share, self.share + ctl.step)
            elif tpot_ok < ctl.target <= ttft_ok:
                new = max(ctl.min_share, self.share - ctl.step)
            if not math.isclose(new, self.share):
                self.share = new
                self.history.append((t, new))
                p_pred, d_pred = self.lanes.pair(new)
                for p_lane, d_lane in cluster.pairs:
                    for lane, pred in ((p_lane, p_pred), (d_lane, d_pred)):
                        cluster.late += lane.set_predictor(pred, t)
                        cluster.touch(lane)
                    cluster.sync_pair(p_lane, d_lane)

    def attainment(self, cluster: Cluster, t: float, since: float) -> tuple[float, float, int]:
        """TTFT and TPOT attainment since `since`: TTFT of requests whose first token came in
        that time, plus those still waiting past the target; TPOT of requests finished in it.
        Requests are those in flight, those recorded in the window, and (open loop) those
        whose arrival is past but the engine has not seen yet (the frontend's lag)."""
        ctl = self.ctl
        self._forget(t)
        rows = np.hstack([*self.recent, cluster.table.live_timing()])
        arr, first, fin, gen_all = rows
        recent = (first >= since) & (first <= t)
        late = (first < 0) & (arr >= 0) & (arr <= t - ctl.slo.ttft_s)
        n_unseen = 0
        if cluster.arrival_s is not None and cluster.closed is None:
            cut = int(np.searchsorted(cluster.arrival_s, t - ctl.slo.ttft_s, side="right"))
            n_unseen = max(0, cut - cluster.arrived)
        n_ttft = int(recent.sum() + late.sum()) + n_unseen
        ttft_ok = float((first[recent] - arr[recent] <= ctl.slo.ttft_s).sum()) / max(1, n_ttft)
        done = (fin >= since) & (fin <= t)
        gen = gen_all[done]
        with np.errstate(divide="ignore", invalid="ignore"):
            tpot = np.where(gen > 1, (fin[done] - first[done]) / np.maximum(gen - 1, 1), 0.0)
        tpot_ok = float(np.mean(tpot <= ctl.slo.tpot_s)) if len(tpot) else 1.0
        return ttft_ok, tpot_ok, n_ttft + len(tpot)


def simulate_semipd(
    dep: SemiPDDeployment,
    workload: Workload | None = None,
    closed_loop: ClosedLoop | None = None,
    router: str = "round_robin",
    records: RecordSink | None = None,
) -> SimResult:
    """Serve a workload with every replica split into concurrent prefill and decode lanes."""
    req = prepare(workload, closed_loop, router, records)
    itl = ItlHistogram()
    lanes = _Lanes(dep)
    p_pred, d_pred = lanes.pair(dep.prefill_share)
    pre, mem = build_pool(dep.base, req, itl, role="prefill")
    dec, _ = build_pool(dep.base, replace(req, hashes=None), itl, role="decode", own_cache=False)
    pairs: list[tuple[Replica, Replica]] = []
    for p, d in zip(pre, dec, strict=True):
        p.set_predictor(p_pred, 0.0)
        d.set_predictor(d_pred, 0.0)
        p.power_pred = d.power_pred = dep.base.predictor()
        p.idle_share = d.idle_share = 0.5
        pairs.append((p, d))
    ctl = None
    if dep.controller is not None:
        ctl = _PartitionController(dep.controller, lanes, dep.prefill_share)
    t0 = time.perf_counter()
    cluster = Cluster(
        req.table,
        pre,
        Router(router, req.hashes),
        closed=closed_loop,
        decode=dec,
        pairs=pairs,
        controllers=[ctl] if ctl else None,
    )
    cluster.run()
    wall = time.perf_counter() - t0
    extra = {"prefill_share_final": ctl.share if ctl else dep.prefill_share}
    if ctl:
        extra["prefill_share_changes"] = len(ctl.history) - 1
    return result(dep, pre + dec, req, itl, mem, wall, cluster.stats, extra)
