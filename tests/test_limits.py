"""A dollar cap in each backend's own limit: exact figures, minimums, rounding."""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker.errors import BudgetError
from cost_models.billing import BillingRule
from cost_models.catalog import PriceRow
from cost_models.estimate import Quote, quote
from cost_models.limits import affordable_runtime_s, native_limits

PER_SECOND_60 = BillingRule(Decimal(1), Decimal(60))
PER_HOUR = BillingRule(Decimal(3600), Decimal(0))


def quoted(provider: str, price: str, runtime_s: int = 3600, **cells: object) -> Quote:
    row = PriceRow(provider, "m", "r1", price=Decimal(price), **cells)  # type: ignore[arg-type]
    return quote(row, runtime_s=runtime_s, memory_needed_gib=1.0)


def test_affordable_runtime_s_per_second_with_minimum() -> None:
    # $0.50 at $3.60/h ($0.001/s) buys exactly 500 s
    assert affordable_runtime_s(Decimal("3.60"), PER_SECOND_60, Decimal("0.50")) == 500


def test_affordable_runtime_s_below_the_minimum_charge_is_zero() -> None:
    # $0.05 buys 50 s, but every run is billed at least 60 s ($0.06)
    assert affordable_runtime_s(Decimal("3.60"), PER_SECOND_60, Decimal("0.05")) == 0


def test_affordable_runtime_s_started_hour_c19() -> None:
    # per started hour at $1.00/h: $0.50 buys no hour at all; $1.50 buys one
    assert affordable_runtime_s(Decimal("1.00"), PER_HOUR, Decimal("0.50")) == 0
    assert affordable_runtime_s(Decimal("1.00"), PER_HOUR, Decimal("1.50")) == 3600


def test_affordable_runtime_s_rounding_never_passes_the_cap() -> None:
    # $0.293/h has no finite per-second price: 1 cent buys 122 s ($0.009931), not 123
    runtime = affordable_runtime_s(Decimal("0.293"), PER_SECOND_60, Decimal("0.01"))
    assert runtime == 122


def test_affordable_runtime_s_free_resource_is_unbounded() -> None:
    assert affordable_runtime_s(Decimal(0), PER_SECOND_60, Decimal("0.01")) is None


def test_native_limits_sagemaker_max_runtime_trimmed_to_the_cap() -> None:
    limits = native_limits(quoted("sagemaker", "3.60", 1200), Decimal("0.50"), 1200)
    assert limits == {
        "provider": "sagemaker",
        "runtime_s": 500,
        "trimmed": True,
        "max_charge_usd": Decimal("0.500000"),
        "MaxAutoMLJobRuntimeInSeconds": 500,
        "MaxRuntimePerTrainingJobInSeconds": 500,
    }


def test_native_limits_sagemaker_runtime_decides_when_the_cap_is_loose() -> None:
    limits = native_limits(quoted("sagemaker", "0.115", 600), Decimal("10"), 600)
    assert (limits["MaxAutoMLJobRuntimeInSeconds"], limits["trimmed"]) == (600, False)
    # 600 s x $0.115/h = $0.019166666... rounded half-up to a millionth
    assert limits["max_charge_usd"] == Decimal("0.019167")


def test_native_limits_vertex_milli_node_hours() -> None:
    vertex = quoted(
        "vertex",
        "21.252",
        component="automl_node_hour",
        billing_increment_s=Decimal("3.6"),
        minimum_charge_s=Decimal(3600),
    )
    # $100 / $21.252 per node hour = 4.7054 node hours -> 4705 milli node hours
    limits = native_limits(vertex, Decimal("100"), 86_400)
    assert limits["budget_milli_node_hours"] == 4705
    assert limits["runtime_s"] == 16938
    assert limits["max_charge_usd"] == Decimal("99.990660")
    # without a cap: 2 h of runtime = 2000 milli node hours
    assert native_limits(vertex, None, 7200)["budget_milli_node_hours"] == 2000


def test_native_limits_vertex_refuses_less_than_one_node_hour() -> None:
    vertex = quoted(
        "vertex",
        "21.252",
        billing_increment_s=Decimal("3.6"),
        minimum_charge_s=Decimal(3600),
    )
    with pytest.raises(BudgetError, match="does not pay for the shortest billed run"):
        native_limits(vertex, Decimal("20"), 7200)
    with pytest.raises(BudgetError, match="buys 500 milli node hours"):
        native_limits(vertex, None, 1800)


def test_native_limits_azure_timeout_times_nodes() -> None:
    azure = quoted("azure", "0.293")
    # 4 nodes x $0.293/h = $1.172/h; $1.00 buys 3071 s -> 51 whole minutes
    limits = native_limits(azure, Decimal("1.00"), 3600, nodes=4)
    assert (limits["timeout_minutes"], limits["max_nodes"]) == (51, 4)
    assert limits["runtime_s"] == 3071
    assert limits["max_charge_usd"] <= Decimal("1.00")
    # a loose cap leaves the runtime budget in charge: 60 minutes
    assert native_limits(azure, Decimal("10"), 3600, nodes=4)["timeout_minutes"] == 60


def test_native_limits_azure_refuses_less_than_fifteen_minutes() -> None:
    with pytest.raises(BudgetError, match="at least 15 minutes"):
        native_limits(quoted("azure", "0.293"), Decimal("0.05"), 3600, nodes=4)


def test_native_limits_local_and_h2o_runtime() -> None:
    local = quoted("local", "0.20")
    assert native_limits(local, Decimal("0.01"), 3600)["max_runtime_s"] == 180
    assert native_limits(quoted("h2o", "0.384"), None, 900)["max_runtime_secs"] == 900


def test_native_limits_rejects_a_nonpositive_runtime() -> None:
    with pytest.raises(ValueError, match="max_runtime_s must be at least 1 second"):
        native_limits(quoted("local", "0.20"), None, 0)
