"""``riskguard demo``: the service on the embedded default, fed over real HTTP, then internal
services behind the gateway with one of them moving laterally; exits by itself."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from riskguard.rulefile import default_pack_text
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
SENSITIVE = ("/admin", "/internal/", "/keys", "credential", "export", "/secrets")


def test_demo_serves_decides_over_http_and_exits_by_itself(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(default_pack_text())
    port, gateway_port = free_port(), free_port()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "riskguard",
            "demo",
            "--seconds",
            "4",
            "--users",
            "60",
            "--days",
            "3",
            "--rules",
            str(pack),
            "--port",
            str(port),
            "--gateway-port",
            str(gateway_port),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"http://127.0.0.1:{port}" in out
    assert "admin key:  rg_" in out
    assert "ingest key: rg_" in out
    assert "events decided over HTTP" in out
    assert "\x1b[" not in out  # no terminal: plain text, no colour codes
    database = tmp_path / ".riskguard-demo" / "demo.db"
    with sqlite3.connect(database) as db:
        tenants = {name for (name,) in db.execute("SELECT name FROM tenants")}
        ids = dict(db.execute("SELECT name, id FROM tenants").fetchall())
        stored = db.execute(
            "SELECT count(*) FROM decisions WHERE tenant_id = ?", (ids["demo"],)
        ).fetchone()[0]
    assert stored > 100, out[-2000:]
    assert tenants == {"demo", "gateway"}

    # the gateway scene: real HTTP through the gateway, one service moving laterally
    assert f"http://127.0.0.1:{gateway_port}" in out
    assert "403 BLOCKED" in out
    summary = re.search(
        r"normal calls allowed: (\d+) of (\d+); lateral movement calls blocked: (\d+) of (\d+)",
        out,
    )
    assert summary is not None, out[-3000:]
    allowed, normal, blocked, lateral = map(int, summary.groups())
    assert normal >= 20
    assert allowed == normal
    assert lateral >= 3
    assert blocked == lateral
    compromised = re.search(r"lateral movement by (svc-[a-z-]+)", out)
    assert compromised is not None
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT occurred_at >= ?, json_extract(event, '$.data.service_id'),"
            " json_extract(event, '$.data.target'), json_extract(event, '$.data.method'),"
            " json_extract(event, '$.data.path'), outcome, reasons"
            " FROM decisions WHERE tenant_id = ?",
            (started, ids["gateway"]),
        ).fetchall()
    history = {(r[1], r[2], r[3], r[4]) for r in rows if not r[0]}  # the warm-up replay
    live = [r for r in rows if r[0]]
    assert len(history) > 20
    assert len(live) == normal + lateral  # every live call was decided and recorded
    # lateral movement: the compromised service's calls of routes it never called before
    moves = [r for r in live if r[1] == compromised.group(1) and r[1:5] not in history]
    assert len(moves) == lateral
    for row in moves:
        assert row[5] == "block", row
        assert "API_SENSITIVE_NEW_ROUTE" in [r["code"] for r in json.loads(row[6])]
        assert row[4].startswith("/admin") or any(s in row[4] for s in SENSITIVE[1:])
    assert {r[5] for r in live if r not in moves} == {"allow"}  # normal calls kept flowing
