"""The design card's layout: data flows one way, recipes -> adapters -> energy_guidance, and no
module imports itself back through others (every import counts, those inside functions too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "energy_guidance": "energy_guidance",
    "adapters": "energy_guidance.adapters",
    "recipes": "energy_guidance.recipes",
}


def _modules() -> dict[str, Path]:
    """Installed module name -> file, for every module of the three folders."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool) -> set[str]:
    """The modules that ``name`` imports, relative imports resolved."""
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # a submodule, if it is one
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m in _imports(name, path, is_package) if m in modules and m != name}
        for name, (path, is_package) in modules.items()
    }


def test_data_flows_one_way():
    for name, imported in _graph().items():
        if not name.startswith(("energy_guidance.adapters", "energy_guidance.recipes")):
            bad = {
                m for m in imported if m.startswith(("energy_guidance.adapters", "energy_guidance.recipes"))
            }
            assert not bad, f"the core module {name} imports {bad}"
        if name.startswith("energy_guidance.adapters"):
            bad = {m for m in imported if m.startswith("energy_guidance.recipes")}
            assert not bad, f"the adapter {name} imports the recipes' {bad}"


def test_no_import_cycle_in_adapters_and_recipes():
    """Depth-first search for a cycle among the adapters' and recipes' modules (the core's own
    package __init__ re-exports its modules, a structure this test leaves to the core)."""
    graph = {
        name: {m for m in imported if m.startswith(("energy_guidance.adapters", "energy_guidance.recipes"))}
        for name, imported in _graph().items()
        if name.startswith(("energy_guidance.adapters", "energy_guidance.recipes"))
    }
    # a package's __init__ importing its own modules is not a cycle
    for package in ("energy_guidance.adapters", "energy_guidance.recipes"):
        graph[package] = set()
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_generic_top_level_package_is_imported():
    for name, (path, is_package) in _modules().items():
        bad = {
            m
            for m in _imports(name, path, is_package)
            if m.split(".")[0] in ("recipes", "adapters", "critics")
        }
        assert not bad, (
            f"{name} imports {bad} by a top-level name; use energy_guidance.<...> or a relative import"
        )
