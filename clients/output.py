"""What the command line prints: aligned tables for people, one JSON document for scripts, progress bars."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Sequence

from google.protobuf import json_format
from tqdm import tqdm


def message_dict(message) -> dict:
    """A protobuf message as JSON-ready data, field names as in the proto."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=None, separators=(",", ":"), default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence], right: Sequence[int] = (), indent: str = "") -> None:
    """Columns padded to their widest cell; ``right`` lists columns aligned right (numbers); every line starts
    with ``indent``."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        line = "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print(indent + line.rstrip())
        if n == 0:
            print(indent + "  ".join("-" * w for w in widths))


def number(value: float | None, digits: int = 1) -> str:
    """A score for people: fixed digits, an en dash when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def quantity(value: float) -> str:
    """A signal's value for people: thousands separated, up to two decimals, no exponent below a trillion
    (1,200,000; 0.35; 40)."""
    if not math.isfinite(value) or abs(value) >= 1e12 or (value and abs(value) < 0.01):
        return f"{value:.4g}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


MINOR_UNITS = 100  # minor units to a major one: amounts are read and shown with two decimals


def money(amount_minor: int, currency: str = "") -> str:
    """An amount in minor units as people read it: major units of two decimals ("1,234.50 EUR"), as the tier
    policy's limits and budgets are shown everywhere."""
    return f"{amount_minor / MINOR_UNITS:,.2f} {currency}".rstrip()


def percent(share: float) -> str:
    """A share (0..1) for people, in one format everywhere: one decimal, "< 0.1 %" for a sliver that is
    not nothing, an en dash when unknown."""
    if share is None or math.isnan(share):
        return "–"
    value = 100 * share
    if 0 < value < 0.05:
        return "< 0.1 %"
    return f"{value:.1f} %"


def counted(count: int, noun: str, plural: str = "") -> str:
    """``1 customer``, ``2 customers``, ``10,000 batches``: a count with its noun in the right number."""
    if count == 1:
        return f"1 {noun}"
    return f"{count:,} {plural or _plural(noun)}"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def timestamp(stamp) -> str:
    """A protobuf Timestamp for people, in UTC to the second; an en dash when unset."""
    if not stamp.seconds and not stamp.nanos:
        return "–"
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def progress(total: int | None, description: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A progress bar on stderr (stdout stays clean for --json); hidden when stderr is not a terminal."""
    return tqdm(total=total, desc=description, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr,
                disable=None if enabled else True, leave=True)


def counted_stream(stream, bar: tqdm, rows_of) -> Iterator:
    """``stream``'s messages, advancing ``bar`` by ``rows_of(message)`` each; the first message that states
    the stream's ``total_customers`` sets the bar's total."""
    for message in stream:
        if message.total_customers and bar.total is None:
            bar.total = message.total_customers
        bar.update(rows_of(message))
        yield message


def fail(message: str, code: int = 1) -> int:
    print(f"cvh: {message}", file=sys.stderr)
    return code
