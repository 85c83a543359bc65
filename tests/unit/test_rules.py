"""Rule packs: loading, versioning, precise errors, shadow and hard outcomes, hot reload."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from riskguard.engine.decide import Engine
from riskguard.engine.models import ModelScore
from riskguard.engine.policy import Outcome
from riskguard.engine.rules import RulePackError, load_ruleset, load_ruleset_text, pack_version
from riskguard.rulefile import WatchedRuleset, default_pack_text, load_pack_file

PACK: dict[str, Any] = {
    "name": "t",
    "thresholds": {"transaction": {"challenge": 0.5, "review": 0.7, "block": 0.9}},
    "lists": {"bad": ["KP"]},
    "features": [
        {
            "name": "acct",
            "kind": "velocity",
            "events": ["transaction"],
            "entity": ["data.account_id"],
            "windows": ["5m"],
        }
    ],
    "rules": [
        {
            "id": "BIG",
            "description": "big amount",
            "events": ["transaction"],
            "when": "data.amount > 1000",
            "score": 0.6,
            "reason": "BIG_AMOUNT",
            "message": "amount {data.amount}",
            "value": "data.amount",
        },
        {
            "id": "FAST",
            "description": "fast",
            "events": ["transaction"],
            "when": "features.acct.count_5m >= 3",
            "score": 0.3,
            "reason": "FAST",
        },
        {
            "id": "LISTED",
            "description": "listed country",
            "events": ["transaction"],
            "when": 'in_list(data.counterparty_country, "bad")',
            "outcome": "block",
            "reason": "LISTED",
        },
        {
            "id": "SHADOWED",
            "description": "shadow",
            "events": ["transaction"],
            "when": "data.amount > 1",
            "score": 0.99,
            "reason": "SHADOW_REASON",
            "mode": "shadow",
        },
    ],
}


def pack(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(PACK)
    doc.update(changes)
    return doc


def env(amount: float, country: str | None = None, count: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "transaction", "data.amount": amount}
    out["features.acct.count_5m"] = count
    if country:
        out["data.counterparty_country"] = country
    return out


def test_decisions_fuse_explain_and_respect_shadow() -> None:
    engine = Engine(load_ruleset(pack()))
    d = engine.decide("e1", "transaction", env(5000.0, count=3))
    assert d.outcome is Outcome.REVIEW  # 1 - 0.4 * 0.7 = 0.72
    assert d.score == pytest.approx(0.72)
    assert [r.code for r in d.reasons] == ["BIG_AMOUNT", "FAST"]
    assert d.reasons[0].value == 5000.0
    assert d.reasons[0].message == "amount 5,000"
    assert sum(r.contribution for r in d.reasons) == pytest.approx(d.score)
    assert [r.code for r in d.shadow_reasons] == ["SHADOW_REASON"]
    assert d.explanation == "Held for review: amount 5,000 and fast."
    quiet = engine.decide("e2", "transaction", env(5.0))
    assert quiet.outcome is Outcome.ALLOW
    assert quiet.explanation == "Allowed: no risk signals."


def test_hard_outcome_overrides_score() -> None:
    d = Engine(load_ruleset(pack())).decide("e", "transaction", env(5.0, "KP"))
    assert d.score == 0.0
    assert d.outcome is Outcome.BLOCK
    assert d.reasons[0].outcome is Outcome.BLOCK


def test_disabled_rules_do_not_run() -> None:
    doc = pack()
    doc["rules"][0]["enabled"] = False
    d = Engine(load_ruleset(doc)).decide("e", "transaction", env(5000.0))
    assert d.reasons == ()


def test_version_is_a_content_hash() -> None:
    a = load_ruleset(pack())
    b = load_ruleset(pack())
    assert a.version == b.version == pack_version(pack())
    changed = pack()
    changed["rules"][0]["score"] = 0.5
    assert load_ruleset(changed).version != a.version


def test_rules_are_indexed_by_event_type() -> None:
    rs = load_ruleset(pack())
    assert len(rs.by_type["transaction"]) == 4
    assert rs.by_type["login"] == ()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["rules"][0].update(when="data.amount >"), "rule BIG at position 13"),
        (lambda d: d["rules"][0].update(when="data.amout > 1"), "rule BIG at position 0"),
        (lambda d: d["rules"][0].update(when='data.amount > "x"'), "rule BIG at position"),
        (lambda d: d["rules"][0].update(when="data.amount + 1"), "true or false"),
        (lambda d: d["rules"][0].update(when="features.nope.x > 1"), "rule BIG"),
        (lambda d: d["rules"][0].update(id="lower"), "rule lower field id"),
        (lambda d: d["rules"][0].update(score=2), "rule BIG field score"),
        (lambda d: d["rules"][0].update(events=["wire"]), "unknown event type"),
        (lambda d: d["rules"][0].update(message="{data.nope}"), "placeholder"),
        (lambda d: d["rules"][0].update(value="data.nope"), "value"),
        (lambda d: d["rules"][0].pop("score"), "needs a score, an outcome"),
        (lambda d: d["rules"][1].update(id="BIG"), "duplicate rule id"),
        (lambda d: d["rules"][2].update(when='in_list(data.counterparty_country, "x")'), "LISTED"),
        (lambda d: d["rules"][0].update(colour="red"), "unknown field"),
        (
            lambda d: d.update(thresholds={"login": {"challenge": 0.9, "review": 0.5, "block": 1}}),
            "thresholds",
        ),
        (lambda d: d["features"][0].update(windows=["5q"]), "features"),
        (lambda d: d["rules"][1].update(events=["login"]), "rule FAST"),
    ],
)
def test_errors_name_rule_position_and_expectation(mutate: Any, expected: str) -> None:
    doc = pack()
    mutate(doc)
    with pytest.raises(RulePackError) as info:
        load_ruleset(doc)
    assert expected in str(info.value)


def test_all_problems_are_reported_at_once() -> None:
    doc = pack()
    doc["rules"][0]["when"] = "data.amount >"
    doc["rules"][1]["when"] = "nope"
    with pytest.raises(RulePackError) as info:
        load_ruleset(doc)
    assert {i.where for i in info.value.issues} == {"rule BIG", "rule FAST"}


def test_yaml_errors_give_a_line() -> None:
    with pytest.raises(RulePackError, match="line 3: not valid YAML"):
        load_ruleset_text("name: x\nrules: [\n", source="p.yaml")
    with pytest.raises(RulePackError, match="mapping"):
        load_ruleset_text("- 1\n")


def test_json_packs_load_too() -> None:
    import json

    assert load_ruleset_text(json.dumps(pack())).version == pack_version(pack())


def test_default_pack_loads_with_enough_rules() -> None:
    rs = load_pack_file(None)
    assert len(rs.rules) >= 40
    assert {t for r in rs.rules for t in r.events} == {
        "transaction",
        "login",
        "session",
        "api_call",
    }


def test_watched_file_reloads_and_keeps_the_last_good_ruleset(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(pack()))
    reloads: list[str] = []
    errors: list[str] = []
    watched = WatchedRuleset(
        path,
        interval=0.0,
        on_reload=lambda rs: reloads.append(rs.version),
        on_error=lambda e: errors.append(str(e)),
    )
    first = watched.ruleset.version

    def rewrite(doc: Any) -> None:
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
        stamp = time.time() + len(reloads) + len(errors) + 1
        os.utime(path, (stamp, stamp))  # a distinct mtime even on coarse clocks

    changed = pack()
    changed["rules"][0]["score"] = 0.4
    rewrite(changed)
    assert watched.engine().ruleset.version != first
    assert reloads == [watched.ruleset.version]

    good = watched.ruleset.version
    rewrite("rules: [oops\n")
    assert watched.engine().ruleset.version == good
    assert watched.last_error is not None
    assert errors

    rewrite(pack())
    assert watched.engine().ruleset.version == first
    assert watched.last_error is None


def test_default_pack_text_is_the_shipped_file() -> None:
    assert "rules:" in default_pack_text()


class ConstantModel:
    """A real (if trivial) implementation of the model protocol."""

    version = "m-test-1"
    features = ("features.acct.count_5m", "data.amount")

    def __init__(self, score: float) -> None:
        self._score = score

    def score(self, features: Any) -> ModelScore:
        assert set(self.features) <= set(features)  # the decision's environment
        return ModelScore(self._score, {"data.amount": 0.7, "features.acct.count_5m": 0.1})


def test_model_score_fuses_with_rules_and_is_explained() -> None:
    rs = load_ruleset(pack())
    alone = Engine(rs).decide("e", "transaction", env(5000.0))
    assert alone.score == pytest.approx(0.6)
    assert alone.model_version is None
    with_model = Engine(rs, ConstantModel(0.6)).decide("e", "transaction", env(5000.0))
    # Equal family weights renormalised over both families: 1 - sqrt(0.4 * 0.4) = 0.6.
    assert with_model.score == pytest.approx(0.6)
    assert with_model.model_version == "m-test-1"
    model_reason = next(r for r in with_model.reasons if r.code == "MODEL_SCORE")
    assert model_reason.source == "model"
    assert "driven by data.amount" in model_reason.message
    assert sum(r.contribution for r in with_model.reasons) == pytest.approx(with_model.score)
    quiet = Engine(rs, ConstantModel(0.0)).decide("e", "transaction", env(5000.0))
    assert quiet.score == pytest.approx(1 - 0.4**0.5)  # a calm model halves the rules' evidence
    assert Engine(rs, ConstantModel(0.95)).decide("e", "transaction", env(5.0)).outcome >= (
        Outcome.REVIEW
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: x\nrules:\n  - !!binary aGVsbG8=\n", "only JSON values"),
        ("name: x\nthresholds: !!set {a}\n", "only JSON values"),
        ("name: x\ndescription: 2026-01-01\n", "only JSON values"),
        ("name: x\nfusion: {rules: .nan}\n", "finite"),
        (
            "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
            "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
            "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
            "too large",
        ),
    ],
)
def test_packs_are_plain_bounded_json_data(text: str, fragment: str) -> None:
    with pytest.raises(RulePackError, match=fragment):
        load_ruleset_text(text)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("a { b", "literal braces"),
        ("{data.amount:>10}", "must be a field path"),
        ("{}", "field path"),
    ],
)
def test_message_templates_are_checked_at_load(message: str, fragment: str) -> None:
    doc = pack()
    doc["rules"][0]["message"] = message
    with pytest.raises(RulePackError, match=fragment):
        load_ruleset(doc)


def test_fusion_weights_must_be_finite() -> None:
    with pytest.raises(RulePackError, match="fusion"):
        load_ruleset(pack(fusion={"rules": float("inf")}))


def test_a_model_without_an_answer_counts_as_absent() -> None:
    d = Engine(load_ruleset(pack()), ConstantModel(float("nan"))).decide(
        "e", "transaction", env(5000.0)
    )
    assert d.score == pytest.approx(0.6)  # the rules alone, not NaN
    assert all(r.code != "MODEL_SCORE" for r in d.reasons)


@pytest.mark.parametrize(
    "bad_text",
    ["rules: [oops\n", "name: x\nrules:\n  - {id: R, message: 'a { b'}\n", "x: !!set {a}\n"],
)
def test_watched_file_survives_any_bad_edit(tmp_path: Path, bad_text: str) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(pack()))
    watched = WatchedRuleset(path, interval=0.0)
    good = watched.ruleset.version
    path.write_text(bad_text)
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert watched.refresh() is False
    assert watched.ruleset.version == good
    assert watched.last_error is not None
