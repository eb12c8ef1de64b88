"""The customer hierarchy drawn as a pyramid: one layer per tier, the top tier at the apex.

Each layer is labelled with the tier's name, its share of the customers and its share of the money a
value signal measures (``annual_revenue`` by default): the Pareto story, e.g. "1 % of the customers, 30 %
of the revenue". Layer widths follow the square root of the customers (said so on the picture); the
shares themselves are drawn as bars of honest, linear length beside each layer. The picture is drawn
with matplotlib's object API on a figure of its own (no ``pyplot``, so no global state and no screen),
and written as PNG or SVG.

    sums = value_by_level(run_ids, run_tier_levels, export_ids, revenue)  # see `cvh tiers`: value_sums
    draw_pyramid(tier_layers(summary, sums), "pyramid.png", title="Customer value hierarchy", subtitle="runs/12")
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.output import percent
from clients.tabular import InputError
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hierarchy_pb

SUFFIXES = (".png", ".svg")
DEFAULT_VALUE_SIGNAL = "annual_revenue"

# Width of a layer as a fraction of the widest possible one (the base).
# Widths follow the square root of the customer share: the area of a square grows with its side squared,
# so sqrt keeps a 1 % top tier visible next to a 50 % base (0.14 of the base's width instead of 0.02 when
# linear). Even so, a tier of a handful of customers out of millions would be a hairline, so no layer is
# narrower than MIN_WIDTH. The picture says both under it; the linear share bars carry the exact story.
MIN_WIDTH = 0.12
# Each layer narrows upwards with this slope (half-width lost per unit of height), so stacked layers
# read as a pyramid even though each keeps the width of its own tier.
SIDE_SLOPE = 0.06
LAYER_HEIGHT = 1.0
LAYER_GAP = 0.08
# Sequential ramp, darkest (most valuable) at the apex: sampled from matplotlib's "YlGnBu".
COLORMAP, DARKEST, LIGHTEST = "YlGnBu", 0.92, 0.30
INK, MUTED, CUSTOMER_BAR = "#1f2933", "#616e7c", "#9aa5b1"
FIGURE_WIDTH_IN, HEADER_IN, FOOTER_IN = 12.0, 1.25, 0.6
X_LEFT, X_RIGHT = -1.08, 2.8
# The share bars: x where they start and the length of a 100 % bar, in data units.
BAR_X, BAR_FULL = 1.15, 0.8
# Width of one character of the 12 pt bold labels in data units (11.5 in of axes span 3.88 units; DejaVu
# Sans Bold averages about 0.1 in per character at 12 pt), with a little to spare.
CHAR_WIDTH = 0.04


@dataclass(frozen=True)
class TierLayer:
    """One tier's figures: shares are fractions of the whole (0..1), NaN when unknown.

    ``value_share``: the tier's share of the value signal's total (e.g. of all annual revenue);
    ``composite_share``: its share of the summed composite scores (0-100 each), a different thing, kept
    for the table where it is labelled as such.
    """

    tier_id: str
    display_name: str
    customers: int
    customer_share: float
    value_share: float = math.nan
    composite_share: float = math.nan


def value_word(signal: str) -> str:
    """How labels name the value signal's money: "revenue" for annual_revenue, else the signal's name."""
    return "revenue" if signal == DEFAULT_VALUE_SIGNAL else signal or "no value signal"


def value_by_level(result_ids: Sequence[str], tier_levels: np.ndarray, export_ids: Sequence[str],
                   values: np.ndarray) -> dict[int, float]:
    """The value signal summed per tier level: a run's results (customer id and tier level per row) joined
    with the registry's export of that signal (customer id and value per row; NaN = not observed, counted
    as nothing). Customers the run did not score are left out."""
    level_of = dict(zip(result_ids, np.asarray(tier_levels).tolist()))
    levels = np.fromiter((level_of.get(customer, 0) for customer in export_ids), np.int64, len(export_ids))
    amounts = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(-1), nan=0.0)
    sums = np.bincount(levels, weights=amounts, minlength=1) if len(levels) else np.zeros(1)
    return {level: float(total) for level, total in enumerate(sums) if level}


def tier_layers(summary: hierarchy_pb.HierarchySummary, value_sums: Mapping[int, float] | None = None
                ) -> list[TierLayer]:
    """The tiers of a ``GetHierarchySummary`` answer, top tier first, with each tier's share of the value
    signal from ``value_sums`` (tier level -> sum, see :func:`value_by_level`; None: unknown)."""
    total_value = sum(value_sums.values()) if value_sums else 0.0
    counted = sum(t.customers for t in summary.tiers)
    layers = []
    for tier in sorted(summary.tiers, key=lambda t: t.tier.level or math.inf):
        customer_share = (tier.customer_percent / 100 if summary.total_customers
                          else tier.customers / max(1, counted))
        value = value_sums.get(tier.tier.level, 0.0) / total_value if total_value > 0 else math.nan
        composite = tier.composite_value_percent / 100 if summary.total_customers else math.nan
        layers.append(TierLayer(tier.tier.tier_id, tier.tier.display_name or tier.tier.tier_id, tier.customers,
                                customer_share, value, composite))
    return layers


def layer_widths(layers: Sequence[TierLayer]) -> list[float]:
    """Each layer's width as a fraction of the base width (1.0 for the largest share of customers)."""
    total = sum(max(0, layer.customers) for layer in layers)
    roots = [math.sqrt(max(0, layer.customers) / total) if total else 0.0 for layer in layers]
    widest = max(roots, default=0.0) or 1.0
    return [max(MIN_WIDTH, root / widest) for root in roots]


def check_suffix(out: str | Path) -> str:
    """The picture format named by ``out``'s suffix; an ``InputError`` (a ValueError) for any other."""
    suffix = Path(out).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"cannot draw the pyramid as {Path(out).name!r}: name the file .png or .svg")
    return suffix[1:]


def pyramid_figure(layers: Sequence[TierLayer], title: str = "Customer value hierarchy", subtitle: str = "",
                   value_signal: str = DEFAULT_VALUE_SIGNAL):
    """A matplotlib ``Figure`` of the pyramid (not attached to pyplot)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon, Rectangle

    if not layers:
        raise ValueError("no tiers to draw")
    n = len(layers)
    widths = layer_widths(layers)
    word = value_word(value_signal)
    # Inches: a header for the title, a footer for the note, 0.85 in per layer between them.
    height = HEADER_IN + FOOTER_IN + 0.85 * n
    figure = Figure(figsize=(FIGURE_WIDTH_IN, height))
    FigureCanvasAgg(figure)
    # Data units: the base spans x = -1..1; the figures live in the column right of x = 1.15.
    axes = figure.add_axes((0.02, FOOTER_IN / height, 0.96, 0.85 * n / height))
    axes.set_xlim(X_LEFT, X_RIGHT)
    axes.set_ylim(-LAYER_GAP, n * LAYER_HEIGHT)
    axes.set_axis_off()

    ramp = colormaps[COLORMAP]
    step = (DARKEST - LIGHTEST) / max(1, n - 1)
    for i, (layer, width) in enumerate(zip(layers, widths)):
        bottom = (n - 1 - i) * LAYER_HEIGHT
        top = bottom + LAYER_HEIGHT - LAYER_GAP
        half_bottom = width
        half_top = max(width - SIDE_SLOPE * 2, width * 0.55) if i else width * 0.35
        fill = ramp(DARKEST - i * step)
        axes.add_patch(Polygon([(-half_bottom, bottom), (half_bottom, bottom), (half_top, top), (-half_top, top)],
                               closed=True, facecolor=fill, edgecolor="white", linewidth=1.0))
        middle = (bottom + top) / 2
        red, green, blue = to_rgb(fill)
        on_fill = "white" if 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.55 else INK
        # The name goes inside the layer when it fits on at most two lines, otherwise left of the layer,
        # wrapped to the room there.
        name = layer.display_name or layer.tier_id
        inside = _wrap(name, 2 * half_top * 0.92)
        if inside is not None:
            axes.text(0, middle, inside, ha="center", va="center", color=on_fill, fontsize=12, fontweight="bold",
                      linespacing=1.1)
        else:
            outside = _wrap(name, -half_bottom - 0.04 - X_LEFT, ellipsis=True)
            axes.text(-half_bottom - 0.04, middle, outside, ha="right", va="center", color=INK, fontsize=12,
                      fontweight="bold", linespacing=1.1)
        # A faint leader from the layer's edge to its figures keeps narrow top layers tied to their labels.
        edge = (half_bottom + half_top) / 2
        axes.plot([edge + 0.03, BAR_X - 0.03], [middle, middle], color="#cbd2d9", linewidth=0.8,
                  linestyle=(0, (1, 2)))
        # Two bars of linear length: the tier's share of the value (in its layer's colour) over its share of
        # the customers (grey), each with its figure.
        value = ("n/a" if math.isnan(layer.value_share) else percent(layer.value_share)) + f" of {word}"
        customers = f"{percent(layer.customer_share)} of customers ({layer.customers:,})"
        for y, share, colour, text, style in (
                (middle + 0.2, layer.value_share, fill, value, {"fontweight": "bold", "color": INK}),
                (middle - 0.2, layer.customer_share, CUSTOMER_BAR, customers, {"color": MUTED})):
            length = 0.0 if math.isnan(share) else BAR_FULL * max(0.0, min(1.0, share))
            axes.add_patch(Rectangle((BAR_X, y - 0.13), length, 0.26, facecolor=colour, edgecolor="none"))
            axes.text(BAR_X + length + 0.03, y, text, ha="left", va="center", fontsize=11, **style)

    figure.text(0.03, 1 - 0.3 / height, title, ha="left", va="top", fontsize=16, fontweight="bold", color=INK)
    if subtitle:
        figure.text(0.03, 1 - 0.72 / height, subtitle, ha="left", va="top", fontsize=11, color=MUTED)
    figure.text(0.03, 0.1 / height,
                f"Bars: each tier's share of all {word} ({value_signal}, coloured) and of all customers (grey), "
                f"to scale.\nLayer width: the square root of the tier's customers, narrowest layers widened to "
                f"stay visible; not to scale.", ha="left", va="bottom", fontsize=8.5, color=MUTED, linespacing=1.3)
    return figure


def draw_pyramid(layers: Sequence[TierLayer], out: str | Path, *, title: str = "Customer value hierarchy",
                 subtitle: str = "", value_signal: str = DEFAULT_VALUE_SIGNAL) -> Path:
    """Draws the pyramid into ``out``: PNG or SVG by its suffix. Returns the path written."""
    fmt = check_suffix(out)
    from matplotlib import rc_context

    figure = pyramid_figure(layers, title, subtitle, value_signal)
    out = Path(out)
    # Text stays text in SVG (searchable, selectable, smaller) instead of glyph outlines.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "cvh"}):
        figure.savefig(out, format=fmt, dpi=150, facecolor="white", metadata=_metadata(fmt, title))
    return out


def _wrap(name: str, room: float, ellipsis: bool = False) -> str | None:
    """``name`` wrapped to ``room`` data units: one line, or two where a line holds 16 characters or more.
    None when it does not fit; with ``ellipsis`` it always fits, cut short with "…" if need be."""
    columns = int(room / CHAR_WIDTH)
    if ellipsis:
        columns = max(columns, 8)
    elif columns < 3:
        return None
    lines = textwrap.wrap(name, columns, break_long_words=ellipsis) or [""]
    if len(lines) == 1 or (len(lines) == 2 and columns >= 16):
        return "\n".join(lines)
    if not ellipsis:
        return None
    return "\n".join([lines[0], textwrap.shorten(" ".join(lines[1:]), columns, placeholder="…")])


def _metadata(fmt: str, title: str) -> dict:
    # No creation date in the file, so the same hierarchy draws the same bytes.
    return {"Title": title, "Date": None} if fmt == "svg" else {"Title": title}
