"""The user's broker settings: provider settings, the local rate, the store location.

Read from a YAML file given with ``--config``, else ``$AUTOML_BROKER_CONFIG``, else
``<user config dir>/automl-broker/config.yaml`` when it exists. Secrets do not belong in this
file: providers take credentials from their own SDK's usual places (environment, CLI login).
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from broker.errors import ConfigurationError
from broker.redact import describe_yaml_error

KNOWN_KEYS = {
    "providers",
    "local_rate_usd_per_hour",
    "store",
    "poll_interval_s",
    "pending_timeout_s",
    "prices",
    "monthly_budget_usd",
}


@dataclass
class BrokerConfig:
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    local_rate_usd_per_hour: Decimal | None = None
    store: Path | None = None
    poll_interval_s: float = 2.0
    pending_timeout_s: float = 600.0
    prices: Path | None = None
    source: Path | None = None
    # Project name -> budget per calendar month; the key None is the budget of all
    # jobs together (a plain number in the file).
    monthly_budget_usd: dict[str | None, Decimal] = field(default_factory=dict)

    def monthly_budget_for(
        self, project: str | None
    ) -> tuple[Decimal, str | None] | None:
        """The month's budget that applies to `project`, and the project the ledger
        is totalled by (None: every job together); None when no budget is set."""
        if project is not None and project in self.monthly_budget_usd:
            return self.monthly_budget_usd[project], project
        if None in self.monthly_budget_usd:
            return self.monthly_budget_usd[None], None
        return None


def default_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("automl-broker")) / "config.yaml"


def load_config(path: str | Path | None = None) -> BrokerConfig:
    """Load the settings; a missing default file gives the defaults."""
    explicit = path or os.environ.get("AUTOML_BROKER_CONFIG")
    file = Path(explicit) if explicit else default_config_path()
    if not file.is_file():
        if explicit:
            raise ConfigurationError(
                f"config file {str(file)!r} does not exist; check the path given with "
                "--config or AUTOML_BROKER_CONFIG"
            )
        return BrokerConfig()

    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        # PyYAML's message quotes the offending line, which may hold a secret.
        raise ConfigurationError(
            f"config file {str(file)!r} is not valid YAML: {describe_yaml_error(exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigurationError(f"config file {str(file)!r} must hold a mapping")
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ConfigurationError(
            f"config file {str(file)!r} has unknown keys {unknown}; "
            f"known: {sorted(KNOWN_KEYS)}"
        )

    config = BrokerConfig(source=file)
    config.providers = _provider_settings(raw.get("providers") or {})
    rate = raw.get("local_rate_usd_per_hour")
    if rate is not None:
        try:
            config.local_rate_usd_per_hour = Decimal(str(rate))
        except InvalidOperation:
            config.local_rate_usd_per_hour = Decimal("NaN")
        if (
            not config.local_rate_usd_per_hour.is_finite()
            or config.local_rate_usd_per_hour < 0
        ):
            raise ConfigurationError(
                f"local_rate_usd_per_hour must be a finite number of dollars, zero or "
                f"more, got {rate!r}"
            )
    if raw.get("store"):
        config.store = (file.parent / str(raw["store"])).resolve()
    if raw.get("prices"):
        config.prices = (file.parent / str(raw["prices"])).resolve()
    if raw.get("monthly_budget_usd") is not None:
        config.monthly_budget_usd = _monthly_budgets(raw["monthly_budget_usd"])
    for key in ("poll_interval_s", "pending_timeout_s"):
        if key in raw:
            setattr(config, key, _positive_seconds(key, raw[key]))
    return config


def _provider_settings(raw: Any) -> dict[str, dict[str, Any]]:
    """Check the ``providers:`` mapping: known names, settings their classes take."""
    from broker.providers import REGISTRY, check_provider_settings

    if not isinstance(raw, dict):
        raise ConfigurationError(
            "config key 'providers' must map provider names to settings, got "
            f"{type(raw).__name__}"
        )

    providers: dict[str, dict[str, Any]] = {}
    for name, settings in raw.items():
        if name not in REGISTRY:
            close = difflib.get_close_matches(str(name), list(REGISTRY), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"config providers has an unknown provider {name!r}{hint}; "
                f"providers are {sorted(REGISTRY)}"
            )
        if settings is not None and not isinstance(settings, dict):
            # The value is not echoed: a credential put in the wrong place stays out.
            raise ConfigurationError(
                f"config providers.{name} must be a mapping of settings such as "
                f"`{name}: {{setting: value}}`, got {type(settings).__name__}"
            )
        check_provider_settings(name, settings or {})
        providers[str(name)] = dict(settings or {})
    return providers


def _positive_seconds(key: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(
            f"config {key} must be a number of seconds above 0, got {value!r}"
        )
    return seconds


def _monthly_budgets(raw: Any) -> dict[str | None, Decimal]:
    """``monthly_budget_usd: 200`` (all jobs) or ``{project: 50, ...}``; in a mapping
    the key ``all`` is the budget of every job together."""
    items = raw.items() if isinstance(raw, dict) else [("all", raw)]
    budgets: dict[str | None, Decimal] = {}
    for name, value in items:
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            amount = Decimal("NaN")
        if not amount.is_finite() or amount < 0:
            raise ConfigurationError(
                f"monthly_budget_usd for {name!r} must be zero or more dollars, got "
                f"{value!r}; write e.g. `monthly_budget_usd: 200` or "
                "`monthly_budget_usd: {research: 50}`"
            )
        budgets[None if name == "all" else str(name)] = amount
    return budgets
