"""Where engines turn their overlap scheduling off on their own, servesim follows
(`EngineProfile.overlap_rule`, `Deployment.overlaps`). SGLang (server_args.py, 0.5.x):
speculative decoding without SGLANG_ENABLE_SPEC_V2 (which also caps running requests at 48
where the launch sets no cap), and a hybrid Mamba / Gated DeltaNet model whose radix cache is on
(the default "no_buffer" mamba strategy); speculative decoding turns such a model's radix cache
off. vLLM (async scheduling by default from 0.14, `VllmConfig.__post_init__`): off with a
draft-model speculator, and under pipeline parallelism as servesim models it."""

from __future__ import annotations

import dataclasses

import numpy as np

from servesim.sim.deployment import Deployment
from servesim.sim.policies import Policy
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding

SGLANG = get_engine("sglang")
LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
QWEN35 = load_model("Qwen/Qwen3.5-397B-A17B")
H100, B200 = get_device("h100_sxm"), get_device("b200_sxm")
EAGLE = SpeculativeDecoding("eagle", 3, (0.8, 0.5, 0.25))


def test_speculative_decoding_runs_without_overlap_and_48_requests_by_default() -> None:
    plain = Deployment(model=LLAMA8, device=H100, engine=SGLANG)
    spec = dataclasses.replace(plain, speculative=EAGLE)
    assert plain.overlaps() and not spec.overlaps()
    assert spec.batching()[0] == 48
    assert dataclasses.replace(spec, max_num_seqs=256).batching()[0] == 256  # the launch's cap
    flag = dataclasses.replace(spec, engine=SGLANG.with_overrides(max_num_seqs=100))
    assert flag.batching()[0] == 100  # ... given as an engine flag
    assert plain.batching()[0] == SGLANG.max_num_seqs
    # An explicit overlap setting is the user's (SGLANG_ENABLE_SPEC_V2 keeps overlap on)
    v2 = dataclasses.replace(spec, engine=SGLANG.with_overrides(overlap_scheduling=True))
    assert v2.overlaps()
    # The other engines keep overlapping under EAGLE, and their own sequence caps.
    for name in ("vllm", "trtllm"):
        other = dataclasses.replace(spec, engine=get_engine(name))
        assert other.overlaps() and other.batching()[0] != 48


def test_vllm_schedules_asynchronously_except_with_a_draft_model_or_pipeline_stages() -> None:
    vllm = Deployment(model=LLAMA8, device=H100, engine=get_engine("vllm"))
    assert vllm.overlaps()  # async scheduling, the default from vLLM 0.14
    assert dataclasses.replace(vllm, speculative=EAGLE).overlaps()  # EAGLE/MTP keep it
    draft = SpeculativeDecoding("draft", 3, (0.8, 0.5, 0.25), draft_model=LLAMA8)
    assert not dataclasses.replace(vllm, speculative=draft).overlaps()
    assert not dataclasses.replace(vllm, parallel=Parallel(tp=1, pp=2)).overlaps()
    # An older vLLM (or --no-async-scheduling): the user's setting
    old = dataclasses.replace(
        vllm, engine=get_engine("vllm").with_overrides(overlap_scheduling=False)
    )
    assert not old.overlaps()
    # TensorRT-LLM has no exception
    assert dataclasses.replace(vllm, engine=get_engine("trtllm"), speculative=draft).overlaps()


def test_a_hybrid_model_overlaps_only_with_its_radix_cache_off() -> None:
    par = Parallel(tp=8)
    on = Deployment(model=QWEN35, device=B200, parallel=par, engine=SGLANG)
    off = dataclasses.replace(on, prefix_caching=False)  # --disable-radix-cache
    assert not on.overlaps() and on.uses_prefix_cache()
    assert off.overlaps()
    # Kimi Linear's KDA layers have no Mamba cache: SGLang drops the radix cache instead.
    kda = dataclasses.replace(on, model=dataclasses.replace(QWEN35, linear_kind="kda"))
    assert kda.overlaps()
    # Speculative decoding turns the hybrid's radix cache off (and the overlap with it).
    mtp = dataclasses.replace(on, speculative=SpeculativeDecoding("mtp", 3))
    assert not mtp.uses_prefix_cache() and not mtp.overlaps()
    dense = Deployment(model=LLAMA8, device=H100, engine=SGLANG, speculative=EAGLE)
    assert dense.uses_prefix_cache()  # a dense model keeps its radix cache


def test_a_policy_that_preempts_prefills_on_arrival_runs_synchronously() -> None:
    """FlowPrefill stops a running prefill the moment an urgent prompt arrives; a lagged
    (overlapped) arrival would never trigger it, so such a deployment runs without overlap."""
    vllm = Deployment(model=LLAMA8, device=H100, engine=get_engine("vllm"))
    assert dataclasses.replace(vllm, policy=Policy("priority")).overlaps()
    flow = Policy("priority", prefill_preemption=True)
    assert not dataclasses.replace(vllm, policy=flow).overlaps()


def test_the_summary_says_how_the_engine_loop_ran() -> None:
    """A run's summary names the loop the engine ran after its own rules (and the CLI prints
    it), so a user sees that SGLang's speculative run was synchronous and capped at 48."""
    w = Workload(np.array([0.0, 0.1]), np.array([500, 500]), np.array([20, 20]))
    spec = Deployment(model=LLAMA8, device=H100, engine=SGLANG, speculative=EAGLE)
    s = simulate(spec, w).summary()
    assert (s["overlap_scheduling"], s["max_num_seqs"]) == (False, 48)
    plain = simulate(dataclasses.replace(spec, speculative=None), w).summary()
    assert plain["overlap_scheduling"] is True and plain["max_num_seqs"] == SGLANG.max_num_seqs


def test_sglang_caps_speculative_requests_at_48_only_up_to_0_5_12() -> None:
    """server_args.py `_handle_speculative_decoding` resets an unset --max-running-requests to
    48 for EAGLE/MTP in 0.5.1.post1 ... 0.5.12 and no longer from 0.5.13 (PyPI wheels): a
    named later release keeps the engine's own cap; an unnamed one keeps 48."""
    spec = Deployment(model=LLAMA8, device=H100, engine=SGLANG, speculative=EAGLE)
    for version, seqs in (("0.5.9", 48), ("0.5.12", 48), ("0.5.13", 4096), ("0.5.16", 4096)):
        eng = SGLANG.with_overrides(version=version)
        assert dataclasses.replace(spec, engine=eng).batching()[0] == seqs, version
    assert spec.batching()[0] == 48


def test_vllm_captures_graphs_up_to_twice_its_sequence_cap() -> None:
    """From 0.10.0 vLLM captures CUDA graphs up to min(2 × max_num_seqs, 512) tokens
    (`max_cudagraph_capture_size`): a launch with --max-num-seqs 4 runs a 100-token mixed
    iteration without graphs (eager host time), where 512 was assumed for every launch."""
    model, h100 = load_model("Qwen/Qwen3-8B"), get_device("h100_sxm")
    vllm = get_engine("vllm")

    def graphed(engine, seqs: int | None) -> int:
        dep = Deployment(model=model, device=h100, engine=engine, max_num_seqs=seqs)
        return dep.predictor().engine.prefill_graph_max_tokens

    assert graphed(vllm, 4) == 8 and graphed(vllm, 64) == 128
    assert graphed(vllm, None) == 512  # the default 1,024 sequences: capped at 512
    assert graphed(vllm.with_overrides(version="0.9.2"), 4) == 512  # before the rule
    assert graphed(vllm.with_overrides(prefill_graph_max_tokens=256), 4) == 256  # as launched
    pred = Deployment(model=model, device=h100, engine=vllm, max_num_seqs=4).predictor()
    assert pred.host_s(100, 1, 3) == pred._eager_s > pred._piecewise_s
    assert pred.host_s(8, 1, 3) == pred._piecewise_s
