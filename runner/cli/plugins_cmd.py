"""`finetune plugins`: every plugin loaded, its version and components; failures, conflicts, and
plugins that registered nothing, with the likely cause (a folder shadowing the installed package)."""

from __future__ import annotations

from pathlib import Path

from runner.cli.console import console as new_console
from runner.plugins.manager import get_plugins


def registered_nothing(plugins) -> dict[str, str]:
    """The plugins that loaded without error but registered no component, nor implement any other
    hook (recipes, lifecycle): their key in `registry.plugins` -> the likely cause."""
    from runner.plugins.manager import HOOK_OF_KIND

    found = {}
    for key, info in plugins.registry.plugins.items():
        if info.error or info.components:
            continue
        obj = plugins.pm.get_plugin(info.name)
        hooks = {caller.name for caller in plugins.pm.get_hookcallers(obj) or []} if obj is not None else set()
        if hooks - set(HOOK_OF_KIND.values()):
            continue  # a recipe pack or lifecycle hooks: components are not its purpose
        found[key] = _why_nothing(obj, sorted(hooks))
    return found


def _why_nothing(obj, hooks: list[str]) -> str:
    import sysconfig
    import types

    if hooks:
        return f"its hooks ({', '.join(hooks)}) called `register` for nothing"
    if not isinstance(obj, types.ModuleType):  # an object the entry point names, or an in-process one
        return f"{obj!r} has no @hookimpl registration hooks (register_strategies, register_metrics, ...)"
    module, name = obj, obj.__name__
    if getattr(module, "__file__", None) is None:
        folders = [str(p) for p in getattr(module, "__path__", [])]
        here = " in the current directory" if any(_under_cwd(f) for f in folders) else ""
        return (
            f"'{name}' was imported as an empty namespace package from {', '.join(folders) or '?'}: "
            f"a folder named '{name}'{here} "
            "shadows the installed package. Run from another directory, or move the code under src/ "
            "(the layout `finetune new plugin` makes)"
        )
    file = getattr(module, "__file__", None)
    installed = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    if file and _under_cwd(file) and not any(Path(file).resolve().is_relative_to(Path(p).resolve()) for p in installed):
        return (
            f"'{name}' was imported from {file}, under the current directory: a file or folder named like "
            "the plugin's module here may shadow the installed package; run from another directory"
        )
    return f"'{name}' defines no @hookimpl registration hooks (register_strategies, register_metrics, ...)"


def _under_cwd(path: str) -> bool:
    return Path(path).resolve().is_relative_to(Path.cwd().resolve())


def cmd_plugins(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    plugins = get_plugins()
    registry = plugins.registry
    empty = registered_nothing(plugins)
    console = new_console()
    table = Table(title="plugins")
    for column in ("plugin", "version", "source", "components"):
        table.add_column(column)
    for info in registry.plugins.values():
        by_kind: dict[str, list[str]] = {}
        for kind, name in info.components:
            by_kind.setdefault(kind.replace("_", " "), []).append(name)
        components = "; ".join(f"{kind}: [bold]{', '.join(names)}[/]" for kind, names in by_kind.items())
        if info.error:
            components = "[red]failed (see below)[/]"
        elif info.name in empty:
            components = "[yellow]none (see below)[/]"
        table.add_row(info.name, info.version, info.source, components or "-")
    console.print(table)
    for info in registry.plugins.values():
        if info.error:
            console.print(f"[red]failed:[/] plugin '{info.name}': {info.error}", soft_wrap=True)
    for name, why in empty.items():
        console.print(f"[yellow]warning:[/] plugin {name} registered no components: {escape(why)}", soft_wrap=True)
    for (kind, name), regs in registry.conflicts.items():
        plugins = " and ".join(r.plugin for r in regs)
        console.print(f"[red]conflict:[/] {kind.replace('_', ' ')} '{name}' is registered by {plugins}", soft_wrap=True)
    return 0
