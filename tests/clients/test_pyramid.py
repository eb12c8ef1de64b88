"""The hierarchy pyramid: files written, one layer per tier, sizes, labels, and the summary's rows."""

from __future__ import annotations

import math
import re

import pytest
from matplotlib.patches import Polygon

from clients import pyramid
from clients.pyramid import TierLayer, draw_pyramid, layer_widths, layers_from_summary, pyramid_figure
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as pb

LAYERS = [
    TierLayer("strategic", "Strategic", 10, 0.031, 0.01),
    TierLayer("key", "Key", 40, 0.096, 0.04),
    TierLayer("growth", "Growth", 150, 0.23, 0.15),
    TierLayer("core", "Core", 300, 0.33, 0.30),
    TierLayer("standard", "Standard", 500, 0.313, 0.50),
]


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
    assert text.count("of value") == len(LAYERS)
    assert "10 customers (1.0 %)" in text and "3.1 % of value" in text and "runs/7" in text
    # Besides white and the two text colours, each layer has its own colour of the ramp.
    fills = set(re.findall(r"fill: (#[0-9a-f]{6})", text)) - {"#ffffff", pyramid.INK, pyramid.MUTED}
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
    tiny = layer_widths([TierLayer("vip", "VIP", 2, 0.1, 2e-6), TierLayer("rest", "Rest", 999_998, 0.9, 1.0)])
    assert tiny == [pyramid.MIN_WIDTH, 1.0]
    assert layer_widths([TierLayer("a", "A", 0, math.nan, 0.0)]) == [pyramid.MIN_WIDTH]


def test_long_names_and_unknown_values_still_draw(tmp_path):
    layers = [TierLayer("vip", "Very important platinum accounts of the group", 3, math.nan, 3e-6),
              TierLayer("rest", "", 999_997, math.nan, 0.999997)]
    text = draw_pyramid(layers, tmp_path / "p.svg").read_text()
    assert text.count("value n/a") == 2
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


def test_layers_from_summary_reads_counts_shares_and_order():
    layers = layers_from_summary(summary())
    assert [layer.tier_id for layer in layers] == ["strategic", "key", "standard"]
    assert [layer.display_name for layer in layers] == ["Strategic", "Key", "standard"]
    assert [layer.customers for layer in layers] == [10, 40, 150]
    assert [layer.customer_share for layer in layers] == pytest.approx([0.05, 0.20, 0.75])
    assert [layer.value_share for layer in layers] == pytest.approx([0.45, 0.30, 0.25])


def test_layers_from_an_empty_summary_have_no_value_share():
    message = summary()
    message.total_customers = 0
    assert all(math.isnan(layer.value_share) for layer in layers_from_summary(message))


def test_a_summary_draws_end_to_end(tmp_path):
    out = draw_pyramid(layers_from_summary(summary()), tmp_path / "summary.svg", title="From a summary")
    text = out.read_text()
    assert all(name in text for name in ("Strategic", "Key", "standard", "45 % of value", "150 customers (75 %)"))
