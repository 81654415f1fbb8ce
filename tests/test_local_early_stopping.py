"""The early-stopping rule of local trials (case C15)."""

from __future__ import annotations

import pytest

from broker.errors import ConfigurationError
from broker.local.early_stopping import EarlyStopping


def _stop_index(rule: EarlyStopping, scores: list[float]) -> int | None:
    for index, score in enumerate(scores):
        if rule.update(score):
            return index
    return None


def test_early_stopping_loss_stops_after_two_epochs_without_improvement() -> None:
    rule = EarlyStopping(patience=2, direction="minimize", min_delta=0)

    stopped = _stop_index(rule, [0.50, 0.45, 0.46, 0.47, 0.48, 0.40])

    # four epochs run (0..3); the later 0.40 is never seen
    assert stopped == 3
    assert rule.stopped_index == 3
    assert rule.epochs_seen == 4
    assert (rule.best_index, rule.best_score) == (1, 0.45)


def test_early_stopping_auc_direction_comes_from_the_metric() -> None:
    rule = EarlyStopping(patience=2, direction="maximize", min_delta=0)

    stopped = _stop_index(rule, [0.70, 0.74, 0.73, 0.72, 0.80])

    # a "lower is better" default would have kept 0.70..0.72 as improvements
    assert stopped == 3
    assert (rule.best_index, rule.best_score) == (1, 0.74)


def test_early_stopping_equal_value_is_not_an_improvement() -> None:
    rule = EarlyStopping(patience=2, direction="minimize", min_delta=0)

    stopped = _stop_index(rule, [0.50, 0.45, 0.45, 0.45])

    assert stopped == 3
    assert rule.best_index == 1


def test_early_stopping_min_delta_requires_a_margin() -> None:
    rule = EarlyStopping(patience=1, direction="maximize", min_delta=0.01)

    stopped = _stop_index(rule, [0.70, 0.705, 0.80])

    # 0.705 beats 0.70 by less than 0.01
    assert stopped == 1
    assert rule.best_score == 0.70


def test_early_stopping_nan_counts_as_no_improvement() -> None:
    rule = EarlyStopping(patience=1, direction="maximize")

    assert rule.update(0.6) is False
    assert rule.update(float("nan")) is True
    assert rule.best_score == 0.6


@pytest.mark.parametrize("patience", [0, -1, 1.5, True])
def test_early_stopping_patience_below_one_is_a_configuration_error(
    patience: object,
) -> None:
    with pytest.raises(
        ConfigurationError, match=r"patience must be an integer of at least 1"
    ):
        EarlyStopping(patience=patience, direction="minimize")  # type: ignore[arg-type]


def test_early_stopping_unknown_direction_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"direction must be .*'lower'"):
        EarlyStopping(patience=2, direction="lower")  # type: ignore[arg-type]
