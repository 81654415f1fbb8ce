"""An interrupted local search goes on from its completed trials instead of starting over.

The unit tests stop a search after two trials through its stop event and resume it from
the run folder's journal; the end-to-end test SIGKILLs a broker process running a local
job once a trial is written, then resumes the job in this process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker.local.journal import TRIALS_FILE, TrialJournal, read_journal
from broker.local.search import SearchOptions, SearchResult, run_search
from broker.local.space import Categorical, SearchSpace
from broker.local.trainer import TrialOutcome

pytestmark = pytest.mark.filterwarnings("ignore::broker.errors.MetricWarning")

SMALL = {
    "depth": 1,
    "activation": "relu",
    "dropout": 0.0,
    "norm": "none",
    "embedding_dim": 2,
    "weight_decay": 0.0,
    "batch_size": 16,
}


def _space() -> SearchSpace:
    return SearchSpace(
        params={
            "width": Categorical([4, 6, 8, 10, 12, 14, 16]),
            "learning_rate": Categorical([1e-3, 3e-3, 1e-2, 3e-2]),
        },
        fixed=SMALL,
    )


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    label = np.where(a + 0.5 * b > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "label": label})


def _search(frame: pd.DataFrame, max_trials: int, **kwargs: Any) -> SearchResult:
    return run_search(
        frame,
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=[],
        metric="roc_auc",
        budget_s=kwargs.pop("budget_s", 60),
        classes=["no", "yes"],
        positive_class="yes",
        space=_space(),
        options=SearchOptions(max_trials=max_trials, max_epochs=3, seed=7),
        **kwargs,
    )


def _interrupted_after_two(folder: Path) -> SearchResult:
    stop = threading.Event()

    def stop_after_second(outcome: TrialOutcome, best: TrialOutcome) -> None:
        if outcome.trial_number == 2:
            stop.set()

    return _search(
        _frame(),
        4,
        stop_event=stop,
        on_trial=stop_after_second,
        journal=TrialJournal(folder, "key-1"),
    )


def test_search_resumed_after_two_trials_runs_two_more_and_keeps_the_first(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "local"
    first = _interrupted_after_two(folder)
    assert [t.trial_number for t in first.trials] == [1, 2]
    assert first.stop_reason == "cancelled"
    before = {t.trial_number: (t.config, t.score) for t in first.trials}

    resume = read_journal(folder, "key-1")
    assert resume is not None and len(resume.trials) == 2
    journal = TrialJournal(folder, "key-1", spent_before_s=resume.spent_s)
    resumed = _search(_frame(), 4, journal=journal, resume=resume)
    straight = _search(_frame(), 4)

    assert [t.trial_number for t in resumed.trials] == [1, 2, 3, 4]
    assert resumed.stop_reason == "max_trials"
    assert {t.trial_number: (t.config, t.score) for t in resumed.trials[:2]} == before
    # trials 3 and 4 are the draws the seeded search makes without an interruption
    assert [t.config for t in resumed.trials[2:]] == [
        t.config for t in straight.trials[2:]
    ]
    assert "resumed after 2 completed trials" in resumed.notes
    assert resumed.elapsed_s >= resume.spent_s
    lines = (folder / TRIALS_FILE).read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["search"] + ["trial"] * 4
    assert resumed.best_model().predict(_frame()).shape == (60,)


def test_search_resumed_without_budget_ends_at_once_with_the_checkpoint(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "local"
    first = _interrupted_after_two(folder)
    resume = read_journal(folder, "key-1")
    assert resume is not None and resume.checkpoint is not None
    assert first.best is not None
    assert resume.checkpoint_trial == first.best.trial_number

    started = time.monotonic()
    result = _search(_frame(), 4, budget_s=0, resume=resume)

    assert time.monotonic() - started < 2.0
    assert [t.trial_number for t in result.trials] == [1, 2]
    assert result.best is not None
    assert result.best.trial_number == first.best.trial_number
    expected = first.best_model().predict_proba(_frame())
    got = result.best_model().predict_proba(_frame())
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert result.notes[0] == "resumed after 2 completed trials"


def test_read_journal_ignores_another_key_and_a_torn_last_line(tmp_path: Path) -> None:
    folder = tmp_path / "local"
    _interrupted_after_two(folder)
    with (folder / TRIALS_FILE).open("a") as handle:
        handle.write('{"kind": "trial", "trial_numb')

    assert read_journal(folder, "another-key") is None
    resume = read_journal(folder, "key-1")
    assert resume is not None
    assert [t.trial_number for t in resume.trials] == [1, 2]


DRIVER = textwrap.dedent(
    """
    import sys, time
    from decimal import Decimal
    from broker.local import journal
    from broker.runner import Broker
    from broker.spec import JobSpec
    from broker.store import JobStore
    from cost_models.catalog import Catalog, PriceRow

    record = journal.TrialJournal.record

    def slow_record(self, *args, **kwargs):
        record(self, *args, **kwargs)
        time.sleep(30)  # a slow search: the test kills the process meanwhile

    journal.TrialJournal.record = slow_record
    tmp = sys.argv[1]
    broker = Broker(
        store=JobStore(tmp + "/jobs.db"),
        catalog=Catalog.from_rows(
            [PriceRow("local", "this-machine", "local", price=None, memory_gib=64)]
        ),
        local_rate_usd_per_hour=Decimal("3.6"),
        poll_interval_s=0.2,
    )
    spec = JobSpec(
        data=tmp + "/table.csv",
        target="label",
        budget={"max_runtime_s": 120},
        constraints={"providers": ["local"]},
        provider_options={
            "local": {"max_trials": 3, "max_epochs": 5, "warm_start": False}
        },
    )
    broker.run(spec, run_dir=tmp + "/run", idempotency_key="resume-e2e")
    print("finished without being killed")
    """
)


def _kill_a_broker_mid_search(tmp_path: Path) -> Path:
    """Run a local job in a driver process and SIGKILL it after its first trial;
    the journal's path."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=150), rng.normal(size=150)
    label = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.5, size=150) > 0, "y", "n")
    pd.DataFrame({"x1": x1, "x2": x2, "label": label}).to_csv(
        tmp_path / "table.csv", index=False
    )
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    journal_path = tmp_path / "run" / "local" / TRIALS_FILE
    driver = subprocess.Popen(
        [sys.executable, "-W", "ignore", str(script), str(tmp_path)],
        env={**os.environ, "AUTOML_BROKER_HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and driver.poll() is None:
            if (
                journal_path.is_file()
                and len(journal_path.read_text().splitlines()) >= 2
            ):
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL
    return journal_path


def _resuming_broker(tmp_path: Path) -> Any:
    from broker.runner import Broker
    from broker.store import JobStore
    from cost_models.catalog import Catalog, PriceRow

    return Broker(
        store=JobStore(tmp_path / "jobs.db"),
        catalog=Catalog.from_rows(
            [PriceRow("local", "this-machine", "local", price=None, memory_gib=64)]
        ),
        local_rate_usd_per_hour=Decimal("0"),
        poll_interval_s=0.2,
    )


def test_broker_killed_mid_search_resumes_the_local_job_from_its_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    journal_path = _kill_a_broker_mid_search(tmp_path)
    [before] = [
        json.loads(line)
        for line in journal_path.read_text().splitlines()
        if json.loads(line)["kind"] == "trial"
    ]

    broker = _resuming_broker(tmp_path)
    [job] = broker.store.list_jobs()
    assert not job.terminal
    result = broker.resume(job.job_id)

    assert result.state == "succeeded"
    [attempt] = broker.store.attempts(job.job_id)
    assert "resumed after 1 completed trials" in result.holdout_notes
    # priced at the rate quoted when the job was planned ($3.60/h = $0.001 a started
    # second) for the whole search, before and after the kill, though this broker
    # planned nothing itself
    actual = result.cost.actual_usd
    assert actual is not None and result.runtime_s is not None
    assert actual % Decimal("0.001") == 0
    assert actual >= Decimal("0.001") * math.ceil(result.runtime_s)
    assert attempt.cost_usd == actual
    assert result.holdout_metrics["accuracy"] is not None
    assert 0.0 <= result.holdout_metrics["accuracy"] <= 1.0
    by_id = {e.model_id: e for e in result.leaderboard if e.algorithm == "mlp"}
    assert sorted(by_id) == ["trial-1", "trial-2", "trial-3"]
    metric = next(iter(by_id["trial-1"].validation_metrics))
    assert by_id["trial-1"].validation_metrics[metric] == pytest.approx(
        before["score"], abs=0, rel=0
    )
    assert by_id["trial-1"].params["epochs"] == before["epochs_run"]
    lines = journal_path.read_text().splitlines()
    numbers = [json.loads(line).get("trial_number") for line in lines[1:]]
    assert numbers == [1, 2, 3]  # trial 1 was not trained again


def test_journal_keeps_each_trial_curve_for_the_resumed_pruner(tmp_path: Path) -> None:
    folder = tmp_path / "local"
    first = _interrupted_after_two(folder)

    resume = read_journal(folder, "key-1")

    assert resume is not None
    assert [t.curve for t in resume.trials] == [t.curve for t in first.trials]
    for trial in first.trials:
        # one score per epoch the pruner was asked about, each the best so far
        assert 1 <= len(trial.curve) <= trial.epochs_run
        assert trial.curve == sorted(trial.curve)
        assert trial.curve[-1] <= trial.score + 1e-12


def test_cancel_of_a_local_job_whose_broker_died_is_recorded_and_resume_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.states import JobState

    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))
    _kill_a_broker_mid_search(tmp_path)
    broker = _resuming_broker(tmp_path)
    [job] = broker.store.list_jobs()

    assert broker.cancel(job.job_id) is True
    assert broker.store.get(job.job_id).state is JobState.CANCELLING
    assert broker.cancel(job.job_id) is False  # a second cancel is a no-op

    result = broker.resume(job.job_id)

    assert result.state == "cancelled"
    assert broker.store.get(job.job_id).state is JobState.CANCELLED
