"""The broker loop: take a spec through intake and planning, then walk the plan's candidates.

For each candidate the loop records the attempt in the store before calling the provider,
submits (attaching to an existing job with the same idempotency key after a lost reply),
polls until the job ends while enforcing the pending timeout and the dollar cap, fetches the
result and scores the best model on the broker's own held-out rows. Quota, capacity,
credential and availability errors fail over to the next candidate; a bad request never does.

The SDK entry point is :class:`Broker`::

    broker = Broker()
    result = broker.run(JobSpec(data="adult.csv", target="class"))
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import (
    BrokerError,
    CredentialsExpiredError,
    InputError,
    JobConflictError,
    NoModelTrainedError,
    PendingTimeoutError,
    PlanningError,
    ProviderError,
    ProviderJobFailedError,
    ProviderWarning,
)
from broker.predict import HOLDOUT_FILE
from broker.providers import Provider, create_provider
from broker.providers.base import ProviderJob, ProviderJobRef, ProviderStatus
from broker.spec import (
    CostSummary,
    FailoverRecord,
    JobResult,
    JobSpec,
    LeaderboardEntry,
)
from broker.states import JobState

if TYPE_CHECKING:
    from broker.intake import Dataset, HoldoutSplit
    from broker.planner import Candidate, Plan
    from broker.store import JobStore

logger = logging.getLogger(__name__)

EventHook = Callable[[str, dict[str, Any]], None]


@dataclass
class Prepared:
    """A spec after intake and planning: what `plan` shows and `run` executes."""

    spec: JobSpec
    dataset: Dataset
    split: HoldoutSplit
    plan: Plan
    holdout: Dataset | None = (
        None  # a separate labelled test set, when the spec gives one
    )


@dataclass
class _Attempt:
    candidate: Candidate
    provider: Provider
    job: ProviderJob
    attempt_id: str
    ref: ProviderJobRef | None = None
    states: list[JobState] = field(default_factory=list)
    accrued_usd: Decimal = Decimal("0")
    charged_usd: Decimal | None = None  # what the provider billed, once known
    cancel_sent: bool = False


class Broker:
    """Plans and runs AutoML jobs across providers.

    Args:
        store: the job store; None opens the default embedded one.
        providers: ready provider objects by name (tests pass fakes here); names missing
            from it are created from `provider_settings` on first use.
        provider_settings: keyword settings per provider name, from the user's config.
        clock: time source; tests pass a FakeClock.
        poll_interval_s: seconds between status polls of a running job.
        pending_timeout_s: how long a job may sit queued before it is cancelled and the next
            candidate is tried.
        max_retries: tries of a call that failed with a retryable error.
        backoff_s: first wait between retries; doubles each time.
        on_event: called with (kind, payload) for progress display.
    """

    def __init__(
        self,
        *,
        store: JobStore | None = None,
        providers: dict[str, Provider] | None = None,
        provider_settings: dict[str, dict[str, Any]] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval_s: float = 2.0,
        pending_timeout_s: float = 600.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        catalog: Any = None,
        local_rate_usd_per_hour: Decimal | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self._store = store
        self._providers: dict[str, Provider] = dict(providers or {})
        self._settings = dict(provider_settings or {})
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.pending_timeout_s = pending_timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.catalog = catalog
        self.local_rate_usd_per_hour = local_rate_usd_per_hour
        self._on_event = on_event
        self._cancel_requests: set[str] = set()

    # --- public API --------------------------------------------------------------------

    @property
    def store(self) -> JobStore:
        if self._store is None:
            from broker.store import JobStore

            self._store = JobStore()
        return self._store

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            settings = dict(self._settings.get(name, {}))
            if name == "local" and self.local_rate_usd_per_hour is not None:
                settings.setdefault("rate_usd_per_hour", self.local_rate_usd_per_hour)
            self._providers[name] = create_provider(name, **settings)
        return self._providers[name]

    def prepare(self, spec: JobSpec) -> Prepared:
        """Intake and planning: everything that happens before any money is spent."""
        from broker import intake

        dataset = intake.load_dataset(spec)
        holdout = None
        if spec.holdout_data is not None:
            holdout = intake.load_holdout(spec, dataset.schema)
        split = intake.split_holdout(dataset, spec.holdout_fraction, spec.seed)
        plan = self.plan_for(spec, dataset)
        return Prepared(
            spec=spec, dataset=dataset, split=split, plan=plan, holdout=holdout
        )

    def plan_for(self, spec: JobSpec, dataset: Dataset) -> Plan:
        from broker.planner import make_plan
        from broker.spec import PROVIDER_NAMES

        allowed = spec.constraints.providers or list(PROVIDER_NAMES)
        availability = {}
        for name in PROVIDER_NAMES:
            if name not in allowed:
                continue
            try:
                availability[name] = self.provider(name).availability()
            except (ProviderError, ImportError) as exc:
                from broker.providers.base import Availability

                availability[name] = Availability(False, f"cannot be loaded: {exc}")
        kwargs: dict[str, Any] = {"availability": availability}
        if self.catalog is not None:
            kwargs["catalog"] = self.catalog
        if self.local_rate_usd_per_hour is not None:
            kwargs["local_rate_usd_per_hour"] = self.local_rate_usd_per_hour
        return make_plan(spec, dataset.schema, **kwargs)

    def run(
        self,
        spec: JobSpec,
        *,
        run_dir: str | Path | None = None,
        idempotency_key: str | None = None,
        prepared: Prepared | None = None,
    ) -> JobResult:
        """Run the job to the end and return its result.

        Raises:
            InputError: the data or spec is wrong (before anything is submitted).
            PlanningError: no candidate is feasible.
            NoModelTrainedError: every candidate ran out of budget before a model finished.
            ProviderError: a provider failed in a way that must not fail over.
        """
        prepared = prepared or self.prepare(spec)
        plan = prepared.plan
        if not plan.candidates:
            raise PlanningError(
                "no provider can run this job:\n" + plan.explanation(),
                rejections=list(plan.rejections),
            )

        key = idempotency_key or uuid.uuid4().hex[:16]
        new_id = f"job-{uuid.uuid4().hex[:16]}"
        folder = (Path(run_dir) if run_dir else Path("runs") / new_id).resolve()
        record = self.store.create_job(
            spec=spec.to_dict(),
            idempotency_key=key,
            run_dir=str(folder),
            name=spec.name,
            job_id=new_id,
        )
        job_id = record.job_id
        if job_id != new_id:
            raise JobConflictError(
                f"idempotency key {key!r} already belongs to job {job_id}; resume that "
                f"job (`automl-broker resume {job_id}`) or use a new key"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.store.set_plan(job_id, plan.to_dict())
        self._write_inputs(folder, prepared)
        self._emit("plan", {"job_id": job_id, "plan": plan, "run_dir": folder})

        from broker import reports

        started = self.clock.monotonic()
        failovers: list[FailoverRecord] = []
        last_error: BrokerError | None = None
        spent_usd = Decimal("0")
        for number, candidate in enumerate(plan.candidates, start=1):
            attempt = self._new_attempt(
                prepared, candidate, job_id, key, number, folder
            )
            try:
                result = self._run_attempt(attempt, prepared, folder, started)
            except ProviderError as exc:
                last_error = exc
                if not exc.failover_allowed:
                    self._fail(job_id, attempt, exc)
                    raise
                failovers.append(self._record_failover(job_id, attempt, exc))
                continue
            except NoModelTrainedError as exc:
                # Fail over only while budget remains: money already charged counts.
                last_error = exc
                spent_usd += exc.charged_usd or Decimal("0")
                over_money = (
                    spec.budget.max_usd is not None and spent_usd >= spec.budget.max_usd
                )
                if over_money or self._budget_left_s(spec, started) <= 0:
                    self._fail(job_id, attempt, exc)
                    raise
                failovers.append(self._record_failover(job_id, attempt, exc))
                continue
            result.failovers = failovers
            result.job_id = job_id
            if result.state == JobState.DETACHED.value:
                reports.write_run_folder(folder, result)
                self.store.set_result(job_id, result.model_dump(mode="json"))
                return result
            self._finish(job_id, attempt, result, folder)
            return result

        error = {"type": type(last_error).__name__, "message": str(last_error)}
        self.store.set_result(job_id, {"error": error, "failovers": len(failovers)})
        self.store.transition(job_id, JobState.FAILED, error=error)
        if isinstance(last_error, NoModelTrainedError):
            raise last_error
        raise PlanningError(
            "every candidate failed; last error: "
            f"{type(last_error).__name__}: {last_error}",
            rejections=[f.model_dump(mode="json") for f in failovers],
        )

    def cancel(self, job_id: str) -> bool:
        """Ask for a running job to be cancelled; the broker loop sends the one cancel.

        Returns:
            True when the cancel was newly asked for; False when the job has already
            ended or a cancel is already on its way (a second cancel is a no-op).
        """
        record = self.store.get(job_id)
        if record.state.terminal or job_id in self._cancel_requests:
            logger.info(
                "job %s: cancel is a no-op (state %s)", job_id, record.state.value
            )
            return False
        # TODO(cross-process-cancel): a cancel reaches only a loop in this process; a
        # loop in another process should see it through the store.
        self._cancel_requests.add(job_id)
        return True

    def resume(self, job_id: str) -> JobResult:
        """Reattach to a job whose provider job was left running (the broker stopped or
        the credentials expired) and follow it to the end, without submitting again."""
        from broker.intake import to_safe_frame

        record = self.store.get(job_id)
        open_attempts = [
            a
            for a in self.store.attempts(job_id)
            if a.provider_ref and (not a.state.terminal)
        ]
        if not open_attempts:
            raise InputError(
                f"job {job_id} has no provider job to reattach to (state "
                f"{record.state.value}); start a new run instead"
            )
        if not record.run_dir or not Path(record.run_dir).is_dir():
            raise InputError(
                f"job {job_id}'s run folder {record.run_dir!r} is gone; it holds the "
                "held-out rows needed to score the model"
            )
        found = open_attempts[-1]
        folder = Path(record.run_dir)
        prepared = _prepared_from_folder(folder, record.spec)
        candidate = _StoredCandidate(
            provider=found.provider,
            machine=found.machine,
            region=found.region,
            quote=SimpleNamespace(**found.quote),
            rank_reason="resumed",
        )
        job = ProviderJob(
            job_id=job_id,
            idempotency_key=found.idempotency_key,
            spec=prepared.spec,
            schema=prepared.dataset.schema,
            train=to_safe_frame(
                prepared.dataset.frame.iloc[0:0], prepared.dataset.schema
            ),
            machine=found.machine,
            region=found.region,
            runtime_limit_s=float(prepared.spec.budget.max_runtime_s),
            run_dir=folder,
            max_usd=prepared.spec.budget.max_usd,
        )
        ref_data = dict(found.provider_ref or {})
        attempt = _Attempt(
            candidate=candidate,  # type: ignore[arg-type]
            provider=self.provider(found.provider),
            job=job,
            attempt_id=found.attempt_id,
            ref=ProviderJobRef(**ref_data),
            states=[found.state],
        )
        logger.info(
            "job %s: reattaching to %s job %s",
            job_id,
            found.provider,
            attempt.ref.job_id if attempt.ref else "?",
        )
        started = self.clock.monotonic()
        result = self._complete(attempt, prepared, started)
        result.job_id = job_id
        if result.state == JobState.DETACHED.value:
            return result
        self._finish(job_id, attempt, result, folder)
        return result

    # --- one attempt -------------------------------------------------------------------

    def _new_attempt(
        self,
        prepared: Prepared,
        candidate: Candidate,
        job_id: str,
        key: str,
        number: int,
        folder: Path,
    ) -> _Attempt:
        from broker.intake import to_safe_frame

        spec = prepared.spec
        provider = self.provider(candidate.provider)
        train = prepared.dataset.frame.loc[prepared.split.train_index]
        attempt_key = f"{key}-{number}"
        job = ProviderJob(
            job_id=job_id,
            idempotency_key=attempt_key,
            spec=spec,
            schema=prepared.dataset.schema,
            train=to_safe_frame(train, prepared.dataset.schema, include_target=True),
            machine=candidate.machine,
            region=candidate.region,
            runtime_limit_s=float(spec.budget.max_runtime_s),
            run_dir=folder,
            max_usd=spec.budget.max_usd,
            options=dict(spec.provider_options.get(candidate.provider, {})),
        )
        record = self.store.start_attempt(
            job_id,
            provider=candidate.provider,
            machine=candidate.machine,
            region=candidate.region,
            quote=_quote_dict(candidate),
            idempotency_key=attempt_key,
        )
        attempt = _Attempt(
            candidate=candidate,
            provider=provider,
            job=job,
            attempt_id=record.attempt_id,
        )
        self._emit("attempt", {"candidate": candidate, "number": number})
        logger.info(
            "job %s: trying %s (%s, %s)",
            job_id,
            candidate.provider,
            candidate.machine,
            candidate.region,
        )
        return attempt

    def _run_attempt(
        self, attempt: _Attempt, prepared: Prepared, folder: Path, started: float
    ) -> JobResult:
        ref = self._submit(attempt)
        attempt.ref = ref
        self.store.set_provider_ref(attempt.attempt_id, _ref_dict(ref), ref.job_id)
        self._move(attempt, JobState.QUEUED)
        return self._complete(attempt, prepared, started)

    def _complete(
        self, attempt: _Attempt, prepared: Prepared, started: float
    ) -> JobResult:
        """Follow a submitted attempt to its end and turn that end into a result."""
        ref = _submitted(attempt)
        status = self.follow(attempt)
        if status.state == JobState.DETACHED:
            return self._unfinished_result(attempt, prepared, status, started)
        if status.state == JobState.FAILED:
            raise status.error or ProviderJobFailedError(
                f"{attempt.candidate.provider} ended job {ref.job_id} as failed "
                f"({status.message or status.secondary})",
                provider=attempt.candidate.provider,
                provider_job_id=ref.job_id,
            )
        if status.state == JobState.STOPPED:
            warnings.warn(
                f"{attempt.candidate.provider} stopped job {ref.job_id} itself "
                f"({status.secondary or 'no reason given'}); the run ends as stopped",
                ProviderWarning,
                stacklevel=2,
            )

        try:
            provider_result = self._call(
                attempt, lambda: attempt.provider.result(ref, attempt.job)
            )
        except (ProviderError, NoModelTrainedError) as exc:
            if status.state == JobState.SUCCEEDED:
                raise
            # A cancelled or stopped job often has no model; the run still ends cleanly.
            return self._unfinished_result(attempt, prepared, status, started, exc)
        return self._score(attempt, prepared, provider_result, status, started)

    def _submit(self, attempt: _Attempt) -> ProviderJobRef:
        """Submit once; after a failed create, look for the job before creating again."""
        provider, job = attempt.provider, attempt.job
        for try_number in range(1, self.max_retries + 1):
            try:
                if try_number > 1:
                    existing = provider.find_by_idempotency_key(job.idempotency_key)
                    if existing is not None:
                        logger.info(
                            "job %s: attached to %s job %s created by an earlier try",
                            job.job_id,
                            provider.name,
                            existing.job_id,
                        )
                        return existing
                return provider.submit(job)
            except ProviderError as exc:
                if not exc.retryable or try_number == self.max_retries:
                    raise
                self._backoff(try_number, exc)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _call(self, attempt: _Attempt, fn: Callable[[], Any]) -> Any:
        for try_number in range(1, self.max_retries + 1):
            try:
                return fn()
            except ProviderError as exc:
                if not exc.retryable or try_number == self.max_retries:
                    raise
                self._backoff(try_number, exc)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _backoff(self, try_number: int, exc: ProviderError) -> None:
        wait_s = self.backoff_s * 2 ** (try_number - 1)
        logger.warning(
            "%s: %s (%s); retrying in %.1f s",
            exc.provider,
            exc.reason,
            exc.code,
            wait_s,
        )
        self.clock.sleep(wait_s)

    def follow(self, attempt: _Attempt) -> ProviderStatus:
        """Poll until the job ends; enforce the pending timeout, the dollar cap and a
        cancel the user asked for."""
        ref = _submitted(attempt)
        provider, job_id = attempt.provider, attempt.job.job_id
        queued_since = last_poll = self.clock.monotonic()
        running_since: float | None = None
        cancel_sent = False
        while True:
            status = self._poll(attempt)
            now = self.clock.monotonic()
            if cancel_sent and status.state == JobState.STOPPED:
                # The provider's word for a stop we asked for.
                status = replace(status, state=JobState.CANCELLED)
            self._move(attempt, status.state, status.secondary)
            self._emit("status", {"status": status, "provider": provider.name})
            if status.state.terminal or status.state == JobState.DETACHED:
                return status

            if not cancel_sent and job_id in self._cancel_requests:
                logger.info(
                    "job %s: cancelling %s job %s", job_id, provider.name, ref.job_id
                )
                self._cancel_once(attempt)
                cancel_sent = True
            if status.state == JobState.QUEUED and not cancel_sent:
                self._check_queue(attempt, status, now - queued_since)
            elif status.state == JobState.RUNNING and running_since is None:
                # Billing may have started any time since the last poll: count from it.
                running_since = last_poll
            if running_since is not None and not cancel_sent:
                cancel_sent = self._watch_budget(attempt, now - running_since)
            last_poll = now
            self.clock.sleep(self.poll_interval_s)

    def _check_queue(
        self, attempt: _Attempt, status: ProviderStatus, queued_s: float
    ) -> None:
        """Give up on a queued job that reports a quota error or outstays its welcome."""
        ref = _submitted(attempt)
        error: ProviderError | None = None
        if isinstance(status.error, ProviderError):
            error = status.error
        elif queued_s >= self.pending_timeout_s:
            error = PendingTimeoutError(
                f"{attempt.provider.name} job {ref.job_id} stayed queued for "
                f"{queued_s:.0f} s (pending timeout {self.pending_timeout_s:.0f} s); "
                "cancelled it",
                provider=attempt.provider.name,
                provider_job_id=ref.job_id,
            )
        if error is None:
            return
        self._cancel_once(attempt)
        self._settle_cancel(attempt)
        raise error

    def _poll(self, attempt: _Attempt) -> ProviderStatus:
        assert attempt.ref is not None
        provider, ref = attempt.provider, attempt.ref
        for try_number in range(1, self.max_retries + 1):
            try:
                return provider.poll(ref)
            except CredentialsExpiredError as exc:
                refresh = getattr(provider, "refresh_credentials", None)
                if refresh is not None and refresh():
                    logger.warning(
                        "%s: credentials expired while polling %s; refreshed them",
                        provider.name,
                        ref.job_id,
                    )
                    continue
                exc.provider_job_id = exc.provider_job_id or ref.job_id
                return ProviderStatus(
                    state=JobState.DETACHED,
                    secondary="CredentialsExpired",
                    message=(
                        f"credentials expired and could not be refreshed; the "
                        f"{provider.name} job {ref.job_id} may still be running and "
                        "billing. Renew the credentials, then `automl-broker resume`."
                    ),
                    error=exc,
                )
            except ProviderError as exc:
                if not exc.retryable or try_number == self.max_retries:
                    raise
                self._backoff(try_number, exc)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _watch_budget(self, attempt: _Attempt, running_s: float) -> bool:
        """Accrue cost from elapsed time; cancel before the next poll would pass the cap."""
        rate = _usd_per_second(attempt.candidate)
        cap = attempt.job.max_usd
        if rate is None or cap is None:
            return False
        attempt.accrued_usd = rate * Decimal(str(round(running_s, 3)))
        next_poll_usd = rate * Decimal(str(self.poll_interval_s))
        # Cancel early enough that billing during the cancel still fits under the cap.
        margin_usd = rate * Decimal(str(attempt.provider.cancel_latency_s))
        if attempt.accrued_usd + next_poll_usd + margin_usd < cap:
            return False
        logger.warning(
            "%s: accrued $%s of max_usd $%s; cancelling job %s",
            attempt.provider.name,
            attempt.accrued_usd,
            cap,
            attempt.ref.job_id if attempt.ref else "?",
        )
        self._cancel_once(attempt)
        return True

    def _cancel_once(self, attempt: _Attempt) -> None:
        if attempt.cancel_sent or attempt.ref is None:
            return
        attempt.cancel_sent = True
        ref = attempt.ref
        self._move(attempt, JobState.CANCELLING)
        self._call(attempt, lambda: attempt.provider.cancel(ref))

    def _settle_cancel(self, attempt: _Attempt) -> None:
        """After a cancel of a stuck job, poll until the provider confirms it ended."""
        for _ in range(10):
            self.clock.sleep(self.poll_interval_s)
            status = self._poll(attempt)
            if status.state.terminal:
                final = (
                    JobState.CANCELLED
                    if status.state == JobState.STOPPED
                    else status.state
                )
                self._move(attempt, final, status.secondary)
                return
        logger.warning(
            "%s job %s did not confirm the cancel after 10 polls",
            attempt.provider.name,
            attempt.ref.job_id if attempt.ref else "?",
        )

    def _move(
        self, attempt: _Attempt, state: JobState, secondary: str | None = None
    ) -> None:
        """Record the attempt's new state. An attempt's end is the attempt's alone: the
        job itself ends only when the whole plan is done (see `_finish` and `_fail`)."""
        if attempt.states and attempt.states[-1] == state:
            return
        attempt.states.append(state)
        if state.terminal or state == JobState.DETACHED:
            self.store.finish_attempt(
                attempt.attempt_id, state=state, cost_usd=attempt.charged_usd
            )
            if state == JobState.DETACHED:
                self.store.transition(
                    attempt.job.job_id,
                    state,
                    attempt_id=attempt.attempt_id,
                    secondary=secondary,
                )
            return
        self.store.transition(
            attempt.job.job_id,
            state,
            attempt_id=attempt.attempt_id,
            secondary=secondary,
        )

    # --- scoring and results -----------------------------------------------------------

    def _score(
        self,
        attempt: _Attempt,
        prepared: Prepared,
        provider_result: Any,
        status: ProviderStatus,
        started: float,
    ) -> JobResult:
        from broker.intake import to_safe_frame
        from broker.metrics import compute_metrics, get_metric

        ref = _submitted(attempt)
        spec, schema = prepared.spec, prepared.dataset.schema
        metric_name = spec.metric_for(schema.task)
        metric = get_metric(metric_name)
        if prepared.holdout is not None:
            test_frame = prepared.holdout.frame
        else:
            test_frame = prepared.dataset.frame.loc[prepared.split.test_index]
        features = to_safe_frame(test_frame, schema, include_target=False)
        y_true = test_frame[schema.target].to_numpy()

        predictions = self._call(
            attempt,
            lambda: attempt.provider.predict(ref, attempt.job, features),
        )
        report = compute_metrics(schema, y_true, predictions)
        leaderboard: list[LeaderboardEntry] = list(provider_result.leaderboard)
        best_id = provider_result.best_model_id
        for entry in leaderboard:
            if entry.model_id == best_id:
                entry.metrics = dict(report.values)
        # The provider ranks its models by its own validation scores; the best comes first.
        leaderboard.sort(key=lambda e: e.model_id != best_id)

        actual = provider_result.actual_cost_usd
        if actual is None:
            actual = self._billed(attempt)
        cost = self._cost_summary(attempt, actual, dict(provider_result.provider_units))
        notes = list(report.notes) + list(provider_result.notes)
        return JobResult(
            job_id=attempt.job.job_id,
            state=status.state.value,
            provider=attempt.candidate.provider,
            machine=attempt.candidate.machine,
            region=attempt.candidate.region,
            task=schema.task,
            metric=metric_name,
            metric_direction=metric.direction,
            leaderboard=leaderboard,
            best_model_id=best_id,
            holdout_metrics=dict(report.values),
            holdout_n=report.n,
            holdout_notes=notes,
            cost=cost,
            chosen_because=getattr(attempt.candidate, "rank_reason", None),
            run_dir=str(attempt.job.run_dir),
            runtime_s=round(self.clock.monotonic() - started, 3),
        )

    def _unfinished_result(
        self,
        attempt: _Attempt,
        prepared: Prepared,
        status: ProviderStatus,
        started: float,
        error: BaseException | None = None,
    ) -> JobResult:
        """The result of a run that ended without a model: detached, cancelled, stopped."""
        from broker.metrics import get_metric

        ref = _submitted(attempt)
        schema = prepared.dataset.schema
        metric_name = prepared.spec.metric_for(schema.task)
        error = error or status.error
        payload: dict[str, Any] = (
            error.to_dict() if isinstance(error, ProviderError) else {}
        )
        if error is not None and not payload:
            payload = {"type": type(error).__name__, "message": str(error)}
        payload.setdefault("message", status.message or status.state.value)
        payload["provider_job_id"] = ref.job_id
        if status.state == JobState.DETACHED:
            payload["message"] = status.message or payload["message"]
            payload["warning"] = (
                f"the {attempt.provider.name} job {ref.job_id} may still be running "
                "and billing; renew the credentials and resume the job"
            )
        billed = self._billed(attempt)
        return JobResult(
            job_id=attempt.job.job_id,
            state=status.state.value,
            provider=attempt.candidate.provider,
            machine=attempt.candidate.machine,
            region=attempt.candidate.region,
            task=schema.task,
            metric=metric_name,
            metric_direction=get_metric(metric_name).direction,
            cost=self._cost_summary(attempt, billed, {}),
            run_dir=str(attempt.job.run_dir),
            runtime_s=round(self.clock.monotonic() - started, 3),
            error=payload,
        )

    def _billed(self, attempt: _Attempt) -> Decimal | None:
        """What the attempt cost: the provider's own figure, else the budget watch's."""
        if attempt.ref is not None:
            try:
                billed = attempt.provider.billed_usd(attempt.ref)
            except ProviderError as exc:
                logger.warning(
                    "%s: cannot read the bill: %s", attempt.provider.name, exc
                )
                billed = None
            if billed is not None:
                return billed
        return attempt.accrued_usd if attempt.accrued_usd else None

    def _cost_summary(
        self, attempt: _Attempt, actual: Decimal | None, units: dict[str, Any]
    ) -> CostSummary:
        quote = attempt.candidate.quote
        return CostSummary(
            estimated_training_usd=getattr(quote, "training_usd_low", None),
            estimated_training_high_usd=getattr(quote, "training_usd_high", None),
            estimated_serving_usd_per_month=getattr(
                quote, "serving_usd_per_month", None
            ),
            actual_usd=actual,
            billing_unit=getattr(quote, "billing_unit", None),
            provider_units=units,
            price_source=getattr(quote, "price_source", None),
            user_supplied_price=bool(getattr(quote, "user_supplied", False)),
        )

    def _finish(
        self, job_id: str, attempt: _Attempt, result: JobResult, folder: Path
    ) -> None:
        from broker import reports

        reports.write_run_folder(folder, result)
        final = JobState(result.state)
        attempt.charged_usd = result.cost.actual_usd
        self._move(attempt, final)
        # The attempt may have ended during polling, before its cost was known.
        self.store.finish_attempt(
            attempt.attempt_id, state=final, cost_usd=result.cost.actual_usd
        )
        self.store.set_result(job_id, result.model_dump(mode="json"))
        self.store.transition(job_id, final)
        self._emit("result", {"result": result})

    def _fail(self, job_id: str, attempt: _Attempt, exc: BrokerError) -> None:
        if not (attempt.states and attempt.states[-1].terminal):
            attempt.charged_usd = getattr(exc, "charged_usd", None)
            self._move(attempt, JobState.FAILED)
        error = {"type": type(exc).__name__, "message": str(exc)}
        self.store.set_result(job_id, {"error": error})
        self.store.transition(job_id, JobState.FAILED, error=error)

    def _record_failover(
        self, job_id: str, attempt: _Attempt, exc: BrokerError
    ) -> FailoverRecord:
        record = FailoverRecord(
            provider=attempt.candidate.provider,
            machine=attempt.candidate.machine,
            region=attempt.candidate.region,
            reason=getattr(exc, "reason", type(exc).__name__),
            error_type=type(exc).__name__,
            message=str(exc),
            original_type=getattr(exc, "original_type", None),
            provider_job_id=attempt.ref.job_id if attempt.ref else None,
            at=self.clock.now(),
        )
        if not (attempt.states and attempt.states[-1].terminal):
            attempt.charged_usd = getattr(exc, "charged_usd", None)
            self._move(attempt, JobState.FAILED)
        self.store.record_failover(
            job_id, attempt.attempt_id, record.model_dump(mode="json")
        )
        self._emit("failover", {"record": record})
        logger.warning(
            "job %s: %s failed (%s: %s); failing over",
            job_id,
            attempt.candidate.provider,
            record.reason,
            exc,
        )
        return record

    def _write_inputs(self, folder: Path, prepared: Prepared) -> None:
        def dump(name: str, payload: Any) -> None:
            (folder / name).write_text(
                json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8"
            )

        dump("spec.json", prepared.spec.to_dict())
        dump("schema.json", prepared.dataset.schema.to_dict())
        dump(
            "split.json",
            {
                "holdout_fraction": prepared.spec.holdout_fraction,
                "seed": prepared.spec.seed,
                "train_index": [int(i) for i in prepared.split.train_index],
                "test_index": [int(i) for i in prepared.split.test_index],
            },
        )
        dump("plan.json", prepared.plan.to_dict())
        holdout = (
            prepared.holdout.frame
            if prepared.holdout is not None
            else prepared.dataset.frame.loc[prepared.split.test_index]
        )
        # The held-out rows travel with the run so `predict` can reproduce the metrics.
        holdout.to_csv(folder / HOLDOUT_FILE, index=False)

    def _budget_left_s(self, spec: JobSpec, started: float) -> float:
        return spec.budget.max_runtime_s - (self.clock.monotonic() - started)

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(kind, payload)


@dataclass(frozen=True)
class _StoredCandidate:
    """A candidate read back from the store, for a resumed job."""

    provider: str
    machine: str | None
    region: str | None
    quote: Any
    rank_reason: str


def _prepared_from_folder(folder: Path, spec_payload: dict[str, Any]) -> Prepared:
    """What scoring needs, from a run folder: the schema and the held-out rows."""
    import numpy as np

    from broker.intake import Dataset, HoldoutSplit, _normalise_labels, read_table
    from broker.schema import Schema
    from broker.spec import parse_spec

    schema = Schema.from_dict(json.loads((folder / "schema.json").read_text("utf-8")))
    frame, _ = read_table(folder / HOLDOUT_FILE)
    frame = frame[frame[schema.target].notna()].reset_index(drop=True)
    frame[schema.target] = _normalise_labels(frame[schema.target], schema)
    payload = {k: v for k, v in spec_payload.items() if k != "holdout_data"}
    spec = parse_spec(payload)
    dataset = Dataset(frame=frame, schema=schema, source=str(folder / HOLDOUT_FILE))
    split = HoldoutSplit(
        train_index=np.arange(0),
        test_index=np.arange(len(frame)),
        fraction=1.0,
        seed=spec.seed,
        stratified=False,
    )
    return Prepared(spec=spec, dataset=dataset, split=split, plan=None, holdout=dataset)  # type: ignore[arg-type]


def _submitted(attempt: _Attempt) -> ProviderJobRef:
    if attempt.ref is None:
        raise AssertionError("this step needs a submitted job")
    return attempt.ref


def _usd_per_second(candidate: Candidate) -> Decimal | None:
    quote = candidate.quote
    rate = getattr(quote, "usd_per_hour", None)
    if rate is None:
        return None
    return Decimal(rate) / Decimal(3600)


def _quote_dict(candidate: Candidate) -> dict[str, Any]:
    to_dict = getattr(candidate.quote, "to_dict", None)
    if callable(to_dict):
        payload: dict[str, Any] = to_dict()
        return payload
    return {"repr": repr(candidate.quote)}


def _ref_dict(ref: ProviderJobRef) -> dict[str, Any]:
    return {
        "provider": ref.provider,
        "job_id": ref.job_id,
        "idempotency_key": ref.idempotency_key,
        "region": ref.region,
        "extra": ref.extra,
    }
