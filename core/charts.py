"""An incident's metric as a picture: a small SVG drawn from data points. Pure: no I/O.

The report and the post-mortem show the alert's metric around the incident (``core/collected.py``)
with the threshold as a dashed line and the alert's start, each action and the close as marked
vertical lines, so a person sees at a glance whether it climbed for an hour or spiked a minute ago::

    chart = Chart(title="node_load1", lines=[Line("instance=app-1", [(t, v), ...])], threshold=2.0,
                  marks=[Mark(t0, "alert started", "start"), Mark(t1, "A1", "action"), Mark(t2, "closed", "close")])
    markdown_image(chart, "node_load1 around the incident")   # into a Prefect markdown artifact
    svg_bytes(chart)                                          # a file to upload (Slack)

Why SVG written by hand rather than a plotting library: a line chart with a threshold and a few
marks is a hundred lines of text, and a library that earns its weight here (matplotlib and numpy,
some 40 MB) would add a heavy import to every response run for that. The Prefect UI shows a markdown
image whose source is a ``data:image/svg+xml;base64,...`` URI; an inline ``<svg>`` is split by its
markdown renderer and sanitised down to an empty element (seen in a real browser, kept as a test:
``tests/test_collected_at_close.py``). Every text in the picture (series labels, marks) is escaped:
label values are metric text.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Literal, Sequence
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 760, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 46, 64
FONT = 'font-family="Helvetica, Arial, sans-serif" font-size="11"'
TITLE_FONT = 'font-family="Helvetica, Arial, sans-serif" font-size="13" font-weight="bold"'
SERIES_COLOURS = ("#1f77b4", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939")
MARK_COLOURS = {"start": "#e67e22", "action": "#8e44ad", "close": "#2ca02c", "end": "#555555"}
THRESHOLD_COLOUR = "#d62728"
MAX_LINES = len(SERIES_COLOURS)
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)

MarkKind = Literal["start", "action", "close", "end"]


@dataclass(frozen=True)
class Line:
    """One series: a label (its distinguishing labels) and (unix seconds, value) points in time order."""

    label: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Mark:
    """A moment on the time axis: the alert's start, an action, the close (or escalation)."""

    at: float
    label: str
    kind: MarkKind


@dataclass(frozen=True)
class Chart:
    """What to draw. ``start``/``end`` fix the time axis (else the data's); points further apart
    than ``gap_s`` are not joined (Prometheus had nothing in between)."""

    title: str
    lines: Sequence[Line] = ()
    threshold: float | None = None
    marks: Sequence[Mark] = ()
    start: float | None = None
    end: float | None = None
    gap_s: float | None = None
    more_series: int = 0  # series left out of the picture (more than MAX_LINES)
    subtitle: str = field(default="")


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def _short(value: float) -> str:
    """A tick label: 4 significant figures, with k/M/G for large numbers."""
    for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.4g}{suffix}"
    return f"{value:.4g}"


def _nice_step(span: float, count: int = 5) -> float:
    raw = span / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _value_range(chart: Chart) -> tuple[float, float]:
    values = [v for line in chart.lines for _, v in line.points if math.isfinite(v)]
    if chart.threshold is not None and math.isfinite(chart.threshold):
        values.append(chart.threshold)
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return (0.0 if low >= 0 and low - pad < 0 else low - pad), high + pad


def _time_range(chart: Chart) -> tuple[float, float]:
    times = [t for line in chart.lines for t, _ in line.points] + [m.at for m in chart.marks]
    start = chart.start if chart.start is not None else min(times, default=0.0)
    end = chart.end if chart.end is not None else max(times, default=start + 60)
    return (start, end) if end > start else (start, start + 60)


def _time_ticks(start: float, end: float) -> tuple[list[float], str]:
    step = next((s for s in _TIME_STEPS if (end - start) / s <= 7), _TIME_STEPS[-1])
    first = math.ceil(start / step) * step
    ticks = [first + i * step for i in range(int((end - first) // step) + 1)]
    return ticks, ("%H:%M" if step >= 60 else "%H:%M:%S")


def svg(chart: Chart, width: int = WIDTH, height: int = HEIGHT) -> str:
    """The chart as an SVG document (text)."""
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    t0, t1 = _time_range(chart)
    low, high = _value_range(chart)

    def x(t: float) -> float:
        return round(LEFT + (min(max(t, t0), t1) - t0) / (t1 - t0) * plot_w, 1)

    def y(v: float) -> float:
        return round(TOP + (high - min(max(v, low), high)) / (high - low) * plot_h, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_attr(chart.title)}">',
           f"<title>{escape(chart.title)}</title>",
           f'<rect class="background" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="16" {TITLE_FONT} fill="#222">{escape(chart.title[:110])}</text>']
    if chart.subtitle:
        out.append(f'<text x="{LEFT}" y="30" {FONT} fill="#555">{escape(chart.subtitle[:120])}</text>')
    out.append(f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>')
    step = _nice_step(high - low)
    tick = math.ceil(low / step) * step
    for _ in range(12):  # a nice step gives 4 to 6 ticks; bounded all the same
        if tick > high + 1e-9 * abs(high or 1):
            break
        out.append(f'<line x1="{LEFT}" y1="{y(tick)}" x2="{LEFT + plot_w}" y2="{y(tick)}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(tick) + 4}" {FONT} text-anchor="end" '
                   f'fill="#444">{escape(_short(tick))}</text>')
        tick += step
    ticks, fmt = _time_ticks(t0, t1)
    for t in ticks:
        label = datetime.fromtimestamp(t, timezone.utc).strftime(fmt)
        out.append(f'<line x1="{x(t)}" y1="{TOP + plot_h}" x2="{x(t)}" y2="{TOP + plot_h + 4}" stroke="#888"/>')
        out.append(f'<text x="{x(t)}" y="{TOP + plot_h + 16}" {FONT} text-anchor="middle" fill="#444">{label}</text>')
    out.append(f'<text x="{LEFT + plot_w}" y="{TOP + plot_h + 30}" {FONT} text-anchor="end" fill="#888">UTC</text>')
    if chart.threshold is not None and math.isfinite(chart.threshold):
        ty = y(chart.threshold)
        out.append(f'<line class="threshold" x1="{LEFT}" y1="{ty}" x2="{LEFT + plot_w}" y2="{ty}" '
                   f'stroke="{THRESHOLD_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{LEFT + plot_w - 4}" y="{ty - 4}" {FONT} text-anchor="end" fill="{THRESHOLD_COLOUR}">'
                   f'threshold {escape(_short(chart.threshold))}</text>')
    for i, line in enumerate(chart.lines[:MAX_LINES]):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        for run in _runs(line.points, chart.gap_s):
            if len(run) == 1:
                t, v = run[0]
                out.append(f'<circle class="series" cx="{x(t)}" cy="{y(v)}" r="2" fill="{colour}"/>')
            else:
                points = " ".join(f"{x(t)},{y(v)}" for t, v in run)
                out.append(f'<polyline class="series" points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
    if not any(line.points for line in chart.lines):
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" {FONT} text-anchor="middle" fill="#888">'
                   "no data in this window</text>")
    out += _marks(chart.marks, x, plot_h)
    out += _legend(chart, height)
    out.append("</svg>")
    return "\n".join(out)


def _runs(points: Sequence[tuple[float, float]], gap_s: float | None) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = []
    for t, v in points:
        if not math.isfinite(v):
            continue
        if runs and (gap_s is None or t - runs[-1][-1][0] <= gap_s):
            runs[-1].append((t, v))
        else:
            runs.append([(t, v)])
    return runs


def _marks(marks: Sequence[Mark], x: Callable[[float], float], plot_h: float) -> list[str]:
    """Vertical lines with their labels above the plot, on up to three rows so that they do not overlap."""
    out: list[str] = []
    row_ends = [-1e9, -1e9, -1e9]
    for mark in sorted(marks, key=lambda m: m.at):
        colour = MARK_COLOURS.get(mark.kind, "#555")
        px = x(mark.at)
        dashes = "" if mark.kind == "action" else ' stroke-dasharray="3 2"'
        out.append(f'<line class="mark mark-{mark.kind}" x1="{px}" y1="{TOP}" x2="{px}" y2="{TOP + plot_h}" '
                   f'stroke="{colour}" stroke-width="1.2"{dashes}/>')
        label = mark.label[:24]
        width = 6.2 * len(label) + 4
        row = next((r for r, end in enumerate(row_ends) if end < px - width / 2), len(row_ends) - 1)
        row_ends[row] = px + width / 2
        anchor = "end" if px + width / 2 > WIDTH - 2 else "start" if px - width / 2 < 2 else "middle"
        out.append(f'<text class="mark-label" x="{px}" y="{TOP - 4 - 11 * row}" {FONT} text-anchor="{anchor}" '
                   f'fill="{colour}">{escape(label)}</text>')
    return out


def _legend(chart: Chart, height: int) -> list[str]:
    out: list[str] = []
    cx, cy = LEFT, height - 14
    for i, line in enumerate(chart.lines[:MAX_LINES]):
        label = line.label if len(line.label) <= 100 else line.label[:99] + "…"
        width = 22 + 6.2 * len(label) + 14
        if cx + width > WIDTH - RIGHT and cx > LEFT:
            break
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        out.append(f'<line x1="{cx}" y1="{cy - 4}" x2="{cx + 16}" y2="{cy - 4}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text class="legend" x="{cx + 20}" y="{cy}" {FONT} fill="#333">{escape(label)}</text>')
        cx += width
    hidden = max(0, len(chart.lines) - MAX_LINES) + chart.more_series
    if hidden:
        out.append(f'<text x="{WIDTH - RIGHT}" y="{cy}" {FONT} text-anchor="end" fill="#888">+{hidden} more series</text>')
    return out


def svg_bytes(chart: Chart) -> bytes:
    """The SVG as UTF-8 bytes: what a file upload (Slack's) takes."""
    return svg(chart).encode("utf-8")


def data_uri(chart: Chart) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg_bytes(chart)).decode("ascii")


def markdown_image(chart: Chart, alt: str) -> str:
    """The chart as a markdown image the Prefect UI displays (a data: URI, see the module doc)."""
    safe_alt = " ".join(alt.replace("[", "(").replace("]", ")").split())[:120]
    return f"![{safe_alt}]({data_uri(chart)})"
