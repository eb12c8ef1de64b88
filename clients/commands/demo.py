"""cvh demo: the whole flow on a synthetic customer base, in one command."""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from clients.client import CvhClient, customer_id
from clients.commands.adoption import print_adoption
from clients.commands.common import connect, seed_number, server, whole_number
from clients.commands.hierarchy import picture_file, print_book, print_priority, pyramid_file, tiers_table, value_sums
from clients.commands.outcomes import decision_usages, print_report
from clients.commands.scoring import follow_run
from clients.errors import CvhError
from clients.output import counted, print_json, progress
from clients.pyramid import DEFAULT_VALUE_SIGNAL, tier_layers

MAX_DEMO_CUSTOMERS = 1_000_000  # a demo's base is held in memory whole (16 signals: about 130 MB at the cap)
# The demo's customers carry this label (and ids with this prefix), so that they can be told from a suite's
# own customers and taken out again with `cvh demo --remove`.
DEMO_LABEL = "demo"
DEMO_ID_PREFIX = "demo-"
MAX_BATCH_GET = 1000
REMOVE_CALLS = 4  # deletes in flight at once: each waits for a database write, so a few overlap their round trips
CCO = "cco@example.com"  # the demo's chief customer officer, unless the suite's organisation has one
CSM_ROLE = "customer_success_manager"


def demo(args: argparse.Namespace) -> int:
    run = _remove if args.remove else _demo
    if not args.json:
        return run(args)
    args.summary = {}
    with contextlib.redirect_stdout(io.StringIO()):  # --json: only the summary object is printed
        code = run(args)
    print_json(args.summary)
    return code


def _demo(args: argparse.Namespace) -> int:
    from clients import synthetic

    with _suite(args) as cvh:
        base = synthetic.generate_base(args.customers, seed=args.seed, id_prefix=DEMO_ID_PREFIX)
        own = _own_customers(cvh, base.customer_ids)
        if own:
            print(f"the suite at {server(args)} holds {counted(own, 'customer')} of its own: the demo adds its "
                  f"synthetic customers beside them, labelled {DEMO_LABEL} (`cvh customers list --label "
                  f"{DEMO_LABEL}`), and its scoring run scores yours too; `cvh demo --remove` takes the demo's "
                  "out again\n")
        print(f"1. generated {counted(args.customers, 'synthetic customer')}: skewed revenue, correlated signals, "
              "account trees, every stakeholder role")
        with progress(args.customers, "   importing", unit=" customers", enabled=not args.json) as bar:
            imported = synthetic.import_base(cvh, base, on_progress=lambda done: bar.update(done - bar.n),
                                             labels={DEMO_LABEL: "cvh"})
        print(f"2. imported them through ImportCustomers, labelled {DEMO_LABEL}: {imported.created:,} created, "
              f"{imported.updated:,} updated, {imported.rejected:,} rejected")
        print(f"   with their teams: {_serving_team(cvh, base)}")
        run = follow_run(cvh, cvh.start_run(), enabled=not args.json)
        if run.failure_reason:
            print(f"   the run failed: {run.failure_reason}")
            return 1
        print(f"3. scored them with the default model: {run.name}, {counted(run.customers_total, 'customer')} in "
              f"{run.export_seconds + run.scoring_seconds + run.store_seconds:.1f} s")
        fit = run.lifetime_value
        if fit.customers and not fit.missing_reason:
            print(f"   with predicted lifetime value: BG/NBD and Gamma-Gamma fitted on the purchase histories of "
                  f"{counted(fit.customers, 'customer')} (`cvh run show {run.name.split('/')[-1]}`)")
        cvh.wait_for_snapshot(run.name)
        summary = cvh.get_hierarchy_summary()
        layers = tier_layers(summary, value_sums(cvh, summary.run, DEFAULT_VALUE_SIGNAL))
        print("4. the hierarchy now serves it from memory:\n")
        tiers_table(summary, layers, DEFAULT_VALUE_SIGNAL)
        examples = _examples(cvh, run.name)
        print(f"\n5. what support sees for {counted(len(examples), 'customer')} (`cvh priority ID`):\n")
        for n, priority in enumerate(cvh.batch_get_priority(examples)):
            if n:
                print()
            print_priority(priority)
        step = 6
        book = _busiest_book(cvh, step)
        step += book is not None
        if args.pyramid:
            pyramid_file(summary, layers, Path(args.pyramid))
            print(f"\n{step}. drew the pyramid into {args.pyramid}")
            step += 1
        value_map = _value_they_get(cvh, base, args.seed, examples[-1], step)
        second = _second_run(cvh, base, run, args.seed, step + 1, enabled=not args.json)
        if second is None:
            return 1
        args.summary = {"customers": args.customers, "imported": imported.created + imported.updated,
                        "own_customers": own, "label": DEMO_LABEL, "run": run.name, "examples": examples,
                        "tiers": {t.tier.tier_id: t.customers for t in summary.tiers}, "book": book, **value_map,
                        **second}
        print("\nNext: `cvh tiers`, `cvh customers get ID`, `cvh rank ID ID`, `cvh tree ID`, `cvh portfolios --role "
              f"{CSM_ROLE}`, "
              "`cvh pyramid --out pyramid.png`, `cvh run start --wait` after changing signals, `cvh run moves`, "
              "`cvh valuemap show --tree`, `cvh adoption ID`, `cvh outcomes`, `cvh bad-profits`, `cvh history ID`"
              + (", `cvh demo --remove`." if own else "."))
    return 0


def _serving_team(cvh: CvhClient, base) -> str:
    """The organisation's chief customer officer (unless the suite's organisation has one) and the CSMs'
    capacities, so escalation paths and books of business show people; what was set, in words."""
    from cvh.registry.v1 import registry_service_pb2 as registry_pb

    from clients.synthetic import CUSTOMERS_PER_CSM

    if not cvh.get_organization_team().members:
        cvh.update_organization_team([registry_pb.TeamMember(role="chief_customer_officer", person=CCO,
                                                             display_name="Chief Customer Officer")])
    csms = sorted({person for person in base.team.get(CSM_ROLE, ()) if person})
    for person in csms:
        cvh.update_person(person, capacity=CUSTOMERS_PER_CSM)
    cems = {person for person in base.team.get("customer_experience_manager", ()) if person}
    return (f"an owner each, {counted(len(csms), 'customer success manager')} (capacity {CUSTOMERS_PER_CSM} "
            f"customers each) and {counted(len(cems), 'customer experience manager')} on the top accounts, "
            "inherited below them; the organisation's chief customer officer on top (`cvh org team`)")


def _busiest_book(cvh: CvhClient, step: int) -> str | None:
    """The book of business of the CSM who serves the most customers; their person id (None: no CSM)."""
    portfolios = sorted(cvh.list_portfolios(CSM_ROLE).portfolios, key=lambda p: -p.total.customers)
    if not portfolios:
        return None
    person = portfolios[0].person
    print(f"\n{step}. the busiest customer success manager's book of business (`cvh book {person}`, "
          f"`cvh portfolios --role {CSM_ROLE}`):\n")
    print_book(cvh.get_book_of_business(person, CSM_ROLE), indent="   ")
    return person


def _value_they_get(cvh: CvhClient, base, seed: int, customer: str, step: int) -> dict:
    """The value hierarchy half: the demo's value hierarchy (unless the suite has one of its own), synthetic
    product telemetry for the demo's customers, and one customer's adoption."""
    import time

    from clients import synthetic_adoption

    try:
        active = cvh.get_value_map_version()
    except CvhError as error:
        if error.code != grpc.StatusCode.FAILED_PRECONDITION:  # NO_ACTIVE_VALUE_MAP: none yet
            raise
        active = cvh.create_value_map_version(synthetic_adoption.demo_value_map())
    if active.change_note != synthetic_adoption.CHANGE_NOTE:
        print(f"\n{step}. the suite has a value hierarchy of its own ({active.name}): the demo sends no telemetry "
              "against it")
        return {}
    engagement = base.values[:, list(base.signal_names).index("feature_adoption")]
    recorded = cvh.record_telemetry(synthetic_adoption.telemetry(base.customer_ids, engagement,
                                                                 time.time_ns() // 1000, seed))
    print(f"\n{step}. the value they get: a value hierarchy of 3 strategies, 8 initiatives, 20 use cases and 60 "
          f"procedures ({active.name}, `cvh valuemap show --tree`), fed {recorded.events_kept:,} product events "
          "(daily rows with counts) through RecordTelemetry; a median customer's adoption (`cvh adoption ID`):\n")
    print_adoption(cvh.get_customer_adoption(customer), deepest=3, indent="   ")
    return {"value_map": active.name, "telemetry_events": recorded.events_kept, "adoption_example": customer}


def _second_run(cvh: CvhClient, base, first, seed: int, step: int, enabled: bool) -> dict | None:
    """A period later: a few demo customers churn, a few of the most profitable turn detractors (NPS -40), some
    expand their revenue; a second run, its outcomes against the first and one bad-profit customer's priority."""
    import numpy as np

    from cvh.common.v1 import common_pb2
    from cvh.registry.v1 import registry_service_pb2 as registry_pb

    results = cvh.run_results(first.name)
    ids = np.array(results.customer_ids, dtype=object)
    ours = np.flatnonzero([i.startswith(DEMO_ID_PREFIX) for i in results.customer_ids])
    profit = results.dimension_scores[:, results.dimension_names.index("VALUE_DIMENSION_PROFITABILITY")]
    known = ours[~np.isnan(profit[ours])]
    if len(known) < 20:
        print(f"\n{step}. too few scored demo customers for a second period's outcomes")
        return {}
    rng = np.random.default_rng(seed)
    top = known[profit[known] >= np.quantile(profit[known], 0.75)]
    rest = np.setdiff1d(known, top)
    size = max(3, len(known) // 100)
    detractors = rng.choice(top, min(size, len(top)), replace=False)
    churned = rng.choice(rest, min(size, len(rest) // 2), replace=False)
    grown = rng.choice(np.setdiff1d(rest, churned), min(5 * size, len(rest) // 2), replace=False)
    revenue = base.values[:, list(base.signal_names).index("annual_revenue")]
    row_of = {c: r for r, c in enumerate(base.customer_ids)}
    grown = grown[~np.isnan(revenue[[row_of[c] for c in ids[grown]]])]  # only those with a revenue
    # Signals recorded and stages updated (an import would replace the customers' other fields).
    cvh.record_signals({**{c: {"nps": -40.0} for c in ids[detractors]},
                        **{c: {"annual_revenue": float(revenue[row_of[c]] * 1.3)} for c in ids[grown]}})
    for customer in ids[churned]:
        cvh.update_customer(registry_pb.Customer(name=f"customers/{customer}",
                                                 lifecycle_stage=common_pb2.LIFECYCLE_STAGE_CHURNED),
                            ["lifecycle_stage"])
    recovered = _service_recovery(cvh, ids[detractors])
    print(f"\n{step}. a period later: {counted(len(churned), 'customer')} churned, {len(detractors):,} of the "
          f"most profitable turned detractors (NPS -40), {len(grown):,} expanded their revenue by 30 %; the front "
          f"line recorded {counted(recovered, 'decision')} for the detractors (`cvh decide`)")
    second = follow_run(cvh, cvh.start_run(), enabled=enabled)
    if second.failure_reason:
        print(f"   the second run failed: {second.failure_reason}")
        return None
    cvh.wait_for_snapshot(second.name)
    print(f"   scored again: {second.name}; the outcomes per tier of the first run (`cvh outcomes`):\n")
    report = cvh.get_outcome_report(first.name, second.name)
    print_report(report, indent="   ", usages=decision_usages(cvh, report))
    flagged = next(iter(cvh.list_bad_profits(page_size=1)), None)
    if flagged is None:
        return {"second_run": second.name}
    print("   the bad-profit customer with the most revenue (`cvh bad-profits`, `cvh priority ID`):\n")
    print_priority(cvh.get_priority(flagged.customer))
    return {"second_run": second.name, "churned": len(churned), "detractors": len(detractors),
            "bad_profit_example": customer_id(flagged.customer)}


def _service_recovery(cvh: CvhClient, customers) -> int:
    """The front line's answer to complaints: a goodwill credit of 40.00 in the tier's currency by each detractor's
    owner (beyond a small tier's authority: answered as needing escalation), the last one escalated as well.
    Returns the decisions recorded."""
    from cvh.hierarchy.v1 import hierarchy_service_pb2 as hierarchy_pb

    recorded = 0
    for n, priority in enumerate(cvh.batch_get_priority(list(customers))):
        owner = priority.owner or "front-line@example.com"
        credit = hierarchy_pb.RecordServiceDecisionRequest(
            customer=priority.customer, kind=hierarchy_pb.DECISION_KIND_GOODWILL_CREDIT, amount_minor=4_000,
            currency=priority.policy.authority.currency or "EUR", person=owner, reason="service recovery after a complaint")
        cvh.record_service_decision(credit)
        recorded += 1
        if n == len(customers) - 1:
            cvh.record_service_decision(hierarchy_pb.RecordServiceDecisionRequest(
                customer=priority.customer, kind=hierarchy_pb.DECISION_KIND_ESCALATION, person=owner,
                reason="a complaint the credit did not settle"))
            recorded += 1
    return recorded


def _own_customers(cvh: CvhClient, demo_ids: list[str]) -> int:
    """How many customers the suite holds that are not the demo's; refuses (exit 1) when one of them has an
    id the demo would overwrite."""
    with cvh.export_signal_matrix([DEFAULT_VALUE_SIGNAL], chunk_size=1) as stream:  # its first message counts
        first = next(iter(stream), None)
    total = first.total_customers if first is not None else 0
    if not total:
        return 0
    demo = sum(1 for _ in cvh.list_customers(label=DEMO_LABEL, page_size=1000))
    if total > demo:
        for start in range(0, len(demo_ids), MAX_BATCH_GET):
            found = cvh.batch_get_customers(demo_ids[start:start + MAX_BATCH_GET], allow_missing=True)
            taken = [c.customer_id for c in found if DEMO_LABEL not in c.labels]
            if taken:
                raise SystemExit(f"cvh demo: the suite already holds customers with the demo's ids (e.g. {taken[0]}) "
                                 f"that are not labelled {DEMO_LABEL}; the demo would overwrite them, so it stops "
                                 "here. Run it on a suite of its own: `cvh demo --embedded`.")
    return total - demo


def _remove(args: argparse.Namespace) -> int:
    """Deletes the customers labelled demo, children before their parents: the deepest level first, the
    customers of one level by a few calls at once."""
    with connect(args) as cvh:
        parent_of = {c.customer_id: customer_id(c.parent)
                     for c in cvh.list_customers(label=DEMO_LABEL, page_size=1000)}

        def depth(customer: str) -> int:
            levels = 0
            while (customer := parent_of.get(customer, "")) and levels < 64:
                levels += 1
            return levels
        levels: dict[int, list[str]] = {}
        for customer in parent_of:
            levels.setdefault(depth(customer), []).append(customer)
        order = [customer for level in sorted(levels, reverse=True) for customer in levels[level]]

        def delete(customer: str) -> str | None:
            """The customer when it was kept (a child account of someone else's hangs under it)."""
            try:
                cvh.delete_customer(customer)
            except CvhError as error:
                if error.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return customer
            return None
        kept = []
        with progress(len(order), "removing the demo's customers", unit=" customers", enabled=not args.json) as bar, \
                ThreadPoolExecutor(REMOVE_CALLS) as calls:
            for level in sorted(levels, reverse=True):
                for outcome in calls.map(delete, levels[level]):
                    kept += [outcome] if outcome else []
                    bar.update(1)
    removed = len(order) - len(kept)
    args.summary = {"removed": removed, "kept": kept}
    print(f"removed {counted(removed, 'demo customer')} (labelled {DEMO_LABEL}) from {server(args)}"
          + ("; `cvh run start --wait` scores what is left" if removed else ""))
    if kept:
        print(f"kept {counted(len(kept), 'demo customer')} that now have child accounts of their own, e.g. "
              f"{kept[0]}: `cvh customers list --parent {kept[0]}`")
    return 1 if kept else 0


def _examples(cvh: CvhClient, run: str) -> list[str]:
    """The top customer, the first child account that inherits a better tier, and a median customer."""
    results = cvh.run_results(run)
    ids = results.customer_ids
    chosen = [ids[0], ids[len(ids) // 2]]
    for member in cvh.list_tier_members(results.tiers[-1].tier_id, page_size=200):
        priority = cvh.get_priority(member.customer)
        if priority.effective_tier.level and priority.effective_tier.level < priority.own_tier.level:
            chosen.insert(1, customer_id(member.customer))
            break
    return chosen


@contextlib.contextmanager
def _suite(args: argparse.Namespace):
    """A client to the suite at --server; with --embedded (or nothing listening at the default address and no
    --server given), a suite started in this process on a temporary SQLite database."""
    if not args.embedded:
        cvh = connect(args)
        try:
            cvh.health(timeout=3)
            print(f"using the suite at {server(args)}")
            with cvh:
                yield cvh
            return
        except CvhError:
            cvh.close()
            if args.server:  # asked for this suite: say it is not there rather than start another
                raise
    from services.common.config import ServerConfig
    from services.common.embedded import EmbeddedSuite

    with tempfile.TemporaryDirectory(prefix="cvh-demo-") as folder:
        print(f"no suite at {server(args)}: starting one in this process on a temporary database "
              "(run `cvh serve` in another terminal to keep one)")
        config = ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{Path(folder) / 'demo.db'}",
                              log_level="WARNING")
        with EmbeddedSuite(config) as suite, CvhClient(suite.target, timeout=args.timeout) as cvh:
            yield cvh


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "demo", parents=[client], help="see the whole flow on a synthetic customer base",
        description="Generates a realistic synthetic customer base, imports it, runs scoring and shows the "
                    "tiers and what support sees for a few customers; then defines a small value hierarchy "
                    "(unless the suite has one), sends synthetic product telemetry and shows a customer's "
                    "adoption. Uses the suite at --server, or starts "
                    "one in this process when nothing listens there. On a suite with customers of its own, the "
                    f"demo's are added beside them (ids {DEMO_ID_PREFIX}..., label {DEMO_LABEL}) and "
                    "`cvh demo --remove` takes them out again.")
    command.add_argument("--customers", "-n", type=whole_number(1, MAX_DEMO_CUSTOMERS), default=10_000, metavar="N",
                         help=f"customers to generate, 1 to {MAX_DEMO_CUSTOMERS:,} (default 10,000)")
    command.add_argument("--seed", type=seed_number, default=7, help="random seed: the same seed gives the same base")
    command.add_argument("--embedded", action="store_true",
                         help="always start a suite in this process (temporary database)")
    command.add_argument("--pyramid", type=picture_file, metavar="FILE",
                         help="also draw the pyramid into FILE (.png or .svg)")
    command.add_argument("--remove", action="store_true",
                         help=f"take the demo's customers (labelled {DEMO_LABEL}) out of the suite at --server "
                              "again, children before parents")
    command.set_defaults(run=demo)
