"""A scripted provider for testing the broker loop: a job's life written as data.

:class:`ScriptedProvider` plays both sides of a cloud backend: the adapter that the broker
calls (``submit``, ``poll``, ``cancel``, ``result``, ``predict``) and the remote service
behind it (its jobs, its billing meter, its stop calls). Nothing runs in the background;
every answer is computed from a :class:`broker.clock.FakeClock` that the test moves.

What a test can script:

- **states over time**: ``script=[("queued", 0), ("running", 30), ("succeeded", 300)]``
  (seconds after submit). The script is checked against the broker's state machine.
  A script ending in ``"stopped"`` is the service ending the job on its own limit.
- **faults**: ``submit_errors`` are raised by the next submits, one each;
  ``poll_errors={3: ThrottledError(...)}`` raises at the 3rd poll (1-based, counted over
  the provider's life); ``lose_submit_reply=True`` creates the job and then raises a
  :class:`TransientProviderError`, as a lost reply would.
- **billing**: ``usd_per_s`` (a Decimal) accrues while the job holds its resource
  (states ``running`` and ``cancelling``), so :meth:`ScriptedProvider.accrued_usd` and
  the result's ``actual_cost_usd`` are exact. :attr:`ScriptedProvider.active_resources`
  counts jobs holding a resource now.
- **cancel**: the first cancel makes one backend ``stop`` call; the job is
  ``cancelling`` until ``cancel_delay_s`` later, then ``cancelled``. A second cancel,
  or a cancel of an ended job, is a no-op: no backend call, no error.
- **stuck in the queue**: a script that stays ``queued``; with ``queued_error`` set,
  every poll while queued carries that error on the status (``status.error``), the way
  a service reports "quota exceeded" next to a pending job.
- **credentials expiry**: polls numbered in ``expired_polls`` raise
  :class:`CredentialsExpiredError` (with the job id) until
  :meth:`ScriptedProvider.refresh_credentials` succeeds; ``refresher`` decides that
  (default: refresh always fails).
- **predictions**: ``predictions="model"`` trains a real scikit-learn model on the job's
  training frame; ``"prior"`` predicts the training class shares (or the mean).

The call log (:attr:`ScriptedProvider.calls`) records each adapter call with the clock
time, and :attr:`ScriptedProvider.backend_calls` each call the "service" received.

Example:
    >>> from broker.clock import FakeClock
    >>> clock = FakeClock()
    >>> provider = ScriptedProvider(
    ...     clock=clock, script=[("running", 0), ("succeeded", 300)],
    ...     usd_per_s=Decimal("0.001"))
    >>> ref = provider.submit(job)  # doctest: +SKIP
    >>> clock.advance(100); provider.cancel(ref)  # doctest: +SKIP
    >>> clock.advance(20); provider.poll(ref).state  # doctest: +SKIP
    <JobState.CANCELLED: 'cancelled'>
    >>> provider.accrued_usd(ref)  # doctest: +SKIP
    Decimal('0.120')
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from broker.clock import FakeClock
from broker.errors import (
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderError,
    ProviderJobFailedError,
    TransientProviderError,
)
from broker.providers.base import (
    Availability,
    Provider,
    ProviderJob,
    ProviderJobRef,
    ProviderResult,
    ProviderStatus,
)
from broker.spec import LeaderboardEntry, Task
from broker.states import JobState, check_transition

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["ScriptStep", "ScriptedCall", "ScriptedProvider"]

BILLABLE_STATES = frozenset({JobState.RUNNING, JobState.CANCELLING})


@dataclass(frozen=True)
class ScriptStep:
    """The job enters `state` at `at_s` seconds after submit."""

    state: JobState
    at_s: float
    secondary: str | None = None


@dataclass(frozen=True)
class ScriptedCall:
    """One recorded call: `method` at clock time `at_s`, about `job_id`."""

    method: str
    at_s: float
    job_id: str | None = None


@dataclass
class _Job:
    ref: ProviderJobRef
    submitted_s: float
    train: Any
    cancel_s: float | None = None
    model: Any = None


def _steps(
    script: Iterable[tuple[str, float] | tuple[str, float, str] | ScriptStep],
) -> list[ScriptStep]:
    steps = []
    for item in script:
        if isinstance(item, ScriptStep):
            steps.append(item)
        else:
            state, at_s, *rest = item
            steps.append(
                ScriptStep(JobState(state), float(at_s), rest[0] if rest else None)
            )
    if not steps or steps[0].at_s != 0:
        raise ValueError("a script starts with its first state at 0 s")
    for before, after in zip(steps, steps[1:], strict=False):
        if after.at_s < before.at_s:
            raise ValueError(
                f"script times must ascend: {before.at_s} then {after.at_s}"
            )
        check_transition(before.state, after.state)
    return steps


class ScriptedProvider(Provider):
    """A provider whose jobs follow a script on a fake clock; see the module docstring.

    Args:
        clock: The clock the script follows; share it with the broker under test.
        script: ``(state, at_s)`` or ``(state, at_s, secondary)`` steps, or
            :class:`ScriptStep`; every job submitted follows it from its own submit.
        name: The provider name reported in refs and errors.
        usd_per_s: Price of the job's one resource per second while it is held.
        cancel_delay_s: Time from the stop call to ``cancelled``.
        submit_errors: Errors raised by the next submits, in order, one each.
        lose_submit_reply: The first submit creates the job, then raises a transient
            error as if the reply were lost.
        poll_errors: Poll number (1-based) -> error raised at that poll.
        queued_error: An error reported on the status of every poll while queued.
        expired_polls: Poll numbers that raise :class:`CredentialsExpiredError` until
            a refresh succeeds.
        refresher: Called by :meth:`refresh_credentials`; True when it renewed them.
        predictions: ``"model"`` (a real scikit-learn model) or ``"prior"``.
    """

    name: ClassVar[str] = "scripted"  # type: ignore[misc]
    kind: ClassVar[Literal["cloud", "local"]] = "cloud"

    def __init__(
        self,
        *,
        clock: FakeClock,
        script: Sequence[Any] = (("queued", 0), ("running", 30), ("succeeded", 300)),
        name: str = "scripted",
        usd_per_s: Decimal = Decimal("0"),
        cancel_delay_s: float = 20.0,
        submit_errors: Sequence[ProviderError] = (),
        lose_submit_reply: bool = False,
        poll_errors: dict[int, ProviderError] | None = None,
        queued_error: ProviderError | None = None,
        expired_polls: Iterable[int] = (),
        refresher: Callable[[], bool] | None = None,
        predictions: Literal["model", "prior"] = "model",
    ) -> None:
        if cancel_delay_s < 0:
            raise ValueError(f"cancel_delay_s must be >= 0, got {cancel_delay_s}")
        self.name = name  # type: ignore[misc]
        self.clock = clock
        self.script = _steps(script)
        self.usd_per_s = usd_per_s
        self.cancel_delay_s = cancel_delay_s
        self.cancel_latency_s = cancel_delay_s
        self.submit_errors = list(submit_errors)
        self.lose_submit_reply = lose_submit_reply
        self.poll_errors = dict(poll_errors or {})
        self.queued_error = queued_error
        self.expired_polls = set(expired_polls)
        self.refresher = refresher
        self.predictions = predictions
        self.calls: list[ScriptedCall] = []
        self.backend_calls: list[ScriptedCall] = []
        self.poll_count = 0
        self.credentials_refreshed = False
        self._jobs: dict[str, _Job] = {}

    # --- what happened --------------------------------------------------------------

    @property
    def call_names(self) -> list[str]:
        """Adapter method names in call order: ``["submit", "poll", "cancel", ...]``."""
        return [c.method for c in self.calls]

    @property
    def backend_call_names(self) -> list[str]:
        """What the service received: ``"create"``, ``"describe"``, ``"stop"``."""
        return [c.method for c in self.backend_calls]

    @property
    def job_count(self) -> int:
        """Jobs that exist on the service."""
        return len(self._jobs)

    @property
    def active_resources(self) -> int:
        """Jobs holding a billable resource now; 0 once every job has ended."""
        return sum(
            1 for j in self._jobs.values() if self._state(j)[0] in BILLABLE_STATES
        )

    def state_at(self, ref: ProviderJobRef, at_s: float) -> JobState:
        """The job's state at clock time `at_s`, without a call being recorded."""
        return self._state(self._job(ref), at_s)[0]

    def billed_usd(self, ref: ProviderJobRef) -> Decimal | None:
        return self.accrued_usd(ref)

    def accrued_usd(self, ref: ProviderJobRef) -> Decimal:
        """Exact dollars billed so far: seconds holding the resource times the rate."""
        return self.usd_per_s * Decimal(repr(self._billed_s(self._job(ref))))

    # --- the provider interface -----------------------------------------------------

    def availability(self) -> Availability:
        return Availability(True, "scripted test provider", "script")

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        self._record("submit", None)
        if self.submit_errors:
            raise self.submit_errors.pop(0)
        existing = self.find_by_idempotency_key(job.idempotency_key, record=False)
        if existing is not None:
            return existing

        job_id = (
            f"{self.name}-"
            + hashlib.sha256(job.idempotency_key.encode()).hexdigest()[:12]
        )
        ref = ProviderJobRef(self.name, job_id, job.idempotency_key, job.region)
        self._jobs[job_id] = _Job(ref, self.clock.monotonic(), job.train)
        self.backend_calls.append(
            ScriptedCall("create", self.clock.monotonic(), job_id)
        )
        if self.lose_submit_reply:
            self.lose_submit_reply = False
            raise TransientProviderError(
                f"{self.name}: the reply to create was lost (job {job_id} exists)",
                provider=self.name,
                original_type="ReadTimeoutError",
            )
        return ref

    def find_by_idempotency_key(
        self, key: str, *, record: bool = True
    ) -> ProviderJobRef | None:
        if record:
            self._record("find", None)
        for job in self._jobs.values():
            if job.ref.idempotency_key == key:
                return job.ref
        return None

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        self._record("poll", ref.job_id)
        self.poll_count += 1
        job = self._job(ref)
        if self.poll_count in self.expired_polls and not self.credentials_refreshed:
            raise CredentialsExpiredError(
                f"{self.name}: ExpiredToken while polling job {ref.job_id}; the job may "
                "still be running and billing",
                provider=self.name,
                code=401,
                original_type="ExpiredTokenException",
                provider_job_id=ref.job_id,
            )
        if self.poll_count in self.poll_errors:
            fault = self.poll_errors[self.poll_count]
            fault.provider_job_id = fault.provider_job_id or ref.job_id
            raise fault

        self.backend_calls.append(
            ScriptedCall("describe", self.clock.monotonic(), ref.job_id)
        )
        state, secondary = self._state(job)
        error: Exception | None = None
        if state == JobState.QUEUED and self.queued_error is not None:
            error = self.queued_error
        elif state == JobState.FAILED:
            error = ProviderJobFailedError(
                f"{self.name} job {ref.job_id} failed",
                provider=self.name,
                provider_job_id=ref.job_id,
            )
        return ProviderStatus(
            state=state,
            secondary=secondary,
            message=str(error) if error else None,
            error=error,
        )

    def cancel(self, ref: ProviderJobRef) -> None:
        self._record("cancel", ref.job_id)
        job = self._job(ref)
        state = self._state(job)[0]
        if job.cancel_s is not None or state.terminal:
            return
        job.cancel_s = self.clock.monotonic()
        self.backend_calls.append(ScriptedCall("stop", job.cancel_s, ref.job_id))

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        self._record("result", ref.job_id)
        scripted = self._job(ref)
        state = self._state(scripted)[0]
        if state != JobState.SUCCEEDED:
            raise InvalidRequestError(
                f"{self.name} job {ref.job_id} is {state.value}; a result exists only "
                "once it succeeded",
                provider=self.name,
                provider_job_id=ref.job_id,
            )
        model = self._model(scripted, job)
        model_id = f"{ref.job_id}-{self.predictions}"
        return ProviderResult(
            leaderboard=[
                LeaderboardEntry(
                    model_id=model_id,
                    provider=self.name,
                    algorithm=_algorithm(model, job.schema.task),
                )
            ],
            best_model_id=model_id,
            provider_units={
                "billed_s": self._billed_s(scripted),
                "usd_per_s": str(self.usd_per_s),
            },
            actual_cost_usd=self.accrued_usd(ref),
            runtime_s=self._ended_s(scripted) - scripted.submitted_s,
        )

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        import numpy as np

        self._record("predict", ref.job_id)
        scripted = self._job(ref)
        target = job.schema.target_safe_name
        model = self._model(scripted, job)
        if model is not None:
            features = [c for c in scripted.train.columns if c != target]
            if job.schema.task == Task.REGRESSION:
                return np.asarray(model.predict(frame[features]), dtype=float)
            return np.asarray(model.predict_proba(frame[features]), dtype=float)

        y = scripted.train[target]
        if job.schema.task == Task.REGRESSION:
            return np.full(len(frame), float(y.mean()))
        shares = [float((y == c).mean()) for c in job.schema.classes]
        return np.tile(np.array(shares), (len(frame), 1))

    def refresh_credentials(self) -> bool:
        """Ask the refresher for new credentials; afterwards expired polls succeed."""
        self._record("refresh_credentials", None)
        renewed = bool(self.refresher()) if self.refresher is not None else False
        if renewed:
            self.credentials_refreshed = True
        return renewed

    # --- the script -----------------------------------------------------------------

    def _record(self, method: str, job_id: str | None) -> None:
        self.calls.append(ScriptedCall(method, self.clock.monotonic(), job_id))

    def _job(self, ref: ProviderJobRef) -> _Job:
        try:
            return self._jobs[ref.job_id]
        except KeyError:
            raise ProviderJobFailedError(
                f"{self.name} has no job {ref.job_id}",
                provider=self.name,
                code="NotFound",
                provider_job_id=ref.job_id,
            ) from None

    def _state(
        self, job: _Job, now: float | None = None
    ) -> tuple[JobState, str | None]:
        now = self.clock.monotonic() if now is None else now
        scripted = self._scripted_step(job, now)
        if job.cancel_s is None or now < job.cancel_s:
            return scripted.state, scripted.secondary or scripted.state.value
        before_cancel = self._scripted_step(job, job.cancel_s)
        if before_cancel.state.terminal:
            return (
                before_cancel.state,
                before_cancel.secondary or before_cancel.state.value,
            )
        if now >= job.cancel_s + self.cancel_delay_s:
            return JobState.CANCELLED, "Stopped"
        return JobState.CANCELLING, "Stopping"

    def _scripted_step(self, job: _Job, now: float) -> ScriptStep:
        elapsed = now - job.submitted_s
        current = self.script[0]
        for step in self.script:
            if step.at_s <= elapsed:
                current = step
        return current

    def _ended_s(self, job: _Job) -> float:
        """Clock time the job ended, or now while it runs."""
        now = self.clock.monotonic()
        if (
            job.cancel_s is not None
            and not self._scripted_step(job, job.cancel_s).state.terminal
        ):
            return min(now, job.cancel_s + self.cancel_delay_s)
        for step in self.script:
            if step.state.terminal and job.submitted_s + step.at_s <= now:
                return job.submitted_s + step.at_s
        return now

    def _billed_s(self, job: _Job) -> float:
        """Seconds between entering a billable state and the end of the job."""
        end = self._ended_s(job)
        start = next(
            (
                job.submitted_s + s.at_s
                for s in self.script
                if s.state in BILLABLE_STATES
            ),
            None,
        )
        if start is None or start >= end:
            return 0.0
        return end - start

    def _model(self, scripted: _Job, job: ProviderJob) -> Any:
        if self.predictions != "model":
            return None
        if scripted.model is None:
            # The service trains on the data it received at submit, not on what a
            # later (resumed) caller holds.
            scripted.model = _fit(job, scripted.train)
        return scripted.model


def _fit(job: ProviderJob, train: Any) -> Any:
    """A small scikit-learn pipeline fitted on the job's training frame."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    target = job.schema.target_safe_name
    x = train.drop(columns=target)
    numeric = [c for c in x.columns if x[c].dtype.kind in "biuf"]
    categorical = [c for c in x.columns if c not in numeric]
    preprocess = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    if job.schema.task == Task.REGRESSION:
        return make_pipeline(preprocess, Ridge()).fit(x, train[target])
    model = make_pipeline(preprocess, LogisticRegression(max_iter=1000))
    model.fit(x, train[target])
    classes = list(model.classes_)
    missing = [c for c in job.schema.classes if c not in classes]
    if missing:
        raise InvalidRequestError(
            f"training rows lack classes {missing}", provider="scripted"
        )
    return _Reordered(model, [classes.index(c) for c in job.schema.classes])


def _algorithm(model: Any, task: Task) -> str:
    if model is None:
        return "prior"
    return "ridge" if task == Task.REGRESSION else "logistic_regression"


@dataclass
class _Reordered:
    """A classifier whose probability columns follow the schema's class order."""

    model: Any
    order: list[int] = field(default_factory=list)

    def predict_proba(self, frame: Any) -> Any:
        return self.model.predict_proba(frame)[:, self.order]

    def predict(self, frame: Any) -> Any:
        return self.model.predict(frame)
