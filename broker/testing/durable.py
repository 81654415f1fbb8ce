"""A scripted provider whose "service" lives in a file, so it outlives the broker.

:class:`DurableProvider` behaves like :class:`broker.testing.ScriptedProvider` (a job's
life written as ``(state, at_s)`` steps, billing while the job holds its resource, a
cancel that takes ``cancel_delay_s`` to land), but everything the remote service would
know is kept in one SQLite file: its jobs by id and idempotency key, the clock origin,
the create and stop calls, the fault counters. A broker process may be SIGKILLed at any
point and a new one started; the new one finds the same service, as it would find a
cloud's.

Time is the real clock sped up: ``time_scale`` simulated seconds pass per real second
(the default, 600, is one simulated minute per 0.1 s). Give the broker a
:class:`ScaledClock` with the same scale so that its poll interval and the script agree.

Unlike the scripted fake, a submit never attaches to an existing job: two submits with
one key create two jobs and two bills, as on a service without client tokens. That is
what makes the fake able to catch a broker that submits twice.

Faults are written per job in the spec's provider options, under ``"faults"``, so they
follow the job across processes and fire once each:

- ``"submit": ["capacity", "throttled"]``: the next submits of this key raise these;
- ``"lose_reply": true``: the first create succeeds, then its reply is lost;
- ``"queued_error": "quota"``: polls while queued carry this error on the status;
- ``"poll": {"2": "5xx"}``: the job's 2nd poll raises this;
- ``"expire": [3]``: the job's 3rd poll raises :class:`CredentialsExpiredError` unless
  the provider was built with ``refresh_ok=True``;
- ``"expire_hard": [3]``: the same, and no refresh helps (the broker detaches; a later
  resume, past that poll, goes on).

A job may also carry its own ``"script"`` in the options. The service stops a job on its
own (``stopped``, ``MaxRuntimeExceeded``) once it has run for the job's
``runtime_limit_s``, as real services do: that limit caps the bill even while no broker
watches.

Fault kinds: ``quota``, ``capacity``, ``throttled``, ``5xx``, ``expired``, ``invalid``.

Example:
    >>> fake = DurableProvider(state_path=tmp_path / "service.db", name="sagemaker")
    >>> broker = Broker(providers={"sagemaker": fake}, clock=ScaledClock(600))
    >>> DurableService(tmp_path / "service.db").created_count()  # doctest: +SKIP
    1
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from broker.errors import (
    CapacityError,
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderError,
    ProviderJobFailedError,
    QuotaExceededError,
    ThrottledError,
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
from broker.states import JobState
from broker.store._location import switch_to_wal
from broker.testing.scripted import BILLABLE_STATES, ScriptStep, _steps

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["FAULT_KINDS", "DurableProvider", "DurableService", "ScaledClock"]

DEFAULT_SCRIPT = (("queued", 0), ("running", 30), ("succeeded", 300))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    submitted_s REAL NOT NULL,
    cancel_s REAL,
    polls INTEGER NOT NULL DEFAULT 0,
    faults TEXT NOT NULL,
    prior TEXT NOT NULL,
    script TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (provider, idempotency_key);
CREATE TABLE IF NOT EXISTS calls (
    call_id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    method TEXT NOT NULL,
    job_id TEXT,
    at_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fault_use (
    provider TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fault TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (provider, idempotency_key, fault)
);
"""


class ScaledClock:
    """The real clock sped up: `scale` simulated seconds per real second.

    ``monotonic`` and ``sleep`` run in simulated seconds; ``now`` is the real UTC
    time, so times written to a job store stay comparable between processes.
    """

    def __init__(self, scale: float = 600.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be above 0; got {scale}")
        self.scale = scale

    def monotonic(self) -> float:
        return time.monotonic() * self.scale

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.scale)


class DurableService:
    """The file behind :class:`DurableProvider`: what the "cloud" knows.

    Open it from a test to read what happened, from any process.

    Args:
        path: The service's SQLite file; created on first use.
        time_scale: Simulated seconds per real second; fixed by whoever creates the
            file, read back by every later opener.
    """

    def __init__(self, path: str | os.PathLike[str], *, time_scale: float = 600.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        switch_to_wal(self._conn, timeout_s=30.0)
        with self.write() as conn:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('origin', ?), ('scale', ?)",
                (repr(time.time()), repr(float(time_scale))),
            )
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.origin = float(meta["origin"])
        self.time_scale = float(meta["scale"])

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the file's write lock from the start."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def now_s(self) -> float:
        """Simulated seconds since the service was created."""
        return (time.time() - self.origin) * self.time_scale

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    # --- what happened --------------------------------------------------------------

    def created_count(self, provider: str | None = None, key: str | None = None) -> int:
        """Jobs created on the service, optionally for one provider or one key."""
        return len(self.jobs(provider, key))

    def jobs(
        self, provider: str | None = None, key: str | None = None
    ) -> list[sqlite3.Row]:
        sql, params = "SELECT * FROM jobs WHERE 1 = 1", list[Any]()
        if provider is not None:
            sql, params = sql + " AND provider = ?", [*params, provider]
        if key is not None:
            sql, params = sql + " AND idempotency_key = ?", [*params, key]
        return self.rows(sql + " ORDER BY rowid", params)

    def call_count(self, method: str, provider: str | None = None) -> int:
        """Backend calls received: ``"create"`` or ``"stop"``."""
        sql = "SELECT COUNT(*) FROM calls WHERE method = ?"
        params: list[Any] = [method]
        if provider is not None:
            sql, params = sql + " AND provider = ?", [*params, provider]
        return int(self.rows(sql, params)[0][0])

    def duplicate_keys(self) -> list[str]:
        """Idempotency keys that created more than one job: double submissions."""
        rows = self.rows(
            "SELECT provider, idempotency_key FROM jobs "
            "GROUP BY provider, idempotency_key HAVING COUNT(*) > 1"
        )
        return [f"{row[0]}:{row[1]}" for row in rows]

    def close(self) -> None:
        self._conn.close()


class DurableProvider(Provider):
    """A scripted provider whose service state is kept in a file; see the module doc.

    Args:
        state_path: The service's SQLite file, shared by every process and every
            provider name that should see the same "cloud".
        name: The provider name reported in refs and errors.
        script: ``(state, at_s)`` steps every job follows from its own submit.
        usd_per_s: Price per simulated second while the job holds its resource.
        cancel_delay_s: Simulated seconds from the stop call to ``cancelled``.
        time_scale: Simulated seconds per real second (used when the file is new).
        refresh_ok: What :meth:`refresh_credentials` answers.
        credentials: Settings a real adapter would authenticate with; kept private,
            and used only to sign the artifact URL in the job's handle.
        credential_source: What :meth:`availability` names as the credentials'
            source (the planner wants ``AUTOML_BROKER_H2O_URL`` for a cloud H2O).
    """

    name: ClassVar[str] = "durable"  # type: ignore[misc]
    kind: ClassVar[Literal["cloud", "local"]] = "cloud"

    def __init__(
        self,
        *,
        state_path: str | os.PathLike[str],
        name: str = "durable",
        script: Sequence[Any] = DEFAULT_SCRIPT,
        usd_per_s: Decimal = Decimal("0.001"),
        cancel_delay_s: float = 20.0,
        time_scale: float = 600.0,
        refresh_ok: bool = True,
        credentials: Mapping[str, str] | None = None,
        credential_source: str = "file",
    ) -> None:
        self.name = name  # type: ignore[misc]
        self.script: list[ScriptStep] = _steps(script)
        self.usd_per_s = usd_per_s
        self.cancel_delay_s = cancel_delay_s
        self.cancel_latency_s = cancel_delay_s
        self.refresh_ok = refresh_ok
        self._credentials = dict(credentials or {})
        self.credential_source = credential_source
        self.service = DurableService(state_path, time_scale=time_scale)

    def __repr__(self) -> str:
        return f"DurableProvider(name={self.name!r}, path={str(self.service.path)!r})"

    # --- the provider interface -----------------------------------------------------

    def availability(self) -> Availability:
        return Availability(True, "durable test provider", self.credential_source)

    def submit(self, job: ProviderJob) -> ProviderJobRef:
        faults = dict(job.options.get("faults") or {})
        key = job.idempotency_key
        fault = self._next_submit_fault(key, list(faults.get("submit") or []))
        if fault is not None:
            raise _fault(fault, self.name, f"submit of {key}")

        job_id = f"{self.name}-{uuid.uuid4().hex[:12]}"
        script = _limited(
            _steps(job.options.get("script") or self.script), job.runtime_limit_s
        )
        script_json = json.dumps([[s.state.value, s.at_s, s.secondary] for s in script])
        lose_reply = bool(faults.get("lose_reply"))
        with self.service.write() as conn:
            now_s = self.service.now_s()
            conn.execute(
                "INSERT INTO jobs (job_id, provider, idempotency_key, submitted_s, "
                "faults, prior, script) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    self.name,
                    key,
                    now_s,
                    json.dumps(faults),
                    _prior(job),
                    script_json,
                ),
            )
            conn.execute(
                "INSERT INTO calls (provider, method, job_id, at_s) "
                "VALUES (?, 'create', ?, ?)",
                (self.name, job_id, now_s),
            )
            if lose_reply:
                lose_reply = self._use_fault(conn, key, "lose_reply", limit=1)
        logger.debug("%s: created job %s", self.name, job_id)
        if lose_reply:
            raise TransientProviderError(
                f"{self.name}: the reply to create was lost (job {job_id} exists)",
                provider=self.name,
                original_type="ReadTimeoutError",
            )
        return self._ref(job_id, key, job.region)

    def find_by_idempotency_key(self, key: str) -> ProviderJobRef | None:
        rows = self.service.rows(
            "SELECT job_id FROM jobs WHERE provider = ? AND idempotency_key = ? "
            "ORDER BY rowid LIMIT 1",
            (self.name, key),
        )
        return self._ref(rows[0]["job_id"], key, None) if rows else None

    def poll(self, ref: ProviderJobRef) -> ProviderStatus:
        with self.service.write() as conn:
            conn.execute(
                "UPDATE jobs SET polls = polls + 1 WHERE job_id = ?", (ref.job_id,)
            )
            row = self._row(conn, ref)
        faults = json.loads(row["faults"])
        number = int(row["polls"])
        expired = number in set(faults.get("expire") or []) and not self.refresh_ok
        if expired or number in set(faults.get("expire_hard") or []):
            raise CredentialsExpiredError(
                f"{self.name}: ExpiredToken while polling job {ref.job_id}; the job "
                "may still be running and billing",
                provider=self.name,
                code=401,
                original_type="ExpiredTokenException",
                provider_job_id=ref.job_id,
            )
        poll_fault = (faults.get("poll") or {}).get(str(number))
        if poll_fault is not None:
            raise _fault(poll_fault, self.name, f"poll of {ref.job_id}")

        state, secondary = self._state(row)
        error: ProviderError | None = None
        if state == JobState.QUEUED and faults.get("queued_error"):
            error = _fault(faults["queued_error"], self.name, "queued job")
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
        with self.service.write() as conn:
            row = self._row(conn, ref)
            if row["cancel_s"] is not None or self._state(row)[0].terminal:
                return
            now_s = self.service.now_s()
            conn.execute(
                "UPDATE jobs SET cancel_s = ? WHERE job_id = ?", (now_s, ref.job_id)
            )
            conn.execute(
                "INSERT INTO calls (provider, method, job_id, at_s) "
                "VALUES (?, 'stop', ?, ?)",
                (self.name, ref.job_id, now_s),
            )

    def result(self, ref: ProviderJobRef, job: ProviderJob) -> ProviderResult:
        row = self._row(None, ref)
        state = self._state(row)[0]
        if state != JobState.SUCCEEDED:
            raise InvalidRequestError(
                f"{self.name} job {ref.job_id} is {state.value}; a result exists only "
                "once it succeeded",
                provider=self.name,
                provider_job_id=ref.job_id,
            )
        model_id = f"{ref.job_id}-prior"
        return ProviderResult(
            leaderboard=[
                LeaderboardEntry(
                    model_id=model_id, provider=self.name, algorithm="prior"
                )
            ],
            best_model_id=model_id,
            provider_units={"billed_s": self._billed_s(row)},
            actual_cost_usd=self._usd(row),
            runtime_s=self._ended_s(row) - float(row["submitted_s"]),
        )

    def predict(
        self, ref: ProviderJobRef, job: ProviderJob, frame: pd.DataFrame
    ) -> np.ndarray:
        import numpy as np

        prior = json.loads(self._row(None, ref)["prior"])
        if job.schema.task == Task.REGRESSION:
            return np.full(len(frame), float(prior["mean"]))
        shares = [float(prior["shares"].get(str(c), 0.0)) for c in job.schema.classes]
        return np.tile(np.array(shares), (len(frame), 1))

    def billed_usd(self, ref: ProviderJobRef) -> Decimal | None:
        return self._usd(self._row(None, ref))

    def refresh_credentials(self) -> bool:
        return self.refresh_ok

    def close(self) -> None:
        self.service.close()

    # --- service totals -------------------------------------------------------------

    def billed_total_usd(self) -> Decimal:
        """What the service billed this provider name for every job, so far."""
        rows = self.service.rows("SELECT * FROM jobs WHERE provider = ?", (self.name,))
        return sum((self._usd(row) for row in rows), Decimal("0"))

    def state_of(self, job_id: str) -> JobState:
        """A service job's state now, read without a poll being counted."""
        return self._state(self._row(None, ProviderJobRef(self.name, job_id, "")))[0]

    # --- internals ------------------------------------------------------------------

    def _ref(self, job_id: str, key: str, region: str | None) -> ProviderJobRef:
        extra: dict[str, Any] = {}
        if self._credentials:
            # A signed artifact URL, the way real services hand them out.
            secret = "".join(sorted(self._credentials.values()))
            digest = hashlib.sha256(f"{secret}{job_id}".encode()).hexdigest()[:24]
            extra["artifact_url"] = (
                f"https://127.0.0.1/artifacts/{job_id}?X-Amz-Signature={digest}"
            )
        return ProviderJobRef(self.name, job_id, key, region, extra)

    def _row(self, conn: sqlite3.Connection | None, ref: ProviderJobRef) -> Any:
        source = conn if conn is not None else self.service._conn
        row = source.execute(
            "SELECT * FROM jobs WHERE job_id = ?", (ref.job_id,)
        ).fetchone()
        if row is None:
            raise ProviderJobFailedError(
                f"{self.name} has no job {ref.job_id}",
                provider=self.name,
                code="NotFound",
                provider_job_id=ref.job_id,
            )
        return row

    def _next_submit_fault(self, key: str, planned: list[str]) -> str | None:
        if not planned:
            return None
        with self.service.write() as conn:
            used = self._used(conn, key, "submit")
            if used >= len(planned):
                return None
            self._use_fault(conn, key, "submit", limit=len(planned))
        return planned[used]

    def _used(self, conn: sqlite3.Connection, key: str, fault: str) -> int:
        row = conn.execute(
            "SELECT used FROM fault_use WHERE provider = ? AND idempotency_key = ? "
            "AND fault = ?",
            (self.name, key, fault),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _use_fault(
        self, conn: sqlite3.Connection, key: str, fault: str, *, limit: int
    ) -> bool:
        """Count one use of a fault; False when it is used up already."""
        if self._used(conn, key, fault) >= limit:
            return False
        conn.execute(
            "INSERT INTO fault_use VALUES (?, ?, ?, 1) ON CONFLICT "
            "(provider, idempotency_key, fault) DO UPDATE SET used = used + 1",
            (self.name, key, fault),
        )
        return True

    def _state(self, row: Any) -> tuple[JobState, str | None]:
        now = self.service.now_s()
        submitted, cancel_s = float(row["submitted_s"]), row["cancel_s"]
        step = self._step(row, now - submitted)
        if cancel_s is None or now < cancel_s:
            return step.state, step.secondary or step.state.value
        before = self._step(row, float(cancel_s) - submitted)
        if before.state.terminal:
            return before.state, before.secondary or before.state.value
        if now >= float(cancel_s) + self.cancel_delay_s:
            return JobState.CANCELLED, "Stopped"
        return JobState.CANCELLING, "Stopping"

    def _step(self, row: Any, elapsed_s: float) -> ScriptStep:
        script = _script(row)
        current = script[0]
        for step in script:
            if step.at_s <= elapsed_s:
                current = step
        return current

    def _ended_s(self, row: Any) -> float:
        now = self.service.now_s()
        submitted, cancel_s = float(row["submitted_s"]), row["cancel_s"]
        cancelled_early = (
            cancel_s is not None
            and not self._step(row, float(cancel_s) - submitted).state.terminal
        )
        if cancelled_early:
            return min(now, float(cancel_s) + self.cancel_delay_s)
        for step in _script(row):
            if step.state.terminal and submitted + step.at_s <= now:
                return submitted + step.at_s
        return now

    def _billed_s(self, row: Any) -> float:
        submitted = float(row["submitted_s"])
        end = self._ended_s(row)
        start = next(
            (submitted + s.at_s for s in _script(row) if s.state in BILLABLE_STATES),
            None,
        )
        if start is None or start >= end:
            return 0.0
        return end - start

    def _usd(self, row: Any) -> Decimal:
        # Whole simulated milliseconds, so that every reader gets the same figure.
        billed_ms = Decimal(round(self._billed_s(row) * 1000))
        return self.usd_per_s * billed_ms / Decimal(1000)


_FAULTS: dict[str, tuple[type[ProviderError], dict[str, Any]]] = {
    "quota": (QuotaExceededError, {"code": "ResourceLimitExceeded"}),
    "capacity": (CapacityError, {"code": "InsufficientCapacity"}),
    "throttled": (ThrottledError, {"code": 429}),
    "5xx": (TransientProviderError, {"code": 503}),
    "expired": (CredentialsExpiredError, {"code": 401}),
    "invalid": (InvalidRequestError, {"code": 400}),
}
FAULT_KINDS = tuple(_FAULTS)


def _fault(kind: str, provider: str, where: str) -> ProviderError:
    try:
        cls, fields = _FAULTS[kind]
    except KeyError:
        raise ValueError(
            f"unknown fault {kind!r}; choose from {sorted(_FAULTS)}"
        ) from None
    return cls(
        f"{provider}: injected {kind} fault on {where}", provider=provider, **fields
    )


def _prior(job: ProviderJob) -> str:
    """What the fake "learns": class shares, or the mean, of the training target."""
    target = job.train[job.schema.target_safe_name]
    if job.schema.task == Task.REGRESSION:
        return json.dumps({"mean": float(target.mean()) if len(target) else 0.0})
    counts = target.astype(str).value_counts(normalize=True)
    return json.dumps({"shares": {str(k): float(v) for k, v in counts.items()}})


# --- a broker over durable fakes, for crash tests and the soak run -----------------------

# Hourly prices of the fake catalog: every name gets one machine in region "r1".
FAKE_RATES_USD_PER_HOUR = {
    "sagemaker": "3.60",
    "vertex": "3.96",
    "azure": "4.32",
    "h2o": "5.04",
}


def fake_catalog() -> Any:
    """A price catalog with one machine per provider name, cheapest first in the
    order of :data:`FAKE_RATES_USD_PER_HOUR`; local runs at the broker's local rate."""
    from cost_models.catalog import Catalog, PriceRow

    rows = [
        PriceRow(name, "fake-machine", "r1", price=Decimal(rate), memory_gib=64)
        for name, rate in FAKE_RATES_USD_PER_HOUR.items()
    ]
    rows.append(PriceRow("local", "this-machine", "local", price=None, memory_gib=64))
    return Catalog.from_rows(rows)


def build_broker(config: Mapping[str, Any], **overrides: Any) -> Any:
    """A :class:`broker.runner.Broker` over durable fakes, from a JSON-ready config.

    Config keys: ``store`` (job store file), ``service`` (the fakes' file),
    ``providers`` (name -> :class:`DurableProvider` keyword settings), and optionally
    ``time_scale`` (600), ``poll_interval_s`` (30), ``backoff_s`` (5),
    ``pending_timeout_s`` (600), ``lease_s`` (300). Every process given the same config
    sees the same store and the same "cloud".
    """
    from broker.runner import Broker
    from broker.store import JobStore

    scale = float(config.get("time_scale", 600.0))
    providers = {
        name: DurableProvider(
            state_path=config["service"],
            name=name,
            time_scale=scale,
            **_provider_settings(name, settings),
        )
        for name, settings in config["providers"].items()
    }
    settings: dict[str, Any] = {
        "store": JobStore(config["store"]),
        "providers": providers,
        "clock": ScaledClock(scale),
        "catalog": fake_catalog(),
        "poll_interval_s": float(config.get("poll_interval_s", 30.0)),
        "backoff_s": float(config.get("backoff_s", 5.0)),
        "pending_timeout_s": float(config.get("pending_timeout_s", 600.0)),
        "lease_s": float(config.get("lease_s", 300.0)),
        "local_rate_usd_per_hour": Decimal("7.20"),  # local ranks last
        **overrides,
    }
    return Broker(**settings)


def job_spec(job: Mapping[str, Any]) -> Any:
    """The :class:`broker.spec.JobSpec` of one job entry of a driver config."""
    from broker.spec import parse_spec

    return parse_spec(
        {
            "data": job["data"],
            "target": job["target"],
            "constraints": {"providers": list(job["providers"])},
            "provider_options": dict(job.get("provider_options") or {}),
            "budget": dict(job.get("budget") or {}),
        }
    )


def run_jobs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run each job of ``config["jobs"]`` in turn with ``Broker.run``; one outcome
    line per job (its job id and state, or the error that ended it)."""
    from broker.errors import BrokerError

    broker = build_broker(config)
    outcomes = []
    for job in config["jobs"]:
        try:
            result = broker.run(
                job_spec(job), run_dir=job["run_dir"], idempotency_key=job["key"]
            )
            outcome = {
                "key": job["key"],
                "job_id": result.job_id,
                "state": result.state,
            }
        except BrokerError as exc:
            outcome = {"key": job["key"], "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(outcome), flush=True)
        outcomes.append(outcome)
    return outcomes


def _provider_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    from broker.planner import H2O_URL_ENV

    out = dict(settings)
    if name == "h2o":
        out.setdefault("credential_source", H2O_URL_ENV)
    if "usd_per_s" in out:
        out["usd_per_s"] = Decimal(str(out["usd_per_s"]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m broker.testing.durable CONFIG.json``: run the config's jobs."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m broker.testing.durable CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    run_jobs(config)
    return 0


def _script(row: Any) -> list[ScriptStep]:
    return [
        ScriptStep(JobState(state), at_s, sec)
        for state, at_s, sec in _parsed(row["script"])
    ]


_PARSED: dict[str, list[Any]] = {}


def _parsed(text: str) -> list[Any]:
    if text not in _PARSED:
        _PARSED[text] = json.loads(text)
    return _PARSED[text]


def _limited(script: list[ScriptStep], runtime_limit_s: float) -> list[ScriptStep]:
    """The script as the service runs it: stopped once the job has held its resource
    for `runtime_limit_s`."""
    start = next((s.at_s for s in script if s.state in BILLABLE_STATES), None)
    if start is None or runtime_limit_s <= 0:
        return script
    limit_at = start + runtime_limit_s
    kept = [s for s in script if s.at_s < limit_at]
    if kept[-1].state.terminal:
        return kept
    return [*kept, ScriptStep(JobState.STOPPED, limit_at, "MaxRuntimeExceeded")]


if __name__ == "__main__":
    raise SystemExit(main())
