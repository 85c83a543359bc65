"""The pure engine imports no adapter, web, database, cache or HTTP-client module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "src" / "riskguard" / "engine"
FORBIDDEN = ("fastapi", "starlette", "sqlalchemy", "redis", "httpx", "asyncpg", "uvicorn")
FORBIDDEN_OWN = ("riskguard.adapters", "riskguard.services", "riskguard.wiring", "riskguard.cli")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                package = ["riskguard", *path.relative_to(ENGINE.parent).parent.parts]
                base = package[: len(package) - node.level + 1]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module:
                names.add(node.module)
    return names


def test_engine_sources_import_nothing_forbidden() -> None:
    files = sorted(ENGINE.rglob("*.py"))
    assert files, "engine sources not found"
    offending = {
        f"{path.relative_to(ENGINE)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN_OWN)
    }
    assert not offending


def test_importing_the_engine_loads_no_forbidden_module() -> None:
    code = (
        "import sys, riskguard.engine.decide, riskguard.engine.rules, riskguard.engine.state;"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}"
        f" or m.startswith({FORBIDDEN_OWN!r})];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
