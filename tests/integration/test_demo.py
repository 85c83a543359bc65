"""``riskguard demo``: the service on the embedded default, fed over real HTTP, exits by itself."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from riskguard.rulefile import default_pack_text
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_demo_serves_decides_over_http_and_exits_by_itself(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(default_pack_text())
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "riskguard",
            "demo",
            "--seconds",
            "3",
            "--users",
            "60",
            "--days",
            "3",
            "--rules",
            str(pack),
            "--port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"http://127.0.0.1:{port}" in out
    assert "admin key:  rg_" in out
    assert "ingest key: rg_" in out
    assert "events decided over HTTP" in out
    database = tmp_path / ".riskguard-demo" / "demo.db"
    with sqlite3.connect(database) as db:
        stored = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        tenants = db.execute("SELECT name FROM tenants").fetchall()
    assert stored > 100, out[-2000:]
    assert tenants == [("demo",)]
