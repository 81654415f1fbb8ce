"""Extremely randomised trees of the local backend: fill values, array export, a numpy
walk equal to scikit-learn's prediction, growth in steps."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from broker.local.classical import ColumnCodes, load_classical
from broker.local.forest import (
    MAX_LEAVES_PER_TREE,
    ExtraTreesModel,
    ForestArrays,
    fill_missing,
    fill_values,
    fit_forest_estimator,
    forest_model,
)
from tests.test_local_classical import _real_table


def _fitted(task: str, **params: Any) -> tuple[pd.DataFrame, Any, ExtraTreesModel]:
    """A forest fitted on all but the last 40 rows of a real table."""
    frame, y, numeric, categorical = _real_table(task)
    codes = ColumnCodes.fit(frame.iloc[:-40], numeric, categorical)
    x_fit = codes.transform(frame.iloc[:-40])
    fill = fill_values(x_fit, codes)
    target = y[:-40].astype(float) if task == "regression" else y[:-40]
    estimator = fit_forest_estimator(
        fill_missing(x_fit, fill),
        target,
        task=task,
        params={"n_estimators": 40, **params},
        seed=0,
        threads=1,
    )
    classes = [] if task == "regression" else sorted(set(y.tolist()))
    model = forest_model(
        estimator, task=task, classes=classes, codes=codes, fill=fill, metadata={}
    )
    return frame, estimator, model


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_forest_numpy_walk_equals_sklearn(task: str, tmp_path: Path) -> None:
    frame, estimator, model = _fitted(task, min_samples_leaf=2)
    test = frame.iloc[-40:].copy()
    test.iloc[0, test.columns.get_loc("band")] = "q9"  # a category never seen
    test.iloc[1, test.columns.get_loc("x0")] = np.nan

    x_test = fill_missing(model.codes.transform(test), model.fill)
    loaded = load_classical(model.save(tmp_path / "forest"))
    if task == "regression":
        expected = estimator.predict(x_test)
        got, got_loaded = model.predict(test), loaded.predict(test)
    else:
        expected = estimator.predict_proba(x_test)
        got, got_loaded = model.predict_proba(test), loaded.predict_proba(test)

    # the unseen category and the missing number were filled, not left NaN
    assert x_test[0, -1] == -1.0 and x_test[1, 0] == model.fill[0]
    # the walk over the saved arrays gives scikit-learn's own numbers
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got_loaded, got)


def test_forest_fill_values_are_training_medians_and_minus_one_for_codes() -> None:
    train = pd.DataFrame(
        {"n": [1.0, None, 3.0, 10.0], "e": [None] * 4, "c": ["b", "a", None, "b"]}
    )
    codes = ColumnCodes.fit(train, ["n", "e"], ["c"])
    x = codes.transform(train)

    fill = fill_values(x, codes)

    # n: median of 1, 3, 10; e: never seen, 0; the category code: -1, below all codes
    np.testing.assert_array_equal(fill, [3.0, 0.0, -1.0])
    np.testing.assert_array_equal(
        fill_missing(x, fill), [[1, 0, 1], [3, 0, 0], [3, 0, -1], [10, 0, 1]]
    )


def test_forest_walk_of_hand_built_trees() -> None:
    # tree 0: x0 <= 0.5 goes to a leaf of class 0, else to one of class 1;
    # tree 1: a single leaf, half and half
    forest = ForestArrays(
        feature=np.array([0, 0, 0, 0]),
        threshold=np.array([0.5, 0.0, 0.0, 0.0]),
        left=np.array([1, 1, 2, 3]),
        right=np.array([2, 1, 2, 3]),
        value=np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]),
        roots=np.array([0, 3]),
        depth=1,
    )

    out = forest.mean_output(np.array([[0.5], [0.7]]))

    np.testing.assert_array_equal(out, [[0.75, 0.25], [0.25, 0.75]])


def test_forest_grows_in_steps_and_stops_when_told() -> None:
    frame, y, numeric, _ = _real_table("binary")
    x = ColumnCodes.fit(frame, numeric, []).transform(frame)
    x = fill_missing(x, np.zeros(x.shape[1]))
    calls: list[int] = []

    def keep_growing() -> bool:
        calls.append(1)
        return len(calls) < 2

    estimator = fit_forest_estimator(
        x,
        y,
        task="binary",
        params={"n_estimators": 300},
        seed=0,
        threads=1,
        keep_growing=keep_growing,
    )

    # 100 trees, then 100 more after the first answer, then the second answer stops
    assert len(estimator.estimators_) == 200
    assert len(calls) == 2


def test_forest_leaves_are_capped_on_larger_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9000, 3))
    y = (x[:, 0] + rng.normal(size=9000) > 0).astype(int)

    estimator = fit_forest_estimator(
        x, y, task="binary", params={"n_estimators": 3}, seed=0, threads=1
    )

    # ceil(9000 / 4096) = 3 rows at least per leaf keeps every tree under the cap
    assert estimator.min_samples_leaf == 3
    assert max(t.tree_.n_leaves for t in estimator.estimators_) <= MAX_LEAVES_PER_TREE


def test_forest_grows_single_row_leaves_up_to_the_cap() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 3))
    y = (x[:, 0] + rng.normal(size=4096) > 0).astype(int)

    estimator = fit_forest_estimator(
        x, y, task="binary", params={"n_estimators": 2}, seed=0, threads=1
    )

    # noisy labels: fully grown trees end in leaves of one row each
    assert estimator.min_samples_leaf == 1
    assert min(t.tree_.n_node_samples.min() for t in estimator.estimators_) == 1


def test_forest_saved_model_is_plain_arrays(tmp_path: Path) -> None:
    _, estimator, model = _fitted("multiclass")

    model.save(tmp_path / "forest")

    meta = json.loads((tmp_path / "forest" / "model.json").read_text())
    assert (meta["format"], meta["trees"]) == ("extra-trees", 40)
    assert meta["codes"]["categorical"] == {"band": ["q1", "q2", "q3", "q4"]}
    with zipfile.ZipFile(tmp_path / "forest" / "forest.npz") as archive:
        names = sorted(archive.namelist())
    assert names == [
        f"{n}.npy"
        for n in (
            "depth",
            "feature",
            "fill",
            "left",
            "right",
            "roots",
            "threshold",
            "value",
        )
    ]
    nodes = sum(t.tree_.node_count for t in estimator.estimators_)
    assert model.forest.value.shape == (nodes, 3)
    # leaf values are class probabilities
    np.testing.assert_allclose(model.forest.value.sum(axis=1), 1.0, atol=1e-12)
