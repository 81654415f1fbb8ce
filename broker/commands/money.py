"""The money commands: ``pricing refresh``, ``costs`` and ``report``.

Call :func:`register` on the CLI's Typer app to add them.
"""

from __future__ import annotations

import sys
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker.redact import redact_text

if TYPE_CHECKING:
    from cost_models.refresh import RefreshReport

GOOGLE_KEY_ENV = "AUTOML_BROKER_GOOGLE_API_KEY"  # same as cost_models.refresh

# tables and lines of user data (project names, paths): no markup is read in them
console = Console(markup=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def register(app: typer.Typer) -> None:
    """Add ``pricing`` (with ``refresh``), ``costs`` and ``report`` to `app`."""
    pricing = typer.Typer(
        name="pricing",
        help="Price catalogs: refresh them from the providers' public price APIs.",
        no_args_is_help=True,
    )
    pricing.command("refresh")(refresh)
    app.add_typer(pricing, name="pricing")
    app.command("costs")(costs)
    app.command("report")(report)


def _fail(exc: Exception) -> None:
    err_console.print(
        f"[bold red]error:[/] {type(exc).__name__}: {escape(redact_text(str(exc)))}",
        highlight=False,
    )
    raise typer.Exit(code=2)


# --- pricing refresh -------------------------------------------------------------------


def refresh(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for the refreshed CSVs (default: the user data dir, which "
            "the planner then reads).",
        ),
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place", help="Rewrite the catalogs inside the installed package."
        ),
    ] = False,
    source: Annotated[
        str,
        typer.Option(help="Comma-separated price sources: azure,aws,google."),
    ] = "azure,aws,google",
    google_api_key: Annotated[
        str | None,
        typer.Option(
            "--google-api-key",
            envvar=GOOGLE_KEY_ENV,
            show_default=False,
            show_envvar=True,
            help="Cloud Billing API key for Google prices (never printed or stored).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON.")
    ] = False,
) -> None:
    """Fetch current list prices and rewrite the price catalogs."""
    from cost_models.catalog import CATALOG_DIR
    from cost_models.refresh import refresh_catalogs

    if in_place and out is not None:
        _fail(ValueError("give --out or --in-place, not both"))
    sources = [s.strip() for s in source.split(",") if s.strip()]
    if not sources:
        _fail(
            ValueError("--source names no price source; give some of azure,aws,google")
        )
    try:
        result = refresh_catalogs(
            out_dir=CATALOG_DIR if in_place else out,
            sources=sources,
            google_api_key=google_api_key or None,
        )
    except (ValueError, OSError) as exc:
        _fail(exc)
        return

    if as_json:
        import json

        console.print_json(json.dumps(result.to_dict()))
    else:
        print_refresh(result)
    if result.errors and len(result.errors) == len(sources):
        raise typer.Exit(code=1)


def print_refresh(result: RefreshReport) -> None:
    """The refresh as a table of changed rows, then counts, files and errors."""
    table = Table(title="Price changes", title_justify="left")
    for column in ("provider", "sku", "region", "component"):
        table.add_column(column)
    for column in ("old USD", "new USD", "change"):
        table.add_column(column, justify="right")
    table.add_column("retrieved")
    for change in result.changes:
        if change.status != "changed":
            continue
        pct = change.change_pct
        table.add_row(
            change.provider,
            change.sku,
            change.region,
            change.component,
            "-" if change.old_price is None else f"{change.old_price}",
            "-" if change.new_price is None else f"{change.new_price}",
            "-" if pct is None else f"{pct:+}%",
            f"{change.old_retrieved or '-'} -> {change.retrieved or '-'}",
        )
    console.print(table)
    console.print(
        f"{result.count('changed')} changed, {result.count('unchanged')} confirmed "
        f"unchanged, {result.count('kept')} kept with their old date; written to "
        f"{result.out_dir}",
        highlight=False,
    )
    for name, error in sorted(result.errors.items()):
        err_console.print(
            f"[yellow]warning:[/] {escape(name)}: {escape(str(error))}", highlight=False
        )


# --- costs -----------------------------------------------------------------------------


def costs(
    month: Annotated[
        str | None,
        typer.Option("--month", help="Month as YYYY-MM (default: this one)."),
    ] = None,
    project: Annotated[
        str | None, typer.Option("--project", help="Only this project's jobs.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Broker settings file (YAML).")
    ] = None,
    store_path: Annotated[
        Path | None,
        typer.Option("--store", help="Job store file (default: the usual)."),
    ] = None,
) -> None:
    """Show the month's spend per project against the monthly budget."""
    from broker.config import load_config
    from broker.errors import BrokerError
    from broker.store import JobStore

    try:
        settings = load_config(config)
        store = JobStore(store_path or settings.store)
        try:
            rows = spend_rows(store, settings, month=month, project=project)
        finally:
            store.close()
    except BrokerError as exc:
        _fail(exc)
        return

    table = Table(title=f"Spend in {rows[-1]['month']}", title_justify="left")
    table.add_column("project")
    for column in ("jobs", "quoted USD", "actual USD", "budget USD", "left USD"):
        table.add_column(column, justify="right")
    table.add_column("used", justify="right")
    for row in rows:
        left = row["left_usd"]
        style = "bold red" if left is not None and left < 0 else ""
        table.add_row(
            row["project"],
            str(row["jobs"]),
            _usd(row["quote_usd"]),
            _usd(row["actual_usd"]),
            _usd(row["budget_usd"]),
            # the shown actual, rounded to micro-dollars, and the shown left add up
            # to the budget; --json keeps the exact values
            _usd(
                None if left is None else row["budget_usd"] - _micro(row["actual_usd"])
            ),
            "-" if row["used_pct"] is None else f"{row['used_pct']}%",
            style=style,
        )
    console.print(table)


def spend_rows(
    store: Any, settings: Any, *, month: str | None, project: str | None
) -> list[dict[str, Any]]:
    """The month's spend from the store's ledger: one row per project that spent or has
    a budget (only `project` when given), then a row for all projects together.

    Money stays exact: ``quote_usd``, ``actual_usd``, ``budget_usd``, ``left_usd``
    are Decimals; ``used_pct`` is the actual spend as a share of the budget.
    """
    from datetime import datetime, timezone

    period = month or datetime.now(timezone.utc).strftime("%Y-%m")
    store.spend(period)  # refuses a month not written YYYY-MM before anything else
    jobs = [
        j
        for j in store.list_jobs(limit=100_000)
        if j.created_at.strftime("%Y-%m") == period
    ]
    if project is not None:
        names = [project]
    else:
        named = {j.project for j in jobs} | set(settings.monthly_budget_usd)
        names = sorted(n for n in named if n is not None)

    rows = [
        _spend_row(
            store,
            period,
            name,
            name,
            sum(1 for j in jobs if j.project == name),
            settings.monthly_budget_usd.get(name),
        )
        for name in names
    ]
    if project is None:
        rows.append(
            _spend_row(
                store,
                period,
                None,
                "(all projects)",
                len(jobs),
                settings.monthly_budget_usd.get(None),
            )
        )
    return rows


def _spend_row(
    store: Any,
    period: str,
    project: str | None,
    label: str,
    jobs: int,
    budget: Decimal | None,
) -> dict[str, Any]:
    actual = store.spend(period, project)
    used = None
    if budget is not None and budget > 0:
        used = (actual / budget * 100).quantize(Decimal("0.1"))
    return {
        "month": period,
        "project": label,
        "jobs": jobs,
        "quote_usd": store.spend(period, project, kind="quote"),
        "actual_usd": actual,
        "budget_usd": budget,
        "left_usd": None if budget is None else budget - actual,
        "used_pct": used,
    }


def _usd(value: Any) -> str:
    """Dollars with at least two decimals and up to micro-dollars (half up), so a local
    run's $0.0033 does not read as $0.00 and a per-second charge does not print 28
    digits; ``--json`` keeps the ledger's exact values."""
    if value is None:
        return "-"
    micro = _micro(value)
    whole, _, fraction = f"{micro:f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _micro(value: Any) -> Decimal:
    """`value` rounded half up to micro-dollars, however many digits it has."""
    with localcontext() as exact:
        exact.prec = 80  # room for a budget of 10**30 dollars to a millionth
        return Decimal(value).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


# --- report ----------------------------------------------------------------------------


def report(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="A run folder; with --across, run folders or their parents."
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="md, json or html.")
    ] = "md",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File to write (default: print).")
    ] = None,
    across: Annotated[
        bool, typer.Option("--across", help="Compare many runs: quality per dollar.")
    ] = False,
) -> None:
    """A run's cost report (quote, actual, every feasible provider), or many runs'."""
    from broker import reports
    from broker.errors import BrokerError

    if fmt not in reports.FORMATS:
        _fail(ValueError(f"unknown --format {fmt!r}; choose from md, json, html"))
    try:
        if across:
            text = reports.render_across(reports.across_runs(runs), fmt)  # type: ignore[arg-type]
        else:
            if len(runs) != 1:
                raise reports.ReportError(
                    f"give one run folder, or --across for {len(runs)} runs"
                )
            text = reports.render_run(runs[0], fmt)  # type: ignore[arg-type]
    except BrokerError as exc:
        _fail(exc)
        return
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:
        # a result.json or plan.json edited by hand, or written by another version
        first_line = (str(exc).strip().splitlines() or [""])[0]
        _fail(
            reports.ReportError(
                f"the run files in {', '.join(str(r) for r in runs)} cannot be read "
                f"as the broker writes them ({type(exc).__name__}: {first_line}); if "
                "they were edited, restore result.json and plan.json from a copy; if "
                "not, please report this with those two files"
            )
        )
        return

    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"Wrote {out}", highlight=False)
