"""Vertex AI AutoML tabular as a broker backend.

The adapter drives ``google-cloud-aiplatform``'s v1 REST clients (the layer under
``aiplatform.AutoMLTabularTrainingJob``) so that the broker, not the SDK, owns the polling:

1. stage the training rows as CSV in Cloud Storage (``staging="gs://bucket/prefix"``);
2. create a tabular dataset over that CSV;
3. create an AutoML tabular training pipeline with explicit column transformations, the
   optimisation objective of the spec's metric, and a node-hour budget derived from the
   dollar budget, labelled with the broker's idempotency key;
4. poll the pipeline; map ``PIPELINE_STATE_*`` onto :class:`broker.states.JobState`;
5. read the model's evaluation and ``trainCostMilliNodeHours`` (the billed units);
6. predict held-out rows on a short-lived online endpoint, removed afterwards.

Tests point ``api_endpoint`` at :class:`broker.testing.vertex_fake.VertexFake`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import (
    BudgetWarning,
    ConfigurationError,
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderError,
    ProviderJobFailedError,
    ProviderUnavailableError,
    TransientProviderError,
)
from broker.providers._http_errors import Phase, classify
from broker.providers.base import (
    Availability,
    Placement,
    Provider,
    ProviderJob,
    ProviderJobRef,
    ProviderResult,
    ProviderStatus,
)
from broker.schema import ColumnKind, Schema
from broker.spec import LeaderboardEntry, Task
from broker.states import JobState

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "NODE_HOUR_USD",
    "PIPELINE_STATES",
    "VertexProvider",
    "budget_milli_node_hours",
    "map_google_error",
    "optimization_objective",
]

NODE_HOUR_USD = Decimal("21.252")
"""AutoML tabular training, USD per node hour (us-central1 list price, 2024-2026)."""
# TODO(vertex-price-catalog): read the node-hour price from cost_models per region once the
# catalog carries Vertex training SKUs; the list price differs slightly across regions.

MIN_BUDGET_MILLI_NODE_HOURS = 1000
MAX_BUDGET_MILLI_NODE_HOURS = 72000
TABULAR_TRAINING_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/trainingjob/definition/"
    "automl_tabular_1.0.0.yaml"
)
TABULAR_DATASET_SCHEMA = (
    "gs://google-cloud-aiplatform/schema/dataset/metadata/tabular_1.0.0.yaml"
)
IDEMPOTENCY_LABEL = "broker_idempotency_key"
PREDICT_BATCH_ROWS = 500

PIPELINE_STATES: dict[str, JobState] = {
    "PIPELINE_STATE_UNSPECIFIED": JobState.QUEUED,
    "PIPELINE_STATE_QUEUED": JobState.QUEUED,
    "PIPELINE_STATE_PENDING": JobState.QUEUED,
    "PIPELINE_STATE_RUNNING": JobState.RUNNING,
    "PIPELINE_STATE_PAUSED": JobState.RUNNING,  # halted, not ended; the secondary says so
    "PIPELINE_STATE_CANCELLING": JobState.CANCELLING,
    "PIPELINE_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "PIPELINE_STATE_FAILED": JobState.FAILED,
    "PIPELINE_STATE_CANCELLED": JobState.CANCELLED,
}
"""Vertex pipeline state -> broker state; the Vertex name stays as the secondary."""

_OBJECTIVES: dict[tuple[str, str], str] = {
    ("binary", "roc_auc"): "maximize-au-roc",
    ("binary", "log_loss"): "minimize-log-loss",
    ("binary", "pr_auc"): "maximize-au-prc",
    ("binary", "average_precision"): "maximize-au-prc",
    ("multiclass", "log_loss"): "minimize-log-loss",
    ("regression", "rmse"): "minimize-rmse",
    ("regression", "mae"): "minimize-mae",
    ("regression", "rmsle"): "minimize-rmsle",
}
_DEFAULT_OBJECTIVE = {
    "binary": "maximize-au-roc",
    "multiclass": "minimize-log-loss",
    "regression": "minimize-rmse",
}
_EVALUATION_METRICS = {
    "auRoc": "roc_auc",
    "auPrc": "pr_auc",
    "logLoss": "log_loss",
    "rootMeanSquaredError": "rmse",
    "meanAbsoluteError": "mae",
    "rootMeanSquaredLogError": "rmsle",
    "rSquared": "r2",
    "meanAbsolutePercentageError": "mape",
}

T = TypeVar("T")


def optimization_objective(task: Task, metric: str) -> str:
    """The Vertex ``optimizationObjective`` for the broker's task and metric.

    Metrics Vertex cannot optimise directly fall back to the task's default objective; the
    broker still ranks by the spec's metric on its own held-out split.

    Example:
        >>> optimization_objective(Task.BINARY, "log_loss")
        'minimize-log-loss'
    """
    key = (task.value, metric)
    if key in _OBJECTIVES:
        return _OBJECTIVES[key]
    fallback = _DEFAULT_OBJECTIVE[task.value]
    logger.info(
        "vertex cannot optimise %s for %s; using %s", metric, task.value, fallback
    )
    return fallback


def budget_milli_node_hours(
    max_usd: Decimal | None, runtime_limit_s: float, node_hour_usd: Decimal
) -> int:
    """The training budget in milli node hours, within Vertex's range.

    The runtime limit is read as node time on one node, as the planner prices a Vertex
    job, so the bill stays within the plan's quote; a dollar cap that buys less lowers
    it. Vertex refuses less than 1000 (one node hour); a smaller budget is raised to
    1000 with a :class:`broker.errors.BudgetWarning`, because the service bills at
    least that much.

    Example:
        >>> budget_milli_node_hours(Decimal("50"), 10800, Decimal("21.252"))
        2352
        >>> budget_milli_node_hours(Decimal("100"), 3600, Decimal("21.252"))
        1000
    """
    milli = math.ceil(runtime_limit_s / 3.6)
    if max_usd is not None:
        by_dollars = int(
            (max_usd / node_hour_usd * 1000).to_integral_value(rounding="ROUND_FLOOR")
        )
        milli = min(milli, by_dollars)
    if milli < MIN_BUDGET_MILLI_NODE_HOURS:
        warnings.warn(
            f"Vertex AI trains for at least 1 node hour (${node_hour_usd}); the budget of "
            f"{_budget_words(max_usd, runtime_limit_s)} buys {milli} milli node hours, "
            "so 1000 are requested",
            BudgetWarning,
            stacklevel=3,
        )
        return MIN_BUDGET_MILLI_NODE_HOURS
    return min(milli, MAX_BUDGET_MILLI_NODE_HOURS)


def _budget_words(max_usd: Decimal | None, runtime_limit_s: float) -> str:
    if max_usd is None:
        return f"{runtime_limit_s:g} s"
    return f"${max_usd} and {runtime_limit_s:g} s"


def idempotency_label(key: str) -> str:
    """`key` as a Vertex label value (lower-case letters, digits, ``_`` and ``-``, at
    most 63 characters); keys that do not fit are replaced by a stable hash."""
    if re.fullmatch(r"[a-z0-9_-]{1,63}", key):
        return key
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def map_google_error(
    exc: BaseException,
    *,
    provider: str = "vertex",
    phase: Phase = "create",
    job_id: str | None = None,
) -> ProviderError:
    """Translate an exception from the Google SDK stack into a broker error.

    Handles ``google.api_core.exceptions.GoogleAPICallError`` (by HTTP status, gRPC
    status name and message), ``google.api_core.exceptions.RetryError``,
    ``google.auth.exceptions`` (refused or expired credentials) and
    ``requests`` and socket connection failures. Anything else becomes a plain
    :class:`ProviderError` that neither retries nor fails over.
    """
    if isinstance(exc, ProviderError):
        return exc
    original = f"{type(exc).__module__}.{type(exc).__qualname__}"
    fields: dict[str, Any] = {
        "provider": provider,
        "original_type": original,
        "provider_job_id": job_id,
    }
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, gexc.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else None
        grpc_name = _status_name(exc)
        reason = getattr(exc, "reason", None)
        code_text = " ".join(str(p) for p in (grpc_name, reason) if p)
        cls = classify(status, code_text, exc.message or str(exc), phase=phase)
        if cls is ProviderError and grpc_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            cls = TransientProviderError
        message = f"Vertex AI refused the request ({status} {grpc_name}): {exc.message}"
        return cls(message, code=grpc_name or status, **fields)
    if isinstance(exc, gexc.RetryError):
        return TransientProviderError(f"Vertex AI kept failing: {exc}", **fields)
    if isinstance(exc, auth_exc.RefreshError):
        return CredentialsExpiredError(
            "the Google credentials could not be refreshed; sign in again with "
            "`gcloud auth application-default login`",
            **fields,
        )
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return ProviderUnavailableError(f"no Google credentials: {exc}", **fields)
    if isinstance(
        exc, auth_exc.TransportError | ConnectionError | TimeoutError
    ) or _is_requests_error(exc):
        return TransientProviderError(
            f"the connection to Vertex AI failed: {type(exc).__name__}: {exc}", **fields
        )
    return ProviderError(f"Vertex AI failed unexpectedly: {exc!r}", **fields)


def _status_name(exc: Any) -> str | None:
    """The canonical status name (``RESOURCE_EXHAUSTED``): from the REST reply's
    ``error.status``, else from the exception's gRPC status."""
    response = getattr(exc, "response", None)
    try:
        name = response.json()["error"]["status"]  # type: ignore[union-attr]
        if isinstance(name, str) and name:
            return name
    except Exception:  # no reply, not JSON, or another shape
        pass
    name = getattr(exc.grpc_status_code, "name", None)
    if name is None and isinstance(exc.code, int):
        name = _HTTP_STATUS_NAMES.get(exc.code)
    return name


_HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _is_requests_error(exc: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - requests ships with google-auth
        return False
    return isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout
    )


def pipeline_failure(
    error: dict[str, Any] | None, state: str, *, job_id: str
) -> ProviderError:
    """The broker error for a pipeline that ended FAILED with `error` (a google.rpc.Status)."""
    code = int((error or {}).get("code") or 0)
    message = (error or {}).get(
        "message"
    ) or f"pipeline ended {state} without a message"
    cls = classify(None, None, message, phase="poll")
    if cls in (ProviderError, InvalidRequestError) and code == 3:  # INVALID_ARGUMENT
        cls = InvalidRequestError
    elif cls is ProviderError or cls is TransientProviderError:
        cls = ProviderJobFailedError
    return cls(
        f"Vertex AI pipeline {job_id} failed: {message}",
        provider="vertex",
        code=code,
        provider_job_id=job_id,
        original_type="google.rpc.Status",
    )


class VertexProvider(Provider):
    """Vertex AI AutoML tabular training, polled by the broker.

    Args:
        project: the Google Cloud project id.
        location: the region, e.g. ``us-central1``.
        api_endpoint: the service URL; None uses ``{location}-aiplatform.googleapis.com``.
            A ``http://127.0.0.1:PORT`` value reaches a loopback fake, which also
            answers the Cloud Storage uploads.
        credentials: a ``google.auth`` credentials object; None uses the application
            default credentials at the first call.
        staging: where the training CSV is staged, ``gs://bucket/prefix``.
        clock: the clock used by :meth:`wait`.
        poll_interval_s: seconds between polls in :meth:`wait`.
        node_hour_usd: the training price per node hour.
        serving_machine: machine type of the temporary prediction endpoint.
    """

    name: ClassVar[str] = "vertex"
    kind = "cloud"
    unsupported: ClassVar[dict[str, str]] = {
        "gpu": "Vertex AI AutoML tabular chooses its own machines; a GPU cannot be asked for",
    }

    def __init__(
        self,
        *,
        project: str | None = None,
        location: str = "us-central1",
        api_endpoint: str | None = None,
        credentials: Any = None,
        staging: str | None = None,
        clock: Clock | None = None,
        poll_interval_s: float = 60.0,
        node_hour_usd: Decimal = NODE_HOUR_USD,
        serving_machine: str = "n1-standard-2",
    ) -> None:
        if staging is not None and not re.fullmatch(
            r"gs://[a-z0-9._-]+(/.*)?", staging
        ):
            raise ConfigurationError(
                f"vertex staging must be a Cloud Storage prefix like 'gs://bucket/path', "
                f"got {staging!r}"
            )
        if poll_interval_s <= 0:
            raise ConfigurationError(
                f"poll_interval_s must be > 0, got {poll_interval_s}"
            )
        self.project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.location = location
        self.api_endpoint = api_endpoint
        self.credentials = credentials
        self.staging = staging.rstrip("/") if staging else None
        self.clock = clock or SYSTEM_CLOCK
        self.poll_interval_s = poll_interval_s
        self.node_hour_usd = Decimal(node_hour_usd)
        self.serving_machine = serving_machine
        self._clients: dict[str, Any] = {}

    # --- availability ------------------------------------------------------------------

    def availability(self) -> Availability:
        import importlib.util

        if importlib.util.find_spec("google.cloud.aiplatform_v1") is None:
            return Availability(
                False,
                "google-cloud-aiplatform is not installed: pip install "
                "'automl-broker[vertex]'",
            )
        if not self.project or not self.staging:
            return Availability(
                False,
                "set the Vertex project and staging ('gs://bucket/prefix') options",
            )
        if self.credentials is not None:
            return Availability(True, "credentials passed in", "argument")
        return _discover_credentials()

    def placement(self) -> Placement | None:
        return Placement(regions=frozenset({self.location}))

    # --- the job -----------------------------------------------------------------------

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        existing = self.find_by_idempotency_key(job.idempotency_key)
        if existing is not None:
            logger.info(
                "vertex: attaching to %s for key %s",
                existing.job_id,
                job.idempotency_key,
            )
            return existing
        if not self.staging:
            raise ConfigurationError(
                "vertex needs a staging location: pass staging='gs://bucket/prefix'"
            )
        inputs = self.training_task_inputs(job)
        uri = self._call(lambda: self._stage(job), "create")
        dataset = self._call(lambda: self._create_dataset(job, uri), "create")
        try:
            pipeline = self._create_pipeline(job, dataset, inputs)
        except Exception as exc:
            error = map_google_error(exc, phase="create")
            if not error.retryable:
                raise error from exc
            # The reply may be lost after the service created the pipeline.
            found = self.find_by_idempotency_key(job.idempotency_key)
            if found is None:
                raise error from exc
            logger.warning("vertex: create reply lost; attached to %s", found.job_id)
            return found
        logger.info(
            "vertex: created %s (%s, budget %s milli node hours)",
            pipeline["name"],
            inputs["optimizationObjective"],
            inputs["trainBudgetMilliNodeHours"],
        )
        return self._ref(pipeline)

    def training_task_inputs(self, job: ProviderJob) -> dict[str, Any]:
        """The ``trainingTaskInputs`` of the AutoML tabular pipeline for `job`."""
        schema = job.schema
        metric = job.spec.metric_for(schema.task)
        budget = budget_milli_node_hours(
            job.max_usd, job.runtime_limit_s, self.node_hour_usd
        )
        return {
            "predictionType": "regression"
            if schema.task == Task.REGRESSION
            else "classification",
            "targetColumn": schema.target_safe_name,
            "transformations": column_transformations(schema),
            "trainBudgetMilliNodeHours": budget,
            "optimizationObjective": optimization_objective(schema.task, metric),
            "disableEarlyStopping": False,
        }

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        pipeline = self._call(
            lambda: self._get_pipeline(ref.job_id), "poll", ref.job_id
        )
        state_name = pipeline.get("state", "PIPELINE_STATE_UNSPECIFIED")
        state = PIPELINE_STATES.get(state_name, JobState.QUEUED)
        error = None
        message = None
        if state == JobState.FAILED:
            error = pipeline_failure(
                pipeline.get("error"), state_name, job_id=ref.job_id
            )
            message = str(error)
        return ProviderStatus(
            state=state,
            secondary=state_name,
            message=message,
            started_at=_parse_time(pipeline.get("startTime")),
            ended_at=_parse_time(pipeline.get("endTime")),
            error=error,
        )

    def wait(
        self, ref: ProviderJobRef, *, timeout_s: float | None = None
    ) -> ProviderStatus:
        """Poll every `poll_interval_s` on the provider's clock until a terminal state."""
        started = self.clock.monotonic()
        while True:
            status = self.poll(ref)
            if status.state.terminal:
                return status
            if timeout_s is not None and self.clock.monotonic() - started >= timeout_s:
                return status
            self.clock.sleep(self.poll_interval_s)

    def cancel(self, ref: ProviderJobRef) -> None:
        status = self.poll(ref)
        if status.state.terminal or status.state == JobState.CANCELLING:
            logger.info(
                "vertex: %s is already %s; no cancel sent", ref.job_id, status.secondary
            )
            return
        client = self._client("pipeline")
        try:
            client.cancel_training_pipeline(name=ref.job_id)
        except Exception as exc:
            from google.api_core import exceptions as gexc

            if isinstance(exc, gexc.FailedPrecondition):  # it ended meanwhile
                return
            raise map_google_error(exc, phase="poll", job_id=ref.job_id) from exc
        logger.info("vertex: cancel sent for %s", ref.job_id)

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        pipeline = self._call(
            lambda: self._get_pipeline(ref.job_id), "poll", ref.job_id
        )
        state = pipeline.get("state")
        milli = int(
            (pipeline.get("trainingTaskMetadata") or {}).get("trainCostMilliNodeHours")
            or 0
        )
        cost = Decimal(milli) / 1000 * self.node_hour_usd
        units = {
            "train_cost_milli_node_hours": milli,
            "node_hour_usd": str(self.node_hour_usd),
            "billing_unit": "node_hour",
        }
        runtime_s = _duration_s(pipeline.get("startTime"), pipeline.get("endTime"))
        if state != "PIPELINE_STATE_SUCCEEDED":
            raise ProviderJobFailedError(
                f"Vertex AI pipeline {ref.job_id} is {state}, not succeeded; no model to read",
                provider="vertex",
                provider_job_id=ref.job_id,
                code=state,
            )
        model_name = (pipeline.get("modelToUpload") or {}).get("name")
        metrics = self._call(lambda: self._evaluation(model_name), "poll", ref.job_id)
        inputs = pipeline.get("trainingTaskInputs") or {}
        entry = LeaderboardEntry(
            model_id=str(model_name),
            provider="vertex",
            algorithm="vertex_automl_tabular",
            validation_metrics=metrics,
            training_time_s=runtime_s,
            params={
                "optimization_objective": inputs.get("optimizationObjective"),
                "train_budget_milli_node_hours": int(
                    inputs.get("trainBudgetMilliNodeHours") or 0
                ),
            },
        )
        model_dir = job.run_dir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.json").write_text(
            json.dumps(
                {"format": "vertex-model", "model": model_name, "pipeline": ref.job_id},
                indent=2,
            )
        )
        # TODO(vertex-export): export the model (tf-saved-model to Cloud Storage) so it can be
        # loaded without the service; today model.json only names the Vertex model.
        return ProviderResult(
            leaderboard=[entry],
            best_model_id=model_name,
            model_path=model_dir,
            model_format="vertex-model",
            provider_units=units,
            actual_cost_usd=cost,
            runtime_s=runtime_s,
            notes=[
                "Vertex AI AutoML returns one ensembled model; the leaderboard has one row"
            ],
        )

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        import numpy as np

        pipeline = self._call(
            lambda: self._get_pipeline(ref.job_id), "poll", ref.job_id
        )
        model_name = (pipeline.get("modelToUpload") or {}).get("name")
        if not model_name:
            raise ProviderJobFailedError(
                f"Vertex AI pipeline {ref.job_id} has no model to predict with",
                provider="vertex",
                provider_job_id=ref.job_id,
            )
        rows: list[Any] = []
        with self._deployed(model_name, job) as endpoint:
            for instances in _instances(frame, job.schema):
                rows.extend(
                    self._call(
                        functools.partial(self._predict, endpoint, instances),
                        "poll",
                        ref.job_id,
                    )
                )
        if job.schema.task == Task.REGRESSION:
            return np.asarray([float(r["value"]) for r in rows])
        classes = [str(c) for c in job.schema.classes]
        out = np.zeros((len(rows), len(classes)))
        for i, row in enumerate(rows):
            scores = dict(zip(map(str, row["classes"]), row["scores"], strict=True))
            out[i] = [float(scores.get(c, 0.0)) for c in classes]
        return out

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        label = idempotency_label(key)
        client = self._client("pipeline")
        found = self._call(
            lambda: list(
                client.list_training_pipelines(
                    request={
                        "parent": self._parent,
                        "filter": f'labels.{IDEMPOTENCY_LABEL}="{label}"',
                    }
                )
            ),
            "create",
        )
        if not found:
            return None
        newest = max(found, key=lambda p: p.create_time)
        return self._ref(_as_dict(newest))

    def close(self) -> None:
        self._clients.clear()

    # --- SDK calls ---------------------------------------------------------------------

    @property
    def _parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def _endpoint_host(self) -> str:
        return self.api_endpoint or f"{self.location}-aiplatform.googleapis.com"

    def _client(self, kind: str) -> Any:
        if kind in self._clients:
            return self._clients[kind]
        from google.api_core.client_options import ClientOptions
        from google.cloud import aiplatform_v1

        classes = {
            "dataset": aiplatform_v1.DatasetServiceClient,
            "pipeline": aiplatform_v1.PipelineServiceClient,
            "model": aiplatform_v1.ModelServiceClient,
            "endpoint": aiplatform_v1.EndpointServiceClient,
            "prediction": aiplatform_v1.PredictionServiceClient,
        }
        if kind == "storage":
            from google.cloud import storage  # type: ignore[attr-defined]

            options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
            client: Any = storage.Client(
                project=self.project,
                credentials=self.credentials,
                client_options=options,
            )
        else:
            client = classes[kind](
                credentials=self.credentials,
                transport="rest",
                client_options=ClientOptions(api_endpoint=self._endpoint_host()),
            )
        self._clients[kind] = client
        return client

    def _call(self, fn: Callable[[], T], phase: Phase, job_id: str | None = None) -> T:
        try:
            return fn()
        except ProviderError:
            raise
        except Exception as exc:
            raise map_google_error(exc, phase=phase, job_id=job_id) from exc

    def _stage(self, job: ProviderJob) -> str:
        assert self.staging is not None, "checked in submit"
        bucket_name, _, prefix = self.staging.removeprefix("gs://").partition("/")
        object_name = "/".join(p for p in (prefix, job.job_id, "train.csv") if p)
        columns = [*job.schema.safe_feature_names, job.schema.target_safe_name]
        data = job.train[columns].to_csv(index=False).encode()
        bucket = self._client("storage").bucket(bucket_name)
        bucket.blob(object_name).upload_from_string(data, content_type="text/csv")
        logger.info(
            "vertex: staged %d rows at gs://%s/%s",
            len(job.train),
            bucket_name,
            object_name,
        )
        return f"gs://{bucket_name}/{object_name}"

    def _create_dataset(self, job: ProviderJob, uri: str) -> str:
        from google.protobuf import json_format, struct_pb2

        metadata = json_format.ParseDict(
            {"inputConfig": {"gcsSource": {"uri": [uri]}}}, struct_pb2.Value()
        )
        operation = self._client("dataset").create_dataset(
            parent=self._parent,
            dataset={
                "display_name": f"broker-{job.job_id}"[:128],
                "metadata_schema_uri": TABULAR_DATASET_SCHEMA,
                "metadata": metadata,
                "labels": {IDEMPOTENCY_LABEL: idempotency_label(job.idempotency_key)},
            },
        )
        dataset = operation.result(timeout=600)
        return str(dataset.name)

    def _create_pipeline(
        self, job: ProviderJob, dataset: str, inputs: dict[str, Any]
    ) -> dict[str, Any]:
        from google.protobuf import json_format, struct_pb2

        label = idempotency_label(job.idempotency_key)
        display = f"broker-{job.job_id}"[:128]
        pipeline = self._client("pipeline").create_training_pipeline(
            parent=self._parent,
            training_pipeline={
                "display_name": display,
                "labels": {
                    IDEMPOTENCY_LABEL: label,
                    "broker_job_id": idempotency_label(job.job_id),
                },
                "input_data_config": {"dataset_id": dataset.rsplit("/", 1)[-1]},
                "training_task_definition": TABULAR_TRAINING_SCHEMA,
                "training_task_inputs": json_format.ParseDict(
                    inputs, struct_pb2.Value()
                ),
                "model_to_upload": {"display_name": display},
            },
        )
        return _as_dict(pipeline)

    def _get_pipeline(self, name: str) -> dict[str, Any]:
        return _as_dict(self._client("pipeline").get_training_pipeline(name=name))

    def _evaluation(self, model_name: str | None) -> dict[str, float | None]:
        if not model_name:
            return {}
        evaluations = list(
            self._client("model").list_model_evaluations(parent=model_name)
        )
        if not evaluations:
            return {}
        metrics = _as_dict(evaluations[0]).get("metrics") or {}
        return {
            ours: float(metrics[theirs])
            for theirs, ours in _EVALUATION_METRICS.items()
            if isinstance(metrics.get(theirs), int | float)
        }

    @contextlib.contextmanager
    def _deployed(self, model_name: str, job: ProviderJob) -> Iterator[str]:
        endpoints = self._client("endpoint")
        endpoint = self._call(
            lambda: endpoints.create_endpoint(
                parent=self._parent,
                endpoint={"display_name": f"broker-{job.job_id}"[:128]},
            ).result(timeout=1800),
            "poll",
        )
        deployed_id = None
        try:
            deployed = self._call(
                lambda: endpoints.deploy_model(
                    endpoint=endpoint.name,
                    deployed_model={
                        "model": model_name,
                        "display_name": "broker",
                        "dedicated_resources": {
                            "machine_spec": {"machine_type": self.serving_machine},
                            "min_replica_count": 1,
                            "max_replica_count": 1,
                        },
                    },
                    traffic_split={"0": 100},
                ).result(timeout=3600),
                "poll",
            )
            deployed_id = deployed.deployed_model.id
            yield str(endpoint.name)
        finally:
            self._remove_endpoint(str(endpoint.name), deployed_id)

    def _remove_endpoint(self, endpoint: str, deployed_id: str | None) -> None:
        endpoints = self._client("endpoint")
        try:
            if deployed_id:
                endpoints.undeploy_model(
                    endpoint=endpoint, deployed_model_id=deployed_id
                ).result(timeout=1800)
            endpoints.delete_endpoint(name=endpoint).result(timeout=600)
        except (
            Exception
        ):  # the predictions are in hand; leaving a billed endpoint is worse
            logger.warning(
                "vertex: could not remove endpoint %s; delete it by hand to stop its "
                "charges",
                endpoint,
                exc_info=True,
            )

    def _predict(self, endpoint: str, instances: list[dict[str, Any]]) -> list[Any]:
        response = self._client("prediction").predict(
            endpoint=endpoint, instances=instances
        )
        return [_plain(p) for p in response.predictions]

    def _ref(self, pipeline: dict[str, Any]) -> ProviderJobRef:
        labels = pipeline.get("labels") or {}
        return ProviderJobRef(
            provider="vertex",
            job_id=pipeline["name"],
            idempotency_key=labels.get(IDEMPOTENCY_LABEL, ""),
            region=self.location,
            extra={
                "display_name": pipeline.get("displayName"),
                "dataset_id": (pipeline.get("inputDataConfig") or {}).get("datasetId"),
            },
        )


# --- conversions ------------------------------------------------------------------------


def column_transformations(schema: Schema) -> list[dict[str, Any]]:
    """One Vertex transformation per feature, typed from the broker's schema."""
    kinds = {
        ColumnKind.NUMERIC: "numeric",
        ColumnKind.TEXT: "text",
        ColumnKind.DATETIME: "timestamp",
    }
    return [
        {kinds.get(column.kind, "categorical"): {"columnName": column.safe_name}}
        for column in schema.features
    ]


def _instances(frame: pd.DataFrame, schema: Schema) -> Iterator[list[dict[str, Any]]]:
    import pandas as pd

    numeric = {c.safe_name for c in schema.features if c.kind == ColumnKind.NUMERIC}
    names = schema.safe_feature_names
    records = []
    for row in frame[names].itertuples(index=False, name=None):
        record: dict[str, Any] = {}
        for name, value in zip(names, row, strict=True):
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                record[name] = ""
            elif name in numeric:
                record[name] = float(value)
            else:
                record[name] = str(value)
        records.append(record)
    for start in range(0, len(records), PREDICT_BATCH_ROWS):
        yield records[start : start + PREDICT_BATCH_ROWS]


def _as_dict(message: Any) -> dict[str, Any]:
    """A proto-plus message as the REST JSON (camelCase keys)."""
    cls = type(message)
    return dict(json.loads(cls.to_json(message, use_integers_for_enums=False)))


def _plain(value: Any) -> Any:
    """Proto map/list composites (from ``google.protobuf.Value`` fields) as plain Python."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, str | bytes):
        return value
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return value


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _duration_s(start: str | None, end: str | None) -> float | None:
    begun, ended = _parse_time(start), _parse_time(end)
    if begun is None or ended is None:
        return None
    return (ended - begun).total_seconds()


def _discover_credentials() -> Availability:
    """Where Google credentials would come from, read from the environment and files only."""
    from broker.credentials import discover

    return discover("vertex")
