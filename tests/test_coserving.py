"""Co-serving a fine-tuning job with inference (FlexLLM): training tokens ride along in each
iteration at their training cost; more tokens per iteration train faster and eventually break
the inference SLO, so the budget is the largest that keeps it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servesim.errors import ServesimError
from servesim.planner.finetune_budget import max_finetune_budget
from servesim.predictor.coserving import CoServingPredictor
from servesim.predictor.iteration import Predictor
from servesim.sim.coserving import finetune_throughput
from servesim.sim.deployment import Deployment
from servesim.sim.metrics import Slo
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import LogNormal, synthetic
from servesim.spec.devices import Catalog
from servesim.spec.finetune import FineTuneJob
from servesim.spec.model import load_model

LLAMA = load_model("meta-llama/Llama-3.1-8B")
H100 = Catalog().get("h100_sxm")
DEP = Deployment(model=LLAMA, device=H100)
SLO = Slo(0.5, 0.05)


def test_an_iteration_carries_its_training_tokens_at_twice_their_forward_cost() -> None:
    """PEFT trains a token for 2 forward passes (frozen base: no weight gradients): 64
    training tokens beside 8 decodes add 2 × (dense work of 72 tokens − of 8, plus a 64-token
    causal attention)."""
    base = Predictor(LLAMA, H100)
    co = CoServingPredictor(LLAMA, H100, job=FineTuneJob(64))
    base.dense_s(72, 1)
    extra = base._dense_tab[72] - base._dense_tab[8] + base.prefill_attn_s(64, 0)
    assert co.step_s(8, 8 * 1024, ()) == pytest.approx(base.step_s(8, 8 * 1024, ()) + 2 * extra)
    assert CoServingPredictor(LLAMA, H100, job=FineTuneJob(0)).step_s(8, 8192, ()) == (
        pytest.approx(base.step_s(8, 8192, ()))
    )
    full = CoServingPredictor(LLAMA, H100, job=FineTuneJob(64, train_factor=3.0))
    assert full.step_s(8, 8192, ()) - base.step_s(8, 8192, ()) == pytest.approx(3 * extra)


def test_more_training_tokens_train_faster_until_the_inference_slo_breaks() -> None:
    """FlexLLM's trade-off at 20 req/s on one H100: attainment never rises with the budget,
    training throughput always does; the largest budget keeping 90 % attainment (256 tokens per
    iteration here) still trains at a third or more of the GPU's training-alone rate, and at a
    light 2 req/s the budget reaches nearly all of it (FlexLLM: > 76 % of peak progress at peak
    demand with its online scheduler, which a fixed budget can only approach)."""
    heavy = synthetic(1500, 20.0, LogNormal(500, 1500), LogNormal(150, 400), seed=2)
    att, tput = [], []
    for k in (0, 64, 256, 512):
        res = simulate(replace(DEP, finetune=FineTuneJob(k)), heavy)
        att.append(res.summary(SLO)["slo_attainment"])
        tput.append(finetune_throughput(res)["finetune_tok_per_s"])
    assert att == sorted(att, reverse=True) and att[0] > 0.9 > att[-1], att
    assert tput == sorted(tput) and tput[-1] > 3 * tput[1], tput
    best = max_finetune_budget(DEP, heavy, SLO, FineTuneJob(0))
    assert best["tokens_per_iter"] == 256, best["tried"]
    assert best["best"]["slo_attainment"] >= 0.9 and best["best"]["share_of_alone"] > 0.33
    light = synthetic(1500, 2.0, LogNormal(500, 1500), LogNormal(150, 400), seed=2)
    easy = max_finetune_budget(DEP, light, SLO, FineTuneJob(0))
    assert easy["best"]["share_of_alone"] > 0.9, easy["tried"]


def test_bad_jobs_and_runs_without_one_are_refused() -> None:
    with pytest.raises(ServesimError):
        FineTuneJob(-1)
    with pytest.raises(ServesimError, match="train_factor"):
        FineTuneJob(16, train_factor=10.0)
    res = simulate(DEP, synthetic(20, 1.0, LogNormal(100, 200), LogNormal(20, 40), seed=1))
    with pytest.raises(ServesimError, match="no fine-tuning job"):
        finetune_throughput(res)
    with pytest.raises(ServesimError, match="not modelled together"):
        from servesim.spec.adaptive_depth import LayerSkipping

        replace(DEP, finetune=FineTuneJob(8), layer_skipping=LayerSkipping(0.2)).predictor()


def test_cli_simulate_reports_the_finetuning_job(tmp_path) -> None:
    import json

    from servesim.cli.main import main

    out = tmp_path / "ft"
    args = ["simulate", "--rate", "5", "--num-requests", "80", "--out", str(out)]
    assert main([*args, "--finetune-tokens", "64"]) == 0
    ft = json.loads((out / "summary.json").read_text())["finetune"]
    assert ft["finetune_tok_per_s"] > 0 and 0 < ft["share_of_alone"] <= 1.0
    assert main([*args, "--finetune-full"]) == 2


def test_training_tokens_pass_through_every_pipeline_stage() -> None:
    """Under pipeline parallelism an iteration is a stage's time × pp (every stage runs its
    layers in turn), so the training tokens' extra time is the same with pp 2 as with pp 1:
    each stage runs half the layers for them, twice over; not half of it."""
    from servesim.spec.parallel import Parallel

    job = FineTuneJob(4096)
    extra = {}
    for pp in (1, 2):
        par = Parallel(pp=pp)
        base = Predictor(LLAMA, H100, par, latency_model="roofline")
        co = CoServingPredictor(LLAMA, H100, par, latency_model="roofline", job=job)
        extra[pp] = co.step_s(64, 64 * 1000, ()) - base.step_s(64, 64 * 1000, ())
    assert extra[2] == pytest.approx(extra[1], rel=0.05)
