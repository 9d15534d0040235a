"""Serve a real trace on two deployments and compare what users would see.

The bundled Azure LLM conversation trace (first 2,000 requests), rescaled to 8 requests/s, on
one H100 and on two L40S replicas of Llama-3.1-8B; an SLO of TTFT ≤ 1 s and TPOT ≤ 50 ms.

    python examples/simulate_trace.py
"""

import servesim

model = servesim.load_model("meta-llama/Llama-3.1-8B")
trace = servesim.bundled_trace("azure_conv").head(2000).scaled_to_rate(8.0)
slo = servesim.Slo(ttft_s=1.0, tpot_s=0.05)

for deployment in (
    servesim.Deployment(model, servesim.get_device("h100_sxm")),
    servesim.Deployment(model, servesim.get_device("l40s"), replicas=2),
):
    s = servesim.simulate(deployment, trace, router="least_loaded").summary(slo)
    print(
        f"{deployment.label():<40} TTFT p90 {s['ttft_s']['p90'] * 1e3:6.0f} ms  "
        f"TPOT p90 {s['tpot_s']['p90'] * 1e3:5.1f} ms  SLO met by {s['slo_attainment']:.0%}  "
        f"${deployment.price_per_hour:.2f}/h"
    )
