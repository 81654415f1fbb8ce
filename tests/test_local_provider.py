"""The local provider's job life cycle: submit, poll, cancel, result, predict."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _local_settings import SMALL

from broker.errors import (
    InvalidRequestError,
    NoModelTrainedError,
    ProviderUnavailableError,
)
from broker.local.classical import sampled_configs
from broker.local.space import Categorical, SearchSpace
from broker.providers import create_provider
from broker.providers.base import ProviderJob, ProviderJobRef, ProviderStatus
from broker.providers.local import LocalProvider, load_model
from broker.schema import Column, ColumnKind, Schema
from broker.spec import JobSpec, Task
from broker.states import JobState


@pytest.fixture(autouse=True)
def _broker_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier searches are kept in the test's own folder, never the user's."""
    monkeypatch.setenv("AUTOML_BROKER_HOME", str(tmp_path / "home"))


def _space() -> SearchSpace:
    return SearchSpace(
        params={
            "width": Categorical([4, 8]),
            "activation": Categorical(["relu", "gelu"]),
        },
        fixed=SMALL,
    )


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a = rng.normal(size=n)
    return pd.DataFrame(
        {
            "f_a": a,
            "f_color": rng.choice(["red", "blue"], size=n),
            "label": np.where(a > 0, "yes", "no"),
        }
    )


def _job(
    tmp_path: Path,
    *,
    n: int = 40,
    runtime_limit_s: float = 60,
    options: dict[str, object] | None = None,
    key: str = "key-1",
    provider_options: dict[str, object] | None = None,
) -> ProviderJob:
    frame = _frame(n)
    schema = Schema(
        columns=(
            Column("a", "f_a", ColumnKind.NUMERIC),
            Column("color", "f_color", ColumnKind.CATEGORICAL),
            Column("label", "label", ColumnKind.TARGET),
        ),
        target="label",
        target_safe_name="label",
        task=Task.BINARY,
        classes=("no", "yes"),
        positive_class="yes",
        n_rows=n,
    )
    spec = JobSpec(
        data=frame,
        target="label",
        task=Task.BINARY,
        seed=0,
        provider_options={"local": provider_options or {}},
    )
    return ProviderJob(
        job_id="job-1",
        idempotency_key=key,
        spec=spec,
        schema=schema,
        train=frame,
        machine=None,
        region=None,
        runtime_limit_s=runtime_limit_s,
        run_dir=tmp_path,
        options={"max_trials": 3, "max_epochs": 1, **(options or {})},
    )


def _wait(provider: LocalProvider, ref: ProviderJobRef) -> list[ProviderStatus]:
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = provider.poll(ref)
        seen.append(status)
        if status.state.terminal:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"job did not end: {seen[-1]}")


def _alive(ref: ProviderJobRef) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(ref.job_id)]


def test_local_provider_registry_name_kind_and_availability() -> None:
    provider = create_provider("local")

    availability = provider.availability()

    assert isinstance(provider, LocalProvider)
    assert (provider.name, provider.kind) == ("local", "local")
    assert availability.available is True
    assert availability.reason.startswith(("CPU with", "CUDA device"))


def test_local_provider_runs_three_trials_to_succeeded(tmp_path: Path) -> None:
    provider = LocalProvider(space=_space())
    job = _job(tmp_path)

    ref = provider.submit(job)
    statuses = _wait(provider, ref)
    result = provider.result(ref, job)

    states = [s.state for s in statuses]
    assert states[-1] == JobState.SUCCEEDED
    assert set(states) <= {JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED}
    assert statuses[-1].progress == 1.0
    assert str(statuses[-1].message).startswith(
        "3 trial(s) done, best validation roc_auc"
    )
    by_algorithm: dict[str, list[str]] = {}
    drawn = [name for name, _ in sampled_configs(0)]
    for entry in result.leaderboard:
        if entry.model_id in drawn:  # drawn configurations, as time allowed
            continue
        by_algorithm.setdefault(entry.algorithm, []).append(entry.model_id)
    # three network trials and the eight seeded classical configurations (seconds)
    assert sorted(by_algorithm["mlp"]) == ["trial-1", "trial-2", "trial-3"]
    assert sorted(by_algorithm["hist_gradient_boosting"]) == [
        "hgb-default",
        "hgb-l2",
        "hgb-slow",
        "hgb-wide",
    ]
    assert sorted(by_algorithm["linear"]) == ["linear-l2", "linear-l2-strong"]
    assert sorted(by_algorithm["extra_trees"]) == ["extra-trees", "extra-trees-leaf5"]
    assert set(by_algorithm) <= {
        "mlp",
        "hist_gradient_boosting",
        "linear",
        "extra_trees",
        "ensemble",
    }
    assert _alive(ref) == []


def test_local_provider_leaderboard_is_sorted_best_first(tmp_path: Path) -> None:
    provider = LocalProvider(space=_space())
    job = _job(tmp_path, n=200, options={"max_epochs": 3})

    ref = provider.submit(job)
    _wait(provider, ref)
    result = provider.result(ref, job)

    scores = [float(e.validation_metrics["roc_auc"] or 0) for e in result.leaderboard]
    assert scores == sorted(scores, reverse=True)
    assert result.best_model_id == result.leaderboard[0].model_id
    entry = next(e for e in result.leaderboard if e.algorithm == "mlp")
    assert entry.provider == "local"
    assert entry.training_time_s is not None and entry.training_time_s > 0
    assert entry.predict_time_per_row_s is not None
    assert entry.params["epochs"] == 3


def test_local_provider_exports_a_model_that_loads_and_agrees(tmp_path: Path) -> None:
    provider = LocalProvider(space=_space())
    job = _job(tmp_path)
    ref = provider.submit(job)
    _wait(provider, ref)

    result = provider.result(ref, job)
    features = job.train.drop(columns="label")
    from_provider = provider.predict(ref, job, features)
    assert result.model_path is not None
    loaded = load_model(result.model_path)

    assert result.model_path == tmp_path / "model"
    assert result.model_format == "local-ensemble"
    assert from_provider.shape == (40, 2)
    np.testing.assert_allclose(loaded.predict_proba(features), from_provider)
    assert set(loaded.predict(features)) <= {"no", "yes"}


def test_local_provider_same_idempotency_key_attaches(tmp_path: Path) -> None:
    provider = LocalProvider(space=_space())
    job = _job(tmp_path)

    first = provider.submit(job)
    second = provider.submit(job)
    _wait(provider, first)

    assert second == first
    assert provider.find_by_idempotency_key("key-1") == first
    assert provider.find_by_idempotency_key("other") is None


def test_local_provider_cancel_stops_the_run_and_is_idempotent(tmp_path: Path) -> None:
    provider = LocalProvider(space=SearchSpace(params={}, fixed=SMALL))
    job = _job(
        tmp_path,
        n=400,
        options={"max_trials": None, "max_epochs": 100_000, "patience": 100_000},
    )
    ref = provider.submit(job)
    while provider.poll(ref).state != JobState.RUNNING:
        time.sleep(0.01)

    started = time.monotonic()
    provider.cancel(ref)
    provider.cancel(ref)

    assert time.monotonic() - started < 2
    assert provider.poll(ref).state == JobState.CANCELLED
    assert _alive(ref) == []


def test_local_provider_budget_spent_in_preprocessing_fails_the_job(
    tmp_path: Path,
) -> None:
    provider = LocalProvider(space=_space(), after_preprocess=lambda: time.sleep(2.0))
    job = _job(tmp_path, n=50, runtime_limit_s=1)

    ref = provider.submit(job)
    final = _wait(provider, ref)[-1]

    assert final.state == JobState.FAILED
    assert isinstance(final.error, NoModelTrainedError)
    assert final.error.reason == "budget_exhausted"
    assert final.error.budget_s == pytest.approx(0.95)
    assert (final.error.elapsed_s or 0) >= 2.0
    assert (final.error.suggested_min_budget_s or 0) >= 10
    with pytest.raises(NoModelTrainedError, match=r"before training any model"):
        provider.result(ref, job)


def test_local_provider_bad_option_is_refused_at_submit(tmp_path: Path) -> None:
    provider = LocalProvider()

    with pytest.raises(
        InvalidRequestError, match=r"strategy 'annealing' is not available"
    ):
        provider.submit(_job(tmp_path, options={"strategy": "annealing"}))


def test_local_provider_unknown_ref_is_an_invalid_request() -> None:
    provider = LocalProvider()
    ref = ProviderJobRef(provider="local", job_id="local-none", idempotency_key="k")

    with pytest.raises(InvalidRequestError, match=r"'local-none' is not known"):
        provider.poll(ref)


def test_local_provider_close_joins_running_jobs(tmp_path: Path) -> None:
    provider = LocalProvider(space=SearchSpace(params={}, fixed=SMALL))
    job = _job(
        tmp_path,
        n=400,
        options={"max_trials": None, "max_epochs": 100_000, "patience": 100_000},
    )
    ref = provider.submit(job)

    provider.close()

    assert provider.poll(ref).state == JobState.CANCELLED
    assert _alive(ref) == []


@pytest.mark.parametrize("strategy", ["random", "grid", "tpe", "rl", "evolution"])
def test_local_provider_strategy_comes_from_the_spec_provider_options(
    tmp_path: Path, strategy: str
) -> None:
    provider = LocalProvider(space=_space())
    job = _job(tmp_path, provider_options={"strategy": strategy, "pruner": "median"})

    ref = provider.submit(job)
    _wait(provider, ref)
    result = provider.result(ref, job)

    assert result.provider_units["strategy"] == strategy
    assert result.provider_units["pruner"] == "median"
    assert result.provider_units["epochs"] == 3
    assert len([e for e in result.leaderboard if e.algorithm == "mlp"]) == 3


def test_local_provider_notes_say_which_earlier_configurations_were_reused(
    tmp_path: Path,
) -> None:
    provider = LocalProvider(space=_space())
    first_job = _job(tmp_path / "a", key="key-a")
    ref = provider.submit(first_job)
    _wait(provider, ref)
    earlier = provider.result(ref, first_job)

    second_job = _job(tmp_path / "b", key="key-b")
    second_ref = provider.submit(second_job)
    _wait(provider, second_ref)
    second = provider.result(second_ref, second_job)

    assert not any("earlier search" in n for n in earlier.notes)
    assert any(
        n.startswith("started from 3 configuration(s) of an earlier search")
        and "40 rows, 2 columns (1 numeric), binary" in n
        for n in second.notes
    )
    assert (tmp_path / "home" / "local-searches.json").is_file()


def test_local_provider_ray_address_without_ray_is_unavailable_at_submit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is absent
    provider = LocalProvider(space=_space())

    with pytest.raises(
        ProviderUnavailableError,
        match=r"install it with pip install 'automl-broker\[ray\]'",
    ):
        provider.submit(
            _job(tmp_path, options={"ray_address": "ray://127.0.0.1:10001"})
        )

    assert provider.find_by_idempotency_key("key-1") is None


def test_local_provider_trains_here_when_the_ray_cluster_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from broker.testing.ray_fake import FakeRayCluster

    cluster = FakeRayCluster(cpus=1)  # Ray "installed"; nothing at the address asked
    monkeypatch.setitem(sys.modules, "ray", cluster.module())
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        address = f"ray://127.0.0.1:{spare.getsockname()[1]}"
    provider = LocalProvider(space=_space())
    job = _job(tmp_path, options={"ray_address": address, "max_trials": 2})

    try:
        ref = provider.submit(job)
        states = [s.state for s in _wait(provider, ref)]
        result = provider.result(ref, job)
    finally:
        cluster.close()

    assert states[-1] == JobState.SUCCEEDED
    assert result.provider_units["trials"] == 2
    assert cluster.init_calls == []  # Ray was never asked to connect
    assert result.notes[0] == (
        f"the Ray cluster at {address} cannot be reached (ConnectionRefusedError: "
        "[Errno 111] Connection refused); the search trained on this machine"
    )


def test_local_provider_ensemble_note_names_what_the_weights_were_chosen_from() -> None:
    from types import SimpleNamespace

    from broker.providers.local import _ensemble_note

    search = SimpleNamespace(
        networks=["trial-3", "trial-1"],
        networks_bagged=True,
        candidates=lambda: ["trial-3", "trial-1", "hgb-default", "linear-l2", "et"],
        selection=SimpleNamespace(chosen_round=12, rounds=50),
    )

    # the leaderboard lists every trial; the weights are chosen among the kept ones
    assert _ensemble_note(search) == (  # type: ignore[arg-type]
        "greedy selection over 5 models (the 2 best bagged networks and 3 classical "
        "models), 12 of 50 rounds"
    )
