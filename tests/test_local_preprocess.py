"""Feature preprocessing of the local backend."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from broker.errors import ColumnNotFoundError, InputError
from broker.local.preprocess import (
    MISSING_INDEX,
    UNKNOWN_INDEX,
    TabularPreprocessor,
    TargetEncoder,
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [1.0, 2.0, np.nan, 4.0, 5.0],
            "y": [10.0, 20.0, 30.0, 40.0, 50.0],
            "c": ["a", "a", "b", "b", "rare"],
        }
    )


def test_preprocess_numeric_missing_gets_median_and_indicator() -> None:
    pre = TabularPreprocessor.fit(_frame(), numeric=["x", "y"], categorical=[])

    x_num, _ = pre.transform(_frame())

    # x: value column then its missing indicator; y has no missing so no indicator
    assert x_num.shape == (5, 3)
    assert pre.numeric[0].median == 3.0
    assert x_num[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    # the imputed median maps to the middle rank: 0 on the normal scale
    assert x_num[2, 0] == pytest.approx(0.0, abs=1e-6)


def test_preprocess_numeric_maps_quantiles_to_a_clipped_normal() -> None:
    frame = pd.DataFrame({"v": np.arange(101, dtype=float)})
    pre = TabularPreprocessor.fit(frame, numeric=["v"], categorical=[])

    values, _ = pre.transform(pd.DataFrame({"v": [25.0, 50.0, 75.0, 1e9, -1e9]}))

    assert values[:3, 0] == pytest.approx(norm.ppf([0.25, 0.5, 0.75]), abs=1e-5)
    # values far outside the training range are clipped, not infinite
    assert values[3, 0] == pytest.approx(5.0)
    assert values[4, 0] == pytest.approx(-5.0)


def test_preprocess_categorical_codes_for_missing_unknown_and_rare() -> None:
    pre = TabularPreprocessor.fit(_frame(), numeric=[], categorical=["c"], min_count=2)

    _, codes = pre.transform(pd.DataFrame({"c": ["a", "b", "rare", "never", None]}))

    # vocabulary from training: a, b (count 2); "rare" (count 1) falls to <unk>
    assert pre.categorical[0].vocabulary == ["a", "b"]
    assert codes[:, 0].tolist() == [2, 3, UNKNOWN_INDEX, UNKNOWN_INDEX, MISSING_INDEX]
    assert pre.cardinalities == [4]


def test_preprocess_round_trips_through_json() -> None:
    pre = TabularPreprocessor.fit(
        _frame(), numeric=["x", "y"], categorical=["c"], numeric_bins=2
    )

    again = TabularPreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))

    for got, expected in zip(
        again.transform(_frame()), pre.transform(_frame()), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_preprocess_numeric_bins_add_embedding_codes() -> None:
    frame = pd.DataFrame({"v": [0.0, 1.0, 2.0, 3.0, np.nan]})
    pre = TabularPreprocessor.fit(frame, numeric=["v"], categorical=[], numeric_bins=2)

    _, codes = pre.transform(frame)

    # one inner edge at the median 1.5: bins 1 and 2, missing 0
    assert pre.numeric[0].bin_edges == [1.5]
    assert codes[:, 0].tolist() == [1, 1, 2, 2, MISSING_INDEX]
    assert pre.cardinalities == [3]


def test_preprocess_missing_column_names_it() -> None:
    pre = TabularPreprocessor.fit(_frame(), numeric=["x"], categorical=["c"])

    with pytest.raises(ColumnNotFoundError, match=r"columns \['c'\] are missing"):
        pre.transform(_frame().drop(columns="c"))


def test_target_encoder_classes_and_regression_scale() -> None:
    classes = TargetEncoder.fit(
        pd.Series(["no", "yes"]), task="binary", classes=["no", "yes"]
    )
    values = TargetEncoder.fit(pd.Series([1.0, 3.0]), task="regression")

    assert classes.encode(pd.Series(["yes", "no", "yes"])).tolist() == [1, 0, 1]
    assert (values.mean, values.std) == (2.0, 1.0)
    assert values.encode(pd.Series([3.0])).tolist() == [1.0]
    with pytest.raises(InputError, match=r"target values \['maybe'\] are not among"):
        classes.encode(pd.Series(["maybe"]))
