"""A loopback fake of Azure Machine Learning (management plane, run history, blob storage).

The real ``azure-ai-ml`` and ``azure-storage-blob`` clients reach it through
:class:`LoopbackTransport`, an ``azure.core`` transport that sends every request, whatever
its host, to ``http://127.0.0.1:PORT`` and keeps the original host in the
``x-fake-original-host`` header. The SDKs still see ``https`` URLs, so bearer tokens are
allowed, and nothing leaves the machine.

It serves what an AutoML job needs: the workspace and its discovery document, datastores,
block-blob uploads, computes (with provisioning errors), AutoML jobs (PUT, GET, cancel),
their child runs in run history, and managed online endpoints (create, deploy, keys,
score, delete) whose scoring route runs the model the fake trained. Long-running
operations finish at once.

A job moves through Azure's statuses as the fake's clock advances (``schedule``). When it
completes, the fake trains a small scikit-learn model per child run on the staged MLTable
(a CSV), so scores on held-out rows are real.

Example:
    >>> from broker.testing.azure_fake import AzureFake
    >>> with AzureFake() as fake:
    ...     fake.url.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from broker.clock import Clock
from broker.testing._fake_server import FakeRequest, FakeResponse, FakeServer, Fault
from broker.testing._tabular import TrainedTabularModel, read_csv_bytes, train_tabular

__all__ = [
    "DEFAULT_SCHEDULE",
    "AzureFake",
    "FixedTokenCredential",
    "JobFailure",
    "allocation_failed",
    "arm_error",
    "expired_token",
    "invalid_request",
    "operation_not_allowed_quota",
    "quota_exceeded",
    "server_error",
    "sku_not_available",
    "throttled",
    "zonal_allocation_failed",
]

DEFAULT_SCHEDULE: tuple[tuple[str, float], ...] = (
    ("NotStarted", 10.0),
    ("Queued", 50.0),
    ("Preparing", 60.0),
    ("Running", 810.0),
    ("Finalizing", 90.0),
)
"""Status and its duration in clock seconds; after the last one the job is Completed."""

_WS = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
)
_TERMINAL = {"Completed", "Failed", "Canceled"}
_ALGORITHMS = (("LightGBM", "hist_gradient_boosting"), ("LogisticRegression", "linear"))


@dataclass(frozen=True)
class JobFailure:
    """A scripted job failure: when (seconds after create) and the compute error, if any."""

    after_s: float | None = None  # None: when the job would start running
    compute_error: tuple[str, str] | None = None  # (code, message) set on the compute


@dataclass
class _Job:
    name: str
    body: dict[str, Any]
    created_s: float
    schedule: tuple[tuple[str, float], ...]
    failure: JobFailure | None = None
    cancel_s: float | None = None
    children: list[dict[str, Any]] = field(default_factory=list)


class FixedTokenCredential:
    """An ``azure.core`` token credential that returns one fixed token (fakes only)."""

    def __init__(self, token: str = "fake-token") -> None:
        self.token = token
        self.requests = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.requests += 1
        return AccessToken(self.token, 4102444800)  # 2100-01-01

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        self.requests += 1
        return AccessTokenInfo(self.token, 4102444800)


def LoopbackTransport(base_url: str) -> Any:  # noqa: N802 - a class factory
    """An ``azure.core`` requests transport that sends every request to `base_url`.

    The SDK import happens here, so importing this module stays light.
    """
    from azure.core.pipeline.transport import RequestsTransport

    target = urlsplit(base_url)

    class _Loopback(RequestsTransport):  # type: ignore[misc]
        def send(self, request: Any, **kwargs: Any) -> Any:
            parts = urlsplit(request.url)
            request.headers["x-fake-original-host"] = parts.netloc
            request.url = urlunsplit(
                (target.scheme, target.netloc, parts.path, parts.query, "")
            )
            return super().send(request, **kwargs)

    return _Loopback()


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AzureFake(FakeServer):
    """A fake Azure ML workspace on 127.0.0.1.

    Args:
        clock: the clock that drives job statuses; a FakeClock by default.
        schedule: (status, seconds) pairs a job goes through before it is Completed.
        cancel_s: seconds a cancelled job stays CancelRequested.
        vm_size: the compute cluster's VM size.
        max_nodes: the compute cluster's maximum node count.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        schedule: tuple[tuple[str, float], ...] = DEFAULT_SCHEDULE,
        cancel_s: float = 30.0,
        vm_size: str = "Standard_DS3_v2",
        max_nodes: int = 4,
        port: int = 0,
    ) -> None:
        super().__init__(clock=clock, port=port)
        self.schedule = schedule
        self.cancel_s = cancel_s
        self.vm_size = vm_size
        self.max_nodes = max_nodes
        self.blobs: dict[tuple[str, str, str], bytes] = {}  # (account, container, path)
        self.jobs: dict[str, _Job] = {}
        self.trained: dict[str, TrainedTabularModel] = {}  # child run id -> model
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}  # model version ARM id -> record
        self.compute_errors: list[tuple[str, str]] = []
        self._next_failure: JobFailure | None = None
        self._ids = itertools.count(1)
        self._state_lock = threading.RLock()
        self._register_routes()

    # --- controls ----------------------------------------------------------------------

    def client_settings(self) -> dict[str, Any]:
        """Keyword settings for :class:`broker.providers.azure.AzureProvider`."""
        return {
            "subscription_id": "00000000-0000-0000-0000-000000000000",
            "resource_group": "fake-rg",
            "workspace": "fake-ws",
            "compute": "cpu-cluster",
            "credential": FixedTokenCredential(),
            "transport": LoopbackTransport(self.url),
            "clock": self.clock,
            "retry_total": 0,
        }

    def fail_next_job(self, failure: JobFailure) -> None:
        """The next job created ends Failed (setting its compute error, if given)."""
        self._next_failure = failure

    def job_status(self, name: str) -> str:
        with self._state_lock:
            return str(self._advance(self.jobs[name])["properties"]["status"])

    # --- routes ------------------------------------------------------------------------

    def _register_routes(self) -> None:
        r = self.add_route
        r("GET", _WS, self._workspace)
        r("GET", r"/discovery", self._discovery)
        r("GET", _WS + r"/datastores/(?P<name>[^/]+)", self._datastore)
        r("GET", _WS + r"/computes/(?P<name>[^/]+)", self._compute)
        r("PUT", _WS + r"/jobs/(?P<name>[^/]+)", self._put_job)
        r("GET", _WS + r"/jobs/(?P<name>[^/]+)", self._get_job)
        r("POST", _WS + r"/jobs/(?P<name>[^/]+)/cancel", self._cancel)
        r(
            "GET",
            r"/history/v1\.0" + _WS + r"/runs/(?P<name>[^/]+)/children",
            self._children,
        )
        r("GET", _WS + r"/models/(?P<name>[^/]+)/versions", self._model_versions)
        r(
            "PUT",
            _WS + r"/models/(?P<name>[^/]+)/versions/(?P<v>[^/]+)",
            self._put_model,
        )
        r(
            "GET",
            _WS + r"/models/(?P<name>[^/]+)/versions/(?P<v>[^/]+)",
            self._get_model,
        )
        r("PUT", _WS + r"/onlineEndpoints/(?P<name>[^/]+)", self._put_endpoint)
        r("GET", _WS + r"/onlineEndpoints/(?P<name>[^/]+)", self._get_endpoint)
        r("DELETE", _WS + r"/onlineEndpoints/(?P<name>[^/]+)", self._delete_endpoint)
        r("POST", _WS + r"/onlineEndpoints/(?P<name>[^/]+)/listKeys", self._keys)
        r(
            "GET",
            _WS + r"/onlineEndpoints/(?P<name>[^/]+)/deployments",
            self._list_deployments,
        )
        r(
            "PUT",
            _WS + r"/onlineEndpoints/(?P<name>[^/]+)/deployments/(?P<dep>[^/]+)",
            self._put_deployment,
        )
        r("POST", r"/score", self._score)
        r("PUT", r"/(?P<container>[^/]+)/(?P<path>.+)", self._put_blob)

    def not_found(self, request: FakeRequest) -> FakeResponse:
        return _arm(
            404, "ResourceNotFound", f"No route for {request.method} {request.path}."
        )

    def _new_id(self) -> str:
        return f"{next(self._ids):04d}"

    def _ws_id(self, match: re.Match[str]) -> str:
        return (
            f"/subscriptions/{match['sub']}/resourceGroups/{match['rg']}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{match['ws']}"
        )

    def _system_data(self, created: datetime, modified: datetime) -> dict[str, Any]:
        return {
            "createdAt": _time(created),
            "createdBy": "fake-user",
            "createdByType": "User",
            "lastModifiedAt": _time(modified),
        }

    # workspace, discovery, datastores, computes

    def _workspace(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        return FakeResponse.json(
            {
                "id": self._ws_id(match),
                "name": match["ws"],
                "type": "Microsoft.MachineLearningServices/workspaces",
                "location": "eastus",
                "properties": {
                    "discoveryUrl": "https://eastus.api.azureml.ms/discovery",
                    "workspaceId": "11111111-1111-1111-1111-111111111111",
                    "mlFlowTrackingUri": "azureml://eastus.api.azureml.ms/mlflow/v1.0",
                },
            }
        )

    def _discovery(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        base = "https://eastus.api.azureml.ms"
        return FakeResponse.json(
            {"api": base, "catalog": base, "experimentation": base}
        )

    def _datastore(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        return FakeResponse.json(
            {
                "id": f"{self._ws_id(match)}/datastores/{match['name']}",
                "name": match["name"],
                "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                "properties": {
                    "datastoreType": "AzureBlob",
                    "accountName": "fakestorage",
                    "containerName": "azureml-blobstore",
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "isDefault": True,
                    "credentials": {"credentialsType": "None"},
                },
            }
        )

    def _compute(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        errors = [{"error": {"code": c, "message": m}} for c, m in self.compute_errors]
        return FakeResponse.json(
            {
                "id": f"{self._ws_id(match)}/computes/{match['name']}",
                "name": match["name"],
                "location": "eastus",
                "properties": {
                    "computeType": "AmlCompute",
                    "provisioningState": "Failed" if errors else "Succeeded",
                    "provisioningErrors": errors or None,
                    "properties": {
                        "vmSize": self.vm_size,
                        "vmPriority": "Dedicated",
                        "scaleSettings": {
                            "minNodeCount": 0,
                            "maxNodeCount": self.max_nodes,
                            "nodeIdleTimeBeforeScaleDown": "PT120S",
                        },
                    },
                },
            }
        )

    # blobs

    def _put_blob(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        host = request.headers.get("x-fake-original-host", "")
        if not host.endswith(".blob.core.windows.net"):
            return self.not_found(request)
        account = host.split(".", 1)[0]
        self.blobs[(account, match["container"], match["path"])] = request.body
        return FakeResponse(
            201,
            b"",
            {
                "ETag": f'"0x{self._new_id()}"',
                "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
                "x-ms-request-server-encrypted": "true",
                "x-ms-version": "2025-01-05",
            },
        )

    # jobs

    def _put_job(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = match["name"]
        body = request.json() or {}
        with self._state_lock:
            if name in self.jobs:
                return _arm(
                    409,
                    "UserError",
                    f"A job with name {name!r} already exists in the workspace.",
                )
            problem = self._check_job(body)
            if problem:
                return _arm(400, "UserError", problem)
            now = self.clock.now()
            record = {
                "id": f"{self._ws_id(match)}/jobs/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                "properties": {**body["properties"], "status": self.schedule[0][0]},
                "systemData": self._system_data(now, now),
            }
            job = _Job(
                name, record, self.clock.monotonic(), self.schedule, self._next_failure
            )
            self._next_failure = None
            self.jobs[name] = job
            return FakeResponse.json(self._advance(job), 201)

    def _check_job(self, body: dict[str, Any]) -> str | None:
        props = body.get("properties") or {}
        task = props.get("taskDetails") or {}
        if props.get("jobType") != "AutoML":
            return f"Unsupported job type {props.get('jobType')!r}."
        if task.get("taskType") not in ("Classification", "Regression"):
            return f"Unsupported task type {task.get('taskType')!r}."
        uri = (task.get("trainingData") or {}).get("uri", "")
        if self._read_mltable(uri) is None:
            return f"Training data {uri!r} is not a readable MLTable."
        if not task.get("targetColumnName"):
            return "targetColumnName is required."
        return None

    def _get_job(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        with self._state_lock:
            job = self.jobs.get(match["name"])
            if job is None:
                return _arm(404, "UserError", f"Job {match['name']} not found.")
            return FakeResponse.json(self._advance(job))

    def _cancel(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        with self._state_lock:
            job = self.jobs.get(match["name"])
            if job is None:
                return _arm(404, "UserError", f"Job {match['name']} not found.")
            if (
                self._advance(job)["properties"]["status"] not in _TERMINAL
                and job.cancel_s is None
            ):
                job.cancel_s = self.clock.monotonic()
            return FakeResponse(200, b"", {})  # this API version answers 200, not 202

    def _children(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        with self._state_lock:
            job = self.jobs.get(match["name"])
            if job is None:
                return _arm(404, "UserError", f"Run {match['name']} not found.")
            self._advance(job)
            return FakeResponse.json({"value": job.children, "nextLink": None})

    def _advance(self, job: _Job) -> dict[str, Any]:
        """Bring the job's record up to the clock and return it."""
        props = job.body["properties"]
        if props["status"] in _TERMINAL:
            return job.body
        elapsed = self.clock.monotonic() - job.created_s
        status, run_start_s, run_end_s, total_s = self._scheduled(job, elapsed)
        failure = job.failure
        fail_at = None
        if failure is not None:
            fail_at = run_start_s if failure.after_s is None else failure.after_s
            if (
                failure.compute_error
                and failure.compute_error not in self.compute_errors
            ):
                self.compute_errors.append(failure.compute_error)
        if job.cancel_s is not None:
            cancelled_at = job.cancel_s - job.created_s
            if elapsed >= cancelled_at + self.cancel_s:
                self._finish(job, "Canceled", cancelled_at + self.cancel_s)
            else:
                props["status"] = "CancelRequested"
        elif fail_at is not None and elapsed >= fail_at:
            self._finish(job, "Failed", fail_at)
        elif self.compute_errors and status not in ("NotStarted", "Queued"):
            props["status"] = "Queued"  # no nodes: the job waits for the cluster
        elif elapsed >= total_s:
            self._train(job, run_start_s, run_end_s)
            self._finish(job, "Completed", total_s)
        else:
            if props["status"] != status:
                job.body["systemData"]["lastModifiedAt"] = _time(self._at(job, elapsed))
            props["status"] = status
        return job.body

    def _scheduled(self, job: _Job, elapsed: float) -> tuple[str, float, float, float]:
        status, edge = job.schedule[0][0], 0.0
        run_start_s = run_end_s = 0.0
        for name, duration in job.schedule:
            if name == "Running":
                run_start_s, run_end_s = edge, edge + duration
            if elapsed >= edge:
                status = name
            edge += duration
        return status, run_start_s, run_end_s, edge

    def _at(self, job: _Job, offset_s: float) -> datetime:
        return self.clock.now() - timedelta(
            seconds=self.clock.monotonic() - job.created_s - offset_s
        )

    def _finish(self, job: _Job, status: str, end_s: float) -> None:
        job.body["properties"]["status"] = status
        job.body["systemData"]["lastModifiedAt"] = _time(self._at(job, end_s))

    def _train(self, job: _Job, run_start_s: float, run_end_s: float) -> None:
        task = job.body["properties"]["taskDetails"]
        frame = self._read_mltable(task["trainingData"]["uri"])
        assert frame is not None, "checked at create"
        target = task["targetColumnName"]
        features = [c for c in frame.columns if c != target]
        numeric = [c for c in features if _numeric(frame[c])]
        categorical = [c for c in features if c not in numeric]
        kind = "regression" if task["taskType"] == "Regression" else "classification"
        limits = task.get("limitSettings") or {}
        count = max(1, min(len(_ALGORITHMS), int(limits.get("maxTrials") or 1)))
        for index, (algorithm, family) in enumerate(_ALGORITHMS[:count]):
            model = train_tabular(
                frame,
                target=target,
                task=kind,
                numeric=numeric,
                categorical=categorical,
                algorithm=family,
            )
            run_id = f"{job.name}_{index}"
            self.trained[run_id] = model
            metric = task.get("primaryMetric", "")
            score = _score_for(metric, model.validation_metrics)
            job.children.append(
                {
                    "runId": run_id,
                    "displayName": run_id,
                    "status": "Completed",
                    "experimentId": job.body["properties"].get("experimentName"),
                    "createdUtc": _time(self._at(job, run_start_s)),
                    "lastModifiedUtc": _time(self._at(job, run_end_s)),
                    "properties": {
                        "run_algorithm": algorithm,
                        "run_preprocessor": "StandardScalerWrapper",
                        "iteration": str(index),
                        "score": repr(score),
                        "primary_metric": metric,
                    },
                    "tags": {},
                }
            )

    def _read_mltable(self, uri: str) -> Any:
        """The table behind an ``azureml://datastores/<ds>/paths/<folder>/`` MLTable."""
        import yaml

        found = re.fullmatch(
            r"azureml://datastores/[^/]+/paths/(?P<folder>.+?)/?", uri or ""
        )
        if found is None:
            return None
        folder = found["folder"].rstrip("/")
        spec = self.blobs.get(("fakestorage", "azureml-blobstore", f"{folder}/MLTable"))
        if spec is None:
            return None
        paths = yaml.safe_load(spec).get("paths") or []
        files = [p.get("file", "").removeprefix("./") for p in paths]
        if not files:
            return None
        data = self.blobs.get(
            ("fakestorage", "azureml-blobstore", f"{folder}/{files[0]}")
        )
        return read_csv_bytes(data) if data is not None else None

    # models

    def _model_versions(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        prefix = f"{self._ws_id(match)}/models/{match['name']}/versions/"
        found = [m for arm_id, m in self.models.items() if arm_id.startswith(prefix)]
        return FakeResponse.json({"value": found})

    def _put_model(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        arm_id = f"{self._ws_id(match)}/models/{match['name']}/versions/{match['v']}"
        body = request.json() or {}
        uri = (body.get("properties") or {}).get("modelUri", "")
        if _run_of_model(uri) not in self.trained:
            return _arm(400, "UserError", f"Model path {uri!r} holds no model.")
        props = {
            **(body.get("properties") or {}),
            "flavors": {
                "python_function": {"data": {"loader_module": "mlflow.sklearn"}}
            },
            "provisioningState": "Succeeded",
        }
        record = {
            **body,
            "properties": props,
            "id": arm_id,
            "name": match["v"],
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
        }
        self.models[arm_id] = record
        return FakeResponse.json(record, 201)

    def _get_model(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        arm_id = f"{self._ws_id(match)}/models/{match['name']}/versions/{match['v']}"
        if arm_id not in self.models:
            return _arm(404, "UserError", f"Model {arm_id} not found.")
        return FakeResponse.json(self.models[arm_id])

    # online endpoints

    def _put_endpoint(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        name = match["name"]
        body = request.json() or {}
        endpoint = {
            **body,
            "id": f"{self._ws_id(match)}/onlineEndpoints/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
        }
        endpoint["properties"] = {
            **(body.get("properties") or {}),
            "provisioningState": "Succeeded",
            "scoringUri": f"https://{name}.eastus.inference.ml.azure.com/score",
            "traffic": (self.endpoints.get(name, {}).get("properties") or {}).get(
                "traffic", {}
            ),
        }
        endpoint.setdefault("deployments", {})
        self.endpoints[name] = {**self.endpoints.get(name, {}), **endpoint}
        return FakeResponse.json(_public(self.endpoints[name]), 200)

    def _get_endpoint(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        endpoint = self.endpoints.get(match["name"])
        if endpoint is None:
            return _arm(404, "ResourceNotFound", f"Endpoint {match['name']} not found.")
        return FakeResponse.json(_public(endpoint))

    def _put_deployment(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        endpoint = self.endpoints.get(match["name"])
        if endpoint is None:
            return _arm(404, "ResourceNotFound", f"Endpoint {match['name']} not found.")
        body = request.json() or {}
        model = (body.get("properties") or {}).get("model", "")
        registered = self.models.get(model.removeprefix("azureml:"), {})
        run_id = _run_of_model(
            (registered.get("properties") or {}).get("modelUri", model)
        )
        if run_id not in self.trained:
            return _arm(
                400, "BadArgument", f"Model {model!r} is not a trained AutoML model."
            )
        deployment = {
            **body,
            "id": f"{endpoint['id']}/deployments/{match['dep']}",
            "name": match["dep"],
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
        }
        deployment["properties"] = {
            "scaleSettings": {"scaleType": "Default"},
            "endpointComputeType": "Managed",
            **{k: v for k, v in body["properties"].items() if v is not None},
            "provisioningState": "Succeeded",
        }
        deployment.setdefault("sku", {"name": "Default", "capacity": 1})
        endpoint["deployments"][match["dep"]] = run_id
        endpoint.setdefault("records", {})[match["dep"]] = deployment
        endpoint["properties"]["traffic"] = {match["dep"]: 100}
        return FakeResponse.json(deployment, 200)

    def _list_deployments(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        endpoint = self.endpoints.get(match["name"])
        if endpoint is None:
            return _arm(404, "ResourceNotFound", f"Endpoint {match['name']} not found.")
        return FakeResponse.json({"value": list(endpoint.get("records", {}).values())})

    def _keys(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        if match["name"] not in self.endpoints:
            return _arm(404, "ResourceNotFound", f"Endpoint {match['name']} not found.")
        return FakeResponse.json(
            {"primaryKey": "fake-key-1", "secondaryKey": "fake-key-2"}
        )

    def _delete_endpoint(
        self, request: FakeRequest, match: re.Match[str]
    ) -> FakeResponse:
        self.endpoints.pop(match["name"], None)
        return FakeResponse(200, b"", {})

    def _score(self, request: FakeRequest, match: re.Match[str]) -> FakeResponse:
        host = request.headers.get("x-fake-original-host", "")
        name = host.split(".", 1)[0]
        endpoint = self.endpoints.get(name)
        if endpoint is None or not endpoint["deployments"]:
            return FakeResponse.json({"error": f"no deployment behind {host}"}, 404)
        if request.headers.get("authorization") != "Bearer fake-key-1":
            return FakeResponse.json({"error": "invalid key"}, 401)
        run_id = next(iter(endpoint["deployments"].values()))
        model = self.trained[run_id]
        payload = request.json() or {}
        data = payload.get("input_data") or {}
        rows = [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]
        if model.task == "classification":
            probabilities = model.predict_rows(rows)
            return FakeResponse.json(
                {"classes": model.classes, "probabilities": probabilities}
            )
        return FakeResponse.json(model.predict_rows(rows))


def _public(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in endpoint.items() if k not in ("deployments", "records")}


def _run_of_model(model: str) -> str:
    """The run id in ``azureml://jobs/<run>/outputs/artifacts/paths/model/``."""
    found = re.search(r"jobs/([^/]+)/outputs", model)
    return found.group(1) if found else ""


def _numeric(values: Any) -> bool:
    import pandas as pd

    present = values[values != ""]
    return len(present) > 0 and bool(
        pd.to_numeric(present, errors="coerce").notna().all()
    )


_METRIC_KEYS = {
    "AUCWeighted": "roc_auc",
    "AUC_weighted": "roc_auc",
    "Accuracy": "accuracy",
    "accuracy": "accuracy",
    "NormalizedRootMeanSquaredError": "rmse",
    "normalized_root_mean_squared_error": "rmse",
    "NormalizedMeanAbsoluteError": "mae",
    "normalized_mean_absolute_error": "mae",
    "R2Score": "r2",
    "r2_score": "r2",
}


def _score_for(metric: str, values: dict[str, float]) -> float:
    key = _METRIC_KEYS.get(metric)
    if key in values:
        return values[key]
    return next(iter(values.values()))


def _arm(status: int, code: str, message: str) -> FakeResponse:
    return FakeResponse.json({"error": {"code": code, "message": message}}, status)


# --- faults with the service's spellings --------------------------------------------------


def arm_error(
    status: int,
    code: str,
    message: str,
    *,
    method: str | None = None,
    path: str | None = None,
    name: str | None = None,
) -> Fault:
    """A fault answering with an ARM error body ``{"error": {"code", "message"}}``."""
    return Fault(
        status=status,
        body={"error": {"code": code, "message": message}},
        method=method,
        path=path,
        name=name or code,
    )


def quota_exceeded(*, method: str | None = "PUT", path: str | None = None) -> Fault:
    return arm_error(
        400,
        "QuotaExceeded",
        "Operation could not be completed as it results in exceeding approved "
        "standardDSv2Family Cores quota. Location: eastus, Current Limit: 10, "
        "Current Usage: 8, Additional Required: 4.",
        method=method,
        path=path,
    )


def operation_not_allowed_quota(
    *, method: str | None = "PUT", path: str | None = None
) -> Fault:
    return arm_error(
        409,
        "OperationNotAllowed",
        "Operation could not be completed as it results in exceeding approved Total "
        "Regional Cores quota. Location: eastus, Current Limit: 20.",
        method=method,
        path=path,
    )


def allocation_failed(*, method: str | None = "PUT", path: str | None = None) -> Fault:
    return arm_error(
        409,
        "AllocationFailed",
        "Allocation failed. We do not have sufficient capacity for the requested VM size "
        "in this region.",
        method=method,
        path=path,
    )


def zonal_allocation_failed(
    *, method: str | None = "PUT", path: str | None = None
) -> Fault:
    return arm_error(
        409,
        "ZonalAllocationFailed",
        "Allocation failed. We do not have sufficient capacity for the requested VM size "
        "in this zone.",
        method=method,
        path=path,
    )


def sku_not_available(*, method: str | None = "PUT", path: str | None = None) -> Fault:
    return arm_error(
        409,
        "SkuNotAvailable",
        "The requested size for resource is currently not available in location 'eastus'.",
        method=method,
        path=path,
    )


def throttled(*, method: str | None = None, path: str | None = None) -> Fault:
    fault = arm_error(
        429,
        "TooManyRequests",
        "The request is being throttled as the limit has been reached for operation type.",
        method=method,
        path=path,
    )
    fault.headers = {"Retry-After": "1"}
    return fault


def server_error(
    status: int = 503, *, method: str | None = None, path: str | None = None
) -> Fault:
    code = "ServiceUnavailable" if status == 503 else "InternalServerError"
    return arm_error(
        status,
        code,
        "The service is temporarily unavailable.",
        method=method,
        path=path,
    )


def expired_token(*, method: str | None = None, path: str | None = None) -> Fault:
    return arm_error(
        401,
        "ExpiredAuthenticationToken",
        "The access token expiry UTC time '1/1/2026 1:00:00 AM' is earlier than current "
        "UTC time '1/1/2026 2:00:00 AM'.",
        method=method,
        path=path,
    )


def invalid_request(*, method: str | None = "PUT", path: str | None = None) -> Fault:
    return arm_error(
        400,
        "UserError",
        "Target column 'y' was not found in the training data.",
        method=method,
        path=path,
    )
