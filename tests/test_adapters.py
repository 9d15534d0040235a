"""Many LoRA adapters on one replica: adapter bytes hand-computed, the KV capacity the slots
take, and swapping that raises tail latency once the adapters in use outnumber the slots."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.adapters import LoraAdapters, _replay, serve_with_adapters
from servesim.sim.deployment import Deployment
from servesim.sim.synthetic import LogNormal, synthetic
from servesim.spec.devices import Catalog
from servesim.spec.model import load_model

LLAMA = load_model("meta-llama/Llama-3.1-8B")
DEP = Deployment(model=LLAMA, device=Catalog().get("a100_sxm"), latency_model="roofline")


def test_adapter_bytes_hand_computed() -> None:
    """Rank 16 on q (4096→4096), k and v (4096→1024), o (4096→4096), gate and up
    (4096→14336), down (14336→4096): 16 × Σ(d_in + d_out) values per layer, 2 bytes, 32 layers."""
    sizes = 2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336)
    assert sizes == 81_920
    expect = 2 * 16 * sizes * 32
    assert LoraAdapters(4, 2, rank=16).bytes_per_adapter(LLAMA) == expect  # 83.9 MB
    assert LoraAdapters(4, 2, rank=16).lora_flops_share(LLAMA) == pytest.approx(
        16 * sizes * 32 / LLAMA.num_active_params()
    )


def test_the_replay_evicts_lru_and_waits_when_every_slot_is_held() -> None:
    """Two slots, 10 ms loads. Adapters 0, 1 load at 0 and 1 s; adapter 2 at 2 s evicts the
    least recently used one no request holds (0, finished at 1.5 s); adapter 1 again is
    resident; adapter 3 at 3 s finds both held until 5 s and 4 s and waits for 4 s."""
    arrival = np.array([0.0, 1.0, 2.0, 2.5, 3.0])
    finish = np.array([1.5, 4.0, 5.0, 3.5, 6.0])
    ids = np.array([0, 1, 2, 1, 3])
    ready, loads = _replay(arrival, finish, ids, slots=2, load_s=0.01)
    assert loads == 4
    assert ready == pytest.approx([0.01, 1.01, 2.01, 2.5, 4.01])


def test_swapping_raises_tail_latency_once_adapters_outnumber_the_slots() -> None:
    """Llama-3.1-8B on an A100, 8 adapter slots, 8 req/s: with 4 or 8 adapters every one stays
        resident and the tail does not move; with 16 it jumps more than tenfold, with 64 it grows
    again, and by 256 every request waits for a swap (the tail saturates)."""
    w = synthetic(1500, 8.0, LogNormal(500, 1500), LogNormal(150, 400), seed=2)
    p99 = {}
    for n in (4, 8, 16, 64, 256):
        r = serve_with_adapters(DEP, w, LoraAdapters(n, gpu_slots=8))
        p99[n] = r["ttft_p99_s"]
        if n <= 8:
            # Each adapter loads once, on first use (a few ms, once).
            assert r["loads"] == n and r["load_delay_mean_s"] < 1e-4, r
    # No swapping: only the adapters' own per-iteration work differs (8 distinct read, not 4).
    assert p99[4] == pytest.approx(p99[8], rel=0.02), p99
    # Past the slots swaps queue up: the tail jumps, then saturates (every request waits).
    assert 10 * p99[8] < p99[16] < p99[64] and p99[256] > 0.95 * p99[64], p99


def test_slots_cost_kv_capacity_and_bad_settings_are_refused() -> None:
    w = synthetic(50, 1.0, LogNormal(200, 400), LogNormal(50, 100), seed=1)
    few = serve_with_adapters(DEP, w, LoraAdapters(4, gpu_slots=4))
    many = serve_with_adapters(DEP, w, LoraAdapters(4, gpu_slots=64))
    per_token = LLAMA.kv_bytes_per_token()
    lost = (few["kv_tokens"] - many["kv_tokens"]) * per_token
    assert lost == pytest.approx(60 * few["adapter_mb"] * 1e6 * 0.9, rel=0.01)
    with pytest.raises(ServesimError):
        LoraAdapters(0, 4)
    with pytest.raises(ServesimError, match="more than"):
        serve_with_adapters(DEP, w, LoraAdapters(4, gpu_slots=5000))


def test_cli_simulate_with_many_adapters(tmp_path) -> None:
    import json

    from servesim.cli.main import main

    out = tmp_path / "l"
    args = ["simulate", "--device", "a100_sxm", "--prompt", "lognormal:500:1500"]
    args += ["--output", "lognormal:150:400", "--rate", "4", "--num-requests", "200"]
    assert main([*args, "--lora-adapters", "4", "--lora-slots", "8", "--out", str(out)]) == 0
    fig = json.loads((out / "summary.json").read_text())["lora_adapters"]
    assert fig["loads"] == 4 and fig["adapter_mb"] == pytest.approx(83.886, abs=0.01)
    assert main([*args, "--lora-rank", "8", "--out", str(tmp_path / "x")]) == 2


def test_batched_adapters_add_their_reads_or_flops_to_each_iteration() -> None:
    """Punica/S-LoRA batching: a 64-sequence decode step reads every distinct adapter in it
    (uniform popularity over 64 adapters: 64 × (1 − (63/64)^64) ≈ 40.7 of them, capped at the
    slots), an 8,192-token prefill pays the adapters' FLOPs (one FLOP per adapter byte)."""
    from dataclasses import replace

    from servesim.spec.lora import LoraAdapters

    lora = LoraAdapters(64, gpu_slots=64, zipf=0.0)
    assert lora.expected_distinct(64) == pytest.approx(64 * (1 - (63 / 64) ** 64))
    base, with_lora = DEP.predictor(), replace(DEP, lora=lora).predictor()
    extra = with_lora.step_s(64, 64 * 512, ()) - base.step_s(64, 64 * 512, ())
    a100 = DEP.device
    read = lora.expected_distinct(64) * lora.bytes_per_adapter(LLAMA) / a100.mem_bw_bytes_per_s
    assert extra == pytest.approx(read, rel=1e-6)
    extra_pre = with_lora.step_s(0, 0, ((8192, 0),)) - base.step_s(0, 0, ((8192, 0),))
    flops = 8192 * lora.bytes_per_adapter(LLAMA) / base._peak
    assert extra_pre == pytest.approx(max(flops, read / lora.expected_distinct(64)), rel=1e-6)
