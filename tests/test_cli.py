"""The command line end to end: plan, run with failing cloud fakes, predict, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from broker.cli import app

runner = CliRunner()


@pytest.fixture
def table_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    n = 500
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    signal = x1 - 0.8 * x2 + np.where(colour == "red", 0.8, 0.0)
    label = np.where(signal + rng.normal(scale=0.6, size=n) > 0, "yes", "no")
    path = tmp_path / "table.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "label": label}).to_csv(
        path, index=False
    )
    return path


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AUTOML_BROKER_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    return tmp_path / "home"


def test_cli_plan_compares_five_providers_and_picks_local(table_csv: Path) -> None:
    result = runner.invoke(
        app, ["plan", str(table_csv), "--target", "label", "--hours-per-month", "730"]
    )

    assert result.exit_code == 0, result.output
    for provider in ("vertex", "azure", "sagemaker", "h2o", "local"):
        assert provider in result.output
    assert "Chose local this-machine" in result.output
    # each cloud is skipped with the reason and still shows what it would cost
    assert "vertex: skipped, unavailable" in result.output
    assert "sagemaker: skipped, unavailable" in result.output
    assert "serving" in result.output


def test_cli_plan_takes_the_target_from_the_command_line_over_a_spec_file(
    table_csv: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(f"data: {table_csv.name}\nbudget: {{max_runtime_s: 600}}\n")

    result = runner.invoke(
        app, ["plan", "--spec", str(spec), "--target", "label", "--max-usd", "5"]
    )

    assert result.exit_code == 0, result.output
    assert "Chose local this-machine" in result.output


def test_cli_plan_json_has_training_and_serving_for_every_provider(
    table_csv: Path,
) -> None:
    result = runner.invoke(
        app,
        [
            "plan",
            str(table_csv),
            "--target",
            "label",
            "--hours-per-month",
            "730",
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["comparison"]
    assert {r["provider"] for r in rows} == {
        "vertex",
        "azure",
        "sagemaker",
        "h2o",
        "local",
    }
    for row in rows:
        assert row["training_usd_high"] is not None, row
        assert row["serving_usd_per_month"] is not None, row


def test_cli_run_fails_over_from_every_cloud_to_local_then_predicts(
    table_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "run",
            str(table_csv),
            "--target",
            "label",
            "--max-runtime",
            "15",
            "--fakes",
            "vertex=quota,azure=capacity,sagemaker=credentials",
            "--prefer",
            "vertex,azure,sagemaker",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    stored = json.loads((out / "result.json").read_text())
    assert stored["provider"] == "local"
    assert stored["state"] == "succeeded"
    reasons = {(f["provider"], f["reason"]) for f in stored["failovers"]}
    assert reasons >= {
        ("vertex", "QuotaExceeded"),
        ("azure", "CapacityExhausted"),
        ("sagemaker", "CredentialsExpired"),
    }
    report = (out / "report.md").read_text()
    assert "## Failovers" in report
    assert "QuotaExceededError" in report and "CredentialsExpiredError" in report
    assert stored["holdout_metrics"]["roc_auc"] > 0.8

    # the saved model reproduces the held-out metrics the broker computed
    predicted = runner.invoke(app, ["predict", str(out)])
    assert predicted.exit_code == 0, predicted.output
    assert f"{stored['holdout_metrics']['roc_auc']:.4f}" in predicted.output
    from broker.predict import predict_from_run

    again = predict_from_run(out)
    assert again.metrics is not None
    for name, value in stored["holdout_metrics"].items():
        if value is None:
            assert again.metrics.values[name] is None
        else:
            assert again.metrics.values[name] == pytest.approx(value, abs=1e-9), name
    frame = pd.read_csv(out / "predictions.csv")
    assert len(frame) == stored["holdout_n"]
    assert set(frame.columns) == {"prediction", "proba_no", "proba_yes"}

    # new rows get their own file; the held-out predictions stay
    on_table = runner.invoke(app, ["predict", str(out), str(table_csv)])
    assert on_table.exit_code == 0, on_table.output
    assert "Wrote 500 predictions to" in on_table.output
    assert len(pd.read_csv(out / "predictions-table.csv")) == 500
    assert len(pd.read_csv(out / "predictions.csv")) == stored["holdout_n"]


def test_cli_bad_target_is_a_clear_error(table_csv: Path) -> None:
    result = runner.invoke(app, ["plan", str(table_csv), "--target", "labl"])

    assert result.exit_code == 2
    assert "ColumnNotFoundError" in result.output
    assert "'label'" in result.output


def test_cli_help_loads_no_heavy_library() -> None:
    code = (
        "import sys; from broker.cli import app; "
        "heavy = [m for m in ('torch', 'pandas', 'sklearn', 'h2o', 'boto3', "
        "'google.cloud.aiplatform', 'azure.ai.ml') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"


def test_cli_run_selects_the_local_search_strategy(
    table_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "run",
            str(table_csv),
            "--target",
            "label",
            "--providers",
            "local",
            "--max-runtime",
            "12",
            "--strategy",
            "tpe",
            "--pruner",
            "asha",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    spec = json.loads((out / "spec.json").read_text())
    assert spec["provider_options"]["local"] == {"strategy": "tpe", "pruner": "asha"}
    stored = json.loads((out / "result.json").read_text())
    assert stored["provider"] == "local" and stored["state"] == "succeeded"
    units = stored["cost"]["provider_units"]
    assert (units["strategy"], units["pruner"]) == ("tpe", "asha")


@pytest.mark.parametrize(
    ("state", "start", "code"),
    [
        ("succeeded", "Ran on [bold]local[/] in 42 s.", 0),
        ("cancelled", "[yellow]Cancelled[/] on [bold]local[/] after 42 s;", 3),
        ("stopped", "[yellow]Ended as stopped[/] on [bold]local[/] after 42 s.", 3),
        ("detached", "[yellow]Detached[/] from [bold]local[/]:", 3),
    ],
)
def test_cli_run_outcome_line_and_exit_code_follow_the_final_state(
    state: str, start: str, code: int
) -> None:
    from broker.cli import outcome_line
    from broker.spec import JobResult

    result = JobResult(
        job_id="job-1",
        state=state,
        provider="local",
        task="binary",
        metric="roc_auc",
        metric_direction="maximize",
        run_dir="runs/x",
        runtime_s=42.4,
    )

    line, exit_code = outcome_line(result)

    assert line.startswith(start)
    assert line.endswith("Run folder: runs/x")
    assert exit_code == code
