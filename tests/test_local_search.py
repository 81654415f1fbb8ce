"""The local search: trial limits, deadlines, cancellation and budget errors (C12, C14)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
from _local_settings import SMALL
from sklearn.metrics import mean_squared_error

from broker.errors import ConfigurationError, NoModelTrainedError
from broker.local.search import SearchOptions, run_search
from broker.local.space import Categorical, SearchSpace
from broker.local.trainer import train_trial


def _two_by_two() -> SearchSpace:
    return SearchSpace(
        params={
            "width": Categorical([4, 8]),
            "activation": Categorical(["relu", "gelu"]),
        },
        fixed=SMALL,
    )


def _binary_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    label = np.where(a + 0.5 * b > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "label": label})


def _search(frame: pd.DataFrame, **kwargs: object):  # type: ignore[no-untyped-def]
    defaults: dict[str, object] = {
        "target": "label",
        "task": "binary",
        "numeric": ["a", "b"],
        "categorical": [],
        "metric": "roc_auc",
        "budget_s": 60,
        "classes": ["no", "yes"],
        "positive_class": "yes",
        "space": _two_by_two(),
    }
    defaults.update(kwargs)
    return run_search(frame, **defaults)  # type: ignore[arg-type]


def _search_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread()]


def test_search_max_trials_three_runs_exactly_three_and_returns() -> None:
    before = set(_search_threads())
    started = time.monotonic()

    result = _search(
        _binary_frame(), options=SearchOptions(max_trials=3, max_epochs=1, seed=0)
    )

    assert len(result.trials) == 3
    assert [t.trial_number for t in result.trials] == [1, 2, 3]
    assert all(t.epochs_run == 1 for t in result.trials)
    assert result.stop_reason == "max_trials"
    assert time.monotonic() - started < 5
    # no worker thread of the search outlives the call
    assert set(_search_threads()) <= before


def test_search_duration_limit_returns_within_two_seconds_of_it() -> None:
    started = time.monotonic()

    # five configurations that never stop early outlast the two-second limit
    space = SearchSpace(
        params={"learning_rate": Categorical([1e-3, 2e-3, 3e-3, 4e-3, 5e-3])},
        fixed=SMALL,
    )
    result = _search(
        _binary_frame(400),
        budget_s=2.0,
        space=space,
        options=SearchOptions(max_epochs=10_000, patience=10_000, seed=0),
    )

    elapsed = time.monotonic() - started
    assert result.stop_reason == "deadline"
    assert result.trials[-1].stop_reason == "deadline"
    assert 2.0 <= elapsed < 2.0 + 2.0
    # the trial cut by the deadline still has a score and its best weights
    assert not np.isnan(result.best.score)
    assert result.best.state_dict


def test_search_exhausted_space_ends_before_the_deadline() -> None:
    result = _search(_binary_frame(), options=SearchOptions(max_epochs=1, seed=0))

    assert result.stop_reason == "space_exhausted"
    assert len(result.trials) == 4


def test_search_budget_spent_in_preprocessing_raises_no_model_trained() -> None:
    with pytest.raises(NoModelTrainedError, match=r"whole budget of 1 s") as info:
        _search(
            _binary_frame(50),
            budget_s=1.0,
            after_preprocess=lambda: time.sleep(2.0),
            options=SearchOptions(seed=0),
        )

    error = info.value
    assert error.elapsed_s is not None
    assert error.suggested_min_budget_s is not None
    assert error.reason == "budget_exhausted"
    assert error.budget_s == 1.0
    assert 2.0 <= error.elapsed_s < 3.0
    assert error.suggested_min_budget_s is not None
    assert error.suggested_min_budget_s > error.elapsed_s


def test_search_stop_event_cancels_at_the_next_epoch() -> None:
    stop = threading.Event()
    seen: list[int] = []

    def on_trial(outcome, best):  # type: ignore[no-untyped-def]
        seen.append(outcome.trial_number)
        stop.set()

    result = _search(
        _binary_frame(),
        stop_event=stop,
        on_trial=on_trial,
        options=SearchOptions(seed=0),
    )

    assert seen == [1]
    assert result.stop_reason == "cancelled"
    assert result.best is not None


def test_search_same_seed_gives_same_scores() -> None:
    options = SearchOptions(max_trials=2, max_epochs=3, seed=5)

    first = _search(_binary_frame(), options=options)
    second = _search(_binary_frame(), options=options)

    assert [t.score for t in first.trials] == [t.score for t in second.trials]
    assert [t.config for t in first.trials] == [t.config for t in second.trials]


def test_search_learns_a_separable_binary_label() -> None:
    frame = _binary_frame(400)

    result = _search(
        frame,
        space=SearchSpace(params={}, fixed={**SMALL, "width": 16}),
        options=SearchOptions(max_trials=1, max_epochs=30, patience=10, seed=0),
    )

    # the label is a linear rule of a and b: validation AUC near 1
    assert result.best.score > 0.97
    assert result.n_train_rows == 320
    assert result.n_validation_rows == 80


def test_search_regression_scores_rmse_on_the_target_scale() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=300)
    frame = pd.DataFrame({"a": x, "b": rng.normal(size=300), "label": 100 + 10 * x})

    result = _search(
        frame,
        task="regression",
        metric="rmse",
        classes=None,
        positive_class=None,
        space=SearchSpace(params={}, fixed={**SMALL, "width": 16}),
        options=SearchOptions(max_trials=1, max_epochs=80, patience=10, seed=0),
    )
    model = result.best_model()
    predictions = model.predict(frame)

    assert result.metric.direction == "minimize"
    # the target's spread is 10; a fitted model is far below that
    assert result.best.score < 3.0
    assert mean_squared_error(frame["label"], predictions) ** 0.5 < 3.0


def test_search_multiclass_probabilities_follow_class_order() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=300)
    label = np.select([a < -0.5, a > 0.5], ["low", "high"], "mid")
    frame = pd.DataFrame({"a": a, "b": rng.normal(size=300), "label": label})

    result = _search(
        frame,
        task="multiclass",
        metric="log_loss",
        classes=["low", "mid", "high"],
        positive_class=None,
        space=SearchSpace(params={}, fixed={**SMALL, "width": 16}),
        options=SearchOptions(max_trials=1, max_epochs=30, patience=10, seed=0),
    )
    proba = result.best_model().predict_proba(
        pd.DataFrame({"a": [-2.0, 0.0, 2.0], "b": 0.0})
    )

    assert proba.shape == (3, 3)
    assert proba.argmax(axis=1).tolist() == [0, 1, 2]


def test_search_metric_that_does_not_fit_the_task_is_refused() -> None:
    with pytest.raises(
        ConfigurationError, match=r"metric 'rmse' does not fit a binary"
    ):
        _search(_binary_frame(), metric="rmse")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_trials": 0}, r"max_trials must be at least 1"),
        ({"strategy": "annealing"}, r"strategy 'annealing' is not available"),
        ({"pruner": "bohb"}, r"pruner 'bohb' is not available"),
        ({"workers": 0}, r"workers must be a whole number of at least 1, got 0"),
        ({"input_shape": [8, 8]}, r"input_shape must be \[channels, height, width\]"),
        ({"patience": 0}, r"patience must be at least 1"),
        ({"trials": 3}, r"unknown local option\(s\) \['trials'\]"),
    ],
)
def test_search_options_out_of_range_are_configuration_errors(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SearchOptions.from_mapping(options)


@pytest.mark.slow
def test_search_ten_second_limit_returns_within_twelve() -> None:
    started = time.monotonic()

    result = _search(
        _binary_frame(400),
        budget_s=10.0,
        space=SearchSpace(params={}, fixed=SMALL),
        options=SearchOptions(max_epochs=100_000, patience=100_000, seed=0),
    )

    assert result.stop_reason == "deadline"
    assert time.monotonic() - started < 12.0


def test_trainer_epoch_past_the_hard_deadline_is_abandoned(
    trial_data,  # type: ignore[no-untyped-def]
) -> None:
    frame = _binary_frame(400)
    data, metric = trial_data(frame)
    past = time.monotonic() - 1.0

    abandoned = train_trial(
        2,
        {**SMALL, "batch_size": 2},
        data,
        metric,
        patience=5,
        max_epochs=50,
        should_stop=lambda: "deadline",
        device=torch.device("cpu"),
        seed=0,
        hard_deadline=past,
        keep_first_epoch=False,
    )
    kept = train_trial(
        1,
        {**SMALL, "batch_size": 2},
        data,
        metric,
        patience=5,
        max_epochs=50,
        should_stop=lambda: "deadline",
        device=torch.device("cpu"),
        seed=0,
        hard_deadline=past,
        keep_first_epoch=True,
    )

    # a later trial gives up mid-epoch; the first trial finishes one epoch for a model
    assert (abandoned.epochs_run, abandoned.stop_reason) == (0, "deadline")
    assert (kept.epochs_run, kept.stop_reason) == (1, "deadline")
    assert kept.state_dict
