"""Tests of the job store (broker.store) and of secret redaction (broker.redact).

Every test uses a real SQLite file under tmp_path; the concurrency tests start real
processes with the spawn method, as separate broker processes would be.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.clock import FakeClock
from broker.errors import (
    ConfigurationError,
    IllegalTransitionError,
    JobConflictError,
    JobNotFoundError,
    StoreError,
)
from broker.redact import MASK, is_secret_key, redact, redact_text
from broker.states import JobState
from broker.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    JobStore,
    _location,
    default_store_path,
    migrate,
)
from broker.store._location import switch_to_wal

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPEC: dict[str, Any] = {"data": "train.csv", "target": "churn", "seed": 7}


@pytest.fixture(autouse=True)
def _no_cloud_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep cloud credentials out and the default store inside tmp_path."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "H2O_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.db", clock=clock) as opened:
        yield opened


def _new_job(store: JobStore, key: str = "key-1", **kwargs: Any) -> str:
    job = store.create_job(spec=SPEC, idempotency_key=key, run_dir=None, **kwargs)
    return job.job_id


def _new_attempt(store: JobStore, job_id: str, key: str = "att-key-1") -> str:
    attempt = store.start_attempt(
        job_id,
        provider="local",
        machine="cpu-2",
        region="local",
        quote={"training_usd": Decimal("0.00")},
        idempotency_key=key,
    )
    return attempt.attempt_id


# --- state history --------------------------------------------------------------------


def test_store_transition_records_exact_state_history(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = _new_job(store)
    attempt_id = _new_attempt(store, job_id)
    clock.advance(10)
    store.transition(job_id, JobState.QUEUED, attempt_id=attempt_id, secondary="Queued")
    clock.advance(5)
    store.transition(job_id, "running", attempt_id=attempt_id, secondary="Training")
    store.transition(job_id, "running", attempt_id=attempt_id, secondary="Training")
    clock.advance(60.5)
    store.transition(job_id, JobState.SUCCEEDED, attempt_id=attempt_id)

    history = [
        (e.kind, e.from_state, e.to_state, e.at)
        for e in store.events(job_id)
        if e.to_state is not None
    ]

    # The repeated "running/Training" poll wrote nothing; times are the clock's.
    assert history == [
        ("created", None, JobState.PENDING, T0),
        ("transition", JobState.PENDING, JobState.QUEUED, T0 + timedelta(seconds=10)),
        ("transition", JobState.QUEUED, JobState.RUNNING, T0 + timedelta(seconds=15)),
        (
            "transition",
            JobState.RUNNING,
            JobState.SUCCEEDED,
            T0 + timedelta(seconds=75.5),
        ),
    ]
    job = store.get(job_id)
    assert (job.state, job.updated_at) == (
        JobState.SUCCEEDED,
        T0 + timedelta(seconds=75.5),
    )
    assert store.attempts(job_id)[0].state == JobState.SUCCEEDED


def test_store_events_store_utc_iso_text(store: JobStore, tmp_path: Path) -> None:
    job_id = _new_job(store)

    raw = sqlite3.connect(tmp_path / "jobs.db").execute(
        "SELECT created_at FROM jobs WHERE job_id = ?", (job_id,)
    )

    assert raw.fetchone()[0] == "2026-01-01T00:00:00.000000+00:00"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ([], "cannot go from 'pending' to 'succeeded'"),
        (["queued", "running", "succeeded"], "cannot go from 'succeeded' to 'running'"),
    ],
)
def test_store_illegal_transition_raises_and_writes_nothing(
    store: JobStore, clock: FakeClock, path: list[str], message: str
) -> None:
    job_id = _new_job(store)
    for state in path:
        store.transition(job_id, state)
    before = (store.get(job_id), store.events(job_id))
    target = "succeeded" if not path else "running"
    clock.advance(1)

    with pytest.raises(IllegalTransitionError, match=message):
        store.transition(job_id, target, detail={"why": "test"})

    assert (store.get(job_id), store.events(job_id)) == before


def test_store_transition_unknown_job_raises_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError, match="no job 'job-missing'"):
        store.transition("job-missing", JobState.QUEUED)


def test_store_transition_stores_error_on_job(store: JobStore) -> None:
    job_id = _new_job(store)
    error = {"type": "QuotaExceededError", "message": "quota 0 for n1-standard-4"}

    job = store.transition(job_id, JobState.FAILED, error=error)

    assert job.error == error
    assert store.get(job_id).error == error


# --- idempotent creation --------------------------------------------------------------


def test_store_create_job_same_key_returns_existing_job(
    store: JobStore, clock: FakeClock
) -> None:
    first = store.create_job(
        spec=SPEC, idempotency_key="same", run_dir="runs/a", name="churn"
    )
    clock.advance(30)

    second = store.create_job(spec=SPEC, idempotency_key="same", run_dir="runs/b")

    assert second == first
    assert [job.job_id for job in store.list_jobs()] == [first.job_id]
    assert [e.kind for e in store.events(first.job_id)] == ["created"]
    assert store.find_by_idempotency_key("same") == first
    assert store.find_by_idempotency_key("other") is None


def test_store_create_job_same_key_other_spec_conflicts(store: JobStore) -> None:
    job_id = _new_job(store, key="same")

    with pytest.raises(JobConflictError, match=f"already belongs to job {job_id}"):
        store.create_job(
            spec={**SPEC, "target": "other"}, idempotency_key="same", run_dir=None
        )


def test_store_create_job_empty_key_raises(store: JobStore) -> None:
    with pytest.raises(ConfigurationError, match="idempotency_key must be a non-empty"):
        store.create_job(spec=SPEC, idempotency_key=" ", run_dir=None)


def _create_in_process(path: str, key: str, barrier: Any, results: Any) -> None:
    store = JobStore(path)
    barrier.wait(timeout=60)
    job = store.create_job(spec=SPEC, idempotency_key=key, run_dir=None)
    results.put(job.job_id)
    store.close()


def _claim_in_process(
    path: str, job_id: str, owner: str, barrier: Any, results: Any
) -> None:
    store = JobStore(path)
    barrier.wait(timeout=60)
    results.put((owner, store.claim(job_id, owner, lease_s=300)))
    store.close()


def _run_processes(target: Any, args_list: list[tuple[Any, ...]]) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    results = ctx.Queue()
    processes = [
        ctx.Process(target=target, args=(*args, barrier, results)) for args in args_list
    ]
    for process in processes:
        process.start()

    # Collect until every process answered, or stop early when one died.
    outcomes: list[Any] = []
    deadline = time.monotonic() + 60
    while len(outcomes) < len(processes) and time.monotonic() < deadline:
        try:
            outcomes.append(results.get(timeout=0.2))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                break
    for process in processes:
        process.join(timeout=10)

    assert [p.exitcode for p in processes] == [0] * len(processes)
    return outcomes


def test_store_create_job_race_between_processes_makes_one_job(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")

    job_ids = _run_processes(_create_in_process, [(path, "race-key")] * 4)

    # Four processes, one key: every process got the same job, the file has one row.
    assert len(set(job_ids)) == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1


# --- leases ---------------------------------------------------------------------------


def test_store_claim_race_between_processes_has_one_winner(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "jobs.db")
    with JobStore(path) as store:
        job_id = _new_job(store)

    outcomes = _run_processes(
        _claim_in_process, [(path, job_id, f"broker-{i}") for i in range(4)]
    )

    winners = [owner for owner, won in outcomes if won]
    assert len(winners) == 1
    with JobStore(path) as store:
        assert store.get(job_id).owner == winners[0]


def test_store_claim_respects_live_lease_and_takes_expired_one(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = _new_job(store)

    assert store.claim(job_id, "a", lease_s=60) is True
    assert store.claim(job_id, "b", lease_s=60) is False
    clock.advance(59)
    assert store.renew(job_id, "a", lease_s=60) is True  # now until t=119
    clock.advance(59)
    assert store.claim(job_id, "b", lease_s=60) is False
    clock.advance(1)  # t=119: a's lease has run out
    assert store.renew(job_id, "a", lease_s=60) is False
    assert store.claim(job_id, "b", lease_s=60) is True

    job = store.get(job_id)
    assert (job.owner, job.lease_expires_at) == ("b", T0 + timedelta(seconds=179))


def test_store_release_frees_the_job_for_another_owner(store: JobStore) -> None:
    job_id = _new_job(store)
    store.claim(job_id, "a", lease_s=60)

    assert store.release(job_id, "b") is False
    assert store.release(job_id, "a") is True
    assert store.claim(job_id, "b", lease_s=60) is True
    assert [e.kind for e in store.events(job_id)] == [
        "created",
        "claimed",
        "released",
        "claimed",
    ]


def test_store_transition_with_owner_requires_the_lease(store: JobStore) -> None:
    job_id = _new_job(store)
    store.claim(job_id, "a", lease_s=60)

    with pytest.raises(JobConflictError, match="not leased to 'b' \\(holder: a"):
        store.transition(job_id, JobState.QUEUED, owner="b")

    assert store.transition(job_id, JobState.QUEUED, owner="a").state == "queued"


def test_store_claim_rejects_non_positive_lease(store: JobStore) -> None:
    job_id = _new_job(store)

    with pytest.raises(ConfigurationError, match="lease_s must be above 0 seconds"):
        store.claim(job_id, "a", lease_s=0)


# --- the file -------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_store_files_are_owner_only(store: JobStore, tmp_path: Path) -> None:
    _new_job(store)
    names = ["jobs.db", "jobs.db-wal", "jobs.db-shm"]

    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in names}

    assert modes == dict.fromkeys(names, 0o600)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_store_tightens_an_existing_loose_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.touch()
    os.chmod(path, 0o644)

    JobStore(path).close()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_store_uses_wal_mode(store: JobStore, tmp_path: Path) -> None:
    mode = sqlite3.connect(tmp_path / "jobs.db").execute("PRAGMA journal_mode")

    assert mode.fetchone()[0] == "wal"


class _LockedThenFree:
    """A connection whose first ``locked`` journal-mode switches fail as SQLite's do."""

    def __init__(self, locked: int, message: str = "database is locked") -> None:
        self.locked = locked
        self.message = message
        self.calls = 0

    def execute(self, sql: str) -> Any:
        self.calls += 1
        if self.calls <= self.locked:
            raise sqlite3.OperationalError(self.message)
        return self

    def fetchone(self) -> tuple[str]:
        return ("WAL",)


def test_store_wal_switch_waits_out_a_file_another_process_holds() -> None:
    conn = _LockedThenFree(locked=3)

    mode = switch_to_wal(conn, timeout_s=5.0)  # type: ignore[arg-type]

    assert (mode, conn.calls) == ("wal", 4)


def test_store_wal_switch_gives_up_after_its_timeout() -> None:
    conn = _LockedThenFree(locked=10_000)
    started = time.monotonic()

    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        switch_to_wal(conn, timeout_s=0.1)  # type: ignore[arg-type]

    assert 1 < conn.calls < 100
    assert time.monotonic() - started < 1.0


def test_store_wal_switch_does_not_retry_other_errors() -> None:
    conn = _LockedThenFree(locked=5, message="disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        switch_to_wal(conn, timeout_s=5.0)  # type: ignore[arg-type]

    assert conn.calls == 1


def test_store_locked_for_too_long_names_the_wait_not_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_locked(conn: sqlite3.Connection, *, timeout_s: float) -> str:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(_location, "switch_to_wal", always_locked)

    with pytest.raises(StoreError) as caught:
        JobStore(tmp_path / "jobs.db")

    assert "stayed locked by another process" in str(caught.value)
    assert "AUTOML_BROKER_HOME" in str(caught.value)


def test_store_schema_version_is_recorded(store: JobStore, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "jobs.db")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")

    assert (row.fetchone()[0], store.schema_version) == (str(SCHEMA_VERSION), 1)


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    JobStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")

    with pytest.raises(StoreError, match="schema version 99, newer than the 1"):
        JobStore(path)


def test_store_migration_hook_applies_missing_versions(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    JobStore(path).close()
    later = {**MIGRATIONS, 2: ["ALTER TABLE jobs ADD COLUMN tags TEXT"]}

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    version = migrate(conn, path=str(path), migrations=later)
    conn.execute("COMMIT")

    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    assert (version, columns[-1]) == (2, "tags")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    assert row.fetchone()[0] == "2"


def test_store_default_path_follows_home_variable(tmp_path: Path) -> None:
    env = {"AUTOML_BROKER_HOME": str(tmp_path / "elsewhere")}

    with JobStore(env=env) as store:
        _new_job(store)

    assert default_store_path(env) == tmp_path / "elsewhere" / "jobs.db"
    assert store.path == tmp_path / "elsewhere" / "jobs.db"
    assert (tmp_path / "elsewhere" / "jobs.db").stat().st_size > 0


def test_store_default_path_without_variable_is_user_data_dir() -> None:
    path = default_store_path({})

    assert path.parts[-2:] == ("automl-broker", "jobs.db")


def test_store_accepts_sqlite_url(tmp_path: Path) -> None:
    with JobStore(url=f"sqlite:///{tmp_path}/via-url.db") as store:
        _new_job(store)

    assert (tmp_path / "via-url.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://broker:pw@127.0.0.1/jobs",
            "scheme 'postgresql' is not supported",
        ),
        ("sqlite:///:memory:", "names no file"),
        ("jobs.db", "has no scheme"),
    ],
)
def test_store_rejects_unsupported_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        JobStore(url=url)


def test_store_rejects_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StoreError, match="is not a usable job store"):
        JobStore(path)


def _work_then_die(path: str) -> None:
    """Record a job and its attempt, then end the process without closing."""
    store = JobStore(path)
    job = store.create_job(spec=SPEC, idempotency_key="durable", run_dir="runs/d")
    attempt = store.start_attempt(
        job.job_id,
        provider="vertex",
        machine="n1-standard-4",
        region="us-central1",
        quote={"training_usd": "1.20"},
        idempotency_key="durable-1",
    )
    store.set_provider_ref(attempt.attempt_id, {"name": "jobs/42"}, "jobs/42")
    store.transition(job.job_id, JobState.RUNNING, attempt_id=attempt.attempt_id)
    store.record_spend(attempt.attempt_id, kind="quote", usd=Decimal("1.20"))
    os._exit(0)


def test_store_reopen_after_process_ends_keeps_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    process = multiprocessing.get_context("spawn").Process(
        target=_work_then_die, args=(path,)
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0

    with JobStore(path) as store:
        job = store.find_by_idempotency_key("durable")
        assert job is not None
        attempts = store.attempts(job.job_id)
        unfinished = store.unfinished_jobs()
        kinds = [e.kind for e in store.events(job.job_id)]
        quoted = store.spend_entries(job.job_id)

    assert (job.state, job.run_dir) == (JobState.RUNNING, "runs/d")
    assert [(a.provider, a.provider_job_id) for a in attempts] == [
        ("vertex", "jobs/42")
    ]
    assert attempts[0].provider_ref == {"name": "jobs/42"}
    assert [j.job_id for j in unfinished] == [job.job_id]
    assert kinds == [
        "created",
        "attempt_started",
        "provider_ref",
        "transition",
        "spend",
    ]
    assert [(s.kind, s.usd) for s in quoted] == [("quote", Decimal("1.20"))]


# --- attempts -------------------------------------------------------------------------


def test_store_start_attempt_is_recorded_before_submission(store: JobStore) -> None:
    job_id = _new_job(store)

    attempt = store.start_attempt(
        job_id,
        provider="sagemaker",
        machine="ml.m5.xlarge",
        region="us-east-1",
        quote={"training_usd": Decimal("0.2304")},
        idempotency_key="k-att",
    )

    # Pending, no remote id yet: what a restarted broker looks up by key.
    assert (attempt.seq, attempt.state, attempt.provider_job_id) == (
        1,
        JobState.PENDING,
        None,
    )
    assert attempt.quote == {"training_usd": "0.2304"}


def test_store_start_attempt_same_key_returns_recorded_attempt(
    store: JobStore,
) -> None:
    job_id = _new_job(store)
    first = _new_attempt(store, job_id, key="k-att")

    again = _new_attempt(store, job_id, key="k-att")
    second = _new_attempt(store, job_id, key="k-att-2")

    assert again == first
    assert [a.seq for a in store.attempts(job_id)] == [1, 2]
    assert store.get_attempt(second).seq == 2


def test_store_start_attempt_on_finished_job_conflicts(store: JobStore) -> None:
    job_id = _new_job(store)
    store.transition(job_id, JobState.CANCELLED)

    with pytest.raises(JobConflictError, match="is cancelled; a finished job"):
        _new_attempt(store, job_id)


def test_store_failover_record_is_kept_on_attempt(store: JobStore) -> None:
    job_id = _new_job(store)
    attempt_id = _new_attempt(store, job_id)
    record = {"provider": "local", "reason": "QuotaExceeded", "message": "no quota"}

    attempt = store.record_failover(job_id, attempt_id, record)

    assert attempt.failover == record
    assert store.events(job_id)[-1].detail == record


def test_store_finish_attempt_twice_in_other_final_state_raises(
    store: JobStore,
) -> None:
    job_id = _new_job(store)
    attempt_id = _new_attempt(store, job_id)
    store.finish_attempt(attempt_id, state=JobState.FAILED, cost_usd=None)

    with pytest.raises(IllegalTransitionError, match="already ended 'failed'"):
        store.finish_attempt(attempt_id, state=JobState.SUCCEEDED, cost_usd=None)


def test_store_plan_and_result_round_trip(store: JobStore) -> None:
    job_id = _new_job(store)
    plan = {"candidates": [{"provider": "local", "usd": Decimal("0")}]}
    result = {"holdout_metrics": {"f1": 0.8125}, "leaderboard": []}

    store.set_plan(job_id, plan)
    job = store.set_result(job_id, result)

    assert (job.plan, job.result) == (
        {"candidates": [{"provider": "local", "usd": "0"}]},
        result,
    )


def test_store_list_and_unfinished_jobs(store: JobStore, clock: FakeClock) -> None:
    first = _new_job(store, key="a")
    clock.advance(1)
    second = _new_job(store, key="b")
    clock.advance(1)
    third = _new_job(store, key="c")
    store.transition(second, JobState.CANCELLED)
    store.transition(third, JobState.QUEUED)
    store.transition(third, JobState.DETACHED)

    assert [j.job_id for j in store.list_jobs()] == [third, second, first]
    assert [j.job_id for j in store.list_jobs(limit=1)] == [third]
    assert [j.job_id for j in store.list_jobs(state="cancelled")] == [second]
    assert [j.job_id for j in store.unfinished_jobs()] == [first, third]


# --- money ----------------------------------------------------------------------------


def test_store_spend_counted_once_when_recorded_twice(store: JobStore) -> None:
    job_id = _new_job(store)
    attempt_id = _new_attempt(store, job_id)

    store.record_spend(attempt_id, kind="actual", usd=Decimal("0.35"))
    store.record_spend(attempt_id, kind="actual", usd=Decimal("0.35"))
    store.finish_attempt(attempt_id, state="succeeded", cost_usd=Decimal("0.35"))
    store.record_spend(attempt_id, kind="quote", usd=Decimal("0.40"))

    assert store.spend("2026-01") == Decimal("0.35")
    assert store.spend("2026-01", kind="quote") == Decimal("0.40")
    assert len(store.spend_entries(job_id)) == 2


def test_store_spend_recorded_again_keeps_the_latest_figure(store: JobStore) -> None:
    attempt_id = _new_attempt(store, _new_job(store))

    store.record_spend(attempt_id, kind="actual", usd=Decimal("0.35"))
    entry = store.record_spend(attempt_id, kind="actual", usd=Decimal("0.41"))

    assert (entry.usd, store.spend("2026-01")) == (Decimal("0.41"), Decimal("0.41"))


def test_store_finishing_an_attempt_again_records_only_its_new_cost(
    store: JobStore, clock: FakeClock
) -> None:
    job_id = _new_job(store)
    attempt_id = _new_attempt(store, job_id)
    store.finish_attempt(attempt_id, state="succeeded", cost_usd=None)
    clock.advance(5)

    store.finish_attempt(attempt_id, state="succeeded", cost_usd=Decimal("0.006174"))
    store.finish_attempt(attempt_id, state="succeeded", cost_usd=Decimal("0.006174"))
    store.finish_attempt(attempt_id, state="succeeded", cost_usd=None)

    kinds = [(e.kind, e.detail) for e in store.events(job_id) if "attempt_" in e.kind]
    assert kinds[-2:] == [
        ("attempt_finished", {"state": "succeeded", "cost_usd": None}),
        ("attempt_cost", {"cost_usd": "0.006174"}),
    ]
    [attempt] = store.attempts(job_id)
    assert attempt.cost_usd == Decimal("0.006174")
    assert attempt.ended_at == T0  # the end is when it ended, not when it was priced
    assert store.spend("2026-01") == Decimal("0.006174")


def test_store_spend_totals_by_month_and_project(
    store: JobStore, clock: FakeClock
) -> None:
    jan = _new_attempt(store, _new_job(store, key="a", project="churn"), key="a1")
    store.record_spend(jan, kind="actual", usd=Decimal("0.10"))
    other = _new_attempt(store, _new_job(store, key="b", project="fraud"), key="b1")
    store.record_spend(other, kind="actual", usd=Decimal("0.20"))
    clock.advance(31 * 24 * 3600)  # into February
    feb = _new_attempt(store, _new_job(store, key="c", project="churn"), key="c1")
    store.record_spend(feb, kind="actual", usd=Decimal("1.05"))

    assert store.spend("2026-01") == Decimal("0.30")
    assert store.spend("2026-01", project="churn") == Decimal("0.10")
    assert store.spend() == Decimal("1.05")  # the clock's month
    assert store.spend("2025-12") == Decimal("0")


def test_store_spend_rejects_malformed_period(store: JobStore) -> None:
    with pytest.raises(ConfigurationError, match="YYYY-MM, like 2026-01; got '2026-1'"):
        store.spend("2026-1")


def test_store_decimals_round_trip_exactly(store: JobStore) -> None:
    job_id = _new_job(store)
    amounts = [
        Decimal("0.1"),
        Decimal("0.2"),
        Decimal("1.50"),
        Decimal("12345678901234567890.123456789012345678"),
    ]
    attempt_ids = [_new_attempt(store, job_id, key=f"k{i}") for i in range(4)]

    for attempt_id, usd in zip(attempt_ids, amounts, strict=True):
        store.finish_attempt(attempt_id, state="failed", cost_usd=usd)

    costs = [a.cost_usd for a in store.attempts(job_id)]
    assert [str(c) for c in costs] == ["0.1", "0.2", "1.50", str(amounts[3])]
    # 0.1 + 0.2 is 0.3 exactly, which floats would not give.
    assert store.spend("2026-01") == Decimal("12345678901234567891.923456789012345678")


@pytest.mark.parametrize(
    ("usd", "error", "message"),
    [
        (0.35, TypeError, "must be a decimal.Decimal, not float"),
        (Decimal("-1"), ValueError, "finite amount of zero or more; got -1"),
        (Decimal("NaN"), ValueError, "finite amount of zero or more; got NaN"),
    ],
)
def test_store_record_spend_rejects_bad_amounts(
    store: JobStore, usd: Any, error: type[Exception], message: str
) -> None:
    attempt_id = _new_attempt(store, _new_job(store))

    with pytest.raises(error, match=message):
        store.record_spend(attempt_id, kind="actual", usd=usd)


# --- secrets --------------------------------------------------------------------------


def _fake_secrets() -> dict[str, str]:
    """Secret-shaped strings assembled here from pieces; none is a real credential."""
    return {
        "aws_key_id": "AKIA" + "TESTONLY" + "7QX2Z9W4",
        "aws_secret": "wJalr" + "XUtnFEMI" + "-K7MDENG-bPxRfiCYFAKEKEY",
        "bearer": "ya29" + ".a0Af" + "HfakeTokenValue12345",
        "amz_sig": "3f9a" + "c0ffee" * 8,
        "sas_sig": "Zm9v" + "YmFyYmF6" + "cXV4%3D",
        "account_key": "bm90" + "YXJlYWxrZXk" + "xMjM0NTY3ODkw==",
        "db_password": "hunter" + "2-not-real",
        "api_key": "sk-" + "fake" + "0123456789abcdef",
    }


def test_store_writes_no_secret_to_disk(tmp_path: Path) -> None:
    s = _fake_secrets()
    path = tmp_path / "jobs.db"
    spec = {
        **SPEC,
        "provider_options": {
            "sagemaker": {
                "aws_access_key_id": s["aws_key_id"],
                "aws_secret_access_key": s["aws_secret"],
            },
            "azure": {
                "connection_string": (
                    "DefaultEndpointsProtocol=https;AccountName=acct;"
                    f"AccountKey={s['account_key']};EndpointSuffix=core.windows.net"
                ),
            },
            "vertex": {"apiKey": s["api_key"], "region": "region-marker-7731"},
        },
    }
    ref = {
        "output_url": (
            "https://bucket.s3.amazonaws.com/model.tar.gz?X-Amz-Algorithm=AWS4"
            f"&X-Amz-Credential={s['aws_key_id']}%2F20260101&X-Amz-Signature="
            f"{s['amz_sig']}"
        ),
        "blob": f"https://acct.blob.core.windows.net/c/m?sv=2022-11-02&sig={s['sas_sig']}",
    }
    error = {
        "message": f"401 for header Authorization: Bearer {s['bearer']}",
        "dsn_hint": f"postgresql://broker:{s['db_password']}@127.0.0.1/jobs",
        "text": f"aws_secret_access_key = {s['aws_secret']}",
    }

    store = JobStore(path)
    job = store.create_job(spec=spec, idempotency_key="secret-job", run_dir=None)
    job_id = job.job_id
    attempt_id = _new_attempt(store, job_id)
    store.set_provider_ref(attempt_id, ref, "training-job-1")
    store.record_failover(job_id, attempt_id, {"message": error["message"]})
    store.transition(job_id, JobState.FAILED, detail=error, error=error)
    raw_before_close = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("jobs.db")
    )
    record = store.get(job_id)
    store.close()
    raw_after_close = path.read_bytes()

    for raw in (raw_before_close, raw_after_close):
        leaked = [name for name, value in s.items() if value.encode() in raw]
        assert leaked == []
        # The scan does see what was written: a harmless value is in the bytes.
        assert b"region-marker-7731" in raw
    assert record.spec["provider_options"]["sagemaker"] == {
        "aws_access_key_id": MASK,
        "aws_secret_access_key": MASK,
    }


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("apiKey", True),
        ("AWS-Secret-Access-Key", True),
        ("client_secret", True),
        ("sas_token", True),
        ("Password", True),
        ("connectionString", True),
        ("AccountKey", True),
        ("idempotency_key", False),
        ("region", False),
        ("author", False),
        ("max_runtime_s", False),
    ],
)
def test_redact_is_secret_key(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id AKIA" + "ABCDEFGH" + "12345678 used", f"id {MASK} used"),
        ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {MASK}"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Date=1&X-Amz-Signature=abc123",
            f"https://b.s3.amazonaws.com/k?X-Amz-Date=1&X-Amz-Signature={MASK}",
        ),
        ("sv=2022-11-02&sr=b&sig=abc%3D", f"sv=2022-11-02&sr=b&sig={MASK}"),
        ("AccountName=a;AccountKey=xyz==;", f"AccountName=a;AccountKey={MASK};"),
        ("mysql://u:pw@127.0.0.1/db", f"mysql://u:{MASK}@127.0.0.1/db"),
        ("client_secret: s3cr3t", f"client_secret: {MASK}"),
        ("plain text stays", "plain text stays"),
    ],
)
def test_redact_text_masks_secret_shapes(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_masks_values_under_secret_keys_and_keeps_the_rest() -> None:
    data = {
        "token": "abc",
        "credentials": {"user": "u", "pass": "p"},
        "max_tokens": 100,
        "password": None,
        "idempotency_key": "job-key-1",
        "items": [{"secret": "x"}, "Bearer abc"],
    }

    assert redact(data) == {
        "token": MASK,
        "credentials": MASK,
        "max_tokens": 100,
        "password": None,
        "idempotency_key": "job-key-1",
        "items": [{"secret": MASK}, f"Bearer {MASK}"],
    }
    assert data["token"] == "abc"  # the input is not changed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("apitoken", "APITOKENVALUE333"),
        ("pat", "PATVALUE444x"),
        ("sp_pass", "SPPASS666"),
        ("hf", "hf_" + "HFTOKENVALUE000abcdefgh"),
        ("note", "gh" + "p_" + "A1b2C3d4E5f6G7h8I9j0K1l2"),
    ],
)
def test_redact_masks_run_together_names_and_prefixed_tokens(key, value):
    from broker.redact import MASK, redact

    # the value goes, whether the key gives it away or the value's shape does
    assert redact({key: value}) == {key: MASK}
