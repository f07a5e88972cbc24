"""`finetune plan`: a Plan (runner.running.planning) rendered with rich."""

from __future__ import annotations

from typing import Any

from runner.running.planning import Plan


def _show(value: Any) -> str:
    import tomli_w

    if value == {}:  # an empty table (`columns = {}`): TOML would write it as a header
        return "{}"
    text = tomli_w.dumps({"v": value}).strip()[4:] if value is not None else ""
    return text if len(text) <= 70 else text[:67] + "..."


def show_plan(found: Plan, console) -> None:
    """Print a plan: where it came from, the resolved recipe with each value's origin, the
    components, formatted samples, the facts, warnings and notes."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console.print(f"[bold]{found.name}[/]: {found.path}")
    if len(found.chain) > 1:
        console.print("extends: " + " -> ".join(str(p) for p in found.chain))
    for override in found.overrides:
        console.print(f"override: --set {override}")

    resolved = Table(title="resolved recipe", show_lines=False)
    resolved.add_column("key", overflow="fold")
    resolved.add_column("value", overflow="fold")
    resolved.add_column("from", style="dim", overflow="fold")
    for key, value, origin in found.provenance:
        resolved.add_row(key, _show(value), origin)
    console.print(resolved)

    components = Table(title="components")
    for column in ("section", "type", "what it does"):
        components.add_column(column)
    for row in found.components:
        components.add_row(*row)
    console.print(components)

    for n, pieces in enumerate(found.samples, 1):
        text = Text()
        for piece, trained in pieces:
            text.append(piece, style="bold" if trained else "dim")
        console.print(f"[bold]sample {n}[/] (dim: not trained on; bold: trained on)")
        console.print(text)

    table = Table(title="plan", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in found.facts.items():
        table.add_row(key, value)
    console.print(table)
    for warning in found.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/]")  # escape: "[distributed]" is no markup
    for note in found.notes:
        console.print(f"[dim]- {note}[/]")


def cmd_plan(args) -> int:
    from runner.cli.console import console
    from runner.running.planning import plan

    found = plan(args.recipe, overrides=args.overrides, offline=args.offline, samples=args.samples,
                 nproc=args.nproc, nnodes=args.nnodes)  # fmt: skip
    show_plan(found, console())
    return 0
