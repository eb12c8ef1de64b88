"""The Python client: one object over one channel, a method for every RPC of the suite.

    with CvhClient("127.0.0.1:50051") as cvh:
        priority = cvh.get_priority("acme")
        for customer in cvh.list_customers(owner="ana"):   # pages fetched as you iterate
            ...

Customers may be given as ids (``acme``) or resource names (``customers/acme``).
Unary calls get ``timeout`` seconds unless a call says otherwise; streams have no
deadline by default. Every failure is raised as :class:`clients.errors.CvhError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import grpc
import numpy as np
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.errors import CvhError
from cvh.adoption.v1 import adoption_service_pb2 as adoption_pb
from cvh.adoption.v1 import adoption_service_pb2_grpc
from cvh.common.v1 import common_pb2
from cvh.hierarchy.v1 import hierarchy_service_pb2 as hierarchy_pb
from cvh.hierarchy.v1 import hierarchy_service_pb2_grpc
from cvh.registry.v1 import registry_service_pb2 as registry_pb
from cvh.registry.v1 import registry_service_pb2_grpc
from cvh.scoring.v1 import scoring_service_pb2 as scoring_pb
from cvh.scoring.v1 import scoring_service_pb2_grpc
from wire import columns
from wire.channels import DEFAULT_SERVER, Tls, open_channel

DEFAULT_TIMEOUT = 10.0
FINISHED_RUN_STATES = (scoring_pb.RUN_STATE_COMPLETED, scoring_pb.RUN_STATE_FAILED, scoring_pb.RUN_STATE_CANCELLED)


def customer_name(customer: str) -> str:
    """``acme`` or ``customers/acme`` -> ``customers/acme``."""
    return customer if customer.startswith("customers/") else f"customers/{customer}"


def customer_id(name: str) -> str:
    return name.removeprefix("customers/")


def model_name(model: str) -> str:
    """``default``, ``models/default`` or ``models/default/versions/2``; empty stays empty (the default)."""
    return model if not model or model.startswith("models/") else f"models/{model}"


def run_name(run: str | int) -> str:
    run = str(run)
    return run if run.startswith("runs/") else f"runs/{run}"


class Stream:
    """A server stream: iterate it for messages; ``cancel()`` ends it, from any thread, and then
    iteration simply stops. Also a context manager that cancels on exit."""

    def __init__(self, call) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> "Stream":
        return self

    def __next__(self):
        try:
            return next(self._call)
        except grpc.RpcError as error:
            if self._cancelled and error.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise CvhError.from_rpc_error(error) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class CvhClient:
    """Typed access to the registry, scoring, hierarchy and adoption services at one target."""

    def __init__(self, target: str = DEFAULT_SERVER, *, tls: Tls | None = None, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, load_balancing: str = "",
                 channel: grpc.Channel | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = channel or open_channel(target, tls=tls, token=token, load_balancing=load_balancing)
        self.registry = registry_service_pb2_grpc.RegistryServiceStub(self.channel)
        self.scoring = scoring_service_pb2_grpc.ScoringServiceStub(self.channel)
        self.hierarchy = hierarchy_service_pb2_grpc.HierarchyServiceStub(self.channel)
        self.adoption = adoption_service_pb2_grpc.AdoptionServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CvhClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise CvhError.from_rpc_error(error) from None

    def _pages(self, method, request, items: str, page_size: int = 0) -> Iterator:
        """Every item of a paged List call, fetching the next page when the previous is used up."""
        request.page_size = page_size
        while True:
            response = self._unary(method, request)
            yield from getattr(response, items)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    # -- health ------------------------------------------------------------------------------------------

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The serving status of ``service`` ("" = the whole server): SERVING, NOT_SERVING, ..."""
        response = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float = 30.0, service: str = "") -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(service, timeout=2) == "SERVING":
                    return
            except CvhError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.target} is not serving after {timeout:.0f} s")
            time.sleep(0.2)

    # -- registry ----------------------------------------------------------------------------------------

    def create_customer(self, customer: registry_pb.Customer) -> registry_pb.Customer:
        return self._unary(self.registry.CreateCustomer, registry_pb.CreateCustomerRequest(customer=customer))

    def get_customer(self, customer: str) -> registry_pb.Customer:
        return self._unary(self.registry.GetCustomer, registry_pb.GetCustomerRequest(name=customer_name(customer)))

    def batch_get_customers(self, customers: Sequence[str], allow_missing: bool = False) -> list[registry_pb.Customer]:
        request = registry_pb.BatchGetCustomersRequest(names=[customer_name(c) for c in customers],
                                                       allow_missing=allow_missing)
        return list(self._unary(self.registry.BatchGetCustomers, request).customers)

    def update_customer(self, customer: registry_pb.Customer, fields: Sequence[str]) -> registry_pb.Customer:
        """Updates ``fields`` of ``customer`` (its ``name`` says which); with ``etag`` set, only if unchanged."""
        request = registry_pb.UpdateCustomerRequest(customer=customer,
                                                    update_mask=field_mask_pb2.FieldMask(paths=list(fields)))
        return self._unary(self.registry.UpdateCustomer, request)

    def delete_customer(self, customer: str, etag: str = "") -> None:
        self._unary(self.registry.DeleteCustomer, registry_pb.DeleteCustomerRequest(name=customer_name(customer),
                                                                                     etag=etag))

    def list_customers(self, *, parent: str = "", role: int = 0, owner: str = "", label: str = "", stage: int = 0,
                       page_size: int = 0) -> Iterator[registry_pb.Customer]:
        request = registry_pb.ListCustomersRequest(parent=customer_name(parent) if parent else "",
                                                   stakeholder_role=role, owner=owner, label=label,
                                                   lifecycle_stage=stage)
        return self._pages(self.registry.ListCustomers, request, "customers", page_size)

    def import_customers(self, requests: Iterable[registry_pb.ImportCustomersRequest],
                         timeout: float | None = None) -> registry_pb.ImportCustomersResponse:
        """Streams an import; ``requests`` may be a generator (rows or ``columns`` messages)."""
        try:
            return self.registry.ImportCustomers(iter(requests), timeout=timeout)
        except grpc.RpcError as error:
            raise CvhError.from_rpc_error(error) from None

    def import_columns(self, chunks: Iterable[registry_pb.CustomerColumns], all_or_nothing: bool = False,
                       timeout: float | None = None) -> registry_pb.ImportCustomersResponse:
        """The bulk import: each chunk is at most 10,000 customers (see :func:`columns.customer_columns`)."""
        requests = (registry_pb.ImportCustomersRequest(columns=chunk, all_or_nothing=all_or_nothing)
                    for chunk in chunks)
        return self.import_customers(requests, timeout)

    def record_signals(self, observations: Mapping[str, Mapping[str, float]] | Sequence[registry_pb.SignalObservations]
                       ) -> registry_pb.RecordSignalsResponse:
        """Records observations: ``{"acme": {"nps": 9.0}}`` (observed now) or SignalObservations messages."""
        if isinstance(observations, Mapping):
            observations = [registry_pb.SignalObservations(
                customer=customer_name(c), signals={k: registry_pb.SignalValue(value=v) for k, v in values.items()})
                for c, values in observations.items()]
        return self._unary(self.registry.RecordSignals, registry_pb.RecordSignalsRequest(observations=observations))

    def list_signal_history(self, customer: str, signal: str = "",
                            page_size: int = 0) -> Iterator[registry_pb.SignalObservation]:
        request = registry_pb.ListSignalHistoryRequest(customer=customer_name(customer), signal=signal)
        return self._pages(self.registry.ListSignalHistory, request, "observations", page_size)

    def list_lifecycle_history(self, customer: str, page_size: int = 0) -> Iterator[registry_pb.LifecycleChange]:
        """The stages ``customer`` entered, newest (its current stage) first."""
        request = registry_pb.ListLifecycleHistoryRequest(customer=customer_name(customer))
        return self._pages(self.registry.ListLifecycleHistory, request, "changes", page_size)

    def set_lifecycle_stage(self, customer: str, stage: int, enter_time_us: int | None = None) -> registry_pb.Customer:
        """Moves ``customer`` to ``stage`` (entered at ``enter_time_us``, or now); a stage it is in changes nothing."""
        message = registry_pb.Customer(name=customer_name(customer), lifecycle_stage=stage)
        if enter_time_us is not None:
            message.lifecycle_stage_time.FromMicroseconds(enter_time_us)
        return self.update_customer(message, ["lifecycle_stage"])

    def set_team(self, customer: str, members: Sequence[registry_pb.TeamMember]) -> registry_pb.Customer:
        """Sets the roles ``members`` name on ``customer``'s own team (a member without a person clears its role;
        roles not named stay); returns the customer with its effective team."""
        return self.update_customer(registry_pb.Customer(name=customer_name(customer), team=list(members)), ["team"])

    def list_team_history(self, customer: str, role: str = "",
                          page_size: int = 0) -> Iterator[registry_pb.TeamMembership]:
        """Who served ``customer`` in which role (or in ``role``) and when, newest start first."""
        request = registry_pb.ListTeamHistoryRequest(customer=customer_name(customer), role=role)
        return self._pages(self.registry.ListTeamHistory, request, "memberships", page_size)

    def get_organization_team(self) -> registry_pb.OrganizationTeam:
        return self._unary(self.registry.GetOrganizationTeam, registry_pb.GetOrganizationTeamRequest())

    def update_organization_team(self, members: Sequence[registry_pb.TeamMember]) -> registry_pb.OrganizationTeam:
        """Sets the roles ``members`` name on the organisation's team (as ``set_team``)."""
        request = registry_pb.UpdateOrganizationTeamRequest(members=list(members))
        return self._unary(self.registry.UpdateOrganizationTeam, request)

    def update_person(self, person_id: str, display_name: str | None = None,
                      capacity: int | None = None) -> registry_pb.Person:
        """Sets the fields given (capacity 0: not set) of a person, adding the person when unknown."""
        person = registry_pb.Person(person_id=person_id, display_name=display_name or "", capacity=capacity or 0)
        paths = [name for name, value in (("display_name", display_name), ("capacity", capacity)) if value is not None]
        request = registry_pb.UpdatePersonRequest(person=person, update_mask=field_mask_pb2.FieldMask(paths=paths))
        return self._unary(self.registry.UpdatePerson, request)

    def list_people(self, page_size: int = 0) -> Iterator[registry_pb.Person]:
        return self._pages(self.registry.ListPeople, registry_pb.ListPeopleRequest(), "people", page_size)

    def export_signal_matrix(self, signal_names: Sequence[str], chunk_size: int = 0,
                             timeout: float | None = None) -> Stream:
        request = registry_pb.ExportSignalMatrixRequest(signal_names=list(signal_names), chunk_size=chunk_size)
        return Stream(self.registry.ExportSignalMatrix(request, timeout=timeout))

    def export_signals(self, signal_names: Sequence[str], on_progress: Callable[[int, int], None] | None = None
                       ) -> columns.SignalExport:
        """The whole signal matrix as arrays; ``on_progress(read, total)`` after each chunk."""
        reader = columns.SignalExportReader(signal_names)
        for message in self.export_signal_matrix(signal_names):
            read = reader.add(message)
            if on_progress:
                on_progress(read, reader.export.total_customers)
        return reader.result()

    def watch_customer_changes(self, after_sequence: int = 0, timeout: float | None = None) -> Stream:
        """The registry's change feed after ``after_sequence`` (an export's ``sequence``, or the last
        ``last_sequence`` applied), then each change as it commits; batches of changes as columns."""
        request = registry_pb.WatchCustomerChangesRequest(after_sequence=after_sequence)
        return Stream(self.registry.WatchCustomerChanges(request, timeout=timeout))

    # -- scoring: models and runs ------------------------------------------------------------------------

    def create_model(self, model: scoring_pb.ValueModel) -> scoring_pb.ValueModel:
        return self._unary(self.scoring.CreateModel, scoring_pb.CreateModelRequest(model=model))

    def get_model(self, model: str = "default") -> scoring_pb.ValueModel:
        return self._unary(self.scoring.GetModel, scoring_pb.GetModelRequest(name=model_name(model)))

    def list_models(self, model_id: str = "", page_size: int = 0) -> Iterator[scoring_pb.ValueModel]:
        return self._pages(self.scoring.ListModels, scoring_pb.ListModelsRequest(model_id=model_id), "models",
                           page_size)

    def activate_model(self, version: str) -> scoring_pb.ValueModel:
        return self._unary(self.scoring.ActivateModel, scoring_pb.ActivateModelRequest(name=model_name(version)))

    def start_run(self, model: str = "") -> scoring_pb.ScoringRun:
        return self._unary(self.scoring.StartScoringRun, scoring_pb.StartScoringRunRequest(model=model_name(model)))

    def get_run(self, run: str | int) -> scoring_pb.ScoringRun:
        return self._unary(self.scoring.GetScoringRun, scoring_pb.GetScoringRunRequest(name=run_name(run)))

    def list_runs(self, model_id: str = "", state: int = 0, page_size: int = 0) -> Iterator[scoring_pb.ScoringRun]:
        request = scoring_pb.ListScoringRunsRequest(model_id=model_id, state=state)
        return self._pages(self.scoring.ListScoringRuns, request, "runs", page_size)

    def watch_run(self, run: str | int, timeout: float | None = None) -> Stream:
        """The run's state on every change, until it ends."""
        request = scoring_pb.WatchScoringRunRequest(name=run_name(run))
        return Stream(self.scoring.WatchScoringRun(request, timeout=timeout))

    def watch_runs(self, model_id: str = "", include_current: bool = False,
                   timeout: float | None = None) -> Stream:
        request = scoring_pb.WatchRunsRequest(model_id=model_id, include_current=include_current)
        return Stream(self.scoring.WatchRuns(request, timeout=timeout))

    def wait_for_run(self, run: str | int, on_progress: Callable[[scoring_pb.ScoringRun], None] | None = None,
                     timeout: float | None = None) -> scoring_pb.ScoringRun:
        """Follows the run until it ends; returns its final state (completed, failed or cancelled)."""
        last = self.get_run(run)
        if last.state in FINISHED_RUN_STATES:
            return last
        for last in self.watch_run(run, timeout):
            if on_progress:
                on_progress(last)
            if last.state in FINISHED_RUN_STATES:
                break
        return last

    def cancel_run(self, run: str | int) -> scoring_pb.ScoringRun:
        return self._unary(self.scoring.CancelScoringRun, scoring_pb.CancelScoringRunRequest(name=run_name(run)))

    def stream_run_results(self, run: str | int, chunk_size: int = 0,
                           timeout: float | None = None) -> Stream:
        request = scoring_pb.StreamRunResultsRequest(run=run_name(run), chunk_size=chunk_size)
        return Stream(self.scoring.StreamRunResults(request, timeout=timeout))

    def import_run_results(self, requests: Iterable[scoring_pb.ImportRunResultsRequest],
                           timeout: float | None = None) -> scoring_pb.ScoringRun:
        """Streams results scored elsewhere; the server checks them whole and answers with the completed run."""
        try:
            return self.scoring.ImportRunResults(iter(requests), timeout=timeout)
        except grpc.RpcError as error:
            raise CvhError.from_rpc_error(error) from None

    def run_results(self, run: str | int) -> columns.RunResults:
        """A run's whole results as arrays, in rank order."""
        reader = columns.RunResultsReader()
        for chunk in self.stream_run_results(run):
            reader.add(chunk)
        return reader.result()

    def list_run_results(self, run: str | int, tier_id: str = "",
                         page_size: int = 0) -> Iterator[scoring_pb.CustomerResult]:
        request = scoring_pb.ListRunResultsRequest(run=run_name(run), tier_id=tier_id)
        return self._pages(self.scoring.ListRunResults, request, "results", page_size)

    def get_tier_movement(self, run: str | int) -> scoring_pb.TierMovement:
        return self._unary(self.scoring.GetTierMovement, scoring_pb.GetTierMovementRequest(run=run_name(run)))

    def get_outcome_report(self, from_run: str = "", to_run: str = "", model: str = "",
                           last_runs: int = 0) -> scoring_pb.OutcomeReport:
        """Outcomes per tier between two runs, or between consecutive pairs of a model's last ``last_runs``."""
        request = scoring_pb.GetOutcomeReportRequest(
            from_run=run_name(from_run) if from_run else "", to_run=run_name(to_run) if to_run else "",
            model=model_name(model), last_runs=last_runs)
        return self._unary(self.scoring.GetOutcomeReport, request)

    def get_customer_history(self, customer: str, model: str = "", last_runs: int = 0) -> scoring_pb.CustomerHistory:
        request = scoring_pb.GetCustomerHistoryRequest(customer=customer_name(customer), model=model_name(model),
                                                       last_runs=last_runs)
        return self._unary(self.scoring.GetCustomerHistory, request)

    # -- scoring: online -----------------------------------------------------------------------------------

    def score_customer(self, customer: str, model: str = "") -> scoring_pb.CustomerScore:
        request = scoring_pb.ScoreCustomerRequest(customer=customer_name(customer), model=model_name(model))
        return self._unary(self.scoring.ScoreCustomer, request)

    def score_signals(self, signals: Mapping[str, float], model: str = "") -> scoring_pb.CustomerScore:
        request = scoring_pb.ScoreSignalsRequest(signals=dict(signals), model=model_name(model))
        return self._unary(self.scoring.ScoreSignals, request)

    def score_batch(self, chunks: Iterable[common_pb2.ColumnarChunk], model: str = "",
                    timeout: float | None = None) -> Stream:
        def requests():
            for i, chunk in enumerate(chunks):
                yield scoring_pb.ScoreBatchRequest(model=model_name(model) if i == 0 else "", signals=chunk)
        return Stream(self.scoring.ScoreBatch(requests(), timeout=timeout))

    def score_matrix(self, customer_ids: Sequence[str], signal_names: Sequence[str], values: np.ndarray,
                     model: str = "", rows_per_message: int = 10_000) -> columns.BatchScores:
        """Scores a whole matrix of signals (rows = customers) under the current run's cut-offs."""
        chunks = (columns.to_chunk(customer_ids[i:i + rows_per_message], signal_names,
                                   values[i:i + rows_per_message])
                  for i in range(0, len(customer_ids), rows_per_message))
        return columns.read_batch_scores(self.score_batch(chunks, model))

    # -- hierarchy -----------------------------------------------------------------------------------------

    def get_priority(self, customer: str, timeout: float | None = None) -> hierarchy_pb.Priority:
        request = hierarchy_pb.GetPriorityRequest(customer=customer_name(customer))
        return self._unary(self.hierarchy.GetPriority, request, timeout)

    def batch_get_priority(self, customers: Sequence[str]) -> list[hierarchy_pb.Priority]:
        request = hierarchy_pb.BatchGetPriorityRequest(customers=[customer_name(c) for c in customers])
        return list(self._unary(self.hierarchy.BatchGetPriority, request).priorities)

    def rank_customers(self, customers: Sequence[str]) -> list[hierarchy_pb.RankedCustomer]:
        request = hierarchy_pb.RankCustomersRequest(customers=[customer_name(c) for c in customers])
        return list(self._unary(self.hierarchy.RankCustomers, request).ranked)

    def list_tier_members(self, tier_id: str, page_size: int = 0) -> Iterator[hierarchy_pb.TierMember]:
        return self._pages(self.hierarchy.ListTierMembers, hierarchy_pb.ListTierMembersRequest(tier_id=tier_id),
                           "members", page_size)

    def list_bad_profits(self, tier_id: str = "", owner: str = "",
                         page_size: int = 0) -> Iterator[hierarchy_pb.BadProfitCustomer]:
        return self._pages(self.hierarchy.ListBadProfits,
                           hierarchy_pb.ListBadProfitsRequest(tier_id=tier_id, owner=owner), "customers", page_size)

    def get_book_of_business(self, person: str, role: str = "") -> hierarchy_pb.BookOfBusiness:
        request = hierarchy_pb.GetBookOfBusinessRequest(person=person, role=role)
        return self._unary(self.hierarchy.GetBookOfBusiness, request)

    def list_portfolios(self, role: str) -> hierarchy_pb.ListPortfoliosResponse:
        return self._unary(self.hierarchy.ListPortfolios, hierarchy_pb.ListPortfoliosRequest(role=role))

    def record_service_decision(self, request: hierarchy_pb.RecordServiceDecisionRequest
                                ) -> hierarchy_pb.ServiceDecision:
        return self._unary(self.hierarchy.RecordServiceDecision, request)

    def get_authority_usage(self, tier_id: str = "", person: str = "", period_us: int | None = None,
                            between_us: tuple[int, int] | None = None) -> hierarchy_pb.AuthorityUsage:
        """Front-line decisions of the goodwill period holding ``period_us`` (default: the current one), or of
        ``between_us`` (start inclusive, end exclusive, microseconds since the epoch)."""
        request = hierarchy_pb.GetAuthorityUsageRequest(tier_id=tier_id, person=person)
        if period_us is not None:
            request.period.FromMicroseconds(period_us)
        if between_us is not None:
            request.start_time.FromMicroseconds(between_us[0])
            request.end_time.FromMicroseconds(between_us[1])
        return self._unary(self.hierarchy.GetAuthorityUsage, request)

    def get_hierarchy_summary(self) -> hierarchy_pb.HierarchySummary:
        return self._unary(self.hierarchy.GetHierarchySummary, hierarchy_pb.GetHierarchySummaryRequest())

    def get_account_tree(self, customer: str, max_children: int = 0) -> hierarchy_pb.AccountTree:
        request = hierarchy_pb.GetAccountTreeRequest(customer=customer_name(customer), max_children=max_children)
        return self._unary(self.hierarchy.GetAccountTree, request)

    def get_tier_policy(self) -> hierarchy_pb.TierPolicy:
        return self._unary(self.hierarchy.GetTierPolicy, hierarchy_pb.GetTierPolicyRequest())

    def set_tier_policy(self, policy: hierarchy_pb.TierPolicy) -> hierarchy_pb.TierPolicy:
        return self._unary(self.hierarchy.SetTierPolicy, hierarchy_pb.SetTierPolicyRequest(policy=policy))

    def watch_priority_changes(self, tier_ids: Sequence[str] = (), owner: str = "",
                               timeout: float | None = None) -> Stream:
        request = hierarchy_pb.WatchPriorityChangesRequest(tier_ids=list(tier_ids), owner=owner)
        return Stream(self.hierarchy.WatchPriorityChanges(request, timeout=timeout))

    def get_snapshot_info(self) -> hierarchy_pb.SnapshotInfo:
        return self._unary(self.hierarchy.GetSnapshotInfo, hierarchy_pb.GetSnapshotInfoRequest())

    def wait_for_snapshot(self, run: str, timeout: float = 60.0) -> hierarchy_pb.SnapshotInfo:
        """Waits until the hierarchy serves ``run`` (it loads each completed run in the background)."""
        deadline = time.monotonic() + timeout
        while (info := self.get_snapshot_info()).run != run_name(run):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the hierarchy still serves {info.run or 'no run'} after {timeout:.0f} s, "
                                   f"not {run_name(run)}")
            time.sleep(0.1)
        return info

    # -- adoption: the value hierarchy and telemetry -----------------------------------------------------------

    def create_value_map_version(self, value_map: adoption_pb.ValueMapVersion, activate: bool = True,
                                 validate_only: bool = False) -> adoption_pb.ValueMapVersion:
        """Stores a new version of the value hierarchy (and makes it the active one unless ``activate`` is
        False); with ``validate_only``, only checks it."""
        request = adoption_pb.CreateValueMapVersionRequest(value_map=value_map, skip_activation=not activate,
                                                           validate_only=validate_only)
        return self._unary(self.adoption.CreateValueMapVersion, request)

    def get_value_map_version(self, version: str | int = "") -> adoption_pb.ValueMapVersion:
        """One version (a number or "valueMapVersions/N"), or the active one."""
        request = adoption_pb.GetValueMapVersionRequest(name=value_map_version_name(version))
        return self._unary(self.adoption.GetValueMapVersion, request)

    def list_value_map_versions(self, page_size: int = 0) -> Iterator[adoption_pb.ValueMapVersion]:
        return self._pages(self.adoption.ListValueMapVersions, adoption_pb.ListValueMapVersionsRequest(),
                           "value_maps", page_size)

    def activate_value_map_version(self, version: str | int) -> adoption_pb.ValueMapVersion:
        request = adoption_pb.ActivateValueMapVersionRequest(name=value_map_version_name(version))
        return self._unary(self.adoption.ActivateValueMapVersion, request)

    def diff_value_map_versions(self, base: str | int, target: str | int) -> adoption_pb.ValueMapDiff:
        request = adoption_pb.DiffValueMapVersionsRequest(base=value_map_version_name(base),
                                                          target=value_map_version_name(target))
        return self._unary(self.adoption.DiffValueMapVersions, request)

    def get_customer_adoption(self, customer: str, version: str | int = "") -> adoption_pb.CustomerAdoption:
        """One customer's value hierarchy today: achieved, progress, and why not."""
        request = adoption_pb.GetCustomerAdoptionRequest(customer=customer_name(customer),
                                                         value_map_version=value_map_version_name(version))
        return self._unary(self.adoption.GetCustomerAdoption, request)

    def get_node_adoption(self, node_key: str = "", tier_id: str = "") -> adoption_pb.NodeAdoptionReport:
        """Adoption across the base of one node, or of every node, from the latest evaluation: per value tier
        (or of ``tier_id``), with the median time to value."""
        return self._unary(self.adoption.GetNodeAdoption,
                           adoption_pb.GetNodeAdoptionRequest(node_key=node_key, tier_id=tier_id))

    def list_node_customers(self, node_key: str, achieved: bool = True, tier_id: str = "", owner: str = "",
                            account: str = "", page_size: int = 1000) -> Iterator[adoption_pb.ListNodeCustomersResponse]:
        """Every page (with its total_size) of the customers that have (or have not) achieved a node, filtered."""
        request = adoption_pb.ListNodeCustomersRequest(
            node_key=node_key, tier_id=tier_id, owner=owner, page_size=page_size,
            account=customer_name(account) if account else "",
            achievement=adoption_pb.ACHIEVEMENT_ACHIEVED if achieved else adoption_pb.ACHIEVEMENT_NOT_ACHIEVED)
        while True:
            page = self._unary(self.adoption.ListNodeCustomers, request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def recommend_use_cases(self, customer: str, limit: int = 0, peers: int = 0
                            ) -> adoption_pb.RecommendUseCasesResponse:
        """The use cases a customer has not achieved that customers like it most often have."""
        return self._unary(self.adoption.RecommendUseCases, adoption_pb.RecommendUseCasesRequest(
            customer=customer_name(customer), limit=limit, peers=peers))

    def record_telemetry(self, requests: Iterable[adoption_pb.RecordTelemetryRequest],
                         timeout: float | None = None) -> adoption_pb.RecordTelemetryResponse:
        """Streams telemetry; ``requests`` may be a generator (see :func:`columns.telemetry_chunk`)."""
        try:
            return self.adoption.RecordTelemetry(iter(requests), timeout=timeout)
        except grpc.RpcError as error:
            raise CvhError.from_rpc_error(error) from None


def value_map_version_name(version: str | int) -> str:
    """``3``, ``"3"`` or ``"valueMapVersions/3"`` -> ``"valueMapVersions/3"``; empty stays empty (the active one)."""
    version = str(version)
    return version if not version or version.startswith("valueMapVersions/") else f"valueMapVersions/{version}"
