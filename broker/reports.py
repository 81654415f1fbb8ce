"""What a run leaves behind for people: the run folder's result files and its reports.

The run folder holds spec.json, schema.json, split.json and plan.json (written before any
provider is called), then result.json, leaderboard.csv, metrics.json and the reports:
report.md, report.json and report.html. Reports are built from those files alone, so a
report can be made again from a folder later (``automl-broker report RUN_DIR``).

Each report sets what the job cost where it ran (the quote's low and high figures and the
actual bill) against what every other feasible provider was quoted, from plan.json and
result.json. :func:`across_runs` compares many runs: held-out quality, cost and quality
per dollar. The HTML reports are self-contained: inline CSS and hand-drawn SVG charts,
no script, no font or image from the network.
"""

from __future__ import annotations

import csv
import html
import json
import logging
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

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
    summary = run_summary(folder)
    (folder / "report.json").write_text(
        json.dumps(summary, indent=2) + "\n", encoding="utf-8"
    )
    (folder / "report.html").write_text(html_report(summary), encoding="utf-8")
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
            "| provider | machine | region | reason | error | provider job |",
            "|---|---|---|---|---|---|",
        ]
        for f in result.failovers:
            message = f.message.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {f.provider} | {f.machine or '-'} | {f.region or '-'} | {f.reason} | "
                f"{f.error_type}: {message} | {f.provider_job_id or '-'} |"
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

    lines += _alternatives_section(folder)

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
            f"{row.get('region') or '-'} | {_range_text(_quote_range(row))} | "
            f"{_fmt_usd(row.get('serving_usd_per_month'))} | {row.get('status')} |"
        )
    lines.append("")
    return lines


def _alternatives_section(folder: Path) -> list[str]:
    try:
        summary = run_summary(folder)
    except ReportError:
        return []
    rows = summary["alternatives"]
    if not rows:
        return []
    lines = [
        "## What it cost here against every other feasible provider",
        "",
        "| provider | machine | region | quoted training USD | actual USD | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['provider']} | {row['machine'] or '-'} | {row['region'] or '-'} "
            f"| {_range_text(row)} | {_fmt_usd(row['actual_usd'])} | "
            f"{'ran here' if row['ran'] else row['status']} |"
        )
    lines.append("")
    return lines


# --- structured reports ----------------------------------------------------------------

Format = Literal["md", "json", "html"]
FORMATS: tuple[Format, ...] = ("md", "json", "html")
# Chart colours; tests look for them in a screenshot, so they appear nowhere else.
RAN_COLOUR = "#1f6feb"
QUOTE_COLOUR = "#9aa5b1"
ACTUAL_COLOUR = "#e8590c"


class ReportError(BrokerError):
    """A run folder lacks the files a report is made from."""


def run_summary(folder: str | Path) -> dict[str, Any]:
    """The run's cost and quality as JSON-ready data, from plan.json and result.json.

    Args:
        folder: a run folder written by the broker.

    Returns:
        ``job_id``, ``state``, where it ran, the ``metric`` and its held-out
        ``metric_value``, ``cost`` (quote low/high, actual, serving, billing unit),
        ``alternatives`` (one row per provider in the plan's comparison, the one that
        ran marked ``ran`` with its actual cost), ``skipped`` (providers left out and
        why) and ``quality_per_usd`` (held-out metric per actual dollar, for metrics
        where higher is better). Money is exact decimal text.

    Raises:
        ReportError: result.json is missing or not JSON.
    """
    folder = Path(folder)
    result = _read_json_strict(folder / "result.json")
    plan = _read_json(folder / "plan.json") or {}
    cost = result.get("cost") or {}
    metric = result.get("metric")
    value = (result.get("holdout_metrics") or {}).get(metric)
    actual = _dec(cost.get("actual_usd"))

    alternatives, skipped = [], []
    for row in plan.get("comparison") or []:
        ran = row.get("provider") == result.get("provider")
        entry = {
            "provider": row.get("provider"),
            "machine": row.get("machine"),
            "region": row.get("region"),
            "status": row.get("status"),
            "training_usd_low": row.get("training_usd_low"),
            "training_usd_high": row.get("training_usd_high", row.get("training_usd")),
            "serving_usd_per_month": row.get("serving_usd_per_month"),
            "total_usd": row.get("total_usd"),
            "ran": ran,
            "actual_usd": _text(actual) if ran else None,
        }
        if ran:
            # What ran is what the result says, even after a failover.
            entry.update(
                machine=result.get("machine") or entry["machine"],
                region=result.get("region") or entry["region"],
                training_usd_low=cost.get("estimated_training_usd"),
                training_usd_high=cost.get("estimated_training_high_usd"),
            )
        if ran or row.get("status") in ("chosen", "feasible"):
            alternatives.append(entry)
        else:
            skipped.append({**entry, "reason": row.get("detail") or row.get("status")})

    return {
        "job_id": result.get("job_id"),
        "run_dir": str(folder),
        "state": result.get("state"),
        "provider": result.get("provider"),
        "machine": result.get("machine"),
        "region": result.get("region"),
        "task": result.get("task"),
        "metric": metric,
        "metric_direction": result.get("metric_direction"),
        "metric_value": value,
        "runtime_s": result.get("runtime_s"),
        "failovers": len(result.get("failovers") or []),
        "cost": {
            "currency": cost.get("currency", "USD"),
            "quoted_training_usd_low": cost.get("estimated_training_usd"),
            "quoted_training_usd_high": cost.get("estimated_training_high_usd"),
            "actual_usd": cost.get("actual_usd"),
            "serving_usd_per_month": cost.get("estimated_serving_usd_per_month"),
            "billing_unit": cost.get("billing_unit"),
            "price_source": cost.get("price_source"),
            "user_supplied_price": bool(cost.get("user_supplied_price")),
            "within_quote": _within(
                actual, _dec(cost.get("estimated_training_high_usd"))
            ),
        },
        "alternatives": alternatives,
        "skipped": skipped,
        "quality_per_usd": _quality_per_usd(
            value, actual, result.get("metric_direction")
        ),
    }


def render_run(folder: str | Path, fmt: Format = "md") -> str:
    """The run report in `fmt`: ``md`` (the run's report.md, rebuilt), ``json`` or
    ``html``."""
    folder = Path(folder)
    if fmt == "json":
        return json.dumps(run_summary(folder), indent=2) + "\n"
    if fmt == "html":
        return html_report(run_summary(folder))
    if fmt == "md":
        from broker.spec import JobResult

        payload = _read_json_strict(folder / "result.json")
        if payload.get("state") == "failed" and "error" in payload:
            return failure_markdown(payload)
        return markdown_report(folder, JobResult.model_validate(payload))
    raise ValueError(f"unknown report format {fmt!r}; choose from {list(FORMATS)}")


def failure_markdown(payload: dict[str, Any]) -> str:
    """The report of a failed job: its error, failovers and what each attempt cost."""
    error = payload.get("error") or {}
    lines = [
        f"# Job {payload.get('job_id', '?')}: failed",
        "",
        f"{error.get('type', 'Error')}: {error.get('message', '')}",
        "",
        "| attempt | provider | machine | region | state | cost USD |",
        "|---|---|---|---|---|---|",
    ]
    for number, attempt in enumerate(payload.get("attempts") or [], start=1):
        cost = _dec(attempt.get("cost_usd"))
        lines.append(
            f"| {number} | {attempt.get('provider')} | {attempt.get('machine') or '-'} "
            f"| {attempt.get('region') or '-'} | {attempt.get('state')} | "
            f"{_fmt_usd(cost)} |"
        )
    failovers = payload.get("failovers") or []
    if failovers:
        lines += ["", "Failovers:", ""]
        lines += [
            f"- {f.get('provider')} ({f.get('region') or '-'}): {f.get('reason')}: "
            f"{f.get('message')}"
            for f in failovers
        ]
    return "\n".join(lines) + "\n"


def across_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Summaries of many runs: each path is a run folder or a folder of run folders.

    Raises:
        ReportError: a path holds no run folder.
    """
    summaries: list[dict[str, Any]] = []
    for path in paths:
        path = Path(path)
        folders = (
            [path]
            if (path / "result.json").is_file()
            else sorted(p.parent for p in path.glob("*/result.json"))
        )
        if not folders:
            raise ReportError(
                f"{str(path)!r} is not a run folder and holds none (no result.json); "
                "give run folders written by `automl-broker run`"
            )
        summaries.extend(run_summary(folder) for folder in folders)
    return summaries


def render_across(summaries: Sequence[dict[str, Any]], fmt: Format = "md") -> str:
    """The comparison of many runs in `fmt`."""
    if fmt == "json":
        return json.dumps({"runs": list(summaries)}, indent=2) + "\n"
    if fmt == "html":
        return across_html(summaries)
    if fmt == "md":
        return across_markdown(summaries)
    raise ValueError(f"unknown report format {fmt!r}; choose from {list(FORMATS)}")


def across_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"# {len(summaries)} runs: quality per dollar",
        "",
        "| run | provider | metric | held-out | actual USD | quoted USD | "
        "quality per USD |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        cost = s["cost"]
        lines.append(
            f"| {s['job_id']} | {s['provider'] or '-'} | {s['metric']} | "
            f"{_fmt_metric(s['metric_value'])} | {_fmt_usd(cost['actual_usd'])} | "
            f"{_range_text(_quote_row(cost))} | {_per_usd_text(s)} |"
        )
    lines += ["", _PER_USD_NOTE, ""]
    return "\n".join(lines)


_PER_USD_NOTE = (
    "Quality per USD is the held-out metric divided by the actual cost, for metrics "
    "where higher is better; for error metrics (lower is better) compare the metric and "
    "cost columns."
)


# --- HTML -----------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1b1f24; margin: 24px 32px;
       max-width: 1080px; background: #ffffff; }
h1 { font-size: 22px; margin: 0 0 8px; }
h2 { font-size: 17px; margin: 24px 0 8px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ran td { font-weight: 600; }
.legend span { display: inline-block; margin-right: 18px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px;
          vertical-align: -1px; }
.note { color: #57606a; font-size: 13px; }
"""


def html_report(summary: dict[str, Any]) -> str:
    """One run's report as a self-contained HTML page with an inline SVG chart."""
    cost = summary["cost"]
    title = f"Run {summary['job_id']}"
    facts = [
        (
            "ran on",
            f"{summary['provider'] or '-'} ({summary['machine'] or '-'}, "
            f"{summary['region'] or '-'})",
        ),
        ("state", summary["state"]),
        (f"held-out {summary['metric']}", _fmt_metric(summary["metric_value"])),
        ("quoted training", _range_text(_quote_row(cost))),
        ("actual", _fmt_usd(cost["actual_usd"])),
        ("serving per month", _fmt_usd(cost["serving_usd_per_month"])),
        ("quality per USD", _per_usd_text(summary)),
        ("billing", cost["billing_unit"] or "n/a"),
    ]
    body = [
        f"<h1>{_e(title)}</h1>",
        "<h2>Training cost: quote and actual here, quotes elsewhere</h2>",
        _legend(),
        cost_chart_svg(summary["alternatives"]),
        "<h2>Summary</h2>",
        _table(["", "value"], [[_e(k), _e(v)] for k, v in facts], num_cols=()),
        "<h2>Every feasible provider</h2>",
        _table(
            [
                "provider",
                "machine",
                "region",
                "quoted training USD",
                "actual USD",
                "serving USD/month",
                "status",
            ],
            [
                [
                    _e(r["provider"]),
                    _e(r["machine"] or "-"),
                    _e(r["region"] or "-"),
                    _e(_range_text(r)),
                    _e(_fmt_usd(r["actual_usd"])),
                    _e(_fmt_usd(r["serving_usd_per_month"], 2)),
                    _e("ran here" if r["ran"] else r["status"]),
                ]
                for r in summary["alternatives"]
            ],
            num_cols=(3, 4, 5),
            marked=[r["ran"] for r in summary["alternatives"]],
        ),
    ]
    if summary["skipped"]:
        body += [
            "<h2>Providers left out</h2>",
            _table(
                ["provider", "quoted training USD", "why"],
                [
                    [_e(r["provider"]), _e(_range_text(r)), _e(r["reason"])]
                    for r in summary["skipped"]
                ],
                num_cols=(1,),
            ),
        ]
    return _page(title, body)


def across_html(summaries: Sequence[dict[str, Any]]) -> str:
    """Many runs as a self-contained HTML page: quality per dollar and cost charts."""
    title = f"{len(summaries)} runs: quality per dollar"
    per_usd = [
        (f"{s['job_id']} ({s['provider']})", _dec(s["quality_per_usd"]))
        for s in summaries
    ]
    costs = [
        (f"{s['job_id']} ({s['provider']})", _dec(s["cost"]["actual_usd"]))
        for s in summaries
    ]
    body = [
        f"<h1>{_e(title)}</h1>",
        "<h2>Held-out quality per dollar</h2>",
        bar_chart_svg(per_usd, chart_id="quality-chart", unit=""),
        "<h2>Actual cost per run</h2>",
        bar_chart_svg(costs, chart_id="cost-chart", unit="$"),
        "<h2>Runs</h2>",
        _table(
            [
                "run",
                "provider",
                "metric",
                "held-out",
                "actual USD",
                "quoted USD",
                "quality per USD",
            ],
            [
                [
                    _e(s["job_id"]),
                    _e(s["provider"] or "-"),
                    _e(s["metric"]),
                    _e(_fmt_metric(s["metric_value"])),
                    _e(_fmt_usd(s["cost"]["actual_usd"])),
                    _e(_range_text(_quote_row(s["cost"]))),
                    _e(_per_usd_text(s)),
                ]
                for s in summaries
            ],
            num_cols=(3, 4, 5, 6),
        ),
        f'<p class="note">{_e(_PER_USD_NOTE)}</p>',
    ]
    return _page(title, body)


def cost_chart_svg(rows: Sequence[dict[str, Any]]) -> str:
    """Horizontal bars: each provider's quoted training range, and the actual cost
    where the job ran. Drawn by hand so the page needs nothing from the network."""
    if not rows:
        return '<p class="note">No feasible provider in the plan.</p>'
    label_w, bar_w, row_h, top = 260, 560, 34, 10
    values = [
        v
        for r in rows
        for v in (_dec(r["training_usd_high"]), _dec(r["actual_usd"]))
        if v is not None
    ]
    top_usd = max(values, default=Decimal(0)) or Decimal(1)
    height = top + row_h * len(rows) + 30
    width = label_w + bar_w + 300
    parts = [
        f'<svg id="cost-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        'aria-label="training cost by provider">'
    ]
    for index, row in enumerate(rows):
        y = top + index * row_h
        label = f"{row['provider']} {row['machine'] or ''} {row['region'] or ''}"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" '
            f'font-size="13" fill="#1b1f24">{_e(label.strip())}</text>'
        )
        high = _dec(row["training_usd_high"])
        if high is not None:
            length = _scale(high, top_usd, bar_w)
            colour = RAN_COLOUR if row["ran"] else QUOTE_COLOUR
            parts.append(
                f'<rect class="quote" x="{label_w}" y="{y + 4}" width="{length}" '
                f'height="12" fill="{colour}"/>'
            )
        actual = _dec(row["actual_usd"])
        if actual is not None:
            length = _scale(actual, top_usd, bar_w)
            parts.append(
                f'<rect class="actual" x="{label_w}" y="{y + 18}" width="{length}" '
                f'height="10" fill="{ACTUAL_COLOUR}"/>'
            )
        text = _range_text(row) + (
            f"  actual {_fmt_usd(actual)}" if actual is not None else ""
        )
        parts.append(
            f'<text x="{label_w + 6 + (_scale(high, top_usd, bar_w) if high else 0)}" '
            f'y="{y + 15}" font-size="12" fill="#57606a">{_e(text)}</text>'
        )
    axis_y = top + row_h * len(rows) + 4
    parts.append(
        f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + bar_w}" y2="{axis_y}" '
        'stroke="#8c959f"/>'
    )
    parts.append(
        f'<text x="{label_w + bar_w}" y="{axis_y + 18}" text-anchor="end" '
        f'font-size="12" fill="#57606a">{_e(_fmt_usd(top_usd))}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart_svg(
    items: Sequence[tuple[str, Decimal | None]], *, chart_id: str, unit: str
) -> str:
    """A plain horizontal bar chart of labelled values (None draws no bar)."""
    label_w, bar_w, row_h, top = 300, 520, 26, 8
    peak = max((v for _, v in items if v is not None), default=Decimal(0)) or Decimal(1)
    height = top + row_h * max(len(items), 1) + 12
    width = label_w + bar_w + 140
    parts = [
        f'<svg id="{_e(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
    ]
    for index, (label, value) in enumerate(items):
        y = top + index * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" font-size="13" '
            f'fill="#1b1f24">{_e(label)}</text>'
        )
        if value is None:
            shown = "n/a"
        else:
            length = _scale(value, peak, bar_w)
            parts.append(
                f'<rect x="{label_w}" y="{y + 3}" width="{length}" height="16" '
                f'fill="{RAN_COLOUR}"/>'
            )
            shown = f"{unit}{_short(value)}"
        parts.append(
            f'<text x="{label_w + bar_w + 8}" y="{y + 15}" font-size="12" '
            f'fill="#57606a">{_e(shown)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> str:
    entries = [
        (RAN_COLOUR, "quoted training (high) where the job ran"),
        (QUOTE_COLOUR, "quoted training (high) elsewhere"),
        (ACTUAL_COLOUR, "actual cost"),
    ]
    spans = "".join(
        f'<span><i class="swatch" style="background:{c}"></i>{_e(t)}</span>'
        for c, t in entries
    )
    return f'<p class="legend">{spans}</p>'


def _page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _table(
    header: list[str],
    rows: list[list[str]],
    *,
    num_cols: Sequence[int],
    marked: Sequence[bool] | None = None,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for index, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        css = ' class="ran"' if marked is not None and marked[index] else ""
        lines.append(f"<tr{css}>{cells}</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


# --- small helpers ----------------------------------------------------------------------


def _read_json_strict(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(
            f"{str(path)!r} does not exist; give a run folder written by "
            "`automl-broker run` (it holds result.json and plan.json)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(payload, dict):
        raise ReportError(f"{str(path)!r} does not hold a JSON object")
    return payload


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _within(actual: Decimal | None, high: Decimal | None) -> bool | None:
    if actual is None or high is None:
        return None
    return actual <= high


def _quality_per_usd(
    value: float | None, actual: Decimal | None, direction: str | None
) -> str | None:
    if value is None or actual is None or actual <= 0 or direction != "maximize":
        return None
    per_usd = Decimal(repr(float(value))) / actual
    return str(per_usd.quantize(Decimal("0.0001")))


def _quote_row(cost: dict[str, Any]) -> dict[str, Any]:
    return {
        "training_usd_low": cost.get("quoted_training_usd_low"),
        "training_usd_high": cost.get("quoted_training_usd_high"),
    }


def _quote_range(row: dict[str, Any]) -> dict[str, Any]:
    """A plan comparison row's training range (older plans hold one figure)."""
    high = row.get("training_usd_high", row.get("training_usd"))
    return {"training_usd_low": row.get("training_usd_low"), "training_usd_high": high}


def _range_text(row: dict[str, Any]) -> str:
    low, high = _dec(row.get("training_usd_low")), _dec(row.get("training_usd_high"))
    if high is None:
        return "n/a"
    if low is None or low == high:
        return _fmt_usd(high)
    return f"{_fmt_usd(low)} – {_fmt_usd(high)}"


def _per_usd_text(summary: dict[str, Any]) -> str:
    value = summary.get("quality_per_usd")
    return "n/a" if value is None else f"{value} per $"


def _scale(value: Decimal, top: Decimal, width: int) -> int:
    return max(2, int(value / top * width)) if value > 0 else 0


def _short(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.0001')).normalize():f}"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)
