"""Planner: pruning with reasons, monotone capacity, resume, Ray = local, infeasible plans."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from servesim.errors import ServesimError
from servesim.planner.candidates import (
    Candidate,
    PlanSpec,
    SearchSpace,
    WorkloadSpec,
    deployment_for,
    enumerate_candidates,
    prune,
)
from servesim.planner.capacity import find_capacity
from servesim.planner.plan import run_plan
from servesim.planner.ranking import add_rankings, pareto_front
from servesim.planner.store import PlanStore
from servesim.sim.metrics import Slo
from servesim.sim.traces import bundled_trace
from servesim.spec.devices import Catalog
from servesim.spec.model import load_model

SMALL = WorkloadSpec("azure_conv", 300)
SPACE = SearchSpace(
    devices=("h100_sxm", "l40s"),
    tp=(1, 2),
    engines=("vllm",),
    batching=((64, 2048), (256, 8192)),
)


def spec(**kw: object) -> PlanSpec:
    base = dict(model="meta-llama/Llama-3.1-8B", workload=SMALL, slo=Slo(1.0, 0.05), target=0.9)
    base.update(kw)
    return PlanSpec(**base)  # type: ignore[arg-type]


def test_candidates_that_cannot_run_are_pruned_with_their_reason() -> None:
    model = load_model("meta-llama/Llama-3.1-70B")
    space = SearchSpace(devices=("h100_sxm", "l4"), tp=(1, 3, 8, 16), engines=("vllm",))
    cands = enumerate_candidates(space, model)
    assert len(cands) == 2 * 4 * 3
    kept, pruned = prune(cands, model, Catalog(), longest_request_tokens=20_000)
    rules = {p.rule for p in pruned}
    assert {"does_not_fit", "tp_splits_heads", "tp_exceeds_node"} <= rules
    for p in pruned:
        if p.rule == "does_not_fit":
            assert "GB per device" in p.reason
        if p.rule == "tp_exceeds_node":
            assert "TP=16" in p.reason
    # 70B in bf16 (141 GB) fits on 8 H100s and on 8 L4s (192 GB), never on one GPU.
    assert {(c.device, c.tp) for c in kept} == {("h100_sxm", 8), ("l4", 8)}


def test_a_rows_power_counts_mirror_draft_devices_at_their_own_rating() -> None:
    """Mirror-SD drafts on an L4 (72 W) beside each H100 (700 W): the row's peak power is
    0.772 kW, not two H100s' 1.4 kW, and goodput per kW divides by that, as its $/h adds
    the L4's $0.70 to the H100's $7.52."""
    from servesim.planner.evaluate import evaluate

    s = spec(speculative="eagle", mirror_device="l4")
    row = evaluate(s, Candidate("h100_sxm", 1, num_draft_tokens=2))
    assert row["devices"] == 2
    assert row["price_per_hour"] == pytest.approx(7.52 + 0.70)
    assert row["power_kw"] == pytest.approx(0.700 + 0.072)
    assert row["goodput_per_kw"] == pytest.approx(row["capacity_req_per_s"] / 0.772)


def test_capacity_is_monotone_in_the_slo() -> None:
    """A looser SLO never yields a lower capacity (same probes until attainments differ)."""
    s = spec()
    dep = deployment_for(s, Candidate("l40s", 1, max_num_seqs=64, max_num_batched_tokens=2048))
    base = bundled_trace("azure_conv").head(300)
    caps = [
        find_capacity(dep, base, Slo(ttft, tpot), 0.9).rate_per_s
        for ttft, tpot in ((0.3, 0.03), (0.6, 0.04), (1.0, 0.06), (3.0, 0.2))
    ]
    assert all(a <= b for a, b in itertools.pairwise(caps)), caps
    assert caps[-1] > caps[0], caps
    # A stricter attainment target is a tighter requirement too.
    slo = Slo(0.6, 0.04)
    assert (
        find_capacity(dep, base, slo, 0.99).rate_per_s
        <= find_capacity(dep, base, slo, 0.8).rate_per_s
    )


def test_capacity_meets_the_target_at_the_rate_it_reports() -> None:
    s = spec()
    dep = deployment_for(s, Candidate("h100_sxm", 1))
    base = bundled_trace("azure_conv").head(300)
    cap = find_capacity(dep, base, s.slo, 0.9)
    assert cap.feasible and cap.rate_per_s > 0
    assert cap.best is not None
    assert cap.best.summary(s.slo)["slo_attainment"] >= 0.9
    (at,) = [p for p in cap.probes if p.rate_per_s == cap.rate_per_s]
    assert at.attainment >= 0.9 and at.window_requests >= 900  # 1,000 expected (Poisson)
    # The next probe up missed, or the capacity is the highest rate probed: one search step
    # (3 %) below the service rate.
    above = [p for p in cap.probes if p.rate_per_s > cap.rate_per_s]
    if above:
        assert above[0].attainment < 0.9
    else:
        assert cap.rate_per_s == pytest.approx(cap.saturation_rate_per_s / 1.03)


def test_plan_ranks_and_marks_pareto_and_writes_parquet(tmp_path: Path) -> None:
    res = run_plan(spec(rate_per_s=20.0), SPACE, tmp_path, workers=1, quiet=True)
    assert (tmp_path / "plan.parquet").is_file()
    ok = res.feasible
    assert ok and ok[0]["rank"] == 1
    values = [r["goodput_per_dollar_hour"] for r in ok]
    assert values == sorted(values, reverse=True)
    assert any(r["pareto"] for r in ok)
    front = pareto_front(res.rows, "dollar_per_req_per_s", "ttft_p90_s")
    assert front and all(r["status"] == "ok" for r in front)
    # Memory layout is reported per candidate and adds up to no more than the device.
    for r in ok:
        assert r["weights_gb"] + r["kv_gb"] + r["reserve_gb"] <= r["device_gb"] + 1e-6
    assert res.cheapest is not None and res.cheapest.attainment >= 0.9
    assert res.fewest_devices is not None and res.fewest_devices.devices <= res.cheapest.devices


def test_resume_after_an_interruption_gives_the_same_table(tmp_path: Path) -> None:
    s = spec()
    full = run_plan(s, SPACE, tmp_path / "full", workers=1, quiet=True)
    # Interrupted run: only some candidates reach the store before the "kill".
    part = tmp_path / "part"
    first = run_plan(s, SPACE, part, workers=1, quiet=True, limit=2)
    assert first.evaluated == 2
    store = PlanStore(part / "store", s.key())
    (store.dir / "part-deadbeef.tmp").write_bytes(b"half a file")  # a crashed writer's leftover
    resumed = run_plan(s, SPACE, part, workers=1, quiet=True)
    assert resumed.reused == 2 and resumed.evaluated == len(full.feasible) + _infeasible(full) - 2

    def table(r: object) -> list[tuple]:
        rows = sorted(r.rows, key=lambda x: x["key"])  # type: ignore[attr-defined]
        return [(x["key"], x["status"], x.get("capacity_req_per_s"), x.get("rank")) for x in rows]

    assert table(resumed) == table(full)


def _infeasible(r: object) -> int:
    return sum(1 for x in r.rows if x["status"] == "infeasible")  # type: ignore[attr-defined]


def test_ray_and_local_runners_agree(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    s = spec()
    space = SearchSpace(
        devices=("h100_sxm",), tp=(1, 2), engines=("vllm",), batching=((256, 8192),)
    )
    local = run_plan(s, space, tmp_path / "local", workers=2, quiet=True)
    ray_res = run_plan(s, space, tmp_path / "ray", workers=2, ray_address="local", quiet=True)

    def caps(r: object) -> dict[str, float]:
        return {x["key"]: x["capacity_req_per_s"] for x in r.rows}  # type: ignore[attr-defined]

    assert caps(local) == caps(ray_res)
    assert len(caps(local)) == 2


def test_infeasible_slo_explains_the_closest_miss(tmp_path: Path) -> None:
    # A 5 ms TPOT is below any decode step of an 8B model on these GPUs.
    res = run_plan(spec(slo=Slo(1.0, 0.005)), SPACE, tmp_path, workers=1, quiet=True)
    assert res.winner is None
    miss = res.closest_miss()
    assert miss is not None
    assert "TPOT p90" in miss["reason"] and "5.0 ms target" in miss["reason"]


def test_rankings_handle_missing_values() -> None:
    rows = [
        {
            "status": "ok",
            "capacity_req_per_s": 2.0,
            "price_per_hour": 4.0,
            "goodput_per_dollar_hour": 0.5,
            "ttft_p90_s": 0.5,
            "tpot_p90_s": 0.05,
            "goodput_per_gpu": 2.0,
            "joules_per_token": 1.0,
        },
        {
            "status": "ok",
            "capacity_req_per_s": 1.0,
            "price_per_hour": 4.0,
            "goodput_per_dollar_hour": 0.25,
            "ttft_p90_s": 0.6,
            "tpot_p90_s": 0.06,
            "goodput_per_gpu": 1.0,
            "joules_per_token": 2.0,
        },
        {"status": "pruned:does_not_fit", "capacity_req_per_s": 0.0, "price_per_hour": math.nan},
    ]
    add_rankings(rows)
    assert rows[0]["rank"] == 1 and rows[0]["pareto"]
    assert rows[1]["rank"] == 2 and not rows[1]["pareto"]  # dominated on every objective
    assert rows[2]["rank"] == 0 and not rows[2]["pareto"]


def test_free_devices_rank_first_in_a_fixed_order() -> None:
    """A $0/h device (hardware already owned) serves its goodput at no cost: its rows rank
    ahead of every priced one, the larger goodput first, whatever order they came in (a NaN
    sort key used to scatter them)."""
    from servesim.planner.evaluate import per_dollar_hour

    assert per_dollar_hour(2.0, 4.0) == 0.5
    assert per_dollar_hour(2.0, 0.0) == math.inf
    assert per_dollar_hour(0.0, 0.0) == 0.0

    def row(label: str, cap: float, price: float) -> dict:
        return {
            "label": label,
            "status": "ok",
            "capacity_req_per_s": cap,
            "price_per_hour": price,
            "goodput_per_dollar_hour": per_dollar_hour(cap, price),
            "ttft_p90_s": 0.5,
            "tpot_p90_s": 0.05,
            "goodput_per_gpu": cap,
            "joules_per_token": 1.0,
        }

    rows = [row("h100 a", 8.0, 4.0), row("l40s a", 1.0, 0.0), row("h100 b", 9.0, 2.0)]
    rows += [row("l40s b", 3.0, 0.0), row("h100 c", 2.0, 4.0)]
    for order in (rows, rows[::-1], rows[2:] + rows[:2]):
        ranked = sorted(add_rankings([dict(r) for r in order]), key=lambda r: r["rank"])
        assert [r["label"] for r in ranked] == ["l40s b", "l40s a", "h100 b", "h100 a", "h100 c"]


def test_a_plans_key_follows_what_its_files_hold(tmp_path: Path) -> None:
    """Stored answers are reused by the question's key: editing a device file (a price) or a
    trace in place must give another key, or a rerun into the same folder would bring back
    rows priced from the old file; the same bytes under the same path keep it."""
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  l40s:\n    price_per_hour: 1.86\n")
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n")
    before = spec(devices_file=str(devices)).key()
    assert spec(devices_file=str(devices)).key() == before
    devices.write_text("devices:\n  l40s:\n    price_per_hour: 0.50\n")
    assert spec(devices_file=str(devices)).key() != before
    with_trace = spec(workload=WorkloadSpec(trace=str(trace))).key()
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,200,10\n")
    assert spec(workload=WorkloadSpec(trace=str(trace))).key() != with_trace


def test_a_workflow_plans_front_compares_what_its_rows_measure() -> None:
    """Workflow rows have no per-token latencies or energy; a missing objective used to end
    the comparison, so every row was marked Pareto-optimal. Rows are now compared on the
    objectives both measure: cost per workflow a second, the workflows' end-to-end tail and
    goodput per GPU."""

    def wf(label: str, cap: float, price: float, e2e: float, gpus: int) -> dict:
        return {
            "label": label,
            "status": "ok",
            "capacity_req_per_s": cap,
            "price_per_hour": price,
            "goodput_per_dollar_hour": cap / price,
            "e2e_p90_s": e2e,
            "goodput_per_gpu": cap / gpus,
        }

    rows = [
        wf("h100 tp2", 8.0, 8.0, 3.0, 2),  # $1.00/h per wf/s
        wf("l40s tp2", 2.0, 4.0, 3.5, 2),  # $2.00, slower tail, less per GPU: dominated
        wf("l40s tp1", 1.5, 1.0, 2.5, 1),  # $0.67 and the shortest tail: on the front
    ]
    add_rankings(rows)
    assert {r["label"]: r["pareto"] for r in rows} == {
        "h100 tp2": True,
        "l40s tp2": False,
        "l40s tp1": True,
    }
    # Rows that share no finite objective dominate nothing.
    lone = [
        {
            "status": "ok",
            "capacity_req_per_s": 1.0,
            "price_per_hour": math.nan,
            "goodput_per_dollar_hour": 0.0,
        }
    ]
    lone.append({**lone[0]})
    assert all(r["pareto"] for r in add_rankings(lone))


def test_the_closest_miss_is_the_one_nearest_the_targets() -> None:
    """When every candidate misses even at light load, the closest miss was whichever came
    first; it is now the one whose tails were least over the targets."""
    from servesim.planner.plan import PlanResult

    def miss(label: str, ttft: float, tpot: float) -> dict:
        probe = {"attainment": 0.0, "ttft_p90_s": ttft, "tpot_p90_s": tpot}
        return {"label": label, "status": "infeasible", "probes": json.dumps([probe])}

    far, near = miss("l40s", 4.0, 0.30), miss("h100", 1.5, 0.06)
    s = spec(slo=Slo(1.0, 0.05))
    for rows in ([far, near], [near, far]):
        res = PlanResult(
            spec=s, rows=rows, pruned=[], pruned_by_rule={}, evaluated=2, reused=0, wall_s=0.0
        )
        assert res.closest_miss()["label"] == "h100"  # type: ignore[index]


def test_plan_refuses_bad_questions(tmp_path: Path) -> None:
    with pytest.raises(ServesimError, match="Unknown device"):
        run_plan(spec(), SearchSpace(devices=("h900",)), tmp_path, workers=1, quiet=True)
    with pytest.raises(ServesimError, match="Unknown model"):
        run_plan(spec(model="nope"), SPACE, tmp_path, workers=1, quiet=True)


def test_probes_are_stored_for_goodput_curves(tmp_path: Path) -> None:
    res = run_plan(spec(), SPACE, tmp_path, workers=1, quiet=True)
    probes = json.loads(res.winner["probes"])
    assert len(probes) >= 2  # at least the lightest load and the capacity
    assert {"requests", "window_requests"} <= set(probes[0])
    rates = [p["rate_per_s"] for p in probes]
    assert rates == sorted(rates)


def test_a_killed_plan_keeps_finished_candidates_and_resumes(tmp_path: Path) -> None:
    """SIGKILL mid-search: parts already written survive and a rerun only does the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "plan"
    args = [sys.executable, "-m", "servesim.cli.main", "plan", "--model", "meta-llama/Llama-3.1-8B"]
    args += ["--gpus", "h100_sxm,a100_sxm,l40s,l4", "--tp", "1,2", "--engines", "vllm,sglang"]
    args += ["--pd-ratios", "none"]
    args += ["--batching", "64:2048,256:8192,512:4096", "--num-requests", "300", "--workers", "1"]
    args += ["--out", str(out), "--ttft-slo", "1", "--tpot-slo", "0.05", "--rate", "5"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    parts: list[Path] = []
    while time.time() < deadline and len(parts) < 2:
        time.sleep(0.05)
        parts = list(out.glob("store/*/part-*.parquet"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(parts) >= 2, "the plan never wrote a result before the deadline"
    survived = {p.name for p in out.glob("store/*/part-*.parquet")}
    assert not (out / "plan.parquet").exists()  # it was killed before the end
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(survived)} reused from the store" in done.stdout.replace("\n", " ")
    assert (out / "plan.parquet").is_file() and (out / "report.html").is_file()


def test_disaggregated_candidates_are_searched_and_exported(tmp_path: Path) -> None:
    """P:D ratios and per-phase TP enter the search; a disaggregated pick exports two pools."""
    import yaml

    from servesim.report.export import write_exports

    space = SearchSpace(
        devices=("h100_sxm",),
        tp=(1, 2),
        engines=("vllm",),
        batching=((256, 8192),),
        pd_ratios=((1, 1), (1, 2)),
    )
    # Tight TPOT on long prompts: prefill chunks stretch colocated decode steps.
    s = spec(slo=Slo(1.0, 0.02), rate_per_s=20.0)
    res = run_plan(s, space, tmp_path, workers=1, quiet=True)
    dis = [r for r in res.rows if r["mode"] == "disaggregated"]
    assert len(dis) == 2 * 2 * 2  # prefill TP x decode TP x ratio
    r = next(
        x for x in dis if x["prefill_tp"] == 1 and x["decode_tp"] == 1 and x["decode_replicas"] == 2
    )
    assert r["devices"] == 3 and r["price_per_hour"] == pytest.approx(3 * 7.52)
    assert r["goodput_per_gpu"] == pytest.approx(r["capacity_req_per_s"] / 3)
    # Export the best disaggregated row as if it had won.
    best = max(dis, key=lambda x: x["goodput_per_dollar_hour"])
    res.cheapest = res.fewest_devices = None
    res.cheapest_by_engine = {}
    for row in res.rows:
        row["rank"] = 1 if row is best else (2 if row.get("rank") else 0)
    files = write_exports(res, tmp_path / "exports")
    assert {"launch_vllm_prefill", "launch_vllm_decode", "launch_sglang_decode"} <= set(files)
    assert "--kv-transfer-config" in files["launch_vllm_prefill"].read_text()
    assert "--disaggregation-mode decode" in files["launch_sglang_decode"].read_text()
    docs = [d for d in yaml.safe_load_all(files["k8s"].read_text()) if d]
    assert [d["metadata"]["name"].rsplit("-", 1)[-1] for d in docs] == ["prefill", "decode"]
    assert docs[1]["spec"]["replicas"] == best["decode_replicas"]


def test_sizing_verifies_a_fleet_per_engine_and_each_script_launches_its_own(
    tmp_path: Path,
) -> None:
    """The launch scripts come from fleets planned with their own engine's scheduler."""
    import shlex

    from servesim.report.export import write_exports

    space = SearchSpace(
        devices=("h100_sxm",), tp=(1,), engines=("vllm", "sglang"), batching=((256, 8192),)
    )
    res = run_plan(spec(rate_per_s=20.0), space, tmp_path, workers=1, quiet=True)
    assert set(res.cheapest_by_engine) == {"vllm", "sglang"}
    for engine, sz in res.cheapest_by_engine.items():
        assert sz.candidate.engine == engine and sz.verified and sz.attainment >= 0.9
    assert res.cheapest in res.cheapest_by_engine.values()
    files = write_exports(res, tmp_path / "out")
    for engine, sz in res.cheapest_by_engine.items():
        text = files[f"launch_{engine}"].read_text()
        assert f"planned for {engine}: the lowest-$/h {engine} deployment verified" in text
        assert f"run {sz.replicas} replica(s)" in text
        argv = shlex.split(text.split("\nexec ", 1)[1].replace("\\\n", " "))
        seqs = "--max-num-seqs" if engine == "vllm" else "--max-running-requests"
        assert argv[argv.index(seqs) + 1] == str(sz.candidate.max_num_seqs)


def test_a_stored_part_that_does_not_read_is_evaluated_again(tmp_path: Path) -> None:
    """A part cut short by a crash (a rename that reached the disk before the data did) was
    counted as done, so every rerun skipped its candidate, and then dropped from the rows as
    unreadable: the candidate vanished from the plan while the reused count included it."""
    store = PlanStore(tmp_path, "plan")
    store.add({"key": "good", "status": "ok"})
    (store.dir / "part-cut.parquet").write_bytes(b"")
    assert store.done_keys() == {"good"}
    assert [r["key"] for r in store.rows()] == ["good"]
    s = spec()
    first = run_plan(s, SPACE, tmp_path / "p", workers=1, quiet=True, limit=1)
    part = next((tmp_path / "p" / "store").glob("*/part-*.parquet"))
    part.write_bytes(part.read_bytes()[:20])
    again = run_plan(s, SPACE, tmp_path / "p", workers=1, quiet=True, limit=1)
    assert again.evaluated == 1 and again.reused == 0
    assert [r["key"] for r in again.rows if r["status"] != "pruned"] == [
        r["key"] for r in first.rows if r["status"] != "pruned"
    ]


def test_a_large_fleet_is_checked_as_a_part_of_it_at_its_share_of_the_rate() -> None:
    """Sizing for 100 times a replica's capacity simulated all ~100 replicas over a window of
    the whole rate (5,000 replicas and millions of requests at 100,000 req/s: in effect a
    hang). A fleet past MAX_SIMULATED_REPLICAS is checked as that many replicas at their share
    of the rate, which under least-loaded routing is the harder case; the fleet's size, devices
    and price are the whole fleet's."""
    from servesim.planner.evaluate import evaluate
    from servesim.planner.sizing import MAX_SIMULATED_REPLICAS, verified_sizings

    s = spec()
    row = evaluate(s, Candidate("h100_sxm", 1))
    assert row["status"] == "ok"
    rate = 100 * row["capacity_req_per_s"]
    (sized,) = verified_sizings(s, [row], rate, top=1, engines=())
    assert sized.replicas >= 100 and sized.simulated_replicas == MAX_SIMULATED_REPLICAS
    assert sized.devices == sized.replicas
    assert sized.price_per_hour == pytest.approx(sized.replicas * row["price_per_hour"])
    assert sized.attainment >= s.target
