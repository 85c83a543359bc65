"""The command line, run as a user runs it: a real process, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from riskguard.rulefile import default_pack_text

GOOD = {
    "event_id": "p1",
    "type": "transaction",
    "occurred_at": "2026-11-21T10:15:00Z",
    "data": {"account_id": "a", "counterparty_id": "c", "amount": 10, "currency": "EUR"},
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riskguard", *args], capture_output=True, text=True, timeout=120
    )


def test_score_writes_one_decision_per_good_line_and_reports_bad_ones(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    sanctioned = {**GOOD, "event_id": "p3"}
    sanctioned["data"] = {**GOOD["data"], "counterparty_country": "KP"}
    events.write_text(
        "\n".join(
            [
                json.dumps(GOOD),
                "{not json",
                json.dumps({**GOOD, "event_id": "p2", "data": {"amount": 1}}),
                json.dumps(sanctioned),
            ]
        )
        + "\n"
    )
    out = tmp_path / "decisions.jsonl"
    result = run("score", str(events), "--out", str(out))
    assert result.returncode == 1
    assert "events.jsonl:2: rejected: not valid JSON" in result.stderr
    assert "events.jsonl:3: rejected: data.account_id: Field required" in result.stderr
    assert "Traceback" not in result.stderr
    decisions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["event_id"] for d in decisions] == ["p1", "p3"]
    assert decisions[0]["outcome"] == "allow"
    assert decisions[1]["outcome"] == "block"
    for d in decisions:
        assert {"event_id", "outcome", "score", "reasons", "explanation", "ruleset_version"} <= set(
            d
        )


def test_score_strict_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text("[]\n" + json.dumps(GOOD) + "\n")
    result = run("score", str(events), "--strict")
    assert result.returncode == 1
    assert "stopped at line 1" in result.stderr
    assert result.stdout == ""


def test_score_all_good_exits_zero_to_stdout(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps(GOOD) + "\n")
    result = run("score", str(events))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event_id"] == "p1"


def test_score_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run("score", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_rules_lint_accepts_the_default_pack(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(default_pack_text())
    result = run("rules", "lint", str(pack))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "53 rules" in result.stdout


def test_rules_lint_reports_every_problem_precisely(tmp_path: Path) -> None:
    doc = yaml.safe_load(default_pack_text())
    doc["rules"][0]["when"] = "features.account_tx.count_1m >= "
    doc["rules"][1]["when"] = "features.account_tx.count_5mm >= 6"
    pack = tmp_path / "bad.yaml"
    pack.write_text(yaml.safe_dump(doc))
    result = run("rules", "lint", str(pack))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"{pack}: rule TX_VELOCITY_COUNT_1M at position 32")
    assert lines[1].startswith(f"{pack}: rule TX_VELOCITY_COUNT_5M at position 0")
    assert "Traceback" not in result.stderr


def test_score_with_an_invalid_pack_exits_2(tmp_path: Path) -> None:
    pack = tmp_path / "bad.yaml"
    pack.write_text("name: [\n")
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps(GOOD) + "\n")
    result = run("score", str(events), "--rules", str(pack))
    assert result.returncode == 2
    assert "invalid rule pack" in result.stderr


def test_simulate_writes_events_and_labels(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    result = run("simulate", "--days", "3", "--users", "50", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    events = out.read_text().splitlines()
    labels = (tmp_path / "sim.labels.jsonl").read_text().splitlines()
    assert events
    assert labels
    ids = {json.loads(line)["event_id"] for line in events}
    assert all(json.loads(line)["event_id"] in ids for line in labels)


def test_unknown_option_is_a_usage_error() -> None:
    result = run("score", "--frobnicate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_demo_with_a_broken_pack_is_a_clear_error(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text("rules: [\n")
    result = run("demo", "--seconds", "1", "--rules", str(pack))
    assert result.returncode == 2
    assert "invalid rule pack" in result.stderr
    assert "Traceback" not in result.stderr


def test_score_rejects_bad_lines_one_by_one(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    good = json.dumps(GOOD).encode()
    second = json.dumps({**GOOD, "event_id": "p9"}).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    events.write_bytes(b"\xef\xbb\xbf" + good + b"\n\xff\xfe bad\n" + deep + b"\n" + second + b"\n")
    out = tmp_path / "d.jsonl"
    result = run("score", str(events), "--out", str(out))
    assert result.returncode == 1
    assert "e.jsonl:2: rejected: not UTF-8 text" in result.stderr
    assert "e.jsonl:3: rejected: not acceptable JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert [json.loads(x)["event_id"] for x in out.read_text().splitlines()] == ["p1", "p9"]


def test_score_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    events.write_text(json.dumps(GOOD) + "\n")
    result = run("score", str(events), "--out", str(events))
    assert result.returncode == 2
    assert "refusing to overwrite" in result.stderr
    assert json.loads(events.read_text())["event_id"] == "p1"


def test_rules_lint_of_an_unreadable_file_exits_2(tmp_path: Path) -> None:
    result = run("rules", "lint", str(tmp_path))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
