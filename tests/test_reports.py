"""Run reports in Markdown, JSON and HTML: quote against actual, every feasible
provider's quote, quality per dollar across runs, and the HTML chart in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from broker import reports
from broker.clock import FakeClock
from broker.errors import BudgetWarning
from broker.reports import ReportError, across_runs, render_across, render_run
from broker.runner import Broker
from broker.spec import JobResult, JobSpec
from broker.store import JobStore
from broker.testing import ScriptedProvider
from cost_models.catalog import Catalog, PriceRow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    label = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label})


def catalog() -> Catalog:
    def row(provider: str, sku: str, price: str | None) -> PriceRow:
        region = "local" if provider == "local" else "r1"
        return PriceRow(
            provider,
            sku,
            region,
            price=None if price is None else Decimal(price),
            memory_gib=64,
        )

    return Catalog.from_rows(
        [
            row("sagemaker", "ml.m5.large", "3.60"),
            row("azure", "vm", "7.20"),
            row("local", "this-machine", None),
        ]
    )


def capped_run(tmp_path: Path) -> Path:
    """The runner's dollar-cap case: billed at $0.001/s with max_usd $0.70; the
    service runs past its runtime limit and the broker cancels it."""
    clock = FakeClock()
    cloud = ScriptedProvider(
        clock=clock,
        name="sagemaker",
        script=[("running", 0), ("succeeded", 3600)],
        usd_per_s=Decimal("0.001"),
        cancel_delay_s=20,
    )
    idle = ScriptedProvider(clock=clock, name="azure", script=[("running", 0)])
    broker = Broker(
        store=JobStore(tmp_path / "jobs.db", clock=clock),
        providers={"sagemaker": cloud, "azure": idle},
        clock=clock,
        catalog=catalog(),
        poll_interval_s=30.0,
        pending_timeout_s=600,
        backoff_s=1,
        local_rate_usd_per_hour=Decimal("100"),
    )
    job = JobSpec.model_validate(
        dict(
            data=table(),
            target="label",
            constraints={"providers": ["sagemaker", "azure"]},
            budget={"max_usd": "0.70", "max_runtime_s": 600},
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)  # azure is trimmed to 350 s
        result = broker.run(job, run_dir=tmp_path / "run")
    assert (result.state, result.cost.actual_usd) == ("cancelled", Decimal("0.68"))
    assert idle.calls == []
    return tmp_path / "run"


def test_reports_capped_run_json_shows_quote_and_actual(tmp_path: Path) -> None:
    folder = capped_run(tmp_path)
    summary = json.loads((folder / "report.json").read_text())

    assert summary["provider"] == "sagemaker"
    cost = {
        k: Decimal(v)
        for k, v in summary["cost"].items()
        if k.endswith("usd_low") or k.endswith("usd_high") or k == "actual_usd"
    }
    assert cost == {
        "quoted_training_usd_low": Decimal("0.15"),
        "quoted_training_usd_high": Decimal("0.60"),
        "actual_usd": Decimal("0.68"),
    }
    # the job ran past its quote (the service ignored its runtime limit) but not
    # past the $0.70 cap
    assert summary["cost"]["within_quote"] is False
    rows = {r["provider"]: r for r in summary["alternatives"]}
    assert rows["sagemaker"]["ran"] is True
    assert Decimal(rows["sagemaker"]["actual_usd"]) == Decimal("0.68")
    # azure was feasible, trimmed by the cap to 350 s: $0.176-$0.70 at $7.20/h
    assert (rows["azure"]["ran"], rows["azure"]["actual_usd"]) == (False, None)
    assert Decimal(rows["azure"]["training_usd_low"]) == Decimal("0.176")
    assert Decimal(rows["azure"]["training_usd_high"]) == Decimal("0.70")
    # the file is what render_run builds again from the folder
    assert json.loads(render_run(folder, "json")) == summary


def test_reports_capped_run_html_shows_quote_and_actual(tmp_path: Path) -> None:
    folder = capped_run(tmp_path)
    page = (folder / "report.html").read_text()

    assert "<td>quoted training</td><td>$0.1500 – $0.6000</td>" in page
    assert "<td>actual</td><td>$0.6800</td>" in page
    # the chart draws a quote bar and an actual bar for sagemaker, a quote for azure
    chart = page[page.index('<svg id="cost-chart"') : page.index("</svg>")]
    assert chart.count('class="quote"') == 2
    assert chart.count('class="actual"') == 1
    assert f'fill="{reports.RAN_COLOUR}"' in chart
    assert "$0.1500 – $0.6000  actual $0.6800" in chart
    # self-contained: no script and nothing fetched from elsewhere
    assert "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_reports_capped_run_markdown_compares_every_feasible_provider(
    tmp_path: Path,
) -> None:
    folder = capped_run(tmp_path)
    text = (folder / "report.md").read_text()

    assert "| quoted training (high) | $0.6000 |" in text
    assert "| actual | $0.6800 |" in text
    assert (
        "| sagemaker | ml.m5.large | r1 | $0.1500 – $0.6000 | $0.6800 | ran here |"
        in text
    )
    assert "| azure | vm | r1 | $0.1760 – $0.7000 | n/a | feasible |" in text
    assert render_run(folder, "md") == text


def fake_run(folder: Path, job_id: str, provider: str, auc: float, actual: str) -> Path:
    result = JobResult.model_validate(
        dict(
            job_id=job_id,
            state="succeeded",
            provider=provider,
            task="binary",
            metric="roc_auc",
            metric_direction="maximize",
            holdout_metrics={"roc_auc": auc},
            cost={
                "estimated_training_usd": "0.10",
                "estimated_training_high_usd": "0.40",
                "actual_usd": actual,
            },
        )
    )
    reports.write_run_folder(folder / job_id, result)
    return folder / job_id


def test_reports_across_runs_quality_per_dollar(tmp_path: Path) -> None:
    fake_run(tmp_path / "runs", "job-a", "sagemaker", 0.9, "0.30")
    fake_run(tmp_path / "runs", "job-b", "local", 0.8, "0.05")
    single = fake_run(tmp_path / "other", "job-c", "azure", 0.85, "0")

    summaries = across_runs([tmp_path / "runs", single])

    per_usd = {s["job_id"]: s["quality_per_usd"] for s in summaries}
    # 0.9 / $0.30 = 3.0 per dollar; 0.8 / $0.05 = 16; nothing spent: no ratio
    assert per_usd == {"job-a": "3.0000", "job-b": "16.0000", "job-c": None}
    text = render_across(summaries, "md")
    assert (
        "| job-b | local | roc_auc | 0.8000 | $0.0500 | $0.1000 – $0.4000 | "
        "16.0000 per $ |" in text
    )
    page = render_across(summaries, "html")
    assert page.count("<svg") == 2 and 'id="quality-chart"' in page
    assert json.loads(render_across(summaries, "json"))["runs"][0]["job_id"] == "job-a"


def test_reports_across_runs_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="is not a run folder and holds none"):
        across_runs([tmp_path])


def test_reports_render_run_needs_a_result(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="result.json' does not exist"):
        render_run(tmp_path, "html")


def test_reports_error_metric_has_no_quality_per_dollar(tmp_path: Path) -> None:
    result = JobResult.model_validate(
        dict(
            job_id="job-r",
            state="succeeded",
            provider="local",
            task="regression",
            metric="rmse",
            metric_direction="minimize",
            holdout_metrics={"rmse": 2.5},
            cost={"actual_usd": "0.02"},
        )
    )
    reports.write_run_folder(tmp_path, result)
    summary = json.loads((tmp_path / "report.json").read_text())
    assert (summary["metric_value"], summary["quality_per_usd"]) == (2.5, None)


def count_colour(png: Path, colour: str, box: tuple[int, int, int, int]) -> int:
    """Pixels in `box` (left, top, right, bottom) within 6 levels of `colour`."""
    from PIL import Image

    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB").crop(box), dtype=int)
    return int((np.abs(pixels - target) <= 6).all(axis=-1).sum())


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium); the HTML chart "
    "cannot be screenshotted",
)
def test_reports_html_chart_is_drawn_in_headless_chromium(tmp_path: Path) -> None:
    folder = capped_run(tmp_path)
    shot = tmp_path / "report.png"
    assert CHROMIUM is not None
    completed = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            (folder / "report.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shot.is_file(), completed.stderr[-2000:]

    # the chart sits under the title and the legend, in the top 400 px: its bars
    # are drawn in their colours there, and the ran-here colour appears nowhere below
    chart_box = (0, 0, 1200, 400)
    ran = count_colour(shot, reports.RAN_COLOUR, chart_box)
    quote = count_colour(shot, reports.QUOTE_COLOUR, chart_box)
    actual = count_colour(shot, reports.ACTUAL_COLOUR, chart_box)
    assert ran > 1500, ran
    assert quote > 1500, quote
    assert actual > 1500, actual
    assert count_colour(shot, reports.RAN_COLOUR, (0, 400, 1200, 1600)) == 0


def test_reports_plan_section_shows_each_quote_range_to_the_cent_fraction(
    tmp_path: Path,
) -> None:
    text = (capped_run(tmp_path) / "report.md").read_text()

    # 600 s on sagemaker at $3.60/h: $0.15 (early stop) to $0.60; azure trimmed to 350 s
    assert "| sagemaker | ml.m5.large | r1 | $0.1500 – $0.6000 |" in text
    assert "| azure | vm | r1 | $0.1760 – $0.7000 |" in text


def test_reports_failed_run_folder_renders_its_error_and_attempts(
    tmp_path: Path,
) -> None:
    from broker.errors import InvalidRequestError

    clock = FakeClock()
    refused = ScriptedProvider(
        clock=clock,
        name="sagemaker",
        submit_errors=[InvalidRequestError("target column missing", provider="x")],
    )
    broker = Broker(
        store=JobStore(tmp_path / "jobs.db", clock=clock),
        providers={"sagemaker": refused},
        clock=clock,
        catalog=catalog(),
        backoff_s=1,
    )
    job = JobSpec(
        data=table(), target="label", constraints={"providers": ["sagemaker"]}
    )
    with pytest.raises(InvalidRequestError):
        broker.run(job, run_dir=tmp_path / "run")

    text = render_run(tmp_path / "run", "md")

    assert text.splitlines()[0].endswith(": failed")
    assert "InvalidRequestError: target column missing" in text
    assert "| 1 | sagemaker | ml.m5.large | r1 | failed | n/a |" in text


def test_reports_failure_markdown_lists_attempt_costs() -> None:
    text = reports.failure_markdown(
        {
            "job_id": "job-1",
            "state": "failed",
            "error": {"type": "NoModelTrainedError", "message": "no trial finished"},
            "attempts": [
                {
                    "provider": "local",
                    "machine": "this-machine",
                    "region": "local",
                    "state": "failed",
                    "cost_usd": "0.003278",
                },
            ],
            "failovers": [],
        }
    )

    assert "| 1 | local | this-machine | local | failed | $0.0033 |" in text
