"""Per-device memory layout of one replica: weights, activation reserve, and what is left for KV.

The KV-cache capacity that the simulator's paged cache gets comes from here, the way vLLM sizes
it: `gpu_memory_utilization × device memory − weights − activation/graph reserve`. Hybrid models
(linear attention or SSM layers) first set aside their constant per-sequence recurrent state for
`max_num_seqs` sequences; the KV cache then holds only the full-attention layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from servesim.errors import ServesimError
from servesim.spec.devices import Device
from servesim.spec.dtypes import storage_nbytes
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel
from servesim.spec.release import version_key

# CUDA context, NCCL buffers, CUDA-graph pools and allocator fragmentation outside the profiled
# activation peak. vLLM reports 1-3 GiB of "non-torch" and graph memory on H100-class GPUs.
FIXED_RESERVE_BYTES = 2.0e9


@dataclass(frozen=True)
class MemoryLayout:
    """Bytes per device of one replica, and the KV capacity that results."""

    device_bytes: float
    usable_bytes: float  # device_bytes × memory-utilisation fraction
    weight_bytes: float
    reserve_bytes: float
    kv_bytes: float
    kv_bytes_per_token: float  # per device, as the paged cache stores it
    kv_tokens: int  # tokens of context the whole replica's cache holds (all layers, DP ranks)
    window_bytes_per_seq: float  # sliding-window layers' fixed share per running sequence
    state_bytes_per_seq: float = 0.0  # linear/SSM layers' recurrent state per running sequence

    def as_dict(self) -> dict[str, float]:
        """Plain numbers for reports (GB where the key says so)."""
        return {
            "device_gb": self.device_bytes / 1e9,
            "usable_gb": self.usable_bytes / 1e9,
            "weights_gb": self.weight_bytes / 1e9,
            "reserve_gb": self.reserve_bytes / 1e9,
            "kv_gb": self.kv_bytes / 1e9,
            "kv_tokens": float(self.kv_tokens),
            "state_mb_per_seq": self.state_bytes_per_seq / 1e6,
        }


def dense_ffn_bytes(model: ModelSpec) -> tuple[float, float]:
    """Bytes of the dense FFN layers (split over `Parallel.dense_tp`) and of the shared experts
    (over `Parallel.shared_tp`)."""
    c = model.param_counts()
    w = model.storage_bytes(model.weight_dtype)
    return c["dense_mlp"] * w, c["shared_experts"] * w


def weight_bytes_per_device(model: ModelSpec, par: Parallel) -> float:
    """Weights one device holds: layers split by PP; attention, embeddings and norms by TP
    (replicated on every attention-DP rank) but for what every TP rank holds whole (MLA's
    down-projections: `ModelSpec.replicated_attention_params`); routed experts over all
    moe_tp × ep = tp × dp devices of a stage; dense FFN layers over `dense_tp` devices, shared
    experts over `shared_tp`. TP past the KV heads gives each rank one KV head's K and V
    projections (vLLM's and SGLang's `QKVParallelLinear` replicate them), not a 1/tp share."""
    expert_bytes = model.expert_bytes()
    dense, shared = dense_ffn_bytes(model)
    whole = model.replicated_attention_bytes()
    other = model.param_bytes() - expert_bytes - dense - shared - whole
    if par.pp > 1:
        # The first stage holds the input embedding and the last the output head (a tied one
        # too: the last stage keeps its own copy); each splits it over TP, none over PP.
        table_b = (
            model.vocab_size
            * (model.embed_dim or model.hidden_size)
            * storage_nbytes(model.lm_head_dtype)
        )
        tables = 1 if model.tie_embeddings else 2
        other += table_b * (par.pp - tables)  # so that other / pp leaves one table a device
    kv_proj = model.kv_projection_bytes()
    replicated_kv = kv_proj / min(par.tp, model.num_kv_heads) - kv_proj / par.tp
    return (
        whole / par.pp
        + replicated_kv / par.pp
        + other / (par.tp * par.pp)
        + dense / (par.dense_tp * par.pp)
        + shared / (par.shared_tp * par.pp)
        + expert_bytes / (par.pp * par.moe_tp * par.ep)
    )


def kv_bytes_per_token_per_device(model: ModelSpec, par: Parallel) -> float:
    """KV bytes one token costs on one device: heads split by TP (replicated past the KV heads)."""
    per_token = model.kv_bytes_per_token() / par.pp
    if model.is_mla:
        return per_token  # the latent cache is replicated on every TP rank
    kv_shards = min(par.tp, model.num_kv_heads)
    return per_token / kv_shards


def state_bytes_per_seq_per_device(model: ModelSpec, par: Parallel) -> float:
    """Recurrent state one running sequence holds on one device: linear-attention/SSM heads are
    split by TP, layers by PP."""
    if not model.num_linear_layers:
        return 0.0
    shards = min(par.tp, model.linear_num_v_heads)
    return model.state_bytes_per_seq() / par.pp / shards


def speculative_state_copies(engine: EngineProfile, draft_tokens: int, verify_tokens: int) -> int:
    """Recurrent-state copies a running sequence holds when it decodes speculatively
    (`EngineProfile.spec_state_rule`): SGLang keeps one more per verified token, vLLM one more
    per draft token, so the verify pass can restart from any accepted position; 1 without
    speculative decoding or a rule."""
    if draft_tokens <= 0:
        return 1
    extra = {"sglang": verify_tokens, "vllm": draft_tokens}.get(engine.spec_state_rule, 0)
    return 1 + extra


def activation_reserve_bytes(model: ModelSpec, par: Parallel, max_batched_tokens: int) -> float:
    """Peak activation memory of a forward pass over `max_batched_tokens` (the replica's
    budget: each attention-DP rank runs its own forward over its 1/dp share, so a device holds
    one rank's activations), plus fixed overheads."""
    max_batched_tokens = -(-max_batched_tokens // par.dp)
    h = model.hidden_size
    width = max(model.intermediate_size, model.moe_intermediate_size * model.experts_per_token)
    per_token = 2.0 * (4 * h + 3 * width / par.tp)  # bf16 hidden states, MLP intermediates
    logits = 4.0 * min(max_batched_tokens, 1024) * model.vocab_size / par.tp  # fp32 sampler
    return FIXED_RESERVE_BYTES + max_batched_tokens * per_token + logits


MIB = 2**20


# SGLang's first release that sizes the chunk, the decode graphs and the memory fraction by
# `_handle_gpu_memory_settings` (server_args.py, read in the PyPI wheels: 0.5.3 ... 0.5.9 as
# the functions below; 0.4.9.post6 ... 0.5.2 by the older rule of `sglang_legacy_defaults`).
SGLANG_MEMORY_RULE_FROM = "0.5.3"


def sglang_legacy_rule(version: str) -> bool:
    """Whether an SGLang release predates `SGLANG_MEMORY_RULE_FROM` (an unnamed release reads
    as the newest: no)."""
    v = version.strip()
    return bool(v) and version_key(v) < version_key(SGLANG_MEMORY_RULE_FROM)


def sglang_legacy_defaults(device: Device, par: Parallel) -> tuple[int, int]:
    """SGLang's (`--chunked-prefill-size`, largest decode CUDA-graph batch) before 0.5.3
    (server_args.py `__post_init__` and model_executor/cuda_graph_runner.py
    `get_batch_sizes_to_capture`, read in 0.4.9.post6, 0.4.10.post2, 0.5.0rc2, 0.5.1.post1 and
    0.5.2): the chunk 2,048 below 35 GiB, 8,192 below 160 GiB, 16,384 above; `cuda_graph_max_bs`
    8 (80 from TP 4) below 35 GiB, else unset, so the graphs are captured up to 160, up to 256
    above 90 GiB (H200) and up to 512 above 160,000 MiB (B200)."""
    gpu_mib = device.mem_bytes / MIB
    tp_size = par.tp * par.dp
    if gpu_mib < 35 * 1024:
        return 2048, 8 if tp_size < 4 else 80
    chunk = 8192 if gpu_mib < 160 * 1024 else 16384
    if gpu_mib > 160 * 1000:
        return chunk, 512
    return chunk, 256 if gpu_mib > 90 * 1024 else 160


def sglang_server_defaults(device: Device, par: Parallel, version: str = "") -> tuple[int, int]:
    """SGLang's (`--chunked-prefill-size`, `--cuda-graph-max-bs`) defaults by the device's
    memory (server_args.py `_handle_gpu_memory_settings`, 0.5.3 onwards): below 20 GiB 2,048
    and 8; below 35 GiB 2,048 and 24 (80 from TP 4); below 60 GiB 4,096 and 32 (160); below
    160 GiB 8,192 and 256 (512); above, 16,384 and 512. A release before 0.5.3 (`version`)
    has the older defaults (`sglang_legacy_defaults`)."""
    if sglang_legacy_rule(version):
        return sglang_legacy_defaults(device, par)
    gpu_mib = device.mem_bytes / MIB
    tp_size = par.tp * par.dp
    if gpu_mib < 20 * 1024:
        return 2048, 8
    if gpu_mib < 35 * 1024:
        return 2048, 24 if tp_size < 4 else 80
    if gpu_mib < 60 * 1024:
        return 4096, 32 if tp_size < 4 else 160
    if gpu_mib < 160 * 1024:
        return 8192, 256 if tp_size < 4 else 512
    return 16384, 512


def vllm_batch_defaults(device: Device) -> tuple[int, int]:
    """vLLM's (`--max-num-batched-tokens`, `--max-num-seqs`) defaults for an OpenAI server
    (vllm/engine/arg_utils.py `get_batch_defaults`): 8,192 and 1,024 on a GPU of 70 GiB or more
    that is not an A100 (PR #17885: a large budget lowers an A100's throughput), 2,048 and 256
    elsewhere."""
    if device.mem_bytes >= 70 * 1024 * MIB and "a100" not in device.name.lower():
        return 8192, 1024
    return 2048, 256


def sglang_mem_fraction(
    device: Device,
    par: Parallel,
    speculative: str = "",
    chunked_prefill_tokens: int | None = None,
    cuda_graph_max_bs: int | None = None,
    version: str = "",
) -> float:
    """SGLang's default `--mem-fraction-static` for a server (python/sglang/srt/server_args.py
    `_handle_gpu_memory_settings`, 0.5.3 onwards): the device's MiB less a reserve of 512 MiB of
    metadata, 1.5 MiB per token of the chunked-prefill size (at least 2,048), 2 MiB per CUDA-graph
    batch slot and 128 MiB per GPU of TP × PP; under attention DP 3 MiB more per graph slot and
    DP rank (4.5 above 300 slots); at least 10 GiB on a device of more than 60 GiB; then 2 GiB
    more for an EAGLE/MTP draft head and 6 GiB for a separate draft model (`speculative`:
    servesim's method name, "" for none). Rounded to three decimals as SGLang does. The chunk
    size and graph slots are the server's own defaults (`sglang_server_defaults`) unless
    given.

    A release before 0.5.3 (`version`; `sglang_legacy_rule`) reserved a fixed amount by the
    device's memory instead, whatever the chunk and graphs (server_args.py `__post_init__`,
    read in 0.4.9.post6 ... 0.5.2): (2.8 + P/10) GiB below 35 GiB, (9.5 + P/2) GiB below
    90 GiB, (12 + P/2) GiB below 160 GiB, 32 GiB above, P = TP × PP; 2 GiB more for a draft
    head (6 for 0.5.2's STANDALONE draft model) and 4 GiB under attention DP."""
    gpu_mib = device.mem_bytes / MIB
    if sglang_legacy_rule(version):
        size = par.tp * par.dp * par.pp
        if gpu_mib < 35 * 1024:
            reserved = (2.8 + size / 10) * 1024
        elif gpu_mib < 90 * 1024:
            reserved = (9.5 + size / 2) * 1024
        elif gpu_mib < 160 * 1024:
            reserved = (12 + size / 2) * 1024
        else:
            reserved = 32.0 * 1024
        if speculative:
            reserved += (6.0 if speculative == "draft" else 2.0) * 1024
        if par.dp > 1:
            reserved += 4.0 * 1024
        return round((gpu_mib - reserved) / gpu_mib, 3)
    chunk, graph_bs = sglang_server_defaults(device, par)
    chunk = chunk if chunked_prefill_tokens is None else chunked_prefill_tokens
    graph_bs = graph_bs if cuda_graph_max_bs is None else cuda_graph_max_bs
    tp_size = par.tp * par.dp  # SGLang's tp_size counts every GPU of an attention-DP server
    reserved = 512.0 + max(chunk, 2048) * 1.5 + graph_bs * 2.0 + tp_size * par.pp / 8 * 1024
    if par.dp > 1:
        reserved += graph_bs * par.dp * 3.0
        if graph_bs > 300:
            reserved += graph_bs * par.dp * 1.5
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10.0 * 1024)
    if speculative == "draft":  # SGLang's STANDALONE: a draft model and its graphs
        reserved += 6.0 * 1024
    elif speculative:  # EAGLE/MTP heads and their graphs
        reserved += 2.0 * 1024
    return round((gpu_mib - reserved) / gpu_mib, 3)


class EngineMemory(TypedDict):
    """`memory_layout`'s engine arguments."""

    mem_util: float
    mem_util_of_free: bool
    reserve_in_fraction: bool


def engine_memory(
    engine: EngineProfile,
    device: Device,
    par: Parallel,
    speculative: str = "",
) -> EngineMemory:
    """`memory_layout`'s engine arguments (mem_util, mem_util_of_free, reserve_in_fraction): the
    engine's own fraction, or the one its rule gives this deployment (`mem_fraction_rule`)."""
    util = engine.mem_util
    # The server's defaults, as a bare launch has them. Not under attention DP: the rule's graph
    # padding (3 MiB per graph slot per DP rank, 512 slots) outgrows the device at the DP
    # degrees wide-EP runs use, so those launches set --mem-fraction-static themselves (0.85 and
    # 0.846 in SGLang's large-scale PD/EP instructions, sgl-project/sglang#6017): mem_util stands.
    if engine.mem_fraction_rule == "sglang" and par.dp == 1:
        # The graph slots the server captures: its default, or the size a launch set.
        graph_bs = engine.cuda_graph_max_seqs if not engine.cuda_graph_rule else None
        util = sglang_mem_fraction(
            device, par, speculative, cuda_graph_max_bs=graph_bs, version=engine.version
        )
    return EngineMemory(
        mem_util=util,
        mem_util_of_free=engine.mem_util_of_free,
        reserve_in_fraction=engine.reserve_in_fraction,
    )


def memory_layout(
    model: ModelSpec,
    device: Device,
    par: Parallel,
    max_batched_tokens: int = 8192,
    mem_util: float = 0.9,
    max_num_seqs: int = 256,
    mem_util_of_free: bool = False,
    reserve_in_fraction: bool = False,
    state_copies: int = 1,
) -> MemoryLayout:
    """Lay out one replica's memory; refuse a configuration whose weights (and the recurrent
    state of `max_num_seqs` sequences, `state_copies` of it each: `speculative_state_copies`)
    leave no KV space, or formats the device cannot run.

    `mem_util` is the engine's share of the whole device (vLLM, SGLang) or, with
    `mem_util_of_free`, of the memory left after weights and activations (TRT-LLM). With
    `reserve_in_fraction` the share already leaves the activations out (SGLang's rule), so only
    the fixed overheads outside the engine's pools come off it."""
    if not 0.0 < mem_util <= 1.0:
        raise ServesimError(f"Memory utilisation must be in (0, 1], got {mem_util}.")
    model.check_device(device)
    max_num_seqs = -(-max_num_seqs // par.dp)  # each attention-DP rank runs its own share
    weights = weight_bytes_per_device(model, par)
    reserve = (
        FIXED_RESERVE_BYTES
        if reserve_in_fraction
        else activation_reserve_bytes(model, par, max_batched_tokens)
    )
    if mem_util_of_free:
        usable = weights + reserve + max(device.mem_bytes - weights - reserve, 0.0) * mem_util
    else:
        usable = device.mem_bytes * mem_util
    kv_per_token = kv_bytes_per_token_per_device(model, par)
    window_per_seq = model.kv_bytes_per_seq_window() / par.pp
    if not model.is_mla:
        window_per_seq /= min(par.tp, model.num_kv_heads)
    state_per_seq = state_bytes_per_seq_per_device(model, par) * state_copies
    kv = usable - weights - reserve - max_num_seqs * (window_per_seq + state_per_seq)
    if kv <= 0:
        need = (weights + reserve) / 1e9
        per_seq = []  # what each running sequence holds besides its cache pages
        if state_per_seq:
            per_seq.append(
                f" plus {max_num_seqs * state_per_seq / 1e9:.1f} GB of recurrent state for "
                f"{max_num_seqs} sequences"
                + (
                    f" ({state_copies} copies each for speculative decoding)"
                    if state_copies > 1
                    else ""
                )
            )
        if window_per_seq:  # a full window of the windowed layers' KV per running sequence
            per_seq.append(
                f" plus {max_num_seqs * window_per_seq / 1e9:.1f} GB of KV for the "
                f"{model.sliding_window:,}-token window of {max_num_seqs} sequences"
            )
        raise ServesimError(
            f"{model.name} ({model.weight_dtype} weights) needs {need:.1f} GB per device for "
            f"weights and activations{''.join(per_seq)} but {device.name} "
            + (
                f"has {device.mem_bytes / 1e9:.1f} GB"
                if mem_util_of_free
                else f"at {mem_util:.0%} utilisation offers {usable / 1e9:.1f} GB"
            )
            + f" with {par.label()}; raise TP/PP, quantise "
            "the weights, lower max_num_seqs, or pick a larger device."
        )
    tokens = int(kv // kv_per_token) * par.dp  # each attention-DP rank holds its own cache
    return MemoryLayout(
        device_bytes=device.mem_bytes,
        usable_bytes=usable,
        weight_bytes=weights,
        reserve_bytes=reserve,
        kv_bytes=kv,
        kv_bytes_per_token=kv_per_token,
        kv_tokens=tokens,
        window_bytes_per_seq=window_per_seq,
        state_bytes_per_seq=state_per_seq,
    )
