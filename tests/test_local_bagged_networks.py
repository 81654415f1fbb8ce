"""Refitting the searched networks on the classical models' folds: the fixed-epoch
training, the learning-rate schedule taken from the search, honest out-of-fold
outputs, the deadline, and the budget the search leaves for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from broker.local import search as search_module
from broker.local.bagged_networks import decay_epochs, fit_networks_cv
from broker.local.bagging import fold_rows
from broker.local.search import (
    NETWORK_BAGGING_SHARE,
    SearchOptions,
    SearchResult,
    run_automl,
    run_search,
)
from broker.local.space import Categorical, SearchSpace
from broker.local.trainer import select_device, train_epochs

SMALL = {
    "depth": 1,
    "activation": "relu",
    "dropout": 0.0,
    "norm": "none",
    "skip": False,
    "embedding_scale": 1.0,
    "optimizer": "adam",
    "learning_rate": 1e-2,
    "weight_decay": 0.0,
    "batch_size": 64,
}


@pytest.fixture(autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "blue"], size=n)
    signal = a + np.where(color == "red", 1.0, 0.0) + 0.5 * b
    return pd.DataFrame(
        {
            "f_a": a,
            "f_b": b,
            "f_color": color,
            "label": np.where(signal + rng.normal(scale=0.5, size=n) > 0.5, 1, 0),
        }
    )


@pytest.fixture(scope="module")
def searched() -> SearchResult:
    return run_search(
        _table(),
        target="label",
        task="binary",
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        metric="roc_auc",
        budget_s=60,
        classes=[0, 1],
        options=SearchOptions.from_mapping(
            {"max_trials": 1, "max_epochs": 4, "warm_start": False, "seed": 3}
        ),
        space=SearchSpace(params={"width": Categorical([8])}, fixed=SMALL),
    )


def _splits(frame: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    splits = fold_rows(frame["label"].to_numpy(), "binary", folds=5, seed=0)
    assert splits is not None
    return splits


def test_decay_epochs_are_those_that_left_the_best_score_unchanged() -> None:
    curve = [0.5, 0.6, 0.6, 0.7, 0.7, 0.7]

    assert decay_epochs(curve, 6) == {2, 4, 5}
    assert decay_epochs(curve, 3) == {2}
    assert decay_epochs(curve, 1) == frozenset()
    assert decay_epochs([], 4) == frozenset()  # no curve: the rate never decays


def _train(searched: SearchResult, **settings: Any) -> dict[str, torch.Tensor] | None:
    frame = _table()
    x_num, x_cat = searched.preprocessor.transform(frame)
    y = searched.target.encode(frame["label"])
    assert searched.best is not None
    config = {**searched.best.config, "lr_decay": 0.5}
    arguments: dict[str, Any] = {
        "task": "binary",
        "epochs": 3,
        "device": select_device(1),
        "seed": 7,
        **settings,
    }
    return train_epochs(searched.best.network, config, x_num, x_cat, y, **arguments)


def test_train_epochs_repeats_with_a_seed_and_follows_the_decay_schedule(
    searched: SearchResult,
) -> None:
    first = _train(searched)
    again = _train(searched)
    decayed = _train(searched, decay_after=frozenset({0}))
    other_seed = _train(searched, seed=8)

    assert first is not None and again is not None
    assert decayed is not None and other_seed is not None
    for name, tensor in first.items():
        assert torch.equal(tensor, again[name])
    assert any(not torch.equal(t, decayed[n]) for n, t in first.items())
    assert any(not torch.equal(t, other_seed[n]) for n, t in first.items())


def test_train_epochs_abandoned_past_its_time_returns_nothing(
    searched: SearchResult,
) -> None:
    assert _train(searched, abandon_after=time.monotonic() - 1) is None


def test_each_fold_network_predicts_only_the_rows_it_never_trained_on(
    searched: SearchResult,
) -> None:
    frame = _table()
    splits = _splits(frame)
    assert searched.best is not None
    trial = searched.best

    bagging = fit_networks_cv(
        frame,
        target="label",
        trials=[trial],
        preprocessor=searched.preprocessor,
        target_encoder=searched.target,
        splits=splits,
        search_fit_rows=searched.n_train_rows,
        deadline=time.monotonic() + 60,
        seed=3,
        threads=1,
    )

    assert bagging.skipped == []
    (network,) = bagging.networks
    assert network.name == f"trial-{trial.trial_number}"
    assert network.epochs == trial.best_epoch + 1
    assert network.output.shape == (200, 2)
    np.testing.assert_allclose(network.output.sum(axis=1), 1.0, atol=1e-12)
    x_num, x_cat = searched.preprocessor.transform(frame)
    y = searched.target.encode(frame["label"])
    for index, ((fit_at, held_at), fold) in enumerate(
        zip(splits, network.model.folds, strict=True)
    ):
        held = frame.iloc[held_at]
        np.testing.assert_allclose(
            network.output[held_at], fold.predict_proba(held), atol=1e-12
        )
        # the fold's weights are exactly those trained on its fit rows alone
        expected = train_epochs(
            trial.network,
            trial.config,
            x_num[fit_at],
            x_cat[fit_at],
            y[fit_at],
            task="binary",
            epochs=network.epochs,
            device=select_device(1),
            seed=3 * 1000 + trial.trial_number * 31 + index,
            decay_after=decay_epochs(trial.curve, network.epochs),
        )
        assert expected is not None
        for name, tensor in fold.state_dict().items():
            assert torch.equal(tensor, expected[name])


def test_a_network_whose_estimate_passes_the_deadline_is_skipped_whole(
    searched: SearchResult,
) -> None:
    frame = _table()
    assert searched.best is not None
    # 5 s an epoch on the search's rows: 5 folds of at least one epoch is 25 s or more
    slow = replace(searched.best, training_time_s=5.0 * searched.best.epochs_run)
    now = 1000.0
    settings: dict[str, Any] = {
        "target": "label",
        "preprocessor": searched.preprocessor,
        "target_encoder": searched.target,
        "splits": _splits(frame),
        "search_fit_rows": searched.n_train_rows,
        "seed": 0,
        "clock": lambda: now,
        "threads": 1,
    }

    late = fit_networks_cv(frame, trials=[slow], deadline=now + 20, **settings)
    stopped = fit_networks_cv(
        frame,
        trials=[searched.best],
        deadline=now + 1e9,
        should_stop=lambda: True,
        **settings,
    )

    assert late.networks == [] and late.skipped == [f"trial-{slow.trial_number}"]
    assert stopped.networks == [] and len(stopped.skipped) == 1


def _budgets_seen(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    seen: list[float] = []
    original = search_module.run_search

    def recording(*args: Any, **kwargs: Any) -> SearchResult:
        seen.append(kwargs["budget_s"] - kwargs["reserve_s"])
        return original(*args, **kwargs)

    monkeypatch.setattr(search_module, "run_search", recording)
    return seen


@pytest.mark.parametrize(
    ("folds", "search_budget", "bagged"),
    [(5, 40 * (1 - NETWORK_BAGGING_SHARE), True), (0, 40, False)],
)
def test_the_search_leaves_its_share_of_the_budget_for_refitting_networks(
    monkeypatch: pytest.MonkeyPatch, folds: int, search_budget: float, bagged: bool
) -> None:
    seen = _budgets_seen(monkeypatch)

    result = run_automl(
        _table(),
        target="label",
        task="binary",
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        metric="roc_auc",
        budget_s=40,
        classes=[0, 1],
        options=SearchOptions.from_mapping(
            {"max_trials": 2, "max_epochs": 3, "warm_start": False, "folds": folds}
        ),
        space=SearchSpace(params={"width": Categorical([4, 8])}, fixed=SMALL),
    )

    assert seen == [pytest.approx(search_budget)]
    assert result.networks_bagged is bagged
    rows = 200 if bagged else 40  # out of fold over all rows, or the validation rows
    assert {len(n.validation_output) for n in result.networks} == {rows}


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_refitted_networks_score_out_of_fold_for_every_task(task: str) -> None:
    rng = np.random.default_rng(4)
    width: tuple[int, ...]
    frame = _table(250, seed=4).drop(columns="label")
    signal = frame["f_a"] + np.where(frame["f_color"] == "red", 1.0, 0.0)
    if task == "regression":
        frame["label"] = 10.0 + 3.0 * signal + rng.normal(scale=0.3, size=250)
        classes, metric, width = None, "rmse", ()
    else:
        frame["label"] = np.digitize(signal, [-0.5, 0.7])
        classes, metric, width = [0, 1, 2], "log_loss", (3,)

    result = run_automl(
        frame,
        target="label",
        task=task,
        numeric=["f_a", "f_b"],
        categorical=["f_color"],
        metric=metric,
        budget_s=40,
        classes=classes,
        options=SearchOptions.from_mapping(
            {"max_trials": 2, "max_epochs": 3, "warm_start": False}
        ),
        space=SearchSpace(params={"width": Categorical([4, 8])}, fixed=SMALL),
    )

    assert result.networks_bagged and result.classical is not None
    y_true = result.classical.target
    assert y_true is not None
    for network in result.networks:
        assert network.validation_output.shape == (250, *width)
        assert network.score == pytest.approx(
            result.metric(y_true, network.validation_output), abs=1e-12
        )
    if task == "regression":  # outputs on the target's own scale, near its values
        best = result.networks[0].validation_output
        assert abs(float(np.mean(best)) - float(np.mean(y_true))) < 2.0
    model = result.final_model()
    features = frame.drop(columns="label").head(5)
    output = model.predict(features)
    assert output.shape == (5,)
