"""The callers of the suite as Locust users, and the calibration users.

| user | calls (weight) |
|---|---|
| ``SupportToolingUser`` | GetPriority (16), BatchGetPriority of 20 (2), RankCustomers of 2 to 6 (2) |
| ``InternalSystemsUser`` | ScoreCustomer (6), ScoreSignals (3), ScoreBatch of one 100-row chunk (1) |
| ``RegistryWriterUser`` | GetCustomer + UpdateCustomer of its display name to the value read (1), RecordSignals for 1 to 5 customers (2) |
| ``MixedUser`` | support tooling, the front line (below), internal systems and writers in the proportion 6 : 1 : 2 : 1 |
| ``TelemetryWriterUser`` | RecordTelemetry: one message of 1,000 events of 1 to 20 customers over the last 30 days (1) |
| ``AdoptionLookupUser`` | GetCustomerAdoption (1) |
| ``FrontLineUser`` | GetPriority, then RecordServiceDecision within what the answer allows: a small goodwill credit, a fee waiver, one of the tier's offers or an escalation (1) |
| ``HealthUser`` | grpc.health.v1 Check: the cheapest call, the calibration ceiling |
| ``LatencyProbeUser`` | one user calling Check 20 times a second beside a scenario: the latency noise of that phase |
| ``GetPriorityUser``, ``ScoreCustomerUser`` | that one RPC alone, for its throughput against the ceiling |

Customers come from the deployment: before the users start, each Locust process reads up to
``--cvh-sample`` ids through RegistryService.ListCustomers (reported as nothing: it is set-up, not load).
Signals for what-if and batch scoring come from the seeded synthetic base (``clients/synthetic.py``,
``--cvh-seed``), so two runs with the same seed send the same data. Each user draws customers with its own
seeded random generator.

The writers (and the mix) write: UpdateCustomer rewrites a display name with the value it just read (a
no-op for the data, a full write for the server), RecordSignals records synthetic observations that become
the customers' current signals. Point them at a test deployment.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass

from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from locust import constant, events
from locust.runners import LocalRunner, MasterRunner

from cvh.adoption.v1 import adoption_service_pb2 as adoption_pb
from cvh.adoption.v1 import adoption_service_pb2_grpc
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hierarchy_pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc
from cvh.registry.v1 import registry_service_pb2 as registry_pb
from cvh.registry.v1 import registry_service_pb2_grpc
from cvh.scoring.v1 import scoring_service_pb2 as scoring_pb
from cvh.scoring.v1 import scoring_service_pb2_grpc
from loadtests.grpc_user import GrpcUser, open_channel, rpc_task, token_metadata
from wire.columns import telemetry_chunk, to_chunk

log = logging.getLogger("cvh.loadtest")

DEFAULT_SAMPLE = 5_000
LIST_PAGE = 1_000
BATCH_GET_SIZE = 20
RANK_SIZES = (2, 6)
SCORE_BATCH_ROWS = 100
WHAT_IF_ROWS = 1_000
RECORD_CUSTOMERS = (1, 5)
TELEMETRY_EVENTS = 1_000
TELEMETRY_CUSTOMERS = (1, 20)
GOODWILL_MINOR = (100, 2_000)  # a small credit: most stay within a tier's budget, some go past it
DAY_US = 86_400 * 1_000_000


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--cvh-sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                        help=f"customer ids each Locust process reads from the registry (default {DEFAULT_SAMPLE:,})")
    parser.add_argument("--cvh-seed", type=int, default=0, metavar="SEED",
                        help="seed of the synthetic signals and of each user's choices (default 0)")


@dataclass
class Sample:
    """What the users call with: customer names from the deployment, signals from the synthetic base."""

    names: list[str]
    what_if: list[dict[str, float]]
    batches: list[scoring_pb.ScoreBatchRequest]
    seed: int = 0


_sample: Sample | None = None
_user_numbers = itertools.count()


def load_sample(environment) -> Sample:
    """Read customer names from the registry and build the synthetic signals (once per process)."""
    global _sample
    from clients import synthetic

    options = environment.parsed_options
    size = max(1, getattr(options, "cvh_sample", DEFAULT_SAMPLE))
    seed = getattr(options, "cvh_seed", 0)
    names: list[str] = []
    channel = open_channel(environment.host or "", options)
    try:
        stub = registry_service_pb2_grpc.RegistryServiceStub(channel)
        token = ""
        while len(names) < size:
            page = stub.ListCustomers(
                registry_pb.ListCustomersRequest(page_size=min(LIST_PAGE, size - len(names)), page_token=token),
                metadata=token_metadata(options), timeout=60)
            names.extend(customer.name for customer in page.customers)
            token = page.next_page_token
            if not token:
                break
    finally:
        channel.close()
    if not names:
        log.error("the registry at %s has no customers: import some first (e.g. `cvh loadtest` seeds a base); "
                  "calls will name customers that do not exist (GetPriority and ScoreCustomer answer NOT_FOUND)",
                  environment.host)
        names = [f"customers/cust-{i:07d}" for i in range(size)]
    base = synthetic.generate_base(WHAT_IF_ROWS, seed=seed)
    what_if = [{name: float(v) for name, v in zip(base.signal_names, row) if v == v} for row in base.values]
    batches = [scoring_pb.ScoreBatchRequest(signals=to_chunk(base.customer_ids[i:i + SCORE_BATCH_ROWS],
                                                             base.signal_names,
                                                             base.values[i:i + SCORE_BATCH_ROWS]))
               for i in range(0, WHAT_IF_ROWS, SCORE_BATCH_ROWS)]
    _sample = Sample(names, what_if, batches, seed)
    log.info("loaded %d customer names from %s", len(names), environment.host)
    return _sample


@events.init.add_listener
def _on_init(environment, runner=None, **_kwargs) -> None:
    # A local run reads its sample before the test starts: Locust's --run-time clock starts with the test,
    # and a sample read under load can take seconds of a short phase. (After grpc_user's init listener,
    # registered first, has made gRPC gevent-aware.) A distributed worker learns its host from the master
    # and reads at test start.
    if isinstance(runner, LocalRunner) and environment.host:
        load_sample(environment)


@events.test_start.add_listener
def _on_test_start(environment, **_kwargs) -> None:
    if not isinstance(environment.runner, MasterRunner) and _sample is None:  # the master runs no users
        load_sample(environment)


class CvhUser(GrpcUser):
    """A user with stubs of the four services and health, and a seeded choice of customers."""

    abstract = True

    def make_stubs(self, channel) -> None:
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(channel)
        self.scoring = scoring_service_pb2_grpc.ScoringServiceStub(channel)
        self.hierarchy = hierarchy_service_pb2_grpc.HierarchyServiceStub(channel)
        self.adoption = adoption_service_pb2_grpc.AdoptionServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def on_start(self) -> None:
        self.sample = _sample or load_sample(self.environment)
        self.rng = random.Random(self.sample.seed * 1_000_003 + next(_user_numbers))

    def customer(self) -> str:
        return self.rng.choice(self.sample.names)

    def customers(self, count: int) -> list[str]:
        names = self.sample.names
        return self.rng.sample(names, min(count, len(names)))


# -- support tooling ---------------------------------------------------------------------------------------

def get_priority(user: CvhUser) -> None:
    user.hierarchy.GetPriority(hierarchy_pb.GetPriorityRequest(customer=user.customer()))


def batch_get_priority(user: CvhUser) -> None:
    user.hierarchy.BatchGetPriority(hierarchy_pb.BatchGetPriorityRequest(customers=user.customers(BATCH_GET_SIZE)))


def rank_customers(user: CvhUser) -> None:
    count = user.rng.randint(*RANK_SIZES)
    user.hierarchy.RankCustomers(hierarchy_pb.RankCustomersRequest(customers=user.customers(count)))


# -- internal systems --------------------------------------------------------------------------------------

def score_customer(user: CvhUser) -> None:
    user.scoring.ScoreCustomer(scoring_pb.ScoreCustomerRequest(customer=user.customer()))


def score_signals(user: CvhUser) -> None:
    user.scoring.ScoreSignals(scoring_pb.ScoreSignalsRequest(signals=user.rng.choice(user.sample.what_if)))


def score_batch(user: CvhUser) -> None:
    for _ in user.scoring.ScoreBatch(iter([user.rng.choice(user.sample.batches)])):
        pass


# -- registry writers --------------------------------------------------------------------------------------

def update_customer(user: CvhUser) -> None:
    customer = user.registry.GetCustomer(registry_pb.GetCustomerRequest(name=user.customer()))
    user.registry.UpdateCustomer(registry_pb.UpdateCustomerRequest(
        customer=registry_pb.Customer(name=customer.name, display_name=customer.display_name),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"])))


def record_signals(user: CvhUser) -> None:
    request = registry_pb.RecordSignalsRequest()
    for name in user.customers(user.rng.randint(*RECORD_CUSTOMERS)):
        entry = request.observations.add(customer=name)
        signals = user.rng.choice(user.sample.what_if)
        for signal in user.rng.sample(sorted(signals), min(3, len(signals))):
            entry.signals[signal].value = signals[signal]
    user.registry.RecordSignals(request)


# -- adoption ----------------------------------------------------------------------------------------------

def record_telemetry(user: CvhUser) -> None:
    """Product events of the demo's value hierarchy (clients/synthetic_adoption.py) for a few customers."""
    from clients.synthetic_adoption import event_names

    names = event_names()
    customers = [name.removeprefix("customers/") for name in user.customers(user.rng.randint(*TELEMETRY_CUSTOMERS))]
    rng = user.rng
    now = time.time_ns() // 1000
    user.adoption.RecordTelemetry(iter([telemetry_chunk(
        customers, names, [rng.randrange(len(customers)) for _ in range(TELEMETRY_EVENTS)],
        [rng.randrange(len(names)) for _ in range(TELEMETRY_EVENTS)],
        [now - rng.randrange(30 * DAY_US) for _ in range(TELEMETRY_EVENTS)])]))


def get_customer_adoption(user: CvhUser) -> None:
    user.adoption.GetCustomerAdoption(adoption_pb.GetCustomerAdoptionRequest(customer=user.customer()))


# -- the front line ---------------------------------------------------------------------------------------

def serve_customer(user: CvhUser) -> None:
    """An agent's contact: who the customer is and what the agent may do (GetPriority), then a decision the
    answer allows, recorded (RecordServiceDecision). Budgets run down as the test goes on, so later credits
    are answered NEEDS_ESCALATION: both outcomes are load."""
    priority = user.hierarchy.GetPriority(hierarchy_pb.GetPriorityRequest(customer=user.customer()))
    authority = priority.policy.authority
    request = hierarchy_pb.RecordServiceDecisionRequest(customer=priority.customer, reason="load test",
                                                        person=priority.owner or "front-line@loadtest")
    choices = ["escalation", *(["credit"] * 3 if authority.goodwill_credit_limit_minor else []),
               *(["waiver"] if authority.may_waive_fees else []), *(["offer"] if authority.offers else [])]
    choice = user.rng.choice(choices)
    if choice == "credit":
        request.kind = hierarchy_pb.DECISION_KIND_GOODWILL_CREDIT
        request.amount_minor, request.currency = user.rng.randint(*GOODWILL_MINOR), authority.currency
    elif choice == "waiver":
        request.kind = hierarchy_pb.DECISION_KIND_FEE_WAIVER
    elif choice == "offer":
        request.kind, request.offer = hierarchy_pb.DECISION_KIND_OFFER, user.rng.choice(authority.offers)
    else:
        request.kind = hierarchy_pb.DECISION_KIND_ESCALATION
    user.hierarchy.RecordServiceDecision(request)


def check_health(user: CvhUser) -> None:
    user.health.Check(health_pb2.HealthCheckRequest())


def _tasks(weights: dict) -> dict:
    """Tasks whose failed calls are counted by the interceptor, without a traceback per failure."""
    return {rpc_task(function): weight for function, weight in weights.items()}


SUPPORT_TOOLING = {get_priority: 16, batch_get_priority: 2, rank_customers: 2}
INTERNAL_SYSTEMS = {score_customer: 6, score_signals: 3, score_batch: 1}
REGISTRY_WRITERS = {update_customer: 1, record_signals: 2}
FRONT_LINE = {serve_customer: 1}


def _mix(*profiles: tuple[dict, int]) -> dict:
    """Profiles in proportion: each profile's weights scaled so its share of calls is ``share``."""
    mixed = {}
    for weights, share in profiles:
        total = sum(weights.values())
        for function, weight in weights.items():
            mixed[function] = mixed.get(function, 0) + max(1, weight * share * 10 // total)
    return mixed


class SupportToolingUser(CvhUser):
    """Front-line tools asking who a customer is and what they may do for them."""

    tasks = _tasks(SUPPORT_TOOLING)


class InternalSystemsUser(CvhUser):
    """Systems scoring customers online, what-if, and in small batches."""

    tasks = _tasks(INTERNAL_SYSTEMS)


class RegistryWriterUser(CvhUser):
    """CRM syncs updating customers and recording signal observations."""

    tasks = _tasks(REGISTRY_WRITERS)


class MixedUser(CvhUser):
    """Support tooling, the front line, internal systems and writers in the proportion 6 : 1 : 2 : 1."""

    tasks = _tasks(_mix((SUPPORT_TOOLING, 6), (FRONT_LINE, 1), (INTERNAL_SYSTEMS, 2), (REGISTRY_WRITERS, 1)))


class TelemetryWriterUser(CvhUser):
    """Product analytics pipelines sending events in columnar messages."""

    tasks = _tasks({record_telemetry: 1})


class AdoptionLookupUser(CvhUser):
    """Customer Success and Sales tools asking what a customer has achieved, and why not."""

    tasks = _tasks({get_customer_adoption: 1})


class FrontLineUser(CvhUser):
    """Agents serving customers: a priority look-up, then a service decision recorded."""

    tasks = _tasks(FRONT_LINE)


class HealthUser(CvhUser):
    """grpc.health.v1 Check only: the calibration ceiling of this harness against this server."""

    tasks = _tasks({check_health: 1})

    def on_start(self) -> None:  # needs no customers
        self.rng = random.Random(next(_user_numbers))


class LatencyProbeUser(HealthUser):
    """One user beside a scenario's users, calling the health Check twenty times a second: the tail that the
    machine and the harness add to every call in that very phase (``cvh loadtest`` judges the scenario's p99
    limits with it)."""

    fixed_count = 1
    wait_time = constant(0.05)


class GetPriorityUser(CvhUser):
    """GetPriority alone, to compare with the ceiling."""

    tasks = _tasks({get_priority: 1})


class ScoreCustomerUser(CvhUser):
    """ScoreCustomer alone, to compare with the ceiling."""

    tasks = _tasks({score_customer: 1})


SCENARIOS = {
    "health": HealthUser, "get_priority": GetPriorityUser, "score_customer": ScoreCustomerUser,
    "support_tooling": SupportToolingUser, "internal_systems": InternalSystemsUser,
    "registry_writers": RegistryWriterUser, "mixed": MixedUser, "telemetry_writers": TelemetryWriterUser,
    "adoption_lookup": AdoptionLookupUser, "front_line": FrontLineUser,
}
