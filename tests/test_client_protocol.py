"""The benchmark client as a workload (issue 12, item 1): length spread as the clients draw it,
the send times of a ramp, a request rate and a warm-up phase, warm-up left out of the summary,
the presets, and the phase-locking of fixed-length all-at-once loops gone under a real client."""

from __future__ import annotations

import math
import sys
from dataclasses import replace as dataclass_replace
from pathlib import Path

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.sim.clients import AIPERF, INFERENCEX, INFERENCEX_MULTINODE, client_protocol
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed, Uniform, range_ratio_length
from servesim.spec.devices import Catalog
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

REPO = Path(__file__).resolve().parents[1]


# ---- lengths -----------------------------------------------------------------------------------
def test_symmetric_range_is_vllm_bench_serves_draw() -> None:
    # vllm bench serve: [int(1000 * 0.9), int(1000 * 1.1)] = [900, 1100], mean 1000.
    d = range_ratio_length(1000, 0.1, "symmetric")
    assert d == Uniform(900, 1100)
    x = d.sample(40_000, 3)
    assert x.min() == 900 and x.max() == 1100
    assert abs(x.mean() - 1000) < 2.0  # std of the mean: 58 / sqrt(40000) = 0.3


def test_below_range_is_the_inferencex_clients_draw() -> None:
    # InferenceX's benchmark_serving.py: randint(int(1024 * 0.8), 1024 + 1) = 819..1024.
    d = range_ratio_length(1024, 0.8, "below")
    assert d == Uniform(819, 1024)
    x = d.sample(40_000, 4)
    assert x.min() == 819 and x.max() == 1024
    assert abs(x.mean() - (819 + 1024) / 2) < 1.0  # 921.5 tokens, not the nominal 1024


def test_ratios_that_leave_one_length_are_fixed() -> None:
    assert range_ratio_length(512, 0.0, "symmetric") == Fixed(512)
    assert range_ratio_length(512, 1.0, "below") == Fixed(512)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((100, 1.0, "symmetric"), "below 1"),
        ((100, 1.5, "below"), "at most 1"),
        ((100, -0.1, "below"), ">= 0"),
        ((100, math.nan, "below"), ">= 0"),
        ((100, 0.5, "around"), "unknown"),
        ((0, 0.5, "below"), ">= 1"),
    ],
)
def test_range_ratio_refuses_bad_input(args: tuple, pattern: str) -> None:
    with pytest.raises(ServesimError, match=pattern):
        range_ratio_length(*args)


# ---- send times --------------------------------------------------------------------------------
def test_default_loop_sends_every_client_at_zero_and_the_next_at_the_finish() -> None:
    p = ClosedLoop(3, 5, Fixed(10), Fixed(10)).pacer()
    assert p.start() == [(0.0, 0), (0.0, 1), (0.0, 2)]
    assert p.finished(0.7) == [(0.7, 3)]
    assert p.finished(0.9) == [(0.9, 4)]
    assert p.finished(1.0) == []  # all five sent


def test_ramp_opens_one_slot_per_step() -> None:
    # aiperf --concurrency-ramp-duration: 1 -> 4 slots over 0.3 s, a slot every 0.1 s.
    p = ClosedLoop(4, 10, Fixed(10), Fixed(10), ramp_s=0.3).pacer()
    assert [i for _, i in p.start()] == [0, 1, 2, 3]
    assert [t for t, _ in ClosedLoop(4, 10, Fixed(10), Fixed(10), ramp_s=0.3).pacer().start()] == (
        pytest.approx([0.0, 0.1, 0.2, 0.3])
    )
    assert p.finished(0.05) == [(0.05, 4)]  # after the first requests the ramp is over


def test_request_rate_releases_requests_and_a_backlog_goes_at_once() -> None:
    # 2 clients at 10 req/s with (near-)constant intervals: request k eligible at 0.1 k.
    loop = ClosedLoop(2, 4, Fixed(10), Fixed(10), request_rate_per_s=10.0, burstiness=1e12)
    p = loop.pacer()
    (t0, i0), (t1, i1) = p.start()
    assert (i0, i1) == (0, 1) and t0 == 0.0 and t1 == pytest.approx(0.1)
    ((t2, i2),) = p.finished(0.05)  # a free client waits for request 2's time
    assert i2 == 2 and t2 == pytest.approx(0.2)
    ((t3, i3),) = p.finished(0.5)  # request 3 was due at 0.3: it goes as the client frees up
    assert i3 == 3 and t3 == 0.5


def test_poisson_rate_has_the_asked_mean_interval() -> None:
    loop = ClosedLoop(1, 20_001, Fixed(1), Fixed(1), request_rate_per_s=50.0)
    gaps = np.diff(loop.release_s)
    assert abs(gaps.mean() - 0.02) < 0.02 * 0.03  # 3 % (std of the mean 0.7 %)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: cv 1


def test_warmup_phase_ends_before_the_measured_phase_starts_all_clients() -> None:
    p = ClosedLoop(2, 6, Fixed(10), Fixed(10), warmup_requests=3).pacer()
    assert p.start() == [(0.0, 0), (0.0, 1)]
    assert p.finished(1.0) == [(1.0, 2)]  # the last warm-up request
    assert p.finished(1.5) == []  # warm-up fully sent, 2 still running: the client waits
    assert p.finished(2.0) == [(2.0, 3), (2.0, 4)]  # the profile starts, both clients at once
    assert p.finished(2.5) == [(2.5, 5)]
    assert p.finished(3.0) == [] and p.finished(3.1) == []


def test_the_measured_phase_starts_at_the_latest_warm_up_end_reported_in_any_order() -> None:
    """A serving loop delivers a request's last token after the iteration that made it, so the
    simulator may report ends out of time order (a replica's queued delivery at 2.0 reported
    before another replica's end at 1.8). The profile starts when every warm-up request has
    ended, at 2.0, not at the last one reported (found by `scripts/fuzz.py --seed 777`,
    example 3303: six requests of five clients in flight)."""
    p = ClosedLoop(2, 4, Fixed(10), Fixed(10), warmup_requests=2).pacer()
    assert p.start() == [(0.0, 0), (0.0, 1)]
    assert p.finished(2.0) == []
    assert p.finished(1.8) == [(2.0, 2), (2.0, 3)]


def test_ramp_restarts_with_the_measured_phase() -> None:
    p = ClosedLoop(2, 4, Fixed(10), Fixed(10), ramp_s=1.0, warmup_requests=2).pacer()
    assert p.start() == [(0.0, 0), (1.0, 1)]
    assert p.finished(0.5) == []
    assert p.finished(1.5) == [(1.5, 2), (2.5, 3)]


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"ramp_s": -1.0}, "Ramp"),
        ({"ramp_s": math.inf}, "Ramp"),
        ({"request_rate_per_s": 0.0}, "Request rate"),
        ({"request_rate_per_s": math.nan}, "Request rate"),
        ({"burstiness": 0.0}, "Burstiness"),
        ({"warmup_requests": -1}, "Warm-up"),
        ({"warmup_requests": 1.5}, "Warm-up"),
        ({"warmup_requests": 10}, "none of the 10"),
    ],
)
def test_protocol_options_are_validated(kw: dict, pattern: str) -> None:
    with pytest.raises(ServesimError, match=pattern):
        ClosedLoop(2, 10, Fixed(10), Fixed(10), **kw)


# ---- presets -----------------------------------------------------------------------------------
def test_presets_size_their_runs_by_the_concurrency() -> None:
    ix = INFERENCEX.closed_loop(8, 1024, 8192)
    assert (ix.num_requests, ix.warmup_requests) == (8 * 12, 16)  # 10 × CONC after 2 × CONC
    assert ix.prompt == Uniform(819, 1024) and ix.output == Uniform(6553, 8192)
    ai = AIPERF.closed_loop(4, 4000, 1000)
    assert (ai.num_requests, ai.warmup_requests) == (4 * 22, 8)  # --num-requests C*20
    assert ai.prompt == Fixed(4000) and ai.output == Fixed(1000)
    assert client_protocol("vllm_bench_serve").closed_loop(2, 100, 10, range_ratio=0.5).prompt == (
        Uniform(50, 150)
    )
    with pytest.raises(ServesimError, match="unknown; use one of"):
        client_protocol("genai-perf-ish")


def test_inferencex_warmups_repeat_the_first_measured_request() -> None:
    loop = INFERENCEX.closed_loop(4, 1024, 1024)
    w = loop.warmup_requests
    assert w == 8 and loop.warmup_repeats_first
    p, o = loop.prompt_tokens, loop.output_tokens
    assert (p[:w] == p[w]).all() and (o[:w] == o[w]).all()
    # The measured requests are drawn as before; sa-bench's warm-up run draws its own prompts.
    multi = INFERENCEX_MULTINODE.closed_loop(4, 1024, 1024)
    assert not multi.warmup_repeats_first
    assert np.array_equal(multi.prompt_tokens[w:], p[w:])
    assert len(set(multi.prompt_tokens[:w].tolist())) > 1


def test_silicon_rows_of_disaggregated_runs_use_sa_bench() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import silicon

    src = "source_file=2026-04-06.csv; model=DeepSeek-R1; measured=2026-02-07T13:00:07Z"
    assert silicon.protocol_of({"silicon_data_source": src, "mode": "agg"}).name == "inferencex"
    row = {"silicon_data_source": src, "mode": "disagg"}
    assert silicon.protocol_of(row).name == "inferencex_multinode"


# ---- in the simulator --------------------------------------------------------------------------
def _deployment() -> Deployment:
    return Deployment(
        model=load_model("meta-llama/Llama-3.1-8B-Instruct"),
        device=Catalog().get("h100_sxm"),
        parallel=Parallel(tp=1),
        engine=get_engine("vllm"),
    )


def test_warmup_is_left_out_of_the_summary_and_requests_and_tokens_are_conserved() -> None:
    loop = INFERENCEX.closed_loop(4, 512, 64, seed=5)
    res = simulate(_deployment(), closed_loop=loop)
    cols = res.columns()
    w = loop.warmup_requests
    assert len(cols["ttft_s"]) == loop.num_requests == 48  # every request ran, warm-up too
    assert np.array_equal(cols["prompt_tokens"], loop.prompt_tokens)
    assert np.array_equal(cols["generated_tokens"], loop.output_tokens)  # ignore_eos: all of it
    s = res.summary()
    assert s["requests"] == loop.num_requests - w == 40
    assert s["ttft_s"]["mean"] == pytest.approx(float(np.mean(cols["ttft_s"][w:])))
    # Energy and use are the whole run's (the GPUs worked through the warm-up too).
    assert s["joules_per_output_token"] * cols["generated_tokens"].sum() == pytest.approx(
        s["energy_j"]
    )
    assert s["utilisation"] <= 1.0
    # The measured phase starts when the last warm-up request has ended.
    assert cols["arrival_s"][w:].min() == pytest.approx(cols["finish_s"][:w].max())


def test_same_seed_same_run_other_seed_other_lengths() -> None:
    dep = _deployment()
    a = simulate(dep, closed_loop=INFERENCEX.closed_loop(4, 512, 64, seed=1)).columns()
    b = simulate(dep, closed_loop=INFERENCEX.closed_loop(4, 512, 64, seed=1)).columns()
    c = INFERENCEX.closed_loop(4, 512, 64, seed=2)
    for k in ("arrival_s", "ttft_s", "finish_s"):
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["prompt_tokens"], c.prompt_tokens)


def test_length_spread_ends_the_phase_locking_of_an_all_at_once_loop() -> None:
    """8 clients with fixed lengths send every round together: each round's 8 prefills share
    one or two instants and queue behind each other. The InferenceX client's length spread lets them
    finish, and so send, at different times: far fewer requests share a send time and the
    mean TTFT drops (the issue's example: 325 ms lockstep, 76 ms measured)."""
    dep = _deployment()
    lock = client_protocol("lockstep").closed_loop(8, 1024, 256)
    real = INFERENCEX.closed_loop(8, 1024, 256)
    cl, cr = simulate(dep, closed_loop=lock).columns(), simulate(dep, closed_loop=real).columns()
    w = real.warmup_requests
    sends_lock = len(np.unique(cl["arrival_s"]))
    sends_real = len(np.unique(cr["arrival_s"][w:]))
    assert sends_lock <= 2 * lock.num_requests // 8  # a round goes out in one or two bursts
    assert sends_real > 0.7 * (real.num_requests - w)  # nearly every request on its own
    ttft_lock, ttft_real = float(np.mean(cl["ttft_s"])), float(np.mean(cr["ttft_s"][w:]))
    assert ttft_real < 0.5 * ttft_lock


# ---- the silicon benchmark's provenance mapping -------------------------------------------------
def test_silicon_rows_map_to_the_client_that_measured_them() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import silicon

    def src(text: str) -> dict[str, str]:
        return {"silicon_data_source": text}

    db = "db-dump/2026-04-27; config_id=83; silicon_concurrency=64; measured=2025-11-02T00:00Z"
    assert silicon.protocol_of(src(db)).name == "inferencex_2025"
    new = "source_file=2026-04-06.csv; model=DeepSeek-R1; measured=2026-02-07T13:00:07Z; wip=False"
    assert silicon.protocol_of(src(new)).name == "inferencex"
    aic = "source_file=/Users/x/aic-auto-gap-analysis/data/h100_sxm/vllm/0.12.0/Q.csv"
    assert silicon.protocol_of(src(aic)).name == "aiperf"
    qwen = "source_file=qwen3.5-397b-gap-analysis.csv; silicon_concurrency=4"
    assert silicon.protocol_of(src(qwen)).name == "inferencex"


# ---- the command line --------------------------------------------------------------------------
def test_cli_protocol_names_are_the_presets() -> None:
    from typing import get_args

    from servesim.cli.settings import WorkloadSettings
    from servesim.sim.clients import PROTOCOLS

    ann = WorkloadSettings.model_fields["client_protocol"].annotation
    literal = next(a for a in get_args(ann) if a is not type(None))
    assert set(get_args(literal)) == {p.name for p in PROTOCOLS}


def test_cli_runs_a_client_protocol_and_summarises_the_measured_requests(
    tmp_path: Path, capsys
) -> None:
    import json

    from servesim.cli.main import main

    args = ["simulate", "--clients", "4", "--prompt", "512", "--output", "32", "--seed", "3"]
    code = main([*args, "--client-protocol", "inferencex", "--out", str(tmp_path)])
    capsys.readouterr()
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["requests"] == 40  # 10 per client measured; the 8 warm-up ones left out
    # The title counts what the table counts: the measured requests, the warm-up apart.
    assert summary["workload"] == "closed loop, 4 clients, 40 requests after 8 warm-up"


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--client-protocol", "genai"], "client-protocol"),
        (["--length-range-ratio", "-0.5"], "length-range-ratio"),
        (["--client-protocol", "aiperf", "--prompt", "uniform:10:20"], "nominal length"),
        (["--client-protocol", "aiperf", "--warmup-requests", "3"], "multiple of --clients"),
    ],
)
def test_cli_refuses_bad_protocol_settings_in_one_sentence(
    extra: list, pattern: str, capsys
) -> None:
    from servesim.cli.main import main

    base = ["simulate", "--clients", "4", "--output", "32", "--num-requests", "8"]
    if "--prompt" not in extra:
        base += ["--prompt", "512"]
    code = main([*base, *extra])
    _, err = capsys.readouterr()
    assert code == 2 and pattern in err and "Traceback" not in err


def test_cli_protocol_flags_need_clients(capsys) -> None:
    from servesim.cli.main import main

    code = main(["simulate", "--rate", "2", "--prompt", "64", "--output", "8", "--ramp-s", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "--ramp-s applies to closed loops only" in err


# ---- prompt pool (aiperf's dataset entries) ------------------------------------------------
def test_shuffle_pool_sends_every_entry_once_per_pass_and_repeats_share_their_blocks() -> None:
    loop = ClosedLoop(4, 25, Uniform(100, 300), Fixed(8), dataset_entries=10, seed=2)
    e = loop.entry_of
    for start in (0, 10):  # two full passes, each a permutation of the 10 entries
        assert sorted(e[start : start + 10]) == list(range(10))
    assert len(set(e[20:])) == 5  # the third pass is cut at 25 requests
    p, h = loop.prompt_tokens, loop.prefix_hashes
    for i in range(25):
        for j in range(25):
            same = e[i] == e[j]
            assert (p[i] == p[j] and h[i] == h[j]) if same else not set(h[i]) & set(h[j])
    # ceil(prompt / 64) hash blocks per prompt, every engine's page a divisor of 64 tokens.
    assert all(len(h[i]) == -(-int(p[i]) // 64) for i in range(25))
    assert loop.prefix_block_tokens == 64
    assert ClosedLoop(4, 25, Fixed(100), Fixed(8)).prefix_hashes is None


def test_random_and_sequential_pools() -> None:
    seq = ClosedLoop(2, 7, Fixed(64), Fixed(4), dataset_entries=3, dataset_sampling="sequential")
    assert list(seq.entry_of) == [0, 1, 2, 0, 1, 2, 0]
    rnd = ClosedLoop(2, 2000, Fixed(64), Fixed(4), dataset_entries=5, dataset_sampling="random")
    counts = np.bincount(rnd.entry_of, minlength=5)
    assert counts.min() > 330 and counts.max() < 470  # 400 each, sd 18
    with pytest.raises(ServesimError, match="sampling"):
        ClosedLoop(2, 7, Fixed(64), Fixed(4), dataset_entries=3, dataset_sampling="lru")


def test_pooled_prompts_hit_the_prefix_cache_and_conserve_tokens() -> None:
    """4 clients cycle through 4 prompts of 2,048 tokens: after the first pass every prompt is
    cached (the KV holds them all), so each later request prefills one 64-token block instead
    of 2,048 tokens and its TTFT falls; with prefix caching off nothing changes."""
    dep = _deployment()
    kw = dict(clients=4, num_requests=40, prompt=Fixed(2048), output=Fixed(16), seed=1)
    fresh = simulate(dep, closed_loop=ClosedLoop(**kw)).columns()
    pooled = simulate(dep, closed_loop=ClosedLoop(**kw, dataset_entries=4)).columns()
    off = simulate(
        dataclass_replace(dep, prefix_caching=False),
        closed_loop=ClosedLoop(**kw, dataset_entries=4),
    ).columns()
    assert pooled["generated_tokens"].sum() == fresh["generated_tokens"].sum() == 40 * 16
    late = slice(8, None)
    t_fresh, t_pool = float(np.mean(fresh["ttft_s"][late])), float(np.mean(pooled["ttft_s"][late]))
    assert t_pool < 0.5 * t_fresh, (t_pool, t_fresh)
    assert np.allclose(off["ttft_s"], fresh["ttft_s"])


def test_cli_prompt_pool_needs_a_closed_loop(capsys) -> None:
    from servesim.cli.main import main

    code = main(
        ["simulate", "--rate", "2", "--prompt", "64", "--output", "8", "--prompt-pool", "5"]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "--prompt-pool applies to closed loops only" in err


def test_the_inter_token_gaps_of_a_warm_up_are_left_out_with_its_latencies() -> None:
    """Every other latency of a closed loop with a warm-up counts its measured requests only;
    the inter-token histogram counted the whole run. With every output the same length the
    measured gaps' mean is the measured TPOT mean, which the warm-up's heavier load broke."""
    dep = Deployment(model=load_model("meta-llama/Llama-3.1-8B"), device=Catalog().get("h100_sxm"))
    loop = ClosedLoop(64, 256, Fixed(4000), Fixed(300), warmup_requests=192)
    s = simulate(dep, closed_loop=loop).summary()
    assert s["requests"] == 64
    assert s["itl_s"]["mean"] == pytest.approx(s["tpot_s"]["mean"], rel=0.01)
    whole = simulate(dep, closed_loop=dataclass_replace(loop, warmup_requests=0)).summary()
    assert whole["itl_s"]["mean"] == pytest.approx(whole["tpot_s"]["mean"], rel=0.01)
