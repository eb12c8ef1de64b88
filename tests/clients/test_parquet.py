"""Parquet in and out: cvh export, cvh import of Parquet, cvh run export, on real suites (SQLite)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import scoring_engine
from clients import parquet
from clients.client import CvhClient
from services.common.config import ServerConfig
from tests.clients.test_cli import SIGNALS, cvh_here, write_customers_csv
from tests.conftest import ServerThread


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """Two suites: one the customers are exported from, a fresh one they are imported into."""
    folder = tmp_path_factory.mktemp("parquet")
    servers = [ServerThread(ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{folder / name}"))
               for name in ("source.db", "fresh.db")]
    yield servers
    for server in servers:
        server.stop()


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("customer_id")


def test_export_import_round_trip_keeps_customers_signals_and_nulls(suites, tmp_path):
    source, fresh = suites
    base = tmp_path / "customers.csv"
    write_customers_csv(base, 60)
    text = base.read_text().splitlines()
    # Leave some signals unobserved: an empty cell must come back as a null, not 0 or NaN.
    rows = [text[0]] + [",".join(cell if not (i % 4 == 0 and j in (6, 9)) else "" for j, cell in
                                 enumerate(line.split(","))) for i, line in enumerate(text[1:61])]
    base.write_text("\n".join(rows) + "\n")
    cvh_here(source, "import", str(base))

    exported = tmp_path / "export"
    summary = json.loads(cvh_here(source, "export", str(exported), "--json").stdout)
    assert summary["customers"] == 60 and summary["files"] == [str(exported / "part-00000.parquet")]
    table = pq.read_table(exported)
    # The model's signals, then the purchase signals its lifetime-value block reads and the outcome signals its
    # outcomes block names that it does not weight (none observed here: all null; use_case_adoption, an outcome
    # signal too, is weighted in the feedback dimension).
    model = scoring_engine.default_model()
    extra_signals = list(model.exported_signal_names[len(model.signal_names):])
    assert extra_signals == [*model.lifetime_value.input_signals, "referrals"]
    assert table.column_names == ["customer_id", "parent_id", "role", "owner", "lifecycle_stage", "team.owner", *SIGNALS, *extra_signals]
    assert all(table.column(name).null_count == 60 for name in extra_signals)
    assert table.schema.field(SIGNALS[0]).type == pa.float64()
    assert table.column(SIGNALS[1]).null_count == 15 and table.column(SIGNALS[4]).null_count == 15
    assert table.column(SIGNALS[0]).null_count == 0

    imported = json.loads(cvh_here(fresh, "import", str(exported), "--json").stdout)
    assert imported["created"] == 60 and imported["rejected"] == 0
    again = tmp_path / "again"
    cvh_here(fresh, "export", str(again))
    assert _sorted(pq.read_table(again)).equals(_sorted(table)), "export -> import -> export gives the same table"
    with CvhClient(fresh.target) as client:
        child = client.get_customer("c1")
    assert child.parent == "customers/c0" and child.owner == "owner1"

    # The text formats carry the same rows (empty cell / null where not observed) and import the same way.
    as_jsonl = tmp_path / "export.jsonl"
    cvh_here(source, "export", str(as_jsonl), "--format", "jsonl")
    first = json.loads(as_jsonl.read_text().splitlines()[0])
    assert first["customer_id"] == "c0" and first[SIGNALS[1]] is None and set(first) == set(table.column_names)
    as_csv = tmp_path / "export.csv"
    cvh_here(source, "export", str(as_csv), "--format", "csv")
    assert json.loads(cvh_here(fresh, "import", str(as_csv), "--json").stdout)["updated"] == 60


def test_run_export_writes_the_runs_results(suites, tmp_path):
    source = suites[0]
    run = json.loads(cvh_here(source, "run", "start", "--wait", "--json").stdout)
    folder = tmp_path / "results"
    summary = json.loads(cvh_here(source, "run", "export", run["name"], str(folder), "--json").stdout)
    assert summary["customers"] == int(run["customers_total"]) > 0
    table = pq.read_table(folder)
    with CvhClient(source.target) as client:
        results = client.run_results(run["name"])
    assert table.column("customer_id").to_pylist() == results.customer_ids
    assert np.array_equal(table.column("rank").to_numpy(), results.ranks)
    assert np.array_equal(table.column("tier_level").to_numpy(), results.tier_levels)
    composite = table.column("composite").to_numpy(zero_copy_only=False)
    assert np.array_equal(composite, results.composite, equal_nan=True)
    tier_ids = [t.tier_id for t in results.tiers]
    assert table.column("tier_id").to_pylist() == [tier_ids[level - 1] for level in results.tier_levels]
    assert table.column_names[1:1 + len(results.dimension_names)] == results.dimension_names


def test_a_bad_parquet_file_is_refused_with_its_name_and_nothing_is_written(suites, tmp_path):
    fresh = suites[1]
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    done = cvh_here(fresh, "import", str(bad), check=False)
    assert done.returncode == 2 and "broken.parquet" in done.stderr and "not a readable Parquet file" in done.stderr
    assert "Traceback" not in done.stderr

    # A folder whose second part is broken stops before any row of the first is sent.
    folder = tmp_path / "parts"
    parquet.write_parts(folder, [pa.RecordBatch.from_pydict({"customer_id": ["never-sent"], "nps": [1.0]})])
    (folder / "part-00001.parquet").write_bytes(b"garbage")
    done = cvh_here(fresh, "import", str(folder), check=False)
    assert done.returncode == 2 and "part-00001.parquet" in done.stderr
    with CvhClient(fresh.target) as client:
        assert client.batch_get_customers(["never-sent"], allow_missing=True) == []

    # Rows break the same rules as CSV and JSON Lines: a NaN value and a bad role are rejected, by row number.
    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"customer_id": ["p1", "p2", "p3"], "role": ["buyer", "emperor", None],
                             "nps": [10.0, 20.0, float("nan")]}), rows)
    done = cvh_here(fresh, "import", str(rows), "--json", check=False)
    assert done.returncode == 1 and json.loads(done.stdout)["created"] == 1
    rejects = (tmp_path / "rows.parquet.rejects.csv").read_text()
    assert "2,p2,role" in rejects and "3,p3,nps" in rejects


def test_parts_are_cut_at_row_group_and_part_boundaries(tmp_path):
    batches = [pa.RecordBatch.from_pydict({"customer_id": [f"c{i}" for i in range(s, s + 7)],
                                           "nps": [float(i) for i in range(s, s + 7)]}) for s in (0, 7, 14)]
    files = parquet.write_parts(tmp_path / "out", batches, part_rows=10, group_rows=4)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [10, 10, 1]
    assert pq.ParquetFile(files[0]).metadata.num_row_groups == 3  # 4 + 4 + 2
    rows = list(parquet.ParquetRows(tmp_path / "out"))
    assert [r["customer_id"] for r in rows] == [f"c{i}" for i in range(21)]
