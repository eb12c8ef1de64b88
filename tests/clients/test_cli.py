"""The cvh command line end to end against a real suite: most commands run in this process as the script runs
them (`cvh_here`, no second interpreter to start); a few as a subprocess, as a user runs them (the installed
entry point, CVH_SERVER, exit codes, an unreachable server)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest

from scoring_engine import default_model
from services.common.config import ServerConfig
from tests.conftest import ServerThread

SIGNALS = list(default_model().signal_names)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    server = ServerThread(ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{folder / 'cvh.db'}"))
    yield server
    server.stop()


def cvh(suite, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CVH_SERVER": suite.target}
    done = subprocess.run([sys.executable, "-m", "clients.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check:
        assert done.returncode == 0, f"cvh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def cvh_here(suite, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A cvh command run in this process (as the script runs it, without a second interpreter's start-up)."""
    from clients.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([*args, "--server", suite.target])
        except SystemExit as done:  # what the interpreter makes of it: None is 0, a message goes to stderr, 1
            code = 0 if done.code is None else done.code if isinstance(done.code, int) else 1
            if not isinstance(done.code, int | None):
                print(done.code, file=err)
    if check:
        assert code == 0, f"cvh {' '.join(args)} failed:\n{out.getvalue()}\n{err.getvalue()}"
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def write_customers_csv(path, good: int) -> None:
    """``good`` valid rows (c0 parent of c1..c4) plus three bad ones: line 3 of the data has no id, one has a
    non-numeric signal, one names an unknown role, and one refers to a parent that does not exist."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "display_name", "parent_id", "role", "owner", *SIGNALS])
        for i in range(good):
            parent = "c0" if 1 <= i <= 4 else ""
            values = [(i * 7 + j * 13) % 97 + 1 for j in range(len(SIGNALS))]
            if i == 0:  # the parent account leads on every signal (and pays on time): its children inherit
                values = [0 if name == "payment_delay_days" else 10_000 for name in SIGNALS]
            writer.writerow([f"c{i}", f"Customer {i}", parent, ["buyer", "end_user", "partner"][i % 3],
                             f"owner{i % 3}", *values])
        writer.writerow(["", "no id", "", "buyer", "", *[1] * len(SIGNALS)])
        writer.writerow(["bad-number", "", "", "buyer", "", "lots", *[1] * (len(SIGNALS) - 1)])
        writer.writerow(["bad-role", "", "", "emperor", "", *[1] * len(SIGNALS)])
        writer.writerow(["orphan", "", "missing-parent", "buyer", "", *[1] * len(SIGNALS)])


def test_import_run_priority_pyramid(suite, tmp_path):
    source, rejects = tmp_path / "customers.csv", tmp_path / "rejects.csv"
    write_customers_csv(source, 200)
    imported = cvh(suite, "import", str(source), "--rejects", str(rejects), "--json", check=False)
    assert imported.returncode == 1, "an import with rejected rows exits 1"
    summary = json.loads(imported.stdout.strip().splitlines()[-1])
    assert summary["created"] == 200 and summary["rejected"] == 4
    assert summary["signals_current"] > 0 and summary["signals_historical"] == summary["signals_unchanged"] == 0
    with open(rejects, newline="") as f:
        rejected = {row["customer_id"]: row for row in csv.DictReader(f)}
    assert set(rejected) == {"", "bad-number", "bad-role", "orphan"}
    assert rejected["bad-role"]["field"] == "role" and rejected["orphan"]["line"] == "205"
    assert rejected["orphan"]["field"] == "parent_id", "the rejects name the file's column"

    started = json.loads(cvh_here(suite, "run", "start", "--wait", "--json").stdout)
    assert started["state"] == "RUN_STATE_COMPLETED" and int(started["customers_total"]) == 200
    shown = cvh_here(suite, "run", "show").stdout
    assert started["name"] in shown and "completed" in shown

    wait = cvh_here(suite, "priority", "c1", "c2", "--json")
    priorities = json.loads(wait.stdout)
    assert [p["customer"] for p in priorities] == ["customers/c1", "customers/c2"]
    human = cvh_here(suite, "priority", "c0").stdout
    assert human.startswith("c0: ") and "may do" in human and "escalate" in human
    missing = cvh_here(suite, "priority", "c0", "nobody", check=False)
    assert missing.returncode == 1 and "\nnobody: not registered" in missing.stdout and "c0: " in missing.stdout

    ranked = json.loads(cvh_here(suite, "rank", "c1", "c2", "c3", "--json").stdout)
    assert sorted(r["customer"] for r in ranked) == ["customers/c1", "customers/c2", "customers/c3"]
    tree = cvh_here(suite, "tree", "c0").stdout
    assert all(f"c{i}" in tree for i in range(5)) and "subtree: 5 customers" in tree
    tiers = json.loads(cvh_here(suite, "tiers", "--json").stdout)
    assert int(tiers["total_customers"]) == 200 and tiers["value_signal"] == "annual_revenue"
    assert sum(t["value_signal_percent"] for t in tiers["tiers"]) == pytest.approx(100)
    table = cvh_here(suite, "tiers").stdout
    assert "% of customers" in table and "% of revenue" in table and "% of summed composite" in table
    assert "200 customers in" in table and "value " not in table.splitlines()[1]

    # tree and priority lead with the same tier: the one the customer is served at.
    served = {line.split(": ")[0]: line.split(": ", 1)[1] for line in
              cvh_here(suite, "priority", "c0", "c1", "c2", "c3", "c4").stdout.splitlines() if line.startswith("c")}
    assert "(own tier" in tree, "a child account inherits c0's better tier: the case where they used to differ"
    for line in tree.splitlines()[:-1]:
        customer, tier = line.strip().split("  [")[0], line.split("  [")[1].split(", value")[0]
        assert tier == served[customer], (line, served[customer])

    for suffix in ("png", "svg"):
        picture = tmp_path / f"pyramid.{suffix}"
        cvh_here(suite, "pyramid", "--out", str(picture))
        assert picture.stat().st_size > 1000
    chart = (tmp_path / "pyramid.svg").read_text()
    assert "Strategic" in chart and "Chief customer officer" in chart and "front line" in chart
    cvh_here(suite, "pyramid", "--tiers-only", "--out", str(tmp_path / "tiers.svg"))
    tiers = (tmp_path / "tiers.svg").read_text()
    assert "Strategic" in tiers and "Chief customer officer" not in tiers


def test_customers_get_list_delete_and_signal_history(suite, tmp_path):
    source = tmp_path / "look.csv"
    source.write_text("customer_id,display_name,parent_id,role,owner,nps\n"
                      "look-top,Top,,buyer,lena,5\nlook-kid,Kid,look-top,partner,lena,\n")
    cvh_here(suite, "import", str(source))
    cvh_here(suite, "signals", "record", str(write_signals(tmp_path)))

    shown = cvh_here(suite, "customers", "get", "look-top", "look-kid").stdout
    assert "look-top  Top" in shown and "role       buyer" in shown and "parent     look-top" in shown
    assert "nps" in shown and "1 signal," in shown, "one helper for plurals"
    got = json.loads(cvh_here(suite, "customers", "get", "look-kid", "--json").stdout)
    assert got[0]["parent"] == "customers/look-top"

    listed = json.loads(cvh_here(suite, "customers", "list", "--owner", "lena", "--json").stdout)
    assert [c["customer_id"] for c in listed] == ["look-kid", "look-top"]
    assert [c["customer_id"] for c in json.loads(cvh_here(suite, "customers", "list", "--owner", "lena", "--role",
                                                         "partner", "--json").stdout)] == ["look-kid"]
    paged = cvh_here(suite, "customers", "list", "--owner", "lena", "--limit", "1").stdout
    assert [line.split()[0] for line in paged.splitlines()[2:]] == ["look-kid", "(the"] and "--limit 0 all" in paged

    history = cvh_here(suite, "signals", "history", "look-top", "nps").stdout.splitlines()
    assert [line.split()[2:] for line in history[2:]] == [["nps", "9", "yes"], ["nps", "5"]], history

    missing = cvh_here(suite, "customers", "get", "nobody-here", check=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr and "`cvh customers list`" in missing.stderr
    refused = cvh_here(suite, "customers", "delete", "look-top", check=False)
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    assert "cvh customers list --parent" in refused.stderr, "a hint of what to do next"
    assert "deleted look-kid" in cvh_here(suite, "customers", "delete", "look-kid", "look-top").stdout
    assert "no customers match" in cvh_here(suite, "customers", "list", "--owner", "lena").stdout


def write_signals(tmp_path):
    path = tmp_path / "signals.csv"
    path.write_text("customer_id,signal,value\nlook-top,nps,9\n")  # observed now: newer than the import's 5
    return path


def test_models_and_runs_commands(suite, tmp_path):
    model = json.loads(cvh_here(suite, "models", "show", "default").stdout)
    model["description"] = "tighter top tier"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    created = json.loads(cvh_here(suite, "models", "create", str(path), "--note", "from the CLI", "--json").stdout)
    assert created["model_id"] == "default" and created["change_note"] == "from the CLI"
    assert created["name"] in cvh_here(suite, "models", "list").stdout
    activated = json.loads(cvh_here(suite, "models", "activate", created["name"], "--json").stdout)
    assert activated["active"] is True
    runs = json.loads(cvh_here(suite, "run", "list", "--json").stdout)
    assert isinstance(runs, list)


def test_errors_name_the_field_and_say_what_to_do(suite, tmp_path):
    bad = cvh_here(suite, "priority", "not valid!", check=False)
    assert bad.returncode == 1 and "customers[0]" in bad.stderr
    assert "`cvh priority --help`" in bad.stderr, "INVALID_ARGUMENT gets a hint too"
    down = subprocess.run([sys.executable, "-m", "clients.cli", "health", "--server", "127.0.0.1:1", "--timeout", "2"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cvh serve" in down.stderr
    broken = tmp_path / "model.json"
    broken.write_text("{not json")
    refused = cvh_here(suite, "models", "create", str(broken), check=False)
    assert refused.returncode != 0 and "cannot read the model" in refused.stderr


def test_every_status_code_a_caller_meets_has_a_hint():
    import grpc

    from clients.cli import NEXT_STEPS

    for code in ("NOT_FOUND", "INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED", "FAILED_PRECONDITION",
                 "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "ABORTED", "ALREADY_EXISTS"):
        assert getattr(grpc.StatusCode, code) in NEXT_STEPS, code


def test_help_explains_every_command():
    done = subprocess.run([sys.executable, "-m", "clients.cli", "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "import", "customers", "signals", "models", "run", "priority", "rank", "tree", "tiers",
                    "pyramid", "demo", "health", "valuemap", "telemetry", "adoption", "book", "portfolios"):
        assert f"    {command}" in done.stdout, command


def test_demo_runs_the_whole_flow_on_its_own_suite(tmp_path):
    picture = tmp_path / "demo.png"
    done = subprocess.run([sys.executable, "-m", "clients.cli", "demo", "--customers", "1500", "--embedded",
                           "--pyramid", str(picture), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["imported"] == 1500 and summary["run"] == "runs/1"
    assert sum(summary["tiers"].values()) == 1500 and len(summary["examples"]) == 3
    assert picture.stat().st_size > 1000
    # The value they get: the demo's value hierarchy, telemetry, and the median example's adoption.
    assert summary["value_map"] == "valueMapVersions/1" and summary["telemetry_events"] > 10_000
    assert summary["adoption_example"] == summary["examples"][-1]
    # A period later: churned customers, detractors, a second run with its outcomes and a bad-profit customer.
    assert summary["second_run"] == "runs/2" and summary["churned"] > 0 and summary["detractors"] > 0
    assert summary["bad_profit_example"].startswith("demo-")
    assert summary["book"].startswith("csm-"), "the demo's customers have CSMs; the busiest one's book is shown"


def test_demo_beside_customers_of_the_suites_own_and_remove(suite, tmp_path):
    own = tmp_path / "own.csv"
    own.write_text("customer_id,annual_revenue\nmine-1,10\nmine-2,20\n")
    cvh_here(suite, "import", str(own))
    done = cvh_here(suite, "demo", "-n", "150", "--seed", "3")
    assert "customers of its own: the demo adds" in done.stdout and "labelled demo" in done.stdout
    assert "`cvh demo --remove`" in done.stdout
    labelled = json.loads(cvh_here(suite, "customers", "list", "--label", "demo", "--limit", "0", "--json").stdout)
    assert len(labelled) == 150 and all(c["customer_id"].startswith("demo-") for c in labelled)
    assert any(c.get("parent") for c in labelled), "the base has account trees: --remove must order them"

    removed = cvh_here(suite, "demo", "--remove", "--json")
    assert json.loads(removed.stdout) == {"removed": 150, "kept": []}
    assert json.loads(cvh_here(suite, "customers", "list", "--label", "demo", "--json").stdout) == []
    mine = json.loads(cvh_here(suite, "customers", "get", "mine-1", "mine-2", "--json").stdout)
    assert [c["customer_id"] for c in mine] == ["mine-1", "mine-2"], "the suite's own customers stay"


def test_decide_and_authority(suite):
    import grpc

    from cvh.registry.v1 import registry_service_pb2 as rpb
    from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
    with grpc.insecure_channel(suite.target) as channel:
        rpb_grpc.RegistryServiceStub(channel).CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
            customer_id="decided-1", team=[rpb.TeamMember(role="owner", person="ana@x")])))
    waiver = None
    for _ in range(100):  # the hierarchy learns of the customer from the registry's feed
        waiver = cvh_here(suite, "decide", "decided-1", "escalation", "--by", "ana@x", "--reason", "angry",
                          check=False)
        if waiver.returncode == 0:
            break
        time.sleep(0.1)
    assert waiver.returncode == 0 and "needs escalation" in waiver.stdout, waiver.stdout + waiver.stderr
    # The unscored customer's default tier grants no goodwill: recorded, answered as needing escalation.
    credit = cvh_here(suite, "decide", "decided-1", "credit", "--amount", "12.50", "--currency", "eur", "--by",
                      "ana@x", "--reason", "late delivery", "--json")
    assert json.loads(credit.stdout)["amount_minor"] == "1250"
    usage = cvh_here(suite, "authority", "--person", "ana@x").stdout
    assert "ana@x" in usage and "total" in usage and "100%" in usage, usage
    ranged = json.loads(cvh_here(suite, "authority", "--from", "2000-01-01", "--to", "2000-02-01", "--json").stdout)
    assert ranged["period_start"].startswith("2000-01-01") and not ranged["total"]
    for bad, message in [(("decided-1", "credit", "--by", "a@x", "--reason", "r"), "--amount"),
                         (("decided-1", "credit", "--amount", "1.234", "--by", "a@x", "--reason", "r"), "two decimals"),
                         (("decided-1", "offer", "--by", "a@x", "--reason", "r"), "--offer"),
                         (("decided-1", "refund", "--by", "a@x", "--reason", "r"), "invalid choice")]:
        refused = cvh_here(suite, "decide", *bad, check=False)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr, bad
    missing = cvh_here(suite, "decide", "nobody-here", "waiver", "--by", "a@x", "--reason", "r", check=False)
    assert missing.returncode == 1 and "nobody-here" in missing.stderr and "Traceback" not in missing.stderr
    half = cvh_here(suite, "authority", "--from", "2000-01-01", check=False)
    assert half.returncode == 2 and "--to" in half.stderr


def test_demo_says_so_when_the_suite_asked_for_is_not_there():
    done = subprocess.run([sys.executable, "-m", "clients.cli", "demo", "--server", "127.0.0.1:1", "--timeout", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "cvh serve" in done.stderr


def test_book_and_portfolios(suite):
    import grpc

    from cvh.registry.v1 import registry_service_pb2 as rpb
    from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
    with grpc.insecure_channel(suite.target) as channel:
        registry = rpb_grpc.RegistryServiceStub(channel)
        for i, persons in enumerate(["zoe@x", "zoe@x", "zoe@x;yan@x"]):
            registry.CreateCustomer(rpb.CreateCustomerRequest(customer=rpb.Customer(
                customer_id=f"book-{i}", team=[rpb.TeamMember(role="customer_success_manager", person=p)
                                               for p in persons.split(";")])))
    cvh_here(suite, "people", "set", "zoe@x", "--capacity", "2")
    for _ in range(100):  # the hierarchy follows the registry's feed, and reads capacities every few seconds
        book = cvh_here(suite, "book", "zoe@x", "--role", "customer_success_manager", check=False)
        if "3 customers, 150% of a capacity of 2" in book.stdout:
            break
        time.sleep(0.1)
    assert "3 customers, 150% of a capacity of 2" in book.stdout, book.stdout + book.stderr
    assert "total" in book.stdout
    if "since previous run" in book.stdout:  # no run before the served one: no change to show
        assert "+" not in book.stdout.split("since previous run")[1]
    shown = cvh_here(suite, "portfolios", "--role", "customer_success_manager").stdout
    assert "1 above capacity" in shown and "OVERLOADED" in shown, shown
    assert shown.index("zoe@x") < shown.index("yan@x")  # most customers first
    missing = cvh_here(suite, "book", "nobody@x", check=False)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
