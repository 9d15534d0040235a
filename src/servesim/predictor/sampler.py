"""The top-k/top-p filter of an engine whose sampler sorts every sampled row's vocabulary.

vLLM V1 filters top-k and top-p with a PyTorch sort of the whole `[rows, vocab]` logits each
step (`vllm/v1/sample/ops/topk_topp_sampler.py`, `apply_top_k_top_p`). It is its path from
PR #26859, which turned the FlashInfer sampler off by default (October 2025, vLLM 0.11.1), until
the Triton sampler of PR #33538 (February 2026). It runs on the full vocabulary on every TP rank
(after the logits are gathered), so TP does not shrink it, and a batch of 128 rows over 131,072
entries takes 4.2 ms of GPU time.

Its time is read from the PyTorch column of the sampler PRs' own benchmark (top-k and top-p on
every row, "topk_topp_whole"): vLLM PR #42191 for 1 and 4 rows, PR #51507 for 64 to 512 rows, at
131,072 entries, both by the author of PR #25824, which states its H100. Between measured row
counts the time is interpolated in log-log space, above the largest it grows in proportion to the
rows (PR #51507's top-k rows double from 512 to 1,024: 5.32 → 10.66 ms). It scales in proportion
to the vocabulary, and across GPUs with HBM bandwidth, as a sort that streams the logits
several times does.
"""

from __future__ import annotations

import numpy as np

from servesim.spec.devices import Device

# (rows, ms): vLLM's PyTorch top-k + top-p filter on every row at REFERENCE_VOCAB entries (vLLM
# PR #42191's table for 1 and 4 rows, PR #51507's for 64, 128 and 512).
SORT_FILTER_MS = ((1, 0.167), (4, 0.373), (64, 1.164), (128, 4.231), (512, 6.427))
REFERENCE_VOCAB = 131_072
# The GPU those tables ran on: an H100 SXM (PR #25824, same author and script), 3.35 TB/s.
REFERENCE_BW_BYTES_PER_S = 3.35e12

_LOG_ROWS = np.log([float(r) for r, _ in SORT_FILTER_MS])
_LOG_S = np.log([ms * 1e-3 for _, ms in SORT_FILTER_MS])


def sort_filter_s(rows: np.ndarray | float, vocab: int, device: Device) -> np.ndarray:
    """Seconds of the sort-based top-k/top-p filter over `rows` sampled rows of `vocab` entries
    on `device` (0 for no row)."""
    r = np.atleast_1d(np.asarray(rows, dtype=np.float64))
    s = np.zeros_like(r)
    live = r > 0
    lr = np.log(np.maximum(r[live], 1.0))
    inside = np.exp(np.interp(lr, _LOG_ROWS, _LOG_S))
    top_rows, top_s = float(SORT_FILTER_MS[-1][0]), SORT_FILTER_MS[-1][1] * 1e-3
    s[live] = np.where(r[live] > top_rows, top_s * r[live] / top_rows, inside)
    scale = (vocab / REFERENCE_VOCAB) * (REFERENCE_BW_BYTES_PER_S / device.mem_bw_bytes_per_s)
    return s * scale
