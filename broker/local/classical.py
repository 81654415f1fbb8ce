"""Classical models beside the network search, kept as plain arrays.

The local backend fits a few seeded configurations of three kinds of model on the rows
the network search trains on, scores them on the same validation rows, and does so
before the first network trial, within a time cap: scikit-learn's histogram gradient
boosting (this module), regularised linear models (:mod:`broker.local.linear`) and
extremely randomised trees (:mod:`broker.local.forest`). Each fitted model is turned
into arrays with its column encoding and predicted with numpy: here a
:class:`GradientBoostingModel`, its trees as node arrays and its baseline, predicted by
a vectorised walk. Every model is saved as JSON and an ``.npz`` of plain arrays, so
loading it runs no stored code and needs no scikit-learn (:func:`load_classical`).

Columns are read as one numeric matrix: numeric columns as they are (missing values
stay NaN; the trees route them), categorical columns as integer codes in the order of
their sorted values on the training rows, with unseen and missing values as NaN.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import ConfigurationError, InputError
from broker.local.preprocess import _jsonable, _require_columns

if TYPE_CHECKING:
    import pandas as pd

    from broker.local.bagging import BaggedModel

logger = logging.getLogger(__name__)

MODEL_FORMAT = "hist-gradient-boosting"
FORMAT_VERSION = 1
ALGORITHM = "hist_gradient_boosting"
TREES_FILE = "trees.npz"

LINEAR = "linear"
EXTRA_TREES = "extra_trees"
ALGORITHMS = (ALGORITHM, LINEAR, EXTRA_TREES)


@dataclass(frozen=True)
class ClassicalConfig:
    """One seeded configuration of the classical stage.

    Args:
        algorithm: "hist_gradient_boosting", "linear" or "extra_trees".
        params: the estimator's parameters (for linear models ``C``, the inverse
            regularisation strength; ridge regression uses alpha = 1/C).
    """

    algorithm: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigurationError(
                f"unknown classical algorithm {self.algorithm!r}; use one of "
                f"{list(ALGORITHMS)}"
            )


# Seeded configurations, fitted in this order while the time cap allows: the fastest
# informative ones first.
CONFIGS: dict[str, ClassicalConfig] = {
    "hgb-default": ClassicalConfig(ALGORITHM),
    "linear-l2": ClassicalConfig(LINEAR, {"C": 1.0}),
    "extra-trees": ClassicalConfig(EXTRA_TREES, {"n_estimators": 300}),
    "linear-l2-strong": ClassicalConfig(LINEAR, {"C": 0.1}),
    "hgb-slow": ClassicalConfig(ALGORITHM, {"learning_rate": 0.05, "max_iter": 500}),
    "extra-trees-leaf5": ClassicalConfig(
        EXTRA_TREES, {"n_estimators": 300, "min_samples_leaf": 5}
    ),
    "hgb-wide": ClassicalConfig(
        ALGORITHM, {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 127}
    ),
    "hgb-l2": ClassicalConfig(ALGORITHM, {"l2_regularization": 10.0, "max_iter": 300}),
}
# With `search`, once the seeded list is done and its cap still has time, settings drawn
# at random (seeded) from the ranges of `sampled_configs`, boosting and forests in turn,
# at most this many: the stage's score then grows with the budget instead of leaving
# its time unused.
SEARCH_CONFIGS = 16


def sampled_configs(
    seed: int, count: int = SEARCH_CONFIGS
) -> Iterator[tuple[str, ClassicalConfig]]:
    """Seeded random configurations, gradient boosting and extremely randomised trees
    in turn: ``hgb-random-1``, ``extra-trees-random-2`` and so on.

    Boosting draws its learning rate (0.02 to 0.2) and L2 penalty (0.001 to 10) on a
    log scale, its leaves per tree (8 to 256) and smallest leaf (2 to 100) as
    log-uniform integers, and the share of columns each split may use (0.5 to 1); up
    to 1,000 iterations, stopped early on its own validation split. The forests draw
    the columns per split (the square root of their number, or a half, three quarters
    or all of them) and the smallest leaf (1 to 8 rows).
    """
    rng = np.random.default_rng([seed, 20261205])

    def log_uniform(low: float, high: float) -> float:
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))

    for number in range(1, count + 1):
        if number % 2:
            params: dict[str, Any] = {
                "learning_rate": round(log_uniform(0.02, 0.2), 4),
                "max_leaf_nodes": int(round(log_uniform(8, 256))),
                "min_samples_leaf": int(round(log_uniform(2, 100))),
                "l2_regularization": round(log_uniform(1e-3, 10.0), 4),
                "max_features": round(float(rng.uniform(0.5, 1.0)), 3),
                "max_iter": 1000,
            }
            yield f"hgb-random-{number}", ClassicalConfig(ALGORITHM, params)
        else:
            columns = ["sqrt", 0.5, 0.75, 1.0][int(rng.integers(4))]
            params = {
                "n_estimators": 300,
                "max_features": columns,
                "min_samples_leaf": int(round(log_uniform(1, 8))),
            }
            yield f"extra-trees-random-{number}", ClassicalConfig(EXTRA_TREES, params)


# Below these sizes the trees' own early-stopping split is too small to trust; the
# configurations then run at most this many iterations.
EARLY_STOPPING_MIN_ROWS = 200
EARLY_STOPPING_MIN_CLASS_ROWS = 10
ITERATIONS_WITHOUT_EARLY_STOPPING = 100


class ClassicalExportError(ConfigurationError):
    """The installed scikit-learn keeps its fitted trees where this module cannot read
    them; the boosting model cannot be exported without pickle."""


@dataclass(frozen=True)
class ColumnCodes:
    """How a frame becomes the trees' numeric matrix; fitted on the training rows.

    Args:
        numeric: numeric columns, read as floats (missing stays NaN).
        categorical: categorical columns and their known values in code order.
    """

    numeric: list[str]
    categorical: dict[str, list[str]]

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str]
    ) -> ColumnCodes:
        """Learn the category codes from `frame` (the training rows only)."""
        vocabularies = {
            name: sorted(frame[name].dropna().astype(str).unique().tolist())
            for name in categorical
        }
        return cls(numeric=list(numeric), categorical=vocabularies)

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The (n, features) float64 matrix; unseen or missing categories are NaN.

        Raises:
            ColumnNotFoundError: a feature the model was trained on is not in `frame`.
        """
        import pandas as pd

        _require_columns(frame, self.feature_names)
        columns = [
            pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            for name in self.numeric
        ]
        for name, vocabulary in self.categorical.items():
            lookup = {value: float(code) for code, value in enumerate(vocabulary)}
            series = frame[name]
            codes = np.array(
                [lookup.get(v, math.nan) for v in series.astype(str).tolist()],
                dtype=np.float64,
            )
            codes[series.isna().to_numpy()] = math.nan
            columns.append(codes)
        if not columns:
            return np.zeros((len(frame), 0), dtype=np.float64)
        return np.stack(columns, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ColumnCodes:
        return cls(
            numeric=list(payload["numeric"]),
            categorical={k: list(v) for k, v in payload["categorical"].items()},
        )


@dataclass
class TreeArrays:
    """Every tree of a boosting model as flat node arrays.

    Child indices are positions in the flat arrays; tree `t` starts at `roots[t]` and
    adds its leaf value to raw score column `outputs[t]`, trees in fitting order.
    """

    feature: np.ndarray  # int64
    threshold: np.ndarray  # float64
    missing_left: np.ndarray  # bool
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    is_leaf: np.ndarray  # bool
    value: np.ndarray  # float64
    roots: np.ndarray  # int64
    outputs: np.ndarray  # int64
    baseline: np.ndarray  # float64, one per raw score column

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "missing_left": self.missing_left,
            "left": self.left,
            "right": self.right,
            "is_leaf": self.is_leaf,
            "value": self.value,
            "roots": self.roots,
            "outputs": self.outputs,
            "baseline": self.baseline,
        }

    def raw_scores(self, x: np.ndarray, *, chunk_rows: int = 4096) -> np.ndarray:
        """Baseline plus every tree's leaf value: (n, raw score columns) float64."""
        n_outputs = len(self.baseline)
        raw = np.empty((len(x), n_outputs), dtype=np.float64)
        for start in range(0, len(x), chunk_rows):
            part = x[start : start + chunk_rows]
            raw[start : start + len(part)] = self._raw_chunk(part)
        return raw

    def _raw_chunk(self, x: np.ndarray) -> np.ndarray:
        # every row walks every tree at once, one level per pass
        rows = np.arange(len(x))[:, None]
        node = np.broadcast_to(self.roots, (len(x), len(self.roots))).copy()
        for _ in range(len(self.value)):
            at_leaf = self.is_leaf[node]
            if at_leaf.all():
                break
            values = x[rows, self.feature[node]]
            go_left = np.where(
                np.isnan(values),
                self.missing_left[node],
                values <= self.threshold[node],
            )
            step = np.where(go_left, self.left[node], self.right[node])
            node = np.where(at_leaf, node, step)

        leaf_values = self.value[node]
        raw = np.zeros((len(x), len(self.baseline)), dtype=np.float64)
        raw += self.baseline
        for tree, output in enumerate(self.outputs):  # fitting order, as the trees add
            raw[:, output] += leaf_values[:, tree]
        return raw


def extract_trees(model: Any) -> TreeArrays:
    """Read a fitted HistGradientBoosting model's trees into :class:`TreeArrays`.

    This is the one place that reads scikit-learn's private attributes
    (``_predictors``, each predictor's ``nodes`` and ``_baseline_prediction``).

    Raises:
        ClassicalExportError: the attributes are missing or hold categorical splits.
    """
    try:
        predictors = model._predictors
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        node_tables = [
            (output, predictor.nodes)
            for iteration in predictors
            for output, predictor in enumerate(iteration)
        ]
        columns = {
            name: [table[name] for _, table in node_tables]
            for name in (
                "feature_idx",
                "num_threshold",
                "missing_go_to_left",
                "left",
                "right",
                "is_leaf",
                "value",
                "is_categorical",
            )
        }
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        import sklearn

        raise ClassicalExportError(
            f"scikit-learn {sklearn.__version__} keeps its fitted boosting trees where "
            f"the local backend cannot read them ({type(exc).__name__}: {exc}); "
            f"install a scikit-learn between 1.2 and 1.9, or set the local option "
            f"classical=false"
        ) from None
    if any(np.any(flags) for flags in columns["is_categorical"]):
        raise ClassicalExportError(
            "the boosting model holds categorical splits, which the array export does "
            "not support; fit it with categorical_features=None"
        )

    sizes = [len(table) for _, table in node_tables]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    shift = np.repeat(offsets, sizes)
    return TreeArrays(
        feature=_joined(columns["feature_idx"], np.int64),
        threshold=_joined(columns["num_threshold"], np.float64),
        missing_left=_joined(columns["missing_go_to_left"], np.bool_),
        left=_joined(columns["left"], np.int64) + shift,
        right=_joined(columns["right"], np.int64) + shift,
        is_leaf=_joined(columns["is_leaf"], np.bool_),
        value=_joined(columns["value"], np.float64),
        roots=offsets,
        outputs=np.array([output for output, _ in node_tables], dtype=np.int64),
        baseline=baseline,
    )


def _joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(p) for p in parts]).astype(dtype)


class ArrayModel:
    """What the classical models share: predictions from a frame through their own
    numeric matrix, and class outputs placed in the job's class order.

    Subclasses implement :meth:`matrix`, :meth:`output_from_matrix` and :meth:`save`
    and keep their configuration name and parameters in `metadata`.

    Args:
        task: "binary", "multiclass" or "regression".
        classes: the job's class labels in output order (empty for regression).
        class_columns: for each class the model saw, the index in `classes` it scores.
    """

    metadata: dict[str, Any]

    def __init__(
        self, *, task: str, classes: list[Any], class_columns: list[int]
    ) -> None:
        self.task = task
        self._classes = list(classes)
        self.class_columns = list(class_columns)

    @property
    def classes(self) -> list[Any] | None:
        return None if self.task == "regression" else list(self._classes)

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The model's numeric matrix of `frame`."""
        raise NotImplementedError

    def output_from_matrix(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, k) or values (n,) from :meth:`matrix`'s output."""
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        """Write the model's model.json and arrays into `folder`; return it."""
        raise NotImplementedError

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities (n, k) in `classes` order.

        Raises:
            InputError: the model is a regression model.
            ColumnNotFoundError: a feature is missing from `frame`.
        """
        if self.task == "regression":
            raise InputError(
                "predict_proba is for classification models; this model does "
                "regression, call predict instead"
            )
        return self.output_from_matrix(self.matrix(frame))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Class labels (n,) for classification, target values (n,) for regression."""
        output = self.output_from_matrix(self.matrix(frame))
        if self.task == "regression":
            return output
        labels = np.asarray(self._classes, dtype=object)
        return labels[output.argmax(axis=1)]

    def place_classes(self, present: np.ndarray) -> np.ndarray:
        """(n, classes seen) probabilities -> (n, k) in the job's class order."""
        proba = np.zeros((len(present), len(self._classes)), dtype=np.float64)
        proba[:, self.class_columns] = present
        return proba

    def output_from_scores(self, raw: np.ndarray) -> np.ndarray:
        """Raw scores (n, 1 or k) -> values (regression), or probabilities in the job's
        class order: a sigmoid of the one score of two classes, else a softmax."""
        from scipy.special import expit, softmax

        if self.task == "regression":
            return raw[:, 0]
        if raw.shape[1] == 1:  # two classes: one score for the second one
            positive = expit(raw[:, 0])
            return self.place_classes(np.stack([1.0 - positive, positive], axis=1))
        return self.place_classes(softmax(raw, axis=1))

    def write(
        self,
        folder: str | Path,
        fields: dict[str, Any],
        arrays_file: str,
        arrays: dict[str, np.ndarray],
    ) -> Path:
        """Write model.json (the shared fields, then `fields`) and `arrays_file`, an
        ``.npz`` of plain arrays, into `folder`; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_json = {
            "format": fields.pop("format"),
            "format_version": fields.pop("format_version"),
            "task": self.task,
            "classes": [_jsonable(c) for c in self._classes],
            "class_columns": self.class_columns,
            **fields,
            "metadata": self.metadata,
        }
        (folder / "model.json").write_text(
            json.dumps(model_json, indent=2, default=str)
        )
        with (folder / arrays_file).open("wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        return folder


def read_arrays(folder: Path, arrays_file: str) -> dict[str, np.ndarray]:
    """The plain arrays of a saved model, read without pickle (OSError, ValueError)."""
    with np.load(folder / arrays_file, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


class GradientBoostingModel(ArrayModel):
    """A fitted boosting model as arrays, with its column encoding.

    Frames passed in use the features' safe names; extra columns are ignored.

    Args:
        task: "binary", "multiclass" or "regression".
        classes: the job's class labels in output order (empty for regression).
        class_columns: for each raw score column, the index in `classes` it scores
            (classes absent from the training rows get probability 0).
        codes: the column encoding fitted on the training rows.
        trees: the trees.
        metadata: the configuration name, parameters and validation score.
    """

    def __init__(
        self,
        *,
        task: str,
        classes: list[Any],
        class_columns: list[int],
        codes: ColumnCodes,
        trees: TreeArrays,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task=task, classes=classes, class_columns=class_columns)
        self.codes = codes
        self.trees = trees
        self.metadata = dict(metadata or {})

    @property
    def feature_names(self) -> list[str]:
        return self.codes.feature_names

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return self.codes.transform(frame)

    def output_from_matrix(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, k) or values (n,) from the encoded matrix."""
        return self.output_from_scores(self.trees.raw_scores(x))

    def save(self, folder: str | Path) -> Path:
        """Write model.json and trees.npz (plain arrays) into `folder`; return it."""
        fields = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "features": self.feature_names,
            "codes": self.codes.to_dict(),
        }
        return self.write(folder, fields, TREES_FILE, self.trees.arrays())


def load_classical(path: str | Path) -> ArrayModel | BaggedModel:
    """Load a model saved by a classical model's ``save``, reading arrays only.

    The folder's model.json names the format: "hist-gradient-boosting", "linear",
    "extra-trees" or "bagged" (fold models of one of those).

    Raises:
        ConfigurationError: the folder is not such a model or a file is unreadable.
    """
    from broker.local import bagging, forest, linear

    folder = Path(path)
    try:
        model_json = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"cannot read a saved classical model from {str(folder)!r}: {exc}; point "
            f"at a member folder of the run's model folder"
        ) from None

    fmt = model_json.get("format")
    if fmt == bagging.MODEL_FORMAT:
        return bagging.load_bagged(folder, model_json)
    if fmt == linear.MODEL_FORMAT:
        return linear.load_linear(folder, model_json)
    if fmt == forest.MODEL_FORMAT:
        return forest.load_forest(folder, model_json)
    if fmt != MODEL_FORMAT:
        formats = [
            MODEL_FORMAT,
            linear.MODEL_FORMAT,
            forest.MODEL_FORMAT,
            bagging.MODEL_FORMAT,
        ]
        raise ConfigurationError(
            f"{str(folder)!r} holds a model of format {fmt!r}, not one of {formats}"
        )
    try:
        trees = TreeArrays(**read_arrays(folder, TREES_FILE))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot read a saved boosting model from {str(folder)!r}: {exc}; point "
            f"at a member folder of the run's model folder"
        ) from None
    return GradientBoostingModel(
        task=str(model_json["task"]),
        classes=list(model_json["classes"]),
        class_columns=[int(c) for c in model_json["class_columns"]],
        codes=ColumnCodes.from_dict(model_json["codes"]),
        trees=trees,
        metadata=model_json.get("metadata", {}),
    )


@dataclass
class ClassicalFit:
    """One fitted configuration and its output on the validation rows."""

    name: str
    params: dict[str, Any]
    model: ArrayModel | BaggedModel
    validation_output: np.ndarray
    training_time_s: float
    iterations: int  # boosting iterations, solver iterations or trees
    score: float = math.nan
    algorithm: str = ALGORITHM


@dataclass
class ClassicalRun:
    """What the classical stage produced within its time cap."""

    fits: list[ClassicalFit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # configurations not started
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    # With K-fold bagging (folds > 0) each fit's output covers every training row,
    # out of fold, and `target` holds those rows' targets; otherwise the outputs are
    # on the search's validation rows.
    target: np.ndarray | None = field(default=None, repr=False)
    folds: int = 0
    # the folds' row positions (fit, held out), for refitting the networks on them
    splits: list[tuple[np.ndarray, np.ndarray]] = field(
        default_factory=list, repr=False
    )


@dataclass
class _StageRows:
    """The classical stage's rows, encoded once per kind of model on first use."""

    fit_frame: pd.DataFrame
    val_frame: pd.DataFrame
    y_fit: np.ndarray
    task: str
    classes: list[Any]
    codes: ColumnCodes
    x_fit: np.ndarray
    x_val: np.ndarray
    seed: int
    threads: int
    _linear: tuple[Any, np.ndarray, np.ndarray] | None = None
    _filled: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def linear(self) -> tuple[Any, np.ndarray, np.ndarray]:
        """The linear encoding and the design matrices of the fit and validation
        rows."""
        from broker.local.linear import LinearEncoding

        if self._linear is None:
            encoding = LinearEncoding.fit(
                self.fit_frame, self.codes.numeric, list(self.codes.categorical)
            )
            self._linear = (
                encoding,
                encoding.transform(self.fit_frame),
                encoding.transform(self.val_frame),
            )
        return self._linear

    def filled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trees' fill values and the filled fit and validation matrices."""
        from broker.local.forest import fill_missing, fill_values

        if self._filled is None:
            fill = fill_values(self.x_fit, self.codes)
            self._filled = (
                fill,
                fill_missing(self.x_fit, fill),
                fill_missing(self.x_val, fill),
            )
        return self._filled


def fit_classical(
    fit_frame: pd.DataFrame,
    y_fit: np.ndarray,
    val_frame: pd.DataFrame,
    *,
    task: str,
    classes: list[Any],
    numeric: list[str],
    categorical: list[str],
    seed: int,
    time_cap_s: float,
    configs: dict[str, ClassicalConfig] | None = None,
    clock: Callable[[], float] = time.monotonic,
    should_stop: Callable[[], bool] | None = None,
    threads: int | None = None,
    search: bool = False,
) -> ClassicalRun:
    """Fit the classical configurations in order until the time cap is spent.

    Args:
        fit_frame: the rows the network search trains on (safe names).
        y_fit: their targets: class indices into `classes`, or values for regression.
        val_frame: the validation rows; each model's output on them is kept.
        time_cap_s: no configuration starts once this many seconds have passed; a
            boosting or linear configuration running then finishes, a forest stops
            growing trees.
        configs: name -> configuration; default :data:`CONFIGS`.
        clock: monotonic seconds (a seam for tests).
        should_stop: when it returns True no further configuration starts (the job
            was cancelled).
        threads: OpenMP, BLAS and forest threads for fitting; default half the cores
            (at least one). More threads than free cores make OpenMP's waiting
            threads spin, which slows fitting by orders of magnitude on a busy
            machine.
        search: after `configs`, fit :func:`sampled_configs` while the cap has time
            for one more of their kind (see :func:`fit_drawn`).

    Returns:
        The fitted configurations, those skipped for time, and notes.
    """
    from threadpoolctl import threadpool_limits

    configs = CONFIGS if configs is None else configs
    started = clock()
    codes = ColumnCodes.fit(fit_frame, numeric, categorical)
    rows = _StageRows(
        fit_frame=fit_frame,
        val_frame=val_frame,
        y_fit=np.asarray(y_fit),
        task=task,
        classes=list(classes),
        codes=codes,
        x_fit=codes.transform(fit_frame),
        x_val=codes.transform(val_frame),
        seed=seed,
        threads=threads or _default_threads(),
    )
    run = ClassicalRun()

    present = sorted(set(rows.y_fit.tolist())) if task != "regression" else []
    if task != "regression" and len(present) < 2:
        run.notes.append(
            "the classical models were not fitted: the training rows hold one class"
        )
        return run

    def in_time() -> bool:
        stopped = should_stop is not None and should_stop()
        return clock() - started < time_cap_s and not stopped

    longest: dict[str, float] = {}  # seconds of the slowest fit of each algorithm

    def fit_one(name: str, config: ClassicalConfig) -> None:
        t0 = clock()
        with threadpool_limits(limits=rows.threads):
            fit = _FITTERS[config.algorithm](name, config, rows, in_time)
        fit.training_time_s = clock() - t0
        longest[fit.algorithm] = max(
            longest.get(fit.algorithm, 0.0), fit.training_time_s
        )
        run.fits.append(fit)
        logger.info(
            "%s (%s): %d iterations in %.1fs",
            name,
            fit.algorithm,
            fit.iterations,
            fit.training_time_s,
        )
        wanted = config.params.get("n_estimators")
        if fit.algorithm == EXTRA_TREES and wanted and fit.iterations < int(wanted):
            cancelled = should_stop is not None and should_stop()
            reason = (
                "the job was cancelled"
                if cancelled
                else f"the time cap of {time_cap_s:.1f} s was spent"
            )
            run.notes.append(
                f"{name}: {fit.iterations} of {wanted} trees were grown; {reason}"
            )

    distinct = DistinctModels(len(rows.x_fit))
    for name, config in configs.items():
        # TODO(local-classical-cap): a boosting or linear configuration that starts
        # just before the cap runs to its end; fitting boosting in chunks with
        # warm_start would let it stop there, as the forests do.
        if not in_time():
            run.skipped.append(name)
            continue
        earlier = distinct.same_as(config)
        if earlier is not None:
            run.notes.append(distinct.note(name, config, earlier))
            continue
        fit_one(name, config)
        distinct.add(name, config)

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
            f"classical configurations {run.skipped} were not fitted: their time cap "
            f"of {time_cap_s:.1f} s was spent"
        )
    return run


class DistinctModels:
    """Tells when a configuration would fit the same model as an earlier one.

    On large tables a forest's smallest leaf is raised (see
    :func:`broker.local.forest.smallest_leaf`), so forests asked for different leaf
    sizes can be the same forest; fitting it again would only spend the stage's time.

    Args:
        rows: the rows each model is fitted on (for bagged models, the largest fold).
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._seen: dict[str, str] = {}

    def same_as(self, config: ClassicalConfig) -> str | None:
        """The fitted configuration whose model `config` would fit again, else None."""
        return self._seen.get(self._key(config))

    def add(self, name: str, config: ClassicalConfig) -> None:
        """Remember a configuration that was fitted."""
        self._seen.setdefault(self._key(config), name)

    def _key(self, config: ClassicalConfig) -> str:
        from broker.local.forest import smallest_leaf  # forest imports this module

        params = dict(config.params)
        if config.algorithm == EXTRA_TREES:
            params["min_samples_leaf"] = smallest_leaf(params, self.rows)
        return json.dumps([config.algorithm, params], sort_keys=True, default=str)

    def note(self, name: str, config: ClassicalConfig, earlier: str) -> str:
        if config.algorithm != EXTRA_TREES:
            return f"{name}: not fitted, the same settings as {earlier}"
        from broker.local.forest import MAX_LEAVES_PER_TREE, smallest_leaf

        return (
            f"{name}: not fitted, the same forest as {earlier} on {self.rows:,} rows "
            f"(leaves of at least {smallest_leaf(config.params, self.rows)} rows keep "
            f"each tree under {MAX_LEAVES_PER_TREE:,} leaves)"
        )


# A drawn configuration starts only with this many times the slowest earlier fit of its
# kind left in the cap: drawn settings can cost more than the seeded ones (a lower
# learning rate, more columns per split).
DRAWN_COST_FACTOR = 2.0


def fit_drawn(
    seed: int,
    fit_one: Callable[[str, ClassicalConfig], Any],
    *,
    in_time: Callable[[], bool],
    left_s: Callable[[], float],
    longest: dict[str, float],
    distinct: DistinctModels,
) -> None:
    """Fit :func:`sampled_configs` in order while the cap has time.

    A drawn configuration starts only once one of its kind has finished and with
    :data:`DRAWN_COST_FACTOR` times the slowest of them (`longest`, seconds by
    algorithm) left; one that would not fit, or that would fit the same model as an
    earlier configuration (`distinct`), is passed over for the next.
    """
    for name, config in sampled_configs(seed):
        if not in_time():
            return
        slowest = longest.get(config.algorithm)
        if slowest is None or DRAWN_COST_FACTOR * slowest > left_s():
            continue
        earlier = distinct.same_as(config)
        if earlier is not None:
            logger.info("%s: the same model as %s; not fitted", name, earlier)
            continue
        if fit_one(name, config) is not False:
            distinct.add(name, config)


def _fit_boosting(
    name: str, config: ClassicalConfig, rows: _StageRows, in_time: Callable[[], bool]
) -> ClassicalFit:
    estimator = _estimator(rows.task, config.params, rows.seed, rows.y_fit)
    estimator.fit(rows.x_fit, rows.y_fit)
    model = GradientBoostingModel(
        task=rows.task,
        classes=rows.classes,
        class_columns=[int(c) for c in getattr(estimator, "classes_", [])],
        codes=rows.codes,
        trees=extract_trees(estimator),
        metadata={"name": name, "params": config.params},
    )
    return ClassicalFit(
        name=name,
        params=dict(config.params),
        model=model,
        validation_output=model.output_from_matrix(rows.x_val),
        training_time_s=0.0,
        iterations=int(estimator.n_iter_),
        algorithm=config.algorithm,
    )


def _fit_linear(
    name: str, config: ClassicalConfig, rows: _StageRows, in_time: Callable[[], bool]
) -> ClassicalFit:
    from broker.local.linear import fit_linear_estimator, iterations_of, linear_model

    encoding, x_fit, x_val = rows.linear()
    estimator = fit_linear_estimator(
        x_fit, rows.y_fit, task=rows.task, params=config.params, seed=rows.seed
    )
    model = linear_model(
        estimator,
        task=rows.task,
        classes=rows.classes,
        encoding=encoding,
        metadata={"name": name, "params": config.params},
    )
    return ClassicalFit(
        name=name,
        params=dict(config.params),
        model=model,
        validation_output=model.output_from_matrix(x_val),
        training_time_s=0.0,
        iterations=iterations_of(estimator),
        algorithm=config.algorithm,
    )


def _fit_forest(
    name: str, config: ClassicalConfig, rows: _StageRows, in_time: Callable[[], bool]
) -> ClassicalFit:
    from broker.local.forest import fit_forest_estimator, forest_model

    fill, x_fit, x_val = rows.filled()
    estimator = fit_forest_estimator(
        x_fit,
        rows.y_fit,
        task=rows.task,
        params=config.params,
        seed=rows.seed,
        threads=rows.threads,
        keep_growing=in_time,
    )
    model = forest_model(
        estimator,
        task=rows.task,
        classes=rows.classes,
        codes=rows.codes,
        fill=fill,
        metadata={"name": name, "params": config.params},
    )
    return ClassicalFit(
        name=name,
        params={**config.params, "min_samples_leaf": estimator.min_samples_leaf},
        model=model,
        validation_output=model.output_from_matrix(x_val),
        training_time_s=0.0,
        iterations=len(estimator.estimators_),
        algorithm=config.algorithm,
    )


_FITTERS: dict[
    str, Callable[[str, ClassicalConfig, _StageRows, Callable[[], bool]], ClassicalFit]
] = {
    ALGORITHM: _fit_boosting,
    LINEAR: _fit_linear,
    EXTRA_TREES: _fit_forest,
}


def _estimator(task: str, params: dict[str, Any], seed: int, y_fit: np.ndarray) -> Any:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    settings: dict[str, Any] = {
        "categorical_features": None,
        "early_stopping": _can_stop_early(task, y_fit),
        "random_state": seed,
        **params,
    }
    if not settings["early_stopping"]:
        settings["max_iter"] = min(
            int(settings.get("max_iter", 100)), ITERATIONS_WITHOUT_EARLY_STOPPING
        )
    if task == "regression":
        return HistGradientBoostingRegressor(**settings)
    return HistGradientBoostingClassifier(**settings)


def _default_threads() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


def _can_stop_early(task: str, y_fit: np.ndarray) -> bool:
    if len(y_fit) < EARLY_STOPPING_MIN_ROWS:
        return False
    if task == "regression":
        return True
    counts = np.unique(np.asarray(y_fit), return_counts=True)[1]
    return bool(counts.min() >= EARLY_STOPPING_MIN_CLASS_ROWS)


__all__ = [
    "ALGORITHM",
    "CONFIGS",
    "SEARCH_CONFIGS",
    "EXTRA_TREES",
    "LINEAR",
    "MODEL_FORMAT",
    "ArrayModel",
    "ClassicalConfig",
    "ClassicalExportError",
    "ClassicalFit",
    "ClassicalRun",
    "ColumnCodes",
    "GradientBoostingModel",
    "TreeArrays",
    "extract_trees",
    "fit_classical",
    "fit_drawn",
    "load_classical",
    "sampled_configs",
]
