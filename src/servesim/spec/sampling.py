"""How requests are sampled when the client sets nothing: the checkpoint's generation config,
and which engine releases filter top-k/top-p by sorting the vocabulary.

vLLM's OpenAI server and Dynamo's vLLM worker take a request's default sampling parameters from
the checkpoint's `generation_config.json` (`ModelConfig.get_diff_sampling_param`; Dynamo:
"Load default sampling params from `generation_config.json`"). A benchmark client that sends
no temperature (aiperf) therefore samples with the checkpoint's top-k/top-p; one that sends
temperature 0 (InferenceX's `benchmark_serving.py`) decodes greedily, and vLLM then filters
nothing.
"""

from __future__ import annotations

from servesim.spec.release import version_key

# Top-k and top-p a checkpoint's generation_config.json sets (0 / 1.0: none), for the checkpoints
# whose file is sourced:
# - Qwen3 (hybrid thinking): "Temperature=0.6, TopP=0.95, TopK=20, and MinP=0 (the default
#   setting in generation_config.json)", the Qwen3 model cards' best practices;
# - Llama 3.1 8B Instruct: generation_config.json {"do_sample": true, "temperature": 0.6,
#   "top_p": 0.9}.
# A checkpoint not listed is taken to sample without a filter.
GENERATION_TOP_K_TOP_P: dict[str, tuple[int, float]] = {
    "qwen/qwen3-8b": (20, 0.95),
    "qwen/qwen3-32b": (20, 0.95),
    "qwen/qwen3-30b-a3b": (20, 0.95),
    "qwen/qwen3-235b-a22b": (20, 0.95),
    "meta-llama/llama-3.1-8b-instruct": (0, 0.9),
    "meta-llama/meta-llama-3.1-8b-instruct": (0, 0.9),
}

# vLLM filters top-k/top-p with a PyTorch sort of the whole vocabulary (`predictor.sampler`) from
# 0.11.1, the first release after PR #26859 turned the FlashInfer sampler off by default
# (2025-10-15), through 0.15: PR #32558 (2026-01-18) still calls the sort "the current"
# implementation, and the Triton sampler replacing it (PR #33538) was opened on 2026-02-02,
# when 0.15.0 was out (0.15.1 was by 2026-02-06; patch releases carry fixes, not kernels).
VLLM_SORT_RELEASES = ((0, 11, 1), (0, 16, 0))


def filters_logits(model_id: str) -> bool:
    """Whether a request that sets no sampling parameters samples `model_id` with a top-k or
    top-p filter (its generation config's defaults)."""
    top_k, top_p = GENERATION_TOP_K_TOP_P.get(model_id.strip().lower(), (0, 1.0))
    return top_k > 0 or top_p < 1.0


def vllm_sorts_logits(version: str) -> bool:
    """Whether a vLLM release filters top-k/top-p by sorting the vocabulary by default (an
    unknown or unparsable release, `version_key` (0,), sorts below the window: no)."""
    lo, hi = VLLM_SORT_RELEASES
    return lo <= version_key(version)[:3] < hi


def sorts_vocab(engine: str, version: str, filtered: bool) -> bool:
    """Whether an engine release's sampler sorts the vocabulary every step for requests that
    filter top-k/top-p (`filtered`): vLLM in the releases `vllm_sorts_logits` names."""
    return filtered and engine == "vllm" and vllm_sorts_logits(version)
