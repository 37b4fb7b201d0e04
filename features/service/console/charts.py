"""Plain SVG charts made on the server: bars over time (stacked series) and horizontal share
bars. No script and no library: the SVG is part of the page, prints as it shows, and each bar
carries its number (``data-k``/``data-v``, see :mod:`.render`) and a tooltip (``<title>``).
Colours are CSS classes (``s0`` … ``s7``, ``good``/``warn``/``bad``) defined in console.css.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from features.service.console.render import exact, human

PALETTE_SIZE = 8


@dataclass(frozen=True)
class Series:
    name: str  # legend text
    key: str  # its part of each bar's data-k
    values: Sequence[float]
    css: str = "s0"


def compact(value: float) -> str:
    """Axis labels: 950, 1.2k, 3.4M."""
    v = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= limit:
            return f"{value / limit:.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{value:.0f}" if v >= 10 or value == int(value) else f"{value:.2f}"


def _legend(series: Sequence[Series]) -> Markup:
    items = Markup("").join(
        Markup('<li><i class="{}"></i>{}</li>').format(s.css, s.name) for s in series
    )
    return Markup('<ul class="legend">{}</ul>').format(items)


def bars(
    labels: Sequence[str],
    keys: Sequence[str],
    series: Sequence[Series],
    *,
    key_prefix: str,
    title: str,
    unit: str = "",
    width: int = 1000,
    height: int = 190,
    ticks: int = 4,
    stacked: bool = True,
) -> Markup:
    """Vertical bars, one slot per label; series stacked, or side by side in the slot
    (``stacked=False``, for series of different kinds). A bar of value 0 is not drawn."""
    n = len(labels)
    left, right, top, bottom = 44, 8, 8, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    if stacked:
        peak = max((sum(s.values[i] for s in series) for i in range(n)), default=0.0)
    else:
        peak = max((max(s.values, default=0.0) for s in series), default=0.0)
    peak = peak or 1.0
    slot = plot_w / max(n, 1)
    gap = 1.0 if slot > 4 else 0.0
    width_each = (slot - gap) / (1 if stacked else max(len(series), 1))
    parts: list[Markup] = []
    for frac in (0.0, 0.5, 1.0):  # grid and y labels
        y = top + plot_h * (1 - frac)
        parts.append(
            Markup(
                '<line class="grid" x1="{}" x2="{}" y1="{:.1f}" y2="{:.1f}"/>'
                '<text class="axis" x="{}" y="{:.1f}" text-anchor="end">{}</text>'
            ).format(left, width - right, y, y, left - 4, y + 3, compact(peak * frac))
        )
    for i in range(n):
        base = 0.0
        for j, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y = top + plot_h * (1 - (base + value) / peak)
            x = left + i * slot + gap / 2 + (0 if stacked else j * width_each)
            if stacked:
                base += value
            parts.append(
                Markup(
                    '<rect class="{}" x="{:.2f}" y="{:.2f}" width="{:.2f}" height="{:.2f}" '
                    'data-k="{}" data-v="{}"><title>{} · {}: {}{}</title></rect>'
                ).format(
                    s.css,
                    x,
                    y,
                    max(width_each, 0.5),
                    max(h, 0.5),
                    f"{key_prefix}.{keys[i]}.{s.key}",
                    exact(value),
                    labels[i],
                    s.name,
                    human(value, "int" if float(value).is_integer() else "float"),
                    f" {unit}" if unit else "",
                )
            )
    step = max(1, n // ticks) if n else 1
    for i in range(0, n, step):  # x labels
        parts.append(
            Markup('<text class="axis" x="{:.1f}" y="{}" text-anchor="start">{}</text>').format(
                left + i * slot, height - 6, labels[i]
            )
        )
    svg = Markup(
        '<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{t}" '
        'preserveAspectRatio="xMinYMin meet">{body}</svg>'
    ).format(w=width, h=height, t=title, body=Markup("").join(parts))
    return Markup('<figure class="chart"><figcaption>{}</figcaption>{}{}</figure>').format(
        title, svg, _legend(series) if len(series) > 1 else Markup("")
    )


@dataclass(frozen=True)
class ShareBar:
    label: str
    key: str
    share: float | None  # 0..1
    css: str = "s0"
    note: str = ""


def share_bars(
    rows: Sequence[ShareBar], *, key_prefix: str, title: str, width: int = 1000
) -> Markup:
    """Horizontal bars of shares in [0, 1], one row each, the share written at the end."""
    row_h, label_w, value_w = 20, 200, 70
    bar_w = width - label_w - value_w
    height = row_h * len(rows) + 4
    parts: list[Markup] = []
    for i, r in enumerate(rows):
        y = 2 + i * row_h
        share = 0.0 if r.share is None else min(max(r.share, 0.0), 1.0)
        parts.append(
            Markup(
                '<text class="label" x="{}" y="{}" text-anchor="end">{}</text>'
                '<rect class="track" x="{}" y="{}" width="{}" height="{}"/>'
                '<rect class="{}" x="{}" y="{}" width="{:.2f}" height="{}" data-k="{}" '
                'data-v="{}"><title>{}: {}{}</title></rect>'
                '<text class="value" x="{}" y="{}">{}</text>'
            ).format(
                label_w - 6,
                y + 13,
                r.label,
                label_w,
                y + 3,
                bar_w,
                row_h - 6,
                r.css,
                label_w,
                y + 3,
                bar_w * share,
                row_h - 6,
                f"{key_prefix}.{r.key}",
                exact(r.share),
                r.label,
                human(r.share, "share"),
                f" ({r.note})" if r.note else "",
                label_w + bar_w + 6,
                y + 13,
                human(r.share, "share"),
            )
        )
    svg = Markup(
        '<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{t}">{body}</svg>'
    ).format(w=width, h=height, t=title, body=Markup("").join(parts))
    return Markup('<figure class="chart"><figcaption>{}</figcaption>{}</figure>').format(
        escape(title), svg
    )
