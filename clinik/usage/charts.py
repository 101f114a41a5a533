"""Server-rendered SVG charts: geometry here, markup in templates/usage/_*.svg.html.
No JavaScript; colours come from CSS classes (app.css), so dark mode applies; every
mark has a <title> for its exact numbers. Times are UTC (said on every chart)."""

import math
from dataclasses import dataclass, field
from datetime import datetime

from django.utils.formats import number_format

from clinik.usage.queries import Bucket, Range

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 30
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return step * exponent
    return 10 * exponent


def grouped(value: float) -> str:
    """A count with the active locale's thousands separators (83,372), like the
    templates' `floatformat:"g"`; a fraction keeps its shortest form."""
    return number_format(int(value) if value == int(value) else value, force_grouping=True)


def _label(at: datetime, grain: str) -> str:
    return f"{at:%d %b}" if grain == "day" or at.hour == 0 else f"{at:%H:%M}"


def _when(at: datetime, grain: str) -> str:
    return f"{at:%Y-%m-%d}" if grain == "day" else f"{at:%Y-%m-%d %H:%M} UTC"


@dataclass
class Tick:
    y: str
    label: str


@dataclass
class XLabel:
    x: str
    label: str


def _n(value: float) -> str:
    """SVG coordinates with one decimal, formatted here: a template filter per
    number costs more than the rest of the page."""
    return f"{value:.1f}"


@dataclass
class Rect:
    x: str
    y: str
    width: str
    height: str
    css: str
    title: str


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right_edge: int = WIDTH - RIGHT
    baseline: int = TOP + PLOT_H
    tick_x: int = LEFT - 6
    label_y: int = TOP + PLOT_H + 18
    mid_x: int = LEFT + PLOT_W // 2
    mid_y: int = TOP + PLOT_H // 2
    ticks: list[Tick] = field(default_factory=list)
    xlabels: list[XLabel] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    lines: list[tuple[str, list[str], list[tuple[float, float]]]] = field(default_factory=list)
    """(css class, point strings of each unbroken segment, lone points as dots)"""
    empty: bool = True


def _frame(chart: Chart, top_value: float, unit: str, buckets: list[Bucket], rng: Range) -> None:
    for i in range(3):
        value = top_value * i / 2
        shown = f"{grouped(value)}{unit}" if value < 10_000 else f"{value / 1000:g}k{unit}"
        chart.ticks.append(Tick(_n(TOP + PLOT_H - PLOT_H * i / 2), shown))
    n = max(len(buckets), 1)
    every = max(1, math.ceil(n / 8))
    for i, b in enumerate(buckets):
        if i % every == 0:
            chart.xlabels.append(
                XLabel(_n(LEFT + (i + 0.5) * PLOT_W / n), _label(b.start, rng.grain))
            )


def requests_chart(buckets: list[Bucket], rng: Range, *, deliveries: bool = False) -> Chart:
    """Stacked bars per time bucket: success (1xx-3xx), 4xx, 5xx; for webhook delivery
    attempts (`deliveries`): delivered (2xx), 3xx/4xx, 5xx or no answer."""
    chart = Chart()
    top_value = nice_ceiling(max((b.total for b in buckets), default=0))
    _frame(chart, top_value, "", buckets, rng)
    n = max(len(buckets), 1)
    slot = PLOT_W / n
    width = max(slot * 0.8, 1)
    for i, b in enumerate(buckets):
        if not b.total:
            continue
        chart.empty = False
        x = LEFT + i * slot + (slot - width) / 2
        y: float = TOP + PLOT_H
        if deliveries:
            title = (
                f"{_when(b.start, rng.grain)}: {grouped(b.total)} delivery attempts —"
                f" {grouped(b.ok)} delivered, {grouped(b.client_errors)} 3xx/4xx,"
                f" {grouped(b.server_errors)} 5xx or no answer"
            )
        else:
            title = (
                f"{_when(b.start, rng.grain)}: {grouped(b.total)} requests — {grouped(b.ok)} ok,"
                f" {grouped(b.client_errors)} 4xx ({grouped(b.throttled)} rate-limited),"
                f" {grouped(b.server_errors)} 5xx"
            )
        for count, css in ((b.ok, "ok"), (b.client_errors, "c4"), (b.server_errors, "c5")):
            if count:
                height = PLOT_H * count / top_value
                y -= height
                chart.rects.append(Rect(_n(x), _n(y), _n(width), _n(height), css, title))
    return chart


def latency_chart(buckets: list[Bucket], rng: Range) -> Chart:
    """p50, p95 and p99 latency per time bucket, in milliseconds."""
    chart = Chart()
    series = {p: [b.percentile(p) if b.total else None for b in buckets] for p in (50, 95, 99)}
    peak = max((v for values in series.values() for v in values if v is not None), default=0)
    top_value = nice_ceiling(peak)
    _frame(chart, top_value, " ms", buckets, rng)
    n = max(len(buckets), 1)
    for p, values in series.items():
        runs: list[list[tuple[float, float]]] = [[]]
        for i, value in enumerate(values):
            if value is None:
                runs.append([])
                continue
            chart.empty = False
            x = LEFT + (i + 0.5) * PLOT_W / n
            y = TOP + PLOT_H - PLOT_H * min(value, top_value) / top_value
            runs[-1].append((round(x, 1), round(y, 1)))
        segments = [" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1]
        dots = [run[0] for run in runs if len(run) == 1]
        chart.lines.append((f"p{p}", segments, dots))
    return chart
