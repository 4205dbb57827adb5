"""The layering holds: adapters call core, roles meet only through queues, and database
queries live in core's repository modules, never in routes, pages or the command line."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the packages it may never import (roles meet through queues; adapters use core).
FORBIDDEN = {
    "core": {"api", "web", "cli", "builder", "evaluator", "scheduler"},
    "metrics": {"core", "api", "web", "cli", "builder", "evaluator"},
    "sandbox": {"api", "web", "cli", "builder", "evaluator"},
    "builder": {"evaluator", "api", "web", "cli"},
    "evaluator": {"builder", "api", "web", "cli"},
    "scheduler": {"api", "web", "cli", "builder", "evaluator"},
    "web": {"api", "cli", "builder", "evaluator"},
    "api": {"cli", "builder", "evaluator", "scheduler"},
}
# Adapters may name SQL types and parse URLs, but never build a query themselves.
QUERY_FREE = ("api", "web", "cli")
QUERY_NAMES_ALLOWED = {"sqlalchemy.engine", "sqlalchemy.ext.asyncio"}


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_no_package_imports_what_the_layering_forbids() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for package, never in FORBIDDEN.items()
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in imports(path)
        if name.split(".")[0] in never
    ]
    assert bad == []


def test_routes_pages_and_the_cli_hold_no_database_queries() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for package in QUERY_FREE
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in imports(path)
        if name.split(".")[0] in ("sqlalchemy", "sqlmodel") and name not in QUERY_NAMES_ALLOWED
    ]
    assert bad == []


def test_the_check_notices_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import evaluator.worker\nfrom sqlalchemy import select\n")
    assert [name for _, name in imports(module)] == ["evaluator.worker", "sqlalchemy"]
