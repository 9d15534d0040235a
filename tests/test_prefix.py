"""Prefix caching: shared prompt blocks are reused, evicted least recently used, and reported."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.sim.prefix_cache import PrefixCache
from servesim.sim.simulate import simulate
from servesim.sim.traces import bundled_trace
from servesim.sim.workload import Workload, poisson_arrivals
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")
BLOCK = 512  # tokens per hash block, as in the Mooncake traces


def system_prompt_workload(
    n: int,
    systems: int,
    rate: float,
    system_blocks: int = 8,
    order: str = "random",
    output: int = 64,
) -> Workload:
    """Requests = one of `systems` shared system prompts (`system_blocks` hash blocks) + one
    unique 512-token block of user text; `output` output tokens."""
    rng = np.random.default_rng(0)
    which = rng.integers(0, systems, n) if order == "random" else np.arange(n) % systems
    hashes = [
        [int(s) * 1000 + k for k in range(system_blocks)] + [10**7 + i] for i, s in enumerate(which)
    ]
    prompt = np.full(n, (system_blocks + 1) * BLOCK)
    return Workload(
        poisson_arrivals(n, rate, rng),
        prompt,
        np.full(n, output),
        name="system-prompts",
        prefix_hashes=hashes,
        prefix_block_tokens=BLOCK,
    )


def infinite_cache_hit_rate(w: Workload) -> float:
    """Share of prompt tokens in leading blocks seen earlier (an unbounded cache's hit rate)."""
    seen: set[int] = set()
    hit = 0
    for h, p in zip(w.prefix_hashes, w.prompt_tokens, strict=True):
        k = 0
        for x in h[: min(len(h), (int(p) - 1) // BLOCK)]:
            if x not in seen:
                break
            k += 1
        hit += k * BLOCK
        seen.update(h)
    return hit / float(w.prompt_tokens.sum())


def test_shared_system_prompts_are_computed_once_and_prefill_cost_falls() -> None:
    """Claim (vLLM APC, SGLang RadixAttention): requests sharing a prompt prefix reuse its
    cached KV, so the hit rate reaches the share of prompt tokens seen before, and prefill
    time falls accordingly — here 8 of every 9 blocks are shared. With one output token the
    replica only prefills, so its busy time is the prefill cost."""
    w = system_prompt_workload(400, systems=16, rate=2.0, output=1)
    bound = infinite_cache_hit_rate(w)
    on = simulate(Deployment(LLAMA8, H100, prefix_caching=True), w)
    off = simulate(Deployment(LLAMA8, H100, prefix_caching=False), w)
    s_on, s_off = on.summary(), off.summary()
    hit = s_on["prefix_hit_rate"]
    assert hit == pytest.approx(bound, abs=0.01), (hit, bound)
    cols = on.columns()
    assert cols["cached_tokens"].sum() == pytest.approx(hit * cols["prompt_tokens"].sum())
    # Expected prefill cost: a hit computes its last block attending to 8 cached ones.
    pred = Deployment(LLAMA8, H100).predictor()
    t_full = pred.step_s(0, 0, ((9 * BLOCK, 0),))
    t_hit = pred.step_s(0, 0, ((BLOCK, 8 * BLOCK),))
    hits = int((cols["cached_tokens"] > 0).sum())
    expected = (hits * t_hit + (len(w) - hits) * t_full) / (len(w) * t_full)
    busy_on = sum(r["busy_s"] for r in on.replica_stats)
    busy_off = sum(r["busy_s"] for r in off.replica_stats)
    assert busy_on / busy_off == pytest.approx(expected, rel=0.25), (busy_on, busy_off, expected)
    ratio = s_on["ttft_s"]["mean"] / s_off["ttft_s"]["mean"]
    assert ratio < 0.4, (ratio, s_on["ttft_s"], s_off["ttft_s"])
    assert s_on["joules_per_token"] < s_off["joules_per_token"]
    assert "prefix_hit_rate" not in s_off


def test_lru_keeps_a_working_set_that_fits_and_thrashes_on_one_that_does_not() -> None:
    """Claim: with LRU eviction, prefixes cycled through a cache that holds them all keep
    hitting, while a cyclic working set larger than the cache evicts every block just before
    its reuse (the classic LRU failure), so the hit rate collapses."""
    small = Deployment(LLAMA8, get_device("a100_sxm_40gb"), max_num_seqs=8)
    cache_tokens = small.memory().kv_tokens
    fits = system_prompt_workload(600, systems=8, rate=1.0, order="cyclic")
    too_big = system_prompt_workload(600, systems=64, rate=1.0, order="cyclic")
    assert 8 * 9 * BLOCK < cache_tokens < 64 * 8 * BLOCK, cache_tokens
    hit_fits = simulate(small, fits).summary()["prefix_hit_rate"]
    res_big = simulate(small, too_big)
    hit_big = res_big.summary()["prefix_hit_rate"]
    evictions = res_big.summary()["prefix_evictions"]
    assert hit_fits > 0.8, hit_fits
    assert hit_big < 0.05 and evictions > 0, (hit_big, evictions)


def test_mooncake_trace_hit_rate_grows_with_cache_and_stays_under_the_bound() -> None:
    """Claim: on the Mooncake conversation trace (hash ids per 512-token block) the reported
    hit rate is positive, never above an unbounded cache's, and grows with the cache size."""
    trace = bundled_trace("mooncake_conv").head(800)
    assert trace.prefix_block_tokens == BLOCK and trace.prefix_hashes is not None
    bound = infinite_cache_hit_rate(trace)
    w = trace.scaled_to_rate(0.5)
    rates = {}
    for label, dev, kv in (("h100", "h100_sxm", None), ("b200-fp8kv", "b200", "fp8")):
        model = LLAMA8.with_dtypes(kv=kv) if kv else LLAMA8
        rates[label] = simulate(Deployment(model, get_device(dev)), w).summary()["prefix_hit_rate"]
    assert 0 < rates["h100"] < rates["b200-fp8kv"] <= bound, (rates, bound)


def test_prefix_cache_pins_in_use_blocks_and_evicts_least_recently_released() -> None:
    """Claim: pinned blocks are never evicted; unpinned ones leave oldest-released first."""
    pc = PrefixCache(512, 16)
    assert pc.insert([1, 2, 3]) == 3  # pinned by the request that computed them
    assert pc.insert([4]) == 1
    assert pc.release([4]) == 32  # one hash block of 512 tokens = 32 pages of 16
    assert pc.release([1, 2, 3]) == 96
    assert list(pc.lru) == [4, 1, 2, 3]
    assert pc.acquire([1, 2]) == 64  # reused: pinned again
    pc.evict_to(32)  # room for one evictable block
    assert list(pc.lru) == [3] and set(pc.refs) == {1, 2, 3}
    assert pc.match([1, 2, 3, 9], limit=4) == 3 and pc.match([1, 2, 3], limit=2) == 2


def test_no_hash_ids_means_no_cache() -> None:
    """Claim: without hash ids there is nothing to match; results equal a cache-less run."""
    w = system_prompt_workload(50, systems=4, rate=2.0)
    plain = replace(w, prefix_hashes=None, prefix_block_tokens=0)
    a = simulate(Deployment(LLAMA8, H100), plain).columns()["finish_s"]
    b = simulate(Deployment(LLAMA8, H100, prefix_caching=False), w).columns()["finish_s"]
    assert np.array_equal(a, b)


def test_hash_blocks_that_do_not_fill_whole_pages_are_refused() -> None:
    """Regression (found by scripts/fuzz.py): hash blocks of 16 tokens on TensorRT-LLM's
    32-token pages were each counted as a whole page once cached, so the cache's accounting
    ran over its size and the run died mid-way; such a workload is now refused in one sentence
    (prefix caching off, it runs)."""
    w = Workload(
        np.zeros(2),
        np.full(2, 64),
        np.full(2, 8),
        prefix_hashes=[[1, 2, 3, 4], [1, 2, 5, 6]],
        prefix_block_tokens=16,
    )
    trt = Deployment(LLAMA8, get_device("h100_sxm"), engine=get_engine("trtllm"))
    with pytest.raises(ServesimError, match="do not fill whole KV pages of 32 tokens"):
        simulate(trt, w)
    assert simulate(replace(trt, prefix_caching=False), w).summary()["finished"] == 2
    vllm = Deployment(LLAMA8, get_device("h100_sxm"))  # 16-token pages: fine
    assert simulate(vllm, w).summary()["prefix_hit_rate"] > 0
