"""What a co-served fine-tuning job achieved in a run (FlexLLM): training tokens per second
beside the inference it shared the GPUs with, against the same GPUs training alone.

Every iteration that served inference also trained the job's `tokens_per_iter` tokens (the
predictor priced them in, `predictor.coserving`); idle time trained at the job's
`idle_tokens_per_iter` per training-only iteration.
"""

from __future__ import annotations

from typing import Any

from servesim.errors import ServesimError


def finetune_throughput(res: Any) -> dict[str, float]:
    """Training tokens and tokens per second of the run's fine-tuning job, and its share of
    the rate the same replicas reach training alone."""
    dep = res.deployment
    job = getattr(dep, "finetune", None)
    if job is None:
        raise ServesimError("This run has no fine-tuning job; set Deployment(finetune=...).")
    pred = dep.predictor()
    alone_s = pred.finetune_step_s()
    alone_rate = job.idle_tokens_per_iter / alone_s if alone_s > 0 else 0.0
    tokens = 0.0
    span = 0.0
    for r in res.replica_stats:
        tokens += r["iterations"] * job.tokens_per_iter
        idle = max(0.0, r["provisioned_s"] - r["busy_s"])
        tokens += idle * alone_rate
        span = max(span, r["provisioned_s"])
    replicas = max(1, len(res.replica_stats))
    rate = tokens / span if span > 0 else 0.0
    return {
        "finetune_tokens": tokens,
        "finetune_tok_per_s": rate,
        "alone_tok_per_s": alone_rate * replicas,
        "share_of_alone": rate / (alone_rate * replicas) if alone_rate > 0 else 0.0,
    }
