"""The hierarchy pyramid: files written, one layer per tier, sizes, labels, the summary's rows, and the shares of
customers and of revenue per tier."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from matplotlib.patches import Polygon

from clients import pyramid
from clients.pyramid import TierLayer, draw_pyramid, layer_widths, pyramid_figure, tier_layers, value_by_level
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb

LAYERS = [  # tier, name, customers, share of customers, share of revenue
    TierLayer("strategic", "Strategic", 10, 0.01, 0.31),
    TierLayer("key", "Key", 40, 0.04, 0.25),
    TierLayer("growth", "Growth", 150, 0.15, 0.2),
    TierLayer("core", "Core", 300, 0.30, 0.14),
    TierLayer("standard", "Standard", 500, 0.50, 0.1),
]
PERCENT = re.compile(r"(?:&lt; )?\d[\d.,]* %")


def layer_patches(figure) -> list[Polygon]:
    return [p for axes in figure.axes for p in axes.patches if isinstance(p, Polygon)]


def test_png_and_svg_are_written_with_a_layer_per_tier(tmp_path):
    png = draw_pyramid(LAYERS, tmp_path / "pyramid.png", title="Hierarchy", subtitle="runs/7")
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000

    svg = draw_pyramid(LAYERS, tmp_path / "pyramid.SVG", title="Hierarchy", subtitle="runs/7")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    # Text stays text: every tier name and figure can be found in the file.
    for layer in LAYERS:
        assert re.search(rf">\s*{layer.display_name}\s*<", text), layer.display_name
    assert text.count("% of revenue") == len(LAYERS)
    assert "1.0 % of customers (10)" in text and "31.0 % of revenue" in text and "runs/7" in text
    assert "of value" not in text, "no unlabelled value share"
    # One number format: every share with one decimal.
    assert {re.fullmatch(r"\d+\.\d %", share) is not None for share in PERCENT.findall(text)} == {True}
    # The picture says what its widths and bars encode.
    assert "Layer width: the square root of the tier's customers" in text and "to scale" in text
    # Besides white, the text colours and the customers' bars, each layer has its own colour of the ramp.
    fills = set(re.findall(r"fill: (#[0-9a-f]{6})", text)) - {"#ffffff", pyramid.INK, pyramid.MUTED,
                                                                pyramid.CUSTOMER_BAR}
    assert len(fills) == len(LAYERS)


def test_the_figure_draws_one_trapezoid_per_tier_top_first_widening_downwards():
    figure = pyramid_figure(LAYERS, "t")
    patches = layer_patches(figure)
    assert len(patches) == len(LAYERS)
    # Each polygon's bottom edge half-width, in drawing order (top tier first), widens to the base.
    bottoms = [max(x for x, _ in p.get_xy()) for p in patches]
    heights = [min(y for _, y in p.get_xy()) for p in patches]
    assert heights == sorted(heights, reverse=True), "the top tier is drawn highest"
    assert bottoms == sorted(bottoms) and bottoms[-1] == pytest.approx(1.0)
    # The ramp runs from dark (top) to light (bottom).
    luminance = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b, _ in (p.get_facecolor() for p in patches)]
    assert luminance == sorted(luminance)


def test_widths_follow_the_square_root_of_customers_with_a_visible_floor():
    widths = layer_widths(LAYERS)
    assert widths[-1] == 1.0
    assert widths[2] == pytest.approx(math.sqrt(150 / 500))
    assert widths[1] == pytest.approx(math.sqrt(40 / 500))
    tiny = layer_widths([TierLayer("vip", "VIP", 2, 2e-6, 0.1), TierLayer("rest", "Rest", 999_998, 1.0, 0.9)])
    assert tiny == [pyramid.MIN_WIDTH, 1.0]
    assert layer_widths([TierLayer("a", "A", 0, 0.0)]) == [pyramid.MIN_WIDTH]


def test_long_names_and_unknown_values_still_draw(tmp_path):
    layers = [TierLayer("vip", "Very important platinum accounts of the group", 3, 3e-6),
              TierLayer("rest", "", 999_997, 0.999997)]
    text = draw_pyramid(layers, tmp_path / "p.svg", value_signal="arr_eur").read_text()
    assert text.count("n/a of arr_eur") == 2, "another value signal is named as such; unknown shares say n/a"
    assert "rest" in text, "a layer without a display name shows its tier_id"
    assert "&lt; 0.1 %" in text, "a tiny share does not read as 0 %"


@pytest.mark.parametrize("name", ["pyramid.pdf", "pyramid", "pyramid.png.txt", "pyramid.jpg"])
def test_other_suffixes_are_refused_before_anything_is_drawn(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        draw_pyramid(LAYERS, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_no_layers_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no tiers"):
        draw_pyramid([], tmp_path / "p.png")


def summary() -> pb.HierarchySummary:
    message = pb.HierarchySummary(run="runs/4", total_customers=200)
    shares = {  # tier level -> value_percent per dimension (the four add up to 100 per dimension)
        2: (30.0, 20.0, 10.0, 40.0),
        1: (50.0, 60.0, 70.0, 40.0),
        3: (20.0, 20.0, 20.0, 20.0),
    }
    counts = {1: 10, 2: 40, 3: 150}
    composite_shares = {1: 45.0, 2: 30.0, 3: 25.0}
    # Sent out of order to show the rows come back top tier first.
    for level, tier_id, name in ((2, "key", "Key"), (1, "strategic", "Strategic"), (3, "standard", "")):
        tier = message.tiers.add(tier=common_pb2.TierRef(tier_id=tier_id, level=level, display_name=name),
                                 customers=counts[level], customer_percent=100 * counts[level] / 200)
        for dimension, share in zip((1, 2, 3, 4), shares[level]):
            tier.value_percent.add(dimension=dimension, score=share)
        tier.composite_value_percent = composite_shares[level]
    return message


def test_tier_layers_read_counts_and_shares_top_tier_first():
    layers = tier_layers(summary(), {1: 600.0, 2: 300.0, 3: 100.0})
    assert [layer.tier_id for layer in layers] == ["strategic", "key", "standard"]
    assert [layer.display_name for layer in layers] == ["Strategic", "Key", "standard"]
    assert [layer.customers for layer in layers] == [10, 40, 150]
    assert [layer.customer_share for layer in layers] == pytest.approx([0.05, 0.20, 0.75])
    assert [layer.value_share for layer in layers] == pytest.approx([0.6, 0.3, 0.1])
    assert [layer.composite_share for layer in layers] == pytest.approx([0.45, 0.30, 0.25])


def test_the_value_share_is_revenue_not_the_summed_composite():
    """The old pyramid showed each tier's share of summed 0-100 scores as "% of value": a top tier of 5 % of the
    customers holding 60 % of the revenue read as 45 %. The value share is now the money's."""
    layers = tier_layers(summary(), {1: 600.0, 2: 300.0, 3: 100.0})
    assert layers[0].value_share == pytest.approx(0.6) != pytest.approx(layers[0].composite_share)
    unknown = tier_layers(summary(), None)
    assert all(math.isnan(layer.value_share) for layer in unknown)


def test_revenue_per_tier_joins_the_run_with_the_signal_export():
    # The run lists customers in rank order with their tier levels; the export in id order with revenue.
    result_ids, levels = ["c", "a", "d", "b"], np.array([1, 2, 2, 3], np.int32)
    export_ids = ["a", "b", "c", "d", "new"]  # "new" arrived after the run: not in any tier
    revenue = np.array([[100.0], [np.nan], [1_000.0], [50.0], [7.0]])
    assert value_by_level(result_ids, levels, export_ids, revenue) == {1: 1_000.0, 2: 150.0, 3: 0.0}
    assert value_by_level([], np.empty(0, np.int32), [], np.empty((0, 1))) == {}


def test_layers_from_an_empty_summary_have_no_shares_of_value():
    message = summary()
    message.total_customers = 0
    layers = tier_layers(message, {})
    assert all(math.isnan(layer.value_share) and math.isnan(layer.composite_share) for layer in layers)


def test_a_summary_draws_end_to_end(tmp_path):
    out = draw_pyramid(tier_layers(summary(), {1: 600.0, 2: 300.0, 3: 100.0}), tmp_path / "summary.svg",
                       title="From a summary")
    text = out.read_text()
    assert all(name in text for name in ("Strategic", "Key", "standard", "60.0 % of revenue",
                                         "75.0 % of customers (150)"))
