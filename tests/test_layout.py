"""The package's layout: the public names, and imports that run one way without private names across modules."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import lightning_classim

PACKAGE = Path(lightning_classim.__file__).parent


def test_lazy_table_and_all_agree_and_every_name_imports():
    table = set(lightning_classim._EXPORTS)
    assert set(lightning_classim.__all__) == table | {"__version__"}
    assert lightning_classim.__all__ == sorted(lightning_classim.__all__)
    for name in table:
        value = getattr(lightning_classim, name)
        home = importlib.import_module(lightning_classim._EXPORTS[name])
        assert getattr(home, name) is value, name
        assert name in getattr(home, "__all__", []), f"{name} is not in {home.__name__}.__all__"
    assert set(dir(lightning_classim)) >= table


def test_the_command_line_modules_start_without_torch():
    modules = "lightning_classim.runs, lightning_classim.report, lightning_classim.cli"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) of every import of this package in a file (``name`` None for ``import x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_classim"):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.startswith("lightning_classim")]
    return out


def test_no_private_name_is_imported_from_another_module():
    found = [
        (name, module, imported)
        for name, path in _modules().items()
        for module, imported in _imports(path)
        if imported and imported.startswith("_") and not imported.startswith("__") and module != name
    ]
    assert found == []


def test_imports_have_no_cycles():
    mods = _modules()
    graph = {name: {m for m, _ in _imports(path) if m in mods and m != name} for name, path in mods.items()}
    # a package's own __init__ re-exports its submodules; a submodule importing its package would close a cycle
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert cycles == []
