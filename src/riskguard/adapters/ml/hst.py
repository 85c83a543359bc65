"""Half-space trees (Tan, Ting & Liu, IJCAI 2011): an online anomaly model that learns per event.

Each tree splits the unit cube at random (feature chosen with probability proportional to its
range, threshold uniform in the middle 70 %); nodes count the rows of the current window that
reach them (``l_mass``) and keep the previous window's counts (``r_mass``) as the reference.
A row's score sums ``r_mass * 2**depth`` down its path, stopping at a node whose reference mass
is below a tenth of the window; few reference rows near it means an anomaly. Every
``window_size`` learned rows the current counts become the reference.

The trees are grown and first trained with river's ``HalfSpaceTrees`` at training time, on
inputs mapped to [0, 1] between their 0.1 % and 99.9 % training quantiles
(:class:`QuantileScaler`: river's trees split within [0, 1], and a robust range keeps one
extreme value from squeezing the rest into a corner), then exported here (heap order: node
``i`` has children ``2i + 1`` and ``2i + 2``) with each threshold mapped back through the
scaler to the input's own units: ``scale(x) < t`` exactly when ``x < scale⁻¹(t)`` since the
scaler is non-decreasing and right-continuous, so serving compares raw inputs and pays nothing
for the scaling (up to the rounding of the mapped-back threshold, the same comparisons as
river). This class then scores and keeps learning as river does (the same sums), through code
generated once per model, on complete rows (the served model fills a missing input with its
training median, as it did in training); learning counts only the leaf a row reaches, and a
node's mass is summed from its leaves when the window turns (river counts every node on the
path: the same numbers).
``score`` is river's ``1 - sum / max_sum`` (higher is more anomalous).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any


class HstError(ValueError):
    """A half-space-tree document that cannot be used."""


class QuantileScaler:
    """Maps each input to [0, 1], piecewise linearly between knots taken at quantiles of its
    training values (clipped outside them)."""

    def __init__(self, knots: Sequence[Sequence[float]]) -> None:
        self.knots = [[float(v) for v in k] for k in knots]
        for k in self.knots:
            if len(k) < 2 or any(b < a for a, b in itertools.pairwise(k)):
                raise HstError("scaler knots must be at least two non-decreasing numbers")
            if any(not math.isfinite(v) for v in k):
                raise HstError("scaler knots must be finite")

    def __call__(self, x: Sequence[float]) -> list[float]:
        out: list[float] = []
        for value, knots in zip(x, self.knots, strict=True):
            k = bisect.bisect_right(knots, value)
            last = len(knots) - 1
            if k == 0:
                out.append(0.0)
            elif k > last:
                out.append(1.0)
            else:
                lo, hi = knots[k - 1], knots[k]
                out.append((k - 1 + (value - lo) / (hi - lo)) / last)
        return out

    def inverse(self, feature: int, level: float) -> float:
        """The smallest raw value whose scaled value is at least ``level`` (0 < level < 1)."""
        knots = self.knots[feature]
        position = level * (len(knots) - 1)
        k = min(int(position), len(knots) - 2)
        return knots[k] + (position - k) * (knots[k + 1] - knots[k])

    @classmethod
    def fit(cls, columns: Any, levels: Sequence[float] = (0.001, 0.999)) -> QuantileScaler:
        """Knots at the given quantiles of each column (an array-like of columns).

        The default, two knots at the 0.1 % and 99.9 % quantiles, is a robust min-max scaling:
        linear in between, clipped outside. Anomaly models need the data's sparse tails kept
        sparse — more knots would flatten every marginal towards uniform and hide exactly the
        extreme values (amounts, counts) that make a row stand out.
        """
        import numpy as np

        knots = []
        for column in columns:
            values = np.asarray(column, dtype=np.float64)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                knots.append([0.0, 1.0])
                continue
            q = np.quantile(values, levels).tolist()
            if q[0] == q[-1]:
                q = [q[0], q[0] + 1.0]
            knots.append(q)
        return cls(knots)


def _generate(
    height: int, n_trees: int, feature: Sequence[int], threshold: Sequence[float]
) -> tuple[Any, Any]:
    """Straight-line ``score(x, go, total)`` and ``learn(x, leaves)``: the trees' splits never
    change (only their masses do), so each tree's walk is
    generated once as nested ``if``s with the thresholds as literals and the mass slots as
    constant indices. ``learn`` only counts the leaf a row reaches (a node's mass is the sum of
    its leaves'). Only validated ints and floats reach the source."""
    internal = (1 << height) - 1
    nodes = (1 << (height + 1)) - 1
    score = ["def hst_score(x, go, total):", "    s = 0"]
    learn = ["def hst_learn(x, l):"]  # l: the current window's leaf counts

    def test(t: int, i: int) -> str:
        split = t * internal + i
        return f"x[{int(feature[split])}] < {float(threshold[split])!r}"

    def score_walk(t: int, i: int, depth: int, indent: int) -> None:
        # go[k]: the walk continues below node k (its reference mass is not below the limit);
        # total[k]: the path's sum of mass * 2**depth from the root down to k.
        pad = "    " * indent
        slot = t * nodes + i
        if depth == height:
            score.append(f"{pad}s += total[{slot}]")
            return
        score.append(f"{pad}if go[{slot}]:")
        score.append(f"{pad}    if {test(t, i)}:")
        score_walk(t, 2 * i + 1, depth + 1, indent + 2)
        score.append(f"{pad}    else:")
        score_walk(t, 2 * i + 2, depth + 1, indent + 2)
        score.append(f"{pad}else:")
        score.append(f"{pad}    s += total[{slot}]")

    def learn_walk(t: int, i: int, depth: int, indent: int) -> None:
        pad = "    " * indent
        if depth == height:
            learn.append(f"{pad}l[{t * (internal + 1) + i - internal}] += 1")
            return
        learn.append(f"{pad}if {test(t, i)}:")
        learn_walk(t, 2 * i + 1, depth + 1, indent + 1)
        learn.append(f"{pad}else:")
        learn_walk(t, 2 * i + 2, depth + 1, indent + 1)

    for t in range(n_trees):
        score_walk(t, 0, 0, 1)
        learn_walk(t, 0, 0, 1)
    score.append("    return s")
    learn.append("    return None")
    namespace: dict[str, Any] = {"__builtins__": {}}
    exec(compile("\n".join(score), "<riskguard-hst:score>", "exec"), namespace)
    exec(compile("\n".join(learn), "<riskguard-hst:learn>", "exec"), namespace)
    return namespace["hst_score"], namespace["hst_learn"]


def _node_masses(leaves: list[int], height: int) -> list[int]:
    """Every node's mass in heap order (root first) from the leaves' counts."""
    levels = [leaves]
    for _ in range(height):
        below = levels[-1]
        levels.append([a + b for a, b in zip(below[0::2], below[1::2], strict=True)])
    return [mass for level in reversed(levels) for mass in level]


class HalfSpaceTrees:
    """Scores and learns like river's HalfSpaceTrees, from exported state."""

    def __init__(
        self,
        *,
        height: int,
        window_size: int,
        feature: Sequence[Sequence[int]],
        threshold: Sequence[Sequence[float]],
        l_mass: Sequence[Sequence[int]],
        r_mass: Sequence[Sequence[int]],
        counter: int,
        first_window: bool,
        n_features: int,
    ) -> None:
        if not 1 <= height <= 20 or window_size < 1 or not feature:
            raise HstError("height must be 1..20, window_size >= 1, at least one tree")
        internal = (1 << height) - 1
        nodes = (1 << (height + 1)) - 1
        for f, t, lm, rm in zip(feature, threshold, l_mass, r_mass, strict=True):
            if len(f) != internal or len(t) != internal or len(lm) != nodes or len(rm) != nodes:
                raise HstError("every tree needs 2**height - 1 splits and 2**(height+1) - 1 masses")
            if any(
                isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_features for v in f
            ):
                raise HstError("split features must be input indices")
            if any(not math.isfinite(float(v)) for v in t):
                raise HstError("thresholds must be finite")
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (*lm, *rm)):
                raise HstError("masses must be non-negative integers")
            if _node_masses(list(lm[internal:]), height) != list(lm) or _node_masses(
                list(rm[internal:]), height
            ) != list(rm):
                raise HstError("a node's mass must be the sum of its children's")
        self.height = height
        self.window_size = window_size
        self.n_trees = len(feature)
        self.n_features = n_features
        self.counter = counter
        self.first_window = first_window
        self._internal = internal
        self._nodes = nodes
        self._leaves = internal + 1
        self._feature = [v for f in feature for v in f]
        self._threshold = [float(v) for t in threshold for v in t]
        # The current window: leaf counts only; the reference window: every node's mass.
        self._l = [v for m in l_mass for v in m[internal:]]
        self._r = [v for m in r_mass for v in m]
        self._size_limit = 0.1 * window_size
        self._max_score = self.n_trees * window_size * ((1 << (height + 1)) - 1)
        self._expected: list[float] | None = None  # path-attribution values, per window
        self._go: list[bool] = []
        self._total: list[int] = []
        self._derive()
        self._fast_score, self._fast_learn = _generate(
            height, self.n_trees, self._feature, self._threshold
        )

    # -- scoring and learning -----------------------------------------------------------------

    def _derive(self) -> None:
        """Per node of the reference window: whether a walk goes on below it, and the sum of
        mass * 2**depth along the path down to it (a row's per-tree score is that sum at the
        node where its walk stops): what the generated scorer reads."""
        r, limit, nodes = self._r, self._size_limit, self._nodes
        go = [False] * len(r)
        total = [0] * len(r)
        for t in range(self.n_trees):
            base = t * nodes
            for i in range(nodes):
                depth = (i + 1).bit_length() - 1
                above = total[base + (i - 1) // 2] if i else 0
                total[base + i] = above + r[base + i] * (1 << depth)
                go[base + i] = depth < self.height and r[base + i] >= limit
        self._go, self._total = go, total

    def score(self, x: Sequence[float]) -> float:
        """river's ``score_one``: 0 during the first window, else ``1 - sum / max_sum``."""
        if self.first_window:
            return 0.0
        return 1.0 - float(self._fast_score(x, self._go, self._total)) / self._max_score

    def learn(self, x: Sequence[float]) -> None:
        """river's ``learn_one``: count the row; when the window is full it becomes the
        reference (every node's mass summed from its leaves) and a new window starts."""
        self._fast_learn(x, self._l)
        self.counter += 1
        if self.counter == self.window_size:
            leaves = self._leaves
            self._r = [
                mass
                for t in range(self.n_trees)
                for mass in _node_masses(self._l[t * leaves : (t + 1) * leaves], self.height)
            ]
            self._l = [0] * len(self._l)
            self.first_window = False
            self.counter = 0
            self._expected = None
            self._derive()

    # -- explanations -------------------------------------------------------------------------

    def _expected_values(self) -> list[float]:
        """Per node, the expected remaining path sum of a reference row that reaches it."""
        if self._expected is not None:
            return self._expected
        r, limit, height = self._r, self._size_limit, self.height
        values = [0.0] * len(r)
        for t in range(self.n_trees):
            base = t * self._nodes
            for i in range(self._nodes - 1, -1, -1):
                depth = (i + 1).bit_length() - 1
                own = r[base + i] * float(1 << depth)
                if depth == height or r[base + i] < limit:
                    values[base + i] = own
                    continue
                left, right = base + 2 * i + 1, base + 2 * i + 2
                weight = r[left] + r[right]
                below = (
                    (r[left] * values[left] + r[right] * values[right]) / weight
                    if weight
                    else 0.5 * (values[left] + values[right])
                )
                values[base + i] = own + below
        self._expected = values
        return values

    def baseline(self) -> float:
        """The score of a row whose path sum is the reference expectation in every tree."""
        if self.first_window:
            return 0.0
        values = self._expected_values()
        total = sum(values[t * self._nodes] for t in range(self.n_trees))
        return 1.0 - total / self._max_score

    def attribution(self, x: Sequence[float]) -> list[float]:
        """Per input: how much its splits lowered the path sum below the reference expectation,
        over ``max_sum`` (Saabas-style); they add up to ``score(x) - baseline()``."""
        out = [0.0] * self.n_features
        if self.first_window:
            return out
        values = self._expected_values()
        feature, threshold, r = self._feature, self._threshold, self._r
        limit = self._size_limit
        for t in range(self.n_trees):
            split_base = t * self._internal
            node_base = t * self._nodes
            i = 0
            weight = 1.0
            for _ in range(self.height):
                mass = r[node_base + i]
                if mass < limit:
                    break
                s = split_base + i
                value = x[feature[s]]
                child = 2 * i + 1 if value < threshold[s] else 2 * i + 2
                below = values[node_base + i] - mass * weight
                out[feature[s]] += (below - values[node_base + child]) / self._max_score
                i = child
                weight *= 2.0
        return out

    # -- state ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        internal, nodes = self._internal, self._nodes
        return {
            "height": self.height,
            "window_size": self.window_size,
            "n_features": self.n_features,
            "counter": self.counter,
            "first_window": self.first_window,
            "feature": [
                self._feature[t * internal : (t + 1) * internal] for t in range(self.n_trees)
            ],
            "threshold": [
                self._threshold[t * internal : (t + 1) * internal] for t in range(self.n_trees)
            ],
            "l_mass": [
                _node_masses(self._l[t * self._leaves : (t + 1) * self._leaves], self.height)
                for t in range(self.n_trees)
            ],
            "r_mass": [self._r[t * nodes : (t + 1) * nodes] for t in range(self.n_trees)],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> HalfSpaceTrees:
        try:
            return cls(
                height=int(document["height"]),
                window_size=int(document["window_size"]),
                feature=document["feature"],
                threshold=document["threshold"],
                l_mass=document["l_mass"],
                r_mass=document["r_mass"],
                counter=int(document["counter"]),
                first_window=bool(document["first_window"]),
                n_features=int(document["n_features"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HstError(f"bad half-space-tree state: {exc}") from None

    @classmethod
    def from_river(cls, model: Any, scaler: QuantileScaler) -> HalfSpaceTrees:
        """Export a trained ``river.anomaly.HalfSpaceTrees`` whose features are ``0..n-1`` and
        were scaled by ``scaler``; thresholds come back in the inputs' own units."""
        feature: list[list[int]] = []
        threshold: list[list[float]] = []
        l_mass: list[list[int]] = []
        r_mass: list[list[int]] = []
        for root in model.trees:
            nodes = [root]
            splits: list[Any] = []
            for node in nodes:  # breadth first: heap order
                if len(splits) < (1 << model.height) - 1:
                    splits.append(node)
                    nodes.extend(node.children)
            feature.append([int(n.feature) for n in splits])
            threshold.append([scaler.inverse(int(n.feature), float(n.threshold)) for n in splits])
            l_mass.append([int(n.l_mass) for n in nodes])
            r_mass.append([int(n.r_mass) for n in nodes])
        return cls(
            height=model.height,
            window_size=model.window_size,
            feature=feature,
            threshold=threshold,
            l_mass=l_mass,
            r_mass=r_mass,
            counter=model.counter,
            first_window=model._first_window,
            n_features=len(scaler.knots),
        )
