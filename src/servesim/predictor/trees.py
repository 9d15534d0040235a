"""A gradient-boosted tree ensemble as flat numpy arrays: evaluated without scikit-learn.

scikit-learn fits the ensemble (`from_sklearn`); servesim stores and evaluates it as plain
arrays (node feature, threshold, children, leaf value), so a bundled model is a small `.npz`
file read with `allow_pickle=False`, never a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Trees:
    """Regression trees summed on top of a constant: `baseline + sum_t leaf_t(x)`."""

    feature: np.ndarray  # int32 per node: the feature a split tests (0 at leaves)
    threshold: np.ndarray  # float64 per node: go left when x[feature] <= threshold
    left: np.ndarray  # int32 per node: left child's index, -1 at leaves
    right: np.ndarray  # int32 per node: right child's index, -1 at leaves
    value: np.ndarray  # float64 per node: the leaf's contribution (0 at inner nodes)
    roots: np.ndarray  # int32 per tree: its root's node index
    baseline: float
    depth: int  # the deepest leaf's depth: the number of steps that reach every leaf

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's output for each row of `x` (rows x features)."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        rows = np.arange(len(x))[:, None]
        idx = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        for _ in range(self.depth):
            inner = self.left[idx] >= 0
            if not inner.any():
                break
            go_left = x[rows, self.feature[idx]] <= self.threshold[idx]
            nxt = np.where(go_left, self.left[idx], self.right[idx])
            idx = np.where(inner, nxt, idx)
        return self.baseline + self.value[idx].sum(axis=1)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The ensemble as named arrays for `np.savez`."""
        return {
            f"{prefix}feature": self.feature,
            f"{prefix}threshold": self.threshold,
            f"{prefix}left": self.left,
            f"{prefix}right": self.right,
            f"{prefix}value": self.value,
            f"{prefix}roots": self.roots,
            f"{prefix}scalars": np.array([self.baseline, float(self.depth)]),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> Trees:
        """Rebuild an ensemble written by `arrays`."""
        scal = np.asarray(arrays[f"{prefix}scalars"], dtype=float)
        return cls(
            feature=np.asarray(arrays[f"{prefix}feature"], dtype=np.int32),
            threshold=np.asarray(arrays[f"{prefix}threshold"], dtype=float),
            left=np.asarray(arrays[f"{prefix}left"], dtype=np.int32),
            right=np.asarray(arrays[f"{prefix}right"], dtype=np.int32),
            value=np.asarray(arrays[f"{prefix}value"], dtype=float),
            roots=np.asarray(arrays[f"{prefix}roots"], dtype=np.int32),
            baseline=float(scal[0]),
            depth=int(scal[1]),
        )


def from_sklearn(model: Any) -> Trees:
    """Flatten a fitted `HistGradientBoostingRegressor` (numeric features, no missing values).

    Its leaf values already include the learning rate; its prediction is the baseline plus the
    sum of the leaves reached, a row going left when its value is <= the split threshold."""
    feats, thr, left, right, val, roots = [], [], [], [], [], []
    offset = 0
    depth = 0
    for (pred,) in model._predictors:
        nodes = pred.nodes
        n = len(nodes)
        leaf = nodes["is_leaf"].astype(bool)
        roots.append(offset)
        feats.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int32))
        thr.append(nodes["num_threshold"].astype(float))
        left.append(np.where(leaf, -1, nodes["left"] + offset).astype(np.int32))
        right.append(np.where(leaf, -1, nodes["right"] + offset).astype(np.int32))
        val.append(np.where(leaf, nodes["value"], 0.0).astype(float))
        depth = max(depth, int(nodes["depth"].max()))
        offset += n
    baseline = float(np.ravel(model._baseline_prediction)[0])
    return Trees(
        feature=np.concatenate(feats),
        threshold=np.concatenate(thr),
        left=np.concatenate(left),
        right=np.concatenate(right),
        value=np.concatenate(val),
        roots=np.array(roots, dtype=np.int32),
        baseline=baseline,
        depth=depth,
    )
