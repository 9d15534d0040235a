"""The cluster loop: equivalence with the single-replica loop, conservation under every
mechanism, closed loops across pools, and the command-line flags that select mechanisms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from properties_lib import time_limit

from servesim.cli.main import main
from servesim.sim.autoscale import Autoscaler
from servesim.sim.cluster import Cluster
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.metrics import ItlHistogram, Slo
from servesim.sim.policies import ClassSlo, Policy
from servesim.sim.pool import build_pool, prepare
from servesim.sim.router import Migration, Router
from servesim.sim.semipd import SemiPDController, SemiPDDeployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed, synthetic
from servesim.sim.traces import bundled_trace
from servesim.sim.workload import Workload
from servesim.spec.devices import get_device
from servesim.spec.model import load_model

LLAMA8 = load_model("meta-llama/Llama-3.1-8B")
H100 = get_device("h100_sxm")


def test_cluster_loop_with_one_replica_matches_the_tight_loop() -> None:
    """Claim: the general event loop and the single-replica fast path are the same model."""
    w = bundled_trace("azure_conv").head(400).scaled_to_rate(6.0)
    fast = simulate(Deployment(LLAMA8, H100), w).columns()
    req = prepare(w, None, "round_robin")
    reps, _ = build_pool(Deployment(LLAMA8, H100), req, ItlHistogram())
    cluster = Cluster(req.table, reps, Router("round_robin"))
    cluster.run()
    req.table.close(cluster.stats.finish_events)
    slow = req.table.sink.columns()
    for col in ("first_token_s", "finish_s", "generated_tokens"):
        assert np.array_equal(fast[col], slow[col]), col


MECHANISMS = {
    "disagg ethernet": DisaggDeployment(
        Deployment(LLAMA8, H100, replicas=2), Deployment(LLAMA8, H100), "ethernet"
    ),
    "semi-PD": SemiPDDeployment(Deployment(LLAMA8, H100, replicas=2), 0.4),
    "migration": Deployment(LLAMA8, get_device("l40s"), replicas=3, migration=Migration()),
    "autoscale": Deployment(
        LLAMA8, H100, autoscaler=Autoscaler("queue", 4, 1, 3, interval_s=5, window_s=10)
    ),
    "priority swap": Deployment(
        LLAMA8, get_device("l4"), policy=Policy("priority", preemption="swap"), max_num_seqs=16
    ),
    "slack": Deployment(
        LLAMA8, H100, policy=Policy("slack", class_slos=(ClassSlo(0.5, 0.05), ClassSlo(5, 0.2)))
    ),
}


@pytest.mark.parametrize("name", list(MECHANISMS))
def test_every_request_finishes_once_with_its_tokens(name: str) -> None:
    """Claim: whatever moves a request (transfers, lanes, migration, scaling, preemption by
    swap or recompute), it finishes exactly once with all its output tokens, after its first
    token, which follows its arrival."""
    w = synthetic(400, 8.0, "uniform:200:4000", "uniform:20:600", seed=7)
    w.priority = np.arange(len(w)) % 2
    res = simulate(MECHANISMS[name], w, router="least_loaded")
    c = res.columns()
    assert (c["finish_s"] > 0).all(), name
    assert (c["generated_tokens"] == w.output_tokens).all(), name
    assert (c["first_token_s"] >= c["arrival_s"]).all() and (
        c["finish_s"] >= c["first_token_s"]
    ).all()
    s = res.summary()
    assert s["energy_j"] > 0 and np.isfinite(s["joules_per_output_token"]), s


@pytest.mark.parametrize("name", ["disagg ethernet", "semi-PD"])
def test_closed_loops_drive_split_pools(name: str) -> None:
    """Claim: a closed loop's next request is sent when one finishes, across pools too."""
    loop = ClosedLoop(6, 60, Fixed(800), Fixed(40))
    c = simulate(MECHANISMS[name], closed_loop=loop).columns()
    assert (c["finish_s"] > 0).all()
    assert np.allclose(np.sort(c["arrival_s"][6:]), np.sort(c["finish_s"])[:54])


def test_command_line_selects_every_mechanism(tmp_path) -> None:
    """Claim: each mechanism has a simulate flag (and a config-file key) and lands in the
    summary; bad values end in one sentence."""
    runs = {
        "disagg": ["--disagg", "--prefill-replicas", "2", "--kv-link", "infiniband"],
        "semipd": ["--semipd", "0.4", "--semipd-adaptive"],
        "slack": ["--policy", "slack", "--class-slo", "1:0.05", "--length-estimate", "noisy:1"],
        "swap": ["--policy", "priority", "--preemption", "swap", "--swap-group-blocks", "8"],
        "migrate": ["--replicas", "2", "--migration", "--router", "power_of_two"],
        "scale": ["--autoscale", "queue:4", "--max-replicas", "3"],
    }
    for name, flags in runs.items():
        out = tmp_path / name
        argv = ["simulate", "--num-requests", "200", "--rate", "6", "--out", str(out), *flags]
        assert main(argv) == 0, name
        summary = json.loads((out / "summary.json").read_text())
        assert summary["finished"] == 200, (name, summary["finished"])
    assert "kv_transfers" in json.loads((tmp_path / "disagg" / "summary.json").read_text())
    assert "cold_starts" in json.loads((tmp_path / "scale" / "summary.json").read_text())
    cfg = tmp_path / "run.yaml"
    cfg.write_text("policy: laps\nlaps_threshold: 800\nnum_requests: 100\nrate: 5\n")
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "cfg")]) == 0
    bad = ["simulate", "--num-requests", "10", "--out", str(tmp_path / "bad")]
    assert main([*bad, "--autoscale", "bogus"]) == 2
    assert main([*bad, "--disagg", "--semipd", "0.5"]) == 2
    assert main([*bad, "--class-slo", "1", "--policy", "slack"]) == 2


def test_summary_reports_slo_attainment_over_time_when_autoscaled() -> None:
    """Claim: an autoscaled run reports attainment per time window, cold starts and cost."""
    w = synthetic(600, 4.0, 1000, 100, seed=2)
    s = simulate(MECHANISMS["autoscale"], w).summary(Slo(1.0, 0.05))
    assert s["slo_attainment_over_time"] and "cold_starts" in s and s["cost_usd"] > 0
    assert sum(n for _, _, n in s["slo_attainment_over_time"]) == 600


def test_a_migrated_request_resumes_where_it_stopped() -> None:
    """Claim: detaching a decoding request and attaching it elsewhere keeps its progress: it
    generates only its remaining tokens on the new replica."""
    from servesim.sim.workload import Workload

    w = Workload(np.array([0.0]), np.array([1000]), np.array([200]))
    req = prepare(w, None, "round_robin")
    reps, _ = build_pool(Deployment(LLAMA8, H100, replicas=2), req, ItlHistogram())
    a, b = reps
    b.index = 1
    rid = req.table.admit(0, 0.0)
    a.enqueue(rid, 0.0)
    while a.next_t < 1.0:
        a.advance()
    done, cached, at = a.detach(rid, 1.0)
    assert not done and cached > 1000
    produced = req.table.generated[rid]
    assert produced == cached - 1000 + 1 and 1 < produced < 200
    b.attach(rid, at, cached, at)
    steps = 0
    while b.next_t < float("inf"):
        b.advance()
    steps = b.iterations
    assert steps == 200 - produced, (steps, produced)
    assert req.table.finish_s[rid] > at and req.table.generated[rid] == 200


# ---- nothing waits for ever: periodic events end with the work ------------------------------

TICKING = {
    "migration": Deployment(LLAMA8, H100, replicas=2, migration=Migration()),
    "autoscale utilisation": Deployment(LLAMA8, H100, autoscaler=Autoscaler("utilisation")),
    "autoscale queue": Deployment(LLAMA8, H100, autoscaler=Autoscaler("queue", 4, 1, 3)),
    "autoscale forecast": Deployment(LLAMA8, H100, autoscaler=Autoscaler("forecast", 1, 1, 3)),
    "semi-PD controller": SemiPDDeployment(
        Deployment(LLAMA8, H100), 0.5, SemiPDController(Slo(), interval_s=0.001)
    ),
}


@pytest.mark.parametrize("loop", ["closed", "open"])
@pytest.mark.parametrize("name", list(TICKING))
def test_periodic_events_stop_when_the_last_request_ends(name: str, loop: str) -> None:
    """Regression (issue 9, hangs): a closed loop with migration, autoscaling or an adaptive
    semi-PD split never ended: each tick re-armed itself while "arrivals remained", which a
    closed loop's arrival counter always said. A tick now repeats only while an arrival can
    come or a replica or transfer has work, and the loop ends when only ticks are left."""
    with time_limit(10):
        if loop == "closed":
            res = simulate(TICKING[name], closed_loop=ClosedLoop(1, 1, Fixed(1), Fixed(1)))
        else:
            res = simulate(TICKING[name], Workload(np.zeros(2), np.ones(2), np.ones(2)))
    s = res.summary()
    assert s["finished"] == s["requests"] and s["duration_s"] < 1.0, s


def test_the_reported_hanging_command_ends(tmp_path) -> None:
    """Regression (issue 9): `servesim simulate --clients 1 --num-requests 1 --prompt fixed:1
    --output fixed:1 --migration` hung; it now ends with its request served. (Migration on one
    replica is now refused as doing nothing, so the command runs with two.)"""
    out = tmp_path / "run"
    argv = ["simulate", "--clients", "1", "--num-requests", "1", "--prompt", "fixed:1"]
    with time_limit(20):
        assert (
            main(
                [*argv, "--output", "fixed:1", "--migration", "--replicas", "2", "--out", str(out)]
            )
            == 0
        )
    assert json.loads((out / "summary.json").read_text())["finished"] == 1
