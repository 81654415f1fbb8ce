"""The broker loop against scripted providers: failover, pending timeout, cancel,
credential expiry, the dollar cap and resume (cases C21, C22, C23)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker.clock import FakeClock
from broker.errors import (
    CredentialsExpiredError,
    InvalidRequestError,
    ProviderWarning,
    QuotaExceededError,
)
from broker.runner import Broker
from broker.spec import JobSpec
from broker.states import JobState
from broker.store import JobStore
from broker.testing import ScriptedProvider
from cost_models.catalog import Catalog, PriceRow

POLL_S = 30.0


def table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.normal(size=n)
    label = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "label": label})


def catalog() -> Catalog:
    def row(provider: str, sku: str, region: str, price: str | None) -> PriceRow:
        return PriceRow(
            provider,
            sku,
            region,
            price=None if price is None else Decimal(price),
            memory_gib=64,
        )

    return Catalog.from_rows(
        [
            row("sagemaker", "ml.m5.large", "r1", "3.60"),
            row("azure", "vm", "r1", "7.20"),
            row("local", "this-machine", "local", None),
        ]
    )


def make_broker(
    tmp_path: Any, clock: FakeClock, providers: dict[str, Any], **kw: Any
) -> Broker:
    settings: dict[str, Any] = {
        "poll_interval_s": POLL_S,
        "pending_timeout_s": 600,
        "backoff_s": 1,
        "local_rate_usd_per_hour": Decimal("100"),  # the local fallback ranks last
        **kw,
    }
    return Broker(
        store=JobStore(tmp_path / "jobs.db", clock=clock),
        providers=providers,
        clock=clock,
        catalog=catalog(),
        **settings,
    )


def spec(*providers: str, **fields: Any) -> JobSpec:
    return JobSpec(
        data=table(),
        target="label",
        constraints={"providers": list(providers)},
        **fields,
    )


def scripted(clock: FakeClock, name: str, **kw: Any) -> ScriptedProvider:
    return ScriptedProvider(clock=clock, name=name, **kw)


QUICK = [("queued", 0), ("running", 30), ("succeeded", 120)]


def test_runner_succeeds_and_scores_on_held_out_rows(tmp_path):
    clock = FakeClock()
    cloud = scripted(clock, "sagemaker", script=QUICK, usd_per_s=Decimal("0.001"))
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    result = broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    # the broker scores the provider's model on its own 20% split of 200 rows
    assert result.state == "succeeded"
    assert result.provider == "sagemaker"
    assert result.holdout_n == 40
    assert (result.holdout_metrics["roc_auc"] or 0.0) > 0.8
    # billed from running (t=30) to succeeded (t=120): 90 s at $0.001/s
    assert result.cost.actual_usd == Decimal("0.090")
    assert cloud.call_names[:2] == ["submit", "poll"]
    assert cloud.call_names.count("submit") == 1
    record = broker.store.get(result.job_id)
    assert record.state is JobState.SUCCEEDED
    events = broker.store.events(result.job_id)
    states = [e.to_state for e in events if e.kind == "transition"]
    assert states == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    [attempt] = broker.store.attempts(result.job_id)
    assert attempt.cost_usd == Decimal("0.090")
    assert broker.store.spend() == Decimal("0.090")
    for name in ("spec.json", "schema.json", "split.json", "plan.json", "report.md"):
        assert (tmp_path / "run" / name).is_file(), name


def test_runner_c21_quota_reported_while_queued_fails_over_within_one_poll(tmp_path):
    clock = FakeClock()
    stuck = scripted(
        clock,
        "sagemaker",
        script=[("queued", 0)],
        queued_error=QuotaExceededError(
            "ResourceLimitExceeded: quota exceeded", provider="sagemaker"
        ),
    )
    fallback = scripted(clock, "local", script=QUICK)
    broker = make_broker(tmp_path, clock, {"sagemaker": stuck, "local": fallback})

    result = broker.run(spec("sagemaker", "local"), run_dir=tmp_path / "run")

    assert result.provider == "local"
    assert result.state == "succeeded"
    [failover] = result.failovers
    assert failover.provider == "sagemaker"
    assert failover.reason == "QuotaExceeded"
    # failover decided at the first poll; the cancel is confirmed one poll later
    assert (failover.at - FakeClock().now()).total_seconds() <= POLL_S
    assert stuck.call_names.count("cancel") == 1
    [first, second] = broker.store.attempts(result.job_id)
    assert first.state is JobState.CANCELLED
    assert second.state is JobState.SUCCEEDED


def test_runner_c21_silent_queue_times_out_after_ten_minutes(tmp_path):
    clock = FakeClock()
    stuck = scripted(clock, "sagemaker", script=[("queued", 0)])
    fallback = scripted(clock, "local", script=QUICK)
    broker = make_broker(tmp_path, clock, {"sagemaker": stuck, "local": fallback})

    result = broker.run(spec("sagemaker", "local"), run_dir=tmp_path / "run")

    [failover] = result.failovers
    assert failover.reason == "PendingTimeout"
    waited_s = (failover.at - FakeClock().now()).total_seconds()
    assert 600 <= waited_s <= 600 + POLL_S
    assert stuck.call_names.count("cancel") == 1
    assert broker.store.attempts(result.job_id)[0].state is JobState.CANCELLED
    assert result.provider == "local"


def test_runner_c22_user_cancel_reaches_the_provider_once(tmp_path):
    clock = FakeClock()
    cloud = scripted(
        clock,
        "sagemaker",
        script=[("running", 0), ("succeeded", 3600)],
        usd_per_s=Decimal("0.001"),
        cancel_delay_s=20,
    )
    broker: Broker

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        # the user cancels at t=100 s, while the job runs
        if kind == "status" and clock.monotonic() >= 100 and cancel_asked == []:
            cancel_asked.append(broker.cancel(job_ids[0]))
        if kind == "plan":
            job_ids.append(payload["job_id"])

    cancel_asked: list[bool] = []
    job_ids: list[str] = []
    broker = make_broker(
        tmp_path, clock, {"sagemaker": cloud}, on_event=on_event, poll_interval_s=10
    )

    result = broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    assert cancel_asked == [True]
    assert result.state == "cancelled"
    assert [c.method for c in cloud.backend_calls].count("stop") == 1
    assert cloud.active_resources == 0
    # billed from t=0 to the stop taking effect at t=120: 120 s at $0.001/s
    assert result.cost.actual_usd == Decimal("0.120")
    assert broker.store.get(result.job_id).state is JobState.CANCELLED
    # a second cancel is a no-op: no error, no second backend call
    assert broker.cancel(result.job_id) is False
    assert [c.method for c in cloud.backend_calls].count("stop") == 1


def test_runner_c22_provider_stop_ends_run_as_stopped_with_warning(tmp_path):
    clock = FakeClock()
    cloud = scripted(clock, "sagemaker", script=[("running", 0), ("stopped", 300)])
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    with pytest.warns(ProviderWarning, match="stopped job .* itself"):
        result = broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    assert result.state == "stopped"
    assert broker.store.get(result.job_id).state is JobState.STOPPED
    assert "cancel" not in cloud.call_names


def test_runner_c23_expired_credentials_refreshed_keep_one_job(tmp_path):
    clock = FakeClock()
    cloud = scripted(
        clock,
        "sagemaker",
        script=[("queued", 0), ("running", 30), ("succeeded", 150)],
        expired_polls={3, 4},
        refresher=lambda: True,
    )
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    result = broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    assert result.state == "succeeded"
    assert cloud.credentials_refreshed
    assert cloud.call_names.count("submit") == 1
    assert result.failovers == []


def test_runner_c23_unrefreshable_credentials_detach_then_resume(tmp_path):
    clock = FakeClock()
    refresh_ok = [False]
    cloud = scripted(
        clock,
        "sagemaker",
        script=[("queued", 0), ("running", 30), ("succeeded", 150)],
        expired_polls={3, 4},
        refresher=lambda: refresh_ok[0],
    )
    fallback = scripted(clock, "local", script=QUICK)
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud, "local": fallback})

    result = broker.run(spec("sagemaker", "local"), run_dir=tmp_path / "run")

    # neither failed nor succeeded: the remote job may still be billing
    assert result.state == "detached"
    assert result.error is not None
    # one submit before the detach
    assert [c.method for c in cloud.calls].count("submit") == 1
    job_ref = broker.store.attempts(result.job_id)[0].provider_job_id
    assert result.error["provider_job_id"] == job_ref
    assert "may still be running and billing" in result.error["warning"]
    assert result.error["type"] == CredentialsExpiredError.__name__
    assert broker.store.get(result.job_id).state is JobState.DETACHED
    assert fallback.calls == []  # no failover: the job may still be alive

    refresh_ok[0] = True
    again = make_broker(tmp_path, clock, {"sagemaker": cloud, "local": fallback})
    resumed = again.resume(result.job_id)

    assert resumed.state == "succeeded"
    assert resumed.holdout_n == 40
    assert cloud.call_names.count("submit") == 1
    assert again.store.get(result.job_id).state is JobState.SUCCEEDED


def test_runner_bad_request_never_fails_over(tmp_path):
    clock = FakeClock()
    cloud = scripted(
        clock,
        "sagemaker",
        submit_errors=[
            InvalidRequestError("target column missing", provider="sagemaker")
        ],
    )
    fallback = scripted(clock, "local", script=QUICK)
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud, "local": fallback})

    with pytest.raises(InvalidRequestError, match="target column missing"):
        broker.run(spec("sagemaker", "local"), run_dir=tmp_path / "run")

    assert fallback.calls == []
    [job] = broker.store.list_jobs()
    assert job.state is JobState.FAILED
    # the run folder says what failed, where, and what it cost
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written["job_id"] == job.job_id
    assert written["state"] == "failed"
    assert written["error"] == {
        "type": "InvalidRequestError",
        "message": "target column missing",
    }
    assert [(a["provider"], a["state"]) for a in written["attempts"]] == [
        ("sagemaker", "failed")
    ]
    from broker.errors import InputError
    from broker.predict import load_run

    with pytest.raises(
        InputError,
        match=r"ended failed without a model \(InvalidRequestError: target column",
    ):
        load_run(tmp_path / "run")


def test_runner_max_usd_cancels_before_the_cap(tmp_path):
    clock = FakeClock()
    cloud = scripted(
        clock,
        "sagemaker",
        script=[("running", 0), ("succeeded", 3600)],
        usd_per_s=Decimal("0.001"),
        cancel_delay_s=20,
    )
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    # quoted at most $0.60 for 600 s, but the service runs on past the runtime limit
    result = broker.run(
        spec("sagemaker", budget={"max_usd": "0.70", "max_runtime_s": 600}),
        run_dir=tmp_path / "run",
    )

    assert result.state == "cancelled"
    # cancelled at t=660 s ($0.66 + a poll and a cancel's worth would pass $0.70);
    # billing stops 20 s later
    assert result.cost.actual_usd == Decimal("0.680")
    assert result.cost.estimated_training_high_usd == Decimal("0.600000")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| quoted training (high) | $0.6000 |" in report
    assert "| actual | $0.6800 |" in report


def test_runner_credentials_failure_skips_the_providers_other_candidates(tmp_path):
    from broker.errors import CredentialsError

    clock = FakeClock()
    refused = scripted(
        clock,
        "sagemaker",
        submit_errors=[CredentialsError("InvalidClientTokenId", provider="sagemaker")],
    )
    fallback = scripted(clock, "local", script=QUICK)
    rows = [
        PriceRow("sagemaker", "ml.m5.large", r, price=Decimal(p), memory_gib=64)
        for r, p in (("r1", "3.60"), ("r2", "3.70"))
    ] + [PriceRow("local", "this-machine", "local", price=None, memory_gib=64)]
    broker = make_broker(tmp_path, clock, {"sagemaker": refused, "local": fallback})
    broker.catalog = Catalog.from_rows(rows)

    result = broker.run(spec("sagemaker", "local"), run_dir=tmp_path / "run")

    # r2 is never tried: the credentials are the provider's, not the region's
    assert [f.region for f in result.failovers] == ["r1"]
    assert refused.call_names.count("submit") == 1
    assert result.provider == "local"


def test_runner_prices_a_machine_that_bills_nothing_itself():
    from types import SimpleNamespace

    from broker.runner import _priced_runtime
    from cost_models.billing import BillingRule

    per_second = BillingRule(increment_s=1, minimum_s=0)
    candidate = SimpleNamespace(
        quote=SimpleNamespace(
            training_usd_per_hour=Decimal("0.36"), billing_rule=per_second
        )
    )

    # 600 s at $0.36/h, billed per second
    assert _priced_runtime(candidate, 600.0) == Decimal("0.060000")  # type: ignore[arg-type]
    # 100.4 s rounds up to 101 billable seconds: $0.0101
    assert _priced_runtime(candidate, 100.4) == Decimal("0.010100")  # type: ignore[arg-type]
    assert _priced_runtime(candidate, None) is None  # type: ignore[arg-type]


def test_runner_refuses_a_run_folder_that_holds_another_job(tmp_path):
    from broker.errors import InputError

    clock = FakeClock()
    cloud = scripted(clock, "sagemaker", script=QUICK)
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})
    first = broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    with pytest.raises(InputError, match=f"already holds job {first.job_id}"):
        broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    # the first run's files are untouched and no second job was recorded
    assert json.loads((tmp_path / "run" / "result.json").read_text())["job_id"] == (
        first.job_id
    )
    assert [j.job_id for j in broker.store.list_jobs()] == [first.job_id]


@pytest.mark.parametrize("where", ["afile", "afile/sub"])
def test_runner_refuses_a_run_folder_that_is_a_file_before_recording_a_job(
    tmp_path, where
):
    from broker.errors import InputError

    (tmp_path / "afile").write_text("not a folder")
    clock = FakeClock()
    cloud = scripted(clock, "sagemaker", script=QUICK)
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    with pytest.raises(InputError, match=r"cannot be created: .*afile' is a file"):
        broker.run(spec("sagemaker"), run_dir=tmp_path / where)

    assert broker.store.list_jobs() == []
    assert cloud.calls == []


class _UnbilledNoModel(ScriptedProvider):
    """A machine that bills nothing itself and has no model after a cancel."""

    def billed_usd(self, ref: Any) -> Decimal | None:
        return None

    def result(self, ref: Any, job: Any) -> Any:
        from broker.errors import NoModelTrainedError

        raise NoModelTrainedError("no trial finished before the cancel")


def test_runner_cancelled_local_run_without_model_costs_its_running_time(tmp_path):
    clock = FakeClock()
    local = _UnbilledNoModel(
        clock=clock,
        name="local",
        script=[("running", 0), ("succeeded", 3600)],
        cancel_delay_s=20,
    )
    broker: Broker
    job_ids: list[str] = []

    def on_event(kind: str, payload: dict[str, Any]) -> None:
        if kind == "plan":
            job_ids.append(payload["job_id"])
        if kind == "status" and clock.monotonic() >= 100 and len(job_ids) == 1:
            job_ids.append("cancelled")
            broker.cancel(job_ids[0])

    broker = make_broker(
        tmp_path, clock, {"local": local}, on_event=on_event, poll_interval_s=10
    )

    result = broker.run(spec("local"), run_dir=tmp_path / "run")

    assert result.state == "cancelled"
    # seen running from the first poll (t=0) to the poll that saw the cancel end
    # (t=120): 120 s at the local rate of $100/h, billed per second
    assert result.cost.actual_usd == Decimal("3.333333")
    [attempt] = broker.store.attempts(result.job_id)
    assert attempt.cost_usd == Decimal("3.333333")


def test_runner_every_candidate_failing_leaves_the_story_in_the_run_folder(tmp_path):
    from broker.errors import PlanningError

    clock = FakeClock()
    quota = QuotaExceededError("ResourceLimitExceeded: quota exceeded", provider="x")
    first = scripted(
        clock, "sagemaker", submit_errors=[replace_provider(quota, "sagemaker")] * 5
    )
    second = scripted(
        clock, "local", submit_errors=[replace_provider(quota, "local")] * 5
    )
    broker = make_broker(tmp_path, clock, {"sagemaker": first, "local": second})

    with pytest.raises(PlanningError, match="every candidate failed"):
        broker.run(spec("sagemaker", "local"), run_dir=tmp_path / "run")

    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written["state"] == "failed"
    assert written["error"]["type"] == "QuotaExceededError"
    assert [f["provider"] for f in written["failovers"]] == ["sagemaker", "local"]
    assert [(a["provider"], a["state"]) for a in written["attempts"]] == [
        ("sagemaker", "failed"),
        ("local", "failed"),
    ]
    # neither provider created anything, so nothing stays quoted for the month
    month = FakeClock().now().strftime("%Y-%m")
    assert broker.store.spend(month, kind="quote") == Decimal("0")
    assert broker.store.spend(month) == Decimal("0")


def replace_provider(error: QuotaExceededError, provider: str) -> QuotaExceededError:
    return QuotaExceededError(str(error), provider=provider)


class _TrainRecorder(ScriptedProvider):
    """Keeps the row count of every job's training frame."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.train_rows: list[int] = []

    def submit(self, job: Any) -> Any:
        self.train_rows.append(len(job.train))
        return super().submit(job)


def test_runner_with_holdout_data_trains_on_every_row_and_scores_on_the_holdout(
    tmp_path,
):
    clock = FakeClock()
    cloud = _TrainRecorder(
        clock=clock, name="sagemaker", script=QUICK, usd_per_s=Decimal("0.001")
    )
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    result = broker.run(
        spec("sagemaker", holdout_data=table(n=60, seed=1)), run_dir=tmp_path / "run"
    )

    # all 200 rows of `data` train; the 60 rows of the user's test set score
    assert cloud.train_rows == [200]
    assert result.holdout_n == 60
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train_index"]) == 200
    assert split["test_index"] == []


def test_runner_without_holdout_data_holds_back_its_own_fifth(tmp_path):
    clock = FakeClock()
    cloud = _TrainRecorder(
        clock=clock, name="sagemaker", script=QUICK, usd_per_s=Decimal("0.001")
    )
    broker = make_broker(tmp_path, clock, {"sagemaker": cloud})

    result = broker.run(spec("sagemaker"), run_dir=tmp_path / "run")

    assert cloud.train_rows == [160]
    assert result.holdout_n == 40
