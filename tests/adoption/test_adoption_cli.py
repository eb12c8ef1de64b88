"""cvh valuemap and cvh telemetry against a real registry + adoption server (SQLite: the commands are the
same on PostgreSQL, which tests/adoption/test_adoption_service.py covers)."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from clients.client import CvhClient
from cvh.registry.v1 import registry_service_pb2 as rpb
from services.common.config import ServerConfig
from tests.clients.test_cli import cvh_here
from tests.conftest import ServerThread

VALUE_MAP = """\
change_note: first agreed hierarchy
nodes:
  - key: grow-revenue
    level: strategy
    name: Grow recurring revenue
    definition: The customer grows the revenue it earns again every year.
    owner: marketing
    children:
      - key: expand-regions
        level: initiative
        name: Expand into new regions
        owner: sales
        achieved_when: {at_least: 1}
        children:
          - key: regional-pricing
            level: use_case
            name: Regional pricing
            owner: customer success
            achieved_when: {weighted_share: 0.5}
            children:
              - key: create-price-list
                level: procedure
                name: Create a regional price list
                owner: product
                weight: 2
                rule: {events: [price_list.created], min_count: 3, min_active_days: 2, window_days: 30}
              - key: share-report
                level: procedure
                name: Share a regional report
                owner: product
                rule: {events: [report.shared, report.exported], min_distinct_users: 2, window_days: 30}
"""


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adoption-cli")
    server = ServerThread(ServerConfig(services=("registry", "adoption"), listen="127.0.0.1:0",
                                       database_url=f"sqlite:///{folder / 'cvh.db'}"))
    with CvhClient(server.target) as client:
        for customer in ("acme", "beta"):
            client.create_customer(rpb.Customer(customer_id=customer))
    yield server
    server.stop()


def test_valuemap_apply_show_diff_activate(suite, tmp_path):
    path = tmp_path / "valuemap.yaml"
    path.write_text(VALUE_MAP)
    done = cvh_here(suite, "valuemap", "apply", str(path))
    assert "1 strategy, 1 initiative, 1 use case, 2 procedures (active)" in done.stdout
    version = int(done.stdout.split("valueMapVersions/")[1].split(":")[0])
    tree = cvh_here(suite, "valuemap", "show", "--tree").stdout
    assert "      create-price-list: Create a regional price list [product] - 3+ events, 2+ active days of " \
           "price_list.created in 30 d" in tree
    # What show prints is a file apply reads: applied again (as JSON, which YAML reads too), nothing changed.
    shown = cvh_here(suite, "valuemap", "show").stdout
    again = tmp_path / "again.json"
    again.write_text(json.dumps(yaml.safe_load(shown.split("\n", 1)[1])))
    second = cvh_here(suite, "valuemap", "apply", str(again), "--no-activate", "--note", "same again", "--json")
    second = json.loads(second.stdout)
    assert not second.get("active") and second["change_note"] == "same again"
    diff = cvh_here(suite, "valuemap", "diff", str(version), second["name"]).stdout
    assert "hold the same nodes" in diff
    edited = tmp_path / "edited.yaml"
    edited.write_text(VALUE_MAP.replace("weight: 2", "weight: 3").replace("min_count: 3", "min_count: 5"))
    third = cvh_here(suite, "valuemap", "apply", str(edited), "--json")
    third = json.loads(third.stdout)
    diff = cvh_here(suite, "valuemap", "diff", str(version), str(third["version"])).stdout
    assert diff.strip() == "~ create-price-list: weight, procedure_rule.min_count"
    listed = cvh_here(suite, "valuemap", "list").stdout.splitlines()
    assert len(listed) == 2 + 3 and " yes " in listed[2]  # newest first, and it is active
    cvh_here(suite, "valuemap", "activate", str(version))
    assert json.loads(cvh_here(suite, "valuemap", "show", "--json").stdout)["version"] == version


def test_valuemap_apply_refuses_a_bad_file_naming_the_field(suite, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(VALUE_MAP.replace("min_active_days: 2", "min_active_days: 31"))
    done = cvh_here(suite, "valuemap", "apply", str(path), check=False)
    assert done.returncode == 1
    assert "value_map.nodes[3].procedure_rule.min_active_days" in done.stderr and "create-price-list" in done.stderr
    path.write_text(VALUE_MAP.replace("level: use_case", "level: usecase"))
    done = cvh_here(suite, "valuemap", "apply", str(path), check=False)
    assert done.returncode == 2 and "nodes[0].children[0].children[0].level" in done.stderr
    path.write_text("nodes: [unclosed")
    done = cvh_here(suite, "valuemap", "apply", str(path), check=False)
    assert done.returncode == 2 and "not readable YAML or JSON" in done.stderr
    done = cvh_here(suite, "valuemap", "apply", str(path).replace("bad", "valid"), "--validate-only", check=False)
    assert done.returncode == 2  # no such file: a usage error


def events(now: dt.datetime) -> list[dict]:
    """Eight rows: five kept, then an unknown customer, a bad name, a future time, and one without a customer."""
    rows = [{"customer_id": "acme", "event": "price_list.created", "time": now - dt.timedelta(days=d), "count": 2,
             "user_id": f"u{d % 2}"} for d in range(4)]
    rows.append({"customer_id": "beta", "event": "report.shared", "time": now, "count": None, "user_id": None})
    rows += [{"customer_id": "ghost", "event": "report.shared", "time": now, "count": 1, "user_id": None},
             {"customer_id": "acme", "event": "Not A Name", "time": now, "count": 1, "user_id": None},
             {"customer_id": "beta", "event": "report.shared", "time": now + dt.timedelta(days=2), "count": 1,
              "user_id": None},
             {"customer_id": None, "event": "report.shared", "time": now, "count": 1, "user_id": None}]
    return rows


def write(path, fmt: str, rows: list[dict]) -> None:
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, ["customer_id", "event", "time", "count", "user_id"])
            writer.writeheader()
            writer.writerows({**r, "time": r["time"].isoformat()} for r in rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({**r, "time": r["time"].isoformat()}) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_telemetry_record_keeps_what_it_can_and_lists_the_rest(suite, tmp_path, fmt):
    # Each format at its own microsecond: the three files' messages differ, and so do their batch ids.
    now = dt.datetime.now(dt.UTC).replace(microsecond={"csv": 1, "jsonl": 2, "parquet": 3}[fmt])
    path = tmp_path / f"events.{fmt}"
    write(path, fmt, events(now))
    done = cvh_here(suite, "telemetry", "record", str(path), check=False)
    assert done.returncode == 1, done.stderr
    assert "5 events kept, 4 rejected, 0 messages already recorded (skipped)" in done.stdout
    with open(f"{path}.rejects.csv") as f:
        rejects = [(row["line"], row["reason"]) for row in csv.DictReader(f)]
    first = 2 if fmt == "csv" else 1  # CSV's header is line 1
    assert rejects == [(str(first + 5), "unknown customer"), (str(first + 6), "bad event name"),
                       (str(first + 7), "future time"), (str(first + 8), "empty customer_id, event or time")]
    again = json.loads(cvh_here(suite, "telemetry", "record", str(path), "--json", check=False).stdout)
    assert again["duplicate_messages"] == 1 and again.get("events_kept", 0) == 0


def test_adoption_prints_the_tree_with_why_not(suite, tmp_path):
    path = tmp_path / "valuemap.yaml"
    path.write_text(VALUE_MAP)
    cvh_here(suite, "valuemap", "apply", str(path))
    today = dt.datetime.now(dt.UTC)
    rows = [{"customer_id": "acme", "event": "price_list.created", "time": today - dt.timedelta(days=d), "count": 2,
             "user_id": None} for d in range(2)]
    write(tmp_path / "more.csv", "csv", rows)
    cvh_here(suite, "telemetry", "record", str(tmp_path / "more.csv"))
    lines = cvh_here(suite, "adoption", "acme").stdout.splitlines()
    assert lines[0].startswith("customers/acme on ") and "achieved 1/1, 1/1, 1/1, 1/2" in lines[0]
    assert f"      [x] create-price-list: Create a regional price list (100 %, last active {today.date()})" in lines
    assert "      [ ] share-report: Share a regional report (0 %)" in lines
    assert "            0 of 2 distinct users in the last 30 days" in lines


def test_valuemap_draw_shades_by_adoption_and_draws_a_customers_branches(suite, tmp_path):
    path = tmp_path / "valuemap.yaml"
    path.write_text(VALUE_MAP)
    cvh_here(suite, "valuemap", "apply", str(path))  # an activation: the base is evaluated at once
    deadline = dt.datetime.now() + dt.timedelta(seconds=20)
    while True:
        with CvhClient(suite.target) as client:
            try:
                if client.get_node_adoption().value_map_version == client.get_value_map_version().name:
                    break
            except Exception:  # NOT_EVALUATED_YET before the first evaluation ends
                pass
        assert dt.datetime.now() < deadline, "the base was not evaluated"
    picture = tmp_path / "valuemap.png"
    done = cvh_here(suite, "valuemap", "draw", "--out", str(picture))
    assert "drew the value hierarchy" in done.stdout and picture.stat().st_size > 5000
    svg = tmp_path / "acme.svg"
    cvh_here(suite, "valuemap", "draw", "--out", str(svg), "--customer", "acme")
    text = svg.read_text()
    assert "What acme has achieved" in text and "Regional pricing" in text
    bad = cvh_here(suite, "valuemap", "draw", "--out", str(tmp_path / "x.gif"), check=False)
    assert bad.returncode == 2 and ".png or .svg" in bad.stderr


def test_adoption_node_customers_and_recommend(suite):
    """After the draw test's evaluation: acme has achieved regional-pricing, beta has not (and no hierarchy
    service runs here: no tiers, and a tier filter says why)."""
    node = cvh_here(suite, "adoption", "node", "regional-pricing").stdout
    assert "achieved by 1 of 2 customers with telemetry (50.0 %" in node and "median time to value 0 days" in node
    assert "no value tiers" in node
    have = cvh_here(suite, "adoption", "customers", "regional-pricing").stdout.splitlines()
    assert have[-1] == "1 of 1 customers that have achieved regional-pricing" and have[2].startswith("acme ")
    targets = json.loads(cvh_here(suite, "adoption", "customers", "regional-pricing", "--not-achieved",
                                  "--json").stdout)
    assert [c["customer"] for c in targets["customers"]] == ["customers/beta"] and targets["total_size"] == 1
    tiered = cvh_here(suite, "adoption", "customers", "regional-pricing", "--tier", "strategic", check=False)
    assert tiered.returncode == 1 and "CVH_HIERARCHY_TARGET" in tiered.stderr
    offer = cvh_here(suite, "adoption", "recommend", "beta").stdout.splitlines()
    assert offer[0].startswith("customers/beta: 1 peers in all customers")
    assert offer[3].split() == ["regional-pricing", "Regional", "pricing", "expand-regions", "100", "%", "50", "%",
                                "2.00"]
    shown = cvh_here(suite, "adoption", "show", "acme").stdout
    assert shown == cvh_here(suite, "adoption", "acme").stdout
