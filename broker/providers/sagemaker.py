"""SageMaker Autopilot (AutoML job V2) as a broker backend.

One broker job is one Autopilot job. :meth:`SageMakerProvider.submit` uploads the training
frame (safe column names, header row) to S3 and calls ``create_auto_ml_job_v2`` with a
tabular problem config whose completion criteria come from the job's runtime limit and
dollar budget. The Autopilot job name is derived from the broker's idempotency key, so a
second create for the same key meets ``ResourceInUse`` and attaches to the first job.

Money: Autopilot bills every training job it runs per second with a 60-second minimum.
The actual cost is the sum, over all candidates (failed and stopped ones included), of
``max(60, ceil(seconds))`` times the training instance's price, as an exact Decimal.

Every botocore exception leaves this module as a :class:`broker.errors.ProviderError`
subclass; :func:`map_aws_error` is the one place that translates them.

boto3 is imported inside methods, never at module import.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import (
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
from broker.providers.base import (
    Availability,
    Placement,
    Provider,
    ProviderJob,
    ProviderJobRef,
    ProviderResult,
    ProviderStatus,
)
from broker.spec import LeaderboardEntry, Task
from broker.states import JobState

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

PROVIDER = "sagemaker"
MODEL_FORMAT = "sagemaker-autopilot"
IDEMPOTENCY_TAG = "automl-broker:idempotency-key"
JOB_ID_TAG = "automl-broker:job-id"
MIN_BILLED_S = 60
MAX_CANDIDATES = 250  # Autopilot's own default; the service allows up to 750
COST_QUANTUM = Decimal("0.000001")  # dollars are rounded half-up to a millionth

# TODO(price-catalog): on-demand SageMaker training prices (us-east-1, USD per hour,
# checked by hand); the cost_models catalog should supply region-specific prices here.
TRAINING_USD_PER_HOUR: dict[str, Decimal] = {
    "ml.m5.large": Decimal("0.115"),
    "ml.m5.xlarge": Decimal("0.23"),
    "ml.m5.2xlarge": Decimal("0.461"),
    "ml.m5.4xlarge": Decimal("0.922"),
    "ml.m5.12xlarge": Decimal("2.765"),
}

PROBLEM_TYPES: dict[Task, str] = {
    Task.BINARY: "BinaryClassification",
    Task.MULTICLASS: "MulticlassClassification",
    Task.REGRESSION: "Regression",
}

# Broker metric name -> Autopilot objective (AutoMLMetricEnum). Autopilot has no log
# loss objective: a log-loss job is searched on the fallback below and still scored on
# log loss by the broker on its held-out rows.
OBJECTIVES: dict[str, str] = {
    "roc_auc": "AUC",
    "accuracy": "Accuracy",
    "balanced_accuracy": "BalancedAccuracy",
    "f1": "F1",
    "f1_macro": "F1macro",
    "precision": "Precision",
    "precision_macro": "PrecisionMacro",
    "recall": "Recall",
    "recall_macro": "RecallMacro",
    "rmse": "RMSE",
    "mse": "MSE",
    "mae": "MAE",
    "r2": "R2",
    "mape": "MAPE",
}
FALLBACK_OBJECTIVES: dict[Task, str] = {
    Task.BINARY: "AUC",
    Task.MULTICLASS: "Accuracy",
    Task.REGRESSION: "RMSE",
}
_BROKER_METRIC = {objective: name for name, objective in OBJECTIVES.items()}

_TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Stopped"})

# ClientError code -> broker error class. Codes not listed fall back on the HTTP status.
ERROR_CODES: dict[str, type[ProviderError]] = {
    "ThrottlingException": ThrottledError,
    "Throttling": ThrottledError,
    "ThrottledException": ThrottledError,
    "TooManyRequestsException": ThrottledError,
    "RequestLimitExceeded": ThrottledError,
    "SlowDown": ThrottledError,
    "ResourceLimitExceeded": QuotaExceededError,
    "ServiceQuotaExceededException": QuotaExceededError,
    "LimitExceededException": QuotaExceededError,
    "CapacityError": CapacityError,
    "InsufficientCapacityError": CapacityError,
    "InsufficientInstanceCapacity": CapacityError,
    "ExpiredTokenException": CredentialsExpiredError,
    "ExpiredToken": CredentialsExpiredError,
    "RequestExpired": CredentialsExpiredError,
    "UnrecognizedClientException": CredentialsError,
    "InvalidClientTokenId": CredentialsError,
    "InvalidAccessKeyId": CredentialsError,
    "SignatureDoesNotMatch": CredentialsError,
    "InvalidSignatureException": CredentialsError,
    "MissingAuthenticationToken": CredentialsError,
    "AccessDeniedException": CredentialsError,
    "AccessDenied": CredentialsError,
    "ValidationException": InvalidRequestError,
    "ValidationError": InvalidRequestError,
    "InvalidParameterValue": InvalidRequestError,
    "MissingParameter": InvalidRequestError,
    "ResourceInUse": InvalidRequestError,
    "ResourceNotFound": ProviderJobFailedError,
    "NoSuchBucket": ProviderUnavailableError,
    "InternalFailure": TransientProviderError,
    "InternalError": TransientProviderError,
    "InternalServerError": TransientProviderError,
    "ServiceUnavailable": TransientProviderError,
    "ServiceUnavailableException": TransientProviderError,
}

# botocore exception class name -> broker error class; looked up along the class's MRO,
# so botocore is not imported here.
ERROR_TYPES: dict[str, type[ProviderError]] = {
    "NoCredentialsError": ProviderUnavailableError,
    "PartialCredentialsError": ProviderUnavailableError,
    "CredentialRetrievalError": ProviderUnavailableError,
    "NoRegionError": ProviderUnavailableError,
    "ProfileNotFound": ProviderUnavailableError,
    "TokenRetrievalError": CredentialsExpiredError,
    "UnauthorizedSSOTokenError": CredentialsExpiredError,
    "SSOTokenLoadError": CredentialsExpiredError,
    "ParamValidationError": InvalidRequestError,
    "EndpointConnectionError": TransientProviderError,
    "ConnectTimeoutError": TransientProviderError,
    "ReadTimeoutError": TransientProviderError,
    "ConnectionClosedError": TransientProviderError,
    "ProxyConnectionError": TransientProviderError,
    "HTTPClientError": TransientProviderError,
}

# Transport errors after the request was sent: the service may have acted on it.
AMBIGUOUS_TYPES = frozenset({"ReadTimeoutError", "ConnectionClosedError"})

_FIXES: dict[type[ProviderError], str] = {
    ThrottledError: "the broker retries with backoff",
    QuotaExceededError: (
        "ask for a higher SageMaker quota in the Service Quotas console, or let the "
        "broker fail over"
    ),
    CapacityError: "try another region or instance type, or let the broker fail over",
    CredentialsExpiredError: "renew the AWS session credentials, then resume the job",
    CredentialsError: "check the AWS access key, its permissions and the role ARN",
    InvalidRequestError: "fix the request; another backend would refuse it too",
    TransientProviderError: "the broker retries; check the network if it persists",
    ProviderUnavailableError: "configure AWS credentials, region and bucket",
}


def map_aws_error(
    exc: BaseException, *, operation: str = "", job_id: str | None = None
) -> ProviderError:
    """Translate a botocore exception into the broker's error with its decision fields.

    Args:
        exc: A ``botocore.exceptions.ClientError`` or ``BotoCoreError``.
        operation: The API operation that failed, for the message.
        job_id: The Autopilot job the call was about, when known.

    Returns:
        The broker error; its class fixes ``retryable`` and ``failover_allowed``.
    """
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        return _map_client_error(exc, response, operation, job_id)

    type_names = [cls.__name__ for cls in type(exc).__mro__]
    error_class: type[ProviderError] = ProviderError
    for type_name in type_names:
        if type_name in ERROR_TYPES:
            error_class = ERROR_TYPES[type_name]
            break
    fix = _FIXES.get(error_class, "see the AWS error above")
    return error_class(
        f"SageMaker {operation or 'call'} failed: {type(exc).__name__}: {exc}; {fix}",
        provider=PROVIDER,
        failover_allowed=True if error_class is ProviderError else None,
        original_type=type(exc).__name__,
        provider_job_id=job_id,
    )


def _map_client_error(
    exc: BaseException, response: dict[str, Any], operation: str, job_id: str | None
) -> ProviderError:
    code = str(response["Error"].get("Code", ""))
    message = response["Error"].get("Message", "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)

    error_class = ERROR_CODES.get(code)
    if error_class is None:
        if status == 429:
            error_class = ThrottledError
        elif status >= 500:
            error_class = TransientProviderError
        elif status in (401, 403):
            error_class = CredentialsError
        elif 400 <= status < 500:
            error_class = InvalidRequestError
        else:
            error_class = ProviderError

    fix = _FIXES.get(error_class, "see the AWS error above")
    return error_class(
        f"SageMaker {operation or 'call'} failed: {code} (HTTP {status}): {message}; "
        f"{fix}",
        provider=PROVIDER,
        failover_allowed=True if error_class is ProviderError else None,
        original_type=type(exc).__name__,
        code=code or status,
        provider_job_id=job_id,
    )


def job_name_for(idempotency_key: str) -> str:
    """The Autopilot job name for a key: 32 characters, letters, digits and hyphens."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"automl-{digest[:25]}"


def objective_for(metric: str, task: Task) -> str:
    """The Autopilot objective for a broker metric, or the task's fallback."""
    objective = OBJECTIVES.get(metric)
    if objective is None:
        return FALLBACK_OBJECTIVES[task]
    if objective in ("AUC", "F1", "Precision", "Recall") and task != Task.BINARY:
        return FALLBACK_OBJECTIVES[task]
    return objective


def billable_seconds(seconds: float) -> int:
    """Seconds billed for one training job: whole seconds, at least 60."""
    return max(MIN_BILLED_S, math.ceil(seconds))


def training_cost_usd(candidate_seconds: list[float], usd_per_hour: Decimal) -> Decimal:
    """Exact dollars for training jobs that ran `candidate_seconds` each."""
    total_s = sum(billable_seconds(s) for s in candidate_seconds)
    cost = Decimal(total_s) * usd_per_hour / Decimal(3600)
    return cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


class SageMakerProvider(Provider):
    """SageMaker Autopilot through boto3.

    Args:
        region: AWS region of the jobs and the bucket.
        role_arn: IAM role that Autopilot assumes to read and write the bucket.
        bucket: S3 bucket for training data, outputs and batch predictions.
        prefix: Key prefix under which the broker writes in the bucket.
        training_instance_type: The instance type whose price prices the training.
            Autopilot chooses its own instances; this is the one assumed for cost.
        transform_instance_type: Instance type of the batch transform for predictions.
        training_usd_per_hour: Price of the training instance; defaults to the built-in
            table for `training_instance_type`.
        mode: Autopilot training mode; ``HYPERPARAMETER_TUNING`` honours MaxCandidates.
        endpoint_url: One endpoint for SageMaker and S3 (a local moto server on
            127.0.0.1); None uses AWS's own endpoints.
        session: A ``boto3.session.Session`` to build clients from; None makes one
            for `region` with the standard credential chain.
        clock: Time source for the waits of the batch transform.
        poll_interval_s: Wait between batch-transform status calls.
        transform_timeout_s: Longest wait for a batch transform.
        sdk_max_attempts: botocore attempts per call; 1 leaves retries to the broker.
    """

    name = PROVIDER
    kind = "cloud"
    unsupported: ClassVar[dict[str, str]] = {
        "gpu": "Autopilot chooses its own instances; a GPU cannot be requested",
    }

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        role_arn: str | None = None,
        bucket: str | None = None,
        prefix: str = "automl-broker",
        training_instance_type: str = "ml.m5.xlarge",
        transform_instance_type: str = "ml.m5.large",
        training_usd_per_hour: Decimal | None = None,
        mode: str = "HYPERPARAMETER_TUNING",
        endpoint_url: str | None = None,
        session: Any = None,
        clock: Clock | None = None,
        poll_interval_s: float = 30.0,
        transform_timeout_s: float = 3600.0,
        sdk_max_attempts: int = 1,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {poll_interval_s}")
        if sdk_max_attempts < 1:
            raise ValueError(
                f"sdk_max_attempts must be at least 1, got {sdk_max_attempts}"
            )
        self.region = region
        self.role_arn = role_arn
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.training_instance_type = training_instance_type
        self.transform_instance_type = transform_instance_type
        self.training_usd_per_hour = training_usd_per_hour
        self.mode = mode
        self.endpoint_url = endpoint_url
        self.clock: Clock = clock or SYSTEM_CLOCK
        self.poll_interval_s = poll_interval_s
        self.transform_timeout_s = transform_timeout_s
        self.sdk_max_attempts = sdk_max_attempts
        self._session = session
        self._clients: dict[str, Any] = {}
        # TODO(sagemaker-stop-record): kept in memory only; after a restart a job we
        # stopped reads as STOPPED, not CANCELLED. Tag the job on stop to keep it.
        self._stop_requested: set[str] = set()

    # --- availability --------------------------------------------------------------

    def placement(self) -> Placement | None:
        return Placement(
            regions=frozenset({self.region}),
            machines=frozenset({self.training_instance_type}),
        )

    def availability(self) -> Availability:
        """Whether boto3, settings and credentials are present; no network."""
        import importlib.util

        if importlib.util.find_spec("boto3") is None:
            return Availability(
                False, "boto3 is not installed: pip install 'automl-broker[aws]'"
            )
        missing = [n for n in ("role_arn", "bucket") if not getattr(self, n)]
        if missing:
            return Availability(
                False, f"SageMaker settings missing: {', '.join(missing)}"
            )
        if self._session is not None:
            return Availability(True, "injected boto3 session", "session")

        source = _credential_source()
        if source is None:
            return Availability(
                False,
                "no AWS credentials found (AWS_ACCESS_KEY_ID, AWS_PROFILE or "
                "~/.aws/credentials)",
            )
        return Availability(True, f"AWS credentials from {source}", source)

    @property
    def usd_per_hour(self) -> Decimal:
        """The training price used for budgets and the actual cost."""
        if self.training_usd_per_hour is not None:
            return self.training_usd_per_hour
        try:
            return TRAINING_USD_PER_HOUR[self.training_instance_type]
        except KeyError:
            raise ProviderUnavailableError(
                f"no price for SageMaker training instance "
                f"{self.training_instance_type!r}; pass training_usd_per_hour or choose "
                f"one of {sorted(TRAINING_USD_PER_HOUR)}",
                provider=PROVIDER,
                reason="PriceMissing",
            ) from None

    # --- submit --------------------------------------------------------------------

    def completion_criteria(self, job: ProviderJob) -> dict[str, int]:
        """Autopilot's limits for `job`: runtime from the job, candidates from dollars.

        The per-candidate limit is a quarter of the job's runtime (at least 60 s, at
        most the runtime). With a dollar budget, MaxCandidates is how many candidates
        the budget pays for at that limit, so the training bill cannot pass it.

        Raises:
            ProviderUnavailableError: The budget does not pay for one 60-second job.
        """
        total_s = max(1, int(job.runtime_limit_s))
        per_job_s = min(total_s, max(MIN_BILLED_S, total_s // 4))
        max_candidates = MAX_CANDIDATES

        max_usd = job.max_usd if job.max_usd is not None else job.spec.budget.max_usd
        if max_usd is not None:
            usd_per_s = self.usd_per_hour / Decimal(3600)
            affordable = int(max_usd / (usd_per_s * billable_seconds(per_job_s)))
            if affordable < 1:
                affordable_s = int(max_usd / usd_per_s)
                if affordable_s < MIN_BILLED_S:
                    minimum = (usd_per_s * MIN_BILLED_S).quantize(
                        Decimal("0.0001"), rounding="ROUND_UP"
                    )
                    raise ProviderUnavailableError(
                        f"max_usd {max_usd} pays for {affordable_s} s of "
                        f"{self.training_instance_type} at ${self.usd_per_hour}/h, but "
                        f"SageMaker bills at least {MIN_BILLED_S} s per training job; "
                        f"raise budget.max_usd to at least {minimum} or use another "
                        "provider",
                        provider=PROVIDER,
                        reason="BudgetTooSmall",
                    )
                per_job_s = affordable_s
                affordable = 1
            max_candidates = min(MAX_CANDIDATES, affordable)

        return {
            "MaxCandidates": max_candidates,
            "MaxRuntimePerTrainingJobInSeconds": per_job_s,
            "MaxAutoMLJobRuntimeInSeconds": total_s,
        }

    def create_request(self, job: ProviderJob, train_uri: str) -> dict[str, Any]:
        """The exact ``create_auto_ml_job_v2`` arguments for `job`."""
        task = job.schema.task
        if task not in PROBLEM_TYPES:
            raise InvalidRequestError(
                f"SageMaker needs a resolved task, got {task.value!r}; run intake first",
                provider=PROVIDER,
            )
        name = job_name_for(job.idempotency_key)
        metric = job.spec.metric_for(task)
        return {
            "AutoMLJobName": name,
            "AutoMLJobInputDataConfig": [
                {
                    "ChannelType": "training",
                    "ContentType": "text/csv;header=present",
                    "CompressionType": "None",
                    "DataSource": {
                        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": train_uri}
                    },
                }
            ],
            "OutputDataConfig": {"S3OutputPath": self._s3_uri(name, "output")},
            "AutoMLProblemTypeConfig": {
                "TabularJobConfig": {
                    "TargetAttributeName": job.schema.target_safe_name,
                    "ProblemType": PROBLEM_TYPES[task],
                    "Mode": self.mode,
                    "CompletionCriteria": self.completion_criteria(job),
                }
            },
            "AutoMLJobObjective": {"MetricName": objective_for(metric, task)},
            "RoleArn": self.role_arn,
            "Tags": [
                {"Key": IDEMPOTENCY_TAG, "Value": _tag_value(job.idempotency_key)},
                {"Key": JOB_ID_TAG, "Value": _tag_value(job.job_id)},
            ],
        }

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        """Upload the training rows and create the Autopilot job, or attach to it.

        Raises:
            ProviderError: A mapped AWS error; ``ResourceInUse`` is not raised, it
                attaches to the job that the same key created before.
        """
        self._require_settings()
        name = job_name_for(job.idempotency_key)
        train_uri = self._s3_uri(name, "train/train.csv")
        request = self.create_request(job, train_uri)

        body = job.train.to_csv(index=False).encode("utf-8")
        self._call(
            "s3",
            "put_object",
            name,
            Bucket=self.bucket,
            Key=_key(train_uri),
            Body=body,
            ContentType="text/csv",
        )
        try:
            response = self._call("sagemaker", "create_auto_ml_job_v2", name, **request)
        except ProviderError as exc:
            # TODO(sagemaker-attach-check): the name is a hash of the key, so the tags
            # are not read back to confirm the owner before attaching.
            if exc.code == "ResourceInUse":
                logger.info("sagemaker job %s exists for this key; attaching", name)
                return self._ref(name, job.idempotency_key, attached=True)
            if exc.original_type in AMBIGUOUS_TYPES:
                existing = self._find(name, job.idempotency_key)
                if existing is not None:
                    logger.warning(
                        "sagemaker create reply for %s was lost; the job exists, attaching",
                        name,
                    )
                    return existing
            raise

        logger.info(
            "sagemaker job %s created: %s, objective %s, %s",
            name,
            request["AutoMLProblemTypeConfig"]["TabularJobConfig"]["ProblemType"],
            request["AutoMLJobObjective"]["MetricName"],
            request["AutoMLProblemTypeConfig"]["TabularJobConfig"][
                "CompletionCriteria"
            ],
        )
        return self._ref(name, job.idempotency_key, arn=response.get("AutoMLJobArn"))

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        """The Autopilot job created for `key`, found by its derived name."""
        return self._find(job_name_for(key), key)

    def _find(self, name: str, key: str) -> ProviderJobRef | None:
        try:
            description = self._describe(name)
        except ProviderJobFailedError as exc:
            if exc.code == "ResourceNotFound":
                return None
            raise
        return self._ref(name, key, arn=description.get("AutoMLJobArn"), attached=True)

    # --- poll and cancel ------------------------------------------------------------

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        """Map Autopilot's primary and secondary status onto :class:`JobState`.

        A job that ends ``Completed`` without a best candidate (its runtime ran out
        first) is FAILED with a :class:`NoModelTrainedError` that reports the money
        its candidates were still charged.
        """
        description = self._describe(ref.job_id)
        status = description["AutoMLJobStatus"]
        secondary = description.get("AutoMLJobSecondaryStatus")
        started_at = description.get("CreationTime")
        ended_at = description.get("EndTime") if status in _TERMINAL_STATUSES else None

        error: Exception | None = None
        message: str | None = None
        if status == "InProgress":
            state = JobState.QUEUED if secondary == "Starting" else JobState.RUNNING
        elif status == "Stopping":
            state = JobState.CANCELLING
        elif status == "Stopped":
            state = (
                JobState.CANCELLED
                if ref.job_id in self._stop_requested
                else JobState.STOPPED
            )
        elif status == "Failed":
            state = JobState.FAILED
            error = _failure_error(ref.job_id, description.get("FailureReason") or "")
            message = str(error)
        elif status == "Completed" and not description.get("BestCandidate"):
            state = JobState.FAILED
            error = self._no_model_error(ref.job_id, description)
            message = str(error)
        elif status == "Completed":
            state = JobState.SUCCEEDED
            if secondary == "MaxAutoMLJobRuntimeReached":
                message = "Autopilot's runtime limit ended the search early"
        else:
            raise ProviderError(
                f"SageMaker reported an unknown job status {status!r} for {ref.job_id}",
                provider=PROVIDER,
                provider_job_id=ref.job_id,
            )

        return ProviderStatus(
            state=state,
            secondary=secondary,
            message=message,
            started_at=started_at,
            ended_at=ended_at,
            error=error,
        )

    def cancel(self, ref: ProviderJobRef) -> None:
        """Stop the job once; a job already stopping or ended is left alone."""
        if ref.job_id in self._stop_requested:
            return
        description = self._describe(ref.job_id)
        if description["AutoMLJobStatus"] != "InProgress":
            return
        self._call(
            "sagemaker", "stop_auto_ml_job", ref.job_id, AutoMLJobName=ref.job_id
        )
        self._stop_requested.add(ref.job_id)
        logger.info("sagemaker job %s: stop requested", ref.job_id)

    # --- result and predict ---------------------------------------------------------

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        """Leaderboard of the job's candidates, best first, and the exact training bill.

        Raises:
            NoModelTrainedError: The job completed without a best candidate.
            InvalidRequestError: The job has not completed.
        """
        description = self._describe(ref.job_id)
        if description["AutoMLJobStatus"] != "Completed":
            raise InvalidRequestError(
                f"SageMaker job {ref.job_id} is {description['AutoMLJobStatus']}; a "
                "result exists only once it is Completed",
                provider=PROVIDER,
                provider_job_id=ref.job_id,
            )
        best = description.get("BestCandidate")
        if not best:
            raise self._no_model_error(ref.job_id, description)

        # TODO(sagemaker-billing): only candidate training jobs are priced; the data
        # analysis and feature engineering processing jobs and the batch transform of
        # predict() are billed by AWS too. Read BillableTimeInSeconds per training job.
        candidates = self._list_candidates(ref.job_id)
        seconds = [_candidate_seconds(c) for c in candidates]
        cost = training_cost_usd(seconds, self.usd_per_hour)
        leaderboard = _leaderboard(candidates, best["CandidateName"])
        notes = [
            f"{c['CandidateName']}: {c['CandidateStatus']}, billed but not ranked"
            for c in candidates
            if c["CandidateStatus"] != "Completed"
        ]
        objective = description.get("AutoMLJobObjective", {}).get("MetricName")
        if objective and _BROKER_METRIC.get(objective) != job.spec.metric_for(
            job.schema.task
        ):
            notes.append(
                f"Autopilot searched on {objective}; the broker ranks on "
                f"{job.spec.metric_for(job.schema.task)} from its held-out rows"
            )

        model_dir = job.run_dir / "model"
        self._write_model_reference(model_dir, ref, best)
        runtime_s = _span_s(description.get("CreationTime"), description.get("EndTime"))
        return ProviderResult(
            leaderboard=leaderboard,
            best_model_id=best["CandidateName"],
            model_path=model_dir,
            model_format=MODEL_FORMAT,
            provider_units={
                "training_jobs": len(candidates),
                "training_seconds": sum(seconds),
                "billable_seconds": sum(billable_seconds(s) for s in seconds),
                "instance_type": self.training_instance_type,
                "usd_per_hour": str(self.usd_per_hour),
                "billing_unit": "second, 60 s minimum per training job",
            },
            actual_cost_usd=cost,
            runtime_s=runtime_s,
            notes=notes,
        )

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        """Predictions of the best candidate on `frame` through a batch transform.

        Creates a SageMaker model from the best candidate's inference containers,
        uploads the rows (no header, training column order), runs a transform job,
        waits for it on the clock and reads its output from S3.
        """
        import numpy as np

        description = self._describe(ref.job_id)
        best = description.get("BestCandidate")
        if not best:
            raise self._no_model_error(ref.job_id, description)
        task = job.schema.task
        features = [c for c in job.train.columns if c != job.schema.target_safe_name]
        body = frame[features].to_csv(index=False, header=False).encode("utf-8")
        digest = hashlib.sha256(body).hexdigest()[:12]

        model_name = self._ensure_model(ref.job_id, best, task)
        input_uri = self._s3_uri(ref.job_id, f"predict/{digest}.csv")
        output_prefix = self._s3_uri(ref.job_id, f"predict/{digest}-out")
        self._call(
            "s3",
            "put_object",
            ref.job_id,
            Bucket=self.bucket,
            Key=_key(input_uri),
            Body=body,
            ContentType="text/csv",
        )
        transform_name = f"{ref.job_id}-t{digest}"
        self._run_transform(transform_name, model_name, input_uri, output_prefix)

        output_uri = f"{output_prefix}/{digest}.csv.out"
        raw = (
            self._call(
                "s3", "get_object", ref.job_id, Bucket=self.bucket, Key=_key(output_uri)
            )["Body"]
            .read()
            .decode("utf-8")
        )
        if task == Task.REGRESSION:
            return np.array([float(line) for line in raw.splitlines() if line.strip()])
        return _probabilities(raw, [str(c) for c in job.schema.classes])

    def _ensure_model(self, job_name: str, best: dict[str, Any], task: Task) -> str:
        model_name = f"{job_name}-best"
        keys = "predicted_label" if task == Task.REGRESSION else "labels,probabilities"
        containers = [
            {
                **c,
                "Environment": {
                    **c.get("Environment", {}),
                    "SAGEMAKER_INFERENCE_OUTPUT": keys,
                },
            }
            for c in best.get("InferenceContainers", [])
        ]
        try:
            self._call(
                "sagemaker",
                "create_model",
                job_name,
                ModelName=model_name,
                Containers=containers,
                ExecutionRoleArn=self.role_arn,
            )
        except InvalidRequestError as exc:
            if "already exist" not in str(exc):
                raise
        return model_name

    def _run_transform(
        self, name: str, model_name: str, input_uri: str, output_prefix: str
    ) -> None:
        try:
            self._call(
                "sagemaker",
                "create_transform_job",
                name,
                TransformJobName=name,
                ModelName=model_name,
                TransformInput={
                    "DataSource": {
                        "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}
                    },
                    "ContentType": "text/csv",
                    "SplitType": "Line",
                },
                TransformOutput={
                    "S3OutputPath": output_prefix,
                    "Accept": "text/csv",
                    "AssembleWith": "Line",
                },
                TransformResources={
                    "InstanceType": self.transform_instance_type,
                    "InstanceCount": 1,
                },
            )
        except InvalidRequestError as exc:
            if "already exist" not in str(exc):
                raise

        deadline = self.clock.monotonic() + self.transform_timeout_s
        while True:
            status = self._call(
                "sagemaker", "describe_transform_job", name, TransformJobName=name
            )
            if status["TransformJobStatus"] == "Completed":
                return
            if status["TransformJobStatus"] in ("Failed", "Stopped"):
                raise ProviderJobFailedError(
                    f"SageMaker batch transform {name} ended "
                    f"{status['TransformJobStatus']}: {status.get('FailureReason', '')}",
                    provider=PROVIDER,
                    provider_job_id=name,
                )
            if self.clock.monotonic() >= deadline:
                raise TransientProviderError(
                    f"SageMaker batch transform {name} still running after "
                    f"{self.transform_timeout_s:.0f} s",
                    provider=PROVIDER,
                    provider_job_id=name,
                )
            self.clock.sleep(self.poll_interval_s)

    # --- plumbing -------------------------------------------------------------------

    def close(self) -> None:
        self._clients.clear()

    def client(self, service: str) -> Any:
        """The boto3 client for `service`, made once from the session."""
        if service not in self._clients:
            self._clients[service] = self._make_client(service)
        return self._clients[service]

    def _make_client(self, service: str) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ProviderUnavailableError(
                "boto3 is not installed: pip install 'automl-broker[aws]'",
                provider=PROVIDER,
                original_type="ImportError",
            ) from None

        session = self._session or boto3.session.Session(region_name=self.region)
        config = Config(
            region_name=self.region,
            retries={"total_max_attempts": self.sdk_max_attempts, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return session.client(service, endpoint_url=self.endpoint_url, config=config)

    def _call(
        self, service: str, operation: str, job_id: str | None, **params: Any
    ) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(service)
        try:
            return getattr(client, operation)(**params)
        except (ClientError, BotoCoreError) as exc:
            raise map_aws_error(exc, operation=operation, job_id=job_id) from exc

    def _describe(self, name: str) -> dict[str, Any]:
        response: dict[str, Any] = self._call(
            "sagemaker", "describe_auto_ml_job_v2", name, AutoMLJobName=name
        )
        return response

    def _list_candidates(self, name: str) -> list[dict[str, Any]]:
        candidates: list[dict[str, Any]] = []
        params: dict[str, Any] = {"AutoMLJobName": name}
        while True:
            page = self._call(
                "sagemaker", "list_candidates_for_auto_ml_job", name, **params
            )
            candidates.extend(page.get("Candidates", []))
            token = page.get("NextToken")
            if not token:
                return candidates
            params["NextToken"] = token

    def _no_model_error(
        self, name: str, description: dict[str, Any]
    ) -> NoModelTrainedError:
        candidates = self._list_candidates(name)
        charged = training_cost_usd(
            [_candidate_seconds(c) for c in candidates], self.usd_per_hour
        )
        criteria = description.get("ResolvedAttributes", {}).get(
            "CompletionCriteria"
        ) or description.get("AutoMLProblemTypeConfig", {}).get(
            "TabularJobConfig", {}
        ).get("CompletionCriteria", {})
        budget_s = criteria.get("MaxAutoMLJobRuntimeInSeconds")
        elapsed_s = _span_s(description.get("CreationTime"), description.get("EndTime"))
        suggested = float(2 * budget_s) if budget_s else None
        return NoModelTrainedError(
            f"SageMaker job {name} ended {description.get('AutoMLJobSecondaryStatus')} "
            f"without a best candidate after {elapsed_s or 0:.0f} s (limit "
            f"{budget_s} s); ${charged} was charged for {len(candidates)} training "
            f"job(s). Raise budget.max_runtime_s to at least {suggested or 0:.0f} s",
            reason="budget_exhausted",
            budget_s=float(budget_s) if budget_s else None,
            elapsed_s=elapsed_s,
            suggested_min_budget_s=suggested,
            charged_usd=charged,
            provider=PROVIDER,
        )

    def _write_model_reference(
        self, model_dir: Path, ref: ProviderJobRef, best: dict[str, Any]
    ) -> None:
        # The model artefacts stay in S3 and run in Autopilot's containers; the run
        # folder keeps what is needed to find and deploy them.
        model_dir.mkdir(parents=True, exist_ok=True)
        reference = {
            "format": MODEL_FORMAT,
            "region": self.region,
            "auto_ml_job_name": ref.job_id,
            "candidate_name": best["CandidateName"],
            "inference_containers": best.get("InferenceContainers", []),
        }
        (model_dir / "model.json").write_text(
            json.dumps(reference, indent=2, default=str), encoding="utf-8"
        )

    def _ref(
        self, name: str, key: str, *, arn: str | None = None, attached: bool = False
    ) -> ProviderJobRef:
        return ProviderJobRef(
            provider=PROVIDER,
            job_id=name,
            idempotency_key=key,
            region=self.region,
            extra={"arn": arn, "bucket": self.bucket, "attached": attached},
        )

    def _s3_uri(self, name: str, tail: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{name}/{tail}"

    def _require_settings(self) -> None:
        missing = [n for n in ("role_arn", "bucket") if not getattr(self, n)]
        if missing:
            raise ProviderUnavailableError(
                f"SageMaker settings missing: {', '.join(missing)}; pass them as "
                "provider_options.sagemaker or to SageMakerProvider(...)",
                provider=PROVIDER,
            )

    def refresh_credentials(self) -> bool:
        """Drop the clients so the next call re-reads the credentials; True if usable."""
        self._clients.clear()
        return self._session is not None or _credential_source() is not None


def _credential_source() -> str | None:
    try:
        from broker import credentials
    except ImportError:
        credentials = None  # type: ignore[assignment]
    if credentials is not None and hasattr(credentials, "discover"):
        found = credentials.discover(PROVIDER)
        source = getattr(found, "source", None)
        if found and source:
            return str(source)

    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return "environment"
    if os.environ.get("AWS_PROFILE"):
        return "profile " + os.environ["AWS_PROFILE"]
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(
        Path.home() / ".aws" / "credentials"
    )
    return "shared credentials file" if Path(shared).is_file() else None


def _failure_error(name: str, reason: str) -> ProviderError:
    error_class: type[ProviderError] = ProviderJobFailedError
    if "ResourceLimitExceeded" in reason or "quota" in reason.lower():
        error_class = QuotaExceededError
    elif "Capacity" in reason:
        error_class = CapacityError
    return error_class(
        f"SageMaker job {name} failed: {reason or 'no reason given'}",
        provider=PROVIDER,
        provider_job_id=name,
        code=reason.split(":", 1)[0] or None,
    )


def _leaderboard(
    candidates: list[dict[str, Any]], best_name: str
) -> list[LeaderboardEntry]:
    ranked = [
        c
        for c in candidates
        if c["CandidateStatus"] == "Completed"
        and c.get("FinalAutoMLJobObjectiveMetric")
    ]

    def order(candidate: dict[str, Any]) -> tuple[int, float]:
        metric = candidate["FinalAutoMLJobObjectiveMetric"]
        value = float(metric["Value"])
        signed = -value if metric.get("Type", "Maximize") == "Maximize" else value
        return (0 if candidate["CandidateName"] == best_name else 1, signed)

    entries = []
    for candidate in sorted(ranked, key=order):
        metric = candidate["FinalAutoMLJobObjectiveMetric"]
        name = _BROKER_METRIC.get(metric["MetricName"], metric["MetricName"])
        entries.append(
            LeaderboardEntry(
                model_id=candidate["CandidateName"],
                provider=PROVIDER,
                algorithm=_algorithm(candidate),
                validation_metrics={name: float(metric["Value"])},
                training_time_s=_candidate_seconds(candidate),
                params={"objective": metric["MetricName"]},
            )
        )
    return entries


def _algorithm(candidate: dict[str, Any]) -> str:
    images = " ".join(
        c.get("Image", "") for c in candidate.get("InferenceContainers", [])
    )
    for name in (
        "xgboost",
        "linear-learner",
        "mlp",
        "lightgbm",
        "catboost",
        "autogluon",
    ):
        if name in images:
            return name
    return "unknown"


def _candidate_seconds(candidate: dict[str, Any]) -> float:
    return _span_s(candidate.get("CreationTime"), candidate.get("EndTime")) or 0.0


def _span_s(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _probabilities(raw: str, classes: list[str]) -> np.ndarray:
    """Parse ``labels,probabilities`` rows into columns in `classes` order."""
    # TODO(sagemaker-live-check): the row format (JSON-style lists in two CSV fields)
    # follows AWS's documentation and the fake; it has not been checked on a live job.
    import numpy as np

    rows = []
    for fields in csv.reader(io.StringIO(raw)):
        if not fields:
            continue
        labels = [str(label) for label in _parse_list(fields[0])]
        values = [float(v) for v in _parse_list(fields[1])]
        by_label = dict(zip(labels, values, strict=True))
        missing = [c for c in classes if c not in by_label]
        if missing:
            raise ProviderJobFailedError(
                f"SageMaker predictions lack classes {missing}; got labels {labels}",
                provider=PROVIDER,
            )
        rows.append([by_label[c] for c in classes])
    return np.array(rows, dtype=float)


def _parse_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = ast.literal_eval(text)
    return list(value)


def _tag_value(text: str) -> str:
    if len(text) <= 256 and re.fullmatch(r"[\w.:/=+\-@ ]*", text):
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _key(uri: str) -> str:
    return uri.split("/", 3)[3]
