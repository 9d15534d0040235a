"""Draft trees and Mirror-SD against chain speculative decoding, by decode batch.

    PYTHONPATH=src .venv/bin/python benchmarks/speculative_tree_mirror.py [--model ID]
        [--device DEV] [--tp N] [--method eagle] [--k 3] [--width 4] [--mirror-devices 1]
        [--batches 1,4,16,64,256] [--output 256]

For each decode batch B, a closed loop of B clients (2 requests each, 512-token prompts) is
simulated without speculation, with a chain of k drafts, with a tree of `--width` candidates
per depth (EAGLE-2/SGLang topk), and with the chain drafted Mirror-SD style on
`--mirror-devices` devices of the same type beside each replica. Prints the simulator's median
TPOT speedup over no speculation for each, and the draft's share of a chain step. The claims
checked: a tree accepts more per step but verifies 1 + k·w tokens, so it beats the chain at
small batch and loses as the batch grows; Mirror-SD gains about the draft's share of the step,
most where that share is large. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

from servesim.errors import counts, script_exit
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.spec.devices import get_device
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    ap.add_argument("--device", default="h100_sxm")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--method", default="eagle")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--mirror-devices", type=int, default=1)
    ap.add_argument("--batches", default="1,4,16,64,256")
    ap.add_argument("--output", type=int, default=256)
    a = ap.parse_args()
    model, device, par = load_model(a.model), get_device(a.device), Parallel(tp=a.tp)
    kinds = {
        "chain": SpeculativeDecoding(a.method, a.k),
        "tree": SpeculativeDecoding(a.method, a.k, tree_widths=(a.width,)),
        "mirror": SpeculativeDecoding(
            a.method, a.k, mirror_device=device, mirror_devices=a.mirror_devices
        ),
    }
    deps = {"plain": Deployment(model, device, par, max_num_seqs=1024)}
    deps |= {n: Deployment(model, device, par, max_num_seqs=1024, speculative=sd)
             for n, sd in kinds.items()}  # fmt: skip
    for n, sd in kinds.items():
        print(f"{n:6s} {sd.label():14s} {sd.expected_tokens_per_step:.3f} tokens per step, "
              f"{sd.verify_tokens} verified per sequence")  # fmt: skip
    chain_pred = deps["chain"].predictor()
    print(f"{'batch':>5} {'draft%':>7} " + " ".join(f"{n + ' x':>9}" for n in kinds))
    out: dict[str, list] = {"batch": [], "draft_share": []} | {n: [] for n in kinds}
    for b in counts(a.batches, "--batches", 1):
        tpot = {}
        for name, dep in deps.items():
            loop = ClosedLoop(b, 2 * b, Fixed(512), Fixed(a.output))
            tpot[name] = simulate(dep, closed_loop=loop).summary()["tpot_s"]["p50"]
        ctx = b * (512 + a.output // 2)
        share = chain_pred.draft_s(b, ctx) / chain_pred.step_s(b, ctx, ())
        out["batch"].append(b)
        out["draft_share"].append(round(share, 3))
        for n in kinds:
            out[n].append(round(tpot["plain"] / tpot[n], 2))
        print(f"{b:5d} {share:7.1%} " + " ".join(f"{out[n][-1]:9.2f}" for n in kinds))
    print(json.dumps(out))


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
