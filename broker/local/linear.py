"""Regularised linear models of the local backend's classical stage, kept as arrays.

Logistic regression (binary and multiclass, lbfgs) or ridge regression is fitted on a
design matrix built from the training rows: numeric columns with missing values filled
by the training median, a 0/1 missing-value column for each numeric column that has
missing values there, all numerics standardised by the training mean and standard
deviation; categorical columns one-hot encoded over the values seen on the training
rows (unseen and missing values are all zeros). The fitted model is a
:class:`LinearModel`: the encoding's numbers and the coefficients as plain arrays in
an ``.npz``, names and categories in JSON, predicted with numpy (sigmoid, softmax or
the identity), so loading runs no stored code and needs no scikit-learn.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from broker.errors import ConfigurationError
from broker.local.classical import ArrayModel, read_arrays
from broker.local.preprocess import _require_columns

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MODEL_FORMAT = "linear"
FORMAT_VERSION = 1
ALGORITHM = "linear"
ARRAYS_FILE = "coefficients.npz"
# The most values one categorical column brings to the design matrix: its most frequent
# values on the training rows; rarer ones are encoded as all zeros, like unseen ones.
MAX_CATEGORIES = 50
MAX_ITERATIONS = 1000


@dataclass
class LinearEncoding:
    """How a frame becomes the linear model's design matrix; fitted on training rows.

    The matrix holds the standardised numerics, then the missing-value columns of
    `indicators`, then one 0/1 column per known value of each categorical column.

    Args:
        numeric: numeric columns in matrix order.
        medians: each numeric column's training median (0 when all were missing).
        means: each numeric column's mean after filling.
        scales: each numeric column's standard deviation after filling (1 when the
            column is constant).
        indicators: the numeric columns that get a missing-value column.
        categorical: categorical columns and their known values in column order.
    """

    numeric: list[str]
    medians: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    indicators: list[str]
    categorical: dict[str, list[str]]

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, numeric: list[str], categorical: list[str]
    ) -> LinearEncoding:
        """Learn medians, scales and categories from `frame` (the training rows)."""
        raw = _numeric_matrix(frame, numeric)
        missing = np.isnan(raw)
        medians = np.zeros(len(numeric))
        for j in range(len(numeric)):
            if not missing[:, j].all():
                medians[j] = np.median(raw[~missing[:, j], j])
        filled = np.where(missing, medians, raw)
        means = filled.mean(axis=0) if len(frame) else np.zeros(len(numeric))
        stds = filled.std(axis=0) if len(frame) else np.ones(len(numeric))
        constant = stds <= 1e-12 * np.maximum(1.0, np.abs(means))

        return cls(
            numeric=list(numeric),
            medians=medians,
            means=means,
            scales=np.where(constant, 1.0, stds),
            indicators=[c for j, c in enumerate(numeric) if missing[:, j].any()],
            categorical={c: _frequent_values(frame[c]) for c in categorical},
        )

    @property
    def feature_names(self) -> list[str]:
        """The frame columns the encoding reads."""
        return [*self.numeric, *self.categorical]

    @property
    def column_names(self) -> list[str]:
        """The design matrix's columns: "x", "x__missing", "color=red"."""
        return [
            *self.numeric,
            *(f"{c}__missing" for c in self.indicators),
            *(f"{c}={v}" for c, values in self.categorical.items() for v in values),
        ]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The (n, columns) float64 design matrix.

        Raises:
            ColumnNotFoundError: a feature the model was trained on is not in `frame`.
        """
        _require_columns(frame, self.feature_names)
        raw = _numeric_matrix(frame, self.numeric)
        missing = np.isnan(raw)
        blocks = [(np.where(missing, self.medians, raw) - self.means) / self.scales]
        positions = [self.numeric.index(c) for c in self.indicators]
        blocks.append(missing[:, positions].astype(np.float64))
        for name, values in self.categorical.items():
            blocks.append(_one_hot(frame[name], values))
        return np.concatenate(blocks, axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"medians": self.medians, "means": self.means, "scales": self.scales}

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "indicators": self.indicators,
            "categorical": self.categorical,
        }

    @classmethod
    def from_parts(
        cls, payload: dict[str, Any], arrays: dict[str, np.ndarray]
    ) -> LinearEncoding:
        return cls(
            numeric=list(payload["numeric"]),
            medians=np.asarray(arrays["medians"], dtype=np.float64),
            means=np.asarray(arrays["means"], dtype=np.float64),
            scales=np.asarray(arrays["scales"], dtype=np.float64),
            indicators=list(payload["indicators"]),
            categorical={k: list(v) for k, v in payload["categorical"].items()},
        )


def _numeric_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    import pandas as pd

    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float64)
    return np.stack(
        [
            pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64)
            for c in columns
        ],
        axis=1,
    )


def _frequent_values(series: pd.Series) -> list[str]:
    counts = series.dropna().astype(str).value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return sorted(value for value, _ in ranked[:MAX_CATEGORIES])


def _one_hot(series: pd.Series, values: list[str]) -> np.ndarray:
    lookup = {value: position for position, value in enumerate(values)}
    codes = np.array([lookup.get(v, -1) for v in series.astype(str).tolist()])
    codes[series.isna().to_numpy()] = -1
    block = np.zeros((len(series), len(values)), dtype=np.float64)
    known = np.flatnonzero(codes >= 0)
    block[known, codes[known]] = 1.0
    return block


class LinearModel(ArrayModel):
    """A fitted logistic or ridge regression as arrays, with its encoding.

    Frames passed in use the features' safe names; extra columns are ignored.

    Args:
        task: "binary", "multiclass" or "regression".
        classes: the job's class labels in output order (empty for regression).
        class_columns: for each class the model saw, the index in `classes` it scores
            (classes absent from the training rows get probability 0).
        encoding: the design matrix's encoding fitted on the training rows.
        coef: (outputs, columns) coefficients; one output row scores the second of
            two classes (sigmoid), several are softmax scores, regression has one.
        intercept: (outputs,) intercepts.
        metadata: the configuration name, parameters and validation score.
    """

    def __init__(
        self,
        *,
        task: str,
        classes: list[Any],
        class_columns: list[int],
        encoding: LinearEncoding,
        coef: np.ndarray,
        intercept: np.ndarray,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(task=task, classes=classes, class_columns=class_columns)
        self.encoding = encoding
        self.coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
        self.intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
        self.metadata = dict(metadata or {})

    @property
    def feature_names(self) -> list[str]:
        return self.encoding.feature_names

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return self.encoding.transform(frame)

    def output_from_matrix(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, k) or values (n,) from the design matrix."""
        return self.output_from_scores(x @ self.coef.T + self.intercept)

    def save(self, folder: str | Path) -> Path:
        """Write model.json and coefficients.npz (plain arrays) into `folder`."""
        fields = {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "features": self.feature_names,
            "columns": self.encoding.column_names,
            "encoding": self.encoding.to_dict(),
        }
        arrays = {
            **self.encoding.arrays(),
            "coef": self.coef,
            "intercept": self.intercept,
        }
        return self.write(folder, fields, ARRAYS_FILE, arrays)


def load_linear(folder: Path, model_json: dict[str, Any]) -> LinearModel:
    """Build a :class:`LinearModel` from its read model.json and its arrays file.

    Raises:
        ConfigurationError: the arrays file is missing or unreadable.
    """
    try:
        arrays = read_arrays(folder, ARRAYS_FILE)
        encoding = LinearEncoding.from_parts(model_json["encoding"], arrays)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(
            f"cannot read a saved linear model from {str(folder)!r}: {exc}; point at "
            f"a member folder of the run's model folder"
        ) from None
    return LinearModel(
        task=str(model_json["task"]),
        classes=list(model_json["classes"]),
        class_columns=[int(c) for c in model_json["class_columns"]],
        encoding=encoding,
        coef=arrays["coef"],
        intercept=arrays["intercept"],
        metadata=model_json.get("metadata", {}),
    )


def fit_linear_estimator(
    x: np.ndarray, y: np.ndarray, *, task: str, params: dict[str, Any], seed: int
) -> Any:
    """Fit logistic regression (lbfgs, L2 strength 1/C) or ridge (alpha = 1/C).

    Args:
        x: the design matrix of the training rows.
        y: class indices, or values for regression.
        params: ``C``, the inverse regularisation strength (default 1).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge

    strength = float(params.get("C", 1.0))
    if task == "regression":
        return Ridge(alpha=1.0 / strength).fit(x, y)
    estimator = LogisticRegression(
        C=strength, max_iter=MAX_ITERATIONS, random_state=seed
    )
    with warnings.catch_warnings():
        # an unconverged fit is still a model; its iteration count says so
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(x, y)


def linear_model(
    estimator: Any,
    *,
    task: str,
    classes: list[Any],
    encoding: LinearEncoding,
    metadata: dict[str, Any],
) -> LinearModel:
    """The :class:`LinearModel` of a fitted logistic regression or ridge."""
    return LinearModel(
        task=task,
        classes=classes,
        class_columns=[int(c) for c in getattr(estimator, "classes_", [])],
        encoding=encoding,
        coef=estimator.coef_,
        intercept=estimator.intercept_,
        metadata=metadata,
    )


def iterations_of(estimator: Any) -> int:
    """The solver's iterations (0 for ridge's closed-form solve)."""
    n_iter = getattr(estimator, "n_iter_", None)
    return 0 if n_iter is None else int(np.max(n_iter))


__all__ = [
    "ALGORITHM",
    "MODEL_FORMAT",
    "LinearEncoding",
    "LinearModel",
    "fit_linear_estimator",
    "linear_model",
    "load_linear",
]
