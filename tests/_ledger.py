"""Jobs written straight into a store with one finished attempt and its cost, for the
tests of the commands that read the spend ledger (`costs`, `list`, `logs`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from broker.store import JobStore


def finished_job(
    store: JobStore,
    key: str,
    cost_usd: str,
    *,
    project: str | None = None,
    spec: dict[str, Any] | None = None,
    quote_usd: str | None = None,
    provider: str = "local",
) -> str:
    """Record a job whose one attempt on `provider` succeeded at `cost_usd`; its id."""
    job = store.create_job(
        spec=spec or {}, idempotency_key=key, run_dir=None, project=project
    )
    machine, region = (
        ("this-machine", "local")
        if provider == "local"
        else ("ml.m5.large", "us-east-1")
    )
    attempt = store.start_attempt(
        job.job_id,
        provider=provider,
        machine=machine,
        region=region,
        quote={},
        idempotency_key=f"{key}-1",
    )
    if quote_usd is not None:
        store.record_spend(attempt.attempt_id, kind="quote", usd=Decimal(quote_usd))
    store.finish_attempt(
        attempt.attempt_id, state="succeeded", cost_usd=Decimal(cost_usd)
    )
    return job.job_id
