"""Server-side SVG charts: one bar per value with its exact number, labels escaped, no script."""

from __future__ import annotations

import re

from proxy.console.charts import _ticks, columns, credits_fmt, rows


def test_columns_draw_one_bar_per_label_and_series_with_its_value() -> None:
    svg = columns("c", "Requests", ["d1", "d2", "d3"], [("platform", [3, 0, 7]), ("BYOK", [1, 2, 0])])
    bars = re.findall(r'data-label="([^"]+)" data-series="([^"]+)" data-value="(\d+)"', svg)
    assert bars == [("d1", "platform", "3"), ("d1", "BYOK", "1"), ("d2", "platform", "0"), ("d2", "BYOK", "2"),
                    ("d3", "platform", "7"), ("d3", "BYOK", "0")]
    assert svg.startswith('<svg id="c" class="chart"') and "<script" not in svg and "style=" not in svg
    heights = [float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', svg)]
    assert heights[0] * 7 == heights[4] * 3  # bars are proportional to their values


def test_rows_and_escaping() -> None:
    svg = rows("r", "By model", [("<m>", 2500), ("b", 0)], credits_fmt)
    assert '<text x="222" y="30" text-anchor="end" font-size="12" fill="#333">&lt;m&gt;</text>' in svg
    assert "2.500</title>" in svg and 'data-value="0"' in svg
    long = rows("l", "t", [("x" * 40, 1)])
    assert f">{'x' * 33}…</text>" in long and f'data-label="{"x" * 40}"' in long
    assert columns("e", "t", [], []) == '<p class="empty" id="e">No usage in this window.</p>'
    assert rows("e", "t", []) == '<p class="empty" id="e">No usage in this window.</p>'


def test_ticks_are_round_and_cover_the_top() -> None:
    assert _ticks(0) == [0]
    assert _ticks(3) == [0, 1, 2, 3]
    assert _ticks(7) == [0, 2, 4, 6, 8]
    assert _ticks(4000) == [0, 1000, 2000, 3000, 4000]
    assert _ticks(123_456)[-1] >= 123_456 and len(_ticks(123_456)) <= 6
    assert credits_fmt(1234) == "1.234" and credits_fmt(12_345_678) == "12,345"
