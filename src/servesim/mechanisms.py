"""Command-line and config-file settings for the serving mechanisms `simulate` can model:
scheduling policy, prefix caching, migration, prefill/decode disaggregation, semi-PD lanes and
autoscaling. `add_args` declares the flags, `DEFAULTS` their file keys, `apply` turns merged
settings and a plain Deployment into what `simulate` runs. The simulator modules are imported
only by `apply`, so the command line starts quickly.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from servesim.config import add_switch
from servesim.errors import ServesimError

DEFAULTS: dict[str, Any] = {
    "policy": "fcfs",
    "preemption": "recompute",
    "swap_group_blocks": 1,
    "prefill_preemption": False,
    "class_slo": None,
    "length_estimate": "oracle",
    "laps_threshold": 1024,
    "prefix_caching": None,
    "migration": False,
    "disagg": False,
    "prefill_replicas": 1,
    "prefill_tp": None,
    "prefill_device": None,
    "decode_replicas": 1,
    "decode_tp": None,
    "decode_device": None,
    "kv_link": "nvlink",
    "kv_compression": 1.0,
    "semipd": None,
    "semipd_adaptive": False,
    "autoscale": None,
    "min_replicas": 1,
    "max_replicas": None,
    "cold_start_s": 30.0,
    "load_gb_s": 2.0,
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Declare the mechanism flags on the simulate parser."""
    g = p.add_argument_group("scheduling, caching and cluster mechanisms")
    g.add_argument("--policy", help="scheduling policy: fcfs, priority, slack or laps")
    g.add_argument("--preemption", help="recompute or swap (to host memory over PCIe)")
    g.add_argument("--swap-group-blocks", type=int, help="KV pages per PCIe copy when swapping")
    add_switch(
        g,
        "--prefill-preemption",
        "let urgent prompts interrupt a prefill at operator boundaries (FlowPrefill)",
    )
    g.add_argument(
        "--class-slo",
        action="append",
        help="TTFT:TPOT[:E2E] seconds for priority class 0, 1, ... (slack policy); repeat",
    )
    g.add_argument(
        "--length-estimate", help="output lengths for slack: oracle, trace[:Q] or noisy:SIGMA[:Q]"
    )
    g.add_argument("--laps-threshold", type=int, help="prompt tokens that make a prompt long")
    add_switch(
        g,
        "--prefix-caching",
        "reuse cached prompt blocks (needs hash ids in the trace; engine default: on)",
    )
    add_switch(g, "--migration", "Llumnix live migration of decoding requests between replicas")
    add_switch(g, "--disagg", "separate prefill and decode pools joined by a KV link")
    g.add_argument("--prefill-replicas", type=int, help="prefill pool size (with --disagg)")
    g.add_argument("--prefill-tp", type=int, help="prefill TP (default: --tp)")
    g.add_argument("--prefill-device", help="prefill device (default: --device)")
    g.add_argument("--decode-replicas", type=int, help="decode pool size (with --disagg)")
    g.add_argument("--decode-tp", type=int, help="decode TP (default: --tp)")
    g.add_argument("--decode-device", help="decode device (default: --device)")
    g.add_argument(
        "--kv-link", help="KV transfer link: scale_up, nvlink, pcie, infiniband, roce, ethernet"
    )
    g.add_argument("--kv-compression", type=float, help="KV compression ratio (CacheGen), ≥ 1")
    g.add_argument("--semipd", type=float, help="split each GPU: prefill share of the SMs")
    add_switch(g, "--semipd-adaptive", "let an SLO controller move the semi-PD split")
    g.add_argument(
        "--autoscale", help="METRIC:TARGET, METRIC utilisation, queue or forecast (req/s/replica)"
    )
    g.add_argument("--min-replicas", type=int, help="autoscaling floor")
    g.add_argument("--max-replicas", type=int, help="autoscaling ceiling (default 4 × replicas)")
    g.add_argument("--cold-start-s", type=float, help="replica start-up besides weight loading")
    g.add_argument("--load-gb-s", type=float, help="weight load bandwidth per device, GB/s")


def _floats(text: str, what: str, count: tuple[int, ...]) -> list[float]:
    parts = str(text).split(":")
    try:
        vals = [float(x) for x in parts]
    except ValueError:
        raise ServesimError(f"{what} {text!r} must be numbers separated by ':'.") from None
    if len(vals) not in count:
        raise ServesimError(f"{what} {text!r} needs {' or '.join(map(str, count))} numbers.")
    return vals


def _estimator(text: str) -> Any:
    from servesim.policies import ESTIMATE_SOURCES, LengthEstimator

    kind, _, rest = str(text).partition(":")
    if kind not in ESTIMATE_SOURCES:
        raise ServesimError(
            f"--length-estimate {text!r} is not understood; use oracle, trace[:Q] or "
            "noisy:SIGMA[:Q]."
        )
    if kind == "noisy":
        vals = _floats(rest or "0.5", "--length-estimate noisy", (1, 2))
        return LengthEstimator("noisy", vals[0], vals[1] if len(vals) > 1 else 0.5)
    if kind == "trace" and rest:
        return LengthEstimator("trace", quantile=_floats(rest, "--length-estimate", (1,))[0])
    return LengthEstimator(kind)


def apply(dep: Any, s: dict[str, Any], slo: Any) -> Any:
    """The deployment `simulate` should run for merged settings `s` (flags over file): a
    Deployment, a DisaggDeployment or a SemiPDDeployment."""
    from servesim.autoscale import Autoscaler
    from servesim.devices import catalog
    from servesim.disagg import DisaggDeployment
    from servesim.policies import ClassSlo, Policy
    from servesim.router import Migration
    from servesim.semipd import SemiPDController, SemiPDDeployment

    policy = None
    if s["policy"] != "fcfs" or s["preemption"] != "recompute" or s["prefill_preemption"]:
        slos = tuple(
            ClassSlo(*_floats(c, "--class-slo", (2, 3))) for c in (s.get("class_slo") or [])
        )
        if s["policy"] == "slack" and not slos:
            slos = (ClassSlo(slo.ttft_s, slo.tpot_s),)
        policy = Policy(
            name=str(s["policy"]),
            preemption=str(s["preemption"]),
            swap_group_blocks=int(s["swap_group_blocks"]),
            prefill_preemption=bool(s["prefill_preemption"]),
            class_slos=slos,
            laps_threshold_tokens=int(s["laps_threshold"]),
            estimator=_estimator(str(s["length_estimate"])),
        )
    dep = replace(dep, policy=policy, prefix_caching=s.get("prefix_caching"))
    if s.get("migration"):
        dep = replace(dep, migration=Migration())
    if s.get("autoscale"):
        metric, _, target = str(s["autoscale"]).partition(":")
        if not target:
            raise ServesimError("--autoscale needs METRIC:TARGET, e.g. utilisation:0.7.")
        dep = replace(
            dep,
            autoscaler=Autoscaler(
                metric=metric,
                target=_floats(target, "--autoscale target", (1,))[0],
                min_replicas=int(s["min_replicas"]),
                max_replicas=int(s.get("max_replicas") or 4 * dep.replicas),
                startup_s=float(s["cold_start_s"]),
                load_bw_bytes_per_s=float(s["load_gb_s"]) * 1e9,
            ),
        )
    if s.get("disagg") and s.get("semipd") is not None:
        raise ServesimError("Choose --disagg or --semipd, not both.")
    if s.get("disagg"):
        devices = catalog(s.get("devices"))

        def pool(kind: str) -> Any:
            tp = s.get(f"{kind}_tp") or dep.parallel.tp
            device = devices.get(s[f"{kind}_device"]) if s.get(f"{kind}_device") else dep.device
            dep.model.check_tp(int(tp))
            return replace(
                dep,
                device=device,
                parallel=replace(dep.parallel, tp=int(tp)),
                replicas=int(s[f"{kind}_replicas"]),
                migration=None,
                autoscaler=None,
            )

        return DisaggDeployment(
            pool("prefill"), pool("decode"), str(s["kv_link"]), float(s["kv_compression"])
        )
    if s.get("semipd") is not None:
        ctl = SemiPDController(slo) if s.get("semipd_adaptive") else None
        return SemiPDDeployment(dep, float(s["semipd"]), ctl)
    return dep
