"""The hierarchy drawn customers first: an inverted org chart.

Customers on top, one box per value tier (its customers and share of the revenue); the front line beneath
each tier (the people who own its customers, and how many customers each serves on average); beneath them,
across the whole width, those who support the front line: the customer success managers, the customer
experience managers, and at the bottom the organisation's chief customer officer. Drawn with matplotlib's
object API on a figure of its own, written as PNG or SVG like the pyramid.

    chart = org_chart(tier_layers(summary, sums), owners, csms, cems, org_team)
    draw_org_chart(chart, "hierarchy.svg", title="Customers first")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clients.output import percent
from clients.pyramid import COLORMAP, DARKEST, INK, LIGHTEST, MUTED, TierLayer, _metadata, check_suffix, value_word
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hierarchy_pb

SUPPORT_FILL, LINE = "#e4e7eb", "#9aa5b1"


@dataclass(frozen=True)
class FrontLine:
    """The people owning a tier's customers: how many, and the customers each serves on average."""

    people: int
    customers_each: float


@dataclass(frozen=True)
class OrgChart:
    tiers: Sequence[TierLayer]
    front_line: Sequence[FrontLine]        # one per tier, in the same order
    supporters: Sequence[tuple[str, str]]  # (role in words, who: a count or names), top to bottom


def front_line(layers: Sequence[TierLayer], owners: hierarchy_pb.ListPortfoliosResponse) -> list[FrontLine]:
    """Per tier, from ListPortfolios("owner"): the people with customers in it, and their mean count there."""
    found = []
    for layer in layers:
        counts = [t.figures.customers for p in owners.portfolios for t in p.tiers
                  if t.tier.tier_id == layer.tier_id and t.figures.customers]
        found.append(FrontLine(len(counts), sum(counts) / len(counts) if counts else 0.0))
    return found


def people_words(portfolios: hierarchy_pb.ListPortfoliosResponse) -> str:
    people = len(portfolios.portfolios)
    if not people:
        return "none named"
    each = portfolios.total.customers / people
    return f"{people:,} {'person' if people == 1 else 'people'}, {each:,.0f} customers each on average"


def org_chart_figure(chart: OrgChart, title: str, subtitle: str = "", value_signal: str = "annual_revenue"):
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    n = len(chart.tiers)
    if not n:
        raise ValueError("no tiers to draw")
    rows = 2 + len(chart.supporters)
    width, height = max(10.0, 2.3 * n), 1.3 + 1.1 * rows
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.02, 0.3 / height, 0.96, 1.1 * rows / height))
    axes.set_xlim(0, n)
    axes.set_ylim(0, rows)
    axes.set_axis_off()
    ramp = colormaps[COLORMAP]
    step = (DARKEST - LIGHTEST) / max(1, n - 1)
    word = value_word(value_signal)

    def box(x0, x1, y, text, fill, colour=INK, bold=False):
        axes.add_patch(FancyBboxPatch((x0 + 0.06, y + 0.12), x1 - x0 - 0.12, 0.76, boxstyle="round,pad=0.02",
                                      facecolor=fill, edgecolor="white"))
        axes.text((x0 + x1) / 2, y + 0.5, text, ha="center", va="center", fontsize=10, color=colour,
                  fontweight="bold" if bold else "normal", linespacing=1.2)

    for i, (layer, front) in enumerate(zip(chart.tiers, chart.front_line)):
        fill = ramp(DARKEST - i * step)
        value = "n/a" if math.isnan(layer.value_share) else percent(layer.value_share)
        box(i, i + 1, rows - 1, f"{layer.display_name or layer.tier_id}\n{layer.customers:,} customers "
                                f"({percent(layer.customer_share)})\n{value} of {word}", fill,
            "white" if i < n / 2 else INK, bold=True)
        axes.plot([i + 0.5, i + 0.5], [rows - 1.12, rows - 0.88], color=LINE, linewidth=1)
        served = (f"{front.people:,} front line\n{front.customers_each:,.0f} customers each" if front.people
                  else "no owner named")
        box(i, i + 1, rows - 2, served, SUPPORT_FILL)
    for k, (role, who) in enumerate(chart.supporters):
        y = rows - 3 - k
        axes.plot([n / 2, n / 2], [y + 0.88, y + 1.12], color=LINE, linewidth=1)
        box(0, n, y, f"{role}: {who}", SUPPORT_FILL)
    figure.text(0.02, 1 - 0.25 / height, title, ha="left", va="top", fontsize=15, fontweight="bold", color=INK)
    if subtitle:
        figure.text(0.02, 1 - 0.62 / height, subtitle, ha="left", va="top", fontsize=10, color=MUTED)
    return figure


def draw_org_chart(chart: OrgChart, out: str | Path, *, title: str = "Customers first", subtitle: str = "",
                   value_signal: str = "annual_revenue") -> Path:
    fmt = check_suffix(out)
    from matplotlib import rc_context

    figure = org_chart_figure(chart, title, subtitle, value_signal)
    out = Path(out)
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "cvh"}):
        figure.savefig(out, format=fmt, dpi=150, facecolor="white", metadata=_metadata(fmt, title))
    return out
