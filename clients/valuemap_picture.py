"""`cvh valuemap draw`: the value hierarchy as an icicle, strategies on top, procedures at the bottom.

An icicle reads better than a pyramid or a sunburst here: every node gets a rectangle as wide as the
procedures beneath it, so the four levels line up as rows and each label has a straight, horizontal box.
Each node is shaded by the share of customers that have achieved it (``GetNodeAdoption``); with a customer,
by whether that customer has achieved it (``GetCustomerAdoption``). Drawn with matplotlib's object API, as
clients/pyramid.py draws the customer pyramid.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from clients.pyramid import _metadata, check_suffix
from cvh.adoption.v1 import adoption_service_pb2 as pb

LEVEL_NAMES = ("Strategies", "Initiatives", "Use cases", "Procedures")
ACHIEVED, NOT_ACHIEVED, EDGE, MUTED = "#2c7fb8", "#e6e6e6", "white", "#555555"
CHAR_INCHES = 0.058  # a character of the 7.5 pt labels, about


def label(name: str, inches: float) -> str | None:
    """``name`` in at most two lines of a box ``inches`` wide; None when not even a short word fits."""
    columns = int(inches / CHAR_INCHES)
    if columns < 4:
        return None
    lines = textwrap.wrap(name, columns, break_long_words=False) or [""]
    return "\n".join(lines[:2]) if len(lines) <= 2 else "\n".join([lines[0], textwrap.shorten(
        " ".join(lines[1:]), columns, placeholder="…")])


def icicle_boxes(nodes) -> dict[str, tuple[float, float]]:
    """node key -> (left, width) in units of procedures, children in the version's order under their parent."""
    children: dict[str, list] = {}
    for node in nodes:
        children.setdefault(node.parent_key, []).append(node)
    leaves: dict[str, int] = {}

    def count(node) -> int:
        kids = children.get(node.key, [])
        leaves[node.key] = sum(count(k) for k in kids) if kids else 1
        return leaves[node.key]
    boxes: dict[str, tuple[float, float]] = {}

    def place(node, left: float) -> None:
        boxes[node.key] = (left, leaves[node.key])
        for kid in children.get(node.key, []):
            place(kid, left)
            left += leaves[kid.key]
    left = 0.0
    for root in children.get("", []):
        count(root)
        place(root, left)
        left += leaves[root.key]
    return boxes


def draw_value_map(nodes, shade: dict[str, float], out: str | Path, title: str, subtitle: str,
                   achieved: dict[str, bool] | None = None) -> Path:
    """Draws ``nodes`` (ValueNode, NodeShare or NodeAdoption messages) into ``out`` (.png or .svg): shaded
    by ``shade`` (node key -> share 0..1), or, given ``achieved`` (one customer), achieved or not."""
    fmt = check_suffix(out)
    from matplotlib import colormaps, rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    boxes = icicle_boxes(nodes)
    total = max((left + width for left, width in boxes.values()), default=1.0)
    figure = Figure(figsize=(max(8.0, min(24.0, total * 0.35)), 6.0))
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.09, 0.08, 0.89, 0.78))
    inches_per_unit = figure.get_figwidth() * 0.89 / total
    axes.set_xlim(0, total)
    axes.set_ylim(0, 4)
    axes.axis("off")
    ramp = colormaps["YlGnBu"]
    for node in nodes:
        if node.key not in boxes or not 1 <= node.level <= 4:
            continue
        left, width = boxes[node.key]
        bottom = 4 - node.level
        if achieved is not None:
            color = ACHIEVED if achieved.get(node.key) else NOT_ACHIEVED
        else:
            color = ramp(0.1 + 0.85 * shade.get(node.key, 0.0))
        axes.add_patch(Rectangle((left, bottom), width, 1, facecolor=color, edgecolor=EDGE, linewidth=1.2))
        dark = achieved.get(node.key, False) if achieved is not None else shade.get(node.key, 0.0) > 0.55
        name = label(node.display_name, width * inches_per_unit * 0.9) if node.level < 4 else None
        share = f"{100 * shade.get(node.key, 0.0):.0f} %" if achieved is None and width * inches_per_unit > 0.3 else ""
        text = "\n".join(t for t in (name, share) if t)
        if text:
            axes.text(left + width / 2, bottom + 0.5, text, ha="center", va="center", fontsize=7.5,
                      color="white" if dark else "black")
    for level, name in enumerate(LEVEL_NAMES, start=1):
        axes.text(-total * 0.01, 4.5 - level, name, ha="right", va="center", fontsize=9, color=MUTED)
    figure.text(0.09, 0.95, title, fontsize=13, weight="bold", ha="left", va="top")
    figure.text(0.09, 0.905, subtitle, fontsize=9, color=MUTED, ha="left", va="top")
    out = Path(out)
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "cvh"}):
        figure.savefig(out, format=fmt, dpi=150, facecolor="white", metadata=_metadata(fmt, title))
    return out


def node_achieved(tree: pb.CustomerAdoption) -> dict[str, bool]:
    return {node.key: node.achieved for node in tree.nodes}
