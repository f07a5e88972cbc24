"""Values as the report shows them: text escaped for HTML and SVG, numbers formatted
for people. Shared by the page, its charts, the model card, the run record and `finetune compare`.
"""

from __future__ import annotations

import math
from html import escape


def esc(value: object) -> str:
    """Text for HTML and SVG: every value is user content until proven otherwise."""
    return escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """A number as a person reads it: integers whole, others with `digits` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if value.is_integer() and abs(value) < 1e15:
            return fmt(int(value))
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:.{digits}g}"
    return str(value)
