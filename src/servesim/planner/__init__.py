"""Which deployment to run: search candidates by simulation and rank them by goodput per cost.

- `capacity`: the highest rate a deployment sustains with its SLO attainment met (steady state).
- `candidates`: a plan's spec and search space, the candidates it enumerates, pruning.
- `evaluate`: one candidate's capacity search as one result row.
- `ranking`: goodput per dollar-hour and Pareto fronts; `sizing`: fleets verified by simulation.
- `plan`: the whole flow (resumable through `store`, parallel through `runner`).
- `placement`: DistServe's prefill/decode placement search; `melange`: heterogeneous GPU mixes.
"""
