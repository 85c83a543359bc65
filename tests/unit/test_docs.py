"""Documentation that must stay true to the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reason_codes_doc_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_reason_codes.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = (ROOT / "docs" / "reason-codes.md").read_text("utf-8")
    assert committed == gen.render(), "run: python scripts/gen_reason_codes.py"


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text("utf-8")
    blocks = text.split("```")
    assert blocks[1].strip().splitlines() == ["make demo", "make test"]


def test_ci_runs_make_test_only() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / ".ci" / "run").read_text("utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[-1] == "make test"
