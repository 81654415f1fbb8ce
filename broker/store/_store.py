"""The job store: every job, every provider attempt, every state change, every dollar.

One SQLite file in WAL mode holds four tables:

* ``jobs``: one row per job, with its spec, plan, state, lease, result and error;
* ``attempts``: one row per try on a provider, written *before* the provider is called,
  so that a broker restarted after a crash can find the remote job by its key;
* ``events``: an append-only history; every write to a job adds one in the same
  transaction, so the history and the state never disagree;
* ``spend``: the ledger of quoted and actual cost, one line per attempt and kind.

Every write runs in ``BEGIN IMMEDIATE``, so concurrent broker processes queue for the
write lock (up to the busy timeout) instead of failing. Several processes may share
one file; :meth:`JobStore.claim` hands out a time-limited lease so that only one of them
drives (submits, polls, cancels) a given job.

Everything structured is passed through :func:`broker.redact.redact` before it is
written, so credentials in specs, provider handles and error details never reach the
file.

Example:
    >>> store = JobStore(tmp_path / "jobs.db")  # doctest: +SKIP
    >>> job = store.create_job(spec={"target": "y"}, idempotency_key="k1",
    ...                        run_dir=None)  # doctest: +SKIP
    >>> store.transition(job.job_id, JobState.QUEUED)  # doctest: +SKIP
"""

from __future__ import annotations

import decimal
import json
import logging
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from broker.clock import SYSTEM_CLOCK, Clock
from broker.errors import (
    ConfigurationError,
    IllegalTransitionError,
    JobConflictError,
    JobNotFoundError,
)
from broker.redact import redact_text
from broker.states import JobState, check_transition
from broker.store._location import (
    connect,
    default_store_path,
    path_from_url,
    tighten_modes,
)
from broker.store._records import (
    AttemptRecord,
    Event,
    JobRecord,
    SpendEntry,
    attempt_from_row,
    decimal_text,
    dump_json,
    event_from_row,
    job_from_row,
    spend_from_row,
    to_iso,
)
from broker.store._schema import migrate

logger = logging.getLogger(__name__)

SpendKind = Literal["quote", "actual"]
_SPEND_KINDS = ("quote", "actual")
_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_ATTEMPT_ENDS = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.STOPPED,
        JobState.DETACHED,
    }
)


class JobStore:
    """The broker's persistent record of jobs, attempts, events and spend.

    Args:
        path: The database file. Defaults to ``$AUTOML_BROKER_HOME/jobs.db`` or
            ``<user data dir>/automl-broker/jobs.db``.
        url: A ``sqlite:///path`` URL, as an alternative to `path`.
        clock: Where times come from; tests pass a ``FakeClock``.
        busy_timeout_s: How long a write waits for another process's lock.
        env: The environment that `AUTOML_BROKER_HOME` is read from.

    Raises:
        ConfigurationError: Both `path` and `url` were given, or the URL is not a
            SQLite URL.
        StoreError: The file cannot be created, is not a database, or was written by
            a newer broker.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        busy_timeout_s: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if path is not None and url is not None:
            raise ConfigurationError(
                f"give the job store a path or a URL, not both (path={str(path)!r}, "
                f"url={url!r})"
            )
        if busy_timeout_s <= 0:
            raise ConfigurationError(
                f"busy_timeout_s must be above 0 seconds; got {busy_timeout_s}"
            )

        if url is not None:
            self._path = path_from_url(url)
        elif path is not None:
            self._path = Path(path).expanduser()
        else:
            self._path = default_store_path(env)
        self._clock = clock
        self._lock = threading.RLock()
        self._conn = connect(self._path, busy_timeout_s=busy_timeout_s)

        with self._write() as conn:
            self._schema_version = migrate(conn, path=str(self._path))
        tighten_modes(self._path)
        logger.debug("job store open at %s", self._path)

    # --- lifetime -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def schema_version(self) -> int:
        return self._schema_version

    def close(self) -> None:
        """Close the connection. The store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- jobs -----------------------------------------------------------------------

    def create_job(
        self,
        *,
        spec: Mapping[str, Any],
        idempotency_key: str,
        run_dir: str | os.PathLike[str] | None,
        name: str | None = None,
        project: str | None = None,
        job_id: str | None = None,
    ) -> JobRecord:
        """Record a new job in state ``pending``, or return the one with this key.

        Creating twice with one key, from one process or several at once, leaves one
        job: the second call returns the first call's record.

        Args:
            spec: The job spec as JSON-like data; secrets in it are masked.
            idempotency_key: The caller's unique key for this job.
            run_dir: The job's run folder, if it has one yet.
            name: A label for listings.
            project: A label that :meth:`spend` can total by.

        Returns:
            The job's record.

        Raises:
            ConfigurationError: The key is empty.
            JobConflictError: The key already belongs to a job with another spec.
        """
        _require_text(idempotency_key, "idempotency_key")
        spec_json = dump_json(spec) or "{}"
        now = self._now()
        job_id = job_id or f"job-{uuid.uuid4().hex[:16]}"

        with self._write() as conn:
            inserted = conn.execute(
                "INSERT INTO jobs (job_id, name, project, created_at, updated_at, "
                "spec, state, idempotency_key, run_dir) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (idempotency_key) DO NOTHING",
                (
                    job_id,
                    None if name is None else redact_text(name),
                    project,
                    now,
                    now,
                    spec_json,
                    JobState.PENDING.value,
                    idempotency_key,
                    None if run_dir is None else str(run_dir),
                ),
            ).rowcount
            if inserted:
                self._event(conn, job_id, "created", to_state=JobState.PENDING, at=now)
            row = conn.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()

        record = job_from_row(row)
        if not inserted and _canonical(record.spec) != spec_json:
            raise JobConflictError(
                f"idempotency key {idempotency_key!r} already belongs to job "
                f"{record.job_id} with a different spec; use a new key for a new job"
            )
        if inserted:
            logger.info("job %s created (%s)", job_id, name or "unnamed")
        return record

    def set_plan(self, job_id: str, plan: Mapping[str, Any]) -> JobRecord:
        """Store the job's plan (ordered candidates and rejections)."""
        return self._set_job_json(job_id, "plan", plan)

    def set_result(self, job_id: str, result: Mapping[str, Any]) -> JobRecord:
        """Store the job's result (leaderboard, held-out metrics, cost)."""
        return self._set_job_json(job_id, "result", result)

    def transition(
        self,
        job_id: str,
        new_state: JobState | str,
        *,
        attempt_id: str | None = None,
        secondary: str | None = None,
        detail: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        owner: str | None = None,
    ) -> JobRecord:
        """Move a job to a new state and record the change as an event.

        Staying in the same state with the same secondary state and no detail writes
        nothing, so a polling loop may call this on every poll. When `attempt_id` is
        given and that attempt has not ended, the attempt takes the new state too.

        Args:
            job_id: The job.
            new_state: The state to move to.
            attempt_id: The attempt the change comes from.
            secondary: The provider's own name for the state.
            detail: Facts worth keeping with the event.
            error: The error that ended the job, stored on the job.
            owner: When given, the change is refused unless this owner holds the
                job's lease.

        Returns:
            The job's record after the change.

        Raises:
            IllegalTransitionError: The state machine does not allow the change;
                nothing is written.
            JobConflictError: `owner` does not hold the lease, or the attempt belongs
                to another job.
            JobNotFoundError: No job has this id.
        """
        new = JobState(new_state)
        secondary = None if secondary is None else redact_text(secondary)
        now = self._now()

        with self._write() as conn:
            job = self._job_row(conn, job_id)
            old = JobState(job["state"])
            check_transition(old, new)
            if owner is not None:
                self._check_owner(job, owner, now)
            if attempt_id is not None:
                self._attempt_of(conn, job_id, attempt_id)

            changed = old != new or secondary != job["secondary"]
            if not (changed or detail is not None or error is not None):
                return job_from_row(job)

            conn.execute(
                "UPDATE jobs SET state = ?, secondary = ?, updated_at = ?, "
                "error = COALESCE(?, error) WHERE job_id = ?",
                (new.value, secondary, now, dump_json(error), job_id),
            )
            if attempt_id is not None:
                conn.execute(
                    "UPDATE attempts SET state = ? WHERE attempt_id = ? "
                    "AND ended_at IS NULL",
                    (new.value, attempt_id),
                )
            event_detail = dict(detail or {})
            if secondary is not None:
                event_detail["secondary"] = secondary
            self._event(
                conn,
                job_id,
                "transition",
                attempt_id=attempt_id,
                from_state=old,
                to_state=new,
                detail=event_detail or None,
                at=now,
            )
            row = self._job_row(conn, job_id)

        if old != new:
            logger.info("job %s: %s -> %s", job_id, old.value, new.value)
        return job_from_row(row)

    # --- attempts -------------------------------------------------------------------

    def start_attempt(
        self,
        job_id: str,
        *,
        provider: str,
        machine: str | None,
        region: str | None,
        quote: Mapping[str, Any],
        idempotency_key: str,
    ) -> AttemptRecord:
        """Record a try on a provider. Call it before the provider is called.

        Starting again with the same key returns the recorded attempt, so a broker
        that crashed between this call and the provider's answer can look the remote
        job up by the key instead of submitting a second one.

        Args:
            job_id: The job.
            provider: The provider's registry name.
            machine: The machine type, if the provider has one.
            region: The region, if the provider has one.
            quote: The price quote the plan chose this candidate on.
            idempotency_key: The key the provider will be given.

        Returns:
            The attempt's record, in state ``pending``.

        Raises:
            JobConflictError: The job has finished, or the key belongs to another
                job's attempt.
            JobNotFoundError: No job has this id.
        """
        _require_text(provider, "provider")
        _require_text(idempotency_key, "idempotency_key")
        now = self._now()

        with self._write() as conn:
            job = self._job_row(conn, job_id)
            existing = conn.execute(
                "SELECT * FROM attempts WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if existing is not None:
                if existing["job_id"] != job_id:
                    raise JobConflictError(
                        f"attempt key {idempotency_key!r} already belongs to job "
                        f"{existing['job_id']}, not {job_id}; use a new key"
                    )
                return attempt_from_row(existing)
            if JobState(job["state"]).terminal:
                raise JobConflictError(
                    f"job {job_id} is {job['state']}; a finished job takes no new "
                    "attempt, create a new job instead"
                )

            seq = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM attempts WHERE job_id = ?",
                (job_id,),
            ).fetchone()[0]
            attempt_id = f"att-{uuid.uuid4().hex[:16]}"
            conn.execute(
                "INSERT INTO attempts (attempt_id, job_id, seq, provider, machine, "
                "region, quote, idempotency_key, state, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt_id,
                    job_id,
                    seq,
                    provider,
                    machine,
                    region,
                    dump_json(quote) or "{}",
                    idempotency_key,
                    JobState.PENDING.value,
                    now,
                ),
            )
            self._event(
                conn,
                job_id,
                "attempt_started",
                attempt_id=attempt_id,
                detail={
                    "seq": seq,
                    "provider": provider,
                    "machine": machine,
                    "region": region,
                },
                at=now,
            )
            row = self._attempt_row(conn, attempt_id)

        logger.info("job %s: attempt %d on %s", job_id, seq, provider)
        return attempt_from_row(row)

    def set_provider_ref(
        self,
        attempt_id: str,
        ref: Mapping[str, Any],
        provider_job_id: str,
    ) -> AttemptRecord:
        """Store the handle the provider gave for a submitted attempt.

        Args:
            attempt_id: The attempt.
            ref: The provider's job reference as JSON-like data.
            provider_job_id: The provider's own id for the remote job.

        Returns:
            The attempt's record.
        """
        _require_text(provider_job_id, "provider_job_id")
        now = self._now()

        with self._write() as conn:
            attempt = self._attempt_row(conn, attempt_id)
            conn.execute(
                "UPDATE attempts SET provider_ref = ?, provider_job_id = ? "
                "WHERE attempt_id = ?",
                (dump_json(ref), provider_job_id, attempt_id),
            )
            self._touch(conn, attempt["job_id"], now)
            self._event(
                conn,
                attempt["job_id"],
                "provider_ref",
                attempt_id=attempt_id,
                detail={"provider_job_id": provider_job_id},
                at=now,
            )
            row = self._attempt_row(conn, attempt_id)

        return attempt_from_row(row)

    def record_failover(
        self, job_id: str, attempt_id: str, record: Mapping[str, Any]
    ) -> AttemptRecord:
        """Store why the broker left an attempt for the next candidate.

        Args:
            job_id: The job.
            attempt_id: The attempt that was given up.
            record: The failover record (provider, reason, error type, message).

        Returns:
            The attempt's record.

        Raises:
            JobConflictError: The attempt belongs to another job.
        """
        now = self._now()
        record_json = dump_json(record)

        with self._write() as conn:
            self._attempt_of(conn, job_id, attempt_id)
            conn.execute(
                "UPDATE attempts SET failover = ? WHERE attempt_id = ?",
                (record_json, attempt_id),
            )
            self._touch(conn, job_id, now)
            self._event(
                conn,
                job_id,
                "failover",
                attempt_id=attempt_id,
                detail=json.loads(record_json) if record_json else None,
                at=now,
            )
            row = self._attempt_row(conn, attempt_id)

        logger.info("job %s: failover from attempt %s", job_id, attempt_id)
        return attempt_from_row(row)

    def finish_attempt(
        self,
        attempt_id: str,
        *,
        state: JobState | str,
        cost_usd: Decimal | None,
    ) -> AttemptRecord:
        """Record how an attempt ended and what it cost.

        A cost is also written to the spend ledger as the attempt's actual cost. A
        detached attempt may be finished again once it is found; an attempt that
        ended in a final state keeps it: finishing it again in the same state only
        records a new cost, as an ``attempt_cost`` event, and is silent otherwise.

        Args:
            attempt_id: The attempt.
            state: A final state, or ``detached`` when the broker lost track of it.
            cost_usd: The exact cost in US dollars, if known.

        Returns:
            The attempt's record.

        Raises:
            IllegalTransitionError: `state` does not end an attempt, or the attempt
                already ended in another final state.
        """
        new = JobState(state)
        if new not in _ATTEMPT_ENDS:
            ends = ", ".join(sorted(s.value for s in _ATTEMPT_ENDS))
            raise IllegalTransitionError(
                f"an attempt cannot end in state {new.value!r}; use one of {ends}"
            )
        cost_text = decimal_text(cost_usd, what="cost_usd")
        now = self._now()

        with self._write() as conn:
            attempt = self._attempt_row(conn, attempt_id)
            old = JobState(attempt["state"])
            if old.terminal and old != new:
                raise IllegalTransitionError(
                    f"attempt {attempt_id} already ended {old.value!r}; it cannot "
                    f"end again as {new.value!r}"
                )
            if old.terminal:
                # Finished already (the end is seen at a poll, the cost once the
                # result is in): only a new cost is recorded, as its own event.
                if cost_text is not None and cost_text != attempt["cost_usd"]:
                    conn.execute(
                        "UPDATE attempts SET cost_usd = ? WHERE attempt_id = ?",
                        (cost_text, attempt_id),
                    )
                    self._upsert_spend(conn, attempt, "actual", cost_text, "USD", now)
                    self._touch(conn, attempt["job_id"], now)
                    self._event(
                        conn,
                        attempt["job_id"],
                        "attempt_cost",
                        attempt_id=attempt_id,
                        detail={"cost_usd": cost_text},
                        at=now,
                    )
                return attempt_from_row(self._attempt_row(conn, attempt_id))
            conn.execute(
                "UPDATE attempts SET state = ?, ended_at = ?, "
                "cost_usd = COALESCE(?, cost_usd) WHERE attempt_id = ?",
                (new.value, now, cost_text, attempt_id),
            )
            if cost_text is not None:
                self._upsert_spend(conn, attempt, "actual", cost_text, "USD", now)
            self._touch(conn, attempt["job_id"], now)
            self._event(
                conn,
                attempt["job_id"],
                "attempt_finished",
                attempt_id=attempt_id,
                detail={"state": new.value, "cost_usd": cost_text},
                at=now,
            )
            row = self._attempt_row(conn, attempt_id)

        return attempt_from_row(row)

    # --- spend ----------------------------------------------------------------------

    def record_spend(
        self,
        attempt_id: str,
        *,
        kind: SpendKind,
        usd: Decimal,
        currency: str = "USD",
    ) -> SpendEntry:
        """Write one line of the spend ledger, once per attempt and kind.

        Recording the same attempt and kind again (a broker re-running its last
        step after a crash) replaces the line instead of adding one, so each cost is
        counted once; the latest figure wins.

        Args:
            attempt_id: The attempt the money is for.
            kind: ``"quote"`` (estimated before the run) or ``"actual"``.
            usd: The exact amount.
            currency: The currency of `usd`; the broker prices in ``"USD"``.

        Returns:
            The ledger line as stored.

        Raises:
            ValueError: `kind` is unknown or the amount is negative or not finite.
            TypeError: The amount is not a Decimal.
        """
        if kind not in _SPEND_KINDS:
            raise ValueError(f"spend kind must be 'quote' or 'actual'; got {kind!r}")
        _require_text(currency, "currency")
        usd_text = decimal_text(usd, what="usd")
        assert usd_text is not None, "decimal_text returns text for a Decimal"
        now = self._now()

        with self._write() as conn:
            attempt = self._attempt_row(conn, attempt_id)
            self._upsert_spend(conn, attempt, kind, usd_text, currency, now)
            self._event(
                conn,
                attempt["job_id"],
                "spend",
                attempt_id=attempt_id,
                detail={"kind": kind, "usd": usd_text, "currency": currency},
                at=now,
            )
            row = conn.execute(
                "SELECT * FROM spend WHERE attempt_id = ? AND kind = ?",
                (attempt_id, kind),
            ).fetchone()

        return spend_from_row(row)

    def spend(
        self,
        period: str | None = None,
        project: str | None = None,
        *,
        kind: SpendKind = "actual",
        currency: str = "USD",
    ) -> Decimal:
        """Total the ledger for one calendar month (UTC).

        Args:
            period: ``"YYYY-MM"``; the current month unless given.
            project: Only jobs created with this project label.
            kind: ``"actual"`` (money spent) or ``"quote"`` (money estimated).
            currency: Only lines in this currency.

        Returns:
            The exact total; ``Decimal("0")`` when nothing was spent.

        Raises:
            ConfigurationError: `period` is not ``YYYY-MM``.
        """
        start, end = self._month(period)
        sql = (
            "SELECT spend.usd FROM spend JOIN jobs USING (job_id) "
            "WHERE spend.kind = ? AND spend.currency = ? "
            "AND spend.at >= ? AND spend.at < ?"
        )
        params: list[Any] = [kind, currency, start, end]
        if project is not None:
            sql += " AND jobs.project = ?"
            params.append(project)

        # Summed here, not in SQL: SQLite's SUM would turn the text into floats.
        # The context is wide enough that no sum is rounded; Inexact would say so.
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        with decimal.localcontext() as ctx:
            ctx.prec = decimal.MAX_PREC
            ctx.traps[decimal.Inexact] = True
            return sum((Decimal(row[0]) for row in rows), Decimal("0"))

    def spend_entries(self, job_id: str) -> list[SpendEntry]:
        """Every ledger line of a job, oldest first."""
        return [
            spend_from_row(row)
            for row in self._read_all(
                "SELECT * FROM spend WHERE job_id = ? ORDER BY spend_id", (job_id,)
            )
        ]

    # --- leases ---------------------------------------------------------------------

    def claim(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Take the job's lease, so that this owner alone drives it.

        Succeeds when nobody holds the lease, when it has expired, or when `owner`
        already holds it (which renews it). The check and the update are one
        statement, so of several processes claiming at once exactly one wins.

        Args:
            job_id: The job.
            owner: A name unique to the claiming process (host, pid, random part).
            lease_s: How long the lease lasts unless renewed.

        Returns:
            True when `owner` holds the lease now.

        Raises:
            JobNotFoundError: No job has this id.
        """
        _require_text(owner, "owner")
        now, expires = self._lease_times(lease_s)

        with self._write() as conn:
            self._job_row(conn, job_id)
            won = conn.execute(
                "UPDATE jobs SET owner = ?, lease_expires_at = ? WHERE job_id = ? "
                "AND (owner IS NULL OR owner = ? OR lease_expires_at <= ?)",
                (owner, expires, job_id, owner, now),
            ).rowcount
            if won:
                self._event(conn, job_id, "claimed", detail={"owner": owner}, at=now)

        logger.debug("job %s claim by %s: %s", job_id, owner, bool(won))
        return bool(won)

    def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend a lease that `owner` still holds; False when it was lost."""
        _require_text(owner, "owner")
        now, expires = self._lease_times(lease_s)

        with self._write() as conn:
            self._job_row(conn, job_id)
            kept = conn.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE job_id = ? "
                "AND owner = ? AND lease_expires_at > ?",
                (expires, job_id, owner, now),
            ).rowcount

        return bool(kept)

    def release(self, job_id: str, owner: str) -> bool:
        """Give the lease up; False when `owner` did not hold it."""
        _require_text(owner, "owner")
        now = self._now()

        with self._write() as conn:
            self._job_row(conn, job_id)
            released = conn.execute(
                "UPDATE jobs SET owner = NULL, lease_expires_at = NULL "
                "WHERE job_id = ? AND owner = ?",
                (job_id, owner),
            ).rowcount
            if released:
                self._event(conn, job_id, "released", detail={"owner": owner}, at=now)

        return bool(released)

    # --- reading --------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """The job with this id.

        Raises:
            JobNotFoundError: No job has this id.
        """
        with self._lock:
            return job_from_row(self._job_row(self._conn, job_id))

    def get_attempt(self, attempt_id: str) -> AttemptRecord:
        """The attempt with this id.

        Raises:
            JobNotFoundError: No attempt has this id.
        """
        with self._lock:
            return attempt_from_row(self._attempt_row(self._conn, attempt_id))

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        """The job created with this key, or None."""
        rows = self._read_all("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
        return job_from_row(rows[0]) if rows else None

    def list_jobs(
        self, state: JobState | str | None = None, limit: int = 100
    ) -> list[JobRecord]:
        """Jobs, newest first.

        Args:
            state: Only jobs in this state.
            limit: At most this many.
        """
        if limit < 1:
            raise ConfigurationError(f"limit must be 1 or more; got {limit}")
        if state is None:
            rows = self._read_all(
                "SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self._read_all(
                "SELECT * FROM jobs WHERE state = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (JobState(state).value, limit),
            )
        return [job_from_row(row) for row in rows]

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs not in a final state (detached ones included), oldest first.

        These are the jobs a restarted broker resumes.
        """
        finals = sorted(s.value for s in JobState if s.terminal)
        marks = ", ".join("?" * len(finals))
        rows = self._read_all(
            f"SELECT * FROM jobs WHERE state NOT IN ({marks}) "
            "ORDER BY created_at, rowid",
            finals,
        )
        return [job_from_row(row) for row in rows]

    def events(self, job_id: str) -> list[Event]:
        """The job's history, oldest first."""
        rows = self._read_all(
            "SELECT * FROM events WHERE job_id = ? ORDER BY event_id", (job_id,)
        )
        return [event_from_row(row) for row in rows]

    def attempts(self, job_id: str) -> list[AttemptRecord]:
        """The job's attempts, first first."""
        rows = self._read_all(
            "SELECT * FROM attempts WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [attempt_from_row(row) for row in rows]

    # --- internals ------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from the start."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _read_all(self, sql: str, params: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _now(self) -> str:
        return to_iso(self._clock.now())

    def _lease_times(self, lease_s: float) -> tuple[str, str]:
        if not lease_s > 0:
            raise ConfigurationError(f"lease_s must be above 0 seconds; got {lease_s}")
        now = self._clock.now()
        return to_iso(now), to_iso(now + timedelta(seconds=lease_s))

    def _month(self, period: str | None) -> tuple[str, str]:
        if period is None:
            period = self._clock.now().strftime("%Y-%m")
        match = _PERIOD.match(period)
        if match is None:
            raise ConfigurationError(
                f"spend period must be a month written YYYY-MM, like 2026-01; "
                f"got {period!r}"
            )

        year, month = int(match[1]), int(match[2])
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        start = f"{year:04d}-{month:02d}-01T00:00:00.000000+00:00"
        end = f"{next_year:04d}-{next_month:02d}-01T00:00:00.000000+00:00"
        return start, end

    def _set_job_json(
        self, job_id: str, column: Literal["plan", "result"], value: Any
    ) -> JobRecord:
        now = self._now()
        with self._write() as conn:
            self._job_row(conn, job_id)
            conn.execute(
                f"UPDATE jobs SET {column} = ?, updated_at = ? WHERE job_id = ?",
                (dump_json(value), now, job_id),
            )
            self._event(conn, job_id, column, at=now)
            row = self._job_row(conn, job_id)
        return job_from_row(row)

    @staticmethod
    def _job_row(conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(
                f"no job {job_id!r} in the job store; `automl-broker list` shows the "
                "known jobs"
            )
        return row

    @staticmethod
    def _attempt_row(conn: sqlite3.Connection, attempt_id: str) -> sqlite3.Row:
        row = conn.execute(
            "SELECT * FROM attempts WHERE attempt_id = ?", (attempt_id,)
        ).fetchone()
        if row is None:
            raise JobNotFoundError(f"no attempt {attempt_id!r} in the job store")
        return row

    def _attempt_of(
        self, conn: sqlite3.Connection, job_id: str, attempt_id: str
    ) -> sqlite3.Row:
        attempt = self._attempt_row(conn, attempt_id)
        if attempt["job_id"] != job_id:
            raise JobConflictError(
                f"attempt {attempt_id} belongs to job {attempt['job_id']}, not {job_id}"
            )
        return attempt

    @staticmethod
    def _check_owner(job: sqlite3.Row, owner: str, now: str) -> None:
        expires = job["lease_expires_at"]
        if job["owner"] != owner or expires is None or expires <= now:
            holder = job["owner"] or "nobody"
            raise JobConflictError(
                f"job {job['job_id']} is not leased to {owner!r} (holder: {holder}, "
                f"lease until {expires}); claim it first"
            )

    @staticmethod
    def _touch(conn: sqlite3.Connection, job_id: str, now: str) -> None:
        conn.execute("UPDATE jobs SET updated_at = ? WHERE job_id = ?", (now, job_id))

    @staticmethod
    def _upsert_spend(
        conn: sqlite3.Connection,
        attempt: sqlite3.Row,
        kind: str,
        usd_text: str,
        currency: str,
        now: str,
    ) -> None:
        conn.execute(
            "INSERT INTO spend (job_id, attempt_id, provider, kind, usd, currency, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (attempt_id, kind) DO UPDATE "
            "SET usd = excluded.usd, currency = excluded.currency, at = excluded.at",
            (
                attempt["job_id"],
                attempt["attempt_id"],
                attempt["provider"],
                kind,
                usd_text,
                currency,
                now,
            ),
        )

    @staticmethod
    def _event(
        conn: sqlite3.Connection,
        job_id: str,
        kind: str,
        *,
        at: str,
        attempt_id: str | None = None,
        from_state: JobState | None = None,
        to_state: JobState | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO events (job_id, attempt_id, at, kind, from_state, to_state, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                attempt_id,
                at,
                kind,
                None if from_state is None else from_state.value,
                None if to_state is None else to_state.value,
                dump_json(detail),
            ),
        )


def _require_text(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty string; got {value!r}")


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, allow_nan=False)
