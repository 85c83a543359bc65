"""Models: exported trees equal the libraries, TreeSHAP equals LightGBM's, artifacts refuse
tampering, the registry activates and rolls back, and the engine decides with and without one.

Trained on the small subsets in tests/data/ml (module-scoped: each kind is trained once).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from river.anomaly import HalfSpaceTrees as RiverHst
from sklearn.ensemble import IsolationForest

from riskguard.adapters.ml.artifact import (
    ArtifactError,
    ForeignArtifactError,
    InputSpec,
    TamperedArtifactError,
    content_version,
    read_artifact,
    write_artifact,
)
from riskguard.adapters.ml.calibration import Platt, Quantile, calibration_from_dict
from riskguard.adapters.ml.datasets import (
    Frame,
    fdh_fields,
    fdh_pack,
    known_compromised_mask,
    load_creditcard,
    load_fdh,
    parse_bound,
)
from riskguard.adapters.ml.evaluation import make_bins, psi_of, quality
from riskguard.adapters.ml.hst import HalfSpaceTrees, QuantileScaler
from riskguard.adapters.ml.inputs import InputError, compile_input
from riskguard.adapters.ml.monitor import ModelMonitor
from riskguard.adapters.ml.registry import (
    ActiveModel,
    ModelRegistry,
    RegistryError,
    UnknownVersionError,
    load_active,
)
from riskguard.adapters.ml.serving import ForestModel, GbmModel, OnlineModel, load_model
from riskguard.adapters.ml.training import Trained, score_rows, train_model
from riskguard.adapters.ml.trees import (
    Ensemble,
    EnsembleError,
    average_path_length,
    compile_sum,
    ensemble_from_iforest,
)
from riskguard.engine.decide import Engine
from riskguard.engine.events import parse_event
from riskguard.engine.models import ModelScore
from riskguard.engine.rules import load_ruleset
from riskguard.engine.state import InMemoryStateStore
from riskguard.scoring import Scorer

DATA = Path(__file__).resolve().parents[1] / "data" / "ml"
CREDITCARD = DATA / "creditcard_sample.csv.gz"
FDH = DATA / "fdh_sample.csv.gz"
SPLIT = 22_000.0  # creditcard Time: train before, test after
PARAMS: dict[str, dict[str, Any]] = {
    "gbm": {"max_trees": 200, "early_stopping": 40},
    "isolation_forest": {},
    "online": {"window_size": 400},
}


@pytest.fixture(scope="module")
def cc() -> Frame:
    return load_creditcard(CREDITCARD)


@pytest.fixture(scope="module")
def trained(cc: Frame) -> dict[str, Trained]:
    return {
        kind: train_model(
            cc, kind, train_mask=cc.ts < SPLIT, test_mask=cc.ts >= SPLIT, params=params
        )
        for kind, params in PARAMS.items()
    }


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory, trained: dict[str, Trained]) -> Path:
    root = tmp_path_factory.mktemp("models")
    for t in trained.values():
        write_artifact(root, t.manifest, t.files)
    return root


def _copy(registry_dir: Path, version: str, tmp_path: Path) -> Path:
    target = tmp_path / version
    shutil.copytree(registry_dir / version, target)
    return target


# -- exported trees equal the libraries' own predictions --------------------------------------


def test_gbm_export_equals_lightgbm_raw_scores(trained: dict[str, Trained], cc: Frame) -> None:
    t = trained["gbm"]
    booster = lgb.Booster(model_str=t.files["model.txt"].decode())
    rows = cc.x[cc.ts >= SPLIT]
    expected = booster.predict(rows, raw_score=True)
    model = t.model
    assert isinstance(model, GbmModel)
    ours = np.array([model.raw(r) for r in rows.tolist()])
    assert np.max(np.abs(ours - expected)) <= 1e-9


def test_gbm_treeshap_equals_lightgbm_pred_contrib(trained: dict[str, Trained], cc: Frame) -> None:
    t = trained["gbm"]
    booster = lgb.Booster(model_str=t.files["model.txt"].decode())
    rows = cc.x[cc.ts >= SPLIT][:300]
    expected = booster.predict(rows, pred_contrib=True)
    model = t.model
    assert isinstance(model, GbmModel)
    for row, reference in zip(rows.tolist(), expected, strict=True):
        phi, bias = model.explain_raw(row)
        assert np.max(np.abs(np.array([*phi, bias]) - reference)) <= 1e-9
        assert math.isclose(sum(phi) + bias, model.raw(row), abs_tol=1e-9)


def test_gbm_treeshap_follows_missing_values(cc: Frame) -> None:
    x = cc.x.copy()
    x[::3, 13] = np.nan  # V14, the strongest input, missing in a third of the rows
    x[::5, 3] = 0.0
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbosity": -1, "num_threads": 1, "seed": 1},
        lgb.Dataset(x, label=cc.y),
        num_boost_round=30,
    )
    from riskguard.adapters.ml.trees import ensemble_from_lightgbm
    from riskguard.adapters.ml.treeshap import TreeShap

    ensemble = ensemble_from_lightgbm(booster.model_to_string())
    shap = TreeShap(ensemble)
    total = compile_sum(ensemble)
    rows = x[:200]
    contrib = booster.predict(rows, pred_contrib=True)
    raw = booster.predict(rows, raw_score=True)
    for row, reference, r in zip(rows.tolist(), contrib, raw, strict=True):
        phi, bias = shap.explain(row)
        assert np.max(np.abs(np.append(phi, bias) - reference)) <= 1e-9
        assert abs(total(row) - r) <= 1e-9


def test_isolation_forest_export_equals_scikit_learn(
    trained: dict[str, Trained], cc: Frame
) -> None:
    train = cc.x[cc.ts < SPLIT]
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0, n_jobs=1)
    forest.fit(train)  # the trainer's parameters and seed: the same forest
    rows = cc.x[cc.ts >= SPLIT]
    expected = -forest.score_samples(rows)
    model = trained["isolation_forest"].model
    assert isinstance(model, ForestModel)
    ours = np.array([model.raw(r) for r in rows.tolist()])
    assert np.max(np.abs(ours - expected)) <= 1e-9
    # and the export on its own, tree sums included
    ensemble = ensemble_from_iforest(forest, train.shape[1])
    total = compile_sum(ensemble)
    denominator = len(forest.estimators_) * average_path_length(forest._max_samples)
    direct = [2.0 ** (-total(array("f", r).tolist()) / denominator) for r in rows.tolist()]
    assert np.max(np.abs(np.array(direct) - expected)) <= 1e-12


def test_half_space_trees_score_and_learn_like_river(cc: Frame) -> None:
    scaler = QuantileScaler.fit(cc.x.T)
    river = RiverHst(n_trees=6, height=6, window_size=300, seed=3)
    rows = cc.x.tolist()
    for row in rows[:900]:
        river.learn_one(dict(enumerate(scaler(row))))
    ours = HalfSpaceTrees.from_river(river, scaler)
    for row in rows[900:2400]:
        expected = river.score_one(dict(enumerate(scaler(row))))
        assert abs(ours.score(row) - expected) <= 1e-12
        river.learn_one(dict(enumerate(scaler(row))))
        ours.learn(row)
    # the exported state round-trips through JSON
    again = HalfSpaceTrees.from_json(json.loads(json.dumps(ours.to_json())))
    for row in rows[2400:2600]:
        assert again.score(row) == ours.score(row)


def test_online_model_fills_missing_inputs_with_training_medians(
    trained: dict[str, Trained], cc: Frame
) -> None:
    model = load_model_from(trained["online"])
    row = cc.x[cc.ts >= SPLIT][0].tolist()
    filled = list(row)
    holed = list(row)
    fill = json.loads(trained["online"].files["hst.json"])["fill"]
    holed[3] = math.nan
    filled[3] = fill[3]
    assert model.raw(holed) == model.raw(filled)
    assert model.prepared(row) is row  # nothing missing: no copy


def test_contributions_add_up_to_score_minus_base(trained: dict[str, Trained], cc: Frame) -> None:
    rows = cc.x[cc.ts >= SPLIT][:50].tolist()
    for kind, t in trained.items():
        model = load_model_from(t)
        model.explain_min_score = 0.0
        for row in rows:
            result = model.score_vector(row)
            total = sum(result.contributions.values())
            assert math.isclose(total, result.score - model.base_score(), abs_tol=1e-9), kind
            assert set(result.contributions) == set(model.input_names)


def load_model_from(t: Trained) -> Any:
    from riskguard.adapters.ml.serving import build_model

    return build_model(t.manifest, t.files)


def test_models_explain_only_from_their_threshold_by_default(
    trained: dict[str, Trained], cc: Frame
) -> None:
    for t in trained.values():
        model = load_model_from(t)
        assert model.explain_min_score == model.threshold
        scores = [model.score_vector(row) for row in cc.x[cc.ts >= SPLIT].tolist()]
        low = next(s for s in scores if s.score < model.threshold)
        high = next(s for s in scores if s.score >= model.threshold)
        assert dict(low.contributions) == {}
        assert len(high.contributions) == len(model.input_names)


def test_online_model_learns_each_event_after_scoring_it(trained: dict[str, Trained]) -> None:
    model = load_model_from(trained["online"])
    assert isinstance(model, OnlineModel)
    before = model.trees.counter
    row = [0.0] * len(model.input_names)
    model.score_vector(row)
    assert model.trees.counter == before  # deferred to the next call
    model.score_vector(row)
    assert model.trees.counter == before + 1
    model.learning = False
    model.flush()
    model.score_vector(row)
    model.score_vector(row)
    assert model.trees.counter == before + 2


def test_trained_models_report_quality_and_calibrated_scores(trained: dict[str, Trained]) -> None:
    for kind, t in trained.items():
        test = t.manifest.metrics["test"]
        assert test["rows"] > 500
        assert test["positives"] > 10
        assert 0.5 < test["roc_auc"] <= 1.0, kind
        assert t.test_scores is not None
        assert np.all((t.test_scores >= 0) & (t.test_scores <= 1))
    assert trained["gbm"].manifest.metrics["test"]["auprc"] > 0.5
    assert trained["gbm"].manifest.explain.method == "treeshap"


# -- calibration, inputs, evaluation ---------------------------------------------------------


def test_platt_recovers_a_logistic_link() -> None:
    rng = np.random.default_rng(4)
    raw = rng.normal(size=20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * raw - 3.0)))).astype(int)
    fitted = Platt.fit(raw.tolist(), labels.tolist())
    assert abs(fitted.a - 2.0) < 0.2
    assert abs(fitted.b + 3.0) < 0.2
    assert calibration_from_dict(fitted.to_dict())(1.0) == fitted(1.0)


def test_quantile_calibration_anchors_the_contamination_at_one_half() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=50_000)
    cal = Quantile.fit(reference.tolist(), 0.01)
    assert abs(cal(float(np.quantile(reference, 0.99))) - 0.5) < 0.01
    assert abs(cal(float(np.quantile(reference, 0.5))) - 0.25) < 0.01
    points = np.linspace(-6, 12, 500)
    values = [cal(float(p)) for p in points]
    assert all(b > a for a, b in itertools.pairwise(values[250:]))  # no ties up top
    assert min(values) >= 0.0
    assert max(values) < 1.0


def test_inputs_compile_as_rule_expressions() -> None:
    schema = {"data.amount": "number", "features.f.count_1d": "number", "data.currency": "string"}
    get, paths = compile_input(
        InputSpec(name="mean", expr="data.amount / max(features.f.count_1d, 1)"), schema
    )
    assert paths == {"data.amount", "features.f.count_1d"}
    assert get({"data.amount": 10.0, "features.f.count_1d": 4.0}) == 2.5
    assert math.isnan(get({"features.f.count_1d": 4.0}))
    with pytest.raises(InputError, match="string"):
        compile_input(InputSpec(name="c", expr="data.currency"), schema)
    with pytest.raises(InputError, match="unknown field"):
        compile_input(InputSpec(name="c", expr="data.amout * 2"), schema)


def test_quality_and_psi() -> None:
    scores = np.array([0.9, 0.8, 0.2, 0.1, 0.6])
    labels = np.array([1, 0, 0, 0, 1])
    q = quality(scores, labels, 0.5)
    assert q["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 0}
    assert q["roc_auc"] == pytest.approx(5 / 6)
    rng = np.random.default_rng(6)
    bins = make_bins(rng.normal(size=20_000), (0.1, 0.3, 0.5, 0.7, 0.9))
    assert psi_of(bins, rng.normal(size=20_000)) < 0.01
    assert psi_of(bins, rng.normal(1.0, 1.0, size=20_000)) > 0.25


# -- FDH: the handbook's features from the engine's own definitions --------------------------


def test_fdh_rows_are_the_contract_events_fields() -> None:
    event = parse_event(
        {
            "event_id": "fdh-5",
            "type": "transaction",
            "occurred_at": "2018-04-01T01:02:03Z",
            "data": {
                "account_id": "12",
                "counterparty_id": "77",
                "amount": 12.5,
                "currency": "EUR",
            },
        }
    )
    assert event.fields() == fdh_fields(5, event.occurred_at.timestamp(), 12, 77, 12.5)


def _write_fdh(path: Path, rows: list[tuple[int, float, int, int, float, int]]) -> None:
    """(id, day, customer, terminal, amount, fraud) rows as a handbook CSV."""
    lines = [
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,"
        "TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO"
    ]
    for tx, day, customer, terminal, amount, fraud in rows:
        seconds = int(day * 86_400)
        stamp = f"2018-04-{1 + seconds // 86_400:02d} {seconds % 86_400 // 3600:02d}:" + (
            f"{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
        )
        lines.append(
            f"{tx},{stamp},{customer},{terminal},{amount},{seconds},{seconds // 86_400},"
            f"{fraud},{fraud}"
        )
    path.write_text("\n".join(lines) + "\n")


def test_fdh_terminal_risk_reads_only_labels_known_after_the_delay(tmp_path: Path) -> None:
    _write_fdh(
        tmp_path / "fdh.csv",
        [
            (0, 0.0, 1, 9, 10.0, 1),  # fraud at terminal 9: known from day 7
            (1, 0.5, 2, 9, 20.0, 0),  # legitimate: known from day 7.5
            (2, 6.9, 3, 9, 30.0, 0),  # before any label is known
            (3, 7.1, 1, 9, 40.0, 0),  # the fraud's label is in, the other's not yet
            (4, 8.3, 1, 9, 50.0, 0),  # 1-day window: only the day-7.5 label
        ],
    )
    frame = load_fdh(tmp_path / "fdh.csv")
    col = {spec.name: i for i, spec in enumerate(frame.inputs)}
    x = frame.x
    assert x[2, col["terminal_nb_tx_1d"]] == 0
    assert x[3, col["terminal_nb_tx_1d"]] == 1
    assert x[3, col["terminal_risk_1d"]] == 1.0
    assert x[4, col["terminal_nb_tx_1d"]] == 1
    assert x[4, col["terminal_risk_1d"]] == 0.0
    assert x[4, col["terminal_nb_tx_7d"]] == 2
    assert x[4, col["terminal_risk_7d"]] == 0.5
    # customer windows count the event itself; label events never touch them
    assert x[3, col["customer_nb_tx_30d"]] == 2
    assert x[4, col["customer_avg_amount_30d"]] == pytest.approx((10 + 40 + 50) / 3)
    assert x[4, col["customer_nb_tx_1d"]] == 1


def test_known_compromised_customers_leave_the_test_set(tmp_path: Path) -> None:
    _write_fdh(
        tmp_path / "fdh.csv",
        [
            (0, 0.2, 1, 5, 10.0, 1),  # customer 1 defrauded in training
            (1, 6.2, 2, 5, 10.0, 1),  # customer 2 defrauded on the last training day
            (2, 10.2, 3, 5, 10.0, 1),  # customer 3 defrauded during the gap (day 10)
            (3, 14.2, 1, 5, 10.0, 0),  # test day 14: customer 1 known -> removed
            (4, 14.3, 2, 5, 10.0, 0),  # customer 2 known (day 6 <= 14 - 8) -> removed
            (5, 14.4, 3, 5, 10.0, 0),  # customer 3's fraud (day 10) not yet known on day 14
            (6, 18.5, 3, 5, 10.0, 0),  # day 18: day 10 <= 18 - 8, known -> removed
            (7, 14.5, 4, 5, 10.0, 0),  # never defrauded
        ],
    )
    frame = load_fdh(tmp_path / "fdh.csv")
    start = parse_bound("2018-04-01", dataset="fdh", end=False)
    test = parse_bound("2018-04-15", dataset="fdh", end=False)
    removed = known_compromised_mask(frame, train_start=start, test_start=test)
    # rows in time order: ids 0, 1, 2, 3, 4, 5, 7, 6
    assert removed.tolist() == [False, False, False, True, True, False, False, True]


def test_fdh_model_decides_inside_the_engine_and_the_absent_model_path_still_decides(
    tmp_path: Path,
) -> None:
    frame = load_fdh(FDH)
    start = parse_bound("2018-04-03", dataset="fdh", end=False)
    end = parse_bound("2018-04-11", dataset="fdh", end=True)
    trained = train_model(
        frame,
        "gbm",
        train_mask=(frame.ts >= start) & (frame.ts < end),
        params={"max_trees": 100, "early_stopping": 30},
    )
    root = tmp_path / "models"
    write_artifact(root, trained.manifest, trained.files)
    model = load_model(root / trained.manifest.version, explain_min_score=0.0)
    assert "features.terminal_labels.sum_7d" in model.features
    ruleset = fdh_pack()
    with_model = Scorer(Engine(ruleset, model), InMemoryStateStore())
    without = Scorer(Engine(ruleset), InMemoryStateStore())
    event = parse_event(
        {
            "event_id": "p1",
            "type": "transaction",
            "occurred_at": "2018-04-12T03:00:00Z",
            "data": {
                "account_id": "7",
                "counterparty_id": "9",
                "amount": 2500.0,
                "currency": "EUR",
            },
        }
    )
    decided = with_model.score(event)
    assert decided.model_version == trained.manifest.version
    reason = next(r for r in decided.reasons if r.code == "MODEL_SCORE")
    assert reason.value > 0.5  # an amount far above the customer's habit (scenario 1)
    assert reason.contribution == pytest.approx(decided.score)  # the only signal
    assert decided.model_score == pytest.approx(reason.value)
    # fdh.yaml pools rules and model with equal weights: 0.66 alone stays below challenge,
    # and an allowed event's model reason is not broken down (see the engine tests below)
    assert decided.outcome.label == "allow"
    assert reason.factors is None
    assert "driven by" not in reason.message
    explained = model.score(decided.env)
    assert sum(explained.contributions.values()) == pytest.approx(reason.value - model.base_score())
    plain = without.score(event)
    assert plain.model_version is None
    assert plain.outcome.label == "allow"
    login = parse_event(
        {
            "event_id": "l1",
            "type": "login",
            "occurred_at": "2018-04-12T03:00:00Z",
            "data": {"user_id": "7", "success": True},
        }
    )
    assert math.isnan(model.score({"type": "login"}).score)
    assert model.event_types == frozenset({"transaction"})
    # a login is not a type the model scores: the engine does not ask it (fast path, no version)
    assert with_model.score(login).model_version is None


# -- artifacts: tampered and foreign ones are refused ----------------------------------------


def test_a_written_artifact_loads_and_round_trips(
    registry_dir: Path, trained: dict[str, Trained]
) -> None:
    for t in trained.values():
        manifest, files = read_artifact(registry_dir / t.manifest.version)
        assert manifest == t.manifest
        assert files == t.files
        model = load_model(registry_dir / t.manifest.version)
        assert model.version == t.manifest.version


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        ("edit_file", TamperedArtifactError, "altered"),
        ("edit_manifest", TamperedArtifactError, "does not hash to its version"),
        ("swap_manifest", ForeignArtifactError, "does not list: model.txt, trees.json"),
        ("extra_file", ForeignArtifactError, "does not list: evil.pkl"),
        ("remove_file", TamperedArtifactError, "missing"),
        ("unknown_kind", ForeignArtifactError, "unknown model kind"),
        ("foreign_format", ForeignArtifactError, "unknown artifact format"),
        ("no_manifest", ForeignArtifactError, "not a riskguard model"),
        ("pickle_listed", ForeignArtifactError, "is made of"),
    ],
)
def test_tampered_and_foreign_artifacts_are_refused(
    registry_dir: Path,
    trained: dict[str, Trained],
    tmp_path: Path,
    tamper: str,
    error: type[ArtifactError],
    message: str,
) -> None:
    version = trained["gbm"].manifest.version
    target = _copy(registry_dir, version, tmp_path)
    manifest_path = target / "manifest.json"
    document = json.loads(manifest_path.read_text())
    if tamper == "edit_file":
        data = bytearray((target / "trees.json").read_bytes())
        data[100] = ord("7") if data[100] != ord("7") else ord("8")
        (target / "trees.json").write_bytes(bytes(data))
    elif tamper == "edit_manifest":
        document["threshold"] = 0.1
        manifest_path.write_text(json.dumps(document))
    elif tamper == "swap_manifest":
        other = trained["isolation_forest"].manifest.version
        shutil.copy(registry_dir / other / "manifest.json", manifest_path)
        shutil.copy(registry_dir / other / "forest.json", target / "forest.json")
    elif tamper == "extra_file":
        (target / "evil.pkl").write_bytes(b"\x80\x04cos\nsystem\n.")
    elif tamper == "remove_file":
        (target / "model.txt").unlink()
    elif tamper == "unknown_kind":
        document["kind"] = "neural_net"
        manifest_path.write_text(json.dumps(document))
    elif tamper == "foreign_format":
        document["format"] = "onnx-bundle/2"
        manifest_path.write_text(json.dumps(document))
    elif tamper == "no_manifest":
        manifest_path.unlink()
    elif tamper == "pickle_listed":  # sealed consistently, as a forger would: still refused
        document["files"]["model.pkl"] = document["files"].pop("model.txt")
        document["version"] = content_version(document)
        manifest_path.write_text(json.dumps(document))
        (target / "model.txt").rename(target / "model.pkl")
    with pytest.raises(error, match=message):
        load_model(target)


def test_a_malformed_ensemble_is_refused() -> None:
    good = {
        "format": "riskguard-trees/1",
        "n_features": 2,
        "trees": [
            {
                "split_feature": [0, 1],
                "threshold": [0.5, 1.5],
                "left": [1, -2],
                "right": [-1, -3],
                "default_left": [True, False],
                "missing": ["none", "nan"],
                "count": [10, 6],
                "leaf_value": [1.0, 2.0, 3.0],
                "leaf_count": [4, 3, 3],
            }
        ],
    }
    f = compile_sum(Ensemble.from_json(good))
    assert f([0.0, 1.0]) == 2.0
    assert f([0.0, 2.0]) == 3.0
    assert f([1.0, 0.0]) == 1.0
    assert f([0.0, math.nan]) == 3.0  # "nan" missing type, default right
    cyclic = json.loads(json.dumps(good))
    cyclic["trees"][0]["left"] = [1, 0]
    with pytest.raises(EnsembleError):
        Ensemble.from_json(cyclic)
    code = json.loads(json.dumps(good))
    code["trees"][0]["threshold"] = ["__import__('os')", 1.5]
    with pytest.raises(EnsembleError, match="numbers"):
        Ensemble.from_json(code)


# -- the registry ----------------------------------------------------------------------------


@pytest.fixture
def registry(registry_dir: Path, tmp_path: Path) -> ModelRegistry:
    root = tmp_path / "registry"
    shutil.copytree(registry_dir, root)
    return ModelRegistry(root)


def test_activate_list_and_rollback(registry: ModelRegistry, trained: dict[str, Trained]) -> None:
    gbm = trained["gbm"].manifest.version
    forest = trained["isolation_forest"].manifest.version
    online = trained["online"].manifest.version
    assert {item.name for item in registry.versions()} == {gbm, forest, online}
    assert registry.active() is None
    assert load_active(registry.root) is None
    registry.activate(gbm, actor="alice")
    registry.activate(forest, actor="bob")
    record = registry.activate(online, actor="carol")
    assert record.previous == forest
    loaded = load_active(registry.root)
    assert loaded is not None
    assert loaded.version == online
    assert registry.rollback(actor="dave").version == forest
    assert registry.rollback().version == gbm
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback()
    log = [
        json.loads(line) for line in (registry.root / "activations.jsonl").read_text().splitlines()
    ]
    assert [(e["action"], e["version"], e["actor"]) for e in log] == [
        ("activate", gbm, "alice"),
        ("activate", forest, "bob"),
        ("activate", online, "carol"),
        ("rollback", forest, "dave"),
        ("rollback", gbm, "cli"),
    ]
    pointer = json.loads((registry.root / "active" / "default.json").read_text())
    assert pointer["version"] == gbm
    assert not [p for p in (registry.root / "active").iterdir() if p.name.endswith(".tmp")]


def test_tenants_follow_the_default_until_they_choose(
    registry: ModelRegistry, trained: dict[str, Trained]
) -> None:
    gbm = trained["gbm"].manifest.version
    forest = trained["isolation_forest"].manifest.version
    registry.activate(gbm)
    assert registry.active("tenant-a") == gbm
    registry.activate(forest, scope="tenant-a")
    assert registry.active("tenant-a") == forest
    assert registry.active("tenant-b") == gbm
    assert registry.active() == gbm
    with pytest.raises(RegistryError, match="invalid scope"):
        registry.activate(gbm, scope="../etc")


def test_refused_activations_change_nothing(
    registry: ModelRegistry, trained: dict[str, Trained]
) -> None:
    gbm = trained["gbm"].manifest.version
    forest = trained["isolation_forest"].manifest.version
    registry.activate(gbm)
    with pytest.raises(UnknownVersionError):
        registry.activate("m-0000000000000000")
    with pytest.raises(UnknownVersionError):
        registry.activate("../../etc")
    (registry.root / forest / "extra.bin").write_bytes(b"x")
    with pytest.raises(ForeignArtifactError):
        registry.activate(forest)
    assert registry.active() == gbm
    assert len(registry.history()) == 1
    listed = {item.name: item for item in registry.versions()}
    assert listed[forest].manifest is None
    assert "extra.bin" in (listed[forest].error or "")


def test_active_model_reloads_when_the_pointer_changes(
    registry: ModelRegistry, trained: dict[str, Trained]
) -> None:
    gbm = trained["gbm"].manifest.version
    forest = trained["isolation_forest"].manifest.version
    watcher = ActiveModel(registry.root, interval=0.0)
    assert watcher.current() is None
    registry.activate(gbm)
    current = watcher.current()
    assert current is not None
    assert current.version == gbm
    registry.activate(forest)
    current = watcher.current()
    assert current is not None
    assert current.version == forest


# -- monitoring ------------------------------------------------------------------------------


def test_model_monitor_exports_psi_gauges(trained: dict[str, Trained], cc: Frame) -> None:
    t = trained["isolation_forest"]
    model = load_model_from(t)
    monitor = ModelMonitor(model, window=2_000, min_observations=100)
    assert all(math.isnan(v) for v in monitor.psi().values())
    rows = cc.x[cc.ts < SPLIT]
    index = {spec.expr: i for i, spec in enumerate(cc.inputs)}
    for row in rows.tolist():
        env = {path: row[i] for path, i in index.items()}
        monitor.observe(env, model.score_vector(row).score)
    steady = monitor.psi()
    assert set(steady) == {"score", *t.manifest.explain.top_features}
    assert steady["score"] < 0.1
    for row in (rows * 3.0).tolist():
        env = {path: row[i] for path, i in index.items()}
        monitor.observe(env, model.score_vector(row).score)
    assert monitor.psi()["score"] > 0.25
    registry = CollectorRegistry()
    monitor.register(registry)
    text = generate_latest(registry).decode()
    assert f'riskguard_model_psi{{model_version="{model.version}",variable="score"}}' in text
    assert "riskguard_model_psi_observations" in text


def test_scores_of_rows_are_what_score_gives(trained: dict[str, Trained], cc: Frame) -> None:
    model = load_model_from(trained["gbm"])
    rows = cc.x[:20]
    env_paths = [spec.expr for spec in cc.inputs]
    direct = [
        model.score({"type": "transaction", **dict(zip(env_paths, row, strict=True))}).score
        for row in rows.tolist()
    ]
    assert np.allclose(score_rows(model, rows), direct, rtol=0, atol=0)


# -- the engine's model path -----------------------------------------------------------------


class _CountedContributions(Mapping[str, float]):
    """Contributions that count how often they are read (a lazy model computes them then)."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.reads = 0

    def __getitem__(self, key: str) -> float:
        self.reads += 1
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self.values)

    def __len__(self) -> int:
        self.reads += 1
        return len(self.values)


class StubModel:
    """A transaction model scoring ``data.amount / 1000`` (capped), recording what it saw."""

    version = "m-00000000000000aa"
    features = ("type", "data.amount")

    def __init__(self, event_types: frozenset[str] | None = frozenset({"transaction"})) -> None:
        if event_types is not None:
            self.event_types = event_types
        self.seen: list[Any] = []
        self.contributions: list[_CountedContributions] = []

    def score(self, features: Mapping[str, Any]) -> ModelScore:
        self.seen.append(features)
        amount = features.get("data.amount")
        if amount is None:
            return ModelScore(math.nan)
        contributions = _CountedContributions(
            {"amount": min(amount / 1000.0, 1.0) - 0.1, "hour": -0.05, "night": 0.0, "x": 0.01}
        )
        self.contributions.append(contributions)
        return ModelScore(min(amount / 1000.0, 1.0), contributions)


ENGINE_PACK: dict[str, Any] = {
    "name": "engine-model",
    "thresholds": {"transaction": {"challenge": 0.5, "review": 0.7, "block": 0.9}},
    "fusion": {"rules": 1.0, "model": 3.0},
    "rules": [
        {
            "id": "BIG",
            "description": "big amount",
            "events": ["transaction"],
            "when": "data.amount > 5000",
            "score": 0.5,
            "reason": "BIG_AMOUNT",
        }
    ],
}


def test_engine_asks_the_model_only_about_the_types_it_scores() -> None:
    model = StubModel()
    engine = Engine(load_ruleset(ENGINE_PACK), model)
    assert engine.scores("transaction")
    assert not engine.scores("login")
    login = engine.decide("l1", "login", {"type": "login", "data.user_id": "u"})
    assert model.seen == []  # never called: the fast path, and no model took part
    assert login.model_version is None
    assert login.model_score is None
    assert login.explanation == "Allowed: no risk signals."
    env = {"type": "transaction", "data.amount": 40.0}
    quiet = engine.decide("t1", "transaction", env)
    assert model.seen[-1] is env  # the environment itself, not a copy per event
    assert quiet.model_version == model.version
    assert quiet.model_score == pytest.approx(0.04)
    assert quiet.outcome.label == "allow"
    everything = StubModel(event_types=None)  # declares nothing: asked about every type
    assert (
        Engine(load_ruleset(ENGINE_PACK), everything)
        .decide("l2", "login", {"type": "login"})
        .model_version
        == everything.version
    )
    assert len(everything.seen) == 1


def test_engine_reads_model_contributions_only_for_non_allow_outcomes() -> None:
    model = StubModel()
    engine = Engine(load_ruleset(ENGINE_PACK), model)
    allowed = engine.decide("t1", "transaction", {"type": "transaction", "data.amount": 200.0})
    assert allowed.outcome.label == "allow"
    assert model.contributions[-1].reads == 0  # never computed
    reason = next(r for r in allowed.reasons if r.source == "model")
    assert reason.factors is None
    assert "factors" not in reason.to_dict()
    assert reason.message == "model risk score 0.2"

    held = engine.decide("t2", "transaction", {"type": "transaction", "data.amount": 950.0})
    assert held.outcome.label in {"review", "block"}
    assert model.contributions[-1].reads > 0
    reason = next(r for r in held.reasons if r.source == "model")
    assert reason.value == pytest.approx(0.95)
    assert reason.factors == pytest.approx({"amount": 0.85, "hour": -0.05, "x": 0.01})
    assert list(reason.factors or {}) == ["amount", "hour", "x"]  # by magnitude, zeros left out
    assert reason.message == "model risk score 0.95 (driven by amount, x)"
    assert reason.to_dict()["factors"] == {"amount": 0.85, "hour": -0.05, "x": 0.01}
    assert held.model_score == pytest.approx(0.95)
    assert reason.contribution == pytest.approx(held.score)
    assert "model risk score 0.95 (driven by amount, x)" in held.explanation


def test_engine_treats_a_model_that_abstains_as_absent() -> None:
    model = StubModel()
    engine = Engine(load_ruleset(ENGINE_PACK), model)
    quiet = engine.decide("t1", "transaction", {"type": "transaction"})  # no amount: NaN
    assert quiet.model_score is None
    assert quiet.reasons == ()
    assert quiet.explanation == "Allowed: no risk signals."
    assert quiet.model_version == model.version  # asked, and it abstained
    big = engine.decide("t2", "transaction", {"type": "transaction", "data.amount": 9000.0})
    without = Engine(load_ruleset(ENGINE_PACK)).decide(
        "t2", "transaction", {"type": "transaction", "data.amount": 9000.0}
    )
    assert big.score > without.score  # the model adds evidence to the rule's
    assert [r.source for r in big.reasons] == ["model", "rule"]
