"""Quotes: what a job would cost on one provider, machine and region.

A :class:`Quote` holds a training range and a serving figure, all exact decimals:

- ``training_usd_high``: the whole runtime budget, rounded by the row's billing rule.
  This is the figure checked against the user's dollar cap.
- ``training_usd_low``: a run that stops early, after :data:`EARLY_STOP_FRACTION` of the
  budget (AutoML searches usually end on early stopping well before their limit), with
  the same rounding and minimum.
- ``serving_usd_per_month``: ``deployment.hours_per_month`` x the endpoint's hourly
  price x ``deployment.instances``; zero when nothing will be served.

Memory is estimated from the table's size (see :func:`estimate_memory_gib`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from cost_models.billing import BillingRule, charge, monthly
from cost_models.catalog import PriceRow

EARLY_STOP_FRACTION = Decimal("0.25")
# TODO(egress-storage-cost): storage and egress rows are in the catalogs but not in
# quotes; a large table uploaded to S3 or GCS costs more than the estimate shows. The
# plan: an optional JobSpec.data_location {provider, region}; when a candidate runs
# elsewhere, add table GiB x the egress row of that provider and region to both ends of
# the training range (Azure and Vertex catalogs have no egress rows yet).
# TODO(parallel-trials-cost): one machine x the runtime budget; SageMaker Autopilot and
# Azure AutoML may run several trial machines at once, so their high estimate is low.
# TODO(vertex-node-hours): Vertex node hours are taken as wall-clock hours of one node.

# Memory model: every cell becomes an 8-byte float after encoding, and AutoML engines
# hold about four copies of the training frame at once (cross-validation folds, encoded
# features, the model being fitted), which is also H2O's sizing guidance of roughly four
# times the data size. The base covers the interpreter or JVM before any data arrives.
BYTES_PER_VALUE = 8
MEMORY_OVERHEAD_FACTOR = 4
BASE_MEMORY_GIB = 0.5

_UNIT_NAMES = {"automl_node_hour": "node hour"}


@dataclass(frozen=True, slots=True)
class Quote:
    """A cost estimate for one candidate. Money is in `currency`, exact to 1e-6."""

    provider: str
    sku: str
    region: str
    currency: str
    training_usd_low: Decimal
    training_usd_high: Decimal
    serving_usd_per_month: Decimal | None  # None: no endpoint price is known
    memory_needed_gib: float
    memory_offered_gib: float | None  # None: the service sizes the machines itself
    billing_unit: str
    price_source: str
    retrieved: date | None
    user_supplied: bool = False
    is_local: bool = False
    training_usd_per_hour: Decimal | None = None
    serving_sku: str | None = None
    serving_usd_per_hour: Decimal | None = None
    runtime_s: int = 0
    billing_rule: BillingRule | None = None
    # The runtime budget asked for, when max_usd paid for less and runtime_s was trimmed.
    requested_runtime_s: int | None = None
    # Machines billed at once (training_usd_per_hour covers all of them) and the
    # shortest run the provider bills, whatever the runtime.
    nodes: int = 1
    min_billed_s: int = 0

    @property
    def trimmed(self) -> bool:
        """True when the dollar cap cut the runtime below the runtime budget."""
        return (
            self.requested_runtime_s is not None
            and self.runtime_s < self.requested_runtime_s
        )

    @property
    def total_usd(self) -> Decimal:
        """Training at the high end plus one month of serving: the ranking figure."""
        return self.training_usd_high + (self.serving_usd_per_month or Decimal(0))

    @property
    def usd_per_hour(self) -> Decimal | None:
        """The training rate in dollars per hour (what a running job accrues)."""
        return self.training_usd_per_hour

    @property
    def fits_memory(self) -> bool:
        return (
            self.memory_offered_gib is None
            or self.memory_offered_gib >= self.memory_needed_gib
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; decimals become strings so no digit is lost."""
        return {
            "provider": self.provider,
            "sku": self.sku,
            "region": self.region,
            "currency": self.currency,
            "training_usd_low": str(self.training_usd_low),
            "training_usd_high": str(self.training_usd_high),
            "serving_usd_per_month": _text(self.serving_usd_per_month),
            "memory_needed_gib": self.memory_needed_gib,
            "memory_offered_gib": self.memory_offered_gib,
            "billing_unit": self.billing_unit,
            "price_source": self.price_source,
            "retrieved": self.retrieved.isoformat() if self.retrieved else None,
            "user_supplied": self.user_supplied,
            "is_local": self.is_local,
            "training_usd_per_hour": _text(self.training_usd_per_hour),
            "serving_sku": self.serving_sku,
            "serving_usd_per_hour": _text(self.serving_usd_per_hour),
            "runtime_s": self.runtime_s,
            "requested_runtime_s": self.requested_runtime_s,
            "nodes": self.nodes,
            "min_billed_s": self.min_billed_s,
            "billing_increment_s": (
                None
                if self.billing_rule is None
                else str(self.billing_rule.increment_s)
            ),
            "minimum_charge_s": (
                None if self.billing_rule is None else str(self.billing_rule.minimum_s)
            ),
        }


def estimate_memory_gib(n_rows: int, n_columns: int) -> float:
    """Memory a training run needs for a table of `n_rows` x `n_columns`, in GiB.

    Example:
        >>> estimate_memory_gib(1_000_000, 100)
        3.48
    """
    if n_rows < 0 or n_columns < 0:
        raise ValueError(
            f"table size must be zero or more, got {n_rows} rows x {n_columns} columns"
        )
    data_bytes = n_rows * n_columns * BYTES_PER_VALUE * MEMORY_OVERHEAD_FACTOR
    return round(BASE_MEMORY_GIB + data_bytes / 2**30, 2)


def quote(
    training: PriceRow,
    *,
    runtime_s: int,
    memory_needed_gib: float,
    serving: PriceRow | None = None,
    hours_per_month: Decimal = Decimal(0),
    instances: int = 1,
    local_usd_per_hour: Decimal = Decimal(0),
    usd_per_hour: Decimal | None = None,
    serving_usd_per_hour: Decimal | None = None,
    nodes: int = 1,
    min_billed_s: int = 0,
) -> Quote:
    """The quote for training on `training` and serving on `serving`.

    Args:
        training: the training row (host or AutoML node hour).
        runtime_s: the job's runtime budget.
        memory_needed_gib: from :func:`estimate_memory_gib`.
        serving: the endpoint row; None when the provider has none in this region.
        hours_per_month: hours the endpoint runs each month.
        instances: endpoint instances.
        local_usd_per_hour: the rate for local rows that carry no price of their own.
        usd_per_hour: the training row's hourly price when the caller already has it
            from :func:`hourly_price`.
        serving_usd_per_hour: likewise for `serving`, which planning shares between
            every machine of a provider's region.
        nodes: machines of the training row's type the job runs at once; the quote's
            hourly rate is `nodes` times the row's price.
        min_billed_s: the shortest run the provider bills (Azure AutoML runs at least
            15 minutes), applied to both ends of the training range.

    Raises:
        ValueError: `training` has no usable price; check with :func:`hourly_price`.
    """
    if usd_per_hour is None:
        usd_per_hour = hourly_price(training, local_usd_per_hour)
    if usd_per_hour is None:
        raise ValueError(
            f"{training.provider} {training.sku} in {training.region} "
            "has no usable price"
        )

    if nodes > 1:
        usd_per_hour = usd_per_hour * nodes
    is_local = training.is_local
    rule, billing_unit, low, high = _training_terms(
        usd_per_hour,
        runtime_s,
        training.provider,
        training.billing_increment_s,
        training.minimum_charge_s,
        training.component,
        training.currency,
        is_local,
        nodes,
        min_billed_s,
    )
    serving_per_hour = serving_usd_per_hour
    if serving is not None and serving_per_hour is None:
        serving_per_hour = hourly_price(serving, local_usd_per_hour)
    if hours_per_month == 0:
        serving_month: Decimal | None = Decimal(0)
    elif serving_per_hour is None:
        serving_month = None
    else:
        serving_month = _monthly(serving_per_hour, hours_per_month, instances)

    return Quote(
        provider=training.provider,
        sku=training.sku,
        region=training.region,
        currency=training.currency,
        training_usd_low=low,
        training_usd_high=high,
        serving_usd_per_month=serving_month,
        memory_needed_gib=memory_needed_gib,
        memory_offered_gib=training.memory_gib,
        billing_unit=billing_unit,
        price_source=_source_text(training, is_local),
        retrieved=training.retrieved,
        user_supplied=training.user_supplied
        or bool(serving is not None and serving.user_supplied),
        is_local=is_local,
        training_usd_per_hour=usd_per_hour,
        serving_sku=None if serving is None else serving.sku,
        serving_usd_per_hour=serving_per_hour,
        runtime_s=runtime_s,
        billing_rule=rule,
        nodes=nodes,
        min_billed_s=min_billed_s,
    )


def training_rule(row: PriceRow) -> BillingRule:
    """The billing rule a training row is charged by (cached per provider and cells)."""
    return _rule_of(row)


def hourly_price(row: PriceRow, local_usd_per_hour: Decimal) -> Decimal | None:
    """The row's usable hourly price; local rows without one take the local rate."""
    price = row.usd_per_hour
    if price is None and row.is_local and row.unit in ("hour", "second"):
        return local_usd_per_hour
    return price


def billing_unit_text(row: PriceRow, rule: BillingRule) -> str:
    """How the row is billed, e.g. ``USD per hour, billed per second, 60 s minimum``."""
    return _unit_text(row.component, row.currency, rule, row.is_local)


# Planning quotes thousands of rows that share a handful of billing rules and prices:
# the helpers below are cached so each rule is built, described and applied once.


@lru_cache(maxsize=4096)
def _training_terms(
    usd_per_hour: Decimal,
    runtime_s: int,
    provider: str,
    increment_s: Decimal | None,
    minimum_s: Decimal | None,
    component: str,
    currency: str,
    is_local: bool,
    nodes: int,
    min_billed_s: int,
) -> tuple[BillingRule, str, Decimal, Decimal]:
    """A training row's billing rule, the quote's billing unit text and its training
    range, from the cells that decide them."""
    rule = _cached_rule(provider, increment_s, minimum_s)
    text = _unit_text(component, currency, rule, is_local)
    low, high = _training_range(usd_per_hour, runtime_s, rule, min_billed_s)
    return rule, text + _shape_text(nodes, min_billed_s), low, high


@lru_cache(maxsize=256)
def _unit_text(component: str, currency: str, rule: BillingRule, is_local: bool) -> str:
    unit_name = _UNIT_NAMES.get(component, "hour")
    text = f"{currency} per {unit_name}, billed {rule.describe(unit_name)}"
    if is_local:
        text += " (local rate: power and amortisation)"
    return text


@lru_cache(maxsize=1024)
def _monthly(
    usd_per_hour: Decimal, hours_per_month: Decimal, instances: int
) -> Decimal:
    return monthly(usd_per_hour, hours_per_month, instances)


@lru_cache(maxsize=4096)
def _training_range(
    usd_per_hour: Decimal, runtime_s: int, rule: BillingRule, min_billed_s: int = 0
) -> tuple[Decimal, Decimal]:
    early = max(Decimal(runtime_s) * EARLY_STOP_FRACTION, Decimal(min_billed_s))
    low = charge(usd_per_hour, early, rule)
    return low, charge(usd_per_hour, max(runtime_s, min_billed_s), rule)


def _shape_text(nodes: int, min_billed_s: int) -> str:
    text = f", {nodes} machines at once" if nodes > 1 else ""
    if min_billed_s:
        text += f", a run lasts at least {Decimal(min_billed_s) / 60:f} min"
    return text


def _rule_of(row: PriceRow) -> BillingRule:
    return _cached_rule(row.provider, row.billing_increment_s, row.minimum_charge_s)


@lru_cache(maxsize=256)
def _cached_rule(
    provider: str, increment_s: Decimal | None, minimum_s: Decimal | None
) -> BillingRule:
    return PriceRow(
        provider, "", "", billing_increment_s=increment_s, minimum_charge_s=minimum_s
    ).billing_rule


def _source_text(row: PriceRow, is_local: bool) -> str:
    if row.user_supplied:
        return f"user-supplied ({row.origin})"
    if is_local and row.usable_price is None:
        return "local rate"
    return row.source or row.origin


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
