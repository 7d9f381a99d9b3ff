"""Charts drawn on the server as inline SVG: no chart library, no script, nothing fetched.

Why not a vendored JavaScript library: the page must be readable without JavaScript, the policy forbids
inline script, and a bar chart of a few dozen numbers is a few rectangles. The SVG uses presentation
attributes only (fill, x, y), which a `style-src 'self'` policy allows, and each bar has a <title> with
its exact value; the page puts the same numbers in a table beside the chart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 220, 64, 48, 16
COLOURS = ("#3b6fd6", "#e08a2c", "#3aa17e", "#b04fc1")


def plain(value: int) -> str:
    return f"{int(value):,}"


def credits_fmt(value: int) -> str:
    """Millicredits as credits for chart labels (whole credits below 10, else no decimals)."""
    whole, milli = divmod(int(value), 1000)
    return f"{whole:,}.{milli:03d}" if whole < 10 else f"{whole:,}"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _ticks(top: int) -> list[int]:
    """Up to five round gridline values from 0 to at least `top`."""
    if top <= 0:
        return [0]
    step = 1
    while top / step > 5:
        for factor in (2, 5, 10):
            if top / (step * factor) <= 5:
                step *= factor
                break
        else:
            step *= 10
    return list(range(0, top + step, step))


def columns(name: str, title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]],
            fmt: Callable[[int], str] = plain) -> str:
    """Vertical bars per label, one bar per series side by side (e.g. platform and BYOK per day)."""
    if not labels:
        return f'<p class="empty" id="{_e(name)}">No usage in this window.</p>'
    top = max([0, *(v for _, values in series for v in values)])
    ticks = _ticks(top)
    scale = (HEIGHT - PAD_BOTTOM - PAD_TOP) / (ticks[-1] or 1)
    slot = (WIDTH - PAD_LEFT) / len(labels)
    bar = max(1.0, slot * 0.8 / len(series))
    parts = [f'<svg id="{_e(name)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>']
    base = HEIGHT - PAD_BOTTOM
    for tick in ticks:
        y = base - tick * scale
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
                     f"{_e(fmt(tick))}</text>")
    every = max(1, len(labels) // 12)  # at most about twelve labels under the axis
    for i, label in enumerate(labels):
        x0 = PAD_LEFT + i * slot + slot * 0.1
        for s, (series_name, values) in enumerate(series):
            value = values[i]
            h = value * scale
            parts.append(f'<rect x="{x0 + s * bar:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{COLOURS[s % len(COLOURS)]}" data-label="{_e(label)}" data-series="{_e(series_name)}"'
                         f' data-value="{int(value)}"><title>{_e(label)} · {_e(series_name)}: '
                         f"{_e(fmt(value))}</title></rect>")
        if i % every == 0:
            parts.append(f'<text x="{x0 + slot * 0.4:.1f}" y="{base + 16}" text-anchor="middle" font-size="10" '
                         f'fill="#333">{_e(label[-12:])}</text>')
    parts.append(_legend(series, base + 36))
    parts.append("</svg>")
    return "".join(parts)


def rows(name: str, title: str, items: Sequence[tuple[str, int]], fmt: Callable[[int], str] = plain) -> str:
    """Horizontal bars, largest first as given (e.g. spend by model or by member)."""
    if not items:
        return f'<p class="empty" id="{_e(name)}">No usage in this window.</p>'
    line, label_w = 22, 230
    height = PAD_TOP + line * len(items) + 8
    top = max([1, *(v for _, v in items)])
    usable = WIDTH - label_w - 120
    parts = [f'<svg id="{_e(name)}" class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>']
    for i, (label, value) in enumerate(items):
        y = PAD_TOP + i * line
        w = value / top * usable
        parts.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end" font-size="12" fill="#333">'
                     f"{_e(label if len(label) <= 34 else label[:33] + '…')}</text>"
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{line - 6}" fill="{COLOURS[0]}" '
                     f'data-label="{_e(label)}" data-value="{int(value)}"><title>{_e(label)}: '
                     f"{_e(fmt(value))}</title></rect>"
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" font-size="11" fill="#555">'
                     f"{_e(fmt(value))}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _legend(series: Sequence[tuple[str, Sequence[int]]], y: int) -> str:
    if len(series) < 2:
        return ""
    out = []
    for s, (series_name, _) in enumerate(series):
        x = PAD_LEFT + s * 140
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{COLOURS[s % len(COLOURS)]}"/>'
                   f'<text x="{x + 14}" y="{y}" font-size="11" fill="#333">{_e(series_name)}</text>')
    return "".join(out)
