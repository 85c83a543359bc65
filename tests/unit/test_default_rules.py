"""Each rule of the default pack fires on its pattern and stays quiet just outside it."""

from __future__ import annotations

from typing import Any

import pytest

from riskguard.engine.rules import CompiledRule
from riskguard.rulefile import load_pack_file

RULESET = load_pack_file(None)
RULES = {r.id: r for r in RULESET.rules}
F = "features."

# rule id -> (env on which it fires, the change that keeps it quiet)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "TX_VELOCITY_COUNT_1M": ({F + "account_tx.count_1m": 4}, {F + "account_tx.count_1m": 3}),
    "TX_VELOCITY_COUNT_5M": ({F + "account_tx.count_5m": 6}, {F + "account_tx.count_5m": 5}),
    "TX_VELOCITY_COUNT_5M_EXTREME": (
        {F + "account_tx.count_5m": 12},
        {F + "account_tx.count_5m": 11},
    ),
    "TX_VELOCITY_COUNT_1H": ({F + "account_tx.count_1h": 15}, {F + "account_tx.count_1h": 14}),
    "TX_VELOCITY_SUM_1H": (
        {
            F + "account_amount.count": 20,
            F + "account_amount.mean": 100.0,
            F + "account_tx.sum_1h": 2500.0,
            F + "account_amount.ratio": 1.5,
        },
        {F + "account_tx.sum_1h": 1100.0},
    ),
    "TX_VELOCITY_SUM_24H": (
        {
            F + "account_amount.count": 20,
            F + "account_amount.mean": 100.0,
            F + "account_tx.sum_24h": 6000.0,
            F + "account_amount.ratio": 2.0,
        },
        {F + "account_amount.mean": 500.0},
    ),
    "TX_DISTINCT_COUNTERPARTIES_1H": (
        {F + "account_tx.distinct_1h": 8},
        {F + "account_tx.distinct_1h": 7},
    ),
    "TX_AMOUNT_ZSCORE": (
        {F + "account_amount.count": 10, F + "account_amount.zscore": 3.5},
        {F + "account_amount.zscore": 3.4},
    ),
    "TX_AMOUNT_ZSCORE_EXTREME": (
        {F + "account_amount.count": 10, F + "account_amount.zscore": 5.0},
        {F + "account_amount.count": 9},
    ),
    "TX_AMOUNT_RATIO": (
        {F + "account_amount.count": 2, F + "account_amount.ratio": 10.0, "data.amount": 500.0},
        {"data.amount": 499.0},
    ),
    "TX_NEW_COUNTERPARTY_HIGH_AMOUNT": (
        {
            F + "account_counterparty.is_new": True,
            F + "account_counterparty.known": 2,
            F + "account_amount.ratio": 5.0,
            "data.amount": 1000.0,
        },
        {F + "account_counterparty.is_new": False},
    ),
    "TX_NEW_ACCOUNT_HIGH_AMOUNT": (
        {F + "account_amount.count": 2, "data.amount": 5000.0},
        {F + "account_amount.count": 3},
    ),
    "TX_STRUCTURING_24H": (
        {"data.amount": 9500.0, F + "account_near_threshold.count_24h": 3},
        {F + "account_near_threshold.count_24h": 2},
    ),
    "TX_STRUCTURING_7D": (
        {"data.amount": 9990.0, F + "account_near_threshold.count_7d": 4},
        {F + "account_near_threshold.count_7d": 3},
    ),
    "TX_JUST_BELOW_THRESHOLD": (
        {"data.amount": 8500.0, F + "account_near_threshold.count_24h": 2},
        {F + "account_near_threshold.count_24h": 1},
    ),
    "TX_CARD_TESTING": (
        {F + "account_small_tx.count_10m": 5, F + "account_small_tx.distinct_10m": 4},
        {F + "account_small_tx.distinct_10m": 1},
    ),
    "TX_CARD_TESTING_SEVERE": (
        {F + "account_small_tx.count_1h": 12, F + "account_small_tx.distinct_1h": 8},
        {F + "account_small_tx.count_1h": 11},
    ),
    "TX_SANCTIONED_COUNTRY": (
        {"data.counterparty_country": "KP"},
        {"data.counterparty_country": "KR"},
    ),
    "TX_HIGH_RISK_COUNTRY": (
        {"data.counterparty_country": "YE"},
        {"data.counterparty_country": "FR"},
    ),
    "TX_MULE_FAN_IN": (
        {F + "counterparty_tx.distinct_1h": 15, F + "account_counterparty.is_new": True},
        {F + "counterparty_tx.distinct_1h": 14},
    ),
    "TX_IP_MANY_ACCOUNTS": ({F + "ip_tx.distinct_1h": 6}, {F + "ip_tx.distinct_1h": 5}),
    "TX_NEW_DEVICE_HIGH_AMOUNT": (
        {
            F + "account_device.is_new": True,
            F + "account_device.known": 1,
            F + "account_amount.ratio": 4.0,
        },
        {F + "account_device.known": 0},
    ),
    "TX_ODD_HOUR_HIGH_AMOUNT": (
        {
            F + "account_hours.total": 40,
            F + "account_hours.hour_count": 0.0,
            F + "account_hours.entity_age_s": 86400.0,
            F + "account_amount.ratio": 3.0,
        },
        {F + "account_hours.hour_count": 1.0},
    ),
    "LOGIN_BRUTE_FORCE_USER": (
        {F + "user_login_fail.count_5m": 5},
        {F + "user_login_fail.count_5m": 4},
    ),
    "LOGIN_BRUTE_FORCE_USER_SEVERE": (
        {F + "user_login_fail.count_1h": 15},
        {F + "user_login_fail.count_1h": 14},
    ),
    "LOGIN_FAILURES_USER_24H": (
        {F + "user_login_fail.count_24h": 10},
        {F + "user_login_fail.count_24h": 9},
    ),
    "LOGIN_SUCCESS_AFTER_FAILURES": (
        {"data.success": True, F + "user_login_fail.count_1h": 5},
        {"data.success": False},
    ),
    "LOGIN_CREDENTIAL_STUFFING_IP": (
        {F + "ip_login.distinct_10m": 8, F + "ip_login_fail.count_1h": 5},
        {F + "ip_login.distinct_10m": 7},
    ),
    "LOGIN_CREDENTIAL_STUFFING_IP_SEVERE": (
        {F + "ip_login.distinct_1h": 25, F + "ip_login_fail.count_1h": 15},
        {F + "ip_login_fail.count_1h": 14},
    ),
    "LOGIN_IP_FAILURES": ({F + "ip_login_fail.count_5m": 10}, {F + "ip_login_fail.count_5m": 9}),
    "LOGIN_IMPOSSIBLE_TRAVEL": (
        {F + "user_geo.speed_kmh": 1001.0, F + "user_geo.distance_km": 501.0},
        {F + "user_geo.distance_km": 499.0},
    ),
    "LOGIN_NEW_DEVICE": (
        {"data.success": True, F + "user_device.is_new": True, F + "user_device.known": 1},
        {F + "user_device.known": 0},
    ),
    "LOGIN_NEW_COUNTRY": (
        {"data.success": True, F + "user_country.is_new": True, F + "user_country.known": 1},
        {F + "user_country.is_new": False},
    ),
    "LOGIN_NEW_DEVICE_NEW_COUNTRY": (
        {
            "data.success": True,
            F + "user_device.is_new": True,
            F + "user_device.known": 2,
            F + "user_country.is_new": True,
            F + "user_country.known": 1,
        },
        {F + "user_device.is_new": False},
    ),
    "LOGIN_ODD_HOUR": (
        {
            F + "user_hours.total": 30,
            F + "user_hours.hour_share": 0.0,
            F + "user_hours.entity_age_s": 90000.0,
        },
        {F + "user_hours.total": 29},
    ),
    "SESSION_HIJACK": (
        {
            F + "session_continuity.ip_changed": True,
            F + "session_continuity.device_id_changed": True,
        },
        {F + "session_continuity.ip_changed": False},
    ),
    "SESSION_DEVICE_CHANGED": (
        {F + "session_continuity.device_id_changed": True},
        {F + "session_continuity.device_id_changed": False},
    ),
    "SESSION_COUNTRY_CHANGED": (
        {F + "session_continuity.country_changed": True},
        {F + "session_continuity.country_changed": False},
    ),
    "SESSION_IP_CHANGED": (
        {F + "session_continuity.ip_changed": True},
        {F + "session_continuity.ip_changed": False},
    ),
    "ATO_CREDENTIAL_CHANGE_NEW_DEVICE": (
        {"data.action": "add_payee", F + "user_device.age_s": 600.0, F + "user_device.known": 2},
        {"data.action": "view"},
    ),
    "ATO_PAYOUT_AFTER_CREDENTIAL_CHANGE": (
        {"data.action": "payout", F + "user_credential_change.since_s": 300.0},
        {F + "user_credential_change.since_s": 3600.0},
    ),
    "ATO_SEQUENCE": (
        {
            "data.action": "payout",
            F + "user_credential_change.since_s": 300.0,
            F + "user_device.age_s": 900.0,
            F + "user_device.known": 2,
        },
        {F + "user_device.age_s": 90000.0},
    ),
    "SESSION_PAYOUT_AMOUNT": (
        {
            "data.action": "payout",
            F + "user_payout_amount.count": 3,
            F + "user_payout_amount.ratio": 5.0,
        },
        {F + "user_payout_amount.ratio": 4.9},
    ),
    "SESSION_PAYOUT_VELOCITY": ({F + "user_payout.count_1h": 3}, {F + "user_payout.count_1h": 2}),
    "SESSION_ODD_HOUR_SENSITIVE": (
        {
            "data.action": "payout",
            F + "user_hours.total": 15,
            F + "user_hours.hour_share": 0.02,
            F + "user_hours.entity_age_s": 86400.0,
        },
        {"data.action": "view"},
    ),
    "API_NEW_ROUTE": (
        {
            F + "svc_route.is_new": True,
            F + "svc_route.known": 3,
            F + "svc_route.entity_age_s": 86400.0,
        },
        {F + "svc_route.entity_age_s": 3600.0},
    ),
    "API_SENSITIVE_NEW_ROUTE": (
        {F + "svc_route.is_new": True, F + "svc_route.known": 3, "data.path": "/admin/users"},
        {"data.path": "/v1/accounts/{id}/balance"},
    ),
    "API_NEW_TARGET": (
        {
            F + "svc_target.is_new": True,
            F + "svc_target.known": 1,
            F + "svc_target.entity_age_s": 90000.0,
        },
        {F + "svc_target.is_new": False},
    ),
    "API_ROUTE_SPREAD": (
        {
            F + "svc_route.is_new": True,
            F + "svc_calls.distinct_5m": 4,
            F + "svc_route.entity_age_s": 86400.0,
        },
        {F + "svc_calls.distinct_5m": 3},
    ),
    "API_BURST": (
        {F + "svc_route_calls.count_5m": 14, F + "svc_route_calls.count_24h": 288},
        {F + "svc_route_calls.count_24h": 576},
    ),
    "API_BURST_SERVICE": (
        {F + "svc_calls.count_1m": 40, F + "svc_calls.count_24h": 2880},
        {F + "svc_calls.count_1m": 39},
    ),
    "API_REQUEST_SIZE": (
        {
            F + "svc_request_size.count": 20,
            F + "svc_request_size.ratio": 20.0,
            "data.request_bytes": 50000,
        },
        {F + "svc_request_size.ratio": 19.0},
    ),
    "API_ODD_HOUR": (
        {
            F + "svc_hours.total": 200,
            F + "svc_hours.hour_share": 0.004,
            F + "svc_hours.entity_age_s": 86400.0,
        },
        {F + "svc_hours.entity_age_s": 86399.0},
    ),
}


def test_every_default_rule_has_a_case() -> None:
    assert set(CASES) == set(RULES)


def _fields(rule: CompiledRule) -> dict[str, Any]:
    base: dict[str, Any] = {"type": rule.events[0], "hour": 12, "event_id": "e"}
    return base


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_pattern_and_not_outside_it(rule_id: str) -> None:
    rule = RULES[rule_id]
    fire, quiet = CASES[rule_id]
    env = {**_fields(rule), **fire}
    assert rule.condition(env) is True
    assert rule.condition({**env, **quiet}) is False
    assert not rule.condition(_fields(rule))  # nothing known: nothing fires
    assert rule.message(env)  # the reason renders
