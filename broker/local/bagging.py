"""K-fold bagging of the classical models on small tables.

On a few thousand rows one validation split is too small to choose models or ensemble
weights by: a few hundred rows give a score whose noise is larger than the differences
between good models. Below :data:`CV_MAX_ROWS` training rows each classical
configuration is therefore fitted once per fold of a K-fold split of all the training
rows. Every row gets an out-of-fold output (from the fold model that never saw it), the
ensemble weights are chosen on those outputs over all rows, and the configuration's
model is the average of its fold models (a :class:`BaggedModel`), which also lowers
its variance.

A bagged model is saved as a folder of its fold models' own folders, so loading it
reads plain arrays only, like every classical model.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from broker.errors import ConfigurationError
from broker.local.classical import (
    CONFIGS,
    ClassicalConfig,
    ClassicalFit,
    ClassicalRun,
    DistinctModels,
    fit_classical,
    fit_drawn,
)
from broker.local.preprocess import _jsonable

logger = logging.getLogger(__name__)

MODEL_FORMAT = "bagged"
FORMAT_VERSION = 1
# Tables with at most this many training rows get K-fold bagging.
CV_MAX_ROWS = 10_000
CV_FOLDS = 5


class BaggedModel:
    """The average of one configuration's fold models.

    Args:
        task: "binary", "multiclass" or "regression".
        classes: the job's class labels in output order (empty for regression).
        folds: the fold models, each with `predict_proba` / `predict` and `save`.
        metadata: the configuration's name and parameters and the number of folds.
    """

    def __init__(
        self,
        *,
        task: str,
        classes: list[Any],
        folds: list[Any],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not folds:
            raise ConfigurationError("a bagged model needs at least one fold model")
        self.task = task
        self._classes = list(classes)
        self.folds = list(folds)
        self.metadata = dict(metadata or {})

    @property
    def classes(self) -> list[Any] | None:
        return None if self.task == "regression" else list(self._classes)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """The fold models' mean class probabilities (n, k) in `classes` order.

        Raises:
            InputError: the model is a regression model.
            ColumnNotFoundError: a feature is missing from `frame`.
        """
        outputs = [np.asarray(f.predict_proba(frame), np.float64) for f in self.folds]
        return np.mean(outputs, axis=0)

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Class labels (n,) for classification, mean values (n,) for regression."""
        if self.task == "regression":
            outputs = [np.asarray(f.predict(frame), np.float64) for f in self.folds]
            return np.mean(outputs, axis=0)
        labels = np.asarray(self._classes, dtype=object)
        return labels[self.predict_proba(frame).argmax(axis=1)]

    def save(self, folder: str | Path) -> Path:
        """Write model.json and one sub-folder per fold model into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"fold-{i}" for i in range(len(self.folds))]
        for name, fold in zip(names, self.folds, strict=True):
            fold.save(folder / name)
        model_json = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "classes": [_jsonable(c) for c in self._classes],
            "folds": names,
            "metadata": self.metadata,
        }
        (folder / "model.json").write_text(
            json.dumps(model_json, indent=2, default=str)
        )
        return folder


def load_bagged(folder: Path, model_json: dict[str, Any]) -> BaggedModel:
    """Load a :class:`BaggedModel` saved by its ``save``, reading arrays only.

    Raises:
        ConfigurationError: a fold's folder is missing or unreadable.
    """
    names = model_json.get("folds")
    if not isinstance(names, list) or not names:
        raise ConfigurationError(
            f"{str(folder)!r} is a bagged model without fold models; save the run's "
            f"model again"
        )
    return BaggedModel(
        task=str(model_json["task"]),
        classes=list(model_json["classes"]),
        folds=[_load_fold(folder / str(name)) for name in names],
        metadata=model_json.get("metadata", {}),
    )


def _load_fold(folder: Path) -> Any:
    """A fold model: a network (the networks' format) or a classical model."""
    from broker.local import export
    from broker.local.classical import load_classical

    try:
        fmt = json.loads((folder / "model.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(
            f"cannot read the fold model in {str(folder)!r}: {exc}; save the run's "
            f"model again"
        ) from None
    if fmt == export.MODEL_FORMAT:
        return export.load_model(folder)
    return load_classical(folder)


def fold_rows(
    y: np.ndarray, task: str, *, folds: int = CV_FOLDS, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Row positions (fit, held out) of each fold; stratified for classes.

    Returns:
        One pair per fold, or None when the rows are too few for `folds` folds: fewer
        than two rows per fold, a single class, or a class of one row (its fold's
        models could never have seen it). A class with fewer rows than folds is
        kept: some folds hold none of its rows out, and every fit still has some.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(y)
    if folds < 2 or len(y) < 2 * folds:
        return None
    if task == "regression":
        splitter: Any = KFold(folds, shuffle=True, random_state=seed)
    else:
        counts = np.unique(y, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < 2:
            return None
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [
            (np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(y)), y)
        ]


def fit_classical_cv(
    frame: pd.DataFrame,
    y: np.ndarray,
    *,
    task: str,
    classes: list[Any],
    numeric: list[str],
    categorical: list[str],
    seed: int,
    time_cap_s: float,
    splits: list[tuple[np.ndarray, np.ndarray]],
    configs: dict[str, ClassicalConfig] | None = None,
    clock: Callable[[], float] = time.monotonic,
    should_stop: Callable[[], bool] | None = None,
    threads: int | None = None,
    search: bool = False,
) -> ClassicalRun:
    """Fit each configuration on every fold; keep its out-of-fold outputs.

    A configuration starts only while the time cap allows, and is kept only when
    all of its folds finished; one cut short by the cap is dropped whole, so every
    kept configuration has an honest output for every row.

    Args:
        frame: all the training rows (safe names); `y` holds their targets (class
            indices into `classes`, or values).
        splits: :func:`fold_rows`'s pairs.
        Others: as :func:`broker.local.classical.fit_classical` (`search` times a
            drawn configuration by the slowest earlier one of its kind over all
            folds).

    Returns:
        The stage's run: each fit's `validation_output` covers every row of `frame`
        in order, its model is a :class:`BaggedModel`; `target` is `y`.
    """
    configs = CONFIGS if configs is None else configs
    started = clock()
    y = np.asarray(y)
    run = ClassicalRun(target=y, folds=len(splits), splits=list(splits))
    regression = task == "regression"

    def in_time() -> bool:
        stopped = should_stop is not None and should_stop()
        return clock() - started < time_cap_s and not stopped

    longest: dict[str, float] = {}  # seconds of the slowest config of each algorithm

    def fit_one(name: str, config: ClassicalConfig) -> bool:
        output = np.zeros(len(y) if regression else (len(y), len(classes)))
        models: list[Any] = []
        iterations, t0, complete = 0, clock(), True
        for fit_at, held_at in splits:
            fold = fit_classical(
                frame.iloc[fit_at],
                y[fit_at],
                frame.iloc[held_at],
                task=task,
                classes=classes,
                numeric=numeric,
                categorical=categorical,
                seed=seed,
                time_cap_s=max(0.0, time_cap_s - (clock() - started)),
                configs={name: config},
                clock=clock,
                should_stop=should_stop,
                threads=threads,
            )
            if not fold.fits or fold.skipped or _cut_short(fold.fits[0], config):
                complete = False
                break
            output[held_at] = fold.fits[0].validation_output
            models.append(fold.fits[0].model)
            iterations += fold.fits[0].iterations

        if not complete:
            return False
        first = models[0]
        longest[config.algorithm] = max(
            longest.get(config.algorithm, 0.0), clock() - t0
        )
        run.fits.append(
            ClassicalFit(
                name=name,
                params=dict(config.params),
                model=BaggedModel(
                    task=task,
                    classes=classes,
                    folds=models,
                    metadata={**first.metadata, "folds": len(models)},
                ),
                validation_output=output,
                training_time_s=clock() - t0,
                iterations=math.ceil(iterations / len(models)),
                algorithm=config.algorithm,
            )
        )
        logger.info(
            "%s (%s): %d folds in %.1fs",
            name,
            config.algorithm,
            len(models),
            clock() - t0,
        )
        return True

    distinct = DistinctModels(max(len(fit_at) for fit_at, _ in splits))
    for name, config in configs.items():
        earlier = distinct.same_as(config)
        if earlier is not None:
            run.notes.append(distinct.note(name, config, earlier))
        elif in_time() and fit_one(name, config):
            distinct.add(name, config)
        else:
            run.skipped.append(name)

    if search:
        fit_drawn(
            seed,
            fit_one,
            in_time=in_time,
            left_s=lambda: time_cap_s - (clock() - started),
            longest=longest,
            distinct=distinct,
        )

    run.elapsed_s = clock() - started
    if run.skipped:
        run.notes.append(
            f"classical configurations {run.skipped} were not fitted on all "
            f"{len(splits)} folds: their time cap of {time_cap_s:.1f} s was spent"
        )
    return run


def _cut_short(fit: ClassicalFit, config: ClassicalConfig) -> bool:
    """A forest that stopped growing at the cap: its fold would not match the rest."""
    wanted = config.params.get("n_estimators")
    return wanted is not None and fit.iterations < int(wanted)


__all__ = [
    "CV_FOLDS",
    "CV_MAX_ROWS",
    "MODEL_FORMAT",
    "BaggedModel",
    "fit_classical_cv",
    "fold_rows",
    "load_bagged",
]
