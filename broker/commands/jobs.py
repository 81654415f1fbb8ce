"""The job commands: ``list``, ``status``, ``logs``, ``cancel`` and ``resume``.

They read the job store (``$AUTOML_BROKER_HOME/jobs.db`` unless the config names
another), so they work from any process: a second terminal, or after the one that ran
the job died. ``list`` and ``status`` take ``--watch``, which refreshes the table until
the jobs end (or ``--timeout`` passes); ``logs --follow`` prints events as they come.

Call :func:`register` on the CLI's Typer app to add them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from broker.runner import Broker
    from broker.store import Event, JobRecord, JobStore

BrokerFactory = Callable[[Path | None], "Broker"]

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Broker settings file (YAML).")
]
JobArg = Annotated[str, typer.Argument(help="The job id, as `list` shows it.")]
WatchOpt = Annotated[
    bool, typer.Option("--watch", "-w", help="Refresh until the jobs end.")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Stop watching after this many seconds.")
]
IntervalOpt = Annotated[
    float, typer.Option("--interval", help="Seconds between refreshes.")
]

_factory: dict[str, BrokerFactory] = {}


def register(app: typer.Typer, *, make_broker: BrokerFactory | None = None) -> None:
    """Add ``list``, ``status``, ``logs``, ``cancel`` and ``resume`` to `app`.

    Args:
        app: The CLI's Typer app.
        make_broker: Builds the :class:`broker.runner.Broker` the commands use, from
            the ``--config`` path; tests pass one over fake providers. The default
            builds it from the user's config.
    """
    _factory["make"] = make_broker or _default_broker
    app.command("list")(list_jobs)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("cancel")(cancel)
    app.command("resume")(resume)


# --- commands --------------------------------------------------------------------------


def list_jobs(
    state: Annotated[
        str | None, typer.Option(help="Only jobs in this state (e.g. running).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many jobs.")] = 20,
    watch: WatchOpt = False,
    timeout: TimeoutOpt = 3600.0,
    interval: IntervalOpt = 2.0,
    config: ConfigOpt = None,
) -> None:
    """List jobs, newest first: state, provider, cost and age."""
    from broker.states import JobState

    known = [s.value for s in JobState]
    if state is not None and state not in known:
        raise typer.BadParameter(
            f"unknown state {state!r}; choose from {', '.join(known)}",
            param_hint="--state",
        )
    store = _store(config)

    def render() -> tuple[RenderableType, bool]:
        jobs = _guarded(lambda: store.list_jobs(state=state, limit=limit))
        done = all(job.terminal for job in jobs)
        return _jobs_table(store, jobs), done

    _show(render, watch=watch, timeout=timeout, interval=interval)


def status(
    job_id: JobArg,
    watch: WatchOpt = False,
    timeout: TimeoutOpt = 3600.0,
    interval: IntervalOpt = 2.0,
    config: ConfigOpt = None,
) -> None:
    """Show one job: its state, lease, attempts, cost and result."""
    store = _store(config)

    def render() -> tuple[RenderableType, bool]:
        record = _guarded(lambda: store.get(job_id))
        return _status_view(store, record), record.terminal

    _show(render, watch=watch, timeout=timeout, interval=interval)


def logs(
    job_id: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Print new events until the end.")
    ] = False,
    timeout: TimeoutOpt = 3600.0,
    interval: IntervalOpt = 2.0,
    config: ConfigOpt = None,
) -> None:
    """Show the job's history: every state change and recorded fact, oldest first."""
    import time

    store = _store(config)
    _guarded(lambda: store.get(job_id))  # an unknown job is an error, not an empty log
    events = _guarded(lambda: store.events(job_id))
    console = _console()
    console.print(_events_table(job_id, events))
    if not follow:
        return

    deadline = time.monotonic() + timeout
    seen = events[-1].event_id if events else 0
    while not store.get(job_id).terminal:
        if time.monotonic() >= deadline:
            console.print(f"stopped following after {timeout:g} s; the job goes on")
            return
        time.sleep(interval)
        new = [e for e in store.events(job_id) if e.event_id > seen]
        if new:
            console.print(_events_table(job_id, new, title=False))
            seen = new[-1].event_id
    new = [e for e in store.events(job_id) if e.event_id > seen]
    if new:
        console.print(_events_table(job_id, new, title=False))


def cancel(
    job_id: JobArg,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow the job until the cancel has landed."),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Cancel a job. The broker driving it (in any process) sends the cancel; when no
    broker drives it, this command sends it."""
    from broker.states import JobState

    broker = _broker(config)
    asked = _guarded(lambda: broker.cancel(job_id))
    record = broker.store.get(job_id)
    console = _console()
    if not asked:
        console.print(
            f"Job {job_id} is {record.state.value}: nothing to cancel, or a cancel "
            "is already on its way."
        )
        return
    if record.state is JobState.CANCELLING and wait:
        result = _guarded(lambda: broker.resume(job_id))
        console.print(f"Job {job_id} ended {result.state}.")
        return
    console.print(f"Cancel of job {job_id} recorded; it is {record.state.value}.")
    if record.state is JobState.CANCELLING and record.owner is None:
        console.print(f"`automl-broker resume {job_id}` follows it to the end.")


def resume(
    job_id: Annotated[
        str | None,
        typer.Argument(help="The job to resume; all unfinished jobs when left out."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Reattach to jobs a stopped broker left running and follow them to the end,
    without submitting any of them twice."""
    broker = _broker(config)
    console = _console()
    if job_id is not None:
        results = [_guarded(lambda: broker.resume(job_id))]
    else:
        results = _guarded(lambda: broker.resume())
    if not results:
        console.print("Nothing to resume: no unfinished job is free to pick up.")
        return
    from rich.table import Table

    table = Table(title="Resumed jobs", title_justify="left")
    for column in ("job", "state", "provider", "actual USD"):
        table.add_column(column)
    for result in results:
        table.add_row(
            result.job_id,
            result.state,
            result.provider or "-",
            _usd(result.cost.actual_usd),
        )
    console.print(table)


# --- rendering -------------------------------------------------------------------------


def _jobs_table(store: JobStore, jobs: list[JobRecord]) -> RenderableType:
    from rich.table import Table

    table = Table(title=f"Jobs ({len(jobs)})", title_justify="left")
    for column in ("job", "name", "state", "provider", "actual USD", "created"):
        table.add_column(column, justify="right" if column == "actual USD" else "left")
    for job in jobs:
        attempts = store.attempts(job.job_id)
        provider = attempts[-1].provider if attempts else "-"
        costs = [a.cost_usd for a in attempts if a.cost_usd is not None]
        table.add_row(
            job.job_id,
            job.name or "-",
            _state_text(job),
            provider,
            _usd(sum(costs)) if costs else "-",
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
        )
    return table


def _status_view(store: JobStore, record: JobRecord) -> RenderableType:
    from rich.console import Group
    from rich.table import Table

    facts = Table(title=f"Job {record.job_id}", title_justify="left", show_header=False)
    facts.add_column("field")
    facts.add_column("value")
    facts.add_row("state", _state_text(record))
    facts.add_row("name", record.name or "-")
    facts.add_row("created", f"{record.created_at:%Y-%m-%d %H:%M:%S}")
    facts.add_row("updated", f"{record.updated_at:%Y-%m-%d %H:%M:%S}")
    facts.add_row("run folder", record.run_dir or "-")
    driver = record.owner or "nobody"
    if record.owner and record.lease_expires_at is not None:
        driver += f" (lease until {record.lease_expires_at:%H:%M:%S})"
    facts.add_row("driven by", driver)
    result = record.result or {}
    if result.get("holdout_metrics"):
        metric = result.get("metric")
        value = result["holdout_metrics"].get(metric)
        facts.add_row(f"held-out {metric}", "n/a" if value is None else f"{value:.4f}")
    error = record.error or result.get("error")
    if error:
        facts.add_row("error", f"{error.get('type')}: {error.get('message')}")

    attempts = Table(title="Attempts", title_justify="left")
    for column in ("#", "provider", "machine", "region", "provider job", "state"):
        attempts.add_column(column)
    attempts.add_column("actual USD", justify="right")
    for a in store.attempts(record.job_id):
        attempts.add_row(
            str(a.seq),
            a.provider,
            a.machine or "-",
            a.region or "-",
            a.provider_job_id or "-",
            a.state.value,
            _usd(a.cost_usd),
        )
    return Group(facts, attempts)


def _events_table(
    job_id: str, events: list[Event], *, title: bool = True
) -> RenderableType:
    from rich.table import Table

    table = Table(
        title=f"Events of job {job_id}" if title else None,
        title_justify="left",
        show_header=title,
    )
    for column in ("at", "event", "change", "attempt", "detail"):
        table.add_column(column)
    for event in events:
        change = ""
        if event.to_state is not None:
            before = event.from_state.value if event.from_state else ""
            change = f"{before} -> {event.to_state.value}".strip()
        detail = ", ".join(
            f"{k}={_detail_value(k, v)}" for k, v in (event.detail or {}).items()
        )
        table.add_row(
            f"{event.at:%Y-%m-%d %H:%M:%S}",
            event.kind,
            change,
            event.attempt_id or "",
            detail,
        )
    return table


def _show(
    render: Callable[[], tuple[RenderableType, bool]],
    *,
    watch: bool,
    timeout: float,
    interval: float,
) -> None:
    """Print once, or refresh a live view until `render` says it is done."""
    import time

    from rich.live import Live

    console = _console()
    view, done = render()
    if not watch:
        console.print(view)
        return

    deadline = time.monotonic() + timeout
    with Live(view, console=console, auto_refresh=False) as live:
        while not done and time.monotonic() < deadline:
            time.sleep(min(interval, max(deadline - time.monotonic(), 0)))
            view, done = render()
            live.update(view, refresh=True)
    if not done:
        console.print(f"stopped watching after {timeout:g} s; the jobs go on")


# --- plumbing --------------------------------------------------------------------------


def _default_broker(config_path: Path | None) -> Broker:
    from broker.cli import _broker_from_config

    return _broker_from_config(config_path)


def _broker(config_path: Path | None) -> Broker:
    make = _factory.get("make", _default_broker)
    return _guarded(lambda: make(config_path))


def _store(config_path: Path | None) -> JobStore:
    """The job store the config names, opened now so a broken file is one red line."""
    broker = _broker(config_path)
    return _guarded(lambda: broker.store)  # type: ignore[no-any-return]


def _guarded(call: Callable[[], Any]) -> Any:
    """Run `call`; a broker error becomes one red line and exit code 2."""
    from broker.errors import BrokerError
    from broker.redact import redact_text

    try:
        return call()
    except BrokerError as exc:
        from rich.text import Text

        _console(stderr=True).print(
            Text.assemble(
                ("error:", "bold red"),
                f" {type(exc).__name__}: {redact_text(str(exc))}",
            ),
            highlight=False,
        )
        raise typer.Exit(code=2) from None


def _console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # job names, ids, errors and paths are the user's: no markup is read in them
    return Console(stderr=stderr, markup=False, width=None if stream.isatty() else 120)


def _state_text(record: JobRecord) -> str:
    if record.secondary and record.secondary != record.state.value:
        return f"{record.state.value} ({record.secondary})"
    return record.state.value


def _usd(value: Any) -> str:
    """Dollars as every command shows them: at least two decimals, up to a millionth."""
    from decimal import Decimal

    from broker.commands.money import _usd as shown

    return shown(None if value is None else Decimal(str(value)))


def _detail_value(key: str, value: Any) -> str:
    """An event detail's value; amounts of money in plain decimals, not 5E-7."""
    if key.endswith("_usd") and value is not None:
        from decimal import Decimal, InvalidOperation

        try:
            return f"{Decimal(str(value)):f}"
        except InvalidOperation:
            return str(value)
    return str(value)
