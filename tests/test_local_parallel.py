"""Where local trials run: worker processes, devices per worker, and Ray (not installed)."""

from __future__ import annotations

import multiprocessing
import sys
import time

import numpy as np
import pandas as pd
import pytest
from _local_settings import SMALL

from broker.errors import ProviderUnavailableError
from broker.local.parallel import assign_devices, default_workers, plan_execution
from broker.local.search import SearchOptions, run_search
from broker.local.space import Categorical, SearchSpace


def _frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    return pd.DataFrame({"a": a, "b": b, "label": np.where(a > 0, "yes", "no")})


def _search(**options: object):  # type: ignore[no-untyped-def]
    return run_search(
        _frame(),
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=[],
        metric="roc_auc",
        budget_s=60,
        classes=["no", "yes"],
        positive_class="yes",
        space=SearchSpace(
            params={
                "width": Categorical([4, 8]),
                "activation": Categorical(["relu", "gelu"]),
            },
            fixed=SMALL,
        ),
        options=SearchOptions(**options),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("cpu_count", "gpu_count", "workers"),
    [(2, 0, 1), (1, 0, 1), (8, 0, 4), (64, 0, 4), (16, 1, 1), (16, 4, 4)],
)
def test_default_workers_one_per_gpu_else_one_per_two_cores(
    cpu_count: int, gpu_count: int, workers: int
) -> None:
    assert default_workers(cpu_count, gpu_count) == workers


def test_assign_devices_gives_each_gpu_in_turn() -> None:
    assert assign_devices(3, 0) == ["cpu", "cpu", "cpu"]
    assert assign_devices(4, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert assign_devices(3, 2) == ["cuda:0", "cuda:1", "cuda:0"]


def test_plan_execution_on_a_faked_four_gpu_machine_runs_one_worker_per_gpu() -> None:
    plan = plan_execution(None, cpu_count=16, gpu_count=4)

    assert plan.workers == 4
    assert plan.devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert plan.threads_per_worker == 4
    assert not plan.in_process


def test_plan_execution_splits_the_cores_between_cpu_workers() -> None:
    two_core = plan_execution(None, cpu_count=2, gpu_count=0)
    three_workers = plan_execution(3, cpu_count=8, gpu_count=0)

    # a two-core machine trains one trial at a time in the search's own thread
    assert (two_core.workers, two_core.threads_per_worker) == (1, 2)
    assert two_core.in_process
    assert three_workers.devices == ["cpu"] * 3
    assert three_workers.threads_per_worker == 2


@pytest.mark.slow
def test_search_in_two_worker_processes_runs_every_trial_and_leaves_none_alive() -> (
    None
):
    started = time.monotonic()

    result = _search(max_trials=4, max_epochs=2, workers=2, seed=0)

    assert len(result.trials) == 4
    assert sorted(t.trial_number for t in result.trials) == [1, 2, 3, 4]
    assert result.stop_reason == "max_trials"
    assert all(t.epochs_run == 2 for t in result.trials)
    assert result.best is not None and result.best.state_dict
    assert multiprocessing.active_children() == []
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_search_in_worker_processes_stops_running_trials_at_the_deadline() -> None:
    started = time.monotonic()

    result = run_search(
        _frame(400),
        target="label",
        task="binary",
        numeric=["a", "b"],
        categorical=[],
        metric="roc_auc",
        budget_s=6.0,
        space=SearchSpace(params={"width": Categorical([4, 8])}, fixed=SMALL),
        options=SearchOptions(workers=2, max_epochs=100_000, patience=100_000, seed=0),
    )

    elapsed = time.monotonic() - started
    # both workers' trials ran into the deadline and kept their scores
    assert result.stop_reason == "deadline"
    assert [t.stop_reason for t in result.trials] == ["deadline", "deadline"]
    assert all(not np.isnan(t.score) and t.epochs_run > 0 for t in result.trials)
    assert result.best is not None and result.best.state_dict
    assert 6.0 <= elapsed < 6.0 + 2.0 + 5.0  # the allowance includes closing workers
    assert multiprocessing.active_children() == []


def test_search_ray_address_without_ray_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as where the extra is absent

    with pytest.raises(
        ProviderUnavailableError, match=r"pip install 'automl-broker\[ray\]'"
    ) as info:
        _search(max_trials=1, ray_address="ray://127.0.0.1:10001")

    assert info.value.provider == "local"
    assert info.value.failover_allowed is True
