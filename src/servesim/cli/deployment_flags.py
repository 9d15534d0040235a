"""The deployment flags `simulate` and `predict` share, their settings schema, and the `Deployment`
they build (the model's own limits checked here).
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, model_validator

from servesim.cli.settings import (
    LatencyModel,
    Misuse,
    NonEmpty,
    NonNegFloat,
    NonNegInt,
    PosInt,
    Settings,
    _int_list,
    add_switch,
    spell_template,
)
from servesim.errors import ServesimError
from servesim.spec.devices import catalog
from servesim.spec.engine_profile import (
    ALLREDUCE_NORM_FUSION,
    LM_HEAD_SPLITS,
    MXFP4_ACTIVATIONS,
    get_engine,
)


def parse_chunk(text: str) -> tuple[int, int]:
    """(new, cached) tokens from NEW[:CACHED] (ValueError saying the form if not)."""
    parts = str(text).split(":")
    usage = f"takes NEW or NEW:CACHED token counts with NEW ≥ 1, got {text!r}"
    try:
        new = int(parts[0])
        cached = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(usage) from None
    if new < 1 or cached < 0 or len(parts) > 2:
        raise ValueError(usage)
    return new, cached


def listed_chunks(v: Any) -> Any:
    """`prefill: 512` or `prefill: "512:1024"` in a file is one chunk."""
    if isinstance(v, int) and not isinstance(v, bool):
        return [str(v)]
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
    return v


def float_list(v: Any) -> Any:
    """`0.8,0.7`, 0.8 or [0.8, 0.7] → a tuple of numbers (ValueError saying the form)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (float(v),)
    items = [x for x in v.split(",") if x.strip()] if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        raise ValueError(f"takes numbers like 0.8 or 0.8,0.7,0.6, got {v!r}")
    try:
        return tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise ValueError(f"takes numbers like 0.8 or 0.8,0.7,0.6, got {v!r}") from None


Acceptance = Annotated[tuple[float, ...], BeforeValidator(float_list)]
SpecMethod = Literal["mtp", "eagle", "draft"]
SPEC_OPTIONS = (
    "num_draft_tokens", "acceptance", "draft_model", "spec_tree_width", "mirror_draft_device",
)  # fmt: skip
TreeWidths = Annotated[tuple[PosInt, ...], BeforeValidator(_int_list)]
MirrorLink = Literal["nvlink", "infiniband", "pcie"]
NormFusion = Literal[ALLREDUCE_NORM_FUSION]  # type: ignore[valid-type]  # the engine profile's
Mxfp4Activation = Literal[MXFP4_ACTIVATIONS]  # type: ignore[valid-type]
LmHeadSplit = Literal[tuple(x for x in LM_HEAD_SPLITS if x)]  # type: ignore[valid-type]


class DeploymentSettings(Settings):
    """What one replica is: model, device, parallel layout, engine and batching limits."""

    model: NonEmpty = "meta-llama/Llama-3.1-8B"
    device: NonEmpty = "h100_sxm"
    devices: NonEmpty | None = None
    tp: PosInt = 1
    pp: PosInt = 1
    ep: PosInt = 1
    dp: PosInt = 1
    engine: NonEmpty = "vllm"
    engine_version: NonEmpty | None = None  # None: the newest measured collection
    sampling: Literal["greedy", "filtered"] = "greedy"
    max_num_seqs: PosInt | None = None
    max_num_batched_tokens: PosInt | None = None
    chunked_prefill: bool | None = None
    piecewise_cuda_graph_max_tokens: NonNegInt | None = None  # None: the engine's
    moe_backend: NonEmpty | None = None  # None: the engine's own choice
    moe_a2a_backend: NonEmpty | None = None  # None: the engine's (SGLang: none)
    allreduce_norm_fusion: NormFusion | None = None  # None: the engine's
    mxfp4_activation: Mxfp4Activation | None = None  # None: the engine's choice on the GPU
    lm_head_split: LmHeadSplit | None = None  # None: the engine's under attention DP
    max_kv_tokens: PosInt | None = None  # None: what memory allows
    token_count_compile_ms: NonNegFloat | None = None  # None: the engine release's
    weight_dtype: NonEmpty | None = None
    kv_dtype: NonEmpty | None = None
    fit: NonEmpty | None = None
    latency_model: LatencyModel | None = None  # None: the predictor's default
    speculative: SpecMethod | None = None
    num_draft_tokens: PosInt | None = None
    acceptance: Acceptance = ()
    draft_model: NonEmpty | None = None
    spec_tree_width: TreeWidths = ()
    mirror_draft_device: NonEmpty | None = None
    mirror_draft_devices: PosInt = 1
    mirror_link: MirrorLink = "nvlink"
    nanoflow: bool = False

    @model_validator(mode="after")
    def _speculation(self) -> DeploymentSettings:
        if self.speculative is None:
            for key in SPEC_OPTIONS:
                if self.given(key) and getattr(self, key):
                    raise Misuse(
                        f"{{{key}}} shapes speculative decoding and does nothing without "
                        f"{{speculative}}; add {{speculative}} mtp|eagle|draft or drop {{{key}}}."
                    )
        elif self.num_draft_tokens is None:
            raise Misuse("{speculative} needs {num_draft_tokens} K, the draft tokens per step.")
        return self

    @model_validator(mode="after")
    def _lm_head(self) -> DeploymentSettings:
        if self.given("lm_head_split") and self.dp <= 1:
            raise Misuse(
                "{lm_head_split} chooses how attention-DP ranks share the output head and does "
                "nothing without them; add {dp} 2 or more, or drop {lm_head_split}."
            )
        return self


def add_speculative_args(p: Any) -> None:
    """`--speculative`, `--num-draft-tokens`, `--acceptance`, `--draft-model`."""
    g = p.add_argument_group("speculative decoding")
    g.add_argument(
        "--speculative",
        choices=("mtp", "eagle", "draft"),
        help="draft tokens with the model's MTP head, an EAGLE head or a draft model",
    )
    g.add_argument("--num-draft-tokens", type=int, help="draft tokens per decode step (k ≥ 1)")
    g.add_argument(
        "--acceptance",
        help="conditional acceptance per draft position, one rate or one per position "
        "(default: mtp 0.85,0.63,… from DeepSeek-V3's report; eagle 0.8)",
    )
    g.add_argument("--draft-model", help="draft model HF id or config.json (--speculative draft)")
    add_tree_and_mirror_args(g)
    g.add_argument(
        "--nanoflow",
        action="store_true",
        default=None,
        help="NanoFlow's intra-device overlap: nano-batches overlap compute-, memory- and "
        "network-bound operators (ideal overlap, an upper bound)",
    )


def add_tree_and_mirror_args(g: Any) -> None:
    """`--spec-tree-width`, `--mirror-draft-device`, `--mirror-draft-devices`, `--mirror-link`."""
    g.add_argument(
        "--spec-tree-width",
        help="draft tree: candidates per depth, one width or one per depth (EAGLE-2/Medusa; "
        "SGLang --speculative-eagle-topk); default 1, a chain",
    )
    g.add_argument(
        "--mirror-draft-device",
        help="Mirror-SD: run the drafter on its own devices of this type, in parallel with "
        "verify (step = max(draft, verify) + exchange); they are priced with the deployment",
    )
    g.add_argument(
        "--mirror-draft-devices", type=int, help="Mirror-SD draft devices per replica (1)"
    )
    g.add_argument(
        "--mirror-link",
        choices=("nvlink", "infiniband", "pcie"),
        help="Mirror-SD link between target and draft devices (nvlink)",
    )


def speculative_from(s: Any, method: str | None, k: int, prefix: bool = False) -> Any:
    """The `SpeculativeDecoding` of validated settings (None when off or k is 0); `prefix`
    takes the first k rates of a longer chain (a plan searching several k gives it once)."""
    from servesim.spec.model import load_model
    from servesim.spec.speculative import SpeculativeDecoding

    if method is None or k == 0:
        return None
    acc = tuple(s.acceptance)
    if prefix and len(acc) > k:
        acc = acc[:k]
    draft = load_model(s.draft_model) if s.draft_model else None
    widths = tuple(getattr(s, "spec_tree_width", ()) or ())
    if prefix and len(widths) > k:
        widths = widths[:k]
    name = getattr(s, "mirror_draft_device", None)
    mirror = catalog(getattr(s, "devices", None)).get(name) if name else None
    return SpeculativeDecoding(
        method,
        k,
        acc,
        draft,
        seed=int(getattr(s, "seed", 0) or 0),
        tree_widths=widths,
        mirror_device=mirror,
        mirror_devices=int(getattr(s, "mirror_draft_devices", 1) or 1),
        mirror_link=getattr(s, "mirror_link", "nvlink") or "nvlink",
    )


def add_deployment_args(p: argparse.ArgumentParser, simulate: bool) -> None:
    """The deployment flags `simulate` and `predict` share (read by `build_deployment`)."""
    g = p.add_argument_group("deployment")
    g.add_argument("--config", help="YAML/JSON file with any of these settings")
    g.add_argument("--model", help="bundled model name/HF id or a config.json path")
    g.add_argument("--device", help="device name or alias (see `servesim devices`)")
    g.add_argument("--devices", help="extra device catalog YAML")
    g.add_argument("--tp", type=int, help="tensor-parallel degree")
    g.add_argument("--pp", type=int, help="pipeline-parallel degree (at most the model's layers)")
    g.add_argument("--ep", type=int, help="expert-parallel degree (1: experts split over tp×dp)")
    g.add_argument("--dp", type=int, help="attention data-parallel ranks per replica")
    if simulate:
        g.add_argument("--replicas", type=int, help="identical data-parallel replicas")
    g.add_argument("--engine", help="engine profile: vllm, sglang or trtllm")
    g.add_argument(
        "--engine-version",
        metavar="RELEASE",
        help="the engine release served (e.g. 0.12.0, 1.2.0rc6): kernel tables of its "
        "collection, the nearest measured one otherwise (default: the newest)",
    )
    g.add_argument(
        "--sampling",
        choices=("greedy", "filtered"),
        help="how requests sample: greedy (temperature 0, the default) or filtered with "
        "top-k/top-p (what a client that sets nothing gets from a checkpoint whose "
        "generation config sets them); vLLM 0.11.1-0.15 sorts the vocabulary to filter, "
        "every step",
    )
    g.add_argument("--max-num-seqs", type=int, help="max sequences per batch")
    g.add_argument("--max-num-batched-tokens", type=int, help="token budget per iteration")
    add_switch(g, "--chunked-prefill", "split long prefills across iterations")
    g.add_argument(
        "--piecewise-cuda-graph-max-tokens",
        type=int,
        metavar="N",
        help="iterations with prefill tokens replay piecewise CUDA graphs up to N tokens "
        "(0: prefill runs eager; default: the engine's)",
    )
    g.add_argument(
        "--moe-backend",
        metavar="NAME",
        help="the engine's fused-MoE kernels (TRT-LLM moe_config.backend, SGLang "
        "--moe-runner-backend; vLLM flashinfer_trtllm for VLLM_USE_FLASHINFER_MOE_INT4=1 on "
        "Blackwell, triton for --moe-backend triton or VLLM_USE_FLASHINFER_MOE_FP8=0 with "
        "DeepGEMM off, marlin for MXFP4 experts under VLLM_MXFP4_USE_MARLIN=1); measured MoE "
        "tables of other kernels are not used (default: the "
        "engine's own choice, which for vLLM 0.16+ on Blackwell runs block-fp8 experts on "
        "FlashInfer's TRT-LLM kernels)",
    )
    g.add_argument(
        "--moe-a2a-backend",
        metavar="NAME",
        help="how expert-parallel layers exchange tokens: SGLang's --moe-a2a-backend, vLLM's "
        "--all2all-backend or TensorRT-LLM's TRTLLM_FORCE_ALLTOALL_METHOD (deepep, "
        "deepep_low_latency); none (default: the engine's; SGLang finds the tokens on every "
        "device or gathers them under attention DP, vLLM gathers across DP ranks) or an "
        "all-to-all backend such as deepep (tokens dispatched and combined by all-to-all)",
    )
    g.add_argument(
        "--allreduce-norm-fusion",
        choices=ALLREDUCE_NORM_FUSION,
        help="residual add and RMSNorm done inside each TP all-reduce: trtllm (TensorRT-LLM's "
        "eager fusion: Llama above hidden 4096, DeepSeek-V3/Kimi-K2, within its 8 MB "
        "workspace), flashinfer (SGLang --enable-flashinfer-allreduce-fusion, up to 2048 "
        "tokens), vllm (vLLM's enable_fi_allreduce_fusion pass, inputs up to 64/32/1 MiB at "
        "TP 2/4/8) or none (default: the engine's; trtllm for trtllm, none otherwise)",
    )
    g.add_argument(
        "--lm-head-split",
        choices=[x for x in LM_HEAD_SPLITS if x],
        help="how the output head splits its vocabulary under attention DP (--dp > 1): "
        "attention_tp (each DP rank holds a whole copy: TensorRT-LLM's default, SGLang "
        "--enable-dp-lm-head, vLLM), world (over every GPU of the replica, rows and logits "
        "gathered: SGLang's default with --enable-dp-attention) or adp_tp (TensorRT-LLM "
        "enable_lm_head_tp_in_adp: up to a node's GPUs share it while a rank has under 256 "
        "rows); default: the engine's",
    )
    g.add_argument(
        "--max-kv-tokens",
        type=int,
        metavar="N",
        help="cap each attention-DP rank's KV cache at N tokens below what memory allows "
        "(SGLang --max-total-tokens, TensorRT-LLM kv_cache_config.max_tokens)",
    )
    g.add_argument(
        "--token-count-compile-ms",
        type=float,
        metavar="MS",
        help="host milliseconds a prefill of a Gated DeltaNet/KDA model pays the first time the "
        "server sees its token count (a kernel compiled per count: SGLang before 0.5.16, 90 ms); "
        "0 turns it off; default: the engine release's",
    )
    g.add_argument(
        "--mxfp4-activation",
        choices=MXFP4_ACTIVATIONS,
        help="what MXFP4 experts (gpt-oss) quantise activations to: mxfp8 (W4A8: TensorRT-LLM "
        "and SGLang on Blackwell, vLLM with VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1) or bf16 "
        "(W4A16); auto (default): the engine's own choice on the GPU",
    )
    if simulate:  # the serving loop's own costs: a simulation runs it, one iteration does not
        g.add_argument(
            "--response-us",
            type=float,
            metavar="US",
            help="host microseconds the serving process spends on each streamed response, one at a "
            "time (TensorRT-LLM: 69; a slower loop than the engine queues tokens); 0 turns it off",
        )
        g.add_argument(
            "--stream-interval",
            type=int,
            metavar="N",
            help="steps between a running request's streamed responses (TensorRT-LLM "
            "stream_interval; default 1)",
        )
        g.add_argument(
            "--postprocess-workers",
            type=int,
            metavar="N",
            help="processes that share the response handling (TensorRT-LLM "
            "num_postprocess_workers; default: the serving loop alone)",
        )
        add_switch(
            g,
            "--overlap-scheduling",
            "plan the next iteration while one runs (default: the engine's own, on for all "
            "three except where it turns it off: vLLM before 0.14, with a draft model or PP; "
            "SGLang under speculative decoding or for a hybrid model with its radix cache)",
        )
    g.add_argument("--weight-dtype", help="bf16, fp8, int4, ... (default: the config's)")
    g.add_argument("--kv-dtype", help="KV cache dtype: bf16, fp16 or fp8")
    g.add_argument("--fit", help="kernel fit JSON from `servesim calibrate`")
    add_latency_model_arg(g)
    add_speculative_args(p)


def add_latency_model_arg(g: Any) -> None:
    """`--latency-model`: what prices kernels (shared by simulate, predict and plan)."""
    g.add_argument(
        "--latency-model",
        choices=("auto", "measured", "roofline"),
        help="kernel times from measured tables where the GPU and engine have them and the "
        "roofline elsewhere (auto, the default; roofline when --fit gives a calibration), "
        "only from them (measured; refuses a GPU without tables) or from the roofline "
        "everywhere (roofline)",
    )


def check_model_flags(s: DeploymentSettings, model: Any) -> None:
    """Refuse engine flags that would do nothing for this model (one sentence naming the flag):
    each one prices a part the model does not have."""
    gdn = model.num_linear_layers and model.linear_kind in ("gdn", "kda")
    lacks = (
        ("mxfp4_activation", model.expert_dtype != "mxfp4", "MXFP4 experts"),
        ("token_count_compile_ms", not gdn, "Gated DeltaNet or KDA layers"),
        ("moe_a2a_backend", not model.num_experts, "routed experts"),
        ("moe_backend", not model.num_experts, "routed experts"),
    )
    for key, missing, part in lacks:
        if missing and s.given(key):
            template = (
                f"{{{key}}} does nothing for {model.name}, which has no {part}; drop {{{key}}}."
            )
            raise ServesimError(spell_template(template, s.spell))


def build_deployment(s: DeploymentSettings) -> Any:
    """A Deployment from validated settings (the model's own limits checked here)."""
    from servesim.predictor.edge_fit import is_edge_fit
    from servesim.predictor.fewshot_transfer import load_fit
    from servesim.sim.deployment import Deployment
    from servesim.spec.model import load_model
    from servesim.spec.parallel import Parallel
    from servesim.spec.sampling import sorts_vocab

    device = catalog(s.devices).get(s.device)
    model = load_model(s.model)
    response_us = getattr(s, "response_us", None)
    if s.weight_dtype or s.kv_dtype:
        model = model.with_dtypes(weight=s.weight_dtype, kv=s.kv_dtype)
    par = Parallel(tp=s.tp, pp=s.pp, ep=s.ep, dp=s.dp)
    model.check_parallel(par)
    check_model_flags(s, model)
    # A local-device fit (`servesim fewshot --shots`) is the local runtime's: cli.hybrid_flags.
    fit = load_fit(s.fit) if s.fit and not is_edge_fit(s.fit) else None
    # A calibration the user measured prices every kernel unless they ask for the tables too.
    latency = s.latency_model or ("roofline" if fit is not None else None)
    engine = get_engine(s.engine)
    sorts = sorts_vocab(engine.name, s.engine_version or "", s.sampling == "filtered")
    return Deployment(
        model=model,
        device=device,
        parallel=par,
        engine=engine.with_overrides(
            sampler_sorts_vocab=sorts,
            overlap_scheduling=getattr(s, "overlap_scheduling", None),
            prefill_graph_max_tokens=s.piecewise_cuda_graph_max_tokens,
            moe_backend=s.moe_backend.lower() if s.moe_backend else None,
            moe_a2a=s.moe_a2a_backend.lower() if s.moe_a2a_backend else None,
            allreduce_norm_fusion=s.allreduce_norm_fusion,
            mxfp4_activation=s.mxfp4_activation,
            lm_head_split=s.lm_head_split,
            max_kv_tokens=s.max_kv_tokens,
            token_count_compile_s=(
                None if s.token_count_compile_ms is None else s.token_count_compile_ms / 1e3
            ),
            # the serving loop's own settings: simulate's (`predict` prices one iteration)
            response_s=None if response_us is None else response_us / 1e6,
            stream_interval=getattr(s, "stream_interval", None),
            postprocess_workers=getattr(s, "postprocess_workers", None),
            version=s.engine_version,
        ),
        replicas=getattr(s, "replicas", 1),
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        chunked_prefill=s.chunked_prefill,
        fit=fit,
        speculative=speculative_from(s, s.speculative, s.num_draft_tokens or 0),
        nanoflow=s.nanoflow,
        **({"latency_model": latency} if latency else {}),
    )
