"""Expert popularity and placement: an MoE layer runs at its busiest EP rank's load, so skew
raises step time in proportion to that rank's share, and EPLB's replicas (or MoETuner-style
balanced packing) win most of it back."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servesim.errors import ServesimError
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.spec.devices import Catalog
from servesim.spec.expert_load import ExpertLoad
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

COUNTS = ((40.0, 20.0, 10.0, 10.0, 5.0, 5.0, 5.0, 5.0),)  # 8 experts, one layer, 100 tokens


def test_busiest_rank_share_hand_computed() -> None:
    """Two ranks. Contiguous: experts 0-3 carry 80 of 100. Balanced packing, four a rank:
    40 | 20+10+10... heaviest first: 40→A, 20→B, 10→B, 10→B, 5→B (B full at 4), 5,5,5→A: 55.
    EPLB with 2 redundant slots: copies go to expert 0 (40→20+20), then to the first of the
    tied 20s, expert 0 again (40/3 each); ten slots 20, 13.3×3, 10, 10, 5×4 packed heaviest
    first, five a rank: A 20+13.3+10 = 43.3, B 13.3+13.3+10+5+5 = 46.7 (full), A + 5 + 5."""
    assert ExpertLoad(counts=COUNTS).busiest_share(8, 2) == pytest.approx(0.80)
    assert ExpertLoad(placement="balanced", counts=COUNTS).busiest_share(8, 2) == pytest.approx(
        0.55
    )
    eplb = ExpertLoad(placement="eplb", redundant_experts=2, counts=COUNTS)
    assert eplb.busiest_share(8, 2) == pytest.approx(0.20 + 0.40 / 3 + 0.10 + 0.10)
    assert ExpertLoad().busiest_share(256, 8) == pytest.approx(1 / 8)  # uniform: balanced
    assert ExpertLoad(zipf=1.0).busiest_share(256, 1) == 1.0


def test_skew_raises_the_step_by_the_busiest_ranks_extra_share_and_eplb_recovers_it() -> None:
    """DeepSeek-V3 fp8 on 8 H200s (EP 8), a 12,000-token prefill, Zipf 1.0 popularity: the
    contiguous layout puts 2.1× the mean load on its busiest rank and the step grows by about
    (2.1 − 1) × the balanced expert GEMM time; EPLB with 32 redundant experts brings it back
    to within 1 %, balanced packing without replicas about halfway."""
    m = load_model("deepseek-ai/DeepSeek-V3").with_dtypes(weight="fp8", kv="fp8", expert="fp8")
    dep = Deployment(model=m, device=Catalog().get("h200_sxm"), parallel=Parallel(tp=8, ep=8))
    shape = ((12000, 0),)
    base = dep.predictor()
    t0 = base.step_s(0, 0, shape)
    experts = sum(
        op.seconds
        for op in base.ops(BatchShape(0, 0, shape))
        if op.name in ("moe_up_proj", "moe_down_proj", "moe_act")
    )
    skew = replace(dep, expert_load=ExpertLoad(zipf=1.0)).predictor()
    t1 = skew.step_s(0, 0, shape)
    assert skew._imbalance == pytest.approx(2.085, abs=0.01)
    assert t1 - t0 == pytest.approx((skew._imbalance - 1) * experts, rel=0.15), (t0, t1, experts)
    eplb = replace(dep, expert_load=ExpertLoad(1.0, "eplb", 32)).predictor().step_s(0, 0, shape)
    packed = replace(dep, expert_load=ExpertLoad(1.0, "balanced")).predictor().step_s(0, 0, shape)
    assert eplb == pytest.approx(t0, rel=0.01)
    assert t0 < packed < t1 and (t1 - packed) / (t1 - t0) > 0.3, (t0, packed, t1)


def test_bad_expert_loads_are_refused() -> None:
    with pytest.raises(ServesimError, match="placement"):
        ExpertLoad(placement="random")
    with pytest.raises(ServesimError, match="EPLB"):
        ExpertLoad(redundant_experts=8)
    with pytest.raises(ServesimError, match="multiple of ep"):
        ExpertLoad(1.0, "eplb", 3).busiest_share(256, 8)
    with pytest.raises(ServesimError, match="experts per layer"):
        ExpertLoad(counts=COUNTS).busiest_share(16, 2)


def test_cli_predict_takes_expert_skew_and_placement(capsys) -> None:
    import json

    from servesim.cli.main import main

    base = ["predict", "--model", "deepseek-ai/DeepSeek-V3", "--device", "h200_sxm"]
    base += ["--tp", "8", "--ep", "8", "--weight-dtype", "fp8", "--kv-dtype", "fp8"]
    base += ["--prefill", "6000", "--json"]
    times = {}
    for extra in (
        [],
        ["--expert-zipf", "1"],
        ["--expert-zipf", "1", "--expert-placement", "eplb", "--redundant-experts", "32"],
    ):
        assert main(base + extra) == 0
        times[len(extra)] = json.loads(capsys.readouterr().out)["totals"]["seconds"]
    assert times[2] > 1.1 * times[0] and times[6] == pytest.approx(times[0], rel=0.01), times
    assert main(["predict", "--decode-seqs", "4", "--expert-zipf", "1"]) == 2
    assert "no experts" in capsys.readouterr().err


def test_a_stated_skew_raises_the_measured_expert_time_too() -> None:
    """Under the measured tables (auto) a stated popularity scales the measured MoE layer by
    the busiest rank's extra load as the roofline prices it, so skew is never cheaper than the
    tables' own routing and EPLB with enough replicas gives that routing back."""
    m = load_model("deepseek-ai/DeepSeek-V3").with_dtypes(weight="fp8", kv="fp8", expert="fp8")
    dep = Deployment(
        model=m,
        device=Catalog().get("h200_sxm"),
        parallel=Parallel(tp=8, ep=8),
        latency_model="auto",
    )
    shape = BatchShape(0, 0, ((6000, 0),))

    def experts(d: Deployment) -> tuple[float, set[str]]:
        ops = [o for o in d.predictor().ops(shape) if o.name in ("moe_up_proj", "moe_down_proj")]
        return sum(o.seconds for o in ops), {o.provenance for o in ops}

    base, prov = experts(dep)
    assert prov <= {"measured", "interpolated"}
    skewed, prov_s = experts(replace(dep, expert_load=ExpertLoad(zipf=1.0)))
    assert prov_s == prov
    roof = replace(dep, latency_model="roofline")
    r0 = experts(roof)[0]
    r1 = experts(replace(roof, expert_load=ExpertLoad(zipf=1.0)))[0]
    assert skewed / base == pytest.approx(r1 / r0, rel=1e-6) and skewed > 1.5 * base
    eplb = experts(replace(dep, expert_load=ExpertLoad(1.0, "eplb", 32)))[0]
    assert eplb == pytest.approx(base, rel=0.02)


def test_a_rank_with_fewer_experts_than_top_k_still_gets_its_share_of_the_routed_rows() -> None:
    """Mixtral (8 experts, top-2) on 8 H100s at EP 8: each rank holds one expert, yet a
    quarter of the 8,192 tokens' 16,384 choices (T·k/EP = 2,048 rows) reach it. The rows were
    taken as T/EP · min(k, experts a rank), half that, so the layer priced at EP 8 in half its
    EP 4 time with the same FLOPs (1.6 PFLOP/s on a 989 TFLOP/s part). Every EP degree now
    runs the same FLOPs over the same devices, at the same roofline time."""
    model = load_model("mistralai/Mixtral-8x7B-v0.1")
    h100 = Catalog().get("h100_sxm")
    up = {}
    for ep in (1, 4, 8):
        par = Parallel(tp=8, ep=ep)
        dep = Deployment(model=model, device=h100, parallel=par, latency_model="roofline")
        cost = dep.predictor().iteration(BatchShape(prefill=((8192, 0),)), breakdown=True)
        up[ep] = next(op for op in cost.ops if op.name == "moe_up_proj")
    flops = {ep: t.flops for ep, t in up.items()}
    assert flops[1] == pytest.approx(flops[8]) and flops[4] == pytest.approx(flops[8])
    assert up[8].seconds == pytest.approx(up[4].seconds, rel=0.02)
    peak = h100.peak_flops_per_s["bf16"]
    assert up[8].flops / 8 / up[8].seconds < peak  # per device, below the tensor-core peak
