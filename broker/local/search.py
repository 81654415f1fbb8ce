"""Search network configurations within a deadline, a trial limit and a stop signal.

The search carves a validation split from the training rows it is given (the broker's
held-out rows never reach it), fits the preprocessing on the rest, then runs trials one after
another: the space's default configuration first, then configurations drawn by the strategy.
No trial starts after the deadline; a trial running at the deadline stops at its next epoch
boundary and keeps its best weights, so the search returns promptly with what it has.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from broker.errors import ConfigurationError, NoModelTrainedError
from broker.local.export import TorchTabularModel
from broker.local.preprocess import TabularPreprocessor, TargetEncoder
from broker.local.scoring import ValidationMetric
from broker.local.space import SearchSpace, default_space
from broker.local.trainer import TrialData, TrialOutcome, select_device, train_trial

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

STRATEGIES = ("random",)
# An epoch still running this long after the deadline is abandoned.
DEADLINE_GRACE_S = 1.5


@dataclass(frozen=True)
class SearchOptions:
    """The user's knobs for the local search (``provider_options["local"]``).

    Args:
        max_trials: stop after this many trials; None runs until the deadline.
        seed: seeds the validation split, the strategy and each trial's weights.
        strategy: how configurations are chosen; "random" for now.
        patience: epochs without improvement before a trial stops.
        max_epochs: epochs at most per trial.
        validation_fraction: share of the training rows kept for validation.
    """

    max_trials: int | None = None
    seed: int = 0
    strategy: str = "random"
    patience: int = 8
    max_epochs: int = 200
    validation_fraction: float = 0.2
    min_category_count: int = 2
    numeric_bins: int = 0

    def __post_init__(self) -> None:
        if self.max_trials is not None and self.max_trials < 1:
            raise ConfigurationError(
                f"max_trials must be at least 1, got {self.max_trials}; leave it out to "
                f"search until the runtime budget ends"
            )
        if self.strategy not in STRATEGIES:
            # TODO(local-strategies): grid, TPE, RL and evolution go behind this option.
            raise ConfigurationError(
                f"search strategy {self.strategy!r} is not available; choose from "
                f"{list(STRATEGIES)}"
            )
        if self.patience < 1:
            raise ConfigurationError(
                f"patience must be at least 1, got {self.patience}"
            )
        if self.max_epochs < 1:
            raise ConfigurationError(
                f"max_epochs must be at least 1, got {self.max_epochs}"
            )
        if not 0 < self.validation_fraction < 0.9:
            raise ConfigurationError(
                f"validation_fraction must be between 0 and 0.9, got "
                f"{self.validation_fraction}"
            )

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> SearchOptions:
        """Build from a user's mapping, refusing unknown keys.

        Raises:
            ConfigurationError: an unknown key or a value out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown local option(s) {unknown}; choose from {sorted(known)}"
            )
        try:
            return cls(**dict(options))
        except TypeError as exc:
            raise ConfigurationError(f"invalid local option: {exc}") from None


class Strategy(Protocol):
    def ask(self) -> dict[str, Any] | None:
        """The next configuration, or None when the space is exhausted."""

    def tell(self, config: dict[str, Any], score: float) -> None:
        """The validation score a configuration reached."""


class RandomStrategy:
    """The space's default first, then uniform draws, never the same configuration twice."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self._rng = random.Random(seed)
        self._seen: set[str] = set()
        self._default = space.default_config()

    def ask(self) -> dict[str, Any] | None:
        if self._default is not None:
            config, self._default = self._default, None
            self._seen.add(_key(config))
            return config

        size = self.space.size
        if size is not None and len(self._seen) >= size:
            return None
        for _ in range(1000):
            config = self.space.sample(self._rng)
            if _key(config) not in self._seen:
                self._seen.add(_key(config))
                return config
        return None

    def tell(self, config: dict[str, Any], score: float) -> None:
        return None


@dataclass
class SearchResult:
    """The finished search: every trial, the best one and what is needed to predict."""

    trials: list[TrialOutcome]
    best: TrialOutcome | None
    metric: ValidationMetric
    preprocessor: TabularPreprocessor
    target: TargetEncoder
    stop_reason: str  # max_trials, deadline, cancelled, space_exhausted
    elapsed_s: float
    preprocess_s: float
    n_train_rows: int
    n_validation_rows: int
    notes: list[str] = field(default_factory=list)

    def best_model(self) -> TorchTabularModel:
        """The best trial's network with its preprocessing.

        Raises:
            NoModelTrainedError: no trial finished (the search was cancelled first).
        """
        if self.best is None:
            raise NoModelTrainedError(
                "the search ended before any trial finished", reason=self.stop_reason
            )
        return TorchTabularModel(
            preprocessor=self.preprocessor,
            target=self.target,
            network=self.best.network,
            state_dict=self.best.state_dict,
            metadata={
                "trial": self.best.trial_number,
                "config": self.best.config,
                "metric": self.metric.name,
                "validation_score": self.best.score,
            },
        )


def run_search(
    train: pd.DataFrame,
    *,
    target: str,
    task: str,
    numeric: list[str],
    categorical: list[str],
    metric: str,
    budget_s: float,
    classes: list[Any] | None = None,
    positive_class: Any = None,
    options: SearchOptions | None = None,
    space: SearchSpace | None = None,
    stop_event: threading.Event | None = None,
    started: float | None = None,
    after_preprocess: Callable[[], None] | None = None,
    on_trial: Callable[[TrialOutcome, TrialOutcome], None] | None = None,
) -> SearchResult:
    """Search network configurations on `train` (safe column names plus the target).

    Args:
        budget_s: seconds from `started` (default: now) after which no trial starts.
        stop_event: set it to stop the search at the next epoch boundary.
        after_preprocess: called once preprocessing is done (a seam for tests).
        on_trial: called after each trial with it and the best trial so far.

    Returns:
        Every trial and the best one. Cancelled before the first trial ends: no best.

    Raises:
        NoModelTrainedError: the budget ran out before the first trial could start.
        ConfigurationError: a bad option or a metric that does not fit the task.
    """
    options = options or SearchOptions()
    space = space or default_space()
    stop_event = stop_event or threading.Event()
    started = time.monotonic() if started is None else started
    deadline = started + budget_s

    # 1. validation split and preprocessing, inside the budget
    target_encoder = TargetEncoder.fit(train[target], task=task, classes=classes)
    positive_index = _positive_index(target_encoder.classes, positive_class)
    validation_metric = ValidationMetric.create(metric, task, positive_index)
    fit_rows, val_rows = _validation_split(train, target, task, options)
    data, preprocessor = _prepare(
        train, fit_rows, val_rows, target, numeric, categorical, target_encoder, options
    )
    notes = _fallback_if_undefined(validation_metric, data)
    if notes:
        validation_metric = ValidationMetric.create("log_loss", task, positive_index)
    if after_preprocess is not None:
        after_preprocess()
    preprocess_s = time.monotonic() - started

    # 2. trials until a limit is reached
    device = select_device()
    strategy = RandomStrategy(space, options.seed)
    trials: list[TrialOutcome] = []
    best: TrialOutcome | None = None

    def should_stop() -> str | None:
        if stop_event.is_set():
            return "cancelled"
        if time.monotonic() >= deadline:
            return "deadline"
        return None

    while True:
        reason = should_stop()
        if reason is None and options.max_trials is not None:
            reason = "max_trials" if len(trials) >= options.max_trials else None
        config = strategy.ask() if reason is None else None
        if reason is None and config is None:
            reason = "space_exhausted"
        if reason is not None or config is None:
            break

        number = len(trials) + 1
        outcome = train_trial(
            number,
            config,
            data,
            validation_metric,
            patience=options.patience,
            max_epochs=options.max_epochs,
            should_stop=should_stop,
            device=device,
            seed=options.seed * 1000 + number,
            hard_deadline=deadline + DEADLINE_GRACE_S,
            keep_first_epoch=best is None,
        )
        if outcome.epochs_run == 0:
            logger.info("trial %d: no epoch finished before the deadline", number)
            reason = "deadline"
            break
        strategy.tell(config, outcome.score)
        trials.append(outcome)
        if best is None or validation_metric.better(outcome.score, best.score):
            if best is not None:
                best.state_dict = {}  # keep only the best weights in memory
            best = outcome
        else:
            outcome.state_dict = {}
        logger.info(
            "trial %d: %s %.5f after %d epochs (%s) in %.1fs; best %.5f (trial %d)",
            number,
            validation_metric.name,
            outcome.score,
            outcome.epochs_run,
            outcome.stop_reason,
            outcome.training_time_s,
            best.score,
            best.trial_number,
        )
        if on_trial is not None:
            on_trial(outcome, best)

    # 3. nothing trained: the budget was spent before the first trial
    elapsed = time.monotonic() - started
    if best is None and reason == "deadline":
        suggested = float(math.ceil(max(10.0, 3 * preprocess_s + 10.0)))
        raise NoModelTrainedError(
            f"the local search spent its whole budget of {budget_s:g} s before training "
            f"any model ({elapsed:.1f} s elapsed, {preprocess_s:.1f} s of it preparing "
            f"the data); give it a budget of at least {suggested:g} s",
            reason="budget_exhausted",
            budget_s=float(budget_s),
            elapsed_s=elapsed,
            suggested_min_budget_s=suggested,
            provider="local",
        )
    return SearchResult(
        trials=trials,
        best=best,
        metric=validation_metric,
        preprocessor=preprocessor,
        target=target_encoder,
        stop_reason=reason or "max_trials",
        elapsed_s=elapsed,
        preprocess_s=preprocess_s,
        n_train_rows=len(fit_rows),
        n_validation_rows=len(val_rows),
        notes=notes,
    )


def _validation_split(
    train: pd.DataFrame, target: str, task: str, options: SearchOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions for fitting and for validation; stratified where classes allow."""
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(train))
    if len(train) < 4:
        raise ConfigurationError(
            f"the local backend needs at least 4 training rows, got {len(train)}"
        )
    stratify = None
    if task != "regression":
        labels = train[target].astype(str).to_numpy()
        counts = np.unique(labels, return_counts=True)[1]
        n_val = math.ceil(options.validation_fraction * len(train))
        if counts.min() >= 2 and n_val >= len(counts):
            stratify = labels
    fit_rows, val_rows = train_test_split(
        positions,
        test_size=options.validation_fraction,
        random_state=options.seed,
        stratify=stratify,
    )
    return np.sort(fit_rows), np.sort(val_rows)


def _prepare(
    train: pd.DataFrame,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    target: str,
    numeric: list[str],
    categorical: list[str],
    target_encoder: TargetEncoder,
    options: SearchOptions,
) -> tuple[TrialData, TabularPreprocessor]:
    fit_frame = train.iloc[fit_rows]
    val_frame = train.iloc[val_rows]
    preprocessor = TabularPreprocessor.fit(
        fit_frame,
        numeric=numeric,
        categorical=categorical,
        min_count=options.min_category_count,
        numeric_bins=options.numeric_bins,
    )
    x_num_fit, x_cat_fit = preprocessor.transform(fit_frame)
    x_num_val, x_cat_val = preprocessor.transform(val_frame)

    regression = target_encoder.task == "regression"
    if regression:
        y_val = target_encoder.decode_regression(
            target_encoder.encode(val_frame[target])
        )
    else:
        y_val = target_encoder.encode(val_frame[target])
    data = TrialData(
        task=target_encoder.task,
        n_outputs=1 if regression else len(target_encoder.classes),
        x_num_train=x_num_fit,
        x_cat_train=x_cat_fit,
        y_train=target_encoder.encode(fit_frame[target]),
        x_num_val=x_num_val,
        x_cat_val=x_cat_val,
        y_val=y_val,
        cardinalities=preprocessor.cardinalities,
        target_mean=target_encoder.mean,
        target_std=target_encoder.std,
    )
    return data, preprocessor


def _fallback_if_undefined(metric: ValidationMetric, data: TrialData) -> list[str]:
    """A note when AUC cannot be computed on the validation rows (one class there)."""
    if metric.name != "roc_auc" or len(np.unique(data.y_val)) >= 2:
        return []
    note = (
        "the validation rows hold a single class, so AUC is undefined there; trials "
        "were ranked by log loss instead"
    )
    logger.warning(note)
    return [note]


def _positive_index(classes: list[Any], positive_class: Any) -> int:
    if positive_class is None or len(classes) != 2:
        return min(1, max(0, len(classes) - 1))
    for index, label in enumerate(classes):
        if label == positive_class or str(label) == str(positive_class):
            return index
    return 1


def _key(config: Mapping[str, Any]) -> str:
    return repr(sorted(config.items()))
