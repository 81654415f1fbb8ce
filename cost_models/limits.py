"""A job's dollar cap translated into each backend's own limit.

Every backend stops a job by a limit of its own kind, never by dollars:

=========  ==========================================================================
provider   native limit
=========  ==========================================================================
vertex     ``budget_milli_node_hours`` (1000 = one node hour; 1000 to 72000)
azure      ``timeout_minutes`` of the experiment on ``max_nodes`` nodes (at least 15)
sagemaker  ``MaxAutoMLJobRuntimeInSeconds`` (and the same per training job)
h2o        ``max_runtime_secs``
local      ``max_runtime_s``
=========  ==========================================================================

:func:`affordable_runtime_s` finds the longest run whose charge, under the provider's
billing rule, stays within the cap; :func:`native_limits` turns the shorter of that and
the runtime budget into the backend's figure. Both are pure functions of exact decimals.
"""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from broker.errors import BudgetError
from cost_models.billing import SECONDS_PER_HOUR, BillingRule, charge
from cost_models.estimate import Quote

# Shorter runs train nothing worth keeping: AutoML services spend the first minutes
# reading and profiling the data. A trimmed runtime below this is refused.
MIN_USEFUL_RUNTIME_S = 300
VERTEX_MIN_MILLI_NODE_HOURS = 1000
VERTEX_MAX_MILLI_NODE_HOURS = 72000
VERTEX_SECONDS_PER_MILLI_NODE_HOUR = Decimal("3.6")
AZURE_MIN_TIMEOUT_MINUTES = 15


def affordable_runtime_s(
    usd_per_hour: Decimal, rule: BillingRule, max_usd: Decimal
) -> int | None:
    """The longest whole-second runtime whose charge stays within `max_usd`.

    Args:
        usd_per_hour: the price of one hour of the billed resource (all nodes).
        rule: the provider's rounding and minimum charge.
        max_usd: the dollar cap.

    Returns:
        Seconds; 0 when even the shortest billable run costs more than the cap
        (a started hour at $1.00 on a $0.50 cap); None when the resource is free.

    Example:
        >>> affordable_runtime_s(Decimal("3.60"), BillingRule(Decimal(1), Decimal(60)),
        ...                      Decimal("0.50"))
        500
    """
    if max_usd < 0:
        raise ValueError(f"max_usd must be zero or more dollars, got {max_usd}")
    if usd_per_hour == 0:
        return None

    billable_s = max_usd * SECONDS_PER_HOUR / usd_per_hour
    steps = (billable_s / rule.increment_s).to_integral_value(rounding=ROUND_FLOOR)
    seconds = steps * rule.increment_s
    if seconds <= 0 or seconds < rule.minimum_s:
        return 0

    runtime = int(seconds.to_integral_value(rounding=ROUND_FLOOR))
    # Charges are rounded half-up to a millionth: step back if that tips over the cap.
    while runtime > 0 and charge(usd_per_hour, runtime, rule) > max_usd:
        runtime -= 1
    return runtime


def quote_rule(quote: Quote) -> BillingRule:
    """The billing rule a quote was priced with (per second when it does not say)."""
    return quote.billing_rule or BillingRule()


def native_limits(
    quote: Quote,
    max_usd: Decimal | None,
    max_runtime_s: int,
    *,
    nodes: int = 1,
) -> dict[str, Any]:
    """The backend's own limits that keep a job within `max_usd` and `max_runtime_s`.

    Args:
        quote: the candidate's quote; its provider, hourly price and billing rule
            are read.
        max_usd: the dollar cap; None for no cap (the runtime budget alone decides).
        max_runtime_s: the runtime budget in seconds.
        nodes: machines billed at once (Azure AutoML's ``max_nodes``).

    Returns:
        ``runtime_s`` (the seconds the limit allows), ``max_charge_usd`` (what that
        runtime costs at most, or None without a price), ``trimmed`` (True when the cap,
        not the runtime budget, decided), and the provider's own keys:
        ``budget_milli_node_hours`` (vertex), ``timeout_minutes`` and ``max_nodes``
        (azure), ``MaxAutoMLJobRuntimeInSeconds`` and
        ``MaxRuntimePerTrainingJobInSeconds`` (sagemaker), ``max_runtime_secs`` (h2o),
        ``max_runtime_s`` (local).

    Raises:
        ValueError: `max_runtime_s` or `nodes` is below 1.
        BudgetError: the cap does not pay for the backend's shortest run (one Vertex
            node hour, 15 Azure minutes, one billed minimum).

    Example:
        >>> from cost_models.catalog import PriceRow
        >>> from cost_models.estimate import quote
        >>> row = PriceRow("sagemaker", "ml.m5.large", "us-east-1", price=Decimal("3.60"))
        >>> q = quote(row, runtime_s=1200, memory_needed_gib=1.0)
        >>> native_limits(q, Decimal("0.50"), 1200)["MaxAutoMLJobRuntimeInSeconds"]
        500
    """
    if max_runtime_s < 1:
        raise ValueError(
            f"max_runtime_s must be at least 1 second, got {max_runtime_s}"
        )
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, got {nodes}")

    rule = quote_rule(quote)
    rate = quote.training_usd_per_hour
    runtime_s = max_runtime_s
    trimmed = False
    if max_usd is not None and rate is not None:
        affordable = affordable_runtime_s(rate * nodes, rule, max_usd)
        if affordable is not None and affordable < runtime_s:
            if affordable == 0:
                raise BudgetError(
                    f"max_usd ${max_usd} does not pay for the shortest billed run of "
                    f"{quote.provider} {quote.sku} ({quote.billing_unit}, "
                    f"${rate}/h x {nodes}); raise budget.max_usd or pick another "
                    "provider"
                )
            runtime_s, trimmed = affordable, True

    limits: dict[str, Any] = {
        "provider": quote.provider,
        "runtime_s": runtime_s,
        "trimmed": trimmed,
        "max_charge_usd": (
            None if rate is None else charge(rate * nodes, runtime_s, rule)
        ),
    }
    limits.update(_provider_limits(quote, runtime_s, nodes, max_usd))
    return limits


def _provider_limits(
    quote: Quote, runtime_s: int, nodes: int, max_usd: Decimal | None
) -> dict[str, Any]:
    provider = quote.provider
    if provider == "vertex":
        milli = int(runtime_s / VERTEX_SECONDS_PER_MILLI_NODE_HOUR)
        if milli < VERTEX_MIN_MILLI_NODE_HOURS:
            raise BudgetError(
                f"Vertex AI trains for at least one node hour; {runtime_s} s "
                f"(budget {_cap_text(max_usd)}) buys {milli} milli node hours: raise "
                "budget.max_runtime_s to 3600 or more, or budget.max_usd"
            )
        return {
            "budget_milli_node_hours": min(milli, VERTEX_MAX_MILLI_NODE_HOURS),
        }
    if provider == "azure":
        minutes = math.floor(runtime_s / 60)
        if minutes < AZURE_MIN_TIMEOUT_MINUTES:
            raise BudgetError(
                f"Azure AutoML runs for at least {AZURE_MIN_TIMEOUT_MINUTES} minutes; "
                f"{runtime_s} s on {nodes} node(s) (budget {_cap_text(max_usd)}) "
                f"allows {minutes}: raise budget.max_usd or budget.max_runtime_s"
            )
        return {"timeout_minutes": minutes, "max_nodes": nodes}
    if provider == "sagemaker":
        return {
            "MaxAutoMLJobRuntimeInSeconds": runtime_s,
            "MaxRuntimePerTrainingJobInSeconds": runtime_s,
        }
    if provider == "h2o":
        return {"max_runtime_secs": runtime_s}
    return {"max_runtime_s": runtime_s}


def _cap_text(max_usd: Decimal | None) -> str:
    return "no dollar cap" if max_usd is None else f"${max_usd}"
