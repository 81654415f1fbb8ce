"""Trials in worker processes: several on the CPU, or one per GPU.

Each worker is a process started with the "spawn" context that holds the prepared data
and trains one trial at a time. After every epoch it reports the trial's best score to
the search and waits for the answer: go on, prune, or stop (deadline, cancellation). The
search keeps every decision; the workers only train. A worker on the CPU uses
``cores // workers`` threads, so the workers together use the machine's cores once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

logger = logging.getLogger(__name__)

# How long closing waits for a worker process to exit before terminating it.
CLOSE_WAIT_S = 5.0


@dataclass(frozen=True)
class Execution:
    """Where trials run: how many workers, on which devices, with how many threads."""

    workers: int
    devices: list[str]
    threads_per_worker: int

    @property
    def in_process(self) -> bool:
        """One worker runs in the search's own thread; no process is started."""
        return self.workers == 1


def default_workers(cpu_count: int, gpu_count: int) -> int:
    """One per GPU on a multi-GPU machine; on the CPU one per two cores, at most 4.

    A machine with one GPU or with two cores or fewer runs one trial at a time.
    """
    if gpu_count >= 1:
        return gpu_count
    return 1 if cpu_count <= 2 else min(4, cpu_count // 2)


def assign_devices(workers: int, gpu_count: int) -> list[str]:
    """The torch device of each worker: GPUs in turn, else the CPU for all."""
    if gpu_count <= 0:
        return ["cpu"] * workers
    return [f"cuda:{index % gpu_count}" for index in range(workers)]


def plan_execution(
    workers: int | None,
    *,
    cpu_count: int | None = None,
    gpu_count: int | None = None,
) -> Execution:
    """Resolve the `workers` option against this machine's cores and GPUs.

    Args:
        cpu_count: cores to plan for; default ``os.cpu_count()``.
        gpu_count: GPUs to plan for; default ``torch.cuda.device_count()``.
    """
    if cpu_count is None:
        cpu_count = os.cpu_count() or 1
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = workers if workers is not None else default_workers(cpu_count, gpu_count)
    return Execution(
        workers=count,
        devices=assign_devices(count, gpu_count),
        threads_per_worker=max(1, cpu_count // count),
    )


class WorkerPool:
    """Worker processes that train trials on request and report every epoch.

    Args:
        data: the prepared :class:`~broker.local.trainer.TrialData`.
        metric: the :class:`~broker.local.scoring.ValidationMetric`.
        execution: how many workers, their devices and threads.
        patience: early-stopping patience of each trial.
        max_epochs: epochs at most per trial.
        name: prefix of the worker processes' names.
    """

    def __init__(
        self,
        *,
        data: Any,
        metric: Any,
        execution: Execution,
        patience: int,
        max_epochs: int,
        name: str = "local-search",
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._connections: list[Connection] = []
        self._processes: list[Any] = []
        self._ready: list[bool] = []
        self._busy: list[int | None] = []
        for index, device in enumerate(execution.devices):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(
                    child,
                    data,
                    metric,
                    device,
                    execution.threads_per_worker,
                    patience,
                    max_epochs,
                ),
                name=f"{name}-worker-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._connections.append(parent)
            self._processes.append(process)
            self._ready.append(False)
            self._busy.append(None)

    def idle(self) -> list[int]:
        return [
            i
            for i, (ready, busy) in enumerate(zip(self._ready, self._busy, strict=True))
            if ready and busy is None and self._processes[i].is_alive()
        ]

    @property
    def running(self) -> int:
        return sum(b is not None for b in self._busy)

    def start(
        self,
        worker: int,
        number: int,
        config: dict[str, Any],
        *,
        seed: int,
        hard_deadline: float,
        keep_first_epoch: bool,
    ) -> None:
        self._busy[worker] = number
        self._connections[worker].send(
            ("trial", number, config, seed, hard_deadline, keep_first_epoch)
        )

    def events(self, timeout_s: float) -> list[tuple[int, tuple[Any, ...]]]:
        """Messages from the workers within `timeout_s`: ("epoch", number, epoch,
        best_score) waits for :meth:`answer`; ("done", number, outcome) frees the worker.

        Raises:
            RuntimeError: a worker process died.
        """
        ready = wait(self._connections, timeout=timeout_s)
        events: list[tuple[int, tuple[Any, ...]]] = []
        for handle in ready:
            worker = self._connections.index(handle)  # type: ignore[arg-type]
            connection = self._connections[worker]
            try:
                message = connection.recv()
            except (EOFError, OSError):
                code = self._processes[worker].exitcode
                raise RuntimeError(
                    f"trial worker {worker} ended unexpectedly (exit code {code}) "
                    f"while training trial {self._busy[worker]}"
                ) from None
            if message[0] == "ready":
                self._ready[worker] = True
                continue
            if message[0] == "done":
                self._busy[worker] = None
                message = ("done", message[1], _outcome_from_wire(message[2]))
            events.append((worker, message))
        return events

    def answer(self, worker: int, decision: str) -> None:
        """Reply to an epoch report: "go", "prune", "deadline" or "cancelled"."""
        self._connections[worker].send(decision)

    def close(self) -> None:
        """Stop every worker; terminate any that does not exit in time."""
        for connection in self._connections:
            with contextlib.suppress(BrokenPipeError, OSError):
                connection.send(("exit",))
        limit = time.monotonic() + CLOSE_WAIT_S
        for process in self._processes:
            process.join(max(0.0, limit - time.monotonic()))
            if process.is_alive():
                logger.warning(
                    "trial worker %s did not exit; terminating", process.name
                )
                process.terminate()
                process.join(CLOSE_WAIT_S)
        for connection in self._connections:
            connection.close()


def _worker_main(
    connection: Connection,
    data: Any,
    metric: Any,
    device_name: str,
    threads: int,
    patience: int,
    max_epochs: int,
) -> None:
    import torch

    from broker.local.trainer import train_trial

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    connection.send(("ready",))
    while True:
        message = connection.recv()
        if message[0] != "trial":
            return
        _, number, config, seed, hard_deadline, keep_first_epoch = message
        on_epoch, should_stop = _epoch_channel(connection, number)
        outcome = train_trial(
            number,
            config,
            data,
            metric,
            patience=patience,
            max_epochs=max_epochs,
            should_stop=should_stop,
            device=device,
            seed=seed,
            hard_deadline=hard_deadline,
            keep_first_epoch=keep_first_epoch,
            on_epoch=on_epoch,
        )
        connection.send(("done", number, _outcome_to_wire(outcome)))


def _epoch_channel(
    connection: Connection, number: int
) -> tuple[Callable[[int, float], bool], Callable[[], str | None]]:
    """Report each epoch to the search and read its decision back."""
    stop: list[str | None] = [None]

    def on_epoch(epoch: int, best_score: float) -> bool:
        connection.send(("epoch", number, epoch, best_score))
        decision = connection.recv()
        if decision in ("deadline", "cancelled"):
            stop[0] = decision
            return False
        return bool(decision == "prune")

    return on_epoch, lambda: stop[0]


def _outcome_to_wire(outcome: Any) -> Any:
    """Plain arrays instead of tensors, so nothing depends on shared memory."""
    outcome.state_dict = {k: v.cpu().numpy() for k, v in outcome.state_dict.items()}
    return outcome


def _outcome_from_wire(outcome: Any) -> Any:
    import torch

    outcome.state_dict = {k: torch.from_numpy(v) for k, v in outcome.state_dict.items()}
    return outcome
