"""Outcome reports for people: the table `cvh outcomes` prints and the picture `cvh outcomes --out` draws (a panel
per outcome, a line per start tier across the periods; matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

from pathlib import Path

from clients.output import number, percent, quantity
from cvh.scoring.v1 import scoring_service_pb2 as pb

HEADERS = ["tier", "customers", "retained", "GRR", "NRR", "lost", "money lost", "NPS start", "NPS end",
           "promoters", "detractors", "referenc.", "referrals", "adoption Δ", "up/down", "bad profit", "share"]
# (title, value of a TierOutcome or None, formatted as a share?)
PANELS = [
    ("logo retention", lambda t: t.logo_retention if t.HasField("logo_retention") else None, True),
    ("net revenue retention", lambda t: t.net_revenue_retention if t.HasField("net_revenue_retention") else None,
     True),
    ("mean NPS at the end", lambda t: t.nps.mean_end if t.nps.HasField("mean_end") else None, False),
    ("mean referenceability at the end",
     lambda t: t.referenceability.mean_end if t.referenceability.HasField("mean_end") else None, False),
    ("mean adoption at the end", lambda t: t.adoption.mean_end if t.adoption.HasField("mean_end") else None, False),
    ("bad-profit share of money",
     lambda t: t.bad_profit_money_share if t.HasField("bad_profit_money_share") else None, True),
]


def _share(line: pb.TierOutcome, field: str) -> str:
    return percent(getattr(line, field)) if line.HasField(field) else "–"


def _mean(outcome: pb.SignalOutcome, field: str, digits: int = 1) -> str:
    return number(getattr(outcome, field), digits) if outcome.HasField(field) else "–"


def row(name: str, line: pb.TierOutcome) -> list[str]:
    return [name, f"{line.customers:,}", _share(line, "logo_retention"), _share(line, "gross_revenue_retention"),
            _share(line, "net_revenue_retention"), f"{line.customers_lost:,}",
            quantity(line.money_lost) if line.HasField("money_lost") else "–",
            _mean(line.nps, "mean_start"), _mean(line.nps, "mean_end"), _share(line, "promoter_share_end"),
            _share(line, "detractor_share_end"), _mean(line.referenceability, "mean_end", 2),
            number(line.referrals.sum_end, 0) if line.referrals.HasField("sum_end") else "–",
            _mean(line.adoption, "change", 3), f"{line.moved_up:,}/{line.moved_down:,}",
            f"{line.bad_profit_customers:,}", _share(line, "bad_profit_money_share")]


def rows(period: pb.OutcomePeriod) -> list[list[str]]:
    return [*(row(t.tier.display_name or t.tier.tier_id, t) for t in period.tiers), row("all", period.total)]


def title(period: pb.OutcomePeriod) -> str:
    gained = f"; gained {period.customers_gained:,} customers"
    if period.HasField("money_gained"):
        gained += f" bringing {quantity(period.money_gained)}"
    return (f"{period.from_run} ({period.from_model}) -> {period.to_run} ({period.to_model}), per tier of "
            f"{period.from_run}{gained}")


def draw(report: pb.OutcomeReport, out: str | Path) -> None:
    """A PNG: a panel per outcome, a line per start tier (and all customers, dashed) across the periods."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    periods = list(report.periods)
    labels = [p.to_run.removeprefix("runs/") for p in periods]
    figure = Figure(figsize=(13, 7.5), dpi=100)
    FigureCanvasAgg(figure)
    tiers = [t.tier for t in periods[0].tiers] if periods else []
    x = list(range(len(periods)))
    for k, (name, value_of, is_share) in enumerate(PANELS):
        axes = figure.add_subplot(2, 3, k + 1)
        for i, tier in enumerate(tiers):
            values = [_at(p, i, value_of) for p in periods]
            axes.plot(x, [_scaled(v, is_share) for v in values], marker="o", label=tier.display_name or tier.tier_id)
        totals = [_scaled(value_of(p.total), is_share) for p in periods]
        axes.plot(x, totals, marker="s", linestyle="--", color="black", label="all")
        if all(v != v for v in totals):
            axes.text(0.5, 0.5, "no values (see the report's notes)", transform=axes.transAxes, ha="center",
                      color="grey")
        axes.set_title(name + (" (%)" if is_share else ""), fontsize=10)
        axes.set_xticks(x, labels)
        axes.set_xlabel("end run", fontsize=8)
        axes.spines[["top", "right"]].set_visible(False)
        if k == 0:
            axes.legend(frameon=False, fontsize=8)
    first = periods[0].from_run if periods else ""
    figure.suptitle(f"Outcomes per start tier, from {first} over {len(periods)} period(s)")
    figure.tight_layout()
    figure.savefig(out, format="png")


def _at(period: pb.OutcomePeriod, i: int, value_of):
    return value_of(period.tiers[i]) if i < len(period.tiers) and period.tiers[i].customers else None


def _scaled(value, is_share: bool):
    if value is None:
        return float("nan")
    return 100 * value if is_share else value
