"""What every SVG chart of the report is drawn in: the palette, round ticks and their labels, the
frame that maps data to pixels, the axes, the title with its legend, and the opening `<svg>` tag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runner.report.values import esc

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
AXIS = "#6b7280"
GRID = "#e5e7eb"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (about `count` of them)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < low:
        low, high = high, low
    if high == low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """A tick's label with as many decimals as the tick spacing needs."""
    if value == 0:
        return "0"
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value)
    if abs(value) >= 1e6 or (step and step < 1e-3):
        return f"{value:.2g}"
    decimals = max(0, -math.floor(math.log10(step))) if step else 0
    if step and round(step * 10**decimals) % 10 != 0 and step * 10**decimals != round(step * 10**decimals):
        decimals += 1  # steps like 2.5 or 0.25 need one more digit
    return f"{value:,.{decimals}f}" if abs(value) >= 10_000 else f"{value:.{decimals}f}"


@dataclass
class Frame:
    """Plot area and the mapping from data to pixels."""

    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    left: int = 64
    right: int = 18
    top: int = 34
    bottom: int = 46
    parts: list[str] = field(default_factory=list)

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def px(self, x: float) -> float:
        lo, hi = self.x_range
        return self.left + (x - lo) / (hi - lo) * self.plot_w

    def py(self, y: float) -> float:
        lo, hi = self.y_range
        return self.top + self.plot_h - (y - lo) / (hi - lo) * self.plot_h


def padded(low: float, high: float, pad: float = 0.05) -> tuple[float, float]:
    """[low, high] widened by `pad` of its span on each side (a span around a single value)."""
    if high == low:
        span = abs(low) * 0.1 or 1.0
        return low - span, high + span
    span = high - low
    return low - span * pad, high + span * pad


def svg_open(width: int, height: int, title: str) -> str:
    """The opening `<svg>` tag of a chart, with its accessible title."""
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}" '
        f'font-family="{esc(FONT)}" font-size="11">'
        f"<title>{esc(title)}</title>"
    )


def axes(frame: Frame, x_ticks, y_ticks, x_label: str, y_label: str, y_text: Callable[[float], str] | None = None):
    """Grid lines, ticks and their labels, both axis lines and the axis titles (y labels by `y_text`)."""
    p = frame.parts
    x0, x1 = frame.left, frame.left + frame.plot_w
    y0, y1 = frame.top, frame.top + frame.plot_h
    for t in y_ticks:
        y = frame.py(t)
        p.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        label = y_text(t) if y_text else tick_label(t, y_ticks)
        p.append(f'<text x="{x0 - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="{AXIS}">{esc(label)}</text>')
    for t in x_ticks:
        x = frame.px(t)
        p.append(f'<line x1="{x:.1f}" y1="{y1:.1f}" x2="{x:.1f}" y2="{y1 + 4:.1f}" stroke="{AXIS}"/>')
        label = tick_label(t, x_ticks)
        p.append(f'<text x="{x:.1f}" y="{y1 + 16:.1f}" text-anchor="middle" fill="{AXIS}">{esc(label)}</text>')
    p.append(f'<line x1="{x0}" y1="{y1:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="{AXIS}"/>')
    p.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1:.1f}" stroke="{AXIS}"/>')
    if x_label:
        p.append(
            f'<text x="{x0 + frame.plot_w / 2:.1f}" y="{frame.height - 8}" text-anchor="middle" '
            f'fill="{AXIS}">{esc(x_label)}</text>'
        )
    if y_label:
        cy = y0 + frame.plot_h / 2
        p.append(
            f'<text x="14" y="{cy:.1f}" text-anchor="middle" fill="{AXIS}" '
            f'transform="rotate(-90 14 {cy:.1f})">{esc(y_label)}</text>'
        )


def heading(frame: Frame, title: str, legend: Sequence[tuple[str, str, bool]] = ()) -> None:
    """Title on the left; legend entries (name, colour, dashed) on its right, or on lines of their own
    below it when they do not fit beside it (the plot moves down to make room)."""
    p = frame.parts
    p.append(f'<text x="{frame.left}" y="18" font-size="13" font-weight="600" fill="#111827">{esc(title)}</text>')
    if not legend:
        return
    widths = [6.3 * len(name) + 30 for name, _, _ in legend]  # about 6.3 px a character at 11 px
    room = frame.width - frame.right - frame.left
    beside = 7.6 * len(title) + 24 + sum(widths) <= room
    x, y = (frame.width - frame.right - sum(widths), 18.0) if beside else (float(frame.left), 36.0)
    if not beside:
        frame.top += 16
    for (name, colour, dashed), width in zip(legend, widths, strict=True):
        if not beside and x + width > frame.width - frame.right:
            x, y = float(frame.left), y + 16
            frame.top += 16
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        mid = y - 4
        p.append(
            f'<line x1="{x:.1f}" y1="{mid}" x2="{x + 16:.1f}" y2="{mid}" stroke="{colour}" stroke-width="2.5"{dash}/>'
        )
        p.append(f'<text x="{x + 20:.1f}" y="{y}" fill="#374151">{esc(name)}</text>')
        x += width
