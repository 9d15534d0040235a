"""Request-level serving simulation: workloads in, per-request latencies out.

Workloads: `workload` (a `Workload` and arrival processes), `traces` (Azure, Mooncake, generic
CSV/JSONL readers), `synthetic` (length distributions, synthetic mixes, closed loops).
What runs: `deployment` (`Deployment`), `simulate` (the driver), `pool` and `result` (a run's
set-up and collection, shared by every deployment kind), `cluster` (the multi-replica event
loop), `disagg` (prefill/decode pools), `semipd` (intra-GPU partition), `autoscale`.
One replica: `replica` (the engine loop) with `batching`, `decode_stretch`, `policy_batching`
and `bookkeeping`; `kvcache` (paged blocks), `prefix_cache`, `policies` (scheduling orders),
`router` (dispatch and live migration), `transfer` (KV over links).
What a run records: `records` (bounded per-request rows, Parquet streaming), `metrics` (TTFT,
TPOT, ITL, SLO attainment; streaming quantiles; the conservation check).
"""
