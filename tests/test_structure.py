"""The package's shape, as the team's rules state it: every module imports, no import circle
among hvdlm's modules, no module over 400 lines, Horovod imported only by the distributed package and
the benchmarks, and the benchmarks never reaching up to the command line. Read from the source with ast (imports inside functions count too: a lazy import
hides a circle from Python, not from the reader)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hvdlm"
MAX_LINES = 400
HOROVOD_ALLOWED = ("hvdlm.distributed", "hvdlm.bench")  # every Horovod call lives in these packages


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(name: str) -> set[str]:
    """The modules ``name`` imports: every ``import``/``from ... import`` anywhere in it, resolved
    to a module (``from hvdlm.a import b`` is hvdlm.a.b when that is a module, else hvdlm.a)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return found


GRAPH = {name: sorted(m for m in imports(name) if m in MODULES and m != name) for name in MODULES}


def cycles() -> list[list[str]]:
    """Import circles: one for each edge that closes a circle in a depth-first walk (none: a DAG)."""
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in GRAPH[m]:
            if state.get(n) == "open":
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in GRAPH:
        if m not in state:
            visit(m)
    return found


def test_the_walk_sees_the_imports_it_should():
    """The checker itself: known edges are found (absolute, from-package and lazy imports)."""
    assert "hvdlm.watchdog.messages" in GRAPH["hvdlm.watchdog.decision"]
    assert "hvdlm.bench.allreduce.sweep" in GRAPH["hvdlm.bench.allreduce"]
    assert "hvdlm.distributed" in GRAPH["hvdlm.preflight"]  # inside a function
    assert "horovod.torch" in imports("hvdlm.distributed.world")
    assert "hvdlm.distributed.world" in GRAPH["hvdlm.distributed"]  # a package's __init__


def test_no_import_circle():
    found = cycles()
    assert not found, "import circles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


def test_no_module_over_400_lines():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_horovod_is_imported_only_by_distributed_and_the_benchmarks():
    users = sorted(name for name in MODULES if not name.startswith(HOROVOD_ALLOWED)
                   and any(m == "horovod" or m.startswith("horovod.") for m in imports(name)))
    assert not users, f"Horovod imported outside {HOROVOD_ALLOWED}: {users}"


def test_the_benchmarks_do_not_import_the_command_line():
    """Library code (bench/) does not reach up to the CLI that calls it."""
    users = sorted(name for name in MODULES if name.startswith("hvdlm.bench") and "hvdlm.cli" in GRAPH[name])
    assert not users, f"bench modules importing hvdlm.cli: {users}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
    importlib.import_module(name)


def reachable(start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others (lazy imports included), and the
    external packages among them (``horovod.torch``)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        for m in imports(name) if name in MODULES else ():
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_plan_reaches_no_horovod_through_any_import():
    """``hvdlm plan`` is arithmetic: no module it imports, however indirectly, imports Horovod."""
    for name in [m for m in MODULES if m.startswith("hvdlm.plan")] + ["hvdlm.sync"]:
        found = sorted(m for m in reachable(name) if m.split(".")[0] == "horovod" or m.startswith("hvdlm.distributed"))
        assert not found, f"{name} reaches {found}"


def test_the_transitive_walk_sees_horovod_where_it_is():
    assert "horovod.torch" in reachable("hvdlm.train")
    assert "hvdlm.distributed.world" in reachable("hvdlm.sync.build")


def test_plan_runs_with_horovod_unimportable(tmp_path):
    """The real command, in a process where importing Horovod fails: it plans all the same."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['horovod'] = None\n"
            "from hvdlm.cli import main\n"
            "main(['plan', '--preset', 'gpt2', '--gpu', 'A100', '--ranks', '16', '--ranks_per_host', '8'])\n"
            "assert not [m for m, v in sys.modules.items()\n"
            "            if v is not None and m.startswith(('horovod', 'hvdlm.distributed'))]")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and "hvdlm: fastest within" in run.stdout, run.stdout + run.stderr


SYNC_MODE_NAMES = {"every_step", "local_sgd", "diloco", "powersgd"}


def test_no_sync_mode_name_is_compared_outside_sync():
    """Everything outside ``sync/`` asks a ``Mode`` (periodic? lr scaling? cycle? kind?), never its
    name; ``config.py`` validates the flags' combinations, the one other place that may."""
    found = []
    for name, path in MODULES.items():
        if name.startswith("hvdlm.sync") or name == "hvdlm.config":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
                if consts & SYNC_MODE_NAMES:
                    found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "sync modes compared by name outside sync/:\n" + "\n".join(found)
