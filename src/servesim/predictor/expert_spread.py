"""How many distinct experts the busiest expert-parallel rank runs when a few tokens are routed.

With few tokens (tokens × top-k ≤ experts) an expert layer is bound by the expert weights each
rank reads, and the layer waits for the rank that reads the most. An even spread puts T × k / R
distinct experts on each of R ranks; a router's choices are not even. Here the router's scores
are drawn iid (no popularity skew) and its choice is DeepSeek-V3's group-limited top-k where the
config asks for it (`n_group` groups, a token's best `topk_group` by the sum of their two best
scores, then its top-k experts among those groups), with experts placed contiguously on the
ranks (rank r holds experts [r E/R, (r+1) E/R), rounded down). The mean over draws of the
busiest rank's distinct-expert count is a Monte Carlo estimate, seeded, so a run is
reproducible."""

from __future__ import annotations

import functools

import numpy as np

DRAWS = 400  # Monte Carlo draws a point: the mean's standard error is ~1 % of it at one token


@functools.lru_cache(maxsize=4096)
def busiest_rank_experts(
    experts: int, top_k: int, groups: int, groups_per_token: int, ranks: int, tokens: int
) -> float:
    """Mean distinct experts on the busiest of `ranks` EP ranks when `tokens` tokens each pick
    `top_k` of `experts` (from their best `groups_per_token` of `groups` groups)."""
    if ranks <= 1 or tokens <= 0:
        return float(min(experts, top_k * max(tokens, 0)))
    rng = np.random.default_rng(0)
    per_group = experts // max(groups, 1)
    scores = rng.random((DRAWS, tokens, experts))
    if groups > 1 and groups_per_token < groups and experts % groups == 0:
        grouped = scores.reshape(DRAWS, tokens, groups, per_group)
        strength = np.partition(grouped, per_group - 2, axis=3)[..., -2:].sum(axis=3)
        kept = np.argpartition(-strength, groups_per_token - 1, axis=2)[..., :groups_per_token]
        allowed = np.zeros((DRAWS, tokens, groups), dtype=bool)
        np.put_along_axis(allowed, kept, True, axis=2)
        scores = np.where(np.repeat(allowed, per_group, axis=2), scores, -1.0)
    # (which experts, not their order: a partial sort is enough)
    chosen = np.argpartition(-scores, top_k - 1, axis=2)[..., :top_k].reshape(DRAWS, -1)
    active = np.zeros((DRAWS, experts), dtype=bool)
    np.put_along_axis(active, chosen, True, axis=1)
    # contiguous placement, the remainder spread over the first ranks when E % R != 0
    rank_of = np.arange(experts) * ranks // experts
    per_rank = np.zeros((DRAWS, ranks))
    for r in range(ranks):
        per_rank[:, r] = active[:, rank_of == r].sum(axis=1)
    return float(per_rank.max(axis=1).mean())
