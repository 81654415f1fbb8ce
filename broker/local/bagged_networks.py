"""K-fold bagging of the searched networks on small tables.

The network search ranks its trials on one validation split and stops each trial at
its best epoch there, so a network's score on those rows flatters it; on a table of a
few hundred rows that bias is larger than the differences between models. When the
classical models are bagged (:mod:`broker.local.bagging`), the best networks the search
kept are therefore refitted on the same folds: each fold trains the trial's
configuration for the trial's best epoch count on the fold's rows, with no rows of its
own held out, and predicts the rows the fold left out. Every training row then has an
honest out-of-fold output, the networks join the ensemble weights on the same footing
as the classical models, and each bagged network is the mean of its fold networks.

A network is refitted only while its estimated cost (folds x epochs x its measured
seconds per epoch) fits before the deadline, best first; one whose folds cannot all
finish is dropped whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from broker.local.bagging import BaggedModel
from broker.local.export import TorchTabularModel
from broker.local.preprocess import TabularPreprocessor, TargetEncoder
from broker.local.trainer import TrialOutcome, select_device, train_epochs

logger = logging.getLogger(__name__)


@dataclass
class BaggedNetwork:
    """One refitted network: its out-of-fold outputs over every training row (class
    probabilities (n, k) or values (n,)) and the mean of its fold networks."""

    name: str
    output: np.ndarray = field(repr=False)
    model: BaggedModel = field(repr=False)
    epochs: int
    seconds: float


@dataclass
class NetworkBagging:
    """What the refitting produced before its deadline."""

    networks: list[BaggedNetwork] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not refitted in time
    elapsed_s: float = 0.0


def decay_epochs(curve: list[float], epochs: int) -> frozenset[int]:
    """The epochs after which a trial decayed its learning rate.

    A trial multiplies its rate by its `lr_decay` after every epoch that did not
    improve its best validation score; `curve` holds that best score after each
    epoch, so an epoch (after the first) that left it unchanged is such an epoch.
    Only the first `epochs` epochs count.
    """
    return frozenset(
        epoch
        for epoch in range(1, min(epochs, len(curve)))
        if curve[epoch] == curve[epoch - 1]
    )


def fit_networks_cv(
    frame: pd.DataFrame,
    *,
    target: str,
    trials: list[TrialOutcome],
    preprocessor: TabularPreprocessor,
    target_encoder: TargetEncoder,
    splits: list[tuple[np.ndarray, np.ndarray]],
    search_fit_rows: int,
    deadline: float,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    threads: int | None = None,
) -> NetworkBagging:
    """Refit each trial's network on every fold, best first, until the deadline.

    Args:
        frame: all the training rows (safe names and the `target` column).
        trials: the networks to refit, best first; each gives its configuration,
            network shape, best epoch, seconds and epochs run, and score curve.
        preprocessor, target_encoder: the search's, so that the fold networks read
            the columns as its trials did.
        splits: the classical stage's folds (:func:`broker.local.bagging.fold_rows`).
        search_fit_rows: the rows the search's trials trained on, to scale their
            seconds per epoch to a fold's rows.
        deadline: a monotonic time by which every refit must be done.

    Returns:
        The bagged networks in the order given, and the names of those skipped.
    """
    started = clock()
    result = NetworkBagging()
    if not trials or not splits:
        return result
    device = select_device(threads)
    x_num, x_cat = preprocessor.transform(frame)
    y = target_encoder.encode(frame[target])
    regression = target_encoder.task == "regression"
    classes = [] if regression else list(target_encoder.classes)
    fold_rows = max(len(fit_at) for fit_at, _ in splits)

    for trial in trials:
        name = f"trial-{trial.trial_number}"
        epochs = trial.best_epoch + 1
        per_epoch_s = trial.training_time_s / max(1, trial.epochs_run)
        estimate_s = len(splits) * epochs * per_epoch_s * fold_rows / search_fit_rows
        stopped = should_stop is not None and should_stop()
        if stopped or clock() + estimate_s > deadline:
            result.skipped.append(name)
            continue

        t0 = clock()
        decays = decay_epochs(trial.curve, epochs)
        output = np.zeros(len(frame) if regression else (len(frame), len(classes)))
        folds: list[TorchTabularModel] = []
        for index, (fit_at, held_at) in enumerate(splits):
            state = train_epochs(
                trial.network,
                trial.config,
                x_num[fit_at],
                x_cat[fit_at],
                y[fit_at],
                task=target_encoder.task,
                epochs=epochs,
                device=device,
                seed=seed * 1000 + trial.trial_number * 31 + index,
                decay_after=decays,
                abandon_after=deadline,
            )
            if state is None:
                break
            model = TorchTabularModel(
                preprocessor=preprocessor,
                target=target_encoder,
                network=trial.network,
                state_dict=state,
                metadata={"trial": trial.trial_number, "fold": index, "epochs": epochs},
            )
            held = frame.iloc[held_at]
            output[held_at] = (
                model.predict(held) if regression else model.predict_proba(held)
            )
            folds.append(model)

        if len(folds) < len(splits):
            result.skipped.append(name)
            logger.info("%s: refitting stopped at the deadline; dropped", name)
            continue
        bagged = BaggedModel(
            task=target_encoder.task,
            classes=classes,
            folds=folds,
            metadata={
                "trial": trial.trial_number,
                "config": trial.config,
                "epochs": epochs,
                "folds": len(folds),
            },
        )
        seconds = clock() - t0
        result.networks.append(BaggedNetwork(name, output, bagged, epochs, seconds))
        logger.info(
            "%s: %d folds of %d epochs in %.1fs (estimated %.1fs)",
            name,
            len(folds),
            epochs,
            seconds,
            estimate_s,
        )

    result.elapsed_s = clock() - started
    return result


__all__ = ["BaggedNetwork", "NetworkBagging", "decay_epochs", "fit_networks_cv"]
