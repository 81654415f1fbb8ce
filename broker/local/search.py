"""Search network configurations within a deadline, a trial limit and a stop signal.

The search carves a validation split from the training rows it is given (the broker's
held-out rows never reach it), fits the preprocessing on the rest, then runs trials: the
configurations of similar earlier searches and the space's default first, then those the
strategy chooses (random, grid, tpe, rl or evolution; see :mod:`broker.local.strategies`).

Costs are cut three ways: each trial stops early when its validation score stalls; a
pruner (median, asha, hyperband) stops trials that trail the others after as many
epochs; and the whole search stops after `stop_after_no_improvement` trials in a row
that do not beat the best one.

No trial starts after the deadline; a trial running at the deadline stops at its next
epoch boundary and keeps its best weights and score, so the search returns promptly with
what it has. Trials run one at a time in the calling thread, or in worker processes
(`workers` > 1, one per GPU on a multi-GPU machine), or on a Ray cluster.

:func:`run_search` searches networks only. :func:`run_automl`, what the local provider
runs, first fits classical models (gradient-boosted trees, regularised linear models,
extremely randomised trees) on the same rows within a share of the budget
(:mod:`broker.local.classical`), then runs the network search, then chooses weights for
the best networks and the classical models on the validation rows
(:mod:`broker.local.ensemble`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import (
    ConfigurationError,
    NoModelTrainedError,
)
from broker.local.ensemble import DEFAULT_ROUNDS, Candidate, Selection, greedy_selection
from broker.local.export import EnsembleMember, LocalEnsembleModel, TorchTabularModel
from broker.local.image import (
    ImageLayout,
    check_image,
    detect_image_shape,
    image_layout,
)
from broker.local.loop import (
    DEADLINE_GRACE_S,
    SearchLoop,
    require_ray,
    run_in_thread,
    run_in_workers,
)
from broker.local.preprocess import TabularPreprocessor, TargetEncoder
from broker.local.pruning import PRUNERS
from broker.local.scoring import ValidationMetric
from broker.local.space import SearchSpace, default_space, image_space
from broker.local.strategies import (
    STRATEGIES,
    RandomStrategy,
    make_strategy,
)
from broker.local.trainer import TrialData, TrialOutcome

if TYPE_CHECKING:
    import pandas as pd

    from broker.local.classical import ClassicalRun
    from broker.local.journal import ResumeState, TrialJournal
    from broker.local.knowledge import KnowledgeBase
    from broker.local.parallel import Execution

logger = logging.getLogger(__name__)

# How many of a search's best configurations are kept for later searches.
REMEMBERED_CONFIGS = 3
# How many of the best networks may join the ensemble.
ENSEMBLE_NETWORKS = 5
# The classical models' share of the search budget; no configuration starts after it.
CLASSICAL_BUDGET_SHARE = 0.2
# Their share when they are bagged over folds (K fits each, and they carry the model).
BAGGED_BUDGET_SHARE = 0.4
# With bagging, the share kept at the end for refitting the best networks on the folds.
NETWORK_BAGGING_SHARE = 0.15


@dataclass(frozen=True)
class SearchOptions:
    """The user's knobs for the local search (``provider_options["local"]``).

    Args:
        max_trials: stop after this many trials; None runs until the deadline.
        seed: seeds the validation split, the strategy and each trial's weights; on
            the CPU with one worker the same seed gives the same search.
        strategy: how configurations are chosen: random, grid, tpe, rl or evolution.
        patience: epochs without improvement before a trial stops.
        max_epochs: epochs at most per trial.
        validation_fraction: share of the training rows kept for validation.
        pruner: none, median, asha or hyperband (epochs are the fidelity).
        stop_after_no_improvement: end the search after this many trials in a row
            that do not beat the best one; None never does.
        workers: trials run at once, each in its own process; None picks one per
            GPU, else one on a machine of up to two cores.
        ray_address: run trials on the Ray cluster at this address (needs the `ray`
            extra).
        input_shape: [channels, height, width] to read the numeric columns as image
            pixels and search convolutional networks; None detects 64, 256, ...
            numeric columns named pixel_0, pixel_1, ... as one square grey image.
        warm_start: start from the best configurations of similar earlier searches,
            and remember this one's.
        grid_points: values per numeric range for the grid strategy.
        classical: also fit classical models (boosted trees, linear models,
            extremely randomised trees) on the same rows (tabular data only), before
            the networks, within a fifth of the budget.
        ensemble: combine the best networks and the classical models with weights
            chosen on the validation rows; off, the best single model is the job's
            model.
        folds: on tables of at most :data:`broker.local.bagging.CV_MAX_ROWS`
            training rows, fit each classical model on this many folds of all the
            training rows and choose among them on their out-of-fold outputs; 0
            fits them once on the search's own split.
    """

    max_trials: int | None = None
    seed: int = 0
    strategy: str = "random"
    patience: int = 8
    max_epochs: int = 200
    validation_fraction: float = 0.2
    min_category_count: int = 2
    numeric_bins: int = 0
    pruner: str = "none"
    stop_after_no_improvement: int | None = None
    workers: int | None = None
    ray_address: str | None = None
    input_shape: list[int] | None = None
    warm_start: bool = True
    grid_points: int = 3
    classical: bool = True
    ensemble: bool = True
    folds: int = 5

    def __post_init__(self) -> None:
        for name in ("warm_start", "classical", "ensemble"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be true or false, got {value!r}")
        if self.max_trials is not None and self.max_trials < 1:
            raise ConfigurationError(
                f"max_trials must be at least 1, got {self.max_trials}; leave it out to "
                f"search until the runtime budget ends"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(
                f"search strategy {self.strategy!r} is not available; choose from "
                f"{list(STRATEGIES)}"
            )
        if self.pruner not in PRUNERS:
            raise ConfigurationError(
                f"pruner {self.pruner!r} is not available; choose from {list(PRUNERS)}"
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
        if isinstance(self.folds, bool) or self.folds == 1 or not 0 <= self.folds <= 20:
            raise ConfigurationError(
                f"folds must be 0 (no bagging) or a whole number from 2 to 20, got "
                f"{self.folds!r}"
            )
        for name in ("stop_after_no_improvement", "workers", "grid_points"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ConfigurationError(
                    f"{name} must be a whole number of at least 1, got {value!r}"
                )
        if self.input_shape is not None and (
            len(self.input_shape) != 3 or min(self.input_shape) < 1
        ):
            raise ConfigurationError(
                f"input_shape must be [channels, height, width] with positive sizes, "
                f"got {self.input_shape}; for 8x8 grey images use [1, 8, 8]"
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
        values = dict(options)
        try:
            if values.get("input_shape") is not None:
                values["input_shape"] = [int(v) for v in values["input_shape"]]
            return cls(**values)
        except ConfigurationError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid local option: {exc}") from None


@dataclass
class SearchResult:
    """The finished search: every trial, the best one and what is needed to predict."""

    trials: list[TrialOutcome]
    best: TrialOutcome | None
    metric: ValidationMetric
    preprocessor: TabularPreprocessor
    target: TargetEncoder
    stop_reason: str  # max_trials, deadline, cancelled, space_exhausted, no_improvement
    elapsed_s: float
    preprocess_s: float
    n_train_rows: int
    n_validation_rows: int
    notes: list[str] = field(default_factory=list)
    strategy: str = "random"
    pruner: str = "none"
    space_kind: str = "tabular"
    warm_started: int = 0
    resumed_trials: int = 0
    checkpoint: TorchTabularModel | None = field(default=None, repr=False)
    networks: list[Candidate] = field(default_factory=list, repr=False)
    validation_target: np.ndarray | None = field(default=None, repr=False)
    classical: ClassicalRun | None = field(default=None, repr=False)
    selection: Selection | None = None
    # True when `networks` were refitted on the classical models' folds, their
    # outputs out of fold over every training row
    networks_bagged: bool = False

    @property
    def epochs_total(self) -> int:
        """Training epochs spent over all trials: the search's compute."""
        return sum(t.epochs_run for t in self.trials)

    def best_model(self) -> TorchTabularModel:
        """The best trial's network with its preprocessing.

        Raises:
            NoModelTrainedError: no trial finished (the search was cancelled first).
        """
        if self.best is None:
            raise NoModelTrainedError(
                "the search ended before any trial finished", reason=self.stop_reason
            )
        checkpointed = self.checkpoint is not None and (
            self.checkpoint.metadata.get("trial") == self.best.trial_number
        )
        if self.checkpoint is not None and checkpointed:
            # the best trial ran before an interruption: its weights were saved then
            return self.checkpoint
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
                "strategy": self.strategy,
            },
        )

    def candidates(self) -> list[Candidate]:
        """The kept networks (best first), then the fitted classical models."""
        classical = [
            Candidate(
                name=fit.name,
                kind="classical",
                algorithm=fit.algorithm,
                validation_output=fit.validation_output,
                score=fit.score,
                model=fit.model,
            )
            for fit in (self.classical.fits if self.classical is not None else [])
        ]
        return [*self.networks, *classical]

    @property
    def best_model_id(self) -> str:
        """The leaderboard id of the job's model: "ensemble", a trial or a tree model."""
        if self.selection is None:
            return f"trial-{self.best.trial_number}" if self.best else "none"
        if self.selection.is_ensemble:
            return "ensemble"
        return next(iter(self.selection.weights))

    def final_model(self) -> LocalEnsembleModel:
        """The job's model: the chosen weights over the candidates, with the best
        network always a member (weight 0 when unused). That is the search's best
        trial, or, when it was refitted on the folds, the refitted network with the
        best out-of-fold score (a cheaper network refitted in its place is not
        preferred to it: their scores are not comparable).

        Raises:
            NoModelTrainedError: no trial finished (the search was cancelled first).
        """
        best_network = self.best_model()
        assert self.best is not None  # best_model raised otherwise
        best_name = f"trial-{self.best.trial_number}"
        scored = [n for n in self.networks if not math.isnan(n.score)]
        if self.networks_bagged and best_name in {n.name for n in scored}:
            reward = self.metric.direction == "maximize"
            best_name = max(scored, key=lambda n: n.score if reward else -n.score).name
        weights = dict(self.selection.weights) if self.selection else {best_name: 1.0}
        weights.setdefault(best_name, 0.0)
        by_name = {c.name: c for c in self.candidates()}
        best = by_name.get(best_name) or Candidate(
            name=best_name,
            kind="network",
            algorithm=self._algorithm,
            validation_output=np.zeros(0),
            score=self.best.score,
        )
        if best.model is None:
            by_name[best_name] = replace(best, model=best_network)
        members = [
            EnsembleMember(
                name=name,
                kind=by_name[name].kind,
                algorithm=by_name[name].algorithm,
                weight=weight,
                validation=_finite_or_none(by_name[name].score),
                model=by_name[name].model,
            )
            for name, weight in weights.items()
        ]
        score = self.selection.score if self.selection else self.best.score
        return LocalEnsembleModel(
            task=self.target.task,
            classes=list(self.target.classes),
            members=members,
            metadata={
                "metric": self.metric.name,
                "validation_score": _finite_or_none(score),
                "winner": self.best_model_id,
                "best_network": best_name,
            },
        )

    @property
    def _algorithm(self) -> str:
        return "cnn" if self.space_kind == "image" else "mlp"


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
    knowledge: KnowledgeBase | None = None,
    execution: Execution | None = None,
    dropped: list[str] | None = None,
    journal: TrialJournal | None = None,
    resume: ResumeState | None = None,
    keep_networks: int = 0,
    reserve_s: float = 0.0,
) -> SearchResult:
    """Search network configurations on `train` (safe column names plus the target).

    Args:
        budget_s: seconds from `started` (default: now) after which no trial starts.
        reserve_s: seconds at the end of the budget kept for work after the search
            (refitting its networks): no trial runs in them.
        space: the space to search; default the tabular space, or the image space
            when the options give or the columns imply an image shape.
        stop_event: set it to stop the search at the next epoch boundary.
        after_preprocess: called once preprocessing is done (a seam for tests).
        on_trial: called after each trial with it and the best trial so far.
        knowledge: earlier searches to start from and to add this one to (when the
            `warm_start` option is on); None neither reads nor writes any.
        execution: workers, devices and threads; default from the `workers` option
            and this machine's cores and GPUs.
        dropped: feature columns the intake dropped (constant ones); pixel columns
            among them keep their place in an image, reading 0.
        journal: where each completed trial and the best weights so far are written
            (the run folder), so that an interrupted search can be resumed.
        resume: what an interrupted run of this search completed: its trials count
            toward the limits and teach the strategy, and are not trained again. With
            no budget left (`budget_s` <= 0) and a checkpointed best model, the search
            ends at once with that model.
        keep_networks: keep this many of the best networks with their outputs on the
            validation rows (`networks` of the result), for an ensemble; 0 keeps
            none. The search itself is the same either way.

    Returns:
        Every trial and the best one. Cancelled before the first trial ends: no best.

    Raises:
        NoModelTrainedError: the budget ran out before the first trial could start.
        ConfigurationError: a bad option or a metric that does not fit the task.
        ProviderUnavailableError: `ray_address` is given and Ray is not installed.
    """
    options = options or SearchOptions()
    if options.ray_address:
        require_ray(options.ray_address)
    if resume is not None and budget_s <= 0 and resume.checkpoint is not None:
        return _finished_from_checkpoint(resume)
    stop_event = stop_event or threading.Event()
    started = time.monotonic() if started is None else started
    spent_before_s = resume.spent_s if resume is not None else 0.0
    deadline = started + budget_s - reserve_s
    layout = image_layout(numeric, categorical, dropped or [], options.input_shape)
    if layout is not None:
        numeric = layout.columns
    space = space or (image_space() if layout is not None else default_space())

    # 1. validation split and preprocessing, inside the budget
    target_encoder = TargetEncoder.fit(train[target], task=task, classes=classes)
    positive_index = _positive_index(target_encoder.classes, positive_class)
    validation_metric = ValidationMetric.create(metric, task, positive_index)
    fit_rows, val_rows = _validation_split(train, target, task, options)
    data, preprocessor = _prepare(
        train,
        fit_rows,
        val_rows,
        target,
        numeric,
        categorical,
        target_encoder,
        options,
        scaling="quantile" if layout is None else "pixels",
    )
    if layout is not None:
        check_image(data, layout)
        data.input_shape = layout.shape
        data.pixel_positions = layout.positions
    notes = _fallback_if_undefined(validation_metric, data)
    if notes:
        validation_metric = ValidationMetric.create("log_loss", task, positive_index)
    if after_preprocess is not None:
        after_preprocess()
    preprocess_s = time.monotonic() - started
    if journal is not None:
        journal.start(
            {
                "metric": validation_metric.name,
                "task": task,
                "positive_index": positive_index,
                "strategy": options.strategy,
                "pruner": options.pruner,
                "seed": options.seed,
                "space": space.kind,
                "n_train_rows": len(fit_rows),
                "n_validation_rows": len(val_rows),
            }
        )

    def on_trial_done(outcome: TrialOutcome, best: TrialOutcome) -> None:
        if journal is not None:
            model = None
            if best is outcome:
                model = TorchTabularModel(
                    preprocessor=preprocessor,
                    target=target_encoder,
                    network=outcome.network,
                    state_dict=outcome.state_dict,
                    metadata=_model_metadata(outcome, validation_metric, options),
                )
            journal.record(outcome, time.monotonic() - started, model)
        if on_trial is not None:
            on_trial(outcome, best)

    # 2. earlier searches on similar data go first, then the space's default
    first, meta = _warm_start(
        knowledge,
        options,
        space,
        train,
        target,
        task,
        numeric,
        categorical,
        validation_metric.name,
    )
    if first:
        notes.append(first.note)
    default = space.default_config()
    strategy = make_strategy(
        options.strategy,
        space,
        seed=options.seed,
        first=[*(first.configs if first else []), *([default] if default else [])],
        grid_points=options.grid_points,
    )

    # 3. trials until a limit is reached
    settings: dict[str, Any] = {
        "options": options,
        "strategy": strategy,
        "metric": validation_metric,
        "deadline": deadline,
        "stop_event": stop_event,
        "on_trial": on_trial_done,
    }
    loop = (
        _KeepingLoop(keep_networks, **settings)
        if keep_networks > 0
        else SearchLoop(**settings)
    )
    if resume is not None and resume.trials:
        loop.replay(resume.trials)
        notes.append(f"resumed after {len(resume.trials)} completed trials")
        logger.info("resumed after %d completed trials", len(resume.trials))
    if options.ray_address:
        from broker.local.cluster import run_on_ray

        reason = run_on_ray(loop, data, options)
    else:
        execution = execution or _plan(options)
        if execution.in_process:
            reason = run_in_thread(loop, data, execution)
        else:
            reason = run_in_workers(loop, data, execution)

    # 4. nothing trained: the budget was spent before the first trial
    elapsed = spent_before_s + time.monotonic() - started
    if loop.best is None and reason == "deadline":
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
    if knowledge is not None and meta is not None and options.warm_start:
        _remember(knowledge, meta, loop, space, validation_metric, options)
    result = SearchResult(
        trials=loop.trials,
        best=loop.best,
        metric=validation_metric,
        preprocessor=preprocessor,
        target=target_encoder,
        stop_reason=reason,
        elapsed_s=elapsed,
        preprocess_s=preprocess_s,
        n_train_rows=len(fit_rows),
        n_validation_rows=len(val_rows),
        notes=notes,
        strategy=options.strategy,
        pruner=options.pruner,
        space_kind=space.kind,
        warm_started=len(first.configs) if first else 0,
        resumed_trials=len(resume.trials) if resume is not None else 0,
        checkpoint=resume.checkpoint if resume is not None else None,
        validation_target=data.y_val,
    )
    if isinstance(loop, _KeepingLoop) and result.best is not None:
        result.networks = _network_candidates(
            result, loop.kept, train.iloc[val_rows], options
        )
    return result


class _KeepingLoop(SearchLoop):
    """The search loop, also holding the weights of its `keep` best trials (the loop
    itself keeps only the best one's)."""

    def __init__(self, keep: int, **settings: Any) -> None:
        super().__init__(**settings)
        self.keep = keep
        self.kept: list[tuple[TrialOutcome, dict[str, Any]]] = []

    def record(self, outcome: TrialOutcome) -> None:
        weights = outcome.state_dict  # the loop drops it from trials that are not best
        super().record(outcome)
        if outcome.epochs_run > 0:
            self._offer(outcome, weights)

    def replay(self, outcomes: list[TrialOutcome]) -> None:
        super().replay(outcomes)
        for outcome in outcomes:
            self._offer(outcome, outcome.state_dict)

    def _offer(self, outcome: TrialOutcome, weights: dict[str, Any]) -> None:
        if not weights or math.isnan(outcome.score):
            return
        self.kept.append((outcome, weights))
        self.kept.sort(key=lambda kept: -self.reward(kept[0].score))  # stable: earlier
        del self.kept[self.keep :]


def _network_candidates(
    result: SearchResult,
    kept: list[tuple[TrialOutcome, dict[str, Any]]],
    val_frame: pd.DataFrame,
    options: SearchOptions,
) -> list[Candidate]:
    """The best network, then the other kept ones, with their validation outputs."""
    assert result.best is not None and result.validation_target is not None
    best = result.best
    models = [(best, result.best_model())]
    for outcome, weights in kept:
        if outcome.trial_number == best.trial_number:
            continue
        model = TorchTabularModel(
            preprocessor=result.preprocessor,
            target=result.target,
            network=outcome.network,
            state_dict=weights,
            metadata=_model_metadata(outcome, result.metric, options),
        )
        models.append((outcome, model))

    candidates = []
    for outcome, model in models:
        if result.target.task == "regression":
            output = model.predict(val_frame)
        else:
            output = model.predict_proba(val_frame)
        candidates.append(
            Candidate(
                name=f"trial-{outcome.trial_number}",
                kind="network",
                algorithm=result._algorithm,
                validation_output=output,
                score=result.metric(result.validation_target, output),
                model=model,
            )
        )
    return candidates


def run_automl(
    train: pd.DataFrame,
    *,
    target: str,
    task: str,
    numeric: list[str],
    categorical: list[str],
    metric: str,
    budget_s: float,
    classes: list[Any] | None = None,
    options: SearchOptions | None = None,
    space: SearchSpace | None = None,
    stop_event: threading.Event | None = None,
    started: float | None = None,
    dropped: list[str] | None = None,
    resume: ResumeState | None = None,
    **search_settings: Any,
) -> SearchResult:
    """Classical models, then the network search, then an ensemble of the best of both.

    With the `classical` option (tabular data only) gradient-boosted trees, linear
    models and extremely randomised trees are fitted first on the rows the networks
    train on, within :data:`CLASSICAL_BUDGET_SHARE` of the budget, so that they exist
    whatever happens to the search. The network search then runs in the rest of the
    budget, keeping its :data:`ENSEMBLE_NETWORKS` best networks. Last, weights over
    the networks and classical models are chosen on the validation rows (`ensemble`
    option), or the best single model is taken; the result's
    :meth:`SearchResult.final_model` is the job's model.

    On a small table (the `folds` option) the classical models are instead bagged
    over folds of all the training rows within :data:`BAGGED_BUDGET_SHARE` of the
    budget, and the weights are chosen over them on their out-of-fold outputs; see
    :mod:`broker.local.bagging`.

    Args:
        budget_s: seconds from `started` (default: now) for all of it.
        search_settings: passed on to :func:`run_search` (positive_class,
            after_preprocess, on_trial, knowledge, execution, journal).

    Returns:
        The network search's result with `classical` and `selection` filled in.

    Raises:
        NoModelTrainedError, ConfigurationError, ProviderUnavailableError: as
            :func:`run_search`.
    """
    # TODO(local-classical-resume): the classical models are not journaled; a resumed
    # search fits them again (seconds), and none are fitted once the budget is spent.
    # TODO(local-classical-only): when the budget runs out before the first network
    # trial, the fitted trees are dropped with the search's NoModelTrainedError; the
    # job could return them instead.
    options = options or SearchOptions()
    stop_event = stop_event or threading.Event()
    started = time.monotonic() if started is None else started
    deadline = started + budget_s
    classical = None
    tabular = (space is None or space.kind == "tabular") and image_layout(
        numeric, categorical, dropped or [], options.input_shape
    ) is None
    if options.classical and tabular and budget_s > 0:
        classical = _fit_classical(
            train,
            target=target,
            task=task,
            numeric=numeric,
            categorical=categorical,
            classes=classes,
            options=options,
            budget_s=budget_s,
            stop_event=stop_event,
        )
    bag_networks = (
        options.ensemble
        and classical is not None
        and bool(classical.fits and classical.splits)
    )
    reserve_s = budget_s * NETWORK_BAGGING_SHARE if bag_networks else 0.0

    result = run_search(
        train,
        target=target,
        task=task,
        numeric=numeric,
        categorical=categorical,
        metric=metric,
        budget_s=budget_s,
        reserve_s=reserve_s,
        classes=classes,
        options=options,
        space=space,
        stop_event=stop_event,
        started=started,
        dropped=dropped,
        resume=resume,
        keep_networks=ENSEMBLE_NETWORKS if options.ensemble else 1,
        **search_settings,
    )
    result.classical = classical
    if classical is not None:
        result.notes.extend(classical.notes)
    if bag_networks and classical is not None and not stop_event.is_set():
        _bag_networks(
            result,
            train,
            target=target,
            splits=classical.splits,
            options=options,
            deadline=deadline,
            stop_event=stop_event,
        )
    _select(result, options)
    return result


def _bag_networks(
    result: SearchResult,
    train: pd.DataFrame,
    *,
    target: str,
    splits: list[tuple[np.ndarray, np.ndarray]],
    options: SearchOptions,
    deadline: float,
    stop_event: threading.Event,
) -> None:
    """Refit the kept networks on the classical models' folds (best first) and make
    the refitted ones the result's networks, scored out of fold."""
    from broker.local.bagged_networks import fit_networks_cv

    if not result.networks or result.validation_target is None:
        return
    by_number = {t.trial_number: t for t in result.trials}
    trials = [by_number[c.model.metadata["trial"]] for c in result.networks]
    bagging = fit_networks_cv(
        train,
        target=target,
        trials=trials,
        preprocessor=result.preprocessor,
        target_encoder=result.target,
        splits=splits,
        search_fit_rows=result.n_train_rows,
        deadline=deadline,
        seed=options.seed,
        should_stop=stop_event.is_set,
    )
    if not bagging.networks:
        result.notes.append(
            f"no network could be refitted on the {len(splits)} folds before the "
            f"deadline ({', '.join(bagging.skipped)} would not fit)"
        )
        return
    result.networks = [
        Candidate(
            name=network.name,
            kind="network",
            algorithm=result._algorithm,
            validation_output=network.output,
            score=math.nan,  # scored with the classical models in _select
            model=network.model,
        )
        for network in bagging.networks
    ]
    result.networks_bagged = True
    refitted = ", ".join(f"{n.name} ({n.epochs} epochs)" for n in bagging.networks)
    note = (
        f"networks {refitted} were refitted on the same {len(splits)} folds for "
        f"their search's best epoch count and weighed on their out-of-fold outputs"
    )
    if bagging.skipped:
        note += f"; {', '.join(bagging.skipped)} did not fit before the deadline"
    result.notes.append(note)


def _fit_classical(
    train: pd.DataFrame,
    *,
    target: str,
    task: str,
    numeric: list[str],
    categorical: list[str],
    classes: list[Any] | None,
    options: SearchOptions,
    budget_s: float,
    stop_event: threading.Event,
) -> ClassicalRun:
    """The classical stage on the classes the network search will use: bagged over
    folds of all the training rows on a small table, else on the search's split."""
    import pandas as pd

    from broker.local.bagging import CV_MAX_ROWS, fit_classical_cv, fold_rows
    from broker.local.classical import fit_classical

    target_encoder = TargetEncoder.fit(train[target], task=task, classes=classes)
    regression = target_encoder.task == "regression"

    def targets(frame: pd.DataFrame) -> np.ndarray:
        if regression:
            return pd.to_numeric(frame[target], errors="coerce").to_numpy(np.float64)
        return target_encoder.encode(frame[target])

    settings: dict[str, Any] = {
        "task": target_encoder.task,
        "classes": list(target_encoder.classes),
        "numeric": numeric,
        "categorical": categorical,
        "seed": options.seed,
        "should_stop": stop_event.is_set,
        "search": True,
    }
    if options.folds and len(train) <= CV_MAX_ROWS:
        y = targets(train)
        splits = fold_rows(
            y, target_encoder.task, folds=options.folds, seed=options.seed
        )
        if splits is not None:
            cap = BAGGED_BUDGET_SHARE * budget_s
            run = fit_classical_cv(train, y, splits=splits, time_cap_s=cap, **settings)
            if run.fits:
                run.notes.insert(
                    0,
                    f"classical models were bagged over {len(splits)} folds of the "
                    f"{len(train)} training rows; their scores and the ensemble's "
                    f"weights come from out-of-fold predictions",
                )
            # None finished within their share: fitting them once more would take
            # the networks' time too, so the networks alone make the model.
            return run

    fit_rows, val_rows = _validation_split(train, target, task, options)
    fit_frame = train.iloc[fit_rows]
    return fit_classical(
        fit_frame,
        targets(fit_frame),
        train.iloc[val_rows],
        time_cap_s=CLASSICAL_BUDGET_SHARE * budget_s,
        **settings,
    )


def _select(result: SearchResult, options: SearchOptions) -> None:
    """Score the classical models and choose the weights (or the best single model).

    Bagged classical models are scored and weighed on their out-of-fold outputs over
    all the training rows, with the networks refitted on the same folds. Networks
    that were not refitted are left out of the weights: their validation rows also
    stopped and ranked them, so their scores there are flattering, and on a small
    table that bias outweighs what they add.
    """
    if result.validation_target is None or not result.networks:
        return  # finished from a checkpoint: the best network is the model
    classical = result.classical
    fits = classical.fits if classical is not None else []
    y_true = result.validation_target
    bagged = classical is not None and classical.target is not None and bool(fits)
    if bagged and classical is not None and classical.target is not None:
        y_true = classical.target
    for fit in fits:
        fit.score = result.metric(y_true, fit.validation_output)
    if bagged and result.networks_bagged:
        for network in result.networks:
            network.score = result.metric(y_true, network.validation_output)
    candidates = result.candidates()
    if bagged and not result.networks_bagged:
        candidates = [c for c in candidates if c.kind == "classical"]
        result.notes.append(
            "the networks were not weighed into the model: on this table the "
            "classical models' out-of-fold scores are the fairer measure"
        )
    result.selection = greedy_selection(
        candidates,
        y_true,
        result.metric,
        rounds=DEFAULT_ROUNDS if options.ensemble else 1,
        seed=options.seed,
    )
    chosen = ", ".join(f"{k} {v:.3g}" for k, v in result.selection.weights.items())
    logger.info(
        "local model: %s (validation %s %.5f; best single %s %.5f)",
        chosen,
        result.metric.name,
        result.selection.score,
        result.selection.best_single,
        result.selection.best_single_score,
    )


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _model_metadata(
    best: TrialOutcome, metric: ValidationMetric, options: SearchOptions
) -> dict[str, Any]:
    return {
        "trial": best.trial_number,
        "config": best.config,
        "metric": metric.name,
        "validation_score": best.score,
        "strategy": options.strategy,
    }


def _finished_from_checkpoint(resume: ResumeState) -> SearchResult:
    """The search an interruption left with its budget spent: its trials and its
    checkpointed best model, nothing trained again."""
    header = resume.header
    best = next(t for t in resume.trials if t.trial_number == resume.checkpoint_trial)
    assert resume.checkpoint is not None
    metric = ValidationMetric.create(
        str(header["metric"]), str(header["task"]), int(header["positive_index"])
    )
    n = len(resume.trials)
    logger.info("no runtime left after %d completed trials; using the best one", n)
    return SearchResult(
        trials=list(resume.trials),
        best=best,
        metric=metric,
        preprocessor=resume.checkpoint.preprocessor,
        target=resume.checkpoint.target,
        stop_reason="deadline",
        elapsed_s=resume.spent_s,
        preprocess_s=0.0,
        n_train_rows=int(header.get("n_train_rows", 0)),
        n_validation_rows=int(header.get("n_validation_rows", 0)),
        notes=[
            f"resumed after {n} completed trials",
            "the runtime budget was spent before the interruption; the best "
            "checkpointed trial is the model",
        ],
        strategy=str(header.get("strategy", "random")),
        pruner=str(header.get("pruner", "none")),
        space_kind=str(header.get("space", "tabular")),
        resumed_trials=n,
        checkpoint=resume.checkpoint,
    )


def _plan(options: SearchOptions) -> Execution:
    from broker.local.parallel import plan_execution

    return plan_execution(options.workers)


def _warm_start(
    knowledge: KnowledgeBase | None,
    options: SearchOptions,
    space: SearchSpace,
    train: pd.DataFrame,
    target: str,
    task: str,
    numeric: list[str],
    categorical: list[str],
    metric: str,
) -> tuple[Any, Any]:
    if knowledge is None or not options.warm_start:
        return None, None
    from broker.local.knowledge import DatasetMeta

    meta = DatasetMeta.describe(
        train, target=target, task=task, numeric=numeric, categorical=categorical
    )
    found = knowledge.suggest(
        meta, space_kind=space.kind, metric=metric, accept=space.contains
    )
    if found is not None:
        logger.info("local search: %s", found.note)
    return found, meta


def _remember(
    knowledge: KnowledgeBase,
    meta: Any,
    loop: SearchLoop,
    space: SearchSpace,
    metric: ValidationMetric,
    options: SearchOptions,
) -> None:
    scored = [t for t in loop.trials if not math.isnan(t.score)]
    scored.sort(key=lambda t: loop.reward(t.score), reverse=True)
    try:
        knowledge.record(
            meta,
            space_kind=space.kind,
            metric=metric.name,
            best=[(t.config, t.score) for t in scored[:REMEMBERED_CONFIGS]],
            strategy=options.strategy,
        )
    except ConfigurationError as exc:
        logger.warning("%s", exc)


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
    *,
    scaling: str = "quantile",
) -> tuple[TrialData, TabularPreprocessor]:
    fit_frame = train.iloc[fit_rows]
    val_frame = train.iloc[val_rows]
    preprocessor = TabularPreprocessor.fit(
        fit_frame,
        numeric=numeric,
        categorical=categorical,
        min_count=options.min_category_count,
        numeric_bins=options.numeric_bins,
        scaling=scaling,
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


__all__ = [
    "STRATEGIES",
    "RandomStrategy",
    "SearchOptions",
    "SearchResult",
    "DEADLINE_GRACE_S",
    "ImageLayout",
    "detect_image_shape",
    "image_layout",
    "require_ray",
    "run_automl",
    "run_search",
]
