"""The tree shows the architecture (docs/architecture.md): runner/ in wings that import only the
wings below them, built-in plugins that use the public API only, no import cycle, no long module."""

from __future__ import annotations

import ast
from pathlib import Path

import runner

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450

# What each wing of runner/ may import at module level. "api" is the public API at the top of
# runner/: __init__.py (the door plugins use), components/, hookspecs, options, errors, testing.
WINGS: dict[str, set[str]] = {
    "api": set(),
    "plugins": {"api"},
    "recipe": {"api", "plugins"},
    "toolkit": {"api"},
    "storage": {"api"},
    "distributed": {"api", "recipe", "storage"},
    "evaluation": {"api", "toolkit", "storage"},
    "report": {"api", "toolkit", "storage", "evaluation"},
    "pipeline": {"api", "plugins", "recipe", "toolkit", "storage", "distributed", "evaluation", "report"},
}
WINGS["sweep"] = WINGS["pipeline"] | {"pipeline"}
WINGS["cli"] = set(WINGS) | {"builtin plugins"}
API_MODULES = {"__init__.py", "components", "hookspecs.py", "options.py", "errors.py", "testing.py"}
# Modules a plugin (built-in or third-party, and the examples in docs/) may import from runner.
PUBLIC = {"runner", "runner.testing"}


def python_files(*folders: str) -> list[Path]:
    found = []
    for folder in folders:
        found += [p for p in (ROOT / folder).rglob("*.py") if "build" not in p.relative_to(ROOT).parts]
    return sorted(found)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in python_files("runner", "plugins")}


def imports(path: Path, module_level: bool) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of each import; module level includes `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    if module_level:
        nodes, found = list(tree.body), []
        for node in nodes:
            if isinstance(node, ast.If | ast.Try):
                nodes += node.body + node.orelse + getattr(node, "finalbody", [])
            found.append(node)
    else:
        found = list(ast.walk(tree))
    out = []
    for node in found:
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def targets(module: str, names: list[str]) -> list[str]:
    """The project modules an import statement loads: `from runner.cli import commands` loads
    runner.cli.commands, `from runner.errors import clip` loads runner.errors."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return found or ([module] if module in MODULES else [])


def wing(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "plugins":
        return "builtin plugins"
    if len(parts) > 1 and (ROOT / "runner" / parts[1]).is_dir() and parts[1] != "components":
        return parts[1]
    return "api"


def test_the_top_of_runner_is_the_public_api_and_the_wings():
    entries = {p.name for p in (ROOT / "runner").iterdir() if p.name not in ("__pycache__", "_recipes")}
    assert entries == API_MODULES | set(WINGS) - {"api"}
    for name in set(WINGS) - {"api"}:
        doc = ast.get_docstring(ast.parse((ROOT / "runner" / name / "__init__.py").read_text()))
        assert doc and "import" in doc, f"runner/{name}/__init__.py must say what the wing owns and may import"


def test_no_module_is_longer_than_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along their seams: {long}"


def test_plugins_and_examples_use_the_public_api_only():
    exported = set(runner.__all__)
    wrong = []
    for path in python_files("plugins", "docs/examples"):
        for line, module, names in imports(path, module_level=False):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.startswith("runner.") and module not in PUBLIC:
                wrong.append(f"{where} imports {module}, which is not public")
            elif module == "runner" and set(names) - exported:
                wrong.append(f"{where} imports {sorted(set(names) - exported)} from runner, not in runner.__all__")
    assert not wrong, "\n".join(wrong)


def test_wings_import_only_the_wings_below_them():
    wrong = []
    for module, path in MODULES.items():
        ours = wing(module)
        if module == "runner" or ours == "builtin plugins":
            continue  # the door re-exports from the wings; plugins are checked above
        for line, imported, names in imports(path, module_level=True):
            for target in targets(imported, names):
                theirs = wing(target)
                if theirs != ours and theirs not in WINGS[ours] and target != "runner":
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {ours} imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {
        module: {t for _, imported, names in imports(path, module_level=True) for t in targets(imported, names)}
        for module, path in MODULES.items()
    }
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
