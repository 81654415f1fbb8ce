"""The records the job store hands back, and how values are written to its columns.

Timestamps are written as UTC ISO-8601 text with microseconds and a ``+00:00`` offset,
fixed width so that text order is time order. Money is written as the exact text of a
:class:`~decimal.Decimal`. Structured values are JSON, redacted before writing.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any

from broker.redact import redact
from broker.states import JobState

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class JobRecord:
    """One job as the store knows it."""

    job_id: str
    name: str | None
    project: str | None
    created_at: datetime
    updated_at: datetime
    spec: JsonDict
    plan: JsonDict | None
    state: JobState
    secondary: str | None  # the provider's own name for the state
    idempotency_key: str
    run_dir: str | None
    owner: str | None  # the broker process holding the lease, if any
    lease_expires_at: datetime | None
    result: JsonDict | None
    error: JsonDict | None

    @property
    def terminal(self) -> bool:
        return self.state.terminal


@dataclass(frozen=True)
class AttemptRecord:
    """One try of a job on one provider, recorded before the provider is called."""

    attempt_id: str
    job_id: str
    seq: int  # 1 for the first try of the job, 2 after the first failover, ...
    provider: str
    machine: str | None
    region: str | None
    quote: JsonDict
    idempotency_key: str
    provider_job_id: str | None
    provider_ref: JsonDict | None
    state: JobState
    started_at: datetime
    ended_at: datetime | None
    cost_usd: Decimal | None
    failover: JsonDict | None


@dataclass(frozen=True)
class Event:
    """One change to a job: a state transition or a fact recorded about it."""

    event_id: int
    job_id: str
    attempt_id: str | None
    at: datetime
    kind: str
    from_state: JobState | None
    to_state: JobState | None
    detail: JsonDict | None


@dataclass(frozen=True)
class SpendEntry:
    """One line of the spend ledger: a quote or an actual cost of one attempt."""

    job_id: str
    attempt_id: str
    provider: str
    kind: str  # "quote" or "actual"
    usd: Decimal
    currency: str
    at: datetime


# --- writing ------------------------------------------------------------------------


def to_iso(moment: datetime) -> str:
    """Write a timezone-aware time as fixed-width UTC ISO-8601 text."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"the store keeps UTC times only; got a naive datetime {moment!r}; "
            "give it a timezone (datetime.now(timezone.utc))"
        )
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def to_jsonable(obj: Any) -> Any:
    """Turn models, dataclasses, decimals, times, paths and enums into JSON values.

    Decimals become their exact text, so no digit is lost.
    """
    if isinstance(obj, Enum):
        return to_jsonable(obj.value)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, datetime):
        return to_iso(obj) if obj.tzinfo is not None else obj.isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(item) for item in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(item) for item in obj), key=repr)
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="json"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    return str(obj)


def dump_json(obj: Any) -> str | None:
    """Redact and encode a value for a JSON column; ``None`` stays SQL NULL."""
    if obj is None:
        return None
    return json.dumps(redact(to_jsonable(obj)), sort_keys=True, allow_nan=False)


def decimal_text(value: Decimal | None, *, what: str) -> str | None:
    """Check an amount of money and write it as exact text."""
    if value is None:
        return None
    if not isinstance(value, Decimal):
        raise TypeError(
            f"{what} must be a decimal.Decimal, not {type(value).__name__} "
            f"({value!r}); write Decimal('0.35') so no cent is lost"
        )
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} must be a finite amount of zero or more; got {value}")
    return str(value)


# --- reading ------------------------------------------------------------------------


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _state(text: str | None) -> JobState | None:
    return None if text is None else JobState(text)


def job_from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        job_id=row["job_id"],
        name=row["name"],
        project=row["project"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
        spec=json.loads(row["spec"]),
        plan=_json(row["plan"]),
        state=JobState(row["state"]),
        secondary=row["secondary"],
        idempotency_key=row["idempotency_key"],
        run_dir=row["run_dir"],
        owner=row["owner"],
        lease_expires_at=_time(row["lease_expires_at"]),
        result=_json(row["result"]),
        error=_json(row["error"]),
    )


def attempt_from_row(row: sqlite3.Row) -> AttemptRecord:
    cost = row["cost_usd"]
    return AttemptRecord(
        attempt_id=row["attempt_id"],
        job_id=row["job_id"],
        seq=row["seq"],
        provider=row["provider"],
        machine=row["machine"],
        region=row["region"],
        quote=json.loads(row["quote"]),
        idempotency_key=row["idempotency_key"],
        provider_job_id=row["provider_job_id"],
        provider_ref=_json(row["provider_ref"]),
        state=JobState(row["state"]),
        started_at=datetime.fromisoformat(row["started_at"]),
        ended_at=_time(row["ended_at"]),
        cost_usd=None if cost is None else Decimal(cost),
        failover=_json(row["failover"]),
    )


def event_from_row(row: sqlite3.Row) -> Event:
    return Event(
        event_id=row["event_id"],
        job_id=row["job_id"],
        attempt_id=row["attempt_id"],
        at=datetime.fromisoformat(row["at"]),
        kind=row["kind"],
        from_state=_state(row["from_state"]),
        to_state=_state(row["to_state"]),
        detail=_json(row["detail"]),
    )


def spend_from_row(row: sqlite3.Row) -> SpendEntry:
    return SpendEntry(
        job_id=row["job_id"],
        attempt_id=row["attempt_id"],
        provider=row["provider"],
        kind=row["kind"],
        usd=Decimal(row["usd"]),
        currency=row["currency"],
        at=datetime.fromisoformat(row["at"]),
    )
