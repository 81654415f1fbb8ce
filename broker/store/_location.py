"""Where the job store lives and how its file is opened.

The default is ``<user data dir>/automl-broker/jobs.db`` (``~/.local/share`` on Linux,
``~/Library/Application Support`` on macOS, ``%LOCALAPPDATA%`` on Windows). The
``AUTOML_BROKER_HOME`` environment variable names another folder; a path or a
``sqlite:///`` URL given to the store wins over both.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from collections.abc import Mapping
from pathlib import Path

import platformdirs

from broker.errors import ConfigurationError, StoreError
from broker.redact import redact_text

logger = logging.getLogger(__name__)

HOME_ENV = "AUTOML_BROKER_HOME"
DB_NAME = "jobs.db"
FILE_MODE = 0o600
DIR_MODE = 0o700
_SIDE_FILES = ("-wal", "-shm", "-journal")


def default_store_path(env: Mapping[str, str] | None = None) -> Path:
    """The job store's path when none is given.

    Args:
        env: The environment to read ``AUTOML_BROKER_HOME`` from; ``os.environ``
            unless given.

    Returns:
        ``$AUTOML_BROKER_HOME/jobs.db`` when the variable is set and not empty,
        else ``<user data dir>/automl-broker/jobs.db``.
    """
    env = os.environ if env is None else env
    home = env.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser() / DB_NAME
    return Path(platformdirs.user_data_dir("automl-broker", appauthor=False)) / DB_NAME


def path_from_url(url: str) -> Path:
    """Read the file path out of a ``sqlite:///`` database URL.

    Args:
        url: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

    Returns:
        The database file's path.

    Raises:
        ConfigurationError: The URL is not a SQLite file URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"store URL {url!r} has no scheme; write sqlite:///path/to/jobs.db "
            "or give a plain path"
        )

    # TODO(store-url): server databases (postgresql://, mysql://) need a driver layer
    # such as SQLAlchemy, which the broker does not depend on yet; only SQLite files
    # are supported until then.
    if scheme.lower() != "sqlite":
        raise ConfigurationError(
            f"store URL scheme {scheme!r} is not supported (URL {redact_text(url)}); "
            "the job store keeps its jobs in a SQLite file: give a path, "
            "a sqlite:///path/to/jobs.db URL, or set AUTOML_BROKER_HOME to a folder"
        )
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ConfigurationError(
            f"store URL {url!r} names no file; write sqlite:///path/to/jobs.db "
            "(three slashes, four for an absolute path)"
        )
    return Path(rest[1:])


def connect(path: Path, *, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (creating if needed) the store file: owner-only, WAL, foreign keys on.

    The folder is created with mode 0700 when missing and the file with mode 0600, so
    that SQLite gives its ``-wal`` and ``-shm`` files the same mode.

    Args:
        path: The database file.
        busy_timeout_s: How long a statement waits for another process's lock.

    Returns:
        A connection in autocommit mode; callers open their own transactions.

    Raises:
        StoreError: The file cannot be created or is not a SQLite database.
    """
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        tighten_modes(path)
    except OSError as exc:
        raise StoreError(
            f"cannot create the job store at {path}: {exc.strerror}; set "
            f"{HOME_ENV} to a folder you can write to"
        ) from exc

    conn = sqlite3.connect(
        path,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        mode = switch_to_wal(conn, timeout_s=busy_timeout_s)
        if str(mode).lower() != "wal":
            raise StoreError(
                f"the job store {path} could not switch to WAL mode (got {mode!r}); "
                "it must be on a local disk, not a network share"
            )
        # FULL makes each commit durable: a job the store accepted survives a crash.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreError(
                f"the job store {path} stayed locked by another process for "
                f"{busy_timeout_s:g} s; wait for the other automl-broker command to "
                f"finish, or set {HOME_ENV} to another folder"
            ) from exc
        raise StoreError(
            f"{path} is not a usable job store ({exc}); move it aside or set "
            f"{HOME_ENV} to another folder"
        ) from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            f"{path} is not a usable job store ({exc}); move it aside or set "
            f"{HOME_ENV} to another folder"
        ) from exc
    except BaseException:
        conn.close()
        raise

    return conn


def switch_to_wal(conn: sqlite3.Connection, *, timeout_s: float) -> str:
    """Put the file in WAL mode, waiting out other processes that hold it.

    SQLite answers "database is locked" at once, without its busy handler, when
    another process holds the file exclusively, for instance while it checkpoints
    and removes the write-ahead log as its last connection closes. Two commands
    started together on a fresh store meet that window, so the switch is retried
    until ``timeout_s`` has passed.

    Returns:
        The journal mode the file ended in, lower case.

    Raises:
        sqlite3.OperationalError: The file stayed locked for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    pause_s = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause_s > deadline:
                raise
            logger.debug(
                "store file busy while switching to WAL; retrying in %.3f s", pause_s
            )
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.25)


def tighten_modes(path: Path) -> None:
    """Make the database file and its side files readable by the owner only."""
    for name in ("", *_SIDE_FILES):
        file = path.with_name(path.name + name)
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode != FILE_MODE:
            os.chmod(file, FILE_MODE)
            logger.debug("set mode 0600 on %s (was %o)", file, mode)
