"""A loopback fake of the Vertex AI REST API (v1) and the Cloud Storage upload API.

The real ``google-cloud-aiplatform`` and ``google-cloud-storage`` clients talk to it when
given ``api_endpoint="http://127.0.0.1:PORT"``, the REST transport and anonymous
credentials (see :meth:`VertexFake.client_settings`). It serves what an AutoML tabular job
needs: object upload, tabular datasets, training pipelines (with labels, list filters and
cancel), models with evaluations, and online endpoints (create, deploy, predict, undeploy,
delete). Long-running operations answer ``done: true`` at once.

A pipeline moves through its states as the fake's clock advances (``schedule``), and when
it succeeds the fake trains a small scikit-learn model on the staged CSV, so predictions
on held-out rows are real. Faults with the service's own spellings are built by the
functions at the bottom of this module and queued with :meth:`FakeServer.inject`; a
pipeline that fails while running is scripted with :meth:`VertexFake.fail_next_pipeline`.

Example:
    >>> from broker.testing.vertex_fake import VertexFake
    >>> with VertexFake() as fake:
    ...     fake.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.clock import Clock
from broker.testing._fake_server import FakeRequest, FakeResponse, FakeServer, Fault
from broker.testing._tabular import TrainedTabularModel, read_csv_bytes, train_tabular

__all__ = [
    "DEFAULT_SCHEDULE",
    "PipelineFailure",
    "VertexFake",
    "capacity_failure",
    "fake_credentials",
    "insufficient_resources_failure",
    "invalid_argument",
    "quota_exceeded",
    "quota_failure",
    "rate_limited",
    "server_error",
    "unauthenticated",
]

DEFAULT_SCHEDULE: tuple[tuple[str, float], ...] = (
    ("PIPELINE_STATE_QUEUED", 60.0),
    ("PIPELINE_STATE_PENDING", 60.0),
    ("PIPELINE_STATE_RUNNING", 1800.0),
)
"""State and its duration in clock seconds; after the last one the pipeline succeeds."""

_LOC = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_TERMINAL = {
    "PIPELINE_STATE_SUCCEEDED",
    "PIPELINE_STATE_FAILED",
    "PIPELINE_STATE_CANCELLED",
}


@dataclass(frozen=True)
class PipelineFailure:
    """How a scripted pipeline fails: a google.rpc.Status and when (seconds after create)."""

    code: int
    message: str
    after_s: float | None = None  # None: when the pipeline would start running


@dataclass
class _Pipeline:
    name: str
    body: dict[str, Any]
    created_s: float
    schedule: tuple[tuple[str, float], ...]
    failure: PipelineFailure | None = None
    cancel_s: float | None = None
    model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VertexFake(FakeServer):
    """A fake Vertex AI (and Cloud Storage upload) service on 127.0.0.1.

    Args:
        clock: the clock that drives pipeline states; a FakeClock by default.
        schedule: (state, seconds) pairs a pipeline goes through before it succeeds.
        cancel_s: seconds a cancelled pipeline stays CANCELLING.
        training_nodes: nodes the fake bills while RUNNING, for trainCostMilliNodeHours.
        algorithm: the scikit-learn model family trained ("hist_gradient_boosting" or
            "linear").
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        schedule: tuple[tuple[str, float], ...] = DEFAULT_SCHEDULE,
        cancel_s: float = 30.0,
        training_nodes: int = 4,
        algorithm: str = "hist_gradient_boosting",
        port: int = 0,
    ) -> None:
        super().__init__(clock=clock, port=port)
        self.schedule = schedule
        self.cancel_s = cancel_s
        self.training_nodes = training_nodes
        self.algorithm = algorithm
        self.objects: dict[tuple[str, str], bytes] = {}  # (bucket, name) -> bytes
        self.datasets: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, _Pipeline] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.trained: dict[str, TrainedTabularModel] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self._next_failure: PipelineFailure | None = None
        self._ids = itertools.count(1001)
        self._state_lock = threading.RLock()
        self._register_routes()

    # --- controls ----------------------------------------------------------------------

    def client_settings(self, *, refresh_fails: bool = False) -> dict[str, Any]:
        """Keyword settings for :class:`broker.providers.vertex.VertexProvider`.

        Args:
            refresh_fails: hand out credentials whose refresh fails, as expired
                credentials do when the service answers 401.
        """
        return {
            "project": "fake-project",
            "location": "us-central1",
            "api_endpoint": self.url,
            "credentials": fake_credentials(refresh_fails=refresh_fails),
            "staging": "gs://fake-bucket/broker",
            "clock": self.clock,
        }

    def fail_next_pipeline(self, failure: PipelineFailure) -> None:
        """The next pipeline created fails with `failure` instead of succeeding."""
        self._next_failure = failure

    def pipeline_state(self, name: str) -> str:
        with self._state_lock:
            return self._advance(self.pipelines[name])["state"]

    # --- routes ------------------------------------------------------------------------

    def _register_routes(self) -> None:
        r = self.add_route
        r("POST", r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", self._upload)
        r("GET", r"/storage/v1/b/(?P<bucket>[^/]+)", self._bucket)
        r("GET", r"/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<obj>.+)", self._download)
        r("POST", _LOC + r"/datasets", self._create_dataset)
        r("GET", _LOC + r"/datasets/(?P<id>[^/:]+)", self._get_dataset)
        r("POST", _LOC + r"/trainingPipelines", self._create_pipeline)
        r("GET", _LOC + r"/trainingPipelines", self._list_pipelines)
        r("GET", _LOC + r"/trainingPipelines/(?P<id>[^/:]+)", self._get_pipeline)
        r("POST", _LOC + r"/trainingPipelines/(?P<id>[^/:]+):cancel", self._cancel)
        r("GET", _LOC + r"/models/(?P<id>[^/:]+)", self._get_model)
        r("GET", _LOC + r"/models/(?P<id>[^/:]+)/evaluations", self._evaluations)
        r("POST", _LOC + r"/endpoints", self._create_endpoint)
        r("POST", _LOC + r"/endpoints/(?P<id>[^/:]+):deployModel", self._deploy)
        r("POST", _LOC + r"/endpoints/(?P<id>[^/:]+):undeployModel", self._undeploy)
        r("POST", _LOC + r"/endpoints/(?P<id>[^/:]+):predict", self._predict)
        r("DELETE", _LOC + r"/endpoints/(?P<id>[^/:]+)", self._delete_endpoint)

    def not_found(self, request: FakeRequest) -> FakeResponse:
        return _status(
            404, "NOT_FOUND", f"No route for {request.method} {request.path}."
        )

    def _new_id(self) -> str:
        return str(next(self._ids))

    @staticmethod
    def _parent(match: re.Match[str]) -> str:
        return f"projects/{match['project']}/locations/{match['location']}"

    def _operation(
        self, parent: str, kind: str, response: dict[str, Any]
    ) -> FakeResponse:
        return FakeResponse.json(
            {
                "name": f"{parent}/operations/{self._new_id()}",
                "done": True,
                "response": {
                    "@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{kind}",
                    **response,
                },
            }
        )

    # storage

    def _upload(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        metadata, data = _parse_multipart(request)
        name = metadata.get("name") or request.param("name") or ""
        self.objects[(match["bucket"], name)] = data
        return FakeResponse.json(
            {
                "kind": "storage#object",
                "bucket": match["bucket"],
                "name": name,
                "size": str(len(data)),
                "generation": self._new_id(),
                "contentType": metadata.get("contentType", "application/octet-stream"),
            }
        )

    def _bucket(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        return FakeResponse.json({"kind": "storage#bucket", "name": match["bucket"]})

    def _download(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        key = (match["bucket"], match["obj"])
        if key not in self.objects:
            return _status(404, "NOT_FOUND", f"No such object: {key[0]}/{key[1]}")
        return FakeResponse(200, self.objects[key], {"Content-Type": "text/csv"})

    # datasets

    def _create_dataset(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        parent = self._parent(match)
        body = request.json() or {}
        if not body.get("displayName"):
            return _status(400, "INVALID_ARGUMENT", "Dataset display name is required.")
        dataset_name = f"{parent}/datasets/{self._new_id()}"
        dataset = {**body, "name": dataset_name, "createTime": _time(self.clock.now())}
        self.datasets[dataset_name] = dataset
        return self._operation(parent, "Dataset", dataset)

    def _get_dataset(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = f"{self._parent(match)}/datasets/{match['id']}"
        if name not in self.datasets:
            return _status(404, "NOT_FOUND", f"Dataset {name} not found.")
        return FakeResponse.json(self.datasets[name])

    # training pipelines

    def _create_pipeline(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        parent = self._parent(match)
        body = request.json() or {}
        problem = self._check_pipeline(parent, body)
        if problem:
            return _status(400, "INVALID_ARGUMENT", problem)
        name = f"{parent}/trainingPipelines/{self._new_id()}"
        now = self.clock.now()
        record = {
            **body,
            "name": name,
            "state": self.schedule[0][0]
            if self.schedule
            else "PIPELINE_STATE_SUCCEEDED",
            "createTime": _time(now),
            "updateTime": _time(now),
        }
        with self._state_lock:
            pipeline = _Pipeline(
                name, record, self.clock.monotonic(), self.schedule, self._next_failure
            )
            self._next_failure = None
            self.pipelines[name] = pipeline
            return FakeResponse.json(self._advance(pipeline))

    def _check_pipeline(self, parent: str, body: dict[str, Any]) -> str | None:
        inputs = body.get("trainingTaskInputs") or {}
        dataset_id = (body.get("inputDataConfig") or {}).get("datasetId")
        if f"{parent}/datasets/{dataset_id}" not in self.datasets:
            return f"Dataset {dataset_id!r} does not exist in {parent}."
        if inputs.get("predictionType") not in ("classification", "regression"):
            return f"Unsupported prediction type {inputs.get('predictionType')!r}."
        if int(inputs.get("trainBudgetMilliNodeHours", 0)) < 1000:
            return "trainBudgetMilliNodeHours must be at least 1000 (1 node hour)."
        if not inputs.get("targetColumn"):
            return "targetColumn is required."
        return None

    def _list_pipelines(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        wanted = dict(
            re.findall(r'labels\.(\w+)\s*=\s*"([^"]*)"', request.param("filter") or "")
        )
        parent = self._parent(match)
        with self._state_lock:
            found = [
                self._advance(p)
                for p in self.pipelines.values()
                if p.name.startswith(parent + "/")
                and all(p.body.get("labels", {}).get(k) == v for k, v in wanted.items())
            ]
        return FakeResponse.json({"trainingPipelines": found} if found else {})

    def _get_pipeline(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = f"{self._parent(match)}/trainingPipelines/{match['id']}"
        with self._state_lock:
            if name not in self.pipelines:
                return _status(404, "NOT_FOUND", f"TrainingPipeline {name} not found.")
            return FakeResponse.json(self._advance(self.pipelines[name]))

    def _cancel(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = f"{self._parent(match)}/trainingPipelines/{match['id']}"
        with self._state_lock:
            if name not in self.pipelines:
                return _status(404, "NOT_FOUND", f"TrainingPipeline {name} not found.")
            pipeline = self.pipelines[name]
            state = self._advance(pipeline)["state"]
            if state in _TERMINAL:
                return _status(
                    400,
                    "FAILED_PRECONDITION",
                    f"Cannot cancel TrainingPipeline {name} in state {state}.",
                )
            if pipeline.cancel_s is None:
                pipeline.cancel_s = self.clock.monotonic()
            return FakeResponse.json({})

    def _advance(self, pipeline: _Pipeline) -> dict[str, Any]:
        """Bring the pipeline's record up to the clock and return it."""
        body = pipeline.body
        if body["state"] in _TERMINAL:
            return body
        now_s = self.clock.monotonic()
        elapsed = now_s - pipeline.created_s
        state, run_start_s, total_s = self._scheduled_state(pipeline, elapsed)
        failure = pipeline.failure
        fail_at = None
        if failure is not None:
            fail_at = run_start_s if failure.after_s is None else failure.after_s
        if pipeline.cancel_s is not None:
            cancelled_at = pipeline.cancel_s - pipeline.created_s
            if elapsed >= cancelled_at + self.cancel_s:
                self._finish(
                    pipeline, "PIPELINE_STATE_CANCELLED", cancelled_at, run_start_s
                )
                body["error"] = {"code": 1, "message": "CANCELED"}
            else:
                body["state"] = "PIPELINE_STATE_CANCELLING"
        elif fail_at is not None and failure is not None and elapsed >= fail_at:
            self._finish(pipeline, "PIPELINE_STATE_FAILED", fail_at, run_start_s)
            body["error"] = {"code": failure.code, "message": failure.message}
        elif elapsed >= total_s:
            self._finish(pipeline, "PIPELINE_STATE_SUCCEEDED", total_s, run_start_s)
        else:
            body["state"] = state
            if state == "PIPELINE_STATE_RUNNING" and "startTime" not in body:
                body["startTime"] = _time(self._at(pipeline, run_start_s))
        return body

    def _scheduled_state(
        self, pipeline: _Pipeline, elapsed: float
    ) -> tuple[str, float, float]:
        state, edge, run_start_s = pipeline.schedule[0][0], 0.0, 0.0
        for name, duration in pipeline.schedule:
            if name == "PIPELINE_STATE_RUNNING":
                run_start_s = edge
            if elapsed >= edge:
                state = name
            edge += duration
        return state, run_start_s, edge

    def _at(self, pipeline: _Pipeline, offset_s: float) -> datetime:
        from datetime import timedelta

        now = self.clock.now()
        return now - timedelta(
            seconds=self.clock.monotonic() - pipeline.created_s - offset_s
        )

    def _finish(
        self, pipeline: _Pipeline, state: str, end_s: float, run_start_s: float
    ) -> None:
        body = pipeline.body
        body["state"] = state
        body["endTime"] = _time(self._at(pipeline, end_s))
        body["updateTime"] = body["endTime"]
        run_s = max(0.0, end_s - run_start_s)
        budget = int(body["trainingTaskInputs"].get("trainBudgetMilliNodeHours", 1000))
        used = min(budget, math.ceil(run_s * self.training_nodes / 3.6))
        body["trainingTaskMetadata"] = {"trainCostMilliNodeHours": str(used)}
        if run_s > 0:
            body.setdefault("startTime", _time(self._at(pipeline, run_start_s)))
        if state == "PIPELINE_STATE_SUCCEEDED":
            self._train(pipeline)

    def _train(self, pipeline: _Pipeline) -> None:
        body = pipeline.body
        inputs = body["trainingTaskInputs"]
        dataset = self.datasets[
            pipeline.name.rsplit("/trainingPipelines/", 1)[0]
            + "/datasets/"
            + body["inputDataConfig"]["datasetId"]
        ]
        uri = dataset["metadata"]["inputConfig"]["gcsSource"]["uri"][0]
        bucket, _, obj = uri.removeprefix("gs://").partition("/")
        frame = read_csv_bytes(self.objects[(bucket, obj)])
        numeric: list[str] = []
        categorical: list[str] = []
        for spec in inputs.get("transformations", []):
            kind, column = next(iter(spec.items()))
            (numeric if kind == "numeric" else categorical).append(column["columnName"])
        model = train_tabular(
            frame,
            target=inputs["targetColumn"],
            task=inputs["predictionType"],
            numeric=numeric,
            categorical=categorical,
            algorithm=self.algorithm,
        )
        parent = pipeline.name.rsplit("/trainingPipelines/", 1)[0]
        model_name = f"{parent}/models/{self._new_id()}"
        display = (body.get("modelToUpload") or {}).get("displayName") or body[
            "displayName"
        ]
        self.models[model_name] = {
            "name": model_name,
            "displayName": display,
            "trainingPipeline": pipeline.name,
            "labels": body.get("labels", {}),
            "createTime": body["endTime"],
            "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
        }
        self.trained[model_name] = model
        pipeline.model_name = model_name
        body["modelToUpload"] = {
            **(body.get("modelToUpload") or {}),
            **self.models[model_name],
        }

    # models

    def _get_model(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = f"{self._parent(match)}/models/{match['id']}"
        if name not in self.models:
            return _status(404, "NOT_FOUND", f"Model {name} not found.")
        return FakeResponse.json(self.models[name])

    def _evaluations(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = f"{self._parent(match)}/models/{match['id']}"
        if name not in self.trained:
            return _status(404, "NOT_FOUND", f"Model {name} not found.")
        model = self.trained[name]
        values = model.validation_metrics
        if model.task == "classification":
            schema = "classification_metrics_1.0.0.yaml"
            metrics = {
                "auRoc": values["roc_auc"],
                "logLoss": values["log_loss"],
                "confidenceMetrics": [{"confidenceThreshold": 0.5, "recall": 0.0}],
            }
        else:
            schema = "regression_metrics_1.0.0.yaml"
            metrics = {
                "rootMeanSquaredError": values["rmse"],
                "meanAbsoluteError": values["mae"],
                "rSquared": values["r2"],
            }
        evaluation = {
            "name": f"{name}/evaluations/{self._new_id()}",
            "metricsSchemaUri": "gs://google-cloud-aiplatform/schema/modelevaluation/"
            + schema,
            "metrics": metrics,
            "createTime": self.models[name]["createTime"],
        }
        return FakeResponse.json({"modelEvaluations": [evaluation]})

    # endpoints

    def _create_endpoint(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        parent = self._parent(match)
        name = f"{parent}/endpoints/{self._new_id()}"
        endpoint = {**(request.json() or {}), "name": name, "deployedModels": []}
        self.endpoints[name] = endpoint
        return self._operation(parent, "Endpoint", endpoint)

    def _deploy(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        parent = self._parent(match)
        name = f"{parent}/endpoints/{match['id']}"
        deployed = (request.json() or {}).get("deployedModel") or {}
        if name not in self.endpoints:
            return _status(404, "NOT_FOUND", f"Endpoint {name} not found.")
        if deployed.get("model") not in self.trained:
            return _status(
                400, "INVALID_ARGUMENT", f"Model {deployed.get('model')} unknown."
            )
        deployed = {**deployed, "id": self._new_id()}
        self.endpoints[name]["deployedModels"].append(deployed)
        return self._operation(
            parent, "DeployModelResponse", {"deployedModel": deployed}
        )

    def _undeploy(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        parent = self._parent(match)
        name = f"{parent}/endpoints/{match['id']}"
        wanted = (request.json() or {}).get("deployedModelId")
        if name in self.endpoints:
            models = self.endpoints[name]["deployedModels"]
            self.endpoints[name]["deployedModels"] = [
                m for m in models if m["id"] != wanted
            ]
        return self._operation(parent, "UndeployModelResponse", {})

    def _delete_endpoint(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        parent = self._parent(match)
        self.endpoints.pop(f"{parent}/endpoints/{match['id']}", None)
        return FakeResponse.json(
            {
                "name": f"{parent}/operations/{self._new_id()}",
                "done": True,
                "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
            }
        )

    def _predict(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = f"{self._parent(match)}/endpoints/{match['id']}"
        endpoint = self.endpoints.get(name)
        if not endpoint or not endpoint["deployedModels"]:
            return _status(400, "FAILED_PRECONDITION", f"Endpoint {name} has no model.")
        deployed = endpoint["deployedModels"][-1]
        model = self.trained[deployed["model"]]
        rows = model.predict_rows((request.json() or {}).get("instances", []))
        if model.task == "classification":
            predictions: list[Any] = [
                {"classes": list(model.classes), "scores": scores} for scores in rows
            ]
        else:
            predictions = [
                {"value": v, "lower_bound": v - 1.0, "upper_bound": v + 1.0}
                for v in rows
            ]
        return FakeResponse.json(
            {"predictions": predictions, "deployedModelId": deployed["id"]}
        )


def fake_credentials(*, refresh_fails: bool = False) -> Any:
    """Google credentials with a fixed bearer token, for the fake only.

    On a 401 the SDK refreshes its credentials and retries; these refresh to the same
    token, or raise ``google.auth.exceptions.RefreshError`` when `refresh_fails` is set.
    """
    from google.auth import credentials, exceptions

    class FakeCredentials(credentials.Credentials):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.token = "fake-token"
            self.refreshes = 0

        def refresh(self, request: Any) -> None:
            self.refreshes += 1
            if refresh_fails:
                raise exceptions.RefreshError(
                    "The credentials do not contain the "
                    "necessary fields need to refresh the "
                    "access token: the token has expired."
                )
            self.token = "fake-token"

    return FakeCredentials()


def _parse_multipart(request: FakeRequest) -> tuple[dict[str, Any], bytes]:
    """Split a multipart/related upload into its JSON metadata and its media bytes."""
    content_type = request.headers.get("content-type", "")
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if found is None:  # a plain media upload
        return {}, request.body
    boundary = b"--" + found.group(1).encode()
    parts = [p for p in request.body.split(boundary) if p.strip() not in (b"", b"--")]
    decoded = []
    for part in parts:
        _, _, payload = part.partition(b"\r\n\r\n")
        decoded.append(payload.removesuffix(b"\r\n"))
    metadata = json.loads(decoded[0]) if decoded else {}
    return metadata, decoded[1] if len(decoded) > 1 else b""


def _status(code: int, status: str, message: str, **extra: Any) -> FakeResponse:
    return FakeResponse.json(
        {"error": {"code": code, "message": message, "status": status, **extra}}, code
    )


# --- faults with the service's spellings --------------------------------------------------


def quota_exceeded(*, method: str | None = "POST", path: str | None = None) -> Fault:
    """A 429 RESOURCE_EXHAUSTED for a resource quota (not a request rate)."""
    message = (
        "Quota exceeded for quota metric 'aiplatform.googleapis.com/"
        "custom_model_training_cpus' and limit 'CustomModelTrainingCPUsPerProjectPerRegion'"
        " of service 'aiplatform.googleapis.com' for consumer 'project_number:1234'."
    )
    return _fault(429, "RESOURCE_EXHAUSTED", message, method, path, "quota_exceeded")


def rate_limited(*, method: str | None = None, path: str | None = None) -> Fault:
    """A 429 RESOURCE_EXHAUSTED for a per-minute request rate."""
    message = (
        "Quota exceeded for quota metric 'Resource management (CRUD) requests' and limit "
        "'Resource management (CRUD) requests per minute per region' of service "
        "'aiplatform.googleapis.com' for consumer 'project_number:1234'."
    )
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "googleapis.com",
        }
    ]
    fault = _fault(429, "RESOURCE_EXHAUSTED", message, method, path, "rate_limited")
    fault.body["error"]["details"] = details
    return fault


def server_error(
    status: int = 503, *, method: str | None = None, path: str | None = None
) -> Fault:
    names = {
        500: "INTERNAL",
        502: "UNAVAILABLE",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
    message = (
        "The service is currently unavailable." if status != 500 else "Internal error."
    )
    return _fault(
        status, names.get(status, "UNKNOWN"), message, method, path, f"http_{status}"
    )


def unauthenticated(
    *, method: str | None = None, path: str | None = None, times: int = 3
) -> Fault:
    """A 401. The SDK refreshes its token and retries twice, so three replies by default."""
    message = (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential."
    )
    fault = _fault(401, "UNAUTHENTICATED", message, method, path, "unauthenticated")
    fault.times = times
    return fault


def invalid_argument(*, method: str | None = "POST", path: str | None = None) -> Fault:
    message = "List of found errors:\t1.Field: training_pipeline.training_task_inputs; "
    message += "Message: Invalid target column."
    return _fault(400, "INVALID_ARGUMENT", message, method, path, "invalid_argument")


def capacity_failure(after_s: float | None = None) -> PipelineFailure:
    """A pipeline that fails because the zone has no machines left (a stockout)."""
    return PipelineFailure(
        8,
        "The zone 'us-central1-a' does not have enough resources available to fulfill the"
        " request. '(resource type:compute)'. ZONE_RESOURCE_POOL_EXHAUSTED",
        after_s,
    )


def insufficient_resources_failure(after_s: float | None = None) -> PipelineFailure:
    return PipelineFailure(
        8,
        "Resources are insufficient in region: us-central1. Please try a different region.",
        after_s,
    )


def quota_failure(after_s: float | None = None) -> PipelineFailure:
    return PipelineFailure(
        8,
        "Quota exceeded for aiplatform.googleapis.com/custom_model_training_cpus: "
        "requested 32, limit 24 in region us-central1.",
        after_s,
    )


def _fault(
    status: int,
    name: str,
    message: str,
    method: str | None,
    path: str | None,
    label: str,
) -> Fault:
    body = {"error": {"code": status, "message": message, "status": name}}
    return Fault(status=status, body=body, method=method, path=path, name=label)
