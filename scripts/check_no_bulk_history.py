#!/usr/bin/env python3
"""CI check: no bulk write that skips simple-history on a versioned model.

``QuerySet.update()``, ``bulk_update()`` and ``bulk_create()`` write rows
without ``save()``, so simple-history records nothing and the reason guard
never runs. This scans the apps' Python source (AST, no Django needed) for
those calls on a queryset rooted at a versioned model's manager, e.g.
``Automation.objects.filter(...).update(...)`` or ``RiskLimit.objects.bulk_create(...)``.
A line may opt out with ``# history-ok: <why>`` (for a counter-only update).
Exit status 1 lists every offending call as ``path:line``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

VERSIONED = {"Automation", "RiskLimit", "KillSwitch", "BrokerAccount", "RoleAssignment"}
BULK = {"update", "bulk_update", "bulk_create", "update_or_create"}
# update_or_create saves through save(); it is listed so the check stays
# strict only for the methods that bypass save. Remove it from BULK below.
BULK.discard("update_or_create")
APPS = ("trading", "audit", "ingestion", "automations", "risk", "execution")
SKIP_PARTS = {"migrations", "tests", ".venv"}


def _root_name(node: ast.AST) -> str | None:
    """The name a call chain starts from: ``Automation`` in ``Automation.objects.filter().update()``."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _chain_has_manager(node: ast.AST) -> bool:
    while isinstance(node, ast.Call | ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute) and node.attr in ("objects", "_default_manager", "_base_manager"):
            return True
        node = node.func if isinstance(node, ast.Call) else node.value
    return False


def offences(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in BULK):
            continue
        receiver = node.func.value
        if _root_name(receiver) in VERSIONED and _chain_has_manager(receiver):
            line = lines[node.lineno - 1] if node.lineno <= len(lines) else ""
            if "history-ok:" in line:
                continue
            found.append(f"{path}:{node.lineno}: {_root_name(receiver)} ... .{node.func.attr}() skips simple-history")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems: list[str] = []
    for app in APPS:
        for path in sorted((root / app).rglob("*.py")):
            if SKIP_PARTS & set(path.relative_to(root).parts):
                continue
            problems.extend(offences(path))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} bulk write(s) on versioned models: use save() with a reason (audit.history.acting_as).")
        return 1
    print("no bulk writes on versioned models")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
