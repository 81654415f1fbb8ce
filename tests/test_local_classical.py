"""Gradient-boosted trees of the local backend: encoding, array export, time cap."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from threadpoolctl import threadpool_limits

from broker.errors import ConfigurationError
from broker.local.classical import (
    CONFIGS,
    ClassicalExportError,
    ColumnCodes,
    GradientBoostingModel,
    extract_trees,
    fit_classical,
    load_classical,
)


@pytest.fixture(autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    """scikit-learn's own fits and predictions here use one thread, as the backend's
    do on a two-core machine (spinning OpenMP threads stall a busy machine)."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _real_table(task: str) -> tuple[pd.DataFrame, np.ndarray, list[str], list[str]]:
    """A bundled real data set with missing values and a categorical column added."""
    loader = {
        "binary": load_breast_cancer,
        "multiclass": load_wine,
        "regression": load_diabetes,
    }[task]
    data = loader()
    frame = pd.DataFrame(data.data[:, :6], columns=[f"x{i}" for i in range(6)])
    rng = np.random.default_rng(0)
    frame.loc[rng.random(len(frame)) < 0.1, "x0"] = np.nan  # missing numbers
    # a category that carries signal: the quartile of x2, with some missing
    quartile = pd.qcut(frame["x2"], 4, labels=["q1", "q2", "q3", "q4"]).astype(object)
    quartile[rng.random(len(frame)) < 0.05] = None
    frame["band"] = quartile
    return frame, np.asarray(data.target), [f"x{i}" for i in range(6)], ["band"]


def _fit(task: str, x: np.ndarray, y: np.ndarray) -> Any:
    settings: dict[str, Any] = {"categorical_features": None, "max_iter": 60}
    if task == "regression":
        return HistGradientBoostingRegressor(**settings).fit(x, y)
    return HistGradientBoostingClassifier(**settings).fit(x, y)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_classical_numpy_predictor_equals_sklearn(task: str) -> None:
    frame, y, numeric, categorical = _real_table(task)
    codes = ColumnCodes.fit(frame.iloc[:-40], numeric, categorical)
    estimator = _fit(task, codes.transform(frame.iloc[:-40]), y[:-40])
    classes = [] if task == "regression" else list(estimator.classes_)
    model = GradientBoostingModel(
        task=task,
        classes=classes,
        class_columns=list(range(len(classes))),
        codes=codes,
        trees=extract_trees(estimator),
    )
    test = frame.iloc[-40:].copy()
    test.iloc[0, test.columns.get_loc("band")] = "q9"  # a category never seen

    x_test = codes.transform(test)
    if task == "regression":
        expected, got = estimator.predict(x_test), model.predict(test)
    else:
        expected, got = estimator.predict_proba(x_test), model.predict_proba(test)

    # the walk over the arrays gives scikit-learn's own numbers
    assert np.isnan(x_test[0, -1])
    assert np.isnan(x_test[:, 0]).any()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_classical_codes_follow_sorted_training_values_unseen_and_missing_are_nan() -> (
    None
):
    train = pd.DataFrame({"n": [1.5, None, 3.0], "c": ["b", "a", "b"]})
    codes = ColumnCodes.fit(train, ["n"], ["c"])

    matrix = codes.transform(pd.DataFrame({"n": ["2", 4], "c": ["a", "zz"]}))
    missing = codes.transform(pd.DataFrame({"n": [None], "c": [None]}))

    assert codes.categorical == {"c": ["a", "b"]}
    np.testing.assert_array_equal(matrix, [[2.0, 0.0], [4.0, np.nan]])
    assert np.isnan(missing).all()


def test_classical_saved_model_is_plain_arrays_and_predicts_the_same(
    tmp_path: Path,
) -> None:
    frame, y, numeric, categorical = _real_table("multiclass")
    run = fit_classical(
        frame,
        y,
        frame,
        task="multiclass",
        classes=["c0", "c1", "c2"],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
        configs={"hgb-default": {}},
    )
    model = run.fits[0].model

    loaded = load_classical(model.save(tmp_path / "hgb"))

    np.testing.assert_array_equal(
        loaded.predict_proba(frame), model.predict_proba(frame)
    )
    assert list(loaded.predict(frame[:3])) == list(model.predict(frame[:3]))
    meta = json.loads((tmp_path / "hgb" / "model.json").read_text())
    assert meta["format"] == "hist-gradient-boosting"
    assert meta["codes"]["categorical"] == {"band": ["q1", "q2", "q3", "q4"]}
    with zipfile.ZipFile(tmp_path / "hgb" / "trees.npz") as archive:
        names = sorted(archive.namelist())
    assert names == sorted(
        f"{n}.npy"
        for n in (
            "baseline",
            "feature",
            "is_leaf",
            "left",
            "missing_left",
            "outputs",
            "right",
            "roots",
            "threshold",
            "value",
        )
    )


def test_classical_class_missing_from_training_rows_gets_probability_zero() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=60)})
    y = (frame["x"] > 0).astype(int).to_numpy() * 2  # classes 0 and 2 of three

    run = fit_classical(
        frame,
        y,
        frame,
        task="multiclass",
        classes=["a", "b", "c"],
        numeric=["x"],
        categorical=[],
        seed=0,
        time_cap_s=60,
        configs={"hgb-default": {}},
    )
    proba = run.fits[0].validation_output

    assert proba.shape == (60, 3)
    np.testing.assert_array_equal(proba[:, 1], 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


class _TickingClock:
    """Monotonic seconds that move one second each time they are read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_classical_time_cap_stops_starting_configurations() -> None:
    frame, y, numeric, categorical = _real_table("binary")

    run = fit_classical(
        frame,
        y,
        frame,
        task="binary",
        classes=[0, 1],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=2.5,
        clock=_TickingClock(),
    )

    # reads: start 1; first check 2 (1 s spent), fit 3..4; second check 5 (4 s): stop
    assert [f.name for f in run.fits] == ["hgb-default"]
    assert run.skipped == list(CONFIGS)[1:]
    assert "time cap of 2.5 s was spent" in run.notes[0]


def test_classical_cancelled_before_the_first_configuration_fits_none() -> None:
    frame, y, numeric, categorical = _real_table("regression")

    run = fit_classical(
        frame,
        y.astype(float),
        frame,
        task="regression",
        classes=[],
        numeric=numeric,
        categorical=categorical,
        seed=0,
        time_cap_s=60,
        should_stop=lambda: True,
    )

    assert run.fits == []
    assert run.skipped == list(CONFIGS)


def test_classical_one_class_in_the_training_rows_fits_nothing() -> None:
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3]})

    run = fit_classical(
        frame,
        np.array([1, 1, 1]),
        frame,
        task="binary",
        classes=["no", "yes"],
        numeric=["x"],
        categorical=[],
        seed=0,
        time_cap_s=60,
    )

    assert run.fits == []
    assert run.notes == [
        "the boosting models were not fitted: the training rows hold one class"
    ]


def test_classical_extract_trees_without_the_private_attributes_is_our_error() -> None:
    class NotFitted:
        pass

    with pytest.raises(ClassicalExportError, match=r"cannot read them .*_predictors"):
        extract_trees(NotFitted())


def test_classical_load_of_a_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot read a saved boosting model"):
        load_classical(tmp_path / "absent")
