"""Price refresh against recorded API responses: Azure Retail Prices (NextPageLink),
AWS Price List (Stubber, NextToken), Google Cloud Billing Catalog (pageToken, API key).

No test opens a connection: Azure and Google answer through an ``httpx.MockTransport``
that serves the JSON files under tests/fixtures/pricing/, AWS through botocore's Stubber.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.errors import StalePriceWarning
from cost_models.catalog import (
    CATALOG_DIR,
    PriceRow,
    load_catalog,
    read_csv,
    user_catalog_dir,
    write_csv,
)
from cost_models.refresh import (
    AWS_PRICING_SOURCE,
    AZURE_PRICES_URL,
    GOOGLE_BILLING_URL,
    VERTEX_SERVICE_ID,
    RefreshReport,
    refresh_catalogs,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pricing"
TODAY = date(2025, 1, 15)
API_KEY = "AIzaTEST-not-a-real-key-7f3a9c"
EMPTY_AZURE: dict[str, Any] = {
    "BillingCurrency": "USD",
    "CustomerEntityId": "Default",
    "CustomerEntityType": "Retail",
    "Items": [],
    "NextPageLink": None,
    "Count": 0,
}


class RecordedApis:
    """Serves the recorded Azure and Google responses and notes every request."""

    def __init__(self, *, azure_status: int = 200) -> None:
        self.requests: list[httpx.Request] = []
        self.azure_status = azure_status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "prices.azure.com":
            return self.azure(request)
        if request.url.host == "cloudbilling.googleapis.com":
            return self.google(request)
        raise AssertionError(f"unexpected host {request.url.host}")

    def azure(self, request: httpx.Request) -> httpx.Response:
        if self.azure_status != 200:
            return httpx.Response(self.azure_status, json={"Error": "busy"})
        query = request.url.params["$filter"]
        region = re.search(r"armRegionName eq '([^']+)'", query)
        sku = re.search(r"armSkuName eq '([^']+)'", query)
        assert region and sku, query
        skip = request.url.params.get("$skip", "0")
        path = FIXTURES / "azure" / f"{region[1]}_{sku[1]}_skip{skip}.json"
        body = json.loads(path.read_text()) if path.is_file() else EMPTY_AZURE
        return httpx.Response(200, json=body)

    def google(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/services/{VERTEX_SERVICE_ID}/skus"
        if request.headers.get("X-Goog-Api-Key") != API_KEY:
            return httpx.Response(403, json={"error": {"code": 403}})
        page = 2 if request.url.params.get("pageToken") else 1
        body = json.loads(
            (FIXTURES / "google" / f"vertex_skus_page{page}.json").read_text()
        )
        return httpx.Response(200, json=body)


def stubbed_pricing() -> Iterator[Any]:
    """A boto3 pricing client whose get_products calls answer from the fixtures."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "pricing",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stubber = Stubber(client)

    def expect(region: str, fixture: str, token: str | None = None) -> None:
        params: dict[str, Any] = {
            "ServiceCode": "AmazonSageMaker",
            "Filters": [
                {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
                {
                    "Type": "TERM_MATCH",
                    "Field": "productFamily",
                    "Value": "ML Instance",
                },
            ],
            "FormatVersion": "aws_v1",
            "MaxResults": 100,
        }
        if token is not None:
            params["NextToken"] = token
        body = json.loads((FIXTURES / "aws" / fixture).read_text())
        stubber.add_response("get_products", body, params)

    # the regions of the shipped aws.csv, in sorted order; us-east-1 has two pages
    expect("eu-west-1", "empty.json")
    expect("us-east-1", "us-east-1_page1.json")
    expect("us-east-1", "us-east-1_page2.json", token="eyJ0b2tlbiI6InBhZ2UtMiJ9")
    expect("us-west-2", "empty.json")
    with stubber:
        yield client
    stubber.assert_no_pending_responses()


@pytest.fixture
def pricing_client() -> Iterator[Any]:
    yield from stubbed_pricing()


def run_refresh(
    out: Path, apis: RecordedApis, pricing_client: Any, **kw: Any
) -> RefreshReport:
    with httpx.Client(transport=httpx.MockTransport(apis)) as client:
        return refresh_catalogs(
            out_dir=out,
            catalog_dir=CATALOG_DIR,
            http_client=client,
            pricing_client=pricing_client,
            google_api_key=kw.pop("google_api_key", API_KEY),
            today=TODAY,
            **kw,
        )


def rows_of(path: Path) -> dict[tuple[str, str, str, str], PriceRow]:
    return {row.key: row for row in read_csv(path)}


def test_refresh_rewrites_catalogs_with_new_dates_and_api_sources(
    tmp_path: Path, pricing_client: Any
) -> None:
    shipped = {p.name: p.read_bytes() for p in CATALOG_DIR.glob("*.csv")}
    apis = RecordedApis()
    report = run_refresh(tmp_path, apis, pricing_client)

    assert sorted(p.name for p in report.written) == sorted(shipped)
    assert report.errors == {}
    azure = rows_of(tmp_path / "azure.csv")
    ds3 = azure[("azure", "Standard_DS3_v2", "eastus", "host")]
    # the Linux pay-as-you-go price from page 1, the Spot price from page 2
    assert (ds3.price, ds3.spot_price) == (Decimal("0.279"), Decimal("0.0558"))
    assert (ds3.retrieved, ds3.source) == (TODAY, AZURE_PRICES_URL)
    endpoint = azure[("azure", "Standard_DS3_v2", "eastus", "endpoint")]
    assert (endpoint.price, endpoint.retrieved) == (Decimal("0.279"), TODAY)
    # a row the API did not price keeps its old figure and date
    kept = azure[("azure", "Standard_DS3_v2", "westeurope", "host")]
    assert (kept.price, kept.retrieved) == (Decimal("0.344"), date(2024, 6, 1))
    assert "pricing/details/virtual-machines" in kept.source

    aws = rows_of(tmp_path / "aws.csv")
    xlarge = aws[("sagemaker", "ml.m5.xlarge", "us-east-1", "host")]
    assert (xlarge.price, xlarge.retrieved) == (Decimal("0.25"), TODAY)
    assert xlarge.source == AWS_PRICING_SOURCE
    hosting = aws[("sagemaker", "ml.m5.large", "us-east-1", "endpoint")]
    assert (hosting.price, hosting.retrieved) == (Decimal("0.115"), TODAY)
    gpu = aws[("sagemaker", "ml.p3.2xlarge", "us-east-1", "host")]
    assert gpu.retrieved == date(2024, 6, 1)
    egress = aws[("sagemaker", "internet-egress", "us-east-1", "egress")]
    assert (egress.price, egress.retrieved) == (Decimal("0.09"), date(2024, 6, 1))

    vertex = rows_of(tmp_path / "vertex.csv")
    central = vertex[
        ("vertex", "automl-tabular-training", "us-central1", "automl_node_hour")
    ]
    east = vertex[("vertex", "automl-tabular-training", "us-east1", "automl_node_hour")]
    europe = vertex[
        ("vertex", "automl-tabular-training", "europe-west4", "automl_node_hour")
    ]
    assert (central.price, east.price) == (Decimal("21.252"), Decimal("22.5"))
    assert central.source == (f"{GOOGLE_BILLING_URL}/services/{VERTEX_SERVICE_ID}/skus")
    assert europe.retrieved == date(2024, 6, 1)
    predict = vertex[("vertex", "n1-standard-4", "us-central1", "endpoint")]
    assert (predict.price, predict.retrieved) == (Decimal("0.199"), TODAY)
    # the billing rule and the notes survive the rewrite
    assert (central.billing_increment_s, central.minimum_charge_s) == (
        Decimal("3.6"),
        Decimal("3600"),
    )
    assert central.note.startswith("AutoML tabular training per node hour")

    # the installed files were not touched; local.csv is carried over row for row
    assert {p.name: p.read_bytes() for p in CATALOG_DIR.glob("*.csv")} == shipped
    carried = [vars_of(r) for r in read_csv(tmp_path / "local.csv")]
    original = [vars_of(r) for r in read_csv(CATALOG_DIR / "local.csv")]
    assert [{**r, "origin": ""} for r in carried] == [
        {**r, "origin": ""} for r in original
    ]


def vars_of(row: PriceRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in row.__slots__}


def test_refresh_report_counts_and_pages(tmp_path: Path, pricing_client: Any) -> None:
    apis = RecordedApis()
    report = run_refresh(tmp_path, apis, pricing_client)

    changed = {
        (c.provider, c.sku, c.region, c.component)
        for c in report.changes
        if c.status == "changed"
    }
    assert changed == {
        ("azure", "Standard_DS3_v2", "eastus", "host"),
        ("azure", "Standard_DS3_v2", "eastus", "endpoint"),
        ("sagemaker", "ml.m5.xlarge", "us-east-1", "host"),
        ("vertex", "automl-tabular-training", "us-east1", "automl_node_hour"),
        ("vertex", "n1-standard-4", "us-central1", "endpoint"),
    }
    # D4s_v3 (eastus), ml.m5.large and ml.m5.2xlarge (host, us-east-1), m5.large
    # endpoint, n1-standard-2 endpoint and the us-central1 node hour kept their price
    assert report.count("unchanged") == 6
    assert report.count("kept") == len(report.changes) - 11
    ds3 = next(
        c
        for c in report.changes
        if c.sku == "Standard_DS3_v2" and c.region == "eastus" and c.component == "host"
    )
    assert ds3.change_pct == Decimal("-4.78")  # 0.293 -> 0.279
    # Azure was followed to its second page through NextPageLink
    ds3_pages = [
        r.url.params.get("$skip")
        for r in apis.requests
        if "Standard_DS3_v2" in r.url.params.get("$filter", "")
        and "eastus" in r.url.params.get("$filter", "")
    ]
    assert ds3_pages == [None, "100"]
    google = [r for r in apis.requests if r.url.host == "cloudbilling.googleapis.com"]
    assert [r.url.params.get("pageToken") for r in google] == [
        None,
        "CAEQAhoICgZDN0UyLTk",
    ]


def test_refresh_keeps_rows_of_a_provider_whose_api_fails(
    tmp_path: Path, pricing_client: Any
) -> None:
    report = run_refresh(tmp_path, RecordedApis(azure_status=503), pricing_client)

    assert report.errors["azure"] == (f"{AZURE_PRICES_URL} answered HTTP 503")
    azure = read_csv(tmp_path / "azure.csv")
    shipped = read_csv(CATALOG_DIR / "azure.csv")
    assert [(r.key, r.price, r.retrieved) for r in azure] == [
        (r.key, r.price, r.retrieved) for r in shipped
    ]
    # the other providers were still refreshed
    aws = rows_of(tmp_path / "aws.csv")
    assert aws[("sagemaker", "ml.m5.xlarge", "us-east-1", "host")].retrieved == TODAY


def test_refresh_without_google_key_keeps_vertex_and_says_why(tmp_path: Path) -> None:
    report = run_refresh(
        tmp_path, RecordedApis(), None, google_api_key=None, sources=["google"]
    )
    assert report.errors == {
        "google": "no Google API key: set AUTOML_BROKER_GOOGLE_API_KEY or pass "
        "--google-api-key (a key with the Cloud Billing API enabled)"
    }
    assert all(c.status == "kept" for c in report.changes)


def test_refresh_google_key_never_logged_stored_or_in_a_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    apis = RecordedApis()
    with caplog.at_level(logging.DEBUG):
        report = run_refresh(tmp_path, apis, None, sources=["google"])

    google = [r for r in apis.requests if r.url.host == "cloudbilling.googleapis.com"]
    assert len(google) == 2
    # sent in a header, never in the URL
    assert all(r.headers["X-Goog-Api-Key"] == API_KEY for r in google)
    assert all(API_KEY not in str(r.url) for r in google)
    assert report.count("changed") == 2
    assert API_KEY not in caplog.text
    assert API_KEY not in json.dumps(report.to_dict())
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY not in path.read_text(encoding="utf-8"), path


def test_refresh_rejects_an_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown price source\(s\) \['gcp'\]"):
        refresh_catalogs(out_dir=tmp_path, sources=["gcp"])


def test_refresh_default_folder_is_the_user_data_dir_and_is_preferred(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    apis = RecordedApis()
    with httpx.Client(transport=httpx.MockTransport(apis)) as client:
        report = refresh_catalogs(sources=["azure"], http_client=client, today=TODAY)

    assert report.out_dir == tmp_path / "home" / "catalogs" == user_catalog_dir()
    assert (report.out_dir / "azure.csv").is_file()
    # load_catalog now reads the refreshed Azure file instead of the shipped one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StalePriceWarning)
        catalog = load_catalog(today=TODAY)
    row = catalog.get("azure", "Standard_DS3_v2", "eastus")
    assert row is not None and row.price == Decimal("0.279")
    assert any(s.path.endswith("home/catalogs/azure.csv") for s in catalog.sources)


def test_refresh_stale_catalog_raises_stale_price_warning(tmp_path: Path) -> None:
    stale = tmp_path / "stale.csv"
    write_csv(
        stale,
        [
            PriceRow(
                "sagemaker",
                "ml.m5.large",
                "us-east-1",
                price=Decimal("0.115"),
                retrieved=date(2020, 1, 1),
            )
        ],
    )
    with pytest.warns(
        StalePriceWarning, match=r"retrieved on 2020-01-01, 1841 days ago"
    ):
        load_catalog([stale], today=TODAY, max_age_days=180)


def test_refresh_fresh_rows_raise_no_stale_warning(
    tmp_path: Path, pricing_client: Any
) -> None:
    run_refresh(tmp_path, RecordedApis(), pricing_client)
    fresh = [r for r in read_csv(tmp_path / "aws.csv") if r.retrieved == TODAY]
    write_csv(tmp_path / "fresh" / "aws.csv", fresh)

    with warnings.catch_warnings():
        warnings.simplefilter("error", StalePriceWarning)
        catalog = load_catalog([tmp_path / "fresh" / "aws.csv"], today=TODAY)
    assert len(catalog) == 4
    # a refreshed file that kept old rows is still as old as its oldest row
    with pytest.warns(StalePriceWarning, match="retrieved on 2024-06-01"):
        load_catalog([tmp_path / "aws.csv"], today=TODAY, max_age_days=180)
