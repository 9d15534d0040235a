"""Simulator speed with speculative decoding: DeepSeek-R1 with MTP on 8 B200 at thousands of
concurrent clients, against the same simulation without speculation.

    PYTHONPATH=src .venv/bin/python benchmarks/speculative_speed.py [--clients 3000]
        [--rounds 3] [--output 8192] [--k 3]

A closed loop of `--clients` clients (1024-token prompts, `--output` output tokens, `--rounds`
requests each) on SGLang with attention DP 8 and EP 8, simulated without and with MTP drafting
k tokens per step. Prints each run's CPU and wall seconds and TPOT; the last line is one JSON
object {"cpu_s": [plain, spec], "ratio": spec / plain}. The claim checked: speculation costs
the simulator little more than plain decoding (sequences' steps are drawn in O(√tokens) at
join, the group's sums move in O(1) per step).
"""

from __future__ import annotations

import argparse
import json
import time

from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.speculative import SpeculativeDecoding


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output", type=int, default=8192)
    ap.add_argument("--k", type=int, default=3)
    a = ap.parse_args()
    model = load_model("deepseek-ai/DeepSeek-R1")
    device, engine = get_device("b200_sxm"), get_engine("sglang")
    par = Parallel(tp=8, dp=8, ep=8)
    cpu = []
    for sd in (None, SpeculativeDecoding("mtp", a.k)):
        dep = Deployment(model, device, par, engine, max_num_seqs=4096, speculative=sd)
        loop = ClosedLoop(a.clients, a.rounds * a.clients, Fixed(1024), Fixed(a.output))
        t0, c0 = time.perf_counter(), time.process_time()
        tpot = simulate(dep, closed_loop=loop).summary()["tpot_s"]["p50"]
        cpu.append(time.process_time() - c0)
        print(
            f"{'mtp' + str(a.k) if sd else 'plain':6s} cpu {cpu[-1]:6.2f} s  wall "
            f"{time.perf_counter() - t0:6.2f} s  TPOT p50 {tpot * 1e3:7.2f} ms"
        )
    print(json.dumps({"cpu_s": [round(c, 2) for c in cpu], "ratio": round(cpu[1] / cpu[0], 2)}))


if __name__ == "__main__":
    main()
