"""The house keeps its rooms: every module has its test file where the tree says (tests/ mirrors proxy/
and policies/, as mitmproxy's test/filename_matching.py checks), imports only go down the list of parts
in proxy/__init__.py, proxy/ reaches policies/ only in the composition root, and no import circles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lowest first: a part may import only the parts before it (proxy/__init__.py says what each owns)
ORDER = ("errors", "tasks", "config", "db", "directory", "ledger", "ops", "export", "gateway", "policies", "api",
         "caller", "admin", "console", "app", "cli")
# declarations only (dataclasses, protocols, SQL text): their behaviour is tested through what implements them
DECLARATIONS = {
    "proxy/directory/types.py": "dataclasses and the Directory protocol (tests/directory/test_pg.py)",
    "proxy/directory/sql.py": "the directory's SQL text (tests/directory/test_pg.py runs it)",
    "proxy/ledger/types.py": "dataclasses and the Ledger protocol (tests/ledger/test_pg.py)",
    "proxy/api/stores.py": "the store protocols the routes depend on (tests/caller, tests/admin)",
    "proxy/admin/deps.py": "the admin handlers' shared dependencies (tests/admin/test_routes.py)",
    "proxy/console/deps.py": "the console pages' shared dependencies (tests/console/test_routes.py)",
}


def modules() -> list[Path]:
    found = [*(ROOT / "proxy").rglob("*.py"), *(ROOT / "policies").glob("*.py")]
    return sorted(p for p in found if p.name != "__init__.py")


def part(module: str) -> str:
    pieces = module.split(".")
    if pieces[0] == "policies":
        return "policies"
    return pieces[1] if len(pieces) > 1 else "proxy"


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("proxy", "policies")}


def dotted(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def test_every_module_has_its_test_file() -> None:
    missing = []
    for path in modules():
        rel = path.relative_to(ROOT)
        if str(rel) in DECLARATIONS:
            continue
        folder = rel.parent.relative_to("proxy") if rel.parts[0] == "proxy" else rel.parent
        expected = ROOT / "tests" / folder / f"test_{path.stem}.py"
        if not expected.exists():
            missing.append(f"{rel} -> {expected.relative_to(ROOT)}")
    assert missing == []
    assert all((ROOT / p).exists() for p in DECLARATIONS)


def test_imports_only_go_down_the_list_of_parts() -> None:
    upward = []
    for path in [*modules(), *ROOT.glob("proxy/*/__init__.py")]:
        mine = part(dotted(path))
        for target in imports(path):
            theirs = part(target)
            if theirs not in ORDER or theirs == mine:
                continue
            if ORDER.index(theirs) > ORDER.index(mine):
                upward.append(f"{dotted(path)} -> {target}")
            if theirs == "policies" and mine != "app":
                upward.append(f"{dotted(path)} -> {target} (only the composition root builds the chain)")
    assert upward == []


def test_no_import_circles() -> None:
    graph: dict[str, set[str]] = {}
    paths = [*modules(), *(ROOT / "proxy").rglob("__init__.py"), ROOT / "policies" / "__init__.py"]
    names = {dotted(p) for p in paths}
    for path in paths:
        graph[dotted(path)] = {t for t in imports(path) if t in names and t != dotted(path)}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in trail:
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, [*trail, nxt], done)
        done.add(node)

    finished: set[str] = set()
    for start in sorted(graph):
        if start not in finished:
            visit(start, [start], finished)
    assert circles == []
