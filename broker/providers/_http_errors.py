"""Turn a cloud service's HTTP status, error code and message into a broker error class.

Both cloud adapters reduce their SDK's exceptions to ``(status, code, message)`` and ask
:func:`classify` which :class:`broker.errors.ProviderError` subclass it is. The rules, in
order (the first that matches wins):

1. capacity spellings (a zone or region ran out of machines) -> :class:`CapacityError`;
2. request-rate spellings (per-minute quotas, ``RATE_LIMIT_EXCEEDED``) ->
   :class:`ThrottledError`;
3. resource-quota spellings (``Quota exceeded``, ``QuotaExceeded``) ->
   :class:`QuotaExceededError`;
4. by status: 401 -> :class:`CredentialsError` (or :class:`CredentialsExpiredError` once a
   job exists), 403 -> :class:`CredentialsError`, 429 -> :class:`ThrottledError`,
   408 and 5xx -> :class:`TransientProviderError`, other 4xx -> :class:`InvalidRequestError`;
5. anything else -> plain :class:`ProviderError`, which neither retries nor fails over:
   the broker cannot tell whether a job was created and may be billing, so it stops and
   reports instead of starting a second job elsewhere.
"""

from __future__ import annotations

import re
from typing import Literal

from broker.errors import (
    CapacityError,
    CredentialsError,
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderError,
    QuotaExceededError,
    ThrottledError,
    TransientProviderError,
)

Phase = Literal["create", "poll"]
"""When the error happened: before a job exists, or while one runs."""

CAPACITY_PATTERN = re.compile(
    r"ZONE_RESOURCE_POOL_EXHAUSTED|resources are insufficient|"
    r"does not have enough resources|stockout|ZonalAllocationFailed|AllocationFailed|"
    r"SkuNotAvailable|OverconstrainedAllocationRequest|OverconstrainedZonalAllocation",
    re.IGNORECASE,
)
RATE_PATTERN = re.compile(
    r"RATE_LIMIT_EXCEEDED|per minute|per second|rate limit|TooManyRequests",
    re.IGNORECASE,
)
QUOTA_PATTERN = re.compile(
    r"quota exceeded|QuotaExceeded|exceed(?:s|ing)? (?:the )?(?:approved )?"
    r"[\w -]*quota|quota limit",
    re.IGNORECASE,
)


def classify(
    status: int | None, code: str | None, message: str, *, phase: Phase = "create"
) -> type[ProviderError]:
    """The broker error class for a service error.

    Args:
        status: the HTTP status, or None when no reply came.
        code: the service's own error code (``RESOURCE_EXHAUSTED``, ``QuotaExceeded``).
        message: the service's message.
        phase: "create" before a job exists, "poll" once one runs.

    Returns:
        A :class:`ProviderError` subclass (or the class itself for the unknown).
    """
    text = f"{code or ''} {message}"
    if CAPACITY_PATTERN.search(text):
        return CapacityError
    if RATE_PATTERN.search(text) and (status in (None, 429) or "quota" in text.lower()):
        return ThrottledError
    if QUOTA_PATTERN.search(text):
        return QuotaExceededError
    if status == 401:
        return CredentialsExpiredError if phase == "poll" else CredentialsError
    if status == 403:
        return CredentialsError
    if status == 429:
        return ThrottledError
    if status is not None and (status == 408 or 500 <= status <= 599):
        return TransientProviderError
    if status is not None and 400 <= status <= 499:
        return InvalidRequestError
    return ProviderError
