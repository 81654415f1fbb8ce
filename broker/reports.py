"""What a run leaves behind for people: the run folder's result files and its report.

The run folder holds spec.json, schema.json, split.json and plan.json (written before any
provider is called), then result.json, leaderboard.csv, metrics.json and report.md. Reports
are built from those files alone, so a report can be made again from a folder later.
"""

from __future__ import annotations

import csv
import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

from broker.errors import BrokerError
from broker.spec import JobResult

logger = logging.getLogger(__name__)


def write_run_folder(folder: Path, result: JobResult) -> None:
    """Write result.json, metrics.json, leaderboard.csv and report.md into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(
        result.model_dump_json(indent=2) + "\n", encoding="utf-8"
    )
    metrics = {
        "metric": result.metric,
        "direction": result.metric_direction,
        "n": result.holdout_n,
        "values": result.holdout_metrics,
        "notes": result.holdout_notes,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", "utf-8")
    _write_leaderboard_csv(folder / "leaderboard.csv", result)
    (folder / "report.md").write_text(markdown_report(folder, result), encoding="utf-8")
    logger.info("run folder written: %s", folder)


def _write_leaderboard_csv(path: Path, result: JobResult) -> None:
    metric_names = sorted(
        {k for e in result.leaderboard for k in e.validation_metrics}
        | {k for e in result.leaderboard for k in e.metrics}
    )
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["rank", "model_id", "provider", "algorithm", "training_time_s"]
            + [f"validation_{m}" for m in metric_names]
            + [f"holdout_{m}" for m in metric_names]
        )
        for rank, entry in enumerate(result.leaderboard, start=1):
            writer.writerow(
                [
                    rank,
                    entry.model_id,
                    entry.provider,
                    entry.algorithm,
                    entry.training_time_s,
                ]
                + [entry.validation_metrics.get(m) for m in metric_names]
                + [entry.metrics.get(m) for m in metric_names]
            )


def _fmt_usd(value: Decimal | str | None, places: int = 4) -> str:
    if value is None:
        return "n/a"
    amount = Decimal(str(value))
    return f"${amount.quantize(Decimal(1).scaleb(-places))}"


def _fmt_metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def markdown_report(folder: Path, result: JobResult) -> str:
    """The run report as Markdown: choice, comparison, failovers, leaderboard, metrics."""
    from broker.metrics import get_metric

    spec = _read_json(folder / "spec.json") or {}
    schema = _read_json(folder / "schema.json") or {}
    plan = _read_json(folder / "plan.json") or {}
    lines = [f"# Run {result.job_id}", ""]
    lines += [
        f"- Data: `{spec.get('data', '?')}`, target `{spec.get('target', '?')}`, "
        f"task {result.task.value}",
        f"- Ran on: **{result.provider}** ({result.machine or '-'}, "
        f"{result.region or '-'}), state {result.state}",
        f"- Chosen because: {result.chosen_because or 'first feasible candidate'}",
        f"- Ranked by `{result.metric}` ({result.metric_direction})",
        "",
    ]

    dropped = [c for c in schema.get("columns", []) if c.get("dropped_reason")]
    if dropped:
        lines += ["## Columns left out", "", "| column | reason |", "|---|---|"]
        lines += [f"| `{c['name']}` | {c['dropped_reason']} |" for c in dropped]
        lines.append("")

    lines += _plan_section(plan)

    if result.failovers:
        lines += [
            "## Failovers",
            "",
            "| provider | reason | error | provider job |",
            "|---|---|---|---|",
        ]
        for f in result.failovers:
            message = f.message.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {f.provider} | {f.reason} | {f.error_type}: {message} | "
                f"{f.provider_job_id or '-'} |"
            )
        lines.append("")

    lines += [
        f"## Held-out metrics (n={result.holdout_n}, scored by the broker)",
        "",
        "| metric | value | direction |",
        "|---|---|---|",
    ]
    for name, value in result.holdout_metrics.items():
        try:
            direction: str = get_metric(name).direction
        except BrokerError:  # a provider-specific metric name
            direction = "?"
        lines.append(f"| {name} | {_fmt_metric(value)} | {direction} |")
    lines += [""] + [f"- {note}" for note in result.holdout_notes]
    if result.holdout_notes:
        lines.append("")

    lines += ["## Leaderboard", ""]
    shown = result.leaderboard[:20]
    lines += [
        f"| rank | model | algorithm | validation {result.metric} | "
        f"held-out {result.metric} | training s |",
        "|---|---|---|---|---|---|",
    ]
    for rank, e in enumerate(shown, start=1):
        train_s = "-" if e.training_time_s is None else f"{e.training_time_s:.1f}"
        lines.append(
            f"| {rank} | {e.model_id} | {e.algorithm} | "
            f"{_fmt_metric(e.validation_metrics.get(result.metric))} | "
            f"{_fmt_metric(e.metrics.get(result.metric))} | {train_s} |"
        )
    if len(result.leaderboard) > len(shown):
        lines.append(
            f"\n({len(result.leaderboard) - len(shown)} more in leaderboard.csv)"
        )
    lines.append("")

    cost = result.cost
    lines += [
        "## Cost",
        "",
        "| | USD |",
        "|---|---|",
        f"| quoted training (low) | {_fmt_usd(cost.estimated_training_usd)} |",
        f"| quoted training (high) | {_fmt_usd(cost.estimated_training_high_usd)} |",
        f"| actual | {_fmt_usd(cost.actual_usd)} |",
        f"| serving per month | {_fmt_usd(cost.estimated_serving_usd_per_month)} |",
        "",
        f"Billing: {cost.billing_unit or 'n/a'}; prices from {cost.price_source or 'n/a'}"
        + (" (user-supplied)" if cost.user_supplied_price else ""),
        "",
    ]
    return "\n".join(lines)


def _plan_section(plan: dict[str, Any]) -> list[str]:
    rows = plan.get("comparison") or []
    if not rows:
        return []
    lines = [
        "## Plan: what each provider would cost",
        "",
        "| provider | machine | region | training USD | serving USD/month | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.get('provider')} | {row.get('machine') or '-'} | "
            f"{row.get('region') or '-'} | {_fmt_usd(row.get('training_usd'), 2)} | "
            f"{_fmt_usd(row.get('serving_usd_per_month'), 2)} | {row.get('status')} |"
        )
    lines.append("")
    return lines
