"""Command-line and config-file settings for the serving mechanisms `simulate` can model:
scheduling policy, prefix caching, migration, prefill/decode disaggregation, semi-PD lanes and
autoscaling. `add_args` declares the flags, `MechanismSettings` validates them (types, ranges,
flags that do nothing without the mechanism they belong to), `apply` turns the settings and a
plain Deployment into what `simulate` runs. The simulator modules are imported only by `apply`,
so the command line starts quickly.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from servesim.cli.settings import (
    Misuse,
    NonEmpty,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Settings,
    add_switch,
)
from servesim.errors import ServesimError


def _listed(v: Any) -> Any:
    """A single class SLO written without a list in a file."""
    return [v] if isinstance(v, str) else v


class MechanismSettings(Settings):
    """The mechanism part of `simulate`'s settings (file keys as the flags, with underscores)."""

    policy: NonEmpty = "fcfs"
    preemption: NonEmpty = "recompute"
    swap_group_blocks: PosInt = 1
    prefill_preemption: bool = False
    class_slo: Annotated[list[str], BeforeValidator(_listed)] | None = None
    length_estimate: NonEmpty = "oracle"
    laps_threshold: PosInt = 1024
    prefix_caching: bool | None = None
    migration: bool = False
    disagg: bool = False
    prefill_replicas: PosInt = 1
    prefill_tp: PosInt | None = None
    prefill_device: NonEmpty | None = None
    decode_replicas: PosInt = 1
    decode_tp: PosInt | None = None
    decode_device: NonEmpty | None = None
    kv_link: NonEmpty = "auto"
    kv_compression: Annotated[float, Field(ge=1)] = 1.0
    semipd: Annotated[float, Field(ge=0.05, le=0.95)] | None = None
    semipd_adaptive: bool = False
    autoscale: NonEmpty | None = None
    min_replicas: PosInt = 1
    max_replicas: PosInt | None = None
    cold_start_s: NonNegFloat = 30.0
    load_gb_s: PosFloat = 2.0
    finetune_tokens: NonNegInt | None = None
    finetune_full: bool = False

    @field_validator("policy", "preemption")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        from servesim.sim.policies import POLICIES, PREEMPTION_MODES

        known = POLICIES if info.field_name == "policy" else PREEMPTION_MODES
        if v not in known:
            raise ValueError(f"must be one of {', '.join(known)}, got {v!r}")
        return v

    @field_validator("class_slo")
    @classmethod
    def _class_slos(cls, v: list[str] | None) -> list[str] | None:
        for c in v or []:
            _floats(c, "takes TTFT:TPOT[:E2E] seconds like 0.5:0.05", (2, 3), positive=True)
        return v

    @field_validator("length_estimate")
    @classmethod
    def _length_estimate(cls, v: str) -> str:
        _estimator(v)
        return v

    @field_validator("autoscale")
    @classmethod
    def _autoscale(cls, v: str | None) -> str | None:
        if v is not None:
            _autoscale_target(v)
        return v

    @model_validator(mode="after")
    def _mechanism_modes(self) -> MechanismSettings:
        if self.given("finetune_full") and self.finetune_tokens is None:
            raise Misuse("{finetune_full} sets how a fine-tuning job trains; add {finetune_tokens}")
        needs = {
            "class_slo": ("policy", "slack"),
            "length_estimate": ("policy", "slack"),
            "laps_threshold": ("policy", "laps"),
            "swap_group_blocks": ("preemption", "swap"),
        }
        for key, (owner, value) in needs.items():
            if self.given(key) and getattr(self, owner) != value:
                raise Misuse(
                    f"{{{key}}} does nothing unless {{{owner}}} is {value}; add {{{owner}}} "
                    f"{value} or drop {{{key}}}."
                )
        pools = (
            "prefill_replicas",
            "prefill_tp",
            "prefill_device",
            "decode_replicas",
            "decode_tp",
            "decode_device",
            "kv_link",
            "kv_compression",
        )
        for key in pools:
            if self.given(key) and not self.disagg:
                raise Misuse(
                    f"{{{key}}} sizes a disaggregated pool and does nothing without {{disagg}}; "
                    f"add {{disagg}} or drop {{{key}}}."
                )
        for key in ("min_replicas", "max_replicas", "cold_start_s", "load_gb_s"):
            if self.given(key) and not self.autoscale:
                raise Misuse(
                    f"{{{key}}} does nothing without {{autoscale}}; add {{autoscale}} "
                    f"METRIC:TARGET or drop {{{key}}}."
                )
        if self.given("semipd_adaptive") and self.semipd is None:
            raise Misuse(
                "{semipd_adaptive} does nothing without {semipd}; add {semipd} SHARE or drop it."
            )
        if self.disagg and self.semipd is not None:
            raise Misuse("Choose {disagg} or {semipd}, not both.")
        split = "disagg" if self.disagg else "semipd" if self.semipd is not None else None
        if split:
            for key in ("migration", "autoscale"):
                if self.given(key):
                    raise Misuse(
                        f"{{{key}}} is modelled for colocated replicas only, not with "
                        f"{{{split}}}; drop one of them."
                    )
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise Misuse(
                "{min_replicas} must not exceed {max_replicas}; lower the floor or raise the "
                "ceiling."
            )
        return self


def add_args(p: argparse.ArgumentParser) -> None:
    """Declare the mechanism flags on the simulate parser."""
    g = p.add_argument_group("scheduling, caching and cluster mechanisms")
    g.add_argument(
        "--policy", help="scheduling policy: fcfs, priority, slack, laps or deadline (workflows)"
    )
    g.add_argument("--preemption", help="recompute or swap (to host memory over PCIe)")
    g.add_argument(
        "--swap-group-blocks", type=int, help="KV pages per PCIe copy (with --preemption swap)"
    )
    add_switch(
        g,
        "--prefill-preemption",
        "let urgent prompts interrupt a prefill at operator boundaries (FlowPrefill)",
    )
    g.add_argument(
        "--class-slo",
        action="append",
        help="TTFT:TPOT[:E2E] seconds for priority class 0, 1, ... (--policy slack); repeat",
    )
    g.add_argument(
        "--length-estimate",
        help="output lengths for --policy slack: oracle, trace[:Q] or noisy:SIGMA[:Q]",
    )
    g.add_argument(
        "--laps-threshold", type=int, help="prompt tokens that make a prompt long (--policy laps)"
    )
    add_switch(
        g,
        "--prefix-caching",
        "reuse cached prompt blocks (needs hash ids in the trace; engine default: on)",
    )
    add_switch(g, "--migration", "Llumnix live migration of decoding requests between replicas")
    add_switch(g, "--disagg", "separate prefill and decode pools joined by a KV link")
    g.add_argument("--prefill-replicas", type=int, help="prefill pool size (with --disagg)")
    g.add_argument("--prefill-tp", type=int, help="prefill TP (with --disagg; default: --tp)")
    g.add_argument("--prefill-device", help="prefill device (with --disagg; default: --device)")
    g.add_argument("--decode-replicas", type=int, help="decode pool size (with --disagg)")
    g.add_argument("--decode-tp", type=int, help="decode TP (with --disagg; default: --tp)")
    g.add_argument("--decode-device", help="decode device (with --disagg; default: --device)")
    g.add_argument(
        "--kv-link",
        help="KV transfer link (with --disagg): auto (default: NVLink when both pools fit in one "
        "scale-up domain, InfiniBand otherwise), scale_up, nvlink, pcie, infiniband, roce, "
        "ethernet",
    )
    g.add_argument(
        "--kv-compression", type=float, help="KV compression ratio (CacheGen), ≥ 1 (--disagg)"
    )
    g.add_argument("--semipd", type=float, help="split each GPU: prefill share of the SMs")
    add_switch(g, "--semipd-adaptive", "let an SLO controller move the semi-PD split")
    g.add_argument(
        "--autoscale",
        help="METRIC:TARGET: utilisation:0.7 = target mean KV-cache use (share of the cache's "
        "blocks, queued prompts included), queue:4 = requests per replica, forecast:5 = req/s "
        "per replica",
    )
    g.add_argument("--min-replicas", type=int, help="autoscaling floor (with --autoscale)")
    g.add_argument(
        "--max-replicas", type=int, help="autoscaling ceiling (with --autoscale; 4 × replicas)"
    )
    g.add_argument(
        "--cold-start-s", type=float, help="replica start-up besides weight loading (--autoscale)"
    )
    g.add_argument(
        "--load-gb-s", type=float, help="weight load bandwidth per device, GB/s (--autoscale)"
    )
    ft = p.add_argument_group("co-served fine-tuning (FlexLLM)")
    ft.add_argument(
        "--finetune-tokens",
        type=int,
        help="training tokens each iteration carries beside inference (PEFT; idle time trains "
        "at 8,192 per iteration)",
    )
    ft.add_argument(
        "--finetune-full",
        action="store_true",
        default=None,
        help="full fine-tuning (3 forward passes a token) instead of PEFT (2)",
    )


def _floats(text: str, what: str, count: tuple[int, ...], positive: bool = False) -> list[float]:
    """Finite numbers separated by ':'; a ValueError says `what` the setting takes."""
    try:
        vals = [float(x) for x in str(text).split(":")]
    except ValueError:
        raise ValueError(f"{what}, got {text!r}") from None
    if len(vals) not in count or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what}, got {text!r}")
    if positive and min(vals) <= 0:
        raise ValueError(f"{what} (positive), got {text!r}")
    return vals


def _estimator(text: str) -> Any:
    """A LengthEstimator from `oracle`, `trace[:Q]` or `noisy:SIGMA[:Q]` (ValueError if not)."""
    from servesim.sim.policies import LengthEstimator

    kind, _, rest = str(text).partition(":")
    usage = "takes oracle, trace[:Q] or noisy:SIGMA[:Q] with 0 < Q < 1 and SIGMA ≥ 0"
    if kind not in ("oracle", "trace", "noisy") or (kind == "oracle" and rest):
        raise ValueError(f"{usage}, got {text!r}")
    try:
        if kind == "noisy":
            vals = _floats(rest or "0.5", usage, (1, 2))
            return LengthEstimator("noisy", vals[0], vals[1] if len(vals) > 1 else 0.5)
        if kind == "trace" and rest:
            return LengthEstimator("trace", quantile=_floats(rest, usage, (1,))[0])
        return LengthEstimator(kind)
    except ServesimError:
        raise ValueError(f"{usage}, got {text!r}") from None


def _autoscale_target(text: str) -> tuple[str, float]:
    """(metric, target) from METRIC:TARGET (ValueError naming the forms if not)."""
    from servesim.sim.autoscale import METRICS

    metric, _, target = str(text).partition(":")
    usage = (
        "takes METRIC:TARGET: utilisation:0.7 (target mean KV-cache use, a share in (0, 1]), "
        "queue:4 (requests per replica) or forecast:5 (req/s per replica)"
    )
    try:
        if metric not in METRICS or not target:
            raise ValueError
        value = _floats(target, usage, (1,), positive=True)[0]
        if metric == "utilisation" and value > 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"{usage}, got {text!r}") from None
    return metric, value


def apply(dep: Any, s: MechanismSettings, slo: Any) -> Any:
    """The deployment `simulate` should run for validated settings `s`: a Deployment, a
    DisaggDeployment or a SemiPDDeployment."""
    from servesim.sim.autoscale import Autoscaler
    from servesim.sim.disagg import DisaggDeployment
    from servesim.sim.policies import ClassSlo, Policy
    from servesim.sim.router import Migration
    from servesim.sim.semipd import SemiPDController, SemiPDDeployment
    from servesim.spec.devices import catalog

    policy = None
    if s.policy != "fcfs" or s.preemption != "recompute" or s.prefill_preemption:
        slos = tuple(ClassSlo(*_floats(c, "", (2, 3))) for c in (s.class_slo or []))
        if s.policy == "slack" and not slos:
            slos = (ClassSlo(slo.ttft_s, slo.tpot_s),)
        policy = Policy(
            name=s.policy,
            preemption=s.preemption,
            swap_group_blocks=s.swap_group_blocks,
            prefill_preemption=s.prefill_preemption,
            class_slos=slos,
            laps_threshold_tokens=s.laps_threshold,
            estimator=_estimator(s.length_estimate),
        )
    dep = replace(dep, policy=policy, prefix_caching=s.prefix_caching)
    if s.finetune_tokens is not None:
        from servesim.spec.finetune import FULL_TRAIN_FACTOR, PEFT_TRAIN_FACTOR, FineTuneJob

        factor = FULL_TRAIN_FACTOR if s.finetune_full else PEFT_TRAIN_FACTOR
        dep = replace(dep, finetune=FineTuneJob(s.finetune_tokens, train_factor=factor))
    if s.migration:
        dep = replace(dep, migration=Migration())
    if s.autoscale:
        metric, target = _autoscale_target(s.autoscale)
        max_replicas = s.max_replicas or 4 * dep.replicas
        if s.min_replicas > max_replicas:
            raise ServesimError(
                f"{s.spell('min_replicas')} {s.min_replicas} exceeds the default ceiling of "
                f"{max_replicas} (4 × replicas); give {s.spell('max_replicas')}."
            )
        dep = replace(
            dep,
            autoscaler=Autoscaler(
                metric=metric,
                target=target,
                min_replicas=s.min_replicas,
                max_replicas=max_replicas,
                startup_s=s.cold_start_s,
                load_bw_bytes_per_s=s.load_gb_s * 1e9,
            ),
        )
    if s.disagg:
        devices = catalog(getattr(s, "devices", None))

        def pool(kind: str) -> Any:
            tp = getattr(s, f"{kind}_tp") or dep.parallel.tp
            name = getattr(s, f"{kind}_device")
            device = devices.get(name) if name else dep.device
            dep.model.check_tp(tp)
            return replace(
                dep,
                device=device,
                parallel=replace(dep.parallel, tp=tp),
                replicas=getattr(s, f"{kind}_replicas"),
                migration=None,
                autoscaler=None,
            )

        return DisaggDeployment(pool("prefill"), pool("decode"), s.kv_link, s.kv_compression)
    if s.semipd is not None:
        ctl = SemiPDController(slo) if s.semipd_adaptive else None
        return SemiPDDeployment(dep, s.semipd, ctl)
    return dep
