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
import os
import signal
import socket
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, overload

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import (
    BrokerError,
    CredentialsError,
    CredentialsExpiredError,
    InputError,
    JobConflictError,
    NoModelTrainedError,
    PendingTimeoutError,
    PlanningError,
    ProviderError,
    ProviderJobFailedError,
    ProviderUnavailableError,
    ProviderWarning,
    QuotaExceededError,
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
    from broker.store import AttemptRecord, JobRecord, JobStore

logger = logging.getLogger(__name__)

EventHook = Callable[[str, dict[str, Any]], None]

CRASH_ENV = "AUTOML_BROKER_CRASH_AT"
# The key of the event detail that records a user's cancel request in the store.
CANCEL_REQUESTED = "cancel_requested_by"
_crash_hits: dict[str, int] = {}


def _crash_point(step: str) -> None:
    """Test hook: kill this process here when ``AUTOML_BROKER_CRASH_AT`` names `step`.

    Crash tests set ``AUTOML_BROKER_CRASH_AT=after_submit`` (die the first time the
    step is reached) or ``after_submit:3`` (the third time), then check that a new
    process resumes the job correctly. The steps: ``after_start_attempt``,
    ``after_submit``, ``after_set_ref``, ``after_running``, ``after_result``,
    ``after_set_result``. With the variable unset this is one environment lookup.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != step:
        return
    _crash_hits[step] = _crash_hits.get(step, 0) + 1
    if _crash_hits[step] >= int(count or 1):
        kill = getattr(signal, "SIGKILL", None)
        if kill is not None:
            os.kill(os.getpid(), kill)
        os._exit(137)


@dataclass
class Prepared:
    """A spec after intake and planning: what `plan` shows and `run` executes."""

    spec: JobSpec
    dataset: Dataset
    split: HoldoutSplit
    plan: Plan
    holdout: Dataset | None = None  # a separate labelled test set, when given
    started: float | None = None  # clock time when intake began, for the runtime budget


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
    resumed: bool = False  # picked up from the store by a restarted broker
    # Seconds from the poll before the job was first seen running to the latest poll.
    running_s: float | None = None


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
        lease_s: how long this broker's claim on a job lasts unless renewed (it is
            renewed at every poll); another process may take the job over after it.
        monthly_budgets: the month's dollar budget per project (key None: every job
            together); the planner rejects candidates that would pass what is left.
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
        lease_s: float = 300.0,
        monthly_budgets: dict[str | None, Decimal] | None = None,
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
        # The lease must outlast the wait between two polls, when it is renewed.
        self._lease_s = max(lease_s, 3 * poll_interval_s)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._driving: set[str] = set()
        self._created: list[str] = []  # providers this broker made, closed by close()
        self.monthly_budgets = dict(monthly_budgets or {})

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
            self._providers[name] = create_provider(name, **settings)
            self._created.append(name)
        return self._providers[name]

    def close(self) -> None:
        """Release what the providers this broker created hold (a JVM, sessions)."""
        for name in self._created:
            try:
                self._providers[name].close()
            except Exception as exc:  # closing must not hide the run's own outcome
                logger.warning("closing %s failed: %s", name, exc)
        self._created.clear()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def prepare(self, spec: JobSpec) -> Prepared:
        """Intake and planning: everything that happens before any money is spent."""
        import numpy as np

        from broker import intake

        # Intake is this machine's own work: timed on the real clock even when the
        # broker's clock is a fake one driving provider fakes.
        started = time.monotonic()
        dataset = intake.load_dataset(spec)
        if spec.holdout_data is not None:
            # The user's own test set scores the model, so every row of `data`
            # trains: none is held back for a split that would never be used.
            holdout = intake.load_holdout(spec, dataset.schema)
            split = intake.HoldoutSplit(
                train_index=np.arange(dataset.n_rows),
                test_index=np.arange(0),
                fraction=0.0,
                seed=spec.seed,
            )
        else:
            holdout = None
            split = intake.split_holdout(dataset, spec.holdout_fraction, spec.seed)
        plan = self.plan_for(spec, dataset)
        return Prepared(
            spec=spec,
            dataset=dataset,
            split=split,
            plan=plan,
            holdout=holdout,
            started=started,
        )

    def plan_for(self, spec: JobSpec, dataset: Dataset) -> Plan:
        from broker.planner import make_plan
        from broker.spec import PROVIDER_NAMES

        allowed = spec.constraints.providers or list(PROVIDER_NAMES)
        availability = {}
        placements = {}
        shapes = {}
        for name in PROVIDER_NAMES:
            if name not in allowed:
                continue
            try:
                provider = self.provider(name)
                availability[name] = provider.availability()
                placements[name] = provider.placement()
                shapes[name] = provider.run_shape
            except ImportError as exc:
                from broker.providers.base import Availability

                extra = _EXTRAS.get(name, name)
                availability[name] = Availability(
                    False,
                    f"its SDK is not installed ({exc}): pip install "
                    f"'automl-broker[{extra}]'",
                )
            except ProviderError as exc:
                from broker.providers.base import Availability

                availability[name] = Availability(False, f"cannot be set up: {exc}")
        kwargs: dict[str, Any] = {
            "availability": availability,
            "placements": placements,
            # the providers in use say how their jobs use machines; the planner asks
            # the provider classes only for those that could not be set up
            "shapes": shapes,
        }
        month = self._month_budget(spec)
        if month is not None:
            kwargs["month_budget_left_usd"] = month
        if self.catalog is not None:
            kwargs["catalog"] = self.catalog
        if self.local_rate_usd_per_hour is not None:
            kwargs["local_rate_usd_per_hour"] = self.local_rate_usd_per_hour
        return make_plan(spec, dataset.schema, **kwargs)

    def _month_budget(self, spec: JobSpec) -> Decimal | None:
        """What is left of the month's budget that applies to the spec's project."""
        from broker.planner import monthly_budget_left

        if spec.project is not None and spec.project in self.monthly_budgets:
            budget, project = self.monthly_budgets[spec.project], spec.project
        elif None in self.monthly_budgets:
            budget, project = self.monthly_budgets[None], None
        else:
            return None
        return monthly_budget_left(self.store, budget, project=project)

    def run(
        self,
        spec: JobSpec,
        *,
        run_dir: str | Path | None = None,
        idempotency_key: str | None = None,
        prepared: Prepared | None = None,
    ) -> JobResult:
        """Run the job to the end and return its result.

        The job is written to the store, under `idempotency_key`, before any provider
        is called. Running again with a key that already names a job (a retry after a
        crash, or a second process racing the first) starts nothing new: the call
        attaches to that job. It returns the job's stored result when it has ended,
        resumes it when nobody drives it, and otherwise waits for the process that
        drives it and returns the same result.

        Raises:
            InputError: the data or spec is wrong (before anything is submitted).
            PlanningError: no candidate is feasible.
            NoModelTrainedError: every candidate ran out of budget before a model finished.
            ProviderError: a provider failed in a way that must not fail over.
            JobConflictError: the key already belongs to a job with another spec.
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
        if self.store.find_by_idempotency_key(key) is None:
            _check_folder_free(folder)
        record = self.store.create_job(
            spec=spec.to_dict(),
            idempotency_key=key,
            run_dir=str(folder),
            name=spec.name,
            job_id=new_id,
            project=spec.project,
        )
        if record.job_id == new_id:
            try:
                _claim_folder(folder, new_id)
            except InputError as exc:
                # Another job took the folder in the meantime: this one never ran.
                error = {"type": type(exc).__name__, "message": str(exc)}
                self.store.transition(new_id, JobState.FAILED, error=error)
                raise
        if record.job_id != new_id:
            logger.info(
                "job %s: idempotency key %r already names this job; attaching to it",
                record.job_id,
                key,
            )
        return self._attach(record.job_id, prepared)

    def cancel(self, job_id: str) -> bool:
        """Ask for a job to be cancelled, from this process or any other.

        The request is written to the store. The process driving the job sees it at
        its next poll and sends the one cancel to the provider. When no live process
        drives the job (it crashed, or was never resumed), this call sends the cancel
        itself and leaves the job ``cancelling``; `resume` then follows it to the end.

        Returns:
            True when the cancel was newly asked for or sent; False when the job has
            already ended or a cancel is already on its way (a second cancel is a
            no-op).
        """
        record = self.store.get(job_id)
        if record.terminal:
            logger.info(
                "job %s: cancel is a no-op (state %s)", job_id, record.state.value
            )
            return False
        requested = self._note_cancel(record)
        if job_id in self._driving:
            return requested  # our own loop sends it at its next poll
        if not self._claim(job_id):
            logger.info("job %s: cancel left to its driver %s", job_id, record.owner)
            return requested
        try:
            sent = self._cancel_unattended(job_id)
        finally:
            self.store.release(job_id, self.owner)
        return requested or sent

    @overload
    def resume(self, job_id: str) -> JobResult: ...

    @overload
    def resume(self, job_id: None = None) -> list[JobResult]: ...

    def resume(self, job_id: str | None = None) -> JobResult | list[JobResult]:
        """Pick up jobs that a stopped broker left unfinished, without submitting twice.

        An attempt whose provider job is known is reattached and followed to the end;
        an attempt recorded before its submit was answered is looked up by its
        idempotency key first, and submitted only when the provider has no such job;
        an attempt that ended before the job's end was written is finished from the
        provider's result; a job between attempts goes on with the next candidate.

        Args:
            job_id: The job to resume. None resumes every unfinished job whose lease
                this broker can claim, oldest first, and skips the others.

        Returns:
            The job's result, or, without `job_id`, the results of the jobs resumed.

        Raises:
            InputError: the job has already ended, or it must be submitted again and
                its data cannot be read back.
            JobConflictError: another live process drives the job.
        """
        if job_id is not None:
            return self._resume_one(job_id)

        results: list[JobResult] = []
        for record in self.store.unfinished_jobs():
            try:
                results.append(self._resume_one(record.job_id))
            except JobConflictError as exc:
                logger.info("job %s: not resumed: %s", record.job_id, exc)
            except BrokerError as exc:
                logger.warning("job %s: resume ended with %s", record.job_id, exc)
        return results

    # --- leases and attaching ------------------------------------------------------------

    @property
    def owner(self) -> str:
        """This broker's name on the leases it takes: ``host:pid:random``."""
        return self._owner

    def _claim(self, job_id: str) -> bool:
        """Take the job's lease; a lease left by a dead process on this host is taken
        over at once instead of waiting for it to expire."""
        record = self.store.get(job_id)
        holder = record.owner
        # TODO(lease-hosts): a holder on another host is only known dead once its
        # lease expires (lease_s); there is no cross-host liveness check.
        if holder and holder != self.owner and not _owner_alive(holder):
            logger.info("job %s: lease holder %s is gone; taking over", job_id, holder)
            self.store.release(job_id, holder)
        return self.store.claim(job_id, self.owner, self._lease_s)

    def _renew(self, job_id: str) -> None:
        if not self.store.renew(job_id, self.owner, self._lease_s):
            holder = self.store.get(job_id).owner or "nobody"
            raise JobConflictError(
                f"job {job_id}: this broker lost its lease (now held by {holder}); "
                "it stops driving the job so that only one process does"
            )

    def _attach(self, job_id: str, prepared: Prepared | None) -> JobResult:
        """Drive the job when its lease is free; otherwise wait for its driver to end
        it (taking over if the driver dies) and return the stored outcome."""
        waiting = False
        while True:
            record = self.store.get(job_id)
            if record.terminal:
                return _stored_outcome(record)
            if self._claim(job_id):
                return self._drive_claimed(job_id, prepared)
            if not waiting:
                waiting = True
                logger.info(
                    "job %s: driven by %s; waiting for it to end", job_id, record.owner
                )
            self.clock.sleep(self.poll_interval_s)

    def _resume_one(self, job_id: str) -> JobResult:
        record = self.store.get(job_id)
        if record.terminal:
            raise InputError(
                f"job {job_id} has already ended ({record.state.value}); "
                f"`automl-broker status {job_id}` shows its result"
            )
        if not self._claim(job_id):
            record = self.store.get(job_id)
            raise JobConflictError(
                f"job {job_id} is driven by {record.owner} (lease until "
                f"{record.lease_expires_at}); `automl-broker status {job_id} --watch` "
                "follows it"
            )
        return self._drive_claimed(job_id, None)

    def _drive_claimed(self, job_id: str, prepared: Prepared | None) -> JobResult:
        self._driving.add(job_id)
        try:
            return self._drive(job_id, prepared)
        finally:
            self._driving.discard(job_id)
            self.store.release(job_id, self.owner)

    def _drive(self, job_id: str, prepared: Prepared | None) -> JobResult:
        """Take a leased job from wherever the store says it stands to its end."""
        record = self.store.get(job_id)
        if record.terminal:
            return _stored_outcome(record)
        if not record.run_dir:
            raise InputError(f"job {job_id} has no run folder recorded; run it again")
        folder = Path(record.run_dir)
        key = record.idempotency_key
        attempts = self.store.attempts(job_id)
        failovers = [
            FailoverRecord.model_validate(a.failover) for a in attempts if a.failover
        ]

        # 1. Nothing tried yet: a fresh job (or one that died before its first try).
        if not attempts:
            prepared = prepared or self._reprepare(record, need_training=True)
            folder.mkdir(parents=True, exist_ok=True)
            self.store.set_plan(job_id, prepared.plan.to_dict())
            self._write_inputs(folder, prepared)
            self._emit(
                "plan", {"job_id": job_id, "plan": prepared.plan, "run_dir": folder}
            )
            return self._walk(job_id, key, prepared, folder, 1, failovers)

        # 2. The last attempt was given up: go on with the next candidate.
        last = attempts[-1]
        given_up = last.failover is not None or (
            last.state == JobState.FAILED and last.provider_ref is None
        )
        if given_up:
            prepared = prepared or self._reprepare(record, need_training=True)
            return self._walk(job_id, key, prepared, folder, last.seq + 1, failovers)

        # 3. An attempt in flight, or one that ended before the job's end was written.
        prepared = prepared or self._reprepare(
            record, need_training=last.provider_ref is None
        )
        attempt = self._reattach(record, last, prepared, folder)
        return self._walk(
            job_id, key, prepared, folder, last.seq, failovers, resumed=attempt
        )

    def _reattach(
        self, record: JobRecord, found: AttemptRecord, prepared: Prepared, folder: Path
    ) -> _Attempt:
        from broker.intake import to_safe_frame

        spec = prepared.spec
        candidate = _StoredCandidate(
            provider=found.provider,
            machine=found.machine,
            region=found.region,
            quote=_stored_quote(found.quote),
            rank_reason="resumed",
        )
        train = prepared.dataset.frame.loc[prepared.split.train_index]
        job = ProviderJob(
            job_id=record.job_id,
            idempotency_key=found.idempotency_key,
            spec=spec,
            schema=prepared.dataset.schema,
            train=to_safe_frame(train, prepared.dataset.schema, include_target=True),
            machine=found.machine,
            region=found.region,
            runtime_limit_s=float(spec.budget.max_runtime_s),
            run_dir=folder,
            max_usd=self._budget_left_usd(record.job_id, spec, found.attempt_id),
            options=dict(spec.provider_options.get(found.provider, {})),
        )
        ref = ProviderJobRef(**found.provider_ref) if found.provider_ref else None
        cancelling = JobState.CANCELLING in (found.state, record.state)
        attempt = _Attempt(
            candidate=candidate,  # type: ignore[arg-type]
            provider=self.provider(found.provider),
            job=job,
            attempt_id=found.attempt_id,
            ref=ref,
            states=[found.state],
            cancel_sent=cancelling and ref is not None,
            resumed=True,
        )
        logger.info(
            "job %s: reattaching to %s job %s (attempt %d, %s)",
            record.job_id,
            found.provider,
            ref.job_id if ref else "not yet known",
            found.seq,
            found.state.value,
        )
        return attempt

    def _reprepare(self, record: JobRecord, *, need_training: bool) -> Prepared:
        """Rebuild what a stopped broker had in memory, from the spec's data file (to
        submit) or from the run folder's held-out rows (enough to score)."""
        payload = _without_masked(record.spec)
        data = payload.get("data")
        holdout = payload.get("holdout_data")
        readable = isinstance(data, str) and Path(data).is_file()
        if holdout is not None and not (
            isinstance(holdout, str) and Path(holdout).is_file()
        ):
            readable = False
        folder = Path(record.run_dir or "")
        if readable:
            from broker.spec import parse_spec

            # TODO(resume-plan): the plan is made again (same spec, today's prices and
            # availability) rather than read back from the store, so the candidates
            # after a failover may differ from the ones first shown.
            prepared = self.prepare(parse_spec(payload))
            _check_split(record.job_id, folder, prepared)
            return prepared
        if need_training:
            raise InputError(
                f"job {record.job_id} must be submitted again, but its data "
                f"{data!r} cannot be read back (an in-memory table, or a file that "
                "moved); run the job again with `automl-broker run`"
            )
        if not (folder / HOLDOUT_FILE).is_file():
            raise InputError(
                f"job {record.job_id}'s run folder {record.run_dir!r} is gone; it "
                "holds the held-out rows needed to score the model"
            )
        return _prepared_from_folder(folder, payload)

    # --- cancel requests -----------------------------------------------------------------

    def _note_cancel(self, record: JobRecord) -> bool:
        """Write the cancel request to the store once; True when it is new."""
        if record.job_id in self._cancel_requests or self._cancel_recorded(
            record.job_id
        ):
            return False
        self._cancel_requests.add(record.job_id)
        self.store.transition(
            record.job_id,
            record.state,
            secondary=record.secondary,
            detail={CANCEL_REQUESTED: self.owner},
        )
        logger.info("job %s: cancel requested", record.job_id)
        return True

    def _cancel_recorded(self, job_id: str) -> bool:
        return any(
            e.detail is not None and CANCEL_REQUESTED in e.detail
            for e in self.store.events(job_id)
        )

    def _cancel_wanted(self, job_id: str) -> bool:
        return job_id in self._cancel_requests or self._cancel_recorded(job_id)

    def _cancel_unattended(self, job_id: str) -> bool:
        """Cancel a job nobody drives (the lease is held): stop its provider job once,
        or end the job at once when nothing was submitted."""
        record = self.store.get(job_id)
        attempts = self.store.attempts(job_id)
        last = attempts[-1] if attempts else None
        if last is None or (last.state.terminal and last.provider_ref is None):
            self.store.transition(job_id, JobState.CANCELLED)
            return True
        if last.state == JobState.CANCELLING or record.state == JobState.CANCELLING:
            return False

        provider = self.provider(last.provider)
        ref_data = last.provider_ref
        if ref_data is None:
            found = provider.find_by_idempotency_key(last.idempotency_key)
            if found is None:
                # Nothing reached the provider: nothing runs, nothing bills.
                self.store.finish_attempt(
                    last.attempt_id, state=JobState.CANCELLED, cost_usd=None
                )
                self.store.transition(job_id, JobState.CANCELLED)
                return True
            ref_data = _ref_dict(found)
            self.store.set_provider_ref(last.attempt_id, ref_data, found.job_id)
        ref = ProviderJobRef(**ref_data)

        if (
            last.provider == "local"
            and provider.find_by_idempotency_key(last.idempotency_key) is None
        ):
            # The search died with the process that ran it: nothing runs, nothing is
            # left to stop. `resume` finishes the job from its saved trials.
            logger.info(
                "job %s: its local search ended with the process that ran it; the "
                "cancel is recorded and `automl-broker resume` ends the job",
                job_id,
            )
        else:
            provider.cancel(ref)
        if record.state == JobState.PENDING:
            self.store.transition(job_id, JobState.QUEUED, attempt_id=last.attempt_id)
        self.store.transition(job_id, JobState.CANCELLING, attempt_id=last.attempt_id)
        logger.info(
            "job %s: no broker drives it; sent the cancel to %s job %s",
            job_id,
            provider.name,
            ref.job_id,
        )
        return True

    # --- walking the plan ----------------------------------------------------------------

    def _walk(
        self,
        job_id: str,
        key: str,
        prepared: Prepared,
        folder: Path,
        first_number: int,
        failovers: list[FailoverRecord],
        *,
        resumed: _Attempt | None = None,
    ) -> JobResult:
        """Try the plan's candidates from `first_number` on (after `resumed`, the
        attempt a restarted broker picked up) until one ends the job."""
        from broker import reports

        spec = prepared.spec
        started = self.clock.monotonic()
        last_error: BrokerError | None = None
        spent_usd = sum(
            (a.cost_usd or Decimal("0") for a in self.store.attempts(job_id)),
            Decimal("0"),
        )
        number = first_number
        excluded: list[tuple[str, str | None, str | None]] = []
        while True:
            if resumed is not None:
                attempt, resumed = resumed, None
            else:
                candidate = _candidate(prepared, number)
                if candidate is None:
                    break
                if _is_excluded(candidate, excluded):
                    logger.info(
                        "job %s: skipping %s (%s, %s) after an earlier failure there",
                        job_id,
                        candidate.provider,
                        candidate.machine,
                        candidate.region,
                    )
                    number += 1
                    continue
                attempt = self._new_attempt(
                    prepared, candidate, job_id, key, number, folder
                )
            number += 1
            try:
                if attempt.resumed:
                    result = self._resume_attempt(attempt, prepared, folder, started)
                else:
                    result = self._run_attempt(attempt, prepared, folder, started)
            except ProviderError as exc:
                last_error = exc
                if not exc.failover_allowed:
                    self._fail(job_id, attempt, exc)
                    self._write_failure(folder, job_id, exc, failovers)
                    raise
                failovers.append(self._record_failover(job_id, attempt, exc))
                excluded.append(_exclusion(attempt.candidate, exc))
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
                    self._write_failure(folder, job_id, exc, failovers)
                    raise
                failovers.append(self._record_failover(job_id, attempt, exc))
                excluded.append(_exclusion(attempt.candidate, exc))
                continue
            result.failovers = failovers
            result.job_id = job_id
            if result.state == JobState.DETACHED.value:
                reports.write_run_folder(folder, result)
                self.store.set_result(job_id, result.model_dump(mode="json"))
                return result
            self._finish(job_id, attempt, result, folder)
            return result

        error = {
            "type": type(last_error).__name__ if last_error else "PlanningError",
            "message": str(last_error) if last_error else "no candidate was left",
        }
        self.store.set_result(job_id, {"error": error, "failovers": len(failovers)})
        self.store.transition(job_id, JobState.FAILED, error=error)
        self._write_failure(folder, job_id, last_error, failovers)
        if isinstance(last_error, NoModelTrainedError):
            raise last_error
        raise PlanningError(
            f"every candidate failed; last error: {error['type']}: {error['message']}",
            rejections=[f.model_dump(mode="json") for f in failovers],
        )

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
            runtime_limit_s=self._runtime_for(prepared, candidate, number),
            run_dir=folder,
            max_usd=self._budget_left_usd(job_id, spec),
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
        quoted = getattr(candidate.quote, "training_usd_high", None)
        if quoted is not None:
            # The quote goes in the ledger beside the actual cost that follows.
            self.store.record_spend(
                record.attempt_id, kind="quote", usd=Decimal(quoted)
            )
        attempt = _Attempt(
            candidate=candidate,
            provider=provider,
            job=job,
            attempt_id=record.attempt_id,
        )
        _crash_point("after_start_attempt")
        self._emit("attempt", {"candidate": candidate, "number": number})
        logger.info(
            "job %s: trying %s (%s, %s)",
            job_id,
            candidate.provider,
            candidate.machine,
            candidate.region,
        )
        return attempt

    def _runtime_for(
        self, prepared: Prepared, candidate: Candidate, number: int
    ) -> float:
        """The runtime a candidate gets: the plan's (trimmed to what max_usd pays for),
        less, for the first candidate, the time intake and planning already took.
        A fallback gets its full runtime: time a failed cloud spent queued did not
        train anything."""
        runtime = float(
            getattr(candidate, "runtime_s", prepared.spec.budget.max_runtime_s)
        )
        if number == 1 and prepared.started is not None:
            used = time.monotonic() - prepared.started
            runtime = max(runtime - used, min(runtime, 1.0))
        return runtime

    def _run_attempt(
        self, attempt: _Attempt, prepared: Prepared, folder: Path, started: float
    ) -> JobResult:
        ref = self._submit(attempt)
        _crash_point("after_submit")
        self._record_ref(attempt, ref)
        return self._complete(attempt, prepared, started)

    def _resume_attempt(
        self, attempt: _Attempt, prepared: Prepared, folder: Path, started: float
    ) -> JobResult:
        """Finish an attempt a stopped broker left: ask the provider for its key
        before deciding that nothing was created."""
        if attempt.ref is None:
            key = attempt.job.idempotency_key
            found = self._call(
                attempt, lambda: attempt.provider.find_by_idempotency_key(key)
            )
            if found is None:
                logger.info(
                    "job %s: %s has no job with key %s; submitting it now",
                    attempt.job.job_id,
                    attempt.provider.name,
                    key,
                )
                return self._run_attempt(attempt, prepared, folder, started)
            logger.info(
                "job %s: found %s job %s by its key %s",
                attempt.job.job_id,
                attempt.provider.name,
                found.job_id,
                key,
            )
            self._record_ref(attempt, found)
        elif self._local_job_lost(attempt):
            if self._cancel_wanted(attempt.job.job_id):
                # Cancelled while no process ran the search: nothing is left to stop,
                # and the trials it completed stay in the run folder's local/.
                logger.info(
                    "job %s: cancelled while its local search was not running; ended "
                    "without searching further",
                    attempt.job.job_id,
                )
                stopped = ProviderStatus(
                    JobState.CANCELLED, message="cancelled while no process ran it"
                )
                return self._unfinished_result(attempt, prepared, stopped, started)
            self._resubmit_local(attempt)
        if attempt.states[-1] == JobState.PENDING:
            # The ref was recorded but the broker stopped before marking it submitted.
            self._move(attempt, JobState.QUEUED)
        return self._complete(attempt, prepared, started)

    def _local_job_lost(self, attempt: _Attempt) -> bool:
        """A local attempt still in flight whose search died with the process that ran
        it (local jobs live in the broker's own process)."""
        if attempt.candidate.provider != "local" or attempt.states[-1].terminal:
            return False
        key = attempt.job.idempotency_key
        found = self._call(
            attempt, lambda: attempt.provider.find_by_idempotency_key(key)
        )
        return found is None

    def _resubmit_local(self, attempt: _Attempt) -> None:
        """Submit a lost local search again under the same attempt and key: the local
        provider finds the trials it completed in the run folder and goes on from
        there, with the runtime that is left."""
        ref = self._submit(attempt)
        logger.info(
            "job %s: the local search was not running in any process; resumed it as "
            "%s under key %s",
            attempt.job.job_id,
            ref.job_id,
            attempt.job.idempotency_key,
        )
        if attempt.ref is None or _ref_dict(ref) != _ref_dict(attempt.ref):
            self.store.set_provider_ref(attempt.attempt_id, _ref_dict(ref), ref.job_id)
        attempt.ref = ref

    def _record_ref(self, attempt: _Attempt, ref: ProviderJobRef) -> None:
        attempt.ref = ref
        self.store.set_provider_ref(attempt.attempt_id, _ref_dict(ref), ref.job_id)
        _crash_point("after_set_ref")
        self._move(attempt, JobState.QUEUED)

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
        cancel_sent = attempt.cancel_sent
        while True:
            if job_id in self._driving:
                self._renew(job_id)
            status = self._poll(attempt)
            now = self.clock.monotonic()
            if running_since is not None:
                attempt.running_s = now - running_since
            if cancel_sent and status.state == JobState.STOPPED:
                # The provider's word for a stop we asked for.
                status = replace(status, state=JobState.CANCELLED)
            # A provider may report the job running for a poll after the cancel.
            still_cancelling = cancel_sent and not (
                status.state.terminal or status.state == JobState.DETACHED
            )
            if not still_cancelling:
                self._move(attempt, status.state, status.secondary)
            if status.state == JobState.RUNNING:
                _crash_point("after_running")
            self._emit("status", {"status": status, "provider": provider.name})
            if status.state.terminal or status.state == JobState.DETACHED:
                return status

            if not cancel_sent and self._cancel_wanted(job_id):
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
                last_try = try_number == self.max_retries
                if not last_try and refresh is not None and refresh():
                    logger.warning(
                        "%s: credentials expired while polling %s; refreshed them",
                        provider.name,
                        ref.job_id,
                    )
                    continue
                # Not refreshable, or refreshed credentials that keep expiring.
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
        if attempt.resumed:
            # A restarted broker did not see the job's earlier running time; the
            # provider's own bill, when it has one, counts it.
            billed = self._billed(attempt)
            if billed is not None and billed > attempt.accrued_usd:
                attempt.accrued_usd = billed
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
                # A job may have started billing before the cancel landed.
                attempt.charged_usd = self._billed(attempt)
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
            actual = self._billed(attempt, price_running_time=False)
        if actual is None:
            # the provider's own runtime is closer than the polls' view of it
            actual = _priced_runtime(attempt.candidate, provider_result.runtime_s)
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

    def _billed(
        self, attempt: _Attempt, *, price_running_time: bool = True
    ) -> Decimal | None:
        """What the attempt cost: the provider's own figure, else the budget watch's,
        else (with `price_running_time`) the quote's rate for the time it was seen
        running."""
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
        if attempt.accrued_usd:
            return attempt.accrued_usd
        # A machine that bills nothing itself (this one, an embedded H2O) costs its
        # rate for the time it ran, whether or not the job ended with a model.
        if not price_running_time:
            return None
        return _priced_runtime(attempt.candidate, attempt.running_s)

    def _charged(self, attempt: _Attempt, exc: BaseException) -> Decimal | None:
        """What a failed attempt cost: the error's figure, else the provider's bill."""
        charged: Decimal | None = getattr(exc, "charged_usd", None)
        if charged is None and attempt.ref is not None:
            charged = self._billed(attempt)
        return charged

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
        # The attempt may have ended during polling, before its cost was known. The
        # ledger keeps one line per attempt, so a finish run again counts it once.
        self.store.finish_attempt(
            attempt.attempt_id, state=final, cost_usd=result.cost.actual_usd
        )
        _crash_point("after_result")
        self.store.set_result(job_id, result.model_dump(mode="json"))
        _crash_point("after_set_result")
        self.store.transition(job_id, final)
        self._emit("result", {"result": result})

    def _fail(self, job_id: str, attempt: _Attempt, exc: BrokerError) -> None:
        if not (attempt.states and attempt.states[-1].terminal):
            attempt.charged_usd = self._charged(attempt, exc)
            self._move(attempt, JobState.FAILED)
        self._withdraw_quote(attempt)
        error = {"type": type(exc).__name__, "message": str(exc)}
        self.store.set_result(job_id, {"error": error})
        self.store.transition(job_id, JobState.FAILED, error=error)

    def _withdraw_quote(self, attempt: _Attempt) -> None:
        """An attempt the provider refused before creating anything will never cost its
        quote: the ledger's quoted figure for it drops to zero."""
        if attempt.ref is None:
            self.store.record_spend(attempt.attempt_id, kind="quote", usd=Decimal(0))

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
            attempt.charged_usd = self._charged(attempt, exc)
            self._move(attempt, JobState.FAILED)
        self._withdraw_quote(attempt)
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

    def _write_failure(
        self,
        folder: Path,
        job_id: str,
        exc: BaseException | None,
        failovers: list[FailoverRecord],
    ) -> None:
        """Leave result.json in the run folder of a failed job: what failed, where,
        and what each attempt cost, as the store has it."""
        from broker.redact import redact

        payload = {
            "job_id": job_id,
            "state": JobState.FAILED.value,
            "error": {
                "type": type(exc).__name__ if exc is not None else "PlanningError",
                "message": str(exc) if exc is not None else "no candidate was left",
            },
            "failovers": [f.model_dump(mode="json") for f in failovers],
            "attempts": [
                {
                    "provider": a.provider,
                    "machine": a.machine,
                    "region": a.region,
                    "state": a.state.value,
                    "cost_usd": None if a.cost_usd is None else str(a.cost_usd),
                }
                for a in self.store.attempts(job_id)
            ],
        }
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "result.json").write_text(
                json.dumps(redact(payload), indent=2, default=str) + "\n",
                encoding="utf-8",
            )
        except OSError as exc_write:
            logger.warning("job %s: cannot write %s: %s", job_id, folder, exc_write)

    def _write_inputs(self, folder: Path, prepared: Prepared) -> None:
        from broker.redact import redact

        def dump(name: str, payload: Any) -> None:
            # The spec's provider options may carry credentials: never write them.
            (folder / name).write_text(
                json.dumps(redact(payload), indent=2, default=str) + "\n",
                encoding="utf-8",
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
        # The held-out rows travel with the run so `predict` can reproduce the metrics;
        # numbers as read, so the file needs no decimal mark of its own to read back.
        _as_numbers_read(holdout, prepared.dataset.schema).to_csv(
            folder / HOLDOUT_FILE, index=False
        )

    def _budget_left_usd(
        self, job_id: str, spec: JobSpec, this_attempt: str | None = None
    ) -> Decimal | None:
        """The dollar cap less what earlier attempts of the job cost: the cap is the
        job's, not each attempt's."""
        cap = spec.budget.max_usd
        if cap is None:
            return None
        spent = sum(
            (
                a.cost_usd or Decimal("0")
                for a in self.store.attempts(job_id)
                if a.attempt_id != this_attempt
            ),
            Decimal("0"),
        )
        return max(cap - spent, Decimal("0"))

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


def _as_numbers_read(frame: Any, schema: Any) -> Any:
    """`frame` with its numeric features as intake read them (1234.5 for "1.234,5",
    0.125 for "12.5%"); other columns as written."""
    import warnings

    from broker.errors import DataWarning
    from broker.intake import to_safe_frame
    from broker.schema import ColumnKind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # said when the rows were read
        typed = to_safe_frame(frame, schema, include_target=False)
    stored = frame.copy()
    for column in schema.features:
        if column.kind == ColumnKind.NUMERIC:
            stored[column.name] = typed[column.safe_name]
    return stored


def _prepared_from_folder(folder: Path, spec_payload: dict[str, Any]) -> Prepared:
    """What scoring needs, from a run folder: the schema and the held-out rows."""
    import numpy as np

    from broker.intake import (
        DELIMITER_ATTR,
        Dataset,
        HoldoutSplit,
        read_labels,
        read_table,
    )
    from broker.schema import Schema
    from broker.spec import parse_spec

    schema = Schema.from_dict(json.loads((folder / "schema.json").read_text("utf-8")))
    frame, _ = read_table(folder / HOLDOUT_FILE)
    # numbers as intake read them; text (older run folders) as the training table wrote it
    frame.attrs.pop(DELIMITER_ATTR, None)
    frame = frame[frame[schema.target].notna()].reset_index(drop=True)
    frame[schema.target] = read_labels(frame[schema.target], schema)
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
    return Prepared(
        spec=spec,
        dataset=dataset,
        split=split,
        plan=None,  # type: ignore[arg-type]
        holdout=dataset,
    )


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


def _priced_runtime(candidate: Candidate, runtime_s: float | None) -> Decimal | None:
    """A machine's cost from the quote's rate and how long it ran, for providers that
    bill nothing themselves (the local machine, an embedded H2O): rate x runtime under
    the quote's billing rule."""
    quote = candidate.quote
    rate = getattr(quote, "training_usd_per_hour", None)
    rule = getattr(quote, "billing_rule", None)
    if rate is None or rule is None or runtime_s is None:
        return None
    from cost_models.billing import charge

    return charge(Decimal(rate), Decimal(str(round(runtime_s, 3))), rule)


RUN_MARKER = "job.json"
# The optional extra that brings each provider's SDK.
_EXTRAS = {"vertex": "vertex", "azure": "azure", "sagemaker": "aws", "h2o": "h2o"}


def _check_folder_free(folder: Path) -> None:
    """Refuse a run folder that already holds a run, or that cannot be a folder,
    before any job is recorded."""
    blocker = next(
        (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None
    )
    if blocker is not None:
        raise InputError(
            f"run folder {str(folder)!r} cannot be created: {str(blocker)!r} is a file; "
            "choose another --out folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"run folder {str(folder)!r} cannot be created: {exc.strerror}; choose "
            "another --out folder"
        ) from None
    if (folder / RUN_MARKER).exists() or (folder / "spec.json").exists():
        owner = _folder_owner(folder)
        raise InputError(
            f"run folder {str(folder)!r} already holds "
            f"{'job ' + owner if owner else 'a run'}; choose another --out folder, or "
            "remove this one"
        )


def _folder_owner(folder: Path) -> str | None:
    try:
        owner = json.loads((folder / RUN_MARKER).read_text(encoding="utf-8"))["job_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(owner)


def _claim_folder(folder: Path, job_id: str) -> None:
    """Make `folder` the run folder of `job_id`, atomically, or refuse when another job
    took it first: two jobs writing one folder would mix their files."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with (folder / RUN_MARKER).open("x", encoding="utf-8") as handle:
            handle.write(json.dumps({"job_id": job_id}) + "\n")
        return
    except FileExistsError:
        pass
    owner = None
    for _ in range(20):  # the other writer may be half-way through its one line
        owner = _folder_owner(folder)
        if owner is not None:
            break
        time.sleep(0.05)
    if owner != job_id:
        raise InputError(
            f"run folder {str(folder)!r} already holds job {owner or '(unknown)'}; "
            "choose another --out folder, or remove this one"
        )


def _exclusion(
    candidate: Candidate, exc: BaseException
) -> tuple[str, str | None, str | None]:
    """What a failure rules out for the rest of the plan: credentials and availability
    are the provider's, a quota is a region's, anything else the machine's there."""
    if isinstance(
        exc, ProviderUnavailableError | CredentialsError | NoModelTrainedError
    ):
        return (candidate.provider, None, None)
    if isinstance(exc, QuotaExceededError):
        return (candidate.provider, candidate.region, None)
    return (candidate.provider, candidate.region, candidate.machine)


def _is_excluded(
    candidate: Candidate, excluded: list[tuple[str, str | None, str | None]]
) -> bool:
    return any(
        provider == candidate.provider
        and region in (None, candidate.region)
        and machine in (None, candidate.machine)
        for provider, region, machine in excluded
    )


def _candidate(prepared: Prepared, number: int) -> Candidate | None:
    """The plan's `number`-th candidate (1-based), or None past its end."""
    if prepared.plan is None or number > len(prepared.plan.candidates):
        return None
    return prepared.plan.candidates[number - 1]


def _stored_quote(quote: dict[str, Any]) -> SimpleNamespace:
    """A quote read back from the store, with the rate the budget watch reads and the
    billing rule that prices a machine billing nothing itself."""
    from cost_models.billing import BillingRule

    def decimal(name: str) -> Decimal | None:
        value = quote.get(name)
        return None if value is None else Decimal(str(value))

    rate = decimal("training_usd_per_hour")
    increment, minimum = decimal("billing_increment_s"), decimal("minimum_charge_s")
    rule = (
        None
        if increment is None or minimum is None
        else BillingRule(increment, minimum)
    )
    fields = {
        k: v for k, v in quote.items() if k not in ("usd_per_hour", "billing_rule")
    }
    fields["training_usd_per_hour"] = rate
    return SimpleNamespace(**fields, usd_per_hour=rate, billing_rule=rule)


def _stored_outcome(record: JobRecord) -> JobResult:
    """The result of a job that has ended, as the store holds it."""
    stored = record.result or {}
    if record.state == JobState.FAILED or "error" in stored and "task" not in stored:
        error = stored.get("error") or record.error or {}
        raise BrokerError(
            f"job {record.job_id} ended {record.state.value}: "
            f"{error.get('type', 'error')}: {error.get('message', 'no detail')}"
        )
    if "task" not in stored:
        raise BrokerError(
            f"job {record.job_id} ended {record.state.value} before any model was "
            "trained; it has no result"
        )
    return JobResult.model_validate(stored)


def _owner_alive(owner: str) -> bool:
    """Whether the process named in a lease (``host:pid:random``) still runs. A
    process on another host is taken to be alive: its lease must expire first."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed child not yet reaped by its parent still answers signal 0."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _without_masked(payload: dict[str, Any]) -> dict[str, Any]:
    """A stored spec without the values the store masked: a masked secret is left
    out so that the provider falls back to its own settings."""
    from broker.redact import MASK

    # TODO(resume-secrets): secrets given in provider_options are masked in the store
    # and so cannot be passed again on resume; the provider's settings must hold them.
    options = {
        name: {k: v for k, v in values.items() if v != MASK}
        for name, values in (payload.get("provider_options") or {}).items()
    }
    return {**payload, "provider_options": options}


def _check_split(job_id: str, folder: Path, prepared: Prepared) -> None:
    """Refuse to go on when the data read back no longer splits as it did."""
    path = folder / "split.json"
    if not path.is_file():
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    now = [int(i) for i in prepared.split.train_index]
    if recorded.get("train_index") != now:
        raise InputError(
            f"job {job_id}: the data file {prepared.spec.data_label!r} changed since "
            "the job started (its training rows differ); run a new job instead"
        )
