"""The Python client against a real suite, on SQLite and PostgreSQL: every method, errors, retries, tokens."""

from __future__ import annotations

import json
import math
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from clients.client import CvhClient, customer_name
from clients.errors import CvhError
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hierarchy_pb
from cvh.registry.v1 import registry_service_pb2 as registry_pb
from cvh.scoring.v1 import scoring_service_pb2 as scoring_pb
from scoring_engine import default_model
from services.common.auth import digest
from services.common.config import ServerConfig
from tests.conftest import ServerThread
from wire import columns
from wire.channels import open_channel

SIGNALS = list(default_model().signal_names)
ROLES = [common_pb2.STAKEHOLDER_ROLE_BUYER, common_pb2.STAKEHOLDER_ROLE_END_USER, common_pb2.STAKEHOLDER_ROLE_PARTNER]


@pytest.fixture
def cvh(suite_server):
    with CvhClient(suite_server.target) as client:
        yield client


def seed_base(cvh: CvhClient, n: int = 300, seed: int = 7) -> list[str]:
    """n customers with every signal, the first 10 parents of the next 10, imported in chunks of 128."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i:05d}" for i in range(n)]
    values = rng.lognormal(1.0, 1.0, size=(n, len(SIGNALS)))
    parents = [""] * n
    for i in range(10, 20):
        parents[i] = ids[i - 10]
    chunks = (columns.customer_columns(ids[i:i + 128], SIGNALS, values[i:i + 128],
                                       parent_ids=parents[i:i + 128],
                                       roles=[ROLES[j % 3] for j in range(i, min(i + 128, n))],
                                       owners=[f"owner{j % 4}" for j in range(i, min(i + 128, n))])
              for i in range(0, n, 128))
    summary = cvh.import_columns(chunks)
    assert (summary.created, summary.rejected) == (n, 0)
    return ids


def test_registry_methods(cvh):
    ids = seed_base(cvh, 300)
    created = cvh.create_customer(registry_pb.Customer(customer_id="solo", display_name="Solo Ltd",
                                                       signals={"nps": registry_pb.SignalValue(value=8)}))
    assert created.name == "customers/solo" and created.etag
    assert cvh.get_customer("solo").display_name == "Solo Ltd"
    assert cvh.get_customer("customers/solo").name == "customers/solo"
    assert [c.customer_id for c in cvh.batch_get_customers(["c00001", "missing"], allow_missing=True)] == ["c00001"]

    created.display_name = "Solo Limited"
    updated = cvh.update_customer(created, ["display_name"])
    assert updated.display_name == "Solo Limited" and updated.etag != created.etag
    with pytest.raises(CvhError) as stale:
        cvh.update_customer(created, ["display_name"])  # the old etag
    assert stale.value.code == grpc.StatusCode.ABORTED and stale.value.reason == "ETAG_MISMATCH"

    # Pages are fetched as the iterator is used: 301 customers in pages of 50.
    assert sum(1 for _ in cvh.list_customers(page_size=50)) == 301
    assert {c.customer_id for c in cvh.list_customers(parent="c00000")} == {"c00010"}
    assert all(c.owner == "owner1" for c in cvh.list_customers(owner="owner1", page_size=7))

    recorded = cvh.record_signals({"solo": {"nps": 9.0, "beta_programs": 2.0}})
    assert recorded.current == 2
    history = list(cvh.list_signal_history("solo", "nps"))
    assert [o.value.value for o in history] == [9.0, 8.0] or [o.value.value for o in history] == [8.0, 9.0]

    export = cvh.export_signals(["nps", "annual_revenue"])
    assert len(export.customer_ids) == 301 == export.total_customers
    assert export.values.shape == (301, 2) and export.roles.shape == (301,)
    solo = export.customer_ids.index("solo")
    assert export.values[solo, 0] == 9.0 and math.isnan(export.values[solo, 1])
    assert export.parent_ids[export.customer_ids.index("c00012")] == "c00002"

    cvh.delete_customer("solo", etag=cvh.get_customer("solo").etag)
    with pytest.raises(CvhError) as gone:
        cvh.get_customer("solo")
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_errors_carry_code_reason_and_fields(cvh):
    with pytest.raises(CvhError) as bad:
        cvh.get_customer("not valid!")
    error = bad.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "INVALID_CUSTOMER_NAME"
    assert [v.field for v in error.violations] == ["name"]
    assert "name:" in error.describe()
    with pytest.raises(CvhError) as paging:
        next(cvh.list_customers(page_size=-1))
    assert [v.field for v in paging.value.violations] == ["page_size"]


def test_models_runs_and_results(cvh):
    seed_base(cvh, 400)
    default = cvh.get_model("default")
    assert default.active and default.name.startswith("models/default/versions/")
    spec = scoring_pb.ValueModel()
    spec.CopyFrom(default)
    spec.model_id, spec.change_note = "lean", "fewer tiers later"
    lean = cvh.create_model(spec)
    assert lean.name == "models/lean/versions/1"
    assert {m.name for m in cvh.list_models()} >= {default.name, lean.name}
    assert cvh.activate_model(lean.name).active

    progress: list[float] = []
    run = cvh.wait_for_run(cvh.start_run().name, on_progress=lambda r: progress.append(r.percent_done))
    assert run.state == scoring_pb.RUN_STATE_COMPLETED and run.customers_total == 400
    assert progress and progress[-1] == 100.0
    assert cvh.get_run(run.name).state == scoring_pb.RUN_STATE_COMPLETED
    assert [r.name for r in cvh.list_runs(model_id="default")] == [run.name]

    results = cvh.run_results(run.name)
    assert len(results.customer_ids) == 400 and list(results.ranks) == list(range(1, 401))
    assert np.all(np.diff(results.composite) <= 0)  # rank order
    assert results.dimension_scores.shape == (400, len(default.dimensions))
    top_tier = results.tiers[0].tier_id
    listed = list(cvh.list_run_results(run.name, tier_id=top_tier, page_size=5))
    assert [r.customer for r in listed] == [customer_name(results.customer_ids[i])
                                            for i in np.flatnonzero(results.tier_levels == 1)]
    assert cvh.get_tier_movement(run.name).run == run.name

    online = cvh.score_customer(results.customer_ids[0])
    assert online.composite == pytest.approx(results.composite[0])
    what_if = cvh.score_signals({"annual_revenue": 1e9, "nps": 10})
    assert what_if.HasField("composite")

    export = cvh.export_signals(SIGNALS)
    batch = cvh.score_matrix(export.customer_ids, SIGNALS, export.values, rows_per_message=150)
    assert batch.customer_ids == export.customer_ids
    by_id = dict(zip(results.customer_ids, results.composite))
    assert batch.composite == pytest.approx([by_id[c] for c in export.customer_ids])

    assert next(cvh.watch_runs(model_id="default", include_current=True, timeout=10)).name == run.name
    second = cvh.start_run()
    try:
        cvh.cancel_run(second.name)
    except CvhError as ended:  # it may have finished first
        assert ended.reason == "RUN_ENDED"
    assert cvh.wait_for_run(second.name).state in (scoring_pb.RUN_STATE_CANCELLED, scoring_pb.RUN_STATE_COMPLETED)


def test_hierarchy_methods(cvh):
    ids = seed_base(cvh, 300)
    run = cvh.wait_for_run(cvh.start_run().name)
    cvh.wait_for_snapshot(run.name)
    priority = cvh.get_priority(ids[0])
    assert priority.scored and priority.run == run.name and priority.effective_tier.tier_id
    batch = cvh.batch_get_priority(ids[:5])
    assert [p.customer for p in batch] == [customer_name(i) for i in ids[:5]]
    ranked = cvh.rank_customers(ids[:6])
    assert sorted(r.customer for r in ranked) == sorted(customer_name(i) for i in ids[:6])
    summary = cvh.get_hierarchy_summary()
    assert summary.total_customers == 300 and summary.run == run.name
    first_tier = summary.tiers[0]
    members = list(cvh.list_tier_members(first_tier.tier.tier_id, page_size=3))
    assert len(members) == first_tier.customers
    assert [m.rank for m in members] == sorted(m.rank for m in members)
    tree = cvh.get_account_tree(ids[0])
    assert [c.customer for c in tree.children] == [customer_name(ids[10])]

    policy = cvh.get_tier_policy()
    policy.change_note = "client test"
    assert cvh.set_tier_policy(policy).version == policy.version + 1
    assert cvh.get_snapshot_info().customers == 300
    assert cvh.health() == "SERVING" and cvh.health("cvh.hierarchy.v1.HierarchyService") == "SERVING"


def test_watch_priority_changes_streams_a_new_runs_moves(cvh):
    seed_base(cvh, 200)
    first = cvh.wait_for_run(cvh.start_run().name)
    cvh.wait_for_snapshot(first.name)
    changes: list[hierarchy_pb.PriorityChange] = []
    stream = cvh.watch_priority_changes(timeout=30)
    reader = threading.Thread(target=lambda: changes.extend(stream), daemon=True)
    reader.start()
    # The strongest customer drops to nothing: a tier move the stream must report.
    strongest = cvh.run_results(first.name).customer_ids[0]
    cvh.record_signals({strongest: {name: 0.0 for name in SIGNALS}})
    second = cvh.wait_for_run(cvh.start_run().name)
    cvh.wait_for_snapshot(second.name)
    deadline = threading.Event()
    for _ in range(100):
        if changes:
            break
        deadline.wait(0.1)
    stream.cancel()
    reader.join(10)
    # The hierarchy re-scores the customer live as its signals change (against the first run's model), so the
    # move is reported at once, marked live; the second run then finds it there already.
    assert changes and all((c.live and c.run == first.name) or (not c.live and c.run == second.name)
                           for c in changes)
    moved = [c for c in changes if c.customer == customer_name(strongest)]
    assert moved and moved[0].live and moved[0].previous_tier.level < moved[0].new_tier.level


def test_bearer_token_reaches_the_server(tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "desk", "sha256": digest("s3cret"), "roles": ["reader"]}]}))
    server = ServerThread(ServerConfig(listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'cvh.db'}",
                                       tokens_file=str(tokens)))
    try:
        with CvhClient(server.target, token="s3cret") as reader:
            assert not reader.get_priority("anyone").scored
            with pytest.raises(CvhError) as denied:
                reader.create_customer(registry_pb.Customer(customer_id="x"))
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        with CvhClient(server.target) as anonymous, pytest.raises(CvhError) as refused:
            anonymous.get_priority("anyone")
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop()


def test_unavailable_is_retried_by_the_service_config():
    """A server that answers UNAVAILABLE twice, then SERVING: the client's call succeeds, in three attempts."""
    attempts = []

    def check(request, context):
        attempts.append(request.service)
        if len(attempts) < 3:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    flaky = grpc.server(futures.ThreadPoolExecutor(2))
    flaky.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check, health_pb2.HealthCheckRequest.FromString,
                                                     health_pb2.HealthCheckResponse.SerializeToString)})])
    port = flaky.add_insecure_port("127.0.0.1:0")
    flaky.start()
    try:
        with CvhClient(f"127.0.0.1:{port}") as cvh:
            assert cvh.health("x") == "SERVING"
        assert attempts == ["x", "x", "x"]
    finally:
        flaky.stop(0)


def test_columns_round_trip():
    values = np.arange(12, dtype=float).reshape(4, 3)
    values[1, 2] = np.nan
    chunk = columns.to_chunk(["a", "b", "c", "d"], ["x", "y", "z"], values)
    back = columns.from_matrix(chunk.values)
    np.testing.assert_array_equal(back, values)
    with pytest.raises(ValueError, match="2-d"):
        columns.to_matrix(np.zeros(3))
    cc = columns.customer_columns(["a", "b"], ["x"], np.array([[1.0], [np.nan]]), roles=[3, 2])
    assert cc.stakeholder_roles == bytes([3, 2]) and cc.signal_values.rows == 2


def test_channel_without_server_reports_unavailable():
    with CvhClient("127.0.0.1:1", timeout=1) as cvh, pytest.raises(CvhError) as down:
        cvh.get_priority("x")
    assert down.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    channel = open_channel("127.0.0.1:1")
    channel.close()


# Client methods whose names differ from the RPC's snake_case form.
RENAMED = {"StartScoringRun": "start_run", "GetScoringRun": "get_run", "ListScoringRuns": "list_runs",
           "WatchScoringRun": "watch_run", "CancelScoringRun": "cancel_run"}


def test_every_rpc_has_a_client_method():
    import re

    from services.common.server import SERVICE_DESCRIPTORS

    for service in SERVICE_DESCRIPTORS.values():
        for method in service.methods:
            name = RENAMED.get(method.name) or re.sub(r"(?<!^)(?=[A-Z])", "_", method.name).lower()
            assert callable(getattr(CvhClient, name, None)), f"{service.name}.{method.name} has no CvhClient.{name}"


def test_customers_without_signals_import(cvh):
    summary = cvh.import_columns([columns.customer_columns(["bare-1", "bare-2"], display_names=["A", "B"])])
    assert (summary.created, summary.rejected) == (2, 0)
