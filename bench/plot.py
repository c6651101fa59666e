"""The plan curve as an SVG line chart: runs/s against history size, one panel per backend,
one line per system (runner, the offset-paging ceiling, the keyset ceiling, the recipe). No plotting library: a
few dozen SVG elements, written beside RESULTS.md by the harness."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

#: (system, colour, dash pattern) in legend order.
SERIES = (
    ("runner-plan", "#1f77b4", ""),
    ("ceiling", "#d62728", "6 4"),
    ("ceiling-keyset", "#2ca02c", "1 3"),
    ("recipe", "#7f7f7f", "2 3"),
)
PANEL_W, PANEL_H, MARGIN = 420, 300, 56


def curve_svg(points: Sequence[tuple[str, str, int, float]]) -> str:
    """``points``: (backend, system, history size, runs/s)."""
    backends = sorted({p[0] for p in points})
    sizes = sorted({p[2] for p in points})
    top = max((p[3] for p in points), default=1.0) * 1.1 or 1.0
    low, high = math.log10(min(sizes)), math.log10(max(sizes))
    span = (high - low) or 1.0
    width = MARGIN + len(backends) * (PANEL_W + MARGIN)
    height = PANEL_H + 2 * MARGIN + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for index, backend in enumerate(backends):
        left = MARGIN + index * (PANEL_W + MARGIN)

        def x(size: int, left: int = left) -> float:
            return left + (math.log10(size) - low) / span * PANEL_W

        def y(rate: float) -> float:
            return MARGIN + PANEL_H - rate / top * PANEL_H

        out.append(
            f'<text x="{left + PANEL_W / 2}" y="{MARGIN - 16}" text-anchor="middle"'
            f' font-weight="bold">{escape(backend)}</text>'
        )
        out.append(
            f'<rect x="{left}" y="{MARGIN}" width="{PANEL_W}" height="{PANEL_H}"'
            ' fill="none" stroke="#999"/>'
        )
        for tick in range(5):
            rate = top * tick / 4
            out.append(
                f'<text x="{left - 6}" y="{y(rate) + 4:.1f}" text-anchor="end">{rate:.0f}</text>'
            )
        for size in sizes:
            out.append(
                f'<text x="{x(size):.1f}" y="{MARGIN + PANEL_H + 16}" text-anchor="middle">'
                f"{size:,}</text>"
            )
        out.append(
            f'<text x="{left + PANEL_W / 2}" y="{MARGIN + PANEL_H + 34}" text-anchor="middle">'
            "runs in the history (log scale)</text>"
        )
        out.append(
            f'<text x="{left - 44}" y="{MARGIN + PANEL_H / 2}" text-anchor="middle"'
            f' transform="rotate(-90 {left - 44} {MARGIN + PANEL_H / 2})">runs/s planned</text>'
        )
        for system, colour, dash in SERIES:
            line = sorted((p[2], p[3]) for p in points if p[0] == backend and p[1] == system)
            if not line:
                continue
            path = " ".join(f"{x(n):.1f},{y(r):.1f}" for n, r in line)
            dashed = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}"'
                f' stroke-width="2"{dashed}/>'
            )
            for n, r in line:
                out.append(f'<circle cx="{x(n):.1f}" cy="{y(r):.1f}" r="3" fill="{colour}"/>')
    legend_y = height - 14
    for index, (system, colour, dash) in enumerate(SERIES):
        left = MARGIN + index * 190
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        label = {
            "runner-plan": "runner plan (keyset)",
            "ceiling": "ceiling (raw httpx, offset)",
            "ceiling-keyset": "ceiling (raw httpx, keyset)",
            "recipe": "recipe (SDK, offset)",
        }[system]
        out.append(
            f'<line x1="{left}" y1="{legend_y - 4}" x2="{left + 30}" y2="{legend_y - 4}"'
            f' stroke="{colour}" stroke-width="2"{dashed}/>'
        )
        out.append(f'<text x="{left + 36}" y="{legend_y}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
