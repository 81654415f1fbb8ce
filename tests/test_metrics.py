"""Tests for broker.metrics: the registry, scoring, and leaderboard order (C25, C27)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from broker.errors import ConfigurationError, InputError, MetricWarning
from broker.metrics import (
    compute_metrics,
    get_metric,
    metric_names,
    metrics_for_task,
    sort_leaderboard,
)
from broker.schema import Schema
from broker.spec import LeaderboardEntry, Task


def _schema(
    task: Task, classes: tuple[object, ...] = (), positive: object = None
) -> Schema:
    return Schema(
        columns=(),
        target="y",
        target_safe_name="y",
        task=task,
        classes=classes,
        positive_class=positive,
    )


def _entry(model_id: str, **metrics: float | None) -> LeaderboardEntry:
    return LeaderboardEntry(
        model_id=model_id, provider="local", algorithm="mlp", metrics=metrics
    )


def _ids(entries: list[LeaderboardEntry]) -> list[str]:
    return [e.model_id for e in entries]


# --- registry -------------------------------------------------------------------------


def test_metric_names_cover_every_task() -> None:
    assert metric_names() == [
        "accuracy",
        "precision",
        "recall",
        "f1",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "roc_auc",
        "roc_auc_ovr_weighted",
        "log_loss",
        "rmse",
        "mae",
        "r2",
    ]
    # Binary-only metrics are not offered for multiclass, and the reverse.
    multiclass = {m.name for m in metrics_for_task(Task.MULTICLASS)}
    assert "f1" not in multiclass and "roc_auc_ovr_weighted" in multiclass
    assert {m.name for m in metrics_for_task(Task.REGRESSION)} == {"rmse", "mae", "r2"}


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("accuracy", "maximize"),
        ("precision", "maximize"),
        ("recall", "maximize"),
        ("f1", "maximize"),
        ("f1_macro", "maximize"),
        ("roc_auc", "maximize"),
        ("r2", "maximize"),
        ("log_loss", "minimize"),
        ("rmse", "minimize"),
        ("mae", "minimize"),
    ],
)
def test_get_metric_direction(name: str, direction: str) -> None:
    assert get_metric(name).direction == direction


def test_get_metric_unknown_lists_choices_and_close_match() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown metric 'auc'.*'roc_auc'\?"):
        get_metric("auc")


def test_metric_is_improvement_uses_direction_and_refuses_ties() -> None:
    # An equal value is not an improvement in either direction.
    assert get_metric("roc_auc").is_improvement(0.74, 0.70)
    assert not get_metric("roc_auc").is_improvement(0.70, 0.70)
    assert get_metric("log_loss").is_improvement(0.40, 0.45)
    assert not get_metric("log_loss").is_improvement(0.46, 0.45)


# --- C25: leaderboard direction -------------------------------------------------------


C25_BOARD = [
    _entry("M1", f1=0.61, roc_auc=0.70, log_loss=0.55, rmse=0.44),
    _entry("M2", f1=0.83, roc_auc=0.88, log_loss=0.35, rmse=0.30),
    _entry("M3", f1=0.72, roc_auc=0.91, log_loss=0.30, rmse=0.33),
]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("f1", ["M2", "M3", "M1"]),
        ("roc_auc", ["M3", "M2", "M1"]),
        ("log_loss", ["M3", "M2", "M1"]),
        ("rmse", ["M2", "M3", "M1"]),
    ],
)
def test_sort_leaderboard_c25_direction_per_metric(
    metric: str, expected: list[str]
) -> None:
    ranked = sort_leaderboard(C25_BOARD, metric)
    assert _ids(ranked) == expected
    # The best model is row 1.
    assert ranked[0].model_id == expected[0]


@pytest.mark.parametrize("metric", ["accuracy", "precision", "recall"])
def test_sort_leaderboard_c25_highest_first(metric: str) -> None:
    board = [_entry("low", **{metric: 0.5}), _entry("high", **{metric: 0.9})]
    assert _ids(sort_leaderboard(board, metric)) == ["high", "low"]


def test_sort_leaderboard_c27_missing_values_go_last_in_original_order() -> None:
    board = [
        _entry("none_a", roc_auc=None),
        _entry("nan", roc_auc=float("nan")),
        _entry("mid", roc_auc=0.8),
        _entry("absent"),
        _entry("top", roc_auc=0.9),
        _entry("mid_tie", roc_auc=0.8),
    ]
    with pytest.warns(MetricWarning, match=r"3 model\(s\) have no roc_auc"):
        ranked = sort_leaderboard(board, "roc_auc")
    # Ties keep their order; None, NaN and absent values follow, in their order.
    assert _ids(ranked) == ["top", "mid", "mid_tie", "none_a", "nan", "absent"]


def test_sort_leaderboard_unknown_metric() -> None:
    with pytest.raises(ConfigurationError, match="unknown metric 'accuracy_score'"):
        sort_leaderboard(C25_BOARD, "accuracy_score")


# --- C27: AUC with an absent class ----------------------------------------------------


C27_PROBA = [
    [0.1, 0.7, 0.2],
    [0.2, 0.2, 0.6],
    [0.3, 0.4, 0.3],
    [0.1, 0.5, 0.4],
    [0.2, 0.3, 0.5],
]


def test_compute_metrics_c27a_multiclass_auc_over_present_classes() -> None:
    schema = _schema(Task.MULTICLASS, classes=(0, 1, 2))
    with pytest.warns(MetricWarning, match=r"class\(es\) 0 absent from the 5"):
        report = compute_metrics(schema, [1, 2, 1, 2, 2], np.array(C27_PROBA))

    # One-vs-rest: class 1 5/6, class 2 1.0, class 0 undefined.
    assert report.per_class_auc == {
        "0": None,
        "1": pytest.approx(0.833333, abs=1e-6),
        "2": 1.0,
    }
    assert report.values["roc_auc"] == pytest.approx(0.916667, abs=1e-6)
    assert report.values["roc_auc_ovr_weighted"] == pytest.approx(0.933333, abs=1e-6)
    assert report.n == 5
    assert any("averaged over the 2 present classes" in note for note in report.notes)


def test_compute_metrics_c27a_hard_label_scores() -> None:
    schema = _schema(Task.MULTICLASS, classes=(0, 1, 2))
    with pytest.warns(MetricWarning):
        report = compute_metrics(schema, [1, 2, 1, 2, 2], C27_PROBA)

    # Argmax predicts 1, 2, 1, 1, 2: one class-2 row is wrong.
    assert report.values["accuracy"] == pytest.approx(0.8)
    # Class 1: precision 2/3, recall 1; class 2: precision 1, recall 2/3.
    assert report.values["precision_macro"] == pytest.approx(5 / 6)
    assert report.values["recall_macro"] == pytest.approx(5 / 6)
    assert report.values["f1_macro"] == pytest.approx(0.8)
    assert report.values["precision_weighted"] == pytest.approx((2 * 2 / 3 + 3) / 5)
    expected_loss = -sum(math.log(p) for p in (0.7, 0.6, 0.4, 0.4, 0.5)) / 5
    assert report.values["log_loss"] == pytest.approx(expected_loss)


def test_compute_metrics_c27a_refuses_multiclass_array_for_binary_schema() -> None:
    # A binary AUC is never taken from one column of a multiclass array.
    schema = _schema(Task.BINARY, classes=(1, 2), positive=2)
    with pytest.raises(InputError, match=r"shape \(5, 3\); expected \(5, 2\)"):
        compute_metrics(schema, [1, 2, 1, 2, 2], C27_PROBA)


def test_compute_metrics_c27b_single_class_fold() -> None:
    schema = _schema(Task.BINARY, classes=(0, 1), positive=1)
    with pytest.warns(MetricWarning) as caught:
        report = compute_metrics(schema, [0, 0, 0], [0.2, 0.6, 0.4])

    assert report.values["roc_auc"] is None
    assert report.notes == [str(w.message) for w in caught]
    assert any(
        "roc_auc is undefined" in n and "single class" in n for n in report.notes
    )
    assert any(n.startswith("recall is undefined") for n in report.notes)
    # Threshold 0.5 predicts 0, 1, 0.
    assert report.values["accuracy"] == pytest.approx(0.666667, abs=1e-6)
    assert report.values["precision"] == 0.0
    assert report.values["recall"] is None
    expected_loss = -(math.log(0.8) + math.log(0.4) + math.log(0.6)) / 3
    assert report.values["log_loss"] == pytest.approx(expected_loss)


def test_compute_metrics_multiclass_single_class_auc_is_none() -> None:
    schema = _schema(Task.MULTICLASS, classes=("a", "b", "c"))
    with pytest.warns(MetricWarning, match=r"single class \('b'\)"):
        report = compute_metrics(schema, ["b", "b"], [[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert report.values["roc_auc"] is None
    assert report.values["roc_auc_ovr_weighted"] is None
    assert report.values["accuracy"] == 0.5


# --- binary and regression ------------------------------------------------------------


def test_compute_metrics_binary_known_answer() -> None:
    schema = _schema(Task.BINARY, classes=(0, 1), positive=1)
    report = compute_metrics(schema, [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])

    assert report.values["roc_auc"] == pytest.approx(0.75)
    assert report.values["accuracy"] == pytest.approx(0.75)
    assert report.values["precision"] == pytest.approx(1.0)
    assert report.values["recall"] == pytest.approx(0.5)
    assert report.values["f1"] == pytest.approx(2 / 3)
    assert "roc_auc_ovr_weighted" not in report.values
    assert report.notes == []


def test_compute_metrics_binary_positive_class_in_first_column() -> None:
    schema = _schema(Task.BINARY, classes=("bad", "good"), positive="bad")
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    report = compute_metrics(schema, ["bad", "good", "good", "bad"], proba)

    # 'bad' is scored from column 0: rows 0 and 2 predicted bad, rows 0 and 3 are bad.
    assert report.values["precision"] == pytest.approx(0.5)
    assert report.values["recall"] == pytest.approx(0.5)
    assert report.values["roc_auc"] == pytest.approx(0.75)


def test_compute_metrics_unknown_label_is_input_error() -> None:
    schema = _schema(Task.BINARY, classes=("no", "yes"), positive="yes")
    with pytest.raises(
        InputError, match=r"not among the classes \['no', 'yes'\]: 'maybe'"
    ):
        compute_metrics(schema, ["yes", "maybe"], [0.9, 0.5])


def test_compute_metrics_regression_known_answer() -> None:
    schema = _schema(Task.REGRESSION)
    report = compute_metrics(schema, [3, -0.5, 2, 7], np.array([2.5, 0.0, 2, 8]))

    assert report.values["mae"] == pytest.approx(0.5)
    assert report.values["rmse"] == pytest.approx(math.sqrt(0.375))
    assert report.values["r2"] == pytest.approx(0.948608, abs=1e-6)
    assert report.n == 4


def test_compute_metrics_regression_constant_truth_r2_none() -> None:
    schema = _schema(Task.REGRESSION)
    with pytest.warns(MetricWarning, match="r2 is undefined"):
        report = compute_metrics(schema, [1.0, 1.0], [1.5, 0.5])
    assert report.values == {"rmse": 0.5, "mae": 0.5, "r2": None}


def test_compute_metrics_metric_for_wrong_task() -> None:
    schema = _schema(Task.BINARY, classes=(0, 1), positive=1)
    with pytest.raises(ConfigurationError, match="rmse are not defined for a binary"):
        compute_metrics(schema, [0, 1], [0.2, 0.7], names=["rmse"])


def test_compute_metrics_empty_rows() -> None:
    with pytest.raises(InputError, match="no rows to score"):
        compute_metrics(_schema(Task.REGRESSION), [], [])
