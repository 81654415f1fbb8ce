"""Azure Machine Learning AutoML as a broker backend.

The adapter drives ``azure-ai-ml`` (and ``azure-storage-blob`` for staging):

1. stage the training rows as an MLTable folder (``train.csv`` plus ``MLTable``) in the
   workspace datastore and point the job at ``azureml://datastores/<ds>/paths/<folder>/``;
2. submit ``automl.classification``/``automl.regression`` named after the broker's
   idempotency key (and tagged with it), with limits derived from the dollar budget and
   the cluster's VM price: timeout, trial timeout, max trials, max concurrent trials;
3. poll the job's status; while it waits for nodes, read the compute's provisioning
   errors, so quota and capacity failures surface at once instead of a job queued forever;
4. list the child runs as the leaderboard; cost is runtime x nodes x the VM's hourly price;
5. predict held-out rows on a short-lived managed online endpoint, deleted afterwards.

Tests pass a ``transport`` that sends every request to
:class:`broker.testing.azure_fake.AzureFake` on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import (
    BudgetWarning,
    ConfigurationError,
    CredentialsError,
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
    RunShape,
)
from broker.spec import LeaderboardEntry, Task
from broker.states import JobState

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "JOB_STATES",
    "VM_USD_PER_HOUR",
    "AutoMLLimits",
    "AzureProvider",
    "automl_limits",
    "map_azure_error",
    "primary_metric",
    "rewriting_transport",
]

VM_USD_PER_HOUR = {
    "Standard_DS3_v2": Decimal("0.293"),
    "Standard_DS12_v2": Decimal("0.371"),
}
"""Linux pay-as-you-go prices in eastus (USD per hour), used when no price is passed."""
# TODO(azure-price-catalog): read VM prices per region from cost_models once it lists Azure
# ML compute SKUs; these two list prices are eastus only.

IDEMPOTENCY_TAG = "broker_idempotency_key"
MIN_TIMEOUT_MINUTES = 15  # AutoML refuses shorter experiment timeouts
MIN_TRIAL_TIMEOUT_MINUTES = 5

JOB_STATES: dict[str, JobState] = {
    "NotStarted": JobState.QUEUED,
    "Starting": JobState.QUEUED,
    "Provisioning": JobState.QUEUED,
    "Queued": JobState.QUEUED,
    "Preparing": JobState.QUEUED,
    "Running": JobState.RUNNING,
    "Finalizing": JobState.RUNNING,
    "NotResponding": JobState.RUNNING,  # still billed; the secondary says so
    "Paused": JobState.RUNNING,
    "CancelRequested": JobState.CANCELLING,
    "Completed": JobState.SUCCEEDED,
    "Failed": JobState.FAILED,
    "Canceled": JobState.CANCELLED,
}
"""Azure ML job status -> broker state; the Azure name stays as the secondary."""
_WAITING = {"NotStarted", "Starting", "Provisioning", "Queued", "Preparing"}

_METRICS: dict[tuple[str, str], str] = {
    ("binary", "roc_auc"): "AUC_weighted",
    ("binary", "accuracy"): "accuracy",
    ("binary", "pr_auc"): "average_precision_score_weighted",
    ("binary", "average_precision"): "average_precision_score_weighted",
    ("multiclass", "accuracy"): "accuracy",
    ("multiclass", "roc_auc"): "AUC_weighted",
    ("regression", "rmse"): "normalized_root_mean_squared_error",
    ("regression", "mae"): "normalized_mean_absolute_error",
    ("regression", "r2"): "r2_score",
}
_DEFAULT_METRIC = {
    "binary": "AUC_weighted",
    "multiclass": "accuracy",
    "regression": "normalized_root_mean_squared_error",
}
# Azure primary metric (as the REST API spells it, or as the SDK does) -> broker metric
_OUR_METRIC = {
    "aucweighted": "roc_auc",
    "auc_weighted": "roc_auc",
    "accuracy": "accuracy",
    "averageprecisionscoreweighted": "pr_auc",
    "average_precision_score_weighted": "pr_auc",
    "normalizedrootmeansquarederror": "normalized_rmse",
    "normalized_root_mean_squared_error": "normalized_rmse",
    "normalizedmeanabsoluteerror": "normalized_mae",
    "normalized_mean_absolute_error": "normalized_mae",
    "r2score": "r2",
    "r2_score": "r2",
}
_LOWER_IS_BETTER = {"normalized_rmse", "normalized_mae"}

T = TypeVar("T")


def primary_metric(task: Task, metric: str) -> str:
    """The AutoML ``primary_metric`` for the broker's task and metric.

    Example:
        >>> primary_metric(Task.REGRESSION, "mae")
        'normalized_mean_absolute_error'
    """
    key = (task.value, metric)
    if key in _METRICS:
        return _METRICS[key]
    fallback = _DEFAULT_METRIC[task.value]
    logger.info(
        "azure cannot optimise %s for %s; using %s", metric, task.value, fallback
    )
    return fallback


@dataclass(frozen=True)
class AutoMLLimits:
    """AutoML limit settings derived from a budget (minutes and counts)."""

    timeout_minutes: int
    trial_timeout_minutes: int
    max_trials: int
    max_concurrent_trials: int


def automl_limits(
    max_usd: Decimal | None,
    runtime_limit_s: float,
    vm_usd_per_hour: Decimal,
    nodes: int,
) -> AutoMLLimits:
    """Limits that keep `nodes` VMs at `vm_usd_per_hour` within `max_usd` and the runtime.

    The experiment timeout is the shorter of the runtime limit and the hours the budget
    buys on `nodes` VMs; each trial gets a quarter of it (at least 5 minutes), and the trial
    count allows every node two trials per trial timeout.

    Example:
        >>> limits = automl_limits(Decimal("10"), 3600, Decimal("0.293"), 4)
        >>> limits.timeout_minutes, limits.trial_timeout_minutes, limits.max_trials
        (60, 15, 32)
    """
    timeout = math.floor(runtime_limit_s / 60)
    if max_usd is not None:
        affordable = max_usd / (vm_usd_per_hour * nodes) * 60
        timeout = min(
            timeout, int(affordable.to_integral_value(rounding="ROUND_FLOOR"))
        )
    if timeout < MIN_TIMEOUT_MINUTES:
        warnings.warn(
            f"Azure AutoML runs for at least {MIN_TIMEOUT_MINUTES} minutes; the budget "
            f"allows {timeout} on {nodes} x ${vm_usd_per_hour}/h, so "
            f"{MIN_TIMEOUT_MINUTES} are requested",
            BudgetWarning,
            stacklevel=3,
        )
        timeout = MIN_TIMEOUT_MINUTES
    trial = max(MIN_TRIAL_TIMEOUT_MINUTES, timeout // 4)
    max_trials = max(1, nodes * 2 * (timeout // trial))
    return AutoMLLimits(timeout, trial, max_trials, nodes)


def job_name_for(key: str) -> str:
    """The Azure job name for an idempotency key: readable when the key allows it."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,200}", key):
        return f"broker-{key}"
    return "broker-h-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def map_azure_error(
    exc: BaseException,
    *,
    provider: str = "azure",
    phase: Phase = "create",
    job_id: str | None = None,
) -> ProviderError:
    """Translate an exception from the Azure SDK stack into a broker error.

    ``azure.core.exceptions.HttpResponseError`` and its subclasses are read by status and
    ARM error code (``QuotaExceeded``, ``OperationNotAllowed``, ``AllocationFailed``,
    ``ZonalAllocationFailed``, ``SkuNotAvailable``, ``ExpiredAuthenticationToken``...).
    ``ClientAuthenticationError`` without a reply means the credential could not get a
    token. Connection failures (``ServiceRequestError``, ``ServiceResponseError``) are
    transient. ``azure.ai.ml`` validation errors are invalid requests. Anything else
    becomes a plain :class:`ProviderError` that neither retries nor fails over.
    """
    if isinstance(exc, ProviderError):
        return exc
    from azure.core import exceptions as az

    original = f"{type(exc).__module__}.{type(exc).__qualname__}"
    fields: dict[str, Any] = {
        "provider": provider,
        "original_type": original,
        "provider_job_id": job_id,
    }
    if isinstance(exc, az.HttpResponseError) and exc.status_code is not None:
        code = getattr(exc.error, "code", None) if exc.error is not None else None
        message = getattr(exc.error, "message", None) or exc.message or str(exc)
        cls = classify(exc.status_code, code, message, phase=phase)
        if code == "ExpiredAuthenticationToken":
            cls = CredentialsExpiredError
        return cls(
            f"Azure ML refused the request ({exc.status_code} {code}): {message}",
            code=code or exc.status_code,
            **fields,
        )
    if isinstance(
        exc, az.ClientAuthenticationError
    ):  # no reply: the token request failed
        cls = CredentialsExpiredError if phase == "poll" else CredentialsError
        return cls(
            f"the Azure credential could not get a token: {exc.message}; sign in again "
            "with `az login` or check the service principal's secret",
            **fields,
        )
    if isinstance(
        exc,
        az.ServiceRequestError
        | az.ServiceResponseError
        | ConnectionError
        | TimeoutError,
    ):
        return TransientProviderError(
            f"the connection to Azure ML failed: {type(exc).__name__}: {exc}", **fields
        )
    if _is_validation_error(exc):
        return InvalidRequestError(
            f"Azure ML refused the job definition: {exc}", **fields
        )
    return ProviderError(f"Azure ML failed unexpectedly: {exc!r}", **fields)


def _is_validation_error(exc: BaseException) -> bool:
    try:
        from azure.ai.ml.exceptions import MlException
    except ImportError:  # pragma: no cover - azure-ai-ml is what raised
        return False
    return isinstance(exc, MlException)


def compute_failure(code: str, *, compute: str, job_id: str | None) -> ProviderError:
    """The broker error for a compute provisioning error code (``ZonalAllocationFailed``)."""
    cls = classify(None, code, code, phase="poll")
    if cls is ProviderError:
        cls = ProviderJobFailedError
    return cls(
        f"Azure ML compute {compute!r} cannot get nodes: {code}",
        provider="azure",
        code=code,
        provider_job_id=job_id,
        original_type="azure.ai.ml.entities.AmlCompute.provisioning_errors",
    )


def rewriting_transport(base_url: str) -> Any:
    """An ``azure.core`` transport that sends every request to `base_url`'s host.

    The request keeps its path and query; its original host travels in the
    ``x-fake-original-host`` header. Meant for a local stand-in of the service: the SDK
    still builds ``https`` URLs, so its bearer-token policy stays satisfied.
    """
    from azure.core.pipeline.transport import RequestsTransport

    target = urlsplit(base_url)
    if target.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigurationError(
            f"base_url must be a loopback address such as http://127.0.0.1:PORT, got "
            f"{base_url!r}; leave it unset to reach Azure itself"
        )

    class _Rewriting(RequestsTransport):  # type: ignore[misc]
        def send(self, request: Any, **kwargs: Any) -> Any:
            parts = urlsplit(request.url)
            request.headers["x-fake-original-host"] = parts.netloc
            request.url = urlunsplit(
                (target.scheme, target.netloc, parts.path, parts.query, "")
            )
            return super().send(request, **kwargs)

    return _Rewriting()


class AzureProvider(Provider):
    """Azure ML AutoML on a compute cluster, polled by the broker.

    Args:
        subscription_id: the Azure subscription.
        resource_group: the workspace's resource group.
        workspace: the Azure ML workspace name.
        compute: the compute cluster that runs the trials.
        credential: an ``azure.core`` token credential (anything with ``get_token``);
            None uses ``azure.identity.DefaultAzureCredential`` at the first call.
        transport: an ``azure.core`` transport for every SDK client (a test double).
        base_url: send every request to this loopback URL instead (a local fake).
        datastore: the datastore that receives the staged MLTable.
        staging_prefix: folder inside the datastore for staged data.
        vm_usd_per_hour: the cluster VM's price; None looks up `vm_size`.
        vm_size: the cluster's VM size, for the price lookup.
        max_nodes: the nodes (= concurrent trials) a job may use.
        experiment_name: the Azure ML experiment the jobs go in.
        endpoint_instance_type: VM size of the temporary prediction endpoint.
        clock: the clock used by :meth:`wait`.
        poll_interval_s: seconds between polls in :meth:`wait`.
        retry_total: the SDK's own retry count; None keeps its default.
    """

    name: ClassVar[str] = "azure"
    # Up to four nodes (the default max_nodes) run trials at once, for at least the
    # 15 minutes AutoML asks for however small the budget.
    run_shape: ClassVar[RunShape] = RunShape(4, MIN_TIMEOUT_MINUTES * 60)
    kind = "cloud"
    unsupported: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        *,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        workspace: str | None = None,
        compute: str | None = None,
        credential: Any = None,
        transport: Any = None,
        base_url: str | None = None,
        datastore: str = "workspaceblobstore",
        staging_prefix: str = "automl-broker",
        vm_usd_per_hour: Decimal | None = None,
        vm_size: str = "Standard_DS3_v2",
        max_nodes: int = 4,
        experiment_name: str = "automl-broker",
        endpoint_instance_type: str = "Standard_DS3_v2",
        clock: Clock | None = None,
        poll_interval_s: float = 60.0,
        retry_total: int | None = None,
    ) -> None:
        if max_nodes < 1:
            raise ConfigurationError(f"max_nodes must be at least 1, got {max_nodes}")
        if vm_usd_per_hour is None and vm_size not in VM_USD_PER_HOUR:
            raise ConfigurationError(
                f"no price known for VM size {vm_size!r}; pass vm_usd_per_hour "
                f"(known sizes: {sorted(VM_USD_PER_HOUR)})"
            )
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace = workspace
        self.compute = compute
        self.credential = credential
        self.transport = (
            transport if base_url is None else rewriting_transport(base_url)
        )
        self.datastore = datastore
        self.staging_prefix = staging_prefix.strip("/")
        self.vm_size = vm_size
        self.vm_usd_per_hour = (
            Decimal(vm_usd_per_hour)
            if vm_usd_per_hour is not None
            else VM_USD_PER_HOUR[vm_size]
        )
        self.max_nodes = max_nodes
        self.experiment_name = experiment_name
        self.endpoint_instance_type = endpoint_instance_type
        self.clock = clock or SYSTEM_CLOCK
        self.poll_interval_s = poll_interval_s
        self.retry_total = retry_total
        self._ml_client: Any = None

    # --- availability ------------------------------------------------------------------

    def placement(self) -> Placement | None:
        return Placement(
            machines=frozenset({self.vm_size}),
            shape=RunShape(self.max_nodes, MIN_TIMEOUT_MINUTES * 60),
        )

    def availability(self) -> Availability:
        import importlib.util

        if importlib.util.find_spec("azure.ai.ml") is None:
            return Availability(
                False,
                "azure-ai-ml is not installed: pip install 'automl-broker[azure]'",
            )
        missing = [
            name
            for name in ("subscription_id", "resource_group", "workspace", "compute")
            if not getattr(self, name)
        ]
        if missing:
            return Availability(False, f"set the Azure option(s) {', '.join(missing)}")
        if self.credential is not None:
            return Availability(True, "credential passed in", "argument")
        from broker.credentials import discover

        return discover("azure")

    # --- the job -----------------------------------------------------------------------

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        existing = self.find_by_idempotency_key(job.idempotency_key)
        if existing is not None:
            logger.info(
                "azure: attaching to %s for key %s",
                existing.job_id,
                job.idempotency_key,
            )
            return existing
        self._require_settings()
        uri = self._call(lambda: self._stage(job), "create")
        automl_job = self.build_job(job, uri)
        try:
            created = self._client().jobs.create_or_update(automl_job)
        except Exception as exc:
            from azure.core.exceptions import ResourceExistsError

            error = map_azure_error(exc, phase="create")
            if not (error.retryable or isinstance(exc, ResourceExistsError)):
                raise error from exc
            # The reply may be lost after the service created the job.
            found = self.find_by_idempotency_key(job.idempotency_key)
            if found is None:
                raise error from exc
            logger.warning("azure: create reply lost; attached to %s", found.job_id)
            return found
        limits = automl_job.limits
        logger.info(
            "azure: created %s (%s, timeout %s min, %s trials on %s nodes)",
            created.name,
            automl_job.primary_metric,
            limits.timeout_minutes,
            limits.max_trials,
            limits.max_concurrent_trials,
        )
        return self._ref(created.name, job.idempotency_key)

    def build_job(self, job: ProviderJob, training_uri: str) -> Any:
        """The ``azure.ai.ml`` AutoML job for `job`, reading the MLTable at `training_uri`."""
        from azure.ai.ml import Input, automl

        schema = job.schema
        metric = primary_metric(schema.task, job.spec.metric_for(schema.task))
        factory = (
            automl.regression
            if schema.task == Task.REGRESSION
            else automl.classification
        )
        limits = automl_limits(
            job.max_usd, job.runtime_limit_s, self.vm_usd_per_hour, self.max_nodes
        )
        automl_job = factory(
            compute=self.compute,
            experiment_name=self.experiment_name,
            training_data=Input(type="mltable", path=training_uri),
            target_column_name=schema.target_safe_name,
            primary_metric=metric,
            n_cross_validations=5,
            name=job_name_for(job.idempotency_key),
            display_name=f"broker {job.job_id}",
            tags={IDEMPOTENCY_TAG: job.idempotency_key, "broker_job_id": job.job_id},
        )
        automl_job.set_limits(
            timeout_minutes=limits.timeout_minutes,
            trial_timeout_minutes=limits.trial_timeout_minutes,
            max_trials=limits.max_trials,
            max_concurrent_trials=limits.max_concurrent_trials,
            enable_early_termination=True,
        )
        return automl_job

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        remote = self._call(
            lambda: self._client().jobs.get(ref.job_id), "poll", ref.job_id
        )
        status = _status_text(remote.status)
        state = JOB_STATES.get(status, JobState.RUNNING)
        if status in _WAITING:
            self._raise_compute_errors(ref.job_id)
        error = None
        if state == JobState.FAILED:
            error = self._compute_error(ref.job_id) or ProviderJobFailedError(
                f"Azure ML job {ref.job_id} ended Failed; see its logs in the studio",
                provider="azure",
                provider_job_id=ref.job_id,
                code=status,
            )
        context = remote.creation_context
        return ProviderStatus(
            state=state,
            secondary=status,
            message=str(error) if error else None,
            started_at=getattr(context, "created_at", None),
            ended_at=getattr(context, "last_modified_at", None)
            if state.terminal
            else None,
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
        remote = self._call(
            lambda: self._client().jobs.get(ref.job_id), "poll", ref.job_id
        )
        state = JOB_STATES.get(_status_text(remote.status), JobState.RUNNING)
        if state.terminal or state == JobState.CANCELLING:
            logger.info(
                "azure: %s is already %s; no cancel sent",
                ref.job_id,
                _status_text(remote.status),
            )
            return
        self._call(
            lambda: self._client().jobs.begin_cancel(ref.job_id), "poll", ref.job_id
        )
        logger.info("azure: cancel sent for %s", ref.job_id)

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        client = self._client()
        remote = self._call(lambda: client.jobs.get(ref.job_id), "poll", ref.job_id)
        if _status_text(remote.status) != "Completed":
            raise ProviderJobFailedError(
                f"Azure ML job {ref.job_id} is {_status_text(remote.status)}, not "
                "Completed; no model to read",
                provider="azure",
                provider_job_id=ref.job_id,
                code=_status_text(remote.status),
            )
        children = self._call(
            lambda: [
                c for c in client.jobs.list(parent_job_name=ref.job_id) if c is not None
            ],
            "poll",
            ref.job_id,
        )
        entries = [self._entry(child) for child in children]
        ours = _OUR_METRIC.get(_status_text(remote.primary_metric).lower(), "score")
        entries = _rank(entries, ours)
        nodes = min(int(remote.limits.max_concurrent_trials or 1), self.max_nodes)
        started = min(
            (c.creation_context.created_at for c in children if c.creation_context),
            default=None,
        )
        ended = (
            remote.creation_context.last_modified_at
            if remote.creation_context
            else None
        )
        runtime_s = (ended - started).total_seconds() if started and ended else 0.0
        cost = (Decimal(str(runtime_s)) * nodes * self.vm_usd_per_hour / 3600).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_UP
        )
        # TODO(azure-idle-nodes): add the cluster's idle time before scale-down (120 s by
        # default) per node; the service bills it, the run history does not show it.
        units = {
            "runtime_s": runtime_s,
            "nodes": nodes,
            "vm_size": self.vm_size,
            "vm_usd_per_hour": str(self.vm_usd_per_hour),
            "billing_unit": "vm_hour",
        }
        return ProviderResult(
            leaderboard=entries,
            best_model_id=entries[0].model_id if entries else None,
            provider_units=units,
            actual_cost_usd=cost,
            runtime_s=runtime_s,
            notes=[f"Azure ML primary metric: {remote.primary_metric}"],
        )

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        import numpy as np

        best = self.result(ref, job).best_model_id
        if best is None:
            raise ProviderJobFailedError(
                f"Azure ML job {ref.job_id} has no child run with a model",
                provider="azure",
                provider_job_id=ref.job_id,
            )
        reply = self._call(
            lambda: self._score_on_endpoint(best, job, frame), "poll", ref.job_id
        )
        if job.schema.task == Task.REGRESSION:
            return np.asarray(reply, dtype=float)
        position = {str(c): i for i, c in enumerate(reply["classes"])}
        probabilities = np.asarray(reply["probabilities"], dtype=float)
        columns = [position[str(c)] for c in job.schema.classes]
        return probabilities[:, columns]

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        from azure.core.exceptions import ResourceNotFoundError

        name = job_name_for(key)
        try:
            remote = self._client().jobs.get(name)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise map_azure_error(exc, phase="create") from exc
        if (remote.tags or {}).get(IDEMPOTENCY_TAG) != key:
            return None
        return self._ref(remote.name, key)

    def close(self) -> None:
        self._ml_client = None

    # --- SDK calls ---------------------------------------------------------------------

    def _require_settings(self) -> None:
        missing = [
            name
            for name in ("subscription_id", "resource_group", "workspace", "compute")
            if not getattr(self, name)
        ]
        if missing:
            raise ConfigurationError(
                f"azure needs {', '.join(missing)}: pass them as provider options"
            )

    def _client(self) -> Any:
        if self._ml_client is None:
            from azure.ai.ml import MLClient

            credential = self.credential
            if credential is None:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError as exc:
                    raise ProviderUnavailableError(
                        "azure-identity is not installed: pip install 'automl-broker[azure]'",
                        provider="azure",
                    ) from exc
                credential = DefaultAzureCredential()
            kwargs: dict[str, Any] = {"enable_telemetry": False}
            if self.transport is not None:
                kwargs["transport"] = self.transport
            if self.retry_total is not None:
                kwargs["retry_total"] = self.retry_total
            self._ml_client = MLClient(
                credential,
                self.subscription_id,
                self.resource_group,
                self.workspace,
                **kwargs,
            )
        return self._ml_client

    def _call(self, fn: Callable[[], T], phase: Phase, job_id: str | None = None) -> T:
        try:
            return fn()
        except ProviderError:
            raise
        except Exception as exc:
            raise map_azure_error(exc, phase=phase, job_id=job_id) from exc

    def _stage(self, job: ProviderJob) -> str:
        from azure.storage.blob import BlobServiceClient

        store = self._client().datastores.get(self.datastore)
        account_url = f"{store.protocol}://{store.account_name}.blob.{store.endpoint}"
        kwargs: dict[str, Any] = {}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        if self.retry_total is not None:
            kwargs["retry_total"] = self.retry_total
        service = BlobServiceClient(
            account_url, credential=self._client()._credential, **kwargs
        )
        container = service.get_container_client(store.container_name)
        folder = f"{self.staging_prefix}/{job.job_id}"
        columns = [*job.schema.safe_feature_names, job.schema.target_safe_name]
        data = job.train[columns].to_csv(index=False).encode()
        mltable = (
            "paths:\n  - file: ./train.csv\ntransformations:\n  - read_delimited:\n"
            "      delimiter: ','\n      encoding: utf8\n      header: all_files_same_headers\n"
        )
        container.upload_blob(f"{folder}/train.csv", data, overwrite=True)
        container.upload_blob(f"{folder}/MLTable", mltable.encode(), overwrite=True)
        logger.info(
            "azure: staged %d rows in %s/%s", len(job.train), self.datastore, folder
        )
        return f"azureml://datastores/{self.datastore}/paths/{folder}/"

    def _raise_compute_errors(self, job_id: str) -> None:
        error = self._compute_error(job_id)
        if error is not None:
            raise error

    def _compute_error(self, job_id: str) -> ProviderError | None:
        compute = self._call(
            lambda: self._client().compute.get(self.compute), "poll", job_id
        )
        code = getattr(compute, "provisioning_errors", None)
        if not code:
            return None
        return compute_failure(str(code), compute=str(self.compute), job_id=job_id)

    def _entry(self, child: Any) -> LeaderboardEntry:
        props = dict(child.properties or {})
        metric = _OUR_METRIC.get(str(props.get("primary_metric", "")).lower(), "score")
        score = _float(props.get("score"))
        context = child.creation_context
        created = getattr(context, "created_at", None)
        modified = getattr(context, "last_modified_at", None)
        return LeaderboardEntry(
            model_id=str(child.name),
            provider="azure",
            algorithm=str(props.get("run_algorithm") or "unknown"),
            validation_metrics={metric: score},
            training_time_s=(modified - created).total_seconds()
            if created and modified
            else None,
            params={
                k: props[k] for k in ("run_preprocessor", "iteration") if k in props
            },
        )

    def _score_on_endpoint(
        self, run_id: str, job: ProviderJob, frame: pd.DataFrame
    ) -> Any:
        import json

        from azure.ai.ml.entities import (
            ManagedOnlineDeployment,
            ManagedOnlineEndpoint,
            Model,
        )

        client = self._client()
        name = ("broker-" + hashlib.sha256(run_id.encode()).hexdigest()[:16])[:32]
        client.online_endpoints.begin_create_or_update(
            ManagedOnlineEndpoint(name=name, auth_mode="key")
        ).result()
        try:
            model = client.models.create_or_update(
                Model(
                    name=name,
                    version="1",
                    path=f"azureml://jobs/{run_id}/outputs/artifacts/paths/model/",
                    type="mlflow_model",
                )
            )
            client.online_deployments.begin_create_or_update(
                ManagedOnlineDeployment(
                    name="best",
                    endpoint_name=name,
                    model=model.id,
                    instance_type=self.endpoint_instance_type,
                    instance_count=1,
                )
            ).result()
            names = job.schema.safe_feature_names
            rows = frame[names].astype(object).where(frame[names].notna(), None)
            payload = {"input_data": {"columns": names, "data": rows.values.tolist()}}
            request_file = job.run_dir / "azure_score_request.json"
            request_file.parent.mkdir(parents=True, exist_ok=True)
            request_file.write_text(json.dumps(payload, default=_jsonable))
            reply = client.online_endpoints.invoke(
                endpoint_name=name,
                request_file=str(request_file),
                deployment_name="best",
            )
            request_file.unlink(missing_ok=True)
            return json.loads(reply)
        finally:
            try:
                client.online_endpoints.begin_delete(name=name).result()
            except Exception:  # predictions are in hand; a left endpoint keeps billing
                logger.warning(
                    "azure: could not delete endpoint %s; delete it by hand to stop its "
                    "charges",
                    name,
                    exc_info=True,
                )

    def _ref(self, name: str, key: str) -> ProviderJobRef:
        return ProviderJobRef(
            provider="azure",
            job_id=name,
            idempotency_key=key,
            extra={"workspace": self.workspace, "compute": self.compute},
        )


def _rank(entries: list[LeaderboardEntry], metric: str) -> list[LeaderboardEntry]:
    """Best first by the service's validation score; rows without a score go last."""
    sign = 1.0 if metric in _LOWER_IS_BETTER else -1.0
    scored = [e for e in entries if e.validation_metrics.get(metric) is not None]
    unscored = [e for e in entries if e.validation_metrics.get(metric) is None]
    scored.sort(key=lambda e: sign * float(e.validation_metrics[metric] or 0.0))
    return scored + unscored


def _status_text(status: Any) -> str:
    """The service's status name (``Completed``), whether the SDK gives a str or an enum."""
    return str(getattr(status, "value", status))


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
