"""SageMaker Autopilot adapter, driven through the real boto3 against moto plus the
lifecycle driver in :mod:`broker.testing.sagemaker_fake`."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("moto")
pytest.importorskip("boto3")

from broker.clock import FakeClock  # noqa: E402
from broker.errors import (  # noqa: E402
    CapacityError,
    CredentialsError,
    CredentialsExpiredError,
    InvalidRequestError,
    NoModelTrainedError,
    ProviderError,
    ProviderJobFailedError,
    ProviderUnavailableError,
    QuotaExceededError,
    ThrottledError,
    TransientProviderError,
)
from broker.providers.base import ProviderJob  # noqa: E402
from broker.providers.sagemaker import (  # noqa: E402
    SageMakerProvider,
    job_name_for,
    map_aws_error,
    objective_for,
    training_cost_usd,
)
from broker.schema import Column, ColumnKind, Schema  # noqa: E402
from broker.spec import Budget, JobSpec, Task  # noqa: E402
from broker.states import JobState  # noqa: E402
from broker.testing.sagemaker_fake import (  # noqa: E402
    NO_MODEL_SCRIPT,
    AutopilotFake,
    AutopilotScript,
    CandidatePlan,
)

pytestmark = pytest.mark.cloud

KEY = "job-0001:sagemaker:ml.m5.xlarge:us-east-1"
PRICE = Decimal("3.60")  # $0.001 a second: costs below are exact in tenths of a cent


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Two informative numeric features, one noise column, one categorical, a label."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    logit = 2.0 * x1 - 1.5 * x2 + np.where(colour == "red", 1.0, 0.0)
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame(
        {
            "x_1": x1,
            "x_2": x2,
            "noise": rng.normal(size=n),
            "colour": colour,
            "label": label,
        }
    )


def _schema() -> Schema:
    kinds = {
        "x_1": ColumnKind.NUMERIC,
        "x_2": ColumnKind.NUMERIC,
        "noise": ColumnKind.NUMERIC,
        "colour": ColumnKind.CATEGORICAL,
    }
    columns = [
        Column(name.replace("_", " "), name, kind) for name, kind in kinds.items()
    ]
    columns.append(Column("label", "label", ColumnKind.TARGET))
    return Schema(
        columns=tuple(columns),
        target="label",
        target_safe_name="label",
        task=Task.BINARY,
        classes=("no", "yes"),
        positive_class="yes",
    )


@pytest.fixture
def job(tmp_path: Path) -> ProviderJob:
    train = _frame(400, seed=1)
    spec = JobSpec(
        data=train,
        target="label",
        task=Task.BINARY,
        budget=Budget(max_usd=Decimal("2.00"), max_runtime_s=1200),
    )
    return ProviderJob(
        job_id="job-0001",
        idempotency_key=KEY,
        spec=spec,
        schema=_schema(),
        train=train,
        machine="ml.m5.xlarge",
        region="us-east-1",
        runtime_limit_s=1200,
        run_dir=tmp_path / "run",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Any:
    with AutopilotFake(clock=clock) as driver:
        yield driver


@pytest.fixture
def provider(fake: AutopilotFake) -> SageMakerProvider:
    return fake.provider(training_usd_per_hour=PRICE)


# --- submit ---------------------------------------------------------------------------


def test_submit_sends_exact_create_request(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)

    name = job_name_for(KEY)
    assert ref.job_id == name and len(name) == 32
    # the CSV goes to S3 first, then one create
    assert fake.operations() == ["PutObject", "CreateAutoMLJobV2"]
    assert fake.calls[0].params == {
        "Bucket": "automl-broker-test",
        "Key": f"automl-broker/{name}/train/train.csv",
    }
    # budget: per job 1200 // 4 = 300 s at $0.001/s = $0.30; $2.00 pays for 6
    assert fake.requests("CreateAutoMLJobV2") == [
        {
            "AutoMLJobName": name,
            "AutoMLJobInputDataConfig": [
                {
                    "ChannelType": "training",
                    "ContentType": "text/csv;header=present",
                    "CompressionType": "None",
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": f"s3://automl-broker-test/automl-broker/{name}"
                            "/train/train.csv",
                        }
                    },
                }
            ],
            "OutputDataConfig": {
                "S3OutputPath": f"s3://automl-broker-test/automl-broker/{name}/output"
            },
            "AutoMLProblemTypeConfig": {
                "TabularJobConfig": {
                    "TargetAttributeName": "label",
                    "ProblemType": "BinaryClassification",
                    "Mode": "HYPERPARAMETER_TUNING",
                    "CompletionCriteria": {
                        "MaxCandidates": 6,
                        "MaxRuntimePerTrainingJobInSeconds": 300,
                        "MaxAutoMLJobRuntimeInSeconds": 1200,
                    },
                }
            },
            "AutoMLJobObjective": {"MetricName": "AUC"},
            "RoleArn": fake.role_arn,
            "Tags": [
                {"Key": "automl-broker:idempotency-key", "Value": KEY},
                {"Key": "automl-broker:job-id", "Value": "job-0001"},
            ],
        }
    ]


def test_submit_uploads_training_csv_with_safe_header(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    provider.submit(job)

    uri = f"s3://automl-broker-test/automl-broker/{job_name_for(KEY)}/train/train.csv"
    text = fake._read_s3(uri).decode()
    assert text.splitlines()[0] == "x_1,x_2,noise,colour,label"
    assert len(text.splitlines()) == 401


def test_submit_same_key_twice_attaches_to_one_job(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    first = provider.submit(job)
    second = provider.submit(job)

    assert second.job_id == first.job_id
    assert second.extra["attached"] is True
    assert fake.job_names() == [first.job_id]
    assert fake.operations("sagemaker") == ["CreateAutoMLJobV2", "CreateAutoMLJobV2"]


def test_submit_lost_reply_attaches_to_the_one_created_job(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    fake.inject("CreateAutoMLJobV2", "lost_reply")

    ref = provider.submit(job)

    # the service created it, the reply was lost, a describe found it
    assert ref.job_id == job_name_for(KEY)
    assert ref.extra["attached"] is True
    assert fake.job_names() == [ref.job_id]
    assert fake.operations("sagemaker") == ["CreateAutoMLJobV2", "DescribeAutoMLJobV2"]
    assert [c.fault for c in fake.calls if c.service == "sagemaker"] == [
        "lost_reply",
        None,
    ]


def test_find_by_idempotency_key_finds_created_job_only(
    provider: SageMakerProvider, job: ProviderJob
) -> None:
    assert provider.find_by_idempotency_key(KEY) is None

    ref = provider.submit(job)

    found = provider.find_by_idempotency_key(KEY)
    assert found is not None and found.job_id == ref.job_id


def test_submit_budget_below_one_billed_minute_refused_before_any_call(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    poor = replace(job, max_usd=Decimal("0.05"))  # 50 s at $0.001/s

    with pytest.raises(
        ProviderUnavailableError, match=r"raise budget.max_usd to at least 0.06"
    ):
        provider.submit(poor)
    assert fake.calls == []


def test_completion_criteria_shortens_candidate_to_fit_small_budget(
    provider: SageMakerProvider, job: ProviderJob
) -> None:
    # $0.25 cannot pay one 300 s job ($0.30) but pays 250 s
    criteria = provider.completion_criteria(replace(job, max_usd=Decimal("0.25")))

    assert criteria == {
        "MaxCandidates": 1,
        "MaxRuntimePerTrainingJobInSeconds": 250,
        "MaxAutoMLJobRuntimeInSeconds": 1200,
    }


@pytest.mark.parametrize(
    ("metric", "task", "objective"),
    [
        ("roc_auc", Task.BINARY, "AUC"),
        ("f1", Task.BINARY, "F1"),
        ("accuracy", Task.MULTICLASS, "Accuracy"),
        ("log_loss", Task.BINARY, "AUC"),
        ("log_loss", Task.MULTICLASS, "Accuracy"),
        ("roc_auc", Task.MULTICLASS, "Accuracy"),
        ("rmse", Task.REGRESSION, "RMSE"),
        ("mae", Task.REGRESSION, "MAE"),
        ("r2", Task.REGRESSION, "R2"),
    ],
)
def test_objective_for_maps_broker_metric(
    metric: str, task: Task, objective: str
) -> None:
    assert objective_for(metric, task) == objective


# --- the whole lifecycle ---------------------------------------------------------------


def test_job_lifecycle_states_leaderboard_cost_and_predictions(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)

    seen = []
    for _ in range(7):
        status = provider.poll(ref)
        seen.append((status.state, status.secondary))
        clock.advance(100)
    # default script: Starting 0, AnalyzingData 60, FeatureEngineering 120,
    # ModelTuning 180, Completed 600; polled at 0, 100, ..., 600
    assert seen == [
        (JobState.QUEUED, "Starting"),
        (JobState.RUNNING, "AnalyzingData"),
        (JobState.RUNNING, "ModelTuning"),
        (JobState.RUNNING, "ModelTuning"),
        (JobState.RUNNING, "ModelTuning"),
        (JobState.RUNNING, "ModelTuning"),
        (JobState.SUCCEEDED, "Completed"),
    ]

    result = provider.result(ref, job)

    # two completed candidates ranked by validation AUC, the failed one only billed
    models = fake.trained_models(ref.job_id)
    expected = sorted(models, key=lambda n: -models[n].validation_metrics["roc_auc"])
    assert [e.model_id for e in result.leaderboard] == expected
    assert sorted(e.algorithm for e in result.leaderboard) == [
        "linear-learner",
        "xgboost",
    ]
    aucs = [e.validation_metrics["roc_auc"] for e in result.leaderboard]
    assert aucs == [round(models[n].validation_metrics["roc_auc"], 6) for n in expected]
    assert aucs[0] is not None and aucs[0] > 0.75
    assert result.best_model_id == result.leaderboard[0].model_id
    assert [e.training_time_s for e in result.leaderboard] == (
        [130.0, 95.0] if result.leaderboard[0].algorithm == "xgboost" else [95.0, 130.0]
    )
    # 130 + 95 + max(60, 45) = 285 billable seconds at $0.001/s
    assert result.actual_cost_usd == Decimal("0.285000")
    assert result.provider_units["billable_seconds"] == 285
    assert result.provider_units["training_seconds"] == 270.0
    assert result.runtime_s == 600.0
    assert result.notes[0].endswith("Failed, billed but not ranked")
    assert (job.run_dir / "model" / "model.json").is_file()

    holdout = _frame(300, seed=2)
    probabilities = provider.predict(ref, job, holdout.drop(columns="label"))

    from sklearn.metrics import roc_auc_score

    assert probabilities.shape == (300, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert roc_auc_score(holdout["label"] == "yes", probabilities[:, 1]) > 0.8
    assert fake.operations("sagemaker")[-3:] == [
        "CreateModel",
        "CreateTransformJob",
        "DescribeTransformJob",
    ]


def test_predict_matches_best_models_own_probabilities(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)
    clock.advance(600)
    best = provider.result(ref, job).best_model_id
    holdout = _frame(20, seed=3).drop(columns="label")

    probabilities = provider.predict(ref, job, holdout)

    assert best is not None
    model = fake.trained_models(ref.job_id)[best]
    rows = holdout.astype(str).to_dict("records")
    np.testing.assert_allclose(
        probabilities, np.array(model.predict_rows(rows)), rtol=1e-9
    )


def test_list_candidates_pages_are_all_read(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    plans = tuple(CandidatePlan("linear-learner", 180, 60 + i) for i in range(12))
    fake.script_next(AutopilotScript(candidates=plans))
    ref = provider.submit(job)
    clock.advance(600)

    result = provider.result(ref, job)

    # 12 candidates arrive over two pages of 10
    assert len(result.leaderboard) == 12
    assert fake.operations().count("ListCandidatesForAutoMLJob") == 2
    assert result.actual_cost_usd == Decimal("0.786000")  # sum(60..71) = 786 s


def test_result_before_completion_is_refused(
    clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)
    clock.advance(200)

    with pytest.raises(
        InvalidRequestError, match=r"is InProgress; a result exists only"
    ):
        provider.result(ref, job)


# --- C12 (b): the runtime ran out before any model -------------------------------------


def test_completed_without_best_candidate_is_failed_with_charge(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    fake.script_next(NO_MODEL_SCRIPT)
    ref = provider.submit(job)
    clock.advance(300)

    status = provider.poll(ref)

    assert status.state == JobState.FAILED
    assert status.secondary == "MaxAutoMLJobRuntimeReached"
    error = status.error
    assert isinstance(error, NoModelTrainedError)
    assert error.reason == "budget_exhausted"
    # two candidates stopped after 120 s each: 240 s at $0.001/s
    assert error.charged_usd == Decimal("0.240000")
    assert (error.budget_s, error.elapsed_s, error.suggested_min_budget_s) == (
        1200.0,
        300.0,
        2400.0,
    )
    with pytest.raises(NoModelTrainedError, match=r"\$0.240000 was charged for 2"):
        provider.result(ref, job)


# --- failures and stops ----------------------------------------------------------------


def test_failed_job_reports_capacity_error(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    fake.script_next(
        AutopilotScript(
            timeline=((0, "InProgress", "Starting"), (90, "Failed", "Failed")),
            candidates=(),
            failure_reason="CapacityError: Unable to provision requested ML compute",
        )
    )
    ref = provider.submit(job)
    clock.advance(90)

    status = provider.poll(ref)

    assert (status.state, status.secondary) == (JobState.FAILED, "Failed")
    assert isinstance(status.error, CapacityError)
    assert status.error.failover_allowed is True
    assert status.error.provider_job_id == ref.job_id


def test_cancel_twice_sends_one_stop_and_ends_cancelled(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)
    clock.advance(200)

    provider.cancel(ref)
    provider.cancel(ref)
    stopping = provider.poll(ref)
    clock.advance(20)
    stopped = provider.poll(ref)

    assert fake.operations("sagemaker").count("StopAutoMLJob") == 1
    assert (stopping.state, stopping.secondary) == (JobState.CANCELLING, "Stopping")
    assert (stopped.state, stopped.secondary) == (JobState.CANCELLED, "Stopped")


def test_stop_by_someone_else_is_stopped_not_cancelled(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)
    other = fake.provider()  # another client stops it
    clock.advance(200)
    other.cancel(ref)
    clock.advance(20)

    assert provider.poll(ref).state == JobState.STOPPED


def test_cancel_of_completed_job_sends_no_stop(
    fake: AutopilotFake, clock: FakeClock, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)
    clock.advance(600)

    provider.cancel(ref)

    assert "StopAutoMLJob" not in fake.operations()
    assert provider.poll(ref).state == JobState.SUCCEEDED


# --- faults through boto3 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_type", "code", "retryable", "failover", "original"),
    [
        (
            "server_error",
            TransientProviderError,
            "InternalFailure",
            True,
            True,
            "ClientError",
        ),
        (
            "unavailable",
            TransientProviderError,
            "ServiceUnavailable",
            True,
            True,
            "ClientError",
        ),
        (
            "throttling",
            ThrottledError,
            "ThrottlingException",
            True,
            True,
            "ClientError",
        ),
        # a code in SageMaker's API model comes as botocore's generated subclass
        (
            "quota",
            QuotaExceededError,
            "ResourceLimitExceeded",
            False,
            True,
            "ResourceLimitExceeded",
        ),
        ("capacity", CapacityError, "CapacityError", False, True, "ClientError"),
        (
            "expired_token",
            CredentialsExpiredError,
            "ExpiredTokenException",
            False,
            True,
            "ClientError",
        ),
        (
            "unrecognized_client",
            CredentialsError,
            "UnrecognizedClientException",
            False,
            True,
            "ClientError",
        ),
        (
            "validation",
            InvalidRequestError,
            "ValidationException",
            False,
            False,
            "ClientError",
        ),
        (
            "no_connection",
            TransientProviderError,
            None,
            True,
            True,
            "EndpointConnectionError",
        ),
    ],
)
def test_create_fault_maps_to_broker_error(
    fake: AutopilotFake,
    provider: SageMakerProvider,
    job: ProviderJob,
    fault: str,
    error_type: type[ProviderError],
    code: str | None,
    retryable: bool,
    failover: bool,
    original: str,
) -> None:
    fake.inject("CreateAutoMLJobV2", fault)

    with pytest.raises(
        error_type, match=r"SageMaker create_auto_ml_job_v2 failed"
    ) as info:
        provider.submit(job)

    error = info.value
    assert type(error) is error_type
    assert (error.provider, error.code) == ("sagemaker", code)
    assert (error.retryable, error.failover_allowed) == (retryable, failover)
    assert error.original_type == original
    assert error.provider_job_id == job_name_for(KEY)
    # one attempt only: botocore's own retries are off, the broker owns them
    assert fake.operations("sagemaker") == ["CreateAutoMLJobV2"]
    assert fake.job_names() == []


def test_poll_expired_token_raises_credentials_expired_with_job_id(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    ref = provider.submit(job)
    fake.inject("DescribeAutoMLJobV2", "expired_token")

    with pytest.raises(CredentialsExpiredError, match=r"renew the AWS session") as info:
        provider.poll(ref)

    assert info.value.provider_job_id == ref.job_id
    assert provider.poll(ref).state == JobState.QUEUED


def test_upload_fault_stops_before_create(
    fake: AutopilotFake, provider: SageMakerProvider, job: ProviderJob
) -> None:
    fake.inject("PutObject", "server_error")

    with pytest.raises(
        TransientProviderError, match=r"put_object failed: InternalFailure"
    ):
        provider.submit(job)

    assert fake.operations() == ["PutObject"]


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {"Code": code, "Message": "m"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "CreateAutoMLJobV2",
    )


def _botocore_errors() -> list[tuple[Exception, type[ProviderError]]]:
    from botocore import exceptions as bx

    return [
        (bx.NoCredentialsError(), ProviderUnavailableError),
        (
            bx.PartialCredentialsError(provider="env", cred_var="key"),
            ProviderUnavailableError,
        ),
        (
            bx.CredentialRetrievalError(provider="p", error_msg="m"),
            ProviderUnavailableError,
        ),
        (bx.NoRegionError(), ProviderUnavailableError),
        (bx.ProfileNotFound(profile="p"), ProviderUnavailableError),
        (
            bx.TokenRetrievalError(provider="sso", error_msg="m"),
            CredentialsExpiredError,
        ),
        (bx.UnauthorizedSSOTokenError(), CredentialsExpiredError),
        (bx.SSOTokenLoadError(error_msg="m"), CredentialsExpiredError),
        (bx.ParamValidationError(report="r"), InvalidRequestError),
        (bx.EndpointConnectionError(endpoint_url="u"), TransientProviderError),
        (bx.ConnectTimeoutError(endpoint_url="u"), TransientProviderError),
        (bx.ReadTimeoutError(endpoint_url="u"), TransientProviderError),
        (bx.ConnectionClosedError(endpoint_url="u"), TransientProviderError),
        (bx.ProxyConnectionError(proxy_url="u"), TransientProviderError),
        (bx.HTTPClientError(error="e"), TransientProviderError),
        (bx.DataNotFoundError(data_path="p"), ProviderError),
    ]


def test_map_aws_error_covers_every_listed_code() -> None:
    from broker.providers.sagemaker import ERROR_CODES

    for code, expected in ERROR_CODES.items():
        error = map_aws_error(_client_error(code, 400), operation="op", job_id="j")
        # each code lands on exactly its class, with the code kept
        assert type(error) is expected, code
        assert (error.code, error.original_type, error.provider_job_id) == (
            code,
            "ClientError",
            "j",
        )


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, ThrottledError),
        (500, TransientProviderError),
        (502, TransientProviderError),
        (401, CredentialsError),
        (403, CredentialsError),
        (404, InvalidRequestError),
        (302, ProviderError),
    ],
)
def test_map_aws_error_unknown_code_falls_back_on_status(
    status: int, expected: type[ProviderError]
) -> None:
    error = map_aws_error(_client_error("SomethingNew", status))

    assert type(error) is expected
    assert error.code == "SomethingNew"


def test_map_aws_error_covers_botocore_exceptions() -> None:
    from broker.providers.sagemaker import ERROR_TYPES

    cases = _botocore_errors()
    # every class in the table is exercised, plus one unknown BotoCoreError
    assert {type(e).__name__ for e, _ in cases} >= set(ERROR_TYPES)
    for exc, expected in cases:
        error = map_aws_error(exc, operation="op")
        assert type(error) is expected, type(exc).__name__
        assert error.original_type == type(exc).__name__
        assert error.provider == "sagemaker"
    unknown = map_aws_error(cases[-1][0])
    assert (unknown.retryable, unknown.failover_allowed) == (False, True)


def test_resource_not_found_is_job_failed_with_failover() -> None:
    error = map_aws_error(_client_error("ResourceNotFound", 400), operation="describe")

    assert isinstance(error, ProviderJobFailedError)
    assert error.failover_allowed is True


# --- small pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "usd"),
    [
        ([45.0], Decimal("0.001917")),  # 60 s minimum at $0.115/h
        ([60.0, 60.2], Decimal("0.003865")),  # 60 + 61 s
        ([], Decimal("0.000000")),
    ],
)
def test_training_cost_usd_per_second_with_minimum(
    seconds: list[float], usd: Decimal
) -> None:
    assert training_cost_usd(seconds, Decimal("0.115")) == usd


def test_availability_without_credentials_names_what_is_missing(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    provider = SageMakerProvider(role_arn="arn:aws:iam::1:role/r", bucket="b-1")

    availability = provider.availability()

    assert availability.available is False
    assert "no AWS credentials found" in availability.reason


def test_availability_missing_settings_listed() -> None:
    availability = SageMakerProvider().availability()

    assert availability == type(availability)(
        False, "SageMaker settings missing: role_arn, bucket"
    )


def test_job_name_is_stable_and_valid() -> None:
    name = job_name_for(KEY)

    assert name == job_name_for(KEY) != job_name_for(KEY + "x")
    assert len(name) == 32 and name.startswith("automl-")


def test_endpoint_url_drives_a_moto_server_on_loopback(
    job: ProviderJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(
            Bucket="loopback-bucket"
        )
        provider = SageMakerProvider(
            role_arn="arn:aws:iam::123456789012:role/r",
            bucket="loopback-bucket",
            endpoint_url=url,
            training_usd_per_hour=PRICE,
        )

        ref = provider.submit(job)
        # plain moto keeps the job InProgress (secondary "Completed") until stopped
        running = provider.poll(ref)
        provider.cancel(ref)
        stopped = provider.poll(ref)
    finally:
        server.stop()

    assert ref.job_id == job_name_for(KEY)
    assert running.state == JobState.RUNNING
    assert stopped.state == JobState.CANCELLED
