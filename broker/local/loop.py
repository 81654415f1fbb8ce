"""The search's trial loop and the three ways of running trials.

:class:`SearchLoop` keeps the bookkeeping every way shares: which trial comes next, when
no further trial may start (deadline, cancellation, trial limit, no improvement), the
pruner's decisions and the best trial. Trials then run one after another in the calling
thread, in worker processes (:mod:`broker.local.parallel`), or on a Ray cluster
(:mod:`broker.local.cluster`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.errors import ProviderUnavailableError
from broker.local.pruning import EpochPruner
from broker.local.scoring import ValidationMetric
from broker.local.strategies import Strategy
from broker.local.trainer import TrialData, TrialOutcome, select_device, train_trial

if TYPE_CHECKING:
    from broker.local.parallel import Execution
    from broker.local.search import SearchOptions

logger = logging.getLogger(__name__)

# An epoch still running this long after the deadline is abandoned.
DEADLINE_GRACE_S = 1.5
RAY_EXTRA_HINT = "pip install 'automl-broker[ray]'"


def require_ray(address: str) -> Any:
    """Import Ray for `ray_address`, or say how to install it.

    Raises:
        ProviderUnavailableError: Ray is not installed.
    """
    try:
        import ray
    except ImportError:
        raise ProviderUnavailableError(
            f"ray_address={address!r} asks for a Ray cluster, but Ray is not "
            f"installed; install it with {RAY_EXTRA_HINT} or leave ray_address out to "
            f"train on this machine",
            provider="local",
            reason="ray_missing",
        ) from None
    return ray


class SearchLoop:
    """The search's bookkeeping, shared by every way of running trials."""

    def __init__(
        self,
        *,
        options: SearchOptions,
        strategy: Strategy,
        metric: ValidationMetric,
        deadline: float,
        stop_event: threading.Event,
        on_trial: Callable[[TrialOutcome, TrialOutcome], None] | None,
    ) -> None:
        self.options = options
        self.strategy = strategy
        self.metric = metric
        self.deadline = deadline
        self.stop_event = stop_event
        self.on_trial = on_trial
        self.pruner = (
            EpochPruner(options.pruner, max_epochs=options.max_epochs)
            if options.pruner != "none"
            else None
        )
        self.trials: list[TrialOutcome] = []
        self.best: TrialOutcome | None = None
        self.started = 0
        self._since_improvement = 0
        self._curves: dict[int, list[float]] = {}

    def replay(self, outcomes: list[TrialOutcome]) -> None:
        """Take back the trials an interrupted run of this search completed.

        Each one uses up the strategy's next proposal (so that a seeded random or
        grid search goes on where it stopped) and teaches the strategy its score; the
        trial counts toward `max_trials` and `stop_after_no_improvement`.
        """
        for outcome in sorted(outcomes, key=lambda t: t.trial_number):
            asked = self.strategy.ask()
            if asked is not None and asked != outcome.config:
                logger.info(
                    "trial %d: the strategy now proposes another configuration than "
                    "the interrupted search trained; keeping the trained one",
                    outcome.trial_number,
                )
                mark = getattr(self.strategy, "_mark", None)
                if mark is not None:
                    mark(outcome.config)
            self.started = max(self.started + 1, outcome.trial_number)
            if self.pruner is not None:
                # the pruner judges new trials against the completed ones' curves
                self.pruner.replay(
                    outcome.trial_number,
                    [self.reward(score) for score in outcome.curve],
                    self.reward(outcome.score),
                    pruned=outcome.stop_reason == "pruned",
                )
            self.strategy.tell(outcome.config, self.reward(outcome.score))
            self.trials.append(outcome)
            if self.best is None or self.metric.better(outcome.score, self.best.score):
                self.best = outcome
                self._since_improvement = 0
            else:
                self._since_improvement += 1

    def interrupted(self) -> str | None:
        """Cancelled or past the deadline: running trials stop too."""
        if self.stop_event.is_set():
            return "cancelled"
        if time.monotonic() >= self.deadline:
            return "deadline"
        return None

    def should_stop(self) -> str | None:
        """Why no further trial may start, or None."""
        reason = self.interrupted()
        if reason is not None:
            return reason
        limit = self.options.max_trials
        if limit is not None and self.started >= limit:
            return "max_trials"
        patience = self.options.stop_after_no_improvement
        if patience is not None and self._since_improvement >= patience:
            return "no_improvement"
        return None

    def begin(self) -> tuple[int, dict[str, Any]] | None:
        """The next trial's number and configuration; None when the space is spent."""
        config = self.strategy.ask()
        if config is None:
            return None
        self.started += 1
        if self.pruner is not None:
            self.pruner.start(self.started)
        return self.started, config

    def seed_of(self, number: int) -> int:
        return self.options.seed * 1000 + number

    def epoch_hook(self, number: int) -> Callable[[int, float], bool]:
        def prune(epoch: int, best_score: float) -> bool:
            self._curves.setdefault(number, []).append(float(best_score))
            if self.pruner is None:
                return False
            return self.pruner.report(number, epoch + 1, self.reward(best_score))

        return prune

    def reward(self, score: float) -> float:
        return score if self.metric.direction == "maximize" else -score

    def record(self, outcome: TrialOutcome) -> None:
        """Keep a trial that trained at least one epoch; drop one that did not."""
        reward = self.reward(outcome.score)
        outcome.curve = self._curves.pop(outcome.trial_number, outcome.curve)
        if self.pruner is not None:
            pruned = outcome.stop_reason == "pruned"
            self.pruner.finish(outcome.trial_number, reward, pruned=pruned)
        if outcome.epochs_run == 0:
            logger.info(
                "trial %d: no epoch finished before the deadline", outcome.trial_number
            )
            return

        self.strategy.tell(outcome.config, reward)
        self.trials.append(outcome)
        if self.best is None or self.metric.better(outcome.score, self.best.score):
            if self.best is not None:
                self.best.state_dict = {}  # keep only the best weights in memory
            self.best = outcome
            self._since_improvement = 0
        else:
            outcome.state_dict = {}
            self._since_improvement += 1
        logger.info(
            "trial %d: %s %.5f after %d epochs (%s) in %.1fs; best %.5f (trial %d)",
            outcome.trial_number,
            self.metric.name,
            outcome.score,
            outcome.epochs_run,
            outcome.stop_reason,
            outcome.training_time_s,
            self.best.score,
            self.best.trial_number,
        )
        if self.on_trial is not None:
            self.on_trial(outcome, self.best)


def run_in_thread(loop: SearchLoop, data: TrialData, execution: Execution) -> str:
    """One trial after another in this thread; returns the search's stop reason."""
    import torch

    device = (
        torch.device(execution.devices[0])
        if execution.devices[0] != "cpu"
        else select_device(execution.threads_per_worker)
    )
    while True:
        reason = loop.should_stop()
        if reason is not None:
            return reason
        begun = loop.begin()
        if begun is None:
            return "space_exhausted"

        number, config = begun
        outcome = train_trial(
            number,
            config,
            data,
            loop.metric,
            patience=loop.options.patience,
            max_epochs=loop.options.max_epochs,
            should_stop=loop.interrupted,
            device=device,
            seed=loop.seed_of(number),
            hard_deadline=loop.deadline + DEADLINE_GRACE_S,
            keep_first_epoch=loop.best is None,
            on_epoch=loop.epoch_hook(number),
        )
        loop.record(outcome)
        if outcome.epochs_run == 0:
            return "deadline"


def run_in_workers(loop: SearchLoop, data: TrialData, execution: Execution) -> str:
    """Trials in worker processes, as many at once as there are workers."""
    from broker.local.parallel import WorkerPool

    pool = WorkerPool(
        data=data,
        metric=loop.metric,
        execution=execution,
        patience=loop.options.patience,
        max_epochs=loop.options.max_epochs,
    )
    reason: str | None = None
    try:
        while True:
            if reason is None:
                reason = loop.should_stop()
            for worker in pool.idle() if reason is None else []:
                begun = loop.begin()
                if begun is None:
                    reason = "space_exhausted"
                    break
                number, config = begun
                pool.start(
                    worker,
                    number,
                    config,
                    seed=loop.seed_of(number),
                    hard_deadline=loop.deadline + DEADLINE_GRACE_S,
                    keep_first_epoch=loop.best is None,
                )
                reason = loop.should_stop()
                if reason is not None:
                    break
            if reason is not None and pool.running == 0:
                # trials cut by the deadline or a cancellation end the search that way
                return loop.interrupted() or reason

            for worker, message in pool.events(timeout_s=0.05):
                if message[0] == "epoch":
                    _, number, epoch, best_score = message
                    stop = loop.interrupted()
                    if stop is None and loop.epoch_hook(number)(epoch, best_score):
                        stop = "prune"
                    pool.answer(worker, stop or "go")
                else:
                    loop.record(message[2])
    finally:
        pool.close()
