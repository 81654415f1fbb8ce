"""The command line: the only layer of the broker that prints.

Heavy libraries (pandas, scikit-learn, torch, cloud SDKs) are imported inside the commands,
so ``automl-broker --help`` starts fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from broker.config import BrokerConfig
    from broker.planner import Plan
    from broker.runner import Broker
    from broker.spec import JobResult, JobSpec

app = typer.Typer(
    name="automl-broker",
    help="Run AutoML jobs wherever they are cheapest and available.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

DataArg = Annotated[
    Path | None, typer.Argument(help="CSV file (may be .csv.gz) to learn from.")
]
TargetOpt = Annotated[
    str | None, typer.Option("--target", "-t", help="Column to predict.")
]
TaskOpt = Annotated[
    str | None, typer.Option(help="auto, binary, multiclass or regression.")
]
MetricOpt = Annotated[str | None, typer.Option(help="Metric to rank models by.")]
ProvidersOpt = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated providers allowed: vertex,azure,sagemaker,h2o,local."
    ),
]
MaxUsdOpt = Annotated[
    str | None, typer.Option("--max-usd", help="Dollar cap for the job.")
]
RuntimeOpt = Annotated[
    int | None, typer.Option("--max-runtime", help="Runtime budget in seconds.")
]
StrategyOpt = Annotated[
    str | None,
    typer.Option(
        help="Local search strategy: random, grid, tpe, rl or evolution.",
    ),
]
PrunerOpt = Annotated[
    str | None,
    typer.Option(help="Local search pruning: none, median, asha or hyperband."),
]
PreferOpt = Annotated[
    str | None,
    typer.Option(help="Comma-separated providers to try first, in order, before cost."),
]
RegionOpt = Annotated[str | None, typer.Option(help="Comma-separated regions allowed.")]
HoursOpt = Annotated[
    str | None,
    typer.Option(
        "--hours-per-month",
        help="Hours per month the model will be served, for the serving cost "
        "(default 0: not served; 730 is always on).",
    ),
]
IgnoreOpt = Annotated[
    str | None, typer.Option(help="Comma-separated columns to leave out.")
]
SpecOpt = Annotated[
    Path | None, typer.Option("--spec", help="Job spec file (YAML/JSON).")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Broker settings file (YAML).")
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of the held-out split.")]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Log progress lines.")
]
FakesOpt = Annotated[
    str | None,
    typer.Option(
        "--fakes",
        help="Run the clouds against local fakes on 127.0.0.1 with a fault each, e.g. "
        "vertex=quota,azure=capacity,sagemaker=credentials (faults: ok, quota, capacity, "
        "credentials, throttle, server, invalid). No account needed.",
    ),
]


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _build_spec(
    *,
    data: Path | None,
    target: str | None,
    spec_file: Path | None,
    task: str | None,
    metric: str | None,
    providers: str | None,
    prefer: str | None,
    max_usd: str | None,
    max_runtime: int | None,
    region: str | None,
    hours_per_month: str | None,
    ignore: str | None,
    seed: int | None,
) -> JobSpec:
    from broker.errors import ConfigurationError
    from broker.spec import parse_spec, read_spec_file

    base: dict[str, Any] = {}
    if spec_file is not None:  # checked once, with the options below merged in
        base = read_spec_file(spec_file)
    if data is not None:
        base["data"] = data
    if target is not None:
        base["target"] = target
    if "data" not in base or "target" not in base:
        raise ConfigurationError(
            "give the data file and --target (or a --spec file that names both), e.g. "
            "`automl-broker run data.csv --target label`"
        )
    if task is not None:
        base["task"] = task
    if metric is not None:
        base["metric"] = metric
    if seed is not None:
        base["seed"] = seed
    if ignore is not None:
        base["ignore"] = _split(ignore)
    budget = _section(base, "budget")
    if max_usd is not None:
        budget["max_usd"] = max_usd
    if max_runtime is not None:
        budget["max_runtime_s"] = max_runtime
    base["budget"] = budget
    constraints = _section(base, "constraints")
    if providers is not None:
        constraints["providers"] = _split(providers)
    if prefer is not None:
        constraints["prefer"] = _split(prefer)
    if region is not None:
        constraints["regions"] = _split(region)
    base["constraints"] = constraints
    deployment = _section(base, "deployment")
    if hours_per_month is not None:
        deployment["hours_per_month"] = hours_per_month
    base["deployment"] = deployment
    return parse_spec(base)


def _section(base: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of the spec's `key` mapping, for options to be merged into."""
    from broker.errors import ConfigurationError

    value = base.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"invalid job spec: {key} must be a mapping of fields, got "
            f"{type(value).__name__}"
        )
    return dict(value)


def _with_local_options(spec: JobSpec, **options: str | None) -> JobSpec:
    """The spec with CLI options for the local search merged into its provider
    options (the spec file's own values give way to the command line's)."""
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return spec
    from broker.spec import parse_spec

    provider_options = {k: dict(v) for k, v in spec.provider_options.items()}
    provider_options.setdefault("local", {}).update(given)
    payload = spec.model_dump(exclude={"provider_options"})
    payload["provider_options"] = provider_options
    return parse_spec(payload)


def _make_broker(
    config: BrokerConfig,
    on_event: Any = None,
    providers: dict[str, Any] | None = None,
) -> Broker:
    from broker.runner import Broker
    from broker.store import JobStore

    store = JobStore(config.store) if config.store else None
    catalog = None
    if config.prices is not None:
        from cost_models.catalog import load_catalog

        catalog = load_catalog(override=config.prices)
    return Broker(
        store=store,
        providers=providers,
        catalog=catalog,
        provider_settings=config.providers,
        poll_interval_s=config.poll_interval_s,
        pending_timeout_s=config.pending_timeout_s,
        local_rate_usd_per_hour=config.local_rate_usd_per_hour,
        on_event=on_event,
        monthly_budgets=config.monthly_budget_usd,
    )


def _usd(value: Any, places: int | None = None) -> str:
    """Dollars for a table: cents from $1 up, four places below, so that a small but
    real cost never reads as $0.00."""
    if value is None:
        return "-"
    amount = Decimal(str(value))
    if places is None:
        places = 2 if abs(amount) >= 1 or amount == 0 else 4
    return f"${amount.quantize(Decimal(1).scaleb(-places))}"


def print_plan(plan: Plan) -> None:
    payload = plan.to_dict()
    table = Table(title="Plan: what each provider would cost", title_justify="left")
    for column in ("provider", "machine", "region"):
        table.add_column(column)
    table.add_column("training USD", justify="right")
    hours = payload.get("hours_per_month")
    table.add_column(
        "serving USD/month" + (f" ({hours} h)" if hours is not None else ""),
        justify="right",
    )
    table.add_column("status")
    for row in payload.get("comparison", []):
        status = row.get("status", "")
        style = (
            "bold green"
            if row.get("chosen")
            else ("" if status == "feasible" else "dim")
        )
        table.add_row(
            escape(str(row.get("provider"))),
            escape(str(row.get("machine") or "-")),
            escape(str(row.get("region") or "-")),
            _training_cell(row),
            _usd(row.get("serving_usd_per_month")),
            str(status),
            style=style,
        )
    console.print(table)
    console.print(plan.explanation(), markup=False, highlight=False)


def _training_cell(row: dict[str, Any]) -> str:
    low, high = row.get("training_usd_low"), row.get("training_usd")
    if low is not None and high is not None and Decimal(str(low)) != Decimal(str(high)):
        return f"{_usd(low)}–{_usd(high)}"
    return _usd(high)


def print_result(result: JobResult) -> None:
    from broker.metrics import get_metric

    board = Table(
        title=f"Leaderboard (ranked by {result.metric}, {result.metric_direction})",
        title_justify="left",
    )
    board.add_column("#", justify="right")
    board.add_column("model")
    board.add_column("algorithm")
    board.add_column(f"validation {result.metric}", justify="right")
    board.add_column(f"held-out {result.metric}", justify="right")
    board.add_column("train s", justify="right")
    for rank, entry in enumerate(result.leaderboard[:10], start=1):
        val = entry.validation_metrics.get(result.metric)
        test = entry.metrics.get(result.metric)
        board.add_row(
            str(rank),
            escape(entry.model_id),
            escape(entry.algorithm),
            "-" if val is None else f"{val:.4f}",
            "-" if test is None else f"{test:.4f}",
            "-" if entry.training_time_s is None else f"{entry.training_time_s:.1f}",
        )
    console.print(board)
    if len(result.leaderboard) > 10:
        console.print(
            f"({len(result.leaderboard) - 10} more models in leaderboard.csv)"
        )

    metrics = Table(
        title=f"Held-out metrics of the best model (n={result.holdout_n}, scored by the broker)",
        title_justify="left",
    )
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    metrics.add_column("direction")
    for name, value in result.holdout_metrics.items():
        metrics.add_row(
            name, "n/a" if value is None else f"{value:.4f}", get_metric(name).direction
        )
    console.print(metrics)
    for note in result.holdout_notes:
        console.print(f"[yellow]note:[/] {escape(note)}")

    cost = result.cost
    costs = Table(title="Cost", title_justify="left")
    costs.add_column("")
    costs.add_column("USD", justify="right")
    costs.add_row(
        "quoted training",
        f"{_usd(cost.estimated_training_usd, 4)} – "
        f"{_usd(cost.estimated_training_high_usd, 4)}",
    )
    costs.add_row("actual", _usd(cost.actual_usd, 4))
    costs.add_row("serving per month", _usd(cost.estimated_serving_usd_per_month))
    console.print(costs)
    for f in result.failovers:
        console.print(
            f"[yellow]failover:[/] {escape(f.provider)} ({escape(f.machine or '-')}, "
            f"{escape(f.region or '-')}): {escape(f.reason)} ({escape(f.error_type)})"
        )
    message, _ = outcome_line(result)
    console.print(message)


# Exit codes of `run`: 0 succeeded, 2 an error, 3 the job ended without finishing
# (cancelled, stopped by the provider, or detached and left for `resume`).
EXIT_UNFINISHED = 3


def outcome_line(result: JobResult) -> tuple[str, int]:
    """The run's last line and the command's exit code, by the job's final state."""
    where = f"[bold]{escape(result.provider or '-')}[/]"
    runtime = f"{result.runtime_s:.0f} s" if result.runtime_s is not None else "?"
    folder = f"Run folder: {escape(str(result.run_dir))}"
    if result.state == "succeeded":
        return f"Ran on {where} in {runtime}. {folder}", 0
    if result.state == "cancelled":
        return (
            f"[yellow]Cancelled[/] on {where} after {runtime}; what it had trained by "
            f"then is scored above. {folder}",
            EXIT_UNFINISHED,
        )
    if result.state == "detached":
        return (
            f"[yellow]Detached[/] from {where}: the job may still run there; "
            f"`automl-broker resume` reattaches to it. {folder}",
            EXIT_UNFINISHED,
        )
    return (
        f"[yellow]Ended as {result.state}[/] on {where} after {runtime}. {folder}",
        EXIT_UNFINISHED,
    )


def _fail(exc: Exception) -> None:
    err_console.print(
        f"[bold red]error:[/] {type(exc).__name__}: {escape(_masked(exc))}",
        highlight=False,
    )
    raise typer.Exit(code=2)


@contextmanager
def _shown_warnings() -> Iterator[None]:
    """Show the broker's warnings as one short line each, once, instead of Python's
    default format with a source line."""
    import warnings

    from broker.errors import BrokerWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BrokerWarning)
        try:
            yield
        finally:
            seen: set[str] = set()
            for item in caught:
                text = f"{item.category.__name__}: {_masked(item.message)}"
                if text not in seen:
                    seen.add(text)
                    err_console.print(
                        f"[yellow]warning:[/] {escape(text)}", highlight=False
                    )


def _masked(value: object) -> str:
    """`value` as text with secret shapes masked, for anything shown to the user."""
    from broker.redact import redact_text

    return redact_text(str(value))


def _setup_logging(verbose: bool) -> None:
    """Log to stderr through a handler that masks secrets; every command gets it at
    WARNING, and `--verbose` raises it to INFO."""
    from rich.logging import RichHandler

    from broker.redact import RedactingFilter

    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    if any(getattr(h, "broker_cli", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = RichHandler(console=err_console, show_path=False, show_time=verbose)
    handler.broker_cli = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s")


@app.command()
def plan(
    data: DataArg = None,
    target: TargetOpt = None,
    task: TaskOpt = None,
    metric: MetricOpt = None,
    providers: ProvidersOpt = None,
    prefer: PreferOpt = None,
    max_usd: MaxUsdOpt = None,
    max_runtime: RuntimeOpt = None,
    region: RegionOpt = None,
    hours_per_month: HoursOpt = None,
    ignore: IgnoreOpt = None,
    seed: SeedOpt = None,
    spec: SpecOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan as JSON.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show what every provider would cost for the job and which one the broker picks."""
    from broker import intake
    from broker.config import load_config
    from broker.errors import BrokerError

    _setup_logging(verbose)
    try:
        job_spec = _build_spec(
            data=data,
            target=target,
            spec_file=spec,
            task=task,
            metric=metric,
            providers=providers,
            prefer=prefer,
            max_usd=max_usd,
            max_runtime=max_runtime,
            region=region,
            hours_per_month=hours_per_month,
            ignore=ignore,
            seed=seed,
        )
        broker = _make_broker(load_config(config))
        with _shown_warnings():
            dataset = intake.load_dataset(job_spec)
            the_plan = broker.plan_for(job_spec, dataset)
    except BrokerError as exc:
        _fail(exc)
        return
    if as_json:
        import json

        console.print_json(json.dumps(the_plan.to_dict(), default=str))
    else:
        print_plan(the_plan)


@app.command()
def run(
    data: DataArg = None,
    target: TargetOpt = None,
    task: TaskOpt = None,
    metric: MetricOpt = None,
    providers: ProvidersOpt = None,
    prefer: PreferOpt = None,
    max_usd: MaxUsdOpt = None,
    max_runtime: RuntimeOpt = None,
    region: RegionOpt = None,
    hours_per_month: HoursOpt = None,
    ignore: IgnoreOpt = None,
    seed: SeedOpt = None,
    spec: SpecOpt = None,
    config: ConfigOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run folder (default runs/JOB_ID)."),
    ] = None,
    fakes: FakesOpt = None,
    strategy: StrategyOpt = None,
    pruner: PrunerOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Plan the job, run it on the best available provider, and report the results."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from broker.config import load_config
    from broker.errors import BrokerError, ConfigurationError

    _setup_logging(verbose)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    )
    bar: dict[str, Any] = {}

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        if kind == "plan":
            print_plan(payload["plan"])
            progress.start()
        elif kind == "attempt":
            candidate = payload["candidate"]
            # the machine and region tell apart two attempts on one provider
            parts = [candidate.provider, candidate.machine]
            if candidate.region and candidate.region != "local":
                parts.append(candidate.region)
            where = " ".join(str(part) for part in parts if part)
            bar["id"] = progress.add_task(escape(where), total=1.0, detail="submitting")
        elif kind == "status" and "id" in bar:
            status = payload["status"]
            done = status.progress if status.progress is not None else 0.0
            detail = _masked(status.message or status.state.value)[:70]
            progress.update(bar["id"], completed=min(done, 1.0), detail=escape(detail))
        elif kind == "failover" and "id" in bar:
            record = payload["record"]
            progress.update(
                bar["id"], detail=f"[red]failed over: {escape(_masked(record.reason))}"
            )
            progress.stop_task(bar["id"])
        elif kind == "result" and "id" in bar:
            progress.update(bar["id"], completed=1.0, detail="done")

    try:
        job_spec = _build_spec(
            data=data,
            target=target,
            spec_file=spec,
            task=task,
            metric=metric,
            providers=providers,
            prefer=prefer,
            max_usd=max_usd,
            max_runtime=max_runtime,
            region=region,
            hours_per_month=hours_per_month,
            ignore=ignore,
            seed=seed,
        )
        job_spec = _with_local_options(job_spec, strategy=strategy, pruner=pruner)
        with ExitStack() as stack, _shown_warnings():
            fake_providers = None
            if fakes is not None:
                from broker.testing.fleet import fake_fleet, parse_faults

                faults = parse_faults(fakes)
                try:
                    fleet = stack.enter_context(fake_fleet(faults))
                except ImportError as exc:
                    raise ConfigurationError(
                        f"the cloud fakes need the cloud SDKs and moto ({exc}); install "
                        "them with: .venv/bin/pip install -e '.[all,dev]'"
                    ) from None
                fake_providers = fleet.providers
                err_console.print(
                    "[cyan]fakes:[/] "
                    + ", ".join(f"{k} ({v})" for k, v in fleet.faults.items())
                    + " on 127.0.0.1"
                )
            broker = _make_broker(load_config(config), on_event, fake_providers)
            stack.callback(broker.close)
            result = broker.run(job_spec, run_dir=out)
    except BrokerError as exc:
        progress.stop()
        _fail(exc)
        return
    except KeyboardInterrupt:
        progress.stop()
        err_console.print(
            "[red]interrupted[/]; the job stays in the store for `resume`"
        )
        raise typer.Exit(code=130) from None
    progress.stop()
    print_result(result)
    _, code = outcome_line(result)
    if code:
        raise typer.Exit(code=code)


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `run`.")],
    data: Annotated[
        Path | None,
        typer.Argument(help="CSV to predict on; default: the run's held-out rows."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Predictions CSV to write.")
    ] = None,
) -> None:
    """Predict with a run's saved model; scores the rows too when they carry the target."""
    from broker.errors import BrokerError
    from broker.predict import predict_from_run

    try:
        with _shown_warnings():
            outcome = predict_from_run(run_dir, data, out)
    except BrokerError as exc:
        _fail(exc)
        return
    console.print(f"Wrote {outcome.n} predictions to {escape(str(outcome.path))}")
    if outcome.metrics is not None:
        table = Table(
            title=f"Metrics on these rows (n={outcome.metrics.n})", title_justify="left"
        )
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in outcome.metrics.values.items():
            table.add_row(name, "n/a" if value is None else f"{value:.4f}")
        console.print(table)


def _version(value: bool) -> None:
    if value:
        from broker import __version__

        console.print(f"automl-broker {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Run AutoML jobs wherever they are cheapest and available."""
    _setup_logging(verbose=False)


def _register_commands() -> None:
    from broker.commands import jobs, money

    money.register(app)
    jobs.register(app, make_broker=_broker_from_config)


def _broker_from_config(config_path: Path | None) -> Broker:
    from broker.config import load_config

    return _make_broker(load_config(config_path))


_register_commands()


def main() -> None:
    """Entry point of the `automl-broker` command."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
