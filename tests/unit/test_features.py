"""Every feature kind, and the documented error bounds against exact brute-force references."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from riskguard.engine.expr import default_functions
from riskguard.engine.features import (
    FeatureConfigError,
    FeatureSet,
    FeatureSpec,
    build_features,
    haversine_km,
)
from riskguard.engine.state import InMemoryStateStore

T0 = 1_790_000_000.0


def state_of(store: InMemoryStateStore, feature: str, entity: str) -> Any:
    """The state of ``feature`` for ``entity`` (keys carry the feature's fingerprint)."""
    for key, state in store.items():
        name, _, rest = key.partition("@")
        if name == feature and rest.split("|", 1)[1] == entity:
            return state
    return None


def features(*specs: dict[str, Any]) -> FeatureSet:
    return build_features([FeatureSpec.model_validate(s) for s in specs], default_functions())


class Stream:
    """Feeds flat events through a feature set and an in-memory store."""

    def __init__(self, feature_set: FeatureSet, event_type: str) -> None:
        self.fs = feature_set
        self.type = event_type
        self.store = InMemoryStateStore()

    def send(self, ts: float, **fields: Any) -> dict[str, Any]:
        env: dict[str, Any] = {
            "type": self.type,
            **{k.replace("__", "."): v for k, v in fields.items()},
        }
        ops = self.fs.plan(self.type, env)
        self.store.apply(ops, ts, env, env)
        return {k[9:]: v for k, v in env.items() if k.startswith("features.")}


VELOCITY = {
    "name": "acct",
    "kind": "velocity",
    "events": ["transaction"],
    "entity": ["data.account_id"],
    "windows": ["1m", "1h"],
    "sum": "data.amount",
    "distinct": "data.counterparty_id",
    "capacity": 4,
}


def test_velocity_counts_sums_and_distinct() -> None:
    s = Stream(features(VELOCITY), "transaction")
    out = s.send(T0, data__account_id="a", data__amount=10.0, data__counterparty_id="x")
    assert out == {
        "acct.count_1m": 1,
        "acct.sum_1m": 10.0,
        "acct.distinct_1m": 1,
        "acct.count_1h": 1,
        "acct.sum_1h": 10.0,
        "acct.distinct_1h": 1,
    }
    s.send(T0 + 30, data__account_id="a", data__amount=5.0, data__counterparty_id="y")
    out = s.send(T0 + 200, data__account_id="a", data__amount=1.0, data__counterparty_id="x")
    assert out["acct.count_1m"] == 1
    assert out["acct.count_1h"] == 3
    assert out["acct.sum_1h"] == 16.0
    assert out["acct.distinct_1h"] == 2
    other = s.send(T0 + 201, data__account_id="b", data__amount=1.0, data__counterparty_id="x")
    assert other["acct.count_1h"] == 1  # entities are separate


def test_velocity_when_filter_counts_only_matching_but_reads_always() -> None:
    spec = {
        "name": "fails",
        "kind": "velocity",
        "events": ["login"],
        "entity": ["data.user_id"],
        "windows": ["5m"],
        "when": "!data.success",
    }
    s = Stream(features(spec), "login")
    for i in range(3):
        s.send(T0 + i, data__user_id="u", data__success=False)
    out = s.send(T0 + 10, data__user_id="u", data__success=True)
    assert out["fails.count_5m"] == 3


def test_missing_entity_key_skips_the_feature() -> None:
    s = Stream(features(VELOCITY), "transaction")
    assert s.send(T0, data__amount=1.0) == {}


def exact_window(history: list[tuple[float, float]], t: float, span: float) -> tuple[int, float]:
    inside = [a for ts, a in history if t - span < ts <= t]
    return len(inside), sum(inside)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), min_size=1, max_size=80),
    amounts=st.lists(st.floats(min_value=0.01, max_value=1e4), min_size=80, max_size=80),
)
def test_velocity_error_bound_against_brute_force(gaps: list[float], amounts: list[float]) -> None:
    """exact(W) <= value <= exact(W + W/12), for counts and sums."""
    spec = {**VELOCITY, "windows": ["5m", "1h"], "distinct": None}
    s = Stream(features(spec), "transaction")
    history: list[tuple[float, float]] = []
    t = T0
    for gap, amount in zip(gaps, amounts, strict=False):
        t += gap
        history.append((t, amount))
        out = s.send(t, data__account_id="a", data__amount=amount)
        for name, span in (("5m", 300.0), ("1h", 3600.0)):
            low_n, low_s = exact_window(history, t, span)
            high_n, high_s = exact_window(history, t, span + span / 12)
            assert low_n <= out[f"acct.count_{name}"] <= high_n
            assert (
                low_s - 1e-6 * (1 + low_s) <= out[f"acct.sum_{name}"] <= high_s * (1 + 1e-9) + 1e-6
            )


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=900, allow_nan=False), st.integers(0, 9)),
        min_size=1,
        max_size=60,
    )
)
def test_distinct_is_exact_up_to_capacity(steps: list[tuple[float, int]]) -> None:
    """distinct(W) == min(exact distinct in W, capacity)."""
    spec = {**VELOCITY, "windows": ["5m", "1h"], "sum": None}
    s = Stream(features(spec), "transaction")
    history: list[tuple[float, str]] = []
    t = T0
    for gap, cp in steps:
        t += gap
        history.append((t, f"c{cp}"))
        out = s.send(t, data__account_id="a", data__counterparty_id=f"c{cp}")
        for name, span in (("5m", 300.0), ("1h", 3600.0)):
            exact = len({c for ts, c in history if ts > t - span})
            assert out[f"acct.distinct_{name}"] == min(exact, 4)


def test_velocity_state_is_bounded_whatever_the_rate() -> None:
    s = Stream(features({**VELOCITY, "distinct": None}), "transaction")
    s.send(T0, data__account_id="a", data__amount=1.0)
    size = len(state_of(s.store, "acct", "a")[0])
    for i in range(5000):
        s.send(T0 + i * 0.01, data__account_id="a", data__amount=1.0)
    assert len(state_of(s.store, "acct", "a")[0]) == size


BASELINE = {
    "name": "amt",
    "kind": "baseline",
    "events": ["transaction"],
    "entity": ["data.account_id"],
    "value": "data.amount",
    "min_count": 5,
}


def test_baseline_matches_mean_and_variance_and_scores_before_update() -> None:
    s = Stream(features(BASELINE), "transaction")
    values = [10.0, 12.0, 9.0, 11.0, 13.0, 10.0]
    for i, v in enumerate(values):
        out = s.send(T0 + i, data__account_id="a", data__amount=v)
    assert "amt.zscore" in out  # sixth value is scored against the first five
    first5 = values[:5]
    mean = sum(first5) / 5
    std = (sum((v - mean) ** 2 for v in first5) / 5) ** 0.5
    assert out["amt.zscore"] == pytest.approx((10.0 - mean) / std)
    out = s.send(T0 + 10, data__account_id="a", data__amount=100.0)
    mean6 = sum(values) / 6
    assert out["amt.mean"] == pytest.approx(mean6)
    assert out["amt.ratio"] == pytest.approx(100.0 / mean6)
    assert out["amt.zscore"] > 30


def test_baseline_is_silent_before_min_count_and_adapts_after_max_count() -> None:
    s = Stream(features({**BASELINE, "max_count": 10}), "transaction")
    out = s.send(T0, data__account_id="a", data__amount=5.0)
    assert "amt.zscore" not in out
    for i in range(200):
        s.send(T0 + i, data__account_id="a", data__amount=5.0)
    for i in range(200):
        out = s.send(T0 + 1000 + i, data__account_id="a", data__amount=50.0)
    assert out["amt.mean"] == pytest.approx(50.0, rel=1e-3)  # old habits forgotten
    assert out["amt.count"] == 10


def test_baseline_log_transform_ratio_is_geometric() -> None:
    s = Stream(features({**BASELINE, "transform": "log"}), "transaction")
    for i in range(10):
        s.send(T0 + i, data__account_id="a", data__amount=99.0)
    out = s.send(T0 + 20, data__account_id="a", data__amount=999.0)
    assert out["amt.ratio"] == pytest.approx(10.0)
    assert out["amt.mean"] == pytest.approx(99.0)


def test_hour_profile_compares_with_habits_before_the_current_activity() -> None:
    spec = {"name": "hrs", "kind": "hour_profile", "events": ["login"], "entity": ["data.user_id"]}
    s = Stream(features(spec), "login")
    day = 86400.0
    base = 1_789_992_000.0  # 00:00 UTC
    for d in range(10):
        s.send(base + d * day + 14 * 3600, data__user_id="u", data__success=True)
    out = s.send(base + 20 * day + 15 * 3600, data__user_id="u", data__success=True)
    assert out == {
        "hrs.total": 10,
        "hrs.hour_count": 10.0,
        "hrs.hour_share": 1.0,
        "hrs.entity_age_s": 20 * day + 3600,
    }
    night = base + 21 * day + 3 * 3600
    assert s.send(night, data__user_id="u", data__success=True)["hrs.hour_count"] == 0.0
    # Minutes later the same spell of activity is still compared with the old habits ...
    later = s.send(night + 1800, data__user_id="u", data__success=True)
    assert later["hrs.hour_count"] == 0.0
    assert later["hrs.total"] == 11
    # ... and once it is over, it becomes part of them.
    out = s.send(night + 4 * 3600, data__user_id="u", data__success=True)
    assert out["hrs.total"] == 13
    assert out["hrs.hour_count"] == 0.0
    assert s.send(night + day, data__user_id="u", data__success=True)["hrs.hour_count"] == 2.0


NOVELTY = {
    "name": "dev",
    "kind": "novelty",
    "events": ["login"],
    "entity": ["data.user_id"],
    "value": "context.device_id",
    "capacity": 3,
}


def test_novelty_first_seen_and_eviction() -> None:
    s = Stream(features(NOVELTY), "login")
    out = s.send(T0, data__user_id="u", context__device_id="d1")
    assert out["dev.is_new"] is True
    assert out["dev.known"] == 0
    out = s.send(T0 + 100, data__user_id="u", context__device_id="d1")
    assert out["dev.is_new"] is False
    assert out["dev.age_s"] == 100
    assert out["dev.entity_age_s"] == 100
    for i, d in enumerate(("d2", "d3", "d4")):
        s.send(T0 + 200 + i, data__user_id="u", context__device_id=d)
    # Capacity 3: d1 was the least recently seen and is new again.
    out = s.send(T0 + 300, data__user_id="u", context__device_id="d1")
    assert out["dev.is_new"] is True
    assert out["dev.known"] == 3


def test_novelty_of_composite_value() -> None:
    spec = {
        "name": "route",
        "kind": "novelty",
        "events": ["api_call"],
        "entity": ["data.service_id"],
        "value": ["data.target", "data.method", "data.path"],
    }
    s = Stream(features(spec), "api_call")
    call = {"data__service_id": "a", "data__target": "b", "data__method": "GET", "data__path": "/x"}
    assert s.send(T0, **call)["route.is_new"] is True
    assert s.send(T0 + 1, **call)["route.is_new"] is False
    assert s.send(T0 + 2, **{**call, "data__method": "POST"})["route.is_new"] is True


def test_geo_velocity_flags_impossible_speed() -> None:
    spec = {"name": "geo", "kind": "geo_velocity", "events": ["login"], "entity": ["data.user_id"]}
    s = Stream(features(spec), "login")
    joburg = {"context__geo__lat": -26.2, "context__geo__lon": 28.0, "context__geo__country": "ZA"}
    london = {"context__geo__lat": 51.5, "context__geo__lon": -0.13, "context__geo__country": "GB"}
    assert s.send(T0, data__user_id="u", **joburg) == {}
    out = s.send(T0 + 3600, data__user_id="u", **london)
    distance = haversine_km(-26.2, 28.0, 51.5, -0.13)
    assert 9000 < distance < 9100
    assert out["geo.distance_km"] == pytest.approx(distance)
    assert out["geo.speed_kmh"] == pytest.approx(distance)
    assert out["geo.country_changed"] is True
    assert out["geo.prev_country"] == "ZA"
    out = s.send(T0 + 3630, data__user_id="u", **london)  # elapsed time floored at 60 s
    assert out["geo.distance_km"] == pytest.approx(0.0, abs=1e-6)


def test_continuity_detects_a_session_moving() -> None:
    spec = {
        "name": "sess",
        "kind": "continuity",
        "events": ["session"],
        "entity": ["data.session_id"],
        "attributes": ["context.ip", "context.device_id"],
    }
    s = Stream(features(spec), "session")
    s.send(T0, data__session_id="s", context__ip="1.1.1.1", context__device_id="d")
    out = s.send(T0 + 5, data__session_id="s", context__ip="1.1.1.1", context__device_id="d")
    assert out == {"sess.events": 1, "sess.ip_changed": False, "sess.device_id_changed": False}
    out = s.send(T0 + 9, data__session_id="s", context__ip="6.6.6.6", context__device_id="d")
    assert out["sess.ip_changed"] is True


def test_last_seen_measures_time_since_matching_event() -> None:
    spec = {
        "name": "cred",
        "kind": "last_seen",
        "events": ["session"],
        "entity": ["data.user_id"],
        "when": 'data.action == "change_password"',
    }
    s = Stream(features(spec), "session")
    assert s.send(T0, data__user_id="u", data__action="view") == {}
    s.send(T0 + 10, data__user_id="u", data__action="change_password")
    assert s.send(T0 + 70, data__user_id="u", data__action="payout") == {"cred.since_s": 60}


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({**VELOCITY, "windows": []}, "needs windows"),
        ({**VELOCITY, "windows": ["5x"]}, "invalid duration"),
        ({**VELOCITY, "sum": "data.currency"}, "expected number"),
        ({**VELOCITY, "entity": ["data.nope"]}, "not a field"),
        ({**VELOCITY, "when": "data.amount >"}, "when"),
        ({**VELOCITY, "when": "data.amount + 1"}, "boolean"),
        ({**BASELINE, "value": "data.currency"}, "expected number"),
        ({**NOVELTY, "value": None}, "needs value"),
    ],
)
def test_bad_definitions_name_the_feature(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(FeatureConfigError, match=fragment) as info:
        features(spec)
    assert repr(spec["name"]) in str(info.value)


def test_duplicate_feature_names_are_refused() -> None:
    with pytest.raises(FeatureConfigError, match="twice"):
        features(VELOCITY, VELOCITY)


def test_store_evicts_entities_not_touched_for_a_generation() -> None:
    fs = features({**VELOCITY, "distinct": None})
    store = InMemoryStateStore(max_entities=4)  # two generations of two
    for i, acct in enumerate(("a", "b", "c", "a", "d")):
        env: dict[str, Any] = {"type": "transaction", "data.account_id": acct, "data.amount": 1.0}
        store.apply(fs.plan("transaction", env), T0 + i, env, env)
    assert state_of(store, "acct", "b") is None  # untouched while two others were
    assert state_of(store, "acct", "a") is not None
    assert len(store) <= 4
    assert state_of(store, "acct", "a")[0][1] == 2.0  # a kept its count across the move


def test_store_size_stays_bounded() -> None:
    fs = features({**VELOCITY, "distinct": None})
    store = InMemoryStateStore(max_entities=10)
    for i in range(1000):
        env: dict[str, Any] = {
            "type": "transaction",
            "data.account_id": f"a{i}",
            "data.amount": 1.0,
        }
        store.apply(fs.plan("transaction", env), T0 + i, env, env)
        assert len(store) <= 10


def test_velocity_sum_keeps_small_amounts_after_a_huge_one_leaves() -> None:
    s = Stream(features({**VELOCITY, "windows": ["1m"], "distinct": None}), "transaction")
    s.send(T0, data__account_id="a", data__amount=1e15)
    for i in range(6):
        out = s.send(T0 + 200 + i, data__account_id="a", data__amount=0.1)
    assert out["acct.sum_1m"] == pytest.approx(0.6)
    assert out["acct.count_1m"] == 6


def test_composite_keys_do_not_collide() -> None:
    spec = {**NOVELTY, "entity": ["data.user_id"], "value": ["data.user_id", "context.device_id"]}
    s = Stream(features(spec), "login")
    s.send(T0, data__user_id="u", context__device_id="a|b")
    assert s.send(T0 + 1, data__user_id="u", context__device_id="a|b")["dev.is_new"] is False
    assert s.send(T0 + 2, data__user_id="u", context__device_id="a")["dev.is_new"] is True


def test_numbers_do_not_collide_in_recent_values() -> None:
    spec = {**NOVELTY, "events": ["api_call"], "entity": ["data.service_id"]}
    spec["value"] = "data.request_bytes"
    s = Stream(features(spec), "api_call")
    s.send(T0, data__service_id="a", data__request_bytes=-1)
    assert s.send(T0 + 1, data__service_id="a", data__request_bytes=-2)["dev.is_new"] is True


def test_log_baseline_ignores_negative_values() -> None:
    spec = {**BASELINE, "events": ["login"], "entity": ["data.user_id"]}
    spec.update(value="context.geo.lon", transform="log")
    s = Stream(features(spec), "login")
    out = s.send(T0, data__user_id="u", context__geo__lon=-120.0, context__geo__lat=0.0)
    assert out == {"amt.count": 0}


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=500, allow_nan=False), st.integers(0, 7)),
        min_size=1,
        max_size=60,
    )
)
def test_novelty_matches_an_exact_lru_reference(steps: list[tuple[float, int]]) -> None:
    """is_new / known / age_s equal a brute-force LRU of capacity 3 (the documented bound)."""
    s = Stream(features(NOVELTY), "login")
    lru: dict[str, float] = {}  # value -> first seen, in recency order
    t = T0
    for gap, n in steps:
        t += gap
        device = f"d{n}"
        out = s.send(t, data__user_id="u", context__device_id=device)
        assert out["dev.is_new"] is (device not in lru)
        assert out["dev.known"] == len(lru)
        if device in lru:
            assert out["dev.age_s"] == pytest.approx(t - lru[device])
        first = lru.pop(device, t)
        lru[device] = first
        if len(lru) > 3:
            del lru[next(iter(lru))]


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.floats(min_value=0.01, max_value=1e6), min_size=6, max_size=40))
def test_baseline_matches_exact_mean_and_variance_below_max_count(values: list[float]) -> None:
    s = Stream(features({**BASELINE, "max_count": 100}), "transaction")
    for i, v in enumerate(values):
        out = s.send(T0 + i, data__account_id="a", data__amount=v)
        seen = values[:i]
        assert out["amt.count"] == len(seen)
        if len(seen) >= 5:
            mean = sum(seen) / len(seen)
            var = sum((x - mean) ** 2 for x in seen) / len(seen)
            assert out["amt.mean"] == pytest.approx(mean, rel=1e-9)
            assert out["amt.std"] == pytest.approx(var**0.5, rel=1e-6, abs=1e-6 * mean)
            z = (v - mean) / max(var**0.5, mean * 0.05)
            assert out["amt.zscore"] == pytest.approx(z, rel=1e-6, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(gaps=st.lists(st.integers(min_value=0, max_value=30 * 3600), min_size=1, max_size=50))
def test_hour_profile_matches_a_brute_force_reference(gaps: list[int]) -> None:
    """The profile holds exactly the events whose clock hour ended over an hour ago."""
    spec = {"name": "hrs", "kind": "hour_profile", "events": ["login"], "entity": ["data.user_id"]}
    s = Stream(features(spec), "login")
    history: list[float] = []
    t = T0
    for gap in gaps:
        t += gap
        out = s.send(t, data__user_id="u", data__success=True)
        now_hour = int(t // 3600)
        settled = [h for h in history if int(h // 3600) < now_hour - 1]
        hour = now_hour % 24
        near = sum(
            1 for h in settled if int(h // 3600) % 24 in {(hour - 1) % 24, hour, (hour + 1) % 24}
        )
        # Up to two clock hours are pending; a third distinct pending hour is folded in early.
        pending_hours = {int(h // 3600) for h in history if int(h // 3600) >= now_hour - 1}
        if len(pending_hours) <= 2:
            assert out["hrs.total"] == len(settled)
            assert out["hrs.hour_count"] == near
        history.append(t)
