"""The one seam: seconds and joules of one engine iteration of one replica.

- `iteration`: `Predictor` lists an iteration's operators and adds the engine's fixed costs.
- `roofline`: an operator's time as a roofline with fitted, shape-dependent efficiencies.
- `calibrate`: fits those efficiencies on measured kernel tables.
- `fewshot`: adapts them to an unseen device from a handful of measurements.
- `profiled`: iteration costs measured on this machine (CPU engines), as predictors.
- `kernel_tables`: aiconfigurator-core's measured kernel tables, found and read in place.
"""
