"""The HTML the report's sections are made of: notes for what is missing, key-value tables, numbers,
metrics, badges, table cells, clipped text and durations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from runner.report.run_record import as_number, audit_verdict, is_number, metric_text
from runner.report.values import esc, fmt


def missing_note(what: str) -> str:
    """A note saying what is not there (not recorded, empty, not configured)."""
    return f'<p class="missing">{esc(what)}</p>'


def kv_table(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already (escape them first)."""
    body = "".join(f'<tr><th scope="row">{esc(k)}</th><td>{v}</td></tr>' for k, v in rows)
    return f'<table class="kv">{body}</table>' if body else ""


def number_html(value: Any) -> str:
    """A number formatted for people (anything else as its text, None as a dash), escaped."""
    number = as_number(value)
    return esc(fmt(number)) if number is not None else esc(value) if value is not None else "—"


def metric_html(value: Any) -> str:
    """A metric value as `metric_text` writes it (four decimals), anything else as `number_html`; escaped."""
    return esc(metric_text(value)) if as_number(value) is not None else number_html(value)


def badge(text: str, kind: str) -> str:
    """A coloured label; `kind` is its CSS class (pass, fail, warn, run, info)."""
    return f'<span class="badge {kind}">{esc(text)}</span>'


def audit_badge(passed: Any) -> str:
    """An audit's verdict as a badge."""
    verdict = audit_verdict(passed)
    return badge(verdict, verdict.lower())


def clip(value: Any, limit: int = 300) -> str:
    """A value as text (JSON unless a string), cut to `limit` characters; not escaped."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(value: Any) -> str:
    """A table cell: numbers right-aligned and formatted, anything else clipped and escaped."""
    if is_number(value):
        return f'<td class="num">{number_html(value)}</td>'
    return f"<td>{esc(clip(value))}</td>"


def duration(seconds: float | None) -> str:
    """Seconds as '1 min 42 s' or '2 h 05 min'."""
    if seconds is None or seconds < 0:
        return "—"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
