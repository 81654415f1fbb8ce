"""Price catalogs and cost estimates: data files plus pure functions.

The public names: :class:`PriceRow` and :class:`Catalog` (``catalog``),
:func:`load_catalog`, :class:`BillingRule` and :func:`charge` (``billing``),
:class:`Quote`, :func:`quote` and :func:`estimate_memory_gib` (``estimate``).
Nothing here touches the network; prices come from the shipped CSV files and the
user's override file.
"""

from __future__ import annotations

from cost_models.billing import BillingRule, charge, monthly, rule_for
from cost_models.catalog import (
    Catalog,
    CatalogSource,
    PriceRow,
    load_catalog,
    read_overrides,
)
from cost_models.estimate import Quote, estimate_memory_gib, quote

__all__ = [
    "BillingRule",
    "Catalog",
    "CatalogSource",
    "PriceRow",
    "Quote",
    "charge",
    "estimate_memory_gib",
    "load_catalog",
    "monthly",
    "quote",
    "read_overrides",
    "rule_for",
]
