"""The scripted provider fake: its states over time, call log, cost and faults."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from broker.clock import FakeClock
from broker.errors import (
    CredentialsExpiredError,
    IllegalTransitionError,
    InvalidRequestError,
    QuotaExceededError,
    ThrottledError,
    TransientProviderError,
)
from broker.providers.base import ProviderJob
from broker.schema import Column, ColumnKind, Schema
from broker.spec import JobSpec, Task
from broker.states import JobState
from broker.testing.scripted import ScriptedProvider


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    group = rng.choice(["a", "b"], size=n)
    label = np.where(x + rng.normal(scale=0.5, size=n) > 0, 1, 0)
    return pd.DataFrame({"x": x, "group": group, "label": label})


@pytest.fixture
def job(tmp_path: Path) -> ProviderJob:
    train = _frame(200, seed=0)
    schema = Schema(
        columns=(
            Column("x", "x", ColumnKind.NUMERIC),
            Column("group", "group", ColumnKind.CATEGORICAL),
            Column("label", "label", ColumnKind.TARGET),
        ),
        target="label",
        target_safe_name="label",
        task=Task.BINARY,
        classes=(0, 1),
        positive_class=1,
    )
    return ProviderJob(
        job_id="job-1",
        idempotency_key="key-1",
        spec=JobSpec(data=train, target="label", task=Task.BINARY),
        schema=schema,
        train=train,
        machine=None,
        region=None,
        runtime_limit_s=600,
        run_dir=tmp_path,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_scripted_states_follow_the_clock(clock: FakeClock, job: ProviderJob) -> None:
    provider = ScriptedProvider(clock=clock)
    ref = provider.submit(job)

    states = []
    for _ in range(4):
        states.append(provider.poll(ref).state)
        clock.advance(100)

    # default script: queued 0, running 30, succeeded 300; polled at 0, 100, 200, 300
    assert states == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert provider.call_names == ["submit", "poll", "poll", "poll", "poll"]
    assert [c.at_s for c in provider.calls] == [0, 0, 100, 200, 300]
    assert provider.backend_call_names == ["create"] + ["describe"] * 4


def test_scripted_cost_and_result_are_exact(clock: FakeClock, job: ProviderJob) -> None:
    provider = ScriptedProvider(clock=clock, usd_per_s=Decimal("0.001"))
    ref = provider.submit(job)
    clock.advance(1000)

    result = provider.result(ref, job)

    # billed from running (30 s) to succeeded (300 s): 270 s at $0.001/s
    assert result.actual_cost_usd == Decimal("0.270")
    assert result.runtime_s == 300
    assert result.best_model_id == f"{ref.job_id}-model"
    assert result.leaderboard[0].algorithm == "logistic_regression"
    assert provider.active_resources == 0


def test_scripted_cancel_stops_once_and_bills_to_stop(
    clock: FakeClock, job: ProviderJob
) -> None:
    # C22: one resource at $0.001/s from t=0, cancel at 100, Stopped at 120
    provider = ScriptedProvider(
        clock=clock,
        script=[("running", 0), ("succeeded", 1000)],
        usd_per_s=Decimal("0.001"),
        cancel_delay_s=20,
    )
    ref = provider.submit(job)
    clock.advance(100)
    assert provider.active_resources == 1

    provider.cancel(ref)
    cancelling = provider.poll(ref)
    clock.advance(20)
    cancelled = provider.poll(ref)
    provider.cancel(ref)

    assert (cancelling.state, cancelling.secondary) == (JobState.CANCELLING, "Stopping")
    assert (cancelled.state, cancelled.secondary) == (JobState.CANCELLED, "Stopped")
    assert provider.backend_call_names.count("stop") == 1
    assert provider.call_names.count("cancel") == 2
    assert provider.active_resources == 0
    assert provider.accrued_usd(ref) == Decimal("0.12")
    clock.advance(1000)
    assert provider.accrued_usd(ref) == Decimal("0.12")  # the meter stopped


def test_scripted_backend_stop_is_stopped_not_cancelled(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(
        clock=clock, script=[("running", 0), ("stopped", 50, "Stopped")]
    )
    ref = provider.submit(job)
    clock.advance(50)

    status = provider.poll(ref)
    provider.cancel(ref)  # already ended: no stop call

    assert (status.state, status.secondary) == (JobState.STOPPED, "Stopped")
    assert "stop" not in provider.backend_call_names


def test_scripted_stuck_queue_reports_quota_error(
    clock: FakeClock, job: ProviderJob
) -> None:
    quota = QuotaExceededError("quota exceeded", provider="scripted")
    provider = ScriptedProvider(clock=clock, script=[("queued", 0)], queued_error=quota)
    ref = provider.submit(job)
    clock.advance(3600)

    status = provider.poll(ref)

    assert status.state == JobState.QUEUED
    assert status.error is quota and status.message == "quota exceeded"
    assert provider.active_resources == 0


def test_scripted_stuck_queue_without_error_stays_queued(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(clock=clock, script=[("queued", 0)])
    ref = provider.submit(job)

    clock.advance(600)
    status = provider.poll(ref)
    provider.cancel(ref)
    clock.advance(20)

    assert (status.state, status.error) == (JobState.QUEUED, None)
    assert provider.poll(ref).state == JobState.CANCELLED


def test_scripted_poll_error_at_chosen_poll(clock: FakeClock, job: ProviderJob) -> None:
    throttled = ThrottledError("slow down", provider="scripted")
    provider = ScriptedProvider(clock=clock, poll_errors={2: throttled})
    ref = provider.submit(job)

    provider.poll(ref)
    with pytest.raises(ThrottledError, match="slow down") as info:
        provider.poll(ref)
    provider.poll(ref)

    assert info.value.provider_job_id == ref.job_id
    assert provider.backend_call_names == ["create", "describe", "describe"]


def test_scripted_submit_errors_then_success(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(
        clock=clock, submit_errors=[TransientProviderError("503", provider="scripted")]
    )

    with pytest.raises(TransientProviderError, match="503"):
        provider.submit(job)
    ref = provider.submit(job)

    assert provider.job_count == 1 and ref.idempotency_key == "key-1"


def test_scripted_lost_reply_leaves_one_findable_job(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(clock=clock, lose_submit_reply=True)

    with pytest.raises(TransientProviderError, match="reply to create was lost"):
        provider.submit(job)
    found = provider.find_by_idempotency_key("key-1")
    again = provider.submit(job)

    assert found is not None and again == found
    assert provider.backend_call_names == ["create"]


def test_scripted_expired_credentials_until_refresh(
    clock: FakeClock, job: ProviderJob
) -> None:
    # C23 (a): polls 3 and 4 would fail; a refresh after poll 3 lets poll 4 through
    provider = ScriptedProvider(
        clock=clock, expired_polls={3, 4}, refresher=lambda: True
    )
    ref = provider.submit(job)
    provider.poll(ref)
    provider.poll(ref)

    with pytest.raises(CredentialsExpiredError, match="ExpiredToken") as info:
        provider.poll(ref)
    assert provider.refresh_credentials() is True
    status = provider.poll(ref)

    assert info.value.provider_job_id == ref.job_id
    assert status.state == JobState.QUEUED
    assert provider.job_count == 1


def test_scripted_refresh_failure_keeps_expired_polls_failing(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(clock=clock, expired_polls={1, 2})
    ref = provider.submit(job)

    with pytest.raises(CredentialsExpiredError):
        provider.poll(ref)
    assert provider.refresh_credentials() is False
    with pytest.raises(CredentialsExpiredError):
        provider.poll(ref)

    assert provider.call_names == ["submit", "poll", "refresh_credentials", "poll"]


def test_scripted_predictions_from_real_model(
    clock: FakeClock, job: ProviderJob
) -> None:
    from sklearn.metrics import roc_auc_score

    provider = ScriptedProvider(clock=clock, script=[("succeeded", 0)])
    ref = provider.submit(job)
    holdout = _frame(200, seed=1)

    proba = provider.predict(ref, job, holdout.drop(columns="label"))

    assert proba.shape == (200, 2)
    assert roc_auc_score(holdout["label"], proba[:, 1]) > 0.85


def test_scripted_prior_predictions_are_class_shares(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(
        clock=clock, script=[("succeeded", 0)], predictions="prior"
    )
    ref = provider.submit(job)

    proba = provider.predict(ref, job, job.train.drop(columns="label").head(3))

    share = float((job.train["label"] == 1).mean())
    np.testing.assert_allclose(proba, [[1 - share, share]] * 3)


def test_scripted_result_before_success_refused(
    clock: FakeClock, job: ProviderJob
) -> None:
    provider = ScriptedProvider(clock=clock)
    ref = provider.submit(job)

    with pytest.raises(InvalidRequestError, match="is queued; a result exists only"):
        provider.result(ref, job)


def test_scripted_script_checked_against_state_machine(clock: FakeClock) -> None:
    with pytest.raises(IllegalTransitionError, match="from 'succeeded' to 'running'"):
        ScriptedProvider(clock=clock, script=[("succeeded", 0), ("running", 10)])
    with pytest.raises(ValueError, match="starts with its first state at 0 s"):
        ScriptedProvider(clock=clock, script=[("queued", 5)])
