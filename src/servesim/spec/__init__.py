"""What is served and on what: the specs every later layer reads (lowest layer above `errors`).

- `model`: a Hugging Face `config.json` as sizes, parameter bytes, KV bytes per token, operators.
- `devices`: accelerator and CPU specs (peaks per dtype, memory, links, power, price).
- `dtypes`: numeric formats and their bytes per element.
- `parallel`: how one replica spreads over devices (TP, PP, EP, attention DP).
- `memory`: one replica's per-device memory: weights, reserve, KV cache.
- `engine_profile`: what differs between serving engines (scheduling defaults, fixed costs).
"""
