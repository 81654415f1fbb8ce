"""One contract for every backend, written once and run against each provider fake and the
local backend: a provider is done when it passes.

Each case builds a provider with a clock it can move: the cloud fakes run on a FakeClock
(time moves when the test says), the local backend on the real clock with a short budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker.clock import FakeClock
from broker.providers.base import Availability, Provider, ProviderJobRef
from broker.spec import LeaderboardEntry, Task
from broker.states import ALLOWED, JobState
from broker.testing import SyntheticJob, synthetic_job


class Case:
    """A provider under test and how to move its time along."""

    def __init__(self, provider: Provider, advance: Callable[[], None]) -> None:
        self.provider = provider
        self.advance = advance


@contextmanager
def vertex_case() -> Iterator[Case]:
    from broker.providers.vertex import VertexProvider
    from broker.testing import vertex_fake as vf

    clock = FakeClock()
    schedule = (("PIPELINE_STATE_QUEUED", 60.0), ("PIPELINE_STATE_RUNNING", 120.0))
    with vf.VertexFake(clock=clock, schedule=schedule, cancel_s=30.0) as fake:
        yield Case(VertexProvider(**fake.client_settings()), lambda: clock.advance(60))


@contextmanager
def azure_case() -> Iterator[Case]:
    from broker.providers.azure import AzureProvider
    from broker.testing import azure_fake as af

    clock = FakeClock()
    schedule = (("Queued", 60.0), ("Running", 120.0))
    with af.AzureFake(clock=clock, schedule=schedule, cancel_s=30.0) as fake:
        yield Case(AzureProvider(**fake.client_settings()), lambda: clock.advance(60))


@contextmanager
def sagemaker_case() -> Iterator[Case]:
    from broker.testing.sagemaker_fake import AutopilotFake

    clock = FakeClock()
    with AutopilotFake(clock=clock) as fake:
        yield Case(fake.provider(), lambda: clock.advance(100))


@contextmanager
def local_case() -> Iterator[Case]:
    from broker.providers.local import LocalProvider

    provider = LocalProvider()
    try:
        yield Case(provider, lambda: time.sleep(0.2))
    finally:
        provider.close()


@contextmanager
def scripted_case() -> Iterator[Case]:
    from broker.testing import ScriptedProvider

    clock = FakeClock()
    provider = ScriptedProvider(
        clock=clock,
        script=[("queued", 0), ("running", 60), ("succeeded", 240)],
        usd_per_s=Decimal("0.001"),
    )
    yield Case(provider, lambda: clock.advance(60))


CASES = {
    "vertex": vertex_case,
    "azure": azure_case,
    "sagemaker": sagemaker_case,
    "local": local_case,
    "scripted": scripted_case,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    with ExitStack() as stack:
        yield stack.enter_context(CASES[request.param]())


@pytest.fixture
def job(tmp_path: Path) -> SyntheticJob:
    job = synthetic_job(
        tmp_path,
        task=Task.BINARY,
        n_rows=400,
        max_usd=Decimal("100"),
        runtime_limit_s=8,
    )
    # the local search is kept short: two small trials
    return SyntheticJob(
        job=_with_options(job.job, {"max_trials": 2, "max_epochs": 5}),
        test_features=job.test_features,
        test_target=job.test_target,
    )


def _with_options(job: Any, options: dict[str, Any]) -> Any:
    from dataclasses import replace

    return replace(job, options=options)


def _run_to_end(case: Case, ref: ProviderJobRef) -> list[JobState]:
    states = []
    for _ in range(200):
        status = case.provider.poll(ref)
        if not states or states[-1] != status.state:
            states.append(status.state)
        if status.state.terminal:
            return states
        case.advance()
    raise AssertionError(f"the job never ended: {states}")


def _options_for(case: Case, job: SyntheticJob) -> SyntheticJob:
    if case.provider.name == "local":
        return job
    return SyntheticJob(_with_options(job.job, {}), job.test_features, job.test_target)


def test_contract_availability_is_decided_without_the_network(case: Case) -> None:
    available = case.provider.availability()

    assert isinstance(available, Availability)
    assert available.available, available.reason


def test_contract_job_runs_to_a_scored_model(case: Case, job: SyntheticJob) -> None:
    from sklearn.metrics import roc_auc_score

    job = _options_for(case, job)
    ref = case.provider.submit(job.job)
    states = _run_to_end(case, ref)

    # every step the provider reports is a move the state machine allows
    for old, new in zip(states, states[1:], strict=False):
        assert new in ALLOWED[old], (old, new)
    assert states[-1] is JobState.SUCCEEDED

    result = case.provider.result(ref, job.job)
    assert result.leaderboard and all(
        isinstance(e, LeaderboardEntry) for e in result.leaderboard
    )
    assert result.best_model_id in {e.model_id for e in result.leaderboard}

    proba = case.provider.predict(ref, job.job, job.test_features)
    assert proba.shape == (len(job.test_features), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    # scored by the broker's rule on rows the provider never saw
    positive = job.job.schema.classes.index(job.job.schema.positive_class)
    assert roc_auc_score(job.test_target, proba[:, positive]) > 0.75


def test_contract_cancel_twice_is_safe_and_ends_the_job(
    case: Case, job: SyntheticJob
) -> None:
    job = _options_for(case, job)
    ref = case.provider.submit(job.job)
    case.provider.poll(ref)

    case.provider.cancel(ref)
    case.provider.cancel(ref)  # a second cancel is a no-op, never an error
    states = _run_to_end(case, ref)

    assert states[-1] in (JobState.CANCELLED, JobState.STOPPED, JobState.SUCCEEDED)


def test_contract_submit_with_the_same_key_attaches(
    case: Case, job: SyntheticJob
) -> None:
    job = _options_for(case, job)
    first = case.provider.submit(job.job)

    found = case.provider.find_by_idempotency_key(job.job.idempotency_key)
    again = case.provider.submit(job.job)

    # the job created under the key is found again, never created twice
    assert found is not None and found.job_id == first.job_id
    assert again.job_id == first.job_id
    case.provider.cancel(first)
    _run_to_end(case, first)
