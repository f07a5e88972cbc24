"""The tree shows the architecture (docs/architecture.md): runner/ in wings that import only the
wings below them (at module level, and inside functions but for the lazy imports listed in LAZY),
built-in plugins that use the public API only, no import cycle (through any import, lazy ones
included), no long module."""

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
    "report": {"api", "recipe", "toolkit", "storage", "evaluation"},
    "pipeline": {"api", "plugins", "recipe", "toolkit", "storage", "distributed", "evaluation", "report"},
}
WINGS["running"] = WINGS["pipeline"] | {"pipeline"}  # the front door: loading, running, resuming, finished runs
WINGS["sweep"] = WINGS["running"] | {"running"}
WINGS["cli"] = set(WINGS) | {"builtin plugins"}
API_MODULES = {"__init__.py", "components", "hookspecs.py", "options.py", "errors.py", "testing.py"}
# Modules a plugin (built-in or third-party, and the examples in docs/) may import from runner.
PUBLIC = {"runner", "runner.testing"}
# Imports inside a function that reach past the wing table, (importing module, imported module):
# why each waits until it is called. Most keep torch (or the modules that load it) out of
# `finetune --help` and `validate`, which import the modules that hold them. An entry no import
# needs any more is an error too, so that the list stays the truth.
LAZY: dict[tuple[str, str], str] = {
    ("runner.components.training", "runner.toolkit.modeling"): "Strategy.load's default loads a model (torch)",
    ("runner.components.evaluation", "runner.evaluation.scoring"): "AuditSubject.log_likelihoods scores with torch",
    ("runner.plugins.manager", "plugins"): "the manager loads the built-in plugins that plugins.BUILTIN lists, "
    "when plugins load: no core module imports a plugin",
    ("runner.testing", "runner.toolkit.modeling"): "the test kit's tiny models and contracts build with torch",
    ("runner.testing", "runner.toolkit.collate"): "a contract test collates tensors (torch)",
    ("runner.testing", "runner.plugins.manager"): "the kit loads plugins: only inside a plugin's test",
    ("runner.testing", "runner.running.starting"): "the kit runs recipes through the front door, as the CLI does: "
    "only inside a plugin's test",
    ("runner.testing", "runner.running.finished"): "the kit loads a finished run's model (torch)",
}


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
    """The project modules an import statement loads: `from runner.cli import plan` loads
    runner.cli.plan, `from runner.errors import clip` loads runner.errors."""
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


def _breaks_the_table(module: str, target: str) -> bool:
    ours, theirs = wing(module), wing(target)
    return theirs != ours and theirs not in WINGS[ours] and target != "runner"


def test_wings_import_only_the_wings_below_them():
    wrong = []
    for module, path in MODULES.items():
        if module == "runner" or wing(module) == "builtin plugins":
            continue  # the door re-exports from the wings; plugins are checked above
        for line, imported, names in imports(path, module_level=True):
            for target in targets(imported, names):
                if _breaks_the_table(module, target):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {wing(module)} imports {target} ({wing(target)})")
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_keep_to_the_wings_but_for_the_listed_lazy_ones():
    wrong, used = [], set()
    for module, path in MODULES.items():
        if module == "runner" or wing(module) == "builtin plugins":
            continue
        for line, imported, names in imports(path, module_level=False):
            for target in targets(imported, names):
                if not _breaks_the_table(module, target):
                    continue
                if (module, target) in LAZY:
                    used.add((module, target))
                else:
                    where = f"{path.relative_to(ROOT)}:{line}"
                    wrong.append(f"{where}: {wing(module)} imports {target} ({wing(target)}) inside a function")
    stale = [f"LAZY lists {module} -> {target}, which no import needs" for module, target in set(LAZY) - used]
    assert not wrong + stale, "\n".join(wrong + stale)
    assert all(reason.strip() for reason in LAZY.values())


def test_no_import_cycle():
    """Through any import: one inside a function closes a cycle as surely as one at the top (it
    only waits to fail, or to load a half-initialised module, until the function runs)."""
    graph = {
        module: {t for _, imported, names in imports(path, module_level=False) for t in targets(imported, names)}
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
