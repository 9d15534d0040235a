"""How many GPUs should encode: a fixed number of GPUs split over an encode pool, prefill and
decode (EPD), and the splits without an encode pool (colocated replicas, prefill/decode), each
simulated on the same workload and ranked by TTFT (the EPD paper's search, at one GPU count).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.encode import EncodePool, EpdDeployment
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload


@dataclass(frozen=True)
class SplitResult:
    """One split of the GPUs and what its run gave."""

    kind: str  # colocated, pd, e+pd (encode pool + colocated), epd
    encode: int
    prefill: int  # colocated: the replicas
    decode: int
    ttft_mean_s: float
    ttft_p90_s: float
    tpot_p50_s: float
    label: str


def search_encode_split(
    base: Deployment,
    workload: Workload,
    gpus: int,
    link: str = "nvlink",
    kinds: tuple[str, ...] = ("colocated", "pd", "e+pd", "epd"),
    split_images: bool = True,
) -> list[SplitResult]:
    """Every split of `gpus` replicas of `base` (one replica per `base.parallel` group, the
    encode workers one device each) over the kinds asked for, best mean TTFT first.
    `base.vision` is the encoder; colocated and PD splits encode inside the engine."""
    if base.vision is None:
        raise ServesimError("The deployment has no vision encoder; give Deployment(vision=...).")
    per = base.parallel.num_devices
    if gpus < per:
        raise ServesimError(f"{gpus} GPUs do not hold a replica of {per} devices.")
    plain = _with(base, vision=None)
    out: list[SplitResult] = []

    def run(kind: str, e: int, p: int, d: int, dep: Any) -> None:
        s = simulate(dep, workload).summary()
        out.append(
            SplitResult(
                kind,
                e,
                p,
                d,
                float(s["ttft_s"]["mean"]),
                float(s["ttft_s"]["p90"]),
                float(s["tpot_s"]["p50"]),
                dep.label(),
            )
        )

    n = gpus // per
    if "colocated" in kinds:
        run("colocated", 0, n, 0, _with(base, replicas=n))
    if "pd" in kinds:
        for p in range(1, n):
            dep = DisaggDeployment(_with(base, replicas=p), _with(plain, replicas=n - p), link)
            run("pd", 0, p, n - p, dep)
    for e in range(1, gpus):
        pool = EncodePool(base.vision, base.device, e, engine=base.engine, fit=base.fit)
        rest = (gpus - e) // per
        if "e+pd" in kinds and rest >= 1:
            epd = EpdDeployment(pool, _with(plain, replicas=rest), link, split_images)
            run("e+pd", e, rest, 0, epd)
        if "epd" in kinds:
            for p in range(1, rest):
                serve = DisaggDeployment(
                    _with(plain, replicas=p), _with(plain, replicas=rest - p), link
                )
                run("epd", e, p, rest - p, EpdDeployment(pool, serve, link, split_images))
    if not out:
        raise ServesimError(f"No split of {gpus} GPUs of the kinds {', '.join(kinds)} exists.")
    return sorted(out, key=lambda r: (r.ttft_mean_s, r.label))


def _with(dep: Deployment, **changes: Any) -> Deployment:
    return replace(dep, **changes)


def best_of(rows: list[SplitResult], kinds: tuple[str, ...]) -> SplitResult:
    """The best (lowest mean TTFT) row among the kinds given."""
    picked = [r for r in rows if r.kind in kinds]
    if not picked:
        raise ServesimError(f"No split of the kinds {', '.join(kinds)} was run.")
    return min(picked, key=lambda r: (r.ttft_mean_s, r.label))
