"""The package's import graph, read from the source (no import runs): no cycle, and dependencies point one way.

Every `import openrlhf_tapo...` / `from openrlhf_tapo... import ...` counts, at module level or inside a function (a
deferred import is still a dependency, and a cycle through one breaks as soon as someone moves it to the top).
docs/design.md's table says which part may import which; `MAY_IMPORT` is that table.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "openrlhf_tapo"

# part -> the parts (or single modules) of openrlhf_tapo it may import; a part is a top-level subpackage, or one of
# adapter's subpackages / modules. cli may import everything.
MAY_IMPORT = {
    "utils": set(),
    "algorithms": set(),  # torch and stdlib only: framework-free
    "search": {"utils"},
    "tools": {"search", "utils"},
    "agent": {"algorithms", "search", "tools", "utils"},
    "adapter.stage": {"agent", "algorithms", "search", "tools", "utils"},
    "adapter.seam": {"adapter.stage", "agent", "utils"},  # the seam installs the stage into OpenRLHF
    "adapter.checks": {"adapter.seam", "agent", "search", "tools", "utils"},
    "adapter.run_spec": {"adapter.stage", "algorithms"},
    "adapter.inprocess": {"adapter.stage", "adapter.seam", "adapter.run_spec", "agent", "algorithms", "utils"},
    "eval": {"agent", "utils", "task.tiny_model"},  # the tiny model's image-only processor, to load its checkpoints
    "sim": {"algorithms", "eval"},
    "task": {"adapter.inprocess", "adapter.run_spec", "agent", "algorithms", "eval", "search", "tools", "utils"},
    # the demo's and the study's orchestration, pools, reports, the Ray subprocess driver and the regime check's run
    # (cli/ parses, then calls); the regime check checks a user's model with the launcher's preflight and builds the
    # user's tools
    "runners": {
        "adapter.checks",
        "adapter.inprocess",
        "adapter.run_spec",
        "agent",
        "algorithms",
        "eval",
        "task",
        "tools",
        "utils",
    },
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the openrlhf_tapo modules it imports (`from P import name` counts as P.name when that is a module)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}  # a `__main__` block may import itself
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of `graph`: its strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def part_of(module: str) -> str:
    """The part of MAY_IMPORT a module belongs to (adapter's subpackages and modules are parts of their own)."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts[:1] == ["adapter"] else parts[0] if parts else ""


def violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        source = part_of(module)
        if source in ("", "cli", "adapter"):  # the package roots import nothing; cli may import everything
            continue
        allowed = MAY_IMPORT[source]
        for target in sorted(targets):
            dest = part_of(target)
            plain = target.removeprefix("openrlhf_tapo.")
            if dest != source and dest not in allowed and plain not in allowed:
                wrong.append(f"{module} imports {target} ({source} may import {sorted(allowed) or 'nothing of ours'})")
    return wrong


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_dependencies_point_one_way():
    assert violations(import_graph()) == []


def test_every_part_is_in_the_table():
    parts = {part_of(m) for m in import_graph()} - {"", "cli", "adapter"}
    assert parts == set(MAY_IMPORT)


# Module names shared by two modules, left as they are: each is its package's own (`from openrlhf_tapo.tools import
# ToolsConfig`), and renaming them would move most of the package's imports. A new module takes a name of its own.
SHARED_NAMES = {"base.py": {"search", "tools"}, "config.py": {"agent", "tools"}}


def test_no_two_modules_share_a_name():
    """A name says what a module is wherever it is read (a traceback, a grep, an import line)."""
    where: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            where.setdefault(path.name, set()).add(str(path.parent.relative_to(PACKAGE)))
    assert {name: parts for name, parts in where.items() if len(parts) > 1} == SHARED_NAMES


def test_importing_the_task_installs_no_import_stub():
    """The CUDA stubs are installed by the entry points that need them (utils/cuda_stubs.py), not by an import."""
    code = "import sys, openrlhf_tapo.task; print(sorted({'vllm', 'flash_attn'} & set(sys.modules)))"
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == "[]"


@pytest.fixture
def scratch(tmp_path):
    """A package laid out like ours, for checking that the checks catch what they are for."""
    root = tmp_path / "openrlhf_tapo"

    def write(module: str, source: str = "") -> None:
        path = root.joinpath(*module.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in path.relative_to(root).parents:  # every package on the way down has its __init__.py
            (root / folder / "__init__.py").touch()
        path.write_text(source)

    return root, write


def test_a_cycle_through_a_deferred_import_is_found(scratch):
    root, write = scratch
    write("adapter.seam.a", "from openrlhf_tapo.adapter.seam import b\n")
    write("adapter.seam.b", "def f():\n    from openrlhf_tapo.adapter.seam.a import g\n")
    write("adapter.seam.c", "import openrlhf_tapo.adapter.seam.a\n")
    assert cycles(import_graph(root)) == [["openrlhf_tapo.adapter.seam.a", "openrlhf_tapo.adapter.seam.b"]]


def test_an_import_against_the_direction_is_named(scratch):
    root, write = scratch
    write("cli.main", "from openrlhf_tapo.agent import x\n")
    write("agent.x", "def f():\n    from openrlhf_tapo.adapter.stage.loss import build\n")
    write("adapter.stage.loss", "from openrlhf_tapo.adapter.inprocess import loop\n")
    write("adapter.inprocess.loop", "from openrlhf_tapo.eval import runs\n")
    write("eval.runs", "from openrlhf_tapo.task.tiny_model import load\nfrom openrlhf_tapo.task import gates\n")
    write("task.tiny_model")
    write("task.gates")
    found = violations(import_graph(root))
    assert [line.split(" (")[0] for line in found] == [
        "openrlhf_tapo.adapter.inprocess.loop imports openrlhf_tapo.eval.runs",
        "openrlhf_tapo.adapter.stage.loss imports openrlhf_tapo.adapter.inprocess.loop",
        "openrlhf_tapo.agent.x imports openrlhf_tapo.adapter.stage.loss",
        "openrlhf_tapo.eval.runs imports openrlhf_tapo.task.gates",  # task.tiny_model is allowed, the rest is not
    ]
