"""Validation scores that steer the local search, with their directions.

The search ranks trials by the job's metric, computed on the validation rows it carved from
the training data. Classification scores read class probabilities in the model's class order;
regression scores read values on the target's own scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from broker.errors import ConfigurationError

Direction = Literal["maximize", "minimize"]

_MAXIMIZE = {
    "roc_auc",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "r2",
}
_MINIMIZE = {"log_loss", "rmse", "mse", "mae"}
_ALIASES = {"auc": "roc_auc", "logloss": "log_loss", "neg_log_loss": "log_loss"}
_REGRESSION = {"rmse", "mse", "mae", "r2"}


@dataclass(frozen=True)
class ValidationMetric:
    """One metric: its name, its direction, and how to compute it.

    Args:
        name: the job's metric name (aliases such as "auc" are accepted).
        task: "binary", "multiclass" or "regression".
        positive_index: for binary tasks, the column of the positive class.
    """

    name: str
    task: str
    positive_index: int = 1

    @classmethod
    def create(cls, name: str, task: str, positive_index: int = 1) -> ValidationMetric:
        """Validate the name against the task and build the metric.

        Raises:
            ConfigurationError: the metric is unknown or does not fit the task.
        """
        key = _ALIASES.get(name.lower(), name.lower())
        if key not in _MAXIMIZE | _MINIMIZE:
            raise ConfigurationError(
                f"metric {name!r} is not supported by the local backend; choose from "
                f"{sorted(_MAXIMIZE | _MINIMIZE)}"
            )
        if (key in _REGRESSION) != (task == "regression"):
            raise ConfigurationError(
                f"metric {name!r} does not fit a {task} task; pick a "
                f"{'regression' if task == 'regression' else 'classification'} metric"
            )
        return cls(key, task, positive_index)

    @property
    def direction(self) -> Direction:
        return "maximize" if self.name in _MAXIMIZE else "minimize"

    def better(self, a: float, b: float | None) -> bool:
        """Whether score `a` is strictly better than `b` (anything beats None or NaN)."""
        if np.isnan(a):
            return False
        if b is None or np.isnan(b):
            return True
        return a > b if self.direction == "maximize" else a < b

    def __call__(self, y_true: np.ndarray, output: np.ndarray) -> float:
        """The score of `output` (probabilities or values) against `y_true`.

        Returns NaN when the score is undefined on these rows (AUC with one class).
        """
        return float(_SCORERS[self.name](self, y_true, output))


def _roc_auc(metric: ValidationMetric, y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if metric.task == "binary":
        positive = y == metric.positive_index
        if positive.all() or not positive.any():
            return float("nan")
        return float(roc_auc_score(positive, proba[:, metric.positive_index]))

    # one-vs-rest, averaged over the classes present in these rows
    scores = [
        roc_auc_score(y == c, proba[:, c])
        for c in range(proba.shape[1])
        if 0 < (y == c).sum() < len(y)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def _log_loss(metric: ValidationMetric, y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, proba, labels=list(range(proba.shape[1]))))


def _label_metric(
    fn_name: str,
) -> Callable[[ValidationMetric, np.ndarray, np.ndarray], float]:
    def score(metric: ValidationMetric, y: np.ndarray, proba: np.ndarray) -> float:
        from sklearn import metrics

        predicted = proba.argmax(axis=1)
        fn = getattr(metrics, fn_name)
        if fn_name in ("accuracy_score", "balanced_accuracy_score"):
            return float(fn(y, predicted))
        if metric.task == "binary":
            return float(
                fn(y, predicted, pos_label=metric.positive_index, zero_division=0)
            )
        labels = list(range(proba.shape[1]))
        return float(fn(y, predicted, labels=labels, average="macro", zero_division=0))

    return score


def _regression(
    kind: str,
) -> Callable[[ValidationMetric, np.ndarray, np.ndarray], float]:
    def score(metric: ValidationMetric, y: np.ndarray, values: np.ndarray) -> float:
        error = values.astype(np.float64) - y.astype(np.float64)
        if kind == "rmse":
            return float(np.sqrt(np.mean(error**2)))
        if kind == "mse":
            return float(np.mean(error**2))
        if kind == "mae":
            return float(np.mean(np.abs(error)))
        spread = np.sum((y - y.mean()) ** 2)
        return float(1 - np.sum(error**2) / spread) if spread > 0 else float("nan")

    return score


_SCORERS: dict[str, Callable[[ValidationMetric, np.ndarray, np.ndarray], float]] = {
    "roc_auc": _roc_auc,
    "log_loss": _log_loss,
    "accuracy": _label_metric("accuracy_score"),
    "balanced_accuracy": _label_metric("balanced_accuracy_score"),
    "f1": _label_metric("f1_score"),
    "precision": _label_metric("precision_score"),
    "recall": _label_metric("recall_score"),
    "rmse": _regression("rmse"),
    "mse": _regression("mse"),
    "mae": _regression("mae"),
    "r2": _regression("r2"),
}
