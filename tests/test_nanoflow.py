"""NanoFlow's intra-device overlap: nano-batches overlap compute-, memory- and network-bound
operators, which pays at large batch (the paper: 1.91x throughput on LLaMA-2-70B over 8 A100s)
and not at small batch, where every nano-batch would re-read the weights."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servesim.errors import ServesimError
from servesim.predictor.nanoflow import NanoFlowPredictor
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import Fixed, synthetic
from servesim.spec.devices import Catalog
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

LLAMA70 = load_model("meta-llama/Llama-3.1-70B")
A100 = Catalog().get("a100_sxm")


def test_overlap_pays_at_large_batch_and_not_at_small() -> None:
    """Decode steps at 1k context on 8 A100s: no gain up to 64 sequences (memory-bound
    throughout), 1.5-2x at 1,024; an overlapped step never exceeds the sequential one nor
    undercuts its busiest resource."""
    p = NanoFlowPredictor(LLAMA70, A100, Parallel(tp=8))
    gains = {}
    for n in (1, 8, 64, 256, 1024):
        seq, over = p.sequential_s(n, n * 1024, ()), p.step_s(n, n * 1024, ())
        assert over <= seq + 1e-12
        gains[n] = seq / over
    assert gains[1] == gains[8] == gains[64] == 1.0, gains
    assert 1.5 < gains[1024] < 2.0, gains
    assert gains[1024] > gains[256] >= gains[64], gains


def test_simulated_throughput_gain_at_saturation() -> None:
    """A saturated decode-heavy workload (offline throughput, as the paper measures): more
    output tokens per second with the overlap; a light load gains next to nothing."""
    dep = Deployment(model=LLAMA70, device=A100, parallel=Parallel(tp=8), max_num_seqs=1024)
    heavy = synthetic(3000, 1000.0, Fixed(512), Fixed(512), seed=1)
    light = synthetic(60, 0.5, Fixed(512), Fixed(512), seed=1)
    out = {}
    for name, w in (("heavy", heavy), ("light", light)):
        base = simulate(dep, w).summary()["throughput_output_tok_per_s"]
        nano = simulate(replace(dep, nanoflow=True), w).summary()["throughput_output_tok_per_s"]
        out[name] = nano / base
    assert out["heavy"] > 1.3, out
    assert out["light"] == pytest.approx(1.0, abs=0.02), out


def test_nanoflow_is_refused_with_pipeline_parallelism_and_other_variants() -> None:
    with pytest.raises(ServesimError, match="pipeline"):
        NanoFlowPredictor(LLAMA70, A100, Parallel(tp=4, pp=2))
    from servesim.spec.finetune import FineTuneJob

    dep = Deployment(model=LLAMA70, device=A100, parallel=Parallel(tp=8), nanoflow=True)
    with pytest.raises(ServesimError, match="not modelled together"):
        replace(dep, finetune=FineTuneJob(8)).predictor()
