"""A step chart of cumulative epsilon against a cap, as inline SVG rendered on the server.

No script and no styles from elsewhere: the chart is markup with presentation attributes,
a ``<title>`` and ``<desc>`` for screen readers, and a data table beside it in the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["epsilon_chart"]

_WIDTH = 560
_HEIGHT = 220
_PAD_LEFT = 48
_PAD_RIGHT = 16
_PAD_TOP = 16
_PAD_BOTTOM = 36


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def epsilon_chart(
    title: str, points: Sequence[tuple[str, float]], cap: float | None, *, key: str
) -> Markup:
    """SVG of cumulative epsilon after each round or query (``(label, epsilon)``) and the cap.

    ``key`` makes the element ids of the title and description unique in the page. The x
    axis is the order of rounds (labels under the first and last); the y axis runs
    from 0 to the larger of the cap and the largest value. An empty series draws the axes.
    """
    top = max([cap or 0.0, *[eps for _, eps in points], 1e-9])
    plot_w = _WIDTH - _PAD_LEFT - _PAD_RIGHT
    plot_h = _HEIGHT - _PAD_TOP - _PAD_BOTTOM

    def x(i: int) -> float:
        return _PAD_LEFT + (plot_w * i / max(1, len(points) - 1) if len(points) > 1 else 0)

    def y(value: float) -> float:
        return _PAD_TOP + plot_h * (1 - value / top)

    desc = (
        f"{len(points)} rounds or queries; newest epsilon {_fmt(points[-1][1]) if points else '0'}"
    )
    desc += f"; cap {_fmt(cap)}" if cap is not None else "; no cap recorded"
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-labelledby="t-{key} d-{key}" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="t-{key}">{escape(title)}</title>',
        f'<desc id="d-{key}">{escape(desc)}</desc>',
        f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{_PAD_LEFT}" y2="{_PAD_TOP + plot_h}" '
        'stroke="#444" stroke-width="1"/>',
        f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP + plot_h}" x2="{_PAD_LEFT + plot_w}" '
        f'y2="{_PAD_TOP + plot_h}" stroke="#444" stroke-width="1"/>',
        f'<text x="{_PAD_LEFT - 6}" y="{y(top) + 4:.1f}" text-anchor="end" font-size="12" '
        f'fill="#222">{_fmt(top)}</text>',
        f'<text x="{_PAD_LEFT - 6}" y="{y(0) + 4:.1f}" text-anchor="end" font-size="12" '
        'fill="#222">0</text>',
        f'<text x="{_PAD_LEFT + plot_w / 2:.1f}" y="{_HEIGHT - 6}" text-anchor="middle" '
        'font-size="12" fill="#222">rounds and queries, oldest to newest</text>',
    ]
    if cap is not None:
        parts.append(
            f'<line class="cap" x1="{_PAD_LEFT}" y1="{y(cap):.1f}" x2="{_PAD_LEFT + plot_w}" '
            f'y2="{y(cap):.1f}" stroke="#a40000" stroke-width="2" stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{_PAD_LEFT + plot_w - 4}" y="{y(cap) - 6:.1f}" text-anchor="end" '
            f'font-size="12" fill="#a40000">cap {_fmt(cap)}</text>'
        )
    if points:
        path = []
        for i, (_, eps) in enumerate(points):
            if i == 0:
                path.append(f"M{x(0):.1f},{y(0):.1f} L{x(0):.1f},{y(eps):.1f}")
            else:
                path.append(f"L{x(i):.1f},{y(points[i - 1][1]):.1f} L{x(i):.1f},{y(eps):.1f}")
        parts.append(
            f'<path class="spent" d="{" ".join(path)}" fill="none" stroke="#0b4f9c" '
            'stroke-width="2.5"/>'
        )
        for i, (label, eps) in enumerate(points):
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(eps):.1f}" r="3.5" fill="#0b4f9c">'
                f"<title>{escape(label)}: epsilon {_fmt(eps)}</title></circle>"
            )
        parts.append(
            f'<text x="{_PAD_LEFT}" y="{_PAD_TOP + plot_h + 16}" font-size="11" '
            f'fill="#222">{escape(points[0][0])}</text>'
        )
        if len(points) > 1:
            parts.append(
                f'<text x="{_PAD_LEFT + plot_w}" y="{_PAD_TOP + plot_h + 16}" font-size="11" '
                f'text-anchor="end" fill="#222">{escape(points[-1][0])}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text value above is escaped
