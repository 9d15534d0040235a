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

from dataclasses import dataclass, replace

from servesim.errors import ServesimError


@dataclass(frozen=True)
class EngineProfile:
    """Per-engine constants the predictor and the scheduler read."""

    name: str = "vllm"
    step_overhead_s: float = 1.0e-3  # per iteration: scheduling, input prep, sampling
    per_seq_overhead_s: float = 5.0e-6  # per sequence in the batch (bookkeeping, detokenise)
    prefill_overhead_s: float = 0.0  # extra per iteration that carries prefill tokens
    request_overhead_s: float = 0.0  # frontend latency before the engine sees a request
    eager_launch_s_per_layer: float = 0.0  # launch gaps per layer when not graph-captured
    cuda_graph_max_seqs: int = 512  # decode batches up to this size replay a CUDA graph
    allreduce_impl: str = "auto"  # auto = custom all-reduce for small messages (vLLM/SGLang)
    mixed_batches: bool = True  # prefill chunks share iterations with decodes
    chunked_prefill: bool = True
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    block_size: int = 16  # KV-cache page, tokens
    mem_util: float = 0.9
    # The scheduler plans iteration n+1 while n runs (TRT-LLM's overlap scheduler, SGLang's
    # overlap schedule): an arrival is first seen by the pass at the next iteration's start.
    overlap_scheduling: bool = False
    prefix_caching: bool = True  # vLLM V1 APC, SGLang radix cache, TRT-LLM KV reuse: on by default

    def with_overrides(self, **kwargs: object) -> EngineProfile:
        """A copy with some fields replaced; unknown names are refused."""
        unknown = [k for k in kwargs if k not in self.__dataclass_fields__]
        if unknown:
            raise ServesimError(f"Unknown engine setting(s) {', '.join(unknown)}.")
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


# Defaults: vLLM V1 on GPUs with ≥70 GB (OpenAI server: max_num_batched_tokens 8192,
# max_num_seqs 1024, chunked prefill on, block 16, CUDA graphs up to 512 sequences);
# SGLang (chunked_prefill_size 8192 on 80 GB GPUs, prefill and decode in separate batches unless
# --enable-mixed-chunk, token-granular pages, cuda graphs up to bs 160-256);
# TensorRT-LLM (in-flight batching mixes context and generation, max_num_tokens 8192,
# kv pages of 32 tokens, C++ runtime with a lower per-step cost).
ENGINES: dict[str, EngineProfile] = {
    "vllm": EngineProfile(name="vllm"),
    "sglang": EngineProfile(
        name="sglang",
        overlap_scheduling=True,
        mixed_batches=False,
        block_size=1,
        cuda_graph_max_seqs=256,
        max_num_seqs=4096,
        mem_util=0.88,
    ),
    "trtllm": EngineProfile(
        name="trtllm",
        overlap_scheduling=True,
        step_overhead_s=0.5e-3,
        per_seq_overhead_s=2.0e-6,
        block_size=32,
        max_num_seqs=2048,
        mem_util=0.9,
    ),
}


def get_engine(name: str) -> EngineProfile:
    """A built-in engine profile by name (`vllm`, `sglang`, `trtllm`)."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    key = {"tensorrtllm": "trtllm"}.get(key, key)
    if key not in ENGINES:
        raise ServesimError(f"Unknown engine {name!r}; use one of: {', '.join(ENGINES)}.")
    return ENGINES[key]
