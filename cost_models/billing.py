"""Exact billing arithmetic: how a runtime in seconds becomes dollars.

Every provider rounds a run's duration up before it multiplies by the price, and most
charge a minimum. A :class:`BillingRule` holds both numbers, in seconds:

========================  ===============  =============  ============================
billing                   ``increment_s``  ``minimum_s``  example
========================  ===============  =============  ============================
per started hour          3600             0              61 min -> 2 h
per second, 60 s minimum  1                60             10 s -> 60 s, 61 s -> 61 s
Vertex AutoML node hours  3.6              3600           milli node hours, 1 h floor
========================  ===============  =============  ============================

Money stays :class:`decimal.Decimal` from the catalog to the quote. A charge is the
billed seconds times the price per second, rounded half-up to a millionth of a dollar
(:data:`MONEY_QUANTUM`) because a price such as $0.293/h has no finite decimal per
second. A job rejected before it started costs exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

SECONDS_PER_HOUR = Decimal(3600)
MONEY_QUANTUM = Decimal("0.000001")  # a millionth of a dollar
ZERO_USD = Decimal("0.00")


@dataclass(frozen=True)
class BillingRule:
    """How a provider rounds a duration before charging for it.

    Attributes:
        increment_s: the billing step; a started step is charged in full.
        minimum_s: the least a started run is charged for.
    """

    increment_s: Decimal = Decimal(1)
    minimum_s: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.increment_s <= 0:
            raise ValueError(
                f"billing increment must be positive seconds, got {self.increment_s}"
            )
        if self.minimum_s < 0:
            raise ValueError(
                f"minimum charge must be zero or more seconds, got {self.minimum_s}"
            )

    def billed_seconds(self, runtime_s: Decimal | float | int) -> Decimal:
        """The seconds charged for a run that lasted `runtime_s`.

        Args:
            runtime_s: how long the billable resource ran; 0 for a run that never
                started.

        Returns:
            The runtime rounded up to a whole number of increments, then raised to the
            minimum; exactly 0 when the run never started.
        """
        runtime = _to_decimal(runtime_s)
        if runtime < 0:
            raise ValueError(f"runtime must be zero or more seconds, got {runtime_s}")
        if runtime == 0:
            return Decimal(0)

        steps = (runtime / self.increment_s).to_integral_value(rounding=ROUND_CEILING)
        return max(steps * self.increment_s, self.minimum_s)

    def describe(self, unit_name: str = "hour") -> str:
        """A short phrase for reports, such as ``per second, 60 s minimum``."""
        if self.increment_s == SECONDS_PER_HOUR:
            text = f"per started {unit_name}"
        elif self.increment_s == 1:
            text = "per second"
        elif self.increment_s == 60:
            text = "per started minute"
        else:
            text = f"per {unit_name} in {_seconds_text(self.increment_s)} steps"
        if self.minimum_s > self.increment_s:
            text += f", {_seconds_text(self.minimum_s)} minimum"
        return text


# The rule a provider applies when a catalog row leaves it blank.
PROVIDER_RULES: dict[str, BillingRule] = {
    "sagemaker": BillingRule(Decimal(1), Decimal(60)),
    "azure": BillingRule(Decimal(1), Decimal(60)),
    # Vertex AutoML budgets are set in milli node hours (3.6 s) with a one-hour floor.
    "vertex": BillingRule(Decimal("3.6"), Decimal(3600)),
    "h2o": BillingRule(Decimal(1), Decimal(60)),
    "local": BillingRule(Decimal(1), Decimal(0)),
}
DEFAULT_RULE = BillingRule(Decimal(1), Decimal(0))


def rule_for(provider: str) -> BillingRule:
    """The provider's usual billing rule; per second without a minimum when unknown."""
    return PROVIDER_RULES.get(provider, DEFAULT_RULE)


def charge(
    usd_per_hour: Decimal,
    runtime_s: Decimal | float | int,
    rule: BillingRule,
    *,
    started: bool = True,
) -> Decimal:
    """What a run costs under `rule`, in dollars.

    Args:
        usd_per_hour: the list price of one billable unit for one hour.
        runtime_s: how long the resource ran.
        rule: the provider's rounding and minimum.
        started: False for a job rejected before it started, which costs nothing.

    Returns:
        The charge rounded half-up to :data:`MONEY_QUANTUM`.

    Example:
        >>> charge(Decimal("3.60"), 10, BillingRule(Decimal(1), Decimal(60)))
        Decimal('0.060000')
    """
    if not started:
        return ZERO_USD
    if usd_per_hour < 0:
        raise ValueError(f"price must be zero or more dollars, got {usd_per_hour}")

    billed = rule.billed_seconds(runtime_s)
    return quantize_usd(usd_per_hour * billed / SECONDS_PER_HOUR)


def monthly(usd_per_hour: Decimal, hours_per_month: Decimal, instances: int) -> Decimal:
    """An always-on endpoint's cost for a month of `hours_per_month` hours."""
    return quantize_usd(usd_per_hour * hours_per_month * instances)


def quantize_usd(amount: Decimal) -> Decimal:
    """`amount` rounded half-up to a millionth of a dollar."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def _to_decimal(value: Decimal | float | int) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value)


def _seconds_text(seconds: Decimal) -> str:
    if seconds % SECONDS_PER_HOUR == 0:
        hours = int(seconds / SECONDS_PER_HOUR)
        return f"{hours} h"
    return f"{seconds.normalize():f} s"
