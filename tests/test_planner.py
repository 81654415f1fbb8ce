"""The cost optimizer: cases C16, C18 and C19, constraints, the comparison, speed."""

from __future__ import annotations

import json
import warnings
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker.credentials import discover_all
from broker.errors import (
    BudgetWarning,
    ConfigurationError,
    PlanningError,
    PriceMissingWarning,
    PriceUnavailableError,
    RegionNotOfferedError,
)
from broker.planner import Plan, make_plan
from broker.providers.base import Availability, Placement, RunShape
from broker.schema import Column, ColumnKind, Schema
from broker.spec import JobSpec, Task
from cost_models.catalog import Catalog, PriceRow, load_catalog, read_overrides

ALL = ("vertex", "azure", "sagemaker", "h2o", "local")
UP = Availability(True, "test: available", "test")


def schema(n_rows: int = 1000, n_features: int = 9, task: Task = Task.BINARY) -> Schema:
    columns = tuple(
        Column(f"f{i}", f"f{i}", ColumnKind.NUMERIC) for i in range(n_features)
    )
    return Schema(
        columns=columns, target="y", target_safe_name="y", task=task, n_rows=n_rows
    )


def spec(**fields: Any) -> JobSpec:
    return JobSpec(data="table.csv", target="y", **fields)


def available(*names: str) -> dict[str, Availability]:
    down = Availability(False, "test: no credentials; set TEST_KEY")
    return {name: (UP if name in names else down) for name in ALL}


def plan_for(
    catalog: Catalog, job: JobSpec, *, up: tuple[str, ...] = ALL, **kw: Any
) -> Plan:
    return make_plan(
        job,
        schema(),
        catalog=catalog,
        availability=available(*up),
        unsupported={},
        **{"shapes": dict.fromkeys(ALL, RunShape()), **kw},
    )


def row(
    provider: str, sku: str, region: str, price: str | None, **cells: Any
) -> PriceRow:
    return PriceRow(
        provider,
        sku,
        region,
        price=None if price is None else Decimal(price),
        memory_gib=cells.pop("memory_gib", 64),
        **cells,
    )


LOCAL = row("local", "this-machine", "local", None, memory_gib=16)
LOCAL_ENDPOINT = row("local", "this-machine", "local", None, component="endpoint")


# --- C16: a price taken from the wrong region -----------------------------------------

C16 = Catalog.from_rows(
    [
        row("sagemaker", "n-small", "r1", "0.18"),
        row("sagemaker", "n-small", "r2", "0.22"),
    ]
)
TWO_HOURS = {"max_runtime_s": 7200}


def test_plan_c16_pinned_region_uses_its_own_price() -> None:
    plan = plan_for(C16, spec(budget=TWO_HOURS, constraints={"regions": ["r2"]}))
    assert plan.chosen is not None
    assert (plan.chosen.region, plan.chosen.quote.training_usd_high) == (
        "r2",
        Decimal("0.44"),
    )
    assert [(r.region, r.reason) for r in plan.rejections] == [
        ("r1", "region_not_allowed")
    ]


def test_plan_c16_no_pin_picks_cheaper_region() -> None:
    plan = plan_for(C16, spec(budget=TWO_HOURS))
    assert [(c.region, c.quote.training_usd_high) for c in plan.candidates] == [
        ("r1", Decimal("0.36")),
        ("r2", Decimal("0.44")),
    ]
    assert plan.candidates[1].rank_reason == "#2: $0.08 more than #1"


def test_plan_c16_region_without_row_raises_never_borrows_price() -> None:
    with pytest.raises(RegionNotOfferedError, match=r"region\(s\) \['r3'\]"):
        plan_for(C16, spec(budget=TWO_HOURS, constraints={"regions": ["r3"]}))


def test_plan_c16_named_machine_in_unpriced_region_lists_priced_regions() -> None:
    job = spec(
        budget=TWO_HOURS, constraints={"regions": ["r3"], "machines": ["n-small"]}
    )
    with pytest.raises(
        RegionNotOfferedError, match=r"priced in \['r1', 'r2'\]"
    ) as info:
        plan_for(C16, job)
    assert (info.value.sku, info.value.region) == ("n-small", "r3")


# --- C18: missing or zero prices read as free -----------------------------------------

C18 = Catalog.from_rows(
    [
        row("sagemaker", "X", "r1", "0.18"),
        {"provider": "sagemaker", "sku": "Y", "region": "r1", "price": "NaN"},
        row("sagemaker", "Z", "r1", "0.0"),
    ]
)


def test_plan_c18_missing_and_zero_prices_left_out_with_warning() -> None:
    with pytest.warns(
        PriceMissingWarning, match=r"sagemaker Y \(r1\), sagemaker Z \(r1\)"
    ):
        plan = plan_for(C18, spec(budget=TWO_HOURS))

    assert [c.machine for c in plan.candidates] == ["X"]
    assert {(r.machine, r.reason) for r in plan.rejections} == {
        ("Y", "price_missing"),
        ("Z", "price_missing"),
    }
    # no paid cloud estimate is ever $0.00
    assert all(r.quote is None for r in plan.rejections)
    assert plan.candidates[0].quote.training_usd_high == Decimal("0.36")


def test_plan_c18_forcing_unpriced_machine_raises_before_submission() -> None:
    with pytest.raises(
        PriceUnavailableError, match=r"machine 'Y' \(sagemaker\) has no usable price"
    ):
        plan_for(C18, spec(budget=TWO_HOURS, constraints={"machines": ["Y"]}))


def test_plan_c18_forcing_unknown_machine_raises() -> None:
    with pytest.raises(
        PriceUnavailableError, match=r"machine 'W' has no price in the catalog"
    ):
        plan_for(C18, spec(constraints={"machines": ["W"]}))


def test_plan_c18_user_price_override_is_used_and_marked(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,sku,region,price\nsagemaker,Y,r1,0.25\n")
    catalog = C18.with_overrides(read_overrides(prices))

    plan = plan_for(catalog, spec(budget=TWO_HOURS, constraints={"machines": ["Y"]}))

    assert plan.chosen is not None
    chosen = plan.chosen.quote
    assert (plan.chosen.machine, chosen.training_usd_high) == ("Y", Decimal("0.50"))
    assert chosen.user_supplied
    assert chosen.price_source.startswith("user-supplied (")
    assert "Price is user-supplied" in plan.explanation()


def test_plan_user_priced_local_row_is_explained_by_that_price_only(
    tmp_path: Path,
) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,sku,region,price\nlocal,this-machine,local,5.00\n")
    catalog = Catalog.from_rows([LOCAL]).with_overrides(read_overrides(prices))

    plan = plan_for(catalog, spec(budget=TWO_HOURS))

    assert plan.chosen is not None and plan.chosen.quote.user_supplied
    assert plan.chosen.quote.training_usd_per_hour == Decimal("5.00")
    explained = plan.explanation()
    assert "Price is user-supplied" in explained
    assert "Local runs are priced at" not in explained  # that rate was not used


def test_plan_c18_local_is_labelled_local_and_priced_from_local_rate() -> None:
    catalog = Catalog.from_rows([*C18.rows, LOCAL])
    with pytest.warns(PriceMissingWarning):
        plan = plan_for(
            catalog, spec(budget=TWO_HOURS), local_rate_usd_per_hour=Decimal("0.25")
        )

    local = next(c for c in plan.candidates if c.provider == "local")
    assert local.quote.is_local
    assert local.quote.training_usd_high == Decimal("0.50")  # 2 h x $0.25 local rate
    assert local.quote.price_source == "local rate"
    # the local rate is dearer than X here, so the cloud machine ranks first
    assert plan.chosen is not None and plan.chosen.machine == "X"


# --- C19: a started hour billed as a full hour ----------------------------------------

C19 = Catalog.from_rows(
    [
        row(
            "azure",
            "H",
            "r1",
            "1.00",
            billing_increment_s=Decimal(3600),
            minimum_charge_s=Decimal(0),
        ),
        row(
            "sagemaker",
            "S",
            "r1",
            "3.60",
            billing_increment_s=Decimal(1),
            minimum_charge_s=Decimal(60),
        ),
        LOCAL,
    ]
)


def test_plan_c19_started_hour_rules_out_h_on_a_50_cent_budget() -> None:
    job = spec(budget={"max_usd": Decimal("0.50"), "max_runtime_s": 1200})
    with pytest.warns(BudgetWarning, match=r"sagemaker S \(r1\): trimmed to 500 s"):
        plan = plan_for(C19, job)

    rejected = {r.machine: r for r in plan.rejections}
    assert rejected["H"].reason == "over_budget"
    assert rejected["H"].quote is not None
    # the estimate is a full started hour, $1.00, not 20/60 of it
    assert rejected["H"].quote.training_usd_high == Decimal("1.00")
    assert "training estimate $1.00" in rejected["H"].detail
    # S bills per second: $0.50 pays for 500 s of the 1200 s, so S stays, trimmed
    assert "S" not in rejected
    [s_candidate] = [c for c in plan.candidates if c.machine == "S"]
    assert s_candidate.runtime_s == 500
    assert s_candidate.budget_trimmed is True
    assert s_candidate.quote.requested_runtime_s == 1200
    assert s_candidate.quote.training_usd_high == Decimal("0.500000")
    assert "runtime trimmed to 500 s of 1200 s" in s_candidate.rank_reason
    # the full-length local run ranks before the trimmed cloud run
    assert [c.machine for c in plan.candidates] == ["this-machine", "S"]
    assert plan.chosen is not None and plan.chosen.runtime_s == 1200


def test_plan_c19_without_local_keeps_only_the_trimmed_per_second_candidate() -> None:
    catalog = Catalog.from_rows(C19.rows[:2])
    job = spec(budget={"max_usd": Decimal("0.50"), "max_runtime_s": 1200})
    with pytest.warns(BudgetWarning, match="trimmed to 500 s"):
        plan = plan_for(catalog, job)

    assert plan.chosen is not None
    assert (plan.chosen.machine, plan.chosen.runtime_s) == ("S", 500)
    assert [(r.machine, r.reason) for r in plan.rejections] == [("H", "over_budget")]
    assert plan.to_dict()["chosen"]["runtime_s"] == 500


def test_plan_c19_budget_below_a_useful_minimum_raises_with_rejections() -> None:
    catalog = Catalog.from_rows(C19.rows[:2])
    # $0.20 pays for 200 s of S: under the 300 s useful minimum, so S is rejected too
    job = spec(budget={"max_usd": Decimal("0.20"), "max_runtime_s": 1200})
    with pytest.raises(PlanningError, match="no provider can run this job") as info:
        plan_for(catalog, job)
    assert sorted(r.reason for r in info.value.rejections) == ["over_budget"] * 2
    detail = {r.machine: r.detail for r in info.value.rejections}
    assert "pays for less than 300 s" in detail["S"]


def test_plan_short_runtime_budget_is_never_trimmed_below_itself() -> None:
    catalog = Catalog.from_rows(C19.rows[1:2])
    # a 100 s job at $3.60/h costs $0.10 (60 s minimum does not bite): fits $0.50
    job = spec(budget={"max_usd": Decimal("0.50"), "max_runtime_s": 100})
    plan = plan_for(catalog, job)
    assert plan.chosen is not None
    assert (plan.chosen.runtime_s, plan.chosen.budget_trimmed) == (100, False)
    assert plan.chosen.quote.training_usd_high == Decimal("0.100000")


# --- monthly budget -------------------------------------------------------------------


def test_plan_monthly_budget_rejects_candidates_over_what_is_left() -> None:
    catalog = Catalog.from_rows(
        [
            row("sagemaker", "cheap", "r1", "0.36"),
            row("azure", "dear", "r1", "3.60"),
        ]
    )
    job = spec(budget={"max_runtime_s": 1200})
    # cheap: 1200 s x $0.36/h = $0.12; dear: $1.20; $0.50 left this month
    plan = plan_for(catalog, job, month_budget_left_usd=Decimal("0.50"))

    assert [c.machine for c in plan.candidates] == ["cheap"]
    [dear] = plan.rejections
    assert dear.reason == "over_monthly_budget"
    assert "exceeds what is left of this month's budget, $0.50" in dear.detail


def test_plan_monthly_budget_spent_leaves_no_candidate() -> None:
    catalog = Catalog.from_rows([row("sagemaker", "cheap", "r1", "0.36")])
    with pytest.raises(PlanningError, match="over_monthly_budget"):
        plan_for(catalog, spec(), month_budget_left_usd=Decimal("-1.00"))


def test_monthly_budget_left_subtracts_the_months_actual_spend(tmp_path: Path) -> None:
    from broker.clock import FakeClock
    from broker.planner import monthly_budget_left
    from broker.store import JobStore

    store = JobStore(tmp_path / "jobs.db", clock=FakeClock())
    for project, usd in (("research", "1.25"), ("research", "0.50"), ("ops", "9")):
        job = store.create_job(
            spec={"n": usd, "p": project},
            idempotency_key=f"{project}-{usd}",
            run_dir=None,
            project=project,
        )
        attempt = store.start_attempt(
            job.job_id,
            provider="local",
            machine=None,
            region=None,
            quote={},
            idempotency_key=f"{project}-{usd}-1",
        )
        store.finish_attempt(
            attempt.attempt_id, state="succeeded", cost_usd=Decimal(usd)
        )

    month = FakeClock().now().strftime("%Y-%m")
    left = monthly_budget_left(store, Decimal("5.00"), project="research", period=month)
    assert left == Decimal("3.25")
    # without a project the budget covers every project together
    assert monthly_budget_left(store, Decimal("5.00"), period=month) == Decimal("-5.75")


# --- constraints ----------------------------------------------------------------------


def test_plan_memory_rejects_small_machines() -> None:
    catalog = Catalog.from_rows(
        [LOCAL, row("sagemaker", "big", "r1", "1.00", memory_gib=128)]
    )
    # 20 M rows x 50 columns x 8 B x 4 = 29.8 GiB + 0.5 GiB base
    big = schema(n_rows=20_000_000, n_features=49)
    plan = make_plan(
        spec(), big, catalog=catalog, availability=available(*ALL), unsupported={}
    )

    assert plan.memory_needed_gib == 30.3
    assert plan.chosen is not None and plan.chosen.machine == "big"
    local = next(r for r in plan.rejections if r.provider == "local")
    assert local.reason == "not_enough_memory"
    assert local.detail == "needs about 30.3 GiB, this-machine has 16 GiB"


def test_plan_min_memory_constraint_raises_the_need() -> None:
    catalog = Catalog.from_rows([LOCAL, row("sagemaker", "big", "r1", "1.00")])
    plan = plan_for(catalog, spec(constraints={"min_memory_gib": 32}))
    assert plan.chosen is not None and plan.chosen.machine == "big"


def test_plan_unavailable_keeps_quote_and_credential_reason() -> None:
    catalog = Catalog.from_rows([*C16.rows, LOCAL])
    plan = plan_for(catalog, spec(budget=TWO_HOURS), up=("local",))

    assert plan.chosen is not None and plan.chosen.provider == "local"
    sm = [r for r in plan.rejections if r.provider == "sagemaker"]
    assert {r.reason for r in sm} == {"unavailable"}
    assert sm[0].detail == "test: no credentials; set TEST_KEY"
    assert sm[0].quote is not None and sm[0].quote.training_usd_high == Decimal("0.36")


def test_plan_provider_and_machine_constraints_reject_as_not_allowed() -> None:
    catalog = Catalog.from_rows([*C16.rows, row("azure", "vm", "r1", "0.10"), LOCAL])
    plan = plan_for(catalog, spec(constraints={"providers": ["sagemaker", "azure"]}))

    assert plan.chosen is not None and plan.chosen.provider == "azure"
    local = next(r for r in plan.rejections if r.provider == "local")
    assert (local.reason, local.detail) == (
        "not_allowed",
        "constraints.providers excludes local",
    )


def test_plan_gpu_constraint_keeps_only_gpu_machines() -> None:
    catalog = Catalog.from_rows(
        [row("azure", "cpu", "r1", "0.10"), row("azure", "gpu", "r1", "3.06", gpus=1)]
    )
    plan = plan_for(catalog, spec(constraints={"gpu": True}))
    assert [c.machine for c in plan.candidates] == ["gpu"]
    assert (
        plan.rejections[0].detail == "constraints.gpu asks for a GPU and cpu has none"
    )


def test_plan_unsupported_task_rejects_with_declared_reason() -> None:
    catalog = Catalog.from_rows([row("azure", "vm", "r1", "0.10"), LOCAL])
    plan = make_plan(
        spec(),
        schema(task=Task.REGRESSION),
        catalog=catalog,
        availability=available(*ALL),
        unsupported={"azure": {"regression": "not in this release"}},
    )
    azure = plan.rejections[0]
    assert (azure.reason, azure.detail) == (
        "unsupported_task",
        "regression: not in this release",
    )


def test_plan_serving_cost_from_cheapest_endpoint() -> None:
    catalog = Catalog.from_rows(
        [
            row("sagemaker", "ml.m5.large", "r1", "0.115"),
            row("sagemaker", "ml.m5.large", "r1", "0.115", component="endpoint"),
            row("sagemaker", "ml.t2.medium", "r1", "0.056", component="endpoint"),
        ]
    )
    job = spec(deployment={"hours_per_month": 730, "instances": 2})
    plan = plan_for(catalog, job)
    assert plan.chosen is not None
    assert plan.chosen.quote.serving_sku == "ml.t2.medium"
    assert plan.chosen.quote.serving_usd_per_month == Decimal("81.76")


def test_plan_missing_endpoint_price_rejects_when_serving_is_asked() -> None:
    catalog = Catalog.from_rows(
        [row("vertex", "automl", "r1", "21.252", component="automl_node_hour"), LOCAL]
    )
    with pytest.warns(PriceMissingWarning, match=r"vertex endpoints \(r1\)"):
        plan = plan_for(catalog, spec(deployment={"hours_per_month": 10}))
    vertex = plan.rejections[0]
    assert vertex.reason == "price_missing"
    assert vertex.quote is not None and vertex.quote.training_usd_high == Decimal(
        "21.252"
    )


def test_plan_local_rate_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOML_BROKER_LOCAL_RATE", "0.30")
    catalog = Catalog.from_rows([LOCAL, row("sagemaker", "m", "r1", "0.115")])
    plan = plan_for(catalog, spec(budget={"max_runtime_s": 3600}))
    assert plan.local_usd_per_hour == Decimal("0.30")
    assert [c.provider for c in plan.candidates] == ["sagemaker", "local"]


def test_plan_bad_local_rate_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOML_BROKER_LOCAL_RATE", "cheap")
    with pytest.raises(ConfigurationError, match="AUTOML_BROKER_LOCAL_RATE='cheap'"):
        plan_for(Catalog.from_rows([LOCAL]), spec())


# --- the shipped catalog with no credentials ------------------------------------------


def test_plan_no_credentials_compares_all_five_and_picks_local(tmp_path: Path) -> None:
    catalog = load_catalog(today=date(2024, 7, 1), env={})
    nothing_set = discover_all(
        env={"PATH": ""}, home=tmp_path, installed=lambda module: True
    )
    job = spec(deployment={"hours_per_month": 730})
    plan = make_plan(
        job, schema(), catalog=catalog, availability=nothing_set, unsupported={}
    )

    assert plan.chosen is not None and plan.chosen.provider == "local"
    table = {r["provider"]: r for r in plan.comparison()}
    assert list(table) == list(ALL)
    assert table["local"]["status"] == "chosen"
    for cloud in ("vertex", "azure", "sagemaker", "h2o"):
        assert table[cloud]["status"] == "unavailable"
    # every cloud shows a real, non-zero estimate for training and serving
    for cloud in ("vertex", "azure", "sagemaker"):
        assert table[cloud]["training_usd_high"] > 0
        assert table[cloud]["serving_usd_per_month"] > 0
    # Vertex bills its one node-hour minimum: 10 minutes cost a full $21.252
    assert table["vertex"]["training_usd_high"] == Decimal("21.252")
    # SageMaker's cheapest: ml.m5.large, 600 s x $0.115/h; serving ml.t2.medium 730 h
    assert table["sagemaker"]["training_usd_high"] == Decimal("0.019167")
    assert table["sagemaker"]["serving_usd_per_month"] == Decimal("40.88")

    text = plan.explanation()
    assert text.startswith("Chose local this-machine in local")
    assert (
        "- vertex: skipped, unavailable: Vertex AI: no Google credentials found" in text
    )
    assert "- sagemaker: skipped, unavailable: SageMaker: no AWS credentials" in text


def test_plan_to_dict_is_json_with_exact_decimal_strings() -> None:
    plan = plan_for(C16, spec(budget=TWO_HOURS))
    payload = json.loads(json.dumps(plan.to_dict()))
    assert payload["chosen"]["quote"]["training_usd_high"] == "0.360000"
    assert payload["candidates"][1]["region"] == "r2"
    assert payload["explanation"].startswith("Chose sagemaker n-small in r1")
    assert payload["comparison"] == [
        {
            "provider": "sagemaker",
            "status": "chosen",
            "chosen": True,
            "machine": "n-small",
            "region": "r1",
            "training_usd_low": "0.090000",
            "training_usd_high": "0.360000",
            "training_usd": "0.360000",
            "serving_usd_per_month": "0",
            "total_usd": "0.360000",
            "is_local": False,
            "user_supplied": False,
            "detail": "",
        }
    ]


# --- speed ----------------------------------------------------------------------------


def test_plan_ten_thousand_rows() -> None:
    rows = [
        row("sagemaker", f"m{i}", f"r{i % 20}", f"0.{100 + i % 900}")
        for i in range(9_980)
    ]
    rows += [
        row("sagemaker", "ep", f"r{i}", "0.05", component="endpoint") for i in range(20)
    ]
    catalog = Catalog.from_rows(rows)
    job = spec(deployment={"hours_per_month": 100})

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_for(catalog, job)

    # (its speed is measured in benchmarks/overhead.py, not here)
    assert len(plan.candidates) == 9_980
    assert (
        plan.chosen is not None
        and plan.chosen.quote.training_usd_per_hour == Decimal("0.100")
    )


def test_plan_h2o_cloud_vm_needs_a_cluster_url() -> None:
    catalog = Catalog.from_rows([row("h2o", "ec2:m5.2xlarge", "us-east-1", "0.384")])
    embedded = Availability(True, "H2O: embedded cluster", "java")
    remote = Availability(True, "H2O: cluster URL", "AUTOML_BROKER_H2O_URL")

    with pytest.raises(PlanningError) as info:
        make_plan(
            spec(),
            schema(),
            catalog=catalog,
            availability={"h2o": embedded},
            unsupported={},
        )
    assert "set AUTOML_BROKER_H2O_URL" in info.value.rejections[0].detail

    plan = make_plan(
        spec(), schema(), catalog=catalog, availability={"h2o": remote}, unsupported={}
    )
    assert plan.chosen is not None and plan.chosen.machine == "ec2:m5.2xlarge"


def test_plan_h2o_with_a_cluster_url_is_not_priced_as_this_machine() -> None:
    catalog = Catalog.from_rows(
        [
            row("h2o", "ec2:m5.2xlarge", "us-east-1", "0.384"),
            row("h2o", "this-machine", "local", None, memory_gib=16),
        ]
    )
    embedded = Availability(True, "H2O: embedded cluster", "java")
    remote = Availability(
        True, "H2O cluster at http://127.0.0.1:54321", "AUTOML_BROKER_H2O_URL"
    )

    here = make_plan(
        spec(),
        schema(),
        catalog=catalog,
        availability={"h2o": embedded},
        unsupported={},
    )
    there = make_plan(
        spec(), schema(), catalog=catalog, availability={"h2o": remote}, unsupported={}
    )

    assert [(c.machine, c.region) for c in here.candidates] == [
        ("this-machine", "local")
    ]
    assert [(c.machine, c.region) for c in there.candidates] == [
        ("ec2:m5.2xlarge", "us-east-1")
    ]
    [refused] = [r for r in there.rejections if r.machine == "this-machine"]
    assert refused.detail == (
        "jobs go to the H2O cluster (H2O cluster at http://127.0.0.1:54321), not to "
        "this machine"
    )


def test_plan_placement_quotes_only_where_the_provider_is_set_up():
    from broker.providers.base import Placement

    catalog = Catalog.from_rows(
        [
            row("sagemaker", "ml.m5.large", "r1", "0.10"),
            row("sagemaker", "ml.m5.xlarge", "r2", "0.20"),
            LOCAL,
        ]
    )
    placements = {
        "sagemaker": Placement(frozenset({"r2"}), frozenset({"ml.m5.xlarge"}))
    }

    plan = plan_for(catalog, spec(), up=("sagemaker",), placements=placements)

    # the cheaper r1 row is not what the configured provider would run
    assert [(c.provider, c.machine, c.region) for c in plan.candidates] == [
        ("sagemaker", "ml.m5.xlarge", "r2")
    ]
    [refused] = [r for r in plan.rejections if r.machine == "ml.m5.large"]
    assert refused.reason == "not_configured"
    assert refused.detail == "sagemaker is set up for region ['r2']"


def test_plan_comparison_row_shows_why_the_allowed_row_was_refused() -> None:
    catalog = Catalog.from_rows(
        [
            row("vertex", "automl", "us-central1", "21.252"),
            row("vertex", "automl", "us-east1", "21.252"),
            row("vertex", "automl", "europe-west4", "23.00"),
            LOCAL,
        ]
    )
    job = spec(
        constraints={
            "providers": ["vertex", "local"],
            "regions": ["us-central1", "local"],
        }
    )

    plan = plan_for(catalog, job, up=("local",))

    [vertex] = [r for r in plan.comparison() if r["provider"] == "vertex"]
    # two rows are filtered out by region, but the row that could have run was
    # refused for having no credentials: that is the reason shown, with its own row
    assert vertex["status"] == "unavailable"
    assert vertex["region"] == "us-central1"
    assert "no credentials" in vertex["detail"]


def test_plan_azure_quote_counts_its_nodes_and_its_15_minute_run() -> None:
    catalog = Catalog.from_rows([row("azure", "vm", "r1", "0.293"), LOCAL])
    job = spec(budget={"max_runtime_s": 60})

    declared = make_plan(
        job, schema(), catalog=catalog, availability=available(*ALL), unsupported={}
    )
    configured = make_plan(
        job,
        schema(),
        catalog=catalog,
        availability=available(*ALL),
        unsupported={},
        placements={"azure": Placement(shape=RunShape(nodes=2, min_runtime_s=900))},
    )

    [azure] = [c for c in declared.candidates if c.provider == "azure"]
    # 4 nodes x $0.293/h for the 15 minutes AutoML runs at least, not 1 node for 60 s
    assert azure.quote.training_usd_per_hour == Decimal("1.172")
    assert azure.quote.training_usd_high == Decimal("0.293")
    assert azure.quote.training_usd_low == Decimal("0.293")
    assert azure.runtime_s == 60  # the job's own limit is unchanged
    assert "4 machines at once, a run lasts at least 15 min" in azure.quote.billing_unit
    [azure2] = [c for c in configured.candidates if c.provider == "azure"]
    assert azure2.quote.training_usd_high == Decimal("0.1465")


def test_plan_azure_rejected_when_the_cap_cannot_pay_its_shortest_run() -> None:
    catalog = Catalog.from_rows([row("azure", "vm", "r1", "0.293"), LOCAL])
    job = spec(budget={"max_runtime_s": 3600, "max_usd": Decimal("0.20")})

    plan = make_plan(
        job, schema(), catalog=catalog, availability=available(*ALL), unsupported={}
    )

    [azure] = [r for r in plan.rejections if r.provider == "azure"]
    assert azure.reason == "over_budget"
    assert azure.detail.endswith(
        "which pays for less than the 900 s that azure bills at least"
    )


def test_plan_vertex_rejection_names_its_node_hour_minimum_not_a_short_runtime():
    catalog = Catalog.from_rows(
        [
            row(
                "vertex",
                "automl",
                "us-central1",
                "21.252",
                component="automl_node_hour",
                billing_increment_s=Decimal("3.6"),
                minimum_charge_s=Decimal(3600),
            ),
            LOCAL,
        ]
    )
    # $20 pays for 3387 s at $21.252/h, but Vertex bills at least one node hour
    job = spec(budget={"max_runtime_s": 7200, "max_usd": Decimal("20")})

    plan = make_plan(
        job, schema(), catalog=catalog, availability=available(*ALL), unsupported={}
    )

    [vertex] = [r for r in plan.rejections if r.provider == "vertex"]
    assert vertex.reason == "over_budget"
    assert vertex.detail.endswith(
        "which pays for less than the 3600 s that vertex bills at least"
    )


def test_plan_prefer_repeated_local_ranks_local_first() -> None:
    catalog = Catalog.from_rows(
        [LOCAL, row("sagemaker", "m", "r1", "0.115"), row("azure", "vm", "r1", "0.2")]
    )
    job = spec(budget={"max_runtime_s": 3600}, constraints={"prefer": ["local"] * 3})

    plan = plan_for(catalog, job, local_rate_usd_per_hour=Decimal("0.50"))

    # local is the dearest, but preferred; the rest follow by cost
    assert [c.provider for c in plan.candidates] == ["local", "sagemaker", "azure"]
    assert plan.candidates[0].rank_reason.startswith("first preferred provider")


@pytest.mark.parametrize("text", ["1e30", "Infinity", "100000.01", "-0.01"])
def test_plan_absurd_local_rate_from_environment_names_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("AUTOML_BROKER_LOCAL_RATE", text)
    with pytest.raises(
        ConfigurationError,
        match=rf"AUTOML_BROKER_LOCAL_RATE is '{text}', but the local rate must be a "
        r"finite number of dollars per hour from 0 to 100,000",
    ):
        plan_for(Catalog.from_rows([LOCAL]), spec())


@pytest.mark.parametrize(
    ("rate", "shown"), [(Decimal("1e30"), r"1E\+30"), (Decimal("NaN"), "NaN")]
)
def test_plan_absurd_local_rate_argument_names_the_setting(
    rate: Decimal, shown: str
) -> None:
    # the config value local_rate_usd_per_hour reaches make_plan as this argument
    with pytest.raises(
        ConfigurationError,
        match=rf"local_rate_usd_per_hour \(argument or config setting\) is {shown}, ",
    ):
        plan_for(Catalog.from_rows([LOCAL]), spec(), local_rate_usd_per_hour=rate)


def test_plan_local_rate_at_the_ceiling_is_used() -> None:
    plan = plan_for(
        Catalog.from_rows([LOCAL]),
        spec(budget={"max_runtime_s": 3600}),
        local_rate_usd_per_hour=Decimal("100000"),
    )

    assert plan.local_usd_per_hour == Decimal("100000")
    assert plan.candidates[0].quote.training_usd_high == Decimal("100000")


def test_plan_explanation_says_why_a_preferred_dearer_provider_was_chosen() -> None:
    catalog = Catalog.from_rows(
        [row("sagemaker", "n-small", "r1", "3.60"), row("azure", "vm", "r1", "0.36")]
    )
    job = spec(budget={"max_runtime_s": 600}, constraints={"prefer": ["sagemaker"]})

    text = plan_for(catalog, job).explanation()

    assert text.startswith(
        "Chose sagemaker n-small in r1: the first preferred provider"
    )
    # 600 s: $0.60 on sagemaker against $0.06 on azure
    assert (
        "- azure: feasible, best vm in r1 at $0.06 ($0.54 less, ranked later: "
        "a preferred provider comes first)" in text
    )


def test_plan_explanation_names_the_only_feasible_provider() -> None:
    catalog = Catalog.from_rows([row("azure", "vm", "r1", "0.36"), LOCAL])

    text = plan_for(catalog, spec(), up=("local",)).explanation()

    assert text.startswith(
        "Chose local this-machine in local: the only feasible provider"
    )
