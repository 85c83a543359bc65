"""Calibrated scores: one monotone map from a model's raw output to [0, 1] per version.

Thresholds in a pack (challenge 0.5, review 0.7, block 0.9) must mean the same whichever
model version is active, so raw outputs are never used as scores:

- ``platt`` (supervised, gbm): ``1 / (1 + exp(-(a * raw + b)))`` fitted by maximum likelihood
  on a held-out, later slice of the training period (Platt's smoothed targets), so the score
  estimates the probability of fraud at the base rate the model will meet. Strictly increasing,
  so ranking metrics are unchanged by it.
- ``quantile`` (anomaly kinds: isolation forest, online): the empirical distribution of the
  training traffic's raw scores, anchored at a contamination rate ``c``: the score is
  ``0.5 * q / (1 - c)`` for a raw score at quantile ``q`` below ``1 - c`` and
  ``0.5 + 0.5 * (q - (1 - c)) / c`` above, so 0.5 always means "more anomalous than all but
  the top ``c`` of normal traffic" and 0.9 the top ``c / 5``. Piecewise linear between knots;
  beyond the last knot the score approaches 1 exponentially (strictly increasing, no ties).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class CalibrationError(ValueError):
    """A calibration document that cannot be used."""


class Calibration:
    """Maps a raw model output to a score in [0, 1]; increasing."""

    method = ""

    def __call__(self, raw: float) -> float:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


class Platt(Calibration):
    method = "platt"

    def __init__(self, a: float, b: float) -> None:
        if not (math.isfinite(a) and math.isfinite(b) and a > 0):
            raise CalibrationError("platt calibration needs finite a > 0 and b")
        self.a = a
        self.b = b

    def __call__(self, raw: float) -> float:
        z = self.a * raw + self.b
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}

    @classmethod
    def fit(cls, raw: Sequence[float], labels: Sequence[int]) -> Platt:
        """Maximum likelihood with Platt's (1999) smoothed targets, by Newton's method with a
        backtracking line search; a slice with one class only gives the plain logistic link."""
        f = np.asarray(raw, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        positives = float(y.sum())
        negatives = float(len(y) - positives)
        if positives == 0 or negatives == 0:
            return cls(1.0, 0.0)
        t = np.where(y > 0, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

        def loss(a: float, b: float) -> float:
            z = a * f + b
            return float(np.sum(np.logaddexp(0.0, z) - t * z))

        a, b = 1.0, math.log((positives + 1.0) / (negatives + 1.0))
        value = loss(a, b)
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-np.clip(a * f + b, -500.0, 500.0)))
            w = p * (1.0 - p)
            g_a, g_b = float(np.sum((p - t) * f)), float(np.sum(p - t))
            h_aa = float(np.sum(w * f * f)) + 1e-12
            h_ab = float(np.sum(w * f))
            h_bb = float(np.sum(w)) + 1e-12
            det = h_aa * h_bb - h_ab * h_ab
            if det <= 0:
                break
            d_a = -(h_bb * g_a - h_ab * g_b) / det
            d_b = -(h_aa * g_b - h_ab * g_a) / det
            step = 1.0
            while step > 1e-10:
                new = loss(a + step * d_a, b + step * d_b)
                if new <= value:
                    break
                step /= 2.0
            else:
                break
            a, b = a + step * d_a, b + step * d_b
            improvement, value = value - new, new
            if improvement < 1e-10 * max(1.0, abs(value)):
                break
        if not a > 0:
            return cls(1.0, 0.0)
        return cls(a, b)


class Quantile(Calibration):
    method = "quantile"

    def __init__(self, knots_x: Sequence[float], knots_y: Sequence[float], contamination: float):
        xs = [float(v) for v in knots_x]
        ys = [float(v) for v in knots_y]
        if len(xs) < 2 or len(xs) != len(ys):
            raise CalibrationError("quantile calibration needs at least two knots")
        if any(not math.isfinite(v) for v in (*xs, *ys)):
            raise CalibrationError("quantile calibration knots must be finite")
        if any(b <= a for a, b in itertools.pairwise(xs)):
            raise CalibrationError("quantile calibration knots must increase strictly")
        if any(b < a for a, b in itertools.pairwise(ys)) or ys[0] < 0 or ys[-1] > 1:
            raise CalibrationError("quantile calibration targets must rise within [0, 1]")
        if not 0.0 < contamination < 1.0:
            raise CalibrationError("contamination must be in (0, 1)")
        self.xs = xs
        self.ys = ys
        self.contamination = contamination
        # Above the last knot: 1 - (1 - y_last) * exp(-(x - x_last) / scale), so ranks hold.
        self._scale = max(xs[-1] - xs[len(xs) // 2], 1e-12) / 4.0

    def __call__(self, raw: float) -> float:
        xs = self.xs
        if raw != raw:
            return math.nan
        k = bisect.bisect_right(xs, raw)
        if k == 0:
            return self.ys[0]
        if k == len(xs):
            return 1.0 - (1.0 - self.ys[-1]) * math.exp(-(raw - xs[-1]) / self._scale)
        x0, x1 = xs[k - 1], xs[k]
        y0, y1 = self.ys[k - 1], self.ys[k]
        return y0 + (y1 - y0) * (raw - x0) / (x1 - x0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "contamination": self.contamination,
            "knots_x": self.xs,
            "knots_y": self.ys,
        }

    @classmethod
    def fit(cls, reference: Sequence[float], contamination: float) -> Quantile:
        """Knots at quantiles of ``reference`` (denser in the tail) and their target scores."""
        values = np.sort(np.asarray(reference, dtype=np.float64))
        values = values[np.isfinite(values)]
        if len(values) < 2 or values[0] == values[-1]:
            raise CalibrationError("quantile calibration needs varied reference scores")
        c = contamination
        tail = 1.0 - c * np.geomspace(1.0, 1e-3, 40)
        levels = np.unique(np.concatenate([np.linspace(0.0, 1.0 - c, 41), tail]))
        xs = np.quantile(values, levels)
        ys = np.where(
            levels <= 1.0 - c, 0.5 * levels / (1.0 - c), 0.5 + 0.5 * (levels - (1 - c)) / c
        )
        # Ties in the raw scores give repeated knots: keep one per value, at its mean target.
        unique_x, inverse = np.unique(xs, return_inverse=True)
        unique_y = np.bincount(inverse, weights=ys) / np.bincount(inverse)
        if len(unique_x) < 2:
            raise CalibrationError("quantile calibration needs varied reference scores")
        return cls(unique_x.tolist(), np.maximum.accumulate(unique_y).tolist(), c)


def calibration_from_dict(document: Mapping[str, Any]) -> Calibration:
    """Build a calibration from its manifest form; raises CalibrationError."""
    method = document.get("method")
    try:
        if method == "platt":
            return Platt(float(document["a"]), float(document["b"]))
        if method == "quantile":
            return Quantile(
                document["knots_x"], document["knots_y"], float(document["contamination"])
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"bad {method} calibration: {exc}") from None
    raise CalibrationError(f"unknown calibration method {method!r}")
