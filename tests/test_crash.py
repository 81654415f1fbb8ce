"""The broker killed (SIGKILL) at each step of a cloud job's life, then restarted.

A subprocess runs one job through the durable fake (its "cloud" lives in a file) and is
killed at a chosen step through the runner's ``AUTOML_BROKER_CRASH_AT`` hook. This test
process then resumes the job, as a restarted broker would, and checks that the job ends
in the right state with exactly one provider job created and its cost counted once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker.errors import InputError
from broker.runner import CRASH_ENV
from broker.states import JobState
from broker.testing.durable import DurableService, build_broker

STEPS = [
    "after_start_attempt",
    "after_submit",
    "after_set_ref",
    "after_running",
    "after_result",
    "after_set_result",
]
# queued at 0, running at 30 s, succeeded at 300 s: 270 s billed at $0.001/s
BILLED_USD = Decimal("0.270")

pytestmark = pytest.mark.filterwarnings("ignore::broker.errors.MetricWarning")


def write_table(path: Path) -> Path:
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=200), rng.normal(size=200)
    label = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.5, size=200) > 0, "yes", "no")
    pd.DataFrame({"x1": x1, "x2": x2, "label": label}).to_csv(path, index=False)
    return path


def make_config(tmp_path: Path, *, script: Any = None) -> dict[str, Any]:
    # the service stops a job at its runtime limit: give long scripts room
    budget = {"max_runtime_s": 7200}
    settings: dict[str, Any] = {"usd_per_s": "0.001"}
    if script is not None:
        settings["script"] = script
    return {
        "store": str(tmp_path / "jobs.db"),
        "service": str(tmp_path / "service.db"),
        "time_scale": 600,
        "providers": {"sagemaker": settings},
        "jobs": [
            {
                "data": str(write_table(tmp_path / "table.csv")),
                "target": "label",
                "providers": ["sagemaker"],
                "key": "crash-test",
                "run_dir": str(tmp_path / "run"),
                "budget": budget,
            }
        ],
    }


def start_driver(
    tmp_path: Path, config: dict[str, Any], crash_at: str | None
) -> subprocess.Popen[str]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, "-W", "ignore", "-m", "broker.testing.durable", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_step_resumes_to_one_job_billed_once(tmp_path, step):
    config = make_config(tmp_path)
    driver = start_driver(tmp_path, config, crash_at=step)
    _, stderr = driver.communicate(timeout=60)
    # the driver died at the step, by SIGKILL, before printing an outcome
    assert driver.returncode == -signal.SIGKILL, stderr

    broker = build_broker(config)
    [job] = broker.store.list_jobs()
    assert not job.terminal
    results = broker.resume()

    service = DurableService(config["service"])
    [result] = results
    assert result.state == "succeeded"
    assert broker.store.get(job.job_id).state is JobState.SUCCEEDED
    # exactly one provider job, one attempt, and its cost counted once
    assert service.created_count() == 1
    assert len(broker.store.attempts(job.job_id)) == 1
    assert result.cost.actual_usd == BILLED_USD
    assert broker.store.spend() == BILLED_USD
    assert billed_usd(broker) == BILLED_USD
    entries = broker.store.spend_entries(job.job_id)
    # one actual line (the cost counted once) beside the one quote line
    [actual] = [e for e in entries if e.kind == "actual"]
    assert actual.usd == BILLED_USD
    assert [e.kind for e in entries].count("quote") == 1
    assert json.loads((tmp_path / "run" / "result.json").read_text())["state"] == (
        "succeeded"
    )
    # nothing is left to resume, and resuming the ended job is refused
    assert broker.resume() == []
    with pytest.raises(InputError, match="has already ended"):
        broker.resume(job.job_id)


@pytest.mark.parametrize("step", ["after_submit", "after_set_ref"])
def test_crash_resumed_after_the_provider_job_ended_finishes_it(tmp_path, step):
    config = make_config(tmp_path)
    driver = start_driver(tmp_path, config, crash_at=step)
    driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    # the job ends on the service (300 simulated s = 0.5 s) while no broker runs
    time.sleep(0.8)
    broker = build_broker(config)
    [job] = broker.store.list_jobs()
    assert job.state is JobState.PENDING

    [result] = broker.resume()

    assert result.state == "succeeded"
    states = [e.to_state for e in broker.store.events(job.job_id) if e.to_state]
    assert states == [JobState.PENDING, JobState.QUEUED, JobState.SUCCEEDED]
    assert DurableService(config["service"]).created_count() == 1
    assert broker.store.spend() == BILLED_USD


def test_crash_cancel_of_an_orphaned_job_is_sent_once_then_resume_ends_it(tmp_path):
    config = make_config(tmp_path, script=[["running", 0], ["succeeded", 3000]])
    driver = start_driver(tmp_path, config, crash_at="after_running")
    driver.communicate(timeout=60)
    assert driver.returncode == -signal.SIGKILL
    broker = build_broker(config)
    [job] = broker.store.list_jobs()

    # nobody drives the job: the cancel goes to the provider from here, once
    assert broker.cancel(job.job_id) is True
    assert broker.cancel(job.job_id) is False
    service = DurableService(config["service"])
    assert service.call_count("stop") == 1
    assert broker.store.get(job.job_id).state is JobState.CANCELLING

    result = broker.resume(job.job_id)

    assert result.state == "cancelled"
    assert service.call_count("stop") == 1
    assert service.created_count() == 1
    assert broker.store.spend() == result.cost.actual_usd
    assert result.cost.actual_usd == billed_usd(broker)
    assert result.cost.actual_usd is not None and result.cost.actual_usd > 0


def test_crash_cancel_from_another_process_reaches_the_live_loop(tmp_path):
    config = make_config(tmp_path, script=[["running", 0], ["succeeded", 6000]])
    driver = start_driver(tmp_path, config, crash_at=None)
    broker = build_broker(config)
    job_id = wait_for_running(broker, driver)

    # the driver holds the lease: the request goes through the store to its loop
    assert broker.cancel(job_id) is True
    stdout, stderr = driver.communicate(timeout=60)

    assert driver.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[-1])["state"] == "cancelled"
    record = broker.store.get(job_id)
    assert record.state is JobState.CANCELLED
    assert record.owner is None  # the driver released its lease
    service = DurableService(config["service"])
    assert service.call_count("stop") == 1
    assert broker.store.spend() == billed_usd(broker)


def wait_for_running(broker: Any, driver: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = broker.store.list_jobs()
        if jobs and jobs[0].state is JobState.RUNNING:
            return str(jobs[0].job_id)
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.05)
    raise AssertionError("the driver's job never reached running")


def billed_usd(broker: Any) -> Decimal:
    """What the fake service billed, over every job it ran."""
    return Decimal(broker.provider("sagemaker").billed_total_usd())
