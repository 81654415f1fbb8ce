"""Regularised linear models of the local backend: design matrix, arrays, numpy
prediction equal to scikit-learn's."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from broker.local.classical import load_classical
from broker.local.linear import (
    LinearEncoding,
    LinearModel,
    fit_linear_estimator,
    linear_model,
)
from tests.test_local_classical import _real_table


def _fitted(
    task: str, params: dict[str, float] | None = None
) -> tuple[pd.DataFrame, LinearEncoding, object, LinearModel]:
    """A linear model fitted on all but the last 40 rows of a real table."""
    frame, y, numeric, categorical = _real_table(task)
    encoding = LinearEncoding.fit(frame.iloc[:-40], numeric, categorical)
    target = y[:-40].astype(float) if task == "regression" else y[:-40]
    estimator = fit_linear_estimator(
        encoding.transform(frame.iloc[:-40]),
        target,
        task=task,
        params=params or {"C": 1.0},
        seed=0,
    )
    classes = [] if task == "regression" else sorted(set(y.tolist()))
    model = linear_model(
        estimator, task=task, classes=classes, encoding=encoding, metadata={}
    )
    return frame, encoding, estimator, model


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_linear_numpy_predictor_equals_sklearn(task: str, tmp_path: Path) -> None:
    frame, encoding, estimator, model = _fitted(task)
    test = frame.iloc[-40:].copy()
    test.iloc[0, test.columns.get_loc("band")] = "q9"  # a category never seen
    test.iloc[1, test.columns.get_loc("x0")] = np.nan

    x_test = encoding.transform(test)
    loaded = load_classical(model.save(tmp_path / "linear"))
    if task == "regression":
        expected = estimator.predict(x_test)  # type: ignore[attr-defined]
        got, got_loaded = model.predict(test), loaded.predict(test)
    else:
        expected = estimator.predict_proba(x_test)  # type: ignore[attr-defined]
        got, got_loaded = model.predict_proba(test), loaded.predict_proba(test)

    # the unseen category is all zeros; the row with a missing x0 sets its indicator
    band = [i for i, c in enumerate(encoding.column_names) if c.startswith("band=")]
    assert x_test[0, band].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert x_test[1, encoding.column_names.index("x0__missing")] == 1.0
    # numpy over the saved arrays gives scikit-learn's own numbers
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(got_loaded, got)


def test_linear_design_matrix_equals_a_sklearn_pipeline() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, _, numeric, categorical = _real_table("multiclass")
    train, test = frame.iloc[:-40], frame.iloc[-40:].copy()
    test.iloc[0, test.columns.get_loc("band")] = "q9"
    encoding = LinearEncoding.fit(train, numeric, categorical)
    pipeline = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                numeric,
            ),
            ("missing", MissingIndicator(), numeric),
            (
                "categories",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
        ]
    )
    pipeline.fit(train.fillna({"band": "missing-value"}))

    expected = pipeline.transform(test.fillna({"band": "missing-value"}))
    got = encoding.transform(test)

    # the pipeline has one more column: the missing-value category, which ours
    # encodes as all zeros like an unseen one
    missing_column = (
        pipeline.get_feature_names_out()
        .tolist()
        .index("categories__band_missing-value")
    )
    assert encoding.indicators == ["x0"]
    np.testing.assert_allclose(
        got, np.delete(expected, missing_column, axis=1), rtol=0, atol=1e-12
    )


def test_linear_encoding_of_a_small_table_by_hand() -> None:
    train = pd.DataFrame({"n": [1.0, None, 3.0], "m": [5, 5, 5], "c": ["b", "a", "b"]})
    encoding = LinearEncoding.fit(train, ["n", "m"], ["c"])

    matrix = encoding.transform(
        pd.DataFrame({"n": [None, "4"], "m": [5, 6], "c": [None, "zz"]})
    )

    # n: median 2 fills the gap; mean 2, population std sqrt(2/3); m is constant
    scale = math.sqrt(2 / 3)
    assert encoding.column_names == ["n", "m", "n__missing", "c=a", "c=b"]
    np.testing.assert_allclose(
        matrix,
        [[0.0, 0.0, 1.0, 0.0, 0.0], [2.0 / scale, 1.0, 0.0, 0.0, 0.0]],
        rtol=0,
        atol=1e-15,
    )


def test_linear_encoding_keeps_the_most_frequent_categories(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("broker.local.linear.MAX_CATEGORIES", 2)
    train = pd.DataFrame({"c": ["z", "z", "z", "y", "y", "x", "w"]})

    encoding = LinearEncoding.fit(train, [], ["c"])

    # z (3) and y (2) are kept; x and w are encoded as all zeros, like unseen values
    assert encoding.categorical == {"c": ["y", "z"]}


def test_linear_strong_regularisation_shrinks_the_coefficients() -> None:
    _, _, _, weak = _fitted("binary", {"C": 1.0})
    _, _, _, strong = _fitted("binary", {"C": 0.01})

    assert np.linalg.norm(strong.coef) < 0.5 * np.linalg.norm(weak.coef)


def test_linear_saved_model_is_plain_arrays(tmp_path: Path) -> None:
    _, encoding, _, model = _fitted("multiclass")

    model.save(tmp_path / "linear")

    meta = json.loads((tmp_path / "linear" / "model.json").read_text())
    assert meta["format"] == "linear"
    assert meta["columns"] == encoding.column_names
    assert meta["encoding"]["categorical"] == {"band": ["q1", "q2", "q3", "q4"]}
    with zipfile.ZipFile(tmp_path / "linear" / "coefficients.npz") as archive:
        names = sorted(archive.namelist())
    assert names == [
        "coef.npy",
        "intercept.npy",
        "means.npy",
        "medians.npy",
        "scales.npy",
    ]
    with np.load(
        tmp_path / "linear" / "coefficients.npz", allow_pickle=False
    ) as arrays:
        assert arrays["coef"].shape == (3, len(encoding.column_names))


def test_linear_class_missing_from_training_rows_gets_probability_zero() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=60)})
    y = (frame["x"] > 0).astype(int).to_numpy() * 2  # classes 0 and 2 of three
    encoding = LinearEncoding.fit(frame, ["x"], [])
    estimator = fit_linear_estimator(
        encoding.transform(frame), y, task="multiclass", params={"C": 1.0}, seed=0
    )
    model = linear_model(
        estimator,
        task="multiclass",
        classes=["a", "b", "c"],
        encoding=encoding,
        metadata={},
    )

    proba = model.predict_proba(frame)

    np.testing.assert_array_equal(proba[:, 1], 0.0)
    np.testing.assert_allclose(
        proba[:, 2], estimator.predict_proba(encoding.transform(frame))[:, 1]
    )
