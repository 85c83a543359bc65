"""Served models: the engine's ``Model`` protocol over a verified artifact, fast per event.

``score(features)`` reads the model's inputs from the decision's environment (the paths in
``features``), computes the raw output with code generated at load (no library call per event),
and calibrates it to [0, 1]. Events of a type the model was not trained for get NaN, which the
engine treats as "no model" (so a transaction model never scores logins).

Contributions are per input name, in score units, and add up to ``score - base_score`` (the
score of a typical event: the calibrated expected raw output):

- ``gbm``: exact TreeSHAP in LightGBM's raw (log-odds) units, rescaled by
  ``(score - base) / (raw - expected raw)``; ``explain_raw`` gives the raw values, equal to
  LightGBM's ``pred_contrib``.
- ``isolation_forest``: path attribution — each split on the row's path moves the expected path
  length (the count-weighted mean of the leaves below); a split that shortens it makes the row
  more anomalous. Rescaled the same way.
- ``online``: the same on half-space trees' expected mass sums.

The forest and the online model fill a missing input with its training median (they were
trained that way); gbm follows LightGBM's own missing-value rules.

They are computed lazily, when the mapping is first read, and not at all below
``explain_min_score`` (an API flag, by default the model's threshold: explaining costs two to
four times what scoring does — TreeSHAP about a whole decision — and an event the model finds
unremarkable rarely needs it). The online model learns each event after scoring it (deferred to
the start of the next call, so a lazy explanation still sees the state that scored its event);
this makes it the one kind whose scores depend on the traffic seen since it was loaded.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from riskguard.adapters.ml.artifact import (
    ForeignArtifactError,
    Manifest,
    read_artifact,
)
from riskguard.adapters.ml.calibration import Calibration, CalibrationError, calibration_from_dict
from riskguard.adapters.ml.hst import HalfSpaceTrees, HstError
from riskguard.adapters.ml.inputs import InputError, compile_inputs
from riskguard.adapters.ml.trees import (
    Ensemble,
    EnsembleError,
    average_path_length,
    compile_path_attribution,
    compile_sum,
    root_expectation,
)
from riskguard.engine.models import ModelScore

NAN = math.nan


class _Contributions(Mapping[str, float]):
    """Contributions computed on first use."""

    __slots__ = ("_args", "_model", "_values")

    def __init__(self, model: ServedModel, *args: Any) -> None:
        self._model = model
        self._args = args
        self._values: dict[str, float] | None = None

    def _get(self) -> dict[str, float]:
        if self._values is None:
            self._values = self._model.contributions(*self._args)
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class ServedModel:
    """What every kind shares: inputs, event types, calibration, the ``Model`` protocol."""

    kind = ""
    explain_method = "path"

    def __init__(
        self, manifest: Manifest, calibration: Calibration, *, explain_min_score: float = 0.0
    ) -> None:
        self.manifest = manifest
        self.calibration = calibration
        self.explain_min_score = explain_min_score
        self._version = manifest.version
        self._names = tuple(spec.name for spec in manifest.inputs)
        self._getters, paths = compile_inputs(manifest.inputs, manifest.paths)
        self._features = ("type", *(p for p in paths if p != "type"))
        self._event_types = frozenset(manifest.event_types)
        self.threshold = manifest.threshold

    @property
    def version(self) -> str:
        return self._version

    @property
    def features(self) -> tuple[str, ...]:
        """The environment paths ``score`` reads (``type`` included, for the event gate)."""
        return self._features

    @property
    def event_types(self) -> frozenset[str]:
        """The event types the model was trained for; the engine asks it about no others."""
        return self._event_types

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._names

    def getter(self, name: str) -> Callable[[Mapping[str, Any]], float]:
        """The compiled getter of one input, by name."""
        return self._getters[self._names.index(name)]

    def vector(self, features: Mapping[str, Any]) -> list[float]:
        """The model's inputs for one event (NaN where missing)."""
        return [get(features) for get in self._getters]

    def score(self, features: Mapping[str, Any]) -> ModelScore:
        if features.get("type") not in self._event_types:
            return ModelScore(NAN)
        return self.score_vector([get(features) for get in self._getters])

    def score_vector(self, x: list[float]) -> ModelScore:
        """Score one row of inputs (in ``input_names`` order)."""
        raw = self.raw(x)
        score = self.calibration(raw)
        if score < self.explain_min_score:
            return ModelScore(score)
        return ModelScore(score, _Contributions(self, x, raw, score))

    def raw(self, x: list[float]) -> float:
        """The uncalibrated output (higher is riskier)."""
        raise NotImplementedError

    def base_score(self) -> float:
        """The calibrated score of a typical event, where contributions start from."""
        raise NotImplementedError

    def contributions(self, x: list[float], raw: float, score: float) -> dict[str, float]:
        """Per input, its share of ``score - base_score()``."""
        raise NotImplementedError

    def _rescaled(self, attribution: Sequence[float], score: float) -> dict[str, float]:
        total = math.fsum(attribution)
        if total == 0.0:
            return dict.fromkeys(self._names, 0.0)
        factor = (score - self.base_score()) / total
        return {name: a * factor for name, a in zip(self._names, attribution, strict=True)}


class GbmModel(ServedModel):
    kind = "gbm"
    explain_method = "treeshap"

    def __init__(
        self,
        manifest: Manifest,
        calibration: Calibration,
        ensemble: Ensemble,
        *,
        explain_min_score: float = 0.0,
    ) -> None:
        from riskguard.adapters.ml.treeshap import TreeShap

        super().__init__(manifest, calibration, explain_min_score=explain_min_score)
        self._sum = compile_sum(ensemble)
        self._shap = TreeShap(ensemble)
        self._base = calibration(self._shap.bias)

    def raw(self, x: list[float]) -> float:
        return float(self._sum(x))

    def base_score(self) -> float:
        return self._base

    def explain_raw(self, x: Sequence[float]) -> tuple[list[float], float]:
        """TreeSHAP values in raw units and the expected raw output (LightGBM's pred_contrib)."""
        phi, bias = self._shap.explain(x)
        return [float(v) for v in phi], bias

    def contributions(self, x: list[float], raw: float, score: float) -> dict[str, float]:
        phi, bias = self._shap.explain(x)
        if raw == bias:
            return dict.fromkeys(self._names, 0.0)
        factor = (score - self._base) / (raw - bias)
        return {name: float(v) * factor for name, v in zip(self._names, phi, strict=True)}


class ForestModel(ServedModel):
    kind = "isolation_forest"

    def __init__(
        self,
        manifest: Manifest,
        calibration: Calibration,
        ensemble: Ensemble,
        *,
        max_samples: int,
        fill: Sequence[float],
        explain_min_score: float = 0.0,
    ) -> None:
        super().__init__(manifest, calibration, explain_min_score=explain_min_score)
        if len(fill) != ensemble.n_features or not all(math.isfinite(v) for v in fill):
            raise ValueError("fill needs one finite value per input")
        self._fill = tuple(float(v) for v in fill)
        self._sum = compile_sum(ensemble)
        self._path = compile_path_attribution(ensemble)
        self._denominator = len(ensemble.trees) * average_path_length(max_samples)
        self._root = root_expectation(ensemble)
        self._base = calibration(self._anomaly(self._root))

    def _anomaly(self, path_sum: float) -> float:
        return float(2.0 ** (-path_sum / self._denominator)) if self._denominator else 1.0

    def prepared(self, x: Sequence[float]) -> list[float]:
        """Missing inputs filled with their training median, then rounded to float32 (the
        precision scikit-learn's trees compare in)."""
        filled = [f if v != v else v for v, f in zip(x, self._fill, strict=True)]
        return array("f", filled).tolist()

    def raw(self, x: list[float]) -> float:
        return self._anomaly(self._sum(self.prepared(x)))

    def base_score(self) -> float:
        return self._base

    def contributions(self, x: list[float], raw: float, score: float) -> dict[str, float]:
        return self._rescaled(self._path(self.prepared(x)), score)


class OnlineModel(ServedModel):
    kind = "online"

    def __init__(
        self,
        manifest: Manifest,
        calibration: Calibration,
        trees: HalfSpaceTrees,
        *,
        fill: Sequence[float],
        learning: bool = True,
        explain_min_score: float = 0.0,
    ) -> None:
        super().__init__(manifest, calibration, explain_min_score=explain_min_score)
        if trees.n_features != len(self._names) or len(fill) != len(self._names):
            raise ValueError("the half-space trees need one feature and one fill per input")
        if not all(math.isfinite(v) for v in fill):
            raise ValueError("fill values must be finite")
        self.trees = trees
        self.learning = learning
        self._fill = tuple(float(v) for v in fill)
        self._pending: list[float] | None = None

    def prepared(self, x: list[float]) -> list[float]:
        """Missing inputs filled with their training median (as in training)."""
        total = sum(x)  # NaN if any input is missing; the common case copies nothing
        if total == total:
            return x
        return [f if v != v else v for v, f in zip(x, self._fill, strict=True)]

    def flush(self) -> None:
        """Learn the last scored row now (learning is deferred to the next call)."""
        if self._pending is not None:
            self.trees.learn(self._pending)
            self._pending = None

    def raw(self, x: list[float]) -> float:
        return self.trees.score(self.prepared(x))

    def score_vector(self, x: list[float]) -> ModelScore:
        self.flush()
        row = self.prepared(x)
        raw = self.trees.score(row)
        score = self.calibration(raw)
        if self.learning:
            self._pending = row
        if score < self.explain_min_score:
            return ModelScore(score)
        return ModelScore(score, _Contributions(self, row, raw, score))

    def base_score(self) -> float:
        return self.calibration(self.trees.baseline())

    def contributions(self, x: list[float], raw: float, score: float) -> dict[str, float]:
        return self._rescaled(self.trees.attribution(self.prepared(x)), score)


def _json(files: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ForeignArtifactError(f"{name} is not valid JSON ({exc})") from None


def build_model(
    manifest: Manifest, files: Mapping[str, bytes], *, explain_min_score: float | None = None
) -> ServedModel:
    """The served model of a verified artifact; raises ForeignArtifactError on bad content.

    ``explain_min_score`` (the score from which contributions are given) defaults to the
    model's threshold: explaining costs two to four times what scoring does, and an event the
    model finds unremarkable needs no breakdown of it. 0 explains every event.
    """
    floor = manifest.threshold if explain_min_score is None else explain_min_score
    try:
        calibration = calibration_from_dict(manifest.calibration)
        if manifest.kind == "gbm":
            ensemble = Ensemble.from_json(_json(files, "trees.json"))
            return GbmModel(manifest, calibration, ensemble, explain_min_score=floor)
        if manifest.kind == "isolation_forest":
            document = _json(files, "forest.json")
            if not isinstance(document, dict) or document.get("format") != "riskguard-forest/1":
                raise ForeignArtifactError("forest.json is not a riskguard-forest/1 document")
            ensemble = Ensemble.from_json(document.get("ensemble"))
            return ForestModel(
                manifest,
                calibration,
                ensemble,
                max_samples=int(document["max_samples"]),
                fill=[float(v) for v in document["fill"]],
                explain_min_score=floor,
            )
        document = _json(files, "hst.json")
        if not isinstance(document, dict) or document.get("format") != "riskguard-hst/1":
            raise ForeignArtifactError("hst.json is not a riskguard-hst/1 document")
        trees = HalfSpaceTrees.from_json(document.get("state") or {})
        fill = [float(v) for v in document["fill"]]
        return OnlineModel(manifest, calibration, trees, fill=fill, explain_min_score=floor)
    except (EnsembleError, HstError, CalibrationError, InputError) as exc:
        raise ForeignArtifactError(f"model {manifest.version}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ForeignArtifactError):
            raise
        raise ForeignArtifactError(f"model {manifest.version} is malformed: {exc!r}") from None


def load_model(directory: str | Path, *, explain_min_score: float | None = None) -> ServedModel:
    """Verify a version directory (see ``artifact.read_artifact``) and build its model."""
    manifest, files = read_artifact(Path(directory))
    return build_model(manifest, files, explain_min_score=explain_min_score)
