"""Serving-engine behaviour: the scheduling defaults and fixed costs that differ between engines.

An `EngineProfile` holds what an engine does that the kernels do not show: its per-iteration
CPU/launch overhead, whether it captures decode steps in CUDA graphs, whether prefills share an
iteration with decodes, whether it plans the next iteration while one runs (overlap
scheduling), and its default batching limits. The three built-in profiles follow each engine's
documented defaults on 80 GB-class GPUs; their overhead terms are priors, not fits (an engine
measured here gets its own from `measured_engine.fit_engine_overheads`), and any field can be
overridden per run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from servesim.errors import ServesimError
from servesim.spec.release import version_key

FIRST_TOKEN_SOURCES = ("prefill", "decode_admit", "decode_step", "prebuilt")
SERVER_RULES = ("", "sglang")  # whose default rules an engine setting follows
ENGINE_RULES = ("", "sglang", "vllm")  # ... where both engines have one
# An explicit setting replaces the engine's rule for it: setting -> the rule it turns off.
RULE_OF_SETTING = {
    "mem_util": "mem_fraction_rule",
    "cuda_graph_max_seqs": "cuda_graph_rule",
    "max_num_batched_tokens": "token_budget_rule",
    "max_num_seqs": "max_seqs_rule",
    "overlap_scheduling": "overlap_rule",  # e.g. SGLANG_ENABLE_SPEC_V2 keeps overlap on
    "prefill_graph_max_tokens": "capture_size_rule",
}
VLLM_CAPTURE_BY_SEQS_FROM = "0.10.0"  # `capture_size_rule` "vllm": the first such release

# The frontend, fixed part (request in, first token out). vLLM's own measurement: client TTFT
# minus the server's `time_to_first_token_seconds` (which starts when the engine client stamps
# the request) was 8.4-12.2 ms for 512-token prompts over HTTP streaming (vllm-project/vllm
# PR #54628, `vllm bench serve` against `vllm serve` on one host, concurrency 8, three API
# backends, two rounds, on a laptop RTX 4070 under WSL2); less the prompt's tokenisation below
# (~1.3 ms) that is ~7 ms of HTTP, chat template, engine-client hop and SSE. SGLang
# (TokenizerManager -> Scheduler -> DetokenizerManager -> TokenizerManager over ZMQ,
# python/sglang/srt/managers/) and trtllm-serve (FastAPI -> LLM API -> executor proxy over
# ZMQ IPC -> PyExecutor, tensorrt_llm/serve/openai_server.py, tensorrt_llm/executor/proxy.py)
# run the same FastAPI/uvicorn front with one or two more ZMQ hops of ~0.1 ms: the same prior.
REQUEST_OVERHEAD_S = 7.0e-3
# Host time per layer of an eager (not graph-captured) prefill forward in a PyTorch engine.
# SGLang PR #13094 (sgl-project/sglang, "[Piecewise CUDA Graph] Support ModelOpt FP8"):
# Llama-3.1-8B-Instruct-FP8 on TP8, 1,024-token prompts, one client: mean TTFT 29.97 ms with
# eager prefill against 19.66 ms with piecewise CUDA graphs, so the host exceeded the GPU by
# 10.31 ms over 32 layers (0.32 ms a layer); the forward's kernels price at 9.5 ms here on
# H100 (0.30 ms a layer; the PR does not name its GPU), so the host spends ~0.62 ms a layer.
# SGLang #13081 (Qwen3-Next-80B-A3B, H200 TP2, 1k prompts: 99.17 -> 67.83 ms) shows an
# excess of 0.65 ms a layer, twice Llama's 0.32 with the Gated DeltaNet block eager in both
# runs: a MoE hybrid layer issues more kernels. That host time per layer is not modelled per
# architecture here (one figure for every model). The same figure stands for TensorRT-LLM's
# PyTorch backend, which runs its modules the same way (no before/after measurement of its
# eager prefill was found).
EAGER_HOST_S_PER_LAYER = 0.62e-3
# A mixture-of-experts layer issues more: routing, top-k, token permutation, the expert
# GEMMs with their activation quantisation, the combine and the shared expert. SGLang PR
# #12160 (sgl-project/sglang, DeepSeek-V3, 2025-10): a prefill of one new token took 82.6 ms
# eager against 23.1 ms replayed as a CUDA graph (`forward cost` in the scheduler log), so the
# eager forward was host-bound at 82.6 ms over 61 layers: 1.35 ms a layer (58 of them MoE,
# with MLA attention). Dense layers keep the Llama figure above; every MoE layer takes this.
EAGER_HOST_S_PER_MOE_LAYER = 1.35e-3
# TensorRT-LLM's PyTorch backend issues more per MoE layer in its eager context phase. NVIDIA/
# TensorRT-LLM issue #5929 (v0.21.0rc2, trtllm-serve, LLMPerf, one request of 1,600 prompt
# tokens, TTFT p50): DeepSeek-R1 FP4 on 8 B200s at TP 8 with EP none/4/8: 161.0/160.2/172.7 ms;
# FP8 on 8 H200s: 164.6/134.4/124.1 ms. servesim prices the kernels of that prefill below
# 81 ms in each case, so it is host-bound; less the frontend (7 ms + 1,600 × 2.5 µs of
# tokenising), the step overhead (0.5 ms), the launch of the decode step before which the
# overlap loop returns the first token (0.502 ms: `results_after_next_launch`) and 3 dense
# layers at 0.62 ms, 58 MoE layers take 1.90-2.74 ms each (median of the six, 160.6 ms:
# 2.53 ms). SGLang keeps its own measured 1.35 ms.
TRTLLM_EAGER_HOST_S_PER_MOE_LAYER = 2.53e-3
# A linear-attention mixer (Gated DeltaNet, Mamba2, KDA) issues more again than softmax
# attention: its chunked scan is several Triton kernels (cumulative decay, the intra-chunk
# triangular solve, the state pass, the output), plus the causal convolution and the gating.
# SGLang PR #13081 (Qwen3-Next-80B-A3B, 48 MoE layers of which 36 Gated DeltaNet, H200 TP 2,
# one client, 1,024-token prompts): mean TTFT 99.17 ms with eager prefill. servesim prices that
# request's frontend at 9.56 ms, the scheduler pass at 1.0 ms and 48 MoE layers of host time
# at 64.8 ms (the kernels, 30 ms, hide beneath it); the 23.8 ms left over the 36 Gated DeltaNet
# layers is 0.66 ms each, added to the layer's own figure. Measured for Gated DeltaNet only; the
# other linear mixers (Mamba2's chunked scan is as many kernels) take the same figure.
EAGER_HOST_S_PER_LINEAR_MIXER = 0.66e-3
# vLLM runs torch.compile'd code, so a forward outside its CUDA graphs (a prefill beyond the
# piecewise capture sizes, or every prefill under `cudagraph_mode: FULL_DECODE_ONLY`) costs
# less host time than an eager PyTorch module, but not none. vLLM issue #45709
# (vllm-project/vllm, 2026-08-28 reproduction): Qwen3-30B-A3B on 4 × L20, TP 4, 8 clients:
# TPOT 34.4 ms compiled with `cudagraph_mode=NONE` against 11.8 ms with PIECEWISE graphs, the
# same kernels, so 22.6 ms of host time over 48 layers: 0.47 ms a layer. It is a MoE model's
# decode step on a PCIe machine's host, the only vLLM measurement of compiled code without
# graphs found; one figure stands for every model, as above.
VLLM_UNGRAPHED_HOST_S_PER_LAYER = 0.47e-3
# TensorRT-LLM's serving process handles every streamed response on one asyncio loop under
# one GIL: `GenerationResult._handle_response` (with detokenisation) and the OpenAI chunk, per
# request per response, unless `num_postprocess_workers` moves the formatting into worker
# processes (trtllm-serve's default is 0: tensorrt_llm/commands/serve.py, llmapi/llm_args.py)
# and `stream_interval` N responds every N steps (default 1; the first and last token always).
# NVIDIA's nsys capture of that path (ai-dynamo/dynamo egress_experiments/costs.py @ 6fc2424f:
# a Dynamo TensorRT-LLM worker, num_postprocess_workers 0, Grace host): per response
# `_handle_response` 26.3 µs mean, building the chunk 74.7, the hand-off 11.6 = 112.6 µs mean;
# on an x86 host (Grace runs the engines' Python 1.63x as long, devices.yaml) 69 µs. A lower
# bound for trtllm-serve (its pydantic chunk and SSE write are not in it).
TRTLLM_RESPONSE_S = 112.64e-6 / 1.63
# HF fast tokenizer (Rust BPE) encoding one prompt at a time: 2.4 µs per token (1.7 MB/s) measured
# here (tokenizers 0.23.3, byte-level BPE of 32k tokens trained on Python sources, 100 prompts
# of ~8k tokens, one thread); tiktoken's README puts HF's GPT2TokenizerFast 3-6x below tiktoken
# on 1 GB of text. All three engines tokenise with it in the API process when the client sends
# text, as benchmark clients do (aiperf, `vllm bench serve`, sglang bench_serving).
TOKENIZE_S_PER_TOKEN = 2.5e-6
# A Triton kernel compiled again for each new prefill token count. SGLang's FLA port declares
# the row count of `l2norm_fwd_kernel` (python/sglang/srt/layers/attention/fla/l2norm.py:
# `T: tl.constexpr`, rows = the forward's tokens × its q/k heads) a compile-time constant, and
# every Gated DeltaNet or KDA prefill normalises q and k with it (fla/chunk.py
# `chunk_gated_delta_rule(..., use_qk_l2norm_in_kernel=True)`, fla/kda.py), so the first
# extend forward with a token count the server has not run yet compiles it inline, on the
# scheduler's critical path, before launching: "~90 ms each on L20Y" against a 0.03 ms kernel
# (sgl-project/sglang PR #23448; PR #30403: up to ~110 ms a burst on a Qwen3.5-MoE-style model;
# PR #31558, H200, variable-length prompts: mean TTFT 131.5 -> 78.8 ms once fixed). Read in the
# PyPI wheels: still `T: tl.constexpr` in 0.5.2 ... 0.5.15.post1, `do_not_specialize=["T"]`
# from 0.5.16. Decode and verify steps use fused recurrent kernels that normalise in-kernel.
TOKEN_COUNT_COMPILE_S = 0.090
SGLANG_L2NORM_FIXED = "0.5.16"  # the first SGLang release that compiles it once
# After a speculative verify pass of a linear-attention model, SGLang makes each sequence's
# accepted position its recurrent state: `update_mamba_state_after_mtp_verify`
# (python/sglang/srt/layers/attention/hybrid_linear_attn_backend.py) copies that position's SSM
# state and conv window out of the verify's per-position cache into the state pool, for every
# linear layer at once. Read in the PyPI wheels: 0.5.8.post1 and 0.5.9 do it with eager
# advanced indexing (`ssm_states[:, dst, :] = intermediate_state_cache[:, src, last_steps]`: a
# gather into a temporary, then a scatter, so the state is read, written, read and written);
# 0.5.10 and later with one fused gather-scatter Triton kernel (`fused_mamba_state_scatter_
# with_mask`: read once, written once). vLLM keeps every verified position's state in a slot
# of its own and starts the next step from the accepted one (no copy).
SGLANG_FUSED_STATE_SCATTER = "0.5.10"


ALLREDUCE_NORM_FUSION = ("none", "trtllm", "flashinfer", "vllm")
# vLLM's default largest all-reduce input its FlashInfer fusion pass fuses, per TP degree, on
# Blackwell (`_FI_ALLREDUCE_MAX_INPUT_SIZES["10.0"]`, vllm/config/compilation.py, PR #24248):
# 64 MiB at 2 ranks, 32 at 4, 1 at 8; `VLLM_FLASHINFER_ALLREDUCE_FUSION_THRESHOLDS_MB` replaces
# it. A TP degree it does not list is not fused.
VLLM_FUSION_MAX_MIB = ((2, 64.0), (4, 32.0), (8, 1.0))
# What MXFP4 expert GEMMs quantise their activations to (`EngineProfile.mxfp4_activation`).
MXFP4_ACTIVATIONS = ("auto", "mxfp8", "bf16")
# How the output head splits its vocabulary under attention DP (`EngineProfile.lm_head_split`;
# "" is the engine's default).
LM_HEAD_SPLITS = ("", "attention_tp", "world", "adp_tp")


# The profile's figures that are host CPU time (`EngineProfile.on_host` scales them for a slower
# or faster host; one left None stays None).
HOST_TIME_FIELDS = (
    "step_overhead_s",
    "per_seq_overhead_s",
    "prefill_overhead_s",
    "request_overhead_s",
    "tokenize_s_per_token",
    "disagg_handoff_s",
    "eager_host_s_per_layer",
    "eager_host_s_per_moe_layer",
    "eager_host_s_per_linear_mixer",
    "piecewise_host_s_per_layer",
    "token_count_compile_s",
    "response_s",
)


@dataclass(frozen=True)
class EngineProfile:
    """Per-engine constants the predictor and the scheduler read."""

    name: str = "vllm"
    step_overhead_s: float = 1.0e-3  # per iteration: scheduling, input prep, sampling
    per_seq_overhead_s: float = 5.0e-6  # per sequence in the batch (bookkeeping, detokenise)
    prefill_overhead_s: float = 0.0  # extra per iteration that carries prefill tokens
    # The serving frontend, once per request: HTTP parse and chat template, the hop to the
    # engine process, and the first token's way back (detokenise, SSE). The way back is charged
    # up front: for TTFT and for a closed-loop client that sends on the last token the sum is
    # what counts, and the engine sees the request no earlier than it really does.
    request_overhead_s: float = REQUEST_OVERHEAD_S
    tokenize_s_per_token: float = TOKENIZE_S_PER_TOKEN  # the prompt, in the API process
    # Disaggregated prefill/decode: where the client's first token comes from.
    #   "prefill": the prefill worker streams it (the ideal; no hand-off on the TTFT path);
    #   "decode_admit": the decode worker streams the token the prefill sampled once it admits
    #     the request, at its first scheduler pass after the KV arrived (SGLang, TRT-LLM);
    #   "decode_step": the decode worker recomputes the last prompt token and samples the first
    #     token itself, so it comes out at the end of the decode iteration that admits it (vLLM);
    #   "prebuilt": the decode scheduler admits the request in a "prebuilt" batch without a
    #     forward and streams the prefill's token when it processes that batch's result: in the
    #     same pass without overlap scheduling (as "decode_admit"), but under overlap only in
    #     the next loop iteration, after the next decode step has run, and the request's own
    #     decoding starts with that step (SGLang `event_loop_overlap_disagg_decode` pops a
    #     batch's result after launching the next one; `process_batch_result_prebuilt` streams
    #     it: python/sglang/srt/disaggregation/decode.py, 0.5.6.post2 to 0.5.22): timed as
    #     "decode_step" times it.
    disagg_first_token: str = "decode_step"
    # Latency between the prefill's end and the decode worker holding the request: the prefill
    # server's non-streaming response, the router, the decode server's frontend (0 when the
    # router sent the request to both at once, as SGLang's does).
    disagg_handoff_s: float = REQUEST_OVERHEAD_S
    disagg_handoff_tokenizes: bool = True  # the decode server tokenises the prompt again
    # The decode worker asks for the KV at its next scheduler pass after the request reached
    # it (a pull: TRT-LLM, vLLM's NIXL read); False when the prefill pushes it at its end into
    # blocks the decode pre-allocated during the prefill (SGLang's bootstrap handshake).
    disagg_pull_at_pass: bool = True
    # The prefill worker may start a request only once a decode worker has taken it in and
    # sent back the KV blocks it pre-allocated (SGLang's bootstrap: the prefill's
    # PrefillBootstrapQueue holds a request until its KV sender leaves `Bootstrapping`, which
    # happens when the decode's DecodePreallocQueue has allocated and its KVReceiver.init sent
    # the indices; the decode reads the request in its scheduler loop, so only on the passes
    # its `--scheduler-recv-interval` lets read: python/sglang/srt/disaggregation/prefill.py,
    # decode.py). False: the prefill starts at once (TRT-LLM context-first, vLLM NIXL).
    disagg_prefill_waits_for_decode: bool = False
    # Under overlap scheduling the engine processes an iteration's results only after it has
    # launched the next iteration, so the first tokens of the prompts it finished (and on a
    # disaggregated prefill worker their KV, which leaves with the first token) go out then:
    # SGLang's `event_loop_overlap` and `event_loop_overlap_disagg_prefill` call
    # `run_batch(N+1)` before processing batch N (managers/scheduler.py,
    # disaggregation/prefill.py, read in 0.5.2 to 0.5.22; SGLANG_DISABLE_CONSECUTIVE_PREFILL_
    # OVERLAP, off by default, would process a prefill's results first when the next batch is a
    # prefill too; PR #35132: the prefill "waits until the previous prefill result is processed
    # before submitting its KV chunk"); TensorRT-LLM's `_executor_loop_overlap` likewise (PR
    # #14061's early first-token emission is opt-in, off by default). A host-bound eager prefill
    # followed by another makes that a whole launch later; a graph-replayed decode step next,
    # its scheduling overhead.
    results_after_next_launch: bool = False
    # Host time to issue one layer's kernels in a forward that is not graph-captured (PyTorch
    # eager: Python modules, dispatcher, cudaLaunchKernel per kernel). The CPU runs ahead of the
    # GPU, so such an iteration takes max(kernel time, host time) rather than their sum: a
    # short prefill is host-bound, a long one hides the launches. 0: launches are free.
    eager_host_s_per_layer: float = 0.0
    # The same for a layer whose MLP is a mixture of experts (more kernels a layer);
    # None: as eager_host_s_per_layer.
    eager_host_s_per_moe_layer: float | None = None
    # Added for a layer whose mixer is linear attention (Gated DeltaNet, Mamba2, KDA) rather
    # than softmax attention: its chunked scan launches more kernels.
    eager_host_s_per_linear_mixer: float = 0.0
    cuda_graph_max_seqs: int = 512  # decode batches up to this size replay a CUDA graph
    # Iterations that carry prefill tokens replay piecewise CUDA graphs up to this many tokens
    # (vLLM's piecewise cudagraphs, SGLang `--piecewise-cuda-graph-max-tokens`, TRT-LLM
    # `torch_compile_config.capture_num_tokens`); 0: prefill iterations always run eager.
    prefill_graph_max_tokens: int = 0
    # Host time per layer of such a piecewise-captured iteration: the graphs split at the
    # attention op, which still runs eager, so each layer pays its attention launch and the
    # replays of the pieces around it.
    piecewise_host_s_per_layer: float = 0.0
    allreduce_impl: str = "auto"  # auto = custom all-reduce for small messages (vLLM/SGLang)
    mixed_batches: bool = True  # prefill chunks share iterations with decodes
    chunked_prefill: bool = True
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    block_size: int = 16  # KV-cache page, tokens
    mem_util: float = 0.9
    # Whether mem_util is a fraction of the memory left free after the weights and activations
    # (TRT-LLM's KvCacheConfig.free_gpu_memory_fraction, default 0.9: "allocate 90% of free GPU
    # memory for KV cache", nvidia.github.io/TensorRT-LLM/examples/kvcacheconfig.html) rather
    # than of the whole device (vLLM's gpu_memory_utilization, SGLang's mem_fraction_static).
    mem_util_of_free: bool = False
    # Whether mem_util covers only the weights and the KV cache, the engine reserving the rest
    # of the device for activations and CUDA graphs itself (SGLang's mem_fraction_static:
    # "mem_fraction_static = (weights + KV pool) / GPU memory capacity", server_args.py), rather
    # than everything the engine allocates (vLLM's gpu_memory_utilization).
    reserve_in_fraction: bool = False
    # "sglang": SGLang's default `--mem-fraction-static` rule (server_args.py
    # `_handle_gpu_memory_settings` from 0.5.3, the older fixed reserve of
    # `spec.memory.sglang_mem_fraction` before it, by `version`) sets mem_util per deployment
    # (`spec.memory.engine_memory`); "": mem_util as it stands. Setting mem_util (an explicit
    # --mem-fraction-static) turns the rule off.
    mem_fraction_rule: str = ""
    # "sglang": decode batches are graph-captured up to SGLang's default `--cuda-graph-max-bs`
    # for the server's memory and size (server_args.py from 0.5.3: 256 below TP 4 and 512 from
    # it under 160 GiB, 512 above; before 0.5.3 160, 256 above 90 GiB, 512 above 160,000 MiB;
    # `spec.memory.sglang_server_defaults` by `version`), which then replaces
    # cuda_graph_max_seqs; "": cuda_graph_max_seqs as it stands. Setting cuda_graph_max_seqs
    # (an explicit --cuda-graph-max-bs) turns the rule off.
    cuda_graph_rule: str = ""
    # "sglang": a deployment that sets no token budget runs SGLang's default
    # `--chunked-prefill-size` for its device's memory (server_args.py, v0.5: 8,192 below
    # 160 GiB, 16,384 above; `spec.memory.sglang_server_defaults`), the server's chunk over all
    # its attention-DP ranks; "vllm": vLLM's OpenAI-server default for the GPU
    # (`spec.memory.vllm_batch_defaults`: 8,192, or 2,048 under 70 GiB and on an A100); "":
    # max_num_batched_tokens as it stands. Setting max_num_batched_tokens (an explicit
    # --chunked-prefill-size or --max-num-batched-tokens) turns the rule off.
    token_budget_rule: str = ""
    # "vllm": a deployment that sets no sequence cap runs vLLM's default for the GPU (1,024, or
    # 256 under 70 GiB and on an A100); "sglang": SGLang's cap of 48 running requests under
    # speculative decoding (server_args.py `_handle_speculative_decoding`, up to 0.5.12: gone
    # from 0.5.13, `sim.deployment.SGLANG_SPECULATIVE_CAP_DROPPED`);
    # "": max_num_seqs as it stands. Setting max_num_seqs turns it off.
    max_seqs_rule: str = ""
    # "vllm": the largest batch vLLM captures CUDA graphs for is min(2 × max_num_seqs, 512)
    # tokens from 0.10.0 on (`VllmConfig` sizes `cudagraph_capture_sizes` from
    # `max_cudagraph_capture_size` = min(max_num_seqs * 2, 512), vLLM PR #20628), so a launch
    # with few sequences replays piecewise graphs only for iterations that small
    # (`prefill_graph_max_tokens` is that bound, `sim.deployment.Deployment._priced_engine`);
    # "": prefill_graph_max_tokens as it stands. Setting it turns the rule off.
    capture_size_rule: str = ""
    # The scheduler plans iteration n+1 while n runs (TRT-LLM's overlap scheduler, SGLang's
    # overlap schedule, vLLM's async scheduling): an arrival is first seen by the pass at the
    # next iteration's start.
    overlap_scheduling: bool = False
    # "sglang": where SGLang's server turns its overlap schedule off, so does servesim
    # (`Deployment.overlaps`): speculative decoding runs without it unless SGLANG_ENABLE_SPEC_V2
    # is set (server_args.py `_handle_speculative_decoding`: "Overlap scheduler is disabled when
    # spec v2 is off"), and a hybrid Mamba / Gated DeltaNet model with its radix cache on runs
    # without it too (`_handle_mamba_radix_cache`: the default "no_buffer" mamba strategy "is
    # not compatible with overlap schedule"; launches pass --disable-radix-cache to keep it).
    # Speculative decoding also disables the radix cache of such a model
    # (`_handle_mamba_radix_cache`, SGLang 0.5.x). "vllm": vLLM's async scheduling (its
    # default from 0.14.0) is off with a draft-model speculator (`VllmConfig.__post_init__`
    # keeps it for EAGLE and MTP only) and, as servesim models it, under pipeline parallelism
    # (vLLM's PP batch queue instead). "": overlap_scheduling as it stands.
    overlap_rule: str = ""
    # Recurrent-state copies a running sequence of a hybrid (Gated DeltaNet / Mamba) model
    # holds under speculative decoding, so its verify pass can roll back to any accepted
    # position. "sglang": the state plus one per verified token (`handle_max_mamba_cache` in
    # model_executor/model_runner_kv_cache_mixin.py sets aside `mamba_cache_per_req ×
    # max_running_requests × speculative_num_draft_tokens` of intermediate states before the KV
    # cache is sized). "vllm": the state plus one per draft token (`MambaSpec(...,
    # num_speculative_blocks=num_speculative_tokens)`, model_executor/layers/mamba/abstract.py).
    # "": one copy. TensorRT-LLM's `PythonMambaCacheManager.SpeculativeState` keeps either full
    # intermediate SSM states (its legacy path) or a compact replay history of inputs, by
    # release; which one a launch runs is not read here, so it keeps one copy.
    spec_state_rule: str = ""
    # Decode steps between the scheduler's reads of new requests while it is busy (SGLang
    # `--scheduler-recv-interval`, default 1: python/sglang/srt/server_args.py). SGLang's
    # SchedulerRecvSkipper (python/sglang/srt/managers/scheduler_recv_skipper.py) adds 1 per
    # decode (or idle) pass and 1000 per any other forward, and reads the tokenizer's queue
    # once the count reaches the interval, then restarts it: a request that arrives while
    # the engine decodes waits for the next multiple of the interval in decode steps.
    recv_interval_steps: int = 1
    # TensorRT-LLM batch waiting (`batch_wait_timeout_iters`, `batch_wait_max_tokens_ratio`,
    # both 0 = off by default: tensorrt_llm/llmapi/llm_args.py). While generation requests run,
    # PyExecutor holds the scheduled context requests back (`_waiting_requests` in
    # tensorrt_llm/_torch/pyexecutor/py_executor.py) until the iteration's tokens (contexts'
    # prompts plus one per generation request) reach ratio × max_num_tokens or it has held them
    # for timeout iterations; an engine with no generation requests never waits, and attention
    # DP skips it.
    batch_wait_timeout_iters: int = 0
    batch_wait_max_tokens_ratio: float = 0.0
    # TensorRT-LLM attention-DP balancing (`attention_dp_config.enable_balance`, off by
    # default; `timeout_iters` 50 by default: tensorrt_llm/llmapi/llm_args.py AttentionDpConfig).
    # Each pass PyExecutor._balance_adp_requests allgathers every rank's scheduled context and
    # generation counts: context requests go only when every rank has one (and a free slot), or
    # when its counter of passes without that reaches timeout_iters, or when some rank has no
    # generation request; the counter advances on every such pass, waiting requests or not,
    # and restarts at each release. 0: no balancing. (`batching_wait_iters`, a further wait once
    # every rank has context requests, is not modelled: InferenceX's DeepSeek runs set 0.)
    adp_balance_timeout_iters: int = 0
    prefix_caching: bool = True  # vLLM V1 APC, SGLang radix cache, TRT-LLM KV reuse: on by default
    # Admit a request only when the KV blocks of its whole length (prompt + max new tokens)
    # fit beside the final blocks of every admitted one, so none is ever preempted:
    # TensorRT-LLM's default capacity policy, GUARANTEED_NO_EVICT (llmapi/llm_args.py
    # SchedulerConfig; the C++ GuaranteedNoEvictScheduler counts each request's
    # `getRemainingBlocksToCompletion`). vLLM and SGLang admit on the prompt's blocks and
    # preempt (or retract) when decoding runs out.
    reserve_to_completion: bool = False
    # Tokens a disaggregated decode worker keeps free for the decoding of each request it holds
    # or has taken in (running, in transfer, waiting): a request's KV is pre-allocated only if
    # its prompt plus this fits what is free after that reserve for all of them and itself.
    # SGLang's DecodePreallocQueue (`_allocatable_tokens`, `num_reserved_decode_tokens`,
    # SGLANG_NUM_RESERVED_DECODE_TOKENS, 512 by default; no srt-slurm recipe changes it).
    disagg_decode_reserve_tokens: int = 0
    # A disaggregated decode worker out of KV retracts requests to host memory and reloads
    # them when room frees (SGLang: `release_req` offloads the KV in decode mode,
    # `DecodePreallocQueue.resume_retracted_reqs` loads it back before new pre-allocations);
    # otherwise a preempted request is recomputed where it is, as vLLM's decode worker does.
    disagg_decode_retracts_to_host: bool = False
    # Admission that keeps room for decoding (SGLang's PrefillAdder): a waiting request is
    # admitted only if its prompt plus its max new tokens (clipped) fit what is free after
    # `ratio` × each running request's remaining max new tokens (clipped) and the requests
    # admitted with it; `ratio` falls linearly from its initial value to its floor over the
    # given decode steps, restarts when the batch empties and is raised after a retraction.
    # (initial ratio, floor, decay steps, clip tokens); () admits on the prompt alone.
    # SGLang: SGLANG_INIT_NEW_TOKEN_RATIO 0.7, SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR 0.14 of it,
    # SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS 600, SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION 4096
    # (managers/schedule_policy.py PrefillAdder, scheduler.py).
    new_token_ratio: tuple[float, float, int, int] = ()
    # The fused-MoE implementation the engine runs (TRT-LLM `moe_config.backend`, SGLang
    # `--moe-runner-backend`): "auto" is the engine's own choice. The measured backend prices
    # expert layers only from tables of a kernel this can be (`measured_kernels.moe`).
    moe_backend: str = "auto"
    # The format MXFP4 experts (gpt-oss) quantise their activations to: "auto" (the engine's
    # own choice on the GPU, `measured_kernels.mxfp4_activation`), "mxfp8" or "bf16".
    mxfp4_activation: str = "auto"
    # Which models' tensor-parallel all-reduces also do the residual add and the RMSNorm that
    # follow them, in the same kernel (`fuses_allreduce_norm`, `fused_allreduce_max_tokens`):
    # "none"; "trtllm", TensorRT-LLM's eager fusion for the model families it enables it for;
    # "flashinfer", every model, up to 2,048 tokens (SGLang's
    # `--enable-flashinfer-allreduce-fusion`); "vllm", every model, for inputs up to
    # `allreduce_fusion_max_mib` at the TP degree (vLLM's `enable_fi_allreduce_fusion` pass).
    allreduce_norm_fusion: str = "none"
    # ((TP degree, MiB), ...): the largest all-reduce input vLLM's fusion pass fuses at each TP
    # degree (`VLLM_FLASHINFER_ALLREDUCE_FUSION_THRESHOLDS_MB`); () for vLLM's defaults.
    allreduce_fusion_max_mib: tuple[tuple[int, float], ...] = ()
    # How expert-parallel MoE layers exchange tokens: SGLang's `--moe-a2a-backend`
    # (server_args.py, default "none"), vLLM's `--all2all-backend` (vllm/config/parallel.py,
    # default "allgather_reducescatter"); "none" is the engine's default. SGLang "none": the
    # tokens do not move; without attention DP every device of the TP group holds them (each
    # computes its local experts, the partial outputs meet in the layer's all-reduce:
    # DeepseekV2MoE.forward_normal), with it the DP ranks gather and scatter them
    # (dp_attention.py); "deepep" (mooncake, mori, flashinfer, ...): dispatch and combine by
    # all-to-all. vLLM across DP ranks: its default and "naive" gather, deepep_*, pplx and
    # flashinfer_* all-to-all. TensorRT-LLM picks its own path (`Predictor._uses_alltoall`).
    moe_a2a: str = "none"
    # How the output head splits its vocabulary under attention DP (`Predictor._lm_head_terms`;
    # without attention DP it is split over the TP group in every engine). "" is the engine's
    # default. "attention_tp": over the attention-TP group only, so each DP rank holds a whole
    # copy for its own rows: TensorRT-LLM's default (`DecoderModelForCausalLM` builds an
    # unsharded `LMHead` when `enable_attention_dp` and not `enable_lm_head_tp_in_adp`), SGLang
    # with `--enable-dp-lm-head` (`ParallelLMHead(use_attn_tp_group=True)`), vLLM (a DP rank is
    # an engine of its own). "world": SGLang's default with `--enable-dp-attention`: the head
    # splits over the whole TP group, which gathers every DP rank's rows, and the logits are
    # all-gathered back (`LogitsProcessor`, `do_tensor_parallel_all_gather_dp_attn`).
    # "adp_tp": TensorRT-LLM's `enable_lm_head_tp_in_adp`: a group of
    # min(next power of two of 256 // rows, GPUs per node) ranks gathers its rows and splits
    # the head between them (`create_lm_head_tp_mapping`: "token_count=256 will hit the
    # boundary of math-bound problem"), then gathers the logits.
    lm_head_split: str = ""
    # A cap on the KV-cache tokens each attention-DP rank holds, below what memory allows (0: no
    # cap): SGLang's `--max-total-tokens` (ModelRunner: `max_total_num_tokens = min(profiled,
    # max_total_tokens)`), TensorRT-LLM's `kv_cache_config.max_tokens`. A disaggregated
    # prefill server keeps a request's KV until the decode side has pulled it, so a small cap
    # holds back its next prompts (srt-slurm's GB200 SGLang low-latency recipes: 8,192).
    max_kv_tokens: int = 0
    # The engine release served ("0.12.0", "1.2.0rc6"): the measured backend reads the kernel
    # tables that release's collection measured, the nearest one where it was not measured
    # (`kernel_tables.nearest_version`); "" reads the newest collection first.
    version: str = ""
    # The sampler sorts every sampled row's whole vocabulary each step to filter top-k/top-p,
    # and the requests sample with top-k or top-p (`predictor.sampler`): vLLM's PyTorch filter,
    # its default in the releases `spec.sampling.vllm_sorts_logits` names, for requests that
    # set a filter or leave sampling to a checkpoint whose generation config sets one
    # (`spec.sampling.filters_logits`). False: greedy requests, or a sampler that does not
    # sort (FlashInfer's, SGLang's, vLLM's Triton one).
    sampler_sorts_vocab: bool = False
    # Host seconds an extend (prefill) forward of a linear-attention model (Gated DeltaNet, KDA)
    # pays the first time the server sees its token count, compiling a kernel specialised on it
    # (`TOKEN_COUNT_COMPILE_S`); None: the engine release's (`token_count_compile`), 0: none.
    token_count_compile_s: float | None = None
    # Host seconds the serving process spends on each streamed response (one request's new
    # tokens of one step), serially, on one loop: the client sees a token once that loop has
    # handled it, so when the engine outruns the loop the responses queue and first tokens and
    # finishes reach the client late (`TRTLLM_RESPONSE_S`; 0: not modelled). `stream_interval`
    # N: a running request responds every N steps (the first token always does);
    # `postprocess_workers` N: the handling is shared by N worker processes.
    response_s: float = 0.0
    stream_interval: int = 1
    postprocess_workers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or (
            self.version.strip() and version_key(self.version) == (0,)
        ):
            raise ServesimError(
                f"Engine version {self.version!r} is not a release such as 0.12.0, 0.5.9 or "
                "1.2.0rc6; give the engine's own version, not its container's."
            )
        if not (isinstance(self.moe_a2a, str) and self.moe_a2a.strip()):
            raise ServesimError(
                f"moe_a2a {self.moe_a2a!r} must name the engine's all-to-all backend (none for "
                "its default, deepep, ...)."
            )
        if not (isinstance(self.max_kv_tokens, int) and self.max_kv_tokens >= 0):
            raise ServesimError(
                f"Engine setting max_kv_tokens must be a whole number ≥ 0 (0: no cap), not "
                f"{self.max_kv_tokens!r}."
            )
        if self.lm_head_split not in LM_HEAD_SPLITS:
            raise ServesimError(
                f"Engine setting lm_head_split {self.lm_head_split!r} is not one of "
                f"{', '.join(repr(x) for x in LM_HEAD_SPLITS)} ('' is the engine's default)."
            )
        if self.allreduce_norm_fusion not in ALLREDUCE_NORM_FUSION:
            raise ServesimError(
                f"allreduce_norm_fusion {self.allreduce_norm_fusion!r} is not one of "
                f"{', '.join(ALLREDUCE_NORM_FUSION)}."
            )
        for pair in self.allreduce_fusion_max_mib:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and isinstance(pair[0], int)
                and pair[0] >= 2
                and pair[1] >= 0
            ):
                raise ServesimError(
                    f"allreduce_fusion_max_mib {self.allreduce_fusion_max_mib!r} must be "
                    "(TP degree of 2 or more, MiB of 0 or more) pairs, e.g. ((2, 32), (8, 8))."
                )
        if self.disagg_first_token not in FIRST_TOKEN_SOURCES:
            raise ServesimError(
                f"disagg_first_token {self.disagg_first_token!r} is not one of "
                f"{', '.join(FIRST_TOKEN_SOURCES)}."
            )
        if not (isinstance(self.recv_interval_steps, int) and self.recv_interval_steps >= 1):
            raise ServesimError(
                f"Engine setting recv_interval_steps must be a whole number ≥ 1, not "
                f"{self.recv_interval_steps!r}."
            )
        if not (
            isinstance(self.adp_balance_timeout_iters, int) and self.adp_balance_timeout_iters >= 0
        ):
            raise ServesimError(
                f"Engine setting adp_balance_timeout_iters must be a whole number ≥ 0 (0: no "
                f"attention-DP balancing), not {self.adp_balance_timeout_iters!r}."
            )
        if not (
            isinstance(self.batch_wait_timeout_iters, int) and self.batch_wait_timeout_iters >= 0
        ):
            raise ServesimError(
                f"Engine setting batch_wait_timeout_iters must be a whole number ≥ 0, not "
                f"{self.batch_wait_timeout_iters!r}."
            )
        if not 0.0 <= self.batch_wait_max_tokens_ratio <= 1.0:
            raise ServesimError(
                f"Engine setting batch_wait_max_tokens_ratio must be in [0, 1], not "
                f"{self.batch_wait_max_tokens_ratio!r}."
            )
        for key, rules in (
            ("cuda_graph_rule", SERVER_RULES),
            ("mem_fraction_rule", SERVER_RULES),
            ("token_budget_rule", ENGINE_RULES),
            ("max_seqs_rule", ENGINE_RULES),
            ("overlap_rule", ENGINE_RULES),
            ("spec_state_rule", ENGINE_RULES),
            ("capture_size_rule", ("", "vllm")),
        ):
            if getattr(self, key) not in rules:
                raise ServesimError(
                    f"Engine setting {key} {getattr(self, key)!r} is not one of "
                    f"{', '.join(map(repr, rules))} ('' keeps the value as given)."
                )
        tc = self.token_count_compile_s
        if tc is not None and not (isinstance(tc, int | float) and math.isfinite(tc) and tc >= 0):
            raise ServesimError(
                f"Engine setting token_count_compile_s must be ≥ 0 s (0: no compile), not {tc!r}."
            )
        for key, low in (("stream_interval", 1), ("postprocess_workers", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ServesimError(
                    f"Engine setting {key} must be a whole number ≥ {low}, not {value!r}."
                )
        for key in ("request_overhead_s", "tokenize_s_per_token", "disagg_handoff_s", "response_s"):
            value = getattr(self, key)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ServesimError(f"Engine setting {key} must be ≥ 0 s, not {value!r}.")

    def token_count_compile(self) -> float:
        """Seconds a linear-attention model's prefill forward pays the first time its token
        count comes up: `token_count_compile_s` if set, else SGLang's before 0.5.16
        (`TOKEN_COUNT_COMPILE_S`), else none (vLLM and later SGLang releases do not specialise
        the kernel on the count; an unnamed release reads as the newest)."""
        if self.token_count_compile_s is not None:
            return float(self.token_count_compile_s)
        v = self.version.strip()
        if self.name == "sglang" and v and version_key(v) < version_key(SGLANG_L2NORM_FIXED):
            return TOKEN_COUNT_COMPILE_S
        return 0.0

    def spec_state_copy_passes(self) -> int:
        """How many times a speculative verify step streams each sequence's accepted recurrent
        state (reads plus writes) to make it the sequence's state, per linear layer: SGLang's
        4 before 0.5.10 and 2 from it (`SGLANG_FUSED_STATE_SCATTER`; an unnamed release reads
        as the newest), none for vLLM (per-position slots) and the other engines."""
        if self.spec_state_rule != "sglang":
            return 0
        v = self.version.strip()
        return 4 if v and version_key(v) < version_key(SGLANG_FUSED_STATE_SCATTER) else 2

    def response_cost_s(self) -> float:
        """Host seconds of the serving loop per streamed response, its share of a worker's
        when `postprocess_workers` share the handling."""
        return self.response_s / max(1, self.postprocess_workers)

    def frontend_s(self, prompt_tokens: int) -> float:
        """Seconds a request spends in the serving frontend (both ways) before and after the
        engine: the fixed part plus tokenising its prompt."""
        return self.request_overhead_s + self.tokenize_s_per_token * prompt_tokens

    def handoff_s(self, prompt_tokens: int) -> float:
        """Disaggregated serving: seconds from the prefill's end until the decode worker holds
        the request (router hop, decode frontend, tokenising the prompt again if it does)."""
        t = self.disagg_handoff_s
        if self.disagg_handoff_tokenizes:
            t += self.tokenize_s_per_token * prompt_tokens
        return t

    def on_host(self, factor: float) -> EngineProfile:
        """This profile on a host whose CPU takes `factor` times as long for the same host
        work (`Device.host_time_factor`): every host-side figure (scheduling, launches outside
        CUDA graphs, the frontend and the disaggregated hand-off) scaled by it."""
        if factor == 1.0:
            return self
        values = {name: getattr(self, name) for name in HOST_TIME_FIELDS}
        values["token_count_compile_s"] = self.token_count_compile()  # the release's, scaled
        return replace(self, **{k: v * factor for k, v in values.items() if v is not None})

    def with_overrides(self, **kwargs: object) -> EngineProfile:
        """A copy with some fields replaced; unknown names are refused."""
        unknown = [k for k in kwargs if k not in self.__dataclass_fields__]
        if unknown:
            raise ServesimError(f"Unknown engine setting(s) {', '.join(unknown)}.")
        given = {k: v for k, v in kwargs.items() if v is not None}
        for setting, rule in RULE_OF_SETTING.items():
            if setting in given and rule not in given:
                given[rule] = ""  # an explicit setting replaces the engine's rule for it
        return replace(self, **given)


# Defaults: vLLM V1 on GPUs with ≥70 GB (OpenAI server: max_num_batched_tokens 8192,
# max_num_seqs 1024, chunked prefill on, block 16, CUDA graphs up to 512 sequences);
# SGLang (chunked_prefill_size 8192 below 160 GiB and 16384 above, by its rule; prefill and
# decode in separate batches unless --enable-mixed-chunk, token-granular pages, cuda graphs up
# to bs 160-256);
# TensorRT-LLM (in-flight batching mixes context and generation, max_num_tokens 8192,
# kv pages of 32 tokens, C++ runtime with a lower per-step cost).
#
# Disaggregated paths (what the client sees as its first token):
# - vLLM, NixlConnector behind its proxy (examples/online_serving/disaggregated_serving/,
#   tests/v1/kv_connector/nixl_integration/toy_proxy_server.py): the proxy sends the request to
#   the prefill server with max_tokens=1 and waits for its (non-streaming) response, then sends
#   the same request (text again, so tokenised again) with the returned kv_transfer_params to the
#   decode server and streams that one. The decode scheduler parks the request in
#   WAITING_FOR_REMOTE_KVS; the worker starts the NIXL read in the next step; when the read is
#   done the scheduler recomputes the last prompt token (the connector loads all but it) and
#   samples the first token in that iteration (vllm/v1/core/sched/scheduler.py,
#   vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py).
# - SGLang PD (python/sglang/srt/disaggregation/): the router sends the request to a prefill and
#   a decode server at once with a bootstrap room; the decode pre-allocates KV (PreallocQueue)
#   and hands its indices to the prefill during the prefill; the prefill pushes KV and the first
#   token's id (metadata buffer) with Mooncake/NIXL when its forward ends; the decode scheduler
#   polls the TransferQueue each loop, builds a "prebuilt" batch without a forward and streams
#   that first token, then decodes (decode.py, event_loop_*_disagg_decode).
# - TensorRT-LLM (trtllm-serve disaggregated, tensorrt_llm/serve/openai_disagg_service.py,
#   context-first): the context server returns a non-streaming response with the first token and
#   ctx params; the disaggregated server then sends a generation_only request; the generation
#   executor requests the KV at its next loop pass (_prepare_disagg_gen_init), checks the
#   transfer each pass, and returns the first token to the client in the pass that schedules the
#   request, before its forward (_handle_first_token_response in
#   tensorrt_llm/_torch/pyexecutor/py_executor.py). Dynamo's TRT-LLM prefill-first path is the
#   same sequence through its own frontend.
ENGINES: dict[str, EngineProfile] = {
    # vLLM V1 compiles the model (torch.compile) and replays piecewise CUDA graphs for
    # batches up to its largest capture size (512 tokens by default); larger ones run the
    # compiled code, whose host time no measurement found here prices: none is charged.
    "vllm": EngineProfile(
        name="vllm",
        # Async scheduling, vLLM's default from 0.14.0 (`SchedulerConfig.async_scheduling`
        # None, turned on in `VllmConfig.__post_init__`); `overlap_rule` has its exceptions.
        overlap_scheduling=True,
        overlap_rule="vllm",
        spec_state_rule="vllm",
        token_budget_rule="vllm",
        max_seqs_rule="vllm",
        prefill_graph_max_tokens=512,
        capture_size_rule="vllm",
        eager_host_s_per_layer=VLLM_UNGRAPHED_HOST_S_PER_LAYER,
    ),
    "sglang": EngineProfile(
        name="sglang",
        overlap_scheduling=True,
        mixed_batches=False,
        disagg_first_token="prebuilt",
        disagg_handoff_s=0.0,  # the router sent the request to both servers at the start
        disagg_handoff_tokenizes=False,
        disagg_pull_at_pass=False,  # the prefill pushes into pre-allocated blocks
        disagg_prefill_waits_for_decode=True,  # ... which the decode allocated first
        results_after_next_launch=True,
        disagg_decode_reserve_tokens=512,
        disagg_decode_retracts_to_host=True,
        new_token_ratio=(0.7, 0.7 * 0.14, 600, 4096),
        # Prefill runs eager (piecewise CUDA graphs were opt-in, `--enable-piecewise-cuda-graph`,
        # until PR #16331 made them the default in March 2026; InferenceX's DeepSeek launch
        # still passes --disable-piecewise-cuda-graph).
        eager_host_s_per_layer=EAGER_HOST_S_PER_LAYER,
        eager_host_s_per_moe_layer=EAGER_HOST_S_PER_MOE_LAYER,
        eager_host_s_per_linear_mixer=EAGER_HOST_S_PER_LINEAR_MIXER,
        block_size=1,
        cuda_graph_max_seqs=256,
        max_num_seqs=4096,
        mem_util=0.88,  # the pre-v0.5 default at TP 1; the rule below sets it per deployment
        reserve_in_fraction=True,
        mem_fraction_rule="sglang",
        cuda_graph_rule="sglang",
        token_budget_rule="sglang",
        max_seqs_rule="sglang",
        overlap_rule="sglang",
        spec_state_rule="sglang",
    ),
    "trtllm": EngineProfile(
        name="trtllm",
        overlap_scheduling=True,
        allreduce_norm_fusion="trtllm",
        results_after_next_launch=True,
        response_s=TRTLLM_RESPONSE_S,
        disagg_first_token="decode_admit",
        disagg_handoff_tokenizes=False,  # the generation request carries prompt_token_ids
        step_overhead_s=0.5e-3,
        per_seq_overhead_s=2.0e-6,
        # PyTorch backend: context phases run eager unless `torch_compile_config` enables
        # piecewise CUDA graphs (off by default: tensorrt_llm/llmapi/llm_args.py).
        eager_host_s_per_layer=EAGER_HOST_S_PER_LAYER,
        eager_host_s_per_moe_layer=TRTLLM_EAGER_HOST_S_PER_MOE_LAYER,
        eager_host_s_per_linear_mixer=EAGER_HOST_S_PER_LINEAR_MIXER,
        block_size=32,
        max_num_seqs=2048,
        # Context phases run whole unless `enable_chunked_prefill` (LlmArgs default False,
        # tensorrt_llm/llmapi/llm_args.py): a prompt must fit max_num_tokens in one iteration.
        chunked_prefill=False,
        mem_util=0.9,
        mem_util_of_free=True,
        reserve_to_completion=True,
    ),
}


def fuses_allreduce_norm(
    engine: EngineProfile,
    model_type: str,
    hidden_size: int,
    tp: int,
    attention_dp: int,
    *,
    nvlink: bool,
) -> bool:
    """Whether each tensor-parallel all-reduce of a layer also adds the residual and applies the
    next RMSNorm (and the next GEMM's fp8/nvfp4 input quantisation) in one kernel, so those
    elementwise passes cost nothing of their own.

    TensorRT-LLM's PyTorch models (tensorrt_llm/_torch/models/): `LlamaDecoderLayer` fuses both
    all-reduces of a layer (`AllReduceFusionOp.RESIDUAL_RMS_NORM[_QUANT_FP8/NVFP4]`) unless
    `TRTLLM_LLAMA_EAGER_FUSION_DISABLED=1`, for hidden sizes above 4,096 ("disable fusion for
    small models due to accuracy issues") and not under attention DP (PRE_MLP_FUSION);
    `DeepseekV3DecoderLayer` (DeepSeek-V3/R1, Kimi-K2) does so unless
    `TRTLLM_DEEPSEEK_EAGER_FUSION_DISABLED=1` and not under attention DP; Qwen3's is off by
    default (`TRTLLM_QWEN3_EAGER_FUSION_DISABLED` defaults to "1"). SGLang with
    `--enable-flashinfer-allreduce-fusion` fuses for the models it serves, not under attention
    DP (`apply_flashinfer_allreduce_fusion`, python/sglang/srt/layers/communicator.py). With
    attention DP there is no tensor-parallel all-reduce to fuse into; without an NVLink-class
    fabric (`nvlink` false) both fall back to NCCL and separate kernels (TensorRT-LLM's
    `ifFallbackToNCCL` when peers lack NVLink; FlashInfer's fused kernel needs NVLink P2P)."""
    if tp <= 1 or attention_dp > 1 or not nvlink or engine.allreduce_norm_fusion == "none":
        return False
    if engine.allreduce_norm_fusion in ("flashinfer", "vllm"):
        return True
    if model_type == "llama":
        return hidden_size > 4096
    return model_type in ("deepseek_v3", "kimi_k2")


def fused_allreduce_max_tokens(engine: EngineProfile, hidden_size: int, tp: int) -> float:
    """Most tokens whose all-reduce still runs fused (`fuses_allreduce_norm`); beyond them the
    residual add and RMSNorm run as kernels of their own.

    TensorRT-LLM: its AUTO strategy runs an all-reduce on its own fused kernels only within
    their workspace, `customAllReduceUtils::getMaxRequiredWorkspaceSize` (16 MB for two ranks,
    8 MB for more, in the 1.0-1.2 releases the measured rows ran; later releases raised it to
    64 MiB), and hands larger ones to NCCL followed by separate kernels
    (`fallbackRunSubsequentOps`, cpp/tensorrt_llm/thop/allreduceOp.cpp); a token is hidden_size
    bf16 values. SGLang: `FUSE_ALLREDUCE_MAX_BATCH_SIZE` = 2,048 tokens. vLLM: the pass's
    largest input at this TP degree (`allreduce_fusion_max_mib`, MiB of bf16 activations;
    vllm/compilation/passes/fusion/allreduce_rms_fusion.py `max_token_num = max_size //
    (hidden_dim * element_size)`), none at a degree it does not list."""
    if engine.allreduce_norm_fusion == "flashinfer":
        return 2048.0
    if engine.allreduce_norm_fusion == "vllm":
        mib = dict(engine.allreduce_fusion_max_mib or VLLM_FUSION_MAX_MIB).get(tp, 0.0)
        return float(int(mib * 2**20) // (2 * hidden_size))
    workspace_bytes = 16e6 if tp <= 2 else 8e6
    return workspace_bytes / (2.0 * hidden_size)


def get_engine(name: str) -> EngineProfile:
    """A built-in engine profile by name (`vllm`, `sglang`, `trtllm`)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = {"tensorrtllm": "trtllm"}.get(key, key)
    if key not in ENGINES:
        raise ServesimError(f"Unknown engine {name!r}; use one of: {', '.join(ENGINES)}.")
    return ENGINES[key]
