"""The inline SVG charts of the commitment report's HTML page, built as plain data.

Owns the chart geometry (bars, ticks, labels in pixels) for the four charts of
`broker/templates/commitments.html.j2`: remaining spend by provider and by jurisdiction,
GPUs committed and expiring per week, utilisation per reservation. `broker.reports`
renders them into the page; nothing here touches the store or the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from broker import risk
from broker.risk import CommitmentRisk


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    label: str
    value: str
    cls: str = "bar"
    title: str = ""


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    width: int
    height: int
    bars: list[Bar]
    texts: list[tuple[float, float, str, str]]  # x, y, text, css class
    lines: list[tuple[float, float, float, float, str]]  # x1, y1, x2, y2, css class
    empty: str | None = None


def _short(text: str, most: int) -> str:
    """`text` cut to `most` characters with an ellipsis: a chart's label column has a fixed
    width, and a recorded counterparty may be long (the bar's tooltip keeps it whole)."""
    return text if len(text) <= most else text[: most - 1] + "…"


def hbar_chart(
    chart_id: str, title: str, items: Sequence[tuple[str, Decimal, str]], width: int = 560
) -> Chart:
    """Horizontal bars: (label, share 0..1, value text), one per row."""
    label_w, row_h, pad = 150.0, 26.0, 8.0
    plot_w = width - label_w - 120
    height = int(pad * 2 + row_h * max(1, len(items)))
    bars: list[Bar] = []
    texts: list[tuple[float, float, str, str]] = []
    for i, (label, frac, value) in enumerate(items):
        y = pad + i * row_h
        w = max(1.0, float(frac) * plot_w)
        bars.append(Bar(label_w, y + 4, w, row_h - 8, label, value, title=f"{label}: {value}"))
        texts.append((label_w - 6, y + row_h / 2 + 4, _short(label, 24), "label end"))
        texts.append((label_w + w + 6, y + row_h / 2 + 4, value, "value"))
    return Chart(
        chart_id,
        title,
        width,
        height,
        bars,
        texts,
        [],
        empty=None if items else "No live commitments.",
    )


def spend_chart(chart_id: str, title: str, conc: risk.Concentration) -> Chart:
    items = [
        (s.name, s.spend_share, f"{risk.usd(s.spend)} ({risk.pct(s.spend_share)})")
        for s in conc.shares
    ]
    return hbar_chart(chart_id, title, items)


def cliff_chart(weeks: Sequence[risk.CliffWeek], width: int = 1100) -> Chart:
    left, bottom, top = 48, 36, 14
    height = 240
    plot_h = height - bottom - top
    n = max(1, len(weeks))
    step = (width - left - 10) / n
    peak = max([w.gpus_live for w in weeks] + [Decimal(1)])
    bars: list[Bar] = []
    texts: list[tuple[float, float, str, str]] = []
    lines: list[tuple[float, float, float, float, str]] = []
    base = top + plot_h
    lines.append((left, base, width - 10, base, "axis"))
    for frac in (Decimal("0.5"), Decimal(1)):
        y = base - float(frac) * plot_h
        lines.append((left, y, width - 10, y, "grid"))
        texts.append(
            (left - 6, y + 4, risk.count_text((peak * frac).quantize(Decimal(1))), "tick end")
        )
    for i, w in enumerate(weeks):
        week = f"week of {w.week_start:%Y-%m-%d}"
        expiring = risk.count_text(w.gpus_expiring)
        x = left + i * step + 2
        bw = max(2.0, step - 4)
        live_h = float(w.gpus_live / peak) * plot_h
        bars.append(
            Bar(
                x,
                base - live_h,
                bw,
                live_h,
                week,
                "",
                "live",
                title=f"{week}: {risk.count_text(w.gpus_live)} GPUs committed",
            )
        )
        if w.gpus_expiring:
            h = float(w.gpus_expiring / peak) * plot_h
            cls = "cliff flagged" if w.flagged else "cliff"
            title = (
                f"{week}: {expiring} GPUs expire, {risk.count_text(w.gpus_unreplaced)} unreplaced"
            )
            bars.append(Bar(x, base - h, bw, h, week, expiring, cls, title=title))
            texts.append((x + bw / 2, base - h - 4, expiring, "value middle"))
        if i % 4 == 0:
            texts.append((x + bw / 2, base + 16, f"{w.week_start:%d %b}", "tick middle"))
    return Chart(
        "chart-expiry",
        "GPUs committed (grey) and expiring (orange; red = cliff) per week",
        width,
        height,
        bars,
        texts,
        lines,
        empty=None if any(w.gpus_live for w in weeks) else "No live commitments.",
    )


def utilisation_chart(rows: Sequence[CommitmentRisk], floor: Decimal, width: int = 1100) -> Chart:
    label_w, row_h, pad = 200.0, 24.0, 8.0
    plot_w = width - label_w - 70
    height = int(pad * 2 + row_h * max(1, len(rows)) + 16)
    bars: list[Bar] = []
    texts: list[tuple[float, float, str, str]] = []
    for i, r in enumerate(rows):
        y = pad + i * row_h
        label = r.commitment.label
        texts.append((label_w - 6, y + row_h / 2 + 4, _short(label, 32), "label end"))
        ratio = r.utilisation.ratio
        if ratio is None:
            texts.append((label_w + 4, y + row_h / 2 + 4, "no usage reported", "muted"))
            continue
        w = max(1.0, min(float(ratio), 1.0) * plot_w)
        cls = "bar low" if ratio < floor else "bar ok"
        bars.append(
            Bar(
                label_w,
                y + 4,
                w,
                row_h - 8,
                label,
                risk.pct(ratio),
                cls,
                title=f"{label}: {risk.pct(ratio)} used",
            )
        )
        texts.append((label_w + w + 6, y + row_h / 2 + 4, risk.pct(ratio), "value"))
    fx = label_w + float(floor) * plot_w
    bottom = pad + row_h * max(1, len(rows))
    lines = [(fx, pad, fx, bottom, "floor")]
    texts.append((fx, bottom + 12, f"floor {risk.pct(floor)}", "tick middle"))
    return Chart(
        "chart-utilisation",
        "Utilisation per reservation (used / committed GPU-hours over the reported periods)",
        width,
        height,
        bars,
        texts,
        lines,
        empty=None if rows else "No live commitments.",
    )


__all__ = ["Bar", "Chart", "cliff_chart", "hbar_chart", "spend_chart", "utilisation_chart"]
