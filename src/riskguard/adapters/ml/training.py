"""Training the three kinds into sealed artifacts, evaluated through their served form.

- ``gbm``: LightGBM, binary objective, on the earlier 80 % of the training rows; boosting stops
  when average precision on the later 20 % (time order, never shuffled) has not improved for
  ``early_stopping`` rounds (at most ``max_trees``, 300: a model must stay cheap to serve);
  Platt calibration is fitted on that same later slice, so the score estimates the probability
  of fraud on data the trees did not see. Depth and leaves are capped (``max_depth`` 5, 15
  leaves) so that exact TreeSHAP tables stay small.
- ``isolation_forest``: scikit-learn, on every training row (labels unused); missing inputs are
  filled with the training median; calibration: quantiles of the training scores.
- ``online``: river's HalfSpaceTrees learns the training rows in time order (missing inputs
  filled with the training median, as serving does); calibration:
  quantiles of its prequential scores (each row scored before it was learnt, after the first
  window), which is how it meets live traffic.

Every metric in the manifest is computed by the served model (generated code, calibrated), not by
the library, so it is what the engine will see. Single-threaded and seeded: the same data and
parameters give the same trees.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, Final

import numpy as np

from riskguard.adapters.ml.artifact import Manifest, canonical, seal
from riskguard.adapters.ml.calibration import Platt, Quantile
from riskguard.adapters.ml.datasets import Frame
from riskguard.adapters.ml.evaluation import (
    FEATURE_QUANTILES,
    SCORE_QUANTILES,
    make_bins,
    psi_of,
    quality,
)
from riskguard.adapters.ml.hst import HalfSpaceTrees, QuantileScaler
from riskguard.adapters.ml.serving import OnlineModel, ServedModel, build_model
from riskguard.adapters.ml.trees import ensemble_from_iforest, ensemble_from_lightgbm

DEFAULTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "gbm": {
        "learning_rate": 0.05,
        "num_leaves": 15,
        "max_depth": 5,
        "min_child_samples": 20,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "scale_pos_weight": 1.0,
        "max_trees": 300,
        "early_stopping": 100,
        "valid_fraction": 0.2,
    },
    "isolation_forest": {"n_estimators": 100, "max_samples": 256, "contamination": 0.01},
    "online": {"n_trees": 25, "height": 8, "window_size": 2500, "contamination": 0.01},
}
TOP_FEATURES: Final = 5
_SAMPLE: Final = 400  # rows whose contributions rank the inputs for monitoring


class TrainingError(ValueError):
    """Training data or parameters that cannot make a model."""


@dataclass
class Fitted:
    """What a kind's fitter hands back: the artifact's files, the calibration, facts for the
    manifest, the reference rows (what monitoring compares with) and their raw outputs."""

    files: dict[str, bytes]
    calibration: dict[str, Any]
    info: dict[str, Any]
    reference: Frame
    reference_raw: np.ndarray[Any, Any]


@dataclass
class Trained:
    """A sealed model, ready to write, with its served form and test scores."""

    manifest: Manifest
    files: dict[str, bytes]
    model: ServedModel
    test_scores: np.ndarray[Any, Any] | None


def _libraries() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("riskguard", "numpy", "scikit-learn", "lightgbm", "river"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _params(kind: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    params = dict(DEFAULTS[kind])
    for key, value in (overrides or {}).items():
        if key not in params:
            raise TrainingError(f"unknown {kind} parameter {key!r}; known: {', '.join(params)}")
        params[key] = type(params[key])(value)
    return params


def _fit_gbm(train: Frame, params: Mapping[str, Any], seed: int) -> Fitted:
    import lightgbm as lgb

    n = len(train.y)
    cut = int(n * (1.0 - params["valid_fraction"]))
    fit, valid = train.take(np.arange(n) < cut), train.take(np.arange(n) >= cut)
    if fit.y.sum() == 0 or valid.y.sum() == 0:
        raise TrainingError("gbm needs frauds in both the earlier and the later training slice")
    booster_params = {
        "objective": "binary",
        "metric": "average_precision",
        "learning_rate": params["learning_rate"],
        "num_leaves": params["num_leaves"],
        "max_depth": params["max_depth"],
        "min_data_in_leaf": params["min_child_samples"],
        "bagging_fraction": params["subsample"],
        "bagging_freq": 1,
        "feature_fraction": params["colsample_bytree"],
        "lambda_l2": params["reg_lambda"],
        "scale_pos_weight": params["scale_pos_weight"],
        "num_threads": 1,
        "deterministic": True,
        "force_row_wise": True,
        "seed": seed,
        "verbosity": -1,
    }
    names = [spec.name for spec in train.inputs]
    booster = lgb.train(
        booster_params,
        lgb.Dataset(fit.x, label=fit.y, feature_name=names, free_raw_data=True),
        num_boost_round=params["max_trees"],
        valid_sets=[lgb.Dataset(valid.x, label=valid.y, feature_name=names)],
        callbacks=[lgb.early_stopping(params["early_stopping"], verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    text = booster.model_to_string(num_iteration=best)
    ensemble = ensemble_from_lightgbm(text)
    raw_valid = np.asarray(booster.predict(valid.x, raw_score=True, num_iteration=best))
    calibration = Platt.fit(raw_valid.tolist(), valid.y.tolist())
    files = {
        "model.txt": text.encode(),
        "trees.json": json.dumps(ensemble.to_json(), separators=(",", ":")).encode(),
    }
    info = {"trees": len(ensemble.trees), "fit_rows": cut, "validation_rows": n - cut}
    return Fitted(files, calibration.to_dict(), info, valid, raw_valid)


def _fit_forest(train: Frame, params: Mapping[str, Any], seed: int) -> Fitted:
    from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]

    fill = _medians(train.x)
    x = np.where(np.isnan(train.x), fill, train.x)
    forest = IsolationForest(
        n_estimators=params["n_estimators"],
        max_samples=min(params["max_samples"], len(x)),
        random_state=seed,
        n_jobs=1,
    ).fit(x)
    ensemble = ensemble_from_iforest(forest, x.shape[1])
    raw = -forest.score_samples(x)
    calibration = Quantile.fit(raw.tolist(), params["contamination"])
    document = {
        "format": "riskguard-forest/1",
        "max_samples": int(forest._max_samples),
        "fill": fill.tolist(),
        "ensemble": ensemble.to_json(),
    }
    files = {"forest.json": json.dumps(document, separators=(",", ":")).encode()}
    return Fitted(files, calibration.to_dict(), {"trees": len(ensemble.trees)}, train, raw)


def _fit_online(train: Frame, params: Mapping[str, Any], seed: int) -> Fitted:
    from river.anomaly import HalfSpaceTrees as RiverHst

    window = params["window_size"]
    if len(train.y) < 2 * window:
        raise TrainingError(f"online needs at least two windows ({2 * window} rows) to train")
    fill = _medians(train.x)
    x = np.where(np.isnan(train.x), fill, train.x)
    scaler = QuantileScaler.fit(x.T)
    river: Any = RiverHst(
        n_trees=params["n_trees"], height=params["height"], window_size=window, seed=seed
    )
    reference: list[float] = []
    for row in x.tolist():
        scaled = dict(enumerate(scaler(row)))
        if not river._first_window:
            reference.append(river.score_one(scaled))
        river.learn_one(scaled)
    trees = HalfSpaceTrees.from_river(river, scaler)
    calibration = Quantile.fit(reference, params["contamination"])
    document = {"format": "riskguard-hst/1", "fill": fill.tolist(), "state": trees.to_json()}
    files = {"hst.json": json.dumps(document, separators=(",", ":")).encode()}
    reference_rows = train.take(np.arange(len(train.y)) >= window)
    info = {"trees": params["n_trees"]}
    return Fitted(files, calibration.to_dict(), info, reference_rows, np.asarray(reference))


def _medians(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Each column's median over its known values (0 for a column with none)."""
    fill = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        known = x[:, j][~np.isnan(x[:, j])]
        fill[j] = float(np.median(known)) if len(known) else 0.0
    return fill


_FITTERS: Final = {"gbm": _fit_gbm, "isolation_forest": _fit_forest, "online": _fit_online}


def score_rows(model: ServedModel, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Calibrated scores of rows, one ``score_vector`` call each (an online model learns them
    as it goes: prequential)."""
    return np.array([model.score_vector(row).score for row in x.tolist()], dtype=np.float64)


def _top_inputs(model: ServedModel, reference: Frame, seed: int) -> list[str]:
    """Inputs ranked by mean |contribution| over a sample of reference rows."""
    rng = np.random.default_rng(seed)
    rows = reference.x
    if len(rows) > _SAMPLE:
        rows = rows[np.sort(rng.choice(len(rows), _SAMPLE, replace=False))]
    totals = dict.fromkeys(model.input_names, 0.0)
    for row in rows.tolist():
        raw = model.raw(row)
        for name, value in model.contributions(row, raw, model.calibration(raw)).items():
            totals[name] += abs(value)
    ranked = sorted(totals, key=lambda name: -totals[name])
    return ranked[:TOP_FEATURES]


def train_model(
    frame: Frame,
    kind: str,
    *,
    train_mask: np.ndarray[Any, Any],
    test_mask: np.ndarray[Any, Any] | None = None,
    train_range: tuple[str, str] | None = None,
    test_range: tuple[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Trained:
    """Fit ``kind`` on the rows of ``train_mask`` and evaluate it on ``test_mask``."""
    if kind not in _FITTERS:
        raise TrainingError(f"unknown kind {kind!r}; expected one of {', '.join(_FITTERS)}")
    chosen = _params(kind, params)
    train = frame.take(train_mask)
    if len(train.y) < 50:
        raise TrainingError(f"only {len(train.y)} training rows; at least 50 are needed")
    say = progress or (lambda _m: None)
    say(f"fitting {kind} on {len(train.y):,} rows ({int(train.y.sum()):,} frauds)")
    fitted = _FITTERS[kind](train, chosen, seed)
    files, reference = fitted.files, fitted.reference
    threshold = 0.5
    data_params = {"kind": kind, "params": chosen, "seed": seed, "frame": frame.params}
    data_sha = _sha256(
        canonical(
            {
                "files": [f.sha256 for f in frame.files],
                "train_range": list(train_range or ()),
                "test_range": list(test_range or ()),
                **data_params,
            }
        )
    )
    document: dict[str, Any] = {
        "kind": kind,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "event_types": [frame.params.get("event_type", "transaction")],
        "inputs": [spec.model_dump() for spec in frame.inputs],
        "paths": dict(sorted(frame.schema.items())),
        "training": {
            "dataset": frame.dataset,
            "data_sha256": data_sha,
            "files": [f.model_dump() for f in frame.files],
            "params": {**chosen, "seed": seed, **fitted.info, **frame.params},
            "train_range": list(
                train_range or (frame.time_text(train.ts[0]), frame.time_text(train.ts[-1]))
            ),
            "test_range": list(test_range) if test_range else None,
            "first_event": frame.time_text(train.ts[0]),
            "last_event": frame.time_text(train.ts[-1]),
            "rows": len(train.y),
            "positives": int(train.y.sum()),
        },
        "metrics": {},
        "calibration": fitted.calibration,
        "threshold": threshold,
        "monitoring": {"score": {"edges": [], "expected": [1.0]}, "features": {}},
        "explain": {"method": "path", "base_score": 0.0, "top_features": []},
        "libraries": _libraries(),
    }
    draft = build_model(seal(document, files), files)
    say("computing reference distributions and metrics with the served model")
    reference_scores = np.array([draft.calibration(r) for r in fitted.reference_raw.tolist()])
    top = _top_inputs(draft, reference, seed)
    index = {name: i for i, name in enumerate(draft.input_names)}
    document["monitoring"] = {
        "score": make_bins(reference_scores, SCORE_QUANTILES).model_dump(),
        "features": {
            name: make_bins(reference.x[:, index[name]], FEATURE_QUANTILES).model_dump()
            for name in top
        },
    }
    document["explain"] = {
        "method": draft.explain_method,
        "base_score": draft.base_score(),
        "top_features": top,
    }
    metrics: dict[str, Any] = {}
    if kind == "gbm":
        metrics["validation"] = quality(reference_scores, reference.y, threshold)
    test_scores = None
    if test_mask is not None and test_mask.any():
        test = frame.take(test_mask)
        say(f"evaluating on {len(test.y):,} test rows ({int(test.y.sum()):,} frauds)")
        test_scores = score_rows(_fresh(draft, files), test.x)
        metrics["test"] = quality(test_scores, test.y, threshold)
        metrics["test"]["psi_score"] = psi_of(
            make_bins(reference_scores, SCORE_QUANTILES), test_scores
        )
    document["metrics"] = metrics
    manifest = seal(document, files)
    return Trained(manifest, files, build_model(manifest, files), test_scores)


def _fresh(model: ServedModel, files: Mapping[str, bytes]) -> ServedModel:
    """A model to score a sample with: an online model learns while scoring, so it gets a
    copy of its own rather than altering the one being sealed."""
    if isinstance(model, OnlineModel):
        return build_model(model.manifest, files)
    return model


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
