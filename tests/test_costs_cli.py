"""The money commands through Typer's CliRunner: ``pricing refresh``, ``costs`` and
``report``, registered on a fresh app the way the CLI registers them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import typer
from _ledger import finished_job
from typer.testing import CliRunner

from broker import reports
from broker.clock import FakeClock
from broker.commands.money import register
from broker.spec import JobResult
from broker.store import JobStore
from cost_models import refresh as refresh_module
from tests.test_refresh import API_KEY, RecordedApis, stubbed_pricing

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)  # a second command keeps sub-commands named
    register(app)
    return app


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordedApis]:
    """The refresh's own clients replaced by ones that answer from the fixtures."""
    apis = RecordedApis()
    monkeypatch.setattr(
        refresh_module,
        "_http_client",
        lambda: httpx.Client(transport=httpx.MockTransport(apis)),
    )
    pricing = stubbed_pricing()
    monkeypatch.setattr(refresh_module, "_pricing_client", lambda: next(pricing))
    yield apis


def test_costs_cli_pricing_refresh_prints_changes_and_hides_the_key(
    app: typer.Typer,
    recorded: RecordedApis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTOML_BROKER_GOOGLE_API_KEY", API_KEY)
    out = tmp_path / "catalogs"

    result = runner.invoke(app, ["pricing", "refresh", "--out", str(out)])

    assert result.exit_code == 0, result.output
    assert "Price changes" in result.output
    assert "Standard_DS3_v2" in result.output and "-4.78%" in result.output
    assert "5 changed, 6 confirmed unchanged" in result.output
    assert API_KEY not in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "aws.csv",
        "azure.csv",
        "local.csv",
        "vertex.csv",
    ]
    assert all(API_KEY not in p.read_text() for p in out.iterdir())
    google = [r for r in recorded.requests if r.url.host.startswith("cloudbilling")]
    assert google and all(r.headers["X-Goog-Api-Key"] == API_KEY for r in google)


def test_costs_cli_pricing_refresh_json_without_google_key(
    app: typer.Typer, recorded: RecordedApis, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        ["pricing", "refresh", "--out", str(tmp_path), "--source", "google", "--json"],
        env={"AUTOML_BROKER_GOOGLE_API_KEY": ""},
    )
    # the only source asked for failed: exit 1, with the reason in the report
    assert result.exit_code == 1, result.output
    payload = json.loads(result.output)
    assert payload["errors"]["google"].startswith("no Google API key")
    assert {c["status"] for c in payload["changes"]} == {"kept"}
    assert recorded.requests == []


def test_costs_cli_refuses_out_with_in_place(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["pricing", "refresh", "--out", str(tmp_path), "--in-place"]
    )
    assert result.exit_code == 2
    assert "give --out or --in-place, not both" in result.output

    nothing = runner.invoke(
        app, ["pricing", "refresh", "--out", str(tmp_path / "p"), "--source", " ,"]
    )
    assert nothing.exit_code == 2
    assert "--source names no price source; give some of azure,aws,google" in (
        nothing.output
    )
    assert not (tmp_path / "p").exists()  # nothing was written


def ledger(tmp_path: Path) -> Path:
    """A store with $1.75 actual spend on 'research', $9.00 on 'ops' and $0.003278 on
    'local'."""
    store = JobStore(tmp_path / "jobs.db", clock=FakeClock())
    for project, usd in (
        ("research", "1.25"),
        ("research", "0.50"),
        ("ops", "9"),
        ("local", "0.003278"),
    ):
        finished_job(
            store,
            f"{project}-{usd}",
            usd,
            project=project,
            spec={"usd": usd, "project": project},
            quote_usd="2.00",
            provider="sagemaker",
        )
    store.close()
    return tmp_path / "jobs.db"


def spend_cells(output: str) -> dict[str, list[str]]:
    """The `costs` table: each project's six cells after its name."""
    return {
        row[0]: row[1:7]
        for row in (
            [c.strip() for c in line.split("│")[1:-1]]
            for line in output.splitlines()
            if line.count("│") > 3
        )
    }


def test_costs_cli_shows_spend_against_monthly_budget(
    app: typer.Typer, tmp_path: Path
) -> None:
    db = ledger(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text("monthly_budget_usd: {research: 5, all: 8}\n")
    month = FakeClock().now().strftime("%Y-%m")

    result = runner.invoke(
        app,
        ["costs", "--month", month, "--config", str(config), "--store", str(db)],
        env={"COLUMNS": "160"},
    )

    assert result.exit_code == 0, result.output
    cells = spend_cells(result.output)
    # research: $1.75 actual of its own $5.00 budget, $3.25 left, 35.0% used
    assert cells["research"] == ["2", "$4.00", "$1.75", "$5.00", "$3.25", "35.0%"]
    # all projects together: $10.753278 of the $8.00 budget, over by $2.753278
    assert cells["(all projects)"] == [
        "4",
        "$8.00",
        "$10.753278",
        "$8.00",
        "$-2.753278",
        "134.4%",
    ]
    # ops has no budget of its own
    assert cells["ops"] == ["1", "$2.00", "$9.00", "-", "-", "-"]
    # a local run's fraction of a cent is shown, not rounded to $0.00
    assert cells["local"] == ["1", "$2.00", "$0.003278", "-", "-", "-"]


def test_costs_cli_one_project_and_a_bad_month(
    app: typer.Typer, tmp_path: Path
) -> None:
    db = ledger(tmp_path)
    month = FakeClock().now().strftime("%Y-%m")
    result = runner.invoke(
        app, ["costs", "--month", month, "--project", "ops", "--store", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert "ops" in result.output and "research" not in result.output

    bad = runner.invoke(app, ["costs", "--month", "2025/01", "--store", str(db)])
    assert bad.exit_code == 2
    assert "spend period must be a month written YYYY-MM" in bad.output


def run_folder(tmp_path: Path, job_id: str, auc: float, actual: str) -> Path:
    result = JobResult.model_validate(
        {
            "job_id": job_id,
            "state": "succeeded",
            "provider": "local",
            "task": "binary",
            "metric": "roc_auc",
            "metric_direction": "maximize",
            "holdout_metrics": {"roc_auc": auc},
            "cost": {
                "estimated_training_usd": "0.01",
                "estimated_training_high_usd": "0.04",
                "actual_usd": actual,
            },
        }
    )
    reports.write_run_folder(tmp_path / "runs" / job_id, result)
    return tmp_path / "runs" / job_id


def test_costs_cli_report_formats_and_out_file(
    app: typer.Typer, tmp_path: Path
) -> None:
    folder = run_folder(tmp_path, "job-1", 0.9, "0.02")

    md = runner.invoke(app, ["report", str(folder)])
    assert md.exit_code == 0, md.output
    assert "| actual | $0.0200 |" in md.output
    as_json = runner.invoke(app, ["report", str(folder), "--format", "json"])
    assert json.loads(as_json.output)["quality_per_usd"] == "45.0000"
    page = tmp_path / "out" / "r.html"
    written = runner.invoke(
        app, ["report", str(folder), "--format", "html", "--out", str(page)]
    )
    assert written.exit_code == 0, written.output
    assert page.read_text().startswith("<!DOCTYPE html>")

    bad = runner.invoke(app, ["report", str(folder), "--format", "pdf"])
    assert bad.exit_code == 2 and "unknown --format 'pdf'" in bad.output


def test_costs_cli_report_across_runs(app: typer.Typer, tmp_path: Path) -> None:
    run_folder(tmp_path, "job-1", 0.9, "0.02")
    run_folder(tmp_path, "job-2", 0.8, "0.10")
    result = runner.invoke(
        app, ["report", "--across", str(tmp_path / "runs"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert [(r["job_id"], r["quality_per_usd"]) for r in runs] == [
        ("job-1", "45.0000"),
        ("job-2", "8.0000"),
    ]
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_costs_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, broker.commands.money as m, typer; "
        "m.register(typer.Typer()); "
        "heavy = [n for n in ('pandas', 'torch', 'boto3', 'httpx', 'matplotlib', "
        "'sklearn', 'cost_models.refresh') if n in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_costs_table_shows_micro_dollars_half_up() -> None:
    from broker.commands.money import _usd

    # a per-second charge: the ledger keeps the exact quotient, the table micro-dollars
    assert _usd(Decimal("0.010005570416666666666666666667")) == "$0.010006"
    assert _usd(Decimal("0.0000005")) == "$0.000001"
    assert _usd(Decimal("10.753278")) == "$10.753278"
    assert _usd(Decimal("2")) == "$2.00"
    assert _usd(None) == "-"


def test_costs_cli_shows_a_project_named_in_square_brackets_as_written(
    app: typer.Typer, tmp_path: Path
) -> None:
    store = JobStore(tmp_path / "jobs.db", clock=FakeClock())
    finished_job(store, "brackets", "1", project="[/]ops[b]")
    store.close()
    month = FakeClock().now().strftime("%Y-%m")

    result = runner.invoke(
        app, ["costs", "--month", month, "--store", str(tmp_path / "jobs.db")]
    )

    assert result.exit_code == 0, result.output
    assert "[/]ops[b]" in result.output


def test_costs_cli_shown_actual_and_left_add_up_to_the_budget(
    app: typer.Typer, tmp_path: Path
) -> None:
    store = JobStore(tmp_path / "jobs.db", clock=FakeClock())
    for project, usd in (("lab", "0.0327835"), ("big", "1")):
        finished_job(store, project, usd, project=project)
    store.close()
    config = tmp_path / "config.yaml"
    config.write_text("monthly_budget_usd: {lab: 0.05, big: 1e30}\n")
    month = FakeClock().now().strftime("%Y-%m")

    result = runner.invoke(
        app,
        ["costs", "--month", month, "--config", str(config)]
        + ["--store", str(tmp_path / "jobs.db")],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 0, result.output
    cells = spend_cells(result.output)
    # $0.0327835 shows as $0.032784, so $0.017216 is left, not $0.017217
    assert cells["lab"][2:5] == ["$0.032784", "$0.05", "$0.017216"]
    assert cells["big"][3].startswith("$10000000000")  # a huge budget, no error


def test_costs_cli_report_on_hand_edited_run_files_is_a_clear_error(
    app: typer.Typer, tmp_path: Path
) -> None:
    folder = run_folder(tmp_path, "job-1", 0.9, "0.02")
    result_path = folder / "result.json"
    payload = json.loads(result_path.read_text())

    del payload["metric"]
    result_path.write_text(json.dumps(payload))
    missing = runner.invoke(app, ["report", str(folder)])
    payload = json.loads(result_path.read_text()) | {"metric": "roc_auc"}
    payload["cost"]["actual_usd"] = "abc"
    result_path.write_text(json.dumps(payload))
    garbled = runner.invoke(app, ["report", str(folder), "--format", "html"])

    for out in (missing, garbled):
        assert out.exit_code == 2, out.output
        assert out.exception is None or isinstance(out.exception, SystemExit)
        assert (
            f"the run files in {folder} cannot be read as the broker writes them"
            in (" ".join(out.output.split()))
        )
