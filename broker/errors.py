"""The broker's errors and warnings.

Every error the broker raises on purpose derives from :class:`BrokerError`, so a caller can
catch "anything from the broker" in one clause. The tree::

    BrokerError
    ├── InputError (ValueError)          bad input, raised before any provider is called
    │   ├── DataReadError                the file cannot be read as a table
    │   │   └── EncodingError            the bytes are not in an encoding we decode
    │   ├── ColumnNotFoundError          a named column is not in the table
    │   ├── DuplicateColumnError         two columns share a name
    │   ├── TargetError
    │   │   ├── TargetMissingError       every target value is missing
    │   │   └── TargetSingleClassError   the target has one class
    │   ├── NoUsableFeaturesError        every feature column was dropped
    │   └── ConfigurationError           a spec or option value out of range
    ├── PricingError
    │   ├── PriceUnavailableError        no price for a SKU that was asked for
    │   └── RegionNotOfferedError        the SKU is not sold in the region asked for
    ├── PlanningError                    no candidate is feasible
    ├── ProviderError                    a backend failed; fields drive retry and failover
    │   ├── ProviderUnavailableError     SDK missing, no credentials, no Java
    │   ├── CredentialsError
    │   │   └── CredentialsExpiredError
    │   ├── QuotaExceededError
    │   ├── CapacityError
    │   ├── ThrottledError               429: retried with backoff
    │   ├── TransientProviderError       5xx, dropped connection: retried
    │   ├── InvalidRequestError          bad data or arguments: never fails over
    │   ├── PendingTimeoutError          queued for longer than the pending timeout
    │   └── ProviderJobFailedError       the service ran the job and it failed
    ├── BudgetError
    │   ├── BudgetExceededError          the dollar cap was reached
    │   └── NoModelTrainedError          the budget ran out before any model finished
    └── StoreError
        ├── JobNotFoundError
        └── JobConflictError             another process owns the job
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


class BrokerError(Exception):
    """Root of every error the broker raises on purpose."""


# --- bad input -------------------------------------------------------------------------


class InputError(BrokerError, ValueError):
    """The job's input is wrong. Raised before any provider is contacted, at zero cost."""


class DataReadError(InputError):
    """The data source cannot be read as a table."""


class EncodingError(DataReadError):
    """The file's bytes are not in an encoding the broker decodes."""

    def __init__(self, message: str, *, encoding: str | None = None) -> None:
        super().__init__(message)
        self.encoding = encoding


class ColumnNotFoundError(InputError):
    """A column named in the spec is not in the table."""

    def __init__(self, message: str, *, column: str, available: list[str]) -> None:
        super().__init__(message)
        self.column = column
        self.available = available


class DuplicateColumnError(InputError):
    """Two or more columns share one name."""

    def __init__(self, message: str, *, duplicates: dict[str, list[int]]) -> None:
        super().__init__(message)
        # name -> 1-based positions
        self.duplicates = duplicates


class TargetError(InputError):
    """The target column cannot be learned from."""


class TargetMissingError(TargetError):
    """Every value of the target column is missing."""


class TargetSingleClassError(TargetError):
    """The target column holds a single class."""

    def __init__(self, message: str, *, column: str, value: Any) -> None:
        super().__init__(message)
        self.column = column
        self.value = value


class NoUsableFeaturesError(InputError):
    """Every feature column was dropped; nothing is left to learn from."""

    def __init__(self, message: str, *, dropped: dict[str, str]) -> None:
        super().__init__(message)
        self.dropped = dropped


class ConfigurationError(InputError):
    """A spec field or option holds a value outside its allowed range."""


# --- pricing ---------------------------------------------------------------------------


class PricingError(BrokerError):
    """A price needed for an estimate is missing or wrong."""


class PriceUnavailableError(PricingError):
    """No usable price exists for a SKU that the user asked for."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        sku: str | None = None,
        region: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.sku = sku
        self.region = region


class RegionNotOfferedError(PriceUnavailableError):
    """The SKU is not sold in the region that was asked for."""


class PlanningError(BrokerError):
    """No candidate is feasible for the job."""

    def __init__(self, message: str, *, rejections: list[Any] | None = None) -> None:
        super().__init__(message)
        self.rejections = rejections or []


# --- providers -------------------------------------------------------------------------


class ProviderError(BrokerError):
    """A backend failed. The fields, not the message, drive retry and failover."""

    retryable_default = False
    failover_default = False
    reason_default = "ProviderError"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool | None = None,
        failover_allowed: bool | None = None,
        original_type: str | None = None,
        code: str | int | None = None,
        provider_job_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = self.retryable_default if retryable is None else retryable
        self.failover_allowed = (
            self.failover_default if failover_allowed is None else failover_allowed
        )
        self.original_type = original_type
        self.code = code
        self.provider_job_id = provider_job_id
        self.reason = reason or self.reason_default

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "reason": self.reason,
            "message": str(self),
            "provider": self.provider,
            "retryable": self.retryable,
            "failover_allowed": self.failover_allowed,
            "original_type": self.original_type,
            "code": self.code,
            "provider_job_id": self.provider_job_id,
        }


class ProviderUnavailableError(ProviderError):
    """The provider cannot be used here: SDK missing, no credentials, no Java runtime."""

    failover_default = True
    reason_default = "ProviderUnavailable"


class CredentialsError(ProviderError):
    """The credentials were refused."""

    failover_default = True
    reason_default = "CredentialsRefused"


class CredentialsExpiredError(CredentialsError):
    """The credentials expired while a job ran; the remote job may still be billing."""

    reason_default = "CredentialsExpired"


class QuotaExceededError(ProviderError):
    failover_default = True
    reason_default = "QuotaExceeded"


class CapacityError(ProviderError):
    failover_default = True
    reason_default = "CapacityExhausted"


class ThrottledError(ProviderError):
    retryable_default = True
    failover_default = True
    reason_default = "Throttled"


class TransientProviderError(ProviderError):
    retryable_default = True
    failover_default = True
    reason_default = "Transient"


class InvalidRequestError(ProviderError):
    """The request itself is wrong; every backend would refuse it, so no failover."""

    reason_default = "InvalidRequest"


class PendingTimeoutError(ProviderError):
    failover_default = True
    reason_default = "PendingTimeout"


class ProviderJobFailedError(ProviderError):
    """The service ran the job and reported it failed."""

    failover_default = True
    reason_default = "JobFailed"


# --- budget ----------------------------------------------------------------------------


class BudgetError(BrokerError):
    """A budget limit stopped the job."""


class BudgetExceededError(BudgetError):
    def __init__(self, message: str, *, max_usd: Decimal, accrued_usd: Decimal) -> None:
        super().__init__(message)
        self.max_usd = max_usd
        self.accrued_usd = accrued_usd


class NoModelTrainedError(BudgetError):
    """The budget ran out before any model finished training."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "budget_exhausted",
        budget_s: float | None = None,
        elapsed_s: float | None = None,
        suggested_min_budget_s: float | None = None,
        charged_usd: Decimal | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.budget_s = budget_s
        self.elapsed_s = elapsed_s
        self.suggested_min_budget_s = suggested_min_budget_s
        self.charged_usd = charged_usd
        self.provider = provider


# --- store -----------------------------------------------------------------------------


class StoreError(BrokerError):
    """The job store refused an operation."""


class JobNotFoundError(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class JobConflictError(StoreError):
    """Another broker process owns the job, or the transition is not allowed."""


class IllegalTransitionError(StoreError):
    """A job state change that the state machine does not allow."""


# --- warnings --------------------------------------------------------------------------


class BrokerWarning(UserWarning):
    """Root of the broker's warning classes."""


class DataWarning(BrokerWarning):
    """The input was changed or trimmed on the way in (renamed columns, dropped rows)."""


class MetricWarning(BrokerWarning):
    """A metric was undefined or computed over fewer classes than the task has."""


class PriceMissingWarning(BrokerWarning):
    """A catalog row has no usable price; the SKU was left out of the ranking."""


class StalePriceWarning(BrokerWarning):
    """A price catalog is older than the configured maximum age."""


class BudgetWarning(BrokerWarning):
    """A budget was trimmed or is close to its cap."""


class ProviderWarning(BrokerWarning):
    """A provider ended a job in a way the user should know of (stopped by the service)."""
