"""Speculative decoding against decode batch: DeepSeek-R1 with its MTP head on 8 B200 (SGLang).

    PYTHONPATH=src .venv/bin/python benchmarks/speculative.py [--k 3] [--prompt 1024]
        [--output 512] [--batches 1,2,4,...,512]

For each decode batch B, a closed loop of B clients (each sending 2 requests of `--prompt`
prompt and `--output` output tokens) is simulated without speculation and with MTP drafting k
tokens per step at the sourced default acceptance (`spec.speculative`: 0.85 for the first
position from the DeepSeek-V3 report, 0.63 after). Prints per batch: the predictor's decode step
without and with speculation (draft and verify), its speedup (TPOT = step / tokens per step),
and the simulator's median TPOT both ways and their ratio. The claim checked: the speedup is
large at batch 1, where a step is bound by reading the weights, and shrinks as the batch grows
and the verify pass of B·(k+1) tokens turns compute-bound. The last line is one JSON object
{"batch": [...], "speedup": [...]} with the simulator's TPOT without / with speculation.
"""

from __future__ import annotations

import argparse
import json
import time

from servesim.errors import counts, script_exit
from servesim.predictor.speculative import SpeculativePredictor
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deepseek-ai/DeepSeek-R1")
    ap.add_argument("--device", default="b200_sxm")
    ap.add_argument("--tp", type=int, default=8)
    ap.add_argument("--engine", default="sglang")
    ap.add_argument("--k", type=int, default=3, help="MTP draft tokens per step")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--output", type=int, default=512)
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    a = ap.parse_args()
    model = load_model(a.model)
    device = get_device(a.device)
    engine = get_engine(a.engine)
    par = Parallel(tp=a.tp)
    sd = SpeculativeDecoding("mtp", a.k)
    tau = sd.expected_tokens_per_step
    base = Deployment(model, device, par, engine, max_num_seqs=1024)
    spec = Deployment(model, device, par, engine, max_num_seqs=1024, speculative=sd)
    plain_pred, spec_pred = base.predictor(), spec.predictor()
    assert isinstance(spec_pred, SpeculativePredictor)
    print(
        f"{model.name} on {a.tp}x {device.name} {engine.name}, MTP k={a.k}, acceptance "
        f"{','.join(f'{x:g}' for x in sd.acceptance)} → {tau:.3f} tokens per step; "
        f"prompt {a.prompt}, output {a.output}"
    )
    print(
        f"{'batch':>5} {'step ms':>8} {'draft ms':>9} {'verify ms':>9} {'pred x':>7} "
        f"{'TPOT ms':>8} {'spec TPOT':>9} {'sim x':>6} {'wall s':>6}"
    )
    batches, speedups = [], []
    for b in counts(a.batches, "--batches", 1):
        ctx = b * (a.prompt + a.output // 2)  # mid-generation context
        step = plain_pred.step_s(b, ctx, ())
        spec_step = spec_pred.step_s(b, ctx, ())
        draft = spec_pred.draft_s(b, ctx)
        pred_x = step / (spec_step / tau)
        tpots = []
        t0 = time.perf_counter()
        for dep in (base, spec):
            loop = ClosedLoop(b, 2 * b, Fixed(a.prompt), Fixed(a.output))
            tpots.append(simulate(dep, closed_loop=loop).summary()["tpot_s"]["p50"])
        wall = time.perf_counter() - t0
        sim_x = tpots[0] / tpots[1]
        batches.append(b)
        speedups.append(round(sim_x, 4))
        print(
            f"{b:>5} {step * 1e3:>8.2f} {draft * 1e3:>9.2f} {(spec_step - draft) * 1e3:>9.2f} "
            f"{pred_x:>7.2f} {tpots[0] * 1e3:>8.2f} {tpots[1] * 1e3:>9.2f} {sim_x:>6.2f} "
            f"{wall:>6.1f}"
        )
    print(json.dumps({"batch": batches, "speedup": speedups}))


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
