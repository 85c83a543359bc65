"""Quality figures, population stability and the evaluation report of a model on labelled rows.

- ROC-AUC and average precision (AUPRC, the area under the precision-recall curve as
  scikit-learn's ``average_precision_score`` computes it) on the calibrated scores;
- precision, recall and F1 at the model's threshold and the confusion matrix there;
- PSI (population stability index) of the score and of the top inputs against the binned
  training distribution stored in the manifest: ``sum((a - e) * ln(a / e))`` over the bins
  (missing values one more bin), shares floored at 1e-4. Rules of thumb: < 0.1 stable,
  0.1-0.25 drifting, > 0.25 shifted.

The report is a markdown file with two PNG plots (precision-recall curve, score distributions
by class), drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from riskguard.adapters.ml.artifact import Bins

PSI_FLOOR = 1e-4
SCORE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 0.999)
FEATURE_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def make_bins(values: Sequence[float] | np.ndarray[Any, Any], quantiles: Sequence[float]) -> Bins:
    """Bins at the quantiles of ``values`` (repeated edges merged) and their shares."""
    data = np.asarray(values, dtype=np.float64)
    finite = data[~np.isnan(data)]
    edges = np.unique(np.quantile(finite, quantiles)).tolist() if len(finite) else []
    counts = [0] * (len(edges) + 2)
    for v in data.tolist():
        counts[bin_index(edges, v)] += 1
    total = max(len(data), 1)
    return Bins(edges=tuple(edges), expected=tuple(c / total for c in counts))


def bin_index(edges: Sequence[float], value: float) -> int:
    """The bin of ``value``: ``bisect_right`` over the edges; NaN is the last (missing) bin."""
    if value != value:
        return len(edges) + 1
    return bisect.bisect_right(edges, value)


def psi(expected: Sequence[float], counts: Sequence[int]) -> float:
    """Population stability of observed bin ``counts`` against ``expected`` shares."""
    total = sum(counts)
    if total == 0:
        return 0.0
    value = 0.0
    for e, c in zip(expected, counts, strict=True):
        a = max(c / total, PSI_FLOOR)
        e = max(e, PSI_FLOOR)
        value += (a - e) * math.log(a / e)
    return value


def psi_of(bins: Bins, values: Sequence[float] | np.ndarray[Any, Any]) -> float:
    counts = [0] * len(bins.expected)
    for v in np.asarray(values, dtype=np.float64).tolist():
        counts[bin_index(bins.edges, v)] += 1
    return psi(bins.expected, counts)


def quality(
    scores: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], threshold: float
) -> dict[str, Any]:
    """Ranking and threshold metrics of calibrated scores against labels."""
    from sklearn.metrics import (  # type: ignore[import-untyped]
        average_precision_score,
        roc_auc_score,
    )

    y = np.asarray(labels, dtype=np.int8)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    both = 0 < positives < len(y)
    flagged = s >= threshold
    tp = int(np.sum(flagged & (y == 1)))
    fp = int(np.sum(flagged & (y == 0)))
    fn = int(np.sum(~flagged & (y == 1)))
    tn = int(np.sum(~flagged & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "rows": len(y),
        "positives": positives,
        "roc_auc": float(roc_auc_score(y, s)) if both else None,
        "auprc": float(average_precision_score(y, s)) if both else None,
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def write_report(
    directory: Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    metrics: Mapping[str, Any],
    stability: Mapping[str, float],
    scores: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
) -> Path:
    """``report.md``, ``pr_curve.png`` and ``score_distribution.png`` in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    directory.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=np.int8)
    s = np.asarray(scores, dtype=np.float64)

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    if 0 < y.sum() < len(y):
        precision, recall, _ = precision_recall_curve(y, s)
        ax.step(recall, precision, where="post", color="#1f5fa8")
    ax.axhline(float(y.mean()) if len(y) else 0.0, color="grey", lw=0.8, ls="--", label="base rate")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    auprc = metrics.get("auprc")
    ax.set_title(
        f"Precision-recall (AUPRC {auprc:.3f})" if auprc is not None else "Precision-recall"
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(directory / "pr_curve.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    edges = np.linspace(0.0, 1.0, 41).tolist()
    for value, name, color in ((0, "legitimate", "#4c9a2a"), (1, "fraud", "#c0392b")):
        part = s[y == value]
        if len(part):
            ax.hist(part, bins=edges, alpha=0.6, label=f"{name} ({len(part):,})", color=color)
    ax.axvline(float(metrics.get("threshold", 0.5)), color="black", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("events")
    ax.set_title("Score distribution by class")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "score_distribution.png")
    plt.close(fig)

    confusion = metrics.get("confusion", {})
    lines = [
        f"# {title}",
        "",
        *(f"- {key}: {value}" for key, value in summary.items()),
        "",
        "| metric | value |",
        "|---|---|",
        *(
            f"| {name} | {_fmt(metrics.get(name))} |"
            for name in (
                "rows",
                "positives",
                "roc_auc",
                "auprc",
                "threshold",
                "precision",
                "recall",
                "f1",
            )
        ),
        "",
        "Confusion matrix at the threshold:",
        "",
        "| | flagged | not flagged |",
        "|---|---|---|",
        f"| fraud | {confusion.get('tp', 0):,} | {confusion.get('fn', 0):,} |",
        f"| legitimate | {confusion.get('fp', 0):,} | {confusion.get('tn', 0):,} |",
        "",
        "Population stability against the training data (PSI; < 0.1 stable, > 0.25 shifted):",
        "",
        "| variable | PSI |",
        "|---|---|",
        *(f"| {name} | {value:.4f} |" for name, value in stability.items()),
        "",
        "![precision-recall curve](pr_curve.png)",
        "",
        "![score distribution](score_distribution.png)",
        "",
    ]
    path = directory / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
