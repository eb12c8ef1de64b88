"""Customers in and out: cvh import, cvh customers get|list|team|delete, cvh org team, cvh people,
cvh signals record|history."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import grpc

from clients import tabular
from clients.client import customer_id
from clients import parquet
from clients.commands.common import (connect, enum_word, existing_file, existing_path, export_target, non_negative_int,
                                     past_point_in_time, whole_number)
from clients.errors import CvhError
from services.registry.teams import WELL_KNOWN_ROLES
from clients.output import (counted, counted_stream, message_dict, print_json, print_table, progress, quantity,
                            timestamp)
from cvh.common.v1 import common_pb2
from cvh.registry.v1 import registry_service_pb2 as registry_pb


def import_customers(args: argparse.Namespace) -> int:
    source = tabular.CustomerFile(args.file, args.format, args.chunk_rows)
    with connect(args) as cvh, progress(source.total_bytes, f"importing {Path(args.file).name}", unit="B",
                                        enabled=not args.json) as bar:
        def requests():
            for request in source.requests(args.all_or_nothing):
                bar.update(source.bytes_read - bar.n)
                bar.set_postfix_str(counted(source.rows_sent, "row"))
                yield request
        summary = cvh.import_customers(requests())
        bar.update(source.total_bytes - bar.n)
    rejects = source.rejected + source.server_rejections(summary.errors)
    rejected = len(source.rejected) + summary.rejected
    rejects_file = Path(args.rejects or f"{args.file}.rejects.csv")
    if rejects:
        tabular.write_rejects(rejects_file, rejects)
    result = {"created": summary.created, "updated": summary.updated, "rejected": rejected,
              "rejected_here": len(source.rejected), "rejected_by_server": summary.rejected,
              "batches_committed": summary.batches_committed, "rejects_file": str(rejects_file) if rejects else ""}
    result.update(signals_current=summary.signals_current, signals_historical=summary.signals_historical,
                  signals_unchanged=summary.signals_unchanged)
    if args.json:
        print_json(result)
    else:
        print(f"{summary.created:,} created, {summary.updated:,} updated, {rejected:,} rejected "
              f"({counted(summary.batches_committed, 'batch')} committed)")
        for row in sorted(rejects, key=lambda r: r.line)[:5]:
            print(f"  line {row.line}: {row.customer_id or '(no id)'}: {row.field}: {row.reason}")
        if rejects:
            more = f" (the registry lists its first {len(summary.errors):,})" if summary.rejected > len(summary.errors) else ""
            print(f"rejected rows and reasons: {rejects_file}{more}")
        print(f"observations: {summary.signals_current:,} became current, {summary.signals_historical:,} went to "
              f"history only (older than the current value), {summary.signals_unchanged:,} unchanged")
    return 1 if rejected else 0


def record_signals(args: argparse.Namespace) -> int:
    source = tabular.SignalFile(args.file, args.format)
    current = historical = 0
    refused: list[tabular.RejectedRow] = []
    with connect(args) as cvh, progress(source.total_bytes, f"recording {Path(args.file).name}", unit="B",
                                        enabled=not args.json) as bar:
        for batch in source.batches():
            recorded, rejected = record_observations(cvh, batch)
            current, historical = current + recorded.current, historical + recorded.historical
            refused += rejected
            bar.update(source.bytes_read - bar.n)
    rejects = source.rejected + refused
    rejects_file = Path(args.rejects or f"{args.file}.rejects.csv")
    if rejects:
        tabular.write_rejects(rejects_file, rejects)
    if args.json:
        print_json({"current": current, "historical": historical, "rejected": len(rejects),
                    "rejects_file": str(rejects_file) if rejects else ""})
    else:
        print(f"{counted(current, 'observation')} became current, {historical:,} went to history, "
              f"{len(rejects):,} rejected")
        if rejects:
            print(f"rejected rows and reasons: {rejects_file}")
    return 1 if rejects else 0


def record_observations(cvh, batch) -> tuple[registry_pb.RecordSignalsResponse, list[tabular.RejectedRow]]:
    """Records a batch; a request refused for some rows (bad value, unknown customer) is sent again
    without them, so one bad row does not cost its whole batch."""
    rejected = []
    while batch:
        try:
            return cvh.record_signals([observation for _, _, observation in batch]), rejected
        except CvhError as error:
            bad = _refused_rows(error, batch)
            if not bad:
                raise
            for index, (field, reason) in bad.items():
                line, raw, observation = batch[index]
                rejected.append(tabular.RejectedRow(line, observation.customer.removeprefix("customers/"), field,
                                                    reason, raw))
            batch = [row for index, row in enumerate(batch) if index not in bad]
    return registry_pb.RecordSignalsResponse(), rejected


def _refused_rows(error: CvhError, batch) -> dict[int, tuple[str, str]]:
    """Positions in ``batch`` of the rows an error names, with (field, reason)."""
    if error.code == grpc.StatusCode.NOT_FOUND:
        missing = error.metadata.get("resource", "")
        return {i: ("customer_id", "no such customer") for i, row in enumerate(batch) if row[2].customer == missing}
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = {}
        for violation in error.violations:
            head = violation.field.split(".", 1)[0]
            if head.startswith("observations[") and head.endswith("]"):
                index = int(head[len("observations["):-1])
                if index < len(batch):
                    bad[index] = (tabular.signal_column(violation.field.partition(".")[2]), violation.description)
        return bad
    return {}


MAX_BATCH_GET = 1000  # BatchGetCustomers: names per call


def customers_get(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        found = [c for start in range(0, len(args.customers), MAX_BATCH_GET)
                 for c in cvh.batch_get_customers(args.customers[start:start + MAX_BATCH_GET])]
    if args.json:
        print_json([message_dict(c) for c in found])
        return 0
    for n, customer in enumerate(found):
        if n:
            print()
        print_customer(customer)
    return 0


def print_customer(c: registry_pb.Customer) -> None:
    print(f"{c.customer_id}" + (f"  {c.display_name}" if c.display_name else ""))
    print(f"  parent     {customer_id(c.parent) if c.parent else '–'}")
    print(f"  role       {enum_word(common_pb2.StakeholderRole, c.stakeholder_role)}")
    print(f"  owner      {c.owner or '–'}")
    print_team(c.effective_team or c.team, "  team       ", "             ")
    print(f"  stage      {enum_word(common_pb2.LifecycleStage, c.lifecycle_stage)} since {timestamp(c.lifecycle_stage_time)}")
    print(f"  labels     {_labels(c) or '–'}")
    print(f"  created    {timestamp(c.create_time)}, updated {timestamp(c.update_time)}")
    if not c.signals:
        print("  signals    none observed")
        return
    print(f"  signals    {counted(len(c.signals), 'signal')}, current values below; earlier ones: "
          f"`cvh signals history {c.customer_id}`")
    print_table(["signal", "value", "observed"],
                [[name, quantity(c.signals[name].value), timestamp(c.signals[name].observe_time)]
                 for name in sorted(c.signals)], right=[1], indent="    ")


def print_team(members, first: str = "", indent: str = "") -> None:
    """Team members by role: who, since when, and where an inherited one comes from."""
    if not members:
        print(f"{first}–")
        return
    width = max(len(m.role) for m in members)
    for n, m in enumerate(members):
        name = f"{m.person} ({m.display_name})" if m.display_name else m.person
        where = f"inherited from {customer_id(m.inherited_from)}" if m.inherited_from else \
            f"since {timestamp(m.start_time)}"
        print(f"{indent if n else first}{m.role:<{width}}  {name}  {where}")


def _labels(c: registry_pb.Customer) -> str:
    return ", ".join(f"{key}={value}" if value else key for key, value in sorted(c.labels.items()))


def customers_list(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        customers, more = _first(args.limit, lambda size: cvh.list_customers(
            parent=args.parent or "", role=args.role or 0, owner=args.owner or "", label=args.label or "",
            stage=args.stage or 0, page_size=size))
    if args.json:
        print_json([message_dict(c) for c in customers])
        return 0
    if not customers:
        filtered = args.parent or args.role or args.owner or args.label or args.stage
        print("no customers match" if filtered else "no customers yet: `cvh import FILE` adds some")
        return 0
    print_table(["customer", "name", "parent", "role", "owner", "stage", "labels", "signals"],
                [[c.customer_id, c.display_name, customer_id(c.parent), enum_word(common_pb2.StakeholderRole,
                  c.stakeholder_role), c.owner, enum_word(common_pb2.LifecycleStage, c.lifecycle_stage), _labels(c),
                  len(c.signals)] for c in customers], right=[7])
    if more:
        print(f"(the first {counted(args.limit, 'customer')}; --limit N shows more, --limit 0 all)")
    return 0


def customers_delete(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        for customer in args.customers:
            cvh.delete_customer(customer)
            if not args.json:
                print(f"deleted {customer_id(customer)}")
    if args.json:
        print_json({"deleted": [customer_id(c) for c in args.customers]})
    return 0


def customers_lifecycle(args: argparse.Namespace) -> int:
    """cvh customers lifecycle ID [STAGE]: move the customer to STAGE, then show the stages it entered."""
    if args.entered is not None and not args.stage:
        raise tabular.InputError("--entered is when the customer entered STAGE: name the STAGE too")
    with connect(args) as cvh:
        if args.stage:
            cvh.set_lifecycle_stage(args.customer, args.stage, args.entered)
        changes, more = _first(args.limit, lambda size: cvh.list_lifecycle_history(args.customer, page_size=size))
    if args.json:
        print_json([message_dict(c) for c in changes])
        return 0
    print_table(["entered", "stage", "current"],
                [[timestamp(c.enter_time), enum_word(common_pb2.LifecycleStage, c.stage), "yes" if c.current else ""]
                 for c in changes])
    if more:
        print(f"(the newest {counted(args.limit, 'stage')}; --limit N shows more, --limit 0 all)")
    return 0


def customers_team(args: argparse.Namespace) -> int:
    """cvh customers team ID [ROLE=PERSON[;PERSON]]...: set roles, then show the team (or its history)."""
    if args.history and args.assignments:
        raise tabular.InputError("--history shows who served when: set roles without it, then look")
    with connect(args) as cvh:
        if args.history:
            memberships, more = _first(args.limit, lambda size: cvh.list_team_history(
                args.customer, args.role or "", page_size=size))
        else:
            if args.assignments:
                cvh.set_team(args.customer, team_members(args.assignments))
            customer = cvh.get_customer(args.customer)
    if args.history:
        if args.json:
            print_json([message_dict(m) for m in memberships])
            return 0
        print_table(["role", "person", "name", "from", "to"],
                    [[m.role, m.person, m.display_name, timestamp(m.start_time),
                      "(current)" if m.current else timestamp(m.end_time)] for m in memberships])
        if more:
            print(f"(the newest {counted(args.limit, 'membership')}; --limit N shows more, --limit 0 all)")
        return 0
    if args.json:
        print_json([message_dict(m) for m in customer.effective_team])
        return 0
    print(f"{customer.customer_id}: team (inherited roles marked)")
    print_team(customer.effective_team, "  ", "  ")
    return 0


def org_team(args: argparse.Namespace) -> int:
    """cvh org team [ROLE=PERSON[;PERSON]]...: set roles of the organisation's team, then show it."""
    with connect(args) as cvh:
        team = cvh.update_organization_team(team_members(args.assignments)) if args.assignments \
            else cvh.get_organization_team()
    if args.json:
        print_json([message_dict(m) for m in team.members])
        return 0
    print("the organisation's team (people who oversee every customer)")
    print_team(team.members, "  ", "  ")
    return 0


def people_list(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        people, more = _first(args.limit, lambda size: cvh.list_people(page_size=size))
    if args.json:
        print_json([message_dict(p) for p in people])
        return 0
    if not people:
        print("no people yet: name them in a team (`cvh customers team ID ROLE=PERSON`)")
        return 0
    print_table(["person", "name", "capacity"], [[p.person_id, p.display_name, p.capacity or "–"] for p in people],
                right=[2])
    if more:
        print(f"(the first {counted(args.limit, 'person', 'people')}; --limit N shows more, --limit 0 all)")
    return 0


def people_set(args: argparse.Namespace) -> int:
    if args.name is None and args.capacity is None:
        raise tabular.InputError("give --name, --capacity or both")
    with connect(args) as cvh:
        person = cvh.update_person(args.person, args.name, args.capacity)
    if args.json:
        print_json(message_dict(person))
    else:
        print(f"{person.person_id}  {person.display_name or '–'}  capacity {person.capacity or 'not set'}")
    return 0


def team_members(assignments: list[tuple[str, list[str]]]) -> list[registry_pb.TeamMember]:
    """ROLE=PERSON;PERSON arguments as team members; ROLE= as one member without a person (clears the role)."""
    return [registry_pb.TeamMember(role=role, person=person) for role, persons in assignments
            for person in (persons or [""])]


def team_assignment(text: str) -> tuple[str, list[str]]:
    """ROLE=PERSON[;PERSON...] (ROLE= clears the role), with the rules of a team.<role> column."""
    role, sep, persons = text.partition("=")
    role = role.strip()
    if not sep or not tabular.TEAM_ROLE.fullmatch(role):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROLE=PERSON[;PERSON...] (ROLE= clears the role), "
                                         f"ROLE of [a-z][a-z0-9_]*, e.g. customer_success_manager=ana@example.com")
    try:
        cell = tabular.team_cell(role, persons)
    except tabular.BadRow as bad:
        raise argparse.ArgumentTypeError(f"{text!r}: {bad.reason}") from None
    return role, cell.split(";") if cell else []


def signals_history(args: argparse.Namespace) -> int:
    with connect(args) as cvh:
        observations, more = _first(args.limit, lambda size: cvh.list_signal_history(
            args.customer, args.signal or "", page_size=size))
    if args.json:
        print_json([message_dict(o) for o in observations])
        return 0
    if not observations:
        print(f"no observations of {args.signal or 'any signal'} for {customer_id(args.customer)}")
        return 0
    print_table(["observed", "signal", "value", "current"],
                [[timestamp(o.value.observe_time), o.signal, quantity(o.value.value), "yes" if o.current else ""]
                 for o in observations], right=[2])
    if more:
        print(f"(the newest {counted(args.limit, 'observation')}; --limit N shows more, --limit 0 all)")
    return 0


def _first(limit: int, pages) -> tuple[list, bool]:
    """The first ``limit`` items (0: all) of a paged List call, ``pages(page_size)``, and whether more exist."""
    items = list(itertools.islice(pages(min(limit + 1, 1000) if limit else 1000), limit + 1) if limit
                 else pages(1000))
    return (items[:limit], True) if limit and len(items) > limit else (items, False)


def role_argument(text: str) -> int:
    """--role: a stakeholder role by name (buyer, end_user, ...), as in import files."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"name a role: {', '.join(tabular.ROLE_NAMES)}")
    try:
        return tabular.role_value(text)
    except tabular.BadRow as bad:
        raise argparse.ArgumentTypeError(bad.reason) from None


def stage_argument(text: str) -> int:
    """A lifecycle stage by name (churned, at_risk, ...), as in import files."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"name a stage: {', '.join(tabular.STAGE_NAMES)}")
    try:
        return tabular.stage_value(text)
    except tabular.BadRow as bad:
        raise argparse.ArgumentTypeError(bad.reason) from None


def model_inputs(model) -> list[str]:
    """The registry signals a model's runs read: its signals, then its lifetime-value block's purchase signals,
    then its outcomes block's signals."""
    names = [s.name for s in model.signals]
    extra = []
    if model.HasField("lifetime_value"):
        block = model.lifetime_value
        extra += [block.frequency_signal, block.recency_signal, block.age_signal, block.spend_signal]
    if model.HasField("outcomes"):
        block = model.outcomes
        extra += [block.money_signal, block.nps_signal, block.csat_signal, block.referenceability_signal,
                  block.referrals_signal, block.adoption_signal, block.bad_profit.signal]
    return names + [name for name in dict.fromkeys(extra) if name and name not in names]


def export_customers(args: argparse.Namespace) -> int:
    """cvh export: the registry's customers and signal matrix, streamed into Parquet parts, CSV or JSON Lines."""
    with connect(args) as cvh:
        names = args.signals.split(",") if args.signals else model_inputs(cvh.get_model(args.model))
        stream = cvh.export_signal_matrix(names)
        with progress(None, f"exporting to {Path(args.path).name}", unit=" customers", enabled=not args.json) as bar:
            messages = counted_stream(stream, bar, lambda message: len(message.chunk.customer_ids))
            rows, files = parquet.write_export(args.path, args.format, parquet.export_batches(messages, names),
                                               parquet.export_schema(names))
    result = {"customers": rows, "signals": names, "format": args.format, "files": [str(f) for f in files]}
    if args.json:
        print_json(result)
    else:
        print(f"{rows:,} customers x {len(names)} signals written to {args.path} "
              f"({counted(len(files), 'file')})")
    return 0


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "export", parents=[client], help="export customers and their signals to Parquet, CSV or JSON Lines",
        description="Write every customer (customer_id, parent_id, role, owner) with its current signal values "
                    "(empty / null where not observed), in customer_id order, in the form `cvh import` reads. "
                    "Parquet goes to a folder of part files (part-00000.parquet, ..., 1,000,000 rows each), "
                    "streamed: memory stays bounded by one row group. Display names are not exported.")
    export_target(command)
    command.add_argument("--signals", default="", metavar="NAMES",
                         help="comma-separated signals to export (default: those the model reads, its lifetime-value "
                              "purchase signals included)")
    command.add_argument("--model", default="default", help="whose signals to export (default: default)")
    command.set_defaults(run=export_customers)
    command = commands.add_parser(
        "import", parents=[client], help="import customers from CSV, JSON Lines or Parquet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upsert customers from FILE; re-importing is safe.\n\n" + tabular.CUSTOMER_FILE_RULES)
    command.add_argument("file", type=existing_path, metavar="FILE",
                         help="a .csv, .jsonl, .ndjson or .parquet file, or a folder of .parquet files")
    command.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="file format (default: from the suffix)")
    command.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default FILE.rejects.csv)")
    command.add_argument("--chunk-rows", type=whole_number(1, tabular.MAX_ROWS_PER_MESSAGE),
                         default=tabular.MAX_ROWS_PER_MESSAGE, metavar="N",
                         help="customers per message, each committed on its own (default 10,000)")
    command.add_argument("--all-or-nothing", action="store_true",
                         help="write every row in one transaction at the end, or nothing if any row is bad")
    command.set_defaults(run=import_customers)

    customers = commands.add_parser("customers", help="look at stored customers: get, list, delete",
                                    description="What the registry holds about customers.")
    actions = customers.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser("get", parents=[client], help="customers with their labels and current signals",
                                 description="Each customer's fields, labels and current signal values; "
                                             "exits 1 (NOT_FOUND) when one is not registered.")
    command.add_argument("customers", nargs="+", metavar="ID", help="customer ids (or customers/ID names)")
    command.set_defaults(run=customers_get)
    command = actions.add_parser("list", parents=[client], help="customers page by page, with filters",
                                 description="Customers in customer_id order; the filters combine.")
    command.add_argument("--parent", metavar="ID", help="only the direct children of this customer")
    command.add_argument("--role", type=role_argument, metavar="ROLE",
                         help=f"only this stakeholder role: {', '.join(tabular.ROLE_NAMES)}")
    command.add_argument("--owner", metavar="OWNER", help="only customers of this owner (exact)")
    command.add_argument("--label", metavar="KEY[=VALUE]", help="only customers carrying this label (e.g. demo)")
    command.add_argument("--stage", type=stage_argument, metavar="STAGE",
                         help=f"only this lifecycle stage: {', '.join(tabular.STAGE_NAMES)}")
    command.add_argument("--limit", type=non_negative_int, default=100, metavar="N",
                         help="at most N customers (default 100; 0: all)")
    command.set_defaults(run=customers_list)
    command = actions.add_parser(
        "lifecycle", parents=[client], help="a customer's lifecycle stages; move it to another",
        description="Without STAGE: the lifecycle stages the customer entered, newest (its current one) first. "
                    "With STAGE: move it there first (a stage it is already in changes nothing). Churned "
                    "customers stay registered, and scoring runs leave them out.")
    command.add_argument("customer", metavar="ID", help="customer id (or customers/ID)")
    command.add_argument("stage", nargs="?", type=stage_argument, metavar="STAGE",
                         help=f"the stage to enter: {', '.join(tabular.STAGE_NAMES)}")
    command.add_argument("--entered", type=past_point_in_time, metavar="TIME",
                         help="when it entered STAGE: RFC 3339 (2026-11-01T09:30:00Z) or a date (default: now)")
    command.add_argument("--limit", type=non_negative_int, default=100, metavar="N",
                         help="at most N stages (default 100; 0: all)")
    command.set_defaults(run=customers_lifecycle)
    assignment_help = "ROLE=PERSON[;PERSON...]: the role's members become exactly these; ROLE= clears it"
    command = actions.add_parser(
        "team", parents=[client], help="a customer's team by role: show it, set roles, or its history",
        description="Without assignments: the customer's effective team, by role; a role it has no members in "
                    "shows those of its nearest ancestor that has (marked inherited). With ROLE=PERSON[;PERSON] "
                    "assignments: set those roles first (others stay; ROLE= clears one). Well-known roles: "
                    f"{', '.join(WELL_KNOWN_ROLES)}; the role owner is the customer's owner. --history: who "
                    "served in which role and when, newest first.")
    command.add_argument("customer", metavar="ID", help="customer id (or customers/ID)")
    command.add_argument("assignments", nargs="*", type=team_assignment, metavar="ROLE=PERSON", help=assignment_help)
    command.add_argument("--history", action="store_true", help="every membership with its start and end")
    command.add_argument("--role", metavar="ROLE", help="with --history: only this role")
    command.add_argument("--limit", type=non_negative_int, default=100, metavar="N",
                         help="with --history: at most N memberships (default 100; 0: all)")
    command.set_defaults(run=customers_team)
    command = actions.add_parser("delete", parents=[client], help="delete customers",
                                 description="Delete customers with their signals and history, in the order "
                                             "given. A customer with child accounts is refused "
                                             "(FAILED_PRECONDITION): delete or move its children first.")
    command.add_argument("customers", nargs="+", metavar="ID", help="customer ids (or customers/ID names)")
    command.set_defaults(run=customers_delete)

    org = commands.add_parser("org", help="the organisation's team: people who oversee every customer",
                              description="People set once for the whole organisation, e.g. the chief customer "
                                          "officer.")
    actions = org.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "team", parents=[client], help="show the organisation's team; set roles of it",
        description="Without assignments: the organisation's team. With ROLE=PERSON[;PERSON] assignments: set "
                    "those roles first (others stay; ROLE= clears one); setting needs the admin role. "
                    "E.g. `cvh org team chief_customer_officer=cco@example.com`.")
    command.add_argument("assignments", nargs="*", type=team_assignment, metavar="ROLE=PERSON", help=assignment_help)
    command.set_defaults(run=org_team)

    people = commands.add_parser("people", help="the people who serve customers: list them, set their details",
                                 description="People named in teams, with a display name and a capacity (the "
                                             "most customers each should serve).")
    actions = people.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser("list", parents=[client], help="people in id order",
                                 description="Every person the registry knows, in person id order.")
    command.add_argument("--limit", type=non_negative_int, default=100, metavar="N",
                         help="at most N people (default 100; 0: all)")
    command.set_defaults(run=people_list)
    command = actions.add_parser("set", parents=[client], help="set a person's display name or capacity",
                                 description="Set the display name and/or capacity of PERSON (added when unknown).")
    command.add_argument("person", metavar="PERSON", help="the person's id, e.g. an e-mail address")
    command.add_argument("--name", metavar="NAME", help="the name to show")
    command.add_argument("--capacity", type=whole_number(0, zero_means="not set"), metavar="N",
                         help="the most customers the person should serve (0: not set)")
    command.set_defaults(run=people_set)

    signals = commands.add_parser("signals", help="record signal observations; show their history",
                                  description="Signal observations: the latest by observe_time is current.")
    actions = signals.add_subparsers(dest="action", required=True, metavar="ACTION")
    command = actions.add_parser(
        "record", parents=[client], help="record observations from CSV or JSON Lines",
        description="Record observations from a file with columns customer_id, signal, value and an optional "
                    "observe_time (RFC 3339; default now). Rows naming unknown customers or bad values are "
                    "written to --rejects; the command exits 1 when any row was rejected.")
    command.add_argument("file", type=existing_file, metavar="FILE")
    command.add_argument("--format", choices=["csv", "jsonl"], help="file format (default: from the suffix)")
    command.add_argument("--rejects", metavar="FILE", help="where rejected rows go (default FILE.rejects.csv)")
    command.set_defaults(run=record_signals)
    command = actions.add_parser("history", parents=[client], help="a customer's observations, newest first",
                                 description="Every kept observation of the customer's signals (or of SIGNAL), "
                                             "newest first; `current` marks the value scoring uses.")
    command.add_argument("customer", metavar="ID", help="customer id (or customers/ID)")
    command.add_argument("signal", nargs="?", metavar="SIGNAL", help="only this signal, e.g. annual_revenue")
    command.add_argument("--limit", type=non_negative_int, default=100, metavar="N",
                         help="at most N observations (default 100; 0: all)")
    command.set_defaults(run=signals_history)
