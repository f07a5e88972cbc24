"""Small charts for the run report, as inline SVG (and one heat-mapped HTML table).

No JavaScript, no fonts or images from elsewhere: the report opens from disk, prints, and can be
mailed as one file. Hovering a point shows its `<title>` (step, epoch, value). Values that are not
finite numbers (NaN, inf, the strings "nan"/"inf" of the run files, None) are skipped, never drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runner.report.chart_frame import PALETTE, Frame, axes, heading, nice_ticks, padded, svg_open, tick_label
from runner.report.values import esc, fmt
from runner.storage.rundir import finite


@dataclass
class Series:
    """One line: points (x, y, hover text); points whose y is not finite are skipped."""

    name: str
    points: list[tuple[float, object, str]]
    colour: str | None = None
    dashed: bool = False

    def drawable(self) -> list[tuple[float, float, str]]:
        out = []
        for x, y, hover in self.points:
            fx, fy = finite(x), finite(y)
            if fx is not None and fy is not None:
                out.append((fx, fy, hover))
        return out


@dataclass
class Marker:
    """A highlighted point (e.g. the best validation loss), with a label beside it."""

    x: float
    y: float
    label: str
    hover: str = ""
    colour: str = "#111827"


@dataclass
class VLine:
    """A vertical line across the plot (e.g. where over-fitting starts, or max_length)."""

    x: float
    label: str
    colour: str = "#dc2626"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str = "step",
    y_label: str = "",
    markers: Sequence[Marker] = (),
    vlines: Sequence[VLine] = (),
    width: int = 720,
    height: int = 280,
) -> str:
    """Lines of several series on shared axes; each point carries its hover text. Empty: ""."""
    drawn = [(s, s.drawable()) for s in series]
    drawn = [(s, pts) for s, pts in drawn if pts]
    if not drawn:
        return ""
    xs = [x for _, pts in drawn for x, _, _ in pts] + [v.x for v in vlines] + [m.x for m in markers]
    ys = [y for _, pts in drawn for _, y, _ in pts] + [m.y for m in markers]
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = padded(min(ys), max(ys))
    y_ticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_lo, y_ticks[0]), max(y_hi, y_ticks[-1])
    frame = Frame(width, height, (x_lo, x_hi), (y_lo, y_hi))
    colours = {id(s): s.colour or PALETTE[i % len(PALETTE)] for i, (s, _) in enumerate(drawn)}
    # One series whose name the title already says needs no legend.
    alone = len(drawn) == 1 and drawn[0][0].name.lower() == title.lower()
    legend = [] if alone else [(s.name, colours[id(s)], s.dashed) for s, _ in drawn]
    heading(frame, title, legend)
    axes(frame, [t for t in nice_ticks(x_lo, x_hi, 7) if x_lo <= t <= x_hi], y_ticks, x_label, y_label)
    p = frame.parts
    for v in vlines:
        x = frame.px(v.x)
        p.append(
            f'<line class="vline" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.top + frame.plot_h:.1f}" '
            f'stroke="{v.colour}" stroke-dasharray="4 3"><title>{esc(v.label)}</title></line>'
        )
        anchor = "end" if x > frame.left + frame.plot_w * 0.7 else "start"
        dx = -4 if anchor == "end" else 4
        p.append(
            f'<text x="{x + dx:.1f}" y="{frame.top + 11}" text-anchor="{anchor}" '
            f'fill="{v.colour}">{esc(v.label)}</text>'
        )
    for s, pts in drawn:
        colour = colours[id(s)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y, _ in pts)
        p.append(
            f'<polyline class="series" data-series="{esc(s.name)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.8" stroke-linejoin="round"{dash} points="{coords}">'
            f"<title>{esc(s.name)}</title></polyline>"
        )
        # Dots where there are few points; invisible hover targets where there are many.
        if len(pts) <= 2000:
            visible = len(pts) <= 60
            style = f'fill="{colour}"' if visible else 'fill="transparent"'
            radius = 2.6 if visible else 3.5
            for x, y, hover in pts:
                p.append(
                    f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="{radius}" {style}>'
                    f"<title>{esc(hover)}</title></circle>"
                )
    for m in markers:
        cx, cy = frame.px(m.x), frame.py(m.y)
        p.append(
            f'<circle class="marker" cx="{cx:.1f}" cy="{cy:.1f}" r="6.5" fill="none" stroke="{m.colour}" '
            f'stroke-width="2"><title>{esc(m.hover or m.label)}</title></circle>'
        )
        anchor = "end" if cx > frame.left + frame.plot_w * 0.8 else "start"
        dx = -10 if anchor == "end" else 10
        p.append(
            f'<text x="{cx + dx:.1f}" y="{cy - 8:.1f}" text-anchor="{anchor}" font-weight="600" '
            f'fill="{m.colour}">{esc(m.label)}</text>'
        )
    return svg_open(width, height, title) + "".join(p) + "</svg>"


def bar_chart(
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    y_label: str = "",
    hover: Callable[[int, int], str] | None = None,
    as_percent: bool = False,
    width: int = 720,
    height: int = 280,
) -> str:
    """Grouped vertical bars: one group per category, one bar per series. Empty: ""."""
    values = [finite(v) for _, vs in series for v in vs]
    values = [v for v in values if v is not None]
    if not groups or not values:
        return ""
    rotate = len(groups) > 10 or max(len(g) for g in groups) * len(groups) * 6.5 > width - 90
    frame = Frame(width, height + (40 if rotate else 0), (0.0, 1.0), (0.0, 1.0))
    frame.bottom += 40 if rotate else 0
    top = max(max(values), 0.0)
    y_ticks = nice_ticks(0.0, top * 1.08 if top else 1.0)
    frame.y_range = (0.0, max(y_ticks[-1], top) or 1.0)
    legend = [(name, PALETTE[i % len(PALETTE)], False) for i, (name, _) in enumerate(series)] if len(series) > 1 else []
    heading(frame, title, legend)
    percent = (lambda t: tick_label(t * 100, [v * 100 for v in y_ticks]) + "%") if as_percent else None
    axes(frame, [], y_ticks, "", y_label, percent)
    p = frame.parts
    slot = frame.plot_w / len(groups)
    bar = min(36.0, slot * 0.8 / max(len(series), 1))
    for g, group in enumerate(groups):
        start = frame.left + slot * g + (slot - bar * len(series)) / 2
        for s, (_name, vs) in enumerate(series):
            value = finite(vs[g]) if g < len(vs) else None
            if value is None:
                continue
            x = start + bar * s
            y = frame.py(value)
            text = hover(g, s) if hover else f"{group}: {fmt(value)}"
            p.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{frame.top + frame.plot_h - y:.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                f"<title>{esc(text)}</title></rect>"
            )
        cx = frame.left + slot * (g + 0.5)
        base = frame.top + frame.plot_h + 14
        label = group if len(group) <= 24 else group[:23] + "…"
        if rotate:
            p.append(
                f'<text x="{cx:.1f}" y="{base:.1f}" text-anchor="end" fill="#374151" '
                f'transform="rotate(-40 {cx:.1f} {base:.1f})">{esc(label)}</text>'
            )
        else:
            p.append(f'<text x="{cx:.1f}" y="{base:.1f}" text-anchor="middle" fill="#374151">{esc(label)}</text>')
    return svg_open(width, frame.height, title) + "".join(p) + "</svg>"


def histogram(
    edges: Sequence[float],
    counts: Sequence[float],
    *,
    title: str,
    x_label: str = "",
    marker: float | None = None,
    marker_label: str = "",
    width: int = 360,
    height: int = 220,
) -> str:
    """Bars between consecutive edges; an optional vertical marker (e.g. max_length). Empty: ""."""
    bins = []
    for i, count in enumerate(counts):
        if i + 1 >= len(edges):
            break
        lo, hi, c = finite(edges[i]), finite(edges[i + 1]), finite(count)
        if lo is not None and hi is not None and c is not None:
            bins.append((lo, hi, c))
    if not bins:
        return ""
    x_lo = min(b[0] for b in bins)
    x_hi = max(b[1] for b in bins)
    if marker is not None:
        x_lo, x_hi = min(x_lo, marker), max(x_hi, marker * 1.02)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    top = max(c for _, _, c in bins) or 1.0
    y_ticks = nice_ticks(0.0, top * 1.08, 4)
    frame = Frame(width, height, (x_lo, x_hi), (0.0, max(y_ticks[-1], top)), left=52, top=30)
    heading(frame, title)
    axes(frame, [t for t in nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi], y_ticks, x_label, "rows")
    p = frame.parts
    for lo, hi, c in bins:
        x0, x1 = frame.px(lo), frame.px(hi)
        y = frame.py(c)
        p.append(
            f'<rect class="bin" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
            f'height="{frame.top + frame.plot_h - y:.1f}" fill="{PALETTE[0]}" fill-opacity="0.8">'
            f"<title>{esc(f'{fmt(lo)}–{fmt(hi)} tokens: {fmt(c)} rows')}</title></rect>"
        )
    if marker is not None:
        x = frame.px(marker)
        p.append(
            f'<line class="vline" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.top + frame.plot_h:.1f}" '
            f'stroke="#dc2626" stroke-width="1.5" stroke-dasharray="4 3"><title>{esc(marker_label)}</title></line>'
        )
        p.append(
            f'<text x="{x - 4:.1f}" y="{frame.top + 10}" text-anchor="end" fill="#dc2626">{esc(marker_label)}</text>'
        )
    return svg_open(width, height, title) + "".join(p) + "</svg>"


def heat_table(labels: Sequence[str], matrix: Sequence[Sequence[object]], *, caption: str = "") -> str:
    """A confusion matrix as an HTML table: rows are true labels, columns predicted ones; each cell
    is shaded by its share of the row (the recall view), the diagonal outlined."""
    rows = [[int(finite(v) or 0) for v in row] for row in matrix]
    n = max([len(rows), *(len(row) for row in rows)])  # a matrix short of a row or column still lines up
    rows = [row + [0] * (n - len(row)) for row in rows]
    names = [str(labels[i]) if i < len(labels) else str(i) for i in range(n)]
    column_totals = [sum(row[j] for row in rows) for j in range(n)]
    out = ['<table class="heat">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append('<thead><tr><th class="corner">true ↓ / predicted →</th>')
    out += [f'<th scope="col">{esc(name)}</th>' for name in names]
    out.append('<th scope="col" class="total">rows</th><th scope="col" class="total">recall</th></tr></thead><tbody>')
    for i, row in enumerate(rows):
        total = sum(row)
        out.append(f'<tr><th scope="row">{esc(names[i])}</th>')
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            alpha = 0.08 + 0.85 * share if count else 0.0
            ink = "#ffffff" if alpha > 0.55 else "#111827"
            cls = ' class="diag"' if i == j else ""
            hover = f"true {names[i]}, predicted {names[j]}: {count} ({share:.1%} of the row)"
            out.append(
                f'<td{cls} style="background: rgba(37, 99, 235, {alpha:.3f}); color: {ink}" '
                f'title="{esc(hover)}">{count}</td>'
            )
        recall = fmt(row[i] / total, 3) if total else "—"
        out.append(f'<td class="total">{total}</td><td class="total">{recall}</td></tr>')
    out.append('<tr class="total"><th scope="row">predicted</th>')
    out += [f'<td class="total">{c}</td>' for c in column_totals]
    out.append(f'<td class="total">{sum(column_totals)}</td><td></td></tr></tbody></table>')
    return "".join(out)
