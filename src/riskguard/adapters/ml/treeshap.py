"""Exact path-dependent TreeSHAP (what LightGBM's ``pred_contrib`` computes), vectorised.

For one leaf, let ``F`` be the distinct features split on along its path; for each ``j`` in
``F``, ``z_j`` is the product of the training-row shares the path keeps at its splits on ``j``
(child count / node count) and ``o_j`` is 1 if the row takes the path's side at every one of
them, else 0. The leaf adds to feature ``i``'s SHAP value::

    v * (o_i - z_i) * sum_s w(s, d) * c_s,   w(s, d) = s! (d - s - 1)! / d!,  d = |F|

where ``c_s`` is the coefficient of ``t**s`` in ``prod_{j != i} (z_j + o_j t)``. Lundberg's
recursive algorithm computes the same thing with its extend/unwind steps; here, since the ``o``
are 0 or 1, every leaf has only ``2**d`` possible patterns, so the values are tabulated once
per model (Fast TreeSHAP v2's idea) and a row costs a handful of numpy operations over all
leaves: evaluate every split, read each leaf's pattern, gather its row of the table and add it
to the features. The bias (expected value) is the count-weighted mean of each tree's leaves.
Trees are limited to ``MAX_UNIQUE`` distinct features per path to bound the table's size.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from riskguard.adapters.ml.trees import ZERO_THRESHOLD, Ensemble, Tree

MAX_UNIQUE: Final = 16
_MISSING_CODE: Final = {"none": 0, "zero": 1, "nan": 2}


class TreeShap:
    """SHAP values of one ensemble; ``explain(x)`` -> (one value per input, bias)."""

    def __init__(self, ensemble: Ensemble) -> None:
        self.n_features = ensemble.n_features
        self.bias = float(sum(t.expected_value() for t in ensemble.trees))
        node_feature: list[int] = []
        node_threshold: list[float] = []
        node_default_left: list[bool] = []
        node_missing: list[int] = []
        leaves: list[tuple[float, list[tuple[int, bool, int]], list[int], list[float]]] = []
        for tree in ensemble.trees:
            offset = len(node_feature)
            node_feature.extend(tree.split_feature)
            node_threshold.extend(tree.threshold)
            node_default_left.extend(tree.default_left)
            node_missing.extend(_MISSING_CODE[m] for m in tree.missing)
            for leaf, path in enumerate(tree.leaf_paths()):
                steps, features, zeros = _unique_path(tree, path, offset)
                if len(features) > MAX_UNIQUE:
                    raise ValueError(f"TreeSHAP needs at most {MAX_UNIQUE} features per path")
                leaves.append((tree.leaf_value[leaf], steps, features, zeros))
        n_nodes = len(node_feature)
        self._feature = np.asarray(node_feature, dtype=np.intp)
        self._threshold = np.asarray(node_threshold, dtype=np.float64)
        self._default_left = np.asarray(node_default_left, dtype=bool)
        missing = np.asarray(node_missing, dtype=np.int8)
        self._nan_is_zero = missing != _MISSING_CODE["nan"]
        self._zero_default = missing == _MISSING_CODE["zero"]
        self._nan_default = missing == _MISSING_CODE["nan"]
        # Per leaf and slot (distinct feature) the first split on it; further splits on the
        # same feature are listed apart (rare), so the common case is one gather.
        n_leaves = len(leaves)
        width = self._width = max((len(f) for _, _, f, _ in leaves), default=0) or 1
        first_node = np.full((n_leaves, width), n_nodes, dtype=np.intp)  # n_nodes: "kept"
        first_left = np.ones((n_leaves, width), dtype=bool)
        full = np.zeros(n_leaves, dtype=np.int64)
        extra: list[tuple[int, int, int, bool]] = []
        offsets = np.zeros(n_leaves, dtype=np.int64)
        entries: list[tuple[int, int, int]] = []  # (feature, leaf, slot)
        blocks = []
        row = 0
        for i, (value, steps, features, zeros) in enumerate(leaves):
            seen: set[int] = set()
            for node, went_left, slot in steps:
                if slot in seen:
                    extra.append((i, slot, node, went_left))
                else:
                    seen.add(slot)
                    first_node[i, slot] = node
                    first_left[i, slot] = went_left
            offsets[i] = row
            full[i] = (1 << len(features)) - 1
            block = np.zeros((1 << len(features), width))
            block[:, : len(features)] = _leaf_table(value, zeros)
            blocks.append(block)
            row += len(block)
            entries.extend((f, i, slot) for slot, f in enumerate(features))
        # Slot-major, so each slot's flags are one contiguous row to shift into the pattern.
        self._first_node = np.ascontiguousarray(first_node.T)
        self._first_left = np.ascontiguousarray(first_left.T)
        self._extra_leaf = np.array([e[0] for e in extra], dtype=np.intp)
        self._extra_slot = np.array([e[1] for e in extra], dtype=np.intp)
        self._extra_node = np.array([e[2] for e in extra], dtype=np.intp)
        self._extra_left = np.array([e[3] for e in extra], dtype=bool)
        self._offsets = offsets
        self._full = full
        self._table = (np.concatenate(blocks) if blocks else np.zeros((1, width))).ravel()
        # Table entries are gathered sorted by feature, then summed per feature in one pass.
        entries.sort()
        self._entry_leaf = np.array([e[1] for e in entries], dtype=np.intp)
        self._entry_slot = np.array([e[2] for e in entries], dtype=np.int64)
        features_sorted = np.array([e[0] for e in entries], dtype=np.intp)
        self._present, self._starts = np.unique(features_sorted, return_index=True)

    def explain(self, x: Any) -> tuple[np.ndarray[Any, np.dtype[np.float64]], float]:
        """SHAP values of one row (NaN = missing) and the bias; they sum to the raw score."""
        phi = np.zeros(self.n_features)
        if not len(self._present):
            return phi, self.bias
        values = np.asarray(x, dtype=np.float64)[self._feature]
        isnan = np.isnan(values)
        zeroed = np.where(isnan & self._nan_is_zero, 0.0, values)
        default = (self._zero_default & (np.abs(zeroed) <= ZERO_THRESHOLD)) | (
            self._nan_default & isnan
        )
        left = np.append(np.where(default, self._default_left, zeroed <= self._threshold), True)
        kept = (left[self._first_node] == self._first_left).view(np.uint8)
        if len(self._extra_leaf):
            broken = left[self._extra_node] != self._extra_left
            kept[self._extra_slot[broken], self._extra_leaf[broken]] = 0
        patterns = kept[0].astype(np.int64)
        for slot in range(1, self._width):
            patterns |= kept[slot].astype(np.int64) << slot
        rows = self._offsets + (patterns & self._full)
        gathered = self._table.take(rows[self._entry_leaf] * self._width + self._entry_slot)
        phi[self._present] = np.add.reduceat(gathered, self._starts)
        return phi, self.bias


def _unique_path(
    tree: Tree, path: list[tuple[int, bool]], offset: int
) -> tuple[list[tuple[int, bool, int]], list[int], list[float]]:
    """A leaf's steps (global node, went left, slot of its feature), distinct features in
    first-seen order and each one's zero fraction (product of the kept shares)."""
    slots: dict[int, int] = {}
    zeros: list[float] = []
    steps = []
    for node, went_left in path:
        feature = tree.split_feature[node]
        child = tree.left[node] if went_left else tree.right[node]
        reached = tree.leaf_count[~child] if child < 0 else tree.count[child]
        share = reached / tree.count[node]
        slot = slots.get(feature)
        if slot is None:
            slot = slots[feature] = len(zeros)
            zeros.append(share)
        else:
            zeros[slot] *= share
        steps.append((offset + node, went_left, slot))
    return steps, list(slots), zeros


def _leaf_table(value: float, zeros: list[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Per pattern of ``o`` bits (row) the leaf's SHAP contribution to each slot (column)."""
    d = len(zeros)
    if d == 0:
        return np.zeros((1, 0))
    patterns = 1 << d
    ones = ((np.arange(patterns)[:, None] >> np.arange(d)[None, :]) & 1).astype(np.float64)
    z = np.asarray(zeros)
    weights = np.array([math.factorial(s) * math.factorial(d - s - 1) for s in range(d)])
    weights = weights / math.factorial(d)
    table = np.empty((patterns, d))
    for i in range(d):
        poly = np.zeros((patterns, d))
        poly[:, 0] = 1.0
        degree = 0
        for j in range(d):
            if j == i:
                continue
            shifted = np.zeros_like(poly)
            shifted[:, 1 : degree + 2] = poly[:, : degree + 1] * ones[:, j : j + 1]
            poly = poly * z[j] + shifted
            degree += 1
        table[:, i] = value * (ones[:, i] - z[i]) * (poly @ weights)
    return table
