"""The cost optimizer: which provider, machine and region should run a job.

Every training row of the price catalog is a possible candidate (provider x machine x
region). :func:`make_plan` quotes each one, drops the infeasible ones with a stated
reason, and orders the rest by estimated cost: training at the high end (the whole
runtime budget, rounded by the provider's billing rule) plus one month of serving.

A rejection keeps its quote when a price was found, so the comparison table can show
what every provider would have cost even when none of the clouds has credentials. The
local backend is always a candidate when the job fits this machine's memory; it is
priced from the local rate the user sets (``AUTOML_BROKER_LOCAL_RATE``; by default about
$0.20/h, power plus amortisation of a workstation: ``DEFAULT_LOCAL_USD_PER_HOUR``) and
ranks before the clouds when the costs tie, so the data stays home.

Example:
    >>> from broker.schema import Schema
    >>> from broker.spec import JobSpec, Task
    >>> from cost_models.catalog import Catalog
    >>> catalog = Catalog.from_rows([
    ...     {"provider": "local", "sku": "this-machine", "region": "local",
    ...      "memory_gib": "16"},
    ... ])
    >>> schema = Schema(columns=(), target="y", target_safe_name="y",
    ...                 task=Task.BINARY, n_rows=100)
    >>> plan = make_plan(JobSpec(data="t.csv", target="y"), schema, catalog=catalog)
    >>> plan.chosen.provider
    'local'
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from broker.credentials import H2O_URL_ENV
from broker.errors import (
    BudgetWarning,
    ConfigurationError,
    PlanningError,
    PriceMissingWarning,
    PriceUnavailableError,
    RegionNotOfferedError,
)
from broker.spec import PROVIDER_NAMES
from cost_models.billing import charge
from cost_models.catalog import (
    MAX_USD_PER_HOUR,
    PRICES_ENV,
    Catalog,
    PriceRow,
    load_catalog,
)
from cost_models.estimate import (
    Quote,
    estimate_memory_gib,
    hourly_price,
    quote,
    training_rule,
)
from cost_models.limits import MIN_USEFUL_RUNTIME_S, affordable_runtime_s

if TYPE_CHECKING:
    from broker.providers.base import Availability, Placement, RunShape
    from broker.schema import Schema
    from broker.spec import JobSpec
    from broker.store import JobStore

logger = logging.getLogger(__name__)

LOCAL_RATE_ENV = "AUTOML_BROKER_LOCAL_RATE"
# The default local rate: power plus amortisation of a typical workstation, so that the
# local machine is never shown as free unless the user says so (AUTOML_BROKER_LOCAL_RATE=0).
DEFAULT_POWER_KW = Decimal("0.15")  # a desktop under full load
DEFAULT_USD_PER_KWH = Decimal("0.17")  # a typical electricity tariff
DEFAULT_MACHINE_USD = Decimal("1500")  # purchase price of the machine
DEFAULT_LIFETIME_HOURS = Decimal("8760")  # three years at eight busy hours a day
DEFAULT_LOCAL_USD_PER_HOUR = (
    DEFAULT_POWER_KW * DEFAULT_USD_PER_KWH
    + DEFAULT_MACHINE_USD / DEFAULT_LIFETIME_HOURS
).quantize(Decimal("0.0001"))

RejectionReason = Literal[
    "over_budget",
    "over_monthly_budget",
    "not_enough_memory",
    "unavailable",
    "region_not_allowed",
    "price_missing",
    "unsupported_task",
    "not_allowed",
    "not_configured",
]
_PROVIDER_ORDER = {name: index for index, name in enumerate(PROVIDER_NAMES)}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A feasible way to run the job, with its quote and why it sits where it does.

    `runtime_s` is the runtime limit to give the provider: the job's runtime budget, or
    less when ``budget.max_usd`` pays for less (then `budget_trimmed` is True and a
    :class:`~broker.errors.BudgetWarning` was issued).
    """

    provider: str
    machine: str
    region: str
    quote: Quote
    reason: str = ""
    # Candidates after the first say how much more they cost than the leader; the text
    # is written when read, as a plan over a large catalog holds thousands of them.
    leader: Quote | None = field(default=None, repr=False, compare=False)
    position: int = 1

    @property
    def rank_reason(self) -> str:
        """Why the candidate sits where it does, e.g. ``#2: $0.08 more than #1``."""
        if self.leader is None:
            return self.reason
        extra = self.quote.total_usd - self.leader.total_usd
        return f"#{self.position}: {_usd(extra)} more than #1" + _trim_text(self.quote)

    @property
    def runtime_s(self) -> int:
        """Seconds the provider may run this candidate (trimmed to the dollar cap)."""
        return self.quote.runtime_s

    @property
    def budget_trimmed(self) -> bool:
        return self.quote.trimmed

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "machine": self.machine,
            "region": self.region,
            "rank_reason": self.rank_reason,
            "runtime_s": self.runtime_s,
            "budget_trimmed": self.budget_trimmed,
            "quote": self.quote.to_dict(),
        }


@dataclass(frozen=True)
class Rejection:
    """A provider x machine x region left out of the plan, and why."""

    provider: str
    machine: str
    region: str
    reason: RejectionReason
    detail: str
    quote: Quote | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "machine": self.machine,
            "region": self.region,
            "reason": self.reason,
            "detail": self.detail,
            "quote": None if self.quote is None else self.quote.to_dict(),
        }


@dataclass
class Plan:
    """The ordered feasible candidates and every rejection, with the reasons."""

    candidates: list[Candidate]
    rejections: list[Rejection]
    runtime_s: int = 0
    memory_needed_gib: float = 0.0
    local_usd_per_hour: Decimal = DEFAULT_LOCAL_USD_PER_HOUR
    price_missing: list[str] = field(default_factory=list)
    hours_per_month: Decimal = Decimal("0")  # the serving horizon the quotes assume

    @property
    def chosen(self) -> Candidate | None:
        """The first candidate: the one the broker runs first."""
        return self.candidates[0] if self.candidates else None

    def comparison(self) -> list[dict[str, Any]]:
        """One row per provider: its cheapest quote and whether it was chosen, feasible
        or skipped (with the reason). The CLI prints this as the comparison table."""
        rows = []
        for provider in self._providers():
            feasible = [c for c in self.candidates if c.provider == provider]
            if feasible:
                best = feasible[0]
                status = "chosen" if best is self.chosen else "feasible"
                rows.append(_comparison_row(provider, status, best.quote, "", best))
                continue
            rejected = [r for r in self.rejections if r.provider == provider]
            main = _main_rejection(rejected)
            # Show a row that was refused for that very reason, its cheapest one.
            same = [r for r in rejected if r.reason == main.reason]
            quoted = [r for r in same if r.quote is not None]
            shown = min(quoted, key=lambda r: _cost_key(r.quote)) if quoted else main
            rows.append(
                _comparison_row(provider, main.reason, shown.quote, shown.detail, shown)
            )
        return rows

    def explanation(self) -> str:
        """Why the first candidate was chosen and why each other provider was not."""
        lines = []
        chosen = self.chosen
        if chosen is None:
            lines.append("No provider can run this job.")
        else:
            feasible = {c.provider for c in self.candidates}
            if chosen.rank_reason.startswith("first preferred"):
                why = "the first preferred provider"
            elif len(feasible) == 1:
                why = "the only feasible provider"
            else:
                why = f"the lowest estimate of {len(feasible)} feasible providers"
            lines.append(f"Chose {_where(chosen)}: {why}, {_quote_text(chosen.quote)}.")
            if chosen.quote.is_local and not chosen.quote.user_supplied:
                lines.append(
                    f"  Local runs are priced at ${self.local_usd_per_hour}/h, "
                    "the local rate (power and amortisation; config key "
                    f"local_rate_usd_per_hour, else {LOCAL_RATE_ENV})."
                )
            if chosen.quote.user_supplied:
                lines.append(f"  Price is user-supplied ({chosen.quote.price_source}).")

        for row in self.comparison():
            if row["status"] == "chosen":
                continue
            if row["status"] == "feasible":
                assert chosen is not None, "a feasible provider implies a chosen one"
                extra = row["total_usd"] - chosen.quote.total_usd
                if extra > 0:
                    verdict = f"{_usd(extra)} more"
                elif extra < 0:
                    trimmed = row["quote"] is not None and row["quote"].trimmed
                    verdict = f"{_usd(-extra)} less, ranked later: " + (
                        "budget.max_usd trims its runtime"
                        if trimmed
                        else "a preferred provider comes first"
                    )
                else:
                    verdict = "same estimate, ranked later on the tie"
                lines.append(
                    f"- {row['provider']}: feasible, best {row['machine']} in "
                    f"{row['region']} at {_usd(row['total_usd'])} ({verdict})"
                )
                continue
            text = f"- {row['provider']}: skipped, {row['status']}: {row['detail']}"
            if row["training_usd_high"] is not None:
                text += f" (estimate {_quote_text(row['quote'])})"
            lines.append(text)

        if self.price_missing:
            lines.append(
                "Left out for lack of a usable price: " + ", ".join(self.price_missing)
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form of the whole plan, saved in the run folder."""
        chosen = self.chosen
        return {
            "chosen": None if chosen is None else chosen.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "rejections": [r.to_dict() for r in self.rejections],
            "runtime_s": self.runtime_s,
            "memory_needed_gib": self.memory_needed_gib,
            "local_usd_per_hour": str(self.local_usd_per_hour),
            "hours_per_month": str(self.hours_per_month),
            "price_missing": list(self.price_missing),
            "comparison": [_comparison_json(row) for row in self.comparison()],
            "explanation": self.explanation(),
        }

    def _providers(self) -> list[str]:
        names = {c.provider for c in self.candidates}
        names.update(r.provider for r in self.rejections)
        return sorted(names, key=lambda n: (_PROVIDER_ORDER.get(n, 99), n))


def make_plan(
    spec: JobSpec,
    schema: Schema,
    *,
    catalog: Catalog | None = None,
    availability: Mapping[str, Availability] | None = None,
    local_rate_usd_per_hour: Decimal | None = None,
    unsupported: Mapping[str, Mapping[str, str]] | None = None,
    month_budget_left_usd: Decimal | None = None,
    placements: Mapping[str, Placement | None] | None = None,
    shapes: Mapping[str, RunShape] | None = None,
) -> Plan:
    """Quote every provider x machine x region and order the feasible ones by cost.

    Args:
        spec: the job; budget, constraints and deployment are read.
        schema: the table's schema; its size sets the memory estimate and its task
            what a provider must support.
        catalog: the prices; the shipped catalogs plus ``AUTOML_BROKER_PRICES`` when
            None.
        availability: per provider name; names left out are found with
            :func:`broker.credentials.discover`.
        local_rate_usd_per_hour: the local machine's rate; ``AUTOML_BROKER_LOCAL_RATE``
            or :data:`DEFAULT_LOCAL_USD_PER_HOUR` (about $0.20/h) when None.
        unsupported: per provider, feature -> why it is not supported; read from the
            provider classes when None.
        month_budget_left_usd: what the month's budget still allows (see
            :func:`monthly_budget_left`); candidates whose high estimate passes it are
            rejected as ``over_monthly_budget``. None: no monthly budget.
        placements: per provider, the regions and machine types it is set up to use;
            rows elsewhere are rejected as ``not_configured`` so the quote is for what
            will really run. Only applied to available providers.
        shapes: per provider, how its jobs use machines (nodes at once, shortest
            billed run); providers left out are read from their classes, and a
            configured provider's placement wins over both.

    Returns:
        The plan, candidates cheapest first.

    Raises:
        PriceUnavailableError: a machine named in ``constraints.machines`` has no
            usable price.
        RegionNotOfferedError: a region in ``constraints.regions`` is not sold by any
            allowed provider, or not for a machine the user named.
        PlanningError: no candidate is feasible; its ``rejections`` say why.

    Warns:
        PriceMissingWarning: naming the SKUs left out for lack of a price.
        BudgetWarning: naming the candidates whose runtime ``budget.max_usd`` trimmed.
    """
    catalog = load_catalog() if catalog is None else catalog
    context = _Context.build(
        spec,
        schema,
        availability,
        local_rate_usd_per_hour,
        unsupported,
        month_budget_left_usd,
    )
    context = replace(context, placements=placements, shapes=shapes)
    _check_forced(catalog, context)

    feasible: list[Quote] = []
    rejections: list[Rejection] = []
    missing: list[str] = []
    serving_cache: dict[tuple[str, str], tuple[PriceRow, Decimal] | None] = {}
    for row in catalog.training_rows():
        outcome = _judge(row, catalog, context, serving_cache)
        if isinstance(outcome, Quote):
            feasible.append(outcome)
        else:
            rejections.append(outcome)
            if outcome.reason == "price_missing":
                label = _missing_label(row, serving=outcome.quote is not None)
                if label not in missing:
                    missing.append(label)

    if missing:
        warnings.warn(
            "no usable price for " + ", ".join(missing) + "; left out of the ranking "
            f"(a missing or 0.0 cloud price is never read as free): supply prices "
            f"with {PRICES_ENV}=FILE",
            PriceMissingWarning,
            stacklevel=2,
        )

    trimmed = [q for q in feasible if q.trimmed]
    if trimmed:
        warnings.warn(
            f"budget.max_usd {_usd(context.max_usd or Decimal(0))} does not pay for "
            f"the whole runtime budget of {context.runtime_s} s on "
            + ", ".join(
                f"{q.provider} {q.sku} ({q.region}): trimmed to {q.runtime_s} s"
                for q in trimmed[:5]
            )
            + (f" and {len(trimmed) - 5} more" if len(trimmed) > 5 else "")
            + "; raise budget.max_usd to run them for the whole runtime",
            BudgetWarning,
            stacklevel=2,
        )

    plan = Plan(
        candidates=_ranked(feasible, spec.constraints.prefer),
        rejections=rejections,
        runtime_s=context.runtime_s,
        memory_needed_gib=context.memory_needed_gib,
        local_usd_per_hour=context.local_rate,
        hours_per_month=context.hours_per_month,
        price_missing=missing,
    )
    if plan.chosen is None:
        raise PlanningError(
            "no provider can run this job within its constraints:\n"
            + plan.explanation(),
            rejections=plan.rejections,
        )
    logger.info(
        "plan: %s (%d feasible, %d rejected)",
        _where(plan.chosen),
        len(plan.candidates),
        len(plan.rejections),
    )
    return plan


def monthly_budget_left(
    store: JobStore,
    budget_usd: Decimal,
    *,
    project: str | None = None,
    period: str | None = None,
) -> Decimal:
    """What is left of a monthly budget after the month's actual spend in the ledger.

    Args:
        store: the job store whose spend ledger is totalled.
        budget_usd: the month's budget (config key ``monthly_budget_usd``).
        project: total only this project's jobs; None totals every job.
        period: ``YYYY-MM``; the current month (UTC) when None.

    Returns:
        The budget minus the spend; negative when the month is already over budget.
        Pass it to :func:`make_plan` as ``month_budget_left_usd``.
    """
    # TODO(month-running-jobs): jobs still running have only a quote in the ledger and
    # are not counted until they finish; two jobs started together can pass the budget.
    return budget_usd - store.spend(period, project)


# --- the job's requirements -----------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    providers: frozenset[str] | None
    regions: frozenset[str] | None
    machines: frozenset[str] | None
    gpu: bool | None
    task: str
    runtime_s: int
    memory_needed_gib: float
    max_usd: Decimal | None
    hours_per_month: Decimal
    instances: int
    local_rate: Decimal
    availability: dict[str, Availability]
    unsupported: Mapping[str, Mapping[str, str]] | None
    month_left_usd: Decimal | None = None
    placements: Mapping[str, Placement | None] | None = None
    shapes: Mapping[str, RunShape] | None = None
    # Per-provider answers that hold for every row of one plan, found on first use.
    _unrefused: dict[str, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _shapes: dict[str, RunShape] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        spec: JobSpec,
        schema: Schema,
        availability: Mapping[str, Availability] | None,
        local_rate: Decimal | None,
        unsupported: Mapping[str, Mapping[str, str]] | None,
        month_left_usd: Decimal | None = None,
    ) -> _Context:
        constraints = spec.constraints
        memory = estimate_memory_gib(schema.n_rows, len(schema.features) + 1)
        if constraints.min_memory_gib is not None:
            memory = max(memory, constraints.min_memory_gib)
        return cls(
            providers=_frozen(constraints.providers),
            regions=_frozen(constraints.regions),
            machines=_frozen(constraints.machines),
            gpu=constraints.gpu,
            task=schema.task.value,
            runtime_s=spec.budget.max_runtime_s,
            memory_needed_gib=memory,
            max_usd=spec.budget.max_usd,
            hours_per_month=spec.deployment.hours_per_month,
            instances=spec.deployment.instances,
            local_rate=_local_rate(local_rate),
            availability=dict(availability or {}),
            unsupported=unsupported,
            month_left_usd=month_left_usd,
        )

    def allows_provider(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    def allows_region(self, row: PriceRow) -> bool:
        # Local rows run on the user's own machine: a region pin does not apply to them.
        return self.regions is None or row.is_local or row.region in self.regions

    def availability_of(self, provider: str) -> Availability:
        found = self.availability.get(provider)
        if found is None:
            from broker.credentials import discover

            found = discover(provider)
            self.availability[provider] = found
        return found

    def shape_of(self, provider: str) -> RunShape:
        """How the provider's jobs use machines: its configured placement's shape,
        else what its class declares."""
        shape = self._shapes.get(provider)
        if shape is not None:
            return shape

        placement = (self.placements or {}).get(provider)
        if placement is not None and placement.shape is not None:
            shape = placement.shape
        elif self.shapes is not None and provider in self.shapes:
            shape = self.shapes[provider]
        else:
            shape = _declared_shape(provider)
        self._shapes[provider] = shape
        return shape

    def refuses_none_of(self, provider: str) -> bool:
        """True when no constraint can refuse any row of `provider`, so planning may
        skip :func:`_constraint_refusal` for its rows.

        A placement counts only once the provider's availability is known (as in
        :func:`_constraint_refusal`); until then the answer is False and not kept.
        """
        known = self._unrefused.get(provider)
        if known is not None:
            return known

        placement = (self.placements or {}).get(provider)
        if placement is not None and provider not in self.availability:
            return False
        available = self.availability.get(provider)
        placed = (
            placement is not None
            and available is not None
            and available.available
            and (placement.regions is not None or placement.machines is not None)
        )
        unrefused = (
            self.allows_provider(provider)
            and self.machines is None
            and self.regions is None
            and self.gpu is None
            and not placed
            and self.task not in self.limits_of(provider)
        )
        self._unrefused[provider] = unrefused
        return unrefused

    def limits_of(self, provider: str) -> Mapping[str, str]:
        if self.unsupported is not None:
            return self.unsupported.get(provider, {})
        return _declared_limits(provider)


def _check_forced(catalog: Catalog, context: _Context) -> None:
    """Refuse machines and regions the user named that have no usable price."""
    if context.machines is None and context.regions is None:
        return
    rows = [r for r in catalog.training_rows() if context.allows_provider(r.provider)]

    for machine in sorted(context.machines or ()):
        named = [r for r in rows if r.sku == machine]
        if not named:
            known = sorted({r.sku for r in rows})
            raise PriceUnavailableError(
                f"machine {machine!r} has no price in the catalog; choose one of "
                f"{known} or add its price to a price file ({PRICES_ENV}=FILE)",
                sku=machine,
            )
        in_region = [r for r in named if context.allows_region(r)]
        if not in_region:
            assert context.regions is not None, "only a region pin empties the list"
            raise RegionNotOfferedError(
                f"machine {machine!r} is not priced in region(s) "
                f"{sorted(context.regions)}; it is priced in "
                f"{sorted({r.region for r in named})}: pick one of those or add a "
                f"price for the region to a price file ({PRICES_ENV}=FILE)",
                provider=named[0].provider,
                sku=machine,
                region=",".join(sorted(context.regions)),
            )
        if all(hourly_price(r, context.local_rate) is None for r in in_region):
            first = in_region[0]
            raise PriceUnavailableError(
                f"machine {machine!r} ({first.provider}) has no usable price in "
                f"{sorted({r.region for r in in_region})}: the catalog's price is "
                f"missing or 0.0, which is never read as free; supply its price in a "
                f"price file ({PRICES_ENV}=FILE)",
                provider=first.provider,
                sku=machine,
                region=first.region,
            )

    if context.regions is not None:
        cloud = [r for r in rows if not r.is_local]
        if cloud and not any(r.region in context.regions for r in cloud):
            raise RegionNotOfferedError(
                f"no allowed provider has prices for region(s) "
                f"{sorted(context.regions)}; priced regions are "
                f"{sorted({r.region for r in cloud})}",
                region=",".join(sorted(context.regions)),
            )


# --- one row --------------------------------------------------------------------------


def _judge(
    row: PriceRow,
    catalog: Catalog,
    context: _Context,
    serving_cache: dict[tuple[str, str], tuple[PriceRow, Decimal] | None],
) -> Quote | Rejection:
    """The row's quote when it is feasible, or the first reason it is not."""
    if not context.refuses_none_of(row.provider):
        refusal = _constraint_refusal(row, context)
        if refusal is not None:
            reason, detail = refusal
            return Rejection(row.provider, row.sku, row.region, reason, detail)

    usd_per_hour = hourly_price(row, context.local_rate)
    if usd_per_hour is None:
        return _rejection(row, "price_missing", _missing_detail(row))
    shape = context.shape_of(row.provider)
    serving, serving_usd_per_hour = _serving_row(
        row, catalog, context, serving_cache
    ) or (None, None)
    estimate = quote(
        row,
        usd_per_hour=usd_per_hour,
        serving_usd_per_hour=serving_usd_per_hour,
        nodes=shape.nodes,
        min_billed_s=shape.min_runtime_s,
        runtime_s=context.runtime_s,
        memory_needed_gib=context.memory_needed_gib,
        serving=serving,
        hours_per_month=context.hours_per_month,
        instances=context.instances,
        local_usd_per_hour=context.local_rate,
    )
    if estimate.serving_usd_per_month is None:
        return _rejection(
            row,
            "price_missing",
            f"no endpoint price for {row.provider} in {row.region}, and the job asks "
            f"for {context.hours_per_month} serving hours a month",
            estimate,
        )

    if not estimate.fits_memory:
        return _rejection(
            row,
            "not_enough_memory",
            f"needs about {estimate.memory_needed_gib:g} GiB, {row.sku} has "
            f"{estimate.memory_offered_gib:g} GiB",
            estimate,
        )
    available = context.availability_of(row.provider)
    if not available.available:
        return _rejection(row, "unavailable", available.reason, estimate)
    cluster = available.credential_source == H2O_URL_ENV
    if row.provider == "h2o" and not row.is_local and not cluster:
        return _rejection(
            row,
            "unavailable",
            "H2O on a cloud VM needs a running cluster: start one on the VM and set "
            f"{H2O_URL_ENV} or providers.h2o.url",
            estimate,
        )
    if row.provider == "h2o" and row.is_local and cluster:
        return _rejection(
            row,
            "unavailable",
            f"jobs go to the H2O cluster ({available.reason}), not to this machine",
            estimate,
        )
    if context.max_usd is not None and estimate.training_usd_high > context.max_usd:
        estimate = _trimmed(row, estimate, context)
        if not estimate.trimmed:
            # the shortest run the provider bills: its run shape's, or its price
            # row's minimum charge (a Vertex node hour), whichever is longer
            shortest = max(estimate.min_billed_s, int(training_rule(row).minimum_s))
            useful = min(MIN_USEFUL_RUNTIME_S, context.runtime_s)
            pays_for = f"{useful} s"
            if shortest > useful:
                pays_for = f"the {shortest} s that {row.provider} bills at least"
            return _rejection(
                row,
                "over_budget",
                f"training estimate {_usd(estimate.training_usd_high)} "
                f"({estimate.billing_unit}) exceeds budget.max_usd "
                f"{_usd(context.max_usd)}, which pays for less than {pays_for}",
                estimate,
            )
    left = context.month_left_usd
    if left is not None and estimate.training_usd_high > left:
        return _rejection(
            row,
            "over_monthly_budget",
            f"training estimate {_usd(estimate.training_usd_high)} exceeds what is "
            f"left of this month's budget, {_usd(max(left, Decimal(0)))} "
            "(config key monthly_budget_usd)",
            estimate,
        )
    return estimate


def _trimmed(row: PriceRow, estimate: Quote, context: _Context) -> Quote:
    """The quote for the runtime that budget.max_usd pays for, when that is at least
    a useful minimum and the provider's shortest billed run fits the cap too; else
    `estimate` unchanged (the caller rejects it)."""
    assert context.max_usd is not None, "only a dollar cap trims a runtime"
    rate = estimate.training_usd_per_hour
    assert rate is not None, "a feasible quote has a rate"
    rule = training_rule(row)
    runtime = affordable_runtime_s(rate, rule, context.max_usd)
    if runtime is None or runtime < min(MIN_USEFUL_RUNTIME_S, context.runtime_s):
        return estimate
    if estimate.min_billed_s and charge(rate, estimate.min_billed_s, rule) > (
        context.max_usd
    ):
        return estimate

    trimmed = replace(estimate, requested_runtime_s=context.runtime_s)
    shorter = quote(
        row,
        usd_per_hour=rate,
        runtime_s=runtime,
        memory_needed_gib=context.memory_needed_gib,
        hours_per_month=Decimal(0),
        min_billed_s=estimate.min_billed_s,
    )
    logger.debug(
        "%s %s in %s: runtime trimmed from %d s to %d s by max_usd %s",
        row.provider,
        row.sku,
        row.region,
        context.runtime_s,
        runtime,
        context.max_usd,
    )
    return replace(
        trimmed,
        runtime_s=runtime,
        training_usd_low=shorter.training_usd_low,
        training_usd_high=shorter.training_usd_high,
    )


def _constraint_refusal(
    row: PriceRow, context: _Context
) -> tuple[RejectionReason, str] | None:
    if not context.allows_provider(row.provider):
        return "not_allowed", f"constraints.providers excludes {row.provider}"
    if context.machines is not None and row.sku not in context.machines:
        return "not_allowed", f"constraints.machines does not list {row.sku}"
    if not context.allows_region(row):
        return "region_not_allowed", (
            f"region {row.region} is not in constraints.regions "
            f"{sorted(context.regions or ())}"
        )
    placement = (context.placements or {}).get(row.provider)
    available = context.availability.get(row.provider)
    if placement is not None and available is not None and available.available:
        if placement.regions is not None and row.region not in placement.regions:
            return "not_configured", (
                f"{row.provider} is set up for region {sorted(placement.regions)}"
            )
        if placement.machines is not None and row.sku not in placement.machines:
            return "not_configured", (
                f"{row.provider} is set up for machine {sorted(placement.machines)}"
            )

    limits = context.limits_of(row.provider)
    if context.task in limits:
        return "unsupported_task", f"{context.task}: {limits[context.task]}"
    if context.gpu and row.gpus == 0:
        return "not_allowed", f"constraints.gpu asks for a GPU and {row.sku} has none"
    if context.gpu and "gpu" in limits:
        return "unsupported_task", f"gpu: {limits['gpu']}"
    if context.gpu is False and row.gpus > 0:
        return "not_allowed", f"constraints.gpu is false and {row.sku} has a GPU"
    return None


def _serving_row(
    row: PriceRow,
    catalog: Catalog,
    context: _Context,
    cache: dict[tuple[str, str], tuple[PriceRow, Decimal] | None],
) -> tuple[PriceRow, Decimal | None] | None:
    """The endpoint the model would be served on, with its hourly price: the provider's
    cheapest endpoint in the region; a VM the user runs (a host row with no endpoint
    rows) serves itself."""
    if context.hours_per_month == 0:
        return None

    key = (row.provider, row.region)
    if key not in cache:
        priced = [
            (price, r.sku, r)
            for r in catalog.endpoint_rows(row.provider, row.region)
            if (price := hourly_price(r, context.local_rate)) is not None
        ]
        best = min(priced, key=lambda item: item[:2]) if priced else None
        cache[key] = None if best is None else (best[2], best[0])
    cheapest = cache[key]
    if cheapest is None and row.component == "host":
        return row, hourly_price(row, context.local_rate)
    return cheapest


def _ranked(quotes: list[Quote], prefer: list[str] | None = None) -> list[Candidate]:
    rank_of: dict[str, int] = {}
    for name in prefer or []:
        rank_of.setdefault(name, len(rank_of))  # a repeated name keeps its first place
    unranked = len(rank_of)

    def key(q: Quote) -> tuple[Any, ...]:
        return (
            # Providers the user prefers come first, in the order given; then cost.
            rank_of.get(q.provider, unranked),
            # A run cut short by the dollar cap ranks after every full-length run.
            q.requested_runtime_s is not None and q.runtime_s < q.requested_runtime_s,
            q.total_usd,
            q.training_usd_high,
            # On a tie the user's own machine wins (data stays home), local search first.
            not q.is_local,
            q.provider != "local",
            _PROVIDER_ORDER.get(q.provider, 99),
            q.region,
            q.sku,
        )

    # The sort is stable: quotes whose keys tie keep the catalog's order.
    ordered = sorted(quotes, key=key)
    if not ordered:
        return []

    first = ordered[0]
    reason = (
        f"first preferred provider: {_quote_text(first)}"
        if first.provider in rank_of
        else f"cheapest feasible: {_quote_text(first)}"
    ) + _trim_text(first)
    ranked = [Candidate(first.provider, first.sku, first.region, first, reason)]
    ranked += [
        Candidate(q.provider, q.sku, q.region, q, "", first, position)
        for position, q in enumerate(ordered[1:], start=2)
    ]
    return ranked


# --- helpers --------------------------------------------------------------------------


def _rejection(
    row: PriceRow, reason: RejectionReason, detail: str, estimate: Quote | None = None
) -> Rejection:
    return Rejection(row.provider, row.sku, row.region, reason, detail, estimate)


def _cost_key(estimate: Quote | None) -> tuple[Decimal, Decimal]:
    if estimate is None:
        return (Decimal("Infinity"), Decimal("Infinity"))
    return (estimate.total_usd, estimate.training_usd_high)


_FILTER_REASONS = {"not_allowed", "region_not_allowed", "not_configured"}


def _main_rejection(rejections: list[Rejection]) -> Rejection:
    """The reason that speaks for a provider: the most frequent among the rows the
    user's filters left in (why the rows that could have run did not), else among all."""
    kept = [r for r in rejections if r.reason not in _FILTER_REASONS] or rejections
    counts = Counter(r.reason for r in kept)
    reason = counts.most_common(1)[0][0]
    return next(r for r in rejections if r.reason == reason)


def _comparison_row(
    provider: str,
    status: str,
    estimate: Quote | None,
    detail: str,
    item: Candidate | Rejection,
) -> dict[str, Any]:
    return {
        "provider": provider,
        "status": status,
        "machine": item.machine,
        "region": item.region,
        "training_usd_low": None if estimate is None else estimate.training_usd_low,
        "training_usd_high": None if estimate is None else estimate.training_usd_high,
        "serving_usd_per_month": (
            None if estimate is None else estimate.serving_usd_per_month
        ),
        "total_usd": None if estimate is None else estimate.total_usd,
        "is_local": False if estimate is None else estimate.is_local,
        "user_supplied": False if estimate is None else estimate.user_supplied,
        "detail": detail,
        "quote": estimate,
    }


def _comparison_json(row: dict[str, Any]) -> dict[str, Any]:
    """A comparison row for JSON: decimals as strings, plus ``chosen`` and
    ``training_usd`` (the high estimate, the figure held against the budget)."""
    payload = {k: v for k, v in row.items() if k != "quote"}
    for name in ("training_usd_low", "training_usd_high", "serving_usd_per_month"):
        payload[name] = None if row[name] is None else str(row[name])
    payload["total_usd"] = None if row["total_usd"] is None else str(row["total_usd"])
    payload["training_usd"] = payload["training_usd_high"]
    payload["chosen"] = row["status"] == "chosen"
    return payload


@lru_cache(maxsize=16)
def _declared_shape(provider: str) -> RunShape:
    """The provider class's run shape; one machine and no minimum run when its module
    cannot be imported here."""
    from broker.providers import provider_class
    from broker.providers.base import RunShape

    try:
        return provider_class(provider).run_shape
    except Exception as exc:  # the same rule as for declared limits
        logger.debug("no declared run shape for %s: %s", provider, exc)
        return RunShape()


def _declared_limits(provider: str) -> Mapping[str, str]:
    """The provider class's table of unsupported features, or none when the module
    cannot be imported here (its own availability check then reports why)."""
    from broker.providers import provider_class

    try:
        return provider_class(provider).unsupported
    except Exception as exc:  # a provider module that fails to import limits nothing
        logger.debug("no declared limits for %s: %s", provider, exc)
        return {}


def _local_rate(value: Decimal | None) -> Decimal:
    """The local machine's dollars per hour: `value` (the ``local_rate_usd_per_hour``
    argument or config setting), else ``AUTOML_BROKER_LOCAL_RATE``, else the default.
    """
    if value is not None:
        where = "local_rate_usd_per_hour (argument or config setting)"
        shown = str(value)
        try:
            rate = Decimal(str(value) if isinstance(value, float) else value)
        except (InvalidOperation, TypeError, ValueError):
            raise ConfigurationError(
                f"{where} {value!r} is not a price; write dollars per hour such as 0.05"
            ) from None
    else:
        text = os.environ.get(LOCAL_RATE_ENV, "").strip()
        if not text:
            return DEFAULT_LOCAL_USD_PER_HOUR
        where, shown = LOCAL_RATE_ENV, repr(text)
        try:
            rate = Decimal(text)
        except InvalidOperation:
            raise ConfigurationError(
                f"{LOCAL_RATE_ENV}={text!r} is not a price; write dollars per hour "
                "such as 0.05"
            ) from None

    if not rate.is_finite() or rate < 0 or rate > MAX_USD_PER_HOUR:
        raise ConfigurationError(
            f"{where} is {shown}, but the local rate "
            f"must be a finite number of dollars per hour from 0 to "
            f"{MAX_USD_PER_HOUR:,}; write dollars per hour such as 0.05"
        )
    return rate


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def _missing_label(row: PriceRow, *, serving: bool) -> str:
    if serving:
        return f"{row.provider} endpoints ({row.region})"
    return f"{row.provider} {row.sku} ({row.region})"


def _missing_detail(row: PriceRow) -> str:
    if row.price is not None and row.price == 0:
        return f"price of {row.sku} is 0.0, read as missing for a cloud SKU"
    return f"no price for {row.sku} in {row.region}"


def _trim_text(estimate: Quote) -> str:
    if not estimate.trimmed:
        return ""
    return (
        f"; runtime trimmed to {estimate.runtime_s} s of "
        f"{estimate.requested_runtime_s} s by budget.max_usd"
    )


def _where(candidate: Candidate) -> str:
    return f"{candidate.provider} {candidate.machine} in {candidate.region}"


def _quote_text(estimate: Quote) -> str:
    text = (
        f"training {_usd(estimate.training_usd_low)}-{_usd(estimate.training_usd_high)}"
    )
    if estimate.serving_usd_per_month is not None:
        text += f" + serving {_usd(estimate.serving_usd_per_month)}/month"
    if estimate.is_local:
        text += " (local rate)"
    return text


def _usd(amount: Decimal) -> str:
    """Dollars with at least two decimals and no trailing zeros beyond them."""
    whole, _, fraction = f"{amount:f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"
