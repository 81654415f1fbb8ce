"""Vertex AI adapter, driven through the real google-cloud-aiplatform SDK against its fake."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")

from broker.clock import FakeClock  # noqa: E402
from broker.errors import (  # noqa: E402
    BudgetWarning,
    CapacityError,
    CredentialsError,
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderError,
    ProviderJobFailedError,
    ProviderUnavailableError,
    QuotaExceededError,
    ThrottledError,
    TransientProviderError,
)
from broker.providers.vertex import (  # noqa: E402
    VertexProvider,
    budget_milli_node_hours,
    map_google_error,
    optimization_objective,
)
from broker.spec import Task  # noqa: E402
from broker.states import JobState  # noqa: E402
from broker.testing import Fault, SyntheticJob, synthetic_job  # noqa: E402
from broker.testing import vertex_fake as vf  # noqa: E402

pytestmark = pytest.mark.cloud

SCHEDULE = (
    ("PIPELINE_STATE_QUEUED", 60.0),
    ("PIPELINE_STATE_PENDING", 60.0),
    ("PIPELINE_STATE_RUNNING", 180.0),
)
CREATE = r"/trainingPipelines$"
POLL = r"/trainingPipelines/\d+$"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[vf.VertexFake]:
    with vf.VertexFake(clock=clock, schedule=SCHEDULE, cancel_s=30.0) as server:
        yield server


@pytest.fixture
def provider(fake: vf.VertexFake) -> VertexProvider:
    return VertexProvider(**fake.client_settings(), poll_interval_s=60.0)


@pytest.fixture
def binary(tmp_path: Path) -> SyntheticJob:
    return synthetic_job(tmp_path, task=Task.BINARY, n_rows=600, max_usd=Decimal("100"))


def run_to_end(
    provider: VertexProvider, ref, clock: FakeClock
) -> list[tuple[JobState, str | None]]:
    seen = []
    for _ in range(50):
        status = provider.poll(ref)
        seen.append((status.state, status.secondary))
        if status.state.terminal:
            return seen
        clock.advance(60.0)
    raise AssertionError(f"job never ended: {seen[-3:]}")


# --- a whole job ------------------------------------------------------------------------


def test_vertex_job_runs_through_states_to_a_scored_model(
    provider: VertexProvider,
    fake: vf.VertexFake,
    clock: FakeClock,
    binary: SyntheticJob,
) -> None:
    from sklearn.metrics import roc_auc_score

    ref = provider.submit(binary.job)
    seen = run_to_end(provider, ref, clock)

    # 60 s queued, 60 s pending, 180 s running, polled every 60 s
    assert seen == [
        (JobState.QUEUED, "PIPELINE_STATE_QUEUED"),
        (JobState.QUEUED, "PIPELINE_STATE_PENDING"),
        (JobState.RUNNING, "PIPELINE_STATE_RUNNING"),
        (JobState.RUNNING, "PIPELINE_STATE_RUNNING"),
        (JobState.RUNNING, "PIPELINE_STATE_RUNNING"),
        (JobState.SUCCEEDED, "PIPELINE_STATE_SUCCEEDED"),
    ]
    result = provider.result(ref, binary.job)
    # 180 s on 4 nodes = 200 milli node hours at $21.252 per node hour
    assert result.provider_units["train_cost_milli_node_hours"] == 200
    assert result.actual_cost_usd == Decimal("4.2504")
    assert result.runtime_s == 180.0
    [entry] = result.leaderboard
    assert entry.provider == "vertex"
    assert entry.model_id == result.best_model_id
    assert entry.model_id.startswith(
        "projects/fake-project/locations/us-central1/models/"
    )
    assert set(entry.validation_metrics) == {"roc_auc", "log_loss"}
    assert (entry.validation_metrics["roc_auc"] or 0.0) > 0.85
    assert entry.params["train_budget_milli_node_hours"] == 1000
    assert (binary.job.run_dir / "model" / "model.json").is_file()

    proba = provider.predict(ref, binary.job, binary.test_features)
    assert proba.shape == (150, 2)
    assert proba.sum(axis=1) == pytest.approx(1.0)
    # the fake trained a real model on the staged rows: held-out AUC well above chance
    assert roc_auc_score(binary.test_target, proba[:, 1]) > 0.85
    # the temporary endpoint is gone afterwards
    assert fake.endpoints == {}


def test_vertex_submit_sends_explicit_columns_objective_and_budget(
    provider: VertexProvider, fake: vf.VertexFake, binary: SyntheticJob
) -> None:
    provider.submit(binary.job)

    [create] = fake.calls_to("POST", CREATE)
    body = create.json()
    inputs = body["trainingTaskInputs"]
    assert inputs["predictionType"] == "classification"
    assert inputs["targetColumn"] == "y"
    assert inputs["transformations"] == [
        {"numeric": {"columnName": "x1"}},
        {"numeric": {"columnName": "x2"}},
        {"numeric": {"columnName": "x3"}},
        {"categorical": {"columnName": "colour"}},
    ]
    # $100 buys 4.7054 node hours, but the job's hour is priced as one node hour
    assert inputs["trainBudgetMilliNodeHours"] == 1000
    assert inputs["optimizationObjective"] == "maximize-au-roc"
    assert body["labels"]["broker_idempotency_key"] == "key-0001"
    assert body["trainingTaskDefinition"].endswith("automl_tabular_1.0.0.yaml")
    # the staged CSV holds the training rows only, with safe names
    staged = fake.objects[("fake-bucket", "broker/job-0001/train.csv")].decode()
    assert staged.splitlines()[0] == "x1,x2,x3,colour,y"
    assert len(staged.splitlines()) == 1 + 450


def test_vertex_regression_predicts_values(
    provider: VertexProvider, clock: FakeClock, tmp_path: Path
) -> None:
    job = synthetic_job(tmp_path, task=Task.REGRESSION, n_rows=400, metric="mae")
    ref = provider.submit(job.job)
    assert run_to_end(provider, ref, clock)[-1][0] == JobState.SUCCEEDED

    values = provider.predict(ref, job.job, job.test_features)
    result = provider.result(ref, job.job)

    assert values.shape == (100,)
    correlation = float(__import__("numpy").corrcoef(values, job.test_target)[0, 1])
    assert correlation > 0.9
    assert set(result.leaderboard[0].validation_metrics) == {"rmse", "mae", "r2"}
    assert result.leaderboard[0].params["optimization_objective"] == "minimize-mae"


# --- budget and objective -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_usd", "runtime_s", "expected"),
    [
        (Decimal("50"), 10800, 2352),  # the dollars buy less than the runtime
        (Decimal("100"), 7200, 2000),  # the runtime on one node, as the plan prices it
        (Decimal("21.252"), 3600, 1000),
        (Decimal("2000"), 300_000, 72000),  # Vertex's ceiling
        (None, 7200, 2000),  # no dollar cap: runtime on one node
    ],
)
def test_vertex_budget_milli_node_hours_follows_runtime_and_dollars(
    max_usd: Decimal | None, runtime_s: float, expected: int
) -> None:
    assert budget_milli_node_hours(max_usd, runtime_s, Decimal("21.252")) == expected


def test_vertex_budget_below_one_node_hour_is_raised_with_a_warning() -> None:
    with pytest.warns(
        BudgetWarning,
        match=r"budget of \$10 and 3600 s buys 470 milli node hours, so 1000",
    ):
        assert budget_milli_node_hours(Decimal("10"), 3600, Decimal("21.252")) == 1000


@pytest.mark.parametrize(
    ("task", "metric", "objective"),
    [
        (Task.BINARY, "roc_auc", "maximize-au-roc"),
        (Task.BINARY, "log_loss", "minimize-log-loss"),
        (Task.BINARY, "pr_auc", "maximize-au-prc"),
        (Task.BINARY, "accuracy", "maximize-au-roc"),  # not an objective: task default
        (Task.MULTICLASS, "log_loss", "minimize-log-loss"),
        (Task.MULTICLASS, "accuracy", "minimize-log-loss"),
        (Task.REGRESSION, "rmse", "minimize-rmse"),
        (Task.REGRESSION, "mae", "minimize-mae"),
        (Task.REGRESSION, "rmsle", "minimize-rmsle"),
    ],
)
def test_vertex_optimization_objective_maps_metric(
    task: Task, metric: str, objective: str
) -> None:
    assert optimization_objective(task, metric) == objective


# --- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "failover", "retryable", "code"),
    [
        (
            vf.quota_exceeded(path=CREATE),
            QuotaExceededError,
            True,
            False,
            "RESOURCE_EXHAUSTED",
        ),
        (
            vf.rate_limited(path=CREATE),
            ThrottledError,
            True,
            True,
            "RESOURCE_EXHAUSTED",
        ),
        (
            vf.server_error(503, path=CREATE),
            TransientProviderError,
            True,
            True,
            "UNAVAILABLE",
        ),
        (
            vf.unauthenticated(path=CREATE),
            CredentialsError,
            True,
            False,
            "UNAUTHENTICATED",
        ),
        (
            vf.invalid_argument(path=CREATE),
            InvalidRequestError,
            False,
            False,
            "INVALID_ARGUMENT",
        ),
    ],
    ids=["quota", "rate", "503", "401", "400"],
)
def test_vertex_create_fault_maps_to_broker_error(
    provider: VertexProvider,
    fake: vf.VertexFake,
    binary: SyntheticJob,
    fault: Fault,
    error: type[ProviderError],
    failover: bool,
    retryable: bool,
    code: str,
) -> None:
    fake.inject(fault)

    with pytest.raises(error, match="Vertex AI refused the request") as caught:
        provider.submit(binary.job)

    assert type(caught.value) is error
    assert caught.value.provider == "vertex"
    assert caught.value.failover_allowed is failover
    assert caught.value.retryable is retryable
    assert caught.value.code == code
    assert str(caught.value.original_type).startswith("google.api_core.exceptions.")
    assert fake.pipelines == {}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (vf.unauthenticated(method="GET", path=POLL), CredentialsExpiredError),
        (vf.server_error(503, method="GET", path=POLL), TransientProviderError),
        (vf.rate_limited(method="GET", path=POLL), ThrottledError),
    ],
    ids=["401", "503", "429"],
)
def test_vertex_poll_fault_maps_to_broker_error(
    provider: VertexProvider,
    fake: vf.VertexFake,
    clock: FakeClock,
    binary: SyntheticJob,
    fault: Fault,
    error: type[ProviderError],
) -> None:
    ref = provider.submit(binary.job)
    fault.skip = 2  # the third poll fails
    fake.inject(fault)

    assert provider.poll(ref).state == JobState.QUEUED
    clock.advance(120)
    assert provider.poll(ref).state == JobState.RUNNING
    with pytest.raises(error) as caught:
        provider.poll(ref)
    assert type(caught.value) is error
    assert caught.value.provider_job_id == ref.job_id
    # the fault was one reply: the next poll reads the job again
    assert provider.poll(ref).state == JobState.RUNNING


@pytest.mark.parametrize(
    ("failure", "error", "text"),
    [
        (vf.capacity_failure(), CapacityError, "ZONE_RESOURCE_POOL_EXHAUSTED"),
        (
            vf.insufficient_resources_failure(),
            CapacityError,
            "Resources are insufficient",
        ),
        (vf.quota_failure(), QuotaExceededError, "Quota exceeded for"),
        (
            vf.PipelineFailure(13, "Internal error occurred."),
            ProviderJobFailedError,
            "Internal",
        ),
        (
            vf.PipelineFailure(3, "Target column y has one value."),
            InvalidRequestError,
            "one",
        ),
    ],
    ids=["stockout", "insufficient", "quota", "internal", "invalid"],
)
def test_vertex_pipeline_failure_reports_failed_with_error(
    provider: VertexProvider,
    fake: vf.VertexFake,
    clock: FakeClock,
    binary: SyntheticJob,
    failure: vf.PipelineFailure,
    error: type[ProviderError],
    text: str,
) -> None:
    fake.fail_next_pipeline(failure)
    ref = provider.submit(binary.job)

    seen = run_to_end(provider, ref, clock)
    status = provider.poll(ref)

    # it fails when it would have started running (after 120 s)
    assert [s for s, _ in seen] == [JobState.QUEUED, JobState.QUEUED, JobState.FAILED]
    assert status.secondary == "PIPELINE_STATE_FAILED"
    assert type(status.error) is error
    assert text in str(status.error)
    assert status.error.provider_job_id == ref.job_id
    assert status.error.code == failure.code
    with pytest.raises(
        ProviderJobFailedError, match="PIPELINE_STATE_FAILED, not succeeded"
    ):
        provider.result(ref, binary.job)


def test_vertex_refused_token_refresh_means_expired_credentials(
    fake: vf.VertexFake, binary: SyntheticJob
) -> None:
    provider = VertexProvider(**fake.client_settings(refresh_fails=True))
    ref = provider.submit(binary.job)
    fake.inject(vf.unauthenticated(method="GET", path=POLL))

    with pytest.raises(
        CredentialsExpiredError, match="could not be refreshed"
    ) as caught:
        provider.poll(ref)

    assert caught.value.original_type == "google.auth.exceptions.RefreshError"
    assert caught.value.failover_allowed is True
    # the bearer token went out, and the call log does not keep it
    assert {c.headers.get("authorization") for c in fake.calls} == {"<redacted>"}


# --- cancel and idempotency ---------------------------------------------------------------


def test_vertex_cancel_sends_one_cancel_and_ends_cancelled(
    provider: VertexProvider,
    fake: vf.VertexFake,
    clock: FakeClock,
    binary: SyntheticJob,
) -> None:
    ref = provider.submit(binary.job)
    clock.advance(150)

    provider.cancel(ref)
    provider.cancel(ref)  # already cancelling: nothing sent
    states = run_to_end(provider, ref, clock)
    provider.cancel(ref)  # ended: nothing sent

    assert len(fake.calls_to("POST", r":cancel$")) == 1
    assert states == [
        (JobState.CANCELLING, "PIPELINE_STATE_CANCELLING"),
        (JobState.CANCELLED, "PIPELINE_STATE_CANCELLED"),
    ]
    # billed for the 30 s it ran: 30 s x 4 nodes = 34 milli node hours (rounded up)
    milli = fake.pipelines[ref.job_id].body["trainingTaskMetadata"][
        "trainCostMilliNodeHours"
    ]
    assert milli == "34"


def test_vertex_lost_create_reply_attaches_to_the_created_pipeline(
    provider: VertexProvider, fake: vf.VertexFake, binary: SyntheticJob
) -> None:
    fake.inject(Fault(method="POST", path=CREATE, lose_reply=True, name="lost"))

    ref = provider.submit(binary.job)
    again = provider.submit(binary.job)  # a retry by the broker attaches too

    assert len(fake.pipelines) == 1
    assert len(fake.calls_to("POST", CREATE)) == 1
    assert ref.job_id == again.job_id == next(iter(fake.pipelines))
    assert ref.idempotency_key == "key-0001"


def test_vertex_find_by_idempotency_key_hashes_keys_that_are_not_labels(
    provider: VertexProvider, fake: vf.VertexFake, tmp_path: Path
) -> None:
    job = synthetic_job(tmp_path, idempotency_key="Run 7/Key:UPPER")
    ref = provider.submit(job.job)

    assert provider.find_by_idempotency_key("Run 7/Key:UPPER") == ref
    assert provider.find_by_idempotency_key("another-key") is None
    label = fake.pipelines[ref.job_id].body["labels"]["broker_idempotency_key"]
    assert label.startswith("h-") and len(label) == 42


# --- the mapping table ----------------------------------------------------------------------


def _google_cases() -> list[tuple[BaseException, type[ProviderError], bool, bool]]:
    import requests
    from google.api_core import exceptions as g
    from google.auth import exceptions as auth

    quota = "Quota exceeded for aiplatform.googleapis.com/custom_model_training_cpus"
    return [
        (g.TooManyRequests(quota), QuotaExceededError, False, True),
        (g.ResourceExhausted(quota), QuotaExceededError, False, True),
        (g.TooManyRequests("Too many requests."), ThrottledError, True, True),
        (
            g.ResourceExhausted("ZONE_RESOURCE_POOL_EXHAUSTED"),
            CapacityError,
            False,
            True,
        ),
        (g.ServiceUnavailable("try again"), TransientProviderError, True, True),
        (g.InternalServerError("oops"), TransientProviderError, True, True),
        (g.BadGateway("bad gateway"), TransientProviderError, True, True),
        (g.GatewayTimeout("timeout"), TransientProviderError, True, True),
        (g.DeadlineExceeded("deadline"), TransientProviderError, True, True),
        (g.Unauthorized("expired"), CredentialsError, False, True),
        (g.Unauthenticated("expired"), CredentialsError, False, True),
        (g.Forbidden("denied"), CredentialsError, False, True),
        (g.PermissionDenied("denied"), CredentialsError, False, True),
        (g.BadRequest("bad"), InvalidRequestError, False, False),
        (g.InvalidArgument("bad"), InvalidRequestError, False, False),
        (g.NotFound("missing"), InvalidRequestError, False, False),
        (g.Conflict("exists"), InvalidRequestError, False, False),
        (g.FailedPrecondition("state"), InvalidRequestError, False, False),
        (g.RetryError("gave up", cause=None), TransientProviderError, True, True),
        (auth.RefreshError("token expired"), CredentialsExpiredError, False, True),
        (auth.DefaultCredentialsError("none"), ProviderUnavailableError, False, True),
        (auth.TransportError("dns"), TransientProviderError, True, True),
        (
            requests.exceptions.ConnectionError("reset"),
            TransientProviderError,
            True,
            True,
        ),
        (ConnectionResetError("reset"), TransientProviderError, True, True),
        # unknown: neither retried nor failed over (a job may exist and bill)
        (RuntimeError("surprise"), ProviderError, False, False),
    ]


@pytest.mark.parametrize(
    ("exc", "error", "retryable", "failover"),
    _google_cases(),
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_vertex_map_google_error_table(
    exc: BaseException, error: type[ProviderError], retryable: bool, failover: bool
) -> None:
    mapped = map_google_error(exc, job_id="projects/p/locations/l/trainingPipelines/1")

    assert type(mapped) is error
    assert mapped.provider == "vertex"
    assert mapped.retryable is retryable
    assert mapped.failover_allowed is failover
    assert mapped.original_type == f"{type(exc).__module__}.{type(exc).__qualname__}"
    assert mapped.provider_job_id == "projects/p/locations/l/trainingPipelines/1"


def test_vertex_unauthorized_while_polling_means_expired() -> None:
    from google.api_core import exceptions as g

    mapped = map_google_error(g.Unauthorized("token expired"), phase="poll")

    assert type(mapped) is CredentialsExpiredError
    assert mapped.code == "UNAUTHENTICATED"
    assert mapped.failover_allowed is True


def test_vertex_availability_needs_project_and_staging() -> None:
    bare = VertexProvider().availability()
    ready = VertexProvider(
        project="p", staging="gs://b/x", credentials=object()
    ).availability()

    assert bare.available is False
    assert "staging" in bare.reason
    assert ready.available is True
    assert ready.credential_source == "argument"


def test_vertex_rejects_a_staging_location_outside_cloud_storage() -> None:
    from broker.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"'gs://bucket/path', got '/tmp/x'"):
        VertexProvider(staging="/tmp/x")
