"""What is simulated: one model served by identical replicas of one engine on one device type,
with its batching limits, parallel layout and cluster mechanisms (policy, prefix caching,
migration, autoscaling), and the iteration-time predictor its replicas share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from servesim.errors import ServesimError
from servesim.predictor import roofline
from servesim.predictor.adaptive_depth import SkippingPredictor
from servesim.predictor.af_disagg import AFDisagg, AFDisaggPredictor, af_memory_layout
from servesim.predictor.coserving import CoServingPredictor
from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL, BatchShape, Predictor
from servesim.predictor.local_predictor import LocalPredictor
from servesim.predictor.local_runtime import LocalRuntime, default_quant, local_memory
from servesim.predictor.lora import LoraPredictor
from servesim.predictor.nanoflow import NanoFlowPredictor
from servesim.predictor.profiled import ProfiledTiming
from servesim.predictor.speculative import SpeculativePredictor
from servesim.sim.autoscale import Autoscaler
from servesim.sim.policies import Policy
from servesim.sim.router import Migration
from servesim.spec.adaptive_depth import LayerSkipping
from servesim.spec.devices import Device
from servesim.spec.engine_profile import VLLM_CAPTURE_BY_SEQS_FROM, EngineProfile, get_engine
from servesim.spec.expert_load import ExpertLoad
from servesim.spec.finetune import FineTuneJob
from servesim.spec.lora import LoraAdapters
from servesim.spec.memory import (
    MemoryLayout,
    engine_memory,
    memory_layout,
    sglang_server_defaults,
    speculative_state_copies,
    vllm_batch_defaults,
)
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel
from servesim.spec.release import version_key
from servesim.spec.speculative import SpeculativeDecoding
from servesim.spec.vision import VisionEncoder

_PREDICTORS: dict[tuple, Predictor] = {}  # bounded, oldest evicted first


def _shared(key: tuple, make: Callable[[], Predictor]) -> Predictor:
    """The predictor cached under `key`, made (and the oldest of 64 evicted) on a miss."""
    pred = _PREDICTORS.get(key)
    if pred is None:
        if len(_PREDICTORS) >= 64:
            _PREDICTORS.pop(next(iter(_PREDICTORS)))
        pred = _PREDICTORS[key] = make()
    return pred


# SGLang's running-request cap under speculative decoding when the launch sets none
# (server_args.py `_handle_speculative_decoding`, "Max running requests is reset to 48" for
# EAGLE/EAGLE3/NEXTN/STANDALONE), read in the PyPI wheels 0.5.1.post1 ... 0.5.12; 0.5.13
# dropped it (0.5.13 ... 0.5.16 set no cap there). An unnamed release keeps the cap.
SGLANG_SPECULATIVE_MAX_SEQS = 48
SGLANG_SPECULATIVE_CAP_DROPPED = "0.5.13"


def _sglang_caps_speculative(version: str) -> bool:
    """Whether an SGLang release caps its running requests at 48 under speculative decoding
    (`SGLANG_SPECULATIVE_CAP_DROPPED`)."""
    v = version.strip()
    return not v or version_key(v) < version_key(SGLANG_SPECULATIVE_CAP_DROPPED)


def _sglang_mamba_cache(model: ModelSpec) -> bool:
    """Whether SGLang serves a model's radix cache with its Mamba state cache (hybrid Mamba2 or
    Gated DeltaNet models); Kimi Linear's KDA layers have none, so SGLang turns that radix cache
    off instead (server_args.py `support_mamba_cache=False`)."""
    return model.num_linear_layers > 0 and model.linear_kind in ("gdn", "mamba2")


@dataclass(frozen=True)
class Deployment:
    """One model served by `replicas` identical replicas of one engine on one device type."""

    model: ModelSpec
    device: Device
    parallel: Parallel = field(default_factory=Parallel)
    engine: EngineProfile = field(default_factory=lambda: get_engine("vllm"))
    replicas: int = 1
    max_num_seqs: int | None = None  # None: the engine's default
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool | None = None
    fit: roofline.KernelFit | None = None
    policy: Policy | None = None  # scheduling policy; None is the engine's FCFS
    prefix_caching: bool | None = None  # None: the engine's default (used when prompts have ids)
    migration: Migration | None = None  # Llumnix live migration between the replicas
    autoscaler: Autoscaler | None = None  # replicas added/removed over time; `replicas` at start
    profiled: ProfiledTiming | None = None  # iteration costs measured here (a CPU engine)
    # What prices kernels: "roofline", "measured" (aiconfigurator-core's tables; refuses a GPU
    # without them) or "auto" (measured where covered, the roofline elsewhere).
    latency_model: str = DEFAULT_LATENCY_MODEL
    # Requests skip layers (FiRST): each step priced by the layers its sequences run.
    layer_skipping: LayerSkipping | None = None
    # A fine-tuning job riding along in every iteration (FlexLLM co-serving).
    finetune: FineTuneJob | None = None
    # Expert popularity and placement over the EP ranks (None: tokens spread evenly).
    expert_load: ExpertLoad | None = None
    # NanoFlow's intra-device overlap of compute-, memory- and network-bound operators.
    nanoflow: bool = False
    # LoRA adapters batched on the base model (their per-iteration work; swapping and
    # residency are `sim.adapters`).
    lora: LoraAdapters | None = None
    # Speculative decoding of every decode step (None: one token per step).
    speculative: SpeculativeDecoding | None = None
    # Attention–FFN disaggregation: the routed experts on their own GPU pool (MegaScale-Infer);
    # `parallel` is then the attention pool's layout.
    af: AFDisagg | None = None
    # The vision encoder a multimodal model runs in the engine, in the iteration that
    # prefills an image (`sim.multimodal`); None for text-only serving.
    vision: VisionEncoder | None = None
    # A local runtime (llama.cpp-style recipe, threads, CPU–GPU hybrid): priced by the
    # local-device cost model. CPU and edge devices get a default one (`runtime`).
    local: LocalRuntime | None = None

    def __post_init__(self) -> None:
        if self.speculative is not None:
            self.speculative.check_target(self.model)

    @property
    def num_devices(self) -> int:
        """Devices in the whole deployment (with AF disaggregation each replica's expert pool,
        with Mirror-SD each replica's draft devices too)."""
        per = self.parallel.num_devices + self._mirror_devices
        if self.af is not None:
            per += self.af.expert_gpus
        return self.replicas * per

    @property
    def _mirror_devices(self) -> int:
        sd = self.speculative
        return 0 if sd is None or sd.mirror_device is None else sd.mirror_devices

    @property
    def price_per_hour(self) -> float:
        """Rental cost of every device of the deployment, USD per hour (an AF expert pool and
        Mirror-SD's draft devices at their own devices' price)."""
        per = self.parallel.num_devices * self.device.price_per_hour
        if self.af is not None:
            edev = self.af.expert_device or self.device
            per += self.af.expert_gpus * edev.price_per_hour
        sd = self.speculative
        if sd is not None and sd.mirror_device is not None:
            per += sd.mirror_devices * sd.mirror_device.price_per_hour
        return self.replicas * per

    def batching(self) -> tuple[int, int, bool]:
        """(max_num_seqs, max_num_batched_tokens, chunked_prefill) after engine defaults."""
        e = self.engine
        seqs = self.max_num_seqs or e.max_num_seqs
        tokens = self.max_num_batched_tokens or e.max_num_batched_tokens
        gpu = self.device.kind == "gpu"  # the servers' rules read a GPU's memory
        if not self.max_num_batched_tokens and gpu and e.token_budget_rule == "sglang":
            tokens = sglang_server_defaults(self.device, self.parallel, e.version)[0]
        if not self.max_num_batched_tokens and gpu and e.token_budget_rule == "vllm":
            tokens = vllm_batch_defaults(self.device)[0]
        if not self.max_num_seqs and gpu and e.max_seqs_rule == "vllm":
            seqs = vllm_batch_defaults(self.device)[1]
        spec = self.speculative is not None and _sglang_caps_speculative(e.version)
        if not self.max_num_seqs and e.max_seqs_rule == "sglang" and spec:
            seqs = SGLANG_SPECULATIVE_MAX_SEQS
        chunked = e.chunked_prefill if self.chunked_prefill is None else self.chunked_prefill
        if seqs < 1 or tokens < 1:
            raise ServesimError("max_num_seqs and max_num_batched_tokens must be ≥ 1.")
        return seqs, tokens, chunked

    def runtime(self) -> LocalRuntime | None:
        """The local runtime that prices this deployment: the one given, or for a CPU or edge
        device (not profiled here) the checkpoint's own format on every core; None on a
        datacenter path."""
        if self.local is not None:
            return self.local
        if self.profiled is None and self.device.kind in ("cpu", "edge"):
            return LocalRuntime(default_quant(self.model))
        return None

    def memory(self) -> MemoryLayout:
        """Per-device memory layout (raises if the model does not fit)."""
        rt = self.runtime()
        if rt is not None:
            return local_memory(self.model, self.device, rt)
        seqs, tokens, _ = self.batching()
        spec = self.speculative
        method = spec.method if spec is not None else ""
        share = engine_memory(self.engine, self.device, self.parallel, method)
        k, verify = (spec.num_draft_tokens, spec.verify_tokens) if spec is not None else (0, 1)
        copies = speculative_state_copies(self.engine, k, verify)
        model = self.model.loaded(mtp=method == "mtp")
        if self.af is not None:  # the attention pool's memory; the experts checked to fit
            layout = af_memory_layout(
                model,
                self.device,
                self.parallel,
                self.af,
                tokens,
                max_num_seqs=min(seqs, 256),
                state_copies=copies,
                **share,
            )
        else:
            layout = memory_layout(
                model,
                self.device,
                self.parallel,
                max_batched_tokens=tokens,
                max_num_seqs=min(seqs, 256),
                state_copies=copies,
                **share,
            )
        cap = self.engine.max_kv_tokens  # each attention-DP rank's own pool, allocated to it
        if cap and cap * self.parallel.dp < layout.kv_tokens:
            pool = cap * layout.kv_bytes_per_token
            layout = replace(layout, kv_tokens=cap * self.parallel.dp, kv_bytes=pool)
        return layout

    def predictor(self) -> Predictor:
        """The iteration-time predictor of one replica, shared by equal deployments.

        A capacity search simulates the same replica many times; sharing the predictor keeps
        its memoised kernel times and dense-work tables across those runs.
        """
        if self.profiled is not None:
            if (
                self.speculative is not None
                or self.layer_skipping is not None
                or self.finetune is not None
                or self.nanoflow
                or self.af is not None
            ):
                raise ServesimError(
                    "Speculative decoding, layer skipping, co-served fine-tuning, NanoFlow and "
                    "AF disaggregation are priced on GPU kernels, not on a CPU engine profiled "
                    "here; drop them or the profiled engine."
                )
            return self.profiled.predictor(self.model, self.device, self.engine, self.fit)
        rt = self.runtime()
        if rt is not None:
            return self._local_predictor(rt)
        key = (
            self.model,
            repr(self.device),
            self.parallel,
            self._priced_engine(),
            id(self.fit),
            self.latency_model,
            self.layer_skipping,
            self.finetune,
            self.expert_load,
            self.speculative,
            self.nanoflow,
            self.lora,
            repr(self.af),
        )
        return _shared(key, self._make_predictor)

    def _priced_engine(self) -> EngineProfile:
        """The engine profile the predictor prices with, carrying this deployment's token
        budget (it bounds what one attention-DP rank prefills in a step,
        `Predictor._busiest_rank`) and, under vLLM's capture rule (`capture_size_rule`), the
        largest iteration its graphs cover for its sequence cap."""
        e = self.engine
        seqs, tokens, _ = self.batching()
        over: dict[str, int] = {}
        if tokens != e.max_num_batched_tokens:
            over["max_num_batched_tokens"] = tokens
        if e.capture_size_rule == "vllm" and (
            not e.version or version_key(e.version) >= version_key(VLLM_CAPTURE_BY_SEQS_FROM)
        ):
            graphed = min(e.prefill_graph_max_tokens, 2 * seqs)
            if graphed != e.prefill_graph_max_tokens:
                over["prefill_graph_max_tokens"] = graphed
        return e.with_overrides(**over) if over else e

    def _make_predictor(self) -> Predictor:
        """A new predictor for this deployment's variant (one at a time)."""
        engine = self._priced_engine()
        args = (self.model, self.device, self.parallel, engine, self.fit)
        variants = [self.speculative, self.layer_skipping, self.finetune, self.lora, self.af]
        if sum(v is not None for v in variants) + self.nanoflow > 1:
            raise ServesimError(
                "Speculative decoding, layer skipping, co-served fine-tuning, LoRA adapters, "
                "NanoFlow overlap and AF disaggregation are not modelled together; keep one "
                "of them."
            )
        kw = {"latency_model": self.latency_model, "expert_load": self.expert_load}
        if self.speculative is not None:
            pred = SpeculativePredictor(
                self.model,
                self.device,
                self.speculative,
                self.parallel,
                engine,
                self.fit,
                latency_model=self.latency_model,
                expert_load=self.expert_load,
            )
        elif self.layer_skipping is not None:
            pred = SkippingPredictor(*args, **kw, skipping=self.layer_skipping)
        elif self.finetune is not None:
            pred = CoServingPredictor(*args, **kw, job=self.finetune)
        elif self.nanoflow:
            pred = NanoFlowPredictor(*args, **kw)
        elif self.lora is not None:
            pred = LoraPredictor(*args, **kw, adapters=self.lora)
        elif self.af is not None:
            pred = AFDisaggPredictor(
                self.model,
                self.device,
                self.af,
                *args[2:],
                **kw,  # type: ignore[arg-type]
            )
        else:
            pred = Predictor(*args, **kw)
        return pred

    def _local_predictor(self, rt: LocalRuntime) -> Predictor:
        """The local-device predictor (shared by equal deployments, as `predictor`)."""
        if (
            self.speculative is not None
            or self.layer_skipping is not None
            or self.finetune is not None
            or self.nanoflow
            or self.lora is not None
            or self.af is not None
            or self.vision is not None
            or self.parallel.num_devices > 1
        ):
            raise ServesimError(
                f"{self.device.name} runs the local-device cost model, which prices one device "
                "without speculative decoding, layer skipping, fine-tuning, LoRA, NanoFlow, "
                "attention-FFN disaggregation or a vision encoder; drop those (and "
                "--tp/--pp/--ep/--dp)."
            )
        key = ("local", self.model, repr(self.device), self.engine, repr(rt))
        return _shared(key, lambda: LocalPredictor(self.model, self.device, self.engine, rt))

    def label(self) -> str:
        """Short description such as `2x h100_sxm tp4 vllm`."""
        text = f"{self.replicas}x {self.device.name} {self.parallel.label()} {self.engine.name}"
        if self.engine.version:
            text += f" {self.engine.version}"
        if self.max_num_batched_tokens is not None:
            text += f" budget{self.max_num_batched_tokens}"
        if self.chunked_prefill is False:
            text += " unchunked"
        if self.policy is not None and not self.policy.is_fcfs:
            text += f" {self.policy.name}"
            if self.policy.preemption != "recompute":
                text += f"/{self.policy.preemption}"
        if self.migration is not None:
            text += " +migration"
        if self.autoscaler is not None:
            text += " autoscaled"
        if self.layer_skipping is not None:
            text += f" skip{self.layer_skipping.skip_prob:g}"
        if self.finetune is not None:
            text += f" +finetune{self.finetune.tokens_per_iter}"
        if self.nanoflow:
            text += " nanoflow"
        if self.speculative is not None:
            text += f" {self.speculative.label()}"
        if self.af is not None:
            text += f" {self.af.label(self.parallel.num_devices)}"
        if self.local is not None:
            text += f" {self.local.label()}"
        return text

    def check_batch(
        self, batch: BatchShape, spell: Callable[[str], str] = str, require_fit: bool = True
    ) -> None:
        """Refuse a batch the engine would never run: a sequence longer than the model's
        context, more sequences or tokens than its limits, or more context than its KV cache
        holds (checked before anything is priced).
        `spell` names a setting the way the caller's user gives it (a flag, a YAML key).
        `require_fit` False: a deployment that does not fit its devices has no KV cache to
        check against (the caller reports the misfit itself)."""
        seqs, budget, chunked = self.batching()
        try:
            mem = self.memory()
        except ServesimError:
            if require_fit:
                raise
            mem = None
        longest = max((n + c for n, c in batch.prefill), default=0)
        if batch.decode_seqs:  # (the mean decode context: some sequence holds at least it)
            longest = max(longest, -(-batch.decode_context // batch.decode_seqs))
        self.model.check_context(longest)
        context = batch.decode_context + sum(n + c for n, c in batch.prefill)
        if mem is not None and context > mem.kv_tokens:
            raise ServesimError(
                f"The batch needs {context:,} tokens of KV cache but the cache of "
                f"{self.model.name} on {self.label()} holds {mem.kv_tokens:,}; give fewer or "
                "shorter sequences, or "
                + (
                    "raise --max-kv-tokens."
                    if self.engine.max_kv_tokens
                    else "more devices per replica."
                )
            )
        if batch.num_seqs > seqs:
            raise ServesimError(
                f"The batch has {batch.num_seqs:,} sequences but the engine runs at most "
                f"{seqs:,} ({spell('max_num_seqs')}); raise {spell('max_num_seqs')} or give fewer."
            )
        if chunked and batch.num_tokens > budget:
            raise ServesimError(
                f"The batch has {batch.num_tokens:,} new tokens but the engine schedules at most "
                f"{budget:,} per iteration ({spell('max_num_batched_tokens')}); raise it, or "
                "price a smaller chunk."
            )

    def uses_prefix_cache(self) -> bool:
        """Whether prefix caching is on (the engine's default unless set). SGLang turns the
        radix cache of a hybrid Mamba / Gated DeltaNet model off under speculative decoding
        (`EngineProfile.overlap_rule`)."""
        on = self.engine.prefix_caching if self.prefix_caching is None else self.prefix_caching
        if on and self.engine.overlap_rule == "sglang" and self.speculative is not None:
            return not _sglang_mamba_cache(self.model)
        return on

    def overlaps(self) -> bool:
        """Whether the engine schedules the next iteration while one runs: its profile's
        `overlap_scheduling`, less the engine's own exceptions (`EngineProfile.overlap_rule`):
        SGLang's under speculative decoding and for a hybrid model whose radix cache is on,
        vLLM's under a draft-model speculator and pipeline parallelism; and a policy that
        preempts prefills on arrival (FlowPrefill) runs on a synchronous loop."""
        e = self.engine
        if not e.overlap_scheduling:
            return False
        if self.policy is not None and self.policy.prefill_preemption:
            return False  # FlowPrefill stops a prefill as a prompt arrives: a synchronous loop
        if e.overlap_rule == "vllm":
            drafts = self.speculative is not None and self.speculative.method == "draft"
            return self.parallel.pp == 1 and not drafts
        if e.overlap_rule != "sglang":
            return True
        if self.speculative is not None:
            return False
        return not (_sglang_mamba_cache(self.model) and self.uses_prefix_cache())
