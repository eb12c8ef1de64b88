"""cvh purchases summarize: orders to frequency, recency, age and mean spend (checked by hand and against a plain
loop), the holdout check with its picture, and the signals recorded into a real registry that a run then fits."""

from __future__ import annotations

import contextlib
import io
import json
import math
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients import cli, purchases
from cvh.registry.v1 import registry_service_pb2 as rpb
from cvh.registry.v1 import registry_service_pb2_grpc as rpb_grpc
from cvh.scoring.v1 import scoring_service_pb2 as pb
from cvh.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from tests.conftest import start_server

START = datetime(2025, 1, 1, tzinfo=UTC)
HAND_ORDERS = """customer_id,time,amount
a,2026-01-01,10
a,2026-01-01T18:00:00Z,5
a,2026-01-05,20
b,2026-01-20T08:30:00,7.5
a,2026-01-11,30
c,,3
d,2026-01-12,-1
not an id!,2026-01-12,4
a,2026-02-03,99
"""


def cvh(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_orders_are_summarised_by_hand(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(HAND_ORDERS)
    code, out, err = cvh("purchases", "summarize", str(path), "--as-of", "2026-01-31", "--dry-run", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["customers"] == 2 and result["orders"] == 5  # the order after --as-of is left out
    assert result["rejected_orders"] == {"customer id missing or not an id ([A-Za-z0-9._:-], 1 to 128)": 1,
                                         "time missing": 1, "amount missing, negative or not a number": 1}
    orders = purchases.read_orders(path)
    days = purchases.summarize(orders, _us("2026-01-31"), "days")
    assert days.customer_ids.tolist() == ["a", "b"]
    # a: one purchase on Jan 1 (two orders, 15), then Jan 5 (20) and Jan 11 (30); b: one purchase on Jan 20.
    assert days.frequency.tolist() == [2, 0] and days.recency.tolist() == [10, 0] and days.age.tolist() == [30, 11]
    assert days.spend[0] == 25 and math.isnan(days.spend[1])
    # Weeks from Monday: a bought in the weeks of Dec 29 and Jan 5 (Jan 5 and 11), b in that of Jan 19; Jan 31 is
    # in the week of Jan 26.
    weeks = purchases.summarize(orders, _us("2026-01-31"), "weeks")
    assert weeks.frequency.tolist() == [1, 0] and weeks.recency.tolist() == [1, 0] and weeks.age.tolist() == [4, 1]
    months = purchases.summarize(orders, _us("2026-02-28"), "months")
    assert months.frequency.tolist() == [1, 0] and months.spend[0] == 99 and months.age.tolist() == [1, 1]


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1e6)


def synthetic_orders(n: int, seed: int = 0) -> pa.Table:
    """Orders over 2025 drawn as BG/NBD and Gamma-Gamma describe them: each customer buys at its own rate
    (Gamma), may drop out after each purchase (Beta) and spends Gamma amounts around its own mean (Gamma)."""
    rng = np.random.default_rng(seed)
    customers, days, amounts = [], [], []
    for c in range(n):
        rate, drop, nu = rng.gamma(0.8, 1 / 25), rng.beta(1.0, 4.0), rng.gamma(3.0, 1 / 20)
        day = rng.uniform(0, 300)
        while day < 365:
            customers.append(c)
            days.append(day)
            amounts.append(rng.gamma(4.0, 1 / nu))
            if len(customers) > 1 and customers[-2] == c and rng.random() < drop:
                break
            day += rng.exponential(1 / rate)
    times = [START + timedelta(days=float(d)) for d in days]
    return pa.table({"customer_id": [f"shop-{c:04d}" for c in customers],
                     "time": pa.array(times, pa.timestamp("us", "UTC")), "amount": amounts})


def test_the_three_formats_agree_with_a_plain_loop(tmp_path):
    table = synthetic_orders(60, seed=1)
    pq.write_table(table, tmp_path / "orders.parquet")
    rows = table.to_pylist()
    (tmp_path / "orders.jsonl").write_text("".join(
        json.dumps({"customer_id": r["customer_id"], "time": r["time"].isoformat().replace("+00:00", "Z"),
                    "amount": r["amount"]}) + "\n" for r in rows))
    (tmp_path / "orders.csv").write_text("customer_id,time,amount\n" + "".join(
        f"{r['customer_id']},{r['time'].strftime('%Y-%m-%d %H:%M:%S.%f')},{r['amount']!r}\n" for r in rows))
    as_of = _us("2025-12-31")
    found = [purchases.summarize(purchases.read_orders(tmp_path / f"orders.{suffix}"), as_of, "days")
             for suffix in ("parquet", "jsonl", "csv")]
    # The oracle: the definition, customer by customer.
    by_customer: dict[str, dict[int, float]] = {}
    for r in rows:
        day = (r["time"] - datetime(1970, 1, 1, tzinfo=UTC)).days
        periods = by_customer.setdefault(r["customer_id"], {})
        periods[day] = periods.get(day, 0.0) + r["amount"]
    as_of_day = as_of // purchases.US_PER_DAY
    for summary in found:
        assert summary.customer_ids.tolist() == sorted(by_customer)
        for i, customer in enumerate(summary.customer_ids):
            days = sorted(by_customer[customer])
            assert summary.frequency[i] == len(days) - 1
            assert summary.recency[i] == days[-1] - days[0] and summary.age[i] == as_of_day - days[0]
            if len(days) > 1:
                repeat_spend = sum(by_customer[customer][d] for d in days[1:]) / (len(days) - 1)
                assert summary.spend[i] == pytest.approx(repeat_spend, rel=1e-12)


def test_the_holdout_check_prints_its_deciles_and_draws_them(tmp_path):
    path = tmp_path / "orders.parquet"
    pq.write_table(synthetic_orders(800, seed=2), path)
    picture = tmp_path / "holdout.png"
    code, out, err = cvh("purchases", "summarize", str(path), "--dry-run", "--holdout-from", "2025-10-01",
                         "--out", str(picture), "--json")
    assert code == 0, err
    check = json.loads(out)["holdout"]
    assert check["missing_reason"] == "" and len(check["deciles"]) == 10
    assert sum(d["customers"] for d in check["deciles"]) == check["customers"] > 500
    means = [d["predicted_mean"] for d in check["deciles"]]
    assert means == sorted(means)  # deciles of predicted purchases, fewest first
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    code, out, err = cvh("purchases", "summarize", str(path), "--dry-run", "--holdout-from", "2025-10-01")
    assert code == 0 and "decile" in out and "actual/predicted" in out and "dry run" in out


def test_bad_input_is_said_without_a_traceback(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text("who,when,amount\nx,2026-01-01,1\n")
    code, _, err = cvh("purchases", "summarize", str(path), "--dry-run")
    assert code == 2 and "no column customer_id, time" in err and "--customer-column" in err
    code, _, err = cvh("purchases", "summarize", str(path), "--dry-run", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "--holdout-from" in err


def test_recorded_signals_feed_the_default_models_lifetime_value(tmp_path):
    table = synthetic_orders(150, seed=3)
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path)
    ids = sorted(set(table["customer_id"].to_pylist()))
    server = start_server(f"sqlite:///{tmp_path / 'cvh.db'}", services=("registry", "scoring"))
    try:
        with grpc.insecure_channel(server.target) as channel:
            registry = rpb_grpc.RegistryServiceStub(channel)
            columns = rpb.CustomerColumns(customer_ids=ids[1:])  # the first customer is not in the registry
            registry.ImportCustomers(iter([rpb.ImportCustomersRequest(columns=columns)]))
            code, out, err = cvh("purchases", "summarize", str(path), "--as-of", "2025-12-31", "--server",
                                 server.target, "--json")
            result = json.loads(out)
            assert code == 1 and result["rejected_customers"] == 1, err and ids[0] in result["rejected_examples"][0]
            assert result["current"] == sum(4 if f > 0 else 3 for f in
                                            purchases.summarize(purchases.read_orders(path), _us("2025-12-31"),
                                                                "days").frequency[1:])
            customer = registry.GetCustomer(rpb.GetCustomerRequest(name=f"customers/{ids[5]}"))
            assert {"purchase_frequency", "purchase_recency", "purchase_age"} <= set(customer.signals)
            assert customer.signals["purchase_age"].observe_time.ToDatetime().date().isoformat() == "2025-12-31"
            scoring = pb_grpc.ScoringServiceStub(channel)
            run = scoring.StartScoringRun(pb.StartScoringRunRequest())
            run = list(scoring.WatchScoringRun(pb.WatchScoringRunRequest(name=run.name), timeout=60))[-1]
            assert run.state == pb.RUN_STATE_COMPLETED and run.lifetime_value.customers == len(ids) - 1
            assert run.lifetime_value.missing_reason == "", run.lifetime_value.missing_reason
    finally:
        server.stop()
