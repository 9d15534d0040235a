"""Simulator speed with speculative decoding: DeepSeek-R1 with MTP on 8 B200 at thousands of
concurrent clients, against the same simulation without speculation.

    PYTHONPATH=src .venv/bin/python benchmarks/speculative_speed.py [--clients 3000]
        [--rounds 3] [--output 8192] [--k 3] [--silicon-rows 284,1305]

A closed loop of `--clients` clients (1024-token prompts, `--output` output tokens, `--rounds`
requests each) on SGLang with attention DP 8 and EP 8, simulated without and with MTP drafting
k tokens per step. Prints each run's CPU and wall seconds and TPOT; the last line is one JSON
object {"cpu_s": [plain, spec], "ratio": spec / plain}. The claim checked: speculation costs
the simulator little more than plain decoding (sequences' steps are drawn in O(√tokens) at
join, the group's sums move in O(1) per step).

`--silicon-rows N,M` times rows of data/aic_e2e/silicon_sample_dev_more.csv instead, as
benchmarks/silicon.py simulates them (their layout recovered from the InferenceX configs), with
their MTP draft length and with it set to 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from servesim.errors import counts, script_exit
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
    ap.add_argument("--silicon-rows", help="comma-separated rows of the dev CSV to time instead")
    a = ap.parse_args()
    if a.silicon_rows:
        silicon_rows(counts(a.silicon_rows, "--silicon-rows"))
        return
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


def silicon_rows(indices: list[int]) -> None:
    """CPU seconds of benchmark rows simulated with and without their MTP drafting."""
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    import silicon  # a sibling script, not a package

    from servesim.spec.devices import Catalog

    with open(here.parent / "data" / "aic_e2e" / "silicon_sample_dev_more.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for i in indices:
        row, source, refusal = silicon.recovered_layout(rows[i])
        if not refusal and not source:
            row, source, refusal = silicon.single_node_config(row)
        k = row.get("speculative_num_draft_tokens", "0")
        cpu = []
        for draft in (k, "0"):
            r = dict(row, speculative_num_draft_tokens=draft)
            c0 = time.process_time()
            _, tpot = silicon.simulate_row(r, Catalog(), 10)
            cpu.append(time.process_time() - c0)
            print(f"row {i} ({silicon.concurrency_of(r)} clients) k={draft}: cpu {cpu[-1]:.2f} s, "
                  f"TPOT {tpot:.3f} ms")  # fmt: skip
        out[i] = {"cpu_s": [round(c, 2) for c in cpu], "ratio": round(cpu[0] / cpu[1], 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    raise SystemExit(script_exit(main))
