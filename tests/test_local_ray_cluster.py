"""The local search on a running Ray cluster: real Ray processes, loopback only.

These tests start Ray nodes (a head and, where said, a second node) on this machine and
connect the search to them by address, so connection, shipping of the `broker` package,
the object store, the epoch board actor, cancellation and the freeing of the nodes' CPUs
are Ray's own. They run only under `scripts/check-ray.sh`, which installs the `ray` extra
and runs them in a network namespace that has nothing but the loopback interface, with
Ray's usage reporting off: a node can then reach nothing beyond this machine.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _ray_search import frame as _frame
from _ray_search import search as _search
from _ray_search import trials as _trials

from broker.errors import ProviderUnavailableError
from broker.local.loop import DEADLINE_GRACE_S

if os.environ.get("AUTOML_BROKER_RAY_LOOPBACK") != "1":
    pytest.skip(
        "starts Ray nodes; run scripts/check-ray.sh, which runs these tests in a "
        "loopback-only network namespace",
        allow_module_level=True,
    )
ray = pytest.importorskip("ray", reason="the ray extra is not installed")
cluster_utils = pytest.importorskip("ray.cluster_utils")

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"


@pytest.fixture
def start_cluster() -> Iterator[Any]:
    """Starts a Ray cluster of the given nodes (CPUs each) and returns its address."""
    started: list[Any] = []

    def start(*node_cpus: int) -> str:
        cluster = cluster_utils.Cluster(
            initialize_head=True,
            head_node_args=_node_args(node_cpus[0]),
        )
        started.append(cluster)
        for cpus in node_cpus[1:]:
            cluster.add_node(**_node_args(cpus))
        cluster.wait_for_nodes()
        return str(cluster.address)

    yield start
    ray.shutdown()
    for cluster in started:
        cluster.shutdown()


def _node_args(cpus: int) -> dict[str, Any]:
    return {
        "num_cpus": cpus,
        "num_gpus": 0,
        "node_ip_address": LOOPBACK,
        "include_dashboard": False,
        "object_store_memory": 128 * 1024**2,
    }


def _cpus_free_within(total: float, seconds: float) -> float:
    """The cluster's free CPUs once they are all free again, or after `seconds`."""
    until = time.monotonic() + seconds
    free = ray.available_resources().get("CPU", 0.0)
    while free < total and time.monotonic() < until:
        time.sleep(0.1)
        free = ray.available_resources().get("CPU", 0.0)
    return float(free)


def test_search_on_a_one_cpu_cluster_prunes_exactly_as_the_search_on_this_machine(
    start_cluster,  # type: ignore[no-untyped-def]
) -> None:
    settings = {"max_trials": 8, "max_epochs": 12, "patience": 12, "seed": 3}
    here = _search(_frame(), pruner="asha", workers=1, **settings)
    address = start_cluster(1)

    there = _search(_frame(), pruner="asha", ray_address=address, **settings)

    assert _trials(there) == _trials(here)
    reasons = [t[2] for t in _trials(here)]
    assert "pruned" in reasons and "max_epochs" in reasons
    assert [t.curve for t in there.trials] == [t.curve for t in here.trials]
    assert there.best is not None and there.best.state_dict
    assert _cpus_free_within(1.0, 10.0) == 1.0


def test_search_on_two_nodes_runs_every_trial_and_leaves_their_cpus_free(
    start_cluster,  # type: ignore[no-untyped-def]
) -> None:
    address = start_cluster(1, 1)

    result = _search(
        _frame(), max_trials=6, max_epochs=4, patience=4, seed=0, ray_address=address
    )

    assert sorted(t.trial_number for t in result.trials) == [1, 2, 3, 4, 5, 6]
    assert [t.stop_reason for t in result.trials] == ["max_epochs"] * 6
    assert all(t.epochs_run == 4 and 0.0 <= t.score <= 1.0 for t in result.trials)
    assert result.stop_reason == "max_trials"
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert _cpus_free_within(2.0, 10.0) == 2.0


def test_trials_running_at_the_deadline_stop_there_and_keep_their_scores(
    start_cluster,  # type: ignore[no-untyped-def]
) -> None:
    address = start_cluster(1, 1)
    ray.init(address=address)  # connect first, so the budget is the search's alone
    started = time.monotonic()

    result = _search(
        _frame(400),
        budget_s=6.0,
        max_epochs=100_000,
        patience=100_000,
        seed=0,
        ray_address=address,
    )

    elapsed = time.monotonic() - started
    assert result.stop_reason == "deadline"
    assert [t.stop_reason for t in result.trials] == ["deadline", "deadline"]
    assert all(not np.isnan(t.score) and t.epochs_run > 0 for t in result.trials)
    assert result.best is not None and result.best.state_dict
    assert 6.0 <= elapsed < 6.0 + DEADLINE_GRACE_S + 3.0
    assert _cpus_free_within(2.0, 5.0) == 2.0


def test_cancelled_search_stops_its_trials_on_the_cluster_and_frees_their_cpus(
    start_cluster,  # type: ignore[no-untyped-def]
) -> None:
    address = start_cluster(1, 1)
    ray.init(address=address)  # connect first, so the wait is the search's alone
    stop = threading.Event()
    cancel = threading.Timer(6.0, stop.set)
    cancel.start()
    started = time.monotonic()

    result = _search(
        _frame(400),
        stop_event=stop,
        max_epochs=100_000,
        patience=100_000,
        seed=0,
        ray_address=address,
    )

    elapsed = time.monotonic() - started
    cancel.cancel()
    assert result.stop_reason == "cancelled"
    assert [t.stop_reason for t in result.trials] == ["cancelled", "cancelled"]
    assert all(not np.isnan(t.score) and t.epochs_run > 0 for t in result.trials)
    assert 6.0 <= elapsed < 6.0 + 3.0  # each trial stopped at its next epoch
    assert _cpus_free_within(2.0, 5.0) == 2.0


def test_address_where_no_cluster_listens_is_unavailable_and_names_it() -> None:
    with socket.socket() as probe:  # a port on loopback that nothing listens on
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    address = f"{LOOPBACK}:{port}"
    started = time.monotonic()

    with pytest.raises(ProviderUnavailableError) as info:
        _search(_frame(), max_trials=1, seed=0, ray_address=address)

    message = str(info.value)
    assert message.startswith(f"cannot reach the Ray cluster at {address}: ")
    assert message.endswith(
        "; check the address and that the cluster is running, or leave ray_address "
        "out to train on this machine"
    )
    assert info.value.reason == "ray_unreachable"
    assert time.monotonic() - started < 10.0  # the probe, not Ray's own retries
