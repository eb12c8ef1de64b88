"""The cvh command line end to end: each command a subprocess against a real suite."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

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


def write_customers_csv(path, good: int) -> None:
    """``good`` valid rows (c0 parent of c1..c4) plus three bad ones: line 3 of the data has no id, one has a
    non-numeric signal, one names an unknown role, and one refers to a parent that does not exist."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "display_name", "parent_id", "role", "owner", *SIGNALS])
        for i in range(good):
            parent = "c0" if 1 <= i <= 4 else ""
            writer.writerow([f"c{i}", f"Customer {i}", parent, ["buyer", "end_user", "partner"][i % 3],
                             f"owner{i % 3}", *[(i * 7 + j * 13) % 97 + 1 for j in range(len(SIGNALS))]])
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

    started = json.loads(cvh(suite, "run", "start", "--wait", "--json").stdout)
    assert started["state"] == "RUN_STATE_COMPLETED" and int(started["customers_total"]) == 200
    shown = cvh(suite, "run", "show").stdout
    assert started["name"] in shown and "completed" in shown

    wait = cvh(suite, "priority", "c1", "c2", "--json")
    priorities = json.loads(wait.stdout)
    assert [p["customer"] for p in priorities] == ["customers/c1", "customers/c2"]
    human = cvh(suite, "priority", "c0").stdout
    assert human.startswith("c0: ") and "may do" in human and "escalate" in human

    ranked = json.loads(cvh(suite, "rank", "c1", "c2", "c3", "--json").stdout)
    assert sorted(r["customer"] for r in ranked) == ["customers/c1", "customers/c2", "customers/c3"]
    tree = cvh(suite, "tree", "c0").stdout
    assert all(f"c{i}" in tree for i in range(5)) and "subtree: 5 customers" in tree
    tiers = json.loads(cvh(suite, "tiers", "--json").stdout)
    assert int(tiers["total_customers"]) == 200

    for suffix in ("png", "svg"):
        picture = tmp_path / f"pyramid.{suffix}"
        cvh(suite, "pyramid", "--out", str(picture))
        assert picture.stat().st_size > 1000
    assert "Strategic" in (tmp_path / "pyramid.svg").read_text()


def test_models_and_runs_commands(suite, tmp_path):
    model = json.loads(cvh(suite, "models", "show", "default").stdout)
    model["description"] = "tighter top tier"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model))
    created = json.loads(cvh(suite, "models", "create", str(path), "--note", "from the CLI", "--json").stdout)
    assert created["model_id"] == "default" and created["change_note"] == "from the CLI"
    assert created["name"] in cvh(suite, "models", "list").stdout
    activated = json.loads(cvh(suite, "models", "activate", created["name"], "--json").stdout)
    assert activated["active"] is True
    runs = json.loads(cvh(suite, "run", "list", "--json").stdout)
    assert isinstance(runs, list)


def test_errors_name_the_field_and_say_what_to_do(suite, tmp_path):
    bad = cvh(suite, "priority", "not valid!", check=False)
    assert bad.returncode == 1 and "customers[0]" in bad.stderr
    down = subprocess.run([sys.executable, "-m", "clients.cli", "health", "--server", "127.0.0.1:1", "--timeout", "2"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cvh serve" in down.stderr
    broken = tmp_path / "model.json"
    broken.write_text("{not json")
    refused = cvh(suite, "models", "create", str(broken), check=False)
    assert refused.returncode != 0 and "cannot read the model" in refused.stderr


def test_help_explains_every_command():
    done = subprocess.run([sys.executable, "-m", "clients.cli", "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "import", "signals", "models", "run", "priority", "rank", "tree", "tiers", "pyramid",
                    "demo", "health"):
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


def test_demo_says_so_when_the_suite_asked_for_is_not_there():
    done = subprocess.run([sys.executable, "-m", "clients.cli", "demo", "--server", "127.0.0.1:1", "--timeout", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "cvh serve" in done.stderr
