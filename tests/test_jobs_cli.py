"""The job commands (list, status, logs, cancel, resume) on a fresh Typer app.

The store lives in ``AUTOML_BROKER_HOME`` (a tmp folder); commands that need providers
get a broker over the durable fake through `register`'s factory.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from _ledger import finished_job
from typer.testing import CliRunner

from broker.commands.jobs import register
from broker.states import JobState
from broker.store import JobStore
from broker.testing.durable import DurableService, build_broker, job_spec

pytestmark = pytest.mark.filterwarnings("ignore::broker.errors.MetricWarning")

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path))
    monkeypatch.setenv("AUTOML_BROKER_CONFIG", str(tmp_path / "config.yaml"))
    (tmp_path / "config.yaml").write_text("poll_interval_s: 1\n", encoding="utf-8")
    rng = np.random.default_rng(3)
    x1 = rng.normal(size=150)
    frame = pd.DataFrame({"x1": x1, "label": np.where(x1 > 0, "yes", "no")})
    frame.to_csv(tmp_path / "table.csv", index=False)
    return tmp_path


def config_for(home: Path, **settings: Any) -> dict[str, Any]:
    return {
        "store": str(home / "jobs.db"),
        "service": str(home / "service.db"),
        "providers": {"sagemaker": {"usd_per_s": "0.001", **settings}},
    }


def job_entry(home: Path) -> dict[str, Any]:
    return {
        "data": str(home / "table.csv"),
        "target": "label",
        "providers": ["sagemaker"],
        "budget": {"max_runtime_s": 3600},
    }


def make_app(home: Path | None = None, **settings: Any) -> typer.Typer:
    app = typer.Typer()
    if home is None:
        register(app)  # the default: the user's config and AUTOML_BROKER_HOME
    else:
        register(app, make_broker=lambda _: build_broker(config_for(home, **settings)))
    return app


def run_job(home: Path, key: str = "cli-job") -> str:
    broker = build_broker(config_for(home))
    result = broker.run(
        job_spec(job_entry(home)), run_dir=home / key, idempotency_key=key
    )
    return result.job_id


def record_orphan(home: Path) -> str:
    """A job written to the store by a broker that died before its first attempt."""
    spec = job_spec(job_entry(home))
    with JobStore(home / "jobs.db") as store:
        return store.create_job(
            spec=spec.to_dict(), idempotency_key="orphan", run_dir=home / "orphan"
        ).job_id


def rows(output: str) -> list[list[str]]:
    """The cells of every table row in `output`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def test_jobs_cli_list_shows_state_provider_and_cost(home):
    job_id = run_job(home)

    out = runner.invoke(make_app(), ["list"])

    assert out.exit_code == 0, out.output
    [row] = [line for line in out.output.splitlines() if job_id in line]
    # 270 s running at $0.001/s
    assert "succeeded" in row and "sagemaker" in row and "$0.27" in row


def test_jobs_cli_list_rejects_an_unknown_state(home):
    out = runner.invoke(make_app(), ["list", "--state", "done"])

    assert out.exit_code == 2
    assert "unknown state 'done'" in out.output


def test_jobs_cli_status_shows_attempts_and_lease(home):
    job_id = run_job(home)
    [service_job] = DurableService(home / "service.db").jobs()

    out = runner.invoke(make_app(), ["status", job_id])

    assert out.exit_code == 0, out.output
    assert f"Job {job_id}" in out.output
    assert service_job["job_id"] in out.output  # the provider's own job id
    assert ["driven by", "nobody"] in rows(out.output)
    assert "$0.27" in out.output


def test_jobs_cli_status_of_unknown_job_exits_2_naming_it(home):
    out = runner.invoke(make_app(), ["status", "job-nope"])

    assert out.exit_code == 2
    assert "JobNotFoundError: no job 'job-nope'" in out.output
    assert "automl-broker list" in out.output


def test_jobs_cli_logs_lists_the_transitions_in_order(home):
    job_id = run_job(home)

    out = runner.invoke(make_app(), ["logs", job_id])

    assert out.exit_code == 0, out.output
    text = out.output
    positions = [
        text.index(change)
        for change in (
            "pending -> queued",
            "queued -> running",
            "running -> succeeded",
        )
    ]
    assert positions == sorted(positions)
    assert "claimed" in text and "released" in text


def test_jobs_cli_cancel_of_an_orphan_ends_it_and_repeats_as_noop(home):
    job_id = record_orphan(home)
    app = make_app(home)

    first = runner.invoke(app, ["cancel", job_id])
    second = runner.invoke(app, ["cancel", job_id])

    assert first.exit_code == 0, first.output
    assert f"Cancel of job {job_id} recorded; it is cancelled." in first.output
    assert second.exit_code == 0
    assert "is cancelled: nothing to cancel" in second.output
    with JobStore(home / "jobs.db") as store:
        assert store.get(job_id).state is JobState.CANCELLED
    assert DurableService(home / "service.db").created_count() == 0


def test_jobs_cli_resume_runs_an_orphan_once_then_finds_nothing(home):
    job_id = record_orphan(home)
    app = make_app(home)

    first = runner.invoke(app, ["resume"])
    second = runner.invoke(app, ["resume"])

    assert first.exit_code == 0, first.output
    [row] = [line for line in first.output.splitlines() if job_id in line]
    assert "succeeded" in row and "$0.27" in row
    assert DurableService(home / "service.db").created_count() == 1
    assert "Nothing to resume" in second.output


def test_jobs_cli_status_watch_returns_when_the_job_ends(home):
    config = config_for(home, script=[["running", 0], ["succeeded", 900]])
    broker = build_broker(config)
    spec = job_spec(job_entry(home))
    thread = threading.Thread(
        target=broker.run,
        args=(spec,),
        kwargs={"run_dir": home / "run", "idempotency_key": "watched"},
    )
    thread.start()
    while not broker.store.list_jobs():
        time.sleep(0.01)
    [job] = broker.store.list_jobs()

    started = time.monotonic()
    out = runner.invoke(
        make_app(), ["status", job.job_id, "--watch", "--interval", "0.05"]
    )
    thread.join(timeout=30)

    assert out.exit_code == 0, out.output
    # 900 simulated seconds at 600x: the job ends about 1.5 s in
    assert time.monotonic() - started < 10
    assert ["state", "succeeded"] in rows(out.output)


def test_jobs_cli_list_watch_stops_at_its_timeout(home):
    record_orphan(home)  # pending, and nobody drives it

    out = runner.invoke(make_app(), ["list", "--watch", "--timeout", "0.3"])

    assert out.exit_code == 0
    assert "stopped watching after 0.3 s; the jobs go on" in out.output


def test_jobs_cli_module_imports_nothing_heavy():
    code = (
        "import sys, broker.commands.jobs; "
        "print(sorted(m for m in ('pandas', 'broker.runner', 'broker.store', 'rich.live')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert out.stdout.strip() == "[]"


def test_logs_of_an_unknown_job_is_an_error(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from broker.commands.jobs import register

    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    app = typer.Typer()
    register(app)

    result = CliRunner().invoke(app, ["logs", "job-nope"])

    assert result.exit_code == 2
    assert "job-nope" in result.output


@pytest.mark.parametrize("command", [["list"], ["status", "job-x"], ["logs", "job-x"]])
def test_jobs_cli_corrupt_store_is_one_error_line(home, command):
    (home / "jobs.db").write_bytes(b"this is not a database, it only says so " * 200)

    out = runner.invoke(make_app(), command)

    assert out.exit_code == 2
    assert "StoreError:" in out.output
    assert "not a usable job store" in out.output
    assert "Traceback" not in out.output


def test_jobs_cli_shows_square_brackets_in_user_text_as_written(home):
    # job names, ids and errors are the user's text, not console markup
    spec = job_spec(job_entry(home))
    with JobStore(home / "jobs.db") as store:
        job_id = store.create_job(
            spec=spec.to_dict(),
            idempotency_key="brackets",
            run_dir=home / "brackets",
            name="[bold red]nightly[/] [/x]",
        ).job_id
    app = make_app()

    listed = runner.invoke(app, ["list"])
    shown = runner.invoke(app, ["status", job_id])
    missing = runner.invoke(app, ["status", "[/x]"])

    assert listed.exit_code == 0, listed.output
    assert "[bold red]nightly[/] [/x]" in listed.output
    assert shown.exit_code == 0, shown.output
    assert ["name", "[bold red]nightly[/] [/x]"] in rows(shown.output)
    assert missing.exit_code == 2
    assert "JobNotFoundError: no job '[/x]'" in missing.output


def test_jobs_cli_shows_a_fraction_of_a_cent_as_every_command_does(home):
    spec = job_spec(job_entry(home))
    with JobStore(home / "jobs.db") as store:
        job_id = finished_job(store, "tiny", "0.0000005", spec=spec.to_dict())
    app = make_app()

    listed = runner.invoke(app, ["list"])
    logs = runner.invoke(app, ["logs", job_id])

    assert listed.exit_code == 0, listed.output
    # half a micro-dollar rounds up to one, as `costs` shows it; not $0.0000
    [row] = [line for line in listed.output.splitlines() if job_id in line]
    assert "$0.000001" in row
    assert logs.exit_code == 0, logs.output
    assert "5E-7" not in logs.output
    assert "cost_usd=0.0000005" in "".join(logs.output.split())
