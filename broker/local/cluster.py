"""Trials on an existing Ray cluster, judged and stopped as they are on this machine.

Each trial runs as a Ray task. After every epoch it reports its best score to a small
actor, the epoch board, and waits for the search's answer: go on, prune, or stop because
of the deadline or a cancellation. The search (the calling process) reads the board, asks
the same pruner the other ways of running trials ask, and posts the answers, so a pruning
decision does not depend on where the trial ran.

Deadlines cross machines as wall-clock times: a task turns the search's deadline into its
own monotonic clock when it starts, so the nodes' clocks must agree to within a second or
so (NTP). A trial still running at the deadline stops at its next epoch boundary, or
abandons an epoch in progress after the grace period, and returns its best score like any
other trial. A task that has not returned `RETURN_ALLOWANCE_S` after that is cancelled,
and the log says its result was lost (unless the search has no model yet: a first trial
finishes its first epoch, as it does here). A lost task is not retried.

Before connecting, the search checks that the address answers the opening of a gRPC
session, as Ray's servers do: where nothing listens, or another service answers, Ray's
own connection would retry for many minutes, and the job is better off falling back to
this machine at once.

The cluster runs this package's code: the search ships the `broker` package to it as a
runtime-environment module, and the nodes need the project's dependencies (torch, numpy,
pandas, scikit-learn, optuna) installed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import ProviderUnavailableError
from broker.local.loop import DEADLINE_GRACE_S, SearchLoop, require_ray
from broker.local.scoring import ValidationMetric
from broker.local.trainer import TrialData, TrialOutcome, train_trial

if TYPE_CHECKING:
    from broker.local.search import SearchOptions

logger = logging.getLogger(__name__)

# How long the search waits for a cluster's address to accept a connection and answer.
PROBE_TIMEOUT_S = 5.0
# what an HTTP/2 client sends first (RFC 9113, 3.4), and an empty SETTINGS frame
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
# How long after the hard deadline the search waits for a task to return its result.
RETURN_ALLOWANCE_S = 5.0
# How often the search reads the board, and a waiting trial asks for its answer; how
# long a call to the board may take before the search gives up on the cluster.
POLL_S = 0.05
ANSWER_POLL_S = 0.02
BOARD_TIMEOUT_S = 30.0

Report = tuple[int, int, float]  # trial number, epoch index, best score so far
Answer = tuple[int, int, str]  # trial number, epoch index, "go" / "prune" / a stop


class EpochBoard:
    """Epoch reports from the trials on the cluster and the search's answers.

    Runs as a Ray actor, which calls its methods one at a time.
    """

    def __init__(self) -> None:
        self._reports: list[Report] = []
        self._answers: dict[tuple[int, int], str] = {}

    def report(self, number: int, epoch: int, best_score: float) -> None:
        self._reports.append((number, epoch, best_score))

    def take_reports(self) -> list[Report]:
        """The reports since the last call, oldest first."""
        reports, self._reports = self._reports, []
        return reports

    def answer(self, answers: list[Answer]) -> None:
        for number, epoch, verdict in answers:
            self._answers[(number, epoch)] = verdict

    def verdict(self, number: int, epoch: int) -> str | None:
        """The answer to a trial's report, once the search has posted it."""
        return self._answers.pop((number, epoch), None)


def run_on_ray(loop: SearchLoop, data: TrialData, options: SearchOptions) -> str:
    """Trials as tasks on the Ray cluster at `options.ray_address`, one per GPU when the
    cluster has GPUs, else one per CPU; returns the search's stop reason.

    Raises:
        ProviderUnavailableError: Ray is not installed, the cluster cannot be reached,
            or a trial failed on it (its nodes lack a dependency, or a node was lost).
    """
    address = str(options.ray_address)
    ray = _connect(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    slots = gpus or max(1, int(resources.get("CPU", 1)))
    # a lost task is not run again: it would start over after other trials were judged
    train = ray.remote(max_retries=0)(train_on_node)
    if gpus:
        train = train.options(num_gpus=1)
    # the board takes no CPU, so trials on every CPU cannot keep it from being placed
    board = ray.remote(num_cpus=0)(EpochBoard).remote()
    shared = ray.put(data)  # sent to the cluster once, not with every trial
    logger.info("searching on the Ray cluster at %s: %d trials at once", address, slots)

    running: dict[Any, int] = {}
    try:
        return _drive(ray, loop, options, train, board, shared, slots, running)
    finally:
        _release(ray, running, board)


def _connect(address: str) -> Any:
    import broker

    ray = require_ray(address)
    if ray.is_initialized():
        logger.info("using this process's existing Ray connection, not %s", address)
        return ray
    try:
        probe_address(address)
        ray.init(address=address, runtime_env={"py_modules": [broker]})
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ...
        raise ProviderUnavailableError(
            f"cannot reach the Ray cluster at {address}: {type(exc).__name__}: {exc}; "
            "check the address and that the cluster is running, or leave ray_address "
            "out to train on this machine",
            provider="local",
            reason="ray_unreachable",
        ) from None
    return ray


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check that a `host:port` or `ray://host:port` address answers as a Ray cluster.

    Ray's own connection keeps retrying for many minutes an address where nothing
    listens, or where a service that is not Ray's answers; this fails within
    `timeout_s`. Both of Ray's endpoints (the cluster's control store and its client
    server) speak gRPC, so the check opens a connection and asks for an HTTP/2 session,
    which such a server acknowledges with its settings. With `RAY_USE_TLS` set only the
    connection is checked. Other forms ("auto", a bare host) are left to Ray.

    Raises:
        OSError: nothing accepted the connection in time.
        ConnectionError: the service there did not answer as a gRPC server in time.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return  # an IPv6 address without a port ("::1"): Ray's to read
    where = (host.strip("[]"), int(port))
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(where, timeout=timeout_s) as connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        connection.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
        header = b""
        try:
            while len(header) < 9:
                connection.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = connection.recv(9 - len(header))
                if not chunk:
                    break
                header += chunk
        except TimeoutError:
            if not header:
                raise ConnectionError(
                    f"the service at {host}:{port} accepted the connection but did "
                    f"not answer within {timeout_s:g} s as a Ray cluster does"
                ) from None
        except OSError as exc:
            raise ConnectionError(
                f"the service at {host}:{port} dropped the connection ({exc}) instead "
                "of answering as a Ray cluster does"
            ) from None
    if header[:1] in (b"\x15", b"\x16"):  # a TLS alert or handshake record
        raise ConnectionError(
            f"the service at {host}:{port} answered with TLS; if it is a Ray cluster "
            "that requires TLS, set RAY_USE_TLS=1 and Ray's certificate variables "
            "(RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT)"
        )
    # an HTTP/2 frame header: 3 bytes of length, then the type (4: SETTINGS)
    if len(header) < 9 or header[3] != 4:
        raise ConnectionError(
            f"the service at {host}:{port} is not a Ray cluster: it did not answer "
            f"the gRPC handshake (its first bytes: {header!r})"
        )


def _drive(
    ray: Any,
    loop: SearchLoop,
    options: SearchOptions,
    train: Any,
    board: Any,
    shared: Any,
    slots: int,
    running: dict[Any, int],
) -> str:
    address = str(options.ray_address)
    reason: str | None = None
    give_up_at: float | None = None
    while True:
        if reason is None:
            reason = loop.should_stop()
        while reason is None and len(running) < slots:
            begun = loop.begin()
            if begun is None:
                reason = "space_exhausted"
                break
            number, config = begun
            ref = train.remote(
                number,
                config,
                shared,
                loop.metric,
                board,
                patience=options.patience,
                max_epochs=options.max_epochs,
                seed=loop.seed_of(number),
                deadline_epoch_s=time.time() + (loop.deadline - time.monotonic()),
                keep_first_epoch=loop.best is None,
            )
            running[ref] = number
            reason = loop.should_stop()
        if not running:
            return loop.interrupted() or reason or "space_exhausted"

        _answer(ray, board, loop, set(running.values()))
        done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
        for ref in done:
            number = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # Ray wraps the task's error; `cause` holds it
                cause = getattr(exc, "cause", None) or exc
                raise ProviderUnavailableError(
                    f"trial {number} failed on the Ray cluster at {address}: "
                    f"{type(cause).__name__}: {cause}; the cluster's nodes need the "
                    "project's dependencies (torch, numpy, pandas, scikit-learn, "
                    "optuna), or leave ray_address out to train on this machine",
                    provider="local",
                    reason="ray_trial_failed",
                ) from None
            loop.record(outcome)

        stop = loop.interrupted()
        if stop is not None and give_up_at is None:
            give_up_at = time.monotonic() + DEADLINE_GRACE_S + RETURN_ALLOWANCE_S
        # a first trial finishes its first epoch whatever the deadline, as here
        if (
            give_up_at is not None
            and time.monotonic() >= give_up_at
            and loop.best is not None
        ):
            _cancel(ray, running, "its result is lost")
            return stop or reason or "deadline"


def _answer(ray: Any, board: Any, loop: SearchLoop, running: set[int]) -> None:
    """Judge the epochs the trials reported since the last look, and post the answers.

    A report from a trial that has already returned (it stopped waiting for its answer
    at its hard deadline) is dropped.
    """
    reports = ray.get(board.take_reports.remote(), timeout=BOARD_TIMEOUT_S)
    answers: list[Answer] = []
    for number, epoch, best_score in reports:
        if number not in running:
            continue
        stop = loop.interrupted()
        if stop is None and loop.epoch_hook(number)(epoch, best_score):
            stop = "prune"
        answers.append((number, epoch, stop or "go"))
    if answers:
        ray.get(board.answer.remote(answers), timeout=BOARD_TIMEOUT_S)


def _release(ray: Any, running: dict[Any, int], board: Any) -> None:
    """Cancel the trials still running and remove the board, on any way out.

    A failure here (a node lost with the board, a connection gone) is logged and
    dropped: it must neither take the search's finished trials from the caller nor
    hide the error that ended the search.
    """
    _cancel(ray, running, "the search stopped")
    try:
        ray.kill(board)
    except Exception as exc:  # cleanup: the search's own outcome wins
        logger.warning(
            "could not remove the search's board actor from the Ray cluster (%s: %s); "
            "Ray removes it when this process disconnects",
            type(exc).__name__,
            exc,
        )


def _cancel(ray: Any, running: dict[Any, int], why: str) -> None:
    """Cancel each trial still running; one that cannot be cancelled is logged, and
    stops at its next epoch once the board is gone, or at the search's deadline."""
    for ref, number in running.items():
        try:
            ray.cancel(ref, force=True)
        except Exception as exc:  # cleanup: the search's own outcome wins
            logger.warning(
                "trial %d is still running on the Ray cluster and could not be "
                "cancelled (%s: %s); %s",
                number,
                type(exc).__name__,
                exc,
                why,
            )
        else:
            logger.warning(
                "trial %d was still running on the Ray cluster: cancelled, %s",
                number,
                why,
            )
    running.clear()


def train_on_node(
    number: int,
    config: dict[str, Any],
    data: TrialData,
    metric: ValidationMetric,
    board: Any,
    *,
    patience: int,
    max_epochs: int,
    seed: int,
    deadline_epoch_s: float,
    keep_first_epoch: bool,
) -> TrialOutcome:
    """One trial in a Ray task: it reports each epoch to `board` and follows the
    answer, and stops on its own at the deadline (a wall-clock time)."""
    import ray
    import torch

    data = writable(data)
    deadline = time.monotonic() + (deadline_epoch_s - time.time())
    hard_deadline = deadline + DEADLINE_GRACE_S
    told: list[str] = []

    def on_epoch(epoch: int, best_score: float) -> bool:
        ray.get(board.report.remote(number, epoch, best_score))
        while True:
            verdict = ray.get(board.verdict.remote(number, epoch))
            if verdict is not None:
                break
            if time.monotonic() >= hard_deadline:
                verdict = "deadline"  # the search stopped answering
                break
            time.sleep(ANSWER_POLL_S)
        if verdict == "prune":
            return True
        if verdict != "go":
            told.append(verdict)
        return False

    def should_stop() -> str | None:
        if told:
            return told[0]
        return "deadline" if time.monotonic() >= deadline else None

    return train_trial(
        number,
        config,
        data,
        metric,
        patience=patience,
        max_epochs=max_epochs,
        should_stop=should_stop,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
        seed=seed,
        hard_deadline=hard_deadline,
        keep_first_epoch=keep_first_epoch,
        on_epoch=on_epoch,
    )


def writable(data: TrialData) -> TrialData:
    """`data` with its read-only arrays copied.

    A Ray task gets its arguments' arrays as read-only views of the node's object
    store; torch warns about wrapping those in tensors (writing to them would be
    undefined), so each trial trains on its own copy.
    """
    copies: dict[str, Any] = {}
    for field in fields(data):
        value = getattr(data, field.name)
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            copies[field.name] = value.copy()
    return replace(data, **copies) if copies else data
