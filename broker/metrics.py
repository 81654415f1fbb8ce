"""Metrics with their directions, scoring of held-out predictions, leaderboard order.

Every metric the broker knows is a :class:`Metric` in one registry: its name, a label
for reports, whether higher or lower is better, and the tasks it applies to. The broker
scores every backend's model itself on the same held-out rows with
:func:`compute_metrics`, so scores from different backends compare like for like, and
ranks models with :func:`sort_leaderboard`, which reads the direction from the metric
(never a "lower is better" default) and puts models without a value last.

Example:
    >>> get_metric("log_loss").direction
    'minimize'
    >>> "roc_auc" in metric_names()
    True
"""

from __future__ import annotations

import difflib
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from broker.errors import ConfigurationError, InputError, MetricWarning
from broker.spec import Task

if TYPE_CHECKING:
    from broker.schema import Schema
    from broker.spec import LeaderboardEntry

logger = logging.getLogger(__name__)

Direction = Literal["maximize", "minimize"]

_CLASSIFICATION = frozenset({Task.BINARY, Task.MULTICLASS})
_BINARY = frozenset({Task.BINARY})
_MULTICLASS = frozenset({Task.MULTICLASS})
_REGRESSION = frozenset({Task.REGRESSION})

# Clip probabilities away from 0 and 1 before taking logs, as scikit-learn does.
_PROBABILITY_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Metric:
    """One metric: what it is called, how it reads, which way is better.

    Attributes:
        name: The key used in specs, leaderboards and reports (``"roc_auc"``).
        label: A short human description for reports.
        direction: ``"maximize"`` or ``"minimize"``.
        tasks: The tasks the metric is defined for.
        needs_probabilities: True when the metric reads scores, not hard labels.
    """

    name: str
    label: str
    direction: Direction
    tasks: frozenset[Task]
    needs_probabilities: bool = False

    @property
    def greater_is_better(self) -> bool:
        return self.direction == "maximize"

    def is_improvement(
        self, new: float, best: float, *, min_delta: float = 0.0
    ) -> bool:
        """Whether ``new`` beats ``best`` by more than ``min_delta`` in this direction.

        An equal value is not an improvement.
        """
        if self.greater_is_better:
            return new > best + min_delta
        return new < best - min_delta


_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "Accuracy", "maximize", _CLASSIFICATION),
        Metric("precision", "Precision of the positive class", "maximize", _BINARY),
        Metric("recall", "Recall of the positive class", "maximize", _BINARY),
        Metric("f1", "F1 of the positive class", "maximize", _BINARY),
        Metric(
            "precision_macro",
            "Precision, unweighted mean over classes",
            "maximize",
            _CLASSIFICATION,
        ),
        Metric(
            "recall_macro",
            "Recall, unweighted mean over classes",
            "maximize",
            _CLASSIFICATION,
        ),
        Metric(
            "f1_macro", "F1, unweighted mean over classes", "maximize", _CLASSIFICATION
        ),
        Metric(
            "precision_weighted",
            "Precision, mean over classes weighted by class size",
            "maximize",
            _CLASSIFICATION,
        ),
        Metric(
            "recall_weighted",
            "Recall, mean over classes weighted by class size",
            "maximize",
            _CLASSIFICATION,
        ),
        Metric(
            "f1_weighted",
            "F1, mean over classes weighted by class size",
            "maximize",
            _CLASSIFICATION,
        ),
        Metric(
            "roc_auc",
            "ROC AUC (multiclass: one-vs-rest, unweighted mean over present classes)",
            "maximize",
            _CLASSIFICATION,
            needs_probabilities=True,
        ),
        Metric(
            "roc_auc_ovr_weighted",
            "ROC AUC, one-vs-rest, mean over present classes weighted by prevalence",
            "maximize",
            _MULTICLASS,
            needs_probabilities=True,
        ),
        Metric(
            "log_loss",
            "Log loss (cross-entropy)",
            "minimize",
            _CLASSIFICATION,
            needs_probabilities=True,
        ),
        Metric("rmse", "Root mean squared error", "minimize", _REGRESSION),
        Metric("mae", "Mean absolute error", "minimize", _REGRESSION),
        Metric("r2", "Coefficient of determination (R²)", "maximize", _REGRESSION),
    )
}


def metric_names() -> list[str]:
    """Every metric name the broker accepts, in registry order."""
    return list(_METRICS)


def metrics_for_task(task: Task) -> list[Metric]:
    """The metrics defined for ``task``, in registry order."""
    return [m for m in _METRICS.values() if task in m.tasks]


def get_metric(name: str) -> Metric:
    """Look up a metric by name.

    Args:
        name: A metric name such as ``"f1"`` or ``"rmse"``.

    Returns:
        The registered :class:`Metric`.

    Raises:
        ConfigurationError: ``name`` is not a known metric; the message lists the
            choices and the closest names.
    """
    metric = _METRICS.get(name)
    if metric is not None:
        return metric

    close = difflib.get_close_matches(
        str(name).lower(), list(_METRICS), n=3, cutoff=0.5
    )
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigurationError(
        f"unknown metric {name!r}; choose from {', '.join(_METRICS)}.{hint}"
    )


@dataclass
class MetricReport:
    """Scores of one set of predictions on labelled rows.

    Attributes:
        values: Metric name to value; None where the metric is undefined on these rows
            (the reason is in ``notes``).
        n: The number of rows scored.
        notes: One sentence per undefined or qualified value.
        per_class_auc: Multiclass only: class label (as text) to its one-vs-rest AUC,
            None for a class absent from the rows.
    """

    values: dict[str, float | None]
    n: int
    notes: list[str] = field(default_factory=list)
    per_class_auc: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "n": self.n,
            "notes": list(self.notes),
            "per_class_auc": dict(self.per_class_auc),
        }


def compute_metrics(
    schema: Schema,
    y_true: Sequence[Any] | np.ndarray[Any, Any] | Any,
    predictions: Sequence[Any] | np.ndarray[Any, Any] | Any,
    *,
    names: Iterable[str] | None = None,
) -> MetricReport:
    """Score predictions against the true labels or values.

    Args:
        schema: The job's schema; gives the task, the classes in column order and the
            positive class.
        y_true: The true labels (classification, values from ``schema.classes``) or
            values (regression), one per row.
        predictions: Classification: an ``(n, k)`` array of class probabilities whose
            columns follow ``schema.classes``; for a binary task an ``(n,)`` array of
            positive-class probabilities is also accepted. Regression: ``(n,)`` values.
        names: The metrics to compute; all metrics of the task when None.

    Returns:
        A :class:`MetricReport`. Hard labels come from a 0.5 threshold on the
        positive-class probability (binary) or the most probable class (multiclass).

    Raises:
        InputError: No rows, lengths or shapes that do not match, or a label that is not
            one of the schema's classes.
        ConfigurationError: A name in ``names`` is unknown or not defined for the task.

    Warns:
        MetricWarning: A metric is undefined on these rows, or AUC was averaged over
            fewer classes than the task has.
    """
    task = schema.task
    selected = _select_metrics(task, names)
    y = np.asarray(y_true)
    if y.ndim != 1:
        y = y.reshape(-1)
    n = int(y.shape[0])
    if n == 0:
        raise InputError("no rows to score; the evaluation set is empty")

    if task == Task.REGRESSION:
        values, notes = _regression_metrics(y, predictions, n)
        per_class: dict[str, float | None] = {}
    else:
        values, notes, per_class = _classification_metrics(schema, y, predictions, n)

    report = MetricReport(
        values={m.name: values.get(m.name) for m in selected},
        n=n,
        notes=notes,
        per_class_auc=per_class,
    )
    for note in notes:
        warnings.warn(note, MetricWarning, stacklevel=2)
    return report


def sort_leaderboard(
    entries: Iterable[LeaderboardEntry], metric: str | Metric
) -> list[LeaderboardEntry]:
    """Order leaderboard entries best first by ``metric``, in the metric's direction.

    Entries whose value is missing, None or NaN go after every entry with a value, in
    their original order; ties keep their original order too.

    Args:
        entries: Leaderboard rows; each is read through ``entry.metrics[name]``.
        metric: A metric name or :class:`Metric`.

    Returns:
        A new list, best first.

    Raises:
        ConfigurationError: The metric name is unknown.
    """
    chosen = metric if isinstance(metric, Metric) else get_metric(metric)
    rows = list(entries)
    sign = -1.0 if chosen.greater_is_better else 1.0

    def key(entry: LeaderboardEntry) -> tuple[int, float]:
        value = _finite_or_none(entry.metrics.get(chosen.name))
        if value is None:
            return (1, 0.0)
        return (0, sign * value)

    ranked = sorted(rows, key=key)  # sorted() is stable: ties keep their order
    unscored = [e.model_id for e in ranked if key(e)[0] == 1]
    if unscored:
        warnings.warn(
            f"{len(unscored)} model(s) have no {chosen.name} value and are ranked "
            f"last: {', '.join(unscored)}",
            MetricWarning,
            stacklevel=2,
        )
    return ranked


# --- classification -------------------------------------------------------------------


def _classification_metrics(
    schema: Schema, y: np.ndarray[Any, Any], predictions: Any, n: int
) -> tuple[dict[str, float | None], list[str], dict[str, float | None]]:
    classes = list(schema.classes)
    k = len(classes)
    if k < 2:
        raise InputError(
            f"the schema lists {k} class(es) for a {schema.task.value} task; "
            f"at least 2 are needed to score"
        )
    y_index = _encode_labels(y, classes)
    proba = _probability_matrix(schema, predictions, n, k)

    values: dict[str, float | None] = {}
    notes: list[str] = []
    proba, normalised = _normalise_rows(proba)
    if normalised:
        notes.append(
            f"{normalised} probability row(s) did not sum to 1 and were rescaled"
        )

    if schema.task == Task.BINARY:
        positive = _class_position(classes, schema.positive_class)
        predicted = np.where(proba[:, positive] >= 0.5, positive, 1 - positive)
        values.update(_binary_counts(y_index == positive, predicted == positive, notes))
        values["roc_auc"] = _binary_auc(y_index == positive, proba[:, positive], notes)
        per_class: dict[str, float | None] = {}
    else:
        predicted = np.argmax(proba, axis=1)
        macro, weighted, per_class = _one_vs_rest_auc(y_index, proba, classes, notes)
        values["roc_auc"] = macro
        values["roc_auc_ovr_weighted"] = weighted

    values["accuracy"] = float(np.mean(predicted == y_index))
    values.update(_averaged_scores(y_index, predicted))
    values["log_loss"] = _log_loss(y_index, proba)
    return values, notes, per_class


def _encode_labels(y: np.ndarray[Any, Any], classes: list[Any]) -> np.ndarray[Any, Any]:
    position = {c: i for i, c in enumerate(classes)}
    by_text = {str(c): i for i, c in enumerate(classes)}
    encoded = np.empty(y.shape[0], dtype=np.int64)
    unknown: list[Any] = []
    for row, label in enumerate(y.tolist()):
        index = position.get(label)
        if index is None:
            index = by_text.get(str(label))
        if index is None:
            unknown.append(label)
            index = -1
        encoded[row] = index
    if unknown:
        shown = sorted({repr(u) for u in unknown})[:10]
        raise InputError(
            f"{len(unknown)} true label(s) are not among the classes "
            f"{[*classes]}: {', '.join(shown)}; score only rows whose label the model "
            f"was trained on"
        )
    return encoded


def _probability_matrix(
    schema: Schema, predictions: Any, n: int, k: int
) -> np.ndarray[Any, Any]:
    proba = np.asarray(predictions, dtype=np.float64)
    if proba.ndim == 1 and schema.task == Task.BINARY:
        positive = _class_position(list(schema.classes), schema.positive_class)
        stacked = np.empty((proba.shape[0], 2), dtype=np.float64)
        stacked[:, positive] = proba
        stacked[:, 1 - positive] = 1.0 - proba
        proba = stacked
    if proba.ndim != 2 or proba.shape != (n, k):
        raise InputError(
            f"predictions have shape {tuple(np.shape(predictions))}; expected "
            f"({n}, {k}): one probability column per class in the order "
            f"{list(schema.classes)}"
        )
    if not np.all(np.isfinite(proba)) or np.any(proba < 0) or np.any(proba > 1):
        raise InputError(
            "predicted probabilities must be finite and between 0 and 1; "
            f"got values from {np.nanmin(proba)} to {np.nanmax(proba)}"
        )
    return proba


def _normalise_rows(proba: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], int]:
    sums = proba.sum(axis=1)
    off = ~np.isclose(sums, 1.0, atol=1e-6)
    if not off.any():
        return proba, 0
    safe = np.where(sums > 0, sums, 1.0)
    return proba / safe[:, None], int(off.sum())


def _class_position(classes: list[Any], positive: Any) -> int:
    if positive in classes:
        return classes.index(positive)
    texts = [str(c) for c in classes]
    if str(positive) in texts:
        return texts.index(str(positive))
    raise InputError(
        f"positive class {positive!r} is not among the classes {classes}; "
        f"the schema is inconsistent"
    )


def _binary_counts(
    actual: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any], notes: list[str]
) -> dict[str, float | None]:
    tp = int(np.sum(actual & predicted))
    fp = int(np.sum(~actual & predicted))
    fn = int(np.sum(actual & ~predicted))

    precision = tp / (tp + fp) if tp + fp else None
    if precision is None:
        notes.append("precision is undefined: no row was predicted positive")
    recall = tp / (tp + fn) if tp + fn else None
    if recall is None:
        notes.append("recall is undefined: no row of the positive class is present")
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    if f1 is None:
        notes.append("f1 is undefined: no positive row was present or predicted")
    return {"precision": precision, "recall": recall, "f1": f1}


def _averaged_scores(
    y_index: np.ndarray[Any, Any], predicted: np.ndarray[Any, Any]
) -> dict[str, float | None]:
    from sklearn.metrics import precision_recall_fscore_support

    # Averages run over the classes present in the true or predicted labels; a class
    # with no predicted row scores 0 precision (scikit-learn's zero_division=0).
    values: dict[str, float | None] = {}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_index, predicted, average=average, zero_division=0.0
        )
        values[f"precision_{average}"] = float(precision)
        values[f"recall_{average}"] = float(recall)
        values[f"f1_{average}"] = float(f1)
    return values


def _binary_auc(
    actual: np.ndarray[Any, Any], score: np.ndarray[Any, Any], notes: list[str]
) -> float | None:
    if actual.all() or not actual.any():
        label = "positive" if actual.all() else "negative"
        notes.append(
            f"roc_auc is undefined: the {actual.shape[0]} evaluation rows hold a "
            f"single class (all {label}); AUC needs rows of both classes"
        )
        return None

    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(actual, score))


def _one_vs_rest_auc(
    y_index: np.ndarray[Any, Any],
    proba: np.ndarray[Any, Any],
    classes: list[Any],
    notes: list[str],
) -> tuple[float | None, float | None, dict[str, float | None]]:
    from sklearn.metrics import roc_auc_score

    n = y_index.shape[0]
    per_class: dict[str, float | None] = {}
    present: list[tuple[float, float]] = []  # (auc, prevalence)
    for position, label in enumerate(classes):
        actual = y_index == position
        count = int(actual.sum())
        if count == 0 or count == n:
            per_class[str(label)] = None
            continue
        auc = float(roc_auc_score(actual, proba[:, position]))
        per_class[str(label)] = auc
        present.append((auc, count / n))

    absent = [label for label in classes if per_class[str(label)] is None]
    if not present:  # a single class fills every row
        notes.append(
            f"roc_auc is undefined: the {n} evaluation rows hold a single class "
            f"({classes[int(y_index[0])]!r}); AUC needs rows of at least two classes"
        )
        return None, None, per_class
    if absent:
        notes.append(
            f"roc_auc: class(es) {', '.join(repr(a) for a in absent)} absent from the "
            f"{n} evaluation rows; one-vs-rest AUC is averaged over the "
            f"{len(present)} present classes only"
        )

    macro = sum(auc for auc, _ in present) / len(present)
    weighted = sum(auc * w for auc, w in present) / sum(w for _, w in present)
    return macro, weighted, per_class


def _log_loss(y_index: np.ndarray[Any, Any], proba: np.ndarray[Any, Any]) -> float:
    picked = proba[np.arange(y_index.shape[0]), y_index]
    clipped = np.clip(picked, _PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
    return float(-np.mean(np.log(clipped)))


# --- regression -----------------------------------------------------------------------


def _regression_metrics(
    y: np.ndarray[Any, Any], predictions: Any, n: int
) -> tuple[dict[str, float | None], list[str]]:
    try:
        actual = y.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"regression targets must be numbers; got values such as {y[:3].tolist()}"
        ) from None
    predicted = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if predicted.shape[0] != n:
        raise InputError(
            f"got {predicted.shape[0]} predictions for {n} rows; pass one value per row"
        )

    notes: list[str] = []
    bad = int(np.sum(~np.isfinite(predicted)))
    if bad:
        notes.append(
            f"{bad} prediction(s) are not finite numbers; rmse, mae and r2 are "
            f"undefined"
        )
        return {"rmse": None, "mae": None, "r2": None}, notes

    error = predicted - actual
    values: dict[str, float | None] = {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
    }
    spread = float(np.sum((actual - actual.mean()) ** 2))
    if n < 2 or spread == 0.0:
        notes.append(
            "r2 is undefined: the true values do not vary over the evaluation rows"
        )
        values["r2"] = None
    else:
        values["r2"] = 1.0 - float(np.sum(error**2)) / spread
    return values, notes


# --- shared ---------------------------------------------------------------------------


def _select_metrics(task: Task, names: Iterable[str] | None) -> list[Metric]:
    if task == Task.AUTO:
        raise ConfigurationError(
            "cannot score a schema whose task is 'auto'; intake resolves the task first"
        )
    if names is None:
        return metrics_for_task(task)

    chosen = [get_metric(name) for name in names]
    wrong = [m.name for m in chosen if task not in m.tasks]
    if wrong:
        allowed = ", ".join(m.name for m in metrics_for_task(task))
        raise ConfigurationError(
            f"metric(s) {', '.join(wrong)} are not defined for a {task.value} task; "
            f"choose from {allowed}"
        )
    return chosen


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
