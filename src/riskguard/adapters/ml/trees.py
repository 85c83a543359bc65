"""Tree ensembles as plain data, and fast pure-Python evaluators generated from them.

``Ensemble`` is the portable form of a LightGBM booster or a scikit-learn IsolationForest: per
tree, flat arrays in LightGBM's layout (internal nodes ``0..n-1``; a child ``c < 0`` is leaf
``~c``), saved as JSON. Calling ``predict`` on a fitted library model costs tens to hundreds of
microseconds per single row in argument checking alone, so serving never does: the ensemble is
compiled once, at load, into one Python function of nested ``if``/``else`` per tree whose
literals are the thresholds and leaf values — a few tens of nanoseconds per node. The source is
generated only from validated numbers (ints in range, finite or infinite floats), never from
text taken from the artifact.

Split semantics are LightGBM's (``x <= threshold`` goes left) with its missing-value rules per
node: ``none`` (NaN reads as 0), ``zero`` (0 and NaN follow ``default_left``), ``nan`` (NaN
follows ``default_left``). scikit-learn's trees split the same way on float32 inputs; an
ensemble exported from them sets ``float32_inputs`` and the caller rounds inputs to float32
first, so scores equal the library's own bit for bit, sums included (trees are added in order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

MISSING_TYPES: Final = ("none", "zero", "nan")
# LightGBM's kZeroThreshold (1e-35f), as the double it compares with.
ZERO_THRESHOLD: Final = 1.0000000180025095e-35
MAX_DEPTH: Final = 64


class EnsembleError(ValueError):
    """Tree data that is not a well-formed ensemble."""


@dataclass(frozen=True, slots=True)
class Tree:
    """One tree; children ``>= 0`` are internal nodes, ``< 0`` leaf ``~child``."""

    split_feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    default_left: tuple[bool, ...]
    missing: tuple[str, ...]
    count: tuple[float, ...]  # training rows reaching each internal node
    leaf_value: tuple[float, ...]
    leaf_count: tuple[float, ...]

    @property
    def internal(self) -> int:
        return len(self.split_feature)

    def to_json(self) -> dict[str, Any]:
        return {
            "split_feature": list(self.split_feature),
            "threshold": [_json_float(t) for t in self.threshold],
            "left": list(self.left),
            "right": list(self.right),
            "default_left": list(self.default_left),
            "missing": list(self.missing),
            "count": list(self.count),
            "leaf_value": list(self.leaf_value),
            "leaf_count": list(self.leaf_count),
        }

    def leaf_paths(self) -> list[list[tuple[int, bool]]]:
        """For each leaf, the internal nodes from the root down and whether it went left."""
        paths: list[list[tuple[int, bool]]] = [[] for _ in self.leaf_value]
        if not self.split_feature:
            return paths
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            for child, went_left in ((self.left[node], True), (self.right[node], False)):
                step = [*path, (node, went_left)]
                if child < 0:
                    paths[~child] = step
                else:
                    stack.append((child, step))
        return paths

    def node_values(self) -> list[float]:
        """Each internal node's expected leaf value: the count-weighted mean of its leaves."""
        values = [0.0] * self.internal
        if not self.split_feature:
            return values
        order: list[int] = []
        stack = [0]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(c for c in (self.left[node], self.right[node]) if c >= 0)
        for node in reversed(order):  # children before parents
            total = weight = 0.0
            for child in (self.left[node], self.right[node]):
                if child < 0:
                    n, v = self.leaf_count[~child], self.leaf_value[~child]
                else:
                    n, v = self.count[child], values[child]
                total += n * v
                weight += n
            values[node] = total / weight if weight > 0 else 0.0
        return values

    def expected_value(self) -> float:
        """The tree's output averaged over its training rows (LightGBM's expected value)."""
        if not self.split_feature:
            return self.leaf_value[0]
        total = sum(self.leaf_count)
        return sum(v * n / total for v, n in zip(self.leaf_value, self.leaf_count, strict=True))


@dataclass(frozen=True, slots=True)
class Ensemble:
    """Trees whose outputs are summed; ``n_features`` inputs, in the model's input order."""

    n_features: int
    trees: tuple[Tree, ...]
    float32_inputs: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "riskguard-trees/1",
            "n_features": self.n_features,
            "float32_inputs": self.float32_inputs,
            "trees": [t.to_json() for t in self.trees],
        }

    @classmethod
    def from_json(cls, document: Any) -> Ensemble:
        """Validate and build; raises EnsembleError naming the first problem."""
        if not isinstance(document, Mapping) or document.get("format") != "riskguard-trees/1":
            raise EnsembleError("not a riskguard-trees/1 document")
        n_features = document.get("n_features")
        if not isinstance(n_features, int) or not 0 < n_features <= 10_000:
            raise EnsembleError("n_features must be a positive integer")
        raw_trees = document.get("trees")
        if not isinstance(raw_trees, list) or not raw_trees:
            raise EnsembleError("trees must be a non-empty list")
        trees = tuple(_tree_from_json(i, t, n_features) for i, t in enumerate(raw_trees))
        return cls(n_features, trees, bool(document.get("float32_inputs", False)))


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _floats(name: str, values: Any, n: int, *, finite: bool) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != n:
        raise EnsembleError(f"{name} must be a list of {n} numbers")
    out = []
    for v in values:
        if v in ("inf", "-inf") and not finite:
            out.append(float(v))
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise EnsembleError(f"{name} must hold numbers")
        f = float(v)
        if math.isnan(f) or (finite and math.isinf(f)):
            raise EnsembleError(f"{name} must hold finite numbers")
        out.append(f)
    return tuple(out)


def _ints(name: str, values: Any, n: int, low: int, high: int) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != n:
        raise EnsembleError(f"{name} must be a list of {n} integers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v < high:
            raise EnsembleError(f"{name} must hold integers in [{low}, {high})")
    return tuple(values)


def _tree_from_json(index: int, raw: Any, n_features: int) -> Tree:
    where = f"tree {index}"
    if not isinstance(raw, Mapping):
        raise EnsembleError(f"{where} is not an object")
    try:
        leaves = len(raw["leaf_value"])
        n = len(raw["split_feature"])
        if leaves != n + 1:
            raise EnsembleError(f"{where}: a binary tree has one leaf more than splits")
        default_left = raw["default_left"]
        missing = raw["missing"]
        if not isinstance(default_left, list) or len(default_left) != n:
            raise EnsembleError(f"{where}: default_left must be {n} booleans")
        if not all(isinstance(b, bool) for b in default_left):
            raise EnsembleError(f"{where}: default_left must be {n} booleans")
        if not isinstance(missing, list) or len(missing) != n:
            raise EnsembleError(f"{where}: missing must be {n} names")
        if not all(m in MISSING_TYPES for m in missing):
            raise EnsembleError(f"{where}: missing must be one of {MISSING_TYPES}")
        tree = Tree(
            split_feature=_ints(f"{where}.split_feature", raw["split_feature"], n, 0, n_features),
            threshold=_floats(f"{where}.threshold", raw["threshold"], n, finite=False),
            left=_ints(f"{where}.left", raw["left"], n, -leaves, n),
            right=_ints(f"{where}.right", raw["right"], n, -leaves, n),
            default_left=tuple(default_left),
            missing=tuple(missing),
            count=_floats(f"{where}.count", raw["count"], n, finite=True),
            leaf_value=_floats(f"{where}.leaf_value", raw["leaf_value"], leaves, finite=True),
            leaf_count=_floats(f"{where}.leaf_count", raw["leaf_count"], leaves, finite=True),
        )
    except KeyError as exc:
        raise EnsembleError(f"{where} lacks {exc.args[0]}") from None
    except TypeError:
        raise EnsembleError(f"{where} is malformed") from None
    _check_shape(where, tree)
    return tree


def _check_shape(where: str, tree: Tree) -> None:
    """Every node reached exactly once from the root, depth bounded: a tree, not a graph."""
    if not tree.split_feature:
        return
    seen_nodes: set[int] = set()
    seen_leaves: set[int] = set()
    stack = [(0, 1)]
    while stack:
        node, depth = stack.pop()
        if node in seen_nodes or depth > MAX_DEPTH:
            raise EnsembleError(f"{where} is not a tree of depth <= {MAX_DEPTH}")
        seen_nodes.add(node)
        for child in (tree.left[node], tree.right[node]):
            if child < 0:
                if ~child in seen_leaves:
                    raise EnsembleError(f"{where}: leaf {~child} is reached twice")
                seen_leaves.add(~child)
            else:
                stack.append((child, depth + 1))
    if len(seen_nodes) != tree.internal or len(seen_leaves) != len(tree.leaf_value):
        raise EnsembleError(f"{where} has nodes that cannot be reached")


# ------------------------------------------------------------------------------------------
# Code generation


def _literal(value: float) -> str:
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(float(value))


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)


def _condition(tree: Tree, node: int) -> str:
    """The Python test that sends a row left at ``node`` (LightGBM's NumericalDecision)."""
    f = tree.split_feature[node]
    t = _literal(tree.threshold[node])
    missing = tree.missing[node]
    dl = tree.default_left[node]
    if missing == "nan":
        return f"(x{f} <= {t} or x{f} != x{f})" if dl else f"x{f} <= {t}"
    if missing == "zero":
        zero = f"-{ZERO_THRESHOLD!r} <= z{f} <= {ZERO_THRESHOLD!r}"
        return f"({dl} if {zero} else z{f} <= {t})"
    return f"z{f} <= {t}"


def _uses_zeroed(trees: Sequence[Tree]) -> set[int]:
    return {
        tree.split_feature[n]
        for tree in trees
        for n in range(tree.internal)
        if tree.missing[n] != "nan"
    }


def _prologue(src: _Source, ensemble: Ensemble) -> None:
    names = ", ".join(f"x{i}" for i in range(ensemble.n_features))
    src.add(1, f"{names}{',' if ensemble.n_features == 1 else ''} = x")
    for f in sorted(_uses_zeroed(ensemble.trees)):
        src.add(1, f"z{f} = x{f} if x{f} == x{f} else 0.0")


def _emit_sum(src: _Source, tree: Tree, node: int, depth: int) -> None:
    src.add(depth, f"if {_condition(tree, node)}:")
    _emit_sum_child(src, tree, tree.left[node], depth + 1)
    src.add(depth, "else:")
    _emit_sum_child(src, tree, tree.right[node], depth + 1)


def _emit_sum_child(src: _Source, tree: Tree, child: int, depth: int) -> None:
    if child < 0:
        src.add(depth, f"s += {_literal(tree.leaf_value[~child])}")
    else:
        _emit_sum(src, tree, child, depth)


def _emit_path(src: _Source, tree: Tree, node: int, depth: int, values: Sequence[float]) -> None:
    """Saabas: each split on the path adds (child's expected value - node's) to its feature."""
    src.add(depth, f"if {_condition(tree, node)}:")
    _emit_path_child(src, tree, node, tree.left[node], depth + 1, values)
    src.add(depth, "else:")
    _emit_path_child(src, tree, node, tree.right[node], depth + 1, values)


def _emit_path_child(
    src: _Source, tree: Tree, node: int, child: int, depth: int, values: Sequence[float]
) -> None:
    reached = tree.leaf_value[~child] if child < 0 else values[child]
    src.add(depth, f"a{tree.split_feature[node]} += {_literal(reached - values[node])}")
    if child >= 0:
        _emit_path(src, tree, child, depth, values)


def _compile(source: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {"__builtins__": {}}
    exec(compile(source, f"<riskguard-trees:{name}>", "exec"), namespace)
    fn: Callable[..., Any] = namespace[name]
    return fn


def compile_sum(ensemble: Ensemble) -> Callable[[Sequence[float]], float]:
    """``f(x) -> sum of the trees' leaf values`` for one row ``x`` (len ``n_features``)."""
    src = _Source()
    src.add(0, "def ensemble_sum(x):")
    _prologue(src, ensemble)
    src.add(1, "s = 0.0")
    for tree in ensemble.trees:
        if tree.split_feature:
            _emit_sum(src, tree, 0, 1)
        else:
            src.add(1, f"s += {_literal(tree.leaf_value[0])}")
    src.add(1, "return s")
    return _compile("\n".join(src.lines), "ensemble_sum")


def compile_path_attribution(
    ensemble: Ensemble,
) -> Callable[[Sequence[float]], tuple[float, ...]]:
    """``f(x) -> per-input sums of (expected value after a split - before it)`` over the path
    ``x`` takes in every tree (Saabas). They add up to ``sum(x) - sum of root expectations``."""
    src = _Source()
    src.add(0, "def ensemble_path(x):")
    _prologue(src, ensemble)
    for i in range(ensemble.n_features):
        src.add(1, f"a{i} = 0.0")
    for tree in ensemble.trees:
        if tree.split_feature:
            _emit_path(src, tree, 0, 1, tree.node_values())
    accumulators = ", ".join(f"a{i}" for i in range(ensemble.n_features))
    src.add(1, f"return ({accumulators}{',' if ensemble.n_features == 1 else ''})")
    return _compile("\n".join(src.lines), "ensemble_path")


def root_expectation(ensemble: Ensemble) -> float:
    """Sum over trees of the root's expected value (where path attributions start from)."""
    return sum(t.node_values()[0] if t.split_feature else t.leaf_value[0] for t in ensemble.trees)


# ------------------------------------------------------------------------------------------
# From the libraries


def _tree_from_lightgbm(block: Mapping[str, str], index: int) -> Tree:
    def numbers(key: str, kind: type) -> list[Any]:
        text = block.get(key, "").strip()
        return [kind(v) for v in text.split()] if text else []

    if int(block.get("num_cat", "0")) != 0 or int(block.get("is_linear", "0")) != 0:
        raise EnsembleError(f"tree {index}: categorical splits and linear trees are not supported")
    decision = numbers("decision_type", int)
    if any(d & 1 for d in decision):
        raise EnsembleError(f"tree {index}: categorical splits are not supported")
    leaf_value = numbers("leaf_value", float)
    n = len(leaf_value) - 1
    leaf_count = numbers("leaf_count", float) or [1.0] * len(leaf_value)
    return Tree(
        split_feature=tuple(numbers("split_feature", int)),
        threshold=tuple(numbers("threshold", float)),
        left=tuple(numbers("left_child", int)),
        right=tuple(numbers("right_child", int)),
        default_left=tuple(bool(d & 2) for d in decision),
        missing=tuple(MISSING_TYPES[(d >> 2) & 3] for d in decision),
        count=tuple(numbers("internal_count", float)) if n else (),
        leaf_value=tuple(leaf_value),
        leaf_count=tuple(leaf_count),
    )


def ensemble_from_lightgbm(model_text: str) -> Ensemble:
    """Parse LightGBM's native text model (``Booster.model_to_string()``)."""
    header: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current = header
    for line in model_text.splitlines():
        if line.startswith("Tree="):
            current = {}
            blocks.append(current)
            continue
        if line.startswith("end of trees"):
            break
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if header.get("num_class", "1") != "1" or not blocks:
        raise EnsembleError("only single-output LightGBM models are supported")
    n_features = int(header["max_feature_idx"]) + 1
    trees = tuple(_tree_from_lightgbm(b, i) for i, b in enumerate(blocks))
    ensemble = Ensemble(n_features, trees)
    return Ensemble.from_json(ensemble.to_json())  # the same checks as a loaded file


def ensemble_from_iforest(forest: Any, n_features: int) -> Ensemble:
    """Export a fitted scikit-learn IsolationForest: each leaf's value is its path length
    (depth + the average path length of its training rows - 1, as scikit-learn computes it),
    so the ensemble's sum is the forest's total path length before the 2**(-mean/c) map."""
    trees = []
    for index, (estimator, features) in enumerate(
        zip(forest.estimators_, forest.estimators_features_, strict=True)
    ):
        t = estimator.tree_
        lengths = forest._decision_path_lengths[index]
        average = forest._average_path_length_per_tree[index]
        subset = forest._max_features != n_features
        internal: dict[int, int] = {}
        leaves: dict[int, int] = {}
        for node in range(t.node_count):
            if t.children_left[node] == -1:
                leaves[node] = len(leaves)
            else:
                internal[node] = len(internal)

        def child(
            node: int, internal: dict[int, int] = internal, leaves: dict[int, int] = leaves
        ) -> int:
            return internal[node] if node in internal else ~leaves[node]

        split_feature, threshold, left, right, count = [], [], [], [], []
        for node in internal:
            f = int(t.feature[node])
            split_feature.append(int(features[f]) if subset else f)
            threshold.append(float(t.threshold[node]))
            left.append(child(int(t.children_left[node])))
            right.append(child(int(t.children_right[node])))
            count.append(float(t.n_node_samples[node]))
        leaf_value = [float(lengths[n] + average[n] - 1.0) for n in leaves]
        trees.append(
            Tree(
                split_feature=tuple(split_feature),
                threshold=tuple(threshold),
                left=tuple(left),
                right=tuple(right),
                default_left=tuple(False for _ in internal),
                missing=tuple("none" for _ in internal),
                count=tuple(count),
                leaf_value=tuple(leaf_value),
                leaf_count=tuple(float(t.n_node_samples[n]) for n in leaves),
            )
        )
    return Ensemble(n_features, tuple(trees), float32_inputs=True)


def average_path_length(n: float) -> float:
    """c(n): the average path length of an unsuccessful search in a binary search tree of n."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + 0.5772156649015329) - 2.0 * (n - 1.0) / n
