"""A small plan: the cheapest way to serve Llama-3.1-8B at 5 req/s with TTFT ≤ 1 s, TPOT ≤ 60 ms.

Searches H100 and L40S at TP 1 and 2 with vLLM-style scheduling and one batching setting,
finds each candidate's capacity by simulating the bundled Azure trace at increasing rates, and
sizes the cheapest verified fleet. Results go to a temporary folder.

    python examples/plan_small.py
"""

import tempfile

import servesim

with tempfile.TemporaryDirectory() as out:
    result = servesim.plan(
        "meta-llama/Llama-3.1-8B",
        slo=servesim.Slo(ttft_s=1.0, tpot_s=0.06),
        workload=servesim.WorkloadSpec(trace="azure_conv", num_requests=1000),
        space=servesim.SearchSpace(
            devices=("h100_sxm", "l40s"), tp=(1, 2), engines=("vllm",), batching=((256, 8192),)
        ),
        rate_per_s=5.0,
        out_dir=out,
        workers=1,
    )
    for row in result.feasible:
        print(f"#{row['rank']} {row['label']:<58} {row['capacity_req_per_s']:6.2f} req/s")
    best = result.cheapest
    if best is not None:
        print(
            f"cheapest for 5 req/s: {best.replicas} x {best.candidate.label()} "
            f"(${best.price_per_hour:.2f}/h)"
        )
