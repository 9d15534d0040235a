"""MoE experts on the CPU with a GPU expert cache: static placement (kTransformers) against
dynamic placement with caching (HybriMoE, arXiv:2504.05897), simulated step by step.

Each MoE layer of each decode step activates some experts. A cached expert runs on the GPU; an
uncached one either runs on the CPU from host memory or is copied over PCIe and run on the GPU.
CPU and GPU work in parallel, so a layer costs the later of the two finish times.
- static: the GPU holds the experts that were most popular in a profiling window, for good; every
  miss runs on the CPU (kTransformers' placement).
- dynamic (HybriMoE): per layer, misses go one by one, largest first, to whichever of the CPU
  queue or the copy-then-GPU queue finishes them earlier (its hybrid scheduling), and every copied
  expert enters the cache, evicting the lowest score; the score of an expert decays and grows with
  each activation (HybriMoE's score-based caching, "minus recent score"), so the cache follows
  shifting popularity.
Expert popularity is a Zipf law whose ranking is reshuffled every `shift_every` steps: topics
change, and the profiled ranking goes stale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.device_step import Efficiency, Work, time_work
from servesim.spec.devices import Device
from servesim.spec.links import Link
from servesim.spec.model import ModelSpec
from servesim.spec.quant import BLOCK_BYTES_PER_WEIGHT, Quant

POLICIES = ("static", "dynamic")
SCORE_DECAY = 0.8  # HybriMoE's score update: s <- decay * s + activations this step (estimate)
EXPERT_OPS = 4  # gate, up, down mul_mat and the activation


@dataclass(frozen=True)
class ExpertCosts:
    """Seconds to run one expert on `tokens` tokens on GPU and CPU (its weights and FLOPs),
    to copy it to the GPU, and the operators' fixed cost each side pays once a layer: the
    runtimes run a layer's experts on one side as one grouped operator per matrix
    (llama.cpp's `mul_mat_id`, kTransformers' fused MoE kernels), not one launch an expert."""

    gpu_s: float
    cpu_s: float
    copy_s: float
    gpu_launch_s: float = 0.0
    cpu_launch_s: float = 0.0


def expert_costs(
    model: ModelSpec,
    quant: Quant,
    gpu: Device,
    cpu: Device,
    link: Link,
    tokens: int = 1,
    threads: int = 0,
    gpu_eff: Efficiency | None = None,
    cpu_eff: Efficiency | None = None,
) -> ExpertCosts:
    """Price one routed expert of `model` for `tokens` tokens routed to it."""
    if not model.is_moe:
        raise ServesimError(f"{model.name} has no routed experts to place.")
    p = model.expert_params()
    nbytes = p * BLOCK_BYTES_PER_WEIGHT[quant.base]
    work = Work({quant.base: 2.0 * p * tokens}, nbytes, 0.0, 0.0, EXPERT_OPS, tokens)
    g = time_work(work, gpu, quant, gpu_eff, step_overhead=False)
    c = time_work(work, cpu, quant, cpu_eff, threads, step_overhead=False)
    return ExpertCosts(
        g.seconds - g.fixed_s, c.seconds - c.fixed_s, link.transfer_s(nbytes), g.fixed_s, c.fixed_s
    )


@dataclass(frozen=True)
class Popularity:
    """A Zipf(`skew`) popularity over `num_experts`, re-ranked every `shift_every` steps."""

    num_experts: int
    skew: float = 1.2
    shift_every: int = 0  # 0: never (stationary)

    def probabilities(self, step: int, rng_seed: int, layer: int) -> np.ndarray:
        """Activation probabilities of each expert at `step` in `layer`."""
        base = 1.0 / np.arange(1, self.num_experts + 1) ** self.skew
        base /= base.sum()
        epoch = step // self.shift_every if self.shift_every else 0
        perm = np.random.default_rng([rng_seed, layer, epoch]).permutation(self.num_experts)
        out = np.empty_like(base)
        out[perm] = base
        return out


@dataclass(frozen=True)
class PlacementResult:
    """Mean seconds of the expert part of one decode step, and the GPU hit rate."""

    policy: str
    mean_step_s: float
    hit_rate: float
    steps: int


def _layer_time(misses: int, hits: int, c: ExpertCosts, dynamic: bool) -> tuple[float, int]:
    """Finish time of one layer and how many misses were copied to the GPU. A side that runs
    any expert pays its operators' fixed cost once (`ExpertCosts`)."""
    gpu_end = c.gpu_launch_s + hits * c.gpu_s if hits else 0.0
    if not dynamic:
        cpu_end = c.cpu_launch_s + misses * c.cpu_s if misses else 0.0
        return max(gpu_end, cpu_end), 0
    cpu_end = 0.0
    copy_end = 0.0
    copied = 0
    for _ in range(misses):
        # the copy queue runs beside the GPU; a copied expert starts when both are ready
        gpu_fixed = 0.0 if gpu_end else c.gpu_launch_s
        via_gpu = max(gpu_end, copy_end + c.copy_s) + c.gpu_s + gpu_fixed
        via_cpu = cpu_end + c.cpu_s + (0.0 if cpu_end else c.cpu_launch_s)
        if via_gpu < via_cpu:
            copy_end += c.copy_s
            gpu_end = via_gpu
            copied += 1
        else:
            cpu_end = via_cpu
    return max(gpu_end, cpu_end), copied


def simulate_placement(
    policy: str,
    costs: ExpertCosts,
    popularity: Popularity,
    num_layers: int,
    experts_per_token: int,
    cache_per_layer: int,
    steps: int = 400,
    batch: int = 1,
    profile_steps: int = 50,
    seed: int = 0,
) -> PlacementResult:
    """Run `steps` decode steps of `batch` tokens through `num_layers` MoE layers and return the
    mean expert time per step. Both policies start from the cache the profiling window (the
    first `profile_steps` steps' popularity) would fill; static never changes it."""
    if policy not in POLICIES:
        raise ServesimError(f"Unknown placement {policy!r}; use one of: {', '.join(POLICIES)}.")
    n = popularity.num_experts
    if not 0 <= cache_per_layer <= n or not 1 <= experts_per_token <= n:
        raise ServesimError(
            f"cache_per_layer must be 0..{n} and experts_per_token 1..{n} for {n} experts."
        )
    rng = np.random.default_rng(seed)
    caches: list[set[int]] = []
    scores = np.zeros((num_layers, n))
    for layer in range(num_layers):
        prof = sum(popularity.probabilities(s, seed, layer) for s in range(profile_steps))
        top = np.argsort(-prof)[:cache_per_layer]
        caches.append(set(int(e) for e in top))
        scores[layer] = prof / profile_steps
    total = 0.0
    hits_all = 0
    acts_all = 0
    dynamic = policy == "dynamic"
    for step in range(steps):
        step_s = 0.0
        for layer in range(num_layers):
            p = popularity.probabilities(step, seed, layer)
            active: set[int] = set()
            for _ in range(batch):
                active.update(
                    int(e) for e in rng.choice(n, size=experts_per_token, replace=False, p=p)
                )
            cache = caches[layer]
            hits = len(active & cache)
            misses = len(active) - hits
            t, copied = _layer_time(misses, hits, costs, dynamic)
            step_s += t
            hits_all += hits
            acts_all += len(active)
            if dynamic:
                sc = scores[layer]
                sc *= SCORE_DECAY
                for e in active:
                    sc[e] += 1.0
                # the copied misses with the highest scores replace the lowest-scored residents
                missed = sorted(active - cache, key=lambda e: -sc[e])[:copied]
                for e in missed:
                    if len(cache) < cache_per_layer:
                        cache.add(e)
                        continue
                    if not cache:
                        break
                    victim = min(cache, key=lambda x: sc[x])
                    if sc[victim] < sc[e]:
                        cache.remove(victim)
                        cache.add(e)
        total += step_s
    return PlacementResult(policy, total / steps, hits_all / max(1, acts_all), steps)
