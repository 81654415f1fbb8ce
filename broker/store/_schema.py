"""The store's tables and the migrations that build them.

The schema version lives in the ``meta`` table. :data:`MIGRATIONS` maps each version to
the statements that lead to it from the one before; opening a store applies the missing
ones in order, inside one write transaction, so two processes opening a new file at
once build it once.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence

from broker.errors import StoreError

logger = logging.getLogger(__name__)

# A migration is either a list of SQL statements or a function given the connection.
Migration = Sequence[str] | Callable[[sqlite3.Connection], None]

_V1: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        name TEXT,
        project TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        spec TEXT NOT NULL,
        plan TEXT,
        state TEXT NOT NULL,
        secondary TEXT,
        idempotency_key TEXT NOT NULL UNIQUE,
        run_dir TEXT,
        owner TEXT,
        lease_expires_at TEXT,
        result TEXT,
        error TEXT
    )
    """,
    "CREATE INDEX jobs_state ON jobs (state, created_at)",
    """
    CREATE TABLE attempts (
        attempt_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        seq INTEGER NOT NULL,
        provider TEXT NOT NULL,
        machine TEXT,
        region TEXT,
        quote TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        provider_job_id TEXT,
        provider_ref TEXT,
        state TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        cost_usd TEXT,
        failover TEXT,
        UNIQUE (job_id, seq)
    )
    """,
    """
    CREATE TABLE events (
        event_id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        attempt_id TEXT REFERENCES attempts (attempt_id),
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        detail TEXT
    )
    """,
    "CREATE INDEX events_job ON events (job_id, event_id)",
    """
    CREATE TABLE spend (
        spend_id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        attempt_id TEXT NOT NULL REFERENCES attempts (attempt_id),
        provider TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('quote', 'actual')),
        usd TEXT NOT NULL,
        currency TEXT NOT NULL,
        at TEXT NOT NULL,
        UNIQUE (attempt_id, kind)
    )
    """,
    "CREATE INDEX spend_at ON spend (kind, at)",
]

MIGRATIONS: dict[int, Migration] = {1: _V1}
"""Version -> how to reach it from the version before. Add new versions at the end."""

SCHEMA_VERSION = max(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """Read the schema version of an open database; 0 for an empty file."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        return 0

    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: sqlite3.Connection,
    *,
    path: str,
    migrations: dict[int, Migration] | None = None,
) -> int:
    """Bring the database up to the newest schema version.

    Must run inside a write transaction (``BEGIN IMMEDIATE``) so that concurrent
    openers wait for each other.

    Args:
        conn: An open connection inside a write transaction.
        path: The database's path, for messages.
        migrations: The migration table; :data:`MIGRATIONS` unless given.

    Returns:
        The schema version the database has now.

    Raises:
        StoreError: The file was written by a newer broker with a newer schema.
    """
    migrations = MIGRATIONS if migrations is None else migrations
    target = max(migrations)
    current = schema_version(conn)
    if current > target:
        raise StoreError(
            f"the job store {path} has schema version {current}, newer than the "
            f"{target} this broker reads; upgrade automl-broker or point "
            "AUTOML_BROKER_HOME at another folder"
        )

    for version in range(current + 1, target + 1):
        step = migrations[version]
        if callable(step):
            step(conn)
        else:
            for statement in step:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
        logger.info("job store %s migrated to schema version %d", path, version)

    return target
