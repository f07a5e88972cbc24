"""The charts of sweep.html, as inline SVG drawn with the run report's frame, ticks and palette.

A study's parameters are not all numbers on a line: learning rates are searched on a log scale and
`choice` keys are categories. `Axis` maps any parameter value to a fraction of its axis (log axes by
decade, categories evenly spaced), so the parallel coordinates and the slice plots share one
mapping. Values that fit no axis (a trial that did not search a conditional key, a non-finite
number) are left out of that axis, never drawn at a made-up place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.report.chart_frame import AXIS, PALETTE, Frame, axes, heading, nice_ticks, padded, svg_open, tick_label
from runner.report.values import esc, fmt
from runner.storage.rundir import finite

LOG_KINDS = ("log_uniform", "log_int")
NUMERIC_KINDS = ("uniform", "int", *LOG_KINDS)
BEST = "#d97706"  # amber: stands out of the blue scale of the other trials without reading as "bad"
FAINT = "#9ca3af"
LIGHT, DARK = (147, 197, 253), (30, 58, 138)  # the worst and the best trial's colour


def clipped(text: object, limit: int) -> str:
    """Text cut to `limit` characters (not escaped): axis labels have little room."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def show(value: object) -> str:
    """A parameter value as text: numbers formatted for people, everything else as its text."""
    return fmt(value) if isinstance(value, int | float | bool) else str(value)


def _category_key(value: object) -> tuple[str, object]:
    # True == 1 and 8 == 8.0 in Python: keep booleans apart from numbers, and strings apart from both
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    return ("text", str(value))


@dataclass
class Axis:
    """One parameter (or the objective): its name, scale and domain."""

    name: str
    kind: str = "linear"  # linear, log or category
    low: float = 0.0
    high: float = 1.0
    integer: bool = False
    categories: list[Any] = field(default_factory=list)

    def frac(self, value: object) -> float | None:
        """Where a value lies along the axis, 0 to 1; None when it has no place on it."""
        if self.kind == "category":
            keys = [_category_key(c) for c in self.categories]
            key = _category_key(value)
            return (keys.index(key) + 0.5) / len(keys) if key in keys else None
        number = finite(value) if not isinstance(value, str) else None
        if number is None:
            return None
        if self.kind == "log":
            if number <= 0:
                return None
            span = math.log10(self.high) - math.log10(self.low)
            return (math.log10(number) - math.log10(self.low)) / span
        return (number - self.low) / (self.high - self.low)

    def ticks(self) -> list[tuple[float, str]]:
        """(fraction, label) of the axis's ticks: decades on log axes, every category (or every n-th)."""
        if self.kind == "category":
            n = len(self.categories)
            every = max(1, math.ceil(n / 12))
            return [((i + 0.5) / n, clipped(show(c), 14)) for i, c in enumerate(self.categories) if i % every == 0]
        if self.kind == "log":
            first, last = math.ceil(math.log10(self.low) - 1e-9), math.floor(math.log10(self.high) + 1e-9)
            values = [10.0**k for k in range(first, last + 1)]
            if len(values) < 2:  # less than a decade (log_int [8, 64]): 1-2-5 steps say more
                values = [m * 10.0**k for k in range(first - 1, last + 1) for m in (1, 2, 5)]
                values = [v for v in values if self.low * (1 - 1e-9) <= v <= self.high * (1 + 1e-9)]
            return [(self.frac(v) or 0.0, log_label(v)) for v in values]
        values = [t for t in nice_ticks(self.low, self.high, 5) if self.low <= t <= self.high]
        if self.integer:
            values = [t for t in values if float(t).is_integer()]
        return [(self.frac(t) or 0.0, tick_label(t, values)) for t in values]


def log_label(value: float) -> str:
    """A log-axis tick: decades far from 1 as 1e-5, the others as plain numbers."""
    exponent = math.log10(value)
    if exponent.is_integer() and (exponent <= -3 or exponent >= 4):
        return f"1e{int(exponent)}"
    return fmt(value)


def make_axis(name: str, entry: dict | None, values: Sequence[object]) -> Axis:
    """The axis of a parameter from its search-space entry and the values trials tried; an unknown
    entry falls back to what the values are (all numbers: linear, else categories)."""
    entry = entry if isinstance(entry, dict) else {}
    kind = next((k for k in ("choice", *NUMERIC_KINDS) if k in entry), None)
    numbers = [finite(v) for v in values if not isinstance(v, str | bool)]
    numeric_values = all(n is not None for n in numbers) and len(numbers) == len(values)
    if kind == "choice" or (kind is None and (not values or not numeric_values)):
        categories: list[Any] = []
        for value in [*(entry.get("choice") or []), *values]:
            if _category_key(value) not in [_category_key(c) for c in categories]:
                categories.append(value)
        return Axis(name, "category", categories=categories or ["—"])
    bounds = entry.get(kind) if kind else None
    known = [finite(b) for b in bounds] if isinstance(bounds, list) else []
    points = [n for n in [*known, *numbers] if n is not None]
    low, high = (min(points), max(points)) if points else (0.0, 1.0)
    integer = kind in ("int", "log_int") or (kind is None and all(float(n).is_integer() for n in points))
    if kind in LOG_KINDS and low > 0:
        if low == high:  # a zero span on a log axis: half a decade either side
            low, high = low / 10**0.5, high * 10**0.5
        return Axis(name, "log", low, high, integer)
    if low == high:
        low, high = padded(low, high)
    return Axis(name, "linear", low, high, integer)


@dataclass
class Shade:
    """The colour of a trial by its objective value: the better, the darker and stronger."""

    low: float
    high: float
    maximize: bool

    def strength(self, value: float) -> float:
        if self.high == self.low:
            return 1.0
        share = (value - self.low) / (self.high - self.low)
        return share if self.maximize else 1.0 - share

    def colour(self, value: float) -> str:
        s = self.strength(value)
        r, g, b = (round(lo + (hi - lo) * s) for lo, hi in zip(LIGHT, DARK, strict=True))
        return f"#{r:02x}{g:02x}{b:02x}"


def _rgb(triple: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in triple)


def importance_bars(importances: dict[str, object], *, title: str, width: int = 720) -> str:
    """Horizontal bars, most important parameter first. Empty: ""."""
    rows = [(str(k), v) for k, v in ((k, finite(v)) for k, v in importances.items()) if v is not None]
    if not rows:
        return ""
    rows.sort(key=lambda kv: -kv[1])
    label_w = min(260, 7 * max(len(k) for k, _ in rows) + 16)
    height = 40 + 24 * len(rows) + 8
    top = max(max(v for _, v in rows), 1e-12)
    frame = Frame(width, height, (0.0, top), (0.0, 1.0), left=label_w, right=70, top=34, bottom=8)
    heading(frame, title)
    p = frame.parts
    for i, (key, value) in enumerate(rows):
        y = frame.top + 24 * i
        bar = max(frame.px(max(value, 0.0)) - frame.left, 1.0)
        p.append(
            f'<text x="{frame.left - 8}" y="{y + 15}" text-anchor="end" fill="#374151">{esc(clipped(key, 36))}'
            f"<title>{esc(key)}</title></text>"
        )
        p.append(
            f'<rect class="bar" x="{frame.left}" y="{y + 4}" width="{bar:.1f}" height="16" fill="{PALETTE[0]}">'
            f"<title>{esc(f'{key}: {fmt(value, 3)}')}</title></rect>"
        )
        p.append(f'<text x="{frame.left + bar + 6:.1f}" y="{y + 15}" fill="{AXIS}">{esc(fmt(value, 3))}</text>')
    return svg_open(width, height, title) + "".join(p) + "</svg>"


def _legend(maximize: bool, pruned: bool) -> list[tuple[str, str, bool]]:
    better = "higher" if maximize else "lower"
    out = [(f"better ({better})", _rgb(DARK), False), ("worse", _rgb(LIGHT), False), ("best", BEST, False)]
    return out + [("pruned", FAINT, True)] if pruned else out


def parallel_coordinates(
    params: Sequence[Axis],
    objective: Axis | None,
    trials: Sequence[dict],
    *,
    maximize: bool,
    best: int | None,
    title: str,
) -> str:
    """One vertical axis per parameter and one for the objective; one polyline per complete trial,
    coloured by its value, the best one on top. Pruned trials that tried settings are faint and
    dashed. A trial without a value on an axis (a conditional key) skips that axis. Empty: ""."""
    columns = [*params, *([objective] if objective else [])]
    complete = [t for t in trials if t.get("state") == "complete"]
    pruned = [t for t in trials if t.get("state") == "pruned" and t.get("params")]
    if not columns or not (complete or pruned):
        return ""
    width, height = max(720, 130 * len(columns)), 380
    frame = Frame(width, height, (0.0, 1.0), (0.0, 1.0), left=70, right=70, top=74, bottom=24)
    heading(frame, title, _legend(maximize, bool(pruned)))
    p = frame.parts
    step = frame.plot_w / (len(columns) - 1) if len(columns) > 1 else 0.0
    xs = [frame.left + step * i if len(columns) > 1 else frame.left + frame.plot_w / 2 for i in range(len(columns))]
    on_top: list[str] = []
    for i, (axis, x) in enumerate(zip(columns, xs, strict=True)):
        bottom = frame.top + frame.plot_h
        p.append(f'<line class="axis" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{AXIS}"/>')
        scale = " (log)" if axis.kind == "log" else ""
        # the outer names run inwards, so that they are not cut at the chart's edges
        anchor, shift = ("start", -8) if i == 0 and len(columns) > 1 else ("middle", 0)
        if i == len(columns) - 1 and len(columns) > 1:
            anchor, shift = "end", 8
        # key paths are long: names alternate between two lines, so each may take two axes' room
        p.append(
            f'<text x="{x + shift:.1f}" y="{frame.top - 12 - 14 * (i % 2)}" text-anchor="{anchor}" font-weight="600" '
            f'fill="#111827">{esc(clipped(axis.name, 34) + scale)}<title>{esc(axis.name)}</title></text>'
        )
        for frac, label in axis.ticks():
            y = frame.py(frac)
            p.append(f'<line x1="{x - 4:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="{AXIS}"/>')
            # drawn after the trials, on a white halo: category names sit where the lines meet
            at = f'x="{x - 6:.1f}" y="{y + 3.5:.1f}" text-anchor="end" font-size="10"'
            on_top.append(f'<text {at} fill="#fff" stroke="#fff" stroke-width="3">{esc(label)}</text>')
            on_top.append(f'<text class="tick" {at} fill="{AXIS}">{esc(label)}</text>')
    values = [v for v in (finite(t.get("value")) for t in complete) if v is not None]
    shade = Shade(min(values), max(values), maximize) if values else None

    def line(t: dict, css: str, style: str, hover: str) -> None:
        settings = t.get("params") or {}
        fracs = [axis.frac(settings.get(axis.name)) if axis.name in settings else None for axis in params]
        if objective:
            fracs.append(objective.frac(t.get("value")))
        pts = [(x, frame.py(min(max(f, 0.0), 1.0))) for x, f in zip(xs, fracs, strict=True) if f is not None]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        p.append(
            f'<polyline class="trial {css}" data-trial="{esc(t.get("number"))}" fill="none" {style} '
            f'stroke-linejoin="round" points="{coords}"><title>{esc(hover)}</title></polyline>'
        )
        if len(pts) == 1:  # a lone point draws no line: show it as a dot
            p.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3" fill="{FAINT}"/>')

    for t in pruned:
        line(t, "pruned", f'stroke="{FAINT}" stroke-width="1.2" stroke-dasharray="4 3" opacity="0.7"', _hover(t))

    def rank(t: dict) -> float:
        value = finite(t.get("value"))
        return -1.0 if value is None or shade is None else shade.strength(value)

    # worst first, so that the better trials (and the best last) are drawn on top
    for t in sorted(complete, key=lambda t: (t.get("number") == best, rank(t))):
        value = finite(t.get("value"))
        if t.get("number") == best and best is not None:
            style = f'stroke="{BEST}" stroke-width="3.2"'
        elif value is None or shade is None:
            style = f'stroke="{FAINT}" stroke-width="1.4"'
        else:
            style = (
                f'stroke="{shade.colour(value)}" stroke-width="1.8" opacity="{0.6 + 0.4 * shade.strength(value):.2f}"'
            )
        line(t, "complete", style, _hover(t))
    return svg_open(width, height, title) + "".join(p + on_top) + "</svg>"


def _hover(t: dict) -> str:
    settings = ", ".join(f"{k}={show(v)}" for k, v in (t.get("params") or {}).items())
    return f"trial {t.get('number')} ({t.get('state')}): {fmt(t.get('value'))}; {settings}"


def slice_plot(axis: Axis, trials: Sequence[dict], *, maximize: bool, best: int | None, y_label: str) -> str:
    """The objective against one parameter's value, one dot per complete trial. Empty: ""."""
    pts = []
    for t in trials:
        settings = t.get("params") or {}
        value = finite(t.get("value"))
        frac = axis.frac(settings.get(axis.name)) if axis.name in settings else None
        if t.get("state") == "complete" and value is not None and frac is not None:
            pts.append((frac, value, t))
    if not pts:
        return ""
    width, height = 350, 240
    y_lo, y_hi = padded(min(v for _, v, _ in pts), max(v for _, v, _ in pts))
    y_ticks = nice_ticks(y_lo, y_hi, 5)
    y_lo, y_hi = min(y_lo, y_ticks[0]), max(y_hi, y_ticks[-1])
    title = axis.name + (" (log)" if axis.kind == "log" else "")
    frame = Frame(width, height, (-0.04, 1.04), (y_lo, y_hi), left=58, top=30)
    heading(frame, clipped(title, 44))
    axes(frame, [], y_ticks, "", y_label)
    p = frame.parts
    base = frame.top + frame.plot_h
    for frac, label in axis.ticks():
        x = frame.px(frac)
        p.append(f'<line x1="{x:.1f}" y1="{base:.1f}" x2="{x:.1f}" y2="{base + 4:.1f}" stroke="{AXIS}"/>')
        p.append(f'<text x="{x:.1f}" y="{base + 16:.1f}" text-anchor="middle" fill="{AXIS}">{esc(label)}</text>')
    values = [v for _, v, _ in pts]
    shade = Shade(min(values), max(values), maximize)
    for frac, value, t in pts:
        is_best = best is not None and t.get("number") == best
        fill = BEST if is_best else shade.colour(value)
        p.append(
            f'<circle class="point" cx="{frame.px(frac):.1f}" cy="{frame.py(value):.1f}" r="{5 if is_best else 3.6}" '
            f'fill="{fill}" stroke="#fff" stroke-width="0.8"><title>{esc(_hover(t))}</title></circle>'
        )
    return svg_open(width, height, title) + "".join(p) + "</svg>"


STATE_COLOUR = {"complete": PALETTE[0], "pruned": PALETTE[1], "running": PALETTE[2]}


def intermediate_chart(trials: Sequence[dict], *, title: str, y_label: str) -> str:
    """Each trial's reported value per step, the lines the pruner compared; a pruned trial's line
    is dashed and ends in a cross where it was stopped. Empty: ""."""
    lines = []
    for t in trials:
        raw = t.get("intermediate") or {}
        pts = sorted(
            (s, v) for s, v in ((finite(k), finite(v)) for k, v in raw.items()) if s is not None and v is not None
        )
        if pts:
            lines.append((t, pts))
    if not lines:
        return ""
    xs = [s for _, pts in lines for s, _ in pts]
    ys = [v for _, pts in lines for _, v in pts]
    x_lo, x_hi = (min(xs), max(xs)) if min(xs) != max(xs) else (min(xs) - 1, max(xs) + 1)
    y_lo, y_hi = padded(min(ys), max(ys))
    y_ticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_lo, y_ticks[0]), max(y_hi, y_ticks[-1])
    frame = Frame(720, 300, (x_lo, x_hi), (y_lo, y_hi))
    states = sorted({str(t.get("state")) for t, _ in lines}, key=lambda s: (s not in STATE_COLOUR, s))
    heading(frame, title, [(s, STATE_COLOUR.get(s, FAINT), s == "pruned") for s in states])
    x_ticks = [t for t in nice_ticks(x_lo, x_hi, 7) if x_lo <= t <= x_hi]
    if all(float(s).is_integer() for s in xs):  # steps are counted: no step 1.5
        x_ticks = [t for t in x_ticks if float(t).is_integer()]
    axes(frame, x_ticks, y_ticks, "step", y_label)
    p = frame.parts
    # pruned lines last: what the pruner stopped is the point of the chart
    for t, pts in sorted(lines, key=lambda tp: tp[0].get("state") == "pruned"):
        state = str(t.get("state"))
        colour = STATE_COLOUR.get(state, FAINT)
        dash = ' stroke-dasharray="6 4"' if state == "pruned" else ""
        coords = " ".join(f"{frame.px(s):.1f},{frame.py(v):.1f}" for s, v in pts)
        name = f"trial {t.get('number')} ({state})"
        p.append(
            f'<polyline class="curve {esc(state)}" fill="none" stroke="{colour}" stroke-width="1.5" opacity="0.8"'
            f'{dash} points="{coords}"><title>{esc(name)}</title></polyline>'
        )
        if len(ys) <= 300:  # dots to hover while they stay apart
            for s, v in pts:
                p.append(
                    f'<circle cx="{frame.px(s):.1f}" cy="{frame.py(v):.1f}" r="2.2" fill="{colour}">'
                    f"<title>{esc(f'{name}, step {fmt(s)}: {fmt(v)}')}</title></circle>"
                )
        if state == "pruned":
            x, y = frame.px(pts[-1][0]), frame.py(pts[-1][1])
            p.append(
                f'<path class="pruned-at" d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
                f'L{x + 4:.1f},{y - 4:.1f}" stroke="{colour}" stroke-width="2">'
                f"<title>{esc(f'{name}: pruned after step {fmt(pts[-1][0])}')}</title></path>"
            )
    return svg_open(frame.width, frame.height, title) + "".join(p) + "</svg>"
