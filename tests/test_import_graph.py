"""The package's import contracts, read from the source (every import, at any depth in a module).

Layers, lowest first: the root (the version string only), then ``engine`` and ``io`` side by side
(the engine is pure PyTorch: it imports nothing of the package; io imports only io), ``data``,
``run``, ``evaluation``, ``cli``. No module imports one of a higher layer, and no two modules
import each other, however indirectly.
"""
import ast
from pathlib import Path

import mempipe

PACKAGE = Path(mempipe.__file__).parent
LAYER = {"mempipe": 0, "engine": 1, "io": 1, "data": 2, "run": 3, "evaluation": 4, "cli": 5}
ALONE = {"engine": {"engine"}, "io": {"io", "mempipe"}}   # what each may import, besides itself


def module_name(path: Path, root: Path) -> str:
    parts = ["mempipe", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (``from pkg import submodule`` counts the submodule)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else "")
                target = ".".join(p for p in (base, node.module or "") if p)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    graph[name].add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names)
        graph[name] = {t for t in graph[name] if t in modules and t != name}
    return graph


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "mempipe"


def upward_imports(graph) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                  if LAYER[layer_of(t)] > LAYER[layer_of(m)]
                  or (layer_of(m) in ALONE and layer_of(t) not in ALONE[layer_of(m)]))


def cycles(graph) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def test_no_module_imports_a_higher_layer_and_the_engine_and_io_stand_alone():
    graph = import_graph()
    assert len(graph) > 30 and graph["mempipe.run.driver"] >= {"mempipe.run.windows", "mempipe.run.fit"}
    assert upward_imports(graph) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves, on a copy of the package with one import added at each place."""
    import shutil

    copy = tmp_path / "mempipe"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "io" / "locks.py").write_text((copy / "io" / "locks.py").read_text() + "\nfrom ..run import driver\n")
    (copy / "run" / "samples.py").write_text((copy / "run" / "samples.py").read_text()
                                             + "\ndef late():\n    from .windows import Writer\n")
    graph = import_graph(copy)
    assert upward_imports(graph) == ["mempipe.io.locks -> mempipe.run.driver"]
    assert any("mempipe.run.samples" in c and "mempipe.run.windows" in c for c in cycles(graph))


MAX_PARAMETERS = 8


def parameter_counts(root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(parameters, 'module:line name') for every function in the package, self and cls not counted."""
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs] + [p.arg for p in (a.vararg, a.kwarg) if p]
                count = len([n for n in names if n not in ("self", "cls")])
                found.append((count, f"{module_name(path, root)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def test_no_function_takes_more_than_eight_parameters():
    counts = parameter_counts()
    assert counts and [f"{n} {name}" for n, name in counts if n > MAX_PARAMETERS] == []
