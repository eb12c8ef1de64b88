"""The round trip beyond one machine: cvh export (Parquet) -> cvh batch score on a LocalCluster of two worker
processes -> cvh run import -> the hierarchy serves the imported tiers, equal to an in-process run of the same
model on the same data."""

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
from tests.clients.test_cli import cvh_here
from tests.conftest import ServerThread
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot

D = pytest.importorskip("scoring_engine.distributed")

N = 3_000
PARTS = 3


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A suite with N customers and one completed in-process run of the default model."""
    from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
    from cvh.scoring.v1 import scoring_service_pb2_grpc as spb_grpc
    from tests.scoring.test_scoring_service import run_to_end, seed

    server = ServerThread(ServerConfig(listen="127.0.0.1:0",
                                       database_url=f"sqlite:///{tmp_path_factory.mktemp('batch') / 'cvh.db'}"))
    with CvhClient(server.target) as client:
        seed(rpb_grpc.RegistryServiceStub(client.channel), N)
        run = run_to_end(spb_grpc.ScoringServiceStub(client.channel))
    yield server, run
    server.stop()


@pytest.fixture(scope="module")
def base(suite, tmp_path_factory):
    """The registry's export as Parquet, cut into PARTS part files so the cluster gets several partitions."""
    server, _ = suite
    export, folder = tmp_path_factory.mktemp("export"), tmp_path_factory.mktemp("base")
    cvh_here(server, "export", "--format", "parquet", str(export))
    table = pq.read_table(export)
    for i in range(PARTS):
        rows = table.slice(i * N // PARTS, N // PARTS)
        pq.write_table(rows, folder / f"part-{i:05d}.parquet", row_group_size=400)
    return folder


def results(client: CvhClient, run: str):
    got = client.run_results(run)
    return {customer_id: i for i, customer_id in enumerate(got.customer_ids)}, got


def test_batch_score_then_import_serves_the_same_tiers_as_an_in_process_run(suite, base, tmp_path):
    server, in_process = suite
    out = tmp_path / "scored"
    summary = json.loads(cvh_here(server, "batch", "score", "--workers", "2", "--json", str(base), str(out)).stdout)
    # A part per partition: Dask may fuse small partitions of the PARTS files when it reads few of their columns.
    assert summary["customers"] == N and 2 <= summary["files"] <= PARTS and summary["model"] == \
        "models/default/versions/1"
    written = pq.read_table(out)
    export_schema = parquet.run_results_schema(scoring_engine.engine._dimension_names(scoring_engine.default_model()))
    assert written.schema.equals(export_schema, check_metadata=False), "the layout of cvh run export"
    assert sorted(p.name for p in out.iterdir()) == ["_cvh_batch.json", "_fitted_model.npz",
                                                     *[f"part-{i:05d}.parquet" for i in range(summary["files"])]]

    imported = json.loads(cvh_here(server, "run", "import", str(out), "--json").stdout)
    assert imported["state"] == "RUN_STATE_COMPLETED" and imported["previous_run"] == in_process.name
    with CvhClient(server.target) as client:
        where, ours = results(client, imported["name"])
        theirs_at, theirs = results(client, in_process.name)
        order = [theirs_at[c] for c in ours.customer_ids]
        assert np.array_equal(ours.tier_levels, theirs.tier_levels[order])
        assert np.allclose(ours.composite, theirs.composite[order], rtol=0, atol=D.COMPOSITE_ATOL, equal_nan=True)
        assert np.array_equal(ours.ranks, theirs.ranks[order]) and ours.customer_ids == theirs.customer_ids
        wait_for_snapshot(client.hierarchy, imported["name"])
        for customer_id in ours.customer_ids[::250]:
            priority = client.get_priority(customer_id)
            assert priority.own_tier.level == theirs.tier_levels[theirs_at[customer_id]]
        # Online scoring uses the imported run's fitted statistics.
        assert client.score_customer(ours.customer_ids[10]).run == imported["name"]

    # `cvh run export` of the imported run gives the same rows the batch wrote (in rank order) ...
    exported = tmp_path / "exported"
    cvh_here(server, "run", "export", imported["name"], str(exported))
    again = pq.read_table(exported).sort_by("customer_id")
    batch = written.sort_by("customer_id")
    for column in ("customer_id", "tier_id", "tier_level", "rank"):
        assert again.column(column).equals(batch.column(column)), column
    # ... and imports back as it is: without fitted statistics, so it names its model version.
    refused = cvh_here(server, "run", "import", str(exported), check=False)
    assert refused.returncode == 2 and "--model default/versions/N" in refused.stderr
    done = cvh_here(server, "run", "import", str(exported), "--model", "default/versions/1")
    assert "COMPLETED" in done.stdout.upper() and "without fitted statistics" in done.stdout


def test_batch_score_with_previous_results_keeps_hysteresis_on_a_given_scheduler(suite, base, tmp_path):
    server, in_process = suite
    previous = tmp_path / "previous"
    cvh_here(server, "run", "export", in_process.name, str(previous))
    # A previous run where every other customer sat one tier lower (or higher, at the floor): the band keeps
    # those near the boundary there.
    table = pq.read_table(previous)
    levels = table.column("tier_level").to_numpy().copy()
    moved = levels[::2]
    levels[::2] = np.where(moved < 5, moved + 1, moved - 1)
    table = table.set_column(table.column_names.index("tier_level"), "tier_level", pa.array(levels, pa.int32()))
    for old in previous.iterdir():
        old.unlink()
    pq.write_table(table.slice(0, 1000), previous / "part-00000.parquet")  # a partitioned previous run
    pq.write_table(table.slice(1000), previous / "part-00001.parquet")
    model_file = tmp_path / "model.json"
    model = scoring_engine.default_model()
    model_file.write_text(scoring_engine.ValueModel.from_dict({**model.to_dict(), "hysteresis_points": 4.0}).to_json())
    client = D.scoring_client(n_workers=2)
    try:
        out = tmp_path / "scored"
        done = cvh_here(server, "batch", "score", "--model-file", str(model_file), "--scheduler",
                        client.scheduler.address, "--previous", str(previous), str(base), str(out))
        assert "cvh run import" in done.stdout and "--model" in done.stdout
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    # The same hysteresis in one process: the base in file order, previous tiers by customer id.
    table = pq.read_table(base)
    hysteresis = scoring_engine.ValueModel.from_json(model_file.read_text())
    matrix = np.column_stack([table.column(name).to_numpy(zero_copy_only=False) for name in model.signal_names])
    levels = dict(zip(pq.read_table(previous).column("customer_id").to_pylist(),
                      pq.read_table(previous).column("tier_level").to_pylist()))
    ids = table.column("customer_id").to_pylist()
    previous_tiers = np.array([levels[c] - 1 for c in ids])
    expected = scoring_engine.score(scoring_engine.fit(hysteresis, matrix), matrix, previous_tiers=previous_tiers)
    written = pq.read_table(out)
    assert written.column("customer_id").to_pylist() == ids, "rows in the base's order"
    assert np.array_equal(written.column("tier_level").to_numpy(), expected.tier + 1)
    assert np.array_equal(written.column("previous_tier_level").to_numpy(), previous_tiers + 1)
    plain = scoring_engine.score(scoring_engine.fit(hysteresis, matrix), matrix)
    assert (plain.tier != expected.tier).any(), "the band kept some customers in their previous tier"
