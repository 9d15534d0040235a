"""Reality: benchmark a real endpoint, profile a model here, compare simulated and measured.

- `bench`: an OpenAI-compatible load generator recording every token's arrival.
- `compare`: two runs side by side with relative errors.
- `profile`: times a model's operators on this machine with PyTorch (calibration tables).
- `measured_engine`: engines measured here: fitted overheads and measured-engine files.
"""
