"""Refresh the price catalogs from the providers' public price interfaces.

Three sources, each read with a client the caller may inject (tests pass recorded
responses through an ``httpx.MockTransport`` or a botocore ``Stubber``; nothing here
opens a connection by itself):

- **Azure Retail Prices API** (``GET https://prices.azure.com/api/retail/prices``, no
  key): one filtered query per VM size and region, following ``NextPageLink``. The
  pay-as-you-go Linux price goes to ``price``, the Spot price to ``spot_price``; Azure
  ML endpoints bill at the VM price, so endpoint rows take it too.
- **AWS Price List API** (boto3 ``pricing`` client, ``get_products`` paginated by
  ``NextToken``): one query per region for SageMaker ML instances; component
  ``Training`` prices host rows, ``Hosting`` prices endpoint rows.
- **Google Cloud Billing Catalog API** (``GET
  https://cloudbilling.googleapis.com/v1/services/{id}/skus``, paged by ``pageToken``)
  with an API key sent in the ``X-Goog-Api-Key`` header, so it never appears in a URL,
  a log line or a file.

Rows a source does not price (storage, egress, the local machine, a SKU the API did not
return, a provider whose API failed) are kept as they were, with their old retrieval
date, and listed as ``kept`` in the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from broker.errors import BrokerError
from cost_models.catalog import (
    CATALOG_DIR,
    PriceRow,
    RowKey,
    read_csv,
    user_catalog_dir,
    write_csv,
)

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

AZURE_PRICES_URL = "https://prices.azure.com/api/retail/prices"
GOOGLE_BILLING_URL = "https://cloudbilling.googleapis.com/v1"
VERTEX_SERVICE_ID = "C7E2-9256-1C43"  # "Vertex AI" in the Cloud Billing Catalog
AWS_PRICING_REGION = "us-east-1"  # the Price List API answers from here
AWS_PRICING_SOURCE = "https://api.pricing.us-east-1.amazonaws.com (GetProducts)"
GOOGLE_KEY_ENV = "AUTOML_BROKER_GOOGLE_API_KEY"
SOURCES = ("azure", "aws", "google")
# Catalog provider names each source prices.
SOURCE_PROVIDERS = {"azure": "azure", "aws": "sagemaker", "google": "vertex"}
MAX_PAGES = 200  # a paging loop that never ends is a broken API, not a big catalog

# TODO(vertex-sku-match): Vertex rows are matched to Billing Catalog SKUs by words in
# the SKU description and by region; check the phrases against the live catalog when
# Google renames SKUs.
VERTEX_TRAINING_WORDS = ("automl", "tabular", "training")
VERTEX_ENDPOINT_WORDS = ("prediction",)
# TODO(h2o-ec2-refresh): the h2o ec2:* rows (EC2 prices) are not refreshed yet; they
# are kept with their old date.

Status = Literal["changed", "unchanged", "kept"]


class RefreshError(BrokerError):
    """A price interface could not be read; its provider's rows were kept."""


@dataclass(frozen=True)
class Fetched:
    """A price read from an API for one catalog row."""

    price: Decimal
    source: str
    spot_price: Decimal | None = None


@dataclass(frozen=True)
class PriceChange:
    """What the refresh did to one catalog row."""

    provider: str
    sku: str
    region: str
    component: str
    old_price: Decimal | None
    new_price: Decimal | None
    old_retrieved: date | None
    retrieved: date | None
    status: Status

    @property
    def change_pct(self) -> Decimal | None:
        """The price change in percent, to two places; None without both prices."""
        if self.old_price is None or self.new_price is None or self.old_price == 0:
            return None
        pct = (self.new_price - self.old_price) / self.old_price * 100
        return pct.quantize(Decimal("0.01"))


@dataclass
class RefreshReport:
    """The outcome of a refresh: one change per catalog row, files written, errors."""

    out_dir: Path
    changes: list[PriceChange] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def count(self, status: Status) -> int:
        return sum(1 for c in self.changes if c.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "written": [str(p) for p in self.written],
            "errors": dict(self.errors),
            "changes": [
                {
                    "provider": c.provider,
                    "sku": c.sku,
                    "region": c.region,
                    "component": c.component,
                    "old_price": None if c.old_price is None else str(c.old_price),
                    "new_price": None if c.new_price is None else str(c.new_price),
                    "old_retrieved": _iso(c.old_retrieved),
                    "retrieved": _iso(c.retrieved),
                    "status": c.status,
                    "change_pct": None if c.change_pct is None else str(c.change_pct),
                }
                for c in self.changes
            ],
        }


Fetcher = Callable[[list[PriceRow]], dict[RowKey, Fetched]]


def refresh_catalogs(
    *,
    out_dir: str | Path | None = None,
    catalog_dir: str | Path | None = None,
    sources: Iterable[str] = SOURCES,
    http_client: httpx.Client | None = None,
    pricing_client: Any = None,
    google_api_key: str | None = None,
    today: date | None = None,
    azure_url: str = AZURE_PRICES_URL,
    google_url: str = GOOGLE_BILLING_URL,
) -> RefreshReport:
    """Fetch current prices and write refreshed catalog CSVs into `out_dir`.

    Args:
        out_dir: where to write; :func:`~cost_models.catalog.user_catalog_dir` when
            None. Pass :data:`~cost_models.catalog.CATALOG_DIR` to rewrite the
            installed files in place.
        catalog_dir: the catalogs to start from: the refreshed copies in `out_dir`
            where present, else the shipped ones, when None.
        sources: which of ``azure``, ``aws``, ``google`` to query.
        http_client: the httpx client for Azure and Google (tests inject one with a
            ``MockTransport``); a new one with a 30 s timeout when None.
        pricing_client: a boto3 ``pricing`` client; one for us-east-1 when None.
        google_api_key: the Cloud Billing API key; without one Google is skipped.
        today: the retrieval date written on refreshed rows.
        azure_url: the Retail Prices endpoint.
        google_url: the Cloud Billing API root.

    Returns:
        The report: a change per row, the files written and each source's error.

    Raises:
        ValueError: an unknown source name.
    """
    wanted = list(sources)
    unknown = sorted(set(wanted) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown price source(s) {unknown}; choose from {SOURCES}")
    out = Path(out_dir) if out_dir is not None else user_catalog_dir()
    files = _input_files(out, catalog_dir)
    today = today or date.today()
    rows_by_file = {path: read_csv(path) for path in files}
    all_rows = [row for rows in rows_by_file.values() for row in rows]

    owns_client = http_client is None and any(s in wanted for s in ("azure", "google"))
    client = _http_client() if owns_client else http_client
    fetched: dict[RowKey, Fetched] = {}
    report = RefreshReport(out_dir=out)
    try:
        fetchers: dict[str, Fetcher] = {
            "azure": lambda rows: fetch_azure(rows, client, url=azure_url),
            "aws": lambda rows: fetch_aws(rows, pricing_client),
            "google": lambda rows: fetch_google(
                rows, client, api_key=google_api_key, url=google_url
            ),
        }
        for name in wanted:
            provider = SOURCE_PROVIDERS[name]
            rows = [r for r in all_rows if r.provider == provider]
            if not rows:
                continue
            try:
                found = fetchers[name](rows)
            except RefreshError as exc:
                report.errors[name] = str(exc)
                logger.warning("price refresh: %s kept as it was: %s", name, exc)
                continue
            fetched.update(found)
            logger.info(
                "price refresh: %s priced %d of %d rows", name, len(found), len(rows)
            )
    finally:
        if owns_client and client is not None:
            client.close()

    for path, rows in rows_by_file.items():
        new_rows = []
        for row in rows:
            new_row, change = _refreshed(row, fetched.get(row.key), today)
            new_rows.append(new_row)
            report.changes.append(change)
        target = out / path.name
        write_csv(target, new_rows)
        report.written.append(target)
    return report


# --- Azure -----------------------------------------------------------------------------


def fetch_azure(
    rows: list[PriceRow], client: httpx.Client | None, *, url: str = AZURE_PRICES_URL
) -> dict[RowKey, Fetched]:
    """Prices for Azure rows from the Retail Prices API, one query per VM and region."""
    if client is None:
        raise RefreshError("no HTTP client for the Azure Retail Prices API")
    found: dict[RowKey, Fetched] = {}
    priced = {(r.sku, r.region) for r in rows if r.component in ("host", "endpoint")}
    for sku, region in sorted(priced):
        query = (
            "serviceName eq 'Virtual Machines' and priceType eq 'Consumption' "
            f"and armRegionName eq '{region}' and armSkuName eq '{sku}'"
        )
        items = _azure_items(client, url, query)
        price, spot = _azure_linux_prices(items, sku, region)
        if price is None:
            logger.info("azure: no Linux pay-as-you-go price for %s in %s", sku, region)
            continue
        for row in rows:
            if (row.sku, row.region) == (sku, region):
                found[row.key] = Fetched(price, url, spot)
    return found


def _azure_items(client: httpx.Client, url: str, query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    page = _get_json(client, url, params={"$filter": query, "currencyCode": "USD"})
    for _ in range(MAX_PAGES):
        items.extend(page.get("Items") or [])
        link = page.get("NextPageLink")
        if not link:
            return items
        page = _get_json(client, link)
    raise RefreshError(f"Azure Retail Prices API kept paging past {MAX_PAGES} pages")


def _azure_linux_prices(
    items: list[dict[str, Any]], sku: str, region: str
) -> tuple[Decimal | None, Decimal | None]:
    price: Decimal | None = None
    spot: Decimal | None = None
    for item in items:
        if item.get("armSkuName") != sku or item.get("armRegionName") != region:
            continue
        if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
            continue
        if "windows" in str(item.get("productName", "")).lower():
            continue
        name = str(item.get("skuName", "")).lower()
        value = _decimal(item.get("retailPrice"), "retailPrice")
        if "low priority" in name:
            continue
        if "spot" in name:
            spot = value
        else:
            price = value
    return price, spot


# --- AWS -------------------------------------------------------------------------------


def fetch_aws(rows: list[PriceRow], client: Any) -> dict[RowKey, Fetched]:
    """Prices for SageMaker rows from the Price List API, one query per region."""
    if client is None:
        client = _pricing_client()
    found: dict[RowKey, Fetched] = {}
    wanted = {r.key: r for r in rows if r.component in ("host", "endpoint")}
    for region in sorted({r.region for r in wanted.values()}):
        for product in _aws_products(client, region):
            attributes = product.get("product", {}).get("attributes", {})
            component = {"Training": "host", "Hosting": "endpoint"}.get(
                attributes.get("component", "")
            )
            key = ("sagemaker", attributes.get("instanceName", ""), region, component)
            if component is None or key not in wanted:
                continue
            price = _aws_on_demand_hourly(product)
            if price is not None:
                found[key] = Fetched(price, AWS_PRICING_SOURCE)  # type: ignore[index]
    return found


def _aws_products(client: Any, region: str) -> Iterable[dict[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError

    filters = [
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
        {"Type": "TERM_MATCH", "Field": "productFamily", "Value": "ML Instance"},
    ]
    paginator = client.get_paginator("get_products")
    try:
        for page in paginator.paginate(
            ServiceCode="AmazonSageMaker",
            Filters=filters,
            FormatVersion="aws_v1",
            PaginationConfig={"PageSize": 100},
        ):
            for text in page.get("PriceList", []):
                yield json.loads(text) if isinstance(text, str) else text
    except (BotoCoreError, ClientError) as exc:
        raise RefreshError(
            f"AWS Price List API failed for {region}: {type(exc).__name__}: {exc}"
        ) from None


def _aws_on_demand_hourly(product: Mapping[str, Any]) -> Decimal | None:
    for term in (product.get("terms", {}).get("OnDemand") or {}).values():
        for dimension in (term.get("priceDimensions") or {}).values():
            if dimension.get("unit") not in ("Hrs", "Hours", "hour"):
                continue
            usd = (dimension.get("pricePerUnit") or {}).get("USD")
            if usd is not None:
                return _decimal(usd, "pricePerUnit.USD").normalize()
    return None


def _pricing_client() -> Any:
    try:
        import boto3
    except ImportError:
        raise RefreshError(
            "boto3 is not installed; install automl-broker[aws] to refresh AWS prices"
        ) from None
    return boto3.client("pricing", region_name=AWS_PRICING_REGION)


# --- Google ----------------------------------------------------------------------------


def fetch_google(
    rows: list[PriceRow],
    client: httpx.Client | None,
    *,
    api_key: str | None,
    url: str = GOOGLE_BILLING_URL,
) -> dict[RowKey, Fetched]:
    """Prices for Vertex rows from the Cloud Billing Catalog API."""
    if not api_key:
        raise RefreshError(
            f"no Google API key: set {GOOGLE_KEY_ENV} or pass --google-api-key "
            "(a key with the Cloud Billing API enabled)"
        )
    if client is None:
        raise RefreshError("no HTTP client for the Cloud Billing Catalog API")
    endpoint = f"{url.rstrip('/')}/services/{VERTEX_SERVICE_ID}/skus"
    skus = _google_skus(client, endpoint, api_key)

    found: dict[RowKey, Fetched] = {}
    for row in rows:
        words = _vertex_words(row)
        if words is None:
            continue
        for sku in skus:
            text = str(sku.get("description", "")).lower()
            regions = sku.get("serviceRegions") or []
            if row.region in regions and all(w in text for w in words):
                price = _google_hourly(sku)
                if price is not None:
                    found[row.key] = Fetched(price, endpoint)
                    break
    return found


def _google_skus(
    client: httpx.Client, endpoint: str, api_key: str
) -> list[dict[str, Any]]:
    skus: list[dict[str, Any]] = []
    params: dict[str, str] = {"currencyCode": "USD", "pageSize": "5000"}
    headers = {"X-Goog-Api-Key": api_key}
    for _ in range(MAX_PAGES):
        page = _get_json(client, endpoint, params=params, headers=headers)
        skus.extend(page.get("skus") or [])
        token = page.get("nextPageToken")
        if not token:
            return skus
        params = {**params, "pageToken": token}
    raise RefreshError(f"Cloud Billing Catalog API kept paging past {MAX_PAGES} pages")


def _vertex_words(row: PriceRow) -> tuple[str, ...] | None:
    if row.component == "automl_node_hour":
        return VERTEX_TRAINING_WORDS
    if row.component == "endpoint":
        return (*VERTEX_ENDPOINT_WORDS, row.sku.lower())
    return None


def _google_hourly(sku: Mapping[str, Any]) -> Decimal | None:
    infos = sku.get("pricingInfo") or []
    if not infos:
        return None
    expression = infos[-1].get("pricingExpression") or {}
    per_unit = {"h": Decimal(1), "min": Decimal(60), "s": Decimal(3600)}
    factor = per_unit.get(expression.get("usageUnit", ""))
    if factor is None:
        return None
    tiers = sorted(
        expression.get("tieredRates") or [],
        key=lambda t: Decimal(str(t.get("startUsageAmount", 0))),
    )
    for tier in tiers:
        money = tier.get("unitPrice") or {}
        price = Decimal(str(money.get("units") or 0)) + Decimal(
            int(money.get("nanos") or 0)
        ) / Decimal(10**9)
        if price > 0:  # a free first tier is not the list price
            return (price * factor).normalize()
    return None


# --- shared ----------------------------------------------------------------------------


def _input_files(out: Path, catalog_dir: str | Path | None) -> list[Path]:
    if catalog_dir is not None:
        files = sorted(Path(catalog_dir).glob("*.csv"))
        if not files:
            raise ValueError(f"no catalog CSV files in {str(catalog_dir)!r}")
        return files
    files = []
    for shipped in sorted(CATALOG_DIR.glob("*.csv")):
        copy = out / shipped.name
        files.append(copy if copy.is_file() else shipped)
    return files


def _refreshed(
    row: PriceRow, fetched: Fetched | None, today: date
) -> tuple[PriceRow, PriceChange]:
    if fetched is None:
        return row, _change(row, row.price, row.retrieved, "kept")
    status: Status = "unchanged" if fetched.price == row.price else "changed"
    new_row = replace(
        row,
        price=fetched.price,
        spot_price=fetched.spot_price
        if fetched.spot_price is not None
        else row.spot_price,
        source=fetched.source,
        retrieved=today,
    )
    return new_row, _change(row, fetched.price, today, status)


def _change(
    row: PriceRow, new_price: Decimal | None, retrieved: date | None, status: Status
) -> PriceChange:
    return PriceChange(
        provider=row.provider,
        sku=row.sku,
        region=row.region,
        component=row.component,
        old_price=row.price,
        new_price=new_price,
        old_retrieved=row.retrieved,
        retrieved=retrieved,
        status=status,
    )


def _http_client() -> httpx.Client:
    import httpx

    return httpx.Client(timeout=30.0, follow_redirects=False)


def _get_json(
    client: httpx.Client,
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    import httpx

    try:
        response = client.get(url, params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise RefreshError(
            f"cannot reach {_public(url)}: {type(exc).__name__}"
        ) from None
    if response.status_code != 200:
        raise RefreshError(
            f"{_public(url)} answered HTTP {response.status_code}"
            + (": check the API key" if response.status_code in (400, 403) else "")
        )
    try:
        payload = response.json(parse_float=Decimal)
    except ValueError:
        raise RefreshError(f"{_public(url)} did not answer JSON") from None
    if not isinstance(payload, dict):
        raise RefreshError(
            f"{_public(url)} answered {type(payload).__name__}, not an object"
        )
    return payload


def _public(url: str) -> str:
    """The URL without its query string, which may carry filters or tokens."""
    return url.split("?", 1)[0]


def _decimal(value: Any, what: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise RefreshError(f"price field {what} is not a number: {value!r}") from None
    if not number.is_finite() or number < 0:
        raise RefreshError(f"price field {what} is not a price: {value!r}")
    return number


def _iso(value: date | None) -> str | None:
    return None if value is None else value.isoformat()
