"""Tests for the synthetic traffic generator (riskguard.simulate)."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from riskguard.engine.events import parse_event
from riskguard.simulate import (
    ATTACK_TYPES,
    DEFAULT_START,
    SANCTIONED_COUNTRIES,
    SENSITIVE_ROUTES,
    GatewayScene,
    gateway_config_path_for,
    labels_path_for,
    simulate,
    simulate_gateway,
    write_jsonl,
)

Row = dict[str, Any]
DAYS, USERS, SEED = 4, 200, 7
TINY: dict[str, Any] = {"days": 3, "users": 30, "services": 2}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


class Sim:
    """One small simulation with the indexes the tests need."""

    def __init__(self, events: list[Row], labels: list[Row]) -> None:
        self.events = events
        self.labels = labels
        self.label_of = {row["event_id"]: row for row in labels}
        self.benign = [e for e in events if e["event_id"] not in self.label_of]
        self.episodes: dict[str, list[Row]] = defaultdict(list)
        self.episode_attack: dict[str, str] = {}
        for event in events:
            label = self.label_of.get(event["event_id"])
            if label is not None:
                self.episodes[label["episode"]].append(event)
                self.episode_attack[label["episode"]] = label["attack"]

    def episodes_of(self, attack: str) -> list[list[Row]]:
        found = [evs for ep, evs in self.episodes.items() if self.episode_attack[ep] == attack]
        assert found, f"no {attack} episode"
        return found


@pytest.fixture(scope="module")
def sim() -> Sim:
    return Sim(*simulate(days=DAYS, users=USERS, seed=SEED))


def ts(event: Row) -> float:
    return datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00")).timestamp()


def actor(event: Row) -> str:
    data = event["data"]
    if "user_id" in data:
        return str(data["user_id"])
    if "account_id" in data:
        return "user-" + str(data["account_id"]).removeprefix("acct-")
    return str(data["service_id"])


def distance_km(a: Row, b: Row) -> float:
    p1, p2 = math.radians(a["lat"]), math.radians(b["lat"])
    dp, dl = p2 - p1, math.radians(b["lon"] - a["lon"])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def digest(events: list[Row], labels: list[Row]) -> str:
    blob = json.dumps([events, labels], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


# -- determinism and shape ----------------------------------------------------------------------


def test_same_seed_gives_identical_output() -> None:
    assert simulate(**TINY, seed=3) == simulate(**TINY, seed=3)


def test_different_seed_gives_different_output() -> None:
    first, _ = simulate(**TINY, seed=3)
    second, _ = simulate(**TINY, seed=4)
    assert first != second
    assert first[0]["event_id"] != second[0]["event_id"]  # ids do not collide across seeds


def test_output_does_not_depend_on_hash_randomisation() -> None:
    code = (
        "import hashlib, json\n"
        "from riskguard.simulate import simulate\n"
        "ev, lab = simulate(days=3, users=30, services=2, seed=11)\n"
        "print(hashlib.sha256(json.dumps([ev, lab], sort_keys=True).encode()).hexdigest())\n"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(run.stdout.strip())
    assert digests == {digest(*simulate(**TINY, seed=11))}


def test_events_are_sorted_by_time_with_rfc3339_utc_timestamps(sim: Sim) -> None:
    stamps = [e["occurred_at"] for e in sim.events]
    assert all(TIMESTAMP.match(s) for s in stamps)
    assert stamps == sorted(stamps)
    end = DEFAULT_START + timedelta(days=DAYS)
    assert stamps[0] >= "2026-11-02T00:00:00.000Z"
    assert stamps[-1] < f"{end:%Y-%m-%dT%H:%M:%S}.000Z"


def test_event_ids_are_unique(sim: Sim) -> None:
    ids = [e["event_id"] for e in sim.events]
    assert len(set(ids)) == len(ids)


def test_every_event_matches_the_contract(sim: Sim) -> None:
    for event in sim.events:
        parsed = parse_event(event)
        assert parsed.event_id == event["event_id"]
        assert set(event) == {"event_id", "type", "occurred_at", "data", "context"}


def test_every_label_refers_to_one_existing_event(sim: Sim) -> None:
    ids = {e["event_id"] for e in sim.events}
    label_ids = [row["event_id"] for row in sim.labels]
    assert len(label_ids) == len(set(label_ids))
    assert set(label_ids) <= ids
    for row in sim.labels:
        assert set(row) == {"event_id", "attack", "episode"}
        assert row["attack"] in ATTACK_TYPES
        assert row["episode"].startswith(row["attack"] + "-")
    assert label_ids == [e["event_id"] for e in sim.events if e["event_id"] in sim.label_of]


def test_every_attack_type_is_present_with_several_episodes(sim: Sim) -> None:
    for attack in ATTACK_TYPES:
        assert len(sim.episodes_of(attack)) >= 2, attack


def test_attacks_start_after_the_first_two_days(sim: Sim) -> None:
    attack_start = (DEFAULT_START + timedelta(days=2)).timestamp()
    assert all(ts(e) >= attack_start for evs in sim.episodes.values() for e in evs)


def test_volume_and_mix_are_plausible(sim: Sim) -> None:
    per_type: dict[str, int] = defaultdict(int)
    for event in sim.events:
        per_type[event["type"]] += 1
    user_days = DAYS * USERS
    assert 1.0 < per_type["transaction"] / user_days < 5.0
    assert 0.5 < per_type["login"] / user_days < 4.0
    assert per_type["session"] > per_type["login"]
    assert per_type["api_call"] > 0
    assert len(sim.labels) < 0.05 * len(sim.events)


def test_default_service_count_and_internal_addresses(sim: Sim) -> None:
    calls = [e for e in sim.events if e["type"] == "api_call"]
    assert len({e["data"]["service_id"] for e in calls}) == max(6, USERS // 100)
    for event in calls:
        assert ipaddress.ip_address(event["context"]["ip"]) in ipaddress.ip_network("10.0.0.0/8")
        assert "geo" not in event["context"]
        assert "device_id" not in event["context"]
        assert "{" not in event["data"]["path"].replace("{id}", "")  # ids are templated


def test_explicit_service_count_and_start() -> None:
    start = datetime(2027, 1, 4, 9, 30, tzinfo=UTC)
    events, _ = simulate(days=1, users=20, seed=1, services=3, start=start)
    services = {e["data"]["service_id"] for e in events if e["type"] == "api_call"}
    assert len(services) == 3
    assert events[0]["occurred_at"] >= "2027-01-04T09:30:00.000Z"
    assert events[-1]["occurred_at"] < "2027-01-05T09:30:00.000Z"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": 0, "users": 50},
        {"days": 2, "users": 5},
        {"days": 2, "users": 50, "services": 1},
        {"days": 2, "users": 50, "start": datetime(2026, 11, 2)},  # naive
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        simulate(seed=1, **kwargs)


def test_two_days_give_benign_traffic_only() -> None:
    events, labels = simulate(days=2, users=20, services=2, seed=1)
    assert events
    assert labels == []


# -- benign behaviour ---------------------------------------------------------------------------


def test_accounts_and_users_name_the_same_people(sim: Sim) -> None:
    accounts = {e["data"]["account_id"] for e in sim.events if e["type"] == "transaction"}
    logins = {e["data"]["user_id"] for e in sim.benign if e["type"] == "login"}
    assert {a.removeprefix("acct-") for a in accounts} <= {f"{n}" for n in range(USERS)}
    assert {u.removeprefix("user-") for u in logins} <= {f"{n}" for n in range(USERS)}


def test_benign_travel_never_exceeds_airliner_speed(sim: Sim) -> None:
    located: dict[str, list[tuple[float, Row]]] = defaultdict(list)
    for event in sim.benign:
        geo = event["context"].get("geo")
        if geo is not None:
            located[actor(event)].append((ts(event), geo))
    moves = 0
    for trail in located.values():
        for (t1, g1), (t2, g2) in itertools.pairwise(trail):
            km = distance_km(g1, g2)
            if km > 50:  # beyond city-level geo-IP precision
                moves += 1
                assert t2 > t1
                assert km / ((t2 - t1) / 3600) <= 900, (g1, g2, t1, t2)
    assert moves > 0  # some users did travel


def test_benign_payments_are_mostly_to_known_counterparties(sim: Sim) -> None:
    after_baseline = (DEFAULT_START + timedelta(days=2)).timestamp()
    seen: dict[str, set[str]] = defaultdict(set)
    new = total = 0
    for event in sim.benign:
        if event["type"] != "transaction":
            continue
        data = event["data"]
        if ts(event) >= after_baseline:
            total += 1
            new += data["counterparty_id"] not in seen[data["account_id"]]
        seen[data["account_id"]].add(data["counterparty_id"])
        assert data["counterparty_country"] not in SANCTIONED_COUNTRIES
        assert data["channel"] in {"card", "transfer", "wallet"}
        assert data["amount"] == round(data["amount"], 2)
    # ~10% truly new payees plus usual ones not yet seen in a two-day history.
    assert 0.1 < new / total < 0.5


def test_shared_ips_carry_several_users(sim: Sim) -> None:
    users_per_ip: dict[str, set[str]] = defaultdict(set)
    for event in sim.benign:
        if event["type"] == "login":
            users_per_ip[event["context"]["ip"]].add(event["data"]["user_id"])
    assert max(len(users) for users in users_per_ip.values()) >= 5


def test_benign_services_never_call_sensitive_routes(sim: Sim) -> None:
    sensitive = set(SENSITIVE_ROUTES)
    for event in sim.events:
        if event["type"] == "api_call":
            key = (event["data"]["method"], event["data"]["path"])
            label = sim.label_of.get(event["event_id"])
            if key in sensitive:
                assert label is not None
                assert label["attack"] == "lateral_movement"


# -- attacks ------------------------------------------------------------------------------------


def test_payment_velocity_is_many_payments_in_minutes(sim: Sim) -> None:
    for evs in sim.episodes_of("payment_velocity"):
        assert 8 <= len(evs) <= 20
        assert ts(evs[-1]) - ts(evs[0]) <= 600
        assert len({e["data"]["account_id"] for e in evs}) == 1
        assert len({e["data"]["counterparty_id"] for e in evs}) <= 3


def _benign_median(sim: Sim, account_id: str) -> float:
    amounts: list[float] = [
        e["data"]["amount"]
        for e in sim.benign
        if e["type"] == "transaction" and e["data"]["account_id"] == account_id
    ]
    return statistics.median(amounts)


def test_amount_anomaly_is_far_above_the_usual_median(sim: Sim) -> None:
    for (event,) in sim.episodes_of("amount_anomaly"):
        assert event["data"]["amount"] > 5 * _benign_median(sim, event["data"]["account_id"])


def test_new_counterparty_high_amount(sim: Sim) -> None:
    for (event,) in sim.episodes_of("new_counterparty_high_amount"):
        data = event["data"]
        assert data["amount"] >= 1500
        earlier = {
            e["data"]["counterparty_id"]
            for e in sim.events
            if e["type"] == "transaction"
            and e["data"]["account_id"] == data["account_id"]
            and ts(e) < ts(event)
        }
        assert data["counterparty_id"] not in earlier


def test_structuring_stays_just_below_the_threshold_within_a_day(sim: Sim) -> None:
    for evs in sim.episodes_of("structuring"):
        assert 3 <= len(evs) <= 6
        assert all(9000 <= e["data"]["amount"] <= 9990 for e in evs)
        assert ts(evs[-1]) - ts(evs[0]) < 86400


def test_card_testing_is_tiny_card_payments_to_distinct_merchants(sim: Sim) -> None:
    for evs in sim.episodes_of("card_testing"):
        assert 10 <= len(evs) <= 40
        assert all(0.5 <= e["data"]["amount"] <= 2.0 for e in evs)
        assert all(e["data"]["channel"] == "card" for e in evs)
        assert len({e["data"]["counterparty_id"] for e in evs}) == len(evs)
        assert ts(evs[-1]) - ts(evs[0]) <= 600


def test_sanctioned_country_payments(sim: Sim) -> None:
    for (event,) in sim.episodes_of("sanctioned_country"):
        assert event["data"]["counterparty_country"] in SANCTIONED_COUNTRIES


def test_brute_force_is_many_failures_on_one_user(sim: Sim) -> None:
    for evs in sim.episodes_of("brute_force"):
        assert len({e["data"]["user_id"] for e in evs}) == 1
        assert 15 <= sum(not e["data"]["success"] for e in evs) <= 60
        assert len({e["context"]["ip"] for e in evs}) <= 3
        assert ts(evs[-1]) - ts(evs[0]) <= 15 * 60


def test_credential_stuffing_is_one_ip_trying_many_users(sim: Sim) -> None:
    for evs in sim.episodes_of("credential_stuffing"):
        user_ids = {e["data"]["user_id"] for e in evs}
        assert len({e["context"]["ip"] for e in evs}) == 1
        assert 20 <= len(user_ids) == len(evs) <= 100
        assert sum(e["data"]["success"] for e in evs) <= 0.1 * len(evs)
        assert any(int(u.removeprefix("user-")) >= USERS for u in user_ids)  # unknown ids
        assert any(int(u.removeprefix("user-")) < USERS for u in user_ids)  # real ones


def _previous_login(sim: Sim, event: Row) -> Row | None:
    user_id = event["data"]["user_id"]
    before = [
        e
        for e in sim.events
        if e["type"] == "login"
        and e["data"]["user_id"] == user_id
        and e["data"]["success"]
        and ts(e) < ts(event)
    ]
    return before[-1] if before else None


def test_impossible_travel_is_far_and_fast(sim: Sim) -> None:
    for evs in sim.episodes_of("impossible_travel"):
        login = evs[0]
        previous = _previous_login(sim, login)
        assert previous is not None
        assert login["data"]["success"]
        assert distance_km(login["context"]["geo"], previous["context"]["geo"]) >= 3000
        assert ts(login) - ts(previous) < 2 * 3600


def test_new_device_new_country_is_new_on_both_counts_without_impossible_speed(sim: Sim) -> None:
    for evs in sim.episodes_of("new_device_new_country"):
        login = evs[0]
        history = [
            e
            for e in sim.benign
            if e["type"] == "login" and e["data"]["user_id"] == login["data"]["user_id"]
        ]
        assert login["context"]["device_id"] not in {e["context"]["device_id"] for e in history}
        countries = {e["context"]["geo"]["country"] for e in history}
        assert login["context"]["geo"]["country"] not in countries
        previous = _previous_login(sim, login)
        if previous is not None:  # a user may never have logged in before
            km = distance_km(login["context"]["geo"], previous["context"]["geo"])
            assert km / ((ts(login) - ts(previous)) / 3600) < 900


def test_account_takeover_sequence(sim: Sim) -> None:
    for evs in sim.episodes_of("account_takeover"):
        success = next(e for e in evs if e["type"] == "login" and e["data"]["success"])
        sessions = [e for e in evs if e["type"] == "session"]
        actions = [e["data"]["action"] for e in sessions]
        assert {"change_password", "change_email", "add_payee"} & set(actions)
        assert actions[-1] == "payout"
        assert "amount" in sessions[-1]["data"]
        assert len({e["data"]["session_id"] for e in sessions}) == 1
        assert 5 * 60 <= ts(sessions[-1]) - ts(success) <= 60 * 60 + 60
        known = {
            e["context"]["device_id"]
            for e in sim.benign
            if e["type"] == "login" and e["data"]["user_id"] == success["data"]["user_id"]
        }
        assert success["context"]["device_id"] not in known


def test_session_hijacking_continues_a_legitimate_session_elsewhere(sim: Sim) -> None:
    for evs in sim.episodes_of("session_hijacking"):
        session_id = evs[0]["data"]["session_id"]
        legit = [
            e
            for e in sim.benign
            if e["type"] == "session" and e["data"]["session_id"] == session_id
        ]
        assert legit
        assert ts(legit[-1]) < ts(evs[0])
        assert evs[0]["context"]["ip"] != legit[-1]["context"]["ip"]
        assert evs[0]["context"]["device_id"] != legit[-1]["context"]["device_id"]
        assert evs[-1]["data"]["action"] == "payout"


def _benign_routes(sim: Sim) -> dict[str, set[tuple[str, str, str]]]:
    routes: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for event in sim.benign:
        if event["type"] == "api_call":
            data = event["data"]
            routes[data["service_id"]].add((data["target"], data["method"], data["path"]))
    return routes


def test_lateral_movement_calls_sensitive_routes_never_called_before(sim: Sim) -> None:
    routes = _benign_routes(sim)
    for evs in sim.episodes_of("lateral_movement"):
        assert len(evs) >= 4
        assert ts(evs[-1]) - ts(evs[0]) <= 600
        for event in evs:
            data = event["data"]
            assert (data["method"], data["path"]) in SENSITIVE_ROUTES
            assert data["target"] != data["service_id"]
            assert (data["target"], data["method"], data["path"]) not in routes[data["service_id"]]


def test_api_burst_is_many_calls_to_one_route_in_minutes(sim: Sim) -> None:
    for evs in sim.episodes_of("api_burst"):
        keys = {(e["data"]["service_id"], e["data"]["target"], e["data"]["path"]) for e in evs}
        assert len(keys) == 1
        assert len(evs) >= 12
        assert ts(evs[-1]) - ts(evs[0]) <= 8 * 60


def test_exfiltration_requests_are_much_larger_than_usual(sim: Sim) -> None:
    sizes: dict[tuple[str, str, str, str], list[int]] = defaultdict(list)
    for event in sim.benign:
        if event["type"] == "api_call":
            d = event["data"]
            sizes[(d["service_id"], d["target"], d["method"], d["path"])].append(d["request_bytes"])
    for evs in sim.episodes_of("exfiltration_size"):
        assert 2 <= len(evs) <= 6
        for event in evs:
            d = event["data"]
            usual = statistics.median(sizes[(d["service_id"], d["target"], d["method"], d["path"])])
            assert d["request_bytes"] >= 20 * usual


def test_odd_hours_actors_never_acted_at_that_hour_before(sim: Sim) -> None:
    hours: dict[str, set[int]] = defaultdict(set)
    for event in sim.benign:
        hours[actor(event)].add(int(event["occurred_at"][11:13]))
    kinds = set()
    for evs in sim.episodes_of("odd_hours"):
        who = actor(evs[0])
        kinds.add(evs[0]["type"])
        assert len(hours[who]) >= 5  # a real daytime history
        assert all(int(e["occurred_at"][11:13]) not in hours[who] for e in evs)
        if evs[0]["type"] == "login":
            assert {"payout", "add_payee"} & {e["data"].get("action") for e in evs}
    assert kinds == {"login", "api_call"}  # both users and services


# -- files --------------------------------------------------------------------------------------


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    events, labels = simulate(**TINY, seed=5)
    out = tmp_path / "events.jsonl"
    assert write_jsonl(out, events) == len(events)
    assert write_jsonl(labels_path_for(out), labels) == len(labels)
    assert [json.loads(line) for line in out.read_text().splitlines()] == events
    assert (tmp_path / "events.labels.jsonl").exists()


@pytest.mark.parametrize(
    ("events", "labels"),
    [
        ("out/EVENTS.jsonl", "out/EVENTS.labels.jsonl"),
        ("traffic", "traffic.labels.jsonl"),
        ("a.b.jsonl", "a.b.labels.jsonl"),
    ],
)
def test_labels_path_sits_beside_the_events(events: str, labels: str) -> None:
    assert labels_path_for(events) == Path(labels)


# -- the gateway scene ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene() -> GatewayScene:
    return simulate_gateway(days=5, services=8, seed=5)


def _template(declared: tuple[str, ...], method: str, path: str) -> str | None:
    """The declared route ``path`` matches (the most literal one), as the gateway picks it."""
    segments = path.split("/")
    best: tuple[int, str] | None = None
    for route in declared:
        m, template = route.split(" ", 1)
        parts = template.split("/")
        if m != method or len(parts) != len(segments):
            continue
        if all(p.startswith("{") or p == s for p, s in zip(parts, segments, strict=True)):
            literal = sum(not p.startswith("{") for p in parts)
            if best is None or literal > best[0]:
                best = (literal, template)
    return None if best is None else best[1]


def _sensitive(path: str) -> bool:
    return path.startswith("/admin") or any(
        part in path for part in ("/internal/", "/keys", "credential", "export", "/secrets")
    )


def test_gateway_scene_is_deterministic_and_seeded() -> None:
    first = simulate_gateway(days=3, services=4, seed=8)
    assert first == simulate_gateway(days=3, services=4, seed=8)
    other = simulate_gateway(days=3, services=4, seed=9)
    assert first.events != other.events
    assert first.events[0]["event_id"] != other.events[0]["event_id"]


def test_gateway_scene_events_are_api_calls_with_concrete_paths_and_deployments(
    scene: GatewayScene,
) -> None:
    declared = {s.service_id: s.declared for s in scene.services}
    stamps = [e["occurred_at"] for e in scene.events]
    assert stamps == sorted(stamps)
    assert len({e["event_id"] for e in scene.events}) == len(scene.events)
    for event in scene.events:
        parse_event(event)
        data, context = event["data"], event["context"]
        assert event["type"] == "api_call"
        assert "{" not in data["path"]  # concrete, as the gateway sees it
        assert data["target"] != data["service_id"]
        assert set(context) == {"ip", "user_agent", "device_id"}
    benign = [e for e in scene.events if e["event_id"] not in _label_ids(scene)]
    for event in benign:  # normal calls only ever use routes their target declares
        data = event["data"]
        assert _template(declared[data["target"]], data["method"], data["path"]) is not None
    assert len(benign) > 10_000


def _label_ids(scene: GatewayScene) -> set[str]:
    return {row["event_id"] for row in scene.labels}


def test_gateway_scene_configuration_is_a_valid_gateway_configuration(
    scene: GatewayScene, tmp_path: Path
) -> None:
    from riskguard.adapters.gateway.config import load_config

    path = gateway_config_path_for(tmp_path / "scene.jsonl")
    assert path == tmp_path / "scene.gateway.json"
    path.write_text(json.dumps(scene.gateway_config()))
    config, _ = load_config(path)
    assert sorted(config.upstreams) == sorted(s.service_id for s in scene.services)
    catalogs = config.catalogs()
    assert all(catalogs[s.service_id] for s in scene.services)


def test_gateway_scene_releases_change_deployments_and_add_routes(scene: GatewayScene) -> None:
    first_seen: dict[tuple[str, str], float] = {}
    for event in scene.events:
        key = (event["data"]["service_id"], event["context"]["device_id"])
        first_seen.setdefault(key, ts(event))
    released = [s for s in scene.services if s.releases]
    assert released
    assert any(s.added_routes for s in scene.services)
    start = scene.start.timestamp()
    for service in released:
        deployments = sorted(
            (t, d) for (sid, d), t in first_seen.items() if sid == service.service_id
        )
        assert len(deployments) == service.releases + 1
        assert deployments[-1][1] == service.deployment
        for t, _ in deployments[1:]:  # releases go out on weekdays, 09:00-17:00 CET
            cet = datetime.fromtimestamp(t, UTC) + timedelta(hours=1)
            assert cet.weekday() < 5
            assert 9 <= cet.hour < 18, cet
            assert t - start >= 12 * 3600
    # a rolling update: the old deployment serves for at most 10 minutes after the new one
    for event in scene.events:
        service = event["data"]["service_id"]
        mine = sorted((t, d) for (sid, d), t in first_seen.items() if sid == service)
        current = [d for t, d in mine if t <= ts(event)]
        if event["context"]["device_id"] != current[-1]:
            newer = next(t for t, d in mine if d == current[-1])
            assert ts(event) - newer <= 600


def test_gateway_scene_benign_services_use_some_sensitive_routes(scene: GatewayScene) -> None:
    labelled = _label_ids(scene)
    sensitive = {
        (e["data"]["service_id"], e["data"]["target"], e["data"]["method"])
        for e in scene.events
        if e["event_id"] not in labelled and _sensitive(e["data"]["path"])
    }
    assert sensitive  # ops jobs: exports, admin reads — known routes, not attacks


def test_gateway_scene_lateral_movement(scene: GatewayScene) -> None:
    labelled = {row["event_id"]: row for row in scene.labels}
    declared = {s.service_id: s.declared for s in scene.services}
    assert {row["attack"] for row in scene.labels} == {"lateral_movement"}
    episodes: dict[str, list[Row]] = defaultdict(list)
    seen: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    before: dict[str, set[tuple[str, str, str]]] = {}
    deployment_since: dict[tuple[str, str], float] = {}
    for event in scene.events:
        data = event["data"]
        key = (
            data["target"],
            data["method"],
            _template(declared[data["target"]], data["method"], data["path"]) or data["path"],
        )
        deployment_since.setdefault((data["service_id"], event["context"]["device_id"]), ts(event))
        label = labelled.get(event["event_id"])
        if label is not None:
            if label["episode"] not in episodes:
                before[label["episode"]] = set(seen[data["service_id"]])
            episodes[label["episode"]].append(event)
        seen[data["service_id"]].add(key)
    assert len(episodes) == round(2.4 * 3)
    starts = [ts(evs[0]) for evs in episodes.values()]
    assert min(starts) >= scene.start.timestamp() + 2 * 86400
    for name, evs in episodes.items():
        service = evs[0]["data"]["service_id"]
        assert {e["data"]["service_id"] for e in evs} == {service}
        assert len({e["context"]["device_id"] for e in evs}) == 1
        assert len({e["context"]["ip"] for e in evs}) == 1
        deployment = evs[0]["context"]["device_id"]
        assert ts(evs[0]) - deployment_since[(service, deployment)] >= 86400  # long-running
        assert any(_sensitive(e["data"]["path"]) for e in evs)
        for event in evs:  # every call of the episode reaches for a route it never called
            data = event["data"]
            template = _template(declared[data["target"]], data["method"], data["path"])
            assert (data["target"], data["method"], template or data["path"]) not in before[name]
            assert template is not None or _sensitive(data["path"])  # guesses are sensitive
        span = ts(evs[-1]) - ts(evs[0])
        assert span <= 10 * 60 or (span <= 8 * 60 * len(evs) and _night_cet(evs[0]))


def _night_cet(event: Row) -> bool:
    return 1 <= (int(event["occurred_at"][11:13]) + 1) % 24 <= 5


def test_gateway_scene_without_attack_days_is_benign() -> None:
    assert simulate_gateway(days=2, services=3, seed=1).labels == []


@pytest.mark.parametrize("kwargs", [{"days": 0}, {"services": 2}, {"start": datetime(2026, 11, 2)}])
def test_gateway_scene_refuses_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        simulate_gateway(**kwargs)


def test_simulate_command_writes_the_gateway_scene(tmp_path: Path) -> None:
    out = tmp_path / "scene.jsonl"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "riskguard",
            "simulate",
            "--scene",
            "gateway",
            "--days",
            "3",
            "--services",
            "4",
            "--seed",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    made = simulate_gateway(days=3, services=4, seed=2)
    assert [json.loads(line) for line in out.read_text().splitlines()] == made.events
    labels = (tmp_path / "scene.labels.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in labels] == made.labels
    assert json.loads((tmp_path / "scene.gateway.json").read_text()) == made.gateway_config()
