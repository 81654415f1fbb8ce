"""A SageMaker Autopilot lifecycle driver around moto, for tests without an AWS account.

moto (in-process ``mock_aws``) implements the Autopilot V2 calls but keeps every job
``InProgress`` forever with a dummy best candidate, and lacks
``ListCandidatesForAutoMLJob``. :class:`AutopilotFake` wraps it so the real boto3 client
sees a job that lives:

- every request of a session from :meth:`AutopilotFake.session` passes through one hook,
  which records it (:attr:`AutopilotFake.calls`), may answer it with an injected fault,
  and otherwise hands it to moto; nothing leaves the process;
- before each SageMaker request the driver moves its jobs along a script
  (:class:`AutopilotScript`) on a controllable clock: ``InProgress/Starting`` ->
  ``AnalyzingData`` -> ``FeatureEngineering`` -> ``ModelTuning`` -> ``Completed``, with
  ``Stopping`` -> ``Stopped`` after a stop;
- candidates appear as they start; when one completes, the driver trains a real small
  scikit-learn model on the CSV that was uploaded to (moto's) S3, so the objective values
  and the batch-transform predictions are real;
- ``ListCandidatesForAutoMLJob`` is answered by the driver, in AWS's JSON shape.

Example:
    >>> from broker.clock import FakeClock
    >>> clock = FakeClock()
    >>> with AutopilotFake(clock=clock) as fake:  # doctest: +SKIP
    ...     provider = fake.provider(training_usd_per_hour=Decimal("3.60"))
    ...     ref = provider.submit(job)
    ...     clock.advance(600)
    ...     provider.poll(ref).state
    <JobState.SUCCEEDED: 'succeeded'>
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from broker.clock import FakeClock

if TYPE_CHECKING:
    from broker.providers.sagemaker import SageMakerProvider
    from broker.testing._tabular import TrainedTabularModel

logger = logging.getLogger(__name__)

__all__ = [
    "AUTOPILOT_FAULTS",
    "AutopilotFake",
    "AutopilotScript",
    "AwsCall",
    "AwsFault",
    "CandidatePlan",
    "NO_MODEL_SCRIPT",
]

ACCOUNT_ID = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/automl-broker-test"
_ECR = "683313688378.dkr.ecr.{region}.amazonaws.com"
_IMAGES = {
    "xgboost": "sagemaker-xgboost:1.7-1-cpu-py3",
    "linear-learner": "linear-learner:1",
    "mlp": "sagemaker-mxnet-mlp:1.8-cpu-py3",
}
_PROCESSING_IMAGE = "sagemaker-sklearn-automl:2.5-1-cpu-py3"
_MINIMIZED = frozenset({"RMSE", "MSE", "MAE", "MAPE"})


@dataclass(frozen=True)
class AwsFault:
    """An error that the driver returns instead of the service's answer.

    Attributes:
        status: HTTP status of the error reply (0 for a transport fault).
        code: The AWS error code (``__type`` in the JSON body).
        message: The error message.
        transport: ``"lost_reply"`` (the service acts, the reply never arrives:
            ``ReadTimeoutError``) or ``"no_connection"`` (``EndpointConnectionError``,
            nothing reaches the service); None for an HTTP error reply.
    """

    status: int
    code: str
    message: str
    transport: Literal["lost_reply", "no_connection"] | None = None


AUTOPILOT_FAULTS: dict[str, AwsFault] = {
    "server_error": AwsFault(
        500, "InternalFailure", "We encountered an internal error."
    ),
    "unavailable": AwsFault(503, "ServiceUnavailable", "Service is unavailable."),
    "throttling": AwsFault(429, "ThrottlingException", "Rate exceeded"),
    "quota": AwsFault(
        400,
        "ResourceLimitExceeded",
        "The account-level service limit 'Number of concurrent AutoML jobs' is 1",
    ),
    "capacity": AwsFault(
        400, "CapacityError", "Unable to provision requested ML compute capacity."
    ),
    "expired_token": AwsFault(
        400,
        "ExpiredTokenException",
        "The security token included in the request is expired",
    ),
    "unrecognized_client": AwsFault(
        400,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ),
    "validation": AwsFault(
        400, "ValidationException", "1 validation error detected: Value at 'RoleArn'"
    ),
    "lost_reply": AwsFault(0, "ReadTimeoutError", "reply lost", transport="lost_reply"),
    "no_connection": AwsFault(
        0, "EndpointConnectionError", "no route", transport="no_connection"
    ),
}


@dataclass(frozen=True)
class CandidatePlan:
    """One training job of a scripted Autopilot job.

    Attributes:
        algorithm: ``"xgboost"`` (a gradient-boosting model), ``"linear-learner"`` or
            ``"mlp"`` (both a linear model here).
        start_s: When it starts, seconds after the job was created.
        duration_s: How long it trains.
        status: How it ends: ``"Completed"``, ``"Failed"`` or ``"Stopped"``.
    """

    algorithm: str
    start_s: float
    duration_s: float
    status: Literal["Completed", "Failed", "Stopped"] = "Completed"


@dataclass(frozen=True)
class AutopilotScript:
    """How a job created in the fake lives, in seconds after its creation.

    Attributes:
        timeline: ``(at_s, status, secondary)`` steps, ascending, starting at 0.
        candidates: The training jobs it runs.
        best: Whether a completed job has a best candidate; False gives the
            ``MaxAutoMLJobRuntimeReached``-without-a-model ending.
        failure_reason: ``FailureReason`` of a job whose timeline ends ``Failed``.
        stop_delay_s: Time from a stop request to ``Stopped``.
    """

    timeline: tuple[tuple[float, str, str], ...] = (
        (0, "InProgress", "Starting"),
        (60, "InProgress", "AnalyzingData"),
        (120, "InProgress", "FeatureEngineering"),
        (180, "InProgress", "ModelTuning"),
        (600, "Completed", "Completed"),
    )
    candidates: tuple[CandidatePlan, ...] = (
        CandidatePlan("xgboost", 180, 130),
        CandidatePlan("linear-learner", 180, 95),
        CandidatePlan("mlp", 200, 45, "Failed"),
    )
    best: bool = True
    failure_reason: str = ""
    stop_delay_s: float = 20.0

    def __post_init__(self) -> None:
        times = [step[0] for step in self.timeline]
        if not times or times[0] != 0 or times != sorted(times):
            raise ValueError(f"timeline must start at 0 and ascend, got {times}")

    def step_at(self, elapsed_s: float) -> tuple[float, str, str]:
        current = self.timeline[0]
        for step in self.timeline:
            if step[0] <= elapsed_s:
                current = step
        return current


NO_MODEL_SCRIPT = AutopilotScript(
    timeline=(
        (0, "InProgress", "Starting"),
        (60, "InProgress", "AnalyzingData"),
        (120, "InProgress", "FeatureEngineering"),
        (180, "InProgress", "ModelTuning"),
        (300, "Completed", "MaxAutoMLJobRuntimeReached"),
    ),
    candidates=(
        CandidatePlan("xgboost", 180, 120, "Stopped"),
        CandidatePlan("linear-learner", 180, 120, "Stopped"),
    ),
    best=False,
)


@dataclass(frozen=True)
class AwsCall:
    """One request the boto3 client sent, as the driver saw it.

    Attributes:
        service: ``"sagemaker"`` or ``"s3"``.
        operation: The API operation (``"CreateAutoMLJobV2"``).
        params: The JSON request body (SageMaker) or ``{"Bucket", "Key"}`` (S3).
        at_s: The fake clock's monotonic time of the request.
        fault: The injected fault's name, if one answered it.
    """

    service: str
    operation: str
    params: dict[str, Any]
    at_s: float
    fault: str | None = None


@dataclass
class _Run:
    name: str
    script: AutopilotScript
    created_s: float
    created_at: datetime
    stop_s: float | None = None
    models: dict[str, TrainedTabularModel] = field(default_factory=dict)


class AutopilotFake:
    """moto plus a lifecycle: see the module docstring.

    Args:
        clock: The clock the jobs follow; share it with the provider.
        region: The region of the session and the jobs.
        bucket: A bucket created at start.
        script: How each new job lives; :meth:`script_next` overrides it per job.
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        region: str = "us-east-1",
        bucket: str = "automl-broker-test",
        script: AutopilotScript | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.region = region
        self.bucket = bucket
        self.role_arn = ROLE_ARN
        self.default_script = script or AutopilotScript()
        self.calls: list[AwsCall] = []
        self._faults: list[tuple[str, str, int]] = []  # operation, fault name, times
        self._next_scripts: list[AutopilotScript] = []
        self._runs: dict[str, _Run] = {}
        self._models_by_url: dict[str, TrainedTabularModel] = {}
        self._lock = threading.RLock()
        self._mock: Any = None

    # --- set-up ---------------------------------------------------------------------

    def start(self) -> AutopilotFake:
        from moto import mock_aws

        self._mock = mock_aws()
        self._mock.start()
        self.session().client("s3").create_bucket(Bucket=self.bucket)
        self.calls.clear()
        return self

    def stop(self) -> None:
        if self._mock is not None:
            self._mock.stop()
            self._mock = None

    def __enter__(self) -> AutopilotFake:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def session(self) -> Any:
        """A boto3 session with fake keys whose every request goes through the driver."""
        import boto3
        from moto.core.models import botocore_stubber

        session = boto3.session.Session(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            aws_session_token="testing",
            region_name=self.region,
        )
        session.events.unregister("before-send", botocore_stubber)
        session.events.register("before-send", self._handle)
        return session

    def provider(self, **settings: Any) -> SageMakerProvider:
        """A provider wired to this fake (session, bucket, role, clock, region)."""
        from broker.providers.sagemaker import SageMakerProvider

        defaults: dict[str, Any] = {
            "region": self.region,
            "role_arn": self.role_arn,
            "bucket": self.bucket,
            "session": self.session(),
            "clock": self.clock,
            "poll_interval_s": 10.0,
        }
        return SageMakerProvider(**{**defaults, **settings})

    def inject(self, operation: str, fault: str, *, times: int = 1) -> None:
        """Answer the next `times` calls of `operation` with a fault of
        :data:`AUTOPILOT_FAULTS` (``"throttling"``, ``"lost_reply"``...)."""
        if fault not in AUTOPILOT_FAULTS:
            raise ValueError(
                f"unknown fault {fault!r}; choose from {sorted(AUTOPILOT_FAULTS)}"
            )
        self._faults.append((operation, fault, times))

    def script_next(self, script: AutopilotScript) -> None:
        """Make the next created job follow `script` (queued; one per job)."""
        self._next_scripts.append(script)

    # --- what happened --------------------------------------------------------------

    def operations(self, service: str | None = None) -> list[str]:
        """Operation names of the recorded calls, in order."""
        return [c.operation for c in self.calls if service in (None, c.service)]

    def requests(self, operation: str) -> list[dict[str, Any]]:
        """The request bodies of every call of `operation`."""
        return [c.params for c in self.calls if c.operation == operation]

    def job_names(self) -> list[str]:
        """Names of the Autopilot jobs that exist in moto."""
        return list(self._backend().auto_ml_jobs)

    def trained_models(self, job_name: str) -> dict[str, TrainedTabularModel]:
        """The real models behind the job's completed candidates, by candidate name."""
        return dict(self._runs[job_name].models)

    # --- the hook ---------------------------------------------------------------------

    def _handle(self, event_name: str, request: Any, **kwargs: Any) -> Any:
        _, service, operation = event_name.split(".", 2)
        with self._lock:
            params = _request_params(service, request)
            fault_name = self._take_fault(operation)
            self.calls.append(
                AwsCall(service, operation, params, self.clock.monotonic(), fault_name)
            )
            if service == "sagemaker":
                self._sync()

            if fault_name is not None:
                return self._fault_reply(
                    event_name,
                    service,
                    request,
                    operation,
                    params,
                    AUTOPILOT_FAULTS[fault_name],
                )
            if operation == "ListCandidatesForAutoMLJob":
                return self._list_candidates_reply(request, params)
            response = self._to_moto(event_name, request)
            self._after(operation, params, response.status_code)
            if service == "sagemaker":
                self._sync()
            return response

    def _to_moto(self, event_name: str, request: Any) -> Any:
        from moto.core.models import botocore_stubber

        response = botocore_stubber(event_name, request)
        if response is None:  # never let a request reach the network
            raise RuntimeError(f"moto did not answer {request.method} {request.url}")
        return response

    def _take_fault(self, operation: str) -> str | None:
        for index, (op, name, times) in enumerate(self._faults):
            if op == operation:
                if times <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = (op, name, times - 1)
                return name
        return None

    def _fault_reply(
        self,
        event_name: str,
        service: str,
        request: Any,
        operation: str,
        params: dict[str, Any],
        fault: AwsFault,
    ) -> Any:
        from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

        if fault.transport == "no_connection":
            raise EndpointConnectionError(endpoint_url=request.url)
        if fault.transport == "lost_reply":
            response = self._to_moto(event_name, request)
            self._after(operation, params, response.status_code)
            raise ReadTimeoutError(endpoint_url=request.url)
        if service == "s3":
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                f"<Message>{fault.message}</Message><RequestId>fake</RequestId></Error>"
            )
            return _reply(request.url, fault.status, body, "application/xml")
        body = json.dumps({"__type": fault.code, "message": fault.message})
        return _reply(request.url, fault.status, body, "application/x-amz-json-1.1")

    def _after(self, operation: str, params: dict[str, Any], status: int) -> None:
        if status >= 300:
            return
        if operation == "CreateAutoMLJobV2":
            name = params["AutoMLJobName"]
            script = (
                self._next_scripts.pop(0) if self._next_scripts else self.default_script
            )
            self._runs[name] = _Run(
                name, script, self.clock.monotonic(), self.clock.now()
            )
        elif operation == "StopAutoMLJob":
            run = self._runs.get(params["AutoMLJobName"])
            if run is not None and run.stop_s is None:
                run.stop_s = self.clock.monotonic()
        elif operation == "CreateTransformJob":
            self._write_transform_output(params)

    # --- the lifecycle ----------------------------------------------------------------

    def _backend(self) -> Any:
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT_ID][self.region]

    def _sync(self) -> None:
        backend = self._backend()
        now = self.clock.monotonic()
        for run in self._runs.values():
            job = backend.auto_ml_jobs.get(run.name)
            if job is None:
                continue
            status, secondary, ended_s = self._state(run, now - run.created_s)
            job.auto_ml_job_status = status
            job.auto_ml_job_secondary_status = secondary
            job.creation_time = run.created_at
            job.last_modified_time = self.clock.now()
            job.end_time = (
                run.created_at + timedelta(seconds=ended_s)
                if ended_s is not None
                else None
            )
            job.failure_reason = run.script.failure_reason if status == "Failed" else ""
            job.best_candidate = None
            if status == "Completed" and run.script.best:
                job.best_candidate = self._best_candidate(run, now - run.created_s)

    def _state(self, run: _Run, elapsed_s: float) -> tuple[str, str, float | None]:
        at_s, status, secondary = run.script.step_at(elapsed_s)
        stop_rel = None if run.stop_s is None else run.stop_s - run.created_s
        ended_before_stop = status != "InProgress" and (
            stop_rel is None or at_s <= stop_rel
        )
        if ended_before_stop:
            return status, secondary, at_s
        if stop_rel is not None:
            stopped_at = stop_rel + run.script.stop_delay_s
            if elapsed_s >= stopped_at:
                return "Stopped", "Stopped", stopped_at
            return "Stopping", "Stopping", None
        return status, secondary, None

    def _candidates(self, run: _Run, elapsed_s: float) -> list[dict[str, Any]]:
        objective = self._objective(run.name)
        stop_rel = None if run.stop_s is None else run.stop_s - run.created_s
        out = []
        for index, plan in enumerate(run.script.candidates, start=1):
            if plan.start_s > elapsed_s or (
                stop_rel is not None and plan.start_s > stop_rel
            ):
                continue
            end_s = plan.start_s + plan.duration_s
            status: str = plan.status
            if stop_rel is not None and stop_rel < end_s:
                end_s, status = stop_rel, "Stopped"
            if end_s > elapsed_s:
                status = "InProgress"
            out.append(self._candidate(run, index, plan, status, end_s, objective))
        return out

    def _candidate(
        self,
        run: _Run,
        index: int,
        plan: CandidatePlan,
        status: str,
        end_s: float,
        objective: str,
    ) -> dict[str, Any]:
        name = f"{run.name[:20]}-{index:03d}-{plan.algorithm}"
        output = (
            self._backend().auto_ml_jobs[run.name].output_data_config["S3OutputPath"]
        )
        model_url = f"{output}/{run.name}/tuning/{name}/output/model.tar.gz"
        ecr = _ECR.format(region=self.region)
        candidate: dict[str, Any] = {
            "CandidateName": name,
            "ObjectiveStatus": {"Completed": "Succeeded", "InProgress": "Pending"}.get(
                status, "Failed"
            ),
            "CandidateSteps": [
                {
                    "CandidateStepType": "AWS::SageMaker::TrainingJob",
                    "CandidateStepArn": (
                        f"arn:aws:sagemaker:{self.region}:{ACCOUNT_ID}:training-job/{name}"
                    ),
                    "CandidateStepName": name,
                }
            ],
            "CandidateStatus": status,
            "InferenceContainers": [
                {
                    "Image": f"{ecr}/{_PROCESSING_IMAGE}",
                    "ModelDataUrl": f"{output}/{run.name}/data-processor-models/model.tar.gz",
                    "Environment": {"AUTOML_TRANSFORM_MODE": "feature-transform"},
                },
                {
                    "Image": f"{ecr}/{_IMAGES[plan.algorithm]}",
                    "ModelDataUrl": model_url,
                    "Environment": {"MAX_CONTENT_LENGTH": "20971520"},
                },
            ],
            "CreationTime": run.created_at + timedelta(seconds=plan.start_s),
            "LastModifiedTime": run.created_at + timedelta(seconds=end_s),
        }
        if status != "InProgress":
            candidate["EndTime"] = run.created_at + timedelta(seconds=end_s)
        if status == "Failed":
            candidate["FailureReason"] = "AlgorithmError: training diverged"
        if status == "Completed":
            model = self._train(run, name, plan.algorithm, model_url)
            candidate["FinalAutoMLJobObjectiveMetric"] = {
                "Type": "Minimize" if objective in _MINIMIZED else "Maximize",
                "MetricName": objective,
                "Value": _objective_value(model, objective),
                "StandardMetricName": objective,
            }
        return candidate

    def _best_candidate(self, run: _Run, elapsed_s: float) -> dict[str, Any] | None:
        done = [
            c
            for c in self._candidates(run, elapsed_s)
            if c["CandidateStatus"] == "Completed"
        ]
        if not done:
            return None

        def score(candidate: dict[str, Any]) -> float:
            metric = candidate["FinalAutoMLJobObjectiveMetric"]
            value = float(metric["Value"])
            return value if metric["Type"] == "Maximize" else -value

        return max(done, key=score)

    def _objective(self, name: str) -> str:
        job = self._backend().auto_ml_jobs[name]
        return str((job.auto_ml_job_objective or {}).get("MetricName", "Accuracy"))

    def _train(
        self, run: _Run, candidate: str, algorithm: str, model_url: str
    ) -> TrainedTabularModel:
        if candidate in run.models:
            return run.models[candidate]
        from broker.testing._tabular import read_csv_bytes, train_tabular

        job = self._backend().auto_ml_jobs[run.name]
        config = job.auto_ml_problem_type_config["TabularJobConfig"]
        uri = job.auto_ml_job_input_data_config[0]["DataSource"]["S3DataSource"][
            "S3Uri"
        ]
        frame = read_csv_bytes(self._read_s3(uri))
        target = config["TargetAttributeName"]
        features = [c for c in frame.columns if c != target]
        numeric = [c for c in features if _is_numeric(frame[c])]
        model = train_tabular(
            frame,
            target=target,
            task="regression"
            if config["ProblemType"] == "Regression"
            else "classification",
            numeric=numeric,
            categorical=[c for c in features if c not in numeric],
            algorithm="hist_gradient_boosting" if algorithm == "xgboost" else "linear",
        )
        model.algorithm = algorithm
        run.models[candidate] = model
        self._models_by_url[model_url] = model
        return model

    # --- replies the driver writes ----------------------------------------------------

    def _list_candidates_reply(self, request: Any, params: dict[str, Any]) -> Any:
        name = params["AutoMLJobName"]
        run = self._runs.get(name)
        if run is None or name not in self._backend().auto_ml_jobs:
            body = json.dumps(
                {
                    "__type": "ResourceNotFound",
                    "message": f"Could not find AutoML job with name {name}.",
                }
            )
            return _reply(request.url, 400, body, "application/x-amz-json-1.1")

        candidates = self._candidates(run, self.clock.monotonic() - run.created_s)
        if params.get("StatusEquals"):
            candidates = [
                c for c in candidates if c["CandidateStatus"] == params["StatusEquals"]
            ]
        start = int(params.get("NextToken") or 0)
        size = int(params.get("MaxResults") or 10)
        page = candidates[start : start + size]
        reply: dict[str, Any] = {"Candidates": [_jsonable(c) for c in page]}
        if start + size < len(candidates):
            reply["NextToken"] = str(start + size)
        return _reply(request.url, 200, json.dumps(reply), "application/x-amz-json-1.1")

    def _write_transform_output(self, params: dict[str, Any]) -> None:
        backend = self._backend()
        containers = backend._models[params["ModelName"]].containers or []
        model = next(
            (
                self._models_by_url[c["ModelDataUrl"]]
                for c in containers
                if c.get("ModelDataUrl") in self._models_by_url
            ),
            None,
        )
        if model is None:
            raise RuntimeError(
                f"no trained model behind SageMaker model {params['ModelName']}"
            )

        source = params["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        text = self._read_s3(source).decode("utf-8")
        rows = [
            dict(zip(model.feature_names, r, strict=True))
            for r in csv.reader(io.StringIO(text))
            if r
        ]
        lines = io.StringIO()
        writer = csv.writer(lines, lineterminator="\n")
        for prediction in model.predict_rows(rows):
            if model.task == "classification":
                writer.writerow([json.dumps(model.classes), json.dumps(prediction)])
            else:
                writer.writerow([prediction])
        output = params["TransformOutput"]["S3OutputPath"].rstrip("/")
        self._write_s3(
            f"{output}/{source.rsplit('/', 1)[1]}.out", lines.getvalue().encode()
        )

    def _read_s3(self, uri: str) -> bytes:
        from moto.s3.models import s3_backends

        bucket, key = uri[len("s3://") :].split("/", 1)
        stored = s3_backends[ACCOUNT_ID]["aws"].get_object(bucket, key)
        if stored is None:
            raise RuntimeError(f"no object at {uri} in the fake S3")
        value: bytes = stored.value
        return value

    def _write_s3(self, uri: str, data: bytes) -> None:
        from moto.s3.models import s3_backends

        bucket, key = uri[len("s3://") :].split("/", 1)
        s3_backends[ACCOUNT_ID]["aws"].put_object(bucket, key, data)


def _request_params(service: str, request: Any) -> dict[str, Any]:
    if service == "sagemaker":
        body = request.body
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        parsed: dict[str, Any] = json.loads(body) if body else {}
        return parsed
    parts = urlsplit(request.url)
    path = unquote(parts.path).lstrip("/")
    host = parts.hostname or ""
    if ".s3." in host:  # virtual-hosted style: the bucket is the first label
        bucket, key = host.split(".s3.", 1)[0], path
    else:
        bucket, _, key = path.partition("/")
    return {"Bucket": bucket, "Key": key} if key else {"Bucket": bucket}


def _reply(url: str, status: int, body: str, content_type: str) -> Any:
    from botocore.awsrequest import AWSResponse
    from moto.core.botocore_stubber import MockRawResponse

    headers = {"Content-Type": content_type, "x-amzn-RequestId": "fake-request"}
    return AWSResponse(url, status, headers, MockRawResponse(body))


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    return value


def _is_numeric(column: Any) -> bool:
    import pandas as pd

    present = column[column != ""]
    return bool(len(present)) and bool(
        pd.to_numeric(present, errors="coerce").notna().all()
    )


def _objective_value(model: TrainedTabularModel, objective: str) -> float:
    metrics = model.validation_metrics
    table = {
        "AUC": "roc_auc",
        "Accuracy": "accuracy",
        "RMSE": "rmse",
        "MAE": "mae",
        "R2": "r2",
    }
    if objective == "MSE":
        return round(metrics["rmse"] ** 2, 6)
    # Objectives the small model does not compute are reported as accuracy.
    return round(
        metrics.get(table.get(objective, "accuracy"), metrics.get("accuracy", 0.0)), 6
    )
