"""Price catalogs: list prices per provider, SKU, region and component, read from CSV.

A catalog is a set of :class:`PriceRow` objects. The shipped files live in
``cost_models/catalogs/`` (one per provider: ``vertex.csv``, ``azure.csv``, ``aws.csv``,
``local.csv``), each row with the public pricing page it came from and the date it was
read. A user override file (CSV or YAML, given by path or by ``AUTOML_BROKER_PRICES``)
wins over shipped rows; rows it touches are marked ``user_supplied``.

Missing prices are never free: an empty or NaN price, or 0.0 for a cloud SKU, reads as
"no price", and the planner leaves such a SKU out with a
:class:`~broker.errors.PriceMissingWarning`. Local rows (your own machine) carry no list
price; they are priced from the local rate the user sets for power and amortisation.

CSV columns, in order: ``provider, sku, region, component, unit, price, currency,
billing_increment_s, minimum_charge_s, spot_price, memory_gib, vcpus, gpus, source,
retrieved, note``. ``component`` is one of host, accelerator, automl_node_hour,
endpoint, storage, egress; ``unit`` one of hour, second, gib_month, gib.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from broker.errors import ConfigurationError, StalePriceWarning
from cost_models.billing import SECONDS_PER_HOUR, BillingRule, rule_for

logger = logging.getLogger(__name__)

# The shipped figures are list prices as published around their `retrieved` date;
# `automl-broker pricing refresh` (cost_models.refresh) fetches current ones into
# user_catalog_dir(), which load_catalog() then prefers file by file.
CATALOG_DIR = Path(__file__).resolve().parent / "catalogs"
PRICES_ENV = "AUTOML_BROKER_PRICES"
HOME_ENV = "AUTOML_BROKER_HOME"
MAX_AGE_ENV = "AUTOML_BROKER_PRICE_MAX_AGE_DAYS"
DEFAULT_MAX_AGE_DAYS = 180
LOCAL_REGION = "local"

COMPONENTS = (
    "host",
    "accelerator",
    "automl_node_hour",
    "endpoint",
    "storage",
    "egress",
)
TRAINING_COMPONENTS = ("host", "automl_node_hour")
UNITS = ("hour", "second", "gib_month", "gib")
COLUMNS = (
    "provider",
    "sku",
    "region",
    "component",
    "unit",
    "price",
    "currency",
    "billing_increment_s",
    "minimum_charge_s",
    "spot_price",
    "memory_gib",
    "vcpus",
    "gpus",
    "source",
    "retrieved",
    "note",
)
# The providers a price row may name; the same five as broker.spec.PROVIDER_NAMES
# (cost_models imports nothing from broker but its errors; a test keeps them equal).
PROVIDERS = ("vertex", "azure", "sagemaker", "h2o", "local")
# No machine costs more than this per hour: a larger price is a typo or a wrong unit.
MAX_USD_PER_HOUR = Decimal(100_000)
# The same ceiling for storage and egress, per GiB-month or GiB.
MAX_USD_PER_GIB = Decimal(100_000)
_MISSING_TEXT = {"", "nan", "none", "null", "n/a", "na", "-"}

RowKey = tuple[str, str, str, str]  # provider, sku, region, component


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One list price.

    `price` is in `currency` per `unit` (an hour, a second, a GiB-month or a GiB), or
    None when the catalog has no figure. Read prices through :attr:`usable_price`,
    which also treats 0.0 for a cloud SKU as missing.
    """

    provider: str
    sku: str
    region: str
    component: str = "host"
    unit: str = "hour"
    price: Decimal | None = None
    currency: str = "USD"
    billing_increment_s: Decimal | None = None
    minimum_charge_s: Decimal | None = None
    spot_price: Decimal | None = None
    memory_gib: float | None = None
    vcpus: int | None = None
    gpus: int = 0
    source: str = ""
    retrieved: date | None = None
    note: str = ""
    user_supplied: bool = False
    origin: str = ""  # the file the row was read from, or "memory"

    @property
    def key(self) -> RowKey:
        return (self.provider, self.sku, self.region, self.component)

    @property
    def is_local(self) -> bool:
        """True for the user's own machine, priced from the local rate."""
        return self.region == LOCAL_REGION or self.provider == "local"

    @property
    def usable_price(self) -> Decimal | None:
        """The price, or None when it is missing (empty, NaN, or 0.0 on a cloud SKU)."""
        if self.price is None or self.price.is_nan():
            return None
        if self.price == 0 and not self.is_local:
            return None
        return self.price

    @property
    def usd_per_hour(self) -> Decimal | None:
        """The usable price of one hour, for time-billed rows."""
        price = self.usable_price
        if price is None or self.unit not in ("hour", "second"):
            return None
        return price * SECONDS_PER_HOUR if self.unit == "second" else price

    @property
    def billing_rule(self) -> BillingRule:
        """The row's rounding, falling back to the provider's usual rule."""
        default = rule_for(self.provider)
        return BillingRule(
            increment_s=self.billing_increment_s or default.increment_s,
            minimum_s=(
                default.minimum_s
                if self.minimum_charge_s is None
                else self.minimum_charge_s
            ),
        )

    @property
    def is_training(self) -> bool:
        return self.component in TRAINING_COMPONENTS


@dataclass(frozen=True)
class CatalogSource:
    """A file that rows came from, with the oldest retrieval date among its rows."""

    path: str
    retrieved: date | None
    rows: int
    user_supplied: bool = False


@dataclass
class Catalog:
    """A set of price rows, indexed by key and by provider and region."""

    rows: list[PriceRow]
    sources: list[CatalogSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_key: dict[RowKey, PriceRow] = {}
        self._endpoints: dict[tuple[str, str], list[PriceRow]] = {}
        for row in self.rows:
            self._by_key[row.key] = row
            if row.component == "endpoint":
                self._endpoints.setdefault((row.provider, row.region), []).append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[PriceRow]:
        return iter(self.rows)

    @classmethod
    def from_rows(cls, rows: Iterable[PriceRow | Mapping[str, Any]]) -> Catalog:
        """A catalog built in memory; mappings are parsed like CSV cells."""
        parsed = [
            row if isinstance(row, PriceRow) else parse_row(row, origin="memory")
            for row in rows
        ]
        return cls(parsed, [CatalogSource("memory", None, len(parsed))])

    def get(
        self, provider: str, sku: str, region: str, component: str = "host"
    ) -> PriceRow | None:
        return self._by_key.get((provider, sku, region, component))

    def training_rows(self) -> list[PriceRow]:
        return [row for row in self.rows if row.is_training]

    def endpoint_rows(self, provider: str, region: str) -> list[PriceRow]:
        return self._endpoints.get((provider, region), [])

    def regions_of(self, provider: str, sku: str) -> list[str]:
        """The regions where `sku` has a training row."""
        return sorted(
            {r.region for r in self.rows if r.provider == provider and r.sku == sku}
        )

    def with_overrides(self, overrides: Iterable[PriceRow]) -> Catalog:
        """A new catalog where each override replaces the shipped row with its key.

        Cells the override leaves empty keep the shipped value; the merged row is marked
        ``user_supplied``. An override with a key not shipped is added as it is.
        """
        merged = dict(self._by_key)
        for override in overrides:
            shipped = merged.get(override.key)
            merged[override.key] = _merge(shipped, override)
        return Catalog(list(merged.values()), list(self.sources))


def load_catalog(
    paths: Iterable[str | Path] | None = None,
    *,
    override: str | Path | None = None,
    max_age_days: int | None = None,
    today: date | None = None,
    env: Mapping[str, str] | None = None,
) -> Catalog:
    """Read the shipped catalogs (or `paths`) and apply the user's override file.

    Args:
        paths: CSV files to read; when None, the shipped ``catalogs/*.csv``, each
            replaced by its refreshed copy in :func:`user_catalog_dir` if there is one.
        override: a CSV or YAML file of user prices; ``AUTOML_BROKER_PRICES`` when None.
        max_age_days: warn about files older than this;
            ``AUTOML_BROKER_PRICE_MAX_AGE_DAYS`` or 180 when None.
        today: the date to age files against (tests pass a fixed one).
        env: the environment to read the two variables from.

    Returns:
        The merged catalog.

    Raises:
        ConfigurationError: a file cannot be read, or a cell holds a value that is not a
            price, a date or a known component.

    Warns:
        StalePriceWarning: for each file whose oldest row is older than `max_age_days`.
    """
    env = os.environ if env is None else env
    files = default_catalog_files(env) if paths is None else list(paths)
    max_age = _max_age(max_age_days, env)
    today = today or date.today()

    rows: list[PriceRow] = []
    sources: list[CatalogSource] = []
    for path in files:
        file_rows = read_csv(path)
        rows.extend(file_rows)
        sources.append(_source_of(str(path), file_rows))
    _warn_if_stale(sources, max_age, today)
    catalog = _fill_this_machine(Catalog(rows, sources))

    override = override or env.get(PRICES_ENV) or None
    if override is not None:
        user_rows = read_overrides(override)
        catalog = catalog.with_overrides(user_rows)
        catalog.sources.append(
            CatalogSource(str(override), None, len(user_rows), user_supplied=True)
        )
        logger.info("applied %d user price rows from %s", len(user_rows), override)
    return catalog


def default_catalog_files(env: Mapping[str, str] | None = None) -> list[Path]:
    """The shipped catalog files, each replaced by its refreshed copy when the user ran
    ``automl-broker pricing refresh`` into :func:`user_catalog_dir`."""
    refreshed = user_catalog_dir(env)
    files = []
    for shipped in sorted(CATALOG_DIR.glob("*.csv")):
        copy = refreshed / shipped.name
        files.append(copy if copy.is_file() else shipped)
    return files


def read_csv(path: str | Path, *, user_supplied: bool = False) -> list[PriceRow]:
    """Parse one catalog CSV file into rows."""
    path = Path(path)
    try:
        # utf-8-sig: spreadsheet programs save "CSV UTF-8" with a byte-order mark,
        # which would otherwise become part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            records = list(csv.DictReader(handle))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read price catalog {str(path)!r}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"price catalog {str(path)!r} is not UTF-8 text (byte "
            f"{exc.object[exc.start : exc.start + 1].hex()} at offset {exc.start}); "
            "save it as CSV UTF-8"
        ) from None
    return [
        parse_row(record, origin=f"{path}:{line}", user_supplied=user_supplied)
        for line, record in enumerate(records, start=2)
    ]


def write_csv(path: str | Path, rows: Iterable[PriceRow]) -> None:
    """Write `rows` as a catalog CSV file with the columns of :data:`COLUMNS`.

    The file is written next to its final name and moved into place, so a reader never
    sees half a catalog.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(row_cells(row))
    partial.replace(path)


def row_cells(row: PriceRow) -> list[str]:
    """The CSV cells of one row, in the order of :data:`COLUMNS`."""
    return [
        row.provider,
        row.sku,
        row.region,
        row.component,
        row.unit,
        _cell(row.price),
        row.currency,
        _cell(row.billing_increment_s),
        _cell(row.minimum_charge_s),
        _cell(row.spot_price),
        "" if row.memory_gib is None else f"{row.memory_gib:g}",
        "" if row.vcpus is None else str(row.vcpus),
        str(row.gpus),
        row.source,
        "" if row.retrieved is None else row.retrieved.isoformat(),
        row.note,
    ]


def user_catalog_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where ``automl-broker pricing refresh`` writes refreshed catalogs by default.

    ``$AUTOML_BROKER_HOME/catalogs`` when that variable is set, else
    ``<user data dir>/automl-broker/catalogs``; never the installed package folder.
    """
    env = os.environ if env is None else env
    home = env.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser() / "catalogs"
    import platformdirs

    return (
        Path(platformdirs.user_data_dir("automl-broker", appauthor=False)) / "catalogs"
    )


def read_overrides(path: str | Path) -> list[PriceRow]:
    """Parse a user's price file: CSV with catalog columns, or YAML.

    YAML holds a list of mappings with the CSV's column names, or a mapping with such a
    list under ``prices``. Only provider, sku and region are required; empty cells keep
    the shipped values.
    """
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        return read_csv(path, user_supplied=True)

    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read price file {str(path)!r}: {exc.strerror or exc}; "
            f"check the path given in {PRICES_ENV} or the prices option"
        ) from None
    except yaml.YAMLError as exc:  # PyYAML's message quotes the line, secrets too
        from broker.redact import describe_yaml_error

        raise ConfigurationError(
            f"price file {str(path)!r} is not valid YAML: {describe_yaml_error(exc)}"
        ) from None
    if isinstance(raw, dict):
        raw = raw.get("prices")
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigurationError(
            f"price file {str(path)!r} must hold a list of price mappings "
            "(or a 'prices:' key with such a list)"
        )
    return [
        parse_row(record, origin=f"{path}#{index}", user_supplied=True)
        for index, record in enumerate(raw, start=1)
    ]


def parse_row(
    record: Mapping[str, Any], *, origin: str, user_supplied: bool = False
) -> PriceRow:
    """One row from a mapping of column name to cell (a CSV record or a YAML item)."""
    cells = {str(k).strip(): v for k, v in record.items() if k is not None}
    for required in ("provider", "sku", "region"):
        if _blank(cells.get(required)):
            raise ConfigurationError(
                f"price row {origin} has no {required!r}; every row needs "
                "provider, sku and region"
            )
    provider = _text(cells["provider"]).lower()
    if provider not in PROVIDERS:
        raise ConfigurationError(
            f"price row {origin}: unknown provider {_text(cells['provider'])!r}; "
            f"choose from {list(PROVIDERS)}"
        )
    component = _text(cells.get("component")) or "host"
    unit = _text(cells.get("unit")) or "hour"
    if component not in COMPONENTS:
        raise ConfigurationError(
            f"price row {origin}: unknown component {component!r}; "
            f"choose from {list(COMPONENTS)}"
        )
    if unit not in UNITS:
        raise ConfigurationError(
            f"price row {origin}: unknown unit {unit!r}; choose from {list(UNITS)}"
        )
    currency = (_text(cells.get("currency")) or "USD").upper()
    if currency != "USD":
        # Budgets, the ledger and the ranking are in US dollars; a row in another
        # currency would be compared as if it were dollars.
        raise ConfigurationError(
            f"price row {origin}: currency {currency!r} is not supported; plans, "
            "budgets and the spend ledger are in USD: convert the price to USD and "
            "note the exchange rate and its date in the row's 'note'"
        )

    price = _decimal(cells.get("price"), "price", origin)
    spot_price = _decimal(cells.get("spot_price"), "spot_price", origin)
    _check_ceiling(price, cells.get("price"), "price", unit, origin)
    _check_ceiling(spot_price, cells.get("spot_price"), "spot_price", unit, origin)

    return PriceRow(
        provider=provider,
        sku=_text(cells["sku"]),
        region=_text(cells["region"]),
        component=component,
        unit=unit,
        price=price,
        currency=currency,
        billing_increment_s=_decimal(
            cells.get("billing_increment_s"), "billing_increment_s", origin
        ),
        minimum_charge_s=_decimal(
            cells.get("minimum_charge_s"), "minimum_charge_s", origin
        ),
        spot_price=spot_price,
        memory_gib=_number(cells.get("memory_gib"), "memory_gib", origin),
        vcpus=_integer(cells.get("vcpus"), "vcpus", origin),
        gpus=_integer(cells.get("gpus"), "gpus", origin) or 0,
        source=_text(cells.get("source")),
        retrieved=_date(cells.get("retrieved"), origin),
        note=_text(cells.get("note")),
        user_supplied=user_supplied,
        origin=origin,
    )


def this_machine() -> tuple[float | None, int | None]:
    """Memory (GiB) and CPU count of the machine the broker runs on, if the OS says."""
    # TODO(local-gpu): local rows ship with gpus=0; finding a GPU without importing
    # torch or probing drivers is not done yet, so gpu=true rules the local machine out.
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        memory_gib: float | None = round(pages * page_size / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        memory_gib = None
    return memory_gib, os.cpu_count()


# --- helpers --------------------------------------------------------------------------


def _merge(shipped: PriceRow | None, override: PriceRow) -> PriceRow:
    if shipped is None:
        return override
    changes: dict[str, Any] = {"user_supplied": True, "origin": override.origin}
    for name in (
        "unit",
        "price",
        "currency",
        "billing_increment_s",
        "minimum_charge_s",
        "spot_price",
        "memory_gib",
        "vcpus",
        "source",
        "retrieved",
        "note",
    ):
        value = getattr(override, name)
        if value not in (None, ""):
            changes[name] = value
    if override.gpus:
        changes["gpus"] = override.gpus
    return replace(shipped, **changes)


def _fill_this_machine(catalog: Catalog) -> Catalog:
    """Local rows without a memory figure get this machine's memory and CPU count."""
    if not any(r.is_local and r.memory_gib is None for r in catalog.rows):
        return catalog
    memory_gib, vcpus = this_machine()
    rows = [
        replace(r, memory_gib=memory_gib, vcpus=r.vcpus or vcpus)
        if r.is_local and r.memory_gib is None
        else r
        for r in catalog.rows
    ]
    return Catalog(rows, catalog.sources)


def _source_of(path: str, rows: list[PriceRow]) -> CatalogSource:
    dates = [r.retrieved for r in rows if r.retrieved is not None]
    return CatalogSource(path, min(dates) if dates else None, len(rows))


def _warn_if_stale(
    sources: list[CatalogSource], max_age_days: int, today: date
) -> None:
    """One warning naming every catalog file older than `max_age_days`, files of one
    date together."""
    by_date: dict[date, list[str]] = {}
    for source in sources:
        age = None if source.retrieved is None else (today - source.retrieved).days
        if source.retrieved is not None and age is not None and age > max_age_days:
            by_date.setdefault(source.retrieved, []).append(source.path)
    if not by_date:
        return
    parts = []
    for retrieved, paths in sorted(by_date.items()):
        if len(paths) == 1:
            names = f"{paths[0]} was"
        else:
            folder = os.path.commonpath([str(Path(p).parent) for p in paths])
            names = f"{', '.join(Path(p).name for p in paths)} (in {folder}) were"
        parts.append(
            f"{names} retrieved on {retrieved.isoformat()}, "
            f"{(today - retrieved).days} days ago"
        )
    warnings.warn(
        f"price catalog {'; '.join(parts)} (more than {max_age_days}); estimates may "
        f"be off: run `automl-broker pricing refresh`, supply current prices with "
        f"{PRICES_ENV}=FILE, or raise {MAX_AGE_ENV}",
        StalePriceWarning,
        stacklevel=3,
    )


def _max_age(max_age_days: int | None, env: Mapping[str, str]) -> int:
    if max_age_days is not None:
        return max_age_days
    text = env.get(MAX_AGE_ENV)
    if not text:
        return DEFAULT_MAX_AGE_DAYS
    try:
        days = int(text)
    except ValueError:
        days = -1
    if days < 0:
        raise ConfigurationError(
            f"{MAX_AGE_ENV}={text!r} is not a whole number of days of 0 or more; set "
            "it to e.g. 180"
        )
    return days


def _cell(value: Decimal | None) -> str:
    return "" if value is None else f"{value:f}"


def _blank(value: Any) -> bool:
    return value is None or str(value).strip().lower() in _MISSING_TEXT


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _decimal(value: Any, column: str, origin: str) -> Decimal | None:
    if _blank(value):
        return None
    text = str(value).strip().lstrip("$")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ConfigurationError(
            f"price row {origin}: {column} {str(value)!r} is not a number; "
            "write a decimal such as 0.25, or leave the cell empty when unknown"
        ) from None
    if number.is_nan():
        return None
    if number.is_infinite() or not math.isfinite(float(number)):
        raise ConfigurationError(
            f"price row {origin}: {column} {str(value)!r} is not a finite number; "
            "write a decimal such as 0.25, or leave the cell empty when unknown"
        )
    if number < 0:
        raise ConfigurationError(
            f"price row {origin}: {column} {str(value)!r} must be zero or more"
        )
    return number


def _check_ceiling(
    price: Decimal | None, cell: Any, column: str, unit: str, origin: str
) -> None:
    if price is None:
        return
    if unit in ("hour", "second"):
        per_hour = price * SECONDS_PER_HOUR if unit == "second" else price
        if per_hour > MAX_USD_PER_HOUR:
            raise ConfigurationError(
                f"price row {origin}: {column} {str(cell).strip()!r} per {unit} is "
                f"${per_hour:,f} an hour, above the ${MAX_USD_PER_HOUR:,} an hour no "
                "machine costs; check the figure and its unit (hour or second)"
            )
    elif price > MAX_USD_PER_GIB:
        raise ConfigurationError(
            f"price row {origin}: {column} {str(cell).strip()!r} per {unit} is above "
            f"${MAX_USD_PER_GIB:,}; check the figure and its unit"
        )


def _number(value: Any, column: str, origin: str) -> float | None:
    number = _decimal(value, column, origin)
    return None if number is None else float(number)


def _integer(value: Any, column: str, origin: str) -> int | None:
    number = _decimal(value, column, origin)
    if number is None:
        return None
    if number != number.to_integral_value():
        raise ConfigurationError(
            f"price row {origin}: {column} {str(value)!r} must be a whole number"
        )
    return int(number)


def _date(value: Any, origin: str) -> date | None:
    if _blank(value):
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ConfigurationError(
            f"price row {origin}: retrieved {str(value)!r} is not a date; "
            "write it as YYYY-MM-DD"
        ) from None
