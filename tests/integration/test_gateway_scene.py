"""The simulator's gateway scene through the gateway's own decision path (the real ``Gateway``:
route table, declared routes, JWT verification, rate limit, risk engine, in-memory state,
decisions recorded in SQLite), with each event's time: the issue's two targets on a small
scene, and a weakened pack that must miss the first one (the measurement can fail)."""

from __future__ import annotations

import asyncio
import copy
import sqlite3
from pathlib import Path

import pytest

from riskguard.engine.rules import parse_pack_text
from riskguard.gateway_scene import TARGET_FIRST_BLOCK, evaluate, replay
from riskguard.rulefile import default_pack_text
from riskguard.simulate import simulate_gateway

pytestmark = pytest.mark.integration


def test_lateral_movement_is_blocked_early_and_normal_traffic_flows(tmp_path: Path) -> None:
    scene = simulate_gateway(days=4, services=8, seed=2)
    result = asyncio.run(replay(scene.events, scene.labels, scene.gateway_config(), tmp_path))
    tally = evaluate(scene.events, scene.labels, result)
    figures = tally.summary()

    assert figures["episodes"] >= 4
    late = [e for e in tally.episodes if not e["first_blocked"] or e["first_blocked"] > 5]
    assert not late, late
    assert TARGET_FIRST_BLOCK == 5
    assert all(e["allowed_after_block"] == 0 for e in tally.episodes)  # blocked stays blocked
    assert figures["normal_calls"] > 20_000
    assert figures["normal_allowed_share"] >= 0.999, figures["normal_outcomes"]
    assert figures["release_route_calls"] > 0  # releases did start calling new routes
    assert all(figures["targets"].values())

    # every call that reached the risk decision was recorded like any other decision
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        stored = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        blocked_paths = {
            row[0]
            for row in db.execute(
                "SELECT json_extract(event, '$.data.path') FROM decisions WHERE outcome = 'block'"
            )
        }
    assert stored == len(scene.events)
    assert "/admin/users" in blocked_paths or any("/internal/" in p for p in blocked_paths)


def test_the_measurement_fails_without_the_lateral_movement_rule(tmp_path: Path) -> None:
    pack = parse_pack_text(default_pack_text(), source="default")
    weakened = copy.deepcopy(pack)
    weakened["rules"] = [r for r in pack["rules"] if r["id"] != "API_SENSITIVE_NEW_ROUTE"]
    scene = simulate_gateway(days=3, services=6, seed=3)
    result = asyncio.run(
        replay(scene.events, scene.labels, scene.gateway_config(), tmp_path, pack=weakened)
    )
    figures = evaluate(scene.events, scene.labels, result).summary()
    assert figures["episodes"] >= 2
    assert not figures["targets"]["lateral_movement_blocked_within_5"], figures
