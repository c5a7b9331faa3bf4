"""The package's layout rules: imports run one way (no cycles), no module reaches into another's private
names, modules stay small, and the public verbs are importable from the top level."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"energysplit": ROOT / "energysplit", "energysplit_estimators": ROOT / "estimators"}
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages (a package is its __init__)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement, at any depth of the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            out.append((module, names))
            # "from . import fast" imports the submodule fast
            out += [(f"{module}.{n}", []) for n in names if f"{module}.{n}" in MODULES]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for module, _ in _imports(name, path):
            while module and module not in MODULES:  # "energysplit.graph.trace.build_inventory" style
                module = module.rpartition(".")[0]
            if module and module != name:
                edges.add(module)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_inside_the_package():
    """Every import counts, a lazy one inside a function too: the layers import one way only."""
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{name} imports {n} from {module}"
                 for name, path in MODULES.items() for module, names in _imports(name, path)
                 if module in MODULES and module != name for n in names
                 if n.startswith("_") and not n.startswith("__")]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (> {MAX_LINES}): split it by concept"


# The pipeline's order: a package may import from packages on earlier levels (and from itself), never from a
# later level or from another package on its own level.
LEVELS = [
    {"errors"},
    {"energysplit", "_registry", "_io", "_device"},  # infrastructure (the package __init__ imports nothing eagerly)
    {"zoo"},
    {"graph"},
    {"cost"},
    {"energysplit_estimators"},  # the built-in plugins: they implement cost's protocol
    {"training"},
    {"pruning", "splitting"},
    {"methods"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[0] if parts[0] != "energysplit" or len(parts) == 1 else parts[1]


def test_imports_follow_the_pipeline():
    level = {name: i for i, names in enumerate(LEVELS) for name in names}
    assert set(map(_package, MODULES)) <= set(level), "every package has a level in LEVELS"
    offenders = sorted(f"{a} imports {b}" for a, edges in _graph().items() for b in edges
                       if _package(a) != _package(b) and level[_package(b)] >= level[_package(a)])
    assert not offenders, "\n".join(offenders)


def test_setup_cfg_installs_every_package():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages == listed, f"setup.cfg [options] packages must list exactly {sorted(packages)}"
