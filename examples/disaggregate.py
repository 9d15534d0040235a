"""Colocated or disaggregated? Four H100s serving long prompts with a tight TPOT target.

Two colocated TP2 replicas against one TP2 prefill replica feeding one TP2 decode replica over
NVLink (DistServe's setting): the same GPUs, a prompt-heavy synthetic workload at 18 req/s and
TPOT ≤ 15 ms. Colocated, long prefills stall the decodes batched with them (TPOT's tail grows);
disaggregated, decodes never wait for a prefill, at the price of a longer TTFT.

    python examples/disaggregate.py
"""

import servesim

model = servesim.load_model("meta-llama/Llama-3.1-8B")
h100 = servesim.get_device("h100_sxm")
tp2 = servesim.Parallel(tp=2)
work = servesim.synthetic(1500, 18.0, prompt="lognormal:3000:6000", output="lognormal:150:400")
slo = servesim.Slo(ttft_s=2.0, tpot_s=0.015)

colocated = servesim.Deployment(model, h100, parallel=tp2, replicas=2)
pool = servesim.Deployment(model, h100, parallel=tp2)
disaggregated = servesim.DisaggDeployment(prefill=pool, decode=pool, link="nvlink")

for deployment in (colocated, disaggregated):
    s = servesim.simulate(deployment, work, router="least_loaded").summary(slo)
    print(
        f"{deployment.label()}\n    TTFT p90 {s['ttft_s']['p90']:5.2f} s  "
        f"TPOT p90 {s['tpot_s']['p90'] * 1e3:5.1f} ms  SLO met by {s['slo_attainment']:.0%}"
    )
