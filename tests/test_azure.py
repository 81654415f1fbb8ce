"""Azure ML adapter, driven through the real azure-ai-ml SDK against its fake."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.ai.ml")

from broker.clock import FakeClock  # noqa: E402
from broker.errors import (  # noqa: E402
    BudgetWarning,
    CapacityError,
    ConfigurationError,
    CredentialsError,
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderError,
    ProviderJobFailedError,
    QuotaExceededError,
    ThrottledError,
    TransientProviderError,
)
from broker.providers.azure import (  # noqa: E402
    AutoMLLimits,
    AzureProvider,
    automl_limits,
    map_azure_error,
    primary_metric,
    rewriting_transport,
)
from broker.spec import Task  # noqa: E402
from broker.states import JobState  # noqa: E402
from broker.testing import Fault, SyntheticJob, synthetic_job  # noqa: E402
from broker.testing import azure_fake as af  # noqa: E402

pytestmark = pytest.mark.cloud

SCHEDULE = (
    ("NotStarted", 60.0),
    ("Queued", 60.0),
    ("Preparing", 60.0),
    ("Running", 840.0),
    ("Finalizing", 60.0),
)
JOB = r"/jobs/broker-key-0001$"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[af.AzureFake]:
    with af.AzureFake(clock=clock, schedule=SCHEDULE, cancel_s=30.0) as server:
        yield server


@pytest.fixture
def provider(fake: af.AzureFake) -> AzureProvider:
    return AzureProvider(**fake.client_settings(), poll_interval_s=60.0)


@pytest.fixture
def binary(tmp_path: Path) -> SyntheticJob:
    return synthetic_job(tmp_path, task=Task.BINARY, n_rows=600, max_usd=Decimal("10"))


def run_to_end(
    provider: AzureProvider, ref: Any, clock: FakeClock
) -> list[tuple[JobState, str | None]]:
    seen = []
    for _ in range(40):
        status = provider.poll(ref)
        seen.append((status.state, status.secondary))
        if status.state.terminal:
            return seen
        clock.advance(60.0)
    raise AssertionError(f"job never ended: {seen[-3:]}")


# --- a whole job ------------------------------------------------------------------------


def test_azure_job_runs_through_states_to_a_scored_leaderboard(
    provider: AzureProvider, fake: af.AzureFake, clock: FakeClock, binary: SyntheticJob
) -> None:
    from sklearn.metrics import roc_auc_score

    ref = provider.submit(binary.job)
    seen = run_to_end(provider, ref, clock)

    # 60 s in each waiting status, 840 s running, 60 s finalizing; a poll every 60 s
    assert seen == [
        (JobState.QUEUED, "NotStarted"),
        (JobState.QUEUED, "Queued"),
        (JobState.QUEUED, "Preparing"),
        *[(JobState.RUNNING, "Running")] * 14,
        (JobState.RUNNING, "Finalizing"),
        (JobState.SUCCEEDED, "Completed"),
    ]
    result = provider.result(ref, binary.job)
    # nodes held from the first trial to the end: 900 s x 4 nodes x $0.293/h
    assert result.provider_units["runtime_s"] == 900.0
    assert result.provider_units["nodes"] == 4
    assert result.actual_cost_usd == Decimal("0.293000")
    # two child runs, best validation AUC first
    assert [e.algorithm for e in result.leaderboard] == [
        "LogisticRegression",
        "LightGBM",
    ]
    assert [e.model_id for e in result.leaderboard] == [
        "broker-key-0001_1",
        "broker-key-0001_0",
    ]
    scores = [
        float(e.validation_metrics["roc_auc"] or "nan") for e in result.leaderboard
    ]
    assert scores == sorted(scores, reverse=True)
    assert scores[-1] > 0.85
    assert result.best_model_id == "broker-key-0001_1"

    proba = provider.predict(ref, binary.job, binary.test_features)
    assert proba.shape == (150, 2)
    assert proba.sum(axis=1) == pytest.approx(1.0)
    # a real model, trained by the fake on the staged rows
    assert roc_auc_score(binary.test_target, proba[:, 1]) > 0.85
    # the temporary endpoint is deleted, and the scoring call used its key
    assert fake.endpoints == {}
    [score] = fake.calls_to("POST", r"^/score$")
    assert score.headers["authorization"] == "<redacted>"


def test_azure_submit_sends_limits_metric_data_and_tags(
    provider: AzureProvider, fake: af.AzureFake, binary: SyntheticJob
) -> None:
    provider.submit(binary.job)

    [put] = fake.calls_to("PUT", JOB)
    props = put.json()["properties"]
    task = props["taskDetails"]
    assert props["jobType"] == "AutoML"
    assert props["computeId"].endswith("/workspaces/fake-ws/computes/cpu-cluster")
    assert props["tags"] == {
        "broker_idempotency_key": "key-0001",
        "broker_job_id": "job-0001",
    }
    assert task["taskType"] == "Classification"
    assert task["targetColumnName"] == "y"
    assert task["primaryMetric"] == "AUCWeighted"
    assert task["trainingData"] == {
        "uri": "azureml://datastores/workspaceblobstore/paths/automl-broker/job-0001/",
        "jobInputType": "mltable",
    }
    # $10 buys 8.5 h on 4 x $0.293/h, so the 1 h runtime limit decides
    limits = task["limitSettings"]
    assert (limits["timeout"], limits["trialTimeout"]) == ("PT1H", "PT15M")
    assert (limits["maxTrials"], limits["maxConcurrentTrials"]) == (32, 4)
    staged = fake.blobs[
        ("fakestorage", "azureml-blobstore", "automl-broker/job-0001/train.csv")
    ]
    assert staged.decode().splitlines()[0] == "x1,x2,x3,colour,y"
    assert len(staged.decode().splitlines()) == 1 + 450


def test_azure_regression_predicts_values(
    provider: AzureProvider, clock: FakeClock, tmp_path: Path
) -> None:
    import numpy as np

    job = synthetic_job(tmp_path, task=Task.REGRESSION, n_rows=400, metric="mae")
    ref = provider.submit(job.job)
    assert run_to_end(provider, ref, clock)[-1][0] == JobState.SUCCEEDED

    values = provider.predict(ref, job.job, job.test_features)
    result = provider.result(ref, job.job)

    assert values.shape == (100,)
    assert float(np.corrcoef(values, job.test_target)[0, 1]) > 0.9
    # normalised MAE: lower is better, so the smallest comes first
    maes = [
        float(e.validation_metrics["normalized_mae"] or "nan")
        for e in result.leaderboard
    ]
    assert maes == sorted(maes)


# --- budget and metric ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_usd", "runtime_s", "expected"),
    [
        (Decimal("10"), 3600, AutoMLLimits(60, 15, 32, 4)),
        (Decimal("0.586"), 7200, AutoMLLimits(30, 7, 32, 4)),  # 30 min on 4 nodes
        (None, 1800, AutoMLLimits(30, 7, 32, 4)),
        (Decimal("100"), 4 * 3600, AutoMLLimits(240, 60, 32, 4)),
    ],
)
def test_azure_automl_limits_follow_budget_and_runtime(
    max_usd: Decimal | None, runtime_s: float, expected: AutoMLLimits
) -> None:
    assert automl_limits(max_usd, runtime_s, Decimal("0.293"), 4) == expected


def test_azure_limits_below_fifteen_minutes_warn_and_use_the_minimum() -> None:
    with pytest.warns(BudgetWarning, match=r"allows 5 on 4 x \$0.293/h, so 15"):
        limits = automl_limits(Decimal("0.1"), 3600, Decimal("0.293"), 4)

    assert limits.timeout_minutes == 15


@pytest.mark.parametrize(
    ("task", "metric", "expected"),
    [
        (Task.BINARY, "roc_auc", "AUC_weighted"),
        (Task.BINARY, "accuracy", "accuracy"),
        (Task.BINARY, "log_loss", "AUC_weighted"),  # not offered: task default
        (Task.MULTICLASS, "log_loss", "accuracy"),
        (Task.REGRESSION, "rmse", "normalized_root_mean_squared_error"),
        (Task.REGRESSION, "mae", "normalized_mean_absolute_error"),
        (Task.REGRESSION, "r2", "r2_score"),
    ],
)
def test_azure_primary_metric_maps_metric(
    task: Task, metric: str, expected: str
) -> None:
    assert primary_metric(task, metric) == expected


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "code", "failover"),
    [
        (af.quota_exceeded(path=JOB), QuotaExceededError, "QuotaExceeded", True),
        (
            af.operation_not_allowed_quota(path=JOB),
            QuotaExceededError,
            "OperationNotAllowed",
            True,
        ),
        (af.allocation_failed(path=JOB), CapacityError, "AllocationFailed", True),
        (
            af.zonal_allocation_failed(path=JOB),
            CapacityError,
            "ZonalAllocationFailed",
            True,
        ),
        (af.sku_not_available(path=JOB), CapacityError, "SkuNotAvailable", True),
        (af.throttled(method="PUT", path=JOB), ThrottledError, "TooManyRequests", True),
        (
            af.server_error(503, method="PUT", path=JOB),
            TransientProviderError,
            "ServiceUnavailable",
            True,
        ),
        (
            af.expired_token(method="PUT", path=JOB),
            CredentialsExpiredError,
            "ExpiredAuthenticationToken",
            True,
        ),
        (af.invalid_request(path=JOB), InvalidRequestError, "UserError", False),
    ],
    ids=[
        "quota",
        "not-allowed",
        "allocation",
        "zonal",
        "sku",
        "429",
        "503",
        "401",
        "400",
    ],
)
def test_azure_create_fault_maps_to_broker_error(
    provider: AzureProvider,
    fake: af.AzureFake,
    binary: SyntheticJob,
    fault: Fault,
    error: type[ProviderError],
    code: str,
    failover: bool,
) -> None:
    fake.inject(fault)

    with pytest.raises(
        error, match=f"Azure ML refused the request \\(\\d+ {code}\\)"
    ) as caught:
        provider.submit(binary.job)

    assert type(caught.value) is error
    assert caught.value.provider == "azure"
    assert caught.value.code == code
    assert caught.value.failover_allowed is failover
    assert str(caught.value.original_type).startswith("azure.core.exceptions.")
    assert fake.jobs == {}


def test_azure_poll_fault_maps_to_broker_error(
    provider: AzureProvider, fake: af.AzureFake, clock: FakeClock, binary: SyntheticJob
) -> None:
    ref = provider.submit(binary.job)
    fake.inject(
        af.expired_token(method="GET", path=JOB),
        af.server_error(503, method="GET", path=JOB),
    )

    with pytest.raises(CredentialsExpiredError) as expired:
        provider.poll(ref)
    with pytest.raises(TransientProviderError) as transient:
        provider.poll(ref)

    assert expired.value.provider_job_id == "broker-key-0001"
    assert transient.value.retryable is True
    assert provider.poll(ref).state == JobState.QUEUED


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("ZonalAllocationFailed", CapacityError),
        ("AllocationFailed", CapacityError),
        ("QuotaExceeded", QuotaExceededError),
    ],
)
def test_azure_compute_error_while_queued_raises_at_the_next_poll(
    provider: AzureProvider,
    fake: af.AzureFake,
    clock: FakeClock,
    binary: SyntheticJob,
    code: str,
    error: type[ProviderError],
) -> None:
    ref = provider.submit(binary.job)
    assert provider.poll(ref).state == JobState.QUEUED
    fake.compute_errors.append((code, "The cluster could not get nodes."))
    clock.advance(60)

    with pytest.raises(error, match=f"cannot get nodes: {code}") as caught:
        provider.poll(ref)
    provider.cancel(ref)

    assert caught.value.provider_job_id == "broker-key-0001"
    assert caught.value.failover_allowed is True
    assert len(fake.calls_to("POST", r"/cancel$")) == 1
    clock.advance(30)
    assert fake.job_status("broker-key-0001") == "Canceled"


def test_azure_failed_job_reports_failed_with_error(
    provider: AzureProvider, fake: af.AzureFake, clock: FakeClock, binary: SyntheticJob
) -> None:
    fake.fail_next_job(af.JobFailure(after_s=300))
    ref = provider.submit(binary.job)

    seen = run_to_end(provider, ref, clock)
    status = provider.poll(ref)

    assert seen[-1] == (JobState.FAILED, "Failed")
    assert seen[-2] == (JobState.RUNNING, "Running")
    assert type(status.error) is ProviderJobFailedError
    assert status.error.provider_job_id == "broker-key-0001"
    with pytest.raises(ProviderJobFailedError, match="is Failed, not Completed"):
        provider.result(ref, binary.job)


# --- cancel and idempotency ---------------------------------------------------------------


def test_azure_cancel_sends_one_cancel_and_ends_canceled(
    provider: AzureProvider, fake: af.AzureFake, clock: FakeClock, binary: SyntheticJob
) -> None:
    ref = provider.submit(binary.job)
    clock.advance(200)

    provider.cancel(ref)
    provider.cancel(ref)  # already CancelRequested: nothing sent
    states = run_to_end(provider, ref, clock)
    provider.cancel(ref)  # ended: nothing sent

    assert len(fake.calls_to("POST", r"/cancel$")) == 1
    assert states == [
        (JobState.CANCELLING, "CancelRequested"),
        (JobState.CANCELLED, "Canceled"),
    ]


def test_azure_lost_create_reply_attaches_to_the_created_job(
    provider: AzureProvider, fake: af.AzureFake, binary: SyntheticJob
) -> None:
    fake.inject(Fault(method="PUT", path=JOB, lose_reply=True, name="lost"))

    ref = provider.submit(binary.job)
    again = provider.submit(binary.job)

    assert list(fake.jobs) == ["broker-key-0001"]
    assert len(fake.calls_to("PUT", JOB)) == 1
    assert ref.job_id == again.job_id == "broker-key-0001"


def test_azure_job_name_hashes_keys_azure_cannot_hold(
    provider: AzureProvider, fake: af.AzureFake, tmp_path: Path
) -> None:
    job = synthetic_job(tmp_path, idempotency_key="run 7/key:é")
    ref = provider.submit(job.job)

    assert ref.job_id.startswith("broker-h-") and len(ref.job_id) == 49
    assert provider.find_by_idempotency_key("run 7/key:é") == ref
    assert provider.find_by_idempotency_key("other") is None


# --- the mapping table ----------------------------------------------------------------------


def _http(cls: type, status: int | None, code: str | None, message: str) -> Exception:
    from azure.core.exceptions import ODataV4Format

    exc = cls(message=message)
    exc.status_code = status
    if code is not None:
        exc.error = ODataV4Format({"error": {"code": code, "message": message}})
    return exc


def _azure_cases() -> list[tuple[Exception, type[ProviderError], bool, bool]]:
    from azure.ai.ml.exceptions import ErrorTarget, ValidationException
    from azure.core import exceptions as az

    return [
        (
            _http(
                az.HttpResponseError, 400, "QuotaExceeded", "exceeding approved quota"
            ),
            QuotaExceededError,
            False,
            True,
        ),
        (
            _http(
                az.HttpResponseError,
                409,
                "OperationNotAllowed",
                "exceeding approved Total Regional Cores quota",
            ),
            QuotaExceededError,
            False,
            True,
        ),
        (
            _http(az.HttpResponseError, 409, "AllocationFailed", "no capacity"),
            CapacityError,
            False,
            True,
        ),
        (
            _http(az.HttpResponseError, 409, "ZonalAllocationFailed", "no capacity"),
            CapacityError,
            False,
            True,
        ),
        (
            _http(az.HttpResponseError, 409, "SkuNotAvailable", "size not available"),
            CapacityError,
            False,
            True,
        ),
        (
            _http(az.HttpResponseError, 429, "TooManyRequests", "throttled"),
            ThrottledError,
            True,
            True,
        ),
        (
            _http(az.HttpResponseError, 503, "ServiceUnavailable", "later"),
            TransientProviderError,
            True,
            True,
        ),
        (
            _http(az.HttpResponseError, 500, "InternalServerError", "oops"),
            TransientProviderError,
            True,
            True,
        ),
        (
            _http(az.HttpResponseError, 400, "UserError", "bad column"),
            InvalidRequestError,
            False,
            False,
        ),
        (
            _http(
                az.ClientAuthenticationError, 401, "InvalidAuthenticationToken", "bad"
            ),
            CredentialsError,
            False,
            True,
        ),
        (
            _http(
                az.ClientAuthenticationError, 401, "ExpiredAuthenticationToken", "old"
            ),
            CredentialsExpiredError,
            False,
            True,
        ),
        (
            _http(az.HttpResponseError, 403, "AuthorizationFailed", "no role"),
            CredentialsError,
            False,
            True,
        ),
        (
            _http(az.ResourceNotFoundError, 404, "ResourceNotFound", "gone"),
            InvalidRequestError,
            False,
            False,
        ),
        (
            _http(az.ResourceExistsError, 409, "UserError", "exists"),
            InvalidRequestError,
            False,
            False,
        ),
        (
            az.ClientAuthenticationError(message="token request failed"),
            CredentialsError,
            False,
            True,
        ),
        (
            az.ServiceRequestError("connection refused"),
            TransientProviderError,
            True,
            True,
        ),
        (
            az.ServiceResponseError("connection reset"),
            TransientProviderError,
            True,
            True,
        ),
        (ConnectionResetError("reset"), TransientProviderError, True, True),
        (
            ValidationException(
                message="bad",
                no_personal_data_message="bad",
                target=ErrorTarget.JOB,  # type: ignore[arg-type]
            ),
            InvalidRequestError,
            False,
            False,
        ),
        # unknown: neither retried nor failed over (a job may exist and bill)
        (RuntimeError("surprise"), ProviderError, False, False),
    ]


@pytest.mark.parametrize(
    ("exc", "error", "retryable", "failover"),
    _azure_cases(),
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_azure_map_azure_error_table(
    exc: Exception, error: type[ProviderError], retryable: bool, failover: bool
) -> None:
    mapped = map_azure_error(exc, job_id="broker-key-0001")

    assert type(mapped) is error
    assert mapped.provider == "azure"
    assert mapped.retryable is retryable
    assert mapped.failover_allowed is failover
    assert mapped.original_type == f"{type(exc).__module__}.{type(exc).__qualname__}"
    assert mapped.provider_job_id == "broker-key-0001"


def test_azure_token_failure_while_polling_means_expired() -> None:
    from azure.core.exceptions import ClientAuthenticationError

    mapped = map_azure_error(
        ClientAuthenticationError(message="refresh failed"), phase="poll"
    )

    assert type(mapped) is CredentialsExpiredError
    assert "az login" in str(mapped)


def test_azure_availability_names_missing_settings() -> None:
    bare = AzureProvider().availability()
    ready = AzureProvider(
        subscription_id="s",
        resource_group="g",
        workspace="w",
        compute="c",
        credential=object(),
    ).availability()

    assert bare.available is False
    assert bare.reason == (
        "set the Azure option(s) subscription_id, resource_group, workspace, compute"
    )
    assert ready.available is True


def test_azure_base_url_must_be_loopback() -> None:
    with pytest.raises(ConfigurationError, match="loopback address"):
        rewriting_transport("https://example.com")


def test_azure_unknown_vm_size_needs_a_price() -> None:
    with pytest.raises(
        ConfigurationError, match="no price known for VM size 'Standard_X'"
    ):
        AzureProvider(vm_size="Standard_X")
