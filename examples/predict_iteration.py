"""Price one engine iteration and see where its time goes.

Llama-3.1-8B on one H100 (vLLM): 64 sequences decoding over 2,000 tokens of context each, plus
one 512-token prefill chunk. Prints the iteration's time and energy and its five most
expensive operators.

    python examples/predict_iteration.py
"""

import servesim

deployment = servesim.Deployment(
    model=servesim.load_model("meta-llama/Llama-3.1-8B"),
    device=servesim.get_device("h100_sxm"),
)
batch = servesim.BatchShape(decode_seqs=64, decode_context=64 * 2000, prefill=((512, 0),))
cost = servesim.predict(deployment, batch)

print(f"one iteration: {cost.seconds * 1e3:.2f} ms, {cost.joules:.1f} J")
for op in sorted(cost.ops, key=lambda o: -o.seconds)[:5]:
    print(f"  {op.name:<24} {op.kind:<8} {op.seconds * 1e3:7.3f} ms")
