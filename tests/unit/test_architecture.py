"""The architecture, checked rather than hoped for (like the domain boundary test):

- dependencies flow one way: no import circle among the product's modules;
- one composition root: `bot.app` is imported by the command line only;
- commands are leaves: they import the command framework (and their own package),
  the domain, the ports and the standard library, nothing else;
- nothing is wired after construction: no assignment onto another object's attribute;
- transactions are typed: no `tx: Any` anywhere in the product.

Each check reads the source (no import of the product), and each is first tried on
a planted violation, so that a check that silently sees nothing fails too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bot", "bridge", "synapse_module")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool, *, typing_too: bool):
    """Every dotted name the module imports, function-local imports included; imports
    under `if TYPE_CHECKING:` only with `typing_too` (they never run)."""
    skipped: set[int] = set()
    if not typing_too:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skipped |= {id(n) for n in ast.walk(node)}
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield name
            for alias in node.names:  # `from bot.store import codec` imports a module
                yield f"{name}.{alias.name}"


def _imports(path: Path, module: str, *, typing_too: bool = False) -> set[str]:
    """The product modules `module` imports."""
    tree = ast.parse(path.read_text(), str(path))
    names = _imported_names(tree, module, path.name == "__init__.py", typing_too=typing_too)
    return {n for n in names if n in MODULES} - {module}


def _graph() -> dict[str, set[str]]:
    return {m: _imports(p, m) for m, p in MODULES.items()}


def _reexports_only(path: Path) -> bool:
    """A package `__init__` that only imports and lists names (docstring, imports,
    `__all__`): its submodules depending on it is Python's doing, not a design circle."""
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Assign) and all(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            continue
        return False
    return True


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# --------------------------------------------------------------------------- imports


def test_the_checks_see_the_product() -> None:
    graph = _graph()
    assert len(graph) > 60
    assert "bot.ports" in graph["bot.commands.room"]
    assert "bot.commands.admin.context" in graph["bot.commands.admin.agents"]
    assert "bot.app" in graph["bot.cli"]  # a function-local import
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_the_product_modules() -> None:
    graph = _graph()
    for module in list(graph):
        graph[module] = {
            m
            for m in graph[module]
            if not (module.startswith(m + ".") and _reexports_only(MODULES[m]))
        }
    assert _cycles(graph) == []


def test_the_app_is_imported_by_the_command_line_only() -> None:
    importers = {m for m, p in MODULES.items() if "bot.app" in _imports(p, m, typing_too=False)}
    assert importers == {"bot.cli"}


def _leaf_problems(module: str, path: Path) -> set[str]:
    """What a command module imports beyond the framework, its own package, the domain,
    the ports and the standard library (type-only imports count: they couple too)."""
    is_package = path.name == "__init__.py"
    own = module if is_package else module.rpartition(".")[0]
    if own == "bot.commands":
        own = ""  # a module of bot.commands itself: no package of its own

    def allowed(name: str) -> bool:
        if name in ("bot.commands.framework", "bot.ports", "bot.domain"):
            return True
        if name.startswith("bot.domain.") or (own and (name == own or name.startswith(own + "."))):
            return True
        # `from bot.commands import framework`: the enclosing packages only re-export.
        return name in ("bot", "bot.commands") and _reexports_only(MODULES[name])

    tree = ast.parse(path.read_text(), str(path))
    bad = set()
    for name in _imported_names(tree, module, is_package, typing_too=True):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top not in PACKAGES:
            bad.add(name)  # a third-party library
            continue
        # `from X import y`: y is a module (checked itself) or a name of X (X is checked).
        key = name if name in MODULES else name.rpartition(".")[0]
        if not allowed(key):
            bad.add(key)
    return bad


def test_commands_import_only_the_framework_the_domain_and_the_ports() -> None:
    commands = {m: p for m, p in MODULES.items() if m.startswith("bot.commands.")}
    assert "bot.commands.admin.agents" in commands and "bot.commands.room" in commands
    found = {m: sorted(bad) for m, p in commands.items() if (bad := _leaf_problems(m, p))}
    assert found == {}


def test_the_leaf_check_catches_a_service_a_library_and_a_typing_import(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from typing import TYPE_CHECKING\n"
        "import re\n"
        "from bot.domain.model import Agent\n"
        "from bot.ports import Clock\n"
        "from bot.commands.admin.context import ADMIN\n"
        "import nio\n"
        "if TYPE_CHECKING:\n"
        "    from bot.store.db import Store\n"
        "def f():\n"
        "    from bot.services import outbox\n"
    )
    assert _leaf_problems("bot.commands.admin.planted", planted) == {
        "nio",
        "bot.store.db",
        "bot.services",
        "bot.services.outbox",
    }


def test_the_ports_import_only_the_domain() -> None:
    deps = _imports(MODULES["bot.ports"], "bot.ports", typing_too=True)
    assert all(d.startswith("bot.domain") for d in deps), deps


# --------------------------------------------------------------------------- wiring

# Adapters change objects of the library they adapt, as that library asks; each is
# listed with its reason. Nothing else may assign onto an object it did not build.
ADAPTERS = {
    # nio keeps its state on its own objects (rooms, sessions, sync position, token).
    "bot/matrix/gateway.py": "nio's client and rooms",
    "bot/matrix/room_keys.py": "nio's group sessions and its olm machine",
    "bot/matrix/events.py": "nio's events (the decrypted flag)",
    # SQLAlchemy's unit of work: a loaded row is changed by assigning its columns.
    "bot/store/repository.py": "SQLAlchemy rows",
    "bot/store/admin_tx.py": "SQLAlchemy rows",
    "bot/store/work_tx.py": "SQLAlchemy rows",
    # The driver's connection is configured in SQLAlchemy's "connect" hook.
    "bot/store/db.py": "the DB-API connection, in the connect hook",
    "bot/store/ledger_reader.py": "the DB-API connection, in the connect hook",
    # A logging filter rewrites records, as the logging module's filters are meant to.
    "bot/log_privacy.py": "log records",
}


def _constructed_locals(func: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Locals the function builds itself (`x = Thing(...)`, a class it defines): still
    under construction there."""
    built: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.ClassDef):
            built.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            callee = node.value.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if name.lstrip("_")[:1].isupper():
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                built |= {t.id for t in targets if isinstance(t, ast.Name)}
    return built


def _foreign_assignments(source: str, label: str) -> Iterator[str]:
    """`x.attr = …` where x is neither self nor cls nor an object the function builds,
    and `self.x.attr = …` (an object it holds): wiring after construction."""
    tree = ast.parse(source, label)
    scopes: list[tuple[ast.AST, set[str]]] = [(tree, set())]
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes.append((func, _constructed_locals(func)))
    seen: set[int] = set()
    for scope, built in reversed(scopes):  # innermost functions first
        for node in ast.walk(scope):
            if id(node) in seen:
                continue
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            elif isinstance(node, (ast.Delete)):
                targets = list(node.targets)
            else:
                continue
            seen.add(id(node))
            for target in targets:
                elements = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
                for t in elements:
                    if not isinstance(t, ast.Attribute):
                        continue
                    base = t.value
                    if isinstance(base, ast.Name) and (
                        base.id in ("self", "cls") or base.id in built
                    ):
                        continue
                    yield f"{label}:{t.lineno}: {ast.unparse(t)}"


def test_nothing_is_assigned_onto_another_object_after_its_construction() -> None:
    found = []
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        if rel not in ADAPTERS:
            found += list(_foreign_assignments(path.read_text(), rel))
    assert found == []


def test_every_listed_adapter_exists_and_needs_its_exemption() -> None:
    for rel in ADAPTERS:
        assert list(_foreign_assignments((ROOT / rel).read_text(), rel)), rel


def test_the_assignment_check_catches_wiring_after_construction() -> None:
    source = (
        "def wire(app, outbox):\n"
        "    app.rooms.outbox = outbox\n"  # onto a part of what it was given
        "    rooms = app.rooms\n"
        "    rooms.email = None\n"  # a local it did not build
        "class A:\n"
        "    def __init__(self, b):\n"
        "        self.b = b\n"  # its own attribute: fine
        "        self.b.owner = self\n"  # onto an object it holds
        "def build():\n"
        "    report = Report()\n"
        "    report.count += 1\n"  # built here: still under construction
        "    return report\n"
    )
    found = sorted(line.split(": ", 1)[1] for line in _foreign_assignments(source, "x"))
    assert found == ["app.rooms.outbox", "rooms.email", "self.b.owner"]


# --------------------------------------------------------------------------- transactions


def _untyped_transactions(source: str, label: str) -> Iterator[str]:
    """A parameter named like a transaction (`tx`, `*_tx`) typed Any, object or nothing,
    and a `transaction()` that hands out an Any-typed one."""
    tree = ast.parse(source, label)
    loose = ("Any", "object", "typing.Any")
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and (node.arg == "tx" or node.arg.endswith("_tx")):
            annotation = ast.unparse(node.annotation) if node.annotation else "(none)"
            if annotation in (*loose, "(none)"):
                yield f"{label}:{node.lineno}: {node.arg}: {annotation}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            if node.name == "transaction" and "[Any]" in ast.unparse(node.returns):
                yield f"{label}:{node.lineno}: transaction() -> {ast.unparse(node.returns)}"
        elif (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) == "Transactions"
            and ast.unparse(node.slice) in loose
        ):
            yield f"{label}:{node.lineno}: {ast.unparse(node)}"


def test_no_transaction_is_typed_any() -> None:
    found = []
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        found += list(_untyped_transactions(path.read_text(), rel))
    assert found == []


def test_the_transaction_check_catches_any() -> None:
    source = (
        "async def a(tx: Any, x): ...\n"
        "async def b(tx, x): ...\n"
        "async def c(session_tx: object): ...\n"
        "async def d(tx: DemandeTx): ...\n"
        "class S:\n"
        "    def transaction(self) -> AbstractAsyncContextManager[Any]: ...\n"
        "store: Transactions[Any]\n"
    )
    assert len(list(_untyped_transactions(source, "x"))) == 5
