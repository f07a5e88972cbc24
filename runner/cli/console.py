"""Where the commands print: a rich console that never cuts a line off a terminal."""

from __future__ import annotations


def console():
    from rich.console import Console

    out = Console(highlight=False)
    out.soft_wrap = not out.is_terminal  # piped into a log: one line per message, never cut
    return out
