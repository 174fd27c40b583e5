"""The import contracts of the package: layers, no circle, no private names across packages.

Read from the source with ``ast`` (every ``import`` statement, also inside functions, and every
string naming one of our modules, as lazy imports and plug-in tables do), so a dependency cannot
hide in a function body. Imports under ``if TYPE_CHECKING:`` are type annotations, not run, and are
left out. Top to bottom, a package may import only from its own layer's package or lower layers::

    the package's __init__                  the public names, lazily (``import avsal_deploy``)
    cli | api                               the command line, the public Python API
    research                                experiments (a source checkout only)
    scoring | serving | roi | bench | training
    pipeline
    engine
    export | outputs
    models | data | losses
    specs | windows | diffusion | metrics
    config
    errors | interrupt | _version | _lazy   leaves

Packages of one layer do not import each other, except :data:`SIBLINGS` (serving encodes the
stream's QP offsets with roi's mapping).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "avsal_deploy"

LAYERS: list[set[str]] = [
    {"(root)"},
    {"cli", "api"},
    {"research"},
    {"scoring", "serving", "roi", "bench", "training"},
    {"pipeline"},
    {"engine"},
    {"export", "outputs"},
    {"models", "data", "losses"},
    {"specs", "windows", "diffusion", "metrics"},
    {"config"},
    {"errors", "interrupt", "_version", "_lazy"},
]
#: Imports between packages of one layer that the contract allows.
SIBLINGS = {("serving", "roi")}
#: Module circles inside the lower layers, which this contract leaves as they are: the official
#: families' modules and the model builder refer to each other, and the official DiffSal audio
#: reuses the log-mel helpers of data.audio, which dispatches to it.
KNOWN_CYCLES = [
    {
        "avsal_deploy.models.build",
        "avsal_deploy.models.official",
        "avsal_deploy.models.official.diffsal",
        "avsal_deploy.models.official.tased",
        "avsal_deploy.models.official.vinet",
        "avsal_deploy.models.official.vinet_s",
    },
    {"avsal_deploy.data.audio", "avsal_deploy.data.diffsal_audio"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts or "templates" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        ):
            for child in node.body:
                hidden |= {id(n) for n in ast.walk(child)}
    return hidden


def _resolve(module: str, node: ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) per alias of a ``from ... import``."""
    if node.level:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        full = f"{prefix}.{alias.name}"
        out.append((full, None) if full in MODULES else (prefix, alias.name))
    return out


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module -> modules it imports; and (importer, module, private name) for ``_name`` imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    private: list[tuple[str, str, str]] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        hidden = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            found: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                found = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found = _resolve(module, node)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value.partition(":")[0]
                found = [(name, None)] if name in MODULES else []
            for target, name in found:
                if not target.startswith("avsal_deploy"):
                    continue
                resolved = _known(target)
                if resolved is None or resolved == module:
                    continue
                edges[module].add(resolved)
                if name is not None and name.startswith("_") and not name.startswith("__"):
                    private.append((module, resolved, name))
    return edges, private


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"package {package!r} is in no layer of the contract: add it to LAYERS")


def test_every_package_has_a_layer() -> None:
    for module in MODULES:
        _layer(_package(module))


def test_no_import_from_a_higher_layer_or_a_sibling() -> None:
    edges, _ = import_graph()
    wrong = []
    for module, targets in edges.items():
        a = _package(module)
        for target in targets:
            b = _package(target)
            if a == b:
                continue
            if _layer(b) < _layer(a) or (_layer(b) == _layer(a) and (a, b) not in SIBLINGS):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for start in MODULES:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_no_circle_between_packages() -> None:
    edges, _ = import_graph()
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in edges.items():
        packages[_package(module)] |= {_package(t) for t in targets} - {_package(module)}
    seen: set[str] = set()
    path: list[str] = []

    def visit(package: str) -> None:
        assert package not in path, "circle: " + " -> ".join([*path[path.index(package) :], package])
        if package in seen:
            return
        path.append(package)
        for other in sorted(packages.get(package, ())):
            visit(other)
        path.pop()
        seen.add(package)

    for package in sorted(packages):
        visit(package)


def test_no_circle_between_modules() -> None:
    edges, _ = import_graph()
    cycles = [c for c in _cycles(edges) if c not in KNOWN_CYCLES]
    assert not cycles, "module circles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_no_private_name_imported_across_packages() -> None:
    _, private = import_graph()
    wrong = [f"{m} imports {t}.{n}" for m, t, n in private if _package(m) != _package(t)]
    assert not wrong, "\n".join(wrong)
