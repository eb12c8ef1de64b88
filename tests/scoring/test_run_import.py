"""ImportRunResults on SQLite and PostgreSQL: results scored elsewhere become a completed run only when all of
them are right; every refusal names the rows at fault and writes nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import scoring_engine
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hpb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc as hpb_grpc
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.scoring.v1 import scoring_service_pb2 as pb
from tests.hierarchy.test_hierarchy_service import wait_for_snapshot
from tests.scoring.test_scoring_service import registry, scoring, seed  # noqa: F401  (fixtures)
from wire.columns import to_chunk

Code = grpc.StatusCode
N = 40


def scored(matrix: np.ndarray) -> tuple[scoring_engine.FittedModel, scoring_engine.ScoreResult]:
    model = scoring_engine.default_model()
    fitted = scoring_engine.fit(model, matrix)
    result = scoring_engine.score(fitted, matrix, with_rank=True)
    return fitted.with_tier_thresholds(result.tier_thresholds), result


def requests(ids: list[str], result, model: str = "models/default/versions/1", fitted: bytes = b"",
             split: int = 25, tier_ids: list[str] | None = None) -> list[pb.ImportRunResultsRequest]:
    """The results as ImportRunResults messages of ``split`` rows, the fitted statistics in a last message."""
    tier_ids = tier_ids or [result.tier_ids[t] for t in result.tier]
    messages = []
    for start in range(0, len(ids), split):
        rows = slice(start, start + split)
        messages.append(pb.ImportRunResultsRequest(
            model=model if not start else "",
            dimension_scores=to_chunk(ids[rows], list(result.dimension_names), result.dimensions[rows]),
            composite=result.composite[rows].astype("<f8").tobytes(), tier_ids=tier_ids[rows],
            ranks=result.rank[rows].astype("<i8").tobytes(),
            percentiles=result.percentile[rows].astype("<f8").tobytes()))
    if fitted:
        messages.append(pb.ImportRunResultsRequest(fitted_model=fitted))
    return messages


def violations(error: grpc.RpcError) -> tuple[dict[str, str], str]:
    """Every bad field's description, and the ErrorInfo reason."""
    found, reason = {}, ""
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return found, reason


def refused(scoring, messages) -> grpc.RpcError:  # noqa: F811
    with pytest.raises(grpc.RpcError) as caught:
        scoring.ImportRunResults(iter(messages))
    return caught.value


def test_imports_are_checked_whole_and_a_good_one_is_a_run_the_hierarchy_serves(scoring, registry, channel):  # noqa: F811
    ids, matrix = seed(registry, N)
    fitted, result = scored(matrix)
    archive = fitted.to_bytes()

    # A registered customer without a result, one not registered, one twice: each named, with its reason.
    wrong_ids = ids[:N - 1] + ["stranger"]
    wrong_ids[7] = ids[3]
    error = refused(scoring, requests(wrong_ids, result, fitted=archive))
    found, reason = violations(error)
    assert error.code() == Code.INVALID_ARGUMENT and reason == "INVALID_RESULTS"
    assert found["messages[0].dimension_scores.customer_ids[7]"] == f"row 7: {ids[3]!r} is given again (first at row 3)"
    assert found["messages[1].dimension_scores.customer_ids[14]"] == "row 39: 'stranger' is not a registered customer"
    missing = [d for f, d in found.items() if f == "dimension_scores.customer_ids"]
    assert len(found) == 3 and "has no result" in missing[0]
    last = int(np.argmax(result.rank))  # left out: the other ranks stay 1..N-1
    keep = [i for i in range(N) if i != last]
    error = refused(scoring, requests([ids[i] for i in keep], _rows(result, keep), fitted=archive))
    assert violations(error) == ({"dimension_scores.customer_ids": f"registered customer {ids[last]!r} has no "
                                                                   "result"}, "MISSING_CUSTOMER")

    # A model version that does not exist; fitted statistics of another model.
    error = refused(scoring, requests(ids, result, model="models/default/versions/7", fitted=archive))
    assert error.code() == Code.NOT_FOUND and violations(error)[1] == "MODEL_VERSION_NOT_FOUND"
    other = scoring_engine.ValueModel.from_dict({**scoring_engine.default_model().to_dict(), "hysteresis_points": 9})
    error = refused(scoring, requests(ids, result, fitted=scoring_engine.fit(other, matrix).with_tier_thresholds(
        result.tier_thresholds).to_bytes()))
    assert violations(error)[1] == "INVALID_FITTED_MODEL"
    error = refused(scoring, requests(ids, result, fitted=b"not an archive"))
    assert violations(error)[1] == "INVALID_FITTED_MODEL"

    # A tier the model does not have; a score out of range; a rank given twice.
    tier_ids = [result.tier_ids[t] for t in result.tier]
    tier_ids[30] = "platinum"
    error = refused(scoring, requests(ids, result, fitted=archive, tier_ids=tier_ids))
    (field, description), = violations(error)[0].items()
    assert field == "messages[1].tier_ids[5]" and description.startswith("row 30: 'platinum' is not a tier of "
                                                                         "models/default/versions/1")
    assert violations(error)[1] == "INVALID_TIER_IDS"
    bad = _rows(result, slice(0, N))
    bad.composite[2] = 100.5
    bad.rank[5] = bad.rank[6]
    found, reason = violations(refused(scoring, requests(ids, bad, fitted=archive)))
    assert reason == "INVALID_RESULTS" and found["messages[0].composite[2]"] == "row 2: must be within 0..100 or NaN " \
                                                                                "(none), got 100.5"
    assert "each rank from 1 to 40 must be given once; 1 missing" in found["ranks"]

    # A result for a churned customer: runs leave them out, so an import must too.
    churn = rpb.Customer(name=ids[11], lifecycle_stage=common_pb2.LIFECYCLE_STAGE_CHURNED)
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(customer=churn, update_mask={"paths": ["lifecycle_stage"]}))
    error = refused(scoring, requests(ids, result, fitted=archive))
    assert violations(error) == ({"messages[0].dimension_scores.customer_ids[11]": f"row 11: {ids[11]!r} is churned: "
                                  "runs leave churned customers out (`cvh batch score` drops them when the base has "
                                  "a lifecycle_stage column)"}, "CHURNED_CUSTOMER")
    churn.lifecycle_stage = common_pb2.LIFECYCLE_STAGE_ACTIVE
    registry.UpdateCustomer(rpb.UpdateCustomerRequest(customer=churn, update_mask={"paths": ["lifecycle_stage"]}))

    # Nothing of it was written.
    assert not scoring.ListScoringRuns(pb.ListScoringRunsRequest()).runs

    # Right, sent in any row order: a completed run, in rank order, that the hierarchy loads and serves.
    order = np.random.default_rng(3).permutation(N)
    shuffled = _rows(result, order)
    run = scoring.ImportRunResults(iter(requests([ids[i] for i in order], shuffled, fitted=archive, split=16)))
    assert run.state == pb.RUN_STATE_COMPLETED and run.model == "models/default/versions/1"
    assert run.customers_total == N and [c.customers for c in run.tier_counts] == list(
        np.bincount(result.tier, minlength=5))
    stored = list(scoring.StreamRunResults(pb.StreamRunResultsRequest(run=run.name)))
    stored_ids = [i for chunk in stored for i in chunk.dimension_scores.customer_ids]
    assert stored_ids == [ids[i] for i in np.argsort(result.rank)]
    hierarchy = hpb_grpc.HierarchyServiceStub(channel)
    wait_for_snapshot(hierarchy, run.name)
    for i in (0, 17, 39):
        priority = hierarchy.GetPriority(hpb.GetPriorityRequest(customer=f"customers/{ids[i]}"))
        assert priority.own_tier.tier_id == result.tier_ids[result.tier[i]]
    # Its fitted statistics serve online scoring.
    score = scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer=f"customers/{ids[5]}"))
    assert score.run == run.name and score.composite == pytest.approx(result.composite[5], abs=1e-9)

    # Without fitted statistics the run is still served; online scoring keeps the run that has them.
    again = scoring.ImportRunResults(iter(requests(ids, result)))
    assert again.previous_run == run.name and again.state == pb.RUN_STATE_COMPLETED
    assert scoring.ScoreCustomer(pb.ScoreCustomerRequest(customer=f"customers/{ids[5]}")).run == run.name
    wait_for_snapshot(hierarchy, again.name)


def _rows(result: scoring_engine.ScoreResult, rows) -> scoring_engine.ScoreResult:
    return scoring_engine.ScoreResult(result.dimensions[rows].copy(), result.composite[rows].copy(),
                                      result.tier[rows].copy(), result.tier_thresholds, result.dimension_names,
                                      result.tier_ids, result.rank[rows].copy(), result.percentile[rows].copy())
