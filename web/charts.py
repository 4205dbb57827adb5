"""Line charts drawn on the server as SVG: axes with "nice" ticks, points (with their interval
as a whisker), the line through them, and alert markers, each with a <title> a browser shows
on hover and a screen reader reads. No script, no library: the page is whole as served."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


@dataclass(frozen=True)
class ChartPoint:
    """One measurement: its place on the x axis (0, 1, 2...), its value and what it is."""

    value: float
    title: str
    ci_low: float | None = None
    ci_high: float | None = None
    href: str | None = None


@dataclass(frozen=True)
class ChartMarker:
    """An alert: drawn as a triangle over the point at `index`, with its reason as a title."""

    index: int
    title: str
    kind: str = "fired"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude * 10
    for factor in (1, 2, 2.5, 5, 10):
        if (high - low) / (factor * magnitude) <= count:
            step = factor * magnitude
            break
    start = math.floor(low / step) * step
    ticks = [round(start, 12)]
    while len(ticks) < 2 or ticks[-1] < high - step * 1e-9:
        ticks.append(round(start + len(ticks) * step, 12))
    return ticks


def tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10000 or abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.6g}"


def _span(points: Sequence[ChartPoint]) -> tuple[float, float]:
    values = [p.value for p in points]
    values += [p.ci_low for p in points if p.ci_low is not None]
    values += [p.ci_high for p in points if p.ci_high is not None]
    finite = [v for v in values if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (0.0, 1.0)


def line_chart(
    points: Sequence[ChartPoint],
    *,
    title: str,
    y_label: str = "",
    x_label: str = "run",
    x_ticks: Sequence[str] | None = None,
    markers: Sequence[ChartMarker] = (),
    width: int = 640,
    height: int = 260,
    css_class: str = "chart",
) -> Markup:
    """An SVG line chart of `points` in order, with `markers` over some of them."""
    left, right, top, bottom = (56, 16, 14, 40) if width >= 400 else (40, 8, 10, 30)
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(*_span(points), count=5 if height >= 200 else 3)
    y0, y1 = ticks[0], ticks[-1]
    n = len(points)

    def x_at(i: int) -> float:
        return left + (plot_w / 2 if n <= 1 else plot_w * i / (n - 1))

    def y_at(v: float) -> float:
        return top + plot_h - (v - y0) / ((y1 - y0) or 1.0) * plot_h

    out: list[str] = []
    summary = f"{title}: {n} point{'s' if n != 1 else ''}"
    if markers:
        summary += f", {len(markers)} alert{'s' if len(markers) != 1 else ''}"
    out.append(
        f'<svg class="{escape(css_class)}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"<title>{escape(summary)}</title>"
    )
    # Axes and grid.
    out.append(
        f'<g class="axis y-axis"><line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>'
    )
    for t in ticks:
        y = y_at(t)
        out.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(tick_label(t))}</text>"
        )
    out.append("</g>")
    out.append(
        f'<g class="axis x-axis"><line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/>'
    )
    labels = list(x_ticks) if x_ticks is not None else [str(i + 1) for i in range(n)]
    every = max(1, math.ceil(n / (8 if width >= 400 else 4)))
    for i in range(0, n, every):
        x = x_at(i)
        label = labels[i] if i < len(labels) else str(i + 1)
        out.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}"/>'
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    out.append("</g>")
    if x_label:
        out.append(
            f'<text class="axis-label" x="{left + plot_w / 2:.1f}" y="{height - 4}" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
    if y_label:
        out.append(
            f'<text class="axis-label" x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
        )
    # Intervals, the line, the points.
    for i, p in enumerate(points):
        if p.ci_low is not None and p.ci_high is not None:
            x = x_at(i)
            out.append(
                f'<line class="interval" x1="{x:.1f}" y1="{y_at(p.ci_low):.1f}" x2="{x:.1f}" '
                f'y2="{y_at(p.ci_high):.1f}"/>'
            )
    if n > 1:
        path = " ".join(f"{x_at(i):.1f},{y_at(p.value):.1f}" for i, p in enumerate(points))
        out.append(f'<polyline class="line" fill="none" points="{path}"/>')
    for i, p in enumerate(points):
        dot = (
            f'<circle class="point" cx="{x_at(i):.1f}" cy="{y_at(p.value):.1f}" r="3.5">'
            f"<title>{escape(p.title)}</title></circle>"
        )
        if p.href:
            dot = f'<a href="{escape(p.href)}">{dot}</a>'
        out.append(dot)
    # Alerts: a triangle above the point, distinct from the points in shape and colour.
    for m in markers:
        if not 0 <= m.index < n:
            continue
        x, y = x_at(m.index), y_at(points[m.index].value) - 12
        out.append(
            f'<path class="alert-marker {escape(m.kind)}" data-kind="{escape(m.kind)}" '
            f'd="M{x - 6:.1f},{y - 5:.1f} L{x + 6:.1f},{y - 5:.1f} L{x:.1f},{y + 6:.1f} Z">'
            f"<title>{escape(m.title)}</title></path>"
        )
    out.append("</svg>")
    return Markup("".join(out))
