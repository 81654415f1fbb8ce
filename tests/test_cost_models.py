"""Billing arithmetic, catalogs and quotes (C18 and C19 at the cost-model level)."""

from __future__ import annotations

import warnings
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from broker.errors import ConfigurationError, StalePriceWarning
from cost_models.billing import BillingRule, charge, monthly
from cost_models.catalog import (
    CATALOG_DIR,
    COMPONENTS,
    PROVIDERS,
    Catalog,
    PriceRow,
    load_catalog,
    parse_row,
    read_overrides,
)
from cost_models.estimate import estimate_memory_gib, quote

PER_STARTED_HOUR = BillingRule(Decimal(3600), Decimal(0))
PER_SECOND_60S_MIN = BillingRule(Decimal(1), Decimal(60))
FRESH = date(2024, 7, 1)  # within 180 days of the shipped catalogs' retrieval date


# --- billing (C19) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime_s", "expected"),
    [(20 * 60, Decimal("1.00")), (61 * 60, Decimal("2.00")), (3600, Decimal("1.00"))],
)
def test_charge_per_started_hour_bills_whole_hours(
    runtime_s: int, expected: Decimal
) -> None:
    # C19, backend H: $1.00/h billed per started hour
    assert charge(Decimal("1.00"), runtime_s, PER_STARTED_HOUR) == expected


@pytest.mark.parametrize(
    ("runtime_s", "expected"),
    [(10, Decimal("0.06")), (61, Decimal("0.061")), (60, Decimal("0.06"))],
)
def test_charge_per_second_applies_60s_minimum(
    runtime_s: int, expected: Decimal
) -> None:
    # C19, backend S: $3.60/h = $0.001/s, 60 s minimum
    assert charge(Decimal("3.60"), runtime_s, PER_SECOND_60S_MIN) == expected


@pytest.mark.parametrize("rule", [PER_STARTED_HOUR, PER_SECOND_60S_MIN])
def test_charge_rejected_before_start_costs_zero(rule: BillingRule) -> None:
    # C19: a job rejected before it started costs $0.00 on both backends
    assert charge(Decimal("3.60"), 1200, rule, started=False) == Decimal("0.00")
    assert charge(Decimal("3.60"), 0, rule) == Decimal("0")


def test_charge_rounds_half_up_to_a_millionth() -> None:
    # $0.293/h for 61 s = 0.004964722... -> 0.004965
    assert charge(Decimal("0.293"), 61, PER_SECOND_60S_MIN) == Decimal("0.004965")


def test_billed_seconds_vertex_node_hours_have_one_hour_floor() -> None:
    vertex = BillingRule(Decimal("3.6"), Decimal(3600))
    # a 10-minute budget is billed as the 1 node-hour minimum
    assert vertex.billed_seconds(600) == Decimal(3600)
    # past the floor, billing steps are milli node hours (3.6 s)
    assert vertex.billed_seconds(3601) == Decimal("3603.6")


def test_billing_rule_rejects_zero_increment() -> None:
    with pytest.raises(ValueError, match="increment must be positive seconds, got 0"):
        BillingRule(Decimal(0), Decimal(0))


def test_billing_rule_describe_names_the_rounding() -> None:
    assert PER_STARTED_HOUR.describe() == "per started hour"
    assert PER_SECOND_60S_MIN.describe() == "per second, 60 s minimum"
    assert BillingRule(Decimal(1), Decimal(0)).describe() == "per second"
    assert (
        BillingRule(Decimal("3.6"), Decimal(3600)).describe("node hour")
        == "per node hour in 3.6 s steps, 1 h minimum"
    )


def test_monthly_multiplies_hours_rate_and_instances() -> None:
    assert monthly(Decimal("0.115"), Decimal("730"), 2) == Decimal("167.90")


# --- catalog rows ---------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["", "NaN", "nan", float("nan"), None])
def test_parse_row_missing_price_is_none_not_free(cell: object) -> None:
    row = parse_row(
        {"provider": "sagemaker", "sku": "Y", "region": "r1", "price": cell},
        origin="test",
    )
    assert row.price is None
    assert row.usable_price is None


def test_price_row_zero_cloud_price_reads_as_missing() -> None:
    # C18: 0.0 on a cloud SKU is missing, never free
    row = PriceRow("sagemaker", "Z", "r1", price=Decimal("0.0"))
    assert row.usable_price is None
    assert row.usd_per_hour is None


def test_price_row_zero_local_price_is_a_real_zero() -> None:
    row = PriceRow("local", "this-machine", "local", price=Decimal("0"))
    assert row.is_local
    assert row.usable_price == Decimal("0")


def test_price_row_per_second_price_converts_to_hourly() -> None:
    row = PriceRow("azure", "vm", "r1", unit="second", price=Decimal("0.001"))
    assert row.usd_per_hour == Decimal("3.600")


def test_price_row_blank_billing_falls_back_to_provider_rule() -> None:
    assert PriceRow("sagemaker", "m", "r1").billing_rule == PER_SECOND_60S_MIN
    assert PriceRow("vertex", "m", "r1").billing_rule == BillingRule(
        Decimal("3.6"), Decimal(3600)
    )


def test_parse_row_bad_price_names_row_and_value() -> None:
    with pytest.raises(ConfigurationError, match=r"row f\.csv:3: price 'cheap'"):
        parse_row(
            {"provider": "azure", "sku": "vm", "region": "r1", "price": "cheap"},
            origin="f.csv:3",
        )


def test_parse_row_unknown_component_lists_choices() -> None:
    with pytest.raises(
        ConfigurationError, match="unknown component 'gpu'; choose from"
    ):
        parse_row(
            {"provider": "azure", "sku": "vm", "region": "r1", "component": "gpu"},
            origin="x",
        )


def test_parse_row_negative_price_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be zero or more"):
        parse_row(
            {"provider": "azure", "sku": "vm", "region": "r1", "price": "-1"},
            origin="x",
        )


@pytest.mark.parametrize("currency", ["EUR", "gbp"])
def test_parse_row_other_currency_refused_before_it_is_ranked_as_dollars(
    currency: str,
) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"row x: currency '{currency.upper()}' is not supported; .* in USD",
    ):
        parse_row(
            {
                "provider": "azure",
                "sku": "vm",
                "region": "r1",
                "price": "0.5",
                "currency": currency,
            },
            origin="x",
        )


def test_parse_row_lower_case_usd_is_dollars() -> None:
    row = parse_row(
        {
            "provider": "azure",
            "sku": "vm",
            "region": "r1",
            "price": "1",
            "currency": "usd",
        },
        origin="x",
    )

    assert row.currency == "USD"


# --- shipped catalogs -----------------------------------------------------------------


def test_load_catalog_shipped_rows_have_sources_and_prices() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no staleness warning on a fresh date
        catalog = load_catalog(today=FRESH, env={})

    providers = {r.provider for r in catalog if r.is_training}
    assert providers == {"vertex", "azure", "sagemaker", "h2o", "local"}
    cloud = [r for r in catalog if not r.is_local]
    assert all(r.source.startswith("https://") for r in cloud)
    assert all(r.retrieved == date(2024, 6, 1) for r in cloud)
    # every cloud row carries a usable list price: none is read as free or missing
    assert all(r.usable_price is not None and r.usable_price > 0 for r in cloud)
    assert {r.component for r in catalog} <= set(COMPONENTS)


def test_load_catalog_known_list_prices() -> None:
    catalog = load_catalog(today=FRESH, env={})
    m5 = catalog.get("sagemaker", "ml.m5.xlarge", "us-east-1")
    assert m5 is not None and m5.price == Decimal("0.23") and m5.memory_gib == 16
    vertex = catalog.get(
        "vertex", "automl-tabular-training", "us-central1", "automl_node_hour"
    )
    assert vertex is not None and vertex.price == Decimal("21.252")


def test_load_catalog_local_rows_get_this_machine_memory() -> None:
    catalog = load_catalog(today=FRESH, env={})
    local = catalog.get("local", "this-machine", "local")
    assert local is not None
    assert local.usable_price is None  # priced from the local rate, not a list price
    assert local.memory_gib is not None and local.memory_gib > 0


def test_load_catalog_warns_when_older_than_max_age() -> None:
    with pytest.warns(
        StalePriceWarning,
        match=r"vertex\.csv was retrieved on 2024-06-01, 366 days ago",
    ):
        load_catalog([CATALOG_DIR / "vertex.csv"], today=date(2025, 6, 2), env={})


def test_load_catalog_max_age_from_environment() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_catalog(
            [CATALOG_DIR / "aws.csv"],
            today=date(2025, 6, 2),
            env={"AUTOML_BROKER_PRICE_MAX_AGE_DAYS": "400"},
        )


@pytest.mark.parametrize("days", ["-5", "soon"])
def test_load_catalog_max_age_from_environment_must_be_days(days: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_catalog(
            [CATALOG_DIR / "aws.csv"], env={"AUTOML_BROKER_PRICE_MAX_AGE_DAYS": days}
        )

    assert str(caught.value) == (
        f"AUTOML_BROKER_PRICE_MAX_AGE_DAYS={days!r} is not a whole number of days of "
        "0 or more; set it to e.g. 180"
    )


def test_load_catalog_unreadable_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(
        ConfigurationError, match="cannot read price catalog .*nope.csv"
    ):
        load_catalog([missing], env={})


# --- user overrides -------------------------------------------------------------------


def test_override_csv_replaces_shipped_price_and_marks_user_supplied(
    tmp_path: Path,
) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        "provider,sku,region,price\nsagemaker,ml.m5.xlarge,us-east-1,0.20\n"
    )
    catalog = load_catalog(today=FRESH, override=path, env={})

    row = catalog.get("sagemaker", "ml.m5.xlarge", "us-east-1")
    assert row is not None
    assert row.price == Decimal("0.20")
    assert row.user_supplied
    assert row.memory_gib == 16  # cells left empty keep the shipped values
    untouched = catalog.get("sagemaker", "ml.m5.large", "us-east-1")
    assert untouched is not None and not untouched.user_supplied


def test_override_yaml_from_environment_adds_new_row(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "prices:\n"
        "  - {provider: azure, sku: Standard_F4s_v2, region: eastus, price: 0.169,"
        " memory_gib: 8}\n"
    )
    catalog = load_catalog(today=FRESH, env={"AUTOML_BROKER_PRICES": str(path)})

    row = catalog.get("azure", "Standard_F4s_v2", "eastus")
    assert row is not None
    assert (row.price, row.user_supplied, row.memory_gib) == (Decimal("0.169"), True, 8)
    assert catalog.sources[-1].user_supplied


def test_override_yaml_syntax_error_gives_position_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text('prices:\n  - {provider: local, note: "sk-live-9f8e7d6c\n')

    with pytest.raises(ConfigurationError) as caught:
        read_overrides(path)

    message = str(caught.value)
    assert message.startswith(f"price file {str(path)!r} is not valid YAML: line 3")
    assert "sk-live-9f8e7d6c" not in message


def test_override_yaml_wrong_shape_says_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("price: 3\n")
    with pytest.raises(ConfigurationError, match="must hold a list of price mappings"):
        read_overrides(path)


# --- quotes and memory ----------------------------------------------------------------


def test_estimate_memory_gib_from_rows_and_columns() -> None:
    # 1e6 x 100 cells x 8 bytes x 4 copies = 2.98 GiB, plus the 0.5 GiB base
    assert estimate_memory_gib(1_000_000, 100) == 3.48
    assert estimate_memory_gib(0, 10) == 0.5


def test_quote_training_range_and_serving_are_exact() -> None:
    training = PriceRow(
        "sagemaker",
        "n-small",
        "r1",
        price=Decimal("0.18"),
        memory_gib=8,
        source="https://example.invalid/pricing",
        retrieved=date(2024, 6, 1),
    )
    serving = PriceRow(
        "sagemaker", "ml.t2.medium", "r1", "endpoint", price=Decimal("0.056")
    )
    result = quote(
        training,
        runtime_s=7200,
        memory_needed_gib=1.0,
        serving=serving,
        hours_per_month=Decimal(730),
        instances=2,
    )

    assert result.training_usd_high == Decimal("0.36")  # 2 h x $0.18
    assert result.training_usd_low == Decimal("0.09")  # a quarter of the budget
    assert result.serving_usd_per_month == Decimal("81.76")  # 730 h x $0.056 x 2
    assert result.total_usd == Decimal("82.12")
    assert result.billing_unit == "USD per hour, billed per second, 60 s minimum"
    assert (result.memory_offered_gib, result.serving_sku) == (8, "ml.t2.medium")
    assert not result.is_local and not result.user_supplied


def test_quote_local_row_uses_local_rate_and_is_labelled_local() -> None:
    row = PriceRow("local", "this-machine", "local", memory_gib=16)
    result = quote(
        row, runtime_s=3600, memory_needed_gib=1.0, local_usd_per_hour=Decimal("0.05")
    )
    assert result.training_usd_high == Decimal("0.05")
    assert result.is_local
    assert result.price_source == "local rate"
    assert "local rate" in result.billing_unit


def test_quote_without_endpoint_price_leaves_serving_unknown() -> None:
    row = PriceRow(
        "vertex", "automl", "r1", "automl_node_hour", price=Decimal("21.252")
    )
    result = quote(
        row, runtime_s=600, memory_needed_gib=1.0, hours_per_month=Decimal(10)
    )
    assert result.serving_usd_per_month is None
    assert result.training_usd_high == Decimal("21.252")  # one node-hour minimum


def test_catalog_from_rows_parses_mappings() -> None:
    catalog = Catalog.from_rows(
        [{"provider": "azure", "sku": "vm", "region": "r1", "price": "0.5"}]
    )
    row = catalog.get("azure", "vm", "r1")
    assert row is not None and row.price == Decimal("0.5") and row.origin == "memory"


# --- what a price file may hold ---------------------------------------------------------


def test_read_overrides_accepts_a_csv_saved_with_a_byte_order_mark(
    tmp_path: Path,
) -> None:
    # spreadsheet programs save "CSV UTF-8" with a BOM before the first column name
    path = tmp_path / "prices.csv"
    path.write_bytes(
        "provider,sku,region,price\nazure,Standard_F4s_v2,eastus,0.169\n".encode(
            "utf-8-sig"
        )
    )

    rows = read_overrides(path)

    assert [(r.provider, r.sku, r.region, r.price) for r in rows] == [
        ("azure", "Standard_F4s_v2", "eastus", Decimal("0.169"))
    ]


def test_read_overrides_unknown_provider_names_row_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("provider,sku,region,price\nazure,vm,r1,0.1\nFoo,vm,r1,0.2\n")

    with pytest.raises(
        ConfigurationError,
        match=r"prices\.csv:3: unknown provider 'Foo'; choose from \['vertex', "
        r"'azure', 'sagemaker', 'h2o', 'local'\]",
    ):
        read_overrides(path)


def test_catalog_providers_are_the_spec_provider_names() -> None:
    from broker.spec import PROVIDER_NAMES

    assert PROVIDERS == PROVIDER_NAMES


@pytest.mark.parametrize("price", ["1e999", "inf", "-Infinity", "9e400"])
def test_parse_row_non_finite_price_names_row_and_value(price: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"row f\.csv:2: price '{price}' is not a finite number",
    ):
        parse_row(
            {"provider": "vertex", "sku": "m", "region": "r1", "price": price},
            origin="f.csv:2",
        )


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        (
            {"price": "100000.01"},
            r"price '100000\.01' per hour is \$100,000\.01 an hour, above the "
            r"\$100,000 an hour",
        ),
        (
            {"price": "28", "unit": "second"},
            r"price '28' per second is \$100,800 an hour, above",
        ),
        ({"spot_price": "1e30"}, r"spot_price '1e30' per hour is \$1,000,000,"),
        (
            {"price": "200000", "component": "storage", "unit": "gib_month"},
            r"price '200000' per gib_month is above \$100,000",
        ),
    ],
)
def test_parse_row_absurd_price_is_refused(cells: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"row f\.csv:4: " + message):
        parse_row(
            {"provider": "azure", "sku": "vm", "region": "r1", **cells},
            origin="f.csv:4",
        )


def test_parse_row_price_at_the_ceiling_is_kept() -> None:
    row = parse_row(
        {"provider": "azure", "sku": "vm", "region": "r1", "price": "100000"},
        origin="x",
    )

    assert row.usd_per_hour == Decimal("100000")


def test_load_catalog_warns_once_for_every_stale_file_of_a_date() -> None:
    files = [CATALOG_DIR / name for name in ("aws.csv", "azure.csv", "vertex.csv")]

    with pytest.warns(StalePriceWarning) as caught:
        load_catalog(files, today=date(2025, 6, 2), env={})

    [warning] = caught
    assert (
        f"aws.csv, azure.csv, vertex.csv (in {CATALOG_DIR}) were retrieved on "
        "2024-06-01, 366 days ago (more than 180)" in str(warning.message)
    )
    assert "automl-broker pricing refresh" in str(warning.message)
