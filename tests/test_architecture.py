"""The layering of DESIGN.md, read from the source: no import cycle except the stage process boundary
(stageproc -> cli), shared layers never import a method module, and no list of methods outside the registry.

Every `workbench.*` import counts, at module level or inside a function (a function-level import is still a
dependency, only a later one), `if TYPE_CHECKING:` ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

from workbench.config.methods import METHODS

PACKAGE = REPO / "workbench"
# The one allowed loop: a forked stage process runs the CLI (workbench.stageproc._child -> cli.main).
PROCESS_BOUNDARY = {("workbench.stageproc", "workbench.cli")}
# Who may import the methods package: the runner loads a method by the name the registry gives it.
METHODS_PACKAGE = "workbench.methods"
LOADS_METHODS_BY_NAME = {"workbench.runner"}
REGISTRY = "workbench.config.methods"


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The known modules `module` imports anywhere in its file (`from a import b` counts a.b when b is a module)."""

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in map(resolve, targets) if t and t != module and t.startswith("workbench")}
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root)
    return {m: imported_modules(m, p, set(files)) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def without(graph: dict[str, set[str]], edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if (m, t) not in edges} for m, targets in graph.items()}


def method_importers(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, method module) for every module outside workbench/methods/ that imports one."""
    return sorted(
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if (t == METHODS_PACKAGE or t.startswith(METHODS_PACKAGE + "."))
        and not m.startswith(METHODS_PACKAGE + ".")
        and m != METHODS_PACKAGE
        and not (t == METHODS_PACKAGE and m in LOADS_METHODS_BY_NAME)
    )


def method_name_lists(root: Path = PACKAGE) -> list[str]:
    """`file:line` of every tuple, list, set or dict literal outside the registry that spells two or more method names."""
    names = set(METHODS)
    found = []
    for module, path in module_files(root).items():
        if module == REGISTRY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [k for k in node.keys if k is not None]
            else:
                continue
            spelled = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
            if len(spelled) >= 2:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {sorted(spelled)}")
    return found


# ----------------------------------------------------------------------------------------------
# The workbench itself


def test_no_import_cycle_but_the_stage_process_boundary():
    graph = import_graph()
    assert cycles(without(graph, PROCESS_BOUNDARY)) == []
    assert {(m, t) for m, ts in graph.items() for t in ts} >= PROCESS_BOUNDARY  # the boundary is still where it was


def test_shared_layers_never_import_a_method_module():
    assert method_importers(import_graph()) == []


def test_the_registry_imports_nothing_of_the_workbench_nor_a_library():
    graph = import_graph()
    assert graph[REGISTRY] == set()
    tree = ast.parse((PACKAGE / "config" / "methods.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "typing"}


def test_no_list_of_methods_outside_the_registry():
    assert method_name_lists() == []


# ----------------------------------------------------------------------------------------------
# The checks themselves: each fails on the defect it is for


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "workbench" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "workbench"


def test_a_function_level_or_relative_import_closes_a_cycle(tmp_path):
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from workbench import b\n",
            "b.py": "def f():\n    from workbench.c import g\n",
            "c.py": "from .a import x\n",
            "d.py": "import workbench.a\n",
        },
    )
    graph = import_graph(package)
    assert graph["workbench.c"] == {"workbench.a"} and graph["workbench.d"] == {"workbench.a"}
    assert cycles(graph) == [["workbench.a", "workbench.b", "workbench.c"]]
    assert cycles(without(graph, {("workbench.c", "workbench.a")})) == []


def test_a_shared_layer_importing_a_method_is_found(tmp_path):
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "runner.py": "from workbench.methods import get_method\n",
            "report.py": "from workbench.methods.dpo import x\n",
            "methods/__init__.py": "",
            "methods/dpo.py": "from workbench.methods import hf\n",
            "methods/hf.py": "",
        },
    )
    assert method_importers(import_graph(package)) == [("workbench.report", "workbench.methods.dpo")]


def test_a_hand_written_list_of_methods_is_found(tmp_path):
    package = write(tmp_path, {"__init__.py": "", "x.py": 'A = ("ppo", "grpo")\nB = {"dpo": 1, "other": 2}\nC = ["sft"]\n'})
    assert method_name_lists(package) == ["workbench/x.py:1 ['grpo', 'ppo']"]
