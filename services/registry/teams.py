"""Customer teams: who serves each customer in which role and since when, the organisation's team, and the people.

A write sets the roles it names: each named role's members become exactly those given (an empty list clears
it); roles not named are unchanged. A member who leaves keeps their membership with the time they left; one who
stays keeps their start; one who arrives starts at the time given, or now. Members of a role are listed in the
order they joined it (those joining together in the order given).

The role "owner" is the customer's owner field: its first current member lives on the customer's row (owner,
owner_since_us), not in registry_team_members, so that the owner most customers have costs an import or an export
no team row; the owners who left and any further current owners are team rows (see IN_ROW).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.common.db import insert_many, placeholders, update_many
from services.common.errors import Violations
from services.common.validation import timestamp_us
from services.registry.tables import customers, org_team, people, team_members

ROLE = re.compile(r"[a-z][a-z0-9_]{0,62}")
OWNER = "owner"
MAX_ROLES = 16
MAX_MEMBERS = 16
MAX_PERSON = 256
MAX_NAME = 256
# Several members of a role travel joined by this in columns (TeamColumn.persons), so ids cannot hold it.
SEPARATOR = ";"
BAD_PERSON = re.compile(r"[\x00-\x1f\x7f-\x9f;]")
IN_CHUNK = 900
# The PostgreSQL advisory lock that makes writers of the organisation's team take turns ("cvh-org" in ASCII).
ORG_LOCK = 0x6376682D6F7267
WELL_KNOWN_ROLES = ("owner", "account_executive", "customer_success_manager", "customer_experience_manager",
                    "executive_sponsor")

# role -> the members it is to have: (person_id, start_time_us or None for now); [] clears the role.
Team = dict[str, list[tuple[str, int | None]]]


def role_problem(role: str) -> str | None:
    if not ROLE.fullmatch(role):
        return f"role {role[:70]!r} is not a role name: 1 to 63 characters of [a-z0-9_], starting with a letter"
    return None


def person_problem(person: str) -> str | None:
    """Why ``person`` is not a person id (1 to 256 characters, no control characters, no ';'); None when it is."""
    if not person:
        return "a person id is required (an e-mail address, for instance)"
    if len(person) > MAX_PERSON:
        return f"a person id has at most {MAX_PERSON} characters, got {len(person)}"
    if BAD_PERSON.search(person):
        return "a person id holds no control characters and no ';' (which separates persons in columns)"
    return None


def may_hold_bad_persons(text: str) -> bool:
    """A fast test of person ids joined: False when none holds a character BAD_PERSON refuses (str.isprintable
    refuses them all, and a few more characters: then each id is to be checked)."""
    return SEPARATOR in text or not text.isprintable()


def size_problem(team: Team) -> str | None:
    if len(team) > MAX_ROLES:
        return f"at most {MAX_ROLES} roles, got {len(team)}"
    for role, members in team.items():
        if len(members) > MAX_MEMBERS:
            return f"role {role} has {len(members)} members; at most {MAX_MEMBERS}"
    return None


def parse_members(members, path: str, violations: Violations, now: int,
                  max_ahead_us: int) -> tuple[Team, dict[str, str]]:
    """Check TeamMember entries to write; returns the roles they set and the display names they give."""
    team: Team = {}
    cleared: set[str] = set()
    names: dict[str, str] = {}
    for i, member in enumerate(members):
        where = f"{path}[{i}]"
        if problem := role_problem(member.role):
            violations.add(f"{where}.role", problem)
            continue
        entries = team.setdefault(member.role, [])
        if not member.person:
            cleared.add(member.role)
            continue
        if problem := person_problem(member.person):
            violations.add(f"{where}.person", problem)
            continue
        if any(person == member.person for person, _ in entries):
            violations.add(f"{where}.person", f"{member.person} appears twice in role {member.role}")
            continue
        start = None
        if member.HasField("start_time"):
            start = timestamp_us(member.start_time, f"{where}.start_time", violations)
            if start is not None and start < 0:
                violations.add(f"{where}.start_time", "must not be before 1970")
            elif start is not None and start > now + max_ahead_us:
                violations.add(f"{where}.start_time", f"is {(start - now) / 1e6:,.0f} s ahead of the server's clock; "
                               f"at most {max_ahead_us // 60_000_000} minutes are allowed")
        if len(member.display_name) > MAX_NAME or "\x00" in member.display_name:
            violations.add(f"{where}.display_name", f"at most {MAX_NAME} characters, without NUL")
        elif member.display_name:
            names[member.person] = member.display_name
        entries.append((member.person, start))
    for role in sorted(cleared):
        if team[role]:
            violations.add(path, f"role {role} is both cleared (an entry without a person) and given members")
    if problem := size_problem(team):
        violations.add(path, problem)
    return team, names


def split_persons(cell: str) -> tuple[list[tuple[str, int | None]], str | None]:
    """A column cell ("a@x;b@x", "" for none) as members, or a problem."""
    if not cell:
        return [], None
    persons = cell.split(SEPARATOR)
    for person in persons:
        if problem := person_problem(person):
            return [], problem
    if len(set(persons)) != len(persons):
        return [], "a person appears twice"
    if len(persons) > MAX_MEMBERS:
        return [], f"{len(persons)} members; at most {MAX_MEMBERS}"
    return [(person, None) for person in persons], None


def link_owner(team: Team, owner: str) -> str:
    """The role "owner" and the customer's owner field are one: the owner field a write that sets either gives.
    When the team names the role, its first member (the store may put a member who stays first: TeamPlan.owners);
    else ``owner``, which the role becomes alone (or none: roles_set)."""
    if OWNER in team:
        return team[OWNER][0][0] if team[OWNER] else ""
    return owner


def roles_set(row) -> Iterator[tuple[str, list[tuple[str, int | None]]]]:
    """The roles a customer row (CustomerRow) sets: its team's, and the role owner as its owner field alone when
    the row sets the owner (owner_set) and its team does not name the role."""
    yield from row.team.items()
    if row.owner_set and OWNER not in row.team:
        yield OWNER, [(row.owner, None)] if row.owner else []


# -- writing -------------------------------------------------------------------------------------------------

# The pk of a member read from the customer's row: its first current owner (registry_customers.owner).
IN_ROW = -1


@dataclass
class Member:
    pk: int  # IN_ROW for the owner on the customer's row
    person: str
    start_us: int


@dataclass
class TeamPlan:
    """What a write changes: memberships that end, ones that start, and each written customer's owner."""

    ends: list[int] = field(default_factory=list)
    starts: list[tuple] = field(default_factory=list)  # (customer_id or None for the organisation, role, person, start)
    # The owner the write leaves on customers' rows, where the team it sets decides: (person or "", since or 0).
    # A new customer whose owner field alone names its owner is not here (store.owner_after).
    owners: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Owners leaving the customer's row: (customer_id, "owner", person, start, end); rows that move onto it.
    left_row: list[tuple] = field(default_factory=list)
    onto_row: list[int] = field(default_factory=list)
    persons: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)


def _chunks(items: list, size: int = IN_CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def owners_of(conn: Connection, customer_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """The owner on the row of each customer that has one: (person, since)."""
    found: dict[str, tuple[str, int]] = {}
    for part in _chunks(list(customer_ids)):
        query = (sa.select(customers.c.customer_id, customers.c.owner, customers.c.owner_since_us)
                 .where(customers.c.customer_id.in_(part), customers.c.owner != ""))
        found.update((customer_id, (owner, since)) for customer_id, owner, since in conn.execute(query))
    return found


def current_members(conn: Connection, customer_ids: Iterable[str],
                    owners: dict[str, tuple[str, int]] | None = None) -> dict[tuple[str, str], list[Member]]:
    """Current members of each (customer, role), in the order they joined (the owner on the row first).
    ``owners``: those of the customers, as owners_of gives them, when the caller has them."""
    customer_ids = list(customer_ids)
    if owners is None:
        owners = owners_of(conn, customer_ids)
    found = {(customer_id, OWNER): [Member(IN_ROW, person, since)] for customer_id, (person, since) in owners.items()}
    for part in _chunks(customer_ids):
        query = (sa.select(team_members.c.pk, team_members.c.customer_id, team_members.c.role,
                           team_members.c.person_id, team_members.c.start_time_us)
                 .where(team_members.c.customer_id.in_(part), team_members.c.end_time_us.is_(None))
                 .order_by(team_members.c.pk))
        for pk, customer_id, role, person, start in conn.execute(query):
            found.setdefault((customer_id, role), []).append(Member(pk, person, start))
    return found


def _diff(plan: TeamPlan, have: list[Member], given: list[tuple[str, int | None]],
          now: int) -> tuple[list[Member], list[Member]]:
    """Plan the leaving of the members of ``have`` who are not ``given``; returns those who stay and those who
    arrive (pk None), each in order."""
    wanted = {person for person, _ in given}
    present = {member.person for member in have}
    plan.ends += [member.pk for member in have if member.person not in wanted and member.pk != IN_ROW]
    arriving = [Member(None, person, now if start is None else start) for person, start in given
                if person not in present]
    plan.persons.update(member.person for member in arriving)
    return [member for member in have if member.person in wanted], arriving


def _plan_role(plan: TeamPlan, customer_id: str, role: str, have: list[Member], given: list[tuple[str, int | None]],
               now: int) -> None:
    """Plan one role of a customer's team; for the role owner, also who the customer's row names."""
    stays, arriving = _diff(plan, have, given, now)
    if role == OWNER:
        if have and have[0].pk == IN_ROW and not (stays and stays[0].pk == IN_ROW):  # the owner on the row leaves
            plan.left_row.append((customer_id, OWNER, have[0].person, have[0].start_us, now))
        first = (stays + arriving)[:1]
        if not first:
            plan.owners[customer_id] = ("", 0)
        else:
            if first[0].pk is None:  # an owner arriving goes onto the row, one who stays moves there
                arriving = arriving[1:]
            elif first[0].pk != IN_ROW:
                plan.onto_row.append(first[0].pk)
            plan.owners[customer_id] = (first[0].person, first[0].start_us)
    plan.starts += [(customer_id, role, member.person, member.start_us) for member in arriving]


def plan_customers(conn: Connection, rows: list, stored: dict, now: int) -> TeamPlan:
    """The team changes of customer rows (CustomerRow: customer_id, team, owner, owner_set, person_names);
    ``stored``: those of them that exist. A new customer without team (most rows of a first import) costs
    nothing here; a role cleared on a customer that has no owner yet needs no reading."""
    plan = TeamPlan()
    busy = []
    for row in rows:
        old = stored.get(row.customer_id)
        if old is None:
            if row.team:
                _plan_new(plan, row, now)
        elif any(_changes(role, members, old) for role, members in roles_set(row)):
            busy.append(row)
        if row.person_names:
            plan.names.update(row.person_names)
    plan.persons.update({row.owner for row in rows if row.owner})
    plan.persons.update(start[2] for start in plan.starts)
    have = current_members(conn, [row.customer_id for row in busy],
                           {row.customer_id: (stored[row.customer_id].owner, stored[row.customer_id].owner_since_us)
                            for row in busy if stored[row.customer_id].owner})
    for row in busy:
        for role, given in roles_set(row):
            _plan_role(plan, row.customer_id, role, have.get((row.customer_id, role), []), given, now)
    return plan


def _plan_new(plan: TeamPlan, row, now: int) -> None:
    """A new customer's team: everyone given arrives, in order; the first owner goes on the customer's row."""
    for role, given in row.team.items():
        if role == OWNER:
            person, start = given[0] if given else ("", None)
            plan.owners[row.customer_id] = (person, now if start is None else start) if person else ("", 0)
            given = given[1:]
        plan.starts += [(row.customer_id, role, person, now if start is None else start) for person, start in given]


def _changes(role: str, members: list, old) -> bool:
    """Whether setting a stored customer's ``role`` to ``members`` may change anything: clearing the owner of
    one without an owner cannot (the owner field mirrors the role)."""
    return bool(members) or role != OWNER or bool(old.owner)


def apply(conn: Connection, plan: TeamPlan, now: int, organisation: bool = False) -> None:
    """Write a plan (after the customers it names exist, with the owners of plan.owners on their rows)."""
    table = org_team if organisation else team_members
    save_people(conn, plan.persons | plan.names.keys(), plan.names, now)
    for part in _chunks(plan.ends):
        conn.execute(table.update().where(table.c.pk.in_(part)).values(end_time_us=now))
    for part in _chunks(plan.onto_row):
        conn.execute(table.delete().where(table.c.pk.in_(part)))
    if organisation:
        insert_many(conn, table, ["role", "person_id", "start_time_us"], [s[1:] for s in plan.starts])
    else:
        insert_many(conn, table, ["customer_id", "role", "person_id", "start_time_us"], plan.starts)
        insert_many(conn, table, ["customer_id", "role", "person_id", "start_time_us", "end_time_us"], plan.left_row)


def save_people(conn: Connection, persons: set[str], names: dict[str, str], now: int) -> None:
    """Add the ``persons`` not known yet, and give those in ``names`` their display name."""
    if not persons:
        return
    known: dict[str, str] = {}
    for part in _chunks(sorted(persons)):
        query = sa.select(people.c.person_id, people.c.display_name).where(people.c.person_id.in_(part))
        known.update((person, name) for person, name in conn.execute(query))
    _add_people(conn, [(person, names.get(person, ""), now) for person in sorted(persons) if person not in known])
    update_many(conn, people, "person_id", ["display_name", "update_time_us"],
                [(person, name, now) for person, name in names.items() if person in known and known[person] != name])


def delete_customer(conn: Connection, customer_id: str) -> None:
    conn.execute(team_members.delete().where(team_members.c.customer_id == customer_id))


def update_organisation(conn: Connection, team: Team, names: dict[str, str], now: int) -> None:
    if conn.dialect.name == "postgresql":  # two writers would both read the same members, then both write
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ORG_LOCK})")
    plan = TeamPlan(names=dict(names))
    have: dict[str, list[Member]] = {}
    query = (sa.select(org_team.c.pk, org_team.c.role, org_team.c.person_id, org_team.c.start_time_us)
             .where(org_team.c.end_time_us.is_(None)).order_by(org_team.c.pk))
    for pk, role, person, start in conn.execute(query):
        have.setdefault(role, []).append(Member(pk, person, start))
    for role, given in team.items():
        _, arriving = _diff(plan, have.get(role, []), given, now)
        plan.starts += [(None, role, member.person, member.start_us) for member in arriving]
    apply(conn, plan, now, organisation=True)


# -- reading -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Seat:
    """A current member as answers show them."""

    role: str
    person: str
    start_us: int
    inherited_from: str = ""


def teams_of(conn: Connection, customer_ids: Iterable[str]) -> dict[str, list[Seat]]:
    """Each customer's own current team, by role in name order, members in the order they joined."""
    found: dict[str, list[Seat]] = {}
    for (customer_id, role), members in sorted(current_members(conn, customer_ids).items()):
        found.setdefault(customer_id, []).extend(Seat(role, m.person, m.start_us) for m in members)
    return found


def effective(customer_id: str, parents: dict[str, str | None], teams: dict[str, list[Seat]]) -> list[Seat]:
    """For each role, the customer's own members, or else those of its nearest ancestor with members in it
    (``parents``: the customer's ancestors' parents, as far as they go)."""
    seats: dict[str, list[Seat]] = {}
    current, seen = customer_id, set()
    while current is not None and current not in seen:  # a corrupt (cyclic) tree ends the walk too
        seen.add(current)
        inherited = _from(current, customer_id)
        own: dict[str, list[Seat]] = {}
        for seat in teams.get(current, []):
            own.setdefault(seat.role, []).append(Seat(seat.role, seat.person, seat.start_us, inherited))
        for role, members in own.items():
            seats.setdefault(role, members)
        current = parents.get(current)
    return [seat for role in sorted(seats) for seat in seats[role]]


def _from(holder: str, customer_id: str) -> str:
    return "" if holder == customer_id else f"customers/{holder}"


def organisation_team(conn: Connection) -> list[Seat]:
    query = (sa.select(org_team.c.role, org_team.c.person_id, org_team.c.start_time_us)
             .where(org_team.c.end_time_us.is_(None)).order_by(org_team.c.role, org_team.c.pk))
    return [Seat(role, person, start) for role, person, start in conn.execute(query)]


def display_names(conn: Connection, persons: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in _chunks(sorted(set(persons))):
        query = sa.select(people.c.person_id, people.c.display_name).where(people.c.person_id.in_(part))
        found.update((person, name) for person, name in conn.execute(query) if name)
    return found


def history(conn: Connection, customer_id: str, role: str) -> list[tuple[str, str, int, int | None]]:
    """Every membership of a customer's own team (of ``role``, or all): (role, person, start, end), newest
    start first; the owner on the customer's row is one of them."""
    query = (sa.select(team_members.c.role, team_members.c.person_id, team_members.c.start_time_us,
                       team_members.c.end_time_us, team_members.c.pk)
             .where(team_members.c.customer_id == customer_id))
    if role:
        query = query.where(team_members.c.role == role)
    found = [tuple(row) for row in conn.execute(query)]
    if role in ("", OWNER):
        found += [(OWNER, person, since, None, IN_ROW) for person, since in owners_of(conn, [customer_id]).values()]
    found.sort(key=lambda membership: (-membership[2], -membership[4]))
    return [membership[:4] for membership in found]


def team_columns(ids: list[str], members: Iterable[tuple[str, str, str]], roles: Iterable[str] = (),
                 owners: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(customer_id, role, person) triples, in join order, as one column per role (those of ``roles`` and any
    other the triples name, in name order): persons joined by ';' per row of ``ids``, "" for none. ``owners``:
    the owner on each customer's row, who comes first in the role owner."""
    row_of = dict(zip(ids, range(len(ids))))
    columns: dict[str, list[str]] = {role: [""] * len(ids) for role in roles}
    if owners is not None:
        columns[OWNER] = list(owners)
    for customer_id, role, person in members:
        column = columns.get(role)
        if column is None:
            column = columns[role] = [""] * len(ids)
        i = row_of[customer_id]
        column[i] = f"{column[i]}{SEPARATOR}{person}" if column[i] else person
    return sorted(columns.items())


def export_roles(cursor) -> tuple[list[str], bool]:
    """Through a driver cursor: the roles some customer has a current member in, and whether some member is on a
    team row (else an export reads no members: the owners come with the customers' rows)."""
    cursor.execute("SELECT DISTINCT role FROM registry_team_members WHERE end_time_us IS NULL")
    roles = {role for (role,) in cursor.fetchall()}
    on_rows = bool(roles)
    cursor.execute("SELECT MAX(owner) FROM registry_customers")  # the owner index's last entry: "" when none
    if cursor.fetchone()[0]:
        roles.add(OWNER)
    return sorted(roles), on_rows


def members_between(cursor, first_pk: int, last_pk: int, mark: str) -> list[tuple[str, str, str]]:
    """Current members on team rows of the customers whose pk is in [first_pk, last_pk], through a driver cursor: one
    query for a whole export chunk (in SQLite's plan, an index search per customer and no sort)."""
    cursor.execute("SELECT t.customer_id, t.role, t.person_id FROM registry_team_members t "
                   "JOIN registry_customers c ON c.customer_id = t.customer_id "
                   f"WHERE c.pk >= {mark} AND c.pk <= {mark} AND t.end_time_us IS NULL ORDER BY c.pk, t.role, t.pk",
                   (first_pk, last_pk))
    return cursor.fetchall()


# -- people --------------------------------------------------------------------------------------------------

def update_person(conn: Connection, person_id: str, values: dict, now: int) -> None:
    """Set a person's fields (display_name, capacity: None for not set), adding the person when unknown."""
    _add_people(conn, [(person_id, "", now)])
    conn.execute(people.update().where(people.c.person_id == person_id).values(**values, update_time_us=now))


def _add_people(conn: Connection, rows: list[tuple[str, str, int]]) -> None:
    """Insert (person_id, display_name, update_time_us) rows; a person another writer added meanwhile stays."""
    if rows:
        conn.exec_driver_sql(f"INSERT INTO registry_people (person_id, display_name, update_time_us) VALUES "
                             f"({placeholders(conn, 3)}) ON CONFLICT (person_id) DO NOTHING", rows)


def person(conn: Connection, person_id: str):
    return conn.execute(sa.select(people).where(people.c.person_id == person_id)).first()


def people_page(conn: Connection, after: str | None, limit: int) -> list:
    query = sa.select(people).order_by(people.c.person_id).limit(limit)
    if after is not None:
        query = query.where(people.c.person_id > after)
    return list(conn.execute(query))
