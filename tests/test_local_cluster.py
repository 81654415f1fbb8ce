"""The local search on a Ray cluster, through an in-process fake of the `ray` module."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from _local_settings import SMALL
from _ray_search import frame as _frame
from _ray_search import search as _search
from _ray_search import trials as _trials

import broker
from broker.errors import ProviderUnavailableError
from broker.local.cluster import EpochBoard, probe_address, train_on_node, writable
from broker.local.loop import DEADLINE_GRACE_S
from broker.local.space import Categorical, SearchSpace
from broker.testing.ray_fake import FakeRayCluster


@pytest.fixture(autouse=True)
def _no_ray_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The address checks here speak clear text, whatever the caller's Ray settings."""
    monkeypatch.delenv("RAY_USE_TLS", raising=False)


@pytest.fixture
def install_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeRayCluster]]:
    made: list[FakeRayCluster] = []

    def install(*args, **kwargs):  # type: ignore[no-untyped-def]
        cluster = FakeRayCluster(*args, **kwargs)
        monkeypatch.setitem(sys.modules, "ray", cluster.module())
        made.append(cluster)
        return cluster

    yield install  # type: ignore[misc]
    for cluster in made:
        cluster.close()


def test_ray_search_runs_its_trials_on_the_cluster_as_many_at_once_as_it_has_cpus(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=2)

    result = _search(
        _frame(), max_trials=4, max_epochs=3, seed=0, ray_address=cluster.address
    )

    assert [t[:3] for t in _trials(result)] == [
        (1, 3, "max_epochs"),
        (2, 3, "max_epochs"),
        (3, 3, "max_epochs"),
        (4, 3, "max_epochs"),
    ]
    assert all(0.0 <= t.score <= 1.0 for t in result.trials)  # scored, none lost
    assert result.stop_reason == "max_trials"
    assert result.best is not None and result.best.state_dict
    # one connection, with this package shipped to the nodes; the data sent once;
    # trials not retried, the board on no CPU, and removed at the end
    assert cluster.init_calls == [
        {"address": cluster.address, "runtime_env": {"py_modules": [broker]}}
    ]
    assert cluster.remote_options == [
        {"target": "train_on_node", "max_retries": 0},
        {"target": "EpochBoard", "num_cpus": 0},
    ]
    assert cluster.task_options == [{"max_retries": 0}] * 4
    assert len(cluster.killed) == 1
    assert cluster.puts == 1
    assert cluster.tasks_submitted == 4
    assert cluster.max_running == 2
    assert cluster.unfinished == 0


def test_ray_search_on_a_gpu_cluster_runs_one_trial_per_gpu(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=8, gpus=2)

    result = _search(
        _frame(), max_trials=4, max_epochs=2, seed=0, ray_address=cluster.address
    )

    assert len(result.trials) == 4
    assert cluster.task_options == [{"max_retries": 0, "num_gpus": 1}] * 4
    assert cluster.max_running == 2


def test_ray_search_uses_an_existing_connection_of_this_process(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=1)
    cluster.initialized = True

    result = _search(
        _frame(), max_trials=1, max_epochs=1, seed=0, ray_address=cluster.address
    )

    assert cluster.init_calls == []
    assert len(result.trials) == 1


def test_ray_address_where_nothing_listens_fails_at_once_without_asking_ray(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=1)
    with socket.socket() as spare:  # a loopback port that nothing listens on
        spare.bind(("127.0.0.1", 0))
        address = f"ray://127.0.0.1:{spare.getsockname()[1]}"
    started = time.monotonic()

    with pytest.raises(ProviderUnavailableError) as info:
        _search(_frame(), max_trials=1, seed=0, ray_address=address)

    assert str(info.value) == (
        f"cannot reach the Ray cluster at {address}: ConnectionRefusedError: [Errno "
        "111] Connection refused; check the address and that the cluster is running, "
        "or leave ray_address out to train on this machine"
    )
    assert info.value.reason == "ray_unreachable"
    assert cluster.init_calls == []  # Ray itself would retry for many minutes
    assert time.monotonic() - started < 5.0


def test_ray_address_forms_without_a_port_are_left_to_ray() -> None:
    probe_address("auto")  # returns without connecting anywhere
    probe_address("ray://")
    probe_address("::1")  # an IPv6 address, not host ":" and port 1

    with pytest.raises(OSError):
        probe_address("127.0.0.1:0", timeout_s=1.0)


@contextlib.contextmanager
def _loopback_service(answer: bytes | None) -> Iterator[str]:
    """A service on a loopback port that sends `answer` to each connection (None: says
    nothing) and keeps it open until the test ends; yields its `host:port`."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    done = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            held.append(connection)
            if answer is not None:
                connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def test_ray_address_of_a_service_that_is_not_ray_fails_at_once_naming_it(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=1)
    started = time.monotonic()

    with (
        _loopback_service(b"HTTP/1.1 400 Bad Request\r\n\r\n") as address,
        pytest.raises(ProviderUnavailableError) as info,
    ):
        _search(_frame(), max_trials=1, seed=0, ray_address=address)

    assert str(info.value) == (
        f"cannot reach the Ray cluster at {address}: ConnectionError: the service at "
        f"{address} is not a Ray cluster: it did not answer the gRPC handshake (its "
        "first bytes: b'HTTP/1.1 '); check the address and that the cluster is "
        "running, or leave ray_address out to train on this machine"
    )
    assert info.value.reason == "ray_unreachable"
    assert cluster.init_calls == []  # Ray itself would retry for many minutes
    assert time.monotonic() - started < 2.0


def test_ray_address_of_a_service_that_says_nothing_fails_after_the_probe_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _loopback_service(None) as address:
        started = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            probe_address(address, timeout_s=0.5)
        waited = time.monotonic() - started

        assert str(info.value) == (
            f"the service at {address} accepted the connection but did not answer "
            "within 0.5 s as a Ray cluster does"
        )
        assert 0.5 <= waited < 1.5

        # a cluster behind TLS cannot be asked in clear text: only the port is checked
        monkeypatch.setenv("RAY_USE_TLS", "1")
        probe_address(address, timeout_s=0.5)


def test_ray_address_of_a_tls_service_suggests_ray_use_tls() -> None:
    alert = b"\x15\x03\x01\x00\x02\x02\x46"  # a TLS alert: protocol version
    with _loopback_service(alert) as address:
        with pytest.raises(ConnectionError) as info:
            probe_address(address, timeout_s=1.0)

        assert str(info.value) == (
            f"the service at {address} answered with TLS; if it is a Ray cluster that "
            "requires TLS, set RAY_USE_TLS=1 and Ray's certificate variables "
            "(RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT)"
        )


def test_ray_address_of_a_grpc_server_passes_the_probe() -> None:
    with _loopback_service(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00") as address:
        probe_address(address, timeout_s=1.0)
        probe_address(f"ray://{address}", timeout_s=1.0)


def test_ray_service_that_is_not_a_cluster_is_unavailable_and_names_the_address(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(unreachable=True)

    with pytest.raises(ProviderUnavailableError) as info:
        _search(_frame(), max_trials=1, seed=0, ray_address=cluster.address)

    assert str(info.value) == (
        f"cannot reach the Ray cluster at {cluster.address}: ConnectionError: could "
        f"not connect to {cluster.address}; check the address and that the cluster "
        "is running, or leave ray_address out to train on this machine"
    )
    assert info.value.reason == "ray_unreachable"
    assert info.value.failover_allowed is True


def test_ray_search_on_one_cpu_prunes_exactly_as_the_search_on_this_machine(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    settings = {"max_trials": 8, "max_epochs": 12, "patience": 12, "seed": 3}
    here = _search(_frame(), pruner="asha", workers=1, **settings)
    cluster = install_cluster(cpus=1)

    there = _search(_frame(), pruner="asha", ray_address=cluster.address, **settings)

    assert _trials(there) == _trials(here)
    reasons = [t[2] for t in _trials(here)]
    assert "pruned" in reasons and "max_epochs" in reasons
    assert [t.curve for t in there.trials] == [t.curve for t in here.trials]


def test_ray_trials_running_at_the_deadline_stop_there_and_keep_their_scores(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=2)
    started = time.monotonic()

    result = _search(
        _frame(400),
        budget_s=4.0,
        max_epochs=100_000,
        patience=100_000,
        seed=0,
        ray_address=cluster.address,
    )

    elapsed = time.monotonic() - started
    assert result.stop_reason == "deadline"
    assert [t.stop_reason for t in result.trials] == ["deadline", "deadline"]
    assert all(not np.isnan(t.score) and t.epochs_run > 0 for t in result.trials)
    assert result.best is not None and result.best.state_dict
    assert 4.0 <= elapsed < 4.0 + DEADLINE_GRACE_S + 2.0
    assert cluster.cancelled == []
    assert cluster.unfinished == 0


def test_ray_search_cancelled_stops_the_trials_on_the_cluster_at_their_next_epoch(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(cpus=2)
    stop = threading.Event()
    seen: list[int] = []

    def on_trial(outcome, best):  # type: ignore[no-untyped-def]
        seen.append(outcome.config["batch_size"])
        stop.set()

    # on 2,000 rows a trial of batches of 100 ends long before one of batches of two
    # (each epoch of which is 800 steps), whatever the board's round trips cost
    batches = SearchSpace(params={"batch_size": Categorical([100, 2])}, fixed=SMALL)

    result = _search(
        _frame(2000),
        stop_event=stop,
        on_trial=on_trial,
        space=batches,
        strategy="grid",
        max_epochs=20,
        patience=20,
        seed=0,
        ray_address=cluster.address,
    )

    assert result.stop_reason == "cancelled"
    assert seen == [100, 2]
    assert [(t.config["batch_size"], t.stop_reason) for t in result.trials] == [
        (100, "max_epochs"),
        (2, "cancelled"),
    ]
    assert 0 < result.trials[1].epochs_run < 20
    assert len(result.trials) == 2  # the grid's two points, none started after
    assert cluster.cancelled == []
    assert cluster.unfinished == 0


def test_ray_trial_that_fails_on_a_node_stops_the_search_naming_the_dependencies(
    install_cluster,  # type: ignore[no-untyped-def]
) -> None:
    cluster = install_cluster(
        cpus=1, task_error=ModuleNotFoundError("No module named 'torch'")
    )

    with pytest.raises(ProviderUnavailableError) as info:
        _search(_frame(), max_trials=3, seed=0, ray_address=cluster.address)

    assert str(info.value) == (
        f"trial 1 failed on the Ray cluster at {cluster.address}: "
        "ModuleNotFoundError: No module named 'torch'; the cluster's nodes need the "
        "project's dependencies (torch, numpy, pandas, scikit-learn, optuna), or leave "
        "ray_address out to train on this machine"
    )
    assert info.value.reason == "ray_trial_failed"
    assert info.value.failover_allowed is True
    assert cluster.tasks_submitted == 1
    assert len(cluster.killed) == 1  # the board is removed on the way out
    assert cluster.unfinished == 0


def test_ray_board_that_cannot_be_removed_leaves_the_search_its_trials(
    install_cluster,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = install_cluster(cpus=2, cleanup_error=ConnectionError("node lost"))

    with caplog.at_level(logging.WARNING, logger="broker.local.cluster"):
        result = _search(
            _frame(), max_trials=3, max_epochs=2, seed=0, ray_address=cluster.address
        )

    assert [t[:3] for t in _trials(result)] == [
        (1, 2, "max_epochs"),
        (2, 2, "max_epochs"),
        (3, 2, "max_epochs"),
    ]
    assert result.best is not None and result.best.state_dict
    assert len(cluster.killed) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "could not remove the search's board actor from the Ray cluster "
        "(ConnectionError: node lost); Ray removes it when this process disconnects"
    ]


def test_ray_trial_failure_is_the_error_raised_when_cleaning_up_fails_too(
    install_cluster,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = install_cluster(
        cpus=2,
        task_error=ModuleNotFoundError("No module named 'torch'"),
        cleanup_error=ConnectionError("node lost"),
    )

    with (
        caplog.at_level(logging.WARNING, logger="broker.local.cluster"),
        pytest.raises(ProviderUnavailableError) as info,
    ):
        _search(_frame(), max_trials=3, seed=0, ray_address=cluster.address)

    assert info.value.reason == "ray_trial_failed"
    assert "ModuleNotFoundError: No module named 'torch'" in str(info.value)
    # both trials were submitted; the one not yet collected is cancelled, which fails
    failed = int(str(info.value).split()[1])
    other = 3 - failed
    assert cluster.tasks_submitted == 2
    assert len(cluster.cancelled) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"trial {other} is still running on the Ray cluster and could not be "
        "cancelled (ConnectionError: node lost); the search stopped",
        "could not remove the search's board actor from the Ray cluster "
        "(ConnectionError: node lost); Ray removes it when this process disconnects",
    ]


def test_a_trial_on_a_node_turns_the_wall_clock_deadline_into_its_own_clock(
    install_cluster,
    trial_data,  # type: ignore[no-untyped-def]
) -> None:
    """A deadline already past: the trial still finishes its first epoch (the search
    has no model yet), asks the board once, and stops there."""
    cluster = install_cluster(cpus=1)
    board = cluster.remote(EpochBoard).remote()
    data, metric = trial_data(_frame())
    answered: list[tuple[int, int, float]] = []

    def answer_go() -> None:
        while not answered:
            answered.extend(cluster.get(board.take_reports.remote()))
            time.sleep(0.01)
        board.answer.remote([(n, e, "go") for n, e, _ in answered])

    ref = cluster.remote(train_on_node).remote(
        1,
        {**SMALL},
        data,
        metric,
        board,
        patience=5,
        max_epochs=50,
        seed=0,
        deadline_epoch_s=time.time() - 3600.0,
        keep_first_epoch=True,
    )
    answer_go()
    outcome = cluster.get(ref, timeout=30)

    assert [(n, e) for n, e, _ in answered] == [(1, 0)]
    assert outcome.epochs_run == 1
    assert outcome.stop_reason == "deadline"
    assert not np.isnan(outcome.score)


def test_a_trial_on_a_node_trains_on_writable_copies_of_read_only_arrays(
    trial_data,  # type: ignore[no-untyped-def]
) -> None:
    data, _ = trial_data(_frame())
    data.x_num_train.flags.writeable = False  # as Ray's object store hands them over
    data.y_train.flags.writeable = False

    copied = writable(data)

    assert copied.x_num_train.flags.writeable and copied.y_train.flags.writeable
    assert np.array_equal(copied.x_num_train, data.x_num_train)
    assert np.array_equal(copied.y_train, data.y_train)
    assert copied.x_num_train is not data.x_num_train
    assert copied.x_cat_train is data.x_cat_train  # already writable: not copied
    assert writable(copied) is copied
