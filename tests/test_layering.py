"""The layering of DESIGN §1, and no import cycles, read from the source with `ast`.

Every `import` counts: at module level, inside functions and under `if TYPE_CHECKING:` (a type-only
cycle is a cycle: a small protocol module breaks it). `from a import b` is an edge to the module `a.b`
when it is one, else to `a`. Rules are checked on what a module reaches through the project's own
modules, so an indirect import breaks them too; the message shows the chain.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("stages", "pipeline", "train", "llava_eval", "analysis", "llava_sweep", "benchmarks")
# package -> what no module of it may reach (project packages, or third-party top-level names)
FORBIDDEN = {
    "stages": {"pipeline", "train", "llava_eval", "analysis", "llava_sweep", "ray"},
    "pipeline": {"train", "llava_eval", "analysis", "llava_sweep"},
    "train": {"pipeline", "llava_eval", "analysis", "llava_sweep", "ray"},
    "llava_eval": {"pipeline", "analysis", "llava_sweep", "ray"},
    "analysis": {"pipeline", "train", "llava_eval", "llava_sweep", "ray"},
}

Graph = dict[str, tuple[set[str], set[str]]]  # module -> (project modules it imports, third-party top-level names)


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may name as modules (`from a import b`: `a.b`, then `a`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative: from the module's package
        package = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join([*package, *([base] if base else [])])
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> Graph:
    files = [p for package in packages for p in sorted((root / package).rglob("*.py"))]
    modules = {_module_name(root, p): p for p in files}
    graph: Graph = {}
    for name, path in modules.items():
        internal, external = set(), set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported(node, name, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):  # `from a import b`: the submodule a.b if it is one, else a
                found = [n for n in names[:-1] if n in modules] or [names[-1]]
            else:
                found = names
            for target in found:
                if target.split(".")[0] in packages:
                    internal.add(target if target in modules else _nearest_module(target, modules))
                elif target:
                    external.add(target.split(".")[0])
        internal.discard(name)  # `from pkg import x` inside pkg/__init__.py names itself
        graph[name] = (internal, external)
    return graph


def _nearest_module(name: str, modules: dict[str, Path]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def layering_violations(graph: Graph, forbidden: dict[str, set[str]] = FORBIDDEN) -> list[str]:
    """One line per (module, forbidden name) it reaches: the chain of imports that gets there."""
    out = []
    for start in sorted(graph):
        banned = forbidden.get(start.split(".")[0], set())
        if not banned:
            continue
        chains, seen, pending = {start: [start]}, {start}, [start]
        while pending:
            module = pending.pop(0)
            internal, external = graph.get(module, (set(), set()))
            for name in sorted(external & banned) + sorted(m for m in internal if m.split(".")[0] in banned):
                out.append(f"{start} reaches {name}: {' -> '.join([*chains[module], name])}")
            for nxt in sorted(internal - seen):
                if nxt.split(".")[0] not in banned:
                    seen.add(nxt)
                    chains[nxt] = [*chains[module], nxt]
                    pending.append(nxt)
    return sorted(set(out))


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, (set(), set()))[0]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_stages_train_eval_and_analysis_keep_to_their_layers():
    assert layering_violations(import_graph(REPO)) == []


def test_no_module_of_the_project_is_in_an_import_cycle():
    assert cycles(import_graph(REPO)) == []


def test_only_the_lmms_eval_adapter_imports_lmms_eval_and_nothing_imports_it():
    """lmms-eval is installed apart (.venv/lmms, pyproject's `lmms` extra): every other module imports without it."""
    graph = import_graph(REPO)
    assert [m for m, (_, external) in sorted(graph.items()) if "lmms_eval" in external] == ["llava_eval.lmms_adapter"]
    assert [m for m, (internal, _) in sorted(graph.items()) if "llava_eval.lmms_adapter" in internal] == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_checks_find_a_layer_violation_through_a_chain_and_a_type_only_cycle(tmp_path):
    _write(tmp_path, {
        "stages/__init__.py": "", "pipeline/__init__.py": "", "train/__init__.py": "", "analysis/__init__.py": "",
        "stages/a.py": "def f():\n    from stages import b\n",  # function-level
        "stages/b.py": "from pipeline.job import run\n",  # stages -> pipeline, reached by stages.a through stages.b
        "pipeline/job.py": "import ray\n",
        "train/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from train.y import Y\n",
        "train/y.py": "from . import x\n",  # relative
        "analysis/c.py": "import train.x\n",
    })
    graph = import_graph(tmp_path, ("stages", "pipeline", "train", "analysis"))
    found = layering_violations(graph)
    assert "stages.a reaches pipeline.job: stages.a -> stages.b -> pipeline.job" in found
    assert "stages.b reaches pipeline.job: stages.b -> pipeline.job" in found
    assert "analysis.c reaches train.x: analysis.c -> train.x" in found
    assert not any(line.startswith("pipeline.") for line in found)  # pipeline may import Ray
    assert cycles(graph) == [["train.x", "train.y"]]
