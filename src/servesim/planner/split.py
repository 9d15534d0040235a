"""One model split across heterogeneous devices joined by a link.

Pipeline splits (ParetoPipe; ED-ViT): the devices, in the
order given, each run a contiguous run of layers (possibly none); a token crosses every stage and
every link between stages that run layers. Per split:
- latency: one token's decode through the whole pipeline, stage by stage plus each hop;
- throughput: with enough sequences in flight to fill the pipeline, the slowest stage or hop
  sets the rate, so tokens/s = 1 / max(stage, hop);
- memory: each device's weights plus its layers' KV cache (embeddings on the first stage, the
  head on the last), checked against the device.
`pareto_front` keeps the splits no other split beats on both; its two ends are the
latency-optimal and the throughput-optimal split.

Tensor parallelism on low-resource devices (TPI-LLM, arXiv:2410.00531): every device holds
1/n of every layer and the devices all-reduce twice per layer (star all-reduce through a
master, so 2·(n−1)/n of the activations cross the link, plus two latencies). With a sliding
window, a device keeps only `window` layers of its shard in memory and reads the next ones
from storage while it computes, so a layer costs max(compute + all-reduce, read) once the
window is smaller than the model; memory per device is the window, not the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import combinations, permutations
from math import comb, factorial

from servesim.errors import ServesimError
from servesim.predictor.device_step import (
    ACT_BYTES,
    Efficiency,
    decode,
    embedding_bytes,
    head_work,
    kv_bytes,
    layer_weight_bytes,
    layers_work,
    time_work,
)
from servesim.spec.devices import Device
from servesim.spec.links import Link
from servesim.spec.model import ModelSpec
from servesim.spec.quant import Quant

MEM_HEADROOM = 0.9  # share of a device's memory a runtime may fill (OS, runtime buffers)
MAX_SPLITS = 200_000  # refuse searches larger than this many splits


@dataclass(frozen=True)
class Split:
    """Layers per device (in device order), and what that split costs."""

    layers: tuple[int, ...]
    latency_s: float
    tokens_per_s: float
    stage_s: tuple[float, ...]
    mem_bytes: tuple[float, ...]
    fits: bool
    devices: tuple[str, ...] = ()  # device names in pipeline order

    def as_dict(self) -> dict:
        """Plain fields for JSON: memory in GB per stage, in the order of `devices` and
        `layers` (a mapping by device name lost one of two devices of the same kind)."""
        d = asdict(self)
        d["mem_gb"] = [m / 1e9 for m in self.mem_bytes]
        del d["mem_bytes"]
        return d


def _stage(
    model: ModelSpec,
    quant: Quant,
    device: Device,
    first: int,
    count: int,
    is_last: bool,
    context: int,
    eff: Efficiency | None,
) -> tuple[float, float]:
    """Seconds per decode token and bytes of one stage of `count` layers from `first`."""
    if count == 0:
        return 0.0, 0.0
    step = decode(1, context)
    work = layers_work(model, quant, range(first, first + count), step)
    if is_last:
        work = work + head_work(model, quant, step)
    mem = sum(layer_weight_bytes(model, quant, i) for i in range(first, first + count))
    mem += kv_bytes(model, quant, context) * count / model.num_layers
    if first == 0 or is_last:
        mem += embedding_bytes(model, quant) / (1 if first == 0 and is_last else 2)
    return time_work(work, device, quant, eff).seconds, mem


def evaluate_split(
    model: ModelSpec,
    quant: Quant,
    devices: list[Device],
    link: Link,
    layers: tuple[int, ...],
    context: int = 1024,
    effs: list[Efficiency | None] | None = None,
) -> Split:
    """Price one split: `layers[i]` consecutive layers on `devices[i]`."""
    if len(layers) != len(devices) or sum(layers) != model.num_layers or min(layers) < 0:
        raise ServesimError(
            f"A split gives each of the {len(devices)} devices a layer count summing to "
            f"{model.num_layers}; got {list(layers)}."
        )
    effs = effs or [None] * len(devices)
    used = [i for i, n in enumerate(layers) if n]
    last = used[-1]
    stage_s: list[float] = []
    mem: list[float] = []
    first = 0
    for i, (dev, n) in enumerate(zip(devices, layers, strict=True)):
        s, m = _stage(model, quant, dev, first, n, i == last, context, effs[i])
        stage_s.append(s)
        mem.append(m)
        first += n
    hop = link.transfer_s(model.hidden_size * ACT_BYTES)
    hops = len(used) - 1
    latency = sum(stage_s) + hops * hop
    slowest = max(max(stage_s), hop if hops else 0.0)
    fits = all(m <= d.mem_bytes * MEM_HEADROOM for m, d in zip(mem, devices, strict=True))
    names = tuple(d.name for d in devices)
    return Split(tuple(layers), latency, 1.0 / slowest, tuple(stage_s), tuple(mem), fits, names)


def all_splits(num_layers: int, num_devices: int) -> list[tuple[int, ...]]:
    """Every way to cut `num_layers` layers into `num_devices` contiguous runs (some empty)."""
    out = []
    for cuts in combinations(range(num_layers + num_devices - 1), num_devices - 1):
        prev, parts = -1, []
        for c in (*cuts, num_layers + num_devices - 1):
            parts.append(c - prev - 1)
            prev = c
        out.append(tuple(parts))
    return out


def search_splits(
    model: ModelSpec,
    quant: Quant,
    devices: list[Device],
    link: Link,
    context: int = 1024,
    effs: list[Efficiency | None] | None = None,
    any_order: bool = False,
) -> list[Split]:
    """Every split that fits each device's memory (stars and bars over the layers), with the
    devices in the order given or, with `any_order`, in every order (a split that leaves some
    devices empty is kept once)."""
    if not devices:
        raise ServesimError("Give at least one device to split the model across.")
    n = comb(model.num_layers + len(devices) - 1, len(devices) - 1)
    if any_order:
        n *= factorial(len(devices))
    if n > MAX_SPLITS:
        raise ServesimError(
            f"{n:,} splits of {model.num_layers} layers over {len(devices)} devices is too many "
            "to search; give fewer devices."
        )
    out = []
    seen: set[tuple] = set()
    effs = effs or [None] * len(devices)
    orders = permutations(range(len(devices))) if any_order else [tuple(range(len(devices)))]
    for order in orders:
        devs = [devices[i] for i in order]
        es = [effs[i] for i in order]
        for layers in all_splits(model.num_layers, len(devices)):
            key = tuple((i, n) for i, n in zip(order, layers, strict=True) if n)
            if key in seen:
                continue
            seen.add(key)
            s = evaluate_split(model, quant, devs, link, layers, context, es)
            if s.fits:
                out.append(s)
    if not out:
        raise ServesimError(
            f"No split of {model.name} in {quant.name} fits these devices' memory; add a device, "
            "use a smaller quantisation or a shorter context."
        )
    return out


def pareto_front(splits: list[Split]) -> list[Split]:
    """Splits no other split beats on both latency (lower) and throughput (higher), sorted by
    latency: the first is latency-optimal, the last throughput-optimal."""
    ordered = sorted(splits, key=lambda s: (s.latency_s, -s.tokens_per_s))
    front: list[Split] = []
    best_tput = -1.0
    for s in ordered:
        if s.tokens_per_s > best_tput:
            front.append(s)
            best_tput = s.tokens_per_s
    return front


# ---- TPI-LLM: tensor parallel with a sliding window of weights ---------------------------------
@dataclass(frozen=True)
class TensorParallelPlan:
    """Per-token latency and per-device memory of a TPI-LLM deployment."""

    devices: int
    window: int
    latency_s: float
    compute_s: float
    allreduce_s: float
    load_s: float
    mem_bytes_per_device: float
    model_bytes: float


def tensor_parallel(
    model: ModelSpec,
    quant: Quant,
    device: Device,
    num_devices: int,
    link: Link,
    storage: Link,
    window: int = 0,
    context: int = 1024,
    eff: Efficiency | None = None,
) -> TensorParallelPlan:
    """Price TPI-LLM on `num_devices` identical devices: each runs 1/n of every layer.

    `window` layers of each device's shard stay in memory (0: all). Beyond the window, each
    layer's shard is read from `storage` while earlier layers compute (TPI-LLM's memory
    scheduler), so layer i costs max(compute_i + allreduce, read_i) for the streamed layers.
    """
    n, L = num_devices, model.num_layers
    if n < 1:
        raise ServesimError("Tensor parallelism needs at least one device.")
    if not 0 <= window <= L:
        raise ServesimError(f"window must be between 0 (all layers) and {L}, got {window}.")
    w = window or L
    step = decode(1, context)
    act = model.hidden_size * ACT_BYTES
    # star all-reduce: each worker sends its partial sums to the master and gets the sum back
    ar = 0.0 if n == 1 else 2 * link.latency_s + 2 * act * (n - 1) / n / link.bw_bytes_per_s
    compute = allreduce = load = total = 0.0
    for i in range(L):
        work = layers_work(model, quant, range(i, i + 1), step)
        shard = type(work)(
            {k: v / n for k, v in work.flops.items()},
            work.weight_bytes / n,
            work.other_bytes / n,
            work.attn_flops / n,
            work.ops,
        )
        c = time_work(shard, device, quant, eff, step_overhead=False).seconds
        layer_s = c + 2 * ar  # after attention and after the MLP
        compute += c
        allreduce += 2 * ar
        if w < L:
            read = storage.transfer_s(layer_weight_bytes(model, quant, i) / n)
            load += read
            layer_s = max(layer_s, read)
        total += layer_s
    head = time_work(head_work(model, quant, step), device, quant, eff).seconds
    total += head
    compute += head
    per_layer = [layer_weight_bytes(model, quant, i) / n for i in range(L)]
    resident = sum(sorted(per_layer, reverse=True)[:w])
    kv = kv_bytes(model, quant, context) / n
    # the busiest device is the master, which also keeps the embeddings and the head
    mem = resident + kv + embedding_bytes(model, quant)
    full = sum(layer_weight_bytes(model, quant, i) for i in range(L)) + embedding_bytes(
        model, quant
    )
    return TensorParallelPlan(n, w, total, compute, allreduce, load, mem, full)
