"""How many distinct experts the busiest expert-parallel rank runs when a few tokens are routed.

With few tokens (tokens × top-k ≤ experts) an expert layer is bound by the expert weights each
rank reads, and the layer waits for the rank that reads the most. An even spread puts T × k / R
distinct experts on each of R ranks; a router's choices are not even. Here the router's scores
are drawn iid (no popularity skew) and its choice is DeepSeek-V3's group-limited top-k where the
config asks for it (`n_group` groups, a token's best `topk_group` by the sum of their two best
scores, then its top-k experts among those groups), with experts placed contiguously on the
ranks (rank r holds experts [r E/R, (r+1) E/R), rounded down). The mean over draws of the
busiest rank's distinct-expert count is a Monte Carlo estimate, seeded, so a run is
reproducible. One draw routes the largest few-token batch (experts // top-k tokens) and every
smaller batch is its first tokens, so all token counts cost one draw and the estimate never
falls as tokens are added."""

from __future__ import annotations

import functools

import numpy as np

DRAWS = 400  # Monte Carlo draws a point: the mean's standard error is ~1 % of it at one token
CHUNK = 100  # draws routed at once (bounds the score array to CHUNK x tokens x experts)


def busiest_rank_experts(
    experts: int, top_k: int, groups: int, groups_per_token: int, ranks: int, tokens: int
) -> float:
    """Mean distinct experts on the busiest of `ranks` EP ranks when `tokens` tokens each pick
    `top_k` of `experts` (from their best `groups_per_token` of `groups` groups)."""
    if ranks <= 1 or tokens <= 0:
        return float(min(experts, top_k * max(tokens, 0)))
    most = max(tokens, experts // max(top_k, 1))
    return busiest_rank_curve(experts, top_k, groups, groups_per_token, ranks, most)[tokens - 1]


@functools.lru_cache(maxsize=256)
def busiest_rank_curve(
    experts: int, top_k: int, groups: int, groups_per_token: int, ranks: int, tokens: int
) -> tuple[float, ...]:
    """`busiest_rank_experts` for 1, 2, …, `tokens` tokens, each the first tokens of the same
    seeded draws."""
    rng = np.random.default_rng(0)
    # contiguous placement, the remainder spread over the first ranks when E % R != 0
    starts = np.searchsorted(np.arange(experts) * ranks // experts, np.arange(ranks))
    total = np.zeros(tokens)
    for first in range(0, DRAWS, CHUNK):
        draws = min(CHUNK, DRAWS - first)
        chosen = _routed(rng, draws, tokens, experts, top_k, groups, groups_per_token)
        active = np.zeros((draws, experts), dtype=bool)
        rows = np.arange(draws)[:, None]
        for t in range(tokens):
            active[rows, chosen[:, t]] = True
            total[t] += np.add.reduceat(active, starts, axis=1).max(axis=1).sum()
    return tuple((total / DRAWS).tolist())


def _routed(
    rng: np.random.Generator,
    draws: int,
    tokens: int,
    experts: int,
    top_k: int,
    groups: int,
    groups_per_token: int,
) -> np.ndarray:
    """Experts each token picks (draws × tokens × top_k) from iid router scores."""
    scores = rng.random((draws, tokens, experts))
    if groups > 1 and groups_per_token < groups and experts % groups == 0:
        per_group = experts // groups
        grouped = scores.reshape(draws, tokens, groups, per_group)
        strength = np.partition(grouped, per_group - 2, axis=3)[..., -2:].sum(axis=3)
        kept = np.argpartition(-strength, groups_per_token - 1, axis=2)[..., :groups_per_token]
        allowed = np.zeros((draws, tokens, groups), dtype=bool)
        np.put_along_axis(allowed, kept, True, axis=2)
        scores = np.where(np.repeat(allowed, per_group, axis=2), scores, -1.0)
    # (which experts, not their order: a partial sort is enough)
    return np.argpartition(-scores, top_k - 1, axis=2)[..., :top_k]
