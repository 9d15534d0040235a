"""servesim: predict, simulate and plan LLM serving against latency SLOs."""

__version__ = "0.1.0"
