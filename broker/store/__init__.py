"""The broker's persistent job store (an embedded SQLite file).

See :class:`JobStore`. The records it returns are :class:`JobRecord`,
:class:`AttemptRecord`, :class:`Event` and :class:`SpendEntry`.
"""

from __future__ import annotations

from broker.store._location import HOME_ENV, default_store_path
from broker.store._records import AttemptRecord, Event, JobRecord, SpendEntry
from broker.store._schema import MIGRATIONS, SCHEMA_VERSION, migrate
from broker.store._store import JobStore

__all__ = [
    "HOME_ENV",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AttemptRecord",
    "Event",
    "JobRecord",
    "JobStore",
    "SpendEntry",
    "default_store_path",
    "migrate",
]
